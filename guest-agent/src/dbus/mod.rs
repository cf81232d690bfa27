//! The agent on D-Bus: its own read-only service (`service`), the client `vfmig-guestd status`
//! uses (`client`), and the records both sides exchange. Records are `a{sv}` dictionaries, as
//! D-Bus services usually carry structured data, so a newer agent can add keys without breaking
//! an older reader; an empty one means "none yet".

pub mod client;
pub mod service;

use std::str::FromStr;

use zbus::connection;
use zbus::zvariant::{DeserializeDict, OwnedValue, SerializeDict, Type, Value};

/// The well-known name the agent owns.
pub const NAME: &str = "org.vfmig.Guest1";
/// Where its object lives.
pub const PATH: &str = "/org/vfmig/Guest1";

/// Which bus to use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Bus {
    System,
    /// A D-Bus address (`unix:path=…`): a private bus, as the tests start.
    Address(String),
}

impl Bus {
    pub fn builder(&self) -> zbus::Result<connection::Builder<'static>> {
        match self {
            Bus::System => Ok(connection::Builder::system()?),
            Bus::Address(a) => connection::Builder::address(a.as_str()),
        }
    }
}

impl FromStr for Bus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "system" => Ok(Bus::System),
            a if a.contains(':') && a.contains('=') => Ok(Bus::Address(a.to_owned())),
            other => Err(format!(
                "{other:?} is neither \"system\" nor a D-Bus address (unix:path=…)"
            )),
        }
    }
}

/// A connection to `bus` if `service` is on it; `None` if there is no such bus or nobody owns
/// that name (the service is not running).
pub async fn connect_to(bus: &Bus, service: &str) -> zbus::Result<Option<zbus::Connection>> {
    let Ok(conn) = bus.builder()?.build().await else {
        return Ok(None);
    };
    let name = zbus::names::BusName::try_from(service)?;
    let present = zbus::fdo::DBusProxy::new(&conn).await?.name_has_owner(name).await?;
    Ok(present.then_some(conn))
}

/// Whether the daemon serves D-Bus.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Serve {
    /// On the system bus if there is one; without D-Bus (a warning) if not, as in a minimal
    /// image: the host channel is the agent's job, D-Bus only shows what it did.
    Auto,
    Off,
    /// On this bus, or not at all: the daemon fails if it cannot.
    On(Bus),
}

impl FromStr for Serve {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Serve::Auto),
            "off" => Ok(Serve::Off),
            bus => bus.parse().map(Serve::On),
        }
    }
}

/// The last state the agent saved.
#[derive(Clone, Debug, Default, PartialEq, Eq, SerializeDict, DeserializeDict, Type, Value, OwnedValue)]
#[zvariant(signature = "a{sv}", crate = "zbus::zvariant")]
pub struct SaveRecord {
    pub interface: Option<String>,
    /// `sha256:<hex>` of the sealed document, as the host was told.
    pub digest: Option<String>,
    pub addresses: Option<u32>,
    pub routes: Option<u32>,
    pub neighbours: Option<u32>,
    /// The standby that carries the addresses through the VF gap, if they moved.
    pub standby: Option<String>,
    /// When it was saved, in milliseconds since the epoch.
    pub unix_ms: Option<u64>,
}

/// The last restore the agent did.
#[derive(Clone, Debug, Default, PartialEq, Eq, SerializeDict, DeserializeDict, Type, Value, OwnedValue)]
#[zvariant(signature = "a{sv}", crate = "zbus::zvariant")]
pub struct RestoreRecord {
    pub interface: Option<String>,
    pub applied: Option<u32>,
    pub unchanged: Option<u32>,
    /// One line per item that could not be applied.
    pub failed: Option<Vec<String>>,
    /// One line per difference found when the interface was read back.
    pub mismatches: Option<Vec<String>>,
    pub duration_ms: Option<u32>,
    pub standby_released: Option<String>,
    /// "host" (asked by the host agent) or "link-appeared" (the agent saw the VF come back).
    pub trigger: Option<String>,
    pub unix_ms: Option<u64>,
    /// The network manager the VF was handed back to ("NetworkManager", "systemd-networkd",
    /// "ifupdown"), and what the agent did to give it back, once done; "failed: …" if it
    /// could not.
    pub owner: Option<String>,
    pub handed_back: Option<String>,
    /// Once the owner has had the link for a settle period: one line per difference from the
    /// saved state then (what the owner dropped or added). Empty: none.
    pub settled: Option<Vec<String>>,
}

/// A state on record in the agent's store.
#[derive(Clone, Debug, Default, PartialEq, Eq, SerializeDict, DeserializeDict, Type, Value, OwnedValue)]
#[zvariant(signature = "a{sv}", crate = "zbus::zvariant")]
pub struct StateSummary {
    pub interface: Option<String>,
    pub mac: Option<String>,
    pub digest: Option<String>,
    pub addresses: Option<u32>,
    pub routes: Option<u32>,
    pub neighbours: Option<u32>,
    pub captured_unix_ms: Option<u64>,
    /// The standby that carries it now, if one does.
    pub standby: Option<String>,
}
