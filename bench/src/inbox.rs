//! I1 and I2 (bench/README.md): the inbox on the SQLite store (synchronous full), measured at the store — the
//! `InboxStore` the server's `GET /v1/me/inbox` and `POST /v1/me/inbox/mark-all` call (HTTP and the session add
//! their parsing and encoding on top).
//!
//! - I1, list: `users` inboxes of `items` items each, seeded in commits of 10,000 items; then pages of 50 read for
//!   random users, newest first (the first page) and from a random position (`before`, a deep page), and the
//!   unread filter's first page; p50/p99 of each.
//! - I2, mark all read: inboxes of 100, 1,000 and 10,000 unread items; one "mark all read" on each, timed — the cost
//!   must not grow with the item count (one mark row and a recount above the cursor, not one write per item).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tidings_core::protocol::{
    InboxQuery, MarkAllAction, Notification, NotificationFields, Persistence, Priority, StatusFilter,
};
use tidings_server::store::{ChangeKind, ChangeRequest, InboxAdd, InboxStore, SqliteStore, StoreLimits};
use tidings_server::{ServerConfig, Synchronous};

use crate::child::payload64;
use crate::percentile;

/// Items per seeding commit.
const SEED_BATCH: usize = 10_000;

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// A small deterministic generator (xorshift), so runs read the same users.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// The store in a fresh directory under the system's temporary directory (removed by the caller).
fn open(dir: &std::path::Path, max_items: usize) -> anyhow::Result<SqliteStore> {
    let mut config = ServerConfig::for_tests();
    config.inbox_max_items = max_items;
    let limits = StoreLimits::from_config(&config);
    SqliteStore::open(dir, Synchronous::Full, limits, Arc::new(now_ms)).map_err(|e| anyhow::anyhow!("{e:?}"))
}

fn notification(user: &str, n: u64, created_at: u64) -> Notification {
    NotificationFields {
        id: format!("{user}-{n}"),
        stream: format!("user:{user}"),
        offset: Some(n + 1),
        epoch: "bench".into(),
        kind: if n.is_multiple_of(4) { "comment.created".into() } else { "like.created".into() },
        priority: Priority::Important,
        persistence: Persistence::Persistent,
        title: Some(format!("notification {n}")),
        body: Some("a body of some fifty bytes, as a short message has".into()),
        data: Some(payload64()),
        group: None,
        created_at,
    }
    .into()
}

/// Adds `items` items to each of `users` (interleaved, as real traffic is), in commits of [`SEED_BATCH`].
async fn seed(store: &SqliteStore, users: &[String], items: u64) -> anyhow::Result<(u64, f64)> {
    let started = Instant::now();
    let at = now_ms();
    let mut batch = Vec::with_capacity(SEED_BATCH);
    let mut added = 0u64;
    for n in 0..items {
        for user in users {
            batch.push(InboxAdd { copies: vec![notification(user, n, at)], at });
            if batch.len() == SEED_BATCH {
                store.add(std::mem::take(&mut batch)).await.map_err(|e| anyhow::anyhow!("seed: {e:?}"))?;
                added += SEED_BATCH as u64;
            }
        }
    }
    if !batch.is_empty() {
        added += batch.len() as u64;
        store.add(batch).await.map_err(|e| anyhow::anyhow!("seed: {e:?}"))?;
    }
    Ok((added, started.elapsed().as_secs_f64()))
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// Times `reads` page reads of `query(user, rng)` for random users; sorted microseconds.
async fn time_reads(
    store: &SqliteStore,
    users: &[String],
    reads: usize,
    rng: &mut Rng,
    query: impl Fn(&mut Rng) -> InboxQuery,
) -> anyhow::Result<Vec<u64>> {
    let mut times = Vec::with_capacity(reads);
    for _ in 0..reads {
        let user = &users[rng.below(users.len() as u64) as usize];
        let q = query(rng);
        let t0 = Instant::now();
        let page = store.list(user, q).await.map_err(|e| anyhow::anyhow!("list: {e:?}"))?;
        times.push(t0.elapsed().as_micros() as u64);
        anyhow::ensure!(!page.items.is_empty(), "an empty page for {user}");
    }
    times.sort_unstable();
    Ok(times)
}

/// Database bytes per inbox item, as measured (94 MiB for 100,000 items of this scenario's shape: the envelope with
/// its 64-byte payload, title and body, and the indexes).
const BYTES_PER_ITEM: u64 = 1_000;

/// Free bytes in the file system holding `dir` (`df -Pk`).
fn free_bytes(dir: &std::path::Path) -> anyhow::Result<u64> {
    let out = std::process::Command::new("df").arg("-Pk").arg(dir).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let kib: u64 = text
        .lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("cannot read free space from df: {text}"))?;
    Ok(kib * 1024)
}

/// I1: list latency with `users` inboxes of `items` items.
pub(crate) async fn i1(users: usize, items: u64, reads: usize) -> anyhow::Result<Value> {
    let dir = std::env::temp_dir().join(format!("tidings-bench-inbox-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    // The full size (10,000 × 10,000) needs about 100 GB: refuse rather than fill the disk.
    let need = users as u64 * items * BYTES_PER_ITEM;
    let free = free_bytes(&std::env::temp_dir())?;
    anyhow::ensure!(
        need + need / 5 < free,
        "I1 with {users} users × {items} items needs about {} GiB in {} and {} GiB are free: set TMPDIR to a larger \
         disk or lower --inbox-users / --inbox-items",
        need >> 30,
        std::env::temp_dir().display(),
        free >> 30
    );
    let result = async {
        let store = open(&dir, items as usize)?;
        let names: Vec<String> = (0..users).map(|u| format!("u{u}")).collect();
        let (added, seed_s) = seed(&store, &names, items).await?;
        let db_bytes: u64 = std::fs::read_dir(&dir)?.flatten().filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum();
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        // Warm the reader pool and the page cache a little, as a running server's would be.
        time_reads(&store, &names, reads.min(100), &mut rng, |_| InboxQuery { limit: Some(50), ..Default::default() })
            .await?;
        let first =
            time_reads(&store, &names, reads, &mut rng, |_| InboxQuery { limit: Some(50), ..Default::default() })
                .await?;
        let deep = time_reads(&store, &names, reads, &mut rng, |r| InboxQuery {
            before: Some(51 + r.below(items.saturating_sub(51).max(1))),
            limit: Some(50),
            ..Default::default()
        })
        .await?;
        let unread = time_reads(&store, &names, reads, &mut rng, |_| InboxQuery {
            limit: Some(50),
            status: StatusFilter::Unread,
            ..Default::default()
        })
        .await?;
        let typed = time_reads(&store, &names, reads, &mut rng, |_| InboxQuery {
            limit: Some(50),
            kind: Some("comment.created".into()),
            ..Default::default()
        })
        .await?;
        store_close(store).await;
        anyhow::Ok(json!({
            "scenario": "I1", "system": "tidings", "store": "sqlite", "users": users, "items_per_user": items,
            "items": added, "seed_s": (seed_s * 10.0).round() / 10.0,
            "seed_items_per_s": (added as f64 / seed_s).round(), "db_mib": db_bytes / (1 << 20), "reads": reads,
            "first_page_p50_ms": ms(percentile(&first, 50.0)), "first_page_p99_ms": ms(percentile(&first, 99.0)),
            "deep_page_p50_ms": ms(percentile(&deep, 50.0)), "deep_page_p99_ms": ms(percentile(&deep, 99.0)),
            "unread_page_p50_ms": ms(percentile(&unread, 50.0)), "unread_page_p99_ms": ms(percentile(&unread, 99.0)),
            "type_page_p50_ms": ms(percentile(&typed, 50.0)), "type_page_p99_ms": ms(percentile(&typed, 99.0)),
            "method": "InboxStore::list on the SQLite store (synchronous full, WAL), pages of 50 newest first for \
                       random users, one read at a time; seeded with InboxStore::add in commits of 10,000 items",
        }))
    }
    .await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// I2: the cost of one "mark all read" against the number of unread items (`sizes`), `per_size` inboxes each.
pub(crate) async fn i2(sizes: &[u64], per_size: usize) -> anyhow::Result<Value> {
    let dir = std::env::temp_dir().join(format!("tidings-bench-markall-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let result = async {
        let max = sizes.iter().copied().max().unwrap_or(1) as usize;
        let store = open(&dir, max)?;
        let mut rows = Vec::new();
        for &size in sizes {
            let names: Vec<String> = (0..per_size).map(|u| format!("m{size}x{u}")).collect();
            seed(&store, &names, size).await?;
            let mut times = Vec::with_capacity(per_size);
            for user in &names {
                let request = ChangeRequest {
                    op_id: None,
                    at: now_ms(),
                    kind: ChangeKind::MarkAll { action: MarkAllAction::Read, up_to: None },
                };
                let t0 = Instant::now();
                let change = store.change(user, request).await.map_err(|e| anyhow::anyhow!("mark all: {e:?}"))?;
                times.push(t0.elapsed().as_micros() as u64);
                anyhow::ensure!(
                    change.update.counts.unread == 0 && change.update.counts.total == size,
                    "mark all read left {:?}",
                    change.update.counts
                );
            }
            times.sort_unstable();
            rows.push(json!({"unread_items": size, "inboxes": per_size,
                "p50_ms": ms(percentile(&times, 50.0)), "p99_ms": ms(percentile(&times, 99.0))}));
        }
        store_close(store).await;
        anyhow::Ok(json!({
            "scenario": "I2", "system": "tidings", "store": "sqlite", "rows": rows,
            "method": "InboxStore::change(MarkAll read, up to the newest item) on the SQLite store (synchronous \
                       full: the time includes the commit's fsync), one at a time, each on a different inbox whose \
                       items are all unread",
        }))
    }
    .await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn store_close(store: SqliteStore) {
    use tidings_server::store::StreamStore as _;
    store.close().await;
    // The writer thread ends with the last reference.
    drop(store);
    tokio::time::sleep(Duration::from_millis(10)).await;
}
