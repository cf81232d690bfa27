//! What the guest agent's test files share: comparing a restored state with the saved one, a
//! trip through the sealed document as the agent persists it, and the host's requests.

// Each test file uses a part of this.
#![allow(dead_code)]

use std::time::{SystemTime, UNIX_EPOCH};

use vfmig_guest::netstate::RestoreReport;
use vfmig_protocol::message::{HostMessage, InterfaceSelector, PrepareUnplug, StandbyRequest};
use vfmig_protocol::netstate::{self, InterfaceState, SavedState};
use vfmig_protocol::MacAddr;

/// An interface as the host names it.
pub fn by_name(name: &str) -> InterfaceSelector {
    InterfaceSelector {
        name: Some(name.into()),
        ..Default::default()
    }
}

/// The host's prepare-unplug, with the unplug due within 5 s.
pub fn prepare_unplug(interface: InterfaceSelector, standby: StandbyRequest, accept_loss: bool) -> HostMessage {
    HostMessage::PrepareUnplug(PrepareUnplug {
        interface,
        deadline_ms: 5000,
        standby,
        accept_loss,
    })
}

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

/// The index of a link in this thread's namespace (if_nametoindex asks through a socket
/// made on this thread; /proc/self would show the process's namespace instead).
pub fn index_of(name: &str) -> u32 {
    nix::net::if_::if_nametoindex(name).unwrap()
}

/// Everything but what must differ on a fresh link: the ifindexes (the uppers' too), the
/// lower's MAC (a fresh VF keeps its own unless asked; the uppers' must be equal), and finite
/// lifetimes, which count down (checked separately, to the second).
pub fn comparable(s: &InterfaceState) -> InterfaceState {
    fn fresh(s: &mut InterfaceState) {
        s.identity.ifindex = 0;
        for a in &mut s.addresses {
            a.valid_lft = a.valid_lft.map(|_| 0);
            a.preferred_lft = a.preferred_lft.map(|_| 0);
        }
        for u in &mut s.uppers {
            fresh(&mut u.state);
        }
    }
    let mut s = s.clone();
    fresh(&mut s);
    s.identity.mac = MacAddr([0; 6]);
    s.identity.permanent_mac = None;
    s
}

pub fn seal_and_open(state: InterfaceState) -> SavedState {
    let doc = netstate::seal(&SavedState {
        captured_unix_ms: now_ms(),
        interface: state,
    });
    netstate::open(doc.as_bytes()).expect("a fresh capture validates")
}

pub fn assert_clean(report: &RestoreReport) {
    assert!(report.failed.is_empty(), "restore failed items: {:#?}", report.failed);
}
