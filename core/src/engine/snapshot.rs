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

/// Everything the engine persists: cursors, recently seen ids, open batches and the device id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Format version.
    pub version: u32,
    /// The installation's device id.
    pub device_id: Option<String>,
    /// Cursor per stream.
    pub cursors: StreamMap<Cursor>,
    /// Recently seen notifications, oldest first: dedup-window entries (see [`DedupWindow`]); plain ids are
    /// accepted too.
    pub seen: Vec<String>,
    /// Batches not yet delivered.
    pub pending: Vec<PendingBatch>,
    /// The push address this device registered last (re-sent on every connection).
    pub push: Option<PushRegistration>,
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
    /// Merges `other` (typically what another process wrote, such as an iOS Notification Service Extension)
    /// into `self`: ids are unioned (`other`'s count as older), cursors keep the further position of the same
    /// epoch (or `self`'s when the epochs differ), batches are unioned by group.
    pub fn merge(&mut self, other: &Snapshot) {
        if self.device_id.is_none() {
            self.device_id.clone_from(&other.device_id);
        }
        for (stream, theirs) in &other.cursors {
            match self.cursors.get_mut(stream) {
                Some(ours) if ours.epoch == theirs.epoch => ours.offset = ours.offset.max(theirs.offset),
                Some(_) => {}
                None => {
                    self.cursors.insert(stream.clone(), theirs.clone());
                }
            }
        }
        let mut ours: Vec<&str> = self.seen.iter().map(String::as_str).collect();
        ours.sort_unstable();
        let mut seen: Vec<String> =
            other.seen.iter().filter(|id| ours.binary_search(&id.as_str()).is_err()).cloned().collect();
        seen.append(&mut self.seen);
        self.seen = seen;
        for batch in &other.pending {
            if !self.pending.iter().any(|b| b.group == batch.group) {
                self.pending.push(batch.clone());
            }
        }
        if self.push.is_none() {
            self.push.clone_from(&other.push);
        }
    }
}
