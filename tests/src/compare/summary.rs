//! Medians per variant, ratios against the peers, and the targets, from the runs.

use super::record::{Run, Variant};

/// A figure of the table: a median of a number per run, or a count of runs where it held.
struct Figure {
    name: &'static str,
    kind: Kind,
}

enum Kind {
    Median(fn(&Run) -> Option<f64>),
    Count(fn(&Run) -> bool),
}

const FIGURES: [Figure; 10] = [
    Figure {
        name: "peer blackout (ms)",
        kind: Kind::Median(|r| Some(r.blackout_ms as f64)),
    },
    Figure {
        name: "probes lost",
        kind: Kind::Median(|r| Some(r.probes_lost as f64)),
    },
    Figure {
        name: "VF absent (ms)",
        kind: Kind::Median(|r| Some(r.vf_absent_ms as f64)),
    },
    Figure {
        name: "total (ms)",
        kind: Kind::Median(|r| Some(r.total_ms as f64)),
    },
    Figure {
        name: "QEMU total (ms)",
        kind: Kind::Median(|r| r.qemu_total_ms.map(|v| v as f64)),
    },
    Figure {
        name: "QEMU downtime (ms)",
        kind: Kind::Median(|r| r.qemu_downtime_ms.map(|v| v as f64)),
    },
    Figure {
        name: "pre-copy rx (MB/s)",
        kind: Kind::Median(|r| Some(r.precopy_rx_mb_s)),
    },
    Figure {
        name: "TCP survived",
        kind: Kind::Count(|r| r.tcp_survived),
    },
    Figure {
        name: "state kept",
        kind: Kind::Count(|r| r.state_kept),
    },
    Figure {
        name: "answering at the end",
        kind: Kind::Count(|r| r.recovered),
    },
];

/// The median of the values (the mean of the middle two for an even count).
pub fn median(mut values: Vec<f64>) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(values[n / 2]),
        _ => Some((values[n / 2 - 1] + values[n / 2]) / 2.0),
    }
}

fn of(runs: &[Run], variant: Variant) -> impl Iterator<Item = &Run> {
    runs.iter().filter(move |r| r.variant == variant)
}

fn median_of(runs: &[Run], variant: Variant, value: fn(&Run) -> Option<f64>) -> Option<f64> {
    median(of(runs, variant).filter_map(value).collect())
}

/// The pairs whose ratios the table shows: vfmig against each peer, with and without standby.
const RATIOS: [(Variant, Variant); 4] = [
    (Variant::Vfmig, Variant::QemuFailover),
    (Variant::Vfmig, Variant::UnplugReplug),
    (Variant::VfmigStandby, Variant::QemuFailover),
    (Variant::VfmigStandby, Variant::UnplugReplug),
];

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b != 0.0 => format!("{:.2}", a / b),
        // Against nothing: "inf" says the peer got none of it; 0 against 0 has no ratio.
        (Some(a), Some(_)) if a > 0.0 => "inf".into(),
        _ => "-".into(),
    }
}

fn number(v: Option<f64>) -> String {
    match v {
        Some(v) if v.fract() == 0.0 || v.abs() >= 100.0 => format!("{v:.0}"),
        Some(v) => format!("{v:.2}"),
        None => "-".into(),
    }
}

/// The table: medians per variant, then the ratios.
pub fn table(runs: &[Run]) -> String {
    let mut header = vec![String::from("figure")];
    header.extend(Variant::ALL.iter().map(|v| v.key().to_string()));
    header.extend(RATIOS.iter().map(|(a, b)| format!("{}/{}", a.key(), b.key())));
    let mut rows = vec![header];
    for figure in &FIGURES {
        let mut row = vec![figure.name.to_string()];
        match figure.kind {
            Kind::Median(value) => {
                row.extend(Variant::ALL.iter().map(|v| number(median_of(runs, *v, value))));
                row.extend(
                    RATIOS
                        .iter()
                        .map(|(a, b)| ratio(median_of(runs, *a, value), median_of(runs, *b, value))),
                );
            }
            Kind::Count(held) => {
                row.extend(Variant::ALL.iter().map(|v| {
                    let all: Vec<_> = of(runs, *v).collect();
                    format!("{}/{}", all.iter().filter(|r| held(r)).count(), all.len())
                }));
                row.extend(RATIOS.iter().map(|_| "-".to_string()));
            }
        }
        rows.push(row);
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in &rows {
        for (c, cell) in row.iter().enumerate() {
            if c == 0 {
                out.push_str(&format!("{cell:<w$}", w = widths[0]));
            } else {
                out.push_str(&format!("  {cell:>w$}", w = widths[c]));
            }
        }
        out.push('\n');
    }
    out
}

/// One of the targets, judged on the medians (or on every run).
#[derive(Debug)]
pub struct Target {
    pub what: &'static str,
    pub met: bool,
    pub detail: String,
}

pub fn targets(runs: &[Run]) -> Vec<Target> {
    use Variant::*;
    let m = |v, f: fn(&Run) -> Option<f64>| median_of(runs, v, f);
    let (absent_a, absent_b) = (
        m(Vfmig, |r| Some(r.vf_absent_ms as f64)),
        m(QemuFailover, |r| Some(r.vf_absent_ms as f64)),
    );
    let (rx_a, rx_b) = (
        m(Vfmig, |r| Some(r.precopy_rx_mb_s)),
        m(QemuFailover, |r| Some(r.precopy_rx_mb_s)),
    );
    let (black_a_plus, black_b) = (
        m(VfmigStandby, |r| Some(r.blackout_ms as f64)),
        m(QemuFailover, |r| Some(r.blackout_ms as f64)),
    );
    let compare = |a: Option<f64>, b: Option<f64>, holds: fn(f64, f64) -> bool, unit: &str| match (a, b) {
        (Some(a), Some(b)) => (
            holds(a, b),
            format!("{} against {} {unit}", number(Some(a)), number(Some(b))),
        ),
        _ => (false, "not measured".to_string()),
    };
    let mut out = Vec::new();
    let (met, detail) = compare(absent_a, absent_b, |a, b| a <= 0.25 * b, "ms");
    out.push(Target {
        what: "VF absent: A ≤ 25 % of B",
        met,
        detail,
    });
    let (met, detail) = compare(rx_a, rx_b, |a, b| a >= b, "MB/s");
    out.push(Target {
        what: "guest rx during pre-copy: A ≥ B",
        met,
        detail,
    });
    let (met, detail) = compare(black_a_plus, black_b, |a, b| a <= b, "ms");
    out.push(Target {
        what: "peer blackout: A+ ≤ B",
        met,
        detail,
    });
    let ours: Vec<&Run> = runs
        .iter()
        .filter(|r| matches!(r.variant, Vfmig | VfmigStandby))
        .collect();
    let kept = ours.iter().filter(|r| r.tcp_survived && r.state_kept).count();
    out.push(Target {
        what: "A and A+ keep TCP and all network state in every run",
        met: !ours.is_empty() && kept == ours.len(),
        detail: format!("{kept} of {} runs", ours.len()),
    });
    let plain: Vec<&Run> = of(runs, UnplugReplug).collect();
    let lost = plain.iter().filter(|r| !r.state_kept).count();
    out.push(Target {
        what: "C is shown losing state",
        met: !plain.is_empty() && lost == plain.len(),
        detail: format!("{lost} of {} runs lost state", plain.len()),
    });
    out
}

/// The run of `variant` whose blackout is the median one: the run the picture shows.
pub fn typical(runs: &[Run], variant: Variant) -> Option<&Run> {
    let mut all: Vec<&Run> = of(runs, variant).collect();
    all.sort_by_key(|r| r.blackout_ms);
    all.get(all.len().saturating_sub(1) / 2).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(variant: Variant, blackout_ms: u64, vf_absent_ms: u64, rx: f64, kept: bool) -> Run {
        Run {
            variant,
            round: 1,
            blackout_ms,
            probes_sent: 5000,
            probes_lost: blackout_ms,
            recovered: kept,
            tcp_survived: kept,
            vf_absent_ms,
            total_ms: 2 * vf_absent_ms,
            qemu_total_ms: Some(1500),
            qemu_downtime_ms: Some(20),
            precopy_ms: 1000,
            offered_mb_s: 14.0,
            precopy_rx_mb_s: rx,
            state_kept: kept,
            state_missing: Vec::new(),
            marks: Vec::new(),
            lost_runs: Vec::new(),
            probe_ms: 5000,
            guest_link_log: Vec::new(),
            vfmig_timeline: None,
        }
    }

    fn sample() -> Vec<Run> {
        use Variant::*;
        let mut runs = Vec::new();
        for (a, b) in [(100, 1000), (300, 1200), (200, 800)] {
            runs.push(run(Vfmig, 1500, a, 13.0, true));
            runs.push(run(VfmigStandby, 30, a, 13.5, true));
            runs.push(run(QemuFailover, 200, b, 12.0, true));
            runs.push(run(UnplugReplug, 6000, 2 * b, 0.0, false));
        }
        runs
    }

    #[test]
    fn medians_take_the_middle_or_the_mean_of_the_middle_two() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(Vec::new()), None);
    }

    #[test]
    fn the_table_shows_medians_ratios_and_counts() {
        let table = table(&sample());
        let line = |name: &str| {
            table
                .lines()
                .find(|l| l.starts_with(name))
                .unwrap_or_else(|| panic!("{name} missing:\n{table}"))
                .split_whitespace()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        assert_eq!(line("figure")[1..], ["A", "A+", "B", "C", "A/B", "A/C", "A+/B", "A+/C"]);
        // VF absent: A median 200, B median 1000, C 2000.
        assert_eq!(
            line("VF absent")[3..],
            ["200", "200", "1000", "2000", "0.20", "0.10", "0.20", "0.10"]
        );
        assert_eq!(line("state kept")[2..6], ["3/3", "3/3", "3/3", "0/3"]);
    }

    #[test]
    fn targets_judge_the_medians_and_every_run() {
        let all = targets(&sample());
        assert!(all.iter().all(|t| t.met), "{all:?}");
        let mut worse = sample();
        worse[1].state_kept = false;
        worse[0].vf_absent_ms = 5000;
        worse[4].vf_absent_ms = 5000;
        let judged = targets(&worse);
        let by = |what: &str| judged.iter().find(|t| t.what.starts_with(what)).unwrap();
        assert!(!by("VF absent").met, "{judged:?}");
        assert!(!by("A and A+ keep").met);
        assert_eq!(by("A and A+ keep").detail, "5 of 6 runs");
    }

    #[test]
    fn the_typical_run_has_the_median_blackout() {
        let mut runs = sample();
        for (r, b) in runs
            .iter_mut()
            .filter(|r| r.variant == Variant::Vfmig)
            .zip([900, 100, 500])
        {
            r.blackout_ms = b;
        }
        assert_eq!(typical(&runs, Variant::Vfmig).unwrap().blackout_ms, 500);
    }
}
