//! The nested bed: a VF that is real. A QEMU VM plays the host (L1, a [`SriovHost`] booted
//! from images/build-nested, which carries QEMU), and inside it two nested QEMUs (L2) are the
//! migrating guest's source and destination, its NIC an igb VF of L1's PF through vfio-pci —
//! no `mac` property, the MAC is the one the PF gave the VF. `vfmig-host` runs in L1 and drives
//! the nested QEMUs over QMP as on the main bed; the probe is L1 itself, on the PF.
//!
//! Everything nested runs inside the L1 VM, so it ends with it: nothing is left on the machine
//! when the [`SriovHost`] drops.

use std::time::Duration;

use crate::fabric::{GUEST_V4, GUEST_V6, PEER_V4, PREFIX_V4, PREFIX_V6};
use crate::image::nested_image;
use crate::sriov_host::SriovHost;
use crate::vm::PfHost;

/// L1's helper for the nested guests (see the script).
const L2: &str = include_str!("nested/l2.sh");

/// A nested guest boots in about two minutes here (TCG inside TCG).
pub const BOOT: Duration = Duration::from_secs(300);

/// The MAC the source VF is provisioned with, and the fresh VF after it.
pub const VF_MAC: &str = "52:54:00:aa:00:01";

/// A nested guest's role.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Source,
    Destination,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Source => "src",
            Side::Destination => "dst",
        }
    }

    /// Its directory in L1: its QMP and agent sockets live there.
    pub fn dir(self) -> String {
        format!("/tmp/l2-{}", self.name())
    }
}

/// The migration URI the destination waits on.
pub const MIGRATION_URI: &str = "unix:/tmp/l2-migration.sock";

pub struct NestedBed {
    pub host: SriovHost,
}

/// A VF provisioned for the nested guest: its index on the PF and its PCI address.
#[derive(Clone, Debug)]
pub struct Vf {
    pub index: u64,
    pub address: String,
}

impl NestedBed {
    /// Boots L1, loads vfio's IOMMU backend (without it QEMU cannot open a VF's group: "No
    /// available IOMMU models"), gives the PF the peer's address and writes the helper.
    pub async fn boot() -> Result<Self, String> {
        let mut host = SriovHost::boot_on(nested_image()?, PfHost::Nested).await?;
        let pf = host.pf.clone();
        host.shell.ok("modprobe vfio_iommu_type1").await?;
        host.shell
            .ok(&format!("ip addr add {PEER_V4}/{PREFIX_V4} dev {pf}"))
            .await?;
        host.write("/tmp/l2", L2).await;
        let cmdline = format!(
            "console=ttyS0 panic=-1 quiet vfmig.addr={GUEST_V4}/{PREFIX_V4} vfmig.addr6={GUEST_V6}/{PREFIX_V6} \
             vfmig.agent=on vfmig.hook=on vfmig.failover=off vfmig.role=guest"
        );
        host.write("/tmp/l2-cmdline", &cmdline).await;
        Ok(Self { host })
    }

    /// Provisions a VF as the destination's hook would: the first free one, with
    /// [`VF_MAC`], bound to vfio-pci.
    pub async fn provision(&mut self) -> Result<Vf, String> {
        let pf = self.host.pf.clone();
        if self
            .host
            .shell
            .run("test -e /tmp/vf.json", Duration::from_secs(5))
            .await?
            .0
            != 0
        {
            let (rc, out) = self.host.vfmig(&format!("describe --pf {pf} --vf 0")).await;
            if rc != 0 {
                return Err(format!("describe: {out}"));
            }
            let mut d: serde_json::Value = serde_json::from_str(&out).map_err(|e| format!("{e}: {out}"))?;
            d["vf"]["mac"] = VF_MAC.into();
            self.host.write("/tmp/vf.json", &d.to_string()).await;
        }
        let (rc, out) = self
            .host
            .vfmig(&format!("provision --pf {pf} --descriptor /tmp/vf.json --json"))
            .await;
        if rc != 0 {
            return Err(format!("provision: {out}"));
        }
        let got: serde_json::Value = serde_json::from_str(&out).map_err(|e| format!("{e}: {out}"))?;
        match (got["index"].as_u64(), got["address"].as_str()) {
            (Some(index), Some(address)) => Ok(Vf {
                index,
                address: address.to_owned(),
            }),
            _ => Err(format!("provision printed {out}")),
        }
    }

    /// Starts a nested guest: the source with `vf`, the destination with none, waiting for
    /// the migration on [`MIGRATION_URI`].
    pub async fn start(&mut self, side: Side, vf: Option<&Vf>) -> Result<(), String> {
        let vf = vf.map_or("-", |v| v.address.as_str());
        let incoming = match side {
            Side::Source => "-",
            Side::Destination => MIGRATION_URI,
        };
        self.host
            .shell
            .ok(&format!("sh /tmp/l2 start {} {vf} {incoming}", side.name()))
            .await
            .map(drop)
    }

    /// Waits for the source guest to boot.
    pub async fn booted(&mut self, side: Side) -> Result<(), String> {
        let secs = BOOT.as_secs();
        let (rc, out) = self
            .host
            .shell
            .run(
                &format!("sh /tmp/l2 up {} {secs}", side.name()),
                BOOT + Duration::from_secs(10),
            )
            .await?;
        if rc != 0 {
            return Err(out);
        }
        Ok(())
    }

    /// Runs `command` in a nested guest: its status and output.
    pub async fn guest(&mut self, side: Side, command: &str, deadline: Duration) -> Result<(i32, String), String> {
        let quoted = command.replace('\'', "'\\''");
        self.host
            .shell
            .run(&format!("sh /tmp/l2 sh {} '{quoted}'", side.name()), deadline)
            .await
    }

    /// The nested guest's console, for failure messages.
    pub async fn console(&mut self, side: Side) -> String {
        self.host
            .shell
            .ok(&format!("tail -30 {}/console.log; cat {0}/qemu.log", side.dir()))
            .await
            .unwrap_or_else(|e| e)
    }
}
