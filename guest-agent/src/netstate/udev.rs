//! Waiting for udev to be done with a new link before touching it. udev renames a new link and
//! its rules set what NetworkManager reads (NM_UNMANAGED, from udev-rules/75-vfmig-vf.rules); a
//! link renamed or brought up under its feet makes udev give up its rename ("already up,
//! cannot rename") and leave those properties unset, so NM takes the link as its own. Done
//! means its rename's own event (a "move") processed too, so: the link's database entry exists
//! and udev's queue is empty, as `udevadm settle` waits for.

use std::path::Path;
use std::time::{Duration, Instant};

/// udev's control socket: there is a udev to wait for only when it exists (a minimal guest
/// has none, and its links are ready as soon as they appear).
const CONTROL: &str = "/run/udev/control";
/// Exists while udev has events queued.
const QUEUE: &str = "/run/udev/queue";

/// Waits until udev has processed link `index` (its database entry exists), within `wait`.
/// False if it had not by then; the caller goes on, as a link must not stay unrestored.
pub async fn settled(index: u32, wait: Duration) -> bool {
    // udev hears of links in its own network namespace only, the one sysfs shows.
    if !Path::new(CONTROL).exists() || !super::sysfs::shows(index) {
        return true;
    }
    let entry = format!("/run/udev/data/n{index}");
    let until = Instant::now() + wait;
    while !Path::new(&entry).exists() || Path::new(QUEUE).exists() {
        if Instant::now() > until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}
