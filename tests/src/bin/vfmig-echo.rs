//! The test guest's echo responder: UDP echo (for the 1 kHz probe) and TCP echo (for the
//! long-lived connection the harness checks), both on port 7 of every address; and a UDP sink
//! on port 5001 that counts datagrams by their first byte (the benchmark's stream tags those
//! it sends during pre-copy) and keeps the counts in /run/vfmig-sink.
//!
//! `vfmig-echo shell SOCKET COMMAND` is the other end of the test shell (images/guest-init's
//! virtio port), for the nested bed's host, whose busybox has no client for unix sockets: it
//! sends COMMAND, prints the answer and exits with the command's status.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{TcpListener, UdpSocket};
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
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

/// How long `shell` waits for the guest's first answer: a nested guest takes seconds a command.
const SYNC_DEADLINE: Duration = Duration::from_secs(240);

/// Runs `command` in the guest behind the shell port at `socket`.
///
/// The guest discards what arrives while its side of the port is closed, and it closes and
/// reopens it while no host is connected (as between two runs of this): a line written at the
/// wrong moment is lost (seen, a command never answered). So, as `GuestShell::connect` does,
/// an `echo` of a marker is retried until answered, only the newest marker counting, and the
/// command is sent once the guest is known to be reading.
fn shell(socket: &str, command: &str) -> std::io::Result<ExitCode> {
    let stream = UnixStream::connect(socket)?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let until = Instant::now() + SYNC_DEADLINE;
    let mut wait = Duration::from_secs(1);
    let mut line = String::new();
    let mut attempt = 0u32;
    'sync: loop {
        attempt += 1;
        let marker = format!("vfmig-sync-{attempt}");
        writer.write_all(format!("echo {marker}\n").as_bytes())?;
        reader.get_ref().set_read_timeout(Some(wait))?;
        let mut seen = false;
        loop {
            match reader.read_line(&mut line) {
                Ok(0) => return closed(),
                Ok(_) => {
                    let got = std::mem::take(&mut line);
                    match got.trim_end() {
                        l if l == marker => seen = true,
                        l if seen && l.starts_with("vfmig-rc=") => break 'sync,
                        _ => {}
                    }
                }
                // Unanswered within `wait` (a partial line stays in `line`): try again.
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break,
                Err(e) => return Err(e),
            }
        }
        if Instant::now() > until {
            eprintln!("vfmig-echo: the guest shell did not answer within {SYNC_DEADLINE:?}");
            return Ok(ExitCode::from(255));
        }
        wait = (wait * 2).min(Duration::from_secs(8));
    }
    reader.get_ref().set_read_timeout(None)?;
    writer.write_all(format!("{command}\n").as_bytes())?;
    loop {
        if reader.read_line(&mut line)? == 0 {
            return closed();
        }
        let got = std::mem::take(&mut line);
        if let Some(rc) = got.trim_end().strip_prefix("vfmig-rc=") {
            return Ok(ExitCode::from(rc.parse::<u8>().unwrap_or(255)));
        }
        print!("{got}");
    }
}

fn closed() -> std::io::Result<ExitCode> {
    eprintln!("vfmig-echo: the guest shell closed before answering");
    Ok(ExitCode::from(255))
}

fn main() -> std::io::Result<ExitCode> {
    let args: Vec<String> = std::env::args().collect();
    if let [_, mode, socket, command] = args.as_slice() {
        if mode == "shell" {
            return shell(socket, command);
        }
    }
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
