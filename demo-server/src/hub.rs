//! The state shared by every part of a running server.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::ServerConfig;
use crate::auth::TokenVerifier;
use crate::presence::{Connections, Presence};
use crate::registry::Registry;
use crate::storage::Storage;

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

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) connections_total: AtomicU64,
    pub(crate) auth_failures: AtomicU64,
    pub(crate) frames_in: AtomicU64,
    pub(crate) notifications_published: AtomicU64,
    pub(crate) duplicates: AtomicU64,
    pub(crate) deliveries: AtomicU64,
    pub(crate) replayed: AtomicU64,
    pub(crate) acks: AtomicU64,
    pub(crate) protocol_errors: AtomicU64,
    pub(crate) slow_consumers: AtomicU64,
}

/// Adds `n` to a counter.
pub(crate) fn bump(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// Everything a running server shares between its connections, HTTP handlers and publishers.
pub(crate) struct Hub {
    pub(crate) config: ServerConfig,
    pub(crate) verifier: TokenVerifier,
    pub(crate) storage: Arc<dyn Storage>,
    pub(crate) registry: Registry,
    pub(crate) presence: Presence,
    pub(crate) connections: Connections,
    pub(crate) counters: Counters,
    /// Set when shutdown begins: new connections are refused.
    pub(crate) shutting_down: AtomicBool,
    /// Set when the shutdown grace period is over: connection tasks stop at once.
    pub(crate) hard_stop: watch::Sender<bool>,
    next_connection_id: AtomicU64,
    /// Monotonic ULIDs: ids of one process sort in publish order even within a millisecond.
    ids: Mutex<ulid::Generator>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub").field("config", &self.config).finish_non_exhaustive()
    }
}

impl Hub {
    pub(crate) fn new(config: ServerConfig, storage: Arc<dyn Storage>) -> Self {
        Hub {
            verifier: TokenVerifier::new(&config.jwt_secret, config.nbf_leeway),
            config,
            storage,
            registry: Registry::new(),
            presence: Presence::default(),
            connections: Connections::default(),
            counters: Counters::default(),
            shutting_down: AtomicBool::new(false),
            hard_stop: watch::Sender::new(false),
            next_connection_id: AtomicU64::new(1),
            ids: Mutex::new(ulid::Generator::new()),
        }
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

    pub(crate) fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    pub(crate) fn stats(&self) -> ServerStats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ServerStats {
            connections_total: get(&c.connections_total),
            connections_open: self.connections.len() as u64,
            auth_failures: get(&c.auth_failures),
            frames_in: get(&c.frames_in),
            notifications_published: get(&c.notifications_published),
            duplicates: get(&c.duplicates),
            deliveries: get(&c.deliveries),
            replayed: get(&c.replayed),
            acks: get(&c.acks),
            protocol_errors: get(&c.protocol_errors),
            slow_consumers: get(&c.slow_consumers),
        }
    }
}
