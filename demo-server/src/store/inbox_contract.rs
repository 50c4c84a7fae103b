//! The behaviour every [`InboxStore`] backend must show, written once and run against each backend
//! (`inbox_store_tests!(factory)` in the backend's tests), and the recount property.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tidings_core::protocol::{
    ArchivedFilter, InboxAction, InboxCounts, InboxItem, InboxQuery, MarkAllAction, Notification, NotificationFields,
    Persistence, Priority, StatusFilter,
};

use super::contract::{Factory, clock, limits};
use super::{ChangeKind, ChangeRequest, InboxAdd, InboxChange, InboxStore};

pub(crate) fn note(id: &str, stream: &str, kind: &str) -> Notification {
    Notification::from(NotificationFields {
        id: id.into(),
        stream: stream.into(),
        offset: Some(1),
        epoch: "e".into(),
        kind: kind.into(),
        priority: Priority::Important,
        persistence: Persistence::Persistent,
        title: Some(format!("title {id}")),
        body: None,
        data: None,
        group: None,
        created_at: 1,
    })
}

/// A notification published to `streams` (one copy per stream).
pub(crate) fn add(id: &str, streams: &[&str], at: u64) -> InboxAdd {
    InboxAdd { copies: streams.iter().map(|s| note(id, s, "t")).collect(), at }
}

pub(crate) async fn mark(
    inbox: &dyn InboxStore,
    user: &str,
    action: InboxAction,
    ids: &[&str],
    at: u64,
) -> InboxChange {
    let kind = ChangeKind::Mark { action, ids: ids.iter().map(|s| (*s).to_owned()).collect() };
    inbox.change(user, ChangeRequest { op_id: None, at, kind }).await.expect("change")
}

pub(crate) async fn mark_all(
    inbox: &dyn InboxStore,
    user: &str,
    action: MarkAllAction,
    up_to: Option<u64>,
    at: u64,
) -> InboxChange {
    let kind = ChangeKind::MarkAll { action, up_to };
    inbox.change(user, ChangeRequest { op_id: None, at, kind }).await.expect("change")
}

/// Every item of `user`'s inbox, archived ones included, newest first (all pages).
pub(crate) async fn all_items(inbox: &dyn InboxStore, user: &str) -> (Vec<InboxItem>, InboxCounts) {
    let mut items = Vec::new();
    let mut before = None;
    loop {
        let query = InboxQuery { before, limit: Some(7), archived: ArchivedFilter::Include, ..InboxQuery::default() };
        let page = inbox.list(user, query).await.expect("list");
        items.extend(page.items);
        match page.next {
            Some(next) => before = Some(next),
            None => return (items, page.counts),
        }
    }
}

/// The counts recounted from the items.
pub(crate) fn recount(items: &[InboxItem]) -> [u64; 3] {
    let live: Vec<&InboxItem> = items.iter().filter(|i| i.archived_at.is_none()).collect();
    [
        live.iter().filter(|i| i.seen_at.is_none()).count() as u64,
        live.iter().filter(|i| i.read_at.is_none()).count() as u64,
        live.len() as u64,
    ]
}

/// The version of a new inbox in these tests (their clocks start at 1,000 ms).
const V: u64 = 1_000_000;

fn triple(c: &InboxCounts) -> [u64; 3] {
    [c.unseen, c.unread, c.total]
}

fn ids(items: &[InboxItem]) -> Vec<&str> {
    items.iter().map(|i| i.id.as_str()).collect()
}

pub(crate) async fn items_go_to_addressed_users_and_topic_followers_once(make: &Factory) {
    let (c, _) = clock(1_000);
    let (stores, _guard) = make(limits(10), c);
    let inbox = &*stores.inbox;
    assert!(inbox.follow("carol", "news", true).await.unwrap());
    assert!(!inbox.follow("carol", "news", true).await.unwrap(), "following twice changes nothing");
    assert!(inbox.follow("alice", "news", true).await.unwrap());
    let changes =
        inbox.add(vec![add("n1", &["user:alice", "topic:news"], 10), add("n2", &["user:bob"], 11)]).await.unwrap();
    let mut users: Vec<&str> = changes.iter().map(|c| c.user.as_str()).collect();
    users.sort_unstable();
    assert_eq!(users, ["alice", "bob", "carol"]);
    let alice = changes.iter().find(|c| c.user == "alice").unwrap();
    assert_eq!(alice.update.items.len(), 1, "alice is addressed and follows news: one item");
    let n = alice.update.items[0].notification.as_ref().unwrap();
    assert_eq!(n.stream(), "user:alice", "the user stream's copy");
    // A new inbox's versions start from the clock (1,000 ms here), above any version of an inbox lost before.
    assert_eq!((alice.update.counts.unread, alice.update.counts.version, alice.update.counts.head), (1, V + 1, 1));
    let carol = changes.iter().find(|c| c.user == "carol").unwrap();
    assert_eq!(carol.update.items[0].notification.as_ref().unwrap().stream(), "topic:news");
    // The same notification again (a retried publish) adds nothing.
    assert!(inbox.add(vec![add("n1", &["user:alice", "topic:news"], 12)]).await.unwrap().is_empty());
    // Two items for one user in one batch: one version.
    let changes = inbox.add(vec![add("n3", &["user:alice"], 13), add("n4", &["user:alice"], 13)]).await.unwrap();
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].update.counts, InboxCounts { unseen: 3, unread: 3, total: 3, version: V + 2, head: 3 });
    assert_eq!(
        changes[0].update.items.iter().map(|i| (i.seq, i.version)).collect::<Vec<_>>(),
        [(2, V + 2), (3, V + 2)]
    );
    assert!(inbox.follow("carol", "news", false).await.unwrap());
    assert!(inbox.add(vec![add("n5", &["topic:news"], 14)]).await.unwrap().iter().all(|c| c.user != "carol"));
    assert_eq!(inbox.following("alice").await.unwrap(), ["news"]);
    assert!(inbox.following("carol").await.unwrap().is_empty());
    assert_eq!(inbox.counts("nobody").await.unwrap(), InboxCounts::default());
}

pub(crate) async fn transitions_follow_the_documented_table(make: &Factory) {
    let (c, _) = clock(1_000);
    let (stores, _guard) = make(limits(10), c);
    let inbox = &*stores.inbox;
    inbox.add(vec![add("a", &["user:u"], 1), add("b", &["user:u"], 1)]).await.unwrap();
    let r = mark(inbox, "u", InboxAction::Read, &["a", "zzz"], 5).await;
    assert_eq!(r.unknown, ["zzz"]);
    assert_eq!(r.update.items.len(), 1);
    let a = &r.update.items[0];
    assert_eq!((a.seen_at, a.read_at, a.version), (Some(5), Some(5), V + 2), "read marks seen too");
    assert!(a.notification.is_none(), "changed items come without their notification");
    assert_eq!(triple(&r.update.counts), [1, 1, 2]);
    // Reading a read item changes nothing: no new version.
    let again = mark(inbox, "u", InboxAction::Read, &["a"], 6).await;
    assert!(again.update.items.is_empty() && !again.changed());
    assert_eq!(again.update.counts.version, V + 2);
    let r = mark(inbox, "u", InboxAction::Unread, &["a"], 7).await;
    assert_eq!((r.update.items[0].seen_at, r.update.items[0].read_at), (Some(5), None), "unread keeps seen");
    assert_eq!(triple(&r.update.counts), [1, 2, 2]);
    let r = mark(inbox, "u", InboxAction::Seen, &["b"], 8).await;
    assert_eq!(triple(&r.update.counts), [0, 2, 2]);
    let r = mark(inbox, "u", InboxAction::Read, &["b"], 9).await;
    assert_eq!(r.update.items[0].seen_at, Some(8), "seen keeps its first time");
    let r = mark(inbox, "u", InboxAction::Unseen, &["b"], 10).await;
    assert_eq!((r.update.items[0].seen_at, r.update.items[0].read_at), (None, None), "unseen clears read too");
    assert_eq!(triple(&r.update.counts), [1, 2, 2]);
    let r = mark(inbox, "u", InboxAction::Archive, &["b"], 11).await;
    assert_eq!(triple(&r.update.counts), [0, 1, 1], "archived items count in nothing");
    let page = inbox.list("u", InboxQuery::default()).await.unwrap();
    assert_eq!(ids(&page.items), ["a"], "archived items are left out by default");
    let only = InboxQuery { archived: ArchivedFilter::Only, ..InboxQuery::default() };
    assert_eq!(ids(&inbox.list("u", only).await.unwrap().items), ["b"]);
    let r = mark(inbox, "u", InboxAction::Unarchive, &["b"], 12).await;
    assert_eq!(triple(&r.update.counts), [1, 2, 2]);
    assert_eq!(r.update.counts.version, V + 8);
}

pub(crate) async fn mark_all_is_bounded_by_its_cursor_and_writes_no_item(make: &Factory) {
    let (c, _) = clock(1_000);
    let (stores, _guard) = make(limits(10), c);
    let inbox = &*stores.inbox;
    for i in 1..=5 {
        inbox.add(vec![add(&format!("n{i}"), &["user:u"], i)]).await.unwrap();
    }
    mark(inbox, "u", InboxAction::Read, &["n1"], 50).await;
    // The client knew items up to seq 3; n4 and n5 arrived meanwhile.
    let r = mark_all(inbox, "u", MarkAllAction::Read, Some(3), 60).await;
    let m = r.update.mark.unwrap();
    assert_eq!((m.up_to, m.at, m.version), (3, 60, r.update.counts.version));
    assert_eq!(triple(&r.update.counts), [2, 2, 5], "the two that arrived during the call stay unread and unseen");
    let (items, counts) = all_items(inbox, "u").await;
    assert_eq!(recount(&items), triple(&counts));
    let state: Vec<(&str, Option<u64>)> = items.iter().map(|i| (i.id.as_str(), i.read_at)).collect();
    assert_eq!(
        state,
        [("n5", None), ("n4", None), ("n3", Some(60)), ("n2", Some(60)), ("n1", Some(50))],
        "an item read before keeps its time"
    );
    // Marking one unread after the mark: it stays unread; a later mark reads it again.
    let r = mark(inbox, "u", InboxAction::Unread, &["n2"], 70).await;
    assert_eq!(triple(&r.update.counts), [2, 3, 5]);
    // A device that knew only up to seq 2 marks all read: below the newest mark, only n2 changes.
    let r = mark_all(inbox, "u", MarkAllAction::Read, Some(2), 80).await;
    assert_eq!(triple(&r.update.counts), [2, 2, 5]);
    let (items, counts) = all_items(inbox, "u").await;
    assert_eq!(recount(&items), triple(&counts));
    assert_eq!(items.iter().find(|i| i.id == "n2").unwrap().read_at, Some(80));
    // Mark all seen, everything: nothing unseen, unread unchanged.
    let r = mark_all(inbox, "u", MarkAllAction::Seen, None, 90).await;
    assert_eq!(triple(&r.update.counts), [0, 2, 5]);
    assert_eq!(r.update.mark.unwrap().up_to, 5, "no cursor: the newest item");
    // A cursor above the head is the head.
    let r = mark_all(inbox, "u", MarkAllAction::Read, Some(999), 95).await;
    assert_eq!((triple(&r.update.counts), r.update.mark.unwrap().up_to), ([0, 0, 5], 5));
    // An item added afterwards is unread.
    let c = inbox.add(vec![add("n6", &["user:u"], 96)]).await.unwrap();
    assert_eq!(triple(&c[0].update.counts), [1, 1, 6]);
    let (items, counts) = all_items(inbox, "u").await;
    assert_eq!(recount(&items), triple(&counts));
    // An empty inbox: nothing to mark.
    let r = mark_all(inbox, "empty", MarkAllAction::Read, None, 97).await;
    assert!(r.update.mark.is_none() && triple(&r.update.counts) == [0, 0, 0] && r.update.counts.head == 0);
}

pub(crate) async fn pages_are_newest_first_filtered_and_stable_under_inserts(make: &Factory) {
    let (c, _) = clock(1_000);
    let (stores, _guard) = make(limits(10), c);
    let inbox = &*stores.inbox;
    inbox.follow("u", "news", true).await.unwrap();
    for i in 1..=6 {
        let mut n = add(&format!("n{i}"), &["user:u"], i);
        if i % 2 == 0 {
            n.copies = vec![note(&format!("n{i}"), "topic:news", "digest")];
        }
        inbox.add(vec![n]).await.unwrap();
    }
    let q = |before, limit| InboxQuery { before, limit: Some(limit), ..InboxQuery::default() };
    let first = inbox.list("u", q(None, 4)).await.unwrap();
    assert_eq!(ids(&first.items), ["n6", "n5", "n4", "n3"]);
    assert_eq!(first.next, Some(3));
    // New items arrive between pages: the next page continues where the first ended.
    inbox.add(vec![add("n7", &["user:u"], 7)]).await.unwrap();
    let second = inbox.list("u", q(first.next, 4)).await.unwrap();
    assert_eq!((ids(&second.items), second.next), (vec!["n2", "n1"], None));
    assert_eq!(second.counts.total, 7);
    let typed = InboxQuery { kind: Some("digest".into()), ..InboxQuery::default() };
    assert_eq!(ids(&inbox.list("u", typed).await.unwrap().items), ["n6", "n4", "n2"]);
    let topic = InboxQuery { topic: Some("news".into()), limit: Some(2), ..InboxQuery::default() };
    let page = inbox.list("u", topic).await.unwrap();
    assert_eq!((ids(&page.items), page.next), (vec!["n6", "n4"], Some(4)));
    mark(inbox, "u", InboxAction::Read, &["n7", "n3"], 9).await;
    let unread = InboxQuery { status: StatusFilter::Unread, limit: Some(3), ..InboxQuery::default() };
    let page = inbox.list("u", unread.clone()).await.unwrap();
    assert_eq!((ids(&page.items), page.next), (vec!["n6", "n5", "n4"], Some(4)));
    let page = inbox.list("u", InboxQuery { before: page.next, ..unread }).await.unwrap();
    assert_eq!((ids(&page.items), page.next), (vec!["n2", "n1"], None));
    let read = InboxQuery { status: StatusFilter::Read, ..InboxQuery::default() };
    assert_eq!(ids(&inbox.list("u", read).await.unwrap().items), ["n7", "n3"]);
    assert!(inbox.list("nobody", InboxQuery::default()).await.unwrap().items.is_empty());
    let full = inbox.list("u", q(None, 7)).await.unwrap();
    assert_eq!((full.items.len(), full.next), (7, None), "a page that ends exactly at the oldest item");
}

pub(crate) async fn op_ids_apply_a_change_once(make: &Factory) {
    let (c, _) = clock(1_000);
    let (stores, _guard) = make(limits(10), c);
    let inbox = &*stores.inbox;
    inbox.add(vec![add("a", &["user:u"], 1)]).await.unwrap();
    let request = |action, at| ChangeRequest {
        op_id: Some("op-1".into()),
        at,
        kind: ChangeKind::Mark { action, ids: vec!["a".into()] },
    };
    let first = inbox.change("u", request(InboxAction::Read, 5)).await.unwrap();
    assert!(!first.update.duplicate && first.update.counts.unread == 0);
    mark(inbox, "u", InboxAction::Unread, &["a"], 6).await;
    let again = inbox.change("u", request(InboxAction::Read, 7)).await.unwrap();
    assert!(again.update.duplicate, "the same op id is applied once");
    assert_eq!(again.update.counts.unread, 1, "and answered with the current counts");
    assert!(!again.changed());
    // Op ids are per user.
    inbox.add(vec![add("a", &["user:v"], 1)]).await.unwrap();
    assert!(!inbox.change("v", request(InboxAction::Read, 8)).await.unwrap().update.duplicate);
}

pub(crate) async fn old_items_leave_by_count_and_by_age(make: &Factory) {
    let (c, now) = clock(1_000_000);
    let mut l = limits(10);
    l.inbox_max_items = 3;
    l.inbox_retention = std::time::Duration::from_secs(60);
    let (stores, _guard) = make(l, c);
    let inbox = &*stores.inbox;
    for i in 1..=3 {
        inbox.add(vec![add(&format!("n{i}"), &["user:u"], 1_000_000 + i)]).await.unwrap();
    }
    mark(inbox, "u", InboxAction::Read, &["n1"], 1_000_010).await;
    let c = inbox.add(vec![add("n4", &["user:u"], 1_030_000), add("n5", &["user:u"], 1_030_000)]).await.unwrap();
    assert_eq!(c[0].update.removed, ["n1", "n2"], "the oldest leave beyond the limit");
    assert_eq!(triple(&c[0].update.counts), [3, 3, 3]);
    let (items, counts) = all_items(inbox, "u").await;
    assert_eq!((ids(&items), recount(&items)), (vec!["n5", "n4", "n3"], triple(&counts)));
    // n3 is older than the retention at 1_062_000; n4 and n5 are not.
    now.store(1_062_000, Ordering::SeqCst);
    let changes = inbox.prune(1_062_000).await.unwrap();
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].update.removed, ["n3"]);
    assert_eq!(triple(&changes[0].update.counts), [2, 2, 2]);
    assert!(changes[0].update.counts.version > counts.version, "a removal is a change");
    assert!(inbox.prune(1_062_000).await.unwrap().is_empty());
    let (items, _) = all_items(inbox, "u").await;
    assert_eq!(ids(&items), ["n5", "n4"]);
}

/// One step of [`counts_match_a_recount`]: a change by one of several devices.
#[derive(Clone, Debug)]
pub(crate) enum Step {
    Add(u8),
    Mark(InboxAction, Vec<u8>),
    MarkAll(MarkAllAction, Option<u8>),
    Resend,
}

pub(crate) fn step() -> impl proptest::strategy::Strategy<Value = Step> {
    use proptest::prelude::*;
    let action = proptest::sample::select(InboxAction::ALL.to_vec());
    let all = prop_oneof![Just(MarkAllAction::Read), Just(MarkAllAction::Seen)];
    prop_oneof![
        3 => (0u8..40).prop_map(Step::Add),
        4 => (action, proptest::collection::vec(0u8..40, 1..4)).prop_map(|(a, ids)| Step::Mark(a, ids)),
        2 => (all, proptest::option::of(0u8..40)).prop_map(|(a, u)| Step::MarkAll(a, u)),
        1 => Just(Step::Resend),
    ]
}

/// Applies `steps` (interleaved changes of several devices; `Resend` repeats the previous change with its op id,
/// as an SDK resending its queue) and checks after each that the counts equal a recount of the items, that
/// `unseen ≤ unread ≤ total`, and that versions only grow.
pub(crate) async fn counts_match_a_recount(inbox: Arc<dyn InboxStore>, steps: Vec<Step>) {
    let mut last: Option<ChangeRequest> = None;
    let mut version = 0;
    for (n, step) in steps.into_iter().enumerate() {
        let at = 1_000 + n as u64;
        let counts = match step {
            Step::Add(i) => {
                let changes = inbox.add(vec![add(&format!("n{i}"), &["user:u"], at)]).await.unwrap();
                changes.first().map(|c| c.update.counts)
            }
            Step::Mark(action, items) => {
                let ids = items.iter().map(|i| format!("n{i}")).collect();
                let request =
                    ChangeRequest { op_id: Some(format!("op{n}")), at, kind: ChangeKind::Mark { action, ids } };
                last = Some(request.clone());
                Some(inbox.change("u", request).await.unwrap().update.counts)
            }
            Step::MarkAll(action, up_to) => {
                let kind = ChangeKind::MarkAll { action, up_to: up_to.map(u64::from) };
                let request = ChangeRequest { op_id: Some(format!("op{n}")), at, kind };
                last = Some(request.clone());
                Some(inbox.change("u", request).await.unwrap().update.counts)
            }
            Step::Resend => match last.clone() {
                Some(request) => {
                    let c = inbox.change("u", request).await.unwrap();
                    assert!(c.update.duplicate);
                    Some(c.update.counts)
                }
                None => None,
            },
        };
        let (items, stored) = all_items(&*inbox, "u").await;
        if let Some(counts) = counts {
            assert_eq!(counts, stored, "the answer carries the stored counts");
        }
        assert_eq!(recount(&items), triple(&stored), "after step {n}: items {items:?}");
        assert!(stored.unseen <= stored.unread && stored.unread <= stored.total);
        assert!(stored.version >= version);
        version = stored.version;
        for item in &items {
            assert!(item.read_at.is_none() || item.seen_at.is_some(), "a read item is seen: {item:?}");
            assert!(item.version <= stored.version);
        }
    }
}

macro_rules! inbox_store_tests {
    ($make:path) => {
        $crate::store::inbox_contract::inbox_store_tests!(@each $make,
            items_go_to_addressed_users_and_topic_followers_once,
            transitions_follow_the_documented_table,
            mark_all_is_bounded_by_its_cursor_and_writes_no_item,
            pages_are_newest_first_filtered_and_stable_under_inserts,
            op_ids_apply_a_change_once,
            old_items_leave_by_count_and_by_age,
        );
    };
    (@each $make:path, $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                $crate::store::inbox_contract::$name(&$make).await;
            }
        )*
    };
}

pub(crate) use inbox_store_tests;
