//! `vfmig-bed demo`: vfmig's main job on the local QEMU test bed. Boots a guest on a source
//! QEMU with an e1000e VF and a standby virtio-net, a destination QEMU waiting with an empty
//! root port, and a peer host probing the guest; then runs `vfmig-host migrate` exactly as a
//! migration hook would and reports what the peer saw. `vfmig-bed demo --libvirt` does the
//! same between two libvirt hosts ([`libvirt`]). Everything it starts lives in network
//! namespaces it makes and is killed when it ends.
//!
//! It says what it does as it goes ([`stage`]): each stage once, a sign of life while one runs,
//! the timeline once, and a summary at the end.

mod libvirt;
mod stage;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use vfmig_host::migration::Phase;
use vfmig_testbed::bed::STATE;
use vfmig_testbed::fabric::{Fabric, GUEST_V4};
use vfmig_testbed::image::{guest_image_showing, GuestImage};
use vfmig_testbed::probe::{wait_answering, Probe, ProbeReport, TcpProbe};
use vfmig_testbed::vm::{vf_device_json, ScratchDir, Vm, VmConfig, VF_ID};
use vfmig_testbed::{exclusive_or, Exclusive};

use stage::{took, Stage};

const SOURCE_MAC: &str = "52:54:00:10:00:01";
const FRESH_MAC: &str = "52:54:00:20:00:02";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args[..] {
        ["demo"] => demo(),
        ["demo", "--libvirt"] => libvirt::demo(),
        _ => {
            eprintln!("usage: vfmig-bed demo [--libvirt]   (as root; runs vfmig-host from beside this binary)");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vfmig-bed: {e}");
            ExitCode::from(2)
        }
    }
}

/// The vfmig-host beside this binary.
fn host_bin() -> Result<PathBuf, String> {
    Ok(std::env::current_exe()
        .map_err(|e| e.to_string())?
        .with_file_name("vfmig-host"))
}

/// The test guest image, built by images/build or found in its cache, the build shown as it
/// goes.
fn image() -> Result<&'static GuestImage, String> {
    let stage = Stage::start("building the test guest image (images/build: minutes on a first run, then cached)");
    // Its own line per step is kept; cargo's line per crate is progress.
    let image = guest_image_showing(&mut |line| match line.starts_with("images/build:") {
        true => stage.note(line),
        false => stage.say(line),
    })?;
    stage.end("the guest image is ready");
    Ok(image)
}

fn demo() -> Result<ExitCode, String> {
    let started = Instant::now();
    let host_bin = host_bin()?;
    let image = image()?;
    let _bed = bed_lock();
    let booting = Stage::start(
        "booting the guest on the source QEMU (TCG), with an e1000e VF and a standby virtio-net; \
         the destination QEMU waits with an empty root port; a peer host on the fabric",
    );
    let fabric = Fabric::new().map_err(|e| e.to_string())?;
    // Each host has the VF's tap and the standby virtio-net's.
    for tap in ["tap-src", "tap-dst", "tap-src-sb", "tap-dst-sb"] {
        fabric.add_tap(tap).map_err(|e| e.to_string())?;
    }
    let dir = ScratchDir::new("demo").map_err(|e| e.to_string())?;
    let vm = |name, tap: &str, nic, incoming| VmConfig {
        name,
        tap: Some(tap.into()),
        nic,
        mac: SOURCE_MAC.into(),
        agent: true,
        incoming,
        hook: true,
        iommu: false,
        standby: true,
        failover: false,
        pf: None,
        spare_port: false,
        second_vf: None,
    };
    let source = Vm::start(image, &dir.0, &vm("source", "tap-src", true, false)).map_err(|e| e.to_string())?;
    let destination =
        Vm::start(image, &dir.0, &vm("destination", "tap-dst", false, true)).map_err(|e| e.to_string())?;
    let echo = SocketAddr::new(GUEST_V4.parse().expect("constant"), 7);
    wait_answering(&fabric.peer, echo, Duration::from_secs(90))?;
    booting.end(&format!("the guest answers the peer at {GUEST_V4}"));

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let watching = Stage::start(
        "the peer opens a TCP connection to the guest and probes its UDP echo at 1 kHz; \
         the guest's addresses, routes and neighbours are noted",
    );
    let mut tcp = TcpProbe::connect(&fabric.peer, echo).map_err(|e| e.to_string())?;
    tcp.round_trip("before\n").map_err(|e| e.to_string())?;
    let before = rt.block_on(async { source.shell(SHELL).await?.ok(STATE).await })?;
    let uri = format!("unix:{}", dir.0.join("migration.sock").display());
    rt.block_on(async {
        let dst = destination.qmp().await?;
        dst.execute("migrate-incoming", Some(json!({ "uri": uri })))
            .await
            .map_err(|e| e.to_string())
            .map(drop)
    })?;
    let probe = Probe::start(&fabric.peer, echo).map_err(|e| e.to_string())?;
    watching.end(&format!("{} lines of network state noted", lines(&before).len()));

    let timeline = dir.0.join("timeline.json");
    let mut cmd = Command::new(&host_bin);
    cmd.arg("migrate")
        .arg("--qmp")
        .arg(source.dir.join("qmp.sock"))
        .arg("--agent")
        .arg(source.dir.join("agent.sock"))
        .args(["--vf", VF_ID, "--uri", &uri, "--vf-device"])
        .arg(vf_device_json("e1000e", VF_ID, SOURCE_MAC).to_string())
        .arg("--dest-qmp")
        .arg(destination.dir.join("qmp.sock"))
        .arg("--dest-agent")
        .arg(destination.dir.join("agent.sock"))
        .arg("--plug-device")
        .arg(vf_device_json("e1000e", VF_ID, FRESH_MAC).to_string())
        .arg("--json")
        .arg(&timeline);
    let shown = format!(
        "$ vfmig-host migrate --vf {VF_ID} --uri {uri} --dest-… --plug-device '{{\"driver\":\"e1000e\",\"mac\":\"{FRESH_MAC}\",…}}'"
    );
    let run = run_probed(cmd, &shown, &host_bin, probe, &mut tcp)?;
    let after = rt.block_on(async { destination.shell(SHELL).await?.ok(STATE).await });
    Ok(summary(&run, &timeline, &before, &after, started))
}

/// The machine's VM lock, the tests' too: QEMU under TCG wants both cores, so the demo waits
/// for a VM test that runs, and says so.
fn bed_lock() -> Exclusive {
    let (lock, waited) = exclusive_or(|| {
        Stage::start(&format!(
            "waiting for the test bed: a VM test holds {}",
            std::env::temp_dir().join("vfmig-testbed.lock").display()
        ))
    });
    if let Some(stage) = waited {
        stage.end("the test bed is free");
    }
    lock
}

/// How long the guest's shell may take to answer.
const SHELL: Duration = Duration::from_secs(30);

/// What a migration showed: vfmig-host's success, what the peer's probes saw, and whether the
/// peer's TCP connection passed data both ways after it.
struct Run {
    migrated: bool,
    report: ProbeReport,
    alive: Result<(), String>,
}

/// Runs vfmig-host, then stops the peer's probe and passes data over its TCP connection.
///
/// The timeline is shown once: vfmig-host's table (its standard output) at the end. Its live
/// line per phase (standard error), less the detail the table has, is the progress meanwhile:
/// the phase reached and pre-copy's remainder, on a terminal as the stage's status line, in a
/// log with the stage's next sign of life. Anything else it says (why it failed) is printed as
/// it comes.
fn run_probed(mut cmd: Command, shown: &str, host_bin: &Path, probe: Probe, tcp: &mut TcpProbe) -> Result<Run, String> {
    let stage = Stage::start("migrating: vfmig-host runs as a migration hook would run it");
    stage.note(shown);
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running {}: {e}", host_bin.display()))?;
    let (Some(mut stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return Err("vfmig-host: no pipes to read".into());
    };
    let table = std::thread::spawn(move || {
        let mut out = String::new();
        stdout.read_to_string(&mut out).map(|_| out)
    });
    for line in BufReader::new(stderr).split(b'\n') {
        let line = line.map_err(|e| format!("reading vfmig-host's output: {e}"))?;
        let line = String::from_utf8_lossy(&line);
        match is_phase(&line) {
            true => stage.show(line.split_once(": ").map_or(&*line, |(phase, _detail)| phase)),
            false => stage.note(&line),
        }
    }
    let status = child.wait().map_err(|e| format!("waiting for vfmig-host: {e}"))?;
    let table = table
        .join()
        .map_err(|_| "reading vfmig-host's output panicked".to_string())?
        .map_err(|e| format!("reading vfmig-host's output: {e}"))?;
    stage.end(&match status.success() {
        true => "vfmig-host exited 0: migrated, the guest's state restored on the fresh VF".to_string(),
        false => format!("vfmig-host failed ({status})"),
    });
    print!("{table}");
    // The peer's last probes answer after the restore.
    std::thread::sleep(Duration::from_millis(500));
    let report = probe.stop();
    let alive = tcp.round_trip("after\n").map_err(|e| e.to_string());
    Ok(Run {
        migrated: status.success(),
        report,
        alive,
    })
}

/// A line of vfmig-host's live timeline: "  1280 ms  Held (pre-copy 62%, …): detail".
fn is_phase(line: &str) -> bool {
    line.trim_start()
        .split_once(" ms  ")
        .is_some_and(|(ms, _)| ms.parse::<u64>().is_ok())
}

/// The lines of the guest's network state, as a set: the tests compare them the same way.
fn lines(state: &str) -> BTreeSet<&str> {
    state.lines().map(str::trim).filter(|l| !l.is_empty()).collect()
}

/// The closing summary, and the demo's exit status: success when vfmig-host succeeded, the
/// peer's TCP connection survived and the guest's network is what it was.
fn summary(run: &Run, timeline: &Path, before: &str, after: &Result<String, String>, started: Instant) -> ExitCode {
    let json: Option<serde_json::Value> = std::fs::read_to_string(timeline)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok());
    let at = |phase: Phase| {
        json.as_ref()?["steps"]
            .as_array()?
            .iter()
            .find(|s| s["phase"].as_str() == Some(phase.name().as_str()))?["at_ms"]
            .as_u64()
    };
    let absent = at(Phase::UnplugRequested)
        .zip(at(Phase::Restored))
        .map(|(unplug, restored)| restored.saturating_sub(unplug));
    let downtime = json.as_ref().and_then(|j| j["qemu"]["downtime_ms"].as_u64());
    let report = &run.report;
    println!("\nsummary:");
    match absent {
        Some(ms) => println!(
            "  VF absent           {ms:>6} ms  from the unplug request to the guest's restore onto the fresh VF"
        ),
        None => println!("  VF absent                -     the timeline has no unplug and restore"),
    }
    println!(
        "  peer blackout       {:>6} ms  the longest gap in the peer's 1 kHz probes ({} of {} lost)",
        report.max_gap.as_millis(),
        report.lost(),
        report.sent
    );
    match downtime {
        Some(ms) => println!("  QEMU downtime       {ms:>6} ms  as QEMU reports it"),
        None => println!("  QEMU downtime            -     not reported (libvirt's job information has none)"),
    }
    match &run.alive {
        Ok(()) => println!("  TCP survived           yes     the connection opened before the migration passed data both ways after it"),
        Err(e) => println!("  TCP survived            no     {e}"),
    }
    let equal = match after {
        Ok(after) => {
            let (was, is) = (lines(before), lines(after));
            let equal = was == is;
            match equal {
                true => println!(
                    "  guest state equal      yes     the same {} lines of addresses, routes and permanent neighbours before (source) and after (destination)",
                    was.len()
                ),
                false => {
                    println!("  guest state equal       no");
                    for gone in was.difference(&is) {
                        println!("      gone: {gone}");
                    }
                    for new in is.difference(&was) {
                        println!("      new:  {new}");
                    }
                }
            }
            equal
        }
        Err(e) => {
            println!("  guest state equal       no     the guest's shell on the destination: {e}");
            false
        }
    };
    let json_copy = std::env::temp_dir().join("vfmig-demo-timeline.json");
    if std::fs::copy(timeline, &json_copy).is_ok() {
        println!("  timeline as JSON: {}", json_copy.display());
    }
    println!("  the demo took {}", took(started.elapsed()));
    if run.migrated && run.alive.is_ok() && equal {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_phase_line_is_told_from_what_else_vfmig_host_says() {
        // As vfmig-host's observer prints a phase when its standard error is no terminal.
        assert!(is_phase(
            "  1280 ms  Held (pre-copy 62%, 51.3 MiB left): max-bandwidth 4096 B/s"
        ));
        assert!(is_phase("    12 ms  Negotiated: vfmig-guestd 0.1.0, standby sb0"));
        assert!(!is_phase("vfmig-host: guest: eth0: 1 failed"));
        assert!(!is_phase("vfmig-host: the destination took 1200 ms  to answer"));
    }

    #[test]
    fn durations_read_as_seconds_then_minutes() {
        assert_eq!(took(Duration::from_millis(8420)), "8.4 s");
        assert_eq!(took(Duration::from_secs(192)), "3 min 12 s");
    }
}
