//! Applying many independent rtnetlink changes in few system calls.
//!
//! rtnetlink's `Handle` sends one datagram per request and waits for one acknowledgement each,
//! so restoring 15,000 items costs 15,000 send/receive pairs and is no faster than `ip -batch`.
//! Here requests are packed many to a datagram and only the last of each chunk asks for an
//! acknowledgement. The kernel handles a socket's messages in order and always reports a
//! failure, tagged with the failed request's sequence number, so when the last one is
//! acknowledged the whole chunk is done and every error for it has arrived. Failure reports are
//! capped to a header each (NETLINK_CAP_ACK), and a chunk is small enough that all of its
//! reports fit the receive buffer even if every request fails.
//!
//! Framing and (de)serialisation are netlink-packet-core's and netlink-packet-route's; only the
//! batching is ours.

use std::io;
use std::time::Duration;

use rtnetlink::packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE,
    NLM_F_REQUEST,
};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::sys::protocols::NETLINK_ROUTE;
use rtnetlink::sys::{AsyncSocket, AsyncSocketExt, SocketAddr, TokioSocket};

use super::restore::Item;

/// Requests per datagram.
const CHUNK: usize = 128;
/// Receive buffer asked for; a chunk of failure reports needs far less.
const RECV_BUFFER: usize = 1 << 20;
/// The kernel answers a chunk in milliseconds; past this something is badly wrong.
const CHUNK_DEADLINE: Duration = Duration::from_secs(10);

/// One change: what to call it in a report, the message, and how it meets what exists.
pub(crate) struct Change {
    pub what: Item,
    pub msg: RouteNetlinkMessage,
    pub mode: Mode,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Replaces the object with the same key, or creates it (NLM_F_REPLACE).
    Replace,
    /// Creates it; one with the same key already there is an error (NLM_F_EXCL).
    Create,
    /// Adds it beside others with the same key (NLM_F_APPEND): routes told apart by their
    /// gateway or source only.
    Append,
}

impl Mode {
    fn flags(self) -> u16 {
        match self {
            Self::Replace => NLM_F_REPLACE,
            Self::Create => NLM_F_EXCL,
            Self::Append => NLM_F_APPEND,
        }
    }
}

pub(crate) struct Bulk {
    socket: TokioSocket,
    next_seq: u32,
}

impl Bulk {
    /// Opens a route-netlink socket in the calling thread's network namespace.
    pub fn open() -> io::Result<Self> {
        let mut socket = TokioSocket::new(NETLINK_ROUTE)?;
        let s = socket.socket_mut();
        s.bind_auto()?;
        s.connect(&SocketAddr::new(0, 0))?;
        s.set_cap_ack(true)?;
        // Larger than the default where allowed; the chunk size keeps us safe where not.
        let _ = s.set_rx_buf_sz(RECV_BUFFER);
        Ok(Self { socket, next_seq: 1 })
    }

    /// Applies every change, in order, and returns each one's outcome (the errno on failure).
    pub async fn apply(&mut self, changes: Vec<Change>) -> Vec<(Item, Result<(), io::Error>)> {
        let mut out = Vec::with_capacity(changes.len());
        let mut changes = changes.into_iter().peekable();
        while changes.peek().is_some() {
            let (whats, requests): (Vec<Item>, Vec<_>) =
                changes.by_ref().take(CHUNK).map(|c| (c.what, (c.msg, c.mode))).unzip();
            let results = match tokio::time::timeout(CHUNK_DEADLINE, self.apply_chunk(requests)).await {
                Ok(Ok(results)) => results,
                Ok(Err(e)) => whats
                    .iter()
                    .map(|_| Err(io::Error::new(e.kind(), e.to_string())))
                    .collect(),
                Err(_) => whats
                    .iter()
                    .map(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "no answer from the kernel")))
                    .collect(),
            };
            out.extend(whats.into_iter().zip(results));
        }
        out
    }

    /// Sends one chunk and collects its outcomes. The messages are moved into their frames,
    /// not copied: 15,000 routes and neighbours are restored at a time.
    async fn apply_chunk(
        &mut self,
        requests: Vec<(RouteNetlinkMessage, Mode)>,
    ) -> io::Result<Vec<Result<(), io::Error>>> {
        let count = requests.len();
        let first = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(count as u32).max(1);
        let mut buf = Vec::new();
        for (i, (payload, mode)) in requests.into_iter().enumerate() {
            let mut header = NetlinkHeader::default();
            header.flags = NLM_F_REQUEST | NLM_F_CREATE | mode.flags();
            if i + 1 == count {
                header.flags |= NLM_F_ACK;
            }
            header.sequence_number = first.wrapping_add(i as u32);
            let mut msg = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(payload));
            msg.finalize();
            let start = buf.len();
            buf.resize(start + msg.buffer_len(), 0);
            msg.serialize(&mut buf[start..]);
        }
        self.socket.send(&buf).await?;

        let mut results: Vec<Result<(), io::Error>> = (0..count).map(|_| Ok(())).collect();
        let last = first.wrapping_add(count as u32 - 1);
        loop {
            let (data, _) = self.socket.recv_from_full().await?;
            let mut offset = 0;
            while offset < data.len() {
                let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[offset..])
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                let len = msg.header.length as usize;
                if len == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "zero-length netlink message",
                    ));
                }
                offset += (len + 3) & !3;
                let seq = msg.header.sequence_number;
                let index = seq.wrapping_sub(first) as usize;
                if index >= count {
                    continue; // a late answer to an earlier, abandoned chunk
                }
                if let NetlinkPayload::Error(e) = msg.payload {
                    if let Some(code) = e.code {
                        results[index] = Err(io::Error::from_raw_os_error(-code.get()));
                    }
                    if seq == last {
                        return Ok(results);
                    }
                }
            }
        }
    }
}
