//! The language the vfmig host agent and guest agent speak, and the document the guest
//! agent saves an interface's network state in.
//!
//! Everything here is pure: types, encoding, decoding and validation. This crate must never
//! perform I/O, spawn, sleep or read a clock; callers pass bytes in and take bytes out, so
//! every rule about untrusted input can be tested (and fuzzed) without a VM.
//!
//! - [`frame`]: self-synchronising framing for a byte stream that can be cut at any moment.
//! - [`message`]: typed messages in both directions, with request ids.
//! - [`version`]: protocol version ranges and negotiation.
//! - [`request`]: matching replies to outstanding requests.
//! - [`netstate`]: the saved network state of one interface, sealed with a digest.
//! - [`descriptor`]: a source VF and a destination PF's offer, and the check of the two.

pub mod descriptor;
pub mod error_code;
pub mod frame;
pub mod mac;
pub mod message;
pub mod netstate;
pub mod request;
pub mod version;

pub use error_code::ErrorCode;
pub use mac::MacAddr;
pub use version::{ProtocolVersion, VersionRange};
