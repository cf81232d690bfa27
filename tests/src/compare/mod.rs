//! The side-by-side comparison the benchmark runs (`./scripts/bench compare`): vfmig, vfmig with
//! a standby NIC, QEMU's own virtio-net failover and a plain unplug/replug, each driven on a
//! fresh test bed while the peer keeps the guest's NIC busy, measured the same way, and
//! summarised with ratios against the two peers.

pub mod plot;
pub mod record;
pub mod runner;
pub mod summary;

pub use record::{Mark, Run, Variant};
