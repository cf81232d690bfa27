//! vfmig's guest agent: runs inside the VM, captures the VF's network state before the host
//! unplugs it and restores that state onto the fresh VF after migration.
//!
//! It must never act on a host request it has not validated, never change an interface other
//! than the one a request names, and never stop a restore at the first item that fails: every
//! item is attempted and every failure reported, because a half-restored NIC with a silent
//! error is worse than one with a list of what is missing.

pub mod agent;
pub mod channel;
pub mod dma_hook;
pub mod netstate;
pub mod store;
