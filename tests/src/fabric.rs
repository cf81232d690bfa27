//! The network between the test hosts: a bridge in the calling thread's namespace (where the
//! QEMU processes run and their taps live) and a peer host in a namespace of its own, joined to
//! the bridge by a veth.

use std::fs::File;
use std::io::{Read, Write};
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
/// VLAN 10 on the first network (`Fabric::add_vlan`): the peer's leg in it, and the guest's
/// VLAN upper's address.
pub const VLAN_ID: u16 = 10;
pub const PEER_VLAN_V4: &str = "198.18.10.1";
pub const GUEST_VLAN_V4: &str = "198.18.10.10";

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

    /// VLAN [`VLAN_ID`] on `br0`, tagged in user space: this host's kernel has neither 8021q
    /// nor bridge VLAN filtering nor tc's vlan action. A tap on the bridge (`vlan10-br`) and a
    /// tap in the peer's namespace (`peer10`, carrying [`PEER_VLAN_V4`]) are joined by two
    /// threads: what the peer sends gets the VLAN's tag, and of what the bridge floods, only
    /// frames of that VLAN reach the peer, untagged. The bridge does not filter VLANs, so
    /// tagged frames pass between its ports as they are, and the peer's untagged leg drops them
    /// (no VLAN device takes them). The taps go with the test's process.
    pub fn add_vlan(&self) -> Result<(), NetnsError> {
        let bridge_side = open_tap("vlan10-br").map_err(NetnsError::Open)?;
        ip_batch("link set vlan10-br master br0 up\n")?;
        let peer_side = self.peer.run(|| open_tap("peer10"))?.map_err(NetnsError::Open)?;
        self.peer.run(|| {
            ip_batch(&format!(
                "link set peer10 up\naddr add {PEER_VLAN_V4}/{PREFIX_V4} dev peer10\n"
            ))
        })??;
        let clone = |f: &File| f.try_clone().map_err(NetnsError::Open);
        relay(clone(&peer_side)?, clone(&bridge_side)?, tag);
        relay(bridge_side, peer_side, untag);
        Ok(())
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

/// Opens (making it) the tap `name` in the calling thread's namespace: frames without a
/// packet-information header.
fn open_tap(name: &str) -> std::io::Result<File> {
    /// TUNSETIFF: _IOW('T', 202, int).
    const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
    let file = File::options().read(true).write(true).open("/dev/net/tun")?;
    // struct ifreq: the name (IFNAMSIZ bytes), then the flags (a short).
    let mut request = [0u8; 40];
    request[..name.len()].copy_from_slice(name.as_bytes());
    let flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
    request[16..18].copy_from_slice(&flags.to_ne_bytes());
    // SAFETY: the request is an ifreq-sized buffer the ioctl reads and writes within.
    if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, request.as_mut_ptr()) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(file)
}

/// Copies each frame read from `from` to `to` as `convert` makes it (or not at all), until
/// either side fails.
fn relay(mut from: File, mut to: File, convert: fn(&[u8]) -> Option<Vec<u8>>) {
    std::thread::spawn(move || {
        let mut buffer = vec![0u8; 65536];
        while let Ok(n) = from.read(&mut buffer) {
            if let Some(frame) = convert(&buffer[..n]) {
                // A frame the other side cannot take now (its link down) is lost, as on a wire.
                let _ = to.write(&frame);
            }
        }
    });
}

/// The 802.1Q tag of [`VLAN_ID`] inserted after the MAC addresses.
fn tag(frame: &[u8]) -> Option<Vec<u8>> {
    let (macs, rest) = (frame.get(..12)?, frame.get(12..)?);
    let vid = VLAN_ID.to_be_bytes();
    Some([macs, &[0x81, 0x00, vid[0], vid[1]], rest].concat())
}

/// A frame of [`VLAN_ID`] without its tag; nothing for any other frame.
fn untag(frame: &[u8]) -> Option<Vec<u8>> {
    let header = frame.get(12..16)?;
    let vid = u16::from_be_bytes([header[2], header[3]]) & 0x0fff;
    (header[..2] == [0x81, 0x00] && vid == VLAN_ID).then(|| [&frame[..12], &frame[16..]].concat())
}
