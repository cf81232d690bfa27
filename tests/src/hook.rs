//! The DMA hook from the test bed's side: the agent requests that start and stop it, and the
//! sysfs files, in the guest, of the hook and of its test-only exerciser.

use std::time::Duration;

use vfmig_host::channel::GuestChannel;
use vfmig_protocol::message::{DmaTracking, GuestMessage, HostMessage, InterfaceSelector, TrackDma};

/// The hook's control directory in the guest.
pub const CONTROL: &str = "/sys/kernel/vfmig_dirty";
/// The exerciser's (guest-agent/kmod/vfmig_exercise.c).
pub const EXERCISER: &str = "/sys/kernel/vfmig_exercise";

const DEADLINE: Duration = Duration::from_secs(20);

async fn request(channel: &mut GuestChannel, msg: HostMessage) -> Result<DmaTracking, String> {
    match channel.request(msg, DEADLINE).await.map_err(|e| e.to_string())?.pop() {
        Some(GuestMessage::DmaTracking(t)) => Ok(t),
        other => Err(format!("unexpected reply {other:?}")),
    }
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
