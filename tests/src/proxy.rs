//! A unix-socket relay the fault tests put between `vfmig-host` and QEMU's sockets (QMP, the
//! agent's chardev), so that a connection can be cut at a chosen moment — at once, or in the
//! middle of the next frame the host sends — the way a crashing monitor or a chardev
//! reset would cut it. Every connection accepted is relayed to a fresh connection to the
//! target; a cut closes both, and the next connection is relayed as before.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Default)]
struct Shared {
    live: Mutex<Vec<UnixStream>>,
    cut_mid_frame: AtomicBool,
    cuts: AtomicU32,
    stop: AtomicBool,
}

pub struct Proxy {
    pub path: PathBuf,
    shared: Arc<Shared>,
}

impl Proxy {
    /// Listens at `path` and relays to `target`.
    pub fn start(path: &Path, target: &Path) -> std::io::Result<Self> {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path)?;
        let shared = Arc::new(Shared::default());
        let (s, target) = (shared.clone(), target.to_owned());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if s.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                let Ok(upstream) = UnixStream::connect(&target) else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                relay(&s, client, upstream);
            }
        });
        Ok(Self {
            path: path.to_owned(),
            shared,
        })
    }

    /// Cuts every live connection now.
    pub fn cut(&self) {
        for stream in self.shared.live.lock().expect("not poisoned").drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
        self.shared.cuts.fetch_add(1, Ordering::SeqCst);
    }

    /// Cuts the connection in the middle of the next chunk the client sends: half of it goes
    /// through, then both ends are closed.
    pub fn cut_mid_frame(&self) {
        self.shared.cut_mid_frame.store(true, Ordering::SeqCst);
    }

    /// How many cuts happened.
    pub fn cuts(&self) -> u32 {
        self.shared.cuts.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so it sees the stop flag.
        let _ = UnixStream::connect(&self.path);
        self.cut();
        let _ = std::fs::remove_file(&self.path);
    }
}

fn relay(shared: &Arc<Shared>, client: UnixStream, upstream: UnixStream) {
    let clones = (client.try_clone(), upstream.try_clone());
    let (Ok(client_out), Ok(upstream_in)) = clones else {
        return;
    };
    {
        let mut live = shared.live.lock().expect("not poisoned");
        live.extend(client.try_clone());
        live.extend(upstream.try_clone());
    }
    let s = shared.clone();
    std::thread::spawn(move || pump(client, upstream, Some(&s)));
    std::thread::spawn(move || pump(upstream_in, client_out, None));
}

/// Copies `from` to `to` until either end closes; with `cutter`, honours a mid-frame cut.
fn pump(mut from: UnixStream, mut to: UnixStream, cutter: Option<&Shared>) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some(s) = cutter.filter(|s| s.cut_mid_frame.swap(false, Ordering::SeqCst)) {
            let _ = to.write_all(&buf[..n.div_ceil(2)]);
            let _ = to.flush();
            s.cuts.fetch_add(1, Ordering::SeqCst);
            break;
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}
