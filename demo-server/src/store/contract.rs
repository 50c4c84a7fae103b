//! The behaviour every store backend must show, written once and run against each backend
//! (`stream_store_tests!(factory)` in the backend's tests).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tidings_core::protocol::{NotificationFields, Persistence, Priority, PushPlatform};

use super::{Append, StoreLimits, Stores};
use crate::model::{AppendOutcome, Committed, Delivery, HistoryRead, Publication, PushRecord};

/// A clock tests move by hand (ms since the Unix epoch).
pub(crate) type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;
/// Keeps whatever a backend needs alive for the test (e.g. its temporary directory).
pub(crate) type Guard = Box<dyn std::any::Any + Send>;
/// Makes a fresh backend with these limits and clock.
pub(crate) type Factory = dyn Fn(StoreLimits, Clock) -> (Stores, Guard);

pub(crate) fn limits(items: usize) -> StoreLimits {
    StoreLimits {
        replay_max_items: items,
        replay_max_age: Duration::from_secs(60),
        idempotency_window: Duration::from_secs(600),
        idempotency_max_keys: 1000,
        acks_max_ids: 1000,
        acks_max_per_id: 1000,
        persistent_retention: Duration::from_secs(3600),
        ack_retention: Duration::from_secs(3600),
        inbox_retention: Duration::from_secs(3600),
        inbox_max_items: 1000,
        inbox_op_window: Duration::from_secs(600),
    }
}

/// A clock standing at `start` ms, and the handle that moves it.
pub(crate) fn clock(start: u64) -> (Clock, Arc<AtomicU64>) {
    let now = Arc::new(AtomicU64::new(start));
    let read = now.clone();
    (Arc::new(move || read.load(Ordering::SeqCst)), now)
}

pub(crate) fn publication(id: &str, streams: &[&str], persistence: Persistence, at: u64) -> Arc<Publication> {
    Arc::new(Publication {
        id: Arc::from(id),
        idempotent: false,
        streams: streams.iter().map(|s| (*s).to_owned()).collect(),
        fields: NotificationFields {
            id: id.to_owned(),
            stream: String::new(),
            offset: None,
            epoch: String::new(),
            kind: "t".into(),
            priority: Priority::Important,
            persistence,
            title: Some(format!("title {id}")),
            body: None,
            data: None,
            group: None,
            created_at: at,
        },
        request_id: None,
    })
}

pub(crate) fn keyed(id: &str, streams: &[&str], at: u64) -> Arc<Publication> {
    let mut p = Arc::unwrap_or_clone(publication(id, streams, Persistence::Bufferable, at));
    p.idempotent = true;
    Arc::new(p)
}

/// Appends `batch`, recording every `on_commit` call in `log`.
pub(crate) async fn append_logged(
    stores: &Stores,
    batch: Vec<Arc<Publication>>,
    log: &Arc<Mutex<Vec<Committed>>>,
) -> Vec<AppendOutcome> {
    let appends = batch
        .into_iter()
        .map(|publication| {
            let log = log.clone();
            Append { publication, on_commit: Box::new(move |c: &Committed| log.lock().unwrap().push(c.clone())) }
        })
        .collect();
    stores.streams.append(appends).await.into_iter().map(|r| r.expect("append succeeds")).collect()
}

pub(crate) async fn append(stores: &Stores, batch: Vec<Arc<Publication>>) -> Vec<AppendOutcome> {
    append_logged(stores, batch, &Arc::new(Mutex::new(Vec::new()))).await
}

fn deliveries(outcome: &AppendOutcome) -> &[Delivery] {
    match outcome {
        AppendOutcome::Appended { deliveries: d, .. } => d,
        AppendOutcome::Duplicate(_) => panic!("unexpected duplicate"),
    }
}

fn offsets(read: &HistoryRead) -> Vec<u64> {
    read.entries.iter().map(|e| e.offset).collect()
}

pub(crate) async fn offsets_count_up_per_stream_under_a_stable_epoch(make: &Factory) {
    let (clock, _) = clock(1_000);
    let (stores, _guard) = make(limits(10), clock);
    let out = append(
        &stores,
        vec![
            publication("a1", &["user:a"], Persistence::Bufferable, 1_000),
            publication("a2", &["user:a"], Persistence::Persistent, 1_000),
            publication("b1", &["topic:b", "user:a"], Persistence::Bufferable, 1_000),
        ],
    )
    .await;
    let positions: Vec<Vec<(&str, Option<u64>)>> =
        out.iter().map(|o| deliveries(o).iter().map(|d| (d.stream.as_str(), d.offset)).collect()).collect();
    assert_eq!(
        positions,
        [vec![("user:a", Some(1))], vec![("user:a", Some(2))], vec![("topic:b", Some(1)), ("user:a", Some(3))]]
    );
    let epoch = deliveries(&out[0])[0].epoch.clone();
    assert_eq!(epoch.len(), 8);
    assert!(out.iter().flat_map(deliveries).all(|d| d.epoch == epoch), "one stable epoch");
    let read = stores.streams.read("user:a", None).await.unwrap();
    assert_eq!((&*read.state.epoch, read.state.head, read.state.oldest), (epoch.as_str(), 3, 1));
    assert!(read.entries.is_empty(), "no position, no entries");
    let read = stores.streams.read("user:a", Some((&epoch, 1))).await.unwrap();
    assert_eq!(offsets(&read), [2, 3]);
    let frame = read.entries[1].frame.as_str();
    assert!(frame.starts_with(r#"{"op":"notification","id":"b1","stream":"user:a","offset":3,"epoch":""#), "{frame}");
    assert!(frame.contains(r#""title":"title b1""#) && frame.contains(r#""created_at":1000"#), "{frame}");
}

pub(crate) async fn a_new_stream_has_head_zero_in_the_current_epoch(make: &Factory) {
    let (clock, _) = clock(1_000);
    let (stores, _guard) = make(limits(10), clock);
    let read = stores.streams.read("user:new", Some(("whatever", 0))).await.unwrap();
    assert_eq!((read.state.head, read.state.oldest, read.entries.len()), (0, 1, 0));
    let epoch = stores.streams.epoch("user:new").await.unwrap();
    assert_eq!(read.state.epoch, epoch);
    assert_eq!(stores.streams.read("user:new", None).await.unwrap().state.epoch, epoch, "the epoch is stable");
    let out = append(&stores, vec![publication("n1", &["user:new"], Persistence::Bufferable, 1_000)]).await;
    assert_eq!(deliveries(&out[0])[0].epoch, *epoch);
}

pub(crate) async fn the_replay_window_keeps_the_newest_items(make: &Factory) {
    let (clock, _) = clock(1_000);
    let (stores, _guard) = make(limits(3), clock);
    for i in 1..=5 {
        append(&stores, vec![publication(&format!("n{i}"), &["user:a"], Persistence::Bufferable, 1_000)]).await;
    }
    let s = &stores.streams;
    let epoch = s.epoch("user:a").await.unwrap().to_string();
    let read = s.read("user:a", Some((&epoch, 2))).await.unwrap();
    assert_eq!((read.state.head, read.state.oldest), (5, 3));
    assert_eq!(offsets(&read), [3, 4, 5]);
    assert!(read.entries[0].frame.as_str().contains(r#""id":"n3""#));
    assert_eq!(offsets(&s.read("user:a", Some((&epoch, 4))).await.unwrap()), [5]);
    assert_eq!(offsets(&s.read("user:a", Some((&epoch, 5))).await.unwrap()), [] as [u64; 0], "nothing after the head");
    assert_eq!(offsets(&s.read("user:a", Some((&epoch, 1))).await.unwrap()), [3, 4, 5], "evicted: all it holds");
    assert_eq!(offsets(&s.read("user:a", Some((&epoch, 9))).await.unwrap()), [3, 4, 5], "ahead: all it holds");
    assert_eq!(offsets(&s.read("user:a", Some(("other", 4))).await.unwrap()), [3, 4, 5], "another epoch: all");
}

pub(crate) async fn items_age_out_of_the_replay_window(make: &Factory) {
    let (clock, now) = clock(1_000_000);
    let (stores, _guard) = make(limits(100), clock);
    append(&stores, vec![publication("old", &["user:a"], Persistence::Bufferable, 1_000_000)]).await;
    now.store(1_030_000, Ordering::SeqCst);
    append(&stores, vec![publication("new", &["user:a"], Persistence::Persistent, 1_030_000)]).await;
    now.store(1_061_000, Ordering::SeqCst);
    let epoch = stores.streams.epoch("user:a").await.unwrap().to_string();
    let read = stores.streams.read("user:a", Some((&epoch, 0))).await.unwrap();
    assert_eq!((read.state.head, read.state.oldest), (2, 2), "the first item is older than 60 s");
    assert_eq!(offsets(&read), [2]);
    now.store(1_091_000, Ordering::SeqCst);
    let read = stores.streams.read("user:a", Some((&epoch, 1))).await.unwrap();
    assert_eq!((read.state.head, read.state.oldest), (2, 3), "nothing replayable: oldest is head + 1");
    assert!(read.entries.is_empty());
}

pub(crate) async fn ephemeral_notifications_get_no_offset_and_are_not_kept(make: &Factory) {
    let (clock, _) = clock(1_000);
    let (stores, _guard) = make(limits(10), clock);
    let log = Arc::new(Mutex::new(Vec::new()));
    let out = append_logged(
        &stores,
        vec![
            publication("e1", &["user:a", "topic:t"], Persistence::Ephemeral, 1_000),
            publication("b1", &["user:a"], Persistence::Bufferable, 1_000),
        ],
        &log,
    )
    .await;
    assert_eq!(deliveries(&out[0]).iter().map(|d| d.offset).collect::<Vec<_>>(), [None, None]);
    assert_eq!(deliveries(&out[1])[0].offset, Some(1), "the ephemeral one did not move the head");
    let committed = log.lock().unwrap().clone();
    assert_eq!(committed.len(), 3, "every stream of every publication is handed on");
    assert!(committed[0].frame.as_str().contains(r#""persistence":"ephemeral""#));
    assert_eq!(committed[0].offset, None);
    let epoch = stores.streams.epoch("user:a").await.unwrap().to_string();
    let read = stores.streams.read("user:a", Some((&epoch, 0))).await.unwrap();
    assert_eq!(offsets(&read), [1]);
}

pub(crate) async fn on_commit_sees_each_stream_in_offset_order_before_completion(make: &Factory) {
    let (clock, _) = clock(1_000);
    let (stores, _guard) = make(limits(100), clock);
    let log = Arc::new(Mutex::new(Vec::new()));
    let batch = (1..=20).map(|i| publication(&format!("n{i}"), &["user:a", "topic:x"], Persistence::Bufferable, 1_000));
    let out = append_logged(&stores, batch.collect(), &log).await;
    assert_eq!(out.len(), 20);
    let committed = log.lock().unwrap().clone();
    for stream in ["user:a", "topic:x"] {
        let seen: Vec<(Option<u64>, &str)> =
            committed.iter().filter(|c| &*c.stream == stream).map(|c| (c.offset, &*c.id)).collect();
        let want: Vec<(Option<u64>, String)> = (1..=20).map(|i| (Some(i), format!("n{i}"))).collect();
        assert_eq!(seen, want.iter().map(|(o, id)| (*o, id.as_str())).collect::<Vec<_>>(), "{stream}");
    }
    let frame = committed[0].frame.as_str();
    assert!(frame.contains(r#""id":"n1","stream":"user:a","offset":1"#), "{frame}");
}

pub(crate) async fn a_repeated_key_is_a_duplicate_within_the_window(make: &Factory) {
    let (clock, now) = clock(1_000_000);
    let (stores, _guard) = make(limits(10), clock);
    let log = Arc::new(Mutex::new(Vec::new()));
    let out = append_logged(
        &stores,
        vec![keyed("k", &["user:a", "topic:b"], 1_000_000), keyed("k", &["user:a"], 1_000_000)],
        &log,
    )
    .await;
    let first = deliveries(&out[0]).to_vec();
    assert_eq!(out[1], AppendOutcome::Duplicate(first.clone()), "a duplicate within one batch");
    assert_eq!(log.lock().unwrap().len(), 2, "the duplicate was not handed on");
    now.store(1_300_000, Ordering::SeqCst);
    let again = append(&stores, vec![keyed("k", &["user:z"], 1_300_000)]).await;
    assert_eq!(again[0], AppendOutcome::Duplicate(first));
    now.store(1_601_000, Ordering::SeqCst);
    let later = append(&stores, vec![keyed("k", &["user:a"], 1_601_000)]).await;
    assert_eq!(deliveries(&later[0])[0].offset, Some(2), "the window is 600 s: accepted again");
}

pub(crate) async fn acks_keep_the_first_of_each_device(make: &Factory) {
    let (clock, _) = clock(1_000);
    let (stores, _guard) = make(limits(10), clock);
    let (alice, bob): (Arc<str>, Arc<str>) = (Arc::from("alice"), Arc::from("bob"));
    let (d1, d2): (Arc<str>, Arc<str>) = (Arc::from("d1"), Arc::from("d2"));
    stores.acks.record(&alice, &d1, &["n1".into(), "n2".into()], 10).await.unwrap();
    stores.acks.record(&alice, &d1, &["n1".into()], 20).await.unwrap();
    stores.acks.record(&bob, &d2, &["n1".into()], 30).await.unwrap();
    let mut acks = Vec::new();
    for _ in 0..200 {
        acks = stores.acks.acks("n1").await.unwrap();
        if acks.len() == 2 {
            break;
        }
        // Durable backends may write acks behind; they show up within a commit.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let got: Vec<(&str, &str, u64)> = acks.iter().map(|a| (&*a.user, &*a.device, a.at)).collect();
    assert_eq!(got, [("alice", "d1", 10), ("bob", "d2", 30)]);
    assert!(stores.acks.acks("unknown").await.unwrap().is_empty());
}

pub(crate) async fn push_addresses_replace_per_device_and_move_with_their_token(make: &Factory) {
    let (clock, _) = clock(1_000);
    let (stores, _guard) = make(limits(10), clock);
    let record = |device: &str, token: &str, at: u64| PushRecord {
        device: Arc::from(device),
        platform: PushPlatform::Fcm,
        token: token.into(),
        registered_at: at,
    };
    let d = &stores.devices;
    d.register_push("alice", record("phone", "t1", 1)).await.unwrap();
    d.register_push("alice", record("tablet", "t2", 2)).await.unwrap();
    d.register_push("alice", record("phone", "t3", 3)).await.unwrap();
    d.register_push("bob", record("phone", "t9", 4)).await.unwrap();
    let tokens = |list: Vec<PushRecord>| list.into_iter().map(|r| (r.device.to_string(), r.token)).collect::<Vec<_>>();
    assert_eq!(
        tokens(d.push_addresses("alice").await.unwrap()),
        [("tablet".into(), "t2".into()), ("phone".into(), "t3".into())]
    );
    d.register_push("alice", record("new-phone", "t2", 5)).await.unwrap();
    assert_eq!(
        tokens(d.push_addresses("alice").await.unwrap()),
        [("phone".into(), "t3".into()), ("new-phone".into(), "t2".into())],
        "a token registered again by another device moves to it"
    );
    let alice = d.push_addresses("alice").await.unwrap();
    assert_eq!((alice[1].platform, alice[1].registered_at), (PushPlatform::Fcm, 5));
    assert!(d.push_addresses("nobody").await.unwrap().is_empty());
}

pub(crate) async fn a_notification_is_found_by_id_in_its_stream(make: &Factory) {
    let (clock, _) = clock(1_000);
    let (stores, _guard) = make(limits(10), clock);
    append(
        &stores,
        vec![
            publication("n1", &["user:a", "topic:t"], Persistence::Bufferable, 1_000),
            publication("n2", &["user:b"], Persistence::Persistent, 1_000),
        ],
    )
    .await;
    let found = stores.streams.find("user:a", "n1").await.unwrap().expect("found");
    assert_eq!(found.offset, 1);
    assert!(found.frame.as_str().contains(r#""id":"n1","stream":"user:a","offset":1"#), "{:?}", found.frame);
    assert_eq!(stores.streams.find("topic:t", "n1").await.unwrap().unwrap().offset, 1);
    assert!(stores.streams.find("user:a", "n2").await.unwrap().is_none(), "another user's notification");
    assert!(stores.streams.find("user:b", "nope").await.unwrap().is_none());
}

pub(crate) async fn a_push_address_is_deleted_only_while_it_is_the_same_token(make: &Factory) {
    let (clock, _) = clock(1_000);
    let (stores, _guard) = make(limits(10), clock);
    let record = |token: &str| PushRecord {
        device: Arc::from("phone"),
        platform: PushPlatform::Apns,
        token: token.into(),
        registered_at: 1,
    };
    stores.devices.register_push("alice", record("old")).await.unwrap();
    stores.devices.register_push("alice", record("new")).await.unwrap();
    assert!(!stores.devices.delete_push("alice", "phone", "old").await.unwrap(), "re-registered meanwhile");
    assert_eq!(stores.devices.push_addresses("alice").await.unwrap().len(), 1);
    assert!(stores.devices.delete_push("alice", "phone", "new").await.unwrap());
    assert!(stores.devices.push_addresses("alice").await.unwrap().is_empty());
    assert!(!stores.devices.delete_push("bob", "phone", "new").await.unwrap());
}

pub(crate) async fn settings_change_atomically_and_refuse_invalid_changes(make: &Factory) {
    use crate::planner::{Channel, MAX_RULES, Preferences, QuietHoursSpec, RangeSpec, Rule, Selector};
    use crate::store::{SettingsChange, SettingsError};
    let (clock, _) = clock(1_000);
    let (stores, _guard) = make(limits(10), clock);
    let s = &stores.settings;
    let fresh = s.settings("alice").await.unwrap();
    assert_eq!((fresh.version, fresh.preferences.rules.len(), fresh.quiet_hours.is_none()), (0, 0, true));
    let rule = |ty: &str, channel, enabled| Rule { selector: Selector::Type(ty.into()), channel, enabled };
    let p = Preferences { rules: vec![rule("comment.*", Channel::Push, false), rule("like", Channel::Socket, false)] };
    let v1 = s.update_settings("alice", SettingsChange::ReplacePreferences(p), 10).await.unwrap();
    assert_eq!((v1.version, v1.updated_at, v1.preferences.rules.len()), (1, 10, 2));
    // A merge replaces the rule with the same selector and channel, and adds the others.
    let merged = s
        .update_settings(
            "alice",
            SettingsChange::MergePreferences(vec![
                rule("comment.*", Channel::Push, true),
                rule("comment.*", Channel::Socket, false),
            ]),
            20,
        )
        .await
        .unwrap();
    assert_eq!(merged.version, 2);
    assert_eq!(
        merged.preferences.rules,
        [
            rule("like", Channel::Socket, false),
            rule("comment.*", Channel::Push, true),
            rule("comment.*", Channel::Socket, false)
        ]
    );
    let quiet = QuietHoursSpec {
        time_zone: "Europe/Berlin".into(),
        ranges: vec![RangeSpec { day: "mon".into(), start: "22:00".into(), end: "07:00".into() }],
    };
    let v3 = s.update_settings("alice", SettingsChange::QuietHours(Some(quiet.clone())), 30).await.unwrap();
    assert_eq!((v3.version, v3.quiet_hours.as_ref()), (3, Some(&quiet)));
    assert_eq!(v3.preferences, merged.preferences, "quiet hours leave the preferences as they are");
    // Too many rules: refused, nothing changed.
    let many = (0..MAX_RULES).map(|i| rule(&format!("t{i}"), Channel::Push, false)).collect();
    let e = s.update_settings("alice", SettingsChange::MergePreferences(many), 40).await.unwrap_err();
    assert!(matches!(e, SettingsError::Invalid(ref m) if m.contains("at most")), "{e:?}");
    let now = s.settings("alice").await.unwrap();
    assert_eq!(now, v3, "unchanged");
    let removed = s.update_settings("alice", SettingsChange::QuietHours(None), 50).await.unwrap();
    assert_eq!((removed.version, removed.quiet_hours), (4, None));
    assert_eq!(s.settings("bob").await.unwrap().version, 0, "per user");
}

/// A plan item for `user` with a phone (APNs) and a laptop (Web Push), none live unless `live`.
pub(crate) fn plan_item(
    id: &str,
    user: &str,
    priority: Priority,
    group: Option<&str>,
    live: bool,
) -> crate::store::PlanItem {
    use crate::planner::{Device, NotificationMeta, Overrides, PushTarget, UserContext};
    let device =
        |id: &str, platform| Device { id: id.into(), push: Some(PushTarget { platform, registered_at: 1 }), live };
    crate::store::PlanItem {
        context: UserContext {
            devices: vec![device("laptop", PushPlatform::WebPush), device("phone", PushPlatform::Apns)],
            ..UserContext::default()
        },
        meta: NotificationMeta {
            id: id.into(),
            user: user.into(),
            priority,
            persistence: Persistence::Bufferable,
            kind: "comment.created".into(),
            topic: None,
            group: group.map(str::to_owned),
            title: Some(format!("title {id}")),
            created_at: 1_000,
            overrides: Overrides::default(),
        },
        envelope: format!(r#"{{"id":"{id}"}}"#),
    }
}

fn keys(rows: &[crate::store::StoredPush]) -> Vec<(String, String, String)> {
    rows.iter().map(|r| (r.row.key.user.clone(), r.row.key.notification.clone(), r.row.key.device.clone())).collect()
}

fn key(user: &str, id: &str, device: &str) -> (String, String, String) {
    (user.to_owned(), id.to_owned(), device.to_owned())
}

pub(crate) async fn plans_insert_rows_once_and_share_digest_windows(make: &Factory) {
    use crate::planner::{PendingReason, Policy};
    let (clock, _) = clock(1_000);
    let (stores, _guard) = make(limits(10), clock);
    let policy = Policy { push_after: Duration::from_secs(5), digest_window: Duration::from_secs(60) };
    let p = &stores.push;
    assert_eq!(p.next_due().await.unwrap(), None);
    let plans = p.plan(&policy, 1_000, vec![plan_item("n1", "alice", Priority::Important, None, true)]).await.unwrap();
    assert_eq!(plans[0].rows.len(), 2, "one per device");
    assert_eq!(plans[0].rows[0].reason, PendingReason::AwaitingAck);
    assert_eq!(p.next_due().await.unwrap(), Some(6_000), "push_after");
    // The same notification planned again (a retried publish) adds nothing.
    p.plan(&policy, 2_000, vec![plan_item("n1", "alice", Priority::Important, None, false)]).await.unwrap();
    // Two informational notifications of one group, a window apart from nothing else: one window.
    let plans = p
        .plan(
            &policy,
            2_000,
            vec![
                plan_item("i1", "alice", Priority::Informational, Some("likes"), false),
                plan_item("i2", "alice", Priority::Informational, Some("likes"), false),
            ],
        )
        .await
        .unwrap();
    assert!(plans[0].open_window.is_some() && plans[1].open_window.is_none(), "the second joins the first's window");
    assert_eq!(plans[1].rows[0].due_at, 62_000);
    let later = p.plan(&policy, 30_000, vec![plan_item("i3", "alice", Priority::Informational, Some("likes"), false)]);
    assert_eq!(later.await.unwrap()[0].rows[0].due_at, 62_000, "the window is read from the store");
    let (_, due) = p.claim_due(62_000, Duration::from_secs(60), 10).await.unwrap();
    let mut got = keys(&due);
    got.sort();
    let mut want: Vec<_> = ["i1", "i2", "i3", "n1"]
        .iter()
        .flat_map(|id| [key("alice", id, "laptop"), key("alice", id, "phone")])
        .collect();
    want.sort();
    assert_eq!(got, want, "n1 planned once; the digest rows due when the window closes");
    let n1 = due.iter().find(|r| r.row.key.notification == "n1").unwrap();
    assert_eq!((n1.envelope.as_str(), n1.attempts, n1.row.title.as_deref()), (r#"{"id":"n1"}"#, 0, Some("title n1")));
    let after = p.plan(&policy, 62_001, vec![plan_item("i4", "alice", Priority::Informational, Some("likes"), false)]);
    assert!(after.await.unwrap()[0].open_window.is_some(), "a closed window does not collect");
}

pub(crate) async fn claims_take_whole_users_and_settle_only_under_their_claim(make: &Factory) {
    use crate::planner::{PendingReason, Policy, RowKey};
    use crate::store::Settlement;
    let (clock, _) = clock(1_000);
    let (stores, _guard) = make(limits(10), clock);
    let policy = Policy::default();
    let p = &stores.push;
    let items = vec![
        plan_item("a1", "alice", Priority::Important, None, false),
        plan_item("a2", "alice", Priority::Critical, None, false),
        plan_item("b1", "bob", Priority::Important, None, false),
    ];
    p.plan(&policy, 1_000, items).await.unwrap();
    let lease = Duration::from_secs(10);
    let (c1, first) = p.claim_due(1_000, lease, 1).await.unwrap();
    let users: std::collections::BTreeSet<String> = first.iter().map(|r| r.row.key.user.clone()).collect();
    assert_eq!(users.len(), 1, "one user per claim slot");
    assert_eq!(first.len(), if users.contains("alice") { 4 } else { 2 }, "every due row of the user");
    let (c2, second) = p.claim_due(1_000, lease, 5).await.unwrap();
    assert_ne!(c1, c2);
    assert_eq!(first.len() + second.len(), 6, "the rest; claimed rows are not claimed again");
    assert!(p.claim_due(1_000, lease, 5).await.unwrap().1.is_empty());
    assert_eq!(p.next_due().await.unwrap(), Some(11_000), "when the leases end");
    let (alice_claim, alice_rows, bob_claim) =
        if users.contains("alice") { (c1, &first, c2) } else { (c2, &second, c1) };
    let k = |id: &str, device: &str| RowKey { user: "alice".into(), notification: id.into(), device: device.into() };
    let mut s = Settlement::new(alice_claim);
    s.delete = vec![k("a1", "laptop"), k("a1", "phone")];
    s.reschedule = vec![(k("a2", "phone"), 50_000, PendingReason::QuietHours, 2)];
    // Settled under bob's claim: nothing happens to alice's rows.
    let mut wrong = s.clone();
    wrong.claim = bob_claim;
    p.settle(wrong).await.unwrap();
    p.settle(s).await.unwrap();
    assert_eq!(alice_rows.len(), 4);
    // The rescheduled row is free again at its new time; a2/laptop stays claimed until its lease ends.
    let (_, next) = p.claim_due(11_000, Duration::from_secs(100), 5).await.unwrap();
    let mut got = keys(&next);
    got.sort();
    assert_eq!(got, [key("alice", "a2", "laptop"), key("bob", "b1", "laptop"), key("bob", "b1", "phone")]);
    let (_, last) = p.claim_due(50_000, lease, 5).await.unwrap();
    assert_eq!(keys(&last), [key("alice", "a2", "phone")]);
    assert_eq!((last[0].row.reason, last[0].attempts), (PendingReason::QuietHours, 2));
}

pub(crate) async fn acks_cancel_pending_pushes_in_their_commit(make: &Factory) {
    use crate::planner::{PendingReason, Policy};
    use crate::store::DeliveryStatus;
    let (clock, _) = clock(1_000);
    let (stores, _guard) = make(limits(10), clock);
    let p = &stores.push;
    let items = vec![
        plan_item("imp", "alice", Priority::Important, None, true),
        plan_item("crit", "alice", Priority::Critical, None, true),
        plan_item("imp", "bob", Priority::Important, None, true),
    ];
    p.plan(&Policy::default(), 1_000, items).await.unwrap();
    let (alice, phone): (Arc<str>, Arc<str>) = (Arc::from("alice"), Arc::from("phone"));
    let cancelled =
        stores.acks.record(&alice, &phone, &["imp".into(), "crit".into(), "other".into()], 2_000).await.unwrap();
    let mut cancelled: Vec<_> =
        cancelled.iter().map(|k| (k.user.as_str(), k.notification.as_str(), k.device.as_str())).collect();
    cancelled.sort();
    assert_eq!(cancelled, [("alice", "imp", "laptop"), ("alice", "imp", "phone")], "critical is not cancelled by acks");
    let (_, left) = p.claim_due(10_000, Duration::from_secs(10), 10).await.unwrap();
    let mut got = keys(&left);
    got.sort();
    assert_eq!(
        got,
        [
            key("alice", "crit", "laptop"),
            key("alice", "crit", "phone"),
            key("bob", "imp", "laptop"),
            key("bob", "imp", "phone")
        ],
        "bob's copy is his own"
    );
    let log = p.deliveries("imp").await.unwrap();
    let summary: Vec<(&str, Option<&str>, DeliveryStatus)> =
        log.iter().map(|r| (r.user.as_str(), r.device.as_deref(), r.status)).collect();
    assert!(summary.contains(&("alice", Some("phone"), DeliveryStatus::Cancelled)), "{summary:?}");
    assert!(summary.contains(&("bob", Some("laptop"), DeliveryStatus::Scheduled)), "{summary:?}");
    let scheduled = log.iter().find(|r| r.status == DeliveryStatus::Scheduled).unwrap();
    assert_eq!(
        (scheduled.reason.as_deref(), scheduled.due_at),
        (Some(PendingReason::AwaitingAck.as_str()), Some(6_000))
    );
    assert!(stores.acks.record(&alice, &phone, &["crit".into()], 3_000).await.unwrap().is_empty());
}

pub(crate) async fn expediting_moves_the_rows_of_one_reason(make: &Factory) {
    use crate::planner::{PendingReason, Policy};
    let (clock, _) = clock(1_000);
    let (stores, _guard) = make(limits(10), clock);
    let p = &stores.push;
    p.plan(&Policy::default(), 1_000, vec![plan_item("n1", "alice", Priority::Important, None, true)]).await.unwrap();
    assert_eq!(p.next_due().await.unwrap(), Some(6_000));
    assert_eq!(p.expedite("alice", PendingReason::QuietHours, 2_000).await.unwrap(), 0, "another reason");
    assert_eq!(p.expedite("bob", PendingReason::AwaitingAck, 2_000).await.unwrap(), 0, "another user");
    assert_eq!(p.expedite("alice", PendingReason::AwaitingAck, 2_000).await.unwrap(), 2);
    assert_eq!(p.next_due().await.unwrap(), Some(2_000));
    assert_eq!(p.claim_due(2_000, Duration::from_secs(10), 10).await.unwrap().1.len(), 2);
}

/// What `/metrics` reads of the pending pushes: counts by reason, and the rows due with the earliest due time.
pub(crate) async fn pending_pushes_are_summarised_by_reason_and_due_time(make: &Factory) {
    use crate::planner::{PendingReason as R, Policy};
    let (clock, _) = clock(1_000);
    let (stores, _guard) = make(limits(10), clock);
    let p = &stores.push;
    assert_eq!(p.pending_summary(1_000).await.unwrap(), crate::store::PendingSummary::default());
    let policy = Policy { push_after: Duration::from_secs(5), digest_window: Duration::from_secs(60) };
    // Live devices: two rows waiting for an ack until 6 000; offline: two immediate rows due at 1 000; a digest.
    let items = vec![
        plan_item("n1", "alice", Priority::Important, None, true),
        plan_item("n2", "bob", Priority::Important, None, false),
        plan_item("i1", "carol", Priority::Informational, Some("likes"), false),
    ];
    p.plan(&policy, 1_000, items).await.unwrap();
    let mut summary = p.pending_summary(3_000).await.unwrap();
    summary.by_reason.sort_by_key(|(r, _)| r.as_str());
    assert_eq!(summary.by_reason, [(R::AwaitingAck, 2), (R::Digest, 2), (R::Immediate, 2)]);
    assert_eq!((summary.due, summary.oldest_due), (2, Some(1_000)), "the immediate rows are two seconds late");
    let later = p.pending_summary(6_000).await.unwrap();
    assert_eq!((later.due, later.oldest_due), (4, Some(1_000)), "the awaiting rows came due");
}

fn reissued(outcome: &AppendOutcome) -> Option<&str> {
    match outcome {
        AppendOutcome::Appended { reissued, .. } => reissued.as_deref(),
        AppendOutcome::Duplicate(_) => panic!("unexpected duplicate"),
    }
}

/// The `id` of a `notification` frame.
fn frame_id(frame: &str) -> String {
    let value: serde_json::Value = serde_json::from_str(frame).expect("a JSON frame");
    value["id"].as_str().expect("an id").to_owned()
}

pub(crate) async fn server_ids_stay_ordered_in_each_stream_whatever_order_they_commit_in(make: &Factory) {
    let ulid = |ms: u64, random: u128| ulid::Ulid::from_parts(ms, random).to_string();
    let (clock, _) = clock(1_000);
    let (stores, _guard) = make(limits(10), clock);
    let log = Arc::new(Mutex::new(Vec::new()));
    let (late, early, key, fresh) = (ulid(2_000, 5), ulid(1_000, 9), ulid(1_500, 1), ulid(1_200, 3));
    // Committed in another order than their ids were drawn (as two requests, or two processes, can).
    let out = append_logged(&stores, vec![publication(&late, &["user:a"], Persistence::Bufferable, 1_000)], &log).await;
    assert_eq!(reissued(&out[0]), None, "an id above the stream's keeps");
    let out =
        append_logged(&stores, vec![publication(&early, &["user:a"], Persistence::Persistent, 1_000)], &log).await;
    let renamed = reissued(&out[0]).expect("an id below the stream's newest is drawn anew").to_owned();
    assert!(renamed > late, "{renamed} sorts after {late}");
    assert!(ulid::Ulid::from_string(&renamed).is_ok(), "still a ULID: {renamed}");
    assert_eq!(log.lock().unwrap().last().map(|c| c.id.to_string()), Some(renamed.clone()), "handed on under it");
    // A caller's id is an idempotency key: kept as given.
    let out = append(&stores, vec![keyed(&key, &["user:a"], 1_000)]).await;
    assert_eq!(reissued(&out[0]), None, "a caller's id is kept");
    // Several streams: above the newest of all of them; a stream of its own does not lower that.
    let out = append(&stores, vec![publication(&fresh, &["topic:b", "user:a"], Persistence::Bufferable, 1_000)]).await;
    let both = reissued(&out[0]).expect("below user:a's newest").to_owned();
    assert!(both > renamed, "{both} sorts after {renamed}");
    // (A store may keep one order over all its streams — SQLite's single writer does — so a new stream's first
    // id is only checked to be a ULID.)
    let out = append(&stores, vec![publication(&fresh, &["topic:c"], Persistence::Bufferable, 1_000)]).await;
    assert!(reissued(&out[0]).is_none_or(|id| ulid::Ulid::from_string(id).is_ok()));
    // Ephemeral notifications are not kept and keep their id.
    let out = append(&stores, vec![publication(&early, &["user:a"], Persistence::Ephemeral, 1_000)]).await;
    assert_eq!(reissued(&out[0]), None, "an ephemeral notification keeps its id");

    let epoch = deliveries(&out[0])[0].epoch.clone();
    let read = stores.streams.read("user:a", Some((&epoch, 0))).await.unwrap();
    let ids: Vec<String> = read.entries.iter().map(|e| frame_id(e.frame.as_str())).collect();
    assert_eq!(ids, [late.clone(), renamed.clone(), key.clone(), both.clone()], "stored under the ids handed on");
    let server_ids: Vec<&String> = ids.iter().filter(|id| **id != key).collect();
    assert!(server_ids.windows(2).all(|w| w[0] < w[1]), "server ids in offset order: {server_ids:?}");
}

/// One `#[tokio::test]` per contract test, on the backend `$make` (a [`Factory`]).
macro_rules! stream_store_tests {
    ($make:path) => {
        $crate::store::contract::stream_store_tests!(@each $make,
            offsets_count_up_per_stream_under_a_stable_epoch,
            a_new_stream_has_head_zero_in_the_current_epoch,
            the_replay_window_keeps_the_newest_items,
            items_age_out_of_the_replay_window,
            ephemeral_notifications_get_no_offset_and_are_not_kept,
            on_commit_sees_each_stream_in_offset_order_before_completion,
            a_repeated_key_is_a_duplicate_within_the_window,
            acks_keep_the_first_of_each_device,
            push_addresses_replace_per_device_and_move_with_their_token,
            a_notification_is_found_by_id_in_its_stream,
            a_push_address_is_deleted_only_while_it_is_the_same_token,
            settings_change_atomically_and_refuse_invalid_changes,
            plans_insert_rows_once_and_share_digest_windows,
            claims_take_whole_users_and_settle_only_under_their_claim,
            acks_cancel_pending_pushes_in_their_commit,
            expediting_moves_the_rows_of_one_reason,
            pending_pushes_are_summarised_by_reason_and_due_time,
            server_ids_stay_ordered_in_each_stream_whatever_order_they_commit_in,
        );
    };
    (@each $make:path, $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                $crate::store::contract::$name(&$make).await;
            }
        )*
    };
}

pub(crate) use stream_store_tests;
