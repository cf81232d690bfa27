//! Faults on the host agent's side, with the real `vfmig-host` command on the test bed: the
//! process killed (kill -9) at each phase boundary and run again, its QMP connection cut, and
//! the guest channel cut in the middle of a frame. Whatever the outcome — completed on the
//! destination or settled on the source — the guest must end with a working NIC carrying the
//! network it had, the peer's TCP connection must survive, and the journal must be gone.

use std::process::Output;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use vfmig_testbed::bed::{echo, vf_mac, Bed, NETWORK, SOURCE_MAC};
use vfmig_testbed::host_cli::{command, reached, run, run_until, Sockets};
use vfmig_testbed::probe::{wait_answering, TcpProbe};
use vfmig_testbed::proxy::Proxy;
use vfmig_testbed::vm::Vm;

/// Where the VM runs after the command's second run, checked as an operator would: exit 0
/// means on the destination with its state restored, 1 a defined outcome on the source with
/// the VF plugged.
async fn settled_side<'a>(bed: &'a Bed, out: &Output) -> (&'a Vm, String) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    match out.status.code() {
        Some(0) => (&bed.destination, "completed, restored on the destination".into()),
        Some(1) => {
            assert_eq!(vf_mac(&bed.src).await, SOURCE_MAC, "{stdout}{stderr}");
            let why = stderr.lines().last().unwrap_or_default().replace("vfmig-host: ", "");
            (&bed.source, format!("stayed on the source, VF kept: {why}"))
        }
        other => panic!("vfmig-host exited {other:?}:\n{stdout}\n{stderr}"),
    }
}

/// The guest's network on `vm` as `ip` shows it.
async fn network(vm: &Vm) -> String {
    let mut shell = vm
        .shell(Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    shell.ok(NETWORK).await.unwrap_or_else(|e| panic!("{e}"))
}

/// After the fault and the second run: the network as before, on a working NIC, the peer's
/// connection alive, no journal left.
async fn assert_nothing_lost(
    bed: &Bed,
    sockets: &Sockets,
    before: &str,
    tcp: &mut TcpProbe,
    out: &Output,
    what: &str,
) -> String {
    let (vm, said) = settled_side(bed, out).await;
    assert_eq!(network(vm).await, before, "{what}: the guest's network changed");
    wait_answering(&bed.fabric.peer, echo(), Duration::from_secs(10)).unwrap_or_else(|e| panic!("{what}: {e}"));
    tcp.round_trip("after\n")
        .unwrap_or_else(|e| panic!("{what}: the TCP connection broke: {e}"));
    assert!(!sockets.journal.exists(), "{what}: the journal was left behind");
    said
}

/// A booted bed with the peer's connection open and the guest's network noted.
async fn ready() -> (Bed, TcpProbe, String) {
    let bed = Bed::start(true, true).await;
    bed.wait_booted();
    let tcp = TcpProbe::connect(&bed.fabric.peer, echo()).expect("TCP to the guest");
    let before = network(&bed.source).await;
    assert!(
        before.contains("198.18.0.10/24") && before.contains("table 100"),
        "{before}"
    );
    (bed, tcp, before)
}

/// Kills `vfmig-host migrate` (kill -9) when it reports each phase in turn, each on a fresh
/// bed, then runs the same command again: it must find where things stand from QEMU, the
/// guest and its journal, and — the destination being alive — finish the migration.
#[tokio::test(flavor = "current_thread")]
async fn killing_vfmig_host_at_any_phase_boundary_and_running_it_again_loses_nothing() {
    let phases = [
        "Negotiated",
        "HookEnabled",
        "PrecopyStarted",
        "Held",
        "StateSaved",
        "UnplugRequested",
        "Unplugged",
        "HookDisabled",
        "Released",
        "Completed",
        "Plugged",
    ];
    let mut table = Vec::new();
    for at in phases {
        let (bed, mut tcp, before) = ready().await;
        let sockets = Sockets::direct(&bed);
        let (killed, first) = run_until(
            command(&bed, &sockets),
            |line| reached(line, at),
            |child| kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL).expect("kill -9"),
        );
        assert!(
            killed,
            "{at} never reached:\n{}",
            String::from_utf8_lossy(&first.stderr)
        );
        assert!(sockets.journal.exists(), "killed at {at}: no journal to take up");
        let second = run(command(&bed, &sockets));
        let stderr = String::from_utf8_lossy(&second.stderr);
        let resumed = stderr
            .lines()
            .find(|l| l.contains("Resumed"))
            .and_then(|l| l.split_once("Resumed"))
            .map(|(_, rest)| {
                rest.trim_start_matches(|c| c != ':')
                    .trim_start_matches(": ")
                    .to_owned()
            })
            .unwrap_or_else(|| panic!("killed at {at}: the second run did not take up the first:\n{stderr}"));
        let said = assert_nothing_lost(&bed, &sockets, &before, &mut tcp, &second, at).await;
        // The destination is alive throughout, so every way forward ends there.
        assert_eq!(second.status.code(), Some(0), "killed at {at}: {said}");
        let row = format!("{at}: {resumed} → {said}");
        println!("killed at {row}");
        table.push(row);
    }
    println!("\n{}", table.join("\n"));
}

/// The host agent's QMP connection is cut while pre-copy is held: it connects again and takes
/// the migration up from its journal.
#[tokio::test(flavor = "current_thread")]
async fn a_lost_qmp_connection_is_opened_again_and_the_migration_finished() {
    let (bed, mut tcp, before) = ready().await;
    let mut sockets = Sockets::direct(&bed);
    let proxy = Proxy::start(&bed.dir.0.join("qmp-relay.sock"), &sockets.src_qmp).expect("relay");
    sockets.src_qmp = proxy.path.clone();
    let (cut, out) = run_until(command(&bed, &sockets), |l| reached(l, "Held"), |_| proxy.cut());
    assert!(cut && proxy.cuts() == 1);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("connecting again"), "{stderr}");
    assert!(stderr.contains("Resumed"), "{stderr}");
    let said = assert_nothing_lost(&bed, &sockets, &before, &mut tcp, &out, "QMP cut").await;
    assert_eq!(out.status.code(), Some(0), "{said}");
    println!("QMP connection cut while held: {said}");
}

/// The guest channel is cut in the middle of the save request's frame: half of it reaches the
/// guest, the host reconnects, syncs past the half frame and asks again.
#[tokio::test(flavor = "current_thread")]
async fn a_guest_channel_cut_in_mid_frame_is_reconnected_and_the_request_sent_again() {
    let (bed, mut tcp, before) = ready().await;
    let mut sockets = Sockets::direct(&bed);
    let proxy = Proxy::start(&bed.dir.0.join("agent-relay.sock"), &sockets.src_agent).expect("relay");
    sockets.src_agent = proxy.path.clone();
    // The next frame the host sends after the hold is prepare_unplug.
    let (armed, out) = run_until(
        command(&bed, &sockets),
        |l| reached(l, "Held"),
        |_| proxy.cut_mid_frame(),
    );
    assert!(armed && proxy.cuts() == 1, "the cut did not happen");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let said = assert_nothing_lost(&bed, &sockets, &before, &mut tcp, &out, "chardev cut").await;
    assert_eq!(out.status.code(), Some(0), "{said}\n{stderr}");
    println!("guest channel cut in mid-frame while held: {said}");
}
