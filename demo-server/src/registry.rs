//! The fan-out registry: which live connections subscribe to which stream.
//!
//! Every stream that has subscribers, or a publish or subscribe in progress, has a [`StreamSlot`]. Its async
//! mutex is *the* per-stream lock: a publish holds it while it appends to storage and pushes the frame to
//! every subscriber, a subscribe holds it while it reads the replay and registers the connection. That makes
//! subscribe atomic with respect to publish: the `subscribed` reply and the replayed frames are queued before
//! any live frame of the stream, and no notification is lost or duplicated between replay and live delivery.
//! Slots are dropped from the registry as soon as nobody uses them, so streams without listeners cost nothing
//! here.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{Mutex as AsyncMutex, MutexGuard as AsyncMutexGuard};

use crate::outbox::ConnHandle;

const SHARDS: usize = 64;

type Shard = Mutex<HashMap<Arc<str>, Arc<StreamSlot>>>;

/// Name → slot, sharded to keep lock contention low.
pub(crate) struct Registry {
    hasher: RandomState,
    shards: Box<[Shard]>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry").finish_non_exhaustive()
    }
}

/// One stream's fan-out state.
pub(crate) struct StreamSlot {
    name: Arc<str>,
    subscribers: AsyncMutex<SubscriberSet>,
}

impl fmt::Debug for StreamSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamSlot").field("name", &self.name).finish_non_exhaustive()
    }
}

impl StreamSlot {
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Takes the stream's lock.
    pub(crate) async fn lock(&self) -> AsyncMutexGuard<'_, SubscriberSet> {
        self.subscribers.lock().await
    }
}

impl Registry {
    pub(crate) fn new() -> Self {
        Registry { hasher: RandomState::new(), shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect() }
    }

    fn shard(&self, stream: &str) -> MutexGuard<'_, HashMap<Arc<str>, Arc<StreamSlot>>> {
        let index = self.hasher.hash_one(stream) as usize % SHARDS;
        self.shards[index].lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The slot of `stream`, created if needed. Hand it back with [`Registry::release`] when done (a
    /// connection keeps it for as long as it subscribes).
    pub(crate) fn acquire(&self, stream: &str) -> Arc<StreamSlot> {
        let mut shard = self.shard(stream);
        if let Some(slot) = shard.get(stream) {
            return slot.clone();
        }
        let name: Arc<str> = Arc::from(stream);
        let slot = Arc::new(StreamSlot { name: name.clone(), subscribers: AsyncMutex::new(SubscriberSet::default()) });
        shard.insert(name, slot.clone());
        slot
    }

    /// Returns a slot obtained from [`Registry::acquire`]; the slot leaves the registry when this was the last
    /// user and it has no subscribers.
    pub(crate) fn release(&self, slot: Arc<StreamSlot>) {
        let mut shard = self.shard(&slot.name);
        // New references are only handed out under the shard lock, so a count of 2 (the map's and ours) means
        // nobody else holds the slot or its lock.
        if Arc::strong_count(&slot) == 2 && slot.subscribers.try_lock().is_ok_and(|subs| subs.is_empty()) {
            shard.remove(&slot.name);
        }
    }

    /// Number of slots (streams with subscribers or work in progress).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().unwrap().len()).sum()
    }
}

/// Number of subscribers from which removal uses an index instead of a linear scan.
const INDEX_FROM: usize = 32;

/// The connections subscribed to one stream: a vector for fast fan-out iteration, plus an id → position index
/// once the set is large so that removal stays O(1) for streams with many subscribers.
#[derive(Default)]
pub(crate) struct SubscriberSet {
    conns: Vec<Arc<ConnHandle>>,
    index: Option<HashMap<u64, usize>>,
}

impl SubscriberSet {
    pub(crate) fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.conns.len()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &Arc<ConnHandle>> {
        self.conns.iter()
    }

    fn position(&self, id: u64) -> Option<usize> {
        match &self.index {
            Some(index) => index.get(&id).copied(),
            None => self.conns.iter().position(|c| c.id() == id),
        }
    }

    /// Adds `conn` unless it is already there.
    pub(crate) fn insert(&mut self, conn: &Arc<ConnHandle>) {
        if self.position(conn.id()).is_some() {
            return;
        }
        self.conns.push(conn.clone());
        match &mut self.index {
            Some(index) => {
                index.insert(conn.id(), self.conns.len() - 1);
            }
            None if self.conns.len() > INDEX_FROM => {
                self.index = Some(self.conns.iter().enumerate().map(|(i, c)| (c.id(), i)).collect());
            }
            None => {}
        }
    }

    /// Removes the connection with `id`, if present.
    pub(crate) fn remove(&mut self, id: u64) {
        let Some(pos) = self.position(id) else { return };
        self.conns.swap_remove(pos);
        if let Some(index) = &mut self.index {
            index.remove(&id);
            if let Some(moved) = self.conns.get(pos) {
                index.insert(moved.id(), pos);
            }
            if self.conns.len() < INDEX_FROM / 2 {
                self.index = None;
            }
        }
        if self.conns.is_empty() {
            self.conns = Vec::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conns(n: u64) -> Vec<Arc<ConnHandle>> {
        (0..n).map(|id| Arc::new(ConnHandle::new(id, 10))).collect()
    }

    fn ids(set: &SubscriberSet) -> Vec<u64> {
        let mut ids: Vec<u64> = set.iter().map(|c| c.id()).collect();
        ids.sort_unstable();
        ids
    }

    #[test]
    fn subscriber_sets_insert_once_and_remove_in_small_and_large_mode() {
        for n in [3, 100] {
            let all = conns(n);
            let mut set = SubscriberSet::default();
            for c in &all {
                set.insert(c);
                set.insert(c);
            }
            assert_eq!(set.len(), n as usize);
            for id in (0..n).step_by(2) {
                set.remove(id);
            }
            set.remove(10_000);
            assert_eq!(ids(&set), (0..n).filter(|i| i % 2 == 1).collect::<Vec<_>>());
            for id in 0..n {
                set.remove(id);
            }
            assert!(set.is_empty());
        }
    }

    #[tokio::test]
    async fn slots_leave_the_registry_when_unused() {
        let registry = Registry::new();
        let conn = conns(1).pop().unwrap();
        let slot = registry.acquire("user:a");
        slot.lock().await.insert(&conn);
        registry.release(slot);
        assert_eq!(registry.len(), 1, "a subscriber keeps the slot");
        let slot = registry.acquire("user:a");
        slot.lock().await.remove(conn.id());
        let other = registry.acquire("user:a");
        registry.release(slot);
        assert_eq!(registry.len(), 1, "someone else still holds it");
        registry.release(other);
        assert_eq!(registry.len(), 0);
    }
}
