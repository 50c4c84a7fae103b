//! What the engine persists ([`Snapshot`]) and how two snapshots of one store merge.

use super::batch::PendingBatch;
use super::map::StreamMap;
use crate::protocol::PushPlatform;

/// A stream's position: the last offset seen in an epoch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cursor {
    /// The stream's history generation.
    pub epoch: String,
    /// Last offset seen.
    pub offset: u64,
}

/// Everything the engine persists: cursors, recently seen ids, open batches, the device id and its push address.
///
/// The engine that runs the connection owns the stream state (cursors, open batches, push address): its snapshots
/// are [`SnapshotScope::Full`] and replace what a store held. A push handler that runs without the client (an iOS
/// Notification Service Extension, a service worker) only adds seen ids: its snapshots are
/// [`SnapshotScope::SeenIds`], and a store keeps the stream state it held (see [`Snapshot::merge`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Format version.
    pub version: u32,
    /// The installation's device id.
    pub device_id: Option<String>,
    /// Cursor per stream.
    pub cursors: StreamMap<Cursor>,
    /// Recently seen notifications, oldest first: dedup-window entries (see [`DedupWindow`](super::DedupWindow));
    /// plain ids are accepted too.
    pub seen: Vec<String>,
    /// Batches not yet delivered.
    pub pending: Vec<PendingBatch>,
    /// The push address this device registered last (re-sent on every connection).
    pub push: Option<PushRegistration>,
    /// What this snapshot speaks for.
    pub scope: SnapshotScope,
    /// The inbox counts last reported by the server (the badge at start, before the connection is up).
    pub inbox: Option<crate::protocol::InboxCounts>,
    /// Inbox changes made and not yet answered (sent again, with their op ids, after the next connection).
    pub inbox_queue: Vec<QueuedChange>,
}

/// An inbox change waiting for the server's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueuedChange {
    /// Its op id: the server applies a change once, however often it is sent.
    pub op_id: String,
    /// The change.
    pub change: super::InboxChange,
}

/// What a [`Snapshot`] speaks for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SnapshotScope {
    /// Everything: written by the engine that runs the connection, whose cursors, open batches and push address
    /// are the current ones (a stream it unsubscribed has no cursor; a batch it delivered is not open).
    #[default]
    Full,
    /// Only seen ids (and the device id, when it knows one): written by a push handler running without the
    /// client; its cursors, batches and push address are empty and stand for "unchanged".
    SeenIds,
}

/// A device's push address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushRegistration {
    /// The push service.
    pub platform: PushPlatform,
    /// The token (or Web Push subscription JSON).
    pub token: String,
}

pub(crate) fn snapshot_version() -> u32 {
    1
}

impl Snapshot {
    /// Merges `older` — what a store held when `self` is saved over it (possibly written meanwhile by another
    /// process) — into `self`: seen ids are unioned (`older`'s count as older), the device id is kept or taken
    /// from `older`; cursors, open batches and the push address are `self`'s when `self` is
    /// [`SnapshotScope::Full`] (the engine that owns them removed what it no longer has: an unsubscribed stream's
    /// cursor, a delivered batch), and `older`'s when `self` only carries seen ids.
    pub fn merge(&mut self, older: &Snapshot) {
        if self.device_id.is_none() {
            self.device_id.clone_from(&older.device_id);
        }
        let mut ours: Vec<&str> = self.seen.iter().map(String::as_str).collect();
        ours.sort_unstable();
        let mut seen: Vec<String> =
            older.seen.iter().filter(|id| ours.binary_search(&id.as_str()).is_err()).cloned().collect();
        seen.append(&mut self.seen);
        self.seen = seen;
        if self.scope == SnapshotScope::SeenIds {
            self.cursors = older.cursors.clone();
            self.pending = older.pending.clone();
            self.push.clone_from(&older.push);
            self.inbox = older.inbox;
            self.inbox_queue.clone_from(&older.inbox_queue);
            self.scope = older.scope;
        }
    }
}
