//! Protocol v1 wire types, shared by the client engine and the reference server.
//!
//! `docs/protocol.md` is the normative description; this module is its executable form. Every frame is one
//! JSON object with an `op` member. Decoding is strict about types and lenient about unknown members.

pub mod api;
mod codec;
mod inbox;
pub(crate) mod json;
mod push;

use std::fmt;

/// The WebSocket subprotocol a v1 client offers and a v1 server selects.
pub const SUBPROTOCOL: &str = "tidings.v1";
/// Largest frame a client may send.
pub const MAX_CLIENT_FRAME_BYTES: usize = 16 * 1024;
/// Largest frame the server sends.
pub const MAX_SERVER_FRAME_BYTES: usize = 64 * 1024;
/// Most streams in one `subscribe` frame.
pub const MAX_STREAMS_PER_SUBSCRIBE: usize = 64;
/// Most streams one connection may hold.
pub const MAX_STREAMS_PER_CONNECTION: usize = 256;
/// Most ids in one `ack` frame.
pub const MAX_IDS_PER_ACK: usize = 256;
/// Longest id, user id, device id, topic name, `type` or `group`.
pub const MAX_NAME_BYTES: usize = 128;
/// Longest push token.
pub const MAX_PUSH_TOKEN_BYTES: usize = 4096;
/// Longest `title`.
pub const MAX_TITLE_BYTES: usize = 256;
/// Longest `body`.
pub const MAX_BODY_BYTES: usize = 4096;
/// Longest encoded `data`.
pub const MAX_DATA_BYTES: usize = 32 * 1024;

/// Delivery tier of a notification.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Priority {
    /// Must reach the user now; never held back.
    Critical,
    /// Normal notifications; never held back.
    Important,
    /// Low priority; may be batched into digests when it has a `group`.
    Informational,
}

impl Priority {
    /// From the wire name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "critical" => Priority::Critical,
            "important" => Priority::Important,
            "informational" => Priority::Informational,
            _ => return None,
        })
    }

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Critical => "critical",
            Priority::Important => "important",
            Priority::Informational => "informational",
        }
    }
}

/// How long a notification is kept by the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Persistence {
    /// Live connections only: no offset, never replayed, never pushed.
    Ephemeral,
    /// Kept in the stream's bounded replay buffer; replayed and pushed.
    Bufferable,
    /// As bufferable, and stored durably when the server has a durable store.
    Persistent,
}

impl Persistence {
    /// From the wire name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "ephemeral" => Persistence::Ephemeral,
            "bufferable" => Persistence::Bufferable,
            "persistent" => Persistence::Persistent,
            _ => return None,
        })
    }

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Persistence::Ephemeral => "ephemeral",
            Persistence::Bufferable => "bufferable",
            Persistence::Persistent => "persistent",
        }
    }

    /// Whether notifications of this kind get an offset and a place in the replay buffer.
    pub fn is_buffered(self) -> bool {
        !matches!(self, Persistence::Ephemeral)
    }
}

/// A JSON value carried verbatim (the `data` member): validated, never parsed into a tree, handed to the app
/// as text.
#[derive(Clone, PartialEq, Eq)]
pub struct RawJson(Box<str>);

impl RawJson {
    /// Checks that `text` is one JSON value and keeps it verbatim (surrounding whitespace trimmed).
    pub fn from_string(text: String) -> Result<Self, DecodeError> {
        let mut r = json::Reader::new(&text);
        let raw = r.raw_value().and_then(|raw| r.end().map(|()| raw.len()));
        match raw {
            Ok(len) if len == text.len() => Ok(RawJson(text.into_boxed_str())),
            Ok(_) => Ok(RawJson(text.trim().into())),
            Err(e) => Err(DecodeError::new(format!("data is not valid JSON: {}", e.message()))),
        }
    }

    /// The JSON text.
    pub fn get(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for RawJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.get())
    }
}

/// The notification envelope (protocol §3). The same object travels over the socket, in push payloads and in
/// replay.
///
/// Its text fields live in one buffer (read them with the accessors): a notification is two allocations, this
/// buffer and the event's box, instead of one per field. Build one from [`NotificationFields`].
#[derive(Clone)]
pub struct Notification {
    /// `id`, `stream`, `epoch`, `kind`, then the optional texts, back to back.
    text: Box<str>,
    id: Span,
    stream: Span,
    epoch: Span,
    kind: Span,
    title: Option<Span>,
    body: Option<Span>,
    data: Option<Span>,
    group: Option<Span>,
    /// Position in the stream; absent for ephemeral notifications.
    pub offset: Option<u64>,
    /// Delivery tier.
    pub priority: Priority,
    /// Retention class.
    pub persistence: Persistence,
    /// When the server accepted the publish (ms since the Unix epoch).
    pub created_at: u64,
}

/// Where a text field sits in [`Notification::text`].
#[derive(Clone, Copy, PartialEq, Eq)]
struct Span {
    start: u32,
    end: u32,
}

/// The fields of a [`Notification`], owned one by one: what apps, bindings and the server build notifications
/// from (`NotificationFields { .. }.into()`) and take apart ([`Notification::to_fields`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotificationFields {
    /// Globally unique id; one publish has one id across all its streams.
    pub id: String,
    /// `user:<id>` or `topic:<name>`.
    pub stream: String,
    /// Position in the stream; absent for ephemeral notifications.
    pub offset: Option<u64>,
    /// History generation of the stream.
    pub epoch: String,
    /// Application-defined kind (`type` on the wire).
    pub kind: String,
    /// Delivery tier.
    pub priority: Priority,
    /// Retention class.
    pub persistence: Persistence,
    /// Short text.
    pub title: Option<String>,
    /// Text.
    pub body: Option<String>,
    /// Application payload, verbatim JSON.
    pub data: Option<RawJson>,
    /// Batching key.
    pub group: Option<String>,
    /// When the server accepted the publish (ms since the Unix epoch).
    pub created_at: u64,
}

/// The text fields of a notification being assembled, borrowed from wherever they were decoded.
pub(crate) struct Texts<'a> {
    pub(crate) id: &'a str,
    pub(crate) stream: &'a str,
    pub(crate) epoch: &'a str,
    pub(crate) kind: &'a str,
    pub(crate) title: Option<&'a str>,
    pub(crate) body: Option<&'a str>,
    /// Already checked to be one JSON value.
    pub(crate) data: Option<&'a str>,
    pub(crate) group: Option<&'a str>,
}

impl Notification {
    /// Copies `texts` into one buffer. Frames are at most 64 KiB and payloads are checked against their limits,
    /// so offsets fit `u32`.
    pub(crate) fn assemble(
        texts: Texts<'_>,
        offset: Option<u64>,
        priority: Priority,
        persistence: Persistence,
        created_at: u64,
    ) -> Notification {
        let Texts { id, stream, epoch, kind, title, body, data, group } = texts;
        let optional = [title, body, data, group];
        let len = id.len()
            + stream.len()
            + epoch.len()
            + kind.len()
            + optional.iter().flatten().map(|s| s.len()).sum::<usize>();
        let mut text = String::with_capacity(len);
        let mut put = |s: &str| {
            let start = text.len() as u32;
            text.push_str(s);
            Span { start, end: text.len() as u32 }
        };
        let (id, stream, epoch, kind) = (put(id), put(stream), put(epoch), put(kind));
        let [title, body, data, group] = optional.map(|o| o.map(&mut put));
        Notification {
            text: text.into_boxed_str(),
            id,
            stream,
            epoch,
            kind,
            title,
            body,
            data,
            group,
            offset,
            priority,
            persistence,
            created_at,
        }
    }

    fn get(&self, span: Span) -> &str {
        // Spans are made by `assemble` at character boundaries of `text`.
        self.text.get(span.start as usize..span.end as usize).unwrap_or_default()
    }

    /// Globally unique id; one publish has one id across all its streams.
    pub fn id(&self) -> &str {
        self.get(self.id)
    }

    /// `user:<id>` or `topic:<name>`.
    pub fn stream(&self) -> &str {
        self.get(self.stream)
    }

    /// History generation of the stream.
    pub fn epoch(&self) -> &str {
        self.get(self.epoch)
    }

    /// Application-defined kind (`type` on the wire).
    pub fn kind(&self) -> &str {
        self.get(self.kind)
    }

    /// Short text.
    pub fn title(&self) -> Option<&str> {
        self.title.map(|s| self.get(s))
    }

    /// Text.
    pub fn body(&self) -> Option<&str> {
        self.body.map(|s| self.get(s))
    }

    /// Application payload: the verbatim JSON text.
    pub fn data(&self) -> Option<&str> {
        self.data.map(|s| self.get(s))
    }

    /// Batching key.
    pub fn group(&self) -> Option<&str> {
        self.group.map(|s| self.get(s))
    }

    /// The fields, owned one by one.
    pub fn to_fields(&self) -> NotificationFields {
        NotificationFields {
            id: self.id().to_owned(),
            stream: self.stream().to_owned(),
            offset: self.offset,
            epoch: self.epoch().to_owned(),
            kind: self.kind().to_owned(),
            priority: self.priority,
            persistence: self.persistence,
            title: self.title().map(str::to_owned),
            body: self.body().map(str::to_owned),
            data: self.data().map(|d| RawJson(d.into())),
            group: self.group().map(str::to_owned),
            created_at: self.created_at,
        }
    }
}

impl From<NotificationFields> for Notification {
    fn from(f: NotificationFields) -> Notification {
        Notification::from(&f)
    }
}

impl From<&NotificationFields> for Notification {
    fn from(f: &NotificationFields) -> Notification {
        let texts = Texts {
            id: &f.id,
            stream: &f.stream,
            epoch: &f.epoch,
            kind: &f.kind,
            title: f.title.as_deref(),
            body: f.body.as_deref(),
            data: f.data.as_ref().map(RawJson::get),
            group: f.group.as_deref(),
        };
        Notification::assemble(texts, f.offset, f.priority, f.persistence, f.created_at)
    }
}

impl PartialEq for Notification {
    fn eq(&self, other: &Self) -> bool {
        self.id() == other.id()
            && self.stream() == other.stream()
            && self.offset == other.offset
            && self.epoch() == other.epoch()
            && self.kind() == other.kind()
            && self.priority == other.priority
            && self.persistence == other.persistence
            && self.title() == other.title()
            && self.body() == other.body()
            && self.data() == other.data()
            && self.group() == other.group()
            && self.created_at == other.created_at
    }
}

impl Eq for Notification {}

impl fmt::Debug for Notification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Notification")
            .field("id", &self.id())
            .field("stream", &self.stream())
            .field("offset", &self.offset)
            .field("epoch", &self.epoch())
            .field("kind", &self.kind())
            .field("priority", &self.priority)
            .field("persistence", &self.persistence)
            .field("title", &self.title())
            .field("body", &self.body())
            .field("data", &self.data())
            .field("group", &self.group())
            .field("created_at", &self.created_at)
            .finish()
    }
}

impl Notification {
    /// Checks the envelope against the protocol's limits (used on the push path, where the payload comes from
    /// outside the socket, and by the server before it publishes).
    pub fn validate(&self) -> Result<(), DecodeError> {
        validate_id(self.id()).map_err(|e| DecodeError::new(format!("id: {e}")))?;
        StreamName::parse(self.stream()).map_err(|e| DecodeError::new(format!("stream: {e}")))?;
        if self.epoch().is_empty() || self.epoch().len() > 32 {
            return Err(DecodeError::new("epoch must be 1 to 32 characters"));
        }
        if self.persistence.is_buffered() != self.offset.is_some() {
            return Err(DecodeError::new(
                "offset must be present exactly when persistence is bufferable or persistent",
            ));
        }
        if self.offset == Some(0) {
            return Err(DecodeError::new("offset must be at least 1"));
        }
        check_len("type", self.kind(), 1, MAX_NAME_BYTES)?;
        if let Some(t) = self.title() {
            check_len("title", t, 0, MAX_TITLE_BYTES)?;
        }
        if let Some(b) = self.body() {
            check_len("body", b, 0, MAX_BODY_BYTES)?;
        }
        if let Some(d) = self.data()
            && d.len() > MAX_DATA_BYTES
        {
            return Err(DecodeError::new(format!("data is larger than {MAX_DATA_BYTES} bytes")));
        }
        if let Some(g) = self.group() {
            check_len("group", g, 1, MAX_NAME_BYTES)?;
        }
        Ok(())
    }
}

fn check_len(what: &str, s: &str, min: usize, max: usize) -> Result<(), DecodeError> {
    if s.len() < min || s.len() > max {
        return Err(DecodeError::new(format!("{what} must be {min} to {max} bytes, got {}", s.len())));
    }
    Ok(())
}

/// Checks a notification id or device id: `[A-Za-z0-9_.:-]{1,128}`.
pub fn validate_id(id: &str) -> Result<(), String> {
    validate_chars(id, &ID_CHARS)
}

/// The bytes allowed in a name: ASCII letters, digits and `extra`.
const fn allowed(extra: &[u8]) -> [bool; 256] {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 128 {
        table[b] = (b as u8).is_ascii_alphanumeric();
        b += 1;
    }
    let mut i = 0;
    while i < extra.len() {
        table[extra[i] as usize] = true;
        i += 1;
    }
    table
}

/// Notification ids, device ids and topic names: `[A-Za-z0-9_.:-]`.
static ID_CHARS: [bool; 256] = allowed(b"_.:-");
/// User ids: `[A-Za-z0-9_.@-]`.
static USER_CHARS: [bool; 256] = allowed(b"_.@-");

fn validate_chars(s: &str, ok: &[bool; 256]) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.len() > MAX_NAME_BYTES {
        return Err(format!("must be at most {MAX_NAME_BYTES} bytes"));
    }
    // Every allowed character is ASCII (no byte of a multi-byte character is in the table), so a table lookup per
    // byte, without an early exit, settles the common case: the server checks every acked id this way.
    if s.bytes().fold(true, |all, b| all & ok[usize::from(b)]) {
        return Ok(());
    }
    let bad = s.chars().find(|c| !c.is_ascii() || !ok[*c as usize]).unwrap_or('\0');
    Err(format!("contains the character {}", codec::quoted(bad.encode_utf8(&mut [0; 4]))))
}

/// Checks a user id: `[A-Za-z0-9_.@-]{1,128}`.
pub fn validate_user_id(user: &str) -> Result<(), String> {
    validate_chars(user, &USER_CHARS)
}

/// Checks a topic name: `[A-Za-z0-9_.:-]{1,128}`.
pub fn validate_topic(topic: &str) -> Result<(), String> {
    validate_chars(topic, &ID_CHARS)
}

/// A parsed stream name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamName<'a> {
    /// `user:<id>`
    User(&'a str),
    /// `topic:<name>`
    Topic(&'a str),
}

impl<'a> StreamName<'a> {
    /// Parses and validates `user:<id>` or `topic:<name>`.
    pub fn parse(s: &'a str) -> Result<Self, String> {
        if let Some(user) = s.strip_prefix("user:") {
            validate_user_id(user).map_err(|e| format!("user id in {} {e}", codec::quoted(s)))?;
            Ok(StreamName::User(user))
        } else if let Some(topic) = s.strip_prefix("topic:") {
            validate_topic(topic).map_err(|e| format!("topic name in {} {e}", codec::quoted(s)))?;
            Ok(StreamName::Topic(topic))
        } else {
            Err(format!("{} is not a stream name: expected user:<id> or topic:<name>", codec::quoted(s)))
        }
    }
}

/// The name of a user's own stream.
pub fn user_stream(user: &str) -> String {
    format!("user:{user}")
}

/// Where a device receives pushes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PushPlatform {
    /// Apple Push Notification service, production.
    Apns,
    /// Apple Push Notification service, development builds.
    ApnsSandbox,
    /// Firebase Cloud Messaging.
    Fcm,
    /// Web Push (RFC 8030); the token is the subscription JSON.
    WebPush,
}

impl PushPlatform {
    /// From the wire name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "apns" => PushPlatform::Apns,
            "apns_sandbox" => PushPlatform::ApnsSandbox,
            "fcm" => PushPlatform::Fcm,
            "web_push" => PushPlatform::WebPush,
            _ => return None,
        })
    }

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            PushPlatform::Apns => "apns",
            PushPlatform::ApnsSandbox => "apns_sandbox",
            PushPlatform::Fcm => "fcm",
            PushPlatform::WebPush => "web_push",
        }
    }
}

/// Checks a push token: 1 to 4 096 bytes, no control characters.
pub fn validate_push_token(token: &str) -> Result<(), String> {
    if token.is_empty() || token.len() > MAX_PUSH_TOKEN_BYTES {
        return Err(format!("must be 1 to {MAX_PUSH_TOKEN_BYTES} bytes, got {}", token.len()));
    }
    if token.chars().any(char::is_control) {
        return Err("contains control characters".into());
    }
    Ok(())
}

/// Checks a push registration as the protocol defines it (§2.10): the token's size and characters, and for
/// `web_push` a complete subscription — a JSON object with an `https://` `endpoint` and `keys` holding `p256dh`
/// (base64url of a 65-byte uncompressed P-256 point, first byte 4) and `auth` (base64url of 16 bytes). The error
/// names the member. (The reference server also checks that `p256dh` is a point on the curve.)
pub fn validate_push_registration(platform: PushPlatform, token: &str) -> Result<(), String> {
    validate_push_token(token)?;
    if platform != PushPlatform::WebPush {
        return Ok(());
    }
    let members = |text: &str, names: &[&str]| -> Result<Vec<Option<String>>, String> {
        let mut r = json::Reader::new(text);
        let mut found = vec![None; names.len()];
        let mut read = || -> Result<(), DecodeError> {
            r.begin_object()?;
            let mut first = true;
            while let Some(key) = r.next_key(&mut first)? {
                let value = r.raw_value()?;
                if let Some(i) = names.iter().position(|n| *n == key) {
                    found[i] = Some(value.to_owned());
                }
            }
            r.end()
        };
        read().map_err(|e| format!("is not a JSON object ({})", e.message()))?;
        Ok(found)
    };
    let string = |raw: Option<String>, name: &str| -> Result<String, String> {
        let raw = raw.ok_or_else(|| format!("lacks `{name}`"))?;
        let mut r = json::Reader::new(&raw);
        r.string().map(std::borrow::Cow::into_owned).map_err(|_| format!("`{name}` is not a string"))
    };
    let hint = " (a web_push token is the PushSubscription as JSON: endpoint and keys)";
    let with_hint = |e: String| format!("{e}{hint}");
    let top = members(token, &["endpoint", "keys"]).map_err(with_hint)?;
    let endpoint = string(top[0].clone(), "endpoint").map_err(with_hint)?;
    if !endpoint.starts_with("https://") || endpoint.len() <= "https://".len() {
        return Err(format!("`endpoint` must be an https:// URL{hint}"));
    }
    let keys = top[1].clone().ok_or_else(|| with_hint("lacks `keys`".into()))?;
    let keys = members(&keys, &["p256dh", "auth"]).map_err(|e| format!("`keys` {e}{hint}"))?;
    let p256dh = string(keys[0].clone(), "keys.p256dh").map_err(with_hint)?;
    match base64url_decoded_len(&p256dh) {
        Some(65) if p256dh.starts_with('B') => {}
        _ => return Err(format!("`keys.p256dh` must be base64url of a 65-byte uncompressed P-256 point{hint}")),
    }
    let auth = string(keys[1].clone(), "keys.auth").map_err(with_hint)?;
    if base64url_decoded_len(&auth) != Some(16) {
        return Err(format!("`keys.auth` must be base64url of 16 bytes{hint}"));
    }
    Ok(())
}

/// How many bytes base64url text (padded or not) decodes to, or `None` when it is not base64url.
fn base64url_decoded_len(s: &str) -> Option<usize> {
    let body = s.trim_end_matches('=');
    let padding = s.len() - body.len();
    if padding > 2 || (padding > 0 && !s.len().is_multiple_of(4)) {
        return None;
    }
    if !body.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        return None;
    }
    match body.len() % 4 {
        1 => None,
        r => Some(body.len() / 4 * 3 + r.saturating_sub(1)),
    }
}

/// One entry of a `subscribe` frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubscribeEntry {
    /// The stream.
    pub stream: String,
    /// Epoch of the client's cursor.
    pub epoch: Option<String>,
    /// Offset of the client's cursor.
    pub offset: Option<u64>,
}

/// Frames a client sends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientFrame {
    /// Authenticate (first frame) or replace the token (later).
    Auth {
        /// The signed token.
        token: String,
        /// Stable id of this installation.
        device: String,
        /// `name/version` of the client library.
        client: Option<String>,
    },
    /// Subscribe to streams, each with an optional resume position.
    Subscribe {
        /// Request reference echoed by the replies.
        reference: u64,
        /// Streams.
        streams: Vec<SubscribeEntry>,
    },
    /// Unsubscribe from streams.
    Unsubscribe {
        /// Request reference echoed by the replies.
        reference: u64,
        /// Stream names.
        streams: Vec<String>,
    },
    /// Notifications that reached the application.
    Ack {
        /// Notification ids.
        ids: Vec<String>,
    },
    /// Keep-alive; `echo` asks the server to answer at once.
    Heartbeat {
        /// Ask for an immediate heartbeat back.
        echo: bool,
    },
    /// Registers this device's push address.
    RegisterPush {
        /// Request reference echoed by the reply.
        reference: u64,
        /// Push service.
        platform: PushPlatform,
        /// Device token or subscription.
        token: String,
    },
    /// Asks for the inbox's counts now and for every change of the inbox from now on (`inbox` frames).
    InboxWatch {
        /// Request reference echoed by the reply.
        reference: u64,
    },
    /// Asks for a page of the inbox.
    InboxList {
        /// Request reference echoed by the reply.
        reference: u64,
        /// Which items.
        query: InboxQuery,
    },
    /// Changes the state of inbox items.
    InboxMark {
        /// Request reference echoed by the reply.
        reference: u64,
        /// Idempotency key of the change (empty: none): a change sent again with the same key is applied once.
        op_id: String,
        /// What to do.
        action: InboxAction,
        /// The items, by notification id.
        ids: Vec<String>,
    },
    /// Marks every item up to a cursor read or seen.
    InboxMarkAll {
        /// Request reference echoed by the reply.
        reference: u64,
        /// Idempotency key of the change (empty: none).
        op_id: String,
        /// Read or seen.
        action: MarkAllAction,
        /// The cursor (the newest `seq` the client knows); `None`: everything the server has.
        up_to: Option<u64>,
    },
    /// Asks for a page of a stream's stored history.
    History {
        /// Request reference echoed by the reply.
        reference: u64,
        /// The stream.
        stream: String,
        /// Only notifications after this `(epoch, offset)`; `None`: from the oldest stored.
        position: Option<(String, u64)>,
        /// Most notifications (default 100, at most 1000).
        limit: Option<u32>,
    },
}

/// How a subscription continues from the client's position.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WireContinuity {
    /// No position was given; delivery starts after the head.
    Fresh,
    /// The position was valid; `replayed` notifications follow.
    Resumed {
        /// How many notifications are replayed.
        replayed: u64,
    },
    /// The position cannot be continued. What the stream's current epoch still holds up to the head may follow:
    /// `replayed` notifications, offsets `offset - replayed + 1 ..= offset` (absent on the wire means 0, as from
    /// servers that predate it).
    Gap {
        /// Why.
        reason: GapReason,
        /// How many notifications were lost, when known.
        missed: Option<u64>,
        /// How many notifications of the current epoch follow at once.
        replayed: u64,
    },
}

/// Why a stream could not be resumed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GapReason {
    /// The server lost the stream's history (new epoch).
    EpochChanged,
    /// Notifications after the position were evicted from the replay buffer.
    OutOfBuffer,
    /// The position is beyond the stream's newest offset.
    AheadOfStream,
}

impl GapReason {
    /// From the wire name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "epoch_changed" => GapReason::EpochChanged,
            "out_of_buffer" => GapReason::OutOfBuffer,
            "ahead_of_stream" => GapReason::AheadOfStream,
            _ => return None,
        })
    }

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            GapReason::EpochChanged => "epoch_changed",
            GapReason::OutOfBuffer => "out_of_buffer",
            GapReason::AheadOfStream => "ahead_of_stream",
        }
    }
}

/// Frames the server sends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerFrame {
    /// Authentication succeeded.
    Welcome {
        /// Connection id.
        session: String,
        /// Authenticated user id.
        user: String,
        /// Device id, echoed.
        device: String,
        /// Heartbeat interval.
        heartbeat_ms: u64,
        /// Largest frame the server sends.
        max_frame_bytes: u64,
        /// Time until the token expires.
        token_expires_in_ms: Option<u64>,
    },
    /// A stream subscription is active.
    Subscribed {
        /// Request reference.
        reference: u64,
        /// The stream.
        stream: String,
        /// Current epoch.
        epoch: String,
        /// Newest offset in the stream (0 if none).
        offset: u64,
        /// How delivery continues.
        continuity: WireContinuity,
    },
    /// A stream subscription ended.
    Unsubscribed {
        /// Request reference.
        reference: u64,
        /// The stream.
        stream: String,
    },
    /// A notification.
    Notification(Notification),
    /// A token sent on a live connection was accepted.
    TokenRefreshed {
        /// Time until the new token expires.
        token_expires_in_ms: Option<u64>,
    },
    /// Keep-alive.
    Heartbeat,
    /// A `register_push` was stored.
    PushRegistered {
        /// Request reference.
        reference: u64,
        /// The platform registered.
        platform: PushPlatform,
    },
    /// An error, request-scoped (with `ref`) or fatal (followed by a close).
    Error(ErrorFrame),
    /// The inbox's counts and what changed: the answer to an inbox request, or a live change.
    Inbox(InboxUpdate),
    /// A page of the inbox.
    InboxPage(InboxPage),
    /// A page of a stream's stored history.
    HistoryPage(HistoryPage),
}

/// The body of an `error` frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorFrame {
    /// The request this answers.
    pub reference: Option<u64>,
    /// The stream of the request entry this answers.
    pub stream: Option<String>,
    /// Machine-readable code.
    pub code: ErrorCode,
    /// Human-readable detail.
    pub message: String,
    /// Minimum wait before reconnecting.
    pub retry_after_ms: Option<u64>,
}

/// Error codes (protocol §6.1). Unknown codes decode as [`ErrorCode::Unknown`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// A request was invalid; the connection stays open.
    BadRequest,
    /// The token does not allow the stream; the connection stays open.
    Forbidden,
    /// Malformed frame; close 4000.
    ProtocolError,
    /// Token rejected; close 4001.
    Unauthorized,
    /// Token expired; close 4002.
    TokenExpired,
    /// No common protocol version; close 4004.
    UnsupportedVersion,
    /// No `auth` in time; close 4005.
    AuthTimeout,
    /// Too many frames; close 4008.
    RateLimited,
    /// Client frame too large; close 4009.
    FrameTooLarge,
    /// Nothing received for too long; close 4010.
    HeartbeatTimeout,
    /// The same device connected elsewhere; close 4011.
    SessionReplaced,
    /// Server shutting down; close 4012.
    ServerShutdown,
    /// Server overloaded; close 4013.
    TryAgainLater,
    /// Outbound queue overflowed; close 4014.
    SlowConsumer,
    /// Dropped by an operator; close 4015.
    Dropped,
    /// A code this client does not know.
    Unknown,
}

impl ErrorCode {
    /// From the wire name; codes this version does not know become [`ErrorCode::Unknown`].
    pub fn parse(s: &str) -> Self {
        [
            ErrorCode::BadRequest,
            ErrorCode::Forbidden,
            ErrorCode::ProtocolError,
            ErrorCode::Unauthorized,
            ErrorCode::TokenExpired,
            ErrorCode::UnsupportedVersion,
            ErrorCode::AuthTimeout,
            ErrorCode::RateLimited,
            ErrorCode::FrameTooLarge,
            ErrorCode::HeartbeatTimeout,
            ErrorCode::SessionReplaced,
            ErrorCode::ServerShutdown,
            ErrorCode::TryAgainLater,
            ErrorCode::SlowConsumer,
            ErrorCode::Dropped,
        ]
        .into_iter()
        .find(|c| c.as_str() == s)
        .unwrap_or(ErrorCode::Unknown)
    }

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::ProtocolError => "protocol_error",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::TokenExpired => "token_expired",
            ErrorCode::UnsupportedVersion => "unsupported_version",
            ErrorCode::AuthTimeout => "auth_timeout",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::FrameTooLarge => "frame_too_large",
            ErrorCode::HeartbeatTimeout => "heartbeat_timeout",
            ErrorCode::SessionReplaced => "session_replaced",
            ErrorCode::ServerShutdown => "server_shutdown",
            ErrorCode::TryAgainLater => "try_again_later",
            ErrorCode::SlowConsumer => "slow_consumer",
            ErrorCode::Dropped => "dropped",
            ErrorCode::Unknown => "unknown",
        }
    }

    /// The close code that follows this error when it ends the connection.
    pub fn close_code(self) -> Option<u16> {
        Some(match self {
            ErrorCode::BadRequest | ErrorCode::Forbidden | ErrorCode::Unknown => return None,
            ErrorCode::ProtocolError => close::PROTOCOL_ERROR,
            ErrorCode::Unauthorized => close::UNAUTHORIZED,
            ErrorCode::TokenExpired => close::TOKEN_EXPIRED,
            ErrorCode::UnsupportedVersion => close::UNSUPPORTED_VERSION,
            ErrorCode::AuthTimeout => close::AUTH_TIMEOUT,
            ErrorCode::RateLimited => close::RATE_LIMITED,
            ErrorCode::FrameTooLarge => close::FRAME_TOO_LARGE,
            ErrorCode::HeartbeatTimeout => close::HEARTBEAT_TIMEOUT,
            ErrorCode::SessionReplaced => close::SESSION_REPLACED,
            ErrorCode::ServerShutdown => close::SERVER_SHUTDOWN,
            ErrorCode::TryAgainLater => close::TRY_AGAIN_LATER,
            ErrorCode::SlowConsumer => close::SLOW_CONSUMER,
            ErrorCode::Dropped => close::DROPPED,
        })
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// WebSocket close codes (protocol §6.2).
pub mod close {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// Going away.
    pub const GOING_AWAY: u16 = 1001;
    /// Malformed frame.
    pub const PROTOCOL_ERROR: u16 = 4000;
    /// Token rejected.
    pub const UNAUTHORIZED: u16 = 4001;
    /// Token expired.
    pub const TOKEN_EXPIRED: u16 = 4002;
    /// No common protocol version.
    pub const UNSUPPORTED_VERSION: u16 = 4004;
    /// No `auth` in time.
    pub const AUTH_TIMEOUT: u16 = 4005;
    /// Too many frames.
    pub const RATE_LIMITED: u16 = 4008;
    /// Client frame too large.
    pub const FRAME_TOO_LARGE: u16 = 4009;
    /// Nothing received for too long.
    pub const HEARTBEAT_TIMEOUT: u16 = 4010;
    /// Same device connected elsewhere.
    pub const SESSION_REPLACED: u16 = 4011;
    /// Server shutting down.
    pub const SERVER_SHUTDOWN: u16 = 4012;
    /// Server overloaded.
    pub const TRY_AGAIN_LATER: u16 = 4013;
    /// Outbound queue overflowed.
    pub const SLOW_CONSUMER: u16 = 4014;
    /// Dropped by an operator.
    pub const DROPPED: u16 = 4015;
}

/// What a client must do after a connection ends with a given close code (protocol §6.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseAction {
    /// Reconnect after the backoff delay.
    RetryWithBackoff,
    /// Get a fresh token and reconnect at once (once).
    RefreshToken,
    /// Do not reconnect.
    Stop,
}

/// Classifies a close code.
pub fn close_action(code: u16) -> CloseAction {
    match code {
        close::UNAUTHORIZED | close::TOKEN_EXPIRED => CloseAction::RefreshToken,
        close::PROTOCOL_ERROR | close::UNSUPPORTED_VERSION | close::FRAME_TOO_LARGE | close::SESSION_REPLACED => {
            CloseAction::Stop
        }
        _ => CloseAction::RetryWithBackoff,
    }
}

/// A frame that could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct DecodeError {
    message: String,
}

impl DecodeError {
    /// A decode error with this message.
    pub fn new(message: impl Into<String>) -> Self {
        DecodeError { message: message.into() }
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

#[cfg(test)]
use codec::NOTIFICATION_PREFIX;
pub(crate) use codec::notification_id_hint;
pub(crate) use codec::quoted;
pub(crate) use codec::write_notification;
pub use codec::{
    FrameRejection, decode_client_frame, decode_client_request, decode_notification, decode_push_payload,
    decode_server_frame, encode_client_frame, encode_notification, encode_notification_frame, encode_server_frame,
};
pub use codec::{
    NotificationPosition, message_frames, notification_position, push_json_str, push_json_u64, raw_elements, raw_member,
};
pub use inbox::{
    ArchivedFilter, DEFAULT_HISTORY_PAGE, DEFAULT_INBOX_PAGE, HistoryPage, InboxAction, InboxCounts, InboxItem,
    InboxMark, InboxPage, InboxQuery, InboxUpdate, MAX_HISTORY_PAGE, MAX_IDS_PER_INBOX_MARK, MAX_INBOX_PAGE,
    MarkAllAction, StatusFilter, validate_op_id, write_counts, write_item,
};
pub use push::{MAX_SUMMARY_IDS, PushPayload, PushSummary, SummaryKind, decode_push};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_per_character_class_and_the_first_bad_character_is_named() {
        let max = "a".repeat(MAX_NAME_BYTES);
        for ok in ["01JDZ3K5W8Q2M4N6P8R0T2V4X6", "a_b.c:d-e", "Z", max.as_str()] {
            assert_eq!(validate_id(ok), Ok(()), "{ok}");
            assert_eq!(validate_topic(ok), Ok(()), "{ok}");
        }
        assert_eq!(validate_user_id("ann@example.com"), Ok(()));
        assert_eq!(validate_id("ann@example.com"), Err(r#"contains the character "@""#.into()));
        assert_eq!(validate_user_id("a:b"), Err(r#"contains the character ":""#.into()));
        assert_eq!(validate_id("ab cd"), Err(r#"contains the character " ""#.into()));
        assert_eq!(validate_topic("caf\u{e9}-x\u{1F600}"), Err("contains the character \"\u{e9}\"".into()));
        assert_eq!(validate_id("a\u{7f}"), Err(format!("contains the character {}", codec::quoted("\u{7f}"))));
        assert_eq!(validate_id(""), Err("must not be empty".into()));
        assert_eq!(validate_id(&format!("{max}a")), Err(format!("must be at most {MAX_NAME_BYTES} bytes")));
    }

    fn sample() -> Notification {
        Notification::from(NotificationFields {
            id: "01JDZ3K5W8Q2M4N6P8R0T2V4X6".into(),
            stream: "user:alice".into(),
            offset: Some(42),
            epoch: "k3v9q2".into(),
            kind: "comment.created".into(),
            priority: Priority::Important,
            persistence: Persistence::Bufferable,
            title: Some("Bob commented".into()),
            body: Some("Looks great!".into()),
            data: Some(RawJson::from_string(r#"{"post":"p-981"}"#.into()).unwrap()),
            group: None,
            created_at: 1_763_808_060_123,
        })
    }

    #[test]
    fn notification_frame_round_trips_and_uses_fast_path_prefix() {
        let frame = ServerFrame::Notification(sample());
        let text = encode_server_frame(&frame);
        assert!(text.starts_with(NOTIFICATION_PREFIX), "{text}");
        assert_eq!(decode_server_frame(&text).unwrap(), frame);
    }

    #[test]
    fn the_id_hint_is_the_id_of_a_notification_frame_as_encoded_and_nothing_else() {
        let text = encode_server_frame(&ServerFrame::Notification(sample()));
        assert_eq!(notification_id_hint(&text), Some(sample().id()));
        assert_eq!(notification_id_hint(&encode_server_frame(&ServerFrame::Heartbeat)), None);
        assert_eq!(notification_id_hint(r#"{"op":"notification","id":"unterminated"#), None);
        assert_eq!(notification_id_hint(r#"{"id":"n1","op":"notification"}"#), None, "not as the server writes it");
    }

    #[test]
    fn notification_position_reads_where_a_frame_places_its_notification() {
        let text = encode_server_frame(&ServerFrame::Notification(sample()));
        let (id, stream, epoch, offset) = notification_position(&text).unwrap();
        let n = sample();
        assert_eq!((&*id, &*stream, &*epoch, offset), (n.id(), n.stream(), n.epoch(), n.offset));
        let ephemeral = r#"{"op":"notification","id":"a","stream":"user:x","epoch":"e","offset":null,"x":[1]}"#;
        assert_eq!(notification_position(ephemeral).unwrap().3, None);
        assert!(notification_position(r#"{"op":"heartbeat"}"#).is_none());
        assert!(notification_position(r#"{"op":"notification","id":"a"}"#).is_none(), "no stream");
        assert!(notification_position("{\"op\":").is_none());
    }

    #[test]
    fn notification_decodes_in_any_member_order_with_nulls_and_unknown_members() {
        let text = r#"{"id":"n1","stream":"topic:news","epoch":"e","offset":3,"type":"t","priority":"informational",
            "persistence":"persistent","title":null,"body":null,"data":null,"group":"g","created_at":5,
            "op":"notification","future_member":[1,2]}"#;
        let ServerFrame::Notification(n) = decode_server_frame(text).unwrap() else { panic!() };
        assert_eq!(n.id(), "n1");
        assert_eq!(n.group(), Some("g"));
        assert_eq!(n.data(), None);
        assert_eq!(n.priority, Priority::Informational);
    }

    #[test]
    fn subscribed_frames_match_the_documented_examples() {
        let resumed = r#"{"op":"subscribed","ref":1,"stream":"user:alice","epoch":"k3v9q2","offset":45,"continuity":"resumed","replayed":4}"#;
        let gap = r#"{"op":"subscribed","ref":1,"stream":"topic:sports","epoch":"w2n5dd","offset":310,"continuity":"gap","reason":"out_of_buffer","missed":57}"#;
        let gap_replayed = r#"{"op":"subscribed","ref":1,"stream":"user:alice","epoch":"q8m1zz","offset":12,"continuity":"gap","reason":"epoch_changed","replayed":12}"#;
        let fresh =
            r#"{"op":"subscribed","ref":1,"stream":"topic:news","epoch":"p0x7aa","offset":1200,"continuity":"fresh"}"#;
        for text in [resumed, gap, gap_replayed, fresh] {
            let frame = decode_server_frame(text).unwrap();
            assert_eq!(encode_server_frame(&frame), text);
        }
        let ServerFrame::Subscribed { continuity, .. } = decode_server_frame(gap).unwrap() else { panic!() };
        assert_eq!(continuity, WireContinuity::Gap { reason: GapReason::OutOfBuffer, missed: Some(57), replayed: 0 });
        let ServerFrame::Subscribed { continuity, .. } = decode_server_frame(gap_replayed).unwrap() else { panic!() };
        assert_eq!(continuity, WireContinuity::Gap { reason: GapReason::EpochChanged, missed: None, replayed: 12 });
    }

    #[test]
    fn client_frames_match_the_documented_examples() {
        let examples = [
            r#"{"op":"auth","token":"t","device":"d-1","client":"tidings-rust/0.1.0"}"#,
            r#"{"op":"subscribe","ref":1,"streams":[{"stream":"user:alice","epoch":"k3v9q2","offset":41},{"stream":"topic:news"}]}"#,
            r#"{"op":"unsubscribe","ref":2,"streams":["topic:news"]}"#,
            r#"{"op":"ack","ids":["a","b"]}"#,
            r#"{"op":"heartbeat"}"#,
            r#"{"op":"heartbeat","echo":true}"#,
            r#"{"op":"register_push","ref":3,"platform":"apns","token":"5f3a"}"#,
        ];
        for text in examples {
            let frame = decode_client_frame(text).unwrap();
            assert_eq!(encode_client_frame(&frame), text);
        }
    }

    #[test]
    fn error_frames_decode_unknown_codes_without_failing() {
        let text = r#"{"op":"error","code":"something_new","message":"m"}"#;
        let ServerFrame::Error(e) = decode_server_frame(text).unwrap() else { panic!() };
        assert_eq!(e.code, ErrorCode::Unknown);
        let text = r#"{"op":"error","code":"try_again_later","message":"busy","retry_after_ms":5000}"#;
        let ServerFrame::Error(e) = decode_server_frame(text).unwrap() else { panic!() };
        assert_eq!(e.retry_after_ms, Some(5000));
        assert_eq!(e.code.close_code(), Some(close::TRY_AGAIN_LATER));
    }

    #[test]
    fn malformed_frames_get_a_clear_error() {
        let err = decode_server_frame(r#"{"op":"notification","id":5}"#).unwrap_err();
        assert!(err.message().contains("invalid notification frame"), "{err}");
        let err = decode_server_frame("not json").unwrap_err();
        assert!(err.message().contains("invalid server frame"), "{err}");
        let err = decode_client_frame(r#"{"op":"launch_rockets"}"#).unwrap_err();
        assert!(err.message().contains("unknown op"), "{err}");
    }

    #[test]
    fn stream_names_are_validated() {
        assert_eq!(StreamName::parse("user:alice@example.com"), Ok(StreamName::User("alice@example.com")));
        assert_eq!(StreamName::parse("topic:sports.eu:live"), Ok(StreamName::Topic("sports.eu:live")));
        assert!(StreamName::parse("user:").is_err());
        assert!(StreamName::parse("user:a b").is_err());
        assert!(StreamName::parse("room:x").is_err());
        assert!(StreamName::parse(&format!("topic:{}", "x".repeat(129))).is_err());
    }

    #[test]
    fn close_codes_classify_as_documented() {
        assert_eq!(close_action(close::UNAUTHORIZED), CloseAction::RefreshToken);
        assert_eq!(close_action(close::TOKEN_EXPIRED), CloseAction::RefreshToken);
        for code in [close::PROTOCOL_ERROR, close::UNSUPPORTED_VERSION, close::FRAME_TOO_LARGE, close::SESSION_REPLACED]
        {
            assert_eq!(close_action(code), CloseAction::Stop, "{code}");
        }
        for code in [1000, 1001, 1006, close::HEARTBEAT_TIMEOUT, close::SERVER_SHUTDOWN, close::DROPPED, 4999] {
            assert_eq!(close_action(code), CloseAction::RetryWithBackoff, "{code}");
        }
    }

    #[test]
    fn push_payloads_are_accepted_bare_wrapped_or_stringified() {
        let n = sample();
        let bare = encode_notification(&n);
        let wrapped = format!(r#"{{"aps":{{"alert":"x"}},"tidings":{bare}}}"#);
        let stringified = format!(r#"{{"tidings":{}}}"#, serde_json::to_string(&bare).unwrap());
        for payload in [&bare, &wrapped, &stringified] {
            assert_eq!(decode_push_payload(payload).unwrap(), n);
        }
        assert!(decode_push_payload("[]").unwrap_err().message().contains("not a JSON object"));
        let mut bad = n.clone();
        bad.offset = None;
        let err = decode_push_payload(&encode_notification(&bad)).unwrap_err();
        assert!(err.message().contains("offset must be present"), "{err}");
    }

    #[test]
    fn raw_member_returns_the_verbatim_text_of_a_member() {
        let text = r#"{"op":"notification", "data" : {"id":12345678901234567891,"f":1.0} ,"x":1}"#;
        assert_eq!(raw_member(text, "data"), Some(r#"{"id":12345678901234567891,"f":1.0}"#));
        assert_eq!(raw_member(text, "missing"), None);
        assert_eq!(raw_member(r#"{"a":1,"a":[2]}"#, "a"), Some("[2]"), "the last, as JSON.parse keeps it");
        assert_eq!(raw_member(r#"{"a":1"#, "a"), None, "not a well-formed object");
        assert_eq!(raw_member("[1]", "a"), None);
        assert_eq!(raw_elements(r#"[ {"a":1} ,2,"x"]"#), Some(vec![r#"{"a":1}"#, "2", r#""x""#]));
        assert_eq!(raw_elements("[1,"), None);
    }
}
