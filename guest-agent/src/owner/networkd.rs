//! systemd-networkd (with netplan or plain `.network` files), when it manages the VF.
//!
//! networkd has no runtime "leave this link alone" call, and when it takes a link it drops the
//! addresses, routes, rules and neighbours it did not configure — the restored state — and runs
//! DHCP on it. So it is kept off the fresh VF by the package's `00-vfmig-hold.network`, which
//! matches the `VFMIG_HOLD=1` that udev sets while a restore is pending. The hand-back lifts
//! the mark (a udev "change": the restore is no longer pending) and networkd takes the link as
//! it would at boot, by the user's configuration, unchanged; the agent then puts back what
//! networkd dropped as foreign, which it leaves alone from then on (it drops foreign state once,
//! when it takes a link). Its DHCP client ID follows the machine and the slot, not the MAC, so
//! it takes the same lease again.
//!
//! `KeepConfiguration=` was measured and not taken: `yes` keeps everything but has networkd
//! make its DHCP address permanent and drop its route metric (until its next reload), and
//! `static` and `dhcp` drop hand-made routes and neighbours all the same.
//!
//! What networkd does with a link is read from its state files (`/run/systemd/netif/links/`,
//! the files `networkctl` and `sd-network` read).

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{LinkRef, NicOwner, OwnerError, OwnerKind};
use crate::dbus::{connect_to, Bus};

const SERVICE: &str = "org.freedesktop.network1";
/// networkd takes a link within a fraction of a second of udev's event (measured 130–180 ms
/// under TCG); past this it is told to.
const TAKE_WAIT: Duration = Duration::from_secs(5);
/// A DHCP lease can take its server's time: NetworkManager's activation waits 45 s.
const CONFIGURE_WAIT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(20);

#[zbus::proxy(
    interface = "org.freedesktop.network1.Manager",
    default_service = "org.freedesktop.network1",
    default_path = "/org/freedesktop/network1",
    gen_blocking = false
)]
trait Manager {
    fn reconfigure_link(&self, ifindex: i32) -> zbus::Result<()>;
}

/// What networkd did with the VF when it was saved.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Snapshot {
    /// networkd's word for where it was with the link (`configured`, `configuring`, …).
    pub state: String,
    /// The `.network` file that matched it.
    pub network_file: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum NetworkdError {
    #[error("systemd-networkd over D-Bus: {0}")]
    Bus(#[from] zbus::Error),
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: std::io::Error },
    #[error("{name} is {state} in systemd-networkd, not {wanted:?}, after {waited:?}")]
    NotYet {
        name: String,
        state: String,
        wanted: Want,
        waited: Duration,
    },
}

/// systemd-networkd, as an owner of NICs.
pub struct Networkd {
    pub bus: Bus,
    /// Where networkd writes each link's state (`/run/systemd/netif`).
    pub state_dir: PathBuf,
    /// Where udev is told a link changed (`/sys/class/net`).
    pub sysfs_net: PathBuf,
}

impl Networkd {
    pub fn new(bus: Bus) -> Self {
        Self {
            bus,
            state_dir: PathBuf::from("/run/systemd/netif"),
            sysfs_net: PathBuf::from("/sys/class/net"),
        }
    }

    /// networkd's state file for link `index`, as `KEY=value` pairs; `None` if it has none
    /// (networkd does not know the link, or does not run).
    fn link_state(&self, index: u32) -> Option<HashMap<String, String>> {
        let text = std::fs::read_to_string(self.state_dir.join("links").join(index.to_string())).ok()?;
        Some(parse_env(&text))
    }

    fn admin_state(&self, index: u32) -> String {
        self.link_state(index)
            .and_then(|mut s| s.remove("ADMIN_STATE"))
            .unwrap_or_else(|| "unknown".into())
    }
}

/// `KEY=value` lines, as systemd's environment-style state files have them.
fn parse_env(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

/// Managed, in networkd's words: a `.network` matched and networkd did not leave the link be.
fn managed(state: &str) -> bool {
    !matches!(state, "unmanaged" | "pending" | "linger" | "unknown")
}

#[async_trait::async_trait]
impl NicOwner for Networkd {
    fn kind(&self) -> OwnerKind {
        OwnerKind::Networkd
    }

    async fn present(&self) -> bool {
        matches!(connect_to(&self.bus, SERVICE).await, Ok(Some(_)))
    }

    async fn snapshot(&self, link: &LinkRef) -> Result<Option<super::Snapshot>, OwnerError> {
        let Some(mut state) = self.link_state(link.index) else {
            return Ok(None);
        };
        let admin = state.remove("ADMIN_STATE").unwrap_or_default();
        let Some(file) = state.remove("NETWORK_FILE").filter(|_| managed(&admin)) else {
            return Ok(None);
        };
        Ok(Some(super::Snapshot::Networkd(Snapshot {
            state: admin,
            network_file: PathBuf::from(file),
        })))
    }

    async fn hand_back(&self, link: &LinkRef, before: &super::Snapshot) -> Result<String, OwnerError> {
        let super::Snapshot::Networkd(before) = before else {
            return Err(OwnerError::NotMine(self.kind(), before.kind()));
        };
        let started = Instant::now();
        // udev runs its rules again: the restore is no longer pending, so the hold goes, and
        // networkd takes the link by itself.
        let uevent = self.sysfs_net.join(&link.name).join("uevent");
        std::fs::write(&uevent, "change").map_err(|error| NetworkdError::Io { path: uevent, error })?;
        if self.wait_for(link, Want::Taken, TAKE_WAIT).await.is_err() {
            let Some(conn) = connect_to(&self.bus, SERVICE).await.map_err(NetworkdError::from)? else {
                return Err(OwnerError::Absent(self.kind()));
            };
            let index = i32::try_from(link.index).unwrap_or(i32::MAX);
            let manager = ManagerProxy::new(&conn).await.map_err(NetworkdError::from)?;
            manager.reconfigure_link(index).await.map_err(NetworkdError::from)?;
            self.wait_for(link, Want::Taken, TAKE_WAIT).await?;
        }
        Ok(format!(
            "{} taken back by systemd-networkd with {} ({} ms)",
            link.name,
            before.network_file.display(),
            started.elapsed().as_millis()
        ))
    }

    async fn configured(&self, link: &LinkRef) -> Result<(), OwnerError> {
        self.wait_for(link, Want::Configured, CONFIGURE_WAIT).await?;
        Ok(())
    }
}

/// What the hand-back waits for networkd to reach.
#[derive(Clone, Copy, Debug)]
pub enum Want {
    /// It has taken the link: past the point where it drops foreign state.
    Taken,
    /// It has the link configured as its `.network` says, DHCP lease included.
    Configured,
}

impl Want {
    fn reached(self, state: &str) -> bool {
        match self {
            Want::Taken => matches!(state, "configuring" | "configured"),
            Want::Configured => state == "configured",
        }
    }
}

impl Networkd {
    /// Waits until networkd's state for `link` reaches `want`; "failed" ends the wait.
    async fn wait_for(&self, link: &LinkRef, want: Want, wait: Duration) -> Result<(), NetworkdError> {
        let started = Instant::now();
        loop {
            let state = self.admin_state(link.index);
            if want.reached(&state) {
                return Ok(());
            }
            if state == "failed" || started.elapsed() > wait {
                return Err(NetworkdError::NotYet {
                    name: link.name.clone(),
                    state,
                    wanted: want,
                    waited: started.elapsed(),
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_file_reads_as_networkd_writes_it() {
        let text = "# This is private data. Do not parse.\nADMIN_STATE=configured\nOPER_STATE=routable\n\
                    NETWORK_FILE=/run/systemd/network/10-netplan-all-en.network\n";
        let state = parse_env(text);
        assert_eq!(state["ADMIN_STATE"], "configured");
        assert_eq!(state["NETWORK_FILE"], "/run/systemd/network/10-netplan-all-en.network");
        assert!(!state.contains_key("# This is private data. Do not parse."));
        assert!(managed("configured") && managed("configuring") && managed("failed"));
        assert!(!managed("unmanaged") && !managed("pending"));
    }
}
