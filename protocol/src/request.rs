//! Matching the guest's replies to the host's outstanding requests.
//!
//! The guest is untrusted: a reply with an id nobody asked for, a reply of the wrong kind, or a
//! sync acknowledgement with a stale nonce is refused here, in one place, instead of being
//! interpreted by whichever wait happens to be running.

use std::collections::HashMap;

use crate::message::{Envelope, GuestMessage, HostMessage, RequestId};

/// At most this many requests may be outstanding; the host never needs more.
pub const MAX_OUTSTANDING: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    #[error("reply {kind} carries id {id}, which matches no outstanding request")]
    Unsolicited { id: RequestId, kind: &'static str },
    #[error("reply {got} to request {id} ({request}) is not an answer to it")]
    WrongKind {
        id: RequestId,
        request: &'static str,
        got: &'static str,
    },
    #[error("sync acknowledgement carries nonce {got}, expected {expected}: stale bytes from an earlier session")]
    StaleSync { expected: u64, got: u64 },
    #[error("{0} requests already outstanding")]
    TooMany(usize),
}

/// Whether a reply completes its request or more replies will follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    Interim,
    Final,
}

#[derive(Debug, Default)]
pub struct RequestTracker {
    next_id: RequestId,
    pending: HashMap<RequestId, HostMessage>,
}

impl RequestTracker {
    pub fn new() -> Self {
        Self {
            next_id: 1,
            pending: HashMap::new(),
        }
    }

    /// Registers a request and returns the id to send it with.
    pub fn issue(&mut self, msg: HostMessage) -> Result<Envelope<HostMessage>, ReplyError> {
        if self.pending.len() >= MAX_OUTSTANDING {
            return Err(ReplyError::TooMany(self.pending.len()));
        }
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        self.pending.insert(id, msg.clone());
        Ok(Envelope { id, msg })
    }

    /// Forgets a request whose deadline passed; a late reply to it is then unsolicited.
    pub fn abandon(&mut self, id: RequestId) {
        self.pending.remove(&id);
    }

    pub fn outstanding(&self) -> usize {
        self.pending.len()
    }

    /// Checks a reply against its request, and retires the request on its final reply.
    pub fn accept(&mut self, reply: &Envelope<GuestMessage>) -> Result<Progress, ReplyError> {
        use GuestMessage as G;
        use HostMessage as H;
        let got = crate::message::Message::kind(&reply.msg);
        let request = self.pending.get(&reply.id).ok_or(ReplyError::Unsolicited {
            id: reply.id,
            kind: got,
        })?;
        let progress = match (request, &reply.msg) {
            (_, G::Error(_)) => Progress::Final,
            (H::Hello(_), G::Hello(_)) => Progress::Final,
            (H::Sync { nonce }, G::SyncAck { nonce: echoed }) => {
                if nonce != echoed {
                    return Err(ReplyError::StaleSync {
                        expected: *nonce,
                        got: *echoed,
                    });
                }
                Progress::Final
            }
            (H::PrepareUnplug(_), G::StateSaved(_)) => Progress::Interim,
            (H::PrepareUnplug(_), G::UnplugReady(_)) => Progress::Final,
            (H::Restore(_), G::Restored(_)) => Progress::Final,
            (H::StatusQuery, G::Status(_)) => Progress::Final,
            (H::TrackDma(_) | H::StopDmaTracking, G::DmaTracking(_)) => Progress::Final,
            (H::Keep(_), G::Kept(_)) => Progress::Final,
            (request, _) => {
                let request = crate::message::Message::kind(request);
                return Err(ReplyError::WrongKind {
                    id: reply.id,
                    request,
                    got,
                });
            }
        };
        if progress == Progress::Final {
            self.pending.remove(&reply.id);
        }
        Ok(progress)
    }
}
