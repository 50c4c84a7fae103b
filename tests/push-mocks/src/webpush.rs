//! A mock Web Push service (RFC 8030 with RFC 8291 bodies and RFC 8292 VAPID).
//!
//! `POST /push/{id}`: checks `TTL`, `Content-Encoding: aes128gcm`, `Urgency`, `Topic`, the VAPID
//! `Authorization: vapid t=…, k=…` (ES256 signature with `k`, `aud` = this origin, `exp` within 24 h, a
//! `mailto:`/`https:` `sub`) and the body's size and RFC 8291 header, records the request, and answers `201
//! Created` with a `Location`, or `410` for subscriptions marked gone, or whatever was scripted.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;
use tokio::task::JoinHandle;

use crate::server::{Handler, Received, header, respond, serve};
use crate::{BrowserKeys, now_ms};

/// What the mock checks and keeps.
#[derive(Clone, Copy, Debug)]
pub struct WebPushOptions {
    /// Check the VAPID JWT of every request (benchmarks may turn it off: verification costs the mock more
    /// than signing costs a sender).
    pub verify_vapid: bool,
    /// Keep every request (benchmarks keep counts only).
    pub keep_requests: bool,
}

impl Default for WebPushOptions {
    fn default() -> Self {
        WebPushOptions { verify_vapid: true, keep_requests: true }
    }
}

/// A scripted answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebPushReply {
    /// HTTP status.
    pub status: u16,
    /// `Retry-After`, if any.
    pub retry_after: Option<String>,
}

impl WebPushReply {
    /// A bare status.
    pub fn status(status: u16) -> Self {
        WebPushReply { status, retry_after: None }
    }

    /// 429 with `Retry-After: seconds`.
    pub fn too_many(seconds: u64) -> Self {
        WebPushReply { status: 429, retry_after: Some(seconds.to_string()) }
    }
}

/// One request the mock received.
#[derive(Clone, Debug)]
pub struct RecordedWebPush {
    /// The subscription id (the last path segment).
    pub subscription: String,
    /// Lower-case header names and their values.
    pub headers: BTreeMap<String, String>,
    /// The encrypted body.
    pub body: Vec<u8>,
    /// The verified VAPID JWT claims (when verification is on and passed).
    pub vapid_claims: Option<Value>,
    /// The VAPID public key (`k`).
    pub vapid_key: Option<String>,
    /// The HTTP version (`HTTP/2.0` or `HTTP/1.1`).
    pub version: String,
    /// What the mock answered.
    pub answered: u16,
    /// When it arrived.
    pub at: Instant,
}

#[derive(Debug, Default)]
struct State {
    options: Mutex<Option<WebPushOptions>>,
    origin: Mutex<String>,
    script: Mutex<VecDeque<WebPushReply>>,
    gone: Mutex<HashSet<String>>,
    received: Mutex<Vec<RecordedWebPush>>,
    count: AtomicUsize,
    accepted: AtomicUsize,
    connections: Arc<AtomicUsize>,
    clock_offset_ms: AtomicI64,
}

/// The mock service. Dropping it stops it.
#[derive(Debug)]
pub struct MockWebPush {
    addr: SocketAddr,
    state: Arc<State>,
    task: JoinHandle<()>,
}

impl Drop for MockWebPush {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Checks the `Authorization: vapid t=…, k=…` header: returns the claims and the key, or why not.
fn check_vapid(value: Option<&str>, origin: &str, now_s: u64) -> Result<(Value, String), String> {
    let value = value.ok_or("no Authorization header")?;
    let params = value.strip_prefix("vapid ").ok_or("Authorization is not `vapid t=…, k=…`")?;
    let mut t = None;
    let mut k = None;
    for part in params.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = Some(v.trim()),
            Some(("k", v)) => k = Some(v.trim()),
            _ => {}
        }
    }
    let (t, k) = (t.ok_or("no t=")?, k.ok_or("no k=")?);
    let point = URL_SAFE_NO_PAD.decode(k.trim_end_matches('=')).map_err(|e| format!("k is not base64url: {e}"))?;
    if point.len() != 65 || point[0] != 4 {
        return Err("k is not an uncompressed P-256 point".into());
    }
    let key =
        DecodingKey::from_ec_components(&URL_SAFE_NO_PAD.encode(&point[1..33]), &URL_SAFE_NO_PAD.encode(&point[33..]))
            .map_err(|e| format!("k: {e}"))?;
    let mut validation = Validation::new(Algorithm::ES256);
    validation.set_audience(&[origin]);
    validation.set_required_spec_claims(&["exp", "aud"]);
    validation.validate_exp = false;
    let claims = jsonwebtoken::decode::<Value>(t, &key, &validation).map_err(|e| format!("JWT: {e}"))?.claims;
    let exp = claims["exp"].as_u64().ok_or("exp is not a number")?;
    if exp <= now_s {
        return Err(format!("JWT expired at {exp}"));
    }
    if exp > now_s + 24 * 3600 + 60 {
        return Err("exp is more than 24 hours ahead (RFC 8292 §2)".into());
    }
    let sub = claims["sub"].as_str().unwrap_or("");
    if !(sub.starts_with("mailto:") || sub.starts_with("https:")) {
        return Err(format!("sub {sub:?} is not a mailto: or https: URL"));
    }
    Ok((claims, k.to_owned()))
}

fn handle(state: &State, r: Received) -> hyper::Response<http_body_util::Full<bytes::Bytes>> {
    let options = lock(&state.options).unwrap_or_default();
    let origin = lock(&state.origin).clone();
    let path = r.head.uri.path();
    let Some(id) = path.strip_prefix("/push/").filter(|id| !id.is_empty() && !id.contains('/')) else {
        state.count.fetch_add(1, Ordering::Relaxed);
        return respond(404, &[], "no such push resource");
    };
    let mut vapid_claims = None;
    let mut vapid_key = None;
    let urgency_ok = header(&r.head, "urgency").is_none_or(|u| ["very-low", "low", "normal", "high"].contains(&u));
    let topic_ok = header(&r.head, "topic").is_none_or(|t| {
        !t.is_empty() && t.len() <= 32 && t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    });
    let (status, message): (u16, String) = if r.head.method != hyper::Method::POST {
        (405, "POST only".into())
    } else if header(&r.head, "ttl").is_none_or(|t| t.parse::<u32>().is_err()) {
        (400, "a TTL header (seconds) is required (RFC 8030 §5.2)".into())
    } else if header(&r.head, "content-encoding") != Some("aes128gcm") {
        (400, "Content-Encoding must be aes128gcm (RFC 8291 §4)".into())
    } else if !urgency_ok {
        (400, "bad Urgency".into())
    } else if !topic_ok {
        (400, "Topic must be at most 32 base64url characters (RFC 8030 §5.4)".into())
    } else if r.body.len() > 4096 {
        (413, "payload larger than 4096 bytes".into())
    } else if r.body.len() < 86 + 17 || r.body[20] != 65 {
        (400, "the body is not an RFC 8291 message (86-byte header with a 65-byte keyid)".into())
    } else {
        let checked = if options.verify_vapid {
            check_vapid(
                header(&r.head, "authorization"),
                &origin,
                now_ms(state.clock_offset_ms.load(Ordering::Relaxed)) / 1000,
            )
            .map(|(claims, key)| {
                vapid_claims = Some(claims);
                vapid_key = Some(key);
            })
        } else {
            Ok(())
        };
        match checked {
            Err(e) => (403, e),
            Ok(()) if lock(&state.gone).contains(id) => (410, "push subscription has unsubscribed or expired.".into()),
            Ok(()) => (201, String::new()),
        }
    };
    let scripted = lock(&state.script).pop_front();
    let (status, retry_after) = match scripted {
        Some(reply) if status == 201 || status == 410 => (reply.status, reply.retry_after),
        _ => (status, None),
    };
    // Recorded before it is counted: whoever sees the count sees the request.
    if options.keep_requests {
        let headers =
            r.head.headers.iter().map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned())).collect();
        lock(&state.received).push(RecordedWebPush {
            subscription: id.to_owned(),
            headers,
            body: r.body.to_vec(),
            vapid_claims,
            vapid_key,
            version: format!("{:?}", r.head.version),
            answered: status,
            at: Instant::now(),
        });
    }
    let n = if status == 201 { state.accepted.fetch_add(1, Ordering::Relaxed) + 1 } else { 0 };
    state.count.fetch_add(1, Ordering::Relaxed);
    let mut headers = Vec::new();
    if status == 201 {
        headers.push(("location", format!("{origin}/message/{n}")));
    }
    if let Some(after) = retry_after {
        headers.push(("retry-after", after));
    }
    respond(status, &headers, message)
}

impl MockWebPush {
    /// Starts the service on a loopback port.
    pub async fn start(options: WebPushOptions) -> anyhow::Result<Self> {
        let state = Arc::new(State::default());
        *lock(&state.options) = Some(options);
        let s = state.clone();
        let handler: Handler = Arc::new(move |r| {
            let response = handle(&s, r);
            Box::pin(async move { response })
        });
        let (addr, task) = serve(handler, state.connections.clone()).await?;
        *lock(&state.origin) = format!("https://{addr}");
        Ok(MockWebPush { addr, state, task })
    }

    /// `https://127.0.0.1:PORT`.
    pub fn origin(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The push resource of subscription `id`.
    pub fn endpoint(&self, id: &str) -> String {
        format!("{}/push/{id}", self.origin())
    }

    /// A subscription `id` as a browser would make it: the JSON to register and the browser's keys.
    pub fn subscription(&self, id: &str) -> (String, BrowserKeys) {
        let keys = BrowserKeys::generate();
        (keys.subscription(&self.endpoint(id)), keys)
    }

    /// The next answers (one per request, after the checks pass), in order.
    pub fn script(&self, replies: impl IntoIterator<Item = WebPushReply>) {
        lock(&self.state.script).extend(replies);
    }

    /// Subscription `id` answers `410 Gone` from now on.
    pub fn unsubscribe(&self, id: &str) {
        lock(&self.state.gone).insert(id.to_owned());
    }

    /// Shifts the mock's clock (to match a sender running on a manual clock).
    pub fn set_clock_offset_ms(&self, offset: i64) {
        self.state.clock_offset_ms.store(offset, Ordering::Relaxed);
    }

    /// Every request received (with `keep_requests`).
    pub fn received(&self) -> Vec<RecordedWebPush> {
        lock(&self.state.received).clone()
    }

    /// Requests received.
    pub fn count(&self) -> usize {
        self.state.count.load(Ordering::Relaxed)
    }

    /// Requests answered `201`.
    pub fn accepted(&self) -> usize {
        self.state.accepted.load(Ordering::Relaxed)
    }

    /// TLS connections accepted.
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::Relaxed)
    }
}
