//! Server frames, push payloads and stored snapshots read from the browser's own `JSON.parse` output, so that
//! no JSON decoder is linked into the module (the core's codec decoder was about a fifth of its code). The
//! values are built into the core's types here and fed to the engine's decoded-frame inputs
//! (`handle_frame`, `handle_relayed_frame`, `ingest_push_notification`, `restore`): everything after decoding
//! is the engine's.
//!
//! The rules are the codec's (`core/src/protocol/codec.rs`): required members must be present, `null` counts
//! as absent, strings must be strings, numbers unsigned integers, enums known names, unknown members are
//! ignored. Where `JSON.parse` differs from the codec it is more lenient: a duplicate member keeps its last
//! value instead of being refused, and numbers are JavaScript numbers — integers above 2^53 are refused
//! (offsets and timestamps never come near), `1.0` reads as `1`. The `data` member is handed on verbatim: it is
//! cut from the frame's text by the core's `raw_member` (never re-serialised from doubles, which would change
//! integers above 2^53). A number beyond a double's range inside `data` (`1e400`) is passed on as JSON.parse
//! accepted it, where the native codec refuses it.

use tidings_core::engine::PendingBatch;
use tidings_core::protocol::api::{
    self, ApiError, Channel, PreferenceRule, Preferences, QuietHours, QuietHoursSettings, QuietRange, Selector,
};
use tidings_core::protocol::{
    DecodeError, ErrorCode, ErrorFrame, GapReason, HistoryPage, InboxAction, InboxCounts, InboxItem, InboxMark,
    InboxPage, InboxUpdate, MarkAllAction, Notification, NotificationFields, Persistence, Priority, PushPlatform,
    RawJson, ServerFrame, WireContinuity, message_frames, raw_elements, raw_member,
};
use tidings_core::protocol::{PushPayload, PushSummary, SummaryKind};
use tidings_core::{Cursor, Instant, PushRegistration, Snapshot, SnapshotScope};
use tidings_core::{InboxChange, QueuedChange};

/// A JSON value as the platform's parser gives it: `JSON.parse` output in the browser ([`wasm_bindgen::JsValue`]),
/// `serde_json::Value` on the host (the tests and the differential fuzz target, `fuzz/fuzz_targets/
/// browser_decoder.rs`, run this module's rules there against the core's codec).
pub trait Json: Sized {
    /// The text parsed, or `None` when it is not JSON.
    fn parse(text: &str) -> Option<Self>;
    /// Whether this is an object (not an array, not `null`).
    fn is_object(&self) -> bool;
    /// Whether this is an array.
    fn is_array(&self) -> bool;
    /// Member `key` of an object, if present (`null` included).
    fn member(&self, key: &str) -> Option<Self>;
    /// `null` (or `undefined`).
    fn is_null(&self) -> bool;
    /// The string, if this is one.
    fn as_string(&self) -> Option<String>;
    /// The number, if this is one (a double, as in JavaScript).
    fn as_f64(&self) -> Option<f64>;
    /// The boolean, if this is one.
    fn as_bool(&self) -> Option<bool>;
    /// The elements of an array.
    fn elements(&self) -> Vec<Self>;
    /// The member names of an object, in order.
    fn keys(&self) -> Vec<String>;
}

impl Json for wasm_bindgen::JsValue {
    fn parse(text: &str) -> Option<Self> {
        js_sys::JSON::parse(text).ok()
    }
    fn is_object(&self) -> bool {
        wasm_bindgen::JsValue::is_object(self) && !js_sys::Array::is_array(self)
    }
    fn is_array(&self) -> bool {
        js_sys::Array::is_array(self)
    }
    fn member(&self, key: &str) -> Option<Self> {
        js_sys::Reflect::get(self, &wasm_bindgen::JsValue::from_str(key)).ok().filter(|v| !v.is_undefined())
    }
    fn is_null(&self) -> bool {
        wasm_bindgen::JsValue::is_null(self) || self.is_undefined()
    }
    fn as_string(&self) -> Option<String> {
        wasm_bindgen::JsValue::as_string(self)
    }
    fn as_f64(&self) -> Option<f64> {
        wasm_bindgen::JsValue::as_f64(self)
    }
    fn as_bool(&self) -> Option<bool> {
        wasm_bindgen::JsValue::as_bool(self)
    }
    fn elements(&self) -> Vec<Self> {
        use wasm_bindgen::JsCast;
        self.clone().unchecked_into::<js_sys::Array>().iter().collect()
    }
    fn keys(&self) -> Vec<String> {
        use wasm_bindgen::JsCast;
        js_sys::Object::keys::<wasm_bindgen::JsValue>(self.unchecked_ref())
            .iter()
            .map(|k| k.as_string().unwrap_or_default())
            .collect()
    }
}

/// `serde_json::Value` read the way `JSON.parse` output is: numbers as doubles, a repeated member keeps its last
/// value. (Where the two parsers differ — `JSON.parse` takes lone surrogate escapes and reads `1e400` as
/// Infinity, serde_json refuses both — the text is not JSON to this impl.)
#[cfg(not(target_family = "wasm"))]
impl Json for serde_json::Value {
    fn parse(text: &str) -> Option<Self> {
        serde_json::from_str(text).ok()
    }
    fn is_object(&self) -> bool {
        serde_json::Value::is_object(self)
    }
    fn is_array(&self) -> bool {
        serde_json::Value::is_array(self)
    }
    fn member(&self, key: &str) -> Option<Self> {
        self.get(key).cloned()
    }
    fn is_null(&self) -> bool {
        serde_json::Value::is_null(self)
    }
    fn as_string(&self) -> Option<String> {
        self.as_str().map(str::to_owned)
    }
    fn as_f64(&self) -> Option<f64> {
        serde_json::Value::as_f64(self)
    }
    fn as_bool(&self) -> Option<bool> {
        serde_json::Value::as_bool(self)
    }
    fn elements(&self) -> Vec<Self> {
        self.as_array().cloned().unwrap_or_default()
    }
    fn keys(&self) -> Vec<String> {
        self.as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default()
    }
}

type R<T> = Result<T, DecodeError>;

/// `what` followed by `` `key` `` (no formatting machinery).
fn error(what: &str, key: &str) -> DecodeError {
    let mut m = String::with_capacity(what.len() + key.len() + 3);
    m.push_str(what);
    m.push_str(" `");
    m.push_str(key);
    m.push('`');
    DecodeError::new(m)
}

/// `prefix` before the error's own message.
fn context(prefix: &str, e: DecodeError) -> DecodeError {
    let mut m = String::from(prefix);
    m.push_str(e.message());
    DecodeError::new(m)
}

/// One JSON object parsed by the platform.
fn parse<V: Json>(text: &str) -> R<Fields<V>> {
    let v = V::parse(text).ok_or_else(|| DecodeError::new("not valid JSON"))?;
    Fields::new(v)
}

/// 2^53 - 1: the largest integer a JavaScript number holds exactly.
const MAX_SAFE_INTEGER: f64 = 9_007_199_254_740_991.0;

/// The members of one object. Reading a member never fails: the first problem is recorded (and a placeholder
/// returned) and reported by [`Fields::done`] once the value is built — one exit instead of one per member.
struct Fields<V> {
    o: V,
    err: Option<DecodeError>,
}

impl<V: Json> Fields<V> {
    fn new(v: V) -> R<Fields<V>> {
        if v.is_object() { Ok(Fields { o: v, err: None }) } else { Err(DecodeError::new("not a JSON object")) }
    }

    fn fail(&mut self, what: &str, key: &str) {
        if self.err.is_none() {
            self.err = Some(error(what, key));
        }
    }

    fn done<T>(self, value: T) -> R<T> {
        match self.err {
            Some(e) => Err(e),
            None => Ok(value),
        }
    }

    /// A member; `null` counts as absent.
    fn get(&self, key: &str) -> Option<V> {
        self.o.member(key).filter(|v| !v.is_null())
    }

    /// A required member.
    fn need(&mut self, key: &str) -> Option<V> {
        let v = self.get(key);
        if v.is_none() {
            self.fail("missing member", key);
        }
        v
    }

    fn string(&mut self, v: Option<V>, key: &str) -> Option<String> {
        let s = v?.as_string();
        if s.is_none() {
            self.fail("expected a string in member", key);
        }
        s
    }

    fn opt_str(&mut self, key: &str) -> Option<String> {
        let v = self.get(key);
        self.string(v, key)
    }

    fn str(&mut self, key: &str) -> String {
        let v = self.need(key);
        self.string(v, key).unwrap_or_default()
    }

    fn number(&mut self, v: Option<V>, key: &str) -> Option<u64> {
        match v?.as_f64() {
            Some(f) if (0.0..=MAX_SAFE_INTEGER).contains(&f) && f == (f as u64) as f64 => Some(f as u64),
            _ => {
                self.fail("expected an unsigned integer in member", key);
                None
            }
        }
    }

    fn opt_u64(&mut self, key: &str) -> Option<u64> {
        let v = self.get(key);
        self.number(v, key)
    }

    fn u64(&mut self, key: &str) -> u64 {
        let v = self.need(key);
        self.number(v, key).unwrap_or_default()
    }

    /// A member naming one of an enum's values; `fallback` stands in when it does not.
    fn name<T>(&mut self, key: &str, parse: fn(&str) -> Option<T>, fallback: T) -> T {
        let s = self.str(key);
        parse(&s).unwrap_or_else(|| {
            self.fail("unknown value of member", key);
            fallback
        })
    }

    fn strings(&mut self, key: &str) -> Vec<String> {
        let Some(v) = self.get(key) else { return Vec::new() };
        let mut out = Vec::new();
        if v.is_array() {
            for s in v.elements() {
                match s.as_string() {
                    Some(s) => out.push(s),
                    None => self.fail("expected strings in member", key),
                }
            }
        } else {
            self.fail("expected an array in member", key);
        }
        out
    }

    /// A member that is an object.
    fn object(&mut self, v: Option<V>, key: &str) -> Option<Fields<V>> {
        match Fields::new(v?) {
            Ok(f) => Some(f),
            Err(_) => {
                self.fail("expected an object in member", key);
                None
            }
        }
    }

    /// Records `inner`'s problem as this object's.
    fn absorb(&mut self, inner: Fields<V>) {
        if self.err.is_none() {
            self.err = inner.err;
        }
    }

    /// Inbox counts (member `key`, required).
    fn counts(&mut self, key: &str) -> InboxCounts {
        let v = self.need(key);
        let Some(mut c) = self.object(v, key) else { return InboxCounts::default() };
        let counts = InboxCounts {
            unseen: c.u64("unseen"),
            unread: c.u64("unread"),
            total: c.u64("total"),
            version: c.u64("version"),
            head: c.u64("head"),
        };
        self.absorb(c);
        counts
    }

    /// The objects of array member `key` (absent: none), each with its JSON text cut from `source`.
    fn each(&mut self, key: &str, source: &str, mut f: impl FnMut(&mut Fields<V>, &str)) {
        let Some(v) = self.get(key) else { return };
        if !v.is_array() {
            return self.fail("expected an array in member", key);
        }
        let texts = raw_member(source, key).and_then(raw_elements).unwrap_or_default();
        for (i, e) in v.elements().into_iter().enumerate() {
            if let Some(mut o) = self.object(Some(e), key) {
                f(&mut o, texts.get(i).copied().unwrap_or_default());
                self.absorb(o);
            }
        }
    }

    /// Inbox items (array member `items`).
    fn items(&mut self, source: &str) -> Vec<InboxItem> {
        let mut out = Vec::new();
        self.each("items", source, |i, text| {
            let n = i.get("notification");
            let notification = i.object(n, "notification").map(|mut n| {
                let v = n.notification(raw_member(text, "notification").unwrap_or_default());
                i.absorb(n);
                v
            });
            out.push(InboxItem {
                id: i.str("id"),
                seq: i.u64("seq"),
                version: i.u64("v"),
                inserted_at: i.u64("inserted_at"),
                seen_at: i.opt_u64("seen_at"),
                read_at: i.opt_u64("read_at"),
                archived_at: i.opt_u64("archived_at"),
                notification,
            });
        });
        out
    }

    /// A notification envelope (an `op` member is ignored); `source` is the JSON text these fields were parsed
    /// from. `data` is taken verbatim from it: `JSON.parse` reads numbers as doubles, so re-serialising would
    /// change an integer above 2^53 (an app's 64-bit id) or `1.0`.
    fn notification(&mut self, source: &str) -> Notification {
        let data = self.get("data").and_then(|_| {
            let raw = raw_member(source, "data").ok_or_else(|| error("unreadable member", "data"));
            raw.and_then(|raw| RawJson::from_string(raw.to_owned())).map_err(|e| self.err.get_or_insert(e)).ok()
        });
        Notification::from(NotificationFields {
            id: self.str("id"),
            stream: self.str("stream"),
            offset: self.opt_u64("offset"),
            epoch: self.str("epoch"),
            kind: self.str("type"),
            priority: self.name("priority", Priority::parse, Priority::Critical),
            persistence: self.name("persistence", Persistence::parse, Persistence::Ephemeral),
            title: self.opt_str("title"),
            body: self.opt_str("body"),
            data,
            group: self.opt_str("group"),
            created_at: self.u64("created_at"),
        })
    }
}

/// The frames of one WebSocket message: one frame per line (empty lines are skipped).
pub(crate) fn frames(text: &str) -> impl Iterator<Item = R<ServerFrame>> + '_ {
    message_frames(text).map(frame::<wasm_bindgen::JsValue>)
}

/// One server frame (protocol §5), parsed with `V`'s parser.
pub fn frame<V: Json>(text: &str) -> R<ServerFrame> {
    let mut f = parse::<V>(text).map_err(|e| context("invalid server frame: ", e))?;
    let op = f.str("op");
    let frame = match op.as_str() {
        "notification" => ServerFrame::Notification(f.notification(text)),
        "heartbeat" => ServerFrame::Heartbeat,
        "welcome" => ServerFrame::Welcome {
            session: f.str("session"),
            user: f.str("user"),
            device: f.str("device"),
            heartbeat_ms: f.u64("heartbeat_ms"),
            max_frame_bytes: f.u64("max_frame_bytes"),
            token_expires_in_ms: f.opt_u64("token_expires_in_ms"),
        },
        "subscribed" => {
            let continuity = match f.str("continuity").as_str() {
                "fresh" => WireContinuity::Fresh,
                "resumed" => WireContinuity::Resumed { replayed: f.u64("replayed") },
                "gap" => WireContinuity::Gap {
                    reason: f.name("reason", GapReason::parse, GapReason::EpochChanged),
                    missed: f.opt_u64("missed"),
                    replayed: f.opt_u64("replayed").unwrap_or(0),
                },
                _ => {
                    f.fail("unknown value of member", "continuity");
                    WireContinuity::Fresh
                }
            };
            ServerFrame::Subscribed {
                reference: f.u64("ref"),
                stream: f.str("stream"),
                epoch: f.str("epoch"),
                offset: f.u64("offset"),
                continuity,
            }
        }
        "unsubscribed" => ServerFrame::Unsubscribed { reference: f.u64("ref"), stream: f.str("stream") },
        "token_refreshed" => ServerFrame::TokenRefreshed { token_expires_in_ms: f.opt_u64("token_expires_in_ms") },
        "push_registered" => ServerFrame::PushRegistered {
            reference: f.u64("ref"),
            platform: f.name("platform", PushPlatform::parse, PushPlatform::WebPush),
        },
        "inbox" => {
            let mark = f.get("mark");
            let mark = f.object(mark, "mark").map(|mut m| {
                let mark = InboxMark {
                    action: m.name("action", MarkAllAction::parse, MarkAllAction::Read),
                    up_to: m.u64("up_to"),
                    at: m.u64("at"),
                    version: m.u64("version"),
                };
                f.absorb(m);
                mark
            });
            let duplicate = match f.get("duplicate") {
                None => false,
                Some(v) => v.as_bool().unwrap_or_else(|| {
                    f.fail("expected a boolean in member", "duplicate");
                    false
                }),
            };
            ServerFrame::Inbox(InboxUpdate {
                reference: f.opt_u64("ref"),
                counts: f.counts("counts"),
                items: f.items(text),
                removed: f.strings("removed"),
                mark,
                duplicate,
                unknown: f.strings("unknown"),
            })
        }
        "inbox_page" => ServerFrame::InboxPage(InboxPage {
            reference: f.u64("ref"),
            items: f.items(text),
            next: f.opt_u64("next"),
            counts: f.counts("counts"),
        }),
        "history_page" => {
            let mut items = Vec::new();
            f.each("items", text, |n, source| items.push(n.notification(source)));
            ServerFrame::HistoryPage(HistoryPage {
                reference: f.u64("ref"),
                stream: f.str("stream"),
                epoch: f.str("epoch"),
                head: f.u64("head"),
                oldest: f.u64("oldest"),
                items,
                next: f.opt_u64("next"),
            })
        }
        "error" => ServerFrame::Error(ErrorFrame {
            reference: f.opt_u64("ref"),
            stream: f.opt_str("stream"),
            code: ErrorCode::parse(&f.str("code")),
            message: f.str("message"),
            retry_after_ms: f.opt_u64("retry_after_ms"),
        }),
        _ => {
            // Records nothing new when `op` was missing already.
            f.fail("unknown value of member", "op");
            ServerFrame::Heartbeat
        }
    };
    let prefix = if op == "notification" { "invalid notification frame: " } else { "invalid server frame: " };
    f.done(frame).map_err(|e| context(prefix, e))
}

/// A push payload's envelope (bare, or the `tidings` member as an object or as JSON text), parsed with `V`'s
/// parser. The engine checks it against the protocol's limits.
pub fn push_payload_with<V: Json>(payload: &str) -> R<Notification> {
    let outer = parse::<V>(payload).map_err(|e| context("push payload: ", e))?;
    let inner_text;
    let (f, source) = match outer.get("tidings") {
        None => (Ok(outer), payload),
        Some(v) => match v.as_string() {
            Some(text) => {
                inner_text = text;
                (parse(&inner_text), inner_text.as_str())
            }
            None => (Fields::new(v), raw_member(payload, "tidings").unwrap_or_default()),
        },
    };
    let mut f = f.map_err(|e| context("push payload: invalid envelope: ", e))?;
    let n = f.notification(source);
    f.done(n).map_err(|e| context("push payload: invalid envelope: ", e))
}

/// A push payload in any of its forms (protocol §11.1): the envelope (bare or under `tidings`), `tidings_fetch`
/// or `tidings_summary` — each value an object or its JSON text — as the core's `decode_push` reads them.
pub(crate) fn push(payload: &str) -> R<PushPayload> {
    push_with::<wasm_bindgen::JsValue>(payload)
}

/// [`push`], parsed with `V`'s parser.
pub fn push_with<V: Json>(payload: &str) -> R<PushPayload> {
    let outer = parse::<V>(payload).map_err(|e| context("push payload: ", e))?;
    // A member's object: the value itself, or the JSON text it holds.
    let inner = |v: V| -> R<Fields<V>> {
        match v.as_string() {
            Some(text) => parse(&text),
            None => Fields::new(v),
        }
    };
    if let Some(v) = outer.get("tidings_fetch") {
        let mut f = inner(v).map_err(|e| context("push payload: invalid tidings_fetch: ", e))?;
        let id = f.str("id");
        let title = f.opt_str("title");
        let (id, title) = f.done((id, title)).map_err(|e| context("push payload: invalid tidings_fetch: ", e))?;
        tidings_core::protocol::validate_id(&id)
            .map_err(|e| context("push payload: invalid tidings_fetch: id: ", DecodeError::new(e)))?;
        return Ok(PushPayload::Fetch { id, title });
    }
    if let Some(v) = outer.get("tidings_summary") {
        let mut f = inner(v).map_err(|e| context("push payload: invalid tidings_summary: ", e))?;
        let kind = f.name("kind", SummaryKind::parse, SummaryKind::Digest);
        let ids = f.strings("ids");
        let count = f.opt_u64("count").unwrap_or(ids.len() as u64);
        let summary = PushSummary { kind, group: f.opt_str("group"), count, ids, title: f.opt_str("title") };
        let summary = f.done(summary).map_err(|e| context("push payload: invalid tidings_summary: ", e))?;
        summary.validate().map_err(|e| context("push payload: invalid tidings_summary: ", e))?;
        return Ok(PushPayload::Summary(summary));
    }
    push_payload_with::<V>(payload).map(PushPayload::Full)
}

/// The error a non-2xx answer carries (`{"error":{"code","message","retry_after_ms"}}`), classified by the core.
pub fn api_error_with<V: Json>(status: u16, body: &str) -> ApiError {
    let (mut code, mut message, mut retry) = (String::new(), String::new(), None);
    if let Ok(outer) = parse::<V>(body)
        && let Some(v) = outer.get("error")
        && let Ok(mut e) = Fields::new(v)
    {
        code = e.opt_str("code").unwrap_or_default();
        message = e.opt_str("message").unwrap_or_default();
        retry = e.opt_u64("retry_after_ms");
    }
    api::classify(status, code, message, retry)
}

fn api_ok<V: Json>(status: u16, body: &str) -> Result<(), ApiError> {
    if (200..300).contains(&status) { Ok(()) } else { Err(api_error_with::<V>(status, body)) }
}

fn malformed(e: DecodeError) -> ApiError {
    ApiError::Malformed(e.message().to_owned())
}

/// One preference rule (`{"type"|"topic","channel","enabled"}`).
fn rule<V: Json>(v: V) -> R<PreferenceRule> {
    let mut f = Fields::new(v)?;
    let selector = match (f.opt_str("type"), f.opt_str("topic")) {
        (Some(t), _) => Selector::Type(t),
        (None, Some(t)) => Selector::Topic(t),
        (None, None) => {
            f.fail("a rule needs", "type");
            Selector::Type(String::new())
        }
    };
    let channel = f.name("channel", Channel::parse, Channel::Push);
    let enabled = match f.need("enabled").map(|v| v.as_bool()) {
        Some(Some(b)) => b,
        Some(None) => {
            f.fail("expected a boolean in member", "enabled");
            false
        }
        None => false,
    };
    f.done(PreferenceRule { selector, channel, enabled })
}

/// A list of rules as an app gives them (`[{…}]`, or `{"rules":[…]}`).
pub fn rules_with<V: Json>(text: &str) -> R<Vec<PreferenceRule>> {
    let v = V::parse(text).ok_or_else(|| DecodeError::new("not valid JSON"))?;
    let list = if v.is_array() {
        v
    } else {
        let f = Fields::new(v)?;
        f.get("rules").ok_or_else(|| error("missing member", "rules"))?
    };
    if !list.is_array() {
        return Err(error("expected an array in member", "rules"));
    }
    list.elements().into_iter().map(rule).collect()
}

/// The answer to the preferences requests.
pub fn api_preferences_with<V: Json>(status: u16, body: &str) -> Result<Preferences, ApiError> {
    api_ok::<V>(status, body)?;
    let mut f = parse::<V>(body).map_err(malformed)?;
    let rules = match f.get("rules") {
        Some(list) if list.is_array() => {
            list.elements().into_iter().map(rule).collect::<R<Vec<_>>>().map_err(malformed)?
        }
        _ => {
            f.fail("expected an array in member", "rules");
            Vec::new()
        }
    };
    let p = Preferences {
        rules,
        version: f.opt_u64("version").unwrap_or(0),
        updated_at: f.opt_u64("updated_at").unwrap_or(0),
    };
    f.done(p).map_err(malformed)
}

/// Quiet hours as an app or the server gives them (`{"time_zone","ranges":[{"day","start","end"}]}`).
fn quiet<V: Json>(v: V) -> R<QuietHours> {
    let mut f = Fields::new(v)?;
    // The server writes `time_zone`; JavaScript apps `timeZone`.
    let time_zone = if f.get("timeZone").is_some() { f.str("timeZone") } else { f.str("time_zone") };
    let mut ranges = Vec::new();
    match f.need("ranges") {
        Some(list) if list.is_array() => {
            for r in list.elements() {
                let mut r = Fields::new(r)?;
                let range = QuietRange { day: r.str("day"), start: r.str("start"), end: r.str("end") };
                ranges.push(r.done(range)?);
            }
        }
        Some(_) => f.fail("expected an array in member", "ranges"),
        None => {}
    }
    f.done(QuietHours { time_zone, ranges })
}

/// Quiet hours given by an app (JSON text; `null` for none).
pub fn quiet_hours_with<V: Json>(text: &str) -> R<Option<QuietHours>> {
    let v = V::parse(text).ok_or_else(|| DecodeError::new("not valid JSON"))?;
    if v.is_null() { Ok(None) } else { quiet(v).map(Some) }
}

/// The answer to the quiet-hours requests.
pub fn api_quiet_hours_with<V: Json>(status: u16, body: &str) -> Result<QuietHoursSettings, ApiError> {
    api_ok::<V>(status, body)?;
    let mut f = parse::<V>(body).map_err(malformed)?;
    let quiet_hours = match f.get("quiet_hours").or_else(|| f.get("quietHours")) {
        Some(v) => Some(quiet(v).map_err(malformed)?),
        None => None,
    };
    let s = QuietHoursSettings {
        quiet_hours,
        version: f.opt_u64("version").unwrap_or(0),
        updated_at: f.opt_u64("updated_at").unwrap_or(0),
    };
    f.done(s).map_err(malformed)
}

/// The answer to the fetch of notification `id`.
pub fn api_notification_with<V: Json>(status: u16, body: &str, id: &str) -> Result<Notification, ApiError> {
    api_ok::<V>(status, body)?;
    let mut f = parse::<V>(body).map_err(malformed)?;
    let n = f.notification(body);
    let n = f.done(n).map_err(malformed)?;
    n.validate().map_err(malformed)?;
    if n.id() != id {
        return Err(ApiError::Malformed(format!("asked for notification {id}, got {}", n.id())));
    }
    Ok(n)
}

/// The body of an acks call as a service worker gives it: `{"device":"…","ids":["…"]}`.
pub fn acks_with<V: Json>(text: &str) -> R<(String, Vec<String>)> {
    let mut f = parse::<V>(text)?;
    let device = f.str("device");
    let ids = f.strings("ids");
    f.done((device, ids))
}

/// The answer to the acks request.
pub fn api_acks_with<V: Json>(status: u16, body: &str) -> Result<(), ApiError> {
    api_ok::<V>(status, body)
}

/// A stored snapshot (the JSON `encode_snapshot` writes).
pub(crate) fn snapshot(text: &str) -> R<Snapshot> {
    snapshot_with::<wasm_bindgen::JsValue>(text)
}

/// [`snapshot`], parsed with `V`'s parser.
pub fn snapshot_with<V: Json>(text: &str) -> R<Snapshot> {
    let s = parse::<V>(text).and_then(|mut f| {
        if f.u64("version") != 1 {
            f.fail("unsupported value of member", "version");
        }
        let s = snapshot_members(&mut f, text);
        f.done(s)
    });
    s.map_err(|e| context("stored state is corrupt: ", e))
}

fn snapshot_members<V: Json>(f: &mut Fields<V>, source: &str) -> Snapshot {
    let mut s = Snapshot { version: 1, device_id: f.opt_str("device_id"), ..Default::default() };
    let cursors = f.get("cursors");
    if let Some(cursors) = f.object(cursors, "cursors") {
        for stream in cursors.o.keys() {
            let v = cursors.o.member(&stream);
            if let Some(mut c) = f.object(v, "cursors") {
                let cursor = Cursor { epoch: c.str("epoch"), offset: c.u64("offset") };
                f.absorb(c);
                s.cursors.insert(stream, cursor);
            }
        }
    }
    s.seen = f.strings("seen");
    if f.opt_str("scope").as_deref() == Some("seen_ids") {
        s.scope = SnapshotScope::SeenIds;
    }
    if let Some(pending) = f.get("pending") {
        if !pending.is_array() {
            f.fail("expected an array in member", "pending");
        }
        // The batches' text, to take each notification's `data` verbatim (see `Fields::notification`).
        let texts = raw_member(source, "pending").and_then(raw_elements).unwrap_or_default();
        for (i, b) in pending.elements().into_iter().enumerate() {
            let text = texts.get(i).copied().unwrap_or_default();
            let Some(mut b) = f.object(Some(b), "pending") else { continue };
            let first = b.need("first");
            let last = b.get("last");
            let (Some(mut first), last) = (b.object(first, "first"), b.object(last, "last")) else {
                f.absorb(b);
                continue;
            };
            let batch = PendingBatch {
                group: b.str("group"),
                first: first.notification(raw_member(text, "first").unwrap_or_default()),
                last: last.map(|mut l| {
                    let n = l.notification(raw_member(text, "last").unwrap_or_default());
                    b.absorb(l);
                    n
                }),
                ids: {
                    if b.get("ids").is_none() {
                        b.fail("missing member", "ids");
                    }
                    b.strings("ids")
                },
                opened_at: Instant::ZERO,
            };
            b.absorb(first);
            f.absorb(b);
            s.pending.push(batch);
        }
    }
    let inbox = f.get("inbox");
    if let Some(mut i) = f.object(inbox, "inbox") {
        if i.get("counts").is_some() {
            s.inbox = Some(i.counts("counts"));
        }
        let mut queue = Vec::new();
        i.each("queue", "", |q, _| {
            let op_id = q.str("op_id");
            let change = match q.opt_str("all") {
                Some(all) if q.get("action").is_some() || q.get("ids").is_some() => {
                    q.fail("a mark all with an action or ids in member", "queue");
                    InboxChange::MarkAll {
                        action: MarkAllAction::parse(&all).unwrap_or(MarkAllAction::Read),
                        up_to: None,
                    }
                }
                Some(all) => InboxChange::MarkAll {
                    action: MarkAllAction::parse(&all).unwrap_or_else(|| {
                        q.fail("unknown value of member", "all");
                        MarkAllAction::Read
                    }),
                    up_to: q.opt_u64("up_to"),
                },
                None => InboxChange::Mark {
                    action: q.name("action", InboxAction::parse, InboxAction::Read),
                    ids: {
                        if q.get("ids").is_none() {
                            q.fail("missing member", "ids");
                        }
                        q.strings("ids")
                    },
                },
            };
            queue.push(QueuedChange { op_id, change });
        });
        s.inbox_queue = queue;
        f.absorb(i);
    }
    let push = f.get("push");
    if let Some(mut p) = f.object(push, "push") {
        // As the codec: wrong types make the snapshot corrupt, an unknown platform drops the registration only.
        let platform = p.opt_str("platform").and_then(|name| PushPlatform::parse(&name));
        let token = p.opt_str("token");
        f.absorb(p);
        if let (Some(platform), Some(token)) = (platform, token) {
            s.push = Some(PushRegistration { platform, token });
        }
    }
    s
}

/// The decoding rules on the host (serde_json values read as `JSON.parse` output), against the core's codec.
#[cfg(all(test, not(target_family = "wasm")))]
mod tests {
    use super::*;
    use serde_json::Value;
    use tidings_core::protocol::decode_server_frame;

    #[test]
    fn documented_frames_decode_as_the_codec_decodes_them() {
        for text in [
            r#"{"op":"notification","id":"n1","stream":"user:alice","offset":42,"epoch":"k3v9q2","type":"t","priority":"important","persistence":"bufferable","title":"Bob","body":null,"data":{"post":"p-981","n":12345678901234567891},"group":null,"created_at":1763808060123}"#,
            r#"{"op":"subscribed","ref":1,"stream":"user:alice","epoch":"q8m1zz","offset":12,"continuity":"gap","reason":"epoch_changed","replayed":12}"#,
            r#"{"op":"subscribed","ref":1,"stream":"topic:sports","epoch":"w2n5dd","offset":310,"continuity":"gap","reason":"out_of_buffer","missed":57}"#,
            r#"{"op":"error","ref":4,"code":"bad_request","message":"register_push: unknown platform"}"#,
        ] {
            assert_eq!(frame::<Value>(text), decode_server_frame(text), "{text}");
        }
    }

    /// Found by the `browser_decoder` fuzz target (`fuzz/corpus/browser_decoder/regression-created-at-beyond-doubles`):
    /// the browser's documented limit — an integer above 2^53 is refused (`JSON.parse` would round it), where the codec
    /// takes any u64; the target now expects that refusal.
    #[test]
    fn integers_beyond_a_double_are_refused_here_and_taken_by_the_codec() {
        let text = r#"{"op":"notification","id":"n","stream":"user:a","epoch":"e","type":"t","priority":"important","persistence":"bufferable","created_at":17638080663808060123}"#;
        let err = frame::<Value>(text).unwrap_err();
        assert!(err.message().contains("unsigned integer in member `created_at`"), "{err}");
        assert!(decode_server_frame(text).is_ok());
    }

    /// Found by the `browser_decoder` fuzz target (`fuzz/corpus/browser_decoder/regression-push-token-number`): a
    /// `push` member whose `token` is not a string was ignored here and made the snapshot corrupt in the codec.
    #[test]
    fn a_push_member_of_the_wrong_shape_is_corrupt_as_in_the_codec() {
        for text in [
            r#"{"version":1,"push":{"platform":"fcm","token":990}}"#,
            r#"{"version":1,"push":5}"#,
            r#"{"version":1,"push":{"platform":7,"token":"t"}}"#,
        ] {
            assert!(snapshot_with::<Value>(text).is_err(), "{text}");
            assert!(tidings_core::store::decode_snapshot(text.as_bytes()).is_err(), "{text}");
        }
        let unknown = r#"{"version":1,"push":{"platform":"carrier_pigeon","token":"t"},"seen":null}"#;
        assert_eq!(
            snapshot_with::<Value>(unknown).unwrap(),
            tidings_core::store::decode_snapshot(unknown.as_bytes()).unwrap()
        );
    }

    /// Found by the `browser_decoder` fuzz target (`fuzz/corpus/browser_decoder/regression-repeated-body`): a
    /// repeated member is one of the documented leniencies — `JSON.parse` keeps its last value, the codec refuses the
    /// text (here at the first `body`, a number, before it sees the repetition). The target's differential check now
    /// leaves texts that repeat a member out of the comparison.
    #[test]
    fn a_repeated_member_keeps_its_last_value_where_the_codec_refuses_the_frame() {
        let text = r#"{"op":"notification","id":"n1","stream":"user:alice","body":42,"epoch":"e","type":"t","priority":"important","persistence":"bufferable","body":"Looks great!","created_at":1}"#;
        let ServerFrame::Notification(n) = frame::<Value>(text).unwrap() else { panic!() };
        assert_eq!(n.body(), Some("Looks great!"));
        assert!(decode_server_frame(text).is_err());
    }
}
