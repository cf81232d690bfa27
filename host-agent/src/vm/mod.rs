//! The VM seam: what a migration needs from the hypervisor, whoever runs the VM.
//!
//! The migration state machine sees QEMU only through [`Vm`]: start, watch and cancel the
//! outgoing migration, read and set its parameters, find, remove, wait for and add devices,
//! where the guest sees a device and with which MAC, and whether the VM runs. QMP is the first
//! implementation ([`qmp::QmpVm`]); libvirt, which owns the monitor on its hosts, is the second.
//! Tests stand in for QEMU with a fake of this trait.
//!
//! Migration states are an enum here; only a backend reads the hypervisor's own spelling.

#[cfg(feature = "libvirt")]
pub mod libvirt;
pub mod monitor;
pub mod qemu;
pub mod qmp;

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use vfmig_protocol::MacAddr;

/// Where an outgoing migration stands, as QEMU names its states.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MigrationState {
    Setup,
    Active,
    /// QEMU's own failover waits for the guest to release its primary.
    WaitUnplug,
    PreSwitchover,
    Device,
    Cancelling,
    Cancelled,
    Completed,
    Failed,
    /// A state this build does not know (postcopy, COLO, a newer QEMU's): treated as running.
    #[serde(other)]
    Other,
}

impl MigrationState {
    /// The migration is over, one way or another.
    pub fn is_finished(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }

    /// The name as QEMU spells it, for messages and the timeline.
    pub fn name(self) -> &'static str {
        match self {
            Self::Setup => "setup",
            Self::Active => "active",
            Self::WaitUnplug => "wait-unplug",
            Self::PreSwitchover => "pre-switchover",
            Self::Device => "device",
            Self::Cancelling => "cancelling",
            Self::Cancelled => "cancelled",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Other => "other",
        }
    }
}

impl fmt::Display for MigrationState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// RAM figures of a running or finished migration.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ram {
    pub transferred: u64,
    pub remaining: u64,
    pub total: u64,
    /// Full passes over RAM completed; at least 1 means every page was sent once.
    pub dirty_sync_count: u64,
}

/// An outgoing migration as the hypervisor reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Migration {
    pub state: MigrationState,
    pub ram: Option<Ram>,
    /// The hypervisor's own words for why it failed.
    pub error: Option<String>,
    /// Milliseconds since it started (final once completed).
    pub total_time_ms: Option<u64>,
    /// Milliseconds the guest was stopped (once completed).
    pub downtime_ms: Option<u64>,
}

/// The migration parameters vfmig changes, as QEMU names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Params {
    /// Bytes per second.
    pub max_bandwidth: u64,
    /// Milliseconds.
    pub downtime_limit: u64,
}

/// A change to some of the parameters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ParamsChange {
    pub max_bandwidth: Option<u64>,
    pub downtime_limit: Option<u64>,
}

impl From<Params> for ParamsChange {
    fn from(p: Params) -> Self {
        Self {
            max_bandwidth: Some(p.max_bandwidth),
            downtime_limit: Some(p.downtime_limit),
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum VmError {
    /// The connection to the hypervisor is gone: the run stops where it is, its journal
    /// intact, and is taken up again once connected.
    #[error("lost the connection to the hypervisor: {0}")]
    Lost(String),
    /// The hypervisor refused or failed a request; its own words.
    #[error("{request}: {error}")]
    Refused { request: String, error: String },
    /// No such device in the VM.
    #[error("no device {0} in this VM")]
    NoDevice(String),
}

impl VmError {
    pub fn is_lost(&self) -> bool {
        matches!(self, Self::Lost(_))
    }
}

/// What a migration needs from the hypervisor.
///
/// A device is named by its id in the hypervisor (QEMU's `-device …,id=`, libvirt's alias);
/// its spec (to add it) is the backend's own description, as JSON. Every method is safe to
/// call again after an interruption: removing a device already gone or already being
/// removed is not an error.
// vfmig-host runs the state machine on one thread; no caller needs the futures to be Send.
#[allow(async_fn_in_trait)]
pub trait Vm {
    /// The outgoing migration, if one was started.
    async fn migration(&self) -> Result<Option<Migration>, VmError>;
    /// Starts the outgoing migration to `target` (a QEMU URI, a libvirt destination).
    async fn start_migration(&self, target: &str) -> Result<(), VmError>;
    async fn cancel_migration(&self) -> Result<(), VmError>;
    async fn params(&self) -> Result<Params, VmError>;
    async fn set_params(&self, change: ParamsChange) -> Result<(), VmError>;
    async fn device_present(&self, id: &str) -> Result<bool, VmError>;
    /// Asks the guest to release the device (hot-unplug); it is gone once the guest let go.
    async fn remove_device(&self, id: &str) -> Result<(), VmError>;
    /// Waits up to `deadline` for the device to be gone; whether it is.
    async fn wait_device_gone(&self, id: &str, deadline: Duration) -> Result<bool, VmError>;
    async fn add_device(&self, spec: &Value) -> Result<(), VmError>;
    /// Whether the device present as `id` is the one `spec` adds. A destination can hold,
    /// under the same id, the device the source had: libvirt starts it from the source's
    /// definition, taken before the unplug.
    async fn device_is(&self, id: &str, spec: &Value) -> Result<bool, VmError>;
    /// The device's PCI address as the guest sees it (`0000:01:00.0`), from the hypervisor's
    /// view of the guest-programmed buses, not the guest's word.
    async fn guest_pci_address(&self, id: &str) -> Result<Option<String>, VmError>;
    /// The device's MAC; `None` for a device without one (a vfio-pci VF, whose MAC the PF set).
    async fn device_mac(&self, id: &str) -> Result<Option<MacAddr>, VmError>;
    /// Whether the VM's vCPUs run (a VM paused for a switch-over does not).
    async fn running(&self) -> Result<bool, VmError>;
    /// The standby a device is paired with for QEMU's own virtio-net failover, if it is.
    async fn failover_pair(&self, id: &str) -> Result<Option<String>, VmError>;
    /// Whether the hypervisor pauses a migration before its switch-over for vfmig to let it
    /// go on (QEMU's `pause-before-switchover`), or `None` where vfmig cannot hold it there.
    async fn switchover_gate(&self) -> Result<Option<bool>, VmError>;
    /// Turns that pause on or off; refused while a migration runs.
    async fn set_switchover_gate(&self, on: bool) -> Result<(), VmError>;
    /// Lets a migration paused before its switch-over go on. Not an error if it already did.
    async fn continue_switchover(&self) -> Result<(), VmError>;
}
