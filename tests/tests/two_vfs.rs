//! A VM with two VFs, each on a network of its own with its own addresses, routes and
//! neighbours and a peer's TCP connection through it: vfmig migrates both onto fresh VFs, and
//! with one VF that will not unplug, gives both back on the source as they were.

use std::net::SocketAddr;
use std::time::Duration;

use vfmig_host::migration::{
    migrate_source, plug_destination, Deadlines, Fallback, FreshVf, MigrateError, Phase, Plan, PlugSpec, Timeline,
    VfPlan,
};
use vfmig_testbed::bed::{agent, echo, plan, show, Bed, BOOT, FRESH_MAC, FRESH_MAC2, SOURCE_MAC, SOURCE_MAC2};
use vfmig_testbed::fabric::GUEST2_V4;
use vfmig_testbed::hook::CONTROL;
use vfmig_testbed::probe::{wait_answering, TcpProbe};
use vfmig_testbed::vm::{vf_device_json, Vm, VF2_ID, VF_ID};

/// The guest's echo service on its second VF's address.
fn echo2() -> SocketAddr {
    SocketAddr::new(GUEST2_V4.parse().expect("a constant address"), 7)
}

/// Each VF's network as an operator compares it: its global addresses, the routes it was
/// given (every table) and its permanent neighbours, by interface.
fn network(dev: &str) -> String {
    format!(
        "echo {dev}:; ip -o addr show dev {dev} scope global | awk '{{print $4}}' | sort; \
         ip route show table all dev {dev} | grep -v -e 'proto kernel' -e '^local' -e '^broadcast' -e '^multicast' -e '^anycast' -e '^fe80' | sort; \
         ip neigh show dev {dev} nud permanent | sort"
    )
}

async fn both_networks(vm: &Vm) -> String {
    let mut shell = vm
        .shell(Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut out = String::new();
    for dev in ["eth0", "eth1"] {
        out += &shell.ok(&network(dev)).await.unwrap_or_else(|e| panic!("{e}"));
    }
    out
}

fn two_vf_plan(bed: &Bed) -> Plan {
    let mut plan = plan(&bed.uri, Fallback::Refuse);
    plan.vfs.push(VfPlan {
        id: VF2_ID.into(),
        device: Some(vf_device_json("e1000e", VF2_ID, SOURCE_MAC2)),
        mac: None,
    });
    plan
}

/// A booted two-VF bed, a TCP connection through each VF, and the guest's network.
async fn ready(unpluggable: bool) -> (Bed, TcpProbe, TcpProbe, String) {
    let bed = Bed::with_two_vfs(unpluggable).await;
    bed.wait_booted();
    wait_answering(&bed.fabric.peer, echo2(), BOOT).unwrap_or_else(|e| panic!("{e}"));
    let before = both_networks(&bed.source).await;
    assert!(
        before.contains("198.18.0.10/24") && before.contains("198.18.1.10/24") && before.contains("table 101"),
        "{before}"
    );
    let mut first = TcpProbe::connect(&bed.fabric.peer, echo()).expect("TCP through the first VF");
    let mut second = TcpProbe::connect(&bed.fabric.peer, echo2()).expect("TCP through the second VF");
    first.round_trip("before\n").unwrap();
    second.round_trip("before\n").unwrap();
    (bed, first, second, before)
}

#[tokio::test(flavor = "current_thread")]
async fn both_vfs_are_restored_onto_fresh_vfs_and_both_connections_survive() {
    let (bed, mut first, mut second, before) = ready(true).await;
    let plan = two_vf_plan(&bed);
    let mut timeline = Timeline::new();
    let saved = migrate_source(&bed.src, &agent(&bed.source), &plan, &mut timeline, &mut show)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", timeline.table()))
        .expect("the guest saved both VFs' state");
    assert_eq!(saved.len(), 2, "{saved:?}");
    let spec = PlugSpec {
        vfs: [(VF_ID, FRESH_MAC), (VF2_ID, FRESH_MAC2)]
            .into_iter()
            .zip(saved)
            .map(|((id, mac), saved)| FreshVf {
                id: id.into(),
                device: vf_device_json("e1000e", id, mac),
                mac: None,
                saved,
            })
            .collect(),
        restore_mac: false,
        attempts: 3,
        deadlines: Deadlines::default(),
    };
    let restored = plug_destination(&bed.dst, &agent(&bed.destination), &spec, &mut timeline, &mut show)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", timeline.table()));
    println!("{}", timeline.table());

    // Both VFs were tracked through pre-copy, both saved before either left, both restored.
    let hook = &timeline
        .step(Phase::HookEnabled)
        .expect("the hook tracked the VFs")
        .detail;
    assert!(hook.contains("(VF vf)") && hook.contains("(VF vf2)"), "{hook}");
    let saves = timeline.steps.iter().filter(|s| s.phase == Phase::StateSaved).count();
    assert_eq!(saves, 2, "{}", timeline.table());
    assert_eq!(restored.len(), 2);
    for r in &restored {
        assert!(r.failed.is_empty() && r.mismatches.is_empty(), "{r:?}");
    }

    // What the operator checks: the fresh VFs in the VM, the guest's network on them as it was,
    // both peers' connections alive.
    for (id, mac) in [(VF_ID, FRESH_MAC), (VF2_ID, FRESH_MAC2)] {
        let path = format!("/machine/peripheral/{id}");
        let plugged: String = bed
            .dst
            .query("qom-get", Some(serde_json::json!({ "path": path, "property": "mac" })))
            .await
            .unwrap_or_else(|e| panic!("{id} is not plugged on the destination: {e}"));
        assert_eq!(plugged, mac);
    }
    assert_eq!(
        both_networks(&bed.destination).await,
        before,
        "the guest's network changed"
    );
    first
        .round_trip("after\n")
        .expect("the connection through the first VF");
    second
        .round_trip("after\n")
        .expect("the connection through the second VF");
}

#[tokio::test(flavor = "current_thread")]
async fn a_vf_that_will_not_unplug_keeps_both_on_the_source_as_they_were() {
    let (bed, mut first, mut second, before) = ready(false).await;
    let plan = two_vf_plan(&bed);
    let mut timeline = Timeline::new();
    let err = migrate_source(&bed.src, &agent(&bed.source), &plan, &mut timeline, &mut show)
        .await
        .expect_err("a VF that will not unplug cannot migrate");
    println!("{}{err}", timeline.table());
    assert_eq!(err.exit_code(), 1, "{err}");
    assert!(matches!(err, MigrateError::GaveBack { .. }), "{err}");
    assert!(err.to_string().contains("unplugging vf2 was refused"), "{err}");

    // Both VFs plugged on the source with their own MACs, the VM running there with its
    // network as it was, nothing left saved or tracking in the guest, both connections alive.
    for (id, mac) in [(VF_ID, SOURCE_MAC), (VF2_ID, SOURCE_MAC2)] {
        let path = format!("/machine/peripheral/{id}");
        let plugged: String = bed
            .src
            .query("qom-get", Some(serde_json::json!({ "path": path, "property": "mac" })))
            .await
            .unwrap_or_else(|e| panic!("{id} is not plugged on the source: {e}"));
        assert_eq!(plugged, mac);
    }
    let status: serde_json::Value = bed.src.execute("query-status", None).await.unwrap();
    assert_eq!(status["status"], "running");
    wait_answering(&bed.fabric.peer, echo(), Duration::from_secs(10)).unwrap();
    wait_answering(&bed.fabric.peer, echo2(), Duration::from_secs(10)).unwrap();
    assert_eq!(both_networks(&bed.source).await, before, "the guest's network changed");
    let mut shell = bed.source.shell(Duration::from_secs(30)).await.unwrap();
    let leftovers = shell.ok("ls -A /run/vfmig 2>/dev/null").await.unwrap();
    assert_eq!(leftovers.trim(), "", "saved states left in the guest");
    let tracking = shell.ok(&format!("cat {CONTROL}/devices")).await.unwrap();
    assert_eq!(tracking.trim(), "", "the DMA hook still tracks");
    first
        .round_trip("after\n")
        .expect("the connection through the first VF");
    second
        .round_trip("after\n")
        .expect("the connection through the second VF");
}
