//! Sealing a state into its on-disk document and opening it again.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{check, Inconsistency, SavedState};

/// The document format this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Largest document accepted: far above 10,000 neighbours and 5,000 routes, far below harm.
pub const MAX_DOCUMENT: usize = 64 << 20;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    #[error("saved state is {len} bytes, more than the limit of {MAX_DOCUMENT}")]
    TooLarge { len: usize },
    #[error("saved state is truncated: the document ends before it is complete")]
    Truncated,
    #[error("saved state is not a valid document: {0}")]
    Malformed(String),
    #[error("saved state has format version {found}; this build reads version {FORMAT_VERSION}")]
    UnknownFormat { found: u32 },
    #[error("saved state was altered: recorded digest {recorded}, content hashes to {computed}")]
    DigestMismatch { recorded: String, computed: String },
    #[error("saved state is inconsistent: {0}")]
    Inconsistent(Inconsistency),
}

// The inconsistency is in the message; as a source too, a chain would print it twice.
impl From<Inconsistency> for StateError {
    fn from(e: Inconsistency) -> Self {
        Self::Inconsistent(e)
    }
}

#[derive(Serialize)]
struct DocumentOut<'a> {
    format: u32,
    digest: String,
    state: &'a SavedState,
}

#[derive(Deserialize)]
struct Head {
    format: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DocumentIn {
    #[serde(rename = "format")]
    _format: u32,
    digest: String,
    state: SavedState,
}

/// `sha256:<hex>` over the state's canonical JSON.
pub fn digest(state: &SavedState) -> String {
    let canonical = serde_json::to_vec(state).expect("a SavedState always serialises");
    let hash = Sha256::digest(&canonical);
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256:");
    for b in hash {
        out.push(char::from_digit(u32::from(b >> 4), 16).expect("nibble"));
        out.push(char::from_digit(u32::from(b & 15), 16).expect("nibble"));
    }
    out
}

/// The document to persist: format, digest, state.
pub fn seal(state: &SavedState) -> String {
    let doc = DocumentOut {
        format: FORMAT_VERSION,
        digest: digest(state),
        state,
    };
    serde_json::to_string(&doc).expect("a SavedState always serialises")
}

fn parse_error(e: serde_json::Error) -> StateError {
    if e.is_eof() {
        StateError::Truncated
    } else {
        StateError::Malformed(e.to_string())
    }
}

/// Reads a document written by [`seal`] and checks everything about it.
pub fn open(bytes: &[u8]) -> Result<SavedState, StateError> {
    if bytes.len() > MAX_DOCUMENT {
        return Err(StateError::TooLarge { len: bytes.len() });
    }
    let head: Head = serde_json::from_slice(bytes).map_err(parse_error)?;
    if head.format != FORMAT_VERSION {
        return Err(StateError::UnknownFormat { found: head.format });
    }
    let doc: DocumentIn = serde_json::from_slice(bytes).map_err(parse_error)?;
    let computed = digest(&doc.state);
    if computed != doc.digest {
        return Err(StateError::DigestMismatch {
            recorded: doc.digest,
            computed,
        });
    }
    check(&doc.state.interface)?;
    Ok(doc.state)
}
