//! Typed messages in both directions and their encoding inside frames.
//!
//! On the wire a message is one JSON object per frame:
//!
//! ```json
//! {"v":1,"id":7,"msg":{"type":"prepare_unplug","body":{...}}}
//! ```
//!
//! `v` is the sender's protocol major version, `id` the request id (a reply carries the id of
//! its request). A `hello` is decodable whatever its `v`, and its body layout is frozen across
//! majors, so two builds can always negotiate; every other message must carry a major this
//! build speaks. Each side decodes only the other side's messages ([`HostMessage`] in the
//! guest, [`GuestMessage`] in the host) and validates them after parsing: the peer is not
//! trusted to stay within the protocol's bounds.

use std::borrow::Cow;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::frame;
use crate::mac::MacAddr;
use crate::version::{VersionRange, SUPPORTED};
use crate::ErrorCode;

/// Matches replies to requests; chosen by the requester, echoed by the replier.
pub type RequestId = u64;

/// Longest free-text field (error messages, failure descriptions) accepted from a peer.
pub const MAX_TEXT: usize = 4096;
/// Most failure lines a `Restored` may carry.
pub const MAX_FAILURES: usize = 1024;
/// Longest interface name Linux allows (IFNAMSIZ - 1).
pub const MAX_IFNAME: usize = 15;

/// What a guest agent can do, announced in its `hello`. New fields default to "absent" so an
/// older guest reads as not having them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Capabilities {
    /// The DMA-dirtying kernel hook (module vfmig_dirty) is loaded or installed for loading.
    pub kernel_hook: bool,
    /// NetworkManager runs in the guest and the agent can talk to it.
    pub network_manager: bool,
    /// Name of a standby (paravirtual) interface the agent can move traffic to.
    pub standby: Option<String>,
    /// The network managers running in the guest that the agent works with
    /// ("NetworkManager", "systemd-networkd", "ifupdown"); empty when none runs.
    pub nic_owners: Vec<String>,
}

/// Most NIC owners a hello may name, and the longest name.
pub const MAX_NIC_OWNERS: usize = 8;
pub const MAX_OWNER_NAME: usize = 64;

/// First message of every session, in both directions. Frozen across majors.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub versions: VersionRange,
    /// Software name and version of the sender, for logs.
    pub agent: String,
    #[serde(default)]
    pub capabilities: Capabilities,
}

impl Hello {
    pub fn ours(agent: impl Into<String>, capabilities: Capabilities) -> Self {
        Self {
            versions: SUPPORTED,
            agent: agent.into(),
            capabilities,
        }
    }
}

/// Names an interface in the guest. At least one field must be set; every field set must match.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct InterfaceSelector {
    pub name: Option<String>,
    pub mac: Option<MacAddr>,
    /// PCI address as the guest sees it, e.g. `0000:01:00.0`.
    pub pci_address: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrepareUnplug {
    pub interface: InterfaceSelector,
    /// How long the host will wait for `UnplugReady`, so the guest can refuse work it cannot finish.
    pub deadline_ms: u32,
    /// Whether the VF's addresses and routes move to a standby NIC for the VF gap. Absent
    /// (an older host) means automatic.
    #[serde(default)]
    pub standby: StandbyRequest,
    /// Save even what restore cannot put back, reporting it in `state_saved.lost` (1.2).
    /// Unset, such a state is refused with error 13 naming each item, and nothing changes.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub accept_loss: bool,
}

/// The standby path: a paravirtual NIC on the same network carries the VF's addresses from
/// just before the unplug until the fresh VF is restored.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "mode", content = "interface")]
pub enum StandbyRequest {
    /// Never move traffic to a standby.
    Off,
    /// Use the standby the guest is configured with or finds, if there is one that is up.
    #[default]
    Auto,
    /// Use this interface; the save is refused if it is missing or has no carrier.
    Use(InterfaceSelector),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Restore {
    /// The saved state to restore, by the interface name it was saved under.
    pub saved: String,
    /// The fresh link to restore it onto.
    pub onto: InterfaceSelector,
    /// Also give the new link the saved MAC (when the new VF was not provisioned with it).
    #[serde(default)]
    pub restore_mac: bool,
    /// The digest `state_saved` reported (1.1): a state on record with another digest is
    /// not the one the host means, and is refused with nothing changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
}

/// The VF stays where it is (1.1): whatever was saved for it is put back onto it — moved back
/// from a standby, restored onto a VF plugged back after an unplug — and then forgotten, so
/// the guest is as it was before the save. Asked when a migration is given up; also undoes a
/// save that finished after the host stopped waiting for it. Nothing saved is not an error.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Keep {
    /// The VF, as `prepare_unplug` named it.
    pub interface: InterfaceSelector,
    /// The state the host was told of, if it was: a state on record with another digest is
    /// left alone and reported.
    #[serde(default)]
    pub saved: Option<SavedRef>,
}

/// A saved state as the host names it: the interface it was saved under and its digest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedRef {
    pub interface: String,
    pub digest: String,
}

/// The answer to `keep`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kept {
    /// The saved state that was put back and forgotten; none when nothing was saved.
    pub saved: Option<String>,
    /// The standby the addresses and routes were moved back from, if they had moved.
    #[serde(default)]
    pub standby_released: Option<String>,
    /// One line per item that could not be put back.
    #[serde(default)]
    pub failed: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateSaved {
    pub interface: String,
    /// Digest of the saved document, `sha256:<hex>`.
    pub digest: String,
    pub addresses: u32,
    pub routes: u32,
    pub neighbours: u32,
    /// The standby interface that now carries the saved addresses and routes, if they moved.
    #[serde(default)]
    pub standby: Option<String>,
    /// Where in the guest the state is kept (1.1), for an operator who has to finish by hand.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// What the state held that restore will not put back, one line each (1.2): only ever
    /// non-empty when the host asked with `accept_loss`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lost: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnplugReady {
    pub interface: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Restored {
    pub interface: String,
    pub applied: u32,
    pub unchanged: u32,
    /// One line per item that could not be applied.
    pub failed: Vec<String>,
    /// One line per difference the agent found between the saved state and the interface
    /// after restoring (re-captured and compared; identity, MAC and lifetimes excepted).
    #[serde(default)]
    pub mismatches: Vec<String>,
    pub duration_ms: u32,
    /// The standby the addresses and routes were moved back from, if they had moved.
    #[serde(default)]
    pub standby_released: Option<String>,
}

/// Most devices the DMA hook tracks at once (the module's own limit).
pub const MAX_TRACKED: usize = 16;

/// Asks the guest to load the DMA hook if needed and track the named interface's device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackDma {
    pub interface: InterfaceSelector,
}

/// One device the DMA hook tracks, with the hook's counters for it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackedDevice {
    pub pci_address: String,
    /// DMA API calls seen for the device.
    pub calls: u64,
    /// Pages written by the CPU so dirty logging sees them.
    pub pages: u64,
}

/// The DMA hook's state after a `track_dma` or `stop_dma_tracking`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DmaTracking {
    /// The hook's probes are registered.
    pub enabled: bool,
    /// Tracked devices; after `stop_dma_tracking`, the ones that were, with final counters.
    pub devices: Vec<TrackedDevice>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Idle,
    Saved,
    Restoring,
    Restored,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub phase: Phase,
    /// Interface names with a saved state on record.
    pub saved: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    pub code: ErrorCode,
    pub message: String,
}

/// Messages the host agent sends; decoded by the guest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "body", rename_all = "snake_case")]
pub enum HostMessage {
    Hello(Hello),
    /// Starts a session: the guest echoes the nonce, and replies that do not carry it are stale.
    Sync {
        nonce: u64,
    },
    PrepareUnplug(PrepareUnplug),
    Restore(Restore),
    StatusQuery,
    TrackDma(TrackDma),
    /// Stop tracking every device and unregister the hook's probes.
    StopDmaTracking,
    Keep(Keep),
}

/// Messages the guest agent sends; decoded by the host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "body", rename_all = "snake_case")]
pub enum GuestMessage {
    Hello(Hello),
    SyncAck { nonce: u64 },
    StateSaved(StateSaved),
    UnplugReady(UnplugReady),
    Restored(Restored),
    Status(Status),
    DmaTracking(DmaTracking),
    Kept(Kept),
    Error(ErrorReply),
}

/// One side's message set.
pub trait Message: Serialize + DeserializeOwned {
    /// Every `type` this set has.
    const KINDS: &'static [&'static str];
    fn kind(&self) -> &'static str;
    /// Bounds a peer must respect beyond what parsing checks.
    fn validate(&self) -> Result<(), String>;
}

impl Message for HostMessage {
    const KINDS: &'static [&'static str] = &[
        "hello",
        "sync",
        "prepare_unplug",
        "restore",
        "status_query",
        "track_dma",
        "stop_dma_tracking",
        "keep",
    ];

    fn kind(&self) -> &'static str {
        match self {
            Self::Hello(_) => "hello",
            Self::Sync { .. } => "sync",
            Self::PrepareUnplug(_) => "prepare_unplug",
            Self::Restore(_) => "restore",
            Self::StatusQuery => "status_query",
            Self::TrackDma(_) => "track_dma",
            Self::StopDmaTracking => "stop_dma_tracking",
            Self::Keep(_) => "keep",
        }
    }

    fn validate(&self) -> Result<(), String> {
        match self {
            Self::Hello(h) => validate_hello(h),
            Self::Sync { .. } | Self::StatusQuery | Self::StopDmaTracking => Ok(()),
            Self::TrackDma(t) => validate_selector(&t.interface),
            Self::PrepareUnplug(p) => {
                validate_selector(&p.interface)?;
                if p.deadline_ms == 0 {
                    return Err("deadline_ms must be positive".into());
                }
                match &p.standby {
                    StandbyRequest::Use(s) => validate_selector(s),
                    StandbyRequest::Off | StandbyRequest::Auto => Ok(()),
                }
            }
            Self::Restore(r) => {
                validate_ifname("saved", &r.saved)?;
                r.digest.as_deref().map_or(Ok(()), validate_digest)?;
                validate_selector(&r.onto)
            }
            Self::Keep(k) => {
                validate_selector(&k.interface)?;
                k.saved.as_ref().map_or(Ok(()), |s| {
                    validate_ifname("saved", &s.interface)?;
                    validate_digest(&s.digest)
                })
            }
        }
    }
}

impl Message for GuestMessage {
    const KINDS: &'static [&'static str] = &[
        "hello",
        "sync_ack",
        "state_saved",
        "unplug_ready",
        "restored",
        "status",
        "dma_tracking",
        "kept",
        "error",
    ];

    fn kind(&self) -> &'static str {
        match self {
            Self::Hello(_) => "hello",
            Self::SyncAck { .. } => "sync_ack",
            Self::StateSaved(_) => "state_saved",
            Self::UnplugReady(_) => "unplug_ready",
            Self::Restored(_) => "restored",
            Self::Status(_) => "status",
            Self::DmaTracking(_) => "dma_tracking",
            Self::Kept(_) => "kept",
            Self::Error(_) => "error",
        }
    }

    fn validate(&self) -> Result<(), String> {
        match self {
            Self::Hello(h) => validate_hello(h),
            Self::SyncAck { .. } => Ok(()),
            Self::StateSaved(s) => {
                validate_ifname("interface", &s.interface)?;
                validate_digest(&s.digest)?;
                s.location.as_deref().map_or(Ok(()), |l| validate_text("location", l))?;
                validate_lines("lost", &s.lost)?;
                s.standby.as_deref().map_or(Ok(()), |n| validate_ifname("standby", n))
            }
            Self::UnplugReady(u) => validate_ifname("interface", &u.interface),
            Self::Restored(r) => {
                validate_ifname("interface", &r.interface)?;
                validate_lines("failed", &r.failed)?;
                validate_lines("mismatches", &r.mismatches)?;
                r.standby_released
                    .as_deref()
                    .map_or(Ok(()), |n| validate_ifname("standby_released", n))
            }
            Self::Status(s) => {
                if s.saved.len() > MAX_FAILURES {
                    return Err(format!(
                        "{} saved states listed, at most {MAX_FAILURES} allowed",
                        s.saved.len()
                    ));
                }
                s.saved.iter().try_for_each(|n| validate_ifname("saved", n))
            }
            Self::DmaTracking(t) => {
                if t.devices.len() > MAX_TRACKED {
                    return Err(format!(
                        "{} tracked devices listed, at most {MAX_TRACKED} allowed",
                        t.devices.len()
                    ));
                }
                t.devices.iter().try_for_each(|d| validate_pci_address(&d.pci_address))
            }
            Self::Kept(k) => {
                validate_lines("failed", &k.failed)?;
                k.saved.as_deref().map_or(Ok(()), |n| validate_ifname("saved", n))?;
                k.standby_released
                    .as_deref()
                    .map_or(Ok(()), |n| validate_ifname("standby_released", n))
            }
            Self::Error(e) => validate_text("message", &e.message),
        }
    }
}

/// A saved state's digest as the guest computes it: `sha256:` and 64 hex digits.
pub fn validate_digest(digest: &str) -> Result<(), String> {
    let hex = digest.strip_prefix("sha256:").ok_or("digest must start with sha256:")?;
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("digest must be 64 hex digits".into());
    }
    Ok(())
}

/// A list of free-text lines: at most [`MAX_FAILURES`] of them, each a valid text.
fn validate_lines(field: &str, lines: &[String]) -> Result<(), String> {
    if lines.len() > MAX_FAILURES {
        return Err(format!("{} {field} lines, at most {MAX_FAILURES} allowed", lines.len()));
    }
    lines.iter().try_for_each(|l| validate_text(field, l))
}

fn validate_text(field: &str, s: &str) -> Result<(), String> {
    if s.len() > MAX_TEXT {
        return Err(format!("{field} is {} bytes, at most {MAX_TEXT} allowed", s.len()));
    }
    Ok(())
}

/// Linux interface-name rules: 1..=15 bytes, no '/', ':' or white space, not "." or "..".
pub fn validate_ifname(field: &str, name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_IFNAME
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b.is_ascii_control());
    if ok {
        Ok(())
    } else {
        Err(format!("{field} {name:?} is not a valid interface name"))
    }
}

fn validate_selector(s: &InterfaceSelector) -> Result<(), String> {
    if s.name.is_none() && s.mac.is_none() && s.pci_address.is_none() {
        return Err("interface selector names nothing".into());
    }
    if let Some(n) = &s.name {
        validate_ifname("interface name", n)?;
    }
    if let Some(p) = &s.pci_address {
        validate_pci_address(p)?;
    }
    Ok(())
}

/// PCI addresses as sysfs names them: `dddd:bb:ss.f`.
pub fn validate_pci_address(p: &str) -> Result<(), String> {
    let ok = p.len() == 12
        && p.bytes().enumerate().all(|(i, b)| match i {
            4 | 7 => b == b':',
            10 => b == b'.',
            _ => b.is_ascii_hexdigit(),
        });
    if ok {
        Ok(())
    } else {
        Err(format!("PCI address {p:?} is not of the form 0000:00:00.0"))
    }
}

fn validate_hello(h: &Hello) -> Result<(), String> {
    validate_text("agent", &h.agent)?;
    if let Some(s) = &h.capabilities.standby {
        validate_ifname("standby", s)?;
    }
    let owners = &h.capabilities.nic_owners;
    if owners.len() > MAX_NIC_OWNERS {
        return Err(format!("nic_owners: {} names, at most {MAX_NIC_OWNERS}", owners.len()));
    }
    for o in owners {
        if o.is_empty() || o.len() > MAX_OWNER_NAME || o.chars().any(char::is_control) {
            return Err(format!(
                "nic_owners: {o:?} is not a name of 1 to {MAX_OWNER_NAME} printable characters"
            ));
        }
    }
    Ok(())
}

/// A message with its request id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope<M> {
    pub id: RequestId,
    pub msg: M,
}

#[derive(Serialize)]
struct WireOut<'a, M> {
    v: u16,
    id: RequestId,
    msg: &'a M,
}

#[derive(Deserialize)]
struct WireHead<'a> {
    v: u16,
    id: RequestId,
    #[serde(borrow)]
    msg: HeadMsg<'a>,
}

#[derive(Deserialize)]
struct HeadMsg<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
}

#[derive(Deserialize)]
struct WireIn<M> {
    msg: M,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    #[error("message is not a valid envelope: {0}")]
    Malformed(String),
    #[error("unknown message type {0:?}")]
    UnknownType(String),
    #[error("message is protocol major version {found}; this build speaks major {supported}")]
    UnsupportedMajor { found: u16, supported: u16 },
    #[error("message {kind} (id {id}) is invalid: {reason}")]
    Invalid {
        id: RequestId,
        kind: &'static str,
        reason: String,
    },
    #[error(transparent)]
    TooLarge(#[from] frame::PayloadTooLarge),
}

impl MessageError {
    /// The request id, when the envelope was readable far enough to have one, so the receiver
    /// can answer the sender's request with an error instead of dropping it.
    pub fn request_id(&self) -> Option<RequestId> {
        match self {
            Self::Invalid { id, .. } => Some(*id),
            _ => None,
        }
    }
}

/// Encodes a message as one frame.
pub fn encode<M: Message>(id: RequestId, msg: &M) -> Result<Vec<u8>, MessageError> {
    let json = serde_json::to_string(&WireOut {
        v: SUPPORTED.max.major,
        id,
        msg,
    })
    .map_err(|e| MessageError::Malformed(e.to_string()))?;
    Ok(frame::encode(&json)?)
}

/// Decodes one frame payload from the peer.
pub fn decode<M: Message>(payload: &[u8]) -> Result<Envelope<M>, MessageError> {
    let head: WireHead = serde_json::from_slice(payload).map_err(|e| MessageError::Malformed(e.to_string()))?;
    let Some(kind) = M::KINDS.iter().copied().find(|k| *k == head.msg.kind) else {
        return Err(MessageError::UnknownType(head.msg.kind.into_owned()));
    };
    if kind != "hello" && head.v != SUPPORTED.max.major {
        return Err(MessageError::UnsupportedMajor {
            found: head.v,
            supported: SUPPORTED.max.major,
        });
    }
    let id = head.id;
    let wire: WireIn<M> = serde_json::from_slice(payload).map_err(|e| MessageError::Invalid {
        id,
        kind,
        reason: e.to_string(),
    })?;
    wire.msg
        .validate()
        .map_err(|reason| MessageError::Invalid { id, kind, reason })?;
    Ok(Envelope { id, msg: wire.msg })
}
