//! Policy routing rules that name the VF (iif, oif) or cover one of its addresses (from).
//!
//! The kernel keeps a rule when the link it names goes away, so usually they are all there
//! when the fresh VF takes the name; restore puts back those that were removed meanwhile.
//! A rule holding a selector or action the state does not model is named as not restorable.

use std::net::IpAddr;

use futures::TryStreamExt;
use rtnetlink::packet_route::rule::{RuleAction, RuleAttribute, RuleFlags, RuleMessage};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::{Handle, IpVersion};
use vfmig_protocol::netstate::{network_of, Address, Rule};

use super::bulk::{Bulk, Change, Mode};
use super::capture::netlink;
use super::restore::RestoreReport;
use super::NetstateError;

/// The rules the kernel makes in every namespace: (priority, table).
const DEFAULT_RULES: [(u32, u32); 3] = [(0, 255), (32766, 254), (32767, 253)];

async fn dump(handle: &Handle) -> Result<Vec<RuleMessage>, NetstateError> {
    let mut all = Vec::new();
    for version in [IpVersion::V4, IpVersion::V6] {
        let messages: Vec<RuleMessage> = handle
            .rule()
            .get(version)
            .execute()
            .try_collect()
            .await
            .map_err(netlink("dumping policy rules"))?;
        all.extend(messages);
    }
    Ok(all)
}

/// A rule as the state models it, or what in it the state does not model.
fn rule_from(m: &RuleMessage) -> Result<Rule, String> {
    let h = &m.header;
    let mut rule = Rule {
        ipv6: h.family == AddressFamily::Inet6,
        priority: 0,
        table: u32::from(h.table),
        action: u8::from(h.action),
        source: None,
        destination: None,
        iif: None,
        oif: None,
        fwmark: None,
        fwmask: None,
        tos: h.tos,
        flags: (h.flags & RuleFlags::Invert).bits(),
        suppress_prefix_len: None,
        protocol: 0,
    };
    let mut unknown = Vec::new();
    for attr in &m.attributes {
        match attr {
            RuleAttribute::Source(a) => rule.source = Some((*a, h.src_len)),
            RuleAttribute::Destination(a) => rule.destination = Some((*a, h.dst_len)),
            RuleAttribute::Iifname(n) => rule.iif = Some(n.clone()),
            RuleAttribute::Oifname(n) => rule.oif = Some(n.clone()),
            RuleAttribute::Priority(p) => rule.priority = *p,
            RuleAttribute::Table(t) => rule.table = *t,
            RuleAttribute::FwMark(v) => rule.fwmark = Some(*v),
            RuleAttribute::FwMask(v) => rule.fwmask = Some(*v),
            RuleAttribute::SuppressPrefixLen(v) => rule.suppress_prefix_len = Some(*v),
            RuleAttribute::Protocol(p) => rule.protocol = u8::from(*p),
            other => unknown.push(format!("{other:?}")),
        }
    }
    if h.action == RuleAction::Goto {
        unknown.push("goto".into());
    }
    if unknown.is_empty() {
        Ok(rule)
    } else {
        Err(unknown.join(", "))
    }
}

/// Whether `m` names `link` or covers one of `addresses`, and is not one the kernel made.
fn concerns(m: &RuleMessage, link: &str, addresses: &[Address]) -> bool {
    let (mut priority, mut table) = (0, u32::from(m.header.table));
    let (mut names_link, mut source) = (false, None);
    for attr in &m.attributes {
        match attr {
            RuleAttribute::Iifname(n) | RuleAttribute::Oifname(n) => names_link |= n == link,
            RuleAttribute::Source(a) => source = Some(*a),
            RuleAttribute::Priority(p) => priority = *p,
            RuleAttribute::Table(t) => table = *t,
            _ => {}
        }
    }
    if DEFAULT_RULES.contains(&(priority, table)) && !names_link && source.is_none() {
        return false;
    }
    let covers = |a: IpAddr| source.is_some_and(|s| s.is_ipv4() == a.is_ipv4() && network_of(a, m.header.src_len) == s);
    names_link || addresses.iter().any(|a| covers(a.address))
}

/// The rules that concern `link` with `addresses`; each one the state cannot hold goes to
/// `unrestorable`, named.
pub(super) async fn capture(
    handle: &Handle,
    link: &str,
    addresses: &[Address],
    unrestorable: &mut Vec<String>,
) -> Result<Vec<Rule>, NetstateError> {
    let mut rules = Vec::new();
    for m in dump(handle).await?.iter().filter(|m| concerns(m, link, addresses)) {
        match rule_from(m) {
            Ok(rule) => rules.push(rule),
            Err(what) => unrestorable.push(format!(
                "policy rule {} of {link}: {what} are not restored",
                describe(m)
            )),
        }
    }
    Ok(rules)
}

fn describe(m: &RuleMessage) -> String {
    let priority = m
        .attributes
        .iter()
        .find_map(|a| match a {
            RuleAttribute::Priority(p) => Some(*p),
            _ => None,
        })
        .unwrap_or(0);
    let family = if m.header.family == AddressFamily::Inet6 {
        "IPv6"
    } else {
        "IPv4"
    };
    format!("{family} priority {priority}")
}

fn what(r: &Rule) -> String {
    let mut s = format!(
        "rule {} priority {} table {}",
        if r.ipv6 { "IPv6" } else { "IPv4" },
        r.priority,
        r.table
    );
    for (word, value) in [("iif", &r.iif), ("oif", &r.oif)] {
        if let Some(v) = value {
            s += &format!(" {word} {v}");
        }
    }
    if let Some((a, len)) = r.source {
        s += &format!(" from {a}/{len}");
    }
    s
}

fn message(r: &Rule) -> RuleMessage {
    let mut m = RuleMessage::default();
    let h = &mut m.header;
    h.family = if r.ipv6 {
        AddressFamily::Inet6
    } else {
        AddressFamily::Inet
    };
    h.tos = r.tos;
    h.action = RuleAction::from(r.action);
    h.flags = RuleFlags::from_bits_retain(r.flags);
    // Tables above 255 only fit the attribute.
    h.table = u8::try_from(r.table).unwrap_or(0);
    let a = &mut m.attributes;
    a.push(RuleAttribute::Table(r.table));
    a.push(RuleAttribute::Priority(r.priority));
    if let Some((addr, len)) = r.source {
        m.header.src_len = len;
        a.push(RuleAttribute::Source(addr));
    }
    if let Some((addr, len)) = r.destination {
        m.header.dst_len = len;
        a.push(RuleAttribute::Destination(addr));
    }
    if let Some(n) = &r.iif {
        a.push(RuleAttribute::Iifname(n.clone()));
    }
    if let Some(n) = &r.oif {
        a.push(RuleAttribute::Oifname(n.clone()));
    }
    if let Some(v) = r.fwmark {
        a.push(RuleAttribute::FwMark(v));
    }
    if let Some(v) = r.fwmask {
        a.push(RuleAttribute::FwMask(v));
    }
    if let Some(v) = r.suppress_prefix_len {
        a.push(RuleAttribute::SuppressPrefixLen(v));
    }
    if r.protocol != 0 {
        a.push(RuleAttribute::Protocol(r.protocol.into()));
    }
    m
}

/// Adds each of `want` that no rule in the namespace equals in every field; each failure is
/// an item of `report`.
pub(super) async fn restore(handle: &Handle, bulk: &mut Bulk, want: &[Rule], report: &mut RestoreReport) {
    if want.is_empty() {
        return;
    }
    let have: Vec<Rule> = match dump(handle).await {
        Ok(all) => all.iter().filter_map(|m| rule_from(m).ok()).collect(),
        Err(e) => {
            report.failed.extend(want.iter().map(|r| format!("{}: {e}", what(r))));
            return;
        }
    };
    let mut changes = Vec::new();
    for r in want {
        if have.contains(r) {
            report.unchanged.push(what(r).into());
        } else {
            changes.push(Change {
                what: what(r).into(),
                msg: RouteNetlinkMessage::NewRule(message(r)),
                mode: Mode::Create,
            });
        }
    }
    report.record(bulk.apply(changes).await);
}
