//! A guest whose VF is a port of a bond or a bridge, migrated by `vfmig-host migrate` as an
//! operator's hook runs it: the fresh VF rejoins the same master with its port options, and
//! the peer's connection to the master's address survives.
//!
//! The host is told nothing special: its standby option stays "auto", which the guest passes
//! over for a VF that is a port (a bond fails over by itself; a bridge's addresses are its own).

use std::time::Duration;

use vfmig_testbed::bed::{echo, Bed, SOURCE_MAC};
use vfmig_testbed::fabric::{GUEST_V4, PREFIX_V4};
use vfmig_testbed::host_cli::{command, reached, run, Sockets};
use vfmig_testbed::probe::{wait_answering, Probe, TcpProbe};
use vfmig_testbed::shell::GuestShell;

const IP: &str = "/opt/iproute2/ip";

/// The master eth0 is a port of, by sysfs.
const MASTER: &str = "basename \"$(readlink /sys/class/net/eth0/master)\"";

/// eth0's port options as iproute2 shows them.
fn port_line() -> String {
    format!("{IP} -d -o link show eth0")
}

/// The VF's own state moves to the master: addresses, routes and neighbours go with the
/// address flush and the link going down.
async fn setup(shell: &mut GuestShell, commands: &[String]) {
    for c in commands {
        shell.ok(c).await.unwrap_or_else(|e| panic!("{e}"));
    }
}

/// When `vfmig-host` reached `phase`, from its progress lines.
fn at_ms(stderr: &str, phase: &str) -> u64 {
    let line = stderr
        .lines()
        .find(|l| reached(l, phase))
        .unwrap_or_else(|| panic!("no {phase} in:\n{stderr}"));
    line.split_whitespace()
        .next()
        .and_then(|ms| ms.parse().ok())
        .expect("a time")
}

/// How long the peer lost the guest at most, and how long the VF was away.
struct Gaps {
    peer_ms: u64,
    vf_absent_ms: u64,
}

/// Migrates with `vfmig-host migrate`, the peer's TCP connection open and a probe running;
/// returns the destination's shell.
async fn migrate(bed: &Bed) -> (GuestShell, Gaps) {
    wait_answering(&bed.fabric.peer, echo(), Duration::from_secs(20)).unwrap();
    let mut tcp = TcpProbe::connect(&bed.fabric.peer, echo()).expect("TCP to the guest");
    tcp.round_trip("before\n").unwrap();
    let probe = Probe::start(&bed.fabric.peer, echo()).unwrap();
    let sockets = Sockets::direct(bed);
    let started = std::time::Instant::now();
    let out = run(command(bed, &sockets));
    let took = started.elapsed();
    let report = probe.stop();
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stderr}");
    let (gap_at, _) = report.longest_gap();
    println!(
        "migrate took {took:?}; peer's probe: max gap {} ms from {gap_at} ms, {} of {} lost",
        report.max_gap.as_millis(),
        report.lost(),
        report.sent
    );
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("0 failed, 0 differ after restore"), "{stderr}");
    let gaps = Gaps {
        peer_ms: report.max_gap.as_millis() as u64,
        vf_absent_ms: at_ms(&stderr, "Restored") - at_ms(&stderr, "UnplugRequested"),
    };
    println!("VF absent {} ms", gaps.vf_absent_ms);
    wait_answering(&bed.fabric.peer, echo(), Duration::from_secs(10)).unwrap();
    tcp.round_trip("after the migration\n")
        .expect("the TCP connection survives the migration");
    (bed.destination.shell(Duration::from_secs(30)).await.unwrap(), gaps)
}

/// eth0 and the standby NIC bonded (active-backup, eth0 primary), the guest's address on the
/// bond: while the VF is away the bond carries on over sb0; the fresh VF is renamed eth0
/// before it joins, so the bond takes it as its primary again, with its queue id.
#[tokio::test(flavor = "current_thread")]
async fn a_bond_of_the_vf_and_a_second_nic_takes_the_fresh_vf_back() {
    let bed = Bed::with_standby().await;
    bed.wait_booted();
    let mut shell = bed.source.shell(Duration::from_secs(30)).await.unwrap();
    setup(
        &mut shell,
        &[
            format!("{IP} addr flush dev eth0"),
            format!("{IP} link set eth0 down"),
            format!("{IP} link set sb0 down"),
            format!("{IP} link add bond0 address {SOURCE_MAC} type bond mode active-backup miimon 100 primary eth0"),
            format!("{IP} link set eth0 master bond0"),
            format!("{IP} link set sb0 master bond0"),
            format!("{IP} link set eth0 type bond_slave queue_id 3"),
            format!("{IP} link set bond0 up"),
            format!("{IP} addr add {GUEST_V4}/{PREFIX_V4} dev bond0"),
        ],
    )
    .await;
    let slaves = shell.ok("cat /sys/class/net/bond0/bonding/slaves").await.unwrap();
    assert_eq!(slaves.trim(), "eth0 sb0");
    assert!(shell.ok(&port_line()).await.unwrap().contains("queue_id 3"));
    drop(shell);

    let (mut shell, gaps) = migrate(&bed).await;
    // The bond carried on over sb0 while the VF was away: the peer lost the guest for far
    // less than that (without it, for all of it and more).
    assert!(
        gaps.peer_ms * 2 <= gaps.vf_absent_ms,
        "the peer lost the guest for {} ms of the {} ms the VF was away",
        gaps.peer_ms,
        gaps.vf_absent_ms
    );
    assert_eq!(shell.ok(MASTER).await.unwrap().trim(), "bond0");
    let slaves = shell.ok("cat /sys/class/net/bond0/bonding/slaves").await.unwrap();
    assert_eq!(
        slaves.split_whitespace().collect::<std::collections::BTreeSet<_>>(),
        ["eth0", "sb0"].into(),
        "{slaves}"
    );
    let port = shell.ok(&port_line()).await.unwrap();
    assert!(port.contains("queue_id 3"), "{port}");
    // The primary is back once the bond's link monitor sees the fresh VF's carrier.
    let mut active = String::new();
    for _ in 0..50 {
        active = shell.ok("cat /sys/class/net/bond0/bonding/active_slave").await.unwrap();
        if active.trim() == "eth0" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(active.trim(), "eth0", "the fresh VF is not the bond's active port");
    wait_answering(&bed.fabric.peer, echo(), Duration::from_secs(10)).unwrap();
}

/// eth0 a port of a bridge, with options other than the defaults, the guest's address on the
/// bridge: the fresh VF is a port of it again with the same options, and the peer reaches the
/// bridge's address through it.
#[tokio::test(flavor = "current_thread")]
async fn a_bridge_port_rejoins_its_bridge_with_its_options() {
    let bed = Bed::start(true, true).await;
    bed.wait_booted();
    let mut shell = bed.source.shell(Duration::from_secs(30)).await.unwrap();
    // The bridge's MAC set, not taken from its port: it stays while the port changes.
    setup(
        &mut shell,
        &[
            format!("{IP} addr flush dev eth0"),
            // IPv6 keeps a link's gateway routes when its addresses go; the VF's go to the
            // master with the rest of its state.
            format!("{IP} -6 route flush dev eth0 proto boot"),
            format!("{IP} link add br0 address {SOURCE_MAC} type bridge"),
            format!("{IP} link set eth0 master br0"),
            format!("{IP} link set eth0 type bridge_slave cost 7 priority 5 learning off hairpin on"),
            format!("{IP} link set br0 up"),
            format!("{IP} addr add {GUEST_V4}/{PREFIX_V4} dev br0"),
        ],
    )
    .await;
    let before = shell.ok(&port_line()).await.unwrap();
    assert!(before.contains("priority 5 cost 7 hairpin on"), "{before}");
    drop(shell);

    let (mut shell, _) = migrate(&bed).await;
    assert_eq!(shell.ok(MASTER).await.unwrap().trim(), "br0");
    let port = shell.ok(&port_line()).await.unwrap();
    for option in ["priority 5 cost 7 hairpin on", "learning off", "flood on"] {
        assert!(port.contains(option), "{option} not in {port}");
    }
    let address = shell.ok(&format!("{IP} -o -4 addr show dev br0")).await.unwrap();
    assert!(address.contains(&format!("{GUEST_V4}/{PREFIX_V4}")), "{address}");
}
