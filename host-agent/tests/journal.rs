//! The host agent's journal on a real filesystem: what it writes it reads back, and what it
//! did not write — garbage, another format, another VF's journal, a huge file — is refused
//! with a reason and left where it is.

use std::path::PathBuf;

use vfmig_host::migration::journal::{default_path, Journal, JournalError, OriginalParams, Saved};

fn dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "vfmig-journal-test-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn journal() -> Journal {
    let mut j = Journal::new(
        "vf",
        "52:54:00:10:00:01".parse().unwrap(),
        Some(serde_json::json!({ "driver": "e1000e", "id": "vf" })),
        OriginalParams {
            max_bandwidth: 134_217_728,
            downtime_limit: 300,
        },
    );
    j.hooked = true;
    j.migrate_issued = true;
    j.saved = Some(Saved {
        interface: "eth0".into(),
        digest: "sha256:5b130890d642".into(),
    });
    j
}

#[test]
fn what_is_written_reads_back_and_removing_twice_is_fine() {
    let d = dir();
    let path = d.join("vm.vfmig-journal");
    assert!(Journal::load(&path, "vf").unwrap().is_none(), "no journal yet");
    let j = journal();
    j.save(&path).unwrap();
    assert_eq!(Journal::load(&path, "vf").unwrap(), Some(j));
    assert!(!d.join("vm.tmp").exists(), "no temporary file left");
    Journal::remove(&path).unwrap();
    Journal::remove(&path).unwrap();
    assert!(Journal::load(&path, "vf").unwrap().is_none());
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn a_journal_that_does_not_validate_is_refused_and_left_alone() {
    let d = dir();
    let path = d.join("vm.vfmig-journal");
    let mut other = serde_json::to_value(journal()).unwrap();
    other["format"] = 2.into();
    let mut incoherent = serde_json::to_value(journal()).unwrap();
    incoherent["saved"] = serde_json::Value::Null;
    incoherent["unplug_requested"] = true.into();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("garbage", b"\x00\xffnot json".to_vec()),
        ("truncated", serde_json::to_vec(&journal()).unwrap()[..40].to_vec()),
        ("another format", serde_json::to_vec(&other).unwrap()),
        ("unplugged before saving", serde_json::to_vec(&incoherent).unwrap()),
        ("huge", vec![b' '; (1 << 20) + 10]),
    ];
    for (what, bytes) in cases {
        std::fs::write(&path, &bytes).unwrap();
        let err = Journal::load(&path, "vf").unwrap_err();
        println!("{what}: {err}");
        match what {
            "another format" => assert!(matches!(err, JournalError::UnknownFormat { found: 2, .. }), "{err}"),
            _ => assert!(matches!(err, JournalError::Invalid { .. }), "{what}: {err}"),
        }
        assert!(err.to_string().contains("nothing was changed"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), bytes, "{what}: the journal was touched");
    }
    journal().save(&path).unwrap();
    let err = Journal::load(&path, "hostdev1").unwrap_err();
    assert!(matches!(err, JournalError::OtherVf { .. }), "{err}");
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn the_default_journal_sits_beside_the_qmp_socket() {
    assert_eq!(
        default_path(std::path::Path::new("/run/vm1/qmp.sock")),
        PathBuf::from("/run/vm1/qmp.sock.vfmig-journal")
    );
}
