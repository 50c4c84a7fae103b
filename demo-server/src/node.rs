//! The node: what one server process shares between its transports, HTTP handlers and publishers, and the
//! publish pipeline they all call.
//!
//! A publish is validated, becomes a [`Publication`] and goes to the [`Broker`], which commits it to the stores
//! and hands every committed stream back to this node ([`BrokerEventHandler`]) for fan-out to the local
//! subscribers, in commit order. Once the broker answered, the publish is complete: what a delivery planner (push
//! routing, a later issue) needs to act on — the committed publication and its deliveries — is at hand in
//! [`Node::publish_batch`], after the commit and outside any lock.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tidings_core::protocol::{Persistence, PushPlatform};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::ServerConfig;
use crate::api_keys::ApiKey;
use crate::auth::TokenVerifier;
use crate::broker::{Broker, BrokerEventHandler};
use crate::broker_redis::{Control, ControlHandler, RedisBroker, Tally};
use crate::health::ReadinessCheck;
use crate::id_ring::IdRing;
use crate::inboxes::InboxWatchers;
use crate::limits::Limiter;
use crate::metrics::{LatencyCounts, LatencyHistogram, Metrics, Transport};
use crate::model::{AckRecord, AppendOutcome, Committed, EncodedFrame, HistoryRead, Position, Publication, PushRecord};
use crate::outbox::ConnHandle;
use crate::presence::Presence;
use crate::publish::{PublishError, PublishReceipt, PublishRequest};
use crate::registry::Registry;
use crate::routing::{Recipients, Routing};
use crate::session::sse::SseKeys;
use crate::session::{SessionConfig, SessionParams};
use crate::store::{MemoryStore, StoreError, StoreLimits, Stores};
use crate::util::now_ms;
use tidings_core::protocol::ErrorCode;

/// Counters of a running server, as returned by [`RunningServer::stats`](crate::RunningServer::stats).
/// Every counter except `connections_open` only grows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// WebSocket connections accepted since start.
    pub connections_total: u64,
    /// WebSocket connections open now.
    pub connections_open: u64,
    /// `auth` frames whose token was refused.
    pub auth_failures: u64,
    /// Frames received from clients (text and binary; not pings).
    pub frames_in: u64,
    /// Publishes accepted (duplicates excluded).
    pub notifications_published: u64,
    /// Publishes acknowledged as duplicates of an earlier idempotency key.
    pub duplicates: u64,
    /// Live notification frames queued to subscribers.
    pub deliveries: u64,
    /// Notification frames queued as replay after a `resumed` subscribe.
    pub replayed: u64,
    /// Acked notification ids received.
    pub acks: u64,
    /// Connections closed for any protocol violation (`4000`, `4009`, `4008`).
    pub protocol_errors: u64,
    /// Connections closed as slow consumers (`4014`).
    pub slow_consumers: u64,
}

/// The counters of [`ServerStats`] that are not metrics of their own (the others are read from
/// [`Metrics::ws`]).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) auth_failures: AtomicU64,
    pub(crate) notifications_published: AtomicU64,
    pub(crate) duplicates: AtomicU64,
    pub(crate) acks: AtomicU64,
    pub(crate) protocol_errors: AtomicU64,
    pub(crate) slow_consumers: AtomicU64,
}

/// Adds `n` to a counter.
pub(crate) fn bump(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// Everything a running server shares between its connections, HTTP handlers and publishers.
pub(crate) struct Node {
    pub(crate) config: ServerConfig,
    pub(crate) session_params: Arc<SessionParams>,
    pub(crate) broker: Arc<dyn Broker>,
    pub(crate) stores: Stores,
    pub(crate) registry: Registry,
    /// The connections watching users' inboxes.
    pub(crate) inbox_watchers: InboxWatchers,
    /// The key of SSE resume tokens and tickets.
    pub(crate) sse_keys: Arc<SseKeys>,
    /// SSE tickets that opened a stream (single use), until their token expires.
    pub(crate) sse_tickets: crate::sse::UsedTickets,
    pub(crate) presence: Presence,
    /// The Redis broker, when the server is one of several processes: cluster presence and control commands.
    pub(crate) cluster: Option<Arc<RedisBroker>>,
    pub(crate) counters: Counters,
    /// The server's metrics (`GET /metrics`).
    pub(crate) metrics: Arc<Metrics>,
    /// Push routing: planning, the worker's wake-up, the dispatcher, the user directory.
    pub(crate) routing: Routing,
    /// Where acks go, and the publish times of recent notifications (for the publish → ack latency).
    acks: AckRouting,
    /// Checks `GET /readyz` runs besides the store and push (Redis, PostgreSQL).
    readiness: Mutex<Vec<Arc<dyn ReadinessCheck>>>,
    /// When the node started.
    pub(crate) started: Instant,
    /// The API keys (`--api-key` with every scope, and the scoped ones).
    pub(crate) api_keys: Vec<ApiKey>,
    /// Failed authentications per client address (tokens and API keys).
    pub(crate) auth_failures: Limiter,
    /// New WebSocket connections per client address.
    pub(crate) connection_rate: Limiter,
    /// Set when shutdown begins: new connections are refused.
    pub(crate) shutting_down: AtomicBool,
    /// Set when the shutdown grace period is over: connection tasks stop at once.
    pub(crate) hard_stop: watch::Sender<bool>,
    next_connection_id: AtomicU64,
    /// Monotonic ULIDs: ids of one process sort in publish order even within a millisecond.
    ids: Mutex<ulid::Generator>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").field("config", &self.config).finish_non_exhaustive()
    }
}

impl Node {
    /// A node on `stores` and `broker`; registers itself as the broker's handler.
    pub(crate) fn new(
        config: ServerConfig,
        stores: Stores,
        broker: Arc<dyn Broker>,
        metrics: Arc<Metrics>,
        cluster: Option<Arc<RedisBroker>>,
    ) -> Arc<Self> {
        let session_params = Arc::new(SessionParams {
            config: SessionConfig::from_config(&config),
            sse: SessionConfig::for_sse(&config),
            verifier: TokenVerifier::new(&config.jwt_secret, config.nbf_leeway),
        });
        let acks = AckRouting::new(&config, stores.durable);
        stores.streams.observe(&metrics);
        let routing = Routing::new(&config, &metrics);
        let mut api_keys = config.api_keys.clone();
        if !config.api_key.is_empty() {
            api_keys.push(ApiKey::all_scopes("api-key", &config.api_key));
        }
        let auth_failures = Limiter::new(config.auth_failure_limit);
        let connection_rate = Limiter::new(config.connection_rate_limit);
        let sse_keys = Arc::new(SseKeys::new(&config.jwt_secret));
        let node = Arc::new(Node {
            routing,
            session_params,
            config,
            broker,
            stores,
            registry: Registry::new(),
            inbox_watchers: InboxWatchers::default(),
            sse_keys,
            sse_tickets: crate::sse::UsedTickets::default(),
            presence: Presence::default(),
            cluster,
            counters: Counters::default(),
            metrics,
            acks,
            readiness: Mutex::new(Vec::new()),
            started: Instant::now(),
            api_keys,
            auth_failures,
            connection_rate,
            shutting_down: AtomicBool::new(false),
            hard_stop: watch::Sender::new(false),
            next_connection_id: AtomicU64::new(1),
            ids: Mutex::new(ulid::Generator::new()),
        });
        let handler: Arc<dyn BrokerEventHandler> = node.clone();
        node.broker.register_handler(Arc::downgrade(&handler));
        if let Some(cluster) = &node.cluster {
            let control: Arc<dyn ControlHandler> = node.clone();
            cluster.register_control(Arc::downgrade(&control));
        }
        node
    }

    // ---- presence and control across processes ----

    /// A session authenticated here: recorded in presence (this process's, and Redis'), and an older session of
    /// the same device closes with 4011 — here, and in the other processes through Redis.
    pub(crate) fn session_started(
        &self,
        handle: &Arc<ConnHandle>,
        user: &Arc<str>,
        device: &Arc<str>,
        session: &Arc<str>,
        connected_at: u64,
    ) -> bool {
        self.presence.register(user, device, session, connected_at);
        let replaced = self.registry.register_device(user, device, handle);
        if let Some(old) = &replaced {
            old.close(
                ErrorCode::SessionReplaced,
                format!("device {device} of user {user} connected again (session {session})"),
            );
        }
        if let Some(cluster) = &self.cluster {
            cluster.presence_add(user, device, session, connected_at);
            cluster.send_control(&Control::Replace {
                origin: cluster.origin(),
                user: user.to_string(),
                device: device.to_string(),
                session: session.to_string(),
                connected_at,
            });
        }
        replaced.is_some()
    }

    /// A session ended here: forgotten by presence; when it was the user's last (in every process), their pushes
    /// waiting for them to go offline are due now.
    pub(crate) fn session_ended(self: &Arc<Self>, user: &Arc<str>, session: &Arc<str>) {
        let last_here = self.presence.unregister(user, session);
        match self.cluster.clone() {
            Some(cluster) => {
                let (node, user, session) = (self.clone(), user.clone(), session.clone());
                tokio::spawn(async move {
                    cluster.presence_remove(&user, &session).await;
                    if last_here && cluster.presence_user(&user).await.is_ok_and(|p| p.devices.is_empty()) {
                        node.user_went_offline(&user).await;
                    }
                });
            }
            None if last_here => {
                // The user's last connection: pushes waiting for them to go offline are due now.
                let (node, user) = (self.clone(), user.clone());
                tokio::spawn(async move { node.user_went_offline(&user).await });
            }
            None => {}
        }
    }

    /// Who is online (`GET /v1/presence`): in every process with Redis.
    pub(crate) async fn presence_all(&self) -> Result<Vec<crate::presence::UserPresence>, StoreError> {
        match &self.cluster {
            Some(cluster) => cluster.presence_all().await,
            None => Ok(self.presence.all()),
        }
    }

    /// One user's connected devices (`GET /v1/presence/{user}`): in every process with Redis.
    pub(crate) async fn presence_user(&self, user: &str) -> Result<crate::presence::UserPresence, StoreError> {
        match &self.cluster {
            Some(cluster) => cluster.presence_user(user).await,
            None => Ok(self.presence.user(user)),
        }
    }

    /// The devices of `user` with a live session, for push routing: in every process with Redis (this process's
    /// when Redis cannot be read).
    pub(crate) async fn live_devices(&self, user: &str) -> std::collections::HashSet<String> {
        let presence = match &self.cluster {
            Some(cluster) => match cluster.presence_user(user).await {
                Ok(presence) => presence,
                Err(e) => {
                    warn!(user, error = %e, "presence could not be read from redis; this process's is used");
                    self.presence.user(user)
                }
            },
            None => self.presence.user(user),
        };
        presence.devices.into_iter().map(|d| d.device).collect()
    }

    /// Drops this process's connections (or `user`'s) with 4015. Returns how many were asked to close.
    pub(crate) fn drop_local(&self, user: Option<&str>) -> u64 {
        let message = "dropped by an operator";
        let dropped = match user {
            Some(user) => {
                self.registry.connections_of(user).iter().filter(|c| c.close(ErrorCode::Dropped, message)).count()
            }
            None => self.registry.close_all(ErrorCode::Dropped, message),
        };
        dropped as u64
    }

    /// [`Node::drop_local`] here and, with Redis, in every other process (the counts summed).
    pub(crate) async fn drop_everywhere(&self, user: Option<&str>) -> Reach {
        let here = self.drop_local(user);
        let Some(cluster) = &self.cluster else { return Reach::local(here) };
        let command = Control::Drop { origin: cluster.origin(), user: user.map(str::to_owned), request: None };
        Reach::with(here, cluster.ask_everywhere(command).await)
    }

    /// Ends the subscription of `stream` of this process's connections (or `user`'s) that have it: each drops the
    /// stream and tells its client (an `error` of code `forbidden` naming the stream). Returns how many
    /// connections were asked.
    pub(crate) fn unsubscribe_local(&self, user: Option<&str>, stream: &str) -> u64 {
        let connections = match user {
            Some(user) => {
                let on: std::collections::HashSet<u64> =
                    self.registry.connections_on(stream).iter().map(|c| c.id()).collect();
                self.registry.connections_of(user).into_iter().filter(|c| on.contains(&c.id())).collect()
            }
            None => self.registry.connections_on(stream),
        };
        let stream: Arc<str> = Arc::from(stream);
        for connection in &connections {
            connection.revoke(stream.clone());
        }
        connections.len() as u64
    }

    /// [`Node::unsubscribe_local`] here and, with Redis, in every other process (the counts summed).
    pub(crate) async fn unsubscribe_everywhere(&self, user: Option<&str>, stream: &str) -> Reach {
        let here = self.unsubscribe_local(user, stream);
        let Some(cluster) = &self.cluster else { return Reach::local(here) };
        let command = Control::Unsubscribe {
            origin: cluster.origin(),
            user: user.map(str::to_owned),
            stream: stream.to_owned(),
            request: None,
        };
        Reach::with(here, cluster.ask_everywhere(command).await)
    }

    pub(crate) fn next_connection_id(&self) -> u64 {
        self.next_connection_id.fetch_add(1, Ordering::Relaxed)
    }

    /// A new server-generated notification id (a ULID).
    pub(crate) fn new_notification_id(&self) -> String {
        let mut generator = self.ids.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        // The generator only fails when 2^80 ids were made within one millisecond.
        generator.generate().unwrap_or_else(|_| ulid::Ulid::generate()).to_string()
    }

    /// Adds a check `GET /readyz` runs.
    pub(crate) fn add_readiness_check(&self, check: Arc<dyn ReadinessCheck>) {
        self.readiness.lock().unwrap_or_else(|e| e.into_inner()).push(check);
    }

    pub(crate) fn readiness_checks(&self) -> Vec<Arc<dyn ReadinessCheck>> {
        self.readiness.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    pub(crate) fn stats(&self) -> ServerStats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let (ws, sse) = (&self.metrics.ws, &self.metrics.sse);
        ServerStats {
            connections_total: ws.accepted.get() + sse.accepted.get(),
            connections_open: self.registry.connection_count() as u64,
            auth_failures: get(&c.auth_failures),
            frames_in: ws.frames_in.get(),
            notifications_published: get(&c.notifications_published),
            duplicates: get(&c.duplicates),
            deliveries: ws.live.get() + sse.live.get(),
            replayed: ws.replayed.get() + sse.replayed.get(),
            acks: get(&c.acks),
            protocol_errors: get(&c.protocol_errors),
            slow_consumers: get(&c.slow_consumers),
        }
    }

    // ---- the publish pipeline ----

    /// Validates and publishes `requests`, in order, as one batch: the broker commits them together (one
    /// transaction on a durable store) and each is delivered once committed. One result per request; a bad or
    /// failed item does not stop the others.
    pub(crate) async fn publish_batch(
        &self,
        requests: Vec<PublishRequest>,
    ) -> Vec<Result<PublishReceipt, PublishError>> {
        let started = Instant::now();
        let request_id = crate::http::current_request_id();
        let mut results: Vec<Option<Result<PublishReceipt, PublishError>>> = Vec::with_capacity(requests.len());
        let mut batch = Vec::with_capacity(requests.len());
        let mut positions = Vec::with_capacity(requests.len());
        let mut recipients = Vec::with_capacity(requests.len());
        for request in requests {
            if let Err(e) = request.validate() {
                results.push(Some(Err(e)));
                continue;
            }
            if self.is_shutting_down() {
                results.push(Some(Err(PublishError::unavailable("the server is shutting down"))));
                continue;
            }
            let idempotent = request.id.is_some();
            // A server-generated id is drawn below, just before the batch goes to the broker.
            let id = request.id.clone().unwrap_or_default();
            let mut users: Vec<String> = Vec::with_capacity(request.users.len());
            for user in &request.users {
                if !users.contains(user) {
                    users.push(user.clone());
                }
            }
            let topic = request.topics.first().cloned();
            let overrides = request.push.overrides();
            let mut publication = request.into_publication(id, idempotent, now_ms());
            self.apply_socket_preferences(&mut publication, &users, topic.as_deref()).await;
            positions.push(results.len());
            results.push(None);
            publication.request_id = request_id.clone();
            batch.push(publication);
            recipients.push(Recipients { users, topic, overrides });
        }
        // Server-generated ids are drawn here, with no wait between them and the broker's queue: concurrent
        // publishes reach the store in the order of their ids, and a store seldom has to draw one again to keep
        // them ordered in a stream (model.rs `IdFloor`).
        let mut batch: Vec<Arc<Publication>> = batch
            .into_iter()
            .map(|mut publication| {
                if !publication.idempotent {
                    let id = self.new_notification_id();
                    publication.fields.id.clone_from(&id);
                    publication.id = Arc::from(id);
                }
                Arc::new(publication)
            })
            .collect();
        if !batch.is_empty() {
            self.acks.published(&batch);
            let outcomes = self.broker.publish(batch.clone()).await;
            // A store that drew another id to keep ids ordered in a stream committed the publication under it:
            // from here on (receipt, inbox, pushes) it is known by that id.
            let mut renamed = Vec::new();
            for (publication, outcome) in batch.iter_mut().zip(&outcomes) {
                if let Ok(AppendOutcome::Appended { reissued: Some(id), .. }) = outcome {
                    *publication = Arc::new(publication.with_id(id));
                    renamed.push(publication.clone());
                }
            }
            if !renamed.is_empty() {
                self.acks.published(&renamed);
            }
            let (mut accepted, mut duplicate, mut failed) = (0, 0, 0);
            // Persistent notifications become inbox items before the publish is answered: a 2xx means they are in
            // the inboxes too (and a push's badge counts them). If that fails, the publish fails (a retry with the
            // same id completes it).
            let published: Vec<_> = batch.iter().cloned().zip(&outcomes).collect();
            let inbox = self.add_to_inboxes(&published).await;
            let mut committed = Vec::new();
            // Push planning needs each publication's deliveries; without push delivery configured nothing is kept.
            let pushes = self.routing.dispatcher.is_some();
            for (((at, publication), outcome), recipients) in
                positions.into_iter().zip(&batch).zip(outcomes).zip(recipients)
            {
                let outcome = match (&inbox, outcome) {
                    (Err(e), Ok(_)) if publication.persistence() == Persistence::Persistent => Err(e.clone()),
                    (_, outcome) => outcome,
                };
                match &outcome {
                    Ok(AppendOutcome::Appended { deliveries, .. }) => {
                        accepted += 1;
                        if pushes {
                            committed.push((publication.clone(), deliveries.clone(), recipients));
                        }
                    }
                    Ok(AppendOutcome::Duplicate(_)) => duplicate += 1,
                    Err(_) => failed += 1,
                }
                results[at] = Some(self.receipt(publication, outcome));
            }
            // The publish is answered once its pushes are scheduled (one more commit, only for recipients with
            // push addresses).
            self.plan_pushes(committed).await;
            self.metrics.published(accepted, duplicate, failed, started.elapsed());
        }
        results.into_iter().map(|r| r.unwrap_or_else(|| Err(PublishError::unavailable("no result")))).collect()
    }

    fn receipt(
        &self,
        publication: &Publication,
        outcome: Result<AppendOutcome, StoreError>,
    ) -> Result<PublishReceipt, PublishError> {
        let id = publication.id.to_string();
        match outcome {
            Ok(AppendOutcome::Appended { deliveries, .. }) => {
                bump(&self.counters.notifications_published, 1);
                debug!(
                    id = %id,
                    kind = %publication.fields.kind,
                    priority = publication.fields.priority.as_str(),
                    persistence = publication.persistence().as_str(),
                    streams = deliveries.len(),
                    "published"
                );
                Ok(PublishReceipt { id, duplicate: false, deliveries })
            }
            Ok(AppendOutcome::Duplicate(deliveries)) => {
                bump(&self.counters.duplicates, 1);
                debug!(id = %id, "duplicate publish ignored");
                Ok(PublishReceipt { id, duplicate: true, deliveries })
            }
            Err(e) => {
                warn!(id = %id, error = %e, "publish failed");
                Err(PublishError::from_store(&e))
            }
        }
    }

    // ---- subscriptions ----

    /// Makes `conn` a (syncing) subscriber of `stream`, then reads the stream's history from `position`.
    pub(crate) async fn join(
        &self,
        stream: &str,
        conn: &Arc<ConnHandle>,
        position: Option<Position<'_>>,
    ) -> Result<HistoryRead, StoreError> {
        self.registry.begin_subscribe(stream, conn);
        // Every join waits for the broker to listen to the stream (the first one asks for it; the others wait for
        // that): a history read before the broker listens could miss a commit made meanwhile. On failure the
        // connection is not left registered (the next join asks the broker again).
        if let Err(e) = self.broker.subscribe(stream).await {
            self.leave(stream, conn.id());
            return Err(e);
        }
        self.broker.history(stream, position).await
    }

    /// Removes connection `conn_id` from `stream`.
    pub(crate) fn leave(&self, stream: &str, conn_id: u64) {
        if self.registry.remove(stream, conn_id) {
            self.broker.unsubscribe(stream);
        }
    }

    // ---- acks and devices ----

    /// Records the acks of `device` of `user` that came on `transport` (an `ack` frame, or an HTTP call of a
    /// transport without an upstream), and the publish → ack latency of the ids this node published recently.
    pub(crate) async fn record_acks(&self, transport: Transport, user: &Arc<str>, device: &Arc<str>, ids: &[String]) {
        bump(&self.counters.acks, ids.len() as u64);
        let (count, latency) = match transport {
            Transport::Ws | Transport::Sse => {
                let conn = self.metrics.conn(transport);
                (conn.acks.clone(), conn.ack_latency.clone())
            }
            other => self.metrics.acks(other),
        };
        count.inc_by(ids.len() as u64);
        let at = self.routing.clock.now_ms();
        // Publish times are wall-clock (`created_at`).
        let result = match self.acks.route(user, device, ids, at, now_ms(), &latency) {
            None => self.stores.acks.record(user, device, ids, at).await,
            Some(durable) if durable.is_empty() => Ok(Vec::new()),
            Some(durable) => self.stores.acks.record(user, device, &durable, at).await,
        };
        match result {
            Ok(cancelled) if !cancelled.is_empty() => {
                self.metrics.push.cancelled("acked", cancelled.len() as u64);
                debug!(user = %user, device = %device, cancelled = cancelled.len(), "acks cancelled pending pushes");
            }
            Ok(_) => {}
            Err(e) => warn!(user = %user, device = %device, error = %e, "acks could not be recorded"),
        }
    }

    /// The acks of notification `id`.
    pub(crate) async fn acks(&self, id: &str) -> Result<Vec<AckRecord>, StoreError> {
        let kept = self.acks.acks(id);
        if !kept.is_empty() {
            return Ok(kept);
        }
        self.stores.acks.acks(id).await
    }

    /// Stores the push address of `device` of `user`.
    pub(crate) async fn register_push(
        &self,
        user: &Arc<str>,
        device: &Arc<str>,
        platform: PushPlatform,
        token: String,
    ) -> Result<(), StoreError> {
        let record = PushRecord { device: device.clone(), platform, token, registered_at: now_ms() };
        let result = self.stores.devices.register_push(user, record).await;
        self.forget_user(user);
        match &result {
            Ok(()) => info!(user = %user, device = %device, platform = platform.as_str(), "push address registered"),
            Err(e) => warn!(user = %user, error = %e, "push address could not be stored"),
        }
        result
    }
}

/// What an operator command (drop, unsubscribe) came to across the processes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Reach {
    /// Connections it touched, summed over the processes that answered.
    pub(crate) count: u64,
    /// The processes whose connections are in `count` (this one included).
    pub(crate) processes: u64,
    /// Whether every process that received the command answered in time (see `RedisBroker::ask_everywhere`).
    pub(crate) complete: bool,
}

impl Reach {
    fn local(count: u64) -> Reach {
        Reach { count, processes: 1, complete: true }
    }

    fn with(here: u64, others: Tally) -> Reach {
        Reach { count: here + others.count, processes: 1 + others.answered, complete: others.complete }
    }
}

impl ControlHandler for Node {
    fn handle_control(&self, command: Control) -> Option<u64> {
        match command {
            Control::Replace { user, device, session, connected_at, .. } => {
                let local = self.presence.user(&user);
                let mine = local.devices.iter().find(|d| d.device == device)?;
                // The newer session wins (ties: the larger session id), whichever process heard of the other first.
                if (mine.connected_at, mine.session.as_str()) >= (connected_at, session.as_str()) {
                    return None;
                }
                if let Some(conn) = self.registry.device_connection(&user, &device) {
                    conn.close(
                        ErrorCode::SessionReplaced,
                        format!("device {device} of user {user} connected again (session {session})"),
                    );
                }
                None
            }
            Control::Drop { user, .. } => {
                let dropped = self.drop_local(user.as_deref());
                info!(user = user.as_deref().unwrap_or("*"), dropped, "operator drop from another process");
                Some(dropped)
            }
            Control::Unsubscribe { user, stream, .. } => {
                let asked = self.unsubscribe_local(user.as_deref(), &stream);
                info!(
                    user = user.as_deref().unwrap_or("*"),
                    stream, asked, "operator unsubscribe from another process"
                );
                Some(asked)
            }
            Control::Count { .. } => None,
        }
    }

    fn local_sessions(&self) -> Vec<(String, String, String, u64)> {
        self.presence
            .all()
            .into_iter()
            .flat_map(|u| u.devices.into_iter().map(move |d| (u.user.clone(), d.device, d.session, d.connected_at)))
            .collect()
    }
}

impl BrokerEventHandler for Node {
    fn handle_publication(&self, committed: &Committed) {
        self.handle_publications(std::slice::from_ref(committed));
    }

    fn handle_publications(&self, batch: &[Committed]) {
        self.acks.note_all(batch);
        for run in batch.chunk_by(|a, b| a.stream == b.stream) {
            let fan_out = self.registry.fan_out_run(run);
            if tracing::enabled!(tracing::Level::DEBUG) {
                for committed in run {
                    debug!(id = %committed.id, stream = %committed.stream, run = run.len(), queued = fan_out.queued, "fanned out");
                }
            }
            self.count_fan_out(&fan_out);
        }
    }

    fn handle_inbox(&self, user: &str, frame: &EncodedFrame) {
        self.inbox_watchers.fan_out(user, frame);
    }
}

impl Node {
    fn count_fan_out(&self, fan_out: &crate::registry::FanOut) {
        let (ws, sse) = (&self.metrics.ws, &self.metrics.sse);
        ws.live.inc_by(fan_out.queued - fan_out.sse_queued);
        sse.live.inc_by(fan_out.sse_queued);
        if fan_out.overflowed > 0 {
            bump(&self.counters.slow_consumers, fan_out.overflowed);
            ws.dropped.inc_by(fan_out.overflowed - fan_out.sse_overflowed);
            sse.dropped.inc_by(fan_out.sse_overflowed);
        }
    }
}

/// Where acks are kept, and the publish → ack latency. On a durable store, the acks of a notification this node
/// fanned out only to topic streams stay in memory (bounded as the memory store bounds acks): a broadcast to N
/// subscribers is acked N times, and writing one row per subscriber and notification would make the store, not
/// the sockets, the limit of broadcast fan-out. Acks of notifications addressed to users, and of ids this node does
/// not know (published before a restart), are written to the store. On a memory store everything goes to the
/// store.
///
/// What the node knows of its recent notifications — when it published them, and to which kinds of streams it
/// fanned them out — is one table, so that an ack costs one lookup of its id here (two tables cost two, about 5 %
/// of a server's CPU in S6).
struct AckRouting {
    recent: Mutex<RecentIds>,
    /// The acks of topic-only notifications; `None` on a memory store.
    topic_acks: Option<MemoryStore>,
}

/// Recently published or fanned-out notifications, by id; the oldest are forgotten first (an ack that comes later
/// is not measured, and goes to the store).
#[derive(Default)]
struct RecentIds {
    ids: IdRing<Arc<str>, Recent>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Recent {
    /// When this node published it (`created_at`, ms since the Unix epoch); `None` for another node's.
    published_at: Option<u64>,
    /// The streams this node fanned it out to.
    streams: Fanned,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Fanned {
    /// Not fanned out here yet.
    #[default]
    Nowhere,
    /// To topic streams only.
    TopicsOnly,
    /// To at least one user stream.
    SomeUser,
}

/// How many recently published or fanned-out ids [`AckRouting`] remembers.
const RECENT_IDS: usize = 65_536;

impl RecentIds {
    /// `id`'s entry, added if new (`hint`: as for [`IdRing::find`]; set to the entry's sequence number).
    fn entry(&mut self, id: &Arc<str>, hint: &mut Option<u64>) -> &mut Recent {
        let seq = match self.ids.find(id, *hint) {
            Some(seq) => seq,
            None => {
                while self.ids.len() >= RECENT_IDS {
                    self.ids.pop_front();
                }
                self.ids.push_back(id.clone(), Recent::default())
            }
        };
        *hint = Some(seq);
        self.ids.get_mut(seq).expect("just found or added")
    }
}

impl AckRouting {
    fn new(config: &ServerConfig, durable: bool) -> Self {
        AckRouting {
            recent: Mutex::new(RecentIds::default()),
            topic_acks: durable.then(|| MemoryStore::new(StoreLimits::from_config(config))),
        }
    }

    fn recent(&self) -> std::sync::MutexGuard<'_, RecentIds> {
        self.recent.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Remembers when this node published `batch` (the start of the publish → ack latency).
    fn published(&self, batch: &[Arc<Publication>]) {
        let mut recent = self.recent();
        let mut hint = None;
        for p in batch {
            recent.entry(&p.id, &mut hint).published_at = Some(p.created_at());
        }
    }

    /// Remembers which kind of stream a committed notification went to.
    #[cfg(test)]
    fn note(&self, committed: &Committed) {
        self.note_all(std::slice::from_ref(committed));
    }

    /// Remembers which kind of stream each of `batch` went to.
    fn note_all(&self, batch: &[Committed]) {
        let mut recent = self.recent();
        let mut hint = None;
        for committed in batch {
            let topic = committed.stream.starts_with("topic:");
            let streams = &mut recent.entry(&committed.id, &mut hint).streams;
            *streams = match (*streams, topic) {
                (Fanned::Nowhere | Fanned::TopicsOnly, true) => Fanned::TopicsOnly,
                _ => Fanned::SomeUser,
            };
        }
    }

    /// Observes the latency of the acked ids this node published (`now`: wall-clock ms), keeps the acks of
    /// topic-only ones in memory and returns the ids whose acks go to the store (`None`: all of them). The common
    /// cases — every id of a frame of one kind — copy nothing.
    fn route(
        &self,
        user: &Arc<str>,
        device: &Arc<str>,
        ids: &[String],
        at: u64,
        now: u64,
        latency: &LatencyHistogram,
    ) -> Option<Vec<String>> {
        let mut topic_only = Vec::with_capacity(if self.topic_acks.is_some() { ids.len() } else { 0 });
        let mut latencies = LatencyCounts::default();
        {
            let recent = self.recent();
            let mut hint = None;
            for id in ids {
                let seq = recent.ids.find_next(id, &mut hint);
                let known = seq.and_then(|seq| recent.ids.get(seq));
                if let Some(published) = known.and_then(|r| r.published_at) {
                    latencies.observe(now.saturating_sub(published) as f64 / 1000.0);
                }
                if self.topic_acks.is_some() {
                    topic_only.push(known.is_some_and(|r| r.streams == Fanned::TopicsOnly));
                }
            }
        }
        latency.add(&latencies);
        let kept = self.topic_acks.as_ref()?;
        let topics = topic_only.iter().filter(|t| **t).count();
        if topics == 0 {
            return None;
        }
        if topics == ids.len() {
            kept.record_acks_now(user, device, ids, at);
            return Some(Vec::new());
        }
        let (mut topic, mut durable) = (Vec::with_capacity(topics), Vec::with_capacity(ids.len() - topics));
        for (id, only) in ids.iter().zip(topic_only) {
            if only { topic.push(id.clone()) } else { durable.push(id.clone()) }
        }
        kept.record_acks_now(user, device, &topic, at);
        Some(durable)
    }

    /// The acks kept in memory for `id`.
    fn acks(&self, id: &str) -> Vec<AckRecord> {
        self.topic_acks.as_ref().map(|t| t.acks_now(id)).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::EncodedFrame;

    fn committed(id: &str, stream: &str) -> Committed {
        Committed {
            id: Arc::from(id),
            stream: Arc::from(stream),
            epoch: Arc::from("e"),
            offset: Some(1),
            frame: EncodedFrame::new(String::new()),
        }
    }

    #[test]
    fn on_a_durable_store_acks_of_topic_only_notifications_stay_in_memory() {
        let routing = AckRouting::new(&ServerConfig::for_tests(), true);
        routing.note(&committed("broadcast", "topic:news"));
        routing.note(&committed("both", "topic:news"));
        routing.note(&committed("both", "user:alice"));
        routing.note(&committed("direct", "user:alice"));
        let (alice, phone): (Arc<str>, Arc<str>) = (Arc::from("alice"), Arc::from("phone"));
        let ids = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let histogram = LatencyHistogram::default();
        assert_eq!(
            routing.route(&alice, &phone, &ids(&["broadcast"]), 5, 0, &histogram),
            Some(vec![]),
            "kept, nothing to write"
        );
        assert_eq!(routing.route(&alice, &phone, &ids(&["direct", "unknown"]), 6, 0, &histogram), None, "all written");
        assert_eq!(
            routing.route(&alice, &phone, &ids(&["broadcast", "both", "unknown"]), 7, 0, &histogram),
            Some(ids(&["both", "unknown"])),
            "a notification that also went to a user, or one this node does not know, is written"
        );
        let kept: Vec<(String, u64)> = routing.acks("broadcast").iter().map(|a| (a.device.to_string(), a.at)).collect();
        assert_eq!(kept, [("phone".to_string(), 5)]);
        assert!(routing.acks("both").is_empty());
        let memory = AckRouting::new(&ServerConfig::for_tests(), false);
        memory.note(&committed("broadcast", "topic:news"));
        assert_eq!(
            memory.route(&alice, &phone, &ids(&["broadcast"]), 5, 0, &histogram),
            None,
            "a memory store takes them all"
        );
    }

    /// The `_count` and `_sum` of `histogram`, from its text rendering.
    fn observed(histogram: &LatencyHistogram) -> (u64, f64) {
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register("lat", "", histogram.clone());
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        let value = |name: &str| {
            text.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.trim().parse::<f64>().ok()).unwrap_or(0.0)
        };
        (value("lat_count ") as u64, value("lat_sum "))
    }

    #[test]
    fn the_ack_latency_is_measured_for_ids_this_node_published_whatever_streams_they_went_to() {
        let routing = AckRouting::new(&ServerConfig::for_tests(), true);
        let published = |id: &str, streams: &[&str], at: u64| {
            crate::store::contract::publication(id, streams, Persistence::Bufferable, at)
        };
        // Published here: a broadcast, and one to a user; fanned out here as well, before or after its publish is
        // noted (another node's publication is only fanned out).
        routing.note(&committed("broadcast", "topic:news"));
        routing
            .published(&[published("broadcast", &["topic:news"], 1_000), published("direct", &["user:alice"], 2_000)]);
        routing.note(&committed("direct", "user:alice"));
        routing.note(&committed("elsewhere", "topic:news"));
        let (alice, phone): (Arc<str>, Arc<str>) = (Arc::from("alice"), Arc::from("phone"));
        let ids = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let histogram = LatencyHistogram::default();
        let durable =
            routing.route(&alice, &phone, &ids(&["broadcast", "direct", "elsewhere", "unknown"]), 9, 4_500, &histogram);
        assert_eq!(durable, Some(ids(&["direct", "unknown"])), "the topic-only ones stay, published here or not");
        assert_eq!(observed(&histogram), (2, 3.5 + 2.5), "broadcast acked 3.5 s after its publish, direct 2.5 s");
        assert_eq!(routing.acks("elsewhere").len(), 1);
        // An id fanned out to a topic and then to a user is no longer topic-only.
        routing.note(&committed("broadcast", "user:bob"));
        assert_eq!(routing.route(&alice, &phone, &ids(&["broadcast"]), 10, 5_000, &histogram), None);
        assert_eq!(observed(&histogram).0, 3);
    }
}
