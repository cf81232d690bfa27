//! Sealing a state into its on-disk document and opening it again.

use serde::Deserialize;
use serde_json::value::RawValue;
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

#[derive(Deserialize)]
struct Head {
    format: u32,
}

/// The document with its state left unparsed: the digest is checked over the state's bytes as
/// written, before they are interpreted.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DocumentIn<'a> {
    format: u32,
    digest: String,
    #[serde(borrow)]
    state: &'a RawValue,
}

/// `sha256:<hex>` over the state's canonical JSON.
pub fn digest(state: &SavedState) -> String {
    digest_of(&serde_json::to_vec(state).expect("a SavedState always serialises"))
}

fn digest_of(canonical: &[u8]) -> String {
    let hash = Sha256::digest(canonical);
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
    // Serialised once, hashed and written as it is: for 15,000 items the second serialisation
    // a derived document would cost was a tenth of the capture.
    let canonical = serde_json::to_string(state).expect("a SavedState always serialises");
    let digest = digest_of(canonical.as_bytes());
    format!("{{\"format\":{FORMAT_VERSION},\"digest\":\"{digest}\",\"state\":{canonical}}}")
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
    let doc: DocumentIn = match serde_json::from_slice(bytes) {
        Ok(doc) => doc,
        Err(e) => {
            // Another format may be shaped otherwise: named as such before its shape is judged.
            return Err(match serde_json::from_slice::<Head>(bytes) {
                Ok(head) if head.format != FORMAT_VERSION => StateError::UnknownFormat { found: head.format },
                _ => parse_error(e),
            });
        }
    };
    if doc.format != FORMAT_VERSION {
        return Err(StateError::UnknownFormat { found: doc.format });
    }
    let computed = digest_of(doc.state.get().as_bytes());
    if computed != doc.digest {
        return Err(StateError::DigestMismatch {
            recorded: doc.digest,
            computed,
        });
    }
    let state: SavedState = serde_json::from_str(doc.state.get()).map_err(parse_error)?;
    check(&state.interface)?;
    Ok(state)
}
