//! The SQLite store: the shared contract, and what only a durable store does.

use std::sync::atomic::Ordering;

use tidings_core::protocol::Persistence;

use super::*;
use crate::store::Stores;
use crate::store::contract::{self, Clock, Guard, append, clock, limits, publication};

fn make(limits: StoreLimits, clock: Clock) -> (Stores, Guard) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path(), Synchronous::Full, limits, clock).expect("the store opens");
    (Stores::sqlite(store), Box::new(dir))
}

mod shared {
    use super::*;

    crate::store::contract::stream_store_tests!(make);
    crate::store::inbox_contract::inbox_store_tests!(make);

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]
        /// The recount property on SQLite (fewer cases than on memory: each opens a database).
        #[test]
        fn counts_match_a_recount(steps in proptest::collection::vec(crate::store::inbox_contract::step(), 1..40)) {
            let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
            runtime.block_on(async {
                let (clock, _) = crate::store::contract::clock(1_000);
                let (stores, _guard) = make(crate::store::contract::limits(10), clock);
                crate::store::inbox_contract::counts_match_a_recount(stores.inbox.clone(), steps).await;
                stores.streams.close().await;
            });
        }
    }
}

fn open(dir: &Path, synchronous: Synchronous, clock: Clock) -> Result<SqliteStore, OpenError> {
    SqliteStore::open(dir, synchronous, limits(100), clock)
}

fn count(path: &Path, sql: &str) -> i64 {
    let conn = Connection::open(path).unwrap();
    conn.query_row(sql, [], |r| r.get(0)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_epoch_and_keys_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (clock, _) = clock(1_000_000);
    let store = open(dir.path(), Synchronous::Full, clock.clone()).unwrap();
    let stores = Stores::sqlite(store);
    append(&stores, vec![contract::keyed("k1", &["user:a"], 1_000_000)]).await;
    append(&stores, vec![publication("n2", &["user:a"], Persistence::Persistent, 1_000_000)]).await;
    stores
        .devices
        .register_push(
            "a",
            PushRecord {
                device: Arc::from("phone"),
                platform: PushPlatform::Apns,
                token: "tok".into(),
                registered_at: 5,
            },
        )
        .await
        .unwrap();
    let epoch = stores.streams.epoch("user:a").await.unwrap();
    stores.streams.close().await;
    drop(stores);

    let stores = Stores::sqlite(open(dir.path(), Synchronous::Full, clock).unwrap());
    assert_eq!(stores.streams.epoch("user:a").await.unwrap(), epoch, "the same epoch after a restart");
    let read = stores.streams.read("user:a", Some((&epoch, 0))).await.unwrap();
    assert_eq!((read.state.head, read.entries.len()), (2, 2));
    assert!(read.entries[1].frame.as_str().contains(r#""persistence":"persistent""#));
    let again = append(&stores, vec![contract::keyed("k1", &["user:a"], 1_000_000)]).await;
    assert!(matches!(&again[0], AppendOutcome::Duplicate(d) if d[0].offset == Some(1)), "{again:?}");
    let next = append(&stores, vec![publication("n3", &["user:a"], Persistence::Bufferable, 1_000_000)]).await;
    assert!(matches!(&next[0], AppendOutcome::Appended { deliveries: d, .. } if d[0].offset == Some(3)));
    let devices = stores.devices.push_addresses("a").await.unwrap();
    assert_eq!((&*devices[0].device, devices[0].platform), ("phone", PushPlatform::Apns));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bufferable_notifications_beyond_the_window_are_deleted_persistent_ones_kept() {
    let dir = tempfile::tempdir().unwrap();
    let (clock, now) = clock(1_000_000);
    let mut l = limits(3);
    l.persistent_retention = Duration::from_secs(3600);
    let stores = Stores::sqlite(SqliteStore::open(dir.path(), Synchronous::Full, l, clock).unwrap());
    for i in 1..=6 {
        let persistence = if i == 2 { Persistence::Persistent } else { Persistence::Bufferable };
        append(&stores, vec![publication(&format!("n{i}"), &["user:a", "topic:t"], persistence, 1_000_000)]).await;
    }
    let db = dir.path().join(DATABASE_FILE);
    // Offsets 4..=6 replayable; 1 and 3 gone; 2 (persistent) kept beyond the window, on both streams.
    assert_eq!(count(&db, "SELECT count(*) FROM entries"), 8);
    assert_eq!(count(&db, "SELECT count(*) FROM notifications"), 4, "contents go with their last entry");
    let epoch = stores.streams.epoch("user:a").await.unwrap();
    let read = stores.streams.read("user:a", Some((&epoch, 0))).await.unwrap();
    assert_eq!(read.entries.iter().map(|e| e.offset).collect::<Vec<_>>(), [4, 5, 6]);
    assert_eq!(read.state.oldest, 4);
    // Past the replay age the bufferable ones go at the next pruning; the persistent one stays for its retention.
    now.store(1_000_000 + 61_000, Ordering::SeqCst);
    let read = stores.streams.read("user:a", Some((&epoch, 0))).await.unwrap();
    assert_eq!((read.state.oldest, read.entries.len()), (7, 0), "nothing replayable, whatever is still stored");
    stores.streams.close().await;
    drop(stores);
    let (clock, now) = contract::clock(1_000_000 + 61_000);
    let stores = Stores::sqlite(SqliteStore::open(dir.path(), Synchronous::Full, limits(3), clock).unwrap());
    // The writer prunes on its own every few seconds; the first round comes after MAINTENANCE_EVERY.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while count(&db, "SELECT count(*) FROM entries") != 2 {
        assert!(std::time::Instant::now() < deadline, "pruning did not happen");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(count(&db, "SELECT count(*) FROM notifications"), 1);
    now.store(1_000_000 + 3_601_000, Ordering::SeqCst);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while count(&db, "SELECT count(*) FROM notifications") != 0 {
        assert!(std::time::Instant::now() < deadline, "the persistent notification outlived its retention");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(stores);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_store_on_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (clock, _) = clock(1_000);
    let first = open(dir.path(), Synchronous::Full, clock.clone()).unwrap();
    let e = open(dir.path(), Synchronous::Full, clock.clone()).unwrap_err().0;
    assert!(e.contains("is in use by another tidings-server"), "{e}");
    assert!(e.contains(&format!("(pid {})", std::process::id())), "{e}");
    assert!(e.contains(&dir.path().join(LOCK_FILE).display().to_string()) && e.contains("Fix:"), "{e}");
    first.close().await;
    drop(first);
    open(dir.path(), Synchronous::Full, clock).expect("free again after a close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_that_is_not_a_database_is_refused_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join(DATABASE_FILE);
    std::fs::write(&db, vec![b'x'; 8192]).unwrap();
    let (clock, _) = clock(1_000);
    let e = open(dir.path(), Synchronous::Full, clock).unwrap_err().0;
    assert!(e.starts_with(&format!("the database {} is corrupt or not a Tidings database", db.display())), "{e}");
    assert!(e.contains("Fix: move it"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_database_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (clock, _) = clock(1_000_000);
    let stores = Stores::sqlite(open(dir.path(), Synchronous::Full, clock.clone()).unwrap());
    for i in 0..200 {
        append(&stores, vec![publication(&format!("n{i}"), &["user:a"], Persistence::Persistent, 1_000_000)]).await;
    }
    stores.streams.close().await;
    drop(stores);
    let db = dir.path().join(DATABASE_FILE);
    let mut bytes = std::fs::read(&db).unwrap();
    assert!(bytes.len() > 4 * 4096, "several pages");
    // Scribble over everything after the first page: the header is intact, the tables are not.
    for b in &mut bytes[4096..] {
        *b = 0x5a;
    }
    std::fs::write(&db, bytes).unwrap();
    let e = open(dir.path(), Synchronous::Full, clock).unwrap_err().0;
    assert!(e.contains("is corrupt or not a Tidings database"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_from_a_newer_server_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (clock, _) = clock(1_000);
    open(dir.path(), Synchronous::Full, clock.clone()).unwrap().close().await;
    let db = dir.path().join(DATABASE_FILE);
    Connection::open(&db).unwrap().execute_batch("PRAGMA user_version = 99").unwrap();
    let e = open(dir.path(), Synchronous::Full, clock).unwrap_err().0;
    assert!(e.contains("written by a newer tidings-server (schema version 99"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_locked_by_another_process_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (clock, _) = clock(1_000);
    open(dir.path(), Synchronous::Full, clock.clone()).unwrap().close().await;
    let db = dir.path().join(DATABASE_FILE);
    // Another connection (as an sqlite3 shell would) holds an exclusive transaction.
    let other = Connection::open(&db).unwrap();
    other.execute_batch("PRAGMA locking_mode = EXCLUSIVE; BEGIN EXCLUSIVE;").unwrap();
    let e = open(dir.path(), Synchronous::Full, clock).unwrap_err().0;
    assert!(e.starts_with(&format!("the database {} is locked by another process", db.display())), "{e}");
    assert!(e.contains("Fix: stop the process"), "{e}");
    drop(other);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_normal_sync_an_unclean_stop_across_a_reboot_starts_a_new_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join(DATABASE_FILE);
    let (clock, _) = clock(1_000);
    // How the last run ended, as the next start finds it: a crash leaves `clean_shutdown` at 0.
    let last_run = |clean: bool, boot: &str| {
        let conn = Connection::open(&db).unwrap();
        conn.execute("UPDATE meta SET value = ?1 WHERE key = 'clean_shutdown'", [if clean { "1" } else { "0" }])
            .unwrap();
        if !boot.is_empty() {
            conn.execute("UPDATE meta SET value = ?1 WHERE key = 'boot_id'", [boot]).unwrap();
        }
    };
    let run = |synchronous| {
        let clock = clock.clone();
        let dir = dir.path().to_owned();
        async move {
            let store = open(&dir, synchronous, clock).unwrap();
            let epoch = store.epoch.clone();
            store.close().await;
            epoch
        }
    };
    let epoch = run(Synchronous::Normal).await;
    last_run(true, "another-boot");
    assert_eq!(run(Synchronous::Normal).await, epoch, "a clean stop keeps the epoch, even across a reboot");
    last_run(false, "");
    assert_eq!(
        run(Synchronous::Normal).await,
        epoch,
        "a process crash on the same boot keeps it: the OS kept the writes"
    );
    last_run(false, "another-boot");
    let fresh = run(Synchronous::Normal).await;
    assert_ne!(fresh, epoch, "a crash across a reboot may have lost unsynced commits: a new epoch");
    last_run(false, "another-boot");
    assert_eq!(run(Synchronous::Full).await, fresh, "with FULL every commit was on disk: the epoch stays");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_pushes_survive_a_reopen_and_a_dead_runs_claims_are_released() {
    use crate::planner::{Device, NotificationMeta, Overrides, Policy, PushTarget, UserContext};
    use crate::store::PlanItem;
    let dir = tempfile::tempdir().unwrap();
    let (clock, _) = clock(1_000_000);
    let stores = Stores::sqlite(open(dir.path(), Synchronous::Full, clock.clone()).unwrap());
    let item = |id: &str| PlanItem {
        context: UserContext {
            devices: vec![Device {
                id: "phone".into(),
                push: Some(PushTarget { platform: PushPlatform::Apns, registered_at: 1 }),
                live: false,
            }],
            ..UserContext::default()
        },
        meta: NotificationMeta {
            id: id.into(),
            user: "alice".into(),
            priority: tidings_core::protocol::Priority::Important,
            persistence: Persistence::Bufferable,
            kind: "t".into(),
            topic: Some("news".into()),
            group: None,
            title: Some("hello".into()),
            created_at: 5,
            overrides: Overrides::default(),
        },
        envelope: format!(r#"{{"id":"{id}"}}"#),
    };
    stores.push.plan(&Policy::default(), 1_000_000, vec![item("n1"), item("n2")]).await.unwrap();
    // n1 and n2 are claimed by a run that then dies (the store is dropped without settling).
    let (_, claimed) = stores.push.claim_due(1_000_000, Duration::from_secs(600), 10).await.unwrap();
    assert_eq!(claimed.len(), 2);
    stores.streams.close().await;
    drop(stores);
    let stores = Stores::sqlite(open(dir.path(), Synchronous::Full, clock).unwrap());
    let (_, again) = stores.push.claim_due(1_000_000, Duration::from_secs(600), 10).await.unwrap();
    assert_eq!(again, claimed, "claimable again at once, everything kept (row, envelope, attempts)");
    assert_eq!(again[0].row.topic.as_deref(), Some("news"));
    assert!(
        stores.push.deliveries("n1").await.unwrap().iter().any(|r| r.status == crate::store::DeliveryStatus::Scheduled)
    );
}

/// Push delivery and the inbox were developed side by side and each wrote a "version 2" (push delivery's tables, or
/// the inbox's). A database of either, and of version 1, reaches the current version with every table, keeping its
/// rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_of_version_1_or_of_either_version_2_is_migrated_to_the_current_version() {
    use crate::store::InboxStore as _;
    let tables =
        ["entries", "user_settings", "pending_push", "delivery_log", "inbox_users", "inbox_items", "inbox_ops"];
    for (name, second) in [
        ("version 1", None),
        ("push delivery's 2", Some(schema::PUSH_DELIVERY)),
        ("the inbox's 2", Some(schema::INBOX)),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join(DATABASE_FILE);
        {
            let conn = Connection::open(&db).unwrap();
            conn.execute_batch(schema::MIGRATIONS[0]).unwrap();
            conn.execute_batch("PRAGMA user_version = 1").unwrap();
            if let Some(second) = second {
                conn.execute_batch(schema::MIGRATIONS[second]).unwrap();
                conn.execute_batch("PRAGMA user_version = 2").unwrap();
            }
            if second == Some(schema::INBOX) {
                // An inbox written by that version: its counts must survive.
                conn.execute_batch(
                    "INSERT INTO inbox_users (uid, user, version, head, unseen, unread, total, items, read_marks, \
                     seen_marks) VALUES (1, 'alice', 41, 0, 0, 0, 0, 0, '', '')",
                )
                .unwrap();
            }
        }
        let (clock, _) = clock(1_000);
        let store = open(dir.path(), Synchronous::Full, clock).unwrap_or_else(|e| panic!("{name}: {e:?}"));
        let counts = store.counts("alice").await.unwrap();
        if second == Some(schema::INBOX) {
            assert_eq!(counts.version, 41, "{name}: the inbox kept its version");
        }
        store.close().await;
        drop(store);
        assert_eq!(count(&db, "PRAGMA user_version"), schema::current_version(), "{name}");
        for table in tables {
            let n =
                count(&db, &format!("SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = '{table}'"));
            assert_eq!(n, 1, "{name}: table {table}");
        }
    }
}

/// Version 4 keeps only `(sid, offset, seq)` per entry and lists a notification's placements in its row: a version 3
/// database keeps its history (reads, finds by id, offsets going on) and its old notifications are still pruned by
/// age with all their entries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_3_history_is_migrated_to_version_4_and_still_read_found_and_pruned_heads_kept() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join(DATABASE_FILE);
    {
        let conn = Connection::open(&db).unwrap();
        for migration in &schema::MIGRATIONS[..3] {
            conn.execute_batch(migration).unwrap();
        }
        // Two streams; n1 (bufferable) on both, n2 (persistent) and n3 (bufferable) on user:a only.
        conn.execute_batch(
            "PRAGMA user_version = 3;
             INSERT INTO streams (sid, name, head) VALUES (1, 'user:a', 3), (2, 'topic:t', 1);
             INSERT INTO notifications (seq, id, type, priority, persistence, title, body, data, grp, created_at, refs)
                 VALUES (1, 'n1', 't', 'important', 'bufferable', 'one', NULL, '{\"k\":1}', NULL, 1000000, 2),
                        (2, 'n2', 't', 'important', 'persistent', 'two', NULL, NULL, NULL, 1000000, 1),
                        (3, 'n3', 't', 'important', 'bufferable', 'three', NULL, NULL, NULL, 1000000, 1);
             INSERT INTO entries (sid, offset, seq, persistence, created_at) VALUES
                 (1, 1, 1, 'bufferable', 1000000), (2, 1, 1, 'bufferable', 1000000),
                 (1, 2, 2, 'persistent', 1000000), (1, 3, 3, 'bufferable', 1000000);",
        )
        .unwrap();
    }
    let (clock, now) = clock(1_000_000);
    let stores = Stores::sqlite(open(dir.path(), Synchronous::Full, clock).unwrap());
    assert_eq!(count(&db, "PRAGMA user_version"), 4);
    let epoch = stores.streams.epoch("user:a").await.unwrap();
    let read = stores.streams.read("user:a", Some((&epoch, 0))).await.unwrap();
    assert_eq!(read.entries.iter().map(|e| e.offset).collect::<Vec<_>>(), [1, 2, 3]);
    assert!(read.entries[0].frame.as_str().contains(r#""title":"one""#), "{}", read.entries[0].frame.as_str());
    let topic = stores.streams.read("topic:t", Some((&epoch, 0))).await.unwrap();
    assert_eq!(topic.entries.iter().map(|e| e.offset).collect::<Vec<_>>(), [1]);
    let found = stores.streams.find("user:a", "n2").await.unwrap().expect("n2 found in user:a");
    assert_eq!(found.offset, 2);
    assert_eq!(stores.streams.find("topic:t", "n1").await.unwrap().map(|e| e.offset), Some(1));
    assert!(stores.streams.find("topic:t", "n2").await.unwrap().is_none(), "n2 never went to topic:t");
    let next =
        append(&stores, vec![publication("n4", &["user:a", "topic:t"], Persistence::Bufferable, 1_000_000)]).await;
    assert!(
        matches!(&next[0], AppendOutcome::Appended { deliveries: d, .. } if d[0].offset == Some(4) && d[1].offset == Some(2))
    );
    assert_eq!(count(&db, "SELECT count(*) FROM notifications WHERE placements IS NULL"), 0);
    // Past the replay age (60 s in these limits) the bufferable notifications go with all their entries; the
    // persistent one stays.
    now.store(1_000_000 + 61_000, Ordering::SeqCst);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while count(&db, "SELECT count(*) FROM entries") != 1 {
        assert!(std::time::Instant::now() < deadline, "pruning did not happen");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(count(&db, "SELECT count(*) FROM notifications"), 1);
    assert_eq!(count(&db, "SELECT seq FROM entries"), 2, "the persistent entry is kept");
    let read = stores.streams.read("user:a", Some((&epoch, 0))).await.unwrap();
    assert_eq!((read.state.head, read.entries.len()), (4, 0), "the head outlives the entries pruned by age");
    stores.streams.close().await;
    drop(stores);
    // Heads are not written by commits but kept through pruning: after a restart the offsets go on.
    let (clock, _) = contract::clock(1_000_000 + 61_000);
    let stores = Stores::sqlite(open(dir.path(), Synchronous::Full, clock).unwrap());
    let topic = stores.streams.read("topic:t", None).await.unwrap();
    assert_eq!(topic.state.head, 2, "topic:t lost every entry and kept its head");
    let next =
        append(&stores, vec![publication("n5", &["user:a", "topic:t"], Persistence::Bufferable, 1_061_000)]).await;
    assert!(
        matches!(&next[0], AppendOutcome::Appended { deliveries: d, .. } if d[0].offset == Some(5) && d[1].offset == Some(3))
    );
    stores.streams.close().await;
}
