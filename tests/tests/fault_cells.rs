//! Faults on the real bed, one of each kind at the phase where it hurts most, each with a
//! standby NIC carrying the guest through the VF gap: the guest agent frozen (SIGSTOP) while
//! it saves, the destination QEMU killed while pre-copy is held, and the migration cancelled on
//! QEMU's monitor after the VF was unplugged. `vfmig-host migrate` runs as an operator's hook
//! runs it; each cell asserts its wall time against the deadline vfmig-host states (plus a
//! named margin), the exit status and the reason in its message, and the guest as it was:
//! the VF plugged, its addresses, routes and neighbours on it and none on the standby, no DMA
//! hook tracking, nothing left in the agent's runtime directory, the peer's TCP connection
//! alive. The cells share one bed: each gives the VM back as it was, and a new destination
//! QEMU waits for the next.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use vfmig_testbed::bed::{echo, vf_mac, Bed, NETWORK, SOURCE_MAC};
use vfmig_testbed::hook::CONTROL;
use vfmig_testbed::host_cli::{command, reached, run_until, Sockets};
use vfmig_testbed::probe::{wait_answering, TcpProbe};

/// Scheduling under TCG on a loaded 2-core machine, a process start and its QMP connect:
/// what a wall time may exceed the stated deadline by.
const MARGIN: Duration = Duration::from_secs(3);
/// The deadlines `vfmig-host migrate` states by default (its --help).
const PREPARE: Duration = Duration::from_secs(10);
const GIVEBACK: Duration = Duration::from_secs(30);
/// What the give-back waits per request for an agent that already missed a deadline.
const SILENT_GUEST_WAIT: Duration = Duration::from_secs(2);

/// Runs the command; when it prints `phase`, tells the test, which does its fault while the
/// command goes on. Returns the output and when the phase was printed.
async fn fault_at(cmd: Command, phase: &'static str, fault: impl AsyncFnOnce()) -> (Output, Instant) {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let mut tx = Some(tx);
    let run = tokio::task::spawn_blocking(move || {
        run_until(
            cmd,
            move |line| reached(line, phase),
            move |_| {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(Instant::now());
                }
            },
        )
    });
    let at = rx.await.unwrap_or_else(|_| panic!("{phase} never reached"));
    fault().await;
    let (_, out) = run.await.expect("the command's reader");
    (out, at)
}

/// What the operator reads last: vfmig-host's message.
fn message(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    stderr.lines().last().unwrap_or_default().to_owned()
}

/// The guest as it was, after `what`: the VF plugged and its network on it, the standby
/// carrying nothing, no hook tracking, no runtime files, the peer's connection alive.
async fn assert_as_before(bed: &Bed, before: &str, tcp: &mut TcpProbe, sockets: &Sockets, what: &str) {
    assert_eq!(
        vf_mac(&bed.src).await,
        SOURCE_MAC,
        "{what}: the VF is not plugged on the source"
    );
    let status: serde_json::Value = bed.src.execute("query-status", None).await.unwrap();
    assert_eq!(status["status"], "running", "{what}");
    let mut shell = bed
        .source
        .shell(Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // What the agent was sent while it could not answer it applies once it can: wait for it.
    let until = Instant::now() + Duration::from_secs(20);
    let check = format!(
        "ls -A /run/vfmig 2>/dev/null; cat {CONTROL}/devices 2>/dev/null; ip -o addr show dev sb0 scope global"
    );
    loop {
        let left = shell.ok(&check).await.unwrap();
        if left.trim().is_empty() {
            break;
        }
        assert!(Instant::now() < until, "{what}: left in the guest:\n{left}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        shell.ok(NETWORK).await.unwrap(),
        before,
        "{what}: the guest's network changed"
    );
    wait_answering(&bed.fabric.peer, echo(), Duration::from_secs(10)).unwrap_or_else(|e| panic!("{what}: {e}"));
    tcp.round_trip("after\n")
        .unwrap_or_else(|e| panic!("{what}: the TCP connection broke: {e}"));
    assert!(!sockets.journal.exists(), "{what}: the journal was left behind");
}

#[tokio::test(flavor = "current_thread")]
async fn a_fault_where_it_hurts_most_gives_the_vm_back_as_it_was_within_the_stated_time() {
    let mut bed = Bed::with_standby().await;
    bed.wait_booted();
    let before = {
        let mut shell = bed.source.shell(Duration::from_secs(30)).await.unwrap();
        shell.ok(NETWORK).await.unwrap()
    };
    assert!(before.contains("198.18.0.10/24"), "{before}");
    let mut tcp = TcpProbe::connect(&bed.fabric.peer, echo()).expect("TCP to the guest");
    tcp.round_trip("before\n").unwrap();
    let sockets = Sockets::direct(&bed);
    let mut table = Vec::new();

    // The agent frozen while it saves: the save goes unanswered for its deadline, then the
    // give-back waits a short while per request; thawed, the agent applies the late save and
    // then the undo it was sent, in order.
    let what = "agent frozen while saving";
    let mut shell = bed.source.shell(Duration::from_secs(30)).await.unwrap();
    let (out, at) = fault_at(command(&bed, &sockets), "Held", async || {
        shell.ok("kill -STOP $(pidof vfmig-guestd)").await.unwrap();
    })
    .await;
    let took = at.elapsed();
    shell.ok("kill -CONT $(pidof vfmig-guestd)").await.unwrap();
    drop(shell);
    let said = message(&out);
    assert_eq!(out.status.code(), Some(1), "{what}: {said}");
    assert!(
        said.contains("did not answer prepare_unplug within 10.0 s"),
        "{what}: {said}"
    );
    let bound = PREPARE + SILENT_GUEST_WAIT * 2 + MARGIN;
    assert!(
        took <= bound,
        "{what}: gave up {took:?} after the fault, stated {bound:?}"
    );
    assert_as_before(&bed, &before, &mut tcp, &sockets, what).await;
    table.push(format!("{what}: exit 1 after {took:?} (bound {bound:?}): {said}"));

    // The destination killed while pre-copy is held: QEMU's own words in the message.
    let what = "destination killed while held";
    bed.new_destination().await;
    let destination = bed.destination.pid() as i32;
    let (out, at) = fault_at(command(&bed, &sockets), "Held", async || {
        let pid = nix::unistd::Pid::from_raw(destination);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).expect("kill the destination");
    })
    .await;
    let took = at.elapsed();
    let said = message(&out);
    assert_eq!(out.status.code(), Some(1), "{what}: {said}");
    assert!(
        said.contains("the migration failed: ") && !said.contains("drained"),
        "{what}: {said}"
    );
    let bound = GIVEBACK + MARGIN;
    assert!(
        took <= bound,
        "{what}: gave up {took:?} after the fault, stated {bound:?}"
    );
    assert_as_before(&bed, &before, &mut tcp, &sockets, what).await;
    table.push(format!("{what}: exit 1 after {took:?} (bound {bound:?}): {said}"));

    // Cancelled on QEMU's monitor after the unplug: the VF plugged back, and the message says
    // who cancelled.
    let what = "migrate_cancel after the unplug";
    bed.new_destination().await;
    let src = &bed.src;
    let (out, at) = fault_at(command(&bed, &sockets), "Unplugged", async || {
        src.execute("migrate_cancel", None).await.expect("migrate_cancel");
    })
    .await;
    let took = at.elapsed();
    let said = message(&out);
    assert_eq!(out.status.code(), Some(1), "{what}: {said}");
    assert!(
        said.contains("cancelled by someone other than vfmig") && said.contains("plugged back"),
        "{what}: {said}"
    );
    let bound = GIVEBACK + MARGIN;
    assert!(
        took <= bound,
        "{what}: gave up {took:?} after the fault, stated {bound:?}"
    );
    assert_as_before(&bed, &before, &mut tcp, &sockets, what).await;
    table.push(format!("{what}: exit 1 after {took:?} (bound {bound:?}): {said}"));

    println!("\n{}", table.join("\n"));
}
