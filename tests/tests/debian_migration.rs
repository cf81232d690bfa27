//! vfmig on a real Debian guest (images/build-debian: systemd, udev, NetworkManager, the
//! package installed with dpkg), migrated from one QEMU to another with the VF unplugged and a
//! fresh one plugged: with NetworkManager managing the VF by a static profile, by a DHCP
//! profile (dnsmasq in the peer's namespace), and with no NetworkManager at all.
//!
//! What an operator checks afterwards: the guest's addresses, routes and neighbours are what
//! they were, the peer's TCP connection still passes data, NetworkManager (asked over D-Bus)
//! has the device connected with the same profile, and there is no second address or lease.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use vfmig_host::migration::Fallback;
use vfmig_testbed::bed::{fresh_vf, migrate, plan, restore, show, Bed, FRESH_MAC, SOURCE_MAC, STATE};
use vfmig_testbed::dhcp::{Dnsmasq, Lease};
use vfmig_testbed::fabric::{GUEST_V4, PEER_V4};
use vfmig_testbed::guest_net::{ok, vf_ipv4};
use vfmig_testbed::probe::{wait_answering, TcpProbe};
use vfmig_testbed::shell::GuestShell;
use vfmig_testbed::vm::{vf_device_json, Vm, VF_ID};

/// The name udev gives the VF behind the first root port, and keeps for the fresh one.
const VF: &str = "enp1s0";
/// A Debian boot under TCG takes about 30 s; a loaded machine can take much longer.
const BOOT: Duration = Duration::from_secs(180);
/// NM's DHCP profile waits for its server: its own default timeout is 45 s.
const NM_SETTLES: Duration = Duration::from_secs(90);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Network {
    /// NetworkManager with a static profile for the VF (and routes and neighbours set by hand).
    NmStatic,
    /// NetworkManager with a DHCP profile for the VF's IPv4 address.
    NmDhcp,
    /// NetworkManager stopped; the VF configured with `ip`, as a minimal image would. The
    /// fresh VF goes into another PCI slot.
    NoNm,
}

/// The guest's own state besides the profile's: a route in another table and static
/// neighbours, which NetworkManager does not manage and only vfmig carries over.
const BY_HAND: &str = "ip route add 198.51.100.0/24 via 198.18.0.1 dev enp1s0 table 100 && \
    for i in 20 21 22; do ip neigh replace 198.18.0.$i lladdr 02:00:00:00:00:$i dev enp1s0 nud permanent; done";

/// NetworkManager's view of the VF, over D-Bus: the device's state (100: activated) and the
/// id of its active connection.
const NM_VIEW: &str = "nm=org.freedesktop.NetworkManager; \
    dev=$(busctl call $nm /org/freedesktop/NetworkManager $nm GetDeviceByIpIface s enp1s0 | cut -d'\"' -f2) && \
    busctl get-property $nm $dev $nm.Device State && \
    ac=$(busctl get-property $nm $dev $nm.Device ActiveConnection | cut -d'\"' -f2) && \
    busctl get-property $nm $ac $nm.Connection.Active Id";

/// The VF's PCI device, and the name udev's naming policy would give it.
const SLOT: &str = "basename $(readlink -f /sys/class/net/enp1s0/device)";
const PREDICTABLE: &str = "udevadm info -q property -p /sys/class/net/enp1s0 | sed -n 's/^ID_NET_NAME_PATH=//p'";

const NM_CONNECTED: &str = "u 100\ns \"vf\"";

/// Polls NetworkManager until it reports the VF activated with profile "vf".
async fn nm_connected(shell: &mut GuestShell) {
    let until = Instant::now() + NM_SETTLES;
    loop {
        let (_, out) = shell
            .run(NM_VIEW, Duration::from_secs(30))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        if out.trim() == NM_CONNECTED {
            return;
        }
        let log = ok(
            shell,
            "journalctl -b -u NetworkManager -u vfmig-guestd --no-pager | tail -40",
        )
        .await;
        assert!(
            Instant::now() < until,
            "NetworkManager says {out:?}, not {NM_CONNECTED:?}\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Sets the guest's network up as `network` says; returns its IPv4 address.
async fn configure(shell: &mut GuestShell, network: Network) -> IpAddr {
    match network {
        Network::NmStatic | Network::NmDhcp => {
            let ipv4 = if network == Network::NmStatic {
                format!("ipv4.method manual ipv4.addresses {GUEST_V4}/24 ipv4.gateway {PEER_V4}")
            } else {
                // Activated only with its lease: IPv6 alone would do otherwise.
                "ipv4.method auto ipv4.may-fail no".to_owned()
            };
            // The profile an operator would write, and none other: the one NM made by itself
            // for the NIC (DHCP, "Wired connection 1") goes.
            ok(
                shell,
                &format!(
                    "nmcli -t -f UUID con show | xargs -r nmcli con delete >/dev/null && \
                     nmcli con add type ethernet ifname {VF} con-name vf {ipv4} \
                     ipv6.method manual ipv6.addresses 2001:db8::10/64 >/dev/null && \
                     nmcli -w 90 con up vf >/dev/null && {BY_HAND}"
                ),
            )
            .await;
            nm_connected(shell).await;
        }
        Network::NoNm => {
            ok(
                shell,
                &format!(
                    "systemctl mask --runtime --now NetworkManager 2>/dev/null && \
                     ip addr flush dev {VF} && ip link set {VF} up && \
                     ip addr add {GUEST_V4}/24 dev {VF} && ip addr add 2001:db8::10/64 dev {VF} nodad && \
                     ip route add default via {PEER_V4} && {BY_HAND}"
                ),
            )
            .await;
        }
    }
    IpAddr::V4(vf_ipv4(shell).await)
}

/// What the DHCP server has handed out.
fn handed_out(dhcp: &Dnsmasq) -> Vec<Lease> {
    dhcp.leases().unwrap_or_else(|e| panic!("{e}"))
}

async fn shell(vm: &Vm) -> GuestShell {
    vm.shell(BOOT).await.unwrap_or_else(|e| panic!("{e}"))
}

async fn migrate_with(network: Network) {
    let bed = Bed::debian().await;
    let dhcp = (network == Network::NmDhcp).then(|| Dnsmasq::start(&bed));
    let mut src = shell(&bed.source).await;
    let address = configure(&mut src, network).await;
    let echo = SocketAddr::new(address, 7);
    wait_answering(&bed.fabric.peer, echo, Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e}"));
    let mut tcp = TcpProbe::connect(&bed.fabric.peer, echo).unwrap();
    tcp.round_trip("before\n").unwrap();
    let before = ok(&mut src, STATE).await;
    let slot_before = match network {
        Network::NoNm => Some(ok(&mut src, SLOT).await.trim().to_owned()),
        _ => None,
    };
    let leases = dhcp.as_ref().map(handed_out);

    let (mut timeline, saved) = migrate(&bed, &plan(&bed.uri, Fallback::Refuse), &mut show).await;
    let saved = saved
        .unwrap_or_else(|e| {
            panic!(
                "{e}\n{}destination qemu: {}",
                timeline.table(),
                bed.destination.errors()
            )
        })
        .expect("the guest agent saved the state");
    // A VF provisioned with the guest's MAC, as vfmig-host provision does on real hardware, for
    // the DHCP profile (its lease is the MAC's); a fresh MAC otherwise, which udev and the agent
    // must cope with.
    let mac = if network == Network::NmDhcp {
        SOURCE_MAC
    } else {
        FRESH_MAC
    };
    let mut device = vf_device_json("e1000e", VF_ID, mac);
    if network == Network::NoNm {
        // Another slot, where udev would name it enp2s0: the saved name must win.
        device["bus"] = "rp3".into();
    }
    let spec = fresh_vf(device, &saved);
    let restored = restore(&bed, &spec, &mut timeline, &mut show)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", timeline.table()));
    println!("{}", timeline.table());
    assert_eq!(saved.interface, VF);
    assert!(restored.failed.is_empty(), "{:?}", restored.failed);
    assert!(restored.mismatches.is_empty(), "{:?}", restored.mismatches);

    let mut dst = shell(&bed.destination).await;
    // udev's VF-arrival rule kept NetworkManager off the fresh VF and gave it the saved name
    // (which the restore found in place: udev never had to give up its rename).
    let udev = ok(
        &mut dst,
        &format!(
            "udevadm info -q property -p /sys/class/net/{VF} | grep -E '^(NM_UNMANAGED|VFMIG_RESTORE_NAME)=' | sort"
        ),
    )
    .await;
    let renamed_late = ok(
        &mut dst,
        "journalctl -b -u systemd-udevd --no-pager | grep -c 'cannot rename' || true",
    )
    .await;
    if udev.trim() != format!("NM_UNMANAGED=1\nVFMIG_RESTORE_NAME={VF}") || renamed_late.trim() != "0" {
        let log = ok(
            &mut dst,
            "journalctl -b -u systemd-udevd -u vfmig-guestd --no-pager | tail -40",
        )
        .await;
        panic!("udev properties of the fresh VF: {udev:?}\n{log}");
    }
    if network == Network::NoNm {
        let now = ok(&mut dst, &format!("{SLOT}; {PREDICTABLE}")).await;
        let slot_before = slot_before.expect("read before");
        println!("the VF was at {slot_before}; the fresh one is at {now}");
        assert_ne!(
            now.lines().next(),
            Some(slot_before.as_str()),
            "the fresh VF is in another slot"
        );
    } else {
        // Handed back: managed again, with the profile it had, activated.
        nm_connected(&mut dst).await;
        let status = ok(&mut dst, "vfmig-guestd status").await;
        println!("{status}");
        assert!(
            status.contains(&format!("NetworkManager: profile \"vf\" active again on {VF}")),
            "{status}"
        );
    }
    // Nothing pending is left to keep a later NIC from NetworkManager.
    assert_eq!(
        ok(&mut dst, "ls /run/vfmig | grep -c pending || true").await.trim(),
        "0"
    );

    // The same addresses, routes and neighbours — and no second address — after NM is done.
    let after = ok(&mut dst, STATE).await;
    assert_eq!(before, after, "the guest's network before and after");
    tcp.round_trip("after\n").unwrap();
    if let Some(dhcp) = &dhcp {
        let leases = leases.expect("read before");
        assert_eq!(leases.len(), 1, "{leases:?}");
        assert_eq!(
            handed_out(dhcp),
            leases,
            "no second lease, the same address for the same MAC"
        );
        assert_eq!(IpAddr::V4(leases[0].address), address, "{leases:?}");
    }
}

#[tokio::test(flavor = "current_thread")]
async fn networkmanager_with_a_static_profile_gets_the_vf_back_connected() {
    migrate_with(Network::NmStatic).await;
}

#[tokio::test(flavor = "current_thread")]
async fn networkmanager_with_a_dhcp_profile_keeps_its_lease_and_address() {
    migrate_with(Network::NmDhcp).await;
}

#[tokio::test(flavor = "current_thread")]
async fn without_networkmanager_the_guest_keeps_its_network_and_the_vf_its_name_in_another_slot() {
    migrate_with(Network::NoNm).await;
}
