//! The command line as an operator meets it: `--help` says how to migrate several VFs and
//! what each exit status means, and an error is printed once, with its cause once.

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
