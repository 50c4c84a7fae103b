//! [`SqliteStore`]: every concern in one SQLite database, `tidings.db` in the data directory — the embedded
//! default.
//!
//! - **One writer, group commit.** A dedicated thread owns the only writing connection. Writes queue up for it;
//!   it takes everything waiting (up to [`MAX_OPS_PER_COMMIT`]) into one transaction and commits it, so a burst
//!   of publishes costs one disk sync, not one each. A publish is answered after its commit.
//! - **WAL**, with `synchronous` as configured: `FULL` syncs every commit (an acknowledged publish survives power
//!   loss), `NORMAL` only at checkpoints (it survives a crash of the process, not of the machine; see
//!   [`Synchronous`]).
//! - **Readers** (subscribe replays, acks, push addresses) use a small pool of read connections on the blocking
//!   thread pool; in WAL they never wait for the writer.
//! - **Fan-out in commit order.** After a commit the writer hands the committed publications to a task on the
//!   async runtime, which calls their [`OnCommit`](super::OnCommit) (the broker's fan-out) in commit order and
//!   then completes the publishes.
//! - **One epoch per database**: every stream's epoch is the database's, drawn when it was created. It changes
//!   only when history may have been lost: a new database, or (with `NORMAL`) a restart after the machine went
//!   down without a clean shutdown.
//! - **Refuses to start** with a message naming the file and the fix when the data directory is not writable,
//!   another process holds it or the database, or the database is corrupt or from a newer server.
//!
//! `rusqlite` with SQLite compiled in (`bundled`): a maintained, synchronous binding that fits the one-writer
//! design and the workspace's Rust version (sqlx, an async alternative, needs a newer Rust and runs a thread per
//! connection anyway).

mod inbox;
mod push;
mod schema;
mod writer;

use std::fmt;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension, params};
use tidings_core::protocol::{NotificationFields, Persistence, Priority, PushPlatform, RawJson};
use tokio::sync::oneshot;
use tracing::{info, warn};

use self::writer::{Op, Queued, Writer};
use super::push::{
    DeliveryRecord, PendingSummary, PlanItem, PushStore, SettingsChange, SettingsError, SettingsStore, Settlement,
    StoredPush, UserSettings,
};
use super::{AckStore, Append, BoxFuture, DeviceStore, StoreError, StoreLimits, StreamStore};
use crate::config::Synchronous;
use crate::metrics::StoreMetrics;
use crate::model::{
    AckRecord, AppendOutcome, HistoryEntry, HistoryRead, Position, PushRecord, StreamState, encode_notification,
};
use crate::planner::{PendingReason, Policy, PublishPlan, RowKey, UnixMs};
use crate::util::new_epoch;

/// Most queued writes taken into one transaction.
pub(crate) const MAX_OPS_PER_COMMIT: usize = 1024;
/// The database file in the data directory.
pub const DATABASE_FILE: &str = "tidings.db";
/// The lock file in the data directory, held by the running server.
pub const LOCK_FILE: &str = "tidings.lock";
/// Read connections kept open.
const MAX_IDLE_READERS: usize = 4;

type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// Why the store could not be opened: a message naming the file and the fix.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct OpenError(pub String);

/// The SQLite store. See the module documentation.
pub struct SqliteStore {
    path: PathBuf,
    epoch: Arc<str>,
    limits: StoreLimits,
    clock: Clock,
    writer: std::sync::mpsc::Sender<Queued>,
    readers: Arc<ReadPool>,
    /// Set by [`StreamStore::observe`]; shared with the writer thread.
    metrics: Arc<OnceLock<StoreMetrics>>,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore").field("path", &self.path).field("epoch", &self.epoch).finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database in `data_dir` and starts its writer. Must be called within a tokio
    /// runtime (the commit-order fan-out runs there).
    pub fn open(
        data_dir: &Path,
        synchronous: Synchronous,
        limits: StoreLimits,
        clock: Arc<dyn Fn() -> u64 + Send + Sync>,
    ) -> Result<Self, OpenError> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| OpenError("the SQLite store must be opened within a tokio runtime".into()))?;
        let lock = lock_data_dir(data_dir)?;
        let path = data_dir.join(DATABASE_FILE);
        let (conn, epoch) = open_writer(&path, synchronous).map_err(|e| startup_error(&path, &e))?;
        let (done_tx, done_rx) = tokio::sync::mpsc::unbounded_channel();
        runtime.spawn(writer::complete(done_rx));
        let (tx, rx) = std::sync::mpsc::channel();
        let metrics = Arc::new(OnceLock::new());
        let writer = Writer::new(conn, path.clone(), lock, epoch.clone(), limits.clone(), clock.clone(), done_tx)
            .reporting_to(metrics.clone());
        std::thread::Builder::new()
            .name("tidings-sqlite-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| OpenError(format!("cannot start the SQLite writer thread: {e}")))?;
        info!(path = %path.display(), epoch = %epoch, synchronous = synchronous.as_str(), "SQLite store open");
        Ok(SqliteStore {
            readers: Arc::new(ReadPool { path: path.clone(), idle: Mutex::new(Vec::new()) }),
            path,
            epoch,
            limits,
            clock,
            writer: tx,
            metrics,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn send(&self, op: Op) -> Result<(), StoreError> {
        let at = std::time::Instant::now();
        // Counted before it is sent, so that the writer never finishes an operation before it was counted.
        let metrics = self.metrics.get();
        if let Some(metrics) = metrics {
            metrics.queue.added(1, at);
        }
        self.writer.send(Queued { at, op }).map_err(|_| {
            if let Some(metrics) = metrics {
                metrics.queue.done(1, None);
            }
            StoreError::unavailable("the store is closed")
        })
    }

    /// Runs `f` on a read connection, on the blocking thread pool.
    async fn read_with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let pool = self.readers.clone();
        tokio::task::spawn_blocking(move || pool.with(f))
            .await
            .map_err(|e| StoreError::unavailable(format!("a read failed: {e}")))?
    }
}

/// Creates and locks the data directory; the lock is held until the writer ends.
fn lock_data_dir(dir: &Path) -> Result<File, OpenError> {
    let fix_dir = "Fix: make it writable by the user running tidings-server, or choose another directory with \
                   --data-dir or TIDINGS_DATA_DIR";
    std::fs::create_dir_all(dir)
        .map_err(|e| OpenError(format!("cannot create the data directory {}: {e}. {fix_dir}", dir.display())))?;
    let lock_path = dir.join(LOCK_FILE);
    let mut lock =
        OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&lock_path).map_err(|e| {
            OpenError(format!(
                "the data directory {} is not writable: cannot create {}: {e}. {fix_dir}",
                dir.display(),
                lock_path.display()
            ))
        })?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = lock.read_to_string(&mut holder);
            let holder = holder.trim();
            let by = if holder.is_empty() { String::new() } else { format!(" (pid {holder})") };
            return Err(OpenError(format!(
                "the data directory {} is in use by another tidings-server{by}: it holds the lock file {}. Fix: stop \
                 that server, or start this one with another --data-dir",
                dir.display(),
                lock_path.display()
            )));
        }
        Err(TryLockError::Error(e)) => {
            return Err(OpenError(format!("cannot lock {}: {e}. {fix_dir}", lock_path.display())));
        }
    }
    let pid = format!("{}\n", std::process::id());
    let written = lock.set_len(0).and_then(|()| lock.write_all(pid.as_bytes()));
    if let Err(e) = written {
        return Err(OpenError(format!("the data directory {} is not writable: {e}. {fix_dir}", dir.display())));
    }
    Ok(lock)
}

/// The message for a database that cannot be opened, by cause.
fn startup_error(path: &Path, e: &rusqlite::Error) -> OpenError {
    let db = path.display();
    OpenError(match e.sqlite_error_code() {
        Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => format!(
            "the database {db} is corrupt or not a Tidings database ({e}). Fix: move it (with any {db}-wal and \
             {db}-shm beside it) out of the data directory and restore it from a backup, or start without it: the \
             server then creates an empty database and clients are told to refetch"
        ),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => format!(
            "the database {db} is locked by another process ({e}). Fix: stop the process that has it open (an \
             sqlite3 shell with an open transaction, a backup tool), then start again"
        ),
        Some(ErrorCode::ReadOnly | ErrorCode::CannotOpen | ErrorCode::PermissionDenied) => format!(
            "cannot write the database {db} ({e}). Fix: make it and its directory writable by the user running \
             tidings-server, or choose another directory with --data-dir or TIDINGS_DATA_DIR"
        ),
        Some(ErrorCode::DiskFull) => {
            format!("the disk holding {db} is full ({e}). Fix: free some space, then start again")
        }
        _ => format!("cannot open the database {db}: {e}"),
    })
}

/// Opens the writing connection: pragmas, integrity check, migrations, the epoch. Returns it with the epoch.
fn open_writer(path: &Path, synchronous: Synchronous) -> rusqlite::Result<(Connection, Arc<str>)> {
    let mut conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(2))?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CANTOPEN),
            Some(format!("the database cannot use write-ahead logging (journal mode stays {mode})")),
        ));
    }
    let check: String = conn.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
    if check != "ok" {
        return Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CORRUPT),
            Some(format!("integrity check: {check}")),
        ));
    }
    // A page cache large enough for a whole group commit (the default 2 MiB made big transactions spill pages to
    // the log and read them back) and no larger: SQLite walks its whole page cache at the end of any transaction
    // whose B-tree balancing renumbered pages (a temporary page number beyond the end of the file), which
    // publishes to many streams cause in most commits, so each cached page costs such a commit time (at 64 MiB
    // this walk was 9 % of the writer thread's time in bench S5's batches). Reads go through a memory map,
    // temporary data stays in memory, the log is truncated to 64 MiB after checkpoints.
    conn.execute_batch(
        "PRAGMA temp_store = MEMORY; PRAGMA journal_size_limit = 67108864; PRAGMA cache_size = -16384; \
         PRAGMA mmap_size = 268435456; PRAGMA synchronous = FULL;",
    )?;
    migrate(&mut conn)?;
    // Claims on pending pushes belong to the run that made them; this process alone writes the database, so
    // whatever a previous run claimed and did not settle is free again (it is sent now, at least once).
    conn.execute("UPDATE pending_push SET claim = 0, claimed_until = 0, ready_at = due_at WHERE claim != 0", [])?;
    let epoch = start_run(&mut conn, synchronous)?;
    conn.execute_batch(&format!("PRAGMA synchronous = {}", synchronous.as_str()))?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok((conn, epoch))
}

/// A stream's id and head by name. The head is not written by each commit: it is the stream's newest entry, or
/// `streams.head` once that entry was pruned by age (pruning brings `streams.head` up to every entry it deletes;
/// the count limit never deletes the newest entry).
const STREAM_HEAD: &str = "SELECT sid, MAX(head, IFNULL((SELECT MAX(e.offset) FROM entries e WHERE e.sid = streams.sid), 0)) \
                           FROM streams WHERE name = ?1";

/// Brings the schema to the version this server writes.
fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let known = schema::current_version();
    if version > known {
        return Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CANTOPEN),
            Some(format!(
                "it was written by a newer tidings-server (schema version {version}; this one knows up to {known}): \
                 run that version, or restore a backup"
            )),
        ));
    }
    let mut version = version;
    // Two lines of development each wrote a "version 2" before they were merged: push delivery's tables (migration
    // 2 here) or the inbox's (migration 3 here). A database of the inbox's version 2 gets push delivery's tables
    // and is then at version 3 like any other.
    if version == schema::INBOX_FIRST_V2 && has_table(&tx, "inbox_users")? && !has_table(&tx, "pending_push")? {
        tx.execute_batch(schema::MIGRATIONS[schema::PUSH_DELIVERY])?;
        version = schema::INBOX as i64 + 1;
        tx.execute_batch(&format!("PRAGMA user_version = {version}"))?;
        info!(version, "database schema migrated (an inbox-first version 2 got push delivery's tables)");
    }
    for (i, migration) in schema::MIGRATIONS.iter().enumerate().skip(version as usize) {
        tx.execute_batch(migration)?;
        tx.execute_batch(&format!("PRAGMA user_version = {}", i + 1))?;
        info!(version = i + 1, "database schema migrated");
    }
    tx.commit()
}

/// Whether the database has the table `name`.
fn has_table(conn: &Connection, name: &str) -> rusqlite::Result<bool> {
    conn.prepare_cached("SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = ?1")?.exists([name])
}

/// The id of this boot of the machine (Linux), to tell a process restart from a machine restart.
fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id").map(|s| s.trim().to_owned()).unwrap_or_default()
}

/// Records the start of a run and returns the epoch: the database's, or a new one when history may have been
/// lost since the last run (`NORMAL` sync, no clean shutdown, and the machine rebooted meanwhile: the last
/// commits may not have reached the disk, and clients may have seen offsets the database no longer has).
fn start_run(conn: &mut Connection, synchronous: Synchronous) -> rusqlite::Result<Arc<str>> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let get = |key: &str| -> rusqlite::Result<Option<String>> {
        tx.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0)).optional()
    };
    let (stored, clean, last_boot) = (get("epoch")?, get("clean_shutdown")?, get("boot_id")?);
    let boot = boot_id();
    let epoch = match stored {
        None => new_epoch(),
        Some(epoch) => {
            let unclean = clean.as_deref() != Some("1");
            let rebooted = last_boot.as_deref() != Some(boot.as_str()) || boot.is_empty();
            if unclean && rebooted && synchronous != Synchronous::Full {
                let fresh = new_epoch();
                warn!(
                    old = %epoch,
                    new = %fresh,
                    "the machine restarted without a clean shutdown while commits were not synced to disk \
                     (synchronous = normal): the last commits may be lost, so clients will be told of a gap (new epoch)"
                );
                fresh
            } else {
                epoch
            }
        }
    };
    let mut put = tx.prepare("INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)")?;
    put.execute(params!["epoch", epoch])?;
    put.execute(params!["clean_shutdown", "0"])?;
    put.execute(params!["boot_id", boot])?;
    drop(put);
    tx.commit()?;
    Ok(Arc::from(epoch))
}

/// Read connections, opened on demand and kept for reuse.
struct ReadPool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl ReadPool {
    fn with<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, StoreError> {
        let taken = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let conn = match taken {
            Some(conn) => conn,
            None => self.open().map_err(|e| writer::classify(&e))?,
        };
        let result = f(&conn).map_err(|e| writer::classify(&e));
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < MAX_IDLE_READERS {
            idle.push(conn);
        }
        result
    }

    fn open(&self) -> rusqlite::Result<Connection> {
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.execute_batch("PRAGMA query_only = 1; PRAGMA mmap_size = 268435456;")?;
        Ok(conn)
    }

    fn clear(&self) {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

/// Reads a stream's state and replayable notifications (see [`StreamStore::read`]).
fn read_history(
    conn: &Connection,
    epoch: &Arc<str>,
    limits: &StoreLimits,
    now: u64,
    stream: &str,
    since: Option<(String, u64)>,
) -> rusqlite::Result<HistoryRead> {
    // One read transaction: the head and the entries come from the same snapshot.
    let snapshot = conn.unchecked_transaction()?;
    let read = read_snapshot(&snapshot, epoch, limits, now, stream, since);
    snapshot.finish()?;
    read
}

fn read_snapshot(
    conn: &Connection,
    epoch: &Arc<str>,
    limits: &StoreLimits,
    now: u64,
    stream: &str,
    since: Option<(String, u64)>,
) -> rusqlite::Result<HistoryRead> {
    let found: Option<(i64, u64)> =
        conn.prepare_cached(STREAM_HEAD)?.query_row([stream], |r| Ok((r.get(0)?, r.get(1)?))).optional()?;
    let Some((sid, head)) = found else {
        return Ok(HistoryRead {
            state: StreamState { epoch: epoch.clone(), head: 0, oldest: 1 },
            entries: Vec::new(),
        });
    };
    // The replayable window: the newest offsets, one by one from the head down, at most `replay_max_items` of
    // them and none older than `replay_max_age`.
    let low = head.saturating_sub(limits.replay_max_items as u64) + 1;
    let age_cut = now.saturating_sub(limits.replay_max_age.as_millis() as u64);
    let mut oldest = head + 1;
    {
        let mut window = conn.prepare_cached(
            "SELECT e.offset, n.created_at FROM entries e JOIN notifications n ON n.seq = e.seq \
             WHERE e.sid = ?1 AND e.offset >= ?2 ORDER BY e.offset DESC",
        )?;
        let mut rows = window.query(params![sid, low])?;
        while let Some(row) = rows.next()? {
            let (offset, created_at): (u64, u64) = (row.get(0)?, row.get(1)?);
            if offset + 1 != oldest || created_at < age_cut {
                break;
            }
            oldest = offset;
        }
    }
    let state = StreamState { epoch: epoch.clone(), head, oldest };
    let Some((requested_epoch, offset)) = since else { return Ok(HistoryRead { state, entries: Vec::new() }) };
    let after = if *requested_epoch == **epoch && offset <= head { offset } else { 0 };
    let from = (after + 1).max(oldest);
    let mut entries = Vec::new();
    if from <= head {
        let mut select = conn.prepare_cached(
            "SELECT e.offset, n.id, n.type, n.priority, n.persistence, n.title, n.body, n.data, n.grp, n.created_at \
             FROM entries e JOIN notifications n ON n.seq = e.seq \
             WHERE e.sid = ?1 AND e.offset >= ?2 AND e.offset <= ?3 ORDER BY e.offset",
        )?;
        let mut rows = select.query(params![sid, from, head])?;
        while let Some(row) = rows.next()? {
            entries.push(history_entry(row, stream, epoch)?);
        }
    }
    Ok(HistoryRead { state, entries })
}

/// Reads a page of what `stream` stores (see [`StreamStore::page`]) from one snapshot.
fn read_page(
    conn: &Connection,
    epoch: &Arc<str>,
    limits: &StoreLimits,
    now: u64,
    stream: &str,
    after: Option<(String, u64)>,
    limit: usize,
) -> rusqlite::Result<super::StoredPage> {
    let snapshot = conn.unchecked_transaction()?;
    let state = read_snapshot(&snapshot, epoch, limits, now, stream, None)?.state;
    let sid: Option<i64> = snapshot
        .prepare_cached("SELECT sid FROM streams WHERE name = ?1")?
        .query_row([stream], |r| r.get(0))
        .optional()?;
    let Some(sid) = sid else {
        snapshot.finish()?;
        return Ok(super::StoredPage { oldest: state.head + 1, state, entries: Vec::new(), more: false });
    };
    let oldest: Option<u64> =
        snapshot.prepare_cached("SELECT MIN(offset) FROM entries WHERE sid = ?1")?.query_row([sid], |r| r.get(0))?;
    let after = after.filter(|(e, _)| **e == **epoch).map_or(0, |(_, o)| o);
    let mut entries = Vec::new();
    {
        let mut select = snapshot.prepare_cached(
            "SELECT e.offset, n.id, n.type, n.priority, n.persistence, n.title, n.body, n.data, n.grp, n.created_at \
             FROM entries e JOIN notifications n ON n.seq = e.seq \
             WHERE e.sid = ?1 AND e.offset > ?2 ORDER BY e.offset LIMIT ?3",
        )?;
        let mut rows = select.query(params![sid, after, limit + 1])?;
        while let Some(row) = rows.next()? {
            entries.push(history_entry(row, stream, epoch)?);
        }
    }
    snapshot.finish()?;
    let more = entries.len() > limit;
    entries.truncate(limit);
    Ok(super::StoredPage { oldest: oldest.unwrap_or(state.head + 1), state, entries, more })
}

/// One row of `entries JOIN notifications` (offset, id, type, priority, persistence, title, body, data, grp,
/// created_at) as a history entry of `stream`.
fn history_entry(row: &rusqlite::Row<'_>, stream: &str, epoch: &Arc<str>) -> rusqlite::Result<HistoryEntry> {
    let offset: u64 = row.get(0)?;
    let text = |i: usize| -> rusqlite::Result<String> { row.get(i) };
    let data: Option<String> = row.get(7)?;
    let fields = NotificationFields {
        id: text(1)?,
        stream: String::new(),
        offset: None,
        epoch: String::new(),
        kind: text(2)?,
        priority: Priority::parse(&text(3)?).unwrap_or(Priority::Important),
        persistence: Persistence::parse(&text(4)?).unwrap_or(Persistence::Bufferable),
        title: row.get(5)?,
        body: row.get(6)?,
        data: data.and_then(|d| RawJson::from_string(d).ok()),
        group: row.get(8)?,
        created_at: row.get(9)?,
    };
    Ok(HistoryEntry { offset, frame: encode_notification(&fields, stream, epoch, Some(offset)) })
}

/// The notification `id` if `stream` still holds it (within the replay window, or persistent).
fn find_in_stream(
    conn: &Connection,
    epoch: &Arc<str>,
    limits: &StoreLimits,
    now: u64,
    stream: &str,
    id: &str,
) -> rusqlite::Result<Option<HistoryEntry>> {
    // The notification's row lists where it went; the newest of its entries in `stream` that is still there.
    let sid: Option<i64> =
        conn.prepare_cached("SELECT sid FROM streams WHERE name = ?1")?.query_row([stream], |r| r.get(0)).optional()?;
    let Some(sid) = sid else { return Ok(None) };
    let mut found: Option<u64> = None;
    {
        let mut placed = conn.prepare_cached("SELECT seq, placements FROM notifications WHERE id = ?1")?;
        let mut exists = conn.prepare_cached("SELECT 1 FROM entries WHERE sid = ?1 AND offset = ?2 AND seq = ?3")?;
        let mut rows = placed.query([id])?;
        while let Some(row) = rows.next()? {
            let (seq, placements): (i64, Option<String>) = (row.get(0)?, row.get(1)?);
            for (_, offset) in writer::parse_placements(placements.as_deref().unwrap_or("")).filter(|&(s, _)| s == sid)
            {
                if found.is_none_or(|f| offset > f) && exists.exists(params![sid, offset, seq])? {
                    found = Some(offset);
                }
            }
        }
    }
    let Some(offset) = found else { return Ok(None) };
    let read = read_history(conn, epoch, limits, now, stream, Some((epoch.to_string(), offset - 1)))?;
    Ok(read.entries.into_iter().find(|e| e.offset == offset))
}

/// Waits for a writer's answer; a writer that went away means the store closed.
async fn answer<T>(rx: oneshot::Receiver<T>) -> Result<T, StoreError> {
    rx.await.map_err(|_| StoreError::unavailable("the store closed before answering"))
}

impl StreamStore for SqliteStore {
    fn append<'a>(&'a self, batch: Vec<Append>) -> BoxFuture<'a, Vec<Result<AppendOutcome, StoreError>>> {
        Box::pin(async move {
            let n = batch.len();
            let (reply, rx) = oneshot::channel();
            if let Err(e) = self.send(Op::Append { batch, reply }) {
                return vec![Err(e); n];
            }
            answer(rx).await.unwrap_or_else(|e| vec![Err(e); n])
        })
    }

    fn epoch<'a>(&'a self, _stream: &'a str) -> BoxFuture<'a, Result<Arc<str>, StoreError>> {
        super::ready(Ok(self.epoch.clone()))
    }

    fn read<'a>(
        &'a self,
        stream: &'a str,
        since: Option<Position<'a>>,
    ) -> BoxFuture<'a, Result<HistoryRead, StoreError>> {
        let (epoch, limits, now) = (self.epoch.clone(), self.limits.clone(), (self.clock)());
        let stream = stream.to_owned();
        let since = since.map(|(e, o)| (e.to_owned(), o));
        Box::pin(self.read_with(move |conn| read_history(conn, &epoch, &limits, now, &stream, since)))
    }

    fn check_writable(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let (reply, rx) = oneshot::channel();
            self.send(Op::Probe { reply })?;
            answer(rx).await?
        })
    }

    fn observe(&self, metrics: &crate::metrics::Metrics) {
        let _ = self.metrics.set(metrics.store("sqlite"));
    }

    fn kind(&self) -> &'static str {
        "sqlite"
    }

    fn page<'a>(
        &'a self,
        stream: &'a str,
        after: Option<Position<'a>>,
        limit: usize,
    ) -> BoxFuture<'a, Result<super::StoredPage, StoreError>> {
        let (epoch, limits, now) = (self.epoch.clone(), self.limits.clone(), (self.clock)());
        let stream = stream.to_owned();
        let after = after.map(|(e, o)| (e.to_owned(), o));
        Box::pin(self.read_with(move |conn| read_page(conn, &epoch, &limits, now, &stream, after, limit)))
    }

    fn find<'a>(&'a self, stream: &'a str, id: &'a str) -> BoxFuture<'a, Result<Option<HistoryEntry>, StoreError>> {
        let (epoch, limits, now) = (self.epoch.clone(), self.limits.clone(), (self.clock)());
        let (stream, id) = (stream.to_owned(), id.to_owned());
        Box::pin(self.read_with(move |conn| find_in_stream(conn, &epoch, &limits, now, &stream, &id)))
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.readers.clear();
            let (reply, rx) = oneshot::channel();
            if self.send(Op::Close { reply }).is_ok() {
                let _ = rx.await;
            }
        })
    }
}

impl AckStore for SqliteStore {
    fn record<'a>(
        &'a self,
        user: &'a Arc<str>,
        device: &'a Arc<str>,
        ids: &'a [String],
        at_ms: u64,
    ) -> BoxFuture<'a, Result<Vec<RowKey>, StoreError>> {
        Box::pin(async move {
            let (reply, rx) = oneshot::channel();
            self.send(Op::Acks { user: user.clone(), device: device.clone(), ids: ids.to_vec(), at: at_ms, reply })?;
            answer(rx).await?
        })
    }

    fn acks<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Vec<AckRecord>, StoreError>> {
        let id = id.to_owned();
        Box::pin(self.read_with(move |conn| {
            let mut select = conn.prepare_cached("SELECT user, device, at FROM acks WHERE id = ?1 ORDER BY rowid")?;
            let rows = select.query_map([id], |r| {
                Ok(AckRecord {
                    user: Arc::from(r.get::<_, String>(0)?),
                    device: Arc::from(r.get::<_, String>(1)?),
                    at: r.get(2)?,
                })
            })?;
            rows.collect()
        }))
    }
}

impl DeviceStore for SqliteStore {
    fn register_push<'a>(&'a self, user: &'a str, record: PushRecord) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let (reply, rx) = oneshot::channel();
            self.send(Op::RegisterPush { user: user.to_owned(), record, reply })?;
            answer(rx).await?
        })
    }

    fn push_addresses<'a>(&'a self, user: &'a str) -> BoxFuture<'a, Result<Vec<PushRecord>, StoreError>> {
        let user = user.to_owned();
        Box::pin(self.read_with(move |conn| {
            let mut select = conn.prepare_cached(
                "SELECT device, platform, token, registered_at FROM push_addresses WHERE user = ?1 \
                 ORDER BY registered_at, device",
            )?;
            let rows = select.query_map([user], |r| {
                let platform: String = r.get(1)?;
                Ok(PushRecord {
                    device: Arc::from(r.get::<_, String>(0)?),
                    platform: PushPlatform::parse(&platform).unwrap_or(PushPlatform::Fcm),
                    token: r.get(2)?,
                    registered_at: r.get(3)?,
                })
            })?;
            rows.collect()
        }))
    }

    fn delete_push<'a>(
        &'a self,
        user: &'a str,
        device: &'a str,
        token: &'a str,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let (reply, rx) = oneshot::channel();
            self.send(Op::DeletePush { user: user.into(), device: device.into(), token: token.into(), reply })?;
            answer(rx).await?
        })
    }
}

impl SettingsStore for SqliteStore {
    fn settings<'a>(&'a self, user: &'a str) -> BoxFuture<'a, Result<UserSettings, StoreError>> {
        let user = user.to_owned();
        Box::pin(self.read_with(move |conn| push::read_settings(conn, &user)))
    }

    fn update_settings<'a>(
        &'a self,
        user: &'a str,
        change: SettingsChange,
        at: UnixMs,
    ) -> BoxFuture<'a, Result<UserSettings, SettingsError>> {
        Box::pin(async move {
            let (reply, rx) = oneshot::channel();
            self.send(Op::Settings { user: user.to_owned(), change, at, reply })?;
            answer(rx).await?
        })
    }
}

impl PushStore for SqliteStore {
    fn plan<'a>(
        &'a self,
        policy: &'a Policy,
        now: UnixMs,
        items: Vec<PlanItem>,
    ) -> BoxFuture<'a, Result<Vec<PublishPlan>, StoreError>> {
        Box::pin(async move {
            let (reply, rx) = oneshot::channel();
            self.send(Op::Plan { policy: policy.clone(), now, items, reply })?;
            answer(rx).await?
        })
    }

    fn pending_summary(&self, now: UnixMs) -> BoxFuture<'_, Result<PendingSummary, StoreError>> {
        Box::pin(self.read_with(move |conn| push::pending_summary(conn, now)))
    }

    fn next_due(&self) -> BoxFuture<'_, Result<Option<UnixMs>, StoreError>> {
        Box::pin(self.read_with(push::next_due))
    }

    fn claim_due(
        &self,
        now: UnixMs,
        lease: Duration,
        max_users: usize,
    ) -> BoxFuture<'_, Result<(u64, Vec<StoredPush>), StoreError>> {
        Box::pin(async move {
            let (reply, rx) = oneshot::channel();
            let until = now.saturating_add(lease.as_millis() as u64);
            self.send(Op::Claim { now, until, max_users, reply })?;
            answer(rx).await?
        })
    }

    fn settle(&self, settlement: Settlement) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let (reply, rx) = oneshot::channel();
            self.send(Op::Settle { settlement, reply })?;
            answer(rx).await?
        })
    }

    fn expedite<'a>(
        &'a self,
        user: &'a str,
        reason: PendingReason,
        now: UnixMs,
    ) -> BoxFuture<'a, Result<usize, StoreError>> {
        Box::pin(async move {
            let (reply, rx) = oneshot::channel();
            self.send(Op::Expedite { user: user.to_owned(), reason, now, reply })?;
            answer(rx).await?
        })
    }

    fn deliveries<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Vec<DeliveryRecord>, StoreError>> {
        let id = id.to_owned();
        Box::pin(self.read_with(move |conn| push::deliveries(conn, &id)))
    }
}

#[cfg(test)]
mod tests;
