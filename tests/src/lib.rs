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

/// A reference server on loopback plus an HTTP client for its API: one server in the test process, or a
/// deployment of three `tidings-server` OS processes ([`TestServer::start_deployment_with`]).
#[derive(Debug)]
pub struct TestServer {
    /// The server in this test process (`None` for a deployment of OS processes).
    running: Option<RunningServer>,
    /// The processes of a deployment: clients and requests go to them in turn.
    processes: Vec<ServerProcess>,
    next: std::sync::atomic::AtomicUsize,
    pub config: ServerConfig,
    http: reqwest::Client,
    /// The data directory of a SQLite server (or the logs of a deployment), removed with it.
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
        TestServer {
            running: Some(server),
            processes: Vec::new(),
            next: Default::default(),
            config,
            http: reqwest::Client::new(),
            data,
        }
    }

    /// A deployment of three `tidings-server` OS processes (the workspace's binary) on one PostgreSQL database
    /// and one Redis — the ones `cargo xtask test` provides (`TIDINGS_TEST_DATABASE_URL`,
    /// `TIDINGS_TEST_REDIS_URL`) — configured by flags from the test configuration adjusted by `tweak` (see
    /// [`ServerProcess::args`]). Each client connects to the next process, each request goes to the next one.
    /// `None` (with a note) when run by hand without them; under xtask their absence is a failure.
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
        let logs = tempfile::Builder::new().prefix("tidings-deployment-").tempdir().expect("a temporary directory");
        let args = ServerProcess::args(&config);
        let mut processes = Vec::new();
        for i in 0..3 {
            let log = logs.path().join(format!("process-{i}.log"));
            processes.push(ServerProcess::start(free_port(), &args, &log).await);
        }
        Some(TestServer {
            running: None,
            processes,
            next: Default::default(),
            config,
            http: reqwest::Client::new(),
            data: Some(Arc::new(logs)),
        })
    }

    /// The server in this test process (panics for a deployment of OS processes).
    pub fn running(&self) -> &RunningServer {
        self.running.as_ref().expect("a server in the test process, not a deployment")
    }

    /// `(http_url, ws_url)` of the process the next client or request goes to (always the one server outside a
    /// deployment).
    fn pick(&self) -> (String, String) {
        if self.processes.is_empty() {
            let server = self.running();
            return (server.http_url(), server.ws_url());
        }
        let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % self.processes.len();
        (self.processes[i].http_url(), self.processes[i].ws_url())
    }

    /// Stops this server and starts a new one on the same address and store configuration (with the memory
    /// store everything is lost: new epochs; with SQLite everything is kept).
    /// A deployment stops every process (SIGTERM: a graceful drain) and starts each again on its port.
    pub async fn restart(self) -> Self {
        if !self.processes.is_empty() {
            let args = ServerProcess::args(&self.config);
            let mut restarted = Vec::new();
            for process in self.processes {
                let (port, log) = (process.port, process.log.clone());
                process.stop().await;
                restarted.push(ServerProcess::start(port, &args, &log).await);
            }
            return TestServer { processes: restarted, next: Default::default(), ..self };
        }
        let server = self.running.expect("a server");
        let addr = server.local_addr();
        let mut config = self.config.clone();
        server.shutdown().await;
        config.bind = addr;
        Self::start_config(config, self.data).await
    }

    pub fn ws_url(&self) -> String {
        self.pick().1
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
            .post(format!("{}/v1/publish", self.pick().0))
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
            .post(format!("{}/v1/admin/drop", self.pick().0))
            .bearer_auth(&self.config.api_key)
            .json(&json!({}))
            .send()
            .await
            .expect("HTTP request");
        assert!(resp.status().is_success(), "drop failed: {}", resp.status());
        resp.json::<Value>().await.unwrap()["dropped"].as_u64().unwrap()
    }

    /// `POST /v1/admin/unsubscribe`: ends `user`'s subscription of `stream` (in every process).
    pub async fn unsubscribe(&self, user: &str, stream: &str) {
        let resp = self
            .http
            .post(format!("{}/v1/admin/unsubscribe", self.pick().0))
            .bearer_auth(&self.config.api_key)
            .json(&json!({"user": user, "stream": stream}))
            .send()
            .await
            .expect("HTTP request");
        assert!(resp.status().is_success(), "unsubscribe failed: {}", resp.status());
    }

    /// `GET <path>` with the API key.
    pub async fn get(&self, path: &str) -> Value {
        let resp = self
            .http
            .get(format!("{}{}", self.pick().0, path))
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

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port()
}

/// One `tidings-server` OS process of a deployment, logging to a file; killed when dropped.
#[derive(Debug)]
pub struct ServerProcess {
    child: std::process::Child,
    port: u16,
    log: std::path::PathBuf,
}

impl ServerProcess {
    /// The server binary of this workspace (built with the workspace's tests; built here if it is missing).
    pub fn binary() -> std::path::PathBuf {
        let exe = std::env::current_exe().expect("the test binary's path");
        let dir = exe.parent().and_then(|deps| deps.parent()).expect("target/<profile>/deps/<test>");
        let bin = dir.join(format!("tidings-server{}", std::env::consts::EXE_SUFFIX));
        if !bin.is_file() {
            let status = std::process::Command::new(env!("CARGO"))
                .args(["build", "--locked", "-p", "tidings-server", "--bin", "tidings-server"])
                .status()
                .expect("cargo runs");
            assert!(status.success(), "building tidings-server failed");
        }
        bin
    }

    /// The flags that give a process `config` (the parts tests set: secrets, store, Redis, replay and push
    /// settings; rate limits off as in [`ServerConfig::for_tests`]).
    pub fn args(config: &ServerConfig) -> Vec<String> {
        let mut args: Vec<String> = Vec::new();
        // `--name=value`: a value may begin with `-` (a base64url key).
        let mut flag = |name: &str, value: String| args.push(format!("--{name}={value}"));
        flag("jwt-secret", config.jwt_secret.clone());
        flag("api-key", config.api_key.clone());
        flag("connection-burst", "0".into());
        flag("auth-failure-burst", "0".into());
        flag("heartbeat-ms", config.heartbeat_interval.as_millis().to_string());
        flag("replay-max-items", config.replay_max_items.to_string());
        flag("push-after-ms", config.push_policy.push_after.as_millis().to_string());
        flag("digest-window-secs", config.push_policy.digest_window.as_secs().to_string());
        match &config.store {
            StoreConfig::Postgres { url } => {
                flag("store", "postgres".into());
                flag("database-url", url.clone());
            }
            other => panic!("a deployment runs on PostgreSQL, not {other:?}"),
        }
        if let Some(redis) = &config.redis {
            flag("redis-url", redis.url.clone());
            flag("redis-prefix", redis.prefix.clone());
        }
        let push = &config.push;
        let path = |p: &std::path::Path| p.display().to_string();
        let optional = [
            ("vapid-public-key", config.vapid_public_key.clone()),
            ("vapid-private-key", push.vapid_private_key.clone()),
            ("vapid-subject", push.vapid_subject.clone()),
            ("apns-key-file", push.apns_key_file.as_deref().map(path)),
            ("apns-key-id", push.apns_key_id.clone()),
            ("apns-team-id", push.apns_team_id.clone()),
            ("apns-topic", push.apns_topic.clone()),
            ("apns-url", Some(push.apns_url.clone())),
            ("apns-sandbox-url", Some(push.apns_sandbox_url.clone())),
            ("fcm-service-account", push.fcm_service_account.as_deref().map(path)),
            ("fcm-url", Some(push.fcm_url.clone())),
            ("fcm-token-url", push.fcm_token_url.clone()),
            ("push-ca-file", push.push_ca_file.as_deref().map(path)),
        ];
        for (name, value) in optional {
            if let Some(value) = value {
                flag(name, value);
            }
        }
        args
    }

    /// Starts the binary on `127.0.0.1:port` with `args`, appending its output to `log`, and waits until
    /// `/readyz` answers 200.
    pub async fn start(port: u16, args: &[String], log: &std::path::Path) -> ServerProcess {
        let out = std::fs::OpenOptions::new().create(true).append(true).open(log).expect("the log file");
        let child = std::process::Command::new(Self::binary())
            .args(["--bind", &format!("127.0.0.1:{port}")])
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::from(out.try_clone().expect("the log file")))
            .stderr(std::process::Stdio::from(out))
            .spawn()
            .expect("the server binary starts");
        let mut process = ServerProcess { child, port, log: log.to_owned() };
        let http = reqwest::Client::builder().timeout(Duration::from_secs(3)).build().expect("an HTTP client");
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let ready = http.get(format!("{}/readyz", process.http_url())).send().await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                break;
            }
            if let Ok(Some(status)) = process.child.try_wait() {
                panic!("tidings-server exited with {status}:\n{}", process.output());
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "tidings-server did not become ready:\n{}",
                process.output()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        process
    }

    /// What it logged.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn http_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}/v1/ws", self.port)
    }

    /// SIGTERM (the server drains its connections and exits), then waits for the exit; killed after [`WAIT`].
    pub async fn stop(mut self) {
        let _ = std::process::Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = tokio::time::Instant::now() + WAIT;
        while matches!(self.child.try_wait(), Ok(None)) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
