//! Encoding and decoding of protocol v1 frames (docs/protocol.md §2, §3) on the crate's JSON codec.
//!
//! Decoding collects the members of a frame in any order (unknown members are skipped, duplicates refused),
//! then builds the frame its `op` names; `null` counts as absent for optional members. Encoding writes `op`
//! first and the members in the order the protocol document lists them, omitting absent optional members.

use std::borrow::Cow;

use super::json::{ObjectWriter, Reader, write_str};
use super::*;

/// The prefix of every encoded notification frame; frames that start with it take the notification fast path.
pub(crate) const NOTIFICATION_PREFIX: &str = "{\"op\":\"notification\",";

/// Every member any frame has, collected before the frame is built.
#[derive(Default)]
struct Members<'a> {
    op: Option<Cow<'a, str>>,
    // auth / welcome
    token: Option<Cow<'a, str>>,
    device: Option<Cow<'a, str>>,
    client: Option<Cow<'a, str>>,
    session: Option<Cow<'a, str>>,
    user: Option<Cow<'a, str>>,
    heartbeat_ms: Option<u64>,
    max_frame_bytes: Option<u64>,
    token_expires_in_ms: Option<u64>,
    // requests
    reference: Option<u64>,
    streams: Option<Vec<SubscribeEntry>>,
    ids: Option<Vec<String>>,
    echo: Option<bool>,
    platform: Option<Cow<'a, str>>,
    // subscribed
    continuity: Option<Cow<'a, str>>,
    replayed: Option<u64>,
    reason: Option<Cow<'a, str>>,
    missed: Option<u64>,
    // notification
    id: Option<Cow<'a, str>>,
    stream: Option<Cow<'a, str>>,
    offset: Option<u64>,
    epoch: Option<Cow<'a, str>>,
    kind: Option<Cow<'a, str>>,
    priority: Option<Cow<'a, str>>,
    persistence: Option<Cow<'a, str>>,
    title: Option<Cow<'a, str>>,
    body: Option<Cow<'a, str>>,
    data: Option<&'a str>,
    group: Option<Cow<'a, str>>,
    created_at: Option<u64>,
    // error
    code: Option<Cow<'a, str>>,
    message: Option<Cow<'a, str>>,
    retry_after_ms: Option<u64>,
}

fn set<T>(slot: &mut Option<T>, value: Option<T>, key: &str) -> Result<(), DecodeError> {
    if slot.is_some() {
        return Err(DecodeError::new(format!("duplicate member `{key}`")));
    }
    *slot = value;
    Ok(())
}

fn opt_string<'a>(r: &mut Reader<'a>) -> Result<Option<Cow<'a, str>>, DecodeError> {
    if r.null() { Ok(None) } else { r.string().map(Some) }
}

fn opt_u64(r: &mut Reader<'_>) -> Result<Option<u64>, DecodeError> {
    if r.null() { Ok(None) } else { r.u64().map(Some) }
}

fn string_list(r: &mut Reader<'_>) -> Result<Vec<String>, DecodeError> {
    r.begin_array()?;
    let mut out = Vec::new();
    let mut first = true;
    while r.next_element(&mut first)? {
        out.push(r.string()?.into_owned());
    }
    Ok(out)
}

/// One `streams` element: an entry object (`subscribe`) or a bare stream name (`unsubscribe`).
fn stream_element(r: &mut Reader<'_>) -> Result<SubscribeEntry, DecodeError> {
    if r.peek() != Some(b'{') {
        return Ok(SubscribeEntry { stream: r.string()?.into_owned(), epoch: None, offset: None });
    }
    r.begin_object()?;
    let (mut stream, mut epoch, mut offset) = (None, None, None);
    let mut first = true;
    while let Some(key) = r.next_key(&mut first)? {
        match &*key {
            "stream" => set(&mut stream, Some(r.string()?.into_owned()), "stream")?,
            "epoch" => set(&mut epoch, opt_string(r)?.map(Cow::into_owned), "epoch")?,
            "offset" => set(&mut offset, opt_u64(r)?, "offset")?,
            _ => {
                r.raw_value()?;
            }
        }
    }
    let stream = stream.ok_or_else(|| DecodeError::new("missing member `stream` in a streams entry"))?;
    Ok(SubscribeEntry { stream, epoch, offset })
}

fn stream_list(r: &mut Reader<'_>) -> Result<Option<Vec<SubscribeEntry>>, DecodeError> {
    if r.null() {
        return Ok(None);
    }
    r.begin_array()?;
    let mut out = Vec::new();
    let mut first = true;
    while r.next_element(&mut first)? {
        out.push(stream_element(r)?);
    }
    Ok(Some(out))
}

/// Which side sent a frame: the members a frame has depend on its `op` and on the side.
#[derive(Clone, Copy)]
enum Side {
    Server,
    Client,
}

/// Whether `key` is a member of the frame `op` sent by `side` (`op` itself always is). Other members are skipped
/// unread, as unknown members are (protocol §1): a member another kind of frame has, with another type, must not
/// make this one undecodable.
fn has_member(side: Side, op: Option<&str>, key: &str) -> bool {
    let members: &[&str] = match (side, op) {
        (_, None) => &[],
        (Side::Server, Some("notification")) => &[
            "id",
            "stream",
            "offset",
            "epoch",
            "type",
            "priority",
            "persistence",
            "title",
            "body",
            "data",
            "group",
            "created_at",
        ],
        (Side::Server, Some("welcome")) => {
            &["session", "user", "device", "heartbeat_ms", "max_frame_bytes", "token_expires_in_ms"]
        }
        (Side::Server, Some("subscribed")) => {
            &["ref", "stream", "epoch", "offset", "continuity", "replayed", "reason", "missed"]
        }
        (Side::Server, Some("unsubscribed")) => &["ref", "stream"],
        (Side::Server, Some("token_refreshed")) => &["token_expires_in_ms"],
        (Side::Server, Some("push_registered")) => &["ref", "platform"],
        (Side::Server, Some("error")) => &["ref", "stream", "code", "message", "retry_after_ms"],
        (Side::Client, Some("auth")) => &["token", "device", "client"],
        (Side::Client, Some("subscribe" | "unsubscribe")) => &["ref", "streams"],
        (Side::Client, Some("ack")) => &["ids"],
        (Side::Client, Some("heartbeat")) => &["echo"],
        (Side::Client, Some("register_push")) => &["ref", "platform", "token"],
        _ => &[],
    };
    members.contains(&key)
}

/// The `op` of a JSON object, if it has one that is a string (a first pass over the members, unread).
fn find_op(text: &str) -> Option<Cow<'_, str>> {
    let mut r = Reader::new(text);
    r.begin_object().ok()?;
    let mut first = true;
    while let Some(key) = r.next_key(&mut first).ok()? {
        if key == "op" && r.peek() == Some(b'"') {
            return r.string().ok();
        }
        r.raw_value().ok()?;
    }
    None
}

/// Collects the members of one frame: `op`, and the members the frame it names has. On error, returns the `op`
/// read so far (to name the frame kind).
fn read_members<'a>(text: &'a str, side: Side) -> Result<Members<'a>, (DecodeError, Option<Cow<'a, str>>)> {
    let mut m = Members::default();
    let op = find_op(text);
    match read_members_into(&mut Reader::new(text), &mut m, side, op.as_deref()) {
        Ok(()) => Ok(m),
        Err(e) => Err((e, m.op.or(op))),
    }
}

fn read_members_into<'a>(
    r: &mut Reader<'a>,
    m: &mut Members<'a>,
    side: Side,
    op: Option<&str>,
) -> Result<(), DecodeError> {
    r.begin_object()?;
    let mut first = true;
    while let Some(key) = r.next_key(&mut first)? {
        if key != "op" && !has_member(side, op, &key) {
            r.raw_value()?;
            continue;
        }
        member(r, m, &key).map_err(|e| DecodeError::new(format!("member `{key}`: {}", e.message())))?;
    }
    r.end()
}

fn member<'a>(r: &mut Reader<'a>, m: &mut Members<'a>, key: &str) -> Result<(), DecodeError> {
    match key {
        "op" => set(&mut m.op, Some(r.string()?), "op")?,
        "token" => set(&mut m.token, opt_string(r)?, "token")?,
        "device" => set(&mut m.device, opt_string(r)?, "device")?,
        "client" => set(&mut m.client, opt_string(r)?, "client")?,
        "session" => set(&mut m.session, opt_string(r)?, "session")?,
        "user" => set(&mut m.user, opt_string(r)?, "user")?,
        "heartbeat_ms" => set(&mut m.heartbeat_ms, opt_u64(r)?, "heartbeat_ms")?,
        "max_frame_bytes" => set(&mut m.max_frame_bytes, opt_u64(r)?, "max_frame_bytes")?,
        "token_expires_in_ms" => set(&mut m.token_expires_in_ms, opt_u64(r)?, "token_expires_in_ms")?,
        "ref" => set(&mut m.reference, opt_u64(r)?, "ref")?,
        "streams" => set(&mut m.streams, stream_list(r)?, "streams")?,
        "ids" => set(&mut m.ids, if r.null() { None } else { Some(string_list(r)?) }, "ids")?,
        "echo" => set(&mut m.echo, if r.null() { None } else { Some(r.bool()?) }, "echo")?,
        "platform" => set(&mut m.platform, opt_string(r)?, "platform")?,
        "continuity" => set(&mut m.continuity, opt_string(r)?, "continuity")?,
        "replayed" => set(&mut m.replayed, opt_u64(r)?, "replayed")?,
        "reason" => set(&mut m.reason, opt_string(r)?, "reason")?,
        "missed" => set(&mut m.missed, opt_u64(r)?, "missed")?,
        "id" => set(&mut m.id, opt_string(r)?, "id")?,
        "stream" => set(&mut m.stream, opt_string(r)?, "stream")?,
        "offset" => set(&mut m.offset, opt_u64(r)?, "offset")?,
        "epoch" => set(&mut m.epoch, opt_string(r)?, "epoch")?,
        "type" => set(&mut m.kind, opt_string(r)?, "type")?,
        "priority" => set(&mut m.priority, opt_string(r)?, "priority")?,
        "persistence" => set(&mut m.persistence, opt_string(r)?, "persistence")?,
        "title" => set(&mut m.title, opt_string(r)?, "title")?,
        "body" => set(&mut m.body, opt_string(r)?, "body")?,
        "data" => set(&mut m.data, if r.null() { None } else { Some(r.raw_value()?) }, "data")?,
        "group" => set(&mut m.group, opt_string(r)?, "group")?,
        "created_at" => set(&mut m.created_at, opt_u64(r)?, "created_at")?,
        "code" => set(&mut m.code, opt_string(r)?, "code")?,
        "message" => set(&mut m.message, opt_string(r)?, "message")?,
        "retry_after_ms" => set(&mut m.retry_after_ms, opt_u64(r)?, "retry_after_ms")?,
        _ => {
            r.raw_value()?;
        }
    }
    Ok(())
}

fn need<T>(v: Option<T>, name: &str) -> Result<T, DecodeError> {
    v.ok_or_else(|| DecodeError::new(format!("missing member `{name}`")))
}

fn owned(v: Option<Cow<'_, str>>) -> Option<String> {
    v.map(Cow::into_owned)
}

fn parse_enum<T>(v: Cow<'_, str>, name: &str, parse: fn(&str) -> Option<T>) -> Result<T, DecodeError> {
    parse(&v).ok_or_else(|| DecodeError::new(format!("unknown {name} {}", quoted(&v))))
}

impl Members<'_> {
    fn notification(self) -> Result<Notification, DecodeError> {
        let texts = Texts {
            id: &need(self.id, "id")?,
            stream: &need(self.stream, "stream")?,
            epoch: &need(self.epoch, "epoch")?,
            kind: &need(self.kind, "type")?,
            title: self.title.as_deref(),
            body: self.body.as_deref(),
            data: self.data,
            group: self.group.as_deref(),
        };
        let priority = parse_enum(need(self.priority, "priority")?, "priority", Priority::parse)?;
        let persistence = parse_enum(need(self.persistence, "persistence")?, "persistence", Persistence::parse)?;
        Ok(Notification::assemble(texts, self.offset, priority, persistence, need(self.created_at, "created_at")?))
    }
}

/// Decodes a notification frame exactly as `encode_server_frame` writes it — members in the protocol
/// document's order, optional ones absent or present, no whitespace — by matching each key literally (the
/// common case: every frame of the reference server). `None` at the first deviation: the member loop below (and
/// then the general path) decodes it instead, so this only ever accepts what they accept, with the same result.
fn notification_canonical(text: &str) -> Option<Notification> {
    fn s<'a>(r: &mut Reader<'a>) -> Option<Cow<'a, str>> {
        r.string().ok()
    }
    // Inlined so that each key is a constant where it is compared (no call to memcmp).
    #[inline(always)]
    fn opt<'a>(r: &mut Reader<'a>, key: &[u8]) -> Option<Option<Cow<'a, str>>> {
        if !r.lit(key) {
            return Some(None);
        }
        if r.null() { Some(None) } else { r.string().ok().map(Some) }
    }
    let mut r = Reader::new(text);
    if !r.lit(b"{\"op\":\"notification\",\"id\":") {
        return None;
    }
    let id = s(&mut r)?;
    r.lit(b",\"stream\":").then_some(())?;
    let stream = s(&mut r)?;
    let offset = if r.lit(b",\"offset\":") { opt_u64(&mut r).ok()? } else { None };
    r.lit(b",\"epoch\":").then_some(())?;
    let epoch = s(&mut r)?;
    r.lit(b",\"type\":").then_some(())?;
    let kind = s(&mut r)?;
    let priority = if r.lit(b",\"priority\":\"important\"") {
        Priority::Important
    } else if r.lit(b",\"priority\":\"informational\"") {
        Priority::Informational
    } else if r.lit(b",\"priority\":\"critical\"") {
        Priority::Critical
    } else {
        return None;
    };
    let persistence = if r.lit(b",\"persistence\":\"bufferable\"") {
        Persistence::Bufferable
    } else if r.lit(b",\"persistence\":\"persistent\"") {
        Persistence::Persistent
    } else if r.lit(b",\"persistence\":\"ephemeral\"") {
        Persistence::Ephemeral
    } else {
        return None;
    };
    let title = opt(&mut r, b",\"title\":")?;
    let body = opt(&mut r, b",\"body\":")?;
    let data = if r.lit(b",\"data\":") && !r.null() { Some(r.raw_value().ok()?) } else { None };
    let group = opt(&mut r, b",\"group\":")?;
    r.lit(b",\"created_at\":").then_some(())?;
    let created_at = r.u64().ok()?;
    r.lit(b"}").then_some(())?;
    r.end().ok()?;
    let texts = Texts {
        id: &id,
        stream: &stream,
        epoch: &epoch,
        kind: &kind,
        title: title.as_deref(),
        body: body.as_deref(),
        data,
        group: group.as_deref(),
    };
    Some(Notification::assemble(texts, offset, priority, persistence, created_at))
}

/// Decodes a notification frame (`frame`: its `op` must be `notification`) or a bare envelope (an `op` is
/// ignored) from its members in any order: unknown members are skipped, duplicates refused, `null` is absent.
/// Frames whose members are in the canonical order never get here (see `notification_canonical`).
fn notification_members(text: &str, frame: bool) -> Result<Notification, DecodeError> {
    let mut r = Reader::new(text);
    r.begin_object()?;
    let (mut id, mut stream, mut offset, mut epoch, mut kind) = (None, None, None, None, None);
    let (mut priority, mut persistence, mut title, mut body) = (None, None, None, None);
    let (mut data, mut group, mut created_at, mut op) = (None, None, None, None);
    let mut first = true;
    while let Some(key) = r.next_key(&mut first)? {
        match &*key {
            "op" => set(&mut op, Some(r.string()?), "op")?,
            "id" => set(&mut id, Some(r.string()?), "id")?,
            "stream" => set(&mut stream, Some(r.string()?), "stream")?,
            "offset" => set(&mut offset, Some(opt_u64(&mut r)?), "offset")?,
            "epoch" => set(&mut epoch, Some(r.string()?), "epoch")?,
            "type" => set(&mut kind, Some(r.string()?), "type")?,
            "priority" => set(&mut priority, Some(r.string()?), "priority")?,
            "persistence" => set(&mut persistence, Some(r.string()?), "persistence")?,
            "title" => set(&mut title, Some(opt_string(&mut r)?), "title")?,
            "body" => set(&mut body, Some(opt_string(&mut r)?), "body")?,
            "data" => set(&mut data, Some(if r.null() { None } else { Some(r.raw_value()?) }), "data")?,
            "group" => set(&mut group, Some(opt_string(&mut r)?), "group")?,
            "created_at" => set(&mut created_at, Some(r.u64()?), "created_at")?,
            _ => {
                r.raw_value()?;
            }
        }
    }
    r.end()?;
    if frame && op.as_deref() != Some("notification") {
        return Err(DecodeError::new("not a notification frame"));
    }
    let (title, body, group) = (title.flatten(), body.flatten(), group.flatten());
    let texts = Texts {
        id: &need(id, "id")?,
        stream: &need(stream, "stream")?,
        epoch: &need(epoch, "epoch")?,
        kind: &need(kind, "type")?,
        title: title.as_deref(),
        body: body.as_deref(),
        data: data.flatten(),
        group: group.as_deref(),
    };
    let priority = parse_enum(need(priority, "priority")?, "priority", Priority::parse)?;
    let persistence = parse_enum(need(persistence, "persistence")?, "persistence", Persistence::parse)?;
    Ok(Notification::assemble(texts, offset.flatten(), priority, persistence, need(created_at, "created_at")?))
}

/// Decodes a server frame.
pub fn decode_server_frame(text: &str) -> Result<ServerFrame, DecodeError> {
    if text.starts_with(NOTIFICATION_PREFIX) {
        return match notification_canonical(text) {
            Some(n) => Ok(n),
            None => notification_members(text, true),
        }
        .map(ServerFrame::Notification)
        .map_err(|e| DecodeError::new(format!("invalid notification frame: {}", e.message())));
    }
    if let Some(op) = find_op(text)
        && super::inbox::is_server_op(&op)
    {
        return super::inbox::decode_server(&op, text);
    }
    let m = read_members(text, Side::Server).map_err(|(e, op)| {
        let what = if op.as_deref() == Some("notification") { "notification" } else { "server" };
        DecodeError::new(format!("invalid {what} frame: {}", e.message()))
    })?;
    let op = m.op.clone().ok_or_else(|| DecodeError::new("invalid server frame: missing member `op`"))?;
    let frame = (|| -> Result<ServerFrame, DecodeError> {
        Ok(match &*op {
            "notification" => ServerFrame::Notification(m.notification()?),
            "heartbeat" => ServerFrame::Heartbeat,
            "welcome" => ServerFrame::Welcome {
                session: need(m.session, "session")?.into_owned(),
                user: need(m.user, "user")?.into_owned(),
                device: need(m.device, "device")?.into_owned(),
                heartbeat_ms: need(m.heartbeat_ms, "heartbeat_ms")?,
                max_frame_bytes: need(m.max_frame_bytes, "max_frame_bytes")?,
                token_expires_in_ms: m.token_expires_in_ms,
            },
            "subscribed" => {
                let continuity = match &*need(m.continuity, "continuity")? {
                    "fresh" => WireContinuity::Fresh,
                    "resumed" => WireContinuity::Resumed { replayed: need(m.replayed, "replayed")? },
                    "gap" => WireContinuity::Gap {
                        reason: parse_enum(need(m.reason, "reason")?, "gap reason", GapReason::parse)?,
                        missed: m.missed,
                        replayed: m.replayed.unwrap_or(0),
                    },
                    other => return Err(DecodeError::new(format!("unknown continuity {}", quoted(other)))),
                };
                ServerFrame::Subscribed {
                    reference: need(m.reference, "ref")?,
                    stream: need(m.stream, "stream")?.into_owned(),
                    epoch: need(m.epoch, "epoch")?.into_owned(),
                    offset: need(m.offset, "offset")?,
                    continuity,
                }
            }
            "unsubscribed" => ServerFrame::Unsubscribed {
                reference: need(m.reference, "ref")?,
                stream: need(m.stream, "stream")?.into_owned(),
            },
            "token_refreshed" => ServerFrame::TokenRefreshed { token_expires_in_ms: m.token_expires_in_ms },
            "push_registered" => ServerFrame::PushRegistered {
                reference: need(m.reference, "ref")?,
                platform: parse_enum(need(m.platform, "platform")?, "platform", PushPlatform::parse)?,
            },
            "error" => ServerFrame::Error(ErrorFrame {
                reference: m.reference,
                stream: owned(m.stream),
                code: ErrorCode::parse(&need(m.code, "code")?),
                message: need(m.message, "message")?.into_owned(),
                retry_after_ms: m.retry_after_ms,
            }),
            other => return Err(DecodeError::new(format!("unknown op {}", quoted(other)))),
        })
    })();
    frame.map_err(|e| {
        let what = if &*op == "notification" { "notification" } else { "server" };
        DecodeError::new(format!("invalid {what} frame: {}", e.message()))
    })
}

/// Decodes a client frame.
pub fn decode_client_frame(text: &str) -> Result<ClientFrame, DecodeError> {
    if let Some(op) = find_op(text)
        && super::inbox::is_client_op(&op)
    {
        return super::inbox::decode_client(&op, text);
    }
    let m = read_members(text, Side::Client)
        .map_err(|(e, _)| DecodeError::new(format!("invalid client frame: {}", e.message())))?;
    let frame = (|| -> Result<ClientFrame, DecodeError> {
        let op = need(m.op, "op")?;
        Ok(match &*op {
            "auth" => ClientFrame::Auth {
                token: need(m.token, "token")?.into_owned(),
                device: need(m.device, "device")?.into_owned(),
                client: owned(m.client),
            },
            "subscribe" => {
                ClientFrame::Subscribe { reference: need(m.reference, "ref")?, streams: need(m.streams, "streams")? }
            }
            "unsubscribe" => ClientFrame::Unsubscribe {
                reference: need(m.reference, "ref")?,
                streams: need(m.streams, "streams")?.into_iter().map(|e| e.stream).collect(),
            },
            "ack" => ClientFrame::Ack { ids: need(m.ids, "ids")? },
            "heartbeat" => ClientFrame::Heartbeat { echo: m.echo.unwrap_or(false) },
            "register_push" => ClientFrame::RegisterPush {
                reference: need(m.reference, "ref")?,
                platform: parse_enum(need(m.platform, "platform")?, "platform", PushPlatform::parse)?,
                token: need(m.token, "token")?.into_owned(),
            },
            other => return Err(DecodeError::new(format!("unknown op {}", quoted(other)))),
        })
    })();
    frame.map_err(|e| DecodeError::new(format!("invalid client frame: {}", e.message())))
}

/// How a server answers a client frame it cannot take (protocol §6.3): the error code, whether it ends the
/// connection, and the `ref` to answer with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrameRejection {
    /// The frame's `op`, when it names a client frame.
    pub op: Option<&'static str>,
    /// `protocol_error`, `unauthorized` or `bad_request`.
    pub code: ErrorCode,
    /// The frame's `ref`, for a request-scoped answer.
    pub reference: Option<u64>,
    /// Whether the connection ends (`error` then close with the code's close code); otherwise the `error` answers
    /// the frame and the connection stays open.
    pub fatal: bool,
    /// For people: which member is wrong and why.
    pub message: String,
}

/// The client frame ops, as the protocol names them.
const CLIENT_OPS: [&str; 11] = [
    "auth",
    "subscribe",
    "unsubscribe",
    "ack",
    "heartbeat",
    "register_push",
    "inbox_watch",
    "inbox_list",
    "inbox_mark",
    "inbox_mark_all",
    "history",
];

/// Decodes a client frame the way a server takes it (protocol §6.3): what does not decode is classified. Not a JSON
/// object, no `op`, or an unknown `op`: `protocol_error`, fatal. An `auth` whose `token` is missing or not a
/// string: `unauthorized`, fatal (a client refreshes its token once); any other problem with an `auth`:
/// `protocol_error`, fatal. A `subscribe`, `unsubscribe` or `register_push` with a readable `ref` whose other
/// members are wrong (missing, of the wrong type, an unknown platform): `bad_request` answering that `ref`, and the
/// connection stays open; without a readable `ref` it cannot be answered: `protocol_error`, fatal. An `ack` or
/// `heartbeat` with wrong members: `bad_request` without `ref`, the connection stays open.
pub fn decode_client_request(text: &str) -> Result<ClientFrame, FrameRejection> {
    decode_client_frame(text).map_err(|e| classify_client_frame(text, &e))
}

/// The `op` (a string) and `ref` (an unsigned integer) of a JSON object, as far as they can be read, and whether
/// its `token` member is a string; `None` when `text` is not a well-formed JSON object.
fn salvage(text: &str) -> Option<(Option<String>, Option<u64>, bool)> {
    let mut r = Reader::new(text);
    r.begin_object().ok()?;
    let (mut op, mut reference, mut token) = (None, None, false);
    let mut first = true;
    while let Some(key) = r.next_key(&mut first).ok()? {
        match &*key {
            "op" if r.peek() == Some(b'"') => op = Some(r.string().ok()?.into_owned()),
            "ref" if r.peek().is_some_and(|b| b.is_ascii_digit()) => reference = r.u64().ok(),
            "token" if r.peek() == Some(b'"') => token = r.string().is_ok(),
            _ => {
                r.raw_value().ok()?;
            }
        }
    }
    r.end().ok()?;
    Some((op, reference, token))
}

fn classify_client_frame(text: &str, error: &DecodeError) -> FrameRejection {
    let detail = error.message().strip_prefix("invalid client frame: ").unwrap_or(error.message());
    let protocol = |op, message: String| FrameRejection {
        op,
        code: ErrorCode::ProtocolError,
        reference: None,
        fatal: true,
        message,
    };
    let Some((op, reference, token)) = salvage(text) else {
        return protocol(None, format!("a frame must be one JSON object: {detail}"));
    };
    let Some(op_name) = op.as_deref().and_then(|o| CLIENT_OPS.iter().find(|k| **k == o).copied()) else {
        return protocol(None, format!("not a client frame: {detail}"));
    };
    let message = format!("{op_name}: {detail}");
    match op_name {
        "auth" if !token => FrameRejection {
            op: Some(op_name),
            code: ErrorCode::Unauthorized,
            reference: None,
            fatal: true,
            message: "auth: the token is missing (member `token`, a string)".into(),
        },
        "auth" => protocol(Some(op_name), message),
        "ack" | "heartbeat" => {
            FrameRejection { op: Some(op_name), code: ErrorCode::BadRequest, reference: None, fatal: false, message }
        }
        _ => match reference {
            Some(reference) => FrameRejection {
                op: Some(op_name),
                code: ErrorCode::BadRequest,
                reference: Some(reference),
                fatal: false,
                message,
            },
            None => protocol(Some(op_name), format!("{message} (and no readable `ref` to answer)")),
        },
    }
}

/// Decodes a bare notification envelope (no `op` needed; one is ignored).
pub fn decode_notification(text: &str) -> Result<Notification, DecodeError> {
    notification_members(text, false)
}

fn write_notification_members(w: &mut ObjectWriter<'_>, n: &Notification) {
    w.str("id", n.id()).str("stream", n.stream()).opt_u64("offset", n.offset).str("epoch", n.epoch());
    w.str("type", n.kind()).str("priority", n.priority.as_str()).str("persistence", n.persistence.as_str());
    w.opt_str("title", n.title()).opt_str("body", n.body());
    if let Some(d) = n.data() {
        w.raw("data").push_str(d);
    }
    w.opt_str("group", n.group()).u64("created_at", n.created_at);
}

/// Encodes a bare notification envelope (the push payload form, without `op`).
pub fn encode_notification(n: &Notification) -> String {
    let mut out = String::with_capacity(256);
    write_notification(&mut out, n);
    out
}

pub(crate) fn write_notification(out: &mut String, n: &Notification) {
    let mut w = ObjectWriter::new(out);
    write_notification_members(&mut w, n);
    w.finish();
}

/// Encodes a client frame.
pub fn encode_client_frame(frame: &ClientFrame) -> String {
    let mut out = String::with_capacity(64);
    let mut w = ObjectWriter::new(&mut out);
    match frame {
        ClientFrame::Auth { token, device, client } => {
            w.str("op", "auth").str("token", token).str("device", device).opt_str("client", client.as_deref());
        }
        ClientFrame::Subscribe { reference, streams } => {
            w.str("op", "subscribe").u64("ref", *reference);
            let out = w.raw("streams");
            out.push('[');
            for (i, e) in streams.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let mut entry = ObjectWriter::new(out);
                entry.str("stream", &e.stream).opt_str("epoch", e.epoch.as_deref()).opt_u64("offset", e.offset);
                entry.finish();
            }
            out.push(']');
        }
        ClientFrame::Unsubscribe { reference, streams } => {
            w.str("op", "unsubscribe").u64("ref", *reference).str_array("streams", streams.iter().map(String::as_str));
        }
        ClientFrame::Ack { ids } => {
            w.str("op", "ack").str_array("ids", ids.iter().map(String::as_str));
        }
        ClientFrame::Heartbeat { echo } => {
            w.str("op", "heartbeat");
            if *echo {
                w.bool("echo", true);
            }
        }
        ClientFrame::RegisterPush { reference, platform, token } => {
            w.str("op", "register_push").u64("ref", *reference).str("platform", platform.as_str()).str("token", token);
        }
        other => super::inbox::write_client(&mut w, other),
    }
    w.finish();
    out
}

/// Encodes the `notification` server frame of `fields` placed at `(stream, epoch, offset)` (the fields' own
/// stream, epoch and offset are not read): the text [`encode_server_frame`] gives for that notification, without
/// copying the fields into a [`Notification`] first (the server encodes one frame per stream of every publish).
pub fn encode_notification_frame(
    fields: &super::NotificationFields,
    stream: &str,
    epoch: &str,
    offset: Option<u64>,
) -> String {
    let optional = [&fields.title, &fields.body, &fields.group].map(|o| o.as_ref().map_or(0, |s| s.len()));
    let data = fields.data.as_ref().map(|d| d.get());
    let mut out = String::with_capacity(
        160 + fields.id.len()
            + stream.len()
            + epoch.len()
            + fields.kind.len()
            + optional.iter().sum::<usize>()
            + data.map_or(0, str::len),
    );
    let mut w = ObjectWriter::new(&mut out);
    w.str("op", "notification");
    w.str("id", &fields.id).str("stream", stream).opt_u64("offset", offset).str("epoch", epoch);
    w.str("type", &fields.kind)
        .str("priority", fields.priority.as_str())
        .str("persistence", fields.persistence.as_str());
    w.opt_str("title", fields.title.as_deref()).opt_str("body", fields.body.as_deref());
    if let Some(d) = data {
        w.raw("data").push_str(d);
    }
    w.opt_str("group", fields.group.as_deref()).u64("created_at", fields.created_at);
    w.finish();
    out
}

/// Encodes a server frame. Notification frames start with `{"op":"notification",`.
pub fn encode_server_frame(frame: &ServerFrame) -> String {
    let mut out = String::with_capacity(match frame {
        ServerFrame::Notification(_) => 384,
        _ => 96,
    });
    let mut w = ObjectWriter::new(&mut out);
    match frame {
        ServerFrame::Notification(n) => {
            w.str("op", "notification");
            write_notification_members(&mut w, n);
        }
        ServerFrame::Heartbeat => {
            w.str("op", "heartbeat");
        }
        ServerFrame::Welcome { session, user, device, heartbeat_ms, max_frame_bytes, token_expires_in_ms } => {
            w.str("op", "welcome").str("session", session).str("user", user).str("device", device);
            w.u64("heartbeat_ms", *heartbeat_ms).u64("max_frame_bytes", *max_frame_bytes);
            w.opt_u64("token_expires_in_ms", *token_expires_in_ms);
        }
        ServerFrame::Subscribed { reference, stream, epoch, offset, continuity } => {
            w.str("op", "subscribed").u64("ref", *reference).str("stream", stream).str("epoch", epoch);
            w.u64("offset", *offset);
            match continuity {
                WireContinuity::Fresh => {
                    w.str("continuity", "fresh");
                }
                WireContinuity::Resumed { replayed } => {
                    w.str("continuity", "resumed").u64("replayed", *replayed);
                }
                WireContinuity::Gap { reason, missed, replayed } => {
                    w.str("continuity", "gap").str("reason", reason.as_str()).opt_u64("missed", *missed);
                    if *replayed > 0 {
                        w.u64("replayed", *replayed);
                    }
                }
            }
        }
        ServerFrame::Unsubscribed { reference, stream } => {
            w.str("op", "unsubscribed").u64("ref", *reference).str("stream", stream);
        }
        ServerFrame::TokenRefreshed { token_expires_in_ms } => {
            w.str("op", "token_refreshed").opt_u64("token_expires_in_ms", *token_expires_in_ms);
        }
        ServerFrame::PushRegistered { reference, platform } => {
            w.str("op", "push_registered").u64("ref", *reference).str("platform", platform.as_str());
        }
        ServerFrame::Error(e) => {
            w.str("op", "error").opt_u64("ref", e.reference).opt_str("stream", e.stream.as_deref());
            w.str("code", e.code.as_str()).str("message", &e.message).opt_u64("retry_after_ms", e.retry_after_ms);
        }
        other => super::inbox::write_server(&mut w, other),
    }
    w.finish();
    out
}

/// Extracts the notification envelope from a push payload: the envelope itself, or an object carrying it
/// under `tidings` (as an object, or as a JSON string — FCM data values are strings). The envelope is
/// validated (protocol §3).
pub fn decode_push_payload(payload: &str) -> Result<Notification, DecodeError> {
    let mut r = Reader::new(payload);
    let mut wrapped: Option<Cow<'_, str>> = None;
    let scan = (|| -> Result<(), DecodeError> {
        r.begin_object()?;
        let mut first = true;
        while let Some(key) = r.next_key(&mut first)? {
            if key == "tidings" {
                let inner = if r.peek() == Some(b'"') { r.string()? } else { Cow::Borrowed(r.raw_value()?) };
                wrapped = Some(inner);
            } else {
                r.raw_value()?;
            }
        }
        r.end()
    })();
    scan.map_err(|e| DecodeError::new(format!("push payload is not a JSON object: {}", e.message())))?;
    let envelope = wrapped.as_deref().unwrap_or(payload);
    let n = decode_notification(envelope)
        .map_err(|e| DecodeError::new(format!("push payload: invalid envelope: {}", e.message())))?;
    n.validate()?;
    Ok(n)
}

/// The id of a notification frame as the server writes it (`{"op":"notification","id":"…"`), found without
/// decoding the frame; `None` for anything else. A hint (see `Engine::handle_text`): the frame is still decoded
/// and checked in full.
pub(crate) fn notification_id_hint(line: &str) -> Option<&str> {
    let rest = line.strip_prefix("{\"op\":\"notification\",\"id\":\"")?;
    #[cfg(not(target_family = "wasm"))]
    let end = memchr::memchr(b'"', rest.as_bytes())?;
    #[cfg(target_family = "wasm")]
    let end = rest.find('"')?;
    rest.get(..end)
}

/// The frames of one server message: one per line, empty lines skipped (protocol §1). Every driver splits
/// messages with this, whatever decodes the frames.
pub fn message_frames(text: &str) -> impl Iterator<Item = &str> {
    Lines { rest: Some(text) }.filter(|line| !line.is_empty())
}

/// `text.split('\n')`, with a SIMD search for the newline outside the browser (`str::split` scans a word at a
/// time: 8 % of the instructions of ingesting a notification).
struct Lines<'a> {
    rest: Option<&'a str>,
}

impl<'a> Iterator for Lines<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let text = self.rest?;
        #[cfg(not(target_family = "wasm"))]
        let newline = memchr::memchr(b'\n', text.as_bytes());
        #[cfg(target_family = "wasm")]
        let newline = text.bytes().position(|b| b == b'\n');
        match newline {
            // `\n` is ASCII, so both sides of it are character boundaries.
            Some(i) => {
                self.rest = text.get(i + 1..);
                text.get(..i)
            }
            None => {
                self.rest = None;
                Some(text)
            }
        }
    }
}

/// The verbatim JSON text of member `key` of the JSON object `object` (the last one when the key repeats, as
/// `JSON.parse` keeps it), or `None` when there is no such member or `object` is not a well-formed object. For
/// drivers that parse frames with the platform's JSON parser: its numbers are doubles, so the `data` member is
/// taken from the text rather than re-serialised (an integer above 2^53 would change).
pub fn raw_member<'a>(object: &'a str, key: &str) -> Option<&'a str> {
    let mut r = Reader::new(object);
    r.begin_object().ok()?;
    let mut first = true;
    let mut found = None;
    while let Some(k) = r.next_key(&mut first).ok()? {
        let value = r.raw_value().ok()?;
        if k == key {
            found = Some(value);
        }
    }
    r.end().ok()?;
    found
}

/// `(id, stream, epoch, offset)` of a notification frame, borrowed from its text where possible.
pub type NotificationPosition<'a> = (Cow<'a, str>, Cow<'a, str>, Cow<'a, str>, Option<u64>);

/// Where a `notification` frame places its notification — `(id, stream, epoch, offset)` — read in one pass over
/// the frame without decoding the rest (`None` for any other frame, or a malformed one). For server drivers that
/// track cursors per stream (Server-Sent Events resume tokens).
pub fn notification_position(text: &str) -> Option<NotificationPosition<'_>> {
    let mut r = Reader::new(text);
    r.begin_object().ok()?;
    let mut first = true;
    let (mut op, mut id, mut stream, mut epoch, mut offset) = (false, None, None, None, None);
    while let Some(key) = r.next_key(&mut first).ok()? {
        match &*key {
            "op" => op = r.string().ok()? == "notification",
            "id" => id = Some(r.string().ok()?),
            "stream" => stream = Some(r.string().ok()?),
            "epoch" => epoch = Some(r.string().ok()?),
            "offset" => offset = if r.null() { None } else { Some(r.u64().ok()?) },
            _ => {
                r.raw_value().ok()?;
            }
        }
    }
    if !op {
        return None;
    }
    Some((id?, stream?, epoch?, offset))
}

/// The verbatim JSON text of each element of the JSON array `array`, or `None` when it is not a well-formed
/// array (see [`raw_member`]).
pub fn raw_elements(array: &str) -> Option<Vec<&str>> {
    let mut r = Reader::new(array);
    r.begin_array().ok()?;
    let mut first = true;
    let mut out = Vec::new();
    while r.next_element(&mut first).ok()? {
        out.push(r.raw_value().ok()?);
    }
    r.end().ok()?;
    Some(out)
}

/// `s` as a JSON string, to quote it in a message (cheaper than `{:?}`, which pulls Unicode tables into the
/// browser build).
pub(crate) fn quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    write_str(&mut out, s);
    out
}

/// Appends `s` as a JSON string literal, escaped as the protocol's own frames are (for bindings that hand JSON
/// to their platform without a serializer).
pub fn push_json_str(out: &mut String, s: &str) {
    write_str(out, s);
}

/// Appends `v` as a JSON number.
pub fn push_json_u64(out: &mut String, v: u64) {
    super::json::push_u64(out, v);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The frame encoded from borrowed fields is the text of the frame encoded from the notification, whatever is
    /// present, escaped or placed elsewhere.
    #[test]
    fn a_notification_frame_from_fields_is_the_server_frame() {
        for (title, body, data, group, offset) in [
            (None, None, None, None, None),
            (Some("Hi \"you\"\n"), Some("b\u{e9}\u{1}"), Some(r#"{"k":[1,2]}"#), Some("g"), Some(7)),
            (Some("t"), None, Some("null"), None, Some(u64::MAX)),
        ] {
            let fields = NotificationFields {
                id: "01JDZ3K5W8Q2M4N6P8R0T2V4X6".into(),
                stream: "ignored".into(),
                offset: Some(99),
                epoch: "ignored".into(),
                kind: "comment.created".into(),
                priority: Priority::Critical,
                persistence: Persistence::Bufferable,
                title: title.map(Into::into),
                body: body.map(Into::into),
                data: data.map(|d| super::super::RawJson::from_string(d.into()).unwrap()),
                group: group.map(Into::into),
                created_at: 1_733_000_000_123,
            };
            let mut placed = fields.clone();
            ("user:al\"ice").clone_into(&mut placed.stream);
            ("ep\\1").clone_into(&mut placed.epoch);
            placed.offset = offset;
            let expected = encode_server_frame(&ServerFrame::Notification(placed.into()));
            assert_eq!(encode_notification_frame(&fields, "user:al\"ice", "ep\\1", offset), expected);
        }
    }

    fn sample(title: Option<&str>, data: Option<&str>, group: Option<&str>, offset: Option<u64>) -> Notification {
        Notification::from(NotificationFields {
            id: "01JDZ3K5W8Q2M4N6P8R0T2V4X6".into(),
            stream: "user:alice".into(),
            offset,
            epoch: "ep1".into(),
            kind: "comment.created".into(),
            priority: Priority::Informational,
            persistence: Persistence::Persistent,
            title: title.map(Into::into),
            body: Some("line one\nline \"two\" \u{e9}".into()),
            data: data.map(|d| RawJson::from_string(d.into()).unwrap()),
            group: group.map(Into::into),
            created_at: 1_763_808_060_123,
        })
    }

    /// Found by the `browser_decoder` fuzz target (`fuzz/corpus/browser_decoder/regression-member-of-another-frame`):
    /// the codec typed every member it knew by name, whatever the frame, so an `unsubscribed` carrying a `group`
    /// that is a number was refused, where unknown members must be ignored (§1) and the browser decoder ignored it.
    #[test]
    fn members_of_other_kinds_of_frame_are_ignored_like_unknown_ones() {
        let frame = r#"{"op":"unsubscribed","ref":2,"stream":"topic:a","group":63,"title":5,"offset":"x"}"#;
        assert_eq!(
            decode_server_frame(frame),
            Ok(ServerFrame::Unsubscribed { reference: 2, stream: "topic:a".into() })
        );
        let frame = r#"{"op":"heartbeat","echo":"yes","streams":7}"#;
        assert_eq!(decode_server_frame(frame), Ok(ServerFrame::Heartbeat));
        let client = r#"{"op":"ack","ids":["a"],"token":1,"ref":"x"}"#;
        assert_eq!(decode_client_frame(client), Ok(ClientFrame::Ack { ids: vec!["a".into()] }));
        // The frame's own members are still checked.
        assert!(decode_server_frame(r#"{"op":"unsubscribed","ref":2,"stream":5}"#).is_err());
        assert!(decode_client_frame(r#"{"op":"ack","ids":"a"}"#).is_err());
    }

    /// Defects 4 and 5 of issue 12: one rule for what a server answers and what ends the connection (§6.3).
    #[test]
    fn refused_client_frames_are_answered_when_they_carry_a_ref_and_fatal_otherwise() {
        let rejected = |text: &str| decode_client_request(text).expect_err(text);
        let answered = |text: &str, reference: Option<u64>| {
            let r = rejected(text);
            assert_eq!((r.code, r.reference, r.fatal), (ErrorCode::BadRequest, reference, false), "{text}: {r:?}");
            r.message
        };
        let fatal = |text: &str, code: ErrorCode| {
            let r = rejected(text);
            assert_eq!((r.code, r.reference, r.fatal), (code, None, true), "{text}: {r:?}");
            r.message
        };
        // Member errors in requests with a readable ref: answered, whatever the member's kind of problem.
        let m = answered(r#"{"op":"register_push","ref":3,"platform":"carrier_pigeon","token":"t"}"#, Some(3));
        assert!(m.contains("register_push") && m.contains("carrier_pigeon"), "{m}");
        answered(r#"{"op":"subscribe","streams":5,"ref":7}"#, Some(7));
        answered(r#"{"op":"subscribe","ref":8,"streams":[{"stream":"topic:a","epoch":"e","offset":-1}]}"#, Some(8));
        answered(r#"{"op":"subscribe","ref":9}"#, Some(9));
        answered(r#"{"op":"unsubscribe","ref":10,"streams":[1]}"#, Some(10));
        answered(r#"{"op":"subscribe","ref":11,"ref":11,"streams":[]}"#, Some(11));
        // No ref to answer: ack and heartbeat are answered without one; requests that need one are fatal.
        answered(r#"{"op":"ack","ids":"n1"}"#, None);
        answered(r#"{"op":"heartbeat","echo":"yes"}"#, None);
        fatal(r#"{"op":"subscribe","streams":[]}"#, ErrorCode::ProtocolError);
        fatal(r#"{"op":"subscribe","ref":-1,"streams":[]}"#, ErrorCode::ProtocolError);
        // A missing or unusable token is `unauthorized` (4001: refresh once), other auth problems are fatal.
        let m = fatal(r#"{"op":"auth","device":"d-1"}"#, ErrorCode::Unauthorized);
        assert!(m.contains("token"), "{m}");
        fatal(r#"{"op":"auth","token":7,"device":"d-1"}"#, ErrorCode::Unauthorized);
        fatal(r#"{"op":"auth","token":"t"}"#, ErrorCode::ProtocolError);
        // What cannot be attributed to a request.
        for text in ["{", "[1]", "null", r#"{"ref":1}"#, r#"{"op":"subscribe!","ref":1}"#, r#"{"op":7,"ref":1}"#] {
            fatal(text, ErrorCode::ProtocolError);
        }
        assert!(decode_client_request(r#"{"op":"heartbeat"}"#).is_ok());
    }

    #[test]
    fn the_canonical_path_decodes_every_encoded_notification_and_agrees_with_the_member_loop() {
        for n in [
            sample(Some("t"), Some(r#"{"a":[1,2.5e3,"x\"y"],"b":{"c":null}}"#), Some("likes"), Some(7)),
            sample(None, None, None, None),
            sample(Some(""), Some("\"s\""), None, Some(0)),
        ] {
            let text = encode_server_frame(&ServerFrame::Notification(n.clone()));
            assert_eq!(notification_canonical(&text).as_ref(), Some(&n), "{text}");
            assert_eq!(notification_members(&text, true).as_ref(), Ok(&n), "{text}");
        }
    }

    #[test]
    fn the_canonical_path_steps_aside_for_other_layouts_and_invalid_frames() {
        let text = encode_server_frame(&ServerFrame::Notification(sample(Some("t"), None, None, Some(1))));
        // Whitespace, reordered members, an unknown member: not canonical, still decoded by the member loop.
        let spaced = text.replacen(",\"stream\":", ", \"stream\":", 1);
        let extra = text.replacen(",\"created_at\":", ",\"x\":1,\"created_at\":", 1);
        for other in [&spaced, &extra] {
            assert_eq!(notification_canonical(other), None, "{other}");
            assert!(matches!(decode_server_frame(other), Ok(ServerFrame::Notification(_))), "{other}");
        }
        // Invalid data or an unknown priority: refused by every path.
        for bad in [text.replace("\"informational\"", "\"urgent\""), text.replacen("\"t\"", "\"t\u{1}\"", 1)] {
            assert_eq!(notification_canonical(&bad), None, "{bad}");
            assert!(decode_server_frame(&bad).is_err(), "{bad}");
        }
    }
}
