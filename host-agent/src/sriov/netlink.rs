//! A PF's VFs as the PF administers them, through rtnetlink: read from the PF's
//! IFLA_VFINFO_LIST (asked for with RTEXT_FILTER_VF) and changed with RTM_SETLINK on the PF,
//! one attribute per request so a refusal names what was refused and the rest stays as it was.

use futures::TryStreamExt;
use rtnetlink::packet_route::link::{
    LinkAttribute, LinkExtentMask, LinkMessage, LinkVfInfo, VfInfo, VfInfoMac, VfInfoRate, VfInfoSpoofCheck,
    VfInfoTrust, VfInfoVlan,
};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::Handle;
use vfmig_protocol::descriptor::VfSettings;
use vfmig_protocol::MacAddr;

use super::SriovError;

/// One setting of a VF, as one RTM_SETLINK carries it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Setting {
    Mac(MacAddr),
    Vlan { vlan: u16, qos: u8 },
    SpoofCheck(bool),
    Trust(bool),
    Rate { min: u32, max: u32 },
}

impl Setting {
    /// The settings that turn `from` into `to`, in the order they are applied; unchanged
    /// ones are left out (a driver may refuse a setting it does not support even as a no-op,
    /// igb a rate while its link is not at 1 Gb/s).
    pub fn changes(from: &VfSettings, to: &VfSettings) -> Vec<Setting> {
        let mut out = Vec::new();
        if from.mac != to.mac {
            out.push(Setting::Mac(to.mac));
        }
        if (from.vlan, from.qos) != (to.vlan, to.qos) {
            out.push(Setting::Vlan {
                vlan: to.vlan,
                qos: to.qos,
            });
        }
        if from.spoof_check != to.spoof_check {
            out.push(Setting::SpoofCheck(to.spoof_check));
        }
        if from.trust != to.trust {
            out.push(Setting::Trust(to.trust));
        }
        if (from.min_tx_rate, from.max_tx_rate) != (to.min_tx_rate, to.max_tx_rate) {
            out.push(Setting::Rate {
                min: to.min_tx_rate,
                max: to.max_tx_rate,
            });
        }
        out
    }

    pub fn name(&self) -> &'static str {
        match self {
            Setting::Mac(_) => "mac",
            Setting::Vlan { .. } => "vlan",
            Setting::SpoofCheck(_) => "spoof-check",
            Setting::Trust(_) => "trust",
            Setting::Rate { .. } => "rate",
        }
    }

    fn info(&self, vf_id: u32) -> VfInfo {
        match *self {
            Setting::Mac(mac) => VfInfo::Mac(VfInfoMac::new(vf_id, &mac.0)),
            Setting::Vlan { vlan, qos } => VfInfo::Vlan(VfInfoVlan::new(vf_id, vlan.into(), qos.into())),
            Setting::SpoofCheck(on) => VfInfo::SpoofCheck(VfInfoSpoofCheck::new(vf_id, on)),
            Setting::Trust(on) => VfInfo::Trust(VfInfoTrust::new(vf_id, on)),
            Setting::Rate { min, max } => VfInfo::Rate(VfInfoRate::new(vf_id, min, max)),
        }
    }
}

/// The PF's interface index and every VF's settings, by VF index.
pub async fn read(handle: &Handle, pf: &str) -> Result<(u32, Vec<(u32, VfSettings)>), SriovError> {
    let link = handle
        .link()
        .get()
        .match_name(pf.to_owned())
        .set_filter_mask(AddressFamily::Unspec, vec![LinkExtentMask::Vf])
        .execute()
        .try_next()
        .await
        .map_err(|e| SriovError::Netlink {
            what: format!("reading {pf}'s VFs"),
            error: e.to_string(),
        })?
        .ok_or_else(|| SriovError::NoSuchPf(pf.into()))?;
    let vfs = link
        .attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::VfInfoList(list) => Some(list.iter().filter_map(vf_settings).collect()),
            _ => None,
        })
        .unwrap_or_default();
    Ok((link.header.index, vfs))
}

fn vf_settings(info: &LinkVfInfo) -> Option<(u32, VfSettings)> {
    let mut index = None;
    let mut s = VfSettings {
        mac: MacAddr([0; 6]),
        vlan: 0,
        qos: 0,
        spoof_check: false,
        trust: false,
        min_tx_rate: 0,
        max_tx_rate: 0,
    };
    for attr in &info.0 {
        match attr {
            VfInfo::Mac(m) => {
                index = Some(m.vf_id);
                s.mac = MacAddr::from_slice(&m.mac[..6])?;
            }
            VfInfo::Vlan(v) => {
                s.vlan = u16::try_from(v.vlan_id).ok()?;
                s.qos = u8::try_from(v.qos).ok()?;
            }
            VfInfo::SpoofCheck(c) => s.spoof_check = c.enabled,
            VfInfo::Trust(t) => s.trust = t.enabled,
            VfInfo::Rate(r) => (s.min_tx_rate, s.max_tx_rate) = (r.min_tx_rate, r.max_tx_rate),
            _ => {}
        }
    }
    index.map(|i| (i, s))
}

/// Applies one setting to VF `vf` of the PF with index `pf_index`.
pub async fn apply(handle: &Handle, pf_index: u32, vf: u32, setting: Setting) -> Result<(), SriovError> {
    let mut msg = LinkMessage::default();
    msg.header.index = pf_index;
    msg.attributes
        .push(LinkAttribute::VfInfoList(vec![LinkVfInfo(vec![setting.info(vf)])]));
    handle.link().set(msg).execute().await.map_err(|e| SriovError::Netlink {
        what: format!("setting VF {vf}'s {}", setting.name()),
        error: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sriov::provision::unused;

    #[test]
    fn only_what_differs_is_set_in_a_fixed_order() {
        let from = unused();
        assert_eq!(Setting::changes(&from, &from), vec![]);
        let to = VfSettings {
            mac: MacAddr([0x52, 0x54, 0, 0xaa, 0, 1]),
            vlan: 100,
            trust: true,
            max_tx_rate: 100,
            ..unused()
        };
        let names: Vec<_> = Setting::changes(&from, &to).iter().map(Setting::name).collect();
        assert_eq!(names, ["mac", "vlan", "trust", "rate"]);
        let back: Vec<_> = Setting::changes(&to, &from);
        assert_eq!(back[0], Setting::Mac(MacAddr([0; 6])));
    }
}
