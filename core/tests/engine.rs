//! Engine behaviour on simulated time, against the model server in `sim/`.

mod sim;

use std::time::Duration;

use sim::{Harness, OpenPolicy, TokenPolicy};
use tidings_core::engine::{
    Action, BatchConfig, ConnectionState, Continuity, Event, FailureReason, Lifecycle, NetworkEvent, PushOutcome,
    SuspendReason, TokenError, TransportFailure,
};
use tidings_core::protocol::{self, ClientFrame, ErrorCode, ErrorFrame, GapReason, Priority, ServerFrame, close};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn connected(user: &str) -> Harness {
    let mut h = Harness::new(Harness::config(), user);
    h.connect();
    assert_eq!(h.engine.state(), &ConnectionState::Connected);
    h
}

#[test]
fn connect_fetches_a_token_opens_authenticates_and_subscribes_to_the_user_stream() {
    let mut h = Harness::new(Harness::config(), "alice");
    h.connect();
    assert_eq!(h.token_fetches, [false]);
    assert_eq!(h.opens, 1);
    let ClientFrame::Auth { token, device, client } = &h.server.received[0] else { panic!("{:?}", h.server.received) };
    assert_eq!(token, "token-1");
    assert!(device.starts_with("d-"), "{device}");
    assert!(client.as_deref().unwrap().starts_with("tidings-rust/"));
    let ClientFrame::Subscribe { streams, .. } = &h.server.received[1] else { panic!() };
    assert_eq!(streams.len(), 1);
    assert_eq!(streams[0].stream, "user:alice");
    assert_eq!(streams[0].epoch, None, "no cursor yet");
    assert_eq!(
        h.states(),
        [ConnectionState::Connecting { attempt: 1 }, ConnectionState::Connected],
        "observable state sequence"
    );
    assert!(h.events.contains(&Event::Continuity { stream: "user:alice".into(), continuity: Continuity::Fresh }));
}

#[test]
fn one_message_may_carry_several_frames_one_per_line() {
    let mut h = connected("alice");
    h.take_events();
    let f1 = h.server.publish("user:alice", "n1", Priority::Important, None).unwrap();
    let f2 = h.server.publish("user:alice", "n2", Priority::Important, None).unwrap();
    let heartbeat = protocol::encode_server_frame(&ServerFrame::Heartbeat);
    h.engine.handle_text(h.now, h.conn.unwrap(), &format!("{f1}\n\n{heartbeat}\n{f2}\n"));
    h.pump();
    assert_eq!(h.notification_ids(), ["n1", "n2"], "in order; empty lines skipped");
    assert_eq!(h.states(), [] as [ConnectionState; 0], "the link stayed up");
}

#[test]
fn an_undecodable_frame_inside_a_message_stops_it_there_and_replaces_the_link() {
    let mut h = connected("alice");
    h.take_events();
    let f1 = h.server.publish("user:alice", "n1", Priority::Important, None).unwrap();
    let f3 = h.server.publish("user:alice", "n3", Priority::Important, None).unwrap();
    h.engine.handle_text(h.now, h.conn.unwrap(), &format!("{f1}\n{{\"op\":\n{f3}"));
    h.pump();
    assert_eq!(h.notification_ids()[0], "n1", "frames before the bad one are handled");
    let reconnecting = h.states().into_iter().find_map(|s| match s {
        ConnectionState::Reconnecting { reason, .. } => Some(reason),
        _ => None,
    });
    assert!(reconnecting.is_some_and(|r| r.contains("undecodable")), "{:?}", h.states());
}

#[test]
fn live_notifications_are_delivered_in_order_and_acked_at_most_once_per_ack_delay() {
    let mut h = connected("alice");
    h.take_events();
    let f1 = h.server.publish("user:alice", "n1", Priority::Important, None);
    let f2 = h.server.publish("user:alice", "n2", Priority::Critical, None);
    h.engine.handle_text(h.now, h.conn.unwrap(), &f1.unwrap());
    h.engine.handle_text(h.now, h.conn.unwrap(), &f2.unwrap());
    h.pump();
    assert_eq!(h.notification_ids(), ["n1", "n2"]);
    let acks = |h: &Harness| -> Vec<ClientFrame> {
        h.server.received.iter().filter(|f| matches!(f, ClientFrame::Ack { .. })).cloned().collect()
    };
    let ack = |ids: &[&str]| ClientFrame::Ack { ids: ids.iter().map(|s| s.to_string()).collect() };
    // Leading edge: after a quiet ack delay, the acks of what one turn delivered go out in that turn, together.
    assert_eq!(acks(&h), [ack(&["n1", "n2"])], "prompt, in one frame");
    // Within the ack delay of that frame, acks wait for its end and share a frame.
    h.advance(ms(100));
    let f3 = h.server.publish("user:alice", "n3", Priority::Important, None);
    h.deliver(f3);
    h.advance(ms(50));
    let f4 = h.server.publish("user:alice", "n4", Priority::Important, None);
    h.deliver(f4);
    h.advance(ms(99));
    assert_eq!(acks(&h).len(), 1, "no second frame within 250 ms of the first");
    h.advance(ms(1));
    assert_eq!(acks(&h), [ack(&["n1", "n2"]), ack(&["n3", "n4"])]);
    // Quiet for longer than the ack delay: the next ack is prompt again.
    h.advance(ms(400));
    let f5 = h.server.publish("user:alice", "n5", Priority::Important, None);
    h.deliver(f5);
    assert_eq!(acks(&h).last(), Some(&ack(&["n5"])));
    // A full frame's worth goes out at once, even within the ack delay.
    for i in 0..protocol::MAX_IDS_PER_ACK {
        h.publish("user:alice", &format!("bulk{i}"), Priority::Important, None);
    }
    let sizes: Vec<usize> =
        acks(&h).iter().map(|f| if let ClientFrame::Ack { ids } = f { ids.len() } else { 0 }).collect();
    assert_eq!(sizes, [2, 2, 1, protocol::MAX_IDS_PER_ACK]);
    assert_eq!(h.engine.cursor("user:alice").unwrap().offset, 5 + protocol::MAX_IDS_PER_ACK as u64);
}

#[test]
fn backoff_is_full_jitter_and_grows_with_consecutive_failures() {
    let mut h = connected("alice");
    h.open_policy = OpenPolicy::Refuse(TransportFailure { message: "refused".into(), ..Default::default() });
    h.take_events();
    h.server_close(None);
    let mut ceilings = Vec::new();
    for attempt in 2..=6u32 {
        let Some(ConnectionState::Reconnecting { attempt: a, delay, .. }) = h.states().last().cloned() else {
            panic!("{:?}", h.events)
        };
        assert_eq!(a, attempt);
        let ceiling = h.engine.config().backoff.ceiling(attempt - 1);
        assert!(delay <= ceiling, "attempt {attempt}: {delay:?} > {ceiling:?}");
        ceilings.push(ceiling.as_millis());
        let opens = h.opens;
        if delay > ms(1) {
            h.advance(delay - ms(1));
            assert_eq!(h.opens, opens, "no attempt before the delay");
        }
        h.take_events();
        h.advance(ms(1));
        assert_eq!(h.opens, opens + 1, "attempt right at the delay");
    }
    assert_eq!(ceilings, [500, 1000, 2000, 4000, 8000]);
}

#[test]
fn failure_count_resets_only_after_the_link_stayed_up() {
    let mut h = connected("alice");
    // Flapping: connects, drops after 1 s, repeatedly. The attempt number keeps growing.
    for expected in 2..=4u32 {
        h.advance(Duration::from_secs(1));
        h.take_events();
        h.server_close(Some(1006));
        let Some(ConnectionState::Reconnecting { attempt, delay, .. }) = h.states().last().cloned() else {
            panic!("{:?}", h.events)
        };
        assert_eq!(attempt, expected);
        h.advance(delay);
        assert_eq!(h.engine.state(), &ConnectionState::Connected);
    }
    // Stays up past stable_after (10 s): the next drop starts over at attempt 1's delay range.
    h.advance(Duration::from_secs(11));
    h.take_events();
    h.server_close(Some(1006));
    let Some(ConnectionState::Reconnecting { attempt, delay, .. }) = h.states().last().cloned() else { panic!() };
    assert_eq!(attempt, 2, "first retry after a stable connection");
    assert!(delay <= ms(500));
}

#[test]
fn rejected_token_is_refreshed_once_then_the_client_fails_without_retrying() {
    let mut h = Harness::new(Harness::config(), "alice");
    h.server.accept_tokens = Some(Default::default()); // nothing is accepted
    h.connect();
    assert_eq!(h.token_fetches, [false, true], "second fetch bypasses caches");
    assert_eq!(h.opens, 2, "one attempt with the original token, one with the fresh token");
    let ConnectionState::Failed { reason, message } = h.engine.state().clone() else {
        panic!("{:?}", h.engine.state())
    };
    assert_eq!(reason, FailureReason::Unauthorized);
    assert!(message.contains("fresh token rejected"), "{message}");
    h.advance(Duration::from_secs(3600));
    assert_eq!(h.opens, 2, "no retry storm");
    assert_eq!(h.engine.poll_timeout(), None, "nothing scheduled");
}

#[test]
fn rejection_with_a_refreshed_token_that_works_recovers() {
    let mut h = Harness::new(Harness::config(), "alice");
    h.server.accept_tokens = Some(["token-2".to_string()].into());
    h.connect();
    assert_eq!(h.engine.state(), &ConnectionState::Connected);
    assert_eq!(h.opens, 2);
    // A later expiry during the session gets its own single refresh.
    h.server.accept_tokens = Some(["token-3".to_string()].into());
    h.server_close(Some(close::TOKEN_EXPIRED));
    assert_eq!(h.engine.state(), &ConnectionState::Connected);
    assert_eq!(h.token_fetches, [false, true, true]);
}

#[test]
fn http_401_at_the_handshake_counts_as_an_auth_rejection() {
    let mut h = Harness::new(Harness::config(), "alice");
    h.open_policy = OpenPolicy::Refuse(TransportFailure { http_status: Some(401), ..Default::default() });
    h.connect();
    assert_eq!(h.opens, 2);
    assert!(matches!(h.engine.state(), ConnectionState::Failed { reason: FailureReason::Unauthorized, .. }));
}

#[test]
fn permanent_http_refusal_stops_and_server_errors_retry() {
    let mut h = Harness::new(Harness::config(), "alice");
    h.open_policy = OpenPolicy::Refuse(TransportFailure { http_status: Some(404), ..Default::default() });
    h.connect();
    assert!(matches!(h.engine.state(), ConnectionState::Failed { reason: FailureReason::Rejected, .. }));
    let mut h = Harness::new(Harness::config(), "alice");
    h.open_policy = OpenPolicy::Refuse(TransportFailure { http_status: Some(502), ..Default::default() });
    h.connect();
    assert!(matches!(h.engine.state(), ConnectionState::Reconnecting { attempt: 2, .. }));
}

#[test]
fn token_provider_errors_fail_when_permanent_and_back_off_when_transient() {
    let mut h = Harness::new(Harness::config(), "alice");
    h.token_policy = TokenPolicy::Fail(TokenError { transient: false, message: "signed out".into() });
    h.connect();
    assert_eq!(
        h.engine.state(),
        &ConnectionState::Failed { reason: FailureReason::TokenProvider, message: "signed out".into() }
    );
    assert_eq!(h.opens, 0);

    let mut h = Harness::new(Harness::config(), "alice");
    h.token_policy = TokenPolicy::Fail(TokenError { transient: true, message: "offline".into() });
    h.connect();
    let ConnectionState::Reconnecting { reason, .. } = h.engine.state().clone() else { panic!() };
    assert!(reason.contains("offline"));
    h.token_policy = TokenPolicy::Counting;
    h.advance(Duration::from_secs(1));
    assert_eq!(h.engine.state(), &ConnectionState::Connected);
}

#[test]
fn concurrent_token_needs_share_one_request() {
    let mut h = Harness::new(Harness::config(), "alice");
    h.token_policy = TokenPolicy::Manual;
    h.connect();
    assert!(h.pending_token);
    // The app pokes the engine repeatedly while the provider is slow.
    h.engine.connect(h.now);
    h.engine.handle_network(h.now, NetworkEvent::Available);
    h.engine.handle_lifecycle(h.now, Lifecycle::Foreground);
    h.pump();
    assert_eq!(h.token_fetches.len(), 1);
    h.engine.handle_token(h.now, Ok("t".into()));
    h.pump();
    assert_eq!(h.engine.state(), &ConnectionState::Connected);
}

#[test]
fn server_retry_after_is_a_floor_for_the_next_attempt() {
    let mut h = connected("alice");
    let frame = protocol::encode_server_frame(&ServerFrame::Error(ErrorFrame {
        reference: None,
        stream: None,
        code: ErrorCode::TryAgainLater,
        message: "busy".into(),
        retry_after_ms: Some(5_000),
    }));
    h.deliver(Some(frame));
    let ConnectionState::Reconnecting { delay, reason, .. } = h.engine.state().clone() else { panic!() };
    assert!(delay >= Duration::from_secs(5), "{delay:?}");
    assert!(reason.contains("try_again_later"));
    let opens = h.opens;
    h.advance(Duration::from_millis(4_999));
    assert_eq!(h.opens, opens);
    h.advance(delay);
    assert_eq!(h.opens, opens + 1);
}

#[test]
fn network_back_retries_at_once_and_offline_does_not_retry() {
    let mut h = connected("alice");
    h.open_policy = OpenPolicy::Refuse(TransportFailure::default());
    h.server_close(None);
    for _ in 0..5 {
        h.advance(Duration::from_secs(30));
    }
    let ConnectionState::Reconnecting { delay, .. } = h.engine.state().clone() else { panic!() };
    let opens = h.opens;
    h.engine.handle_network(h.now, NetworkEvent::Unavailable);
    h.pump();
    assert_eq!(h.engine.state(), &ConnectionState::Suspended { reason: SuspendReason::Offline });
    h.advance(Duration::from_secs(600));
    assert_eq!(h.opens, opens, "no attempts while offline");
    h.open_policy = OpenPolicy::Accept;
    h.engine.handle_network(h.now, NetworkEvent::Available);
    h.pump();
    assert_eq!(h.opens, opens + 1, "retried at once, not after {delay:?}");
    assert_eq!(h.engine.state(), &ConnectionState::Connected);
}

#[test]
fn network_change_while_connected_probes_the_link_and_replaces_a_dead_one() {
    let mut h = connected("alice");
    h.engine.handle_network(h.now, NetworkEvent::Changed);
    h.pump();
    assert!(matches!(h.server.received.last(), Some(ClientFrame::Heartbeat { echo: true })));
    assert_eq!(h.engine.state(), &ConnectionState::Connected, "the echo came back");
    // Now the link silently died: the probe goes unanswered.
    let conn = h.conn.unwrap();
    h.conn = None; // frames vanish
    h.engine.handle_network(h.now, NetworkEvent::Changed);
    h.conn = Some(conn);
    h.server.authed = false;
    let opens = h.opens;
    // Drain the probe without answering.
    while h.engine.poll_transmit().is_some() {}
    h.advance(Duration::from_secs(6));
    assert!(h.actions.iter().any(|a| matches!(a, Action::Close { conn: c, .. } if *c == conn)));
    assert!(h.opens > opens, "replaced after probe timeout");
}

#[test]
fn heartbeats_are_sent_when_idle_and_a_silent_link_is_replaced() {
    let mut h = connected("alice");
    h.server.answer_heartbeats = false;
    h.server.answer_echoes = false;
    let hb = |h: &Harness| h.server.received.iter().filter(|f| matches!(f, ClientFrame::Heartbeat { .. })).count();
    h.advance(Duration::from_secs(24));
    assert_eq!(hb(&h), 0);
    h.advance(Duration::from_secs(2));
    assert_eq!(hb(&h), 1, "heartbeat after 25 s idle");
    // The server keeps talking (its heartbeats), so the link stays.
    for _ in 0..4 {
        h.deliver(Some(protocol::encode_server_frame(&ServerFrame::Heartbeat)));
        h.advance(Duration::from_secs(20));
    }
    assert_eq!(h.opens, 1);
    // Silence: dead after heartbeat (25 s) + grace (10 s) from the last frame received.
    h.deliver(Some(protocol::encode_server_frame(&ServerFrame::Heartbeat)));
    let conn = h.conn.unwrap();
    h.advance(Duration::from_secs(34));
    assert_eq!(h.opens, 1);
    h.advance(Duration::from_secs(2));
    assert!(h.actions.iter().any(|a| matches!(a, Action::Close { conn: c, .. } if *c == conn)));
    assert_eq!(h.opens, 2, "replaced");
}

#[test]
fn inputs_about_an_abandoned_socket_are_ignored() {
    let mut h = connected("alice");
    let old = h.conn.unwrap();
    h.server.authed = false;
    h.conn = None;
    h.advance(Duration::from_secs(36)); // heartbeat timeout abandons `old`, reconnects
    assert_eq!(h.engine.state(), &ConnectionState::Connected);
    let before = h.engine.stats().clone();
    h.take_events();
    h.engine.handle_transport_closed(h.now, old, Some(close::SESSION_REPLACED), "late");
    h.engine.handle_text(h.now, old, &protocol::encode_server_frame(&ServerFrame::Heartbeat));
    h.pump();
    assert_eq!(h.engine.state(), &ConnectionState::Connected);
    assert!(h.events.is_empty());
    assert_eq!(h.engine.stats(), &before);
}

#[test]
fn reconnect_resumes_every_stream_from_its_cursor_and_reports_the_replay_count() {
    let mut h = connected("alice");
    h.engine.subscribe(h.now, "topic:news").unwrap();
    h.pump();
    h.publish("user:alice", "a1", Priority::Important, None);
    h.publish("topic:news", "t1", Priority::Important, None);
    h.server_close(Some(close::DROPPED));
    // Published while disconnected.
    h.server.publish("user:alice", "a2", Priority::Important, None);
    h.server.publish("user:alice", "a3", Priority::Important, None);
    h.take_events();
    let received_before = h.server.received.len();
    h.advance(Duration::from_secs(1));
    assert_eq!(h.engine.state(), &ConnectionState::Connected);
    let resub = h.server.received[received_before..]
        .iter()
        .find_map(|f| match f {
            ClientFrame::Subscribe { streams, .. } => Some(streams.clone()),
            _ => None,
        })
        .unwrap();
    let positions: Vec<(String, Option<u64>)> = resub.iter().map(|e| (e.stream.clone(), e.offset)).collect();
    assert_eq!(positions, [("user:alice".to_string(), Some(1)), ("topic:news".to_string(), Some(1))]);
    assert_eq!(h.notification_ids(), ["a2", "a3"]);
    let continuity: Vec<_> = h
        .events
        .iter()
        .filter_map(|e| match e {
            Event::Continuity { stream, continuity } => Some((stream.as_str(), continuity.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(
        continuity,
        [("user:alice", Continuity::Resumed { replayed: 2 }), ("topic:news", Continuity::Resumed { replayed: 0 })]
    );
    // The resumed event comes after the replayed notifications.
    let pos_a3 = h.events.iter().position(|e| matches!(e, Event::Notification(n) if n.id() == "a3")).unwrap();
    let pos_resumed = h.events.iter().position(|e| matches!(e, Event::Continuity { .. })).unwrap();
    assert!(pos_resumed > pos_a3);
}

#[test]
fn lost_history_and_overflowed_buffers_are_reported_as_gaps() {
    let mut h = connected("alice");
    h.publish("user:alice", "a1", Priority::Important, None);
    h.server_close(None);
    h.server.lose_history();
    h.take_events();
    h.advance(Duration::from_secs(1));
    assert!(h.events.contains(&Event::Continuity {
        stream: "user:alice".into(),
        continuity: Continuity::Gap { reason: GapReason::EpochChanged, missed: None, replayed: 0 }
    }));
    let epoch = h.engine.cursor("user:alice").unwrap().epoch.clone();
    assert_eq!(epoch, h.server.streams["user:alice"].epoch, "cursor rebased to the new epoch");

    h.server.buffer_cap = 3;
    h.publish("user:alice", "b1", Priority::Important, None);
    h.server_close(None);
    for i in 2..=9 {
        h.server.publish("user:alice", &format!("b{i}"), Priority::Important, None);
    }
    h.take_events();
    h.advance(Duration::from_secs(1));
    assert!(h.events.contains(&Event::Continuity {
        stream: "user:alice".into(),
        continuity: Continuity::Gap { reason: GapReason::OutOfBuffer, missed: Some(5), replayed: 0 }
    }));
    assert!(h.notification_ids().is_empty(), "a gap replays nothing");
    assert_eq!(h.engine.cursor("user:alice").unwrap().offset, 9);
    assert_eq!(h.engine.stats().gaps, 2);
}

#[test]
fn a_gap_followed_by_what_the_new_epoch_holds_delivers_it_once_after_the_gap_event() {
    let mut h = connected("alice");
    h.server.replay_on_gap = true;
    h.publish("user:alice", "a1", Priority::Important, None);
    h.publish("user:alice", "a2", Priority::Important, None);
    h.server_close(None);
    // The server restarts without history (a new epoch) and takes publishes before the client is back; one of
    // them is a publisher's retry of a notification the app has already (same id).
    h.server.lose_history();
    for id in ["a2", "b1", "b2"] {
        h.server.publish("user:alice", id, Priority::Important, None);
    }
    h.take_events();
    h.advance(Duration::from_secs(1));
    let gap = h
        .events
        .iter()
        .position(|e| {
            *e == Event::Continuity {
                stream: "user:alice".into(),
                continuity: Continuity::Gap { reason: GapReason::EpochChanged, missed: None, replayed: 3 },
            }
        })
        .unwrap_or_else(|| panic!("no gap with replayed 3: {:?}", h.events));
    let first_replayed = h.events.iter().position(|e| matches!(e, Event::Notification(_))).expect("replayed");
    assert!(gap < first_replayed, "the app hears of the gap before the replay: {:?}", h.events);
    assert_eq!(h.notification_ids(), ["b1", "b2"], "what the new epoch holds, the repeated id once");
    let cursor = h.engine.cursor("user:alice").unwrap();
    assert_eq!((cursor.epoch.as_str(), cursor.offset), (h.server.streams["user:alice"].epoch.as_str(), 3));
    assert_eq!(h.engine.stats().stale_dropped, 0, "nothing the new epoch holds is taken for stale");
    // Live delivery continues after the replayed ones.
    h.take_events();
    h.publish("user:alice", "b3", Priority::Important, None);
    assert_eq!(h.notification_ids(), ["b3"]);
}

#[test]
fn a_gap_without_replayed_from_an_older_server_moves_the_cursor_to_the_head() {
    let mut h = connected("alice");
    h.publish("user:alice", "a1", Priority::Important, None);
    h.server_close(None);
    h.server.lose_history();
    h.server.publish("user:alice", "b1", Priority::Important, None);
    h.take_events();
    h.advance(Duration::from_secs(1));
    assert!(h.events.contains(&Event::Continuity {
        stream: "user:alice".into(),
        continuity: Continuity::Gap { reason: GapReason::EpochChanged, missed: None, replayed: 0 }
    }));
    assert!(h.notification_ids().is_empty(), "nothing follows a gap without `replayed`");
    assert_eq!(h.engine.cursor("user:alice").unwrap().offset, 1, "the cursor is the head");
    h.publish("user:alice", "b2", Priority::Important, None);
    assert_eq!(h.notification_ids(), ["b2"]);
}

#[test]
fn stale_offsets_and_repeated_ids_are_dropped() {
    let mut h = connected("alice");
    let f1 = h.server.publish("user:alice", "n1", Priority::Important, None).unwrap();
    h.deliver(Some(f1.clone()));
    h.deliver(Some(f1));
    assert_eq!(h.notification_ids(), ["n1"]);
    assert_eq!(h.engine.stats().stale_dropped, 1);
    // Same publish id on another stream (one publish to user and topic): shown once.
    h.engine.subscribe(h.now, "topic:t").unwrap();
    h.pump();
    h.publish("topic:t", "n1", Priority::Important, None);
    assert_eq!(h.notification_ids(), ["n1"]);
    assert_eq!(h.engine.stats().duplicates_dropped, 1);
    assert_eq!(h.engine.cursor("topic:t").unwrap().offset, 1, "cursor advances even for a duplicate");
}

#[test]
fn push_then_socket_and_socket_then_push_are_each_shown_once() {
    let mut h = connected("alice");
    h.take_events();
    // Push first: the server publishes while the app handles the push.
    let frame = h.server.publish("user:alice", "p1", Priority::Critical, None);
    let payload = h.server.push_payload("user:alice", "p1");
    let PushOutcome::Show(n) = h.engine.ingest_push(h.now, &payload).unwrap() else { panic!() };
    assert_eq!(n.id(), "p1");
    h.deliver(frame);
    assert!(h.notification_ids().is_empty(), "the socket copy is suppressed");
    // Socket first.
    h.publish("user:alice", "p2", Priority::Critical, None);
    assert_eq!(h.notification_ids(), ["p2"]);
    let payload = h.server.push_payload("user:alice", "p2");
    assert_eq!(h.engine.ingest_push(h.now, &payload).unwrap(), PushOutcome::Duplicate { id: "p2".into() });
    // Replay after a reconnect does not resurrect either.
    h.server_close(None);
    h.take_events();
    h.advance(Duration::from_secs(1));
    assert!(h.notification_ids().is_empty());
}

#[test]
fn bad_push_payloads_get_a_clear_error_and_change_nothing() {
    let mut h = connected("alice");
    let before = h.engine.stats().clone();
    let err = h.engine.ingest_push(h.now, "{not json").unwrap_err();
    assert!(err.to_string().contains("push payload is not a JSON object"), "{err}");
    let err = h.engine.ingest_push(h.now, r#"{"tidings":{"id":"x"}}"#).unwrap_err();
    assert!(err.to_string().contains("invalid envelope"), "{err}");
    assert_eq!(h.engine.stats(), &before);
}

#[test]
fn informational_items_of_a_group_become_one_digest_and_critical_ones_are_not_delayed() {
    let mut config = Harness::config();
    config.batch = BatchConfig { window: Duration::from_secs(3), max_items: 100 };
    let mut h = Harness::new(config, "alice");
    h.connect();
    h.take_events();
    for i in 1..=5 {
        h.publish("user:alice", &format!("like{i}"), Priority::Informational, Some("likes:post-1"));
        if i == 3 {
            h.publish("user:alice", "alarm", Priority::Critical, None);
            assert_eq!(h.notification_ids(), ["alarm"], "critical delivered at once, mid-batch");
        }
        h.advance(ms(100));
    }
    assert!(!h.events.iter().any(|e| matches!(e, Event::Digest(_))));
    h.advance(Duration::from_secs(3));
    let digests: Vec<_> =
        h.events.iter().filter_map(|e| if let Event::Digest(d) = e { Some(d) } else { None }).collect();
    assert_eq!(digests.len(), 1);
    let d = digests[0];
    assert_eq!((d.count, d.first.id(), d.last.id()), (5, "like1", "like5"));
    assert_eq!(d.group, "likes:post-1");
    assert_eq!(h.notification_ids(), ["alarm"]);
    let acked = h.server.acked();
    for id in ["alarm", "like1", "like5"] {
        assert!(acked.contains(&id.to_string()), "{id} acked");
    }
    // Informational without a group is not held.
    h.publish("user:alice", "solo", Priority::Informational, None);
    assert_eq!(h.notification_ids(), ["alarm", "solo"]);
}

#[test]
fn subscription_refusals_are_reported_and_not_retried() {
    let mut h = connected("alice");
    h.engine.subscribe(h.now, "user:bob").unwrap();
    h.pump();
    let ClientFrame::Subscribe { reference, .. } = h.server.received.last().unwrap().clone() else { panic!() };
    h.server.subscribed.remove("user:bob");
    h.deliver(Some(protocol::encode_server_frame(&ServerFrame::Error(ErrorFrame {
        reference: Some(reference),
        stream: Some("user:bob".into()),
        code: ErrorCode::Forbidden,
        message: "not yours".into(),
        retry_after_ms: None,
    }))));
    assert!(h.events.contains(&Event::SubscriptionFailed {
        stream: "user:bob".into(),
        code: ErrorCode::Forbidden,
        message: "not yours".into()
    }));
    assert_eq!(h.engine.state(), &ConnectionState::Connected, "request errors keep the connection");
    assert_eq!(h.engine.subscriptions().count(), 0);
    assert!(h.engine.subscribe(h.now, "room:1").unwrap_err().to_string().contains("not a stream name"));
}

/// Every stream the client sent a `subscribe` for, in order.
fn subscribed_streams(h: &Harness) -> Vec<String> {
    h.server
        .received
        .iter()
        .flat_map(|f| match f {
            ClientFrame::Subscribe { streams, .. } => streams.iter().map(|e| e.stream.clone()).collect(),
            _ => Vec::new(),
        })
        .collect()
}

/// The server ends a subscription by itself (an operator's unsubscribe, protocol §2.5): an `error` naming the
/// stream without a `ref`. The stream is reported and dropped, the link stays, and a reconnect does not subscribe it
/// again; the other streams go on.
#[test]
fn a_subscription_the_server_ends_is_reported_and_not_subscribed_again() {
    let mut h = connected("alice");
    h.engine.subscribe(h.now, "topic:news").unwrap();
    h.pump();
    h.take_events();
    h.deliver(Some(protocol::encode_server_frame(&ServerFrame::Error(ErrorFrame {
        reference: None,
        stream: Some("topic:news".into()),
        code: ErrorCode::Forbidden,
        message: "an operator ended this subscription".into(),
        retry_after_ms: None,
    }))));
    assert_eq!(
        h.events,
        [Event::SubscriptionFailed {
            stream: "topic:news".into(),
            code: ErrorCode::Forbidden,
            message: "an operator ended this subscription".into()
        }]
    );
    assert_eq!(h.engine.state(), &ConnectionState::Connected, "the connection stays");
    assert_eq!(h.engine.subscriptions().collect::<Vec<_>>(), Vec::<&str>::new(), "the stream is dropped");
    // After a reconnect only the user's stream is subscribed again.
    h.server.received.clear();
    h.server_close(None);
    h.advance(Duration::from_secs(1));
    assert_eq!(h.engine.state(), &ConnectionState::Connected);
    let subscribed = subscribed_streams(&h);
    assert_eq!(subscribed, ["user:alice"], "topic:news is not subscribed again");
}

#[test]
fn fatal_server_errors_stop_without_retrying() {
    for code in [ErrorCode::SessionReplaced, ErrorCode::ProtocolError, ErrorCode::FrameTooLarge] {
        let mut h = connected("alice");
        h.deliver(Some(sim::error(code, "bye")));
        assert!(matches!(h.engine.state(), ConnectionState::Failed { .. }), "{code}: {:?}", h.engine.state());
        h.advance(Duration::from_secs(600));
        assert_eq!(h.opens, 1, "{code}");
    }
    for code in [close::SESSION_REPLACED, close::PROTOCOL_ERROR] {
        let mut h = connected("alice");
        h.server_close(Some(code));
        assert!(matches!(h.engine.state(), ConnectionState::Failed { .. }), "{code}");
    }
}

#[test]
fn background_closes_after_the_grace_period_and_foreground_resumes_from_the_cursor() {
    let mut h = connected("alice");
    h.publish("user:alice", "n1", Priority::Important, None);
    h.engine.handle_lifecycle(h.now, Lifecycle::Background);
    h.advance(Duration::from_secs(29));
    assert_eq!(h.engine.state(), &ConnectionState::Connected, "grace period");
    h.advance(Duration::from_secs(2));
    assert_eq!(h.engine.state(), &ConnectionState::Suspended { reason: SuspendReason::Background });
    assert!(h.conn.is_none(), "socket closed");
    h.server.publish("user:alice", "n2", Priority::Important, None);
    h.advance(Duration::from_secs(3600));
    assert_eq!(h.opens, 1, "no reconnects in the background");
    h.take_events();
    h.engine.handle_lifecycle(h.now, Lifecycle::Foreground);
    h.pump();
    assert_eq!(h.opens, 2, "foreground reconnects at once");
    assert_eq!(h.notification_ids(), ["n2"]);
    assert!(
        h.events.contains(&Event::Continuity {
            stream: "user:alice".into(),
            continuity: Continuity::Resumed { replayed: 1 }
        })
    );
}

#[test]
fn token_is_refreshed_on_the_live_connection_before_it_expires() {
    let mut h = Harness::new(Harness::config(), "alice");
    h.server.token_expires_in_ms = Some(120_000);
    h.connect();
    // Lifetime 120 s: the lead is min(30 s, 10 % of 120 s) = 12 s, so the refresh is due at 108 s.
    h.advance(Duration::from_secs(107));
    assert_eq!(h.token_fetches.len(), 1);
    h.advance(Duration::from_secs(2));
    assert_eq!(h.token_fetches, [false, true]);
    let auths: Vec<_> = h.server.received.iter().filter(|f| matches!(f, ClientFrame::Auth { .. })).collect();
    assert_eq!(auths.len(), 2, "second auth on the same connection");
    assert_eq!(h.opens, 1);
}

#[test]
fn close_sends_pending_acks_then_closes_and_stays_closed() {
    let mut h = connected("alice");
    let frame = h.server.publish("user:alice", "n1", Priority::Important, None).unwrap();
    h.engine.handle_text(h.now, h.conn.unwrap(), &frame);
    h.engine.close(h.now);
    let first = h.engine.poll_transmit().unwrap();
    assert_eq!(protocol::decode_client_frame(&first).unwrap(), ClientFrame::Ack { ids: vec!["n1".into()] });
    assert!(matches!(h.engine.poll_action(), Some(Action::Close { code: 1000, .. })));
    h.pump();
    assert_eq!(h.engine.state(), &ConnectionState::Closed);
    h.advance(Duration::from_secs(3600));
    assert_eq!(h.opens, 1);
}

#[test]
fn state_survives_a_restart_through_a_snapshot() {
    let mut config = Harness::config();
    config.persistence = true;
    config.batch = BatchConfig { window: Duration::from_secs(3), max_items: 10 };
    let mut h = Harness::new(config.clone(), "alice");
    h.connect();
    h.publish("user:alice", "n1", Priority::Important, None);
    h.publish("user:alice", "like1", Priority::Informational, Some("likes"));
    h.publish("user:alice", "like2", Priority::Informational, Some("likes"));
    let device = h.engine.device_id();
    let snapshot = h.engine.snapshot();
    assert_eq!(snapshot.seen.len(), 3);
    let mut window = tidings_core::engine::DedupWindow::new(10);
    window.restore(&snapshot.seen);
    assert!(["n1", "like1", "like2"].iter().all(|id| window.contains(id)));
    assert_eq!(snapshot.pending.len(), 1);

    // A new process: new engine, same server, restored state.
    let mut h2 = Harness::new(config, "alice");
    h2.server = std::mem::replace(&mut h.server, sim::SimServer::new("x"));
    h2.engine.restore(h2.now, &snapshot);
    assert_eq!(h2.engine.device_id(), device);
    h2.server.publish("user:alice", "n2", Priority::Important, None);
    h2.connect();
    assert_eq!(h2.notification_ids(), ["n2"], "resumed after n1, not fresh");
    let payload = h2.server.push_payload("user:alice", "n1");
    assert_eq!(h2.engine.ingest_push(h2.now, &payload).unwrap(), PushOutcome::Duplicate { id: "n1".into() });
    h2.advance(Duration::from_secs(3));
    let digest = h2.events.iter().find_map(|e| if let Event::Digest(d) = e { Some(d.clone()) } else { None });
    assert_eq!(digest.map(|d| d.ids), Some(vec!["like1".to_string(), "like2".to_string()]));
}

fn digests(h: &Harness) -> Vec<Vec<String>> {
    h.events.iter().filter_map(|e| if let Event::Digest(d) = e { Some(d.ids.clone()) } else { None }).collect()
}

/// Defect 1 of issue 12: with a store that merges (the file store), a delivered digest came back from the saved
/// batches after a foreground restore and after a restart.
#[test]
fn a_delivered_digest_stays_delivered_after_a_foreground_restore_and_a_restart() {
    let mut config = Harness::config();
    config.persistence = true;
    config.batch = BatchConfig { window: Duration::from_secs(3), max_items: 10 };
    let mut h = Harness::new(config, "alice");
    h.connect();
    h.publish("user:alice", "like1", Priority::Informational, Some("likes"));
    h.publish("user:alice", "like2", Priority::Informational, Some("likes"));
    h.advance(Duration::from_secs(1)); // persisted with the batch open
    assert_eq!(tidings_core::store::Store::load(&h.store).unwrap().unwrap().pending.len(), 1);
    h.advance(Duration::from_secs(3)); // delivered, persisted without it
    assert_eq!(digests(&h), [["like1", "like2"]]);
    h.foreground_restore();
    h.advance(Duration::from_secs(10));
    assert_eq!(digests(&h), [["like1", "like2"]], "not again after a foreground restore");
    assert!(tidings_core::store::Store::load(&h.store).unwrap().unwrap().pending.is_empty(), "the store has it closed");
    h.restart();
    h.advance(Duration::from_secs(10));
    assert_eq!(digests(&h), [["like1", "like2"]], "not again after a restart");
}

/// Defect 2 of issue 12: the merging store brought back the cursor of a stream the app unsubscribed, so the stream
/// resumed (with a replay of what it missed) instead of starting fresh when subscribed again.
#[test]
fn an_unsubscribed_stream_stays_gone_after_a_foreground_restore_and_a_restart() {
    let mut config = Harness::config();
    config.persistence = true;
    let mut h = Harness::new(config, "alice");
    h.connect();
    h.engine.subscribe(h.now, "topic:news").unwrap();
    h.pump();
    h.publish("topic:news", "t1", Priority::Important, None);
    h.advance(Duration::from_secs(1)); // persisted with the cursor
    h.engine.unsubscribe(h.now, "topic:news").unwrap();
    h.advance(Duration::from_secs(1)); // persisted without it
    h.foreground_restore();
    assert_eq!(h.engine.cursor("topic:news"), None, "not back after a foreground restore");
    h.server.publish("topic:news", "t2", Priority::Important, None);
    h.restart();
    assert_eq!(h.engine.cursor("topic:news"), None, "not back after a restart");
    assert!(tidings_core::store::Store::load(&h.store).unwrap().unwrap().cursors.get("topic:news").is_none());
    h.take_events();
    h.engine.subscribe(h.now, "topic:news").unwrap();
    h.pump();
    assert!(
        h.events.contains(&Event::Continuity { stream: "topic:news".into(), continuity: Continuity::Fresh }),
        "subscribing again starts fresh: {:?}",
        h.events
    );
    assert!(h.notification_ids().is_empty(), "nothing from before the unsubscribe is replayed");
}

#[test]
fn persistence_is_rate_limited_and_immediate_for_push_and_close() {
    let mut config = Harness::config();
    config.persistence = true;
    config.persist_interval = Duration::from_millis(500);
    let mut h = Harness::new(config, "alice");
    h.connect();
    let persists = |h: &Harness| h.actions.iter().filter(|a| matches!(a, Action::Persist(_))).count();
    let base = persists(&h);
    for i in 0..20 {
        h.publish("user:alice", &format!("n{i}"), Priority::Important, None);
        h.advance(ms(50));
    }
    let routine = persists(&h) - base;
    assert!((1..=3).contains(&routine), "20 notifications over 1 s persisted {routine} times");
    let before = persists(&h);
    h.server.publish("user:alice", "p", Priority::Important, None);
    let payload = h.server.push_payload("user:alice", "p");
    h.engine.ingest_push(h.now, &payload).unwrap();
    h.pump();
    assert_eq!(persists(&h), before + 1, "push path persists at once");
    let Some(Action::Persist(s)) = h.actions.iter().rev().find(|a| matches!(a, Action::Persist(_))) else { panic!() };
    let mut window = tidings_core::engine::DedupWindow::new(100);
    window.restore(&s.seen);
    assert!(window.contains("p"));
}

#[test]
fn ephemeral_notifications_do_not_move_the_cursor() {
    let mut h = connected("alice");
    let frame = h.server.publish_with(
        "user:alice",
        "e1",
        Priority::Important,
        None,
        tidings_core::protocol::Persistence::Ephemeral,
    );
    h.deliver(frame);
    assert_eq!(h.notification_ids(), ["e1"]);
    assert_eq!(h.engine.cursor("user:alice").unwrap().offset, 0);
}

#[test]
fn push_registration_is_validated_sent_after_every_welcome_and_persisted() {
    use tidings_core::PushPlatform;
    let mut h = Harness::new(Harness::config(), "alice");
    let err = h.engine.register_push(h.now, PushPlatform::Apns, "").unwrap_err();
    assert!(err.to_string().contains("push token"), "{err}");
    h.engine.register_push(h.now, PushPlatform::Apns, "5f3a").unwrap();
    h.connect();
    let registrations = |h: &Harness| {
        h.server
            .received
            .iter()
            .filter(|f| matches!(f, ClientFrame::RegisterPush { token, .. } if token == "5f3a"))
            .count()
    };
    assert_eq!(registrations(&h), 1, "sent once connected");
    assert!(h.events.contains(&Event::PushRegistered { platform: PushPlatform::Apns }));
    h.server_close(None);
    h.advance(Duration::from_secs(1));
    assert_eq!(registrations(&h), 2, "sent again after the reconnect");
    let snapshot = h.engine.snapshot();
    assert_eq!(snapshot.push.as_ref().map(|p| p.token.as_str()), Some("5f3a"));
    // A new token while connected goes out at once.
    h.engine.register_push(h.now, PushPlatform::Fcm, "fcm-token").unwrap();
    h.pump();
    assert!(matches!(h.server.received.last(), Some(ClientFrame::RegisterPush { platform: PushPlatform::Fcm, .. })));
}

/// Defect 4 of issue 12: a refused registration reached the app as nothing, and a `web_push` token without keys
/// was accepted by the client although the server refuses it.
#[test]
fn a_refused_push_registration_reaches_the_app_and_is_not_sent_again() {
    use tidings_core::PushPlatform;
    let mut h = connected("alice");
    for bad in [
        r#"{"endpoint":"https://push.example/x"}"#,
        r#"{"endpoint":"http://push.example/x","keys":{"p256dh":"B","auth":"AAAAAAAAAAAAAAAAAAAAAA"}}"#,
        r#"{"endpoint":"https://push.example/x","keys":{"p256dh":"BAAA","auth":"AAAAAAAAAAAAAAAAAAAAAA"}}"#,
        "not json",
    ] {
        let err = h.engine.register_push(h.now, PushPlatform::WebPush, bad).unwrap_err();
        assert!(err.to_string().contains("web_push token is the PushSubscription"), "{bad}: {err}");
    }
    let p256dh = format!("B{}", "A".repeat(86));
    let good = format!(
        r#"{{"endpoint":"https://push.example/x","keys":{{"p256dh":"{p256dh}","auth":"AAAAAAAAAAAAAAAAAAAAAA"}}}}"#
    );
    h.engine.register_push(h.now, PushPlatform::WebPush, &good).unwrap();
    h.pump();
    assert!(h.events.contains(&Event::PushRegistered { platform: PushPlatform::WebPush }));
    h.server.refuse_push =
        Some((ErrorCode::BadRequest, "register_push: token keys.p256dh is not a P-256 point".into()));
    h.take_events();
    h.engine.register_push(h.now, PushPlatform::Fcm, "fcm-token").unwrap();
    h.pump();
    assert_eq!(
        h.events,
        [Event::PushRegistrationFailed {
            platform: PushPlatform::Fcm,
            code: ErrorCode::BadRequest,
            message: "register_push: token keys.p256dh is not a P-256 point".into()
        }]
    );
    assert_eq!(h.engine.state(), &ConnectionState::Connected, "request-scoped: the link stays");
    assert_eq!(h.engine.snapshot().push, None, "a refused address is forgotten");
    let sent = |h: &Harness| h.server.received.iter().filter(|f| matches!(f, ClientFrame::RegisterPush { .. })).count();
    let before = sent(&h);
    h.server_close(None);
    h.advance(Duration::from_secs(1));
    assert_eq!(h.engine.state(), &ConnectionState::Connected);
    assert_eq!(sent(&h), before, "not sent again after the reconnect");
}

/// An error that answers a subscribe as a whole (it names no stream) fails every stream of that request.
#[test]
fn a_subscribe_refused_as_a_whole_fails_each_of_its_streams() {
    let mut h = connected("alice");
    h.take_events();
    h.engine.subscribe(h.now, "topic:a").unwrap();
    let Some(ClientFrame::Subscribe { reference, .. }) =
        h.engine.poll_transmit().map(|t| protocol::decode_client_frame(&t).unwrap())
    else {
        panic!("a subscribe goes out")
    };
    let refusal = protocol::encode_server_frame(&ServerFrame::Error(ErrorFrame {
        reference: Some(reference),
        stream: None,
        code: ErrorCode::BadRequest,
        message: "subscribe: member `streams`: expected an array".into(),
        retry_after_ms: None,
    }));
    h.deliver(Some(refusal));
    assert_eq!(
        h.events,
        [Event::SubscriptionFailed {
            stream: "topic:a".into(),
            code: ErrorCode::BadRequest,
            message: "subscribe: member `streams`: expected an array".into()
        }]
    );
    assert_eq!(h.engine.subscriptions().count(), 0, "not retried");
    assert_eq!(h.engine.state(), &ConnectionState::Connected);
}

#[test]
fn a_follower_fed_relayed_frames_takes_over_with_nothing_lost_and_nothing_twice() {
    use tidings_core::engine::Engine;
    let mut leader = connected("alice");
    let mut follower = Engine::new(Harness::config(), 7);
    let mut relayed = 0;
    let relay = |leader: &Harness, follower: &mut Engine, relayed: &mut usize| {
        for frame in &leader.delivered_frames[*relayed..] {
            follower.handle_relayed(leader.now, frame).unwrap();
        }
        *relayed = leader.delivered_frames.len();
    };
    for i in 0..5 {
        leader.publish("user:alice", &format!("n{i}"), Priority::Important, None);
    }
    relay(&leader, &mut follower, &mut relayed);
    let follower_events: Vec<String> = std::iter::from_fn(|| follower.poll_event())
        .filter_map(|e| if let Event::Notification(n) = e { Some(n.id().to_owned()) } else { None })
        .collect();
    assert_eq!(follower_events, ["n0", "n1", "n2", "n3", "n4"], "followers see what the leader sees");
    assert!(follower.poll_transmit().is_none(), "followers never ack");
    // The leader tab dies; more is published meanwhile.
    let mut server = std::mem::replace(&mut leader.server, sim::SimServer::new("x"));
    server.disconnect();
    for i in 5..8 {
        server.publish("user:alice", &format!("n{i}"), Priority::Important, None);
    }
    // The follower takes over the socket.
    let mut h = Harness::new(Harness::config(), "alice");
    h.engine = follower;
    h.server = server;
    let before_takeover = h.server.received.len();
    h.connect();
    assert_eq!(
        h.notification_ids(),
        ["n5", "n6", "n7"],
        "resumed from the relayed cursor: nothing lost, nothing twice"
    );
    assert!(
        h.events.contains(&Event::Continuity {
            stream: "user:alice".into(),
            continuity: Continuity::Resumed { replayed: 3 }
        })
    );
    h.advance(Duration::from_secs(1));
    let acked: Vec<String> = h.server.received[before_takeover..]
        .iter()
        .filter_map(|f| if let ClientFrame::Ack { ids } = f { Some(ids.clone()) } else { None })
        .flatten()
        .collect();
    assert!(acked.contains(&"n7".to_string()), "the new leader acks what it receives");
    assert!(!acked.contains(&"n0".to_string()), "relayed notifications were acked by the old leader, not again");
}

/// A subscription the server ended on the leader's socket (an `error` naming the stream without a `ref`) is ended in
/// a follower fed the relayed frames too: reported, dropped, and not subscribed again when the follower takes the
/// socket over. A relayed refusal of one of the leader's own requests (with a `ref`) is not the follower's business.
#[test]
fn a_subscription_the_server_ended_is_dropped_in_a_follower_and_not_subscribed_on_takeover() {
    use tidings_core::engine::Engine;
    let mut follower = Engine::new(Harness::config(), 7);
    let t0 = Harness::new(Harness::config(), "alice").now;
    follower.subscribe(t0, "topic:news").unwrap();
    follower.subscribe(t0, "topic:sports").unwrap();
    let relay = |follower: &mut Engine, frame: ServerFrame| {
        follower.handle_relayed(t0, &protocol::encode_server_frame(&frame)).unwrap();
        std::iter::from_fn(|| follower.poll_event()).collect::<Vec<_>>()
    };
    let error = |reference: Option<u64>, stream: &str| {
        ServerFrame::Error(ErrorFrame {
            reference,
            stream: Some(stream.into()),
            code: ErrorCode::Forbidden,
            message: "an operator ended this subscription".into(),
            retry_after_ms: None,
        })
    };
    assert_eq!(relay(&mut follower, error(Some(3), "topic:sports")), [], "the leader's request, not ours");
    assert_eq!(
        relay(&mut follower, error(None, "topic:news")),
        [Event::SubscriptionFailed {
            stream: "topic:news".into(),
            code: ErrorCode::Forbidden,
            message: "an operator ended this subscription".into()
        }]
    );
    assert_eq!(follower.subscriptions().collect::<Vec<_>>(), ["topic:sports"], "topic:news is dropped");
    assert!(follower.poll_transmit().is_none(), "a follower sends nothing");
    // The follower takes the socket over: only the user's stream and topic:sports are subscribed.
    let mut h = Harness::new(Harness::config(), "alice");
    h.engine = follower;
    h.connect();
    let mut subscribed = subscribed_streams(&h);
    subscribed.sort();
    assert_eq!(subscribed, ["topic:sports", "user:alice"]);
}

/// The decoded-frame inputs (`handle_frame`, `ingest_push_notification`, used by drivers whose platform parses
/// JSON) behave exactly as the text inputs: the same scenario gives the same events and the same frames.
#[test]
fn decoded_frame_inputs_behave_exactly_like_text_inputs() {
    let run = |decoded: bool| {
        let mut h = Harness::new(Harness::config(), "alice");
        h.decoded_input = decoded;
        h.connect();
        h.publish("user:alice", "n1", Priority::Important, None);
        for i in 0..3 {
            h.publish("user:alice", &format!("like{i}"), Priority::Informational, Some("likes"));
        }
        let payload = h.server.push_payload("user:alice", "n1");
        let again = if decoded {
            let n = protocol::decode_push_payload(&payload).unwrap();
            h.engine.ingest_push_notification(h.now, n).unwrap()
        } else {
            h.engine.ingest_push(h.now, &payload).unwrap()
        };
        assert_eq!(again, PushOutcome::Duplicate { id: "n1".into() });
        h.server_close(None);
        h.server.publish("user:alice", "n2", Priority::Critical, None);
        h.advance(Duration::from_secs(5));
        h.deliver(Some("{\"op\":\"notification\",\"id\":".into()));
        h.advance(Duration::from_secs(5));
        (h.events.clone(), h.server.received.clone(), h.engine.stats().clone())
    };
    let (text_events, text_frames, text_stats) = run(false);
    let (events, frames, stats) = run(true);
    assert_eq!(events, text_events);
    assert_eq!(frames, text_frames);
    assert_eq!(stats, text_stats);
    assert!(text_events.iter().any(|e| matches!(e, Event::Digest(_))), "{text_events:?}");
    assert!(
        text_events
            .iter()
            .any(|e| matches!(e, Event::Continuity { continuity: Continuity::Resumed { replayed: 1 }, .. })),
        "{text_events:?}"
    );
    assert!(
        text_events.iter().filter(|e| matches!(e, Event::State(ConnectionState::Reconnecting { .. }))).count() >= 2,
        "the truncated frame replaced the link too: {text_events:?}"
    );
}

/// The SDK's metrics (issue 16): one implementation here, read through `stats()` on every platform.
#[test]
fn stats_count_reconnects_by_reason_round_trips_replays_digests_and_duplicates_per_path() {
    let mut h = connected("alice");
    let s = h.engine.stats().clone();
    assert_eq!((s.fresh, s.rtt.samples, s.reconnects.total()), (1, 1, 0), "auth → welcome is the first round trip");
    // A probe answered 30 ms later is a 30 ms round trip.
    let conn = h.conn.unwrap();
    h.engine.handle_network(h.now, NetworkEvent::Changed);
    while h.engine.poll_transmit().is_some() {}
    h.now = h.now + ms(30);
    h.engine.handle_text(h.now, conn, r#"{"op":"heartbeat"}"#);
    let rtt = h.engine.stats().rtt.clone();
    assert_eq!((rtt.samples, rtt.last, rtt.min), (2, Some(ms(30)), Some(Duration::ZERO)));
    assert_eq!(rtt.smoothed, Some(ms(30).mul_f64(0.125)));
    // Duplicates by path: a push shown, then its socket copy; then the push of something already shown.
    let frame = h.server.publish("user:alice", "p1", Priority::Critical, None);
    let payload = h.server.push_payload("user:alice", "p1");
    assert!(matches!(h.engine.ingest_push(h.now, &payload).unwrap(), PushOutcome::Show(_)));
    h.deliver(frame);
    assert!(matches!(h.engine.ingest_push(h.now, &payload).unwrap(), PushOutcome::Duplicate { .. }));
    // The server shuts down; meanwhile p2 arrives by push; the reconnect replays it: a replay duplicate.
    h.server_close(Some(close::SERVER_SHUTDOWN));
    h.server.publish("user:alice", "p2", Priority::Critical, None);
    let payload = h.server.push_payload("user:alice", "p2");
    assert!(matches!(h.engine.ingest_push(h.now, &payload).unwrap(), PushOutcome::Show(_)));
    h.advance(Duration::from_secs(20));
    assert_eq!(h.engine.state(), &ConnectionState::Connected);
    // A connection lost without a close frame, then back.
    h.server_close(None);
    h.advance(Duration::from_secs(20));
    assert_eq!(h.engine.state(), &ConnectionState::Connected);
    // Informational notifications of one group become a digest.
    for id in ["l1", "l2", "l3"] {
        h.publish("user:alice", id, Priority::Informational, Some("likes"));
    }
    h.advance(Duration::from_secs(5));
    let s = h.engine.stats().clone();
    assert_eq!((s.duplicates_socket, s.duplicates_replay, s.duplicates_push, s.duplicates_dropped), (1, 1, 1, 3));
    assert_eq!((s.reconnects.server_closed, s.reconnects.connection_lost, s.reconnects.total()), (1, 1, 2));
    assert_eq!((s.fresh, s.resumed, s.replays, s.replayed, s.replay_max), (1, 2, 1, 1, 1));
    assert_eq!((s.digests, s.digested), (1, 3));
    assert!(s.rtt.samples >= 4, "a welcome per connection and the probe: {:?}", s.rtt);
    let by_reason: Vec<(&str, u64)> = s.reconnects.by_reason().into_iter().filter(|(_, n)| *n > 0).collect();
    assert_eq!(by_reason, [("connection_lost", 1), ("server_closed", 1)]);
}

/// Issue 14: the lightweight form asks the driver to fetch; the fetched notification is shown once (and a
/// fetch that fails shows the title, once); a summary marks its ids seen so their socket copies are not shown.
#[test]
fn lightweight_and_summary_pushes_are_resolved_and_deduplicated_with_the_socket() {
    use tidings_core::protocol::{PushSummary, SummaryKind};
    let mut h = connected("alice");
    h.take_events();
    // Lightweight: fetch, then the fetched envelope.
    let frame = h.server.publish("user:alice", "big1", Priority::Important, None);
    let light = r#"{"aps":{"alert":{"title":"A long one"}},"tidings_fetch":{"id":"big1","title":"A long one"}}"#;
    assert_eq!(
        h.engine.ingest_push(h.now, light).unwrap(),
        PushOutcome::Fetch { id: "big1".into(), title: Some("A long one".into()) }
    );
    let fetched = tidings_core::protocol::decode_push_payload(&h.server.push_payload("user:alice", "big1")).unwrap();
    let shown = h.engine.complete_push_fetch(h.now, "big1", Some("A long one".into()), Ok(fetched.clone()));
    assert_eq!(shown, PushOutcome::Show(fetched));
    h.deliver(frame);
    assert!(h.notification_ids().is_empty(), "the socket copy of a fetched push is suppressed");
    assert_eq!(
        h.engine.ingest_push(h.now, light).unwrap(),
        PushOutcome::Duplicate { id: "big1".into() },
        "seen: no second fetch"
    );
    // A fetch that fails shows the title, and the id counts as seen.
    let light2 = r#"{"tidings_fetch":"{\"id\":\"big2\",\"title\":\"Another\"}"}"#;
    assert!(matches!(h.engine.ingest_push(h.now, light2).unwrap(), PushOutcome::Fetch { .. }));
    let fallback = h.engine.complete_push_fetch(h.now, "big2", Some("Another".into()), Err("timed out".into()));
    assert_eq!(
        fallback,
        PushOutcome::ShowTitle { id: "big2".into(), title: Some("Another".into()), reason: "timed out".into() }
    );
    let wrong = h.engine.complete_push_fetch(h.now, "big2", None, Err("again".into()));
    assert_eq!(wrong, PushOutcome::Duplicate { id: "big2".into() });
    // A summary: shown while something in it is new; its ids are seen afterwards.
    let frame_d1 = h.server.publish("user:alice", "d1", Priority::Informational, Some("likes"));
    let summary =
        r#"{"tidings_summary":{"kind":"digest","group":"likes","count":2,"ids":["d2","d1"],"title":"Ann liked it"}}"#;
    let want = PushSummary {
        kind: SummaryKind::Digest,
        group: Some("likes".into()),
        count: 2,
        ids: vec!["d2".into(), "d1".into()],
        title: Some("Ann liked it".into()),
    };
    assert_eq!(h.engine.ingest_push(h.now, summary).unwrap(), PushOutcome::Summary(want));
    h.deliver(frame_d1);
    h.advance(Duration::from_secs(10));
    assert!(h.notification_ids().is_empty(), "what the summary stood for is not shown again");
    assert_eq!(h.engine.ingest_push(h.now, summary).unwrap(), PushOutcome::Duplicate { id: "d2".into() });
    // Everything shown from a push is acked to the server.
    h.advance(Duration::from_secs(2));
    let acked = h.server.acked();
    for id in ["big1", "big2", "d1", "d2"] {
        assert!(acked.iter().any(|a| a == id), "{id} acked: {acked:?}");
    }
    // The SDK's metrics count each form's duplicates on the push path (the second lightweight push, the failed
    // fetch of something seen, the summary again) and the socket copies on the socket path.
    let s = h.engine.stats();
    assert_eq!((s.duplicates_push, s.duplicates_socket), (3, 2), "{s:?}");
}
