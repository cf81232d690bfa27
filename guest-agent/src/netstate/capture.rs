//! Reading one interface's state: link, addresses, routes in every table, neighbours.
//!
//! Dumps run one after another: the kernel serves one dump at a time per netlink socket.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage, AddressProtocol};
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use rtnetlink::packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteFlags, RouteMessage};
use rtnetlink::{Handle, LinkGetRequest, RouteMessageBuilder};
use vfmig_protocol::message::InterfaceSelector;
use vfmig_protocol::netstate::consts::*;
use vfmig_protocol::netstate::{
    handmade_prefix_route, is_link_local_v6, Address, Identity, InterfaceState, Neighbour, Route,
};
use vfmig_protocol::MacAddr;

use super::{
    errno, gateways, metrics, multipath, ports, qdisc, rules, stacking, sysctls, sysfs, uppers, NetstateError,
};

/// IFA_CACHEINFO's "forever".
const INFINITY_LIFE_TIME: u32 = u32::MAX;

/// A captured state, and what was seen that restore would not put back, one line each: the
/// agent refuses to save such a state unless the host accepts the loss, and never drops it
/// silently.
#[derive(Debug, Clone)]
pub struct Captured {
    pub state: InterfaceState,
    pub unrestorable: Vec<String>,
}

pub(super) fn netlink(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetstateError {
    let what = what.into();
    move |error| NetstateError::Netlink { what, error }
}

/// The link a query names, if there is one: an empty answer and ENODEV both mean there is none.
async fn maybe_link(request: LinkGetRequest, what: &str) -> Result<Option<LinkMessage>, NetstateError> {
    match request.execute().try_next().await {
        Ok(link) => Ok(link),
        Err(e) if errno::code(&e) == Some(libc::ENODEV) => Ok(None),
        Err(e) => Err(netlink(format!("reading link {what}"))(e)),
    }
}

/// The link named `name`, if there is one.
pub(super) async fn link_named(handle: &Handle, name: &str) -> Result<Option<LinkMessage>, NetstateError> {
    maybe_link(handle.link().get().match_name(name.to_owned()), name).await
}

/// The link with index `index`, if there is one (still).
pub(super) async fn link_numbered(handle: &Handle, index: u32) -> Result<Option<LinkMessage>, NetstateError> {
    maybe_link(handle.link().get().match_index(index), &format!("with index {index}")).await
}

/// The one link a query names; none is an error.
async fn one_link(request: LinkGetRequest, what: String) -> Result<LinkMessage, NetstateError> {
    maybe_link(request, &what)
        .await?
        .ok_or(NetstateError::NoSuchInterface(what))
}

async fn link_by_name(handle: &Handle, name: &str) -> Result<LinkMessage, NetstateError> {
    one_link(handle.link().get().match_name(name.to_owned()), name.to_owned()).await
}

/// The index of the link named `name`.
pub async fn link_index(handle: &Handle, name: &str) -> Result<u32, NetstateError> {
    Ok(link_by_name(handle, name).await?.header.index)
}

/// Captures the interface named `name`.
pub async fn capture(handle: &Handle, name: &str) -> Result<Captured, NetstateError> {
    capture_link(handle, link_by_name(handle, name).await?).await
}

/// Captures the interface with index `index`.
pub async fn capture_index(handle: &Handle, index: u32) -> Result<Captured, NetstateError> {
    let link = one_link(handle.link().get().match_index(index), format!("with index {index}")).await?;
    capture_link(handle, link).await
}

/// Every link in the namespace.
pub(super) async fn all_links(handle: &Handle) -> Result<Vec<LinkMessage>, NetstateError> {
    handle
        .link()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(netlink("listing links"))
}

/// The index of the one link that matches every field `selector` sets (name, MAC, PCI
/// address). No match and several matches are both errors — the host must name one link —
/// except that of several, the one PCI device is taken: uppers share their lower's MAC.
pub async fn find_link(handle: &Handle, selector: &InterfaceSelector) -> Result<u32, NetstateError> {
    let links = all_links(handle).await?;
    let mut found = Vec::new();
    for link in &links {
        let (mut name, mut mac) = (None, None);
        for attr in &link.attributes {
            match attr {
                LinkAttribute::IfName(n) => name = Some(n.as_str()),
                LinkAttribute::Address(a) => mac = MacAddr::from_slice(a),
                _ => {}
            }
        }
        let Some(name) = name else { continue };
        let pci = || sysfs::identity(name, link.header.index).1.map(|p| p.address);
        if selector.name.as_deref().is_none_or(|n| n == name)
            && selector.mac.is_none_or(|m| mac == Some(m))
            && selector.pci_address.as_ref().is_none_or(|p| pci().as_ref() == Some(p))
        {
            found.push((link.header.index, pci().is_some()));
        }
    }
    // A VLAN, a bond or a bridge takes its lower's MAC: of several links with the MAC asked
    // for, the VF is the one a PCI device stands behind.
    if found.len() > 1 && found.iter().filter(|(_, pci)| *pci).count() == 1 {
        found.retain(|(_, pci)| *pci);
    }
    let found: Vec<u32> = found.into_iter().map(|(index, _)| index).collect();
    match found[..] {
        [index] => Ok(index),
        [] => Err(NetstateError::NoSuchInterface(format!("matching {selector:?}"))),
        _ => Err(NetstateError::Ambiguous {
            selector: format!("{selector:?}"),
            count: found.len(),
        }),
    }
}

/// The PCI address of the one link `selector` names; an error for a link that is not a PCI
/// device.
pub async fn pci_address(handle: &Handle, selector: &InterfaceSelector) -> Result<String, NetstateError> {
    let index = find_link(handle, selector).await?;
    let link = one_link(handle.link().get().match_index(index), format!("with index {index}")).await?;
    let name = link
        .attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::IfName(n) => Some(n.as_str()),
            _ => None,
        })
        .unwrap_or_default();
    sysfs::identity(name, index)
        .1
        .map(|p| p.address)
        .ok_or_else(|| NetstateError::NoSuchInterface(format!("{name} (index {index}) is not a PCI device")))
}

async fn capture_link(handle: &Handle, link: LinkMessage) -> Result<Captured, NetstateError> {
    capture_at(handle, link, &all_links(handle).await?, 0).await
}

/// Captures `link`, one of `links`, `depth` uppers above the VF.
pub(super) async fn capture_at(
    handle: &Handle,
    link: LinkMessage,
    links: &[LinkMessage],
    depth: usize,
) -> Result<Captured, NetstateError> {
    let index = link.header.index;
    let (mut name, mut mac, mut permanent_mac, mut mtu) = (String::new(), None, None, 0);
    for attr in &link.attributes {
        match attr {
            LinkAttribute::IfName(n) => name = n.clone(),
            LinkAttribute::Address(a) => mac = MacAddr::from_slice(a),
            LinkAttribute::PermAddress(a) => permanent_mac = MacAddr::from_slice(a),
            LinkAttribute::Mtu(m) => mtu = *m,
            _ => {}
        }
    }
    let mac = mac.ok_or_else(|| NetstateError::NotEthernet { name: name.clone() })?;
    let (driver, pci) = sysfs::identity(&name, index);
    let mut unrestorable = stacking::stacked(links, index);
    let (port, lost) = ports::capture(handle, &link).await?;
    unrestorable.extend(lost);

    let addresses = dump_addresses(handle, index).await?;
    let mut routes = dump_routes(handle, index, &addresses, &link_names(links), &mut unrestorable).await?;
    unrestorable.extend(gateways::unreachable(&mut routes, &addresses, &name));
    let neighbours = dump_neighbours(handle, index).await?;
    let rules = rules::capture(handle, &name, &addresses, &mut unrestorable).await?;
    let sysctls = sysctls::capture(&name);
    unrestorable.extend(qdisc::unrestorable(handle, index, &name).await?);
    let uppers = uppers::capture(handle, links, index, depth, &mut unrestorable).await?;

    let mut state = InterfaceState {
        identity: Identity {
            name,
            ifindex: index,
            mac,
            permanent_mac: permanent_mac.filter(|m| !m.is_zero()),
            driver,
            pci,
        },
        mtu,
        admin_up: link.header.flags.contains(LinkFlags::Up),
        addresses,
        routes,
        neighbours,
        uppers,
        port,
        rules,
        sysctls,
    };
    state.sort();
    Ok(Captured { state, unrestorable })
}

async fn dump_addresses(handle: &Handle, index: u32) -> Result<Vec<Address>, NetstateError> {
    let messages: Vec<AddressMessage> = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect()
        .await
        .map_err(netlink("dumping addresses"))?;
    Ok(messages
        .iter()
        .filter(|m| m.header.index == index)
        .filter_map(address_from)
        .collect())
}

fn address_from(m: &AddressMessage) -> Option<Address> {
    let (mut local, mut addr, mut label, mut broadcast, mut cache, mut route_metric) =
        (None, None, None, None, None, None);
    let mut flags = u32::from(m.header.flags.bits());
    for attr in &m.attributes {
        match attr {
            AddressAttribute::Local(a) => local = Some(*a),
            AddressAttribute::Address(a) => addr = Some(*a),
            AddressAttribute::Label(l) => label = Some(l.clone()),
            AddressAttribute::Broadcast(b) => broadcast = Some(*b),
            AddressAttribute::CacheInfo(c) => cache = Some(*c),
            AddressAttribute::Flags(f) => flags = f.bits(),
            AddressAttribute::RoutePriority(p) => route_metric = Some(*p),
            // Addresses the kernel made itself (loopback, SLAAC, link-local) come back by themselves.
            AddressAttribute::Protocol(
                AddressProtocol::Loopback | AddressProtocol::RouterAnnouncement | AddressProtocol::LinkLocal,
            ) => return None,
            _ => {}
        }
    }
    let address = local.or(addr)?;
    if is_link_local_v6(address) {
        return None;
    }
    let lifetime = |secs: u32| (secs != INFINITY_LIFE_TIME).then_some(secs);
    Some(Address {
        address,
        prefix_len: m.header.prefix_len,
        peer: addr.filter(|a| local.is_some() && *a != address),
        broadcast,
        label,
        scope: m.header.scope.into(),
        flags: flags & Address::CONFIG_FLAGS,
        route_metric,
        valid_lft: cache.and_then(|c| lifetime(c.ifa_valid)),
        preferred_lft: cache.and_then(|c| lifetime(c.ifa_preferred)),
    })
}

/// Every link's name by its index.
pub(super) fn link_names(links: &[LinkMessage]) -> HashMap<u32, String> {
    links
        .iter()
        .filter_map(|l| {
            l.attributes.iter().find_map(|a| match a {
                LinkAttribute::IfName(n) => Some((l.header.index, n.clone())),
                _ => None,
            })
        })
        .collect()
}

async fn dump_routes(
    handle: &Handle,
    index: u32,
    addresses: &[Address],
    names: &HashMap<u32, String>,
    unrestorable: &mut Vec<String>,
) -> Result<Vec<Route>, NetstateError> {
    let mut routes = Vec::new();
    // Table 0 asks for every table; a non-strict dump returns them all anyway.
    for request in [
        RouteMessageBuilder::<Ipv4Addr>::new().table_id(0).build(),
        RouteMessageBuilder::<Ipv6Addr>::new().table_id(0).build(),
    ] {
        let messages: Vec<RouteMessage> = handle
            .route()
            .get(request)
            .execute()
            .try_collect()
            .await
            .map_err(netlink("dumping routes"))?;
        for m in &messages {
            if let Some(route) = route_from(m, index, addresses, names, unrestorable) {
                routes.push(route);
            }
        }
    }
    Ok(routes)
}

pub(super) fn ip_of(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

fn route_from(
    m: &RouteMessage,
    index: u32,
    addresses: &[Address],
    names: &HashMap<u32, String>,
    unrestorable: &mut Vec<String>,
) -> Option<Route> {
    let h = &m.header;
    let mut table = u32::from(h.table);
    let (mut oif, mut destination, mut gateway, mut metric, mut source) = (None, None, None, None, None);
    let (mut legs, mut nexthop_object, mut via, mut route_metrics) = (None, None, false, None);
    for attr in &m.attributes {
        match attr {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Destination(d) => destination = ip_of(d),
            RouteAttribute::Gateway(g) => gateway = ip_of(g),
            RouteAttribute::Priority(p) => metric = Some(*p),
            RouteAttribute::PrefSource(s) => source = ip_of(s),
            RouteAttribute::MultiPath(hops) => legs = Some(hops),
            RouteAttribute::NhId(id) => nexthop_object = Some(*id),
            RouteAttribute::Via(_) => via = true,
            RouteAttribute::Metrics(list) => route_metrics = Some(metrics::from_kernel(list)),
            _ => {}
        }
    }
    let kind: u8 = h.kind.into();
    let protocol: u8 = h.protocol.into();
    let is_ipv4 = h.address_family == rtnetlink::packet_route::AddressFamily::Inet;
    let destination = destination.unwrap_or(if is_ipv4 {
        Ipv4Addr::UNSPECIFIED.into()
    } else {
        Ipv6Addr::UNSPECIFIED.into()
    });
    let describe = || format!("route {destination}/{} table {table}", h.destination_prefix_length);
    let through_vf = oif == Some(index) || legs.is_some_and(|hops| hops.iter().any(|hop| hop.interface_index == index));
    if !through_vf || table == RT_TABLE_LOCAL || kind != RTN_UNICAST {
        return None;
    }
    if let Some(id) = nexthop_object {
        unrestorable.push(format!(
            "{}: it uses nexthop object {id}; nexthop objects are not restored",
            describe()
        ));
        return None;
    }
    if protocol == RTPROT_RA {
        return None;
    }
    let mut route = Route {
        table,
        destination,
        prefix_len: h.destination_prefix_length,
        metric,
        tos: h.tos,
        gateway,
        onlink: h.flags.contains(RouteFlags::Onlink),
        protocol,
        scope: h.scope.into(),
        kind,
        source,
        metrics: Default::default(),
        congestion_control: None,
        nexthops: Vec::new(),
    };
    if protocol == RTPROT_KERNEL && !handmade_prefix_route(&route, addresses) {
        return None;
    }
    if let Some(hops) = legs {
        match multipath::from_kernel(hops, index, names) {
            Ok(nexthops) => route.nexthops = nexthops,
            Err(why) => {
                unrestorable.push(format!("{}: multipath: {why}", describe()));
                return None;
            }
        }
    }
    if via {
        unrestorable.push(format!(
            "{}: a gateway of another address family (via) is not restored",
            describe()
        ));
        return None;
    }
    if let Some(m) = route_metrics {
        if !m.unknown.is_empty() {
            unrestorable.push(format!(
                "{}: route metric kinds {:?} are not known to this build",
                describe(),
                m.unknown
            ));
        }
        route.metrics = m.numbers;
        route.congestion_control = m.congestion_control;
    }
    Some(route)
}

async fn dump_neighbours(handle: &Handle, index: u32) -> Result<Vec<Neighbour>, NetstateError> {
    let messages: Vec<NeighbourMessage> = handle
        .neighbours()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(netlink("dumping neighbours"))?;
    Ok(messages
        .iter()
        .filter(|m| m.header.ifindex == index)
        .filter_map(neighbour_from)
        .collect())
}

fn neighbour_from(m: &NeighbourMessage) -> Option<Neighbour> {
    let state: u16 = m.header.state.into();
    if !Neighbour::saveable(state) {
        return None;
    }
    let (mut address, mut lladdr) = (None, None);
    for attr in &m.attributes {
        match attr {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => address = Some(IpAddr::V4(*a)),
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(a)) => address = Some(IpAddr::V6(*a)),
            NeighbourAttribute::LinkLayerAddress(l) => lladdr = MacAddr::from_slice(l),
            _ => {}
        }
    }
    Some(Neighbour {
        address: address?,
        lladdr: lladdr.filter(|l| !l.is_zero())?,
        state,
        router: m.header.flags.contains(NeighbourFlags::Router),
    })
}
