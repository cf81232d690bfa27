//! The DMA hook (guest-agent/kmod) in the real test guest: the agent loads and enables it for
//! the e1000e on the host's request, its counters follow real traffic, disabling and unloading
//! are safe under traffic, and its writes reach QEMU's dirty logging.

use std::time::{Duration, Instant};

use serde_json::json;
use vfmig_host::qmp::migration::MigrationInfo;
use vfmig_host::qmp::Qmp;
use vfmig_testbed::fabric::Fabric;
use vfmig_testbed::hook::{counters, stop, track, HookGuest, CONTROL, EXERCISER, MAC};
use vfmig_testbed::probe::Probe;
use vfmig_testbed::shell::GuestShell;
use vfmig_testbed::vm::Vm;

/// The hook's pages-dirtied counter for `pci`, which must be tracked.
async fn pages(shell: &mut GuestShell, pci: &str) -> u64 {
    let list = shell.ok(&format!("cat {CONTROL}/devices")).await.unwrap();
    assert!(list.contains(pci), "{pci} not tracked: {list:?}");
    counters(shell, pci).await.unwrap().1
}

/// Probes the guest from the peer for `how_long`; the number of answers.
fn traffic(fabric: &Fabric, how_long: Duration) -> u64 {
    let probe = Probe::start(&fabric.peer, HookGuest::echo()).unwrap();
    std::thread::sleep(how_long);
    probe.stop().received
}

fn assert_no_kernel_trouble(vm: &Vm) {
    let console = vm.console();
    for bad in ["BUG:", "Oops", "WARNING:", "Call Trace"] {
        assert!(!console.contains(bad), "guest kernel reported {bad}:\n{console}");
    }
}

#[tokio::test(flavor = "current_thread")]
async fn the_hook_counts_while_enabled_not_while_disabled_and_unloads_safely_under_traffic() {
    let mut guest = HookGuest::boot(true, false).await.unwrap();
    let HookGuest {
        vm,
        fabric,
        channel,
        shell,
        hello,
        ..
    } = &mut guest;
    assert!(hello.capabilities.kernel_hook, "the guest has the module installed");
    assert_eq!(
        shell
            .run(&format!("test -d {CONTROL}"), Duration::from_secs(5))
            .await
            .unwrap()
            .0,
        1,
        "the module is not loaded before the host asks"
    );

    let tracking = track(channel, MAC).await.unwrap();
    assert!(tracking.enabled);
    let [device] = &tracking.devices[..] else {
        panic!("one device expected: {tracking:?}")
    };
    let pci = device.pci_address.clone();
    let driver = shell
        .ok(&format!("basename $(readlink /sys/bus/pci/devices/{pci}/driver)"))
        .await
        .unwrap();
    assert_eq!(driver.trim(), "e1000e", "the tracked device is the VF");

    // Enabled: every packet the e1000e receives is handed back to the CPU by an unmap or a
    // sync, and each such call covers at least one page.
    let before = pages(shell, &pci).await;
    let answered = traffic(fabric, Duration::from_secs(2));
    let enabled_growth = pages(shell, &pci).await - before;
    eprintln!("enabled: {answered} probes answered, {enabled_growth} pages dirtied");
    assert!(answered > 500, "traffic flowed ({answered} answers)");
    assert!(
        enabled_growth >= answered,
        "{enabled_growth} pages dirtied for {answered} packets received"
    );

    // Disabled with the device still tracked: the probes are gone, nothing is counted.
    shell.ok(&format!("echo 0 > {CONTROL}/enabled")).await.unwrap();
    let before = pages(shell, &pci).await;
    let answered = traffic(fabric, Duration::from_secs(2));
    let disabled_growth = pages(shell, &pci).await - before;
    eprintln!("disabled: {answered} probes answered, {disabled_growth} pages dirtied");
    assert!(answered > 500, "traffic flowed ({answered} answers)");
    assert_eq!(disabled_growth, 0, "a disabled hook dirtied pages");

    // Unloading while enabled, with traffic flowing: the guest keeps answering.
    shell.ok(&format!("echo 1 > {CONTROL}/enabled")).await.unwrap();
    let probe = Probe::start(&fabric.peer, HookGuest::echo()).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    shell.ok("rmmod vfmig_dirty").await.unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let report = probe.stop();
    eprintln!(
        "unload under traffic: {} of {} answered, max gap {:?}",
        report.received, report.sent, report.max_gap
    );
    assert!(
        report.max_gap < Duration::from_millis(500),
        "traffic stalled {:?} around the unload",
        report.max_gap
    );
    assert_eq!(
        shell
            .run(&format!("test -d {CONTROL}"), Duration::from_secs(5))
            .await
            .unwrap()
            .0,
        1,
        "the module is gone"
    );
    let after = stop(channel).await.unwrap();
    assert!(!after.enabled && after.devices.is_empty(), "{after:?}");
    assert_no_kernel_trouble(vm);
}

/// QEMU's dirty-page rate for the guest as it is now, in bytes per second: a migration to
/// nowhere (`exec:cat > /dev/null`) is started, its dirty logging counts every page written
/// (same-value writes included), and it is cancelled before it can switch over (downtime-limit
/// 1 ms, pause-before-switchover), which leaves the VM running. QMP `calc-dirty-rate` cannot
/// be used under TCG: dirty-bitmap mode reads 0 there and page-sampling compares hashes, so it
/// misses the hook's same-value writes.
async fn dirty_rate(qmp: &Qmp) -> (u64, String) {
    qmp.execute(
        "migrate-set-capabilities",
        Some(json!({ "capabilities": [{ "capability": "pause-before-switchover", "state": true }] })),
    )
    .await
    .unwrap();
    qmp.execute(
        "migrate-set-parameters",
        Some(json!({ "max-bandwidth": RATE_BANDWIDTH, "downtime-limit": 1 })),
    )
    .await
    .unwrap();
    qmp.execute("migrate", Some(json!({ "uri": "exec:cat > /dev/null" })))
        .await
        .unwrap();
    let started = Instant::now();
    let mut rates = Vec::new();
    let mut status = String::new();
    let mut syncs = 0;
    while started.elapsed() < RATE_WINDOW && rates.len() < 3 {
        let info: MigrationInfo = qmp.query("query-migrate", None).await.unwrap();
        status = info.status.clone().unwrap_or_default();
        if status != "active" && status != "setup" {
            break;
        }
        if let Some(ram) = info.ram {
            // The first pass copies all of RAM; its rate says nothing about the workload.
            if ram.dirty_sync_count >= 3 && ram.dirty_sync_count != syncs {
                rates.push(ram.dirty_pages_rate * 4096);
            }
            syncs = ram.dirty_sync_count;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    qmp.execute("migrate_cancel", None).await.unwrap();
    loop {
        let info: MigrationInfo = qmp.query("query-migrate", None).await.unwrap();
        if info.status.as_deref() == Some("cancelled") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let running: serde_json::Value = qmp.execute("query-status", None).await.unwrap();
    assert_eq!(running["status"], "running", "the VM runs again after the measurement");
    rates.sort_unstable();
    let median = rates.get(rates.len() / 2).copied().unwrap_or(0);
    (median, format!("{status}, {syncs} syncs, rates {rates:?}"))
}

const RATE_BANDWIDTH: u64 = 32 << 20;
const RATE_WINDOW: Duration = Duration::from_secs(12);
/// The exerciser's working set: 64 MiB.
const EXERCISED_PAGES: u64 = 16384;

#[tokio::test(flavor = "current_thread")]
async fn the_hooks_writes_reach_qemus_dirty_logging() {
    writes_reach_dirty_logging(false).await;
}

/// Behind an IOMMU the device addresses are IOVAs: the hook must translate them through the
/// device's domain, before the unmap removes the mapping. A wrong translation would land on
/// no page (IOVAs lie above this guest's RAM) and the rate would stay at zero.
#[tokio::test(flavor = "current_thread")]
async fn the_hooks_writes_reach_qemus_dirty_logging_behind_an_iommu() {
    writes_reach_dirty_logging(true).await;
}

async fn writes_reach_dirty_logging(iommu: bool) {
    let mut guest = HookGuest::boot(true, iommu).await.unwrap();
    let HookGuest { vm, channel, shell, .. } = &mut guest;
    let qmp = vm.qmp().await.unwrap();
    let tracking = track(channel, MAC).await.unwrap();
    let pci = tracking.devices[0].pci_address.clone();
    let domain = shell
        .ok(&format!(
            "cat /sys/bus/pci/devices/{pci}/iommu_group/type 2>/dev/null || echo none"
        ))
        .await
        .unwrap();
    eprintln!("the e1000e's IOMMU domain: {}", domain.trim());
    if iommu {
        assert!(
            domain.trim().starts_with("DMA"),
            "the e1000e is not behind a translating IOMMU: {domain}"
        );
    }
    let ex = EXERCISER;
    shell.ok("modprobe vfmig_exercise").await.unwrap();
    shell
        .ok(&format!(
            "echo {pci} > {ex}/device && echo {EXERCISED_PAGES} > {ex}/pages"
        ))
        .await
        .unwrap();

    let mut measure = async |mode: &str, hook: &str| {
        shell
            .ok(&format!(
                "echo {hook} > {CONTROL}/enabled && echo {mode} > {ex}/mode && echo 1 > {ex}/running"
            ))
            .await
            .unwrap();
        let (rate, how) = dirty_rate(&qmp).await;
        shell.ok(&format!("echo 0 > {ex}/running")).await.unwrap();
        eprintln!(
            "exerciser {mode}, hook enabled={hook}: {:.1} MB/s dirtied ({how})",
            rate as f64 / 1e6
        );
        rate
    };
    // The reference: the same working set written by the CPU, which dirty logging always sees.
    let cpu = measure("cpu", "0").await;
    let hooked = measure("dma", "1").await;
    let unhooked = measure("dma", "0").await;
    let exercised = EXERCISED_PAGES * 4096;
    let period = exercised as f64 / RATE_BANDWIDTH as f64;
    eprintln!(
        "{} MiB exercised; at {} MiB/s a pass takes {period:.1} s, so about {:.1} MB/s is expected",
        exercised >> 20,
        RATE_BANDWIDTH >> 20,
        exercised as f64 / period / 1e6
    );
    assert!(
        cpu as f64 > 0.8 * exercised as f64 / period,
        "the CPU reference dirtied {cpu} B/s"
    );
    let ratio = hooked as f64 / cpu as f64;
    assert!(
        (0.8..1.25).contains(&ratio),
        "with the hook, DMA map/unmap dirtied {hooked} B/s, {ratio:.2}x what CPU writes of the same pages did"
    );
    assert!(
        (unhooked as f64) < 0.05 * cpu as f64,
        "without the hook, DMA map/unmap dirtied {unhooked} B/s: the hypervisor should not have seen it"
    );
    assert_no_kernel_trouble(vm);
}
