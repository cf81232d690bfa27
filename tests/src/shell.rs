//! Commands run in the test guest, for tests that must look inside it (sysfs counters, module
//! loading). The guest serves a shell on its own virtserialport (`org.vfmig.test.shell`, see
//! images/guest-init): a line in is one command; its output comes back followed by
//! `vfmig-rc=N`. The guest discards what arrives while its side is closed, so a session starts
//! by retrying a no-op until it is answered.

use std::path::Path;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use crate::vm::when_listening;

/// The shell port's name in the guest.
pub const SHELL_PORT: &str = "org.vfmig.test.shell";

const RC: &str = "vfmig-rc=";

pub struct GuestShell {
    stream: BufReader<UnixStream>,
}

impl GuestShell {
    /// Connects and waits, within `deadline`, until the guest answers.
    ///
    /// The guest may hold on to what was written before it opened its side and answer it
    /// later, or drop it: each try is an `echo` of a marker of its own, and only the newest
    /// marker counts, so answers to earlier tries are read past and never taken for the
    /// answer to a later command.
    pub async fn connect(path: &Path, deadline: Duration) -> Result<Self, String> {
        let until = Instant::now() + deadline;
        let refused = |e: &std::io::Error| e.kind() == std::io::ErrorKind::ConnectionRefused;
        let stream = when_listening(refused, || UnixStream::connect(path))
            .await
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let mut shell = Self {
            stream: BufReader::new(stream),
        };
        let mut wait = Duration::from_millis(100);
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let marker = format!("vfmig-sync-{attempt}");
            match shell.run(&format!("echo {marker}"), wait).await {
                Ok((0, out)) if out.lines().last() == Some(marker.as_str()) => return Ok(shell),
                Ok(_) => {
                    // An answer to an earlier try: the newest one's is still to come.
                    if shell.answer_to(&marker, until).await.is_ok() {
                        return Ok(shell);
                    }
                }
                Err(_) => {}
            }
            if Instant::now() > until {
                return Err(format!("the guest shell did not answer within {deadline:?}"));
            }
            wait = (wait * 2).min(Duration::from_secs(1));
        }
    }

    /// Reads until `marker` and the status after it.
    async fn answer_to(&mut self, marker: &str, until: Instant) -> Result<(), String> {
        let read = async {
            let mut seen = false;
            loop {
                let mut line = String::new();
                if self.stream.read_line(&mut line).await.map_err(|e| e.to_string())? == 0 {
                    return Err("the guest shell closed".to_string());
                }
                match line.trim_end() {
                    l if l == marker => seen = true,
                    l if seen && l.starts_with(RC) => return Ok(()),
                    _ => {}
                }
            }
        };
        let left = until.saturating_duration_since(Instant::now());
        tokio::time::timeout(left, read)
            .await
            .map_err(|_| format!("no answer to {marker}"))?
    }

    /// Runs `command` in the guest; its exit status and output (stdout and stderr).
    pub async fn run(&mut self, command: &str, deadline: Duration) -> Result<(i32, String), String> {
        assert!(!command.contains('\n'), "one command per line");
        let exchange = async {
            self.stream
                .get_mut()
                .write_all(format!("{command}\n").as_bytes())
                .await
                .map_err(|e| e.to_string())?;
            let mut output = String::new();
            loop {
                let mut line = String::new();
                if self.stream.read_line(&mut line).await.map_err(|e| e.to_string())? == 0 {
                    return Err("the guest shell closed".to_string());
                }
                if let Some(rc) = line.trim_end().strip_prefix(RC) {
                    let rc = rc.parse().map_err(|_| format!("bad status line {line:?}"))?;
                    return Ok((rc, output));
                }
                output.push_str(&line);
            }
        };
        tokio::time::timeout(deadline, exchange)
            .await
            .map_err(|_| format!("`{command}` did not finish within {deadline:?}"))?
    }

    /// Starts `command` without waiting, from code that cannot await (a migration's observer,
    /// at a phase boundary). Its output stays unread: use a new shell for anything after.
    pub fn start(&self, command: &str) -> Result<(), String> {
        let line = format!("{command}\n");
        match self.stream.get_ref().try_write(line.as_bytes()) {
            Ok(n) if n == line.len() => Ok(()),
            Ok(n) => Err(format!("only {n} bytes of `{command}` were taken")),
            Err(e) => Err(format!("`{command}`: {e}")),
        }
    }

    /// Runs `command` and returns its output; a non-zero status is an error carrying it.
    pub async fn ok(&mut self, command: &str) -> Result<String, String> {
        match self.run(command, Duration::from_secs(60)).await? {
            (0, out) => Ok(out),
            (rc, out) => Err(format!("`{command}` exited {rc}: {out}")),
        }
    }

    /// UDP datagrams the guest's stack has received for closed ports (`NoPorts` in
    /// /proc/net/snmp): a count of what reached it that no application adds noise to.
    pub async fn udp_no_ports(&mut self) -> Result<u64, String> {
        let snmp = self.ok("cat /proc/net/snmp").await?;
        let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
        let (names, values) = (udp.next().ok_or("no Udp: line")?, udp.next().ok_or("no Udp: values")?);
        let at = names
            .split_whitespace()
            .position(|n| n == "NoPorts")
            .ok_or("no NoPorts")?;
        values
            .split_whitespace()
            .nth(at)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("unreadable Udp: line {values:?}"))
    }
}
