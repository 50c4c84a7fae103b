//! Delivery to the application: every notification passes the one dedup window (socket, replay and push
//! alike); informational ones with a group are held in batches and delivered as digests.

use super::Engine;
use super::batch::BatchOutput;
use super::timers::Timer;
use super::types::Event;
use crate::protocol::Notification;
use crate::time::Instant;

impl Engine {
    /// A notification that is not stale, live or `replayed`: delivered unless its id was seen, held if it batches.
    pub(super) fn deliver(&mut self, now: Instant, n: Notification, replayed: bool) {
        if !self.dedup.insert(n.id()) {
            self.stats.duplicates_dropped += 1;
            if replayed {
                self.stats.duplicates_replay += 1;
            } else {
                self.stats.duplicates_socket += 1;
            }
            self.queue_ack(n.id());
            return;
        }
        self.mark_dirty();
        if self.batcher.wants(&n) {
            if let Some(out) = self.batcher.add(now, n) {
                self.emit_batch(out);
            }
            self.sync_batch_timer();
        } else {
            self.emit_notification(n);
        }
    }

    fn emit_notification(&mut self, n: Notification) {
        self.stats.delivered += 1;
        self.queue_ack(n.id());
        self.events.push_back(Event::Notification(Box::new(n)));
    }

    pub(super) fn emit_batch(&mut self, out: BatchOutput) {
        self.mark_dirty();
        match out {
            BatchOutput::Single(n) => self.emit_notification(n),
            BatchOutput::Digest(d) => {
                self.stats.delivered += u64::from(d.count);
                self.stats.digests += 1;
                self.stats.digested += u64::from(d.count);
                for id in &d.ids {
                    self.queue_ack(id);
                }
                self.events.push_back(Event::Digest(d));
            }
        }
    }

    /// The batch timer follows the oldest open batch.
    pub(super) fn sync_batch_timer(&mut self) {
        self.timers.set_opt(Timer::Batch, self.batcher.next_deadline());
    }
}
