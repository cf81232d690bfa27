//! What the agent did, for whoever watches inside the guest (the D-Bus service). The host
//! learns the same from the replies to its requests; this is the guest's own record of it.

use tokio::sync::broadcast;
use vfmig_protocol::message::{Phase, Restored, StateSaved};

use crate::owner::OwnerKind;

/// Who started a restore.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// The host agent's `restore` request.
    Host,
    /// A link with a saved MAC appeared and the agent restored onto it by itself.
    LinkAppeared,
}

impl Trigger {
    pub fn name(self) -> &'static str {
        match self {
            Trigger::Host => "host",
            Trigger::LinkAppeared => "link-appeared",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Phase(Phase),
    Saved(StateSaved),
    Restored {
        report: Restored,
        by: Trigger,
    },
    /// After a restore, what the agent did to give the VF back to its owner (or why it could
    /// not): it runs after the host has its reply, as a DHCP lease can take seconds.
    HandedBack {
        interface: String,
        owner: OwnerKind,
        outcome: Result<String, String>,
    },
    /// A settle period after the hand-back, what differs from the saved state: what the owner
    /// dropped or added once it had the link. Empty when nothing does.
    Settled {
        interface: String,
        settled: Vec<String>,
    },
}

/// A watcher that falls this far behind is told it lagged: the agent never waits for one.
const BACKLOG: usize = 32;

/// The agent's side of the event stream; events nobody listens to are dropped.
#[derive(Clone)]
pub struct Events(broadcast::Sender<Event>);

impl Default for Events {
    fn default() -> Self {
        Self(broadcast::channel(BACKLOG).0)
    }
}

impl Events {
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.0.subscribe()
    }

    pub(crate) fn emit(&self, event: Event) {
        // An error means only that nobody is listening.
        let _ = self.0.send(event);
    }
}
