//! A PF's and its VFs' PCI side, through sysfs: ids, drivers, the VF functions, and binding a
//! VF to another driver with `driver_override` (the kernel's own mechanism; no id tables are
//! touched, so no other device is claimed by accident).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vfmig_protocol::descriptor::PfModel;

use super::SriovError;

const NET: &str = "/sys/class/net";
const PCI_DEVICES: &str = "/sys/bus/pci/devices";
const DRIVERS_PROBE: &str = "/sys/bus/pci/drivers_probe";

/// The PF's PCI function: `/sys/class/net/<pf>/device`.
fn pf_device(pf: &str) -> PathBuf {
    Path::new(NET).join(pf).join("device")
}

fn sysfs<T>(path: &Path, result: io::Result<T>) -> Result<T, SriovError> {
    result.map_err(|source| SriovError::Sysfs {
        path: path.to_owned(),
        error: source,
    })
}

fn read_trimmed(path: &Path) -> Result<String, SriovError> {
    sysfs(path, fs::read_to_string(path)).map(|s| s.trim().to_owned())
}

fn write(path: &Path, value: &str) -> Result<(), SriovError> {
    sysfs(path, fs::write(path, value))
}

/// A `0x8086`-style id file.
fn read_id(path: &Path) -> Result<u16, SriovError> {
    let text = read_trimmed(path)?;
    u16::from_str_radix(text.trim_start_matches("0x"), 16).map_err(|_| SriovError::Sysfs {
        path: path.to_owned(),
        error: io::Error::other(format!("{text:?} is not a PCI id")),
    })
}

/// The PF `pf` with SR-IOV: an error naming what is missing otherwise.
pub fn check_pf(pf: &str) -> Result<(), SriovError> {
    if !Path::new(NET).join(pf).exists() {
        return Err(SriovError::NoSuchPf(pf.into()));
    }
    if !pf_device(pf).join("sriov_totalvfs").exists() {
        return Err(SriovError::NotSriov(pf.into()));
    }
    Ok(())
}

/// The PF's model: PCI ids, its VFs' id, its driver and its link speed.
pub fn pf_model(pf: &str) -> Result<PfModel, SriovError> {
    check_pf(pf)?;
    let dev = pf_device(pf);
    // The kernel reports -1, or refuses the read, while the link is down.
    let speed = fs::read_to_string(Path::new(NET).join(pf).join("speed"))
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok())
        .and_then(|s| u32::try_from(s).ok());
    Ok(PfModel {
        vendor: read_id(&dev.join("vendor"))?,
        device: read_id(&dev.join("device"))?,
        vf_device: read_id(&dev.join("sriov_vf_device"))?,
        driver: driver_at(&dev)?.ok_or_else(|| SriovError::Sysfs {
            path: dev.join("driver"),
            error: io::Error::other("the PF has no driver"),
        })?,
        link_speed_mbps: speed,
    })
}

/// How many VFs the PF has enabled.
pub fn num_vfs(pf: &str) -> Result<u32, SriovError> {
    let path = pf_device(pf).join("sriov_numvfs");
    let text = read_trimmed(&path)?;
    text.parse().map_err(|_| SriovError::Sysfs {
        path,
        error: io::Error::other(format!("{text:?} is not a count")),
    })
}

/// The PCI address of VF `index` of `pf`, e.g. `0000:02:10.0`.
pub fn vf_address(pf: &str, index: u32) -> Result<String, SriovError> {
    let link = pf_device(pf).join(format!("virtfn{index}"));
    let target = fs::read_link(&link).map_err(|_| SriovError::NoSuchVf { pf: pf.into(), index })?;
    target
        .file_name()
        .and_then(|n| n.to_str())
        .map(str::to_owned)
        .ok_or_else(|| SriovError::Sysfs {
            path: link,
            error: io::Error::other("not a PCI address"),
        })
}

/// The PF (its interface name) and index of the VF at PCI `address`; none when the function
/// is no VF (`physfn` absent).
pub fn vf_of(address: &str) -> Result<Option<(String, u32)>, SriovError> {
    let dev = Path::new(PCI_DEVICES).join(address);
    let physfn = dev.join("physfn");
    let Ok(pf_dev) = fs::canonicalize(&physfn) else {
        return Ok(None);
    };
    let net = pf_dev.join("net");
    let pf = sysfs(&net, fs::read_dir(&net))?
        .filter_map(Result::ok)
        .find_map(|e| e.file_name().to_str().map(str::to_owned))
        .ok_or_else(|| SriovError::Sysfs {
            path: net.clone(),
            error: io::Error::other("the VF's PF has no network interface"),
        })?;
    for index in 0..num_vfs(&pf)? {
        if vf_address(&pf, index)? == address {
            return Ok(Some((pf, index)));
        }
    }
    Err(SriovError::Sysfs {
        path: physfn,
        error: io::Error::other(format!("{address} is none of its PF's VFs")),
    })
}

fn driver_at(dev: &Path) -> Result<Option<String>, SriovError> {
    match fs::read_link(dev.join("driver")) {
        Ok(target) => Ok(target.file_name().and_then(|n| n.to_str()).map(str::to_owned)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(SriovError::Sysfs {
            path: dev.join("driver"),
            error: source,
        }),
    }
}

/// The driver bound to the PCI function at `address`, if any.
pub fn driver(address: &str) -> Result<Option<String>, SriovError> {
    driver_at(&Path::new(PCI_DEVICES).join(address))
}

/// Whether the function carries a network interface that is administratively up.
pub fn interface_up(address: &str) -> bool {
    let Ok(entries) = fs::read_dir(Path::new(PCI_DEVICES).join(address).join("net")) else {
        return false;
    };
    entries.flatten().any(|e| {
        fs::read_to_string(e.path().join("flags"))
            .ok()
            .and_then(|f| u32::from_str_radix(f.trim().trim_start_matches("0x"), 16).ok())
            .is_some_and(|flags| flags & 1 != 0)
    })
}

/// The function's `driver_override`; `None` when unset.
pub fn driver_override(address: &str) -> Result<Option<String>, SriovError> {
    let text = read_trimmed(&Path::new(PCI_DEVICES).join(address).join("driver_override"))?;
    Ok((text != "(null)" && !text.is_empty()).then_some(text))
}

/// Whether the kernel has the PCI driver `name` (its module loaded).
pub fn driver_loaded(name: &str) -> bool {
    Path::new("/sys/bus/pci/drivers").join(name).exists()
}

/// Binds the function at `address` to `to` (`None`: whatever driver matches it by id, as at
/// boot): sets the override, unbinds the current driver, and asks the kernel to probe again.
/// Checked afterwards: a probe that fails is silent in sysfs otherwise.
pub async fn bind(address: &str, to: Option<&str>) -> Result<(), SriovError> {
    let dev = Path::new(PCI_DEVICES).join(address);
    // A lone newline clears the override, as `echo > driver_override` does.
    write(&dev.join("driver_override"), to.unwrap_or("\n"))?;
    if driver_at(&dev)?.is_some() {
        write(&dev.join("driver").join("unbind"), address)?;
    }
    // drivers_probe fails with the probe's error when no driver takes the device; with no
    // override and no matching driver that is a valid outcome, checked below.
    let probed = fs::write(DRIVERS_PROBE, address);
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let now = driver_at(&dev)?;
        match (to, now.as_deref()) {
            (Some(want), Some(got)) if want == got => return Ok(()),
            (None, _) if probed.is_ok() || now.is_none() => return Ok(()),
            _ if Instant::now() >= until => {
                return Err(SriovError::Bind {
                    address: address.into(),
                    driver: to.unwrap_or("its own driver").into(),
                    got: now,
                    error: probed.err().map(|e| e.to_string()),
                })
            }
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}
