//! A guest that writes 100 MB of random bytes before its answer: the host end skips them,
//! takes the answer, and logs the first drop and then at most a summary a second — not a line
//! for each of the ~800,000 bad frames in the garbage.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;
use vfmig_host::channel::GuestChannel;
use vfmig_protocol::frame::Decoder;
use vfmig_protocol::message::{decode, encode, Capabilities, Envelope, GuestMessage, Hello, HostMessage};

/// Where the host end's log lines go: a buffer the test reads back.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("not poisoned").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `len` random bytes, as a user would take from /dev/urandom.
fn random_bytes(len: usize) -> Vec<u8> {
    use std::io::Read;
    let mut out = Vec::with_capacity(len);
    let urandom = std::fs::File::open("/dev/urandom").expect("/dev/urandom opens");
    urandom
        .take(len as u64)
        .read_to_end(&mut out)
        .expect("/dev/urandom reads");
    out
}

/// Answers every request properly, but writes the garbage before its first answer.
async fn guest(listener: UnixListener, mut garbage: Vec<u8>) {
    let Ok((mut stream, _)) = listener.accept().await else {
        return;
    };
    let mut decoder = Decoder::new();
    let mut buf = vec![0u8; 4096];
    loop {
        let Ok(n) = stream.read(&mut buf).await else { return };
        if n == 0 {
            return;
        }
        for payload in decoder.push(&buf[..n]).into_iter().flatten() {
            let Ok(Envelope { id, msg }) = decode::<HostMessage>(&payload) else {
                continue;
            };
            let reply = match msg {
                HostMessage::Sync { nonce } => GuestMessage::SyncAck { nonce },
                HostMessage::Hello(_) => GuestMessage::Hello(Hello::ours("fake-guest", Capabilities::default())),
                _ => continue,
            };
            garbage.extend(encode(id, &reply).expect("encodes"));
            if stream.write_all(&garbage).await.is_err() {
                return;
            }
            garbage.clear();
        }
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_guest_flooding_garbage_costs_a_few_log_lines() {
    let log = Captured::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let path = std::env::temp_dir().join(format!("vfmig-garbage-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).expect("binds");
    let fake = tokio::spawn(guest(listener, random_bytes(100 << 20)));

    let started = Instant::now();
    let mut channel = GuestChannel::connect(&path).await.expect("connects");
    let session = channel.open_session("garbage-test", Duration::from_secs(60)).await;
    let elapsed = started.elapsed();
    drop(channel);
    fake.abort();
    let _ = std::fs::remove_file(&path);
    let session = session.expect("the session opens after the garbage");
    assert_eq!(session.guest.agent, "fake-guest");

    let text = String::from_utf8_lossy(&log.0.lock().expect("not poisoned")).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    println!(
        "100 MiB of garbage, then the session: {} ms; {} log lines:\n{text}",
        elapsed.as_millis(),
        lines.len()
    );
    // The first drop, a summary for each second begun, and the rest when the channel goes,
    // however many sync retries the flood spans.
    let allowed = 2 + elapsed.as_secs_f64().ceil() as usize;
    assert!(
        lines.len() <= allowed,
        "{} lines in {elapsed:?}: more than the first drop and a summary a second",
        lines.len()
    );
    assert!(
        lines.iter().any(|l| l.contains("more from the guest")),
        "the flood is never summarised"
    );
}
