//! Every message round-trips, and every kind of bad input gets its defined error.

use vfmig_protocol::frame::{self, Decoder, FrameError, MAX_PAYLOAD};
use vfmig_protocol::message::*;
use vfmig_protocol::request::{Progress, ReplyError, RequestTracker};
use vfmig_protocol::{ErrorCode, MacAddr};

fn mac() -> MacAddr {
    "02:00:00:aa:bb:01".parse().unwrap()
}

fn selector() -> InterfaceSelector {
    InterfaceSelector {
        name: Some("eth1".into()),
        mac: Some(mac()),
        pci_address: Some("0000:01:00.0".into()),
    }
}

fn host_messages() -> Vec<HostMessage> {
    vec![
        HostMessage::Hello(Hello::ours("vfmig-host 0.1.0", Capabilities::default())),
        HostMessage::Sync { nonce: u64::MAX },
        HostMessage::PrepareUnplug(PrepareUnplug {
            interface: selector(),
            deadline_ms: 5000,
            standby: StandbyRequest::Use(InterfaceSelector {
                name: Some("eth1".into()),
                ..Default::default()
            }),
            accept_loss: true,
        }),
        HostMessage::Restore(Restore {
            saved: "eth1".into(),
            onto: selector(),
            restore_mac: true,
            digest: Some(format!("sha256:{}", "ab".repeat(32))),
        }),
        HostMessage::StatusQuery,
        HostMessage::TrackDma(TrackDma { interface: selector() }),
        HostMessage::StopDmaTracking,
        HostMessage::Keep(Keep {
            interface: selector(),
            saved: Some(SavedRef {
                interface: "eth1".into(),
                digest: format!("sha256:{}", "ab".repeat(32)),
            }),
        }),
    ]
}

fn guest_messages() -> Vec<GuestMessage> {
    vec![
        GuestMessage::Hello(Hello::ours(
            "vfmig-guestd 0.1.0",
            Capabilities {
                kernel_hook: true,
                network_manager: false,
                standby: Some("eth0".into()),
                nic_owners: vec!["systemd-networkd".into()],
            },
        )),
        GuestMessage::SyncAck { nonce: 7 },
        GuestMessage::StateSaved(StateSaved {
            interface: "eth1".into(),
            digest: format!("sha256:{}", "ab".repeat(32)),
            addresses: 6,
            routes: 8,
            neighbours: 50,
            standby: Some("eth2".into()),
            location: Some("/run/vfmig/eth1.json".into()),
            lost: vec!["eth1.10 (vlan) is stacked on eth1: upper devices are not restored".into()],
        }),
        GuestMessage::UnplugReady(UnplugReady {
            interface: "eth1".into(),
        }),
        GuestMessage::Restored(Restored {
            interface: "eth1".into(),
            applied: 64,
            unchanged: 0,
            failed: vec!["route 198.18.5.0/24: Network is unreachable".into()],
            mismatches: vec![],
            duration_ms: 12,
            standby_released: Some("eth2".into()),
        }),
        GuestMessage::Status(Status {
            phase: Phase::Saved,
            saved: vec!["eth1".into()],
        }),
        GuestMessage::DmaTracking(DmaTracking {
            enabled: true,
            devices: vec![TrackedDevice {
                pci_address: "0000:01:00.0".into(),
                calls: 120,
                pages: 118,
            }],
        }),
        GuestMessage::Kept(Kept {
            saved: Some("eth1".into()),
            standby_released: Some("eth2".into()),
            failed: vec![],
        }),
        GuestMessage::Error(ErrorReply {
            code: ErrorCode::HookUnavailable,
            message: "modprobe vfmig_dirty: not found".into(),
        }),
    ]
}

/// 1.1 only added optional fields and new kinds: what a 1.0 peer sends still decodes, and a
/// digest that is not one is refused by name.
#[test]
fn a_restore_and_a_state_saved_of_version_1_0_still_decode() {
    let restore =
        r#"{"v":1,"id":4,"msg":{"type":"restore","body":{"saved":"eth1","onto":{"mac":"52:54:00:10:00:01"}}}}"#;
    let env = decode::<HostMessage>(restore.as_bytes()).unwrap();
    assert!(
        matches!(env.msg, HostMessage::Restore(Restore { digest: None, .. })),
        "{env:?}"
    );
    let saved = format!(
        r#"{{"v":1,"id":5,"msg":{{"type":"state_saved","body":{{"interface":"eth1","digest":"sha256:{}","addresses":1,"routes":1,"neighbours":1}}}}}}"#,
        "0".repeat(64)
    );
    let env = decode::<GuestMessage>(saved.as_bytes()).unwrap();
    assert!(
        matches!(env.msg, GuestMessage::StateSaved(StateSaved { location: None, .. })),
        "{env:?}"
    );
    let bad = r#"{"v":1,"id":6,"msg":{"type":"keep","body":{"interface":{"mac":"52:54:00:10:00:01"},"saved":{"interface":"eth1","digest":"md5:00"}}}}"#;
    let err = decode::<HostMessage>(bad.as_bytes()).unwrap_err();
    assert_eq!(err.request_id(), Some(6));
    assert!(err.to_string().contains("digest must start with sha256:"), "{err}");
}

fn decode_one<M: Message>(bytes: &[u8]) -> Result<Envelope<M>, MessageError> {
    let mut out = Decoder::new().push(bytes);
    assert_eq!(out.len(), 1, "exactly one frame");
    decode(&out.remove(0).expect("frame is intact"))
}

#[test]
fn every_message_round_trips_through_a_frame() {
    for (i, m) in host_messages().into_iter().enumerate() {
        let env = decode_one::<HostMessage>(&encode(i as u64, &m).unwrap()).unwrap();
        assert_eq!(env, Envelope { id: i as u64, msg: m });
    }
    for (i, m) in guest_messages().into_iter().enumerate() {
        let env = decode_one::<GuestMessage>(&encode(i as u64, &m).unwrap()).unwrap();
        assert_eq!(env, Envelope { id: i as u64, msg: m });
    }
    assert_eq!(HostMessage::KINDS.len(), host_messages().len());
    assert_eq!(GuestMessage::KINDS.len(), guest_messages().len());
}

#[test]
fn a_frame_cut_in_half_then_a_whole_frame_yields_truncated_then_the_frame() {
    let first = encode(1, &HostMessage::StatusQuery).unwrap();
    let second = encode(2, &HostMessage::Sync { nonce: 9 }).unwrap();
    let mut d = Decoder::new();
    assert!(
        d.push(&first[..first.len() / 2]).is_empty(),
        "half a frame waits for more"
    );
    let out = d.push(&second);
    assert!(matches!(out[0], Err(FrameError::Truncated { .. })), "{out:?}");
    let env: Envelope<HostMessage> = decode(out[1].as_ref().unwrap()).unwrap();
    assert_eq!(
        env,
        Envelope {
            id: 2,
            msg: HostMessage::Sync { nonce: 9 }
        }
    );
    assert_eq!(out.len(), 2);
}

#[test]
fn a_2_mib_frame_is_refused_without_buffering_and_the_next_frame_decodes() {
    let big = "x".repeat(2 << 20);
    assert!(frame::encode(&big).is_err(), "the encoder refuses it too");
    // Hand-built header declaring 2 MiB, followed by its payload and then a good frame.
    let mut stream = format!("\u{0}V1{:08x}{:08x}", 2 << 20, 0).into_bytes();
    stream[0] = frame::MARK;
    let mut d = Decoder::new();
    let mut out = d.push(&stream);
    for chunk in big.as_bytes().chunks(64 << 10) {
        out.extend(d.push(chunk));
        assert!(d.buffered() <= frame::HEADER_LEN + MAX_PAYLOAD);
        assert_eq!(d.buffered(), 0, "oversize payload bytes are dropped, not held");
    }
    out.extend(d.push(&encode(5, &HostMessage::StatusQuery).unwrap()));
    assert_eq!(out[0], Err(FrameError::TooLarge { declared: 2 << 20 }));
    assert_eq!(out.len(), 2, "{out:?}");
    assert_eq!(decode::<HostMessage>(out[1].as_ref().unwrap()).unwrap().id, 5);
}

#[test]
fn garbage_then_a_valid_frame_reports_the_garbage_and_decodes_the_frame() {
    let mut stream = b"login: root\r\n\x00\x01garbage".to_vec();
    let garbage = stream.len();
    stream.extend(encode(3, &HostMessage::StatusQuery).unwrap());
    let out = Decoder::new().push(&stream);
    assert_eq!(out[0], Err(FrameError::Garbage { bytes: garbage }));
    assert_eq!(
        decode::<HostMessage>(out[1].as_ref().unwrap()).unwrap().msg,
        HostMessage::StatusQuery
    );
}

#[test]
fn a_corrupted_payload_fails_its_checksum() {
    let mut bytes = encode(3, &HostMessage::StatusQuery).unwrap();
    let last = bytes.len() - 3;
    bytes[last] ^= 0x01;
    assert!(matches!(
        Decoder::new().push(&bytes)[0],
        Err(FrameError::Checksum { .. })
    ));
}

#[test]
fn an_unknown_frame_format_is_named() {
    let mut bytes = encode(3, &HostMessage::StatusQuery).unwrap();
    bytes[2] = b'9';
    assert_eq!(
        Decoder::new().push(&bytes)[0],
        Err(FrameError::UnknownFormat { found: '9' })
    );
}

fn framed(json: &str) -> Vec<u8> {
    Decoder::new().push(&frame::encode(json).unwrap()).remove(0).unwrap()
}

#[test]
fn an_unknown_message_type_is_named() {
    let err = decode::<HostMessage>(&framed(r#"{"v":1,"id":4,"msg":{"type":"format_disk","body":{}}}"#)).unwrap_err();
    assert_eq!(err, MessageError::UnknownType("format_disk".into()));
    // A guest message kind is unknown to the guest's decoder of host messages.
    let err = decode::<HostMessage>(&framed(r#"{"v":1,"id":4,"msg":{"type":"restored","body":{}}}"#)).unwrap_err();
    assert_eq!(err, MessageError::UnknownType("restored".into()));
}

#[test]
fn an_unknown_major_version_is_refused_but_hello_still_negotiates() {
    let err = decode::<HostMessage>(&framed(r#"{"v":2,"id":4,"msg":{"type":"status_query"}}"#)).unwrap_err();
    assert_eq!(err, MessageError::UnsupportedMajor { found: 2, supported: 1 });
    let hello = r#"{"v":7,"id":1,"msg":{"type":"hello","body":{"versions":{"min":{"major":7,"minor":0},"max":{"major":9,"minor":1}},"agent":"future","capabilities":{"kernel_hook":true,"teleport":true}}}}"#;
    let env: Envelope<HostMessage> = decode(&framed(hello)).unwrap();
    let HostMessage::Hello(h) = env.msg else {
        panic!("not a hello")
    };
    let err = vfmig_protocol::version::negotiate(vfmig_protocol::version::SUPPORTED, h.versions).unwrap_err();
    assert!(
        err.to_string().contains("1.0..=1.2") && err.to_string().contains("7.0..=9.1"),
        "{err}"
    );
}

#[test]
fn out_of_bounds_fields_are_invalid_with_the_request_id() {
    let long = "x".repeat(MAX_TEXT + 1);
    let bad = [
        (r#"{"v":1,"id":9,"msg":{"type":"prepare_unplug","body":{"interface":{},"deadline_ms":10}}}"#.to_string(), "names nothing"),
        (r#"{"v":1,"id":9,"msg":{"type":"restore","body":{"saved":"../../etc","onto":{"name":"eth1"}}}}"#.to_string(), "not a valid interface name"),
        (r#"{"v":1,"id":9,"msg":{"type":"prepare_unplug","body":{"interface":{"pci_address":"01:00.0"},"deadline_ms":10}}}"#.to_string(), "PCI address"),
        (format!(r#"{{"v":1,"id":9,"msg":{{"type":"hello","body":{{"versions":{{"min":{{"major":1,"minor":0}},"max":{{"major":1,"minor":0}}}},"agent":"{long}"}}}}}}"#), "at most 4096"),
        (format!(r#"{{"v":1,"id":9,"msg":{{"type":"hello","body":{{"versions":{{"min":{{"major":1,"minor":0}},"max":{{"major":1,"minor":0}}}},"agent":"a","capabilities":{{"nic_owners":{}}}}}}}}}"#, serde_json::json!(vec!["ifupdown"; 9])), "at most 8"),
        (r#"{"v":1,"id":9,"msg":{"type":"hello","body":{"versions":{"min":{"major":1,"minor":0},"max":{"major":1,"minor":0}},"agent":"a","capabilities":{"nic_owners":["a\nb"]}}}}"#.to_string(), "printable"),
    ];
    for (json, why) in bad {
        let err = decode::<HostMessage>(&framed(&json)).unwrap_err();
        assert_eq!(err.request_id(), Some(9), "{err}");
        assert!(err.to_string().contains(why), "{err} should say {why:?}");
    }
    let err = decode::<HostMessage>(&framed(
        r#"{"v":1,"id":4,"msg":{"type":"track_dma","body":{"interface":{}}}}"#,
    ))
    .unwrap_err();
    assert!(err.to_string().contains("names nothing"), "{err}");
    let device = r#"{"pci_address":"0000:01:00.0","calls":1,"pages":1}"#;
    let many = format!(
        r#"{{"v":1,"id":5,"msg":{{"type":"dma_tracking","body":{{"enabled":true,"devices":[{}]}}}}}}"#,
        vec![device; MAX_TRACKED + 1].join(",")
    );
    let err = decode::<GuestMessage>(&framed(&many)).unwrap_err();
    assert!(err.to_string().contains("at most 16"), "{err}");
    let err = decode::<GuestMessage>(&framed(r#"{"v":1,"id":6,"msg":{"type":"dma_tracking","body":{"enabled":true,"devices":[{"pci_address":"../../x","calls":1,"pages":1}]}}}"#)).unwrap_err();
    assert!(err.to_string().contains("PCI address"), "{err}");
    let err = decode::<GuestMessage>(&framed(r#"{"v":1,"id":3,"msg":{"type":"state_saved","body":{"interface":"eth1","digest":"md5:00","addresses":0,"routes":0,"neighbours":0}}}"#)).unwrap_err();
    assert!(err.to_string().contains("sha256"), "{err}");
    assert!(matches!(
        decode::<GuestMessage>(b"not json"),
        Err(MessageError::Malformed(_))
    ));
}

#[test]
fn replies_must_match_an_outstanding_request_of_the_right_kind() {
    let mut t = RequestTracker::new();
    let sync = t.issue(HostMessage::Sync { nonce: 41 }).unwrap();
    let prep = t
        .issue(HostMessage::PrepareUnplug(PrepareUnplug {
            interface: selector(),
            deadline_ms: 100,
            standby: StandbyRequest::Auto,
            accept_loss: false,
        }))
        .unwrap();
    assert_ne!(sync.id, prep.id);

    let stale = Envelope {
        id: sync.id,
        msg: GuestMessage::SyncAck { nonce: 40 },
    };
    assert_eq!(t.accept(&stale), Err(ReplyError::StaleSync { expected: 41, got: 40 }));
    assert_eq!(
        t.accept(&Envelope {
            id: sync.id,
            msg: GuestMessage::SyncAck { nonce: 41 }
        }),
        Ok(Progress::Final)
    );

    let saved = guest_messages().remove(2);
    assert_eq!(
        t.accept(&Envelope {
            id: prep.id,
            msg: saved
        }),
        Ok(Progress::Interim)
    );
    let wrong = Envelope {
        id: prep.id,
        msg: GuestMessage::Status(Status {
            phase: Phase::Idle,
            saved: vec![],
        }),
    };
    assert!(matches!(t.accept(&wrong), Err(ReplyError::WrongKind { .. })));
    let ready = Envelope {
        id: prep.id,
        msg: GuestMessage::UnplugReady(UnplugReady {
            interface: "eth1".into(),
        }),
    };
    assert_eq!(t.accept(&ready), Ok(Progress::Final));
    assert!(
        matches!(t.accept(&ready), Err(ReplyError::Unsolicited { .. })),
        "a request is retired by its final reply"
    );
    assert!(matches!(
        t.accept(&Envelope {
            id: 999,
            msg: GuestMessage::SyncAck { nonce: 1 }
        }),
        Err(ReplyError::Unsolicited { id: 999, .. })
    ));
    assert_eq!(t.outstanding(), 0);
}
