//! QMP through libvirt's monitor passthrough (`virDomainQemuMonitorCommand`, as `virsh
//! qemu-monitor-command`), for what libvirt has no call of its own for. libvirt answers with
//! QEMU's whole reply, an error reply included, so the reply is read as QMP.

use serde_json::{json, Value};
use virt::domain::Domain;

use super::lost;
use crate::qmp::QmpError;
use crate::vm::monitor::Monitor;

pub struct Passthrough {
    pub(super) dom: Domain,
}

impl Monitor for Passthrough {
    async fn execute(&self, command: &str, arguments: Option<Value>) -> Result<Value, QmpError> {
        let mut request = json!({ "execute": command });
        if let Some(args) = arguments {
            request["arguments"] = args;
        }
        let reply = self.dom.qemu_monitor_command(&request.to_string(), 0).map_err(|e| {
            if lost(&e) {
                QmpError::Io(std::io::Error::other(format!("libvirt: {e}")))
            } else {
                QmpError::Protocol(format!("libvirt refused the monitor command {command}: {e}"))
            }
        })?;
        let reply: Value = serde_json::from_str(&reply).map_err(|e| QmpError::Reply {
            command: command.into(),
            error: e.to_string(),
        })?;
        match (reply.get("return"), reply.get("error")) {
            (Some(ret), _) => Ok(ret.clone()),
            (None, Some(err)) => Err(QmpError::Command {
                command: command.into(),
                class: err.get("class").and_then(Value::as_str).unwrap_or("?").to_owned(),
                desc: err.get("desc").and_then(Value::as_str).unwrap_or("?").to_owned(),
            }),
            (None, None) => Err(QmpError::Reply {
                command: command.into(),
                error: format!("neither return nor error in {reply}"),
            }),
        }
    }
}
