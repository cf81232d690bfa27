//! The command line of `migrate` and `plug`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
use serde_json::Value;
use vfmig_host::migration::{Deadlines, Fallback};
use vfmig_protocol::message::{validate_ifname, InterfaceSelector, StandbyRequest};
use vfmig_protocol::MacAddr;

pub const MIGRATE_HELP: &str = "\
Several VFs: give --vf once per VF; the i-th --plug-device is the fresh VF for the i-th --vf, and
each --vf-device is matched to its VF by its \"id\". For example, two e1000e VFs:

  vfmig-host migrate --qmp qmp.sock --agent agent.sock --uri unix:/run/mig.sock \\
    --vf vf --vf vf2 \\
    --vf-device '{\"driver\":\"e1000e\",\"id\":\"vf\",\"netdev\":\"vf0\",\"bus\":\"rp1\",\"mac\":\"52:54:00:10:00:01\",\"failover_pair_id\":\"vfmig\"}' \\
    --vf-device '{\"driver\":\"e1000e\",\"id\":\"vf2\",\"netdev\":\"vf1\",\"bus\":\"rp4\",\"mac\":\"52:54:00:10:00:03\",\"failover_pair_id\":\"vfmig\"}' \\
    --dest-qmp dst-qmp.sock --dest-agent dst-agent.sock \\
    --plug-device '{\"driver\":\"e1000e\",\"id\":\"vf\",\"netdev\":\"vf0\",\"bus\":\"rp1\",\"mac\":\"52:54:00:20:00:02\"}' \\
    --plug-device '{\"driver\":\"e1000e\",\"id\":\"vf2\",\"netdev\":\"vf1\",\"bus\":\"rp4\",\"mac\":\"52:54:00:20:00:04\"}'

How long it takes at most: the agent's hello (--agent-timeout), the hook taking up every VF and the
guest saving every VF (--prepare-timeout each), every unplug (--unplug-timeout), the migration's end
(300 s), the restore on the destination (--restore-timeout); a migration given up adds at most
--giveback-timeout to put everything back.

Exit status: 0 migrated (and, with the destination's sockets, restored); 1 not migrated, the VM as
it was on the source (the message says why); 2 the operator must act: the message says what is
where, and running the same command again takes the migration up from its journal.";

#[derive(Args)]
pub struct MigrateArgs {
    /// The libvirt domain to migrate, by name or UUID: libvirt runs the migration (live,
    /// peer-to-peer, to the libvirt at --uri), the agent is reached through the domain's
    /// channel, and the destination step runs on the destination's libvirt.
    #[arg(long, value_name = "DOMAIN", conflicts_with_all = ["qmp", "agent", "dest_qmp", "dest_agent"])]
    pub libvirt: Option<String>,
    /// The source's libvirt, with --libvirt.
    #[arg(long, default_value = "qemu:///system", requires = "libvirt")]
    pub connect: String,
    /// The source QEMU's QMP socket (bare QEMU).
    #[arg(long, required_unless_present = "libvirt")]
    pub qmp: Option<PathBuf>,
    /// The unix socket behind the source VM's virtserialport org.vfmig.agent.0 (bare QEMU).
    #[arg(long, required_unless_present = "libvirt")]
    pub agent: Option<PathBuf>,
    /// A VF's device id in QEMU; once per VF.
    #[arg(long = "vf", required = true)]
    pub vfs: Vec<String>,
    /// device_add arguments (JSON, with the VF's "id") that recreate a VF, to plug it back if
    /// the migration fails after the unplug; once per VF.
    #[arg(long = "vf-device", value_parser = json_object)]
    pub vf_devices: Vec<Value>,
    /// Where to: QEMU's migration URI (tcp:dest:4444, unix:/path), or, with --libvirt, the
    /// destination's libvirt (qemu+tcp://dest/system).
    #[arg(long)]
    pub uri: String,
    /// What to do when the guest agent does not answer.
    #[arg(long, value_enum, default_value_t = FallbackArg::Refuse)]
    pub fallback: FallbackArg,
    /// The standby path for the VF gap: "auto" (the guest's standby NIC, if it has one that
    /// is up), "off", or the guest interface to use, by name or MAC (then required).
    #[arg(long, default_value = "auto", value_parser = standby)]
    pub standby: StandbyRequest,
    /// Migrate even when the guest's network state holds what restore cannot put back (an
    /// upper device on the VF, a master other than a bond or bridge, a multipath route through
    /// it, …). Without it such a migration is refused before the VF is unplugged, each item
    /// named.
    #[arg(long)]
    pub accept_loss: bool,
    /// Hold pre-copy when this many MiB are left (at most a quarter of RAM is used).
    #[arg(long, default_value_t = 64)]
    pub hold_margin_mib: u64,
    #[command(flatten)]
    pub deadlines: DeadlineArgs,
    /// The destination QEMU's QMP socket (with --dest-agent and --plug-device: do the
    /// destination step too).
    #[arg(long, requires_all = ["dest_agent", "plug_devices"])]
    pub dest_qmp: Option<PathBuf>,
    /// The unix socket behind the destination VM's virtserialport.
    #[arg(long)]
    pub dest_agent: Option<PathBuf>,
    /// device_add arguments (JSON) for a fresh VF on the destination, with its "id" and "mac"
    /// (for vfio-pci, which has none, see --plug-mac); once per --vf, in the same order. With
    /// --libvirt, {"xml": "<interface …>"} or {"xml": "<hostdev …>"}; default: the VF as the
    /// destination defines it (the one its hook provisioned).
    #[arg(long = "plug-device", value_parser = json_object)]
    pub plug_devices: Vec<Value>,
    /// A VF's MAC, for a VF device without a mac property (vfio-pci), as ID=MAC (or MAC
    /// alone with one VF). Default: the descriptor's.
    #[arg(long = "vf-mac", value_parser = id_mac)]
    pub vf_macs: Vec<(Option<String>, MacAddr)>,
    /// A fresh VF's MAC, for a device without a mac property (vfio-pci), as ID=MAC (ID of the
    /// fresh device; or MAC alone with one VF). Default: the descriptor's (`provision` gives
    /// the fresh VF the source VF's MAC).
    #[arg(long = "plug-mac", value_parser = id_mac)]
    pub plug_macs: Vec<(Option<String>, MacAddr)>,
    /// Give the fresh VFs the saved MACs as well.
    #[arg(long)]
    pub restore_mac: bool,
    /// Also write the timeline as JSON to this file ("-" for standard output).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// The source VF's descriptor (from `describe`): with --offer, the destination is checked
    /// first and an incompatible one refused before anything changes.
    #[arg(long, requires = "offer")]
    pub descriptor: Option<PathBuf>,
    /// The destination PF's offer (from `offer` on the destination).
    #[arg(long, requires = "descriptor")]
    pub offer: Option<PathBuf>,
    /// The run's journal. Run `migrate` again with the same journal after vfmig-host was
    /// killed, and it takes the migration up where it stands. Default: beside the QMP socket,
    /// named after it with ".vfmig-journal" appended; with --libvirt,
    /// /run/vfmig-host/DOMAIN.vfmig-journal.
    #[arg(long)]
    pub journal: Option<PathBuf>,
}

#[derive(Args)]
pub struct PlugArgs {
    /// The destination QEMU's QMP socket.
    #[arg(long)]
    pub qmp: PathBuf,
    /// The unix socket behind the VM's virtserialport org.vfmig.agent.0.
    #[arg(long)]
    pub agent: PathBuf,
    /// device_add arguments (JSON) for the fresh VF, with its "id" and "mac" (for vfio-pci,
    /// which has none, see --mac).
    #[arg(long, value_parser = json_object)]
    pub device: Value,
    /// The fresh VF's MAC, for a device without a mac property (vfio-pci).
    #[arg(long)]
    pub mac: Option<MacAddr>,
    /// The interface name the guest saved its state under (printed by `migrate`).
    #[arg(long)]
    pub saved: String,
    /// The saved state's digest (printed by `migrate`): the guest refuses a state with another.
    #[arg(long)]
    pub digest: String,
    /// Give the fresh VF the saved MAC as well.
    #[arg(long)]
    pub restore_mac: bool,
    #[command(flatten)]
    pub deadlines: DeadlineArgs,
    /// Also write the timeline as JSON to this file ("-" for standard output).
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Args)]
pub struct DeadlineArgs {
    /// Seconds to wait for the guest agent's hello.
    #[arg(long, default_value_t = 10)]
    pub agent_timeout: u64,
    /// Seconds for the guest's DMA hook to take up every VF, and again for the guest to save
    /// every VF's state.
    #[arg(long, default_value_t = 10)]
    pub prepare_timeout: u64,
    /// Seconds to wait for DEVICE_DELETED after device_del, for every VF.
    #[arg(long, default_value_t = 10)]
    pub unplug_timeout: u64,
    /// Seconds to wait for the guest to restore onto each fresh VF.
    #[arg(long, default_value_t = 30)]
    pub restore_timeout: u64,
    /// Seconds a migration given up may take to put everything back as it was.
    #[arg(long, default_value_t = 30)]
    pub giveback_timeout: u64,
}

impl DeadlineArgs {
    pub fn deadlines(&self) -> Deadlines {
        Deadlines {
            agent: Duration::from_secs(self.agent_timeout),
            prepare: Duration::from_secs(self.prepare_timeout),
            unplug: Duration::from_secs(self.unplug_timeout),
            restore: Duration::from_secs(self.restore_timeout),
            giveback: Duration::from_secs(self.giveback_timeout),
            ..Deadlines::default()
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
pub enum FallbackArg {
    /// Refuse to migrate; change nothing.
    Refuse,
    /// Unplug the VF before pre-copy and migrate without saving its state.
    UnplugFirst,
}

impl From<FallbackArg> for Fallback {
    fn from(f: FallbackArg) -> Self {
        match f {
            FallbackArg::Refuse => Fallback::Refuse,
            FallbackArg::UnplugFirst => Fallback::UnplugFirst,
        }
    }
}

fn standby(s: &str) -> Result<StandbyRequest, String> {
    Ok(match s {
        "auto" => StandbyRequest::Auto,
        "off" => StandbyRequest::Off,
        _ => StandbyRequest::Use(match s.parse::<MacAddr>() {
            Ok(mac) => InterfaceSelector {
                mac: Some(mac),
                ..Default::default()
            },
            Err(_) => {
                validate_ifname("standby", s)?;
                InterfaceSelector {
                    name: Some(s.into()),
                    ..Default::default()
                }
            }
        }),
    })
}

fn json_object(s: &str) -> Result<Value, String> {
    match serde_json::from_str::<Value>(s) {
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(_) => Err("expected a JSON object of device_add arguments".into()),
        Err(e) => Err(format!("not JSON: {e}")),
    }
}

fn id_mac(s: &str) -> Result<(Option<String>, MacAddr), String> {
    match s.split_once('=') {
        Some((id, mac)) if !id.is_empty() => Ok((Some(id.to_owned()), mac.parse().map_err(|e| format!("{e}"))?)),
        Some(_) => Err("expected ID=MAC or MAC".into()),
        None => Ok((None, s.parse().map_err(|e| format!("{e}"))?)),
    }
}

/// The MAC given for device `id` among `macs` (ID=MAC, or a bare MAC when there is one device).
pub fn mac_for(macs: &[(Option<String>, MacAddr)], id: &str, devices: usize) -> Option<MacAddr> {
    macs.iter()
        .find(|(of, _)| of.as_deref() == Some(id) || (of.is_none() && devices == 1))
        .map(|(_, mac)| *mac)
}
