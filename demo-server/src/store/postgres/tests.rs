//! The PostgreSQL store: the shared contracts, and what only a store shared by several processes does.

use super::*;
use crate::store::Stores;
use crate::store::contract::{Clock, Guard};

/// A store on a fresh database; `None` when PostgreSQL is not provisioned and the tests run by hand.
fn open_fresh(limits: StoreLimits, clock: Clock) -> Option<(PostgresStore, String)> {
    let url = testing::fresh_database_blocking("the PostgreSQL store tests")?;
    let store = tokio::task::block_in_place(|| {
        Handle::current().block_on(PostgresStore::open(&url, limits, clock)).expect("the store opens")
    });
    Some((store, url))
}

use tokio::runtime::Handle;

fn make(limits: StoreLimits, clock: Clock) -> (Stores, Guard) {
    match open_fresh(limits.clone(), clock.clone()) {
        Some((store, _)) => (Stores::postgres(store), Box::new(())),
        // Skipped (a note was printed): the memory store stands in, so the contract still runs.
        None => (Stores::memory(crate::store::MemoryStore::with_clock(limits, clock)), Box::new(())),
    }
}

mod shared {
    use super::*;

    crate::store::contract::stream_store_tests!(make);
    crate::store::inbox_contract::inbox_store_tests!(make);
}

// ---- several processes on one database ----

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex as StdMutex;

use tidings_core::protocol::Persistence;

use crate::model::{AppendOutcome, Committed};
use crate::store::StreamStore;
use crate::store::contract::{clock, keyed, limits, plan_item, publication};

/// Two stores on one fresh database (as two server processes would have), or `None` when skipped.
async fn two_stores(test: &str, limits: StoreLimits) -> Option<(Arc<PostgresStore>, Arc<PostgresStore>, String)> {
    let url = testing::fresh_database(test).await?;
    let (clock, _) = clock(1_000_000);
    let a = PostgresStore::open(&url, limits.clone(), clock.clone()).await.expect("store a opens");
    let b = PostgresStore::open(&url, limits, clock).await.expect("store b opens");
    Some((Arc::new(a), Arc::new(b), url))
}

type CommitLog = Arc<StdMutex<Vec<(String, u64)>>>;

/// Appends one publication through `store`, logging its `on_commit` calls.
async fn append_one(store: &PostgresStore, p: Arc<Publication>, log: &CommitLog) -> AppendOutcome {
    let log = log.clone();
    let on_commit: crate::store::OnCommit = Box::new(move |c: &Committed| {
        log.lock().unwrap().push((c.stream.to_string(), c.offset.unwrap_or(0)));
    });
    let mut out = store.append(vec![Append { publication: p, on_commit }]).await;
    out.pop().unwrap().expect("the append commits")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stores_on_one_database_share_offsets_and_idempotency_keys() {
    let Some((a, b, _)) =
        two_stores("two_stores_on_one_database_share_offsets_and_idempotency_keys", limits(10_000)).await
    else {
        return;
    };
    const TASKS: usize = 4;
    const EACH: usize = 25;
    const KEYS: usize = 30;
    let logs: [CommitLog; 2] = Default::default();
    let mut tasks = tokio::task::JoinSet::new();
    for (s, store) in [a.clone(), b.clone()].into_iter().enumerate() {
        for t in 0..TASKS {
            let (store, log) = (store.clone(), logs[s].clone());
            tasks.spawn(async move {
                let mut out = Vec::new();
                for i in 0..EACH {
                    // Every publish goes to the shared topic; half also to a user stream, in the other order.
                    let id = format!("s{s}-t{t}-{i}");
                    let streams: &[&str] =
                        if i % 2 == 0 { &["topic:shared", "user:u"] } else { &["user:u", "topic:shared"] };
                    let p = publication(&id, streams, Persistence::Bufferable, 1_000_000);
                    out.push((id, append_one(&store, p, &log).await));
                }
                out
            });
        }
        // Both stores publish the same keys at once: each is accepted once.
        let (store, log) = (store.clone(), logs[s].clone());
        tasks.spawn(async move {
            let mut out = Vec::new();
            for k in 0..KEYS {
                let id = format!("key-{k}");
                out.push((id.clone(), append_one(&store, keyed(&id, &["topic:shared"], 1_000_000), &log).await));
            }
            out
        });
    }
    let mut appended: BTreeMap<String, Vec<(String, u64)>> = BTreeMap::new();
    let mut keys: BTreeMap<String, Vec<AppendOutcome>> = BTreeMap::new();
    while let Some(done) = tasks.join_next().await {
        for (id, outcome) in done.unwrap() {
            if id.starts_with("key-") {
                keys.entry(id.clone()).or_default().push(outcome.clone());
            }
            if let AppendOutcome::Appended { deliveries, .. } = outcome {
                for d in deliveries {
                    appended.entry(d.stream).or_default().push((id.clone(), d.offset.unwrap()));
                }
            }
        }
    }
    let total = 2 * TASKS * EACH;
    for (stream, want) in [("topic:shared", total + KEYS), ("user:u", total)] {
        let mut offsets: Vec<u64> = appended[stream].iter().map(|(_, o)| *o).collect();
        offsets.sort_unstable();
        assert_eq!(offsets, (1..=want as u64).collect::<Vec<_>>(), "{stream}: unique and gap-free across stores");
        // The stored history agrees with what the appends answered.
        let epoch = a.epoch(stream).await.unwrap();
        let read = b.read(stream, Some((&epoch, 0))).await.unwrap();
        assert_eq!(read.state.head, want as u64);
        let by_offset: BTreeMap<u64, &str> = appended[stream].iter().map(|(id, o)| (*o, id.as_str())).collect();
        for entry in &read.entries {
            let id = crate::store::frame_id(entry.frame.as_str()).unwrap();
            assert_eq!(by_offset[&entry.offset], id, "{stream} offset {}", entry.offset);
        }
        assert_eq!(read.entries.len(), want);
    }
    for (key, outcomes) in &keys {
        let accepted: Vec<_> = outcomes.iter().filter(|o| matches!(o, AppendOutcome::Appended { .. })).collect();
        let duplicates: Vec<_> = outcomes.iter().filter(|o| matches!(o, AppendOutcome::Duplicate(_))).collect();
        assert_eq!((accepted.len(), duplicates.len()), (1, 1), "{key}: {outcomes:?}");
        let (AppendOutcome::Appended { deliveries: first, .. }, AppendOutcome::Duplicate(again)) =
            (accepted[0], duplicates[0])
        else {
            unreachable!()
        };
        assert_eq!(first, again, "{key}: the duplicate answers the first publish's deliveries");
    }
    // Each store saw its own commits in offset order per stream.
    for log in &logs {
        let mut last: BTreeMap<String, u64> = BTreeMap::new();
        for (stream, offset) in log.lock().unwrap().iter() {
            let previous = last.insert(stream.clone(), *offset).unwrap_or(0);
            assert!(*offset > previous, "{stream}: on_commit {offset} after {previous}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_drawn_by_two_processes_stay_ordered_in_each_stream() {
    let test = "ids_drawn_by_two_processes_stay_ordered_in_each_stream";
    let Some((a, b, _)) = two_stores(test, limits(10_000)).await else { return };
    const TASKS: usize = 3;
    const EACH: usize = 30;
    let mut tasks = tokio::task::JoinSet::new();
    for (s, store) in [a.clone(), b.clone()].into_iter().enumerate() {
        // Each process draws its own ULIDs; the second one's clock runs 5 s behind, so its ids sort before the
        // first one's unless the store raises them.
        let generator = Arc::new(StdMutex::new(ulid::Generator::new()));
        for t in 0..TASKS {
            let (store, generator, log) = (store.clone(), generator.clone(), CommitLog::default());
            tasks.spawn(async move {
                let mut out = Vec::new();
                for i in 0..EACH {
                    let at = std::time::SystemTime::now() - std::time::Duration::from_secs(5 * s as u64);
                    let id = generator.lock().unwrap().generate_from_datetime(at).unwrap().to_string();
                    let streams: &[&str] = if (t + i) % 3 == 0 { &["topic:o", "user:o"] } else { &["topic:o"] };
                    let outcome =
                        append_one(&store, publication(&id, streams, Persistence::Bufferable, 1_000_000), &log).await;
                    let AppendOutcome::Appended { deliveries, reissued } = outcome else { panic!("not a duplicate") };
                    let renamed = reissued.is_some();
                    let id = reissued.map_or(id, |r| r.to_string());
                    out.extend(deliveries.into_iter().map(|d| (d.stream, d.offset.unwrap(), id.clone(), renamed)));
                }
                out
            });
        }
    }
    let mut answered: BTreeMap<(String, u64), String> = BTreeMap::new();
    let mut renamed = 0;
    while let Some(done) = tasks.join_next().await {
        for (stream, offset, id, reissued) in done.unwrap() {
            renamed += usize::from(reissued);
            assert!(answered.insert((stream, offset), id).is_none(), "one answer per position");
        }
    }
    assert!(renamed > 0, "the lagging process's ids were raised");
    let mut read_back = 0;
    for stream in ["topic:o", "user:o"] {
        let epoch = a.epoch(stream).await.unwrap();
        let read = b.read(stream, Some((&epoch, 0))).await.unwrap();
        let ids: Vec<String> =
            read.entries.iter().map(|e| crate::store::frame_id(e.frame.as_str()).unwrap().to_owned()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{stream}: ids in offset order: {ids:?}");
        for (entry, id) in read.entries.iter().zip(&ids) {
            assert_eq!(
                &answered[&(stream.to_owned(), entry.offset)],
                id,
                "{stream} {}: stored as answered",
                entry.offset
            );
        }
        read_back += ids.len();
    }
    assert_eq!(answered.len(), read_back, "every position read back");
    assert!(answered.len() >= 2 * TASKS * EACH, "{} positions", answered.len());
}

/// One batch past the replay window of two streams, its contents shared between them: the trimmed entries and
/// the references of their contents are written with one statement per table, and the rows left are exactly what
/// the remaining entries refer to (a content on both streams stays while one of its entries does).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_past_the_window_trims_entries_and_the_contents_no_entry_refers_to() {
    let Some((a, _, url)) =
        two_stores("a_batch_past_the_window_trims_entries_and_the_contents_no_entry_refers_to", limits(2)).await
    else {
        return;
    };
    // n0 to both streams, n1 to a, n2 to both, n3 to b, n4 to a, n5 (persistent) to b, n6 to a.
    let plan: [(&str, &[&str], Persistence); 7] = [
        ("n0", &["topic:a", "topic:b"], Persistence::Bufferable),
        ("n1", &["topic:a"], Persistence::Bufferable),
        ("n2", &["topic:a", "topic:b"], Persistence::Bufferable),
        ("n3", &["topic:b"], Persistence::Bufferable),
        ("n4", &["topic:a"], Persistence::Bufferable),
        ("n5", &["topic:b"], Persistence::Persistent),
        ("n6", &["topic:a"], Persistence::Bufferable),
    ];
    let batch: Vec<Append> = plan
        .iter()
        .map(|(id, streams, persistence)| Append {
            publication: publication(id, streams, *persistence, 1_000_000),
            on_commit: Box::new(|_: &Committed| {}),
        })
        .collect();
    let outcomes = a.append(batch).await;
    assert!(outcomes.iter().all(|o| matches!(o, Ok(AppendOutcome::Appended { .. }))), "{outcomes:?}");
    // The newest two of each stream are replayed, with their own contents.
    let mut replayed = Vec::new();
    for stream in ["topic:a", "topic:b"] {
        let epoch = a.epoch(stream).await.unwrap();
        let read = a.read(stream, Some((&epoch, 0))).await.unwrap();
        let ids: Vec<(u64, String)> = read
            .entries
            .iter()
            .map(|e| (e.offset, crate::store::frame_id(e.frame.as_str()).unwrap().to_owned()))
            .collect();
        replayed.push(ids);
    }
    let owned = |v: &[(u64, &str)]| v.iter().map(|(o, i)| (*o, (*i).to_owned())).collect::<Vec<_>>();
    assert_eq!(replayed[0], owned(&[(4, "n4"), (5, "n6")]), "topic:a");
    assert_eq!(replayed[1], owned(&[(3, "n3"), (4, "n5")]), "topic:b");
    // In the tables: topic:b's n2 entry (offset 2) was trimmed and n0 left both windows; n5 is persistent.
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let rows = client.query("SELECT id, refs FROM notifications ORDER BY id", &[]).await.unwrap();
    let contents: Vec<(String, i64)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let expected: Vec<(String, i64)> =
        [("n3", 1), ("n4", 1), ("n5", 1), ("n6", 1)].iter().map(|(i, r)| ((*i).to_owned(), *r)).collect();
    assert_eq!(contents, expected, "contents and their references");
    let entries: i64 = client.query_one("SELECT count(*) FROM entries", &[]).await.unwrap().get(0);
    assert_eq!(entries, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_push_is_claimed_once_by_two_racing_stores() {
    use crate::planner::Policy;
    let Some((a, b, _)) = two_stores("a_pending_push_is_claimed_once_by_two_racing_stores", limits(10)).await else {
        return;
    };
    const USERS: usize = 40;
    let items: Vec<_> = (0..USERS)
        .map(|u| {
            plan_item(&format!("n{u}"), &format!("user{u}"), tidings_core::protocol::Priority::Important, None, false)
        })
        .collect();
    let plans = a.plan(&Policy::default(), 1_000, items).await.unwrap();
    let rows: usize = plans.iter().map(|p| p.rows.len()).sum();
    assert_eq!(rows, 2 * USERS, "a laptop and a phone each");
    let mut tasks = tokio::task::JoinSet::new();
    for store in [a.clone(), b.clone(), a.clone(), b.clone()] {
        tasks.spawn(async move {
            let mut claimed = Vec::new();
            loop {
                let (claim, got) = store.claim_due(2_000, Duration::from_secs(60), 3).await.unwrap();
                if got.is_empty() {
                    break claimed;
                }
                claimed.extend(got.into_iter().map(|r| (claim, r.row.key)));
            }
        });
    }
    let mut all = Vec::new();
    while let Some(done) = tasks.join_next().await {
        all.extend(done.unwrap());
    }
    let keys: BTreeSet<_> =
        all.iter().map(|(_, k)| (k.user.clone(), k.notification.clone(), k.device.clone())).collect();
    assert_eq!((all.len(), keys.len()), (2 * USERS, 2 * USERS), "every row claimed exactly once");
    let claims_by_user: BTreeMap<&str, BTreeSet<u64>> = all.iter().fold(BTreeMap::new(), |mut m, (c, k)| {
        m.entry(k.user.as_str()).or_default().insert(*c);
        m
    });
    assert!(claims_by_user.values().all(|c| c.len() == 1), "a user's rows go in one claim: {claims_by_user:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ack_through_one_store_cancels_a_push_planned_through_the_other() {
    use crate::planner::Policy;
    let Some((a, b, _)) =
        two_stores("an_ack_through_one_store_cancels_a_push_planned_through_the_other", limits(10)).await
    else {
        return;
    };
    let item = plan_item("n1", "alice", tidings_core::protocol::Priority::Important, None, true);
    a.plan(&Policy::default(), 1_000, vec![item]).await.unwrap();
    assert_eq!(a.next_due().await.unwrap(), Some(6_000), "waiting for an ack");
    let cancelled = b.record(&Arc::from("alice"), &Arc::from("phone"), &["n1".into()], 2_000).await.unwrap();
    assert_eq!(cancelled.len(), 2, "both devices' pushes: {cancelled:?}");
    assert!(a.claim_due(10_000, Duration::from_secs(10), 10).await.unwrap().1.is_empty(), "nothing left to send");
    let log = a.deliveries("n1").await.unwrap();
    assert!(log.iter().any(|r| r.status == DeliveryStatus::Cancelled), "{log:?}");
    assert_eq!(a.acks("n1").await.unwrap().len(), 1, "the ack is seen by the other store");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_restart_is_unavailable_then_recovers_with_nothing_acknowledged_lost() {
    // Skipped like the others when PostgreSQL is not provisioned (this test starts a server of its own).
    if testing::server_url("a_database_restart_is_unavailable_then_recovers_with_nothing_acknowledged_lost").is_none() {
        return;
    }
    let cluster = testing::Cluster::start().expect("a PostgreSQL of the test's own starts");
    let url = testing::create_database(&cluster.url()).await.unwrap();
    let (clock, _) = clock(1_000_000);
    let store = Arc::new(PostgresStore::open(&url, limits(10_000), clock).await.unwrap());
    let log: CommitLog = Arc::default();
    // Publishes go on while the database stops and starts again.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let publisher = {
        let (store, log, stop) = (store.clone(), log.clone(), stop.clone());
        tokio::spawn(async move {
            let (mut acknowledged, mut refused) = (Vec::new(), Vec::new());
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                i += 1;
                let id = format!("n{i}");
                let p = keyed(&id, &["topic:t"], 1_000_000);
                let log = log.clone();
                let on_commit: crate::store::OnCommit = Box::new(move |c: &Committed| {
                    log.lock().unwrap().push((c.stream.to_string(), c.offset.unwrap_or(0)));
                });
                match store.append(vec![Append { publication: p, on_commit }]).await.pop().unwrap() {
                    Ok(AppendOutcome::Appended { deliveries: d, .. }) => acknowledged.push((id, d[0].offset.unwrap())),
                    Ok(other) => panic!("{id}: {other:?}"),
                    Err(e) => {
                        assert_eq!(e.kind, crate::store::StoreErrorKind::Unavailable, "{e}");
                        refused.push(id);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
            (acknowledged, refused)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.stop().unwrap();
    // While it is down: unavailable, for publishes, reads and readiness alike.
    let down = store.check_writable().await.unwrap_err();
    assert_eq!(down.kind, crate::store::StoreErrorKind::Unavailable, "{down}");
    assert!(store.read("topic:t", None).await.is_err());
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.resume().unwrap();
    // The pool reconnects by itself.
    assert!(
        testing::eventually(Duration::from_secs(20), async || store.check_writable().await.is_ok()).await,
        "the store recovers once PostgreSQL is back"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (acknowledged, refused) = publisher.await.unwrap();
    assert!(!refused.is_empty(), "some publishes were refused while PostgreSQL was down");
    assert!(acknowledged.len() > refused.len() / 10, "publishes went through before and after");
    // Every acknowledged publish is stored at the offset it was answered with; refused ones left nothing behind
    // unless a commit's answer was lost (then a retry with its key is a duplicate): retried here.
    let epoch = store.epoch("topic:t").await.unwrap();
    let read = store.read("topic:t", Some((&epoch, 0))).await.unwrap();
    let stored: BTreeMap<u64, String> =
        read.entries.iter().map(|e| (e.offset, crate::store::frame_id(e.frame.as_str()).unwrap())).collect();
    for (id, offset) in &acknowledged {
        assert_eq!(stored.get(offset), Some(id), "acknowledged {id} at {offset} is stored");
    }
    let offsets: Vec<u64> = stored.keys().copied().collect();
    assert_eq!(offsets, (1..=read.state.head).collect::<Vec<_>>(), "gap-free");
    let mut retried_duplicates = 0;
    for id in &refused {
        let again = append_one(&store, keyed(id, &["topic:t"], 1_000_000), &log).await;
        if matches!(again, AppendOutcome::Duplicate(_)) {
            retried_duplicates += 1;
        }
    }
    eprintln!(
        "PostgreSQL restart: {} acknowledged (all stored), {} refused with Unavailable, of which {} had committed \
         (their retry answered Duplicate); {} stored",
        acknowledged.len(),
        refused.len(),
        retried_duplicates,
        stored.len()
    );
    assert_eq!(
        stored.len(),
        acknowledged.len() + retried_duplicates,
        "nothing stored that was neither answered nor retried"
    );
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_starting_together_migrate_once_and_share_the_epoch() {
    let Some(url) = testing::fresh_database("processes_starting_together_migrate_once_and_share_the_epoch").await
    else {
        return;
    };
    let (clock, _) = clock(1_000);
    let opens = (0..4).map(|_| PostgresStore::open(&url, limits(10), clock.clone()));
    let stores: Vec<PostgresStore> =
        futures_util::future::join_all(opens).await.into_iter().map(|s| s.expect("every start succeeds")).collect();
    let epochs: BTreeSet<&str> = stores.iter().map(|s| &*s.inner.epoch).collect();
    assert_eq!(epochs.len(), 1, "one epoch for the database: {epochs:?}");
    let client = stores[0].inner.client().await.unwrap();
    let versions: Vec<i64> =
        client.query("SELECT version FROM schema_version", &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
    assert_eq!(versions, [schema::current_version()]);
    // A database written by a newer server is refused, naming the fix.
    client.execute("UPDATE schema_version SET version = version + 1", &[]).await.unwrap();
    let refused = PostgresStore::open(&url, limits(10), clock).await.unwrap_err();
    assert!(refused.0.contains("newer tidings-server") && refused.0.contains("Fix:"), "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stores_adding_to_one_inbox_keep_its_counts_exact() {
    use crate::store::inbox::InboxStore;
    use crate::store::inbox_contract::add;
    let Some((a, b, _)) = two_stores("two_stores_adding_to_one_inbox_keep_its_counts_exact", limits(10)).await else {
        return;
    };
    let mut tasks = tokio::task::JoinSet::new();
    for (s, store) in [a.clone(), b.clone()].into_iter().enumerate() {
        tasks.spawn(async move {
            for i in 0..20 {
                store.add(vec![add(&format!("s{s}-{i}"), &["user:ann"], 1_000 + i)]).await.unwrap();
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    let counts = b.counts("ann").await.unwrap();
    assert_eq!((counts.total, counts.unread, counts.unseen, counts.head), (40, 40, 40, 40), "{counts:?}");
    let page = a.list("ann", tidings_core::protocol::InboxQuery::default()).await.unwrap();
    let seqs: BTreeSet<u64> = page.items.iter().map(|i| i.seq).collect();
    assert_eq!(seqs.len(), page.items.len(), "seqs are unique");
}
