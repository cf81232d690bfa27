//! Upper devices made on the VF — VLAN, macvlan, ipvlan — go with it on unplug. Capture reads
//! each with its own state (recursively: a macvlan on a VLAN); restore makes each again on the
//! fresh VF, with its name, kind parameters and MAC (the peers' ARP caches hold it), then puts
//! its own state back with the same restore as the VF's. Uppers of other kinds stay named by
//! [`super::stacking`] as state a restore would lose.

use rtnetlink::packet_route::link::{
    InfoData, InfoIpVlan, InfoMacVlan, InfoVlan, IpVlanFlags, IpVlanMode, LinkAttribute, LinkInfo, LinkMessage,
    MacVlanFlags, MacVlanMode, VlanFlags, VlanProtocol,
};
use rtnetlink::{Handle, LinkIpVlan, LinkMacVlan, LinkVlan};
use vfmig_protocol::netstate::{SavedState, Upper, UpperKind, MAX_UPPER_DEPTH};

use super::capture::{capture_at, link_named};
use super::restore::{restore, Item, RestoreOptions, RestoreReport};
use super::{errno, NetstateError};

/// The link kinds restore makes again; the others are named as lost.
pub(super) const KINDS: &[&str] = &["vlan", "macvlan", "ipvlan"];

/// Every VLAN flag a user can set (VLAN_FLAG_*): the mask the kernel accepts with the flags.
const VLAN_FLAGS_KNOWN: u32 = 0x1f;
/// MACVLAN_MODE_SOURCE: such a macvlan also holds a list of source MACs, which is not saved.
const MACVLAN_MODE_SOURCE: u32 = 16;

/// The link's name, its lower in this namespace (IFLA_LINK), and its kind with its data.
fn parts(m: &LinkMessage) -> (String, Option<u32>, Option<String>, Option<&InfoData>) {
    let (mut name, mut lower, mut kind, mut data) = (String::new(), None, None, None);
    let mut elsewhere = false;
    for attr in &m.attributes {
        match attr {
            LinkAttribute::IfName(n) => name = n.clone(),
            LinkAttribute::Link(i) => lower = Some(*i),
            LinkAttribute::LinkNetNsId(_) => elsewhere = true,
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    match info {
                        LinkInfo::Kind(k) => kind = Some(k.to_string()),
                        LinkInfo::Data(d) => data = Some(d),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    // An IFLA_LINK into another namespace names no device here.
    (name, lower.filter(|_| !elsewhere), kind, data)
}

/// Whether `m` is of a kind restore makes on a lower (never a VF itself).
pub(super) fn is_upper(m: &LinkMessage) -> bool {
    parts(m).2.is_some_and(|k| KINDS.contains(&k.as_str()))
}

/// What makes the upper `m` again, with what of it would not be made again (one line each);
/// `None` for a kind restore does not make.
fn kind_of(m: &LinkMessage) -> Option<(UpperKind, Vec<String>)> {
    let (name, _, kind, data) = parts(m);
    let mut lost = Vec::new();
    let kind = match (kind.as_deref()?, data) {
        ("vlan", Some(InfoData::Vlan(infos))) => {
            let (mut id, mut protocol, mut flags) = (0, VlanProtocol::Ieee8021Q.into(), 0);
            for info in infos {
                match info {
                    InfoVlan::Id(i) => id = *i,
                    InfoVlan::Protocol(p) => protocol = u16::from(*p),
                    InfoVlan::Flags((f, _)) => flags = f.bits(),
                    InfoVlan::EgressQos(maps) | InfoVlan::IngressQos(maps) if !maps.is_empty() => {
                        lost.push(format!("{name} (vlan): its QoS priority maps are not restored"));
                    }
                    _ => {}
                }
            }
            UpperKind::Vlan { id, protocol, flags }
        }
        ("macvlan", Some(InfoData::MacVlan(infos))) => {
            let (mut mode, mut flags) = (0, 0);
            for info in infos {
                match info {
                    InfoMacVlan::Mode(m) => mode = u32::from(*m),
                    InfoMacVlan::Flags(f) => flags = f.bits(),
                    _ => {}
                }
            }
            if mode == MACVLAN_MODE_SOURCE {
                lost.push(format!("{name} (macvlan): its source MAC list is not restored"));
            }
            UpperKind::Macvlan { mode, flags }
        }
        ("ipvlan", Some(InfoData::IpVlan(infos))) => {
            let (mut mode, mut flags) = (0, 0);
            for info in infos {
                match info {
                    InfoIpVlan::Mode(m) => mode = u16::from(*m),
                    InfoIpVlan::Flags(f) => flags = f.bits(),
                    _ => {}
                }
            }
            UpperKind::Ipvlan { mode, flags }
        }
        _ => return None,
    };
    Some((kind, lost))
}

/// The uppers of kinds restore makes made on link `lower` (at `depth`, the VF being 0), each
/// captured whole; what of them would be lost goes to `lost`.
pub(super) async fn capture(
    handle: &Handle,
    links: &[LinkMessage],
    lower: u32,
    depth: usize,
    lost: &mut Vec<String>,
) -> Result<Vec<Upper>, NetstateError> {
    let mut uppers = Vec::new();
    for link in links {
        let (name, on, _, _) = parts(link);
        if on != Some(lower) || link.header.index == lower {
            continue;
        }
        let Some((kind, partly_lost)) = kind_of(link) else {
            continue;
        };
        if depth + 1 >= MAX_UPPER_DEPTH {
            lost.push(format!(
                "{name} ({}) is stacked {MAX_UPPER_DEPTH} deep: uppers this deep are not restored",
                kind.name()
            ));
            continue;
        }
        lost.extend(partly_lost);
        // Boxed: capture_at captures this upper's own uppers through here.
        let captured = Box::pin(capture_at(handle, link.clone(), links, depth + 1)).await?;
        lost.extend(captured.unrestorable);
        uppers.push(Upper {
            kind,
            state: captured.state,
        });
    }
    Ok(uppers)
}

/// Makes each of the saved uppers again on link `onto` and restores its own state onto it;
/// every failure goes into `report`, named by the upper.
pub(super) async fn restore_uppers(
    handle: &Handle,
    report: &mut RestoreReport,
    saved: &SavedState,
    onto: u32,
    opts: RestoreOptions,
) {
    for upper in &saved.interface.uppers {
        let name = &upper.state.identity.name;
        let index = match make(handle, report, upper, onto).await {
            Ok(index) => index,
            Err(why) => {
                report.failed.push(format!("upper {name}: {why}"));
                continue;
            }
        };
        let own = SavedState {
            captured_unix_ms: saved.captured_unix_ms,
            interface: upper.state.clone(),
        };
        // An ipvlan has its lower's MAC, always: there is none of its own to give back.
        let opts = RestoreOptions {
            restore_mac: !matches!(upper.kind, UpperKind::Ipvlan { .. }),
            ..opts
        };
        // Boxed: restore makes this upper's own uppers through here.
        match Box::pin(restore(handle, &own, index, opts)).await {
            Ok(r) => {
                let on = |items: Vec<Item>| items.into_iter().map(move |i| Item::from(format!("{name}: {i}")));
                report.applied.extend(on(r.applied));
                report.unchanged.extend(on(r.unchanged));
                report
                    .failed
                    .extend(r.failed.into_iter().map(|f| format!("{name}: {f}")));
                report.announced += r.announced;
            }
            Err(e) => report.failed.push(format!("upper {name}: {e}")),
        }
    }
}

/// The index of the upper, made on `onto` unless a link of that name, kind and lower is there
/// already; an error names what holds the name otherwise.
async fn make(handle: &Handle, report: &mut RestoreReport, upper: &Upper, onto: u32) -> Result<u32, String> {
    let name = &upper.state.identity.name;
    let what = format!("upper {name} ({}) on link {onto}", describe(&upper.kind));
    if let Some(existing) = link_named(handle, name).await.map_err(|e| e.to_string())? {
        let (_, lower, kind, _) = parts(&existing);
        let index = existing.header.index;
        return match kind_of(&existing) {
            Some((k, _)) if k == upper.kind && lower == Some(onto) => {
                report.unchanged.push(what.into());
                Ok(index)
            }
            Some((k, _)) if lower == Some(onto) => Err(format!(
                "the link of that name is {}, not {}",
                describe(&k),
                describe(&upper.kind)
            )),
            _ => Err(format!(
                "the name is taken by link {index} ({}{})",
                kind.as_deref().unwrap_or("device"),
                lower.map(|l| format!(" on link {l}")).unwrap_or_default()
            )),
        };
    }
    let mac = upper.state.identity.mac.0.to_vec();
    let message = match upper.kind {
        UpperKind::Vlan { id, protocol, flags } => LinkVlan::new(name, onto, id)
            .protocol(VlanProtocol::from(protocol))
            .flags(
                VlanFlags::from_bits_retain(flags),
                VlanFlags::from_bits_retain(VLAN_FLAGS_KNOWN),
            )
            .address(mac)
            .build(),
        UpperKind::Macvlan { mode, flags } => LinkMacVlan::new(name, onto, MacVlanMode::from(mode))
            .append_info_data(InfoMacVlan::Flags(MacVlanFlags::from_bits_retain(flags)))
            .address(mac)
            .build(),
        UpperKind::Ipvlan { mode, flags } => LinkIpVlan::new(name, onto, IpVlanMode::from(mode))
            .flag(IpVlanFlags::from_bits_retain(flags))
            .build(),
    };
    handle
        .link()
        .add(message)
        .execute()
        .await
        .map_err(|e| errno::describe(&e))?;
    report.applied.push(what.into());
    match link_named(handle, name).await {
        Ok(Some(made)) => Ok(made.header.index),
        Ok(None) => Err("made, then gone".into()),
        Err(e) => Err(e.to_string()),
    }
}

fn describe(kind: &UpperKind) -> String {
    match kind {
        UpperKind::Vlan { id, protocol, .. } => format!("vlan {id} protocol {protocol:#06x}"),
        UpperKind::Macvlan { mode, .. } => format!("macvlan mode {mode}"),
        UpperKind::Ipvlan { mode, .. } => format!("ipvlan mode {mode}"),
    }
}
