//! The replay decision of protocol §5.4.

use tidings_core::protocol::{GapReason, WireContinuity};

use crate::storage::StreamState;

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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

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
}
