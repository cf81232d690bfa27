//! The per-phase timeline of a migration: data, serialised to JSON and rendered as a table,
//! never assembled from log lines.

use std::fmt::Write;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::guest::Saved;
use crate::vm::Migration;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// A run interrupted earlier is taken up: what QEMU says now, and what the journal adds.
    Resumed,
    /// Sync and hello exchanged with the guest agent.
    Negotiated,
    /// The guest's DMA hook tracks the VF: pre-copy may run with it plugged.
    HookEnabled,
    /// QMP `migrate` issued with the VF still plugged.
    PrecopyStarted,
    /// Pre-copy's remainder fell under the margin; bandwidth throttled so QEMU does not switch
    /// over (the gate would stop it if it did).
    Held,
    /// The guest agent saved the VF's network state.
    StateSaved,
    /// The guest moved the VF's addresses and routes to its standby NIC, which carries the
    /// traffic through the VF gap.
    StandbyActive,
    /// `device_del` issued for the VF.
    UnplugRequested,
    /// QEMU reported DEVICE_DELETED.
    Unplugged,
    /// The guest's DMA hook stopped tracking, with its counters.
    HookDisabled,
    /// Migration parameters restored; QEMU may switch over.
    Released,
    /// QEMU paused before its switch-over (the VM stopped), none of the VFs was in the VM, and
    /// vfmig let it go on (`migrate-continue`).
    SwitchoverAllowed,
    /// QEMU reported the migration completed.
    Completed,
    /// The VF cannot stay through pre-copy (guest agent or DMA hook unusable): it is unplugged
    /// before pre-copy instead.
    Fallback,
    /// The VF is the primary of QEMU's own virtio-net failover pair, which the guest's
    /// net_failover bonds: QEMU unplugs and re-plugs it, vfmig only migrates, within deadlines.
    QemuFailover,
    /// The destination held the source's VF under the VF's id (libvirt starts it from the
    /// source's definition): removed, before the fresh VF is plugged.
    GhostRemoved,
    /// A fresh VF was hot-plugged on the destination.
    Plugged,
    /// The restore went unanswered (the agent may have restarted) and was sent again in a new
    /// session.
    RestoreRetried,
    /// The guest agent restored the saved state onto it.
    Restored,
    /// The addresses and routes moved back from the standby to the fresh VF.
    StandbyReleased,
    /// The migration was given up and the VM put back as it was on the source: migration
    /// cancelled, parameters back, VFs that had left plugged back, the guest's state back on
    /// them, the DMA hook stopped.
    RolledBack,
}

impl Phase {
    /// The phase's name as the JSON timeline spells it.
    pub fn name(self) -> String {
        serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Step {
    pub phase: Phase,
    /// Milliseconds since the timeline started.
    pub at_ms: u64,
    pub ram_transferred: Option<u64>,
    pub ram_remaining: Option<u64>,
    pub ram_total: Option<u64>,
    pub dirty_sync_count: Option<u64>,
    pub detail: String,
}

/// QEMU's own figures for the finished migration.
#[derive(Clone, Debug, Default, Serialize)]
pub struct QemuFigures {
    pub status: Option<String>,
    pub total_time_ms: Option<u64>,
    pub downtime_ms: Option<u64>,
    pub ram_transferred: Option<u64>,
}

impl QemuFigures {
    pub fn of(m: &Migration) -> Self {
        Self {
            status: Some(m.state.name().to_owned()),
            total_time_ms: m.total_time_ms,
            downtime_ms: m.downtime_ms,
            ram_transferred: m.ram.as_ref().map(|r| r.transferred),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Timeline {
    pub steps: Vec<Step>,
    pub qemu: Option<QemuFigures>,
    /// What the guest saved for each VF, for the destination step (`vfmig-host plug`).
    pub saved: Vec<Saved>,
    #[serde(skip)]
    started: Instant,
}

impl Default for Timeline {
    fn default() -> Self {
        Self::new()
    }
}

impl Timeline {
    pub fn new() -> Self {
        Self {
            steps: Vec::new(),
            qemu: None,
            saved: Vec::new(),
            started: Instant::now(),
        }
    }

    pub fn record(&mut self, phase: Phase, migration: Option<&Migration>, detail: impl Into<String>) -> &Step {
        let ram = migration.and_then(|m| m.ram.as_ref());
        self.steps.push(Step {
            phase,
            at_ms: self.started.elapsed().as_millis() as u64,
            ram_transferred: ram.map(|r| r.transferred),
            ram_remaining: ram.map(|r| r.remaining),
            ram_total: ram.map(|r| r.total),
            dirty_sync_count: ram.map(|r| r.dirty_sync_count),
            detail: detail.into(),
        });
        self.steps.last().expect("just pushed")
    }

    pub fn step(&self, phase: Phase) -> Option<&Step> {
        self.steps.iter().find(|s| s.phase == phase)
    }

    /// Time between two recorded phases.
    pub fn between(&self, from: Phase, to: Phase) -> Option<u64> {
        Some(self.step(to)?.at_ms.saturating_sub(self.step(from)?.at_ms))
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a timeline always serialises")
    }

    /// A readable table, one row per phase.
    pub fn table(&self) -> String {
        let mib = |v: Option<u64>| v.map_or("-".to_string(), |b| format!("{:.1}", b as f64 / 1048576.0));
        let mut out = format!(
            "{:>8}  {:<18} {:>12} {:>14} {:>5}  {}\n",
            "ms", "phase", "sent MiB", "remaining MiB", "syncs", "detail"
        );
        for s in &self.steps {
            let phase = s.phase.name();
            let _ = writeln!(
                out,
                "{:>8}  {:<18} {:>12} {:>14} {:>5}  {}",
                s.at_ms,
                phase,
                mib(s.ram_transferred),
                mib(s.ram_remaining),
                s.dirty_sync_count.map_or("-".into(), |c| c.to_string()),
                s.detail
            );
        }
        if let Some(q) = &self.qemu {
            // What the hypervisor reported, and only that (libvirt's job info has no downtime).
            let mut said = vec![q.status.clone().unwrap_or_else(|| "?".into())];
            said.extend(q.total_time_ms.map(|v| format!("total {v} ms")));
            said.extend(q.downtime_ms.map(|v| format!("downtime {v} ms")));
            said.extend(q.ram_transferred.map(|v| format!("{} MiB transferred", mib(Some(v)))));
            let _ = writeln!(out, "QEMU: {}", said.join(", "));
        }
        out
    }
}
