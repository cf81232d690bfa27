//! Multipath routes, policy rules and per-interface sysctls: captured, the VF replaced by a
//! fresh link, restored, and compared — by the state and by what iproute2 shows. Each test in
//! its own throw-away network namespace; state set up with iproute2.

use std::process::Command;

use vfmig_guest::netstate::{capture, connect, restore, RestoreOptions};
use vfmig_protocol::netstate::{Nexthop, SavedState};
use vfmig_testbed::netns::{enter_fresh, ip_batch};

mod common;
use common::{assert_clean, comparable, index_of, seal_and_open};

/// The VF (vfa0) and another link (oth0), each a veth with its peer up, each in a subnet of
/// its own, both families.
const TWO_LINKS: &str = "link add vfa0 type veth peer name vfa0p
link add oth0 type veth peer name oth0p
link set vfa0p up
link set oth0p up
link set vfa0 up
link set oth0 up
addr add 198.18.40.2/24 dev vfa0
addr add 2001:db8:40::2/64 dev vfa0 nodad
addr add 198.18.41.2/24 dev oth0
addr add 2001:db8:41::2/64 dev oth0 nodad
";

/// What iproute2 shows, run on this thread (a child inherits the thread's namespace).
fn ip(args: &str) -> String {
    let out = Command::new("ip").args(args.split_whitespace()).output().unwrap();
    assert!(
        out.status.success(),
        "ip {args}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Routes as iproute2 lists them, less the kernel's own in the local table and the IPv6
/// link-local ones: the fresh link's peer has another name and order.
fn ip_routes() -> String {
    let all = ip("-4 route show table all") + &ip("-6 route show table all");
    let kept: Vec<&str> = all
        .lines()
        .filter(|l| !l.contains("fe80::") && !l.contains("table local"))
        .collect();
    kept.join("\n")
}

const FRESH: RestoreOptions = RestoreOptions {
    restore_mac: false,
    announce: false,
    keep_link: false,
    carrier_first: false,
};

/// vfa0 replaced by a fresh link and `saved` restored onto it: clean, equal, and a second
/// restore changes nothing.
async fn replace_and_restore(handle: &rtnetlink::Handle, saved: &SavedState) {
    ip_batch("link del vfa0\nlink add vfb0 type veth peer name vfb0p\nlink set vfb0p up\n").unwrap();
    let onto = index_of("vfb0");
    assert_clean(&restore(handle, saved, onto, FRESH).await.unwrap());
    let restored = capture(handle, "vfa0").await.unwrap();
    assert!(restored.unrestorable.is_empty(), "{:?}", restored.unrestorable);
    assert_eq!(comparable(&restored.state), comparable(&saved.interface));
    let again = restore(handle, saved, onto, FRESH).await.unwrap();
    assert_clean(&again);
    assert!(again.applied.is_empty(), "{:#?}", again.applied);
}

fn leg(device: Option<&str>, gateway: &str, weight: u16, onlink: bool) -> Nexthop {
    Nexthop {
        device: device.map(str::to_owned),
        gateway: Some(gateway.parse().unwrap()),
        weight,
        onlink,
    }
}

/// IPv4 and IPv6 multipath routes with one leg through the VF and one through another link,
/// with weights, an on-link leg and route metrics. On the VF's unregistration IPv4 drops the
/// whole route and IPv6 only its leg; either way the restore ends with the saved route.
#[tokio::test(flavor = "current_thread")]
async fn multipath_routes_with_a_leg_through_the_vf_restore_whole() {
    enter_fresh().unwrap();
    ip_batch(&format!(
        "{TWO_LINKS}route add 198.51.100.0/24 mtu lock 1300 advmss 1200 nexthop via 198.18.40.1 dev vfa0 weight 3 nexthop via 198.18.41.1 dev oth0
route add 203.0.113.0/24 table 100 nexthop via 192.0.2.1 dev vfa0 onlink nexthop via 198.18.41.1 dev oth0 weight 5
route add 2001:db8:900::/48 mtu 1300 nexthop via 2001:db8:40::1 dev vfa0 weight 2 nexthop via 2001:db8:41::1 dev oth0
route add 2001:db8:901::/48 metric 50 table 100 nexthop via 2001:db8:41::1 dev oth0 nexthop via 2001:db8:40::1 dev vfa0 weight 256
"
    ))
    .unwrap();
    let handle = connect().unwrap();
    let captured = capture(&handle, "vfa0").await.unwrap();
    assert!(captured.unrestorable.is_empty(), "{:?}", captured.unrestorable);
    let legs: Vec<(String, Vec<Nexthop>)> = captured
        .state
        .routes
        .iter()
        .filter(|r| !r.nexthops.is_empty())
        .map(|r| {
            (
                format!("{}/{} table {}", r.destination, r.prefix_len, r.table),
                r.nexthops.clone(),
            )
        })
        .collect();
    assert_eq!(
        legs,
        [
            (
                "203.0.113.0/24 table 100".into(),
                vec![
                    leg(None, "192.0.2.1", 1, true),
                    leg(Some("oth0"), "198.18.41.1", 5, false)
                ]
            ),
            (
                "2001:db8:901::/48 table 100".into(),
                vec![
                    leg(Some("oth0"), "2001:db8:41::1", 1, false),
                    leg(None, "2001:db8:40::1", 256, false)
                ]
            ),
            (
                "198.51.100.0/24 table 254".into(),
                vec![
                    leg(None, "198.18.40.1", 3, false),
                    leg(Some("oth0"), "198.18.41.1", 1, false)
                ]
            ),
            (
                "2001:db8:900::/48 table 254".into(),
                vec![
                    leg(None, "2001:db8:40::1", 2, false),
                    leg(Some("oth0"), "2001:db8:41::1", 1, false)
                ]
            ),
        ]
    );
    let ipv4 = captured
        .state
        .routes
        .iter()
        .find(|r| r.prefix_len == 24 && r.table == 254 && !r.nexthops.is_empty());
    assert_eq!(
        ipv4.map(|r| r.metrics.clone()),
        Some([(1, 1 << 2), (2, 1300), (8, 1200)].into()),
        "mtu lock 1300 advmss 1200"
    );
    let before = ip_routes();
    let saved = seal_and_open(captured.state);
    replace_and_restore(&handle, &saved).await;
    assert_eq!(ip_routes(), before);
}

/// A leg through a link that is gone by restore time fails its route, with the reason; the
/// rest of the state is restored.
#[tokio::test(flavor = "current_thread")]
async fn a_multipath_route_whose_other_link_is_gone_fails_with_the_reason() {
    enter_fresh().unwrap();
    ip_batch(&format!(
        "{TWO_LINKS}route add 198.51.100.0/24 nexthop via 198.18.40.1 dev vfa0 nexthop via 198.18.41.1 dev oth0
route add 198.51.101.0/24 via 198.18.40.1 dev vfa0
"
    ))
    .unwrap();
    let handle = connect().unwrap();
    let saved = seal_and_open(capture(&handle, "vfa0").await.unwrap().state);
    ip_batch("link del oth0\nlink del vfa0\nlink add vfb0 type veth peer name vfb0p\nlink set vfb0p up\n").unwrap();
    let report = restore(&handle, &saved, index_of("vfb0"), FRESH).await.unwrap();
    assert_eq!(
        report.failed,
        ["route 198.51.100.0/24 nexthop via 198.18.40.1 dev (this link) weight 1 nexthop via 198.18.41.1 dev oth0 weight 1 table 254: the link oth0 of a leg is gone"]
    );
    assert!(ip("-4 route show 198.51.101.0/24").contains("via 198.18.40.1 dev vfa0"));
}

/// A route through a nexthop object is named as not restored at capture.
#[tokio::test(flavor = "current_thread")]
async fn a_route_through_a_nexthop_object_is_named_unrestorable() {
    enter_fresh().unwrap();
    ip_batch(&format!(
        "{TWO_LINKS}nexthop add id 7 via 198.18.40.1 dev vfa0\nroute add 198.51.100.0/24 nhid 7\n"
    ))
    .unwrap();
    let handle = connect().unwrap();
    let captured = capture(&handle, "vfa0").await.unwrap();
    assert_eq!(
        captured.unrestorable,
        ["route 198.51.100.0/24 table 254: it uses nexthop object 7; nexthop objects are not restored"]
    );
}

const RULES: &str = "rule add iif vfa0 table 100 priority 100
rule add oif vfa0 table 101 priority 101
rule add from 198.18.40.2 table 102 priority 102
rule add from 198.18.40.0/24 fwmark 0x10/0xff table 103 priority 103
rule add not iif vfa0 to 10.0.0.0/8 tos 0x10 table 1000 priority 106
rule add from 10.9.9.9 table 107 priority 107
rule add iif oth0 table 108 priority 108
";
/// IPv6 rules; `ip -batch` takes no `-6` per line.
const RULES6: [&str; 3] = [
    "-6 rule add from 2001:db8:40::2 table 104 priority 104",
    "-6 rule add iif vfa0 lookup main suppress_prefixlength 0 priority 105",
    "-6 rule add from 2001:db8:40::/64 oif vfa0 prohibit priority 109",
];

/// Rules naming the VF or covering its addresses are saved (not the others, not the kernel's
/// defaults); those removed while the VF was away are put back, equal in every field.
#[tokio::test(flavor = "current_thread")]
async fn rules_naming_the_vf_or_its_addresses_are_put_back() {
    enter_fresh().unwrap();
    ip_batch(&format!("{TWO_LINKS}{RULES}")).unwrap();
    for rule in RULES6 {
        ip(rule);
    }
    let handle = connect().unwrap();
    let captured = capture(&handle, "vfa0").await.unwrap();
    assert!(captured.unrestorable.is_empty(), "{:?}", captured.unrestorable);
    let priorities: Vec<u32> = captured.state.rules.iter().map(|r| r.priority).collect();
    let mut sorted = priorities.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        [100, 101, 102, 103, 104, 105, 106, 109],
        "{:#?}",
        captured.state.rules
    );
    let before = (ip("-4 rule show"), ip("-6 rule show"));
    let saved = seal_and_open(captured.state);
    // Removed while the VF was away.
    ip_batch("rule del priority 100\nrule del priority 103\n").unwrap();
    ip("-6 rule del priority 104");
    replace_and_restore(&handle, &saved).await;
    assert_eq!((ip("-4 rule show"), ip("-6 rule show")), before);
}

/// A rule with a selector the state does not model is named at capture, with what it holds.
#[tokio::test(flavor = "current_thread")]
async fn a_rule_with_selectors_not_modelled_is_named_unrestorable() {
    enter_fresh().unwrap();
    ip_batch(&format!(
        "{TWO_LINKS}rule add iif vfa0 ipproto tcp dport 80 table 100 priority 100\nrule add from 198.18.40.2 uidrange 1000-2000 table 100 priority 101\n"
    ))
    .unwrap();
    let handle = connect().unwrap();
    let captured = capture(&handle, "vfa0").await.unwrap();
    assert_eq!(captured.unrestorable.len(), 2, "{:?}", captured.unrestorable);
    let first = &captured.unrestorable[0];
    assert!(
        first.starts_with("policy rule IPv4 priority 100 of vfa0: ")
            && first.contains("IpProtocol(Tcp)")
            && first.contains("DestinationPortRange(RulePortRange { start: 80, end: 80 })")
            && first.ends_with(" are not restored"),
        "{first}"
    );
    assert!(
        captured.unrestorable[1].starts_with("policy rule IPv4 priority 101 of vfa0: UidRange"),
        "{:?}",
        captured.unrestorable
    );
}

fn write_sysctl(key: &str, value: &str) {
    let (family, name) = key.split_once('/').unwrap();
    std::fs::write(format!("/proc/sys/net/{family}/conf/vfa0/{name}"), value).unwrap();
}

/// The VF's tuned sysctls are saved and written onto the fresh link.
#[tokio::test(flavor = "current_thread")]
async fn tuned_sysctls_are_carried_to_the_fresh_link() {
    enter_fresh().unwrap();
    ip_batch(TWO_LINKS).unwrap();
    let tuned = [
        ("ipv4/rp_filter", "2"),
        ("ipv4/arp_ignore", "1"),
        ("ipv4/forwarding", "1"),
        ("ipv6/accept_ra", "0"),
        ("ipv6/forwarding", "1"),
    ];
    for (key, value) in tuned {
        write_sysctl(key, value);
    }
    let handle = connect().unwrap();
    let captured = capture(&handle, "vfa0").await.unwrap();
    for (key, value) in tuned {
        assert_eq!(
            captured.state.sysctls.get(key).map(String::as_str),
            Some(value),
            "{key}"
        );
    }
    let saved = seal_and_open(captured.state);
    replace_and_restore(&handle, &saved).await;
    for (key, value) in tuned {
        let (family, name) = key.split_once('/').unwrap();
        let now = std::fs::read_to_string(format!("/proc/sys/net/{family}/conf/vfa0/{name}")).unwrap();
        assert_eq!(now.trim(), value, "{key}");
    }
}

/// A root qdisc a user set (the kernel's default has handle 0) and a clsact qdisc are named at
/// capture; the default is not.
#[tokio::test(flavor = "current_thread")]
async fn a_qdisc_a_user_set_on_the_vf_is_named_unrestorable() {
    enter_fresh().unwrap();
    ip_batch(TWO_LINKS).unwrap();
    let handle = connect().unwrap();
    let plain = capture(&handle, "vfa0").await.unwrap();
    assert!(plain.unrestorable.is_empty(), "{:?}", plain.unrestorable);
    for args in [
        "qdisc add dev vfa0 root handle 1: pfifo limit 100",
        "qdisc add dev vfa0 clsact",
    ] {
        let out = Command::new("tc").args(args.split_whitespace()).output().unwrap();
        assert!(
            out.status.success(),
            "tc {args}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let captured = capture(&handle, "vfa0").await.unwrap();
    assert_eq!(
        captured.unrestorable,
        [
            "qdisc pfifo on vfa0 is not restored",
            "qdisc clsact on vfa0 is not restored"
        ]
    );
}

/// Moved onto a standby that carries another leg of the route already (same gateway), the
/// VF's leg joins it, weights added, instead of failing as a duplicate leg: both families.
#[tokio::test(flavor = "current_thread")]
async fn a_standby_carrying_another_leg_takes_the_vfs_leg_into_it() {
    enter_fresh().unwrap();
    ip_batch(&format!(
        "{TWO_LINKS}route add 192.0.2.0/24 nexthop via 192.0.2.1 dev vfa0 weight 2 onlink nexthop via 192.0.2.1 dev oth0 weight 3 onlink
route add 2001:db8:77::/64 nexthop via fe80::77 dev vfa0 weight 2 nexthop via fe80::77 dev oth0 weight 3
"
    ))
    .unwrap();
    let handle = connect().unwrap();
    let saved = seal_and_open(capture(&handle, "vfa0").await.unwrap().state);
    let standby = RestoreOptions {
        keep_link: true,
        ..FRESH
    };
    assert_clean(&restore(&handle, &saved, index_of("oth0"), standby).await.unwrap());
    assert!(
        ip("-4 route show 192.0.2.0/24").contains("via 192.0.2.1 dev oth0"),
        "{}",
        ip("-4 route show 192.0.2.0/24")
    );
    let v6 = ip("-6 route show 2001:db8:77::/64");
    assert!(v6.contains("via fe80::77 dev oth0") && !v6.contains("vfa0"), "{v6}");
    replace_and_restore(&handle, &saved).await;
}
