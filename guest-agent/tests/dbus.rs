//! The agent's D-Bus service, org.vfmig.Guest1, on a real dbus-daemon with the system bus's
//! policy and the policy file the package installs: what a local tool sees before, during and
//! after a save and a restore on the real kernel, the signals it gets, the errors for bad
//! requests, `vfmig-guestd status` as root and as an unprivileged user, and who may own the name.

use std::path::{Path, PathBuf};
use std::process::Output;

use std::time::Duration;
use tokio::process::Command;

use futures::StreamExt;
use vfmig_guest::agent::Agent;
use vfmig_guest::dbus::client::Guest1Proxy;
use vfmig_guest::dbus::{service, Bus, NAME};
use vfmig_guest::dma_hook::DmaHook;
use vfmig_guest::netstate::connect;
use vfmig_guest::netstate::standby::StandbyConfig;
use vfmig_protocol::message::*;
use vfmig_protocol::MacAddr;
use vfmig_testbed::dbus_daemon::DbusDaemon;
use vfmig_testbed::netns::{enter_fresh, ip_batch};
use vfmig_testbed::vm::ScratchDir;

mod common;
use common::{by_name, prepare_unplug};

const FIXTURE: &str = "link add vfa0 address 02:00:00:00:0a:01 type veth peer name vfa0p
link set vfa0p up
link set vfa0 up
addr add 198.18.10.2/24 dev vfa0
addr add 2001:db8:10::2/64 dev vfa0 nodad
route add 198.51.100.0/24 via 198.18.10.1 dev vfa0 table 100
neigh add 198.18.10.7 lladdr 02:00:00:00:00:07 dev vfa0 nud permanent
";

fn policy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("dist/org.vfmig.Guest1.conf")
}

/// `vfmig-guestd` copied where an unprivileged user can run it (a clone under `mktemp -d` is
/// root's alone).
fn guestd(dir: &ScratchDir) -> PathBuf {
    let bin = dir.0.join("vfmig-guestd");
    std::fs::copy(env!("CARGO_BIN_EXE_vfmig-guestd"), &bin).expect("copy vfmig-guestd");
    bin
}

/// Runs `program` as user and group 65534. Async, as every command here: the service it talks
/// to is served by this test's own thread.
async fn as_nobody(program: &Path, args: &[&str]) -> Output {
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(program)
        .args(args)
        .output()
        .await
        .expect("setpriv runs")
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn error_name(e: &zbus::Error) -> String {
    match e {
        zbus::Error::MethodError(name, _, _) => name.to_string(),
        other => format!("not a method error: {other}"),
    }
}

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), f)
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing within 10 s"))
}

#[tokio::test(flavor = "current_thread")]
async fn the_service_shows_what_the_agent_saved_and_restored_and_signals_each() {
    enter_fresh().unwrap();
    ip_batch(FIXTURE).unwrap();
    let bus = DbusDaemon::system_like(&[&policy()]).expect("dbus-daemon");
    let scratch = ScratchDir::new("dbus-test").unwrap();
    std::fs::set_permissions(&scratch.0, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let store = scratch.0.join("store");
    let handle = connect().unwrap();
    let mut agent = Agent::new(handle.clone(), store.clone(), DmaHook::default(), StandbyConfig::Off);
    let address = Bus::Address(bus.address.clone());
    let _service = service::serve(&address, store.clone(), agent.events())
        .await
        .expect("the agent owns org.vfmig.Guest1");

    let conn = address.builder().unwrap().build().await.unwrap();
    let guest = Guest1Proxy::builder(&conn)
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
        .unwrap();
    assert_eq!(guest.phase().await.unwrap(), "idle");
    assert_eq!(guest.saved_interfaces().await.unwrap(), Vec::<String>::new());
    assert_eq!(guest.last_save().await.unwrap().interface, None, "nothing saved yet");
    let mut saved_signals = guest.receive_state_saved().await.unwrap();
    let mut restored_signals = guest.receive_state_restored().await.unwrap();

    let replies = agent
        .handle(prepare_unplug(by_name("vfa0"), StandbyRequest::Off, false))
        .await;
    let GuestMessage::StateSaved(told_host) = &replies[0] else {
        panic!("{replies:?}")
    };
    let signal = within("StateSaved", saved_signals.next()).await.expect("a signal");
    let record = signal.args().unwrap().record;
    assert_eq!(
        (
            record.interface.as_deref(),
            record.addresses,
            record.routes,
            record.neighbours,
            record.digest.as_ref()
        ),
        (Some("vfa0"), Some(2), Some(1), Some(1), Some(&told_host.digest)),
        "the signal carries what the host was told"
    );
    assert_eq!(guest.phase().await.unwrap(), "saved");
    assert_eq!(guest.saved_interfaces().await.unwrap(), ["vfa0"]);
    assert_eq!(guest.last_save().await.unwrap(), record);
    let summary = guest.saved_state("vfa0").await.unwrap();
    assert_eq!(
        (summary.mac.as_deref(), summary.digest.as_ref(), summary.addresses),
        (Some("02:00:00:00:0a:01"), Some(&told_host.digest), Some(2))
    );

    // Bad requests get named errors, and the store is as it was.
    let before = std::fs::read_dir(&store).unwrap().count();
    for (name, error) in [
        ("../etc/passwd", "org.vfmig.Guest1.Error.BadName"),
        ("eth9", "org.vfmig.Guest1.Error.NoSuchState"),
    ] {
        let e = guest.saved_state(name).await.expect_err(name);
        assert_eq!(error_name(&e), error, "{name}");
    }
    std::fs::write(store.join("bad.json"), "{\"not\": \"a state\"}").unwrap();
    let e = guest.saved_state("bad").await.expect_err("bad");
    assert_eq!(error_name(&e), "org.vfmig.Guest1.Error.InvalidState");
    assert_eq!(std::fs::read_dir(&store).unwrap().count(), before + 1);

    let mac_b: MacAddr = "02:00:00:00:0b:01".parse().unwrap();
    ip_batch(&format!(
        "link del vfa0\nlink add enp2s0 address {mac_b} type veth peer name wire\nlink set wire up\n"
    ))
    .unwrap();
    let replies = agent
        .handle(HostMessage::Restore(Restore {
            saved: "vfa0".into(),
            onto: InterfaceSelector {
                mac: Some(mac_b),
                ..Default::default()
            },
            restore_mac: false,
            digest: None,
        }))
        .await;
    let GuestMessage::Restored(r) = &replies[0] else {
        panic!("{replies:?}")
    };
    let signal = within("StateRestored", restored_signals.next())
        .await
        .expect("a signal");
    let record = signal.args().unwrap().record;
    assert_eq!(
        (
            record.interface.as_deref(),
            record.applied,
            record.failed.as_deref(),
            record.trigger.as_deref()
        ),
        (Some("vfa0"), Some(r.applied), Some(&[][..]), Some("host"))
    );
    assert!(r.applied > 0, "{r:?}");
    assert_eq!(guest.phase().await.unwrap(), "restored");

    // The command a user runs, as root and as nobody: the policy lets anyone read.
    let bin = guestd(&scratch);
    let out = Command::new(&bin)
        .args(["status", "--bus", &bus.address])
        .output()
        .await
        .unwrap();
    let shown = text(&out);
    assert_eq!(out.status.code(), Some(0), "{shown}");
    for want in [
        concat!("vfmig-guestd ", env!("CARGO_PKG_VERSION"), ": restored"),
        "saved state vfa0: mac 02:00:00:00:0a:01, 2 addresses, 1 routes, 1 neighbours",
        "saved state bad: unreadable: ",
        "last save: vfa0 ",
        "last restore: vfa0 ",
        "(trigger: host)",
        "0 failed, 0 mismatches",
    ] {
        assert!(shown.contains(want), "{want:?} missing from\n{shown}");
    }
    let out = as_nobody(&bin, &["status", "--bus", &bus.address, "--json"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(json["phase"], "restored", "{json}");
    assert_eq!(json["last_save"]["addresses"], 2, "{json}");
    assert_eq!(json["last_restore"]["applied"], r.applied, "{json}");

    // Only root may own the name: nobody cannot pose as the agent, and a second agent cannot
    // take it from the first.
    let out = as_nobody(
        Path::new("/usr/bin/dbus-send"),
        &[
            &format!("--bus={}", bus.address),
            "--print-reply",
            "--dest=org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus.RequestName",
            &format!("string:{NAME}"),
            "uint32:0",
        ],
    )
    .await;
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("AccessDenied"), "{}", text(&out));
    let events = agent.events();
    let second = service::serve(&address, store.clone(), events).await;
    assert!(second.is_err(), "a second agent took the name");
    assert_eq!(guest.phase().await.unwrap(), "restored", "the first still serves");
}

#[tokio::test(flavor = "current_thread")]
async fn status_without_an_agent_on_the_bus_says_so() {
    let bus = DbusDaemon::system_like(&[&policy()]).expect("dbus-daemon");
    let out = Command::new(env!("CARGO_BIN_EXE_vfmig-guestd"))
        .args(["status", "--bus", &bus.address])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("no vfmig-guestd is serving this bus (nothing owns org.vfmig.Guest1)"),
        "{}",
        text(&out)
    );
}
