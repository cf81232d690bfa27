//! A DHCP server on the peer's side of the fabric (dnsmasq in the peer's namespace), for guests
//! that take the VF's address by DHCP, and the leases it handed out, to check that a migrated
//! guest kept its lease rather than taking a second one.

use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::bed::Bed;

/// dnsmasq raises any shorter lease to two minutes (its manual, "--dhcp-range"); a client
/// renews at half of it.
pub const MIN_LEASE: Duration = Duration::from_secs(120);

/// The lease time of [`Dnsmasq::start`], dnsmasq's own default.
const LEASE: Duration = Duration::from_secs(3600);

/// One lease in dnsmasq's lease file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// As dnsmasq writes it: lower-case, colon-separated.
    pub mac: String,
    pub address: Ipv4Addr,
    /// The client identifier the client sent (hex bytes, colon-separated, its type first), if
    /// it sent one: a client that sends one is known by it rather than by its MAC.
    pub client_id: Option<String>,
}

/// dnsmasq serving 198.18.0.100–150 on the peer's side of the bridge; killed when dropped.
pub struct Dnsmasq {
    child: Child,
    leases: PathBuf,
}

impl Dnsmasq {
    /// With hour-long leases: none is renewed while a test runs.
    pub fn start(bed: &Bed) -> Self {
        Self::start_with_lease(bed, LEASE)
    }

    /// With leases of `lease` (whole seconds, at least [`MIN_LEASE`]), for a test that wants to
    /// see a renewal.
    pub fn start_with_lease(bed: &Bed, lease: Duration) -> Self {
        assert!(lease >= MIN_LEASE, "dnsmasq gives no lease shorter than {MIN_LEASE:?}");
        let leases = bed.dir.0.join("dnsmasq.leases");
        // Entered by nsenter from this thread rather than spawned from one in the namespace:
        // the child dies with the thread that started it, and this one lives as long as the test.
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!(
            "--net=/proc/{}/fd/{}",
            std::process::id(),
            bed.fabric.peer.fd().as_raw_fd()
        ))
        .args([
            "dnsmasq",
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--port=0",
            "--user=root",
            "--interface=peer0",
            "--bind-interfaces",
            "--dhcp-authoritative",
        ])
        .arg(format!(
            "--dhcp-range=198.18.0.100,198.18.0.150,255.255.255.0,{}",
            lease.as_secs()
        ))
        .arg(format!("--dhcp-leasefile={}", leases.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null());
        crate::die_with_parent(&mut cmd);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("dnsmasq: {e}"));
        Self { child, leases }
    }

    /// The leases it has handed out, from its lease file (none before the first).
    pub fn leases(&self) -> Result<Vec<Lease>, String> {
        let text = match std::fs::read_to_string(&self.leases) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(format!("reading {}: {e}", self.leases.display())),
        };
        text.lines().map(parse_lease).collect()
    }
}

/// A lease file line: expiry, MAC, address, host name, client id ("*" for none).
fn parse_lease(line: &str) -> Result<Lease, String> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let [_, mac, address, _, client_id] = fields[..] else {
        return Err(format!("not a dnsmasq lease: {line:?}"));
    };
    Ok(Lease {
        mac: mac.to_owned(),
        address: address
            .parse()
            .map_err(|e| format!("not an IPv4 address in {line:?}: {e}"))?,
        client_id: (client_id != "*").then(|| client_id.to_owned()),
    })
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_line_gives_mac_address_and_client_id() {
        assert_eq!(
            parse_lease("1765000000 52:54:00:10:00:01 198.18.0.120 vfmig-debian ff:b6:22:0c:a4:00:02:00:00:ab:11:6e"),
            Ok(Lease {
                mac: "52:54:00:10:00:01".into(),
                address: Ipv4Addr::new(198, 18, 0, 120),
                client_id: Some("ff:b6:22:0c:a4:00:02:00:00:ab:11:6e".into()),
            })
        );
        assert_eq!(
            parse_lease("1765000000 52:54:00:10:00:01 198.18.0.120 * *").map(|l| l.client_id),
            Ok(None)
        );
        assert!(parse_lease("1765000000 52:54:00:10:00:01").is_err());
    }
}
