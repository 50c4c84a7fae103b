//! The sans-IO client engine.
//!
//! The engine owns every behaviour of a Tidings client — connection state, reconnection, heartbeats, cursors
//! and replay, dedup, batching, acks — and performs no I/O. A driver feeds it inputs (`connect`, `handle_*`,
//! `subscribe`, `ingest_push`, …), each stamped with the current [`Instant`], and drains its outputs:
//!
//! - [`Engine::poll_transmit`]: text frames to write to the current WebSocket;
//! - [`Engine::poll_action`]: things only the driver can do — fetch a token, open or close a socket, persist
//!   state;
//! - [`Engine::poll_event`]: what the application sees;
//! - [`Engine::poll_timeout`]: when to call [`Engine::handle_timeout`] next.
//!
//! Drivers drain transmits before actions, so frames queued before a close go out first. Every socket the
//! engine asks for carries a [`ConnId`]; inputs about a socket the engine has already given up on are ignored,
//! so a late close or frame from a torn-down connection can never disturb the current one.

mod acks;
mod backoff;
mod batch;
mod dedup;
mod map;

use std::collections::VecDeque;
use std::time::Duration;

pub use backoff::BackoffConfig;
pub use batch::{BatchConfig, BatchOutput, Digest, PendingBatch};
pub use dedup::DedupWindow;
pub use map::StreamMap;

pub use crate::protocol::PushPlatform;
use crate::protocol::{
    self, ClientFrame, CloseAction, DecodeError, ErrorCode, ErrorFrame, GapReason, Notification, ServerFrame,
    StreamName, SubscribeEntry, WireContinuity, close,
};
use crate::time::Instant;
use batch::Batcher;

/// Most automatic acks kept while disconnected.
const MAX_PENDING_ACKS: usize = 4096;

/// Engine configuration. [`Config::new`] gives the documented defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// WebSocket URL of the server, e.g. `wss://notify.example.com/v1/ws`.
    pub url: String,
    /// Stable id of this installation. `None`: taken from the restored snapshot, or generated once and persisted.
    pub device_id: Option<String>,
    /// `name/version` sent in `auth`.
    pub client_name: String,
    /// Reconnect backoff.
    pub backoff: BackoffConfig,
    /// A connection must stay up this long before the failure count resets.
    pub stable_after: Duration,
    /// Limit for opening the socket and completing `auth`.
    pub connect_timeout: Duration,
    /// Extra silence tolerated beyond the server's heartbeat interval before the link is declared dead.
    pub heartbeat_grace: Duration,
    /// How long a probe (`heartbeat` with `echo`) may go unanswered after a network change or foregrounding.
    pub probe_timeout: Duration,
    /// Batching of informational notifications.
    pub batch: BatchConfig,
    /// Number of notification ids remembered for dedup.
    pub dedup_capacity: usize,
    /// Subscribe to the authenticated user's own stream after every `welcome`.
    pub subscribe_user_stream: bool,
    /// How long the socket stays open after the app goes to the background.
    pub background_grace: Duration,
    /// Emit [`Action::Persist`] when state changed; off when the driver has no store.
    pub persistence: bool,
    /// Minimum time between two routine [`Action::Persist`]s.
    pub persist_interval: Duration,
    /// Refresh the token this long before it expires (or at 90 % of its lifetime, if sooner).
    pub token_refresh_margin: Duration,
    /// Ack notifications automatically when they are delivered to the app.
    pub auto_ack: bool,
    /// At most one `ack` frame per this long (or per 256 pending ids): the first ack after a quiet `ack_delay` goes
    /// out at once, in the same turn as its notification; later ones are coalesced until `ack_delay` after the
    /// previous frame. One frame per socket read would cost the server a receive per few notifications.
    pub ack_delay: Duration,
}

impl Config {
    /// Defaults for a server at `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Config {
            url: url.into(),
            device_id: None,
            client_name: concat!("tidings-rust/", env!("CARGO_PKG_VERSION")).to_string(),
            backoff: BackoffConfig::default(),
            stable_after: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            heartbeat_grace: Duration::from_secs(10),
            probe_timeout: Duration::from_secs(5),
            batch: BatchConfig::default(),
            dedup_capacity: 10_000,
            subscribe_user_stream: true,
            background_grace: Duration::from_secs(30),
            persistence: true,
            persist_interval: Duration::from_millis(500),
            token_refresh_margin: Duration::from_secs(30),
            auto_ack: true,
            ack_delay: Duration::from_millis(250),
        }
    }
}

/// Identifies one socket the engine asked the driver to open.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

/// What the driver must do.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Ask the application's token provider for a token and pass the answer to [`Engine::handle_token`].
    /// `force_refresh`: a cached token is not good enough (it was rejected or is about to expire).
    FetchToken {
        /// Bypass any cache.
        force_refresh: bool,
    },
    /// Open a WebSocket to `url` offering [`protocol::SUBPROTOCOL`]; report the outcome with
    /// [`Engine::handle_transport_open`] or [`Engine::handle_transport_failed`].
    Open {
        /// The socket's id.
        conn: ConnId,
        /// Where.
        url: String,
    },
    /// Close (or abandon) this socket. The engine has already moved on; no further input about it is needed.
    Close {
        /// The socket's id.
        conn: ConnId,
        /// WebSocket close code to send.
        code: u16,
        /// Close reason to send.
        reason: &'static str,
    },
    /// Save this state in the store.
    Persist(Snapshot),
}

/// Where the connection stands, as the application sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConnectionState {
    /// Not started.
    Idle,
    /// Getting a token, opening the socket or authenticating.
    Connecting {
        /// Attempt number in the current series (1 after a stable connection).
        attempt: u32,
    },
    /// Authenticated; notifications flow.
    Connected,
    /// Waiting before the next attempt.
    Reconnecting {
        /// The attempt that will follow.
        attempt: u32,
        /// How long the wait is.
        delay: Duration,
        /// Why the last connection or attempt ended.
        reason: String,
    },
    /// Deliberately not connected until the app returns to the foreground or the network comes back.
    Suspended {
        /// Why.
        reason: SuspendReason,
    },
    /// Closed by the application.
    Closed,
    /// Stopped for a reason retrying cannot fix; the application must intervene (e.g. sign in again).
    Failed {
        /// Category.
        reason: FailureReason,
        /// Detail.
        message: String,
    },
}

/// Why the engine is suspended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SuspendReason {
    /// The app is in the background (after the grace period).
    Background,
    /// The platform reports no network.
    Offline,
}

impl SuspendReason {
    /// `background` or `offline`.
    pub fn as_str(self) -> &'static str {
        match self {
            SuspendReason::Background => "background",
            SuspendReason::Offline => "offline",
        }
    }
}

/// Why the engine stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureReason {
    /// The server rejected a freshly obtained token.
    Unauthorized,
    /// The token provider reported a permanent failure.
    TokenProvider,
    /// The server reported a protocol error (close 4000) or the versions do not match (4004, HTTP 400).
    Protocol,
    /// The client sent a frame larger than the server accepts (4009).
    FrameTooLarge,
    /// Another connection of this device took over (4011).
    SessionReplaced,
    /// The server refused the WebSocket handshake with a permanent HTTP status.
    Rejected,
}

impl FailureReason {
    /// The reason's name: `unauthorized`, `token_provider`, `protocol`, `frame_too_large`, `session_replaced`,
    /// `rejected`.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::Unauthorized => "unauthorized",
            FailureReason::TokenProvider => "token_provider",
            FailureReason::Protocol => "protocol",
            FailureReason::FrameTooLarge => "frame_too_large",
            FailureReason::SessionReplaced => "session_replaced",
            FailureReason::Rejected => "rejected",
        }
    }
}

/// How a stream continued after a (re)subscription.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Continuity {
    /// First subscription without a cursor; delivery starts now.
    Fresh,
    /// Resumed from the cursor; `replayed` notifications were replayed (already delivered when this arrives).
    Resumed {
        /// Count of replayed notifications.
        replayed: u64,
    },
    /// Notifications were lost; the application must refetch the stream's state.
    Gap {
        /// Why.
        reason: GapReason,
        /// How many, when known.
        missed: Option<u64>,
    },
}

/// What the application sees.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The connection state changed.
    State(ConnectionState),
    /// A notification (live or replayed), seen for the first time. Boxed: events move through the engine's
    /// queue, the driver's batch and the application's channel, and a pointer moves cheaper than the envelope.
    Notification(Box<Notification>),
    /// Several informational notifications of one group (boxed: a digest holds two notifications, and every
    /// event is moved through queues at the size of the largest variant).
    Digest(Box<Digest>),
    /// How a stream continued after (re)subscribing; exactly one per `subscribed`.
    Continuity {
        /// The stream.
        stream: String,
        /// How.
        continuity: Continuity,
    },
    /// The server stored this device's push address.
    PushRegistered {
        /// The platform.
        platform: PushPlatform,
    },
    /// The server refused a subscription; the engine will not retry it.
    SubscriptionFailed {
        /// The stream.
        stream: String,
        /// Why (`forbidden`, `bad_request`).
        code: ErrorCode,
        /// Detail.
        message: String,
    },
}

/// Network reachability reported by the platform.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetworkEvent {
    /// The network came back.
    Available,
    /// No network.
    Unavailable,
    /// The network changed (e.g. Wi-Fi to cellular); existing sockets may be dead.
    Changed,
}

/// Application lifecycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lifecycle {
    /// The app is visible.
    Foreground,
    /// The app went to the background.
    Background,
}

/// The outcome of [`Engine::ingest_push`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PushOutcome {
    /// First sighting: show it.
    Show(Notification),
    /// Already seen on another path: do not show it.
    Duplicate {
        /// Its id.
        id: String,
    },
}

/// Why the token provider failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenError {
    /// Retrying later may help (e.g. the provider's backend is unreachable).
    pub transient: bool,
    /// Detail.
    pub message: String,
}

/// Why a socket could not be opened.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct TransportFailure {
    /// HTTP status of a refused handshake, if there was one.
    pub http_status: Option<u16>,
    /// `Retry-After` of a refused handshake.
    pub retry_after: Option<Duration>,
    /// Detail.
    pub message: String,
}

/// A caller error.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    /// An argument was invalid.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A push payload could not be used.
    #[error("invalid push payload: {0}")]
    InvalidPayload(#[from] DecodeError),
}

/// A stream's position: the last offset seen in an epoch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cursor {
    /// The stream's history generation.
    pub epoch: String,
    /// Last offset seen.
    pub offset: u64,
}

/// Everything the engine persists: cursors, recently seen ids, open batches and the device id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Format version.
    pub version: u32,
    /// The installation's device id.
    pub device_id: Option<String>,
    /// Cursor per stream.
    pub cursors: StreamMap<Cursor>,
    /// Recently seen notifications, oldest first: dedup-window entries (see [`DedupWindow`]); plain ids are
    /// accepted too.
    pub seen: Vec<String>,
    /// Batches not yet delivered.
    pub pending: Vec<PendingBatch>,
    /// The push address this device registered last (re-sent on every connection).
    pub push: Option<PushRegistration>,
}

/// A device's push address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushRegistration {
    /// The push service.
    pub platform: PushPlatform,
    /// The token (or Web Push subscription JSON).
    pub token: String,
}

fn snapshot_version() -> u32 {
    1
}

impl Snapshot {
    /// Merges `other` (typically what another process wrote, such as an iOS Notification Service Extension)
    /// into `self`: ids are unioned (`other`'s count as older), cursors keep the further position of the same
    /// epoch (or `self`'s when the epochs differ), batches are unioned by group.
    pub fn merge(&mut self, other: &Snapshot) {
        if self.device_id.is_none() {
            self.device_id.clone_from(&other.device_id);
        }
        for (stream, theirs) in &other.cursors {
            match self.cursors.get_mut(stream) {
                Some(ours) if ours.epoch == theirs.epoch => ours.offset = ours.offset.max(theirs.offset),
                Some(_) => {}
                None => {
                    self.cursors.insert(stream.clone(), theirs.clone());
                }
            }
        }
        let mut ours: Vec<&str> = self.seen.iter().map(String::as_str).collect();
        ours.sort_unstable();
        let mut seen: Vec<String> =
            other.seen.iter().filter(|id| ours.binary_search(&id.as_str()).is_err()).cloned().collect();
        seen.append(&mut self.seen);
        self.seen = seen;
        for batch in &other.pending {
            if !self.pending.iter().any(|b| b.group == batch.group) {
                self.pending.push(batch.clone());
            }
        }
        if self.push.is_none() {
            self.push.clone_from(&other.push);
        }
    }
}

/// Counters, for tests and for applications that export metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Sockets the engine asked to open.
    pub connection_attempts: u64,
    /// Connections that reached `welcome`.
    pub connections: u64,
    /// Token requests issued.
    pub token_fetches: u64,
    /// Notification frames received on sockets.
    pub notifications_received: u64,
    /// Notifications delivered to the app (alone or in digests).
    pub delivered: u64,
    /// Notifications dropped because their id was already seen (any path).
    pub duplicates_dropped: u64,
    /// Notifications dropped because their offset was behind the cursor.
    pub stale_dropped: u64,
    /// Digests delivered.
    pub digests: u64,
    /// Push payloads ingested.
    pub push_ingested: u64,
    /// Gaps reported.
    pub gaps: u64,
}

#[derive(Debug)]
enum Phase {
    Idle,
    AwaitingToken,
    Opening { conn: ConnId, deadline: Instant },
    Authenticating { conn: ConnId, deadline: Instant },
    Connected { conn: ConnId, since: Instant },
    Backoff { until: Instant },
    Suspended(SuspendReason),
    Closed,
    Failed,
}

/// Per-connection state after `welcome`.
#[derive(Debug)]
struct Link {
    last_rx: Instant,
    last_tx: Instant,
    heartbeat: Duration,
    next_ref: u64,
    probe_deadline: Option<Instant>,
    stable: bool,
}

/// Why a socket ended, as the engine classifies it.
#[derive(Debug)]
struct Loss {
    action: CloseAction,
    failure: FailureReason,
    retry_after: Option<Duration>,
    message: String,
}

/// The engine. See the module documentation.
#[derive(Debug)]
pub struct Engine {
    config: Config,
    rng: fastrand::Rng,
    phase: Phase,
    state: ConnectionState,
    next_conn: u64,
    failures: u32,
    link: Option<Link>,
    // token
    token: Option<String>,
    token_expires_at: Option<Instant>,
    token_refresh_at: Option<Instant>,
    token_in_flight: bool,
    refreshed_after_rejection: bool,
    // environment
    online: bool,
    foreground: bool,
    background_deadline: Option<Instant>,
    // streams
    user: Option<String>,
    /// Streams with replay in progress: (notifications still expected, total announced). Cleared when the link
    /// that announced them goes away.
    replaying: StreamMap<(u64, u64)>,
    /// Inputs relayed from another engine are being handled (no acks: the other engine acks).
    relaying: bool,
    desired: StreamMap<()>,
    cursors: StreamMap<Cursor>,
    dedup: DedupWindow,
    batcher: Batcher,
    device_id: Option<String>,
    push: Option<PushRegistration>,
    // outputs
    pending_acks: acks::PendingAcks,
    /// When the pending acks go out (unless a full frame's worth sends them sooner).
    ack_due: Option<Instant>,
    /// When the last `ack` frame was queued.
    last_ack_flush: Option<Instant>,
    transmits: VecDeque<String>,
    actions: VecDeque<Action>,
    events: VecDeque<Event>,
    dirty: bool,
    now: Instant,
    last_persist: Option<Instant>,
    stats: Stats,
}

impl Engine {
    /// A new engine. `seed` must come from the platform's entropy source so that clients' backoff schedules
    /// differ; tests pass a fixed seed for determinism.
    pub fn new(config: Config, seed: u64) -> Self {
        let dedup = DedupWindow::new(config.dedup_capacity);
        let batcher = Batcher::new(config.batch);
        let device_id = config.device_id.clone();
        Engine {
            rng: fastrand::Rng::with_seed(seed),
            phase: Phase::Idle,
            state: ConnectionState::Idle,
            next_conn: 0,
            failures: 0,
            link: None,
            token: None,
            token_expires_at: None,
            token_refresh_at: None,
            token_in_flight: false,
            refreshed_after_rejection: false,
            online: true,
            foreground: true,
            background_deadline: None,
            user: None,
            replaying: StreamMap::new(),
            relaying: false,
            desired: StreamMap::new(),
            cursors: StreamMap::new(),
            dedup,
            batcher,
            device_id,
            push: None,
            pending_acks: acks::PendingAcks::default(),
            ack_due: None,
            last_ack_flush: None,
            transmits: VecDeque::new(),
            actions: VecDeque::new(),
            events: VecDeque::new(),
            dirty: false,
            now: Instant::ZERO,
            last_persist: None,
            stats: Stats::default(),
            config,
        }
    }

    // ----------------------------------------------------------------------------------------------------
    // Observers

    /// The current connection state.
    pub fn state(&self) -> &ConnectionState {
        &self.state
    }

    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The cursor of a stream.
    pub fn cursor(&self, stream: &str) -> Option<&Cursor> {
        self.cursors.get(stream)
    }

    /// The device id (generated on first use if neither the config nor a snapshot supplied one).
    pub fn device_id(&mut self) -> String {
        if self.device_id.is_none() {
            self.device_id = Some(format!("d-{:016x}", self.rng.u64(..)));
            self.dirty = true;
        }
        self.device_id.clone().expect("set above")
    }

    /// The authenticated user, once a `welcome` arrived.
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// Streams the application subscribed to (the implicit user stream is not listed).
    pub fn subscriptions(&self) -> impl Iterator<Item = &str> {
        self.desired.keys().map(String::as_str)
    }

    /// The persistent state, as it is now.
    pub fn snapshot(&mut self) -> Snapshot {
        Snapshot {
            version: snapshot_version(),
            device_id: Some(self.device_id()),
            cursors: self.cursors.clone(),
            seen: self.dedup.entries_oldest_first(),
            pending: self.batcher.snapshot(),
            push: self.push.clone(),
        }
    }

    // ----------------------------------------------------------------------------------------------------
    // Outputs

    /// The next frame to write to the current socket.
    pub fn poll_transmit(&mut self) -> Option<String> {
        if self.transmits.is_empty() && self.is_connected() && self.acks_due() {
            self.flush_acks();
        }
        self.transmits.pop_front()
    }

    /// The next thing the driver must do.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The next event for the application.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Engine::handle_timeout`] must be called next, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut consider = |t: Option<Instant>| {
            if let Some(t) = t {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        };
        match &self.phase {
            Phase::Opening { deadline, .. } | Phase::Authenticating { deadline, .. } => consider(Some(*deadline)),
            Phase::Backoff { until } => consider(Some(*until)),
            Phase::Connected { since, .. } => {
                if let Some(link) = &self.link {
                    consider(Some(link.last_rx + link.heartbeat + self.config.heartbeat_grace));
                    consider(Some(link.last_tx + link.heartbeat));
                    consider(link.probe_deadline);
                    if !link.stable {
                        consider(Some(*since + self.config.stable_after));
                    }
                }
                if !self.token_in_flight {
                    consider(self.token_refresh_at);
                }
                if !self.pending_acks.is_empty() {
                    consider(self.ack_due);
                }
            }
            _ => {}
        }
        consider(self.background_deadline);
        consider(self.batcher.next_deadline());
        if self.config.persistence && self.dirty {
            consider(Some(self.last_persist.map_or(Instant::ZERO, |t| t + self.config.persist_interval)));
        }
        next
    }

    // ----------------------------------------------------------------------------------------------------
    // Application inputs

    /// Restores persisted state (merging it into what the engine holds). Call before [`Engine::connect`], and
    /// again whenever another process may have written the store (e.g. on return to the foreground).
    pub fn restore(&mut self, now: Instant, snapshot: &Snapshot) {
        let now = self.tick(now);
        let mut merged = Snapshot {
            version: snapshot_version(),
            device_id: self.device_id.clone(),
            cursors: self.cursors.clone(),
            seen: Vec::new(),
            pending: Vec::new(),
            push: self.push.clone(),
        };
        merged.merge(snapshot);
        self.device_id = merged.device_id;
        self.push = merged.push;
        self.cursors = merged.cursors;
        // Saved ids count as older than anything this process saw.
        let ours = self.dedup.entries_oldest_first();
        let mut fresh = DedupWindow::new(self.config.dedup_capacity);
        fresh.restore(snapshot.seen.iter().chain(ours.iter()));
        self.dedup = fresh;
        self.batcher.restore(now, snapshot.pending.clone());
    }

    /// Starts connecting (no-op when already connecting or connected).
    pub fn connect(&mut self, now: Instant) {
        let now = self.tick(now);
        match self.phase {
            Phase::Idle | Phase::Closed | Phase::Failed => {
                self.failures = 0;
                self.refreshed_after_rejection = false;
                self.start_attempt(now);
            }
            Phase::Backoff { .. } | Phase::Suspended(_) => self.start_attempt(now),
            _ => {}
        }
    }

    /// Closes the connection for good (until [`Engine::connect`]). Pending acks are sent first; open batches
    /// are persisted, not delivered.
    pub fn close(&mut self, now: Instant) {
        let now = self.tick(now);
        // Frames already queued (and the acks flushed here) go out before the close: drivers drain transmits
        // before actions.
        if self.is_connected() {
            self.flush_acks();
        }
        if let Some(conn) = self.current_conn() {
            self.actions.push_back(Action::Close { conn, code: close::NORMAL, reason: "client closed" });
        }
        self.link = None;
        self.phase = Phase::Closed;
        self.background_deadline = None;
        self.set_state(ConnectionState::Closed);
        self.request_persist(now);
    }

    /// Subscribes to a stream (`topic:<name>` or `user:<id>`). Effective immediately when connected, and on
    /// every reconnect, resuming from the stream's cursor.
    pub fn subscribe(&mut self, now: Instant, stream: &str) -> Result<(), EngineError> {
        self.tick(now);
        StreamName::parse(stream).map_err(EngineError::InvalidArgument)?;
        if self.desired.contains_key(stream) {
            return Ok(());
        }
        if self.desired.len() >= protocol::MAX_STREAMS_PER_CONNECTION - 1 {
            return Err(EngineError::InvalidArgument(format!(
                "at most {} subscriptions per client",
                protocol::MAX_STREAMS_PER_CONNECTION - 1
            )));
        }
        self.desired.insert(stream.to_string(), ());
        if self.is_connected() {
            let entry = self.subscribe_entry(stream);
            self.send_subscribe(vec![entry]);
        }
        Ok(())
    }

    /// Unsubscribes from a stream and forgets its cursor.
    pub fn unsubscribe(&mut self, now: Instant, stream: &str) -> Result<(), EngineError> {
        self.tick(now);
        StreamName::parse(stream).map_err(EngineError::InvalidArgument)?;
        if self.desired.remove(stream).is_none() {
            return Ok(());
        }
        if self.cursors.remove(stream).is_some() {
            self.dirty = true;
        }
        if self.is_connected() {
            let reference = self.next_ref();
            self.queue(&ClientFrame::Unsubscribe { reference, streams: vec![stream.to_string()] });
        }
        Ok(())
    }

    /// Acks notifications explicitly (only needed with `auto_ack` off).
    pub fn ack(&mut self, now: Instant, ids: &[&str]) -> Result<(), EngineError> {
        self.tick(now);
        for id in ids {
            protocol::validate_id(id)
                .map_err(|e| EngineError::InvalidArgument(format!("id {} {e}", protocol::quoted(id))))?;
        }
        for id in ids {
            self.push_ack(id);
        }
        Ok(())
    }

    /// Registers this device's push address with the server: sent now when connected, and again after every
    /// reconnect (the server keeps the newest per device). Persisted with the rest of the state.
    pub fn register_push(&mut self, now: Instant, platform: PushPlatform, token: &str) -> Result<(), EngineError> {
        self.tick(now);
        protocol::validate_push_token(token).map_err(|e| EngineError::InvalidArgument(format!("push token {e}")))?;
        self.push = Some(PushRegistration { platform, token: token.to_string() });
        self.dirty = true;
        if self.is_connected() {
            self.send_push_registration();
        }
        Ok(())
    }

    /// A push payload (APNs, FCM, Web Push) reached the app. Passes it through the same dedup window as the
    /// socket: the result says whether to show it. State is persisted at once (the push handler may be a
    /// short-lived process).
    pub fn ingest_push(&mut self, now: Instant, payload: &str) -> Result<PushOutcome, EngineError> {
        let n = protocol::decode_push_payload(payload)?;
        self.ingest_push_notification(now, n)
    }

    /// [`Engine::ingest_push`] with the envelope already decoded (for drivers that parse JSON natively); it is
    /// checked against the protocol's limits here.
    pub fn ingest_push_notification(&mut self, now: Instant, n: Notification) -> Result<PushOutcome, EngineError> {
        n.validate()?;
        let now = self.tick(now);
        self.stats.push_ingested += 1;
        self.queue_ack(n.id());
        let outcome = if self.dedup.insert(n.id()) {
            self.dirty = true;
            self.stats.delivered += 1;
            PushOutcome::Show(n)
        } else {
            self.stats.duplicates_dropped += 1;
            PushOutcome::Duplicate { id: n.id().to_owned() }
        };
        self.request_persist(now);
        Ok(outcome)
    }

    /// The platform reports a network change.
    pub fn handle_network(&mut self, now: Instant, event: NetworkEvent) {
        let now = self.tick(now);
        match event {
            NetworkEvent::Unavailable => {
                self.online = false;
                match self.phase {
                    Phase::AwaitingToken
                    | Phase::Opening { .. }
                    | Phase::Authenticating { .. }
                    | Phase::Connected { .. }
                    | Phase::Backoff { .. } => {
                        self.drop_link(close::GOING_AWAY, "network unavailable");
                        self.suspend(now, SuspendReason::Offline);
                    }
                    _ => {}
                }
            }
            NetworkEvent::Available | NetworkEvent::Changed => {
                self.online = true;
                match self.phase {
                    Phase::Backoff { .. } | Phase::Suspended(SuspendReason::Offline) => self.start_attempt(now),
                    Phase::Connected { .. } if event == NetworkEvent::Changed => self.probe(now),
                    _ => {}
                }
            }
        }
    }

    /// The application moved between foreground and background.
    pub fn handle_lifecycle(&mut self, now: Instant, lifecycle: Lifecycle) {
        let now = self.tick(now);
        match lifecycle {
            Lifecycle::Background => {
                if !self.foreground {
                    return;
                }
                self.foreground = false;
                self.request_persist(now);
                match self.phase {
                    Phase::Idle | Phase::Closed | Phase::Failed | Phase::Suspended(_) => {}
                    _ => {
                        self.background_deadline = Some(now + self.config.background_grace);
                        if self.config.background_grace.is_zero() {
                            self.handle_timeout(now);
                        }
                    }
                }
            }
            Lifecycle::Foreground => {
                if self.foreground {
                    return;
                }
                self.foreground = true;
                self.background_deadline = None;
                match self.phase {
                    Phase::Suspended(SuspendReason::Background) if self.online => {
                        self.failures = 0;
                        self.start_attempt(now);
                    }
                    Phase::Suspended(SuspendReason::Background) => self.suspend(now, SuspendReason::Offline),
                    Phase::Backoff { .. } => self.start_attempt(now),
                    Phase::Connected { .. } => self.probe(now),
                    _ => {}
                }
            }
        }
    }

    // ----------------------------------------------------------------------------------------------------
    // Driver inputs

    /// The token provider answered an [`Action::FetchToken`].
    pub fn handle_token(&mut self, now: Instant, result: Result<String, TokenError>) {
        let now = self.tick(now);
        self.token_in_flight = false;
        match result {
            Ok(token) => {
                self.token = Some(token.clone());
                self.token_expires_at = None;
                self.token_refresh_at = None;
                match self.phase {
                    Phase::AwaitingToken => self.open(now),
                    Phase::Connected { .. } => {
                        let device = self.device_id();
                        self.queue(&ClientFrame::Auth { token, device, client: None });
                    }
                    _ => {}
                }
            }
            Err(e) if !e.transient => {
                if matches!(self.phase, Phase::AwaitingToken) {
                    self.fail(now, FailureReason::TokenProvider, e.message);
                }
            }
            Err(e) => {
                if matches!(self.phase, Phase::AwaitingToken) {
                    self.failures += 1;
                    self.backoff(now, None, format!("token provider: {}", e.message));
                } else if matches!(self.phase, Phase::Connected { .. }) {
                    // Proactive refresh failed; try again in a while, the current token still works.
                    self.token_refresh_at = Some(now + self.config.backoff.ceiling(2));
                }
            }
        }
    }

    /// The socket `conn` is open (the WebSocket handshake completed).
    pub fn handle_transport_open(&mut self, now: Instant, conn: ConnId) {
        self.tick(now);
        let Phase::Opening { conn: current, deadline } = self.phase else { return };
        if current != conn {
            return;
        }
        self.phase = Phase::Authenticating { conn, deadline };
        let token = self.token.clone().unwrap_or_default();
        let device = self.device_id();
        let client = Some(self.config.client_name.clone());
        self.queue(&ClientFrame::Auth { token, device, client });
    }

    /// The socket `conn` could not be opened.
    pub fn handle_transport_failed(&mut self, now: Instant, conn: ConnId, failure: TransportFailure) {
        let now = self.tick(now);
        if self.current_conn() != Some(conn) {
            return;
        }
        let loss = match failure.http_status {
            Some(401 | 403) => Loss {
                action: CloseAction::RefreshToken,
                failure: FailureReason::Unauthorized,
                retry_after: None,
                message: format!("handshake refused: {}", failure.message),
            },
            Some(status @ 400..=499) if !matches!(status, 408 | 429) => Loss {
                action: CloseAction::Stop,
                failure: FailureReason::Rejected,
                retry_after: None,
                message: format!("handshake refused with HTTP {status}: {}", failure.message),
            },
            _ => Loss {
                action: CloseAction::RetryWithBackoff,
                failure: FailureReason::Rejected,
                retry_after: failure.retry_after,
                message: failure.message,
            },
        };
        self.phase = Phase::Idle; // the socket never opened: nothing to close
        self.on_loss(now, loss);
    }

    /// The socket `conn` closed (by the peer or through a network error; `code` is `None` when there was no
    /// close frame).
    pub fn handle_transport_closed(&mut self, now: Instant, conn: ConnId, code: Option<u16>, reason: &str) {
        let now = self.tick(now);
        if self.current_conn() != Some(conn) {
            return;
        }
        let code_num = code.unwrap_or(1006);
        let failure = match code_num {
            close::UNAUTHORIZED | close::TOKEN_EXPIRED => FailureReason::Unauthorized,
            close::FRAME_TOO_LARGE => FailureReason::FrameTooLarge,
            close::SESSION_REPLACED => FailureReason::SessionReplaced,
            _ => FailureReason::Protocol,
        };
        let message = if reason.is_empty() {
            format!("connection closed ({code_num})")
        } else {
            format!("connection closed ({code_num}): {reason}")
        };
        self.link = None;
        self.transmits.clear();
        self.phase = Phase::Idle;
        self.on_loss(now, Loss { action: protocol::close_action(code_num), failure, retry_after: None, message });
    }

    /// A text message arrived on socket `conn`: one frame, or several separated by `\n` (protocol §1; empty
    /// lines are skipped). Frames are handled in order; the first undecodable one replaces the link and the rest
    /// of the message is dropped.
    pub fn handle_text(&mut self, now: Instant, conn: ConnId, text: &str) {
        if self.current_conn() != Some(conn) {
            self.tick(now);
            return;
        }
        for line in protocol::message_frames(text) {
            if self.current_conn() != Some(conn) {
                return;
            }
            match protocol::decode_server_frame(line) {
                Ok(frame) => self.handle_frame(now, conn, frame),
                Err(e) => {
                    warn!(error = %e, "undecodable frame from server; reconnecting");
                    self.handle_undecodable(now, conn, &e);
                    return;
                }
            }
        }
    }

    /// A frame that arrived on socket `conn`, already decoded — for drivers whose platform parses JSON natively
    /// (the browser binding builds frames from `JSON.parse` output, which keeps a JSON decoder out of the wasm
    /// module). The same as [`Engine::handle_text`] from there on.
    pub fn handle_frame(&mut self, now: Instant, conn: ConnId, frame: ServerFrame) {
        let now = self.tick(now);
        if self.current_conn() != Some(conn) {
            return;
        }
        if let Some(link) = &mut self.link {
            link.last_rx = now;
            link.probe_deadline = None;
        }
        self.on_frame(now, conn, frame);
    }

    /// A frame the driver could not decode (see [`Engine::handle_frame`]): the link is replaced, as when
    /// [`Engine::handle_text`] meets an undecodable frame.
    pub fn handle_undecodable(&mut self, now: Instant, conn: ConnId, error: &DecodeError) {
        let now = self.tick(now);
        if self.current_conn() != Some(conn) {
            return;
        }
        self.drop_link(close::PROTOCOL_ERROR, "undecodable frame");
        self.on_loss(
            now,
            Loss {
                action: CloseAction::RetryWithBackoff,
                failure: FailureReason::Protocol,
                retry_after: None,
                message: format!("undecodable frame from server: {error}"),
            },
        );
    }

    /// A server frame that another engine received — the leader of several browser tabs relays its socket's
    /// frames to the engines of the other tabs, which keeps their cursors, dedup windows and batches identical
    /// to the leader's, so any of them can take over the socket and resume with nothing lost and nothing
    /// delivered twice. Notifications and `subscribed` frames are processed as if they came from this engine's
    /// own socket (events, continuity, cursors, dedup, digests) but never acked; other frames are ignored.
    /// A relayed message may hold several frames, as a socket's may (see [`Engine::handle_text`]); they are
    /// handled in order up to the first undecodable one, whose error is returned.
    pub fn handle_relayed(&mut self, now: Instant, text: &str) -> Result<(), DecodeError> {
        for line in protocol::message_frames(text) {
            let frame = protocol::decode_server_frame(line)?;
            self.handle_relayed_frame(now, frame);
        }
        Ok(())
    }

    /// [`Engine::handle_relayed`] with the frame already decoded.
    pub fn handle_relayed_frame(&mut self, now: Instant, frame: ServerFrame) {
        let now = self.tick(now);
        self.relaying = true;
        match frame {
            ServerFrame::Notification(n) => self.on_notification(now, n),
            ServerFrame::Subscribed { stream, epoch, offset, continuity, .. } => {
                self.on_subscribed(now, stream, epoch, offset, continuity)
            }
            _ => {}
        }
        self.relaying = false;
    }

    /// Turns persistence on or off (a browser tab persists only while it leads).
    pub fn set_persistence(&mut self, now: Instant, enabled: bool) {
        let now = self.tick(now);
        self.config.persistence = enabled;
        if enabled && self.dirty {
            self.persist(now);
        }
    }

    /// Something other than a text frame arrived on `conn` (a ping, a pong): it proves the link is alive.
    pub fn handle_activity(&mut self, now: Instant, conn: ConnId) {
        let now = self.tick(now);
        if self.current_conn() == Some(conn)
            && let Some(link) = &mut self.link
        {
            link.last_rx = now;
            link.probe_deadline = None;
        }
    }

    /// Time passed: runs every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        let now = self.tick(now);
        if self.background_deadline.is_some_and(|t| t <= now) {
            self.background_deadline = None;
            self.drop_link(close::NORMAL, "app in background");
            self.suspend(now, SuspendReason::Background);
        }
        match self.phase {
            Phase::Opening { deadline, .. } | Phase::Authenticating { deadline, .. } if deadline <= now => {
                self.drop_link(close::NORMAL, "connect timeout");
                self.on_loss(
                    now,
                    Loss {
                        action: CloseAction::RetryWithBackoff,
                        failure: FailureReason::Protocol,
                        retry_after: None,
                        message: "connect timeout".into(),
                    },
                );
            }
            Phase::Backoff { until } if until <= now => self.start_attempt(now),
            Phase::Connected { since, .. } => self.connected_timers(now, since),
            _ => {}
        }
        for out in self.batcher.take_due(now) {
            self.emit_batch(out);
        }
        if self.config.persistence && self.dirty {
            let due = self.last_persist.is_none_or(|t| t + self.config.persist_interval <= now);
            if due {
                self.persist(now);
            }
        }
    }

    // ----------------------------------------------------------------------------------------------------
    // Internals: connection lifecycle

    fn is_connected(&self) -> bool {
        matches!(self.phase, Phase::Connected { .. })
    }

    fn current_conn(&self) -> Option<ConnId> {
        match self.phase {
            Phase::Opening { conn, .. } | Phase::Authenticating { conn, .. } | Phase::Connected { conn, .. } => {
                Some(conn)
            }
            _ => None,
        }
    }

    fn set_state(&mut self, state: ConnectionState) {
        if self.state != state {
            self.state = state.clone();
            self.events.push_back(Event::State(state));
        }
    }

    fn start_attempt(&mut self, now: Instant) {
        if !self.online {
            self.suspend(now, SuspendReason::Offline);
            return;
        }
        if !self.foreground && self.background_deadline.is_none() {
            self.suspend(now, SuspendReason::Background);
            return;
        }
        self.set_state(ConnectionState::Connecting { attempt: self.failures + 1 });
        let expired = self.token_expires_at.is_some_and(|t| t <= now + Duration::from_secs(1));
        if self.token.is_none() || expired {
            self.phase = Phase::AwaitingToken;
            self.fetch_token(expired);
        } else {
            self.open(now);
        }
    }

    fn fetch_token(&mut self, force_refresh: bool) {
        if self.token_in_flight {
            return; // single flight: the answer in progress serves this need too
        }
        self.token_in_flight = true;
        self.stats.token_fetches += 1;
        self.actions.push_back(Action::FetchToken { force_refresh });
    }

    fn open(&mut self, now: Instant) {
        self.next_conn += 1;
        let conn = ConnId(self.next_conn);
        self.stats.connection_attempts += 1;
        self.phase = Phase::Opening { conn, deadline: now + self.config.connect_timeout };
        self.actions.push_back(Action::Open { conn, url: self.config.url.clone() });
    }

    /// Abandons the current socket, if any, telling the driver to close it.
    fn drop_link(&mut self, code: u16, reason: &'static str) {
        if let Some(conn) = self.current_conn() {
            self.actions.push_back(Action::Close { conn, code, reason });
        }
        self.link = None;
        self.replaying.clear();
        self.transmits.clear();
        if self.current_conn().is_some() {
            self.phase = Phase::Idle;
        }
    }

    fn on_loss(&mut self, now: Instant, loss: Loss) {
        let was_stable = self.link.as_ref().is_some_and(|l| l.stable);
        self.link = None;
        self.replaying.clear();
        self.transmits.clear();
        if was_stable {
            self.failures = 0;
        }
        match loss.action {
            CloseAction::Stop => self.fail(now, loss.failure, loss.message),
            CloseAction::RefreshToken => {
                if self.refreshed_after_rejection {
                    self.fail(now, FailureReason::Unauthorized, format!("fresh token rejected: {}", loss.message));
                } else {
                    self.refreshed_after_rejection = true;
                    self.token = None;
                    self.token_expires_at = None;
                    self.token_refresh_at = None;
                    self.set_state(ConnectionState::Connecting { attempt: self.failures + 1 });
                    self.phase = Phase::AwaitingToken;
                    self.token_in_flight = false; // a refresh supersedes any answer still on its way
                    self.fetch_token(true);
                }
            }
            CloseAction::RetryWithBackoff => {
                if !self.online {
                    self.suspend(now, SuspendReason::Offline);
                    return;
                }
                self.failures += 1;
                self.backoff(now, loss.retry_after, loss.message);
            }
        }
    }

    fn backoff(&mut self, now: Instant, floor: Option<Duration>, reason: String) {
        let jitter = self.config.backoff.delay(self.failures, &mut self.rng);
        let delay = floor.map_or(jitter, |f| f + jitter);
        self.phase = Phase::Backoff { until: now + delay };
        self.set_state(ConnectionState::Reconnecting { attempt: self.failures + 1, delay, reason });
    }

    fn suspend(&mut self, now: Instant, reason: SuspendReason) {
        self.phase = Phase::Suspended(reason);
        self.set_state(ConnectionState::Suspended { reason });
        self.request_persist(now);
    }

    fn fail(&mut self, now: Instant, reason: FailureReason, message: String) {
        self.phase = Phase::Failed;
        self.background_deadline = None;
        self.set_state(ConnectionState::Failed { reason, message });
        self.request_persist(now);
    }

    fn probe(&mut self, now: Instant) {
        if let Some(link) = &mut self.link {
            link.probe_deadline = Some(now + self.config.probe_timeout);
            self.queue(&ClientFrame::Heartbeat { echo: true });
        }
    }

    fn connected_timers(&mut self, now: Instant, since: Instant) {
        let Some(link) = &mut self.link else { return };
        let dead_at = link.last_rx + link.heartbeat + self.config.heartbeat_grace;
        if dead_at <= now || link.probe_deadline.is_some_and(|t| t <= now) {
            let message = if dead_at <= now { "heartbeat timeout" } else { "probe unanswered" };
            self.drop_link(close::NORMAL, "heartbeat timeout");
            self.on_loss(
                now,
                Loss {
                    action: CloseAction::RetryWithBackoff,
                    failure: FailureReason::Protocol,
                    retry_after: None,
                    message: message.into(),
                },
            );
            return;
        }
        if !link.stable && since + self.config.stable_after <= now {
            link.stable = true;
            self.failures = 0;
        }
        if link.last_tx + link.heartbeat <= now {
            self.queue(&ClientFrame::Heartbeat { echo: false });
        }
        if !self.token_in_flight && self.token_refresh_at.is_some_and(|t| t <= now) {
            self.token_refresh_at = None;
            self.fetch_token(true);
        }
    }

    // ----------------------------------------------------------------------------------------------------
    // Internals: frames

    fn on_frame(&mut self, now: Instant, conn: ConnId, frame: ServerFrame) {
        match frame {
            ServerFrame::Notification(n) => self.on_notification(now, n),
            ServerFrame::Heartbeat => {}
            ServerFrame::Welcome { user, heartbeat_ms, token_expires_in_ms, .. } => {
                if !matches!(self.phase, Phase::Authenticating { .. }) {
                    return;
                }
                self.phase = Phase::Connected { conn, since: now };
                self.link = Some(Link {
                    last_rx: now,
                    last_tx: now,
                    heartbeat: Duration::from_millis(heartbeat_ms.max(1000)),
                    next_ref: 0,
                    probe_deadline: None,
                    stable: false,
                });
                self.stats.connections += 1;
                self.refreshed_after_rejection = false;
                self.set_token_expiry(now, token_expires_in_ms);
                self.user = Some(user);
                self.set_state(ConnectionState::Connected);
                self.resubscribe_all();
                self.send_push_registration();
            }
            ServerFrame::Subscribed { stream, epoch, offset, continuity, .. } => {
                self.on_subscribed(now, stream, epoch, offset, continuity)
            }
            ServerFrame::Unsubscribed { .. } => {}
            ServerFrame::PushRegistered { platform, .. } => self.events.push_back(Event::PushRegistered { platform }),
            ServerFrame::TokenRefreshed { token_expires_in_ms } => self.set_token_expiry(now, token_expires_in_ms),
            ServerFrame::Error(e) => self.on_error(now, e),
            // Answers to requests this engine does not send yet.
            ServerFrame::Inbox(_) | ServerFrame::InboxPage(_) | ServerFrame::HistoryPage(_) => {}
        }
    }

    fn set_token_expiry(&mut self, now: Instant, expires_in_ms: Option<u64>) {
        self.token_expires_at = expires_in_ms.map(|ms| now + Duration::from_millis(ms));
        self.token_refresh_at = expires_in_ms.map(|ms| {
            let lifetime = Duration::from_millis(ms);
            let lead = self.config.token_refresh_margin.min(lifetime / 10);
            now + lifetime.saturating_sub(lead)
        });
    }

    fn on_error(&mut self, now: Instant, e: ErrorFrame) {
        if e.reference.is_some() {
            if let Some(stream) = e.stream {
                warn!(%stream, code = %e.code, message = %e.message, "subscription refused");
                self.desired.remove(&stream);
                self.replaying.remove(&stream);
                self.events.push_back(Event::SubscriptionFailed { stream, code: e.code, message: e.message });
            } else {
                warn!(code = %e.code, message = %e.message, "request refused");
            }
            return;
        }
        let Some(close_code) = e.code.close_code() else {
            warn!(code = %e.code, message = %e.message, "server error");
            return;
        };
        let action = protocol::close_action(close_code);
        let failure = match e.code {
            ErrorCode::Unauthorized | ErrorCode::TokenExpired => FailureReason::Unauthorized,
            ErrorCode::FrameTooLarge => FailureReason::FrameTooLarge,
            ErrorCode::SessionReplaced => FailureReason::SessionReplaced,
            _ => FailureReason::Protocol,
        };
        self.drop_link(close::NORMAL, "server error");
        self.on_loss(
            now,
            Loss {
                action,
                failure,
                retry_after: e.retry_after_ms.map(Duration::from_millis),
                message: format!("{}: {}", e.code, e.message),
            },
        );
    }

    fn on_subscribed(&mut self, _now: Instant, stream: String, epoch: String, offset: u64, wire: WireContinuity) {
        let continuity = match wire {
            WireContinuity::Fresh => {
                self.cursors.insert(stream.clone(), Cursor { epoch, offset });
                Continuity::Fresh
            }
            WireContinuity::Resumed { replayed } => {
                let cursor = self.cursors.get_or_insert(&stream, Cursor { epoch: epoch.clone(), offset: 0 });
                if cursor.epoch != epoch {
                    *cursor = Cursor { epoch, offset: offset.saturating_sub(replayed) };
                }
                if replayed > 0 {
                    self.replaying.insert(stream, (replayed, replayed));
                    self.dirty = true;
                    return;
                }
                Continuity::Resumed { replayed: 0 }
            }
            WireContinuity::Gap { reason, missed } => {
                self.stats.gaps += 1;
                self.cursors.insert(stream.clone(), Cursor { epoch, offset });
                Continuity::Gap { reason, missed }
            }
        };
        self.dirty = true;
        self.events.push_back(Event::Continuity { stream, continuity });
    }

    fn on_notification(&mut self, now: Instant, n: Notification) {
        self.stats.notifications_received += 1;
        let mut replay_done = None;
        if !self.replaying.is_empty()
            && let Some((remaining, total)) = self.replaying.get_mut(n.stream())
        {
            *remaining -= 1;
            if *remaining == 0 {
                replay_done = Some((n.stream().to_owned(), *total));
                self.replaying.remove(n.stream());
            }
        }
        let mut stale = false;
        if let Some(offset) = n.offset {
            match self.cursors.get_mut(n.stream()) {
                Some(c) if c.epoch == n.epoch() => {
                    if offset <= c.offset {
                        stale = true;
                    } else {
                        c.offset = offset;
                    }
                }
                Some(c) => *c = Cursor { epoch: n.epoch().to_owned(), offset },
                None => {
                    self.cursors.insert(n.stream().to_owned(), Cursor { epoch: n.epoch().to_owned(), offset });
                }
            }
            self.dirty = true;
        }
        if stale {
            self.stats.stale_dropped += 1;
        } else {
            self.deliver(now, n);
        }
        if let Some((stream, replayed)) = replay_done {
            self.events.push_back(Event::Continuity { stream, continuity: Continuity::Resumed { replayed } });
        }
    }

    fn deliver(&mut self, now: Instant, n: Notification) {
        if !self.dedup.insert(n.id()) {
            self.stats.duplicates_dropped += 1;
            self.queue_ack(n.id());
            return;
        }
        self.dirty = true;
        if self.batcher.wants(&n) {
            if let Some(out) = self.batcher.add(now, n) {
                self.emit_batch(out);
            }
        } else {
            self.emit_notification(n);
        }
    }

    fn emit_notification(&mut self, n: Notification) {
        self.stats.delivered += 1;
        self.queue_ack(n.id());
        self.events.push_back(Event::Notification(Box::new(n)));
    }

    fn emit_batch(&mut self, out: BatchOutput) {
        self.dirty = true;
        match out {
            BatchOutput::Single(n) => self.emit_notification(n),
            BatchOutput::Digest(d) => {
                self.stats.delivered += u64::from(d.count);
                self.stats.digests += 1;
                for id in &d.ids {
                    self.queue_ack(id);
                }
                self.events.push_back(Event::Digest(d));
            }
        }
    }

    // ----------------------------------------------------------------------------------------------------
    // Internals: outgoing frames

    fn next_ref(&mut self) -> u64 {
        let link = self.link.as_mut().expect("connected");
        link.next_ref += 1;
        link.next_ref
    }

    fn queue(&mut self, frame: &ClientFrame) {
        self.queue_text(protocol::encode_client_frame(frame));
    }

    fn queue_text(&mut self, frame: String) {
        if let Some(link) = &mut self.link {
            link.last_tx = self.now;
        }
        self.transmits.push_back(frame);
    }

    /// Records the time of the input being handled (inputs may arrive with equal or, from sloppy drivers,
    /// slightly older timestamps; the engine's clock never goes back).
    fn tick(&mut self, now: Instant) -> Instant {
        self.now = self.now.max(now);
        self.now
    }

    fn subscribe_entry(&self, stream: &str) -> SubscribeEntry {
        let cursor = self.cursors.get(stream);
        SubscribeEntry {
            stream: stream.to_string(),
            epoch: cursor.map(|c| c.epoch.clone()),
            offset: cursor.map(|c| c.offset),
        }
    }

    fn send_subscribe(&mut self, entries: Vec<SubscribeEntry>) {
        for chunk in entries.chunks(protocol::MAX_STREAMS_PER_SUBSCRIBE) {
            let reference = self.next_ref();
            self.queue(&ClientFrame::Subscribe { reference, streams: chunk.to_vec() });
        }
    }

    fn resubscribe_all(&mut self) {
        let mut streams: Vec<String> = Vec::new();
        if self.config.subscribe_user_stream
            && let Some(user) = &self.user
        {
            streams.push(protocol::user_stream(user));
        }
        streams.extend(self.desired.keys().filter(|s| !streams.contains(s)).cloned().collect::<Vec<_>>());
        let entries: Vec<SubscribeEntry> = streams.iter().map(|s| self.subscribe_entry(s)).collect();
        if !entries.is_empty() {
            self.send_subscribe(entries);
        }
    }

    fn send_push_registration(&mut self) {
        if let Some(push) = self.push.clone() {
            let reference = self.next_ref();
            self.queue(&ClientFrame::RegisterPush { reference, platform: push.platform, token: push.token });
        }
    }

    /// Queues an automatic ack. Not while handling relayed input (the engine that owns the socket acks), and
    /// never more than [`MAX_PENDING_ACKS`] waiting: the oldest are dropped (an ack is an optimisation the
    /// server can live without; unbounded memory is not).
    fn queue_ack(&mut self, id: &str) {
        if self.config.auto_ack && !self.relaying {
            self.push_ack(id);
        }
    }

    /// Leading-edge coalescing: the first ack after a quiet `ack_delay` goes out in the same turn as its
    /// notification (a sparse stream gets prompt receipts and costs the client no extra wake-up, and the server
    /// reads the ack before its next publish rather than at a random later moment); later ones wait until
    /// `ack_delay` after the previous frame, so a busy stream still sends at most one frame per `ack_delay`.
    fn push_ack(&mut self, id: &str) {
        if self.pending_acks.is_empty() {
            let quiet_until = self.last_ack_flush.map(|t| t + self.config.ack_delay);
            self.ack_due = Some(quiet_until.filter(|&t| t > self.now).unwrap_or(self.now));
        }
        self.pending_acks.push(id, MAX_PENDING_ACKS);
    }

    /// Whether pending acks should go out now: a full frame's worth, or their time came (see `push_ack`).
    fn acks_due(&self) -> bool {
        !self.pending_acks.is_empty()
            && (self.pending_acks.has_full_frame() || self.ack_due.is_none_or(|t| t <= self.now))
    }

    fn flush_acks(&mut self) {
        self.ack_due = None;
        for frame in self.pending_acks.take_frames() {
            self.last_ack_flush = Some(self.now);
            self.queue_text(frame);
        }
    }

    // ----------------------------------------------------------------------------------------------------
    // Internals: persistence

    fn request_persist(&mut self, now: Instant) {
        if self.config.persistence {
            self.persist(now);
        }
    }

    fn persist(&mut self, now: Instant) {
        self.dirty = false;
        self.last_persist = Some(now);
        let snapshot = self.snapshot();
        self.dirty = false;
        self.actions.retain(|a| !matches!(a, Action::Persist(_)));
        self.actions.push_back(Action::Persist(snapshot));
    }
}
