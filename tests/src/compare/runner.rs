//! Runs one variant once on a fresh test bed and measures it the way it measures the others.
//!
//! The guest's load, from before the migration to after it: the peer's 1 kHz UDP echo probe
//! (blackout, loss, the series the picture shows), a TCP connection opened before the
//! migration, and a paced UDP stream to the guest's sink, which counts datagrams by a tag the
//! peer sets while QEMU's pre-copy runs (status `active`, watched on the source's second
//! monitor): what the guest received during pre-copy, through whatever NIC it had then.
//!
//! Where each variant's VF gap ends, and with it the total: for vfmig, when the guest agent
//! reports the restore done (after the fresh VF's carrier, with the addresses and routes on
//! it); for QEMU's failover, when the primary QEMU re-plugged is up in the guest (net_failover
//! switches to it at once); for the plain replug, when the fresh NIC is up, which the bench
//! does as a distribution's hotplug handler would (it gets no address). The last two are seen
//! by polling the guest's sysfs over the test shell, one poll every few tens of
//! milliseconds under TCG; vfmig's end is the later of the two moments, so the comparison
//! leans against vfmig, not for it.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::json;
use vfmig_host::migration::{Fallback, Phase, Plan, Timeline};
use vfmig_host::qmp::migration::MigrationInfo;
use vfmig_host::qmp::Qmp;
use vfmig_protocol::message::StandbyRequest;

use super::record::{lost_runs, missing, Mark, Run, Variant, MIGRATION_STARTS, VF_BACK};
use crate::bed::{echo, Bed, FRESH_MAC, STATE};
use crate::probe::{Probe, Streaming, TcpProbe, UdpStream};
use crate::vm::{vf_device_json, Vm, HOST_QMP, VF_ID};

/// The stream: 5 datagrams of 1400 bytes per millisecond, 7 MB/s offered, a fifth of what the
/// e1000e takes in the idle test guest. Twice that starved the migrating guest under TCG (its
/// ACPI unplug took 3 s instead of 0.3 s), which measures the emulator, not the variants.
const DATAGRAM: usize = 1400;
const PER_MS: u32 = 2;
/// The guest's sink (vfmig-echo), and where it keeps its counts.
const SINK_PORT: u16 = 5001;
const SINK_COUNTS: &str = "cat /run/vfmig-sink";
/// The guest kernel's messages about links coming and going, with its timestamps.
const LINK_LOG: &str = "dmesg | grep -i -e 'link is' -e 'link becomes' -e 'e1000e 0000' | tail -n 40; true";
/// Probe series recorded before the migration starts, and after the VF is back.
const BEFORE: Duration = Duration::from_millis(500);
const AFTER: Duration = Duration::from_secs(1);
/// No variant takes nearly this long on the bed.
const DEADLINE: Duration = Duration::from_secs(120);

/// A migration link slower than the bed's local socket, and a guest whose memory holds data,
/// so that pre-copy takes as long, relative to the guest's size, as it does on a real link.
/// Without one, the bed migrates its mostly empty 512 MiB guest at memory speed, in about 1 s.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    /// QEMU's `max-bandwidth` on the source, in bytes per second, for every variant.
    pub bytes_per_s: u64,
    /// Data the guest writes into its memory before the migration, in MiB.
    pub fill_mib: u64,
}

/// Runs `variant` once on a bed of its own.
pub fn run(variant: Variant, round: usize, link: Option<Link>) -> Result<Run, String> {
    // A thread of its own: the bed's namespaces and its QEMUs' parent-death signal belong to
    // the thread that made them, so they go when it ends, whatever happened.
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?
            .block_on(measure(variant, round, link))
    })
    .join()
    .map_err(|_| format!("the {} run panicked", variant.key()))?
}

async fn measure(variant: Variant, round: usize, link: Option<Link>) -> Result<Run, String> {
    let bed = match variant {
        Variant::Vfmig => Bed::start(true, true).await,
        Variant::VfmigStandby => Bed::with_standby().await,
        Variant::QemuFailover => Bed::with_qemu_failover().await,
        Variant::UnplugReplug => Bed::start(false, false).await,
    };
    bed.wait_booted();
    if let Some(link) = link {
        // Not zeros: QEMU sends a zero page as a few bytes. A tmpfs of its own: the guest's
        // root is an initramfs, which holds at most half of RAM all told.
        let fill = format!(
            "mkdir -p /fill && mount -t tmpfs -o size={}m fill /fill && yes vfmig-fill | head -c {} > /fill/data",
            link.fill_mib + 1,
            link.fill_mib << 20
        );
        bed.source.shell(Duration::from_secs(30)).await?.ok(&fill).await?;
        qmp(
            &bed.src,
            "migrate-set-parameters",
            json!({ "max-bandwidth": link.bytes_per_s }),
        )
        .await?;
    }
    let peer = &bed.fabric.peer;
    let before = {
        let mut shell = bed.source.shell(Duration::from_secs(30)).await?;
        shell.ok(STATE).await?
    };
    let mut tcp = TcpProbe::connect(peer, echo()).map_err(|e| e.to_string())?;
    tcp.round_trip("before\n")
        .map_err(|e| format!("TCP before the migration: {e}"))?;
    let stream =
        UdpStream::open(peer, SocketAddr::new(echo().ip(), SINK_PORT), DATAGRAM, PER_MS).map_err(|e| e.to_string())?;
    let monitor = Qmp::connect(&bed.source.dir.join(HOST_QMP))
        .await
        .map_err(|e| format!("the source's second monitor: {e}"))?;

    let probe_started = Instant::now();
    let probe = Probe::start(peer, echo()).map_err(|e| e.to_string())?;
    let streaming = stream.start().map_err(|e| e.to_string())?;
    tokio::time::sleep(BEFORE).await;
    let (driven, watched) = tokio::try_join!(drive(variant, &bed), watch(&monitor, &streaming))?;
    tokio::time::sleep(AFTER).await;
    let report = probe.stop();
    let [_, sent] = streaming.stop();
    let tcp_survived = tcp.round_trip("after\n").is_ok();
    let mut shell = bed.destination.shell(Duration::from_secs(30)).await?;
    let after = shell.ok(STATE).await?;
    let link_log = shell.ok(LINK_LOG).await?;
    // The sink writes its counts every 100 ms.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let counts = shell.ok(SINK_COUNTS).await?;
    let received: u64 = counts
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("the guest's sink counts read {counts:?}"))?;

    let ms = |t: Instant| t.saturating_duration_since(probe_started).as_millis() as u64;
    let mut marks = vec![
        Mark {
            name: MIGRATION_STARTS.into(),
            at_ms: ms(driven.first),
        },
        Mark {
            name: VF_BACK.into(),
            at_ms: ms(driven.back),
        },
    ];
    marks.extend(driven.marks.iter().map(|(name, at)| Mark {
        name: (*name).into(),
        at_ms: ms(*at),
    }));
    marks.extend(watched.transitions.iter().filter_map(|(at, status)| {
        let name = match status.as_str() {
            "wait-unplug" => "QEMU unplugs the VF",
            "active" => "pre-copy",
            "device" => "switch-over",
            "completed" => "completed",
            _ => return None,
        };
        Some(Mark {
            name: name.into(),
            at_ms: ms(*at),
        })
    }));
    marks.sort_by_key(|m| m.at_ms);
    let precopy = watched.precopy.1 - watched.precopy.0;
    let per_second = |datagrams: u64| (datagrams * DATAGRAM as u64) as f64 / precopy.as_secs_f64() / 1e6;
    let tail = report.answered.len().saturating_sub(AFTER.as_millis() as usize / 2);
    let state_missing = missing(&before, &after);
    Ok(Run {
        variant,
        round,
        blackout_ms: report.max_gap.as_millis() as u64,
        probes_sent: report.sent,
        probes_lost: report.lost(),
        recovered: report.answered[tail..].iter().any(|a| *a),
        tcp_survived,
        vf_absent_ms: (driven.back - driven.unplug).as_millis() as u64,
        total_ms: (driven.back - driven.first).as_millis() as u64,
        qemu_total_ms: driven.qemu.total_time,
        qemu_downtime_ms: driven.qemu.downtime,
        precopy_ms: precopy.as_millis() as u64,
        offered_mb_s: per_second(sent),
        precopy_rx_mb_s: per_second(received),
        state_kept: state_missing.is_empty(),
        state_missing,
        marks,
        lost_runs: lost_runs(&report.answered),
        probe_ms: report.answered.len() as u64,
        guest_link_log: link_log.lines().map(str::to_owned).collect(),
        vfmig_timeline: driven.timeline.as_ref().and_then(|t| serde_json::to_value(t).ok()),
    })
}

/// What a variant's own steps did, and when.
struct Driven {
    /// Its first action on the source.
    first: Instant,
    /// The request to take the VF away.
    unplug: Instant,
    /// The fresh VF carries the guest's traffic.
    back: Instant,
    qemu: MigrationInfo,
    marks: Vec<(&'static str, Instant)>,
    timeline: Option<Timeline>,
}

async fn drive(variant: Variant, bed: &Bed) -> Result<Driven, String> {
    match variant {
        Variant::Vfmig => vfmig(bed, StandbyRequest::Off).await,
        Variant::VfmigStandby => vfmig(bed, StandbyRequest::Auto).await,
        Variant::QemuFailover => qemu_failover(bed).await,
        Variant::UnplugReplug => unplug_replug(bed).await,
    }
}

/// vfmig's source and destination steps, as `vfmig-host migrate` runs them.
async fn vfmig(bed: &Bed, standby: StandbyRequest) -> Result<Driven, String> {
    let with_standby = standby != StandbyRequest::Off;
    let plan = Plan {
        standby,
        ..crate::bed::plan(&bed.uri, Fallback::Refuse)
    };
    let first = Instant::now();
    let (mut timeline, saved) = crate::bed::migrate(bed, &plan, &mut |_| {}).await;
    let saved = saved
        .map_err(|e| format!("vfmig: {e}\n{}", timeline.table()))?
        .ok_or("vfmig: the guest saved no state")?;
    if let Some(step) = timeline.step(Phase::Fallback) {
        return Err(format!(
            "vfmig took its fallback ({}), not the VF through pre-copy",
            step.detail
        ));
    }
    let spec = crate::bed::fresh_vf(vf_device_json("e1000e", VF_ID, FRESH_MAC), &saved);
    crate::bed::restore(bed, &spec, &mut timeline, &mut |_| {})
        .await
        .map_err(|e| format!("vfmig's destination step: {e}\n{}", timeline.table()))?;
    let at = |phase| {
        timeline
            .step(phase)
            .map(|s| first + Duration::from_millis(s.at_ms))
            .ok_or_else(|| format!("vfmig never reached {phase:?}\n{}", timeline.table()))
    };
    let mut marks = vec![
        ("state saved", at(Phase::StateSaved)?),
        ("VF removed", at(Phase::Unplugged)?),
        ("fresh VF plugged", at(Phase::Plugged)?),
    ];
    if with_standby {
        marks.push(("standby carries", at(Phase::StandbyActive)?));
    }
    let qemu = timeline.qemu.clone().unwrap_or_default();
    Ok(Driven {
        first,
        unplug: at(Phase::UnplugRequested)?,
        back: at(Phase::Restored)?,
        qemu: MigrationInfo {
            total_time: qemu.total_time_ms,
            downtime: qemu.downtime_ms,
            ..MigrationInfo::default()
        },
        marks,
        timeline: Some(timeline),
    })
}

/// QEMU's failover: `migrate`, and QEMU unplugs the primary at set-up and re-plugs it on the
/// destination by itself.
async fn qemu_failover(bed: &Bed) -> Result<Driven, String> {
    let first = Instant::now();
    qmp(&bed.src, "migrate", json!({ "uri": bed.uri })).await?;
    let qemu = finished(&bed.src).await?;
    let back = vf_up(&bed.destination, false).await?;
    Ok(Driven {
        first,
        unplug: first,
        back,
        qemu,
        marks: Vec::new(),
        timeline: None,
    })
}

/// What operators do without vfmig: unplug, migrate, plug a fresh NIC.
async fn unplug_replug(bed: &Bed) -> Result<Driven, String> {
    let mut events = bed.src.events();
    let first = Instant::now();
    qmp(&bed.src, "device_del", json!({ "id": VF_ID })).await?;
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let event = tokio::time::timeout_at(until, events.recv())
            .await
            .map_err(|_| "the guest did not release the VF within 10 s")?
            .map_err(|e| e.to_string())?;
        if event.event == "DEVICE_DELETED" && event.data["device"] == VF_ID {
            break;
        }
    }
    let removed = Instant::now();
    qmp(&bed.src, "migrate", json!({ "uri": bed.uri })).await?;
    let qemu = finished(&bed.src).await?;
    qmp(&bed.dst, "device_add", vf_device_json("e1000e", VF_ID, FRESH_MAC)).await?;
    let plugged = Instant::now();
    let back = vf_up(&bed.destination, true).await?;
    Ok(Driven {
        first,
        unplug: first,
        back,
        qemu,
        marks: vec![("VF removed", removed), ("fresh VF plugged", plugged)],
        timeline: None,
    })
}

async fn qmp(qmp: &Qmp, command: &str, arguments: serde_json::Value) -> Result<(), String> {
    qmp.execute(command, Some(arguments))
        .await
        .map(drop)
        .map_err(|e| format!("{command}: {e}"))
}

/// Waits for the migration to complete; QEMU's own figures.
async fn finished(qmp: &Qmp) -> Result<MigrationInfo, String> {
    let until = Instant::now() + DEADLINE;
    loop {
        let info: MigrationInfo = qmp.query("query-migrate", None).await.map_err(|e| e.to_string())?;
        if info.is_finished() {
            return match info.status.as_deref() {
                Some("completed") => Ok(info),
                other => Err(format!("the migration ended {other:?}: {:?}", info.error_desc)),
            };
        }
        if Instant::now() > until {
            return Err(format!("the migration did not finish within {DEADLINE:?}"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Each e1000e in the guest with its operational state, one per line.
const VF_LINKS: &str = "for n in $(ls /sys/class/net); do d=$(readlink /sys/class/net/$n/device/driver); \
    [ \"${d##*/}\" = e1000e ] && echo \"$n $(cat /sys/class/net/$n/operstate)\"; done; true";

/// Polls the guest until an e1000e is up; `bring_up` sets a new one up, as a distribution's
/// hotplug handler would where no agent does.
async fn vf_up(vm: &Vm, bring_up: bool) -> Result<Instant, String> {
    let mut shell = vm.shell(Duration::from_secs(30)).await?;
    let until = Instant::now() + Duration::from_secs(60);
    let mut raised = Vec::new();
    loop {
        let links = shell.ok(VF_LINKS).await?;
        let now = Instant::now();
        for line in links.lines() {
            match line.split_whitespace().collect::<Vec<_>>()[..] {
                [_, "up"] => return Ok(now),
                [name, _] if bring_up && !raised.iter().any(|r| r == name) => {
                    shell.ok(&format!("ip link set {name} up")).await?;
                    raised.push(name.to_string());
                }
                _ => {}
            }
        }
        if now > until {
            return Err(format!("no e1000e came up in the guest within 60 s: {links}"));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// QEMU's status changes, and when pre-copy ran.
struct Watched {
    transitions: Vec<(Instant, String)>,
    precopy: (Instant, Instant),
}

/// Polls the source's migration status every 5 ms until it completes; tags the stream from
/// the first `active` to the status after it.
async fn watch(monitor: &Qmp, streaming: &Streaming) -> Result<Watched, String> {
    let until = Instant::now() + DEADLINE;
    let mut transitions: Vec<(Instant, String)> = Vec::new();
    let mut started = None;
    let mut precopy = None;
    loop {
        let info: MigrationInfo = monitor
            .query("query-migrate", None)
            .await
            .map_err(|e| format!("watching the migration: {e}"))?;
        let now = Instant::now();
        let status = info.status.clone().unwrap_or_default();
        if transitions.last().map(|(_, s)| s) != Some(&status) {
            transitions.push((now, status.clone()));
        }
        match status.as_str() {
            "active" if started.is_none() => {
                streaming.tag(true);
                started = Some(now);
            }
            "" | "none" | "setup" | "wait-unplug" | "active" => {}
            _ => {
                if let (Some(from), None) = (started, precopy) {
                    streaming.tag(false);
                    precopy = Some((from, now));
                }
            }
        }
        if info.is_finished() {
            if status != "completed" {
                return Err(format!("the migration ended {status}: {:?}", info.error_desc));
            }
            let precopy = precopy.ok_or("QEMU never reported pre-copy (status active)")?;
            return Ok(Watched { transitions, precopy });
        }
        if now > until {
            return Err(format!("the migration did not finish within {DEADLINE:?}"));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
