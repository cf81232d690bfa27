//! `vfmig-guestd`: the guest agent's command line.
//!
//! `capture` and `restore` do by hand what the daemon does when the host asks, so an operator
//! can save and restore an interface without a host, and so the benchmark and the demo drive
//! the same code as production. `status` asks the running daemon, over D-Bus, what it did.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use clap::{CommandFactory, Parser, Subcommand};
use vfmig_guest::agent::Agent;
use vfmig_guest::channel;
use vfmig_guest::dbus::{self, Bus, Serve};
use vfmig_guest::dma_hook::DmaHook;
use vfmig_guest::netstate::standby::StandbyConfig;
use vfmig_guest::netstate::{self, RestoreOptions};
use vfmig_guest::owner::ifupdown::Ifupdown;
use vfmig_guest::owner::networkd::Networkd;
use vfmig_guest::owner::nm::{self, NetworkManager};
use vfmig_guest::owner::{NicOwner, Owners};
use vfmig_guest::{pending, store};
use vfmig_protocol::mac::MacAddr;
use vfmig_protocol::netstate::SavedState;

#[derive(Parser)]
#[command(
    name = "vfmig-guestd",
    version,
    about = "vfmig guest agent: save and restore a VF's network state"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Whether the agent works with a network manager: whenever it runs, or never.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Toggle {
    Auto,
    Off,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the host agent on the virtio-serial port until killed: answer hello and sync,
    /// save the named interface's state on prepare-unplug, restore it on restore — and restore
    /// by itself onto any new link that carries a saved interface's MAC.
    Run {
        /// The port device (default: the virtio port named org.vfmig.agent.0, found in sysfs).
        #[arg(long)]
        port: Option<PathBuf>,
        /// Where saved states live; it must migrate with the VM (tmpfs in RAM).
        #[arg(long, default_value = store::DEFAULT_DIR)]
        store: PathBuf,
        /// The standby NIC that carries the VF's addresses through the VF gap when the host
        /// asks for the automatic choice: "auto" (the one virtio-net link that is up and
        /// enslaved to nothing), "off", or an interface name.
        #[arg(long, default_value = "auto")]
        standby: StandbyConfig,
        /// Show what the agent does as org.vfmig.Guest1 on D-Bus: "auto" (the system bus if
        /// there is one), "off", "system", or a bus address (unix:path=…); with "system" or an
        /// address the daemon fails if it cannot.
        #[arg(long, default_value = "auto")]
        dbus: Serve,
        /// Work with NetworkManager when it manages the VF: record its profile at save, and
        /// after the restore make the fresh VF managed again with that profile active.
        /// "auto" (NetworkManager on the system bus, whenever it runs), "off", or a bus
        /// address.
        #[arg(long, default_value = "auto")]
        network_manager: nm::Use,
        /// Work with systemd-networkd when it manages the VF: keep it off the fresh VF until
        /// the restore is done, then have it take the VF back keeping what was restored.
        #[arg(long, value_enum, default_value = "auto")]
        networkd: Toggle,
        /// Work with ifupdown when it manages the VF: no hotplug ifup on the fresh VF during the
        /// migration, and its record of the interface as before after it.
        #[arg(long, value_enum, default_value = "auto")]
        ifupdown: Toggle,
    },
    /// For udev's VF-arrival rule (IMPORT{program}): if restores are pending, print
    /// NM_UNMANAGED=1, VFMIG_HOLD=1 and the saved name the arriving link is to get; print nothing if none are.
    UdevArrival {
        /// The arriving link's MAC address.
        #[arg(long)]
        mac: MacAddr,
        #[arg(long, default_value = store::DEFAULT_DIR)]
        store: PathBuf,
    },
    /// Ask the running daemon, over D-Bus, its phase, the states it has on record, and what
    /// it last saved and restored. Exits 1 if no daemon serves the bus.
    Status {
        /// "system", or a bus address (unix:path=…).
        #[arg(long, default_value = "system")]
        bus: Bus,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Save an interface's addresses, routes (every table) and neighbours to a sealed document.
    Capture {
        /// The interface to save.
        interface: String,
        /// Where to write it (default: /run/vfmig/INTERFACE.json). Written atomically.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Restore a saved document onto an interface: renames it to the saved name, sets MTU,
    /// brings it up, adds addresses, routes and neighbours, then announces the addresses.
    /// Running it again changes nothing. Exits 1 if any item could not be applied.
    Restore {
        /// The saved document.
        state: PathBuf,
        /// The (fresh) interface to restore onto.
        #[arg(long)]
        onto: String,
        /// Also give the interface the saved MAC address.
        #[arg(long)]
        restore_mac: bool,
        /// Do not send gratuitous ARP / unsolicited neighbour advertisements.
        #[arg(long)]
        no_announce: bool,
    },
    /// Write the man pages, rendered from this command line, into DIR: vfmig-guestd.8 and one
    /// per subcommand. Hidden: scripts/package runs it when it builds the Debian package, so
    /// the pages it installs always describe the daemon beside them.
    #[command(hide = true)]
    ManPages {
        /// Where to write them (created if missing).
        dir: PathBuf,
    },
}

/// The man pages of `vfmig-guestd` and of each of its subcommands (section 8: a daemon in
/// /usr/sbin, which clap_mangen's own `generate_to` cannot choose), as clap_mangen renders them,
/// each footed with vfmig's version; hidden subcommands, and the help subcommand, have none.
fn man_pages(dir: &Path) -> Result<ExitCode> {
    fn write(cmd: clap::Command, dir: &Path) -> std::io::Result<()> {
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            write(sub.clone(), dir)?;
        }
        clap_mangen::Man::new(cmd)
            .section("8")
            .source(concat!("vfmig ", env!("CARGO_PKG_VERSION")))
            .manual("vfmig")
            .generate_to(dir)
            .map(drop)
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    // Built first: a subcommand's page is then titled with its full name (vfmig-guestd-run).
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    write(cmd, dir).with_context(|| format!("writing man pages into {}", dir.display()))?;
    Ok(ExitCode::SUCCESS)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vfmig-guestd: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// The network managers the agent may work with, in the order it asks which one manages a VF.
fn owners(network_manager: nm::Use, networkd: Toggle, ifupdown: Toggle) -> Owners {
    let mut owners: Vec<Box<dyn NicOwner>> = Vec::new();
    if let nm::Use::On(bus) = network_manager {
        owners.push(Box::new(NetworkManager { bus }));
    }
    if networkd == Toggle::Auto {
        owners.push(Box::new(Networkd::new(Bus::System)));
    }
    if ifupdown == Toggle::Auto {
        owners.push(Box::new(Ifupdown::default()));
    }
    Owners::new(owners)
}

fn rtnetlink() -> Result<rtnetlink::Handle> {
    netstate::connect().context("opening rtnetlink")
}

async fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::ManPages { dir } => man_pages(&dir),
        Command::Status { bus, json } => status(&bus, json).await,
        Command::UdevArrival { mac, store } => {
            if let Some(arrival) = pending::arrival(&store, &mac) {
                print!("{}", arrival.udev_properties());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Run {
            port,
            store,
            standby,
            dbus,
            network_manager,
            networkd,
            ifupdown,
        } => {
            let port = match port {
                Some(p) => p,
                None => channel::port::find(channel::port::PORT_NAME).context("finding the host channel")?,
            };
            let mut stream = channel::port::open(&port).with_context(|| format!("opening {}", port.display()))?;
            tracing::info!(port = %port.display(), "serving the host");
            let links = netstate::new_links().await.context("watching for new links")?;
            let mut agent = Agent::new(rtnetlink()?, store.clone(), DmaHook::default(), standby).with_owners(owners(
                network_manager,
                networkd,
                ifupdown,
            ));
            let running = agent.owners_running().await;
            tracing::info!(owners = ?running.iter().map(ToString::to_string).collect::<Vec<_>>(), "network managers found");
            // Kept for as long as the daemon serves: dropping the connection leaves the bus.
            let _bus = publish(dbus, store, agent.events()).await?;
            channel::session::serve(&mut stream, &mut agent, links)
                .await
                .context("host channel failed")?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Capture { interface, out } => {
            let handle = rtnetlink()?;
            let started = Instant::now();
            let captured = netstate::capture(&handle, &interface)
                .await
                .with_context(|| format!("capturing {interface}"))?;
            let captured_unix_ms = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as u64;
            let path = out.unwrap_or_else(|| store::path_for(store::DEFAULT_DIR.as_ref(), &interface));
            // What a restore would refuse is not written in the first place.
            vfmig_protocol::netstate::check(&captured.state)
                .with_context(|| format!("the state of {interface} would not restore"))?;
            let state = SavedState {
                captured_unix_ms,
                interface: captured.state,
            };
            store::save(&path, &state)?;
            let s = &state.interface;
            println!(
                "saved {interface}: {} addresses, {} routes, {} neighbours in {} ms -> {}",
                s.addresses.len(),
                s.routes.len(),
                s.neighbours.len(),
                started.elapsed().as_millis(),
                path.display()
            );
            for item in &captured.unrestorable {
                println!("  restore would not put back: {item}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Restore {
            state,
            onto,
            restore_mac,
            no_announce,
        } => {
            let saved = store::load(&state)?;
            let handle = rtnetlink()?;
            let index = netstate::link_index(&handle, &onto)
                .await
                .with_context(|| format!("restoring onto {onto}"))?;
            let opts = RestoreOptions {
                restore_mac,
                announce: !no_announce,
                ..RestoreOptions::default()
            };
            let report = netstate::restore(&handle, &saved, index, opts).await?;
            println!(
                "restored {} onto {onto}: {} applied, {} unchanged, {} failed, {} announced in {} ms",
                saved.interface.identity.name,
                report.applied.len(),
                report.unchanged.len(),
                report.failed.len(),
                report.announced,
                report.elapsed.as_millis()
            );
            for f in &report.failed {
                println!("  failed: {f}");
            }
            Ok(if report.failed.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}

/// Serves org.vfmig.Guest1 as `serve` says; `None` when it does not.
async fn publish(
    serve: Serve,
    store: PathBuf,
    events: tokio::sync::broadcast::Receiver<vfmig_guest::events::Event>,
) -> Result<Option<zbus::Connection>> {
    match serve {
        Serve::Off => Ok(None),
        Serve::Auto => match dbus::service::serve(&Bus::System, store, events).await {
            Ok(conn) => Ok(Some(conn)),
            Err(e) => {
                tracing::warn!(error = %e, "not on D-Bus (no system bus?); serving the host without it");
                Ok(None)
            }
        },
        Serve::On(bus) => dbus::service::serve(&bus, store, events)
            .await
            .map(Some)
            .with_context(|| format!("serving {} on {bus:?}", dbus::NAME)),
    }
}

async fn status(bus: &Bus, json: bool) -> Result<ExitCode> {
    let text = match dbus::client::status(bus).await {
        Ok(s) if json => format!("{}\n", serde_json::to_string_pretty(&s.to_json())?),
        Ok(s) => s.to_string(),
        Err(e @ dbus::client::StatusError::NotRunning) => {
            eprintln!("vfmig-guestd: {e}");
            return Ok(ExitCode::FAILURE);
        }
        // zbus's errors print their sources already: no chain on top.
        Err(e) => return Err(anyhow::anyhow!("{e}")),
    };
    // `status | head -1` closes the pipe early: not an error, and no panic as println! has.
    match std::io::Write::write_all(&mut std::io::stdout().lock(), text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(ExitCode::SUCCESS),
    }
}
