//! The engine's inbox (protocol §13) and history requests (§14) on simulated time, against the model in `sim/`.

mod sim;

use std::time::Duration;

use sim::Harness;
use tidings_core::engine::{Cursor, Event, NetworkEvent, Reply, RequestError, RequestId};
use tidings_core::protocol::{
    self, ClientFrame, ErrorCode, InboxAction, InboxCounts, InboxQuery, InboxUpdate, MarkAllAction, Priority,
    ServerFrame,
};

fn connected() -> Harness {
    let mut config = Harness::config();
    config.persistence = true;
    let mut h = Harness::new(config, "alice");
    h.connect();
    h
}

fn counts_events(h: &Harness) -> Vec<InboxCounts> {
    h.events
        .iter()
        .filter_map(|e| match e {
            Event::InboxCounts(c) => Some(*c),
            _ => None,
        })
        .collect()
}

fn reply(h: &Harness, id: RequestId) -> &Result<Reply, RequestError> {
    &h.replies.iter().find(|(r, _)| *r == id).unwrap_or_else(|| panic!("no reply to {id:?}: {:?}", h.replies)).1
}

fn changed(h: &Harness, id: RequestId) -> InboxUpdate {
    match reply(h, id) {
        Ok(Reply::Changed(u)) => u.clone(),
        other => panic!("{other:?}"),
    }
}

fn sent<T>(h: &Harness, f: impl Fn(&ClientFrame) -> Option<T>) -> Vec<T> {
    h.server.received.iter().filter_map(f).collect()
}

fn view_ids(h: &Harness) -> Vec<String> {
    h.engine.inbox_items().map(|i| i.id.clone()).collect()
}

#[test]
fn counts_come_with_the_watch_and_only_newer_ones_replace_them() {
    let mut h = Harness::new(Harness::config(), "alice");
    h.server.inbox.add("a");
    h.server.inbox.add("b");
    h.connect();
    assert_eq!(sent(&h, |f| matches!(f, ClientFrame::InboxWatch { .. }).then_some(())).len(), 1);
    let c = h.engine.inbox_counts().expect("the watch's answer");
    assert_eq!((c.unread, c.total, c.version, c.head), (2, 2, 2, 2));
    assert_eq!(counts_events(&h), [c]);
    h.take_events();
    // A live change, then an older frame that crossed it (another tab, another transport): only the newer applies.
    let newer = InboxUpdate { counts: InboxCounts { unread: 1, version: 5, ..c }, ..InboxUpdate::default() };
    let older = InboxUpdate { counts: InboxCounts { unread: 7, version: 4, ..c }, ..InboxUpdate::default() };
    for u in [newer, older.clone(), older] {
        h.deliver(Some(protocol::encode_server_frame(&ServerFrame::Inbox(u))));
    }
    assert_eq!(counts_events(&h).iter().map(|c| (c.unread, c.version)).collect::<Vec<_>>(), [(1, 5)]);
    assert_eq!(h.engine.inbox_counts().unwrap().unread, 1, "never moved back, never counted twice");
    // Each connection watches once.
    h.server_close(Some(1006));
    h.advance(Duration::from_secs(30));
    assert_eq!(sent(&h, |f| matches!(f, ClientFrame::InboxWatch { .. }).then_some(())).len(), 2);
}

#[test]
fn a_change_made_offline_is_kept_across_a_restart_and_applied_once_after_reconnecting() {
    let mut h = connected();
    let frame = h.server.inbox.add("n1");
    h.deliver(frame);
    h.engine.handle_network(h.now, NetworkEvent::Unavailable);
    h.pump();
    let id = h.engine.inbox_mark(h.now, InboxAction::Read, vec!["n1".into()]).unwrap();
    h.pump();
    assert_eq!(h.engine.inbox_pending_changes(), 1);
    assert_eq!(sent(&h, |f| matches!(f, ClientFrame::InboxMark { .. }).then_some(())).len(), 0, "offline: queued");
    // The app is killed and started again, online; the queue comes back from the store and is sent at once — the
    // server applies it, and its answer is lost with the connection.
    h.server.swallow_inbox_answers = true;
    h.restart();
    assert_eq!(h.engine.inbox_pending_changes(), 1, "restored from the store, not answered yet");
    let ops: Vec<String> = sent(&h, |f| match f {
        ClientFrame::InboxMark { op_id, .. } => Some(op_id.clone()),
        _ => None,
    });
    assert_eq!(ops.len(), 1);
    assert_eq!(h.server.inbox.applied, 1);
    h.server.swallow_inbox_answers = false;
    h.server_close(Some(1006));
    h.advance(Duration::from_secs(30));
    let again: Vec<String> = sent(&h, |f| match f {
        ClientFrame::InboxMark { op_id, .. } => Some(op_id.clone()),
        _ => None,
    });
    assert_eq!(again, [ops[0].clone(), ops[0].clone()], "sent again with the same op id");
    assert_eq!(h.server.inbox.applied, 1, "and applied once");
    assert_eq!(h.engine.inbox_pending_changes(), 0);
    assert_eq!(h.engine.inbox_counts().unwrap().unread, 0, "the counts converged");
    // The answer belongs to a request of the engine before the restart: nobody waits for `id` any more.
    let _ = id;
}

#[test]
fn mark_all_is_bounded_by_the_newest_item_the_client_knows() {
    let mut h = connected();
    for id in ["a", "b"] {
        let frame = h.server.inbox.add(id);
        h.deliver(frame);
    }
    assert_eq!(h.engine.inbox_counts().unwrap().head, 2);
    let id = h.engine.inbox_mark_all(h.now, MarkAllAction::Read);
    // "c" reaches the server before the mark all does; its live frame has not reached the client.
    let _ = h.server.inbox.add("c");
    h.pump();
    let up_to: Vec<Option<u64>> = sent(&h, |f| match f {
        ClientFrame::InboxMarkAll { up_to, .. } => Some(*up_to),
        _ => None,
    });
    assert_eq!(up_to, [Some(2)]);
    let u = changed(&h, id);
    assert_eq!((u.counts.unread, u.counts.total), (1, 3), "c stays unread");
    assert_eq!(h.engine.inbox_counts().unwrap().unread, 1);
}

#[test]
fn the_view_loads_page_by_page_and_follows_every_change() {
    let mut h = connected();
    for i in 1..=5 {
        let _ = h.server.inbox.add(&format!("n{i}"));
    }
    let first = h.engine.inbox_load_more(h.now, Some(2)).unwrap();
    h.pump();
    assert!(matches!(reply(&h, first), Ok(Reply::Page(p)) if p.next == Some(4)));
    assert_eq!(view_ids(&h), ["n5", "n4"]);
    assert!(h.events.contains(&Event::InboxChanged));
    h.engine.inbox_load_more(h.now, Some(2)).unwrap();
    h.engine.inbox_load_more(h.now, Some(2)).unwrap();
    h.pump();
    // Both asked for the page before n4 (sent in one turn): the view holds each item once.
    assert_eq!(view_ids(&h), ["n5", "n4", "n3", "n2"]);
    h.engine.inbox_load_more(h.now, None).unwrap();
    h.pump();
    assert_eq!(view_ids(&h), ["n5", "n4", "n3", "n2", "n1"]);
    assert!(h.engine.inbox_complete());
    // A new item, a change from another device, a mark all, an archive: the view follows.
    let frame = h.server.inbox.add("n6");
    h.deliver(frame);
    assert_eq!(view_ids(&h)[0], "n6");
    let mut other = h.server.inbox.mark("other-1", InboxAction::Read, &["n2".into()]);
    other.reference = None;
    h.deliver(Some(protocol::encode_server_frame(&ServerFrame::Inbox(other))));
    let n2 = h.engine.inbox_items().find(|i| i.id == "n2").unwrap().clone();
    assert!(n2.read_at.is_some() && n2.notification.is_some(), "the state changes, the content stays");
    let mut all = h.server.inbox.mark_all("other-2", MarkAllAction::Seen, Some(3));
    all.reference = None;
    h.deliver(Some(protocol::encode_server_frame(&ServerFrame::Inbox(all))));
    let seen: Vec<bool> = h.engine.inbox_items().map(|i| i.seen_at.is_some()).collect();
    assert_eq!(seen, [false, false, false, true, true, true], "n3 and below are seen");
    let id = h.engine.inbox_mark(h.now, InboxAction::Archive, vec!["n4".into()]).unwrap();
    h.pump();
    assert!(changed(&h, id).items.iter().any(|i| i.id == "n4"));
    assert!(!view_ids(&h).contains(&"n4".to_owned()), "archived items leave the view");
}

#[test]
fn reads_wait_for_the_connection_then_time_out_and_fail_when_closed() {
    let mut h = Harness::new(Harness::config(), "alice");
    h.engine.handle_network(h.now, NetworkEvent::Unavailable);
    h.connect();
    let list = h.engine.inbox_list(h.now, InboxQuery::default()).unwrap();
    let history = h.engine.history(h.now, "topic:news", None, Some(5)).unwrap();
    h.advance(Duration::from_secs(29));
    assert!(h.replies.is_empty());
    h.advance(Duration::from_secs(2));
    assert_eq!(reply(&h, list), &Err(RequestError::TimedOut));
    assert_eq!(reply(&h, history), &Err(RequestError::TimedOut));
    let late = h.engine.inbox_list(h.now, InboxQuery::default()).unwrap();
    let change = h.engine.inbox_mark(h.now, InboxAction::Read, vec!["x".into()]).unwrap();
    h.engine.close(h.now);
    h.pump();
    assert_eq!(reply(&h, late), &Err(RequestError::Closed));
    assert!(h.replies.iter().all(|(r, _)| *r != change), "a change stays queued in the store");
    assert_eq!(h.engine.snapshot().inbox_queue.len(), 1);
    // Bad arguments are refused at once.
    assert!(h.engine.inbox_mark(h.now, InboxAction::Read, vec![]).is_err());
    assert!(h.engine.inbox_mark(h.now, InboxAction::Read, vec!["no spaces".into()]).is_err());
    assert!(h.engine.history(h.now, "nonsense", None, None).is_err());
    assert!(h.engine.inbox_list(h.now, InboxQuery { limit: Some(0), ..InboxQuery::default() }).is_err());
}

#[test]
fn a_refused_change_is_answered_and_not_sent_again() {
    let mut h = connected();
    h.server.refuse_inbox = Some((ErrorCode::BadRequest, "inbox_mark: id \"x\" is invalid".into()));
    let id = h.engine.inbox_mark(h.now, InboxAction::Read, vec!["x".into()]).unwrap();
    h.pump();
    assert!(matches!(reply(&h, id), Err(RequestError::Refused { code: ErrorCode::BadRequest, .. })));
    assert_eq!(h.engine.inbox_pending_changes(), 0);
    h.server_close(Some(1006));
    h.advance(Duration::from_secs(30));
    assert_eq!(sent(&h, |f| matches!(f, ClientFrame::InboxMark { .. }).then_some(())).len(), 1);
}

#[test]
fn history_pages_come_from_the_server_after_the_cursor() {
    let mut h = connected();
    for i in 1..=4 {
        h.server.publish("topic:news", &format!("h{i}"), Priority::Important, None);
    }
    let epoch = h.server.streams["topic:news"].epoch.clone();
    let id = h.engine.history(h.now, "topic:news", Some(Cursor { epoch, offset: 1 }), Some(2)).unwrap();
    h.pump();
    let Ok(Reply::History(page)) = reply(&h, id) else { panic!("{:?}", h.replies) };
    let ids: Vec<&str> = page.items.iter().map(|n| n.id()).collect();
    assert_eq!((ids, page.next, page.head), (vec!["h2", "h3"], Some(3), 4));
}

#[test]
fn a_tab_that_follows_takes_the_counts_and_changes_its_leader_relays() {
    let mut leader = connected();
    let mut follower = Harness::new(Harness::config(), "alice");
    let frame = leader.server.inbox.add("n1");
    leader.deliver(frame);
    for text in &leader.delivered_frames {
        follower.engine.handle_relayed(follower.now, text).unwrap();
    }
    follower.pump();
    assert_eq!(follower.engine.inbox_counts(), leader.engine.inbox_counts());
    assert_eq!(view_ids(&follower), ["n1"], "the live item joins the follower's view too");
    // Relayed twice (a tab that joined while frames were in flight): nothing moves twice.
    for text in leader.delivered_frames.clone() {
        follower.engine.handle_relayed(follower.now, &text).unwrap();
    }
    follower.pump();
    assert_eq!(counts_events(&follower).len(), 2, "the watch's counts and the item's, once each");
}
