//! The transition functions of both sides, pair by pair: every (state, event) the table
//! lists goes where it says, and every other pair is refused, never guessed.

use vfmig_host::guest::Saved;
use vfmig_host::migration::plan::Fallback;
use vfmig_host::migration::state::{
    DestinationProblem, DestinationState, Fresh, Gate, Hook, Migrating, SourceState, Unplug, Vf, VfRun, Why,
};
use vfmig_host::migration::transition::{
    next, next_destination, resumed, resumed_destination, DestinationEvent, Event,
};
use vfmig_host::vm::{MigrationState, Params};
fn m() -> Migrating {
    Migrating {
        params: Params {
            max_bandwidth: 1 << 27,
            downtime_limit: 300,
        },
        gate: Gate::Pause { was: false },
        vfs: vec![VfRun {
            vf: Vf {
                id: "vf".into(),
                mac: "52:54:00:10:00:01".parse().expect("a MAC"),
                device: None,
            },
            saved: None,
            unplug: Unplug::Plugged,
        }],
        guest: false,
    }
}

fn why() -> Why {
    Why::Cancelled { by: "test".into() }
}

/// One state of each kind, by a label (the variant's name, or more where its data
/// decides the transition).
fn states() -> Vec<(&'static str, SourceState)> {
    let gone = || {
        let mut m = m();
        m.vfs[0].unplug = Unplug::Gone;
        m
    };
    vec![
        ("start", SourceState::Start),
        (
            "negotiating/refuse",
            SourceState::Negotiating {
                m: m(),
                fallback: Fallback::Refuse,
            },
        ),
        (
            "negotiating/unplug-first",
            SourceState::Negotiating {
                m: m(),
                fallback: Fallback::UnplugFirst,
            },
        ),
        ("tracking", SourceState::Tracking { m: m(), joining: false }),
        ("tracking/joining", SourceState::Tracking { m: m(), joining: true }),
        ("precopy", SourceState::Precopy { m: m(), ours: false }),
        ("held", SourceState::Held { m: m() }),
        (
            "saving-first",
            SourceState::SavingFirst {
                m: m(),
                hook: Hook::Off,
            },
        ),
        (
            "unplugging",
            SourceState::Unplugging {
                m: m(),
                hook: Hook::Tracking,
                before_precopy: false,
            },
        ),
        (
            "unplugging/gone",
            SourceState::Unplugging {
                m: gone(),
                hook: Hook::Tracking,
                before_precopy: false,
            },
        ),
        (
            "releasing",
            SourceState::Releasing {
                m: gone(),
                hook: Hook::Tracking,
                start: false,
            },
        ),
        (
            "completing",
            SourceState::Completing {
                m: gone(),
                hook: Hook::Stopped,
            },
        ),
        (
            "qemu-failover",
            SourceState::QemuFailover {
                m: m(),
                pair: "standby".into(),
            },
        ),
        ("completed", SourceState::Completed { vfs: m().vfs }),
        (
            "giving-back",
            SourceState::GivingBack {
                m: m(),
                hook: Hook::Tracking,
                why: why(),
            },
        ),
        (
            "gave-back",
            SourceState::GaveBack {
                why: why(),
                report: vec![],
                replugged: vec![],
            },
        ),
        ("refused", SourceState::Refused { why: why() }),
        (
            "stuck",
            SourceState::Stuck {
                m: m(),
                hook: Hook::Tracking,
                why: why(),
                problem: "test".into(),
            },
        ),
    ]
}

fn events() -> Vec<(&'static str, Event)> {
    let params = m().params;
    let saved = Saved {
        interface: "eth0".into(),
        digest: format!("sha256:{}", "0".repeat(64)),
        location: None,
    };
    vec![
        (
            "read",
            Event::Read {
                params,
                gate: Gate::Pause { was: false },
                vfs: vec![m().vfs[0].vf.clone()],
                fallback: Fallback::Refuse,
            },
        ),
        (
            "qemu-failover",
            Event::QemuFailover {
                params,
                vfs: vec![m().vfs[0].vf.clone()],
                pair: "standby".into(),
            },
        ),
        ("refused", Event::Refused(why())),
        ("guest-ready/hook", Event::GuestReady { hook: true }),
        ("guest-ready/no-hook", Event::GuestReady { hook: false }),
        ("guest-unusable", Event::GuestUnusable { error: "test".into() }),
        ("tracked", Event::Tracked),
        (
            "not-tracked",
            Event::NotTracked {
                why: "test".into(),
                asked: true,
            },
        ),
        ("migration-started", Event::MigrationStarted),
        ("held", Event::Held),
        ("vf-saved", Event::VfSaved { index: 0, saved }),
        ("all-saved", Event::AllSaved),
        ("unplug-requested", Event::UnplugRequested { index: 0 }),
        ("vf-gone", Event::VfGone { index: 0 }),
        ("unplugged", Event::Unplugged),
        ("hook-stopped", Event::HookStopped),
        ("released", Event::Released),
        ("completed", Event::Completed),
        ("failed", Event::Failed(why())),
        (
            "gave-back",
            Event::GaveBack {
                report: vec![],
                replugged: vec![],
            },
        ),
        ("give-back-failed", Event::GiveBackFailed { problem: "test".into() }),
        ("completed-anyway", Event::CompletedAnyway),
    ]
}

/// Every transition the source side has: (state, event, next state). Every other pair is
/// refused.
const TABLE: &[(&str, &str, &str)] = &[
    ("start", "read", "negotiating"),
    ("start", "qemu-failover", "qemu-failover"),
    ("start", "refused", "refused"),
    ("negotiating/refuse", "refused", "refused"),
    ("negotiating/unplug-first", "refused", "refused"),
    ("negotiating/refuse", "guest-ready/hook", "tracking"),
    ("negotiating/unplug-first", "guest-ready/hook", "tracking"),
    ("negotiating/refuse", "guest-ready/no-hook", "saving-first"),
    ("negotiating/unplug-first", "guest-ready/no-hook", "saving-first"),
    ("negotiating/refuse", "guest-unusable", "refused"),
    ("negotiating/unplug-first", "guest-unusable", "unplugging"),
    ("negotiating/refuse", "failed", "giving-back"),
    ("negotiating/unplug-first", "failed", "giving-back"),
    ("tracking", "tracked", "precopy"),
    ("tracking/joining", "tracked", "precopy"),
    ("tracking", "not-tracked", "saving-first"),
    ("tracking/joining", "not-tracked", "giving-back"),
    ("tracking", "failed", "giving-back"),
    ("tracking/joining", "failed", "giving-back"),
    ("precopy", "migration-started", "precopy"),
    ("precopy", "held", "held"),
    ("precopy", "failed", "giving-back"),
    ("held", "vf-saved", "held"),
    ("held", "all-saved", "unplugging"),
    ("held", "failed", "giving-back"),
    ("saving-first", "vf-saved", "saving-first"),
    ("saving-first", "all-saved", "unplugging"),
    ("saving-first", "failed", "giving-back"),
    ("unplugging", "unplug-requested", "unplugging"),
    ("unplugging", "vf-gone", "unplugging"),
    ("unplugging", "failed", "giving-back"),
    ("unplugging/gone", "unplug-requested", "unplugging"),
    ("unplugging/gone", "vf-gone", "unplugging"),
    ("unplugging/gone", "unplugged", "releasing"),
    ("unplugging/gone", "failed", "giving-back"),
    ("releasing", "hook-stopped", "releasing"),
    ("releasing", "released", "completing"),
    ("releasing", "failed", "giving-back"),
    ("completing", "completed", "completed"),
    ("completing", "failed", "giving-back"),
    ("qemu-failover", "completed", "completed"),
    ("qemu-failover", "failed", "giving-back"),
    ("giving-back", "gave-back", "gave-back"),
    ("giving-back", "give-back-failed", "stuck"),
    ("giving-back", "completed-anyway", "completed"),
];

#[test]
fn every_pair_of_state_and_event_is_in_the_table_or_refused() {
    let mut used = 0;
    for (s, state) in states() {
        for (e, event) in events() {
            let want = TABLE.iter().find(|(ts, te, _)| *ts == s && *te == e).map(|t| t.2);
            match (next(state.clone(), event), want) {
                (Ok(got), Some(want)) => {
                    assert_eq!(got.name(), want, "{s} on {e}");
                    used += 1;
                }
                (Err(err), None) => {
                    assert_eq!((err.from, err.event), (state.name(), e.split('/').next().unwrap_or(e)))
                }
                (got, want) => panic!("{s} on {e}: got {got:?}, want {want:?}"),
            }
        }
    }
    assert_eq!(used, TABLE.len(), "every row of the table is reachable");
}

#[test]
fn a_failure_keeps_what_the_give_back_needs() {
    let mut saved = m();
    saved.vfs[0].saved = Some(Saved {
        interface: "eth0".into(),
        digest: format!("sha256:{}", "1".repeat(64)),
        location: None,
    });
    saved.vfs[0].unplug = Unplug::Requested;
    let state = SourceState::Unplugging {
        m: saved.clone(),
        hook: Hook::Tracking,
        before_precopy: false,
    };
    let ended = Why::MigrationEnded {
        state: MigrationState::Failed,
        error: Some("Broken pipe".into()),
    };
    let next = next(state, Event::Failed(ended.clone())).expect("a failure gives back");
    assert_eq!(
        next,
        SourceState::GivingBack {
            m: saved,
            hook: Hook::Tracking,
            why: ended
        }
    );
}

#[test]
fn a_run_taken_up_confirms_the_hook_before_joining_pre_copy_and_retries_a_stuck_give_back() {
    assert_eq!(
        resumed(SourceState::Held { m: m() }),
        SourceState::Tracking { m: m(), joining: true }
    );
    // Joined only if this run may have started the migration: otherwise one that ended is
    // an earlier attempt's.
    assert_eq!(
        resumed(SourceState::Precopy { m: m(), ours: true }),
        SourceState::Tracking { m: m(), joining: true }
    );
    assert_eq!(
        resumed(SourceState::Precopy { m: m(), ours: false }),
        SourceState::Tracking { m: m(), joining: false }
    );
    let stuck = SourceState::Stuck {
        m: m(),
        hook: Hook::Off,
        why: why(),
        problem: "p".into(),
    };
    assert_eq!(resumed(stuck).name(), "giving-back");
    let releasing = SourceState::Releasing {
        m: m(),
        hook: Hook::Stopped,
        start: false,
    };
    assert_eq!(resumed(releasing.clone()), releasing);
}

/// The gate's state as read travels with the run, so the give-back puts the capability back
/// as it was: QEMU's pause for a bare QEMU, none for libvirt. QEMU's own failover is not
/// gated: it waits for the guest to release the primary itself.
#[test]
fn the_gate_as_read_is_carried_into_the_run() {
    for gate in [Gate::Pause { was: true }, Gate::Pause { was: false }, Gate::None] {
        let read = Event::Read {
            params: m().params,
            gate,
            vfs: vec![m().vfs[0].vf.clone()],
            fallback: Fallback::Refuse,
        };
        let negotiating = next(SourceState::Start, read).expect("read");
        assert_eq!(negotiating.into_migrating().map(|m| m.gate), Some(gate));
    }
    let failover = Event::QemuFailover {
        params: m().params,
        vfs: vec![m().vfs[0].vf.clone()],
        pair: "standby".into(),
    };
    let failover = next(SourceState::Start, failover).expect("qemu failover");
    assert_eq!(failover.into_migrating().map(|m| m.gate), Some(Gate::None));
}

/// A VF still in the VM when QEMU paused before its switch-over gives the run up from any
/// state that can meet the pause, keeping what the give-back needs.
#[test]
fn a_vf_plugged_at_switchover_gives_the_run_up() {
    let why = Why::PluggedAtSwitchover {
        plugged: vec!["vf".into()],
    };
    assert_eq!(
        why.to_string(),
        "the VF vf was still plugged at switchover (QEMU paused before it; the migration was cancelled there)"
    );
    for state in [
        SourceState::Precopy { m: m(), ours: true },
        SourceState::Held { m: m() },
        SourceState::Tracking { m: m(), joining: true },
        SourceState::Unplugging {
            m: m(),
            hook: Hook::Tracking,
            before_precopy: false,
        },
        SourceState::Completing {
            m: m(),
            hook: Hook::Stopped,
        },
        SourceState::QemuFailover {
            m: m(),
            pair: "standby".into(),
        },
    ] {
        let hook = state.hook();
        let name = state.name();
        let next = next(state, Event::Failed(why.clone())).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            next,
            SourceState::GivingBack {
                m: m(),
                hook,
                why: why.clone()
            },
            "{name}"
        );
    }
    // A run taken up where QEMU may sit paused goes on from where the gate is checked.
    let completing = SourceState::Completing {
        m: m(),
        hook: Hook::Stopped,
    };
    assert_eq!(resumed(completing.clone()), completing);
}

#[test]
fn an_index_past_the_vfs_is_no_transition() {
    let err = next(SourceState::Held { m: m() }, Event::VfGone { index: 0 }).unwrap_err();
    assert_eq!((err.from, err.event), ("held", "vf-gone"));
    let err = next(
        SourceState::Unplugging {
            m: m(),
            hook: Hook::Off,
            before_precopy: true,
        },
        Event::VfGone { index: 3 },
    )
    .unwrap_err();
    assert_eq!(err.event, "vf-gone");
}

#[test]
fn the_destination_plugs_every_fresh_vf_then_restores_every_one() {
    let fresh = |plugged, restored: bool| Fresh {
        id: "vf".into(),
        device: serde_json::json!({ "id": "vf" }),
        mac: "52:54:00:20:00:02".parse().expect("a MAC"),
        saved: Saved {
            interface: "eth0".into(),
            digest: format!("sha256:{}", "2".repeat(64)),
            location: None,
        },
        plugged,
        restored: restored.then(|| vfmig_protocol::message::Restored {
            interface: "eth0".into(),
            applied: 1,
            unchanged: 0,
            failed: vec![],
            mismatches: vec![],
            duration_ms: 1,
            standby_released: None,
        }),
    };
    let states = [
        (
            "plugging",
            DestinationState::Plugging {
                vfs: vec![fresh(false, false)],
            },
        ),
        (
            "plugging/all",
            DestinationState::Plugging {
                vfs: vec![fresh(true, false)],
            },
        ),
        (
            "restoring",
            DestinationState::Restoring {
                vfs: vec![fresh(true, false)],
            },
        ),
        (
            "restoring/all",
            DestinationState::Restoring {
                vfs: vec![fresh(true, true)],
            },
        ),
        (
            "restored",
            DestinationState::Restored {
                vfs: vec![fresh(true, true)],
            },
        ),
        (
            "stuck",
            DestinationState::Stuck {
                vfs: vec![fresh(true, false)],
                problem: DestinationProblem::RestoreFailed { error: "e".into() },
            },
        ),
    ];
    let report = fresh(true, true).restored.expect("a report");
    let events = [
        ("vf-plugged", DestinationEvent::VfPlugged { index: 0 }),
        ("all-plugged", DestinationEvent::AllPlugged),
        ("vf-restored", DestinationEvent::VfRestored { index: 0, report }),
        ("all-restored", DestinationEvent::AllRestored),
        (
            "failed",
            DestinationEvent::Failed(DestinationProblem::PlugFailed {
                attempts: 3,
                error: "e".into(),
            }),
        ),
    ];
    let table = [
        ("plugging", "vf-plugged", "plugging"),
        ("plugging", "failed", "stuck"),
        ("plugging/all", "vf-plugged", "plugging"),
        ("plugging/all", "all-plugged", "restoring"),
        ("plugging/all", "failed", "stuck"),
        ("restoring", "vf-restored", "restoring"),
        ("restoring", "failed", "stuck"),
        ("restoring/all", "vf-restored", "restoring"),
        ("restoring/all", "all-restored", "restored"),
        ("restoring/all", "failed", "stuck"),
    ];
    for (s, state) in &states {
        for (e, event) in &events {
            let want = table.iter().find(|(ts, te, _)| ts == s && te == e).map(|t| t.2);
            match (next_destination(state.clone(), event.clone()), want) {
                (Ok(got), Some(want)) => assert_eq!(got.name(), want, "{s} on {e}"),
                (Err(_), None) => {}
                (got, want) => panic!("{s} on {e}: got {got:?}, want {want:?}"),
            }
        }
    }
    let stuck = states[5].1.clone();
    assert_eq!(resumed_destination(stuck).name(), "plugging");
}
