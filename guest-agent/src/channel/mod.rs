//! The guest's end of the host channel: the virtio-serial port and the session served on it.

pub mod port;
pub mod session;
