//! The two networks of the libvirt bed, in namespaces held open by descriptors (nothing in the
//! machine's own namespace, nothing named in /run/netns):
//!
//! - management: a veth between the hosts, 198.18.10.1 and .2, which libvirtd listens on and
//!   migration streams use;
//! - the guests' network: a bridge in each host that the guests' taps join, each with an uplink
//!   to a switch in the peer's namespace, where the peer holds the fabric's addresses
//!   ([`PEER_V4`], [`PEER_V6`]). A guest reaches the peer from either host, with its address.

use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;

use crate::fabric::{PEER_V4, PEER_V6, PREFIX_V4, PREFIX_V6};
use crate::netns::{ip_batch, Namespace, NetnsError};

use super::config::BRIDGE;

/// Host `n`'s (1, 2) address on the management network.
pub fn host_addr(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 10, n)
}

/// How `ip link set … netns` names a namespace this process holds by descriptor.
fn netns_path(ns: &Namespace) -> String {
    format!("/proc/{}/fd/{}", std::process::id(), ns.fd().as_raw_fd())
}

/// Wires `hosts` (host 1, host 2) and the peer: the management veth, each host's bridge with
/// its uplink, and the peer's switch.
pub fn wire(hosts: [&Namespace; 2], peer: &Namespace) -> Result<(), NetnsError> {
    peer.run(|| {
        ip_batch(&format!(
            "link add sw0 type bridge
link set sw0 up
addr add {PEER_V4}/{PREFIX_V4} dev sw0
addr add {PEER_V6}/{PREFIX_V6} dev sw0 nodad\n"
        ))
    })??;
    for (n, host) in (1u8..).zip(hosts) {
        host.run(|| {
            ip_batch(&format!(
                "link add {BRIDGE} type bridge
link set {BRIDGE} up
link add uplink type veth peer name h{n}
link set uplink master {BRIDGE} up
link set h{n} netns {}\n",
                netns_path(peer)
            ))
        })??;
        peer.run(|| ip_batch(&format!("link set h{n} master sw0 up\n")))??;
    }
    let [one, two] = hosts;
    one.run(|| {
        ip_batch(&format!(
            "link add mgmt type veth peer name mgmt-2
link set mgmt-2 netns {}
addr add {}/24 dev mgmt
link set mgmt up\n",
            netns_path(two),
            host_addr(1)
        ))
    })??;
    two.run(|| {
        ip_batch(&format!(
            "link set mgmt-2 name mgmt
addr add {}/24 dev mgmt
link set mgmt up\n",
            host_addr(2)
        ))
    })?
}
