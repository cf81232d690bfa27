//! What the demo shows while it works: each stage announced once, with `==>`, and while one
//! runs a sign of life at least every [`TICK`], so a reader never waits in silence (a first run
//! builds the guest image for minutes; a boot under TCG takes a while). On a terminal a status
//! line is redrawn in place with the time so far and the stage's latest word; elsewhere (a log,
//! a pipe) plain lines.

use std::io::{IsTerminal, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a running stage may stay silent in a log before it says it is still going.
const TICK: Duration = Duration::from_secs(5);
/// How often the terminal's status line is redrawn.
const REDRAW: Duration = Duration::from_secs(1);
/// The most of a line the status line shows: cargo's lines and the build's fit; a longer one
/// would wrap, and `\r` would then redraw only its last row.
const STATUS_WIDTH: usize = 72;

pub struct Stage {
    shared: Arc<Shared>,
    ticker: Option<JoinHandle<()>>,
}

struct Shared {
    started: Instant,
    /// Standard output is a terminal: the stage draws its status line there.
    tty: bool,
    state: Mutex<State>,
    wake: Condvar,
}

struct State {
    done: bool,
    /// When the stage last printed a line.
    said: Instant,
    /// The latest line of progress: the terminal's status line; in a log, said (once) with the
    /// next sign of life.
    latest: String,
    /// A status line is on the terminal, not yet ended by a newline.
    drawn: bool,
}

impl Stage {
    /// Announces a stage and keeps showing that it runs until it ends.
    pub fn start(what: &str) -> Self {
        let tty = std::io::stdout().is_terminal();
        println!("==> {what}");
        let now = Instant::now();
        let shared = Arc::new(Shared {
            started: now,
            tty,
            state: Mutex::new(State {
                done: false,
                said: now,
                latest: String::new(),
                drawn: false,
            }),
            wake: Condvar::new(),
        });
        let ticking = Arc::clone(&shared);
        let ticker = std::thread::spawn(move || ticking.tick());
        Self {
            shared,
            ticker: Some(ticker),
        }
    }

    /// A line of the stage's work worth keeping in a log (the build's): on a terminal the
    /// status line, elsewhere a line of its own.
    pub fn say(&self, line: &str) {
        self.line(line, !self.shared.tty);
    }

    /// A line of progress that something at the stage's end repeats (vfmig-host's phases,
    /// which its table shows): on a terminal the status line; in a log it rides on the stage's
    /// next sign of life, so the log is not a second copy of the table.
    pub fn show(&self, line: &str) {
        self.line(line, false);
    }

    /// A line to keep wherever it is shown (what went wrong, the command run).
    pub fn note(&self, line: &str) {
        self.line(line, true);
    }

    fn line(&self, line: &str, keep: bool) {
        let line = line.trim_end();
        if line.is_empty() {
            return;
        }
        let mut state = self.shared.lock();
        if keep {
            self.shared.clear(&mut state);
            println!("    {line}");
            state.said = Instant::now();
        } else {
            state.latest = line.to_owned();
            if self.shared.tty {
                self.shared.draw(&mut state);
            }
        }
    }

    /// Ends the stage with what came of it and how long it took.
    pub fn end(mut self, result: &str) {
        self.stop();
        println!("    {result} ({})", took(self.shared.started.elapsed()));
    }

    fn stop(&mut self) {
        let Some(ticker) = self.ticker.take() else {
            return;
        };
        self.shared.lock().done = true;
        self.shared.wake.notify_all();
        let _ = ticker.join();
        let mut state = self.shared.lock();
        self.shared.clear(&mut state);
    }
}

impl Drop for Stage {
    /// A stage left by an error stops ticking, and the error is printed on a clean line.
    fn drop(&mut self) {
        self.stop();
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while printing leaves nothing inconsistent in the state.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn tick(&self) {
        let mut state = self.lock();
        loop {
            let wait = match self.tty {
                true => REDRAW,
                // Woken when the next line is due, so a log is never silent for more than TICK.
                false => TICK
                    .saturating_sub(state.said.elapsed())
                    .max(Duration::from_millis(100)),
            };
            state = self.wake.wait_timeout(state, wait).unwrap_or_else(|e| e.into_inner()).0;
            if state.done {
                return;
            }
            if self.tty {
                self.draw(&mut state);
            } else if state.said.elapsed() >= TICK {
                let latest = std::mem::take(&mut state.latest);
                match latest.trim() {
                    "" => println!("    ... {}", took(self.started.elapsed())),
                    latest => println!("    ... {}: {latest}", took(self.started.elapsed())),
                }
                state.said = Instant::now();
            }
        }
    }

    fn draw(&self, state: &mut State) {
        let latest: String = state.latest.trim().chars().take(STATUS_WIDTH).collect();
        print!("\r\x1b[K    [{:>7}] {latest}", took(self.started.elapsed()));
        let _ = std::io::stdout().flush();
        state.drawn = true;
    }

    fn clear(&self, state: &mut State) {
        if state.drawn {
            print!("\r\x1b[K");
            let _ = std::io::stdout().flush();
            state.drawn = false;
        }
    }
}

/// A duration as a reader takes it in: "8.4 s", "3 min 12 s".
pub fn took(d: Duration) -> String {
    match d.as_secs() {
        s if s < 60 => format!("{:.1} s", d.as_secs_f64()),
        s => format!("{} min {} s", s / 60, s % 60),
    }
}
