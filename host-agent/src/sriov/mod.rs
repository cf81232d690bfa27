//! SR-IOV on the host: a PF's VFs read through rtnetlink and sysfs, one provisioned for an
//! arriving VM (settings, then vfio-pci), and released again; the descriptor of a source VF
//! and the offer of a destination PF that [`vfmig_protocol::descriptor::check`] compares.

pub mod netlink;
pub mod pci;
pub mod provision;

use std::path::PathBuf;

use rtnetlink::Handle;
use vfmig_protocol::descriptor::{Offer, Policy, VfDescriptor, VfSettings, DESCRIPTOR_VERSION};
use vfmig_protocol::message::validate_ifname;

pub use provision::{provision, release, Provisioned, Step};

#[derive(Debug, thiserror::Error)]
pub enum SriovError {
    #[error("{0} is not a valid interface name")]
    BadName(String),
    #[error("there is no network interface {0}")]
    NoSuchPf(String),
    #[error("{0} is not an SR-IOV PF (its PCI function has no sriov_totalvfs)")]
    NotSriov(String),
    #[error("{pf} has no VF {index} (enable VFs with sriov_numvfs first)")]
    NoSuchVf { pf: String, index: u32 },
    #[error("{pf} has no free VF (each is bound to vfio-pci or carries a host interface that is up)")]
    NoFreeVf { pf: String },
    #[error("the vfio-pci driver is not loaded (modprobe vfio-pci)")]
    NoVfio,
    #[error("{path}: {error}")]
    Sysfs { path: PathBuf, error: std::io::Error },
    #[error("netlink: {what}: {error}")]
    Netlink { what: String, error: String },
    #[error("binding {address} to {driver} failed: bound to {got:?}{}", error.as_ref().map(|e| format!(" ({e})")).unwrap_or_default())]
    Bind {
        address: String,
        driver: String,
        got: Option<String>,
        error: Option<String>,
    },
    #[error("failure injected after step {0}")]
    Injected(&'static str),
}

/// An rtnetlink handle on this network namespace, its connection driven on the runtime.
pub fn connect() -> Result<Handle, SriovError> {
    let (conn, handle, _) = rtnetlink::new_connection().map_err(|e| SriovError::Netlink {
        what: "opening a socket".into(),
        error: e.to_string(),
    })?;
    tokio::spawn(conn);
    Ok(handle)
}

fn checked(pf: &str) -> Result<(), SriovError> {
    validate_ifname("pf", pf).map_err(|_| SriovError::BadName(pf.into()))?;
    pci::check_pf(pf)
}

/// VF `index` of `pf`: its settings as the PF holds them.
pub async fn vf_settings(handle: &Handle, pf: &str, index: u32) -> Result<VfSettings, SriovError> {
    checked(pf)?;
    let (_, vfs) = netlink::read(handle, pf).await?;
    vfs.into_iter()
        .find(|(i, _)| *i == index)
        .map(|(_, s)| s)
        .ok_or_else(|| SriovError::NoSuchVf { pf: pf.into(), index })
}

/// The descriptor of VF `index` of `pf`, for the destination to judge.
pub async fn describe(handle: &Handle, pf: &str, index: u32) -> Result<VfDescriptor, SriovError> {
    let vf = vf_settings(handle, pf, index).await?;
    Ok(VfDescriptor::new(pci::pf_model(pf)?, vf))
}

/// The descriptor of the VF at PCI `address` (as a domain's hostdev names it); none when that
/// function is no VF.
pub async fn describe_address(handle: &Handle, address: &str) -> Result<Option<VfDescriptor>, SriovError> {
    match pci::vf_of(address)? {
        Some((pf, index)) => Ok(Some(describe(handle, &pf, index).await?)),
        None => Ok(None),
    }
}

/// Whether VF `index` is free: not given to a VM (bound to vfio-pci) and not in use on the
/// host (an interface of its own that is up). Its MAC says nothing: a host VF driver picks one
/// itself, and the PF reports that.
pub fn is_free(pf: &str, index: u32) -> Result<bool, SriovError> {
    let address = pci::vf_address(pf, index)?;
    Ok(pci::driver(&address)?.as_deref() != Some("vfio-pci") && !pci::interface_up(&address))
}

/// What `pf` can offer an arriving VF under `policy`.
pub async fn offer(handle: &Handle, pf: &str, policy: Policy) -> Result<Offer, SriovError> {
    checked(pf)?;
    let model = pci::pf_model(pf)?;
    let (_, vfs) = netlink::read(handle, pf).await?;
    let mut free_vfs = Vec::new();
    for (index, _) in &vfs {
        if is_free(pf, *index)? {
            free_vfs.push(*index);
        }
    }
    Ok(Offer {
        version: DESCRIPTOR_VERSION,
        pf_name: pf.into(),
        pf: model,
        free_vfs,
        policy,
    })
}
