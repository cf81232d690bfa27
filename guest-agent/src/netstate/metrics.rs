//! A route's metrics (RTA_METRICS) between netlink-packet-route's typed list and the saved
//! state's map of RTAX_* kind to value, both ways, so a route comes back with its mtu, advmss,
//! window and the rest.

use std::collections::BTreeMap;

use rtnetlink::packet_core::Nla;
use rtnetlink::packet_route::route::RouteMetric;
use vfmig_protocol::netstate::Route;

/// What a route's metrics become in the state, and the kinds this build cannot carry.
pub(super) struct Metrics {
    pub numbers: BTreeMap<u16, u32>,
    pub congestion_control: Option<String>,
    pub unknown: Vec<u16>,
}

pub(super) fn from_kernel(list: &[RouteMetric]) -> Metrics {
    let mut m = Metrics {
        numbers: BTreeMap::new(),
        congestion_control: None,
        unknown: Vec::new(),
    };
    for metric in list {
        match metric {
            RouteMetric::CcAlgo(name) => m.congestion_control = Some(name.clone()),
            RouteMetric::Other(nla) => m.unknown.push(nla.kind()),
            known => {
                if let Some(value) = number(known) {
                    m.numbers.insert(known.kind(), value);
                }
            }
        }
    }
    m
}

fn number(m: &RouteMetric) -> Option<u32> {
    use RouteMetric::*;
    match m {
        Lock(v) | Mtu(v) | Window(v) | Rtt(v) | RttVar(v) | SsThresh(v) | Cwnd(v) | Advmss(v) | Reordering(v)
        | Hoplimit(v) | InitCwnd(v) | Features(v) | RtoMin(v) | InitRwnd(v) | QuickAck(v) | FastopenNoCookie(v) => {
            Some(*v)
        }
        _ => None,
    }
}

/// The metrics to send with `route`; empty when it has none. An opened state holds only
/// kinds [`metric`] knows (its check refuses others).
pub(super) fn to_kernel(route: &Route) -> Vec<RouteMetric> {
    let mut out: Vec<RouteMetric> = route
        .metrics
        .iter()
        .filter_map(|(kind, value)| metric(*kind, *value))
        .collect();
    if let Some(name) = &route.congestion_control {
        out.push(RouteMetric::CcAlgo(name.clone()));
    }
    out
}

/// The numeric metric of RTAX_* `kind`.
fn metric(kind: u16, v: u32) -> Option<RouteMetric> {
    use RouteMetric::*;
    Some(match kind {
        1 => Lock(v),
        2 => Mtu(v),
        3 => Window(v),
        4 => Rtt(v),
        5 => RttVar(v),
        6 => SsThresh(v),
        7 => Cwnd(v),
        8 => Advmss(v),
        9 => Reordering(v),
        10 => Hoplimit(v),
        11 => InitCwnd(v),
        12 => Features(v),
        13 => RtoMin(v),
        14 => InitRwnd(v),
        15 => QuickAck(v),
        17 => FastopenNoCookie(v),
        _ => return None,
    })
}
