//! Capture + restore of 10,000 neighbours and 5,000 routes on one interface: vfmig against
//! iproute2 (`ip addr save|restore`, `ip route save|restore`, `ip -batch` for neighbours),
//! measured in the same run on the same state, alternating, medians of every round.
//!
//! vfmig is timed twice: in-process (what the daemon does) and through the `vfmig-guestd`
//! command (a process per step, as `ip` is). Each restore goes onto a freshly created link, down
//! and empty, with the old ifindex — iproute2's restore replays raw netlink messages that name
//! the old ifindex, so it could not restore onto a link with a new one at all.
//!
//! vfmig's announcements (gratuitous ARP / unsolicited NA, three rounds 100 ms apart, after
//! waiting for carrier) are off here: iproute2 sends none, and the spacing is a deliberate wait,
//! not work.
//!
//! Runs as root, inside a throw-away network namespace. `VFMIG_BENCH_ROUNDS` sets the rounds.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use vfmig_guest::netstate::{self, RestoreOptions};
use vfmig_guest::store;
use vfmig_protocol::netstate::SavedState;
use vfmig_testbed::netns::{enter_fresh, ip_batch};

const NEIGHBOURS: usize = 10_000;
const ROUTES: usize = 5_000;
const IFACE: &str = "vfa0";
const MAC: &str = "02:00:00:00:0a:01";

fn setup() -> String {
    // Permanent entries are exempt from the neighbour tables' gc thresholds (which only the
    // initial namespace may change), so 10,000 of them fit.
    let mut b = fresh_link();
    b += &format!(
        "link set {IFACE} mtu 9000 up\naddr add 198.18.0.2/16 dev {IFACE}\naddr add 2001:db8::2/64 dev {IFACE} nodad\n"
    );
    // 8,000 IPv4 and 2,000 IPv6 neighbours.
    for i in 0..8_000 {
        b += &format!(
            "neigh add 198.18.{}.{} lladdr 02:00:01:00:{:02x}:{:02x} dev {IFACE} nud permanent\n",
            1 + i / 250,
            1 + i % 250,
            i / 256,
            i % 256
        );
    }
    for i in 0..2_000 {
        b += &format!(
            "neigh add 2001:db8::1:{i:x} lladdr 02:00:02:00:{:02x}:{:02x} dev {IFACE} nud permanent\n",
            i / 256,
            i % 256
        );
    }
    // 2,000 IPv4 gateway routes (main), 1,000 IPv4 on-link routes (table 100), 2,000 IPv6 gateway routes.
    for i in 0..2_000 {
        b += &format!(
            "route add 198.19.{}.{}/32 via 198.18.0.1 dev {IFACE}\n",
            i / 250,
            1 + i % 250
        );
    }
    for i in 0..1_000 {
        b += &format!(
            "route add 198.19.{}.{}/32 dev {IFACE} table 100\n",
            100 + i / 250,
            1 + i % 250
        );
    }
    for i in 0..2_000 {
        b += &format!("route add 2001:db8:1:{i:x}::/64 via 2001:db8::1 dev {IFACE}\n");
    }
    b
}

/// Deletes the interface (if any) and makes an empty, down one with the same index and MAC.
fn fresh_link() -> String {
    let index = nix::net::if_::if_nametoindex(IFACE)
        .map(|i| format!(" index {i}"))
        .unwrap_or_default();
    let del = if index.is_empty() {
        String::new()
    } else {
        format!("link del {IFACE}\n")
    };
    format!("{del}link add {IFACE}{index} address {MAC} type veth peer name {IFACE}p\nlink set {IFACE}p up\n")
}

fn counts(state: &vfmig_protocol::netstate::InterfaceState) -> (usize, usize, usize) {
    (state.addresses.len(), state.routes.len(), state.neighbours.len())
}

fn ip(args: &[&str], stdin: Option<&Path>, stdout: Option<&Path>) {
    let mut cmd = Command::new("ip");
    cmd.args(args).stderr(Stdio::inherit());
    if let Some(p) = stdin {
        cmd.stdin(fs::File::open(p).unwrap());
    }
    if let Some(p) = stdout {
        cmd.stdout(fs::File::create(p).unwrap());
    }
    let status = cmd.status().unwrap();
    assert!(status.success(), "ip {args:?}: {status}");
}

struct Timing {
    capture: Duration,
    restore: Duration,
}

fn iproute2(dir: &Path) -> Timing {
    let (a, r4, r6, n, batch) = (
        dir.join("addr"),
        dir.join("route4"),
        dir.join("route6"),
        dir.join("neigh.txt"),
        dir.join("neigh.batch"),
    );
    let t = Instant::now();
    ip(&["addr", "save", "dev", IFACE], None, Some(&a));
    ip(
        &["-4", "route", "save", "table", "all", "dev", IFACE, "proto", "boot"],
        None,
        Some(&r4),
    );
    ip(
        &["-6", "route", "save", "table", "all", "dev", IFACE, "proto", "boot"],
        None,
        Some(&r6),
    );
    ip(&["-o", "neigh", "show", "dev", IFACE], None, Some(&n));
    let capture = t.elapsed();
    // Turning `ip neigh show` into `ip -batch` lines is left untimed, in iproute2's favour.
    let mut lines = String::new();
    for l in fs::read_to_string(&n).unwrap().lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        let at = f.iter().position(|w| *w == "lladdr").unwrap();
        lines += &format!(
            "neigh replace {} dev {IFACE} lladdr {} nud {}\n",
            f[0],
            f[at + 1],
            f.last().unwrap().to_lowercase()
        );
    }
    fs::write(&batch, lines).unwrap();
    ip_batch(&fresh_link()).unwrap();

    let t = Instant::now();
    ip(&["link", "set", IFACE, "mtu", "9000", "up"], None, None);
    ip(&["addr", "restore"], Some(&a), None);
    ip(&["-4", "route", "restore"], Some(&r4), None);
    ip(&["-6", "route", "restore"], Some(&r6), None);
    ip(&["-batch", batch.to_str().unwrap()], None, None);
    Timing {
        capture,
        restore: t.elapsed(),
    }
}

async fn vfmig_in_process(handle: &rtnetlink::Handle, file: &Path) -> Timing {
    let t = Instant::now();
    let captured = netstate::capture(handle, IFACE).await.unwrap();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
    store::save(
        file,
        &SavedState {
            captured_unix_ms: now,
            interface: captured.state,
        },
    )
    .unwrap();
    let capture = t.elapsed();
    ip_batch(&fresh_link()).unwrap();

    let t = Instant::now();
    let saved = store::load(file).unwrap();
    let index = netstate::link_index(handle, IFACE).await.unwrap();
    let report = netstate::restore(handle, &saved, index, RestoreOptions::default())
        .await
        .unwrap();
    let restore = t.elapsed();
    assert!(
        report.failed.is_empty(),
        "{:?}",
        &report.failed[..report.failed.len().min(5)]
    );
    Timing { capture, restore }
}

fn vfmig_cli(file: &Path) -> Timing {
    let bin = env!("CARGO_BIN_EXE_vfmig-guestd");
    let run = |args: &[&str]| {
        let status = Command::new(bin).args(args).stdout(Stdio::null()).status().unwrap();
        assert!(status.success(), "vfmig-guestd {args:?}: {status}");
    };
    let file = file.to_str().unwrap();
    let t = Instant::now();
    run(&["capture", IFACE, "--out", file]);
    let capture = t.elapsed();
    ip_batch(&fresh_link()).unwrap();
    let t = Instant::now();
    run(&["restore", file, "--onto", IFACE, "--no-announce"]);
    Timing {
        capture,
        restore: t.elapsed(),
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    // `cargo bench` passes --bench; anything else (cargo test's harness flags) means "not now".
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let rounds: usize = std::env::var("VFMIG_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    enter_fresh().expect("the benchmark needs root for a network namespace");
    ip_batch(&setup()).unwrap();
    // tmpfs, like /run/vfmig where the agent keeps states in production.
    let dir = PathBuf::from("/dev/shm").join(format!("vfmig-bench-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let handle = rt.block_on(async { netstate::connect() }).unwrap();
    let check = |who: &str| {
        let state = rt.block_on(netstate::capture(&handle, IFACE)).unwrap().state;
        assert_eq!(
            counts(&state),
            (2, ROUTES, NEIGHBOURS),
            "state after {who}'s restore is incomplete"
        );
        assert_eq!(state.mtu, 9000);
    };
    check("setup");

    let mut results: [(&str, Vec<Timing>); 3] = [
        ("iproute2", vec![]),
        ("vfmig (in-process)", vec![]),
        ("vfmig-guestd (CLI)", vec![]),
    ];
    for round in 0..rounds {
        eprintln!("round {}/{rounds}", round + 1);
        results[0].1.push(iproute2(&dir));
        check("iproute2");
        results[1]
            .1
            .push(rt.block_on(vfmig_in_process(&handle, &dir.join("state.json"))));
        check("vfmig");
        results[2].1.push(vfmig_cli(&dir.join("state-cli.json")));
        check("vfmig-guestd");
    }
    fs::remove_dir_all(&dir).unwrap();

    println!("\ncapture + restore of {NEIGHBOURS} neighbours and {ROUTES} routes, median of {rounds} rounds (ms)");
    println!(
        "{:<20} {:>9} {:>9} {:>9} {:>14}",
        "", "capture", "restore", "total", "iproute2/this"
    );
    let totals: Vec<(Duration, Duration)> = results
        .iter()
        .map(|(_, t)| {
            (
                median(t.iter().map(|t| t.capture).collect()),
                median(t.iter().map(|t| t.restore).collect()),
            )
        })
        .collect();
    let base = (totals[0].0 + totals[0].1).as_secs_f64();
    for ((name, _), (c, r)) in results.iter().zip(&totals) {
        let total = (*c + *r).as_secs_f64();
        println!(
            "{name:<20} {:>9.1} {:>9.1} {:>9.1} {:>13.2}x",
            c.as_secs_f64() * 1e3,
            r.as_secs_f64() * 1e3,
            total * 1e3,
            base / total
        );
    }
    let ratio = |i: usize| base / (totals[i].0 + totals[i].1).as_secs_f64();
    println!(
        "\nvfmig is {:.2}x as fast as iproute2 in-process (target >= 2x) and {:.2}x as the command (target >= 1.5x)",
        ratio(1),
        ratio(2)
    );
}
