//! Links appearing: the fresh VF after a hot-plug, seen through rtnetlink's link notifications.

use std::collections::HashSet;

use futures::channel::mpsc::UnboundedReceiver;
use futures::{Stream, StreamExt};
use rtnetlink::packet_core::{NetlinkMessage, NetlinkPayload};
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::sys::SocketAddr;
use rtnetlink::MulticastGroup;
use vfmig_protocol::MacAddr;

use super::capture::all_links;
use super::NetstateError;

/// A link that was not there before: its index and Ethernet address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NewLink {
    pub index: u32,
    pub mac: MacAddr,
}

fn identify(link: &LinkMessage) -> Option<NewLink> {
    // An upper that restore makes again carries its saved MAC, which may be the VF's (a VLAN's
    // is): it is never a fresh VF to restore onto.
    if super::uppers::is_upper(link) {
        return None;
    }
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(mac) => MacAddr::from_slice(mac).map(|mac| NewLink {
            index: link.header.index,
            mac,
        }),
        _ => None,
    })
}

/// Every link that appears from now on, once each. The kernel sends RTM_NEWLINK for every
/// change of a link too, so links already seen (including those present at the start) are
/// filtered out.
pub async fn new_links() -> Result<impl Stream<Item = NewLink>, NetstateError> {
    let (conn, handle, messages): (
        _,
        _,
        UnboundedReceiver<(NetlinkMessage<RouteNetlinkMessage>, SocketAddr)>,
    ) = rtnetlink::new_multicast_connection(&[MulticastGroup::Link]).map_err(NetstateError::Socket)?;
    tokio::spawn(conn);
    let present = all_links(&handle).await?;
    let mut seen: HashSet<u32> = present.iter().map(|l| l.header.index).collect();
    Ok(messages.filter_map(move |(msg, _)| {
        let new = match msg.payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) if seen.insert(link.header.index) => {
                identify(&link)
            }
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(link)) => {
                seen.remove(&link.header.index);
                None
            }
            _ => None,
        };
        futures::future::ready(new)
    }))
}
