//! Internal consistency of a state: what a document must satisfy beyond parsing and its digest,
//! so that restore never feeds the kernel something it would half-apply.

use std::collections::{BTreeSet, HashSet};
use std::fmt;
use std::net::IpAddr;

use super::consts::*;
use super::{
    handmade_prefix_route, is_link_local_v6, InterfaceState, Neighbour, PortOptions, UpperKind, TUNED_SYSCTLS,
};
use crate::message::{validate_ifname, validate_pci_address};

/// The first problem found, with the item it is in.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Inconsistency {
    /// Where: `mtu`, `addresses[2]`, `routes[17]`, …
    pub at: String,
    pub problem: String,
}

impl fmt::Display for Inconsistency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.at, self.problem)
    }
}

fn bad(at: impl Into<String>, problem: impl Into<String>) -> Inconsistency {
    Inconsistency {
        at: at.into(),
        problem: problem.into(),
    }
}

fn bits(a: IpAddr) -> u8 {
    if a.is_ipv4() {
        32
    } else {
        128
    }
}

fn same_family(a: IpAddr, b: IpAddr) -> bool {
    a.is_ipv4() == b.is_ipv4()
}

/// True when every bit of `a` past `len` is zero (the kernel refuses such IPv4 prefixes).
fn host_bits_clear(a: IpAddr, len: u8) -> bool {
    let (value, width) = match a {
        IpAddr::V4(v4) => (u128::from(u32::from(v4)), 32u32),
        IpAddr::V6(v6) => (u128::from(v6), 128u32),
    };
    let host_bits = width.saturating_sub(u32::from(len));
    let mask = u128::MAX.checked_shr(128 - host_bits).unwrap_or(0);
    value & mask == 0
}

/// Deepest stack of uppers a state may hold: far above any real one (a VLAN on a VLAN on a VF is
/// three), low enough that a hostile document cannot recurse without end.
pub const MAX_UPPER_DEPTH: usize = 8;

pub fn check(s: &InterfaceState) -> Result<(), Inconsistency> {
    check_at(s, "", 0)
}

fn check_at(s: &InterfaceState, path: &str, depth: usize) -> Result<(), Inconsistency> {
    let bad = |at: String, problem: String| bad(format!("{path}{at}"), problem);
    check_own(s).map_err(|e| bad(e.at, e.problem))?;
    let mut names = HashSet::new();
    for (i, u) in s.uppers.iter().enumerate() {
        let at = format!("uppers[{i}] ({})", u.state.identity.name);
        if depth + 1 >= MAX_UPPER_DEPTH {
            return Err(bad(at, format!("uppers nest deeper than {MAX_UPPER_DEPTH}")));
        }
        if !names.insert(&u.state.identity.name) || u.state.identity.name == s.identity.name {
            return Err(bad(at, "name listed twice".into()));
        }
        match u.kind {
            UpperKind::Vlan { id, protocol, .. } => {
                if !(1..=4094).contains(&id) {
                    return Err(bad(at, format!("VLAN id {id} is outside 1..=4094")));
                }
                if protocol != 0x8100 && protocol != 0x88a8 {
                    return Err(bad(
                        at,
                        format!("VLAN protocol {protocol:#06x} is neither 802.1Q nor 802.1ad"),
                    ));
                }
            }
            UpperKind::Macvlan { .. } | UpperKind::Ipvlan { .. } => {}
        }
        if u.state.port.is_some() {
            return Err(bad(at, "an upper that is a port of a master is not restored".into()));
        }
        check_at(&u.state, &format!("{path}{at}."), depth + 1)?;
    }
    Ok(())
}

fn check_own(s: &InterfaceState) -> Result<(), Inconsistency> {
    let id = &s.identity;
    validate_ifname("name", &id.name).map_err(|p| bad("identity.name", p))?;
    if id.mac.is_zero() || id.mac.is_multicast() {
        return Err(bad("identity.mac", format!("{} is not a unicast address", id.mac)));
    }
    if let Some(pci) = &id.pci {
        validate_pci_address(&pci.address).map_err(|p| bad("identity.pci.address", p))?;
    }
    let min_mtu = if s.addresses.iter().any(|a| a.address.is_ipv6()) {
        1280
    } else {
        68
    };
    if !(min_mtu..=65535).contains(&s.mtu) {
        return Err(bad("mtu", format!("{} is outside {min_mtu}..=65535", s.mtu)));
    }

    let mut seen = HashSet::new();
    for (i, a) in s.addresses.iter().enumerate() {
        let at = || format!("addresses[{i}] ({}/{})", a.address, a.prefix_len);
        if a.prefix_len > bits(a.address) {
            return Err(bad(at(), "prefix length exceeds the address width"));
        }
        if is_link_local_v6(a.address) {
            return Err(bad(at(), "IPv6 link-local addresses are the kernel's, never saved"));
        }
        if a.peer.is_some_and(|p| !same_family(p, a.address)) {
            return Err(bad(at(), "peer is of another address family"));
        }
        if a.broadcast.is_some() && a.address.is_ipv6() {
            return Err(bad(at(), "IPv6 addresses have no broadcast"));
        }
        if let (Some(v), Some(p)) = (a.valid_lft, a.preferred_lft) {
            if p > v {
                return Err(bad(at(), "preferred lifetime exceeds valid lifetime"));
            }
        }
        if a.preferred_lft.is_none() && a.valid_lft.is_some() {
            return Err(bad(at(), "preferred lifetime is forever but valid lifetime is finite"));
        }
        if a.flags & !super::Address::CONFIG_FLAGS != 0 {
            return Err(bad(at(), format!("flags {:#x} include kernel-state bits", a.flags)));
        }
        if a.label.as_deref().is_some_and(|l| l.is_empty() || l.len() > 15) {
            return Err(bad(at(), "label must be 1..=15 bytes"));
        }
        if !seen.insert((a.address, a.prefix_len)) {
            return Err(bad(at(), "listed twice"));
        }
    }

    let mut seen_routes = BTreeSet::new();
    for (i, r) in s.routes.iter().enumerate() {
        let at = || format!("routes[{i}] ({}/{} table {})", r.destination, r.prefix_len, r.table);
        if r.prefix_len > bits(r.destination) {
            return Err(bad(at(), "prefix length exceeds the address width"));
        }
        if !host_bits_clear(r.destination, r.prefix_len) {
            return Err(bad(at(), "destination has bits set beyond its prefix length"));
        }
        if r.table == RT_TABLE_UNSPEC || r.table == RT_TABLE_LOCAL {
            return Err(bad(at(), "table 0 and the local table (255) are never saved"));
        }
        if r.kind != RTN_UNICAST {
            return Err(bad(at(), format!("route type {} does not use an interface", r.kind)));
        }
        if r.protocol == RTPROT_RA || (r.protocol == RTPROT_KERNEL && !handmade_prefix_route(r, &s.addresses)) {
            return Err(bad(
                at(),
                "routes the kernel makes (protocol kernel or ra) are never saved",
            ));
        }
        if r.gateway.is_some_and(|g| !same_family(g, r.destination)) {
            return Err(bad(at(), "gateway is of another address family"));
        }
        if r.source.is_some_and(|g| !same_family(g, r.destination)) {
            return Err(bad(at(), "source is of another address family"));
        }
        if let Some(kind) = r
            .metrics
            .keys()
            .find(|k| !(1..=RTAX_MAX).contains(*k) || **k == RTAX_CC_ALGO)
        {
            return Err(bad(at(), format!("metric kind {kind} is not a numeric RTAX_* metric")));
        }
        if r.congestion_control
            .as_deref()
            .is_some_and(|c| c.is_empty() || c.len() > CC_NAME_MAX || !c.bytes().all(|b| b.is_ascii_graphic()))
        {
            return Err(bad(
                at(),
                format!("congestion control must be 1..={CC_NAME_MAX} printable ASCII bytes"),
            ));
        }
        // Only a route equal in every field is a duplicate: the kernel keeps routes sharing
        // their key side by side when added with append (a second DHCP lease's default route,
        // differing only in its source), and restore appends them the same way.
        if !r.nexthops.is_empty() {
            if r.gateway.is_some() || r.nexthops.len() < 2 {
                return Err(bad(
                    at(),
                    "a multipath route has two legs or more and no gateway of its own",
                ));
            }
            if !r.nexthops.iter().any(|n| n.device.is_none()) {
                return Err(bad(at(), "no leg of the multipath route uses this interface"));
            }
            for n in &r.nexthops {
                if n.gateway.is_some_and(|g| !same_family(g, r.destination)) {
                    return Err(bad(at(), "a leg's gateway is of another address family"));
                }
                if !(1..=256).contains(&n.weight) {
                    return Err(bad(at(), format!("a leg's weight {} is outside 1..=256", n.weight)));
                }
                if let Some(d) = &n.device {
                    validate_ifname("device", d).map_err(|p| bad(at(), p))?;
                }
            }
        }
        if !seen_routes.insert(r) {
            return Err(bad(at(), "listed twice"));
        }
    }

    if let Some(port) = &s.port {
        validate_ifname("master", &port.master).map_err(|p| bad("port.master", p))?;
        if let PortOptions::Bridge { priority, .. } = port.options {
            if priority > 63 {
                return Err(bad(
                    "port.options",
                    format!("bridge port priority {priority} is above 63"),
                ));
            }
        }
    }
    let mut seen_rules = BTreeSet::new();
    for (i, r) in s.rules.iter().enumerate() {
        let at = || format!("rules[{i}] (priority {})", r.priority);
        for (prefix, what) in [(r.source, "source"), (r.destination, "destination")] {
            if let Some((a, len)) = prefix {
                if a.is_ipv6() != r.ipv6 || len > bits(a) {
                    return Err(bad(at(), format!("{what} {a}/{len} does not fit the rule's family")));
                }
            }
        }
        for name in [&r.iif, &r.oif].into_iter().flatten() {
            validate_ifname("interface", name).map_err(|p| bad(at(), p))?;
        }
        if !seen_rules.insert(r) {
            return Err(bad(at(), "listed twice"));
        }
    }
    for (key, value) in &s.sysctls {
        let at = || format!("sysctls.{key}");
        if !TUNED_SYSCTLS.contains(&key.as_str()) {
            return Err(bad(at(), "not a setting restore carries over"));
        }
        if value.is_empty() || value.len() > 11 || value.parse::<i64>().is_err() {
            return Err(bad(at(), format!("{value:?} is not a number")));
        }
    }

    let mut seen = HashSet::new();
    for (i, n) in s.neighbours.iter().enumerate() {
        let at = || format!("neighbours[{i}] ({})", n.address);
        if !Neighbour::saveable(n.state) {
            return Err(bad(
                at(),
                format!("state {:#x} holds no usable link-layer address", n.state),
            ));
        }
        if n.lladdr.is_zero() {
            return Err(bad(at(), "link-layer address is all zeros"));
        }
        if !seen.insert(n.address) {
            return Err(bad(at(), "listed twice"));
        }
    }
    Ok(())
}
