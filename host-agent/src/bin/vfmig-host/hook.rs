//! `vfmig-host libvirt-hook`: what /etc/libvirt/hooks/qemu.d/vfmig runs, as libvirt calls it
//! (`DOMAIN OPERATION SUB-OPERATION EXTRA`, the domain XML on standard input).
//!
//! Standard output carries a definition or nothing: libvirt starts the domain from what a
//! `migrate` hook prints. Refusals go to standard error, which libvirt hands to whoever asked
//! for the migration.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;
use vfmig_host::domain_xml::metadata;
use vfmig_host::hook::config::{HostConfig, DEFAULT_PATH};
use vfmig_host::hook::record::{self, ProvisionedVf};
use vfmig_host::hook::{judge, Incoming, IncomingVf};
use vfmig_host::sriov;
use vfmig_protocol::descriptor::check;

/// A domain's XML is tens of kilobytes; far more is not one.
const MAX_XML: u64 = 16 << 20;

#[derive(Args)]
pub struct HookArgs {
    /// The host's configuration: networks and their PFs, the hook's log.
    #[arg(long, default_value = DEFAULT_PATH)]
    config: PathBuf,
    /// The domain's name.
    domain: String,
    /// libvirt's operation (prepare, start, started, stopped, release, migrate, restore,
    /// reconnect, attach): vfmig acts on `migrate begin` and `release end`.
    operation: String,
    sub_operation: String,
    #[arg(default_value = "-")]
    extra: String,
}

pub async fn run(args: HookArgs) -> ExitCode {
    // libvirt writes the XML to every hook; reading it whole keeps its write from failing.
    let mut xml = String::new();
    let read = std::io::stdin().take(MAX_XML + 1).read_to_string(&mut xml);
    match (args.operation.as_str(), args.sub_operation.as_str()) {
        ("migrate", "begin") => match read {
            Ok(_) if xml.len() as u64 <= MAX_XML => migrate(&args, &xml).await,
            Ok(_) => pass(&args, "the domain XML is larger than 16 MiB: not judged"),
            Err(e) => pass(&args, &format!("the domain XML could not be read ({e}): not judged")),
        },
        ("release", "end") => release(&args).await,
        _ => ExitCode::SUCCESS,
    }
}

/// Lets the operation go on (a domain that is not vfmig's, or one it cannot tell).
fn pass(args: &HookArgs, why: &str) -> ExitCode {
    log(&args.config_or_default(), &args.domain, why);
    ExitCode::SUCCESS
}

/// Refuses the migration: libvirt shows the message and starts nothing.
fn refuse(config: &HostConfig, domain: &str, why: &str) -> ExitCode {
    log(config, domain, &format!("refused: {why}"));
    eprintln!("{why}");
    ExitCode::from(1)
}

impl HookArgs {
    fn config_or_default(&self) -> HostConfig {
        HostConfig::load(&self.config).unwrap_or_default()
    }
}

async fn migrate(args: &HookArgs, xml: &str) -> ExitCode {
    let domain = &args.domain;
    match metadata::managed_vfs(xml) {
        Ok(vfs) if vfs.is_empty() => return ExitCode::SUCCESS,
        Ok(_) => {}
        Err(e) => return pass(args, &format!("migrate begin: {e}: not judged")),
    }
    let config = match HostConfig::load(&args.config) {
        Ok(config) => config,
        Err(e) => return refuse(&HostConfig::default(), domain, &format!("vfmig: {e}")),
    };
    let vfs = match judge(domain, xml, &config, unix_now()) {
        Ok(Incoming::NotManaged) => return ExitCode::SUCCESS,
        Ok(Incoming::Refused(why)) => return refuse(&config, domain, &why.to_string()),
        Err(e) => return refuse(&config, domain, &format!("vfmig: {e}")),
        Ok(Incoming::Vfmig { age_s, vfs }) => {
            let names: Vec<&str> = vfs.iter().map(IncomingVf::alias).collect();
            log(
                &config,
                domain,
                &format!(
                    "migrate begin: vfmig's migration (marked {age_s} s ago), VF {}",
                    names.join(", ")
                ),
            );
            vfs
        }
    };
    // The domain cannot run here while it migrates here: a record is left from an incoming
    // migration libvirt refused after this hook ran (another hook refused), for which it
    // calls no release.
    if let Ok(left) = record::read(&config.hook.state_dir, domain) {
        if !left.is_empty() {
            log(
                &config,
                domain,
                "a record left by a migration that never started: releasing its VFs",
            );
            let kept = release_all(&config, domain, &left).await;
            if !kept.is_empty() {
                return refuse(
                    &config,
                    domain,
                    &format!(
                        "vfmig: {} VF left from an earlier migration could not be released: see {}",
                        kept.len(),
                        config.hook.log.display()
                    ),
                );
            }
        }
    }
    let mut provisioned = Vec::new();
    let mut definition = xml.to_owned();
    for vf in vfs {
        let IncomingVf::Provision {
            alias,
            network,
            pf,
            policy,
            descriptor,
        } = vf
        else {
            continue;
        };
        let step = provision_one(&config, domain, &alias, &network, &pf, policy, &descriptor).await;
        let given = step.and_then(|vf| {
            let moved =
                metadata::with_host_address(&definition, &alias, &vf.address).map_err(|e| format!("vfmig: {e}"));
            provisioned.push(vf);
            definition = moved?;
            Ok(())
        });
        let recorded = given.and_then(|()| {
            record::write(&config.hook.state_dir, domain, &provisioned).map_err(|e| format!("vfmig: {e}"))
        });
        if let Err(why) = recorded {
            release_all(&config, domain, &provisioned).await;
            return refuse(&config, domain, &why);
        }
    }
    if !provisioned.is_empty() {
        // The destination starts the domain on the VFs provisioned here, not the source's.
        let mut out = std::io::stdout().lock();
        if let Err(e) = out.write_all(definition.as_bytes()).and_then(|()| out.flush()) {
            release_all(&config, domain, &provisioned).await;
            return refuse(
                &config,
                domain,
                &format!("vfmig: writing the definition for libvirt: {e}"),
            );
        }
    }
    ExitCode::SUCCESS
}

/// Checks the source's VF against `pf`'s offer and provisions one like it.
async fn provision_one(
    config: &HostConfig,
    domain: &str,
    alias: &str,
    network: &str,
    pf: &str,
    policy: vfmig_protocol::descriptor::Policy,
    descriptor: &vfmig_protocol::descriptor::VfDescriptor,
) -> Result<ProvisionedVf, String> {
    let on = format!("vfmig: {alias} on network {network} ({pf})");
    let handle = sriov::connect().map_err(|e| format!("{on}: {e}"))?;
    let offer = sriov::offer(&handle, pf, policy)
        .await
        .map_err(|e| format!("{on}: {e}"))?;
    let verdict = check(descriptor, &offer);
    if !verdict.compatible {
        return Err(format!("{on}: {verdict}"));
    }
    let vf = sriov::provision(&handle, pf, &descriptor.vf, None)
        .await
        .map_err(|e| format!("{on}: {e}"))?;
    log(
        config,
        domain,
        &format!("{alias}: provisioned {pf} VF {} ({})", vf.index, vf.address),
    );
    Ok(ProvisionedVf {
        alias: alias.into(),
        pf: vf.pf,
        index: vf.index,
        address: vf.address,
    })
}

/// Hands back the VFs the hook provisioned for the domain, which left this host.
async fn release(args: &HookArgs) -> ExitCode {
    let config = args.config_or_default();
    let dir = &config.hook.state_dir;
    match record::read(dir, &args.domain) {
        Ok(vfs) if vfs.is_empty() => {}
        Ok(vfs) => {
            let kept = release_all(&config, &args.domain, &vfs).await;
            let result = if kept.is_empty() {
                record::remove(dir, &args.domain)
            } else {
                record::write(dir, &args.domain, &kept)
            };
            if let Err(e) = result {
                log(&config, &args.domain, &format!("release end: {e}"));
            }
        }
        Err(e) => log(&config, &args.domain, &format!("release end: {e}")),
    }
    // libvirt does not act on a release hook's status; the log says what is left.
    ExitCode::SUCCESS
}

/// Releases each VF; returns those that could not be.
async fn release_all(config: &HostConfig, domain: &str, vfs: &[ProvisionedVf]) -> Vec<ProvisionedVf> {
    let mut kept = Vec::new();
    let handle = sriov::connect();
    for vf in vfs {
        let released = match &handle {
            Ok(handle) => sriov::release(handle, &vf.pf, vf.index).await,
            Err(e) => Err(sriov::SriovError::Netlink {
                what: "opening a socket".into(),
                error: e.to_string(),
            }),
        };
        match released {
            Ok(()) => log(
                config,
                domain,
                &format!("{}: released {} VF {}", vf.alias, vf.pf, vf.index),
            ),
            Err(e) => {
                log(
                    config,
                    domain,
                    &format!(
                        "{}: releasing {} VF {} failed ({e}): release it with `vfmig-host release --pf {} --vf {}`",
                        vf.alias, vf.pf, vf.index, vf.pf, vf.index
                    ),
                );
                kept.push(vf.clone());
            }
        }
    }
    kept
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// One line in the hook's log. A log that cannot be written does not stop the hook.
fn log(config: &HostConfig, domain: &str, line: &str) {
    let path: &Path = &config.hook.log;
    let written = path
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| std::fs::OpenOptions::new().create(true).append(true).open(path))
        .and_then(|mut file| {
            let at = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
            writeln!(file, "{at} {domain}: {line}")
        });
    if let Err(e) = written {
        eprintln!("vfmig-host: the hook's log {}: {e}", path.display());
    }
}
