//! The test guest's echo responder: UDP echo (for the 1 kHz probe) and TCP echo (for the
//! long-lived connection the harness checks), both on port 7 of every address.

use std::io::{Read, Write};
use std::net::{TcpListener, UdpSocket};

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
    let udp = UdpSocket::bind("[::]:7")?;
    let mut buf = [0u8; 2048];
    loop {
        let (n, from) = udp.recv_from(&mut buf)?;
        // A reply that cannot be sent is a lost probe packet, which the probe counts.
        let _ = udp.send_to(&buf[..n], from);
    }
}
