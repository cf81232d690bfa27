//! `vfmig-bed demo --libvirt`: the main job between two libvirt hosts. Two libvirtd, each in
//! namespaces of its own and running vfmig's shipped hook; the guest boots as a libvirt domain
//! on host 1, and `vfmig-host migrate --libvirt` moves it to host 2 as an operator would run
//! it, while the peer probes it. Then what libvirt and the hook say on each host.

use std::process::{ExitCode, Stdio};

use vfmig_testbed::bed::{echo, BOOT};
use vfmig_testbed::libvirt::{GuestDomain, LibvirtBed};
use vfmig_testbed::probe::{wait_answering, Probe, TcpProbe};

use super::{host_bin, peer_saw, run_probed, FRESH_MAC, SOURCE_MAC};

const NAME: &str = "vfmig-guest";

pub fn demo() -> Result<ExitCode, String> {
    let host_bin = host_bin()?;
    println!("starting two libvirt hosts (libvirtd in namespaces of their own), each with vfmig's hook ...");
    let bed =
        LibvirtBed::start_with(|host| host.install_vfmig_hook(&host_bin, "[hook]\n")).map_err(|e| e.to_string())?;
    let [one, two] = &bed.hosts;
    let guest = GuestDomain::new(NAME, SOURCE_MAC);
    let xml = bed.domain_xml(&guest).map_err(|e| e.to_string())?;
    println!("booting {NAME} on {} (TCG) ...", one.name);
    one.virsh(&["define", &xml.display().to_string()])
        .map_err(|e| e.to_string())?;
    one.virsh(&["start", NAME]).map_err(|e| e.to_string())?;
    wait_answering(&bed.peer, echo(), BOOT)?;
    println!("guest up; the peer holds a TCP connection and probes UDP echo at 1 kHz");
    let mut tcp = TcpProbe::connect(&bed.peer, echo()).map_err(|e| e.to_string())?;
    tcp.round_trip("before\n").map_err(|e| e.to_string())?;
    let probe = Probe::start(&bed.peer, echo()).map_err(|e| e.to_string())?;

    let timeline = bed.dir.join("timeline.json");
    let mut cmd = bed
        .vfmig_migrate(&host_bin, NAME, FRESH_MAC)
        .ok_or("host 1 is not running")?;
    cmd.arg("--json").arg(&timeline).stdin(Stdio::null());
    println!(
        "\n$ vfmig-host migrate --libvirt {NAME} --connect {} --uri {} --vf ua-vf --plug-device '{{\"xml\":\"<interface …><mac address=\\\"{FRESH_MAC}\\\"/>…\"}}'",
        one.uri(),
        two.uri()
    );
    let (migrated, report, alive) = run_probed(cmd, &host_bin, probe, &mut tcp)?;

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
    let code = peer_saw(&report, &alive, &timeline, migrated);
    bed.stop();
    Ok(code)
}
