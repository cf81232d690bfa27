//! A real SR-IOV VF, migrated: on the nested bed (see `vfmig_testbed::nested`) the guest's NIC
//! is an igb VF through vfio-pci with the MAC its PF gave it; vfmig-host unplugs it near the
//! end of pre-copy, plugs a second VF of the same PF on the destination, and the guest
//! restores its addresses, routes and neighbours onto it. L1, on the PF, reaches the guest
//! through the VF before and after. QEMU does not block migrating a vfio VF with
//! `failover_pair_id` set: vfmig's switch-over gate is what keeps this one out.

use std::time::Duration;

use serde_json::Value;
use vfmig_testbed::fabric::GUEST_V4;
use vfmig_testbed::nested::{NestedBed, Side, Vf, MIGRATION_URI, VF_MAC};

/// What a user checks of the guest's network: the VF's driver and MAC, its addresses, every
/// route through it and its static neighbours. One `ip` for all three: every process started
/// in the nested guest costs seconds.
const STATE: &str = "cat /sys/class/net/eth0/address /sys/class/net/eth0/device/uevent; \
    printf 'addr show dev eth0\\nroute show table all dev eth0\\nneigh show dev eth0 nud permanent\\n' | /opt/iproute2/ip -br -batch -";

/// [`STATE`]'s output as a sorted set of lines, without what the kernel makes by itself for
/// any link (its link-local address, local and multicast routes).
fn state(out: &str) -> Vec<String> {
    let mut lines: Vec<String> = out
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|l| {
            !l.is_empty()
                && (!l.contains('=') || l.starts_with("DRIVER="))
                && !l.contains("proto kernel")
                && !l.starts_with("local ")
                && !l.starts_with("multicast ")
                && !l.starts_with("fe80::")
        })
        .collect();
    lines.sort();
    lines
}

/// vfio-pci device_add arguments for `vf` as the guest's NIC: no mac property, the PF set it.
fn device(vf: &Vf, failover: bool) -> String {
    let mut d = serde_json::json!({
        "driver": "vfio-pci", "host": vf.address, "id": "vf", "bus": "rp1", "rombar": 0,
    });
    if failover {
        d["failover_pair_id"] = "vfmig".into();
    }
    d.to_string()
}

fn fail(what: &str) -> impl FnOnce(String) -> String + '_ {
    move |e| format!("{what}: {e}")
}

/// Waits for the guest's VF to carry traffic from L1's PF: igbvf's link comes up some 20 s
/// after the VF appears.
async fn reachable(bed: &mut NestedBed) -> Result<String, String> {
    let (rc, out) = bed
        .host
        .shell
        .run(
            &format!("for i in $(seq 90); do ping -c 1 -W 1 {GUEST_V4} >/dev/null && exit 0; sleep 1; done; exit 1"),
            Duration::from_secs(150),
        )
        .await?;
    if rc != 0 {
        return Err(format!("L1 never reached the guest through the VF: {out}"));
    }
    // Five in a row, each given 5 s: the nested guest stalls for seconds at a time.
    bed.host.shell.ok(&format!("ping -c 5 -W 5 {GUEST_V4}")).await
}

#[tokio::test(flavor = "current_thread")]
async fn a_vfio_vf_is_unplugged_mid_migration_and_the_guest_restores_onto_a_fresh_vf() {
    let mut bed = NestedBed::boot().await.unwrap_or_else(|e| panic!("{e}"));
    let pf = bed.host.pf.clone();
    let source_vf = bed.provision().await.unwrap_or_else(|e| panic!("{e}"));
    bed.start(Side::Source, Some(&source_vf))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    if let Err(e) = bed.booted(Side::Source).await {
        panic!("{e}\n{}", bed.console(Side::Source).await);
    }
    let (rc, out) = bed
        .guest(Side::Source, STATE, Duration::from_secs(180))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(rc, 0, "{out}");
    let before_state = state(&out);
    for want in ["DRIVER=igbvf", VF_MAC, "198.51.100.0/24 via 198.18.0.1 table 100"] {
        assert!(
            before_state.iter().any(|l| l.contains(want)),
            "{want} missing from the guest's VF: {out}"
        );
    }

    // After the first look inside: by then the guest has started its agent, which takes the
    // nested guest's CPU for some 10 s.
    let before = reachable(&mut bed).await.unwrap_or_else(|e| panic!("before: {e}"));
    assert!(before.contains(" 0% packet loss"), "before: {before}");
    let fresh_vf = bed.provision().await.unwrap_or_else(|e| panic!("{e}"));
    assert_ne!(fresh_vf.index, source_vf.index);
    bed.start(Side::Destination, None)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let (src, dst) = (Side::Source.dir(), Side::Destination.dir());
    let migrate = format!(
        "vfmig-host migrate --qmp {src}/qmp.sock --agent {src}/agent.sock --vf vf --vf-mac {VF_MAC} \
         --vf-device '{}' --uri {MIGRATION_URI} --dest-qmp {dst}/qmp.sock --dest-agent {dst}/agent.sock \
         --plug-device '{}' --plug-mac {VF_MAC} --agent-timeout 60 --prepare-timeout 120 \
         --unplug-timeout 120 --restore-timeout 300 --giveback-timeout 300 --json /tmp/timeline.json 2>&1",
        device(&source_vf, true),
        device(&fresh_vf, false),
    );
    let (rc, out) = bed
        .host
        .shell
        .run(&migrate, Duration::from_secs(900))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    println!("{out}");
    if rc != 0 {
        panic!(
            "vfmig-host migrate exited {rc}\nsource:\n{}\ndestination:\n{}",
            bed.console(Side::Source).await,
            bed.console(Side::Destination).await
        );
    }
    // The source's VF leaves with the source VM, as libvirt's hook releases it.
    let (rc, out) = bed
        .host
        .vfmig(&format!("release --pf {pf} --vf {}", source_vf.index))
        .await;
    assert_eq!(rc, 0, "{out}");

    let after = reachable(&mut bed).await.unwrap_or_else(|e| panic!("after: {e}"));
    assert!(after.contains(" 0% packet loss"), "after: {after}");
    let (rc, out) = bed
        .guest(Side::Destination, STATE, Duration::from_secs(180))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(rc, 0, "{out}");
    assert_eq!(state(&out), before_state, "the guest's network on the fresh VF: {out}");

    let timeline: Value = bed
        .host
        .shell
        .ok("cat /tmp/timeline.json; echo")
        .await
        .map_err(fail("the timeline"))
        .and_then(|t| serde_json::from_str(&t).map_err(|e| format!("{e}: {t}")))
        .unwrap_or_else(|e| panic!("{e}"));
    let at = |phase: &str| {
        timeline["steps"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["phase"] == phase))
            .and_then(|s| s["at_ms"].as_u64())
            .unwrap_or_else(|| panic!("no {phase} in {timeline}"))
    };
    let held = at("held");
    let unplug = at("unplug-requested");
    let deleted = at("unplugged");
    let restored_at = at("restored");
    let downtime = timeline["qemu"]["downtime_ms"].as_u64();
    assert!(held < unplug, "the VF was unplugged during pre-copy, after the hold");
    // QEMU paused before its switch-over and vfmig let it go on only once the VF had left.
    assert!(at("switchover-allowed") > deleted, "{timeline}");
    println!(
        "nested bed, real VF: VF absent {} ms, DEVICE_DELETED {} ms after device_del, QEMU downtime {} ms",
        restored_at - unplug,
        deleted - unplug,
        downtime.map_or("?".into(), |d| d.to_string())
    );
}
