//! A QEMU process playing one host's VM: q35 under TCG (KVM when `VFMIG_ACCEL=kvm`), the test
//! guest, a QMP socket, the agent's virtserialport on a unix socket, and the VF stand-in — an
//! e1000e on a PCIe root port with `failover_pair_id` set (what lets QEMU `device_del` it
//! during a migration) and no option ROM (which would be a RAM block the destination lacks).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use vfmig_host::channel::{ChannelError, GuestChannel, Session};
use vfmig_host::qmp::{Qmp, QmpError};

use crate::fabric::{GUEST2_V4, GUEST_V4, GUEST_V6, PREFIX_V4, PREFIX_V6};
use crate::image::{Disk, GuestImage};
use crate::shell::{GuestShell, SHELL_PORT};

/// The virtio port's name, as the guest agent looks for it.
pub const AGENT_PORT: &str = "org.vfmig.agent.0";

/// The monitor socket a `vfmig-host` process uses, beside the test's own `qmp.sock`.
pub const HOST_QMP: &str = "host-qmp.sock";

/// The VF's device id in QEMU.
pub const VF_ID: &str = "vf";
/// A second VF's, on a second network (`VmConfig::second_vf`).
pub const VF2_ID: &str = "vf2";

/// The netdev and the root port of the VF with id `id`.
fn slot(id: &str) -> (&'static str, &'static str) {
    if id == VF2_ID {
        ("vf1", "rp4")
    } else {
        ("vf0", "rp1")
    }
}

/// The e1000e VF stand-in as a `-device` argument; `pair` names its failover partner (a
/// name of no device unless QEMU's own failover is set up).
fn vf_device_arg(id: &str, mac: &str, pair: &str) -> String {
    let (netdev, bus) = slot(id);
    format!("e1000e,netdev={netdev},id={id},bus={bus},romfile=,mac={mac},failover_pair_id={pair}")
}

/// The same device as `device_add` arguments, for hot-plugging a fresh VF of model `driver`
/// (`e1000e`, or `igb` for a replacement of another model). QEMU refuses `failover_pair_id`
/// on an igb (its SR-IOV makes it multifunction), so an igb goes without: it cannot itself be
/// unplugged during a later migration.
pub fn vf_device_json(driver: &str, id: &str, mac: &str) -> serde_json::Value {
    let (netdev, bus) = slot(id);
    let mut device = serde_json::json!({
        "driver": driver, "id": id, "netdev": netdev, "bus": bus, "romfile": "", "mac": mac,
    });
    if driver != "igb" {
        device["failover_pair_id"] = "vfmig".into();
    }
    device
}

/// How one VM is started.
#[derive(Clone, Debug)]
pub struct VmConfig {
    /// Names its directory and its log lines: "source", "destination".
    pub name: &'static str,
    /// The tap behind the VF's netdev (`vf0`); `None` leaves the VM without network.
    pub tap: Option<String>,
    /// Attach the e1000e VF to the netdev at start. A destination waiting for a mid-migration
    /// unplug starts without it: an empty root port, the netdev defined for the fresh VF.
    pub nic: bool,
    pub mac: String,
    /// Start the guest agent (off: a guest whose agent never answers).
    pub agent: bool,
    /// Wait for an incoming migration (`-incoming defer`) instead of booting.
    pub incoming: bool,
    /// Boot with the DMA hook's module installed (off: a guest without it).
    pub hook: bool,
    /// Give the guest an IOMMU (QEMU's intel-iommu, `intel_iommu=on`), so device DMA goes
    /// through translated addresses.
    pub iommu: bool,
    /// Give the guest a standby NIC: a virtio-net on the same bridge (tap `<tap>-sb`), with a
    /// MAC of its own, on source and destination alike (it migrates with the VM).
    pub standby: bool,
    /// QEMU's own failover instead: the standby virtio-net has `failover=on` and the VF's MAC,
    /// the VF is its primary, and the guest's net_failover bonds the two. The destination
    /// starts with the VF too (QEMU keeps it hidden until the guest negotiates failover).
    pub failover: bool,
    /// Play a *host* instead: an igb, QEMU's SR-IOV NIC, a PF to the guest's igb driver (no
    /// network behind it); the guest waits for no VF at boot.
    pub pf: Option<PfHost>,
    /// A second empty root port (`rp3`), for a fresh VF plugged into another slot than the
    /// one it replaces (which gives it another predictable name).
    pub spare_port: bool,
    /// A second VF (`vf2`, on root port `rp4`, netdev `vf1` on tap `<tap>-2`, the fabric's
    /// second network), which the guest names eth1 and gives addresses and routes of its own.
    pub second_vf: Option<SecondVf>,
}

/// What a VM playing a host runs, which sizes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PfHost {
    /// vfmig-host's SR-IOV side alone: 512 MiB, one vCPU.
    Alone,
    /// The nested bed's source and destination QEMUs, 256 MiB guests each: 1.5 GiB and two
    /// vCPUs (on one, the nested guest saved so slowly that pre-copy drained past the hold).
    /// Two are a risk under TCG: see `SriovHost::boot_on`.
    Nested,
}

/// The second VF of a VM.
#[derive(Clone, Debug)]
pub struct SecondVf {
    pub mac: String,
    /// Its root port takes hot-plug (off: QEMU refuses to unplug it — a VF that will not go).
    pub hotplug: bool,
}

/// The standby virtio-net's MAC (another than the VF's, as vfmig allows).
pub const STANDBY_MAC: &str = "52:54:00:30:00:01";

/// A running QEMU; killed by PID when dropped.
pub struct Vm {
    child: Child,
    pub dir: PathBuf,
    pub name: &'static str,
    pub started: Instant,
}

/// A directory removed when dropped.
pub struct ScratchDir(pub PathBuf);

impl ScratchDir {
    pub fn new(tag: &str) -> std::io::Result<Self> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("vfmig-{tag}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir)?;
        Ok(Self(dir))
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// The virtio-serial controller: legacy-only on a VM playing a host, as its modern BAR would
/// open a 64-bit window (see the igb's placement in [`Vm::start`]).
fn virtio_serial(config: &VmConfig) -> &'static str {
    if config.pf.is_some() {
        "virtio-serial-pci,id=vser0,disable-modern=on,disable-legacy=off"
    } else {
        "virtio-serial-pci,id=vser0"
    }
}

/// The guest's kernel command line: what images/guest-init sets up for `config`.
pub fn kernel_cmdline(image: &GuestImage, config: &VmConfig) -> String {
    // A VM playing a host keeps the guest's addresses off its PF: the nested guest behind it
    // has them.
    let addresses = if config.pf.is_some() {
        String::new()
    } else {
        format!(" vfmig.addr={GUEST_V4}/{PREFIX_V4} vfmig.addr6={GUEST_V6}/{PREFIX_V6}")
    };
    format!(
        "console=ttyS0 panic=-1 quiet{addresses} \
         vfmig.agent={} vfmig.hook={} vfmig.failover={} vfmig.role={}{}",
        if config.agent { "on" } else { "off" },
        if config.hook { "on" } else { "absent" },
        if config.failover { "on" } else { "off" },
        if config.pf.is_some() { "host" } else { "guest" },
        if config.iommu { " intel_iommu=on" } else { "" },
    ) + if image.disk.is_some() { " root=/dev/vda rw" } else { "" }
        + &config.second_vf.as_ref().map_or(String::new(), |vf| {
            format!(" vfmig.vf2={} vfmig.addr2={GUEST2_V4}/{PREFIX_V4}", vf.mac)
        })
}

impl Vm {
    pub fn start(image: &GuestImage, dir: &Path, config: &VmConfig) -> std::io::Result<Self> {
        let dir = dir.join(config.name);
        fs::create_dir_all(&dir)?;
        // A VM started again in the same directory (a new destination) must not be reached
        // through the sockets its predecessor left: a stale one refuses connections, then is
        // gone for a moment while QEMU binds it anew, and a connect then fails outright (seen
        // once, in a fresh-clone run).
        for socket in ["qmp.sock", HOST_QMP, "agent.sock", "shell.sock"] {
            match fs::remove_file(dir.join(socket)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        let accel = if std::env::var("VFMIG_ACCEL").as_deref() == Ok("kvm") {
            "kvm"
        } else {
            "tcg"
        };
        let (memory, cpus) = match config.pf {
            Some(PfHost::Nested) => ("1536", "2"),
            _ => ("512", "1"),
        };
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args([
            "-accel",
            accel,
            "-M",
            "q35",
            "-m",
            memory,
            "-smp",
            cpus,
            "-nodefaults",
            "-display",
            "none",
        ])
        // QEMU wants the IOMMU before the devices behind it.
        .args(if config.iommu {
            &["-device", "intel-iommu"][..]
        } else {
            &[]
        })
        .args(["-no-reboot", "-kernel"])
        .arg(&image.kernel)
        .arg("-initrd")
        .arg(&image.initramfs)
        .arg("-append")
        .arg(kernel_cmdline(image, config))
        .args(image.disk.iter().flat_map(|disk| {
            let drive = match disk {
                Disk::Pristine(path) => format!("file={},if=virtio,format=raw,snapshot=on", path.display()),
                Disk::Shared(path) => format!("file={},if=virtio,format=qcow2", path.display()),
            };
            ["-drive".to_owned(), drive]
        }))
        .arg("-serial")
        .arg(format!("file:{}", dir.join("console.log").display()))
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", dir.join("qmp.sock").display()))
        // A second monitor for a host agent run as its own process while the test holds the
        // first (a QMP socket serves one client at a time).
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", dir.join(HOST_QMP).display()))
        .args(["-device", virtio_serial(config), "-chardev"])
        .arg(format!(
            "socket,id=agent,path={},server=on,wait=off",
            dir.join("agent.sock").display()
        ))
        .arg("-device")
        .arg(format!("virtserialport,bus=vser0.0,chardev=agent,name={AGENT_PORT}"))
        .arg("-chardev")
        .arg(format!(
            "socket,id=shell,path={},server=on,wait=off",
            dir.join("shell.sock").display()
        ))
        .arg("-device")
        .arg(format!("virtserialport,bus=vser0.0,chardev=shell,name={SHELL_PORT}"));
        if config.pf.is_some() {
            // QEMU 10.0.2's igb maps VF BARs as 32-bit, but behind a pcie-root-port SeaBIOS
            // gives the port a 64-bit prefetchable window and Linux puts the VF BARs there,
            // out of igbvf's reach ("PF still in reset state", a random MAC, no carrier;
            // measured). So the igb sits on the root bus, nothing opens a 64-bit window (no
            // root port, a legacy virtio-serial) and q35 has no 64-bit hole: the VF BARs land
            // below 4 GiB and igbvf comes up with the MAC the PF gave it.
            cmd.args([
                "-global",
                "q35-pcihost.pci-hole64-size=0",
                "-device",
                "igb,id=pf,bus=pcie.0,addr=0x4,romfile=",
            ]);
        } else {
            cmd.args(["-device", "pcie-root-port,id=rp1,chassis=1,slot=1"]);
        }
        if let Some(tap) = &config.tap {
            cmd.arg("-netdev")
                .arg(format!("tap,id=vf0,ifname={tap},script=no,downscript=no"));
            if config.standby || config.failover {
                let (mac, failover) = if config.failover {
                    (config.mac.as_str(), ",failover=on")
                } else {
                    (STANDBY_MAC, "")
                };
                cmd.arg("-netdev")
                    .arg(format!("tap,id=sb0,ifname={tap}-sb,script=no,downscript=no"))
                    .arg("-device")
                    .arg(format!(
                        "virtio-net-pci,netdev=sb0,id=standby,romfile=,mac={mac}{failover}"
                    ));
            }
            if config.nic {
                let pair = if config.failover { "standby" } else { "vfmig" };
                cmd.arg("-device").arg(vf_device_arg(VF_ID, &config.mac, pair));
            }
            if let Some(vf) = &config.second_vf {
                let hotplug = if vf.hotplug { "" } else { ",hotplug=off" };
                cmd.arg("-device")
                    .arg(format!("pcie-root-port,id=rp4,chassis=4,slot=4{hotplug}"))
                    .arg("-netdev")
                    .arg(format!("tap,id=vf1,ifname={tap}-2,script=no,downscript=no"));
                if config.nic {
                    cmd.arg("-device").arg(vf_device_arg(VF2_ID, &vf.mac, "vfmig"));
                }
            }
        }
        if config.spare_port {
            cmd.args(["-device", "pcie-root-port,id=rp3,chassis=3,slot=3"]);
        }
        if config.incoming {
            cmd.args(["-incoming", "defer"]);
        }
        cmd.stdin(Stdio::null())
            .stdout(fs::File::create(dir.join("qemu.log"))?)
            .stderr(fs::File::create(dir.join("qemu.err"))?);
        crate::die_with_parent(&mut cmd);
        let started = Instant::now();
        let child = cmd.spawn()?;
        Ok(Self {
            child,
            dir,
            name: config.name,
            started,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills QEMU and reaps it (a process already reaped is not signalled again, so its PID,
    /// free for reuse, is never hit).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn console(&self) -> String {
        fs::read_to_string(self.dir.join("console.log")).unwrap_or_default()
    }

    /// QEMU's own stderr, for failure messages.
    pub fn errors(&self) -> String {
        fs::read_to_string(self.dir.join("qemu.err")).unwrap_or_default()
    }

    /// Waits for QEMU's socket to appear (it creates it at start-up) and connects.
    async fn socket(&self, name: &str) -> std::io::Result<PathBuf> {
        let path = self.dir.join(name);
        let until = Instant::now() + Duration::from_secs(20);
        while !path.exists() {
            if Instant::now() > until {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("{}: {name} never appeared; qemu said: {}", self.name, self.errors()),
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(path)
    }

    pub async fn qmp(&self) -> Result<Qmp, String> {
        let path = self.socket("qmp.sock").await.map_err(|e| e.to_string())?;
        let refused = |e: &QmpError| matches!(e, QmpError::Io(e) if e.kind() == std::io::ErrorKind::ConnectionRefused);
        when_listening(refused, || Qmp::connect(&path))
            .await
            .map_err(|e| format!("{}: {e}; qemu said: {}", self.name, self.errors()))
    }

    /// A shell in the guest, for looking inside it; answers within `deadline` or fails.
    pub async fn shell(&self, deadline: Duration) -> Result<GuestShell, String> {
        let path = self.socket("shell.sock").await.map_err(|e| e.to_string())?;
        GuestShell::connect(&path, deadline).await.map_err(|e| {
            format!(
                "{}: {e}; qemu said: {}; guest console:\n{}",
                self.name,
                self.errors(),
                self.console()
            )
        })
    }

    /// Connects to the guest agent and opens a session (sync, hello) within `deadline`.
    pub async fn agent(&self, deadline: Duration) -> Result<(GuestChannel, Session), String> {
        let path = self.socket("agent.sock").await.map_err(|e| e.to_string())?;
        let attempt = async {
            let refused = |e: &ChannelError| matches!(e, ChannelError::Io(e) if e.kind() == std::io::ErrorKind::ConnectionRefused);
            let mut channel = when_listening(refused, || GuestChannel::connect(&path)).await?;
            let session = channel.open_session("vfmig-testbed", deadline).await?;
            Ok::<_, ChannelError>((channel, session))
        };
        attempt
            .await
            .map_err(|e| format!("{}: {e}; guest console:\n{}", self.name, self.console()))
    }
}

/// How long QEMU may take from creating a socket to listening on it.
const LISTEN_DEADLINE: Duration = Duration::from_secs(5);

/// Connects to a socket QEMU has just created. QEMU binds a socket before it listens on it,
/// and a connect in between is refused (seen failing a suite run): that one error is retried
/// for a few seconds, any other is returned at once.
pub(crate) async fn when_listening<T, E, F, Fut>(refused: impl Fn(&E) -> bool, mut connect: F) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let until = Instant::now() + LISTEN_DEADLINE;
    loop {
        match connect().await {
            Err(e) if refused(&e) && Instant::now() < until => tokio::time::sleep(Duration::from_millis(20)).await,
            done => return done,
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;

    use nix::sys::socket::{bind, listen, socket, AddressFamily, Backlog, SockFlag, SockType, UnixAddr};
    use tokio::net::UnixStream;

    use super::*;

    /// QEMU's window between bind and listen, reproduced: the connect waits it out.
    #[tokio::test]
    async fn a_socket_bound_but_not_yet_listening_is_waited_for() {
        let dir = std::env::temp_dir().join(format!("vfmig-listen-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.sock");
        let fd = socket(AddressFamily::Unix, SockType::Stream, SockFlag::empty(), None).unwrap();
        bind(fd.as_raw_fd(), &UnixAddr::new(&path).unwrap()).unwrap();
        let refused = |e: &std::io::Error| e.kind() == std::io::ErrorKind::ConnectionRefused;
        let early = UnixStream::connect(&path).await.map(|_| ());
        assert!(early.as_ref().is_err_and(refused), "a connect before listen: {early:?}");

        let listener = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            listen(&fd, Backlog::new(1).unwrap()).unwrap();
            fd
        });
        let connected = when_listening(refused, || UnixStream::connect(&path)).await;
        let _fd = listener.join().unwrap();
        fs::remove_dir_all(&dir).unwrap();
        assert!(connected.is_ok(), "after listen: {connected:?}");
    }
}
