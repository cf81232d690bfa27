//! The parts of QEMU's migration API vfmig uses, typed.

use serde::Deserialize;

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
        matches!(self.status.as_deref(), Some("completed" | "failed" | "cancelled"))
    }
}
