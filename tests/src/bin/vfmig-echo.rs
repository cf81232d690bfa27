//! The test guest's echo responder: UDP echo (for the 1 kHz probe) and TCP echo (for the
//! long-lived connection the harness checks), both on port 7 of every address; and a UDP sink
//! on port 5001 that counts datagrams by their first byte (the benchmark's stream tags those
//! it sends during pre-copy) and keeps the counts in /run/vfmig-sink.

use std::io::{Read, Write};
use std::net::{TcpListener, UdpSocket};
use std::time::{Duration, Instant};

/// "untagged tagged", rewritten at most every 100 ms while the counts change.
const SINK_COUNTS: &str = "/run/vfmig-sink";

fn sink() -> std::io::Result<()> {
    let udp = UdpSocket::bind("[::]:5001")?;
    // Drained every 10 ms rather than woken per datagram: under TCG a wake-up per datagram
    // costs the guest more than the NIC does, and the sink would measure itself.
    udp.set_nonblocking(true)?;
    let mut counts = [0u64; 2];
    let mut written = counts;
    let mut last = Instant::now();
    let mut buf = [0u8; 2048];
    loop {
        match udp.recv(&mut buf) {
            Ok(n) => {
                if n > 0 && buf[0] < 2 {
                    counts[usize::from(buf[0])] += 1;
                }
                continue;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
        if counts != written && last.elapsed() >= Duration::from_millis(100) {
            // Renamed into place, so a reader never sees half a line.
            let tmp = format!("{SINK_COUNTS}.tmp");
            std::fs::write(&tmp, format!("{} {}\n", counts[0], counts[1]))?;
            std::fs::rename(&tmp, SINK_COUNTS)?;
            (written, last) = (counts, Instant::now());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn main() -> std::io::Result<()> {
    let tcp = TcpListener::bind("[::]:7")?;
    std::thread::spawn(move || {
        for conn in tcp.incoming().flatten() {
            std::thread::spawn(move || {
                let mut conn = conn;
                let mut buf = [0u8; 4096];
                while let Ok(n) = conn.read(&mut buf) {
                    if n == 0 || conn.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    std::thread::spawn(|| {
        if let Err(e) = sink() {
            eprintln!("vfmig-echo: the sink on UDP 5001 stopped: {e}");
        }
    });
    let udp = UdpSocket::bind("[::]:7")?;
    let mut buf = [0u8; 2048];
    loop {
        let (n, from) = udp.recv_from(&mut buf)?;
        // A reply that cannot be sent is a lost probe packet, which the probe counts.
        let _ = udp.send_to(&buf[..n], from);
    }
}
