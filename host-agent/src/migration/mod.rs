//! The migration state machine and its timeline.

pub mod journal;
pub mod phases;
pub mod resume;
pub mod timeline;

pub use journal::{Journal, JournalError, Saved};
pub use phases::{migrate_source, migration_done, plug_destination, Deadlines, Fallback, MigrateError, Plan, PlugSpec};
pub use timeline::{Phase, Step, Timeline};
