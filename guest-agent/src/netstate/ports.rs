//! The bond or bridge the VF is a port of. The master stays while the VF is away; the fresh VF
//! rejoins it by name, with the port options it had (a bond's queue id and priority, a bridge
//! port's cost, priority and flags).
//!
//! A master of another kind (team, vrf, openvswitch, …) is named as state restore would lose. A
//! `net_failover` master is the exception: the kernel enslaves the fresh VF to it by its MAC by
//! itself, which is that device's whole purpose.

use std::net::IpAddr;

use rtnetlink::packet_route::link::{
    BridgeMulticastRouterType, InfoBondPort, InfoBridge, InfoBridgePort, InfoData, InfoPortData, InfoPortKind,
    LinkAttribute, LinkInfo, LinkMessage,
};
use rtnetlink::{Handle, LinkUnspec};
use vfmig_protocol::netstate::{Port, PortOptions};
use vfmig_protocol::MacAddr;

use super::capture::{capture_index, link_named, link_numbered};
use super::restore::RestoreReport;
use super::NetstateError;

/// What a master link is, as far as its ports are concerned.
struct Master {
    index: u32,
    name: String,
    kind: Option<String>,
    /// A bridge that filters by VLAN: each port's VLAN membership is its own, and not saved.
    vlan_filtering: bool,
}

fn master_of(m: &LinkMessage) -> Master {
    let mut master = Master {
        index: m.header.index,
        name: String::new(),
        kind: None,
        vlan_filtering: false,
    };
    for attr in &m.attributes {
        match attr {
            LinkAttribute::IfName(n) => master.name = n.clone(),
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    match info {
                        LinkInfo::Kind(k) => master.kind = Some(k.to_string()),
                        LinkInfo::Data(InfoData::Bridge(options)) => {
                            master.vlan_filtering = options.contains(&InfoBridge::VlanFiltering(true))
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    master
}

/// The port membership of `vf` (its own link message), and what of it restore would not put
/// back, one line each.
pub(super) async fn capture(handle: &Handle, vf: &LinkMessage) -> Result<(Option<Port>, Vec<String>), NetstateError> {
    let (mut name, mut controller, mut data) = ("", None, None);
    for attr in &vf.attributes {
        match attr {
            LinkAttribute::IfName(n) => name = n,
            LinkAttribute::Controller(i) => controller = Some(*i),
            LinkAttribute::LinkInfo(infos) => {
                data = infos.iter().find_map(|i| match i {
                    LinkInfo::PortData(d) => Some(d),
                    _ => None,
                })
            }
            _ => {}
        }
    }
    let Some(controller) = controller else {
        return Ok((None, Vec::new()));
    };
    // A master removed since the VF was read: the VF is a port of nothing now.
    let Some(master) = link_numbered(handle, controller).await? else {
        return Ok((None, Vec::new()));
    };
    let master = master_of(&master);
    let kind = master.kind.as_deref().unwrap_or("device");
    let mut lost = Vec::new();
    let options = match (kind, data) {
        ("net_failover", _) => return Ok((None, lost)),
        ("bond", Some(InfoPortData::BondPort(d))) => bond_options(d),
        ("bridge", Some(InfoPortData::BridgePort(d))) => {
            if master.vlan_filtering {
                lost.push(format!(
                    "{name} is a port of {}, which filters by VLAN: the port's VLAN membership is not restored",
                    master.name
                ));
            }
            bridge_options(name, d, &mut lost)
        }
        ("bond" | "bridge", _) => {
            lost.push(format!(
                "{name} is a port of {} ({kind}) whose port options the kernel did not report: the fresh VF would not rejoin it",
                master.name
            ));
            return Ok((None, lost));
        }
        _ => {
            lost.push(format!(
                "{name} is a port of {} ({kind}): the fresh VF would not rejoin it",
                master.name
            ));
            return Ok((None, lost));
        }
    };
    let port = Port {
        master: master.name,
        options,
    };
    Ok((Some(port), lost))
}

fn bond_options(data: &[InfoBondPort]) -> PortOptions {
    let (mut queue_id, mut prio) = (0, None);
    for d in data {
        match d {
            InfoBondPort::QueueId(q) => queue_id = *q,
            InfoBondPort::Prio(p) => prio = Some(*p),
            _ => {}
        }
    }
    PortOptions::Bond { queue_id, prio }
}

/// The options saved for a bridge port; any other option that is not at the kernel's default
/// is named in `lost`.
fn bridge_options(name: &str, data: &[InfoBridgePort], lost: &mut Vec<String>) -> PortOptions {
    // The kernel's defaults for a new port (cost follows the link's speed; see below).
    let (mut cost, mut priority, mut learning, mut unicast_flood) = (0, 32, true, true);
    let (mut hairpin, mut guard, mut protect, mut fast_leave) = (false, false, false, false);
    for d in data {
        use InfoBridgePort as B;
        match d {
            B::Cost(c) => cost = *c,
            B::Priority(p) => priority = *p,
            B::Learning(b) => learning = *b,
            B::UnicastFlood(b) => unicast_flood = *b,
            B::HairpinMode(b) => hairpin = *b,
            B::Guard(b) => guard = *b,
            B::Protect(b) => protect = *b,
            B::FastLeave(b) => fast_leave = *b,
            other => {
                if let Some(option) = unsaved(other) {
                    lost.push(format!("{name}'s bridge port option {option} is not restored"));
                }
            }
        }
    }
    // The cost is always set on restore: the fresh VF's own (from its speed) may differ.
    PortOptions::Bridge {
        cost,
        priority,
        learning,
        unicast_flood,
        hairpin,
        guard,
        protect,
        fast_leave,
    }
}

/// A bridge port option the state does not carry, when it is not at the kernel's default.
fn unsaved(option: &InfoBridgePort) -> Option<&'static str> {
    use InfoBridgePort as B;
    match option {
        B::MulticastFlood(false) => Some("mcast_flood off"),
        B::BroadcastFlood(false) => Some("bcast_flood off"),
        B::MulticastToUnicast(true) => Some("mcast_to_unicast on"),
        B::ProxyARP(true) => Some("proxy_arp on"),
        B::ProxyARPWifi(true) => Some("proxy_arp_wifi on"),
        B::VlanTunnel(true) => Some("vlan_tunnel on"),
        B::NeighSupress(true) => Some("neigh_suppress on"),
        B::NeighVlanSuppress(true) => Some("neigh_vlan_suppress on"),
        B::Isolated(true) => Some("isolated on"),
        B::Locked(true) => Some("locked on"),
        B::Mab(true) => Some("mab on"),
        B::GroupFwdMask(m) if *m != 0 => Some("group_fwd_mask"),
        B::BackupPort(_) => Some("backup_port"),
        B::BackupNextHopId(n) if *n != 0 => Some("backup_nhid"),
        B::MulticastRouter(r) if *r != BridgeMulticastRouterType::TempQuery => Some("mcast_router"),
        B::MulticastMaxGroups(n) if *n != 0 => Some("mcast_max_groups"),
        _ => None,
    }
}

fn kind_of(options: &PortOptions) -> &'static str {
    match options {
        PortOptions::Bond { .. } => "bond",
        PortOptions::Bridge { .. } => "bridge",
    }
}

/// The request that sets `options` on port `onto`. Apart from setting the master: the kernel
/// applies port options through the master the link has when the request arrives.
fn options_message(onto: u32, options: &PortOptions) -> LinkMessage {
    let (kind, data) = match *options {
        PortOptions::Bond { queue_id, prio } => {
            let mut d = vec![InfoBondPort::QueueId(queue_id)];
            d.extend(prio.map(InfoBondPort::Prio));
            (InfoPortKind::Bond, InfoPortData::BondPort(d))
        }
        PortOptions::Bridge {
            cost,
            priority,
            learning,
            unicast_flood,
            hairpin,
            guard,
            protect,
            fast_leave,
        } => (
            InfoPortKind::Bridge,
            InfoPortData::BridgePort(vec![
                InfoBridgePort::Cost(cost),
                InfoBridgePort::Priority(priority),
                InfoBridgePort::Learning(learning),
                InfoBridgePort::UnicastFlood(unicast_flood),
                InfoBridgePort::HairpinMode(hairpin),
                InfoBridgePort::Guard(guard),
                InfoBridgePort::Protect(protect),
                InfoBridgePort::FastLeave(fast_leave),
            ]),
        ),
    };
    LinkUnspec::new_with_index(onto)
        .set_port_kind(kind)
        .set_port_data(data)
        .build()
}

/// What [`restore`] did that the rest of the restore needs.
#[derive(Default)]
pub(super) struct Rejoined {
    /// The link was taken down to join: a bond takes only a link that is down ("Device can
    /// not be enslaved while up"). It brings the port up itself, but the admin state is the
    /// caller's to restore.
    pub took_down: bool,
    /// The master the link is a port of now, as saved: its addresses are announced on it.
    pub master: Option<u32>,
}

/// Makes link `onto` (named `name`, `up` or not) a port of the saved master with the saved
/// options. `have` is its membership now.
pub(super) async fn restore(
    handle: &Handle,
    report: &mut RestoreReport,
    want: Option<&Port>,
    have: Option<&Port>,
    onto: u32,
    name: &str,
    up: bool,
) -> Rejoined {
    let mut done = Rejoined::default();
    // A fresh VF that something else made a port of is left as it is; the comparison after
    // the restore names the difference.
    let Some(want) = want else { return done };
    let what = format!("{name} port of {}", want.master);
    let saved_kind = kind_of(&want.options);
    let master = match link_named(handle, &want.master).await {
        Ok(Some(m)) => master_of(&m),
        Ok(None) => {
            report
                .failed
                .push(format!("{what}: no {saved_kind} {} any more", want.master));
            return done;
        }
        Err(e) => {
            report.failed.push(format!("{what}: {e}"));
            return done;
        }
    };
    if master.kind.as_deref() != Some(saved_kind) {
        let now = master.kind.as_deref().unwrap_or("device");
        report.failed.push(format!(
            "{what}: {} is a {now} now, saved as a {saved_kind}",
            want.master
        ));
        return done;
    }
    if have == Some(want) {
        report.unchanged.push(what.into());
        done.master = Some(master.index);
        return done;
    }
    if have.is_none_or(|h| h.master != want.master) {
        if saved_kind == "bond" && up {
            let down = handle.link().set(LinkUnspec::new_with_index(onto).down().build());
            if !run(
                report,
                format!("link {name} down to join bond {}", want.master),
                down.execute(),
            )
            .await
            {
                return done;
            }
            done.took_down = true;
        }
        let join = handle
            .link()
            .set(LinkUnspec::new_with_index(onto).controller(master.index).build());
        if !run(report, format!("{what}: master"), join.execute()).await {
            return done;
        }
    }
    done.master = Some(master.index);
    // RTM_NEWLINK: RTM_SETLINK ignores port options without a word.
    let options = handle.link().set_port(options_message(onto, &want.options));
    run(report, format!("{what}: options {:?}", want.options), options.execute()).await;
    done
}

/// Runs one link request into the report; whether it went through.
async fn run(
    report: &mut RestoreReport,
    what: String,
    request: impl std::future::Future<Output = Result<(), rtnetlink::Error>>,
) -> bool {
    let before = report.failed.len();
    report.run_link(what, request).await;
    report.failed.len() == before
}

/// The MAC and the addresses of master `index`, to announce: a port has no addresses of its
/// own, its master's are what peers and switches must find through the fresh VF (a bridge
/// floods the announcement out of it; a bond sends it out of its active port).
pub(super) async fn master_addresses(handle: &Handle, index: u32) -> Result<(MacAddr, Vec<IpAddr>), NetstateError> {
    let master = capture_index(handle, index).await?.state;
    let addresses = master.addresses.iter().map(|a| a.address).collect();
    Ok((master.identity.mac, addresses))
}
