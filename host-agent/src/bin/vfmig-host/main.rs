//! `vfmig-host`: the host agent's command line, made to be called from a migration hook.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::Value;
use vfmig_host::migration::journal::default_path as default_journal;
use vfmig_host::migration::{
    migrate_source, migration_done, plug_destination, Deadlines, Fallback, MigrateError, Phase, Plan, PlugSpec, Saved,
    Step, Timeline,
};
use vfmig_host::qmp::migration::MigrationInfo;
use vfmig_host::qmp::{Qmp, QmpError};
use vfmig_protocol::descriptor::check;
use vfmig_protocol::message::{validate_ifname, InterfaceSelector, StandbyRequest};
use vfmig_protocol::MacAddr;

mod sriov;

#[derive(Parser)]
#[command(
    name = "vfmig-host",
    version,
    about = "Live-migrate a VM with an SR-IOV VF, keeping the VF active through pre-copy",
    long_about = "Live-migrate a VM with an SR-IOV VF, keeping the VF active through pre-copy.\n\n\
        vfmig-host drives QEMU over QMP and the guest agent (vfmig-guestd) over the VM's \
        virtio-serial port: the guest's DMA hook starts tracking the VF, pre-copy starts with \
        the VF plugged, is held when most of RAM is sent, the guest saves the VF's network \
        state, the VF is unplugged, the migration completes, and on the destination a fresh \
        VF is plugged and the guest restores its addresses, routes and neighbours onto it. \
        A guest without the DMA hook gets the safe path: its state is saved, then the VF is \
        unplugged before pre-copy. Prints the per-phase timeline."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Migrate: the source side, and the destination's plug-and-restore when its sockets are
    /// given. Exits 0 when the VM runs on the destination with its state restored, 1 when the
    /// migration ended in a defined fallback or rollback (the message says which), 2 on error.
    Migrate(Box<MigrateArgs>),
    /// The destination step on its own: plug a fresh VF into the migrated VM and have the
    /// guest restore the saved state onto it (after `migrate` without --dest-*, or to finish
    /// by hand after a failed plug).
    Plug(PlugArgs),
    #[command(flatten)]
    Sriov(sriov::SriovCommand),
}

#[derive(Args)]
struct MigrateArgs {
    /// The source QEMU's QMP socket.
    #[arg(long)]
    qmp: PathBuf,
    /// The unix socket behind the source VM's virtserialport org.vfmig.agent.0.
    #[arg(long)]
    agent: PathBuf,
    /// The VF's device id in QEMU.
    #[arg(long)]
    vf: String,
    /// device_add arguments (JSON) that recreate the VF, to plug it back if the migration
    /// fails after the unplug.
    #[arg(long, value_parser = json_object)]
    vf_device: Option<Value>,
    /// Migration URI, e.g. tcp:dest:4444 or unix:/path.
    #[arg(long)]
    uri: String,
    /// What to do when the guest agent does not answer.
    #[arg(long, value_enum, default_value_t = FallbackArg::Refuse)]
    fallback: FallbackArg,
    /// The standby path for the VF gap: "auto" (the guest's standby NIC, if it has one that
    /// is up), "off", or the guest interface to use, by name or MAC (then required).
    #[arg(long, default_value = "auto", value_parser = standby)]
    standby: StandbyRequest,
    /// Hold pre-copy when this many MiB are left (at most a quarter of RAM is used).
    #[arg(long, default_value_t = 64)]
    hold_margin_mib: u64,
    #[command(flatten)]
    deadlines: DeadlineArgs,
    /// The destination QEMU's QMP socket (with --dest-agent and --plug-device: do the
    /// destination step too).
    #[arg(long, requires_all = ["dest_agent", "plug_device"])]
    dest_qmp: Option<PathBuf>,
    /// The unix socket behind the destination VM's virtserialport.
    #[arg(long)]
    dest_agent: Option<PathBuf>,
    /// device_add arguments (JSON) for the fresh VF on the destination, with its "mac" (for
    /// vfio-pci, which has none, see --plug-mac).
    #[arg(long, value_parser = json_object)]
    plug_device: Option<Value>,
    /// The VF's MAC, for a VF device without a mac property (vfio-pci). Default: the
    /// descriptor's.
    #[arg(long)]
    vf_mac: Option<MacAddr>,
    /// The fresh VF's MAC, for a device without a mac property (vfio-pci). Default: the
    /// descriptor's (`provision` gives the fresh VF the source VF's MAC).
    #[arg(long)]
    plug_mac: Option<MacAddr>,
    /// Give the fresh VF the saved MAC as well.
    #[arg(long)]
    restore_mac: bool,
    /// Also write the timeline as JSON to this file ("-" for standard output).
    #[arg(long)]
    json: Option<PathBuf>,
    /// The source VF's descriptor (from `describe`): with --offer, the destination is checked
    /// first and an incompatible one refused before anything changes.
    #[arg(long, requires = "offer")]
    descriptor: Option<PathBuf>,
    /// The destination PF's offer (from `offer` on the destination).
    #[arg(long, requires = "descriptor")]
    offer: Option<PathBuf>,
    /// The run's journal. Run `migrate` again with the same journal after vfmig-host was
    /// killed, and it takes the migration up where it stands. Default: beside the QMP socket,
    /// named after it with ".vfmig-journal" appended.
    #[arg(long)]
    journal: Option<PathBuf>,
}

#[derive(Args)]
struct PlugArgs {
    /// The destination QEMU's QMP socket.
    #[arg(long)]
    qmp: PathBuf,
    /// The unix socket behind the VM's virtserialport org.vfmig.agent.0.
    #[arg(long)]
    agent: PathBuf,
    /// device_add arguments (JSON) for the fresh VF, with its "mac" (for vfio-pci, which has
    /// none, see --mac).
    #[arg(long, value_parser = json_object)]
    device: Value,
    /// The fresh VF's MAC, for a device without a mac property (vfio-pci).
    #[arg(long)]
    mac: Option<MacAddr>,
    /// The interface name the guest saved its state under (printed by `migrate`).
    #[arg(long)]
    saved: String,
    /// Give the fresh VF the saved MAC as well.
    #[arg(long)]
    restore_mac: bool,
    #[command(flatten)]
    deadlines: DeadlineArgs,
    /// Also write the timeline as JSON to this file ("-" for standard output).
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Args)]
struct DeadlineArgs {
    /// Seconds to wait for the guest agent's hello.
    #[arg(long, default_value_t = 10)]
    agent_timeout: u64,
    /// Seconds to wait for DEVICE_DELETED after device_del.
    #[arg(long, default_value_t = 10)]
    unplug_timeout: u64,
    /// Seconds to wait for the guest to restore onto the fresh VF.
    #[arg(long, default_value_t = 30)]
    restore_timeout: u64,
}

impl DeadlineArgs {
    fn deadlines(&self) -> Deadlines {
        Deadlines {
            agent: Duration::from_secs(self.agent_timeout),
            unplug: Duration::from_secs(self.unplug_timeout),
            restore: Duration::from_secs(self.restore_timeout),
            ..Deadlines::default()
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum FallbackArg {
    /// Refuse to migrate; change nothing.
    Refuse,
    /// Unplug the VF before pre-copy and migrate without saving its state.
    UnplugFirst,
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

/// Prints each phase as it is reached, and pre-copy progress on a terminal.
fn observer() -> impl FnMut(&Step, Option<&MigrationInfo>) {
    let tty = std::io::stderr().is_terminal();
    move |step, info| {
        let progress = info.and_then(|i| i.ram.as_ref()).map_or(String::new(), |r| {
            let done = r.total.saturating_sub(r.remaining) as f64 / r.total.max(1) as f64;
            format!(" (pre-copy {:.0}%)", done * 100.0)
        });
        if tty {
            eprint!("\r\x1b[K{:>6} ms  {:?}{progress}", step.at_ms, step.phase);
        } else {
            eprintln!("{:>6} ms  {:?}{progress}: {}", step.at_ms, step.phase, step.detail);
        }
    }
}

fn report(timeline: &Timeline, json: Option<&PathBuf>) -> Result<()> {
    if std::io::stderr().is_terminal() {
        eprintln!();
    }
    print!("{}", timeline.table());
    match json {
        Some(path) if path.to_str() == Some("-") => println!("{}", timeline.to_json()),
        Some(path) => {
            std::fs::write(path, timeline.to_json()).with_context(|| format!("writing {}", path.display()))?;
        }
        None => {}
    }
    Ok(())
}

/// Exit status for an outcome vfmig defined (refused, fell back, rolled back) versus an error.
fn outcome(e: &MigrateError) -> ExitCode {
    match e {
        MigrateError::GuestUnavailable(_)
        | MigrateError::NoSuchVf { .. }
        | MigrateError::NoVfMac { .. }
        | MigrateError::PrepareFailed(_)
        | MigrateError::HoldLeaked { .. }
        | MigrateError::UnplugTimeout { .. }
        | MigrateError::RolledBack { .. }
        | MigrateError::HookLost(_) => ExitCode::from(1),
        _ => ExitCode::from(2),
    }
}

/// How many times a lost QMP connection is re-established before giving up; each attempt
/// takes the migration up from the journal.
const QMP_RECONNECTS: u32 = 3;

/// The source side; a QMP connection lost half-way (QEMU's monitor closed on us) is opened
/// again and the migration taken up from the journal where it stands.
async fn source(
    args: &MigrateArgs,
    plan: &Plan,
    timeline: &mut Timeline,
    observe: &mut dyn FnMut(&Step, Option<&MigrationInfo>),
) -> Result<Result<Option<Saved>, MigrateError>> {
    let mut attempt = 0;
    loop {
        let src = Qmp::connect(&args.qmp)
            .await
            .with_context(|| format!("source QMP {}", args.qmp.display()))?;
        match migrate_source(&src, &args.agent, plan, timeline, observe).await {
            Err(MigrateError::Qmp(e @ (QmpError::Closed | QmpError::Io(_)))) if attempt < QMP_RECONNECTS => {
                attempt += 1;
                eprintln!("vfmig-host: {e}; connecting again and taking up the migration from the journal");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            outcome => return Ok(outcome),
        }
    }
}

async fn migrate(args: MigrateArgs) -> Result<ExitCode> {
    let descriptor = args.descriptor.as_deref().map(sriov::descriptor).transpose()?;
    if let (Some(d), Some(o)) = (&descriptor, &args.offer) {
        let verdict = check(d, &sriov::offer(o)?);
        if !verdict.compatible {
            eprintln!("vfmig-host: the destination cannot take this VF; nothing was changed");
            return sriov::verdict(&verdict, false);
        }
    }
    let described_mac = descriptor.as_ref().map(|d| d.vf.mac);
    let plan = Plan {
        vf_id: args.vf.clone(),
        vf_device: args.vf_device.clone(),
        uri: args.uri.clone(),
        fallback: match args.fallback {
            FallbackArg::Refuse => Fallback::Refuse,
            FallbackArg::UnplugFirst => Fallback::UnplugFirst,
        },
        deadlines: args.deadlines.deadlines(),
        hold_margin: args.hold_margin_mib << 20,
        journal: Some(args.journal.clone().unwrap_or_else(|| default_journal(&args.qmp))),
        standby: args.standby.clone(),
        vf_mac: args.vf_mac.or(described_mac),
    };
    let mut timeline = Timeline::new();
    let mut observe = observer();
    let saved = match source(&args, &plan, &mut timeline, &mut observe).await? {
        Ok(saved) => saved,
        Err(e) => {
            report(&timeline, args.json.as_ref())?;
            eprintln!("vfmig-host: {e}");
            return Ok(outcome(&e));
        }
    };
    let (Some(dest_qmp), Some(dest_agent), Some(device)) = (&args.dest_qmp, &args.dest_agent, &args.plug_device) else {
        report(&timeline, args.json.as_ref())?;
        if let Some(s) = saved {
            println!(
                "saved state: {} ({}); finish on the destination with `vfmig-host plug --saved {}`",
                s.interface, s.digest, s.interface
            );
        }
        migration_done(&plan)?;
        return Ok(ExitCode::SUCCESS);
    };
    let Some(saved) = saved else {
        report(&timeline, args.json.as_ref())?;
        migration_done(&plan)?;
        if timeline.step(Phase::QemuFailover).is_some() {
            println!("QEMU's failover re-plugs the VF on the destination; nothing for vfmig to restore");
            return Ok(ExitCode::SUCCESS);
        }
        eprintln!("vfmig-host: migrated without the guest agent; no state to restore on the destination");
        return Ok(ExitCode::from(1));
    };
    let dst = Qmp::connect(dest_qmp)
        .await
        .with_context(|| format!("destination QMP {}", dest_qmp.display()))?;
    let spec = PlugSpec {
        device: device.clone(),
        mac: args.plug_mac.or(described_mac),
        saved: saved.interface,
        restore_mac: args.restore_mac,
        attempts: 3,
        deadlines: args.deadlines.deadlines(),
    };
    let result = plug_destination(&dst, dest_agent, &spec, &mut timeline, &mut observe).await;
    report(&timeline, args.json.as_ref())?;
    // A destination step that failed keeps the journal: running `migrate` again retries it.
    if result.is_ok() {
        migration_done(&plan)?;
    }
    finish(result)
}

fn finish(result: Result<vfmig_protocol::message::Restored, MigrateError>) -> Result<ExitCode> {
    match result {
        Ok(r) if r.failed.is_empty() && r.mismatches.is_empty() => Ok(ExitCode::SUCCESS),
        Ok(r) => {
            for line in r.failed.iter().chain(&r.mismatches) {
                eprintln!("vfmig-host: guest: {line}");
            }
            Ok(ExitCode::from(1))
        }
        Err(e) => {
            eprintln!("vfmig-host: {e}");
            Ok(outcome(&e))
        }
    }
}

async fn plug(args: PlugArgs) -> Result<ExitCode> {
    let dst = Qmp::connect(&args.qmp)
        .await
        .with_context(|| format!("QMP {}", args.qmp.display()))?;
    let spec = PlugSpec {
        device: args.device,
        mac: args.mac,
        saved: args.saved,
        restore_mac: args.restore_mac,
        attempts: 3,
        deadlines: args.deadlines.deadlines(),
    };
    let mut timeline = Timeline::new();
    let result = plug_destination(&dst, &args.agent, &spec, &mut timeline, &mut observer()).await;
    report(&timeline, args.json.as_ref())?;
    finish(result)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let result = match Cli::parse().command {
        Command::Migrate(args) => migrate(*args).await,
        Command::Plug(args) => plug(args).await,
        Command::Sriov(command) => sriov::run(command).await,
    };
    result.unwrap_or_else(|e| {
        eprintln!("vfmig-host: {e:#}");
        ExitCode::from(2)
    })
}
