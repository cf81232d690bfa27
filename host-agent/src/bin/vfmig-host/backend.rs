//! Which hypervisor the VM runs under, chosen on the command line: bare QEMU through a QMP
//! socket of vfmig's own, or a libvirt domain. The state machine is the same for both.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::Value;
use vfmig_host::guest::channel::ChannelGuest;
use vfmig_host::migration::MigrateError;
use vfmig_host::qmp::Qmp;
#[cfg(feature = "libvirt")]
use vfmig_host::vm::libvirt::LibvirtVm;
use vfmig_host::vm::qmp::QmpVm;
use vfmig_host::vm::{Migration, Params, ParamsChange, Vm, VmError};
use vfmig_protocol::MacAddr;

pub enum Backend {
    Qemu { qmp: PathBuf, agent: PathBuf },
    Libvirt { uri: String, domain: String },
}

/// How many times a lost connection to the hypervisor is opened again; each time the run is
/// taken up from the journal where it stands.
const RECONNECTS: u32 = 3;

/// A connection to the VM's hypervisor.
enum Connection {
    Qemu(Qmp),
    #[cfg(feature = "libvirt")]
    Libvirt(LibvirtVm),
}

/// The VM, through whichever connection.
pub enum AnyVm<'a> {
    Qemu(QmpVm<'a>),
    #[cfg(feature = "libvirt")]
    Libvirt(&'a LibvirtVm),
}

impl Backend {
    /// Connects to the hypervisor; the guest agent behind the VM's channel. `side` (source,
    /// destination) names which in an error.
    async fn connect(&self, side: &str) -> Result<(Connection, ChannelGuest)> {
        Ok(match self {
            Backend::Qemu { qmp, agent } => {
                let qmp = Qmp::connect(qmp)
                    .await
                    .with_context(|| format!("{side} QMP {}", qmp.display()))?;
                (Connection::Qemu(qmp), ChannelGuest::new(agent))
            }
            // The agent's channel through libvirt: reachable wherever the domain runs.
            #[cfg(feature = "libvirt")]
            Backend::Libvirt { uri, domain } => {
                let vm = LibvirtVm::open(uri, domain).with_context(|| format!("the {side}"))?;
                let (uri, domain) = (uri.clone(), domain.clone());
                let guest = ChannelGuest::dialing(Box::new(move || {
                    vfmig_host::vm::libvirt::channel::dial_agent(&uri, &domain)
                }));
                (Connection::Libvirt(vm), guest)
            }
            #[cfg(not(feature = "libvirt"))]
            Backend::Libvirt { uri, domain } => {
                anyhow::bail!("this vfmig-host was built without libvirt: it cannot reach {domain} on {uri}")
            }
        })
    }

    /// The spec that plugs the VF `id` back, where the hypervisor knows it (libvirt's
    /// definition of the domain).
    pub async fn device_spec(&self, id: &str) -> Result<Option<Value>> {
        match self {
            Backend::Qemu { .. } => Ok(None),
            #[cfg(feature = "libvirt")]
            Backend::Libvirt { uri, domain } => Ok(LibvirtVm::open(uri, domain)?.device_spec(id)?),
            #[cfg(not(feature = "libvirt"))]
            Backend::Libvirt { domain, .. } => {
                anyhow::bail!("this vfmig-host was built without libvirt: it cannot read {id} of {domain}")
            }
        }
    }

    /// Takes vfmig's mark off the migrated domain's definition: the migration is over, and a
    /// later plain one must not pass for vfmig's.
    pub async fn unmark(&self) -> Result<()> {
        match self {
            Backend::Qemu { .. } => Ok(()),
            #[cfg(feature = "libvirt")]
            Backend::Libvirt { uri, domain } => Ok(LibvirtVm::open(uri, domain)?.clear_mark()?),
            #[cfg(not(feature = "libvirt"))]
            Backend::Libvirt { .. } => Ok(()),
        }
    }

    /// Runs `step` against the VM and its guest agent, connecting again when the connection
    /// is lost.
    pub async fn with_vm<T>(
        &self,
        side: &str,
        mut step: impl AsyncFnMut(&AnyVm<'_>, ChannelGuest) -> Result<T, MigrateError>,
    ) -> Result<Result<T, MigrateError>> {
        let mut attempt = 0;
        loop {
            let (connection, guest) = self.connect(side).await?;
            let vm = match &connection {
                Connection::Qemu(qmp) => AnyVm::Qemu(QmpVm::new(qmp)),
                #[cfg(feature = "libvirt")]
                Connection::Libvirt(vm) => AnyVm::Libvirt(vm),
            };
            match step(&vm, guest).await {
                Err(MigrateError::Lost(why)) if attempt < RECONNECTS => {
                    attempt += 1;
                    eprintln!("vfmig-host: {why}; connecting again and taking up the migration from the journal");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                outcome => return Ok(outcome),
            }
        }
    }
}

/// Each call to whichever VM it is.
macro_rules! either {
    ($vm:expr, $v:ident => $call:expr) => {
        match $vm {
            AnyVm::Qemu($v) => $call,
            #[cfg(feature = "libvirt")]
            AnyVm::Libvirt($v) => $call,
        }
    };
}

impl Vm for AnyVm<'_> {
    async fn migration(&self) -> Result<Option<Migration>, VmError> {
        either!(self, v => v.migration().await)
    }
    async fn start_migration(&self, target: &str) -> Result<(), VmError> {
        either!(self, v => v.start_migration(target).await)
    }
    async fn cancel_migration(&self) -> Result<(), VmError> {
        either!(self, v => v.cancel_migration().await)
    }
    async fn params(&self) -> Result<Params, VmError> {
        either!(self, v => v.params().await)
    }
    async fn set_params(&self, change: ParamsChange) -> Result<(), VmError> {
        either!(self, v => v.set_params(change).await)
    }
    async fn device_present(&self, id: &str) -> Result<bool, VmError> {
        either!(self, v => v.device_present(id).await)
    }
    async fn remove_device(&self, id: &str) -> Result<(), VmError> {
        either!(self, v => v.remove_device(id).await)
    }
    async fn wait_device_gone(&self, id: &str, deadline: Duration) -> Result<bool, VmError> {
        either!(self, v => v.wait_device_gone(id, deadline).await)
    }
    async fn add_device(&self, spec: &Value) -> Result<(), VmError> {
        either!(self, v => v.add_device(spec).await)
    }
    async fn device_is(&self, id: &str, spec: &Value) -> Result<bool, VmError> {
        either!(self, v => v.device_is(id, spec).await)
    }
    async fn guest_pci_address(&self, id: &str) -> Result<Option<String>, VmError> {
        either!(self, v => v.guest_pci_address(id).await)
    }
    async fn device_mac(&self, id: &str) -> Result<Option<MacAddr>, VmError> {
        either!(self, v => v.device_mac(id).await)
    }
    async fn running(&self) -> Result<bool, VmError> {
        either!(self, v => v.running().await)
    }
    async fn failover_pair(&self, id: &str) -> Result<Option<String>, VmError> {
        either!(self, v => v.failover_pair(id).await)
    }
    async fn switchover_gate(&self) -> Result<Option<bool>, VmError> {
        either!(self, v => v.switchover_gate().await)
    }
    async fn set_switchover_gate(&self, on: bool) -> Result<(), VmError> {
        either!(self, v => v.set_switchover_gate(on).await)
    }
    async fn continue_switchover(&self) -> Result<(), VmError> {
        either!(self, v => v.continue_switchover().await)
    }
}
