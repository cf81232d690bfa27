//! A QEMU VM playing a *host* with an SR-IOV NIC: its emulated igb is a real PF to the Linux
//! igb driver inside it, VFs are created through sysfs, vfio-pci binds behind QEMU's
//! intel-iommu, and `vfmig-host` runs there as it would on a real host.

use std::time::Duration;

use crate::image::{guest_image, GuestImage};
use crate::shell::GuestShell;
use crate::vm::{PfHost, ScratchDir, Vm, VmConfig};
use crate::{exclusive, Exclusive};

/// VFs the PF is given at boot.
pub const VFS: u32 = 4;

/// iproute2's `ip` in the guest (busybox's, first on its PATH, does not show VFs).
pub const IP: &str = "/opt/iproute2/ip";

/// The host VM, booted, with `VFS` VFs on its PF and vfio-pci loaded. Keep it whole while in
/// use: its guards (the test-bed lock, QEMU's directory) end with it.
pub struct SriovHost {
    pub vm: Vm,
    pub shell: GuestShell,
    /// The PF's interface name.
    pub pf: String,
    _dir: ScratchDir,
    _one: Exclusive,
}

impl SriovHost {
    pub async fn boot() -> Result<Self, String> {
        Self::boot_on(guest_image()?, PfHost::Alone).await
    }

    /// The same on another image (the nested bed's, which carries QEMU), sized for `role`.
    pub async fn boot_on(image: &GuestImage, role: PfHost) -> Result<Self, String> {
        let one = exclusive();
        let dir = ScratchDir::new("sriov-host").map_err(|e| e.to_string())?;
        let config = VmConfig {
            name: "host",
            tap: None,
            nic: false,
            mac: String::new(),
            agent: false,
            incoming: false,
            hook: false,
            iommu: true,
            standby: false,
            failover: false,
            pf: Some(role),
            spare_port: false,
            second_vf: None,
        };
        let vm = Vm::start(image, &dir.0, &config).map_err(|e| e.to_string())?;
        let mut shell = vm.shell(Duration::from_secs(120)).await?;
        // The igb interface appears a moment after its driver loads.
        let find = "for i in $(seq 100); do for n in /sys/class/net/*; do \
                    [ \"$(basename \"$(readlink $n/device/driver)\")\" = igb ] && basename $n && exit 0; \
                    done; sleep 0.1; done; exit 1";
        let pf = shell.ok(find).await?.trim().to_owned();
        // The nested bed's VFs are for its guests: L1 probes no VF driver on them, as hosts
        // that pass VFs through are set up. With igbvf probing them as the PF reinitialises, a
        // two-vCPU VM stalled once in some 55 enables here (and once in CI): a vCPU's local
        // APIC kept the timer vector in service (ISR 236, PPR 0xe0). With no probe, or one
        // vCPU, 150 enables each never did.
        if role == PfHost::Nested {
            shell
                .ok(&format!("echo 0 > /sys/class/net/{pf}/device/sriov_drivers_autoprobe"))
                .await?;
        }
        // Wait for the link too, after enabling the VFs: igb refuses a VF rate limit while its
        // link is down, and enabling SR-IOV closes and reopens the PF, which takes the link down
        // (waiting before it let a rate be refused, once in a fresh-clone run).
        shell
            .ok(&format!(
                "ip link set {pf} up; echo {VFS} > /sys/class/net/{pf}/device/sriov_numvfs; \
                 for i in $(seq 100); do [ \"$(cat /sys/class/net/{pf}/carrier)\" = 1 ] && exit 0; sleep 0.1; done; exit 1"
            ))
            .await
            .map_err(|e| format!("{e}; guest console:\n{}", vm.console()))?;
        shell.ok("modprobe vfio-pci").await?;
        Ok(Self {
            vm,
            shell,
            pf,
            _dir: dir,
            _one: one,
        })
    }

    /// Runs `vfmig-host <args>` in the host VM: its exit status and output.
    pub async fn vfmig(&mut self, args: &str) -> (i32, String) {
        self.shell
            .run(&format!("vfmig-host {args}"), Duration::from_secs(60))
            .await
            .unwrap_or_else(|e| panic!("vfmig-host {args}: {e}"))
    }

    /// The `vf N` line `ip -d link show` prints for VF `index` of the PF.
    pub async fn ip_vf_line(&mut self, index: u32) -> String {
        let out = self
            .shell
            .ok(&format!("{IP} -d link show {}", self.pf))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let prefix = format!("vf {index} ");
        out.lines()
            .map(str::trim)
            .find(|l| l.starts_with(&prefix))
            .unwrap_or_else(|| panic!("no `{prefix}` line in:\n{out}"))
            .to_owned()
    }

    /// The PCI address of VF `index` and the driver it is bound to ("" when none).
    pub async fn vf_driver(&mut self, index: u32) -> (String, String) {
        let dev = format!("/sys/class/net/{}/device/virtfn{index}", self.pf);
        let out = self
            .shell
            .ok(&format!(
                "basename $(readlink {dev}); basename \"$(readlink {dev}/driver)\" 2>/dev/null || true"
            ))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let mut lines = out.lines().map(str::to_owned);
        (lines.next().unwrap_or_default(), lines.next().unwrap_or_default())
    }

    /// Everything about the PF's VFs a provisioning may change: `ip`'s VF lines and each
    /// VF's driver and override.
    pub async fn vf_snapshot(&mut self) -> String {
        let mut out = String::new();
        for index in 0..VFS {
            let line = self.ip_vf_line(index).await;
            let (address, driver) = self.vf_driver(index).await;
            let over = self
                .shell
                .ok(&format!("cat /sys/bus/pci/devices/{address}/driver_override"))
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            out.push_str(&format!("{line} | {address} {driver} override={}\n", over.trim()));
        }
        out
    }

    /// Writes `text` to `path` in the host VM, line by line (the shell takes one command line).
    pub async fn write(&mut self, path: &str, text: &str) {
        let lines: Vec<String> = text
            .lines()
            .map(|l| format!("'{}'", l.replace('\'', "'\\''")))
            .collect();
        self.shell
            .ok(&format!("printf '%s\\n' {} > {path}", lines.join(" ")))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
}
