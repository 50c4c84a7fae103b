//! Shared helpers for the end-to-end tests: a reference server on loopback, an HTTP publisher, and native
//! clients whose events are collected for assertions.

/// Every Rust block of the repository's README, compiled as a doctest (`cargo test -p tidings-tests --doc`): the
/// first hour's client, the app's client and the token helper cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct RootReadmeDoctests;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tidings_core::engine::{ConnectionState, Continuity, Event};
use tidings_core::native::{Client, ClientConfig, Events, StaticToken, TokenProvider};
use tidings_core::protocol::Notification;
use tidings_core::store::Store;
use tidings_server::{RunningServer, ServerConfig, StoreConfig, Synchronous};

/// How long any single wait may take before a test fails (generous: only guards against hangs).
pub const WAIT: Duration = Duration::from_secs(20);

/// A reference server on loopback plus an HTTP client for its API.
#[derive(Debug)]
pub struct TestServer {
    pub server: RunningServer,
    /// The other processes of a deployment on Redis and PostgreSQL ([`TestServer::start_deployment_with`]):
    /// clients and requests go to `server` and these in turn.
    pub peers: Vec<RunningServer>,
    next: std::sync::atomic::AtomicUsize,
    pub config: ServerConfig,
    http: reqwest::Client,
    /// The data directory of a SQLite server, removed with it.
    data: Option<Arc<tempfile::TempDir>>,
}

impl TestServer {
    /// Starts a server with the test configuration (the memory store), adjusted by `tweak`.
    pub async fn start_with(tweak: impl FnOnce(&mut ServerConfig)) -> Self {
        let mut config = ServerConfig::for_tests();
        tweak(&mut config);
        Self::start_config(config, None).await
    }

    /// Starts a server on the SQLite store (the server's default) in a fresh temporary directory, with the test
    /// configuration adjusted by `tweak`.
    pub async fn start_sqlite_with(tweak: impl FnOnce(&mut ServerConfig)) -> Self {
        let dir = tempfile::Builder::new().prefix("tidings-test-").tempdir().expect("a temporary directory");
        let mut config = ServerConfig::for_tests();
        config.store = StoreConfig::Sqlite { data_dir: dir.path().to_owned(), synchronous: Synchronous::Full };
        tweak(&mut config);
        Self::start_config(config, Some(Arc::new(dir))).await
    }

    /// Starts a server with the test configuration.
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    async fn start_config(config: ServerConfig, data: Option<Arc<tempfile::TempDir>>) -> Self {
        let server = tidings_server::start(config.clone()).await.expect("server starts");
        TestServer { server, peers: Vec::new(), next: Default::default(), config, http: reqwest::Client::new(), data }
    }

    /// A deployment of three server processes (in this test process) on one PostgreSQL database and one Redis —
    /// the ones `cargo xtask test` provides (`TIDINGS_TEST_DATABASE_URL`, `TIDINGS_TEST_REDIS_URL`) — with the test
    /// configuration adjusted by `tweak`. Each client connects to the next process, each request goes to the next
    /// one. `None` (with a note) when run by hand without them; under xtask their absence is a failure.
    pub async fn start_deployment_with(tweak: impl FnOnce(&mut ServerConfig)) -> Option<Self> {
        use tidings_server::store::postgres::testing;
        let database = testing::server_url("the three-process deployment")?;
        let redis = match std::env::var("TIDINGS_TEST_REDIS_URL") {
            Ok(url) if !url.is_empty() => url,
            _ => {
                assert!(std::env::var_os("TIDINGS_XTASK").is_none(), "TIDINGS_TEST_REDIS_URL is not set under xtask");
                eprintln!("note: the three-process deployment is skipped: TIDINGS_TEST_REDIS_URL is not set");
                return None;
            }
        };
        let url = testing::create_database(&database).await.expect("a test database");
        let mut config = ServerConfig::for_tests();
        config.store = StoreConfig::Postgres { url };
        let mut redis = tidings_server::broker_redis::RedisConfig::new(redis);
        redis.prefix = format!("conformance-{:016x}", fastrand_u64());
        config.redis = Some(redis);
        tweak(&mut config);
        let mut deployment = Self::start_config(config.clone(), None).await;
        for _ in 0..2 {
            deployment.peers.push(tidings_server::start(config.clone()).await.expect("server starts"));
        }
        Some(deployment)
    }

    /// The process the next client or request goes to (always `server` outside a deployment).
    fn pick(&self) -> &RunningServer {
        if self.peers.is_empty() {
            return &self.server;
        }
        let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % (self.peers.len() + 1);
        if i == 0 { &self.server } else { &self.peers[i - 1] }
    }

    /// Stops this server and starts a new one on the same address and store configuration (with the memory
    /// store everything is lost: new epochs; with SQLite everything is kept).
    /// A deployment restarts every process, each on its address.
    pub async fn restart(self) -> Self {
        let addr = self.server.local_addr();
        let mut config = self.config.clone();
        let peers: Vec<_> = self.peers.iter().map(RunningServer::local_addr).collect();
        for peer in self.peers {
            peer.shutdown().await;
        }
        self.server.shutdown().await;
        config.bind = addr;
        let mut restarted = Self::start_config(config.clone(), self.data).await;
        for addr in peers {
            config.bind = addr;
            restarted.peers.push(tidings_server::start(config.clone()).await.expect("server starts"));
        }
        restarted
    }

    pub fn ws_url(&self) -> String {
        self.pick().ws_url()
    }

    /// A valid token for `user`, allowed to read `topics`.
    pub fn token(&self, user: &str, topics: &[&str]) -> String {
        tidings_server::issue_token(&self.config.jwt_secret, user, topics, Some(Duration::from_secs(3600)))
    }

    /// `POST /v1/publish`; returns the reply body (panics on a non-2xx status).
    pub async fn publish(&self, body: Value) -> Value {
        let (status, reply) = self.publish_raw(body).await;
        assert!(status.is_success(), "publish failed: {status} {reply}");
        reply
    }

    /// `POST /v1/publish`; returns status and body.
    pub async fn publish_raw(&self, body: Value) -> (reqwest::StatusCode, Value) {
        let resp = self
            .http
            .post(format!("{}/v1/publish", self.pick().http_url()))
            .bearer_auth(&self.config.api_key)
            .json(&body)
            .send()
            .await
            .expect("HTTP request");
        let status = resp.status();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// Publishes one notification to a user with a caller-chosen id.
    pub async fn notify_user(&self, user: &str, id: &str, priority: &str) -> Value {
        self.publish(json!({"users":[user],"id":id,"type":"test","priority":priority,"title":format!("t {id}")})).await
    }

    /// `POST /v1/admin/drop` for everyone; returns how many were dropped.
    pub async fn drop_all(&self) -> u64 {
        let resp = self
            .http
            .post(format!("{}/v1/admin/drop", self.pick().http_url()))
            .bearer_auth(&self.config.api_key)
            .json(&json!({}))
            .send()
            .await
            .expect("HTTP request");
        assert!(resp.status().is_success(), "drop failed: {}", resp.status());
        resp.json::<Value>().await.unwrap()["dropped"].as_u64().unwrap()
    }

    /// `GET <path>` with the API key.
    pub async fn get(&self, path: &str) -> Value {
        let resp = self
            .http
            .get(format!("{}{}", self.pick().http_url(), path))
            .bearer_auth(&self.config.api_key)
            .send()
            .await
            .expect("HTTP request");
        assert!(resp.status().is_success(), "GET {path}: {}", resp.status());
        resp.json().await.unwrap()
    }
}

/// A native client plus everything it emitted.
#[derive(Debug)]
pub struct TestClient {
    pub client: Client,
    events: Events,
    pub log: Vec<Event>,
}

impl TestClient {
    /// A client for `user` with a valid token and default configuration (batching off unless `tweak` turns it
    /// on, fast backoff so tests do not wait).
    pub fn connect(server: &TestServer, user: &str, topics: &[&str]) -> Self {
        Self::connect_with(server, StaticToken::new(server.token(user, topics)), None, |_| {})
    }

    /// A client with full control over token provider, store and configuration.
    pub fn connect_with(
        server: &TestServer,
        tokens: impl TokenProvider,
        store: Option<Arc<dyn Store>>,
        tweak: impl FnOnce(&mut ClientConfig),
    ) -> Self {
        let mut config = ClientConfig::new(server.ws_url());
        config.engine.backoff.base = Duration::from_millis(50);
        config.engine.backoff.cap = Duration::from_millis(500);
        config.engine.batch.window = Duration::ZERO;
        tweak(&mut config);
        let mut builder = Client::builder(config).token_provider(tokens);
        if let Some(store) = store {
            builder = builder.store(store);
        }
        let (client, events) = builder.connect().expect("client starts");
        TestClient { client, events, log: Vec::new() }
    }

    /// Waits until the connection state matches.
    pub async fn wait_state(&self, pred: impl Fn(&ConnectionState) -> bool) -> ConnectionState {
        self.client.wait_for_state(WAIT, pred).await.expect("state reached")
    }

    /// Waits until connected.
    pub async fn connected(&self) {
        self.wait_state(|s| *s == ConnectionState::Connected).await;
    }

    /// Reads events until `pred` is true of the log (returns the log position after which it became true).
    pub async fn until(&mut self, what: &str, pred: impl Fn(&[Event]) -> bool) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !pred(&self.log) {
            match tokio::time::timeout_at(deadline, self.events.next()).await {
                Ok(Some(e)) => self.log.push(e),
                Ok(None) => panic!("event stream ended while waiting for {what}; log: {:#?}", self.log),
                Err(_) => panic!("timed out waiting for {what}; log: {:#?}", self.log),
            }
        }
    }

    /// Collects whatever arrives within `d` (for asserting that nothing more arrives).
    pub async fn settle(&mut self, d: Duration) {
        let deadline = tokio::time::Instant::now() + d;
        while let Ok(Some(e)) = tokio::time::timeout_at(deadline, self.events.next()).await {
            self.log.push(e);
        }
    }

    /// Notifications delivered on their own, in order.
    pub fn notifications(&self) -> Vec<&Notification> {
        self.log.iter().filter_map(|e| if let Event::Notification(n) = e { Some(&**n) } else { None }).collect()
    }

    /// Ids of delivered notifications (alone and in digests), in delivery order.
    pub fn delivered_ids(&self) -> Vec<String> {
        let mut ids = Vec::new();
        for e in &self.log {
            match e {
                Event::Notification(n) => ids.push(n.id().to_owned()),
                Event::Digest(d) => ids.extend(d.ids.iter().cloned()),
                _ => {}
            }
        }
        ids
    }

    /// Continuity events per stream, in order.
    pub fn continuity(&self) -> HashMap<String, Vec<Continuity>> {
        let mut map: HashMap<String, Vec<Continuity>> = HashMap::new();
        for e in &self.log {
            if let Event::Continuity { stream, continuity } = e {
                map.entry(stream.clone()).or_default().push(continuity.clone());
            }
        }
        map
    }

    /// Waits until `n` notifications with these ids were delivered.
    pub async fn until_ids(&mut self, ids: &[&str]) {
        let want: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
        self.until(&format!("ids {ids:?}"), |log| {
            let got: Vec<String> = log
                .iter()
                .flat_map(|e| match e {
                    Event::Notification(n) => vec![n.id().to_owned()],
                    Event::Digest(d) => d.ids.clone(),
                    _ => vec![],
                })
                .collect();
            want.iter().all(|w| got.contains(w))
        })
        .await;
    }

    /// Closes the client.
    pub async fn close(self) {
        self.client.close().await;
    }
}

fn fastrand_u64() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
}
