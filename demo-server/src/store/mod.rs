//! Where the server keeps what must outlive a connection: one interface per concern.
//!
//! - [`StreamStore`]: stream history — offsets, epochs, the replayable notifications of every stream — and the
//!   idempotency keys of publishes. A key is written in the same commit as its notification: kept apart, a crash
//!   between the two would either lose the notification (key without rows: the retry is taken for a duplicate)
//!   or deliver it twice (rows without key).
//! - [`AckStore`]: which device acked which notification, and when.
//! - [`DeviceStore`]: the push addresses of devices.
//! - [`InboxStore`]: users' inboxes — items, their seen/read/archived state, the counts — and topic follows (see
//!   [`inbox`] for the model).
//! - [`SettingsStore`]: users' preferences and quiet hours.
//! - [`PushStore`]: pending pushes, digest windows and the deliveries log (see [`push`] for their life cycle).
//!
//! Each concern has a memory and a durable implementation. [`Stores`] bundles the implementations a server runs
//! with:
//! [`MemoryStore`] (everything in process memory; nothing survives the process) or [`SqliteStore`] (the embedded
//! default, durable).
//!
//! Every method is asynchronous (a boxed future, so the traits stay object safe) because durable and networked
//! backends wait for disks and networks. No method relies on a lock held by the caller: a backend is safe to
//! call concurrently for any streams, and it alone decides the order of commits.

#[cfg(test)]
pub(crate) mod contract;
pub mod inbox;
#[cfg(test)]
pub(crate) mod inbox_contract;
mod memory;
mod memory_push;
pub mod postgres;
pub mod push;
pub mod sqlite;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

pub use inbox::{ChangeKind, ChangeRequest, InboxAdd, InboxChange, InboxStore, MemoryInbox};
pub use memory::{INBOX_OP_WINDOW, MemoryStore, StoreLimits};
pub use postgres::PostgresStore;
pub use push::{
    DeliveryRecord, DeliveryStatus, PendingSummary, PlanItem, PushStore, SettingsChange, SettingsError, SettingsStore,
    Settlement, StoredPush, UserSettings,
};
pub use sqlite::SqliteStore;

use crate::model::{AckRecord, AppendOutcome, Committed, HistoryEntry, HistoryRead, Position, Publication, PushRecord};
use crate::planner::RowKey;

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

    /// A page of what `stream` stores, oldest first (`GET /v1/streams/{stream}/history`, protocol §14): at most
    /// `limit` notifications after `after` — an `(epoch, offset)`; a position of another epoch, or none, reads from
    /// the oldest stored. A durable store keeps `persistent` notifications beyond the replay window, for its
    /// retention; by default (the memory store) the page reads what [`StreamStore::read`] replays.
    fn page<'a>(
        &'a self,
        stream: &'a str,
        after: Option<Position<'a>>,
        limit: usize,
    ) -> BoxFuture<'a, Result<StoredPage, StoreError>> {
        Box::pin(async move {
            let epoch = self.epoch(stream).await?;
            let read = self.read(stream, Some((&epoch, 0))).await?;
            let after = after.filter(|(e, _)| *e == &*epoch).map_or(0, |(_, o)| o);
            let oldest = read.state.oldest;
            let mut entries: Vec<HistoryEntry> = read.entries.into_iter().filter(|e| e.offset > after).collect();
            let more = entries.len() > limit;
            entries.truncate(limit);
            Ok(StoredPage { state: read.state, oldest, entries, more })
        })
    }

    /// The notification `id` in `stream`, if the stream still holds it (for `GET /v1/me/notifications/{id}`, what
    /// an SDK fetches when a push was too large to carry the notification). By default: a scan of what
    /// [`StreamStore::read`] replays.
    fn find<'a>(&'a self, stream: &'a str, id: &'a str) -> BoxFuture<'a, Result<Option<HistoryEntry>, StoreError>> {
        Box::pin(async move {
            let epoch = self.epoch(stream).await?;
            let read = self.read(stream, Some((&epoch, 0))).await?;
            Ok(read.entries.into_iter().find(|e| frame_id(e.frame.as_str()).as_deref() == Some(id)))
        })
    }

    /// Finishes pending writes and releases the store (at graceful shutdown). Later calls fail.
    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(std::future::ready(()))
    }

    /// Whether the store can commit a write now (`GET /readyz`): a durable store commits a small write through the
    /// path publishes take. The default (a memory store) always can.
    fn check_writable(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(std::future::ready(Ok(())))
    }

    /// What the store is, for `/readyz` (`memory`, `sqlite`, `postgres`).
    fn kind(&self) -> &'static str {
        "memory"
    }

    /// Called once when a server starts on this store: a store with commits worth measuring takes its
    /// [`StoreMetrics`](crate::metrics::StoreMetrics) from `metrics` (`Metrics::store`) and reports to them.
    fn observe(&self, _metrics: &crate::metrics::Metrics) {}
}

/// A page of a stream's stored history (see [`StreamStore::page`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredPage {
    /// The stream's state (its epoch, head and oldest replayable offset).
    pub state: crate::model::StreamState,
    /// The oldest offset stored (`head + 1` when none).
    pub oldest: u64,
    /// The notifications, in offset order.
    pub entries: Vec<HistoryEntry>,
    /// Whether more notifications follow the page.
    pub more: bool,
}

/// Acks: which device received which notification.
pub trait AckStore: Send + Sync + 'static {
    /// Records that `device` of `user` received the notifications `ids` at `at_ms`. Unknown ids are fine; the
    /// first ack of a device for an id is kept. In the same commit, deletes `user`'s pending pushes of these
    /// notifications that an ack cancels (see [`push`]) and logs their cancellation; returns their keys.
    fn record<'a>(
        &'a self,
        user: &'a Arc<str>,
        device: &'a Arc<str>,
        ids: &'a [String],
        at_ms: u64,
    ) -> BoxFuture<'a, Result<Vec<RowKey>, StoreError>>;

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

    /// Deletes the push address of `device` of `user` if it is still `token` (a provider said it is gone; a
    /// device that registered a new token meanwhile keeps it). Returns whether it was deleted.
    fn delete_push<'a>(
        &'a self,
        user: &'a str,
        device: &'a str,
        token: &'a str,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;
}

/// Where the app icon badge of a user's pushes comes from (`aps.badge`): the unread count of the user's inbox
/// (issue 18). Without one, pushes carry no badge.
pub trait BadgeSource: Send + Sync + 'static {
    /// The badge for `user` now (`None`: leave the badge as it is).
    fn badge<'a>(&'a self, user: &'a str) -> BoxFuture<'a, Result<Option<u32>, StoreError>>;
}

/// The badge of a user's pushes from their inbox: the unread count (protocol §13.5).
struct InboxBadges<S: ?Sized>(Arc<S>);

impl<S: InboxStore + ?Sized> BadgeSource for InboxBadges<S> {
    fn badge<'a>(&'a self, user: &'a str) -> BoxFuture<'a, Result<Option<u32>, StoreError>> {
        Box::pin(async move {
            let counts = self.0.counts(user).await?;
            Ok(Some(u32::try_from(counts.unread).unwrap_or(u32::MAX)))
        })
    }
}

/// Whether an encoded `notification` frame is the notification `id`.
pub(crate) fn frame_id(frame: &str) -> Option<String> {
    match tidings_core::protocol::decode_server_frame(frame) {
        Ok(tidings_core::protocol::ServerFrame::Notification(n)) => Some(n.id().to_owned()),
        _ => None,
    }
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
    /// Inboxes.
    pub inbox: Arc<dyn InboxStore>,
    /// Preferences and quiet hours.
    pub settings: Arc<dyn SettingsStore>,
    /// Pending pushes, digest windows, the deliveries log.
    pub push: Arc<dyn PushStore>,
    /// The badge count of pushes (none by default; see [`BadgeSource`]).
    pub badges: Option<Arc<dyn BadgeSource>>,
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
        let inbox = Arc::new(MemoryInbox::new(store.limits().clone(), store.clock()));
        let store = Arc::new(store);
        let badges: Arc<dyn BadgeSource> = Arc::new(InboxBadges(inbox.clone()));
        Stores {
            streams: store.clone(),
            acks: store.clone(),
            devices: store.clone(),
            settings: store.clone(),
            push: store,
            inbox,
            badges: Some(badges),
            durable: false,
        }
    }

    /// All concerns in one [`SqliteStore`].
    pub fn sqlite(store: SqliteStore) -> Self {
        Self::durable(Arc::new(store))
    }

    /// All concerns in one [`PostgresStore`].
    pub fn postgres(store: PostgresStore) -> Self {
        Self::durable(Arc::new(store))
    }

    /// All concerns in one durable store, the badge from its inboxes.
    fn durable<S>(store: Arc<S>) -> Self
    where
        S: StreamStore + AckStore + DeviceStore + SettingsStore + PushStore + InboxStore,
    {
        Stores {
            streams: store.clone(),
            acks: store.clone(),
            devices: store.clone(),
            settings: store.clone(),
            push: store.clone(),
            badges: Some(Arc::new(InboxBadges(store.clone()))),
            inbox: store,
            durable: true,
        }
    }
}

/// A ready future, for backends that answer synchronously.
pub(crate) fn ready<'a, T: Send + 'a>(value: T) -> BoxFuture<'a, T> {
    Box::pin(std::future::ready(value))
}
