//! Handing a restored VF back to the network manager that owned it before the unplug, in the
//! background: the host has its reply already, and a DHCP lease can take seconds. Once the
//! owner has taken the link, what it dropped as not its own is put back; once it has it
//! configured and a settle period has passed, the link is read again: what the owner dropped
//! or added since is reported as differing from the saved state, never passed over.

use std::sync::Arc;
use std::time::Duration;

use rtnetlink::Handle;
use vfmig_protocol::netstate::{differences, SavedState};

use crate::events::{Event, Events};
use crate::netstate::{self, RestoreOptions};
use crate::owner::{LinkRef, OwnerKind, Owners, Snapshot};

/// After the VF is handed back to its owner, how long the agent waits before it reads the
/// link again and reports what the owner changed: what networkd or dhclient would drop or add
/// follows within a second of taking the link (measured under TCG), a DHCP answer included.
const SETTLE: Duration = Duration::from_secs(5);
/// The whole hand-back, past which it is reported as failed. Each owner bounds its own waits,
/// a DHCP lease the longest (60 s for networkd and NetworkManager's activation, 70 s for ifup);
/// this bounds them together, and a D-Bus call that never returns.
const HAND_BACK_WAIT: Duration = Duration::from_secs(150);

/// Puts back onto link `index` what its owner dropped of `saved` when it took the link; how
/// many items that was.
async fn put_back(handle: &Handle, saved: &SavedState, index: u32, owner: OwnerKind) -> Result<usize, String> {
    // The restore again, all of it, but the MAC (the host's choice, made already) and the
    // announcements (the peers were told).
    match netstate::restore(handle, saved, index, RestoreOptions::default()).await {
        Ok(r) if r.failed.is_empty() => Ok(r.applied.len()),
        Ok(r) => Err(format!("putting back what {owner} dropped: {}", r.failed.join("; "))),
        Err(e) => Err(format!("putting back what {owner} dropped: {e}")),
    }
}

/// Starts the hand-back of `link`, restored from `saved`, to the owner `before` names.
pub(crate) fn spawn(
    owners: Arc<Owners>,
    handle: Handle,
    events: Events,
    saved: SavedState,
    link: LinkRef,
    before: Snapshot,
) {
    tokio::spawn(async move {
        let owner = before.kind();
        let interface = saved.interface.identity.name.clone();
        let handing = async {
            let done = owners.hand_back(&link, &before).await.map_err(|e| e.to_string())?;
            // Twice: at once, so that what the owner dropped is missing only for as long as
            // it takes; and once it has configured the link, for what it drops later on the
            // way (networkd drops foreign policy rules when it sets its own). The first
            // races the owner's own configuring (an address it adds meanwhile is "File
            // exists"): only the second one's failures count.
            let early = put_back(&handle, &saved, link.index, owner).await;
            if let Err(e) = &early {
                tracing::debug!(%owner, error = %e, "putting back at once raced the owner; again once it is done");
            }
            owners.configured(&link, owner).await.map_err(|e| e.to_string())?;
            let late = put_back(&handle, &saved, link.index, owner).await?;
            Ok(format!(
                "{done}; {} items it dropped put back",
                late + early.unwrap_or(0)
            ))
        };
        // An owner that stops answering (a D-Bus call to a stopped daemon has no deadline
        // of its own) must not leave the hand-back hanging unreported.
        let outcome = tokio::time::timeout(HAND_BACK_WAIT, handing)
            .await
            .unwrap_or_else(|_| Err(format!("{owner} did not take the VF back within {HAND_BACK_WAIT:?}")));
        match &outcome {
            Ok(done) => tracing::info!(%owner, done, "handed the VF back"),
            Err(e) => tracing::error!(%owner, error = %e, "could not hand the VF back"),
        }
        events.emit(Event::HandedBack {
            interface: interface.clone(),
            owner,
            outcome,
        });
        tokio::time::sleep(SETTLE).await;
        let settled = match netstate::capture_index(&handle, link.index).await {
            Ok(now) => differences(&saved.interface, &now.state),
            Err(e) => vec![format!("could not re-read {} after {owner} took it: {e}", link.name)],
        };
        for line in &settled {
            tracing::warn!(%owner, line, "differs from the saved state after the hand-back");
        }
        tracing::info!(%owner, differences = settled.len(), "settled after the hand-back");
        events.emit(Event::Settled { interface, settled });
    });
}
