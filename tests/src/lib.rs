//! The vfmig test bed: throw-away network namespaces, a bridge fabric with a peer host, QEMU
//! processes as source and destination hosts, two libvirt hosts ([`libvirt`]), the guest image
//! they boot, and probes.
//!
//! It must never touch the machine's own network namespace, nor the machine's libvirt:
//! everything is built from namespaces the bed makes for itself, which the kernel frees when
//! the last thread or process in them goes away. QEMU and libvirtd processes are stopped by PID
//! when their guard drops and, if the test thread dies first, killed by the kernel
//! (parent-death signal), so a failed or panicking test leaves nothing behind. Tests use
//! addresses from 198.18.0.0/15 and 2001:db8::/32 only.

pub mod bed;
pub mod compare;
pub mod dbus_daemon;
pub mod dhcp;
pub mod fabric;
pub mod guest_net;
pub mod hook;
pub mod host_cli;
pub mod image;
pub mod libvirt;
pub mod nested;
pub mod netns;
pub mod probe;
pub mod proxy;
pub mod shell;
pub mod sriov_host;
pub mod vm;

/// Held while a test runs VMs; see [`exclusive`].
pub struct Exclusive {
    _lock: nix::fcntl::Flock<std::fs::File>,
}

/// QEMU under TCG wants both cores: tests that boot VMs hold this lock so they run one at a
/// time, whether the harness runs them on parallel threads or two test runs share the machine.
/// It is a lock on a file, so it is released by the kernel even if the holder dies.
pub fn exclusive() -> Exclusive {
    exclusive_or(|| ()).0
}

/// [`exclusive`], calling `waiting` first when another holds the lock, and handing back what it
/// returned once the lock is had: the demo says that it waits for a test, and when it stops.
pub fn exclusive_or<T>(waiting: impl FnOnce() -> T) -> (Exclusive, Option<T>) {
    use nix::fcntl::{Flock, FlockArg};
    let path = std::env::temp_dir().join("vfmig-testbed.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    let file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => return (Exclusive { _lock: lock }, None),
        Err((file, nix::errno::Errno::EWOULDBLOCK)) => file,
        Err((_, e)) => panic!("locking {}: {e}", path.display()),
    };
    let waited = waiting();
    match Flock::lock(file, FlockArg::LockExclusive) {
        Ok(lock) => (Exclusive { _lock: lock }, Some(waited)),
        Err((_, e)) => panic!("locking {}: {e}", path.display()),
    }
}

/// The `vfmig-host` binary cargo built beside the running test (`cargo test --workspace`
/// builds it; a test of this package alone does not).
pub fn host_bin() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    let bin = exe
        .parent()
        .and_then(std::path::Path::parent)
        .expect("target directory")
        .join("vfmig-host");
    assert!(bin.exists(), "{} is missing: build the workspace first", bin.display());
    bin
}

/// Runs `cmd` to its end; its standard output, or the test fails with its standard error.
pub fn run_ok(cmd: &mut std::process::Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Has the kernel kill `cmd`'s process if the thread that starts it (the test) dies without
/// running its guards.
pub fn die_with_parent(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe, as a pre_exec hook must be.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}
