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

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::broadcast::error::RecvError;
use vfmig_protocol::message::{
    GuestMessage, Hello, HostMessage, InterfaceSelector, PrepareUnplug, Restore, Restored, StandbyRequest, TrackDma,
};
use vfmig_protocol::MacAddr;

use super::journal::{Journal, JournalError, OriginalParams, Saved};
use super::resume::{decide, Facts, Resume};
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
    /// Where the run keeps its journal, so that a run killed half-way can be run again and
    /// take up where it stopped; `None` runs without one.
    pub journal: Option<PathBuf>,
    /// Whether the guest moves the VF's addresses to a standby NIC for the VF gap.
    pub standby: StandbyRequest,
    /// The VF's MAC, for a device that has no `mac` property to ask QEMU for (a vfio-pci VF:
    /// the PF gave it its MAC).
    pub vf_mac: Option<MacAddr>,
}

/// The destination side's instructions.
#[derive(Clone, Debug)]
pub struct PlugSpec {
    /// `device_add` arguments for the fresh VF.
    pub device: Value,
    /// The fresh VF's MAC when `device` has no `mac` (a vfio-pci VF, given its MAC through
    /// the PF).
    pub mac: Option<MacAddr>,
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
    #[error("the VF {id} has no mac property (a vfio-pci VF): give its MAC (--vf-mac, or --descriptor); nothing was changed")]
    NoVfMac { id: String },
    #[error("QEMU: {0}")]
    Qmp(#[from] QmpError),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(
        "taking up an interrupted migration: the DMA hook no longer tracks the VF ({0}); migration cancelled, VF kept"
    )]
    HookLost(String),
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
    #[error("migration {status} after the VF was unplugged, and plugging it back failed ({error}); the guest's saved state: {saved}")]
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

impl MigrateError {
    /// The VM runs on the source with its VF, and nothing is left half-done: an interrupted
    /// run's journal is no longer needed. Errors that leave a migration running, a VF to plug
    /// back, or a destination step to do keep it, so running vfmig-host again takes them up.
    pub fn settled(&self) -> bool {
        matches!(
            self,
            Self::GuestUnavailable(_)
                | Self::EndedBeforeHold { .. }
                | Self::HoldLeaked { .. }
                | Self::PrepareFailed(_)
                | Self::UnplugTimeout { .. }
                | Self::RolledBack { .. }
                | Self::HookLost(_)
        )
    }
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
            Some(GuestMessage::DmaTracking(t)) if t.devices.is_empty() => {
                "the hook tracked nothing any more (an earlier run stopped it)".into()
            }
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

async fn set_params(qmp: &Qmp, params: &OriginalParams) -> Result<(), QmpError> {
    let args = json!({ "max-bandwidth": params.max_bandwidth, "downtime-limit": params.downtime_limit });
    qmp.execute("migrate-set-parameters", Some(args)).await.map(drop)
}

/// Cancels the migration and restores the parameters: the VM keeps running on the source.
async fn abort(qmp: &Qmp, params: &OriginalParams) {
    if let Err(e) = qmp.execute("migrate_cancel", None).await {
        tracing::error!(error = %e, "migrate_cancel failed");
    }
    if let Err(e) = set_params(qmp, params).await {
        tracing::error!(error = %e, "restoring migration parameters failed");
    }
}

/// Whether QEMU has a device with id `id` (every QOM object has a `type`).
async fn device_present(qmp: &Qmp, id: &str) -> bool {
    qmp.query::<Value>(
        "qom-get",
        Some(json!({ "path": format!("/machine/peripheral/{id}"), "property": "type" })),
    )
    .await
    .is_ok()
}

/// The MAC of the plugged device `id`: its `mac` property, or `known` for a device without
/// one (vfio-pci).
async fn vf_mac(qmp: &Qmp, id: &str, known: Option<MacAddr>) -> Result<MacAddr, MigrateError> {
    match plugged_mac(qmp, id).await {
        Ok(mac) => Ok(mac),
        Err(e) => match (device_present(qmp, id).await, known) {
            (true, Some(mac)) => Ok(mac),
            (true, None) => Err(MigrateError::NoVfMac { id: id.into() }),
            (false, _) => Err(e),
        },
    }
}

/// Is the device with QEMU id `id` plugged? Its MAC if so.
async fn plugged_mac(qmp: &Qmp, id: &str) -> Result<MacAddr, MigrateError> {
    let mac: String = qmp
        .query(
            "qom-get",
            Some(json!({ "path": format!("/machine/peripheral/{id}"), "property": "mac" })),
        )
        .await
        .map_err(|error| MigrateError::NoSuchVf { id: id.into(), error })?;
    mac.parse()
        .map_err(|e| MigrateError::Qmp(QmpError::Protocol(format!("{id} mac: {e}"))))
}

/// One run of the state machine: the timeline it records, whoever watches it, and the
/// journal that lets a later run take up where this one stopped.
struct Run<'a> {
    timeline: &'a mut Timeline,
    observe: &'a mut dyn FnMut(&Step, Option<&MigrationInfo>),
    journal: Option<(PathBuf, Journal)>,
}

impl Run<'_> {
    /// Records a phase: in the journal first (a kill right after must not lose it), then in
    /// the timeline, then to the observer.
    fn record(&mut self, phase: Phase, info: Option<&MigrationInfo>, detail: impl Into<String>) {
        self.note(|j| j.phase = Some(phase));
        let step = self.timeline.record(phase, info, detail);
        (self.observe)(step, info);
    }

    /// Writes a fact to the journal, before the change it describes is made. Past the first
    /// write a failing disk is logged, not fatal: stopping half-way would be worse than
    /// finishing without a way to resume.
    fn note(&mut self, fact: impl FnOnce(&mut Journal)) {
        if let Some((path, journal)) = &mut self.journal {
            fact(journal);
            if let Err(e) = journal.save(path) {
                tracing::error!(error = %e, "journal not written");
            }
        }
    }

    /// Nothing is left to take up: the VM runs on one side, settled.
    fn close_journal(&mut self) {
        if let Some((path, _)) = self.journal.take() {
            if let Err(e) = Journal::remove(&path) {
                tracing::error!(error = %e, "journal not removed");
            }
        }
    }
}

/// Sends a request; a connection lost on the way (QEMU's chardev closed, the socket cut in
/// mid-frame) is reconnected and the request sent once more. Every request the host sends is
/// idempotent on the guest's side, so a request that did arrive is safe to repeat.
async fn ask(
    channel: &mut GuestChannel,
    msg: HostMessage,
    deadline: Duration,
) -> Result<Vec<GuestMessage>, ChannelError> {
    match channel.request(msg.clone(), deadline).await {
        Err(e @ (ChannelError::Closed | ChannelError::Io(_))) => {
            tracing::warn!(error = %e, "guest channel lost; reconnecting");
            channel.reconnect(HOST_AGENT, deadline).await?;
            channel.request(msg, deadline).await
        }
        other => other,
    }
}

/// Runs the source side. Returns the saved state's name, or `None` when the fallback
/// migrated without the guest agent. With a journal ([`Plan::journal`]) left by a run that
/// was interrupted, takes that migration up where it stands instead.
pub async fn migrate_source(
    src: &Qmp,
    agent: &Path,
    plan: &Plan,
    timeline: &mut Timeline,
    observe: &mut dyn FnMut(&Step, Option<&MigrationInfo>),
) -> Result<Option<Saved>, MigrateError> {
    let mut run = Run {
        timeline,
        observe,
        journal: None,
    };
    if let Some(path) = &plan.journal {
        if let Some(journal) = Journal::load(path, &plan.vf_id)? {
            return resume(src, agent, plan, path, journal, &mut run).await;
        }
    }
    fresh(src, agent, plan, &mut run).await
}

/// Removes the journal once the destination step is done too (or was never asked for).
pub fn migration_done(plan: &Plan) -> Result<(), MigrateError> {
    match &plan.journal {
        Some(path) => Journal::remove(path).map_err(MigrateError::from),
        None => Ok(()),
    }
}

async fn fresh(src: &Qmp, agent: &Path, plan: &Plan, run: &mut Run<'_>) -> Result<Option<Saved>, MigrateError> {
    let mac = vf_mac(src, &plan.vf_id, plan.vf_mac).await?;
    // Read strictly: a missing value restored as 0 would mean "unlimited" to QEMU.
    let params: OriginalParams = src.query("query-migrate-parameters", None).await?;
    if let Some(path) = &plan.journal {
        // The one write that must succeed: without it an interrupted run could not be undone.
        let journal = Journal::new(&plan.vf_id, mac, plan.vf_device.clone(), params.clone());
        journal.save(path)?;
        run.journal = Some((path.clone(), journal));
    }

    if let Some(standby) = qemu_failover_pair(src, &plan.vf_id).await {
        return with_qemu_failover(src, plan, &standby, run).await.map(|()| None);
    }

    let (mut channel, guest) = match session(agent, plan.deadlines.agent).await {
        Ok((channel, guest)) => {
            let standby = guest.capabilities.standby.as_deref().unwrap_or("none");
            run.record(Phase::Negotiated, None, format!("{}, standby {standby}", guest.agent));
            (channel, guest)
        }
        Err(e) if plan.fallback == Fallback::Refuse => {
            run.close_journal();
            return Err(MigrateError::GuestUnavailable(e));
        }
        Err(e) => return unplug_first(src, plan, e, run).await.map(|()| None),
    };

    // The VF stays through pre-copy only while the guest's hook makes its DMA writes visible
    // to dirty logging; otherwise pre-copy would send stale copies of those pages.
    let hooked = match track_dma(src, &mut channel, &guest, plan, mac).await {
        Ok(pci) => {
            run.note(|j| j.hooked = true);
            run.record(
                Phase::HookEnabled,
                None,
                format!("vfmig_dirty tracks {pci} (VF {})", plan.vf_id),
            );
            true
        }
        Err(why) => {
            let detail = format!(
                "DMA hook unavailable ({why}): the VF is unplugged before pre-copy; its state is saved and restored"
            );
            run.record(Phase::Fallback, None, detail);
            false
        }
    };
    let outcome = async {
        if hooked {
            start_precopy(src, plan, mac, &params, run).await?;
            hold(src, plan, &params, run).await?;
        }
        let saved = save_and_unplug(src, &mut channel, plan, mac, &params, hooked, run).await?;
        finish(
            src,
            Some(&mut channel),
            plan,
            mac,
            &params,
            (if hooked { Hook::Tracking } else { Hook::Off }, !hooked),
            Some(saved),
            run,
        )
        .await
    }
    .await;
    settle_on_error(&mut channel, hooked, &outcome, plan, run).await;
    outcome
}

/// After a failed run: a hook left enabled costs every DMA call, so it is stopped (best
/// effort; the VF may still be plugged), and a run that ended settled needs no journal.
async fn settle_on_error(
    channel: &mut GuestChannel,
    hooked: bool,
    outcome: &Result<Option<Saved>, MigrateError>,
    plan: &Plan,
    run: &mut Run<'_>,
) {
    let Err(e) = outcome else { return };
    if hooked {
        stop_dma_tracking(channel, plan.deadlines.prepare).await;
    }
    if e.settled() {
        run.close_journal();
    }
}

/// `migrate` with the VF plugged and downtime-limit at [`HOLD_DOWNTIME_MS`].
async fn start_precopy(
    src: &Qmp,
    plan: &Plan,
    mac: MacAddr,
    params: &OriginalParams,
    run: &mut Run<'_>,
) -> Result<(), MigrateError> {
    src.execute(
        "migrate-set-parameters",
        Some(json!({ "downtime-limit": HOLD_DOWNTIME_MS })),
    )
    .await?;
    let detail = format!("VF {} ({mac}) still plugged", plan.vf_id);
    if let Err(e) = start_migration(src, plan, detail, run).await {
        abort(src, params).await;
        return Err(e.into());
    }
    Ok(())
}

/// Issues `migrate` — journalled first, so a run that takes over knows it may be running —
/// and records the start of pre-copy.
async fn start_migration(src: &Qmp, plan: &Plan, detail: impl Into<String>, run: &mut Run<'_>) -> Result<(), QmpError> {
    run.note(|j| j.migrate_issued = true);
    src.execute("migrate", Some(json!({ "uri": plan.uri }))).await?;
    run.record(Phase::PrecopyStarted, None, detail);
    Ok(())
}

/// Watches pre-copy until its remainder is under the margin, then throttles it.
async fn hold(src: &Qmp, plan: &Plan, params: &OriginalParams, run: &mut Run<'_>) -> Result<(), MigrateError> {
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
        Some(json!({ "max-bandwidth": HOLD_BANDWIDTH, "downtime-limit": HOLD_DOWNTIME_MS })),
    )
    .await?;
    let detail = format!("max-bandwidth {HOLD_BANDWIDTH} B/s until the VF is gone");
    run.record(Phase::Held, Some(&info), detail);
    Ok(())
}

/// The guest saves the VF's state, then the VF is unplugged. `hooked`: pre-copy is running
/// and held, and is watched for draining while this goes on.
#[allow(clippy::too_many_arguments)]
async fn save_and_unplug(
    src: &Qmp,
    channel: &mut GuestChannel,
    plan: &Plan,
    mac: MacAddr,
    params: &OriginalParams,
    hooked: bool,
    run: &mut Run<'_>,
) -> Result<Saved, MigrateError> {
    // Only a held pre-copy can leak; without one, this never fires.
    let leak = || async {
        if hooked {
            hold_leak(src).await
        } else {
            std::future::pending().await
        }
    };
    let prepare = HostMessage::PrepareUnplug(PrepareUnplug {
        interface: InterfaceSelector {
            mac: Some(mac),
            ..Default::default()
        },
        deadline_ms: plan.deadlines.unplug.as_millis() as u32,
        standby: plan.standby.clone(),
    });
    let replies = tokio::select! {
        replies = ask(channel, prepare, plan.deadlines.prepare) => replies,
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
    let saved_ref = Saved {
        interface: saved.interface.clone(),
        digest: saved.digest.clone(),
    };
    run.note(|j| j.saved = Some(saved_ref.clone()));
    let info = query(src).await?;
    let detail = format!(
        "{}: {} addresses, {} routes, {} neighbours, {}",
        saved.interface,
        saved.addresses,
        saved.routes,
        saved.neighbours,
        &saved.digest[..19]
    );
    run.record(Phase::StateSaved, Some(&info), detail);
    if let Some(standby) = &saved.standby {
        let detail = format!(
            "{standby} carries {}'s addresses and routes until the fresh VF",
            saved.interface
        );
        run.record(Phase::StandbyActive, None, detail);
    }

    let mut events = src.events();
    run.note(|j| j.unplug_requested = true);
    src.execute("device_del", Some(json!({ "id": plan.vf_id }))).await?;
    run.record(Phase::UnplugRequested, None, format!("device_del {}", plan.vf_id));
    let deleted = device_deleted(&plan.vf_id);
    let unplugged = tokio::select! {
        done = wait_event(&mut events, &deleted, plan.deadlines.unplug) => Ok(done),
        remaining = leak() => Err(remaining),
    };
    let unplugged = match unplugged {
        Ok(done) => done,
        Err(remaining) => {
            abort(src, params).await;
            if device_present(src, &plan.vf_id).await {
                keep_vf(channel, plan, &saved.interface, mac).await;
            }
            return Err(MigrateError::HoldLeaked { remaining });
        }
    };
    if !unplugged {
        abort(src, params).await;
        let late = wait_event(&mut events, &deleted, LATE_UNPLUG_GRACE).await;
        return Err(unplug_missed(src, Some(channel), plan, Some(&saved.interface), mac, late, run).await);
    }
    let info = query(src).await?;
    run.record(Phase::Unplugged, Some(&info), "DEVICE_DELETED");
    Ok(saved_ref)
}

/// The guest saved its state (and may have moved the VF's addresses to a standby), but the VF
/// stays where it is: have the guest restore onto it, which moves them back. When nothing had
/// moved this changes nothing (restore applies only what differs).
async fn keep_vf(channel: &mut GuestChannel, plan: &Plan, saved: &str, mac: MacAddr) {
    if let Err(e) = restore_onto_vf(channel, plan, saved, mac).await {
        tracing::error!(error = %e, "the guest did not take its addresses back onto the VF");
    }
}

/// Has the guest restore the state saved under `saved` onto the VF with `mac` (its own MAC:
/// the VF on the source).
async fn restore_onto_vf(
    channel: &mut GuestChannel,
    plan: &Plan,
    saved: &str,
    mac: MacAddr,
) -> Result<(), ChannelError> {
    let restore = HostMessage::Restore(Restore {
        saved: saved.to_owned(),
        onto: InterfaceSelector {
            mac: Some(mac),
            ..Default::default()
        },
        restore_mac: false,
        digest: None,
    });
    ask(channel, restore, plan.deadlines.restore).await.map(drop)
}

/// The unplug missed its deadline and the migration was cancelled. A `device_del` cannot be
/// withdrawn: the guest may still eject the VF. `late`: it did, within the grace period; then
/// the VF is put back.
async fn unplug_missed(
    src: &Qmp,
    channel: Option<&mut GuestChannel>,
    plan: &Plan,
    saved: Option<&str>,
    mac: MacAddr,
    late: bool,
    run: &mut Run<'_>,
) -> MigrateError {
    let after = plan.deadlines.unplug;
    if !late {
        if let (Some(channel), Some(saved)) = (channel, saved) {
            keep_vf(channel, plan, saved, mac).await;
        }
        let outcome = "the VF is still plugged (the guest may yet act on the eject request)".to_string();
        return MigrateError::UnplugTimeout { after, outcome };
    }
    match replug(src, channel, plan, saved, mac).await {
        Ok(()) => {
            let detail = "the guest released the VF after the deadline: plugged back and restored";
            run.record(Phase::RolledBack, None, detail);
            MigrateError::UnplugTimeout {
                after,
                outcome: detail.into(),
            }
        }
        Err(error) => MigrateError::RollbackFailed {
            status: "cancelled".into(),
            error,
            saved: state_at(saved),
        },
    }
}

/// Where the DMA hook stands when the VF is gone.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Hook {
    /// Never enabled: the safe path, nothing held.
    Off,
    /// Tracking, with pre-copy held: stop it, then release.
    Tracking,
    /// An interrupted earlier run stopped it, and may or may not have released.
    Stopped,
}

/// The VF is gone: stop the hook and release the parameters, start pre-copy (`start`: the
/// safe path), and wait for the migration to end; one that fails is rolled back.
#[allow(clippy::too_many_arguments)]
async fn finish(
    src: &Qmp,
    mut channel: Option<&mut GuestChannel>,
    plan: &Plan,
    mac: MacAddr,
    params: &OriginalParams,
    (hook, start): (Hook, bool),
    saved: Option<Saved>,
    run: &mut Run<'_>,
) -> Result<Option<Saved>, MigrateError> {
    if hook == Hook::Tracking {
        // The driver's unmap-all at removal went through the hook; nothing is left to track.
        let detail = match channel.as_deref_mut() {
            Some(channel) => stop_dma_tracking(channel, plan.deadlines.prepare).await,
            None => "the guest agent is unreachable: the destination step stops the hook".into(),
        };
        run.record(Phase::HookDisabled, None, detail);
    }
    if hook != Hook::Off {
        set_params(src, params).await?;
        run.record(Phase::Released, None, "original max-bandwidth and downtime-limit");
    }
    if start {
        start_migration(src, plan, "without the VF", run).await?;
    }

    let info = wait_end(src, plan.deadlines.completion).await?;
    run.timeline.qemu = Some(figures(&info));
    let status = info.status.clone().unwrap_or_default();
    if status != "completed" {
        let reason = info.error_desc.clone().unwrap_or_default();
        let name = saved.as_ref().map(|s| s.interface.as_str());
        return Err(roll_back(src, channel, plan, name, mac, status, reason, run).await);
    }
    run.record(Phase::Completed, Some(&info), "QEMU switched over");
    Ok(saved)
}

/// The virtio-net the VF is paired with for QEMU's own failover, if that is set up: the VF's
/// `failover_pair_id` names a device whose `failover` is on. (vfmig's own set-up also sets
/// `failover_pair_id`, to a name of no device, because QEMU allows `device_del` during a
/// migration only then.)
async fn qemu_failover_pair(src: &Qmp, vf_id: &str) -> Option<String> {
    let get = |path: String, property: &str| {
        src.query::<Value>("qom-get", Some(json!({ "path": path, "property": property })))
    };
    let pair = get(format!("/machine/peripheral/{vf_id}"), "failover_pair_id")
        .await
        .ok()?;
    let pair = pair.as_str().filter(|p| !p.is_empty())?.to_owned();
    let on = get(format!("/machine/peripheral/{pair}"), "failover").await.ok()?;
    (on == Value::Bool(true)).then_some(pair)
}

/// A guest whose VF and virtio-net QEMU pairs for its own failover is left to it: QEMU unplugs
/// the VF at migration set-up and waits for the guest (`wait-unplug`), the guest's net_failover
/// moves traffic to the virtio-net, and the destination re-plugs the VF itself. vfmig adds the
/// deadline QEMU lacks: a guest that never releases the VF cancels the migration instead of
/// stalling it.
async fn with_qemu_failover(src: &Qmp, plan: &Plan, standby: &str, run: &mut Run<'_>) -> Result<(), MigrateError> {
    let detail = format!(
        "VF {} is the primary of QEMU's failover pair with {standby}: QEMU and the guest's net_failover move it",
        plan.vf_id
    );
    run.record(Phase::QemuFailover, None, detail);
    start_migration(src, plan, "QEMU unplugs the VF first", run).await?;
    let until = Instant::now() + plan.deadlines.completion;
    let mut waiting_since: Option<Instant> = None;
    let info = loop {
        let info = query(src).await?;
        if info.is_finished() {
            break info;
        }
        if let (Some(since), false) = (waiting_since, info.status.as_deref() == Some("wait-unplug")) {
            waiting_since = None;
            let detail = format!(
                "the guest released the VF after {} ms in wait-unplug",
                since.elapsed().as_millis()
            );
            run.record(Phase::Unplugged, Some(&info), detail);
        }
        if info.status.as_deref() == Some("wait-unplug") {
            let since = *waiting_since.get_or_insert_with(Instant::now);
            if since.elapsed() > plan.deadlines.unplug {
                src.execute("migrate_cancel", None).await?;
                let outcome = "QEMU's failover waited for the guest to release the VF; migration cancelled".into();
                return Err(MigrateError::UnplugTimeout {
                    after: plan.deadlines.unplug,
                    outcome,
                });
            }
        }
        if Instant::now() > until {
            return Err(MigrateError::CompletionTimeout(plan.deadlines.completion));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    run.timeline.qemu = Some(figures(&info));
    let status = info.status.clone().unwrap_or_default();
    if status != "completed" {
        return Err(MigrateError::EndedBeforeHold { status });
    }
    run.record(
        Phase::Completed,
        Some(&info),
        "QEMU switched over; it re-plugs the VF on the destination",
    );
    Ok(())
}

/// The upstream behaviour, as a fallback: unplug first, then migrate without saving state.
async fn unplug_first(src: &Qmp, plan: &Plan, why: ChannelError, run: &mut Run<'_>) -> Result<(), MigrateError> {
    let mut events = src.events();
    run.note(|j| j.unplug_requested = true);
    src.execute("device_del", Some(json!({ "id": plan.vf_id }))).await?;
    let deleted = device_deleted(&plan.vf_id);
    if !wait_event(&mut events, deleted, plan.deadlines.unplug).await {
        let outcome = "migration not started".to_string();
        return Err(MigrateError::UnplugTimeout {
            after: plan.deadlines.unplug,
            outcome,
        });
    }
    run.record(Phase::Unplugged, None, "DEVICE_DELETED, before pre-copy");
    let detail = format!("guest agent unusable ({why}): VF unplugged before pre-copy, state not saved");
    run.record(Phase::Fallback, None, detail);
    start_migration(src, plan, "without the VF", run).await?;
    let info = wait_end(src, plan.deadlines.completion).await?;
    run.timeline.qemu = Some(figures(&info));
    run.record(Phase::Completed, Some(&info), info.status.clone().unwrap_or_default());
    Ok(())
}

/// The migration failed after the unplug: plug the VF back and have the guest restore.
#[allow(clippy::too_many_arguments)]
async fn roll_back(
    src: &Qmp,
    channel: Option<&mut GuestChannel>,
    plan: &Plan,
    saved: Option<&str>,
    mac: MacAddr,
    status: String,
    reason: String,
    run: &mut Run<'_>,
) -> MigrateError {
    match replug(src, channel, plan, saved, mac).await {
        Ok(()) => {
            run.record(Phase::RolledBack, None, format!("migration {status}: {reason}"));
            MigrateError::RolledBack { status, reason }
        }
        Err(error) => MigrateError::RollbackFailed {
            status,
            error,
            saved: state_at(saved),
        },
    }
}

/// Where the guest's saved state is, for an error message.
fn state_at(saved: Option<&str>) -> String {
    saved.map_or("none (the guest agent saved nothing)".into(), |s| {
        format!("/run/vfmig/{s}.json")
    })
}

/// Plugs the VF back on the source and has the guest restore its saved state onto it (if it
/// saved one: the unplug-first fallback runs without the guest agent).
async fn replug(
    src: &Qmp,
    channel: Option<&mut GuestChannel>,
    plan: &Plan,
    saved: Option<&str>,
    mac: MacAddr,
) -> Result<(), String> {
    let device = plan
        .vf_device
        .as_ref()
        .ok_or("no device_add arguments for the VF were given")?;
    src.execute("device_add", Some(device.clone()))
        .await
        .map_err(|e| e.to_string())?;
    let Some(saved) = saved else { return Ok(()) };
    let channel = channel.ok_or(
        "the VF is plugged back, but the guest agent is unreachable; it restores by itself onto a link with the saved MAC",
    )?;
    restore_onto_vf(channel, plan, saved, mac)
        .await
        .map_err(|e| e.to_string())
}

/// Whether the VM's vCPUs run (`query-status`); a VM QEMU paused for a migration's
/// switch-over, or after it, does not.
async fn vm_running(qmp: &Qmp) -> bool {
    qmp.query::<Value>("query-status", None)
        .await
        .is_ok_and(|s| s.get("running") == Some(&Value::Bool(true)))
}

/// Takes up a migration a previous run left half-done, from what QEMU says now and what the
/// journal adds (see [`super::resume`]).
async fn resume(
    src: &Qmp,
    agent: &Path,
    plan: &Plan,
    path: &Path,
    journal: Journal,
    run: &mut Run<'_>,
) -> Result<Option<Saved>, MigrateError> {
    let info = query(src).await?;
    let vf_present = device_present(src, &plan.vf_id).await;
    // A VM that arrived by migration reports its *incoming* migration as "completed" until it
    // starts one of its own; an outgoing one that completed always carries RAM figures.
    let status = match info.status.as_deref() {
        Some("completed") if info.ram.is_none() => None,
        _ => info.status.clone(),
    };
    let facts = Facts { status, vf_present };
    let action = decide(&journal, &facts);
    let (params, mac, hooked, saved, journal_phase) = (
        journal.original.clone(),
        journal.vf_mac,
        journal.hooked,
        journal.saved.clone(),
        journal.phase,
    );
    let detail = format!(
        "{action:?}: an earlier run stopped after {}; QEMU: migration {}, VF {}",
        journal.phase.map_or("its start".into(), Phase::name),
        facts.status.as_deref().unwrap_or("never started"),
        if vf_present { "plugged" } else { "gone" },
    );
    run.journal = Some((path.to_owned(), journal));
    run.record(Phase::Resumed, Some(&info), detail);
    // Every way forward but Done talks to the guest; an agent restarted with its guest answers
    // within the agent deadline. Finishing needs nothing from the guest once its hook is
    // stopped: the earlier run may have released the migration already, which then pauses the
    // source for switch-over, and a paused guest would only make this run wait out the agent
    // deadline with the VF gone. (The destination step stops a hook that is still enabled.)
    let hook_stopped = matches!(journal_phase, Some(Phase::HookDisabled | Phase::Released));
    let quiet_source = action == Resume::Finish && (hook_stopped || !vm_running(src).await);
    let mut channel = match action {
        Resume::Done => None,
        _ if quiet_source => {
            tracing::info!("finishing without the source's guest agent: its hook is stopped or the VM is paused");
            None
        }
        _ => match session(agent, plan.deadlines.agent).await {
            Ok((channel, guest)) => Some((channel, guest)),
            Err(e) => {
                tracing::warn!(error = %e, "resuming without the guest agent");
                None
            }
        },
    };
    let interrupted = |status: Option<&str>| MigrateError::RolledBack {
        status: status.unwrap_or("never started").into(),
        reason: "vfmig-host was interrupted; the VM stays on the source with its VF".into(),
    };
    let outcome = match action {
        Resume::Done => Ok(saved),
        Resume::Restart | Resume::Settle => {
            if action == Resume::Settle && !info.is_finished() {
                abort(src, &params).await;
            } else {
                set_params(src, &params).await?;
            }
            if let Some((channel, _)) = channel.as_mut() {
                stop_dma_tracking(channel, plan.deadlines.prepare).await;
                if let Some(saved) = &saved {
                    keep_vf(channel, plan, &saved.interface, mac).await;
                }
            }
            run.close_journal();
            if action == Resume::Restart {
                // QEMU's chardev serves one client at a time: the fresh run's session needs it.
                drop(channel);
                return fresh(src, agent, plan, run).await;
            }
            Err(interrupted(facts.status.as_deref()))
        }
        Resume::PlugBack => {
            set_params(src, &params).await?;
            let status = facts.status.clone().unwrap_or_default();
            let reason = "the migration ended without completing while vfmig-host was not running".to_string();
            let name = saved.as_ref().map(|s| s.interface.as_str());
            Err(roll_back(
                src,
                channel.as_mut().map(|(c, _)| c),
                plan,
                name,
                mac,
                status,
                reason,
                run,
            )
            .await)
        }
        Resume::Hold => {
            let confirmed = match channel.as_mut() {
                Some((channel, guest)) => track_dma(src, channel, guest, plan, mac).await,
                None => Err("the guest agent is unreachable".into()),
            };
            match (confirmed, channel.as_mut()) {
                (Ok(pci), Some((channel, _))) => {
                    run.record(Phase::HookEnabled, None, format!("vfmig_dirty still tracks {pci}"));
                    let outcome = async {
                        hold(src, plan, &params, run).await?;
                        let saved = save_and_unplug(src, channel, plan, mac, &params, true, run).await?;
                        finish(
                            src,
                            Some(channel),
                            plan,
                            mac,
                            &params,
                            (Hook::Tracking, false),
                            Some(saved),
                            run,
                        )
                        .await
                    }
                    .await;
                    settle_on_error(channel, true, &outcome, plan, run).await;
                    outcome
                }
                (Err(why), _) | (Ok(why), None) => {
                    abort(src, &params).await;
                    run.close_journal();
                    Err(MigrateError::HookLost(why))
                }
            }
        }
        Resume::AwaitUnplug | Resume::Finish => {
            let channel = channel.as_mut().map(|(c, _)| c);
            let hook = match (hooked, hook_stopped) {
                (false, _) => Hook::Off,
                (true, false) => Hook::Tracking,
                (true, true) => Hook::Stopped,
            };
            if action == Resume::AwaitUnplug && !vf_gone(src, &plan.vf_id, plan.deadlines.unplug).await {
                abort(src, &params).await;
                let late = vf_gone(src, &plan.vf_id, LATE_UNPLUG_GRACE).await;
                let name = saved.as_ref().map(|s| s.interface.as_str());
                return Err(unplug_missed(src, channel, plan, name, mac, late, run).await);
            }
            finish(
                src,
                channel,
                plan,
                mac,
                &params,
                (hook, facts.status.is_none()),
                saved,
                run,
            )
            .await
        }
    };
    if outcome.as_ref().is_err_and(MigrateError::settled) {
        run.close_journal();
    }
    outcome
}

/// Waits up to `deadline` for the device `id` to be gone from QEMU. Polled, not awaited as an
/// event: the DEVICE_DELETED may have been sent while no one was listening.
async fn vf_gone(src: &Qmp, id: &str, deadline: Duration) -> bool {
    let until = Instant::now() + deadline;
    loop {
        if !device_present(src, id).await {
            return true;
        }
        if Instant::now() > until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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
    let mac: MacAddr = spec
        .device
        .get("mac")
        .and_then(Value::as_str)
        .and_then(|m| m.parse().ok())
        .or(spec.mac)
        .ok_or_else(|| MigrateError::PlugFailed {
            attempts: 0,
            error: "the fresh VF's MAC is unknown: give it as the device's \"mac\" or, for vfio-pci, with --mac".into(),
            saved: spec.saved.clone(),
        })?;
    let (mut channel, guest) = session(agent, spec.deadlines.agent).await.map_err(restore_failed)?;
    if guest.capabilities.kernel_hook {
        // A source side interrupted between the unplug and stopping the hook leaves it enabled
        // in the guest, which migrated with it; on the same slot it would track the fresh VF.
        if let Ok(replies) = channel
            .request(HostMessage::StopDmaTracking, spec.deadlines.prepare)
            .await
        {
            if let Some(GuestMessage::DmaTracking(t)) = replies.last() {
                if !t.devices.is_empty() {
                    let detail = "left tracking by an interrupted source side; stopped";
                    observe(timeline.record(Phase::HookDisabled, None, detail), None);
                }
            }
        }
    }

    let id = spec.device["id"].as_str().unwrap_or_default();
    // Run again after an interruption, the VF may be plugged already: plugging it twice fails.
    // A device without a mac property (vfio-pci) is taken as the one this step plugged.
    let present =
        !id.is_empty() && device_present(dst, id).await && plugged_mac(dst, id).await.map_or(true, |m| m == mac);
    let mut last = String::new();
    let mut plugged = present;
    for attempt in (1..=spec.attempts.max(1)).take_while(|_| !present) {
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
    let already = if present { " (already plugged)" } else { "" };
    observe(
        timeline.record(Phase::Plugged, None, format!("{driver} {mac}{already}")),
        None,
    );

    let restore = HostMessage::Restore(Restore {
        saved: spec.saved.clone(),
        onto: InterfaceSelector {
            mac: Some(mac),
            ..Default::default()
        },
        restore_mac: spec.restore_mac,
        digest: None,
    });
    // Restore is idempotent (the agent applies only what differs), so a request lost to an
    // agent that restarted (the fault-injection test kills it right after the plug) or to a
    // connection cut on the way is sent again, once, in a fresh session.
    let replies = match channel.request(restore.clone(), spec.deadlines.restore).await {
        Err(e @ (ChannelError::Timeout { .. } | ChannelError::Closed | ChannelError::Io(_))) => {
            observe(timeline.record(Phase::RestoreRetried, None, e.to_string()), None);
            channel
                .reconnect(HOST_AGENT, spec.deadlines.agent)
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
    if let Some(standby) = &r.standby_released {
        let detail = format!("{} carries its addresses and routes again; {standby} none", r.interface);
        observe(timeline.record(Phase::StandbyReleased, None, detail), None);
    }
    Ok(r)
}
