//! Protocol versions and their negotiation.
//!
//! Each side announces the inclusive range it speaks; the session uses the highest version
//! both speak. A peer with no overlap is refused before anything changes, with an error naming
//! both ranges so the operator sees which side to upgrade.

use std::fmt;

use serde::{Deserialize, Serialize};

/// `major.minor`: a major change breaks message layouts, a minor one only adds optional fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ProtocolVersion {
    pub major: u16,
    pub minor: u16,
}

impl ProtocolVersion {
    pub const fn new(major: u16, minor: u16) -> Self {
        Self { major, minor }
    }
}

impl fmt::Display for ProtocolVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// An inclusive range of versions, `min ..= max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct VersionRange {
    pub min: ProtocolVersion,
    pub max: ProtocolVersion,
}

impl fmt::Display for VersionRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}..={}", self.min, self.max)
    }
}

/// The range this build speaks. 1.1 added `keep`, the digest a `restore` names and the
/// location a `state_saved` reports; 1.2 the refusal of state restore cannot put back
/// (`accept_loss`, `lost`, error 13). Older peers are still served without them.
pub const SUPPORTED: VersionRange = VersionRange {
    min: ProtocolVersion::new(1, 0),
    max: ProtocolVersion::new(1, 2),
};

/// The first version with `keep` and the checked digest on `restore`.
pub const KEEP: ProtocolVersion = ProtocolVersion::new(1, 1);

/// The first version whose agent refuses, before anything is saved, a state it could not
/// restore; an older agent saves what it can and drops the rest with a line in its log.
pub const REFUSES_LOSS: ProtocolVersion = ProtocolVersion::new(1, 2);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NegotiationError {
    #[error("no common protocol version: we speak {ours}, the peer speaks {theirs}")]
    NoOverlap { ours: VersionRange, theirs: VersionRange },
    #[error("the peer announced an empty version range {0} (min above max)")]
    EmptyRange(VersionRange),
}

/// Picks the highest version in both ranges.
pub fn negotiate(ours: VersionRange, theirs: VersionRange) -> Result<ProtocolVersion, NegotiationError> {
    if theirs.min > theirs.max {
        return Err(NegotiationError::EmptyRange(theirs));
    }
    let low = ours.min.max(theirs.min);
    let high = ours.max.min(theirs.max);
    if low > high {
        return Err(NegotiationError::NoOverlap { ours, theirs });
    }
    Ok(high)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(a: (u16, u16), b: (u16, u16)) -> VersionRange {
        VersionRange {
            min: ProtocolVersion::new(a.0, a.1),
            max: ProtocolVersion::new(b.0, b.1),
        }
    }

    #[test]
    fn picks_the_highest_common_version() {
        assert_eq!(
            negotiate(range((1, 0), (2, 3)), range((1, 2), (3, 0))),
            Ok(ProtocolVersion::new(2, 3))
        );
        assert_eq!(
            negotiate(range((1, 0), (1, 4)), range((1, 2), (1, 2))),
            Ok(ProtocolVersion::new(1, 2))
        );
    }

    #[test]
    fn names_both_ranges_when_there_is_no_overlap() {
        let err = negotiate(range((1, 0), (1, 9)), range((2, 0), (3, 0))).unwrap_err();
        assert_eq!(
            err.to_string(),
            "no common protocol version: we speak 1.0..=1.9, the peer speaks 2.0..=3.0"
        );
    }

    #[test]
    fn refuses_an_empty_range() {
        assert!(matches!(
            negotiate(SUPPORTED, range((2, 0), (1, 0))),
            Err(NegotiationError::EmptyRange(_))
        ));
    }
}
