//! What the operator asked for: the VFs, where to, the policy and the deadlines.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use vfmig_protocol::message::StandbyRequest;
use vfmig_protocol::MacAddr;

use crate::guest::Saved;

/// How the source side proceeds when the guest agent cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fallback {
    /// Refuse to migrate; change nothing.
    Refuse,
    /// Unplug the VF before pre-copy (the upstream behaviour) and migrate without saving state.
    UnplugFirst,
}

/// Every wait a migration states. Each bounds the whole of its step, retries included.
#[derive(Clone, Debug)]
pub struct Deadlines {
    /// Sync and hello with the guest agent.
    pub agent: Duration,
    /// The guest's DMA hook taking up every VF, and the guest saving every VF's state.
    pub prepare: Duration,
    /// `device_del` to DEVICE_DELETED, for every VF.
    pub unplug: Duration,
    /// Release to the migration's end.
    pub completion: Duration,
    /// The guest restoring onto the fresh VFs (including waiting for their links).
    pub restore: Duration,
    /// Putting the VM back as it was after a migration is given up: cancelling, waiting for a
    /// VF the guest releases late, plugging VFs back, the guest taking its state back.
    pub giveback: Duration,
}

impl Default for Deadlines {
    fn default() -> Self {
        Self {
            agent: Duration::from_secs(10),
            prepare: Duration::from_secs(10),
            unplug: Duration::from_secs(10),
            completion: Duration::from_secs(300),
            restore: Duration::from_secs(30),
            giveback: Duration::from_secs(30),
        }
    }
}

/// One VF to migrate.
#[derive(Clone, Debug)]
pub struct VfPlan {
    /// Its device id in the hypervisor (`-device …,id=ID`).
    pub id: String,
    /// The spec that adds it again (QMP `device_add` arguments), for plugging it back on the
    /// source if the migration fails after the unplug.
    pub device: Option<Value>,
    /// Its MAC, for a device that has no `mac` property to ask for (a vfio-pci VF: the PF
    /// gave it its MAC).
    pub mac: Option<MacAddr>,
}

/// The source side's instructions.
#[derive(Clone, Debug)]
pub struct Plan {
    pub vfs: Vec<VfPlan>,
    /// Where the migration goes: a QEMU URI, a libvirt destination.
    pub uri: String,
    pub fallback: Fallback,
    pub deadlines: Deadlines,
    /// Hold when pre-copy's remainder falls under this (at most a quarter of RAM is used).
    pub hold_margin: u64,
    /// Where the run keeps its journal, so that a run killed half-way can be run again and
    /// take up where it stopped; `None` runs without one.
    pub journal: Option<PathBuf>,
    /// Whether the guest moves each VF's addresses to a standby NIC for the VF gap.
    pub standby: StandbyRequest,
    /// Go ahead when the guest's state holds what restore cannot put back (an upper device,
    /// a multipath leg, …), which the guest then names; otherwise the migration is refused
    /// before the unplug.
    pub accept_loss: bool,
}

/// A fresh VF for the destination, and the saved state it takes.
#[derive(Clone, Debug)]
pub struct FreshVf {
    /// Its id in the hypervisor, as the spec adds it.
    pub id: String,
    /// The spec that adds it: QMP `device_add` arguments, or `{"xml": …}` for libvirt.
    pub device: Value,
    /// Its MAC when `device` has none (a vfio-pci VF, given its MAC through the PF).
    pub mac: Option<MacAddr>,
    /// The saved state to restore onto it.
    pub saved: Saved,
}

/// The destination side's instructions.
#[derive(Clone, Debug)]
pub struct PlugSpec {
    pub vfs: Vec<FreshVf>,
    /// Give each fresh VF the saved MAC too.
    pub restore_mac: bool,
    /// `device_add` attempts per VF.
    pub attempts: u32,
    pub deadlines: Deadlines,
}
