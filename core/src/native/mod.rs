//! The native driver: the engine on tokio + tokio-tungstenite (rustls for `wss`).
//!
//! One task per client owns the socket and runs the engine's timers; the engine itself sits behind a mutex so
//! that synchronous calls (`ingest_push` from a push handler, `subscribe`) take effect at once. Events reach
//! the application through a bounded channel ([`Events`]); when the application stops reading, the driver stops
//! reading the socket (TCP backpressure) rather than buffering without limit.
//!
//! ```no_run
//! # async fn demo() -> Result<(), tidings_core::native::ClientError> {
//! use tidings_core::native::{Client, ClientConfig, StaticToken};
//! let (client, mut events) = Client::builder(ClientConfig::new("ws://127.0.0.1:8080/v1/ws"))
//!     .token_provider(StaticToken::new("eyJ..."))
//!     .connect()?;
//! client.subscribe("topic:news")?;
//! while let Some(event) = events.next().await {
//!     println!("{event:?}");
//! }
//! client.close().await;
//! # Ok(()) }
//! ```
//!
//! `wss` runs on rustls with the process-wide `CryptoProvider`: the one the application installed, else ring
//! (the only provider this crate enables; rustls installs it on first use). An application whose dependencies
//! enable another provider too (aws-lc-rs) installs one itself at start, as rustls requires of every program
//! that links two: `rustls::crypto::CryptoProvider::install_default`.

mod file_store;
mod http;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub use file_store::FileStore;

use crate::engine::{
    Action, ConnId, ConnectionState, Cursor, Engine, EngineError, Event, Lifecycle, NetworkEvent, Output, PushOutcome,
    Reply, RequestError, RequestId, Stats, TokenError, TransportFailure,
};
use crate::protocol::api::{self, ApiError, ApiRequest, PreferenceRule, Preferences, QuietHours, QuietHoursSettings};
use crate::protocol::{
    HistoryPage, InboxAction, InboxCounts, InboxItem, InboxPage, InboxQuery, InboxUpdate, MarkAllAction, SUBPROTOCOL,
};
use crate::store::{Store, StoreError};
use crate::time::Instant;

/// 64 bits from the OS's entropy source (the clock and the process id if there is none).
fn os_seed() -> u64 {
    getrandom::u64().unwrap_or_else(|_| {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        t.as_nanos() as u64 ^ u64::from(std::process::id()).rotate_left(32)
    })
}

/// Where a push handler that runs no [`Client`] reaches the server: to fetch a notification a push was too large
/// to carry, and to ack what it showed (`POST /v1/me/acks`: the server stops pushing it to the user's other
/// devices).
#[derive(Clone, Debug)]
pub struct PushServer {
    /// The server's WebSocket URL (as in [`ClientConfig::new`]) or its HTTP base URL.
    pub url: String,
    /// A token of the user.
    pub token: String,
    /// Certificate authorities trusted besides the public roots (PEM), as [`ClientConfig::extra_root_certificates`].
    pub extra_root_certificates: Vec<String>,
}

/// The HTTP base URL of `url` (a WebSocket URL, or already an HTTP one).
fn http_base(url: &str) -> Option<String> {
    if url.starts_with("http://") || url.starts_with("https://") {
        return Some(url.trim_end_matches('/').to_owned());
    }
    api::api_base(url)
}

/// The push path of a process that runs no [`Client`] (an iOS Notification Service Extension, an Android push
/// service started without the app): passes `payload` through the dedup window kept in `store` — the store the
/// app's client uses — and saves the seen ids back before returning (the handler may be killed right after). A
/// store that cannot be read (missing, corrupt) counts as empty. A lightweight push is fetched from `server`
/// (shown as its title when that fails or there is no server); what is shown is acked there. Opens no
/// WebSocket and starts no task. See [`crate::engine::ingest_push_without_client`].
pub async fn ingest_push_with_store(
    store: &dyn Store,
    payload: &str,
    dedup_capacity: usize,
    server: Option<&PushServer>,
) -> Result<PushOutcome, ClientError> {
    let payload = crate::protocol::decode_push(payload).map_err(EngineError::from)?;
    let stored = load_for_push(store);
    let mut config = crate::engine::Config::new("");
    config.dedup_capacity = dedup_capacity;
    let now = Instant::ZERO;
    let (mut outcome, mut seen) =
        crate::engine::ingest_push_without_client(config.clone(), os_seed(), stored.as_ref(), now, payload)?;
    store.save(&seen)?;
    let access = match server {
        Some(s) => {
            let base = http_base(&s.url).ok_or_else(|| ClientError::Config(format!("server url {:?}", s.url)))?;
            Some((base, s.token.clone(), http_tls(&s.extra_root_certificates)?))
        }
        None => None,
    };
    if let PushOutcome::Fetch { id, title } = &outcome {
        let fetched = match &access {
            Some((base, token, tls)) => fetch_one(base, token, tls, id).await.map_err(|e| e.to_string()),
            None => Err("no server to fetch it from".to_owned()),
        };
        // The store again: the app may have seen it meanwhile.
        let stored = load_for_push(store);
        (outcome, seen) = crate::engine::complete_push_fetch_without_client(
            config,
            os_seed(),
            stored.as_ref(),
            now,
            id,
            title.clone(),
            fetched,
        );
        store.save(&seen)?;
    }
    if let (Some((base, token, tls)), Some(device)) = (&access, stored.as_ref().and_then(|s| s.device_id.clone())) {
        let ids = outcome.ids();
        if !ids.is_empty() {
            let request = api::post_acks(&device, &ids);
            match http::send(base, &request, token, tls).await.and_then(|r| api::parse_acks(r.status, &r.body)) {
                Ok(()) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "push handler: acks not sent (the app's client acks on its next connection)")
                }
            }
        }
    }
    Ok(outcome)
}

fn load_for_push(store: &dyn Store) -> Option<crate::engine::Snapshot> {
    match store.load() {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "push handler: stored state unreadable, starting from an empty dedup window");
            None
        }
    }
}

async fn fetch_one(
    base: &str,
    token: &str,
    tls: &Arc<rustls::ClientConfig>,
    id: &str,
) -> Result<crate::protocol::Notification, ApiError> {
    let r = http::send(base, &api::fetch_notification(id), token, tls).await?;
    api::parse_notification(r.status, &r.body, id)
}

/// A boxed, sendable future.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Supplies tokens. Called when the engine needs one: at the first connect, after the server rejected a token
/// (`force_refresh = true`: a cached token will not do), and shortly before a known expiry. The engine never
/// has two requests outstanding.
pub trait TokenProvider: Send + Sync + 'static {
    /// A token for the current user.
    fn token(&self, force_refresh: bool) -> BoxFuture<'static, Result<String, TokenError>>;
}

impl<F, Fut> TokenProvider for F
where
    F: Fn(bool) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<String, TokenError>> + Send + 'static,
{
    fn token(&self, force_refresh: bool) -> BoxFuture<'static, Result<String, TokenError>> {
        Box::pin(self(force_refresh))
    }
}

/// A fixed token (tests, demos, long-lived service tokens).
#[derive(Debug, Clone)]
pub struct StaticToken(String);

impl StaticToken {
    /// This token, always.
    pub fn new(token: impl Into<String>) -> Self {
        StaticToken(token.into())
    }
}

impl TokenProvider for StaticToken {
    fn token(&self, _force_refresh: bool) -> BoxFuture<'static, Result<String, TokenError>> {
        let t = self.0.clone();
        Box::pin(async move { Ok(t) })
    }
}

/// Driver configuration: the engine's plus socket settings.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Engine behaviour (URL, backoff, batching, dedup, …).
    pub engine: crate::engine::Config,
    /// Events buffered for the application before the driver stops reading the socket.
    pub event_capacity: usize,
    /// tungstenite read buffer per connection.
    pub read_buffer_size: usize,
    /// Largest message accepted from the server.
    pub max_message_size: usize,
    /// Seed for the engine's randomness; `None` draws one from the OS.
    pub seed: Option<u64>,
    /// Certificate authorities trusted for `wss://` besides the usual public roots (Mozilla's, from
    /// `webpki-roots`): PEM text, each holding one or more certificates — for a server behind a private CA.
    pub extra_root_certificates: Vec<String>,
}

impl ClientConfig {
    /// Defaults for a server at `url` (`ws://…/v1/ws` or `wss://…/v1/ws`).
    pub fn new(url: impl Into<String>) -> Self {
        ClientConfig {
            engine: crate::engine::Config::new(url),
            event_capacity: 1024,
            read_buffer_size: 32 * 1024,
            max_message_size: 2 * crate::protocol::MAX_SERVER_FRAME_BYTES,
            seed: None,
            extra_root_certificates: Vec::new(),
        }
    }
}

/// Errors of the client API.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// An argument was invalid (e.g. a stream name).
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// `connect` was called outside a tokio runtime.
    #[error("Client::connect must be called within a tokio runtime")]
    NoRuntime,
    /// The client was closed.
    #[error("the client is closed")]
    Closed,
    /// Waiting for a state timed out.
    #[error("timed out waiting for the connection state")]
    Timeout,
    /// The configuration is unusable (the message says which setting and why).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A request (inbox, history) got no answer: refused by the server, timed out, or the client closed.
    #[error(transparent)]
    Request(#[from] RequestError),
    /// A call to the server's HTTP API failed.
    #[error(transparent)]
    Api(#[from] ApiError),
}

/// Builds a [`Client`].
#[must_use]
pub struct ClientBuilder {
    config: ClientConfig,
    tokens: Option<Arc<dyn TokenProvider>>,
    store: Option<Arc<dyn Store>>,
}

impl std::fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientBuilder").field("config", &self.config).field("store", &self.store).finish()
    }
}

impl ClientBuilder {
    /// The token provider (required).
    pub fn token_provider(mut self, tokens: impl TokenProvider) -> Self {
        self.tokens = Some(Arc::new(tokens));
        self
    }

    /// A shared token provider.
    pub fn token_provider_arc(mut self, tokens: Arc<dyn TokenProvider>) -> Self {
        self.tokens = Some(tokens);
        self
    }

    /// Where cursors and seen ids are kept across restarts (default: nowhere).
    pub fn store(mut self, store: Arc<dyn Store>) -> Self {
        self.store = Some(store);
        self
    }

    /// Starts the client: restores the store, spawns the driver task and begins connecting.
    pub fn connect(self) -> Result<(Client, Events), ClientError> {
        let (client, events) = self.build()?;
        client.connect();
        Ok((client, events))
    }

    /// Like [`ClientBuilder::connect`], but the client stays idle until [`Client::connect`].
    pub fn build(self) -> Result<(Client, Events), ClientError> {
        let tokens = self.tokens.unwrap_or_else(|| Arc::new(StaticToken::new("")));
        Client::start(self.config, tokens, self.store)
    }
}

/// Application events: notifications, digests, state changes, continuity. A `Stream`.
#[derive(Debug)]
pub struct Events {
    /// Events come from the driver in batches (one channel operation per batch, not per event).
    rx: mpsc::UnboundedReceiver<Vec<Event>>,
    batch: std::vec::IntoIter<Event>,
    flow: Arc<EventFlow>,
}

/// Backpressure between the driver and [`Events`]: the number of events sent and not yet received, bounded by
/// `ClientConfig::event_capacity` (the driver stops reading the socket while the application lags that far).
#[derive(Debug, Default)]
struct EventFlow {
    queued: AtomicUsize,
    received: Notify,
}

impl Drop for Events {
    fn drop(&mut self) {
        // A driver waiting for room must notice that nobody reads any more.
        self.rx.close();
        self.flow.received.notify_one();
    }
}

/// Text handled under one engine lock before the events are handed to the app (see `Driver::on_message`).
const MESSAGE_BATCH_BYTES: usize = 32 * 1024;

/// Up to this many events in a turn, the driver lets the app's task run before it writes (see `Driver::run`).
const FEW_EVENTS: usize = 4;

/// Most events in one batch handed from the driver to [`Events`].
const EVENT_BATCH: usize = 64;

impl Events {
    /// The next event; `None` once the client is closed and every event was read.
    pub async fn next(&mut self) -> Option<Event> {
        std::future::poll_fn(|cx| self.poll_event(cx)).await
    }

    /// An event if one is ready.
    pub fn try_next(&mut self) -> Option<Event> {
        loop {
            if let Some(e) = self.batch.next() {
                return Some(e);
            }
            let batch = self.rx.try_recv().ok()?;
            self.received(batch.len());
            self.batch = batch.into_iter();
        }
    }

    fn received(&self, n: usize) {
        self.flow.queued.fetch_sub(n, Ordering::AcqRel);
        self.flow.received.notify_one();
    }

    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        loop {
            if let Some(e) = self.batch.next() {
                return Poll::Ready(Some(e));
            }
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some(batch)) => {
                    self.received(batch.len());
                    self.batch = batch.into_iter();
                }
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl futures_util::Stream for Events {
    type Item = Event;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.poll_event(cx)
    }
}

/// Monotonic clock mapped onto engine [`Instant`]s.
#[derive(Debug, Clone, Copy)]
struct Clock {
    origin: tokio::time::Instant,
}

impl Clock {
    fn now(&self) -> Instant {
        Instant::from_millis(u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX))
    }
    fn deadline(&self, t: Instant) -> tokio::time::Instant {
        self.origin + Duration::from_millis(t.as_millis())
    }
}

struct Shared {
    engine: Mutex<Engine>,
    wake: Notify,
    clock: Clock,
    store: Option<Arc<dyn Store>>,
    shutdown: AtomicBool,
    state: watch::Sender<ConnectionState>,
    /// The inbox counts, updated as the engine reports newer ones.
    inbox: watch::Sender<Option<InboxCounts>>,
    /// Requests whose caller waits for the answer.
    replies: Mutex<std::collections::HashMap<RequestId, tokio::sync::oneshot::Sender<Result<Reply, RequestError>>>>,
    /// The token provider, for the HTTP API calls.
    tokens: Arc<dyn TokenProvider>,
    /// The server's HTTP base URL (from the WebSocket URL).
    api_base: Option<String>,
    /// TLS for the HTTP API (the same roots as `wss`).
    http_tls: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").field("api_base", &self.api_base).finish_non_exhaustive()
    }
}

impl Shared {
    fn engine(&self) -> MutexGuard<'_, Engine> {
        self.engine.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn save(&self, snapshot: &crate::engine::Snapshot) {
        if let Some(store) = &self.store
            && let Err(e) = store.save(snapshot)
        {
            tracing::warn!(error = %e, "saving client state failed");
        }
    }
}

/// A Tidings client. Cheap to share behind an `Arc`; [`Client::close`] ends it (dropping it aborts the
/// driver task).
#[derive(Debug)]
pub struct Client {
    shared: Arc<Shared>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Client {
    /// A builder for a client with this configuration.
    pub fn builder(config: ClientConfig) -> ClientBuilder {
        ClientBuilder { config, tokens: None, store: None }
    }

    fn start(
        config: ClientConfig,
        tokens: Arc<dyn TokenProvider>,
        store: Option<Arc<dyn Store>>,
    ) -> Result<(Client, Events), ClientError> {
        let handle = tokio::runtime::Handle::try_current().map_err(|_| ClientError::NoRuntime)?;
        let seed = config.seed.unwrap_or_else(os_seed);
        let tls = tls_config(&config.extra_root_certificates)?;
        let mut engine_config = config.engine.clone();
        engine_config.persistence = store.is_some();
        let mut engine = Engine::new(engine_config, seed);
        let clock = Clock { origin: tokio::time::Instant::now() };
        if let Some(store) = &store {
            match store.load() {
                Ok(Some(snapshot)) => engine.restore(clock.now(), &snapshot),
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "client state could not be loaded; starting fresh"),
            }
        }
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let flow = Arc::new(EventFlow::default());
        let (state_tx, _) = watch::channel(engine.state().clone());
        let (inbox_tx, _) = watch::channel(engine.inbox_counts());
        let shared = Arc::new(Shared {
            engine: Mutex::new(engine),
            wake: Notify::new(),
            clock,
            store,
            shutdown: AtomicBool::new(false),
            state: state_tx,
            inbox: inbox_tx,
            replies: Mutex::new(std::collections::HashMap::new()),
            tokens: tokens.clone(),
            api_base: api::api_base(&config.engine.url),
            http_tls: http_tls(&config.extra_root_certificates)?,
        });
        let driver = Driver {
            shared: shared.clone(),
            tokens,
            events: events_tx,
            flow: flow.clone(),
            config,
            tls,
            ws: None,
            out: Outputs::default(),
        };
        let task = handle.spawn(driver.run());
        let events = Events { rx: events_rx, batch: Vec::new().into_iter(), flow };
        Ok((Client { shared, task: Mutex::new(Some(task)) }, events))
    }

    /// The calls that change what the client does fail with [`ClientError::Closed`] after [`Client::close`].
    fn open_engine<T>(&self, f: impl FnOnce(&mut Engine, Instant) -> Result<T, EngineError>) -> Result<T, ClientError> {
        if self.shared.shutdown.load(Ordering::SeqCst) {
            return Err(ClientError::Closed);
        }
        self.with_engine(f).map_err(Into::into)
    }

    fn with_engine<T>(&self, f: impl FnOnce(&mut Engine, Instant) -> T) -> T {
        let now = self.shared.clock.now();
        let out = f(&mut self.shared.engine(), now);
        self.shared.wake.notify_one();
        out
    }

    /// The current connection state.
    pub fn state(&self) -> ConnectionState {
        self.shared.state.borrow().clone()
    }

    /// A receiver of state changes (latest value semantics).
    pub fn state_changes(&self) -> watch::Receiver<ConnectionState> {
        self.shared.state.subscribe()
    }

    /// Waits until `pred` holds for the connection state, or `timeout` passes.
    pub async fn wait_for_state(
        &self,
        timeout: Duration,
        pred: impl Fn(&ConnectionState) -> bool,
    ) -> Result<ConnectionState, ClientError> {
        let mut rx = self.state_changes();
        let wait = async {
            loop {
                {
                    let s = rx.borrow_and_update();
                    if pred(&s) {
                        return Ok(s.clone());
                    }
                }
                if rx.changed().await.is_err() {
                    return Err(ClientError::Closed);
                }
            }
        };
        tokio::time::timeout(timeout, wait).await.map_err(|_| ClientError::Timeout)?
    }

    /// Subscribes to `topic:<name>` (or another stream); resumes from its cursor on every reconnect.
    pub fn subscribe(&self, stream: &str) -> Result<(), ClientError> {
        self.open_engine(|e, now| e.subscribe(now, stream))
    }

    /// Unsubscribes and forgets the stream's cursor.
    pub fn unsubscribe(&self, stream: &str) -> Result<(), ClientError> {
        self.open_engine(|e, now| e.unsubscribe(now, stream))
    }

    /// Acks notifications (only needed with `auto_ack` off).
    pub fn ack(&self, ids: &[&str]) -> Result<(), ClientError> {
        self.open_engine(|e, now| e.ack(now, ids))
    }

    /// Registers this device's push address (APNs device token, FCM registration token, or Web Push
    /// subscription JSON) with the server; re-sent on every connection, kept in the store.
    pub fn register_push(&self, platform: crate::engine::PushPlatform, token: &str) -> Result<(), ClientError> {
        self.open_engine(|e, now| e.register_push(now, platform, token))
    }

    /// Passes a push payload (APNs/FCM/Web Push, any form of protocol §11.1) through the shared dedup window and
    /// says what to show: the notification, nothing (a duplicate), a summary, or — when the push was too large to
    /// carry the notification and fetching it from the server failed — its title. A lightweight push is fetched
    /// with the user's token before this returns. What is shown is acked (once connected). The state is saved
    /// before this returns, so a push handler may be killed right after.
    pub async fn ingest_push(&self, payload: &str) -> Result<PushOutcome, ClientError> {
        // A closed client says so before it looks at the payload.
        if self.shared.shutdown.load(Ordering::SeqCst) {
            return Err(ClientError::Closed);
        }
        let payload = crate::protocol::decode_push(payload).map_err(EngineError::from)?;
        let outcome = self.push_step(|e, now| e.ingest_push_payload(now, payload))?;
        let PushOutcome::Fetch { id, title } = outcome else { return Ok(outcome) };
        let fetched = self
            .call(&api::fetch_notification(&id), |status, body| api::parse_notification(status, body, &id))
            .await
            .map_err(|e| e.to_string());
        self.push_step(|e, now| Ok(e.complete_push_fetch(now, &id, title, fetched)))
    }

    /// Runs a push input on the engine and saves the state before returning.
    fn push_step(
        &self,
        f: impl FnOnce(&mut Engine, Instant) -> Result<PushOutcome, EngineError>,
    ) -> Result<PushOutcome, ClientError> {
        if self.shared.shutdown.load(Ordering::SeqCst) {
            return Err(ClientError::Closed);
        }
        let now = self.shared.clock.now();
        let (outcome, snapshot) = {
            let mut engine = self.shared.engine();
            let outcome = f(&mut engine, now)?;
            let snapshot = self.shared.store.as_ref().map(|_| engine.snapshot());
            (outcome, snapshot)
        };
        if let (Some(store), Some(snapshot)) = (&self.shared.store, snapshot) {
            store.save(&snapshot)?;
        }
        self.shared.wake.notify_one();
        Ok(outcome)
    }

    /// Sends an HTTP API request with the user's token (the one the client holds, else the provider's; once more
    /// with a fresh one if the server refuses it) and parses the answer.
    async fn call<T>(
        &self,
        request: &ApiRequest,
        parse: impl Fn(u16, &str) -> Result<T, ApiError>,
    ) -> Result<T, ClientError> {
        let base = self
            .shared
            .api_base
            .clone()
            .ok_or_else(|| ClientError::Config("the server URL must be ws:// or wss://".into()))?;
        let held = self.shared.engine().current_token().map(str::to_owned);
        let mut fresh = false;
        let mut token = match held {
            Some(t) => t,
            None => {
                fresh = true;
                self.token(false).await?
            }
        };
        loop {
            let r = http::send(&base, request, &token, &self.shared.http_tls).await?;
            match parse(r.status, &r.body) {
                Err(ApiError::Unauthorized { .. }) if !fresh => {
                    fresh = true;
                    token = self.token(true).await?;
                }
                other => return other.map_err(Into::into),
            }
        }
    }

    async fn token(&self, force_refresh: bool) -> Result<String, ClientError> {
        self.shared
            .tokens
            .token(force_refresh)
            .await
            .map_err(|e| ClientError::Api(ApiError::Unauthorized { code: "token_provider".into(), message: e.message }))
    }

    /// The user's preferences (protocol §9.5).
    pub async fn preferences(&self) -> Result<Preferences, ClientError> {
        self.call(&api::get_preferences(), api::parse_preferences).await
    }

    /// Replaces every preference rule of the user with `rules`; returns the result.
    pub async fn set_preferences(&self, rules: &[PreferenceRule]) -> Result<Preferences, ClientError> {
        self.call(&api::replace_preferences(rules), api::parse_preferences).await
    }

    /// Adds `rules`, each replacing the user's rule with the same selector and channel (what a settings screen
    /// toggling one switch sends: concurrent changes of other rules are kept); returns the result.
    pub async fn update_preferences(&self, rules: &[PreferenceRule]) -> Result<Preferences, ClientError> {
        self.call(&api::update_preferences(rules), api::parse_preferences).await
    }

    /// The user's quiet hours.
    pub async fn quiet_hours(&self) -> Result<QuietHoursSettings, ClientError> {
        self.call(&api::get_quiet_hours(), api::parse_quiet_hours).await
    }

    /// Sets the user's quiet hours (`None` removes them); returns the result (the server's normal form).
    pub async fn set_quiet_hours(&self, quiet: Option<&QuietHours>) -> Result<QuietHoursSettings, ClientError> {
        self.call(&api::set_quiet_hours(quiet), api::parse_quiet_hours).await
    }

    /// The platform reports a network change (retries at once when the network is back).
    pub fn network_changed(&self, event: NetworkEvent) {
        self.with_engine(|e, now| e.handle_network(now, event));
    }

    /// The app moved to the foreground or background.
    pub fn set_lifecycle(&self, lifecycle: Lifecycle) {
        if lifecycle == Lifecycle::Foreground
            && let Some(store) = &self.shared.store
        {
            // Another process (push extension) may have recorded ids meanwhile.
            match store.load() {
                Ok(Some(snapshot)) => self.with_engine(|e, now| e.restore(now, &snapshot)),
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "client state could not be reloaded"),
            }
        }
        self.with_engine(|e, now| e.handle_lifecycle(now, lifecycle));
    }

    /// Starts connecting: after [`ClientBuilder::build`], or again after `Failed` (e.g. once the user signed
    /// in again). No effect while connecting or connected, nor after [`Client::close`], which is final.
    pub fn connect(&self) {
        self.with_engine(|e, now| e.connect(now));
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        self.shared.engine().stats().clone()
    }

    /// The device id the client authenticates with.
    pub fn device_id(&self) -> String {
        self.shared.engine().device_id()
    }

    // ----------------------------------------------------------------------------------------------------
    // Inbox and history (protocol §13, §14)

    /// The inbox counts the server last reported (restored from the store at start); the badge is `unread`.
    pub fn inbox_counts(&self) -> Option<InboxCounts> {
        *self.shared.inbox.borrow()
    }

    /// A receiver of the inbox counts (latest value semantics): they only move to newer versions.
    pub fn inbox_counts_changes(&self) -> watch::Receiver<Option<InboxCounts>> {
        self.shared.inbox.subscribe()
    }

    /// The inbox view: the items loaded with [`Client::inbox_load_more`] and every item added since, newest first,
    /// in their current state. [`Event::InboxChanged`] tells when it changed.
    pub fn inbox_items(&self) -> Vec<InboxItem> {
        self.shared.engine().inbox_items().cloned().collect()
    }

    /// Whether the view reaches the oldest item of the inbox.
    pub fn inbox_complete(&self) -> bool {
        self.shared.engine().inbox_complete()
    }

    /// Inbox changes not yet answered by the server (queued while offline).
    pub fn inbox_pending_changes(&self) -> usize {
        self.shared.engine().inbox_pending_changes()
    }

    /// Starts a request and waits for its answer. The waiter is registered under the engine's lock, before the
    /// driver can see the answer.
    async fn request(
        &self,
        start: impl FnOnce(&mut Engine, Instant) -> Result<RequestId, EngineError>,
    ) -> Result<Reply, ClientError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.open_engine(|e, now| {
            let id = start(e, now)?;
            self.shared.replies.lock().unwrap_or_else(|p| p.into_inner()).insert(id, tx);
            Ok(id)
        })?;
        match rx.await {
            Ok(result) => Ok(result?),
            Err(_) => Err(ClientError::Closed),
        }
    }

    /// Loads the next page of the inbox view (older items); they join [`Client::inbox_items`].
    pub async fn inbox_load_more(&self) -> Result<InboxPage, ClientError> {
        match self.request(|e, now| e.inbox_load_more(now, None)).await? {
            Reply::Page(page) => Ok(page),
            other => Err(unexpected(&other)),
        }
    }

    /// A page of the inbox with filters (`InboxQuery`: before, limit, status, archived, type, topic).
    pub async fn inbox_list(&self, query: InboxQuery) -> Result<InboxPage, ClientError> {
        match self.request(|e, now| e.inbox_list(now, query)).await? {
            Reply::Page(page) => Ok(page),
            other => Err(unexpected(&other)),
        }
    }

    /// Reads, unreads, sees, unsees, archives or unarchives items. Queued while offline (kept in the store) and
    /// sent with an op id until the server answers, which applies it once; completes with the counts after it.
    pub async fn inbox_mark(&self, action: InboxAction, ids: &[&str]) -> Result<InboxUpdate, ClientError> {
        let ids: Vec<String> = ids.iter().map(|s| (*s).to_owned()).collect();
        match self.request(|e, now| e.inbox_mark(now, action, ids)).await? {
            Reply::Changed(update) => Ok(update),
            other => Err(unexpected(&other)),
        }
    }

    /// Marks every item up to the newest the client knows read (or seen): items that reach the server meanwhile
    /// stay unread. Queued as [`Client::inbox_mark`].
    pub async fn inbox_mark_all(&self, action: MarkAllAction) -> Result<InboxUpdate, ClientError> {
        match self.request(|e, now| Ok(e.inbox_mark_all(now, action))).await? {
            Reply::Changed(update) => Ok(update),
            other => Err(unexpected(&other)),
        }
    }

    /// A page of a stream's stored history after `after` — where to refetch from after a `gap` (the cursor before
    /// it; `None`: from the oldest stored).
    pub async fn history(
        &self,
        stream: &str,
        after: Option<Cursor>,
        limit: Option<u32>,
    ) -> Result<HistoryPage, ClientError> {
        match self.request(|e, now| e.history(now, stream, after, limit)).await? {
            Reply::History(page) => Ok(page),
            other => Err(unexpected(&other)),
        }
    }

    /// Closes the connection, saves the state and waits for the driver task to end. Idempotent.
    pub async fn close(&self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        self.with_engine(|e, now| e.close(now));
        let task = self.task.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(task) = task {
            let _ = task.await;
        }
        // Changes still queued stay in the store; whoever waits for their answer learns that the client closed.
        self.shared.replies.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        if let Some(task) = self.task.get_mut().unwrap_or_else(|p| p.into_inner()).take() {
            task.abort();
        }
    }
}

fn unexpected(reply: &Reply) -> ClientError {
    ClientError::Config(format!("internal error: unexpected answer {reply:?}"))
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

struct Driver {
    shared: Arc<Shared>,
    tokens: Arc<dyn TokenProvider>,
    events: mpsc::UnboundedSender<Vec<Event>>,
    flow: Arc<EventFlow>,
    config: ClientConfig,
    /// The TLS settings for `wss` when extra roots are configured (`None`: tokio-tungstenite's defaults).
    tls: Option<Arc<rustls::ClientConfig>>,
    ws: Option<(ConnId, Ws)>,
    /// Drain buffers, kept between turns so they are not regrown every time.
    out: Outputs,
}

/// What the engine asked for in one drain.
#[derive(Default)]
struct Outputs {
    transmits: Vec<String>,
    actions: Vec<Action>,
    events: Vec<Event>,
    timeout: Option<Instant>,
    finished: bool,
}

impl Driver {
    /// Takes everything the engine has for the driver into `out` (whose vectors are empty), in the engine's
    /// order ([`Engine::poll_output`]).
    fn drain(&self, out: &mut Outputs) {
        let mut engine = self.shared.engine();
        loop {
            match engine.poll_output() {
                Output::Transmit(t) => out.transmits.push(t),
                Output::Action(a) => out.actions.push(a),
                Output::Event(e) => out.events.push(e),
                Output::Reply { request, result } => {
                    let waiter = self.shared.replies.lock().unwrap_or_else(|p| p.into_inner()).remove(&request);
                    if let Some(tx) = waiter {
                        let _ = tx.send(result);
                    }
                }
                Output::Timeout(t) => {
                    out.timeout = t;
                    break;
                }
            }
        }
        out.finished = self.shared.shutdown.load(Ordering::SeqCst)
            && matches!(engine.state(), ConnectionState::Closed | ConnectionState::Failed { .. });
    }

    async fn run(mut self) {
        let clock = self.shared.clock;
        let mut token_fut: Option<BoxFuture<'static, Result<String, TokenError>>> = None;
        let mut connecting: Option<(ConnId, BoxFuture<'static, Result<Ws, TransportFailure>>)> = None;
        loop {
            let mut out = std::mem::take(&mut self.out);
            self.drain(&mut out);
            // The app gets its events before frames are written when it has room for all of them: a write can
            // take tens of microseconds (on loopback the kernel hands the frame to the peer inside `send`), and
            // the frames are mostly the acks of these very events. After a handful of events (a sparse stream,
            // where latency is what counts), the driver yields so that the app's task runs first on a
            // single-threaded runtime; after a batch it writes at once (a yield per batch cost S2 about a tenth
            // of its deliveries). With the app behind, frames go first: heartbeats must not wait for it.
            let events_first = !out.events.is_empty()
                && self.flow.queued.load(Ordering::Acquire) + out.events.len() <= self.config.event_capacity.max(1);
            if events_first {
                let delivered = out.events.len();
                self.deliver(&mut out.events).await;
                if !out.transmits.is_empty() && delivered <= FEW_EVENTS {
                    tokio::task::yield_now().await;
                }
            }
            if !out.transmits.is_empty() {
                self.write(&mut out.transmits).await;
            }
            for action in out.actions.drain(..) {
                match action {
                    Action::FetchToken { force_refresh } => token_fut = Some(self.tokens.token(force_refresh)),
                    Action::Open { conn, url } => {
                        connecting = Some((conn, Box::pin(open(url, self.ws_config(), self.tls.clone()))))
                    }
                    Action::Close { conn, code, reason } => {
                        if connecting.as_ref().is_some_and(|(c, _)| *c == conn) {
                            connecting = None;
                        }
                        if self.ws.as_ref().is_some_and(|(c, _)| *c == conn) {
                            let (_, mut ws) = self.ws.take().expect("checked");
                            let frame = CloseFrame { code: CloseCode::from(code), reason: reason.into() };
                            let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(Some(frame))).await;
                        }
                    }
                    Action::Persist(snapshot) => self.shared.save(&snapshot),
                }
            }
            self.deliver(&mut out.events).await;
            let finished = out.finished;
            let timeout = out.timeout;
            out.transmits.clear();
            self.out = out;
            if finished {
                break;
            }
            let sleep = timeout.map(|t| tokio::time::sleep_until(clock.deadline(t)));
            tokio::select! {
                biased;
                msg = next_message(&mut self.ws) => self.on_message(msg),
                (conn, result) = poll_connecting(&mut connecting) => {
                    connecting = None;
                    match result {
                        Ok(ws) => {
                            self.ws = Some((conn, ws));
                            self.shared.engine().handle_transport_open(clock.now(), conn);
                        }
                        Err(failure) => self.shared.engine().handle_transport_failed(clock.now(), conn, failure),
                    }
                }
                result = poll_opt(&mut token_fut) => {
                    token_fut = None;
                    self.shared.engine().handle_token(clock.now(), result);
                }
                () = self.shared.wake.notified() => {}
                () = async { match sleep { Some(s) => s.await, None => std::future::pending().await } } => {
                    self.shared.engine().handle_timeout(clock.now());
                }
            }
        }
        if let Some((_, mut ws)) = self.ws.take() {
            let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
        }
    }

    /// Hands `events` to the application (the state watch first), in batches, waiting while it is behind.
    async fn deliver(&mut self, events: &mut Vec<Event>) {
        for event in events.iter() {
            match event {
                Event::State(s) => {
                    self.shared.state.send_replace(s.clone());
                }
                Event::InboxCounts(c) => {
                    self.shared.inbox.send_replace(Some(*c));
                }
                _ => {}
            }
        }
        let mut events = events.drain(..);
        loop {
            let batch: Vec<Event> = events.by_ref().take(EVENT_BATCH).collect();
            if batch.is_empty() {
                break;
            }
            // Backpressure: wait for the app. If it dropped `Events`, the events are discarded.
            self.room_for_events().await;
            self.flow.queued.fetch_add(batch.len(), Ordering::AcqRel);
            let _ = self.events.send(batch);
        }
    }

    /// Waits until fewer than `event_capacity` events are waiting for the application (or nobody reads them).
    async fn room_for_events(&self) {
        let capacity = self.config.event_capacity.max(1);
        loop {
            let received = self.flow.received.notified();
            if self.flow.queued.load(Ordering::Acquire) < capacity || self.events.is_closed() {
                return;
            }
            received.await;
        }
    }

    fn ws_config(&self) -> WebSocketConfig {
        WebSocketConfig::default()
            .read_buffer_size(self.config.read_buffer_size)
            .write_buffer_size(0)
            .max_message_size(Some(self.config.max_message_size))
            .max_frame_size(Some(self.config.max_message_size))
    }

    /// Handles one message and further messages already buffered, under one engine lock, up to about
    /// [`MESSAGE_BATCH_BYTES`] of text or 1024 messages (then the loop drains the events and comes back for the
    /// rest, so that a backlog of multi-frame messages reaches the app in steps rather than all at once).
    fn on_message(&mut self, first: (ConnId, Option<Result<Message, tungstenite::Error>>)) {
        let (conn, mut msg) = first;
        let now = self.shared.clock.now();
        let shared = self.shared.clone();
        let mut engine = shared.engine();
        let mut bytes = 0;
        for handled in 1.. {
            match msg {
                Some(Ok(Message::Text(text))) => {
                    bytes += text.len();
                    engine.handle_text(now, conn, text.as_str());
                }
                Some(Ok(Message::Close(frame))) => {
                    let (code, reason) =
                        frame.map(|f| (Some(u16::from(f.code)), f.reason.to_string())).unwrap_or((None, String::new()));
                    engine.handle_transport_closed(now, conn, code, &reason);
                    self.ws = None;
                    return;
                }
                Some(Ok(Message::Binary(_))) => {
                    engine.handle_transport_closed(now, conn, None, "server sent a binary message");
                    self.ws = None;
                    return;
                }
                Some(Ok(_)) => engine.handle_activity(now, conn),
                Some(Err(e)) => {
                    engine.handle_transport_closed(now, conn, None, &e.to_string());
                    self.ws = None;
                    return;
                }
                None => {
                    engine.handle_transport_closed(now, conn, None, "connection ended");
                    self.ws = None;
                    return;
                }
            }
            if handled == 1024 || bytes >= MESSAGE_BATCH_BYTES {
                return;
            }
            let Some((_, ws)) = self.ws.as_mut() else { return };
            match ws.next().now_or_never() {
                Some(next) => msg = next,
                None => return,
            }
        }
    }

    async fn write(&mut self, frames: &mut Vec<String>) {
        let Some((conn, ws)) = self.ws.as_mut() else {
            frames.clear();
            return;
        };
        let conn = *conn;
        let mut result = Ok(());
        for frame in frames.drain(..) {
            result = ws.feed(Message::text(frame)).await;
            if result.is_err() {
                break;
            }
        }
        if result.is_ok() {
            result = ws.flush().await;
        }
        if let Err(e) = result {
            self.ws = None;
            self.shared.engine().handle_transport_closed(self.shared.clock.now(), conn, None, &e.to_string());
        }
    }
}

async fn next_message(ws: &mut Option<(ConnId, Ws)>) -> (ConnId, Option<Result<Message, tungstenite::Error>>) {
    match ws {
        Some((conn, stream)) => (*conn, stream.next().await),
        None => std::future::pending().await,
    }
}

async fn poll_connecting(
    connecting: &mut Option<(ConnId, BoxFuture<'static, Result<Ws, TransportFailure>>)>,
) -> (ConnId, Result<Ws, TransportFailure>) {
    match connecting {
        Some((conn, f)) => (*conn, f.await),
        None => std::future::pending().await,
    }
}

async fn poll_opt<T>(fut: &mut Option<BoxFuture<'static, T>>) -> T {
    match fut {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

/// The TLS settings of HTTP API calls: the public roots plus the extra ones (with the process's crypto provider,
/// as for `wss`: see the module documentation).
fn http_tls(extra_roots: &[String]) -> Result<Arc<rustls::ClientConfig>, ClientError> {
    if let Some(config) = tls_config(extra_roots)? {
        return Ok(config);
    }
    let roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    Ok(Arc::new(rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth()))
}

/// The TLS settings for `wss` with the extra roots (`None` when there are none: tokio-tungstenite's defaults).
fn tls_config(extra_roots: &[String]) -> Result<Option<Arc<rustls::ClientConfig>>, ClientError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    if extra_roots.is_empty() {
        return Ok(None);
    }
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for (i, pem) in extra_roots.iter().enumerate() {
        let mut found = 0;
        for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            let cert = cert.map_err(|e| ClientError::Config(format!("extra_root_certificates[{i}]: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| ClientError::Config(format!("extra_root_certificates[{i}]: not a CA certificate: {e}")))?;
            found += 1;
        }
        if found == 0 {
            return Err(ClientError::Config(format!(
                "extra_root_certificates[{i}]: no PEM certificate (-----BEGIN CERTIFICATE-----) in it"
            )));
        }
    }
    // rustls' rule for libraries: the process-wide provider — the application's if it installed one, else the one
    // rustls' crate features name (ring: the only provider this crate enables), which `builder()` installs.
    let config = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
    Ok(Some(Arc::new(config)))
}

/// `Retry-After`: delay-seconds or an HTTP date (RFC 9110 §10.2.3), as a wait from now.
fn retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(std::time::SystemTime::now()).unwrap_or(Duration::ZERO))
}

async fn open(
    url: String,
    config: WebSocketConfig,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> Result<Ws, TransportFailure> {
    let mut request = url.as_str().into_client_request().map_err(|e| TransportFailure {
        http_status: Some(400),
        retry_after: None,
        message: format!("bad URL: {e}"),
    })?;
    request.headers_mut().insert("Sec-WebSocket-Protocol", HeaderValue::from_static(SUBPROTOCOL));
    let connector = tls.map(tokio_tungstenite::Connector::Rustls);
    match tokio_tungstenite::connect_async_tls_with_config(request, Some(config), true, connector).await {
        Ok((ws, response)) => {
            let selected = response.headers().get("Sec-WebSocket-Protocol").and_then(|v| v.to_str().ok());
            if selected != Some(SUBPROTOCOL) {
                return Err(TransportFailure {
                    http_status: Some(400),
                    retry_after: None,
                    message: format!("server selected subprotocol {selected:?}, expected {SUBPROTOCOL}"),
                });
            }
            Ok(ws)
        }
        Err(tungstenite::Error::Http(response)) => {
            let retry_after = response.headers().get("Retry-After").and_then(|v| v.to_str().ok()).and_then(retry_after);
            let body = response.body().as_ref().map(|b| String::from_utf8_lossy(b).into_owned()).unwrap_or_default();
            Err(TransportFailure {
                http_status: Some(response.status().as_u16()),
                retry_after,
                message: format!("HTTP {}: {}", response.status(), body.trim()),
            })
        }
        Err(tungstenite::Error::Protocol(e @ tungstenite::error::ProtocolError::SecWebSocketSubProtocolError(_))) => {
            // The server does not speak tidings.v1 (protocol §1): permanent.
            Err(TransportFailure {
                http_status: Some(400),
                retry_after: None,
                message: format!("server did not select subprotocol {SUBPROTOCOL}: {e}"),
            })
        }
        Err(e) => Err(TransportFailure { http_status: None, retry_after: None, message: e.to_string() }),
    }
}
