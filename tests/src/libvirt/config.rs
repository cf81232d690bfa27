//! What each libvirt host is configured with: libvirtd.conf, qemu.conf, its /etc/hosts and the
//! script that puts a guest's tap on the host's bridge. The settings are the ones measured to
//! work here (docs/testing.md, "The libvirt test bed"); each says why it is there.

use std::net::Ipv4Addr;

/// libvirtd's TCP port (libvirt's default, on each host's own address).
pub const TCP_PORT: u16 = 16509;

/// The bridge in each host that the guests' taps join (see [`ifup`]).
pub const BRIDGE: &str = "br0";

/// Where [`ifup`] lives inside a host; domain XML names it in `<script path=…/>`.
pub const IFUP_PATH: &str = "/etc/libvirt/vfmig-ifup";

/// Run by libvirt with the name of each tap it creates for an `<interface type='ethernet'>`
/// that names it: the tap joins the host's bridge and comes up. (The `<script>` taints the
/// domain "shell-scripts"; a pre-made tap would not follow a NIC hot-plugged later.)
pub fn ifup() -> String {
    format!("#!/bin/sh\nexec ip link set \"$1\" master {BRIDGE} up\n")
}

/// libvirtd.conf: TCP without authentication on the host's address (the bed's hosts reach
/// each other there, and nothing else can), no TLS, and a UUID of the host's own, since libvirt
/// refuses to migrate to a host with its own UUID. Warnings and errors go to stderr, which the
/// bed keeps (`Host::log`).
pub fn libvirtd_conf(addr: Ipv4Addr, uuid: &str) -> String {
    format!(
        "listen_tls = 0
listen_tcp = 1
listen_addr = \"{addr}\"
tcp_port = \"{TCP_PORT}\"
auth_tcp = \"none\"
auth_unix_rw = \"none\"
host_uuid = \"{uuid}\"
log_outputs = \"3:stderr\"
"
    )
}

/// qemu.conf: QEMU as root with no security driver, ownership changes, cgroups or mount
/// namespaces of libvirt's (none of them is available or wanted in a namespace bed); the
/// guest's console written to a file by QEMU itself (no virtlogd); migration streams on the
/// host's address (libvirt refuses a loopback one).
pub fn qemu_conf(addr: Ipv4Addr) -> String {
    format!(
        "user = \"root\"
group = \"root\"
dynamic_ownership = 0
remember_owner = 0
security_driver = \"none\"
cgroup_controllers = [ ]
namespaces = [ ]
stdio_handler = \"file\"
migration_address = \"{addr}\"
migration_host = \"{addr}\"
"
    )
}

/// /etc/hosts naming every host: libvirt looks its host names up, and without an answer (no
/// DNS here) the lookups hang.
pub fn etc_hosts(hosts: &[(String, Ipv4Addr)]) -> String {
    let mut text = String::from("127.0.0.1 localhost\n");
    for (name, addr) in hosts {
        text.push_str(&format!("{addr} {name}\n"));
    }
    text
}

/// A host's UUID: the same for host `n` in every run, another for each host.
pub fn host_uuid(n: u8) -> String {
    format!("76666d69-6700-4000-8000-0000000000{n:02x}")
}
