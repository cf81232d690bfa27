//! Who owns the VF in the guest: the network manager that configures it (NetworkManager,
//! systemd-networkd, ifupdown) or nobody. Left alone, an owner fights a restore it does not
//! know about — DHCP on the fresh VF, a second address and lease, foreign state flushed — so
//! for each owner the agent needs the same three things, which [`NicOwner`] states: what the
//! owner was doing with the VF at save, to keep its hands off the VF until the restore is done,
//! and to hand the restored VF back so that the owner keeps managing it (DHCP renewals
//! included) and keeps what was restored.
//!
//! Keeping off a fresh VF is mostly udev's part (`udev-rules/75-vfmig-vf.rules` marks it
//! `NM_UNMANAGED=1` and `VFMIG_HOLD=1` while a restore is pending); an owner that udev's mark
//! does not reach (ifupdown's hotplug) holds itself off in [`NicOwner::hold`]. An owner that
//! takes the link back drops what it did not configure itself (networkd does, once, when it
//! takes a link): the agent puts that back once the owner has taken the link, and reads the
//! link again after a settle period. The agent's core sees only this module: which owner it
//! talks to is found here, at start and per link.

pub mod ifupdown;
pub mod networkd;
pub mod nm;

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use vfmig_protocol::mac::MacAddr;

/// An owner answers within this or is taken to be absent: it must not hold up an unplug.
pub const SNAPSHOT_WAIT: Duration = Duration::from_secs(2);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OwnerKind {
    NetworkManager,
    Networkd,
    Ifupdown,
}

impl fmt::Display for OwnerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OwnerKind::NetworkManager => "NetworkManager",
            OwnerKind::Networkd => "systemd-networkd",
            OwnerKind::Ifupdown => "ifupdown",
        })
    }
}

/// The link an owner is asked about: the kernel's index, and the name and MAC the owner
/// knows it by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkRef {
    pub index: u32,
    pub name: String,
    pub mac: MacAddr,
}

/// What the owner was doing with the VF when its state was saved; persisted with the pending
/// restore, so an agent restarted in between hands the VF back all the same.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "owner", content = "had", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Snapshot {
    NetworkManager(nm::Snapshot),
    Networkd(networkd::Snapshot),
    Ifupdown(ifupdown::Snapshot),
}

impl Snapshot {
    pub fn kind(&self) -> OwnerKind {
        match self {
            Snapshot::NetworkManager(_) => OwnerKind::NetworkManager,
            Snapshot::Networkd(_) => OwnerKind::Networkd,
            Snapshot::Ifupdown(_) => OwnerKind::Ifupdown,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OwnerError {
    #[error(transparent)]
    NetworkManager(#[from] nm::NmError),
    #[error(transparent)]
    Networkd(#[from] networkd::NetworkdError),
    #[error(transparent)]
    Ifupdown(#[from] ifupdown::IfupdownError),
    #[error("{0} is not running; nothing to hand back")]
    Absent(OwnerKind),
    #[error("{0} was asked to hand back what {1} had")]
    NotMine(OwnerKind, OwnerKind),
}

/// What the agent needs from a network manager in the guest.
#[async_trait]
pub trait NicOwner: Send + Sync {
    fn kind(&self) -> OwnerKind;
    /// Whether it runs in this guest now.
    async fn present(&self) -> bool;
    /// What it does with `link`; `None` when it does not manage it.
    async fn snapshot(&self, link: &LinkRef) -> Result<Option<Snapshot>, OwnerError>;
    /// Keeps its hands off the link named `name`, and off a fresh link given that name, until
    /// [`NicOwner::hand_back`]. Nothing to do where udev's mark keeps it off.
    async fn hold(&self, _name: &str, _before: &Snapshot) -> Result<(), OwnerError> {
        Ok(())
    }
    /// Gives the restored `link` back as `before` says it was, to be managed again; returns,
    /// with what was done for the record, once the owner has taken it — what it drops of the
    /// restored state as not its own, it has dropped by then, and the agent puts it back.
    async fn hand_back(&self, link: &LinkRef, before: &Snapshot) -> Result<String, OwnerError>;
    /// Waits until the owner has configured the link it took back (a DHCP lease included).
    async fn configured(&self, _link: &LinkRef) -> Result<(), OwnerError> {
        Ok(())
    }
}

/// The owners the agent works with: which of them may be asked is the operator's choice
/// (a test agent in a network namespace must not touch the machine's own), which one manages
/// a link is asked per link.
#[derive(Default)]
pub struct Owners(Vec<Box<dyn NicOwner>>);

impl Owners {
    pub fn new(owners: Vec<Box<dyn NicOwner>>) -> Self {
        Self(owners)
    }

    /// The owners running now, for the hello and the log.
    pub async fn running(&self) -> Vec<OwnerKind> {
        let mut found = Vec::new();
        for owner in &self.0 {
            if owner.present().await {
                found.push(owner.kind());
            }
        }
        found
    }

    fn of(&self, kind: OwnerKind) -> Option<&dyn NicOwner> {
        self.0.iter().find(|o| o.kind() == kind).map(|o| o.as_ref())
    }

    /// The first owner that manages `link`, and what it does with it. An owner that fails to
    /// answer, or answers late, is logged and passed over: never a reason to refuse the unplug.
    pub async fn snapshot(&self, link: &LinkRef) -> Option<Snapshot> {
        for owner in &self.0 {
            match tokio::time::timeout(SNAPSHOT_WAIT, owner.snapshot(link)).await {
                Ok(Ok(Some(snapshot))) => {
                    tracing::info!(owner = %owner.kind(), link = link.name, ?snapshot, "the VF's owner");
                    return Some(snapshot);
                }
                Ok(Ok(None)) => {}
                Ok(Err(e)) => tracing::warn!(owner = %owner.kind(), error = %e, "could not ask about the VF"),
                Err(_) => tracing::warn!(owner = %owner.kind(), wait = ?SNAPSHOT_WAIT, "did not answer about the VF"),
            }
        }
        tracing::info!(link = link.name, "no network manager manages the VF");
        None
    }

    pub async fn hold(&self, name: &str, before: &Snapshot) -> Result<(), OwnerError> {
        match self.of(before.kind()) {
            Some(owner) => owner.hold(name, before).await,
            None => Ok(()),
        }
    }

    pub async fn hand_back(&self, link: &LinkRef, before: &Snapshot) -> Result<String, OwnerError> {
        match self.of(before.kind()) {
            Some(owner) => owner.hand_back(link, before).await,
            None => Err(OwnerError::Absent(before.kind())),
        }
    }

    pub async fn configured(&self, link: &LinkRef, kind: OwnerKind) -> Result<(), OwnerError> {
        match self.of(kind) {
            Some(owner) => owner.configured(link).await,
            None => Ok(()),
        }
    }
}
