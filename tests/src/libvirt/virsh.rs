//! virsh, run in a host's network namespace against that host's libvirtd over TCP: the tool an
//! operator uses, independent of the code under test. Each call has a deadline (coreutils'
//! `timeout`), so a libvirtd that stops answering fails the test instead of hanging it.

use std::os::fd::{AsFd, AsRawFd};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::netns::Namespace;

#[derive(Debug, thiserror::Error)]
pub enum VirshError {
    #[error("cannot run virsh {args}: {error}")]
    Spawn { args: String, error: std::io::Error },
    #[error("virsh {args} exited {status}: {stderr}")]
    Failed {
        args: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("virsh {args} did not finish within {after:?}")]
    TimedOut { args: String, after: Duration },
}

/// How long a virsh call may take unless its caller says otherwise.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// `timeout`'s exit status when it had to stop the command.
const TIMED_OUT: i32 = 124;

/// Runs `virsh -c uri args…` inside `ns` within `deadline`; its standard output.
pub fn virsh(ns: &Namespace, uri: &str, args: &[&str], deadline: Duration) -> Result<String, VirshError> {
    let shown = args.join(" ");
    let mut cmd = Command::new("timeout");
    cmd.arg(format!("{}s", deadline.as_secs_f64()))
        .args(["virsh", "-q", "-c", uri])
        .args(args)
        .stdin(Stdio::null());
    enter(&mut cmd, ns);
    crate::die_with_parent(&mut cmd);
    let out = cmd.output().map_err(|error| VirshError::Spawn {
        args: shown.clone(),
        error,
    })?;
    if out.status.code() == Some(TIMED_OUT) {
        return Err(VirshError::TimedOut {
            args: shown,
            after: deadline,
        });
    }
    if !out.status.success() {
        return Err(VirshError::Failed {
            args: shown,
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().into(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into())
}

/// Has `cmd` run in `ns`'s network namespace, whichever thread spawns it.
pub(crate) fn enter(cmd: &mut Command, ns: &Namespace) {
    use std::os::unix::process::CommandExt;
    let fd = ns.fd().as_fd().as_raw_fd();
    // SAFETY: setns is a plain system call, async-signal-safe as a pre_exec hook must be; the
    // descriptor stays open in the parent (which owns the Namespace) until the child has run.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}
