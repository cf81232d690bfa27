//! Where a migration stands: the source's and the destination's states, each variant carrying
//! what that state needs and nothing derived. They are what the journal holds, as they are.
//!
//! A state names what is to be done next, not what was done: it is written before its action
//! runs, and every action is safe to run again against what the VM and the guest say now, so
//! a run killed at any moment is taken up from its journal by running the same action again.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use vfmig_protocol::message::Restored;
use vfmig_protocol::MacAddr;

use super::plan::Fallback;
use crate::guest::Saved;
use crate::vm::{MigrationState, Params};

/// One VF of the migration, as found in the VM.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vf {
    pub id: String,
    pub mac: MacAddr,
    /// The spec that adds it again, if the operator gave one.
    pub device: Option<Value>,
}

/// How far a VF's unplug got.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Unplug {
    Plugged,
    /// `device_del` was issued: the guest may release it at any time, and it cannot be
    /// withdrawn.
    Requested,
    Gone,
}

/// A VF and what the run did with it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VfRun {
    pub vf: Vf,
    /// What the guest saved for it, by name and digest.
    pub saved: Option<Saved>,
    pub unplug: Unplug,
}

/// The switch-over gate (see [`super::gate`]) as the run found it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Gate {
    /// The hypervisor has no pause vfmig can hold (libvirt pauses and continues by itself);
    /// also a journal written before vfmig had the gate.
    #[default]
    None,
    /// QEMU pauses before its switch-over for vfmig's check; `was`: the capability as it was
    /// before vfmig set it, put back when the run ends.
    Pause { was: bool },
}

/// What every state of a started migration carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Migrating {
    /// The migration parameters as they were before vfmig changed any.
    pub params: Params,
    #[serde(default)]
    pub gate: Gate,
    pub vfs: Vec<VfRun>,
    /// The guest agent answered: a give-back asks it to take its state back.
    #[serde(default)]
    pub guest: bool,
}

/// The guest's DMA hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Hook {
    /// Never asked to track.
    Off,
    /// Asked to track the VFs (and, as far as anyone knows, still tracking).
    Tracking,
    /// Stopped after the unplug.
    Stopped,
}

/// Why a migration is given up (or refused), in words an operator can act on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Why {
    /// The hypervisor refused or failed a request; its own words.
    Hypervisor {
        error: String,
    },
    NoSuchVf {
        id: String,
        error: String,
    },
    NoVfMac {
        id: String,
    },
    /// Some VFs are primaries of QEMU's own failover, others are not.
    MixedFailover {
        primaries: Vec<String>,
    },
    /// No session with the guest agent.
    GuestUnusable {
        error: String,
    },
    /// The guest agent refused a request, or did not answer it in time (`silent`).
    Guest {
        request: String,
        error: String,
        silent: bool,
    },
    /// The DMA hook no longer tracks a VF while pre-copy runs with it plugged.
    HookLost {
        why: String,
    },
    /// The operator asked vfmig-host to stop.
    Cancelled {
        by: String,
    },
    /// The migration ended without completing, on its own or cancelled by someone else;
    /// the hypervisor's words.
    MigrationEnded {
        state: MigrationState,
        error: Option<String>,
    },
    /// A held pre-copy drained before the VFs were gone.
    HoldLeaked {
        remaining: u64,
    },
    /// `device_del` was refused for a VF.
    UnplugRefused {
        id: String,
        error: String,
    },
    /// The guest did not release every VF in time.
    UnplugMissed {
        after_ms: u64,
        plugged: Vec<String>,
    },
    CompletionTimeout {
        after_ms: u64,
    },
    /// QEMU paused before its switch-over with these VFs still in the VM.
    PluggedAtSwitchover {
        plugged: Vec<String>,
    },
}

impl Why {
    /// The guest agent has not answered in this run's last request: what is still asked of
    /// it gets a short wait, and stays queued for when it answers.
    pub fn guest_silent(&self) -> bool {
        matches!(self, Self::Guest { silent: true, .. })
    }
}

impl fmt::Display for Why {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Hypervisor { error } => write!(f, "the hypervisor failed: {error}"),
            Self::NoSuchVf { id, error } => write!(f, "no VF with id {id} in this VM ({error})"),
            Self::NoVfMac { id } => write!(
                f,
                "the VF {id} has no mac property (a vfio-pci VF): give its MAC (--vf-mac, or --descriptor)"
            ),
            Self::MixedFailover { primaries } => write!(
                f,
                "{} of the VFs are primaries of QEMU's own failover and the others are not: migrate them apart",
                primaries.join(", ")
            ),
            Self::GuestUnusable { error } => write!(f, "the guest agent cannot be used ({error})"),
            Self::Guest { request, error, .. } => write!(f, "the guest agent failed {request}: {error}"),
            Self::HookLost { why } => write!(f, "the DMA hook no longer tracks the VF ({why})"),
            Self::Cancelled { by } => write!(f, "cancelled by {by}"),
            Self::MigrationEnded { state, error } => {
                match error {
                    Some(e) => write!(f, "the migration {state}: {e}"),
                    None if *state == MigrationState::Cancelled => {
                        write!(f, "the migration was cancelled by someone other than vfmig (migrate_cancel on the hypervisor)")
                    }
                    None => write!(f, "the migration {state} without saying why"),
                }
            }
            Self::HoldLeaked { remaining } => write!(
                f,
                "pre-copy drained to {remaining} bytes while held, before the VF was unplugged"
            ),
            Self::UnplugRefused { id, error } => write!(f, "unplugging {id} was refused: {error}"),
            Self::UnplugMissed { after_ms, plugged } => write!(
                f,
                "the guest did not release {} within {after_ms} ms",
                plugged.join(", ")
            ),
            Self::CompletionTimeout { after_ms } => write!(f, "the migration did not complete within {after_ms} ms"),
            Self::PluggedAtSwitchover { plugged } => write!(
                f,
                "the VF {} was still plugged at switchover (QEMU paused before it; the migration was cancelled there)",
                plugged.join(", ")
            ),
        }
    }
}

/// The source side.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SourceState {
    /// Nothing read, nothing changed.
    Start,
    /// The VFs and parameters are read; next, the guest agent's hello.
    Negotiating {
        #[serde(flatten)]
        m: Migrating,
        fallback: Fallback,
    },
    /// The guest's DMA hook is to track every VF; `joining`: a migration may be running
    /// already (a run taken up), so a hook that cannot is a reason to give up, not to take
    /// the safe path.
    Tracking {
        #[serde(flatten)]
        m: Migrating,
        joining: bool,
    },
    /// Pre-copy runs (or is to start) with the VFs plugged, until its remainder is under the
    /// margin; then it is held. `ours`: this run may have started the migration QEMU shows;
    /// otherwise one that ended is an earlier run's, and a new one is started.
    Precopy {
        #[serde(flatten)]
        m: Migrating,
        #[serde(default)]
        ours: bool,
    },
    /// Held; the guest is to save every VF's state.
    Held {
        #[serde(flatten)]
        m: Migrating,
    },
    /// The safe path: no pre-copy with the VFs plugged; the guest is to save every VF's state
    /// before they are unplugged and pre-copy starts.
    SavingFirst {
        #[serde(flatten)]
        m: Migrating,
        hook: Hook,
    },
    /// Every VF is to be unplugged (`before_precopy`: no migration runs yet).
    Unplugging {
        #[serde(flatten)]
        m: Migrating,
        hook: Hook,
        before_precopy: bool,
    },
    /// The VFs are gone: stop the hook, put the parameters back, start the migration if it
    /// was not (`start`).
    Releasing {
        #[serde(flatten)]
        m: Migrating,
        hook: Hook,
        start: bool,
    },
    /// The migration runs to its end.
    Completing {
        #[serde(flatten)]
        m: Migrating,
        hook: Hook,
    },
    /// The VFs are QEMU's failover primaries: QEMU unplugs and re-plugs them, vfmig migrates
    /// within deadlines.
    QemuFailover {
        #[serde(flatten)]
        m: Migrating,
        pair: String,
    },
    /// The VM runs on the destination; the VFs' saved states are for its fresh VFs.
    Completed { vfs: Vec<VfRun> },
    /// Given up: everything is to be put back as it was.
    GivingBack {
        #[serde(flatten)]
        m: Migrating,
        hook: Hook,
        why: Why,
    },
    /// Given up and put back: the VM runs on the source as before. `replugged`: the VFs that
    /// had left and were plugged back.
    GaveBack {
        why: Why,
        report: Vec<String>,
        replugged: Vec<String>,
    },
    /// Refused before anything changed.
    Refused { why: Why },
    /// Putting back failed: the operator must act. Running again tries the give-back again.
    Stuck {
        #[serde(flatten)]
        m: Migrating,
        hook: Hook,
        why: Why,
        problem: String,
    },
}

impl SourceState {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Start => "start",
            Self::Negotiating { .. } => "negotiating",
            Self::Tracking { .. } => "tracking",
            Self::Precopy { .. } => "precopy",
            Self::Held { .. } => "held",
            Self::SavingFirst { .. } => "saving-first",
            Self::Unplugging { .. } => "unplugging",
            Self::Releasing { .. } => "releasing",
            Self::Completing { .. } => "completing",
            Self::QemuFailover { .. } => "qemu-failover",
            Self::Completed { .. } => "completed",
            Self::GivingBack { .. } => "giving-back",
            Self::GaveBack { .. } => "gave-back",
            Self::Refused { .. } => "refused",
            Self::Stuck { .. } => "stuck",
        }
    }

    /// The run has nothing more to do on the source.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            Self::Completed { .. } | Self::GaveBack { .. } | Self::Refused { .. } | Self::Stuck { .. }
        )
    }

    /// What a started migration carries, in every state that has it.
    pub fn into_migrating(self) -> Option<Migrating> {
        match self {
            Self::Negotiating { m, .. }
            | Self::Tracking { m, .. }
            | Self::Precopy { m, .. }
            | Self::Held { m }
            | Self::SavingFirst { m, .. }
            | Self::Unplugging { m, .. }
            | Self::Releasing { m, .. }
            | Self::Completing { m, .. }
            | Self::QemuFailover { m, .. }
            | Self::GivingBack { m, .. }
            | Self::Stuck { m, .. } => Some(m),
            Self::Start | Self::Completed { .. } | Self::GaveBack { .. } | Self::Refused { .. } => None,
        }
    }

    /// Where the DMA hook stands: asked to track from the tracking step until stopped.
    pub fn hook(&self) -> Hook {
        match self {
            Self::Tracking { .. } | Self::Precopy { .. } | Self::Held { .. } => Hook::Tracking,
            Self::SavingFirst { hook, .. }
            | Self::Unplugging { hook, .. }
            | Self::Releasing { hook, .. }
            | Self::Completing { hook, .. }
            | Self::GivingBack { hook, .. }
            | Self::Stuck { hook, .. } => *hook,
            Self::Start
            | Self::Negotiating { .. }
            | Self::QemuFailover { .. }
            | Self::Completed { .. }
            | Self::GaveBack { .. }
            | Self::Refused { .. } => Hook::Off,
        }
    }
}

/// A fresh VF on the destination and the saved state it takes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fresh {
    pub id: String,
    pub device: Value,
    pub mac: MacAddr,
    pub saved: Saved,
    pub plugged: bool,
    pub restored: Option<Restored>,
}

/// The destination side.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DestinationState {
    /// Every fresh VF is to be plugged.
    Plugging { vfs: Vec<Fresh> },
    /// The guest is to restore each saved state onto its fresh VF.
    Restoring { vfs: Vec<Fresh> },
    /// Done; the guest's reports.
    Restored { vfs: Vec<Fresh> },
    /// A plug or a restore failed: the operator must act. Running again tries again.
    Stuck {
        vfs: Vec<Fresh>,
        problem: DestinationProblem,
    },
}

/// What stopped the destination step.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "problem")]
pub enum DestinationProblem {
    PlugFailed { attempts: u32, error: String },
    RestoreFailed { error: String },
}

impl DestinationState {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Plugging { .. } => "plugging",
            Self::Restoring { .. } => "restoring",
            Self::Restored { .. } => "restored",
            Self::Stuck { .. } => "stuck",
        }
    }

    pub fn is_terminal(&self) -> bool {
        matches!(self, Self::Restored { .. } | Self::Stuck { .. })
    }

    pub fn vfs(&self) -> &[Fresh] {
        match self {
            Self::Plugging { vfs } | Self::Restoring { vfs } | Self::Restored { vfs } | Self::Stuck { vfs, .. } => vfs,
        }
    }
}
