//! The run's journal: its state, on disk, as it is, so that a host agent killed at any moment
//! can be run again and take up where things stand.
//!
//! It is written whenever the state changes, before the new state's action runs, atomically
//! (temporary file, fsync, rename, fsync of the directory): a kill leaves the old journal or
//! the new one. QEMU and the guest are the truth about what was done; the journal adds what
//! only vfmig knows (the parameters as they were, the VFs, what the guest saved and its
//! digest, why a give-back runs). A journal that does not validate, or of a format this build
//! does not read, is refused with its reason and left alone: the operator decides, vfmig does
//! not guess.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::state::{DestinationState, Hook, SourceState, Unplug};

/// The journal's layout. Format 1 (vfmig-host 0.1: four flags and a phase, one VF) is named
/// and refused: it cannot say which state its run stood in.
pub const FORMAT: u32 = 2;
/// A journal is a few kilobytes; anything near this is not one.
const MAX_JOURNAL: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal {path}: {error}")]
    Io { path: PathBuf, error: std::io::Error },
    #[error("journal {path} is not a vfmig journal ({reason}); nothing was changed — inspect it, then remove it to start afresh")]
    Invalid { path: PathBuf, reason: String },
    #[error("journal {path} is of format 1, written by vfmig-host 0.1, which this vfmig-host does not take up; nothing was changed — finish that migration with vfmig-host 0.1, or check the VM (query-migrate, its VF) and remove the journal")]
    OlderFormat { path: PathBuf },
    #[error("journal {path} is of format {found}, this vfmig-host reads format {FORMAT}; nothing was changed")]
    UnknownFormat { path: PathBuf, found: u32 },
    #[error("journal {path} belongs to VFs {found:?}, not {wanted:?}; nothing was changed")]
    OtherVf {
        path: PathBuf,
        found: Vec<String>,
        wanted: Vec<String>,
    },
}

/// Which side the run stands on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunState {
    Source(SourceState),
    Destination(DestinationState),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Journal {
    pub format: u32,
    /// The VFs' ids, in the plan's order: a journal of other VFs is not this run's.
    pub vfs: Vec<String>,
    pub state: RunState,
}

impl Journal {
    pub fn new(vfs: Vec<String>, state: RunState) -> Self {
        Self {
            format: FORMAT,
            vfs,
            state,
        }
    }

    /// Reads the journal at `path` for the VFs `vfs`; `None` if there is none.
    pub fn load(path: &Path, vfs: &[String]) -> Result<Option<Self>, JournalError> {
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
        // The format is read first, so another layout is named as such, not as garbage.
        let value: Value = serde_json::from_slice(&bytes).map_err(|e| invalid(e.to_string()))?;
        let found = value
            .get("format")
            .and_then(Value::as_u64)
            .ok_or_else(|| invalid("no format".into()))?;
        match found {
            1 => return Err(JournalError::OlderFormat { path: path.to_owned() }),
            f if f != u64::from(FORMAT) => {
                return Err(JournalError::UnknownFormat {
                    path: path.to_owned(),
                    found: u32::try_from(f).unwrap_or(u32::MAX),
                })
            }
            _ => {}
        }
        let journal: Self = serde_json::from_value(value).map_err(|e| invalid(e.to_string()))?;
        journal.validate().map_err(invalid)?;
        if journal.vfs != vfs {
            return Err(JournalError::OtherVf {
                path: path.to_owned(),
                found: journal.vfs,
                wanted: vfs.to_vec(),
            });
        }
        Ok(Some(journal))
    }

    /// Facts that hold together in any journal vfmig-host writes.
    fn validate(&self) -> Result<(), String> {
        if self.vfs.is_empty() || self.vfs.iter().any(String::is_empty) {
            return Err("no VFs, or a VF without an id".into());
        }
        let source = match &self.state {
            RunState::Source(s) => s,
            RunState::Destination(d) if d.vfs().len() != self.vfs.len() => {
                return Err("the destination's fresh VFs do not match the VFs".into())
            }
            RunState::Destination(_) => return Ok(()),
        };
        let Some(m) = source.clone().into_migrating() else {
            return Ok(());
        };
        if m.vfs.iter().map(|v| &v.vf.id).ne(self.vfs.iter()) {
            return Err("the state's VFs are not the journal's".into());
        }
        if m.vfs
            .iter()
            .any(|v| v.vf.device.as_ref().is_some_and(|d| !d.is_object()))
        {
            return Err("a VF's device spec is not an object".into());
        }
        if m.vfs
            .iter()
            .any(|v| v.saved.as_ref().is_some_and(|s| s.interface.is_empty()))
        {
            return Err("a saved state without an interface name".into());
        }
        // Pre-copy with the VFs plugged unplugs them only once the guest saved their state.
        let hooked = match source {
            SourceState::Unplugging { hook, .. }
            | SourceState::Releasing { hook, .. }
            | SourceState::Completing { hook, .. } => *hook != Hook::Off && m.guest,
            _ => false,
        };
        if hooked && m.vfs.iter().any(|v| v.unplug != Unplug::Plugged && v.saved.is_none()) {
            return Err("a VF unplugged with the hook on before its state was saved".into());
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
        let text = serde_json::to_vec_pretty(self).map_err(|e| JournalError::Invalid {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
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
    move |error| JournalError::Io {
        path: path.to_owned(),
        error,
    }
}

/// The journal's default place for a VM: beside its QMP socket, which is unique per VM and
/// in a directory only the VM's manager writes.
pub fn default_path(qmp: &Path) -> PathBuf {
    let mut name = qmp.file_name().unwrap_or_default().to_owned();
    name.push(".vfmig-journal");
    qmp.with_file_name(name)
}
