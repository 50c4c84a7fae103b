//! [`PostgresStore`]: every concern in one PostgreSQL database, shared by several server processes — the durable
//! state of a multi-process deployment (`--database-url`).
//!
//! - **Driver:** `tokio-postgres` (async, no OpenSSL: the tests' loopback needs no TLS) with the
//!   `deadpool-postgres` pool, which drops a broken connection when it is next taken and opens a new one: after
//!   PostgreSQL restarts, the store recovers by itself. `sqlx` would do too; tokio-postgres is smaller, has no
//!   macros needing a database at build time, and fits the workspace's Rust version.
//! - **Offsets are assigned by the commit.** Appends queue up for one task per process (group commit, like the
//!   SQLite writer): it takes everything waiting into one transaction, which locks the rows of every stream it
//!   touches (`SELECT … ORDER BY name FOR UPDATE`: one fixed order in every process, so no deadlock between
//!   processes), assigns `head + 1`, writes the entries and the idempotency keys, and commits. Another process
//!   appending to the same stream waits for the lock, then reads the committed head: offsets are unique and
//!   gap-free across processes. [`OnCommit`](super::OnCommit) runs after the commit, per stream in offset order.
//! - **Idempotency across processes:** a key is claimed by `INSERT … ON CONFLICT … WHERE at < window`; a second
//!   process racing with the same key waits for the first one's transaction and then sees its key: `Duplicate`.
//! - **Epochs** live beside each stream's head (`streams.epoch`); a new stream starts in the database's epoch
//!   (drawn when the schema was created). They survive restarts of the server and of PostgreSQL.
//! - **Pending pushes** are claimed with `UPDATE … WHERE ready_at <= now RETURNING`: a process racing for the same
//!   rows waits for the other's commit and then finds them no longer ready, so each row is claimed once across
//!   processes; claim tokens come from a sequence. An ack recorded by any process deletes the cancellable rows in
//!   its own transaction.
//! - **Digest windows** are read and opened under a transaction-scoped advisory lock per (user, group), so two
//!   processes planning the same window at once cannot both open it; inbox changes lock the user the same way.
//! - **History:** `read` replays the window (count and age limits), `page` and `find` serve everything stored
//!   (persistent notifications for their retention), from one snapshot each.
//! - **Failures:** PostgreSQL unreachable, restarting or refusing → [`StoreError::Unavailable`] (publishes answer
//!   503 with a retry hint); a transaction that failed left nothing behind. Deadlocks and serialization failures
//!   are retried. A commit whose answer was lost (the connection broke during `COMMIT`) is reported as a failure
//!   although it may have committed: a retry with the same idempotency key then answers `Duplicate`.
//! - **Schema** versioned in `schema_version`, migrated at startup under an advisory lock (see [`schema`]).

mod inbox;
mod schema;
pub mod testing;

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tidings_core::protocol::{NotificationFields, Persistence, Priority, PushPlatform, RawJson};
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::error::SqlState;
use tokio_postgres::{IsolationLevel, NoTls, Row};
use tracing::{debug, info, warn};

use super::push::{
    DeliveryRecord, DeliveryStatus, PendingSummary, PlanItem, PushStore, SettingsChange, SettingsError, SettingsStore,
    Settlement, StoredPush, UserSettings, cancelled, plan_log, window_group,
};
use super::{AckStore, Append, BoxFuture, DeviceStore, StoreError, StoreLimits};
use crate::metrics::StoreMetrics;
use crate::model::{
    AckRecord, AppendOutcome, Committed, Delivery, HistoryEntry, HistoryRead, IdFloor, Position, Publication,
    PushRecord, StreamState, encode_notification,
};
use crate::planner::{
    Channel, DigestWindow, PendingPush, PendingReason, Policy, PublishPlan, RowKey, UnixMs, plan_publish,
};
use crate::util::new_epoch;

/// Most publications taken into one append transaction.
const MAX_APPENDS_PER_COMMIT: usize = 512;
/// Connections per process.
const POOL_SIZE: usize = 16;
/// How long a caller waits for a connection, and a new connection for PostgreSQL, before `Unavailable`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Attempts of a transaction that PostgreSQL aborted for a deadlock or a serialization failure.
const MAX_ATTEMPTS: u32 = 6;
/// How often one process prunes what aged out.
const MAINTENANCE_EVERY: Duration = if cfg!(test) { Duration::from_millis(200) } else { Duration::from_secs(5) };
/// Most rows pruned per statement.
const PRUNE_CHUNK: i64 = 5_000;
/// The advisory lock of the pruning (one process at a time).
const MAINTENANCE_LOCK: i64 = 0x7469_6469_6e67_7302;
/// Advisory lock classes (first key of the two-key form).
const LOCK_DIGEST: i32 = 0x7464_0001;
const LOCK_INBOX: i32 = 0x7464_0002;

type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;
type PgResult<T> = Result<T, tokio_postgres::Error>;
type Client = deadpool_postgres::Client;

/// Why the store could not be opened: a message naming the fix.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct OpenError(pub String);

/// The PostgreSQL store. See the module documentation.
pub struct PostgresStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    /// Where the database is (for messages; no password).
    target: String,
    /// The database's epoch: that of streams nobody published to yet.
    epoch: Arc<str>,
    limits: StoreLimits,
    clock: Clock,
    appender: Mutex<Option<mpsc::UnboundedSender<Queued>>>,
    appender_task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    metrics: Arc<OnceLock<StoreMetrics>>,
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStore")
            .field("target", &self.inner.target)
            .field("epoch", &self.inner.epoch)
            .finish_non_exhaustive()
    }
}

/// Appends waiting for the append task.
struct Queued {
    at: Instant,
    batch: Vec<Append>,
    reply: oneshot::Sender<Vec<Result<AppendOutcome, StoreError>>>,
}

/// `u64` ↔ `BIGINT`.
fn to_i(v: u64) -> i64 {
    v.min(i64::MAX as u64) as i64
}
fn to_u(v: i64) -> u64 {
    v.max(0) as u64
}

/// Whether PostgreSQL aborted the transaction in a way worth trying again at once.
fn retryable(e: &tokio_postgres::Error) -> bool {
    matches!(e.code(), Some(c) if *c == SqlState::T_R_DEADLOCK_DETECTED || *c == SqlState::T_R_SERIALIZATION_FAILURE
        || *c == SqlState::UNIQUE_VIOLATION)
}

/// Maps a PostgreSQL error to a store error.
fn classify(e: &tokio_postgres::Error) -> StoreError {
    match e.code() {
        Some(c) if *c == SqlState::DISK_FULL || *c == SqlState::OUT_OF_MEMORY => {
            StoreError::full(format!("PostgreSQL is out of space: {e}"))
        }
        _ => StoreError::unavailable(format!("PostgreSQL error: {}", describe(e))),
    }
}

/// An error with its cause (tokio-postgres's `Display` leaves the database's message out).
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{e}: {}", db.message()),
        None => match std::error::Error::source(e) {
            Some(source) => format!("{e}: {source}"),
            None => e.to_string(),
        },
    }
}

/// Runs `$body` (an async block using `$client`, a pooled connection) and retries it on deadlocks and
/// serialization failures; a connection that cannot be had, or any other error, is the store error.
macro_rules! retrying {
    ($inner:expr, |$client:ident| $body:expr) => {{
        let mut attempt = 0u32;
        loop {
            let mut $client = $inner.client().await?;
            #[allow(clippy::redundant_closure_call)]
            let result: PgResult<_> = $body.await;
            match result {
                Ok(v) => break Ok(v),
                Err(e) if attempt + 1 < MAX_ATTEMPTS && retryable(&e) => {
                    attempt += 1;
                    debug!(error = %e, attempt, "a transaction was aborted; trying again");
                    tokio::time::sleep(Duration::from_millis(fastrand::u64(1..=10 * u64::from(attempt)))).await;
                }
                Err(e) => break Err(classify(&e)),
            }
        }
    }};
}

impl PostgresStore {
    /// Connects to the database at `url` (a `postgres://` URL or a libpq key/value string), brings its schema to
    /// this server's version and starts the append task. Must be called within a tokio runtime. Fails with a
    /// message naming the fix when the URL is malformed, PostgreSQL cannot be reached or refuses the login, or
    /// the database was written by a newer server.
    pub async fn open(url: &str, limits: StoreLimits, clock: Clock) -> Result<Self, OpenError> {
        let fix = "Fix: start PostgreSQL, or correct --database-url / TIDINGS_DATABASE_URL";
        let mut config = tokio_postgres::Config::from_str(url).map_err(|e| {
            OpenError(format!(
                "the database URL is malformed ({e}). Fix: give --database-url / TIDINGS_DATABASE_URL as \
                 postgres://user:password@host:port/database"
            ))
        })?;
        config.connect_timeout(CONNECT_TIMEOUT);
        if config.get_application_name().is_none() {
            config.application_name("tidings-server");
        }
        let target = target_of(&config);
        let manager = Manager::from_config(config, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(CONNECT_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| OpenError(format!("cannot set up the PostgreSQL pool: {e}")))?;
        let mut client = pool
            .get()
            .await
            .map_err(|e| OpenError(format!("cannot connect to PostgreSQL at {target}: {}. {fix}", pool_error(&e))))?;
        let epoch = migrate(&mut client)
            .await
            .map_err(|e| OpenError(format!("cannot prepare the database at {target}: {}", describe_open(&e))))?;
        drop(client);
        let inner = Arc::new(Inner {
            pool,
            target: target.clone(),
            epoch: Arc::from(epoch.as_str()),
            limits,
            clock,
            appender: Mutex::new(None),
            appender_task: Mutex::new(None),
            metrics: Arc::new(OnceLock::new()),
        });
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(run_appends(Arc::downgrade(&inner), inner.pool.clone(), rx));
        *inner.appender.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
        *inner.appender_task.lock().unwrap_or_else(|p| p.into_inner()) = Some(task);
        tokio::spawn(maintain(Arc::downgrade(&inner)));
        info!(database = %target, epoch = %epoch, "PostgreSQL store open");
        Ok(PostgresStore { inner })
    }

    /// Where the database is (host, port and database name).
    pub fn target(&self) -> &str {
        &self.inner.target
    }
}

/// `host:port/database` of a configuration (for messages).
fn target_of(config: &tokio_postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let db = config.get_dbname().or(config.get_user()).unwrap_or("postgres");
    format!("{host}:{port}/{db}")
}

fn pool_error(e: &deadpool_postgres::PoolError) -> String {
    match e {
        deadpool_postgres::PoolError::Backend(e) => describe(e),
        deadpool_postgres::PoolError::Timeout(_) => "timed out".into(),
        other => other.to_string(),
    }
}

/// An error while migrating: the database's own message when it has one.
fn describe_open(e: &MigrateError) -> String {
    match e {
        MigrateError::Pg(e) => describe(e),
        MigrateError::Newer(msg) => msg.clone(),
    }
}

enum MigrateError {
    Pg(tokio_postgres::Error),
    Newer(String),
}

impl From<tokio_postgres::Error> for MigrateError {
    fn from(e: tokio_postgres::Error) -> Self {
        MigrateError::Pg(e)
    }
}

/// Brings the schema to this server's version under the migration lock; returns the database's epoch.
async fn migrate(client: &mut Client) -> Result<String, MigrateError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&schema::MIGRATION_LOCK]).await?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)").await?;
    let version: Option<i64> = tx.query_opt("SELECT version FROM schema_version", &[]).await?.map(|r| r.get(0));
    let known = schema::current_version();
    let mut version = match version {
        Some(v) => v,
        None => {
            tx.execute("INSERT INTO schema_version (version) VALUES (0)", &[]).await?;
            0
        }
    };
    if version > known {
        return Err(MigrateError::Newer(format!(
            "it was written by a newer tidings-server (schema version {version}; this one knows up to {known}). \
             Fix: run that version, or point --database-url at another database"
        )));
    }
    while version < known {
        tx.batch_execute(schema::MIGRATIONS[version as usize]).await?;
        version += 1;
        tx.execute("UPDATE schema_version SET version = $1", &[&version]).await?;
        info!(version, "database schema migrated");
    }
    tx.execute("INSERT INTO meta (key, value) VALUES ('epoch', $1) ON CONFLICT (key) DO NOTHING", &[&new_epoch()])
        .await?;
    let epoch: String = tx.query_one("SELECT value FROM meta WHERE key = 'epoch'", &[]).await?.get(0);
    tx.commit().await?;
    Ok(epoch)
}

impl Inner {
    async fn client(&self) -> Result<Client, StoreError> {
        self.pool.get().await.map_err(|e| {
            StoreError::unavailable(format!("PostgreSQL at {} is unreachable: {}", self.target, pool_error(&e)))
        })
    }

    fn now(&self) -> u64 {
        (self.clock)()
    }
}

// ---- appends ----

/// The append task: takes what waits, commits it in one transaction, hands it on in commit order.
async fn run_appends(inner: Weak<Inner>, pool: Pool, mut rx: mpsc::UnboundedReceiver<Queued>) {
    let _ = pool;
    while let Some(first) = rx.recv().await {
        let oldest = first.at;
        let mut jobs = vec![first];
        let mut n = jobs[0].batch.len();
        while n < MAX_APPENDS_PER_COMMIT {
            match rx.try_recv() {
                Ok(job) => {
                    n += job.batch.len();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        let Some(inner) = inner.upgrade() else {
            for job in jobs {
                let n = job.batch.len();
                let _ = job.reply.send(vec![Err(StoreError::unavailable("the store is closed")); n]);
            }
            break;
        };
        let metrics = inner.metrics.get().cloned();
        if let Some(m) = &metrics {
            m.queue.taking(oldest);
        }
        let started = Instant::now();
        let taken = jobs.len();
        let publications: Vec<Arc<Publication>> =
            jobs.iter().flat_map(|j| j.batch.iter().map(|a| a.publication.clone())).collect();
        let now = inner.now();
        let result: Result<_, StoreError> =
            async { retrying!(inner, |client| commit_appends(&mut client, &inner, &publications, now)) }.await;
        match result {
            Ok(outcomes) => {
                if let Some(m) = &metrics {
                    m.commit(taken, started.elapsed());
                }
                let mut outcomes = outcomes.into_iter();
                for job in jobs {
                    let mut results = Vec::with_capacity(job.batch.len());
                    for append in job.batch {
                        let (outcome, placed) = outcomes.next().expect("one outcome per publication");
                        let Append { publication: mut p, mut on_commit } = append;
                        if let AppendOutcome::Appended { reissued: Some(id), .. } = &outcome {
                            p = Arc::new(p.with_id(id));
                        }
                        for (stream, epoch, offset) in placed {
                            let frame = p.encode(&stream, &epoch, offset);
                            on_commit(&Committed { id: p.id.clone(), stream, epoch, offset, frame });
                        }
                        results.push(Ok(outcome));
                    }
                    let _ = job.reply.send(results);
                }
            }
            Err(error) => {
                if let Some(m) = &metrics {
                    m.commit_failures.inc();
                }
                warn!(error = %error, publications = publications.len(), "an append commit failed; nothing of it was stored");
                for job in jobs {
                    let n = job.batch.len();
                    let _ = job.reply.send(vec![Err(error.clone()); n]);
                }
            }
        }
        if let Some(m) = &metrics {
            m.queue.done(taken, None);
        }
    }
}

/// Where one publication went: `(stream, epoch, offset)` per stream.
type Placed = Vec<(Arc<str>, Arc<str>, Option<u64>)>;

/// A stream locked by the transaction.
struct Locked {
    sid: i64,
    epoch: Arc<str>,
    head: u64,
    /// The greatest server-generated id in the stream.
    last_id: IdFloor,
    dirty: bool,
}

/// Commits `publications` in one transaction (see the module documentation).
async fn commit_appends(
    client: &mut Client,
    inner: &Inner,
    publications: &[Arc<Publication>],
    now: u64,
) -> PgResult<Vec<(AppendOutcome, Placed)>> {
    let tx = client.transaction().await?;
    // Every stream the batch appends to, in one order for every process.
    let names: Vec<String> = publications
        .iter()
        .filter(|p| p.is_buffered())
        .flat_map(|p| p.streams.iter().cloned())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut streams: HashMap<String, Locked> = HashMap::new();
    if !names.is_empty() {
        tx.execute(
            &tx.prepare_cached(
                "INSERT INTO streams (name, epoch, head) SELECT n, $2, 0 FROM unnest($1::text[]) AS n ORDER BY n \
                 ON CONFLICT (name) DO NOTHING",
            )
            .await?,
            &[&names, &&*inner.epoch],
        )
        .await?;
        let rows = tx
            .query(
                &tx.prepare_cached(
                    "SELECT name, sid, epoch, head, last_id FROM streams WHERE name = ANY($1) ORDER BY name FOR UPDATE",
                )
                .await?,
                &[&names],
            )
            .await?;
        for r in rows {
            let epoch: String = r.get(2);
            let mut last_id = IdFloor::default();
            last_id.raise(r.get(4));
            streams.insert(
                r.get(0),
                Locked { sid: r.get(1), epoch: Arc::from(epoch.as_str()), head: to_u(r.get(3)), last_id, dirty: false },
            );
        }
    }
    let claim_key = tx
        .prepare_cached(
            "INSERT INTO idempotency (key, at, deliveries) VALUES ($1, $2, '[]') ON CONFLICT (key) DO UPDATE \
             SET at = EXCLUDED.at, deliveries = '[]' WHERE idempotency.at <= $3 RETURNING 1",
        )
        .await?;
    let seen_key = tx.prepare_cached("SELECT deliveries FROM idempotency WHERE key = $1").await?;
    let put_key = tx.prepare_cached("UPDATE idempotency SET deliveries = $2 WHERE key = $1").await?;
    // The rows are written after the loop, one statement per table for the whole batch (a statement per row and
    // table was most of PostgreSQL's CPU in a broadcast benchmark): the contents' sequence numbers are drawn first.
    let buffered = publications.iter().filter(|p| p.is_buffered() && !p.streams.is_empty()).count();
    let mut seqs: Vec<i64> = if buffered == 0 {
        Vec::new()
    } else {
        tx.query(
            &tx.prepare_cached("SELECT nextval('notifications_seq_seq') FROM generate_series(1::bigint, $1::bigint)")
                .await?,
            &[&(buffered as i64)],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect()
    };
    seqs.reverse();
    let mut rows = NotificationRows::default();
    let mut entries = EntryRows::default();
    // `(sid, off)` of the entries pushed out of their stream's buffer by this batch.
    let (mut drop_sids, mut drop_offs): (Vec<i64>, Vec<i64>) = (Vec::new(), Vec::new());
    let window = inner.limits.idempotency_window.as_millis() as u64;
    let max = inner.limits.replay_max_items as u64;
    let mut out = Vec::with_capacity(publications.len());
    for p in publications {
        if p.idempotent {
            let cut = to_i(now.saturating_sub(window));
            let claimed = tx.query_opt(&claim_key, &[&&*p.id, &to_i(now), &cut]).await?;
            if claimed.is_none() {
                let deliveries: Option<String> = tx.query_opt(&seen_key, &[&&*p.id]).await?.map(|r| r.get(0));
                let deliveries: Vec<Delivery> =
                    deliveries.and_then(|d| serde_json::from_str(&d).ok()).unwrap_or_default();
                out.push((AppendOutcome::Duplicate(deliveries), Vec::new()));
                continue;
            }
        }
        let f = &p.fields;
        // Under the locks of its streams, a server-generated id is kept above theirs (`IdFloor`): ids drawn by
        // different processes stay in commit order in every stream.
        let mut reissued: Option<Arc<str>> = None;
        let seq: Option<i64> = if p.is_buffered() && !p.streams.is_empty() {
            let mut floor = IdFloor::default();
            for stream in &p.streams {
                if let Some(s) = streams.get(stream) {
                    floor.join(&s.last_id);
                }
            }
            reissued = floor.reissue(p).map(Arc::from);
            let id: &str = reissued.as_deref().unwrap_or(&p.id);
            if !p.idempotent {
                for stream in &p.streams {
                    if let Some(s) = streams.get_mut(stream) {
                        s.last_id.raise(id);
                    }
                }
            }
            // One drawn per content above; a further one is drawn here if that count were ever short.
            let seq = match seqs.pop() {
                Some(seq) => seq,
                None => tx
                    .query_one(&tx.prepare_cached("SELECT nextval('notifications_seq_seq')").await?, &[])
                    .await?
                    .get(0),
            };
            rows.push(seq, reissued.as_deref(), p);
            Some(seq)
        } else {
            None
        };
        let mut deliveries = Vec::with_capacity(p.streams.len());
        let mut placed = Vec::with_capacity(p.streams.len());
        for stream in &p.streams {
            let (epoch, offset) = match (seq, streams.get_mut(stream)) {
                (Some(seq), Some(s)) => {
                    s.head += 1;
                    s.dirty = true;
                    let (sid, offset) = (s.sid, s.head);
                    entries.push(sid, to_i(offset), seq, f.persistence.as_str(), to_i(f.created_at));
                    if offset > max {
                        drop_sids.push(sid);
                        drop_offs.push(to_i(offset - max));
                    }
                    (s.epoch.clone(), Some(offset))
                }
                _ => (epoch_of(&*tx, stream, &inner.epoch).await?, None),
            };
            placed.push((Arc::from(stream.as_str()), epoch.clone(), offset));
            deliveries.push(Delivery { stream: stream.clone(), epoch: epoch.to_string(), offset });
        }
        if p.idempotent {
            let json = serde_json::to_string(&deliveries).unwrap_or_else(|_| "[]".into());
            tx.execute(&put_key, &[&&*p.id, &json]).await?;
        }
        out.push((AppendOutcome::Appended { deliveries, reissued }, placed));
    }
    rows.insert(&tx).await?;
    entries.insert(&tx).await?;
    if !drop_sids.is_empty() {
        // Entries pushed out of the buffer, then their contents' references (in `seq` order, as every process
        // locks them, so two batches sharing contents cannot wait on each other).
        let gone: Vec<i64> = tx
            .query(
                &tx.prepare_cached(
                    "DELETE FROM entries e USING unnest($1::bigint[], $2::bigint[]) AS d(sid, off) \
                     WHERE e.sid = d.sid AND e.off = d.off AND e.persistence = 'bufferable' RETURNING e.seq",
                )
                .await?,
                &[&drop_sids, &drop_offs],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        release_all(&tx, gone).await?;
    }
    let dirty: Vec<&Locked> = streams.values().filter(|s| s.dirty).collect();
    if !dirty.is_empty() {
        let sids: Vec<i64> = dirty.iter().map(|s| s.sid).collect();
        let heads: Vec<i64> = dirty.iter().map(|s| to_i(s.head)).collect();
        let last_ids: Vec<String> = dirty.iter().map(|s| s.last_id.to_string()).collect();
        tx.execute(
            &tx.prepare_cached(
                "UPDATE streams s SET head = u.head, last_id = u.last_id \
                 FROM unnest($1::bigint[], $2::bigint[], $3::text[]) AS u(sid, head, last_id) WHERE s.sid = u.sid",
            )
            .await?,
            &[&sids, &heads, &last_ids],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(out)
}

/// The `notifications` rows of a batch, by column, written with one statement.
#[derive(Default)]
struct NotificationRows<'a> {
    seq: Vec<i64>,
    id: Vec<std::borrow::Cow<'a, str>>,
    kind: Vec<&'a str>,
    priority: Vec<&'static str>,
    persistence: Vec<&'static str>,
    title: Vec<Option<&'a str>>,
    body: Vec<Option<&'a str>>,
    data: Vec<Option<&'a str>>,
    group: Vec<Option<&'a str>>,
    created_at: Vec<i64>,
    refs: Vec<i64>,
}

impl<'a> NotificationRows<'a> {
    /// `reissued`: the id the content is stored under when it is not `p.id` (see `IdFloor`).
    fn push(&mut self, seq: i64, reissued: Option<&str>, p: &'a Publication) {
        let f = &p.fields;
        self.seq.push(seq);
        self.id.push(match reissued {
            Some(id) => std::borrow::Cow::Owned(id.to_owned()),
            None => std::borrow::Cow::Borrowed(&p.id),
        });
        self.kind.push(&f.kind);
        self.priority.push(f.priority.as_str());
        self.persistence.push(f.persistence.as_str());
        self.title.push(f.title.as_deref());
        self.body.push(f.body.as_deref());
        self.data.push(f.data.as_ref().map(|d| d.get()));
        self.group.push(f.group.as_deref());
        self.created_at.push(to_i(f.created_at));
        self.refs.push(p.streams.len() as i64);
    }

    async fn insert(&self, tx: &deadpool_postgres::Transaction<'_>) -> PgResult<()> {
        if self.seq.is_empty() {
            return Ok(());
        }
        let insert = tx
            .prepare_cached(
                "INSERT INTO notifications (seq, id, kind, priority, persistence, title, body, data, grp, created_at, \
                 refs) SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], \
                 $6::text[], $7::text[], $8::text[], $9::text[], $10::bigint[], $11::bigint[])",
            )
            .await?;
        tx.execute(
            &insert,
            &[
                &self.seq,
                &self.id,
                &self.kind,
                &self.priority,
                &self.persistence,
                &self.title,
                &self.body,
                &self.data,
                &self.group,
                &self.created_at,
                &self.refs,
            ],
        )
        .await?;
        Ok(())
    }
}

/// The `entries` rows of a batch, by column, written with one statement.
#[derive(Default)]
struct EntryRows {
    sid: Vec<i64>,
    off: Vec<i64>,
    seq: Vec<i64>,
    persistence: Vec<&'static str>,
    created_at: Vec<i64>,
}

impl EntryRows {
    fn push(&mut self, sid: i64, off: i64, seq: i64, persistence: &'static str, created_at: i64) {
        self.sid.push(sid);
        self.off.push(off);
        self.seq.push(seq);
        self.persistence.push(persistence);
        self.created_at.push(created_at);
    }

    async fn insert(&self, tx: &deadpool_postgres::Transaction<'_>) -> PgResult<()> {
        if self.sid.is_empty() {
            return Ok(());
        }
        tx.execute(
            &tx.prepare_cached(
                "INSERT INTO entries (sid, off, seq, persistence, created_at) \
                 SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::text[], $5::bigint[])",
            )
            .await?,
            &[&self.sid, &self.off, &self.seq, &self.persistence, &self.created_at],
        )
        .await?;
        Ok(())
    }
}

/// Drops the references of removed entries to their contents (`seqs` may repeat a content): the contents are
/// locked in `seq` order (every caller locks them so, and two transactions sharing contents cannot wait on each
/// other), their references dropped, and those left without any deleted.
async fn release_all(tx: &deadpool_postgres::Transaction<'_>, seqs: Vec<i64>) -> PgResult<()> {
    if seqs.is_empty() {
        return Ok(());
    }
    tx.execute(
        &tx.prepare_cached("SELECT 1 FROM notifications WHERE seq = ANY($1) ORDER BY seq FOR UPDATE").await?,
        &[&seqs],
    )
    .await?;
    tx.execute(
        &tx.prepare_cached(
            "UPDATE notifications n SET refs = n.refs - c.k \
             FROM (SELECT s, count(*) AS k FROM unnest($1::bigint[]) AS s GROUP BY s) AS c WHERE n.seq = c.s",
        )
        .await?,
        &[&seqs],
    )
    .await?;
    tx.execute(&tx.prepare_cached("DELETE FROM notifications WHERE seq = ANY($1) AND refs <= 0").await?, &[&seqs])
        .await?;
    Ok(())
}

/// The epoch of `stream` (the database's when nobody published to it).
async fn epoch_of(tx: &impl tokio_postgres::GenericClient, stream: &str, db: &Arc<str>) -> PgResult<Arc<str>> {
    let row = tx.query_opt("SELECT epoch FROM streams WHERE name = $1", &[&stream]).await?;
    Ok(match row {
        Some(r) if r.get::<_, &str>(0) == &**db => db.clone(),
        Some(r) => Arc::from(r.get::<_, &str>(0)),
        None => db.clone(),
    })
}

// ---- history ----

/// A stream's state and, when `since` is given, its replayable notifications (see [`StreamStore::read`]), inside
/// a snapshot.
async fn read_snapshot(
    tx: &impl tokio_postgres::GenericClient,
    db_epoch: &Arc<str>,
    limits: &StoreLimits,
    now: u64,
    stream: &str,
    since: Option<(&str, u64)>,
) -> PgResult<(HistoryRead, Option<i64>)> {
    let found = tx.query_opt("SELECT sid, epoch, head FROM streams WHERE name = $1", &[&stream]).await?;
    let Some(found) = found else {
        let state = StreamState { epoch: db_epoch.clone(), head: 0, oldest: 1 };
        return Ok((HistoryRead { state, entries: Vec::new() }, None));
    };
    let sid: i64 = found.get(0);
    let epoch: Arc<str> = match found.get::<_, &str>(1) {
        e if e == &**db_epoch => db_epoch.clone(),
        e => Arc::from(e),
    };
    let head = to_u(found.get(2));
    let low = head.saturating_sub(limits.replay_max_items as u64) + 1;
    let age_cut = now.saturating_sub(limits.replay_max_age.as_millis() as u64);
    let mut oldest = head + 1;
    let window = tx
        .query(
            "SELECT off, created_at FROM entries WHERE sid = $1 AND off >= $2 ORDER BY off DESC",
            &[&sid, &to_i(low)],
        )
        .await?;
    for row in window {
        let (offset, created_at) = (to_u(row.get(0)), to_u(row.get(1)));
        if offset + 1 != oldest || created_at < age_cut {
            break;
        }
        oldest = offset;
    }
    let state = StreamState { epoch: epoch.clone(), head, oldest };
    let Some((requested_epoch, offset)) = since else {
        return Ok((HistoryRead { state, entries: Vec::new() }, Some(sid)));
    };
    let after = if requested_epoch == &*epoch && offset <= head { offset } else { 0 };
    let from = (after + 1).max(oldest);
    let mut entries = Vec::new();
    if from <= head {
        let rows = tx
            .query(
                &format!("{ENTRY_SELECT} WHERE e.sid = $1 AND e.off >= $2 AND e.off <= $3 ORDER BY e.off"),
                &[&sid, &to_i(from), &to_i(head)],
            )
            .await?;
        for row in &rows {
            entries.push(history_entry(row, stream, &epoch));
        }
    }
    Ok((HistoryRead { state, entries }, Some(sid)))
}

const ENTRY_SELECT: &str = "SELECT e.off, n.id, n.kind, n.priority, n.persistence, n.title, n.body, n.data, n.grp, \
                            n.created_at FROM entries e JOIN notifications n ON n.seq = e.seq";

fn history_entry(row: &Row, stream: &str, epoch: &Arc<str>) -> HistoryEntry {
    let offset = to_u(row.get(0));
    let data: Option<String> = row.get(7);
    let fields = NotificationFields {
        id: row.get(1),
        stream: String::new(),
        offset: None,
        epoch: String::new(),
        kind: row.get(2),
        priority: Priority::parse(row.get(3)).unwrap_or(Priority::Important),
        persistence: Persistence::parse(row.get(4)).unwrap_or(Persistence::Bufferable),
        title: row.get(5),
        body: row.get(6),
        data: data.and_then(|d| RawJson::from_string(d).ok()),
        group: row.get(8),
        created_at: to_u(row.get(9)),
    };
    HistoryEntry { offset, frame: encode_notification(&fields, stream, epoch, Some(offset)) }
}

/// Runs `$body` (which may use `?` and `.await` on PostgreSQL errors) in a read-only snapshot (repeatable read)
/// on a pooled connection `$tx`.
macro_rules! snapshot {
    ($inner:expr, |$tx:ident| $body:expr) => {{
        let mut client = $inner.client().await?;
        let result: PgResult<_> = async {
            let $tx = client
                .build_transaction()
                .isolation_level(IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .await?;
            let value = $body;
            $tx.commit().await?;
            Ok(value)
        }
        .await;
        result.map_err(|e| classify(&e))
    }};
}

/// A page of what `stream` stores (see [`StreamStore::page`](super::StreamStore::page)), inside a snapshot.
async fn read_page(
    tx: &impl tokio_postgres::GenericClient,
    db_epoch: &Arc<str>,
    limits: &StoreLimits,
    now: u64,
    stream: &str,
    after: Option<(&str, u64)>,
    limit: usize,
) -> PgResult<super::StoredPage> {
    let (read, sid) = read_snapshot(tx, db_epoch, limits, now, stream, None).await?;
    let state = read.state;
    let Some(sid) = sid else {
        return Ok(super::StoredPage { oldest: state.head + 1, state, entries: Vec::new(), more: false });
    };
    let oldest: Option<i64> = tx.query_one("SELECT MIN(off) FROM entries WHERE sid = $1", &[&sid]).await?.get(0);
    let after = after.filter(|(e, _)| *e == &*state.epoch).map_or(0, |(_, o)| o);
    let rows = tx
        .query(
            &format!("{ENTRY_SELECT} WHERE e.sid = $1 AND e.off > $2 ORDER BY e.off LIMIT $3"),
            &[&sid, &to_i(after), &to_i(limit as u64 + 1)],
        )
        .await?;
    let mut entries: Vec<HistoryEntry> = rows.iter().map(|r| history_entry(r, stream, &state.epoch)).collect();
    let more = entries.len() > limit;
    entries.truncate(limit);
    Ok(super::StoredPage { oldest: oldest.map_or(state.head + 1, to_u), state, entries, more })
}

/// The notification `id` if `stream` still holds it within its replay window (or persistent), inside a snapshot.
async fn find_in_stream(
    tx: &impl tokio_postgres::GenericClient,
    db_epoch: &Arc<str>,
    limits: &StoreLimits,
    now: u64,
    stream: &str,
    id: &str,
) -> PgResult<Option<HistoryEntry>> {
    let found = tx
        .query_opt(
            "SELECT e.off FROM notifications n JOIN entries e ON e.seq = n.seq JOIN streams s ON s.sid = e.sid \
             WHERE n.id = $1 AND s.name = $2 ORDER BY e.off DESC LIMIT 1",
            &[&id, &stream],
        )
        .await?;
    let Some(found) = found else { return Ok(None) };
    let offset = to_u(found.get(0));
    let state = read_snapshot(tx, db_epoch, limits, now, stream, None).await?.0.state;
    let (read, _) = read_snapshot(tx, db_epoch, limits, now, stream, Some((&state.epoch, offset - 1))).await?;
    Ok(read.entries.into_iter().find(|e| e.offset == offset))
}

impl super::StreamStore for PostgresStore {
    fn append<'a>(&'a self, batch: Vec<Append>) -> BoxFuture<'a, Vec<Result<AppendOutcome, StoreError>>> {
        Box::pin(async move {
            let n = batch.len();
            let (reply, rx) = oneshot::channel();
            let at = Instant::now();
            let metrics = self.inner.metrics.get();
            if let Some(m) = metrics {
                m.queue.added(1, at);
            }
            let sent = match &*self.inner.appender.lock().unwrap_or_else(|p| p.into_inner()) {
                Some(tx) => tx.send(Queued { at, batch, reply }).is_ok(),
                None => false,
            };
            if !sent {
                if let Some(m) = metrics {
                    m.queue.done(1, None);
                }
                return vec![Err(StoreError::unavailable("the store is closed")); n];
            }
            rx.await.unwrap_or_else(|_| vec![Err(StoreError::unavailable("the store closed before answering")); n])
        })
    }

    fn epoch<'a>(&'a self, stream: &'a str) -> BoxFuture<'a, Result<Arc<str>, StoreError>> {
        Box::pin(async move {
            let client = self.inner.client().await?;
            epoch_of(&**client, stream, &self.inner.epoch).await.map_err(|e| classify(&e))
        })
    }

    fn read<'a>(
        &'a self,
        stream: &'a str,
        since: Option<Position<'a>>,
    ) -> BoxFuture<'a, Result<HistoryRead, StoreError>> {
        Box::pin(async move {
            let (epoch, limits, now) = (&self.inner.epoch, &self.inner.limits, self.inner.now());
            snapshot!(self.inner, |tx| read_snapshot(&*tx, epoch, limits, now, stream, since).await?.0)
        })
    }

    fn page<'a>(
        &'a self,
        stream: &'a str,
        after: Option<Position<'a>>,
        limit: usize,
    ) -> BoxFuture<'a, Result<super::StoredPage, StoreError>> {
        Box::pin(async move {
            let (epoch, limits, now) = (&self.inner.epoch, &self.inner.limits, self.inner.now());
            snapshot!(self.inner, |tx| read_page(&*tx, epoch, limits, now, stream, after, limit).await?)
        })
    }

    fn find<'a>(&'a self, stream: &'a str, id: &'a str) -> BoxFuture<'a, Result<Option<HistoryEntry>, StoreError>> {
        Box::pin(async move {
            let (epoch, limits, now) = (&self.inner.epoch, &self.inner.limits, self.inner.now());
            snapshot!(self.inner, |tx| find_in_stream(&*tx, epoch, limits, now, stream, id).await?)
        })
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            // Appends queued before the close are still committed; later ones are refused.
            drop(self.inner.appender.lock().unwrap_or_else(|p| p.into_inner()).take());
            let task = self.inner.appender_task.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(task) = task {
                let _ = task.await;
            }
            self.inner.pool.close();
        })
    }

    fn check_writable(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let client = self.inner.client().await?;
            client
                .execute(
                    "INSERT INTO meta (key, value) VALUES ('ready_probe', $1) ON CONFLICT (key) DO UPDATE \
                     SET value = EXCLUDED.value",
                    &[&self.inner.now().to_string()],
                )
                .await
                .map(|_| ())
                .map_err(|e| classify(&e))
        })
    }

    fn observe(&self, metrics: &crate::metrics::Metrics) {
        let _ = self.inner.metrics.set(metrics.store("postgres"));
    }

    fn kind(&self) -> &'static str {
        "postgres"
    }
}

// ---- maintenance ----

/// Prunes what aged out every [`MAINTENANCE_EVERY`] while the store lives; one process at a time does it (an
/// advisory lock), the others skip the round.
async fn maintain(inner: Weak<Inner>) {
    loop {
        tokio::time::sleep(MAINTENANCE_EVERY).await;
        let Some(inner) = inner.upgrade() else { break };
        if inner.appender.lock().unwrap_or_else(|p| p.into_inner()).is_none() {
            break;
        }
        let Ok(mut client) = inner.pool.get().await else { continue };
        match prune(&mut client, &inner).await {
            Ok(0) => {}
            Ok(pruned) => debug!(pruned, "pruned what aged out"),
            Err(e) => debug!(error = %describe(&e), "pruning failed; it is retried later"),
        }
    }
}

async fn prune(client: &mut Client, inner: &Inner) -> PgResult<u64> {
    let now = inner.now();
    let limits = &inner.limits;
    let tx = client.transaction().await?;
    let locked: bool = tx.query_one("SELECT pg_try_advisory_xact_lock($1)", &[&MAINTENANCE_LOCK]).await?.get(0);
    if !locked {
        return Ok(0);
    }
    let mut pruned = 0;
    let cutoffs = [
        ("bufferable", now.saturating_sub(limits.replay_max_age.as_millis() as u64)),
        ("persistent", now.saturating_sub(limits.persistent_retention.as_millis() as u64)),
    ];
    for (persistence, cut) in cutoffs {
        // Entries and, with their last entry, the notifications' contents.
        let gone = tx
            .query(
                "DELETE FROM entries WHERE (sid, off) IN (SELECT sid, off FROM entries WHERE persistence = $1 \
                 AND created_at < $2 LIMIT $3) RETURNING seq",
                &[&persistence, &to_i(cut), &PRUNE_CHUNK],
            )
            .await?;
        pruned += gone.len() as u64;
        release_all(&tx, gone.iter().map(|r| r.get(0)).collect()).await?;
    }
    let idempotency_cut = to_i(now.saturating_sub(limits.idempotency_window.as_millis() as u64));
    let acks_cut = to_i(now.saturating_sub(limits.ack_retention.as_millis() as u64));
    pruned += tx.execute("DELETE FROM idempotency WHERE at < $1", &[&idempotency_cut]).await?;
    pruned += tx
        .execute(
            "DELETE FROM acks WHERE seq IN (SELECT seq FROM acks WHERE at < $1 LIMIT $2)",
            &[&acks_cut, &(PRUNE_CHUNK * 10)],
        )
        .await?;
    pruned += tx
        .execute(
            "DELETE FROM delivery_log WHERE seq IN (SELECT seq FROM delivery_log WHERE at < $1 LIMIT $2)",
            &[&acks_cut, &(PRUNE_CHUNK * 10)],
        )
        .await?;
    pruned += tx.execute("DELETE FROM digest_window WHERE closes_at <= $1", &[&to_i(now)]).await?;
    tx.commit().await?;
    Ok(pruned)
}

// ---- acks and devices ----

impl AckStore for PostgresStore {
    fn record<'a>(
        &'a self,
        user: &'a Arc<str>,
        device: &'a Arc<str>,
        ids: &'a [String],
        at_ms: u64,
    ) -> BoxFuture<'a, Result<Vec<RowKey>, StoreError>> {
        Box::pin(async move {
            retrying!(self.inner, |client| async {
                let tx = client.transaction().await?;
                let insert = tx
                    .prepare_cached(
                        "INSERT INTO acks (id, usr, device, at) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                    )
                    .await?;
                for id in ids {
                    tx.execute(&insert, &[id, &&**user, &&**device, &to_i(at_ms)]).await?;
                }
                let keys = cancel(&tx, user, ids, at_ms).await?;
                tx.commit().await?;
                Ok(keys)
            })
        })
    }

    fn acks<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Vec<AckRecord>, StoreError>> {
        Box::pin(async move {
            let client = self.inner.client().await?;
            let rows = client
                .query("SELECT usr, device, at FROM acks WHERE id = $1 ORDER BY at, seq", &[&id])
                .await
                .map_err(|e| classify(&e))?;
            Ok(rows
                .iter()
                .map(|r| AckRecord {
                    user: Arc::from(r.get::<_, &str>(0)),
                    device: Arc::from(r.get::<_, &str>(1)),
                    at: to_u(r.get(2)),
                })
                .collect())
        })
    }
}

impl DeviceStore for PostgresStore {
    fn register_push<'a>(&'a self, user: &'a str, record: PushRecord) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            retrying!(self.inner, |client| async {
                let tx = client.transaction().await?;
                tx.execute(
                    "DELETE FROM push_addresses WHERE usr = $1 AND token = $3 AND device <> $2",
                    &[&user, &&*record.device, &record.token],
                )
                .await?;
                tx.execute(
                    "INSERT INTO push_addresses (usr, device, platform, token, registered_at) \
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (usr, device) DO UPDATE SET platform = \
                     EXCLUDED.platform, token = EXCLUDED.token, registered_at = EXCLUDED.registered_at",
                    &[&user, &&*record.device, &record.platform.as_str(), &record.token, &to_i(record.registered_at)],
                )
                .await?;
                tx.commit().await
            })
        })
    }

    fn push_addresses<'a>(&'a self, user: &'a str) -> BoxFuture<'a, Result<Vec<PushRecord>, StoreError>> {
        Box::pin(async move {
            let client = self.inner.client().await?;
            let rows = client
                .query(
                    "SELECT device, platform, token, registered_at FROM push_addresses WHERE usr = $1 \
                     ORDER BY registered_at, device",
                    &[&user],
                )
                .await
                .map_err(|e| classify(&e))?;
            Ok(rows
                .iter()
                .map(|r| PushRecord {
                    device: Arc::from(r.get::<_, &str>(0)),
                    platform: PushPlatform::parse(r.get(1)).unwrap_or(PushPlatform::Fcm),
                    token: r.get(2),
                    registered_at: to_u(r.get(3)),
                })
                .collect())
        })
    }

    fn delete_push<'a>(
        &'a self,
        user: &'a str,
        device: &'a str,
        token: &'a str,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let client = self.inner.client().await?;
            let n = client
                .execute(
                    "DELETE FROM push_addresses WHERE usr = $1 AND device = $2 AND token = $3",
                    &[&user, &device, &token],
                )
                .await
                .map_err(|e| classify(&e))?;
            Ok(n > 0)
        })
    }
}

// ---- settings ----

async fn read_settings(tx: &impl tokio_postgres::GenericClient, user: &str, lock: bool) -> PgResult<UserSettings> {
    let sql = if lock {
        "SELECT settings FROM user_settings WHERE usr = $1 FOR UPDATE"
    } else {
        "SELECT settings FROM user_settings WHERE usr = $1"
    };
    let json: Option<String> = tx.query_opt(sql, &[&user]).await?.map(|r| r.get(0));
    Ok(json.and_then(|j| serde_json::from_str(&j).ok()).unwrap_or_default())
}

impl SettingsStore for PostgresStore {
    fn settings<'a>(&'a self, user: &'a str) -> BoxFuture<'a, Result<UserSettings, StoreError>> {
        Box::pin(async move {
            let client = self.inner.client().await?;
            read_settings(&**client, user, false).await.map_err(|e| classify(&e))
        })
    }

    fn update_settings<'a>(
        &'a self,
        user: &'a str,
        change: SettingsChange,
        at: UnixMs,
    ) -> BoxFuture<'a, Result<UserSettings, SettingsError>> {
        Box::pin(async move {
            let result: Result<Result<UserSettings, String>, StoreError> = retrying!(self.inner, |client| async {
                let tx = client.transaction().await?;
                // The row exists (and is locked) before it is read: two processes changing one user's settings
                // take turns.
                tx.execute(
                    "INSERT INTO user_settings (usr, settings) VALUES ($1, '') ON CONFLICT DO NOTHING",
                    &[&user],
                )
                .await?;
                let mut settings = read_settings(&*tx, user, true).await?;
                if let Err(e) = settings.apply(change.clone(), at) {
                    tx.rollback().await?;
                    return Ok(Err(e));
                }
                let json = serde_json::to_string(&settings).unwrap_or_default();
                tx.execute("UPDATE user_settings SET settings = $2 WHERE usr = $1", &[&user, &json]).await?;
                tx.commit().await?;
                Ok(Ok(settings))
            });
            result?.map_err(SettingsError::Invalid)
        })
    }
}

// ---- push delivery ----

fn reason_of(s: &str) -> PendingReason {
    match s {
        "awaiting_ack" => PendingReason::AwaitingAck,
        "digest" => PendingReason::Digest,
        "quiet_hours" => PendingReason::QuietHours,
        _ => PendingReason::Immediate,
    }
}

fn channel_name(c: Channel) -> &'static str {
    match c {
        Channel::Socket => "socket",
        Channel::Push => "push",
    }
}

/// Appends entries to the deliveries log.
async fn log(tx: &deadpool_postgres::Transaction<'_>, records: &[DeliveryRecord]) -> PgResult<()> {
    if records.is_empty() {
        return Ok(());
    }
    let insert = tx
        .prepare_cached(
            "INSERT INTO delivery_log (id, usr, device, channel, status, reason, provider, form, due_at, at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .await?;
    for r in records {
        let due_at = r.due_at.map(to_i);
        tx.execute(
            &insert,
            &[
                &r.id,
                &r.user,
                &r.device,
                &channel_name(r.channel),
                &r.status.as_str(),
                &r.reason,
                &r.provider,
                &r.form,
                &due_at,
                &to_i(r.at),
            ],
        )
        .await?;
    }
    Ok(())
}

/// Deletes `user`'s cancellable rows of `ids` (in the transaction that records their acks) and logs it.
async fn cancel(
    tx: &deadpool_postgres::Transaction<'_>,
    user: &str,
    ids: &[String],
    now: UnixMs,
) -> PgResult<Vec<RowKey>> {
    let delete = tx
        .prepare_cached(
            "DELETE FROM pending_push WHERE usr = $1 AND notification = $2 AND cancel_on_ack RETURNING device",
        )
        .await?;
    let mut gone = Vec::new();
    for id in ids {
        let mut devices: Vec<String> = tx.query(&delete, &[&user, id]).await?.iter().map(|r| r.get(0)).collect();
        devices.sort();
        gone.extend(devices.into_iter().map(|device| RowKey {
            user: user.to_owned(),
            notification: id.clone(),
            device,
        }));
    }
    let records: Vec<DeliveryRecord> = gone.iter().map(|k| cancelled(k, now)).collect();
    log(tx, &records).await?;
    Ok(gone)
}

const ROW_COLUMNS: &str = "usr, notification, device, due_at, reason, cancel_on_ack, bypass_quiet_hours, priority, \
                           kind, topic, grp, title, created_at, envelope, attempts";

fn stored(r: &Row) -> StoredPush {
    StoredPush {
        row: PendingPush {
            key: RowKey { user: r.get(0), notification: r.get(1), device: r.get(2) },
            due_at: to_u(r.get(3)),
            reason: reason_of(r.get(4)),
            cancel_on_ack: r.get(5),
            bypass_quiet_hours: r.get(6),
            priority: Priority::parse(r.get(7)).unwrap_or(Priority::Important),
            kind: r.get(8),
            topic: r.get(9),
            group: r.get(10),
            title: r.get(11),
            created_at: to_u(r.get(12)),
        },
        envelope: r.get(13),
        attempts: u32::try_from(r.get::<_, i64>(14)).unwrap_or(u32::MAX),
    }
}

/// The advisory lock key of a (user, group) digest window.
fn window_lock(user: &str, group: &str) -> i32 {
    let h = xxhash_rust::xxh3::xxh3_64(format!("{user}\u{0}{group}").as_bytes());
    h as i32
}

async fn plan_items(
    tx: &deadpool_postgres::Transaction<'_>,
    policy: &Policy,
    now: UnixMs,
    items: &[PlanItem],
) -> PgResult<Vec<PublishPlan>> {
    // Every window the batch may read or open, locked in one order for every process.
    let locks: BTreeSet<i32> = items.iter().map(|i| window_lock(&i.meta.user, window_group(&i.meta))).collect();
    for key in locks {
        tx.execute("SELECT pg_advisory_xact_lock($1, $2)", &[&LOCK_DIGEST, &key]).await?;
    }
    let select_window = tx
        .prepare_cached("SELECT opened_at, closes_at FROM digest_window WHERE usr = $1 AND grp = $2 AND closes_at > $3")
        .await?;
    let put_window = tx
        .prepare_cached(
            "INSERT INTO digest_window (usr, grp, opened_at, closes_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (usr, grp) DO UPDATE SET opened_at = EXCLUDED.opened_at, closes_at = EXCLUDED.closes_at",
        )
        .await?;
    let insert = tx
        .prepare_cached(
            "INSERT INTO pending_push (usr, notification, device, due_at, ready_at, reason, cancel_on_ack, \
             bypass_quiet_hours, priority, kind, topic, grp, title, created_at, envelope) \
             VALUES ($1, $2, $3, $4, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) ON CONFLICT DO NOTHING",
        )
        .await?;
    let mut plans = Vec::with_capacity(items.len());
    for item in items {
        let group = window_group(&item.meta);
        let window =
            tx.query_opt(&select_window, &[&item.meta.user, &group, &to_i(now)]).await?.map(|r| DigestWindow {
                user: item.meta.user.clone(),
                group: group.to_owned(),
                opened_at: to_u(r.get(0)),
                closes_at: to_u(r.get(1)),
            });
        let plan = plan_publish(policy, now, &item.context, &item.meta, window.as_ref());
        if let Some(w) = &plan.open_window {
            tx.execute(&put_window, &[&w.user, &w.group, &to_i(w.opened_at), &to_i(w.closes_at)]).await?;
        }
        for row in &plan.rows {
            tx.execute(
                &insert,
                &[
                    &row.key.user,
                    &row.key.notification,
                    &row.key.device,
                    &to_i(row.due_at),
                    &row.reason.as_str(),
                    &row.cancel_on_ack,
                    &row.bypass_quiet_hours,
                    &row.priority.as_str(),
                    &row.kind,
                    &row.topic,
                    &row.group,
                    &row.title,
                    &to_i(row.created_at),
                    &item.envelope,
                ],
            )
            .await?;
        }
        log(tx, &plan_log(&plan, now)).await?;
        plans.push(plan);
    }
    Ok(plans)
}

async fn claim_rows(
    tx: &deadpool_postgres::Transaction<'_>,
    now: UnixMs,
    until: UnixMs,
    max_users: usize,
) -> PgResult<(u64, Vec<StoredPush>)> {
    let users: Vec<String> = tx
        .query(
            "SELECT usr FROM (SELECT usr, MIN(ready_at) AS first FROM pending_push WHERE ready_at <= $1 \
             GROUP BY usr ORDER BY first LIMIT $2) AS due ORDER BY usr",
            &[&to_i(now), &(max_users as i64)],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let claim: i64 = tx.query_one("SELECT nextval('push_claims')", &[]).await?.get(0);
    // A row another process claims meanwhile is waited for, then seen with its new `ready_at`: not claimed twice.
    let mark = tx
        .prepare_cached(&format!(
            "UPDATE pending_push SET claim = $1, claimed_until = $2, ready_at = GREATEST(due_at, $2) \
             WHERE usr = $3 AND ready_at <= $4 RETURNING {ROW_COLUMNS}"
        ))
        .await?;
    let mut out = Vec::new();
    for user in users {
        let mut rows: Vec<StoredPush> =
            tx.query(&mark, &[&claim, &to_i(until), &user, &to_i(now)]).await?.iter().map(stored).collect();
        rows.sort_by(|a, b| {
            (&a.row.key.notification, &a.row.key.device).cmp(&(&b.row.key.notification, &b.row.key.device))
        });
        out.extend(rows);
    }
    Ok((to_u(claim), out))
}

async fn settle_rows(tx: &deadpool_postgres::Transaction<'_>, s: &Settlement) -> PgResult<()> {
    let claim = to_i(s.claim);
    let delete = tx
        .prepare_cached("DELETE FROM pending_push WHERE usr = $1 AND notification = $2 AND device = $3 AND claim = $4")
        .await?;
    for k in &s.delete {
        tx.execute(&delete, &[&k.user, &k.notification, &k.device, &claim]).await?;
    }
    let reschedule = tx
        .prepare_cached(
            "UPDATE pending_push SET due_at = $5, ready_at = $5, reason = $6, attempts = $7, claim = 0, \
             claimed_until = 0 WHERE usr = $1 AND notification = $2 AND device = $3 AND claim = $4",
        )
        .await?;
    for (k, due_at, reason, attempts) in &s.reschedule {
        tx.execute(
            &reschedule,
            &[&k.user, &k.notification, &k.device, &claim, &to_i(*due_at), &reason.as_str(), &i64::from(*attempts)],
        )
        .await?;
    }
    log(tx, &s.log).await
}

impl PushStore for PostgresStore {
    fn plan<'a>(
        &'a self,
        policy: &'a Policy,
        now: UnixMs,
        items: Vec<PlanItem>,
    ) -> BoxFuture<'a, Result<Vec<PublishPlan>, StoreError>> {
        Box::pin(async move {
            retrying!(self.inner, |client| async {
                let tx = client.transaction().await?;
                let plans = plan_items(&tx, policy, now, &items).await?;
                tx.commit().await?;
                Ok(plans)
            })
        })
    }

    fn next_due(&self) -> BoxFuture<'_, Result<Option<UnixMs>, StoreError>> {
        Box::pin(async move {
            let client = self.inner.client().await?;
            let row =
                client.query_one("SELECT MIN(ready_at) FROM pending_push", &[]).await.map_err(|e| classify(&e))?;
            Ok(row.get::<_, Option<i64>>(0).map(to_u))
        })
    }

    fn claim_due(
        &self,
        now: UnixMs,
        lease: Duration,
        max_users: usize,
    ) -> BoxFuture<'_, Result<(u64, Vec<StoredPush>), StoreError>> {
        Box::pin(async move {
            let until = now.saturating_add(lease.as_millis() as u64);
            retrying!(self.inner, |client| async {
                let tx = client.transaction().await?;
                let claimed = claim_rows(&tx, now, until, max_users).await?;
                tx.commit().await?;
                Ok(claimed)
            })
        })
    }

    fn settle(&self, settlement: Settlement) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            retrying!(self.inner, |client| async {
                let tx = client.transaction().await?;
                settle_rows(&tx, &settlement).await?;
                tx.commit().await
            })
        })
    }

    fn expedite<'a>(
        &'a self,
        user: &'a str,
        reason: PendingReason,
        now: UnixMs,
    ) -> BoxFuture<'a, Result<usize, StoreError>> {
        Box::pin(async move {
            let client = self.inner.client().await?;
            let n = client
                .execute(
                    "UPDATE pending_push SET due_at = $3, ready_at = GREATEST($3, claimed_until) \
                     WHERE usr = $1 AND reason = $2 AND due_at > $3",
                    &[&user, &reason.as_str(), &to_i(now)],
                )
                .await
                .map_err(|e| classify(&e))?;
            Ok(n as usize)
        })
    }

    fn deliveries<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Vec<DeliveryRecord>, StoreError>> {
        Box::pin(async move {
            let client = self.inner.client().await?;
            let rows = client
                .query(
                    "SELECT id, usr, device, channel, status, reason, provider, form, due_at, at FROM delivery_log \
                     WHERE id = $1 ORDER BY at, seq",
                    &[&id],
                )
                .await
                .map_err(|e| classify(&e))?;
            Ok(rows
                .iter()
                .map(|r| DeliveryRecord {
                    id: r.get(0),
                    user: r.get(1),
                    device: r.get(2),
                    channel: if r.get::<_, &str>(3) == "socket" { Channel::Socket } else { Channel::Push },
                    status: DeliveryStatus::parse(r.get(4)).unwrap_or(DeliveryStatus::Failed),
                    reason: r.get(5),
                    provider: r.get(6),
                    form: r.get(7),
                    due_at: r.get::<_, Option<i64>>(8).map(to_u),
                    at: to_u(r.get(9)),
                })
                .collect())
        })
    }

    fn pending_summary(&self, now: UnixMs) -> BoxFuture<'_, Result<PendingSummary, StoreError>> {
        Box::pin(async move {
            let client = self.inner.client().await?;
            let result: PgResult<PendingSummary> = async {
                let mut summary = PendingSummary::default();
                for r in client.query("SELECT reason, COUNT(*) FROM pending_push GROUP BY reason", &[]).await? {
                    let (reason, n) = (reason_of(r.get(0)), to_u(r.get(1)));
                    match summary.by_reason.iter_mut().find(|(x, _)| *x == reason) {
                        Some((_, count)) => *count += n,
                        None => summary.by_reason.push((reason, n)),
                    }
                }
                let r = client
                    .query_one("SELECT COUNT(*), MIN(due_at) FROM pending_push WHERE due_at <= $1", &[&to_i(now)])
                    .await?;
                summary.due = to_u(r.get(0));
                summary.oldest_due = r.get::<_, Option<i64>>(1).map(to_u);
                Ok(summary)
            }
            .await;
            result.map_err(|e| classify(&e))
        })
    }
}

#[cfg(test)]
mod tests;
