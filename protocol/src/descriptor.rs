//! What a VF is on the source and what a destination PF can offer, and the judgement of the
//! two before a migration starts.
//!
//! The seeds' rule: an incompatible device must fail directly, before anything changes, with
//! a reason an operator can act on, not in a subtle way after the VM moved. The source writes a
//! [`VfDescriptor`], the destination an [`Offer`]; [`check`] compares them. Both documents carry
//! a `major.minor` version: a newer minor only adds optional fields, so a destination reads any
//! document of its own major (ignoring fields it does not know), and refuses another major
//! with an error naming both.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::mac::MacAddr;
use crate::version::ProtocolVersion;

/// The version this build writes and the newest it reads.
pub const DESCRIPTOR_VERSION: ProtocolVersion = ProtocolVersion::new(1, 0);

/// A descriptor or offer larger than this is refused unread: both are a few hundred bytes.
pub const MAX_DOCUMENT: usize = 64 << 10;

/// The highest 802.1Q VLAN id a VF can be given (4095 is reserved).
pub const MAX_VLAN: u16 = 4094;

/// The PCI functions behind a VF: what decides whether a VF on another PF is the same kind.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PfModel {
    /// PCI vendor and device id of the PF, e.g. 8086:10c9 for an 82576.
    pub vendor: u16,
    pub device: u16,
    /// PCI device id of its VFs, e.g. 10ca.
    pub vf_device: u16,
    /// The PF's kernel driver, e.g. `igb`.
    pub driver: String,
    /// Link speed in Mb/s while the link is up; `None` when the kernel does not know it.
    #[serde(default)]
    pub link_speed_mbps: Option<u32>,
}

impl fmt::Display for PfModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}:{:04x} ({}, VFs {:04x})",
            self.vendor, self.device, self.driver, self.vf_device
        )
    }
}

/// A VF's settings, as the PF administers them (IFLA_VF_* through the PF).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VfSettings {
    pub mac: MacAddr,
    /// 0: untagged.
    #[serde(default)]
    pub vlan: u16,
    /// 802.1p priority of the VLAN tag, 0–7.
    #[serde(default)]
    pub qos: u8,
    #[serde(default = "yes")]
    pub spoof_check: bool,
    #[serde(default)]
    pub trust: bool,
    /// Transmit rate limits in Mb/s; 0: none.
    #[serde(default)]
    pub min_tx_rate: u32,
    #[serde(default)]
    pub max_tx_rate: u32,
}

fn yes() -> bool {
    true
}

/// The source VF: its PF's model and its settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VfDescriptor {
    pub version: ProtocolVersion,
    pub pf: PfModel,
    pub vf: VfSettings,
}

/// What the destination's operator allows a VF to be given.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// The VLANs a VF may be put in (0: untagged); `None`: any.
    #[serde(default)]
    pub vlans: Option<Vec<u16>>,
    /// Whether a VF may be trusted (change its MAC, enter promiscuous mode).
    #[serde(default)]
    pub allow_trust: bool,
    /// Whether every VF must keep spoof checking on.
    #[serde(default)]
    pub require_spoof_check: bool,
}

/// What a destination PF can offer: its model, its free VFs and its operator's policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offer {
    pub version: ProtocolVersion,
    /// The PF's interface name on the destination, for messages.
    pub pf_name: String,
    pub pf: PfModel,
    /// Indices of VFs no one uses (not bound to vfio-pci, no host interface up).
    pub free_vfs: Vec<u32>,
    #[serde(default)]
    pub policy: Policy,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DocumentError {
    #[error("{what} is larger than the {max} bytes allowed")]
    TooLarge { what: &'static str, max: usize },
    #[error("{what} is not valid: {reason}")]
    Malformed { what: &'static str, reason: String },
    #[error("{what} has version {got}, this vfmig reads {ours} and older minors of major {}", ours.major)]
    UnknownVersion {
        what: &'static str,
        got: ProtocolVersion,
        ours: ProtocolVersion,
    },
}

/// Reads a document of kind `what`: bounded, versioned, then typed and validated.
fn read<T: serde::de::DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T, DocumentError> {
    if bytes.len() > MAX_DOCUMENT {
        return Err(DocumentError::TooLarge {
            what,
            max: MAX_DOCUMENT,
        });
    }
    let malformed = |e: serde_json::Error| DocumentError::Malformed {
        what,
        reason: e.to_string(),
    };
    #[derive(Deserialize)]
    struct Versioned {
        version: ProtocolVersion,
    }
    // The version first: a document of another major may not have our shape at all.
    let Versioned { version } = serde_json::from_slice(bytes).map_err(malformed)?;
    if version.major != DESCRIPTOR_VERSION.major {
        return Err(DocumentError::UnknownVersion {
            what,
            got: version,
            ours: DESCRIPTOR_VERSION,
        });
    }
    serde_json::from_slice(bytes).map_err(malformed)
}

impl VfSettings {
    fn validate(&self, what: &'static str) -> Result<(), DocumentError> {
        let bad = |reason: String| Err(DocumentError::Malformed { what, reason });
        if self.mac.is_zero() || self.mac.is_multicast() {
            return bad(format!("the VF's MAC {} is not a unicast address", self.mac));
        }
        if self.vlan > MAX_VLAN {
            return bad(format!("VLAN {} is above {MAX_VLAN}", self.vlan));
        }
        if self.qos > 7 {
            return bad(format!("VLAN priority {} is above 7", self.qos));
        }
        if self.vlan == 0 && self.qos != 0 {
            return bad("a VLAN priority without a VLAN".into());
        }
        if self.max_tx_rate != 0 && self.min_tx_rate > self.max_tx_rate {
            return bad(format!(
                "minimum rate {} Mb/s is above the maximum {} Mb/s",
                self.min_tx_rate, self.max_tx_rate
            ));
        }
        Ok(())
    }
}

impl VfDescriptor {
    pub fn new(pf: PfModel, vf: VfSettings) -> Self {
        Self {
            version: DESCRIPTOR_VERSION,
            pf,
            vf,
        }
    }

    pub fn from_json(bytes: &[u8]) -> Result<Self, DocumentError> {
        let d: Self = read("the VF descriptor", bytes)?;
        d.vf.validate("the VF descriptor")?;
        Ok(d)
    }
}

impl Offer {
    pub fn from_json(bytes: &[u8]) -> Result<Self, DocumentError> {
        let o: Self = read("the destination's offer", bytes)?;
        if let Some(bad) = o.policy.vlans.iter().flatten().find(|v| **v > MAX_VLAN) {
            return Err(DocumentError::Malformed {
                what: "the destination's offer",
                reason: format!("its policy allows VLAN {bad}, above {MAX_VLAN}"),
            });
        }
        Ok(o)
    }
}

/// Why a VF cannot move to a destination.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(tag = "reason", rename_all = "kebab-case")]
pub enum Incompatibility {
    #[error("the destination PF is {offered}, the source VF's PF is {wanted}: the guest's VF driver would not match")]
    Model { wanted: String, offered: String },
    #[error("the destination PF's link is {offered} Mb/s, slower than the source's {wanted} Mb/s")]
    LinkSlower { wanted: u32, offered: u32 },
    #[error("the destination PF {pf} has no free VF")]
    NoFreeVf { pf: String },
    #[error("the destination does not allow VLAN {vlan} (allowed: {allowed})")]
    VlanNotAllowed { vlan: u16, allowed: String },
    #[error("the source VF is trusted and the destination does not allow trusted VFs")]
    TrustNotAllowed,
    #[error("the source VF runs without spoof checking and the destination requires it")]
    SpoofCheckRequired,
}

/// The answer to "can this VF move there", with every reason it cannot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub compatible: bool,
    pub reasons: Vec<Incompatibility>,
    /// The VF the destination would use, when compatible.
    pub vf: Option<u32>,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.vf {
            Some(vf) if self.compatible => write!(f, "compatible: VF {vf} on the destination can take it"),
            _ => {
                write!(f, "not compatible:")?;
                self.reasons.iter().try_for_each(|r| write!(f, "\n  - {r}"))
            }
        }
    }
}

/// Compares the source VF with the destination's offer. Every reason is listed, not only the
/// first, so one check tells the operator everything to fix.
pub fn check(source: &VfDescriptor, offer: &Offer) -> Verdict {
    let mut reasons = Vec::new();
    let (want, have) = (&source.pf, &offer.pf);
    if (want.vendor, want.device, want.vf_device, &want.driver)
        != (have.vendor, have.device, have.vf_device, &have.driver)
    {
        reasons.push(Incompatibility::Model {
            wanted: want.to_string(),
            offered: have.to_string(),
        });
    }
    if let (Some(wanted), Some(offered)) = (want.link_speed_mbps, have.link_speed_mbps) {
        if offered < wanted {
            reasons.push(Incompatibility::LinkSlower { wanted, offered });
        }
    }
    if offer.free_vfs.is_empty() {
        reasons.push(Incompatibility::NoFreeVf {
            pf: offer.pf_name.clone(),
        });
    }
    let vf = &source.vf;
    if let Some(allowed) = &offer.policy.vlans {
        if !allowed.contains(&vf.vlan) {
            let list = allowed.iter().map(u16::to_string).collect::<Vec<_>>().join(", ");
            reasons.push(Incompatibility::VlanNotAllowed {
                vlan: vf.vlan,
                allowed: if list.is_empty() { "none".into() } else { list },
            });
        }
    }
    if vf.trust && !offer.policy.allow_trust {
        reasons.push(Incompatibility::TrustNotAllowed);
    }
    if !vf.spoof_check && offer.policy.require_spoof_check {
        reasons.push(Incompatibility::SpoofCheckRequired);
    }
    let compatible = reasons.is_empty();
    Verdict {
        compatible,
        vf: compatible.then(|| offer.free_vfs.first().copied()).flatten(),
        reasons,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> PfModel {
        PfModel {
            vendor: 0x8086,
            device: 0x10c9,
            vf_device: 0x10ca,
            driver: "igb".into(),
            link_speed_mbps: Some(1000),
        }
    }

    fn source() -> VfDescriptor {
        VfDescriptor::new(
            model(),
            VfSettings {
                mac: "52:54:00:10:00:01".parse().expect("mac"),
                vlan: 100,
                qos: 0,
                spoof_check: true,
                trust: false,
                min_tx_rate: 0,
                max_tx_rate: 0,
            },
        )
    }

    fn offer() -> Offer {
        Offer {
            version: DESCRIPTOR_VERSION,
            pf_name: "eth1".into(),
            pf: model(),
            free_vfs: vec![1, 2],
            policy: Policy {
                vlans: Some(vec![0, 100]),
                allow_trust: false,
                require_spoof_check: true,
            },
        }
    }

    #[test]
    fn a_matching_offer_is_compatible_and_names_the_vf() {
        let v = check(&source(), &offer());
        assert!(v.compatible, "{v}");
        assert_eq!(v.vf, Some(1));
    }

    #[test]
    fn every_reason_is_listed() {
        let mut src = source();
        src.vf.trust = true;
        src.vf.spoof_check = false;
        src.vf.vlan = 200;
        let mut o = offer();
        o.pf.device = 0x1533;
        o.pf.link_speed_mbps = Some(100);
        o.free_vfs.clear();
        let v = check(&src, &o);
        assert!(!v.compatible);
        assert_eq!(v.vf, None);
        let text = v.to_string();
        for needle in ["10c9", "100 Mb/s", "no free VF", "VLAN 200", "trusted", "spoof"] {
            assert!(text.contains(needle), "{needle} missing from {text}");
        }
        assert_eq!(v.reasons.len(), 6);
    }

    #[test]
    fn documents_round_trip_and_a_newer_minor_with_new_fields_is_read() {
        let json = serde_json::to_vec(&source()).expect("encode");
        assert_eq!(VfDescriptor::from_json(&json), Ok(source()));
        let mut value: serde_json::Value = serde_json::from_slice(&json).expect("json");
        value["version"]["minor"] = 7.into();
        value["vf"]["a_later_field"] = true.into();
        let read = VfDescriptor::from_json(value.to_string().as_bytes()).expect("a newer minor is read");
        assert_eq!(read.vf, source().vf);
    }

    #[test]
    fn another_major_is_refused_by_name() {
        let mut value = serde_json::to_value(source()).expect("json");
        value["version"]["major"] = 2.into();
        value["vf"] = "a shape this build does not know".into();
        let e = VfDescriptor::from_json(value.to_string().as_bytes()).expect_err("major 2");
        assert!(matches!(e, DocumentError::UnknownVersion { .. }), "{e}");
        assert!(e.to_string().contains("2.0"), "{e}");
    }

    #[test]
    fn bad_documents_are_refused_with_the_reason() {
        type Spoil = fn(&mut serde_json::Value);
        let cases: [(&str, Spoil); 6] = [
            ("VLAN 4095", |v| v["vf"]["vlan"] = 4095.into()),
            ("priority 8", |v| v["vf"]["qos"] = 8.into()),
            ("without a VLAN", |v| {
                v["vf"]["vlan"] = 0.into();
                v["vf"]["qos"] = 3.into();
            }),
            ("not a unicast", |v| v["vf"]["mac"] = "01:00:5e:00:00:01".into()),
            ("minimum rate", |v| {
                v["vf"]["min_tx_rate"] = 500.into();
                v["vf"]["max_tx_rate"] = 100.into();
            }),
            ("missing field", |v| {
                v["pf"]
                    .as_object_mut()
                    .map(|o| o.remove("driver"))
                    .map(drop)
                    .unwrap_or(())
            }),
        ];
        for (needle, spoil) in cases {
            let mut value = serde_json::to_value(source()).expect("json");
            spoil(&mut value);
            let e = VfDescriptor::from_json(value.to_string().as_bytes()).expect_err(needle);
            assert!(e.to_string().contains(needle), "{needle}: {e}");
        }
        let huge = vec![b' '; MAX_DOCUMENT + 1];
        assert!(matches!(
            VfDescriptor::from_json(&huge),
            Err(DocumentError::TooLarge { .. })
        ));
        assert!(VfDescriptor::from_json(b"{\"version\":").is_err());
        let mut o = serde_json::to_value(offer()).expect("json");
        o["policy"]["vlans"] = serde_json::json!([4096]);
        let e = Offer::from_json(o.to_string().as_bytes()).expect_err("vlan 4096");
        assert!(e.to_string().contains("4096"), "{e}");
    }
}
