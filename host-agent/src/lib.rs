//! vfmig's host agent: drives QEMU (over QMP) and the guest agent (over virtio-serial) through
//! a live migration that keeps the VF active during pre-copy, then unplugs it cooperatively
//! and has the state restored on the destination.
//!
//! It must never trust what the guest says (every message is validated and every wait has a
//! deadline), never start a migration it cannot finish or roll back, and never change the VM
//! before the guest and the destination have been checked.
//!
//! - [`qmp`]: a thin QMP client and the migration API's types.
//! - [`channel`]: the host's end of the guest channel.
//! - [`migration`]: the migration state machine and its timeline.
//! - [`sriov`]: VFs on the host's PF: reading, provisioning for vfio-pci, releasing.
//! - [`vm`]: the VM seam (what a migration needs from the hypervisor), over QMP.
//! - [`guest`]: the guest seam (the guest agent's requests), over the virtio-serial channel.

pub mod channel;
pub mod guest;
pub mod migration;
pub mod qmp;
pub mod sriov;
pub mod vm;
