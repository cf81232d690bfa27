//! The soak run: one guest migrated back and forth between two sides of the test bed, with
//! vfmig, VFMIG_SOAK_MIGRATIONS times (default 50). Each hop starts a fresh destination QEMU
//! with an empty root port, runs vfmig's source and destination steps, plugs a fresh VF (the
//! MAC alternates), and kills the old source. A TCP connection from the peer, opened before
//! the first hop, must carry data after every one.
//!
//! One hop in every five (which one, and which fault, drawn from VFMIG_SOAK_SEED) meets a fault
//! at the phase where it hurts: the guest agent frozen while it saves, the destination QEMU
//! killed while pre-copy is held, the operator cancelling after the unplug — each must give
//! the VM back on the source as it was — or the host agent's run dropped half-way and run
//! again from its journal, which must finish the migration.
//!
//! Per hop it records: the outcome, restore failures and mismatches, the guest's network
//! against the first hop's, the peer's blackout, the guest agent's RSS, the files under
//! /run/vfmig, whether the DMA hook was left tracking anything, the host side's open file
//! descriptors (this process: it is the host agent), and the VM's QEMU RSS. It prints the
//! tally by fault and the growth of each figure against the first hop.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::json;
use tokio::sync::Notify;
use vfmig_host::guest::channel::ChannelGuest;
use vfmig_host::migration::{
    plug_destination, run_source, Cancel, Deadlines, Fallback, FreshVf, MigrateError, Phase, Plan, PlugSpec, Saved,
    Step, Timeline, VfPlan,
};
use vfmig_host::qmp::Qmp;
use vfmig_host::vm::qmp::QmpVm;
use vfmig_testbed::bed::NETWORK;
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
        pf: None,
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

/// A fault a hop meets, at the phase where it hurts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    None,
    AgentFrozen,
    DestinationKilled,
    OperatorCancel,
    HostKilled,
}

const FAULTS: [Fault; 4] = [
    Fault::AgentFrozen,
    Fault::DestinationKilled,
    Fault::OperatorCancel,
    Fault::HostKilled,
];

impl Fault {
    fn at(self) -> Option<Phase> {
        match self {
            Fault::None => None,
            Fault::AgentFrozen | Fault::DestinationKilled => Some(Phase::Held),
            Fault::OperatorCancel => Some(Phase::Unplugged),
            Fault::HostKilled => Some(Phase::StateSaved),
        }
    }

    /// The VM must stay on the source, as it was.
    fn gives_back(self) -> bool {
        matches!(
            self,
            Fault::AgentFrozen | Fault::DestinationKilled | Fault::OperatorCancel
        )
    }
}

/// A small deterministic generator, so a seed replays a soak's faults.
struct Draw(u64);

impl Draw {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % below
    }
}

struct Hop {
    fault: Fault,
    /// The outcome was the one the fault calls for, and the guest's network is as it was.
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

/// vfmig's source side on `src` with `fault` struck at its phase; dropped and run again from
/// its journal for a host agent kill.
async fn source(
    src: &Vm,
    src_qmp: &Qmp,
    dst: &Vm,
    plan: &Plan,
    fault: Fault,
    timeline: &mut Timeline,
) -> Result<Option<Vec<Saved>>, MigrateError> {
    let vm = QmpVm::new(src_qmp);
    let agent = src.dir.join("agent.sock");
    let shell = match fault {
        Fault::AgentFrozen => Some(src.shell(Duration::from_secs(20)).await.map_err(MigrateError::Lost)?),
        _ => None,
    };
    let (cancel_tx, cancel) = Cancel::new();
    let dropped = Notify::new();
    let destination = Pid::from_raw(dst.pid() as i32);
    let mut struck = false;
    let mut observe = |step: &Step| {
        if struck || Some(step.phase) != fault.at() {
            return;
        }
        struck = true;
        match fault {
            Fault::AgentFrozen => {
                if let Some(shell) = &shell {
                    let _ = shell.start("kill -STOP $(pidof vfmig-guestd)");
                }
            }
            Fault::DestinationKilled => {
                let _ = kill(destination, Signal::SIGKILL);
            }
            Fault::OperatorCancel => {
                let _ = cancel_tx.send(Some("the soak's operator".into()));
            }
            Fault::HostKilled => dropped.notify_one(),
            Fault::None => {}
        }
    };
    let mut guest = ChannelGuest::new(&agent);
    let first = tokio::select! {
        biased;
        outcome = run_source(&vm, &mut guest, plan, timeline, &mut observe, cancel) => Some(outcome),
        () = dropped.notified() => None,
    };
    if let Some(shell) = &shell {
        let _ = shell.start("kill -CONT $(pidof vfmig-guestd)");
    }
    match first {
        Some(outcome) => outcome,
        None => {
            // QEMU's chardev serves one client at a time: the dropped run's must go first.
            drop(guest);
            let vm = QmpVm::new(src_qmp);
            let mut quiet = |_: &Step| {};
            run_source(
                &vm,
                &mut ChannelGuest::new(&agent),
                plan,
                timeline,
                &mut quiet,
                Cancel::never(),
            )
            .await
        }
    }
}

/// Waits until the guest on `vm` has nothing saved awaiting a restore, no hook tracking and
/// no address on a standby (a thawed agent applies its late requests first); its network.
async fn settled_network(vm: &Vm) -> Result<String, String> {
    let mut shell = vm.shell(Duration::from_secs(20)).await?;
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let awaiting = "ls /run/vfmig 2>/dev/null | grep -v 'json$' || true";
        let left = shell
            .ok(&format!("{awaiting}; cat {CONTROL}/devices 2>/dev/null || true"))
            .await?;
        if left.trim().is_empty() {
            return shell.ok(NETWORK).await;
        }
        if Instant::now() > until {
            return Err(format!("left in the guest: {left}"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One hop: `src` → a fresh destination on the other side, meeting `fault`. Where the VM runs
/// afterwards (the destination, or none: it stayed on the source) and the hop's figures.
#[allow(clippy::too_many_arguments)]
async fn hop(
    dir: &Path,
    n: usize,
    src: &Vm,
    src_qmp: &Qmp,
    fabric: &Fabric,
    tcp: &mut TcpProbe,
    fault: Fault,
    network: &str,
) -> Result<(Option<(Vm, Qmp)>, Hop), String> {
    let started = Instant::now();
    // The destination is on the other side from the source, whose VF has that side's MAC.
    let side = SIDES
        .iter()
        .position(|(name, _)| *name != src.name)
        .ok_or("no other side")?;
    let mac = MACS[side];
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
        journal: Some(dir.join(format!("hop-{n}.vfmig-journal"))),
        standby: vfmig_protocol::message::StandbyRequest::Auto,
        accept_loss: false,
    };
    let mut timeline = Timeline::new();
    let outcome = source(src, src_qmp, &dst, &plan, fault, &mut timeline).await;
    let (lands, restored_ok) = match outcome {
        Err(e) if fault.gives_back() && e.exit_code() == 1 => {
            eprintln!("hop {n}: {fault:?}: {e}");
            (None, true)
        }
        Err(e) => return Err(format!("hop {n} ({fault:?}): {e}\n{}", timeline.table())),
        Ok(_) if fault.gives_back() => return Err(format!("hop {n}: migrated despite {fault:?}")),
        Ok(saved) => {
            let saved = saved.ok_or_else(|| format!("hop {n}: migrated without the guest agent"))?;
            let spec = PlugSpec {
                vfs: saved
                    .into_iter()
                    .map(|saved| FreshVf {
                        id: VF_ID.into(),
                        device: vf_device_json("e1000e", VF_ID, mac),
                        mac: None,
                        saved,
                    })
                    .collect(),
                restore_mac: false,
                attempts: 3,
                deadlines: Deadlines::default(),
            };
            let mut quiet = |_: &Step| {};
            let restored = plug_destination(&dst_qmp, &dst.dir.join("agent.sock"), &spec, &mut timeline, &mut quiet)
                .await
                .map_err(|e| format!("hop {n}: {e}\n{}", timeline.table()))?;
            for r in restored
                .iter()
                .filter(|r| !r.failed.is_empty() || !r.mismatches.is_empty())
            {
                eprintln!("hop {n}: failed {:?}, mismatches {:?}", r.failed, r.mismatches);
            }
            let ok = restored.iter().all(|r| r.failed.is_empty() && r.mismatches.is_empty());
            (Some((dst, dst_qmp)), ok)
        }
    };
    let vm = lands.as_ref().map_or(src, |(vm, _)| vm);
    wait_answering(&fabric.peer, echo, Duration::from_secs(10))?;
    let report = probe.stop();
    tcp.round_trip(&format!("hop {n}\n"))
        .map_err(|e| format!("hop {n}: the peer's TCP connection broke: {e}"))?;
    let now = settled_network(vm).await.map_err(|e| format!("hop {n}: {e}"))?;
    if now != network {
        eprintln!("hop {n}: the guest's network changed:\n{now}\nwas:\n{network}");
    }
    let mut shell = vm.shell(Duration::from_secs(20)).await?;
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
    let qemu_rss_kib = rss_kib(&vm.pid().to_string());
    Ok((
        lands,
        Hop {
            fault,
            ok: restored_ok && now == network,
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
    let seed = std::env::var("VFMIG_SOAK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_secs())
        });
    println!("soak: {migrations} migrations, faults drawn from VFMIG_SOAK_SEED={seed}");
    let mut draw = Draw(seed);
    let faults: Vec<Fault> = (0..migrations.div_ceil(5))
        .flat_map(|_| {
            let (at, fault) = (draw.next(5) as usize, FAULTS[draw.next(FAULTS.len() as u64) as usize]);
            (0..5).map(move |i| if i == at { fault } else { Fault::None })
        })
        .take(migrations)
        .collect();
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
    let network = settled_network(&src).await?;

    let mut hops: Vec<Hop> = Vec::new();
    let mut failure = None;
    for (n, fault) in faults.iter().copied().enumerate() {
        match hop(&dir, n, &src, &src_qmp, &fabric, &mut tcp, fault, &network).await {
            Ok((lands, h)) => {
                eprintln!(
                    "hop {:>2}/{migrations}: {:?} {} in {:.1} s, blackout {} ms, agent RSS {} KiB, /run/vfmig files {}, host fds {}, QEMU RSS {} MiB",
                    n + 1,
                    h.fault,
                    if h.ok { "ok" } else { "NOT AS IT WAS" },
                    h.took.as_secs_f64(),
                    h.blackout_ms,
                    h.agent_rss_kib,
                    h.run_files,
                    h.host_fds,
                    h.qemu_rss_kib >> 10
                );
                hops.push(h);
                if let Some((dst, dst_qmp)) = lands {
                    let old = std::mem::replace(&mut src, dst);
                    src_qmp = dst_qmp;
                    let old_dir = old.dir.clone();
                    drop(old);
                    let _ = std::fs::remove_dir_all(old_dir);
                }
            }
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }

    let done = hops.iter().filter(|h| h.ok).count();
    println!("\nsoak: {done}/{migrations} hops ended as their fault calls for, the guest reachable and its network as it was");
    for fault in std::iter::once(Fault::None).chain(FAULTS) {
        let of: Vec<&Hop> = hops.iter().filter(|h| h.fault == fault).collect();
        let ok = of.iter().filter(|h| h.ok).count();
        let outcome = if fault.gives_back() {
            "given back as it was"
        } else {
            "migrated and restored"
        };
        println!("  {:<18} {ok}/{} {outcome}", format!("{fault:?}:"), of.len());
    }
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
        row("the VM's QEMU RSS (MiB)", &|h| h.qemu_rss_kib >> 10);
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
