//! Per-thread network namespaces (netavark's pattern: `unshare(CLONE_NEWNET)` on the test's
//! own thread, so a `#[tokio::test]` on a current-thread runtime runs wholly inside it).

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::process::{Command, Stdio};

use nix::sched::{setns, unshare, CloneFlags};

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("cannot create a network namespace (tests need root): {0}")]
    Unshare(nix::Error),
    #[error("cannot enter network namespace: {0}")]
    Setns(nix::Error),
    #[error("cannot open this thread's namespace: {0}")]
    Open(std::io::Error),
    #[error("cannot run ip: {0}")]
    Spawn(std::io::Error),
    #[error("ip -batch failed ({status}): {stderr}")]
    Ip {
        status: std::process::ExitStatus,
        stderr: String,
    },
}

/// Moves the calling thread into a new, empty network namespace and brings up its loopback.
pub fn enter_fresh() -> Result<(), NetnsError> {
    unshare(CloneFlags::CLONE_NEWNET).map_err(NetnsError::Unshare)?;
    ip_batch("link set lo up\n")
}

/// Runs iproute2 commands (one per line, `ip -batch` syntax) in the calling thread's
/// namespace: a child forked from a thread inherits that thread's namespace. Tests set up
/// state with iproute2 so that vfmig's own netlink code is checked against an independent tool.
pub fn ip_batch(commands: &str) -> Result<(), NetnsError> {
    let mut child = Command::new("ip")
        .args(["-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(NetnsError::Spawn)?;
    // ip stops reading at its first failing line; its exit status and stderr say why, so a
    // broken pipe on our side is only reported when ip itself claims success.
    let written = child.stdin.take().expect("piped").write_all(commands.as_bytes());
    let out = child.wait_with_output().map_err(NetnsError::Spawn)?;
    if !out.status.success() {
        return Err(NetnsError::Ip {
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).into(),
        });
    }
    written.map_err(NetnsError::Spawn)
}

/// A second namespace, held open by a descriptor, for a peer host beside the test's own.
/// Dropping it releases the namespace once no thread is inside.
pub struct Namespace {
    fd: OwnedFd,
}

impl Namespace {
    /// Creates a fresh namespace (from a short-lived thread, so the caller stays where it is).
    pub fn new() -> Result<Self, NetnsError> {
        std::thread::scope(|s| {
            s.spawn(|| {
                enter_fresh()?;
                let file = File::open("/proc/thread-self/ns/net").map_err(NetnsError::Open)?;
                Ok(Self { fd: file.into() })
            })
            .join()
            .expect("namespace thread panicked")
        })
    }

    /// The descriptor, for moving a link into this namespace (IFLA_NET_NS_FD).
    pub fn fd(&self) -> &OwnedFd {
        &self.fd
    }

    /// Runs `f` on a thread inside this namespace and returns its result.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, NetnsError> {
        std::thread::scope(|s| {
            s.spawn(|| {
                setns(self.fd.as_fd(), CloneFlags::CLONE_NEWNET).map_err(NetnsError::Setns)?;
                Ok(f())
            })
            .join()
            .expect("thread in namespace panicked")
        })
    }
}
