//! The DMA hook from the test bed's side: the agent requests that start and stop it, and the
//! sysfs files, in the guest, of the hook and of its test-only exerciser.

use std::net::SocketAddr;
use std::time::Duration;

use vfmig_host::channel::GuestChannel;
use vfmig_protocol::message::{DmaTracking, GuestMessage, Hello, HostMessage, InterfaceSelector, TrackDma};

use crate::fabric::{Fabric, GUEST_V4};
use crate::image::guest_image;
use crate::probe::wait_answering;
use crate::shell::GuestShell;
use crate::vm::{ScratchDir, Vm, VmConfig};
use crate::{exclusive, Exclusive};

/// The hook's control directory in the guest.
pub const CONTROL: &str = "/sys/kernel/vfmig_dirty";
/// The exerciser's (guest-agent/kmod/vfmig_exercise.c).
pub const EXERCISER: &str = "/sys/kernel/vfmig_exercise";

const DEADLINE: Duration = Duration::from_secs(20);

/// The VF's MAC in a [`HookGuest`].
pub const MAC: &str = "52:54:00:10:00:01";

/// One test guest with its VF (the e1000e), booted and answering the peer, with a session to
/// its agent and a shell: where the hook's tests and benchmark start. Keep it whole while the
/// guest is in use (destructure a `&mut` to it, not the value): its guards — the test-bed lock
/// and the directory holding QEMU's sockets — end with it.
pub struct HookGuest {
    pub vm: Vm,
    pub fabric: Fabric,
    pub channel: GuestChannel,
    pub shell: GuestShell,
    /// The guest agent's hello.
    pub hello: Hello,
    _dir: ScratchDir,
    _one: Exclusive,
}

impl HookGuest {
    /// `hook: false` boots without the hook's module; `iommu` puts the guest's devices behind
    /// QEMU's intel-iommu.
    pub async fn boot(hook: bool, iommu: bool) -> Result<Self, String> {
        let one = exclusive();
        let image = guest_image()?;
        let fabric = Fabric::new().map_err(|e| e.to_string())?;
        fabric.add_tap("tap-vm").map_err(|e| e.to_string())?;
        let dir = ScratchDir::new("hook").map_err(|e| e.to_string())?;
        let config = VmConfig {
            name: "guest",
            tap: Some("tap-vm".into()),
            nic: true,
            mac: MAC.into(),
            agent: true,
            incoming: false,
            hook,
            iommu,
            standby: false,
            failover: false,
            pf: None,
            spare_port: false,
            second_vf: None,
        };
        let vm = Vm::start(image, &dir.0, &config).map_err(|e| e.to_string())?;
        wait_answering(&fabric.peer, Self::echo(), Duration::from_secs(90))?;
        let (channel, session) = vm.agent(DEADLINE).await?;
        let shell = vm.shell(DEADLINE).await?;
        Ok(Self {
            vm,
            fabric,
            channel,
            shell,
            hello: session.guest,
            _dir: dir,
            _one: one,
        })
    }

    /// The guest's echo port.
    pub fn echo() -> SocketAddr {
        SocketAddr::new(GUEST_V4.parse().expect("a constant address"), 7)
    }
}

async fn request(channel: &mut GuestChannel, msg: HostMessage) -> Result<DmaTracking, String> {
    match channel.request(msg, DEADLINE).await.map_err(|e| e.to_string())?.pop() {
        Some(GuestMessage::DmaTracking(t)) => Ok(t),
        other => Err(format!("unexpected reply {other:?}")),
    }
}

/// The hook's (calls, pages) counters for `pci`, read in the guest; zero when not listed.
pub async fn counters(shell: &mut GuestShell, pci: &str) -> Result<(u64, u64), String> {
    let list = shell.ok(&format!("cat {CONTROL}/devices")).await?;
    let Some(line) = list.lines().find(|l| l.starts_with(pci)) else {
        return Ok((0, 0));
    };
    let field = |key: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(key)?.parse().ok())
            .ok_or_else(|| format!("no {key} in {line:?}"))
    };
    Ok((field("calls=")?, field("pages=")?))
}

/// Asks the guest agent to track the interface with MAC `mac`, as vfmig-host does.
pub async fn track(channel: &mut GuestChannel, mac: &str) -> Result<DmaTracking, String> {
    let mac = mac.parse().map_err(|e| format!("{mac}: {e}"))?;
    let interface = InterfaceSelector {
        mac: Some(mac),
        ..Default::default()
    };
    request(channel, HostMessage::TrackDma(TrackDma { interface })).await
}

/// Asks the guest agent to stop the hook; the final counters.
pub async fn stop(channel: &mut GuestChannel) -> Result<DmaTracking, String> {
    request(channel, HostMessage::StopDmaTracking).await
}
