//! What the fuzz targets share: a byte stream, cut where a read might cut it, through the frame
//! decoder and one side's message decoder. Nothing may panic, and whatever decodes must encode
//! and decode back to the same message.

use std::fmt::Debug;

use vfmig_protocol::frame::Decoder;
use vfmig_protocol::message::{decode, encode, Envelope, Message};

pub fn decode_stream<M: Message + PartialEq + Debug>(data: &[u8]) {
    // The first byte picks where the stream is cut.
    let Some((&cut, stream)) = data.split_first() else {
        return;
    };
    let cut = usize::from(cut).min(stream.len());
    let mut decoder = Decoder::new();
    let mut frames = decoder.push(&stream[..cut]);
    frames.extend(decoder.push(&stream[cut..]));
    for payload in frames.into_iter().flatten() {
        if let Ok(env) = decode::<M>(&payload) {
            let again = encode(env.id, &env.msg).expect("a decoded message encodes");
            let mut frames = Decoder::new().push(&again);
            let payload = frames.pop().expect("one frame").expect("an intact frame");
            let back: Envelope<M> = decode(&payload).expect("it decodes again");
            assert_eq!(back, env);
        }
    }
}
