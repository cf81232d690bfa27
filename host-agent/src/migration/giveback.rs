//! Giving a migration up: the one way back, whatever went wrong and wherever.
//!
//! In order, each step safe to run again and each only as far as needed: the migration is
//! cancelled (unless it ended, or completed after all — then the VM is on the destination and
//! nothing is given back); the switch-over gate's capability and the parameters are put back;
//! a VF whose unplug was requested is given a grace period to go, and every VF that is gone is
//! plugged back; the DMA hook is stopped and the guest takes back what it saved for each VF
//! (moved back from a standby, restored onto a VF plugged back) and forgets it. A VF still in
//! the VM after the grace whose interface the guest no longer has is being ejected, slowly:
//! that cannot be stopped, so it is waited for and plugged back, and the guest asked again.
//! The whole is bounded by the give-back deadline. A guest that already missed a deadline gets
//! a short wait per request: what it does not answer stays queued, and it applies it, in
//! order, when it answers again.

use std::time::Duration;

use tokio::time::Instant;

use super::gate;
use super::source::{Acted, Ctx};
use super::state::{Hook, SourceState, Unplug, VfRun};
use super::timeline::Phase;
use super::transition::Event;
use crate::guest::Guest;
use crate::vm::{MigrationState, Vm, VmError};

/// After an unplug missed its deadline, how long a VF the guest may still release is watched
/// (measured: ACPI unplug takes 0.07–2.2 s, native PCIe hotplug 6.6 s).
const LATE_UNPLUG_GRACE: Duration = Duration::from_secs(10);
/// How long a guest agent that already missed a deadline is waited for, per request.
const SILENT_GUEST_WAIT: Duration = Duration::from_secs(2);
/// How often a cancelled migration is read until it has ended.
const CANCEL_POLL: Duration = Duration::from_millis(10);

fn left(until: Instant) -> Duration {
    until.saturating_duration_since(Instant::now())
}

/// The give-back's action.
pub(super) async fn act<V: Vm, G: Guest>(
    ctx: &mut Ctx<'_, V, G>,
    state: &SourceState,
    events: &mut Vec<Event>,
) -> Acted {
    let SourceState::GivingBack { m, hook, why } = state else {
        return Ok(());
    };
    let (vm, plan) = (ctx.vm, ctx.plan);
    let until = Instant::now() + plan.deadlines.giveback;
    let mut report = Vec::new();
    let mut problems = Vec::new();

    let stopped = stop_migration(vm, until, &mut report, &mut problems).await?;
    // Once no migration runs, completed or not: nothing vfmig changed may outlive the run.
    match gate::restore(vm, m).await {
        Ok(()) => {}
        Err(e) if e.is_lost() => return Err(e),
        Err(e) => problems.push(format!("pause-before-switchover could not be put back: {e}")),
    }
    if let Some(state) = stopped {
        if state == MigrationState::Completed {
            ctx.record(
                Phase::Completed,
                None,
                "the migration completed before it could be cancelled",
            );
            events.push(Event::CompletedAnyway);
            return Ok(());
        }
    }
    match vm.set_params(m.params.into()).await {
        Ok(()) => {}
        Err(e) if e.is_lost() => return Err(e),
        Err(e) => problems.push(format!("the migration parameters could not be put back: {e}")),
    }

    let mut replugged = Vec::new();
    let mut lingering = Vec::new();
    for run in &m.vfs {
        let id = &run.vf.id;
        let mut present = vm.device_present(id).await?;
        if present && run.unplug == Unplug::Requested {
            // A device_del cannot be withdrawn: the guest may still eject the VF.
            present = !vm.wait_device_gone(id, LATE_UNPLUG_GRACE.min(left(until))).await?;
            if present {
                report.push(format!(
                    "{id} is still plugged (the guest may yet act on the eject request)"
                ));
                lingering.push(id.clone());
            }
        }
        if !present && plug_back(vm, run, &mut report, &mut problems).await? {
            replugged.push(id.clone());
        }
    }

    if m.guest {
        let silent = why.guest_silent();
        let wait = |until| {
            if silent {
                SILENT_GUEST_WAIT.min(left(until))
            } else {
                left(until)
            }
        };
        if *hook != Hook::Off {
            match ctx.guest.stop_dma(wait(until)).await {
                Ok(_) => report.push("DMA hook stopped".into()),
                Err(e) => report.push(format!("{e}: stopping the DMA hook stays queued for it")),
            }
        }
        for run in &m.vfs {
            let mut back = replugged.contains(&run.vf.id);
            let mut answer = ctx.guest.keep(run.vf.mac, run.saved.as_ref(), wait(until)).await;
            if matches!(&answer, Err(e) if e.no_such_interface()) && lingering.contains(&run.vf.id) {
                // The guest let the VF go after the grace: the eject it began cannot be
                // stopped, so it is waited for, to the deadline, and the VF plugged back.
                let id = &run.vf.id;
                if vm.wait_device_gone(id, left(until)).await? {
                    report.push(format!("{id} went once the guest had let it go"));
                    back = plug_back(vm, run, &mut report, &mut problems).await?;
                } else {
                    problems.push(format!(
                        "the guest let {id} go but it was still in the VM at the give-back deadline"
                    ));
                }
                if back {
                    replugged.push(id.clone());
                    answer = ctx.guest.keep(run.vf.mac, run.saved.as_ref(), wait(until)).await;
                }
            }
            match answer {
                Ok(kept) => {
                    if let Some(name) = &kept.saved {
                        let standby = kept
                            .standby_released
                            .as_ref()
                            .map_or(String::new(), |s| format!(", {s} released"));
                        report.push(format!("the guest put {name} back on {}{standby}", run.vf.id));
                    }
                    if !kept.failed.is_empty() {
                        problems.push(format!(
                            "the guest did not put everything back on {}: {}",
                            run.vf.id,
                            kept.failed.join("; ")
                        ));
                    }
                }
                // The VF never left: the guest's state is on it, unless a late save moved it,
                // which the queued keep undoes.
                Err(e) if !back && e.is_silent() => {
                    report.push(format!("{e}: taking back {}'s state stays queued for it", run.vf.id))
                }
                Err(e) => problems.push(format!("the guest did not take its state back onto {}: {e}", run.vf.id)),
            }
        }
    }

    ctx.record(Phase::RolledBack, None, report.join("; "));
    events.push(if problems.is_empty() {
        Event::GaveBack { report, replugged }
    } else {
        Event::GiveBackFailed {
            problem: problems.join("; "),
        }
    });
    Ok(())
}

/// Plugs a VF that is gone back from its spec; whether it is back.
async fn plug_back<V: Vm>(
    vm: &V,
    run: &VfRun,
    report: &mut Vec<String>,
    problems: &mut Vec<String>,
) -> Result<bool, VmError> {
    let id = &run.vf.id;
    let Some(spec) = &run.vf.device else {
        problems.push(format!("{id} is gone and no spec to plug it back was given"));
        return Ok(false);
    };
    match vm.add_device(spec).await {
        Ok(()) => {
            report.push(format!("{id} plugged back"));
            Ok(true)
        }
        Err(e) if e.is_lost() => Err(e),
        Err(e) => {
            problems.push(format!("plugging {id} back failed: {e}"));
            Ok(false)
        }
    }
}

/// Cancels the migration unless it ended, and waits for it to end; how it ended.
async fn stop_migration<V: Vm>(
    vm: &V,
    until: Instant,
    report: &mut Vec<String>,
    problems: &mut Vec<String>,
) -> Result<Option<MigrationState>, VmError> {
    let Some(now) = vm.migration().await? else {
        return Ok(None);
    };
    if now.state.is_finished() {
        return Ok(Some(now.state));
    }
    match vm.cancel_migration().await {
        Ok(()) => report.push("migration cancelled".into()),
        Err(e) if e.is_lost() => return Err(e),
        Err(e) => problems.push(format!("cancelling the migration failed: {e}")),
    }
    loop {
        match vm.migration().await? {
            Some(now) if now.state.is_finished() => return Ok(Some(now.state)),
            None => return Ok(None),
            Some(now) if Instant::now() >= until => {
                problems.push(format!("the migration is still {} after the cancel", now.state));
                return Ok(Some(now.state));
            }
            Some(_) => tokio::time::sleep(CANCEL_POLL).await,
        }
    }
}
