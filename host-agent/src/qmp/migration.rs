//! `query-migrate`'s answer as QEMU spells it, and its reading as the VM seam's [`Migration`].

use serde::Deserialize;

use crate::vm::{Migration, MigrationState, Ram};

/// `query-migrate`'s answer (only the fields used).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct MigrationInfo {
    pub status: Option<String>,
    /// Milliseconds since the migration started (final value once completed).
    pub total_time: Option<u64>,
    /// Milliseconds the guest was stopped (once completed).
    pub downtime: Option<u64>,
    pub expected_downtime: Option<u64>,
    pub ram: Option<RamInfo>,
    pub error_desc: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct RamInfo {
    pub transferred: u64,
    pub remaining: u64,
    pub total: u64,
    /// Full passes over RAM completed; at least 1 means every page was sent once.
    pub dirty_sync_count: u64,
    #[serde(default)]
    pub dirty_pages_rate: u64,
}

impl MigrationInfo {
    pub fn is_finished(&self) -> bool {
        self.state().is_some_and(MigrationState::is_finished)
    }

    fn state(&self) -> Option<MigrationState> {
        let status = self.status.as_deref()?;
        Some(serde_json::from_value(status.into()).unwrap_or(MigrationState::Other))
    }

    /// The outgoing migration this answer describes; `None` when there is none. A VM that
    /// arrived by migration reports its *incoming* one as "completed" until it starts one of
    /// its own; an outgoing one that completed always carries RAM figures.
    pub fn outgoing(&self) -> Option<Migration> {
        let state = self.state()?;
        if state == MigrationState::Completed && self.ram.is_none() {
            return None;
        }
        Some(Migration {
            state,
            ram: self.ram.as_ref().map(|r| Ram {
                transferred: r.transferred,
                remaining: r.remaining,
                total: r.total,
                dirty_sync_count: r.dirty_sync_count,
            }),
            error: self.error_desc.clone(),
            total_time_ms: self.total_time,
            downtime_ms: self.downtime,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(json: &str) -> MigrationInfo {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn statuses_read_as_states_and_unknown_ones_as_other() {
        let m = info(r#"{"status":"wait-unplug"}"#).outgoing().unwrap();
        assert_eq!(m.state, MigrationState::WaitUnplug);
        assert_eq!(
            info(r#"{"status":"postcopy-active"}"#).outgoing().unwrap().state,
            MigrationState::Other
        );
        assert!(info("{}").outgoing().is_none());
        let failed = info(r#"{"status":"failed","error-desc":"Unable to write to socket: Broken pipe"}"#);
        assert!(failed.is_finished());
        assert_eq!(
            failed.outgoing().unwrap().error.as_deref(),
            Some("Unable to write to socket: Broken pipe")
        );
    }

    #[test]
    fn an_incoming_migration_that_completed_is_no_outgoing_one() {
        assert!(info(r#"{"status":"completed"}"#).outgoing().is_none());
        let out = r#"{"status":"completed","ram":{"transferred":1,"remaining":0,"total":2,"dirty-sync-count":3}}"#;
        assert_eq!(info(out).outgoing().unwrap().state, MigrationState::Completed);
    }
}
