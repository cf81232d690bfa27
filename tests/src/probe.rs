//! Probes run from the peer host's namespace: a 1 kHz UDP echo probe that records every gap,
//! and a long-lived TCP connection whose liveness the tests check.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::netns::{Namespace, NetnsError};

/// What the peer saw while the probe ran.
#[derive(Debug, Clone)]
pub struct ProbeReport {
    pub sent: u64,
    pub received: u64,
    /// The service blackout: the longest run of unanswered probes (plus one interval), wherever
    /// it falls, including one still going when the probe stopped.
    pub max_gap: Duration,
    /// One entry per probe (one per millisecond): answered or not, for plotting.
    pub answered: Vec<bool>,
}

impl ProbeReport {
    pub fn lost(&self) -> u64 {
        self.sent - self.received
    }

    /// Where the longest run of unanswered probes starts, in probes (milliseconds) since
    /// the probe started, and how many it lasts.
    pub fn longest_gap(&self) -> (usize, usize) {
        let (mut best, mut run_start) = ((0, 0), None);
        for (i, answered) in self.answered.iter().chain([&true]).enumerate() {
            match (answered, run_start) {
                (false, None) => run_start = Some(i),
                (true, Some(start)) => {
                    if i - start > best.1 {
                        best = (start, i - start);
                    }
                    run_start = None;
                }
                _ => {}
            }
        }
        best
    }
}

/// A running UDP echo probe.
pub struct Probe {
    stop: Arc<AtomicBool>,
    sender: JoinHandle<u64>,
    receiver: JoinHandle<Vec<bool>>,
}

const INTERVAL: Duration = Duration::from_millis(1);

impl Probe {
    /// Starts probing `target` (the guest's echo port) from inside `peer`.
    pub fn start(peer: &Namespace, target: SocketAddr) -> Result<Self, NetnsError> {
        let socket = connected_udp(peer, target)?;
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .map_err(NetnsError::Open)?;
        let rx = socket.try_clone().map_err(NetnsError::Open)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop_tx = stop.clone();
        let sender = std::thread::spawn(move || {
            let start = Instant::now();
            let mut seq = 0u64;
            while !stop_tx.load(Ordering::Relaxed) {
                // A send that fails (no route, no neighbour yet) is a lost probe, counted as such.
                let _ = socket.send(&seq.to_be_bytes());
                seq += 1;
                let next = start + INTERVAL * seq as u32;
                if let Some(wait) = next.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
            seq
        });
        let stop_rx = stop.clone();
        let receiver = std::thread::spawn(move || {
            let mut answered = Vec::new();
            let mut buf = [0u8; 64];
            // Keep reading a little after the stop so late echoes still count.
            let mut deadline: Option<Instant> = None;
            loop {
                if stop_rx.load(Ordering::Relaxed) {
                    let d = *deadline.get_or_insert_with(|| Instant::now() + Duration::from_millis(200));
                    if Instant::now() > d {
                        break;
                    }
                }
                if let Ok(8) = rx.recv(&mut buf) {
                    let seq = u64::from_be_bytes(buf[..8].try_into().expect("8 bytes")) as usize;
                    if seq < 10_000_000 {
                        if answered.len() <= seq {
                            answered.resize(seq + 1, false);
                        }
                        answered[seq] = true;
                    }
                }
            }
            answered
        });
        Ok(Self { stop, sender, receiver })
    }

    pub fn stop(self) -> ProbeReport {
        self.stop.store(true, Ordering::Relaxed);
        let sent = self.sender.join().expect("probe sender panicked");
        let mut answered = self.receiver.join().expect("probe receiver panicked");
        answered.resize(sent as usize, false);
        let received = answered.iter().filter(|a| **a).count() as u64;
        // The blackout is the longest run of unanswered probes, wherever it is — also one that
        // had not ended when the probe stopped. With nothing lost it is one interval.
        let mut run = 0u32;
        let mut longest = 0u32;
        for a in &answered {
            run = if *a { 0 } else { run + 1 };
            longest = longest.max(run);
        }
        ProbeReport {
            sent,
            received,
            max_gap: INTERVAL * (longest + 1),
            answered,
        }
    }
}

/// Waits until the guest answers the peer's echo probe (it has booted and its NIC works),
/// within `deadline`.
pub fn wait_answering(peer: &Namespace, target: SocketAddr, deadline: Duration) -> Result<(), String> {
    let until = Instant::now() + deadline;
    loop {
        let probe = Probe::start(peer, target).map_err(|e| e.to_string())?;
        std::thread::sleep(Duration::from_millis(300));
        if probe.stop().received > 0 {
            return Ok(());
        }
        if Instant::now() > until {
            return Err(format!("{target} did not answer the peer within {deadline:?}"));
        }
    }
}

/// A UDP socket in `peer`, connected to `target`.
fn connected_udp(peer: &Namespace, target: SocketAddr) -> Result<UdpSocket, NetnsError> {
    peer.run(|| {
        let s = UdpSocket::bind(if target.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" })?;
        s.connect(target)?;
        Ok::<_, std::io::Error>(s)
    })?
    .map_err(NetnsError::Open)
}

/// Sends UDP datagrams with `size` bytes of payload from the peer to `target` as fast as the
/// peer can, for `how_long`; returns how many were sent. The receiver counts what arrived.
pub fn udp_flood(peer: &Namespace, target: SocketAddr, size: usize, how_long: Duration) -> Result<u64, NetnsError> {
    let socket = connected_udp(peer, target)?;
    let payload = vec![0x5au8; size];
    let started = Instant::now();
    let mut sent = 0;
    while started.elapsed() < how_long {
        // A full queue (ENOBUFS) is the offered load exceeding the path: not an error here.
        if socket.send(&payload).is_ok() {
            sent += 1;
        }
    }
    Ok(sent)
}

/// A steady UDP load from the peer: `per_ms` datagrams of `size` bytes every millisecond,
/// paced, so it keeps a NIC busy without starving the machine the way a flood would. Each
/// datagram's first byte is a tag (0 or 1) the receiver can count by, to tell the part of the
/// stream sent in one period (pre-copy, say) from the rest.
pub struct UdpStream {
    socket: UdpSocket,
    size: usize,
    per_ms: u32,
}

/// A running [`UdpStream`].
pub struct Streaming {
    stop: Arc<AtomicBool>,
    tag: Arc<AtomicU8>,
    sender: Option<JoinHandle<[u64; 2]>>,
}

impl UdpStream {
    /// Opens the peer's socket now (this needs the peer's namespace); sends nothing yet.
    pub fn open(peer: &Namespace, target: SocketAddr, size: usize, per_ms: u32) -> Result<Self, NetnsError> {
        Ok(Self {
            socket: connected_udp(peer, target)?,
            size,
            per_ms,
        })
    }

    /// Starts sending, tagged 0.
    pub fn start(&self) -> Result<Streaming, NetnsError> {
        let socket = self.socket.try_clone().map_err(NetnsError::Open)?;
        let (mut payload, per_ms) = (vec![0x5au8; self.size.max(1)], self.per_ms);
        let stop = Arc::new(AtomicBool::new(false));
        let tag = Arc::new(AtomicU8::new(0));
        let (stop_tx, tag_tx) = (stop.clone(), tag.clone());
        let sender = std::thread::spawn(move || {
            let start = Instant::now();
            let (mut sent, mut tick) = ([0u64; 2], 0u32);
            while !stop_tx.load(Ordering::Relaxed) {
                let t = tag_tx.load(Ordering::Relaxed).min(1);
                payload[0] = t;
                for _ in 0..per_ms {
                    // As in the flood, a send the path cannot take is load it did not carry.
                    if socket.send(&payload).is_ok() {
                        sent[usize::from(t)] += 1;
                    }
                }
                tick += 1;
                if let Some(wait) = (start + INTERVAL * tick).checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
            sent
        });
        Ok(Streaming {
            stop,
            tag,
            sender: Some(sender),
        })
    }
}

impl Streaming {
    /// Tags what is sent from now on.
    pub fn tag(&self, tag: bool) {
        self.tag.store(u8::from(tag), Ordering::Relaxed);
    }

    /// Stops sending; how many datagrams were sent untagged and tagged.
    pub fn stop(mut self) -> [u64; 2] {
        self.stop.store(true, Ordering::Relaxed);
        self.sender
            .take()
            .map_or([0; 2], |s| s.join().expect("stream sender panicked"))
    }
}

impl Drop for Streaming {
    /// A run that fails half-way must not leave the peer sending.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A TCP connection from the peer to the guest's echo port.
pub struct TcpProbe {
    stream: TcpStream,
}

impl TcpProbe {
    pub fn connect(peer: &Namespace, target: SocketAddr) -> Result<Self, NetnsError> {
        let stream = peer
            .run(|| TcpStream::connect_timeout(&target, Duration::from_secs(10)))?
            .map_err(NetnsError::Open)?;
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(NetnsError::Open)?;
        Ok(Self { stream })
    }

    /// Sends `line` and reads it back: the connection is alive and passes data both ways.
    pub fn round_trip(&mut self, line: &str) -> std::io::Result<()> {
        self.stream.write_all(line.as_bytes())?;
        let mut back = vec![0u8; line.len()];
        self.stream.read_exact(&mut back)?;
        if back != line.as_bytes() {
            return Err(std::io::Error::other(format!(
                "echoed {:?}",
                String::from_utf8_lossy(&back)
            )));
        }
        Ok(())
    }
}
