//! A private D-Bus system bus for a test: a real dbus-daemon with the system bus's default
//! policy (no one may own a name or call a method unless a policy file allows it) and the
//! policy files under test, listening on a socket in a scratch directory.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use crate::vm::ScratchDir;

pub struct DbusDaemon {
    child: Child,
    /// The bus's address, for `--bus`/`--dbus` and zbus.
    pub address: String,
    _dir: ScratchDir,
}

/// The system bus's own default policy (/usr/share/dbus-1/system.conf), which the policy
/// files under test have to open holes in.
const DEFAULT_POLICY: &str = r#"<policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Introspectable"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Properties"/>
  </policy>"#;

impl DbusDaemon {
    /// Starts a bus with the system policy plus `policies` (paths of busconfig files).
    pub fn system_like(policies: &[&Path]) -> std::io::Result<Self> {
        let dir = ScratchDir::new("dbus")?;
        // Other users must reach the socket too: the tests call the bus as an unprivileged one.
        std::fs::set_permissions(&dir.0, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        let includes: String = policies
            .iter()
            .map(|p| format!("  <include>{}</include>\n", p.display()))
            .collect();
        let config = dir.0.join("bus.conf");
        std::fs::write(
            &config,
            format!(
                "<!DOCTYPE busconfig PUBLIC \"-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN\"\n \
                 \"http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd\">\n<busconfig>\n  \
                 <type>system</type>\n  <listen>unix:path={}</listen>\n  <auth>EXTERNAL</auth>\n  \
                 {DEFAULT_POLICY}\n{includes}</busconfig>\n",
                dir.0.join("bus").display()
            ),
        )?;
        let mut cmd = Command::new("dbus-daemon");
        cmd.arg(format!("--config-file={}", config.display()))
            .args(["--nofork", "--nopidfile", "--print-address=1"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        crate::die_with_parent(&mut cmd);
        let mut child = cmd.spawn()?;
        let mut address = String::new();
        if let Some(out) = child.stdout.take() {
            BufReader::new(out).read_line(&mut address)?;
        }
        let address = address.trim().to_owned();
        if address.is_empty() {
            let _ = child.kill();
            let _ = child.wait();
            return Err(std::io::Error::other("dbus-daemon printed no address"));
        }
        Ok(Self {
            child,
            address,
            _dir: dir,
        })
    }
}

impl Drop for DbusDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
