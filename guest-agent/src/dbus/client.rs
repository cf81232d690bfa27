//! Asking the running agent what it did, over D-Bus: what `vfmig-guestd status` prints.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use zbus::proxy::CacheProperties;

use super::{Bus, RestoreRecord, SaveRecord, StateSummary, NAME};

#[zbus::proxy(
    interface = "org.vfmig.Guest1",
    default_service = "org.vfmig.Guest1",
    default_path = "/org/vfmig/Guest1"
)]
pub trait Guest1 {
    #[zbus(property)]
    fn version(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn phase(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn saved_interfaces(&self) -> zbus::Result<Vec<String>>;
    #[zbus(property)]
    fn last_save(&self) -> zbus::Result<SaveRecord>;
    #[zbus(property)]
    fn last_restore(&self) -> zbus::Result<RestoreRecord>;
    fn saved_state(&self, interface: &str) -> zbus::Result<StateSummary>;
    #[zbus(signal)]
    fn state_saved(&self, record: SaveRecord) -> zbus::Result<()>;
    #[zbus(signal)]
    fn state_restored(&self, record: RestoreRecord) -> zbus::Result<()>;
}

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("no vfmig-guestd is serving this bus (nothing owns {NAME})")]
    NotRunning,
    #[error("D-Bus: {0}")]
    Bus(zbus::Error),
}

// The bus error is in the message; as a source too, a chain would print it twice.
impl From<zbus::Error> for StatusError {
    fn from(e: zbus::Error) -> Self {
        Self::Bus(e)
    }
}

/// Everything the agent shows on the bus, read once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub version: String,
    pub phase: String,
    /// The states on record; one that does not validate is listed by name with no summary.
    pub saved: Vec<(String, Result<StateSummary, String>)>,
    pub last_save: SaveRecord,
    pub last_restore: RestoreRecord,
}

/// Reads the agent's status from `bus`.
pub async fn status(bus: &Bus) -> Result<Status, StatusError> {
    let conn = bus.builder()?.build().await?;
    let dbus = zbus::fdo::DBusProxy::new(&conn).await?;
    let name = NAME.try_into().map_err(zbus::Error::from)?;
    if !dbus.name_has_owner(name).await.map_err(zbus::Error::from)? {
        return Err(StatusError::NotRunning);
    }
    let guest = Guest1Proxy::builder(&conn)
        .cache_properties(CacheProperties::No)
        .build()
        .await?;
    let mut saved = Vec::new();
    for name in guest.saved_interfaces().await? {
        let summary = guest.saved_state(&name).await.map_err(|e| e.to_string());
        saved.push((name, summary));
    }
    Ok(Status {
        version: guest.version().await?,
        phase: guest.phase().await?,
        saved,
        last_save: guest.last_save().await?,
        last_restore: guest.last_restore().await?,
    })
}

fn ago(unix_ms: Option<u64>) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    match unix_ms {
        Some(ms) => format!(
            "{:.1} s ago",
            now.saturating_sub(Duration::from_millis(ms)).as_secs_f64()
        ),
        None => "at an unknown time".into(),
    }
}

fn or_unknown<T: ToString>(v: &Option<T>) -> String {
    v.as_ref().map_or_else(|| "?".into(), T::to_string)
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "vfmig-guestd {}: {}", self.version, self.phase)?;
        if self.saved.is_empty() {
            writeln!(f, "saved states: none")?;
        }
        for (name, summary) in &self.saved {
            match summary {
                Ok(s) => writeln!(
                    f,
                    "saved state {name}: mac {}, {} addresses, {} routes, {} neighbours, captured {}{}",
                    or_unknown(&s.mac),
                    or_unknown(&s.addresses),
                    or_unknown(&s.routes),
                    or_unknown(&s.neighbours),
                    ago(s.captured_unix_ms),
                    s.standby
                        .as_ref()
                        .map_or(String::new(), |sb| format!(", carried by standby {sb}")),
                )?,
                Err(e) => writeln!(f, "saved state {name}: unreadable: {e}")?,
            }
        }
        let s = &self.last_save;
        match &s.interface {
            None => writeln!(f, "last save: none since the agent started")?,
            Some(name) => writeln!(
                f,
                "last save: {name} {}: {} addresses, {} routes, {} neighbours, {}",
                ago(s.unix_ms),
                or_unknown(&s.addresses),
                or_unknown(&s.routes),
                or_unknown(&s.neighbours),
                or_unknown(&s.digest),
            )?,
        }
        let r = &self.last_restore;
        match &r.interface {
            None => writeln!(f, "last restore: none since the agent started")?,
            Some(name) => {
                let failed = r.failed.as_deref().unwrap_or_default();
                let mismatches = r.mismatches.as_deref().unwrap_or_default();
                writeln!(
                    f,
                    "last restore: {name} {} (trigger: {}): {} applied, {} unchanged, {} failed, {} mismatches, in {} ms",
                    ago(r.unix_ms),
                    or_unknown(&r.trigger),
                    or_unknown(&r.applied),
                    or_unknown(&r.unchanged),
                    failed.len(),
                    mismatches.len(),
                    or_unknown(&r.duration_ms),
                )?;
                for line in failed {
                    writeln!(f, "  failed: {line}")?;
                }
                for line in mismatches {
                    writeln!(f, "  differs: {line}")?;
                }
                if let (Some(owner), Some(done)) = (&r.owner, &r.handed_back) {
                    writeln!(f, "  {owner}: {done}")?;
                }
                if let Some(settled) = &r.settled {
                    writeln!(f, "  after settling: {} differences", settled.len())?;
                    for line in settled {
                        writeln!(f, "  differs after settling: {line}")?;
                    }
                }
            }
        }
        Ok(())
    }
}

impl Status {
    /// The same as JSON; absent records are `null`.
    pub fn to_json(&self) -> Value {
        let s = &self.last_save;
        let r = &self.last_restore;
        json!({
            "version": self.version,
            "phase": self.phase,
            "saved": self.saved.iter().map(|(name, summary)| match summary {
                Ok(x) => json!({
                    "interface": name, "mac": x.mac, "digest": x.digest,
                    "addresses": x.addresses, "routes": x.routes, "neighbours": x.neighbours,
                    "captured_unix_ms": x.captured_unix_ms, "standby": x.standby,
                }),
                Err(e) => json!({ "interface": name, "error": e }),
            }).collect::<Vec<_>>(),
            "last_save": s.interface.as_ref().map(|_| json!({
                "interface": s.interface, "digest": s.digest, "addresses": s.addresses,
                "routes": s.routes, "neighbours": s.neighbours, "standby": s.standby,
                "unix_ms": s.unix_ms,
            })),
            "last_restore": r.interface.as_ref().map(|_| json!({
                "interface": r.interface, "applied": r.applied, "unchanged": r.unchanged,
                "failed": r.failed, "mismatches": r.mismatches, "duration_ms": r.duration_ms,
                "standby_released": r.standby_released, "trigger": r.trigger, "unix_ms": r.unix_ms,
                "owner": r.owner, "handed_back": r.handed_back, "settled": r.settled,
            })),
        })
    }
}
