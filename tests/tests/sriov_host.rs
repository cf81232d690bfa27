//! vfmig-host's SR-IOV side on a real PF: a QEMU VM plays the host (see
//! `vfmig_testbed::sriov_host`), VFs are provisioned, read back through `ip` and through
//! vfmig, bound to vfio-pci and released; failures are injected at each step, and a real one
//! comes from the kernel; and `check` answers compatible or not, with its reasons.

use serde_json::Value;
use vfmig_testbed::sriov_host::{SriovHost, VFS};

const MAC: &str = "52:54:00:aa:00:01";

/// A source VF's descriptor for this host's PF model: VLAN 100, trusted, no spoof checking,
/// a rate limit of `max_tx_rate` Mb/s (0: none); written to /tmp/src.json in the host too.
async fn descriptor(host: &mut SriovHost, max_tx_rate: u32) -> Value {
    let pf = host.pf.clone();
    let (rc, out) = host.vfmig(&format!("describe --pf {pf} --vf 0")).await;
    assert_eq!(rc, 0, "{out}");
    let mut d = json(&out);
    assert_eq!(d["pf"]["driver"], "igb", "{d}");
    d["vf"]["mac"] = MAC.into();
    d["vf"]["vlan"] = 100.into();
    d["vf"]["trust"] = true.into();
    d["vf"]["spoof_check"] = false.into();
    d["vf"]["max_tx_rate"] = max_tx_rate.into();
    host.write("/tmp/src.json", &d.to_string()).await;
    d
}

fn json(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

#[tokio::test(flavor = "current_thread")]
async fn a_vf_is_provisioned_read_back_bound_to_vfio_and_released() {
    let mut host = SriovHost::boot().await.unwrap_or_else(|e| panic!("{e}"));
    let pf = host.pf.clone();
    let before = host.vf_snapshot().await;
    // A rate limit too: igb takes one while its link runs at 1 Gb/s, as the emulated one does.
    let d = descriptor(&mut host, 100).await;

    let (rc, out) = host
        .vfmig(&format!("provision --pf {pf} --descriptor /tmp/src.json --json"))
        .await;
    assert_eq!(rc, 0, "{out}");
    let got = json(&out);
    assert_eq!(got["index"], 0, "the first free VF: {out}");
    let line = host.ip_vf_line(0).await;
    for want in [
        &format!("link/ether {MAC}"),
        "vlan 100",
        "max_tx_rate 100Mbps",
        "spoof checking off",
        "trust on",
    ] {
        assert!(
            line.contains(want),
            "`ip -d link show {pf}`: {want:?} missing from {line}"
        );
    }
    let (address, driver) = host.vf_driver(0).await;
    assert_eq!(
        (address.as_str(), driver.as_str()),
        (got["address"].as_str().unwrap_or_default(), "vfio-pci")
    );
    let (rc, out) = host.vfmig(&format!("describe --pf {pf} --vf 0")).await;
    assert_eq!(rc, 0, "{out}");
    assert_eq!(json(&out)["vf"], d["vf"], "vfmig reads back what it set");
    let (rc, out) = host.vfmig(&format!("offer --pf {pf}")).await;
    assert_eq!(rc, 0, "{out}");
    assert_eq!(json(&out)["free_vfs"], serde_json::json!([1, 2, 3]), "VF 0 is taken");

    let (rc, out) = host.vfmig(&format!("release --pf {pf} --vf 0")).await;
    assert_eq!(rc, 0, "{out}");
    assert_eq!(host.vf_snapshot().await, before, "released: the VFs as they were");
}

#[tokio::test(flavor = "current_thread")]
async fn a_failure_at_each_step_leaves_the_vf_as_it_was() {
    let mut host = SriovHost::boot().await.unwrap_or_else(|e| panic!("{e}"));
    let pf = host.pf.clone();
    let before = host.vf_snapshot().await;
    let mut d = descriptor(&mut host, 100).await;
    for step in ["pick", "mac", "vlan", "spoof-check", "trust", "rate", "vfio"] {
        let (rc, out) = host
            .vfmig(&format!(
                "provision --pf {pf} --descriptor /tmp/src.json --fail-after {step}"
            ))
            .await;
        assert_eq!(rc, 2, "{step}: {out}");
        assert!(
            out.contains(&format!("failure injected after step {step}; every step was undone")),
            "{step}: {out}"
        );
        assert_eq!(host.vf_snapshot().await, before, "after a failure at {step}");
    }
    // A real refusal, from the kernel: a rate above the link's speed, after MAC, VLAN, spoof
    // checking and trust were set.
    d["vf"]["max_tx_rate"] = 100_000.into();
    host.write("/tmp/fast.json", &d.to_string()).await;
    let (rc, out) = host
        .vfmig(&format!("provision --pf {pf} --descriptor /tmp/fast.json"))
        .await;
    assert_eq!(rc, 2, "{out}");
    assert!(
        out.contains("setting VF 0's rate") && out.contains("every step was undone"),
        "{out}"
    );
    assert_eq!(host.vf_snapshot().await, before, "after the kernel refused the rate");
    // Without vfio-pci nothing is touched.
    host.shell.ok("rmmod vfio-pci").await.unwrap_or_else(|e| panic!("{e}"));
    let (rc, out) = host
        .vfmig(&format!("provision --pf {pf} --descriptor /tmp/src.json"))
        .await;
    assert_eq!(rc, 2, "{out}");
    assert!(out.contains("modprobe vfio-pci"), "{out}");
    assert_eq!(host.vf_snapshot().await, before, "without vfio-pci");
}

#[tokio::test(flavor = "current_thread")]
async fn check_answers_compatible_or_not_with_the_reason() {
    let mut host = SriovHost::boot().await.unwrap_or_else(|e| panic!("{e}"));
    let pf = host.pf.clone();
    let d = descriptor(&mut host, 0).await;
    let policy = "--allow-vlan 0 --allow-vlan 100 --allow-trust";
    let check = |extra: &str| format!("check --descriptor /tmp/src.json --pf {pf} {extra}");

    // Compatible, with the warning that only vfmig-host migrate moves the VF's state (standard
    // error, which the shell merges after the verdict; a field of the JSON).
    let (rc, out) = host.vfmig(&check(policy)).await;
    let mut lines = out.trim().lines();
    assert_eq!(
        (rc, lines.next()),
        (0, Some("compatible: VF 0 on the destination can take it")),
        "{out}"
    );
    let warning = lines.next().unwrap_or_default();
    assert!(
        warning.starts_with("warning: a plain migration") && warning.contains("failover_pair_id"),
        "{out}"
    );
    assert!(
        warning.ends_with("use vfmig-host migrate") && lines.next().is_none(),
        "{out}"
    );
    let (rc, out) = host.vfmig(&check(&format!("{policy} --json"))).await;
    assert_eq!(rc, 0, "{out}");
    let verdict = json(&out);
    assert_eq!(verdict["compatible"], true);
    assert!(
        verdict["warning"]
            .as_str()
            .is_some_and(|w| w.contains("failover_pair_id")),
        "{out}"
    );

    let mut other = d.clone();
    other["pf"]["device"] = 0x1533.into();
    host.write("/tmp/i210.json", &other.to_string()).await;
    let (rc, out) = host
        .vfmig(&format!("check --descriptor /tmp/i210.json --pf {pf} {policy}"))
        .await;
    assert_eq!(rc, 1, "{out}");
    assert!(
        out.contains("the destination PF is 8086:10c9") && out.contains("8086:1533"),
        "{out}"
    );

    let (rc, out) = host.vfmig(&check("--allow-vlan 200 --allow-trust --json")).await;
    assert_eq!(rc, 1, "{out}");
    let verdict = json(&out);
    assert_eq!(verdict["compatible"], false);
    assert_eq!(
        verdict["reasons"],
        serde_json::json!([{"reason": "vlan-not-allowed", "vlan": 100, "allowed": "200"}])
    );

    let (rc, out) = host.vfmig(&check("--allow-vlan 100")).await;
    assert_eq!(rc, 1, "{out}");
    assert!(
        out.contains("the source VF is trusted and the destination does not allow trusted VFs"),
        "{out}"
    );

    // Every VF taken, by provisionings run at once (as two hooks for two arriving VMs may):
    // each gets a VF of its own.
    let all = (0..VFS)
        .map(|i| format!("vfmig-host provision --pf {pf} --descriptor /tmp/src.json --json > /tmp/p{i}.json &"))
        .collect::<String>();
    host.shell
        .ok(&format!("{all} wait"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut taken = Vec::new();
    for i in 0..VFS {
        let out = host
            .shell
            .ok(&format!("cat /tmp/p{i}.json"))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        taken.push(json(&out)["index"].as_u64().unwrap_or_else(|| panic!("{out}")));
    }
    taken.sort();
    assert_eq!(taken, [0, 1, 2, 3], "concurrent provisionings");
    let (rc, out) = host.vfmig(&check(policy)).await;
    assert_eq!(rc, 1, "{out}");
    assert!(
        out.contains(&format!("the destination PF {pf} has no free VF")),
        "{out}"
    );

    // migrate checks first: an incompatible offer is refused before QEMU is even contacted
    // (the sockets named here do not exist), a compatible one gets as far as QEMU.
    let (rc, out) = host.vfmig(&format!("offer --pf {pf} {policy} > /tmp/full.json")).await;
    assert_eq!(rc, 0, "{out}");
    let migrate = |offer: &str| {
        format!(
            "migrate --qmp /run/none.sock --agent /run/none-agent.sock --vf vf --uri tcp:198.18.0.99:4444 \
             --descriptor /tmp/src.json --offer {offer} 2>&1"
        )
    };
    let (rc, out) = host.vfmig(&migrate("/tmp/full.json")).await;
    assert_eq!(rc, 1, "{out}");
    assert!(
        out.contains("nothing was changed") && out.contains("no free VF"),
        "{out}"
    );
    for index in 0..VFS {
        let (rc, out) = host.vfmig(&format!("release --pf {pf} --vf {index}")).await;
        assert_eq!(rc, 0, "{out}");
    }
    let (rc, out) = host.vfmig(&format!("offer --pf {pf} {policy} > /tmp/free.json")).await;
    assert_eq!(rc, 0, "{out}");
    let (rc, out) = host.vfmig(&migrate("/tmp/free.json")).await;
    assert_eq!(rc, 2, "{out}");
    assert!(out.contains("source QMP /run/none.sock"), "{out}");

    // Documents that do not validate are refused by name.
    host.write("/tmp/v2.json", &d.to_string().replacen("\"major\":1", "\"major\":2", 1))
        .await;
    let (rc, out) = host
        .vfmig("check --descriptor /tmp/v2.json --offer /tmp/free.json")
        .await;
    assert_eq!(rc, 2, "{out}");
    assert!(out.contains("has version 2.0"), "{out}");
    host.write(
        "/tmp/junk.json",
        "{\"version\": {\"major\": 1, \"minor\": 0}, \"pf\": 7}",
    )
    .await;
    let (rc, out) = host
        .vfmig("check --descriptor /tmp/junk.json --offer /tmp/free.json")
        .await;
    assert_eq!(rc, 2, "{out}");
    assert!(out.contains("the VF descriptor is not valid"), "{out}");
    // An endless one is refused by its size, not read to the end.
    let (rc, out) = host
        .vfmig("check --descriptor - --offer /tmp/free.json < /dev/zero")
        .await;
    assert_eq!(rc, 2, "{out}");
    assert!(
        out.contains("the VF descriptor is larger than the 65536 bytes allowed"),
        "{out}"
    );
}

/// A domain as libvirt hands the destination's hook an incoming vfmig migration: its VF a
/// hostdev on the source's PCI address, listed for vfmig on network "tenant", and vfmig-host's
/// mark made at `at` with the source VF's descriptor (none: a plain migration).
fn incoming(at: Option<u64>, descriptor: &Value) -> String {
    use vfmig_host::domain_xml::metadata::{with_mark, Mark, MarkedVf};
    let xml = "<domain type='kvm'><name>vm1</name><metadata>\
        <vfmig:vfs xmlns:vfmig='urn:vfmig:domain:1'><vfmig:vf alias='ua-vf' network='tenant'/></vfmig:vfs>\
        </metadata><devices><interface type='hostdev' managed='no'><mac address='52:54:00:aa:00:01'/>\
        <source><address type='pci' domain='0x0000' bus='0x3b' slot='0x02' function='0x1'/></source>\
        <alias name='ua-vf'/></interface></devices></domain>";
    match at {
        Some(at) => {
            let vfs = vec![MarkedVf {
                alias: "ua-vf".into(),
                descriptor: Some(descriptor.to_string()),
            }];
            with_mark(xml, &Mark { at, vfs }).unwrap()
        }
        None => xml.to_owned(),
    }
}

/// The hook as libvirt runs it, the domain XML at /tmp/in.xml on its standard input; what it
/// prints for libvirt goes to /tmp/out.xml, what it says to libvirt's caller is the output.
fn hook(domain: &str, operation: &str) -> String {
    format!("libvirt-hook --config /tmp/host.toml {domain} {operation} - < /tmp/in.xml 2>&1 > /tmp/out.xml")
}

#[tokio::test(flavor = "current_thread")]
async fn the_libvirt_hook_provisions_vfmig_s_migration_and_releases_the_vf_when_the_domain_leaves() {
    let mut host = SriovHost::boot().await.unwrap_or_else(|e| panic!("{e}"));
    let pf = host.pf.clone();
    let before = host.vf_snapshot().await;
    let d = descriptor(&mut host, 0).await;
    let config = |vlans: &str| {
        format!(
            "[networks.tenant]\npf = \"{pf}\"\nallow_vlans = [{vlans}]\nallow_trust = true\n\n\
             [hook]\nlog = \"/tmp/hook.log\"\nstate_dir = \"/tmp/hook-state\"\n"
        )
    };
    let now: u64 = host.shell.ok("date +%s").await.unwrap().trim().parse().unwrap();

    // A plain migration: refused, naming vfmig, nothing taken.
    host.write("/tmp/host.toml", &config("100")).await;
    host.write("/tmp/in.xml", &incoming(None, &d)).await;
    let (rc, out) = host.vfmig(&hook("vm1", "migrate begin")).await;
    assert_eq!(rc, 1, "{out}");
    assert!(out.contains("vfmig-host migrate --libvirt vm1"), "{out}");
    // vfmig's, but VLAN 100 is not allowed here: refused with the reason, nothing taken.
    host.write("/tmp/host.toml", &config("200")).await;
    host.write("/tmp/in.xml", &incoming(Some(now), &d)).await;
    let (rc, out) = host.vfmig(&hook("vm1", "migrate begin")).await;
    assert_eq!(rc, 1, "{out}");
    assert!(
        out.contains("ua-vf on network tenant") && out.contains("VLAN 100"),
        "{out}"
    );
    assert_eq!(host.vf_snapshot().await, before, "a refusal took a VF");

    // Allowed: a VF like the source's, bound to vfio-pci, and the definition libvirt starts
    // the domain from names it.
    host.write("/tmp/host.toml", &config("100")).await;
    let (rc, out) = host.vfmig(&hook("vm1", "migrate begin")).await;
    assert_eq!(rc, 0, "{out}");
    let line = host.ip_vf_line(0).await;
    for want in [
        &format!("link/ether {MAC}"),
        "vlan 100",
        "spoof checking off",
        "trust on",
    ] {
        assert!(line.contains(want), "{want:?} missing from {line}");
    }
    let (address, driver) = host.vf_driver(0).await;
    assert_eq!(driver, "vfio-pci");
    let definition = host.shell.ok("cat /tmp/out.xml").await.unwrap();
    assert_eq!(
        vfmig_host::domain_xml::metadata::host_address(&definition, "ua-vf").unwrap(),
        Some(address.clone()),
        "{definition}"
    );
    let log = host.shell.ok("cat /tmp/hook.log").await.unwrap();
    assert!(
        log.contains(&format!("vm1: ua-vf: provisioned {pf} VF 0 ({address})")),
        "{log}"
    );

    // Other operations pass and change nothing; the domain leaving hands the VF back.
    let (rc, out) = host.vfmig(&hook("vm1", "started begin")).await;
    assert_eq!(rc, 0, "{out}");
    let (rc, out) = host.vfmig(&hook("vm1", "release end")).await;
    assert_eq!(rc, 0, "{out}");
    assert_eq!(host.vf_snapshot().await, before, "released: the VFs as they were");
    let (rc, out) = host
        .shell
        .run("test -e /tmp/hook-state/vm1.json", std::time::Duration::from_secs(5))
        .await
        .unwrap();
    assert_ne!(rc, 0, "the record outlived the release: {out}");
}

/// A provisioned VF driven by a VF driver, as a guest's would: igbvf (in the host VM here)
/// binds it, comes up with the MAC provisioning set, and passes traffic to the PF's side.
#[tokio::test(flavor = "current_thread")]
async fn a_provisioned_vf_works_with_a_vf_driver() {
    let mut host = SriovHost::boot().await.unwrap_or_else(|e| panic!("{e}"));
    let pf = host.pf.clone();
    let mut d = descriptor(&mut host, 0).await;
    // Untagged and untrusted, so the PF's own untagged address is on the VF's network.
    d["vf"]["vlan"] = 0.into();
    d["vf"]["trust"] = false.into();
    host.write("/tmp/plain.json", &d.to_string()).await;
    let (rc, out) = host
        .vfmig(&format!("provision --pf {pf} --descriptor /tmp/plain.json --json"))
        .await;
    assert_eq!(rc, 0, "{out}");
    let address = json(&out)["address"]
        .as_str()
        .unwrap_or_else(|| panic!("{out}"))
        .to_owned();
    let dev = format!("/sys/bus/pci/devices/{address}");
    let ip = vfmig_testbed::sriov_host::IP;
    host.shell
        .ok(&format!(
            "echo igbvf > {dev}/driver_override && echo {address} > {dev}/driver/unbind && \
             echo {address} > /sys/bus/pci/drivers_probe && \
             for i in $(seq 100); do [ -d {dev}/net ] && exit 0; sleep 0.1; done; exit 1"
        ))
        .await
        .unwrap_or_else(|e| panic!("igbvf never bound {address}: {e}"));
    let vf = host
        .shell
        .ok(&format!("ls {dev}/net"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let vf = vf.trim();
    let mac = host
        .shell
        .ok(&format!("cat /sys/class/net/{vf}/address"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(mac.trim(), MAC, "igbvf's MAC is the one provisioned");
    // The VF in a namespace of its own, so that its traffic to the PF's address leaves
    // through it and comes back through the PF (the emulated igb switches between the two).
    host.shell
        .ok(&format!(
            "{ip} netns add vf && {ip} link set {vf} netns vf && {ip} -n vf addr add 198.18.5.2/24 dev {vf} && \
             {ip} -n vf link set {vf} up && ip addr add 198.18.5.1/24 dev {pf}"
        ))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // igbvf's link comes up a few seconds after the VF is set up.
    let (rc, out) = host
        .shell
        .run(
            &format!(
                "for i in $(seq 100); do [ \"$({ip} -n vf -br link show {vf} | grep -c LOWER_UP)\" = 1 ] && break; sleep 0.2; done; \
                 {ip} netns exec vf ping -c 5 -W 2 198.18.5.1 || {{ {ip} -n vf -d link show {vf}; dmesg | tail -20; exit 1; }}"
            ),
            std::time::Duration::from_secs(60),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(rc, 0, "no traffic through the VF: {out}");
    assert!(out.contains(" 0% packet loss"), "{out}");
}
