//! The host's configuration, `/etc/vfmig/host.toml`: the PF and the policy of each network a
//! domain's VF can be on, and where the hook logs and keeps what it provisioned.
//!
//! ```toml
//! [networks.tenant]
//! pf = "enp94s0f1"
//! allow_vlans = [0, 100]     # absent: any VLAN
//! allow_trust = false
//! require_spoof_check = true
//!
//! [hook]
//! log = "/var/log/vfmig/hook.log"
//! mark_max_age_s = 600
//! ```

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use vfmig_protocol::descriptor::Policy;
use vfmig_protocol::message::validate_ifname;

/// Where the configuration is, unless told otherwise.
pub const DEFAULT_PATH: &str = "/etc/vfmig/host.toml";
/// A configuration is a few lines; one far larger is not one.
const MAX_SIZE: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {error}")]
    Read { path: PathBuf, error: std::io::Error },
    #[error("{path}: larger than {MAX_SIZE} bytes")]
    TooLarge { path: PathBuf },
    #[error("{path}: {error}")]
    Invalid { path: PathBuf, error: String },
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    /// The networks a domain's VF can name (`<vfmig:vf alias=… network=…/>`), by name.
    #[serde(default)]
    pub networks: BTreeMap<String, NetworkConfig>,
    #[serde(default)]
    pub hook: HookConfig,
}

/// A network: the PF whose VFs it hands out, and what a VF may be given there.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NetworkConfig {
    pub pf: String,
    /// The VLANs a VF may be put in (0: untagged); absent: any.
    #[serde(default)]
    pub allow_vlans: Option<Vec<u16>>,
    #[serde(default)]
    pub allow_trust: bool,
    #[serde(default)]
    pub require_spoof_check: bool,
}

impl NetworkConfig {
    pub fn policy(&self) -> Policy {
        Policy {
            vlans: self.allow_vlans.clone(),
            allow_trust: self.allow_trust,
            require_spoof_check: self.require_spoof_check,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct HookConfig {
    /// One line per migration the hook judged and per VF it provisioned or released.
    pub log: PathBuf,
    /// Where the hook records the VFs it provisioned for each domain, to release them.
    pub state_dir: PathBuf,
    /// How old vfmig-host's mark may be: older, it is left over, not this migration's. Allows
    /// for the hosts' clocks differing.
    pub mark_max_age_s: u64,
}

impl Default for HookConfig {
    fn default() -> Self {
        Self {
            log: "/var/log/vfmig/hook.log".into(),
            state_dir: "/run/vfmig/hook".into(),
            mark_max_age_s: 600,
        }
    }
}

impl HostConfig {
    /// Parses and checks a configuration.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let invalid = |error: String| ConfigError::Invalid {
            path: path.to_owned(),
            error,
        };
        let config: Self = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        for (name, network) in &config.networks {
            validate_ifname("pf", &network.pf).map_err(|e| invalid(format!("network {name}: {e}")))?;
        }
        Ok(config)
    }

    /// Reads the configuration at `path`; none there is the default one (no networks).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let read = |error| ConfigError::Read {
            path: path.to_owned(),
            error,
        };
        let file = match std::fs::File::open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(read(e)),
        };
        let mut text = String::new();
        file.take(MAX_SIZE + 1).read_to_string(&mut text).map_err(read)?;
        if text.len() as u64 > MAX_SIZE {
            return Err(ConfigError::TooLarge { path: path.to_owned() });
        }
        Self::parse(&text, path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_example_reads_and_mistakes_are_named() {
        let path = Path::new("host.toml");
        let text = "[networks.tenant]\npf = \"enp94s0f1\"\nallow_vlans = [0, 100]\nrequire_spoof_check = true\n\n[hook]\nmark_max_age_s = 120\n";
        let config = HostConfig::parse(text, path).unwrap();
        let tenant = &config.networks["tenant"];
        assert_eq!(tenant.pf, "enp94s0f1");
        assert_eq!(
            tenant.policy(),
            Policy {
                vlans: Some(vec![0, 100]),
                allow_trust: false,
                require_spoof_check: true
            }
        );
        assert_eq!(config.hook.mark_max_age_s, 120);
        assert_eq!(config.hook.log, Path::new("/var/log/vfmig/hook.log"));

        let typo = HostConfig::parse("[networks.tenant]\npf = \"eth0\"\nallow_vlan = [1]\n", path).unwrap_err();
        assert!(typo.to_string().contains("allow_vlan"), "{typo}");
        let bad_pf = HostConfig::parse("[networks.tenant]\npf = \"../eth0\"\n", path).unwrap_err();
        assert!(bad_pf.to_string().contains("network tenant"), "{bad_pf}");
        assert_eq!(
            HostConfig::load(Path::new("/nonexistent/host.toml")).unwrap(),
            HostConfig::default()
        );
    }

    #[test]
    fn the_shipped_configuration_is_the_default_one() {
        let shipped = include_str!("../../libvirt/host.toml");
        assert_eq!(
            HostConfig::parse(shipped, Path::new("host.toml")).unwrap(),
            HostConfig::default()
        );
    }
}
