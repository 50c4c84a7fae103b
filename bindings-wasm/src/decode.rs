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
//! (offsets and timestamps never come near), `1.0` reads as `1`. The verbatim `data` member is re-serialised
//! by `JSON.stringify` (whitespace dropped; the same value when the page parses it).

use js_sys::{Array, JSON, Object, Reflect};
use tidings_core::engine::PendingBatch;
use tidings_core::protocol::{
    DecodeError, ErrorCode, ErrorFrame, GapReason, Notification, Persistence, Priority, PushPlatform, RawJson,
    ServerFrame, WireContinuity,
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
fn object(text: &str) -> R<JsValue> {
    let v = JSON::parse(text).map_err(|_| DecodeError::new("not valid JSON"))?;
    as_object(v)
}

fn as_object(v: JsValue) -> R<JsValue> {
    if v.is_object() && !Array::is_array(&v) { Ok(v) } else { Err(DecodeError::new("not a JSON object")) }
}

fn as_array(v: JsValue, key: &str) -> R<Array> {
    if Array::is_array(&v) { Ok(v.unchecked_into()) } else { Err(error("expected an array in member", key)) }
}

/// A member; `null` counts as absent.
fn get(o: &JsValue, key: &str) -> Option<JsValue> {
    let v = Reflect::get(o, &JsValue::from_str(key)).ok()?;
    if v.is_null() || v.is_undefined() { None } else { Some(v) }
}

fn opt_str(o: &JsValue, key: &str) -> R<Option<String>> {
    match get(o, key) {
        None => Ok(None),
        Some(v) => v.as_string().map(Some).ok_or_else(|| error("expected a string in member", key)),
    }
}

fn str(o: &JsValue, key: &str) -> R<String> {
    opt_str(o, key)?.ok_or_else(|| error("missing member", key))
}

/// 2^53 - 1: the largest integer a JavaScript number holds exactly.
const MAX_SAFE_INTEGER: f64 = 9_007_199_254_740_991.0;

fn opt_u64(o: &JsValue, key: &str) -> R<Option<u64>> {
    let Some(v) = get(o, key) else { return Ok(None) };
    match v.as_f64() {
        Some(f) if (0.0..=MAX_SAFE_INTEGER).contains(&f) && f == (f as u64) as f64 => Ok(Some(f as u64)),
        _ => Err(error("expected an unsigned integer in member", key)),
    }
}

fn u64(o: &JsValue, key: &str) -> R<u64> {
    opt_u64(o, key)?.ok_or_else(|| error("missing member", key))
}

fn name<T>(o: &JsValue, key: &str, parse: fn(&str) -> Option<T>) -> R<T> {
    parse(&str(o, key)?).ok_or_else(|| error("unknown value of member", key))
}

fn strings(o: &JsValue, key: &str) -> R<Option<Vec<String>>> {
    let Some(v) = get(o, key) else { return Ok(None) };
    as_array(v, key)?
        .iter()
        .map(|s| s.as_string().ok_or_else(|| error("expected strings in member", key)))
        .collect::<R<Vec<String>>>()
        .map(Some)
}

/// A notification envelope (an `op` member is ignored).
fn notification(o: &JsValue) -> R<Notification> {
    let data = match get(o, "data") {
        None => None,
        Some(v) => Some(RawJson::from_string(JSON::stringify(&v).map(String::from).unwrap_or_default())?),
    };
    Ok(Notification {
        id: str(o, "id")?,
        stream: str(o, "stream")?,
        offset: opt_u64(o, "offset")?,
        epoch: str(o, "epoch")?,
        kind: str(o, "type")?,
        priority: name(o, "priority", Priority::parse)?,
        persistence: name(o, "persistence", Persistence::parse)?,
        title: opt_str(o, "title")?,
        body: opt_str(o, "body")?,
        data,
        group: opt_str(o, "group")?,
        created_at: u64(o, "created_at")?,
    })
}

/// The frames of one WebSocket message: one frame per line (empty lines are skipped).
pub(crate) fn frames(text: &str) -> impl Iterator<Item = R<ServerFrame>> + '_ {
    text.split('\n').filter(|line| !line.is_empty()).map(frame)
}

/// One server frame (protocol §5).
fn frame(text: &str) -> R<ServerFrame> {
    let o = object(text).map_err(|e| context("invalid server frame: ", e))?;
    let op = str(&o, "op").map_err(|e| context("invalid server frame: ", e))?;
    let frame = || -> R<ServerFrame> {
        Ok(match op.as_str() {
            "notification" => ServerFrame::Notification(notification(&o)?),
            "heartbeat" => ServerFrame::Heartbeat,
            "welcome" => ServerFrame::Welcome {
                session: str(&o, "session")?,
                user: str(&o, "user")?,
                device: str(&o, "device")?,
                heartbeat_ms: u64(&o, "heartbeat_ms")?,
                max_frame_bytes: u64(&o, "max_frame_bytes")?,
                token_expires_in_ms: opt_u64(&o, "token_expires_in_ms")?,
            },
            "subscribed" => {
                let continuity = match str(&o, "continuity")?.as_str() {
                    "fresh" => WireContinuity::Fresh,
                    "resumed" => WireContinuity::Resumed { replayed: u64(&o, "replayed")? },
                    "gap" => WireContinuity::Gap {
                        reason: name(&o, "reason", GapReason::parse)?,
                        missed: opt_u64(&o, "missed")?,
                    },
                    _ => return Err(error("unknown value of member", "continuity")),
                };
                ServerFrame::Subscribed {
                    reference: u64(&o, "ref")?,
                    stream: str(&o, "stream")?,
                    epoch: str(&o, "epoch")?,
                    offset: u64(&o, "offset")?,
                    continuity,
                }
            }
            "unsubscribed" => ServerFrame::Unsubscribed { reference: u64(&o, "ref")?, stream: str(&o, "stream")? },
            "token_refreshed" => {
                ServerFrame::TokenRefreshed { token_expires_in_ms: opt_u64(&o, "token_expires_in_ms")? }
            }
            "push_registered" => ServerFrame::PushRegistered {
                reference: u64(&o, "ref")?,
                platform: name(&o, "platform", PushPlatform::parse)?,
            },
            "error" => ServerFrame::Error(ErrorFrame {
                reference: opt_u64(&o, "ref")?,
                stream: opt_str(&o, "stream")?,
                code: ErrorCode::parse(&str(&o, "code")?),
                message: str(&o, "message")?,
                retry_after_ms: opt_u64(&o, "retry_after_ms")?,
            }),
            _ => return Err(error("unknown value of member", "op")),
        })
    };
    frame().map_err(|e| {
        context(if op == "notification" { "invalid notification frame: " } else { "invalid server frame: " }, e)
    })
}

/// A push payload: the envelope, or an object whose `tidings` member is the envelope (as an object or as JSON
/// text). The engine checks it against the protocol's limits.
pub(crate) fn push_payload(payload: &str) -> R<Notification> {
    let o = object(payload).map_err(|e| context("push payload: ", e))?;
    let envelope = match get(&o, "tidings") {
        None => o,
        Some(v) => match v.as_string() {
            Some(text) => object(&text),
            None => as_object(v),
        }
        .map_err(|e| context("push payload: invalid envelope: ", e))?,
    };
    notification(&envelope).map_err(|e| context("push payload: invalid envelope: ", e))
}

/// A stored snapshot (the JSON `encode_snapshot` writes).
pub(crate) fn snapshot(text: &str) -> R<Snapshot> {
    snapshot_members(text).map_err(|e| context("stored state is corrupt: ", e))
}

fn snapshot_members(text: &str) -> R<Snapshot> {
    let o = object(text)?;
    if u64(&o, "version")? != 1 {
        return Err(DecodeError::new("unsupported snapshot version"));
    }
    let mut s = Snapshot { version: 1, device_id: opt_str(&o, "device_id")?, ..Default::default() };
    if let Some(cursors) = get(&o, "cursors") {
        let cursors = as_object(cursors)?;
        for stream in Object::keys::<JsValue>(cursors.unchecked_ref()).iter() {
            let c = as_object(Reflect::get(&cursors, &stream).unwrap_or_default())?;
            let cursor = Cursor { epoch: str(&c, "epoch")?, offset: u64(&c, "offset")? };
            s.cursors.insert(stream.as_string().unwrap_or_default(), cursor);
        }
    }
    s.seen = strings(&o, "seen")?.unwrap_or_default();
    if let Some(pending) = get(&o, "pending") {
        for b in as_array(pending, "pending")?.iter() {
            let b = as_object(b)?;
            let last = match get(&b, "last") {
                None => None,
                Some(v) => Some(notification(&as_object(v)?)?),
            };
            s.pending.push(PendingBatch {
                group: str(&b, "group")?,
                first: notification(&as_object(get(&b, "first").ok_or_else(|| error("missing member", "first"))?)?)?,
                last,
                ids: strings(&b, "ids")?.ok_or_else(|| error("missing member", "ids"))?,
                opened_at: Instant::ZERO,
            });
        }
    }
    if let Some(p) = get(&o, "push") {
        let platform = opt_str(&p, "platform")?.and_then(|p| PushPlatform::parse(&p));
        if let (Some(platform), Some(token)) = (platform, opt_str(&p, "token")?) {
            s.push = Some(PushRegistration { platform, token });
        }
    }
    Ok(s)
}
