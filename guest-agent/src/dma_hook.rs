//! Control of the DMA-dirtying kernel hook (`guest-agent/kmod/vfmig_dirty.c`) through its
//! sysfs files: load it, track a device, enable, read the counters, stop.
//!
//! The module's state lives in the kernel, not in the agent, so an agent that restarts finds
//! tracking as it was; every answer is read back from sysfs rather than remembered.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use vfmig_protocol::message::{validate_pci_address, DmaTracking, TrackedDevice, MAX_TRACKED};

/// The module's name, as modprobe knows it.
pub const MODULE: &str = "vfmig_dirty";

/// modprobe of a small module takes milliseconds; a hung one must not hang the agent.
const LOAD_DEADLINE: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("the DMA hook is not installed: no {MODULE} module for kernel {release}")]
    NotInstalled { release: String },
    #[error("modprobe {MODULE}: {0}")]
    Load(String),
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: io::Error },
    #[error("the hook's device list has an unreadable line: {0:?}")]
    Garbled(String),
}

/// The hook's control directory.
pub struct DmaHook {
    control: PathBuf,
}

impl Default for DmaHook {
    fn default() -> Self {
        Self {
            control: PathBuf::from("/sys/kernel").join(MODULE),
        }
    }
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> HookError + '_ {
    move |source| HookError::Io {
        path: path.to_owned(),
        error: source,
    }
}

fn release() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

impl DmaHook {
    fn loaded(&self) -> bool {
        self.control.is_dir()
    }

    /// Loaded, or listed in the running kernel's modules.dep, so modprobe can load it.
    pub fn installed(&self) -> bool {
        if self.loaded() {
            return true;
        }
        let dep = Path::new("/lib/modules").join(release()).join("modules.dep");
        fs::read_to_string(dep).is_ok_and(|text| {
            text.lines().any(|line| {
                let path = line.split(':').next().unwrap_or_default();
                let file = path.rsplit('/').next().unwrap_or_default();
                file.split_once(".ko").is_some_and(|(name, _)| name == MODULE)
            })
        })
    }

    async fn load(&self) -> Result<(), HookError> {
        if self.loaded() {
            return Ok(());
        }
        if !self.installed() {
            return Err(HookError::NotInstalled { release: release() });
        }
        let run = tokio::process::Command::new("modprobe")
            .arg(MODULE)
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(LOAD_DEADLINE, run)
            .await
            .map_err(|_| HookError::Load(format!("no answer within {LOAD_DEADLINE:?}")))?
            .map_err(|e| HookError::Load(e.to_string()))?;
        if !out.status.success() {
            let said = String::from_utf8_lossy(&out.stderr).trim().to_owned();
            return Err(HookError::Load(format!("{}: {said}", out.status)));
        }
        Ok(())
    }

    fn write(&self, file: &str, value: &str) -> Result<(), io::Error> {
        fs::write(self.control.join(file), value)
    }

    /// Loads the module if needed, tracks `pci_address` and enables the probes.
    pub async fn track(&self, pci_address: &str) -> Result<DmaTracking, HookError> {
        validate_pci_address(pci_address).map_err(HookError::Garbled)?;
        self.load().await?;
        let track = self.control.join("track");
        match self.write("track", pci_address) {
            Err(e) if e.raw_os_error() != Some(libc::EEXIST) => return Err(io_error(&track)(e)),
            _ => {}
        }
        self.write("enabled", "1")
            .map_err(io_error(&self.control.join("enabled")))?;
        self.state()
    }

    /// What the hook is doing now; disabled and empty when the module is not loaded.
    pub fn state(&self) -> Result<DmaTracking, HookError> {
        if !self.loaded() {
            return Ok(DmaTracking {
                enabled: false,
                devices: Vec::new(),
            });
        }
        let path = self.control.join("enabled");
        let enabled = fs::read_to_string(&path).map_err(io_error(&path))?.trim() == "1";
        let path = self.control.join("devices");
        let list = fs::read_to_string(&path).map_err(io_error(&path))?;
        let devices = list.lines().map(parse_device).collect::<Result<Vec<_>, _>>()?;
        if devices.len() > MAX_TRACKED {
            return Err(HookError::Garbled(format!("{} devices listed", devices.len())));
        }
        Ok(DmaTracking { enabled, devices })
    }

    /// Disables the probes and untracks every device; returns the final counters.
    pub fn stop(&self) -> Result<DmaTracking, HookError> {
        let last = self.state()?;
        if !self.loaded() {
            return Ok(last);
        }
        self.write("enabled", "0")
            .map_err(io_error(&self.control.join("enabled")))?;
        for d in &last.devices {
            match self.write("untrack", &d.pci_address) {
                Err(e) if e.raw_os_error() != Some(libc::ENOENT) => {
                    return Err(io_error(&self.control.join("untrack"))(e))
                }
                _ => {}
            }
        }
        Ok(DmaTracking {
            enabled: false,
            devices: last.devices,
        })
    }
}

/// `0000:01:00.0 calls=12 pages=34`
fn parse_device(line: &str) -> Result<TrackedDevice, HookError> {
    let garbled = || HookError::Garbled(line.to_owned());
    let mut words = line.split_ascii_whitespace();
    let pci_address = words.next().ok_or_else(garbled)?.to_owned();
    validate_pci_address(&pci_address).map_err(|_| garbled())?;
    let mut counter = |key: &str| {
        words
            .next()
            .and_then(|w| w.strip_prefix(key))
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(garbled)
    };
    let calls = counter("calls=")?;
    let pages = counter("pages=")?;
    Ok(TrackedDevice {
        pci_address,
        calls,
        pages,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_lines_parse_and_garbage_is_named() {
        let d = parse_device("0000:01:00.0 calls=12 pages=34").unwrap();
        assert_eq!((d.pci_address.as_str(), d.calls, d.pages), ("0000:01:00.0", 12, 34));
        for bad in [
            "",
            "0000:01:00.0",
            "01:00.0 calls=1 pages=1",
            "0000:01:00.0 pages=1 calls=1",
            "0000:01:00.0 calls=-1 pages=1",
        ] {
            assert!(matches!(parse_device(bad), Err(HookError::Garbled(_))), "{bad:?}");
        }
    }
}
