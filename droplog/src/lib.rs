//! What an agent drops from its peer — bad frames, messages it cannot decode, replies nothing
//! asked for — logged at a bounded rate: the first drop in full, then at most one summary line
//! a second with the count by kind, and a last summary when the log is dropped.
//!
//! A peer decides how much it sends, so a line per drop would let it decide how much the agent
//! logs: 100 MB of random bytes hold a bad frame every 256 bytes, and logged one line each they
//! made 776,041 lines on a guest's serial console, which set the pace of the whole agent.
//!
//! A crate of its own because both agents need it and the one crate they share,
//! `vfmig-protocol`, must read no clock and write nothing (the agents do not depend on each
//! other). The rules stay pure all the same: [`Tally`] is handed the time, so they are tested
//! without sleeping; [`DropLog`] adds the clock and the log lines.
//!
//! It must never log a line per drop, hold more than a count per kind, or block its caller.

use std::fmt;
use std::time::{Duration, Instant};

/// At most one line per this long, whatever the peer sends.
pub const INTERVAL: Duration = Duration::from_secs(1);

/// What a drop calls for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The first drop after a quiet [`INTERVAL`]: log it in full.
    Log,
    /// Counted, for a summary not yet due.
    Counted,
    /// Counted, and this summary (which includes it) is due.
    Summary(Summary),
}

/// The drops since the last line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    pub dropped: u64,
    /// Count per kind, in the order the kinds first came.
    pub kinds: Vec<(&'static str, u64)>,
    /// Since the last line.
    pub over: Duration,
    /// Every drop the tally has counted, the ones logged in full included.
    pub total: u64,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (kind, n)) in self.kinds.iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            write!(f, "{sep}{n} {kind}")?;
        }
        Ok(())
    }
}

/// The rules, given the time: which drop to log, when a summary is due, what it says.
#[derive(Debug, Default)]
pub struct Tally {
    last_line: Option<Instant>,
    pending: Vec<(&'static str, u64)>,
    total: u64,
}

impl Tally {
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts a drop of `kind` at `now`.
    pub fn note(&mut self, now: Instant, kind: &'static str) -> Verdict {
        self.total += 1;
        let quiet = self.last_line.is_none_or(|at| now.duration_since(at) >= INTERVAL);
        if quiet && self.pending.is_empty() {
            self.last_line = Some(now);
            return Verdict::Log;
        }
        match self.pending.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, n)) => *n += 1,
            None => self.pending.push((kind, 1)),
        }
        self.due(now).map_or(Verdict::Counted, Verdict::Summary)
    }

    /// When the summary of what is counted will be due; `None` while nothing is.
    pub fn next_summary(&self) -> Option<Instant> {
        if self.pending.is_empty() {
            return None;
        }
        self.last_line.map(|at| at + INTERVAL)
    }

    /// The summary, if one is due at `now`.
    pub fn due(&mut self, now: Instant) -> Option<Summary> {
        let at = self.next_summary()?;
        (now >= at).then(|| self.summarise(now))
    }

    /// The summary of whatever is counted, due or not: for the end of the tally's life.
    pub fn finish(&mut self, now: Instant) -> Option<Summary> {
        self.next_summary()?;
        Some(self.summarise(now))
    }

    fn summarise(&mut self, now: Instant) -> Summary {
        let over = self
            .last_line
            .map_or(Duration::ZERO, |at| now.saturating_duration_since(at));
        self.last_line = Some(now);
        let kinds = std::mem::take(&mut self.pending);
        Summary {
            dropped: kinds.iter().map(|(_, n)| n).sum(),
            kinds,
            over,
            total: self.total,
        }
    }
}

/// A [`Tally`] on the clock, writing its lines through `tracing` as warnings.
#[derive(Debug)]
pub struct DropLog {
    /// Who sent what is dropped, as the lines name it: "the host", "the guest".
    peer: &'static str,
    tally: Tally,
}

/// tokio's clock, so a test runtime with paused time sees summaries come due with its sleeps.
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

impl DropLog {
    pub fn new(peer: &'static str) -> Self {
        Self {
            peer,
            tally: Tally::new(),
        }
    }

    /// Counts a drop of `kind`, caused by `error`, which is formatted only if it is logged.
    pub fn note(&mut self, kind: &'static str, error: &dyn fmt::Display) {
        match self.tally.note(now(), kind) {
            Verdict::Log => tracing::warn!(kind, %error, "dropped input from {}", self.peer),
            Verdict::Counted => {}
            Verdict::Summary(s) => self.log(&s),
        }
    }

    /// Logs the summary when it comes due; never completes while nothing is counted. Meant
    /// for a `select!` beside the reads, so a flood that stops is still summarised in time.
    pub async fn summarise_when_due(&mut self) {
        let Some(at) = self.tally.next_summary() else {
            return std::future::pending().await;
        };
        tokio::time::sleep_until(at.into()).await;
        if let Some(s) = self.tally.due(now()) {
            self.log(&s);
        }
    }

    fn log(&self, s: &Summary) {
        tracing::warn!(
            total = s.total,
            "dropped {} more from {} in {:.1} s: {s}",
            s.dropped,
            self.peer,
            s.over.as_secs_f64()
        );
    }
}

impl Drop for DropLog {
    /// What was counted since the last line is not lost with the log.
    fn drop(&mut self) {
        if let Some(s) = self.tally.finish(now()) {
            self.log(&s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_flood_makes_one_line_then_one_summary_a_second() {
        let start = Instant::now();
        let mut t = Tally::new();
        let mut lines = Vec::new();
        // 100,000 drops over 3.5 s, alternating two kinds.
        for i in 0..100_000u64 {
            let kind = if i % 2 == 0 { "garbage" } else { "bad header" };
            let v = t.note(start + Duration::from_micros(i * 35), kind);
            if v != Verdict::Counted {
                lines.push(v);
            }
        }
        assert_eq!(lines.len(), 4, "{lines:?}");
        assert_eq!(lines[0], Verdict::Log);
        let Verdict::Summary(first) = &lines[1] else {
            panic!("{lines:?}")
        };
        assert!(first.over >= INTERVAL && first.over < INTERVAL + ms(1), "{first:?}");
        assert_eq!(first.kinds[0].0, "bad header");
        assert_eq!(
            first.to_string(),
            format!("{} bad header, {} garbage", first.kinds[0].1, first.kinds[1].1)
        );
        let rest = t.finish(start + ms(3500)).expect("the last half second is summarised");
        let summarised: u64 = lines
            .iter()
            .filter_map(|v| match v {
                Verdict::Summary(s) => Some(s.dropped),
                _ => None,
            })
            .sum();
        assert_eq!(1 + summarised + rest.dropped, 100_000, "every drop is counted once");
        assert_eq!(rest.total, 100_000);
        assert_eq!(t.finish(start + ms(4000)), None, "nothing left after the last summary");
    }

    #[test]
    fn a_drop_after_a_quiet_second_is_logged_in_full_again() {
        let start = Instant::now();
        let mut t = Tally::new();
        assert_eq!(t.note(start, "checksum"), Verdict::Log);
        assert_eq!(t.next_summary(), None, "nothing counted yet");
        assert_eq!(t.note(start + ms(1500), "checksum"), Verdict::Log);
    }

    #[test]
    fn a_summary_comes_due_a_second_after_the_last_line_even_if_the_drops_stop() {
        let start = Instant::now();
        let mut t = Tally::new();
        t.note(start, "garbage");
        assert_eq!(t.note(start + ms(10), "truncated"), Verdict::Counted);
        assert_eq!(t.next_summary(), Some(start + INTERVAL));
        assert_eq!(t.due(start + ms(999)), None);
        let s = t.due(start + INTERVAL).expect("due");
        assert_eq!((s.dropped, s.total, s.kinds), (1, 2, vec![("truncated", 1)]));
        assert_eq!(t.next_summary(), None);
        // Counted drops wait their turn: no line within a second of the summary.
        assert_eq!(t.note(start + ms(1200), "garbage"), Verdict::Counted);
        assert_eq!(t.next_summary(), Some(start + ms(2000)));
    }
}
