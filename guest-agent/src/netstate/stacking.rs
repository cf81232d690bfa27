//! What is stacked on the VF: upper devices made on top of it (VLAN, macvlan, ipvlan, …). They
//! go with the unplug, and restore does not make them again, so a capture names each as state
//! it would lose. The master the VF is a port of is [`super::ports`]'s.

use rtnetlink::packet_route::link::{LinkAttribute, LinkInfo, LinkMessage};

/// One link as far as stacking is concerned.
struct Link {
    index: u32,
    name: String,
    kind: Option<String>,
    /// IFLA_LINK: the device this one is made on, in this namespace.
    lower: Option<u32>,
}

fn link(m: &LinkMessage) -> Link {
    let mut l = Link {
        index: m.header.index,
        name: String::new(),
        kind: None,
        lower: None,
    };
    let mut elsewhere = false;
    for attr in &m.attributes {
        match attr {
            LinkAttribute::IfName(n) => l.name = n.clone(),
            LinkAttribute::Link(i) => l.lower = Some(*i),
            LinkAttribute::LinkNetNsId(_) => elsewhere = true,
            LinkAttribute::LinkInfo(infos) => {
                l.kind = infos.iter().find_map(|i| match i {
                    LinkInfo::Kind(k) => Some(k.to_string()),
                    _ => None,
                });
            }
            _ => {}
        }
    }
    // An IFLA_LINK into another namespace (a veth's peer) names no device here.
    if elsewhere {
        l.lower = None;
    }
    l
}

/// What is stacked on the link with index `vf`, among `links`, one line each.
pub(super) fn stacked(links: &[LinkMessage], vf: u32) -> Vec<String> {
    let links: Vec<Link> = links.iter().map(link).collect();
    let Some(me) = links.iter().find(|l| l.index == vf) else {
        return Vec::new();
    };
    let kind = |l: &Link| l.kind.clone().unwrap_or_else(|| "device".into());
    let mut lost = Vec::new();
    // Two links naming each other are a pair (veth), not a stack.
    let upper = |l: &&Link| l.index != vf && l.lower == Some(vf) && me.lower != Some(l.index);
    // Those of the kinds restore makes again are captured by `uppers` instead.
    let upper = |l: &&Link| upper(l) && !l.kind.as_deref().is_some_and(|k| super::uppers::KINDS.contains(&k));
    for upper in links.iter().filter(upper) {
        lost.push(format!(
            "{} ({}) is stacked on {}: upper devices are not restored",
            upper.name,
            kind(upper),
            me.name
        ));
    }
    lost
}
