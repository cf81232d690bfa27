//! How QMP commands reach a VM's QEMU: a monitor socket of vfmig's own ([`OwnMonitor`]: bare
//! QEMU, or a second monitor beside a manager's), or libvirt's passthrough to the monitor it
//! owns (see [`super::libvirt`]). The commands and their reading are the same either way
//! ([`super::qemu::Qemu`]).

use std::cell::RefCell;

use serde_json::Value;
use tokio::sync::broadcast::error::TryRecvError;
use tokio::sync::broadcast::Receiver;

use crate::qmp::{Event, Qmp, QmpError};

// vfmig-host runs the state machine on one thread; no caller needs the futures to be Send.
#[allow(async_fn_in_trait)]
pub trait Monitor {
    /// Runs a QMP command; its `return`.
    async fn execute(&self, command: &str, arguments: Option<Value>) -> Result<Value, QmpError>;
    /// Whether QEMU reported device `id` deleted since the last look, where the monitor
    /// delivers events; a removal is also found by asking for the device.
    fn device_deleted(&self, _id: &str) -> bool {
        false
    }
}

/// A QMP monitor socket vfmig-host connected to itself.
pub struct OwnMonitor<'a> {
    qmp: &'a Qmp,
    /// Subscribed when connected, so no DEVICE_DELETED is missed between a removal and its
    /// wait.
    events: RefCell<Receiver<Event>>,
}

impl<'a> OwnMonitor<'a> {
    pub fn new(qmp: &'a Qmp) -> Self {
        let events = RefCell::new(qmp.events());
        Self { qmp, events }
    }
}

impl Monitor for OwnMonitor<'_> {
    async fn execute(&self, command: &str, arguments: Option<Value>) -> Result<Value, QmpError> {
        self.qmp.execute(command, arguments).await
    }

    fn device_deleted(&self, id: &str) -> bool {
        let mut events = self.events.borrow_mut();
        loop {
            match events.try_recv() {
                Ok(e) if e.event == "DEVICE_DELETED" && e.data.get("device").and_then(Value::as_str) == Some(id) => {
                    return true
                }
                Ok(_) | Err(TryRecvError::Lagged(_)) => continue,
                Err(TryRecvError::Empty | TryRecvError::Closed) => return false,
            }
        }
    }
}
