//! The VM seam over a QMP monitor vfmig-host owns (bare QEMU, or a second monitor beside a
//! manager's): every QMP command and reply a migration uses, and nothing else.

use std::cell::RefCell;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::broadcast::error::TryRecvError;
use tokio::sync::broadcast::Receiver;
use tokio::time::Instant;
use vfmig_protocol::MacAddr;

use super::{Migration, Params, ParamsChange, Vm, VmError};
use crate::qmp::migration::MigrationInfo;
use crate::qmp::{Event, Qmp, QmpError};

/// How often a device's presence is read while its removal is awaited: DEVICE_DELETED wakes
/// the wait at once, the poll covers an event sent while nobody listened.
const GONE_POLL: Duration = Duration::from_millis(20);

/// QEMU's answer to a second `device_del` while the guest has not yet acted on the first.
const UNPLUG_PENDING: &str = "already in the process of unplug";

pub struct QmpVm<'a> {
    qmp: &'a Qmp,
    /// Subscribed when connected, so no DEVICE_DELETED is missed between a removal and its
    /// wait.
    events: RefCell<Receiver<Event>>,
}

impl<'a> QmpVm<'a> {
    pub fn new(qmp: &'a Qmp) -> Self {
        let events = RefCell::new(qmp.events());
        Self { qmp, events }
    }

    async fn run(&self, command: &str, arguments: Option<Value>) -> Result<Value, VmError> {
        self.qmp.execute(command, arguments).await.map_err(vm_error)
    }

    async fn qom_get(&self, id: &str, property: &str) -> Result<Value, QmpError> {
        let path = format!("/machine/peripheral/{id}");
        self.qmp
            .execute("qom-get", Some(json!({ "path": path, "property": property })))
            .await
    }

    /// Whether a DEVICE_DELETED for `id` arrived since the last look.
    fn deleted_event_seen(&self, id: &str) -> bool {
        let mut events = self.events.borrow_mut();
        loop {
            match events.try_recv() {
                Ok(e) if e.event == "DEVICE_DELETED" && e.data.get("device").and_then(Value::as_str) == Some(id) => {
                    return true
                }
                Ok(_) | Err(TryRecvError::Lagged(_)) => continue,
                Err(TryRecvError::Empty | TryRecvError::Closed) => return false,
            }
        }
    }
}

/// A lost or hung monitor is `Lost` (the run is taken up again once connected); a refusal
/// carries QEMU's own words.
fn vm_error(e: QmpError) -> VmError {
    match e {
        QmpError::Io(_) | QmpError::Closed | QmpError::Timeout { .. } => VmError::Lost(e.to_string()),
        QmpError::Command { command, class, desc } => VmError::Refused {
            request: command,
            error: format!("{desc} ({class})"),
        },
        QmpError::Protocol(_) | QmpError::Reply { .. } => VmError::Refused {
            request: "QMP".into(),
            error: e.to_string(),
        },
    }
}

impl Vm for QmpVm<'_> {
    async fn migration(&self) -> Result<Option<Migration>, VmError> {
        let info: MigrationInfo = self.qmp.query("query-migrate", None).await.map_err(vm_error)?;
        Ok(info.outgoing())
    }

    async fn start_migration(&self, target: &str) -> Result<(), VmError> {
        self.run("migrate", Some(json!({ "uri": target }))).await.map(drop)
    }

    async fn cancel_migration(&self) -> Result<(), VmError> {
        self.run("migrate_cancel", None).await.map(drop)
    }

    async fn params(&self) -> Result<Params, VmError> {
        // Read strictly: a missing value restored as 0 would mean "unlimited" to QEMU.
        self.qmp.query("query-migrate-parameters", None).await.map_err(vm_error)
    }

    async fn set_params(&self, change: ParamsChange) -> Result<(), VmError> {
        let mut args = json!({});
        if let Some(b) = change.max_bandwidth {
            args["max-bandwidth"] = b.into();
        }
        if let Some(d) = change.downtime_limit {
            args["downtime-limit"] = d.into();
        }
        self.run("migrate-set-parameters", Some(args)).await.map(drop)
    }

    async fn device_present(&self, id: &str) -> Result<bool, VmError> {
        // Every QOM object has a type; asking for it fails only for a device that is not there.
        match self.qom_get(id, "type").await {
            Ok(_) => Ok(true),
            Err(QmpError::Command { .. }) => Ok(false),
            Err(e) => Err(vm_error(e)),
        }
    }

    async fn remove_device(&self, id: &str) -> Result<(), VmError> {
        match self.run("device_del", Some(json!({ "id": id }))).await {
            Err(VmError::Refused { error, .. }) if error.contains(UNPLUG_PENDING) => Ok(()),
            Err(e @ VmError::Refused { .. }) if !self.device_present(id).await? => {
                tracing::info!(id, error = %e, "device_del refused for a device already gone");
                Ok(())
            }
            other => other.map(drop),
        }
    }

    async fn wait_device_gone(&self, id: &str, deadline: Duration) -> Result<bool, VmError> {
        let until = Instant::now() + deadline;
        loop {
            if self.deleted_event_seen(id) || !self.device_present(id).await? {
                return Ok(true);
            }
            if Instant::now() >= until {
                return Ok(false);
            }
            tokio::time::sleep(GONE_POLL.min(until - Instant::now())).await;
        }
    }

    async fn add_device(&self, spec: &Value) -> Result<(), VmError> {
        self.run("device_add", Some(spec.clone())).await.map(drop)
    }

    async fn guest_pci_address(&self, id: &str) -> Result<Option<String>, VmError> {
        fn find(devices: &[Value], bus: u64, id: &str) -> Option<String> {
            devices.iter().find_map(|d| {
                if d["qdev_id"] == id {
                    let (slot, function) = (d["slot"].as_u64()?, d["function"].as_u64()?);
                    return Some(format!("0000:{bus:02x}:{slot:02x}.{function:x}"));
                }
                let bridge = &d["pci_bridge"];
                let secondary = bridge["bus"]["secondary"].as_u64()?;
                find(bridge["devices"].as_array()?, secondary, id)
            })
        }
        let buses: Vec<Value> = self.qmp.query("query-pci", None).await.map_err(vm_error)?;
        Ok(buses
            .iter()
            .find_map(|b| find(b["devices"].as_array()?, b["bus"].as_u64()?, id)))
    }

    async fn device_mac(&self, id: &str) -> Result<Option<MacAddr>, VmError> {
        match self.qom_get(id, "mac").await {
            Ok(Value::String(mac)) => mac.parse().map(Some).map_err(|e| VmError::Refused {
                request: format!("qom-get {id} mac"),
                error: format!("{e}"),
            }),
            Ok(other) => Err(VmError::Refused {
                request: format!("qom-get {id} mac"),
                error: format!("not a MAC: {other}"),
            }),
            Err(QmpError::Command { .. }) if self.device_present(id).await? => Ok(None),
            Err(QmpError::Command { .. }) => Err(VmError::NoDevice(id.into())),
            Err(e) => Err(vm_error(e)),
        }
    }

    async fn running(&self) -> Result<bool, VmError> {
        let status = self.run("query-status", None).await?;
        Ok(status.get("running") == Some(&Value::Bool(true)))
    }

    async fn failover_pair(&self, id: &str) -> Result<Option<String>, VmError> {
        // vfmig's own set-up also sets failover_pair_id, to a name of no device, because QEMU
        // allows device_del during a migration only then: a pair is one whose partner has
        // failover on.
        let Ok(Value::String(pair)) = self.qom_get(id, "failover_pair_id").await else {
            return Ok(None);
        };
        if pair.is_empty() {
            return Ok(None);
        }
        let on = self.qom_get(&pair, "failover").await;
        Ok(matches!(on, Ok(Value::Bool(true))).then_some(pair))
    }
}
