//! vfmig side by side with QEMU's virtio-net failover and a plain unplug/replug, on the QEMU
//! test bed, in one run: rounds of A (vfmig), A+ (vfmig with a standby NIC), B (QEMU
//! failover), C (unplug/replug), alternating, each run on a fresh bed (see
//! `vfmig_testbed::compare::runner` for what is measured and how).
//!
//! Writes every run to `runs.json`, the table to `table.txt` and the probe series of each
//! variant's median-blackout run to `probe-series.svg`, in VFMIG_BENCH_OUT (default
//! `target/vfmig-compare`), and prints the table with ratios and the targets.
//! Rounds: VFMIG_BENCH_ROUNDS (default 3); VFMIG_BENCH_VARIANTS=A,B picks variants.
//!
//! Every variant migrates over a link of VFMIG_BENCH_LINK Mbit/s (QEMU's `max-bandwidth`;
//! default 312.5) with VFMIG_BENCH_FILL_MIB (default 256) of data in the guest's memory: a
//! 16 GiB guest half full on a 10 Gb/s link, scaled by 32 to the bed's 512 MiB guest. With
//! VFMIG_BENCH_LINK=none the bed migrates its mostly empty guest over a local socket at
//! memory speed, and pre-copy is over in about a second, which hides how each variant's VF
//! gap depends on pre-copy's length.

use std::path::PathBuf;
use std::process::{Command, ExitCode};

use serde_json::json;
use vfmig_testbed::compare::{plot, runner, summary, Run, Variant};

fn machine() -> serde_json::Value {
    let out = |cmd: &str, args: &[&str]| {
        Command::new(cmd)
            .args(args)
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .trim()
                    .to_string()
            })
            .unwrap_or_default()
    };
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    json!({
        "date": out("date", &["-u", "+%F"]),
        "cpu": cpu,
        "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "host_kernel": out("uname", &["-r"]),
        "qemu": out("qemu-system-x86_64", &["--version"]),
        "accel": std::env::var("VFMIG_ACCEL").unwrap_or_else(|_| "tcg".into()),
    })
}

/// The link from VFMIG_BENCH_LINK (Mbit/s, or `none`) and VFMIG_BENCH_FILL_MIB.
fn link() -> Result<Option<runner::Link>, String> {
    let mbit = std::env::var("VFMIG_BENCH_LINK").unwrap_or_else(|_| "312.5".into());
    if mbit == "none" {
        return Ok(None);
    }
    let mbit: f64 = mbit
        .parse()
        .ok()
        .filter(|m: &f64| m.is_finite() && *m >= 1.0)
        .ok_or_else(|| format!("VFMIG_BENCH_LINK={mbit:?}: give the link's speed in Mbit/s (at least 1), or none"))?;
    let fill_mib =
        match std::env::var("VFMIG_BENCH_FILL_MIB") {
            Ok(fill) => fill.parse().ok().filter(|f| *f <= 320).ok_or_else(|| {
                format!("VFMIG_BENCH_FILL_MIB={fill:?}: MiB of the 512 MiB guest's memory, at most 320")
            })?,
            Err(_) => 256,
        };
    Ok(Some(runner::Link {
        bytes_per_s: (mbit * 1e6 / 8.0) as u64,
        fill_mib,
    }))
}

fn main() -> ExitCode {
    let rounds: usize = std::env::var("VFMIG_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3)
        .max(1);
    // VFMIG_BENCH_VARIANTS=A+,B runs only those (for looking into one; the targets need all).
    let variants: Vec<Variant> = match std::env::var("VFMIG_BENCH_VARIANTS") {
        Ok(only) => Variant::ALL
            .into_iter()
            .filter(|v| only.split(',').any(|k| k.trim() == v.key()))
            .collect(),
        Err(_) => Variant::ALL.to_vec(),
    };
    let link = match link() {
        Ok(link) => link,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let out = std::env::var_os("VFMIG_BENCH_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/vfmig-compare"));
    if let Err(e) = std::fs::create_dir_all(&out) {
        eprintln!("{}: {e}", out.display());
        return ExitCode::from(2);
    }
    let mut machine = machine();
    machine["link"] = json!(link);
    let conditions = match link {
        Some(l) => format!(
            "a {:.1} Mbit/s migration link, {} MiB of data in the guest",
            l.bytes_per_s as f64 * 8.0 / 1e6,
            l.fill_mib
        ),
        None => "the bed's local migration socket, an idle guest".into(),
    };
    let mut runs: Vec<Run> = Vec::new();
    let total = rounds * variants.len();
    for round in 1..=rounds {
        for &variant in &variants {
            eprintln!(
                "[{}/{total}] round {round}: {} ({}) ...",
                runs.len() + 1,
                variant.key(),
                variant.label()
            );
            let run = match runner::run(variant, round, link) {
                Ok(run) => run,
                Err(e) => {
                    eprintln!("{} round {round} failed: {e}", variant.key());
                    return ExitCode::FAILURE;
                }
            };
            eprintln!(
                "    {}; total {} ms, QEMU downtime {} ms, pre-copy rx {:.2} of {:.2} MB/s{}",
                run.summary(),
                run.total_ms,
                run.qemu_downtime_ms.map_or("?".into(), |d| d.to_string()),
                run.precopy_rx_mb_s,
                run.offered_mb_s,
                if run.state_missing.is_empty() {
                    String::new()
                } else {
                    format!("; missing: {}", run.state_missing.join("; "))
                },
            );
            runs.push(run);
            // Written after every run, so that an interrupted benchmark keeps what it measured.
            let file = json!({ "machine": machine, "rounds": rounds, "runs": runs });
            let text = serde_json::to_string_pretty(&file).expect("runs serialise");
            if let Err(e) = std::fs::write(out.join("runs.json"), text) {
                eprintln!("writing runs.json: {e}");
                return ExitCode::from(2);
            }
        }
    }

    let table = summary::table(&runs);
    let mut report = format!(
        "medians of {rounds} rounds over {conditions}; {} {}, {} cores, host kernel {}, {} ({})\n\n{table}\ntargets:\n",
        machine["date"].as_str().unwrap_or_default(),
        machine["cpu"].as_str().unwrap_or_default(),
        machine["cores"],
        machine["host_kernel"].as_str().unwrap_or_default(),
        machine["qemu"].as_str().unwrap_or_default(),
        machine["accel"].as_str().unwrap_or_default(),
    );
    for target in summary::targets(&runs) {
        report.push_str(&format!(
            "  [{}] {}: {}\n",
            if target.met { "met" } else { "NOT met" },
            target.what,
            target.detail
        ));
    }
    println!("\n{report}");
    let typical: Vec<&Run> = Variant::ALL
        .iter()
        .filter_map(|v| summary::typical(&runs, *v))
        .collect();
    let svg = out.join("probe-series.svg");
    let title = format!(
        "The peer's 1 kHz echo probe through a live migration (median-blackout run of each; {conditions}; {} {})",
        machine["date"].as_str().unwrap_or_default(),
        machine["accel"].as_str().unwrap_or_default()
    );
    if let Err(e) = plot::probe_series(&typical, &title, &svg) {
        eprintln!("{e}");
        return ExitCode::from(2);
    }
    if let Err(e) = std::fs::write(out.join("table.txt"), &report) {
        eprintln!("writing table.txt: {e}");
        return ExitCode::from(2);
    }
    println!(
        "every run: {}\npicture:   {}",
        out.join("runs.json").display(),
        svg.display()
    );
    ExitCode::SUCCESS
}
