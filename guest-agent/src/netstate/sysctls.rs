//! The per-interface sysctls users tune ([`TUNED_SYSCTLS`]), read from and written to
//! `/proc/sys/net/{ipv4,ipv6}/conf/IF/`.
//!
//! /proc/sys/net is per network namespace of the calling thread: plain (blocking) file I/O on
//! this thread, never a thread pool that may live elsewhere. A few tiny reads and writes.

use std::path::PathBuf;

use vfmig_protocol::netstate::{Sysctls, TUNED_SYSCTLS};

use super::restore::RestoreReport;

fn path(link: &str, key: &str) -> Option<PathBuf> {
    let (family, name) = key.split_once('/')?;
    Some(["/proc/sys/net", family, "conf", link, name].iter().collect())
}

/// The tuned sysctls of `link`. A key the kernel does not have (all of `ipv6/` when IPv6 is
/// disabled) is absent, not an error: there is nothing to carry over.
pub(super) fn capture(link: &str) -> Sysctls {
    TUNED_SYSCTLS
        .iter()
        .filter_map(|key| {
            let value = std::fs::read_to_string(path(link, key)?).ok()?;
            Some((key.to_string(), value.trim().to_owned()))
        })
        .collect()
}

/// Writes onto `link` each of `want` it holds otherwise, each failure an item of `report`.
/// Read at the time of writing, not from the capture before the restore: the link's new MTU
/// has moved `ipv6/mtu` meanwhile. `ipv6/disable_ipv6` goes first: while it is set, the other
/// `ipv6/` settings do not act.
pub(super) fn restore(link: &str, want: &Sysctls, report: &mut RestoreReport) {
    let first = "ipv6/disable_ipv6";
    let ordered = want
        .get_key_value(first)
        .into_iter()
        .chain(want.iter().filter(|(k, _)| k.as_str() != first));
    for (key, value) in ordered {
        let what = format!("sysctl {key} = {value} on {link}");
        let Some(path) = path(link, key) else {
            report.failed.push(format!("{what}: not a family/name key"));
            continue;
        };
        // What already holds is not listed: nearly every key does, on every restore.
        if std::fs::read_to_string(&path).is_ok_and(|now| now.trim() == value) {
            continue;
        }
        match std::fs::write(&path, value) {
            Ok(()) => report.applied.push(what.into()),
            Err(e) => report.failed.push(format!("{what}: {e}")),
        }
    }
}
