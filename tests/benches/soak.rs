//! The soak run: one guest migrated back and forth between two sides of the test bed, with
//! vfmig, VFMIG_SOAK_MIGRATIONS times (default 50). Each hop starts a fresh destination QEMU
//! with an empty root port, runs vfmig's source and destination steps, plugs a fresh VF (the
//! MAC alternates), and kills the old source. A TCP connection from the peer, opened before
//! the first hop, must carry data after every one.
//!
//! Per hop it records: success, restore failures and mismatches, the peer's blackout, the
//! guest agent's RSS, the files under /run/vfmig, whether the DMA hook was left tracking
//! anything, the host side's open file descriptors (this process: it is the host agent), and
//! the destination QEMU's RSS. It prints the growth of each against the first hop.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;
use vfmig_host::migration::{
    migrate_source, plug_destination, Deadlines, Fallback, FreshVf, Plan, PlugSpec, Timeline, VfPlan,
};
use vfmig_host::qmp::Qmp;
use vfmig_testbed::exclusive;
use vfmig_testbed::fabric::{Fabric, GUEST_V4};
use vfmig_testbed::hook::CONTROL;
use vfmig_testbed::image::guest_image;
use vfmig_testbed::probe::{wait_answering, Probe, TcpProbe};
use vfmig_testbed::vm::{vf_device_json, ScratchDir, Vm, VmConfig, VF_ID};

const MACS: [&str; 2] = ["52:54:00:10:00:01", "52:54:00:20:00:02"];
const SIDES: [(&str, &str); 2] = [("a", "tap-a"), ("b", "tap-b")];

fn config(side: usize, mac: &str, incoming: bool) -> VmConfig {
    VmConfig {
        name: SIDES[side].0,
        tap: Some(SIDES[side].1.into()),
        nic: !incoming,
        mac: mac.into(),
        agent: true,
        incoming,
        hook: true,
        iommu: false,
        standby: false,
        failover: false,
        pf: false,
        spare_port: false,
        second_vf: None,
    }
}

fn rss_kib(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

struct Hop {
    ok: bool,
    blackout_ms: u128,
    agent_rss_kib: u64,
    run_files: u64,
    hook_left_tracking: bool,
    host_fds: usize,
    qemu_rss_kib: u64,
    took: Duration,
}

async fn start_destination(dir: &Path, side: usize, mac: &str, uri: &str) -> Result<(Vm, Qmp), String> {
    let _ = std::fs::remove_dir_all(dir.join(SIDES[side].0));
    let image = guest_image()?;
    let vm = Vm::start(image, dir, &config(side, mac, true)).map_err(|e| e.to_string())?;
    let qmp = vm.qmp().await?;
    qmp.execute("migrate-incoming", Some(json!({ "uri": uri })))
        .await
        .map_err(|e| e.to_string())?;
    Ok((vm, qmp))
}

/// One hop: `src` → a fresh destination on the other side. The destination VM and its QMP.
async fn hop(
    dir: &Path,
    n: usize,
    src: &Vm,
    src_qmp: &Qmp,
    fabric: &Fabric,
    tcp: &mut TcpProbe,
) -> Result<(Vm, Qmp, Hop), String> {
    let started = Instant::now();
    let (side, mac) = (n % 2, MACS[n % 2]);
    let uri = format!("unix:{}", dir.join(format!("migration-{n}.sock")).display());
    let (dst, dst_qmp) = start_destination(dir, side, mac, &uri).await?;
    let echo = SocketAddr::new(GUEST_V4.parse().map_err(|_| "address")?, 7);
    let probe = Probe::start(&fabric.peer, echo).map_err(|e| e.to_string())?;
    let plan = Plan {
        vfs: vec![VfPlan {
            id: VF_ID.into(),
            device: Some(vf_device_json("e1000e", VF_ID, MACS[1 - side])),
            mac: None,
        }],
        uri,
        fallback: Fallback::Refuse,
        deadlines: Deadlines::default(),
        hold_margin: 64 << 20,
        journal: None,
        standby: vfmig_protocol::message::StandbyRequest::Auto,
    };
    let mut timeline = Timeline::new();
    let mut quiet = |_: &vfmig_host::migration::Step| {};
    let saved = migrate_source(src_qmp, &src.dir.join("agent.sock"), &plan, &mut timeline, &mut quiet)
        .await
        .map_err(|e| format!("hop {n}: {e}\n{}", timeline.table()))?
        .ok_or_else(|| format!("hop {n}: migrated without the guest agent"))?;
    let spec = PlugSpec {
        vfs: saved
            .into_iter()
            .map(|saved| FreshVf {
                device: vf_device_json("e1000e", VF_ID, mac),
                mac: None,
                saved,
            })
            .collect(),
        restore_mac: false,
        attempts: 3,
        deadlines: Deadlines::default(),
    };
    let restored = plug_destination(&dst_qmp, &dst.dir.join("agent.sock"), &spec, &mut timeline, &mut quiet)
        .await
        .map_err(|e| format!("hop {n}: {e}\n{}", timeline.table()))?;
    wait_answering(&fabric.peer, echo, Duration::from_secs(10))?;
    let report = probe.stop();
    tcp.round_trip(&format!("hop {n}\n"))
        .map_err(|e| format!("hop {n}: the peer's TCP connection broke: {e}"))?;

    let mut shell = dst.shell(Duration::from_secs(20)).await?;
    let agent_rss_kib = shell
        .ok("grep VmRSS /proc/$(pidof vfmig-guestd)/status")
        .await?
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let run_files = shell
        .ok("find /run/vfmig -type f | wc -l")
        .await?
        .trim()
        .parse()
        .unwrap_or(u64::MAX);
    let hook_left_tracking = !shell.ok(&format!("cat {CONTROL}/devices")).await?.trim().is_empty();
    let ok = restored.iter().all(|r| r.failed.is_empty() && r.mismatches.is_empty());
    if !ok {
        for r in &restored {
            eprintln!("hop {n}: failed {:?}, mismatches {:?}", r.failed, r.mismatches);
        }
    }
    let qemu_rss_kib = rss_kib(&dst.pid().to_string());
    Ok((
        dst,
        dst_qmp,
        Hop {
            ok,
            blackout_ms: report.max_gap.as_millis(),
            agent_rss_kib,
            run_files,
            hook_left_tracking,
            host_fds: open_fds(),
            qemu_rss_kib,
            took: started.elapsed(),
        },
    ))
}

async fn run() -> Result<bool, String> {
    let migrations: usize = std::env::var("VFMIG_SOAK_MIGRATIONS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(50)
        .max(1);
    let _one = exclusive();
    let image = guest_image()?;
    let fabric = Fabric::new().map_err(|e| e.to_string())?;
    for (_, tap) in SIDES {
        fabric.add_tap(tap).map_err(|e| e.to_string())?;
    }
    let scratch = ScratchDir::new("soak").map_err(|e| e.to_string())?;
    let dir = scratch.0.clone();
    let mut src = Vm::start(image, &dir, &config(1, MACS[1], false)).map_err(|e| e.to_string())?;
    let echo = SocketAddr::new(GUEST_V4.parse().map_err(|_| "address")?, 7);
    wait_answering(&fabric.peer, echo, Duration::from_secs(90))?;
    let mut src_qmp = src.qmp().await?;
    let mut tcp = TcpProbe::connect(&fabric.peer, echo).map_err(|e| e.to_string())?;
    tcp.round_trip("before\n").map_err(|e| e.to_string())?;

    let mut hops: Vec<Hop> = Vec::new();
    let mut failure = None;
    for n in 0..migrations {
        match hop(&dir, n, &src, &src_qmp, &fabric, &mut tcp).await {
            Ok((dst, dst_qmp, h)) => {
                eprintln!(
                    "hop {:>2}/{migrations}: {} in {:.1} s, blackout {} ms, agent RSS {} KiB, /run/vfmig files {}, host fds {}, QEMU RSS {} MiB",
                    n + 1,
                    if h.ok { "ok" } else { "NOT RESTORED" },
                    h.took.as_secs_f64(),
                    h.blackout_ms,
                    h.agent_rss_kib,
                    h.run_files,
                    h.host_fds,
                    h.qemu_rss_kib >> 10
                );
                hops.push(h);
                let old = std::mem::replace(&mut src, dst);
                src_qmp = dst_qmp;
                let old_dir = old.dir.clone();
                drop(old);
                let _ = std::fs::remove_dir_all(old_dir);
            }
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }

    let done = hops.iter().filter(|h| h.ok).count();
    println!("\nsoak: {done}/{migrations} migrations succeeded with the guest's state restored");
    if let Some(e) = &failure {
        println!("stopped at hop {}: {e}", hops.len() + 1);
    }
    if let (Some(first), Some(last)) = (hops.first(), hops.last()) {
        let mut blackouts: Vec<u128> = hops.iter().map(|h| h.blackout_ms).collect();
        blackouts.sort_unstable();
        println!(
            "peer blackout per hop: median {} ms, worst {} ms; the TCP connection passed data after every hop",
            blackouts[blackouts.len() / 2],
            blackouts[blackouts.len() - 1]
        );
        println!("{:<34} {:>10} {:>10} {:>10}", "after hop", "first", "last", "max");
        let row = |what: &str, f: &dyn Fn(&Hop) -> u64| {
            let max = hops.iter().map(f).max().unwrap_or(0);
            println!("{:<34} {:>10} {:>10} {:>10}", what, f(first), f(last), max);
        };
        row("guest agent RSS (KiB)", &|h| h.agent_rss_kib);
        row("files under /run/vfmig", &|h| h.run_files);
        row("host side open fds", &|h| h.host_fds as u64);
        row("destination QEMU RSS (MiB)", &|h| h.qemu_rss_kib >> 10);
        row("hops leaving the DMA hook tracking", &|h| {
            u64::from(h.hook_left_tracking)
        });
    }
    Ok(failure.is_none() && done == migrations)
}

fn main() {
    // `cargo bench` passes --bench; anything else (cargo test's harness flags) means "not now".
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    match rt.block_on(run()) {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("soak: {e}");
            std::process::exit(1);
        }
    }
}
