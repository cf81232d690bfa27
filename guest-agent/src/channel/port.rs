//! Opening the virtio-serial port with tokio-serial.
//!
//! `tokio_serial::new(path).open_native_async()` fails with ENOTTY on a virtio port: its open
//! path insists on TIOCEXCL and tcgetattr/tcsetattr, and a virtio port is not a terminal. What
//! works: open the device ourselves (read-write, no controlling terminal, close-on-exec), wrap
//! the descriptor as a `serialport::TTYPort` with `FromRawFd` — which tolerates the failed
//! TIOCEXCL and flock — and convert it with `SerialStream::try_from`, which only sets
//! O_NONBLOCK. Verified on the real port in the test guest (tests/tests/qemu_bed.rs).
//!
//! A virtio port has no end of file: while no host process is connected, read() returns 0 and
//! write() fails with EAGAIN. The session treats a 0-byte read as "host gone" and keeps the
//! descriptor.

use std::fs::{self, OpenOptions};
use std::io;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use tokio_serial::SerialStream;

/// The port name the host gives the agent's virtserialport.
pub const PORT_NAME: &str = "org.vfmig.agent.0";

/// The device of the virtio port named `name`, found through sysfs (udev's
/// `/dev/virtio-ports/NAME` symlink exists only where udev runs).
pub fn find(name: &str) -> io::Result<PathBuf> {
    for entry in fs::read_dir("/sys/class/virtio-ports")? {
        let entry = entry?;
        if fs::read_to_string(entry.path().join("name")).is_ok_and(|n| n.trim() == name) {
            return Ok(Path::new("/dev").join(entry.file_name()));
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!("no virtio port named {name}"),
    ))
}

/// Opens the port for async reading and writing.
pub fn open(path: &Path) -> io::Result<SerialStream> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(path)?;
    // SAFETY: the descriptor is freshly opened and handed over whole; nothing else owns it.
    let tty = unsafe { serialport::TTYPort::from_raw_fd(file.into_raw_fd()) };
    SerialStream::try_from(tty).map_err(io::Error::from)
}
