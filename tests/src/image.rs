//! The test guest images, built (or found in their cache) by `images/build` and
//! `images/build-debian`.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

#[derive(Debug, Clone)]
pub struct GuestImage {
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    /// A root file system to boot from (the Debian guest); none for the busybox guest, which
    /// lives in its initramfs.
    pub disk: Option<Disk>,
}

#[derive(Debug, Clone)]
pub enum Disk {
    /// The built image, opened with snapshot=on: a guest's writes go to a throw-away file.
    Pristine(PathBuf),
    /// A qcow2 overlay on it that a migration's source and destination open both, as shared
    /// storage: what the guest wrote on the source it reads on the destination.
    Shared(PathBuf),
}

impl GuestImage {
    /// The same image with a fresh overlay in `dir` as its disk, for a migration.
    pub fn with_shared_overlay(&self, dir: &Path) -> Result<GuestImage, String> {
        let Some(Disk::Pristine(base)) = &self.disk else {
            return Err("only a built disk image takes an overlay".into());
        };
        let overlay = dir.join("overlay.qcow2");
        let out = Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
            .arg(base)
            .arg(&overlay)
            .output()
            .map_err(|e| format!("running qemu-img: {e}"))?;
        if !out.status.success() {
            return Err(format!("qemu-img create: {}", String::from_utf8_lossy(&out.stderr)));
        }
        Ok(GuestImage {
            disk: Some(Disk::Shared(overlay)),
            ..self.clone()
        })
    }
}

/// Builds the image once per test process; later calls return the same one.
pub fn guest_image() -> Result<&'static GuestImage, String> {
    guest_image_showing(&mut |_| {})
}

/// [`guest_image`], handing each line the build prints on its standard error (its stages,
/// cargo's progress) to `show` as it comes: the demo shows a first build's minutes with them.
pub fn guest_image_showing(show: &mut dyn FnMut(&str)) -> Result<&'static GuestImage, String> {
    static IMAGE: OnceLock<Result<GuestImage, String>> = OnceLock::new();
    IMAGE.get_or_init(|| build(show)).as_ref().map_err(Clone::clone)
}

/// Who owns the Debian guest's network: images/build-debian's flavours, one base system.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DebianFlavour {
    /// NetworkManager with Debian's defaults; each test writes the profile it needs.
    Nm,
    /// netplan rendering to systemd-networkd, NetworkManager masked, as Debian 12's genericcloud
    /// image: `/etc/netplan/90-default.yaml` has networkd run DHCP on any NIC named en* or eth*.
    Networkd,
    /// ifupdown with isc-dhcp-client, NetworkManager masked; `/etc/network/interfaces` has lo
    /// and sources `/etc/network/interfaces.d/*`, where each test writes its NIC's stanza.
    Ifupdown,
}

impl DebianFlavour {
    /// The build script's argument.
    pub fn name(self) -> &'static str {
        match self {
            Self::Nm => "nm",
            Self::Networkd => "networkd",
            Self::Ifupdown => "ifupdown",
        }
    }
}

/// The Debian guest with NetworkManager ([`DebianFlavour::Nm`]).
pub fn debian_image() -> Result<&'static GuestImage, String> {
    debian_image_of(DebianFlavour::Nm)
}

/// The Debian guest (images/build-debian): systemd, udev, D-Bus, the vfmig-guest package
/// installed with dpkg, and the network stack `flavour` names. Each flavour is built once per
/// test process.
pub fn debian_image_of(flavour: DebianFlavour) -> Result<&'static GuestImage, String> {
    static IMAGES: [OnceLock<Result<GuestImage, String>>; 3] = [const { OnceLock::new() }; 3];
    IMAGES[flavour as usize]
        .get_or_init(|| {
            let dir = run("images/build-debian", &[flavour.name()], &mut |_| {})?;
            Ok(GuestImage {
                kernel: dir.join("vmlinuz"),
                initramfs: dir.join("initrd.img"),
                disk: Some(Disk::Pristine(dir.join("disk.img"))),
            })
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// The nested bed's host (images/build-nested): the test guest with this machine's QEMU in
/// its initramfs and, under /nested, the test guest again as the nested guest. Built once per
/// test process.
pub fn nested_image() -> Result<&'static GuestImage, String> {
    static IMAGE: OnceLock<Result<GuestImage, String>> = OnceLock::new();
    IMAGE
        .get_or_init(|| {
            let dir = run("images/build-nested", &[], &mut |_| {})?;
            Ok(GuestImage {
                kernel: dir.join("vmlinuz"),
                initramfs: dir.join("initramfs.gz"),
                disk: None,
            })
        })
        .as_ref()
        .map_err(Clone::clone)
}

fn build(show: &mut dyn FnMut(&str)) -> Result<GuestImage, String> {
    let dir = run("images/build", &[], show)?;
    Ok(GuestImage {
        kernel: dir.join("vmlinuz"),
        initramfs: dir.join("initramfs.gz"),
        disk: None,
    })
}

/// Runs an image build script with `args`, handing its standard error to `show` line by line,
/// and returns the directory it printed last, checked to hold the kernel.
fn run(script: &str, args: &[&str], show: &mut dyn FnMut(&str)) -> Result<PathBuf, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the workspace");
    let mut child = Command::new(root.join(script))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running {script}: {e}"))?;
    let (Some(mut stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(format!("{script}: no pipes to read"));
    };
    // Standard output (the directory) is read on a thread of its own while standard error is
    // shown, so that neither pipe can fill and stall the script.
    let printed = std::thread::spawn(move || {
        let mut out = String::new();
        stdout.read_to_string(&mut out).map(|_| out)
    });
    // What the script said, for its failure's message; cargo's line per crate it compiles is
    // progress, not why it failed.
    let mut said = String::new();
    for line in BufReader::new(stderr).split(b'\n') {
        let line = line.map_err(|e| format!("reading {script}'s output: {e}"))?;
        let line = String::from_utf8_lossy(&line);
        show(&line);
        if !line.trim_start().starts_with("Compiling ") {
            said.push_str(&line);
            said.push('\n');
        }
    }
    let status = child.wait().map_err(|e| format!("waiting for {script}: {e}"))?;
    let out = printed
        .join()
        .map_err(|_| format!("reading {script}'s output panicked"))?
        .map_err(|e| format!("reading {script}'s output: {e}"))?;
    if !status.success() {
        return Err(format!("{script} failed: {said}"));
    }
    let dir = PathBuf::from(out.lines().last().unwrap_or_default().trim());
    if !dir.join("vmlinuz").exists() {
        return Err(format!("{script} printed {}, which holds no image", dir.display()));
    }
    Ok(dir)
}
