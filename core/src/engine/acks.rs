//! Acks waiting to be sent, kept already encoded: full `ack` frames of 256 ids and one open frame that ids are
//! appended to. Queueing an ack copies the id's bytes into the frame being built — no allocation per ack.

use std::collections::VecDeque;

use crate::protocol::{MAX_IDS_PER_ACK, push_json_str};

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
