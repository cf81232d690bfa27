//! Giving an arriving VM a VF: pick a free one, give it the source VF's settings through the
//! PF, bind it to vfio-pci; and releasing it afterwards. Every step is undone, in reverse, if a
//! later one fails, so a failed provisioning leaves the VF as it was found.

use nix::fcntl::{Flock, FlockArg};
use rtnetlink::Handle;
use vfmig_protocol::descriptor::VfSettings;
use vfmig_protocol::MacAddr;

use super::netlink::{self, Setting};
use super::{checked, is_free, pci, SriovError};

/// The steps, by the names `--fail-after` takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Step {
    Pick,
    Mac,
    Vlan,
    SpoofCheck,
    Trust,
    Rate,
    Vfio,
}

impl Step {
    fn of(setting: &Setting) -> Self {
        match setting {
            Setting::Mac(_) => Step::Mac,
            Setting::Vlan { .. } => Step::Vlan,
            Setting::SpoofCheck(_) => Step::SpoofCheck,
            Setting::Trust(_) => Step::Trust,
            Setting::Rate { .. } => Step::Rate,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Step::Pick => "pick",
            Step::Mac => "mac",
            Step::Vlan => "vlan",
            Step::SpoofCheck => "spoof-check",
            Step::Trust => "trust",
            Step::Rate => "rate",
            Step::Vfio => "vfio",
        }
    }
}

/// A provisioned VF.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Provisioned {
    pub pf: String,
    pub index: u32,
    /// Its PCI address, what QEMU's `vfio-pci,host=` takes.
    pub address: String,
    pub settings: VfSettings,
}

/// The settings of a VF no one uses: no MAC given, untagged, no rate limit, spoof checking on,
/// not trusted.
pub(super) fn unused() -> VfSettings {
    VfSettings {
        mac: MacAddr([0; 6]),
        vlan: 0,
        qos: 0,
        spoof_check: true,
        trust: false,
        min_tx_rate: 0,
        max_tx_rate: 0,
    }
}

/// What was done so far, to be undone in reverse.
struct Undo {
    pf_index: u32,
    index: u32,
    address: String,
    /// Settings applied, each with the value it replaced.
    applied: Vec<(Setting, Setting)>,
    /// The driver override before vfio-pci's, when the VF was rebound.
    rebound: Option<Option<String>>,
}

impl Undo {
    async fn run(self, handle: &Handle) -> Vec<String> {
        let mut failures = Vec::new();
        if let Some(before) = self.rebound {
            if let Err(e) = pci::bind(&self.address, before.as_deref()).await {
                failures.push(e.to_string());
            }
        }
        for (_, old) in self.applied.into_iter().rev() {
            if let Err(e) = netlink::apply(handle, self.pf_index, self.index, old).await {
                failures.push(e.to_string());
            }
        }
        failures
    }
}

/// Where the per-PF locks live.
const LOCKS: &str = "/run/vfmig";

/// Held while a VF of one PF is provisioned or released: two hooks run at once (two VMs
/// arriving) would otherwise pick the same free VF. A lock on a file, so the kernel drops it
/// if the holder dies.
fn lock_pf(pf: &str) -> Result<Flock<std::fs::File>, SriovError> {
    let dir = std::path::Path::new(LOCKS);
    let path = dir.join(format!("sriov-{pf}.lock"));
    let sysfs = |source| SriovError::Sysfs {
        path: path.clone(),
        error: source,
    };
    std::fs::create_dir_all(dir).map_err(sysfs)?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(sysfs)?;
    Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| sysfs(e.into()))
}

/// Provisions a free VF of `pf` with `settings` and binds it to vfio-pci. `fail_after`
/// injects a failure after that step, for the tests of the undo.
pub async fn provision(
    handle: &Handle,
    pf: &str,
    settings: &VfSettings,
    fail_after: Option<Step>,
) -> Result<Provisioned, ProvisionError> {
    let fail = |step: Step| -> Result<(), SriovError> {
        match fail_after {
            Some(at) if at == step => Err(SriovError::Injected(step.name())),
            _ => Ok(()),
        }
    };
    let early = |error: SriovError| ProvisionError {
        error,
        undo: Vec::new(),
    };
    checked(pf).map_err(early)?;
    let _lock = lock_pf(pf).map_err(early)?;
    if !pci::driver_loaded("vfio-pci") {
        return Err(early(SriovError::NoVfio));
    }
    let (pf_index, vfs) = netlink::read(handle, pf).await.map_err(early)?;
    let mut picked = None;
    for (index, current) in vfs {
        if is_free(pf, index).map_err(early)? {
            picked = Some((index, current));
            break;
        }
    }
    let (index, current) = picked.ok_or_else(|| early(SriovError::NoFreeVf { pf: pf.into() }))?;
    let address = pci::vf_address(pf, index).map_err(early)?;
    let mut undo = Undo {
        pf_index,
        index,
        address: address.clone(),
        applied: Vec::new(),
        rebound: None,
    };
    let steps = async {
        fail(Step::Pick)?;
        let olds = Setting::changes(settings, &current);
        for new in Setting::changes(&current, settings) {
            netlink::apply(handle, pf_index, index, new).await?;
            let old = olds.iter().find(|o| o.name() == new.name()).copied().unwrap_or(new);
            undo.applied.push((new, old));
            fail(Step::of(&new))?;
        }
        undo.rebound = Some(pci::driver_override(&address)?);
        pci::bind(&address, Some("vfio-pci")).await?;
        fail(Step::Vfio)
    };
    match steps.await {
        Ok(()) => Ok(Provisioned {
            pf: pf.into(),
            index,
            address,
            settings: settings.clone(),
        }),
        Err(error) => Err(ProvisionError {
            error,
            undo: undo.run(handle).await,
        }),
    }
}

/// Releases VF `index` of `pf`: back to the driver that matches it by id, and to the settings
/// of an unused VF.
pub async fn release(handle: &Handle, pf: &str, index: u32) -> Result<(), SriovError> {
    checked(pf)?;
    let _lock = lock_pf(pf)?;
    let address = pci::vf_address(pf, index)?;
    pci::bind(&address, None).await?;
    let (pf_index, vfs) = netlink::read(handle, pf).await?;
    let current = vfs
        .into_iter()
        .find(|(i, _)| *i == index)
        .map(|(_, s)| s)
        .ok_or_else(|| SriovError::NoSuchVf { pf: pf.into(), index })?;
    for setting in Setting::changes(&current, &unused()) {
        netlink::apply(handle, pf_index, index, setting).await?;
    }
    Ok(())
}

/// A provisioning that failed, with what undoing its steps could not put back (empty: the
/// VF is as it was found).
#[derive(Debug, thiserror::Error)]
#[error("{error}{}", if undo.is_empty() { "; every step was undone".to_string() } else { format!("; undoing failed: {}", undo.join("; ")) })]
pub struct ProvisionError {
    pub error: SriovError,
    pub undo: Vec<String>,
}
