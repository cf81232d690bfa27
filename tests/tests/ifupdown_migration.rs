//! vfmig on a Debian guest whose network is ifupdown's (images/build-debian ifupdown: an
//! `allow-hotplug` stanza per NIC, which udev's hotplug runs `ifup@IF.service` for on every
//! new link — the fresh VF included), migrated onto a fresh VF.
//!
//! What an operator checks afterwards: addresses, routes, policy rules and neighbours as they
//! were (the extras set with `ip` included); the peer's TCP connection alive; ifupdown's own
//! view (`ifquery --state`) the interface up, and a later `ifdown` and `ifup` working; the
//! agent's report naming ifupdown and nothing changed after the settle period; for DHCP one
//! lease, the same, and the same state after dhclient has renewed it.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use vfmig_host::migration::Fallback;
use vfmig_testbed::bed::{fresh_vf, migrate, plan, restore, show, Bed, FRESH_MAC, SOURCE_MAC};
use vfmig_testbed::dhcp::{Dnsmasq, MIN_LEASE};
use vfmig_testbed::fabric::{GUEST_V4, PEER_V4};
use vfmig_testbed::guest_net::{leased, ok, state, until_shows, vf_ipv4, BY_HAND, DEBIAN_BOOT};
use vfmig_testbed::image::DebianFlavour;
use vfmig_testbed::probe::{wait_answering, TcpProbe};
use vfmig_testbed::vm::{vf_device_json, VF_ID};

const VF: &str = "enp1s0";
const SETTLES: Duration = Duration::from_secs(120);
const UNITS: &str = "-u ifup@enp1s0 -u networking";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Case {
    /// `inet dhcp`; the fresh VF provisioned with the guest's MAC, as `vfmig-host provision`
    /// does: dhclient's client ID follows the MAC.
    Dhcp,
    /// `inet static`; the fresh VF with another MAC, in another slot.
    Static,
}

async fn migrate_with(case: Case) {
    let bed = Bed::debian_with(DebianFlavour::Ifupdown).await;
    // Two-minute leases: dhclient renews at half of it, within the test.
    let dhcp = Dnsmasq::start_with_lease(&bed, MIN_LEASE);
    let mut src = bed.source.shell(DEBIAN_BOOT).await.unwrap_or_else(|e| panic!("{e}"));
    let stanza = match case {
        Case::Dhcp => format!("allow-hotplug {VF}\\niface {VF} inet dhcp\\n"),
        Case::Static => format!(
            "allow-hotplug {VF}\\niface {VF} inet static\\n    address {GUEST_V4}/24\\n    gateway {PEER_V4}\\n"
        ),
    };
    // Brought up as at boot: through hotplug's unit, which the unplug stops. It ran at boot
    // already, when the VF had no stanza, and stays active: started again, not just started.
    ok(
        &mut src,
        &format!("printf '{stanza}' > /etc/network/interfaces.d/{VF} && systemctl restart ifup@{VF}.service"),
    )
    .await;
    // The unit's start returns while ifup still runs (dhclient waits for its lease).
    until_shows(
        &mut src,
        &format!(
            "[ \"$(ifquery --state {VF})\" = {VF}={VF} ] && [ $(cat /sys/class/net/{VF}/carrier) = 1 ] && \
             ip -4 -o addr show dev {VF} scope global | grep -q inet && echo ready"
        ),
        "ready",
        SETTLES,
        UNITS,
    )
    .await;
    ok(&mut src, BY_HAND).await;
    assert_eq!(
        ok(&mut src, &format!("ifquery --state {VF}")).await.trim(),
        format!("{VF}={VF}")
    );
    let address = IpAddr::V4(vf_ipv4(&mut src).await);
    let echo = SocketAddr::new(address, 7);
    wait_answering(&bed.fabric.peer, echo, Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e}"));
    let mut tcp = TcpProbe::connect(&bed.fabric.peer, echo).unwrap();
    tcp.round_trip("before\n").unwrap();
    let before = ok(&mut src, &state()).await;
    let leases = leased(&dhcp);

    let (mut timeline, saved) = migrate(&bed, &plan(&bed.uri, Fallback::Refuse), &mut show).await;
    let saved = saved
        .unwrap_or_else(|e| panic!("{e}\n{}", timeline.table()))
        .expect("the guest agent saved the state");
    assert!(
        timeline.to_json().contains("network manager ifupdown"),
        "the hello names ifupdown: {}",
        timeline.to_json()
    );
    let mut device = vf_device_json("e1000e", VF_ID, if case == Case::Dhcp { SOURCE_MAC } else { FRESH_MAC });
    if case == Case::Static {
        device["bus"] = "rp3".into();
    }
    let restored = restore(&bed, &fresh_vf(device, &saved), &mut timeline, &mut show)
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
    let status = until_shows(&mut dst, "vfmig-guestd status", "after settling", SETTLES, UNITS).await;
    println!("{status}");
    assert!(status.contains(&format!("ifupdown: {VF} ")), "{status}");
    assert!(status.contains("after settling: 0 differences"), "{status}");
    assert_eq!(
        ok(&mut dst, &format!("ifquery --state {VF}")).await.trim(),
        format!("{VF}={VF}")
    );
    let enabled = ok(
        &mut dst,
        &format!("systemctl is-enabled ifup@{VF}.service 2>&1 || true"),
    )
    .await;
    assert_ne!(enabled.trim(), "masked-runtime", "ifup@{VF} is unmasked");
    assert_eq!(
        before,
        ok(&mut dst, &state()).await,
        "the guest's network before and after"
    );
    tcp.round_trip("after\n").unwrap();
    if case == Case::Dhcp {
        assert_eq!(leases.len(), 1, "{leases:?}");
        assert_eq!(leased(&dhcp), leases, "one lease, the same address and client");
        // dhclient renews at half the lease (60 s): wait for its next "bound to", then the
        // state and the lease must be the same.
        let bound = "journalctl -b --no-pager -t dhclient | grep -c 'bound to' || true";
        let count = ok(&mut dst, bound).await.trim().parse::<u32>().unwrap_or(0);
        until_shows(
            &mut dst,
            &format!("[ $({bound}) -gt {count} ] && echo renewed"),
            "renewed",
            SETTLES,
            UNITS,
        )
        .await;
    }
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(before, ok(&mut dst, &state()).await, "30 s later");
    tcp.round_trip("later\n").unwrap();
    if case == Case::Dhcp {
        assert_eq!(leased(&dhcp), leases, "still one lease after renewals");
    }
    // ifupdown's record is as good as its own: a later ifdown and ifup work.
    ok(&mut dst, &format!("ifdown {VF} && ifup {VF}")).await;
    assert_eq!(
        ok(&mut dst, &format!("ifquery --state {VF}")).await.trim(),
        format!("{VF}={VF}")
    );
}

#[tokio::test(flavor = "current_thread")]
async fn ifupdown_with_a_dhcp_stanza_keeps_its_lease_through_renewals() {
    migrate_with(Case::Dhcp).await;
}

#[tokio::test(flavor = "current_thread")]
async fn ifupdown_with_a_static_stanza_keeps_its_record_and_the_vf_its_name_in_another_slot() {
    migrate_with(Case::Static).await;
}
