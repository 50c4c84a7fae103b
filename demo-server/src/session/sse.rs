//! Server-Sent Events, sans-IO (protocol §15): the resume token every event carries as its `id:`, the tickets
//! `EventSource` opens a stream with, and the encoder that turns a session's frames into events. The SSE driver
//! (`crate::sse`) only moves the bytes this module makes.
//!
//! - **Resume token.** One response multiplexes several streams, so the `id:` must say where *every* stream is:
//!   it encodes each stream's cursor `(stream, epoch, offset)` — and the ticket the response was opened with —
//!   as base64url JSON, signed (HMAC-SHA256 with a key derived from the server's secret) so that a client cannot
//!   forge the ticket binding. Clients treat it as opaque and send it back as `Last-Event-ID` (or `?cursor=`).
//! - **Ticket.** `EventSource` cannot send an `Authorization` header, and a long-lived token in the URL ends up in
//!   logs, proxies and the browser history. A ticket is a signed, short-lived (60 s to open), single-use
//!   credential obtained with the token; it carries the token's user, topics and expiry. A ticket opens one stream
//!   once; `EventSource`'s own reconnects of that stream present it again with the `Last-Event-ID` the server
//!   gave that stream, which is bound to the ticket, so they resume while the token lives — a leaked URL alone
//!   opens nothing.
//! - **Encoder.** `notification` frames become default (`message`) events, so `onmessage` gets them; a
//!   notification already sent on another stream of the response is not sent again (only its position moves).
//!   `subscribed` becomes `event: continuity` (before that stream's notifications), `welcome` carries `retry:`,
//!   heartbeats become comments, everything else an event named after its `op`.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::hmac;
use serde::{Deserialize, Serialize};
use tidings_core::protocol::{ServerFrame, WireContinuity, decode_server_frame, notification_position, raw_member};

use crate::auth::{TokenError, TopicPatterns, VerifiedToken};

/// Notification ids remembered per response to send each once.
const RECENT_IDS: usize = 1024;

/// The key resume tokens and tickets are signed with.
pub(crate) struct SseKeys {
    key: hmac::Key,
}

impl std::fmt::Debug for SseKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SseKeys").finish_non_exhaustive()
    }
}

impl SseKeys {
    /// Keys derived from the server's token secret (a change of secret invalidates tickets and resume tokens).
    pub(crate) fn new(secret: &str) -> Self {
        let root = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
        let derived = hmac::sign(&root, b"tidings sse v1");
        SseKeys { key: hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref()) }
    }

    /// `base64url(payload) "." base64url(mac)`, the MAC truncated to 128 bits.
    fn seal(&self, payload: &[u8]) -> String {
        let tag = hmac::sign(&self.key, payload);
        format!("{}.{}", URL_SAFE_NO_PAD.encode(payload), URL_SAFE_NO_PAD.encode(&tag.as_ref()[..16]))
    }

    /// The payload of a sealed text, if its MAC is right.
    fn open(&self, sealed: &str) -> Option<Vec<u8>> {
        let (payload, tag) = sealed.trim().split_once('.')?;
        let payload = URL_SAFE_NO_PAD.decode(payload).ok()?;
        let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
        let full = hmac::sign(&self.key, &payload);
        // Constant time: ring's verify needs the full tag, so compare the truncated one by hand.
        let expected = &full.as_ref()[..16];
        let same = tag.len() == 16 && expected.iter().zip(&tag).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
        same.then_some(payload)
    }
}

/// What a ticket carries: who, which topics, until when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Ticket {
    /// Random id; a ticket opens one stream once.
    #[serde(rename = "i")]
    pub(crate) id: String,
    #[serde(rename = "u")]
    pub(crate) user: String,
    #[serde(rename = "t")]
    pub(crate) topics: Vec<String>,
    /// When the token it was obtained with expires (ms since the Unix epoch); `None`: never.
    #[serde(rename = "x", default, skip_serializing_if = "Option::is_none")]
    pub(crate) expires_at: Option<u64>,
    /// Until when it may open a stream (ms since the Unix epoch).
    #[serde(rename = "o")]
    pub(crate) open_until: u64,
}

impl Ticket {
    /// A new ticket for `verified`, valid for opening until `open_until` (and never beyond the token's expiry).
    pub(crate) fn issue(verified: &VerifiedToken, now: u64, open_for_ms: u64) -> Self {
        let expires_at = verified.expires_in_ms.map(|ms| now + ms);
        let open_until = (now + open_for_ms).min(expires_at.unwrap_or(u64::MAX));
        Ticket {
            id: format!("t{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..)),
            user: verified.user.clone(),
            topics: verified.topics.patterns().to_vec(),
            expires_at,
            open_until,
        }
    }

    pub(crate) fn seal(&self, keys: &SseKeys) -> String {
        keys.seal(&serde_json::to_vec(self).expect("a ticket serializes"))
    }

    /// The ticket in `text`, if the server made it.
    pub(crate) fn open(keys: &SseKeys, text: &str) -> Option<Ticket> {
        serde_json::from_slice(&keys.open(text)?).ok()
    }

    /// The identity the ticket stands for at `now` (its token's expiry applies).
    pub(crate) fn verified(&self, now: u64) -> Result<VerifiedToken, TokenError> {
        let expires_in_ms = match self.expires_at {
            Some(at) if now >= at => {
                return Err(TokenError::Expired("the token this ticket was obtained with has expired".into()));
            }
            Some(at) => Some(at - now),
            None => None,
        };
        Ok(VerifiedToken { user: self.user.clone(), expires_in_ms, topics: TopicPatterns::new(self.topics.clone()) })
    }
}

/// The cursor of every stream of a response, and the ticket it was opened with.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ResumeToken {
    #[serde(rename = "k", default, skip_serializing_if = "Option::is_none")]
    pub(crate) ticket: Option<String>,
    /// `(stream, epoch, offset)`.
    #[serde(rename = "p", default)]
    pub(crate) positions: Vec<(String, String, u64)>,
}

impl ResumeToken {
    pub(crate) fn seal(&self, keys: &SseKeys) -> String {
        keys.seal(&serde_json::to_vec(self).expect("a resume token serializes"))
    }

    /// The token in `text`, if the server made it.
    pub(crate) fn open(keys: &SseKeys, text: &str) -> Option<ResumeToken> {
        serde_json::from_slice(&keys.open(text)?).ok()
    }

    /// The position of `stream`, if the token has one.
    pub(crate) fn position(&self, stream: &str) -> Option<(String, u64)> {
        self.positions.iter().find(|(s, _, _)| s == stream).map(|(_, e, o)| (e.clone(), *o))
    }
}

/// Turns a session's frames into SSE bytes, keeping every stream's cursor.
pub(crate) struct SseEncoder {
    keys: Arc<SseKeys>,
    ticket: Option<String>,
    retry_ms: u64,
    cursors: BTreeMap<String, (String, u64)>,
    recent: VecDeque<String>,
    recent_set: HashSet<String>,
}

impl SseEncoder {
    /// An encoder for a response opened with `ticket` (if any), resuming from `resume`.
    pub(crate) fn new(keys: Arc<SseKeys>, ticket: Option<String>, retry_ms: u64, resume: &ResumeToken) -> Self {
        let cursors = resume.positions.iter().map(|(s, e, o)| (s.clone(), (e.clone(), *o))).collect();
        SseEncoder { keys, ticket, retry_ms, cursors, recent: VecDeque::new(), recent_set: HashSet::new() }
    }

    /// The resume token for where the response is now.
    pub(crate) fn token(&self) -> String {
        let positions = self.cursors.iter().map(|(s, (e, o))| (s.clone(), e.clone(), *o)).collect();
        ResumeToken { ticket: self.ticket.clone(), positions }.seal(&self.keys)
    }

    fn event(&self, out: &mut String, name: Option<&str>, id: bool, data: &str) {
        if let Some(name) = name {
            out.push_str("event: ");
            out.push_str(name);
            out.push('\n');
        }
        if id {
            out.push_str("id: ");
            out.push_str(&self.token());
            out.push('\n');
        }
        // Frames are single-line JSON (newlines inside strings are escaped).
        out.push_str("data: ");
        out.push_str(data);
        out.push_str("\n\n");
    }

    /// Whether `id` was sent on this response already; remembers it.
    fn already_sent(&mut self, id: &str) -> bool {
        if self.recent_set.contains(id) {
            return true;
        }
        self.recent_set.insert(id.to_owned());
        self.recent.push_back(id.to_owned());
        if self.recent.len() > RECENT_IDS
            && let Some(old) = self.recent.pop_front()
        {
            self.recent_set.remove(&old);
        }
        false
    }

    /// Appends the event(s) of one server frame to `out`.
    pub(crate) fn encode(&mut self, frame: &str, out: &mut String) {
        if let Some((id, stream, epoch, offset)) = notification_position(frame) {
            if let Some(offset) = offset {
                self.cursors.insert(stream.into_owned(), (epoch.into_owned(), offset));
            }
            if self.already_sent(&id) {
                // Only the position moves: an event with an id and no data updates `lastEventId` silently.
                out.push_str("id: ");
                out.push_str(&self.token());
                out.push_str("\n\n");
                return;
            }
            return self.event(out, None, offset.is_some(), frame);
        }
        let op = raw_member(frame, "op").map(|op| op.trim_matches('"')).unwrap_or("");
        match op {
            "heartbeat" => out.push_str(": heartbeat\n\n"),
            "welcome" => {
                out.push_str(&format!("retry: {}\n", self.retry_ms));
                self.event(out, Some("welcome"), true, frame);
            }
            "subscribed" => {
                if let Ok(ServerFrame::Subscribed { stream, epoch, offset, continuity, .. }) =
                    decode_server_frame(frame)
                {
                    // The cursor before the replay that follows (protocol §2.4); the replay moves it to `offset`.
                    let replayed = match continuity {
                        WireContinuity::Resumed { replayed } | WireContinuity::Gap { replayed, .. } => replayed,
                        WireContinuity::Fresh => 0,
                    };
                    self.cursors.insert(stream, (epoch, offset.saturating_sub(replayed)));
                }
                self.event(out, Some("continuity"), true, frame);
            }
            "" => self.event(out, Some("message"), false, frame),
            other => {
                let name = other.to_owned();
                self.event(out, Some(&name), false, frame);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Arc<SseKeys> {
        Arc::new(SseKeys::new("secret"))
    }

    fn notification(id: &str, stream: &str, offset: u64) -> String {
        format!(
            r#"{{"op":"notification","id":"{id}","stream":"{stream}","offset":{offset},"epoch":"e1","type":"t","priority":"important","persistence":"bufferable","created_at":1}}"#
        )
    }

    /// The events of `text`: `(event, id, data)` per event, comments as `(":", …)`.
    fn events(text: &str) -> Vec<(String, Option<String>, String)> {
        text.split("\n\n")
            .filter(|e| !e.is_empty())
            .map(|e| {
                let (mut name, mut id, mut data) = ("message".to_owned(), None, String::new());
                for line in e.lines() {
                    if let Some(c) = line.strip_prefix(':') {
                        return (":".to_owned(), None, c.trim().to_owned());
                    }
                    let (field, value) = line.split_once(": ").unwrap_or((line, ""));
                    match field {
                        "event" => name = value.to_owned(),
                        "id" => id = Some(value.to_owned()),
                        "data" => data = value.to_owned(),
                        _ => {}
                    }
                }
                (name, id, data)
            })
            .collect()
    }

    #[test]
    fn tokens_and_tickets_are_sealed_and_refused_when_altered() {
        let keys = keys();
        let token = ResumeToken { ticket: Some("t1".into()), positions: vec![("user:a".into(), "e".into(), 4)] };
        let sealed = token.seal(&keys);
        assert_eq!(ResumeToken::open(&keys, &sealed), Some(token.clone()));
        let (payload, tag) = sealed.split_once('.').unwrap();
        let forged = ResumeToken { ticket: Some("t2".into()), ..token };
        let forged_payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).unwrap());
        assert_eq!(ResumeToken::open(&keys, &format!("{forged_payload}.{tag}")), None, "another ticket, same MAC");
        assert_eq!(ResumeToken::open(&keys, payload), None);
        assert_eq!(ResumeToken::open(&SseKeys::new("other"), &sealed), None, "another server secret");
        assert_eq!(ResumeToken::open(&keys, "garbage"), None);

        let verified = VerifiedToken {
            user: "alice".into(),
            expires_in_ms: Some(10_000),
            topics: TopicPatterns::new(vec!["news".into()]),
        };
        let ticket = Ticket::issue(&verified, 1_000, 60_000);
        assert_eq!((ticket.expires_at, ticket.open_until), (Some(11_000), 11_000), "never beyond the token");
        let opened = Ticket::open(&keys, &ticket.seal(&keys)).unwrap();
        assert_eq!(opened, ticket);
        let at = opened.verified(5_000).unwrap();
        assert_eq!((at.user.as_str(), at.expires_in_ms), ("alice", Some(6_000)));
        assert!(at.topics.allows("news"));
        assert!(matches!(opened.verified(11_000), Err(TokenError::Expired(_))));
    }

    #[test]
    fn every_event_carries_the_cursor_of_every_stream() {
        let keys = keys();
        let mut enc = SseEncoder::new(keys.clone(), Some("t1".into()), 2000, &ResumeToken::default());
        let mut out = String::new();
        enc.encode(
            r#"{"op":"welcome","session":"s","user":"a","device":"d","heartbeat_ms":15000,"max_frame_bytes":65536}"#,
            &mut out,
        );
        enc.encode(
            r#"{"op":"subscribed","ref":1,"stream":"user:a","epoch":"e1","offset":5,"continuity":"resumed","replayed":2}"#,
            &mut out,
        );
        enc.encode(&notification("n4", "user:a", 4), &mut out);
        enc.encode(
            r#"{"op":"subscribed","ref":1,"stream":"topic:x","epoch":"e1","offset":9,"continuity":"fresh"}"#,
            &mut out,
        );
        enc.encode(&notification("n5", "user:a", 5), &mut out);
        enc.encode(r#"{"op":"heartbeat"}"#, &mut out);
        enc.encode(r#"{"op":"inbox","counts":{"unseen":1,"unread":1,"total":1,"version":3,"head":1}}"#, &mut out);
        assert!(out.starts_with("retry: 2000\n"), "{out}");
        let ev = events(&out);
        let names: Vec<&str> = ev.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(names, ["welcome", "continuity", "message", "continuity", "message", ":", "inbox"]);
        let position = |i: usize| {
            let token = ResumeToken::open(&keys, ev[i].1.as_deref().unwrap()).unwrap();
            assert_eq!(token.ticket.as_deref(), Some("t1"));
            token.positions
        };
        assert_eq!(position(0), []);
        assert_eq!(position(1), [("user:a".into(), "e1".into(), 3)], "before the replay of 2");
        assert_eq!(position(2), [("user:a".into(), "e1".into(), 4)]);
        assert_eq!(position(4), [("topic:x".into(), "e1".into(), 9), ("user:a".into(), "e1".into(), 5)]);
        assert_eq!(ev[2].2, notification("n4", "user:a", 4), "the frame itself is the data");
        assert!(ev[6].1.is_none(), "inbox events do not move cursors");
    }

    #[test]
    fn a_notification_sent_on_another_stream_moves_only_the_position() {
        let keys = keys();
        let mut enc = SseEncoder::new(keys.clone(), None, 2000, &ResumeToken::default());
        let mut out = String::new();
        enc.encode(&notification("same", "user:a", 7), &mut out);
        enc.encode(&notification("same", "topic:x", 3), &mut out);
        let parts: Vec<&str> = out.split("\n\n").filter(|p| !p.is_empty()).collect();
        assert_eq!(parts.len(), 2);
        assert!(parts[1].starts_with("id: ") && !parts[1].contains("data:"), "{}", parts[1]);
        let token = ResumeToken::open(&keys, parts[1].strip_prefix("id: ").unwrap()).unwrap();
        assert_eq!(token.position("topic:x"), Some(("e1".into(), 3)));
        // A gap: the cursor is the head less what is replayed.
        let mut out = String::new();
        enc.encode(
            r#"{"op":"subscribed","ref":1,"stream":"user:b","epoch":"e2","offset":10,"continuity":"gap","reason":"epoch_changed","replayed":4}"#,
            &mut out,
        );
        let token = ResumeToken::open(&keys, events(&out)[0].1.as_deref().unwrap()).unwrap();
        assert_eq!(token.position("user:b"), Some(("e2".into(), 6)));
    }
}
