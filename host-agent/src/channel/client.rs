//! The host's end of the guest channel: the unix socket behind the VM's virtserialport,
//! framed messages, replies matched to requests, every wait bounded.
//!
//! A session starts with a sync: a fresh nonce, re-sent until the guest echoes it, because the
//! guest agent may not have opened its port yet (QEMU then holds the bytes) or may have
//! restarted and lost them. Anything the guest sends that is not a valid answer to an
//! outstanding request (stale acknowledgements from an earlier session, unsolicited ids, wrong
//! kinds) is logged and dropped, never acted on.

use std::collections::VecDeque;
use std::path::Path;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use vfmig_protocol::frame::Decoder;
use vfmig_protocol::message::{self, Capabilities, ErrorReply, GuestMessage, Hello, HostMessage};
use vfmig_protocol::request::{Progress, RequestTracker};
use vfmig_protocol::version::{negotiate, NegotiationError, SUPPORTED};
use vfmig_protocol::ProtocolVersion;

/// An unanswered sync is sent again after this, then after twice as long each time, up to
/// [`SYNC_RETRY_MAX`]. What reaches a virtio port before the guest side has it open is dropped
/// (right after a migration or an agent restart, the first sync usually is), so the first
/// retry comes soon; the guest answers every copy, and acks past the first are discarded.
const SYNC_RETRY: Duration = Duration::from_millis(100);
const SYNC_RETRY_MAX: Duration = Duration::from_secs(1);
/// Replies one request may produce before the guest is considered broken.
const MAX_REPLIES: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("guest channel: {0}")]
    Io(std::io::Error),
    #[error("guest channel closed (QEMU went away)")]
    Closed,
    #[error("the guest agent did not answer {waiting_for} within {after:?}")]
    Timeout { waiting_for: &'static str, after: Duration },
    #[error("the guest agent refused {request}: {} ({})", reply.message, reply.code)]
    Refused { request: &'static str, reply: ErrorReply },
    #[error("the guest agent sent {0} replies to one request")]
    TooManyReplies(usize),
    #[error(transparent)]
    Version(#[from] NegotiationError),
    #[error(transparent)]
    Message(#[from] message::MessageError),
}

// The I/O error is in the message; as a source too, a chain would print it twice.
impl From<std::io::Error> for ChannelError {
    fn from(e: std::io::Error) -> Self {
        Self::Io(e)
    }
}

/// What the guest said at the start of a session.
#[derive(Clone, Debug)]
pub struct Session {
    pub guest: Hello,
    pub version: ProtocolVersion,
}

pub struct GuestChannel {
    stream: UnixStream,
    decoder: Decoder,
    tracker: RequestTracker,
    inbox: VecDeque<(message::Envelope<GuestMessage>, Progress)>,
    /// One tally for the channel's life, not one per wait: a flood that spans the sync's
    /// retries costs a line when it starts, a summary a second, and one for the rest when
    /// the channel is dropped, however many waits it crossed.
    drops: vfmig_droplog::DropLog,
}

fn fresh_nonce() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    t ^ (u64::from(std::process::id()) << 32)
}

impl GuestChannel {
    /// The channel behind the unix socket at `path` (QEMU's chardev).
    pub async fn connect(path: &Path) -> Result<Self, ChannelError> {
        Ok(Self::over(UnixStream::connect(path).await?))
    }

    /// The channel over a stream already connected (libvirt's channel, carried to a socket).
    pub fn over(stream: UnixStream) -> Self {
        Self {
            stream,
            decoder: Decoder::new(),
            tracker: RequestTracker::new(),
            inbox: VecDeque::new(),
            drops: vfmig_droplog::DropLog::new("the guest"),
        }
    }

    /// Syncs with the guest agent and exchanges hellos, within `deadline`.
    pub async fn open_session(&mut self, agent: &str, deadline: Duration) -> Result<Session, ChannelError> {
        let until = Instant::now() + deadline;
        let nonce = fresh_nonce();
        let mut sent = Vec::new();
        let mut wait = SYNC_RETRY;
        'sync: loop {
            sent.push(self.send(HostMessage::Sync { nonce }).await?);
            let retry = (Instant::now() + wait).min(until);
            wait = (wait * 2).min(SYNC_RETRY_MAX);
            loop {
                match self.next_reply(retry, "sync").await {
                    Ok((env, _)) if env.msg == GuestMessage::SyncAck { nonce } => break 'sync,
                    Ok(_) => {}
                    Err(ChannelError::Timeout { .. }) if Instant::now() < until => continue 'sync,
                    Err(ChannelError::Timeout { .. }) => {
                        return Err(ChannelError::Timeout {
                            waiting_for: "sync",
                            after: deadline,
                        })
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        for id in sent {
            self.tracker.abandon(id);
        }
        let remaining = until.saturating_duration_since(Instant::now());
        let hello = HostMessage::Hello(Hello::ours(agent, Capabilities::default()));
        let replies = self.request(hello, remaining).await?;
        let Some(GuestMessage::Hello(guest)) = replies.into_iter().next() else {
            unreachable!("the tracker only accepts hello or error as an answer to hello")
        };
        let version = negotiate(SUPPORTED, guest.versions)?;
        Ok(Session { guest, version })
    }

    /// Sends a request and returns its replies, the final one last. An `error` reply becomes
    /// [`ChannelError::Refused`].
    pub async fn request(&mut self, msg: HostMessage, deadline: Duration) -> Result<Vec<GuestMessage>, ChannelError> {
        let kind = message::Message::kind(&msg);
        let until = Instant::now() + deadline;
        let id = self.send(msg).await?;
        let mut replies = Vec::new();
        loop {
            let (env, progress) = match self.next_reply(until, kind).await {
                Ok(r) => r,
                Err(e) => {
                    self.tracker.abandon(id);
                    return Err(match e {
                        ChannelError::Timeout { waiting_for, .. } => ChannelError::Timeout {
                            waiting_for,
                            after: deadline,
                        },
                        e => e,
                    });
                }
            };
            if env.id != id {
                continue;
            }
            if let GuestMessage::Error(reply) = env.msg {
                return Err(ChannelError::Refused { request: kind, reply });
            }
            replies.push(env.msg);
            if progress == Progress::Final {
                return Ok(replies);
            }
            if replies.len() >= MAX_REPLIES {
                self.tracker.abandon(id);
                return Err(ChannelError::TooManyReplies(replies.len()));
            }
        }
    }

    async fn send(&mut self, msg: HostMessage) -> Result<u64, ChannelError> {
        let env = self
            .tracker
            .issue(msg)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        self.stream.write_all(&message::encode(env.id, &env.msg)?).await?;
        Ok(env.id)
    }

    /// The next reply that answers an outstanding request; everything else is dropped.
    async fn next_reply(
        &mut self,
        until: Instant,
        waiting_for: &'static str,
    ) -> Result<(message::Envelope<GuestMessage>, Progress), ChannelError> {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            if let Some(r) = self.inbox.pop_front() {
                return Ok(r);
            }
            // Checked here, not only by the read's timeout: a read that always has bytes ready
            // (a guest flooding the channel) would never let that timeout fire.
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ChannelError::Timeout {
                    waiting_for,
                    after: left,
                });
            }
            let n = match tokio::time::timeout(left, self.stream.read(&mut buf)).await {
                Err(_) => {
                    return Err(ChannelError::Timeout {
                        waiting_for,
                        after: left,
                    })
                }
                Ok(n) => n?,
            };
            if n == 0 {
                return Err(ChannelError::Closed);
            }
            for frame in self.decoder.push(&buf[..n]) {
                let payload = match frame {
                    Ok(p) => p,
                    Err(e) => {
                        self.drops.note(e.kind(), &e);
                        continue;
                    }
                };
                let env = match message::decode(&payload) {
                    Ok(env) => env,
                    Err(e) => {
                        self.drops.note("undecodable message", &e);
                        continue;
                    }
                };
                match self.tracker.accept(&env) {
                    Ok(progress) => self.inbox.push_back((env, progress)),
                    Err(e) => self.drops.note("unexpected reply", &e),
                }
            }
        }
    }
}
