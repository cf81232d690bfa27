//! Writing a saved state onto a fresh link, in the order the kernel needs: the link (name, MTU,
//! MAC, up), addresses, on-link routes, gateway routes, neighbours, then announcements.
//!
//! Restore compares with what the target already has and only sends what differs, so running
//! it twice changes nothing the second time. Every item is attempted; each failure is reported
//! with the kernel's reason, never by stopping at the first. The many small changes (addresses,
//! routes, neighbours) go through [`super::bulk`], many to a datagram, which is where the speed
//! over `ip -batch` comes from; the link itself is set through rtnetlink's handle.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage, CacheInfo};
use rtnetlink::packet_route::link::LinkFlags;
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::route::{RouteAttribute, RouteFlags, RouteMessage};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::{Handle, LinkUnspec};
use vfmig_protocol::netstate::consts::*;
use vfmig_protocol::netstate::{Address, InterfaceState, Neighbour, Route, SavedState};
use vfmig_protocol::MacAddr;

use super::bulk::{Bulk, Change, Mode};
use super::capture::{all_links, capture_index};
use super::rename::make_room;
use super::{announce, errno, metrics, multipath, ports, rules, sysctls, NetstateError};

#[derive(Debug, Clone, Copy, Default)]
pub struct RestoreOptions {
    /// Also give the link the saved MAC (when the new VF was not provisioned with it).
    pub restore_mac: bool,
    /// Send gratuitous ARP and unsolicited neighbour advertisements for the restored addresses.
    pub announce: bool,
    /// Leave the link's name, MTU and MAC as they are (a standby taking over the addresses).
    pub keep_link: bool,
    /// Wait for carrier before moving routes onto the link: they are taken from a standby
    /// that still carries traffic, which a link without carrier would drop.
    pub carrier_first: bool,
}

/// One item of a report, put into words only when it is read: a restore of 15,000 routes and
/// neighbours would otherwise format 15,000 names that nobody reads when all goes well (a
/// tenth of the restore's time, measured).
#[derive(Clone, PartialEq, Eq)]
pub enum Item {
    Text(String),
    Address(IpAddr, u8),
    Route(Box<Route>),
    Neighbour {
        address: IpAddr,
        lladdr: MacAddr,
        after_carrier: bool,
    },
}

impl fmt::Display for Item {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Text(t) => f.write_str(t),
            Self::Address(a, len) => write!(f, "address {a}/{len}"),
            Self::Route(r) => describe_route(f, r),
            Self::Neighbour {
                address,
                lladdr,
                after_carrier,
            } => {
                write!(f, "neighbour {address} lladdr {lladdr}")?;
                if *after_carrier {
                    f.write_str(" (after carrier)")?;
                }
                Ok(())
            }
        }
    }
}

impl fmt::Debug for Item {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?}", self = self.to_string())
    }
}

impl From<String> for Item {
    fn from(text: String) -> Self {
        Self::Text(text)
    }
}

/// What restore did, item by item.
#[derive(Debug, Clone, Default)]
pub struct RestoreReport {
    pub applied: Vec<Item>,
    pub unchanged: Vec<Item>,
    /// `item: reason`, one per item that could not be applied.
    pub failed: Vec<String>,
    /// Addresses announced on the segment.
    pub announced: usize,
    pub elapsed: Duration,
}

impl RestoreReport {
    pub(super) fn record(&mut self, outcomes: Vec<(Item, Result<(), std::io::Error>)>) {
        for (what, outcome) in outcomes {
            match outcome {
                Ok(()) => self.applied.push(what),
                Err(e) => self.failed.push(format!("{what}: {e}")),
            }
        }
    }

    pub(super) async fn run_link(
        &mut self,
        what: impl Into<Item>,
        request: impl std::future::Future<Output = Result<(), rtnetlink::Error>>,
    ) {
        let what = what.into();
        match request.await {
            Ok(()) => self.applied.push(what),
            Err(e) => self.failed.push(format!("{what}: {}", errno::describe(&e))),
        }
    }
}

fn family(ip: IpAddr) -> AddressFamily {
    if ip.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

/// Restores `saved` onto the link with index `onto`. Fails as a whole only when the target
/// cannot be read; everything else is in the report.
pub async fn restore(
    handle: &Handle,
    saved: &SavedState,
    onto: u32,
    opts: RestoreOptions,
) -> Result<RestoreReport, NetstateError> {
    let started = Instant::now();
    let mut report = RestoreReport::default();
    let want = &saved.interface;
    let current = capture_index(handle, onto).await?.state;
    let mut bulk = Bulk::open().map_err(NetstateError::Socket)?;

    let mut master = None;
    let link = if opts.keep_link {
        LinkResult {
            name: current.identity.name.clone(),
            up: current.admin_up,
            mac: current.identity.mac,
        }
    } else {
        let mut link = restore_link(handle, &mut report, saved, &current, onto, opts).await;
        // After the rename: a bond takes a port named as its `primary` as primary.
        let (want, have) = (want.port.as_ref(), current.port.as_ref());
        let joined = ports::restore(handle, &mut report, want, have, onto, &link.name, link.up).await;
        link.up &= !joined.took_down;
        master = joined.master;
        link
    };
    let name = link.name;
    // After the MTU (ipv6/mtu must fit it), before the addresses (accept_ra, autoconf and
    // disable_ipv6 act on them); a standby's own settings are not the VF's.
    if !opts.keep_link {
        sysctls::restore(&name, &want.sysctls, &mut report);
    }
    // Addresses that are not on the link after all: never announced as if they were.
    let mut missing = HashSet::new();
    {
        // The addresses are moving with their owner, not newly claimed: duplicate address
        // detection would only keep IPv6 unusable for a second (and refuse routes that use
        // them as source). Suppressed for the restore, put back afterwards.
        let _dad = DadSuppressed::on(&name);
        if want.admin_up && !link.up {
            let up = handle
                .link()
                .set(LinkUnspec::new_with_index(onto).up().build())
                .execute();
            report.run_link(format!("link {name} up"), up).await;
        }
        let elapsed_secs = elapsed_since(saved.captured_unix_ms);
        let have: HashMap<_, _> = current
            .addresses
            .iter()
            .map(|a| ((a.address, a.prefix_len), a))
            .collect();
        let (mut changes, mut sent) = (Vec::new(), Vec::new());
        for a in &want.addresses {
            let what = Item::Address(a.address, a.prefix_len);
            let existing = have.get(&(a.address, a.prefix_len));
            if existing.is_some_and(|e| e.config() == a.config()) {
                report.unchanged.push(what);
                continue;
            }
            match address_message(onto, a, elapsed_secs) {
                Ok(msg) => {
                    changes.push(Change {
                        what,
                        msg,
                        mode: if existing.is_some() {
                            Mode::Replace
                        } else {
                            Mode::Create
                        },
                    });
                    sent.push(a.address);
                }
                Err(why) => {
                    report.failed.push(format!("{what}: {why}"));
                    missing.insert(a.address);
                }
            }
        }
        let outcomes = bulk.apply(changes).await;
        missing.extend(
            sent.into_iter()
                .zip(&outcomes)
                .filter(|(_, (_, o))| o.is_err())
                .map(|(a, _)| a),
        );
        report.record(outcomes);
    }

    if opts.carrier_first && want.admin_up && !wait_for_carrier(handle, onto).await {
        report
            .failed
            .push(format!("{name} has no carrier after {CARRIER_WAIT:?}"));
    }
    let have: HashSet<&Route> = current.routes.iter().collect();
    let mut sharing: HashMap<_, usize> = HashMap::new();
    for r in &want.routes {
        *sharing.entry(r.key()).or_default() += 1;
    }
    let legs = leg_links(handle, &want.routes).await;
    for gateway_routes in [false, true] {
        let mut changes = Vec::new();
        // A multipath route's legs have gateways, which on-link routes may be needed to reach.
        let has_gateway = |r: &&Route| r.gateway.is_some() || !r.nexthops.is_empty();
        for r in want.routes.iter().filter(|r| has_gateway(r) == gateway_routes) {
            let what = Item::Route(Box::new(r.clone()));
            if have.contains(r) {
                report.unchanged.push(what);
                continue;
            }
            // Replace, not add: the same route through another link (a standby carrying it
            // for the VF gap) moves here in one step instead of failing as a duplicate. Routes
            // that share their key are appended, each beside the others, as they were made.
            let mode = if sharing[&r.key()] > 1 {
                Mode::Append
            } else {
                Mode::Replace
            };
            match route_message(onto, r, &legs) {
                Ok(msg) => changes.push(Change { what, msg, mode }),
                Err(why) => report.failed.push(format!("{what}: {why}")),
            }
        }
        report.record(bulk.apply(changes).await);
    }
    if !opts.keep_link {
        rules::restore(handle, &mut bulk, &want.rules, &mut report).await;
    }

    let have: HashMap<_, _> = current.neighbours.iter().map(|n| (n.address, n)).collect();
    let mut changes = Vec::new();
    for n in &want.neighbours {
        let what = Item::Neighbour {
            address: n.address,
            lladdr: n.lladdr,
            after_carrier: false,
        };
        if have.get(&n.address).is_some_and(|e| e.restore_key() == n.restore_key()) {
            report.unchanged.push(what);
            continue;
        }
        changes.push(Change {
            what,
            msg: neighbour_message(onto, n),
            mode: Mode::Replace,
        });
    }
    report.record(bulk.apply(changes).await);

    if opts.announce && want.admin_up {
        let addresses: Vec<IpAddr> = want
            .addresses
            .iter()
            .map(|a| a.address)
            .filter(|a| !missing.contains(a))
            .collect();
        if wait_for_carrier(handle, onto).await {
            // A hot-plugged NIC reports carrier off, then on, a moment after it is up, and the
            // kernel flushes every neighbour but permanent ones on a change without carrier:
            // entries restored before that are gone (the fault-injection test caught the
            // peer's learned entry missing). With carrier up, they are put back.
            let again = want
                .neighbours
                .iter()
                .filter(|n| !n.is_permanent())
                .map(|n| Change {
                    what: Item::Neighbour {
                        address: n.address,
                        lladdr: n.lladdr,
                        after_carrier: true,
                    },
                    msg: neighbour_message(onto, n),
                    mode: Mode::Replace,
                })
                .collect();
            for (what, outcome) in bulk.apply(again).await {
                if let Err(e) = outcome {
                    report.failed.push(format!("{what}: {e}"));
                }
            }
            // A port's addresses are its master's, announced there.
            let master = match master {
                Some(index) => match ports::master_addresses(handle, index).await {
                    Ok((mac, addresses)) => Some((index, mac, addresses)),
                    Err(e) => {
                        report.failed.push(format!("announce the master's addresses: {e}"));
                        None
                    }
                },
                None => None,
            };
            let mut failures = Vec::new();
            for round in 0..ANNOUNCE_ROUNDS {
                if round > 0 {
                    tokio::time::sleep(ANNOUNCE_SPACING).await;
                }
                failures = announce(onto, link.mac, &addresses);
                if let Some((index, mac, addresses)) = &master {
                    failures.extend(announce(*index, *mac, addresses));
                }
            }
            let on_master = master.map_or(0, |(_, _, a)| a.len());
            report.announced = addresses.len() + on_master - failures.len();
            report
                .failed
                .extend(failures.into_iter().map(|(ip, e)| format!("announce {ip}: {e}")));
        } else {
            report.failed.push(format!(
                "announce: {name} has no carrier after {CARRIER_WAIT:?}; peers were not told"
            ));
        }
    }
    // Uppers belong to the VF's own link: a standby keeping its link gets none of them.
    if !opts.keep_link {
        super::uppers::restore_uppers(handle, &mut report, saved, onto, opts).await;
    }
    report.elapsed = started.elapsed();
    Ok(report)
}

/// Frames sent before the link has carrier are dropped, and a hot-plugged NIC gets carrier a
/// moment after it is up (measured under TCG: 0.5–1.5 s for an e1000e), so announcements wait
/// for it, within this bound.
const CARRIER_WAIT: Duration = Duration::from_secs(5);
/// Announcements are repeated, as `arping -U` and the kernel's own unsolicited NAs are: one
/// frame can be lost while a switch or bridge is still learning the new port.
const ANNOUNCE_ROUNDS: usize = 3;
const ANNOUNCE_SPACING: Duration = Duration::from_millis(100);

/// Waits until the link has carrier (IFF_LOWER_UP), within [`CARRIER_WAIT`].
async fn wait_for_carrier(handle: &Handle, index: u32) -> bool {
    let until = Instant::now() + CARRIER_WAIT;
    loop {
        let link = handle.link().get().match_index(index).execute().try_next().await;
        if let Ok(Some(link)) = link {
            if link.header.flags.contains(LinkFlags::LowerUp) {
                return true;
            }
        }
        if Instant::now() > until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What the link is after [`restore_link`].
struct LinkResult {
    name: String,
    /// Still up: it was up and was not taken down to be renamed or re-addressed.
    up: bool,
    mac: MacAddr,
}

/// Sets name, MTU and MAC in one request (the link must be down to be renamed or re-addressed).
async fn restore_link(
    handle: &Handle,
    report: &mut RestoreReport,
    saved: &SavedState,
    current: &InterfaceState,
    onto: u32,
    opts: RestoreOptions,
) -> LinkResult {
    let want = &saved.interface.identity;
    let mut name = current.identity.name.clone();
    let rename = name != want.name && make_room(handle, report, &want.name, onto).await;
    let remac = opts.restore_mac && current.identity.mac != want.mac;
    let remtu = current.mtu != saved.interface.mtu;
    if !(rename || remac || remtu) {
        report.unchanged.push(format!("link {name}").into());
        return LinkResult {
            name,
            up: current.admin_up,
            mac: current.identity.mac,
        };
    }
    let mut msg = LinkUnspec::new_with_index(onto);
    let mut what = Vec::new();
    if rename || remac {
        msg = msg.down();
    }
    if rename {
        msg = msg.name(want.name.clone());
        what.push(format!("name {}", want.name));
    }
    if remtu {
        msg = msg.mtu(saved.interface.mtu);
        what.push(format!("mtu {}", saved.interface.mtu));
    }
    if remac {
        msg = msg.address(want.mac.0.to_vec());
        what.push(format!("address {}", want.mac));
    }
    let request = handle.link().set(msg.build()).execute();
    let before = report.failed.len();
    report
        .run_link(format!("link {name}: {}", what.join(", ")), request)
        .await;
    let done = report.failed.len() == before;
    if rename && done {
        name = want.name.clone();
    }
    LinkResult {
        name,
        up: current.admin_up && !(done && (rename || remac)),
        mac: if remac && done { want.mac } else { current.identity.mac },
    }
}

fn elapsed_since(captured_unix_ms: u64) -> u32 {
    u32::try_from(super::unix_ms_now().saturating_sub(captured_unix_ms) / 1000).unwrap_or(u32::MAX)
}

fn address_message(onto: u32, a: &Address, elapsed_secs: u32) -> Result<RouteNetlinkMessage, &'static str> {
    let valid = match a.valid_lft {
        None => u32::MAX,
        Some(v) if v > elapsed_secs => v - elapsed_secs,
        Some(_) => return Err("its valid lifetime expired since capture"),
    };
    let preferred = a.preferred_lft.map_or(u32::MAX, |p| p.saturating_sub(elapsed_secs));
    let mut m = AddressMessage::default();
    m.header.family = family(a.address);
    m.header.prefix_len = a.prefix_len;
    m.header.index = onto;
    m.header.scope = a.scope.into();
    m.header.flags = AddressHeaderFlags::from_bits_truncate(a.flags as u8);
    match (a.address, a.peer) {
        (IpAddr::V6(_), None) => m.attributes.push(AddressAttribute::Address(a.address)),
        (_, peer) => {
            m.attributes.push(AddressAttribute::Local(a.address));
            m.attributes.push(AddressAttribute::Address(peer.unwrap_or(a.address)));
        }
    }
    if let Some(b) = a.broadcast {
        m.attributes.push(AddressAttribute::Broadcast(b));
    }
    if let Some(l) = &a.label {
        m.attributes.push(AddressAttribute::Label(l.clone()));
    }
    m.attributes
        .push(AddressAttribute::Flags(AddressFlags::from_bits_retain(a.flags)));
    if let Some(p) = a.route_metric {
        m.attributes.push(AddressAttribute::RoutePriority(p));
    }
    let mut lifetimes = CacheInfo::default();
    lifetimes.ifa_preferred = preferred;
    lifetimes.ifa_valid = valid;
    m.attributes.push(AddressAttribute::CacheInfo(lifetimes));
    Ok(RouteNetlinkMessage::NewAddress(m))
}

fn neighbour_message(onto: u32, n: &Neighbour) -> RouteNetlinkMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = family(n.address);
    m.header.ifindex = onto;
    m.header.state = NeighbourState::from(n.state);
    if n.router {
        m.header.flags = NeighbourFlags::Router;
    }
    m.header.kind = RTN_UNICAST.into();
    m.attributes.push(NeighbourAttribute::Destination(match n.address {
        IpAddr::V4(v4) => NeighbourAddress::Inet(v4),
        IpAddr::V6(v6) => NeighbourAddress::Inet6(v6),
    }));
    m.attributes
        .push(NeighbourAttribute::LinkLayerAddress(n.lladdr.0.to_vec()));
    RouteNetlinkMessage::NewNeighbour(m)
}

/// The links the legs of `routes` leave by, by name, as they are now; what cannot be read
/// shows as a gone link in each route that needs it.
async fn leg_links(handle: &Handle, routes: &[Route]) -> HashMap<String, u32> {
    if !routes.iter().flat_map(|r| &r.nexthops).any(|n| n.device.is_some()) {
        return HashMap::new();
    }
    match all_links(handle).await {
        Ok(links) => super::capture::link_names(&links)
            .into_iter()
            .map(|(index, name)| (name, index))
            .collect(),
        Err(e) => {
            tracing::warn!(error = %e, "could not list links for multipath routes");
            HashMap::new()
        }
    }
}

fn describe_route(f: &mut fmt::Formatter<'_>, r: &Route) -> fmt::Result {
    write!(f, "route {}/{}", r.destination, r.prefix_len)?;
    if let Some(g) = r.gateway {
        write!(f, " via {g}")?;
    }
    for n in &r.nexthops {
        f.write_str(" nexthop")?;
        if let Some(g) = n.gateway {
            write!(f, " via {g}")?;
        }
        write!(f, " dev {}", n.device.as_deref().unwrap_or("(this link)"))?;
        write!(f, " weight {}", n.weight)?;
    }
    if let Some(m) = r.metric {
        write!(f, " metric {m}")?;
    }
    write!(f, " table {}", r.table)
}

fn route_message(onto: u32, r: &Route, legs: &HashMap<String, u32>) -> Result<RouteNetlinkMessage, String> {
    let mut m = RouteMessage::default();
    m.header.address_family = family(r.destination);
    m.header.destination_prefix_length = r.prefix_len;
    m.header.tos = r.tos;
    // Tables above 255 only fit the attribute; the header then says RT_TABLE_UNSPEC.
    m.header.table = u8::try_from(r.table).unwrap_or(RT_TABLE_UNSPEC as u8);
    m.header.protocol = r.protocol.into();
    m.header.scope = r.scope.into();
    m.header.kind = r.kind.into();
    if r.onlink {
        m.header.flags = RouteFlags::Onlink;
    }
    m.attributes.push(RouteAttribute::Table(r.table));
    if r.prefix_len > 0 {
        m.attributes.push(RouteAttribute::Destination(r.destination.into()));
    }
    if r.nexthops.is_empty() {
        m.attributes.push(RouteAttribute::Oif(onto));
    } else {
        m.attributes
            .push(RouteAttribute::MultiPath(multipath::to_kernel(r, onto, legs)?));
    }
    if let Some(g) = r.gateway {
        m.attributes.push(RouteAttribute::Gateway(g.into()));
    }
    if let Some(p) = r.metric {
        m.attributes.push(RouteAttribute::Priority(p));
    }
    if let Some(s) = r.source {
        m.attributes.push(RouteAttribute::PrefSource(s.into()));
    }
    let metrics = metrics::to_kernel(r);
    if !metrics.is_empty() {
        m.attributes.push(RouteAttribute::Metrics(metrics));
    }
    Ok(RouteNetlinkMessage::NewRoute(m))
}

/// Turns IPv6 duplicate address detection off on one link until dropped, then restores the
/// link's previous setting. Without IPv6 on the link there is nothing to do.
struct DadSuppressed {
    path: std::path::PathBuf,
    previous: Option<String>,
}

impl DadSuppressed {
    fn on(link: &str) -> Self {
        // /proc/sys/net is per network namespace of the calling thread: plain (blocking) file
        // I/O on this thread, never a thread pool that may live elsewhere. Two tiny writes.
        let path = std::path::Path::new("/proc/sys/net/ipv6/conf")
            .join(link)
            .join("accept_dad");
        let previous = std::fs::read_to_string(&path).ok();
        if previous.is_some() {
            if let Err(e) = std::fs::write(&path, "0") {
                tracing::warn!(link, error = %e, "could not suppress duplicate address detection");
            }
        }
        Self { path, previous }
    }
}

impl Drop for DadSuppressed {
    fn drop(&mut self) {
        if let Some(previous) = &self.previous {
            if let Err(e) = std::fs::write(&self.path, previous.trim()) {
                tracing::warn!(path = %self.path.display(), error = %e, "could not restore accept_dad");
            }
        }
    }
}
