//! Reading an interface's network state from the kernel and writing it onto another, over
//! rtnetlink. The state model itself lives in `vfmig_protocol::netstate`.

mod announce;
mod bulk;
mod capture;
mod errno;
mod gateways;
mod metrics;
mod multipath;
mod ports;
mod qdisc;
mod rename;
mod restore;
mod rules;
mod stacking;
pub mod standby;
mod sysctls;
mod sysfs;
mod udev;
mod uppers;
mod watch;

pub use announce::announce;
pub use capture::{capture, capture_index, find_link, link_index, pci_address, Captured};
pub use restore::{restore, Item, RestoreOptions, RestoreReport};
pub use udev::settled;
pub use watch::{new_links, NewLink};

use rtnetlink::Handle;

/// Now, in milliseconds since the epoch (0 on a clock set before it): the agent's time stamps.
pub fn unix_ms_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Opens an rtnetlink connection in the calling thread's network namespace and drives it on
/// the current tokio runtime.
pub fn connect() -> std::io::Result<Handle> {
    let (conn, handle, _) = rtnetlink::new_connection()?;
    tokio::spawn(conn);
    Ok(handle)
}

#[derive(Debug, thiserror::Error)]
pub enum NetstateError {
    #[error("no interface {0}")]
    NoSuchInterface(String),
    #[error("{count} interfaces match {selector}; the host must name exactly one")]
    Ambiguous { selector: String, count: usize },
    #[error("interface {name} has no Ethernet address; vfmig handles Ethernet VFs only")]
    NotEthernet { name: String },
    #[error("standby: {0}")]
    StandbyUnusable(String),
    #[error("opening a netlink socket: {0}")]
    Socket(std::io::Error),
    #[error("{what}: {error}")]
    Netlink { what: String, error: rtnetlink::Error },
}
