//! The destination side's run: plug a fresh VF for each saved one and have the guest restore
//! each saved state onto its fresh VF — journalled like the source side, so a run killed here
//! is taken up by running it again.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use vfmig_protocol::message::Restored;
use vfmig_protocol::MacAddr;

use super::journal::{Journal, RunState};
use super::outcome::{describe_saved, MigrateError};
use super::plan::PlugSpec;
use super::state::{DestinationProblem, DestinationState, Fresh};
use super::timeline::{Phase, Step, Timeline};
use super::transition::{next_destination, resumed_destination, DestinationEvent as Event};
use crate::guest::{Guest, GuestError};
use crate::vm::{Vm, VmError};

/// Between two `device_add` attempts.
const PLUG_RETRY: Duration = Duration::from_millis(500);

/// The fresh VFs of `spec`, each with its id and MAC.
fn fresh(spec: &PlugSpec) -> Result<Vec<Fresh>, MigrateError> {
    spec.vfs
        .iter()
        .map(|f| {
            let unusable = |error: &str| MigrateError::PlugFailed {
                attempts: 0,
                error: error.into(),
                saved: f.saved.describe(),
            };
            if f.id.is_empty() {
                return Err(unusable("the fresh VF has no id"));
            }
            let mac = f
                .device
                .get("mac")
                .and_then(Value::as_str)
                .and_then(|m| m.parse::<MacAddr>().ok())
                .or(f.mac)
                .ok_or_else(|| {
                    unusable(
                        "the fresh VF's MAC is unknown: give it as the device's \"mac\" or, for vfio-pci, with --mac",
                    )
                })?;
            Ok(Fresh {
                id: f.id.clone(),
                device: f.device.clone(),
                mac,
                saved: f.saved.clone(),
                plugged: false,
                restored: None,
            })
        })
        .collect()
}

/// Runs the destination side. With `journal` (the file and the VFs' ids, as the source side
/// keeps it), a destination step an earlier run left is taken up, and the journal is removed
/// once everything is restored. Returns the guest's report for each fresh VF.
pub async fn run_destination<V: Vm, G: Guest>(
    vm: &V,
    guest: &mut G,
    spec: &PlugSpec,
    journal: Option<(&Path, &[String])>,
    timeline: &mut Timeline,
    observe: &mut dyn FnMut(&Step),
) -> Result<Vec<Restored>, MigrateError> {
    let mut record = |phase, detail: String| observe(timeline.record(phase, None, detail));
    let loaded = match journal {
        Some((path, ids)) => Journal::load(path, ids)?.map(|j| j.state),
        None => None,
    };
    let mut state = match loaded {
        Some(RunState::Destination(s)) => {
            let state = resumed_destination(s.clone());
            let detail = format!("an earlier run stopped in destination state {}; going on", s.name());
            record(Phase::Resumed, detail);
            state
        }
        _ => DestinationState::Plugging { vfs: fresh(spec)? },
    };
    loop {
        write_journal(journal, &state);
        let mut events = Vec::new();
        let acted = match &state {
            DestinationState::Plugging { vfs } => plug(vm, guest, spec, vfs, &mut record, &mut events).await,
            DestinationState::Restoring { vfs } => restore(guest, spec, vfs, &mut record, &mut events).await,
            DestinationState::Restored { vfs } => return Ok(vfs.iter().filter_map(|f| f.restored.clone()).collect()),
            DestinationState::Stuck { vfs, problem } => {
                let saved = describe_saved(vfs.iter().map(|f| &f.saved));
                return Err(match problem.clone() {
                    DestinationProblem::PlugFailed { attempts, error } => {
                        MigrateError::PlugFailed { attempts, error, saved }
                    }
                    DestinationProblem::RestoreFailed { error } => MigrateError::RestoreFailed { error, saved },
                });
            }
        };
        let lost = acted.err();
        for event in events {
            state = next_destination(state, event)?;
        }
        if let Some(e) = lost {
            write_journal(journal, &state);
            return Err(MigrateError::Lost(e.to_string()));
        }
    }
}

/// Writes the state to the journal, before its action runs; once everything is restored,
/// removes it. A failing disk is logged, not fatal: the VM already runs here.
fn write_journal(journal: Option<(&Path, &[String])>, state: &DestinationState) {
    let Some((path, ids)) = journal else { return };
    let written = match state {
        DestinationState::Restored { .. } => Journal::remove(path),
        s => Journal::new(ids.to_vec(), RunState::Destination(s.clone())).save(path),
    };
    if let Err(e) = written {
        tracing::error!(error = %e, "journal not written");
    }
}

/// Plugs every fresh VF not plugged yet; one already present with its MAC (a run taken up)
/// is taken as plugged.
async fn plug<V: Vm, G: Guest>(
    vm: &V,
    guest: &mut G,
    spec: &PlugSpec,
    vfs: &[Fresh],
    record: &mut impl FnMut(Phase, String),
    events: &mut Vec<Event>,
) -> Result<(), VmError> {
    let restore_failed = |e: GuestError| Event::Failed(DestinationProblem::RestoreFailed { error: e.to_string() });
    let info = match guest.hello(spec.deadlines.agent).await {
        Ok(info) => info,
        Err(e) => {
            events.push(restore_failed(e));
            return Ok(());
        }
    };
    if info.kernel_hook {
        // A source side interrupted between the unplug and stopping the hook leaves it enabled
        // in the guest, which migrated with it; on the same slot it would track the fresh VF.
        if let Ok(devices) = guest.stop_dma(spec.deadlines.prepare).await {
            if !devices.is_empty() {
                record(
                    Phase::HookDisabled,
                    "left tracking by an interrupted source side; stopped".into(),
                );
            }
        }
    }
    for (index, f) in vfs.iter().enumerate().filter(|(_, f)| !f.plugged) {
        // A QMP spec names its driver; a libvirt spec (XML) is named by the device's id.
        let driver = f.device.get("driver").and_then(Value::as_str).unwrap_or(&f.id);
        if vm.device_present(&f.id).await? {
            if vm.device_is(&f.id, &f.device).await? {
                record(Phase::Plugged, format!("{driver} {} (already plugged)", f.mac));
                events.push(Event::VfPlugged { index });
                continue;
            }
            // The source's VF, which the destination was started with (libvirt defines it
            // from the source's XML, taken before the unplug): not inert — a PCI rescan in
            // the guest would find it — and in the fresh VF's way.
            vm.remove_device(&f.id).await?;
            if !vm.wait_device_gone(&f.id, spec.deadlines.unplug).await? {
                let error = format!("{}, the source's VF the destination was started with, did not go", f.id);
                let attempts = 0;
                events.push(Event::Failed(DestinationProblem::PlugFailed { attempts, error }));
                return Ok(());
            }
            record(
                Phase::GhostRemoved,
                format!("{}: the source's VF, defined here from its XML", f.id),
            );
        }
        let mut last = String::new();
        for attempt in 1..=spec.attempts.max(1) {
            match vm.add_device(&f.device).await {
                Ok(()) => {
                    last.clear();
                    break;
                }
                Err(e @ VmError::Lost(_)) => return Err(e),
                Err(e) => {
                    tracing::warn!(attempt, error = %e, "device_add failed");
                    last = e.to_string();
                    tokio::time::sleep(PLUG_RETRY).await;
                }
            }
        }
        if !last.is_empty() {
            let attempts = spec.attempts.max(1);
            events.push(Event::Failed(DestinationProblem::PlugFailed { attempts, error: last }));
            return Ok(());
        }
        record(Phase::Plugged, format!("{driver} {}", f.mac));
        events.push(Event::VfPlugged { index });
    }
    events.push(Event::AllPlugged);
    Ok(())
}

/// Has the guest restore each saved state onto its fresh VF. Restore is idempotent (the agent
/// applies only what differs), so a request that went unanswered — an agent that restarted, a
/// connection cut on the way — is sent again, once, in a fresh session.
async fn restore<G: Guest>(
    guest: &mut G,
    spec: &PlugSpec,
    vfs: &[Fresh],
    record: &mut impl FnMut(Phase, String),
    events: &mut Vec<Event>,
) -> Result<(), VmError> {
    let deadlines = &spec.deadlines;
    for (index, f) in vfs.iter().enumerate().filter(|(_, f)| f.restored.is_none()) {
        let answer = match guest
            .restore(&f.saved, f.mac, spec.restore_mac, deadlines.restore)
            .await
        {
            Err(e) if e.is_silent() => {
                record(Phase::RestoreRetried, e.to_string());
                match guest.hello(deadlines.agent).await {
                    Ok(_) => {
                        guest
                            .restore(&f.saved, f.mac, spec.restore_mac, deadlines.restore)
                            .await
                    }
                    Err(e) => Err(e),
                }
            }
            other => other,
        };
        let report = match answer {
            Ok(r) => r,
            Err(e) => {
                events.push(Event::Failed(DestinationProblem::RestoreFailed {
                    error: e.to_string(),
                }));
                return Ok(());
            }
        };
        let detail = format!(
            "{}: {} applied, {} unchanged, {} failed, {} differ after restore, guest took {} ms",
            report.interface,
            report.applied,
            report.unchanged,
            report.failed.len(),
            report.mismatches.len(),
            report.duration_ms
        );
        record(Phase::Restored, detail);
        if let Some(standby) = &report.standby_released {
            let detail = format!(
                "{} carries its addresses and routes again; {standby} none",
                report.interface
            );
            record(Phase::StandbyReleased, detail);
        }
        events.push(Event::VfRestored { index, report });
    }
    events.push(Event::AllRestored);
    Ok(())
}
