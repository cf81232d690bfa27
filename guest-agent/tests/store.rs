//! The store writes whole documents or nothing, and reads back only what validates.

use std::net::IpAddr;

use vfmig_guest::store::{self, StoreError};
use vfmig_protocol::netstate::{Address, Identity, InterfaceState, SavedState, StateError, MAX_DOCUMENT};

fn state() -> SavedState {
    SavedState {
        captured_unix_ms: 1,
        interface: InterfaceState {
            identity: Identity {
                name: "eth1".into(),
                ifindex: 2,
                mac: "02:00:00:00:00:01".parse().unwrap(),
                permanent_mac: None,
                driver: None,
                pci: None,
            },
            mtu: 1500,
            admin_up: true,
            addresses: vec![Address {
                address: "198.18.0.2".parse::<IpAddr>().unwrap(),
                prefix_len: 24,
                peer: None,
                broadcast: None,
                label: None,
                scope: 0,
                flags: 0,
                route_metric: None,
                valid_lft: None,
                preferred_lft: None,
            }],
            routes: vec![],
            neighbours: vec![],
            uppers: vec![],
            port: None,
            rules: vec![],
            sysctls: Default::default(),
        },
    }
}

fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "vfmig-store-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn a_saved_state_loads_back_and_leaves_no_temporary_file() {
    let dir = tempdir();
    let path = store::path_for(&dir, "eth1");
    store::save(&path, &state()).unwrap();
    assert_eq!(store::load(&path).unwrap(), state());
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("eth1.json")]);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn damaged_and_oversize_files_are_refused_with_their_path() {
    let dir = tempdir();
    let path = store::path_for(&dir, "eth1");
    store::save(&path, &state()).unwrap();
    let text = std::fs::read(&path).unwrap();
    std::fs::write(&path, &text[..text.len() / 2]).unwrap();
    let err = store::load(&path).unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Invalid {
                error: StateError::Truncated,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("eth1.json"), "{err}");

    std::fs::write(&path, vec![b' '; MAX_DOCUMENT + 10]).unwrap();
    let err = store::load(&path).unwrap_err();
    assert!(
        matches!(err, StoreError::Invalid { error: StateError::TooLarge { len }, .. } if len == MAX_DOCUMENT + 1),
        "{err}"
    );

    let err = store::load(&dir.join("missing.json")).unwrap_err();
    assert!(matches!(err, StoreError::Io { .. }), "{err}");
    std::fs::remove_dir_all(dir).unwrap();
}
