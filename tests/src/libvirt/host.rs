//! One libvirt "host" of the bed: a libvirtd in namespaces of its own.
//!
//! - network: the host's namespace ([`super::network`]);
//! - mount: private, with the host's own directories bound over /etc/libvirt (a copy of the
//!   machine's, with the bed's libvirtd.conf and qemu.conf), /var/lib/libvirt,
//!   /var/cache/libvirt, /var/log/libvirt and /run/libvirt, an /etc/hosts naming both hosts, an
//!   empty /etc/resolv.conf, a tmpfs /run, and the namespace's own /proc and /sys;
//! - UTS: the host's name;
//! - PID: tini is its PID 1, so it reaps what QEMU leaves when it daemonizes (guests and
//!   libvirt's capability probes), and when tini ends the kernel kills every process left in
//!   the namespace: no libvirtd or QEMU outlives its host.
//!
//! `unshare`, started from the test's thread with a parent-death signal, makes the namespaces
//! and is tini's parent (`--kill-child`): a test that dies takes its hosts with it. A host is
//! stopped by PID: SIGTERM to tini (held by a pidfd, so a recycled PID is never hit), which
//! passes it to libvirtd; SIGKILL if libvirtd does not end in time.

use std::fs;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use crate::netns::Namespace;

use super::config::{self, TCP_PORT};
use super::network::host_addr;
use super::virsh::{self, virsh, VirshError};
use super::{capabilities, BedError};

/// The host's private directories: where each is in the host's directory, and where libvirtd
/// sees it.
const PRIVATE: [(&str, &str); 7] = [
    ("etc", "/etc/libvirt"),
    ("lib", "/var/lib/libvirt"),
    ("cache", "/var/cache/libvirt"),
    ("log", "/var/log/libvirt"),
    ("run", "/run/libvirt"),
    ("vfmig-etc", "/etc/vfmig"),
    ("vfmig-log", "/var/log/vfmig"),
];

/// Run by `unshare` in the host's fresh namespaces: mounts what makes the host, then becomes
/// tini with libvirtd under it. `-p`: libvirtd's default pid file is /run/libvirtd.pid, outside
/// /run/libvirt, where a second libvirtd sharing /run fails to take it; /run is private here
/// anyway, and the pid file stays with libvirt's other runtime files.
///
/// libvirtd runs on one CPU, always the same ([`home_cpu`]): its capability cache records the
/// host's CPUID, including leaf 0xb/0x1f, whose EDX is the x2APIC ID of the CPU it was read on.
/// A libvirtd on another CPU than the one that wrote the cache finds "host cpuid changed" and
/// probes QEMU again (seen in 1 of 3 starts here). libvirt gives QEMU every online CPU (it does
/// not pass its own affinity on), so the guests are not pinned.
const ENTER: &str = r#"set -e
dir=$1
mount -t sysfs sysfs /sys
mount -t tmpfs -o mode=755 run /run
# /var/lock is /run/lock, where libvirt locks a chardev it hands out (virDomainOpenChannel).
mkdir /run/libvirt /run/lock
mount --bind "$dir/etc" /etc/libvirt
mount --bind "$dir/lib" /var/lib/libvirt
mount --bind "$dir/cache" /var/cache/libvirt
mount --bind "$dir/log" /var/log/libvirt
mount --bind "$dir/run" /run/libvirt
# vfmig's hook configuration and log, where the vfmig-host package puts them (made on the
# machine if it has no such directories: a bind mount needs somewhere to go).
mkdir -p /etc/vfmig /var/log/vfmig
mount --bind "$dir/vfmig-etc" /etc/vfmig
mount --bind "$dir/vfmig-log" /var/log/vfmig
mount --bind "$dir/hosts" /etc/hosts
mount --bind "$dir/resolv.conf" /etc/resolv.conf
hostname "$2"
exec taskset -c "$3" tini -- libvirtd --listen -f /etc/libvirt/libvirtd.conf -p /run/libvirt/libvirtd.pid
"#;

/// How long libvirtd may take to answer: a cold start probes QEMU (1.4–1.7 s here, idle).
const START_DEADLINE: Duration = Duration::from_secs(60);
/// How long libvirtd may take to end after SIGTERM before it is killed.
const STOP_DEADLINE: Duration = Duration::from_secs(10);

/// How a host's libvirtd started.
#[derive(Clone, Copy, Debug)]
pub struct Startup {
    /// From spawning it to its first answer over TCP.
    pub took: Duration,
    /// It was given a capability cache.
    pub seeded: bool,
    /// It probed QEMU all the same (the cache was stale, or there was none).
    pub probed: bool,
}

pub struct Host {
    /// 1 or 2.
    pub n: u8,
    /// Its host name, also in every host's /etc/hosts.
    pub name: String,
    /// Its address on the management network, where libvirtd listens.
    pub addr: Ipv4Addr,
    /// Its private directories, as the test sees them (see [`Host::path`]).
    pub dir: PathBuf,
    pub net: Namespace,
    daemon: Option<Daemon>,
}

/// A running libvirtd's processes.
struct Daemon {
    /// Our child; its only child is tini.
    unshare: Child,
    /// tini, once libvirtd answers.
    tini: Option<OwnedFd>,
}

impl Host {
    /// Lays out host `n`'s directories and configuration under `root`; libvirtd is not started.
    pub(super) fn prepare(n: u8, root: &Path, hosts: &[(String, Ipv4Addr)]) -> Result<Self, BedError> {
        let name = format!("lvh{n}");
        let addr = host_addr(n);
        let dir = root.join(&name);
        let io = |what: String| move |error| BedError::Io { what, error };
        for (sub, _) in PRIVATE.iter().filter(|(sub, _)| *sub != "etc") {
            fs::create_dir_all(dir.join(sub)).map_err(io(format!("{}/{sub}", dir.display())))?;
        }
        // libvirt writes QEMU's log there and does not create it.
        fs::create_dir_all(dir.join("log/qemu")).map_err(io(format!("{}/log/qemu", dir.display())))?;
        let etc = dir.join("etc");
        let copied = Command::new("cp")
            .arg("-a")
            .arg("/etc/libvirt")
            .arg(&etc)
            .status()
            .map_err(io("cp /etc/libvirt".into()))?;
        if !copied.success() {
            return Err(BedError::Io {
                what: format!("cp -a /etc/libvirt {}", etc.display()),
                error: io::Error::other(copied.to_string()),
            });
        }
        let files = [
            (
                etc.join("libvirtd.conf"),
                config::libvirtd_conf(addr, &config::host_uuid(n)),
            ),
            (etc.join("qemu.conf"), config::qemu_conf(addr)),
            (dir.join("hosts"), config::etc_hosts(hosts)),
            (dir.join("resolv.conf"), String::new()),
        ];
        for (path, text) in files {
            fs::write(&path, text).map_err(io(path.display().to_string()))?;
        }
        let host = Self {
            n,
            name,
            addr,
            dir,
            net: Namespace::new()?,
            daemon: None,
        };
        host.write_executable(Path::new(config::IFUP_PATH), &config::ifup())?;
        Ok(host)
    }

    /// Puts `script` in the host's /etc/libvirt/hooks/qemu.d as `name`. libvirt runs what is
    /// there when libvirtd starts (scripts added later are not run; their content may change).
    pub fn add_hook(&self, name: &str, script: &str) -> Result<(), BedError> {
        self.write_executable(&Path::new("/etc/libvirt/hooks/qemu.d").join(name), script)
    }

    /// Installs vfmig's shipped hook (`host-agent/libvirt/vfmig`) as the package does, as
    /// /etc/libvirt/hooks/qemu.d/vfmig, calling the `vfmig-host` at `binary`; and `config` as
    /// /etc/vfmig/host.toml.
    pub fn install_vfmig_hook(&self, binary: &Path, config: &str) -> Result<(), BedError> {
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../host-agent/libvirt/vfmig");
        let script = fs::read_to_string(&shipped).map_err(|error| BedError::Io {
            what: shipped.display().to_string(),
            error,
        })?;
        let script = script.replace("/usr/bin/vfmig-host", &binary.display().to_string());
        self.add_hook("vfmig", &script)?;
        self.write_file(Path::new("/etc/vfmig/host.toml"), config, 0o644)
    }

    fn write_executable(&self, inside: &Path, text: &str) -> Result<(), BedError> {
        self.write_file(inside, text, 0o755)
    }

    fn write_file(&self, inside: &Path, text: &str, mode: u32) -> Result<(), BedError> {
        let path = self.path(inside).ok_or_else(|| BedError::Io {
            what: inside.display().to_string(),
            error: io::Error::other("not under the host's private directories"),
        })?;
        let written = (|| {
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent)?;
            }
            fs::write(&path, text)?;
            fs::set_permissions(&path, fs::Permissions::from_mode(mode))
        })();
        written.map_err(|error| BedError::Io {
            what: path.display().to_string(),
            error,
        })
    }

    /// Where a path under one of libvirt's directories, as libvirtd and its guests see it,
    /// is for the test; `None` for a path outside them.
    pub fn path(&self, inside: &Path) -> Option<PathBuf> {
        PRIVATE.iter().find_map(|(sub, mount)| {
            inside
                .strip_prefix(mount)
                .ok()
                .map(|rest| self.dir.join(sub).join(rest))
        })
    }

    /// The host's libvirt URI, as the other host and virsh reach it.
    pub fn uri(&self) -> String {
        format!("qemu+tcp://{}:{TCP_PORT}/system", self.addr)
    }

    /// `virsh args…` against this host, from inside its network namespace.
    pub fn virsh(&self, args: &[&str]) -> Result<String, VirshError> {
        self.virsh_within(args, virsh::DEADLINE)
    }

    pub fn virsh_within(&self, args: &[&str], deadline: Duration) -> Result<String, VirshError> {
        virsh(&self.net, &self.uri(), args, deadline)
    }

    /// The names of the domains libvirt knows on this host, running or only defined.
    pub fn domains(&self) -> Result<Vec<String>, VirshError> {
        Ok(self
            .virsh(&["list", "--all", "--name"])?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect())
    }

    /// A domain's state as virsh words it ("running", "shut off"), or why there is none.
    pub fn state(&self, domain: &str) -> Result<String, VirshError> {
        Ok(self.virsh(&["domstate", domain])?.trim().into())
    }

    /// What libvirtd wrote to stderr, for failure messages.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("libvirtd.err")).unwrap_or_default()
    }

    /// Starts libvirtd, its capability cache seeded when there is a seed, and waits until it
    /// answers over TCP.
    pub(super) fn start(&mut self) -> Result<Startup, BedError> {
        let cache = self.dir.join("cache").join(capabilities::SUBDIR);
        let io = |what: &str| {
            let what = what.to_owned();
            move |error| BedError::Io { what, error }
        };
        let seeded = capabilities::seed(&cache).map_err(io("seeding the capability cache"))?;
        let err = fs::File::create(self.dir.join("libvirtd.err")).map_err(io("libvirtd.err"))?;
        let mut cmd = Command::new("unshare");
        cmd.args([
            "--pid",
            "--fork",
            "--kill-child",
            "--mount-proc",
            "--mount",
            "--uts",
            "--propagation",
            "private",
            "sh",
            "-c",
            ENTER,
            "sh",
        ])
        .arg(&self.dir)
        .arg(&self.name)
        .arg(home_cpu().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err);
        virsh::enter(&mut cmd, &self.net);
        crate::die_with_parent(&mut cmd);
        let since = SystemTime::now();
        let started = Instant::now();
        let mut unshare = cmd.spawn().map_err(io("spawning unshare"))?;
        let up = self.wait_up(&mut unshare, started);
        let daemon = self.daemon.insert(Daemon { unshare, tini: None });
        up?;
        let took = started.elapsed();
        daemon.tini = Some(child_of(&daemon.unshare).map_err(io("finding tini"))?);
        let probed = capabilities::probed_since(&cache, since).map_err(io("the capability cache"))?;
        if probed {
            capabilities::keep(&cache).map_err(io("keeping the capability cache"))?;
        }
        Ok(Startup { took, seeded, probed })
    }

    /// Waits until libvirtd answers virsh over TCP, or `unshare` has ended.
    fn wait_up(&self, unshare: &mut Child, started: Instant) -> Result<(), BedError> {
        loop {
            if let Ok(Some(status)) = unshare.try_wait() {
                return Err(BedError::Exited {
                    host: self.name.clone(),
                    status,
                    log: self.log(),
                });
            }
            if self.virsh_within(&["version"], Duration::from_secs(10)).is_ok() {
                return Ok(());
            }
            if started.elapsed() > START_DEADLINE {
                return Err(BedError::NotUp {
                    host: self.name.clone(),
                    after: START_DEADLINE,
                    log: self.log(),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `program` run on this host as its own programs run: in its network and mount
    /// namespaces, where libvirt's sockets and the guests' channels are at their paths.
    pub fn command(&self, program: &Path) -> Option<Command> {
        let tini = children(&self.daemon.as_ref()?.unshare).into_iter().next()?;
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--target={tini}"))
            .args(["--net", "--mount", "--"])
            .arg(program);
        Some(cmd)
    }

    /// The host PIDs of every process in the host's PID namespace (tini, libvirtd, QEMU).
    pub fn processes(&self) -> Vec<u32> {
        self.pid_namespace().map(in_pid_namespace).unwrap_or_default()
    }

    /// The host's PID namespace (its inode), while libvirtd runs.
    pub fn pid_namespace(&self) -> Option<u64> {
        let tini = children(&self.daemon.as_ref()?.unshare).into_iter().next()?;
        pid_namespace(tini)
    }

    /// Stops libvirtd and everything in its namespaces: SIGTERM to tini, SIGKILL if it has not
    /// ended within [`STOP_DEADLINE`]. Domains still running die with the PID namespace.
    pub fn stop(&mut self) {
        let Some(mut daemon) = self.daemon.take() else {
            return;
        };
        let mut ended = || matches!(daemon.unshare.try_wait(), Ok(Some(_)));
        if let Some(tini) = daemon.tini.take() {
            signal(&tini, libc::SIGTERM);
            let until = Instant::now() + STOP_DEADLINE;
            while !ended() && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(20));
            }
            if !ended() {
                signal(&tini, libc::SIGKILL);
            }
        } else {
            // Not yet known: unshare's --kill-child takes tini, and the namespace, with it.
            let _ = daemon.unshare.kill();
        }
        let _ = daemon.unshare.wait();
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The lowest CPU this process may run on, where every libvirtd of the bed runs.
fn home_cpu() -> usize {
    nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0))
        .ok()
        .and_then(|set| (0..nix::sched::CpuSet::count()).find(|&cpu| set.is_set(cpu).unwrap_or(false)))
        .unwrap_or(0)
}

/// The PIDs of `child`'s children.
fn children(child: &Child) -> Vec<u32> {
    let pid = child.id();
    fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// A pidfd on `unshare`'s one child, tini: opened, then checked to still be that child, so it
/// refers to tini and no process that took a recycled PID.
fn child_of(unshare: &Child) -> io::Result<OwnedFd> {
    let missing = || io::Error::other("unshare has no child");
    let pid = *children(unshare).first().ok_or_else(missing)?;
    // SAFETY: pidfd_open takes a PID and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the system call returned a descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    if !children(unshare).contains(&pid) {
        return Err(missing());
    }
    Ok(fd)
}

fn signal(pidfd: &OwnedFd, signal: i32) {
    // SAFETY: pidfd_send_signal with no siginfo and no flags; a process already gone is ESRCH.
    unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        );
    }
}

/// The inode of process `pid`'s PID namespace.
fn pid_namespace(pid: u32) -> Option<u64> {
    fs::metadata(format!("/proc/{pid}/ns/pid")).ok().map(|m| m.ino())
}

/// Every process whose PID namespace is `ns`.
pub fn in_pid_namespace(ns: u64) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|pid| pid_namespace(*pid) == Some(ns))
        .collect()
}
