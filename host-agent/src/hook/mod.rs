//! The libvirt hook's decisions: libvirt runs `/etc/libvirt/hooks/qemu.d/vfmig` for every
//! domain operation, and vfmig answers two of them.
//!
//! - `migrate begin` on the destination, with the incoming definition: a domain that lists VFs
//!   for vfmig must come with vfmig-host's fresh mark ([`incoming::judge`]) — a plain
//!   `virsh migrate` is refused with a message naming vfmig, before libvirt starts anything.
//!   For each VF on a configured network, the source's descriptor is checked against the PF's
//!   offer and a VF provisioned; the definition libvirt starts the domain from then names it.
//! - `release end`, when a domain left the host (migrated away, stopped, or an incoming
//!   migration failed): the VFs the hook provisioned for it are handed back ([`record`]).
//!
//! The hook must never refuse a domain that is not vfmig's, and never print anything on
//! standard output but a definition: libvirt takes what it prints as the domain's XML.

pub mod config;
pub mod incoming;
pub mod record;

pub use config::{HostConfig, NetworkConfig};
pub use incoming::{judge, Incoming, IncomingVf, Refusal};
