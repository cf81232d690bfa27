//! A VF whose QEMU device has no `mac` property, as a vfio-pci VF on a real host (the PF gave
//! it its MAC). A real QEMU stands in with such a device on the VF's root port; no guest is
//! needed, as everything checked here happens before the guest is asked anything.

use std::process::{Command, Stdio};
use std::time::Duration;

use vfmig_host::qmp::Qmp;
use vfmig_testbed::host_bin;
use vfmig_testbed::vm::ScratchDir;

struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_vf_without_a_mac_property_needs_its_mac_given_and_nothing_changes_without_it() {
    let dir = ScratchDir::new("vfio-vf").expect("scratch dir");
    let qmp = dir.0.join("qmp.sock");
    let _qemu = Killed(
        Command::new("qemu-system-x86_64")
            .args([
                "-accel",
                "tcg",
                "-M",
                "q35",
                "-m",
                "64",
                "-nodefaults",
                "-display",
                "none",
                "-qmp",
            ])
            .arg(format!("unix:{},server=on,wait=off", qmp.display()))
            .args(["-device", "pcie-root-port,id=rp1,chassis=1,slot=1"])
            .args(["-device", "virtio-rng-pci,id=vf,bus=rp1"])
            .stdin(Stdio::null())
            .spawn()
            .expect("qemu-system-x86_64 starts"),
    );
    let mut ready = false;
    for _ in 0..100 {
        if Qmp::connect(&qmp).await.is_ok() {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready, "QEMU's monitor never answered");
    let journal = dir.0.join("journal");
    let migrate = |extra: &[&str]| {
        Command::new(host_bin())
            .arg("migrate")
            .arg("--qmp")
            .arg(&qmp)
            .arg("--agent")
            .arg(dir.0.join("no-agent.sock"))
            .args([
                "--vf",
                "vf",
                "--uri",
                "tcp:127.0.0.1:1",
                "--agent-timeout",
                "1",
                "--journal",
            ])
            .arg(&journal)
            .args(extra)
            .output()
            .expect("vfmig-host runs")
    };
    let out = migrate(&[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("the VF vf has no mac property (a vfio-pci VF): give its MAC"),
        "{stderr}"
    );
    assert!(!journal.exists(), "refused before the journal was written");

    // With the MAC given, the run gets past it, to the guest agent (absent here: refused too).
    let out = migrate(&["--vf-mac", "52:54:00:aa:00:01"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("the guest agent cannot be used"), "{stderr}");
    assert!(!stderr.contains("mac property"), "{stderr}");
    let status: serde_json::Value = Qmp::connect(&qmp)
        .await
        .expect("QMP")
        .query("query-migrate", None)
        .await
        .expect("query-migrate");
    assert_eq!(status.get("status"), None, "no migration was started: {status}");
}
