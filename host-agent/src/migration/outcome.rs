//! How a run ended, for the operator: one error per way it can end short of migrating, each
//! saying what happened, why (with the hypervisor's own words), and what is where now.
//!
//! One exit-status contract: 0 migrated (and restored); 1 not migrated, the VM as it was
//! before on the source; 2 the operator must act — the message says where the saved state is.

use std::time::Duration;

use super::journal::JournalError;
use super::state::{Migrating, SourceState, Why};
use super::transition::InvalidTransition;
use crate::guest::Saved;
use crate::vm::MigrationState;

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("the guest agent cannot be used ({0}); nothing was changed (fallback policy: refuse)")]
    GuestUnavailable(String),
    #[error("no VF with id {id} in this VM ({error}); nothing was changed")]
    NoSuchVf { id: String, error: String },
    #[error("the VF {id} has no mac property (a vfio-pci VF): give its MAC (--vf-mac, or --descriptor); nothing was changed")]
    NoVfMac { id: String },
    #[error("{0}; nothing was changed")]
    Refused(Why),
    #[error("migration {status} after the VF was unplugged: {reason}; the VF is plugged back on the source and the guest restored it")]
    RolledBack { status: String, reason: String },
    #[error("the VF was not released within {after:?}; {outcome}")]
    UnplugTimeout { after: Duration, outcome: String },
    #[error("{why}; migration given up: {outcome}")]
    GaveBack { why: Why, outcome: String },
    #[error("{why}, and putting the VM back failed: {problem}; the operator must act — the guest's saved state: {saved}; running vfmig-host again tries the give-back again")]
    Stuck { why: Why, problem: String, saved: String },
    #[error("plugging the fresh VF failed {attempts} times ({error}); the guest's saved state: {saved} — plug a VF and run `vfmig-host plug` to finish")]
    PlugFailed {
        attempts: u32,
        error: String,
        saved: String,
    },
    #[error("the guest agent on the destination could not restore ({error}); the guest's saved state: {saved}")]
    RestoreFailed { error: String, saved: String },
    #[error("{0}; the journal holds where the migration stands: run vfmig-host again to take it up")]
    Lost(String),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(transparent)]
    Internal(#[from] InvalidTransition),
}

impl MigrateError {
    /// The exit status of the contract above.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::GuestUnavailable(_)
            | Self::NoSuchVf { .. }
            | Self::NoVfMac { .. }
            | Self::Refused(_)
            | Self::RolledBack { .. }
            | Self::UnplugTimeout { .. }
            | Self::GaveBack { .. } => 1,
            Self::Stuck { .. }
            | Self::PlugFailed { .. }
            | Self::RestoreFailed { .. }
            | Self::Lost(_)
            | Self::Journal(_)
            | Self::Internal(_) => 2,
        }
    }
}

/// The saved states, as a message names them.
pub fn describe_saved<'a>(saved: impl IntoIterator<Item = &'a Saved>) -> String {
    let all: Vec<String> = saved.into_iter().map(Saved::describe).collect();
    if all.is_empty() {
        "none (the guest agent saved nothing)".into()
    } else {
        all.join("; ")
    }
}

fn saved_of(m: &Migrating) -> String {
    describe_saved(m.vfs.iter().filter_map(|v| v.saved.as_ref()))
}

/// What a finished source run hands on: the saved state of each VF in the plan's order, or
/// `None` when the VM migrated without saving any (QEMU's failover, the unplug-first fallback);
/// or how it ended short of migrating.
pub fn source_outcome(state: SourceState) -> Result<Option<Vec<Saved>>, MigrateError> {
    match state {
        SourceState::Completed { vfs } => Ok(vfs.into_iter().map(|v| v.saved).collect()),
        SourceState::Refused { why } => Err(match why {
            Why::GuestUnusable { error } => MigrateError::GuestUnavailable(error),
            Why::NoSuchVf { id, error } => MigrateError::NoSuchVf { id, error },
            Why::NoVfMac { id } => MigrateError::NoVfMac { id },
            why => MigrateError::Refused(why),
        }),
        SourceState::GaveBack { why, report, replugged } => Err(gave_back(why, &report, !replugged.is_empty())),
        SourceState::Stuck { m, why, problem, .. } => Err(MigrateError::Stuck {
            saved: saved_of(&m),
            why,
            problem,
        }),
        other => Err(MigrateError::Internal(InvalidTransition {
            from: other.name(),
            event: "end of run",
        })),
    }
}

/// A give-back that put everything back, said the way the operator meets it: a migration
/// that ended after the unplug is a rollback, an unplug past its deadline a timeout.
fn gave_back(why: Why, report: &[String], replugged: bool) -> MigrateError {
    let outcome = report.join("; ");
    match why {
        Why::MigrationEnded { state, ref error } if replugged => MigrateError::RolledBack {
            status: state.name().into(),
            reason: match error {
                Some(e) => e.clone(),
                None => why.to_string(),
            },
        },
        Why::Cancelled { ref by } if replugged => MigrateError::RolledBack {
            status: MigrationState::Cancelled.name().into(),
            reason: format!("cancelled by {by}"),
        },
        Why::UnplugMissed { after_ms, .. } => MigrateError::UnplugTimeout {
            after: Duration::from_millis(after_ms),
            outcome,
        },
        why => MigrateError::GaveBack { why, outcome },
    }
}
