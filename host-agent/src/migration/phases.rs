//! The migration state machine, in one place.
//!
//! Source: negotiate with the guest agent → the guest's DMA hook tracks the VF → start
//! pre-copy with the VF still plugged → when the remainder falls under a margin, *hold* → the
//! guest saves the VF's state → `device_del` → DEVICE_DELETED → stop the hook → release →
//! QEMU completes. Destination: hot-plug a fresh VF → the guest restores the saved state onto
//! it.
//!
//! **The hook is the condition.** A VF's DMA writes are invisible to dirty logging, so pre-copy
//! with the VF plugged is only sound while the guest's hook dirties those pages. The VF it
//! tracks is checked against QEMU's own view of where the guest put the VF (`query-pci`), not
//! taken from the guest. Without a hook confirmed for the VF, the safe path runs instead: the
//! guest saves its state, the VF is unplugged, and only then does pre-copy start.
//!
//! **The hold.** QEMU switches over as soon as the unsent remainder is below its threshold
//! (bandwidth × downtime-limit) — and, with a threshold of 0, as soon as a pass drains. A low
//! downtime-limit therefore does not hold an idle guest: measured on the test bed, a 512 MiB
//! guest with downtime-limit 1 ms completed on its own 1.5 s into pre-copy, VF still plugged.
//! QEMU 10 has no general switchover gate (`switchover-ack` only waits for devices that ask,
//! i.e. VFIO migration). What holds: throttling `max-bandwidth` to [`HOLD_BANDWIDTH`] while a
//! large remainder is left, so the remainder drains slowly, and watching it while the guest
//! saves its state and the VF is unplugged: should it fall under [`HOLD_FLOOR`] first, the
//! migration is cancelled with the VF kept. The threshold is QEMU's *measured* bandwidth times
//! downtime-limit, so with the default 300 ms and full-speed pre-copy it can exceed the hold
//! margin's remainder, and QEMU may switch over before the throttle bites (seen once in the
//! demo: held at 16.5 MiB, switched over at once). So pre-copy also runs with downtime-limit
//! [`HOLD_DOWNTIME_MS`] while the VF is plugged: then QEMU cannot switch over until the
//! remainder is all but gone, never with the VF plugged. Once the VF is gone the original
//! parameters come back and pre-copy finishes at full speed.
//!
//! Every wait has a deadline, every failure a defined outcome: a guest agent that does not
//! answer is refused before anything changes (or, by policy, the VF is unplugged before
//! pre-copy); a failed save or an unplug that does not finish cancels the migration and keeps
//! the VF; a migration that fails after the unplug plugs the VF back on the source and has the
//! guest restore; a destination plug that keeps failing reports where the saved state is.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::broadcast::error::RecvError;
use vfmig_protocol::message::{
    GuestMessage, Hello, HostMessage, InterfaceSelector, PrepareUnplug, Restore, Restored, TrackDma,
};
use vfmig_protocol::MacAddr;

use super::timeline::{Phase, QemuFigures, Step, Timeline};
use crate::channel::{ChannelError, GuestChannel};
use crate::qmp::migration::MigrationInfo;
use crate::qmp::{Event, Qmp, QmpError};

/// `max-bandwidth` while holding. QEMU enforces it per 100 ms window as `bandwidth / 10`,
/// and a window limit of 0 means *unlimited*: 1 B/s would disable the limit (measured: the
/// migration then switched over at once, VF plugged).
pub const HOLD_BANDWIDTH: u64 = 4096;

/// `downtime-limit` (ms) while the VF is plugged, so QEMU's switchover threshold stays near
/// zero however fast pre-copy runs.
pub const HOLD_DOWNTIME_MS: u64 = 1;

/// The throttle slows the remainder's drain but does not stop it: measured on the test bed,
/// a held remainder still fell by some 47 MB/s. So the hold is watched while the guest saves
/// and the VF is unplugged, and if the remainder falls under this floor first, the migration
/// is cancelled with the VF kept, long before QEMU could switch over.
pub const HOLD_FLOOR: u64 = 8 << 20;
const HOLD_POLL: Duration = Duration::from_millis(5);

/// After an unplug deadline passed, how long vfmig watches for the guest releasing the VF
/// anyway (measured: ACPI unplug takes 0.07–2.2 s, native PCIe hotplug 6.6 s).
const LATE_UNPLUG_GRACE: Duration = Duration::from_secs(10);

/// How the source side proceeds when the guest agent cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fallback {
    /// Refuse to migrate; change nothing.
    Refuse,
    /// Unplug the VF before pre-copy (the upstream behaviour) and migrate without saving state.
    UnplugFirst,
}

#[derive(Clone, Debug)]
pub struct Deadlines {
    /// Sync and hello with the guest agent.
    pub agent: Duration,
    /// The guest saving the VF's state.
    pub prepare: Duration,
    /// `device_del` to DEVICE_DELETED.
    pub unplug: Duration,
    /// Release to QEMU's "completed".
    pub completion: Duration,
    /// The guest restoring onto the fresh VF (including waiting for its link to appear).
    pub restore: Duration,
}

impl Default for Deadlines {
    fn default() -> Self {
        Self {
            agent: Duration::from_secs(10),
            prepare: Duration::from_secs(10),
            unplug: Duration::from_secs(10),
            completion: Duration::from_secs(300),
            restore: Duration::from_secs(30),
        }
    }
}

/// The source side's instructions.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The VF's device id in QEMU (`-device …,id=ID`).
    pub vf_id: String,
    /// The `device_add` arguments that recreate the VF, for plugging it back on the source if
    /// the migration fails after the unplug.
    pub vf_device: Option<Value>,
    /// Where `migrate` sends the stream.
    pub uri: String,
    pub fallback: Fallback,
    pub deadlines: Deadlines,
    /// Hold when pre-copy's remainder falls under this (at most a quarter of RAM is used).
    pub hold_margin: u64,
}

/// The destination side's instructions.
#[derive(Clone, Debug)]
pub struct PlugSpec {
    /// `device_add` arguments for the fresh VF; must include `mac`.
    pub device: Value,
    /// The interface name the guest saved its state under.
    pub saved: String,
    /// Give the fresh VF the saved MAC too.
    pub restore_mac: bool,
    pub attempts: u32,
    pub deadlines: Deadlines,
}

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("the guest agent cannot be used ({0}); nothing was changed (fallback policy: refuse)")]
    GuestUnavailable(ChannelError),
    #[error("no VF with id {id} in this VM ({error}); nothing was changed")]
    NoSuchVf { id: String, error: QmpError },
    #[error("QEMU: {0}")]
    Qmp(#[from] QmpError),
    #[error("migration ended ({status}) before vfmig could hold it; the VF was still plugged")]
    EndedBeforeHold { status: String },
    #[error(
        "pre-copy drained to {remaining} bytes while held, before the VF was unplugged; migration cancelled, VF kept"
    )]
    HoldLeaked { remaining: u64 },
    #[error("the guest agent did not save the VF's state ({0}); migration cancelled, VF kept")]
    PrepareFailed(ChannelError),
    #[error("the VF was not released within {after:?}; migration cancelled; {outcome}")]
    UnplugTimeout { after: Duration, outcome: String },
    #[error("migration did not complete within {0:?}")]
    CompletionTimeout(Duration),
    #[error("migration {status} after the VF was unplugged: {reason}; the VF is plugged back on the source and the guest restored it")]
    RolledBack { status: String, reason: String },
    #[error("migration {status} after the VF was unplugged, and plugging it back failed ({error}); the guest's saved state is at /run/vfmig/{saved}.json")]
    RollbackFailed {
        status: String,
        error: String,
        saved: String,
    },
    #[error("plugging the fresh VF failed {attempts} times ({error}); the guest's saved state is at /run/vfmig/{saved}.json — plug a VF and run `vfmig-host plug` to finish")]
    PlugFailed {
        attempts: u32,
        error: String,
        saved: String,
    },
    #[error(
        "the guest agent on the destination could not restore ({error}); its saved state is at /run/vfmig/{saved}.json"
    )]
    RestoreFailed { error: ChannelError, saved: String },
}

/// What the source side hands to the destination side.
#[derive(Clone, Debug)]
pub struct Saved {
    pub interface: String,
    pub digest: String,
}

/// How the host agent names itself in its hello.
const HOST_AGENT: &str = concat!("vfmig-host ", env!("CARGO_PKG_VERSION"));

/// Connects to the guest agent and opens a session; returns the channel and the guest's hello.
async fn session(agent: &Path, deadline: Duration) -> Result<(GuestChannel, Hello), ChannelError> {
    let mut channel = GuestChannel::connect(agent).await?;
    let session = channel.open_session(HOST_AGENT, deadline).await?;
    Ok((channel, session.guest))
}

/// The VF's PCI address as the guest sees it, from QEMU's view of the guest-programmed bus
/// numbers (the host does not take the guest's word for which device is the VF).
async fn guest_pci_address(qmp: &Qmp, id: &str) -> Result<Option<String>, QmpError> {
    fn find(devices: &[Value], bus: u64, id: &str) -> Option<String> {
        devices.iter().find_map(|d| {
            if d["qdev_id"] == id {
                let (slot, function) = (d["slot"].as_u64()?, d["function"].as_u64()?);
                return Some(format!("0000:{bus:02x}:{slot:02x}.{function:x}"));
            }
            let bridge = &d["pci_bridge"];
            let secondary = bridge["bus"]["secondary"].as_u64()?;
            find(bridge["devices"].as_array()?, secondary, id)
        })
    }
    let buses: Vec<Value> = qmp.query("query-pci", None).await?;
    Ok(buses
        .iter()
        .find_map(|b| find(b["devices"].as_array()?, b["bus"].as_u64()?, id)))
}

/// Has the guest's DMA hook track the VF. Pre-copy may run with the VF plugged only if this
/// succeeds; the error says why not, for the timeline.
async fn track_dma(
    src: &Qmp,
    channel: &mut GuestChannel,
    guest: &Hello,
    plan: &Plan,
    mac: MacAddr,
) -> Result<String, String> {
    if !guest.capabilities.kernel_hook {
        return Err(format!("{} reports no DMA hook installed", guest.agent));
    }
    let pci = guest_pci_address(src, &plan.vf_id)
        .await
        .map_err(|e| format!("query-pci: {e}"))?
        .ok_or_else(|| format!("QEMU does not show where the guest put {}", plan.vf_id))?;
    let request = HostMessage::TrackDma(TrackDma {
        interface: InterfaceSelector {
            mac: Some(mac),
            ..Default::default()
        },
    });
    let replies = channel
        .request(request, plan.deadlines.prepare)
        .await
        .map_err(|e| e.to_string())?;
    match replies.into_iter().last() {
        Some(GuestMessage::DmaTracking(t)) if t.enabled && t.devices.iter().any(|d| d.pci_address == pci) => Ok(pci),
        other => Err(format!("the guest did not confirm tracking {pci}: {other:?}")),
    }
}

/// Stops the guest's DMA hook; a summary of what it did, for the timeline.
async fn stop_dma_tracking(channel: &mut GuestChannel, deadline: Duration) -> String {
    match channel.request(HostMessage::StopDmaTracking, deadline).await {
        Ok(replies) => match replies.into_iter().last() {
            Some(GuestMessage::DmaTracking(t)) => t
                .devices
                .iter()
                .map(|d| format!("{}: {} pages dirtied in {} DMA calls", d.pci_address, d.pages, d.calls))
                .collect::<Vec<_>>()
                .join("; "),
            other => format!("unexpected reply {other:?}"),
        },
        Err(e) => format!("stopping failed ({e}); the hook stays enabled in the guest"),
    }
}

async fn query(qmp: &Qmp) -> Result<MigrationInfo, QmpError> {
    qmp.query("query-migrate", None).await
}

/// Matches QEMU's DEVICE_DELETED for the device with id `id`.
fn device_deleted(id: &str) -> impl Fn(&Event) -> bool + '_ {
    move |e| e.event == "DEVICE_DELETED" && e.data.get("device").and_then(Value::as_str) == Some(id)
}

/// Waits for an event matching `want`, within `deadline`.
async fn wait_event(
    events: &mut tokio::sync::broadcast::Receiver<Event>,
    want: impl Fn(&Event) -> bool,
    deadline: Duration,
) -> bool {
    let until = Instant::now() + deadline;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, events.recv()).await {
            Err(_) | Ok(Err(RecvError::Closed)) => return false,
            Ok(Err(RecvError::Lagged(_))) => continue,
            Ok(Ok(e)) if want(&e) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

/// Returns once a held migration's remainder is under [`HOLD_FLOOR`] (or the migration ended):
/// the hold is about to fail.
async fn hold_leak(qmp: &Qmp) -> u64 {
    loop {
        match query(qmp).await {
            Ok(info) if info.is_finished() => return 0,
            Ok(info) => {
                if let Some(remaining) = info.ram.map(|r| r.remaining).filter(|r| *r < HOLD_FLOOR) {
                    return remaining;
                }
            }
            // QMP itself failing is reported by the next command the state machine runs.
            Err(e) => tracing::warn!(error = %e, "query-migrate while holding"),
        }
        tokio::time::sleep(HOLD_POLL).await;
    }
}

/// Waits for the migration to end, within `deadline`.
async fn wait_end(qmp: &Qmp, deadline: Duration) -> Result<MigrationInfo, MigrateError> {
    let until = Instant::now() + deadline;
    loop {
        let info = query(qmp).await?;
        if info.is_finished() {
            return Ok(info);
        }
        if Instant::now() > until {
            return Err(MigrateError::CompletionTimeout(deadline));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn figures(info: &MigrationInfo) -> QemuFigures {
    QemuFigures {
        status: info.status.clone(),
        total_time_ms: info.total_time,
        downtime_ms: info.downtime,
        ram_transferred: info.ram.as_ref().map(|r| r.transferred),
    }
}

/// The migration parameters vfmig changes, as they were.
struct Params(Value);

impl Params {
    async fn read(qmp: &Qmp) -> Result<Self, QmpError> {
        let p: Value = qmp.execute("query-migrate-parameters", None).await?;
        Ok(Self(
            json!({ "max-bandwidth": p["max-bandwidth"], "downtime-limit": p["downtime-limit"] }),
        ))
    }

    async fn restore(&self, qmp: &Qmp) -> Result<(), QmpError> {
        qmp.execute("migrate-set-parameters", Some(self.0.clone()))
            .await
            .map(drop)
    }
}

/// Cancels the migration and restores the parameters: the VM keeps running on the source.
async fn abort(qmp: &Qmp, params: &Params) {
    if let Err(e) = qmp.execute("migrate_cancel", None).await {
        tracing::error!(error = %e, "migrate_cancel failed");
    }
    if let Err(e) = params.restore(qmp).await {
        tracing::error!(error = %e, "restoring migration parameters failed");
    }
}

/// Runs the source side. Returns the saved state's name, or `None` when the fallback
/// migrated without the guest agent.
pub async fn migrate_source(
    src: &Qmp,
    agent: &Path,
    plan: &Plan,
    timeline: &mut Timeline,
    observe: &mut dyn FnMut(&Step, Option<&MigrationInfo>),
) -> Result<Option<Saved>, MigrateError> {
    let mac: String = src
        .query(
            "qom-get",
            Some(json!({ "path": format!("/machine/peripheral/{}", plan.vf_id), "property": "mac" })),
        )
        .await
        .map_err(|error| MigrateError::NoSuchVf {
            id: plan.vf_id.clone(),
            error,
        })?;
    let mac: MacAddr = mac
        .parse()
        .map_err(|e| MigrateError::Qmp(QmpError::Protocol(format!("VF mac: {e}"))))?;
    let params = Params::read(src).await?;

    let (mut channel, guest) = match session(agent, plan.deadlines.agent).await {
        Ok((channel, guest)) => {
            observe(timeline.record(Phase::Negotiated, None, guest.agent.clone()), None);
            (channel, guest)
        }
        Err(e) if plan.fallback == Fallback::Refuse => return Err(MigrateError::GuestUnavailable(e)),
        Err(e) => return unplug_first(src, plan, e, timeline, observe).await.map(|()| None),
    };

    // The VF stays through pre-copy only while the guest's hook makes its DMA writes visible
    // to dirty logging; otherwise pre-copy would send stale copies of those pages.
    let hooked = match track_dma(src, &mut channel, &guest, plan, mac).await {
        Ok(pci) => {
            let detail = format!("vfmig_dirty tracks {pci} (VF {})", plan.vf_id);
            observe(timeline.record(Phase::HookEnabled, None, detail), None);
            true
        }
        Err(why) => {
            let detail = format!(
                "DMA hook unavailable ({why}): the VF is unplugged before pre-copy; its state is saved and restored"
            );
            observe(timeline.record(Phase::Fallback, None, detail), None);
            false
        }
    };
    let outcome = source_with_agent(src, &mut channel, plan, mac, &params, hooked, timeline, observe).await;
    if hooked && outcome.is_err() {
        // Best effort: the VF may still be plugged, and a hook left enabled costs every DMA call.
        stop_dma_tracking(&mut channel, plan.deadlines.prepare).await;
    }
    outcome
}

/// The source side with a working guest agent. `hooked`: the VF stays plugged through
/// pre-copy, held near its end; otherwise it is unplugged (after the guest saved its state)
/// before pre-copy starts.
#[allow(clippy::too_many_arguments)]
async fn source_with_agent(
    src: &Qmp,
    channel: &mut GuestChannel,
    plan: &Plan,
    mac: MacAddr,
    params: &Params,
    hooked: bool,
    timeline: &mut Timeline,
    observe: &mut dyn FnMut(&Step, Option<&MigrationInfo>),
) -> Result<Option<Saved>, MigrateError> {
    // Only a held pre-copy can leak; without one, this never fires.
    let leak = || async {
        if hooked {
            hold_leak(src).await
        } else {
            std::future::pending().await
        }
    };
    if hooked {
        src.execute(
            "migrate-set-parameters",
            Some(json!({ "downtime-limit": HOLD_DOWNTIME_MS })),
        )
        .await?;
        if let Err(e) = src.execute("migrate", Some(json!({ "uri": plan.uri }))).await {
            abort(src, params).await;
            return Err(e.into());
        }
        observe(
            timeline.record(
                Phase::PrecopyStarted,
                None,
                format!("VF {} ({mac}) still plugged", plan.vf_id),
            ),
            None,
        );

        // Watch pre-copy until its remainder is under the margin, then hold.
        let info = loop {
            let info = query(src).await?;
            if info.is_finished() {
                abort(src, params).await;
                return Err(MigrateError::EndedBeforeHold {
                    status: info.status.unwrap_or_default(),
                });
            }
            if let Some(ram) = info.ram.as_ref().filter(|r| r.total > 0) {
                if ram.remaining < plan.hold_margin.min(ram.total / 4) {
                    break info;
                }
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        src.execute(
            "migrate-set-parameters",
            Some(json!({ "max-bandwidth": HOLD_BANDWIDTH })),
        )
        .await?;
        let detail = format!("max-bandwidth {HOLD_BANDWIDTH} B/s until the VF is gone");
        observe(timeline.record(Phase::Held, Some(&info), detail), Some(&info));
    }

    let prepare = HostMessage::PrepareUnplug(PrepareUnplug {
        interface: InterfaceSelector {
            mac: Some(mac),
            ..Default::default()
        },
        deadline_ms: plan.deadlines.unplug.as_millis() as u32,
    });
    let replies = tokio::select! {
        replies = channel.request(prepare, plan.deadlines.prepare) => replies,
        remaining = leak() => {
            abort(src, params).await;
            return Err(MigrateError::HoldLeaked { remaining });
        }
    };
    let saved = match replies {
        Ok(replies) => replies.into_iter().find_map(|r| match r {
            GuestMessage::StateSaved(s) => Some(s),
            _ => None,
        }),
        Err(e) => {
            abort(src, params).await;
            return Err(MigrateError::PrepareFailed(e));
        }
    };
    let Some(saved) = saved else {
        abort(src, params).await;
        return Err(MigrateError::PrepareFailed(ChannelError::Closed));
    };
    let info = query(src).await?;
    let detail = format!(
        "{}: {} addresses, {} routes, {} neighbours, {}",
        saved.interface,
        saved.addresses,
        saved.routes,
        saved.neighbours,
        &saved.digest[..19]
    );
    observe(timeline.record(Phase::StateSaved, Some(&info), detail), Some(&info));

    let mut events = src.events();
    src.execute("device_del", Some(json!({ "id": plan.vf_id }))).await?;
    observe(
        timeline.record(Phase::UnplugRequested, None, format!("device_del {}", plan.vf_id)),
        None,
    );
    let deleted = device_deleted(&plan.vf_id);
    let unplugged = tokio::select! {
        done = wait_event(&mut events, &deleted, plan.deadlines.unplug) => done,
        remaining = leak() => {
            abort(src, params).await;
            return Err(MigrateError::HoldLeaked { remaining });
        }
    };
    if !unplugged {
        abort(src, params).await;
        // A device_del cannot be withdrawn: the guest may still eject the VF after the
        // migration was cancelled. Watch for that, and if it happens put the VF back.
        let after = plan.deadlines.unplug;
        if !wait_event(&mut events, &deleted, LATE_UNPLUG_GRACE).await {
            let outcome = "the VF is still plugged (the guest may yet act on the eject request)".to_string();
            return Err(MigrateError::UnplugTimeout { after, outcome });
        }
        return Err(match replug(src, channel, plan, &saved.interface, mac).await {
            Ok(()) => {
                let detail = "the guest released the VF after the deadline: plugged back and restored";
                observe(timeline.record(Phase::RolledBack, None, detail), None);
                MigrateError::UnplugTimeout {
                    after,
                    outcome: detail.into(),
                }
            }
            Err(error) => MigrateError::RollbackFailed {
                status: "cancelled".into(),
                error,
                saved: saved.interface,
            },
        });
    }
    let info = query(src).await?;
    observe(
        timeline.record(Phase::Unplugged, Some(&info), "DEVICE_DELETED"),
        Some(&info),
    );

    if hooked {
        // The driver's unmap-all at removal went through the hook; nothing is left to track.
        let detail = stop_dma_tracking(channel, plan.deadlines.prepare).await;
        observe(timeline.record(Phase::HookDisabled, None, detail), None);
        params.restore(src).await?;
        observe(
            timeline.record(Phase::Released, None, "original max-bandwidth and downtime-limit"),
            None,
        );
    } else {
        src.execute("migrate", Some(json!({ "uri": plan.uri }))).await?;
        observe(timeline.record(Phase::PrecopyStarted, None, "without the VF"), None);
    }

    let info = wait_end(src, plan.deadlines.completion).await?;
    timeline.qemu = Some(figures(&info));
    let status = info.status.clone().unwrap_or_default();
    if status != "completed" {
        let reason = info.error_desc.clone().unwrap_or_default();
        return Err(roll_back(
            src,
            channel,
            plan,
            &saved.interface,
            mac,
            status,
            reason,
            timeline,
            observe,
        )
        .await);
    }
    observe(
        timeline.record(Phase::Completed, Some(&info), "QEMU switched over"),
        Some(&info),
    );
    Ok(Some(Saved {
        interface: saved.interface,
        digest: saved.digest,
    }))
}

/// The upstream behaviour, as a fallback: unplug first, then migrate without saving state.
async fn unplug_first(
    src: &Qmp,
    plan: &Plan,
    why: ChannelError,
    timeline: &mut Timeline,
    observe: &mut dyn FnMut(&Step, Option<&MigrationInfo>),
) -> Result<(), MigrateError> {
    let mut events = src.events();
    src.execute("device_del", Some(json!({ "id": plan.vf_id }))).await?;
    let deleted = device_deleted(&plan.vf_id);
    if !wait_event(&mut events, deleted, plan.deadlines.unplug).await {
        let outcome = "migration not started".to_string();
        return Err(MigrateError::UnplugTimeout {
            after: plan.deadlines.unplug,
            outcome,
        });
    }
    let detail = format!("guest agent unusable ({why}): VF unplugged before pre-copy, state not saved");
    observe(timeline.record(Phase::Fallback, None, detail), None);
    src.execute("migrate", Some(json!({ "uri": plan.uri }))).await?;
    observe(timeline.record(Phase::PrecopyStarted, None, "without the VF"), None);
    let info = wait_end(src, plan.deadlines.completion).await?;
    timeline.qemu = Some(figures(&info));
    observe(
        timeline.record(Phase::Completed, Some(&info), info.status.clone().unwrap_or_default()),
        Some(&info),
    );
    Ok(())
}

/// The migration failed after the unplug: plug the VF back and have the guest restore.
#[allow(clippy::too_many_arguments)]
async fn roll_back(
    src: &Qmp,
    channel: &mut GuestChannel,
    plan: &Plan,
    saved: &str,
    mac: MacAddr,
    status: String,
    reason: String,
    timeline: &mut Timeline,
    observe: &mut dyn FnMut(&Step, Option<&MigrationInfo>),
) -> MigrateError {
    match replug(src, channel, plan, saved, mac).await {
        Ok(()) => {
            observe(
                timeline.record(Phase::RolledBack, None, format!("migration {status}: {reason}")),
                None,
            );
            MigrateError::RolledBack { status, reason }
        }
        Err(error) => MigrateError::RollbackFailed {
            status,
            error,
            saved: saved.to_owned(),
        },
    }
}

/// Plugs the VF back on the source and has the guest restore its saved state onto it.
async fn replug(src: &Qmp, channel: &mut GuestChannel, plan: &Plan, saved: &str, mac: MacAddr) -> Result<(), String> {
    let device = plan
        .vf_device
        .as_ref()
        .ok_or("no device_add arguments for the VF were given")?;
    src.execute("device_add", Some(device.clone()))
        .await
        .map_err(|e| e.to_string())?;
    let restore = HostMessage::Restore(Restore {
        saved: saved.to_owned(),
        onto: InterfaceSelector {
            mac: Some(mac),
            ..Default::default()
        },
        restore_mac: false,
    });
    channel
        .request(restore, plan.deadlines.restore)
        .await
        .map(drop)
        .map_err(|e| e.to_string())
}

/// Runs the destination side: plug a fresh VF and have the guest restore onto it.
pub async fn plug_destination(
    dst: &Qmp,
    agent: &Path,
    spec: &PlugSpec,
    timeline: &mut Timeline,
    observe: &mut dyn FnMut(&Step, Option<&MigrationInfo>),
) -> Result<Restored, MigrateError> {
    let restore_failed = |error| MigrateError::RestoreFailed {
        error,
        saved: spec.saved.clone(),
    };
    let mac: MacAddr = spec.device["mac"]
        .as_str()
        .and_then(|m| m.parse().ok())
        .ok_or_else(|| MigrateError::PlugFailed {
            attempts: 0,
            error: "device has no mac".into(),
            saved: spec.saved.clone(),
        })?;
    let (mut channel, _) = session(agent, spec.deadlines.agent).await.map_err(restore_failed)?;

    let mut last = String::new();
    let mut plugged = false;
    for attempt in 1..=spec.attempts.max(1) {
        match dst.execute("device_add", Some(spec.device.clone())).await {
            Ok(_) => {
                plugged = true;
                break;
            }
            Err(e) => {
                tracing::warn!(attempt, error = %e, "device_add failed");
                last = e.to_string();
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    if !plugged {
        return Err(MigrateError::PlugFailed {
            attempts: spec.attempts.max(1),
            error: last,
            saved: spec.saved.clone(),
        });
    }
    let driver = spec.device["driver"].as_str().unwrap_or("?");
    observe(timeline.record(Phase::Plugged, None, format!("{driver} {mac}")), None);

    let restore = HostMessage::Restore(Restore {
        saved: spec.saved.clone(),
        onto: InterfaceSelector {
            mac: Some(mac),
            ..Default::default()
        },
        restore_mac: spec.restore_mac,
    });
    // Restore is idempotent (the agent applies only what differs), so a request lost to an
    // agent that restarted (the fault-injection test kills it right after the plug) is sent
    // again, once, in a fresh session.
    let replies = match channel.request(restore.clone(), spec.deadlines.restore).await {
        Err(e @ ChannelError::Timeout { .. }) => {
            observe(timeline.record(Phase::RestoreRetried, None, e.to_string()), None);
            channel
                .open_session(HOST_AGENT, spec.deadlines.agent)
                .await
                .map_err(restore_failed)?;
            channel.request(restore, spec.deadlines.restore).await
        }
        other => other,
    }
    .map_err(restore_failed)?;
    let Some(GuestMessage::Restored(r)) = replies.into_iter().last() else {
        return Err(restore_failed(ChannelError::Closed));
    };
    let detail = format!(
        "{}: {} applied, {} unchanged, {} failed, {} differ after restore, guest took {} ms",
        r.interface,
        r.applied,
        r.unchanged,
        r.failed.len(),
        r.mismatches.len(),
        r.duration_ms
    );
    observe(timeline.record(Phase::Restored, None, detail), None);
    Ok(r)
}
