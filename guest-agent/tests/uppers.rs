//! Upper devices on the VF (macvlan here: the host kernel has no 8021q or ipvlan; the VLAN case
//! runs in the QEMU guest, tests/tests/stacked_state.rs) captured with their own state and made
//! again on a fresh lower, each test in its own throw-away network namespace.

use vfmig_guest::netstate::{capture, connect, restore, RestoreOptions};
use vfmig_protocol::netstate::{self, UpperKind};
use vfmig_testbed::netns::{enter_fresh, ip_batch};

mod common;
use common::{assert_clean, comparable, index_of, seal_and_open};

/// The lower (the VF) and two macvlans with their own addresses (both families), routes (main
/// and table 100, on-link and gateway), neighbours, MTU and MAC; one of them down.
const SETUP: &str = "link add vfa0 type veth peer name vfa0p
link set vfa0p up
link set vfa0 address 02:00:00:00:0a:01 up
addr add 198.18.10.2/24 dev vfa0
link add mv0 link vfa0 address 02:00:00:00:c0:01 mtu 1400 type macvlan mode bridge
link set mv0 up
addr add 198.18.40.2/24 dev mv0
addr add 2001:db8:40::2/64 dev mv0 nodad
route add 198.51.100.0/24 via 198.18.40.1 dev mv0
route add 203.0.113.0/24 dev mv0 table 100 metric 30
route add 2001:db8:41::/64 via 2001:db8:40::1 dev mv0
neigh add 198.18.40.1 lladdr 02:00:00:01:00:01 dev mv0 nud permanent
neigh add 198.18.40.7 lladdr 02:00:00:01:00:07 dev mv0 nud reachable
neigh add 2001:db8:40::1 lladdr 02:00:00:01:00:02 dev mv0 nud permanent router
link add mv1 link vfa0 address 02:00:00:00:c1:01 type macvlan mode private
addr add 198.18.41.2/24 dev mv1
";

/// What an unplug does: the lower goes, and its uppers with it; a fresh one comes.
fn replace_the_lower() -> u32 {
    ip_batch("link del vfa0\nlink add vfb0 type veth peer name vfb0p\nlink set vfb0p up\n").unwrap();
    index_of("vfb0")
}

#[tokio::test(flavor = "current_thread")]
async fn macvlans_on_the_vf_are_made_again_on_the_fresh_one_with_their_own_state() {
    enter_fresh().unwrap();
    ip_batch(SETUP).unwrap();
    // A macvlan asked for on a macvlan: the kernel makes it on the real device (IFLA_LINK is
    // vfa0), so it is one more upper of the VF.
    ip_batch("link add mv2 link mv0 address 02:00:00:00:c2:01 type macvlan mode vepa\nlink set mv2 up\n").unwrap();
    let handle = connect().unwrap();

    let captured = capture(&handle, "vfa0").await.unwrap();
    assert!(captured.unrestorable.is_empty(), "{:?}", captured.unrestorable);
    let uppers = &captured.state.uppers;
    let names: Vec<&str> = uppers.iter().map(|u| u.state.identity.name.as_str()).collect();
    assert_eq!(names, ["mv0", "mv1", "mv2"]);
    let mv0 = &uppers[0];
    assert_eq!(mv0.kind, UpperKind::Macvlan { mode: 4, flags: 0 }, "bridge mode");
    assert_eq!(uppers[1].kind, UpperKind::Macvlan { mode: 1, flags: 0 }, "private mode");
    assert_eq!(uppers[2].kind, UpperKind::Macvlan { mode: 2, flags: 0 }, "vepa mode");
    assert_eq!(mv0.state.identity.mac.to_string(), "02:00:00:00:c0:01");
    assert_eq!(mv0.state.mtu, 1400);
    assert!(mv0.state.admin_up && !uppers[1].state.admin_up);
    assert_eq!(
        (
            mv0.state.addresses.len(),
            mv0.state.routes.len(),
            mv0.state.neighbours.len()
        ),
        (2, 3, 3),
        "{:#?}",
        mv0.state
    );
    assert_eq!(uppers[1].state.addresses.len(), 1);
    // The VF's own state holds nothing of its uppers'.
    assert_eq!(captured.state.addresses.len(), 1);
    assert!(captured.state.routes.is_empty(), "{:#?}", captured.state.routes);
    let saved = seal_and_open(captured.state);

    let onto = replace_the_lower();
    let options = RestoreOptions {
        announce: true,
        ..RestoreOptions::default()
    };
    let report = restore(&handle, &saved, onto, options).await.unwrap();
    assert_clean(&report);
    for made in [
        "upper mv0 (macvlan mode 4)",
        "upper mv1 (macvlan mode 1)",
        "upper mv2 (macvlan mode 2)",
    ] {
        assert!(
            report.applied.iter().any(|a| a.to_string().starts_with(made)),
            "{made}: {:#?}",
            report.applied
        );
    }
    // vfa0's address, mv0's two and mv2's none: mv1 is down, and says nothing.
    assert_eq!(report.announced, 3, "{:#?}", report);
    let restored = capture(&handle, "vfa0").await.unwrap();
    assert!(restored.unrestorable.is_empty(), "{:?}", restored.unrestorable);
    assert_eq!(comparable(&restored.state), comparable(&saved.interface));
    assert!(netstate::differences(&saved.interface, &restored.state)
        .iter()
        .all(|d| !d.contains("upper")));

    // Run again: every upper is there, of its kind on its lower, and nothing changes.
    let again = restore(&handle, &saved, onto, RestoreOptions::default()).await.unwrap();
    assert_clean(&again);
    assert!(again.applied.is_empty(), "second restore changed {:#?}", again.applied);
    assert!(
        again.unchanged.iter().any(|u| u.to_string().starts_with("upper mv0 ")),
        "{:#?}",
        again.unchanged
    );
    assert_eq!(
        comparable(&capture(&handle, "vfa0").await.unwrap().state),
        comparable(&restored.state)
    );
}

#[tokio::test(flavor = "current_thread")]
async fn an_upper_whose_name_is_taken_fails_by_name_and_the_others_are_restored() {
    enter_fresh().unwrap();
    ip_batch(SETUP).unwrap();
    let handle = connect().unwrap();
    let saved = seal_and_open(capture(&handle, "vfa0").await.unwrap().state);

    let onto = replace_the_lower();
    // Another link came up with mv1's name while the VF was away.
    ip_batch("link add mv1 type veth peer name mv1p\n").unwrap();
    let taken_by = index_of("mv1");
    let report = restore(&handle, &saved, onto, RestoreOptions::default()).await.unwrap();
    assert_eq!(report.failed.len(), 1, "{:#?}", report.failed);
    let failed = &report.failed[0];
    assert!(
        failed.starts_with(&format!("upper mv1: the name is taken by link {taken_by} (veth")),
        "{failed}"
    );
    assert!(
        !report.applied.iter().any(|a| a.to_string().contains("mv1")),
        "{:#?}",
        report.applied
    );

    let restored = capture(&handle, "vfa0").await.unwrap().state;
    assert_eq!(index_of("mv1"), taken_by, "the other link is left alone");
    let mut expected = comparable(&saved.interface);
    expected.uppers.retain(|u| u.state.identity.name != "mv1");
    assert_eq!(comparable(&restored), expected);
    assert_eq!(
        netstate::differences(&saved.interface, &restored),
        ["upper mv1 is missing"]
    );
}
