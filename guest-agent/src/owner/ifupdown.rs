//! ifupdown (`/etc/network/interfaces`), when it manages the VF.
//!
//! udev's mark does not reach ifupdown: its own udev rule runs `ifup@IF.service` on every new
//! link named in an `allow-hotplug` stanza, which on the fresh VF would run the stanza again —
//! dhclient's client ID follows the MAC, so a VF with another MAC loses its address to a NAK
//! and a flush seconds after the restore. So the unit is masked for the migration (runtime
//! only, nothing in /etc changes) and unmasked when the VF is handed back; ifupdown's own
//! record of the interface (`/run/network/ifstate.IF`) is then made to say what it said before,
//! bringing the stanza up again if it was taken down, so that `ifquery --state`, a later
//! `ifdown` and dhclient's renewals work as before.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::process::Command;

use super::{LinkRef, NicOwner, OwnerError, OwnerKind};

/// systemctl answers in milliseconds; ifup waits for a DHCP lease (dhclient's own timeout is
/// a minute).
const SYSTEMCTL_WAIT: Duration = Duration::from_secs(10);
const IFUP_WAIT: Duration = Duration::from_secs(70);

/// What ifupdown had for the VF when it was saved.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Snapshot {
    /// The logical interface ifupdown brought up on it (its ifstate record).
    pub logical: String,
}

#[derive(Debug, thiserror::Error)]
pub enum IfupdownError {
    #[error("{command}: {why}")]
    Command { command: String, why: String },
}

/// ifupdown, as an owner of NICs.
pub struct Ifupdown {
    /// Where ifupdown keeps its record of what is up (`/run/network`).
    pub state_dir: PathBuf,
}

impl Default for Ifupdown {
    fn default() -> Self {
        Self {
            state_dir: PathBuf::from("/run/network"),
        }
    }
}

fn unit(name: &str) -> String {
    format!("ifup@{name}.service")
}

/// Runs `program args` within `wait`; its output on failure.
async fn run(program: &str, args: &[&str], wait: Duration) -> Result<(), IfupdownError> {
    let command = format!("{program} {}", args.join(" "));
    let failed = |why: String| IfupdownError::Command {
        command: command.clone(),
        why,
    };
    let output = Command::new(program).args(args).kill_on_drop(true).output();
    let output = tokio::time::timeout(wait, output)
        .await
        .map_err(|_| failed(format!("no answer within {wait:?}")))?
        .map_err(|e| failed(e.to_string()))?;
    if output.status.success() {
        return Ok(());
    }
    Err(failed(format!(
        "{}: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    )))
}

impl Ifupdown {
    fn record(&self, name: &str) -> PathBuf {
        self.state_dir.join(format!("ifstate.{name}"))
    }

    fn logical(&self, name: &str) -> Option<String> {
        let text = std::fs::read_to_string(self.record(name)).ok()?;
        let logical = text.trim();
        (!logical.is_empty()).then(|| logical.to_owned())
    }
}

#[async_trait::async_trait]
impl NicOwner for Ifupdown {
    fn kind(&self) -> OwnerKind {
        OwnerKind::Ifupdown
    }

    async fn present(&self) -> bool {
        self.state_dir.exists()
    }

    async fn snapshot(&self, link: &LinkRef) -> Result<Option<super::Snapshot>, OwnerError> {
        Ok(self
            .logical(&link.name)
            .map(|logical| super::Snapshot::Ifupdown(Snapshot { logical })))
    }

    async fn hold(&self, name: &str, _before: &super::Snapshot) -> Result<(), OwnerError> {
        run("systemctl", &["mask", "--runtime", &unit(name)], SYSTEMCTL_WAIT).await?;
        Ok(())
    }

    async fn hand_back(&self, link: &LinkRef, before: &super::Snapshot) -> Result<String, OwnerError> {
        let super::Snapshot::Ifupdown(before) = before else {
            return Err(OwnerError::NotMine(self.kind(), before.kind()));
        };
        run("systemctl", &["unmask", "--runtime", &unit(&link.name)], SYSTEMCTL_WAIT).await?;
        if self.logical(&link.name).is_some() {
            return Ok(format!("{} up in ifupdown as before", link.name));
        }
        let stanza = format!("{}={}", link.name, before.logical);
        run("ifup", &[&stanza], IFUP_WAIT).await?;
        Ok(format!("{} brought up by ifupdown again ({stanza})", link.name))
    }
}
