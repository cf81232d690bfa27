//! In-memory stand-ins for both seams, over one simulated world: a source and a destination
//! hypervisor, and a guest that runs on one of them. The guest's network state is modelled
//! only as far as a user would check it: for each interface, whether its state sits on a VF
//! (which MAC), on the standby, or nowhere.
//!
//! Faults are armed when the run's journal first holds a given state (read at every call, as
//! a kill -9 or a frozen agent would meet the run), and fire at the next call they apply to.
//! Time is tokio's paused clock: deadlines are measured, not slept.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use vfmig_host::guest::{Guest, GuestError, GuestInfo, Kept, Saved};
use vfmig_host::migration::precopy::HOLD_BANDWIDTH;
use vfmig_host::vm::{Migration, MigrationState, Params, ParamsChange, Ram, Vm, VmError};
use vfmig_protocol::message::{Restored, StandbyRequest, StateSaved, TrackedDevice};
use vfmig_protocol::{ErrorCode, MacAddr};

pub const ORIGINAL: Params = Params {
    max_bandwidth: 134_217_728,
    downtime_limit: 300,
};
pub const TOTAL: u64 = 1 << 30;
/// Pre-copy sends this much per poll at full speed (none while held).
const STEP: u64 = 200 << 20;
/// What a guest request takes, and a VF's release after device_del.
const GUEST_LATENCY: Duration = Duration::from_millis(5);
const RELEASE: Duration = Duration::from_millis(100);
pub const STANDBY: &str = "sb0";
const NO_SUCH_INTERFACE: &str = "no such interface";

pub fn mac(s: &str) -> MacAddr {
    s.parse().expect("a constant MAC")
}

/// The VFs of the simulated VM: id, source MAC, fresh MAC on the destination.
pub const VFS: [(&str, &str, &str); 2] = [
    ("vf", "52:54:00:10:00:01", "52:54:00:20:00:02"),
    ("vf2", "52:54:00:10:00:03", "52:54:00:20:00:04"),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Source,
    Destination,
}

/// Where an interface's network state is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Net {
    Vf(MacAddr),
    Standby,
    Nowhere,
}

#[derive(Clone, Debug)]
pub struct Mig {
    pub state: MigrationState,
    pub remaining: u64,
    pub error: Option<String>,
    /// Once all is sent, the switch-over takes a moment (a cancel can still win it).
    pub switchover: Option<Instant>,
    /// `migrate-continue` let it past its pause before switch-over.
    pub continued: bool,
}

/// The switch-over: from the last byte sent to "completed".
const SWITCHOVER: Duration = Duration::from_millis(50);

#[derive(Default)]
pub struct Hv {
    /// Present devices: id → (MAC, guest PCI address).
    pub devices: BTreeMap<String, (MacAddr, String)>,
    /// Devices whose unplug was requested, and when the guest lets go (never: `None`).
    pub releasing: BTreeMap<String, Option<Instant>>,
    /// A slow eject: the guest's driver lets a device go as soon as its unplug is requested,
    /// the device leaves this long after.
    pub slow_eject: Option<Duration>,
    pub migration: Option<Mig>,
    pub params: Option<Params>,
    pub slots: u32,
    /// `pause-before-switchover`.
    pub pause: bool,
    /// `migrate-continue` calls, and whether any VF of the VM was present at each.
    pub continues: Vec<bool>,
}

impl Hv {
    /// As QEMU: `request` is refused while a migration runs (a second `migrate`, or a
    /// capability change).
    fn idle(&self, request: &str) -> Result<(), VmError> {
        if self.migration.as_ref().is_some_and(|m| !m.state.is_finished()) {
            return Err(VmError::Refused {
                request: request.into(),
                error: "There's a migration process in progress".into(),
            });
        }
        Ok(())
    }
}

/// A state the guest saved: under the interface's name.
#[derive(Clone, Debug)]
pub struct SavedRec {
    pub mac: MacAddr,
    pub digest: String,
    /// Awaiting its restore (the agent's pending record).
    pub pending: bool,
    pub on_standby: bool,
}

/// A guest request, as a frozen agent queues it.
#[derive(Clone, Debug)]
enum Request {
    Track(MacAddr),
    Stop,
    Save(MacAddr, bool),
    Keep(MacAddr, Option<Saved>),
    Restore(Saved, MacAddr),
}

/// Faults a test arms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The hypervisor refuses the next request (its own words in the error).
    HypervisorError,
    /// The guest agent stops answering (SIGSTOP) until the test thaws it; what it is sent
    /// meanwhile it applies, in order, when thawed.
    AgentFrozen,
    /// The agent is killed while it handles its next request (after acting on it), and is
    /// back right after.
    AgentKilled,
    /// The destination dies: the migration fails.
    DestinationKilled,
    /// The operator cancels.
    OperatorCancel,
    /// vfmig-host is killed (the test runs it again).
    HostKilled,
    /// QEMU switches over at once, throttle or not (its threshold met early, as once seen).
    EarlySwitchover,
}

pub struct World {
    pub src: Hv,
    pub dst: Hv,
    pub guest_side: Side,
    pub hook_installed: bool,
    pub standby_nic: bool,
    pub tracking: BTreeSet<String>,
    pub saved: BTreeMap<String, SavedRec>,
    pub net: BTreeMap<String, Net>,
    pub frozen: bool,
    queued: Vec<Request>,
    kill_next_request: bool,
    destination_dead: bool,
    pub journal: PathBuf,
    /// The fault, and the journal state that arms it.
    pub fault: Option<(Fault, &'static str)>,
    armed: bool,
    pub fault_at: Option<Instant>,
    /// vfmig-host is dead: every call hangs, and this is notified.
    pub host_killed: bool,
    /// Kill vfmig-host right after the n-th request that changes something has taken effect,
    /// before it hears the answer.
    pub kill_after_effect: Option<usize>,
    effects: usize,
    pub killed: Rc<Notify>,
    pub cancel: Option<watch::Sender<Option<String>>>,
    pub calls: Vec<String>,
    early_switchover: bool,
    /// Kill vfmig-host when it first sees QEMU paused before its switch-over.
    pub kill_at_pause: bool,
    /// The hypervisor offers no pause vfmig can hold (libvirt).
    pub no_gate: bool,
}

pub type Shared = Rc<RefCell<World>>;

impl World {
    /// A VM with `vfs` VFs, its guest agent with or without the DMA hook and a standby NIC.
    pub fn new(vfs: usize, hook: bool, standby: bool, journal: PathBuf) -> Shared {
        let mut src = Hv {
            params: Some(ORIGINAL),
            ..Hv::default()
        };
        let mut net = BTreeMap::new();
        for (i, (id, m, _)) in VFS.iter().take(vfs).enumerate() {
            src.devices
                .insert(id.to_string(), (mac(m), format!("0000:0{}:00.0", i + 1)));
            net.insert(format!("eth{i}"), Net::Vf(mac(m)));
        }
        src.slots = vfs as u32;
        let dst = Hv {
            params: Some(ORIGINAL),
            ..Hv::default()
        };
        Rc::new(RefCell::new(World {
            src,
            dst,
            guest_side: Side::Source,
            hook_installed: hook,
            standby_nic: standby,
            tracking: BTreeSet::new(),
            saved: BTreeMap::new(),
            net,
            frozen: false,
            queued: Vec::new(),
            kill_next_request: false,
            destination_dead: false,
            journal,
            fault: None,
            armed: false,
            fault_at: None,
            host_killed: false,
            kill_after_effect: None,
            effects: 0,
            killed: Rc::new(Notify::new()),
            cancel: None,
            calls: Vec::new(),
            early_switchover: false,
            kill_at_pause: false,
            no_gate: false,
        }))
    }

    fn hv(&mut self, side: Side) -> &mut Hv {
        match side {
            Side::Source => &mut self.src,
            Side::Destination => &mut self.dst,
        }
    }

    /// The state the journal holds now, by name.
    pub fn journal_state(&self) -> Option<String> {
        let text = std::fs::read_to_string(&self.journal).ok()?;
        let value: Value = serde_json::from_str(&text).ok()?;
        let side = value["state"].as_object()?.values().next()?;
        match side {
            Value::String(unit) => Some(unit.clone()),
            Value::Object(o) => o.keys().next().cloned(),
            _ => None,
        }
    }

    /// Arms the fault once the journal holds its state; a host kill and an operator cancel
    /// take effect at once.
    fn arm(&mut self) {
        let Some((fault, at)) = self.fault else { return };
        if self.armed || self.journal_state().as_deref() != Some(at) {
            return;
        }
        self.armed = true;
        self.fault_at = Some(Instant::now());
        match fault {
            Fault::AgentFrozen => self.frozen = true,
            Fault::AgentKilled => self.kill_next_request = true,
            Fault::DestinationKilled => self.destination_dead = true,
            Fault::HostKilled => self.host_killed = true,
            Fault::OperatorCancel => {
                if let Some(tx) = &self.cancel {
                    let _ = tx.send(Some("the operator (test)".into()));
                }
            }
            Fault::EarlySwitchover => self.early_switchover = true,
            Fault::HypervisorError => {}
        }
    }

    /// Takes an armed one-shot hypervisor error.
    fn hypervisor_error(&mut self) -> bool {
        if self.armed && self.fault.is_some_and(|(f, _)| f == Fault::HypervisorError) {
            self.fault = None;
            return true;
        }
        false
    }

    /// Lets the guest release the devices whose time has come.
    fn settle(&mut self) {
        let now = Instant::now();
        for side in [Side::Source, Side::Destination] {
            let due: Vec<String> = self
                .hv(side)
                .releasing
                .iter()
                .filter(|(_, at)| at.is_some_and(|at| at <= now))
                .map(|(id, _)| id.clone())
                .collect();
            for id in due {
                let hv = self.hv(side);
                hv.releasing.remove(&id);
                if let Some((mac, pci)) = hv.devices.remove(&id) {
                    if side == self.guest_side {
                        self.tracking.remove(&pci);
                        for place in self.net.values_mut() {
                            if *place == Net::Vf(mac) {
                                *place = Net::Nowhere;
                            }
                        }
                    }
                }
            }
        }
    }

    /// A new destination waits for the next attempt (the fault that killed the last is over).
    pub fn revive_destination(&mut self) {
        self.destination_dead = false;
        self.fault = None;
    }

    /// Thaws a frozen agent: it applies what it was sent, in order.
    pub fn thaw(&mut self) {
        self.frozen = false;
        for request in std::mem::take(&mut self.queued) {
            let _ = self.apply(request);
        }
    }

    fn guest_has(&self, mac: MacAddr) -> bool {
        let hv = match self.guest_side {
            Side::Source => &self.src,
            Side::Destination => &self.dst,
        };
        let let_go = |id: &String| hv.slow_eject.is_some() && hv.releasing.contains_key(id);
        hv.devices.iter().any(|(id, (m, _))| *m == mac && !let_go(id))
    }

    fn interface_of(&self, mac: MacAddr) -> Option<String> {
        VFS.iter()
            .position(|(_, m, _)| self::mac(m) == mac)
            .map(|i| format!("eth{i}"))
    }

    fn tracked(&self) -> Vec<TrackedDevice> {
        self.tracking
            .iter()
            .map(|pci| TrackedDevice {
                pci_address: pci.clone(),
                calls: 10,
                pages: 7,
            })
            .collect()
    }

    /// What the agent does for one request.
    fn apply(&mut self, request: Request) -> Result<Answer, String> {
        match request {
            Request::Track(m) => {
                if !self.hook_installed {
                    return Err("no DMA hook installed".into());
                }
                let hv = match self.guest_side {
                    Side::Source => &self.src,
                    Side::Destination => &self.dst,
                };
                let pci = hv.devices.values().find(|(d, _)| *d == m).map(|(_, p)| p.clone());
                let pci = pci.ok_or(NO_SUCH_INTERFACE)?;
                self.tracking.insert(pci);
                Ok(Answer::Tracked(self.tracked()))
            }
            Request::Stop => {
                let was = self.tracked();
                self.tracking.clear();
                Ok(Answer::Tracked(was))
            }
            Request::Save(m, standby) => {
                let name = self
                    .interface_of(m)
                    .filter(|_| self.guest_has(m))
                    .ok_or(NO_SUCH_INTERFACE)?;
                if let Some(rec) = self.saved.get(&name).filter(|r| r.on_standby) {
                    return Ok(Answer::Saved(name.clone(), rec.clone()));
                }
                let on_standby = standby && self.standby_nic;
                let rec = SavedRec {
                    mac: m,
                    digest: format!("sha256:{:064x}", name.len() as u64 + u64::from(m.0[5])),
                    pending: true,
                    on_standby,
                };
                self.saved.insert(name.clone(), rec.clone());
                if on_standby {
                    self.net.insert(name.clone(), Net::Standby);
                }
                Ok(Answer::Saved(name, rec))
            }
            Request::Keep(m, named) => {
                let found = match &named {
                    Some(s) => self.saved.get(&s.interface).map(|r| (s.interface.clone(), r.clone())),
                    None => self
                        .saved
                        .iter()
                        .find(|(_, r)| r.mac == m && r.pending)
                        .map(|(n, r)| (n.clone(), r.clone())),
                };
                let Some((name, rec)) = found else {
                    return Ok(Answer::Kept(Kept::default()));
                };
                if named.as_ref().is_some_and(|s| s.digest != rec.digest) {
                    return Err("the state on record has another digest; nothing was changed".into());
                }
                if !self.guest_has(m) {
                    return Err(NO_SUCH_INTERFACE.into());
                }
                self.net.insert(name.clone(), Net::Vf(m));
                self.saved.remove(&name);
                Ok(Answer::Kept(Kept {
                    saved: Some(name),
                    standby_released: rec.on_standby.then(|| STANDBY.to_owned()),
                    failed: Vec::new(),
                }))
            }
            Request::Restore(saved, onto) => {
                let rec = self.saved.get(&saved.interface).cloned().ok_or("no such state")?;
                if rec.digest != saved.digest {
                    return Err("the state on record has another digest; nothing was changed".into());
                }
                if !self.guest_has(onto) {
                    return Err(NO_SUCH_INTERFACE.into());
                }
                self.net.insert(saved.interface.clone(), Net::Vf(onto));
                if let Some(r) = self.saved.get_mut(&saved.interface) {
                    r.pending = false;
                    r.on_standby = false;
                }
                Ok(Answer::Restored(Restored {
                    interface: saved.interface,
                    applied: 10,
                    unchanged: 0,
                    failed: Vec::new(),
                    mismatches: Vec::new(),
                    duration_ms: 5,
                    standby_released: rec.on_standby.then(|| STANDBY.to_owned()),
                }))
            }
        }
    }
}

enum Answer {
    Tracked(Vec<TrackedDevice>),
    Saved(String, SavedRec),
    Kept(Kept),
    Restored(Restored),
}

/// Counts a request that changed something; at the n-th, vfmig-host dies before it hears
/// the answer.
async fn took_effect(world: &Shared) {
    let killed = {
        let mut w = world.borrow_mut();
        w.effects += 1;
        if w.kill_after_effect == Some(w.effects) {
            w.host_killed = true;
            Some(w.killed.clone())
        } else {
            None
        }
    };
    if let Some(notify) = killed {
        notify.notify_one();
        std::future::pending::<()>().await;
    }
}

/// Hangs forever once vfmig-host is "killed", after telling the test.
async fn gate(world: &Shared, what: &str) {
    let killed = {
        let mut w = world.borrow_mut();
        w.arm();
        w.calls.push(what.to_owned());
        w.host_killed.then(|| w.killed.clone())
    };
    if let Some(notify) = killed {
        notify.notify_one();
        std::future::pending::<()>().await;
    }
}

pub struct FakeVm {
    pub world: Shared,
    pub side: Side,
}

/// The hypervisor requests that change something.
const VM_EFFECTS: [&str; 7] = [
    "start_migration",
    "cancel_migration",
    "set_params",
    "remove_device",
    "add_device",
    "set_switchover_gate",
    "continue_switchover",
];

impl FakeVm {
    async fn call<T>(&self, what: &str, f: impl FnOnce(&mut World) -> Result<T, VmError>) -> Result<T, VmError> {
        gate(&self.world, what).await;
        tokio::task::yield_now().await;
        let answer = {
            let mut w = self.world.borrow_mut();
            w.settle();
            if w.hypervisor_error() {
                return Err(VmError::Refused {
                    request: what.into(),
                    error: "the monitor is busy (test)".into(),
                });
            }
            f(&mut w)
        };
        if answer.is_ok() && VM_EFFECTS.contains(&what) {
            took_effect(&self.world).await;
        }
        answer
    }
}

impl Vm for FakeVm {
    async fn migration(&self) -> Result<Option<Migration>, VmError> {
        let side = self.side;
        let answer = self
            .call("migration", |w| {
                let dead = w.destination_dead;
                let early = side == Side::Source && w.early_switchover;
                let mut early_taken = false;
                let hv = w.hv(side);
                let held = hv.params.is_some_and(|p| p.max_bandwidth == HOLD_BANDWIDTH);
                let pause = hv.pause;
                let Some(m) = hv.migration.as_mut() else {
                    return Ok(None);
                };
                // Paused before its switch-over, QEMU waits for migrate-continue or a cancel.
                if !m.state.is_finished() && m.state != MigrationState::PreSwitchover {
                    let now = Instant::now();
                    if dead {
                        m.state = MigrationState::Failed;
                        m.error = Some("Unable to write to socket: Broken pipe".into());
                    } else {
                        if early {
                            m.switchover = Some(now);
                            early_taken = true;
                        }
                        if !held {
                            m.remaining = m.remaining.saturating_sub(STEP);
                            if m.remaining == 0 && m.switchover.is_none() {
                                m.switchover = Some(now + SWITCHOVER);
                            }
                        }
                        if m.switchover.is_some_and(|at| at <= now) {
                            m.state = if pause && !m.continued {
                                MigrationState::PreSwitchover
                            } else {
                                MigrationState::Completed
                            };
                        }
                    }
                }
                let out = Migration {
                    state: m.state,
                    ram: Some(Ram {
                        transferred: TOTAL - m.remaining,
                        remaining: m.remaining,
                        total: TOTAL,
                        dirty_sync_count: 1,
                    }),
                    error: m.error.clone(),
                    total_time_ms: Some(1000),
                    downtime_ms: (m.state == MigrationState::Completed).then_some(20),
                };
                if m.state == MigrationState::Completed && side == Side::Source {
                    w.guest_side = Side::Destination;
                }
                if early_taken {
                    w.early_switchover = false;
                }
                Ok(Some(out))
            })
            .await?;
        let paused = answer
            .as_ref()
            .is_some_and(|m| m.state == MigrationState::PreSwitchover);
        if paused && std::mem::take(&mut self.world.borrow_mut().kill_at_pause) {
            self.world.borrow_mut().host_killed = true;
            let killed = self.world.borrow().killed.clone();
            killed.notify_one();
            std::future::pending::<()>().await;
        }
        Ok(answer)
    }

    async fn start_migration(&self, _target: &str) -> Result<(), VmError> {
        let side = self.side;
        self.call("start_migration", |w| {
            let hv = w.hv(side);
            hv.idle("migrate")?;
            hv.migration = Some(Mig {
                state: MigrationState::Active,
                remaining: TOTAL,
                error: None,
                switchover: None,
                continued: false,
            });
            Ok(())
        })
        .await
    }

    async fn cancel_migration(&self) -> Result<(), VmError> {
        let side = self.side;
        self.call("cancel_migration", |w| {
            if let Some(m) = w.hv(side).migration.as_mut().filter(|m| !m.state.is_finished()) {
                m.state = MigrationState::Cancelled;
            }
            Ok(())
        })
        .await
    }

    async fn params(&self) -> Result<Params, VmError> {
        let side = self.side;
        self.call("params", |w| Ok(w.hv(side).params.unwrap_or(ORIGINAL))).await
    }

    async fn set_params(&self, change: ParamsChange) -> Result<(), VmError> {
        let side = self.side;
        self.call("set_params", |w| {
            let p = w.hv(side).params.get_or_insert(ORIGINAL);
            p.max_bandwidth = change.max_bandwidth.unwrap_or(p.max_bandwidth);
            p.downtime_limit = change.downtime_limit.unwrap_or(p.downtime_limit);
            Ok(())
        })
        .await
    }

    async fn device_present(&self, id: &str) -> Result<bool, VmError> {
        let side = self.side;
        self.call("device_present", |w| Ok(w.hv(side).devices.contains_key(id)))
            .await
    }

    async fn remove_device(&self, id: &str) -> Result<(), VmError> {
        let side = self.side;
        self.call("remove_device", |w| {
            let hv = w.hv(side);
            if hv.devices.contains_key(id) {
                hv.releasing
                    .entry(id.to_owned())
                    .or_insert(Some(Instant::now() + hv.slow_eject.unwrap_or(RELEASE)));
            }
            Ok(())
        })
        .await
    }

    async fn wait_device_gone(&self, id: &str, deadline: Duration) -> Result<bool, VmError> {
        let until = Instant::now() + deadline;
        loop {
            if !self.device_present(id).await? {
                return Ok(true);
            }
            if Instant::now() >= until {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(10).min(until - Instant::now())).await;
        }
    }

    async fn add_device(&self, spec: &Value) -> Result<(), VmError> {
        let side = self.side;
        let spec = spec.clone();
        self.call("add_device", |w| {
            let id = spec["id"].as_str().unwrap_or_default().to_owned();
            let m: MacAddr = spec["mac"]
                .as_str()
                .and_then(|m| m.parse().ok())
                .ok_or(VmError::Refused {
                    request: "device_add".into(),
                    error: "no mac".into(),
                })?;
            let hv = w.hv(side);
            if hv.devices.contains_key(&id) {
                return Err(VmError::Refused {
                    request: "device_add".into(),
                    error: format!("Duplicate device ID '{id}'"),
                });
            }
            hv.slots += 1;
            let pci = format!("0000:1{}:00.0", hv.slots);
            hv.devices.insert(id, (m, pci));
            Ok(())
        })
        .await
    }

    async fn device_is(&self, id: &str, spec: &Value) -> Result<bool, VmError> {
        let side = self.side;
        let wanted: Option<MacAddr> = spec["mac"].as_str().and_then(|m| m.parse().ok());
        self.call("device_is", |w| Ok(w.hv(side).devices.get(id).map(|d| d.0) == wanted))
            .await
    }

    async fn guest_pci_address(&self, id: &str) -> Result<Option<String>, VmError> {
        let side = self.side;
        self.call("guest_pci_address", |w| {
            Ok(w.hv(side).devices.get(id).map(|(_, p)| p.clone()))
        })
        .await
    }

    async fn device_mac(&self, id: &str) -> Result<Option<MacAddr>, VmError> {
        let side = self.side;
        self.call("device_mac", |w| match w.hv(side).devices.get(id) {
            Some((m, _)) => Ok(Some(*m)),
            None => Err(VmError::NoDevice(id.into())),
        })
        .await
    }

    async fn running(&self) -> Result<bool, VmError> {
        let side = self.side;
        self.call("running", |w| {
            let done = w
                .hv(side)
                .migration
                .as_ref()
                .is_some_and(|m| matches!(m.state, MigrationState::Completed | MigrationState::PreSwitchover));
            Ok(!(side == Side::Source && done))
        })
        .await
    }

    async fn failover_pair(&self, _id: &str) -> Result<Option<String>, VmError> {
        self.call("failover_pair", |_| Ok(None)).await
    }

    async fn switchover_gate(&self) -> Result<Option<bool>, VmError> {
        let side = self.side;
        self.call("switchover_gate", |w| Ok((!w.no_gate).then_some(w.hv(side).pause)))
            .await
    }

    async fn set_switchover_gate(&self, on: bool) -> Result<(), VmError> {
        let side = self.side;
        self.call("set_switchover_gate", |w| {
            let hv = w.hv(side);
            hv.idle("migrate-set-capabilities")?;
            hv.pause = on;
            Ok(())
        })
        .await
    }

    async fn continue_switchover(&self) -> Result<(), VmError> {
        let side = self.side;
        self.call("continue_switchover", |w| {
            let hv = w.hv(side);
            let plugged = !hv.devices.is_empty();
            let Some(m) = hv
                .migration
                .as_mut()
                .filter(|m| m.state == MigrationState::PreSwitchover)
            else {
                return Err(VmError::Refused {
                    request: "migrate-continue".into(),
                    error: "Migration not in expected state".into(),
                });
            };
            m.state = MigrationState::Device;
            m.continued = true;
            hv.continues.push(plugged);
            Ok(())
        })
        .await
    }
}

pub struct FakeGuest {
    pub world: Shared,
}

impl FakeGuest {
    /// One request: answered after a short latency; a frozen agent queues it and the caller
    /// waits out its deadline; a killed one acts on it and dies before answering.
    async fn ask(&mut self, what: &'static str, request: Request, deadline: Duration) -> Result<Answer, GuestError> {
        gate(&self.world, what).await;
        let silent = GuestError::Silent {
            request: what,
            after: deadline,
        };
        let (frozen, killed) = {
            let mut w = self.world.borrow_mut();
            w.settle();
            (w.frozen, std::mem::take(&mut w.kill_next_request))
        };
        if frozen {
            self.world.borrow_mut().queued.push(request);
            tokio::time::sleep(deadline).await;
            return Err(silent);
        }
        if GUEST_LATENCY > deadline {
            tokio::time::sleep(deadline).await;
            return Err(silent);
        }
        tokio::time::sleep(GUEST_LATENCY).await;
        let answer = self.world.borrow_mut().apply(request);
        if answer.is_ok() {
            took_effect(&self.world).await;
        }
        if killed {
            tokio::time::sleep(deadline.saturating_sub(GUEST_LATENCY)).await;
            return Err(silent);
        }
        answer.map_err(|message| GuestError::Refused {
            request: what,
            code: if message == NO_SUCH_INTERFACE {
                ErrorCode::NoSuchInterface
            } else {
                ErrorCode::Internal
            },
            message,
        })
    }
}

impl Guest for FakeGuest {
    async fn hello(&mut self, deadline: Duration) -> Result<GuestInfo, GuestError> {
        gate(&self.world, "hello").await;
        let frozen = self.world.borrow().frozen;
        if frozen {
            tokio::time::sleep(deadline).await;
            return Err(GuestError::Silent {
                request: "hello",
                after: deadline,
            });
        }
        // A killed agent is back in a moment, and a session's sync is re-sent until it is.
        tokio::time::sleep(GUEST_LATENCY).await;
        let w = self.world.borrow();
        Ok(GuestInfo {
            agent: "fake-guestd".into(),
            kernel_hook: w.hook_installed,
            standby: w.standby_nic.then(|| STANDBY.to_owned()),
            nic_owners: Vec::new(),
        })
    }

    async fn track_dma(&mut self, mac: MacAddr, deadline: Duration) -> Result<Vec<TrackedDevice>, GuestError> {
        match self.ask("track_dma", Request::Track(mac), deadline).await? {
            Answer::Tracked(t) => Ok(t),
            _ => unreachable!("a track answers with the tracked devices"),
        }
    }

    async fn stop_dma(&mut self, deadline: Duration) -> Result<Vec<TrackedDevice>, GuestError> {
        match self.ask("stop_dma_tracking", Request::Stop, deadline).await? {
            Answer::Tracked(t) => Ok(t),
            _ => unreachable!("a stop answers with the tracked devices"),
        }
    }

    async fn save(
        &mut self,
        mac: MacAddr,
        standby: &StandbyRequest,
        _accept_loss: bool,
        _unplug: Duration,
        deadline: Duration,
    ) -> Result<StateSaved, GuestError> {
        let wants = *standby != StandbyRequest::Off;
        match self.ask("prepare_unplug", Request::Save(mac, wants), deadline).await? {
            Answer::Saved(name, rec) => Ok(StateSaved {
                interface: name.clone(),
                digest: rec.digest,
                addresses: 2,
                routes: 3,
                neighbours: 5,
                standby: rec.on_standby.then(|| STANDBY.to_owned()),
                location: Some(format!("/run/vfmig/{name}.json")),
                lost: Vec::new(),
            }),
            _ => unreachable!("a save answers with the saved state"),
        }
    }

    async fn restore(
        &mut self,
        saved: &Saved,
        onto: MacAddr,
        _restore_mac: bool,
        deadline: Duration,
    ) -> Result<Restored, GuestError> {
        match self
            .ask("restore", Request::Restore(saved.clone(), onto), deadline)
            .await?
        {
            Answer::Restored(r) => Ok(r),
            _ => unreachable!("a restore answers with its report"),
        }
    }

    async fn keep(&mut self, mac: MacAddr, saved: Option<&Saved>, deadline: Duration) -> Result<Kept, GuestError> {
        match self.ask("keep", Request::Keep(mac, saved.cloned()), deadline).await? {
            Answer::Kept(k) => Ok(k),
            _ => unreachable!("a keep answers with what it kept"),
        }
    }
}

/// The source VFs' device specs, to plug them back.
pub fn vf_spec(i: usize) -> Value {
    let (id, m, _) = VFS[i];
    json!({ "driver": "e1000e", "id": id, "mac": m })
}

/// A fresh VF's spec on the destination.
pub fn fresh_spec(i: usize) -> Value {
    let (id, _, m) = VFS[i];
    json!({ "driver": "e1000e", "id": id, "mac": m })
}
