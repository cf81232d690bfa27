//! Talking to QEMU over QMP.

pub mod client;
pub mod migration;

pub use client::{Event, Qmp, QmpError};
