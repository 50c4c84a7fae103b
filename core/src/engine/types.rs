//! The engine's public types: configuration, inputs the platform reports, outputs, events and errors.

use std::time::Duration;

use super::backoff::BackoffConfig;
use super::batch::{BatchConfig, Digest};
use super::snapshot::Snapshot;
use crate::protocol::{DecodeError, ErrorCode, GapReason, InboxCounts, Notification, PushPlatform};

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
    /// Ask for the user's inbox counts and changes on every connection (`inbox_watch`, protocol §13.4).
    pub watch_inbox: bool,
    /// How long a read (an inbox page, a history page) may wait for its answer, connection included.
    pub request_timeout: Duration,
    /// Most items the inbox view holds (the oldest leave it first).
    pub inbox_view_capacity: usize,
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
            watch_inbox: true,
            request_timeout: super::inbox::DEFAULT_REQUEST_TIMEOUT,
            inbox_view_capacity: super::inbox::DEFAULT_VIEW_CAPACITY,
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
        /// How many notifications the server still held and replays now, after this event (offsets up to the
        /// stream's head in its current epoch; each is delivered unless the app has it already).
        replayed: u64,
    },
}

/// What the application sees.
///
/// New kinds of event are added in minor releases (the enum is `#[non_exhaustive]`): match the ones you handle
/// and end with `_ => {}`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
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
    /// The server refused this device's push address (`bad_request`: the engine forgets it and will not send it
    /// again; register a valid one. Other codes: it is sent again on the next connection).
    PushRegistrationFailed {
        /// The platform.
        platform: PushPlatform,
        /// Why (`bad_request`, `try_again_later`).
        code: ErrorCode,
        /// Detail, naming the member that is wrong.
        message: String,
    },
    /// The inbox counts changed: newer counts than the ones held arrived (read them with
    /// [`Engine::inbox_counts`](super::Engine::inbox_counts)). The badge is `unread`.
    InboxCounts(InboxCounts),
    /// The items of the inbox view changed (added, read, archived, removed): read them with
    /// [`Engine::inbox_items`](super::Engine::inbox_items).
    InboxChanged,
    /// The server refused a subscription, or ended one by itself (an operator's unsubscribe); the engine dropped
    /// the stream and will not subscribe it again unless the app does.
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
    /// A lightweight push (protocol §11.1) of a notification not seen yet: the driver fetches it
    /// ([`crate::protocol::api::fetch_notification`], with the user's token) and hands the result to
    /// [`Engine::complete_push_fetch`](super::Engine::complete_push_fetch), whose outcome is the one to act on.
    /// Never returned to applications: SDKs resolve it.
    Fetch {
        /// The notification id.
        id: String,
        /// Its title, shown if the fetch fails.
        title: Option<String>,
    },
    /// A digest or quiet-hours summary with at least one notification not seen yet: show it. The ids it lists are
    /// seen (and acked) from now on, so none of them is shown again when the socket replays it.
    Summary(crate::protocol::PushSummary),
    /// A lightweight push whose notification could not be fetched: show its title (or a generic text without
    /// one). The id is seen from now on.
    ShowTitle {
        /// The notification id.
        id: String,
        /// Its title.
        title: Option<String>,
        /// Why the fetch failed.
        reason: String,
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

/// What the client has been through, for applications that export metrics or show diagnostics: one
/// implementation here, read on every platform through the client's `stats()`. Counters only grow (since the
/// client was created); `rtt` is the latest measurement.
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
    /// Notifications dropped because their id was already seen (any path: the sum of the three below).
    pub duplicates_dropped: u64,
    /// Of those, live on the socket.
    pub duplicates_socket: u64,
    /// Of those, replayed after a (re)subscription (resumed, or what the server held after a gap).
    pub duplicates_replay: u64,
    /// Of those, push payloads ([`Engine::ingest_push`](super::Engine::ingest_push): the push is not shown).
    pub duplicates_push: u64,
    /// Notifications dropped because their offset was behind the cursor.
    pub stale_dropped: u64,
    /// Digests delivered.
    pub digests: u64,
    /// Notifications delivered inside those digests.
    pub digested: u64,
    /// Push payloads ingested.
    pub push_ingested: u64,
    /// Gaps reported.
    pub gaps: u64,
    /// Subscriptions answered `fresh`.
    pub fresh: u64,
    /// Subscriptions answered `resumed` (with or without replayed notifications).
    pub resumed: u64,
    /// Subscriptions followed by a replay (resumed with notifications, or a gap followed by what the server held).
    pub replays: u64,
    /// Notifications the server announced as replayed, in all.
    pub replayed: u64,
    /// The largest replay.
    pub replay_max: u64,
    /// Reconnections, by what ended the connection before.
    pub reconnects: Reconnects,
    /// Round-trip time, from `auth` → `welcome` and from heartbeats sent with `echo`.
    pub rtt: Rtt,
}

/// Reconnections by reason (each time the engine went on to connect again after losing or failing to open a
/// connection; a stop for good is not one).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reconnects {
    /// The socket could not be opened (refused, TLS, DNS, an HTTP error, `429`/`503` with `Retry-After`).
    pub handshake_failed: u64,
    /// Opening and authenticating took longer than the connect timeout.
    pub connect_timeout: u64,
    /// The connection ended without a close frame (network loss, a reset).
    pub connection_lost: u64,
    /// The server closed the connection for its own reasons: shutdown, an operator's drop, a slow consumer, a newer
    /// session of the device, its heartbeat deadline (with an `error` frame or only a close code).
    pub server_closed: u64,
    /// Nothing arrived within the heartbeat deadline, or a probe went unanswered.
    pub heartbeat_timeout: u64,
    /// The server ended the connection over what this client sent (`protocol_error`, `frame_too_large`,
    /// `rate_limited`, `bad_request`, `auth_timeout`).
    pub server_error: u64,
    /// The server sent a frame the client could not decode.
    pub undecodable: u64,
    /// The server refused the token; a fresh one was fetched.
    pub token_refresh: u64,
}

impl Reconnects {
    /// Every reason with its count, by name (`handshake_failed`, `connect_timeout`, `connection_lost`,
    /// `server_closed`, `heartbeat_timeout`, `server_error`, `undecodable`, `token_refresh`).
    pub fn by_reason(&self) -> [(&'static str, u64); 8] {
        [
            ("handshake_failed", self.handshake_failed),
            ("connect_timeout", self.connect_timeout),
            ("connection_lost", self.connection_lost),
            ("server_closed", self.server_closed),
            ("heartbeat_timeout", self.heartbeat_timeout),
            ("server_error", self.server_error),
            ("undecodable", self.undecodable),
            ("token_refresh", self.token_refresh),
        ]
    }

    /// All reconnections.
    pub fn total(&self) -> u64 {
        self.by_reason().iter().map(|(_, n)| n).sum()
    }

    pub(super) fn count(&mut self, reason: ReconnectReason) {
        let counter = match reason {
            ReconnectReason::HandshakeFailed => &mut self.handshake_failed,
            ReconnectReason::ConnectTimeout => &mut self.connect_timeout,
            ReconnectReason::ConnectionLost => &mut self.connection_lost,
            ReconnectReason::ServerClosed => &mut self.server_closed,
            ReconnectReason::HeartbeatTimeout => &mut self.heartbeat_timeout,
            ReconnectReason::ServerError => &mut self.server_error,
            ReconnectReason::Undecodable => &mut self.undecodable,
            ReconnectReason::TokenRefresh => &mut self.token_refresh,
        };
        *counter += 1;
    }
}

/// What ended a connection (see [`Reconnects`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ReconnectReason {
    HandshakeFailed,
    ConnectTimeout,
    ConnectionLost,
    ServerClosed,
    HeartbeatTimeout,
    ServerError,
    Undecodable,
    TokenRefresh,
}

/// Round-trip time measurements: `auth` → `welcome` at each connection, and a `heartbeat` sent with `echo` (the
/// keep-alive and the probe) → the next heartbeat from the server.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rtt {
    /// Measurements taken.
    pub samples: u64,
    /// The latest.
    pub last: Option<Duration>,
    /// The smoothed value (as TCP's: 7/8 of the previous plus 1/8 of the latest).
    pub smoothed: Option<Duration>,
    /// The smallest.
    pub min: Option<Duration>,
}

impl Rtt {
    pub(super) fn sample(&mut self, rtt: Duration) {
        self.samples += 1;
        self.last = Some(rtt);
        self.min = Some(self.min.map_or(rtt, |m| m.min(rtt)));
        self.smoothed = Some(match self.smoothed {
            None => rtt,
            Some(s) => s.mul_f64(0.875) + rtt.mul_f64(0.125),
        });
    }
}

/// The next thing a driver must do, from [`Engine::poll_output`](super::Engine::poll_output). Drivers call it until
/// it returns [`Output::Timeout`] and handle each output in the order given: frames queued before an action go
/// out before it (a close follows the acks it flushed), answers to requests after them, and events come last, after
/// the frames, actions and answers of the same turn.
#[derive(Clone, Debug, PartialEq)]
pub enum Output {
    /// A text frame to write to the current socket.
    Transmit(String),
    /// Something only the driver can do.
    Action(Action),
    /// The answer to a request of the application (an inbox page, an inbox change, a history page).
    Reply {
        /// The request.
        request: super::RequestId,
        /// Its answer.
        result: Result<super::Reply, super::RequestError>,
    },
    /// Something for the application.
    Event(Event),
    /// Nothing more for now: call [`Engine::handle_timeout`](super::Engine::handle_timeout) at this instant (if
    /// any), or earlier when an input arrives.
    Timeout(Option<crate::time::Instant>),
}
