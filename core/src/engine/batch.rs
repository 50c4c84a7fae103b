//! Client-side batching of informational notifications into digests ("5 new likes").

use std::time::Duration;

use crate::protocol::Notification;
#[cfg(test)]
use crate::protocol::NotificationFields;
use crate::time::Instant;

/// Several informational notifications of one group, delivered as one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Digest {
    /// The batching key they share.
    pub group: String,
    /// How many notifications the digest stands for.
    pub count: u32,
    /// The first notification of the batch.
    pub first: Notification,
    /// The last notification of the batch.
    pub last: Notification,
    /// Ids of every notification in the batch, in arrival order.
    pub ids: Vec<String>,
}

/// What a flushed batch becomes.
#[allow(clippy::large_enum_variant)] // the notification is moved once, unboxed: boxing it would allocate per item
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BatchOutput {
    /// A batch of one is delivered as the notification itself.
    Single(Notification),
    /// Two or more.
    /// Two or more (boxed: a digest is twice the size of a notification, and the single case is the common one).
    Digest(Box<Digest>),
}

/// Batching parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchConfig {
    /// How long a batch stays open after its first item. Zero disables batching.
    pub window: Duration,
    /// A batch is delivered as soon as it holds this many items.
    pub max_items: u32,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig { window: Duration::from_secs(3), max_items: 100 }
    }
}

/// An open batch. Serializable so that pending batches survive an app restart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingBatch {
    /// The group.
    pub group: String,
    /// First item.
    pub first: Notification,
    /// Last item, if more than one.
    pub last: Option<Notification>,
    /// All ids.
    pub ids: Vec<String>,
    /// When it was opened (engine time; not persisted meaningfully across restarts).
    pub opened_at: Instant,
}

impl PendingBatch {
    fn into_output(self) -> BatchOutput {
        match self.last {
            None => BatchOutput::Single(self.first),
            Some(last) => BatchOutput::Digest(Box::new(Digest {
                group: self.group,
                count: u32::try_from(self.ids.len()).unwrap_or(u32::MAX),
                first: self.first,
                last,
                ids: self.ids,
            })),
        }
    }
}

/// Open batches, keyed by group, in opening order.
#[derive(Debug, Default)]
pub(crate) struct Batcher {
    config: BatchConfig,
    open: Vec<PendingBatch>,
}

impl Batcher {
    /// A batcher with these parameters.
    pub(crate) fn new(config: BatchConfig) -> Self {
        Batcher { config, open: Vec::new() }
    }

    /// Whether `n` should be held: informational, with a group, and batching enabled.
    pub(crate) fn wants(&self, n: &Notification) -> bool {
        !self.config.window.is_zero() && n.priority == crate::protocol::Priority::Informational && n.group().is_some()
    }

    /// Adds a notification the caller decided to hold (see [`Batcher::wants`]). Returns the batch if it just
    /// reached the maximum size.
    pub(crate) fn add(&mut self, now: Instant, n: Notification) -> Option<BatchOutput> {
        let group = n.group().expect("caller checked wants()").to_owned();
        let max = self.config.max_items.max(1) as usize;
        if let Some(pos) = self.open.iter().position(|b| b.group == group) {
            let batch = &mut self.open[pos];
            batch.ids.push(n.id().to_owned());
            batch.last = Some(n);
            if batch.ids.len() >= max {
                return Some(self.open.remove(pos).into_output());
            }
            return None;
        }
        let batch = PendingBatch { group, ids: vec![n.id().to_owned()], first: n, last: None, opened_at: now };
        if max == 1 {
            return Some(batch.into_output());
        }
        self.open.push(batch);
        None
    }

    /// When the oldest open batch is due.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.open.iter().map(|b| b.opened_at + self.config.window).min()
    }

    /// Removes and returns every batch due at `now`, oldest first.
    pub(crate) fn take_due(&mut self, now: Instant) -> Vec<BatchOutput> {
        let window = self.config.window;
        let (due, open): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.open).into_iter().partition(|b| b.opened_at + window <= now);
        self.open = open;
        due.into_iter().map(PendingBatch::into_output).collect()
    }

    /// Copies of the open batches, for persistence.
    pub(crate) fn snapshot(&self) -> Vec<PendingBatch> {
        self.open.clone()
    }

    /// Whether no batch is open.
    pub(crate) fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    /// Replaces the open batches with saved ones (one per group); their windows restart at `now`.
    pub(crate) fn replace(&mut self, now: Instant, batches: Vec<PendingBatch>) {
        self.open.clear();
        for mut b in batches {
            if self.open.iter().any(|o| o.group == b.group) {
                continue;
            }
            b.opened_at = now;
            self.open.push(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Persistence, Priority};

    fn item(id: &str, group: &str) -> Notification {
        Notification::from(NotificationFields {
            id: id.into(),
            stream: "user:a".into(),
            offset: Some(1),
            epoch: "e".into(),
            kind: "like".into(),
            priority: Priority::Informational,
            persistence: Persistence::Bufferable,
            title: None,
            body: None,
            data: None,
            group: Some(group.into()),
            created_at: 0,
        })
    }

    #[test]
    fn items_of_one_group_become_one_digest_at_the_deadline() {
        let mut b = Batcher::new(BatchConfig { window: Duration::from_secs(3), max_items: 100 });
        let t0 = Instant::from_millis(1000);
        for (i, id) in ["a", "b", "c"].iter().enumerate() {
            assert_eq!(b.add(t0 + Duration::from_millis(i as u64 * 100), item(id, "likes")), None);
        }
        assert_eq!(b.next_deadline(), Some(t0 + Duration::from_secs(3)));
        assert!(b.take_due(t0 + Duration::from_millis(2999)).is_empty());
        let out = b.take_due(t0 + Duration::from_secs(3));
        let [BatchOutput::Digest(d)] = out.as_slice() else { panic!("{out:?}") };
        assert_eq!((d.count, d.first.id(), d.last.id()), (3, "a", "c"));
        assert_eq!(d.ids, ["a", "b", "c"]);
        assert_eq!(b.next_deadline(), None);
    }

    #[test]
    fn a_lone_item_is_delivered_as_itself() {
        let mut b = Batcher::new(BatchConfig::default());
        b.add(Instant::ZERO, item("a", "g"));
        let out = b.take_due(Instant::from_millis(3000));
        assert_eq!(out, [BatchOutput::Single(item("a", "g"))]);
    }

    #[test]
    fn a_full_batch_is_delivered_at_once_and_groups_are_separate() {
        let mut b = Batcher::new(BatchConfig { window: Duration::from_secs(60), max_items: 3 });
        assert!(b.add(Instant::ZERO, item("a", "g1")).is_none());
        assert!(b.add(Instant::ZERO, item("x", "g2")).is_none());
        assert!(b.add(Instant::ZERO, item("b", "g1")).is_none());
        let Some(BatchOutput::Digest(d)) = b.add(Instant::ZERO, item("c", "g1")) else { panic!() };
        assert_eq!(d.count, 3);
        let open = b.snapshot();
        assert_eq!(open.len(), 1);
        assert_eq!(open[0].ids, ["x"]);
    }

    #[test]
    fn zero_window_disables_batching() {
        let b = Batcher::new(BatchConfig { window: Duration::ZERO, max_items: 10 });
        assert!(!b.wants(&item("a", "g")));
    }
}
