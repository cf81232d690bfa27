//! Pre-copy with the VFs plugged, the hold, the save and the unplug.
//!
//! **The hook is the condition.** A VF's DMA writes are invisible to dirty logging, so
//! pre-copy with the VFs plugged is only sound while the guest's hook dirties those pages
//! (see [`super::source`]'s tracking step).
//!
//! **The hold.** QEMU switches over as soon as the unsent remainder is below its threshold
//! (bandwidth × downtime-limit) — and, with a threshold of 0, as soon as a pass drains. A low
//! downtime-limit therefore does not hold an idle guest: measured on the test bed, a 512 MiB
//! guest with downtime-limit 1 ms completed on its own 1.5 s into pre-copy, VF still plugged.
//! (`switchover-ack` only waits for devices that ask, i.e. VFIO migration.) What holds: throttling `max-bandwidth` to [`HOLD_BANDWIDTH`] while a
//! large remainder is left, so the remainder drains slowly, and watching it while the guest
//! saves its state and the VFs are unplugged: should it fall under [`HOLD_FLOOR`] first, the
//! migration is given up with the VFs kept. The threshold is QEMU's *measured* bandwidth times
//! downtime-limit, so with the default 300 ms and full-speed pre-copy it can exceed the hold
//! margin's remainder, and QEMU may switch over before the throttle bites (seen once in the
//! demo: held at 16.5 MiB, switched over at once). So pre-copy also runs with downtime-limit
//! [`HOLD_DOWNTIME_MS`] while the VFs are plugged: then QEMU switches over only once the
//! remainder is all but gone. Once the VFs are gone the original parameters come back and
//! pre-copy finishes at full speed. The hold makes a switch-over with a VF plugged unlikely;
//! the gate ([`super::gate`]) forbids it: should QEMU reach its switch-over while the hold
//! holds, it pauses there, and the migration is given up with the VFs kept.

use std::time::Duration;

use tokio::time::Instant;

use super::gate;
use super::source::{Acted, Ctx};
use super::state::{Migrating, Unplug, Why};
use super::timeline::Phase;
use super::transition::Event;
use crate::guest::{Guest, Saved};
use crate::vm::{Migration, MigrationState, ParamsChange, Vm, VmError};

/// `max-bandwidth` while holding. QEMU enforces it per 100 ms window as `bandwidth / 10`,
/// and a window limit of 0 means *unlimited*: 1 B/s would disable the limit (measured: the
/// migration then switched over at once, VF plugged).
pub const HOLD_BANDWIDTH: u64 = 4096;

/// `downtime-limit` (ms) while the VFs are plugged, so QEMU's switchover threshold stays near
/// zero however fast pre-copy runs.
pub const HOLD_DOWNTIME_MS: u64 = 1;

/// The throttle slows the remainder's drain but does not stop it: measured on the test bed,
/// a held remainder still fell by some 47 MB/s. So the hold is watched while the guest saves
/// and the VFs are unplugged, and if the remainder falls under this floor first, the migration
/// is given up with the VFs kept, long before QEMU could switch over.
pub const HOLD_FLOOR: u64 = 8 << 20;
const HOLD_POLL: Duration = Duration::from_millis(5);
/// How often pre-copy's remainder is read on the way to the margin.
const PRECOPY_POLL: Duration = Duration::from_millis(2);

/// Why a migration that ended on its own is given up.
pub(super) fn ended(m: &Migration) -> Why {
    Why::MigrationEnded {
        state: m.state,
        error: m.error.clone(),
    }
}

/// The VFs as the timeline names them.
fn listed(m: &Migrating) -> String {
    let vfs: Vec<String> = m.vfs.iter().map(|v| format!("{} ({})", v.vf.id, v.vf.mac)).collect();
    format!("VF {}", vfs.join(", "))
}

/// Starts pre-copy with the VFs plugged (or joins the one running), watches it until its
/// remainder is under the margin, then holds it. A migration that failed or was cancelled is
/// this run's only if `ours`: QEMU shows an earlier one's end until the next starts.
pub(super) async fn hold<V: Vm, G: Guest>(
    ctx: &mut Ctx<'_, V, G>,
    m: &Migrating,
    ours: bool,
    events: &mut Vec<Event>,
) -> Acted {
    let (vm, plan) = (ctx.vm, ctx.plan);
    let held = ParamsChange {
        max_bandwidth: Some(HOLD_BANDWIDTH),
        downtime_limit: Some(HOLD_DOWNTIME_MS),
    };
    // Taken up, a run does not know how far pre-copy got: it holds at once, and lets pre-copy
    // go on at full speed only once it has seen a remainder above the margin.
    let mut throttled = match vm.migration().await? {
        Some(running) if !running.state.is_finished() => {
            vm.set_params(held).await?;
            true
        }
        Some(ended_here) if ours || ended_here.state == MigrationState::Completed => {
            events.push(Event::Failed(ended(&ended_here)));
            return Ok(());
        }
        _ => {
            vm.set_params(ParamsChange {
                downtime_limit: Some(HOLD_DOWNTIME_MS),
                ..Default::default()
            })
            .await?;
            gate::arm(vm, m).await?;
            vm.start_migration(&plan.uri).await?;
            events.push(Event::MigrationStarted);
            ctx.record(Phase::PrecopyStarted, None, format!("{} still plugged", listed(m)));
            false
        }
    };
    let at = loop {
        let Some(now) = vm.migration().await? else {
            let error = "the migration vanished from the hypervisor".into();
            events.push(Event::Failed(Why::Hypervisor { error }));
            return Ok(());
        };
        if now.state.is_finished() {
            events.push(Event::Failed(ended(&now)));
            return Ok(());
        }
        if now.state == MigrationState::PreSwitchover {
            events.push(Event::Failed(gate::paused_plugged(vm, m).await?));
            return Ok(());
        }
        if let Some(ram) = now.ram.as_ref().filter(|r| r.total > 0) {
            if ram.remaining < plan.hold_margin.min(ram.total / 4) {
                break now;
            }
            if throttled {
                vm.set_params(ParamsChange {
                    max_bandwidth: Some(m.params.max_bandwidth),
                    downtime_limit: Some(HOLD_DOWNTIME_MS),
                })
                .await?;
                throttled = false;
            }
        }
        tokio::time::sleep(PRECOPY_POLL).await;
    };
    if !throttled {
        vm.set_params(held).await?;
    }
    let detail = format!("max-bandwidth {HOLD_BANDWIDTH} B/s until the VF is gone");
    ctx.record(Phase::Held, Some(&at), detail);
    events.push(Event::Held);
    Ok(())
}

/// Returns once a held migration's remainder is under [`HOLD_FLOOR`], it paused before its
/// switch-over, or it ended: why the hold broke.
async fn hold_broken<V: Vm>(vm: &V, m: &Migrating) -> Result<Why, VmError> {
    loop {
        if let Some(now) = vm.migration().await? {
            if now.state.is_finished() {
                return Ok(ended(&now));
            }
            if now.state == MigrationState::PreSwitchover {
                return gate::paused_plugged(vm, m).await;
            }
            if let Some(ram) = now.ram.as_ref().filter(|r| r.remaining < HOLD_FLOOR) {
                return Ok(Why::HoldLeaked {
                    remaining: ram.remaining,
                });
            }
        }
        tokio::time::sleep(HOLD_POLL).await;
    }
}

/// Waits for the hold to break, or forever when no pre-copy runs (`held` false).
async fn watch_hold<V: Vm>(vm: &V, m: &Migrating, held: bool) -> Result<Why, VmError> {
    if held {
        hold_broken(vm, m).await
    } else {
        std::future::pending().await
    }
}

/// The guest saves every VF's state, within the prepare deadline all told; `held`: pre-copy
/// runs held and is watched meanwhile.
pub(super) async fn save<V: Vm, G: Guest>(
    ctx: &mut Ctx<'_, V, G>,
    m: &Migrating,
    held: bool,
    events: &mut Vec<Event>,
) -> Acted {
    let (vm, plan) = (ctx.vm, ctx.plan);
    let until = Instant::now() + plan.deadlines.prepare;
    for (index, run) in m.vfs.iter().enumerate().filter(|(_, r)| r.saved.is_none()) {
        let left = until.saturating_duration_since(Instant::now());
        let answer = tokio::select! {
            answer = ctx.guest.save(run.vf.mac, &plan.standby, plan.accept_loss, plan.deadlines.unplug, left) => answer,
            why = watch_hold(vm, m, held) => {
                events.push(Event::Failed(why?));
                return Ok(());
            }
        };
        let saved = match answer {
            Ok(saved) => saved,
            Err(e) => {
                let (error, silent) = (e.to_string(), e.is_silent());
                events.push(Event::Failed(Why::Guest {
                    request: "save".into(),
                    error,
                    silent,
                }));
                return Ok(());
            }
        };
        let now = vm.migration().await?;
        let digest = saved.digest.get(..19).unwrap_or(&saved.digest);
        let mut detail = format!(
            "{}: {} addresses, {} routes, {} neighbours, {digest}",
            saved.interface, saved.addresses, saved.routes, saved.neighbours
        );
        if !saved.lost.is_empty() {
            detail += &format!("; accepted as lost: {}", saved.lost.join("; "));
        }
        ctx.record(Phase::StateSaved, now.as_ref(), detail);
        if let Some(standby) = &saved.standby {
            let detail = format!(
                "{standby} carries {}'s addresses and routes until the fresh VF",
                saved.interface
            );
            ctx.record(Phase::StandbyActive, None, detail);
        }
        events.push(Event::VfSaved {
            index,
            saved: Saved::of(&saved),
        });
    }
    events.push(Event::AllSaved);
    Ok(())
}

/// Unplugs every VF and waits until the guest released each, within the unplug deadline all
/// told; with pre-copy held (`before_precopy` false) the hold is watched meanwhile.
pub(super) async fn unplug<V: Vm, G: Guest>(
    ctx: &mut Ctx<'_, V, G>,
    m: &Migrating,
    before_precopy: bool,
    events: &mut Vec<Event>,
) -> Acted {
    let vm = ctx.vm;
    let deadline = ctx.plan.deadlines.unplug;
    let until = Instant::now() + deadline;
    let mut asked = Vec::new();
    for (index, run) in m.vfs.iter().enumerate().filter(|(_, r)| r.unplug != Unplug::Gone) {
        match vm.remove_device(&run.vf.id).await {
            Ok(()) => {
                events.push(Event::UnplugRequested { index });
                asked.push(index);
            }
            Err(e @ VmError::Lost(_)) => return Err(e),
            Err(e) => {
                let (id, error) = (run.vf.id.clone(), e.to_string());
                events.push(Event::Failed(Why::UnplugRefused { id, error }));
                return Ok(());
            }
        }
    }
    let ids: Vec<&str> = asked.iter().map(|&i| m.vfs[i].vf.id.as_str()).collect();
    ctx.record(Phase::UnplugRequested, None, format!("device_del {}", ids.join(", ")));
    let mut plugged = Vec::new();
    for index in asked {
        let id = &m.vfs[index].vf.id;
        let left = until.saturating_duration_since(Instant::now());
        let gone = tokio::select! {
            gone = vm.wait_device_gone(id, left) => gone?,
            why = watch_hold(vm, m, !before_precopy) => {
                events.push(Event::Failed(why?));
                return Ok(());
            }
        };
        if gone {
            events.push(Event::VfGone { index });
        } else {
            plugged.push(id.clone());
        }
    }
    if !plugged.is_empty() {
        let after_ms = u64::try_from(deadline.as_millis()).unwrap_or(u64::MAX);
        events.push(Event::Failed(Why::UnplugMissed { after_ms, plugged }));
        return Ok(());
    }
    let now = vm.migration().await?;
    let detail = if before_precopy {
        "DEVICE_DELETED, before pre-copy"
    } else {
        "DEVICE_DELETED"
    };
    ctx.record(Phase::Unplugged, now.as_ref(), detail);
    events.push(Event::Unplugged);
    Ok(())
}
