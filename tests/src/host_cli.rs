//! `vfmig-host migrate` run as its own process against a bed, as an operator's hook runs it:
//! its progress lines read as they come, something done to it or to the bed at a phase, and
//! its exit status and output.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::bed::{agent, Bed, FRESH_MAC, SOURCE_MAC};
use crate::host_bin;
use crate::vm::{vf_device_json, HOST_QMP, VF_ID};

/// The sockets and the journal a run uses (a run taken up uses the same).
pub struct Sockets {
    pub src_qmp: PathBuf,
    pub src_agent: PathBuf,
    pub journal: PathBuf,
}

impl Sockets {
    pub fn direct(bed: &Bed) -> Self {
        Self {
            src_qmp: bed.source.dir.join(HOST_QMP),
            src_agent: agent(&bed.source),
            journal: bed.dir.0.join("vm.vfmig-journal"),
        }
    }
}

/// `vfmig-host migrate` of the bed's VF, the destination step included, its output piped.
pub fn command(bed: &Bed, sockets: &Sockets) -> Command {
    let mut cmd = Command::new(host_bin());
    cmd.arg("migrate")
        .arg("--qmp")
        .arg(&sockets.src_qmp)
        .arg("--agent")
        .arg(&sockets.src_agent)
        .args(["--vf", VF_ID, "--uri", &bed.uri, "--agent-timeout", "10", "--vf-device"])
        .arg(vf_device_json("e1000e", VF_ID, SOURCE_MAC).to_string())
        .arg("--dest-qmp")
        .arg(bed.destination.dir.join(HOST_QMP))
        .arg("--dest-agent")
        .arg(agent(&bed.destination))
        .arg("--plug-device")
        .arg(vf_device_json("e1000e", VF_ID, FRESH_MAC).to_string())
        .arg("--journal")
        .arg(&sockets.journal)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// The progress line `vfmig-host` prints (not on a terminal) when it reaches `phase`.
pub fn reached(line: &str, phase: &str) -> bool {
    line.contains(&format!("ms  {phase}:")) || line.contains(&format!("ms  {phase} ("))
}

/// Runs the command and, on the first line matching `at`, calls `act` with the process; the
/// rest runs to the end. Returns the whole output.
pub fn run_until(mut cmd: Command, at: impl Fn(&str) -> bool, mut act: impl FnMut(&mut Child)) -> (bool, Output) {
    let mut child = cmd.spawn().expect("vfmig-host starts");
    let stderr = child.stderr.take().expect("piped");
    let mut seen = Vec::new();
    let mut fired = false;
    for line in BufReader::new(stderr).lines() {
        let Ok(line) = line else { break };
        println!("    | {line}");
        if !fired && at(&line) {
            act(&mut child);
            fired = true;
        }
        seen.push(line);
    }
    let mut out = child.wait_with_output().expect("vfmig-host ends");
    out.stderr = seen.join("\n").into_bytes();
    (fired, out)
}

/// Runs the command to its end, within a bound.
pub fn run(cmd: Command) -> Output {
    let started = Instant::now();
    let (_, out) = run_until(cmd, |_| false, |_| {});
    assert!(
        started.elapsed() < Duration::from_secs(180),
        "vfmig-host took {:?}",
        started.elapsed()
    );
    out
}
