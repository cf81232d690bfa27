//! A guest whose VF carries what restore cannot put back — here a MACsec device, an upper kind
//! vfmig does not make again, with its own address —
//! migrated by `vfmig-host migrate` as an operator's hook runs it: refused before the unplug,
//! the item named, the VM and the guest as they were; with `--accept-loss` it migrates, the
//! timeline naming what was left behind.

use std::time::Duration;

use vfmig_testbed::bed::{echo, vf_mac, Bed, NETWORK, SOURCE_MAC};
use vfmig_testbed::host_cli::{command, run, Sockets};
use vfmig_testbed::probe::{wait_answering, TcpProbe};

const MACSEC: &str = "/opt/iproute2/ip link add link eth0 macsec0 type macsec && \
    ip addr add 198.18.10.10/24 dev macsec0 && ip link set macsec0 up";
const MACSEC_SHOWN: &str = "ip -o addr show dev macsec0 scope global | awk '{print $4}'";
const NAMED: &str = "macsec0 (macsec) is stacked on eth0: upper devices are not restored";

#[tokio::test(flavor = "current_thread")]
async fn a_macsec_upper_on_the_vf_is_refused_before_the_unplug_unless_the_loss_is_accepted() {
    let mut bed = Bed::start(true, true).await;
    bed.wait_booted();
    let mut shell = bed.source.shell(Duration::from_secs(30)).await.unwrap();
    shell.ok(MACSEC).await.unwrap();
    let before = shell.ok(NETWORK).await.unwrap();
    assert_eq!(shell.ok(MACSEC_SHOWN).await.unwrap().trim(), "198.18.10.10/24");
    drop(shell);
    let mut tcp = TcpProbe::connect(&bed.fabric.peer, echo()).expect("TCP to the guest");
    tcp.round_trip("before\n").unwrap();
    let sockets = Sockets::direct(&bed);

    let out = run(command(&bed, &sockets));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let said = stderr.lines().last().unwrap_or_default();
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains("refused prepare_unplug") && said.contains(NAMED),
        "{said}"
    );
    assert!(!stderr.contains("Unplugged"), "the VF was unplugged:\n{stderr}");
    assert_eq!(
        vf_mac(&bed.src).await,
        SOURCE_MAC,
        "the VF is not plugged on the source"
    );
    let status: serde_json::Value = bed.src.execute("query-status", None).await.unwrap();
    assert_eq!(status["status"], "running");
    let mut shell = bed.source.shell(Duration::from_secs(30)).await.unwrap();
    assert_eq!(shell.ok(NETWORK).await.unwrap(), before, "the guest's network changed");
    assert_eq!(shell.ok(MACSEC_SHOWN).await.unwrap().trim(), "198.18.10.10/24");
    let saved = shell.ok("ls -A /run/vfmig 2>/dev/null; true").await.unwrap();
    assert_eq!(saved.trim(), "", "something was saved");
    drop(shell);
    wait_answering(&bed.fabric.peer, echo(), Duration::from_secs(10)).unwrap();
    tcp.round_trip("after the refusal\n")
        .expect("the TCP connection survives the refusal");
    assert!(!sockets.journal.exists(), "the journal was left behind");

    // Accepted: the migration goes ahead (to a new destination: the cancelled one ended), and
    // says what it left behind.
    bed.new_destination().await;
    let mut accepting = command(&bed, &sockets);
    accepting.arg("--accept-loss");
    let out = run(accepting);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let saved_line = stderr.lines().find(|l| l.contains("StateSaved")).unwrap_or_default();
    assert!(saved_line.contains(&format!("accepted as lost: {NAMED}")), "{stderr}");
    let mut shell = bed.destination.shell(Duration::from_secs(30)).await.unwrap();
    assert_eq!(
        shell.ok(NETWORK).await.unwrap(),
        before,
        "the VF's own state was not restored"
    );
    wait_answering(&bed.fabric.peer, echo(), Duration::from_secs(10)).unwrap();
    tcp.round_trip("after the migration\n")
        .expect("the TCP connection survives the migration");
}
