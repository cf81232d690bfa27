//! The guest seam over the virtio-serial channel: each request in its own frame, a session
//! opened (or opened again) on demand, a connection lost on the way opened again once.
//!
//! Every request the host sends is idempotent on the guest's side, so a request that did
//! arrive before the connection broke is safe to send again.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::net::UnixStream;

use tokio::time::Instant;
use vfmig_protocol::message::{
    GuestMessage, HostMessage, InterfaceSelector, Keep, PrepareUnplug, Restore, Restored, SavedRef, StandbyRequest,
    StateSaved, TrackDma, TrackedDevice,
};
use vfmig_protocol::version::KEEP;
use vfmig_protocol::{MacAddr, ProtocolVersion};

use super::{Guest, GuestError, GuestInfo, Kept, Saved};
use crate::channel::{ChannelError, GuestChannel};

/// How the host agent names itself in its hello.
pub const HOST_AGENT: &str = concat!("vfmig-host ", env!("CARGO_PKG_VERSION"));

/// How the channel is reached: the unix socket behind the VM's port, or a stream a manager
/// hands over (libvirt's), connected anew each time.
type Dial = Box<dyn Fn() -> std::io::Result<std::os::unix::net::UnixStream>>;

pub struct ChannelGuest {
    dial: Dial,
    channel: Option<GuestChannel>,
    /// The session's version, once a hello was exchanged on the current connection.
    version: Option<ProtocolVersion>,
}

fn by_mac(mac: MacAddr) -> InterfaceSelector {
    InterfaceSelector {
        mac: Some(mac),
        ..Default::default()
    }
}

/// What a channel error means to the caller who allowed `deadline` for the whole request.
fn guest_error(request: &'static str, e: ChannelError, deadline: Duration) -> GuestError {
    match e {
        ChannelError::Timeout { .. } => GuestError::Silent {
            request,
            after: deadline,
        },
        ChannelError::Closed | ChannelError::Io(_) => GuestError::Lost(e.to_string()),
        ChannelError::Refused { reply, .. } => GuestError::Refused {
            request,
            code: reply.code,
            message: format!("{} ({})", reply.message, reply.code),
        },
        e @ (ChannelError::TooManyReplies(_) | ChannelError::Version(_) | ChannelError::Message(_)) => {
            GuestError::Unusable(e.to_string())
        }
    }
}

fn left(until: Instant) -> Duration {
    until.saturating_duration_since(Instant::now())
}

impl ChannelGuest {
    /// The guest behind the unix socket at `path`; nothing is connected until the first request.
    pub fn new(path: &Path) -> Self {
        let path: PathBuf = path.to_owned();
        Self::dialing(Box::new(move || std::os::unix::net::UnixStream::connect(&path)))
    }

    /// The guest behind whatever `dial` connects to, each time the channel is opened.
    pub fn dialing(dial: Dial) -> Self {
        Self {
            dial,
            channel: None,
            version: None,
        }
    }

    fn connect(&self) -> Result<GuestChannel, ChannelError> {
        let stream = (self.dial)()?;
        stream.set_nonblocking(true)?;
        Ok(GuestChannel::over(UnixStream::from_std(stream)?))
    }

    /// Connects and opens a session if there is none, by `until`.
    async fn open(&mut self, until: Instant) -> Result<(&mut GuestChannel, GuestInfo), ChannelError> {
        let mut channel = match self.channel.take() {
            Some(c) => c,
            None => self.connect()?,
        };
        let session = channel.open_session(HOST_AGENT, left(until)).await;
        let channel = self.channel.insert(channel);
        let session = session?;
        self.version = Some(session.version);
        let info = GuestInfo {
            agent: session.guest.agent,
            kernel_hook: session.guest.capabilities.kernel_hook,
            standby: session.guest.capabilities.standby,
            nic_owners: session.guest.capabilities.nic_owners,
        };
        Ok((channel, info))
    }

    /// Sends `msg` in a session and returns its replies, within `deadline` all told. A
    /// connection lost on the way is opened again and the request sent once more.
    async fn ask(&mut self, msg: HostMessage, deadline: Duration) -> Result<Vec<GuestMessage>, GuestError> {
        let request = vfmig_protocol::message::Message::kind(&msg);
        let until = Instant::now() + deadline;
        let mut retried = false;
        loop {
            let attempt = async {
                if self.version.is_none() {
                    self.open(until).await?;
                }
                let channel = self.channel.as_mut().ok_or(ChannelError::Closed)?;
                channel.request(msg.clone(), left(until)).await
            };
            match attempt.await {
                Err(e @ (ChannelError::Closed | ChannelError::Io(_))) if !retried => {
                    tracing::warn!(error = %e, "guest channel lost; connecting again");
                    self.channel = None;
                    self.version = None;
                    retried = true;
                }
                Err(e) => {
                    if matches!(e, ChannelError::Closed | ChannelError::Io(_)) {
                        self.channel = None;
                        self.version = None;
                    }
                    return Err(guest_error(request, e, deadline));
                }
                Ok(replies) => return Ok(replies),
            }
        }
    }
}

/// The final reply of an exchange, as the one kind expected.
fn last<T>(
    request: &'static str,
    replies: Vec<GuestMessage>,
    pick: impl Fn(GuestMessage) -> Option<T>,
) -> Result<T, GuestError> {
    replies
        .into_iter()
        .rev()
        .find_map(pick)
        .ok_or_else(|| GuestError::Unusable(format!("no answer of the expected kind to {request}")))
}

impl Guest for ChannelGuest {
    async fn hello(&mut self, deadline: Duration) -> Result<GuestInfo, GuestError> {
        self.version = None;
        let until = Instant::now() + deadline;
        match self.open(until).await {
            Ok((_, info)) => Ok(info),
            Err(e) => {
                self.channel = None;
                Err(guest_error("hello", e, deadline))
            }
        }
    }

    async fn track_dma(&mut self, mac: MacAddr, deadline: Duration) -> Result<Vec<TrackedDevice>, GuestError> {
        let msg = HostMessage::TrackDma(TrackDma { interface: by_mac(mac) });
        let replies = self.ask(msg, deadline).await?;
        last("track_dma", replies, |r| match r {
            GuestMessage::DmaTracking(t) if t.enabled => Some(t.devices),
            _ => None,
        })
    }

    async fn stop_dma(&mut self, deadline: Duration) -> Result<Vec<TrackedDevice>, GuestError> {
        let replies = self.ask(HostMessage::StopDmaTracking, deadline).await?;
        last("stop_dma_tracking", replies, |r| match r {
            GuestMessage::DmaTracking(t) => Some(t.devices),
            _ => None,
        })
    }

    async fn save(
        &mut self,
        mac: MacAddr,
        standby: &StandbyRequest,
        accept_loss: bool,
        unplug: Duration,
        deadline: Duration,
    ) -> Result<StateSaved, GuestError> {
        let msg = HostMessage::PrepareUnplug(PrepareUnplug {
            interface: by_mac(mac),
            deadline_ms: u32::try_from(unplug.as_millis()).unwrap_or(u32::MAX).max(1),
            standby: standby.clone(),
            accept_loss,
        });
        let replies = self.ask(msg, deadline).await?;
        last("prepare_unplug", replies, |r| match r {
            GuestMessage::StateSaved(s) => Some(s),
            _ => None,
        })
    }

    async fn restore(
        &mut self,
        saved: &Saved,
        onto: MacAddr,
        restore_mac: bool,
        deadline: Duration,
    ) -> Result<Restored, GuestError> {
        let msg = HostMessage::Restore(Restore {
            saved: saved.interface.clone(),
            onto: by_mac(onto),
            restore_mac,
            digest: Some(saved.digest.clone()),
        });
        let replies = self.ask(msg, deadline).await?;
        last("restore", replies, |r| match r {
            GuestMessage::Restored(r) => Some(r),
            _ => None,
        })
    }

    async fn keep(&mut self, mac: MacAddr, saved: Option<&Saved>, deadline: Duration) -> Result<Kept, GuestError> {
        let until = Instant::now() + deadline;
        if self.version.is_none() {
            self.open(until).await.map_err(|e| guest_error("keep", e, deadline))?;
        }
        if self.version.is_some_and(|v| v < KEEP) {
            // A 1.0 agent has no keep: restoring the state onto the VF puts back what moved.
            let Some(saved) = saved else {
                return Ok(Kept::default());
            };
            let r = self.restore(saved, mac, false, left(until)).await?;
            return Ok(Kept {
                saved: Some(r.interface),
                standby_released: r.standby_released,
                failed: r.failed.into_iter().chain(r.mismatches).collect(),
            });
        }
        let msg = HostMessage::Keep(Keep {
            interface: by_mac(mac),
            saved: saved.map(|s| SavedRef {
                interface: s.interface.clone(),
                digest: s.digest.clone(),
            }),
        });
        let replies = self.ask(msg, left(until)).await?;
        last("keep", replies, |r| match r {
            GuestMessage::Kept(k) => Some(Kept {
                saved: k.saved,
                standby_released: k.standby_released,
                failed: k.failed,
            }),
            _ => None,
        })
    }
}
