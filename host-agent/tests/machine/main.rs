//! The migration state machine driven through its seams by in-memory fakes of the hypervisor
//! and the guest agent: every path, and a fault at every state of the source run — the
//! hypervisor refusing, the guest agent frozen or killed, the destination killed, the
//! operator cancelling, vfmig-host killed and run again — with and without a standby. Each
//! case asserts what an operator would check afterwards: where the VM runs and with which
//! VFs, where the guest's network state is, the migration parameters, the DMA hook, the
//! journal, the exit status, and how long it took against the stated deadlines (on tokio's
//! paused clock: no root, no QEMU, seconds in all).

mod fakes;

use std::path::PathBuf;
use std::time::Duration;

use fakes::{fresh_spec, mac, vf_spec, FakeGuest, FakeVm, Fault, Net, Shared, Side, World, ORIGINAL, VFS};
use tokio::time::Instant;
use vfmig_host::migration::{
    run_destination, run_source, Cancel, Deadlines, Fallback, FreshVf, Phase, Plan, PlugSpec, Step, Timeline, VfPlan,
};
use vfmig_protocol::message::StandbyRequest;

/// The states of a source run a fault can meet, in the order a migration passes them.
const STATES: [&str; 7] = [
    "negotiating",
    "tracking",
    "precopy",
    "held",
    "unplugging",
    "releasing",
    "completing",
];

struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("vfmig-machine-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch directory");
        Self(dir)
    }

    fn journal(&self) -> PathBuf {
        self.0.join("vm.vfmig-journal")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn plan(vfs: usize, journal: PathBuf, fallback: Fallback) -> Plan {
    Plan {
        vfs: (0..vfs)
            .map(|i| VfPlan {
                id: VFS[i].0.into(),
                device: Some(vf_spec(i)),
                mac: None,
            })
            .collect(),
        uri: "unix:/nowhere".into(),
        fallback,
        deadlines: Deadlines::default(),
        hold_margin: 64 << 20,
        journal: Some(journal),
        standby: StandbyRequest::Auto,
        accept_loss: false,
    }
}

/// How one run of `vfmig-host migrate` ended.
#[derive(Debug, PartialEq)]
enum End {
    /// Its exit status and last message.
    Exit(u8, String),
    /// Killed (the fake's kill switch).
    Killed,
}

/// One run of the command as the binary runs it: the source side, then the destination step
/// with a fresh VF for each VF, one journal for both.
async fn migrate(world: &Shared, plan: &Plan, timeline: &mut Timeline) -> End {
    let src = FakeVm {
        world: world.clone(),
        side: Side::Source,
    };
    let dst = FakeVm {
        world: world.clone(),
        side: Side::Destination,
    };
    let mut guest = FakeGuest { world: world.clone() };
    let (tx, cancel) = Cancel::new();
    world.borrow_mut().cancel = Some(tx);
    // A fresh kill switch per run: a killed run may have left a notification unconsumed.
    let killed = std::rc::Rc::new(tokio::sync::Notify::new());
    world.borrow_mut().killed = killed.clone();
    let ids: Vec<String> = plan.vfs.iter().map(|v| v.id.clone()).collect();
    let journal = plan.journal.clone().expect("a journal");
    let mut quiet = |_: &Step| {};
    let source = tokio::select! {
        s = run_source(&src, &mut guest, plan, timeline, &mut quiet, cancel) => s,
        () = killed.notified() => return End::Killed,
    };
    let saved = match source {
        Ok(Some(saved)) => saved,
        Ok(None) => return End::Exit(0, "migrated without saved state".into()),
        Err(e) => return End::Exit(e.exit_code(), e.to_string()),
    };
    let spec = PlugSpec {
        vfs: saved
            .into_iter()
            .enumerate()
            .map(|(i, saved)| FreshVf {
                id: VFS[i].0.into(),
                device: fresh_spec(i),
                mac: None,
                saved,
            })
            .collect(),
        restore_mac: false,
        attempts: 3,
        deadlines: Deadlines::default(),
    };
    let restored = tokio::select! {
        r = run_destination(&dst, &mut guest, &spec, Some((journal.as_path(), ids.as_slice())), timeline, &mut quiet) => r,
        () = killed.notified() => return End::Killed,
    };
    match restored {
        Ok(reports) if reports.iter().all(|r| r.failed.is_empty() && r.mismatches.is_empty()) => {
            End::Exit(0, "restored".into())
        }
        Ok(reports) => End::Exit(2, format!("{reports:?}")),
        Err(e) => End::Exit(e.exit_code(), e.to_string()),
    }
}

/// The VM runs on the source as it did before: its VFs plugged with their MACs, the guest's
/// state on them (none left on the standby, nothing saved left over), the hook off, the
/// parameters as they were, no migration running, no journal.
fn assert_as_before(world: &Shared, vfs: usize, what: &str) {
    let w = world.borrow();
    assert_eq!(w.guest_side, Side::Source, "{what}: the VM left the source");
    for (i, (id, m, _)) in VFS.iter().take(vfs).enumerate() {
        assert_eq!(w.src.devices.get(*id).map(|d| d.0), Some(mac(m)), "{what}: VF {id}");
        assert_eq!(w.net[&format!("eth{i}")], Net::Vf(mac(m)), "{what}: eth{i}'s state");
    }
    assert!(w.saved.is_empty(), "{what}: saved states left: {:?}", w.saved);
    assert!(
        w.tracking.is_empty(),
        "{what}: the DMA hook still tracks {:?}",
        w.tracking
    );
    assert_eq!(w.src.params, Some(ORIGINAL), "{what}: migration parameters");
    assert!(!w.src.pause, "{what}: pause-before-switchover left on");
    let running = w.src.migration.as_ref().is_some_and(|m| !m.state.is_finished());
    assert!(!running, "{what}: a migration still runs");
    assert!(!w.journal.exists(), "{what}: the journal was left behind");
}

/// The VM runs on the destination with a fresh VF for each, the guest's state on them.
fn assert_migrated(world: &Shared, vfs: usize, what: &str) {
    let w = world.borrow();
    assert_eq!(w.guest_side, Side::Destination, "{what}: the VM did not move");
    for (i, (id, _, fresh)) in VFS.iter().take(vfs).enumerate() {
        assert_eq!(
            w.dst.devices.get(*id).map(|d| d.0),
            Some(mac(fresh)),
            "{what}: fresh VF {id}"
        );
        assert_eq!(w.net[&format!("eth{i}")], Net::Vf(mac(fresh)), "{what}: eth{i}'s state");
    }
    assert!(
        w.tracking.is_empty(),
        "{what}: the DMA hook still tracks {:?}",
        w.tracking
    );
    assert!(
        w.saved.values().all(|s| !s.pending && !s.on_standby),
        "{what}: {:?}",
        w.saved
    );
    assert!(!w.journal.exists(), "{what}: the journal was left behind");
    assert!(!w.src.pause, "{what}: pause-before-switchover left on");
    // The gate let the migration go on once, with no VF in the VM.
    assert_eq!(w.src.continues, [false], "{what}: migrate-continue");
}

#[tokio::test(start_paused = true)]
async fn two_vfs_migrate_and_are_restored_onto_fresh_vfs() {
    for standby in [false, true] {
        let dir = Scratch::new(&format!("happy-{standby}"));
        let world = World::new(2, true, standby, dir.journal());
        let mut timeline = Timeline::new();
        let end = migrate(&world, &plan(2, dir.journal(), Fallback::Refuse), &mut timeline).await;
        assert_eq!(end, End::Exit(0, "restored".into()), "{}", timeline.table());
        assert_migrated(&world, 2, "happy path");
        // The hook tracked both VFs through pre-copy, and both were saved before either left.
        let order: Vec<Phase> = timeline.steps.iter().map(|s| s.phase).collect();
        let at = |p| {
            order
                .iter()
                .position(|&q| q == p)
                .unwrap_or_else(|| panic!("{p:?}\n{}", timeline.table()))
        };
        assert!(at(Phase::HookEnabled) < at(Phase::PrecopyStarted));
        assert!(at(Phase::Held) < at(Phase::StateSaved));
        assert_eq!(order.iter().filter(|&&p| p == Phase::StateSaved).count(), 2);
        assert!(order.iter().rposition(|&p| p == Phase::StateSaved) < Some(at(Phase::UnplugRequested)));
        assert!(at(Phase::Unplugged) < at(Phase::HookDisabled) && at(Phase::HookDisabled) < at(Phase::Released));
        assert!(
            at(Phase::Released) < at(Phase::SwitchoverAllowed) && at(Phase::SwitchoverAllowed) < at(Phase::Completed)
        );
        let allowed = timeline.step(Phase::SwitchoverAllowed).expect("the gate");
        assert!(
            allowed.detail.starts_with("VF vf, vf2 not in the VM"),
            "{}",
            allowed.detail
        );
        assert_eq!(order.iter().filter(|&&p| p == Phase::Restored).count(), 2);
        assert_eq!(order.contains(&Phase::StandbyActive), standby, "{}", timeline.table());
        let w = world.borrow();
        assert!(!w.net.values().any(|n| *n == Net::Standby));
    }
}

#[tokio::test(start_paused = true)]
async fn a_guest_without_the_hook_takes_the_safe_path() {
    let dir = Scratch::new("safe");
    let world = World::new(2, false, false, dir.journal());
    let mut timeline = Timeline::new();
    let end = migrate(&world, &plan(2, dir.journal(), Fallback::Refuse), &mut timeline).await;
    assert_eq!(end, End::Exit(0, "restored".into()), "{}", timeline.table());
    assert_migrated(&world, 2, "safe path");
    let fallback = timeline.step(Phase::Fallback).expect("the timeline says why");
    assert!(fallback.detail.contains("no DMA hook installed"), "{}", fallback.detail);
    assert!(timeline.step(Phase::Held).is_none());
    let order = |p| timeline.steps.iter().position(|s| s.phase == p).expect("reached");
    assert!(order(Phase::Unplugged) < order(Phase::PrecopyStarted));
}

#[tokio::test(start_paused = true)]
async fn a_silent_agent_is_refused_or_unplugged_first_as_the_policy_says() {
    let dir = Scratch::new("silent");
    let world = World::new(2, true, false, dir.journal());
    world.borrow_mut().frozen = true;
    let started = Instant::now();
    let end = migrate(&world, &plan(2, dir.journal(), Fallback::Refuse), &mut Timeline::new()).await;
    let End::Exit(1, message) = end else { panic!("{end:?}") };
    assert!(message.contains("the guest agent cannot be used") && message.contains("nothing was changed"));
    assert_eq!(
        started.elapsed(),
        Deadlines::default().agent,
        "the refusal took the agent deadline, no more"
    );
    world.borrow_mut().thaw();
    assert_as_before(&world, 2, "refused");
    assert!(world.borrow().src.migration.is_none(), "no migration was started");

    let dir = Scratch::new("unplug-first");
    let world = World::new(2, true, false, dir.journal());
    world.borrow_mut().frozen = true;
    let mut timeline = Timeline::new();
    let end = migrate(&world, &plan(2, dir.journal(), Fallback::UnplugFirst), &mut timeline).await;
    assert_eq!(
        end,
        End::Exit(0, "migrated without saved state".into()),
        "{}",
        timeline.table()
    );
    let w = world.borrow();
    assert_eq!(w.guest_side, Side::Destination);
    assert!(w.src.devices.is_empty(), "both VFs were unplugged before pre-copy");
    // The gate applies to the unplug-first path too, and passes.
    assert_eq!(w.src.continues, [false], "migrate-continue once, no VF in the VM");
    assert!(!w.src.pause, "pause-before-switchover put back");
    assert!(
        timeline.step(Phase::SwitchoverAllowed).is_some(),
        "{}",
        timeline.table()
    );
}

/// QEMU reaches its switch-over while pre-copy is held with the VFs plugged: it pauses, vfmig
/// finds them in the VM, cancels there and gives the run up with the VFs kept, saying why.
#[tokio::test(start_paused = true)]
async fn a_vf_still_plugged_at_switchover_stops_the_migration_there() {
    for at in ["precopy", "held", "unplugging"] {
        let dir = Scratch::new(&format!("gate-{at}"));
        let world = World::new(2, true, false, dir.journal());
        world.borrow_mut().fault = Some((Fault::EarlySwitchover, at));
        let mut timeline = Timeline::new();
        let end = migrate(&world, &plan(2, dir.journal(), Fallback::Refuse), &mut timeline).await;
        let End::Exit(1, message) = end else {
            panic!("{at}: {end:?}\n{}", timeline.table())
        };
        assert!(message.contains("still plugged at switchover"), "{at}: {message}");
        assert_as_before(&world, 2, &format!("plugged at switchover, {at}"));
        let w = world.borrow();
        assert!(w.src.continues.is_empty(), "{at}: migrate-continue with a VF plugged");
        assert_eq!(
            w.src.migration.as_ref().map(|m| m.state),
            Some(vfmig_host::vm::MigrationState::Cancelled),
            "{at}"
        );
        assert!(
            timeline.step(Phase::SwitchoverAllowed).is_none(),
            "{}",
            timeline.table()
        );
    }
}

/// A hypervisor without a pause vfmig can hold (libvirt) migrates as before: nothing set,
/// nothing continued, the hold alone keeps the switch-over after the unplug.
#[tokio::test(start_paused = true)]
async fn without_a_gate_the_migration_runs_as_before() {
    let dir = Scratch::new("no-gate");
    let world = World::new(2, true, false, dir.journal());
    world.borrow_mut().no_gate = true;
    let mut timeline = Timeline::new();
    let end = migrate(&world, &plan(2, dir.journal(), Fallback::Refuse), &mut timeline).await;
    assert_eq!(end, End::Exit(0, "restored".into()), "{}", timeline.table());
    let w = world.borrow();
    assert_eq!(w.guest_side, Side::Destination);
    assert!(w.src.continues.is_empty() && !w.src.pause);
    assert!(!w.calls.iter().any(|c| c == "set_switchover_gate"), "{:?}", w.calls);
    assert!(
        timeline.step(Phase::SwitchoverAllowed).is_none(),
        "{}",
        timeline.table()
    );
}

/// vfmig-host killed while QEMU sits paused before its switch-over, and run again: with the
/// VFs gone the run taken up lets it go on; with a VF still plugged it cancels, without
/// asking the stopped guest anything first.
#[tokio::test(start_paused = true)]
async fn a_run_taken_up_at_the_pause_goes_on_or_gives_up_as_the_vfs_say() {
    let dir = Scratch::new("gate-resumed");
    let world = World::new(2, true, false, dir.journal());
    world.borrow_mut().kill_at_pause = true;
    let plan = plan(2, dir.journal(), Fallback::Refuse);
    let mut timeline = Timeline::new();
    assert_eq!(migrate(&world, &plan, &mut timeline).await, End::Killed);
    assert_eq!(world.borrow().journal_state().as_deref(), Some("completing"));
    world.borrow_mut().host_killed = false;
    let end = migrate(&world, &plan, &mut timeline).await;
    assert_eq!(end, End::Exit(0, "restored".into()), "{}", timeline.table());
    assert!(timeline.step(Phase::Resumed).is_some());
    assert_migrated(&world, 2, "taken up at the pause");

    let dir = Scratch::new("gate-resumed-plugged");
    let world = World::new(2, true, false, dir.journal());
    world.borrow_mut().kill_at_pause = true;
    world.borrow_mut().fault = Some((Fault::EarlySwitchover, "held"));
    let plan = self::plan(2, dir.journal(), Fallback::Refuse);
    let mut timeline = Timeline::new();
    assert_eq!(migrate(&world, &plan, &mut timeline).await, End::Killed);
    assert_eq!(world.borrow().journal_state().as_deref(), Some("held"));
    world.borrow_mut().host_killed = false;
    let asked = world.borrow().calls.len();
    let end = migrate(&world, &plan, &mut timeline).await;
    let End::Exit(1, message) = end else {
        panic!("{end:?}\n{}", timeline.table())
    };
    assert!(message.contains("still plugged at switchover"), "{message}");
    assert_as_before(&world, 2, "taken up at the pause, VFs plugged");
    let w = world.borrow();
    assert!(w.src.continues.is_empty());
    let cancelled = w.calls[asked..].iter().position(|c| c == "cancel_migration");
    let tracked = w.calls[asked..].iter().position(|c| c == "track_dma");
    assert!(
        cancelled.is_some() && tracked.is_none_or(|t| Some(t) > cancelled),
        "{:?}",
        &w.calls[asked..]
    );
}

/// A VF the guest never releases: the migration is given up, the other VF is plugged back,
/// and both keep their state on the source.
#[tokio::test(start_paused = true)]
async fn one_vf_that_does_not_unplug_keeps_both_on_the_source() {
    for standby in [false, true] {
        let dir = Scratch::new(&format!("stuck-vf-{standby}"));
        let world = World::new(2, true, standby, dir.journal());
        let mut timeline = Timeline::new();
        world.borrow_mut().src.releasing.insert("vf2".into(), None);
        let end = migrate(&world, &plan(2, dir.journal(), Fallback::Refuse), &mut timeline).await;
        let End::Exit(1, message) = end else {
            panic!("{end:?}\n{}", timeline.table())
        };
        assert!(
            message.contains("was not released within") && message.contains("vf plugged back"),
            "{message}"
        );
        assert_as_before(&world, 2, "one VF stuck");
    }
}

/// A guest whose eject outlasts the unplug deadline and the grace after it: its driver let the
/// VFs go at once, so the give-back waits for them to leave, plugs them back, and the guest
/// takes its state back onto them; the whole within the deadlines.
#[tokio::test(start_paused = true)]
async fn a_slow_eject_is_waited_for_and_the_vfs_plugged_back() {
    let dir = Scratch::new("slow-eject");
    let world = World::new(2, true, false, dir.journal());
    let d = Deadlines::default();
    // Past the unplug deadline and the 10 s grace, within the give-back deadline.
    world.borrow_mut().src.slow_eject = Some(d.unplug + Duration::from_secs(15));
    let mut timeline = Timeline::new();
    let started = Instant::now();
    let end = migrate(&world, &plan(2, dir.journal(), Fallback::Refuse), &mut timeline).await;
    let End::Exit(1, message) = end else {
        panic!("{end:?}\n{}", timeline.table())
    };
    assert!(message.contains("was not released within"), "{message}");
    let back = timeline.step(Phase::RolledBack).expect("given back");
    // vf outlasts the grace; vf2's eject, as slow, ends while vf's grace runs.
    for want in [
        "vf went once the guest had let it go; vf plugged back",
        "vf2 plugged back",
        "the guest put eth0 back on vf",
        "the guest put eth1 back on vf2",
    ] {
        assert!(back.detail.contains(want), "{want}: {}", back.detail);
    }
    assert_as_before(&world, 2, "slow eject");
    assert!(started.elapsed() < d.agent + d.prepare + d.unplug + d.giveback + Duration::from_secs(10));
}

/// What each fault at each state must end in.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    /// Not migrated; the VM as before on the source; exit 1.
    Back,
    /// Migrated and restored; exit 0 (after running the command again where the fault ended
    /// the first run, as an operator would).
    Migrated,
}

fn expected(at: &str, fault: Fault) -> Expect {
    let after_unplug = matches!(at, "unplugging" | "releasing" | "completing");
    match fault {
        // The one refusal the release step tolerates: asking whether the VM runs.
        Fault::HypervisorError if at == "releasing" => Expect::Migrated,
        Fault::HypervisorError | Fault::DestinationKilled | Fault::OperatorCancel => Expect::Back,
        Fault::AgentFrozen if after_unplug => Expect::Migrated,
        Fault::AgentFrozen => Expect::Back,
        // Killed at its next request: a track or a save that goes unanswered gives the
        // migration up; after the unplug nothing it loses matters.
        Fault::AgentKilled if after_unplug => Expect::Migrated,
        Fault::AgentKilled => Expect::Back,
        Fault::HostKilled => Expect::Migrated,
        // Paused before its switch-over with a VF plugged, the migration is cancelled there;
        // once the VFs are gone the gate lets it go on.
        Fault::EarlySwitchover if matches!(at, "releasing" | "completing") => Expect::Migrated,
        Fault::EarlySwitchover => Expect::Back,
    }
}

/// The longest a give-up may take from the fault: the deadline of the step it hit, and the
/// give-back's; with a frozen agent, the step's deadline and a short wait per request.
fn stated_bound(fault: Fault, vfs: usize) -> Duration {
    let d = Deadlines::default();
    let step = d.prepare.max(d.agent).max(d.unplug);
    let slack = Duration::from_secs(1);
    match fault {
        Fault::AgentFrozen => step + Duration::from_secs(2) * (1 + vfs as u32) + slack,
        _ => step + d.giveback + slack,
    }
}

async fn cell(at: &'static str, fault: Fault, standby: bool) -> String {
    let what = format!("{fault:?} at {at}, standby {standby}");
    let dir = Scratch::new(&format!("{fault:?}-{at}-{standby}"));
    let world = World::new(2, true, standby, dir.journal());
    world.borrow_mut().fault = Some((fault, at));
    let plan = plan(2, dir.journal(), Fallback::Refuse);
    let mut timeline = Timeline::new();
    let mut end = migrate(&world, &plan, &mut timeline).await;
    let ended = Instant::now();
    let mut said = Vec::new();
    if end == End::Killed {
        assert!(dir.journal().exists(), "{what}: killed without a journal to take up");
        world.borrow_mut().host_killed = false;
        said.push("killed".to_owned());
        end = migrate(&world, &plan, &mut timeline).await;
        assert!(
            timeline.step(Phase::Resumed).is_some(),
            "{what}: the second run did not take up the first"
        );
    }
    // A frozen agent is woken (SIGCONT): it applies what it was sent meanwhile.
    world.borrow_mut().thaw();
    if let End::Exit(2, message) = &end {
        assert!(dir.journal().exists(), "{what}: exit 2 without a journal: {message}");
        assert!(
            message.contains("saved state"),
            "{what}: exit 2 must say where the state is: {message}"
        );
        said.push("exit 2, run again".to_owned());
        end = migrate(&world, &plan, &mut timeline).await;
    }
    let fault_at = world
        .borrow()
        .fault_at
        .unwrap_or_else(|| panic!("{what}: the fault never armed"));
    match expected(at, fault) {
        Expect::Back => {
            let End::Exit(1, message) = &end else {
                panic!("{what}: {end:?}\n{}", timeline.table())
            };
            assert_as_before(&world, 2, &what);
            let took = ended - fault_at;
            assert!(
                took <= stated_bound(fault, 2),
                "{what}: gave up {took:?} after the fault"
            );
            said.push(format!("back in {took:?}: {message}"));
        }
        Expect::Migrated => {
            assert_eq!(end, End::Exit(0, "restored".into()), "{what}\n{}", timeline.table());
            assert_migrated(&world, 2, &what);
            said.push("migrated".to_owned());
        }
    }
    format!("{what}: {}", said.join("; "))
}

#[tokio::test(start_paused = true)]
async fn a_fault_at_every_state_ends_migrated_or_with_the_vm_as_before() {
    let faults = [
        Fault::HypervisorError,
        Fault::AgentFrozen,
        Fault::AgentKilled,
        Fault::DestinationKilled,
        Fault::OperatorCancel,
        Fault::HostKilled,
        Fault::EarlySwitchover,
    ];
    let mut table = Vec::new();
    for fault in faults {
        for at in STATES {
            for standby in [false, true] {
                table.push(cell(at, fault, standby).await);
            }
        }
    }
    println!("{}", table.join("\n"));
    assert_eq!(table.len(), 98);
}

/// The operator's cancel carries its reason into the message, and a migration that fails
/// after the unplug carries the hypervisor's own words.
#[tokio::test(start_paused = true)]
async fn messages_say_why_in_the_hypervisors_and_the_operators_words() {
    for (fault, words) in [
        (Fault::OperatorCancel, "cancelled by the operator (test)"),
        (Fault::DestinationKilled, "Unable to write to socket: Broken pipe"),
    ] {
        let dir = Scratch::new(&format!("words-{fault:?}"));
        let world = World::new(1, true, false, dir.journal());
        world.borrow_mut().fault = Some((fault, "completing"));
        let end = migrate(&world, &plan(1, dir.journal(), Fallback::Refuse), &mut Timeline::new()).await;
        let End::Exit(1, message) = end else { panic!("{end:?}") };
        assert!(message.contains(words) && message.contains("plugged back"), "{message}");
    }
}

/// vfmig-host killed right after each request that changed something — the hypervisor or the
/// guest acted on it, the journal does not know yet — and run again: every such kill ends
/// with the VM migrated and restored.
#[tokio::test(start_paused = true)]
async fn killed_after_any_change_and_run_again_the_migration_completes() {
    let mut kills = 0;
    for standby in [false, true] {
        for n in 1.. {
            let what = format!("killed after change {n}, standby {standby}");
            let dir = Scratch::new(&format!("effect-{n}-{standby}"));
            let world = World::new(2, true, standby, dir.journal());
            world.borrow_mut().kill_after_effect = Some(n);
            let plan = plan(2, dir.journal(), Fallback::Refuse);
            let mut timeline = Timeline::new();
            let first = migrate(&world, &plan, &mut timeline).await;
            if first != End::Killed {
                assert_eq!(first, End::Exit(0, "restored".into()), "{what}");
                break;
            }
            kills += 1;
            world.borrow_mut().host_killed = false;
            let second = migrate(&world, &plan, &mut timeline).await;
            assert_eq!(second, End::Exit(0, "restored".into()), "{what}\n{}", timeline.table());
            assert_migrated(&world, 2, &what);
        }
    }
    assert!(kills > 20, "only {kills} changes in two migrations");
    println!("{kills} kills, each taken up to a completed migration");
}

/// QEMU shows the last migration's end until the next starts: a migration given up earlier
/// (cancelled, failed) is no reason to give up the next, which migrates.
#[tokio::test(start_paused = true)]
async fn an_earlier_attempts_end_does_not_stop_the_next_migration() {
    for (fault, at) in [
        (Fault::OperatorCancel, "completing"),
        (Fault::DestinationKilled, "held"),
    ] {
        let dir = Scratch::new(&format!("again-{fault:?}"));
        let world = World::new(1, true, false, dir.journal());
        world.borrow_mut().fault = Some((fault, at));
        let plan = plan(1, dir.journal(), Fallback::Refuse);
        let first = migrate(&world, &plan, &mut Timeline::new()).await;
        assert!(matches!(first, End::Exit(1, _)), "{first:?}");
        assert_as_before(&world, 1, "given up");
        world.borrow_mut().revive_destination();
        let mut timeline = Timeline::new();
        let second = migrate(&world, &plan, &mut timeline).await;
        assert_eq!(
            second,
            End::Exit(0, "restored".into()),
            "after {fault:?}\n{}",
            timeline.table()
        );
        assert_migrated(&world, 1, "the next attempt");
    }
}

/// libvirt starts the destination from the source's definition, taken before the unplug, so
/// the destination holds the source's VF under the same id (a "ghost"): it is removed before
/// the fresh VF is plugged, and the fresh VF is what the VM has.
#[tokio::test(start_paused = true)]
async fn a_ghost_of_the_source_vf_on_the_destination_is_removed_first() {
    let dir = Scratch::new("ghost");
    let world = World::new(2, true, false, dir.journal());
    for (i, (id, source_mac, _)) in VFS.iter().enumerate() {
        world
            .borrow_mut()
            .dst
            .devices
            .insert(id.to_string(), (mac(source_mac), format!("0000:0{}:00.0", i + 1)));
    }
    let mut timeline = Timeline::new();
    let end = migrate(&world, &plan(2, dir.journal(), Fallback::Refuse), &mut timeline).await;
    assert_eq!(end, End::Exit(0, "restored".into()), "{}", timeline.table());
    assert_migrated(&world, 2, "with ghosts");
    let removed = timeline.steps.iter().filter(|s| s.phase == Phase::GhostRemoved).count();
    assert_eq!(removed, 2, "{}", timeline.table());
}
