//! A hostile guest on the channel: the host end must give a bounded outcome — the error the
//! state machine turns into its fallback or a clean stop — within its deadline, with bounded
//! memory, and never panic. The guest end here is a fake driven by the test, on a real unix
//! socket, as QEMU's chardev socket would be; after the session opens, each scenario answers
//! one request its own way.
//!
//! One test runs the scenarios in turn so that the process's peak RSS (VmHWM) measures the host
//! end alone.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use vfmig_host::channel::{ChannelError, GuestChannel};
use vfmig_protocol::frame::{self, Decoder};
use vfmig_protocol::message::*;
use vfmig_protocol::{ProtocolVersion, VersionRange};

const DEADLINE: Duration = Duration::from_secs(2);
/// Scheduling slack on a loaded 2-core machine; the bound checked is deadline + this.
const SLACK: Duration = Duration::from_millis(500);

#[derive(Clone, Copy, Debug)]
enum Hostile {
    /// Never says anything, not even to the sync.
    Silent,
    /// Answers the request, but only after its deadline.
    Late,
    /// A frame header announcing 1 MiB, then bytes that never end a frame.
    EndlessBytes,
    /// 100 MB of well-formed frames that answer nothing (unsolicited ids).
    Flood100Mb,
    /// Replies that carry the wrong request id.
    WrongIds,
    /// Frames over the 1 MiB limit, again and again.
    Oversize,
    /// Interim replies without end to a request that allows them.
    EndlessInterim,
    /// An error reply with 64 KiB of text.
    LongError,
    /// A hello claiming every capability and versions up to 99.
    ClaimsEverything,
}

async fn read_request(stream: &mut UnixStream, decoder: &mut Decoder) -> Option<Envelope<HostMessage>> {
    let mut buf = vec![0u8; 4096];
    loop {
        let n = stream.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        if let Some(Ok(payload)) = decoder.push(&buf[..n]).into_iter().next() {
            return decode(&payload).ok();
        }
    }
}

async fn send(stream: &mut UnixStream, id: u64, msg: &GuestMessage) -> std::io::Result<()> {
    stream.write_all(&encode(id, msg).expect("encodes")).await
}

fn hello(claims_everything: bool) -> GuestMessage {
    let mut hello = Hello::ours(
        "fake-guest",
        Capabilities {
            kernel_hook: claims_everything,
            network_manager: claims_everything,
            standby: claims_everything.then(|| "eth9".into()),
            nic_owners: if claims_everything {
                vec!["x".repeat(64); 8]
            } else {
                Vec::new()
            },
        },
    );
    if claims_everything {
        hello.versions = VersionRange {
            min: ProtocolVersion { major: 1, minor: 0 },
            max: ProtocolVersion { major: 99, minor: 0 },
        };
    }
    GuestMessage::Hello(hello)
}

/// The fake guest: answers sync and hello properly (unless silent), then misbehaves on the
/// next request until the host hangs up.
async fn guest(listener: UnixListener, how: Hostile) {
    let Ok((mut stream, _)) = listener.accept().await else {
        return;
    };
    let mut decoder = Decoder::new();
    if matches!(how, Hostile::Silent) {
        let mut sink = vec![0u8; 4096];
        while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
        return;
    }
    loop {
        let Some(env) = read_request(&mut stream, &mut decoder).await else {
            return;
        };
        let reply = match env.msg {
            HostMessage::Sync { nonce } => GuestMessage::SyncAck { nonce },
            HostMessage::Hello(_) => hello(matches!(how, Hostile::ClaimsEverything)),
            _ => break misbehave(&mut stream, env.id, how).await,
        };
        if send(&mut stream, env.id, &reply).await.is_err() {
            return;
        }
    }
}

async fn misbehave(stream: &mut UnixStream, id: u64, how: Hostile) {
    let status = GuestMessage::Status(Status {
        phase: Phase::Idle,
        saved: vec![],
    });
    let until = Instant::now() + DEADLINE * 3;
    // Every write can fail once the host gives up and closes: that ends the scenario.
    let _ = match how {
        Hostile::Silent | Hostile::ClaimsEverything => send(stream, id, &status).await,
        Hostile::Late => {
            tokio::time::sleep(DEADLINE + Duration::from_secs(1)).await;
            send(stream, id, &status).await
        }
        Hostile::EndlessBytes => {
            let mut header = vec![frame::MARK];
            header.extend_from_slice(format!("V1{:08x}{:08x}", frame::MAX_PAYLOAD, 0).as_bytes());
            let _ = stream.write_all(&header).await;
            let junk = vec![b'a'; 64 << 10];
            loop {
                if Instant::now() > until || stream.write_all(&junk).await.is_err() {
                    break Ok(());
                }
            }
        }
        Hostile::Flood100Mb => {
            let one = encode(id + 1_000_000, &status).expect("encodes");
            let batch: Vec<u8> = one.iter().copied().cycle().take(one.len() * 1000).collect();
            let mut sent = 0;
            while sent < 100_000_000 {
                if stream.write_all(&batch).await.is_err() {
                    break;
                }
                sent += batch.len();
            }
            Ok(())
        }
        Hostile::WrongIds => {
            for wrong in [id + 1, id.wrapping_sub(1), 0, u64::MAX] {
                let _ = send(stream, wrong, &status).await;
            }
            Ok(())
        }
        Hostile::Oversize => {
            let big = format!("\"{}\"", "x".repeat(frame::MAX_PAYLOAD + 1));
            let frame = frame_raw(&big);
            loop {
                if Instant::now() > until || stream.write_all(&frame).await.is_err() {
                    break Ok(());
                }
            }
        }
        Hostile::EndlessInterim => {
            let saved = GuestMessage::StateSaved(StateSaved {
                interface: "eth0".into(),
                digest: format!("sha256:{}", "0".repeat(64)),
                addresses: 1,
                routes: 1,
                neighbours: 1,
                standby: None,
                location: None,
                lost: vec![],
            });
            loop {
                if Instant::now() > until || send(stream, id, &saved).await.is_err() {
                    break Ok(());
                }
            }
        }
        Hostile::LongError => {
            let json = format!(
                r#"{{"v":1,"id":{id},"msg":{{"type":"error","body":{{"code":9,"message":"{}"}}}}}}"#,
                "e".repeat(64 << 10)
            );
            stream.write_all(&frame_raw(&json)).await
        }
    };
    let mut sink = vec![0u8; 4096];
    while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
}

/// A frame around any payload, with a correct header and checksum, bypassing the encoder's
/// size check.
fn frame_raw(payload: &str) -> Vec<u8> {
    let mut out = format!("V1{:08x}{:08x}", payload.len(), crc32fast::hash(payload.as_bytes())).into_bytes();
    out.insert(0, frame::MARK);
    out.extend_from_slice(payload.as_bytes());
    out
}

/// Peak resident memory of this process so far, in KiB.
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn socket_path(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("vfmig-hostile-{}-{tag}.sock", std::process::id()))
}

/// Runs one scenario: opens a session and sends the request `msg`; the outcome and how long
/// the host end took.
async fn scenario(how: Hostile, msg: HostMessage) -> (Result<Vec<GuestMessage>, ChannelError>, Duration) {
    let path = socket_path(&format!("{how:?}"));
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).expect("binds");
    let fake = tokio::spawn(guest(listener, how));
    let started = Instant::now();
    let outcome = async {
        let mut channel = GuestChannel::connect(&path).await?;
        channel.open_session("hostile-test", DEADLINE).await?;
        let started = Instant::now();
        let outcome = channel.request(msg, DEADLINE).await;
        Ok::<_, ChannelError>((outcome, started.elapsed()))
    }
    .await;
    let _ = std::fs::remove_file(&path);
    fake.abort();
    match outcome {
        Ok((outcome, took)) => (outcome, took),
        Err(e) => (Err(e), started.elapsed()),
    }
}

#[tokio::test(flavor = "current_thread")]
async fn every_hostile_guest_gets_a_bounded_outcome_within_the_deadline() {
    let prepare = HostMessage::PrepareUnplug(PrepareUnplug {
        interface: InterfaceSelector {
            name: Some("eth0".into()),
            ..Default::default()
        },
        deadline_ms: 2000,
        standby: StandbyRequest::Off,
        accept_loss: false,
    });
    let base = peak_rss_kib();
    println!("{:<18} {:>8}  outcome", "guest", "ms");
    for how in [
        Hostile::Silent,
        Hostile::Late,
        Hostile::EndlessBytes,
        Hostile::Flood100Mb,
        Hostile::WrongIds,
        Hostile::Oversize,
        Hostile::EndlessInterim,
        Hostile::LongError,
        Hostile::ClaimsEverything,
    ] {
        let msg = match how {
            Hostile::EndlessInterim => prepare.clone(),
            _ => HostMessage::StatusQuery,
        };
        let (outcome, took) = scenario(how, msg).await;
        let shown = match &outcome {
            Ok(replies) => format!("answered: {replies:?}"),
            Err(e) => format!("error: {e}"),
        };
        println!("{:<18} {:>8}  {}", format!("{how:?}"), took.as_millis(), shown);
        assert!(took <= DEADLINE + SLACK, "{how:?} held the host {took:?}");
        match how {
            Hostile::ClaimsEverything => assert!(outcome.is_ok(), "{how:?}: {shown}"),
            Hostile::EndlessInterim => {
                assert!(
                    matches!(outcome, Err(ChannelError::TooManyReplies(_))),
                    "{how:?}: {shown}"
                )
            }
            _ => assert!(
                matches!(outcome, Err(ChannelError::Timeout { .. })),
                "{how:?} should time out: {shown}"
            ),
        }
    }
    let grown = peak_rss_kib().saturating_sub(base);
    println!("peak RSS grew by {grown} KiB over all scenarios");
    assert!(grown < 16 << 10, "the host end's memory grew by {grown} KiB");
}

#[tokio::test(flavor = "current_thread")]
async fn a_hello_claiming_versions_up_to_99_negotiates_the_highest_common_one() {
    let path = socket_path("claims");
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).expect("binds");
    let fake = tokio::spawn(guest(listener, Hostile::ClaimsEverything));
    let mut channel = GuestChannel::connect(&path).await.unwrap();
    let session = channel.open_session("hostile-test", DEADLINE).await.unwrap();
    let _ = std::fs::remove_file(&path);
    fake.abort();
    assert_eq!(session.version.major, 1);
    // Its capabilities are claims: vfmig-host acts on the hook only once the guest confirms
    // tracking the very device QEMU shows as the VF (host-agent/src/migration/phases.rs).
    assert!(session.guest.capabilities.kernel_hook);
}
