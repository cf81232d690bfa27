//! vfmig's two pieces of domain metadata.
//!
//! The operator's, in the domain's definition: which VFs vfmig migrates, and on which of the
//! host's networks (a PF named in /etc/vfmig/host.toml) each destination gives it a VF:
//!
//! ```xml
//! <vfmig:vfs xmlns:vfmig='urn:vfmig:domain:1'>
//!   <vfmig:vf alias='ua-vf' network='tenant'/>
//! </vfmig:vfs>
//! ```
//!
//! vfmig-host's mark, only on the definition it hands the destination: when it started the
//! migration, and the VFs it migrates — which the destination defines from the source's XML
//! though the source unplugs them, so there they are the source's, not the guest's — each with
//! its descriptor, if it is an SR-IOV VF, for the destination's hook to check and provision:
//!
//! ```xml
//! <vfmig:migration xmlns:vfmig='urn:vfmig:migration:1' at='1765000000'>
//!   <vfmig:vf alias='ua-vf'>{"version":"1.0","pf":{…},"vf":{…}}</vfmig:vf>
//! </vfmig:migration>
//! ```
//!
//! libvirt's ABI check ignores metadata, so neither stops a migration.

use roxmltree::Node;

use super::{child, device, parse, pci_address, XmlError};

/// The namespace of the operator's list of the VFs vfmig migrates.
pub const DOMAIN_NS: &str = "urn:vfmig:domain:1";
/// The namespace of vfmig-host's mark.
pub const MIGRATION_NS: &str = "urn:vfmig:migration:1";

/// A VF the domain's metadata says vfmig migrates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagedVf {
    /// The device's alias (`ua-…`), which is its QEMU id.
    pub alias: String,
    /// The network a destination gives it a VF on; none for a VF the hook does not provision
    /// (an emulated one, or one provisioned by other means).
    pub network: Option<String>,
}

/// vfmig-host's mark on the definition it migrates a domain with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mark {
    /// When the migration started, in Unix seconds.
    pub at: u64,
    /// The VFs vfmig-host migrates.
    pub vfs: Vec<MarkedVf>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MarkedVf {
    pub alias: String,
    /// Its descriptor (JSON, unvalidated here), if vfmig-host could describe it (a hostdev on
    /// an SR-IOV PF).
    pub descriptor: Option<String>,
}

fn ours<'a, 'i>(node: &Node<'a, 'i>, namespace: &str, name: &str) -> bool {
    node.tag_name().namespace() == Some(namespace) && node.tag_name().name() == name
}

/// The VFs the domain's metadata says vfmig migrates.
pub fn managed_vfs(domain_xml: &str) -> Result<Vec<ManagedVf>, XmlError> {
    let doc = parse(domain_xml)?;
    let Some(list) = doc.descendants().find(|n| ours(n, DOMAIN_NS, "vfs")) else {
        return Ok(Vec::new());
    };
    list.children()
        .filter(|n| ours(n, DOMAIN_NS, "vf"))
        .map(|n| {
            let alias = n
                .attribute("alias")
                .ok_or_else(|| XmlError::Parse("a <vfmig:vf> without an alias".into()))?;
            Ok(ManagedVf {
                alias: alias.to_owned(),
                network: n.attribute("network").map(str::to_owned),
            })
        })
        .collect()
}

/// vfmig-host's mark, if the definition carries one.
pub fn mark(domain_xml: &str) -> Result<Option<Mark>, XmlError> {
    let doc = parse(domain_xml)?;
    let Some(node) = doc.descendants().find(|n| ours(n, MIGRATION_NS, "migration")) else {
        return Ok(None);
    };
    let at = node
        .attribute("at")
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| XmlError::Parse("vfmig's migration mark has no time".into()))?;
    let vfs = node
        .children()
        .filter(|n| ours(n, MIGRATION_NS, "vf"))
        .filter_map(|n| {
            Some(MarkedVf {
                alias: n.attribute("alias")?.to_owned(),
                descriptor: n.text().filter(|t| !t.trim().is_empty()).map(str::to_owned),
            })
        })
        .collect();
    Ok(Some(Mark { at, vfs }))
}

/// Escapes text for an XML attribute or element.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\'', "&apos;")
        .replace('"', "&quot;")
}

/// `domain_xml` with `mark` in its metadata (replacing an earlier mark).
pub fn with_mark(domain_xml: &str, mark: &Mark) -> Result<String, XmlError> {
    let unmarked = without_mark(domain_xml)?;
    let vfs: String = mark
        .vfs
        .iter()
        .map(|vf| match &vf.descriptor {
            Some(d) => format!("<vfmig:vf alias='{}'>{}</vfmig:vf>", escape(&vf.alias), escape(d)),
            None => format!("<vfmig:vf alias='{}'/>", escape(&vf.alias)),
        })
        .collect();
    let text = format!(
        "<vfmig:migration xmlns:vfmig='{MIGRATION_NS}' at='{}'>{vfs}</vfmig:migration>",
        mark.at
    );
    insert_metadata(&unmarked, &text)
}

/// `domain_xml` without vfmig-host's mark.
pub fn without_mark(domain_xml: &str) -> Result<String, XmlError> {
    let doc = parse(domain_xml)?;
    let mut unmarked = domain_xml.to_owned();
    if let Some(node) = doc.descendants().find(|n| ours(n, MIGRATION_NS, "migration")) {
        unmarked.replace_range(node.range(), "");
    }
    Ok(unmarked)
}

/// `domain_xml` with `element` first in its `<metadata>` (made if there is none).
fn insert_metadata(domain_xml: &str, element: &str) -> Result<String, XmlError> {
    let doc = parse(domain_xml)?;
    let root = doc.root_element();
    let (range, text) = match child(root, "metadata") {
        Some(metadata) => {
            let start = metadata.range().start;
            let end_of_tag = domain_xml[start..]
                .find('>')
                .map(|i| start + i + 1)
                .ok_or_else(|| XmlError::Parse("an unterminated <metadata> tag".into()))?;
            if domain_xml[..end_of_tag].ends_with("/>") {
                (metadata.range(), format!("<metadata>{element}</metadata>"))
            } else {
                (end_of_tag..end_of_tag, element.to_owned())
            }
        }
        None => {
            let end = root.range().end;
            let close = domain_xml[..end]
                .rfind("</")
                .ok_or_else(|| XmlError::Parse("the domain element is not closed".into()))?;
            (close..close, format!("<metadata>{element}</metadata>"))
        }
    };
    let mut edited = domain_xml.to_owned();
    edited.replace_range(range, &text);
    Ok(edited)
}

/// The host PCI address (`0000:3b:02.1`) the device `alias` passes through, if it is a
/// hostdev.
pub fn host_address(domain_xml: &str, alias: &str) -> Result<Option<String>, XmlError> {
    let doc = parse(domain_xml)?;
    Ok(device(&doc, alias)
        .and_then(|d| child(d, "source"))
        .and_then(|s| child(s, "address"))
        .and_then(pci_address))
}

/// `domain_xml` with the hostdev `alias` passing through the host device at `address`
/// (`0000:5e:04.3`) instead: the VF a destination provisioned, in place of the source's.
pub fn with_host_address(domain_xml: &str, alias: &str, address: &str) -> Result<String, XmlError> {
    let bad = || XmlError::Parse(format!("{address} is no PCI address"));
    let (domain, rest) = address.split_once(':').ok_or_else(bad)?;
    let (bus, rest) = rest.split_once(':').ok_or_else(bad)?;
    let (slot, function) = rest.split_once('.').ok_or_else(bad)?;
    let hex = |s: &str| u32::from_str_radix(s, 16).map_err(|_| bad());
    let element = format!(
        "<address type='pci' domain='0x{:04x}' bus='0x{:02x}' slot='0x{:02x}' function='0x{:x}'/>",
        hex(domain)?,
        hex(bus)?,
        hex(slot)?,
        hex(function)?
    );
    let doc = parse(domain_xml)?;
    let old = device(&doc, alias)
        .and_then(|d| child(d, "source"))
        .and_then(|s| child(s, "address"))
        .ok_or_else(|| XmlError::Parse(format!("{alias} passes no host PCI device through")))?;
    let mut edited = domain_xml.to_owned();
    edited.replace_range(old.range(), &element);
    Ok(edited)
}

#[cfg(test)]
mod tests {
    use super::super::tests::DOMAIN;
    use super::super::{device_identity, device_xml};
    use super::*;

    fn listed() -> String {
        DOMAIN.replace(
            "<devices>",
            "<metadata><vfmig:vfs xmlns:vfmig='urn:vfmig:domain:1'><vfmig:vf alias='ua-vf'/><vfmig:vf alias='ua-vf2' network='tenant'/></vfmig:vfs></metadata><devices>",
        )
    }

    #[test]
    fn the_operator_lists_the_vfs_vfmig_migrates_with_their_network() {
        assert_eq!(
            managed_vfs(&listed()).unwrap(),
            [
                ManagedVf {
                    alias: "ua-vf".into(),
                    network: None
                },
                ManagedVf {
                    alias: "ua-vf2".into(),
                    network: Some("tenant".into())
                }
            ]
        );
        assert_eq!(managed_vfs(DOMAIN).unwrap(), []);
        let nameless = DOMAIN.replace(
            "<devices>",
            "<metadata><v:vfs xmlns:v='urn:vfmig:domain:1'><v:vf/></v:vfs></metadata><devices>",
        );
        assert!(managed_vfs(&nameless).is_err());
    }

    #[test]
    fn the_mark_is_written_read_replaced_and_taken_off_leaving_the_rest_as_it_was() {
        let mark = Mark {
            at: 1_765_000_000,
            vfs: vec![
                MarkedVf {
                    alias: "ua-vf".into(),
                    descriptor: None,
                },
                MarkedVf {
                    alias: "ua-vf2".into(),
                    descriptor: Some(r#"{"a":"<&'>"}"#.into()),
                },
            ],
        };
        for xml in [
            DOMAIN.to_owned(),
            listed(),
            DOMAIN.replace("<devices>", "<metadata/><devices>"),
        ] {
            assert_eq!(super::mark(&xml).unwrap(), None);
            let marked = with_mark(&xml, &mark).unwrap();
            assert_eq!(super::mark(&marked).unwrap().as_ref(), Some(&mark), "{marked}");
            assert_eq!(managed_vfs(&marked).unwrap(), managed_vfs(&xml).unwrap());
            assert_eq!(
                device_xml(&marked, "ua-vf").unwrap(),
                device_xml(&xml, "ua-vf").unwrap()
            );
            let again = with_mark(&marked, &Mark { at: 7, vfs: vec![] }).unwrap();
            assert_eq!(super::mark(&again).unwrap().map(|m| m.at), Some(7));
            assert_eq!(super::mark(&without_mark(&again).unwrap()).unwrap(), None);
        }
        let timeless = DOMAIN.replace(
            "<devices>",
            "<metadata><m:migration xmlns:m='urn:vfmig:migration:1'/></metadata><devices>",
        );
        assert!(super::mark(&timeless).is_err());
    }

    #[test]
    fn a_hostdev_is_pointed_at_another_host_vf_and_nothing_else_changes() {
        assert_eq!(host_address(DOMAIN, "ua-vf2").unwrap().as_deref(), Some("0000:3b:02.1"));
        assert_eq!(host_address(DOMAIN, "ua-vf").unwrap(), None);
        let moved = with_host_address(DOMAIN, "ua-vf2", "0000:5e:04.3").unwrap();
        assert_eq!(host_address(&moved, "ua-vf2").unwrap().as_deref(), Some("0000:5e:04.3"));
        assert_eq!(
            device_identity(&moved, "ua-vf2").unwrap().and_then(|i| i.mac),
            Some("52:54:00:aa:00:01".into())
        );
        assert_eq!(moved.len(), DOMAIN.len());
        assert!(with_host_address(DOMAIN, "ua-vf", "0000:5e:04.3").is_err());
        assert!(with_host_address(DOMAIN, "ua-vf2", "5e:04").is_err());
    }
}
