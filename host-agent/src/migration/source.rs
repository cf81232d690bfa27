//! The source side's run: the state, its journal, and the action each state calls for.
//!
//! A step runs the current state's action, which reports what happened as events; the
//! transition function turns them into the next state, which is journalled before its own
//! action runs. A run taken up from a journal starts from the state it holds and goes on
//! through the same steps. Each action is bounded by the deadline the plan states for it;
//! the operator's cancel ends any action but the give-back, which then puts everything back.

use tokio::sync::watch;
use vfmig_protocol::message::TrackedDevice;

use super::gate;
use super::giveback;
use super::journal::{Journal, RunState};
use super::outcome::{source_outcome, MigrateError};
use super::plan::{Fallback, Plan};
use super::precopy;
use super::release;
use super::state::{Gate, Migrating, SourceState, Vf, Why};
use super::timeline::{Phase, Step, Timeline};
use super::transition::{next, resumed, Event};
use crate::guest::{Guest, Saved};
use crate::vm::{Migration, MigrationState, Vm, VmError};

/// The operator's request to stop, with who made it ("SIGINT", …).
#[derive(Clone)]
pub struct Cancel(watch::Receiver<Option<String>>);

impl Cancel {
    /// A cancel that the returned sender triggers.
    pub fn new() -> (watch::Sender<Option<String>>, Self) {
        let (tx, rx) = watch::channel(None);
        (tx, Self(rx))
    }

    /// A cancel that never comes.
    pub fn never() -> Self {
        Self::new().1
    }

    /// Waits for the cancel; who asked.
    pub async fn requested(&mut self) -> String {
        match self.0.wait_for(Option::is_some).await {
            Ok(by) => by.clone().unwrap_or_default(),
            Err(_) => std::future::pending().await,
        }
    }
}

/// What every action works with.
pub(super) struct Ctx<'a, V, G> {
    pub vm: &'a V,
    pub guest: &'a mut G,
    pub plan: &'a Plan,
    timeline: &'a mut Timeline,
    observe: &'a mut dyn FnMut(&Step),
}

impl<V, G> Ctx<'_, V, G> {
    /// Records a phase in the timeline and shows it.
    pub fn record(&mut self, phase: Phase, migration: Option<&Migration>, detail: impl Into<String>) {
        let step = self.timeline.record(phase, migration, detail);
        (self.observe)(step);
    }

    pub fn timeline(&mut self) -> &mut Timeline {
        self.timeline
    }
}

/// What an action reports: the events, in order; an interruption (the hypervisor's
/// connection lost) after the events it did report.
pub(super) type Acted = Result<(), VmError>;

/// Runs the source side of `plan` to its end; with a journal ([`Plan::journal`]) left by a run
/// that was interrupted, takes that migration up where it stands instead. Returns the saved
/// state of each VF for the destination, or `None` when the VM migrated without saving any.
pub async fn run_source<V: Vm, G: Guest>(
    vm: &V,
    guest: &mut G,
    plan: &Plan,
    timeline: &mut Timeline,
    observe: &mut dyn FnMut(&Step),
    mut cancel: Cancel,
) -> Result<Option<Vec<Saved>>, MigrateError> {
    let ids: Vec<String> = plan.vfs.iter().map(|v| v.id.clone()).collect();
    let loaded = match &plan.journal {
        Some(path) => Journal::load(path, &ids)?,
        None => None,
    };
    let mut ctx = Ctx {
        vm,
        guest,
        plan,
        timeline,
        observe,
    };
    let mut state = match loaded.map(|j| j.state) {
        None => SourceState::Start,
        Some(RunState::Destination(d)) => {
            // The source side finished in an earlier run; the destination step goes on.
            let saved: Vec<Saved> = d.vfs().iter().map(|f| f.saved.clone()).collect();
            ctx.timeline().saved = saved.clone();
            return Ok(Some(saved));
        }
        Some(RunState::Source(s)) => {
            let state = resumed(s.clone());
            let detail = format!(
                "an earlier run stopped in state {}; going on from {}",
                s.name(),
                state.name()
            );
            ctx.record(Phase::Resumed, None, detail);
            state
        }
    };
    while !state.is_terminal() {
        let mut events = Vec::new();
        let acted = if matches!(state, SourceState::GivingBack { .. }) {
            giveback::act(&mut ctx, &state, &mut events).await
        } else {
            // Biased: the action goes as far as it can; the cancel is taken whenever it waits.
            tokio::select! {
                biased;
                acted = act(&mut ctx, &state, &mut events) => acted,
                by = cancel.requested() => {
                    events.push(give_up(&state, Why::Cancelled { by }));
                    Ok(())
                }
            }
        };
        let lost = match acted {
            Ok(()) => None,
            Err(e) if e.is_lost() => Some(e),
            Err(e) => {
                events.push(give_up(&state, Why::Hypervisor { error: e.to_string() }));
                None
            }
        };
        let was_start = matches!(state, SourceState::Start);
        for event in events {
            state = next(state, event)?;
        }
        journal(plan, &ids, &state, was_start)?;
        if let Some(e) = lost {
            return Err(MigrateError::Lost(e.to_string()));
        }
    }
    let outcome = source_outcome(state);
    if let Ok(Some(saved)) = &outcome {
        ctx.timeline().saved = saved.clone();
    }
    outcome
}

/// Gives up from `state`: refused while nothing has changed, given back after.
fn give_up(state: &SourceState, why: Why) -> Event {
    match state {
        SourceState::Start | SourceState::Negotiating { .. } => Event::Refused(why),
        _ => Event::Failed(why),
    }
}

/// Writes the state to the journal. The first write must succeed: without it an interrupted
/// run could not be undone, so nothing is changed yet when it fails. Past it, a failing disk
/// is logged, not fatal: stopping half-way would be worse than going on without a way to
/// resume. A run that ended with the VM settled on the source needs no journal.
fn journal(plan: &Plan, ids: &[String], state: &SourceState, first: bool) -> Result<(), MigrateError> {
    let Some(path) = &plan.journal else { return Ok(()) };
    let written = match state {
        SourceState::Refused { .. } | SourceState::GaveBack { .. } => Journal::remove(path),
        SourceState::Start => Ok(()),
        _ => Journal::new(ids.to_vec(), RunState::Source(state.clone())).save(path),
    };
    match written {
        Err(e) if first => Err(e.into()),
        Err(e) => {
            tracing::error!(error = %e, "journal not written");
            Ok(())
        }
        Ok(()) => Ok(()),
    }
}

/// The action of every state but the give-back.
async fn act<V: Vm, G: Guest>(ctx: &mut Ctx<'_, V, G>, state: &SourceState, events: &mut Vec<Event>) -> Acted {
    match state {
        SourceState::Start => start(ctx, events).await,
        SourceState::Negotiating { fallback, .. } => negotiate(ctx, *fallback, events).await,
        SourceState::Tracking { m, joining } => track(ctx, m, *joining, events).await,
        SourceState::Precopy { m, ours } => precopy::hold(ctx, m, *ours, events).await,
        SourceState::Held { m } => precopy::save(ctx, m, true, events).await,
        SourceState::SavingFirst { m, .. } => precopy::save(ctx, m, false, events).await,
        SourceState::Unplugging { m, before_precopy, .. } => precopy::unplug(ctx, m, *before_precopy, events).await,
        SourceState::Releasing { m, hook, start } => release::release(ctx, m, *hook, *start, events).await,
        SourceState::Completing { m, .. } => release::complete(ctx, m, events).await,
        SourceState::QemuFailover { m, pair } => release::qemu_failover(ctx, m, pair, events).await,
        // The give-back runs outside the cancel; the others are terminal.
        SourceState::GivingBack { .. }
        | SourceState::Completed { .. }
        | SourceState::GaveBack { .. }
        | SourceState::Refused { .. }
        | SourceState::Stuck { .. } => Ok(()),
    }
}

/// Reads the VFs and the parameters, before anything changes.
async fn start<V: Vm, G: Guest>(ctx: &mut Ctx<'_, V, G>, events: &mut Vec<Event>) -> Acted {
    let mut vfs = Vec::new();
    let mut primaries = Vec::new();
    for vf in &ctx.plan.vfs {
        let mac = match ctx.vm.device_mac(&vf.id).await {
            Ok(Some(mac)) => mac,
            Ok(None) => match vf.mac {
                Some(mac) => mac,
                None => {
                    events.push(Event::Refused(Why::NoVfMac { id: vf.id.clone() }));
                    return Ok(());
                }
            },
            Err(e @ VmError::Lost(_)) => return Err(e),
            Err(e) => {
                let (id, error) = (vf.id.clone(), e.to_string());
                events.push(Event::Refused(Why::NoSuchVf { id, error }));
                return Ok(());
            }
        };
        if let Some(pair) = ctx.vm.failover_pair(&vf.id).await? {
            primaries.push((vf.id.clone(), pair));
        }
        vfs.push(Vf {
            id: vf.id.clone(),
            mac,
            device: vf.device.clone(),
        });
    }
    let params = ctx.vm.params().await?;
    let gate = match ctx.vm.switchover_gate().await? {
        Some(was) => Gate::Pause { was },
        None => Gate::None,
    };
    let fallback = ctx.plan.fallback;
    events.push(match primaries.len() {
        0 => Event::Read {
            params,
            gate,
            vfs,
            fallback,
        },
        n if n == vfs.len() => {
            let pair = primaries.swap_remove(0).1;
            Event::QemuFailover { params, vfs, pair }
        }
        _ => Event::Refused(Why::MixedFailover {
            primaries: primaries.into_iter().map(|(id, _)| id).collect(),
        }),
    });
    Ok(())
}

/// The guest agent's hello.
async fn negotiate<V: Vm, G: Guest>(ctx: &mut Ctx<'_, V, G>, fallback: Fallback, events: &mut Vec<Event>) -> Acted {
    match ctx.guest.hello(ctx.plan.deadlines.agent).await {
        Ok(info) => {
            let standby = info.standby.as_deref().unwrap_or("none");
            let owners = match info.nic_owners.as_slice() {
                [] => "none".to_owned(),
                names => names.join(", "),
            };
            ctx.record(
                Phase::Negotiated,
                None,
                format!("{}, standby {standby}, network manager {owners}", info.agent),
            );
            if !info.kernel_hook {
                let detail = format!(
                    "DMA hook unavailable ({} reports no DMA hook installed): the VF is unplugged before pre-copy; its state is saved and restored",
                    info.agent
                );
                ctx.record(Phase::Fallback, None, detail);
            }
            events.push(Event::GuestReady { hook: info.kernel_hook });
        }
        Err(e) => {
            if fallback == Fallback::UnplugFirst {
                let detail = format!("guest agent unusable ({e}): VF unplugged before pre-copy, state not saved");
                ctx.record(Phase::Fallback, None, detail);
            }
            events.push(Event::GuestUnusable { error: e.to_string() });
        }
    }
    Ok(())
}

/// Has the guest's DMA hook track every VF, checked against where the hypervisor shows the
/// guest put each (not the guest's word). Pre-copy may run with the VFs plugged only if it
/// does: their DMA writes are invisible to dirty logging otherwise.
async fn track<V: Vm, G: Guest>(
    ctx: &mut Ctx<'_, V, G>,
    m: &Migrating,
    joining: bool,
    events: &mut Vec<Event>,
) -> Acted {
    // Taken up with QEMU paused before its switch-over and the VFs plugged: the guest, stopped,
    // cannot answer, and the migration must not go on.
    if joining
        && ctx
            .vm
            .migration()
            .await?
            .is_some_and(|now| now.state == MigrationState::PreSwitchover)
    {
        events.push(Event::Failed(gate::paused_plugged(ctx.vm, m).await?));
        return Ok(());
    }
    let until = tokio::time::Instant::now() + ctx.plan.deadlines.prepare;
    let mut tracked = Vec::new();
    let mut asked = false;
    for run in &m.vfs {
        let vf = &run.vf;
        let Some(pci) = ctx.vm.guest_pci_address(&vf.id).await? else {
            let why = format!("the hypervisor does not show where the guest put {}", vf.id);
            return not_tracked(ctx, why, asked, joining, events);
        };
        asked = true;
        let left = until.saturating_duration_since(tokio::time::Instant::now());
        match ctx.guest.track_dma(vf.mac, left).await {
            Ok(devices) if devices.iter().any(|d: &TrackedDevice| d.pci_address == pci) => {
                tracked.push(format!("{pci} (VF {})", vf.id));
            }
            Ok(devices) => {
                let why = format!("the guest did not confirm tracking {pci}: it tracks {devices:?}");
                return not_tracked(ctx, why, asked, joining, events);
            }
            // A guest that does not answer is not asked to take the safe path either.
            Err(e) if e.is_silent() => {
                let (error, silent) = (e.to_string(), true);
                events.push(Event::Failed(Why::Guest {
                    request: "track_dma".into(),
                    error,
                    silent,
                }));
                return Ok(());
            }
            Err(e) => return not_tracked(ctx, e.to_string(), asked, joining, events),
        }
    }
    let still = if joining { "still " } else { "" };
    ctx.record(
        Phase::HookEnabled,
        None,
        format!("vfmig_dirty {still}tracks {}", tracked.join(", ")),
    );
    events.push(Event::Tracked);
    Ok(())
}

/// The hook does not track every VF: a fresh run takes the safe path, a run that joins a
/// running pre-copy gives up (the transition decides; the timeline says which).
fn not_tracked<V, G>(
    ctx: &mut Ctx<'_, V, G>,
    why: String,
    asked: bool,
    joining: bool,
    events: &mut Vec<Event>,
) -> Acted {
    if !joining {
        let detail = format!(
            "DMA hook unavailable ({why}): the VF is unplugged before pre-copy; its state is saved and restored"
        );
        ctx.record(Phase::Fallback, None, detail);
    }
    events.push(Event::NotTracked { why, asked });
    Ok(())
}
