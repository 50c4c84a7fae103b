//! The replay decision of protocol §5.4, the reply it makes, and which live notifications may follow it.

use std::sync::Arc;

use axum::extract::ws::Utf8Bytes;
use tidings_core::protocol::{GapReason, ServerFrame, WireContinuity, encode_server_frame};
use tracing::warn;

use crate::model::{HistoryRead, StreamState};
use crate::registry::Buffered;

/// How a subscription continues from the client's position.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    /// No position given.
    Fresh,
    /// Replay offsets `after + 1 ..= head`.
    Resume { after: u64, count: u64 },
    /// The position cannot be continued.
    Gap { reason: GapReason, missed: Option<u64> },
}

impl Decision {
    pub(crate) fn continuity(&self) -> WireContinuity {
        match *self {
            Decision::Fresh => WireContinuity::Fresh,
            Decision::Resume { count, .. } => WireContinuity::Resumed { replayed: count },
            Decision::Gap { reason, missed } => WireContinuity::Gap { reason, missed, replayed: 0 },
        }
    }
}

/// Decides how to continue from `position` (`(epoch, offset)`) given the stream's `state`.
pub(crate) fn decide(state: &StreamState, position: Option<(&str, u64)>) -> Decision {
    let Some((epoch, offset)) = position else { return Decision::Fresh };
    if epoch != &*state.epoch {
        return Decision::Gap { reason: GapReason::EpochChanged, missed: None };
    }
    if offset > state.head {
        return Decision::Gap { reason: GapReason::AheadOfStream, missed: None };
    }
    if offset + 1 < state.oldest {
        return Decision::Gap { reason: GapReason::OutOfBuffer, missed: Some(state.oldest - offset - 1) };
    }
    Decision::Resume { after: offset, count: state.head - offset }
}

/// Which live notifications may follow a subscribe's reply: those after what the history read covered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct LiveFilter {
    /// The epoch the stream was read in.
    pub(crate) epoch: Arc<str>,
    /// The head the stream was read at; the reply covers everything up to it.
    pub(crate) after: u64,
}

impl LiveFilter {
    /// Whether a notification fanned out while the subscription synced is new to the client: ephemeral ones
    /// always are (they have no position and were never in history); buffered ones when they come after the read
    /// head in its epoch.
    pub(crate) fn admits(&self, b: &Buffered) -> bool {
        match b.offset {
            None => true,
            Some(offset) => b.epoch == self.epoch && offset > self.after,
        }
    }
}

/// The answer to one subscribe entry: the `subscribed` frame and the replay, in order.
#[derive(Clone, Debug)]
pub(crate) struct Reply {
    pub(crate) frames: Vec<Utf8Bytes>,
    /// How many notifications `frames` replays.
    pub(crate) replayed: u64,
    pub(crate) filter: LiveFilter,
    /// How the subscription continued (for the server's metrics).
    pub(crate) decision: Decision,
}

/// The frames of the longest run of `entries` that ends at `head` with consecutive offsets: after a gap, what the
/// server still holds of the stream's current epoch (§5.4: offsets `head - n + 1 ..= head`).
fn held_tail(entries: Vec<crate::model::HistoryEntry>, head: u64) -> Vec<Utf8Bytes> {
    let mut expected = head;
    let run = entries
        .iter()
        .rev()
        .take_while(|e| {
            let fits = e.offset == expected && expected > 0;
            expected = expected.saturating_sub(1);
            fits
        })
        .count();
    let skip = entries.len() - run;
    entries.into_iter().skip(skip).map(|e| e.frame.into_utf8_bytes()).collect()
}

/// Builds the reply to a subscribe of `stream` from `position`, given what was read: `subscribed`, then the replay —
/// after a resume, everything after the position; after a gap, everything the server still holds of the current
/// epoch (the client is told of the gap and still gets what survived).
pub(crate) fn reply(reference: u64, stream: &str, read: HistoryRead, position: Option<(&str, u64)>) -> Reply {
    let HistoryRead { state, entries } = read;
    let mut decision = decide(&state, position);
    if let Decision::Resume { after, count } = decision {
        let complete = entries.len() as u64 == count
            && entries.iter().zip(after + 1..).all(|(entry, offset)| entry.offset == offset);
        if !complete {
            warn!(
                stream,
                expected = count,
                got = entries.len(),
                "the store returned an incomplete replay; answering with a gap"
            );
            decision = Decision::Gap { reason: GapReason::OutOfBuffer, missed: None };
        }
    }
    let mut continuity = decision.continuity();
    let (replay, gap_replayed): (Vec<Utf8Bytes>, u64) = match &decision {
        Decision::Resume { .. } => (entries.into_iter().map(|e| e.frame.into_utf8_bytes()).collect(), 0),
        Decision::Gap { .. } => {
            let tail = held_tail(entries, state.head);
            let n = tail.len() as u64;
            (tail, n)
        }
        Decision::Fresh => (Vec::new(), 0),
    };
    // A gap followed by what the epoch still holds carries `replayed` (protocol §2.4).
    if let WireContinuity::Gap { replayed, .. } = &mut continuity {
        *replayed = gap_replayed;
    }
    let subscribed = ServerFrame::Subscribed {
        reference,
        stream: stream.to_owned(),
        epoch: state.epoch.to_string(),
        offset: state.head,
        continuity,
    };
    let replayed = replay.len() as u64;
    let frames = std::iter::once(Utf8Bytes::from(encode_server_frame(&subscribed))).chain(replay).collect();
    Reply { frames, replayed, filter: LiveFilter { epoch: state.epoch, after: state.head }, decision }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{EncodedFrame, HistoryEntry};

    fn state(head: u64, oldest: u64) -> StreamState {
        StreamState { epoch: Arc::from("k3v9q2"), head, oldest }
    }

    #[test]
    fn follows_the_decision_table() {
        let s = state(45, 10);
        assert_eq!(decide(&s, None), Decision::Fresh);
        assert_eq!(decide(&s, Some(("other", 41))), Decision::Gap { reason: GapReason::EpochChanged, missed: None });
        assert_eq!(decide(&s, Some(("k3v9q2", 46))), Decision::Gap { reason: GapReason::AheadOfStream, missed: None });
        assert_eq!(decide(&s, Some(("k3v9q2", 41))), Decision::Resume { after: 41, count: 4 });
        assert_eq!(decide(&s, Some(("k3v9q2", 45))), Decision::Resume { after: 45, count: 0 });
        assert_eq!(decide(&s, Some(("k3v9q2", 9))), Decision::Resume { after: 9, count: 36 }, "o + 1 == L");
        assert_eq!(
            decide(&s, Some(("k3v9q2", 3))),
            Decision::Gap { reason: GapReason::OutOfBuffer, missed: Some(6) },
            "offsets 4..=9 were lost"
        );
    }

    #[test]
    fn an_empty_buffer_resumes_only_from_the_head() {
        let s = state(7, 8);
        assert_eq!(decide(&s, Some(("k3v9q2", 7))), Decision::Resume { after: 7, count: 0 });
        assert_eq!(decide(&s, Some(("k3v9q2", 5))), Decision::Gap { reason: GapReason::OutOfBuffer, missed: Some(2) });
        let new = state(0, 1);
        assert_eq!(decide(&new, Some(("k3v9q2", 0))), Decision::Resume { after: 0, count: 0 });
    }

    fn read(head: u64, oldest: u64, offsets: &[u64]) -> HistoryRead {
        let entries =
            offsets.iter().map(|&o| HistoryEntry { offset: o, frame: EncodedFrame::new(format!("n{o}")) }).collect();
        HistoryRead { state: state(head, oldest), entries }
    }

    fn texts(reply: &Reply) -> Vec<&str> {
        reply.frames.iter().map(|f| f.as_str()).collect()
    }

    #[test]
    fn a_resume_replays_what_follows_the_position() {
        let r = reply(3, "user:a", read(5, 1, &[4, 5]), Some(("k3v9q2", 3)));
        assert_eq!(
            texts(&r),
            [
                r#"{"op":"subscribed","ref":3,"stream":"user:a","epoch":"k3v9q2","offset":5,"continuity":"resumed","replayed":2}"#,
                "n4",
                "n5"
            ]
        );
        assert_eq!((r.replayed, r.filter.after), (2, 5));
    }

    #[test]
    fn an_incomplete_replay_is_answered_with_a_gap_and_what_follows_the_hole() {
        let r = reply(1, "user:a", read(5, 1, &[5]), Some(("k3v9q2", 3)));
        assert_eq!(
            texts(&r),
            [
                r#"{"op":"subscribed","ref":1,"stream":"user:a","epoch":"k3v9q2","offset":5,"continuity":"gap","reason":"out_of_buffer","replayed":1}"#,
                "n5"
            ]
        );
        let r = reply(1, "user:a", read(5, 1, &[4, 6]), Some(("k3v9q2", 3)));
        assert!(texts(&r)[0].contains(r#""continuity":"gap""#), "offsets must follow the position one by one");
        assert_eq!(texts(&r).len(), 1, "nothing ends at the head one by one: nothing replayed");
    }

    #[test]
    fn a_gap_is_followed_by_everything_the_current_epoch_holds() {
        // Evicted: offsets 4..=6 are held, the position 1 is before them.
        let r = reply(2, "user:a", read(6, 4, &[4, 5, 6]), Some(("k3v9q2", 1)));
        assert_eq!(
            texts(&r),
            [
                r#"{"op":"subscribed","ref":2,"stream":"user:a","epoch":"k3v9q2","offset":6,"continuity":"gap","reason":"out_of_buffer","missed":2,"replayed":3}"#,
                "n4",
                "n5",
                "n6"
            ]
        );
        assert_eq!((r.replayed, r.filter.after), (3, 6));
        // Another epoch (the server lost the stream): everything of the new one.
        let r = reply(2, "user:a", read(2, 1, &[1, 2]), Some(("old", 40)));
        assert!(
            texts(&r)[0].ends_with(r#""continuity":"gap","reason":"epoch_changed","replayed":2}"#),
            "{}",
            texts(&r)[0]
        );
        assert_eq!(texts(&r)[1..], ["n1", "n2"]);
        // Ahead of the stream (the server lost its newest notifications): everything it holds.
        let r = reply(2, "user:a", read(2, 1, &[1, 2]), Some(("k3v9q2", 9)));
        assert!(texts(&r)[0].ends_with(r#""reason":"ahead_of_stream","replayed":2}"#), "{}", texts(&r)[0]);
        // Nothing held: no `replayed`.
        let r = reply(2, "user:a", read(0, 1, &[]), Some(("old", 3)));
        assert_eq!(
            texts(&r),
            [
                r#"{"op":"subscribed","ref":2,"stream":"user:a","epoch":"k3v9q2","offset":0,"continuity":"gap","reason":"epoch_changed"}"#
            ]
        );
    }

    #[test]
    fn live_notifications_after_the_read_head_are_admitted() {
        let filter = LiveFilter { epoch: Arc::from("e"), after: 5 };
        let b = |epoch: &str, offset: Option<u64>| Buffered {
            epoch: Arc::from(epoch),
            offset,
            frame: Utf8Bytes::from_static(""),
        };
        assert!(!filter.admits(&b("e", Some(5))), "covered by the read");
        assert!(filter.admits(&b("e", Some(6))));
        assert!(filter.admits(&b("e", None)), "ephemeral");
        assert!(!filter.admits(&b("other", Some(9))), "another epoch");
    }
}
