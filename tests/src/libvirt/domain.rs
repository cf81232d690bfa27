//! The test guest as a libvirt domain: guest.xml beside this file, filled in. Its sockets and
//! console live under libvirt's own directories, which are each host's private ones.

use std::path::PathBuf;

use crate::image::GuestImage;
use crate::vm::{kernel_cmdline, VmConfig};

use super::config::IFUP_PATH;

const TEMPLATE: &str = include_str!("guest.xml");

/// The busybox guest under libvirt: its agent runs, the DMA hook's module is there, and its
/// one NIC, the emulated VF, has the fabric's guest addresses.
#[derive(Clone, Debug)]
pub struct GuestDomain {
    pub name: String,
    pub mac: String,
    pub memory_mib: u32,
}

impl GuestDomain {
    pub fn new(name: &str, mac: &str) -> Self {
        Self {
            name: name.into(),
            mac: mac.into(),
            memory_mib: 256,
        }
    }

    /// The agent's socket, as libvirtd sees it (map it with `Host::path`).
    pub fn agent_socket(&self) -> PathBuf {
        PathBuf::from(format!("/run/libvirt/qemu/{}-agent.sock", self.name))
    }

    /// The test shell's socket, as libvirtd sees it.
    pub fn shell_socket(&self) -> PathBuf {
        PathBuf::from(format!("/run/libvirt/qemu/{}-shell.sock", self.name))
    }

    /// The guest's serial console, as libvirtd sees it.
    pub fn console(&self) -> PathBuf {
        PathBuf::from(format!("/var/log/libvirt/qemu/{}-console.log", self.name))
    }

    /// The domain XML booting `image`.
    pub fn xml(&self, image: &GuestImage) -> String {
        let config = VmConfig {
            name: "libvirt",
            tap: None,
            nic: true,
            mac: self.mac.clone(),
            agent: true,
            incoming: false,
            hook: true,
            iommu: false,
            standby: false,
            failover: false,
            pf: None,
            spare_port: false,
            second_vf: None,
        };
        let fields = [
            ("{name}", self.name.clone()),
            ("{memory_mib}", self.memory_mib.to_string()),
            ("{kernel}", image.kernel.display().to_string()),
            ("{initrd}", image.initramfs.display().to_string()),
            ("{cmdline}", kernel_cmdline(image, &config)),
            ("{mac}", self.mac.clone()),
            ("{ifup}", IFUP_PATH.into()),
            ("{console}", self.console().display().to_string()),
            ("{agent}", self.agent_socket().display().to_string()),
            ("{shell}", self.shell_socket().display().to_string()),
        ];
        fields.iter().fold(TEMPLATE.to_owned(), |xml, (field, value)| {
            xml.replace(field, &escape(value))
        })
    }
}

/// A fresh emulated VF for a host's empty root port, as `<interface>` XML: the same alias as
/// the VF it replaces, a MAC of its own.
pub fn fresh_vf_xml(mac: &str) -> String {
    format!(
        "<interface type='ethernet'><mac address='{}'/><script path='{}'/><model type='e1000e'/>\
         <rom enabled='no'/><alias name='ua-vf'/></interface>",
        escape(mac),
        escape(IFUP_PATH)
    )
}

/// `value` as XML text or attribute content.
fn escape(value: &str) -> String {
    value
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\'', "&apos;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_is_filled_in_and_escaped() {
        let image = GuestImage {
            kernel: "/images/a&b/vmlinuz".into(),
            initramfs: "/images/initramfs.gz".into(),
            disk: None,
        };
        let xml = GuestDomain::new("guest", "52:54:00:10:00:01").xml(&image);
        assert!(!xml.contains("{"), "a field was left unfilled:\n{xml}");
        assert!(xml.contains("<kernel>/images/a&amp;b/vmlinuz</kernel>"), "{xml}");
        assert!(xml.contains("vfmig.agent=on vfmig.hook=on"), "{xml}");
        assert!(xml.contains("<mac address='52:54:00:10:00:01'/>"), "{xml}");
    }
}
