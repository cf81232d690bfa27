//! What hangs off an interface besides its addresses, routes and neighbours: devices made on
//! top of it, the bond or bridge it is a port of, the policy rules that name it, and the
//! per-interface settings users tune. All of it goes with the VF on unplug.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::InterfaceState;

/// A device made on the interface (IFLA_LINK names it), recreated on the fresh VF with its
/// own state, which may hold uppers of its own (a VLAN on a VLAN).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Upper {
    pub kind: UpperKind,
    pub state: InterfaceState,
}

/// The upper device types restore can make again, with what makes one. Flags and modes are
/// the kernel's own values.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum UpperKind {
    Vlan {
        id: u16,
        /// Ethertype of the tag: 0x8100 (802.1Q) or 0x88a8 (802.1ad).
        protocol: u16,
        /// VLAN_FLAG_* (REORDER_HDR, GVRP, LOOSE_BINDING, MVRP, BRIDGE_BINDING).
        flags: u32,
    },
    Macvlan {
        /// MACVLAN_MODE_* (private, vepa, bridge, passthru, source).
        mode: u32,
        flags: u16,
    },
    Ipvlan {
        /// IPVLAN_MODE_* (l2, l3, l3s).
        mode: u16,
        flags: u16,
    },
}

impl UpperKind {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Vlan { .. } => "vlan",
            Self::Macvlan { .. } => "macvlan",
            Self::Ipvlan { .. } => "ipvlan",
        }
    }
}

/// The bond or bridge the interface is a port of: the master stays while the VF is away, and
/// the fresh VF rejoins it with these options.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Port {
    pub master: String,
    pub options: PortOptions,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum PortOptions {
    Bond {
        queue_id: u16,
        /// IFLA_BOND_SLAVE_PRIO, on kernels that have it.
        prio: Option<i32>,
    },
    Bridge {
        cost: u32,
        priority: u16,
        learning: bool,
        unicast_flood: bool,
        hairpin: bool,
        guard: bool,
        protect: bool,
        fast_leave: bool,
    },
}

/// A policy routing rule that names the interface (iif, oif) or one of its addresses (from):
/// saved so that a rule removed or re-pointed while the VF was away is put back.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Rule {
    pub ipv6: bool,
    pub priority: u32,
    pub table: u32,
    /// FR_ACT_* value (to_tbl, goto, nop, blackhole, unreachable, prohibit).
    pub action: u8,
    pub source: Option<(IpAddr, u8)>,
    pub destination: Option<(IpAddr, u8)>,
    pub iif: Option<String>,
    pub oif: Option<String>,
    pub fwmark: Option<u32>,
    pub fwmask: Option<u32>,
    pub tos: u8,
    /// FIB_RULE_* flags a user sets (INVERT).
    pub flags: u32,
    pub suppress_prefix_len: Option<u32>,
    /// RTPROT_* value of who made the rule (FRA_PROTOCOL); 0 when unspecified.
    #[serde(default)]
    pub protocol: u8,
}

/// The per-interface sysctls restore carries over, under `net.ipv4.conf.IF` and
/// `net.ipv6.conf.IF`: what users tune on a VF. Keys in [`InterfaceState::sysctls`] are
/// `ipv4/NAME` and `ipv6/NAME`.
pub const TUNED_SYSCTLS: &[&str] = &[
    "ipv4/accept_redirects",
    "ipv4/arp_accept",
    "ipv4/arp_announce",
    "ipv4/arp_filter",
    "ipv4/arp_ignore",
    "ipv4/forwarding",
    "ipv4/proxy_arp",
    "ipv4/rp_filter",
    "ipv4/send_redirects",
    "ipv6/accept_ra",
    "ipv6/accept_redirects",
    "ipv6/autoconf",
    "ipv6/disable_ipv6",
    "ipv6/forwarding",
    "ipv6/hop_limit",
    "ipv6/mtu",
    "ipv6/use_tempaddr",
];

/// Sysctl values by key, as read (a decimal number, trimmed).
pub type Sysctls = BTreeMap<String, String>;
