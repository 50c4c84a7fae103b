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

use js_sys::{Array, JSON, Object, Reflect};
use tidings_core::engine::PendingBatch;
use tidings_core::protocol::{
    DecodeError, ErrorCode, ErrorFrame, GapReason, Notification, NotificationFields, Persistence, Priority,
    PushPlatform, RawJson, ServerFrame, WireContinuity, message_frames, raw_elements, raw_member,
};
use tidings_core::{Cursor, Instant, PushRegistration, Snapshot};
use wasm_bindgen::{JsCast, JsValue};

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

/// One JSON object parsed by the browser.
fn parse(text: &str) -> R<Fields> {
    let v = JSON::parse(text).map_err(|_| DecodeError::new("not valid JSON"))?;
    Fields::new(v)
}

/// 2^53 - 1: the largest integer a JavaScript number holds exactly.
const MAX_SAFE_INTEGER: f64 = 9_007_199_254_740_991.0;

/// The members of one object. Reading a member never fails: the first problem is recorded (and a placeholder
/// returned) and reported by [`Fields::done`] once the value is built — one exit instead of one per member.
struct Fields {
    o: JsValue,
    err: Option<DecodeError>,
}

impl Fields {
    fn new(v: JsValue) -> R<Fields> {
        if v.is_object() && !Array::is_array(&v) {
            Ok(Fields { o: v, err: None })
        } else {
            Err(DecodeError::new("not a JSON object"))
        }
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
    fn get(&self, key: &str) -> Option<JsValue> {
        let v = Reflect::get(&self.o, &JsValue::from_str(key)).ok()?;
        if v.is_null() || v.is_undefined() { None } else { Some(v) }
    }

    /// A required member.
    fn need(&mut self, key: &str) -> Option<JsValue> {
        let v = self.get(key);
        if v.is_none() {
            self.fail("missing member", key);
        }
        v
    }

    fn string(&mut self, v: Option<JsValue>, key: &str) -> Option<String> {
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

    fn number(&mut self, v: Option<JsValue>, key: &str) -> Option<u64> {
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
        if Array::is_array(&v) {
            for s in v.unchecked_into::<Array>().iter() {
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
    fn object(&mut self, v: Option<JsValue>, key: &str) -> Option<Fields> {
        match Fields::new(v?) {
            Ok(f) => Some(f),
            Err(_) => {
                self.fail("expected an object in member", key);
                None
            }
        }
    }

    /// Records `inner`'s problem as this object's.
    fn absorb(&mut self, inner: Fields) {
        if self.err.is_none() {
            self.err = inner.err;
        }
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
    message_frames(text).map(frame)
}

/// One server frame (protocol §5).
fn frame(text: &str) -> R<ServerFrame> {
    let mut f = parse(text).map_err(|e| context("invalid server frame: ", e))?;
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

/// A push payload: the envelope, or an object whose `tidings` member is the envelope (as an object or as JSON
/// text). The engine checks it against the protocol's limits.
pub(crate) fn push_payload(payload: &str) -> R<Notification> {
    let outer = parse(payload).map_err(|e| context("push payload: ", e))?;
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

/// A stored snapshot (the JSON `encode_snapshot` writes).
pub(crate) fn snapshot(text: &str) -> R<Snapshot> {
    let s = parse(text).and_then(|mut f| {
        if f.u64("version") != 1 {
            f.fail("unsupported value of member", "version");
        }
        let s = snapshot_members(&mut f, text);
        f.done(s)
    });
    s.map_err(|e| context("stored state is corrupt: ", e))
}

fn snapshot_members(f: &mut Fields, source: &str) -> Snapshot {
    let mut s = Snapshot { version: 1, device_id: f.opt_str("device_id"), ..Default::default() };
    let cursors = f.get("cursors");
    if let Some(cursors) = f.object(cursors, "cursors") {
        for stream in Object::keys::<JsValue>(cursors.o.unchecked_ref()).iter() {
            let v = Reflect::get(&cursors.o, &stream).ok();
            if let Some(mut c) = f.object(v, "cursors") {
                let cursor = Cursor { epoch: c.str("epoch"), offset: c.u64("offset") };
                f.absorb(c);
                s.cursors.insert(stream.as_string().unwrap_or_default(), cursor);
            }
        }
    }
    s.seen = f.strings("seen");
    if let Some(pending) = f.get("pending") {
        if !Array::is_array(&pending) {
            f.fail("expected an array in member", "pending");
        }
        // The batches' text, to take each notification's `data` verbatim (see `Fields::notification`).
        let texts = raw_member(source, "pending").and_then(raw_elements).unwrap_or_default();
        for (i, b) in pending.unchecked_into::<Array>().iter().enumerate() {
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
    if let Some(p) = f.get("push")
        && let Ok(mut p) = Fields::new(p)
    {
        let platform = p.opt_str("platform").and_then(|name| PushPlatform::parse(&name));
        if let (Some(platform), Some(token)) = (platform, p.opt_str("token")) {
            s.push = Some(PushRegistration { platform, token });
        }
    }
    s
}
