//! Where an interrupted migration stands, and what taking it up means.
//!
//! A host agent can be killed at any phase boundary (or between two QMP commands). Run again
//! with the same journal, it asks QEMU what is true now — is a migration running, ended, or
//! never started; is the VF still plugged — and combines that with what only the journal
//! knows. [`decide`] is that judgement, pure so that every combination is tested without a
//! VM; [`super::phases`] carries it out with the same steps an uninterrupted run uses.

use super::journal::Journal;

/// What QEMU says now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Facts {
    /// `query-migrate`'s status; `None` when this QEMU never migrated.
    pub status: Option<String>,
    /// The VF is still plugged (QEMU knows a device with its id).
    pub vf_present: bool,
}

/// How an interrupted migration is taken up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resume {
    /// Nothing that matters was changed yet: put the parameters back and start afresh.
    Restart,
    /// Pre-copy runs with the VF plugged: confirm the hook, hold, save, unplug, finish.
    Hold,
    /// An unplug was requested and the VF is still plugged: wait for the guest to let it go,
    /// then finish (or cancel and plug it back, as when an unplug misses its deadline).
    AwaitUnplug,
    /// The VF is gone: stop the hook, release, let the migration complete (start it, on the
    /// safe path, if it never was).
    Finish,
    /// The migration completed: the source side is done; the destination step follows.
    Done,
    /// The migration ended without completing after the VF was unplugged: plug it back on
    /// the source and have the guest restore.
    PlugBack,
    /// The migration ended without completing and the VF is still plugged: put the parameters
    /// back and stop the hook; the VM stays on the source.
    Settle,
}

fn finished(status: &str) -> bool {
    matches!(status, "completed" | "failed" | "cancelled")
}

pub fn decide(journal: &Journal, facts: &Facts) -> Resume {
    match (facts.status.as_deref(), facts.vf_present) {
        (Some("completed"), _) => Resume::Done,
        (Some(s), true) if finished(s) => Resume::Settle,
        (Some(s), false) if finished(s) => Resume::PlugBack,
        // A device_del may still be on its way through the guest: never plug, never re-save.
        (_, true) if journal.unplug_requested => Resume::AwaitUnplug,
        (None, true) => Resume::Restart,
        // Pre-copy with the VF plugged is only sound while the hook tracks it; a migration
        // vfmig did not start that way is stopped, not joined.
        (Some(_), true) if journal.hooked && journal.migrate_issued => Resume::Hold,
        (Some(_), true) => Resume::Settle,
        (_, false) => Resume::Finish,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::migration::journal::{OriginalParams, Saved};

    fn journal(hooked: bool, migrate_issued: bool, unplug_requested: bool, saved: bool) -> Journal {
        let mut j = Journal::new(
            "vf",
            "52:54:00:10:00:01".parse().unwrap(),
            None,
            OriginalParams {
                max_bandwidth: 134217728,
                downtime_limit: 300,
            },
        );
        j.hooked = hooked;
        j.migrate_issued = migrate_issued;
        j.unplug_requested = unplug_requested;
        j.saved = saved.then(|| Saved {
            interface: "eth0".into(),
            digest: "sha256:00".into(),
        });
        j
    }

    fn facts(status: Option<&str>, vf_present: bool) -> Facts {
        Facts {
            status: status.map(str::to_owned),
            vf_present,
        }
    }

    #[test]
    fn before_migrate_nothing_is_joined_it_is_restarted() {
        assert_eq!(
            decide(&journal(false, false, false, false), &facts(None, true)),
            Resume::Restart
        );
        assert_eq!(
            decide(&journal(true, false, false, false), &facts(None, true)),
            Resume::Restart
        );
    }

    #[test]
    fn precopy_with_the_vf_plugged_is_held_again() {
        let j = journal(true, true, false, false);
        assert_eq!(decide(&j, &facts(Some("active"), true)), Resume::Hold);
        assert_eq!(decide(&j, &facts(Some("setup"), true)), Resume::Hold);
        // Saved but not yet unplugged: saved again (the guest's save is idempotent).
        assert_eq!(
            decide(&journal(true, true, false, true), &facts(Some("active"), true)),
            Resume::Hold
        );
    }

    #[test]
    fn a_requested_unplug_is_awaited_never_replugged() {
        let j = journal(true, true, true, true);
        assert_eq!(decide(&j, &facts(Some("active"), true)), Resume::AwaitUnplug);
        // The safe path requests the unplug before migrate.
        assert_eq!(
            decide(&journal(false, false, true, true), &facts(None, true)),
            Resume::AwaitUnplug
        );
    }

    #[test]
    fn with_the_vf_gone_the_migration_is_finished() {
        assert_eq!(
            decide(&journal(true, true, true, true), &facts(Some("active"), false)),
            Resume::Finish
        );
        assert_eq!(
            decide(&journal(false, false, true, true), &facts(None, false)),
            Resume::Finish
        );
    }

    #[test]
    fn ended_migrations_are_done_plugged_back_or_settled() {
        let j = journal(true, true, true, true);
        assert_eq!(decide(&j, &facts(Some("completed"), false)), Resume::Done);
        assert_eq!(decide(&j, &facts(Some("failed"), false)), Resume::PlugBack);
        assert_eq!(decide(&j, &facts(Some("cancelled"), false)), Resume::PlugBack);
        assert_eq!(decide(&j, &facts(Some("failed"), true)), Resume::Settle);
        assert_eq!(
            decide(&journal(true, true, false, false), &facts(Some("cancelled"), true)),
            Resume::Settle
        );
    }

    #[test]
    fn a_migration_vfmig_did_not_start_with_the_hook_is_not_joined() {
        assert_eq!(
            decide(&journal(false, false, false, false), &facts(Some("active"), true)),
            Resume::Settle
        );
        assert_eq!(
            decide(&journal(true, false, false, false), &facts(Some("active"), true)),
            Resume::Settle
        );
    }
}
