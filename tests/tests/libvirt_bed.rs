//! The libvirt bed itself: two real libvirtd hosts, the test guest defined and started on
//! host 1 and live-migrated to host 2 with `virsh migrate`, as an operator would, while the
//! peer holds a TCP connection to it; a destination hook sees the migration and can refuse it;
//! and a test that fails half-way leaves nothing behind.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use vfmig_host::channel::GuestChannel;
use vfmig_testbed::bed::{echo, BOOT};
use vfmig_testbed::libvirt::{GuestDomain, Host, LibvirtBed, VirshError};
use vfmig_testbed::probe::{wait_answering, TcpProbe};

const NAME: &str = "vfmig-guest";
const MAC: &str = "52:54:00:10:00:01";
/// An idle 256 MiB guest migrates in about a second; a loaded machine's TCG takes longer.
const MIGRATION: Duration = Duration::from_secs(120);

/// Host 2's hook: logs each call (its arguments) and refuses an incoming migration while
/// the refusal file exists. It reads the domain XML libvirt gives it on stdin and prints
/// nothing, which leaves the XML as it is.
const HOOK: &str = r#"#!/bin/sh
cat >/dev/null
echo "$*" >> /var/log/libvirt/hook.log
if [ "$2" = migrate ] && [ -e /etc/libvirt/hooks/refuse-migration ]; then
    echo "the vfmig test refuses this migration" >&2
    exit 1
fi
exit 0
"#;

/// The QEMU processes running in `host`'s namespaces.
fn qemus(host: &Host) -> Vec<u32> {
    host.processes()
        .into_iter()
        .filter(|pid| fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.starts_with("qemu-system")))
        .collect()
}

/// The CPUs process `pid` may run on, as /proc words it ("0-1").
fn cpus_allowed(pid: &str) -> String {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .unwrap_or_default()
        .trim()
        .into()
}

fn hook_calls(log: &Path) -> Vec<String> {
    fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect()
}

#[tokio::test(flavor = "current_thread")]
async fn a_guest_migrates_live_between_two_libvirt_hosts_and_their_hooks_see_it() {
    let bed = LibvirtBed::start_with(|host| match host.n {
        2 => host.add_hook("50-vfmig-test", HOOK),
        _ => Ok(()),
    })
    .unwrap();
    for (host, startup) in bed.hosts.iter().zip(&bed.startups) {
        println!(
            "{}: libvirtd up in {:.2} s (capability cache {}, {})",
            host.name,
            startup.took.as_secs_f64(),
            if startup.seeded { "seeded" } else { "empty" },
            if startup.probed { "QEMU probed" } else { "no probe" },
        );
    }
    println!("bed up in {:.2} s", bed.started_in.as_secs_f64());
    let [one, two] = &bed.hosts;
    assert_eq!(one.virsh(&["hostname"]).unwrap().trim(), "lvh1");
    assert_eq!(two.virsh(&["hostname"]).unwrap().trim(), "lvh2");

    let guest = GuestDomain::new(NAME, MAC);
    let xml = bed.domain_xml(&guest).unwrap();
    one.virsh(&["define", &xml.display().to_string()]).unwrap();
    one.virsh(&["start", NAME]).unwrap();
    let booting = Instant::now();
    wait_answering(&bed.peer, echo(), BOOT).unwrap_or_else(|e| {
        let console = fs::read_to_string(one.path(&guest.console()).unwrap()).unwrap_or_default();
        panic!("{e}; guest console on {}:\n{console}", one.name)
    });
    println!(
        "guest answers the peer {:.1} s after start",
        booting.elapsed().as_secs_f64()
    );
    // libvirtd runs on one CPU; the guest must not be held to it.
    let qemu = qemus(one);
    assert_eq!(qemu.len(), 1, "QEMU processes on host 1: {qemu:?}");
    assert_eq!(cpus_allowed(&qemu[0].to_string()), cpus_allowed("self"));
    let mut tcp = TcpProbe::connect(&bed.peer, echo()).unwrap();
    tcp.round_trip("before\n").unwrap();

    // Host 2's hook refuses: the migration fails before anything starts, and the source and
    // the connection are untouched.
    let hook_log = two.path(Path::new("/var/log/libvirt/hook.log")).unwrap();
    let refusal = two.path(Path::new("/etc/libvirt/hooks/refuse-migration")).unwrap();
    fs::write(&refusal, "").unwrap();
    let migrate = [
        "migrate",
        "--live",
        "--p2p",
        "--persistent",
        "--undefinesource",
        NAME,
        &two.uri(),
    ];
    match one.virsh_within(&migrate, MIGRATION) {
        Err(VirshError::Failed { stderr, .. }) => assert!(
            stderr.contains("the vfmig test refuses this migration"),
            "virsh migrate failed, but not for the hook: {stderr}"
        ),
        other => panic!("a migration the destination's hook refuses: {other:?}"),
    }
    assert_eq!(hook_calls(&hook_log), [format!("{NAME} migrate begin -")]);
    assert_eq!(one.state(NAME).unwrap(), "running");
    assert_eq!(two.domains().unwrap(), Vec::<String>::new());
    tcp.round_trip("after the refusal\n").unwrap();

    fs::remove_file(&refusal).unwrap();
    let migrating = Instant::now();
    one.virsh_within(&migrate, MIGRATION)
        .unwrap_or_else(|e| panic!("{e}; host 1's libvirtd: {}; host 2's: {}", one.log(), two.log()));
    let took = migrating.elapsed();
    // libvirt keeps the finished job's figures on the destination.
    let downtime = two
        .virsh(&["domjobinfo", "--completed", NAME])
        .map(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("Total downtime:"))
                .map_or("not reported".into(), |d| {
                    d.split_whitespace().collect::<Vec<_>>().join(" ")
                })
        })
        .unwrap_or_else(|e| e.to_string());
    println!(
        "virsh migrate --live --p2p: {:.2} s, downtime {downtime}",
        took.as_secs_f64()
    );

    assert_eq!(two.domains().unwrap(), [NAME]);
    assert_eq!(two.state(NAME).unwrap(), "running");
    assert_eq!(qemus(two).len(), 1, "no QEMU for the guest on host 2");
    assert_eq!(
        one.domains().unwrap(),
        Vec::<String>::new(),
        "the guest is still defined on host 1"
    );
    assert_eq!(qemus(one), Vec::<u32>::new(), "a QEMU is left on host 1");
    tcp.round_trip("after the migration\n").unwrap();
    let calls = hook_calls(&hook_log);
    assert_eq!(
        calls.get(1..3),
        Some(&[format!("{NAME} migrate begin -"), format!("{NAME} prepare begin -")][..]),
        "host 2's hook calls: {calls:?}"
    );

    let socket = two.path(&guest.agent_socket()).unwrap();
    assert!(socket.exists(), "no agent socket at {} on host 2", socket.display());
    let mut channel = GuestChannel::connect(&socket).await.unwrap();
    let session = channel
        .open_session("vfmig-testbed", Duration::from_secs(30))
        .await
        .unwrap();
    assert!(session.guest.agent.starts_with("vfmig-guestd "), "{:?}", session.guest);
    drop(channel);

    let footprint = bed.footprint();
    let teardown = bed.stop();
    println!("teardown: {:.2} s", teardown.as_secs_f64());
    assert_eq!(footprint.left_behind(), Vec::<String>::new());
}

#[test]
fn a_libvirt_test_that_fails_half_way_leaves_nothing_behind() {
    let (tx, rx) = std::sync::mpsc::channel();
    let failed = std::thread::spawn(move || {
        let bed = LibvirtBed::start().unwrap();
        let xml = bed.domain_xml(&GuestDomain::new(NAME, MAC)).unwrap();
        bed.hosts[0].virsh(&["create", &xml.display().to_string()]).unwrap();
        tx.send((bed.footprint(), qemus(&bed.hosts[0]).len())).unwrap();
        panic!("simulated failure in the middle of a test");
    })
    .join();
    assert!(failed.is_err(), "the simulated failure did not happen");
    let (footprint, qemu) = rx.recv().unwrap();
    assert_eq!(qemu, 1, "the guest's QEMU was not running in host 1's namespaces");
    assert_eq!(footprint.left_behind(), Vec::<String>::new());
}
