//! The guest seam: the requests a migration makes of the guest agent.
//!
//! The state machine asks the guest through [`Guest`] only; [`channel::ChannelGuest`] carries
//! the requests over the VM's virtio-serial port, and tests stand in for the guest with a fake.
//! Every request has a deadline given by the caller, so each wait is part of a stated budget;
//! a deadline of zero sends the request without waiting for its answer (a guest that already
//! missed one deadline still applies it, in order, once it answers again).

pub mod channel;

use std::time::Duration;

use serde::{Deserialize, Serialize};
use vfmig_protocol::message::{Restored, StandbyRequest, StateSaved, TrackedDevice};
use vfmig_protocol::{ErrorCode, MacAddr};

/// What the guest agent said of itself at the start of a session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestInfo {
    /// Its software and version, for the timeline.
    pub agent: String,
    /// The DMA hook is installed.
    pub kernel_hook: bool,
    /// The standby it would use, if it has one.
    pub standby: Option<String>,
    /// The network managers it found in the guest and works with.
    pub nic_owners: Vec<String>,
}

/// A VF's state as the guest saved it: named by the interface and digest the guest returned,
/// never located by the host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Saved {
    pub interface: String,
    pub digest: String,
    /// Where the guest says it keeps it, for an operator finishing by hand.
    #[serde(default)]
    pub location: Option<String>,
}

impl Saved {
    pub fn of(s: &StateSaved) -> Self {
        Self {
            interface: s.interface.clone(),
            digest: s.digest.clone(),
            location: s.location.clone(),
        }
    }

    /// The saved state as a message names it: interface, digest, and where the guest keeps it.
    pub fn describe(&self) -> String {
        let short = self.digest.get(..19).unwrap_or(&self.digest);
        match &self.location {
            Some(at) => format!("{} ({short}) at {at} in the guest", self.interface),
            None => format!("{} ({short}) in the guest agent's store", self.interface),
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum GuestError {
    /// No answer within the deadline: the agent is frozen, busy, or gone.
    #[error("the guest agent did not answer {request} within {:.1} s", after.as_secs_f64())]
    Silent { request: &'static str, after: Duration },
    /// The agent answered with an error.
    #[error("the guest agent refused {request}: {message}")]
    Refused {
        request: &'static str,
        code: ErrorCode,
        message: String,
    },
    /// The channel broke and could not be opened again.
    #[error("the guest channel is lost: {0}")]
    Lost(String),
    /// The agent speaks no common version, or answered outside the protocol.
    #[error("the guest agent cannot be used: {0}")]
    Unusable(String),
}

impl GuestError {
    /// The agent did not answer in time (rather than answering no).
    pub fn is_silent(&self) -> bool {
        matches!(self, Self::Silent { .. } | Self::Lost(_))
    }

    /// The agent has no interface for the VF: its driver let the VF go (an eject under way).
    pub fn no_such_interface(&self) -> bool {
        matches!(
            self,
            Self::Refused {
                code: ErrorCode::NoSuchInterface,
                ..
            }
        )
    }
}

/// The guest agent's answer to a `keep`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Kept {
    /// The state put back and forgotten; none when nothing was saved.
    pub saved: Option<String>,
    pub standby_released: Option<String>,
    pub failed: Vec<String>,
}

/// The guest agent's requests.
// vfmig-host runs the state machine on one thread; no caller needs the futures to be Send.
#[allow(async_fn_in_trait)]
pub trait Guest {
    /// Opens a session: sync and hello.
    async fn hello(&mut self, deadline: Duration) -> Result<GuestInfo, GuestError>;
    /// Has the DMA hook track the VF with `mac`; every device it tracks now.
    async fn track_dma(&mut self, mac: MacAddr, deadline: Duration) -> Result<Vec<TrackedDevice>, GuestError>;
    /// Stops the DMA hook; what it tracked, with its counters.
    async fn stop_dma(&mut self, deadline: Duration) -> Result<Vec<TrackedDevice>, GuestError>;
    /// Saves the VF's state for an unplug due within `unplug`, moving it to a standby as asked;
    /// a state restore cannot wholly put back is refused unless `accept_loss`.
    async fn save(
        &mut self,
        mac: MacAddr,
        standby: &StandbyRequest,
        accept_loss: bool,
        unplug: Duration,
        deadline: Duration,
    ) -> Result<StateSaved, GuestError>;
    /// Restores `saved` onto the link with `onto` (giving it the saved MAC if `restore_mac`).
    async fn restore(
        &mut self,
        saved: &Saved,
        onto: MacAddr,
        restore_mac: bool,
        deadline: Duration,
    ) -> Result<Restored, GuestError>;
    /// The VF with `mac` stays: what was saved for it goes back onto it and is forgotten.
    async fn keep(&mut self, mac: MacAddr, saved: Option<&Saved>, deadline: Duration) -> Result<Kept, GuestError>;
}
