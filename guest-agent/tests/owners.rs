//! The agent and the VF's owner, on the real kernel in a throw-away namespace, with a stand-in
//! owner (the real ones — NetworkManager, systemd-networkd, ifupdown — are tested in Debian
//! guests, tests/tests/*_migration.rs): the hello names it; an owner that cannot be kept off
//! refuses the unplug with nothing saved and the VF unchanged; what an owner drops when it takes
//! the VF back is put back; and what it changes after that is reported as differing after the
//! settle period, not passed over.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use vfmig_guest::agent::Agent;
use vfmig_guest::dma_hook::DmaHook;
use vfmig_guest::events::Event;
use vfmig_guest::netstate::standby::StandbyConfig;
use vfmig_guest::netstate::{capture, connect};
use vfmig_guest::owner::ifupdown::Snapshot as IfupdownSnapshot;
use vfmig_guest::owner::{LinkRef, NicOwner, OwnerError, OwnerKind, Owners, Snapshot};
use vfmig_protocol::message::*;
use vfmig_protocol::ErrorCode;
use vfmig_testbed::netns::{enter_fresh, ip_batch};

mod common;
use common::{by_name, prepare_unplug};

const FIXTURE: &str = "link add vfa0 address 02:00:00:00:0a:01 type veth peer name vfa0p
link set vfa0p up
link set vfa0 up
addr add 198.18.10.2/24 dev vfa0
route add 198.51.100.0/24 via 198.18.10.1 dev vfa0 table 100
neigh add 198.18.10.7 lladdr 02:00:00:00:00:07 dev vfa0 nud permanent
";

/// What the stand-in does when it takes the VF back.
#[derive(Clone, Copy)]
enum Takes {
    /// Drops what it did not configure (as networkd does), once.
    DroppingForeign,
    /// Adds an address of its own once it has the link configured (a second DHCP lease).
    AddingItsOwn,
}

struct StandIn {
    hold_fails: bool,
    takes: Takes,
    calls: Arc<Mutex<Vec<String>>>,
}

#[async_trait::async_trait]
impl NicOwner for StandIn {
    fn kind(&self) -> OwnerKind {
        OwnerKind::Ifupdown
    }

    async fn present(&self) -> bool {
        true
    }

    async fn snapshot(&self, link: &LinkRef) -> Result<Option<Snapshot>, OwnerError> {
        self.calls.lock().unwrap().push(format!("snapshot {}", link.name));
        Ok(Some(Snapshot::Ifupdown(IfupdownSnapshot {
            logical: link.name.clone(),
            dhcp: false,
            index: link.index,
        })))
    }

    async fn hold(&self, name: &str, _before: &Snapshot) -> Result<(), OwnerError> {
        self.calls.lock().unwrap().push(format!("hold {name}"));
        if self.hold_fails {
            return Err(OwnerError::Absent(OwnerKind::Ifupdown));
        }
        Ok(())
    }

    async fn hand_back(&self, link: &LinkRef, _before: &Snapshot) -> Result<String, OwnerError> {
        self.calls.lock().unwrap().push(format!("hand back {}", link.name));
        if let Takes::DroppingForeign = self.takes {
            let dev = &link.name;
            ip_batch(&format!(
                "addr flush dev {dev}\nroute flush table 100\nneigh flush dev {dev} nud permanent\n"
            ))
            .map_err(|_| OwnerError::Absent(OwnerKind::Ifupdown))?;
        }
        Ok(format!("{} taken", link.name))
    }

    async fn configured(&self, link: &LinkRef) -> Result<(), OwnerError> {
        self.calls.lock().unwrap().push(format!("configured {}", link.name));
        if let Takes::AddingItsOwn = self.takes {
            ip_batch(&format!("addr add 198.18.10.99/24 dev {}\n", link.name))
                .map_err(|_| OwnerError::Absent(OwnerKind::Ifupdown))?;
        }
        Ok(())
    }
}

fn agent_with(handle: &rtnetlink::Handle, store: &std::path::Path, owner: StandIn) -> Agent {
    Agent::new(handle.clone(), store.to_owned(), DmaHook::default(), StandbyConfig::Off)
        .with_owners(Owners::new(vec![Box::new(owner)]))
}

fn prepare() -> HostMessage {
    prepare_unplug(by_name("vfa0"), StandbyRequest::Off, false)
}

fn store(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("vfmig-owners-{name}-{}", std::process::id()))
}

#[tokio::test(flavor = "current_thread")]
async fn the_hello_names_the_owner_and_one_that_cannot_be_held_refuses_with_nothing_saved() {
    enter_fresh().unwrap();
    ip_batch(FIXTURE).unwrap();
    let handle = connect().unwrap();
    let store = store("hold");
    let calls = Arc::new(Mutex::new(Vec::new()));
    let owner = StandIn {
        hold_fails: true,
        takes: Takes::DroppingForeign,
        calls: calls.clone(),
    };
    let mut agent = agent_with(&handle, &store, owner);
    let hello = agent
        .handle(HostMessage::Hello(Hello::ours("test-host", Capabilities::default())))
        .await;
    let GuestMessage::Hello(h) = &hello[0] else {
        panic!("{hello:?}")
    };
    assert_eq!(h.capabilities.nic_owners, ["ifupdown"]);
    assert!(!h.capabilities.network_manager);

    let before = capture(&handle, "vfa0").await.unwrap().state;
    let refused = agent.handle(prepare()).await;
    let GuestMessage::Error(e) = &refused[0] else {
        panic!("not refused: {refused:?}")
    };
    assert_eq!(e.code, ErrorCode::Unrestorable);
    assert_eq!(
        e.message,
        "ifupdown could not be kept off vfa0 during the migration (ifupdown is not running; nothing to hand back); nothing was saved"
    );
    assert_eq!(*calls.lock().unwrap(), ["snapshot vfa0", "hold vfa0"]);
    assert!(
        !store.exists() || std::fs::read_dir(&store).unwrap().next().is_none(),
        "something was left in the store"
    );
    assert_eq!(capture(&handle, "vfa0").await.unwrap().state, before, "the VF changed");
    let _ = std::fs::remove_dir_all(store);
}

/// Saves vfa0, replaces it by a fresh vfb0 with the same MAC, restores onto it, and returns
/// what the agent reported after the hand-back and after the settle period.
async fn migrate_with(takes: Takes, name: &str) -> (Result<String, String>, Vec<String>, Vec<String>) {
    enter_fresh().unwrap();
    ip_batch(FIXTURE).unwrap();
    let handle = connect().unwrap();
    let store = store(name);
    let calls = Arc::new(Mutex::new(Vec::new()));
    let owner = StandIn {
        hold_fails: false,
        takes,
        calls: calls.clone(),
    };
    let mut agent = agent_with(&handle, &store, owner);
    let mut events = agent.events();
    let saved = agent.handle(prepare()).await;
    assert!(matches!(saved[0], GuestMessage::StateSaved(_)), "{saved:?}");
    ip_batch("link del vfa0\nlink add vfb0 address 02:00:00:00:0a:01 type veth peer name vfb0p\nlink set vfb0p up\n")
        .unwrap();
    let restored = agent
        .handle(HostMessage::Restore(Restore {
            saved: "vfa0".into(),
            onto: InterfaceSelector {
                name: Some("vfb0".into()),
                ..Default::default()
            },
            restore_mac: false,
            digest: None,
        }))
        .await;
    assert!(
        matches!(&restored[0], GuestMessage::Restored(r) if r.failed.is_empty() && r.mismatches.is_empty()),
        "{restored:?}"
    );
    let (mut handed, mut settled) = (None, None);
    while settled.is_none() {
        match tokio::time::timeout(Duration::from_secs(30), events.recv()).await {
            Ok(Ok(Event::HandedBack { owner, outcome, .. })) => {
                assert_eq!(owner, OwnerKind::Ifupdown);
                handed = Some(outcome);
            }
            Ok(Ok(Event::Settled { settled: s, .. })) => settled = Some(s),
            Ok(Ok(_)) => {}
            other => panic!("no settle report: {other:?}"),
        }
    }
    let calls = calls.lock().unwrap().clone();
    let _ = std::fs::remove_dir_all(store);
    (
        handed.expect("handed back before settling"),
        settled.unwrap_or_default(),
        calls,
    )
}

#[tokio::test(flavor = "current_thread")]
async fn what_the_owner_drops_when_it_takes_the_vf_is_put_back_and_nothing_differs_after_settling() {
    let (handed, settled, calls) = migrate_with(Takes::DroppingForeign, "drops").await;
    assert_eq!(
        calls,
        ["snapshot vfa0", "hold vfa0", "hand back vfa0", "configured vfa0"],
        "asked in order, about the fresh link under the saved name"
    );
    let handed = handed.unwrap_or_else(|e| panic!("{e}"));
    assert!(
        handed.starts_with("vfa0 taken; 3 items it dropped put back"),
        "{handed}"
    );
    assert_eq!(settled, Vec::<String>::new());
}

#[tokio::test(flavor = "current_thread")]
async fn what_the_owner_adds_after_taking_the_vf_is_reported_after_settling() {
    let (handed, settled, _) = migrate_with(Takes::AddingItsOwn, "adds").await;
    handed.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(settled.len(), 1, "{settled:?}");
    assert!(settled[0].starts_with("address 198.18.10.99/24 "), "{settled:?}");
}
