//! The VM seam on a libvirt host, where libvirt owns the VM's monitor.
//!
//! libvirt's own calls wherever it has one: the migration is libvirt's job (live,
//! peer-to-peer, persisted on the destination and undefined on the source), started with
//! `virDomainMigrateToURI3`, watched with its job statistics, aborted with `virDomainAbortJob`;
//! a VF is attached with `virDomainAttachDeviceFlags`, so libvirt's definition and the guest
//! agree. QEMU's monitor through libvirt's passthrough where libvirt has no call (each listed,
//! with why, in docs/libvirt.md): the migration parameters (libvirt's bandwidth floor is
//! 1 MiB/s, far above the hold's throttle), `device_del` (libvirt refuses to detach a device
//! while a migration job runs), and what QEMU alone knows — whether a device is still there,
//! where the guest put it, its MAC.
//!
//! Events are not registered: the `virt` crate has no safe registration, and a removal is
//! found by asking QEMU whether the device is still there, which also finds one that happened
//! while nobody listened.

pub mod channel;
mod job;
mod passthrough;

use std::cell::RefCell;
use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;
use vfmig_protocol::MacAddr;
use virt::connect::Connect;
use virt::domain::{Domain, MigrateParameters};
use virt::error::{Error as LibvirtError, ErrorNumber};
use virt::sys;

use super::qemu::Qemu;
use super::{Migration, Params, ParamsChange, Vm, VmError};
use crate::domain_xml::{self as xml, metadata};
use crate::sriov;
use job::Outgoing;
use passthrough::Passthrough;

/// How long an attach waits for libvirt to drop a removed device of the same alias from its
/// definition (measured: about 0.1 s after a migration job ends).
const DEFINITION_WAIT: Duration = Duration::from_secs(5);

/// The switch-over pause is libvirt's own (see [`LibvirtVm::switchover_gate`]).
fn gate_is_libvirts() -> VmError {
    VmError::Refused {
        request: "pause-before-switchover".into(),
        error: "libvirt pauses and continues its migration before switch-over itself".into(),
    }
}

/// Errors that mean the connection to libvirtd is gone, not that libvirt refused.
fn lost(e: &LibvirtError) -> bool {
    matches!(
        e.code(),
        ErrorNumber::SystemError | ErrorNumber::Rpc | ErrorNumber::NoConnect | ErrorNumber::InvalidConn
    )
}

fn unreadable(e: xml::XmlError) -> VmError {
    VmError::Refused {
        request: "the domain's XML".into(),
        error: e.to_string(),
    }
}

/// The definition the destination starts the domain from: the live one with vfmig's mark,
/// so that the destination's hook tells this migration from a plain one and vfmig-host there
/// tells the source's VFs from the guest's; each VF the domain lists that is an SR-IOV VF here
/// carries its descriptor, for the hook to check and provision. The persistent definition
/// there gets no mark.
async fn marked(live: &str) -> Result<String, VmError> {
    let mut vfs = Vec::new();
    for vf in metadata::managed_vfs(live).map_err(unreadable)? {
        let mut descriptor = None;
        if let Some(address) = metadata::host_address(live, &vf.alias).map_err(unreadable)? {
            let refused = |e: &dyn std::fmt::Display| VmError::Refused {
                request: format!("describing {} ({address})", vf.alias),
                error: e.to_string(),
            };
            let handle = sriov::connect().map_err(|e| refused(&e))?;
            if let Some(d) = sriov::describe_address(&handle, &address)
                .await
                .map_err(|e| refused(&e))?
            {
                descriptor = Some(serde_json::to_string(&d).map_err(|e| refused(&e))?);
            }
        }
        vfs.push(metadata::MarkedVf {
            alias: vf.alias,
            descriptor,
        });
    }
    let at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    metadata::with_mark(live, &metadata::Mark { at, vfs }).map_err(unreadable)
}

/// libvirt's message on one line: a hook's refusal carries the hook's standard error, newlines
/// and all, and vfmig-host's message is one line.
pub(super) fn one_line(e: &LibvirtError) -> String {
    let lines: Vec<&str> = e.message().lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    lines.join(" / ")
}

fn vm_error(request: &str, e: LibvirtError) -> VmError {
    if lost(&e) {
        VmError::Lost(format!("libvirt: {e}"))
    } else {
        VmError::Refused {
            request: request.into(),
            error: one_line(&e),
        }
    }
}

/// A libvirt domain.
pub struct LibvirtVm {
    dom: Domain,
    qemu: Qemu<Passthrough>,
    outgoing: RefCell<Option<Outgoing>>,
}

impl LibvirtVm {
    /// The domain `domain` (a name or a UUID) on the libvirt at `uri`.
    pub fn open(uri: &str, domain: &str) -> Result<Self, VmError> {
        // libvirt's default error handler prints every error to stderr; vfmig reports its own.
        virt::error::clear_error_callback();
        let conn = Connect::open(Some(uri)).map_err(|e| VmError::Lost(format!("connecting to {uri}: {e}")))?;
        let dom = Domain::lookup_by_name(&conn, domain)
            .or_else(|_| Domain::lookup_by_uuid_string(&conn, domain))
            .map_err(|e| vm_error(&format!("looking up domain {domain} on {uri}"), e))?;
        Ok(Self {
            qemu: Qemu::over(Passthrough { dom: dom.clone() }),
            dom,
            outgoing: RefCell::new(None),
        })
    }

    /// The domain's live XML.
    pub fn xml(&self) -> Result<String, VmError> {
        self.dom.get_xml_desc(0).map_err(|e| vm_error("the domain's XML", e))
    }

    /// The spec that attaches the device with alias `alias` again: its element in the
    /// domain's XML, as `{"xml": …}`.
    pub fn device_spec(&self, alias: &str) -> Result<Option<Value>, VmError> {
        let found = xml::device_xml(&self.xml()?, alias).map_err(|e| VmError::Refused {
            request: "the domain's XML".into(),
            error: e.to_string(),
        })?;
        Ok(found.map(|xml| serde_json::json!({ "xml": xml })))
    }

    /// Takes vfmig's migration mark off the domain's live definition (the migration that set
    /// it is over; a later plain migration must not pass for vfmig's).
    pub fn clear_mark(&self) -> Result<(), VmError> {
        let kind = sys::VIR_DOMAIN_METADATA_ELEMENT as i32;
        self.dom
            .set_metadata(
                kind,
                None,
                None,
                Some(metadata::MIGRATION_NS),
                sys::VIR_DOMAIN_AFFECT_LIVE,
            )
            .map(drop)
            .map_err(|e| vm_error("removing vfmig's migration mark", e))
    }

    fn in_definition(&self, alias: &str) -> Result<bool, VmError> {
        let xml = self.xml()?;
        xml::device_xml(&xml, alias)
            .map(|d| d.is_some())
            .map_err(|e| VmError::Refused {
                request: "the domain's XML".into(),
                error: e.to_string(),
            })
    }
}

/// The device XML of a spec, and its alias.
fn spec_xml(spec: &Value) -> Result<(&str, String), VmError> {
    let refused = |error: &str| VmError::Refused {
        request: "attaching a device".into(),
        error: error.into(),
    };
    let xml = spec
        .get("xml")
        .and_then(Value::as_str)
        .ok_or_else(|| refused("a libvirt device spec is {\"xml\": \"<interface …>\"}"))?;
    let doc = roxmltree::Document::parse(xml).map_err(|e| refused(&format!("the device XML does not parse: {e}")))?;
    let alias = doc
        .descendants()
        .find(|n| n.has_tag_name("alias"))
        .and_then(|a| a.attribute("name"))
        .ok_or_else(|| refused("the device XML has no <alias name='ua-…'/>: vfmig names devices by it"))?
        .to_owned();
    Ok((xml, alias))
}

impl Vm for LibvirtVm {
    async fn migration(&self) -> Result<Option<Migration>, VmError> {
        if let Some(outgoing) = self.outgoing.borrow_mut().as_mut() {
            return outgoing.status(&self.dom).map(Some);
        }
        job::running(&self.dom)
    }

    async fn start_migration(&self, target: &str) -> Result<(), VmError> {
        let live = self
            .dom
            .get_xml_desc(sys::VIR_DOMAIN_XML_MIGRATABLE)
            .map_err(|e| vm_error("the domain's XML", e))?;
        let mut params = MigrateParameters {
            dest_xml: Some(marked(&live).await?),
            ..MigrateParameters::default()
        };
        if self
            .dom
            .is_persistent()
            .map_err(|e| vm_error("whether the domain is persistent", e))?
        {
            let flags = sys::VIR_DOMAIN_XML_INACTIVE | sys::VIR_DOMAIN_XML_MIGRATABLE;
            params.persist_xml = Some(
                self.dom
                    .get_xml_desc(flags)
                    .map_err(|e| vm_error("the domain's persistent XML", e))?,
            );
        }
        let outgoing = Outgoing::start(&self.dom, target, params).await?;
        *self.outgoing.borrow_mut() = Some(outgoing);
        Ok(())
    }

    async fn cancel_migration(&self) -> Result<(), VmError> {
        // SAFETY: the domain pointer is valid for as long as `self.dom` lives; libvirt's API is
        // thread-safe, so aborting while another thread runs the migration call is its design.
        let ret = unsafe { sys::virDomainAbortJob(self.dom.as_ptr()) };
        if ret == -1 {
            let e = LibvirtError::last_error();
            // No job to abort: it ended by itself meanwhile.
            if e.code() != ErrorNumber::OperationInvalid {
                return Err(vm_error("aborting the migration job", e));
            }
        }
        Ok(())
    }

    async fn params(&self) -> Result<Params, VmError> {
        self.qemu.params().await
    }

    async fn set_params(&self, change: ParamsChange) -> Result<(), VmError> {
        self.qemu.set_params(change).await
    }

    async fn device_present(&self, id: &str) -> Result<bool, VmError> {
        self.qemu.device_present(id).await
    }

    async fn remove_device(&self, id: &str) -> Result<(), VmError> {
        self.qemu.remove_device(id).await
    }

    async fn wait_device_gone(&self, id: &str, deadline: Duration) -> Result<bool, VmError> {
        self.qemu.wait_device_gone(id, deadline).await
    }

    async fn add_device(&self, spec: &Value) -> Result<(), VmError> {
        let (xml, alias) = spec_xml(spec)?;
        // After a removal libvirt drops the device from its definition a moment later (once
        // the migration job ended): an attach before that is refused for the alias.
        let until = Instant::now() + DEFINITION_WAIT;
        while self.in_definition(&alias)? && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut flags = sys::VIR_DOMAIN_AFFECT_LIVE;
        if self
            .dom
            .is_persistent()
            .map_err(|e| vm_error("whether the domain is persistent", e))?
        {
            // The persistent definition still names the device this one replaces (the
            // source's VF, which a migration defines here too): it goes, so a restart of the
            // domain brings up the fresh VF and not the old one.
            let inactive = self
                .dom
                .get_xml_desc(sys::VIR_DOMAIN_XML_INACTIVE)
                .map_err(|e| vm_error("the domain's persistent XML", e))?;
            if let Ok(Some(old)) = xml::device_xml(&inactive, &alias) {
                self.dom
                    .detach_device_flags(&old, sys::VIR_DOMAIN_AFFECT_CONFIG)
                    .map_err(|e| vm_error("removing the old device from the persistent definition", e))?;
            }
            flags |= sys::VIR_DOMAIN_AFFECT_CONFIG;
        }
        self.dom
            .attach_device_flags(xml, flags)
            .map(drop)
            .map_err(|e| vm_error("attaching the device", e))
    }

    async fn device_is(&self, id: &str, spec: &Value) -> Result<bool, VmError> {
        let (xml, _) = spec_xml(spec)?;
        let unreadable = |e: xml::XmlError| VmError::Refused {
            request: "comparing devices".into(),
            error: e.to_string(),
        };
        let wanted = xml::spec_identity(xml).map_err(unreadable)?;
        let live = self.xml()?;
        // Defined here from the source's XML, as vfmig's mark says: the source's VF, whatever
        // it looks like (the hook points a hostdev at the VF it provisioned here).
        let mark = metadata::mark(&live).map_err(unreadable)?;
        if mark.is_some_and(|m| m.vfs.iter().any(|vf| vf.alias == id)) {
            return Ok(false);
        }
        let there = xml::device_identity(&live, id).map_err(unreadable)?;
        Ok(there.is_some_and(|there| {
            wanted.mac.as_ref().is_none_or(|m| there.mac.as_ref() == Some(m))
                && wanted
                    .host_address
                    .as_ref()
                    .is_none_or(|a| there.host_address.as_ref() == Some(a))
        }))
    }

    async fn guest_pci_address(&self, id: &str) -> Result<Option<String>, VmError> {
        self.qemu.guest_pci_address(id).await
    }

    async fn device_mac(&self, id: &str) -> Result<Option<MacAddr>, VmError> {
        self.qemu.device_mac(id).await
    }

    async fn running(&self) -> Result<bool, VmError> {
        let (state, _) = self.dom.get_state().map_err(|e| vm_error("the domain's state", e))?;
        Ok(state == sys::VIR_DOMAIN_RUNNING)
    }

    async fn failover_pair(&self, id: &str) -> Result<Option<String>, VmError> {
        self.qemu.failover_pair(id).await
    }

    /// No gate vfmig can hold: libvirt turns `pause-before-switchover` on for every migration
    /// it runs (its always-on source capabilities, applied as its job starts, over anything set
    /// through the passthrough) and issues `migrate-continue` itself once its own pre-switchover
    /// work is done; its API offers no pause there. Nor does libvirt refuse the VF itself: its
    /// "cannot migrate a domain with <interface type='hostdev'>" check is the fallback for a
    /// QEMU that cannot report migration blockers, and QEMU reports none for a vfio-pci VF with
    /// `failover_pair_id`. What guards a libvirt migration is the hold, and the destination
    /// hook refusing a migration vfmig did not start (docs/libvirt.md).
    async fn switchover_gate(&self) -> Result<Option<bool>, VmError> {
        Ok(None)
    }

    async fn set_switchover_gate(&self, _on: bool) -> Result<(), VmError> {
        Err(gate_is_libvirts())
    }

    async fn continue_switchover(&self) -> Result<(), VmError> {
        Err(gate_is_libvirts())
    }
}
