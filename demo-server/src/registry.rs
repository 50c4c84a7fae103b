//! The local connection registry: this process's connections only (all of them, for shutdown and operator drops;
//! by user and device, for session replacement), and which of them subscribe to which stream (for fan-out).
//! Presence — who is online, which a networked deployment shares between processes — is kept apart
//! (`presence`).
//!
//! # Replay and live delivery without a lock across the history read
//! A subscribe registers the connection *before* it reads the stream's history, in the *syncing* state: live
//! notifications fanned out meanwhile are kept in a per-subscription buffer instead of being queued. When the read
//! is done, [`Registry::finish_subscribe`] queues the reply and the replay, then the buffered notifications that
//! come after what was read (the session's rule, [`crate::session::LiveFilter`]), and switches the subscription to
//! live — all under the stream's short lock that fan-out takes too. Since fan-out follows commit, every
//! notification is either in the history read (committed before the read) or in the buffer (fanned out after the
//! registration), possibly both; the filter drops the overlap by offset. A read can also see a commit whose
//! fan-out has not run yet (a durable store fans out from a task after the commit): that notification is in the
//! replay and reaches the registry only after the subscription went live, so the subscription keeps the read
//! head as a *floor* — live notifications of the read's epoch at or below it are skipped for that connection —
//! until a fan-out passes it. So no live frame precedes `subscribed`, and none is lost or duplicated between
//! replay and live delivery.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::extract::ws::Utf8Bytes;
use tidings_core::protocol::ErrorCode;
use tokio::sync::Notify;

use crate::model::Committed;
use crate::outbox::ConnHandle;

const SHARDS: usize = 64;

type Shard = Mutex<HashMap<Arc<str>, Arc<StreamSubscribers>>>;
/// A user's connected devices: `(device, connection)`.
type Devices = Vec<(Arc<str>, Arc<ConnHandle>)>;

/// Locks a mutex, ignoring poisoning: every critical section here leaves the data consistent at each step.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A notification kept for a subscription that is still syncing.
#[derive(Clone, Debug)]
pub(crate) struct Buffered {
    pub(crate) epoch: Arc<str>,
    pub(crate) offset: Option<u64>,
    pub(crate) frame: Utf8Bytes,
}

/// What fan-out did with one notification.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct FanOut {
    /// Queued to live subscribers.
    pub(crate) queued: u64,
    /// Live subscribers whose queue overflowed with it (now closing as slow consumers).
    pub(crate) overflowed: u64,
    /// How many of `queued` are SSE connections (for the metrics' transport label).
    pub(crate) sse_queued: u64,
    /// How many of `overflowed` are SSE connections.
    pub(crate) sse_overflowed: u64,
}

/// This process's connections and subscriptions.
pub(crate) struct Registry {
    hasher: RandomState,
    streams: Box<[Shard]>,
    connections: Mutex<HashMap<u64, Arc<ConnHandle>>>,
    emptied: Notify,
    /// Authenticated connections by user, then device.
    devices: Mutex<HashMap<Arc<str>, Devices>>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry").finish_non_exhaustive()
    }
}

/// The subscribers of one stream.
struct StreamSubscribers {
    name: Arc<str>,
    set: Mutex<SubscriberSet>,
}

impl Registry {
    pub(crate) fn new() -> Self {
        Registry {
            hasher: RandomState::new(),
            streams: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            connections: Mutex::new(HashMap::new()),
            emptied: Notify::new(),
            devices: Mutex::new(HashMap::new()),
        }
    }

    fn shard(&self, stream: &str) -> MutexGuard<'_, HashMap<Arc<str>, Arc<StreamSubscribers>>> {
        let index = self.hasher.hash_one(stream) as usize % SHARDS;
        lock(&self.streams[index])
    }

    fn subscribers(&self, stream: &str) -> Option<Arc<StreamSubscribers>> {
        self.shard(stream).get(stream).cloned()
    }

    // ---- streams ----

    /// Registers `conn` as a syncing subscriber of `stream` (a live subscription of it becomes syncing again).
    /// Returns whether it is the stream's first subscriber in this process.
    pub(crate) fn begin_subscribe(&self, stream: &str, conn: &Arc<ConnHandle>) -> bool {
        let mut shard = self.shard(stream);
        let (subs, first) = match shard.get(stream) {
            Some(subs) => (subs.clone(), false),
            None => {
                let name: Arc<str> = Arc::from(stream);
                let subs =
                    Arc::new(StreamSubscribers { name: name.clone(), set: Mutex::new(SubscriberSet::default()) });
                shard.insert(name, subs.clone());
                (subs, true)
            }
        };
        // The shard lock is held: nobody can remove the (possibly empty) entry before the connection is in it.
        lock(&subs.set).begin_sync(conn);
        first
    }

    /// Ends the sync of `conn` on `stream`: queues `reply` (the `subscribed` frame and the replay), then every
    /// buffered notification `admit` lets through, and makes the subscription live — atomically with respect
    /// to fan-out. Returns how many buffered notifications were queued, or `None` when the connection is not
    /// syncing on the stream (it left meanwhile).
    /// `floor` is the read's epoch and head: live notifications of that epoch at or below the head are in the
    /// replay already, and are skipped for this connection when their fan-out comes after this call.
    pub(crate) fn finish_subscribe(
        &self,
        stream: &str,
        conn: &Arc<ConnHandle>,
        reply: Vec<Utf8Bytes>,
        floor: Option<(Arc<str>, u64)>,
        admit: impl Fn(&Buffered) -> bool,
    ) -> Option<usize> {
        let subs = self.subscribers(stream)?;
        let mut set = lock(&subs.set);
        let buffered = set.end_sync(conn.id())?;
        let admitted: Vec<Utf8Bytes> = buffered.into_iter().filter(|b| admit(b)).map(|b| b.frame).collect();
        let count = admitted.len();
        conn.push_reserved(reply.into_iter().chain(admitted));
        set.insert_live(conn);
        // A read at head 0 saw nothing (offsets start at 1): no floor to keep, which spares idle subscriptions of
        // empty streams a map entry.
        if let Some(floor) = floor.filter(|(_, head)| *head > 0) {
            set.floors.insert(conn.id(), floor);
        }
        Some(count)
    }

    /// Removes `conn` from `stream` (live or syncing). Returns whether the stream has no subscriber left in this
    /// process.
    pub(crate) fn remove(&self, stream: &str, conn_id: u64) -> bool {
        let mut shard = self.shard(stream);
        let Some(subs) = shard.get(stream).cloned() else { return false };
        let mut set = lock(&subs.set);
        if !set.remove(conn_id) {
            return false;
        }
        if set.is_empty() {
            shard.remove(&subs.name);
            return true;
        }
        false
    }

    /// Hands a committed notification to this process's subscribers of its stream: queued to live ones (the same
    /// frame, shared by reference count), kept for syncing ones.
    #[cfg(test)]
    pub(crate) fn fan_out(&self, committed: &Committed) -> FanOut {
        self.fan_out_run(std::slice::from_ref(committed))
    }

    /// Hands committed notifications of one stream to this process's subscribers of it, as consecutive
    /// [`Registry::fan_out`] calls would: queued to live ones (the same frame, shared by reference count) — each
    /// connection's queue taken once for the whole run ([`ConnHandle::push_live_all`]) — and kept for syncing
    /// ones.
    pub(crate) fn fan_out_run(&self, run: &[Committed]) -> FanOut {
        let Some(first) = run.first() else { return FanOut::default() };
        debug_assert!(run.iter().all(|c| c.stream == first.stream), "one stream per run");
        let Some(subs) = self.subscribers(&first.stream) else { return FanOut::default() };
        let set = &mut *lock(&subs.set);
        let mut result = FanOut::default();
        let floors = &mut set.floors;
        for conn in &set.live {
            // Skipped while at or below the floor; the first one of its epoch above it ends the floor.
            let mut floor = if floors.is_empty() { None } else { floors.get(&conn.id()) };
            let live = run.iter().filter(|c| match (c.offset, floor) {
                (Some(offset), Some((epoch, head))) if *epoch == c.epoch => {
                    if offset <= *head {
                        return false;
                    }
                    floor = None;
                    true
                }
                _ => true,
            });
            let pushes = conn.push_live_all(live.map(|c| c.frame.utf8_bytes()));
            let sse = u64::from(conn.is_sse());
            result.queued += pushes.queued;
            result.sse_queued += sse * pushes.queued;
            if pushes.overflowed {
                result.overflowed += 1;
                result.sse_overflowed += sse;
            }
        }
        // Fan-out follows commit order: once a notification of a floor's epoch passes its head, no later one is at
        // or below it.
        if !floors.is_empty() {
            for committed in run {
                if let Some(offset) = committed.offset {
                    floors.retain(|_, (epoch, head)| *epoch != committed.epoch || offset <= *head);
                }
            }
        }
        for syncing in &mut set.syncing {
            for committed in run {
                syncing.keep(committed);
            }
        }
        result
    }

    /// Number of streams with a subscriber in this process.
    #[cfg(test)]
    pub(crate) fn stream_count(&self) -> usize {
        self.streams.iter().map(|s| lock(s).len()).sum()
    }

    // ---- connections ----

    /// Adds a connection; returns how many are open now.
    pub(crate) fn insert_connection(&self, conn: Arc<ConnHandle>) -> usize {
        let mut open = lock(&self.connections);
        open.insert(conn.id(), conn);
        open.len()
    }

    pub(crate) fn remove_connection(&self, id: u64) {
        let mut open = lock(&self.connections);
        open.remove(&id);
        if open.is_empty() {
            open.shrink_to_fit();
            self.emptied.notify_waiters();
        }
    }

    pub(crate) fn connection_count(&self) -> usize {
        lock(&self.connections).len()
    }

    /// Asks every connection to close with `code`; returns how many were asked.
    pub(crate) fn close_all(&self, code: ErrorCode, message: &str) -> usize {
        let open: Vec<Arc<ConnHandle>> = lock(&self.connections).values().cloned().collect();
        open.iter().filter(|conn| conn.close(code, message)).count()
    }

    /// Completes once no connection is open.
    pub(crate) async fn wait_empty(&self) {
        loop {
            let emptied = self.emptied.notified();
            tokio::pin!(emptied);
            emptied.as_mut().enable();
            if lock(&self.connections).is_empty() {
                return;
            }
            emptied.await;
        }
    }

    // ---- devices ----

    /// Records that `conn` is `device` of `user`; returns the connection it replaces (same user and device).
    pub(crate) fn register_device(
        &self,
        user: &Arc<str>,
        device: &Arc<str>,
        conn: &Arc<ConnHandle>,
    ) -> Option<Arc<ConnHandle>> {
        let mut users = lock(&self.devices);
        let entries = users.entry(user.clone()).or_default();
        if entries.is_empty() {
            // Most users have one device connected: room for one, not the four a first push makes.
            entries.reserve_exact(1);
        }
        let replaced = entries.iter().position(|(d, _)| d == device).map(|i| entries.remove(i).1);
        entries.push((device.clone(), conn.clone()));
        replaced
    }

    /// Forgets `conn` as a device of `user`, unless a newer connection of the device took its place.
    pub(crate) fn unregister_device(&self, user: &str, conn_id: u64) {
        let mut users = lock(&self.devices);
        if let Some(entries) = users.get_mut(user) {
            entries.retain(|(_, c)| c.id() != conn_id);
            if entries.is_empty() {
                users.remove(user);
            }
        }
    }

    /// The connection of `device` of `user`, if it is connected here.
    pub(crate) fn device_connection(&self, user: &str, device: &str) -> Option<Arc<ConnHandle>> {
        lock(&self.devices).get(user)?.iter().find(|(d, _)| &**d == device).map(|(_, c)| c.clone())
    }

    /// This process's connections subscribed to `stream` (live or syncing).
    pub(crate) fn connections_on(&self, stream: &str) -> Vec<Arc<ConnHandle>> {
        let Some(subs) = self.subscribers(stream) else { return Vec::new() };
        let set = lock(&subs.set);
        set.live.iter().cloned().chain(set.syncing.iter().map(|s| s.conn.clone())).collect()
    }

    /// The connections of `user`.
    pub(crate) fn connections_of(&self, user: &str) -> Vec<Arc<ConnHandle>> {
        lock(&self.devices)
            .get(user)
            .map(|entries| entries.iter().map(|(_, c)| c.clone()).collect())
            .unwrap_or_default()
    }
}

/// A subscription still reading its history.
struct Syncing {
    conn: Arc<ConnHandle>,
    buffered: Vec<Buffered>,
    /// The buffer outgrew the connection's queue limit: the connection is closing as a slow consumer.
    overflowed: bool,
}

impl Syncing {
    fn keep(&mut self, committed: &Committed) {
        if self.overflowed {
            return;
        }
        if self.buffered.len() >= self.conn.limit() {
            self.overflowed = true;
            self.buffered = Vec::new();
            self.conn.close(ErrorCode::SlowConsumer, "too many notifications arrived while the subscription synced");
            return;
        }
        self.buffered.push(Buffered {
            epoch: committed.epoch.clone(),
            offset: committed.offset,
            frame: committed.frame.utf8_bytes().clone(),
        });
    }
}

/// Number of subscribers from which removal uses an index instead of a linear scan.
const INDEX_FROM: usize = 32;

/// The connections subscribed to one stream: live ones in a vector for fast fan-out iteration, plus an id →
/// position index once the set is large so that removal stays O(1) for streams with many subscribers; syncing
/// ones apart (few at a time).
#[derive(Default)]
struct SubscriberSet {
    live: Vec<Arc<ConnHandle>>,
    index: Option<HashMap<u64, usize>>,
    syncing: Vec<Syncing>,
    /// Live subscriptions that finished syncing while notifications their read saw may still be fanned out: the
    /// read's epoch and head, by connection id (removed once a fan-out passes the head).
    floors: HashMap<u64, (Arc<str>, u64)>,
}

impl SubscriberSet {
    fn is_empty(&self) -> bool {
        self.live.is_empty() && self.syncing.is_empty()
    }

    fn position(&self, id: u64) -> Option<usize> {
        match &self.index {
            Some(index) => index.get(&id).copied(),
            None => self.live.iter().position(|c| c.id() == id),
        }
    }

    fn begin_sync(&mut self, conn: &Arc<ConnHandle>) {
        self.remove_live(conn.id());
        self.floors.remove(&conn.id());
        if !self.syncing.iter().any(|s| s.conn.id() == conn.id()) {
            self.syncing.push(Syncing { conn: conn.clone(), buffered: Vec::new(), overflowed: false });
        }
    }

    fn end_sync(&mut self, id: u64) -> Option<Vec<Buffered>> {
        let i = self.syncing.iter().position(|s| s.conn.id() == id)?;
        let synced = self.syncing.swap_remove(i).buffered;
        if self.syncing.is_empty() {
            // Syncing is brief: a stream whose subscribers are all live keeps no room for it.
            self.syncing = Vec::new();
        }
        Some(synced)
    }

    /// Adds `conn` to the live subscribers unless it is already there.
    fn insert_live(&mut self, conn: &Arc<ConnHandle>) {
        if self.position(conn.id()).is_some() {
            return;
        }
        self.live.push(conn.clone());
        match &mut self.index {
            Some(index) => {
                index.insert(conn.id(), self.live.len() - 1);
            }
            None if self.live.len() > INDEX_FROM => {
                self.index = Some(self.live.iter().enumerate().map(|(i, c)| (c.id(), i)).collect());
            }
            None => {}
        }
    }

    fn remove_live(&mut self, id: u64) -> bool {
        let Some(pos) = self.position(id) else { return false };
        self.live.swap_remove(pos);
        if let Some(index) = &mut self.index {
            index.remove(&id);
            if let Some(moved) = self.live.get(pos) {
                index.insert(moved.id(), pos);
            }
            if self.live.len() < INDEX_FROM / 2 {
                self.index = None;
            }
        }
        if self.live.is_empty() {
            self.live = Vec::new();
        }
        true
    }

    /// Removes the connection with `id`, live or syncing; returns whether it was there.
    fn remove(&mut self, id: u64) -> bool {
        self.floors.remove(&id);
        let live = self.remove_live(id);
        live | self.end_sync(id).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::EncodedFrame;

    fn conns(n: u64) -> Vec<Arc<ConnHandle>> {
        (0..n).map(|id| Arc::new(ConnHandle::new(id, 10))).collect()
    }

    fn ids(set: &SubscriberSet) -> Vec<u64> {
        let mut ids: Vec<u64> = set.live.iter().map(|c| c.id()).collect();
        ids.sort_unstable();
        ids
    }

    fn committed(stream: &str, offset: u64) -> Committed {
        Committed {
            id: Arc::from(format!("n{offset}")),
            stream: Arc::from(stream),
            epoch: Arc::from("e"),
            offset: Some(offset),
            frame: EncodedFrame::new(format!("f{offset}")),
        }
    }

    fn drain(conn: &ConnHandle) -> Vec<String> {
        let mut out = std::collections::VecDeque::new();
        conn.take(&mut out);
        out.iter().map(|f| f.as_str().to_owned()).collect()
    }

    #[test]
    fn subscriber_sets_insert_once_and_remove_in_small_and_large_mode() {
        for n in [3, 100] {
            let all = conns(n);
            let mut set = SubscriberSet::default();
            for c in &all {
                set.insert_live(c);
                set.insert_live(c);
            }
            assert_eq!(set.live.len(), n as usize);
            for id in (0..n).step_by(2) {
                assert!(set.remove(id));
            }
            assert!(!set.remove(10_000));
            assert_eq!(ids(&set), (0..n).filter(|i| i % 2 == 1).collect::<Vec<_>>());
            for id in 0..n {
                set.remove(id);
            }
            assert!(set.is_empty());
        }
    }

    #[test]
    fn an_idle_subscription_keeps_no_room_for_syncing_and_no_floor_when_its_read_saw_nothing() {
        // Server memory per idle connection (bench S1): each connection on its own stream.
        let registry = Registry::new();
        let conn = conns(1).pop().unwrap();
        registry.begin_subscribe("user:a", &conn);
        registry.finish_subscribe("user:a", &conn, vec![], Some((Arc::from("e"), 0)), |_| true);
        let subs = registry.subscribers("user:a").unwrap();
        let set = lock(&subs.set);
        assert_eq!(ids(&set), [0]);
        assert_eq!(set.syncing.capacity(), 0, "the syncing list's room is released once nobody syncs");
        assert!(set.floors.is_empty(), "a read at head 0 saw no offset to skip");
    }

    #[test]
    fn a_notification_the_read_saw_but_fanned_out_after_the_subscription_went_live_is_not_sent_twice() {
        // A durable store fans out from a task after the commit: the history read saw offsets up to 6, whose
        // fan-out comes only after finish_subscribe (found under load by streams.rs on SQLite: offset 4 twice).
        let registry = Registry::new();
        let (conn, other) = {
            let mut all = conns(2);
            (all.pop().unwrap(), all.pop().unwrap())
        };
        registry.begin_subscribe("user:a", &other);
        registry.finish_subscribe("user:a", &other, vec![], None, |_| true);
        registry.begin_subscribe("user:a", &conn);
        registry.fan_out(&committed("user:a", 5));
        let floor = Some((Arc::from("e"), 6));
        registry.finish_subscribe("user:a", &conn, vec![Utf8Bytes::from_static("subscribed")], floor, |b| {
            b.offset > Some(6)
        });
        for offset in [6, 7, 5, 8] {
            registry.fan_out(&committed("user:a", offset));
        }
        assert_eq!(drain(&conn), ["subscribed", "f7", "f5", "f8"], "6 is in the replay; past 7 the floor is gone");
        assert_eq!(drain(&other), ["f5", "f6", "f7", "f5", "f8"], "other connections are not filtered");
    }

    #[test]
    fn a_run_fanned_out_together_queues_what_the_same_notifications_fanned_out_one_by_one_queue() {
        // The floor case above, a slow consumer and a syncing subscriber, once one by one and once as runs.
        let outcome = |together: bool| {
            let registry = Registry::new();
            let mut all = conns(2);
            let (conn, other) = (all.pop().unwrap(), all.pop().unwrap());
            let slow = Arc::new(ConnHandle::new(9, 3));
            let syncing = Arc::new(ConnHandle::new(10, 10));
            for c in [&other, &slow] {
                registry.begin_subscribe("user:a", c);
                registry.finish_subscribe("user:a", c, vec![], None, |_| true);
            }
            registry.begin_subscribe("user:a", &conn);
            registry.finish_subscribe("user:a", &conn, vec![], Some((Arc::from("e"), 6)), |_| true);
            registry.begin_subscribe("user:a", &syncing);
            let run: Vec<Committed> = [5, 6, 7, 5, 8].into_iter().map(|o| committed("user:a", o)).collect();
            let fan_out = if together {
                registry.fan_out_run(&run)
            } else {
                run.iter().fold(FanOut::default(), |sum, c| {
                    let f = registry.fan_out(c);
                    FanOut { queued: sum.queued + f.queued, overflowed: sum.overflowed + f.overflowed, ..sum }
                })
            };
            assert_eq!(registry.fan_out_run(&[]), FanOut::default());
            registry.finish_subscribe("user:a", &syncing, vec![], None, |b| b.offset > Some(6));
            let mut slow_out = std::collections::VecDeque::new();
            let slow_closed = slow.take(&mut slow_out).map(|r| r.code);
            (fan_out, drain(&conn), drain(&other), slow_closed, drain(&syncing))
        };
        let one_by_one = outcome(false);
        assert_eq!(one_by_one.0, FanOut { queued: 3 + 5 + 3, overflowed: 1, sse_queued: 0, sse_overflowed: 0 });
        assert_eq!(one_by_one.1, ["f7", "f5", "f8"], "5 and 6 are in the replay; past 7 the floor is gone");
        assert_eq!(one_by_one.2, ["f5", "f6", "f7", "f5", "f8"]);
        assert_eq!(one_by_one.3, Some(ErrorCode::SlowConsumer), "three queued, the fourth overflowed");
        assert_eq!(one_by_one.4, ["f7", "f8"], "the syncing subscriber's buffer, admitted past its read");
        assert_eq!(outcome(true), one_by_one);
    }

    #[test]
    fn a_syncing_subscriber_gets_the_reply_then_the_admitted_buffer_then_live_frames() {
        let registry = Registry::new();
        let conn = conns(1).pop().unwrap();
        assert!(registry.begin_subscribe("user:a", &conn), "the first subscriber");
        registry.fan_out(&committed("user:a", 4));
        registry.fan_out(&committed("user:a", 5));
        assert!(drain(&conn).is_empty(), "nothing is queued while syncing");
        let queued = registry
            .finish_subscribe("user:a", &conn, vec![Utf8Bytes::from_static("subscribed")], None, |b| b.offset > Some(4))
            .unwrap();
        assert_eq!(queued, 1);
        registry.fan_out(&committed("user:a", 6));
        assert_eq!(drain(&conn), ["subscribed", "f5", "f6"]);
        assert_eq!(registry.finish_subscribe("user:a", &conn, vec![], None, |_| true), None, "not syncing any more");
    }

    #[test]
    fn streams_leave_the_registry_with_their_last_subscriber() {
        let registry = Registry::new();
        let [a, b] = [0, 1].map(|i| Arc::new(ConnHandle::new(i, 10)));
        assert!(registry.begin_subscribe("topic:t", &a));
        assert!(!registry.begin_subscribe("topic:t", &b));
        registry.finish_subscribe("topic:t", &a, vec![], None, |_| true);
        assert!(!registry.remove("topic:t", a.id()));
        assert!(!registry.remove("topic:t", a.id()), "already gone");
        assert_eq!(registry.stream_count(), 1);
        assert!(registry.remove("topic:t", b.id()), "the last one, still syncing");
        assert_eq!(registry.stream_count(), 0);
        assert_eq!(registry.fan_out(&committed("topic:t", 1)), FanOut::default());
    }

    #[test]
    fn a_buffer_beyond_the_queue_limit_closes_the_connection_as_slow_consumer() {
        let registry = Registry::new();
        let conn = Arc::new(ConnHandle::new(1, 2));
        registry.begin_subscribe("user:a", &conn);
        for offset in 1..=3 {
            registry.fan_out(&committed("user:a", offset));
        }
        let mut out = std::collections::VecDeque::new();
        assert_eq!(conn.take(&mut out).map(|r| r.code), Some(ErrorCode::SlowConsumer));
    }

    #[test]
    fn a_device_connecting_again_replaces_its_older_connection() {
        let registry = Registry::new();
        let [c1, c2, c3] = [1, 2, 3].map(|i| Arc::new(ConnHandle::new(i, 1)));
        let (alice, phone, laptop): (Arc<str>, Arc<str>, Arc<str>) = ("alice".into(), "phone".into(), "laptop".into());
        assert!(registry.register_device(&alice, &phone, &c1).is_none());
        assert!(registry.register_device(&alice, &laptop, &c2).is_none());
        assert_eq!(registry.register_device(&alice, &phone, &c3).unwrap().id(), 1);
        registry.unregister_device("alice", 1);
        let ids: Vec<u64> = registry.connections_of("alice").iter().map(|c| c.id()).collect();
        assert_eq!(ids, [2, 3], "the replaced connection cannot unregister its successor");
        registry.unregister_device("alice", 2);
        registry.unregister_device("alice", 3);
        assert!(registry.connections_of("alice").is_empty());
    }

    #[tokio::test]
    async fn wait_empty_returns_once_the_last_connection_leaves() {
        let registry = Arc::new(Registry::new());
        registry.insert_connection(Arc::new(ConnHandle::new(7, 1)));
        let waiter = tokio::spawn({
            let registry = registry.clone();
            async move { registry.wait_empty().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        registry.remove_connection(7);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter).await.unwrap().unwrap();
    }
}
