//! What the hook provisioned for each domain, kept until the domain leaves the host: one JSON
//! file per domain in the hook's state directory (under /run: a reboot frees every VF anyway).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// A VF the hook provisioned for a domain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProvisionedVf {
    pub alias: String,
    pub pf: String,
    pub index: u32,
    pub address: String,
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("{0:?} cannot name a file (a libvirt domain name has no '/' and does not start with '.')")]
    BadName(String),
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: std::io::Error },
    #[error("{path}: not a record of provisioned VFs: {error}")]
    Invalid { path: PathBuf, error: String },
}

/// The record of `domain`'s VFs in `dir`.
pub fn path(dir: &Path, domain: &str) -> Result<PathBuf, RecordError> {
    if domain.is_empty() || domain.contains('/') || domain.starts_with('.') || domain.contains('\0') {
        return Err(RecordError::BadName(domain.into()));
    }
    Ok(dir.join(format!("{domain}.json")))
}

/// Writes the record whole (a temporary file renamed over it), so a crash leaves the old one
/// or the new one.
pub fn write(dir: &Path, domain: &str, vfs: &[ProvisionedVf]) -> Result<(), RecordError> {
    let path = path(dir, domain)?;
    let io = |error| RecordError::Io {
        path: path.clone(),
        error,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    let json = serde_json::to_vec_pretty(vfs).map_err(|e| io(std::io::Error::other(e)))?;
    let partial = path.with_extension("json.partial");
    std::fs::write(&partial, json).map_err(io)?;
    std::fs::rename(&partial, &path).map_err(io)
}

/// The VFs recorded for `domain`: none when there is no record.
pub fn read(dir: &Path, domain: &str) -> Result<Vec<ProvisionedVf>, RecordError> {
    let path = path(dir, domain)?;
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| RecordError::Invalid {
            path,
            error: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(error) => Err(RecordError::Io { path, error }),
    }
}

/// Removes `domain`'s record, if there is one.
pub fn remove(dir: &Path, domain: &str) -> Result<(), RecordError> {
    let path = path(dir, domain)?;
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(RecordError::Io { path, error: e }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_is_written_read_and_removed_and_a_bad_name_refused() {
        let dir = std::env::temp_dir().join(format!("vfmig-record-{}", std::process::id()));
        let vf = ProvisionedVf {
            alias: "ua-vf".into(),
            pf: "enp94s0f1".into(),
            index: 3,
            address: "0000:5e:04.3".into(),
        };
        assert_eq!(read(&dir, "vm1").unwrap(), []);
        write(&dir, "vm1", std::slice::from_ref(&vf)).unwrap();
        assert_eq!(read(&dir, "vm1").unwrap(), [vf]);
        remove(&dir, "vm1").unwrap();
        remove(&dir, "vm1").unwrap();
        assert_eq!(read(&dir, "vm1").unwrap(), []);
        for bad in ["../etc/passwd", ".hidden", ""] {
            assert!(matches!(write(&dir, bad, &[]), Err(RecordError::BadName(_))));
        }
        std::fs::write(dir.join("vm2.json"), "{").unwrap();
        assert!(matches!(read(&dir, "vm2"), Err(RecordError::Invalid { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
