//! The server's metrics: one registry per server, served at `GET /metrics` in the Prometheus text format
//! (version 0.0.4) by the official client (`prometheus-client`).
//!
//! Rules, so that a scrape stays small and a dashboard stays meaningful:
//! - **Bounded labels only.** Every label value comes from a closed set named in this file (a transport, a
//!   reason, a provider, an error code, a route template). No user, device, stream, topic, token or notification
//!   id is ever a label.
//! - **Histograms with explicit buckets** (no summaries: they cannot be aggregated across servers).
//! - **Counters the hot paths bump are resolved once** ([`Metrics::ws`]): a delivery costs one atomic add, as the
//!   plain counters it replaces did.
//!
//! The parts of the server report through narrow hooks rather than touching the registry: the WebSocket driver
//! through [`WsMetrics`], the store through [`StoreMetrics`] (handed to it with
//! [`StreamStore::observe`](crate::store::StreamStore::observe)), the push path through [`PushMetrics`] (the
//! [`Dispatcher`](crate::push::Dispatcher) records every send; the planner's outcomes go through
//! [`PushMetrics::planner_outcome`]), and queues through [`QueueProbe`] (a queue is exported once something asked
//! for its probe, so a server never shows a queue nothing feeds). Redis metrics (pub/sub lag, probe failures) come
//! with the Redis broker (issue 15).

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The `Content-Type` of `GET /metrics`.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

// ---- label values: closed sets ----

/// How a client is connected (or reached).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    /// WebSocket (`/v1/ws`).
    Ws,
    /// Server-sent events.
    Sse,
    /// Plain HTTP requests (acks or reads without a stream).
    Http,
    /// A push provider (APNs, FCM, Web Push).
    Push,
}

impl Transport {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Ws => "ws",
            Transport::Sse => "sse",
            Transport::Http => "http",
            Transport::Push => "push",
        }
    }
}

/// Why a connection was refused before it was served.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// `--max-connections` reached.
    MaxConnections,
    /// The server is shutting down.
    ShuttingDown,
    /// Too many new connections from the client's address.
    ConnectionRate,
    /// Too many failed authentications from the client's address.
    AuthThrottled,
    /// Not a valid upgrade, or no supported subprotocol offered.
    BadRequest,
    /// The TLS handshake failed or timed out.
    TlsHandshake,
}

impl Refusal {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::MaxConnections => "max_connections",
            Refusal::ShuttingDown => "shutting_down",
            Refusal::ConnectionRate => "connection_rate",
            Refusal::AuthThrottled => "auth_throttled",
            Refusal::BadRequest => "bad_request",
            Refusal::TlsHandshake => "tls_handshake",
        }
    }
}

/// Why an authentication failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AuthFailure {
    /// A client token that is not valid (signature, claims, not yet valid).
    Unauthorized,
    /// A client token that expired.
    TokenExpired,
    /// A missing or wrong API key.
    ApiKey,
    /// A valid API key without the scope the endpoint needs.
    ApiKeyScope,
}

impl AuthFailure {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthFailure::Unauthorized => "unauthorized",
            AuthFailure::TokenExpired => "token_expired",
            AuthFailure::ApiKey => "api_key",
            AuthFailure::ApiKeyScope => "api_key_scope",
        }
    }
}

/// How a subscribe continued from the client's position (protocol §5.4), for `tidings_subscribes_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Continuity {
    /// No position given.
    Fresh,
    /// Resumed: everything after the position was replayed.
    Resumed,
    /// A gap because the stream's epoch changed.
    GapEpochChanged,
    /// A gap because the position is ahead of the stream.
    GapAheadOfStream,
    /// A gap because the replay buffer no longer holds what followed the position.
    GapOutOfBuffer,
}

impl Continuity {
    fn labels(self) -> (&'static str, &'static str) {
        match self {
            Continuity::Fresh => ("fresh", ""),
            Continuity::Resumed => ("resumed", ""),
            Continuity::GapEpochChanged => ("gap", "epoch_changed"),
            Continuity::GapAheadOfStream => ("gap", "ahead_of_stream"),
            Continuity::GapOutOfBuffer => ("gap", "out_of_buffer"),
        }
    }
}

/// A queue whose depth and oldest item's age are exported (`tidings_queue_depth`, `tidings_queue_oldest_age_seconds`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Queue {
    /// Writes waiting for (or in) the SQLite writer's commit.
    StoreWriter,
    /// Pushes due: waiting for the push worker, or being sent (the age is how late the oldest one is).
    Push,
}

impl Queue {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Queue::StoreWriter => "store_writer",
            Queue::Push => "push",
        }
    }

    const ALL: [Queue; 2] = [Queue::StoreWriter, Queue::Push];
}

// ---- label sets ----

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransportLabel {
    transport: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusedLabels {
    transport: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    transport: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabels {
    transport: &'static str,
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ContinuityLabels {
    continuity: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    route: &'static str,
    method: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProviderResultLabels {
    provider: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProviderLabel {
    provider: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ChannelReasonLabels {
    channel: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StoreLabel {
    store: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimiterLabel {
    limiter: &'static str,
}

// ---- buckets ----

/// Seconds, from a millisecond to an hour: publish → ack (a device in the background acks when it wakes).
const LATENCY_BUCKETS: [f64; 17] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0];
/// Seconds, from 100 µs to 10 s: request handling, commits, push sends.
const DURATION_BUCKETS: [f64; 15] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];
/// Counts: notifications replayed per subscribe, writes per commit.
const SIZE_BUCKETS: [f64; 14] =
    [0.0, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0];

/// The publish → ack latency (`tidings_delivery_latency_seconds`): a classic histogram over [`LATENCY_BUCKETS`],
/// exposed as `prometheus_client`'s `Histogram` is, whose observations are added an ack frame at a time
/// ([`LatencyCounts`]). A frame acks up to a few hundred ids, and `Histogram::observe` takes its lock and scans the
/// buckets once per id: about 3 % of a server's CPU in S6 (bench/README.md).
#[derive(Clone, Debug, Default)]
pub(crate) struct LatencyHistogram(Arc<Mutex<LatencyCounts>>);

/// Latencies counted into [`LATENCY_BUCKETS`] (the last bucket is `+Inf`), before they join a [`LatencyHistogram`].
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct LatencyCounts {
    sum: f64,
    count: u64,
    buckets: [u64; LATENCY_BUCKETS.len() + 1],
}

impl LatencyCounts {
    /// Counts one latency of `seconds`.
    pub(crate) fn observe(&mut self, seconds: f64) {
        let bucket = LATENCY_BUCKETS.iter().position(|&upper| seconds <= upper).unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[bucket] += 1;
        self.sum += seconds;
        self.count += 1;
    }
}

impl LatencyHistogram {
    /// Adds the latencies counted in `counts`.
    pub(crate) fn add(&self, counts: &LatencyCounts) {
        if counts.count == 0 {
            return;
        }
        let mut total = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        total.sum += counts.sum;
        total.count += counts.count;
        for (t, c) in total.buckets.iter_mut().zip(counts.buckets) {
            *t += c;
        }
    }
}

impl prometheus_client::metrics::TypedMetric for LatencyHistogram {
    const TYPE: prometheus_client::metrics::MetricType = prometheus_client::metrics::MetricType::Histogram;
}

impl EncodeMetric for LatencyHistogram {
    fn encode(&self, mut encoder: prometheus_client::encoding::MetricEncoder<'_>) -> fmt::Result {
        let counts = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone();
        let uppers = LATENCY_BUCKETS.iter().copied().chain(std::iter::once(f64::INFINITY));
        let buckets: Vec<(f64, u64)> = uppers.zip(counts.buckets).collect();
        encoder.encode_histogram::<prometheus_client::encoding::NoLabelSet>(counts.sum, counts.count, &buckets, None)
    }

    fn metric_type(&self) -> prometheus_client::metrics::MetricType {
        <Self as prometheus_client::metrics::TypedMetric>::TYPE
    }
}

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

fn size_histogram() -> Histogram {
    Histogram::new(SIZE_BUCKETS)
}

type CounterFamily<L> = Family<L, Counter>;
type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

// ---- the parts ----

/// What a connection driver (WebSocket or SSE) and the node report on their hot paths, resolved once per
/// transport.
#[derive(Clone, Debug)]
pub(crate) struct ConnMetrics {
    pub(crate) open: Gauge,
    pub(crate) accepted: Counter,
    pub(crate) frames_in: Counter,
    pub(crate) live: Counter,
    pub(crate) replayed: Counter,
    pub(crate) dropped: Counter,
    pub(crate) acks: Counter,
    pub(crate) ack_latency: LatencyHistogram,
}

/// The metrics of a store, handed to it by [`StreamStore::observe`](crate::store::StreamStore::observe): how long
/// its commits take, how many writes each one carries, and its write queue.
#[derive(Clone, Debug)]
pub struct StoreMetrics {
    /// Seconds per commit (from the start of the transaction to its durable end).
    pub commit_seconds: Histogram,
    /// Writes (publish batches, ack frames, registrations) per commit.
    pub batch_size: Histogram,
    /// Failed commits.
    pub commit_failures: Counter,
    /// The write queue.
    pub queue: QueueProbe,
}

impl StoreMetrics {
    /// Records one commit of `writes` writes that took `elapsed`.
    pub fn commit(&self, writes: usize, elapsed: Duration) {
        self.commit_seconds.observe(elapsed.as_secs_f64());
        self.batch_size.observe(writes as f64);
    }
}

/// A queue's depth and the age of its oldest item, read at each scrape. A producer calls [`QueueProbe::added`];
/// the consumer calls [`QueueProbe::taking`] with the enqueue instant of the oldest item it starts working on and
/// [`QueueProbe::done`] when those items are finished. A queue that is not a channel (a table of pending pushes)
/// calls [`QueueProbe::set`] instead. The age keeps growing at each scrape while the oldest item waits, so a stuck
/// consumer shows.
#[derive(Clone, Debug, Default)]
pub struct QueueProbe(Arc<QueueState>);

#[derive(Debug)]
struct QueueState {
    /// Something feeds this queue (its probe was handed out by [`Metrics::queue`]): it is exported.
    fed: AtomicBool,
    depth: AtomicI64,
    /// Microseconds from [`epoch`] to when the oldest item waiting or being worked on was added — negative for an
    /// item older than the epoch (a push due before this process started); [`NONE`]: no item.
    oldest: AtomicI64,
}

/// [`QueueState::oldest`] of an empty queue.
const NONE: i64 = i64::MIN;

impl Default for QueueState {
    fn default() -> Self {
        QueueState { fed: AtomicBool::new(false), depth: AtomicI64::new(0), oldest: AtomicI64::new(NONE) }
    }
}

/// The process's reference instant for [`QueueProbe`] timestamps.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// `at` as signed microseconds from [`epoch`].
fn micros_since_epoch(at: Instant) -> i64 {
    let e = epoch();
    match at.checked_duration_since(e) {
        Some(after) => after.as_micros().min(i64::MAX as u128) as i64,
        None => -(e.duration_since(at).as_micros().min(i64::MAX as u128 - 1) as i64),
    }
}

impl QueueProbe {
    /// `n` items were added at `at`.
    pub fn added(&self, n: usize, at: Instant) {
        self.0.depth.fetch_add(n as i64, Ordering::Relaxed);
        // Only an empty queue takes the new item's time as its oldest.
        let _ = self.0.oldest.compare_exchange(NONE, micros_since_epoch(at), Ordering::Relaxed, Ordering::Relaxed);
    }

    /// The consumer starts on items whose oldest was added at `oldest`.
    pub fn taking(&self, oldest: Instant) {
        self.0.oldest.store(micros_since_epoch(oldest), Ordering::Relaxed);
    }

    /// `n` items are finished; `next_oldest` is when the oldest item still waiting was added, if the consumer
    /// knows (else the queue counts as having no waiting item until the next [`QueueProbe::taking`]).
    pub fn done(&self, n: usize, next_oldest: Option<Instant>) {
        let left = self.0.depth.fetch_sub(n as i64, Ordering::Relaxed) - n as i64;
        let oldest = match next_oldest {
            Some(at) if left > 0 => micros_since_epoch(at),
            _ => NONE,
        };
        self.0.oldest.store(oldest, Ordering::Relaxed);
    }

    /// Sets the depth and how long ago the oldest item was added (a queue that is a table, read at a scrape:
    /// the pending pushes). The age may reach back before this process started.
    pub fn set(&self, depth: usize, oldest_age: Option<Duration>) {
        self.0.depth.store(depth as i64, Ordering::Relaxed);
        let oldest = oldest_age.map_or(NONE, |age| {
            let now = micros_since_epoch(Instant::now());
            now.saturating_sub(age.as_micros().min(i64::MAX as u128) as i64).max(NONE + 1)
        });
        self.0.oldest.store(oldest, Ordering::Relaxed);
    }

    /// Items waiting or being worked on.
    pub fn depth(&self) -> u64 {
        self.0.depth.load(Ordering::Relaxed).max(0) as u64
    }

    /// How long the oldest item has been waiting (zero for an empty queue).
    pub fn oldest_age(&self) -> Duration {
        match self.0.oldest.load(Ordering::Relaxed) {
            NONE => Duration::ZERO,
            us => {
                let now = micros_since_epoch(Instant::now());
                Duration::from_micros(now.saturating_sub(us).max(0) as u64)
            }
        }
    }
}

/// The push path's metrics. The [`Dispatcher`](crate::push::Dispatcher) records every send
/// ([`PushMetrics::send`]); whoever runs the planner records its outcomes ([`PushMetrics::planner_outcome`]) and
/// keeps the pending count current ([`PushMetrics::set_pending`]).
#[derive(Clone, Debug)]
pub struct PushMetrics {
    sends: CounterFamily<ProviderResultLabels>,
    send_seconds: Family<ProviderLabel, Histogram, fn() -> Histogram>,
    invalidations: CounterFamily<ProviderLabel>,
    pending: Family<ReasonLabel, Gauge>,
    cancelled: CounterFamily<ReasonLabel>,
    suppressed: CounterFamily<ChannelReasonLabels>,
    scheduled: CounterFamily<ReasonLabel>,
    provider_stopped: Family<ProviderLabel, Gauge>,
}

impl PushMetrics {
    fn new() -> Self {
        PushMetrics {
            sends: Default::default(),
            send_seconds: Family::new_with_constructor(duration_histogram),
            invalidations: Default::default(),
            pending: Default::default(),
            cancelled: Default::default(),
            suppressed: Default::default(),
            scheduled: Default::default(),
            provider_stopped: Default::default(),
        }
    }

    fn register(&self, registry: &mut Registry) {
        registry.register(
            "tidings_push_sends",
            "Push sends by provider and result (one per Dispatcher::deliver, retries included in it)",
            self.sends.clone(),
        );
        registry.register(
            "tidings_push_send_seconds",
            "Time of one push send by provider, retries included",
            self.send_seconds.clone(),
        );
        registry.register(
            "tidings_push_token_invalidations",
            "Push addresses the provider reported gone and the server deleted",
            self.invalidations.clone(),
        );
        registry.register("tidings_push_pending", "Pending pushes by why they wait", self.pending.clone());
        registry.register(
            "tidings_push_cancelled",
            "Pending pushes dropped before sending, by reason",
            self.cancelled.clone(),
        );
        registry.register(
            "tidings_push_suppressed",
            "Deliveries the planner decided against, by channel and reason",
            self.suppressed.clone(),
        );
        registry.register("tidings_push_scheduled", "Pushes scheduled for later, by reason", self.scheduled.clone());
        registry.register(
            "tidings_push_provider_stopped",
            "1 while a push provider is stopped by a configuration error",
            self.provider_stopped.clone(),
        );
    }

    /// One [`Dispatcher::deliver`](crate::push::Dispatcher::deliver) of `provider` ended with `delivery` after
    /// `elapsed`.
    pub fn send(&self, provider: crate::push::Provider, delivery: &crate::push::Delivery, elapsed: Duration) {
        use crate::push::Delivery as D;
        let result = match delivery {
            D::Accepted { .. } => "accepted",
            D::DeleteAddress { .. } => "device_gone",
            D::KeepAddress { .. } => "device_gone_kept",
            D::PayloadRejected { .. } => "payload_rejected",
            D::Rejected { .. } => "rejected",
            D::RetryLater { .. } => "retry_later",
            D::ProviderStopped { .. } => "provider_stopped",
            D::NotConfigured { .. } => "not_configured",
        };
        let provider = provider.as_str();
        self.sends.get_or_create(&ProviderResultLabels { provider, result }).inc();
        if !matches!(delivery, D::NotConfigured { .. } | D::ProviderStopped { .. }) {
            self.send_seconds.get_or_create(&ProviderLabel { provider }).observe(elapsed.as_secs_f64());
        }
        if matches!(delivery, D::DeleteAddress { .. }) {
            self.invalidations.get_or_create(&ProviderLabel { provider }).inc();
        }
        self.provider_stopped
            .get_or_create(&ProviderLabel { provider })
            .set(matches!(delivery, D::ProviderStopped { .. }) as i64);
    }

    /// Records what the planner decided for a publish (pushes scheduled, channels suppressed).
    pub fn planner_outcome(&self, outcome: &crate::planner::Outcome) {
        use crate::planner::Outcome;
        match outcome {
            Outcome::Push(_) => {}
            Outcome::Scheduled { reason, .. } => {
                self.scheduled.get_or_create(&ReasonLabel { reason: reason.as_str() }).inc();
            }
            Outcome::Suppressed { channel, reason, .. } => {
                let channel = match channel {
                    crate::planner::Channel::Socket => "socket",
                    crate::planner::Channel::Push => "push",
                };
                let reason = crate::store::push::suppression_name(*reason);
                self.suppressed.get_or_create(&ChannelReasonLabels { channel, reason }).inc();
            }
            Outcome::Cancelled { reason, .. } => self.cancelled(cancellation_name(*reason), 1),
        }
    }

    /// Records what the planner decided for pending pushes that came due: a row it drops (the user turned push
    /// off, the device lost its address, …) is a cancellation by that reason; a row held again (quiet hours) is
    /// scheduled.
    pub fn due_outcome(&self, outcome: &crate::planner::Outcome) {
        use crate::planner::Outcome;
        match outcome {
            Outcome::Push(_) => {}
            Outcome::Scheduled { reason, .. } => {
                self.scheduled.get_or_create(&ReasonLabel { reason: reason.as_str() }).inc();
            }
            Outcome::Suppressed { reason, .. } => self.cancelled(crate::store::push::suppression_name(*reason), 1),
            Outcome::Cancelled { reason, .. } => self.cancelled(cancellation_name(*reason), 1),
        }
    }

    /// `n` pending pushes were dropped before they were sent, for `reason` (a closed set: `acked`, the planner's
    /// suppression reasons, `notification_gone`, `no_push_address`, `retries_exhausted`).
    pub fn cancelled(&self, reason: &'static str, n: u64) {
        if n > 0 {
            self.cancelled.get_or_create(&ReasonLabel { reason }).inc_by(n);
        }
    }

    /// The pending pushes now: by reason (every reason is set, 0 when none waits).
    pub fn set_pending(&self, summary: &crate::store::PendingSummary) {
        use crate::planner::PendingReason as R;
        for reason in [R::Immediate, R::AwaitingAck, R::Digest, R::QuietHours] {
            let n = summary.by_reason.iter().find(|(r, _)| *r == reason).map_or(0, |(_, n)| *n);
            self.pending.get_or_create(&ReasonLabel { reason: reason.as_str() }).set(n as i64);
        }
    }
}

fn cancellation_name(reason: crate::planner::Cancellation) -> &'static str {
    match reason {
        crate::planner::Cancellation::Acked => "acked",
    }
}

/// The server's metrics.
pub struct Metrics {
    registry: Mutex<Registry>,
    pub(crate) ws: ConnMetrics,
    pub(crate) sse: ConnMetrics,
    connections: Family<TransportLabel, Gauge>,
    accepted: CounterFamily<TransportLabel>,
    refused: CounterFamily<RefusedLabels>,
    auth_failures: CounterFamily<RefusedLabels>,
    disconnects: CounterFamily<CodeLabels>,
    deliveries: CounterFamily<OutcomeLabels>,
    acks: CounterFamily<TransportLabel>,
    ack_latency: Family<TransportLabel, LatencyHistogram>,
    published: CounterFamily<ResultLabel>,
    publish_seconds: Histogram,
    subscribes: CounterFamily<ContinuityLabels>,
    replay_size: Histogram,
    http_requests: CounterFamily<HttpLabels>,
    http_seconds: HistogramFamily<RouteLabel>,
    throttle_tracked: Family<LimiterLabel, Gauge>,
    tls_reloads: CounterFamily<ResultLabel>,
    /// The push path's metrics.
    pub push: PushMetrics,
    store: Mutex<Option<StoreMetrics>>,
    queues: [QueueProbe; 2],
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric of the server registered.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let connections = Family::<TransportLabel, Gauge>::default();
        let accepted = CounterFamily::<TransportLabel>::default();
        let deliveries = CounterFamily::<OutcomeLabels>::default();
        let acks = CounterFamily::<TransportLabel>::default();
        let ack_latency = Family::<TransportLabel, LatencyHistogram>::default();
        let frames_in = Counter::default();
        let conn_metrics = |transport: Transport, frames_in: Counter| {
            let label = TransportLabel { transport: transport.as_str() };
            let delivery =
                |outcome| deliveries.get_or_create_owned(&OutcomeLabels { transport: transport.as_str(), outcome });
            ConnMetrics {
                open: connections.get_or_create_owned(&label),
                accepted: accepted.get_or_create_owned(&label),
                frames_in,
                live: delivery("live"),
                replayed: delivery("replayed"),
                dropped: delivery("dropped_slow_consumer"),
                acks: acks.get_or_create_owned(&label),
                ack_latency: ack_latency.get_or_create_owned(&label),
            }
        };
        let ws_metrics = conn_metrics(Transport::Ws, frames_in.clone());
        // SSE has no upstream frames (its acks come over HTTP): its counter is never registered.
        let sse_metrics = conn_metrics(Transport::Sse, Counter::default());
        let metrics = Metrics {
            ws: ws_metrics,
            sse: sse_metrics,
            connections,
            accepted,
            refused: Default::default(),
            auth_failures: Default::default(),
            disconnects: Default::default(),
            deliveries,
            acks,
            ack_latency,
            published: Default::default(),
            publish_seconds: duration_histogram(),
            subscribes: Default::default(),
            replay_size: size_histogram(),
            http_requests: Default::default(),
            http_seconds: Family::new_with_constructor(duration_histogram),
            throttle_tracked: Default::default(),
            tls_reloads: Default::default(),
            push: PushMetrics::new(),
            store: Mutex::new(None),
            queues: Default::default(),
            registry: Mutex::new(Registry::default()),
        };
        let info = Family::<[(&'static str, &'static str); 1], Gauge>::default();
        info.get_or_create(&[("version", env!("CARGO_PKG_VERSION"))]).set(1);
        registry.register("tidings_build_info", "The server's version (always 1)", info);
        registry.register("tidings_connections", "Open connections by transport", metrics.connections.clone());
        registry.register(
            "tidings_connections_accepted",
            "Connections accepted by transport",
            metrics.accepted.clone(),
        );
        registry.register(
            "tidings_connections_refused",
            "Connections refused before they were served, by transport and reason",
            metrics.refused.clone(),
        );
        registry.register(
            "tidings_auth_failures",
            "Failed authentications by transport and reason (client tokens and API keys)",
            metrics.auth_failures.clone(),
        );
        registry.register(
            "tidings_disconnects",
            "Connections the server closed, by transport and error code",
            metrics.disconnects.clone(),
        );
        registry.register("tidings_ws_frames_received", "Frames received from WebSocket clients", frames_in);
        registry.register(
            "tidings_deliveries",
            "Notifications handed to a transport, by transport and outcome",
            metrics.deliveries.clone(),
        );
        registry.register("tidings_acks", "Acked notification ids received, by transport", metrics.acks.clone());
        registry.register(
            "tidings_delivery_latency_seconds",
            "Publish to ack, by the transport the ack came on (first ack of each id per device)",
            metrics.ack_latency.clone(),
        );
        registry.register("tidings_published", "Publishes by result", metrics.published.clone());
        registry.register(
            "tidings_publish_seconds",
            "Publish pipeline time of a publish or batch, from validation to commit",
            metrics.publish_seconds.clone(),
        );
        registry.register(
            "tidings_subscribes",
            "Stream subscriptions answered, by continuity and gap reason",
            metrics.subscribes.clone(),
        );
        registry.register(
            "tidings_replay_notifications",
            "Notifications replayed per subscribe",
            metrics.replay_size.clone(),
        );
        registry.register(
            "tidings_http_requests",
            "HTTP requests by route template, method and status",
            metrics.http_requests.clone(),
        );
        registry.register(
            "tidings_http_request_seconds",
            "HTTP request handling time by route template",
            metrics.http_seconds.clone(),
        );
        registry.register(
            "tidings_throttle_tracked_addresses",
            "Client addresses an abuse limiter tracks (bounded)",
            metrics.throttle_tracked.clone(),
        );
        registry.register("tidings_tls_reloads", "Certificate reloads by result", metrics.tls_reloads.clone());
        metrics.push.register(&mut registry);
        registry.register_collector(Box::new(QueueCollector(metrics.queues.clone())));
        *metrics.registry.lock().unwrap_or_else(|e| e.into_inner()) = registry;
        metrics
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The whole registry in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut text = String::with_capacity(16 * 1024);
        let registry = self.lock();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut text, &registry);
        text
    }

    /// The hot-path metrics of connections of `transport` (WebSocket or SSE).
    pub(crate) fn conn(&self, transport: Transport) -> &ConnMetrics {
        match transport {
            Transport::Sse => &self.sse,
            _ => &self.ws,
        }
    }

    /// The gauge of open connections of `transport` (increment on open, decrement on close).
    pub fn connections(&self, transport: Transport) -> Gauge {
        self.connections.get_or_create_owned(&TransportLabel { transport: transport.as_str() })
    }

    /// A connection of `transport` was accepted.
    pub fn accepted(&self, transport: Transport) {
        self.accepted.get_or_create(&TransportLabel { transport: transport.as_str() }).inc();
    }

    /// A connection of `transport` was refused for `reason`.
    pub fn refused(&self, transport: Transport, reason: Refusal) {
        self.refused.get_or_create(&RefusedLabels { transport: transport.as_str(), reason: reason.as_str() }).inc();
    }

    /// An authentication on `transport` failed.
    pub fn auth_failed(&self, transport: Transport, reason: AuthFailure) {
        self.auth_failures
            .get_or_create(&RefusedLabels { transport: transport.as_str(), reason: reason.as_str() })
            .inc();
    }

    /// The server closed a connection of `transport` with error `code`.
    pub fn disconnected(&self, transport: Transport, code: tidings_core::protocol::ErrorCode) {
        self.disconnects.get_or_create(&CodeLabels { transport: transport.as_str(), code: code.as_str() }).inc();
    }

    /// `n` notifications were handed to `transport` with `outcome` (a closed set: `live`, `replayed`,
    /// `dropped_slow_consumer`, …).
    pub fn delivered(&self, transport: Transport, outcome: &'static str, n: u64) {
        self.deliveries.get_or_create(&OutcomeLabels { transport: transport.as_str(), outcome }).inc_by(n);
    }

    /// Acks of `n` ids arrived on `transport`.
    pub(crate) fn acks(&self, transport: Transport) -> (Counter, LatencyHistogram) {
        let label = TransportLabel { transport: transport.as_str() };
        (self.acks.get_or_create_owned(&label), self.ack_latency.get_or_create_owned(&label))
    }

    /// A publish (or batch) took `elapsed`: `accepted`, `duplicate` and `failed` publications in it.
    pub(crate) fn published(&self, accepted: u64, duplicate: u64, failed: u64, elapsed: Duration) {
        for (result, n) in [("accepted", accepted), ("duplicate", duplicate), ("failed", failed)] {
            if n > 0 {
                self.published.get_or_create(&ResultLabel { result }).inc_by(n);
            }
        }
        self.publish_seconds.observe(elapsed.as_secs_f64());
    }

    /// A subscribe was answered with `continuity`, replaying `replayed` notifications.
    pub(crate) fn subscribed(&self, continuity: Continuity, replayed: u64) {
        let (continuity, reason) = continuity.labels();
        self.subscribes.get_or_create(&ContinuityLabels { continuity, reason }).inc();
        self.replay_size.observe(replayed as f64);
    }

    /// An HTTP request to `route` (its template) ended with `status` after `elapsed`.
    pub(crate) fn http_request(&self, route: &'static str, method: &'static str, status: u16, elapsed: Duration) {
        self.http_requests.get_or_create(&HttpLabels { route, method, status }).inc();
        self.http_seconds.get_or_create(&RouteLabel { route }).observe(elapsed.as_secs_f64());
    }

    /// The number of addresses `limiter` tracks now.
    pub(crate) fn throttle_tracked(&self, limiter: &'static str, n: usize) {
        self.throttle_tracked.get_or_create(&LimiterLabel { limiter }).set(n as i64);
    }

    /// A TLS certificate reload ended with `result` (`reloaded` or `failed`).
    pub(crate) fn tls_reload(&self, result: &'static str) {
        self.tls_reloads.get_or_create(&ResultLabel { result }).inc();
    }

    /// The metrics of the store `name` (`sqlite`, `memory`, `postgres`), registered at the first call.
    pub fn store(&self, name: &'static str) -> StoreMetrics {
        let mut store = self.store.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(metrics) = &*store {
            return metrics.clone();
        }
        let label = StoreLabel { store: name };
        let commit = Family::<StoreLabel, Histogram, fn() -> Histogram>::new_with_constructor(duration_histogram);
        let batch = Family::<StoreLabel, Histogram, fn() -> Histogram>::new_with_constructor(size_histogram);
        let failures = CounterFamily::<StoreLabel>::default();
        let metrics = StoreMetrics {
            commit_seconds: commit.get_or_create_owned(&label),
            batch_size: batch.get_or_create_owned(&label),
            commit_failures: failures.get_or_create_owned(&label),
            queue: self.queue(Queue::StoreWriter),
        };
        let mut registry = self.lock();
        registry.register("tidings_store_commit_seconds", "Store commit time", commit);
        registry.register("tidings_store_batch_size", "Writes per store commit (group commit)", batch);
        registry.register("tidings_store_commit_failures", "Store commits that failed", failures);
        *store = Some(metrics.clone());
        metrics
    }

    /// Exports the Redis broker's counters (`tidings_redis_*`).
    pub fn observe_redis(&self, broker: &crate::broker_redis::RedisBroker) {
        self.lock().register_collector(Box::new(RedisCollector(broker.counters_arc())));
    }

    /// The probe of `queue`, which is exported from now on.
    pub fn queue(&self, queue: Queue) -> QueueProbe {
        let i = Queue::ALL.iter().position(|q| *q == queue).unwrap_or(0);
        self.queues[i].0.fed.store(true, Ordering::Relaxed);
        self.queues[i].clone()
    }
}

/// Exports the Redis broker's counters at each scrape.
#[derive(Debug)]
struct RedisCollector(Arc<crate::broker_redis::RedisCounters>);

impl Collector for RedisCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), fmt::Error> {
        use prometheus_client::metrics::counter::ConstCounter;
        let c = &self.0;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let counters: [(&str, &str, u64); 8] = [
            ("tidings_redis_published", "Frames and commands this process sent to Redis", get(&c.published)),
            ("tidings_redis_received", "Stream frames received on the pub/sub connection", get(&c.received)),
            (
                "tidings_redis_duplicates",
                "Received stream frames at or below the position handed on (dropped)",
                get(&c.duplicates),
            ),
            (
                "tidings_redis_skips_repaired",
                "Pub/sub skips or epoch changes repaired by a re-read",
                get(&c.skips_repaired),
            ),
            (
                "tidings_redis_position_repairs",
                "Lost messages found by the periodic position check",
                get(&c.position_repairs),
            ),
            (
                "tidings_redis_repaired_notifications",
                "Notifications handed on by re-reads instead of pub/sub",
                get(&c.repaired_notifications),
            ),
            ("tidings_redis_errors", "Redis commands that failed", get(&c.errors)),
            ("tidings_redis_pubsub_connects", "Pub/sub (re)connections", get(&c.connects)),
        ];
        for (name, help, value) in counters {
            let counter = ConstCounter::new(value);
            let m = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
            counter.encode(m)?;
        }
        Ok(())
    }
}

/// Exports the queue probes at each scrape (ages are computed then).
#[derive(Debug)]
struct QueueCollector([QueueProbe; 2]);

impl Collector for QueueCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), fmt::Error> {
        let depth = Family::<[(&'static str, &'static str); 1], Gauge>::default();
        let age = Family::<[(&'static str, &'static str); 1], Gauge<f64, AtomicU64>>::default();
        for (queue, probe) in Queue::ALL.iter().zip(&self.0).filter(|(_, p)| p.0.fed.load(Ordering::Relaxed)) {
            let label = [("queue", queue.as_str())];
            depth.get_or_create(&label).set(probe.depth() as i64);
            age.get_or_create(&label).set(probe.oldest_age().as_secs_f64());
        }
        let m = encoder.encode_descriptor(
            "tidings_queue_depth",
            "Items waiting in (or being worked on by) a queue",
            None,
            depth.metric_type(),
        )?;
        depth.encode(m)?;
        let m = encoder.encode_descriptor(
            "tidings_queue_oldest_age_seconds",
            "Age of the oldest item waiting in (or being worked on by) a queue",
            None,
            age.metric_type(),
        )?;
        age.encode(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_latency_histogram_is_exposed_as_prometheus_clients_histogram_with_the_same_observations() {
        let render = |metric: &dyn Fn(&mut Registry)| {
            let mut registry = Registry::default();
            metric(&mut registry);
            let mut text = String::new();
            prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
            text
        };
        // On bucket bounds, between them, past the last one; in two frames.
        let frames: [&[f64]; 2] = [&[0.0, 0.001, 0.0011, 0.25, 3.0], &[7200.0, 0.004, 0.001, 60.0]];
        let reference = Histogram::new(LATENCY_BUCKETS);
        let batched = LatencyHistogram::default();
        for frame in frames {
            let mut counts = LatencyCounts::default();
            for &v in frame {
                reference.observe(v);
                counts.observe(v);
            }
            batched.add(&counts);
        }
        batched.add(&LatencyCounts::default());
        let expected = render(&|r| r.register("lat", "Latency", reference.clone()));
        assert!(expected.contains("lat_bucket{le=\"0.001\"} 3"), "{expected}");
        assert!(expected.contains("lat_bucket{le=\"+Inf\"} 9"), "{expected}");
        assert_eq!(render(&|r| r.register("lat", "Latency", batched.clone())), expected);
    }

    #[test]
    fn a_queue_is_exported_once_fed_and_its_oldest_age_grows_while_it_waits() {
        let metrics = Metrics::new();
        assert!(!metrics.render().contains("tidings_queue_depth{"), "nothing feeds a queue yet");
        let push = metrics.queue(Queue::Push);
        let text = metrics.render();
        assert!(text.contains("tidings_queue_depth{queue=\"push\"} 0"), "{text}");
        assert!(!text.contains("store_writer"), "{text}");
        // Three due pushes, the oldest due two seconds ago (what GET /metrics sets from the store's summary).
        push.set(3, Some(Duration::from_secs(2)));
        assert_eq!(push.depth(), 3);
        assert!(push.oldest_age() >= Duration::from_secs(2));
        let text = metrics.render();
        assert!(text.contains("tidings_queue_depth{queue=\"push\"} 3"), "{text}");
        let age: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("tidings_queue_oldest_age_seconds{queue=\"push\"} "))
            .and_then(|v| v.parse().ok())
            .expect("the age is exported");
        assert!((2.0..60.0).contains(&age), "{age}");
        // Due before this process started (a restart with overdue pushes): still the true age.
        push.set(1, Some(Duration::from_secs(3 * 3600)));
        assert!(push.oldest_age() >= Duration::from_secs(3 * 3600));
        push.set(0, None);
        assert_eq!(push.oldest_age(), Duration::ZERO);
    }

    #[test]
    fn pending_pushes_are_set_for_every_reason() {
        use crate::planner::PendingReason as R;
        let metrics = Metrics::new();
        let summary = crate::store::PendingSummary { by_reason: vec![(R::Digest, 4)], due: 0, oldest_due: None };
        metrics.push.set_pending(&summary);
        let text = metrics.render();
        for (reason, n) in [("immediate", 0), ("awaiting_ack", 0), ("digest", 4), ("quiet_hours", 0)] {
            assert!(text.contains(&format!("tidings_push_pending{{reason=\"{reason}\"}} {n}\n")), "{text}");
        }
        metrics.push.cancelled("acked", 0);
        assert!(!text.contains("tidings_push_cancelled_total{"), "no sample for nothing cancelled");
    }
}
