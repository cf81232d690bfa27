//! Garbage is cheap, on the bed: 100 MB of random bytes written into the agent's channel, then
//! a session and a request. A user measured the answer after 303 s and 776,041 warning lines on
//! the guest's console (one per bad frame). The agent must answer within seconds of the last
//! garbage byte and log a few lines in all.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use vfmig_protocol::message::{GuestMessage, HostMessage};
use vfmig_testbed::bed::{agent, BOOT};
use vfmig_testbed::exclusive;
use vfmig_testbed::fabric::Fabric;
use vfmig_testbed::image::guest_image;
use vfmig_testbed::vm::{ScratchDir, Vm, VmConfig};

const GARBAGE: usize = 100 << 20;
/// From the last garbage byte written to the answer to the request after it, and from the
/// first: the writes themselves wait on the guest (an agent that logged a line per bad frame
/// took 188 s to take 100 MiB here, and answered 0.8 s after the last of them).
const ANSWER_WITHIN: Duration = Duration::from_secs(10);
/// The agent's lines on the guest's console from the first garbage byte to the answer.
const LINES_FEWER_THAN: usize = 100;
/// A write that QEMU does not take for this long means the guest stopped reading.
const STALLED: Duration = Duration::from_secs(60);
/// Generous, so a slow answer is measured rather than cut off.
const SESSION_DEADLINE: Duration = Duration::from_secs(300);

fn config() -> VmConfig {
    VmConfig {
        name: "source",
        tap: Some("tap-src".into()),
        nic: true,
        mac: "52:54:00:10:00:01".into(),
        agent: true,
        incoming: false,
        hook: true,
        iommu: false,
        standby: false,
        failover: false,
        pf: None,
        spare_port: false,
        second_vf: None,
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

struct Written {
    started: Instant,
    /// When the write of the last byte returned: QEMU had taken it from the socket, or the
    /// socket's buffer had room for it.
    last_byte: Instant,
}

/// Writes `garbage` into the agent's socket, printing the pace, then hangs up. Blocking: a
/// write waits while the guest reads slower than it is written.
fn write_garbage(path: PathBuf, garbage: Vec<u8>) -> Result<Written, String> {
    let mut stream = UnixStream::connect(&path).map_err(|e| format!("connecting: {e}"))?;
    stream
        .set_write_timeout(Some(STALLED))
        .map_err(|e| format!("write timeout: {e}"))?;
    let started = Instant::now();
    let mut written = 0;
    for chunk in garbage.chunks(64 << 10) {
        stream.write_all(chunk).map_err(|e| {
            format!(
                "after {} MiB in {:.1} s: {e}",
                written >> 20,
                started.elapsed().as_secs_f64()
            )
        })?;
        written += chunk.len();
        if written % (10 << 20) == 0 {
            println!(
                "  {:>3} MiB written at {:5.1} s",
                written >> 20,
                started.elapsed().as_secs_f64()
            );
        }
    }
    Ok(Written {
        started,
        last_byte: Instant::now(),
    })
}

/// Lines the agent (or the init loop restarting it) wrote to the console after the first
/// `skip` lines.
fn agent_lines(console: &str, skip: usize) -> Vec<String> {
    console
        .lines()
        .skip(skip)
        .filter(|l| l.contains("vfmig"))
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "current_thread")]
async fn a_hundred_megabytes_of_garbage_cost_seconds_and_a_few_log_lines() {
    let _one = exclusive();
    let image = guest_image().unwrap_or_else(|e| panic!("the guest image: {e}"));
    let fabric = Fabric::new().expect("the fabric comes up");
    fabric.add_tap("tap-src").expect("tap");
    let dir = ScratchDir::new("garbage").expect("scratch directory");
    let vm = Vm::start(image, &dir.0, &config()).expect("QEMU starts");
    // The agent has its port open: garbage written earlier would be dropped by QEMU unread.
    let (ready, _) = vm.agent(BOOT).await.unwrap_or_else(|e| panic!("{e}"));
    drop(ready);
    let before = vm.console().lines().count();

    let (path, garbage) = (agent(&vm), random_bytes(GARBAGE));
    let written = tokio::task::spawn_blocking(move || write_garbage(path, garbage))
        .await
        .expect("the writer does not panic")
        .unwrap_or_else(|e| panic!("writing the garbage: {e}\nguest console:\n{}", vm.console()));
    let transfer = written.last_byte - written.started;
    println!(
        "{} MiB of garbage written in {:.1} s ({:.1} MiB/s through virtio-serial)",
        GARBAGE >> 20,
        transfer.as_secs_f64(),
        (GARBAGE >> 20) as f64 / transfer.as_secs_f64()
    );

    let (mut channel, session) = vm.agent(SESSION_DEADLINE).await.unwrap_or_else(|e| panic!("{e}"));
    let opened = written.last_byte.elapsed();
    let replies = channel
        .request(HostMessage::StatusQuery, SESSION_DEADLINE)
        .await
        .unwrap_or_else(|e| panic!("status after the garbage: {e}\nguest console:\n{}", vm.console()));
    let answered = written.last_byte.elapsed();
    let whole = written.started.elapsed();
    println!(
        "after the last garbage byte: session open at {:.2} s, status answered at {:.2} s; \
         {:.1} s after the first (limit {} s for both)",
        opened.as_secs_f64(),
        answered.as_secs_f64(),
        whole.as_secs_f64(),
        ANSWER_WITHIN.as_secs()
    );
    assert!(session.guest.agent.starts_with("vfmig-guestd "), "{:?}", session.guest);
    assert!(matches!(replies.as_slice(), [GuestMessage::Status(_)]), "{replies:?}");

    // The summary of the last second of drops comes due a second after the line before it.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let lines = agent_lines(&vm.console(), before);
    println!("{} agent lines on the guest's console:", lines.len());
    for line in lines.iter().take(20) {
        println!("  {line}");
    }
    assert!(
        answered < ANSWER_WITHIN,
        "the status was answered {:.1} s after the last garbage byte",
        answered.as_secs_f64()
    );
    assert!(
        whole < ANSWER_WITHIN,
        "the status was answered {:.1} s after the first garbage byte; the writes took {:.1} s",
        whole.as_secs_f64(),
        transfer.as_secs_f64()
    );
    assert!(
        lines.len() < LINES_FEWER_THAN,
        "{} agent lines on the console; the first 20 above",
        lines.len()
    );
    assert!(
        !lines.iter().any(|l| l.contains("vfmig-guestd exited")),
        "the agent died on the garbage"
    );
}
