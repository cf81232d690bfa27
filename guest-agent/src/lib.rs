//! vfmig's guest agent: runs inside the VM, captures the VF's network state before the host
//! unplugs it and restores that state onto the fresh VF after migration, lends it to a standby
//! NIC for the VF gap, and drives the DMA hook (`kmod/vfmig_dirty.c`) that keeps the VF's DMA
//! writes visible to pre-copy.
//!
//! It must never act on a host request it has not validated, never change an interface other
//! than the one a request names and the standby it lends that one's state to (and takes it
//! back from), and never stop a restore at the first item that fails: every
//! item is attempted and every failure reported, because a half-restored NIC with a silent
//! error is worse than one with a list of what is missing. It never keeps the hook's state in
//! memory only: the kernel module holds it, so a restarted agent finds it as it was. What it
//! shows on D-Bus (`org.vfmig.Guest1`) is read-only: the bus can never make it change anything.
//! With the guest's network manager (NetworkManager, systemd-networkd, ifupdown) it only ever
//! touches the VF, and hands it back as it found it.

pub mod agent;
pub mod channel;
pub mod dbus;
pub mod dma_hook;
pub mod events;
mod handback;
pub mod netstate;
pub mod owner;
pub mod pending;
pub mod store;
