//! What vfmig reads in libvirt's domain XML: a device by its alias (the QEMU device id of a
//! device the XML names `ua-…`), and what tells two devices of one alias apart (their MAC,
//! the host VF they pass through); and, in [`metadata`], the VFs the domain says vfmig
//! migrates and the mark vfmig-host puts on the definition it migrates it with.
//!
//! Pure text in, text out: it links no libvirt, so the hook, which libvirt runs, uses it too.
//! Edits replace byte ranges of the original, so everything vfmig does not touch stays as
//! libvirt wrote it.

pub mod metadata;

use roxmltree::{Document, Node};

/// The virtio-serial port the guest agent listens on, as the channel's target name.
pub const AGENT_PORT: &str = "org.vfmig.agent.0";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum XmlError {
    #[error("the domain XML does not parse: {0}")]
    Parse(String),
}

pub(crate) fn parse(xml: &str) -> Result<Document<'_>, XmlError> {
    Document::parse(xml).map_err(|e| XmlError::Parse(e.to_string()))
}

pub(crate) fn child<'a, 'i>(node: Node<'a, 'i>, name: &str) -> Option<Node<'a, 'i>> {
    node.children().find(|c| c.has_tag_name(name))
}

/// The device under `<devices>` whose alias is `alias`.
pub(crate) fn device<'a, 'i>(doc: &'a Document<'i>, alias: &str) -> Option<Node<'a, 'i>> {
    let devices = doc.root_element().children().find(|n| n.has_tag_name("devices"))?;
    devices
        .children()
        .find(|d| child(*d, "alias").and_then(|a| a.attribute("name")) == Some(alias))
}

/// The element of the device with alias `alias`, as the XML has it: what attaches it again.
pub fn device_xml(domain_xml: &str, alias: &str) -> Result<Option<String>, XmlError> {
    let doc = parse(domain_xml)?;
    Ok(device(&doc, alias).map(|d| domain_xml[d.range()].to_owned()))
}

/// What tells devices of one alias apart: the MAC, and the PCI address of the host device a
/// `hostdev` passes through.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Identity {
    pub mac: Option<String>,
    pub host_address: Option<String>,
}

fn identity_of(node: Node<'_, '_>) -> Identity {
    let mac = child(node, "mac")
        .and_then(|m| m.attribute("address"))
        .map(str::to_lowercase);
    let host_address = child(node, "source")
        .and_then(|s| child(s, "address"))
        .map(|a| pci_address(a).unwrap_or_else(|| "an unreadable address".into()));
    Identity { mac, host_address }
}

/// A PCI `<address>` element as sysfs names the device (`0000:3b:02.1`).
pub(crate) fn pci_address(a: Node<'_, '_>) -> Option<String> {
    let field = |name| {
        let text = a.attribute(name)?;
        u32::from_str_radix(text.trim_start_matches("0x"), 16).ok()
    };
    Some(format!(
        "{:04x}:{:02x}:{:02x}.{:x}",
        field("domain")?,
        field("bus")?,
        field("slot")?,
        field("function")?
    ))
}

/// The identity of the device with alias `alias` in a domain's XML.
pub fn device_identity(domain_xml: &str, alias: &str) -> Result<Option<Identity>, XmlError> {
    let doc = parse(domain_xml)?;
    Ok(device(&doc, alias).map(identity_of))
}

/// The identity of a device element on its own (a device spec).
pub fn spec_identity(device_xml: &str) -> Result<Identity, XmlError> {
    let doc = parse(device_xml)?;
    Ok(identity_of(doc.root_element()))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const DOMAIN: &str = r#"<domain type='qemu'>
  <name>vm1</name>
  <devices>
    <interface type='ethernet'>
      <mac address='52:54:00:10:00:01'/>
      <model type='e1000e'/>
      <alias name='ua-vf'/>
    </interface>
    <interface type='hostdev' managed='yes'>
      <mac address='52:54:00:AA:00:01'/>
      <source><address type='pci' domain='0x0000' bus='0x3b' slot='0x02' function='0x1'/></source>
      <alias name='ua-vf2'/>
    </interface>
    <channel type='unix'>
      <source mode='bind' path='/run/libvirt/qemu/vm1-shell.sock'/>
      <target type='virtio' name='org.vfmig.test.shell'/>
    </channel>
    <channel type='unix'>
      <source mode='bind' path='/run/libvirt/qemu/vm1-agent.sock'/>
      <target type='virtio' name='org.vfmig.agent.0'/>
    </channel>
  </devices>
</domain>"#;

    #[test]
    fn a_device_is_found_by_its_alias_with_what_tells_it_apart() {
        let vf = device_xml(DOMAIN, "ua-vf").unwrap().expect("the VF");
        assert!(
            vf.starts_with("<interface type='ethernet'>") && vf.ends_with("</interface>"),
            "{vf}"
        );
        assert_eq!(
            spec_identity(&vf).unwrap(),
            Identity {
                mac: Some("52:54:00:10:00:01".into()),
                host_address: None
            }
        );
        assert_eq!(
            device_identity(DOMAIN, "ua-vf2").unwrap(),
            Some(Identity {
                mac: Some("52:54:00:aa:00:01".into()),
                host_address: Some("0000:3b:02.1".into())
            })
        );
        assert_eq!(device_xml(DOMAIN, "ua-none").unwrap(), None);
    }
}
