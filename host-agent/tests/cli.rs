//! The command line as an operator meets it: `--help` says how to migrate several VFs and
//! what each exit status means, an error is printed once, with its cause once, and the man
//! pages the package installs are rendered from it.

use std::process::Command;

fn vfmig_host(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_vfmig-host"))
        .args(args)
        .output()
        .expect("vfmig-host runs");
    let text = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
    (out.status.code(), text(out.stdout), text(out.stderr))
}

#[test]
fn migrate_help_shows_several_vfs_and_the_exit_statuses() {
    let (code, help, _) = vfmig_host(&["migrate", "--help"]);
    assert_eq!(code, Some(0));
    for said in [
        "--vf vf --vf vf2",
        "the i-th --plug-device is the fresh VF for the i-th --vf",
        "--giveback-timeout",
        "Exit status: 0 migrated",
        "1 not migrated, the VM as\nit was on the source",
        "2 the operator must act",
    ] {
        assert!(help.contains(said), "--help does not say {said:?}:\n{help}");
    }
}

#[test]
fn an_error_and_its_cause_are_printed_once() {
    let dir = std::env::temp_dir().join(format!("vfmig-cli-{}", std::process::id()));
    let missing = dir.join("no-such-qmp.sock");
    let (code, _, stderr) = vfmig_host(&[
        "migrate",
        "--qmp",
        missing.to_str().unwrap(),
        "--agent",
        "/nonexistent",
        "--vf",
        "vf",
        "--uri",
        "unix:/nonexistent",
    ]);
    assert_eq!(code, Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert_eq!(stderr.matches("No such file or directory").count(), 1, "{stderr}");
    assert!(stderr.contains(missing.to_str().unwrap()), "{stderr}");
}

#[test]
fn man_pages_are_the_command_line_one_per_subcommand() {
    let dir = std::env::temp_dir().join(format!("vfmig-man-{}", std::process::id()));
    let (code, _, stderr) = vfmig_host(&["man-pages", dir.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{stderr}");
    let mut pages: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    pages.sort();
    // One per subcommand an operator runs; none for the hidden `man-pages` nor for `help`.
    for page in [
        "vfmig-host.1",
        "vfmig-host-migrate.1",
        "vfmig-host-plug.1",
        "vfmig-host-libvirt-hook.1",
    ] {
        assert!(pages.iter().any(|p| p == page), "{page} missing: {pages:?}");
    }
    assert!(
        !pages.iter().any(|p| p.contains("man-pages") || p.contains("help")),
        "{pages:?}"
    );
    let migrate = std::fs::read_to_string(dir.join("vfmig-host-migrate.1")).unwrap();
    assert!(migrate.contains(".TH vfmig-host-migrate 1"), "{migrate}");
    assert!(migrate.contains("plug\\-device"), "{migrate}");
    std::fs::remove_dir_all(&dir).unwrap();
}
