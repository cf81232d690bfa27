//! The guest package on a real Debian system (images/build-debian: systemd, udev, D-Bus,
//! NetworkManager, installed with debootstrap from Debian's packages, vfmig-guest installed
//! with `dpkg -i`): udev starts the unit when the host's port is there, the agent answers the
//! host over it, `vfmig-guestd status` reads the agent over the real system bus (as root and
//! as an unprivileged user), `man vfmig-guestd` shows its page, and `dpkg -r` / `dpkg --purge`
//! / `dpkg -i` do what a user expects.

use std::time::{Duration, Instant};

use vfmig_testbed::exclusive;
use vfmig_testbed::image::debian_image;
use vfmig_testbed::shell::GuestShell;
use vfmig_testbed::vm::{ScratchDir, Vm, VmConfig};

const BOOT_DEADLINE: Duration = Duration::from_secs(180);

async fn ok(shell: &mut GuestShell, command: &str) -> String {
    shell.ok(command).await.unwrap_or_else(|e| panic!("{e}"))
}

/// Polls `command` until it prints `want` (a unit's state settles a moment after dpkg).
async fn settles(shell: &mut GuestShell, command: &str, want: &str) {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, out) = shell
            .run(command, Duration::from_secs(30))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        if out.trim() == want {
            return;
        }
        assert!(Instant::now() < until, "`{command}` says {out:?}, not {want:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "current_thread")]
async fn the_package_starts_on_the_port_shows_on_the_system_bus_and_removes_cleanly() {
    let _one_at_a_time = exclusive();
    let image = debian_image().unwrap_or_else(|e| panic!("{e}"));
    let dir = ScratchDir::new("debian").unwrap();
    let config = VmConfig {
        name: "debian",
        tap: None,
        nic: false,
        mac: String::new(),
        agent: true,
        incoming: false,
        hook: false,
        iommu: false,
        standby: false,
        failover: false,
        pf: None,
        spare_port: false,
        second_vf: None,
    };
    let vm = Vm::start(image, &dir.0, &config).unwrap();
    let (channel, session) = vm.agent(BOOT_DEADLINE).await.unwrap_or_else(|e| panic!("{e}"));
    let ready = vm.started.elapsed();
    // The port's socket takes one host at a time: this one leaves for the one after reinstall.
    drop(channel);
    println!(
        "Debian guest (systemd, udev, D-Bus, NetworkManager; TCG): boot to agent ready {:.1} s ({})",
        ready.as_secs_f64(),
        session.guest.agent
    );
    let mut shell = vm.shell(BOOT_DEADLINE).await.unwrap_or_else(|e| panic!("{e}"));

    assert_eq!(
        ok(&mut shell, "systemctl is-active vfmig-guestd").await.trim(),
        "active"
    );
    assert_eq!(
        ok(&mut shell, "readlink -f /dev/vfmig-agent").await.trim(),
        ok(&mut shell, "readlink -f /dev/virtio-ports/org.vfmig.agent.0")
            .await
            .trim(),
        "udev's stable name is the agent's port"
    );
    let status = ok(&mut shell, "vfmig-guestd status").await;
    assert!(status.starts_with("vfmig-guestd 0.1.0: idle\n"), "{status}");
    let status = ok(
        &mut shell,
        "setpriv --reuid=65534 --regid=65534 --clear-groups vfmig-guestd status --json",
    )
    .await;
    assert!(
        status.contains("\"phase\": \"idle\""),
        "read by an unprivileged user: {status}"
    );
    // `man vfmig-guestd` as a user runs it (the image has man-db, as a standard Debian has).
    let page = ok(&mut shell, "MANWIDTH=100 man vfmig-guestd").await;
    assert!(
        page.contains("vfmig-guestd - vfmig guest agent") && page.contains("vfmig-guestd-run(8)"),
        "{page}"
    );
    let caps = ok(
        &mut shell,
        "grep CapBnd /proc/$(systemctl show -P MainPID vfmig-guestd)/status",
    )
    .await;
    // CAP_NET_ADMIN (12), CAP_NET_RAW (13), CAP_SYS_MODULE (16), and nothing else.
    assert_eq!(caps.trim(), "CapBnd:\t0000000000013000", "the unit's capabilities");

    // Remove: every file the package installed is gone and the agent stopped.
    let files = ok(&mut shell, "dpkg -L vfmig-guest").await;
    let files: Vec<&str> = files.lines().filter(|f| f.starts_with('/')).collect();
    assert!(files.contains(&"/usr/sbin/vfmig-guestd"), "{files:?}");
    ok(&mut shell, "dpkg -r vfmig-guest").await;
    let left = ok(
        &mut shell,
        &format!(
            "for f in {}; do [ -f \"$f\" ] && echo \"$f\"; done; true",
            files.join(" ")
        ),
    )
    .await;
    assert_eq!(left.trim(), "", "files left after dpkg -r");
    settles(&mut shell, "systemctl is-active vfmig-guestd", "inactive").await;
    // Purge: the unit's enablement goes too, as for any Debian service.
    ok(&mut shell, "dpkg --purge vfmig-guest").await;
    let (rc, out) = shell
        .run(
            "ls /etc/systemd/system/multi-user.target.wants/vfmig-guestd.service",
            Duration::from_secs(30),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_ne!(rc, 0, "still enabled after purge: {out}");

    // Install again, as a user would: the unit is enabled and started, on the port that is there.
    let installed = Instant::now();
    ok(&mut shell, "dpkg -i /root/vfmig-guest.deb").await;
    settles(&mut shell, "systemctl is-active vfmig-guestd", "active").await;
    let (_channel, session) = vm
        .agent(Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    println!(
        "dpkg -i to agent ready: {:.1} s ({})",
        installed.elapsed().as_secs_f64(),
        session.guest.agent
    );
    assert_eq!(
        ok(&mut shell, "systemctl is-enabled vfmig-guestd").await.trim(),
        "enabled"
    );
}
