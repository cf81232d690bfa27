//! The QEMU test bed itself: the guest boots under TCG and its agent answers over the real
//! virtio-serial port, the peer reaches it through the e1000e, a live migration between two
//! QEMU processes keeps it alive, and a test that fails half-way leaves nothing behind.

use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use serde_json::json;
use vfmig_host::qmp::migration::MigrationInfo;
use vfmig_host::qmp::Qmp;
use vfmig_testbed::exclusive;
use vfmig_testbed::fabric::{Fabric, GUEST_V4};
use vfmig_testbed::image::guest_image;
use vfmig_testbed::probe::{Probe, TcpProbe};
use vfmig_testbed::vm::{ScratchDir, Vm, VmConfig};

const MAC: &str = "52:54:00:10:00:01";
const BOOT_DEADLINE: Duration = Duration::from_secs(90);

fn echo_v4() -> SocketAddr {
    SocketAddr::new(GUEST_V4.parse().unwrap(), 7)
}

fn config(name: &'static str, tap: &str, incoming: bool) -> VmConfig {
    VmConfig {
        name,
        tap: Some(tap.into()),
        nic: true,
        mac: MAC.into(),
        agent: true,
        incoming,
        hook: true,
        iommu: false,
        standby: false,
        failover: false,
        pf: None,
        spare_port: false,
        second_vf: None,
    }
}

/// Polls `query-migrate` until the migration ends, within `deadline`.
async fn wait_migration(qmp: &Qmp, deadline: Duration) -> MigrationInfo {
    let until = Instant::now() + deadline;
    loop {
        let info: MigrationInfo = qmp.query("query-migrate", None).await.unwrap();
        if info.is_finished() {
            return info;
        }
        assert!(
            Instant::now() < until,
            "migration still {:?} after {deadline:?}",
            info.status
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "current_thread")]
async fn the_guest_boots_answers_hello_and_echoes_through_the_e1000e() {
    let _one = exclusive();
    let image = guest_image().unwrap();
    let fabric = Fabric::new().unwrap();
    fabric.add_tap("tap-src").unwrap();
    let dir = ScratchDir::new("bed").unwrap();
    let vm = Vm::start(image, &dir.0, &config("source", "tap-src", false)).unwrap();

    let (_channel, session) = vm.agent(BOOT_DEADLINE).await.unwrap();
    let boot = vm.started.elapsed();
    println!("boot to hello: {:.1} s (target under TCG: < 30 s)", boot.as_secs_f64());
    assert!(session.guest.agent.starts_with("vfmig-guestd "), "{:?}", session.guest);

    let mut tcp = TcpProbe::connect(&fabric.peer, echo_v4()).unwrap();
    tcp.round_trip("hello through the e1000e\n").unwrap();
    let probe = Probe::start(&fabric.peer, echo_v4()).unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let report = probe.stop();
    println!(
        "echo probe: {} sent, {} answered, max gap {} ms",
        report.sent,
        report.received,
        report.max_gap.as_millis()
    );
    assert!(
        report.received * 10 >= report.sent * 9,
        "more than 10% of probes lost: {report:?}"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_live_migration_keeps_the_guest_alive_with_its_nic() {
    let _one = exclusive();
    let image = guest_image().unwrap();
    let fabric = Fabric::new().unwrap();
    fabric.add_tap("tap-src").unwrap();
    fabric.add_tap("tap-dst").unwrap();
    let dir = ScratchDir::new("bed").unwrap();
    let source = Vm::start(image, &dir.0, &config("source", "tap-src", false)).unwrap();
    let destination = Vm::start(image, &dir.0, &config("destination", "tap-dst", true)).unwrap();
    source.agent(BOOT_DEADLINE).await.unwrap();
    let (src, dst) = (source.qmp().await.unwrap(), destination.qmp().await.unwrap());

    let mut tcp = TcpProbe::connect(&fabric.peer, echo_v4()).unwrap();
    tcp.round_trip("before\n").unwrap();
    let probe = Probe::start(&fabric.peer, echo_v4()).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;

    let uri = format!("unix:{}", dir.0.join("migration.sock").display());
    dst.execute("migrate-incoming", Some(json!({ "uri": uri })))
        .await
        .unwrap();
    src.execute("migrate", Some(json!({ "uri": uri }))).await.unwrap();
    let info = wait_migration(&src, Duration::from_secs(120)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let report = probe.stop();
    let ram = info.ram.clone().unwrap_or_default();
    println!(
        "migration {:?}: total {} ms, downtime {} ms, {} MiB transferred; probe max gap {} ms, {} of {} lost",
        info.status,
        info.total_time.unwrap_or(0),
        info.downtime.unwrap_or(0),
        ram.transferred >> 20,
        report.max_gap.as_millis(),
        report.lost(),
        report.sent
    );
    assert_eq!(
        info.status.as_deref(),
        Some("completed"),
        "{info:?}; source qemu: {}",
        source.errors()
    );

    // The same guest, now on the destination: its agent answers there, and the peer's
    // connection made before the migration still carries data both ways.
    let (_channel, session) = destination.agent(Duration::from_secs(30)).await.unwrap();
    assert!(session.guest.agent.starts_with("vfmig-guestd "));
    tcp.round_trip("after\n").unwrap();
    let status: serde_json::Value = dst.execute("query-status", None).await.unwrap();
    assert_eq!(status["status"], "running");
}

/// Every network namespace some thread of some process is in.
fn namespaces_in_use() -> Vec<u64> {
    let mut found = Vec::new();
    for proc_entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(tasks) = std::fs::read_dir(proc_entry.path().join("task")) else {
            continue;
        };
        for task in tasks.flatten() {
            if let Ok(meta) = std::fs::metadata(task.path().join("ns/net")) {
                found.push(meta.ino());
            }
        }
    }
    found
}

#[test]
fn a_test_that_fails_half_way_leaves_no_process_namespace_or_file() {
    let _one = exclusive();
    let image = guest_image().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let failed = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let fabric = Fabric::new().unwrap();
            fabric.add_tap("tap-src").unwrap();
            let dir = ScratchDir::new("bed").unwrap();
            let vm = Vm::start(image, &dir.0, &config("source", "tap-src", false)).unwrap();
            vm.qmp().await.unwrap();
            let host_ns = std::fs::metadata("/proc/thread-self/ns/net").unwrap().ino();
            let peer_ns = std::fs::File::from(fabric.peer.fd().try_clone().unwrap())
                .metadata()
                .unwrap()
                .ino();
            tx.send((vm.pid(), host_ns, peer_ns, dir.0.clone())).unwrap();
            panic!("simulated failure in the middle of a test");
        })
    })
    .join();
    assert!(failed.is_err(), "the simulated failure did not happen");
    let (pid, host_ns, peer_ns, dir) = rx.recv().unwrap();

    let gone = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None);
    assert_eq!(gone, Err(nix::errno::Errno::ESRCH), "QEMU {pid} outlived its test");
    let in_use = namespaces_in_use();
    assert!(
        !in_use.contains(&host_ns),
        "the test's namespace (with its bridge and taps) is still in use"
    );
    assert!(!in_use.contains(&peer_ns), "the peer namespace is still in use");
    assert!(!dir.exists(), "{} was left behind", dir.display());
}
