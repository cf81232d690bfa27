//! `vfmig-bed demo --libvirt`: the main job between two libvirt hosts. Two libvirtd, each in
//! namespaces of its own and running vfmig's shipped hook; the guest boots as a libvirt domain
//! on host 1, and `vfmig-host migrate --libvirt` moves it to host 2 as an operator would run
//! it, while the peer probes it. Then what libvirt and the hook say on each host, and the
//! summary.

use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use vfmig_testbed::bed::{echo, BOOT, STATE};
use vfmig_testbed::libvirt::{GuestDomain, Host, LibvirtBed};
use vfmig_testbed::probe::{wait_answering, Probe, TcpProbe};
use vfmig_testbed::shell::GuestShell;

use super::{bed_lock, host_bin, image, lines, run_probed, summary, Stage, FRESH_MAC, SHELL, SOURCE_MAC};

const NAME: &str = "vfmig-guest";

pub fn demo() -> Result<ExitCode, String> {
    let started = Instant::now();
    let host_bin = host_bin()?;
    image()?;
    let lock = bed_lock();
    let starting =
        Stage::start("starting two libvirt hosts (libvirtd in namespaces of their own), each with vfmig's hook");
    let bed = LibvirtBed::start_holding(lock, |host| host.install_vfmig_hook(&host_bin, "[hook]\n"))
        .map_err(|e| e.to_string())?;
    let [one, two] = &bed.hosts;
    starting.end(&format!("{} and {} run libvirtd", one.name, two.name));
    let guest = GuestDomain::new(NAME, SOURCE_MAC);
    let xml = bed.domain_xml(&guest).map_err(|e| e.to_string())?;
    let booting = Stage::start(&format!(
        "booting {NAME} on {} (TCG), its one NIC the emulated VF",
        one.name
    ));
    one.virsh(&["define", &xml.display().to_string()])
        .map_err(|e| e.to_string())?;
    one.virsh(&["start", NAME]).map_err(|e| e.to_string())?;
    wait_answering(&bed.peer, echo(), BOOT)?;
    booting.end(&format!("the guest answers the peer at {}", echo().ip()));

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let watching = Stage::start(
        "the peer opens a TCP connection to the guest and probes its UDP echo at 1 kHz; \
         the guest's addresses, routes and neighbours are noted",
    );
    let mut tcp = TcpProbe::connect(&bed.peer, echo()).map_err(|e| e.to_string())?;
    tcp.round_trip("before\n").map_err(|e| e.to_string())?;
    let before = rt.block_on(network(one, &guest))?;
    let probe = Probe::start(&bed.peer, echo()).map_err(|e| e.to_string())?;
    watching.end(&format!("{} lines of network state noted", lines(&before).len()));

    let timeline = bed.dir.join("timeline.json");
    let mut cmd = bed
        .vfmig_migrate(&host_bin, NAME, FRESH_MAC)
        .ok_or("host 1 is not running")?;
    cmd.arg("--json").arg(&timeline).stdin(Stdio::null());
    let shown = format!(
        "$ vfmig-host migrate --libvirt {NAME} --connect {} --uri {} --vf ua-vf --plug-device '{{\"xml\":\"<interface …><mac address=\\\"{FRESH_MAC}\\\"/>…\"}}'",
        one.uri(),
        two.uri()
    );
    let run = run_probed(cmd, &shown, &host_bin, probe, &mut tcp)?;
    let after = rt.block_on(network(two, &guest));

    println!("\nwhat libvirt says:");
    for host in [one, two] {
        let domains = host.domains().map_err(|e| e.to_string())?;
        let macs = match domains.iter().any(|d| d == NAME) {
            true => host
                .virsh(&["domiflist", NAME])
                .map_err(|e| e.to_string())?
                .lines()
                .filter_map(|l| {
                    l.split_whitespace()
                        .last()
                        .filter(|m| m.contains(':'))
                        .map(str::to_owned)
                })
                .collect::<Vec<_>>()
                .join(", "),
            false => String::new(),
        };
        match macs.is_empty() {
            true => println!("  {}: domains {domains:?}", host.name),
            false => println!("  {}: domains {domains:?}; {NAME}'s NICs: {macs}", host.name),
        }
    }
    let log = std::fs::read_to_string(
        two.path(std::path::Path::new("/var/log/vfmig/hook.log"))
            .ok_or("no hook log")?,
    )
    .unwrap_or_default();
    println!(
        "  {}'s vfmig hook: {}",
        two.name,
        log.lines().last().unwrap_or("(nothing logged)")
    );
    let code = summary(&run, &timeline, &before, &after, started);
    let stopping = Stage::start("stopping both libvirt hosts");
    let stopped: Duration = bed.stop();
    stopping.end(&format!("stopped in {} ms", stopped.as_millis()));
    Ok(code)
}

/// The guest's network on `host`, through the test shell's channel there.
async fn network(host: &Host, guest: &GuestDomain) -> Result<String, String> {
    let socket = host
        .path(&guest.shell_socket())
        .ok_or_else(|| format!("{}: the shell's socket is outside libvirt's directories", host.name))?;
    let mut shell = GuestShell::connect(&socket, SHELL)
        .await
        .map_err(|e| format!("{}: {e}", host.name))?;
    shell.ok(STATE).await
}
