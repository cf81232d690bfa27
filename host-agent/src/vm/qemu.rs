//! The VM seam over QEMU's monitor: every QMP command and reply a migration uses, and nothing
//! else, whichever way the commands reach QEMU ([`Monitor`]).

use std::time::Duration;

use serde_json::{json, Value};
use tokio::time::Instant;
use vfmig_protocol::MacAddr;

use super::monitor::Monitor;
use super::{Migration, Params, ParamsChange, Vm, VmError};
use crate::qmp::migration::MigrationInfo;
use crate::qmp::QmpError;

/// How often a device's presence is read while its removal is awaited: DEVICE_DELETED wakes
/// the wait at once, the poll covers an event sent while nobody listened.
const GONE_POLL: Duration = Duration::from_millis(20);

/// QEMU's answer to a second `device_del` while the guest has not yet acted on the first.
const UNPLUG_PENDING: &str = "already in the process of unplug";

/// The migration capability that pauses QEMU before its switch-over, the VM already stopped.
const PAUSE_BEFORE_SWITCHOVER: &str = "pause-before-switchover";

/// A VM driven through QEMU's monitor.
pub struct Qemu<M> {
    monitor: M,
}

impl<M: Monitor> Qemu<M> {
    pub fn over(monitor: M) -> Self {
        Self { monitor }
    }

    async fn run(&self, command: &str, arguments: Option<Value>) -> Result<Value, VmError> {
        self.monitor.execute(command, arguments).await.map_err(vm_error)
    }

    async fn query<T: serde::de::DeserializeOwned>(&self, command: &str) -> Result<T, VmError> {
        let value = self.run(command, None).await?;
        serde_json::from_value(value).map_err(|e| VmError::Refused {
            request: command.into(),
            error: format!("an answer not of the expected shape: {e}"),
        })
    }

    async fn qom_get(&self, id: &str, property: &str) -> Result<Value, QmpError> {
        let path = format!("/machine/peripheral/{id}");
        self.monitor
            .execute("qom-get", Some(json!({ "path": path, "property": property })))
            .await
    }
}

/// A lost or hung monitor is `Lost` (the run is taken up again once connected); a refusal
/// carries QEMU's own words.
pub(super) fn vm_error(e: QmpError) -> VmError {
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

impl<M: Monitor> Vm for Qemu<M> {
    async fn migration(&self) -> Result<Option<Migration>, VmError> {
        let info: MigrationInfo = self.query("query-migrate").await?;
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
        self.query("query-migrate-parameters").await
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
            if self.monitor.device_deleted(id) || !self.device_present(id).await? {
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

    async fn device_is(&self, id: &str, spec: &Value) -> Result<bool, VmError> {
        if let Some(mac) = spec.get("mac").and_then(Value::as_str) {
            let wanted: Option<MacAddr> = mac.parse().ok();
            if self.device_mac(id).await? != wanted {
                return Ok(false);
            }
        }
        if let Some(host) = spec.get("host").and_then(Value::as_str) {
            let there = self.qom_get(id, "host").await.map_err(vm_error)?;
            return Ok(there.as_str() == Some(host));
        }
        Ok(true)
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
        let buses: Vec<Value> = self.query("query-pci").await?;
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

    async fn switchover_gate(&self) -> Result<Option<bool>, VmError> {
        let capabilities: Vec<Value> = self.query("query-migrate-capabilities").await?;
        let found = capabilities
            .iter()
            .find(|c| c["capability"] == PAUSE_BEFORE_SWITCHOVER)
            .and_then(|c| c["state"].as_bool());
        match found {
            Some(on) => Ok(Some(on)),
            None => Err(VmError::Refused {
                request: "query-migrate-capabilities".into(),
                error: format!("this QEMU has no {PAUSE_BEFORE_SWITCHOVER} capability"),
            }),
        }
    }

    async fn set_switchover_gate(&self, on: bool) -> Result<(), VmError> {
        let capabilities = json!([{ "capability": PAUSE_BEFORE_SWITCHOVER, "state": on }]);
        self.run(
            "migrate-set-capabilities",
            Some(json!({ "capabilities": capabilities })),
        )
        .await
        .map(drop)
    }

    async fn continue_switchover(&self) -> Result<(), VmError> {
        let paused = Some(json!({ "state": "pre-switchover" }));
        match self.run("migrate-continue", paused).await {
            // Refused when not paused: a continue issued before went through.
            Err(VmError::Refused { .. })
                if self
                    .migration()
                    .await?
                    .is_some_and(|m| m.state != super::MigrationState::PreSwitchover) =>
            {
                Ok(())
            }
            other => other.map(drop),
        }
    }
}
