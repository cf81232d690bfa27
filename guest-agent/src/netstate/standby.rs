//! The standby path: for the VF gap — from just before the unplug until the fresh VF is
//! restored — a paravirtual NIC on the same network (a virtio-net) carries the VF's addresses,
//! routes and neighbours, so the guest stays reachable while the migration completes.
//!
//! Moving is restoring the saved state onto the standby without touching its identity: its
//! addresses are added (the VF keeps its own until it is unplugged, so nothing goes dark in
//! between), routes are *replaced* onto it (a route is keyed by prefix, table and metric, not
//! by device, so a replace moves it in one step), and the addresses are announced with the
//! standby's MAC, which may differ from the VF's. Moving back is restoring onto the fresh VF
//! (routes replaced back) and then removing from the standby what was put there.
//!
//! A VF that is a port of a master (bond, bridge, team, net_failover) is left alone: it has no
//! addresses of its own to move — they live on the master, which stays through the gap (a bond
//! fails over to its other ports by itself) — and the fresh VF rejoins the master on restore.

use std::net::IpAddr;

use futures::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use rtnetlink::packet_route::neighbour::{NeighbourAddress, NeighbourAttribute};
use rtnetlink::Handle;
use vfmig_protocol::message::StandbyRequest;
use vfmig_protocol::netstate::SavedState;

use super::capture::{all_links, netlink};
use super::restore::{restore, RestoreOptions, RestoreReport};
use super::{find_link, sysfs, NetstateError};

/// The guest's own standby setting (`vfmig-guestd run --standby`), used when the host asks
/// for the automatic choice.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum StandbyConfig {
    Off,
    /// The one virtio-net link that is up with carrier and enslaved to nothing.
    #[default]
    Auto,
    Named(String),
}

impl std::str::FromStr for StandbyConfig {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "off" => Self::Off,
            "auto" => Self::Auto,
            name => {
                vfmig_protocol::message::validate_ifname("standby", name)?;
                Self::Named(name.into())
            }
        })
    }
}

/// The link that carries the VF's traffic through the gap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Standby {
    pub index: u32,
    pub name: String,
}

struct Link {
    index: u32,
    name: String,
    carrier: bool,
    enslaved: bool,
}

fn link(msg: &LinkMessage) -> Link {
    let mut l = Link {
        index: msg.header.index,
        name: String::new(),
        carrier: msg.header.flags.contains(LinkFlags::Up) && msg.header.flags.contains(LinkFlags::LowerUp),
        enslaved: false,
    };
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => l.name = n.clone(),
            LinkAttribute::Controller(_) => l.enslaved = true,
            _ => {}
        }
    }
    l
}

async fn links(handle: &Handle) -> Result<Vec<Link>, NetstateError> {
    Ok(all_links(handle).await?.iter().map(link).collect())
}

fn unusable(why: String) -> NetstateError {
    NetstateError::StandbyUnusable(why)
}

/// The standby to move the VF (link `vf`) to, or `None` with the reason there is none. A
/// standby the host names must be there and have carrier; the automatic choice passes over
/// what does not qualify.
pub async fn choose(
    handle: &Handle,
    request: &StandbyRequest,
    config: &StandbyConfig,
    vf: u32,
) -> Result<Result<Standby, String>, NetstateError> {
    let all = links(handle).await?;
    if all.iter().any(|l| l.index == vf && l.enslaved) {
        return Ok(Err(
            "the VF is a port of a master (bond, bridge, team, failover), which keeps its addresses through the gap"
                .into(),
        ));
    }
    let usable = |l: &Link| -> Result<Standby, String> {
        if l.index == vf {
            return Err(format!("{} is the VF itself", l.name));
        }
        if l.enslaved {
            return Err(format!("{} is enslaved to a master", l.name));
        }
        if !l.carrier {
            return Err(format!("{} is down or has no carrier", l.name));
        }
        Ok(Standby {
            index: l.index,
            name: l.name.clone(),
        })
    };
    match (request, config) {
        (StandbyRequest::Off, _) => Ok(Err("the host asked for none".into())),
        (StandbyRequest::Use(selector), _) => {
            let index = find_link(handle, selector)
                .await
                .map_err(|e| unusable(format!("the standby the host named: {e}")))?;
            let l = all
                .iter()
                .find(|l| l.index == index)
                .ok_or_else(|| unusable(format!("the standby the host named (index {index}) vanished")))?;
            usable(l).map(Ok).map_err(unusable)
        }
        (StandbyRequest::Auto, StandbyConfig::Off) => Ok(Err("the guest is configured without one".into())),
        (StandbyRequest::Auto, StandbyConfig::Named(name)) => Ok(match all.iter().find(|l| &l.name == name) {
            Some(l) => usable(l),
            None => Err(format!("the configured standby {name} does not exist")),
        }),
        (StandbyRequest::Auto, StandbyConfig::Auto) => {
            let virtio: Vec<_> = all
                .iter()
                .filter(|l| sysfs::identity(&l.name, l.index).0.as_deref() == Some("virtio_net"))
                .filter_map(|l| usable(l).ok())
                .collect();
            Ok(match &virtio[..] {
                [one] => Ok(one.clone()),
                [] => Err("no virtio-net link that is up and free".into()),
                _ => Err(format!("{} virtio-net links qualify; configure one", virtio.len())),
            })
        }
    }
}

/// Moves the saved state from the VF (link `vf`) onto the standby: addresses added, routes
/// replaced onto it, neighbours added, addresses announced with its MAC — and only then the
/// addresses taken off the VF. Until then the VF still answers; after, the kernel's prefix
/// routes through the VF are gone with them, so replies leave through the standby too
/// (measured: left on the VF, they went into the VF as its driver was being removed, and the
/// peer saw 86 ms of silence).
pub async fn move_to(
    handle: &Handle,
    saved: &SavedState,
    vf: u32,
    standby: &Standby,
) -> Result<RestoreReport, NetstateError> {
    let opts = RestoreOptions {
        keep_link: true,
        announce: true,
        ..RestoreOptions::default()
    };
    let mut report = restore(handle, saved, standby.index, opts).await?;
    if report.failed.is_empty() {
        report.failed = remove_addresses(handle, saved, vf, "the VF").await?;
    }
    Ok(report)
}

/// Removes the saved addresses from link `index`; returns those it could not remove.
async fn remove_addresses(
    handle: &Handle,
    saved: &SavedState,
    index: u32,
    name: &str,
) -> Result<Vec<String>, NetstateError> {
    let want: Vec<(IpAddr, u8)> = saved
        .interface
        .addresses
        .iter()
        .map(|a| (a.address, a.prefix_len))
        .collect();
    let addresses: Vec<AddressMessage> = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect()
        .await
        .map_err(netlink(format!("listing the addresses of {name}")))?;
    let mut failed = Vec::new();
    for msg in addresses {
        let address = msg.attributes.iter().find_map(|a| match a {
            AddressAttribute::Address(ip) => Some(*ip),
            _ => None,
        });
        let Some(address) = address.filter(|ip| want.contains(&(*ip, msg.header.prefix_len))) else {
            continue;
        };
        if let Err(e) = handle.address().del(msg).execute().await {
            failed.push(format!("address {address} on {name}: {e}"));
        }
    }
    Ok(failed)
}

/// Removes from the standby what [`move_to`] put there (its routes have already moved back
/// with the restore onto the fresh VF): the saved addresses, and the saved permanent
/// neighbours. Returns the items it could not remove.
pub async fn clear(handle: &Handle, saved: &SavedState, standby: &Standby) -> Result<Vec<String>, NetstateError> {
    let mut failed = remove_addresses(handle, saved, standby.index, &standby.name).await?;
    let permanent: Vec<IpAddr> = saved
        .interface
        .neighbours
        .iter()
        .filter(|n| n.is_permanent())
        .map(|n| n.address)
        .collect();
    let neighbours: Vec<_> = handle
        .neighbours()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(netlink("listing neighbours"))?;
    for msg in neighbours.into_iter().filter(|n| n.header.ifindex == standby.index) {
        let address = msg.attributes.iter().find_map(|a| match a {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(IpAddr::V4(*ip)),
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(ip)) => Some(IpAddr::V6(*ip)),
            _ => None,
        });
        let Some(address) = address.filter(|ip| permanent.contains(ip)) else {
            continue;
        };
        if let Err(e) = handle.neighbours().del(msg).execute().await {
            failed.push(format!("neighbour {address} on {}: {e}", standby.name));
        }
    }
    Ok(failed)
}
