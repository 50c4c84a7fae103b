//! Tidings reference server: the wire protocol v1 of `docs/protocol.md` over WebSocket, per-user and topic
//! streams with epochs, offsets and bounded replay buffers, presence, acks, and the publish/operator HTTP API.
//!
//! The binary (`tidings-server`) is a thin wrapper around this library; tests and benchmarks start servers
//! in-process:
//!
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! use tidings_server::{PublishRequest, ServerConfig, issue_token};
//!
//! let server = tidings_server::start(ServerConfig::for_tests()).await?;
//! let token = issue_token(tidings_server::TEST_JWT_SECRET, "alice", &["news"], None);
//! // … connect a client to server.ws_url() with `token` …
//! server.publisher().publish(PublishRequest::new("hello").user("alice").title("Hi")).await?;
//! server.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! # Layout
//! - [`model`]: what the server deals in (publications, deliveries, stream positions, acks, push addresses);
//!   depends on nothing else of the server.
//! - [`store`]: one interface per concern (stream history with idempotency keys, acks, devices) with memory and
//!   SQLite implementations.
//! - [`broker`]: publish/subscribe with history; publications come back through a handler (the node).
//! - `node`: the publish pipeline and what a process shares; `registry`: this process's connections and stream
//!   subscribers (fan-out); `presence`: who is online.
//! - `session`: the protocol session of one connection, sans-IO; `ws`: the WebSocket driver that moves its bytes;
//!   `outbox`: a connection's outbound queue.
//! - [`publish`](Publisher): request parsing and validation; `http`: the routes.
//! - [`config`](ServerConfig): configuration; [`auth`](issue_token): tokens; [`demo`]: the demo publisher and
//!   subscriber.

pub mod api_keys;
mod auth;
pub mod broker;
pub mod broker_redis;
mod config;
pub mod demo;
mod drive;
pub mod health;
mod http;
mod http_inbox;
mod http_push;
mod id_ring;
mod inboxes;
pub mod limits;
pub mod metrics;
pub mod model;
mod node;
mod openapi;
mod outbox;
pub mod planner;
mod presence;
mod publish;
pub mod push;
mod registry;
mod routing;
mod session;
mod sse;
pub mod store;
pub mod tls;
mod util;
mod webpush;
mod ws;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::Context as _;
use axum::serve::ListenerExt;
use tidings_core::protocol::ErrorCode;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::{info, warn};

pub use auth::{TokenClaims, issue_token, sign_claims};
pub use config::{
    DEFAULT_DATA_DIR, DEMO_API_KEY, DEMO_JWT_SECRET, MAX_DIGEST_WINDOW, MAX_PUSH_AFTER, ServerConfig, StoreConfig,
    Synchronous, TEST_API_KEY, TEST_JWT_SECRET, WallClock,
};
pub use node::ServerStats;
pub use presence::{DevicePresence, UserPresence};
pub use publish::{
    Delivery, MAX_BATCH, MAX_RECIPIENTS, PublishError, PublishErrorKind, PublishReceipt, PublishRequest, Publisher,
    PushOptions, parse_batch,
};
pub use store::{MemoryStore, PostgresStore, SqliteStore, StoreLimits, Stores};

use broker::LocalBroker;
use node::Node;

/// Starts a server with the stores its configuration names ([`ServerConfig::store`]) and returns once it accepts
/// connections. A store that cannot be opened is an error whose message names the file and the fix.
pub async fn start(config: ServerConfig) -> anyhow::Result<RunningServer> {
    config.validate().map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
    let limits = StoreLimits::from_config(&config);
    let stores = match &config.store {
        StoreConfig::Memory => Stores::memory(MemoryStore::new(limits)),
        StoreConfig::Sqlite { data_dir, synchronous } => {
            let store = SqliteStore::open(data_dir, *synchronous, limits, Arc::new(util::now_ms))?;
            Stores::sqlite(store)
        }
        StoreConfig::Postgres { url } => {
            let store = store::PostgresStore::open(url, limits, Arc::new(util::now_ms)).await?;
            Stores::postgres(store)
        }
    };
    start_with_stores(config, stores).await
}

/// Makes sure rustls has a process-wide crypto provider: unless one is installed already, the one rustls' crate
/// features name — ring, the only provider this workspace enables — which rustls installs on the first
/// `ClientConfig::builder()`. The push senders, reqwest (linked with rustls and no provider of its own) and the
/// core's `wss` client all use the process's provider; [`start`] calls this.
pub fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if rustls::crypto::CryptoProvider::get_default().is_none() {
            let _ = rustls::ClientConfig::builder();
        }
    });
}

/// Starts a server on the given stores and returns once it accepts connections: with the single-process broker,
/// or the Redis broker when [`ServerConfig::redis`] is set (then Redis must be reachable now).
pub async fn start_with_stores(config: ServerConfig, stores: Stores) -> anyhow::Result<RunningServer> {
    install_crypto_provider();
    config.validate().map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
    let listener = tokio::net::TcpListener::bind(config.bind)
        .await
        .with_context(|| format!("cannot listen on {}", config.bind))?;
    let local_addr = listener.local_addr().context("cannot read the listening address")?;
    let cluster = match &config.redis {
        Some(redis) => Some(broker_redis::RedisBroker::connect(redis.clone(), stores.streams.clone()).await?),
        None => None,
    };
    let broker: Arc<dyn broker::Broker> = match &cluster {
        Some(cluster) => cluster.clone(),
        None => Arc::new(LocalBroker::new(stores.streams.clone())),
    };
    let metrics = Arc::new(metrics::Metrics::new());
    let tls = config.tls.clone();
    let node = Node::new(config, stores, broker, metrics.clone(), cluster.clone());
    if let Some(cluster) = &cluster {
        node.add_readiness_check(cluster.readiness_check());
        metrics.observe_redis(cluster);
    }
    let app = http::router(node.clone()).into_make_service_with_connect_info::<SocketAddr>();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let stopped = async move {
        let _ = stop_rx.await;
    };
    let serve = match tls {
        Some(tls) => {
            let listener = tls::TlsListener::start(listener, &tls, metrics).map_err(|e| anyhow::anyhow!(e))?;
            // `tap_io` (a no-op here) gives the listener axum's `ConnectInfo<SocketAddr>`.
            let serving = axum::serve(listener.tap_io(|_| {}), app).with_graceful_shutdown(stopped);
            tokio::spawn(async move { report(serving.await) })
        }
        None => {
            // Frames are batched by the connection tasks and flushed once per batch; Nagle would only add latency.
            let listener = listener.tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            });
            let serving = axum::serve(listener, app).with_graceful_shutdown(stopped);
            tokio::spawn(async move { report(serving.await) })
        }
    };
    let retention = inboxes::spawn_retention(Arc::downgrade(&node));
    let push_worker = node.routing.dispatcher.is_some().then(|| tokio::spawn(routing::run_worker(node.clone())));
    let mut server = RunningServer {
        node: node.clone(),
        local_addr,
        serve: Some(serve),
        stop: Some(stop_tx),
        demo: None,
        retention: Some(retention),
        push_worker,
    };
    server.demo = (node.config.demo && node.config.demo_publisher).then(|| {
        tokio::spawn(demo::run_demo(demo::DemoContext {
            publisher: server.publisher(),
            ws_url: server.ws_url(),
            http_url: server.http_url(),
            jwt_secret: node.config.jwt_secret.clone(),
            interval: node.config.demo_publish_interval,
        }))
    });
    info!(address = %local_addr, demo = node.config.demo, "tidings server listening");
    Ok(server)
}

fn report(result: std::io::Result<()>) {
    if let Err(e) = result {
        warn!(error = %e, "the HTTP server failed");
    }
}

/// A running server. Stop it with [`RunningServer::shutdown`]; dropping it stops it abruptly.
pub struct RunningServer {
    node: Arc<Node>,
    local_addr: SocketAddr,
    serve: Option<JoinHandle<()>>,
    stop: Option<oneshot::Sender<()>>,
    demo: Option<JoinHandle<()>>,
    retention: Option<JoinHandle<()>>,
    push_worker: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for RunningServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningServer").field("local_addr", &self.local_addr).finish_non_exhaustive()
    }
}

impl RunningServer {
    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The WebSocket URL, `ws://ADDR/v1/ws` (`wss://` with TLS).
    pub fn ws_url(&self) -> String {
        let scheme = if self.node.config.tls.is_some() { "wss" } else { "ws" };
        format!("{scheme}://{}/v1/ws", self.local_addr)
    }

    /// The HTTP base URL, `http://ADDR` (`https://` with TLS).
    pub fn http_url(&self) -> String {
        let scheme = if self.node.config.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.local_addr)
    }

    /// The server's configuration.
    pub fn config(&self) -> &ServerConfig {
        &self.node.config
    }

    /// An in-process publishing handle (the path `POST /v1/publish` takes after parsing).
    pub fn publisher(&self) -> Publisher {
        Publisher::new(self.node.clone())
    }

    /// A snapshot of the server's counters.
    pub fn stats(&self) -> ServerStats {
        self.node.stats()
    }

    /// Adds a dependency `GET /readyz` checks (a Redis or PostgreSQL connection).
    pub fn add_readiness_check(&self, check: Arc<dyn health::ReadinessCheck>) {
        self.node.add_readiness_check(check);
    }

    /// The push dispatcher of the configured providers, if any.
    pub fn push_dispatcher(&self) -> Option<&Arc<push::Dispatcher>> {
        self.node.routing.dispatcher.as_ref()
    }

    /// The server's metrics (what `GET /metrics` renders).
    pub fn metrics(&self) -> &metrics::Metrics {
        &self.node.metrics
    }

    /// Drops every connection (or `user`'s) with `error dropped` + close `4015`, as `POST /v1/admin/drop` does;
    /// returns how many were asked to close. With Redis, the other processes drop theirs too and the count is the
    /// sum of the processes that answered within 2 s.
    pub async fn drop_connections(&self, user: Option<&str>) -> u64 {
        self.node.drop_everywhere(user).await.count
    }

    /// Who is online now in this process.
    pub fn presence(&self) -> Vec<UserPresence> {
        self.node.presence.all()
    }

    /// Who is online now, as `GET /v1/presence` answers: in every process when Redis is configured.
    pub async fn presence_everywhere(&self) -> Result<Vec<UserPresence>, store::StoreError> {
        self.node.presence_all().await
    }

    /// The Redis broker, when [`ServerConfig::redis`] is set.
    pub fn redis_broker(&self) -> Option<&Arc<broker_redis::RedisBroker>> {
        self.node.cluster.as_ref()
    }

    /// Graceful shutdown: stops accepting connections, sends `error` `server_shutdown` and close `4012` to every
    /// client, waits for the connections to end (cutting them after `shutdown_grace`), stops the demo and the
    /// HTTP server. No task of the server outlives the returned future.
    pub async fn shutdown(mut self) {
        let node = self.node.clone();
        node.shutting_down.store(true, Ordering::SeqCst);
        if let Some(demo) = self.demo.take() {
            demo.abort();
            let _ = demo.await;
        }
        if let Some(retention) = self.retention.take() {
            retention.abort();
            let _ = retention.await;
        }
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let asked = node.registry.close_all(ErrorCode::ServerShutdown, "the server is shutting down");
        info!(connections = asked, "shutting down");
        let grace = node.config.shutdown_grace;
        if tokio::time::timeout(grace, node.registry.wait_empty()).await.is_err() {
            warn!(
                open = node.registry.connection_count(),
                "connections still open after the grace period; cutting them"
            );
            node.hard_stop.send_replace(true);
            node.registry.wait_empty().await;
        }
        if let Some(mut serve) = self.serve.take()
            && tokio::time::timeout(grace, &mut serve).await.is_err()
        {
            warn!("HTTP requests still running after the grace period; aborting them");
            serve.abort();
            let _ = serve.await;
        }
        node.routing.stop();
        if let Some(mut worker) = self.push_worker.take()
            && tokio::time::timeout(grace, &mut worker).await.is_err()
        {
            // Pushes still being sent stay claimed; the next start sends them (at least once).
            warn!("pushes still being sent after the grace period; they are sent again at the next start");
            worker.abort();
            let _ = worker.await;
        }
        if let Some(cluster) = &node.cluster {
            cluster.stop();
        }
        node.stores.streams.close().await;
        info!("shutdown complete");
    }
}

impl Drop for RunningServer {
    /// Without [`RunningServer::shutdown`]: stops everything at once, without close frames.
    fn drop(&mut self) {
        if self.serve.is_none() {
            return;
        }
        self.node.shutting_down.store(true, Ordering::SeqCst);
        self.node.hard_stop.send_replace(true);
        if let Some(demo) = self.demo.take() {
            demo.abort();
        }
        if let Some(retention) = self.retention.take() {
            retention.abort();
        }
        if let Some(worker) = self.push_worker.take() {
            worker.abort();
        }
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(serve) = self.serve.take() {
            serve.abort();
        }
        if let Some(cluster) = &self.node.cluster {
            cluster.stop();
        }
    }
}
