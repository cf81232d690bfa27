//! Serving the host's requests on a byte stream: frames in, validated messages to the agent,
//! replies out. Generic over the stream so it runs the same on the virtio port and on a socket
//! pair in tests.

use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use vfmig_droplog::DropLog;
use vfmig_protocol::frame::Decoder;
use vfmig_protocol::message::{self, ErrorReply, GuestMessage, HostMessage, MessageError};
use vfmig_protocol::ErrorCode;

use crate::agent::Agent;
use crate::netstate::NewLink;

/// How long to wait before reading again while no host is connected.
const IDLE_BACKOFF: Duration = Duration::from_millis(100);
/// A reply that cannot be written in this time is dropped: the host has gone, and will start
/// its next session with a sync anyway.
const WRITE_DEADLINE: Duration = Duration::from_secs(5);

/// Serves the stream until it fails, and hands the agent every link that appears. A 0-byte
/// read is not the end: on a virtio port it means no host is connected, so the decoder forgets
/// any half frame and the session waits. Requests and new links are handled one at a time, so
/// a restore the agent starts by itself never runs beside one the host asked for. What is
/// dropped is counted and logged at a bounded rate: whatever the host writes, it cannot make
/// the agent write a line per bad frame.
pub async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    agent: &mut Agent,
    links: impl Stream<Item = NewLink>,
) -> std::io::Result<()> {
    let mut decoder = Decoder::new();
    let mut drops = DropLog::new("the host");
    let mut buf = vec![0u8; 64 << 10];
    let mut links = std::pin::pin!(links.fuse());
    loop {
        let n = tokio::select! {
            n = stream.read(&mut buf) => n?,
            Some(link) = links.next() => {
                agent.link_appeared(link).await;
                continue;
            }
            () = drops.summarise_when_due() => continue,
        };
        if n == 0 {
            decoder.reset();
            tokio::time::sleep(IDLE_BACKOFF).await;
            continue;
        }
        for frame in decoder.feed(&buf[..n]) {
            let payload = match frame {
                Ok(p) => p,
                Err(e) => {
                    drops.note(e.kind(), &e);
                    continue;
                }
            };
            let (id, replies) = match message::decode::<HostMessage>(&payload) {
                Ok(env) => {
                    tracing::info!(id = env.id, kind = message::Message::kind(&env.msg), "request");
                    (env.id, agent.handle(env.msg).await)
                }
                Err(e) => match e.request_id() {
                    Some(id) => (id, vec![bad_request(&e)]),
                    None => {
                        drops.note("undecodable message", &e);
                        continue;
                    }
                },
            };
            for reply in replies {
                let bytes = match message::encode(id, &reply) {
                    Ok(b) => b,
                    Err(e) => {
                        tracing::error!(error = %e, "reply does not fit a frame");
                        continue;
                    }
                };
                match tokio::time::timeout(WRITE_DEADLINE, stream.write_all(&bytes)).await {
                    Ok(result) => result?,
                    Err(_) => tracing::warn!(id, "host did not take the reply in time; dropped"),
                }
            }
        }
    }
}

fn bad_request(e: &MessageError) -> GuestMessage {
    GuestMessage::Error(ErrorReply {
        code: ErrorCode::BadRequest,
        message: e.to_string(),
    })
}
