//! The migration state machine and its timeline.

pub mod journal;
pub mod phases;
pub mod resume;
pub mod timeline;

pub use journal::{Journal, JournalError};
pub use phases::{
    migrate_source, migration_done, plug_destination, Deadlines, Fallback, MigrateError, Plan, PlugSpec, Saved,
};
pub use timeline::{Phase, Step, Timeline};
