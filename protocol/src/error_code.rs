//! Stable error codes carried by `Error` messages.
//!
//! The numbers are part of the protocol: never renumber, only add. A code this build does not
//! know (sent by a newer peer) is kept as [`ErrorCode::Other`] rather than rejected, so an
//! older host can still report it.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The request could not be decoded or failed validation.
    BadRequest,
    /// The peer speaks no common protocol version.
    VersionMismatch,
    /// The named interface does not exist or does not match its description.
    NoSuchInterface,
    /// Reading the interface's state from the kernel failed.
    CaptureFailed,
    /// Writing or reading the persisted state failed.
    StorageFailed,
    /// A saved state failed validation (truncated, altered, unknown format).
    InvalidState,
    /// Restoring finished with items that could not be applied.
    RestoreIncomplete,
    /// The agent is busy with another request of the same kind.
    Busy,
    /// Anything else; the message says what.
    Internal,
    /// The DMA hook is not installed, did not load, or refused the device.
    HookUnavailable,
    /// The standby NIC the host named is missing, has no carrier, or could not take the
    /// VF's addresses.
    StandbyUnusable,
    /// The saved state on record is not the one the host named (another digest).
    StateMismatch,
    /// The interface's state holds what restore cannot put back (an upper device, a master,
    /// a multipath leg, …); the message names each item and nothing was saved (1.2).
    Unrestorable,
    /// A code this build does not know.
    Other(u16),
}

impl ErrorCode {
    pub fn code(self) -> u16 {
        match self {
            Self::BadRequest => 1,
            Self::VersionMismatch => 2,
            Self::NoSuchInterface => 3,
            Self::CaptureFailed => 4,
            Self::StorageFailed => 5,
            Self::InvalidState => 6,
            Self::RestoreIncomplete => 7,
            Self::Busy => 8,
            Self::Internal => 9,
            Self::HookUnavailable => 10,
            Self::StandbyUnusable => 11,
            Self::StateMismatch => 12,
            Self::Unrestorable => 13,
            Self::Other(n) => n,
        }
    }

    pub fn from_code(n: u16) -> Self {
        match n {
            1 => Self::BadRequest,
            2 => Self::VersionMismatch,
            3 => Self::NoSuchInterface,
            4 => Self::CaptureFailed,
            5 => Self::StorageFailed,
            6 => Self::InvalidState,
            7 => Self::RestoreIncomplete,
            8 => Self::Busy,
            9 => Self::Internal,
            10 => Self::HookUnavailable,
            11 => Self::StandbyUnusable,
            12 => Self::StateMismatch,
            13 => Self::Unrestorable,
            n => Self::Other(n),
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "E{:03}", self.code())
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u16(self.code())
    }
}

impl<'de> Deserialize<'de> for ErrorCode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        u16::deserialize(d).map(Self::from_code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_stable_and_unknown_ones_survive() {
        for n in 0..=20u16 {
            assert_eq!(ErrorCode::from_code(n).code(), n);
        }
        assert_eq!(ErrorCode::InvalidState.code(), 6);
        assert_eq!(ErrorCode::from_code(4242), ErrorCode::Other(4242));
    }
}
