//! A million generated inputs through the frame decoder and both message decoders: arbitrary
//! bytes, valid frames, and valid frames cut, flipped and spliced with garbage. Nothing may
//! panic, the decoder's buffer stays bounded, and every intact frame in the stream is found.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use vfmig_protocol::frame::{self, Decoder, HEADER_LEN, MAX_PAYLOAD};
use vfmig_protocol::message::{decode, encode, GuestMessage, HostMessage};

const CASES: u32 = 1_000_000;

#[derive(Debug, Clone)]
enum Piece {
    Garbage(Vec<u8>),
    Frame(String),
    CutFrame(String, usize),
    FlippedFrame(String, usize, u8),
}

fn payload() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::from_utf8(encode(1, &HostMessage::StatusQuery).unwrap()[HEADER_LEN..].to_vec()).unwrap()),
        Just(r#"{"v":1,"id":2,"msg":{"type":"sync_ack","body":{"nonce":5}}}"#.to_string()),
        Just(r#"{"v":1,"id":3,"msg":{"type":"restored","body":{"interface":"eth1","applied":1,"unchanged":0,"failed":[],"duration_ms":1}}}"#.to_string()),
        "\\PC{0,64}",
    ]
}

fn piece() -> impl Strategy<Value = Piece> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..64).prop_map(Piece::Garbage),
        payload().prop_map(Piece::Frame),
        (payload(), any::<usize>()).prop_map(|(p, n)| Piece::CutFrame(p, n)),
        (payload(), any::<usize>(), 1..=255u8).prop_map(|(p, n, x)| Piece::FlippedFrame(p, n, x)),
    ]
}

#[test]
fn a_million_inputs_never_crash_the_decoders() {
    let mut runner = TestRunner::new(Config {
        cases: CASES,
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = (prop::collection::vec(piece(), 0..6), 1..64usize);
    runner
        .run(&strategy, |(pieces, chunk)| {
            let mut stream = Vec::new();
            let mut intact = Vec::new();
            for p in &pieces {
                match p {
                    Piece::Garbage(g) => stream.extend(g),
                    Piece::Frame(p) => {
                        stream.extend(frame::encode(p).unwrap());
                        intact.push(p.as_bytes().to_vec());
                    }
                    Piece::CutFrame(p, n) => {
                        let f = frame::encode(p).unwrap();
                        stream.extend(&f[..n % f.len()]);
                    }
                    Piece::FlippedFrame(p, n, x) => {
                        let mut f = frame::encode(p).unwrap();
                        let at = n % f.len();
                        f[at] ^= x;
                        stream.extend(f);
                    }
                }
            }
            let mut d = Decoder::new();
            let mut good = Vec::new();
            for part in stream.chunks(chunk) {
                for p in d.push(part).into_iter().flatten() {
                    let _ = decode::<HostMessage>(&p);
                    let _ = decode::<GuestMessage>(&p);
                    good.push(p);
                }
                prop_assert!(d.buffered() <= HEADER_LEN + MAX_PAYLOAD);
            }
            // Every intact frame is delivered, in order; a damaged neighbour cannot swallow it
            // (a flipped byte can make garbage look like a frame, so `good` may hold more).
            let mut rest = good.iter();
            for want in &intact {
                prop_assert!(
                    rest.any(|g| g == want),
                    "intact frame lost: {:?}",
                    String::from_utf8_lossy(want)
                );
            }
            Ok(())
        })
        .unwrap();
}
