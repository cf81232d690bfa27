//! A saved state opens only when it is whole, unaltered, of a known format and consistent.

use std::net::IpAddr;

use vfmig_protocol::netstate::{consts::*, *};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn sample() -> SavedState {
    let mut interface = InterfaceState {
        identity: Identity {
            name: "eth1".into(),
            ifindex: 3,
            mac: "02:00:00:aa:bb:01".parse().unwrap(),
            permanent_mac: Some("52:54:00:12:34:56".parse().unwrap()),
            driver: Some("e1000e".into()),
            pci: Some(PciIdentity {
                address: "0000:01:00.0".into(),
                vendor: 0x8086,
                device: 0x10d3,
                subsystem_vendor: 0x8086,
                subsystem_device: 0,
            }),
        },
        mtu: 1500,
        admin_up: true,
        addresses: vec![
            Address {
                address: ip("198.18.0.10"),
                prefix_len: 24,
                peer: None,
                broadcast: Some("198.18.0.255".parse().unwrap()),
                label: Some("eth1".into()),
                scope: 0,
                flags: 0,
                route_metric: None,
                valid_lft: None,
                preferred_lft: None,
            },
            Address {
                address: ip("2001:db8::10"),
                prefix_len: 64,
                peer: None,
                broadcast: None,
                label: None,
                scope: 0,
                flags: 0x200,
                route_metric: Some(50),
                valid_lft: Some(3600),
                preferred_lft: Some(1800),
            },
        ],
        routes: vec![Route {
            table: 100,
            destination: ip("198.51.100.0"),
            prefix_len: 24,
            metric: Some(10),
            tos: 0,
            gateway: Some(ip("198.18.0.1")),
            onlink: false,
            protocol: 4,
            scope: 0,
            kind: RTN_UNICAST,
            source: Some(ip("198.18.0.10")),
            metrics: Default::default(),
            congestion_control: None,
            nexthops: Vec::new(),
        }],
        neighbours: vec![Neighbour {
            address: ip("198.18.0.1"),
            lladdr: "02:00:00:00:00:01".parse().unwrap(),
            state: NUD_PERMANENT,
            router: false,
        }],
        uppers: Vec::new(),
        port: None,
        rules: Vec::new(),
        sysctls: Default::default(),
    };
    interface.sort();
    SavedState {
        captured_unix_ms: 1_700_000_000_000,
        interface,
    }
}

#[test]
fn a_sealed_state_opens_to_the_same_state() {
    let state = sample();
    let doc = seal(&state);
    assert_eq!(open(doc.as_bytes()).unwrap(), state);
    assert!(doc.contains(&digest(&state)));
}

#[test]
fn default_routes_of_both_families_validate() {
    let mut state = sample();
    for dst in ["0.0.0.0", "::"] {
        let mut r = state.interface.routes[0].clone();
        r.destination = ip(dst);
        r.prefix_len = 0;
        r.gateway = Some(ip(if dst == "::" { "2001:db8::1" } else { "198.18.0.1" }));
        r.source = None;
        state.interface.routes.push(r);
    }
    state.interface.sort();
    assert_eq!(open(seal(&state).as_bytes()).unwrap(), state);
    let mut host = state.clone();
    host.interface.routes.retain(|r| r.prefix_len == 0);
    host.interface.routes[1].destination = ip("::1");
    assert!(matches!(open(seal(&host).as_bytes()), Err(StateError::Inconsistent(_))));
}

#[test]
fn a_truncated_document_is_called_truncated() {
    let doc = seal(&sample());
    for cut in [1, doc.len() / 3, doc.len() / 2, doc.len() - 1] {
        assert_eq!(open(&doc.as_bytes()[..cut]), Err(StateError::Truncated), "cut at {cut}");
    }
}

#[test]
fn an_altered_document_fails_its_digest() {
    let doc = seal(&sample()).replace("198.18.0.10", "198.18.0.11");
    assert!(matches!(open(doc.as_bytes()), Err(StateError::DigestMismatch { .. })));
    let doc = seal(&sample()).replace("\"mtu\":1500", "\"mtu\":9000");
    assert!(matches!(open(doc.as_bytes()), Err(StateError::DigestMismatch { .. })));
    // The digest covers the state's bytes as written: even an equal state, re-spaced, is altered.
    let doc = seal(&sample()).replace("\"mtu\":1500", "\"mtu\": 1500");
    assert!(matches!(open(doc.as_bytes()), Err(StateError::DigestMismatch { .. })));
}

#[test]
fn an_unknown_format_is_named_before_anything_else_is_read() {
    let doc = seal(&sample()).replacen("\"format\":1", "\"format\":2", 1);
    assert_eq!(open(doc.as_bytes()), Err(StateError::UnknownFormat { found: 2 }));
    let doc = r#"{"format":3,"whatever":"a future layout"}"#;
    assert_eq!(open(doc.as_bytes()), Err(StateError::UnknownFormat { found: 3 }));
}

#[test]
fn garbage_and_oversize_documents_are_refused() {
    assert!(matches!(open(b"\x00\x01binary"), Err(StateError::Malformed(_))));
    assert!(matches!(
        open(br#"{"format":1,"digest":"x","state":{},"extra":1}"#),
        Err(StateError::Malformed(_))
    ));
    let huge = vec![b' '; MAX_DOCUMENT + 1];
    assert_eq!(open(&huge), Err(StateError::TooLarge { len: MAX_DOCUMENT + 1 }));
}

#[test]
fn an_inconsistent_state_says_where() {
    type Edit = fn(&mut InterfaceState);
    let cases: Vec<(Edit, &str, &str)> = vec![
        (
            |s| s.identity.name = "a/b".into(),
            "identity.name",
            "not a valid interface name",
        ),
        (|s| s.mtu = 1000, "mtu", "outside 1280..=65535"),
        (|s| s.addresses[0].prefix_len = 33, "addresses[0]", "prefix length"),
        (|s| s.addresses[1].address = ip("fe80::1"), "addresses[1]", "link-local"),
        (|s| s.addresses[0].flags = 0x80, "addresses[0]", "kernel-state bits"),
        (
            |s| s.addresses[1].preferred_lft = Some(7200),
            "addresses[1]",
            "preferred lifetime exceeds",
        ),
        (
            |s| s.addresses.push(s.addresses[0].clone()),
            "addresses[2]",
            "listed twice",
        ),
        (
            |s| s.routes[0].gateway = Some(ip("2001:db8::1")),
            "routes[0]",
            "another address family",
        ),
        (
            |s| s.routes[0].destination = ip("198.51.100.7"),
            "routes[0]",
            "bits set beyond its prefix",
        ),
        (|s| s.routes[0].table = 255, "routes[0]", "local table"),
        (|s| s.routes[0].protocol = RTPROT_KERNEL, "routes[0]", "never saved"),
        (|s| s.routes.push(s.routes[0].clone()), "routes[1]", "listed twice"),
        (
            |s| {
                s.routes[0].metrics.insert(RTAX_CC_ALGO, 1);
            },
            "routes[0]",
            "not a numeric RTAX",
        ),
        (
            |s| s.routes[0].congestion_control = Some("a name far too long".into()),
            "routes[0]",
            "congestion control must be",
        ),
        (
            |s| s.neighbours[0].state = NUD_FAILED,
            "neighbours[0]",
            "no usable link-layer address",
        ),
        (
            |s| s.neighbours[0].state = NUD_NOARP | NUD_PERMANENT,
            "neighbours[0]",
            "no usable link-layer address",
        ),
        (
            |s| s.identity.mac = "01:00:5e:00:00:01".parse().unwrap(),
            "identity.mac",
            "not a unicast",
        ),
    ];
    for (edit, at, problem) in cases {
        let mut state = sample();
        edit(&mut state.interface);
        let err = open(seal(&state).as_bytes()).unwrap_err();
        let StateError::Inconsistent(inc) = &err else {
            panic!("{err} is not an inconsistency")
        };
        assert!(
            inc.at.starts_with(at) && inc.problem.contains(problem),
            "{err}: want {at}: {problem}"
        );
    }
}

/// NetworkManager adds its addresses with IFA_F_NOPREFIXROUTE and their prefix routes itself,
/// as protocol `kernel`: those routes are state (the kernel will not make them again); any
/// other `kernel` route is still refused.
#[test]
fn a_kernel_route_is_saved_only_as_the_prefix_route_of_a_noprefixroute_address() {
    let prefix_route = |destination: &str, prefix_len, table| Route {
        table,
        destination: ip(destination),
        prefix_len,
        metric: Some(100),
        tos: 0,
        gateway: None,
        onlink: false,
        protocol: RTPROT_KERNEL,
        scope: 0,
        kind: RTN_UNICAST,
        source: None,
        metrics: Default::default(),
        congestion_control: None,
        nexthops: Vec::new(),
    };
    // 2001:db8::10/64 carries NOPREFIXROUTE in the sample; 198.18.0.10/24 does not.
    let mut ok = sample();
    ok.interface.routes.push(prefix_route("2001:db8::", 64, 254));
    ok.interface.sort();
    assert_eq!(open(seal(&ok).as_bytes()).unwrap(), ok);
    assert_eq!(network_of(ip("2001:db8::10"), 64), ip("2001:db8::"));
    assert_eq!(network_of(ip("198.18.12.130"), 25), ip("198.18.12.128"));
    assert_eq!(network_of(ip("198.18.0.10"), 0), ip("0.0.0.0"));

    for route in [
        prefix_route("198.18.0.0", 24, 254),
        prefix_route("2001:db8::", 64, 100),
        prefix_route("2001:db8::", 48, 254),
    ] {
        let mut bad = sample();
        bad.interface.routes.push(route.clone());
        bad.interface.sort();
        let err = open(seal(&bad).as_bytes()).unwrap_err().to_string();
        assert!(err.contains("never saved"), "{route:?}: {err}");
    }
}

/// Routes that share the kernel's key and differ only in their source (a DHCP client's second
/// lease leaves two such default routes) are a state the kernel holds, so one that opens.
#[test]
fn routes_differing_only_in_their_source_are_a_valid_state() {
    let mut state = sample();
    let mut second = state.interface.routes[0].clone();
    state.interface.routes[0].source = Some(ip("198.18.0.10"));
    second.source = Some(ip("198.18.0.11"));
    state.interface.routes.push(second);
    let opened = open(seal(&state).as_bytes()).expect("two routes told apart by their source");
    assert_eq!(opened, state);
}

/// A VF with a VLAN carrying its own state (and a macvlan on that), a bridge membership, a
/// rule, tuned sysctls and a two-legged route: everything issue 23 added to the model.
fn stacked() -> SavedState {
    let mut saved = sample();
    let s = &mut saved.interface;
    let mut vlan = sample().interface;
    vlan.identity.name = "eth1.10".into();
    vlan.identity.pci = None;
    vlan.identity.driver = None;
    let mut macvlan = sample().interface;
    macvlan.identity.name = "mv0".into();
    macvlan.identity.mac = "02:00:00:aa:bb:02".parse().unwrap();
    vlan.uppers.push(Upper {
        kind: UpperKind::Macvlan { mode: 4, flags: 0 },
        state: macvlan,
    });
    s.uppers.push(Upper {
        kind: UpperKind::Vlan {
            id: 10,
            protocol: 0x8100,
            flags: 1,
        },
        state: vlan,
    });
    s.port = Some(Port {
        master: "br0".into(),
        options: PortOptions::Bridge {
            cost: 100,
            priority: 32,
            learning: true,
            unicast_flood: true,
            hairpin: false,
            guard: false,
            protect: false,
            fast_leave: false,
        },
    });
    s.rules.push(Rule {
        ipv6: false,
        priority: 100,
        table: 100,
        action: 1,
        source: Some((ip("198.18.0.10"), 32)),
        destination: None,
        iif: None,
        oif: Some("eth1".into()),
        fwmark: None,
        fwmask: None,
        tos: 0,
        flags: 0,
        suppress_prefix_len: None,
        protocol: 4,
    });
    s.sysctls.insert("ipv4/rp_filter".into(), "2".into());
    s.sysctls.insert("ipv6/accept_ra".into(), "0".into());
    let mut multipath = s.routes[0].clone();
    multipath.destination = ip("203.0.113.0");
    multipath.prefix_len = 24;
    multipath.gateway = None;
    multipath.nexthops = vec![
        Nexthop {
            device: None,
            gateway: Some(ip("198.18.0.1")),
            weight: 1,
            onlink: false,
        },
        Nexthop {
            device: Some("sb0".into()),
            gateway: Some(ip("198.18.1.1")),
            weight: 2,
            onlink: false,
        },
    ];
    s.routes.push(multipath);
    s.sort();
    saved
}

#[test]
fn a_stacked_state_opens_to_the_same_state() {
    let state = stacked();
    assert_eq!(open(seal(&state).as_bytes()).unwrap(), state);
    assert!(differences(&state.interface, &state.interface).is_empty());
}

/// A document written before uppers, ports, rules, sysctls and legs existed reads as having
/// none of them.
#[test]
fn a_document_without_the_newer_fields_still_opens() {
    let state = sample();
    let doc = seal(&state);
    for field in ["uppers", "port", "rules", "sysctls", "nexthops"] {
        assert!(!doc.contains(&format!("\"{field}\"")), "{field} is written while empty");
    }
    assert_eq!(open(doc.as_bytes()).unwrap(), state);
}

#[test]
fn an_inconsistent_stack_says_where() {
    type Edit = fn(&mut InterfaceState);
    let cases: Vec<(Edit, &str, &str)> = vec![
        (
            |s| {
                s.uppers[0].kind = UpperKind::Vlan {
                    id: 4095,
                    protocol: 0x8100,
                    flags: 0,
                }
            },
            "uppers[0] (eth1.10)",
            "outside 1..=4094",
        ),
        (
            |s| {
                s.uppers[0].kind = UpperKind::Vlan {
                    id: 10,
                    protocol: 0x0800,
                    flags: 0,
                }
            },
            "uppers[0] (eth1.10)",
            "neither 802.1Q nor 802.1ad",
        ),
        (
            |s| s.uppers[0].state.uppers[0].state.mtu = 10,
            "uppers[0] (eth1.10).uppers[0] (mv0).mtu",
            "outside",
        ),
        (
            |s| s.uppers[0].state.identity.name = "eth1".into(),
            "uppers[0] (eth1)",
            "listed twice",
        ),
        (
            |s| s.uppers[0].state.port = s.port.clone(),
            "uppers[0] (eth1.10)",
            "port of a master",
        ),
        (
            |s| s.port.as_mut().unwrap().master = "".into(),
            "port.master",
            "interface name",
        ),
        (
            |s| {
                let r = s.routes.iter_mut().find(|r| !r.nexthops.is_empty()).unwrap();
                r.nexthops[0].device = Some("eth2".into());
            },
            "routes[",
            "no leg of the multipath route uses this interface",
        ),
        (
            |s| {
                let r = s.routes.iter_mut().find(|r| !r.nexthops.is_empty()).unwrap();
                r.nexthops[1].weight = 0;
            },
            "routes[",
            "outside 1..=256",
        ),
        (
            |s| {
                let r = s.routes.iter_mut().find(|r| !r.nexthops.is_empty()).unwrap();
                r.nexthops.pop();
            },
            "routes[",
            "two legs or more",
        ),
        (
            |s| s.rules[0].source = Some((ip("2001:db8::1"), 128)),
            "rules[0] (priority 100)",
            "does not fit the rule's family",
        ),
        (|s| s.rules.push(s.rules[0].clone()), "rules[1]", "listed twice"),
        (
            |s| {
                s.sysctls.insert("ipv4/../../../kernel/core_pattern".into(), "1".into());
            },
            "sysctls.ipv4/../../../kernel/core_pattern",
            "not a setting restore carries over",
        ),
        (
            |s| {
                s.sysctls.insert("ipv4/rp_filter".into(), "2; reboot".into());
            },
            "sysctls.ipv4/rp_filter",
            "not a number",
        ),
    ];
    for (edit, at, problem) in cases {
        let mut state = stacked();
        edit(&mut state.interface);
        let err = open(seal(&state).as_bytes()).unwrap_err();
        let StateError::Inconsistent(inc) = &err else {
            panic!("{err} is not an inconsistency")
        };
        assert!(
            inc.at.starts_with(at) && inc.problem.contains(problem),
            "{err}: want {at}: {problem}"
        );
    }
}

/// Uppers nested past the bound are refused, so a hostile document cannot make restore
/// recurse without end.
#[test]
fn uppers_nested_too_deep_are_refused() {
    let mut state = sample();
    let mut inner = sample().interface;
    for depth in 0..MAX_UPPER_DEPTH {
        let mut outer = sample().interface;
        outer.identity.name = format!("u{depth}");
        inner.identity.name = format!("u{depth}x");
        outer.uppers.push(Upper {
            kind: UpperKind::Macvlan { mode: 4, flags: 0 },
            state: inner,
        });
        inner = outer;
    }
    state.interface.uppers = inner.uppers;
    let err = open(seal(&state).as_bytes()).unwrap_err().to_string();
    assert!(err.contains("nest deeper than"), "{err}");
}
