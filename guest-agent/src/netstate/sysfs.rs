//! The PCI identity and driver of a network interface, from sysfs.

use std::fs;
use std::path::Path;

use vfmig_protocol::netstate::PciIdentity;

fn index_of(dir: &Path) -> Option<u32> {
    fs::read_to_string(dir.join("ifindex")).ok()?.trim().parse().ok()
}

/// Whether sysfs shows link `ifindex`: the link is in the network namespace sysfs was
/// mounted in (under another name, a moment after a rename, all the same).
pub(crate) fn shows(ifindex: u32) -> bool {
    fs::read_dir("/sys/class/net")
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| index_of(&e.path()) == Some(ifindex))
}

/// Driver name and PCI identity, or `None` for a virtual link. sysfs shows the namespace it
/// was mounted in, so the entry is used only when its ifindex is the link's own.
pub(crate) fn identity(name: &str, ifindex: u32) -> (Option<String>, Option<PciIdentity>) {
    let dir = Path::new("/sys/class/net").join(name);
    if index_of(&dir) != Some(ifindex) {
        return (None, None);
    }
    let device = dir.join("device");
    let driver = basename(&device.join("driver"));
    let pci = (|| {
        let address = basename(&device)?;
        vfmig_protocol::message::validate_pci_address(&address).ok()?;
        Some(PciIdentity {
            address,
            vendor: hex_file(&device.join("vendor"))?,
            device: hex_file(&device.join("device"))?,
            subsystem_vendor: hex_file(&device.join("subsystem_vendor"))?,
            subsystem_device: hex_file(&device.join("subsystem_device"))?,
        })
    })();
    (driver, pci)
}

fn basename(link: &Path) -> Option<String> {
    let target = fs::read_link(link).ok()?;
    target.file_name()?.to_str().map(str::to_owned)
}

fn hex_file(path: &Path) -> Option<u16> {
    let text = fs::read_to_string(path).ok()?;
    u16::from_str_radix(text.trim().trim_start_matches("0x"), 16).ok()
}
