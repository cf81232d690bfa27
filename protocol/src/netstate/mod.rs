//! The saved network state of one interface: what the guest agent captures before the VF is
//! unplugged and restores onto the fresh VF after migration.
//!
//! The document is versioned and sealed with a SHA-256 digest of its canonical JSON
//! ([`seal`]). [`open`] refuses a document that is too large, truncated, from an unknown format,
//! altered, or internally inconsistent, and says which. The numeric fields (`scope`, `protocol`,
//! `kind`, `state`, `flags`) are the kernel's own rtnetlink values, kept raw so nothing is lost
//! in translation.
//!
//! What the kernel makes by itself is never part of a state: IPv6 link-local addresses, routes
//! of protocol `kernel` or `ra`, the local table, NOARP and FAILED neighbours. One kind of
//! `kernel` route is the exception, because the kernel does not make it: the prefix route of an
//! address added with IFA_F_NOPREFIXROUTE, which NetworkManager adds itself ([`handmade_prefix_route`]).

mod check;
mod compare;
mod seal;
mod stack;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use serde::{Deserialize, Serialize};

use crate::mac::MacAddr;

pub use check::{check, Inconsistency, MAX_UPPER_DEPTH};
pub use compare::differences;
pub use seal::{digest, open, seal, StateError, FORMAT_VERSION, MAX_DOCUMENT};
pub use stack::{Port, PortOptions, Rule, Sysctls, Upper, UpperKind, TUNED_SYSCTLS};

/// A captured interface and when it was captured.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedState {
    /// Wall-clock milliseconds since the Unix epoch at capture; restore uses it to shorten
    /// finite address lifetimes by the time that passed.
    pub captured_unix_ms: u64,
    pub interface: InterfaceState,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterfaceState {
    pub identity: Identity,
    pub mtu: u32,
    pub admin_up: bool,
    pub addresses: Vec<Address>,
    pub routes: Vec<Route>,
    pub neighbours: Vec<Neighbour>,
    // What follows came after the first release: absent in its documents, which read as
    // having none of it.
    /// Devices made on this one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub uppers: Vec<Upper>,
    /// The bond or bridge this interface is a port of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<Port>,
    /// Policy rules naming this interface or its addresses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<Rule>,
    /// The [`TUNED_SYSCTLS`] as read.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sysctls: Sysctls,
}

/// Who the interface was. The host compares it with the fresh VF; `ifindex` is informational
/// (a fresh link always gets a new one).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub name: String,
    pub ifindex: u32,
    pub mac: MacAddr,
    pub permanent_mac: Option<MacAddr>,
    pub driver: Option<String>,
    pub pci: Option<PciIdentity>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PciIdentity {
    /// `0000:01:00.0`
    pub address: String,
    pub vendor: u16,
    pub device: u16,
    pub subsystem_vendor: u16,
    pub subsystem_device: u16,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Address {
    pub address: IpAddr,
    pub prefix_len: u8,
    /// IPv4 point-to-point peer, when it differs from `address`.
    pub peer: Option<IpAddr>,
    pub broadcast: Option<Ipv4Addr>,
    pub label: Option<String>,
    /// RT_SCOPE_* value.
    pub scope: u8,
    /// The configuration flags (IFA_F_NODAD, NOPREFIXROUTE, MANAGETEMPADDR, HOMEADDRESS);
    /// kernel-state flags such as TENTATIVE or PERMANENT are not part of the state.
    pub flags: u32,
    /// Metric of the prefix route the kernel makes for this address (IFA_RT_PRIORITY).
    pub route_metric: Option<u32>,
    /// Seconds left at capture; `None` is forever.
    pub valid_lft: Option<u32>,
    pub preferred_lft: Option<u32>,
}

impl Address {
    /// Flags a user can set; everything else in IFA_FLAGS is the kernel's bookkeeping.
    pub const CONFIG_FLAGS: u32 = 0x02 | 0x10 | 0x100 | Self::NOPREFIXROUTE; // NODAD | HOMEADDRESS | MANAGETEMPADDR
    /// IFA_F_NOPREFIXROUTE: the kernel makes no prefix route for this address.
    pub const NOPREFIXROUTE: u32 = 0x200;

    /// What restore sets besides the address itself. Two entries for one address with equal
    /// configuration are the same to restore, whatever their lifetimes, which count down.
    #[allow(clippy::type_complexity)]
    pub fn config(&self) -> (Option<IpAddr>, Option<Ipv4Addr>, Option<&str>, u8, u32, Option<u32>) {
        (
            self.peer,
            self.broadcast,
            self.label.as_deref(),
            self.scope,
            self.flags,
            self.route_metric,
        )
    }
}

/// `address` with the bits past its first `len` cleared: the network it is in.
pub fn network_of(address: IpAddr, len: u8) -> IpAddr {
    let keep = |width: u32| u128::MAX.checked_shl(width.saturating_sub(u32::from(len))).unwrap_or(0);
    match address {
        IpAddr::V4(v4) => IpAddr::V4(Ipv4Addr::from(u32::from(v4) & keep(32) as u32)),
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & keep(128)).into()),
    }
}

/// Whether `route` (of protocol `kernel`) is the prefix route of one of `addresses` that
/// carries IFA_F_NOPREFIXROUTE, in the main table: the kernel will not make it again, whoever
/// added it (NetworkManager adds its addresses so, and their prefix routes itself, as
/// protocol `kernel` with its own metric), so it is part of the state.
pub fn handmade_prefix_route(route: &Route, addresses: &[Address]) -> bool {
    route.table == consts::RT_TABLE_MAIN
        && route.gateway.is_none()
        && !is_link_local_v6(route.destination)
        && addresses.iter().any(|a| {
            a.flags & Address::NOPREFIXROUTE != 0
                && a.prefix_len == route.prefix_len
                && network_of(a.address, a.prefix_len) == route.destination
        })
}

/// An IPv6 link-local address (fe80::/10): the kernel makes one per link, so it is never saved.
pub fn is_link_local_v6(a: IpAddr) -> bool {
    matches!(a, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80)
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Route {
    pub table: u32,
    pub destination: IpAddr,
    pub prefix_len: u8,
    pub metric: Option<u32>,
    pub tos: u8,
    pub gateway: Option<IpAddr>,
    /// The gateway is on-link without a covering prefix (RTNH_F_ONLINK).
    pub onlink: bool,
    /// RTPROT_* value.
    pub protocol: u8,
    /// RT_SCOPE_* value.
    pub scope: u8,
    /// RTN_* value; only unicast routes use an interface and are captured.
    pub kind: u8,
    /// Preferred source address.
    pub source: Option<IpAddr>,
    /// RTA_METRICS: each RTAX_* kind the route sets (mtu, advmss, window, initcwnd, the lock
    /// bits, …) and its value; the congestion control algorithm, the one that is a name, apart.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metrics: BTreeMap<u16, u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub congestion_control: Option<String>,
    /// A multipath route's legs (`gateway` is then `None`); empty for a single path.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nexthops: Vec<Nexthop>,
}

/// One leg of a multipath route.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Nexthop {
    /// The link the leg leaves by, when it is not the interface the state is of.
    pub device: Option<String>,
    pub gateway: Option<IpAddr>,
    /// 1..=256 (the kernel's rtnh_hops plus one).
    pub weight: u16,
    pub onlink: bool,
}

impl Route {
    /// The fields the kernel finds a route by. Several routes may share them (added with
    /// NLM_F_APPEND, as a DHCP client's second lease adds its default route), told apart by
    /// their gateway or source; restore adds the first of such a group and appends the rest.
    pub fn key(&self) -> (u32, IpAddr, u8, u8, Option<u32>) {
        (self.table, self.destination, self.prefix_len, self.tos, self.metric)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Neighbour {
    pub address: IpAddr,
    pub lladdr: MacAddr,
    /// NUD_* value (PERMANENT, REACHABLE, STALE, DELAY, PROBE).
    pub state: u16,
    /// NDP: the neighbour is a router (NTF_ROUTER).
    pub router: bool,
}

impl Neighbour {
    /// Whether an entry in NUD `state` holds a usable link-layer address, and so is worth
    /// saving: NOARP, FAILED and INCOMPLETE entries are not.
    pub fn saveable(state: u16) -> bool {
        use consts::*;
        state & NUD_SAVED != 0 && state & (NUD_NOARP | NUD_FAILED | NUD_INCOMPLETE) == 0
    }

    /// What restore preserves: link-layer address, router flag, permanence. A dynamic entry's
    /// exact state drifts by itself (REACHABLE ages to STALE), so it is not part of it.
    pub fn restore_key(&self) -> (MacAddr, bool, bool) {
        (self.lladdr, self.router, self.is_permanent())
    }

    /// Permanent entries are never aged, collected or flushed by the kernel.
    pub fn is_permanent(&self) -> bool {
        self.state & consts::NUD_PERMANENT != 0
    }
}

/// Kernel constants the model refers to, named once.
pub mod consts {
    pub const RT_TABLE_UNSPEC: u32 = 0;
    pub const RT_TABLE_MAIN: u32 = 254;
    pub const RT_TABLE_LOCAL: u32 = 255;
    pub const RTN_UNICAST: u8 = 1;
    pub const RTPROT_KERNEL: u8 = 2;
    pub const RTPROT_RA: u8 = 9;
    /// The last numeric RTAX_* route metric kind (RTAX_FASTOPEN_NO_COOKIE); 0 is unspecified.
    pub const RTAX_MAX: u16 = 17;
    /// RTAX_CC_ALGO, the congestion control algorithm: a name, kept apart from the numbers.
    pub const RTAX_CC_ALGO: u16 = 16;
    /// The longest congestion control algorithm name (TCP_CA_NAME_MAX less its NUL).
    pub const CC_NAME_MAX: usize = 15;
    pub const NUD_INCOMPLETE: u16 = 0x01;
    pub const NUD_REACHABLE: u16 = 0x02;
    pub const NUD_STALE: u16 = 0x04;
    pub const NUD_DELAY: u16 = 0x08;
    pub const NUD_PROBE: u16 = 0x10;
    pub const NUD_FAILED: u16 = 0x20;
    pub const NUD_NOARP: u16 = 0x40;
    pub const NUD_PERMANENT: u16 = 0x80;
    /// The neighbour states worth saving: the entry holds a usable link-layer address.
    pub const NUD_SAVED: u16 = NUD_REACHABLE | NUD_STALE | NUD_DELAY | NUD_PROBE | NUD_PERMANENT;
}

impl InterfaceState {
    /// Puts every list in a canonical order so equal states compare and hash equal.
    pub fn sort(&mut self) {
        self.addresses.sort();
        self.routes.sort();
        self.neighbours.sort();
        self.rules.sort();
        for upper in &mut self.uppers {
            upper.state.sort();
        }
        self.uppers
            .sort_by(|a, b| a.state.identity.name.cmp(&b.state.identity.name));
    }
}
