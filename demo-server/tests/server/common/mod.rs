//! Helpers for the end-to-end tests of the server: a raw WebSocket client and HTTP helpers.
#![allow(dead_code, unreachable_pub)]

pub mod redis;

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tidings_server::{
    RunningServer, ServerConfig, StoreConfig, Synchronous, TEST_API_KEY, TEST_JWT_SECRET, issue_token,
};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Generous bound for anything that should happen "soon"; only there to turn a hang into a failure.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// A VAPID public key (`web-push generate-vapid-keys`): a point on P-256, also usable as a subscription's `p256dh`.
pub const VAPID_KEY: &str = "BNcRdreALRFXTkOOUHK1EtK2wtaz5Ry4YfYCA_0QTpQtUbVlUls0VJXg7A8u-Ts1XbjhazAkj7I99e8QcYP7DkM";

/// Starts a server on the store the suite runs on: memory by default; SQLite, in a fresh directory per server under
/// the target directory, when `TIDINGS_TEST_STORE=sqlite`; PostgreSQL, in a fresh database per server on the
/// server `TIDINGS_TEST_DATABASE_URL` names, when `TIDINGS_TEST_STORE=postgres` (`cargo xtask test` runs the
/// suite all three ways).
pub async fn start(mut config: ServerConfig) -> RunningServer {
    if std::env::var("TIDINGS_TEST_STORE").as_deref() == Ok("postgres") {
        let server = std::env::var(tidings_server::store::postgres::testing::DATABASE_URL_VAR)
            .expect("TIDINGS_TEST_STORE=postgres needs TIDINGS_TEST_DATABASE_URL (cargo xtask rust-tests sets both)");
        let url = tidings_server::store::postgres::testing::create_database(&server).await.expect("a test database");
        config.store = StoreConfig::Postgres { url };
    }
    if std::env::var("TIDINGS_TEST_STORE").as_deref() == Ok("sqlite") {
        static SWEPT: std::sync::Once = std::sync::Once::new();
        // The directories outlive their servers; the ones left by runs more than an hour ago are removed.
        SWEPT.call_once(|| {
            let old = |e: &std::fs::DirEntry| {
                e.metadata()
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| t.elapsed().unwrap_or_default() > Duration::from_secs(3600))
            };
            for entry in std::fs::read_dir(env!("CARGO_TARGET_TMPDIR")).into_iter().flatten().flatten() {
                if entry.file_name().to_string_lossy().starts_with("store-") && old(&entry) {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        });
        let dir = tempfile::Builder::new().prefix("store-").tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        config.store = StoreConfig::Sqlite { data_dir: dir.keep(), synchronous: Synchronous::Full };
    }
    tidings_server::start(config).await.expect("the server starts")
}

pub async fn start_default() -> RunningServer {
    start(ServerConfig::for_tests()).await
}

pub fn token(user: &str, topics: &[&str]) -> String {
    issue_token(TEST_JWT_SECRET, user, topics, Some(Duration::from_secs(3600)))
}

/// A raw protocol client.
pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub protocol: Option<String>,
    /// Frames of a message that held several (one per line, protocol §1) not yet returned by `recv`.
    pending: VecDeque<Value>,
}

/// The frames of one server message: one per line.
pub fn frames_of(text: &str) -> Vec<Value> {
    text.split('\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_str(l).expect("server frames are JSON"))
        .collect()
}

/// How a connection ended, as seen by the client.
#[derive(Debug)]
pub struct Closed {
    /// Text frames received before the close.
    pub frames: Vec<Value>,
    /// The close code (None: no close frame).
    pub code: Option<u16>,
}

impl Closed {
    /// The last `error` frame before the close.
    pub fn error(&self) -> &Value {
        self.frames.iter().rev().find(|f| f["op"] == "error").unwrap_or_else(|| panic!("no error frame: {self:?}"))
    }

    pub fn error_code(&self) -> &str {
        self.error()["code"].as_str().expect("error frames have a code")
    }
}

impl Client {
    /// A client on an upgraded stream.
    pub fn from_stream(ws: WebSocketStream<MaybeTlsStream<TcpStream>>) -> Client {
        Client { ws, protocol: Some("tidings.v1".into()), pending: VecDeque::new() }
    }

    /// Connects offering `tidings.v1`.
    pub async fn connect(server: &RunningServer) -> Client {
        Self::connect_offering(server, "tidings.v1").await.expect("the upgrade succeeds")
    }

    pub async fn connect_offering(server: &RunningServer, protocols: &str) -> Result<Client, tungstenite::Error> {
        let mut request = server.ws_url().into_client_request().unwrap();
        request.headers_mut().insert("Sec-WebSocket-Protocol", HeaderValue::from_str(protocols).unwrap());
        let (ws, response) = tokio::time::timeout(PATIENCE, tokio_tungstenite::connect_async(request))
            .await
            .expect("connect timed out")?;
        let protocol = response.headers().get("Sec-WebSocket-Protocol").map(|v| v.to_str().unwrap().to_owned());
        Ok(Client { ws, protocol, pending: VecDeque::new() })
    }

    /// Connects and authenticates as `user` (device `device`), returning the client and the `welcome` frame.
    pub async fn login(server: &RunningServer, user: &str, device: &str, topics: &[&str]) -> (Client, Value) {
        let mut client = Self::connect(server).await;
        client.auth(&token(user, topics), device).await;
        let welcome = client.recv().await;
        assert_eq!(welcome["op"], "welcome", "{welcome}");
        (client, welcome)
    }

    pub async fn auth(&mut self, token: &str, device: &str) {
        self.send(json!({"op":"auth","token":token,"device":device,"client":"e2e/1"})).await;
    }

    pub async fn send(&mut self, frame: Value) {
        self.send_text(&frame.to_string()).await;
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws.send(Message::text(text)).await.expect("send");
    }

    /// The next text frame (pings and pongs are skipped). Panics on close or after [`PATIENCE`].
    pub async fn recv(&mut self) -> Value {
        if let Some(frame) = self.pending.pop_front() {
            return frame;
        }
        loop {
            let message = tokio::time::timeout(PATIENCE, self.ws.next())
                .await
                .expect("timed out waiting for a frame")
                .expect("the connection ended")
                .expect("read error");
            match message {
                Message::Text(text) => {
                    self.pending.extend(frames_of(&text));
                    if let Some(frame) = self.pending.pop_front() {
                        return frame;
                    }
                }
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    /// The next frame that is not a heartbeat.
    pub async fn recv_skipping_heartbeats(&mut self) -> Value {
        loop {
            let frame = self.recv().await;
            if frame["op"] != "heartbeat" {
                return frame;
            }
        }
    }

    /// Reads until the connection closes; returns the frames before the close and the close code.
    pub async fn closed(&mut self) -> Closed {
        let mut frames: Vec<Value> = self.pending.drain(..).collect();
        loop {
            let next = tokio::time::timeout(PATIENCE, self.ws.next()).await.expect("timed out waiting for the close");
            match next {
                Some(Ok(Message::Text(text))) => frames.extend(frames_of(&text)),
                Some(Ok(Message::Close(frame))) => {
                    // Keep reading so that tungstenite sends the close reply and sees the end of the stream.
                    let _ =
                        tokio::time::timeout(PATIENCE, async { while let Some(Ok(_)) = self.ws.next().await {} }).await;
                    return Closed { frames, code: frame.map(|f| u16::from(f.code)) };
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return Closed { frames, code: None },
            }
        }
    }

    /// Subscribes to `streams` (entries as in the protocol) and returns one reply per entry.
    pub async fn subscribe(&mut self, reference: u64, streams: Value) -> Vec<Value> {
        let count = streams.as_array().unwrap().len();
        self.send(json!({"op":"subscribe","ref":reference,"streams":streams})).await;
        let mut replies = Vec::new();
        while replies.len() < count {
            let frame = self.recv_skipping_heartbeats().await;
            assert_eq!(frame["ref"], reference, "{frame}");
            replies.push(frame);
        }
        replies
    }

    /// Subscribes to one stream and returns the `subscribed` frame.
    pub async fn subscribe_one(&mut self, reference: u64, entry: Value) -> Value {
        let reply = self.subscribe(reference, json!([entry])).await.pop().unwrap();
        assert_eq!(reply["op"], "subscribed", "{reply}");
        reply
    }

    /// Asks for a heartbeat echo and returns every other frame that arrived before it. Because the server
    /// answers in order, this shows everything queued for the client before the echo request was handled.
    pub async fn sync(&mut self) -> Vec<Value> {
        self.send(json!({"op":"heartbeat","echo":true})).await;
        let mut before = Vec::new();
        loop {
            let frame = self.recv().await;
            if frame["op"] == "heartbeat" {
                assert!(frame.get("echo").is_none(), "the server never sets echo: {frame}");
                return before;
            }
            before.push(frame);
        }
    }
}

/// HTTP helpers. (reqwest is linked with rustls and no default crypto provider: see
/// `tidings_server::install_crypto_provider`.)
pub fn http() -> reqwest::Client {
    tidings_server::install_crypto_provider();
    reqwest::Client::builder().timeout(PATIENCE).build().unwrap()
}

pub async fn post(server: &RunningServer, path: &str, body: Value) -> (u16, Value) {
    post_raw(server, path, Some(TEST_API_KEY), body.to_string()).await
}

pub async fn post_raw(server: &RunningServer, path: &str, key: Option<&str>, body: String) -> (u16, Value) {
    let mut request = http().post(format!("{}{path}", server.http_url())).body(body);
    request = request.header("content-type", "application/json");
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.expect("HTTP request");
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

pub async fn get(server: &RunningServer, path: &str) -> (u16, Value) {
    let response = http()
        .get(format!("{}{path}", server.http_url()))
        .bearer_auth(TEST_API_KEY)
        .send()
        .await
        .expect("HTTP request");
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

/// Publishes through the HTTP API and returns the receipt.
pub async fn publish(server: &RunningServer, body: Value) -> Value {
    let (status, reply) = post(server, "/v1/publish", body).await;
    assert_eq!(status, 202, "{reply}");
    reply
}

/// Polls `check` until it returns true (or panics after [`PATIENCE`]).
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Offsets of the notification frames in `frames`.
pub fn offsets(frames: &[Value]) -> Vec<u64> {
    frames.iter().filter(|f| f["op"] == "notification").map(|f| f["offset"].as_u64().unwrap()).collect()
}

/// One sample of the Prometheus text `text`: the value of `name` whose labels include `labels`.
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (metric, rest) = match series.split_once('{') {
            Some((metric, rest)) => (metric, rest.strip_suffix('}')?),
            None => (series, ""),
        };
        if metric != name {
            return None;
        }
        let found: HashMap<&str, &str> = rest
            .split(',')
            .filter(|kv| !kv.is_empty())
            .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k, v.trim_matches('"'))))
            .collect();
        labels.iter().all(|(k, v)| found.get(k) == Some(v)).then(|| value.parse().ok())?
    })
}

pub async fn scrape(server: &RunningServer) -> String {
    let response = http().get(format!("{}/metrics", server.http_url())).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/plain; version=0.0.4; charset=utf-8");
    response.text().await.unwrap()
}
