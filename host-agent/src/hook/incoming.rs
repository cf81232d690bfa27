//! What the hook makes of an incoming migration: whose it is, and what each VF needs.

use std::fmt;

use vfmig_protocol::descriptor::{Policy, VfDescriptor};

use super::HostConfig;
use crate::domain_xml::metadata::{self, ManagedVf};
use crate::domain_xml::XmlError;

/// An incoming migration, judged.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    /// The domain lists no VF for vfmig: not vfmig's to judge.
    NotManaged,
    /// Refused before libvirt starts anything on this host.
    Refused(Refusal),
    /// vfmig-host's migration, marked `age_s` seconds ago: what each VF needs here.
    Vfmig { age_s: i64, vfs: Vec<IncomingVf> },
}

#[derive(Debug, Clone, PartialEq)]
pub enum IncomingVf {
    /// On no network: vfmig-host plugs the fresh VF it was given.
    Kept { alias: String },
    /// A VF to provision on `network`'s PF for the source's `descriptor`.
    Provision {
        alias: String,
        network: String,
        pf: String,
        policy: Policy,
        descriptor: Box<VfDescriptor>,
    },
}

impl IncomingVf {
    pub fn alias(&self) -> &str {
        match self {
            IncomingVf::Kept { alias } | IncomingVf::Provision { alias, .. } => alias,
        }
    }
}

/// Why an incoming migration is refused; each says what to do instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No mark: a plain migration, which would lose the VFs' network state.
    NotVfmig {
        domain: String,
        vfs: Vec<String>,
    },
    /// A mark older than the configuration allows: left over from an earlier migration.
    StaleMark {
        domain: String,
        vfs: Vec<String>,
        age_s: i64,
        max_s: u64,
    },
    UnknownNetwork {
        alias: String,
        network: String,
    },
    NotHostdev {
        alias: String,
        network: String,
    },
    NoDescriptor {
        alias: String,
    },
    BadDescriptor {
        alias: String,
        error: String,
    },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::NotVfmig { domain, vfs } => write!(
                f,
                "vfmig: {domain}'s VF {} is migrated by vfmig, which saves its network state and plugs a fresh VF here; a plain migration would lose both. Migrate it with `vfmig-host migrate --libvirt {domain} --uri DESTINATION --vf {}`",
                vfs.join(", "),
                vfs.join(" --vf ")
            ),
            Refusal::StaleMark {
                domain,
                vfs,
                age_s,
                max_s,
            } => write!(
                f,
                "vfmig: {domain}'s VF {} is migrated by vfmig, and the mark vfmig-host put on this migration is {age_s} s old (at most {max_s} s): left over from an earlier migration. Migrate it with `vfmig-host migrate --libvirt {domain}`, or check the hosts' clocks",
                vfs.join(", ")
            ),
            Refusal::UnknownNetwork { alias, network } => write!(
                f,
                "vfmig: {alias} is on network {network:?}, which this host's /etc/vfmig/host.toml does not configure"
            ),
            Refusal::NotHostdev { alias, network } => write!(
                f,
                "vfmig: {alias} is on network {network:?} but passes no host PCI device through: only a hostdev VF is provisioned"
            ),
            Refusal::NoDescriptor { alias } => write!(
                f,
                "vfmig: the source did not describe {alias} (it is no SR-IOV VF there), so no VF can be chosen for it here"
            ),
            Refusal::BadDescriptor { alias, error } => {
                write!(f, "vfmig: the source's descriptor of {alias} does not validate: {error}")
            }
        }
    }
}

/// Judges the incoming definition `domain_xml` of `domain` at `now` (Unix seconds).
pub fn judge(domain: &str, domain_xml: &str, config: &HostConfig, now: u64) -> Result<Incoming, XmlError> {
    let managed = metadata::managed_vfs(domain_xml)?;
    if managed.is_empty() {
        return Ok(Incoming::NotManaged);
    }
    let aliases = || managed.iter().map(|vf| vf.alias.clone()).collect();
    let Some(mark) = metadata::mark(domain_xml)? else {
        return Ok(Incoming::Refused(Refusal::NotVfmig {
            domain: domain.into(),
            vfs: aliases(),
        }));
    };
    let age_s = now as i64 - mark.at as i64;
    let max_s = config.hook.mark_max_age_s;
    if age_s.unsigned_abs() > max_s {
        return Ok(Incoming::Refused(Refusal::StaleMark {
            domain: domain.into(),
            vfs: aliases(),
            age_s,
            max_s,
        }));
    }
    let mut vfs = Vec::new();
    for ManagedVf { alias, network } in managed {
        let Some(network) = network else {
            vfs.push(IncomingVf::Kept { alias });
            continue;
        };
        let refuse = |r| Ok(Incoming::Refused(r));
        let Some(configured) = config.networks.get(&network) else {
            return refuse(Refusal::UnknownNetwork { alias, network });
        };
        if metadata::host_address(domain_xml, &alias)?.is_none() {
            return refuse(Refusal::NotHostdev { alias, network });
        }
        let Some(json) = mark
            .vfs
            .iter()
            .find(|vf| vf.alias == alias)
            .and_then(|vf| vf.descriptor.as_ref())
        else {
            return refuse(Refusal::NoDescriptor { alias });
        };
        let descriptor = match VfDescriptor::from_json(json.as_bytes()) {
            Ok(d) => Box::new(d),
            Err(e) => {
                return refuse(Refusal::BadDescriptor {
                    alias,
                    error: e.to_string(),
                })
            }
        };
        vfs.push(IncomingVf::Provision {
            alias,
            pf: configured.pf.clone(),
            policy: configured.policy(),
            network,
            descriptor,
        });
    }
    Ok(Incoming::Vfmig { age_s, vfs })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use vfmig_protocol::descriptor::{PfModel, VfSettings};

    use super::*;
    use crate::domain_xml::metadata::{with_mark, Mark, MarkedVf};
    use crate::domain_xml::tests::DOMAIN;

    const NOW: u64 = 1_765_000_000;

    fn listing(vfs: &str) -> String {
        DOMAIN.replace(
            "<devices>",
            &format!("<metadata><vfmig:vfs xmlns:vfmig='urn:vfmig:domain:1'>{vfs}</vfmig:vfs></metadata><devices>"),
        )
    }

    fn config() -> HostConfig {
        HostConfig::parse(
            "[networks.tenant]\npf = \"enp94s0f1\"\nallow_vlans = [100]\n",
            Path::new("t"),
        )
        .unwrap()
    }

    fn descriptor() -> String {
        let pf = PfModel {
            vendor: 0x8086,
            device: 0x10c9,
            vf_device: 0x10ca,
            driver: "igb".into(),
            link_speed_mbps: Some(1000),
        };
        let vf = VfSettings {
            mac: "52:54:00:aa:00:01".parse().unwrap(),
            vlan: 100,
            qos: 0,
            spoof_check: true,
            trust: false,
            min_tx_rate: 0,
            max_tx_rate: 0,
        };
        serde_json::to_string(&VfDescriptor::new(pf, vf)).unwrap()
    }

    fn marked(xml: &str, at: u64, descriptors: Vec<(String, String)>) -> String {
        let vfs = descriptors
            .into_iter()
            .map(|(alias, d)| MarkedVf {
                alias,
                descriptor: Some(d),
            })
            .collect();
        with_mark(xml, &Mark { at, vfs }).unwrap()
    }

    #[test]
    fn a_domain_that_lists_no_vf_is_not_judged() {
        assert_eq!(judge("vm1", DOMAIN, &config(), NOW).unwrap(), Incoming::NotManaged);
    }

    #[test]
    fn a_plain_or_left_over_migration_is_refused_naming_vfmig() {
        let xml = listing("<vfmig:vf alias='ua-vf'/>");
        let Incoming::Refused(plain) = judge("vm1", &xml, &config(), NOW).unwrap() else {
            panic!("a plain migration passed")
        };
        assert_eq!(
            plain,
            Refusal::NotVfmig {
                domain: "vm1".into(),
                vfs: vec!["ua-vf".into()]
            }
        );
        let said = plain.to_string();
        assert!(
            said.starts_with("vfmig: ") && said.contains("vfmig-host migrate --libvirt vm1"),
            "{said}"
        );
        let stale = judge("vm1", &marked(&xml, NOW - 601, vec![]), &config(), NOW).unwrap();
        assert!(
            matches!(stale, Incoming::Refused(Refusal::StaleMark { age_s: 601, .. })),
            "{stale:?}"
        );
        let fresh = judge("vm1", &marked(&xml, NOW - 2, vec![]), &config(), NOW).unwrap();
        assert_eq!(
            fresh,
            Incoming::Vfmig {
                age_s: 2,
                vfs: vec![IncomingVf::Kept { alias: "ua-vf".into() }]
            }
        );
    }

    #[test]
    fn a_vf_on_a_network_needs_the_network_a_hostdev_and_a_valid_descriptor() {
        let on = |alias: &str, network: &str| listing(&format!("<vfmig:vf alias='{alias}' network='{network}'/>"));
        let judged = |xml: &str, descriptors| judge("vm1", &marked(xml, NOW, descriptors), &config(), NOW).unwrap();
        let described = vec![("ua-vf2".to_owned(), descriptor())];
        match judged(&on("ua-vf2", "tenant"), described.clone()) {
            Incoming::Vfmig { vfs, .. } => match &vfs[..] {
                [IncomingVf::Provision {
                    pf, policy, descriptor, ..
                }] => {
                    assert_eq!(pf, "enp94s0f1");
                    assert_eq!(policy.vlans, Some(vec![100]));
                    assert_eq!(descriptor.vf.vlan, 100);
                }
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        }
        let refusal = |xml: &str, descriptors| match judged(xml, descriptors) {
            Incoming::Refused(r) => r,
            other => panic!("{other:?}"),
        };
        assert!(matches!(
            refusal(&on("ua-vf2", "storage"), described.clone()),
            Refusal::UnknownNetwork { .. }
        ));
        assert!(matches!(
            refusal(&on("ua-vf", "tenant"), described.clone()),
            Refusal::NotHostdev { .. }
        ));
        assert!(matches!(
            refusal(&on("ua-vf2", "tenant"), vec![]),
            Refusal::NoDescriptor { .. }
        ));
        let lying = vec![(
            "ua-vf2".to_owned(),
            descriptor().replace("\"vlan\":100", "\"vlan\":5000"),
        )];
        assert!(matches!(
            refusal(&on("ua-vf2", "tenant"), lying),
            Refusal::BadDescriptor { .. }
        ));
    }
}
