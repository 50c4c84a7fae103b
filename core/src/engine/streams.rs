//! Streams: the application's subscriptions, each stream's cursor, the (re)subscription after every `welcome`,
//! replay and the continuity reported for each `subscribed`, and frames relayed from another engine.

use super::Engine;
use super::link::Request;
use super::snapshot::Cursor;
use super::types::{Continuity, EngineError, Event};
use crate::protocol::{
    self, ClientFrame, DecodeError, ErrorCode, Notification, ServerFrame, StreamName, SubscribeEntry, WireContinuity,
};
use crate::time::Instant;

impl Engine {
    /// The cursor of a stream.
    pub fn cursor(&self, stream: &str) -> Option<&Cursor> {
        self.cursors.get(stream)
    }

    /// The authenticated user, once a `welcome` arrived.
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// Streams the application subscribed to (the implicit user stream is not listed).
    pub fn subscriptions(&self) -> impl Iterator<Item = &str> {
        self.desired.keys().map(String::as_str)
    }

    /// Subscribes to a stream (`topic:<name>` or `user:<id>`). Effective immediately when connected, and on
    /// every reconnect, resuming from the stream's cursor.
    pub fn subscribe(&mut self, now: Instant, stream: &str) -> Result<(), EngineError> {
        self.tick(now);
        StreamName::parse(stream).map_err(EngineError::InvalidArgument)?;
        if self.desired.contains_key(stream) {
            return Ok(());
        }
        if self.desired.len() >= protocol::MAX_STREAMS_PER_CONNECTION - 1 {
            return Err(EngineError::InvalidArgument(format!(
                "at most {} subscriptions per client",
                protocol::MAX_STREAMS_PER_CONNECTION - 1
            )));
        }
        self.desired.insert(stream.to_string(), ());
        if self.is_connected() {
            let entry = self.subscribe_entry(stream);
            self.send_subscribe(vec![entry]);
        }
        Ok(())
    }

    /// Unsubscribes from a stream and forgets its cursor.
    pub fn unsubscribe(&mut self, now: Instant, stream: &str) -> Result<(), EngineError> {
        self.tick(now);
        StreamName::parse(stream).map_err(EngineError::InvalidArgument)?;
        if self.desired.remove(stream).is_none() {
            return Ok(());
        }
        if self.cursors.remove(stream).is_some() {
            self.mark_dirty();
        }
        if self.is_connected() {
            let reference = self.next_ref();
            self.track(reference, Request::Unsubscribe);
            self.queue(&ClientFrame::Unsubscribe { reference, streams: vec![stream.to_string()] });
        }
        Ok(())
    }

    /// A server frame that another engine received — the leader of several browser tabs relays its socket's
    /// frames to the engines of the other tabs, which keeps their cursors, dedup windows and batches identical
    /// to the leader's, so any of them can take over the socket and resume with nothing lost and nothing
    /// delivered twice. Notifications and `subscribed` frames are processed as if they came from this engine's
    /// own socket (events, continuity, cursors, dedup, digests) but never acked, and so is an `error` by which the
    /// server ended a subscription (`SubscriptionFailed`, the stream dropped); other frames are ignored.
    /// A relayed message may hold several frames, as a socket's may (see [`Engine::handle_text`]); they are
    /// handled in order up to the first undecodable one, whose error is returned.
    pub fn handle_relayed(&mut self, now: Instant, text: &str) -> Result<(), DecodeError> {
        for line in protocol::message_frames(text) {
            let frame = protocol::decode_server_frame(line)?;
            self.handle_relayed_frame(now, frame);
        }
        Ok(())
    }

    /// [`Engine::handle_relayed`] with the frame already decoded.
    pub fn handle_relayed_frame(&mut self, now: Instant, frame: ServerFrame) {
        let now = self.tick(now);
        self.relaying = true;
        match frame {
            ServerFrame::Notification(n) => self.on_notification(now, n),
            ServerFrame::Subscribed { stream, epoch, offset, continuity, .. } => {
                self.on_subscribed(now, stream, epoch, offset, continuity)
            }
            // The socket's inbox changes (and the answers of the tab that holds it): counts and view follow.
            ServerFrame::Inbox(update) => self.apply_inbox(&update, true),
            // A subscription the server ended on the socket: dropped here too, so that this engine does not
            // subscribe it again when it takes the socket over.
            ServerFrame::Error(e) if e.reference.is_none() && e.code.close_code().is_none() => self.on_server_notice(e),
            _ => {}
        }
        self.relaying = false;
    }

    // ----------------------------------------------------------------------------------------------------
    // Internals

    pub(super) fn on_subscribed(
        &mut self,
        _now: Instant,
        stream: String,
        epoch: String,
        offset: u64,
        wire: WireContinuity,
    ) {
        let continuity = match wire {
            WireContinuity::Fresh => {
                self.stats.fresh += 1;
                self.cursors.insert(stream.clone(), Cursor { epoch, offset });
                Continuity::Fresh
            }
            WireContinuity::Resumed { replayed } => {
                self.stats.resumed += 1;
                self.count_replay(replayed);
                let cursor = self.cursors.get_or_insert(&stream, Cursor { epoch: epoch.clone(), offset: 0 });
                if cursor.epoch != epoch {
                    *cursor = Cursor { epoch, offset: offset.saturating_sub(replayed) };
                }
                if replayed > 0 {
                    self.replaying.insert(stream, (replayed, replayed));
                    self.mark_dirty();
                    return;
                }
                Continuity::Resumed { replayed: 0 }
            }
            WireContinuity::Gap { reason, missed, replayed } => {
                // What the server still holds follows (offsets after `offset - replayed`), through the normal
                // path: the cursor moves with each, dedup drops the ones the app has.
                self.stats.gaps += 1;
                self.count_replay(replayed);
                self.replaying.remove(&stream);
                if replayed > 0 {
                    self.gap_tail.insert(stream.clone(), replayed);
                } else {
                    self.gap_tail.remove(&stream);
                }
                self.cursors.insert(stream.clone(), Cursor { epoch, offset: offset.saturating_sub(replayed) });
                Continuity::Gap { reason, missed, replayed }
            }
        };
        self.mark_dirty();
        self.events.push_back(Event::Continuity { stream, continuity });
    }

    /// A subscription announced `replayed` notifications.
    fn count_replay(&mut self, replayed: u64) {
        if replayed > 0 {
            self.stats.replays += 1;
            self.stats.replayed += replayed;
            self.stats.replay_max = self.stats.replay_max.max(replayed);
        }
    }

    pub(super) fn on_notification(&mut self, now: Instant, n: Notification) {
        self.stats.notifications_received += 1;
        let mut replay_done = None;
        let mut replayed = false;
        if !self.replaying.is_empty()
            && let Some((remaining, total)) = self.replaying.get_mut(n.stream())
        {
            replayed = true;
            *remaining -= 1;
            if *remaining == 0 {
                replay_done = Some((n.stream().to_owned(), *total));
                self.replaying.remove(n.stream());
            }
        } else if !self.gap_tail.is_empty()
            && let Some(remaining) = self.gap_tail.get_mut(n.stream())
        {
            replayed = true;
            *remaining -= 1;
            if *remaining == 0 {
                self.gap_tail.remove(n.stream());
            }
        }
        let mut stale = false;
        if let Some(offset) = n.offset {
            match self.cursors.get_mut(n.stream()) {
                Some(c) if c.epoch == n.epoch() => {
                    if offset <= c.offset {
                        stale = true;
                    } else {
                        c.offset = offset;
                    }
                }
                Some(c) => *c = Cursor { epoch: n.epoch().to_owned(), offset },
                None => {
                    self.cursors.insert(n.stream().to_owned(), Cursor { epoch: n.epoch().to_owned(), offset });
                }
            }
            self.mark_dirty();
        }
        if stale {
            self.stats.stale_dropped += 1;
        } else {
            self.deliver(now, n, replayed);
        }
        if let Some((stream, replayed)) = replay_done {
            self.events.push_back(Event::Continuity { stream, continuity: Continuity::Resumed { replayed } });
        }
    }

    /// The server refused a subscription: it is not retried.
    pub(super) fn subscription_refused(&mut self, stream: String, code: ErrorCode, message: String) {
        warn!(%stream, code = %code, message = %message, "subscription refused");
        self.desired.remove(&stream);
        self.replaying.remove(&stream);
        self.events.push_back(Event::SubscriptionFailed { stream, code, message });
    }

    fn subscribe_entry(&self, stream: &str) -> SubscribeEntry {
        let cursor = self.cursors.get(stream);
        SubscribeEntry {
            stream: stream.to_string(),
            epoch: cursor.map(|c| c.epoch.clone()),
            offset: cursor.map(|c| c.offset),
        }
    }

    fn send_subscribe(&mut self, entries: Vec<SubscribeEntry>) {
        for chunk in entries.chunks(protocol::MAX_STREAMS_PER_SUBSCRIBE) {
            let reference = self.next_ref();
            self.track(reference, Request::Subscribe(chunk.iter().map(|e| e.stream.clone()).collect()));
            self.queue(&ClientFrame::Subscribe { reference, streams: chunk.to_vec() });
        }
    }

    /// After `welcome`: subscribes to the user's stream and every desired stream, each from its cursor.
    pub(super) fn resubscribe_all(&mut self) {
        let mut streams: Vec<String> = Vec::new();
        if self.config.subscribe_user_stream
            && let Some(user) = &self.user
        {
            streams.push(protocol::user_stream(user));
        }
        streams.extend(self.desired.keys().filter(|s| !streams.contains(s)).cloned().collect::<Vec<_>>());
        let entries: Vec<SubscribeEntry> = streams.iter().map(|s| self.subscribe_entry(s)).collect();
        if !entries.is_empty() {
            self.send_subscribe(entries);
        }
    }
}
