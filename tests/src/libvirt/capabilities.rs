//! libvirt's QEMU capability cache, carried from one libvirtd to the next. A libvirtd with an
//! empty cache probes every QEMU binary first (3–5 s here); one given a valid cache starts in
//! well under a second. libvirt checks a cached entry against the binaries' and its own change
//! times and probes again when they differ, so a stale seed costs a probe, never a wrong answer.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// Where the cache is under a host's /var/cache/libvirt.
pub const SUBDIR: &str = "qemu/capabilities";

/// The seed, kept between test runs beside the VM tests' lock.
fn seed_dir() -> PathBuf {
    std::env::temp_dir().join("vfmig-libvirt-capabilities")
}

/// Fills `cache` (a host's capability directory, not yet used) from the seed; whether there
/// was one.
pub fn seed(cache: &Path) -> io::Result<bool> {
    let seed = seed_dir();
    let Ok(entries) = fs::read_dir(&seed) else {
        return Ok(false);
    };
    fs::create_dir_all(cache)?;
    let mut any = false;
    for entry in entries {
        let entry = entry?;
        fs::copy(entry.path(), cache.join(entry.file_name()))?;
        any = true;
    }
    Ok(any)
}

/// Makes `cache` (a host's, after its libvirtd started) the seed. Written aside and renamed
/// into place, so no run ever reads a half-written seed.
pub fn keep(cache: &Path) -> io::Result<()> {
    let seed = seed_dir();
    let fresh = seed.with_extension(format!("new-{}", std::process::id()));
    let _ = fs::remove_dir_all(&fresh);
    fs::create_dir_all(&fresh)?;
    for entry in fs::read_dir(cache)? {
        let entry = entry?;
        fs::copy(entry.path(), fresh.join(entry.file_name()))?;
    }
    let _ = fs::remove_dir_all(&seed);
    fs::rename(&fresh, &seed)
}

/// Whether libvirt wrote any cache entry in `cache` at or after `since`: it probed a QEMU
/// binary instead of trusting what it found.
pub fn probed_since(cache: &Path, since: SystemTime) -> io::Result<bool> {
    for entry in fs::read_dir(cache)? {
        if entry?.metadata()?.modified()? >= since {
            return Ok(true);
        }
    }
    Ok(false)
}
