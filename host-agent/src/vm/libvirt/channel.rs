//! The guest agent's channel through libvirt (`virDomainOpenChannel`), so that vfmig-host
//! reaches a domain's agent wherever the domain runs — the destination's included — over the
//! same connection it reaches libvirt by, not by a socket path that only exists on that host.
//!
//! libvirt hands the channel over as a blocking stream; two threads carry it to and from one
//! end of a socket pair, and the host's end of the guest channel reads and writes the other
//! end as it would the channel's unix socket. Closing that end (or libvirt ending the stream)
//! ends both threads.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;

use virt::connect::Connect;
use virt::domain::Domain;
use virt::stream::Stream;
use virt::sys;

use crate::domain_xml::AGENT_PORT;

/// Opens the guest agent's channel of `domain` on the libvirt at `uri`; the local end of it.
pub fn dial_agent(uri: &str, domain: &str) -> io::Result<UnixStream> {
    let libvirt = |what: &str, e: virt::error::Error| io::Error::other(format!("libvirt, {what}: {e}"));
    let conn = Connect::open(Some(uri)).map_err(|e| libvirt("connecting", e))?;
    let dom = Domain::lookup_by_name(&conn, domain)
        .or_else(|_| Domain::lookup_by_uuid_string(&conn, domain))
        .map_err(|e| libvirt("looking up the domain", e))?;
    let stream = Stream::new(&conn, 0).map_err(|e| libvirt("a stream", e))?;
    // FORCE: a stream an earlier run of vfmig-host left open is taken over.
    dom.open_channel(Some(AGENT_PORT), &stream, sys::VIR_DOMAIN_CHANNEL_FORCE)
        .map_err(|e| libvirt("opening the agent's channel", e))?;
    let (ours, theirs) = UnixStream::pair()?;
    let (mut to_host, mut from_host) = (theirs.try_clone()?, theirs);
    let incoming = stream.clone();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 << 10];
        // The guest's bytes to the host's end, until either side ends.
        while let Ok(n @ 1..) = incoming.recv(&mut buf) {
            if to_host.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to_host.shutdown(Shutdown::Both);
    });
    std::thread::spawn(move || {
        // `conn` lives as long as the stream is used.
        let _conn = conn;
        let mut buf = vec![0u8; 64 << 10];
        while let Ok(n @ 1..) = from_host.read(&mut buf) {
            if stream.send(&buf[..n]).is_err() {
                break;
            }
        }
        // The host's end closed: libvirt ends the stream, and the other thread's recv returns.
        let _ = stream.abort();
    });
    Ok(ours)
}
