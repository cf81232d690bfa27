//! systemd-networkd (with netplan or plain `.network` files), when it manages the VF.
//!
//! networkd has no runtime "leave this link alone" call, and when it takes a link it drops the
//! addresses, routes and neighbours it did not configure — the restored state — and runs DHCP
//! on it. So it is kept off the fresh VF by the package's `00-vfmig-hold.network`, which
//! matches the `VFMIG_HOLD=1` that udev sets while a restore is pending; and the restored VF is
//! handed back with a runtime drop-in for the `.network` the VF had (`KeepConfiguration=yes`)
//! in place while networkd takes it: networkd then adopts what it finds, takes its DHCP lease
//! again (its client ID follows the machine and the slot, not the MAC) and manages the link as
//! before. The drop-in goes once the link is configured; networkd keeps what it read, and the
//! user's configuration is never edited.
//!
//! What networkd does with a link is read from its state files (`/run/systemd/netif/links/`,
//! the files `networkctl` and `sd-network` read), its reload over D-Bus.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{LinkRef, NicOwner, OwnerError, OwnerKind};
use crate::dbus::{connect_to, Bus};

const SERVICE: &str = "org.freedesktop.network1";
/// A DHCP lease can take its server's time: networkd's own wait-online default is 2 minutes,
/// NetworkManager's activation 45 s.
const CONFIGURE_WAIT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(100);
/// The drop-in's name: late in the order, so it wins over the user's own drop-ins.
const KEEP_DROPIN: &str = "99-vfmig-keep.conf";
const KEEP: &str = "# Written by vfmig-guestd while networkd takes back a VF it restored; removed after.\n\
[Network]\nKeepConfiguration=yes\n";

#[zbus::proxy(
    interface = "org.freedesktop.network1.Manager",
    default_service = "org.freedesktop.network1",
    default_path = "/org/freedesktop/network1",
    gen_blocking = false
)]
trait Manager {
    fn reload(&self) -> zbus::Result<()>;
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
    #[error("{name} is {state} in systemd-networkd, not configured, after {waited:?}")]
    NotConfigured {
        name: String,
        state: String,
        waited: Duration,
    },
}

/// systemd-networkd, as an owner of NICs.
pub struct Networkd {
    pub bus: Bus,
    /// Where networkd writes each link's state (`/run/systemd/netif`).
    pub state_dir: PathBuf,
    /// Where runtime `.network` drop-ins go (`/run/systemd/network`).
    pub runtime_dir: PathBuf,
    /// Where udev is told a link changed (`/sys/class/net`).
    pub sysfs_net: PathBuf,
}

impl Networkd {
    pub fn new(bus: Bus) -> Self {
        Self {
            bus,
            state_dir: PathBuf::from("/run/systemd/netif"),
            runtime_dir: PathBuf::from("/run/systemd/network"),
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

    fn dropin(&self, network_file: &Path) -> PathBuf {
        let name = network_file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        self.runtime_dir.join(format!("{name}.d")).join(KEEP_DROPIN)
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

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> NetworkdError + '_ {
    move |error| NetworkdError::Io {
        path: path.to_owned(),
        error,
    }
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
        let Some(conn) = connect_to(&self.bus, SERVICE).await.map_err(NetworkdError::from)? else {
            return Err(OwnerError::Absent(self.kind()));
        };
        let manager = ManagerProxy::new(&conn).await.map_err(NetworkdError::from)?;
        let dropin = self.dropin(&before.network_file);
        let dir = dropin.parent().unwrap_or(&self.runtime_dir);
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        std::fs::write(&dropin, KEEP).map_err(io(&dropin))?;
        let outcome = self.take_back(&manager, link).await;
        // Gone whatever happened: networkd keeps what it read, and a drop-in left behind would
        // change how it treats every link that file matches at its next reload.
        let removed = std::fs::remove_file(&dropin).map_err(io(&dropin));
        let _ = std::fs::remove_dir(dir);
        let took = outcome?;
        removed?;
        Ok(format!(
            "{} managed by systemd-networkd again with {}, what was restored kept ({} ms)",
            link.name,
            before.network_file.display(),
            took.as_millis()
        ))
    }
}

impl Networkd {
    /// Has networkd read the drop-in, lifts udev's hold mark off the link, and waits until
    /// networkd has configured it; how long that took.
    async fn take_back(&self, manager: &ManagerProxy<'_>, link: &LinkRef) -> Result<Duration, NetworkdError> {
        let started = Instant::now();
        manager.reload().await?;
        // udev runs its rules again: the restore is no longer pending, so the hold goes.
        let uevent = self.sysfs_net.join(&link.name).join("uevent");
        std::fs::write(&uevent, "change").map_err(io(&uevent))?;
        crate::netstate::settled(link.index, CONFIGURE_WAIT).await;
        // Told explicitly: whether networkd acts on udev's change by itself differs by version.
        manager
            .reconfigure_link(i32::try_from(link.index).unwrap_or(i32::MAX))
            .await?;
        loop {
            let state = self.admin_state(link.index);
            match state.as_str() {
                "configured" => return Ok(started.elapsed()),
                "failed" => {}
                _ if started.elapsed() < CONFIGURE_WAIT => {
                    tokio::time::sleep(POLL).await;
                    continue;
                }
                _ => {}
            }
            return Err(NetworkdError::NotConfigured {
                name: link.name.clone(),
                state,
                waited: started.elapsed(),
            });
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

    #[test]
    fn the_dropin_is_named_for_the_file_that_matched() {
        let n = Networkd::new(Bus::System);
        assert_eq!(
            n.dropin(Path::new("/etc/systemd/network/50-vf.network")),
            Path::new("/run/systemd/network/50-vf.network.d/99-vfmig-keep.conf")
        );
    }
}
