//! The host's side of the channel: bytes from an untrusted guest.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vfmig_protocol::message::GuestMessage;

fuzz_target!(|data: &[u8]| vfmig_fuzz::decode_stream::<GuestMessage>(data));
