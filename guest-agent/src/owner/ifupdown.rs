//! ifupdown (`/etc/network/interfaces`), when it manages the VF.
//!
//! udev's mark does not reach ifupdown: its own udev rule starts `ifup@IF.service` on every new
//! link named in an `allow-hotplug` stanza, which on the fresh VF would run the stanza again —
//! a static stanza fails on the restored addresses, and dhclient's client ID follows the MAC, so
//! a VF with another MAC loses its address to a NAK and a flush seconds after the restore. So
//! the unit is masked for the migration (runtime only, nothing in /etc changes) and unmasked
//! at the hand-back. ifupdown's record of the interface is then made to say what it said
//! before, so that `ifquery --state` and a later `ifdown` work. Measured on bookworm: masked,
//! the unit is not stopped when the VF goes, so its record stays and its dhclient survives,
//! bound to the link that went away. A static stanza's record is written back if an `ifdown`
//! removed it (its configuration is the restored one). A DHCP stanza on a fresh link has that
//! dhclient killed (a stopping dhclient would release the lease or flush the address) and is
//! brought up by ifupdown again, as hotplug would: dhclient renews the lease it has on file.

use std::path::PathBuf;
use std::time::{Duration, Instant};

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
    /// A dhclient ran for it: the stanza's method is DHCP.
    pub dhcp: bool,
    /// The link's index then: a dhclient started for another index is bound to a link that is
    /// gone.
    pub index: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum IfupdownError {
    #[error("{command}: {why}")]
    Command { command: String, why: String },
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: std::io::Error },
}

/// ifupdown, as an owner of NICs.
pub struct Ifupdown {
    /// Where ifupdown keeps its record of what is up (`/run/network`).
    pub state_dir: PathBuf,
    /// Where ifupdown's dhclient writes its pid (`/run`).
    pub pid_dir: PathBuf,
}

impl Default for Ifupdown {
    fn default() -> Self {
        Self {
            state_dir: PathBuf::from("/run/network"),
            pid_dir: PathBuf::from("/run"),
        }
    }
}

fn unit(name: &str) -> String {
    format!("ifup@{name}.service")
}

/// Runs `program args` within `wait`; its standard output, or why it failed.
async fn run(program: &str, args: &[&str], wait: Duration) -> Result<String, IfupdownError> {
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
        return Ok(String::from_utf8_lossy(&output.stdout).into_owned());
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

    /// The dhclient ifupdown started for `name`, if it runs.
    fn dhclient(&self, name: &str) -> Option<i32> {
        std::fs::read_to_string(self.pid_dir.join(format!("dhclient.{name}.pid")))
            .ok()
            .and_then(|pid| pid.trim().parse::<i32>().ok())
            .filter(|pid| *pid > 1 && PathBuf::from(format!("/proc/{pid}")).exists())
    }

    /// Writes ifupdown's record that `name` is up as `logical`, as `ifup` writes it: the
    /// per-interface file and the line in the combined one.
    fn write_record(&self, name: &str, logical: &str) -> Result<(), IfupdownError> {
        let record = self.record(name);
        std::fs::write(&record, format!("{logical}\n")).map_err(|error| IfupdownError::Io { path: record, error })?;
        self.rewrite_ifstate(name, Some(logical))
    }

    /// Forgets a record whose dhclient is gone, so that `ifup` runs the stanza again.
    fn forget_record(&self, name: &str) -> Result<(), IfupdownError> {
        let record = self.record(name);
        match std::fs::remove_file(&record) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(IfupdownError::Io { path: record, error: e })
            }
            _ => {}
        }
        self.rewrite_ifstate(name, None)
    }

    /// ifupdown's combined `ifstate` file with `name`'s line dropped, and `name=logical`
    /// added when given.
    fn rewrite_ifstate(&self, name: &str, logical: Option<&str>) -> Result<(), IfupdownError> {
        let all = self.state_dir.join("ifstate");
        let text = std::fs::read_to_string(&all).unwrap_or_default();
        let mut lines: Vec<String> = text
            .lines()
            .filter(|l| l.split('=').next() != Some(name))
            .map(str::to_owned)
            .collect();
        lines.extend(logical.map(|logical| format!("{name}={logical}")));
        let out: String = lines.iter().map(|l| format!("{l}\n")).collect();
        std::fs::write(&all, out).map_err(|error| IfupdownError::Io { path: all, error })
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
        Ok(self.logical(&link.name).map(|logical| {
            super::Snapshot::Ifupdown(Snapshot {
                logical,
                dhcp: self.dhclient(&link.name).is_some(),
                index: link.index,
            })
        }))
    }

    async fn hold(&self, name: &str, _before: &super::Snapshot) -> Result<(), OwnerError> {
        run("systemctl", &["mask", "--runtime", &unit(name)], SYSTEMCTL_WAIT).await?;
        Ok(())
    }

    async fn hand_back(&self, link: &LinkRef, before: &super::Snapshot) -> Result<String, OwnerError> {
        let super::Snapshot::Ifupdown(before) = before else {
            return Err(OwnerError::NotMine(self.kind(), before.kind()));
        };
        let name = &link.name;
        run("systemctl", &["unmask", "--runtime", &unit(name)], SYSTEMCTL_WAIT).await?;
        if !before.dhcp {
            if self.logical(name).is_some() {
                return Ok(format!("{name} up in ifupdown as before"));
            }
            self.write_record(name, &before.logical)?;
            return Ok(format!(
                "{name} recorded up in ifupdown again ({name}={})",
                before.logical
            ));
        }
        if link.index == before.index {
            return Ok(format!("{name} up in ifupdown as before, its dhclient running"));
        }
        // The dhclient from before the unplug is bound to the link that went away. Killed, not
        // stopped: a stopping dhclient releases its lease or flushes the address by its script,
        // and the address is the restored one now.
        if let Some(pid) = self.dhclient(name) {
            // SAFETY: kill(2) with a pid read from dhclient's own pid file, checked running.
            if unsafe { libc::kill(pid, libc::SIGKILL) } != 0 {
                return Err(IfupdownError::Command {
                    command: format!("kill -KILL {pid} (dhclient for the unplugged {name})"),
                    why: std::io::Error::last_os_error().to_string(),
                }
                .into());
            }
        }
        // Forgotten first, so that the unit's stop (ifdown) finds nothing to take down.
        self.forget_record(name)?;
        // As hotplug would, for an allow-hotplug stanza: dhclient then lives in that unit, and
        // the next unplug's ifdown finds it. Any other stanza is brought up in a unit of its own.
        let hotplug = run("ifquery", &["--allow", "hotplug", "-l"], SYSTEMCTL_WAIT).await?;
        if hotplug.lines().any(|l| l.trim() == name) {
            run("systemctl", &["restart", &unit(name)], IFUP_WAIT).await?;
        } else {
            let stanza = format!("{name}={}", before.logical);
            let unit = format!("--unit=vfmig-ifup-{name}");
            run(
                "systemd-run",
                &[
                    &unit,
                    "--property=Type=oneshot",
                    "--property=RemainAfterExit=yes",
                    "ifup",
                    &stanza,
                ],
                IFUP_WAIT,
            )
            .await?;
        }
        Ok(format!(
            "{name} brought up by ifupdown again, its dhclient renewing the lease on file"
        ))
    }

    /// `ifup` runs as the hotplug unit's main process (dhclient waits for its lease there): done
    /// once that has exited, the unit staying active.
    async fn configured(&self, link: &LinkRef) -> Result<(), OwnerError> {
        let started = Instant::now();
        loop {
            let pid = run(
                "systemctl",
                &["show", "--property=MainPID", "--value", &unit(&link.name)],
                SYSTEMCTL_WAIT,
            )
            .await?;
            if pid.trim() == "0" {
                return Ok(());
            }
            if started.elapsed() > IFUP_WAIT {
                return Err(IfupdownError::Command {
                    command: format!("ifup {}", link.name),
                    why: format!("still running after {IFUP_WAIT:?}"),
                }
                .into());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The records as `ifup` and `ifdown` leave them: the other interfaces' lines kept.
    #[test]
    fn records_are_written_and_forgotten_as_ifupdown_does() {
        let dir = std::env::temp_dir().join(format!("vfmig-ifstate-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch directory");
        let ifupdown = Ifupdown {
            state_dir: dir.clone(),
            pid_dir: dir.clone(),
        };
        let all = dir.join("ifstate");
        let read = |path: &PathBuf| std::fs::read_to_string(path).expect("readable");
        std::fs::write(&all, "lo=lo\neth0=old\n").expect("writable");

        ifupdown.write_record("eth0", "eth0").expect("written");
        assert_eq!(read(&all), "lo=lo\neth0=eth0\n");
        assert_eq!(read(&dir.join("ifstate.eth0")), "eth0\n");

        ifupdown.forget_record("eth0").expect("forgotten");
        assert_eq!(read(&all), "lo=lo\n");
        assert!(!dir.join("ifstate.eth0").exists());
        ifupdown.forget_record("eth0").expect("forgetting twice is no error");

        ifupdown.forget_record("lo").expect("forgotten");
        assert_eq!(read(&all), "");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
