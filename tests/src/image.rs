//! The test guest image, built (or found in its cache) by `images/build`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

#[derive(Debug, Clone)]
pub struct GuestImage {
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
}

/// Builds the image once per test process; later calls return the same one.
pub fn guest_image() -> Result<&'static GuestImage, String> {
    static IMAGE: OnceLock<Result<GuestImage, String>> = OnceLock::new();
    IMAGE.get_or_init(build).as_ref().map_err(Clone::clone)
}

fn build() -> Result<GuestImage, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the workspace");
    let out = Command::new(root.join("images/build"))
        .output()
        .map_err(|e| format!("running images/build: {e}"))?;
    if !out.status.success() {
        return Err(format!("images/build failed: {}", String::from_utf8_lossy(&out.stderr)));
    }
    let dir = PathBuf::from(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap_or_default()
            .trim(),
    );
    let image = GuestImage {
        kernel: dir.join("vmlinuz"),
        initramfs: dir.join("initramfs.gz"),
    };
    if !image.kernel.exists() || !image.initramfs.exists() {
        return Err(format!("images/build printed {}, which holds no image", dir.display()));
    }
    Ok(image)
}
