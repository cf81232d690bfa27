//! The two-host bed the end-to-end tests share: a source QEMU whose guest has the e1000e VF, a
//! destination QEMU waiting for the migration with an empty root port, the fabric with its
//! peer host, and what an operator checks afterwards.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::json;
use vfmig_host::migration::{
    migrate_source, plug_destination, Deadlines, Fallback, FreshVf, MigrateError, Plan, PlugSpec, Saved, Step,
    Timeline, VfPlan,
};
use vfmig_host::qmp::Qmp;
use vfmig_protocol::message::Restored;

use crate::fabric::{Fabric, GUEST_V4};
use crate::image::{debian_image_of, guest_image, DebianFlavour, GuestImage};
use crate::probe::wait_answering;
use crate::vm::{vf_device_json, ScratchDir, SecondVf, Vm, VmConfig, VF_ID};
use crate::{exclusive, Exclusive};

pub const SOURCE_MAC: &str = "52:54:00:10:00:01";
/// The fresh VF on the destination has a MAC of its own.
pub const FRESH_MAC: &str = "52:54:00:20:00:02";
/// A second VF's MAC (`Bed::with_two_vfs`), and its fresh VF's.
pub const SOURCE_MAC2: &str = "52:54:00:10:00:03";
pub const FRESH_MAC2: &str = "52:54:00:20:00:04";
/// Boot under TCG takes about 9 s; a loaded machine can take much longer.
pub const BOOT: Duration = Duration::from_secs(90);

/// The guest's network as an operator would compare it: global addresses, the routes it was
/// given (every table), permanent neighbours. Interface-independent, so the fresh VF compares
/// equal to the old one.
pub const NETWORK: &str = "ip -o addr show dev eth0 scope global | awk '{print $4}' | sort; \
    ip route show table all dev eth0 | grep -v -e 'proto kernel' -e '^local' -e '^broadcast' -e '^multicast' -e '^anycast' -e '^fe80' | sort; \
    ip neigh show dev eth0 nud permanent | sort";

/// The same state wherever it lives (the failover master, a renamed or a second NIC), with
/// IPv6 routes too: what the guest must still have after a migration, whichever way it went.
pub const STATE: &str = "ip -o addr show scope global | awk '{print $4}' | sort; \
    for f in -4 -6; do ip $f route show table all | grep -v -e 'proto kernel' -e '^local' -e '^broadcast' -e '^multicast' -e '^anycast' -e '^fe80' | sed -e 's/ dev [^ ]*//' -e 's/ linkdown//' | sort; done; \
    ip neigh show nud permanent | sed 's/ dev [^ ]*//' | sort";

/// The guest's echo service (UDP and TCP port 7).
pub fn echo() -> SocketAddr {
    SocketAddr::new(GUEST_V4.parse().expect("a constant address"), 7)
}

enum Guest {
    /// images/build: busybox, the agent, the DMA hook; network set up at boot.
    Busybox,
    /// images/build-debian, with the network stack the flavour names.
    Debian(DebianFlavour),
}

/// Source with the VF, destination waiting for the migration with an empty root port.
pub struct Bed {
    pub source: Vm,
    pub destination: Vm,
    pub src: Qmp,
    pub dst: Qmp,
    /// Where the source migrates to (the destination listens there).
    pub uri: String,
    pub fabric: Fabric,
    pub dir: ScratchDir,
    /// What the destination was started from, to start another.
    image: GuestImage,
    destination_config: VmConfig,
    _one: Exclusive,
}

/// What a bed is made of.
struct Shape {
    guest: Guest,
    agent: bool,
    hook: bool,
    standby: bool,
    failover: bool,
    /// A second VF on a second network; whether the source can unplug it.
    second_vf: Option<bool>,
    /// VLAN 10 on the fabric, with the peer in it.
    vlan: bool,
}

impl Shape {
    fn busybox() -> Self {
        Self {
            guest: Guest::Busybox,
            agent: true,
            hook: true,
            standby: false,
            failover: false,
            second_vf: None,
            vlan: false,
        }
    }
}

impl Bed {
    /// `agent: false` boots guests whose agent never answers; `hook: false` guests without
    /// the DMA hook's module.
    pub async fn start(agent: bool, hook: bool) -> Self {
        Self::build(Shape {
            agent,
            hook,
            ..Shape::busybox()
        })
        .await
    }

    /// A bed whose guest also has a standby NIC (a virtio-net on the same bridge).
    pub async fn with_standby() -> Self {
        Self::build(Shape {
            standby: true,
            ..Shape::busybox()
        })
        .await
    }

    /// A bed whose fabric also carries VLAN 10, tagged, to the VF ([`Fabric::add_vlan`]): the
    /// peer is in it at [`crate::fabric::PEER_VLAN_V4`].
    pub async fn with_vlan() -> Self {
        Self::build(Shape {
            vlan: true,
            ..Shape::busybox()
        })
        .await
    }

    /// A bed set up for QEMU's own virtio-net failover (the anchor vfmig must not fight).
    pub async fn with_qemu_failover() -> Self {
        Self::build(Shape {
            failover: true,
            ..Shape::busybox()
        })
        .await
    }

    /// A bed whose guest has two VFs, each on a network of its own (the second: `vf2`, the
    /// guest's eth1, the fabric's second network). `unpluggable: false` puts the source's
    /// second VF on a root port without hot-plug, so QEMU refuses its unplug.
    pub async fn with_two_vfs(unpluggable: bool) -> Self {
        Self::build(Shape {
            second_vf: Some(unpluggable),
            ..Shape::busybox()
        })
        .await
    }

    /// A bed whose guest is the Debian system (systemd, udev, NetworkManager, the package),
    /// its disk an overlay both QEMUs share. Its network is the test's to set up, in the guest.
    pub async fn debian() -> Self {
        Self::debian_with(DebianFlavour::Nm).await
    }

    /// [`Bed::debian`] with the network stack `flavour` names: with
    /// [`DebianFlavour::Networkd`] the guest asks for its VF's address by DHCP by itself.
    pub async fn debian_with(flavour: DebianFlavour) -> Self {
        Self::build(Shape {
            guest: Guest::Debian(flavour),
            hook: false,
            ..Shape::busybox()
        })
        .await
    }

    async fn build(shape: Shape) -> Self {
        let Shape {
            guest,
            agent,
            hook,
            standby,
            failover,
            second_vf,
            vlan,
        } = shape;
        let one = exclusive();
        let dir = ScratchDir::new("vfmig").expect("scratch directory");
        let debian = matches!(guest, Guest::Debian(_));
        let image = match guest {
            Guest::Busybox => guest_image().cloned(),
            Guest::Debian(flavour) => debian_image_of(flavour).and_then(|i| i.with_shared_overlay(&dir.0)),
        }
        .unwrap_or_else(|e| panic!("the guest image: {e}"));
        let fabric = Fabric::new().expect("the fabric comes up");
        if second_vf.is_some() {
            fabric.add_second_network().expect("the second network comes up");
        }
        if vlan {
            fabric.add_vlan().expect("VLAN 10 comes up");
        }
        for tap in ["tap-src", "tap-dst"] {
            let sb = format!("{tap}-sb");
            fabric.add_tap(tap).expect("tap");
            if standby || failover {
                fabric.add_tap(&sb).expect("tap");
            }
            if second_vf.is_some() {
                fabric.add_tap_to(&format!("{tap}-2"), "br1").expect("tap");
            }
            // QEMU's failover gives the VF and the standby one MAC, and net_failover drops what
            // arrives on the standby while a VF is registered. A bridge that learns would follow
            // whichever sent last — the standby's own IPv6 chatter, or a VF already gone — and
            // cut the guest off until it sent through the other (seen: 10 s without an answer).
            // Unlearned, the guest's frames reach all its NICs and net_failover takes the one it
            // uses, as on a host whose switch sends a VF's MAC to the VF while there is one.
            if failover {
                for tap in [tap, sb.as_str()] {
                    fabric.unlearned(tap).expect("tap without learning");
                }
            }
        }
        let vm = |name, tap: &str, nic, incoming, hotplug| VmConfig {
            name,
            tap: Some(tap.into()),
            nic,
            mac: SOURCE_MAC.into(),
            agent,
            incoming,
            hook,
            iommu: false,
            standby,
            failover,
            pf: None,
            spare_port: debian,
            second_vf: second_vf.map(|_| SecondVf {
                mac: SOURCE_MAC2.into(),
                hotplug,
            }),
        };
        let unpluggable = second_vf.unwrap_or(true);
        let source =
            Vm::start(&image, &dir.0, &vm("source", "tap-src", true, false, unpluggable)).expect("source QEMU");
        // QEMU's failover re-plugs the VF on the destination itself: it starts with it.
        let destination_config = vm("destination", "tap-dst", failover, true, true);
        let destination = Vm::start(&image, &dir.0, &destination_config).expect("destination QEMU");
        let src = source.qmp().await.unwrap_or_else(|e| panic!("{e}"));
        let uri = format!("unix:{}", dir.0.join("migration.sock").display());
        let dst = listen(&destination, &uri).await;
        Self {
            source,
            destination,
            src,
            dst,
            uri,
            fabric,
            dir,
            image,
            destination_config,
            _one: one,
        }
    }

    /// A new destination QEMU in place of the one there (which a migration given up leaves
    /// failed, or a test killed), waiting for the migration: the source can try again.
    pub async fn new_destination(&mut self) {
        // Its tap and sockets are the new one's.
        self.destination.stop();
        let fresh = Vm::start(&self.image, &self.dir.0, &self.destination_config).expect("destination QEMU");
        self.dst = listen(&fresh, &self.uri).await;
        self.destination = fresh;
    }

    /// Waits until the guest answers the peer at its address.
    pub fn wait_booted(&self) {
        wait_answering(&self.fabric.peer, echo(), BOOT).unwrap_or_else(|e| panic!("{e}"));
    }
}

/// Connects to a destination's monitor and has it wait for the migration on `uri`.
async fn listen(destination: &Vm, uri: &str) -> Qmp {
    let dst = destination.qmp().await.unwrap_or_else(|e| panic!("{e}"));
    dst.execute("migrate-incoming", Some(json!({ "uri": uri })))
        .await
        .expect("migrate-incoming");
    dst
}

/// The unix socket behind a VM's agent port.
pub fn agent(vm: &Vm) -> PathBuf {
    vm.dir.join("agent.sock")
}

/// The MAC of the VF plugged in a VM (fails if there is none).
pub async fn vf_mac(qmp: &Qmp) -> String {
    let path = format!("/machine/peripheral/{VF_ID}");
    qmp.query("qom-get", Some(json!({ "path": path, "property": "mac" })))
        .await
        .unwrap_or_else(|e| panic!("no VF plugged: {e}"))
}

/// vfmig's plan for a bed's VF: the device to put back should the migration be undone, and an
/// agent deadline that a loaded machine's TCG guest keeps.
pub fn plan(uri: &str, fallback: Fallback) -> Plan {
    Plan {
        vfs: vec![VfPlan {
            id: VF_ID.into(),
            device: Some(vf_device_json("e1000e", VF_ID, SOURCE_MAC)),
            mac: None,
        }],
        uri: uri.into(),
        fallback,
        deadlines: Deadlines {
            agent: Duration::from_secs(5),
            ..Deadlines::default()
        },
        hold_margin: 64 << 20,
        journal: None,
        standby: vfmig_protocol::message::StandbyRequest::Auto,
        accept_loss: false,
    }
}

/// The destination step: plug `device` and restore `saved` onto it.
pub fn fresh_vf(device: serde_json::Value, saved: &Saved) -> PlugSpec {
    PlugSpec {
        vfs: vec![FreshVf {
            id: device["id"].as_str().unwrap_or(VF_ID).to_owned(),
            device,
            mac: None,
            saved: saved.clone(),
        }],
        restore_mac: false,
        attempts: 3,
        deadlines: Deadlines::default(),
    }
}

/// Prints a timeline step as it happens.
pub fn show(step: &Step) {
    println!("  {:>6} ms  {:?}  {}", step.at_ms, step.phase, step.detail);
}

/// Runs vfmig's source side against a bed with one VF; returns the timeline with the
/// outcome: the VF's saved state, or none when it migrated without saving one.
pub async fn migrate(
    bed: &Bed,
    plan: &Plan,
    observe: &mut dyn FnMut(&Step),
) -> (Timeline, Result<Option<Saved>, MigrateError>) {
    assert_eq!(plan.vfs.len(), 1, "the bed has one VF");
    let mut timeline = Timeline::new();
    let outcome = migrate_source(&bed.src, &agent(&bed.source), plan, &mut timeline, observe).await;
    (timeline, outcome.map(|saved| saved.and_then(|s| s.into_iter().next())))
}

/// Runs vfmig's destination step against a bed with one VF; the guest's report.
pub async fn restore(
    bed: &Bed,
    spec: &PlugSpec,
    timeline: &mut Timeline,
    observe: &mut dyn FnMut(&Step),
) -> Result<Restored, MigrateError> {
    let reports = plug_destination(&bed.dst, &agent(&bed.destination), spec, timeline, observe).await?;
    Ok(reports.into_iter().next().expect("one report for the bed's one VF"))
}
