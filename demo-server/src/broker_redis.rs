//! The Redis broker: several server processes on one Redis (fan-out, presence, control commands, a bounded
//! hot-history cache) and one durable store (history, offsets, epochs).
//!
//! # Design
//! - **Offsets come from the durable store.** [`RedisBroker::publish`] commits through the [`StreamStore`] exactly
//!   as the single-process broker does: a publish is answered `2xx` only once its notification is durable, and a
//!   Redis restart cannot reset offsets. The store's [`OnCommit`](crate::store::OnCommit) hands each committed
//!   frame to a writer task that runs **one Lua script** per frame in Redis: it appends the frame to the stream's
//!   hot-history cache (a sorted set keyed by offset, the epoch kept beside it in a hash, bounded by count and by a
//!   time to live since the last append) and `PUBLISH`es it, atomically.
//! - **Pub/sub is a hint.** Every process `SUBSCRIBE`s to the channels of the streams it has local subscribers of,
//!   and tracks per stream the last `(epoch, offset)` it handed to its handler. A frame at or below the last is
//!   dropped; the next one is handed on; a skip (or an epoch change) re-reads what was missed — from the cache
//!   when it holds every offset in between, else from the store — and hands it on in order. A periodic position
//!   check compares the store's head with the last offset handed on (twice in a row, so a frame still in flight is
//!   not taken for a lost one) and repairs a lost last message.
//! - **One path.** The process's own publications also come back through Redis, so one stream's frames reach the
//!   handler in one order whoever published them.
//! - **Reconnects.** Commands go through a [`ConnectionManager`] (it reconnects by itself). The pub/sub connection
//!   is owned by one task; when it breaks, the task reconnects with backoff, subscribes every channel again and
//!   re-reads every subscribed stream (a Redis restart may have lost messages and the cache).
//! - **History reads** (`history`, `page`) go to the store: it holds the whole retained history, so a replay never
//!   answers "gap" while the data exists. The cache serves the skip repairs.
//! - **Inbox frames** and **control commands** (session replacement, operator drops) go to every process over
//!   two shared channels; a drop or an unsubscribe asks every process for its count, answered on the control
//!   channel to the asking process (`RedisBroker::ask_everywhere`); **presence** lives in Redis with expiry
//!   (each process refreshes its connections' entries, a dead process's entries expire).
//! - **Readiness**: red when Redis does not answer, when the pub/sub connection is down, or when a probe published
//!   on this process's probe channel does not come back on its pub/sub connection in time (Centrifugo #1189).

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use futures_util::{FutureExt as _, StreamExt as _};
use redis::aio::{ConnectionManager, ConnectionManagerConfig, PubSubSink};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::broker::{Broker, BrokerEventHandler};
use crate::health::{CheckOutcome, ReadinessCheck};
use crate::model::{AppendOutcome, Committed, Delivery, EncodedFrame, HistoryRead, Position, Publication};
use crate::presence::{DevicePresence, UserPresence};
use crate::store::{BoxFuture, StoreError, StoredPage, StreamStore};

/// How a server reaches Redis (`--redis-url`).
#[derive(Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]`.
    pub url: String,
    /// The prefix of every key and channel (several deployments, or tests, can share one Redis).
    pub prefix: String,
    /// How often each subscribed stream's position is compared with the store's head.
    pub position_check: Duration,
    /// How long a presence entry lives without a refresh (a dead process's connections disappear after it).
    pub presence_ttl: Duration,
    /// Most notifications the hot-history cache keeps per stream.
    pub cache_max_items: usize,
    /// How long a stream's cache lives after its last append.
    pub cache_ttl: Duration,
    /// How long the readiness probe waits for its message to come back.
    pub probe_timeout: Duration,
}

impl RedisConfig {
    /// The defaults for `url`: prefix `tidings`, position check every 10 s, presence TTL 60 s, cache of 1000
    /// notifications per stream for a day, probe timeout 1 s.
    pub fn new(url: impl Into<String>) -> Self {
        RedisConfig {
            url: url.into(),
            prefix: "tidings".into(),
            position_check: Duration::from_secs(10),
            presence_ttl: Duration::from_secs(60),
            cache_max_items: 1000,
            cache_ttl: Duration::from_secs(24 * 3600),
            probe_timeout: Duration::from_secs(1),
        }
    }
}

impl fmt::Debug for RedisConfig {
    /// The URL's password is redacted.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let url = match (self.url.find("://"), self.url.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => format!("{}://***{}", &self.url[..scheme], &self.url[at..]),
            _ => self.url.clone(),
        };
        f.debug_struct("RedisConfig")
            .field("url", &url)
            .field("prefix", &self.prefix)
            .field("position_check", &self.position_check)
            .field("presence_ttl", &self.presence_ttl)
            .finish_non_exhaustive()
    }
}

/// A command one process sends the others (and itself) over the control channel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum Control {
    /// `device` of `user` connected as `session` at `connected_at`: an older session of the device elsewhere
    /// closes with 4011.
    Replace { origin: String, user: String, device: String, session: String, connected_at: u64 },
    /// The operator drop endpoint: every connection (or `user`'s) closes with 4015. With a `request`, each process
    /// answers with a [`Control::Count`] of the connections it closed.
    Drop {
        origin: String,
        user: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request: Option<String>,
    },
    /// The operator unsubscribe endpoint: every connection (or `user`'s) subscribed to `stream` drops it. With a
    /// `request`, each process answers with a [`Control::Count`] of its connections that had the stream.
    Unsubscribe {
        origin: String,
        user: Option<String>,
        stream: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request: Option<String>,
    },
    /// A process's answer to the `request` of process `to`: how many of its connections the command touched.
    Count { origin: String, to: String, request: String, count: u64 },
}

impl Control {
    fn origin(&self) -> &str {
        match self {
            Control::Replace { origin, .. }
            | Control::Drop { origin, .. }
            | Control::Unsubscribe { origin, .. }
            | Control::Count { origin, .. } => origin,
        }
    }

    /// The request id of a command that asks for counts.
    fn request(&self) -> Option<&str> {
        match self {
            Control::Drop { request, .. } | Control::Unsubscribe { request, .. } => request.as_deref(),
            Control::Replace { .. } | Control::Count { .. } => None,
        }
    }

    fn set_request(&mut self, id: String) {
        if let Control::Drop { request, .. } | Control::Unsubscribe { request, .. } = self {
            *request = Some(id);
        }
    }
}

/// What a command sent to every process with [`RedisBroker::ask_everywhere`] came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Tally {
    /// The sum of the other processes' counts that arrived.
    pub(crate) count: u64,
    /// The other processes that answered in time.
    pub(crate) answered: u64,
    /// Whether every process that received the command answered in time (`false` as well when Redis could not
    /// take the command: the other processes did not receive it).
    pub(crate) complete: bool,
}

/// How long [`RedisBroker::ask_everywhere`] waits for the other processes' answers.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);

/// What the node does with control commands, and the connections whose presence this process refreshes.
pub(crate) trait ControlHandler: Send + Sync + 'static {
    /// A control command from another process; for a drop or an unsubscribe, how many connections it touched.
    fn handle_control(&self, command: Control) -> Option<u64>;
    /// This process's authenticated connections: `(user, device, session, connected_at)`.
    fn local_sessions(&self) -> Vec<(String, String, String, u64)>;
}

/// Counters of the Redis broker (`tidings_redis_*` in `/metrics`).
#[derive(Debug, Default)]
pub struct RedisCounters {
    /// Frames handed to Redis (script runs and publishes).
    pub published: AtomicU64,
    /// Stream frames received on the pub/sub connection.
    pub received: AtomicU64,
    /// Received frames at or below the last offset handed on (dropped).
    pub duplicates: AtomicU64,
    /// Skips (or epoch changes) repaired by a re-read.
    pub skips_repaired: AtomicU64,
    /// Lost last messages found by the position check and repaired.
    pub position_repairs: AtomicU64,
    /// Notifications handed on by repairs (not by pub/sub).
    pub repaired_notifications: AtomicU64,
    /// Redis commands that failed.
    pub errors: AtomicU64,
    /// Pub/sub (re)connections.
    pub connects: AtomicU64,
}

fn inc(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// What the writer task sends to Redis.
enum Outgoing {
    /// A committed (or ephemeral) frame of a stream.
    Frame {
        stream: Arc<str>,
        epoch: Arc<str>,
        offset: Option<u64>,
        payload: String,
    },
    /// A plain `PUBLISH`.
    Publish {
        channel: String,
        payload: String,
    },
    /// Presence changes.
    PresenceAdd {
        user: String,
        session: String,
        value: String,
    },
    PresenceRemove {
        user: String,
        session: String,
        done: Option<oneshot::Sender<()>>,
    },
}

/// What the pub/sub task is asked to do.
enum Command {
    Subscribe {
        stream: Arc<str>,
        done: oneshot::Sender<Result<(), StoreError>>,
    },
    Unsubscribe {
        stream: Arc<str>,
    },
    /// The store's state of subscribed streams, read by the position check.
    Heads(Vec<(Arc<str>, Arc<str>, u64)>),
}

/// The position a process has handed on for one stream.
#[derive(Debug)]
struct Track {
    epoch: Arc<str>,
    last: u64,
    /// The head the previous position check saw beyond `last` (a repair follows if the next check still does).
    suspect: Option<u64>,
}

/// The append-and-publish script: KEYS = cache, meta; ARGV = epoch, offset, payload, max items, ttl secs, channel.
const APPEND_SCRIPT: &str = r"
local epoch = redis.call('HGET', KEYS[2], 'e')
if epoch ~= ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[2], 'e', ARGV[1])
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
local n = redis.call('ZCARD', KEYS[1])
local max = tonumber(ARGV[4])
if n > max then redis.call('ZREMRANGEBYRANK', KEYS[1], 0, n - max - 1) end
redis.call('EXPIRE', KEYS[1], ARGV[5])
redis.call('EXPIRE', KEYS[2], ARGV[5])
return redis.call('PUBLISH', ARGV[6], ARGV[3])
";

/// Presence add: KEYS = sessions hash, expiry zset, users zset; ARGV = session, value, expires at.
const PRESENCE_ADD: &str = r"
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
local top = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
redis.call('ZADD', KEYS[3], top[2], ARGV[4])
redis.call('PEXPIREAT', KEYS[1], top[2])
redis.call('PEXPIREAT', KEYS[2], top[2])
return 1
";

/// Presence remove: KEYS = sessions hash, expiry zset, users zset; ARGV = session, user.
const PRESENCE_REMOVE: &str = r"
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
if redis.call('ZCARD', KEYS[2]) == 0 then redis.call('ZREM', KEYS[3], ARGV[2]) end
return 1
";

/// Presence read with lazy expiry: KEYS = sessions hash, expiry zset; ARGV = now. Returns the live values.
const PRESENCE_READ: &str = r"
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
for _, s in ipairs(expired) do redis.call('HDEL', KEYS[1], s) end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
local live = redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. ARGV[1], '+inf')
if #live == 0 then return {} end
return redis.call('HMGET', KEYS[1], unpack(live))
";

/// The Redis broker of one process (see the module documentation).
pub struct RedisBroker {
    inner: Arc<Inner>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

struct Inner {
    config: RedisConfig,
    store: Arc<dyn StreamStore>,
    handler: OnceLock<Weak<dyn BrokerEventHandler>>,
    control: OnceLock<Weak<dyn ControlHandler>>,
    client: redis::Client,
    conn: ConnectionManager,
    /// This process's id (control commands name their origin; the probe channel is its own).
    process: String,
    outgoing: mpsc::UnboundedSender<Outgoing>,
    commands: mpsc::UnboundedSender<Command>,
    /// Whether the pub/sub connection is up.
    pubsub_up: AtomicBool,
    /// The streams the pub/sub task tracks (for the position check).
    subscribed: Mutex<HashSet<Arc<str>>>,
    /// Readiness probes waiting for their message.
    probes: Mutex<HashMap<String, oneshot::Sender<()>>>,
    /// Control requests of this process waiting for the other processes' counts.
    requests: Mutex<HashMap<String, mpsc::UnboundedSender<u64>>>,
    next_request: AtomicU64,
    append: redis::Script,
    presence_add: redis::Script,
    presence_remove: redis::Script,
    presence_read: redis::Script,
    counters: Arc<RedisCounters>,
}

impl fmt::Debug for RedisBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBroker").field("config", &self.inner.config).finish_non_exhaustive()
    }
}

impl Inner {
    fn key(&self, kind: &str, name: &str) -> String {
        // The hash tag keeps one stream's (or user's) keys in one cluster slot.
        format!("{}:{kind}:{{{name}}}", self.config.prefix)
    }

    fn stream_channel(&self, stream: &str) -> String {
        format!("{}:s:{stream}", self.config.prefix)
    }

    fn stream_of_channel<'a>(&self, channel: &'a str) -> Option<&'a str> {
        channel.strip_prefix(self.config.prefix.as_str())?.strip_prefix(":s:")
    }

    fn inbox_channel(&self) -> String {
        format!("{}:inbox", self.config.prefix)
    }

    fn control_channel(&self) -> String {
        format!("{}:control", self.config.prefix)
    }

    fn probe_channel(&self) -> String {
        format!("{}:probe:{}", self.config.prefix, self.process)
    }

    fn presence_users(&self) -> String {
        format!("{}:presence-users", self.config.prefix)
    }

    fn handler(&self) -> Option<Arc<dyn BrokerEventHandler>> {
        self.handler.get().and_then(Weak::upgrade)
    }

    fn error(&self, what: &str, e: &redis::RedisError) {
        inc(&self.counters.errors, 1);
        warn!(error = %e, "redis: {what} failed");
    }
}

/// A frame on a stream channel: `offset|epoch length|id length|epoch id frame` (`-` for no offset).
fn encode_payload(epoch: &str, offset: Option<u64>, id: &str, frame: &str) -> String {
    let offset = offset.map_or_else(|| "-".to_owned(), |o| o.to_string());
    format!("{offset}|{}|{}|{epoch}{id}{frame}", epoch.len(), id.len())
}

fn decode_payload(stream: &str, payload: &str) -> Option<Committed> {
    let mut parts = payload.splitn(4, '|');
    let offset = match parts.next()? {
        "-" => None,
        o => Some(o.parse().ok()?),
    };
    let epoch_len: usize = parts.next()?.parse().ok()?;
    let id_len: usize = parts.next()?.parse().ok()?;
    let rest = parts.next()?;
    let epoch = rest.get(..epoch_len)?;
    let id = rest.get(epoch_len..epoch_len + id_len)?;
    let frame = rest.get(epoch_len + id_len..)?;
    Some(Committed {
        id: Arc::from(id),
        stream: Arc::from(stream),
        epoch: Arc::from(epoch),
        offset,
        frame: EncodedFrame::new(frame.to_owned()),
    })
}

impl RedisBroker {
    /// An ephemeral publication without a key: placed in the streams' current epochs and published without a cache
    /// entry.
    async fn place_ephemeral(&self, publication: Arc<Publication>) -> Result<AppendOutcome, StoreError> {
        let inner = &self.inner;
        let mut deliveries = Vec::with_capacity(publication.streams.len());
        for stream in &publication.streams {
            let epoch = inner.store.epoch(stream).await?;
            let frame = publication.encode(stream, &epoch, None);
            let payload = encode_payload(&epoch, None, &publication.id, frame.as_str());
            let _ = inner.outgoing.send(Outgoing::Frame {
                stream: Arc::from(stream.as_str()),
                epoch: epoch.clone(),
                offset: None,
                payload,
            });
            deliveries.push(Delivery { stream: stream.clone(), epoch: epoch.to_string(), offset: None });
        }
        Ok(AppendOutcome::appended(deliveries))
    }

    /// Connects to Redis (failing when it cannot be reached now) and starts the writer, pub/sub and presence
    /// tasks.
    pub async fn connect(config: RedisConfig, store: Arc<dyn StreamStore>) -> anyhow::Result<Arc<RedisBroker>> {
        let client = redis::Client::open(config.url.as_str())
            .map_err(|e| anyhow::anyhow!("--redis-url {:?} is not a Redis URL: {e}", config.url))?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(1));
        let conn = tokio::time::timeout(
            Duration::from_secs(5),
            ConnectionManager::new_with_config(client.clone(), manager_config),
        )
        .await
        .map_err(|_| anyhow::anyhow!("cannot connect to Redis at {:?}: no answer within 5 s", redact(&config.url)))?
        .map_err(|e| anyhow::anyhow!("cannot connect to Redis at {:?}: {e}", redact(&config.url)))?;
        let (outgoing, outgoing_rx) = mpsc::unbounded_channel();
        let (commands, commands_rx) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            config,
            store,
            handler: OnceLock::new(),
            control: OnceLock::new(),
            client,
            conn,
            process: ulid::Ulid::generate().to_string(),
            outgoing,
            commands,
            pubsub_up: AtomicBool::new(false),
            subscribed: Mutex::new(HashSet::new()),
            probes: Mutex::new(HashMap::new()),
            requests: Mutex::new(HashMap::new()),
            next_request: AtomicU64::new(1),
            append: redis::Script::new(APPEND_SCRIPT),
            presence_add: redis::Script::new(PRESENCE_ADD),
            presence_remove: redis::Script::new(PRESENCE_REMOVE),
            presence_read: redis::Script::new(PRESENCE_READ),
            counters: Arc::new(RedisCounters::default()),
        });
        let (ready_tx, ready_rx) = oneshot::channel();
        let tasks = vec![
            tokio::spawn(run_writer(inner.clone(), outgoing_rx)),
            tokio::spawn(run_pubsub(Arc::downgrade(&inner), commands_rx, Some(ready_tx))),
            tokio::spawn(run_position_checks(Arc::downgrade(&inner))),
            tokio::spawn(run_presence_refresh(Arc::downgrade(&inner))),
        ];
        let broker = Arc::new(RedisBroker { inner, tasks: Mutex::new(tasks) });
        match tokio::time::timeout(Duration::from_secs(5), ready_rx).await {
            Ok(Ok(())) => {}
            _ => anyhow::bail!("cannot subscribe on Redis at {:?}", redact(&broker.inner.config.url)),
        }
        info!(prefix = %broker.inner.config.prefix, process = %broker.inner.process, "redis broker connected");
        Ok(broker)
    }

    /// The counters (`/metrics`).
    pub fn counters(&self) -> &RedisCounters {
        &self.inner.counters
    }

    pub(crate) fn counters_arc(&self) -> Arc<RedisCounters> {
        self.inner.counters.clone()
    }

    /// This process's id among the processes on the Redis.
    pub fn process_id(&self) -> &str {
        &self.inner.process
    }

    /// Sets who receives control commands; called once.
    pub(crate) fn register_control(&self, handler: Weak<dyn ControlHandler>) {
        let _ = self.inner.control.set(handler);
    }

    /// Sends a control command to every process (this one included; the handler skips its own).
    pub(crate) fn send_control(&self, command: &Control) {
        let payload = serde_json::to_string(command).unwrap_or_default();
        let _ = self.inner.outgoing.send(Outgoing::Publish { channel: self.inner.control_channel(), payload });
    }

    /// Sends a drop or unsubscribe command to every other process and sums the counts they answer with, waiting
    /// at most [`ASK_TIMEOUT`]. The number of processes to wait for is what Redis' `PUBLISH` answers: every
    /// process's pub/sub connection (this one's included) subscribes to the control channel once.
    pub(crate) async fn ask_everywhere(&self, mut command: Control) -> Tally {
        let inner = &self.inner;
        let request = format!("{}-{}", inner.process, inner.next_request.fetch_add(1, Ordering::Relaxed));
        command.set_request(request.clone());
        let (tx, mut rx) = mpsc::unbounded_channel();
        inner.requests.lock().unwrap_or_else(|e| e.into_inner()).insert(request.clone(), tx);
        let forget = || {
            inner.requests.lock().unwrap_or_else(|e| e.into_inner()).remove(&request);
        };
        let payload = serde_json::to_string(&command).unwrap_or_default();
        let mut conn = inner.conn.clone();
        let receivers: u64 =
            match redis::cmd("PUBLISH").arg(inner.control_channel()).arg(payload).query_async::<u64>(&mut conn).await {
                Ok(n) => n,
                Err(e) => {
                    inner.error("sending a control command", &e);
                    forget();
                    return Tally { count: 0, answered: 0, complete: false };
                }
            };
        // This process's own pub/sub connection is one of the receivers when it is up (it ignores its own command).
        let others = receivers.saturating_sub(u64::from(inner.pubsub_up.load(Ordering::SeqCst)));
        let mut tally = Tally { count: 0, answered: 0, complete: true };
        let deadline = tokio::time::Instant::now() + ASK_TIMEOUT;
        while tally.answered < others {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(count)) => {
                    tally.count += count;
                    tally.answered += 1;
                }
                _ => {
                    warn!(
                        answered = tally.answered,
                        others, "redis: not every process answered a control command in time; the count is partial"
                    );
                    tally.complete = false;
                    break;
                }
            }
        }
        forget();
        tally
    }

    /// The origin name of this process's control commands.
    pub(crate) fn origin(&self) -> String {
        self.inner.process.clone()
    }

    /// Records a connected session in Redis' presence.
    pub(crate) fn presence_add(&self, user: &str, device: &str, session: &str, connected_at: u64) {
        let value = json!({ "device": device, "session": session, "connected_at": connected_at }).to_string();
        let _ = self.inner.outgoing.send(Outgoing::PresenceAdd {
            user: user.to_owned(),
            session: session.to_owned(),
            value,
        });
    }

    /// Removes a session from Redis' presence; completes once Redis has applied it (or failed).
    pub(crate) async fn presence_remove(&self, user: &str, session: &str) {
        let (done, wait) = oneshot::channel();
        let _ = self.inner.outgoing.send(Outgoing::PresenceRemove {
            user: user.to_owned(),
            session: session.to_owned(),
            done: Some(done),
        });
        let _ = tokio::time::timeout(Duration::from_secs(3), wait).await;
    }

    /// `user`'s connected devices in every process (newest session per device).
    pub(crate) async fn presence_user(&self, user: &str) -> Result<UserPresence, StoreError> {
        let inner = &self.inner;
        let mut conn = inner.conn.clone();
        let values: Vec<Option<String>> = inner
            .presence_read
            .key(inner.key("ps", user))
            .key(inner.key("pz", user))
            .arg(crate::util::now_ms())
            .invoke_async(&mut conn)
            .await
            .map_err(|e| {
                inner.error("presence read", &e);
                StoreError::unavailable(format!("redis: {e}"))
            })?;
        let mut devices: Vec<DevicePresence> = Vec::new();
        for value in values.into_iter().flatten() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&value) else { continue };
            let (Some(device), Some(session), Some(connected_at)) =
                (v["device"].as_str(), v["session"].as_str(), v["connected_at"].as_u64())
            else {
                continue;
            };
            let entry = DevicePresence { device: device.into(), session: session.into(), connected_at };
            match devices.iter_mut().find(|d| d.device == entry.device) {
                Some(d) if d.connected_at <= entry.connected_at => *d = entry,
                Some(_) => {}
                None => devices.push(entry),
            }
        }
        devices.sort_by(|a, b| a.connected_at.cmp(&b.connected_at).then(a.session.cmp(&b.session)));
        Ok(UserPresence { user: user.to_owned(), devices })
    }

    /// Everyone online in every process, sorted by user id.
    pub(crate) async fn presence_all(&self) -> Result<Vec<UserPresence>, StoreError> {
        let inner = &self.inner;
        let mut conn = inner.conn.clone();
        let now = crate::util::now_ms();
        let users: Vec<String> = redis::cmd("ZRANGEBYSCORE")
            .arg(inner.presence_users())
            .arg(format!("({now}"))
            .arg("+inf")
            .query_async(&mut conn)
            .await
            .map_err(|e| {
                inner.error("presence read", &e);
                StoreError::unavailable(format!("redis: {e}"))
            })?;
        let _: Result<(), _> = redis::cmd("ZREMRANGEBYSCORE")
            .arg(inner.presence_users())
            .arg("-inf")
            .arg(now)
            .query_async(&mut conn)
            .await;
        let mut all = Vec::new();
        for user in users {
            let presence = self.presence_user(&user).await?;
            if !presence.devices.is_empty() {
                all.push(presence);
            }
        }
        all.sort_by(|a, b| a.user.cmp(&b.user));
        Ok(all)
    }

    /// The readiness check of this broker.
    pub fn readiness_check(self: &Arc<Self>) -> Arc<dyn ReadinessCheck> {
        Arc::new(RedisReadiness(Arc::downgrade(&self.inner)))
    }

    /// Stops the broker's tasks.
    pub fn stop(&self) {
        for task in self.tasks.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            task.abort();
        }
    }
}

impl Drop for RedisBroker {
    fn drop(&mut self) {
        self.stop();
    }
}

fn inner_weak_remove(weak: &Weak<Inner>, stream: &str) {
    if let Some(inner) = weak.upgrade() {
        inner.subscribed.lock().unwrap_or_else(|e| e.into_inner()).remove(stream);
    }
}

fn redact(url: &str) -> String {
    format!("{:?}", RedisConfig::new(url)).split('"').nth(1).unwrap_or_default().to_owned()
}

impl Broker for RedisBroker {
    fn register_handler(&self, handler: Weak<dyn BrokerEventHandler>) {
        let _ = self.inner.handler.set(handler);
    }

    fn publish<'a>(&'a self, batch: Vec<Arc<Publication>>) -> BoxFuture<'a, Vec<Result<AppendOutcome, StoreError>>> {
        let inner = &self.inner;
        let on_commit = |_: &Arc<Publication>| -> crate::store::OnCommit {
            let outgoing = inner.outgoing.clone();
            Box::new(move |c: &Committed| {
                let payload = encode_payload(&c.epoch, c.offset, &c.id, c.frame.as_str());
                let _ = outgoing.send(Outgoing::Frame {
                    stream: c.stream.clone(),
                    epoch: c.epoch.clone(),
                    offset: c.offset,
                    payload,
                });
            })
        };
        Box::pin(crate::broker::publish_in_order(&*inner.store, batch, on_commit, |p| {
            Box::pin(self.place_ephemeral(p))
        }))
    }

    fn history<'a>(
        &'a self,
        stream: &'a str,
        since: Option<Position<'a>>,
    ) -> BoxFuture<'a, Result<HistoryRead, StoreError>> {
        self.inner.store.read(stream, since)
    }

    fn page<'a>(
        &'a self,
        stream: &'a str,
        after: Option<Position<'a>>,
        limit: usize,
    ) -> BoxFuture<'a, Result<StoredPage, StoreError>> {
        self.inner.store.page(stream, after, limit)
    }

    fn subscribe<'a>(&'a self, stream: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let (done, wait) = oneshot::channel();
            self.inner
                .commands
                .send(Command::Subscribe { stream: Arc::from(stream), done })
                .map_err(|_| StoreError::unavailable("the redis broker is stopped"))?;
            match tokio::time::timeout(Duration::from_secs(10), wait).await {
                Ok(Ok(result)) => result,
                Ok(Err(_)) => Err(StoreError::unavailable("the redis broker is stopped")),
                Err(_) => Err(StoreError::unavailable("redis: subscribing took longer than 10 s")),
            }
        })
    }

    fn unsubscribe(&self, stream: &str) {
        let _ = self.inner.commands.send(Command::Unsubscribe { stream: Arc::from(stream) });
    }

    fn publish_inbox(&self, user: &str, frame: EncodedFrame) {
        let payload = format!("{user}\n{}", frame.as_str());
        let _ = self.inner.outgoing.send(Outgoing::Publish { channel: self.inner.inbox_channel(), payload });
    }
}

// ---- the writer ----

/// Sends what the process hands to Redis, in order, in pipelined batches. A failed batch is dropped (its commits
/// are durable: subscribers repair them by re-reading) and counted.
async fn run_writer(inner: Arc<Inner>, mut rx: mpsc::UnboundedReceiver<Outgoing>) {
    let mut conn = inner.conn.clone();
    let mut batch = Vec::new();
    let ttl = inner.config.cache_ttl.as_secs().max(1);
    let presence_ttl = inner.config.presence_ttl.as_millis() as u64;
    loop {
        if rx.recv_many(&mut batch, 512).await == 0 {
            return;
        }
        let mut pipe = redis::pipe();
        let mut done = Vec::new();
        for item in batch.drain(..) {
            match item {
                Outgoing::Frame { stream, epoch, offset, payload } => match offset {
                    Some(offset) => {
                        pipe.cmd("EVALSHA")
                            .arg(inner.append.get_hash())
                            .arg(2)
                            .arg(inner.key("c", &stream))
                            .arg(inner.key("m", &stream))
                            .arg(&*epoch)
                            .arg(offset)
                            .arg(payload)
                            .arg(inner.config.cache_max_items)
                            .arg(ttl)
                            .arg(inner.stream_channel(&stream))
                            .ignore();
                    }
                    None => {
                        pipe.cmd("PUBLISH").arg(inner.stream_channel(&stream)).arg(payload).ignore();
                    }
                },
                Outgoing::Publish { channel, payload } => {
                    pipe.cmd("PUBLISH").arg(channel).arg(payload).ignore();
                }
                Outgoing::PresenceAdd { user, session, value } => {
                    pipe.cmd("EVALSHA")
                        .arg(inner.presence_add.get_hash())
                        .arg(3)
                        .arg(inner.key("ps", &user))
                        .arg(inner.key("pz", &user))
                        .arg(inner.presence_users())
                        .arg(session)
                        .arg(value)
                        .arg(crate::util::now_ms() + presence_ttl)
                        .arg(user)
                        .ignore();
                }
                Outgoing::PresenceRemove { user, session, done: tx } => {
                    pipe.cmd("EVALSHA")
                        .arg(inner.presence_remove.get_hash())
                        .arg(3)
                        .arg(inner.key("ps", &user))
                        .arg(inner.key("pz", &user))
                        .arg(inner.presence_users())
                        .arg(session)
                        .arg(user)
                        .ignore();
                    done.extend(tx);
                }
            }
        }
        let count = pipe.len() as u64;
        let mut result: redis::RedisResult<()> = pipe.query_async(&mut conn).await;
        if let Err(e) = &result
            && e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript)
        {
            // Redis restarted (or flushed its scripts): load them and send the batch again.
            if load_scripts(&inner, &mut conn).await.is_ok() {
                result = pipe.query_async(&mut conn).await;
            }
        }
        match result {
            Ok(()) => inc(&inner.counters.published, count),
            Err(e) => inner.error("publishing a batch", &e),
        }
        for tx in done {
            let _ = tx.send(());
        }
    }
}

async fn load_scripts(inner: &Inner, conn: &mut ConnectionManager) -> redis::RedisResult<()> {
    for script in [&inner.append, &inner.presence_add, &inner.presence_remove, &inner.presence_read] {
        script.load_async(conn).await?;
    }
    Ok(())
}

// ---- the pub/sub task ----

/// Owns the pub/sub connection and the per-stream positions: hands stream frames on in order, repairs skips,
/// runs subscribe/unsubscribe requests in order, and reconnects (resubscribing and repairing everything).
async fn run_pubsub(
    weak: Weak<Inner>,
    mut commands: mpsc::UnboundedReceiver<Command>,
    mut ready: Option<oneshot::Sender<()>>,
) {
    let mut tracks: HashMap<Arc<str>, Track> = HashMap::new();
    let mut handed: Vec<Committed> = Vec::new();
    let mut backoff = Duration::from_millis(50);
    loop {
        let Some(inner) = weak.upgrade() else { return };
        let connected = async {
            let mut conn = inner.conn.clone();
            load_scripts(&inner, &mut conn).await?;
            let pubsub = inner.client.get_async_pubsub().await?;
            let (mut sink, stream) = pubsub.split();
            let mut channels = vec![inner.inbox_channel(), inner.control_channel(), inner.probe_channel()];
            channels.extend(tracks.keys().map(|s| inner.stream_channel(s)));
            for chunk in channels.chunks(512) {
                sink.subscribe(chunk).await?;
            }
            Ok::<_, redis::RedisError>((sink, stream))
        }
        .await;
        let (mut sink, mut messages) = match connected {
            Ok(c) => c,
            Err(e) => {
                inner.error("connecting the pub/sub connection", &e);
                inner.pubsub_up.store(false, Ordering::SeqCst);
                drop(inner);
                // Subscribe requests meanwhile fail at once rather than wait.
                let deadline = tokio::time::sleep(backoff);
                tokio::pin!(deadline);
                loop {
                    tokio::select! {
                        () = &mut deadline => break,
                        command = commands.recv() => match command {
                            None => return,
                            Some(Command::Subscribe { stream, done }) => {
                                // Tracked from the store's head now; the channel is subscribed (and the stream
                                // re-read) on reconnect, so subscribers get history now and live frames later.
                                let result = match weak.upgrade() {
                                    Some(inner) => track_without_redis(&inner, &mut tracks, stream).await,
                                    None => Err(StoreError::unavailable("the redis broker is stopped")),
                                };
                                let _ = done.send(result);
                            }
                            Some(Command::Unsubscribe { stream }) => {
                                inner_weak_remove(&weak, &stream);
                                tracks.remove(&stream);
                            }
                            Some(Command::Heads(_)) => {}
                        },
                    }
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        backoff = Duration::from_millis(50);
        inc(&inner.counters.connects, 1);
        inner.pubsub_up.store(true, Ordering::SeqCst);
        if let Some(ready) = ready.take() {
            let _ = ready.send(());
        } else {
            info!(streams = tracks.len(), "redis pub/sub reconnected: re-reading every subscribed stream");
            // Messages may have been lost while the connection was down, and the cache with them.
            let streams: Vec<Arc<str>> = tracks.keys().cloned().collect();
            for stream in streams {
                repair(&inner, &mut tracks, &stream, None).await;
            }
        }
        loop {
            tokio::select! {
                message = messages.next() => {
                    let Some(message) = message else { break };
                    // What has arrived by now is handled together: in-order publications go to the handler as one
                    // batch (each connection's queue is taken once for all of them).
                    on_message(&inner, &mut tracks, message, &mut handed).await;
                    let mut open = true;
                    for _ in 1..MAX_AT_ONCE {
                        match messages.next().now_or_never() {
                            Some(Some(message)) => on_message(&inner, &mut tracks, message, &mut handed).await,
                            Some(None) => {
                                open = false;
                                break;
                            }
                            None => break,
                        }
                    }
                    hand_on(&inner, &mut handed);
                    if !open {
                        break;
                    }
                }
                command = commands.recv() => {
                    let Some(command) = command else { return };
                    match command {
                        Command::Subscribe { stream, done } => {
                            let result = subscribe_stream(&inner, &mut sink, &mut tracks, stream).await;
                            let _ = done.send(result);
                        }
                        Command::Unsubscribe { stream } => {
                            inner.subscribed.lock().unwrap_or_else(|e| e.into_inner()).remove(&stream);
                            if tracks.remove(&stream).is_some()
                                && let Err(e) = sink.unsubscribe(inner.stream_channel(&stream)).await
                            {
                                inner.error("unsubscribing", &e);
                            }
                        }
                        Command::Heads(heads) => {
                            for (stream, epoch, head) in heads {
                                position_check(&inner, &mut tracks, &stream, &epoch, head).await;
                            }
                        }
                    }
                }
            }
        }
        warn!("redis pub/sub connection lost; reconnecting");
        inner.pubsub_up.store(false, Ordering::SeqCst);
    }
}

async fn subscribe_stream(
    inner: &Inner,
    sink: &mut PubSubSink,
    tracks: &mut HashMap<Arc<str>, Track>,
    stream: Arc<str>,
) -> Result<(), StoreError> {
    if tracks.contains_key(&stream) {
        return Ok(());
    }
    // Subscribed first, then the head read: a commit after the read comes through the channel; one before it is
    // in every history read that follows.
    sink.subscribe(inner.stream_channel(&stream)).await.map_err(|e| {
        inner.error("subscribing", &e);
        StoreError::unavailable(format!("redis: {e}"))
    })?;
    match inner.store.read(&stream, None).await {
        Ok(read) => {
            inner.subscribed.lock().unwrap_or_else(|e| e.into_inner()).insert(stream.clone());
            tracks.insert(stream, Track { epoch: read.state.epoch, last: read.state.head, suspect: None });
            Ok(())
        }
        Err(e) => {
            let _ = sink.unsubscribe(inner.stream_channel(&stream)).await;
            Err(e)
        }
    }
}

async fn track_without_redis(
    inner: &Inner,
    tracks: &mut HashMap<Arc<str>, Track>,
    stream: Arc<str>,
) -> Result<(), StoreError> {
    if tracks.contains_key(&stream) {
        return Ok(());
    }
    let read = inner.store.read(&stream, None).await?;
    inner.subscribed.lock().unwrap_or_else(|e| e.into_inner()).insert(stream.clone());
    tracks.insert(stream, Track { epoch: read.state.epoch, last: read.state.head, suspect: None });
    Ok(())
}

/// Most pub/sub messages [`run_pubsub`] takes at once (the publications among them are handed on together).
const MAX_AT_ONCE: usize = 256;

/// Hands the collected publications to the handler, in order.
fn hand_on(inner: &Inner, handed: &mut Vec<Committed>) {
    if !handed.is_empty() {
        if let Some(handler) = inner.handler() {
            handler.handle_publications(handed);
        }
        handed.clear();
    }
}

/// Handles one pub/sub message. A publication that follows the last one of its stream (or an ephemeral one) is
/// added to `handed`; everything else first hands on what was collected, so the handler sees it all in order.
async fn on_message(
    inner: &Inner,
    tracks: &mut HashMap<Arc<str>, Track>,
    message: redis::Msg,
    handed: &mut Vec<Committed>,
) {
    let channel = message.get_channel_name();
    let Ok(payload) = message.get_payload::<String>() else { return };
    if let Some(stream) = inner.stream_of_channel(channel) {
        inc(&inner.counters.received, 1);
        let Some(committed) = decode_payload(stream, &payload) else {
            warn!(channel, "redis: a frame that does not decode; ignored");
            return;
        };
        let Some(offset) = committed.offset else {
            // Ephemeral: no position to track.
            if tracks.contains_key(stream) {
                handed.push(committed);
            }
            return;
        };
        let Some(track) = tracks.get_mut(stream) else { return };
        if track.epoch == committed.epoch {
            if offset <= track.last {
                inc(&inner.counters.duplicates, 1);
                return;
            }
            if offset == track.last + 1 {
                track.last = offset;
                track.suspect = None;
                handed.push(committed);
                return;
            }
        }
        inc(&inner.counters.skips_repaired, 1);
        debug!(stream, offset, last = track.last, "redis: skip; re-reading");
        hand_on(inner, handed);
        let stream: Arc<str> = committed.stream.clone();
        repair(inner, tracks, &stream, Some(&committed)).await;
        return;
    }
    hand_on(inner, handed);
    if channel == inner.inbox_channel() {
        if let Some((user, frame)) = payload.split_once('\n')
            && let Some(handler) = inner.handler()
        {
            handler.handle_inbox(user, &EncodedFrame::new(frame.to_owned()));
        }
    } else if channel == inner.control_channel() {
        match serde_json::from_str::<Control>(&payload) {
            Ok(Control::Count { to, request, count, .. }) => {
                if to == inner.process
                    && let Some(tx) = inner.requests.lock().unwrap_or_else(|e| e.into_inner()).get(&request)
                {
                    let _ = tx.send(count);
                }
            }
            Ok(command) => {
                if command.origin() != inner.process
                    && let Some(handler) = inner.control.get().and_then(Weak::upgrade)
                {
                    let asker = command.request().map(|r| (command.origin().to_owned(), r.to_owned()));
                    let count = handler.handle_control(command);
                    if let (Some((to, request)), Some(count)) = (asker, count) {
                        let answer = Control::Count { origin: inner.process.clone(), to, request, count };
                        let payload = serde_json::to_string(&answer).unwrap_or_default();
                        let _ = inner.outgoing.send(Outgoing::Publish { channel: inner.control_channel(), payload });
                    }
                }
            }
            Err(e) => warn!(error = %e, "redis: a control command that does not decode; ignored"),
        }
    } else if channel == inner.probe_channel()
        && let Some(tx) = inner.probes.lock().unwrap_or_else(|e| e.into_inner()).remove(&payload)
    {
        let _ = tx.send(());
    }
}

/// Hands on what `stream` has after the last offset handed on, in order: from the cache when it holds every
/// offset up to `trigger`, else from the store.
async fn repair(inner: &Inner, tracks: &mut HashMap<Arc<str>, Track>, stream: &Arc<str>, trigger: Option<&Committed>) {
    let Some(track) = tracks.get_mut(stream) else { return };
    let Some(handler) = inner.handler() else { return };
    if let Some(trigger) = trigger
        && trigger.epoch == track.epoch
        && let Some(offset) = trigger.offset
        && let Some(frames) = read_cache(inner, stream, &track.epoch, track.last, offset).await
    {
        let n = frames.len() as u64;
        for committed in frames {
            handler.handle_publication(&committed);
        }
        track.last = offset;
        track.suspect = None;
        inc(&inner.counters.repaired_notifications, n.saturating_sub(1));
        return;
    }
    let since = (track.epoch.to_string(), track.last);
    let read = match inner.store.read(stream, Some((&since.0, since.1))).await {
        Ok(read) => read,
        Err(e) => {
            // The next frame or position check tries again.
            warn!(stream = %stream, error = %e, "redis: the store could not be read for a repair");
            return;
        }
    };
    if read.state.epoch != track.epoch {
        info!(stream = %stream, old = %track.epoch, new = %read.state.epoch, "stream epoch changed");
    }
    let mut handed = 0;
    for entry in read.entries {
        let same_epoch = read.state.epoch == track.epoch;
        if same_epoch && entry.offset <= track.last {
            continue;
        }
        let id = crate::store::frame_id(entry.frame.as_str()).unwrap_or_default();
        handler.handle_publication(&Committed {
            id: Arc::from(id),
            stream: stream.clone(),
            epoch: read.state.epoch.clone(),
            offset: Some(entry.offset),
            frame: entry.frame,
        });
        handed += 1;
    }
    inc(&inner.counters.repaired_notifications, handed);
    track.last = if read.state.epoch == track.epoch { read.state.head.max(track.last) } else { read.state.head };
    track.epoch = read.state.epoch;
    track.suspect = None;
}

/// The cached frames of `stream` after `last` up to `to`, if the cache holds all of them in `epoch`.
async fn read_cache(inner: &Inner, stream: &str, epoch: &str, last: u64, to: u64) -> Option<Vec<Committed>> {
    let mut conn = inner.conn.clone();
    let (cached_epoch, payloads): (Option<String>, Vec<String>) = redis::pipe()
        .cmd("HGET")
        .arg(inner.key("m", stream))
        .arg("e")
        .cmd("ZRANGEBYSCORE")
        .arg(inner.key("c", stream))
        .arg(format!("({last}"))
        .arg(to)
        .query_async(&mut conn)
        .await
        .map_err(|e| inner.error("reading the cache", &e))
        .ok()?;
    if cached_epoch.as_deref() != Some(epoch) {
        return None;
    }
    let frames: Vec<Committed> = payloads.iter().filter_map(|p| decode_payload(stream, p)).collect();
    let contiguous = frames.len() as u64 == to - last
        && frames.iter().zip(last + 1..).all(|(c, o)| c.offset == Some(o) && &*c.epoch == epoch);
    contiguous.then_some(frames)
}

async fn position_check(
    inner: &Inner,
    tracks: &mut HashMap<Arc<str>, Track>,
    stream: &Arc<str>,
    epoch: &str,
    head: u64,
) {
    let Some(track) = tracks.get_mut(stream) else { return };
    if &*track.epoch == epoch && head <= track.last {
        track.suspect = None;
        return;
    }
    // Behind: a frame may still be on its way; repair if the next check finds the same.
    match track.suspect {
        Some(seen) if track.last < seen || &*track.epoch != epoch => {
            inc(&inner.counters.position_repairs, 1);
            debug!(stream = %stream, last = track.last, head, "redis: position check found a lost message");
            repair(inner, tracks, stream, None).await;
        }
        _ => track.suspect = Some(head),
    }
}

/// Every `position_check`, reads the store's head of every subscribed stream (outside the pub/sub task) and
/// hands the heads to it.
async fn run_position_checks(weak: Weak<Inner>) {
    let period = match weak.upgrade() {
        Some(inner) => inner.config.position_check,
        None => return,
    };
    loop {
        tokio::time::sleep(period).await;
        let Some(inner) = weak.upgrade() else { return };
        let streams: Vec<Arc<str>> =
            inner.subscribed.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned().collect();
        let mut heads = Vec::with_capacity(streams.len());
        for stream in streams {
            if let Ok(read) = inner.store.read(&stream, None).await {
                heads.push((stream, read.state.epoch, read.state.head));
            }
        }
        if !heads.is_empty() {
            let _ = inner.commands.send(Command::Heads(heads));
        }
    }
}

/// Refreshes the presence entries of this process's connections well before they expire.
async fn run_presence_refresh(weak: Weak<Inner>) {
    let period = match weak.upgrade() {
        Some(inner) => inner.config.presence_ttl / 3,
        None => return,
    };
    loop {
        tokio::time::sleep(period).await;
        let Some(inner) = weak.upgrade() else { return };
        let Some(control) = inner.control.get().and_then(Weak::upgrade) else { continue };
        for (user, device, session, connected_at) in control.local_sessions() {
            let value = json!({ "device": device, "session": session, "connected_at": connected_at }).to_string();
            let _ = inner.outgoing.send(Outgoing::PresenceAdd { user, session, value });
        }
    }
}

// ---- readiness ----

struct RedisReadiness(Weak<Inner>);

impl ReadinessCheck for RedisReadiness {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn check(&self) -> BoxFuture<'_, CheckOutcome> {
        Box::pin(async move {
            let Some(inner) = self.0.upgrade() else { return CheckOutcome::failed("the redis broker is stopped") };
            let started = std::time::Instant::now();
            let mut conn = inner.conn.clone();
            if let Err(e) = redis::cmd("PING").query_async::<String>(&mut conn).await {
                inc(&inner.counters.errors, 1);
                return CheckOutcome::failed(format!("redis does not answer: {e}"));
            }
            let ping_ms = started.elapsed().as_secs_f64() * 1000.0;
            if !inner.pubsub_up.load(Ordering::SeqCst) {
                return CheckOutcome::failed("the redis pub/sub connection is down (reconnecting)");
            }
            // End to end: a message on this process's probe channel must come back on its pub/sub connection.
            let nonce = ulid::Ulid::generate().to_string();
            let (tx, rx) = oneshot::channel();
            inner.probes.lock().unwrap_or_else(|e| e.into_inner()).insert(nonce.clone(), tx);
            let published: redis::RedisResult<u64> =
                redis::cmd("PUBLISH").arg(inner.probe_channel()).arg(&nonce).query_async(&mut conn).await;
            let outcome = match published {
                Err(e) => CheckOutcome::failed(format!("redis refused the probe: {e}")),
                Ok(_) => match tokio::time::timeout(inner.config.probe_timeout, rx).await {
                    Ok(Ok(())) => CheckOutcome::ok(json!({
                        "ping_ms": ping_ms,
                        "probe_ms": started.elapsed().as_secs_f64() * 1000.0,
                    })),
                    _ => CheckOutcome::failed(format!(
                        "the pub/sub probe did not come back within {} ms: this process would deliver nothing",
                        inner.config.probe_timeout.as_millis()
                    )),
                },
            };
            inner.probes.lock().unwrap_or_else(|e| e.into_inner()).remove(&nonce);
            outcome
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip_with_separators_in_the_frame() {
        let payload = encode_payload("ep|1", Some(42), "id|x", "{\"a\":\"|\"}");
        let c = decode_payload("user:u", &payload).unwrap();
        assert_eq!((&*c.epoch, c.offset, &*c.id, c.frame.as_str()), ("ep|1", Some(42), "id|x", "{\"a\":\"|\"}"));
        let c = decode_payload("user:u", &encode_payload("e", None, "i", "f")).unwrap();
        assert_eq!(c.offset, None);
        assert!(decode_payload("s", "x|1|1|ab").is_none());
    }

    #[test]
    fn the_url_password_is_redacted() {
        assert_eq!(redact("redis://:secret@host:6379/0"), "redis://***@host:6379/0");
        assert_eq!(redact("redis://host:6379"), "redis://host:6379");
    }
}
