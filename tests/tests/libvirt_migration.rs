//! vfmig on libvirt hosts: `vfmig-host migrate --libvirt` run on host 1 of the libvirt bed, as
//! an operator runs it, migrates the domain to host 2 through libvirt — the VF unplugged late
//! in pre-copy, the source's VF that libvirt defines on host 2 removed, a fresh VF attached
//! through libvirt — and the guest's network and the peer's TCP connection survive. A job
//! aborted after the unplug gives the VM back on host 1 with its VF and state. Both hosts run
//! vfmig's shipped libvirt hook: it lets vfmig's migration in, refuses a plain `virsh
//! migrate` of the domain with a message naming vfmig, and a hook that refuses stops vfmig's
//! migration before anything changed.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use vfmig_testbed::bed::{echo, BOOT, NETWORK};
use vfmig_testbed::host_bin;
use vfmig_testbed::host_cli::{reached, run_until};
use vfmig_testbed::libvirt::{BedError, GuestDomain, Host, LibvirtBed};
use vfmig_testbed::probe::{wait_answering, TcpProbe};
use vfmig_testbed::shell::GuestShell;

const NAME: &str = "vfmig-guest";
const SOURCE_MAC: &str = "52:54:00:10:00:01";
const FRESH_MAC: &str = "52:54:00:20:00:02";
/// The hook's configuration: the shipped one's defaults (the bed's VF is on no network).
const CONFIG: &str = "[hook]\nmark_max_age_s = 600\n";
/// Runs before vfmig's hook (names sort) and refuses every incoming migration.
const REFUSING_HOOK: &str = r#"#!/bin/sh
cat >/dev/null
[ "$2" = migrate ] || exit 0
echo "refused by the operator's own hook" >&2
exit 1
"#;

/// A booted guest on host 1, both hosts running vfmig's hook (and whatever `more` adds before
/// their libvirtd starts), the peer's connection to it, and its network.
async fn booted(more: impl Fn(&Host) -> Result<(), BedError>) -> (LibvirtBed, GuestDomain, TcpProbe, String) {
    let bed = LibvirtBed::start_with(|host| {
        host.install_vfmig_hook(&host_bin(), CONFIG)?;
        more(host)
    })
    .unwrap();
    let guest = GuestDomain::new(NAME, SOURCE_MAC);
    let xml = bed.domain_xml(&guest).unwrap();
    let one = &bed.hosts[0];
    one.virsh(&["define", &xml.display().to_string()]).unwrap();
    one.virsh(&["start", NAME]).unwrap();
    wait_answering(&bed.peer, echo(), BOOT).unwrap_or_else(|e| panic!("{e}"));
    let before = network(one, &guest).await;
    assert!(
        before.contains("198.18.0.10/24") && before.contains("table 100"),
        "{before}"
    );
    let mut tcp = TcpProbe::connect(&bed.peer, echo()).unwrap();
    tcp.round_trip("before\n").unwrap();
    (bed, guest, tcp, before)
}

/// What vfmig's hook logged on `host`.
fn hook_log(host: &Host) -> String {
    std::fs::read_to_string(host.path(Path::new("/var/log/vfmig/hook.log")).unwrap()).unwrap_or_default()
}

/// The guest as the peer and host 1 see it after a migration that did not happen: running on
/// host 1 only, its VF in libvirt's XML and in QEMU, its network as before, the connection
/// alive.
async fn still_on_host_one(bed: &LibvirtBed, guest: &GuestDomain, tcp: &mut TcpProbe, before: &str) {
    let [one, two] = &bed.hosts;
    assert_eq!(one.state(NAME).unwrap(), "running");
    assert_eq!(two.domains().unwrap(), Vec::<String>::new());
    assert_eq!(interfaces_with(one, SOURCE_MAC), 1, "the VF in host 1's XML");
    let present = one
        .virsh(&[
            "qemu-monitor-command",
            NAME,
            r#"{"execute":"qom-get","arguments":{"path":"/machine/peripheral/ua-vf","property":"mac"}}"#,
        ])
        .unwrap();
    assert!(present.contains(SOURCE_MAC), "the VF in QEMU: {present}");
    assert_eq!(network(one, guest).await, before, "the guest's network changed");
    wait_answering(&bed.peer, echo(), Duration::from_secs(10)).unwrap();
    tcp.round_trip("after\n").unwrap();
}

/// The guest's network on `host`, through the test shell's channel there.
async fn network(host: &Host, guest: &GuestDomain) -> String {
    shell(host, guest)
        .await
        .ok(NETWORK)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

async fn shell(host: &Host, guest: &GuestDomain) -> GuestShell {
    let socket = host.path(&guest.shell_socket()).expect("under libvirt's directories");
    GuestShell::connect(&socket, Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{}: {e}", host.name))
}

/// `vfmig-host migrate --libvirt` of the guest from host 1 to host 2, run on host 1.
fn vfmig(bed: &LibvirtBed) -> Command {
    let journal = bed.dir.join("vfmig.journal");
    let mut cmd = bed.vfmig_migrate(&host_bin(), NAME, FRESH_MAC).expect("host 1 runs");
    cmd.args(["--agent-timeout", "20", "--journal"])
        .arg(&journal)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

fn said(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .last()
        .unwrap_or_default()
        .to_owned()
}

/// The `<interface>` elements of a domain's live XML on `host` that carry `mac`.
fn interfaces_with(host: &Host, mac: &str) -> usize {
    let xml = host.virsh(&["dumpxml", NAME]).unwrap();
    xml.matches(&format!("<mac address='{mac}'/>")).count()
}

#[tokio::test(flavor = "current_thread")]
async fn vfmig_migrates_a_libvirt_domain_onto_a_fresh_vf_and_leaves_no_ghost() {
    let (bed, guest, mut tcp, before) = booted(|_| Ok(())).await;
    let [one, two] = &bed.hosts;
    let (_, out) = run_until(vfmig(&bed), |_| false, |_| {});
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));

    // libvirt's view on both hosts is the truth: the domain on host 2 only, with the fresh VF
    // and not the source's (removed, as the guest's ghost of it would be found by a rescan).
    assert_eq!(one.domains().unwrap(), Vec::<String>::new());
    assert_eq!(two.state(NAME).unwrap(), "running");
    assert_eq!(interfaces_with(two, FRESH_MAC), 1, "the fresh VF in host 2's XML");
    assert_eq!(
        interfaces_with(two, SOURCE_MAC),
        0,
        "a ghost of the source's VF in host 2's XML"
    );
    assert!(stdout.contains("ghost-removed"), "{stdout}");
    let hooked = hook_log(two);
    assert!(
        hooked.contains(&format!("{NAME}: migrate begin: vfmig's migration (marked ")) && hooked.contains("VF ua-vf"),
        "host 2's hook: {hooked}"
    );
    // vfmig's mark is off host 2's definition (a later plain migration is refused again);
    // the operator's list of VFs stays.
    let xml = two.virsh(&["dumpxml", NAME]).unwrap();
    assert!(!xml.contains("urn:vfmig:migration:1"), "{xml}");
    assert!(xml.contains("urn:vfmig:domain:1"), "{xml}");

    // The guest's network as it was, on the fresh VF; the peer's connection alive.
    assert_eq!(network(two, &guest).await, before, "the guest's network changed");
    tcp.round_trip("after\n").unwrap();

    // A PCI rescan in the guest brings back no old NIC.
    let mut sh = shell(two, &guest).await;
    sh.ok("echo 1 > /sys/bus/pci/rescan; sleep 2").await.unwrap();
    let links = sh.ok("cat /sys/class/net/*/address").await.unwrap();
    assert!(
        !links.contains(SOURCE_MAC),
        "the old NIC is back after a rescan: {links}"
    );
    assert!(links.contains(FRESH_MAC), "{links}");
    wait_answering(&bed.peer, echo(), Duration::from_secs(10)).unwrap();
    drop(sh);
    let footprint = bed.footprint();
    bed.stop();
    assert_eq!(footprint.left_behind(), Vec::<String>::new());
}

#[tokio::test(flavor = "current_thread")]
async fn a_job_aborted_after_the_unplug_gives_the_vm_back_with_its_vf() {
    let (bed, guest, mut tcp, before) = booted(|_| Ok(())).await;
    let one = &bed.hosts[0];
    let (aborted, out) = run_until(
        vfmig(&bed),
        |line| reached(line, "Unplugged"),
        |_| {
            one.virsh(&["domjobabort", NAME]).expect("virsh domjobabort");
        },
    );
    assert!(aborted, "the unplug was never reached");
    let message = said(&out);
    println!("{message}");
    assert_eq!(out.status.code(), Some(1), "{message}");
    assert!(message.contains("plugged back"), "{message}");

    still_on_host_one(&bed, &guest, &mut tcp, &before).await;
    let footprint = bed.footprint();
    bed.stop();
    assert_eq!(footprint.left_behind(), Vec::<String>::new());
}

#[tokio::test(flavor = "current_thread")]
async fn a_plain_virsh_migrate_is_refused_by_the_hook_with_a_message_naming_vfmig() {
    let (bed, guest, mut tcp, before) = booted(|_| Ok(())).await;
    let [one, two] = &bed.hosts;
    let refused = one
        .virsh(&[
            "migrate",
            "--live",
            "--p2p",
            "--persistent",
            "--undefinesource",
            NAME,
            &two.uri(),
        ])
        .expect_err("a plain migration of a domain with a VF for vfmig went through");
    let said = refused.to_string();
    println!("{said}");
    assert!(
        said.contains("vfmig: vfmig-guest's VF ua-vf is migrated by vfmig")
            && said.contains("vfmig-host migrate --libvirt vfmig-guest"),
        "{said}"
    );
    assert!(
        hook_log(two).contains(&format!("{NAME}: refused: vfmig: ")),
        "{}",
        hook_log(two)
    );
    still_on_host_one(&bed, &guest, &mut tcp, &before).await;
    let footprint = bed.footprint();
    bed.stop();
    assert_eq!(footprint.left_behind(), Vec::<String>::new());
}

#[tokio::test(flavor = "current_thread")]
async fn a_refusing_hook_on_the_destination_stops_vfmig_before_anything_changed() {
    let (bed, guest, mut tcp, before) = booted(|host| match host.n {
        2 => host.add_hook("40-refuse", REFUSING_HOOK),
        _ => Ok(()),
    })
    .await;
    let (_, out) = run_until(vfmig(&bed), |_| false, |_| {});
    let message = said(&out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}\n{message}");
    assert_eq!(out.status.code(), Some(1), "{message}");
    assert!(message.contains("refused by the operator's own hook"), "{message}");
    assert!(!stdout.contains("unplugged"), "the VF was unplugged: {stdout}");
    still_on_host_one(&bed, &guest, &mut tcp, &before).await;
    let footprint = bed.footprint();
    bed.stop();
    assert_eq!(footprint.left_behind(), Vec::<String>::new());
}
