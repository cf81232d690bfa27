//! The test guest image, built (or found in its cache) by `images/build`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

#[derive(Debug, Clone)]
pub struct GuestImage {
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    /// A root file system to boot from (the Debian guest), opened with snapshot=on; none for
    /// the busybox guest, which lives in its initramfs.
    pub disk: Option<PathBuf>,
}

/// Builds the image once per test process; later calls return the same one.
pub fn guest_image() -> Result<&'static GuestImage, String> {
    static IMAGE: OnceLock<Result<GuestImage, String>> = OnceLock::new();
    IMAGE.get_or_init(build).as_ref().map_err(Clone::clone)
}

/// The Debian guest (images/build-debian): systemd, udev, D-Bus, NetworkManager and the
/// vfmig-guest package, installed with dpkg. Built once per test process.
pub fn debian_image() -> Result<&'static GuestImage, String> {
    static IMAGE: OnceLock<Result<GuestImage, String>> = OnceLock::new();
    IMAGE
        .get_or_init(|| {
            let dir = run("images/build-debian")?;
            Ok(GuestImage {
                kernel: dir.join("vmlinuz"),
                initramfs: dir.join("initrd.img"),
                disk: Some(dir.join("disk.img")),
            })
        })
        .as_ref()
        .map_err(Clone::clone)
}

fn build() -> Result<GuestImage, String> {
    let dir = run("images/build")?;
    Ok(GuestImage {
        kernel: dir.join("vmlinuz"),
        initramfs: dir.join("initramfs.gz"),
        disk: None,
    })
}

/// Runs an image build script and returns the directory it printed last, checked to hold
/// the kernel.
fn run(script: &str) -> Result<PathBuf, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the workspace");
    let out = Command::new(root.join(script))
        .output()
        .map_err(|e| format!("running {script}: {e}"))?;
    if !out.status.success() {
        return Err(format!("{script} failed: {}", String::from_utf8_lossy(&out.stderr)));
    }
    let dir = PathBuf::from(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap_or_default()
            .trim(),
    );
    if !dir.join("vmlinuz").exists() {
        return Err(format!("{script} printed {}, which holds no image", dir.display()));
    }
    Ok(dir)
}
