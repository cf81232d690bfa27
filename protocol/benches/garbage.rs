//! The frame decoder against 100 MB of random bytes, the flood a broken or hostile peer can
//! write into the channel: how fast it is consumed, fed as the agents read it (64 KiB at a time)
//! and in one piece, and what the decoder reports and holds meanwhile.
//!
//! Random bytes hold a frame mark every 256 bytes on average, and each starts a header that
//! fails, so this is the decoder's worst realistic case: a frame start to handle every few
//! hundred bytes, none of them good. `VFMIG_BENCH_MB` sets the size.

use std::hint::black_box;
use std::time::Instant;

use vfmig_protocol::frame::{self, Decoder};

/// xorshift64*: reproducible bytes without a dependency.
fn random_bytes(len: usize) -> Vec<u8> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

struct Run {
    secs: f64,
    errors: usize,
    max_buffered: usize,
    frames: usize,
}

fn run(input: &[u8], chunk: usize) -> Run {
    let mut d = Decoder::new();
    let (mut errors, mut frames, mut max_buffered) = (0, 0, 0);
    let started = Instant::now();
    for part in input.chunks(chunk) {
        for item in black_box(d.push(part)) {
            match item {
                Ok(_) => frames += 1,
                Err(_) => errors += 1,
            }
        }
        max_buffered = max_buffered.max(d.buffered());
    }
    Run {
        secs: started.elapsed().as_secs_f64(),
        errors,
        max_buffered,
        frames,
    }
}

fn main() {
    let mb: usize = std::env::var("VFMIG_BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let mut input = random_bytes(mb << 20);
    // The valid request that follows the garbage must still come out.
    input.extend(frame::encode("{\"after\":\"the garbage\"}").unwrap_or_default());
    let marks = input.iter().filter(|&&b| b == frame::MARK).count();
    println!("{mb} MiB of random bytes ({marks} frame marks), then one valid frame");
    for (label, chunk) in [("64 KiB reads", 64 << 10), ("one push", input.len())] {
        let r = run(&input, chunk);
        println!(
            "  {label:>12}: {:7.1} ms, {:8.0} MiB/s, {} errors reported, {} frame(s), at most {} bytes held",
            r.secs * 1e3,
            mb as f64 / r.secs,
            r.errors,
            r.frames,
            r.max_buffered
        );
        assert_eq!(r.frames, 1, "the valid frame after the garbage was lost");
    }
}
