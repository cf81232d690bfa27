//! The SR-IOV commands: describe a source VF, offer a destination PF, check the two, and
//! provision or release a VF for an arriving VM.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use vfmig_host::sriov::{self, Step};
use vfmig_protocol::descriptor::{check, Offer, Policy, Verdict, VfDescriptor, MAX_DOCUMENT};

#[derive(Subcommand)]
pub enum SriovCommand {
    /// Print the descriptor (JSON) of a VF on this host, for a destination to judge.
    Describe {
        /// The PF's interface name.
        #[arg(long)]
        pf: String,
        /// The VF's index on the PF.
        #[arg(long)]
        vf: u32,
    },
    /// Print what a PF on this host offers an arriving VF (JSON): model, free VFs, policy.
    Offer {
        #[arg(long)]
        pf: String,
        #[command(flatten)]
        policy: PolicyArgs,
    },
    /// Can the described VF move to this PF (--pf) or to the PF of an offer (--offer)?
    /// Changes nothing. Exits 0 when compatible, 1 when not (with every reason), 2 on error.
    Check(CheckArgs),
    /// Give a free VF of the PF the descriptor's settings and bind it to vfio-pci; prints its
    /// PCI address. On failure every step taken is undone.
    Provision {
        #[arg(long)]
        pf: String,
        /// The source VF's descriptor (from `describe`), "-" for standard input.
        #[arg(long)]
        descriptor: PathBuf,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
        /// Fail on purpose after this step (tests of the undo).
        #[arg(long, value_enum, hide = true)]
        fail_after: Option<Step>,
    },
    /// Hand a VF back: its host driver again, no MAC, untagged, not trusted.
    Release {
        #[arg(long)]
        pf: String,
        #[arg(long)]
        vf: u32,
    },
}

#[derive(Args)]
pub struct PolicyArgs {
    /// A VLAN VFs may be put in (0: untagged); repeat for more. Default: any.
    #[arg(long = "allow-vlan")]
    vlans: Vec<u16>,
    /// Allow trusted VFs.
    #[arg(long)]
    allow_trust: bool,
    /// Require spoof checking on every VF.
    #[arg(long)]
    require_spoof_check: bool,
}

impl PolicyArgs {
    fn policy(&self) -> Policy {
        Policy {
            vlans: (!self.vlans.is_empty()).then(|| self.vlans.clone()),
            allow_trust: self.allow_trust,
            require_spoof_check: self.require_spoof_check,
        }
    }
}

#[derive(Args)]
pub struct CheckArgs {
    /// The source VF's descriptor (from `describe`), "-" for standard input.
    #[arg(long)]
    descriptor: PathBuf,
    /// The destination's offer (from `offer` there).
    #[arg(long, conflicts_with = "pf", required_unless_present = "pf")]
    offer: Option<PathBuf>,
    /// A PF on this host, as the destination.
    #[arg(long)]
    pf: Option<String>,
    #[command(flatten)]
    policy: PolicyArgs,
    /// Print the verdict as JSON.
    #[arg(long)]
    json: bool,
}

/// Reads at most one byte more than a document may have, so an oversize one is refused by
/// its size without being read whole.
fn read(path: &Path) -> Result<Vec<u8>> {
    use std::io::Read;
    let limit = MAX_DOCUMENT as u64 + 1;
    let mut buf = Vec::new();
    if path.to_str() == Some("-") {
        std::io::stdin()
            .take(limit)
            .read_to_end(&mut buf)
            .context("reading standard input")?;
    } else {
        std::fs::File::open(path)
            .and_then(|f| f.take(limit).read_to_end(&mut buf))
            .with_context(|| format!("reading {}", path.display()))?;
    }
    Ok(buf)
}

pub fn descriptor(path: &Path) -> Result<VfDescriptor> {
    Ok(VfDescriptor::from_json(&read(path)?)?)
}

pub fn offer(path: &Path) -> Result<Offer> {
    Ok(Offer::from_json(&read(path)?)?)
}

fn json(value: &impl serde::Serialize) -> Result<String> {
    Ok(serde_json::to_string_pretty(value)?)
}

/// Prints a verdict and turns it into the exit status.
pub fn verdict(v: &Verdict, as_json: bool) -> Result<ExitCode> {
    if as_json {
        println!("{}", json(v)?);
    } else {
        println!("{v}");
    }
    Ok(if v.compatible {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// What a compatible verdict does not say: the VF can move, but only vfmig moves it safely.
/// QEMU raises no migration blocker for a vfio-pci VF with `failover_pair_id` (vfmig's set-up)
/// and, if nobody unplugs it, completes the migration without its state.
const PLAIN_MIGRATION: &str = "a plain migration (QEMU's migrate, or libvirt's) of a VM whose VF has \
     failover_pair_id set completes without the VF's state, silently: use vfmig-host migrate";

/// `check`'s verdict, with the warning above when compatible: on standard error beside the
/// text, as a field of the JSON.
fn checked(v: &Verdict, as_json: bool) -> Result<ExitCode> {
    if !v.compatible {
        return verdict(v, as_json);
    }
    if as_json {
        let mut value = serde_json::to_value(v)?;
        value["warning"] = PLAIN_MIGRATION.into();
        println!("{}", json(&value)?);
    } else {
        println!("{v}");
        eprintln!("warning: {PLAIN_MIGRATION}");
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn run(command: SriovCommand) -> Result<ExitCode> {
    let handle = sriov::connect()?;
    match command {
        SriovCommand::Describe { pf, vf } => {
            println!("{}", json(&sriov::describe(&handle, &pf, vf).await?)?);
        }
        SriovCommand::Offer { pf, policy } => {
            println!("{}", json(&sriov::offer(&handle, &pf, policy.policy()).await?)?);
        }
        SriovCommand::Check(args) => {
            let source = descriptor(&args.descriptor)?;
            let offer = match (&args.offer, &args.pf) {
                (Some(path), _) => offer(path)?,
                (None, Some(pf)) => sriov::offer(&handle, pf, args.policy.policy()).await?,
                (None, None) => unreachable!("clap requires --offer or --pf"),
            };
            return checked(&check(&source, &offer), args.json);
        }
        SriovCommand::Provision {
            pf,
            descriptor: path,
            json: as_json,
            fail_after,
        } => {
            let source = descriptor(&path)?;
            let vf = sriov::provision(&handle, &pf, &source.vf, fail_after).await?;
            if as_json {
                println!("{}", json(&vf)?);
            } else {
                println!("{} VF {} ({}) bound to vfio-pci", vf.pf, vf.index, vf.address);
            }
        }
        SriovCommand::Release { pf, vf } => {
            sriov::release(&handle, &pf, vf).await?;
            println!("{pf} VF {vf} released");
        }
    }
    Ok(ExitCode::SUCCESS)
}
