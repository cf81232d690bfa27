//! Giving a restored link its saved name. When several VFs arrive together the kernel names
//! them in probe order, so the name one saved state claims can be held by another fresh VF
//! — whose own restore, coming next, claims another name. A link that holds the name and
//! carries nothing (no address, no route) is moved aside to a name of its own; one that
//! carries anything is never touched, and the restore keeps the link's name instead.

use rtnetlink::{Handle, LinkUnspec};

use super::capture::{capture_index, link_index};
use super::restore::RestoreReport;

/// The name a bare link is moved aside to: unique (by index) and within IFNAMSIZ.
fn aside(index: u32) -> String {
    format!("vfmig{index}")
}

/// Frees `name` for link `onto`: true when it is free now.
pub(super) async fn make_room(handle: &Handle, report: &mut RestoreReport, name: &str, onto: u32) -> bool {
    let Ok(other) = link_index(handle, name).await else {
        return true;
    };
    if other == onto {
        return true;
    }
    let bare = capture_index(handle, other)
        .await
        .is_ok_and(|c| c.state.addresses.is_empty() && c.state.routes.is_empty());
    if !bare {
        report.failed.push(format!(
            "link name {name}: already used by the link with index {other}, which carries state; keeping the link's own name"
        ));
        return false;
    }
    let moved = LinkUnspec::new_with_index(other).down().name(aside(other)).build();
    let before = report.failed.len();
    report
        .run_link(
            format!("link {name} (index {other}, bare): name {}", aside(other)),
            handle.link().set(moved).execute(),
        )
        .await;
    report.failed.len() == before
}
