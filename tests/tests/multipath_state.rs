//! A guest whose VF carries an IPv4 and an IPv6 multipath route (one leg through the VF, one
//! through the second NIC, sb0, on the same fabric, on-link), a route with metrics, policy
//! rules and tuned sysctls, migrated by `vfmig-host migrate`: all of it restored equal on the
//! fresh VF, and the peer's traffic answered through the multipath routes.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use vfmig_testbed::bed::{echo, Bed};
use vfmig_testbed::fabric::{GUEST_V4, GUEST_V6, PEER_V4};
use vfmig_testbed::host_cli::{command, run, Sockets};
use vfmig_testbed::probe::wait_answering;

/// Addresses of the peer's that the guest reaches by its multipath routes only.
const FAR_V4: &str = "192.0.2.7";
const FAR_V6: &str = "2001:db8:77::7";
/// The peer's link-local address, the IPv6 legs' gateway: IPv6 refuses an on-link gateway that
/// its table reaches through another device (the global one is behind eth0's prefix).
const PEER_LL: &str = "fe80::77";

fn setup() -> String {
    [
        format!(
            "ip route add 192.0.2.0/24 nexthop via {PEER_V4} dev eth0 weight 3 nexthop via {PEER_V4} dev sb0 onlink"
        ),
        format!(
            "ip -6 route add 2001:db8:77::/64 nexthop via {PEER_LL} dev eth0 weight 2 nexthop via {PEER_LL} dev sb0"
        ),
        format!("ip route add 198.51.110.0/24 via {PEER_V4} dev eth0 mtu lock 1400 advmss 1300"),
        format!("ip rule add from {GUEST_V4} lookup 100 priority 100"),
        "ip -6 rule add oif eth0 lookup 100 priority 101".into(),
        "echo 2 > /proc/sys/net/ipv4/conf/eth0/rp_filter".into(),
        "echo 1 > /proc/sys/net/ipv4/conf/eth0/arp_ignore".into(),
        "echo 0 > /proc/sys/net/ipv6/conf/eth0/accept_ra".into(),
    ]
    .iter()
    .map(|c| c.replacen("ip ", "/opt/iproute2/ip ", 1))
    .collect::<Vec<_>>()
    .join(" && ")
}

/// What the test compares: the routes users made (both families, every table, multipath legs
/// with their devices and weights, metrics), the rules, the tuned sysctls.
const SHOWN: &str = "I=/opt/iproute2/ip; \
    $I -4 route show table all | grep -v -e 'proto kernel' -e '^local' -e '^broadcast'; \
    $I -6 route show table all | grep -v -e 'proto kernel' -e '^local' -e '^multicast' -e '^anycast' -e '^fe80'; \
    $I -4 rule; $I -6 rule; \
    for k in ipv4/rp_filter ipv4/arp_ignore ipv6/accept_ra; do echo $k $(cat /proc/sys/net/${k%/*}/conf/eth0/${k#*/}); done";

/// The peer sends to the guest's UDP echo from addresses the guest answers through its
/// multipath routes only, and gets its answers, within a few tries (neighbour resolution may
/// lose the first).
fn peer_reaches_through_multipath(bed: &Bed) -> Result<(), String> {
    bed.fabric
        .peer
        .run(|| {
            for (from, to) in [(FAR_V4, GUEST_V4), (FAR_V6, GUEST_V6)] {
                let to = SocketAddr::new(to.parse().map_err(|e| format!("{e}"))?, 7);
                let socket = UdpSocket::bind((from, 0)).map_err(|e| format!("bind {from}: {e}"))?;
                socket
                    .set_read_timeout(Some(Duration::from_secs(1)))
                    .map_err(|e| e.to_string())?;
                let answered = (0..10).any(|i| {
                    let sent = format!("through multipath {i}");
                    let mut buf = [0u8; 64];
                    socket.send_to(sent.as_bytes(), to).is_ok()
                        && socket.recv(&mut buf).is_ok_and(|n| &buf[..n] == sent.as_bytes())
                });
                if !answered {
                    return Err(format!("no echo from {to} to {from}"));
                }
            }
            Ok(())
        })
        .map_err(|e| e.to_string())?
}

#[tokio::test(flavor = "current_thread")]
async fn multipath_routes_rules_and_sysctls_are_restored_and_carry_the_peers_traffic() {
    let started = Instant::now();
    let bed = Bed::with_standby().await;
    bed.wait_booted();
    bed.fabric
        .peer
        .run(|| {
            vfmig_testbed::netns::ip_batch(&format!(
                "addr add {FAR_V4}/32 dev peer0\naddr add {FAR_V6}/128 dev peer0 nodad\naddr add {PEER_LL}/64 dev peer0 nodad\n"
            ))
        })
        .unwrap()
        .unwrap();
    let mut shell = bed.source.shell(Duration::from_secs(30)).await.unwrap();
    shell.ok(&setup()).await.unwrap();
    let before = shell.ok(SHOWN).await.unwrap();
    println!("before:\n{before}");
    for (expected, what) in [
        ("nexthop via 198.18.0.1 dev eth0 weight 3", "IPv4 leg through the VF"),
        ("nexthop via 198.18.0.1 dev sb0 weight 1 onlink", "IPv4 leg through sb0"),
        ("nexthop via fe80::77 dev eth0 weight 2", "IPv6 leg through the VF"),
        ("nexthop via fe80::77 dev sb0 weight 1", "IPv6 leg through sb0"),
        ("mtu lock 1400 advmss 1300", "route metrics"),
        ("from 198.18.0.10 lookup 100", "IPv4 rule"),
        ("oif eth0 lookup 100", "IPv6 rule"),
        ("ipv4/rp_filter 2", "sysctl"),
        (
            "2001:db8:100::/48 via 2001:db8::1 dev eth0",
            "the guest-init IPv6 route",
        ),
    ] {
        assert!(before.contains(expected), "{what}: {expected:?} not in\n{before}");
    }
    drop(shell);
    wait_answering(&bed.fabric.peer, echo(), Duration::from_secs(10)).unwrap();
    peer_reaches_through_multipath(&bed).expect("the peer reaches the guest through the multipath routes before");
    let set_up = started.elapsed();

    let sockets = Sockets::direct(&bed);
    let migrating = Instant::now();
    // sb0 is a leg of the multipath routes: the guest does not lend it as the standby it
    // would otherwise pick, since taking the lent IPv4 address back off it would leave the
    // leg dead for good (seen before: `dead onlink linkdown` after the migration).
    let out = run(command(&bed, &sockets));
    let took = migrating.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        !stderr.contains("StandbyActive"),
        "sb0 was lent as a standby:\n{stderr}"
    );

    let mut shell = bed.destination.shell(Duration::from_secs(30)).await.unwrap();
    let after = shell.ok(SHOWN).await.unwrap();
    let links = shell.ok("/opt/iproute2/ip link show").await.unwrap();
    assert_eq!(
        after, before,
        "the state the VF carried was not restored equal\n{links}"
    );
    drop(shell);
    peer_reaches_through_multipath(&bed).expect("the peer reaches the guest through the multipath routes after");
    println!(
        "times: bed up and set up {:.1} s, vfmig-host migrate {:.1} s, total {:.1} s",
        set_up.as_secs_f64(),
        took.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}
