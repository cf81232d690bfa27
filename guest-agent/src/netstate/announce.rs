//! Telling the segment where restored addresses now live: a gratuitous ARP for each IPv4
//! address and an unsolicited neighbour advertisement (override flag set) for each IPv6 one,
//! so peers and switches move their entries to the new NIC's MAC at once instead of after
//! their caches time out.
//!
//! Both are sent from an AF_PACKET datagram socket: the kernel adds the Ethernet header, and
//! the advertisement goes out even while an IPv6 address would still count as tentative for
//! an ordinary ICMPv6 socket. No crate in the project's stack sends raw link-layer frames, so
//! the few lines of `libc` here are the whole of it.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use vfmig_protocol::MacAddr;

const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IPV6: u16 = 0x86dd;
const BROADCAST: [u8; 6] = [0xff; 6];
/// The Ethernet address of ff02::1, all nodes.
const ALL_NODES_MAC: [u8; 6] = [0x33, 0x33, 0, 0, 0, 1];
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);

/// Announces each address on link `ifindex` as owned by `mac`; returns the ones that failed.
pub fn announce(ifindex: u32, mac: MacAddr, addresses: &[IpAddr]) -> Vec<(IpAddr, io::Error)> {
    addresses
        .iter()
        .filter_map(|&ip| {
            let sent = match ip {
                IpAddr::V4(v4) => send(ifindex, ETH_P_ARP, BROADCAST, &gratuitous_arp(mac, v4)),
                IpAddr::V6(v6) => send(ifindex, ETH_P_IPV6, ALL_NODES_MAC, &unsolicited_na(mac, v6)),
            };
            sent.err().map(|e| (ip, e))
        })
        .collect()
}

/// An ARP request for our own address (sender = target), which updates every cache that has it.
fn gratuitous_arp(mac: MacAddr, ip: Ipv4Addr) -> Vec<u8> {
    let mut p = Vec::with_capacity(28);
    p.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 1]); // Ethernet, IPv4, request
    p.extend_from_slice(&mac.0);
    p.extend_from_slice(&ip.octets());
    p.extend_from_slice(&[0; 6]);
    p.extend_from_slice(&ip.octets());
    p
}

/// IPv6 header + neighbour advertisement (override, not solicited) + target link-layer option.
fn unsolicited_na(mac: MacAddr, target: Ipv6Addr) -> Vec<u8> {
    let mut icmp = Vec::with_capacity(32);
    icmp.extend_from_slice(&[136, 0, 0, 0, 0x20, 0, 0, 0]); // type NA, code 0, checksum, O flag
    icmp.extend_from_slice(&target.octets());
    icmp.extend_from_slice(&[2, 1]); // target link-layer address, 8 bytes
    icmp.extend_from_slice(&mac.0);
    let sum = checksum(target, ALL_NODES, &icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());

    let mut p = Vec::with_capacity(40 + icmp.len());
    p.extend_from_slice(&[0x60, 0, 0, 0]);
    p.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
    p.extend_from_slice(&[58, 255]); // ICMPv6, hop limit 255 as NDP requires
    p.extend_from_slice(&target.octets());
    p.extend_from_slice(&ALL_NODES.octets());
    p.extend_from_slice(&icmp);
    p
}

/// ICMPv6 checksum over the pseudo-header and message (RFC 4443 §2.3).
fn checksum(src: Ipv6Addr, dst: Ipv6Addr, msg: &[u8]) -> u16 {
    let mut data = Vec::with_capacity(40 + msg.len() + 1);
    data.extend_from_slice(&src.octets());
    data.extend_from_slice(&dst.octets());
    data.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    data.extend_from_slice(&[0, 0, 0, 58]);
    data.extend_from_slice(msg);
    if data.len() % 2 == 1 {
        data.push(0);
    }
    let mut sum: u32 = data
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn send(ifindex: u32, ethertype: u16, dst: [u8; 6], payload: &[u8]) -> io::Result<()> {
    // SAFETY: plain socket(2); the descriptor is owned at once.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            i32::from(ethertype.to_be()),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh, valid descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = ethertype.to_be();
    addr.sll_ifindex = i32::try_from(ifindex).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    addr.sll_halen = 6;
    addr.sll_addr[..6].copy_from_slice(&dst);
    // SAFETY: payload and addr outlive the call; the lengths are theirs.
    let sent = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            payload.as_ptr().cast(),
            payload.len(),
            0,
            std::ptr::addr_of!(addr).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn na_checksum_verifies() {
        let mac: MacAddr = "02:00:00:00:0b:01".parse().unwrap();
        let target: Ipv6Addr = "2001:db8:10::2".parse().unwrap();
        let packet = unsolicited_na(mac, target);
        // A correct checksum makes the sum over pseudo-header and message come out as zero.
        assert_eq!(checksum(target, ALL_NODES, &packet[40..]), 0);
        assert_eq!(packet.len(), 40 + 32);
    }
}
