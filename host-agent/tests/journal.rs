//! The host agent's journal on a real filesystem: what it writes it reads back, and what it
//! did not write — garbage, another format, an older format, another VM's VFs, a state that
//! does not hold together, a huge file — is refused with a reason and left where it is.

use std::path::PathBuf;

use vfmig_host::guest::Saved;
use vfmig_host::migration::journal::{default_path, Journal, JournalError, RunState};
use vfmig_host::migration::state::{Gate, Hook, Migrating, SourceState, Unplug, Vf, VfRun};
use vfmig_host::vm::Params;

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

fn ids() -> Vec<String> {
    vec!["vf".into(), "vf2".into()]
}

/// A journal as a run writes it while the VFs are unplugged.
fn journal() -> Journal {
    let vf = |id: &str, mac: &str, interface: &str| VfRun {
        vf: Vf {
            id: id.into(),
            mac: mac.parse().unwrap(),
            device: Some(serde_json::json!({ "driver": "e1000e", "id": id })),
        },
        saved: Some(Saved {
            interface: interface.into(),
            digest: format!("sha256:{}", "5b".repeat(32)),
            location: Some(format!("/run/vfmig/{interface}.json")),
        }),
        unplug: Unplug::Requested,
    };
    Journal::new(
        ids(),
        RunState::Source(SourceState::Unplugging {
            m: Migrating {
                params: Params {
                    max_bandwidth: 134_217_728,
                    downtime_limit: 300,
                },
                gate: Gate::Pause { was: false },
                vfs: vec![
                    vf("vf", "52:54:00:10:00:01", "eth0"),
                    vf("vf2", "52:54:00:10:00:03", "eth1"),
                ],
                guest: true,
            },
            hook: Hook::Tracking,
            before_precopy: false,
        }),
    )
}

#[test]
fn what_is_written_reads_back_and_removing_twice_is_fine() {
    let d = dir();
    let path = d.join("vm.vfmig-journal");
    assert!(Journal::load(&path, &ids()).unwrap().is_none(), "no journal yet");
    let j = journal();
    j.save(&path).unwrap();
    assert_eq!(Journal::load(&path, &ids()).unwrap(), Some(j));
    assert!(!d.join("vm.tmp").exists(), "no temporary file left");
    Journal::remove(&path).unwrap();
    Journal::remove(&path).unwrap();
    assert!(Journal::load(&path, &ids()).unwrap().is_none());
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn a_journal_that_does_not_validate_is_refused_and_left_alone() {
    let d = dir();
    let path = d.join("vm.vfmig-journal");
    let written = serde_json::to_value(journal()).unwrap();
    let mut newer = written.clone();
    newer["format"] = 3.into();
    let mut unsaved = written.clone();
    unsaved["state"]["source"]["unplugging"]["vfs"][0]["saved"] = serde_json::Value::Null;
    let mut renamed = written.clone();
    renamed["state"]["source"]["unplugging"]["vfs"][1]["vf"]["id"] = "hostdev1".into();
    let older = br#"{"format":1,"vf_id":"vf","vf_mac":"52:54:00:10:00:01","vf_device":null,
        "original":{"max-bandwidth":134217728,"downtime-limit":300},"hooked":true,
        "migrate_issued":true,"unplug_requested":false,"saved":null,"phase":"held"}"#;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("garbage", b"\x00\xffnot json".to_vec()),
        ("truncated", serde_json::to_vec(&written).unwrap()[..40].to_vec()),
        ("a newer format", serde_json::to_vec(&newer).unwrap()),
        ("vfmig-host 0.1's format", older.to_vec()),
        ("unplugged before saving", serde_json::to_vec(&unsaved).unwrap()),
        ("a state of other VFs", serde_json::to_vec(&renamed).unwrap()),
        ("huge", vec![b' '; (1 << 20) + 10]),
    ];
    for (what, bytes) in cases {
        std::fs::write(&path, &bytes).unwrap();
        let err = Journal::load(&path, &ids()).unwrap_err();
        println!("{what}: {err}");
        match what {
            "a newer format" => assert!(matches!(err, JournalError::UnknownFormat { found: 3, .. }), "{err}"),
            "vfmig-host 0.1's format" => assert!(matches!(err, JournalError::OlderFormat { .. }), "{err}"),
            _ => assert!(matches!(err, JournalError::Invalid { .. }), "{what}: {err}"),
        }
        assert!(err.to_string().contains("nothing was changed"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), bytes, "{what}: the journal was touched");
    }
    journal().save(&path).unwrap();
    let err = Journal::load(&path, &["hostdev1".to_owned()]).unwrap_err();
    assert!(matches!(err, JournalError::OtherVf { .. }), "{err}");
    std::fs::remove_dir_all(d).unwrap();
}

/// A journal written before the switch-over gate reads as a run that set no gate, so a run
/// taken up from it puts back nothing it did not change.
#[test]
fn a_journal_without_the_gate_reads_as_no_gate() {
    let d = dir();
    let path = d.join("vm.vfmig-journal");
    let mut written = serde_json::to_value(journal()).unwrap();
    assert_eq!(
        written["state"]["source"]["unplugging"]["gate"],
        serde_json::json!({"pause": {"was": false}})
    );
    let fields = written["state"]["source"]["unplugging"].as_object_mut().unwrap();
    fields.remove("gate");
    std::fs::write(&path, serde_json::to_vec(&written).unwrap()).unwrap();
    let loaded = Journal::load(&path, &ids()).unwrap().expect("a journal");
    let RunState::Source(SourceState::Unplugging { m, .. }) = loaded.state else {
        panic!("{loaded:?}")
    };
    assert_eq!(m.gate, Gate::None);
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn the_default_journal_sits_beside_the_qmp_socket() {
    assert_eq!(
        default_path(std::path::Path::new("/run/vm1/qmp.sock")),
        PathBuf::from("/run/vm1/qmp.sock.vfmig-journal")
    );
}
