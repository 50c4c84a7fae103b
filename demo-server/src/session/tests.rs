//! The session in simulated time: no socket, no clock, no store.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tidings_core::protocol::{ErrorCode, PushPlatform};
use tokio::time::Instant;

use super::*;
use crate::auth::issue_token;
use crate::model::{EncodedFrame, HistoryEntry, StreamState};

const SECRET: &str = "session-test-secret";
const WALL: u64 = 1_800_000_000_000;

fn params() -> Arc<SessionParams> {
    Arc::new(SessionParams {
        config: SessionConfig {
            heartbeat_interval: Duration::from_secs(25),
            auth_timeout: Duration::from_secs(10),
            rate_limit_frames_per_sec: 100,
            rate_limit_seconds: 5,
            client_heartbeats: true,
        },
        sse: SessionConfig {
            heartbeat_interval: Duration::from_secs(15),
            auth_timeout: Duration::from_secs(10),
            rate_limit_frames_per_sec: 100,
            rate_limit_seconds: 5,
            client_heartbeats: false,
        },
        verifier: TokenVerifier::new(SECRET, Duration::from_secs(5)),
    })
}

/// A session and the simulated time it lives in.
struct Sim {
    session: Session,
    t0: Instant,
    now: Instant,
}

impl Sim {
    fn new() -> Self {
        let t0 = Instant::now();
        Sim { session: Session::new(t0, WALL, params()), t0, now: t0 }
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
    }

    fn send(&mut self, frame: Value) {
        self.session.handle_text(self.now, &frame.to_string());
    }

    /// Everything the session output so far.
    fn drain(&mut self) -> Vec<Output> {
        std::iter::from_fn(|| self.session.poll_output()).collect()
    }

    /// The frames output so far, as JSON; panics on other outputs.
    fn frames(&mut self) -> Vec<Value> {
        self.drain()
            .into_iter()
            .map(|o| match o {
                Output::Frame(f) => serde_json::from_str(f.as_str()).unwrap(),
                other => panic!("expected a frame, got {other:?}"),
            })
            .collect()
    }

    /// Runs the timer: handles every deadline up to now.
    fn tick(&mut self) {
        while let Some(at) = self.session.poll_timeout() {
            if at > self.now {
                break;
            }
            self.session.handle_timeout(at.max(self.t0));
            if self.session.poll_timeout() == Some(at) {
                break;
            }
        }
    }

    fn login(&mut self, topics: &[&str], ttl: Option<Duration>) {
        let token = issue_token_at(topics, ttl);
        self.send(json!({"op":"auth","token":token,"device":"d-1"}));
        let out = self.drain();
        assert!(
            matches!(&out[0], Output::Authenticated { user, device, .. } if &**user == "alice" && &**device == "d-1")
        );
        assert!(matches!(&out[1], Output::Frame(f) if f.as_str().starts_with(r#"{"op":"welcome""#)));
    }
}

/// A token for `alice` issued now (the real clock: the session's wall clock starts at `WALL`, so tokens carry
/// explicit times instead).
fn issue_token_at(topics: &[&str], ttl: Option<Duration>) -> String {
    let claims = crate::TokenClaims {
        sub: "alice".into(),
        exp: ttl.map(|t| WALL / 1000 + t.as_secs()),
        nbf: None,
        iat: Some(WALL / 1000),
        topics: Some(topics.iter().map(|t| (*t).to_owned()).collect()),
    };
    crate::sign_claims(SECRET, &claims)
}

fn close_code(output: &Output) -> Option<ErrorCode> {
    match output {
        Output::Close(Exit::Error { code, .. }) => Some(*code),
        _ => None,
    }
}

fn read(head: u64, offsets: &[u64]) -> HistoryRead {
    HistoryRead {
        state: StreamState { epoch: Arc::from("e1"), head, oldest: offsets.first().copied().unwrap_or(head + 1) },
        entries: offsets
            .iter()
            .map(|&o| HistoryEntry { offset: o, frame: EncodedFrame::new(format!("n{o}")) })
            .collect(),
    }
}

#[test]
fn no_auth_within_the_timeout_closes_with_auth_timeout() {
    let mut sim = Sim::new();
    assert_eq!(sim.session.poll_timeout(), Some(sim.t0 + Duration::from_secs(10)));
    sim.advance(Duration::from_millis(9_999));
    sim.tick();
    assert!(sim.drain().is_empty());
    sim.advance(Duration::from_millis(1));
    sim.tick();
    let out = sim.drain();
    assert_eq!(close_code(&out[0]), Some(ErrorCode::AuthTimeout));
    assert_eq!(sim.session.poll_timeout(), None, "a closed session has no deadline");
}

#[test]
fn the_first_frame_must_be_auth_and_bad_json_is_a_protocol_error() {
    let mut sim = Sim::new();
    sim.send(json!({"op":"heartbeat"}));
    assert_eq!(close_code(&sim.drain()[0]), Some(ErrorCode::ProtocolError));
    let mut sim = Sim::new();
    sim.session.handle_text(sim.now, "{not json");
    assert_eq!(close_code(&sim.drain()[0]), Some(ErrorCode::ProtocolError));
    let mut sim = Sim::new();
    sim.session.handle_binary(sim.now);
    assert_eq!(close_code(&sim.drain()[0]), Some(ErrorCode::ProtocolError));
}

#[test]
fn a_bad_token_is_refused_and_counted() {
    let mut sim = Sim::new();
    sim.send(json!({"op":"auth","token":"not-a-jwt","device":"d-1"}));
    let out = sim.drain();
    assert!(matches!(out[0], Output::AuthFailed { expired: false }));
    assert_eq!(close_code(&out[1]), Some(ErrorCode::Unauthorized));
    let mut sim = Sim::new();
    let expired = crate::sign_claims(
        SECRET,
        &crate::TokenClaims { sub: "alice".into(), exp: Some(WALL / 1000 - 1), nbf: None, iat: None, topics: None },
    );
    sim.send(json!({"op":"auth","token":expired,"device":"d-1"}));
    let out = sim.drain();
    assert!(matches!(out[0], Output::AuthFailed { expired: true }));
    assert_eq!(close_code(&out[1]), Some(ErrorCode::TokenExpired), "judged by the session's wall clock");
}

#[test]
fn the_token_expires_at_its_deadline_unless_refreshed() {
    let mut sim = Sim::new();
    sim.login(&[], Some(Duration::from_secs(60)));
    assert_eq!(sim.session.poll_timeout(), Some(sim.t0 + Duration::from_secs(25)), "first the heartbeat");
    sim.advance(Duration::from_secs(50));
    sim.send(json!({"op":"heartbeat"}));
    sim.session.handle_sent(sim.now);
    sim.tick();
    let token = issue_token_at(&[], Some(Duration::from_secs(120)));
    sim.send(json!({"op":"auth","token":token,"device":"ignored"}));
    let frames: Vec<Value> = sim.frames().into_iter().filter(|f| f["op"] != "heartbeat").collect();
    assert_eq!(frames, [json!({"op":"token_refreshed","token_expires_in_ms":70_000})]);
    sim.advance(Duration::from_secs(50));
    sim.send(json!({"op":"heartbeat"}));
    sim.session.handle_sent(sim.now);
    sim.tick();
    assert!(sim.drain().is_empty(), "the first token's deadline (60 s) passed without a close");
    sim.advance(Duration::from_secs(20));
    sim.tick();
    let out = sim.drain();
    assert_eq!(out.iter().filter_map(close_code).collect::<Vec<_>>(), [ErrorCode::TokenExpired], "at 120 s");
}

#[test]
fn a_refresh_for_another_user_is_a_protocol_error() {
    let mut sim = Sim::new();
    sim.login(&[], None);
    let bob = crate::sign_claims(
        SECRET,
        &crate::TokenClaims { sub: "bob".into(), exp: None, nbf: None, iat: None, topics: None },
    );
    sim.send(json!({"op":"auth","token":bob,"device":"d-1"}));
    assert_eq!(close_code(&sim.drain()[0]), Some(ErrorCode::ProtocolError));
}

#[test]
fn heartbeats_go_out_when_idle_and_silence_closes_the_session() {
    let mut sim = Sim::new();
    sim.login(&[], None);
    sim.session.handle_sent(sim.now);
    sim.advance(Duration::from_secs(25));
    sim.tick();
    assert_eq!(sim.frames(), [json!({"op":"heartbeat"})]);
    sim.advance(Duration::from_secs(20));
    sim.session.handle_traffic(sim.now); // a pong keeps it alive
    sim.advance(Duration::from_secs(25));
    sim.tick();
    assert_eq!(sim.frames(), [json!({"op":"heartbeat"})]);
    sim.advance(Duration::from_secs(25));
    sim.tick();
    let out = sim.drain();
    assert_eq!(
        out.iter().filter_map(close_code).collect::<Vec<_>>(),
        [ErrorCode::HeartbeatTimeout],
        "50 s after the pong"
    );
}

#[test]
fn an_echo_heartbeat_is_answered_at_once() {
    let mut sim = Sim::new();
    sim.login(&[], None);
    sim.send(json!({"op":"heartbeat","echo":true}));
    sim.send(json!({"op":"heartbeat"}));
    assert_eq!(sim.frames(), [json!({"op":"heartbeat"})]);
}

#[test]
fn subscribe_entries_are_answered_in_order_waiting_for_each_read() {
    let mut sim = Sim::new();
    sim.login(&["news"], None);
    sim.send(json!({"op":"subscribe","ref":1,"streams":[
        {"stream":"user:alice","epoch":"e1","offset":2},
        {"stream":"user:bob"},
        {"stream":"topic:news"}
    ]}));
    sim.send(json!({"op":"heartbeat","echo":true}));
    let out = sim.drain();
    assert_eq!(out.len(), 1, "{out:?}");
    match &out[0] {
        Output::Subscribe { stream, position } => {
            assert_eq!((&**stream, position.clone()), ("user:alice", Some(("e1".to_string(), 2))));
        }
        other => panic!("{other:?}"),
    }
    sim.session.handle_history(sim.now, "user:alice", Ok(read(4, &[3, 4])));
    let out = sim.drain();
    match &out[0] {
        Output::Subscribed { stream, frames, filter, replayed, .. } => {
            assert_eq!(&**stream, "user:alice");
            let texts: Vec<&str> = frames.iter().map(|f| f.as_str()).collect();
            assert_eq!(texts[1..], ["n3", "n4"]);
            assert!(texts[0].contains(r#""continuity":"resumed","replayed":2"#), "{}", texts[0]);
            assert_eq!((*replayed, filter.after), (2, 4));
        }
        other => panic!("{other:?}"),
    }
    match &out[1] {
        Output::Frame(f) => {
            let error: Value = serde_json::from_str(f.as_str()).unwrap();
            assert_eq!((error["code"].as_str(), error["stream"].as_str()), (Some("forbidden"), Some("user:bob")));
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(&out[2], Output::Subscribe { stream, position: None } if &**stream == "topic:news"));
    assert_eq!(out.len(), 3, "the echo waits behind the pending subscribe: {out:?}");
    sim.session.handle_history(sim.now, "topic:news", Ok(read(0, &[])));
    let out = sim.drain();
    assert!(matches!(&out[0], Output::Subscribed { replayed: 0, .. }));
    assert!(matches!(&out[1], Output::Frame(f) if f.as_str() == HEARTBEAT), "then the echo, in order");
    assert_eq!(sim.session.streams().iter().map(|s| &**s).collect::<Vec<_>>(), ["user:alice", "topic:news"]);
}

#[test]
fn an_idle_session_keeps_no_room_for_outputs_entries_or_deferred_frames() {
    // Server memory per idle connection (bench S1): what a burst of requests used is released once answered.
    let mut sim = Sim::new();
    sim.login(&["news"], None);
    sim.send(json!({"op":"subscribe","ref":1,"streams":[{"stream":"user:alice"},{"stream":"topic:news"}]}));
    sim.send(json!({"op":"heartbeat","echo":true}));
    assert_eq!(sim.drain().len(), 1, "the first read");
    assert!(sim.session.entries.capacity() > 0 && sim.session.deferred.capacity() > 0, "both in use meanwhile");
    sim.session.handle_history(sim.now, "user:alice", Ok(read(0, &[])));
    sim.session.handle_history(sim.now, "topic:news", Ok(read(0, &[])));
    assert_eq!(sim.drain().len(), 4, "subscribed, the second read, subscribed, the echo");
    let s = &sim.session;
    assert_eq!((s.output.capacity(), s.entries.capacity(), s.deferred.capacity()), (0, 0, 0));
    assert_eq!(s.streams().len(), 2);
}

#[test]
fn a_failed_read_closes_the_session_for_a_retry() {
    let mut sim = Sim::new();
    sim.login(&[], None);
    sim.send(json!({"op":"subscribe","ref":1,"streams":[{"stream":"user:alice"}]}));
    sim.drain();
    sim.session.handle_history(sim.now, "user:other", Ok(read(0, &[])));
    assert!(sim.drain().is_empty(), "a result for another stream is ignored");
    sim.session.handle_history(sim.now, "user:alice", Err(StoreError::unavailable("disk on fire")));
    let out = sim.drain();
    match &out[0] {
        Output::Close(Exit::Error { code, retry_after_ms, .. }) => {
            assert_eq!((*code, *retry_after_ms), (ErrorCode::TryAgainLater, Some(RETRY_AFTER_MS)));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(sim.session.streams().len(), 1, "the driver still leaves the stream it was joining");
}

#[test]
fn unsubscribe_leaves_the_stream_then_answers() {
    let mut sim = Sim::new();
    sim.login(&[], None);
    sim.send(json!({"op":"subscribe","ref":1,"streams":[{"stream":"user:alice"}]}));
    sim.drain();
    sim.session.handle_history(sim.now, "user:alice", Ok(read(0, &[])));
    sim.drain();
    sim.send(json!({"op":"unsubscribe","ref":2,"streams":["user:alice","topic:never","bad"]}));
    let out = sim.drain();
    assert!(matches!(&out[0], Output::Unsubscribe { stream } if &**stream == "user:alice"));
    let frames: Vec<Value> = out[1..]
        .iter()
        .map(|o| match o {
            Output::Frame(f) => serde_json::from_str(f.as_str()).unwrap(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(frames[0], json!({"op":"unsubscribed","ref":2,"stream":"user:alice"}));
    assert_eq!(frames[1], json!({"op":"unsubscribed","ref":2,"stream":"topic:never"}));
    assert_eq!((frames[2]["code"].as_str(), frames[2]["stream"].as_str()), (Some("bad_request"), Some("bad")));
    assert!(sim.session.streams().is_empty());
}

#[test]
fn an_operator_unsubscribe_drops_a_subscribed_stream_and_tells_the_client() {
    let mut sim = Sim::new();
    sim.login(&["news"], None);
    sim.send(json!({"op":"subscribe","ref":1,"streams":[{"stream":"user:alice"},{"stream":"topic:news"}]}));
    sim.drain();
    sim.session.handle_history(sim.now, "user:alice", Ok(read(0, &[])));
    // topic:news is still reading its history: the unsubscribe leaves it alone (a later subscribe wins).
    sim.session.handle_revoke("topic:news", REVOKED);
    let out = sim.drain();
    assert!(out.iter().all(|o| !matches!(o, Output::Unsubscribe { .. })), "{out:?}");
    sim.session.handle_history(sim.now, "topic:news", Ok(read(0, &[])));
    sim.drain();
    sim.session.handle_revoke("topic:never", REVOKED);
    assert!(sim.drain().is_empty(), "a stream the connection does not have is ignored");
    sim.session.handle_revoke("topic:news", REVOKED);
    let out = sim.drain();
    assert!(matches!(&out[0], Output::Unsubscribe { stream } if &**stream == "topic:news"), "{out:?}");
    let Output::Frame(f) = &out[1] else { panic!("{out:?}") };
    let error: Value = serde_json::from_str(f.as_str()).unwrap();
    assert_eq!(error, json!({"op":"error","code":"forbidden","stream":"topic:news","message":REVOKED}));
    assert_eq!(out.len(), 2);
    assert_eq!(sim.session.streams().iter().map(|s| &**s).collect::<Vec<_>>(), ["user:alice"]);
}

#[test]
fn at_most_256_streams_per_connection() {
    let mut sim = Sim::new();
    sim.login(&["*"], None);
    for i in 0..=256 {
        sim.send(json!({"op":"subscribe","ref":i,"streams":[{"stream":format!("topic:t{i}")}]}));
        if i < 256 {
            assert!(matches!(sim.drain()[0], Output::Subscribe { .. }));
            sim.session.handle_history(sim.now, &format!("topic:t{i}"), Ok(read(0, &[])));
            sim.drain();
        }
    }
    let frames = sim.frames();
    assert_eq!((frames[0]["code"].as_str(), frames[0]["ref"].as_u64()), (Some("bad_request"), Some(256)));
}

#[test]
fn acks_are_checked_and_passed_on() {
    let mut sim = Sim::new();
    sim.login(&[], None);
    sim.send(json!({"op":"ack","ids":["n1","bad id","n2"]}));
    let out = sim.drain();
    assert!(matches!(&out[0], Output::Frame(f) if f.as_str().contains(r#""code":"bad_request""#)));
    assert!(matches!(&out[1], Output::Acks { ids } if ids == &["n1", "n2"]));
    let too_many: Vec<String> = (0..257).map(|i| format!("n{i}")).collect();
    sim.send(json!({"op":"ack","ids":too_many}));
    let out = sim.drain();
    assert_eq!(out.len(), 1);
    assert!(matches!(&out[0], Output::Frame(f) if f.as_str().contains("at most 256 ids")));
}

#[test]
fn register_push_waits_for_the_store_and_answers() {
    let mut sim = Sim::new();
    sim.login(&[], None);
    sim.send(json!({"op":"register_push","ref":7,"platform":"fcm","token":"tok"}));
    assert!(matches!(&sim.drain()[0], Output::RegisterPush { platform: PushPlatform::Fcm, token } if token == "tok"));
    sim.session.handle_push_registered(sim.now, Ok(()));
    assert_eq!(sim.frames(), [json!({"op":"push_registered","ref":7,"platform":"fcm"})]);
    sim.send(json!({"op":"register_push","ref":8,"platform":"apns","token":"tok"}));
    sim.drain();
    sim.session.handle_push_registered(sim.now, Err(StoreError::full("disk full")));
    let frames = sim.frames();
    assert_eq!((frames[0]["code"].as_str(), frames[0]["ref"].as_u64()), (Some("try_again_later"), Some(8)));
    sim.send(json!({"op":"register_push","ref":9,"platform":"web_push","token":"{}"}));
    let frames = sim.frames();
    assert_eq!((frames[0]["code"].as_str(), frames[0]["ref"].as_u64()), (Some("bad_request"), Some(9)));
}

#[test]
fn the_rate_limit_needs_consecutive_seconds_over_the_limit() {
    let start = Instant::now();
    let mut rate = RateWindow { started: start, count: 0, strikes: 0 };
    let second = |n: u64| start + Duration::from_millis(1000 * n + 10);
    // Seconds 0 and 1 over the limit of 3, 2 s required: exceeded on the 4th frame of second 1.
    for _ in 0..4 {
        assert!(!rate.exceeded(start, 3, 2));
    }
    for i in 0..4 {
        assert_eq!(rate.exceeded(second(1), 3, 2), i == 3);
    }
    // A quiet gap resets the strikes.
    let mut rate = RateWindow { started: start, count: 0, strikes: 0 };
    for _ in 0..4 {
        rate.exceeded(start, 3, 2);
    }
    for _ in 0..4 {
        assert!(!rate.exceeded(second(3), 3, 2));
    }
    assert!(!RateWindow { started: start, count: 0, strikes: 0 }.exceeded(start, 0, 1), "0 disables");
}

#[test]
fn a_flood_of_frames_closes_with_rate_limited() {
    let mut sim = Sim::new();
    sim.login(&[], None);
    let mut closed = None;
    for ms in 0..6_000u64 {
        sim.now = sim.t0 + Duration::from_millis(ms);
        sim.send(json!({"op":"heartbeat"}));
        if let Some(code) = sim.drain().iter().find_map(close_code) {
            closed = Some((code, ms));
            break;
        }
    }
    let (code, at) = closed.expect("the limit is reached");
    assert_eq!(code, ErrorCode::RateLimited);
    assert!((4_000..5_000).contains(&at), "over 100 frames/s for 5 s in a row: closed at {at} ms");
}

#[test]
fn a_close_request_ends_the_session_once() {
    let mut sim = Sim::new();
    sim.login(&[], None);
    sim.session.handle_close_request(ErrorCode::Dropped, "dropped by an operator".into());
    sim.session.handle_close_request(ErrorCode::ServerShutdown, "later".into());
    sim.send(json!({"op":"heartbeat","echo":true}));
    let out = sim.drain();
    assert_eq!(out.iter().filter_map(close_code).collect::<Vec<_>>(), [ErrorCode::Dropped]);
    assert_eq!(out.len(), 1, "nothing after the close");
}

#[test]
fn the_cached_heartbeat_is_the_encoded_frame() {
    assert_eq!(encode_server_frame(&ServerFrame::Heartbeat), HEARTBEAT);
}

#[test]
fn a_token_issued_by_issue_token_is_accepted() {
    // issue_token reads the real clock; a session whose wall clock is now accepts it.
    let mut session = Session::new(Instant::now(), crate::util::now_ms(), params());
    let token = issue_token(SECRET, "alice", &[], Some(Duration::from_secs(60)));
    session.handle_text(Instant::now(), &json!({"op":"auth","token":token,"device":"d"}).to_string());
    assert!(matches!(session.poll_output(), Some(Output::Authenticated { .. })));
}

// ---- inbox and history requests (protocol §13, §14) ----

fn request_of(output: &Output) -> Option<&Request> {
    match output {
        Output::Request(r) => Some(r),
        _ => None,
    }
}

#[test]
fn inbox_requests_wait_for_the_store_and_are_answered_in_order_with_their_ref() {
    let mut sim = Sim::new();
    sim.login(&["news"], None);
    sim.send(json!({"op":"inbox_watch","ref":1}));
    sim.send(json!({"op":"inbox_mark","ref":2,"op_id":"o-1","action":"read","ids":["a","b"]}));
    let out = sim.drain();
    assert_eq!(out.len(), 1, "the mark waits behind the watch: {out:?}");
    assert_eq!(request_of(&out[0]), Some(&Request::InboxWatch));
    assert!(sim.session.watching_inbox());
    let counts = tidings_core::protocol::InboxCounts { unseen: 2, unread: 2, total: 2, version: 4, head: 2 };
    sim.session
        .handle_reply(sim.now, Ok(Reply::Inbox(tidings_core::protocol::InboxUpdate { counts, ..Default::default() })));
    let out = sim.drain();
    let Output::Frame(f) = &out[0] else { panic!("{out:?}") };
    assert_eq!(
        serde_json::from_str::<Value>(f.as_str()).unwrap(),
        json!({"op":"inbox","ref":1,"counts":{"unseen":2,"unread":2,"total":2,"version":4,"head":2}})
    );
    let Some(Request::InboxChange(change)) = request_of(&out[1]) else { panic!("{out:?}") };
    assert_eq!(change.op_id.as_deref(), Some("o-1"));
    assert_eq!(change.at, WALL, "the change is stamped with the session's wall clock");
    assert_eq!(
        change.kind,
        crate::store::ChangeKind::Mark {
            action: tidings_core::protocol::InboxAction::Read,
            ids: vec!["a".into(), "b".into()]
        }
    );
    // A store failure is a request-scoped error; the connection stays.
    sim.session.handle_reply(sim.now, Err(StoreError::full("disk full")));
    let frames = sim.frames();
    assert_eq!((frames[0]["op"].as_str(), frames[0]["ref"].as_u64()), (Some("error"), Some(2)));
    assert_eq!(frames[0]["code"], "try_again_later");
    assert_eq!(frames[0]["retry_after_ms"], 30_000);
    sim.send(json!({"op":"inbox_mark_all","ref":3,"action":"seen","up_to":9}));
    let out = sim.drain();
    let Some(Request::InboxChange(change)) = request_of(&out[0]) else { panic!("{out:?}") };
    assert_eq!(change.op_id, None, "no op id");
    assert_eq!(
        change.kind,
        crate::store::ChangeKind::MarkAll { action: tidings_core::protocol::MarkAllAction::Seen, up_to: Some(9) }
    );
}

#[test]
fn history_requests_are_authorized_like_subscribes() {
    let mut sim = Sim::new();
    sim.login(&["news"], None);
    sim.send(json!({"op":"history","ref":1,"stream":"topic:sports"}));
    sim.send(json!({"op":"history","ref":2,"stream":"user:bob"}));
    sim.send(json!({"op":"history","ref":3,"stream":"topic:news","limit":0}));
    sim.send(json!({"op":"history","ref":5,"stream":"topic:news","epoch":"","after":7}));
    sim.send(json!({"op":"history","ref":6,"stream":"topic:news","epoch":"a b","after":7}));
    let frames = sim.frames();
    let codes: Vec<(u64, String)> =
        frames.iter().map(|f| (f["ref"].as_u64().unwrap(), f["code"].as_str().unwrap().to_owned())).collect();
    let bad = |r: u64| (r, "bad_request".to_owned());
    assert_eq!(codes, [(1, "forbidden".into()), (2, "forbidden".into()), bad(3), bad(5), bad(6)]);
    assert_eq!(frames[3]["message"], "history: epoch must not be empty");
    assert_eq!(frames[4]["message"], r#"history: epoch contains the character " ""#);
    sim.send(json!({"op":"history","ref":4,"stream":"topic:news","epoch":"e","after":7}));
    let out = sim.drain();
    assert_eq!(
        request_of(&out[0]),
        Some(&Request::History { stream: "topic:news".into(), position: Some(("e".into(), 7)), limit: 100 })
    );
}

#[test]
fn an_sse_session_sends_heartbeats_and_never_expects_the_clients() {
    let t0 = Instant::now();
    let mut session = Session::new_sse(t0, WALL, params());
    let verified = crate::auth::TokenVerifier::new(SECRET, Duration::from_secs(5))
        .verify_at(&issue_token_at(&[], Some(Duration::from_secs(100))), WALL)
        .unwrap();
    session.handle_verified(t0, verified, "reader".into(), None);
    let out: Vec<Output> = std::iter::from_fn(|| session.poll_output()).collect();
    assert!(matches!(&out[0], Output::Authenticated { device, .. } if &**device == "reader"));
    let Output::Frame(welcome) = &out[1] else { panic!("{out:?}") };
    assert!(welcome.as_str().contains(r#""heartbeat_ms":15000"#), "{}", welcome.as_str());
    // A minute of client silence: heartbeats go out, nothing closes.
    let mut now = t0;
    for _ in 0..4 {
        now += Duration::from_secs(15);
        assert_eq!(session.poll_timeout(), Some(now));
        session.handle_timeout(now);
        let out: Vec<Output> = std::iter::from_fn(|| session.poll_output()).collect();
        assert!(matches!(&out[..], [Output::Frame(f)] if f.as_str() == HEARTBEAT), "{out:?}");
    }
    // The token's expiry still ends it.
    session.handle_timeout(t0 + Duration::from_secs(100));
    let out: Vec<Output> = std::iter::from_fn(|| session.poll_output()).collect();
    assert_eq!(out.iter().filter_map(close_code).collect::<Vec<_>>(), [ErrorCode::TokenExpired]);
}
