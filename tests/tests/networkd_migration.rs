//! vfmig on a Debian guest whose network is systemd-networkd's, rendered by netplan as Debian's
//! cloud images have it (images/build-debian networkd: `90-default.yaml`, DHCP on any en*/eth*
//! NIC — the fresh VF included), migrated onto a fresh VF with another MAC.
//!
//! What an operator checks afterwards: addresses, routes, policy rules and neighbours as they
//! were (the extras an operator set with `ip` included); one address and one DHCP lease, not
//! two; the peer's TCP connection alive; networkd's own view (`networkctl status`) the link
//! configured by the same `.network`; the agent's report naming networkd and nothing changed
//! after the settle period; and the same state 30 s later and after a DHCP renewal.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use vfmig_host::migration::Fallback;
use vfmig_testbed::bed::{fresh_vf, migrate, plan, restore, show, Bed, FRESH_MAC};
use vfmig_testbed::dhcp::Dnsmasq;
use vfmig_testbed::fabric::{GUEST_V4, PEER_V4};
use vfmig_testbed::guest_net::{leased, ok, state, until_shows, vf_ipv4, BY_HAND, DEBIAN_BOOT};
use vfmig_testbed::image::DebianFlavour;
use vfmig_testbed::probe::{wait_answering, TcpProbe};
use vfmig_testbed::shell::GuestShell;
use vfmig_testbed::vm::{vf_device_json, VF_ID};

const VF: &str = "enp1s0";
/// networkd's DHCP, and the agent's hand-back and settle period after it.
const SETTLES: Duration = Duration::from_secs(120);
const UNITS: &str = "-u systemd-networkd";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Case {
    /// Debian's cloud default: networkd's DHCP on the VF, running throughout — it sees the fresh
    /// VF while the agent restores it.
    Dhcp,
    /// A static netplan configuration, networkd stopped (SIGSTOP) across the migration and let
    /// go only after the restore: it then meets a restored link it has not seen arrive.
    StaticStartedAfter,
}

/// networkd has the VF configured; its status.
async fn networkd_configured(shell: &mut GuestShell) -> String {
    until_shows(
        shell,
        &format!("networkctl status {VF} --no-pager"),
        "State: routable (configured)",
        SETTLES,
        UNITS,
    )
    .await
}

/// Sets the guest's network up; returns its IPv4 address.
async fn configure(shell: &mut GuestShell, case: Case) -> IpAddr {
    if case == Case::StaticStartedAfter {
        ok(
            shell,
            &format!(
                "rm /etc/netplan/90-default.yaml && printf 'network:\\n  version: 2\\n  ethernets:\\n    {VF}:\\n      addresses: [{GUEST_V4}/24, \"2001:db8::10/64\"]\\n      routes: [{{to: default, via: {PEER_V4}}}]\\n' > /etc/netplan/50-vf.yaml && \
                 chmod 600 /etc/netplan/50-vf.yaml && netplan apply"
            ),
        )
        .await;
    }
    let status = networkd_configured(shell).await;
    println!("{status}");
    ok(shell, BY_HAND).await;
    IpAddr::V4(vf_ipv4(shell).await)
}

/// The `.network` networkd applies to the VF, from its status.
fn network_file(status: &str) -> String {
    status
        .lines()
        .find_map(|l| l.trim().strip_prefix("Network File: "))
        .unwrap_or_else(|| panic!("no network file in:\n{status}"))
        .to_owned()
}

async fn migrate_with(case: Case) {
    let bed = Bed::debian_with(DebianFlavour::Networkd).await;
    let dhcp = Dnsmasq::start(&bed);
    let mut src = bed.source.shell(DEBIAN_BOOT).await.unwrap_or_else(|e| panic!("{e}"));
    let address = configure(&mut src, case).await;
    let file_before = network_file(&networkd_configured(&mut src).await);
    let echo = SocketAddr::new(address, 7);
    wait_answering(&bed.fabric.peer, echo, Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e}"));
    let mut tcp = TcpProbe::connect(&bed.fabric.peer, echo).unwrap();
    tcp.round_trip("before\n").unwrap();
    let before = ok(&mut src, &state()).await;
    let leases = leased(&dhcp);
    if case == Case::Dhcp {
        assert_eq!(leases.len(), 1, "{leases:?}");
        assert_eq!(IpAddr::V4(leases[0].0), address, "the VF's address is the lease's");
    }
    if case == Case::StaticStartedAfter {
        ok(&mut src, "kill -STOP $(pidof systemd-networkd)").await;
    }

    let (mut timeline, saved) = migrate(&bed, &plan(&bed.uri, Fallback::Refuse), &mut show).await;
    let saved = saved
        .unwrap_or_else(|e| panic!("{e}\n{}", timeline.table()))
        .expect("the guest agent saved the state");
    let negotiated = timeline.to_json();
    assert!(
        negotiated.contains("network manager systemd-networkd"),
        "the hello names networkd: {negotiated}"
    );
    // Another MAC in the same slot: networkd's DHCP client ID follows the machine and the slot.
    let spec = fresh_vf(vf_device_json("e1000e", VF_ID, FRESH_MAC), &saved);
    let restored = restore(&bed, &spec, &mut timeline, &mut show)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", timeline.table()));
    println!("{}", timeline.table());
    assert!(restored.failed.is_empty(), "{:?}", restored.failed);
    assert!(restored.mismatches.is_empty(), "{:?}", restored.mismatches);

    let mut dst = bed
        .destination
        .shell(DEBIAN_BOOT)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    if case == Case::StaticStartedAfter {
        tokio::time::sleep(Duration::from_secs(2)).await;
        ok(&mut dst, "kill -CONT $(pidof systemd-networkd)").await;
    }
    let status = until_shows(&mut dst, "vfmig-guestd status", "after settling", SETTLES, UNITS).await;
    println!("{status}");
    assert!(
        status.contains(&format!("systemd-networkd: {VF} taken back by systemd-networkd")),
        "{status}"
    );
    if !status.contains("after settling: 0 differences") {
        let log = ok(
            &mut dst,
            "journalctl -b -u systemd-networkd -u vfmig-guestd --no-pager | tail -80",
        )
        .await;
        panic!("{status}\n{log}");
    }
    let file_after = network_file(&networkd_configured(&mut dst).await);
    assert_eq!(file_after, file_before, "networkd applies the same .network");
    // udev's hold is off the link, and nothing is pending.
    let udev = ok(
        &mut dst,
        &format!("udevadm info -q property -p /sys/class/net/{VF} | grep -c '^VFMIG_HOLD=' || true"),
    )
    .await;
    assert_eq!(udev.trim(), "0", "the hold mark is gone");

    let after = ok(&mut dst, &state()).await;
    assert_eq!(before, after, "the guest's network before and after");
    tcp.round_trip("after\n").unwrap();
    assert_eq!(leased(&dhcp), leases, "one lease, the same address and client");

    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(before, ok(&mut dst, &state()).await, "30 s later");
    if case == Case::Dhcp {
        ok(&mut dst, &format!("networkctl renew {VF}")).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(before, ok(&mut dst, &state()).await, "after a DHCP renewal");
        assert_eq!(leased(&dhcp), leases, "the renewal kept the one lease");
    }
    tcp.round_trip("later\n").unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn networkd_with_debians_cloud_dhcp_default_keeps_its_lease_and_the_extras() {
    migrate_with(Case::Dhcp).await;
}

#[tokio::test(flavor = "current_thread")]
async fn networkd_started_only_after_the_restore_keeps_a_static_network_and_the_extras() {
    migrate_with(Case::StaticStartedAfter).await;
}
