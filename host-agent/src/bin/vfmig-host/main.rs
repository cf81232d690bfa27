//! `vfmig-host`: the host agent's command line, made to be called from a migration hook.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{CommandFactory, Parser, Subcommand};
use tokio::signal::unix::{signal, SignalKind};
use vfmig_host::migration::journal;
use vfmig_host::migration::{
    run_destination, run_source, Cancel, FreshVf, Journal, MigrateError, Phase, Plan, PlugSpec, Saved, Step, Timeline,
    VfPlan,
};
use vfmig_protocol::descriptor::check;
use vfmig_protocol::message::Restored;

mod args;
mod backend;
mod hook;
mod sriov;

use args::{mac_for, MigrateArgs, PlugArgs, MIGRATE_HELP};
use backend::Backend;

#[derive(Parser)]
#[command(
    name = "vfmig-host",
    version,
    about = "Live-migrate a VM with SR-IOV VFs, keeping the VFs active through pre-copy",
    long_about = "Live-migrate a VM with SR-IOV VFs, keeping the VFs active through pre-copy.\n\n\
        vfmig-host drives QEMU over QMP and the guest agent (vfmig-guestd) over the VM's \
        virtio-serial port: the guest's DMA hook starts tracking the VFs, pre-copy starts with \
        the VFs plugged, is held when most of RAM is sent, the guest saves each VF's network \
        state, the VFs are unplugged, the migration completes, and on the destination a fresh \
        VF is plugged for each and the guest restores its addresses, routes and neighbours onto \
        it. A guest without the DMA hook gets the safe path: its state is saved, then the VFs \
        are unplugged before pre-copy. Prints the per-phase timeline."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Migrate: the source side, and the destination's plug-and-restore when its sockets are
    /// given. Exits 0 when the VM runs on the destination with its state restored, 1 when it
    /// runs on the source as before (the message says why), 2 when the operator must act.
    #[command(after_help = MIGRATE_HELP)]
    Migrate(Box<MigrateArgs>),
    /// The destination step on its own: plug a fresh VF into the migrated VM and have the
    /// guest restore the saved state onto it (after `migrate` without --dest-*, or to finish
    /// by hand after a failed plug).
    Plug(PlugArgs),
    /// What /etc/libvirt/hooks/qemu.d/vfmig runs, with libvirt's arguments and the domain XML
    /// on standard input: refuses a migration of a domain with VFs for vfmig that vfmig-host
    /// did not start, provisions the VFs of an incoming one, releases them when it leaves.
    LibvirtHook(hook::HookArgs),
    #[command(flatten)]
    Sriov(sriov::SriovCommand),
    /// Write the man pages, rendered from this command line, into DIR: vfmig-host.1 and one
    /// per subcommand. Hidden: scripts/package runs it when it builds the Debian package, so
    /// the pages it installs always describe the binary beside them.
    #[command(hide = true)]
    ManPages {
        /// Where to write them (created if missing).
        dir: PathBuf,
    },
}

/// The man pages of `vfmig-host` and of each of its subcommands (section 1, as the binary is
/// in /usr/bin), as clap_mangen renders them, each footed with vfmig's version (clap_mangen's
/// own `generate_to` leaves a subcommand's footer without one); hidden subcommands, and the
/// help subcommand, have none.
fn man_pages(dir: &Path) -> Result<ExitCode> {
    fn write(cmd: clap::Command, dir: &Path) -> std::io::Result<()> {
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            write(sub.clone(), dir)?;
        }
        clap_mangen::Man::new(cmd)
            .section("1")
            .source(concat!("vfmig ", env!("CARGO_PKG_VERSION")))
            .manual("vfmig")
            .generate_to(dir)
            .map(drop)
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    // Built first: a subcommand's page is then titled with its full name (vfmig-host-migrate).
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    write(cmd, dir).with_context(|| format!("writing man pages into {}", dir.display()))?;
    Ok(ExitCode::SUCCESS)
}

/// Prints each phase as it is reached, and pre-copy progress on a terminal.
fn observer() -> impl FnMut(&Step) {
    let tty = std::io::stderr().is_terminal();
    move |step| {
        let progress = match (step.ram_total, step.ram_remaining) {
            (Some(total), Some(remaining)) => {
                let done = total.saturating_sub(remaining) as f64 / total.max(1) as f64;
                let left = remaining as f64 / 1048576.0;
                format!(" (pre-copy {:.0}%, {left:.1} MiB left)", done * 100.0)
            }
            _ => String::new(),
        };
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

/// The error, once, and the exit status the contract gives it.
fn failed(e: &MigrateError) -> ExitCode {
    eprintln!("vfmig-host: {e}");
    ExitCode::from(e.exit_code())
}

/// The operator's SIGINT or SIGTERM cancels the migration (the give-back still runs).
fn cancel_on_signals() -> Result<Cancel> {
    let (tx, cancel) = Cancel::new();
    let mut interrupt = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let mut terminate = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    tokio::spawn(async move {
        let by = tokio::select! {
            _ = interrupt.recv() => "the operator (SIGINT)",
            _ = terminate.recv() => "the operator (SIGTERM)",
        };
        eprintln!("vfmig-host: {by}: giving the migration up");
        let _ = tx.send(Some(by.into()));
    });
    Ok(cancel)
}

/// Where the VM is, as the command line says.
fn source_backend(args: &MigrateArgs) -> Result<Backend> {
    Ok(match (&args.libvirt, &args.qmp, &args.agent) {
        (Some(domain), _, _) => Backend::Libvirt {
            uri: args.connect.clone(),
            domain: domain.clone(),
        },
        (None, Some(qmp), Some(agent)) => Backend::Qemu {
            qmp: qmp.clone(),
            agent: agent.clone(),
        },
        _ => bail!("give --libvirt DOMAIN, or --qmp and --agent"),
    })
}

/// The journal's default place: beside the QMP socket; for a libvirt domain, under
/// /run/vfmig-host.
fn default_journal(args: &MigrateArgs) -> PathBuf {
    match (&args.libvirt, &args.qmp) {
        (Some(domain), _) => PathBuf::from(format!("/run/vfmig-host/{domain}.vfmig-journal")),
        (None, Some(qmp)) => journal::default_path(qmp),
        (None, None) => PathBuf::from("vfmig.vfmig-journal"),
    }
}

async fn plan(args: &MigrateArgs, backend: &Backend, described: Option<vfmig_protocol::MacAddr>) -> Result<Plan> {
    let n = args.vfs.len();
    for device in &args.vf_devices {
        match device.get("id").and_then(|i| i.as_str()) {
            Some(id) if args.vfs.iter().any(|v| v == id) => {}
            other => bail!("--vf-device {device} names {other:?}, which is no --vf"),
        }
    }
    let mut vfs = Vec::new();
    for id in &args.vfs {
        let given = args.vf_devices.iter().find(|d| d["id"] == id.as_str()).cloned();
        let device = match given {
            Some(device) => Some(device),
            None => backend.device_spec(id).await?,
        };
        vfs.push(VfPlan {
            id: id.clone(),
            device,
            mac: mac_for(&args.vf_macs, id, n).or(described.filter(|_| n == 1)),
        });
    }
    Ok(Plan {
        vfs,
        uri: args.uri.clone(),
        fallback: args.fallback.into(),
        deadlines: args.deadlines.deadlines(),
        hold_margin: args.hold_margin_mib << 20,
        journal: Some(args.journal.clone().unwrap_or_else(|| default_journal(args))),
        standby: args.standby.clone(),
        accept_loss: args.accept_loss,
    })
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
    let destination = match (&args.libvirt, &args.dest_qmp, &args.dest_agent) {
        (Some(domain), _, _) => Some(Backend::Libvirt {
            uri: args.uri.clone(),
            domain: domain.clone(),
        }),
        (None, Some(qmp), Some(agent)) => Some(Backend::Qemu {
            qmp: qmp.clone(),
            agent: agent.clone(),
        }),
        _ => None,
    };
    if destination.is_some() && !args.plug_devices.is_empty() && args.plug_devices.len() != args.vfs.len() {
        bail!(
            "{} --vf but {} --plug-device: give one fresh VF per VF",
            args.vfs.len(),
            args.plug_devices.len()
        );
    }
    let described = descriptor.as_ref().map(|d| d.vf.mac);
    let backend = source_backend(&args)?;
    let plan = plan(&args, &backend, described).await?;
    let journal = plan.journal.clone().unwrap_or_default();
    let ids = args.vfs.clone();
    let cancel = cancel_on_signals()?;
    let mut timeline = Timeline::new();
    let mut observe = observer();
    let source = backend
        .with_vm("source", async |vm, mut guest| {
            run_source(vm, &mut guest, &plan, &mut timeline, &mut observe, cancel.clone()).await
        })
        .await?;
    let saved = match source {
        Ok(saved) => saved,
        Err(e) => {
            report(&timeline, args.json.as_ref())?;
            return Ok(failed(&e));
        }
    };
    let Some(destination) = destination else {
        report(&timeline, args.json.as_ref())?;
        for s in saved.iter().flatten() {
            println!(
                "saved state: {}; finish on the destination with `vfmig-host plug --saved {} --digest {}`",
                s.describe(),
                s.interface,
                s.digest
            );
        }
        Journal::remove(&journal)?;
        return Ok(ExitCode::SUCCESS);
    };
    let Some(saved) = saved else {
        report(&timeline, args.json.as_ref())?;
        Journal::remove(&journal)?;
        if timeline.step(Phase::QemuFailover).is_some() {
            println!("QEMU's failover re-plugs the VF on the destination; nothing for vfmig to restore");
            return Ok(ExitCode::SUCCESS);
        }
        eprintln!(
            "vfmig-host: migrated without the guest agent (fallback unplug-first): the VFs' network state was not saved and no fresh VF was plugged; plug them and configure the guest's network"
        );
        return Ok(ExitCode::from(2));
    };
    let plug_devices = match args.plug_devices.is_empty() {
        false => args.plug_devices.clone(),
        true => defined_there(&destination, &args.vfs).await?,
    };
    let spec = PlugSpec {
        vfs: plug_devices
            .iter()
            .zip(&args.vfs)
            .zip(saved)
            .map(|((device, replaces), saved)| {
                fresh(device, replaces, saved, &args.plug_macs, described, args.vfs.len())
            })
            .collect(),
        restore_mac: args.restore_mac,
        attempts: 3,
        deadlines: args.deadlines.deadlines(),
    };
    let restored = destination
        .with_vm("destination", async |vm, mut guest| {
            let journal = Some((journal.as_path(), ids.as_slice()));
            run_destination(vm, &mut guest, &spec, journal, &mut timeline, &mut observe).await
        })
        .await?;
    if let Err(e) = destination.unmark().await {
        eprintln!("vfmig-host: {e:#}");
    }
    report(&timeline, args.json.as_ref())?;
    finish(restored)
}

/// The fresh VFs as the destination defines them, for a libvirt migration given no
/// --plug-device: the VFs the hook provisioned there, under the source's aliases.
async fn defined_there(destination: &Backend, vfs: &[String]) -> Result<Vec<serde_json::Value>> {
    let mut specs = Vec::new();
    for id in vfs {
        match destination.device_spec(id).await? {
            Some(spec) => specs.push(spec),
            None => bail!(
                "the destination defines no {id} to plug: give --plug-device, or list it in the domain's vfmig metadata with its network"
            ),
        }
    }
    Ok(specs)
}

/// The fresh VF that replaces VF `replaces`: its id is the spec's (QMP) or the one it
/// replaces (libvirt, whose spec names it by alias); its MAC the one given, the spec's, or the
/// descriptor's.
fn fresh(
    device: &serde_json::Value,
    replaces: &str,
    saved: Saved,
    macs: &[(Option<String>, vfmig_protocol::MacAddr)],
    described: Option<vfmig_protocol::MacAddr>,
    n: usize,
) -> FreshVf {
    let id = device.get("id").and_then(|i| i.as_str()).unwrap_or(replaces).to_owned();
    let mac = mac_for(macs, &id, n)
        .or_else(|| spec_mac(device))
        .or(described.filter(|_| n == 1));
    FreshVf {
        id,
        device: device.clone(),
        mac,
        saved,
    }
}

/// The MAC a device spec gives, as QMP arguments or libvirt XML.
fn spec_mac(device: &serde_json::Value) -> Option<vfmig_protocol::MacAddr> {
    if let Some(mac) = device.get("mac").and_then(|m| m.as_str()) {
        return mac.parse().ok();
    }
    if let Some(xml) = device.get("xml").and_then(|x| x.as_str()) {
        let identity = vfmig_host::domain_xml::spec_identity(xml).ok()?;
        return identity.mac?.parse().ok();
    }
    None
}

/// Exit 0 only when every restore is whole; what the guest could not restore is printed.
fn finish(result: Result<Vec<Restored>, MigrateError>) -> Result<ExitCode> {
    match result {
        Ok(reports) => {
            let lines: Vec<&String> = reports
                .iter()
                .flat_map(|r| r.failed.iter().chain(&r.mismatches))
                .collect();
            for line in &lines {
                eprintln!("vfmig-host: guest: {line}");
            }
            Ok(if lines.is_empty() {
                ExitCode::SUCCESS
            } else {
                eprintln!("vfmig-host: the VM runs on the destination, but its network is not as it was: see above");
                ExitCode::from(2)
            })
        }
        Err(e) => Ok(failed(&e)),
    }
}

async fn plug(args: PlugArgs) -> Result<ExitCode> {
    let id = args
        .device
        .get("id")
        .and_then(|i| i.as_str())
        .unwrap_or_default()
        .to_owned();
    let spec = PlugSpec {
        vfs: vec![FreshVf {
            id,
            device: args.device,
            mac: args.mac,
            saved: Saved {
                interface: args.saved,
                digest: args.digest,
                location: None,
            },
        }],
        restore_mac: args.restore_mac,
        attempts: 3,
        deadlines: args.deadlines.deadlines(),
    };
    let mut timeline = Timeline::new();
    let mut observe = observer();
    let backend = Backend::Qemu {
        qmp: args.qmp,
        agent: args.agent,
    };
    let restored = backend
        .with_vm("destination", async |vm, mut guest| {
            run_destination(vm, &mut guest, &spec, None, &mut timeline, &mut observe).await
        })
        .await?;
    report(&timeline, args.json.as_ref())?;
    finish(restored)
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
        Command::LibvirtHook(args) => Ok(hook::run(args).await),
        Command::Sriov(command) => sriov::run(command).await,
        Command::ManPages { dir } => man_pages(&dir),
    };
    result.unwrap_or_else(|e| {
        eprintln!("vfmig-host: {e:#}");
        ExitCode::from(2)
    })
}
