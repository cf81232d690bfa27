//! `vfmig-bed demo`: vfmig's main job on the local QEMU test bed. Boots a guest on a source
//! QEMU with an e1000e VF and a standby virtio-net, a destination QEMU waiting with an empty
//! root port, and a peer host probing the guest; then runs `vfmig-host migrate` exactly as a
//! migration hook would and reports what the peer saw. `vfmig-bed demo --libvirt` does the
//! same between two libvirt hosts ([`libvirt`]). Everything it starts lives in network
//! namespaces it makes and is killed when it ends.

mod libvirt;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::Duration;

use serde_json::json;
use vfmig_testbed::fabric::{Fabric, GUEST_V4};
use vfmig_testbed::image::guest_image;
use vfmig_testbed::probe::{wait_answering, Probe, ProbeReport, TcpProbe};
use vfmig_testbed::vm::{vf_device_json, ScratchDir, Vm, VmConfig, VF_ID};

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

/// What the peer saw, and the exit status: vfmig-host's success and a live connection.
fn peer_saw(report: &ProbeReport, alive: &Result<(), String>, timeline: &std::path::Path, migrated: bool) -> ExitCode {
    println!("\nwhat the peer saw:");
    println!(
        "  longest blackout {} ms; {} of {} probes lost",
        report.max_gap.as_millis(),
        report.lost(),
        report.sent
    );
    match alive {
        Ok(()) => println!("  the TCP connection opened before the migration passed data both ways after it"),
        Err(e) => println!("  the TCP connection opened before the migration broke: {e}"),
    }
    let json: PathBuf = std::env::temp_dir().join("vfmig-demo-timeline.json");
    if std::fs::copy(timeline, &json).is_ok() {
        println!("  timeline as JSON: {}", json.display());
    }
    if migrated && alive.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn demo() -> Result<ExitCode, String> {
    let host_bin = host_bin()?;
    let image = guest_image()?;
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
        pf: false,
        spare_port: false,
        second_vf: None,
    };
    println!("booting the guest on the source QEMU (TCG) ...");
    let source = Vm::start(image, &dir.0, &vm("source", "tap-src", true, false)).map_err(|e| e.to_string())?;
    let destination =
        Vm::start(image, &dir.0, &vm("destination", "tap-dst", false, true)).map_err(|e| e.to_string())?;
    let echo = SocketAddr::new(GUEST_V4.parse().expect("constant"), 7);
    wait_answering(&fabric.peer, echo, Duration::from_secs(90))?;
    println!(
        "guest up after {:.1} s; the peer holds a TCP connection and probes UDP echo at 1 kHz",
        source.started.elapsed().as_secs_f64()
    );
    let mut tcp = TcpProbe::connect(&fabric.peer, echo).map_err(|e| e.to_string())?;
    tcp.round_trip("before\n").map_err(|e| e.to_string())?;

    let uri = format!("unix:{}", dir.0.join("migration.sock").display());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let dst = destination.qmp().await?;
        dst.execute("migrate-incoming", Some(json!({ "uri": uri })))
            .await
            .map_err(|e| e.to_string())
            .map(drop)
    })?;
    let probe = Probe::start(&fabric.peer, echo).map_err(|e| e.to_string())?;

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
    println!("\n$ vfmig-host migrate --vf {VF_ID} --uri {uri} --dest-… --plug-device '{{\"driver\":\"e1000e\",\"mac\":\"{FRESH_MAC}\",…}}'");
    let (migrated, report, alive) = run_probed(cmd, &host_bin, probe, &mut tcp)?;
    Ok(peer_saw(&report, &alive, &timeline, migrated))
}

/// Runs vfmig-host, then stops the peer's probe and passes data over its TCP connection.
fn run_probed(
    mut cmd: Command,
    host_bin: &std::path::Path,
    probe: Probe,
    tcp: &mut TcpProbe,
) -> Result<(bool, ProbeReport, Result<(), String>), String> {
    let status = cmd
        .status()
        .map_err(|e| format!("running {}: {e}", host_bin.display()))?;
    std::thread::sleep(Duration::from_millis(500));
    let report = probe.stop();
    let alive = tcp.round_trip("after\n").map_err(|e| e.to_string());
    Ok((status.success(), report, alive))
}
