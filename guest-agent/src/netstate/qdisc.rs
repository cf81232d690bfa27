//! The VF's traffic-control queueing disciplines. The kernel gives a fresh link its default
//! root qdisc (handle 0) by itself; one a user set (any other handle) and an ingress or clsact
//! qdisc go with the unplug, and restore does not make them again, so a capture names each.

use futures::TryStreamExt;
use rtnetlink::packet_route::tc::{TcAttribute, TcHandle, TcMessage};
use rtnetlink::Handle;

use super::capture::netlink;
use super::NetstateError;

/// One line per qdisc on the link with index `index` (named `name`) that restore would lose.
pub(super) async fn unrestorable(handle: &Handle, index: u32, name: &str) -> Result<Vec<String>, NetstateError> {
    let Ok(ifindex) = i32::try_from(index) else {
        return Ok(Vec::new());
    };
    let qdiscs: Vec<TcMessage> = handle
        .qdisc()
        .get()
        .index(ifindex)
        .execute()
        .try_collect()
        .await
        .map_err(netlink("dumping queueing disciplines"))?;
    Ok(qdiscs
        .iter()
        .filter(|q| q.header.index == ifindex)
        .filter(|q| {
            let (parent, own) = (q.header.parent, q.header.handle);
            (parent == TcHandle::ROOT && own != TcHandle::UNSPEC) || parent == TcHandle::INGRESS
        })
        .map(|q| {
            let kind = q
                .attributes
                .iter()
                .find_map(|a| match a {
                    TcAttribute::Kind(k) => Some(k.as_str()),
                    _ => None,
                })
                .unwrap_or("?");
            format!("qdisc {kind} on {name} is not restored")
        })
        .collect())
}
