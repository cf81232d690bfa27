//! What the migration tests of the Debian guests (each network owner's) check inside the guest,
//! through its shell: the network as an operator would compare it, the extras an operator sets
//! by hand, and waiting for what the guest's own tools show.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use crate::bed::STATE;
use crate::dhcp::Dnsmasq;
use crate::shell::GuestShell;

/// A Debian boot under TCG takes about 30 s; a loaded machine can take much longer.
pub const DEBIAN_BOOT: Duration = Duration::from_secs(180);

/// Extras an operator set by hand on the VF (enp1s0), which no network manager configures and
/// networkd drops as foreign: a route in another table, a policy rule, permanent neighbours.
pub const BY_HAND: &str = "ip route add 198.51.100.0/24 via 198.18.0.1 dev enp1s0 table 100 && \
    ip rule add from 198.18.0.0/24 to 198.51.100.0/24 table 100 priority 100 && \
    for i in 20 21 22; do ip neigh replace 198.18.0.$i lladdr 02:00:00:00:00:$i dev enp1s0 nud permanent; done";

/// The guest's network as `STATE` shows it, and its policy rules.
pub fn state() -> String {
    format!("{STATE}; ip rule show | sort")
}

/// Runs `command` in the guest; its output, or the test fails.
pub async fn ok(shell: &mut GuestShell, command: &str) -> String {
    shell.ok(command).await.unwrap_or_else(|e| panic!("{e}"))
}

/// Polls `command` until its output contains `want`, within `wait`; its output then. On
/// failure the journal of `units` says why.
pub async fn until_shows(shell: &mut GuestShell, command: &str, want: &str, wait: Duration, units: &str) -> String {
    let until = Instant::now() + wait;
    loop {
        let (_, out) = shell
            .run(command, Duration::from_secs(30))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        if out.contains(want) {
            return out;
        }
        if Instant::now() > until {
            let log = ok(
                shell,
                &format!("journalctl -b {units} -u vfmig-guestd --no-pager | tail -60"),
            )
            .await;
            panic!("{command:?} never showed {want:?}; last:\n{out}\n{log}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The leases dnsmasq handed out, by address and client ID: a fresh VF may have another MAC,
/// and dnsmasq records a lease's latest.
pub fn leased(dhcp: &Dnsmasq) -> Vec<(Ipv4Addr, Option<String>)> {
    dhcp.leases()
        .unwrap_or_else(|e| panic!("{e}"))
        .into_iter()
        .map(|l| (l.address, l.client_id))
        .collect()
}

/// The VF's one IPv4 address, or the test fails.
pub async fn vf_ipv4(shell: &mut GuestShell) -> Ipv4Addr {
    let v4 = ok(shell, "ip -4 -o addr show dev enp1s0 scope global | awk '{print $4}'").await;
    let lines: Vec<&str> = v4.lines().collect();
    assert_eq!(lines.len(), 1, "one IPv4 address on the VF: {v4}");
    lines[0]
        .split('/')
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("not an address: {v4}"))
}
