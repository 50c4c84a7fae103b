//! Persistence: the engine's state as a [`Snapshot`] (cursors, seen ids, open batches, device id, push address),
//! restored at start and merged again when another process may have written the store; saved through
//! [`Action::Persist`] at most once per `persist_interval`, and at once where a process may end right after.

use super::snapshot::{Snapshot, SnapshotScope, snapshot_version};
use super::timers::Timer;
use super::{Action, DedupWindow, Engine};
use crate::time::Instant;

impl Engine {
    /// The device id (generated on first use if neither the config nor a snapshot supplied one).
    pub fn device_id(&mut self) -> String {
        if self.device_id.is_none() {
            self.device_id = Some(format!("d-{:016x}", self.rng.u64(..)));
            self.mark_dirty();
        }
        self.device_id.clone().expect("set above")
    }

    /// The persistent state, as it is now.
    pub fn snapshot(&mut self) -> Snapshot {
        Snapshot {
            version: snapshot_version(),
            device_id: Some(self.device_id()),
            cursors: self.cursors.clone(),
            seen: self.dedup.entries_oldest_first(),
            pending: self.batcher.snapshot(),
            push: self.push.clone(),
            scope: SnapshotScope::Full,
            inbox: self.inbox_counts(),
            inbox_queue: self.inbox_queue(),
        }
    }

    /// The seen ids only ([`SnapshotScope::SeenIds`]), with the device id if one is known (none is generated):
    /// what a push handler running without the client stores back.
    pub fn seen_ids_snapshot(&self) -> Snapshot {
        Snapshot {
            version: snapshot_version(),
            device_id: self.device_id.clone(),
            seen: self.dedup.entries_oldest_first(),
            scope: SnapshotScope::SeenIds,
            ..Snapshot::default()
        }
    }

    /// Restores persisted state. Seen ids are always merged (the saved ones count as older than anything this
    /// engine saw), and a missing device id is taken. Cursors, open batches and the push address are taken only
    /// from a [`SnapshotScope::Full`] snapshot and only while this engine holds none of its own — at start: once it
    /// runs, its own are newer than anything a store holds (a stream it unsubscribed, a batch it delivered must
    /// not come back). Call before [`Engine::connect`], and again whenever another process may have added seen
    /// ids (e.g. a push extension, on return to the foreground).
    pub fn restore(&mut self, now: Instant, snapshot: &Snapshot) {
        let now = self.tick(now);
        self.merge_seen(snapshot);
        let holds_state = self.adopted || !self.cursors.is_empty() || !self.batcher.is_empty() || self.push.is_some();
        if snapshot.scope == SnapshotScope::Full && !holds_state {
            self.take_stream_state(now, snapshot);
        }
    }

    /// Takes the state of the engine this one mirrors (a browser tab joining, from the tab that leads): seen ids
    /// are merged as in [`Engine::restore`], and cursors, open batches and the push address are replaced by the
    /// snapshot's, whatever this engine held.
    pub fn mirror(&mut self, now: Instant, snapshot: &Snapshot) {
        let now = self.tick(now);
        self.merge_seen(snapshot);
        if snapshot.scope == SnapshotScope::Full {
            self.take_stream_state(now, snapshot);
        }
    }

    fn merge_seen(&mut self, snapshot: &Snapshot) {
        if self.device_id.is_none() && snapshot.device_id.is_some() {
            self.device_id.clone_from(&snapshot.device_id);
        }
        // Saved ids count as older than anything this process saw.
        let ours = self.dedup.entries_oldest_first();
        let mut fresh = DedupWindow::new(self.config.dedup_capacity);
        fresh.restore(snapshot.seen.iter().chain(ours.iter()));
        self.dedup = fresh;
    }

    fn take_stream_state(&mut self, now: Instant, snapshot: &Snapshot) {
        self.adopted = true;
        self.cursors = snapshot.cursors.clone();
        self.push.clone_from(&snapshot.push);
        self.batcher.replace(now, snapshot.pending.clone());
        self.sync_batch_timer();
        self.take_inbox_state(snapshot.inbox, &snapshot.inbox_queue);
    }

    /// Turns persistence on or off (a browser tab persists only while it leads).
    pub fn set_persistence(&mut self, now: Instant, enabled: bool) {
        let now = self.tick(now);
        self.config.persistence = enabled;
        if !enabled {
            self.timers.stop(Timer::Persist);
        } else if self.dirty {
            self.persist(now);
        }
    }

    /// The state changed: a routine persist is due `persist_interval` after the previous one.
    pub(super) fn mark_dirty(&mut self) {
        self.dirty = true;
        if self.config.persistence && self.timers.get(Timer::Persist).is_none() {
            let at = self.last_persist.map_or(Instant::ZERO, |t| t + self.config.persist_interval);
            self.timers.set(Timer::Persist, at);
        }
    }

    /// Persists now, if persistence is on.
    pub(super) fn request_persist(&mut self, now: Instant) {
        if self.config.persistence {
            self.persist(now);
        }
    }

    pub(super) fn persist(&mut self, now: Instant) {
        self.last_persist = Some(now);
        let snapshot = self.snapshot();
        self.dirty = false;
        self.timers.stop(Timer::Persist);
        self.actions.retain(|a| !matches!(a, Action::Persist(_)));
        self.actions.push_back(Action::Persist(snapshot));
    }
}
