//! The saved-state validator: a document read back from /run/vfmig (or handed over by a host)
//! may be anything. Opening must not panic, and what opens must seal and open to the same state.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vfmig_protocol::netstate::{open, seal};

fuzz_target!(|data: &[u8]| {
    if let Ok(state) = open(data) {
        let again = open(seal(&state).as_bytes()).expect("a sealed state opens");
        assert_eq!(again, state);
    }
});
