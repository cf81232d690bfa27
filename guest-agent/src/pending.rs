//! Restores the agent owes: a record per saved interface, written when the VF's state is saved
//! for an unplug and taken when it is restored. Its presence is what udev's VF-arrival rule
//! (`udev-rules/75-vfmig-vf.rules`) asks about — through `vfmig-guestd udev-arrival` — to keep
//! NetworkManager off a fresh VF and give it the saved name before anything configures it.
//! It also carries what NetworkManager was doing with the VF, to hand it back after.
//!
//! Records live beside the saved states (`<name>.pending` in the store directory, /run/vfmig:
//! it migrates with the guest's memory). They are small JSON documents, read with a size bound
//! and validated like anything else the agent reads from disk.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use vfmig_protocol::mac::MacAddr;
use vfmig_protocol::message::validate_ifname;

use crate::nm::Snapshot;

/// No record this agent writes comes near this; anything larger was not written by it.
const MAX_RECORD: u64 = 4096;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pending {
    /// The saved VF's MAC: a fresh VF provisioned with it is the one to restore onto.
    pub mac: MacAddr,
    /// What NetworkManager did with the VF when it was saved; none when NM was not running
    /// or did not know the link.
    pub network_manager: Option<Snapshot>,
}

#[derive(Debug, thiserror::Error)]
pub enum PendingError {
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: std::io::Error },
    #[error("{path}: not a pending-restore record: {why}")]
    Invalid { path: PathBuf, why: String },
}

fn path_for(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.pending"))
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PendingError + '_ {
    move |error| PendingError::Io {
        path: path.to_owned(),
        error,
    }
}

/// Records that interface `name` waits for a restore; written atomically.
pub fn write(dir: &Path, name: &str, pending: &Pending) -> Result<(), PendingError> {
    let path = path_for(dir, name);
    let tmp = path.with_extension("pending.tmp");
    let text = serde_json::to_vec(pending).map_err(|e| PendingError::Invalid {
        path: path.clone(),
        why: e.to_string(),
    })?;
    fs::create_dir_all(dir).map_err(io(dir))?;
    fs::write(&tmp, text).map_err(io(&tmp))?;
    fs::rename(&tmp, &path).map_err(io(&path))
}

fn read(path: &Path) -> Result<Pending, PendingError> {
    let mut bytes = Vec::new();
    fs::File::open(path)
        .and_then(|f| f.take(MAX_RECORD + 1).read_to_end(&mut bytes))
        .map_err(io(path))?;
    let invalid = |why: String| PendingError::Invalid {
        path: path.to_owned(),
        why,
    };
    if bytes.len() as u64 > MAX_RECORD {
        return Err(invalid(format!("larger than {MAX_RECORD} bytes")));
    }
    serde_json::from_slice(&bytes).map_err(|e| invalid(e.to_string()))
}

/// Takes interface `name`'s record: read, then removed. `None` if there was none.
pub fn take(dir: &Path, name: &str) -> Result<Option<Pending>, PendingError> {
    let path = path_for(dir, name);
    let pending = match read(&path) {
        Err(PendingError::Io { error, .. }) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        // Removed all the same: a record that cannot be read can only keep NICs unmanaged.
        other => other,
    };
    fs::remove_file(&path).map_err(io(&path))?;
    pending.map(Some)
}

/// The interfaces waiting for a restore, sorted, with their records; records that do not
/// read are skipped (and logged).
pub fn all(dir: &Path) -> Vec<(String, Pending)> {
    let mut found: Vec<(String, Pending)> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_str()?.strip_suffix(".pending")?.to_owned();
            validate_ifname("pending", &name).ok()?;
            match read(&e.path()) {
                Ok(p) => Some((name, p)),
                Err(err) => {
                    tracing::warn!(error = %err, "ignoring a pending-restore record");
                    None
                }
            }
        })
        .collect();
    found.sort_by(|a, b| a.0.cmp(&b.0));
    found
}

/// What udev is told about a network device that arrives with `mac` while restores are
/// pending: keep NetworkManager and systemd-networkd off it, and the name to give it — the saved interface with
/// that MAC, or the only one pending; no name when several are and none matches.
#[derive(Debug, PartialEq, Eq)]
pub struct Arrival {
    pub name: Option<String>,
}

pub fn arrival(dir: &Path, mac: &MacAddr) -> Option<Arrival> {
    let pending = all(dir);
    if pending.is_empty() {
        return None;
    }
    let name = match pending.iter().find(|(_, p)| p.mac == *mac) {
        Some((name, _)) => Some(name.clone()),
        None if pending.len() == 1 => Some(pending[0].0.clone()),
        None => None,
    };
    Some(Arrival { name })
}

impl Arrival {
    /// As `IMPORT{program}` reads it: one KEY=value per line.
    pub fn udev_properties(&self) -> String {
        let mut out = String::from("NM_UNMANAGED=1\nVFMIG_HOLD=1\n");
        if let Some(name) = &self.name {
            out.push_str(&format!("VFMIG_RESTORE_NAME={name}\n"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nm::ProfileRef;

    fn dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "vfmig-pending-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = fs::remove_dir_all(&d);
        d
    }

    fn mac(s: &str) -> MacAddr {
        s.parse().expect("a test MAC")
    }

    #[test]
    fn a_record_round_trips_and_is_taken_once() {
        let d = dir();
        let p = Pending {
            mac: mac("52:54:00:10:00:01"),
            network_manager: Some(Snapshot {
                managed: true,
                profile: Some(ProfileRef {
                    uuid: "2f1c0d8e-0000-4000-8000-000000000001".into(),
                    id: "vf".into(),
                }),
            }),
        };
        write(&d, "enp1s0", &p).unwrap();
        assert_eq!(all(&d), vec![("enp1s0".to_owned(), p.clone())]);
        assert_eq!(take(&d, "enp1s0").unwrap(), Some(p));
        assert_eq!(take(&d, "enp1s0").unwrap(), None);
        assert!(all(&d).is_empty());
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn arrival_names_the_matching_mac_or_the_only_one_and_always_holds_the_owners_off() {
        let d = dir();
        let unmanaged = |m: &str| Pending {
            mac: mac(m),
            network_manager: None,
        };
        assert_eq!(arrival(&d, &mac("52:54:00:20:00:02")), None, "nothing pending");
        write(&d, "enp1s0", &unmanaged("52:54:00:10:00:01")).unwrap();
        let only = arrival(&d, &mac("52:54:00:20:00:02")).unwrap();
        assert_eq!(
            only.udev_properties(),
            "NM_UNMANAGED=1\nVFMIG_HOLD=1\nVFMIG_RESTORE_NAME=enp1s0\n"
        );
        write(&d, "enp2s0", &unmanaged("52:54:00:10:00:02")).unwrap();
        assert_eq!(
            arrival(&d, &mac("52:54:00:10:00:02")).unwrap().name.as_deref(),
            Some("enp2s0")
        );
        let unknown = arrival(&d, &mac("52:54:00:20:00:02")).unwrap();
        assert_eq!(
            unknown.udev_properties(),
            "NM_UNMANAGED=1\nVFMIG_HOLD=1\n",
            "two pending, no match: no name"
        );
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn bad_records_are_refused_and_skipped() {
        let d = dir();
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join("eth0.pending"), "{\"mac\":\"not a mac\"}").unwrap();
        fs::write(d.join("eth1.pending"), vec![b' '; MAX_RECORD as usize + 1]).unwrap();
        fs::write(d.join("bad:name.pending"), "{}").unwrap();
        assert!(all(&d).is_empty());
        assert!(matches!(take(&d, "eth0"), Err(PendingError::Invalid { .. })));
        let big = take(&d, "eth1").unwrap_err().to_string();
        assert!(big.contains("larger than 4096 bytes"), "{big}");
        assert!(!d.join("eth0.pending").exists() && !d.join("eth1.pending").exists());
        fs::remove_dir_all(&d).unwrap();
    }
}
