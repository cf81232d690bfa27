//! The PCI identity and driver of a network interface, from sysfs.

use std::fs;
use std::path::Path;

use vfmig_protocol::netstate::PciIdentity;

/// Driver name and PCI identity, or `None` for a virtual link. sysfs shows the namespace it
/// was mounted in, so the entry is used only when its ifindex is the link's own.
pub(crate) fn identity(name: &str, ifindex: u32) -> (Option<String>, Option<PciIdentity>) {
    let dir = Path::new("/sys/class/net").join(name);
    let same_link = fs::read_to_string(dir.join("ifindex"))
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        == Some(ifindex);
    if !same_link {
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
