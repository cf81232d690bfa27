//! The host's end of the guest channel.

pub mod client;

pub use client::{ChannelError, GuestChannel, Session};
