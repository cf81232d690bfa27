//! What differs between a saved state and an interface after a restore.

use std::collections::BTreeMap;

use super::InterfaceState;

/// Differences in what restore sets: name, MTU, admin state, addresses (lifetimes aside, as
/// they count down), routes, and neighbours (address, permanence, router flag; a dynamic
/// entry's exact state ages by itself). A fresh VF legitimately has another MAC, ifindex,
/// driver and PCI identity; those are not compared.
pub fn differences(saved: &InterfaceState, now: &InterfaceState) -> Vec<String> {
    let mut out = Vec::new();
    if saved.identity.name != now.identity.name {
        out.push(format!("name is {}, saved {}", now.identity.name, saved.identity.name));
    }
    if saved.mtu != now.mtu {
        out.push(format!("mtu is {}, saved {}", now.mtu, saved.mtu));
    }
    if saved.admin_up != now.admin_up {
        out.push(format!(
            "admin state is {}, saved {}",
            up(now.admin_up),
            up(saved.admin_up)
        ));
    }
    diff(
        &mut out,
        "address",
        saved
            .addresses
            .iter()
            .map(|a| (format!("{}/{}", a.address, a.prefix_len), a.config())),
        now.addresses
            .iter()
            .map(|a| (format!("{}/{}", a.address, a.prefix_len), a.config())),
    );
    diff(
        &mut out,
        "route",
        saved.routes.iter().map(|r| {
            (
                format!("{}/{} table {}", r.destination, r.prefix_len, r.table),
                r.clone(),
            )
        }),
        now.routes.iter().map(|r| {
            (
                format!("{}/{} table {}", r.destination, r.prefix_len, r.table),
                r.clone(),
            )
        }),
    );
    diff(
        &mut out,
        "neighbour",
        saved
            .neighbours
            .iter()
            .map(|n| (n.address.to_string(), n.restore_key())),
        now.neighbours.iter().map(|n| (n.address.to_string(), n.restore_key())),
    );
    if saved.port != now.port {
        out.push(format!("port is {:?}, saved {:?}", now.port, saved.port));
    }
    diff(
        &mut out,
        "rule",
        saved.rules.iter().map(|r| (format!("{r:?}"), ())),
        now.rules.iter().map(|r| (format!("{r:?}"), ())),
    );
    diff(&mut out, "sysctl", saved.sysctls.iter(), now.sysctls.iter());
    let now_uppers: BTreeMap<_, _> = now.uppers.iter().map(|u| (&u.state.identity.name, u)).collect();
    for u in &saved.uppers {
        let name = &u.state.identity.name;
        match now_uppers.get(name) {
            None => out.push(format!("upper {name} is missing")),
            Some(have) if have.kind != u.kind => {
                out.push(format!("upper {name} is {:?}, saved {:?}", have.kind, u.kind))
            }
            Some(have) => out.extend(
                differences(&u.state, &have.state)
                    .into_iter()
                    .map(|d| format!("upper {name}: {d}")),
            ),
        }
    }
    out.extend(
        now.uppers
            .iter()
            .filter(|u| {
                !saved
                    .uppers
                    .iter()
                    .any(|s| s.state.identity.name == u.state.identity.name)
            })
            .map(|u| format!("upper {} was not in the saved state", u.state.identity.name)),
    );
    out
}

fn up(b: bool) -> &'static str {
    if b {
        "up"
    } else {
        "down"
    }
}

fn diff<K: Ord + std::fmt::Display, V: PartialEq + std::fmt::Debug>(
    out: &mut Vec<String>,
    what: &str,
    saved: impl Iterator<Item = (K, V)>,
    now: impl Iterator<Item = (K, V)>,
) {
    let mut now: BTreeMap<K, V> = now.collect();
    for (key, want) in saved {
        match now.remove(&key) {
            None => out.push(format!("{what} {key} is missing")),
            Some(have) if have != want => out.push(format!("{what} {key} is {have:?}, saved {want:?}")),
            Some(_) => {}
        }
    }
    out.extend(
        now.into_keys()
            .map(|key| format!("{what} {key} was not in the saved state")),
    );
}
