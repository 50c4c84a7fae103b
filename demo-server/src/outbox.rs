//! The outbound queue of one connection, shared between the connection's task and publishers.
//!
//! Publishers push shared frame handles ([`Utf8Bytes`] clones: a reference-count increment, never a copy of
//! the text) under a short mutex and wake the connection task only when the queue goes from empty to
//! non-empty. The task swaps the whole queue out at once and writes it as one batch. An idle connection's
//! queue holds no allocation.

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::extract::ws::Utf8Bytes;
use tidings_core::protocol::ErrorCode;
use tokio::sync::Notify;

/// Why a connection is being closed by someone other than its own task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CloseReason {
    pub(crate) code: ErrorCode,
    pub(crate) message: String,
}

/// Result of [`ConnHandle::push_live`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Pushed {
    /// Queued for sending.
    Queued,
    /// The live queue overflowed with this push: the connection is now closing as a slow consumer.
    Overflowed,
    /// The connection is closing; the frame was dropped.
    Closing,
}

/// Result of [`ConnHandle::push_live_all`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Pushes {
    /// Frames queued for sending — counted as consecutive `push_live` calls count them, also when a later one
    /// overflowed the queue and the backlog was dropped.
    pub(crate) queued: u64,
    /// The live queue overflowed with these frames: the connection is now closing as a slow consumer.
    pub(crate) overflowed: bool,
}

/// The shared half of a connection.
pub(crate) struct ConnHandle {
    id: u64,
    /// Most live frames queued at once (beyond the reserve taken by replies and replay).
    limit: usize,
    /// An SSE response rather than a WebSocket connection (only the metrics' transport label differs).
    sse: bool,
    state: Mutex<OutboxState>,
    notify: Notify,
}

#[derive(Default)]
struct OutboxState {
    frames: VecDeque<Utf8Bytes>,
    /// How many of `frames` were queued as replies or replay, which do not count against the live limit.
    reserved: usize,
    close: Option<CloseReason>,
    /// Streams an operator ended this connection's subscription of, not yet handed to its session.
    revoked: Vec<Arc<str>>,
}

impl fmt::Debug for ConnHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnHandle").field("id", &self.id).finish_non_exhaustive()
    }
}

impl ConnHandle {
    pub(crate) fn new(id: u64, limit: usize) -> Self {
        ConnHandle { id, limit, sse: false, state: Mutex::new(OutboxState::default()), notify: Notify::new() }
    }

    /// The handle of an SSE response.
    pub(crate) fn for_sse(id: u64, limit: usize) -> Self {
        ConnHandle { sse: true, ..ConnHandle::new(id, limit) }
    }

    /// Whether this is an SSE response.
    pub(crate) fn is_sse(&self) -> bool {
        self.sse
    }

    /// The connection id (unique within the process).
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// Most live frames queued at once.
    pub(crate) fn limit(&self) -> usize {
        self.limit
    }

    fn lock(&self) -> MutexGuard<'_, OutboxState> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues a live notification frame, subject to the live queue limit.
    pub(crate) fn push_live(&self, frame: &Utf8Bytes) -> Pushed {
        let pushes = self.push_live_all(std::iter::once(frame));
        if pushes.overflowed {
            Pushed::Overflowed
        } else if pushes.queued == 1 {
            Pushed::Queued
        } else {
            Pushed::Closing
        }
    }

    /// Queues live notification frames in order, as consecutive [`ConnHandle::push_live`] calls would, under one
    /// lock: a broadcast's publications that arrive together cost each connection one lock and one wake-up, not
    /// one per publication (the connections' queues are many and cold; S6 in bench/README.md).
    pub(crate) fn push_live_all<'a>(&self, frames: impl IntoIterator<Item = &'a Utf8Bytes>) -> Pushes {
        let mut pushes = Pushes::default();
        let mut state = self.lock();
        if state.close.is_some() {
            return pushes;
        }
        let was_empty = state.frames.is_empty();
        for frame in frames {
            if state.frames.len() - state.reserved >= self.limit {
                state.frames = VecDeque::new();
                state.reserved = 0;
                state.close = Some(CloseReason {
                    code: ErrorCode::SlowConsumer,
                    message: format!("more than {} notifications were waiting to be sent", self.limit),
                });
                pushes.overflowed = true;
                break;
            }
            state.frames.push_back(frame.clone());
            pushes.queued += 1;
        }
        drop(state);
        if pushes.overflowed || (was_empty && pushes.queued > 0) {
            self.notify.notify_one();
        }
        pushes
    }

    /// Queues frames that must not be dropped for queue limits: replies and replayed notifications.
    pub(crate) fn push_reserved(&self, frames: impl IntoIterator<Item = Utf8Bytes>) {
        let mut state = self.lock();
        if state.close.is_some() {
            return;
        }
        let was_empty = state.frames.is_empty();
        let before = state.frames.len();
        state.frames.extend(frames);
        state.reserved += state.frames.len() - before;
        let queued_any = state.frames.len() > before;
        drop(state);
        if was_empty && queued_any {
            self.notify.notify_one();
        }
    }

    /// Asks the connection to close with an `error` of `code` (first reason wins). Returns whether this call
    /// set the reason.
    pub(crate) fn close(&self, code: ErrorCode, message: impl Into<String>) -> bool {
        let mut state = self.lock();
        if state.close.is_some() {
            return false;
        }
        state.close = Some(CloseReason { code, message: message.into() });
        drop(state);
        self.notify.notify_one();
        true
    }

    /// Asks the connection to end its subscription of `stream` (`POST /v1/admin/unsubscribe`): its session drops
    /// the stream and tells the client.
    pub(crate) fn revoke(&self, stream: Arc<str>) {
        let mut state = self.lock();
        if state.close.is_some() {
            return;
        }
        state.revoked.push(stream);
        drop(state);
        self.notify.notify_one();
    }

    /// The streams [`ConnHandle::revoke`] asked to end since the last call.
    pub(crate) fn take_revoked(&self) -> Vec<Arc<str>> {
        let mut state = self.lock();
        if state.revoked.is_empty() { Vec::new() } else { std::mem::take(&mut state.revoked) }
    }

    /// Moves every queued frame into `into` (which must be empty) and returns the close reason, if any.
    pub(crate) fn take(&self, into: &mut VecDeque<Utf8Bytes>) -> Option<CloseReason> {
        debug_assert!(into.is_empty());
        let mut state = self.lock();
        std::mem::swap(&mut state.frames, into);
        state.reserved = 0;
        state.close.clone()
    }

    /// Completes when frames were queued or a close was requested since the last wake-up (a wake-up that
    /// happened while nobody waited is remembered).
    pub(crate) async fn notified(&self) {
        self.notify.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(text: &'static str) -> Utf8Bytes {
        Utf8Bytes::from_static(text)
    }

    #[test]
    fn live_frames_beyond_the_limit_close_the_connection_as_slow_consumer() {
        let conn = ConnHandle::new(1, 2);
        assert_eq!(conn.push_live(&frame("a")), Pushed::Queued);
        assert_eq!(conn.push_live(&frame("b")), Pushed::Queued);
        assert_eq!(conn.push_live(&frame("c")), Pushed::Overflowed);
        assert_eq!(conn.push_live(&frame("d")), Pushed::Closing);
        let mut out = VecDeque::new();
        let reason = conn.take(&mut out).unwrap();
        assert_eq!(reason.code, ErrorCode::SlowConsumer);
        assert!(out.is_empty(), "the backlog of a slow consumer is dropped");
    }

    #[test]
    fn frames_pushed_together_count_and_overflow_as_frames_pushed_one_by_one() {
        let frames = [frame("a"), frame("b"), frame("c"), frame("d")];
        let conn = ConnHandle::new(1, 3);
        assert_eq!(conn.push_live_all(&frames[..2]), Pushes { queued: 2, overflowed: false });
        let mut out = VecDeque::new();
        assert_eq!(conn.take(&mut out), None);
        assert_eq!(out.iter().map(|f| f.as_str()).collect::<Vec<_>>(), ["a", "b"], "in order");
        // One more than the limit: the first three are counted as queued, the fourth overflows the queue.
        assert_eq!(conn.push_live_all(&frames), Pushes { queued: 3, overflowed: true });
        assert_eq!(conn.push_live_all(&frames[..1]), Pushes::default(), "closing: dropped");
        out.clear();
        assert_eq!(conn.take(&mut out).map(|r| r.code), Some(ErrorCode::SlowConsumer));
        assert!(out.is_empty(), "the backlog of a slow consumer is dropped");
    }

    #[test]
    fn reserved_frames_do_not_count_against_the_live_limit() {
        let conn = ConnHandle::new(1, 2);
        conn.push_reserved((0..100).map(|_| frame("replay")));
        assert_eq!(conn.push_live(&frame("a")), Pushed::Queued);
        assert_eq!(conn.push_live(&frame("b")), Pushed::Queued);
        assert_eq!(conn.push_live(&frame("c")), Pushed::Overflowed);
    }

    #[test]
    fn take_drains_in_order_and_resets_the_reserve() {
        let conn = ConnHandle::new(1, 2);
        conn.push_reserved([frame("r")]);
        conn.push_live(&frame("a"));
        let mut out = VecDeque::new();
        assert_eq!(conn.take(&mut out), None);
        assert_eq!(out.iter().map(|f| f.as_str()).collect::<Vec<_>>(), ["r", "a"]);
        out.clear();
        conn.push_live(&frame("b"));
        conn.push_live(&frame("c"));
        assert_eq!(conn.push_live(&frame("d")), Pushed::Overflowed);
    }

    #[test]
    fn the_first_close_reason_wins_and_later_frames_are_dropped() {
        let conn = ConnHandle::new(1, 10);
        conn.push_live(&frame("a"));
        assert!(conn.close(ErrorCode::Dropped, "operator"));
        assert!(!conn.close(ErrorCode::ServerShutdown, "later"));
        assert_eq!(conn.push_live(&frame("b")), Pushed::Closing);
        let mut out = VecDeque::new();
        assert_eq!(conn.take(&mut out).unwrap().code, ErrorCode::Dropped);
        assert_eq!(out.len(), 1, "frames queued before the close are still handed out");
    }

    #[tokio::test]
    async fn a_wake_up_without_a_waiter_is_remembered() {
        let conn = ConnHandle::new(1, 10);
        conn.push_live(&frame("a"));
        tokio::time::timeout(std::time::Duration::from_secs(5), conn.notified()).await.unwrap();
    }
}
