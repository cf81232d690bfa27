//! The migration: one explicit state machine per side, behind the VM seam ([`crate::vm`]) and
//! the guest seam ([`crate::guest`]).
//!
//! Source: negotiate with the guest agent → the guest's DMA hook tracks every VF → pre-copy
//! with the VFs plugged → hold near the end → the guest saves each VF's state → unplug each →
//! stop the hook, release → QEMU pauses before switching over, and goes on only if no VF is
//! in the VM → the migration completes. Destination: plug a fresh VF for each
//! and have the guest restore each saved state onto it. Without a hook confirmed for every
//! VF the safe path runs instead (save, unplug, then pre-copy); whatever fails, and whenever
//! the operator cancels, the give-back puts the VM back as it was on the source.
//!
//! - [`plan`]: what the operator asked for; [`state`]: where a run stands, as the journal
//!   holds it; [`transition`]: the one transition function of each side.
//! - [`source`], [`precopy`], [`release`], [`gate`], [`giveback`]: the source side's actions;
//!   [`destination`]: the destination side's run.
//! - [`journal`], [`timeline`], [`outcome`]: what a run leaves on disk, shows, and ends with.

pub mod destination;
mod gate;
mod giveback;
pub mod journal;
pub mod outcome;
pub mod plan;
pub mod precopy;
mod release;
pub mod source;
pub mod state;
pub mod timeline;
pub mod transition;

use std::path::Path;

use vfmig_protocol::message::Restored;

pub use destination::run_destination;
pub use journal::{Journal, JournalError};
pub use outcome::MigrateError;
pub use plan::{Deadlines, Fallback, FreshVf, Plan, PlugSpec, VfPlan};
pub use source::{run_source, Cancel};
pub use timeline::{Phase, Step, Timeline};

use crate::guest::channel::ChannelGuest;
pub use crate::guest::Saved;
use crate::qmp::Qmp;
use crate::vm::qmp::QmpVm;

/// The source side on bare QEMU: its QMP monitor and the unix socket behind the guest's
/// agent port (see [`run_source`]).
pub async fn migrate_source(
    qmp: &Qmp,
    agent: &Path,
    plan: &Plan,
    timeline: &mut Timeline,
    observe: &mut dyn FnMut(&Step),
) -> Result<Option<Vec<Saved>>, MigrateError> {
    let vm = QmpVm::new(qmp);
    run_source(
        &vm,
        &mut ChannelGuest::new(agent),
        plan,
        timeline,
        observe,
        Cancel::never(),
    )
    .await
}

/// The destination side on bare QEMU, without a journal (see [`run_destination`]).
pub async fn plug_destination(
    qmp: &Qmp,
    agent: &Path,
    spec: &PlugSpec,
    timeline: &mut Timeline,
    observe: &mut dyn FnMut(&Step),
) -> Result<Vec<Restored>, MigrateError> {
    let vm = QmpVm::new(qmp);
    run_destination(&vm, &mut ChannelGuest::new(agent), spec, None, timeline, observe).await
}
