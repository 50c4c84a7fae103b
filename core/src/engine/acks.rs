//! Acks waiting to be sent, kept already encoded: full `ack` frames of 256 ids and one open frame that ids are
//! appended to. Queueing an ack copies the id's bytes into the frame being built — no allocation per ack.

use std::collections::VecDeque;

use super::Engine;
use super::timers::Timer;
use super::types::EngineError;
use crate::protocol::{self, MAX_IDS_PER_ACK, push_json_str};
use crate::time::Instant;

/// Most automatic acks kept while disconnected.
const MAX_PENDING_ACKS: usize = 4096;

const PREFIX: &str = "{\"op\":\"ack\",\"ids\":[";

#[derive(Debug, Default)]
pub(crate) struct PendingAcks {
    full: VecDeque<String>,
    open: String,
    open_count: usize,
}

impl PendingAcks {
    /// Adds an id; when more than `max` are pending, the oldest full frame is dropped.
    pub(crate) fn push(&mut self, id: &str, max: usize) {
        if self.open_count == 0 {
            self.open.clear();
            // Room for a full frame of ids like this one, so the frame is not copied as it grows.
            self.open.reserve(PREFIX.len() + MAX_IDS_PER_ACK * (id.len() + 3) + 2);
            self.open.push_str(PREFIX);
        } else {
            self.open.push(',');
        }
        push_json_str(&mut self.open, id);
        self.open_count += 1;
        if self.open_count == MAX_IDS_PER_ACK {
            self.open.push_str("]}");
            self.full.push_back(std::mem::take(&mut self.open));
            self.open_count = 0;
        }
        while self.len() > max && !self.full.is_empty() {
            self.full.pop_front();
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.full.len() * MAX_IDS_PER_ACK + self.open_count
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether a full frame is waiting.
    pub(crate) fn has_full_frame(&self) -> bool {
        !self.full.is_empty()
    }

    /// Every pending ack as encoded frames, oldest first; leaves nothing pending.
    pub(crate) fn take_frames(&mut self) -> impl Iterator<Item = String> + use<> {
        if self.open_count > 0 {
            self.open.push_str("]}");
            self.full.push_back(std::mem::take(&mut self.open));
            self.open_count = 0;
        }
        std::mem::take(&mut self.full).into_iter()
    }
}

impl Engine {
    /// Acks notifications explicitly (only needed with `auto_ack` off).
    pub fn ack(&mut self, now: Instant, ids: &[&str]) -> Result<(), EngineError> {
        self.tick(now);
        for id in ids {
            protocol::validate_id(id)
                .map_err(|e| EngineError::InvalidArgument(format!("id {} {e}", protocol::quoted(id))))?;
        }
        for id in ids {
            self.push_ack(id);
        }
        Ok(())
    }

    /// Queues an automatic ack. Not while handling relayed input (the engine that owns the socket acks), and
    /// never more than [`MAX_PENDING_ACKS`] waiting: the oldest are dropped (an ack is an optimisation the
    /// server can live without; unbounded memory is not).
    pub(super) fn queue_ack(&mut self, id: &str) {
        if self.config.auto_ack && !self.relaying {
            self.push_ack(id);
        }
    }

    /// Leading-edge coalescing: the first ack after a quiet `ack_delay` goes out in the same turn as its
    /// notification (a sparse stream gets prompt receipts and costs the client no extra wake-up, and the server
    /// reads the ack before its next publish rather than at a random later moment); later ones wait until
    /// `ack_delay` after the previous frame, so a busy stream still sends at most one frame per `ack_delay`.
    fn push_ack(&mut self, id: &str) {
        if self.pending_acks.is_empty() {
            let quiet_until = self.last_ack_flush.map(|t| t + self.config.ack_delay);
            self.timers.set(Timer::Ack, quiet_until.filter(|&t| t > self.now).unwrap_or(self.now));
        }
        self.pending_acks.push(id, MAX_PENDING_ACKS);
    }

    /// Whether pending acks should go out now: a full frame's worth, or their time came (see `push_ack`).
    pub(super) fn acks_due(&self) -> bool {
        !self.pending_acks.is_empty()
            && (self.pending_acks.has_full_frame() || self.timers.get(Timer::Ack).is_none_or(|t| t <= self.now))
    }

    /// Queues every pending ack.
    pub(super) fn flush_acks(&mut self) {
        self.timers.stop(Timer::Ack);
        for frame in self.pending_acks.take_frames() {
            self.last_ack_flush = Some(self.now);
            self.queue_text(frame);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{ClientFrame, decode_client_frame, encode_client_frame};

    #[test]
    fn frames_are_what_the_encoder_writes_and_split_at_the_protocol_limit() {
        let mut p = PendingAcks::default();
        let ids: Vec<String> = (0..300).map(|i| format!("id-{i}\"q")).collect();
        for id in &ids {
            p.push(id, 10_000);
        }
        assert_eq!(p.len(), 300);
        assert!(p.has_full_frame());
        let frames: Vec<String> = p.take_frames().collect();
        assert!(p.is_empty());
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0], encode_client_frame(&ClientFrame::Ack { ids: ids[..256].to_vec() }));
        assert_eq!(decode_client_frame(&frames[1]).unwrap(), ClientFrame::Ack { ids: ids[256..].to_vec() });
    }

    #[test]
    fn pending_acks_are_bounded_by_dropping_the_oldest_frames() {
        let mut p = PendingAcks::default();
        for i in 0..2000 {
            p.push(&format!("n{i}"), 600);
        }
        assert!(p.len() <= 600, "{}", p.len());
        let last = p.take_frames().last().unwrap();
        assert!(last.contains("\"n1999\""));
    }
}
