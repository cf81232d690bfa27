//! The migration state machine and its timeline.

pub mod phases;
pub mod timeline;

pub use phases::{migrate_source, plug_destination, Deadlines, Fallback, MigrateError, Plan, PlugSpec, Saved};
pub use timeline::{Phase, Step, Timeline};
