//! Records and enums that cross the FFI, and their conversions from the core's types. Value types only: the
//! generated Swift structs/enums and Kotlin data classes are plain values the UI can keep.

use tidings_core::engine as core;
use tidings_core::protocol as proto;

/// Client configuration. Every field but `url` has a default.
#[derive(Clone, Debug, uniffi::Record)]
pub struct ClientConfig {
    /// WebSocket URL of the server, e.g. `wss://notify.example.com/v1/ws`.
    pub url: String,
    /// File where cursors, recently seen ids and the device id are kept across launches. On iOS, put it in the
    /// App Group container so the Notification Service Extension shares the dedup state. `None`: memory only.
    #[uniffi(default = None)]
    pub store_path: Option<String>,
    /// Stable installation id; `None` generates one and keeps it in the store.
    #[uniffi(default = None)]
    pub device_id: Option<String>,
    /// Upper bound of the first reconnect delay (full jitter), ms.
    #[uniffi(default = 500)]
    pub backoff_base_ms: u64,
    /// Upper bound of any reconnect delay, ms.
    #[uniffi(default = 20000)]
    pub backoff_cap_ms: u64,
    /// Batching window for informational notifications with a group, ms; 0 disables digests.
    #[uniffi(default = 3000)]
    pub batch_window_ms: u64,
    /// A digest is delivered as soon as it holds this many notifications.
    #[uniffi(default = 100)]
    pub batch_max_items: u32,
    /// Notification ids remembered for dedup.
    #[uniffi(default = 10000)]
    pub dedup_capacity: u32,
    /// How long the socket stays open after the app enters the background, ms.
    #[uniffi(default = 30000)]
    pub background_grace_ms: u64,
    /// Subscribe to the signed-in user's own stream automatically.
    #[uniffi(default = true)]
    pub subscribe_user_stream: bool,
    /// Events held for the app before the client stops reading from the server (see `next_event`).
    #[uniffi(default = 1024)]
    pub event_capacity: u32,
    /// Certificate authorities trusted for `wss://` besides the public roots: PEM text (a private CA, a test
    /// server).
    #[uniffi(default = [])]
    pub extra_root_certificates: Vec<String>,
}

impl ClientConfig {
    pub(crate) fn to_native(&self) -> tidings_core::native::ClientConfig {
        let mut c = tidings_core::native::ClientConfig::new(self.url.clone());
        c.engine.device_id.clone_from(&self.device_id);
        c.engine.backoff.base = ms(self.backoff_base_ms);
        c.engine.backoff.cap = ms(self.backoff_cap_ms);
        c.engine.batch.window = ms(self.batch_window_ms);
        c.engine.batch.max_items = self.batch_max_items;
        c.engine.dedup_capacity = self.dedup_capacity as usize;
        c.engine.background_grace = ms(self.background_grace_ms);
        c.engine.subscribe_user_stream = self.subscribe_user_stream;
        c.engine.client_name = concat!("tidings-ffi/", env!("CARGO_PKG_VERSION")).to_string();
        c.event_capacity = self.event_capacity as usize;
        c.extra_root_certificates.clone_from(&self.extra_root_certificates);
        c
    }
}

fn ms(v: u64) -> std::time::Duration {
    std::time::Duration::from_millis(v)
}

/// Delivery tier.
#[derive(Clone, Copy, Debug, PartialEq, Eq, uniffi::Enum)]
pub enum Priority {
    /// Never held back.
    Critical,
    /// Never held back.
    Important,
    /// May be folded into digests.
    Informational,
}

/// Retention class.
#[derive(Clone, Copy, Debug, PartialEq, Eq, uniffi::Enum)]
pub enum Persistence {
    /// Live only.
    Ephemeral,
    /// Replayed after reconnects.
    Bufferable,
    /// Replayed and stored durably by the server.
    Persistent,
}

/// A notification.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct Notification {
    /// Globally unique id.
    pub id: String,
    /// `user:<id>` or `topic:<name>`.
    pub stream: String,
    /// Position in the stream (absent for ephemeral notifications).
    pub offset: Option<u64>,
    /// The stream's history generation.
    pub epoch: String,
    /// Application-defined kind (`type` on the wire).
    pub kind: String,
    /// Delivery tier.
    pub priority: Priority,
    /// Retention class.
    pub persistence: Persistence,
    /// Short text.
    pub title: Option<String>,
    /// Text.
    pub body: Option<String>,
    /// Application payload as JSON text.
    pub data_json: Option<String>,
    /// Batching key.
    pub group: Option<String>,
    /// When the server accepted it, ms since the Unix epoch.
    pub created_at_ms: u64,
}

impl From<proto::Notification> for Notification {
    fn from(n: proto::Notification) -> Self {
        let n = n.to_fields();
        Notification {
            id: n.id,
            stream: n.stream,
            offset: n.offset,
            epoch: n.epoch,
            kind: n.kind,
            priority: match n.priority {
                proto::Priority::Critical => Priority::Critical,
                proto::Priority::Important => Priority::Important,
                proto::Priority::Informational => Priority::Informational,
            },
            persistence: match n.persistence {
                proto::Persistence::Ephemeral => Persistence::Ephemeral,
                proto::Persistence::Bufferable => Persistence::Bufferable,
                proto::Persistence::Persistent => Persistence::Persistent,
            },
            title: n.title,
            body: n.body,
            data_json: n.data.map(|d| d.get().to_string()),
            group: n.group,
            created_at_ms: n.created_at,
        }
    }
}

/// Several informational notifications of one group ("5 new likes").
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct Digest {
    /// The shared group.
    pub group: String,
    /// How many notifications.
    pub count: u32,
    /// The first.
    pub first: Notification,
    /// The last.
    pub last: Notification,
    /// All ids, in arrival order.
    pub ids: Vec<String>,
}

impl From<core::Digest> for Digest {
    fn from(d: core::Digest) -> Self {
        Digest { group: d.group, count: d.count, first: d.first.into(), last: d.last.into(), ids: d.ids }
    }
}

/// Why the client is suspended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, uniffi::Enum)]
pub enum SuspendReason {
    /// The app is in the background.
    Background,
    /// No network.
    Offline,
}

/// Why the client stopped for good.
#[derive(Clone, Copy, Debug, PartialEq, Eq, uniffi::Enum)]
pub enum FailureReason {
    /// The server rejected a freshly obtained token: sign the user in again.
    Unauthorized,
    /// The token provider reported a permanent failure.
    TokenProvider,
    /// Client and server disagree about the protocol.
    Protocol,
    /// The client sent a frame larger than the server accepts.
    FrameTooLarge,
    /// Another connection of this device took over.
    SessionReplaced,
    /// The server refused the connection permanently.
    Rejected,
}

/// The connection state.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Enum)]
pub enum ConnectionState {
    /// Not started.
    Idle,
    /// Getting a token, opening the socket or authenticating.
    Connecting {
        /// Attempt number in the current series.
        attempt: u32,
    },
    /// Notifications flow.
    Connected,
    /// Waiting before the next attempt.
    Reconnecting {
        /// The attempt that will follow.
        attempt: u32,
        /// How long the wait is, ms.
        delay_ms: u64,
        /// Why the last connection or attempt ended.
        reason: String,
    },
    /// Deliberately disconnected (background, offline); resumes by itself.
    Suspended {
        /// Why.
        reason: SuspendReason,
    },
    /// Closed by the app.
    Closed,
    /// Stopped; the app must intervene.
    Failed {
        /// Category.
        reason: FailureReason,
        /// Detail.
        message: String,
    },
}

impl From<core::ConnectionState> for ConnectionState {
    fn from(s: core::ConnectionState) -> Self {
        match s {
            core::ConnectionState::Idle => ConnectionState::Idle,
            core::ConnectionState::Connecting { attempt } => ConnectionState::Connecting { attempt },
            core::ConnectionState::Connected => ConnectionState::Connected,
            core::ConnectionState::Reconnecting { attempt, delay, reason } => {
                ConnectionState::Reconnecting { attempt, delay_ms: delay.as_millis() as u64, reason }
            }
            core::ConnectionState::Suspended { reason } => ConnectionState::Suspended {
                reason: match reason {
                    core::SuspendReason::Background => SuspendReason::Background,
                    core::SuspendReason::Offline => SuspendReason::Offline,
                },
            },
            core::ConnectionState::Closed => ConnectionState::Closed,
            core::ConnectionState::Failed { reason, message } => ConnectionState::Failed {
                reason: match reason {
                    core::FailureReason::Unauthorized => FailureReason::Unauthorized,
                    core::FailureReason::TokenProvider => FailureReason::TokenProvider,
                    core::FailureReason::Protocol => FailureReason::Protocol,
                    core::FailureReason::FrameTooLarge => FailureReason::FrameTooLarge,
                    core::FailureReason::SessionReplaced => FailureReason::SessionReplaced,
                    core::FailureReason::Rejected => FailureReason::Rejected,
                },
                message,
            },
        }
    }
}

/// Why a stream could not be resumed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, uniffi::Enum)]
pub enum GapReason {
    /// The server lost the stream's history.
    EpochChanged,
    /// Notifications were evicted from the server's replay buffer.
    OutOfBuffer,
    /// The client's position is beyond the stream.
    AheadOfStream,
}

/// How a stream continued after (re)subscribing.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Enum)]
pub enum Continuity {
    /// First subscription: delivery starts now.
    Fresh,
    /// Resumed from the cursor; `replayed` notifications were delivered.
    Resumed {
        /// How many.
        replayed: u64,
    },
    /// Notifications were lost: refetch the stream's state from your API.
    Gap {
        /// Why.
        reason: GapReason,
        /// How many, when known.
        missed: Option<u64>,
        /// How many notifications the server still held and delivers right after this event (each once).
        replayed: u64,
    },
}

impl From<core::Continuity> for Continuity {
    fn from(c: core::Continuity) -> Self {
        match c {
            core::Continuity::Fresh => Continuity::Fresh,
            core::Continuity::Resumed { replayed } => Continuity::Resumed { replayed },
            core::Continuity::Gap { reason, missed, replayed } => Continuity::Gap {
                reason: match reason {
                    proto::GapReason::EpochChanged => GapReason::EpochChanged,
                    proto::GapReason::OutOfBuffer => GapReason::OutOfBuffer,
                    proto::GapReason::AheadOfStream => GapReason::AheadOfStream,
                },
                missed,
                replayed,
            },
        }
    }
}

/// Everything a client emits, in order (see `TidingsClient::next_event`).
#[allow(clippy::large_enum_variant)] // built once per event and lowered across the FFI at once: UniFFI takes no Box
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Enum)]
pub enum TidingsEvent {
    /// A notification, seen for the first time on any path.
    Notification {
        /// It.
        notification: Notification,
    },
    /// Several informational notifications of one group.
    Digest {
        /// It.
        digest: Digest,
    },
    /// The connection state changed.
    StateChanged {
        /// The new state.
        state: ConnectionState,
    },
    /// How a stream continued after (re)subscribing; on `Gap`, refetch that stream's state.
    Continuity {
        /// The stream.
        stream: String,
        /// How.
        continuity: Continuity,
    },
    /// The server refused a subscription (`code`: `forbidden`, `bad_request`); it is not retried.
    SubscriptionFailed {
        /// The stream.
        stream: String,
        /// Why.
        code: String,
        /// Detail, for logs.
        message: String,
    },
    /// The server stored this device's push address.
    PushRegistered {
        /// The platform.
        platform: PushPlatform,
    },
    /// The server refused this device's push address (`bad_request`: it is forgotten, register a valid one).
    PushRegistrationFailed {
        /// The platform.
        platform: PushPlatform,
        /// Why (`bad_request`, `try_again_later`).
        code: String,
        /// Detail, naming the member that is wrong.
        message: String,
    },
    /// The inbox counts changed (newer counts arrived); `unread` is the badge.
    InboxCounts {
        /// The counts.
        counts: crate::inbox::InboxCounts,
    },
    /// The inbox view changed: read `inbox_items()`.
    InboxChanged,
}

impl From<core::Event> for TidingsEvent {
    fn from(e: core::Event) -> Self {
        match e {
            core::Event::Notification(n) => TidingsEvent::Notification { notification: (*n).into() },
            core::Event::Digest(d) => TidingsEvent::Digest { digest: (*d).into() },
            core::Event::State(s) => TidingsEvent::StateChanged { state: s.into() },
            core::Event::Continuity { stream, continuity } => {
                TidingsEvent::Continuity { stream, continuity: continuity.into() }
            }
            core::Event::SubscriptionFailed { stream, code, message } => {
                TidingsEvent::SubscriptionFailed { stream, code: code.as_str().to_string(), message }
            }
            core::Event::PushRegistered { platform } => TidingsEvent::PushRegistered { platform: platform.into() },
            core::Event::PushRegistrationFailed { platform, code, message } => TidingsEvent::PushRegistrationFailed {
                platform: platform.into(),
                code: code.as_str().to_string(),
                message,
            },
            core::Event::InboxCounts(counts) => TidingsEvent::InboxCounts { counts: counts.into() },
            core::Event::InboxChanged => TidingsEvent::InboxChanged,
            // `Event` is non_exhaustive for apps; this crate is built with the core of its own workspace, and maps
            // every kind that core has (a new kind must get its own variant here, with its Swift and Kotlin form).
            other => unreachable!("tidings-ffi does not map this kind of core event: {other:?}"),
        }
    }
}

/// A push service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, uniffi::Enum)]
pub enum PushPlatform {
    /// APNs, production.
    Apns,
    /// APNs, development builds.
    ApnsSandbox,
    /// Firebase Cloud Messaging.
    Fcm,
    /// Web Push.
    WebPush,
}

impl From<PushPlatform> for proto::PushPlatform {
    fn from(p: PushPlatform) -> Self {
        match p {
            PushPlatform::Apns => proto::PushPlatform::Apns,
            PushPlatform::ApnsSandbox => proto::PushPlatform::ApnsSandbox,
            PushPlatform::Fcm => proto::PushPlatform::Fcm,
            PushPlatform::WebPush => proto::PushPlatform::WebPush,
        }
    }
}

impl From<proto::PushPlatform> for PushPlatform {
    fn from(p: proto::PushPlatform) -> Self {
        match p {
            proto::PushPlatform::Apns => PushPlatform::Apns,
            proto::PushPlatform::ApnsSandbox => PushPlatform::ApnsSandbox,
            proto::PushPlatform::Fcm => PushPlatform::Fcm,
            proto::PushPlatform::WebPush => PushPlatform::WebPush,
        }
    }
}

/// What to do with a push payload.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Enum)]
pub enum PushOutcome {
    /// First sighting: show it.
    Show {
        /// The notification.
        notification: Notification,
    },
    /// Already delivered on another path: do not show it.
    Duplicate {
        /// Its id.
        id: String,
    },
    /// A digest or quiet-hours summary with something new in it: show it (its ids are seen from now on).
    Summary {
        /// The summary.
        summary: PushSummary,
    },
    /// The push was too large to carry the notification and fetching it failed: show its title.
    ShowTitle {
        /// The notification id.
        id: String,
        /// Its title (none: show a generic text).
        title: Option<String>,
        /// Why the fetch failed.
        reason: String,
    },
}

impl From<core::PushOutcome> for PushOutcome {
    fn from(o: core::PushOutcome) -> Self {
        match o {
            core::PushOutcome::Show(n) => PushOutcome::Show { notification: n.into() },
            core::PushOutcome::Duplicate { id } => PushOutcome::Duplicate { id },
            core::PushOutcome::Summary(s) => PushOutcome::Summary { summary: s.into() },
            core::PushOutcome::ShowTitle { id, title, reason } => PushOutcome::ShowTitle { id, title, reason },
            // The native client resolves fetches before it answers; never seen here.
            core::PushOutcome::Fetch { id, title } => {
                PushOutcome::ShowTitle { id, title, reason: "not fetched".into() }
            }
        }
    }
}

/// Which summary a push is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, uniffi::Enum)]
pub enum SummaryKind {
    /// Informational notifications of one group, collected over a digest window.
    Digest,
    /// What was held during the user's quiet hours.
    QuietHours,
}

/// Several notifications in one push (protocol §11.1).
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct PushSummary {
    /// Digest or quiet hours.
    pub kind: SummaryKind,
    /// The digest's group.
    pub group: Option<String>,
    /// How many notifications it stands for.
    pub count: u64,
    /// The ids, newest first (at most 20).
    pub ids: Vec<String>,
    /// The newest one's title.
    pub title: Option<String>,
}

impl From<proto::PushSummary> for PushSummary {
    fn from(s: proto::PushSummary) -> Self {
        PushSummary {
            kind: match s.kind {
                proto::SummaryKind::Digest => SummaryKind::Digest,
                proto::SummaryKind::QuietHours => SummaryKind::QuietHours,
            },
            group: s.group,
            count: s.count,
            ids: s.ids,
            title: s.title,
        }
    }
}

/// A delivery channel a preference applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, uniffi::Enum)]
pub enum Channel {
    /// Live delivery over the socket (and replay).
    Socket,
    /// Push notifications, digests and quiet-hours summaries.
    Push,
}

/// What a preference rule is about.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Enum)]
pub enum PreferenceSelector {
    /// Notifications whose `type` matches (exact, or a prefix ending in `*`).
    Type {
        /// The pattern.
        pattern: String,
    },
    /// Notifications published to a topic that matches.
    Topic {
        /// The pattern.
        pattern: String,
    },
}

/// One preference: a channel on or off for a type or topic. Deny wins; `critical` notifications ignore them.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct PreferenceRule {
    /// What it is about.
    pub selector: PreferenceSelector,
    /// Which channel.
    pub channel: Channel,
    /// On or off.
    pub enabled: bool,
}

/// The user's preferences as the server holds them.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct Preferences {
    /// The rules.
    pub rules: Vec<PreferenceRule>,
    /// Counts the changes of the user's settings.
    pub version: u64,
    /// When they last changed, ms since the Unix epoch.
    pub updated_at_ms: u64,
}

/// One weekly quiet range in the user's local time.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct QuietRange {
    /// `mon` … `sun`.
    pub day: String,
    /// `HH:MM`, inclusive.
    pub start: String,
    /// `HH:MM`, exclusive (`24:00` allowed; at or before `start`: the next day).
    pub end: String,
}

/// Quiet hours: an IANA time zone and weekly ranges.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct QuietHours {
    /// IANA time zone, e.g. `Europe/Berlin`.
    pub time_zone: String,
    /// The ranges.
    pub ranges: Vec<QuietRange>,
}

/// The user's quiet hours as the server holds them.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct QuietHoursSettings {
    /// The quiet hours, if any.
    pub quiet_hours: Option<QuietHours>,
    /// Counts the changes of the user's settings.
    pub version: u64,
    /// When they last changed, ms since the Unix epoch.
    pub updated_at_ms: u64,
}

/// Where a push handler without a running client (the Notification Service Extension, an FCM service started
/// without the app) reaches the server: to fetch a notification too large for its push, and to ack.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct PushServer {
    /// The server's WebSocket URL (or its HTTP base URL).
    pub url: String,
    /// A token of the signed-in user.
    pub token: String,
    /// Extra trusted certificate authorities (PEM).
    #[uniffi(default = [])]
    pub extra_root_certificates: Vec<String>,
}

impl From<PushServer> for tidings_core::native::PushServer {
    fn from(s: PushServer) -> Self {
        tidings_core::native::PushServer {
            url: s.url,
            token: s.token,
            extra_root_certificates: s.extra_root_certificates,
        }
    }
}

impl From<proto::api::PreferenceRule> for PreferenceRule {
    fn from(r: proto::api::PreferenceRule) -> Self {
        PreferenceRule {
            selector: match r.selector {
                proto::api::Selector::Type(pattern) => PreferenceSelector::Type { pattern },
                proto::api::Selector::Topic(pattern) => PreferenceSelector::Topic { pattern },
            },
            channel: match r.channel {
                proto::api::Channel::Socket => Channel::Socket,
                proto::api::Channel::Push => Channel::Push,
            },
            enabled: r.enabled,
        }
    }
}

impl From<PreferenceRule> for proto::api::PreferenceRule {
    fn from(r: PreferenceRule) -> Self {
        proto::api::PreferenceRule {
            selector: match r.selector {
                PreferenceSelector::Type { pattern } => proto::api::Selector::Type(pattern),
                PreferenceSelector::Topic { pattern } => proto::api::Selector::Topic(pattern),
            },
            channel: match r.channel {
                Channel::Socket => proto::api::Channel::Socket,
                Channel::Push => proto::api::Channel::Push,
            },
            enabled: r.enabled,
        }
    }
}

impl From<proto::api::Preferences> for Preferences {
    fn from(p: proto::api::Preferences) -> Self {
        Preferences {
            rules: p.rules.into_iter().map(Into::into).collect(),
            version: p.version,
            updated_at_ms: p.updated_at,
        }
    }
}

impl From<proto::api::QuietHours> for QuietHours {
    fn from(q: proto::api::QuietHours) -> Self {
        QuietHours {
            time_zone: q.time_zone,
            ranges: q.ranges.into_iter().map(|r| QuietRange { day: r.day, start: r.start, end: r.end }).collect(),
        }
    }
}

impl From<QuietHours> for proto::api::QuietHours {
    fn from(q: QuietHours) -> Self {
        proto::api::QuietHours {
            time_zone: q.time_zone,
            ranges: q
                .ranges
                .into_iter()
                .map(|r| proto::api::QuietRange { day: r.day, start: r.start, end: r.end })
                .collect(),
        }
    }
}

impl From<proto::api::QuietHoursSettings> for QuietHoursSettings {
    fn from(q: proto::api::QuietHoursSettings) -> Self {
        QuietHoursSettings {
            quiet_hours: q.quiet_hours.map(Into::into),
            version: q.version,
            updated_at_ms: q.updated_at,
        }
    }
}

/// Network reachability, as the platform reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, uniffi::Enum)]
pub enum NetworkStatus {
    /// The network came back: reconnect at once.
    Available,
    /// No network: stop trying until it comes back.
    Unavailable,
    /// The network changed (Wi-Fi ↔ cellular): check the link at once.
    Changed,
}

impl From<NetworkStatus> for core::NetworkEvent {
    fn from(n: NetworkStatus) -> Self {
        match n {
            NetworkStatus::Available => core::NetworkEvent::Available,
            NetworkStatus::Unavailable => core::NetworkEvent::Unavailable,
            NetworkStatus::Changed => core::NetworkEvent::Changed,
        }
    }
}

/// Counters, for diagnostics and metrics.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct ClientStats {
    /// Sockets opened (attempts).
    pub connection_attempts: u64,
    /// Connections that authenticated.
    pub connections: u64,
    /// Token requests made to the token provider.
    pub token_fetches: u64,
    /// Notifications received on sockets.
    pub notifications_received: u64,
    /// Notifications delivered to the app.
    pub delivered: u64,
    /// Duplicates dropped (any path).
    pub duplicates_dropped: u64,
    /// Of those, live on the socket.
    pub duplicates_socket: u64,
    /// Of those, replayed after a (re)subscription.
    pub duplicates_replay: u64,
    /// Of those, push payloads (not shown).
    pub duplicates_push: u64,
    /// Digests delivered.
    pub digests: u64,
    /// Notifications delivered inside digests.
    pub digested: u64,
    /// Push payloads ingested.
    pub push_ingested: u64,
    /// Gaps reported.
    pub gaps: u64,
    /// Subscriptions answered `fresh`.
    pub fresh: u64,
    /// Subscriptions answered `resumed`.
    pub resumed: u64,
    /// Subscriptions followed by a replay.
    pub replays: u64,
    /// Notifications replayed, in all.
    pub replayed: u64,
    /// The largest replay.
    pub replay_max: u64,
    /// Reconnections by reason: `handshake_failed`, `connect_timeout`, `connection_lost`, `server_closed`,
    /// `heartbeat_timeout`, `server_error`, `undecodable`, `token_refresh` (every reason is present).
    pub reconnects: std::collections::HashMap<String, u64>,
    /// Round-trip measurements taken (`auth` → `welcome`, heartbeat echoes).
    pub rtt_samples: u64,
    /// The latest round trip, in microseconds.
    pub rtt_last_micros: Option<u64>,
    /// The smoothed round trip (7/8 previous + 1/8 latest), in microseconds.
    pub rtt_smoothed_micros: Option<u64>,
    /// The smallest round trip, in microseconds.
    pub rtt_min_micros: Option<u64>,
}

impl From<core::Stats> for ClientStats {
    fn from(s: core::Stats) -> Self {
        ClientStats {
            connection_attempts: s.connection_attempts,
            connections: s.connections,
            token_fetches: s.token_fetches,
            notifications_received: s.notifications_received,
            delivered: s.delivered,
            duplicates_dropped: s.duplicates_dropped + s.stale_dropped,
            duplicates_socket: s.duplicates_socket,
            duplicates_replay: s.duplicates_replay,
            duplicates_push: s.duplicates_push,
            digests: s.digests,
            digested: s.digested,
            push_ingested: s.push_ingested,
            gaps: s.gaps,
            fresh: s.fresh,
            resumed: s.resumed,
            replays: s.replays,
            replayed: s.replayed,
            replay_max: s.replay_max,
            reconnects: s.reconnects.by_reason().into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
            rtt_samples: s.rtt.samples,
            rtt_last_micros: s.rtt.last.map(|d| d.as_micros() as u64),
            rtt_smoothed_micros: s.rtt.smoothed.map(|d| d.as_micros() as u64),
            rtt_min_micros: s.rtt.min.map(|d| d.as_micros() as u64),
        }
    }
}
