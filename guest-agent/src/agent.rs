//! What the agent does for each host request. Everything it receives has been decoded and
//! validated by the protocol crate; what it finds in the kernel and on disk is checked here.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rtnetlink::Handle;
use vfmig_protocol::message::{
    Capabilities, ErrorReply, GuestMessage, Hello, HostMessage, InterfaceSelector, Keep, Kept, Phase, PrepareUnplug,
    Restore, Restored, StandbyRequest, StateSaved, Status, TrackDma, UnplugReady, MAX_FAILURES, MAX_TEXT,
};
use vfmig_protocol::netstate::{check, differences, digest, InterfaceState, SavedState};
use vfmig_protocol::version::{negotiate, SUPPORTED};
use vfmig_protocol::ErrorCode;

use crate::dma_hook::DmaHook;
use crate::events::{Event, Events, Trigger};
use crate::handback;
use crate::netstate::standby::{self, Standby, StandbyConfig};
use crate::netstate::{self, RestoreOptions};
use crate::owner::{LinkRef, OwnerKind, Owners, Snapshot};
use crate::pending::{self, Pending};
use crate::store;

/// How long a restore waits for the VF's link to appear (measured: 0.4–0.7 s after hot-add).
const LINK_WAIT: Duration = Duration::from_secs(10);
/// How long a new link is left to udev before the agent touches it anyway: its rename and
/// rules take a fraction of that, even under TCG.
const UDEV_WAIT: Duration = Duration::from_secs(5);
/// Naming the owners in a hello must not hold it up: past this, none are named.
const OWNERS_WAIT: Duration = Duration::from_secs(2);

pub struct Agent {
    handle: Handle,
    store_dir: PathBuf,
    hook: DmaHook,
    standby: StandbyConfig,
    phase: Phase,
    events: Events,
    /// The network managers in the guest the agent may work with.
    owners: Arc<Owners>,
    /// The saved state last restored, by its name, and the link it went onto: the appearance
    /// of that same link, seen after the host's restore, is not a reason to restore again
    /// (which would report a restore that did nothing as the last one, without the hand-back).
    restored_onto: Option<(String, u32)>,
}

/// Whether the link named `link` is a leg of one of `state`'s multipath routes.
fn carries_a_leg(state: &InterfaceState, link: &str) -> bool {
    state
        .routes
        .iter()
        .flat_map(|r| &r.nexthops)
        .any(|n| n.device.as_deref() == Some(link))
}

fn error(code: ErrorCode, message: impl std::fmt::Display) -> GuestMessage {
    GuestMessage::Error(ErrorReply {
        code,
        message: bounded(message.to_string()),
    })
}

/// Items joined with "; ", as many as fit well inside one message, the rest counted: the
/// agent's log has every one.
fn listing(items: &[String]) -> String {
    let mut out = String::new();
    for (i, item) in items.iter().enumerate() {
        if out.len() + item.len() > MAX_TEXT / 2 {
            return format!("{out}; and {} more (the agent's log lists each)", items.len() - i);
        }
        if i > 0 {
            out.push_str("; ");
        }
        out.push_str(item);
    }
    out
}

/// A failure line cut to what the host accepts, at a character boundary.
fn bounded(mut line: String) -> String {
    if line.len() > MAX_TEXT {
        let mut end = MAX_TEXT;
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        line.truncate(end);
    }
    line
}

/// A length as the u32 the wire and D-Bus carry.
pub(crate) fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl Agent {
    pub fn new(handle: Handle, store_dir: PathBuf, hook: DmaHook, standby: StandbyConfig) -> Self {
        Self {
            handle,
            store_dir,
            hook,
            standby,
            phase: Phase::Idle,
            events: Events::default(),
            owners: Arc::default(),
            restored_onto: None,
        }
    }

    /// Works with these network managers (none by default: a test agent in a network namespace
    /// must not touch those of the machine it runs on).
    pub fn with_owners(mut self, owners: Owners) -> Self {
        self.owners = Arc::new(owners);
        self
    }

    /// The network managers running in the guest now, as a hello names them.
    pub async fn owners_running(&self) -> Vec<OwnerKind> {
        tokio::time::timeout(OWNERS_WAIT, self.owners.running())
            .await
            .unwrap_or_default()
    }

    /// What the agent does from now on, as it happens.
    pub fn events(&self) -> tokio::sync::broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    fn set_phase(&mut self, phase: Phase) {
        self.phase = phase;
        self.events.emit(Event::Phase(phase));
    }

    /// The replies to one request, in the order they are to be sent.
    pub async fn handle(&mut self, msg: HostMessage) -> Vec<GuestMessage> {
        match msg {
            HostMessage::Hello(h) => vec![match negotiate(SUPPORTED, h.versions) {
                Ok(_) => GuestMessage::Hello(Hello::ours(
                    concat!("vfmig-guestd ", env!("CARGO_PKG_VERSION")),
                    // Read at each hello: the module may be installed or removed, the standby
                    // plugged or taken down, a network manager started or stopped, while we run.
                    {
                        let owners = self.owners_running().await;
                        Capabilities {
                            kernel_hook: self.hook.installed(),
                            standby: self.standby_now().await,
                            network_manager: owners.contains(&OwnerKind::NetworkManager),
                            nic_owners: owners.iter().map(ToString::to_string).collect(),
                        }
                    },
                )),
                Err(e) => error(ErrorCode::VersionMismatch, e),
            }],
            HostMessage::Sync { nonce } => vec![GuestMessage::SyncAck { nonce }],
            HostMessage::StatusQuery => vec![GuestMessage::Status(Status {
                phase: self.phase,
                saved: store::names(&self.store_dir),
            })],
            HostMessage::PrepareUnplug(p) => self.prepare_unplug(p).await,
            HostMessage::Restore(r) => vec![self.restore(r).await],
            HostMessage::Keep(k) => vec![self.keep(k).await],
            HostMessage::TrackDma(t) => vec![self.track_dma(t).await],
            HostMessage::StopDmaTracking => vec![match self.hook.stop() {
                Ok(t) => GuestMessage::DmaTracking(t),
                Err(e) => error(ErrorCode::HookUnavailable, e),
            }],
        }
    }

    async fn track_dma(&self, t: TrackDma) -> GuestMessage {
        let pci = match netstate::pci_address(&self.handle, &t.interface).await {
            Ok(p) => p,
            Err(e) => return error(ErrorCode::NoSuchInterface, e),
        };
        match self.hook.track(&pci).await {
            Ok(state) => {
                tracing::info!(pci, "DMA hook tracking");
                GuestMessage::DmaTracking(state)
            }
            Err(e) => error(ErrorCode::HookUnavailable, e),
        }
    }

    /// The standby the automatic choice would take now (the VF is not known yet at hello; no
    /// link has index 0).
    async fn standby_now(&self) -> Option<String> {
        let choice = standby::choose(&self.handle, &StandbyRequest::Auto, &self.standby, 0).await;
        choice.ok()?.ok().map(|s| s.name)
    }

    async fn prepare_unplug(&mut self, p: PrepareUnplug) -> Vec<GuestMessage> {
        let index = match netstate::find_link(&self.handle, &p.interface).await {
            Ok(i) => i,
            Err(e) => return vec![error(ErrorCode::NoSuchInterface, e)],
        };
        // Asked again (a host that was restarted, or a request repeated over a new
        // connection) after the state moved to a standby: the VF holds nothing now, so the
        // state on record is the one to report, not a fresh capture of the emptied VF.
        if let Some((name, state)) = self.saved_for(&p.interface) {
            if let Some(standby) = store::marked_standby(&self.store_dir, &name) {
                tracing::info!(
                    name,
                    standby,
                    "already saved and moved to the standby; reporting the saved state"
                );
                let saved = self.state_saved(&name, &state, Some(standby));
                return vec![
                    GuestMessage::StateSaved(saved),
                    GuestMessage::UnplugReady(UnplugReady { interface: name }),
                ];
            }
        }
        // Chosen before anything is saved: a standby the host named and cannot have is
        // refused with nothing changed.
        let standby = match standby::choose(&self.handle, &p.standby, &self.standby, index).await {
            Ok(Ok(s)) => Some(s),
            Ok(Err(why)) => {
                tracing::info!(why, "no standby for the VF gap");
                None
            }
            Err(e) => return vec![error(ErrorCode::StandbyUnusable, e)],
        };
        let captured = match netstate::capture_index(&self.handle, index).await {
            Ok(c) => c,
            Err(e) => return vec![error(ErrorCode::CaptureFailed, e)],
        };
        let name = captured.state.identity.name.clone();
        // Whatever restore would refuse or leave out is refused now, while the VF is still
        // there, never found out after the unplug.
        if let Err(inconsistency) = check(&captured.state) {
            let why = format!("the state of {name} would not restore ({inconsistency}); nothing was saved");
            return vec![error(ErrorCode::Unrestorable, why)];
        }
        for item in &captured.unrestorable {
            tracing::warn!(item, accepted = p.accept_loss, "restore would not put this back");
        }
        if !captured.unrestorable.is_empty() && !p.accept_loss {
            let why = format!(
                "{name} holds what restore would not put back: {}; nothing was saved (the host may accept the loss)",
                listing(&captured.unrestorable)
            );
            return vec![error(ErrorCode::Unrestorable, why)];
        }
        // A standby that is itself a leg of one of the VF's multipath routes is not lent:
        // taking the lent IPv4 addresses back off it would leave that leg dead (the kernel
        // marks a nexthop dead when its link loses its last address, and keeps it so).
        let standby = match standby {
            Some(s) if carries_a_leg(&captured.state, &s.name) => {
                let why = format!(
                    "{} carries a leg of a multipath route of {name}; giving it back would leave that leg dead",
                    s.name
                );
                if matches!(p.standby, StandbyRequest::Use(_)) {
                    return vec![error(ErrorCode::StandbyUnusable, why)];
                }
                tracing::info!(why, "no standby for the VF gap");
                None
            }
            other => other,
        };
        let lost = captured.unrestorable;
        let state = SavedState {
            captured_unix_ms: netstate::unix_ms_now(),
            interface: captured.state,
        };
        let link = LinkRef {
            index,
            name: name.clone(),
            mac: state.interface.identity.mac,
        };
        let owner = self.owners.snapshot(&link).await;
        if let Err(e) = store::save(&store::path_for(&self.store_dir, &name), &state) {
            return vec![error(ErrorCode::StorageFailed, e)];
        }
        let record = Pending {
            mac: state.interface.identity.mac,
            owner: owner.clone(),
        };
        if let Err(e) = pending::write(&self.store_dir, &name, &record) {
            return vec![error(ErrorCode::StorageFailed, e)];
        }
        // An owner that cannot be kept off would configure the fresh VF over the restore: refused
        // now, with nothing left saved, rather than undone after the unplug.
        if let Some(owner) = &owner {
            if let Err(e) = self.owners.hold(&name, owner).await {
                let undone = pending::take(&self.store_dir, &name)
                    .err()
                    .map(|e| e.to_string())
                    .into_iter()
                    .chain(store::remove(&self.store_dir, &name).err().map(|e| e.to_string()));
                let why = format!(
                    "{} could not be kept off {name} during the migration ({e}); nothing was saved{}",
                    owner.kind(),
                    undone.map(|u| format!("; {u}")).collect::<String>()
                );
                return vec![error(ErrorCode::Unrestorable, why)];
            }
        }
        let moved = match standby {
            Some(standby) => match self.move_to_standby(&state, index, &standby).await {
                Ok(()) => Some(standby.name),
                Err(e) => return vec![error(ErrorCode::StandbyUnusable, e)],
            },
            None => None,
        };
        self.set_phase(Phase::Saved);
        self.restored_onto = None;
        let mut saved = self.state_saved(&name, &state, moved);
        saved.lost = lost.into_iter().take(MAX_FAILURES).collect();
        self.events.emit(Event::Saved(saved.clone()));
        vec![
            GuestMessage::StateSaved(saved),
            GuestMessage::UnplugReady(UnplugReady { interface: name }),
        ]
    }

    /// What the host is told of a state saved under `name`.
    fn state_saved(&self, name: &str, state: &SavedState, standby: Option<String>) -> StateSaved {
        let s = &state.interface;
        StateSaved {
            interface: name.to_owned(),
            digest: digest(state),
            addresses: count(s.addresses.len()),
            routes: count(s.routes.len()),
            neighbours: count(s.neighbours.len()),
            standby,
            location: Some(store::path_for(&self.store_dir, name).display().to_string()),
            lost: Vec::new(),
        }
    }

    /// The saved state on record for the interface `selector` names (by the saved MAC and
    /// name), with the name it is saved under.
    fn saved_for(&self, selector: &InterfaceSelector) -> Option<(String, SavedState)> {
        store::names(&self.store_dir).into_iter().find_map(|name| {
            let saved = store::load(&store::path_for(&self.store_dir, &name)).ok()?;
            let id = &saved.interface.identity;
            let wanted = selector.mac.is_none_or(|m| m == id.mac) && selector.name.as_ref().is_none_or(|n| *n == name);
            wanted.then_some((name, saved))
        })
    }

    /// Loads the state saved under `name`, refusing it when it is not the one the host names.
    /// The refusal is boxed: a message is large beside a state handed back on success.
    fn load_named(&self, name: &str, digest_wanted: Option<&str>) -> Result<SavedState, Box<GuestMessage>> {
        let saved = store::load(&store::path_for(&self.store_dir, name))
            .map_err(|e| Box::new(error(ErrorCode::InvalidState, e)))?;
        match digest_wanted {
            Some(wanted) if digest(&saved) != wanted => Err(Box::new(error(
                ErrorCode::StateMismatch,
                format!(
                    "the state saved for {name} has digest {}, not {wanted}: it is not the one the host means; nothing was changed",
                    digest(&saved)
                ),
            ))),
            _ => Ok(saved),
        }
    }

    async fn restore(&mut self, r: Restore) -> GuestMessage {
        let saved = match self.load_named(&r.saved, r.digest.as_deref()) {
            Ok(s) => s,
            Err(refusal) => return *refusal,
        };
        let index = match self.wait_for_link(&r.onto).await {
            Ok(i) => i,
            Err(e) => return error(ErrorCode::NoSuchInterface, e),
        };
        match self.restore_onto(saved, index, r.restore_mac, Trigger::Host).await {
            Ok(restored) => GuestMessage::Restored(restored),
            Err(e) => error(ErrorCode::RestoreIncomplete, e),
        }
    }

    /// The VF stays: what was saved for it goes back onto it (from a standby, or onto the VF
    /// plugged back after an unplug), and the saved state is forgotten.
    async fn keep(&mut self, k: Keep) -> GuestMessage {
        let found = match &k.saved {
            Some(named) => match self.load_named(&named.interface, Some(&named.digest)) {
                Ok(state) => Some((named.interface.clone(), state)),
                Err(_) if !store::path_for(&self.store_dir, &named.interface).exists() => None,
                Err(refusal) => return *refusal,
            },
            // Unnamed (the host gave up before it heard of a save): only a save still awaiting
            // its restore is undone, never an older state a finished migration left on record.
            None => self
                .saved_for(&k.interface)
                .filter(|(name, _)| pending::all(&self.store_dir).iter().any(|(p, _)| p == name)),
        };
        let Some((name, saved)) = found else {
            tracing::info!(interface = ?k.interface, "keep: nothing saved for the VF");
            return GuestMessage::Kept(Kept {
                saved: None,
                standby_released: None,
                failed: Vec::new(),
            });
        };
        let index = match self.wait_for_link(&k.interface).await {
            Ok(i) => i,
            Err(e) => return error(ErrorCode::NoSuchInterface, e),
        };
        let restored = match self.restore_onto(saved, index, false, Trigger::Host).await {
            Ok(r) => r,
            Err(e) => return error(ErrorCode::RestoreIncomplete, e),
        };
        let mut failed = restored.failed;
        failed.extend(
            restored
                .mismatches
                .into_iter()
                .map(|m| format!("differs after keep: {m}")),
        );
        if let Err(e) = store::remove(&self.store_dir, &name) {
            failed.push(e.to_string());
        }
        tracing::info!(
            name,
            failed = failed.len(),
            "kept the VF: saved state put back and forgotten"
        );
        GuestMessage::Kept(Kept {
            saved: Some(name),
            standby_released: restored.standby_released,
            failed: failed.into_iter().take(MAX_FAILURES).map(bounded).collect(),
        })
    }

    /// Moves the VF's (link `vf`) saved state onto the standby and records that it did, so a
    /// restore — by the host, by itself, after a restart — moves it back. A move that does not
    /// go through whole is undone and refused: half the routes on each link is worse than none.
    async fn move_to_standby(&self, state: &SavedState, vf: u32, standby: &Standby) -> Result<(), String> {
        let report = standby::move_to(&self.handle, state, vf, standby)
            .await
            .map_err(|e| e.to_string())?;
        if report.failed.is_empty() {
            tracing::info!(
                standby = standby.name,
                applied = report.applied.len(),
                "the standby carries the VF's traffic"
            );
            return store::mark_standby(&self.store_dir, &state.interface.identity.name, &standby.name)
                .map_err(|e| e.to_string());
        }
        let undo = RestoreOptions {
            keep_link: true,
            announce: true,
            ..RestoreOptions::default()
        };
        let undone = netstate::restore(&self.handle, state, vf, undo).await;
        let cleared = standby::clear(&self.handle, state, standby).await;
        tracing::warn!(?undone, ?cleared, "moving to the standby failed; moved back");
        Err(format!(
            "moving to standby {} failed ({}); left on the VF",
            standby.name,
            report.failed.join("; ")
        ))
    }

    /// Restores `saved` onto link `index`, then re-reads the link and reports what still
    /// differs from the saved state.
    async fn restore_onto(
        &mut self,
        saved: SavedState,
        index: u32,
        restore_mac: bool,
        by: Trigger,
    ) -> Result<Restored, netstate::NetstateError> {
        self.set_phase(Phase::Restoring);
        let name = saved.interface.identity.name.clone();
        let standby = store::marked_standby(&self.store_dir, &name);
        let opts = RestoreOptions {
            restore_mac,
            announce: true,
            keep_link: false,
            // The standby carries the traffic until the VF can: routes move only with carrier.
            carrier_first: standby.is_some(),
        };
        let mut report = netstate::restore(&self.handle, &saved, index, opts).await?;
        let mut released = None;
        if let Some(standby) = standby {
            match netstate::link_index(&self.handle, &standby).await {
                Ok(index) => {
                    let link = Standby { index, name: standby };
                    report.failed.extend(standby::clear(&self.handle, &saved, &link).await?);
                    released = Some(link.name);
                }
                Err(e) => report.failed.push(format!("standby {standby}: {e}; nothing to clear")),
            }
            store::unmark_standby(&self.store_dir, &name)
                .map_err(|e| netstate::NetstateError::StandbyUnusable(e.to_string()))?;
        }
        let before = match pending::take(&self.store_dir, &name) {
            Ok(pending) => pending.and_then(|p| p.owner),
            Err(e) => {
                report.failed.push(e.to_string());
                None
            }
        };
        let (mismatches, now) = match netstate::capture_index(&self.handle, index).await {
            Ok(now) => (differences(&saved.interface, &now.state), Some(now.state.identity)),
            Err(e) => (vec![format!("could not re-read the interface to verify: {e}")], None),
        };
        match (before, now) {
            (Some(before), Some(now)) => {
                let link = LinkRef {
                    index,
                    name: now.name,
                    mac: now.mac,
                };
                self.hand_back(saved.clone(), link, before);
            }
            (Some(before), None) => report.failed.push(format!(
                "not handed back to {}: the interface could not be re-read",
                before.kind()
            )),
            (None, _) => {}
        }
        self.set_phase(Phase::Restored);
        self.restored_onto = Some((name.clone(), index));
        let restored = Restored {
            interface: saved.interface.identity.name,
            applied: count(report.applied.len()),
            unchanged: count(report.unchanged.len()),
            failed: report.failed.into_iter().take(MAX_FAILURES).map(bounded).collect(),
            mismatches: mismatches.into_iter().take(MAX_FAILURES).map(bounded).collect(),
            duration_ms: u32::try_from(report.elapsed.as_millis()).unwrap_or(u32::MAX),
            standby_released: released,
        };
        self.events.emit(Event::Restored {
            report: restored.clone(),
            by,
        });
        Ok(restored)
    }

    /// Gives the restored `link` back to the owner it had before the unplug, in the
    /// background (see [`handback`]).
    fn hand_back(&self, saved: SavedState, link: LinkRef, before: Snapshot) {
        handback::spawn(
            Arc::clone(&self.owners),
            self.handle.clone(),
            self.events.clone(),
            saved,
            link,
            before,
        );
    }

    /// A link appeared. If it carries the MAC of an interface whose state is saved (the
    /// destination's VF provisioned with the old MAC, or the VF plugged back on the source), the
    /// agent restores onto it without waiting for the host, which may be gone; a later
    /// `restore` from the host then finds everything in place.
    pub async fn link_appeared(&mut self, link: netstate::NewLink) {
        let by_mac = InterfaceSelector {
            mac: Some(link.mac),
            ..Default::default()
        };
        let Some((name, saved)) = self.saved_for(&by_mac) else {
            return;
        };
        if self.restored_onto.as_ref() == Some(&(name.clone(), link.index)) {
            tracing::info!(saved = %name, index = link.index, "a link with a saved MAC appeared, already restored onto");
            return;
        }
        tracing::info!(saved = %name, index = link.index, mac = %link.mac, "a link with a saved MAC appeared; restoring");
        self.udev_settled(link.index).await;
        match self.restore_onto(saved, link.index, false, Trigger::LinkAppeared).await {
            Ok(r) => {
                for line in r.failed.iter().chain(&r.mismatches) {
                    tracing::warn!(line, "not restored");
                }
                tracing::info!(applied = r.applied, ms = r.duration_ms, "restored");
            }
            Err(e) => tracing::error!(error = %e, "restore failed"),
        }
    }

    /// A hot-plugged VF's link appears a moment after the host's request (its driver has to
    /// probe it): wait for it, within a bound.
    async fn wait_for_link(&self, onto: &InterfaceSelector) -> Result<u32, netstate::NetstateError> {
        let until = Instant::now() + LINK_WAIT;
        loop {
            match netstate::find_link(&self.handle, onto).await {
                Err(netstate::NetstateError::NoSuchInterface(_)) if Instant::now() < until => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Ok(index) => {
                    self.udev_settled(index).await;
                    return Ok(index);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Leaves a new link to udev until it is done with it: its name and NetworkManager's
    /// hands-off mark come from there.
    async fn udev_settled(&self, index: u32) {
        if !netstate::settled(index, UDEV_WAIT).await {
            tracing::warn!(index, wait = ?UDEV_WAIT, "udev did not finish with the new link; restoring anyway");
        }
    }
}
