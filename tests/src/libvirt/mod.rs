//! The libvirt bed: two hosts, each a real libvirtd (TCP, no authentication) in namespaces of
//! its own ([`host`]), joined by a management network and sharing the guests' network with a
//! peer ([`network`]), and the test guest as libvirt domain XML ([`domain`]). What vfmig's
//! libvirt backend is tested against: `virsh migrate` between the hosts, libvirt's hooks on
//! each, the agent's channel where libvirt puts it.
//!
//! A test fills a host's hook directory before its libvirtd starts
//! ([`LibvirtBed::start_with`], [`Host::add_hook`]), drives libvirt with virsh ([`Host::virsh`],
//! run in the host's network namespace), reads what libvirt and the hooks wrote through
//! [`Host::path`], and probes the guest from [`LibvirtBed::peer`] as on the QEMU bed.
//!
//! The bed never touches the machine's libvirt: no system libvirtd is used or needed, and the
//! hosts' directories, mounts and namespaces are their own. Dropping the bed (also when a test
//! panics) destroys the domains and stops each host by PID; a test process that dies takes the
//! hosts with it (parent-death signal, PID namespaces).

pub mod capabilities;
pub mod config;
pub mod domain;
pub mod host;
pub mod network;
pub mod virsh;

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub use domain::{fresh_vf_xml, GuestDomain};
pub use host::{Host, Startup};
pub use virsh::VirshError;

use crate::image::{guest_image, GuestImage};
use crate::netns::{Namespace, NetnsError};
use crate::vm::ScratchDir;
use crate::{exclusive, Exclusive};

#[derive(Debug, thiserror::Error)]
pub enum BedError {
    #[error("{what}: {error}")]
    Io { what: String, error: std::io::Error },
    #[error("the guest image: {0}")]
    Image(String),
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error(transparent)]
    Virsh(#[from] VirshError),
    #[error("libvirtd on {host} did not answer within {after:?}; it said: {log}")]
    NotUp { host: String, after: Duration, log: String },
    #[error("libvirtd on {host} ended ({status}) while starting; it said: {log}")]
    Exited {
        host: String,
        status: std::process::ExitStatus,
        log: String,
    },
}

/// Two libvirt hosts and the peer, up.
pub struct LibvirtBed {
    /// Host 1 (lvh1, 198.18.10.1) and host 2 (lvh2, 198.18.10.2).
    pub hosts: [Host; 2],
    /// The peer on the guests' network, with the fabric's peer addresses.
    pub peer: Namespace,
    /// The guest image the bed's domains boot.
    pub image: GuestImage,
    /// How each host's libvirtd started.
    pub startups: [Startup; 2],
    /// From laying out the hosts to both answering.
    pub started_in: Duration,
    /// Where the bed keeps what is not a host's: domain XML files, say.
    pub dir: PathBuf,
    stopped: bool,
    _scratch: ScratchDir,
    _one: Exclusive,
}

impl LibvirtBed {
    /// Both hosts, without hooks.
    pub fn start() -> Result<Self, BedError> {
        Self::start_with(|_| Ok(()))
    }

    /// Both hosts, each given to `prepare` (to add hooks, say) before its libvirtd starts.
    /// Host 1 starts first: with no capability cache to seed it, it probes QEMU and its cache
    /// then seeds host 2.
    pub fn start_with(prepare: impl FnMut(&Host) -> Result<(), BedError>) -> Result<Self, BedError> {
        Self::start_holding(exclusive(), prepare)
    }

    /// [`LibvirtBed::start_with`], the machine's VM lock already taken (the demo takes it
    /// itself, to show that it waits for it).
    pub fn start_holding(
        one: Exclusive,
        mut prepare: impl FnMut(&Host) -> Result<(), BedError>,
    ) -> Result<Self, BedError> {
        let image = guest_image().map_err(BedError::Image)?.clone();
        let started = Instant::now();
        let scratch = ScratchDir::new("libvirt").map_err(|error| BedError::Io {
            what: "the bed's directory".into(),
            error,
        })?;
        let names = [1, 2].map(|n| (format!("lvh{n}"), network::host_addr(n)));
        let mut hosts = [
            Host::prepare(1, &scratch.0, &names)?,
            Host::prepare(2, &scratch.0, &names)?,
        ];
        let peer = Namespace::new()?;
        network::wire([&hosts[0].net, &hosts[1].net], &peer)?;
        for host in &hosts {
            prepare(host)?;
        }
        let startups = [hosts[0].start()?, hosts[1].start()?];
        Ok(Self {
            hosts,
            peer,
            image,
            startups,
            started_in: started.elapsed(),
            dir: scratch.0.clone(),
            stopped: false,
            _scratch: scratch,
            _one: one,
        })
    }

    /// Writes `domain`'s XML for the bed's image to the bed's directory; its path, for
    /// `virsh define`.
    pub fn domain_xml(&self, domain: &GuestDomain) -> Result<PathBuf, BedError> {
        let path = self.dir.join(format!("{}.xml", domain.name));
        std::fs::write(&path, domain.xml(&self.image)).map_err(|error| BedError::Io {
            what: path.display().to_string(),
            error,
        })?;
        Ok(path)
    }
    /// `vfmig-host migrate --libvirt DOMAIN --vf ua-vf` run on host 1 towards host 2, as an
    /// operator runs it there, the fresh VF an emulated NIC with `fresh_mac`; `None` when host 1
    /// does not run.
    pub fn vfmig_migrate(
        &self,
        host_bin: &std::path::Path,
        domain: &str,
        fresh_mac: &str,
    ) -> Option<std::process::Command> {
        let [one, two] = &self.hosts;
        let plug = serde_json::json!({ "xml": fresh_vf_xml(fresh_mac) }).to_string();
        let mut cmd = one.command(host_bin)?;
        cmd.args([
            "migrate",
            "--libvirt",
            domain,
            "--connect",
            &one.uri(),
            "--uri",
            &two.uri(),
        ])
        .args(["--vf", "ua-vf", "--plug-device", &plug]);
        Some(cmd)
    }

    /// What the bed has on the machine, to check afterwards that none of it is left.
    pub fn footprint(&self) -> Footprint {
        let net = |ns: &Namespace| {
            std::fs::File::from(ns.fd().try_clone().expect("duplicating a namespace descriptor"))
                .metadata()
                .map(|m| m.ino())
                .expect("a namespace descriptor's inode")
        };
        Footprint {
            pid_namespaces: self.hosts.iter().filter_map(Host::pid_namespace).collect(),
            net_namespaces: [&self.hosts[0].net, &self.hosts[1].net, &self.peer].map(net).to_vec(),
            dir: self.dir.clone(),
        }
    }

    /// Destroys every running domain, then stops both hosts; how long it took.
    pub fn stop(mut self) -> Duration {
        self.teardown()
    }

    fn teardown(&mut self) -> Duration {
        let started = Instant::now();
        if !std::mem::replace(&mut self.stopped, true) {
            for host in &mut self.hosts {
                if let Ok(running) = host.virsh(&["list", "--name"]) {
                    for domain in running.lines().map(str::trim).filter(|l| !l.is_empty()) {
                        let _ = host.virsh(&["destroy", domain]);
                    }
                }
                host.stop();
            }
        }
        started.elapsed()
    }
}

impl Drop for LibvirtBed {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// A bed's processes, namespaces and files, by identity rather than by name.
#[derive(Clone, Debug)]
pub struct Footprint {
    pid_namespaces: Vec<u64>,
    net_namespaces: Vec<u64>,
    dir: PathBuf,
}

impl Footprint {
    /// What of the bed is still there: processes in its PID or network namespaces, mounts of
    /// its directories in this mount namespace, the directories themselves.
    pub fn left_behind(&self) -> Vec<String> {
        let mut left = Vec::new();
        for ns in &self.pid_namespaces {
            for pid in host::in_pid_namespace(*ns) {
                let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                left.push(format!("process {pid} ({})", cmdline.replace('\0', " ").trim()));
            }
        }
        for ns in &self.net_namespaces {
            for pid in in_net_namespace(*ns) {
                left.push(format!("process {pid} in the bed's network namespace {ns}"));
            }
        }
        let dir = self.dir.display().to_string();
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        left.extend(
            mounts
                .lines()
                .filter(|l| l.contains(&dir))
                .map(|l| format!("mount {l}")),
        );
        if self.dir.exists() {
            left.push(format!("directory {dir}"));
        }
        left
    }
}

/// Every process with a thread in network namespace `ns`.
fn in_net_namespace(ns: u64) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_dir(format!("/proc/{pid}/task")).is_ok_and(|tasks| {
                tasks
                    .flatten()
                    .any(|t| std::fs::metadata(t.path().join("ns/net")).is_ok_and(|m| m.ino() == ns))
            })
        })
        .collect()
}
