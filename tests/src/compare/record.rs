//! What one run of one variant measured, as the benchmark's JSON file keeps it.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Variant {
    /// vfmig: the VF through pre-copy, the DMA hook, cooperative unplug, restore on the
    /// destination.
    #[serde(rename = "A")]
    Vfmig,
    /// vfmig with a standby virtio-net carrying the guest through the VF gap.
    #[serde(rename = "A+")]
    VfmigStandby,
    /// QEMU's virtio-net failover: `failover=on`, the VF as primary with the same MAC, the
    /// guest's net_failover; QEMU unplugs the primary at migration set-up.
    #[serde(rename = "B")]
    QemuFailover,
    /// `device_del` before `migrate`, `device_add` after, no agent.
    #[serde(rename = "C")]
    UnplugReplug,
}

impl Variant {
    /// The order in which each round runs them.
    pub const ALL: [Variant; 4] = [
        Variant::Vfmig,
        Variant::VfmigStandby,
        Variant::QemuFailover,
        Variant::UnplugReplug,
    ];

    pub fn key(self) -> &'static str {
        match self {
            Variant::Vfmig => "A",
            Variant::VfmigStandby => "A+",
            Variant::QemuFailover => "B",
            Variant::UnplugReplug => "C",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Variant::Vfmig => "vfmig",
            Variant::VfmigStandby => "vfmig + standby",
            Variant::QemuFailover => "QEMU virtio-net failover",
            Variant::UnplugReplug => "plain unplug/replug",
        }
    }
}

/// A moment of the run, in milliseconds since the probe started.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Mark {
    pub name: String,
    pub at_ms: u64,
}

/// Mark names the summary and the picture look for.
pub const MIGRATION_STARTS: &str = "migration starts";
pub const VF_BACK: &str = "VF back";

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Run {
    pub variant: Variant,
    pub round: usize,
    /// The peer's longest run of unanswered 1 kHz echo probes.
    pub blackout_ms: u64,
    pub probes_sent: u64,
    pub probes_lost: u64,
    /// The guest answered probes again before the probe stopped.
    pub recovered: bool,
    /// The peer's TCP connection, opened before the migration, passed data both ways after it.
    pub tcp_survived: bool,
    /// From the request to unplug the VF to the fresh VF carrying the guest's traffic on the
    /// destination (see [`super::runner`] for how each variant's end is seen).
    pub vf_absent_ms: u64,
    /// From the variant's first action to the fresh VF carrying the guest's traffic.
    pub total_ms: u64,
    pub qemu_total_ms: Option<u64>,
    pub qemu_downtime_ms: Option<u64>,
    /// How long QEMU's pre-copy ran (status `active`).
    pub precopy_ms: u64,
    /// What the peer's stream offered during pre-copy, and what the guest's UDP layer received.
    pub offered_mb_s: f64,
    pub precopy_rx_mb_s: f64,
    /// The guest's addresses, routes and permanent neighbours are all there after the migration.
    pub state_kept: bool,
    /// What was there before and is missing after.
    pub state_missing: Vec<String>,
    pub marks: Vec<Mark>,
    /// The probe series: each run of unanswered probes as [start ms, length ms]; every other
    /// probe was answered.
    pub lost_runs: Vec<[u64; 2]>,
    pub probe_ms: u64,
    /// The guest kernel's link messages (`dmesg`) at the end: where a fresh NIC flapped.
    pub guest_link_log: Vec<String>,
    /// vfmig's own timeline (its phases, with QEMU's RAM figures), for A and A+.
    pub vfmig_timeline: Option<serde_json::Value>,
}

impl Run {
    /// What a person looks at first: the blackout, the VF's absence, TCP and state.
    pub fn summary(&self) -> String {
        let kept = |yes: bool| if yes { "kept" } else { "lost" };
        format!(
            "blackout {} ms, {} of {} probes lost, VF absent {} ms, TCP {}, state {}",
            self.blackout_ms,
            self.probes_lost,
            self.probes_sent,
            self.vf_absent_ms,
            kept(self.tcp_survived),
            kept(self.state_kept)
        )
    }

    pub fn mark(&self, name: &str) -> Option<u64> {
        self.marks.iter().find(|m| m.name == name).map(|m| m.at_ms)
    }
}

/// The runs of unanswered probes in a series with one entry per millisecond.
pub fn lost_runs(answered: &[bool]) -> Vec<[u64; 2]> {
    let mut runs = Vec::new();
    let mut start = None;
    for (i, a) in answered.iter().chain([&true]).enumerate() {
        match (a, start) {
            (false, None) => start = Some(i),
            (true, Some(s)) => {
                runs.push([s as u64, (i - s) as u64]);
                start = None;
            }
            _ => {}
        }
    }
    runs
}

/// Lines of `before` that `after` lacks, in order.
pub fn missing(before: &str, after: &str) -> Vec<String> {
    let now: std::collections::HashSet<&str> = after.lines().map(str::trim).collect();
    before
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !now.contains(l))
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lost_runs_cover_every_unanswered_probe_including_one_still_going() {
        let series = [true, false, false, true, true, false, true, false];
        assert_eq!(lost_runs(&series), vec![[1, 2], [5, 1], [7, 1]]);
        assert!(lost_runs(&[true; 5]).is_empty());
        assert_eq!(lost_runs(&[false; 3]), vec![[0, 3]]);
    }

    #[test]
    fn missing_lists_what_is_gone_and_ignores_order_and_additions() {
        let before = "198.18.0.10/24\n2001:db8::10/64\n203.0.113.0/24 via 198.18.0.1\n";
        let after = "203.0.113.0/24 via 198.18.0.1\n198.18.0.10/24\nfe80::1/64\n";
        assert_eq!(missing(before, after), vec!["2001:db8::10/64"]);
        assert!(missing(before, before).is_empty());
    }

    #[test]
    fn the_summary_says_blackout_absence_tcp_and_state() {
        let run: Run = serde_json::from_value(serde_json::json!({
            "variant": "C", "round": 1, "blackout_ms": 3448, "probes_sent": 4199, "probes_lost": 3447,
            "recovered": false, "tcp_survived": false, "vf_absent_ms": 2455, "total_ms": 2455,
            "qemu_total_ms": 743, "qemu_downtime_ms": 34, "precopy_ms": 731, "offered_mb_s": 2.8,
            "precopy_rx_mb_s": 0.0, "state_kept": false, "state_missing": [], "marks": [],
            "lost_runs": [], "probe_ms": 4199, "guest_link_log": [], "vfmig_timeline": null
        }))
        .unwrap();
        assert_eq!(
            run.summary(),
            "blackout 3448 ms, 3447 of 4199 probes lost, VF absent 2455 ms, TCP lost, state lost"
        );
    }

    #[test]
    fn variants_serialise_as_their_keys() {
        for v in Variant::ALL {
            assert_eq!(serde_json::to_value(v).unwrap(), v.key());
        }
    }
}
