//! `org.vfmig.Guest1` at `/org/vfmig/Guest1`: the agent's phase, what it last saved and
//! restored, the states it has on record, and a signal for each save and restore, so local
//! tools can see what it did.
//!
//! It is read-only by design: nothing on the bus can make the agent change the network, which
//! only the host agent's validated requests do.

use std::path::PathBuf;

use tokio::sync::broadcast::{self, error::RecvError};
use vfmig_protocol::message::{validate_ifname, Phase, Restored, StateSaved};
use vfmig_protocol::netstate::digest;
use zbus::fdo::RequestNameFlags;
use zbus::object_server::{InterfaceRef, SignalEmitter};
use zbus::Connection;

use super::{Bus, RestoreRecord, SaveRecord, StateSummary, NAME, PATH};
use crate::agent::count;
use crate::events::{Event, Trigger};
use crate::netstate::unix_ms_now;
use crate::store::{self, StoreError};

/// The errors a caller can get, named under `org.vfmig.Guest1.Error`.
#[derive(Debug, zbus::DBusError)]
#[zbus(prefix = "org.vfmig.Guest1.Error")]
pub enum Guest1Error {
    #[zbus(error)]
    ZBus(zbus::Error),
    /// Not a valid interface name.
    BadName(String),
    /// No state is on record for that interface.
    NoSuchState(String),
    /// A state is on record but does not read or validate.
    InvalidState(String),
}

pub struct Guest1 {
    store_dir: PathBuf,
    phase: Phase,
    last_save: SaveRecord,
    last_restore: RestoreRecord,
}

pub fn phase_name(phase: Phase) -> &'static str {
    match phase {
        Phase::Idle => "idle",
        Phase::Saved => "saved",
        Phase::Restoring => "restoring",
        Phase::Restored => "restored",
    }
}

fn save_record(s: StateSaved) -> SaveRecord {
    SaveRecord {
        interface: Some(s.interface),
        digest: Some(s.digest),
        addresses: Some(s.addresses),
        routes: Some(s.routes),
        neighbours: Some(s.neighbours),
        standby: s.standby,
        unix_ms: Some(unix_ms_now()),
    }
}

fn restore_record(r: Restored, by: Trigger) -> RestoreRecord {
    RestoreRecord {
        interface: Some(r.interface),
        applied: Some(r.applied),
        unchanged: Some(r.unchanged),
        failed: Some(r.failed),
        mismatches: Some(r.mismatches),
        duration_ms: Some(r.duration_ms),
        standby_released: r.standby_released,
        trigger: Some(by.name().into()),
        unix_ms: Some(unix_ms_now()),
        owner: None,
        handed_back: None,
        settled: None,
    }
}

#[zbus::interface(name = "org.vfmig.Guest1")]
impl Guest1 {
    /// The agent's version.
    #[zbus(property(emits_changed_signal = "const"))]
    fn version(&self) -> String {
        env!("CARGO_PKG_VERSION").into()
    }

    /// "idle", "saved", "restoring" or "restored".
    #[zbus(property)]
    fn phase(&self) -> String {
        phase_name(self.phase).into()
    }

    /// The interfaces with a state on record, read from the store at each call.
    #[zbus(property)]
    fn saved_interfaces(&self) -> Vec<String> {
        store::names(&self.store_dir)
    }

    #[zbus(property)]
    fn last_save(&self) -> SaveRecord {
        self.last_save.clone()
    }

    #[zbus(property)]
    fn last_restore(&self) -> RestoreRecord {
        self.last_restore.clone()
    }

    /// A summary of the state on record for `interface`, read and validated from the store.
    fn saved_state(&self, interface: String) -> Result<StateSummary, Guest1Error> {
        validate_ifname("interface", &interface).map_err(Guest1Error::BadName)?;
        let state = match store::load(&store::path_for(&self.store_dir, &interface)) {
            Ok(s) => s,
            Err(StoreError::Io { error, .. }) if error.kind() == std::io::ErrorKind::NotFound => {
                return Err(Guest1Error::NoSuchState(format!(
                    "no state is on record for {interface}"
                )))
            }
            Err(e) => return Err(Guest1Error::InvalidState(e.to_string())),
        };
        let s = &state.interface;
        Ok(StateSummary {
            interface: Some(s.identity.name.clone()),
            mac: Some(s.identity.mac.to_string()),
            digest: Some(digest(&state)),
            addresses: Some(count(s.addresses.len())),
            routes: Some(count(s.routes.len())),
            neighbours: Some(count(s.neighbours.len())),
            captured_unix_ms: Some(state.captured_unix_ms),
            standby: store::marked_standby(&self.store_dir, &interface),
        })
    }

    #[zbus(signal)]
    async fn state_saved(emitter: &SignalEmitter<'_>, record: SaveRecord) -> zbus::Result<()>;

    #[zbus(signal)]
    async fn state_restored(emitter: &SignalEmitter<'_>, record: RestoreRecord) -> zbus::Result<()>;
}

/// Owns `org.vfmig.Guest1` on `bus` and serves the agent's `events` there until the agent
/// stops. The connection is returned to be kept: dropping it leaves the bus.
pub async fn serve(bus: &Bus, store_dir: PathBuf, events: broadcast::Receiver<Event>) -> zbus::Result<Connection> {
    let guest = Guest1 {
        store_dir,
        phase: Phase::Idle,
        last_save: SaveRecord::default(),
        last_restore: RestoreRecord::default(),
    };
    let conn = bus.builder()?.serve_at(PATH, guest)?.build().await?;
    // Not the builder's name(): it queues behind an owner, and a second agent would then sit
    // on the bus as if it served. DoNotQueue makes it fail with NameTaken instead.
    conn.request_name_with_flags(NAME, RequestNameFlags::DoNotQueue.into())
        .await?;
    let iface = conn.object_server().interface::<_, Guest1>(PATH).await?;
    tokio::spawn(forward(iface, events));
    Ok(conn)
}

async fn forward(iface: InterfaceRef<Guest1>, mut events: broadcast::Receiver<Event>) {
    loop {
        match events.recv().await {
            Ok(event) => {
                if let Err(e) = publish(&iface, event).await {
                    tracing::warn!(error = %e, "D-Bus: could not publish an event");
                }
            }
            Err(RecvError::Lagged(n)) => tracing::warn!(n, "D-Bus: fell behind the agent; events lost"),
            Err(RecvError::Closed) => return,
        }
    }
}

async fn publish(iface: &InterfaceRef<Guest1>, event: Event) -> zbus::Result<()> {
    let emitter = iface.signal_emitter();
    let mut guest = iface.get_mut().await;
    match event {
        Event::Phase(phase) => {
            guest.phase = phase;
            guest.phase_changed(emitter).await
        }
        Event::Saved(saved) => {
            guest.last_save = save_record(saved);
            guest.last_save_changed(emitter).await?;
            guest.saved_interfaces_changed(emitter).await?;
            Guest1::state_saved(emitter, guest.last_save.clone()).await
        }
        Event::Restored { report, by } => {
            guest.last_restore = restore_record(report, by);
            guest.last_restore_changed(emitter).await?;
            Guest1::state_restored(emitter, guest.last_restore.clone()).await
        }
        Event::HandedBack {
            interface,
            owner,
            outcome,
        } => {
            if guest.last_restore.interface.as_deref() != Some(interface.as_str()) {
                return Ok(());
            }
            guest.last_restore.owner = Some(owner.to_string());
            guest.last_restore.handed_back = Some(outcome.unwrap_or_else(|e| format!("failed: {e}")));
            guest.last_restore_changed(emitter).await
        }
        Event::Settled { interface, settled } => {
            if guest.last_restore.interface.as_deref() != Some(interface.as_str()) {
                return Ok(());
            }
            guest.last_restore.settled = Some(settled);
            guest.last_restore_changed(emitter).await
        }
    }
}
