//! A thin QMP client: a unix socket, one JSON object per line, the greeting,
//! `qmp_capabilities`, ids matched to replies, and events on a broadcast channel.
//!
//! Why not the `qapi` crate: its last release (2024) carries QEMU 9.1's schema and fails the
//! whole stream on an event name it does not know (its issue #23), so a newer QEMU could drop
//! the connection in the middle of a migration. Here only the commands and replies vfmig uses
//! are typed (see [`super::migration`]); everything else passes through as JSON.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::sync::{broadcast, oneshot};
use tokio_util::codec::{FramedRead, FramedWrite, LinesCodec, LinesCodecError};

/// QMP answers are small; a line past this is a broken peer, not data.
const MAX_LINE: usize = 16 << 20;
/// Every command gets an answer within this, or the call fails.
pub const COMMAND_DEADLINE: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("QMP socket: {0}")]
    Io(std::io::Error),
    #[error("QMP connection closed")]
    Closed,
    #[error("QMP peer broke the protocol: {0}")]
    Protocol(String),
    #[error("QMP command {command} got no answer within {:?}", COMMAND_DEADLINE)]
    Timeout { command: String },
    #[error("QMP command {command} failed: {class}: {desc}")]
    Command {
        command: String,
        class: String,
        desc: String,
    },
    #[error("QMP reply to {command} is not what was expected: {error}")]
    Reply { command: String, error: String },
}

// The I/O error is in the message; as a source too, a chain would print it twice.
impl From<std::io::Error> for QmpError {
    fn from(e: std::io::Error) -> Self {
        Self::Io(e)
    }
}

/// An asynchronous QEMU event.
#[derive(Clone, Debug, Deserialize)]
pub struct Event {
    pub event: String,
    #[serde(default)]
    pub data: Value,
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<Value, (String, String)>>>>>;

pub struct Qmp {
    writer: tokio::sync::Mutex<FramedWrite<OwnedWriteHalf, LinesCodec>>,
    pending: Pending,
    /// Set when the read side ended: a command issued after that would wait for an answer
    /// that cannot come.
    closed: Arc<AtomicBool>,
    events: broadcast::Sender<Event>,
    next_id: AtomicU64,
}

impl Qmp {
    /// Connects, reads the greeting and leaves capabilities negotiation mode.
    pub async fn connect(path: &Path) -> Result<Self, QmpError> {
        let (read, write) = UnixStream::connect(path).await?.into_split();
        let mut lines = FramedRead::new(read, LinesCodec::new_with_max_length(MAX_LINE));
        tokio::time::timeout(COMMAND_DEADLINE, greeting(&mut lines))
            .await
            .map_err(|_| QmpError::Timeout {
                command: "greeting".into(),
            })??;
        let pending: Pending = Arc::default();
        let closed = Arc::new(AtomicBool::new(false));
        let (events, _) = broadcast::channel(256);
        tokio::spawn(read_loop(lines, pending.clone(), closed.clone(), events.clone()));
        let qmp = Self {
            writer: tokio::sync::Mutex::new(FramedWrite::new(write, LinesCodec::new())),
            pending,
            closed,
            events,
            next_id: AtomicU64::new(1),
        };
        qmp.execute("qmp_capabilities", None).await?;
        Ok(qmp)
    }

    /// Events from now on. A receiver that falls 256 events behind loses the oldest.
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Runs a command and returns its `return` value.
    pub async fn execute(&self, command: &str, arguments: Option<Value>) -> Result<Value, QmpError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().expect("pending map poisoned").insert(id, tx);
        // The read side sets this before it drops every waiter, so a command that got in
        // after that sees it here.
        if self.closed.load(Ordering::SeqCst) {
            self.pending.lock().expect("pending map poisoned").remove(&id);
            return Err(QmpError::Closed);
        }
        let mut request = json!({ "execute": command, "id": id });
        if let Some(args) = arguments {
            request["arguments"] = args;
        }
        let sent = self.writer.lock().await.send(request.to_string()).await;
        if let Err(e) = sent {
            self.pending.lock().expect("pending map poisoned").remove(&id);
            return Err(match e {
                LinesCodecError::Io(e) => QmpError::Io(e),
                e => QmpError::Protocol(e.to_string()),
            });
        }
        let answer = tokio::time::timeout(COMMAND_DEADLINE, rx).await;
        self.pending.lock().expect("pending map poisoned").remove(&id);
        match answer {
            Err(_) => Err(QmpError::Timeout {
                command: command.into(),
            }),
            Ok(Err(_)) => Err(QmpError::Closed),
            Ok(Ok(Ok(value))) => Ok(value),
            Ok(Ok(Err((class, desc)))) => Err(QmpError::Command {
                command: command.into(),
                class,
                desc,
            }),
        }
    }

    /// Runs a command and reads its answer as `T`.
    pub async fn query<T: DeserializeOwned>(&self, command: &str, arguments: Option<Value>) -> Result<T, QmpError> {
        let value = self.execute(command, arguments).await?;
        serde_json::from_value(value).map_err(|e| QmpError::Reply {
            command: command.into(),
            error: e.to_string(),
        })
    }
}

/// Reads up to the greeting, passing over the events before it.
///
/// QEMU should send nothing before its greeting, but QEMU 10.0 can: a monitor stays out of
/// negotiation mode from its previous client's close until the next client's open has been
/// handled, and an event emitted then goes to the new client first (seen: a `RESUME` ahead of
/// the greeting, when vfmig-host ran again on a destination the run it replaced had been
/// connected to; fixed in QEMU by "monitor/qmp: … negotiation phase" on close). Such an event
/// is from before this connection, which no one here can be waiting for.
async fn greeting(lines: &mut FramedRead<OwnedReadHalf, LinesCodec>) -> Result<(), QmpError> {
    loop {
        let line = lines
            .next()
            .await
            .ok_or(QmpError::Closed)?
            .map_err(|e| QmpError::Protocol(e.to_string()))?;
        let message: Option<Value> = serde_json::from_str(&line).ok();
        match message {
            Some(m) if m.get("QMP").is_some() => return Ok(()),
            Some(m) if m.get("event").is_some() => {
                tracing::debug!(line = %format_args!("{line:.200}"), "QMP event ahead of the greeting, passed over");
            }
            _ => return Err(QmpError::Protocol(format!("unexpected greeting {line:.200}"))),
        }
    }
}

async fn read_loop(
    mut lines: FramedRead<OwnedReadHalf, LinesCodec>,
    pending: Pending,
    closed: Arc<AtomicBool>,
    events: broadcast::Sender<Event>,
) {
    while let Some(Ok(line)) = lines.next().await {
        let Ok(msg) = serde_json::from_str::<Value>(&line) else {
            tracing::warn!(line = %format_args!("{line:.200}"), "QMP sent a line that is not JSON");
            continue;
        };
        if msg.get("event").is_some() {
            if let Ok(event) = serde_json::from_value::<Event>(msg) {
                let _ = events.send(event);
            }
            continue;
        }
        let Some(id) = msg.get("id").and_then(Value::as_u64) else {
            continue;
        };
        let Some(tx) = pending.lock().expect("pending map poisoned").remove(&id) else {
            continue;
        };
        let answer = match (msg.get("return"), msg.get("error")) {
            (Some(ret), _) => Ok(ret.clone()),
            (None, Some(err)) => Err((
                err.get("class").and_then(Value::as_str).unwrap_or("?").to_owned(),
                err.get("desc").and_then(Value::as_str).unwrap_or("?").to_owned(),
            )),
            (None, None) => Err(("Protocol".into(), format!("reply without return or error: {line:.200}"))),
        };
        let _ = tx.send(answer);
    }
    // Dropping the senders wakes every waiter with "closed".
    closed.store(true, Ordering::SeqCst);
    pending.lock().expect("pending map poisoned").clear();
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::net::UnixListener;

    use super::*;

    const GREETING: &str = r#"{"QMP": {"version": {}, "capabilities": []}}"#;

    /// A monitor that sends `first`, then answers `qmp_capabilities` and `query-status`.
    async fn monitor(name: &str, first: &'static [&'static str]) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!("vfmig-qmp-{}-{name}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).expect("a socket in the temporary directory");
        tokio::spawn(async move {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (read, mut write) = stream.into_split();
            for line in first {
                let _ = write.write_all(format!("{line}\n").as_bytes()).await;
            }
            let mut requests = BufReader::new(read).lines();
            while let Ok(Some(request)) = requests.next_line().await {
                let request: Value = serde_json::from_str(&request).expect("the client sends JSON");
                let answer = json!({ "return": { "status": "running" }, "id": request["id"] });
                let _ = write.write_all(format!("{answer}\n").as_bytes()).await;
            }
        });
        path
    }

    /// What QEMU 10.0 can send a client that connects just after another left: an event of
    /// the previous connection ahead of the greeting.
    #[tokio::test]
    async fn events_ahead_of_the_greeting_are_passed_over() {
        let path = monitor("early-event", &[r#"{"event": "RESUME", "timestamp": {}}"#, GREETING]).await;
        let qmp = Qmp::connect(&path).await.expect("connected past the early event");
        let status = qmp.execute("query-status", None).await.expect("answered");
        assert_eq!(status["status"], "running");
        let _ = std::fs::remove_file(&path);
    }

    #[tokio::test]
    async fn a_peer_that_does_not_greet_is_refused() {
        let path = monitor("no-greeting", &[r#"{"return": {}}"#]).await;
        match Qmp::connect(&path).await {
            Err(QmpError::Protocol(e)) => assert!(e.starts_with("unexpected greeting"), "{e}"),
            other => panic!("expected a protocol error, got {:?}", other.err()),
        }
        let _ = std::fs::remove_file(&path);
    }
}
