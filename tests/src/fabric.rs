//! The network between the test hosts: a bridge in the calling thread's namespace (where the
//! QEMU processes run and their taps live) and a peer host in a namespace of its own, joined to
//! the bridge by a veth.

use std::os::fd::AsRawFd;

use crate::netns::{enter_fresh, ip_batch, Namespace, NetnsError};

pub const PEER_V4: &str = "198.18.0.1";
pub const PEER_V6: &str = "2001:db8::1";
pub const GUEST_V4: &str = "198.18.0.10";
pub const GUEST_V6: &str = "2001:db8::10";
pub const PREFIX_V4: u8 = 24;
pub const PREFIX_V6: u8 = 64;
/// A second network, for a guest's second VF: its own bridge, the peer's second leg.
pub const PEER2_V4: &str = "198.18.1.1";
pub const PEER2_V6: &str = "2001:db8:1::1";
pub const GUEST2_V4: &str = "198.18.1.10";
pub const GUEST2_V6: &str = "2001:db8:1::10";

pub struct Fabric {
    pub peer: Namespace,
}

impl Fabric {
    /// Moves the calling thread into a fresh namespace and builds the bridge and the peer there.
    pub fn new() -> Result<Self, NetnsError> {
        enter_fresh()?;
        let peer = Namespace::new()?;
        ip_batch(&format!(
            "link add br0 type bridge
link set br0 up
link add peer0 type veth peer name peer0-br
link set peer0-br master br0 up
link set peer0 netns /proc/{}/fd/{}\n",
            std::process::id(),
            peer.fd().as_raw_fd()
        ))?;
        peer.run(|| {
            ip_batch(&format!(
                "link set peer0 up
addr add {PEER_V4}/{PREFIX_V4} dev peer0
addr add {PEER_V6}/{PREFIX_V6} dev peer0 nodad\n"
            ))
        })??;
        Ok(Self { peer })
    }

    /// A second network (bridge `br1`), its peer leg `peer1` in the peer's namespace.
    pub fn add_second_network(&self) -> Result<(), NetnsError> {
        ip_batch(&format!(
            "link add br1 type bridge
link set br1 up
link add peer1 type veth peer name peer1-br
link set peer1-br master br1 up
link set peer1 netns /proc/{}/fd/{}\n",
            std::process::id(),
            self.peer.fd().as_raw_fd()
        ))?;
        self.peer.run(|| {
            ip_batch(&format!(
                "link set peer1 up
addr add {PEER2_V4}/{PREFIX_V4} dev peer1
addr add {PEER2_V6}/{PREFIX_V6} dev peer1 nodad\n"
            ))
        })?
    }

    /// A tap on the bridge for one QEMU NIC.
    pub fn add_tap(&self, name: &str) -> Result<(), NetnsError> {
        self.add_tap_to(name, "br0")
    }

    /// A tap on bridge `bridge`.
    pub fn add_tap_to(&self, name: &str, bridge: &str) -> Result<(), NetnsError> {
        ip_batch(&format!(
            "tuntap add {name} mode tap\nlink set {name} master {bridge} up\n"
        ))
    }

    /// Stops the bridge learning MACs from `tap`, so frames for what is behind it are flooded
    /// to every such tap instead of following whichever of them sent last.
    pub fn unlearned(&self, tap: &str) -> Result<(), NetnsError> {
        ip_batch(&format!("link set {tap} type bridge_slave learning off\n"))
    }
}
