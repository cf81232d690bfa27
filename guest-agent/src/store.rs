//! Persisting saved states under /run/vfmig/, which migrates with the VM's memory.
//!
//! A state is written to a temporary file, synced, and renamed over the old one, then the
//! directory is synced: a crash or a kill at any moment leaves either the old document or the
//! new one, never half of one. Reading checks the size before reading and validates everything
//! ([`vfmig_protocol::netstate::open`]).

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use vfmig_protocol::netstate::{self, SavedState, StateError, MAX_DOCUMENT};

/// Where the agent keeps its states.
pub const DEFAULT_DIR: &str = "/run/vfmig";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: std::io::Error },
    #[error("{path}: {error}")]
    Invalid { path: PathBuf, error: StateError },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |error| StoreError::Io {
        path: path.to_owned(),
        error,
    }
}

/// The file a state for interface `name` lives in.
pub fn path_for(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.json"))
}

/// Seals `state` and writes it atomically to `path`.
pub fn save(path: &Path, state: &SavedState) -> Result<(), StoreError> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(io(dir))?;
    let tmp = path.with_extension("json.tmp");
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(io(&tmp))?;
    file.write_all(netstate::seal(state).as_bytes()).map_err(io(&tmp))?;
    file.sync_all().map_err(io(&tmp))?;
    fs::rename(&tmp, path).map_err(io(path))?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

/// Names of the interfaces with a state on record in `dir`, sorted.
pub fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_suffix(".json").map(str::to_owned))
        .collect();
    names.sort();
    names
}

/// Reads and validates the state at `path`.
pub fn load(path: &Path) -> Result<SavedState, StoreError> {
    let file = File::open(path).map_err(io(path))?;
    let mut bytes = Vec::new();
    // One byte past the limit is enough to know the file is too large, without reading it all.
    file.take(MAX_DOCUMENT as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(io(path))?;
    netstate::open(&bytes).map_err(|error| StoreError::Invalid {
        path: path.to_owned(),
        error,
    })
}

/// Forgets interface `name`'s state: it was put back where it came from.
pub fn remove(dir: &Path, name: &str) -> Result<(), StoreError> {
    let path = path_for(dir, name);
    match fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(&path)(e)),
        _ => unmark_standby(dir, name),
    }
}

/// The file that records which standby carries interface `name`'s addresses for the VF gap.
fn standby_marker(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.standby"))
}

/// Records that `standby` carries interface `name`'s addresses; written atomically.
pub fn mark_standby(dir: &Path, name: &str, standby: &str) -> Result<(), StoreError> {
    let path = standby_marker(dir, name);
    let tmp = path.with_extension("standby.tmp");
    fs::write(&tmp, standby).map_err(io(&tmp))?;
    fs::rename(&tmp, &path).map_err(io(&path))
}

/// The standby that carries interface `name`'s addresses, if one does. A record that is not
/// an interface name is ignored (and reported): it was not written by this agent.
pub fn marked_standby(dir: &Path, name: &str) -> Option<String> {
    let path = standby_marker(dir, name);
    let text = fs::read_to_string(&path).ok()?;
    match vfmig_protocol::message::validate_ifname("standby", text.trim()) {
        Ok(()) => Some(text.trim().to_owned()),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = e, "ignoring a standby record");
            None
        }
    }
}

/// The addresses are back on the VF: forget the standby.
pub fn unmark_standby(dir: &Path, name: &str) -> Result<(), StoreError> {
    let path = standby_marker(dir, name);
    match fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(&path)(e)),
        _ => Ok(()),
    }
}
