//! The outgoing migration as libvirt's job: `virDomainMigrateToURI3` runs on a thread of its
//! own (it returns when the migration ends), and the job's figures say how far it got. They
//! are read with `virDomainGetJobInfo`: the `virt` crate's reading of
//! `virDomainGetJobStats` builds a vector from the null pointer libvirt returns when no job
//! runs (seen aborting vfmig-host on its precondition check).
//!
//! A migration counts as ended only once that call has returned: libvirt puts back the
//! migration parameters it changed as the job ends, so anything vfmig sets after that stands.

use std::thread::JoinHandle;
use std::time::Duration;

use tokio::time::Instant;

use virt::domain::{Domain, JobStats, MigrateParameters};
use virt::error::{Error as LibvirtError, ErrorNumber};
use virt::sys;

use super::vm_error;
use crate::vm::{Migration, MigrationState, Ram, VmError};

/// How long libvirt may take to begin the job once asked (its Begin and Prepare phases, the
/// destination's hooks included).
const BEGIN_WAIT: Duration = Duration::from_secs(30);

/// A migration this run started.
pub struct Outgoing {
    call: Option<JoinHandle<Result<(), LibvirtError>>>,
    /// How it ended, once the call returned.
    ended: Option<Migration>,
}

/// Live, libvirt driving it from the source (peer-to-peer), the domain defined on the
/// destination and undefined here when it completes.
const FLAGS: u32 = sys::VIR_MIGRATE_LIVE
    | sys::VIR_MIGRATE_PEER2PEER
    | sys::VIR_MIGRATE_PERSIST_DEST
    | sys::VIR_MIGRATE_UNDEFINE_SOURCE;

impl Outgoing {
    /// Starts the migration to the libvirt at `target`, and returns once libvirt's job runs
    /// (or the call failed).
    pub async fn start(dom: &Domain, target: &str, params: MigrateParameters) -> Result<Self, VmError> {
        let (migrating, target) = (dom.clone(), target.to_owned());
        let call = std::thread::spawn(move || migrating.migrate_to_uri3(Some(&target), params, FLAGS));
        let mut outgoing = Self {
            call: Some(call),
            ended: None,
        };
        let until = Instant::now() + BEGIN_WAIT;
        loop {
            if let Some(ended) = outgoing.status_of_call() {
                return match ended.state {
                    MigrationState::Failed | MigrationState::Cancelled => Err(VmError::Refused {
                        request: "migrate".into(),
                        error: ended.error.unwrap_or_default(),
                    }),
                    _ => Ok(outgoing),
                };
            }
            let begun = dom.get_job_info().is_ok_and(|s| migration(&s).is_some());
            if begun || Instant::now() >= until {
                return Ok(outgoing);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// How the call ended, if it did.
    fn status_of_call(&mut self) -> Option<Migration> {
        if self.ended.is_none() && self.call.as_ref().is_some_and(JoinHandle::is_finished) {
            let result = self.call.take().map(JoinHandle::join);
            self.ended = Some(match result {
                Some(Ok(Ok(()))) => ended(MigrationState::Completed, None),
                Some(Ok(Err(e))) if e.code() == ErrorNumber::OperationAborted => {
                    ended(MigrationState::Cancelled, Some(super::one_line(&e)))
                }
                Some(Ok(Err(e))) => ended(MigrationState::Failed, Some(super::one_line(&e))),
                Some(Err(_)) | None => ended(MigrationState::Failed, Some("the migration call panicked".into())),
            });
        }
        self.ended.clone()
    }

    /// Where the migration stands: how it ended, or libvirt's job statistics.
    pub fn status(&mut self, dom: &Domain) -> Result<Migration, VmError> {
        if let Some(ended) = self.status_of_call() {
            return Ok(ended);
        }
        // Between the job's end and the call's return (the domain may already be undefined
        // here) there are no statistics: the call's return says how it ended.
        let stats = match dom.get_job_info() {
            Ok(stats) => stats,
            Err(e) if super::lost(&e) => return Err(vm_error("the migration job's statistics", e)),
            Err(_) => return Ok(ended(MigrationState::Active, None)),
        };
        Ok(migration(&stats).unwrap_or_else(|| ended(MigrationState::Setup, None)))
    }
}

/// A migration in `state`, without figures.
fn ended(state: MigrationState, error: Option<String>) -> Migration {
    Migration {
        state,
        ram: None,
        error,
        total_time_ms: None,
        downtime_ms: None,
    }
}

/// A running job's statistics as a migration; none when no job runs.
fn migration(stats: &JobStats) -> Option<Migration> {
    let running = matches!(
        stats.r#type as u32,
        sys::VIR_DOMAIN_JOB_BOUNDED | sys::VIR_DOMAIN_JOB_UNBOUNDED
    );
    running.then(|| Migration {
        state: MigrationState::Active,
        ram: stats.mem_total.map(|total| Ram {
            transferred: stats.mem_processed.unwrap_or(0),
            remaining: stats.mem_remaining.unwrap_or(total),
            total,
            // Not in the job info; vfmig's hold does not need it.
            dirty_sync_count: stats.mem_iteration.unwrap_or(0),
        }),
        error: None,
        total_time_ms: stats.time_elapsed,
        downtime_ms: None,
    })
}

/// A migration this run did not start: one running (another client's, or one a killed run of
/// vfmig-host left — libvirt aborts those when their client goes), or none.
pub fn running(dom: &Domain) -> Result<Option<Migration>, VmError> {
    let stats = dom.get_job_info().map_err(|e| vm_error("the domain's job", e))?;
    Ok(migration(&stats))
}
