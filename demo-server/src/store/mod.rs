//! Where the server keeps what must outlive a connection: one interface per concern.
//!
//! - [`StreamStore`]: stream history — offsets, epochs, the replayable notifications of every stream — and the
//!   idempotency keys of publishes. A key is written in the same commit as its notification: kept apart, a crash
//!   between the two would either lose the notification (key without rows: the retry is taken for a duplicate)
//!   or deliver it twice (rows without key).
//! - [`AckStore`]: which device acked which notification, and when.
//! - [`DeviceStore`]: the push addresses of devices.
//!
//! Later concerns get their own interface beside these (user preferences, the inbox, pending pushes), each with
//! a memory and a durable implementation. [`Stores`] bundles the implementations a server runs with:
//! [`MemoryStore`] (everything in process memory; nothing survives the process) or [`SqliteStore`] (the embedded
//! default, durable).
//!
//! Every method is asynchronous (a boxed future, so the traits stay object safe) because durable and networked
//! backends wait for disks and networks. No method relies on a lock held by the caller: a backend is safe to
//! call concurrently for any streams, and it alone decides the order of commits.

#[cfg(test)]
pub(crate) mod contract;
mod memory;
pub mod sqlite;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

pub use memory::{MemoryStore, StoreLimits};
pub use sqlite::SqliteStore;

use crate::model::{AckRecord, AppendOutcome, Committed, HistoryRead, Position, Publication, PushRecord};

/// A boxed `Send` future, the return type of every store method.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What kind of failure a [`StoreError`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreErrorKind {
    /// The disk (or the filesystem's quota) is full. Nothing of the failed operation was stored; it succeeds
    /// again once space is freed.
    Full,
    /// The store cannot serve the request now (I/O error, locked, shutting down …). Nothing of the failed operation
    /// was stored.
    Unavailable,
}

/// A store failure. A failed write never leaves part of itself behind.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct StoreError {
    /// What kind of failure.
    pub kind: StoreErrorKind,
    /// What happened, for logs and error replies.
    pub message: String,
}

impl StoreError {
    /// An [`StoreErrorKind::Unavailable`] error.
    pub fn unavailable(message: impl Into<String>) -> Self {
        StoreError { kind: StoreErrorKind::Unavailable, message: message.into() }
    }

    /// A [`StoreErrorKind::Full`] error.
    pub fn full(message: impl Into<String>) -> Self {
        StoreError { kind: StoreErrorKind::Full, message: message.into() }
    }

    /// How long a client should wait before retrying.
    pub fn retry_after(&self) -> Duration {
        match self.kind {
            StoreErrorKind::Full => Duration::from_secs(30),
            StoreErrorKind::Unavailable => Duration::from_secs(5),
        }
    }
}

/// Called by a store once per stream of a committed publication, with what was committed; for one stream always
/// in offset order, and before the append's future completes. The broker passes the fan-out to this process's
/// subscribers here, so that live delivery follows commit order without any lock held across an await.
pub type OnCommit = Box<dyn FnMut(&Committed) + Send>;

/// One publication to append, with what to do once it is committed.
pub struct Append {
    /// The notification and its streams.
    pub publication: Arc<Publication>,
    /// See [`OnCommit`].
    pub on_commit: OnCommit,
}

impl fmt::Debug for Append {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Append").field("publication", &self.publication).finish_non_exhaustive()
    }
}

/// Stream history: offsets, epochs, replayable notifications, and the idempotency keys of publishes.
pub trait StreamStore: Send + Sync + 'static {
    /// Commits the publications of `batch`, in order: each one is appended to every stream of it (buffered ones
    /// get offset `head + 1` there; ephemeral ones get no offset and are not written), with its idempotency key
    /// when it has one. A publication whose key was accepted within the idempotency window is not appended and
    /// comes back as [`AppendOutcome::Duplicate`]. After the commit, each publication's [`OnCommit`] is called
    /// for each of its streams; then the future completes with one result per publication, in order.
    ///
    /// A failed publication leaves nothing of itself in the store; other publications of the batch may still
    /// succeed.
    fn append<'a>(&'a self, batch: Vec<Append>) -> BoxFuture<'a, Vec<Result<AppendOutcome, StoreError>>>;

    /// The current epoch of `stream` (what an ephemeral notification carries).
    fn epoch<'a>(&'a self, stream: &'a str) -> BoxFuture<'a, Result<Arc<str>, StoreError>>;

    /// Reads `stream`'s state and, when `since` is given, its replayable notifications (see
    /// [`HistoryRead::entries`]). A stream nobody published to has head `0` in the current epoch.
    fn read<'a>(
        &'a self,
        stream: &'a str,
        since: Option<Position<'a>>,
    ) -> BoxFuture<'a, Result<HistoryRead, StoreError>>;

    /// Finishes pending writes and releases the store (at graceful shutdown). Later calls fail.
    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(std::future::ready(()))
    }

    /// Whether the store can commit a write now (`GET /readyz`): a durable store commits a small write through the
    /// path publishes take. The default (a memory store) always can.
    fn check_writable(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(std::future::ready(Ok(())))
    }

    /// Called once when a server starts on this store: a store with commits worth measuring takes its
    /// [`StoreMetrics`](crate::metrics::StoreMetrics) from `metrics` (`Metrics::store`) and reports to them.
    fn observe(&self, _metrics: &crate::metrics::Metrics) {}
}

/// Acks: which device received which notification.
pub trait AckStore: Send + Sync + 'static {
    /// Records that `device` of `user` received the notifications `ids` at `at_ms`. Unknown ids are fine; the
    /// first ack of a device for an id is kept.
    fn record<'a>(
        &'a self,
        user: &'a Arc<str>,
        device: &'a Arc<str>,
        ids: &'a [String],
        at_ms: u64,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// The acks recorded for notification `id`, oldest first (empty when unknown or forgotten).
    fn acks<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Vec<AckRecord>, StoreError>>;
}

/// Devices' push addresses.
pub trait DeviceStore: Send + Sync + 'static {
    /// Stores the push address of `record.device` of `user`, replacing the device's previous one. A token
    /// registered by another device of the same user moves to this device (a reinstalled app).
    fn register_push<'a>(&'a self, user: &'a str, record: PushRecord) -> BoxFuture<'a, Result<(), StoreError>>;

    /// The push addresses of `user`'s devices, oldest registration first.
    fn push_addresses<'a>(&'a self, user: &'a str) -> BoxFuture<'a, Result<Vec<PushRecord>, StoreError>>;
}

/// The stores a server runs with.
#[derive(Clone)]
pub struct Stores {
    /// Stream history and idempotency keys.
    pub streams: Arc<dyn StreamStore>,
    /// Acks.
    pub acks: Arc<dyn AckStore>,
    /// Push addresses.
    pub devices: Arc<dyn DeviceStore>,
    /// Whether these stores keep their data across restarts (see `AckRouting` in the node for what follows).
    pub durable: bool,
}

impl fmt::Debug for Stores {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stores").field("durable", &self.durable).finish_non_exhaustive()
    }
}

impl Stores {
    /// All concerns in one [`MemoryStore`].
    pub fn memory(store: MemoryStore) -> Self {
        let store = Arc::new(store);
        Stores { streams: store.clone(), acks: store.clone(), devices: store, durable: false }
    }

    /// All concerns in one [`SqliteStore`].
    pub fn sqlite(store: SqliteStore) -> Self {
        let store = Arc::new(store);
        Stores { streams: store.clone(), acks: store.clone(), devices: store, durable: true }
    }
}

/// A ready future, for backends that answer synchronously.
pub(crate) fn ready<'a, T: Send + 'a>(value: T) -> BoxFuture<'a, T> {
    Box::pin(std::future::ready(value))
}
