//! The VFs are gone: stop the hook, release the hold, let the migration run to its end through
//! the switch-over gate — and the migration QEMU's own failover drives.

use tokio::time::Instant;

use super::gate;
use super::precopy::ended;
use super::source::{Acted, Ctx};
use super::state::{Gate, Hook, Migrating, Why};
use super::timeline::{Phase, QemuFigures};
use super::transition::Event;
use crate::guest::Guest;
use crate::vm::{Migration, MigrationState, Vm};

/// Whether the migration is still to be started: none runs, or the one QEMU shows failed or
/// was cancelled — an earlier attempt's end, which QEMU shows until the next starts. One that
/// completed is never started again: the VM has left.
async fn to_start<V: Vm>(vm: &V) -> Result<bool, crate::vm::VmError> {
    Ok(vm
        .migration()
        .await?
        .is_none_or(|m| matches!(m.state, MigrationState::Failed | MigrationState::Cancelled)))
}

/// How often the migration is read while it runs to its end.
const COMPLETION_POLL: std::time::Duration = std::time::Duration::from_millis(10);
/// …and when QEMU pauses before its switch-over: the VM waits stopped until a poll sees it.
const GATE_POLL: std::time::Duration = std::time::Duration::from_millis(2);

/// Stops the hook (the driver's unmap-all at removal went through it; nothing is left to
/// track), puts the parameters back, and starts pre-copy if it did not run yet (`start`).
pub(super) async fn release<V: Vm, G: Guest>(
    ctx: &mut Ctx<'_, V, G>,
    m: &Migrating,
    hook: Hook,
    start: bool,
    events: &mut Vec<Event>,
) -> Acted {
    let (vm, plan) = (ctx.vm, ctx.plan);
    if hook == Hook::Tracking {
        // A VM paused for the switch-over (a released run taken up) cannot answer; the
        // destination step stops a hook that migrated enabled.
        let running = match vm.running().await {
            Err(e) if e.is_lost() => return Err(e),
            answer => answer.unwrap_or(false),
        };
        let detail = if running {
            match ctx.guest.stop_dma(plan.deadlines.prepare).await {
                Ok(devices) if devices.is_empty() => {
                    "the hook tracked nothing any more (an earlier run stopped it)".into()
                }
                Ok(devices) => devices
                    .iter()
                    .map(|d| format!("{}: {} pages dirtied in {} DMA calls", d.pci_address, d.pages, d.calls))
                    .collect::<Vec<_>>()
                    .join("; "),
                Err(e) => format!("stopping failed ({e}); the destination step stops the hook"),
            }
        } else {
            "the VM is paused for the switch-over: the destination step stops the hook".into()
        };
        ctx.record(Phase::HookDisabled, None, detail);
        events.push(Event::HookStopped);
    }
    if !start {
        vm.set_params(m.params.into()).await?;
        ctx.record(Phase::Released, None, "original max-bandwidth and downtime-limit");
    } else if to_start(vm).await? {
        gate::arm(vm, m).await?;
        vm.start_migration(&plan.uri).await?;
        ctx.record(Phase::PrecopyStarted, None, "without the VF");
    }
    events.push(Event::Released);
    Ok(())
}

/// Waits for the migration's end, within the completion deadline.
pub(super) async fn complete<V: Vm, G: Guest>(
    ctx: &mut Ctx<'_, V, G>,
    m: &Migrating,
    events: &mut Vec<Event>,
) -> Acted {
    run_to_end(ctx, m, events, "QEMU switched over", |_| Watch::On).await
}

/// What a look at a migration still running finds.
enum Watch {
    On,
    Note(Phase, String),
    GiveUp(Why),
}

/// Waits for the migration's end within the completion deadline, through the switch-over
/// gate, recording `completed` when it completes; `watch` looks at each reading of it while
/// it runs.
async fn run_to_end<V: Vm, G: Guest>(
    ctx: &mut Ctx<'_, V, G>,
    m: &Migrating,
    events: &mut Vec<Event>,
    completed: &str,
    mut watch: impl FnMut(&Migration) -> Watch,
) -> Acted {
    let deadline = ctx.plan.deadlines.completion;
    let until = Instant::now() + deadline;
    let gated = matches!(m.gate, Gate::Pause { .. });
    let poll = if gated { GATE_POLL } else { COMPLETION_POLL };
    // QEMU may still show the pause just after the continue: the gate is passed once.
    let mut continued = false;
    loop {
        let Some(now) = ctx.vm.migration().await? else {
            let error = "no migration runs any more".into();
            events.push(Event::Failed(Why::Hypervisor { error }));
            return Ok(());
        };
        if now.state.is_finished() {
            ctx.timeline().qemu = Some(QemuFigures::of(&now));
            let restored = match gate::restore(ctx.vm, m).await {
                Ok(()) => String::new(),
                Err(e) if e.is_lost() => return Err(e),
                Err(e) => format!("; pause-before-switchover could not be put back: {e}"),
            };
            if now.state == MigrationState::Completed {
                ctx.record(Phase::Completed, Some(&now), format!("{completed}{restored}"));
                events.push(Event::Completed);
            } else {
                events.push(Event::Failed(ended(&now)));
            }
            return Ok(());
        }
        // A pause vfmig did not ask for is for whoever asked to end.
        if gated && now.state == MigrationState::PreSwitchover && !continued {
            if !gate::pass(ctx, m, &now, events).await? {
                return Ok(());
            }
            continued = true;
        }
        match watch(&now) {
            Watch::On => {}
            Watch::Note(phase, detail) => ctx.record(phase, Some(&now), detail),
            Watch::GiveUp(why) => {
                events.push(Event::Failed(why));
                return Ok(());
            }
        }
        if Instant::now() >= until {
            let after_ms = u64::try_from(deadline.as_millis()).unwrap_or(u64::MAX);
            events.push(Event::Failed(Why::CompletionTimeout { after_ms }));
            return Ok(());
        }
        tokio::time::sleep(poll).await;
    }
}

/// A guest whose VFs and virtio-net QEMU pairs for its own failover is left to it: QEMU unplugs
/// the VF at migration set-up and waits for the guest (`wait-unplug`), the guest's net_failover
/// moves traffic to the virtio-net, and the destination re-plugs the VF itself. vfmig adds the
/// deadline QEMU lacks: a guest that never releases the VF has the migration given up instead
/// of stalling it.
pub(super) async fn qemu_failover<V: Vm, G: Guest>(
    ctx: &mut Ctx<'_, V, G>,
    m: &Migrating,
    pair: &str,
    events: &mut Vec<Event>,
) -> Acted {
    let (vm, plan) = (ctx.vm, ctx.plan);
    let ids: Vec<String> = m.vfs.iter().map(|v| v.vf.id.clone()).collect();
    if to_start(vm).await? {
        let detail = format!(
            "VF {} is the primary of QEMU's failover pair with {pair}: QEMU and the guest's net_failover move it",
            ids.join(", ")
        );
        ctx.record(Phase::QemuFailover, None, detail);
        vm.start_migration(&plan.uri).await?;
        ctx.record(Phase::PrecopyStarted, None, "QEMU unplugs the VF first");
    }
    let unplug = plan.deadlines.unplug;
    let mut waiting_since: Option<Instant> = None;
    let watch = |now: &Migration| {
        let waiting = now.state == MigrationState::WaitUnplug;
        match (waiting_since, waiting) {
            (Some(since), false) => {
                waiting_since = None;
                let detail = format!(
                    "the guest released the VF after {} ms in wait-unplug",
                    since.elapsed().as_millis()
                );
                Watch::Note(Phase::Unplugged, detail)
            }
            (None, true) => {
                waiting_since = Some(Instant::now());
                Watch::On
            }
            (Some(since), true) if since.elapsed() > unplug => Watch::GiveUp(Why::UnplugMissed {
                after_ms: u64::try_from(unplug.as_millis()).unwrap_or(u64::MAX),
                plugged: ids.clone(),
            }),
            _ => Watch::On,
        }
    };
    run_to_end(
        ctx,
        m,
        events,
        "QEMU switched over; it re-plugs the VF on the destination",
        watch,
    )
    .await
}
