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
//! - [`config`](ServerConfig): configuration; [`auth`](issue_token): tokens.
//! - `connection`: one task per WebSocket (reading, writing, timers); `outbox`: its outbound queue.
//! - `registry`: the per-stream fan-out registry and lock; `replay`: the §5.4 decision.
//! - [`storage`]: the [`Storage`] trait and [`MemoryStorage`].
//! - [`publish`](Publisher): validation and the publish path; `http`: the routes; `presence`: who is online.
//! - [`demo`]: the demo publisher (and the hook for a demo subscriber).

mod auth;
mod config;
mod connection;
pub mod demo;
mod http;
mod hub;
mod outbox;
pub mod planner;
mod presence;
mod publish;
pub mod push;
mod registry;
mod replay;
pub mod storage;
mod util;
mod webpush;

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
pub use config::{DEMO_API_KEY, DEMO_JWT_SECRET, ServerConfig, TEST_API_KEY, TEST_JWT_SECRET};
pub use hub::ServerStats;
pub use presence::{DevicePresence, UserPresence};
pub use publish::{
    Delivery, MAX_BATCH, MAX_RECIPIENTS, PublishError, PublishErrorKind, PublishReceipt, PublishRequest, Publisher,
    parse_batch,
};
pub use storage::{MemoryStorage, Storage, StorageLimits};

use hub::Hub;

/// Starts a server with in-memory storage ([`MemoryStorage`]) and returns once it accepts connections.
pub async fn start(config: ServerConfig) -> anyhow::Result<RunningServer> {
    let storage = Arc::new(MemoryStorage::new(StorageLimits::from_config(&config)));
    start_with_storage(config, storage).await
}

/// Installs ring as rustls' process-wide crypto provider unless one is installed already (as the core's native
/// driver does for `wss:`). The push senders choose ring explicitly, but they link reqwest with rustls and no
/// default provider, so any other `reqwest::Client` in the process (tests, tools) needs a process default:
/// [`start`] installs it.
pub fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// Starts a server on the given storage backend and returns once it accepts connections.
pub async fn start_with_storage(config: ServerConfig, storage: Arc<dyn Storage>) -> anyhow::Result<RunningServer> {
    install_crypto_provider();
    config.validate().map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
    let listener = tokio::net::TcpListener::bind(config.bind)
        .await
        .with_context(|| format!("cannot listen on {}", config.bind))?;
    let local_addr = listener.local_addr().context("cannot read the listening address")?;
    let hub = Arc::new(Hub::new(config, storage));
    let app = http::router(hub.clone());
    // Frames are batched by the connection tasks and flushed once per batch; Nagle would only add latency.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let serve = tokio::spawn(async move {
        let result = axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
            .with_graceful_shutdown(async move {
                let _ = stop_rx.await;
            })
            .await;
        if let Err(e) = result {
            warn!(error = %e, "the HTTP server failed");
        }
    });
    let mut server =
        RunningServer { hub: hub.clone(), local_addr, serve: Some(serve), stop: Some(stop_tx), demo: None };
    server.demo = hub.config.demo.then(|| {
        tokio::spawn(demo::run_demo(demo::DemoContext {
            publisher: server.publisher(),
            ws_url: server.ws_url(),
            http_url: server.http_url(),
            jwt_secret: hub.config.jwt_secret.clone(),
            interval: hub.config.demo_publish_interval,
        }))
    });
    info!(address = %local_addr, demo = hub.config.demo, "tidings server listening");
    Ok(server)
}

/// A running server. Stop it with [`RunningServer::shutdown`]; dropping it stops it abruptly.
pub struct RunningServer {
    hub: Arc<Hub>,
    local_addr: SocketAddr,
    serve: Option<JoinHandle<()>>,
    stop: Option<oneshot::Sender<()>>,
    demo: Option<JoinHandle<()>>,
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

    /// The WebSocket URL, `ws://ADDR/v1/ws`.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/v1/ws", self.local_addr)
    }

    /// The HTTP base URL, `http://ADDR`.
    pub fn http_url(&self) -> String {
        format!("http://{}", self.local_addr)
    }

    /// The server's configuration.
    pub fn config(&self) -> &ServerConfig {
        &self.hub.config
    }

    /// An in-process publishing handle (the path `POST /v1/publish` takes after parsing).
    pub fn publisher(&self) -> Publisher {
        Publisher::new(self.hub.clone())
    }

    /// A snapshot of the server's counters.
    pub fn stats(&self) -> ServerStats {
        self.hub.stats()
    }

    /// Drops every connection (or `user`'s) with `error dropped` + close `4015`, as `POST /v1/admin/drop` does;
    /// returns how many were asked to close.
    pub fn drop_connections(&self, user: Option<&str>) -> usize {
        let message = "dropped by an operator";
        match user {
            Some(user) => {
                self.hub.presence.connections_of(user).iter().filter(|c| c.close(ErrorCode::Dropped, message)).count()
            }
            None => self.hub.connections.close_all(ErrorCode::Dropped, message),
        }
    }

    /// Who is online now (as `GET /v1/presence`).
    pub fn presence(&self) -> Vec<UserPresence> {
        self.hub.presence.all()
    }

    /// Graceful shutdown: stops accepting connections, sends `error` `server_shutdown` and close `4012` to every
    /// client, waits for the connections to end (cutting them after `shutdown_grace`), stops the demo and the
    /// HTTP server. No task of the server outlives the returned future.
    pub async fn shutdown(mut self) {
        let hub = self.hub.clone();
        hub.shutting_down.store(true, Ordering::SeqCst);
        if let Some(demo) = self.demo.take() {
            demo.abort();
            let _ = demo.await;
        }
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let asked = hub.connections.close_all(ErrorCode::ServerShutdown, "the server is shutting down");
        info!(connections = asked, "shutting down");
        let grace = hub.config.shutdown_grace;
        if tokio::time::timeout(grace, hub.connections.wait_empty()).await.is_err() {
            warn!(open = hub.connections.len(), "connections still open after the grace period; cutting them");
            hub.hard_stop.send_replace(true);
            hub.connections.wait_empty().await;
        }
        if let Some(mut serve) = self.serve.take()
            && tokio::time::timeout(grace, &mut serve).await.is_err()
        {
            warn!("HTTP requests still running after the grace period; aborting them");
            serve.abort();
            let _ = serve.await;
        }
        info!("shutdown complete");
    }
}

impl Drop for RunningServer {
    /// Without [`RunningServer::shutdown`]: stops everything at once, without close frames.
    fn drop(&mut self) {
        if self.serve.is_none() {
            return;
        }
        self.hub.shutting_down.store(true, Ordering::SeqCst);
        self.hub.hard_stop.send_replace(true);
        if let Some(demo) = self.demo.take() {
            demo.abort();
        }
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(serve) = self.serve.take() {
            serve.abort();
        }
    }
}
