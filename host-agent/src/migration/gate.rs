//! The switch-over gate: QEMU pauses before its switch-over (`pause-before-switchover`), and
//! vfmig lets it go on only if none of its VFs is in the VM.
//!
//! The hold ([`super::precopy`]) makes a switch-over with a VF plugged unlikely; the gate
//! forbids it. It is needed: a vfio-pci VF with `failover_pair_id` set migrates without any
//! blocker, its state silently not sent. vfmig sets the capability just before it starts a
//! migration (QEMU refuses to change it while one runs) and puts it back as it found it when
//! the run ends, whichever way. QEMU pauses with the VM already stopped, so the check costs
//! downtime: the poll that finds the pause, one `qom-get` per VF and the `migrate-continue`.
//! A backend without a pause vfmig can hold ([`Gate::None`]: libvirt) is not gated.

use tokio::time::Instant;

use super::source::Ctx;
use super::state::{Gate, Migrating, Unplug, Why};
use super::timeline::Phase;
use super::transition::Event;
use crate::vm::{Migration, Vm, VmError};

/// Has QEMU pause before the switch-over of the migration about to start.
pub(super) async fn arm<V: Vm>(vm: &V, m: &Migrating) -> Result<(), VmError> {
    match m.gate {
        Gate::Pause { .. } => vm.set_switchover_gate(true).await,
        Gate::None => Ok(()),
    }
}

/// Puts the capability back as the run found it (no migration may be running).
pub(super) async fn restore<V: Vm>(vm: &V, m: &Migrating) -> Result<(), VmError> {
    match m.gate {
        Gate::Pause { was } => vm.set_switchover_gate(was).await,
        Gate::None => Ok(()),
    }
}

/// The VFs of the run that are in the VM.
async fn present<V: Vm>(vm: &V, m: &Migrating) -> Result<Vec<String>, VmError> {
    let mut plugged = Vec::new();
    for run in &m.vfs {
        if vm.device_present(&run.vf.id).await? {
            plugged.push(run.vf.id.clone());
        }
    }
    Ok(plugged)
}

/// Why a migration that paused before its switch-over while the run still had VFs plugged
/// (pre-copy held, or a run taken up there) is given up: the VFs still in the VM, or, should
/// they have left just now, those the run had not seen leave.
pub(super) async fn paused_plugged<V: Vm>(vm: &V, m: &Migrating) -> Result<Why, VmError> {
    let mut plugged = present(vm, m).await?;
    if plugged.is_empty() {
        plugged = m
            .vfs
            .iter()
            .filter(|r| r.unplug != Unplug::Gone)
            .map(|r| r.vf.id.clone())
            .collect();
    }
    Ok(Why::PluggedAtSwitchover { plugged })
}

/// The gate itself, for a migration `paused` before its switch-over once the VFs are gone:
/// lets it go on if none is in the VM (true), gives the migration up otherwise.
pub(super) async fn pass<V: Vm, G>(
    ctx: &mut Ctx<'_, V, G>,
    m: &Migrating,
    paused: &Migration,
    events: &mut Vec<Event>,
) -> Result<bool, VmError> {
    let seen = Instant::now();
    let plugged = present(ctx.vm, m).await?;
    if !plugged.is_empty() {
        events.push(Event::Failed(Why::PluggedAtSwitchover { plugged }));
        return Ok(false);
    }
    ctx.vm.continue_switchover().await?;
    let checked: Vec<&str> = m.vfs.iter().map(|r| r.vf.id.as_str()).collect();
    let detail = format!(
        "VF {} not in the VM; migrate-continue {} ms after the pause was seen",
        checked.join(", "),
        seen.elapsed().as_millis()
    );
    ctx.record(Phase::SwitchoverAllowed, Some(paused), detail);
    Ok(true)
}
