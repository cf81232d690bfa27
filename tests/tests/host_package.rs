//! The host package as an operator gets it: `scripts/package host` builds the .deb, which holds
//! the binary, its man pages, the libvirt hook where libvirt runs it and the configuration as
//! conffiles, and depends on the libvirt the binary links; `man vfmig-host` finds and renders
//! its page; the packaged binary, unpacked, answers libvirt's hook call for a plain migration of a
//! vfmig domain with its refusal.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use vfmig_testbed::run_ok as run;

#[test]
fn the_host_package_installs_the_binary_the_hook_and_the_configuration() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let deb = run(Command::new(root.join("scripts/package")).arg("host"));
    let deb = deb.trim();
    let contents = run(Command::new("dpkg-deb").args(["--contents", deb]));
    for path in [
        "./usr/bin/vfmig-host",
        "./etc/libvirt/hooks/qemu.d/vfmig",
        "./etc/vfmig/host.toml",
        "./usr/share/doc/vfmig-host/examples/domain.xml",
        "./usr/share/man/man1/vfmig-host.1.gz",
        "./usr/share/man/man1/vfmig-host-migrate.1.gz",
    ] {
        assert!(contents.contains(path), "{path} missing from {deb}:\n{contents}");
    }
    assert!(
        contents
            .lines()
            .any(|l| l.starts_with("-rwxr-xr-x") && l.ends_with("qemu.d/vfmig")),
        "the hook is not executable:\n{contents}"
    );
    let depends = run(Command::new("dpkg-deb").args(["--field", deb, "Depends"]));
    assert!(depends.contains("libvirt0"), "Depends: {depends}");

    let unpacked = tempdir();
    run(Command::new("dpkg-deb")
        .args(["--control", deb])
        .arg(unpacked.join("DEBIAN")));
    let conffiles = std::fs::read_to_string(unpacked.join("DEBIAN/conffiles")).unwrap_or_default();
    for path in ["/etc/libvirt/hooks/qemu.d/vfmig", "/etc/vfmig/host.toml"] {
        assert!(
            conffiles.lines().any(|l| l == path),
            "{path} is no conffile: {conffiles}"
        );
    }
    run(Command::new("dpkg-deb").args(["--extract", deb]).arg(&unpacked));
    // `man vfmig-host` where the package is installed: man finds the page by name in the
    // package's man directory, as in /usr/share/man, and renders it naming the command and
    // pointing to the subcommands' pages. (scripts/package installed man.)
    let man = |name: &str| {
        run(Command::new("man")
            .arg("-M")
            .arg(unpacked.join("usr/share/man"))
            .arg(name)
            .env("MANWIDTH", "100"))
    };
    let page = man("vfmig-host");
    for said in [
        "vfmig-host - Live-migrate a VM with SR-IOV VFs",
        "SYNOPSIS",
        "vfmig-host-migrate(1)",
    ] {
        assert!(page.contains(said), "{said:?} missing from the man page:\n{page}");
    }
    let migrate = man("vfmig-host-migrate");
    assert!(migrate.contains("--plug-device"), "{migrate}");
    let hook = std::fs::read_to_string(unpacked.join("etc/libvirt/hooks/qemu.d/vfmig")).unwrap();
    assert!(hook.contains("exec /usr/bin/vfmig-host libvirt-hook \"$@\""), "{hook}");

    // The packaged binary, as libvirt calls the hook for a plain migration of a vfmig domain.
    let xml = "<domain type='kvm'><name>vm1</name><metadata><vfmig:vfs xmlns:vfmig='urn:vfmig:domain:1'>\
               <vfmig:vf alias='ua-vf'/></vfmig:vfs></metadata><devices/></domain>";
    let config = unpacked.join("host.toml");
    std::fs::write(
        &config,
        format!("[hook]\nlog = \"{}\"\n", unpacked.join("hook.log").display()),
    )
    .unwrap();
    let mut hook = Command::new(unpacked.join("usr/bin/vfmig-host"))
        .arg("libvirt-hook")
        .arg("--config")
        .arg(&config)
        .args(["vm1", "migrate", "begin", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    hook.stdin.take().unwrap().write_all(xml.as_bytes()).unwrap();
    let out = hook.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(out.stdout.is_empty(), "the hook printed a definition for libvirt");
    assert!(said.contains("vfmig-host migrate --libvirt vm1"), "{said}");
    std::fs::remove_dir_all(&unpacked).unwrap();
}

fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("vfmig-host-package-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
