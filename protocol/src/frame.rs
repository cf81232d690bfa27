//! Framing for a byte stream that can be cut, replayed or reconnected at any moment.
//!
//! A virtio-serial port keeps no message boundaries: after a migration or a reconnect the
//! reader can see the tail of a half-sent frame, and a hostile peer can send anything. So a
//! frame is
//!
//! ```text
//! 0xFF 'V' '1' <8 hex digits: payload length> <8 hex digits: CRC-32 of payload> <payload>
//! ```
//!
//! and the payload is UTF-8 text (JSON). 0xFF never occurs in UTF-8, and the header after it is
//! ASCII, so a 0xFF byte always and only starts a frame. That makes the decoder
//! self-synchronising: garbage is skipped up to the next 0xFF, and a half frame followed by a
//! whole one costs only the half frame — the decoder sees the new start inside the old payload
//! and switches to it, instead of eating the new frame's bytes as the old one's tail.
//!
//! The decoder never holds more than one header plus [`MAX_PAYLOAD`] bytes: a frame that
//! declares more is reported and its bytes are dropped as they arrive, never buffered.

use std::fmt;

/// Largest payload a frame may carry. Messages are small; saved state stays in the guest.
pub const MAX_PAYLOAD: usize = 1 << 20;

/// The byte that starts every frame, and that no payload or header byte can equal.
pub const MARK: u8 = 0xFF;
const TAG: u8 = b'V';
const FORMAT: u8 = b'1';
/// MARK, TAG, FORMAT, 8 hex digits of length, 8 of checksum.
pub const HEADER_LEN: usize = 3 + 8 + 8;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("payload of {len} bytes exceeds the frame limit of {MAX_PAYLOAD} bytes")]
pub struct PayloadTooLarge {
    pub len: usize,
}

/// Wraps a payload in a frame.
pub fn encode(payload: &str) -> Result<Vec<u8>, PayloadTooLarge> {
    let len = payload.len();
    if len > MAX_PAYLOAD {
        return Err(PayloadTooLarge { len });
    }
    let crc = crc32fast::hash(payload.as_bytes());
    let mut out = Vec::with_capacity(HEADER_LEN + len);
    out.extend_from_slice(&[MARK, TAG, FORMAT]);
    out.extend_from_slice(format!("{len:08x}{crc:08x}").as_bytes());
    out.extend_from_slice(payload.as_bytes());
    Ok(out)
}

/// Why bytes were dropped instead of yielding a frame. None of these is fatal: the decoder
/// has already resynchronised when it reports one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("skipped {bytes} bytes that are not part of any frame")]
    Garbage { bytes: usize },
    #[error("frame header is malformed")]
    BadHeader,
    #[error("frame format {found:?} is unknown (this build reads format '1')")]
    UnknownFormat { found: char },
    #[error("frame declares {declared} bytes, more than the limit of {MAX_PAYLOAD}; dropped unread")]
    TooLarge { declared: usize },
    #[error("frame cut short: {received} of {declared} payload bytes arrived before the next frame began")]
    Truncated { declared: usize, received: usize },
    #[error("frame checksum mismatch: header says {expected:08x}, payload hashes to {computed:08x}")]
    Checksum { expected: u32, computed: u32 },
}

impl FrameError {
    /// A short name for this kind of error, for counting drops by kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Garbage { .. } => "garbage",
            Self::BadHeader => "bad header",
            Self::UnknownFormat { .. } => "unknown format",
            Self::TooLarge { .. } => "too large",
            Self::Truncated { .. } => "truncated",
            Self::Checksum { .. } => "checksum",
        }
    }
}

/// One thing the decoder found: a frame's payload, or why bytes were dropped.
pub type Item = Result<Vec<u8>, FrameError>;

enum State {
    /// Looking for a MARK; counts bytes skipped.
    Hunt { skipped: usize },
    /// Collecting header bytes after a MARK (the MARK itself is not stored).
    Header,
    /// Collecting `len` payload bytes.
    Payload { len: usize, crc: u32 },
    /// Dropping an oversize frame's bytes until the next MARK.
    Discard,
}

/// Incremental frame decoder. Feed it whatever the stream delivers, in pieces of any size.
pub struct Decoder {
    state: State,
    buf: Vec<u8>,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Decoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Decoder").field("buffered", &self.buf.len()).finish()
    }
}

impl Decoder {
    pub fn new() -> Self {
        Self {
            state: State::Hunt { skipped: 0 },
            buf: Vec::new(),
        }
    }

    /// Forgets any partial frame, as after the peer reconnected.
    pub fn reset(&mut self) {
        self.state = State::Hunt { skipped: 0 };
        self.buf = Vec::new();
    }

    /// Bytes held for an unfinished frame; never more than `HEADER_LEN + MAX_PAYLOAD`.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Consumes `input` and returns every frame payload it completed and every error it hit,
    /// in stream order. Skipped garbage is reported once per run of garbage, at the latest at
    /// the end of the call.
    pub fn push(&mut self, input: &[u8]) -> Vec<Result<Vec<u8>, FrameError>> {
        self.feed(input).collect()
    }

    /// What [`push`](Self::push) returns, one item at a time, consuming `input` as it goes.
    /// Random bytes hold a frame mark every 256 bytes, each the start of a bad frame, so a flood
    /// fed in one piece would fill `push`'s vector with an error per mark; through this iterator
    /// it costs one item at a time, however large the piece. Input is consumed only as far as
    /// the iterator is advanced: drain it, or the rest of `input` is never read.
    pub fn feed<'d, 'i>(&'d mut self, input: &'i [u8]) -> Frames<'d, 'i> {
        Frames {
            decoder: self,
            rest: input,
        }
    }

    fn start_frame(&mut self) {
        self.buf.clear();
        self.state = State::Header;
    }

    /// Handles a prefix of `input`; returns the rest and what that prefix completed, if anything.
    fn step<'a>(&mut self, input: &'a [u8]) -> (&'a [u8], Option<Item>) {
        match &mut self.state {
            State::Hunt { skipped } => match memchr::memchr(MARK, input) {
                Some(pos) => {
                    let garbage = *skipped + pos;
                    self.start_frame();
                    let item = (garbage > 0).then_some(Err(FrameError::Garbage { bytes: garbage }));
                    (&input[pos + 1..], item)
                }
                None => {
                    *skipped += input.len();
                    (&[], None)
                }
            },
            State::Discard => match memchr::memchr(MARK, input) {
                Some(pos) => {
                    self.start_frame();
                    (&input[pos + 1..], None)
                }
                None => (&[], None),
            },
            State::Header => {
                let want = HEADER_LEN - 1 - self.buf.len();
                let take = want.min(input.len());
                if let Some(pos) = memchr::memchr(MARK, &input[..take]) {
                    self.start_frame();
                    return (&input[pos + 1..], Some(Err(FrameError::BadHeader)));
                }
                self.buf.extend_from_slice(&input[..take]);
                let item = if self.buf.len() == HEADER_LEN - 1 {
                    self.finish_header()
                } else {
                    None
                };
                (&input[take..], item)
            }
            State::Payload { len, crc } => {
                let (len, crc) = (*len, *crc);
                let take = (len - self.buf.len()).min(input.len());
                if let Some(pos) = memchr::memchr(MARK, &input[..take]) {
                    let item = Err(FrameError::Truncated {
                        declared: len,
                        received: self.buf.len() + pos,
                    });
                    self.start_frame();
                    return (&input[pos + 1..], Some(item));
                }
                self.buf.extend_from_slice(&input[..take]);
                let mut item = None;
                if self.buf.len() == len {
                    let payload = std::mem::take(&mut self.buf);
                    let computed = crc32fast::hash(&payload);
                    item = Some(if computed == crc {
                        Ok(payload)
                    } else {
                        Err(FrameError::Checksum {
                            expected: crc,
                            computed,
                        })
                    });
                    self.state = State::Hunt { skipped: 0 };
                }
                (&input[take..], item)
            }
        }
    }

    fn finish_header(&mut self) -> Option<Item> {
        let header = std::mem::take(&mut self.buf);
        let parsed = match (header[0], header[1]) {
            (TAG, FORMAT) => match (hex_u32(&header[2..10]), hex_u32(&header[10..18])) {
                (Some(len), Some(crc)) => Ok((len as usize, crc)),
                _ => Err(FrameError::BadHeader),
            },
            (TAG, other) => Err(FrameError::UnknownFormat {
                found: char::from(other),
            }),
            _ => Err(FrameError::BadHeader),
        };
        let (state, item) = match parsed {
            Ok((len, _)) if len > MAX_PAYLOAD => (State::Discard, Some(Err(FrameError::TooLarge { declared: len }))),
            Ok((0, crc)) => {
                let computed = crc32fast::hash(&[]);
                let item = if computed == crc {
                    Ok(Vec::new())
                } else {
                    Err(FrameError::Checksum {
                        expected: crc,
                        computed,
                    })
                };
                (State::Hunt { skipped: 0 }, Some(item))
            }
            Ok((len, crc)) => (State::Payload { len, crc }, None),
            Err(e) => (State::Hunt { skipped: 0 }, Some(Err(e))),
        };
        self.state = state;
        self.buf = header;
        self.buf.clear();
        item
    }
}

/// The frames and errors in one piece of input, in stream order; see [`Decoder::feed`].
#[must_use = "input is consumed only as the iterator is advanced"]
pub struct Frames<'d, 'i> {
    decoder: &'d mut Decoder,
    rest: &'i [u8],
}

impl Iterator for Frames<'_, '_> {
    type Item = Item;

    fn next(&mut self) -> Option<Item> {
        while !self.rest.is_empty() {
            let (rest, item) = self.decoder.step(self.rest);
            self.rest = rest;
            if item.is_some() {
                return item;
            }
        }
        // The end of the piece ends the report of a garbage run, so garbage is never held
        // unreported waiting for bytes that may not come.
        match &mut self.decoder.state {
            State::Hunt { skipped } if *skipped > 0 => {
                let bytes = std::mem::take(skipped);
                Some(Err(FrameError::Garbage { bytes }))
            }
            _ => None,
        }
    }
}

fn hex_u32(digits: &[u8]) -> Option<u32> {
    digits.iter().try_fold(0u32, |acc, &d| {
        let v = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            _ => return None,
        };
        Some(acc << 4 | u32::from(v))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(out: Vec<Result<Vec<u8>, FrameError>>) -> Vec<Result<String, FrameError>> {
        out.into_iter()
            .map(|r| r.map(|p| String::from_utf8(p).unwrap()))
            .collect()
    }

    #[test]
    fn decodes_frames_fed_one_byte_at_a_time() {
        let mut stream = encode("{\"a\":1}").unwrap();
        stream.extend(encode("").unwrap());
        stream.extend(encode("second").unwrap());
        let mut d = Decoder::new();
        let mut got = Vec::new();
        for b in &stream {
            got.extend(frames(d.push(std::slice::from_ref(b))));
        }
        assert_eq!(
            got,
            vec![Ok("{\"a\":1}".into()), Ok(String::new()), Ok("second".into())]
        );
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn feed_hands_out_what_push_returns() {
        // A mark every six bytes: each starts a header the next mark cuts short.
        let mut stream = [MARK, b'j', b'u', b'n', b'k', b'!'].repeat(1000);
        stream.extend(encode("after").unwrap());
        let pushed = frames(Decoder::new().push(&stream));
        assert_eq!(pushed.len(), 1001);
        assert_eq!(pushed[999], Err(FrameError::BadHeader));
        assert_eq!(pushed[1000], Ok("after".into()));
        let mut d = Decoder::new();
        assert_eq!(frames(d.feed(&stream).collect()), pushed);
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn hex_is_strict_lowercase() {
        assert_eq!(hex_u32(b"000000ff"), Some(255));
        assert_eq!(hex_u32(b"000000FF"), None);
        assert_eq!(hex_u32(b"0000 0ff"), None);
    }
}
