//! A multipath route's legs (RTA_MULTIPATH) between the kernel's list and the saved state's,
//! both ways. A leg through the interface the state is of names no device (the fresh VF gets a
//! new index); a leg through another link names it, and restore finds it again by that name.

use std::collections::HashMap;

use rtnetlink::packet_route::route::{RouteAttribute, RouteNextHop, RouteNextHopFlags};
use vfmig_protocol::netstate::{Nexthop, Route};

use super::capture::ip_of;

/// The legs of a route that goes through the link with index `vf`, with `names` naming every
/// link; the reason when a leg holds what this build cannot carry.
pub(super) fn from_kernel(
    hops: &[RouteNextHop],
    vf: u32,
    names: &HashMap<u32, String>,
) -> Result<Vec<Nexthop>, String> {
    hops.iter()
        .map(|hop| {
            let device = if hop.interface_index == vf {
                None
            } else {
                Some(
                    names
                        .get(&hop.interface_index)
                        .cloned()
                        .ok_or_else(|| format!("a leg leaves by ifindex {}, which has no name", hop.interface_index))?,
                )
            };
            let mut gateway = None;
            for attr in &hop.attributes {
                match attr {
                    RouteAttribute::Gateway(g) => gateway = ip_of(g),
                    other => return Err(format!("a leg's attribute {other:?} is not restored")),
                }
            }
            Ok(Nexthop {
                device,
                gateway,
                weight: u16::from(hop.hops) + 1,
                onlink: hop.flags.contains(RouteNextHopFlags::Onlink),
            })
        })
        .collect()
}

/// The legs to send for `route` restored onto the link with index `onto`, the other links
/// found by name in `indexes`; the reason when one of them is gone. Legs that land on the same
/// link and gateway become one, their weights added: a standby taking the VF's leg may carry
/// another leg of the route already, and the kernel refuses a leg twice (EEXIST).
pub(super) fn to_kernel(route: &Route, onto: u32, indexes: &HashMap<String, u32>) -> Result<Vec<RouteNextHop>, String> {
    let mut hops: Vec<RouteNextHop> = Vec::new();
    for leg in &route.nexthops {
        let index = match &leg.device {
            None => onto,
            Some(name) => *indexes
                .get(name)
                .ok_or_else(|| format!("the link {name} of a leg is gone"))?,
        };
        let gateway = leg.gateway.map(|g| RouteAttribute::Gateway(g.into()));
        // An opened state's weights are 1..=256 (its check refuses others).
        let weight = leg.weight.clamp(1, 256);
        if let Some(same) = hops
            .iter_mut()
            .find(|h| h.interface_index == index && h.attributes.first() == gateway.as_ref())
        {
            same.hops = u8::try_from((u16::from(same.hops) + 1 + weight).min(256) - 1).unwrap_or(u8::MAX);
            continue;
        }
        let mut hop = RouteNextHop::default();
        hop.interface_index = index;
        hop.hops = u8::try_from(weight - 1).unwrap_or(u8::MAX);
        if leg.onlink {
            hop.flags = RouteNextHopFlags::Onlink;
        }
        hop.attributes.extend(gateway);
        hops.push(hop);
    }
    Ok(hops)
}
