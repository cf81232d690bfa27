//! The guest's side of the channel: bytes from the host, validated all the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vfmig_protocol::message::HostMessage;

fuzz_target!(|data: &[u8]| vfmig_fuzz::decode_stream::<HostMessage>(data));
