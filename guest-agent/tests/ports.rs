//! Bridge membership on the real kernel, each test in its own throw-away network namespace: a
//! VF (a veth here) that is a bridge port is captured with its port options, and the fresh link
//! rejoins the same bridge with them — or, the bridge gone, the restore says so, item and exit
//! status. Bonds need the bonding module, which this host lacks: tests/tests/port_state.rs
//! migrates a bond in the QEMU guest.

use std::process::Command;

use serde_json::Value;
use vfmig_guest::netstate::{capture, connect, restore, RestoreOptions};
use vfmig_protocol::netstate::{Port, PortOptions};
use vfmig_testbed::netns::{enter_fresh, ip_batch};

mod common;
use common::{assert_clean, comparable, index_of, seal_and_open};

/// A bridge with its address, and vfa0 a port of it with options other than the defaults.
const BRIDGE_PORT: &str = "link add br0 type bridge
link set br0 up
addr add 198.18.30.1/24 dev br0
link add vfa0 type veth peer name vfa0p
link set vfa0p up
link set vfa0 address 02:00:00:00:0a:01 master br0
link set vfa0 type bridge_slave cost 7 priority 5 learning off hairpin on
link set vfa0 up
";

fn saved_port() -> Port {
    Port {
        master: "br0".into(),
        options: PortOptions::Bridge {
            cost: 7,
            priority: 5,
            learning: false,
            unicast_flood: true,
            hairpin: true,
            guard: false,
            protect: false,
            fast_leave: false,
        },
    }
}

/// `ip -d -j link show NAME`, as iproute2 reads the link: an independent view of the port.
fn ip_link(name: &str) -> Value {
    let out = Command::new("ip")
        .args(["-d", "-j", "link", "show", name])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut links: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    links.remove(0)
}

/// vfa0 removed (the VF unplugged) and a fresh link vfb0 made in its place, down, in no bridge.
fn replace_the_vf() {
    ip_batch("link del vfa0\nlink add vfb0 type veth peer name vfb0p\nlink set vfb0p up\n").unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn a_bridge_port_rejoins_its_bridge_with_its_options() {
    enter_fresh().unwrap();
    ip_batch(BRIDGE_PORT).unwrap();
    let handle = connect().unwrap();

    let captured = capture(&handle, "vfa0").await.unwrap();
    assert!(captured.unrestorable.is_empty(), "{:?}", captured.unrestorable);
    assert_eq!(captured.state.port, Some(saved_port()));
    let saved = seal_and_open(captured.state);

    replace_the_vf();
    let onto = index_of("vfb0");
    let report = restore(&handle, &saved, onto, RestoreOptions::default()).await.unwrap();
    assert_clean(&report);
    let restored = capture(&handle, "vfa0").await.unwrap().state;
    assert_eq!(comparable(&restored), comparable(&saved.interface));

    let link = ip_link("vfa0");
    assert_eq!(link["master"], "br0", "{link:#}");
    let port = &link["linkinfo"]["info_slave_data"];
    assert_eq!(
        (&port["cost"], &port["priority"], &port["learning"], &port["hairpin"]),
        (
            &Value::from(7),
            &Value::from(5),
            &Value::from(false),
            &Value::from(true)
        ),
        "{link:#}"
    );
    assert_eq!(link["operstate"], "UP", "{link:#}");

    let again = restore(&handle, &saved, onto, RestoreOptions::default()).await.unwrap();
    assert_clean(&again);
    assert!(again.applied.is_empty(), "{:#?}", again.applied);

    // Options changed behind its back: only they are set again, the port stays.
    ip_batch("link set vfa0 type bridge_slave cost 9 learning on\n").unwrap();
    let options = restore(&handle, &saved, onto, RestoreOptions::default()).await.unwrap();
    assert_clean(&options);
    assert_eq!(options.applied.len(), 1, "{:#?}", options.applied);
    assert!(
        options.applied[0].to_string().starts_with("vfa0 port of br0: options"),
        "{:#?}",
        options.applied
    );
    let restored = capture(&handle, "vfa0").await.unwrap().state;
    assert_eq!(comparable(&restored), comparable(&saved.interface));
}

#[tokio::test(flavor = "current_thread")]
async fn a_bridge_gone_before_the_restore_fails_the_port_and_the_exit() {
    enter_fresh().unwrap();
    ip_batch(BRIDGE_PORT).unwrap();
    let dir = std::env::temp_dir().join(format!("vfmig-ports-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let doc = dir.join("vfa0.json");
    let guestd = env!("CARGO_BIN_EXE_vfmig-guestd");
    // The daemon's command, forked from this thread, runs in its namespace.
    let out = Command::new(guestd)
        .args(["capture", "vfa0", "--out"])
        .arg(&doc)
        .output()
        .unwrap();
    let text = |o: &std::process::Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };
    assert!(out.status.success(), "{}", text(&out));
    assert!(!text(&out).contains("would not put back"), "{}", text(&out));

    replace_the_vf();
    ip_batch("link del br0\n").unwrap();
    let out = Command::new(guestd)
        .args(["restore", "--no-announce", "--onto", "vfb0"])
        .arg(&doc)
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("1 failed"), "{}", text(&out));
    assert!(
        text(&out).contains("failed: vfa0 port of br0: no bridge br0 any more"),
        "{}",
        text(&out)
    );
    // The rest of the link is restored all the same.
    let link = ip_link("vfa0");
    assert_eq!(link.get("master"), None, "{link:#}");
    assert_eq!(link["operstate"], "UP", "{link:#}");
}

#[tokio::test(flavor = "current_thread")]
async fn a_master_of_another_kind_by_the_saved_name_is_not_joined() {
    enter_fresh().unwrap();
    ip_batch(BRIDGE_PORT).unwrap();
    let handle = connect().unwrap();
    let saved = seal_and_open(capture(&handle, "vfa0").await.unwrap().state);

    replace_the_vf();
    ip_batch("link del br0\nlink add br0 type veth peer name br0p\n").unwrap();
    let report = restore(&handle, &saved, index_of("vfb0"), RestoreOptions::default())
        .await
        .unwrap();
    assert_eq!(
        report.failed,
        ["vfa0 port of br0: br0 is a veth now, saved as a bridge"],
        "{report:#?}"
    );
    assert_eq!(capture(&handle, "vfa0").await.unwrap().state.port, None);
}

#[tokio::test(flavor = "current_thread")]
async fn bridge_port_options_restore_cannot_set_are_named_at_capture() {
    enter_fresh().unwrap();
    ip_batch(BRIDGE_PORT).unwrap();
    ip_batch("link set vfa0 type bridge_slave mcast_flood off isolated on\n").unwrap();
    let handle = connect().unwrap();
    let captured = capture(&handle, "vfa0").await.unwrap();
    assert_eq!(
        captured.unrestorable,
        [
            "vfa0's bridge port option mcast_flood off is not restored",
            "vfa0's bridge port option isolated on is not restored",
        ]
    );
    assert_eq!(captured.state.port, Some(saved_port()));
}
