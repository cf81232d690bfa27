//! The frame decoder against 100 MB of random bytes, the flood a broken or hostile peer can
//! write into the channel: how fast it is consumed, fed as the agents read it (64 KiB at a time)
//! and in one piece (through `push`, which collects, and `feed`, which iterates), and what the
//! decoder reports and holds meanwhile.
//!
//! Random bytes hold a frame mark every 256 bytes on average, and each starts a header that
//! fails, so this is the decoder's worst realistic case: a frame start to handle every few
//! hundred bytes, none of them good. `VFMIG_BENCH_MB` sets the size.

use std::hint::black_box;
use std::time::Instant;

use vfmig_protocol::frame::{self, Decoder, Item};

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
    frames: usize,
    /// Bytes the decoder held for an unfinished frame, at most, between pieces.
    max_buffered: usize,
    /// Items held at once by the caller: a whole piece's worth through `push`, one through `feed`.
    max_held: usize,
}

fn run(input: &[u8], chunk: usize, collect: bool) -> Run {
    let mut d = Decoder::new();
    let (mut errors, mut frames, mut max_buffered, mut max_held) = (0, 0, 0, 0);
    let mut count = |item: &Item| match item {
        Ok(_) => frames += 1,
        Err(_) => errors += 1,
    };
    let started = Instant::now();
    for part in input.chunks(chunk) {
        if collect {
            let items = black_box(d.push(part));
            max_held = max_held.max(items.len());
            items.iter().for_each(&mut count);
        } else {
            max_held = 1;
            d.feed(part).for_each(|item| count(&black_box(item)));
        }
        max_buffered = max_buffered.max(d.buffered());
    }
    Run {
        secs: started.elapsed().as_secs_f64(),
        errors,
        frames,
        max_buffered,
        max_held,
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
    println!("{mb} MiB of random bytes, then one valid frame");
    let started = Instant::now();
    let found = memchr::memchr_iter(frame::MARK, black_box(&input)).count();
    let secs = started.elapsed().as_secs_f64();
    println!(
        "  {:>13}: {:7.1} ms, {:6.0} MiB/s, the floor: finding every mark ({found})",
        "memchr alone",
        secs * 1e3,
        mb as f64 / secs
    );
    let held = std::mem::size_of::<Item>();
    for (label, chunk, collect) in [
        ("64 KiB pushes", 64 << 10, true),
        ("64 KiB feeds", 64 << 10, false),
        ("one push", input.len(), true),
        ("one feed", input.len(), false),
    ] {
        let r = run(&input, chunk, collect);
        println!(
            "  {label:>13}: {:7.1} ms, {:6.0} MiB/s, {} errors, {} frame(s); decoder held {} bytes, caller {} items ({} KiB)",
            r.secs * 1e3,
            mb as f64 / r.secs,
            r.errors,
            r.frames,
            r.max_buffered,
            r.max_held,
            (r.max_held * held) >> 10
        );
        assert_eq!(r.frames, 1, "the valid frame after the garbage was lost");
    }
}
