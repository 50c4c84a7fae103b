//! A mock APNs: the HTTP/2 provider API over TLS (ALPN `h2` only), on the `h2` crate directly so that it can
//! send GOAWAY frames when told.
//!
//! `POST /3/device/{hex token}`: checks the provider token (ES256 with the key's public half, `kid`, `iss`,
//! `iat` within the hour → `403 InvalidProviderToken` / `ExpiredProviderToken`), `apns-topic`,
//! `apns-push-type`, `apns-priority`, `apns-expiration`, `apns-collapse-id` (≤ 64 bytes) and the payload (JSON
//! with `aps`, ≤ 4 096 bytes → `413 PayloadTooLarge`); answers `200` with an `apns-id`, `410 Unregistered` with a
//! timestamp for devices marked unregistered, or what was scripted (including GOAWAY).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Instant;

use bytes::Bytes;
use h2::server::SendResponse;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};

use crate::server::tls_acceptor;
use crate::{ApnsTestKey, now_ms};

/// The mock's settings.
#[derive(Clone, Debug)]
pub struct ApnsOptions {
    /// The signing key's id.
    pub key_id: String,
    /// The team id.
    pub team_id: String,
    /// The signing key's public half (SPKI PEM).
    pub public_key_pem: String,
    /// The app's bundle id.
    pub topic: String,
}

impl ApnsOptions {
    /// For `key`, accepting `topic`.
    pub fn for_key(key: &ApnsTestKey, topic: &str) -> Self {
        ApnsOptions {
            key_id: key.key_id.clone(),
            team_id: key.team_id.clone(),
            public_key_pem: key.public_pem.clone(),
            topic: topic.into(),
        }
    }
}

/// A scripted answer (used by the next request that passes the checks).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApnsReply {
    /// An HTTP answer with APNs' error JSON.
    Status {
        /// HTTP status.
        status: u16,
        /// APNs `reason`.
        reason: String,
        /// `timestamp` (ms) for 410.
        timestamp: Option<u64>,
        /// `Retry-After` seconds.
        retry_after: Option<u64>,
    },
    /// No answer: a GOAWAY with this error code, and the connection closes (as APNs does on some errors). The
    /// request in flight fails as its connection closes under it; requests sent after the GOAWAY are refused.
    GoAway(u32),
    /// `200`, then a graceful GOAWAY: this connection takes no new streams.
    OkThenGoAway,
}

impl ApnsReply {
    /// An error answer.
    pub fn error(status: u16, reason: &str) -> Self {
        ApnsReply::Status { status, reason: reason.into(), timestamp: None, retry_after: None }
    }

    /// `429 TooManyRequests` with `Retry-After`.
    pub fn too_many(seconds: u64) -> Self {
        ApnsReply::Status { status: 429, reason: "TooManyRequests".into(), timestamp: None, retry_after: Some(seconds) }
    }

    /// `410 Unregistered` since `timestamp` (ms).
    pub fn unregistered(timestamp: u64) -> Self {
        ApnsReply::Status { status: 410, reason: "Unregistered".into(), timestamp: Some(timestamp), retry_after: None }
    }
}

/// One request the mock received.
#[derive(Clone, Debug)]
pub struct RecordedApns {
    /// The device token from the path.
    pub device: String,
    /// Lower-case header names and values (`authorization` included).
    pub headers: BTreeMap<String, String>,
    /// The payload.
    pub payload: Value,
    /// The provider token.
    pub jwt: String,
    /// Its verified claims (`Null` when it did not verify).
    pub claims: Value,
    /// Which connection (1-based, in accept order).
    pub connection: usize,
    /// What the mock answered (`0`: a GOAWAY instead).
    pub answered: u16,
    /// When it arrived.
    pub at: Instant,
}

#[derive(Debug, Default)]
struct State {
    options: Mutex<Option<ApnsOptions>>,
    script: Mutex<VecDeque<ApnsReply>>,
    unregistered: Mutex<HashMap<String, u64>>,
    received: Mutex<Vec<RecordedApns>>,
    /// Provider tokens whose signature verified, with their claims (APNs, too, validates a token once per
    /// connection, not per request).
    verified: Mutex<HashMap<String, Value>>,
    keep_requests: std::sync::atomic::AtomicBool,
    count: AtomicUsize,
    accepted: AtomicUsize,
    connections: AtomicUsize,
    clock_offset_ms: AtomicI64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

enum Command {
    /// GOAWAY with an error; the stream's responder is held until the connection ends.
    Abrupt(h2::Reason, SendResponse<Bytes>),
    /// Graceful GOAWAY.
    Graceful,
}

/// What a checked request gets.
enum Answer {
    Http { status: u16, headers: Vec<(&'static str, String)>, body: String },
    GoAway(u32),
    OkThenGoAway,
}

fn error(status: u16, reason: &str) -> Answer {
    Answer::Http { status, headers: vec![], body: json!({"reason": reason}).to_string() }
}

/// The checks of a real APNs, then `unregistered`, then the script.
fn decide(state: &State, device: &str, headers: &BTreeMap<String, String>, body: &[u8]) -> (Answer, String, Value) {
    let options = lock(&state.options).clone().expect("options are set at start");
    let jwt = headers.get("authorization").and_then(|a| a.strip_prefix("bearer ")).unwrap_or("").to_owned();
    let now_s = now_ms(state.clock_offset_ms.load(Ordering::Relaxed)) / 1000;
    let mut claims = Value::Null;
    let verdict = (|| {
        if device.is_empty() || !device.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(error(400, "BadDeviceToken"));
        }
        if jwt.is_empty() {
            return Err(error(403, "MissingProviderToken"));
        }
        let header = jsonwebtoken::decode_header(&jwt).map_err(|_| error(403, "InvalidProviderToken"))?;
        if header.alg != Algorithm::ES256 || header.kid.as_deref() != Some(options.key_id.as_str()) {
            return Err(error(403, "InvalidProviderToken"));
        }
        let cached = lock(&state.verified).get(&jwt).cloned();
        claims = match cached {
            Some(c) => c,
            None => {
                let key = DecodingKey::from_ec_pem(options.public_key_pem.as_bytes()).expect("a P-256 public key");
                let mut validation = Validation::new(Algorithm::ES256);
                validation.set_required_spec_claims(&["iss"]);
                validation.set_issuer(&[options.team_id.as_str()]);
                validation.validate_exp = false;
                let c = jsonwebtoken::decode::<Value>(&jwt, &key, &validation)
                    .map_err(|_| error(403, "InvalidProviderToken"))?
                    .claims;
                lock(&state.verified).insert(jwt.clone(), c.clone());
                c
            }
        };
        let iat = claims["iat"].as_u64().ok_or_else(|| error(403, "InvalidProviderToken"))?;
        if iat > now_s + 60 {
            return Err(error(403, "InvalidProviderToken"));
        }
        if now_s.saturating_sub(iat) >= 3600 {
            return Err(error(403, "ExpiredProviderToken"));
        }
        match headers.get("apns-topic") {
            None => return Err(error(400, "MissingTopic")),
            Some(t) if *t != options.topic => return Err(error(400, "DeviceTokenNotForTopic")),
            Some(_) => {}
        }
        let push_type = headers.get("apns-push-type").map(String::as_str);
        if !matches!(
            push_type,
            Some(
                "alert"
                    | "background"
                    | "voip"
                    | "liveactivity"
                    | "complication"
                    | "fileprovider"
                    | "mdm"
                    | "location"
                    | "pushtotalk"
            )
        ) {
            return Err(error(400, "InvalidPushType"));
        }
        if !matches!(headers.get("apns-priority").map(String::as_str), None | Some("5" | "10" | "1")) {
            return Err(error(400, "BadPriority"));
        }
        if headers.get("apns-expiration").is_some_and(|e| e.parse::<u64>().is_err()) {
            return Err(error(400, "BadExpirationDate"));
        }
        if headers.get("apns-collapse-id").is_some_and(|c| c.len() > 64) {
            return Err(error(400, "BadCollapseId"));
        }
        if body.len() > 4096 {
            return Err(error(413, "PayloadTooLarge"));
        }
        let payload: Value = serde_json::from_slice(body).map_err(|_| error(400, "PayloadEmpty"))?;
        if !payload.get("aps").is_some_and(Value::is_object) {
            return Err(error(400, "PayloadEmpty"));
        }
        Ok(())
    })();
    if let Err(answer) = verdict {
        return (answer, jwt, claims);
    }
    if let Some(since) = lock(&state.unregistered).get(device) {
        let body = json!({"reason": "Unregistered", "timestamp": since}).to_string();
        return (Answer::Http { status: 410, headers: vec![], body }, jwt, claims);
    }
    let answer = match lock(&state.script).pop_front() {
        Some(ApnsReply::Status { status, reason, timestamp, retry_after }) => {
            let mut body = json!({"reason": reason});
            if let Some(t) = timestamp {
                body["timestamp"] = t.into();
            }
            let headers = retry_after.map(|s| vec![("retry-after", s.to_string())]).unwrap_or_default();
            Answer::Http { status, headers, body: body.to_string() }
        }
        Some(ApnsReply::GoAway(code)) => Answer::GoAway(code),
        Some(ApnsReply::OkThenGoAway) => Answer::OkThenGoAway,
        None => Answer::Http { status: 200, headers: vec![], body: String::new() },
    };
    (answer, jwt, claims)
}

async fn stream(
    state: Arc<State>,
    request: hyper::http::Request<h2::RecvStream>,
    mut respond: SendResponse<Bytes>,
    connection: usize,
    commands: mpsc::UnboundedSender<Command>,
) {
    let (head, mut body_stream) = request.into_parts();
    let mut body = Vec::new();
    while let Some(chunk) = body_stream.data().await {
        let Ok(chunk) = chunk else { return };
        let _ = body_stream.flow_control().release_capacity(chunk.len());
        body.extend_from_slice(&chunk);
    }
    let headers: BTreeMap<String, String> =
        head.headers.iter().map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned())).collect();
    let device = head.uri.path().strip_prefix("/3/device/").unwrap_or("").to_owned();
    let (answer, jwt, claims) = if head.method == hyper::Method::POST {
        decide(&state, &device, &headers, &body)
    } else {
        (error(405, "MethodNotAllowed"), String::new(), Value::Null)
    };
    let answered = match &answer {
        Answer::Http { status, .. } => *status,
        Answer::OkThenGoAway => 200,
        Answer::GoAway(_) => 0,
    };
    // Recorded before it is counted: whoever sees the count sees the request.
    if state.keep_requests.load(Ordering::Relaxed) {
        let payload = serde_json::from_slice(&body).unwrap_or(Value::Null);
        lock(&state.received).push(RecordedApns {
            device,
            headers,
            payload,
            jwt,
            claims,
            connection,
            answered,
            at: Instant::now(),
        });
    }
    if answered == 200 {
        state.accepted.fetch_add(1, Ordering::Relaxed);
    }
    state.count.fetch_add(1, Ordering::Relaxed);
    let (status, extra, text, then_goaway) = match answer {
        Answer::GoAway(code) => {
            let _ = commands.send(Command::Abrupt(h2::Reason::from(code), respond));
            return;
        }
        Answer::OkThenGoAway => (200, vec![], String::new(), true),
        Answer::Http { status, headers, body } => (status, headers, body, false),
    };
    let mut response = hyper::http::Response::builder().status(status);
    if status == 200 {
        let n = state.accepted.load(Ordering::Relaxed);
        response = response.header("apns-id", format!("00000000-0000-4000-8000-{n:012X}"));
    }
    for (k, v) in extra {
        response = response.header(k, v);
    }
    let Ok(response) = response.body(()) else { return };
    let end = text.is_empty();
    if let Ok(mut send) = respond.send_response(response, end)
        && !end
    {
        let _ = send.send_data(Bytes::from(text), true);
    }
    if then_goaway {
        let _ = commands.send(Command::Graceful);
    }
}

async fn connection(state: Arc<State>, tls: tokio_rustls::server::TlsStream<tokio::net::TcpStream>, id: usize) {
    let Ok(mut h2) = h2::server::handshake(tls).await else { return };
    let (tx, mut rx) = mpsc::unbounded_channel::<Command>();
    let mut held = Vec::new();
    let mut streams = JoinSet::new();
    type Accepted = (hyper::http::Request<h2::RecvStream>, SendResponse<Bytes>);
    enum Event {
        Command(Command),
        Stream(Option<Result<Box<Accepted>, h2::Error>>),
    }
    loop {
        let event = std::future::poll_fn(|cx| {
            if let Poll::Ready(Some(c)) = rx.poll_recv(cx) {
                return Poll::Ready(Event::Command(c));
            }
            h2.poll_accept(cx).map(|s| Event::Stream(s.map(|r| r.map(Box::new))))
        })
        .await;
        match event {
            Event::Command(Command::Abrupt(reason, respond)) => {
                held.push(respond);
                h2.abrupt_shutdown(reason);
            }
            Event::Command(Command::Graceful) => h2.graceful_shutdown(),
            Event::Stream(Some(Ok(accepted))) => {
                let (request, respond) = *accepted;
                streams.spawn(stream(state.clone(), request, respond, id, tx.clone()));
            }
            Event::Stream(_) => break,
        }
    }
    drop(held);
}

/// The mock APNs. Dropping it stops it.
#[derive(Debug)]
pub struct MockApns {
    addr: SocketAddr,
    state: Arc<State>,
    task: JoinHandle<()>,
}

impl Drop for MockApns {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MockApns {
    /// Starts the mock on a loopback port.
    pub async fn start(options: ApnsOptions) -> anyhow::Result<Self> {
        let state = Arc::new(State::default());
        *lock(&state.options) = Some(options);
        state.keep_requests.store(true, Ordering::Relaxed);
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let acceptor = tls_acceptor(&[b"h2"])?;
        let s = state.clone();
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                let Ok((tcp, _)) = listener.accept().await else { continue };
                let _ = tcp.set_nodelay(true);
                let acceptor = acceptor.clone();
                let state = s.clone();
                connections.spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else { return };
                    let id = state.connections.fetch_add(1, Ordering::Relaxed) + 1;
                    connection(state, tls, id).await;
                });
                while connections.try_join_next().is_some() {}
            }
        });
        Ok(MockApns { addr, state, task })
    }

    /// The base URL (`--apns-url` / `--apns-sandbox-url`).
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The next answers, in order (to requests that pass the checks).
    pub fn script(&self, replies: impl IntoIterator<Item = ApnsReply>) {
        lock(&self.state.script).extend(replies);
    }

    /// Device `token` answers `410 Unregistered` with `since` (ms) from now on.
    pub fn unregister(&self, token: &str, since: u64) {
        lock(&self.state.unregistered).insert(token.to_owned(), since);
    }

    /// Keep every request (default) or count only (benchmarks).
    pub fn keep_requests(&self, keep: bool) {
        self.state.keep_requests.store(keep, Ordering::Relaxed);
    }

    /// Shifts the mock's clock (to match a sender running on a manual clock).
    pub fn set_clock_offset_ms(&self, offset: i64) {
        self.state.clock_offset_ms.store(offset, Ordering::Relaxed);
    }

    /// Every request received.
    pub fn received(&self) -> Vec<RecordedApns> {
        lock(&self.state.received).clone()
    }

    /// Requests received.
    pub fn count(&self) -> usize {
        self.state.count.load(Ordering::Relaxed)
    }

    /// Requests answered `200`.
    pub fn accepted(&self) -> usize {
        self.state.accepted.load(Ordering::Relaxed)
    }

    /// TLS connections accepted.
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::Relaxed)
    }
}
