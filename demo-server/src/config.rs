//! Server configuration.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

/// The wall clock push delivery reads (ms since the Unix epoch): quiet hours are wall-clock rules, and pending
/// pushes outlive a process. Tests shift it ([`WallClock::shifted`]) to stand at the edge of a quiet period.
#[derive(Clone)]
pub struct WallClock(Arc<dyn Fn() -> u64 + Send + Sync>);

impl WallClock {
    /// The system clock.
    pub fn system() -> Self {
        WallClock(Arc::new(crate::util::now_ms))
    }

    /// The system clock plus whatever `offset_ms` holds when read.
    pub fn shifted(offset_ms: Arc<AtomicI64>) -> Self {
        WallClock(Arc::new(move || {
            let now = crate::util::now_ms() as i64;
            u64::try_from(now.saturating_add(offset_ms.load(Ordering::SeqCst))).unwrap_or(0)
        }))
    }

    /// Now, in ms since the Unix epoch.
    pub fn now_ms(&self) -> u64 {
        (self.0)()
    }
}

impl Default for WallClock {
    fn default() -> Self {
        WallClock::system()
    }
}

impl fmt::Debug for WallClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WallClock({})", self.now_ms())
    }
}

/// JWT secret used by `--demo` and [`ServerConfig::demo`]. Never use it in production.
pub const DEMO_JWT_SECRET: &str = "tidings-dev-secret";
/// API key used by `--demo` and [`ServerConfig::demo`]. Never use it in production.
pub const DEMO_API_KEY: &str = "tidings-dev-key";
/// JWT secret of [`ServerConfig::for_tests`].
pub const TEST_JWT_SECRET: &str = "tidings-test-secret-0123456789abcdef";
/// API key of [`ServerConfig::for_tests`].
pub const TEST_API_KEY: &str = "tidings-test-key";

/// The longest `push_after` (operator default or per publish): a day.
pub const MAX_PUSH_AFTER: Duration = Duration::from_secs(24 * 3600);
/// The longest digest window: a day.
pub const MAX_DIGEST_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// The default data directory of the SQLite store: `tidings-data` in the working directory.
pub const DEFAULT_DATA_DIR: &str = "tidings-data";

/// Where the server keeps its data.
#[derive(Clone, PartialEq, Eq)]
pub enum StoreConfig {
    /// In process memory: nothing survives the process (every stream is in a new epoch after a restart). For
    /// tests and benchmarks.
    Memory,
    /// The embedded SQLite database `tidings.db` in a data directory: everything acknowledged survives a crash
    /// of the process and, with [`Synchronous::Full`], of the machine.
    Sqlite {
        /// The directory (created if missing) holding `tidings.db` and its lock file.
        data_dir: PathBuf,
        /// What a commit waits for.
        synchronous: Synchronous,
    },
    /// A PostgreSQL database shared by every server process of a deployment (`--store postgres
    /// --database-url …`): everything acknowledged survives the loss of any server process, and whatever
    /// PostgreSQL's own durability covers.
    Postgres {
        /// The database: a `postgres://user:password@host:port/database` URL (or a libpq key/value string).
        url: String,
    },
}

impl std::fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreConfig::Memory => f.write_str("Memory"),
            StoreConfig::Sqlite { data_dir, synchronous } => {
                f.debug_struct("Sqlite").field("data_dir", data_dir).field("synchronous", synchronous).finish()
            }
            // The URL may hold a password: logged without it.
            StoreConfig::Postgres { url } => f.debug_struct("Postgres").field("url", &redact_password(url)).finish(),
        }
    }
}

/// A database URL with its password (if any) replaced by `***`.
pub(crate) fn redact_password(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        // A key/value string: `password=…` up to the next space.
        return url
            .split(' ')
            .map(|kv| if kv.starts_with("password=") { "password=***" } else { kv })
            .collect::<Vec<_>>()
            .join(" ");
    };
    let rest = &url[scheme_end..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => match rest[..at].find(':') {
            Some(colon) => format!("{}{}:***{}", &url[..scheme_end], &rest[..colon], &rest[at..]),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

/// SQLite's `synchronous` setting: what a commit (and so a `2xx` to a publish) waits for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Synchronous {
    /// Every commit is synced to the disk (`fsync` of the write-ahead log) before it is acknowledged: an
    /// acknowledged publish survives a crash of the process, of the operating system and a power loss.
    #[default]
    Full,
    /// Commits reach the operating system but are synced to the disk only at checkpoints: an acknowledged publish
    /// survives a crash of the process, but the last ones may be lost in an OS crash or power loss. After such a
    /// loss the server starts a new epoch, so clients are told of the gap instead of skipping notifications.
    Normal,
}

impl Synchronous {
    /// `full` or `normal`.
    pub fn as_str(self) -> &'static str {
        match self {
            Synchronous::Full => "full",
            Synchronous::Normal => "normal",
        }
    }
}

/// Everything the server can be configured with. Build one with [`ServerConfig::new`],
/// [`ServerConfig::for_tests`] or [`ServerConfig::demo`] and adjust the public fields.
#[derive(Clone)]
pub struct ServerConfig {
    /// Address to listen on (`127.0.0.1:0` picks a free port).
    pub bind: SocketAddr,
    /// HS256 secret that client tokens are signed with (protocol §8).
    pub jwt_secret: String,
    /// Key that publishers and operators send as `Authorization: Bearer <key>` (protocol §9): a key with every
    /// scope. May be empty when [`ServerConfig::api_keys`] has keys.
    pub api_key: String,
    /// Keys with scopes (`--api-keys-file`), besides `api_key`.
    pub api_keys: Vec<crate::api_keys::ApiKey>,
    /// Failed authentications (client tokens and API keys) allowed per client address: beyond it the address gets
    /// `429` / `rate_limited` with a retry hint until it is within the rate again.
    pub auth_failure_limit: crate::limits::Rate,
    /// New WebSocket connections and SSE streams allowed per client address (`429` with `Retry-After` beyond it).
    pub connection_rate_limit: crate::limits::Rate,
    /// Proxies whose `X-Forwarded-For` is believed: the client address of a request from one of them is the last
    /// address in that header that is not a trusted proxy. Empty: the peer address is the client address.
    pub trusted_proxies: Vec<crate::limits::IpNet>,
    /// Terminate TLS with this certificate and key (`None`: plain HTTP, e.g. behind a terminating proxy).
    pub tls: Option<crate::tls::TlsConfig>,
    /// Heartbeat interval advertised in `welcome`. The server sends a heartbeat after this long without sending
    /// anything and closes with `4010` after twice this long without receiving anything.
    pub heartbeat_interval: Duration,
    /// Time a new connection has to send its `auth` frame (`4005` otherwise). The protocol fixes 10 s; tests
    /// shorten it.
    pub auth_timeout: Duration,
    /// Leeway for a token's `nbf` claim, to absorb clock skew between the token issuer and this server. `exp`
    /// is enforced without leeway. Keep it within 0–5 s.
    pub nbf_leeway: Duration,
    /// Most notifications kept per stream for replay.
    pub replay_max_items: usize,
    /// Oldest notification kept per stream for replay.
    pub replay_max_age: Duration,
    /// Where the server keeps its data (default: SQLite in [`DEFAULT_DATA_DIR`]).
    pub store: StoreConfig,
    /// How long the SQLite store keeps `persistent` notifications (they are replayed within the replay limits
    /// like `bufferable` ones, and kept beyond them for this long).
    pub persistent_retention: Duration,
    /// How long the SQLite store keeps acks.
    pub ack_retention: Duration,
    /// How long inbox items are kept (protocol §13.6).
    pub inbox_retention: Duration,
    /// Most items one user's inbox holds; beyond it the oldest are removed (protocol §13.6).
    pub inbox_max_items: usize,
    /// Most live notification frames queued for one connection before it is closed with `4014`
    /// (`slow_consumer`). Replies and replayed notifications come on top, so a replay is never cut short.
    pub outbound_queue_limit: usize,
    /// How long a caller-supplied publish `id` is remembered for idempotency.
    pub idempotency_window: Duration,
    /// Hard cap on remembered idempotency keys; beyond it the oldest are forgotten early.
    pub idempotency_max_keys: usize,
    /// Acks are kept for at most this many notification ids (the oldest ids are forgotten first).
    pub acks_max_ids: usize,
    /// Most acks (devices) kept per notification id.
    pub acks_max_per_id: usize,
    /// Close a connection with `4008` when it sends more than this many frames per second for
    /// `rate_limit_seconds` consecutive seconds. `0` disables the limit.
    pub rate_limit_frames_per_sec: u32,
    /// See `rate_limit_frames_per_sec`.
    pub rate_limit_seconds: u32,
    /// Refuse connections beyond this many (`try_again_later`, close `4013`). `None`: no limit.
    pub max_connections: Option<usize>,
    /// WebSocket read buffer per connection. tungstenite allocates it up front for every connection and its
    /// default is 128 KiB, which would dominate the memory of idle connections. Client frames are small
    /// (an `auth` frame with its token is well under 2 KiB) and a larger frame grows the buffer on demand up
    /// to the 16 KiB client frame limit, so a few KiB is plenty.
    pub ws_read_buffer_size: usize,
    /// Bytes of outgoing frames tungstenite collects before it writes to the socket. The connection flushes
    /// once per drained batch anyway; this only bounds how much is copied before a write system call. The
    /// buffer grows only while a connection actually sends, it is not allocated up front.
    pub ws_write_buffer_size: usize,
    /// Upper bound of tungstenite's write buffer (it only grows past `ws_write_buffer_size` while the socket
    /// does not accept data). Raised to `ws_write_buffer_size` plus one maximal server frame if lower.
    pub ws_max_write_buffer_size: usize,
    /// A write to a connection that makes no progress for this long ends the connection (a peer that stopped
    /// reading and whose socket buffer is full).
    pub write_timeout: Duration,
    /// After sending a closing `error` and close frame, wait this long for the client's close reply.
    pub close_linger: Duration,
    /// Heartbeat comments on Server-Sent Events responses are sent after this long without an event (below the 60 s
    /// read timeout proxies such as nginx apply by default).
    pub sse_heartbeat: Duration,
    /// The `retry:` an SSE response advertises: how long `EventSource` waits before reconnecting.
    pub sse_retry: Duration,
    /// How long an SSE ticket (`POST /v1/sse/tickets`) may be used to open a stream.
    pub sse_ticket_ttl: Duration,
    /// On shutdown, connections get this long to receive their `server_shutdown` close before they are cut.
    pub shutdown_grace: Duration,
    /// Largest accepted body of `POST /v1/publish` and other JSON endpoints, in bytes.
    pub max_body_bytes: usize,
    /// Largest accepted body of `POST /v1/publish/batch`, in bytes.
    pub max_batch_body_bytes: usize,
    /// Demo mode: the development secret and API key (unless others are given), `POST /v1/demo/token`, and the
    /// demo publisher (unless [`ServerConfig::demo_publisher`] is off).
    pub demo: bool,
    /// In demo mode, run the demo publisher (and its subscriber, the native client signed in as `alice`). Off:
    /// demo mode serves only its development defaults and `POST /v1/demo/token`, and nothing is published but
    /// what you publish.
    pub demo_publisher: bool,
    /// Interval of the demo publisher.
    pub demo_publish_interval: Duration,
    /// A directory served at `/` as static files (the browser demo page and the npm package); `None`: no
    /// static files.
    pub web_root: Option<std::path::PathBuf>,
    /// The application server's VAPID public key (RFC 8292): the uncompressed P-256 point, base64url. Served at
    /// `GET /v1/push/vapid-public-key`, where browsers' service workers read it to subscribe to Web Push; its
    /// private half is [`crate::push::PushConfig::vapid_private_key`]. `None`: the endpoint answers
    /// `404 not_configured`.
    pub vapid_public_key: Option<String>,
    /// Push providers (Web Push signing key, APNs, FCM), checked at startup. Devices whose provider is not
    /// configured are not pushed to.
    pub push: crate::push::PushConfig,
    /// The operator's push defaults: how long an `important` notification waits for an ack before it is pushed
    /// to a user with a live session, and the digest window of `informational` ones. Publishers override
    /// `push_after` per publish.
    pub push_policy: crate::planner::Policy,
    /// How the push senders retry (attempts per send, backoff, the longest `Retry-After` waited for in place;
    /// longer ones reschedule the push).
    pub push_retry: crate::push::RetryPolicy,
    /// A push that the provider keeps answering "try again later" is given up after this many rescheduled
    /// attempts.
    pub push_max_reschedules: u32,
    /// The clock push delivery reads.
    pub clock: WallClock,
    /// Redis (`--redis-url`): with it, the server is one of several processes on that Redis — fan-out,
    /// presence and control commands go through it (see [`crate::broker_redis`]). Without it, the server is a
    /// single process.
    pub redis: Option<crate::broker_redis::RedisConfig>,
}

impl ServerConfig {
    /// Default of [`ServerConfig::ws_read_buffer_size`].
    pub const DEFAULT_WS_READ_BUFFER_BYTES: usize = 1024;
    /// Default of [`ServerConfig::ws_write_buffer_size`].
    pub const DEFAULT_WS_WRITE_BUFFER_BYTES: usize = 4 * 1024;

    /// A configuration with the protocol's defaults, listening on `bind`.
    pub fn new(bind: SocketAddr, jwt_secret: impl Into<String>, api_key: impl Into<String>) -> Self {
        ServerConfig {
            bind,
            jwt_secret: jwt_secret.into(),
            api_key: api_key.into(),
            api_keys: Vec::new(),
            auth_failure_limit: crate::limits::Rate { burst: 10, per_minute: 10 },
            connection_rate_limit: crate::limits::Rate { burst: 100, per_minute: 1200 },
            trusted_proxies: Vec::new(),
            tls: None,
            heartbeat_interval: Duration::from_secs(25),
            auth_timeout: Duration::from_secs(10),
            nbf_leeway: Duration::from_secs(5),
            replay_max_items: 1000,
            replay_max_age: Duration::from_secs(24 * 60 * 60),
            store: StoreConfig::Sqlite { data_dir: PathBuf::from(DEFAULT_DATA_DIR), synchronous: Synchronous::Full },
            persistent_retention: Duration::from_secs(30 * 24 * 60 * 60),
            ack_retention: Duration::from_secs(7 * 24 * 60 * 60),
            inbox_retention: Duration::from_secs(90 * 24 * 60 * 60),
            inbox_max_items: 10_000,
            outbound_queue_limit: 8192,
            idempotency_window: Duration::from_secs(10 * 60),
            idempotency_max_keys: 1_000_000,
            acks_max_ids: 100_000,
            acks_max_per_id: 10_000,
            rate_limit_frames_per_sec: 100,
            rate_limit_seconds: 5,
            max_connections: None,
            ws_read_buffer_size: Self::DEFAULT_WS_READ_BUFFER_BYTES,
            ws_write_buffer_size: Self::DEFAULT_WS_WRITE_BUFFER_BYTES,
            ws_max_write_buffer_size: 256 * 1024,
            write_timeout: Duration::from_secs(30),
            close_linger: Duration::from_secs(2),
            sse_heartbeat: Duration::from_secs(15),
            sse_retry: Duration::from_secs(2),
            sse_ticket_ttl: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(5),
            max_body_bytes: 1024 * 1024,
            max_batch_body_bytes: 32 * 1024 * 1024,
            demo: false,
            demo_publisher: true,
            demo_publish_interval: Duration::from_secs(2),
            web_root: None,
            vapid_public_key: None,
            push: crate::push::PushConfig::default(),
            push_policy: crate::planner::Policy::default(),
            push_retry: crate::push::RetryPolicy::default(),
            push_max_reschedules: 10,
            clock: WallClock::system(),
            redis: None,
        }
    }

    /// Demo mode on `bind`, with the documented development secret ([`DEMO_JWT_SECRET`]) and API key
    /// ([`DEMO_API_KEY`]).
    pub fn demo(bind: SocketAddr) -> Self {
        let mut config = ServerConfig::new(bind, DEMO_JWT_SECRET, DEMO_API_KEY);
        config.demo = true;
        config
    }

    /// For tests and benchmarks: `127.0.0.1:0` (a free port), [`TEST_JWT_SECRET`] and [`TEST_API_KEY`], the
    /// memory store, a short `close_linger` (250 ms) so that shutting down a server whose test clients no longer
    /// read is quick, and no per-address limits (every test client and benchmark connection comes from
    /// 127.0.0.1); otherwise the defaults.
    pub fn for_tests() -> Self {
        let mut config = ServerConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)), TEST_JWT_SECRET, TEST_API_KEY);
        config.close_linger = Duration::from_millis(250);
        config.store = StoreConfig::Memory;
        config.auth_failure_limit = crate::limits::Rate::UNLIMITED;
        config.connection_rate_limit = crate::limits::Rate::UNLIMITED;
        config
    }

    /// Checks the values that would make the server misbehave.
    pub fn validate(&self) -> Result<(), String> {
        if self.jwt_secret.is_empty() {
            return Err("the JWT secret must not be empty".into());
        }
        if self.api_key.is_empty() && self.api_keys.is_empty() {
            return Err("no API key: configure --api-key or --api-keys-file".into());
        }
        if self.heartbeat_interval < Duration::from_millis(10) {
            return Err("the heartbeat interval must be at least 10 ms".into());
        }
        if self.sse_heartbeat < Duration::from_millis(10) {
            return Err("the SSE heartbeat must be at least 10 ms".into());
        }
        if self.auth_timeout.is_zero() {
            return Err("the auth timeout must not be zero".into());
        }
        if self.nbf_leeway > Duration::from_secs(5) {
            return Err("the nbf leeway must be at most 5 s".into());
        }
        if self.replay_max_items == 0 {
            return Err("replay_max_items must be at least 1".into());
        }
        if self.inbox_max_items == 0 {
            return Err("inbox_max_items must be at least 1".into());
        }
        if self.outbound_queue_limit == 0 {
            return Err("the outbound queue limit must be at least 1".into());
        }
        if self.ws_read_buffer_size < 256 {
            return Err("the WebSocket read buffer must be at least 256 bytes".into());
        }
        if let Some(key) = &self.vapid_public_key {
            crate::webpush::check_p256_public_key(key).map_err(|e| format!("the VAPID public key {e}"))?;
        }
        self.push.load(self.vapid_public_key.as_deref())?;
        if self.push_policy.push_after > MAX_PUSH_AFTER {
            return Err(format!("push_after must be at most {} s", MAX_PUSH_AFTER.as_secs()));
        }
        if self.push_policy.digest_window.is_zero() || self.push_policy.digest_window > MAX_DIGEST_WINDOW {
            return Err(format!("the digest window must be 1 ms to {} s", MAX_DIGEST_WINDOW.as_secs()));
        }
        Ok(())
    }
}

impl fmt::Debug for ServerConfig {
    /// Like a derived `Debug`, with the secret and the API key redacted.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerConfig")
            .field("bind", &self.bind)
            .field("jwt_secret", &"<redacted>")
            .field("api_key", &"<redacted>")
            .field("api_keys", &self.api_keys)
            .field("auth_failure_limit", &self.auth_failure_limit)
            .field("connection_rate_limit", &self.connection_rate_limit)
            .field("trusted_proxies", &self.trusted_proxies)
            .field("tls", &self.tls)
            .field("heartbeat_interval", &self.heartbeat_interval)
            .field("auth_timeout", &self.auth_timeout)
            .field("nbf_leeway", &self.nbf_leeway)
            .field("replay_max_items", &self.replay_max_items)
            .field("replay_max_age", &self.replay_max_age)
            .field("store", &self.store)
            .field("persistent_retention", &self.persistent_retention)
            .field("ack_retention", &self.ack_retention)
            .field("inbox_retention", &self.inbox_retention)
            .field("inbox_max_items", &self.inbox_max_items)
            .field("outbound_queue_limit", &self.outbound_queue_limit)
            .field("idempotency_window", &self.idempotency_window)
            .field("idempotency_max_keys", &self.idempotency_max_keys)
            .field("acks_max_ids", &self.acks_max_ids)
            .field("acks_max_per_id", &self.acks_max_per_id)
            .field("rate_limit_frames_per_sec", &self.rate_limit_frames_per_sec)
            .field("rate_limit_seconds", &self.rate_limit_seconds)
            .field("max_connections", &self.max_connections)
            .field("ws_read_buffer_size", &self.ws_read_buffer_size)
            .field("ws_write_buffer_size", &self.ws_write_buffer_size)
            .field("ws_max_write_buffer_size", &self.ws_max_write_buffer_size)
            .field("write_timeout", &self.write_timeout)
            .field("close_linger", &self.close_linger)
            .field("sse_heartbeat", &self.sse_heartbeat)
            .field("sse_retry", &self.sse_retry)
            .field("sse_ticket_ttl", &self.sse_ticket_ttl)
            .field("shutdown_grace", &self.shutdown_grace)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("max_batch_body_bytes", &self.max_batch_body_bytes)
            .field("demo", &self.demo)
            .field("demo_publisher", &self.demo_publisher)
            .field("demo_publish_interval", &self.demo_publish_interval)
            .field("web_root", &self.web_root)
            .field("vapid_public_key", &self.vapid_public_key)
            .field("push", &self.push)
            .field("push_policy", &self.push_policy)
            .field("push_retry", &self.push_retry)
            .field("push_max_reschedules", &self.push_max_reschedules)
            .field("clock", &self.clock)
            .field("redis", &self.redis)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webpush::tests::KEY;

    #[test]
    fn the_vapid_public_key_is_checked_at_startup() {
        let mut config = ServerConfig::for_tests();
        config.vapid_public_key = Some(KEY.into());
        assert_eq!(config.validate(), Ok(()));
        // What a key must be is tested with the check (webpush.rs); here, that startup runs it.
        config.vapid_public_key = Some(KEY[..44].into());
        let e = config.validate().unwrap_err();
        assert_eq!(
            e,
            "the VAPID public key must be an uncompressed P-256 point (65 bytes starting with 0x04); got 33 bytes"
        );
    }
}
