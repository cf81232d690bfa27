//! The one transition function of each side: from a state and what happened to the next
//! state. Pure: every pair is tested without a VM, and a pair the table does not list is an
//! error, never a guess.

use super::plan::Fallback;
use super::state::{DestinationProblem, DestinationState, Gate, Hook, Migrating, SourceState, Unplug, Vf, VfRun, Why};
use crate::guest::Saved;
use crate::vm::Params;

/// What happened on the source side.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The VFs, the parameters and the switch-over gate were read (nothing changed yet).
    Read {
        params: Params,
        gate: Gate,
        vfs: Vec<Vf>,
        fallback: Fallback,
    },
    /// The VFs are the primaries of QEMU's own failover pair with `pair`.
    QemuFailover {
        params: Params,
        vfs: Vec<Vf>,
        pair: String,
    },
    /// Refused before anything changed.
    Refused(Why),
    /// The guest agent answered its hello; `hook`: its DMA hook is installed.
    GuestReady {
        hook: bool,
    },
    /// The guest agent cannot be used.
    GuestUnusable {
        error: String,
    },
    /// The hook tracks every VF.
    Tracked,
    /// The hook does not track every VF; `asked`: it was asked to, and may track some.
    NotTracked {
        why: String,
        asked: bool,
    },
    /// `migrate` was issued.
    MigrationStarted,
    /// Pre-copy's remainder is under the margin, and it is held.
    Held,
    /// The guest saved VF `index`'s state.
    VfSaved {
        index: usize,
        saved: Saved,
    },
    AllSaved,
    /// `device_del` was issued for VF `index`.
    UnplugRequested {
        index: usize,
    },
    /// VF `index` is gone.
    VfGone {
        index: usize,
    },
    Unplugged,
    /// The hook was stopped (or left to the destination step: the VM was paused).
    HookStopped,
    /// The parameters are back and the migration runs to its end.
    Released,
    Completed,
    /// Give up.
    Failed(Why),
    /// Everything is back as it was; `replugged`: the VFs plugged back.
    GaveBack {
        report: Vec<String>,
        replugged: Vec<String>,
    },
    /// Putting back failed.
    GiveBackFailed {
        problem: String,
    },
    /// The migration completed before the give-back could cancel it.
    CompletedAnyway,
}

impl Event {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Read { .. } => "read",
            Self::QemuFailover { .. } => "qemu-failover",
            Self::Refused(_) => "refused",
            Self::GuestReady { .. } => "guest-ready",
            Self::GuestUnusable { .. } => "guest-unusable",
            Self::Tracked => "tracked",
            Self::NotTracked { .. } => "not-tracked",
            Self::MigrationStarted => "migration-started",
            Self::Held => "held",
            Self::VfSaved { .. } => "vf-saved",
            Self::AllSaved => "all-saved",
            Self::UnplugRequested { .. } => "unplug-requested",
            Self::VfGone { .. } => "vf-gone",
            Self::Unplugged => "unplugged",
            Self::HookStopped => "hook-stopped",
            Self::Released => "released",
            Self::Completed => "completed",
            Self::Failed(_) => "failed",
            Self::GaveBack { .. } => "gave-back",
            Self::GiveBackFailed { .. } => "give-back-failed",
            Self::CompletedAnyway => "completed-anyway",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no transition from state {from} on event {event} (a bug in vfmig-host; the journal is kept)")]
pub struct InvalidTransition {
    pub from: &'static str,
    pub event: &'static str,
}

fn migrating(params: Params, gate: Gate, vfs: Vec<Vf>) -> Migrating {
    Migrating {
        params,
        gate,
        vfs: vfs
            .into_iter()
            .map(|vf| VfRun {
                vf,
                saved: None,
                unplug: Unplug::Plugged,
            })
            .collect(),
        guest: false,
    }
}

/// Updates VF `index` of `m`; an index past the list is no transition.
fn with_vf(mut m: Migrating, index: usize, update: impl FnOnce(&mut VfRun)) -> Option<Migrating> {
    update(m.vfs.get_mut(index)?);
    Some(m)
}

/// The source side's transition.
pub fn next(state: SourceState, event: Event) -> Result<SourceState, InvalidTransition> {
    use Event as E;
    use SourceState as S;
    let (from, on) = (state.name(), event.name());
    let invalid = InvalidTransition { from, event: on };
    let next = match (state, event) {
        (
            S::Start,
            E::Read {
                params,
                gate,
                vfs,
                fallback,
            },
        ) => S::Negotiating {
            m: migrating(params, gate, vfs),
            fallback,
        },
        (S::Start, E::QemuFailover { params, vfs, pair }) => S::QemuFailover {
            // QEMU's failover gates its own migration: it waits in wait-unplug until the guest
            // released the primary, and keeps the device (partly unplugged, to plug it back should
            // the migration fail), where vfmig's gate would find it present: not gated.
            m: migrating(params, Gate::None, vfs),
            pair,
        },
        (S::Start | S::Negotiating { .. }, E::Refused(why)) => S::Refused { why },
        (S::Negotiating { mut m, .. }, E::GuestReady { hook }) => {
            m.guest = true;
            if hook {
                S::Tracking { m, joining: false }
            } else {
                S::SavingFirst { m, hook: Hook::Off }
            }
        }
        (
            S::Negotiating {
                fallback: Fallback::Refuse,
                ..
            },
            E::GuestUnusable { error },
        ) => S::Refused {
            why: Why::GuestUnusable { error },
        },
        (
            S::Negotiating {
                m,
                fallback: Fallback::UnplugFirst,
            },
            E::GuestUnusable { .. },
        ) => S::Unplugging {
            m,
            hook: Hook::Off,
            before_precopy: true,
        },
        (S::Tracking { m, joining }, E::Tracked) => S::Precopy { m, ours: joining },
        (S::Precopy { m, .. }, E::MigrationStarted) => S::Precopy { m, ours: true },
        (S::Tracking { m, joining: false }, E::NotTracked { asked, .. }) => S::SavingFirst {
            m,
            hook: if asked { Hook::Tracking } else { Hook::Off },
        },
        (S::Tracking { m, joining: true }, E::NotTracked { why, .. }) => S::GivingBack {
            m,
            hook: Hook::Tracking,
            why: Why::HookLost { why },
        },
        (S::Precopy { m, .. }, E::Held) => S::Held { m },
        (S::Held { m }, E::VfSaved { index, saved }) => S::Held {
            m: with_vf(m, index, |v| v.saved = Some(saved)).ok_or(invalid)?,
        },
        (S::SavingFirst { m, hook }, E::VfSaved { index, saved }) => S::SavingFirst {
            m: with_vf(m, index, |v| v.saved = Some(saved)).ok_or(invalid)?,
            hook,
        },
        (S::Held { m }, E::AllSaved) => S::Unplugging {
            m,
            hook: Hook::Tracking,
            before_precopy: false,
        },
        (S::SavingFirst { m, hook }, E::AllSaved) => S::Unplugging {
            m,
            hook,
            before_precopy: true,
        },
        (
            S::Unplugging {
                m,
                hook,
                before_precopy,
            },
            E::UnplugRequested { index },
        ) => S::Unplugging {
            m: with_vf(m, index, |v| v.unplug = Unplug::Requested).ok_or(invalid)?,
            hook,
            before_precopy,
        },
        (
            S::Unplugging {
                m,
                hook,
                before_precopy,
            },
            E::VfGone { index },
        ) => S::Unplugging {
            m: with_vf(m, index, |v| v.unplug = Unplug::Gone).ok_or(invalid)?,
            hook,
            before_precopy,
        },
        (
            S::Unplugging {
                m,
                hook,
                before_precopy,
            },
            E::Unplugged,
        ) if m.vfs.iter().all(|v| v.unplug == Unplug::Gone) => S::Releasing {
            m,
            hook,
            start: before_precopy,
        },
        (
            S::Releasing {
                m,
                hook: Hook::Tracking,
                start,
            },
            E::HookStopped,
        ) => S::Releasing {
            m,
            hook: Hook::Stopped,
            start,
        },
        (S::Releasing { m, hook, .. }, E::Released) => S::Completing { m, hook },
        (S::Completing { m, .. } | S::QemuFailover { m, .. }, E::Completed) => S::Completed { vfs: m.vfs },
        (S::GivingBack { m, .. }, E::CompletedAnyway) => S::Completed { vfs: m.vfs },
        (S::GivingBack { why, .. }, E::GaveBack { report, replugged }) => S::GaveBack { why, report, replugged },
        (S::GivingBack { m, hook, why }, E::GiveBackFailed { problem }) => S::Stuck { m, hook, why, problem },
        // Any state of a started migration but the give-back's own gives up into it.
        (state, E::Failed(why)) if !state.is_terminal() && !matches!(state, S::GivingBack { .. } | S::Start) => {
            let hook = state.hook();
            let m = state.into_migrating().ok_or(invalid)?;
            S::GivingBack { m, hook, why }
        }
        _ => return Err(invalid),
    };
    Ok(next)
}

/// Where a run taken up from its journal goes on from: pre-copy with the VFs plugged is only
/// joined once the hook is confirmed again, and a give-back that failed is tried again.
pub fn resumed(state: SourceState) -> SourceState {
    match state {
        SourceState::Precopy { m, ours } => SourceState::Tracking { m, joining: ours },
        SourceState::Held { m } => SourceState::Tracking { m, joining: true },
        SourceState::Stuck { m, hook, why, .. } => SourceState::GivingBack { m, hook, why },
        other => other,
    }
}

/// What happened on the destination side.
#[derive(Clone, Debug, PartialEq)]
pub enum DestinationEvent {
    /// Fresh VF `index` is plugged.
    VfPlugged {
        index: usize,
    },
    AllPlugged,
    /// The guest restored fresh VF `index`.
    VfRestored {
        index: usize,
        report: vfmig_protocol::message::Restored,
    },
    AllRestored,
    Failed(DestinationProblem),
}

/// The destination side's transition.
pub fn next_destination(
    state: DestinationState,
    event: DestinationEvent,
) -> Result<DestinationState, InvalidTransition> {
    use DestinationEvent as E;
    use DestinationState as S;
    let invalid = InvalidTransition {
        from: state.name(),
        event: match &event {
            E::VfPlugged { .. } => "vf-plugged",
            E::AllPlugged => "all-plugged",
            E::VfRestored { .. } => "vf-restored",
            E::AllRestored => "all-restored",
            E::Failed(_) => "failed",
        },
    };
    Ok(match (state, event) {
        (S::Plugging { mut vfs }, E::VfPlugged { index }) => {
            vfs.get_mut(index).ok_or(invalid)?.plugged = true;
            S::Plugging { vfs }
        }
        (S::Plugging { vfs }, E::AllPlugged) if vfs.iter().all(|f| f.plugged) => S::Restoring { vfs },
        (S::Restoring { mut vfs }, E::VfRestored { index, report }) => {
            vfs.get_mut(index).ok_or(invalid)?.restored = Some(report);
            S::Restoring { vfs }
        }
        (S::Restoring { vfs }, E::AllRestored) if vfs.iter().all(|f| f.restored.is_some()) => S::Restored { vfs },
        (S::Plugging { vfs } | S::Restoring { vfs }, E::Failed(problem)) => S::Stuck { vfs, problem },
        _ => return Err(invalid),
    })
}

/// Where a destination step taken up again goes on from: a stuck one is tried again, fresh
/// VFs already plugged are taken as they are.
pub fn resumed_destination(state: DestinationState) -> DestinationState {
    match state {
        DestinationState::Stuck { vfs, .. } => DestinationState::Plugging { vfs },
        other => other,
    }
}
