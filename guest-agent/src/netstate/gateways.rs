//! IPv6 gateway routes the kernel holds but would not take again. The kernel checks, when a
//! route is added, that its gateway is reachable through the route's link; it does not take the
//! route away when that stops being true — an IPv6 address flushed off the link (as when the
//! link is made a bridge port) leaves its gateway routes behind. Restore would then fail on
//! them after the unplug, so the capture names them instead, before it. (IPv4 drops a link's
//! routes with its last address, so it never holds such a route.)

use std::net::IpAddr;

use vfmig_protocol::netstate::{is_link_local_v6, network_of, Address, Route};

/// Whether `gateway` is reachable on the link once restore has put back `addresses` and the
/// on-link `routes`: the way restore orders them, the kernel then finds a route to it there.
fn reachable(gateway: IpAddr, addresses: &[Address], on_link: &[(IpAddr, u8)]) -> bool {
    let covers = |network: IpAddr, len: u8| network_of(gateway, len) == network_of(network, len);
    is_link_local_v6(gateway)
        || addresses
            .iter()
            .any(|a| a.flags & Address::NOPREFIXROUTE == 0 && covers(a.address, a.prefix_len))
        || on_link.iter().any(|(network, len)| covers(*network, *len))
}

/// Takes out of `routes` the IPv6 routes whose gateway restore could not reach on the link,
/// and says why, one line each.
pub(super) fn unreachable(routes: &mut Vec<Route>, addresses: &[Address], link: &str) -> Vec<String> {
    let on_link: Vec<(IpAddr, u8)> = routes
        .iter()
        .filter(|r| r.gateway.is_none() && r.nexthops.is_empty())
        .map(|r| (r.destination, r.prefix_len))
        .collect();
    let (keep, lost): (Vec<Route>, Vec<Route>) = routes.drain(..).partition(|r| match r.gateway {
        Some(g @ IpAddr::V6(_)) if !r.onlink => reachable(g, addresses, &on_link),
        _ => true,
    });
    *routes = keep;
    lost.iter()
        .map(|r| {
            format!(
                "route {}/{} via {} table {}: no address or on-link route on {link} covers the gateway, \
                 so the kernel would not take the route again",
                r.destination,
                r.prefix_len,
                r.gateway.map(|g| g.to_string()).unwrap_or_default(),
                r.table
            )
        })
        .collect()
}
