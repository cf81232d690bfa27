//! The guest package for RHEL-family guests, checked as far as this machine can: with rpm's own
//! queries, since no RHEL-family guest boots here. `scripts/package rpm` builds an .rpm that holds
//! every file the guest .deb installs, at the same path, with the same contents (one build for
//! both) and mode; its scriptlets enable the unit on a first install, stop and disable it on
//! removal, have systemd and udev reload, and parse as shell; it requires what the agent and the
//! scriptlets run, and no shared library (the daemon is static).

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use vfmig_testbed::run_ok as run;

#[test]
fn the_guest_rpm_installs_what_the_deb_installs_with_scriptlets_of_its_own() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let deb = run(Command::new(root.join("scripts/package")).arg("guest"));
    let rpm = run(Command::new(root.join("scripts/package")).arg("rpm"));
    let (deb, rpm) = (deb.trim(), rpm.trim());

    // Every file the .deb installs, with its digest and mode, but Debian's copyright file: the
    // rpm names its licence in its header.
    let unpacked = tempdir();
    run(Command::new("dpkg-deb").args(["--extract", deb]).arg(&unpacked));
    let mut from_deb = BTreeMap::new();
    for file in files_under(&unpacked) {
        let path = format!("/{}", relative(&file, &unpacked));
        if path == "/usr/share/doc/vfmig-guest/copyright" {
            continue;
        }
        let sum = run(Command::new("sha256sum").arg(&file));
        let digest = sum.split_whitespace().next().unwrap_or_default().to_owned();
        let mode = std::fs::metadata(&file)
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
            .permissions()
            .mode()
            & 0o7777;
        from_deb.insert(path, (digest, mode));
    }
    for path in [
        "/usr/sbin/vfmig-guestd",
        "/usr/lib/systemd/system/vfmig-guestd.service",
        "/usr/lib/udev/rules.d/90-vfmig.rules",
        "/usr/share/man/man8/vfmig-guestd.8.gz",
    ] {
        assert!(from_deb.contains_key(path), "{path} is not in {deb}");
    }

    // The rpm lists the same paths: nothing missing, nothing of its own.
    let listed = run(Command::new("rpm").args(["-qpl", rpm]));
    let mut listed: Vec<&str> = listed.lines().collect();
    listed.sort_unstable();
    let deb_paths: Vec<&str> = from_deb.keys().map(String::as_str).collect();
    assert_eq!(listed, deb_paths, "{rpm} against {deb}");

    // And their contents and modes: `--dump` gives path, size, mtime, SHA-256, mode (octal, with
    // the file type), owner, group, ...
    let dump = run(Command::new("rpm").args(["-qp", "--dump", rpm]));
    for line in dump.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let (path, digest, mode) = match fields[..] {
            [path, _size, _mtime, digest, mode, owner, group, ..] => {
                assert_eq!((owner, group), ("root", "root"), "{line}");
                (path, digest, mode)
            }
            _ => panic!("rpm --dump line {line:?}"),
        };
        let mode =
            u32::from_str_radix(mode, 8).unwrap_or_else(|e| panic!("mode in rpm --dump line {line:?}: {e}")) & 0o7777;
        assert_eq!(
            from_deb.get(path),
            Some(&(digest.to_owned(), mode)),
            "{path} differs between {rpm} and {deb}"
        );
    }

    // The scriptlets: the .deb's maintainer scripts' work and the systemd macros', for rpm's
    // counts in $1 (post: 1 on a first install; preun and postun: 0 on removal).
    let scripts = run(Command::new("rpm").args(["-qp", "--scripts", rpm]));
    let post = scriptlet(&scripts, "postinstall");
    let preun = scriptlet(&scripts, "preuninstall");
    let postun = scriptlet(&scripts, "postuninstall");
    for (name, script, said) in [
        (
            "post",
            &post,
            "if [ \"$1\" -eq 1 ]; then\n    systemctl enable vfmig-guestd.service",
        ),
        ("post", &post, "systemctl daemon-reload"),
        ("post", &post, "udevadm control --reload"),
        (
            "post",
            &post,
            "udevadm trigger --action=add --subsystem-match=virtio-ports",
        ),
        ("post", &post, "dkms add -m vfmig-dirty -v 0.1.0"),
        ("post", &post, "networkctl reload"),
        (
            "preun",
            &preun,
            "if [ \"$1\" -eq 0 ]; then\n    systemctl --no-reload disable --now vfmig-guestd.service",
        ),
        ("preun", &preun, "dkms remove -m vfmig-dirty -v 0.1.0 --all"),
        ("postun", &postun, "systemctl daemon-reload"),
        ("postun", &postun, "udevadm control --reload"),
        ("postun", &postun, "systemctl try-restart vfmig-guestd.service"),
    ] {
        assert!(script.contains(said), "{said:?} missing from %{name}:\n{script}");
    }
    for (name, script) in [("post", &post), ("preun", &preun), ("postun", &postun)] {
        assert!(!script.contains("%{"), "an unexpanded macro in %{name}:\n{script}");
        let mut sh = Command::new("sh")
            .arg("-n")
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("sh -n: {e}"));
        if let Some(mut stdin) = sh.stdin.take() {
            stdin
                .write_all(script.as_bytes())
                .unwrap_or_else(|e| panic!("sh -n: {e}"));
        }
        let out = sh.wait_with_output().unwrap_or_else(|e| panic!("sh -n: {e}"));
        assert!(
            out.status.success(),
            "%{name} does not parse: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // What the agent and the scriptlets run; dkms and dbus only recommended; no library.
    let requires = run(Command::new("rpm").args(["-qp", "--requires", rpm]));
    for needed in ["/bin/sh", "iproute", "kmod", "systemd"] {
        assert!(
            requires.lines().any(|l| l == needed),
            "{needed} not required:\n{requires}"
        );
    }
    assert!(!requires.contains(".so"), "a library required:\n{requires}");
    let recommends = run(Command::new("rpm").args(["-qp", "--recommends", rpm]));
    let mut recommends: Vec<&str> = recommends.lines().collect();
    recommends.sort_unstable();
    assert_eq!(recommends, ["dbus", "dkms"]);
    std::fs::remove_dir_all(&unpacked).unwrap_or_else(|e| panic!("{}: {e}", unpacked.display()));
}

/// The body of one scriptlet in `rpm --scripts` output, which heads each with
/// "NAME scriptlet:" (or "NAME scriptlet (using PROG):").
fn scriptlet(scripts: &str, name: &str) -> String {
    let mut lines = scripts.lines().skip_while(|l| head(l) != Some(name));
    assert!(lines.next().is_some(), "no {name} scriptlet:\n{scripts}");
    lines.take_while(|l| head(l).is_none()).collect::<Vec<_>>().join("\n")
}

/// The scriptlet a line of `rpm --scripts` output heads, if it is a head: a body's line may say
/// "scriptlet" too, but not as one word before it and a colon at its end.
fn head(line: &str) -> Option<&str> {
    let (name, rest) = line.split_once(" scriptlet")?;
    let one_word = !name.is_empty() && name.chars().all(|c| c.is_ascii_lowercase());
    (one_word && rest.ends_with(':')).then_some(name)
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry.unwrap_or_else(|e| panic!("{}: {e}", dir.display())).path();
        if path.is_dir() {
            files.extend(files_under(&path));
        } else {
            files.push(path);
        }
    }
    files
}

fn relative(file: &Path, dir: &Path) -> String {
    file.strip_prefix(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
        .display()
        .to_string()
}

fn tempdir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vfmig-guest-rpm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    dir
}
