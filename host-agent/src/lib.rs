//! vfmig's host agent: drives the hypervisor and the guest agent (over virtio-serial) through
//! a live migration that keeps the VFs active during pre-copy, then unplugs them cooperatively
//! and has their state restored onto fresh VFs on the destination.
//!
//! It must never trust what the guest says (every message is validated and every wait has a
//! deadline), never start a migration it cannot finish or give back, and never change the VM
//! before the guest and the destination have been checked.
//!
//! - [`vm`]: the VM seam (what a migration needs from the hypervisor), over QMP.
//! - [`guest`]: the guest seam (the guest agent's requests), over the virtio-serial channel.
//! - [`migration`]: the state machines of both sides, their journal and timeline.
//! - [`qmp`], [`channel`]: a thin QMP client; the host's end of the guest channel.
//! - [`sriov`]: VFs on the host's PF: reading, provisioning for vfio-pci, releasing.
//! - [`domain_xml`], [`hook`]: libvirt's domain XML as vfmig reads and marks it; what the
//!   libvirt hook decides about an incoming migration, and the host's configuration.

pub mod channel;
pub mod domain_xml;
pub mod guest;
pub mod hook;
pub mod migration;
pub mod qmp;
pub mod sriov;
pub mod vm;
