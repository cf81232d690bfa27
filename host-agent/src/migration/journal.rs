//! The source side's journal: what vfmig-host has changed in QEMU and asked of the guest, on
//! disk, so that a host agent killed at any moment can be run again and take up where things
//! stand (see [`super::resume`]).
//!
//! QEMU is the truth about the migration and the VF; the journal only adds what QEMU cannot
//! say: the migration parameters as they were before vfmig changed them, the VF's `device_add`
//! arguments, whether the guest's DMA hook tracks the VF, whether an unplug was requested, and
//! the name the guest saved its state under. Each fact is written *before* the change it
//! describes, atomically (temporary file, fsync, rename, fsync of the directory), so a kill
//! leaves the old journal or the new one. A journal that does not validate is refused with a
//! reason and nothing is changed: the operator decides, vfmig does not guess.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use vfmig_protocol::MacAddr;

use super::timeline::Phase;

/// The journal's layout; a journal of another format is refused.
pub const FORMAT: u32 = 1;
/// A journal is a few hundred bytes; anything near this is not one.
const MAX_JOURNAL: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("journal {path} is not a vfmig journal ({reason}); nothing was changed — inspect it, then remove it to start afresh")]
    Invalid { path: PathBuf, reason: String },
    #[error("journal {path} is of format {found}, this vfmig-host reads format {FORMAT}; nothing was changed")]
    UnknownFormat { path: PathBuf, found: u32 },
    #[error("journal {path} belongs to VF {found}, not {wanted}; nothing was changed")]
    OtherVf {
        path: PathBuf,
        found: String,
        wanted: String,
    },
}

/// The migration parameters vfmig changes, as they were before (read from
/// `query-migrate-parameters`, whose other fields are ignored).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct OriginalParams {
    pub max_bandwidth: u64,
    pub downtime_limit: u64,
}

/// Where the guest saved the VF's state: what the source side hands to the destination side,
/// and what the journal keeps for a run that takes over.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Saved {
    pub interface: String,
    pub digest: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Journal {
    pub format: u32,
    pub vf_id: String,
    pub vf_mac: MacAddr,
    /// `device_add` arguments that recreate the VF, if the operator gave them.
    pub vf_device: Option<Value>,
    pub original: OriginalParams,
    /// The guest's DMA hook was asked to track the VF (pre-copy with the VF plugged).
    pub hooked: bool,
    /// `migrate` was (or was about to be) issued.
    pub migrate_issued: bool,
    /// `device_del` was (or was about to be) issued for the VF.
    pub unplug_requested: bool,
    pub saved: Option<Saved>,
    /// The last phase reached, for messages.
    pub phase: Option<Phase>,
}

impl Journal {
    pub fn new(vf_id: &str, vf_mac: MacAddr, vf_device: Option<Value>, original: OriginalParams) -> Self {
        Self {
            format: FORMAT,
            vf_id: vf_id.to_owned(),
            vf_mac,
            vf_device,
            original,
            hooked: false,
            migrate_issued: false,
            unplug_requested: false,
            saved: None,
            phase: None,
        }
    }

    /// Reads the journal at `path` for VF `vf_id`; `None` if there is none.
    pub fn load(path: &Path, vf_id: &str) -> Result<Option<Self>, JournalError> {
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(io(path)(source)),
        };
        let mut bytes = Vec::new();
        file.take(MAX_JOURNAL + 1).read_to_end(&mut bytes).map_err(io(path))?;
        let invalid = |reason: String| JournalError::Invalid {
            path: path.to_owned(),
            reason,
        };
        if bytes.len() as u64 > MAX_JOURNAL {
            return Err(invalid(format!("over {MAX_JOURNAL} bytes")));
        }
        // The format is read first, so a newer layout is named as such, not as garbage.
        let value: Value = serde_json::from_slice(&bytes).map_err(|e| invalid(e.to_string()))?;
        let found = value
            .get("format")
            .and_then(Value::as_u64)
            .ok_or_else(|| invalid("no format".into()))?;
        if found != u64::from(FORMAT) {
            return Err(JournalError::UnknownFormat {
                path: path.to_owned(),
                found: u32::try_from(found).unwrap_or(u32::MAX),
            });
        }
        let journal: Self = serde_json::from_value(value).map_err(|e| invalid(e.to_string()))?;
        journal.validate().map_err(invalid)?;
        if journal.vf_id != vf_id {
            return Err(JournalError::OtherVf {
                path: path.to_owned(),
                found: journal.vf_id,
                wanted: vf_id.to_owned(),
            });
        }
        Ok(Some(journal))
    }

    /// Facts that must hold together in any journal vfmig-host writes.
    fn validate(&self) -> Result<(), String> {
        if self.vf_id.is_empty() {
            return Err("empty VF id".into());
        }
        if self.vf_device.as_ref().is_some_and(|d| !d.is_object()) {
            return Err("vf_device is not an object of device_add arguments".into());
        }
        if self.saved.as_ref().is_some_and(|s| s.interface.is_empty()) {
            return Err("saved state without an interface name".into());
        }
        if self.unplug_requested && self.hooked && self.saved.is_none() {
            return Err("an unplug with the hook on is only requested after the state is saved".into());
        }
        Ok(())
    }

    /// Writes the journal to `path` atomically.
    pub fn save(&self, path: &Path) -> Result<(), JournalError> {
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        fs::create_dir_all(dir).map_err(io(dir))?;
        let tmp = path.with_extension("tmp");
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(io(&tmp))?;
        let text = serde_json::to_vec_pretty(self).expect("a journal always serialises");
        file.write_all(&text).map_err(io(&tmp))?;
        file.sync_all().map_err(io(&tmp))?;
        fs::rename(&tmp, path).map_err(io(path))?;
        File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
    }

    /// Removes the journal: nothing is left to take up.
    pub fn remove(path: &Path) -> Result<(), JournalError> {
        match fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(path)(e)),
            _ => Ok(()),
        }
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> JournalError + '_ {
    move |source| JournalError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The journal's default place for a VM: beside its QMP socket, which is unique per VM and
/// in a directory only the VM's manager writes.
pub fn default_path(qmp: &Path) -> PathBuf {
    let mut name = qmp.file_name().unwrap_or_default().to_owned();
    name.push(".vfmig-journal");
    qmp.with_file_name(name)
}
