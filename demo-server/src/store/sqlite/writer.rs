//! The writer thread of the SQLite store: group commit, then commit-order hand-off to the async runtime.

use std::fmt::Write as _;
use std::fs::File;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use rusqlite::{Connection, ErrorCode, OptionalExtension, TransactionBehavior, params};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use super::{Clock, MAX_OPS_PER_COMMIT, push};
use crate::metrics::StoreMetrics;
use crate::model::{AppendOutcome, Committed, Delivery, IdFloor, Publication, PushRecord};
use crate::planner::{PendingReason, Policy, PublishPlan, RowKey, UnixMs};
use crate::store::push::{PlanItem, SettingsChange, SettingsError, Settlement, StoredPush, UserSettings};
use crate::store::{Append, StoreError, StoreLimits};

/// How often the writer prunes what aged out (and at the latest after this long under load); shorter in this
/// crate's unit tests, which wait for it.
const MAINTENANCE_EVERY: Duration = if cfg!(test) { Duration::from_millis(200) } else { Duration::from_secs(5) };
/// Most rows pruned per maintenance transaction, so that pruning never holds publishes back for long.
const PRUNE_CHUNK: usize = 5_000;
/// Streams whose id and head the writer keeps in memory.
const CACHED_STREAMS: usize = 100_000;
/// How often the checkpointer moves what the write-ahead log holds into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

/// A write for the writer thread.
pub(super) enum Op {
    Append {
        batch: Vec<Append>,
        reply: oneshot::Sender<Vec<Result<AppendOutcome, StoreError>>>,
    },
    Acks {
        user: Arc<str>,
        device: Arc<str>,
        ids: Vec<String>,
        at: u64,
        reply: Reply<Vec<RowKey>>,
    },
    RegisterPush {
        user: String,
        record: PushRecord,
        reply: Reply<()>,
    },
    /// A small write through the commit path (readiness): the time of the probe in `meta`.
    Probe {
        reply: Reply<()>,
    },
    DeletePush {
        user: String,
        device: String,
        token: String,
        reply: Reply<bool>,
    },
    Settings {
        user: String,
        change: SettingsChange,
        at: u64,
        reply: oneshot::Sender<Result<UserSettings, SettingsError>>,
    },
    Plan {
        policy: Policy,
        now: UnixMs,
        items: Vec<PlanItem>,
        reply: Reply<Vec<PublishPlan>>,
    },
    Claim {
        now: UnixMs,
        until: UnixMs,
        max_users: usize,
        reply: Reply<(u64, Vec<StoredPush>)>,
    },
    Settle {
        settlement: Settlement,
        reply: Reply<()>,
    },
    Expedite {
        user: String,
        reason: PendingReason,
        now: UnixMs,
        reply: Reply<usize>,
    },
    Inbox(super::inbox::InboxOp),
    Close {
        reply: oneshot::Sender<()>,
    },
}

/// An operation and when it was queued (for the queue's metrics).
pub(super) struct Queued {
    pub(super) at: Instant,
    pub(super) op: Op,
}

/// Where the answer to a write goes.
pub(super) type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// Where one publication was committed: `(stream, offset)` per stream (no offset for an ephemeral one).
type Placed = Vec<(Arc<str>, Option<u64>)>;

/// What the writer did with one publication: placed it (fan it out and answer with its deliveries), or found its
/// idempotency key (answer with what the first publish delivered).
enum Outcome {
    /// `reissued`: the id it was committed under when the store drew a new one (see [`IdFloor`]).
    Appended {
        placed: Placed,
        reissued: Option<Arc<str>>,
    },
    Duplicate(Vec<Delivery>),
}

/// A committed `Op::Append`, on its way to the runtime: each publication with what the writer did with it, then the
/// answer.
pub(super) struct Completed {
    items: Vec<(Append, Outcome)>,
    epoch: Arc<str>,
    reply: oneshot::Sender<Vec<Result<AppendOutcome, StoreError>>>,
}

/// Runs on the async runtime: encodes each committed publication's frames and hands them to the broker, in commit
/// order, then answers the publishes. (Encoding and the answers' strings are made here, off the writer thread,
/// which only writes.)
pub(super) async fn complete(mut rx: mpsc::UnboundedReceiver<Vec<Completed>>) {
    while let Some(batch) = rx.recv().await {
        for done in batch {
            let mut results = Vec::with_capacity(done.items.len());
            for (append, outcome) in done.items {
                let (placed, reissued) = match outcome {
                    Outcome::Appended { placed, reissued } => (placed, reissued),
                    Outcome::Duplicate(deliveries) => {
                        results.push(Ok(AppendOutcome::Duplicate(deliveries)));
                        continue;
                    }
                };
                let Append { publication: p, mut on_commit } = append;
                let mut deliveries = Vec::with_capacity(placed.len());
                for (stream, (name, offset)) in p.streams.iter().zip(placed) {
                    deliveries.push(Delivery { stream: stream.clone(), epoch: done.epoch.to_string(), offset });
                    let frame = p.encode(&name, &done.epoch, offset);
                    on_commit(&Committed { id: p.id.clone(), stream: name, epoch: done.epoch.clone(), offset, frame });
                }
                results.push(Ok(AppendOutcome::Appended { deliveries, reissued }));
            }
            let _ = done.reply.send(results);
        }
    }
}

/// Maps a SQLite error to a store error.
pub(super) fn classify(e: &rusqlite::Error) -> StoreError {
    match e.sqlite_error_code() {
        Some(ErrorCode::DiskFull) => StoreError::full(format!("no space left for the database: {e}")),
        _ => StoreError::unavailable(format!("database error: {e}")),
    }
}

/// The writer: owns the only writing connection and the lock on the data directory.
pub(super) struct Writer {
    conn: Connection,
    path: std::path::PathBuf,
    state: State,
    done: mpsc::UnboundedSender<Vec<Completed>>,
    metrics: Arc<OnceLock<StoreMetrics>>,
    /// Held for as long as the writer lives: no other server can open the data directory.
    _lock: File,
}

/// What the writer knows besides its connection.
struct State {
    epoch: Arc<str>,
    limits: StoreLimits,
    clock: Clock,
    /// Committed `(sid, head)` of recently written streams (the names are shared with what commits hand on).
    streams: foldhash::HashMap<Arc<str>, (i64, u64)>,
    /// The next claim token of pending pushes (unique within a run; claims do not outlive a run, see
    /// `release_claims`).
    next_claim: std::sync::atomic::AtomicU64,
    /// The greatest server-generated id committed: one writer commits every append in turn, so keeping each new
    /// id above it keeps ids ordered in every stream (see [`IdFloor`]). Seeded from the newest notification.
    last_id: std::cell::RefCell<IdFloor>,
}

/// What one operation did inside the transaction, to be acted on after the commit.
enum Applied {
    Append(Vec<Outcome>),
    Inbox(super::inbox::InboxDone),
    Done,
    Cancelled(Vec<RowKey>),
    Deleted(bool),
    Settings(Result<UserSettings, String>),
    Plans(Vec<PublishPlan>),
    Claimed(u64, Vec<StoredPush>),
    Moved(usize),
}

/// A stream's id and head as the transaction sees them. `name` is the stream's name, shared by every placement in the
/// transaction (not one allocation per notification).
struct Staged {
    sid: i64,
    head: u64,
    name: Arc<str>,
}

/// The statements of a publish transaction, prepared once per transaction.
struct Statements<'t> {
    find_stream: rusqlite::CachedStatement<'t>,
    insert_stream: rusqlite::CachedStatement<'t>,
    insert_notification: rusqlite::CachedStatement<'t>,
    insert_entry: rusqlite::CachedStatement<'t>,
    drop_entry: rusqlite::CachedStatement<'t>,
    find_key: rusqlite::CachedStatement<'t>,
    put_key: rusqlite::CachedStatement<'t>,
    /// Scratch buffers of `append`: a notification's stream ids and its `placements`.
    sids: Vec<i64>,
    placements: String,
}

impl<'t> Statements<'t> {
    fn prepare(tx: &'t Connection) -> rusqlite::Result<Self> {
        Ok(Statements {
            find_stream: tx.prepare_cached(super::STREAM_HEAD)?,
            insert_stream: tx.prepare_cached("INSERT INTO streams (name, head) VALUES (?1, 0)")?,
            insert_notification: tx.prepare_cached(
                "INSERT INTO notifications \
                 (id, type, priority, persistence, title, body, data, grp, created_at, refs, placements) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            )?,
            insert_entry: tx.prepare_cached("INSERT INTO entries (sid, offset, seq) VALUES (?1, ?2, ?3)")?,
            drop_entry: tx.prepare_cached(
                "DELETE FROM entries WHERE sid = ?1 AND offset = ?2 \
                 AND (SELECT persistence FROM notifications n WHERE n.seq = entries.seq) = 'bufferable' RETURNING seq",
            )?,
            find_key: tx.prepare_cached("SELECT at, deliveries FROM idempotency WHERE key = ?1")?,
            put_key: tx
                .prepare_cached("INSERT OR REPLACE INTO idempotency (key, at, deliveries) VALUES (?1, ?2, ?3)")?,
            sids: Vec::new(),
            placements: String::new(),
        })
    }
}

impl Writer {
    pub(super) fn new(
        conn: Connection,
        path: std::path::PathBuf,
        lock: File,
        epoch: Arc<str>,
        limits: StoreLimits,
        clock: Clock,
        done: mpsc::UnboundedSender<Vec<Completed>>,
    ) -> Self {
        let mut last_id = IdFloor::default();
        let newest: Option<String> = conn
            .query_row("SELECT id FROM notifications ORDER BY seq DESC LIMIT 1", [], |r| r.get(0))
            .optional()
            .ok()
            .flatten();
        if let Some(id) = newest {
            last_id.raise(&id);
        }
        let state = State {
            epoch,
            limits,
            clock,
            streams: foldhash::HashMap::default(),
            next_claim: 1.into(),
            last_id: last_id.into(),
        };
        Writer { conn, path, state, done, metrics: Arc::new(OnceLock::new()), _lock: lock }
    }

    /// Reports commits and the write queue to the metrics `metrics` will hold once the store is observed.
    pub(super) fn reporting_to(mut self, metrics: Arc<OnceLock<StoreMetrics>>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Takes what is waiting, commits it, repeats; prunes now and then; ends on `Op::Close` or when every sender
    /// is gone.
    pub(super) fn run(mut self, rx: Receiver<Queued>) {
        let checkpointer = Checkpointer::start(&self.path);
        if checkpointer.running()
            && let Err(e) = self.conn.execute_batch("PRAGMA wal_autocheckpoint = 0")
        {
            warn!(error = %e, "the writer keeps checkpointing itself");
        }
        let mut last_maintenance = Instant::now();
        let mut close = None;
        while close.is_none() {
            let first = match rx.recv_timeout(MAINTENANCE_EVERY) {
                Ok(op) => op,
                Err(RecvTimeoutError::Timeout) => {
                    self.maintain();
                    last_maintenance = Instant::now();
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let oldest = first.at;
            let mut ops = vec![first.op];
            while ops.len() < MAX_OPS_PER_COMMIT {
                match rx.try_recv() {
                    Ok(queued) => ops.push(queued.op),
                    Err(_) => break,
                }
            }
            let taken = ops.len();
            let metrics = self.metrics.get().cloned();
            if let Some(m) = &metrics {
                m.queue.taking(oldest);
            }
            if let Some(i) = ops.iter().position(|op| matches!(op, Op::Close { .. })) {
                // Everything queued before the close is still written; anything after it is refused.
                for late in ops.split_off(i + 1) {
                    refuse(late, StoreError::unavailable("the store is closing"));
                }
                if let Some(Op::Close { reply }) = ops.pop() {
                    close = Some(reply);
                }
            }
            if !ops.is_empty() {
                self.commit(ops, metrics.as_ref());
            }
            if let Some(m) = &metrics {
                m.queue.done(taken, None);
            }
            if last_maintenance.elapsed() >= MAINTENANCE_EVERY {
                self.maintain();
                last_maintenance = Instant::now();
            }
        }
        checkpointer.stop();
        self.finish();
        // The connection and the lock are released before the close is answered.
        drop(self);
        if let Some(reply) = close {
            let _ = reply.send(());
        }
    }

    /// Commits `ops` in one transaction and hands their results on; on failure nothing of them is kept and each
    /// gets the error.
    fn commit(&mut self, ops: Vec<Op>, metrics: Option<&StoreMetrics>) {
        let mut staged: foldhash::HashMap<Arc<str>, Staged> = foldhash::HashMap::default();
        let started = Instant::now();
        let result = (|| -> rusqlite::Result<Vec<Applied>> {
            let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let now = (self.state.clock)();
            let mut applied = Vec::with_capacity(ops.len());
            {
                let mut statements = None;
                for op in &ops {
                    applied.push(self.state.apply(&tx, &mut statements, op, now, &mut staged)?);
                }
                // No stream's head is written: it is its newest entry (see STREAM_HEAD).
            }
            tx.commit()?;
            Ok(applied)
        })();
        match result {
            Ok(applied) => {
                if self.state.streams.len() + staged.len() > CACHED_STREAMS {
                    self.state.streams.clear();
                }
                self.state.streams.extend(staged.into_iter().map(|(name, s)| (name, (s.sid, s.head))));
                let elapsed = started.elapsed();
                if let Some(m) = metrics {
                    m.commit(ops.len(), elapsed);
                }
                debug!(ops = ops.len(), micros = elapsed.as_micros() as u64, "committed");
                let mut completed = Vec::new();
                for (op, applied) in ops.into_iter().zip(applied) {
                    match (op, applied) {
                        (Op::Append { batch, reply }, Applied::Append(outcomes)) => {
                            let mut items = Vec::with_capacity(batch.len());
                            for (mut append, outcome) in batch.into_iter().zip(outcomes) {
                                if let Outcome::Appended { reissued: Some(id), .. } = &outcome {
                                    append.publication = Arc::new(append.publication.with_id(id));
                                }
                                items.push((append, outcome));
                            }
                            let epoch = self.state.epoch.clone();
                            completed.push(Completed { items, epoch, reply });
                        }
                        (Op::RegisterPush { reply, .. } | Op::Settle { reply, .. } | Op::Probe { reply }, _) => {
                            let _ = reply.send(Ok(()));
                        }
                        (Op::Inbox(op), Applied::Inbox(done)) => op.answer(done),
                        (Op::Acks { reply, .. }, Applied::Cancelled(keys)) => {
                            let _ = reply.send(Ok(keys));
                        }
                        (Op::DeletePush { reply, .. }, Applied::Deleted(deleted)) => {
                            let _ = reply.send(Ok(deleted));
                        }
                        (Op::Settings { reply, .. }, Applied::Settings(result)) => {
                            let _ = reply.send(result.map_err(SettingsError::Invalid));
                        }
                        (Op::Plan { reply, .. }, Applied::Plans(plans)) => {
                            let _ = reply.send(Ok(plans));
                        }
                        (Op::Claim { reply, .. }, Applied::Claimed(claim, rows)) => {
                            let _ = reply.send(Ok((claim, rows)));
                        }
                        (Op::Expedite { reply, .. }, Applied::Moved(n)) => {
                            let _ = reply.send(Ok(n));
                        }
                        _ => {}
                    }
                }
                if !completed.is_empty() {
                    let _ = self.done.send(completed);
                }
            }
            Err(e) => {
                let error = classify(&e);
                if let Some(m) = metrics {
                    m.commit_failures.inc();
                }
                warn!(error = %e, ops = ops.len(), "a commit failed; nothing of it was stored");
                for op in ops {
                    refuse(op, error.clone());
                }
            }
        }
    }

    /// Prunes what aged out: notifications past the replay age (bufferable) or the retention (persistent), expired
    /// idempotency keys, old acks. In bounded chunks, each its own transaction.
    fn maintain(&mut self) {
        let now = (self.state.clock)();
        let limits = &self.state.limits;
        let cutoffs = [
            ("bufferable", now.saturating_sub(limits.replay_max_age.as_millis() as u64)),
            ("persistent", now.saturating_sub(limits.persistent_retention.as_millis() as u64)),
        ];
        let idempotency_cut = now.saturating_sub(limits.idempotency_window.as_millis() as u64);
        let acks_cut = now.saturating_sub(limits.ack_retention.as_millis() as u64);
        let result = (|| -> rusqlite::Result<usize> {
            let mut pruned = 0;
            for (persistence, cut) in cutoffs {
                loop {
                    let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                    // Every entry of a notification shares its persistence and age: the notification goes with
                    // all of its entries that are still there (some may have left the replay window by count).
                    let old: Vec<(i64, Option<String>)> = tx
                        .prepare_cached(
                            "SELECT seq, placements FROM notifications \
                             WHERE persistence = ?1 AND created_at < ?2 LIMIT ?3",
                        )?
                        .query_map(params![persistence, cut, PRUNE_CHUNK], |r| Ok((r.get(0)?, r.get(1)?)))?
                        .collect::<rusqlite::Result<_>>()?;
                    let mut entries = 0;
                    {
                        let mut delete_entry =
                            tx.prepare_cached("DELETE FROM entries WHERE sid = ?1 AND offset = ?2 AND seq = ?3")?;
                        // A stream's head outlives its entries (see STREAM_HEAD).
                        let mut keep_head =
                            tx.prepare_cached("UPDATE streams SET head = MAX(head, ?2) WHERE sid = ?1")?;
                        let mut delete = tx.prepare_cached("DELETE FROM notifications WHERE seq = ?1")?;
                        for (seq, placements) in &old {
                            for (sid, offset) in parse_placements(placements.as_deref().unwrap_or("")) {
                                keep_head.execute(params![sid, offset])?;
                                entries += delete_entry.execute(params![sid, offset, seq])?;
                            }
                            delete.execute([seq])?;
                        }
                    }
                    tx.commit()?;
                    pruned += entries;
                    if old.len() < PRUNE_CHUNK {
                        break;
                    }
                }
            }
            let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            pruned += tx.execute("DELETE FROM idempotency WHERE at < ?1", [idempotency_cut])?;
            pruned += tx.execute(
                "DELETE FROM acks WHERE (id, user, device) IN (SELECT id, user, device FROM acks WHERE at < ?1 LIMIT ?2)",
                params![acks_cut, PRUNE_CHUNK * 10],
            )?;
            // The deliveries log is kept as long as acks; closed digest windows are of no use.
            pruned += tx.execute(
                "DELETE FROM delivery_log WHERE rowid IN (SELECT rowid FROM delivery_log WHERE at < ?1 LIMIT ?2)",
                params![acks_cut, PRUNE_CHUNK * 10],
            )?;
            pruned += tx.execute("DELETE FROM digest_window WHERE closes_at <= ?1", [now])?;
            tx.commit()?;
            Ok(pruned)
        })();
        match result {
            Ok(0) => {}
            Ok(pruned) => debug!(pruned, "pruned what aged out"),
            Err(e) => warn!(error = %e, "pruning failed; it is retried later"),
        }
    }

    /// At a clean shutdown: checkpoints the write-ahead log and records the clean end (synced to disk whatever the
    /// `synchronous` setting).
    fn finish(&mut self) {
        let result = self.conn.execute_batch(
            "PRAGMA synchronous = FULL; \
             INSERT OR REPLACE INTO meta (key, value) VALUES ('clean_shutdown', '1'); \
             PRAGMA wal_checkpoint(TRUNCATE);",
        );
        if let Err(e) = result {
            warn!(error = %e, "the database could not be closed cleanly");
        }
    }
}

/// A thread with its own connection that checkpoints the write-ahead log (`PASSIVE`: it never blocks the writer or
/// readers) every [`CHECKPOINT_EVERY`], so that copying pages into the database file — and, with `synchronous =
/// normal`, its disk sync — stays out of the writer's commits (the writer's own automatic checkpoints are off).
struct Checkpointer {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Checkpointer {
    fn start(path: &std::path::Path) -> Checkpointer {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let path = path.to_owned();
        let thread = std::thread::Builder::new()
            .name("tidings-sqlite-checkpoint".into())
            .spawn(move || {
                let conn = match Connection::open(&path) {
                    Ok(conn) => conn,
                    Err(e) => return warn!(error = %e, "the checkpointer cannot open the database"),
                };
                let _ = conn.busy_timeout(Duration::from_millis(100));
                loop {
                    std::thread::park_timeout(CHECKPOINT_EVERY);
                    if flag.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                        debug!(error = %e, "checkpoint skipped");
                    }
                }
            })
            .map_err(|e| warn!(error = %e, "cannot start the checkpointer; the writer checkpoints itself"))
            .ok();
        Checkpointer { stop, thread }
    }

    fn stop(mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }

    fn running(&self) -> bool {
        self.thread.is_some()
    }
}

/// Answers an operation that was not stored.
fn refuse(op: Op, error: StoreError) {
    match op {
        Op::Append { batch, reply } => {
            let _ = reply.send(vec![Err(error); batch.len()]);
        }
        Op::RegisterPush { reply, .. } | Op::Settle { reply, .. } | Op::Probe { reply } => {
            let _ = reply.send(Err(error));
        }
        Op::Acks { reply, .. } => {
            let _ = reply.send(Err(error));
        }
        Op::DeletePush { reply, .. } => {
            let _ = reply.send(Err(error));
        }
        Op::Settings { reply, .. } => {
            let _ = reply.send(Err(SettingsError::Store(error)));
        }
        Op::Plan { reply, .. } => {
            let _ = reply.send(Err(error));
        }
        Op::Claim { reply, .. } => {
            let _ = reply.send(Err(error));
        }
        Op::Expedite { reply, .. } => {
            let _ = reply.send(Err(error));
        }
        Op::Inbox(op) => op.refuse(error),
        Op::Close { reply } => {
            let _ = reply.send(());
        }
    }
}

/// The `(sid, offset)` pairs of a notification's `placements` (`sid:offset`, comma separated); what does not parse
/// is skipped.
pub(super) fn parse_placements(placements: &str) -> impl Iterator<Item = (i64, u64)> + '_ {
    placements.split(',').filter_map(|pair| {
        let (sid, offset) = pair.split_once(':')?;
        Some((sid.parse().ok()?, offset.parse().ok()?))
    })
}

/// Drops one entry's reference to a notification's content, deleting the content with its last entry.
fn release(tx: &Connection, seq: i64) -> rusqlite::Result<()> {
    let refs: Option<i64> = tx
        .prepare_cached("UPDATE notifications SET refs = refs - 1 WHERE seq = ?1 RETURNING refs")?
        .query_row([seq], |r| r.get(0))
        .optional()?;
    if refs.is_some_and(|r| r <= 0) {
        tx.prepare_cached("DELETE FROM notifications WHERE seq = ?1")?.execute([seq])?;
    }
    Ok(())
}

impl State {
    fn apply<'t>(
        &self,
        tx: &'t Connection,
        statements: &mut Option<Statements<'t>>,
        op: &Op,
        now: u64,
        staged: &mut foldhash::HashMap<Arc<str>, Staged>,
    ) -> rusqlite::Result<Applied> {
        match op {
            Op::Append { batch, .. } => {
                if statements.is_none() {
                    *statements = Some(Statements::prepare(tx)?);
                }
                let st = statements.as_mut().expect("prepared above");
                let mut outcomes = Vec::with_capacity(batch.len());
                for append in batch {
                    outcomes.push(self.append(tx, st, &append.publication, now, staged)?);
                }
                Ok(Applied::Append(outcomes))
            }
            Op::Acks { user, device, ids, at, .. } => {
                let mut insert =
                    tx.prepare_cached("INSERT OR IGNORE INTO acks (id, user, device, at) VALUES (?1, ?2, ?3, ?4)")?;
                for id in ids {
                    insert.execute(params![id, &**user, &**device, at])?;
                }
                Ok(Applied::Cancelled(push::cancel(tx, user, ids, *at)?))
            }
            Op::DeletePush { user, device, token, .. } => {
                let n = tx
                    .prepare_cached("DELETE FROM push_addresses WHERE user = ?1 AND device = ?2 AND token = ?3")?
                    .execute(params![user, device, token])?;
                Ok(Applied::Deleted(n > 0))
            }
            Op::Settings { user, change, at, .. } => {
                Ok(Applied::Settings(push::update_settings(tx, user, change, *at)?))
            }
            Op::Plan { policy, now, items, .. } => Ok(Applied::Plans(push::plan(tx, policy, *now, items)?)),
            Op::Claim { now, until, max_users, .. } => {
                let claim = self.next_claim.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Ok(Applied::Claimed(claim, push::claim(tx, claim, *now, *until, *max_users)?))
            }
            Op::Settle { settlement, .. } => {
                push::settle(tx, settlement)?;
                Ok(Applied::Done)
            }
            Op::Expedite { user, reason, now, .. } => Ok(Applied::Moved(push::expedite(tx, user, *reason, *now)?)),
            Op::RegisterPush { user, record, .. } => {
                tx.prepare_cached("DELETE FROM push_addresses WHERE user = ?1 AND (device = ?2 OR token = ?3)")?
                    .execute(params![user, &*record.device, record.token])?;
                tx.prepare_cached(
                    "INSERT INTO push_addresses (user, device, platform, token, registered_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                )?
                .execute(params![user, &*record.device, record.platform.as_str(), record.token, record.registered_at])?;
                Ok(Applied::Done)
            }
            Op::Probe { .. } => {
                tx.prepare_cached("INSERT OR REPLACE INTO meta (key, value) VALUES ('ready_probe', ?1)")?
                    .execute([now.to_string()])?;
                Ok(Applied::Done)
            }
            Op::Inbox(op) => Ok(Applied::Inbox(super::inbox::apply(tx, op, now, &self.limits)?)),
            Op::Close { .. } => Ok(Applied::Done),
        }
    }

    /// The id and (staged) head of `stream`, creating it at head 0.
    fn stream<'s>(
        &self,
        tx: &Connection,
        st: &mut Statements<'_>,
        name: &str,
        staged: &'s mut foldhash::HashMap<Arc<str>, Staged>,
    ) -> rusqlite::Result<&'s mut Staged> {
        if !staged.contains_key(name) {
            let (name, known) = match self.streams.get_key_value(name) {
                Some((name, &(sid, head))) => (name.clone(), (sid, head)),
                None => match st.find_stream.query_row([name], |r| Ok((r.get(0)?, r.get(1)?))).optional()? {
                    Some(known) => (Arc::from(name), known),
                    None => {
                        st.insert_stream.execute([name])?;
                        (Arc::from(name), (tx.last_insert_rowid(), 0))
                    }
                },
            };
            staged.insert(name.clone(), Staged { sid: known.0, head: known.1, name });
        }
        Ok(staged.get_mut(name).expect("inserted above"))
    }

    fn append(
        &self,
        tx: &Connection,
        st: &mut Statements<'_>,
        p: &Arc<Publication>,
        now: u64,
        staged: &mut foldhash::HashMap<Arc<str>, Staged>,
    ) -> rusqlite::Result<Outcome> {
        if p.idempotent {
            let seen: Option<(u64, String)> =
                st.find_key.query_row([&*p.id], |r| Ok((r.get(0)?, r.get(1)?))).optional()?;
            let window = self.limits.idempotency_window.as_millis() as u64;
            if let Some((at, deliveries)) = seen
                && now.saturating_sub(at) < window
            {
                let deliveries: Vec<Delivery> = serde_json::from_str(&deliveries).unwrap_or_default();
                return Ok(Outcome::Duplicate(deliveries));
            }
        }
        let f = &p.fields;
        let max = self.limits.replay_max_items as u64;
        let mut placed = Vec::with_capacity(p.streams.len());
        // A publication with no stream left (every recipient turned the socket channel off for it) stores nothing
        // but its idempotency key.
        let mut reissued = None;
        if p.is_buffered() && !p.streams.is_empty() {
            let mut last_id = self.last_id.borrow_mut();
            reissued = last_id.reissue(p).map(Arc::<str>::from);
            let id = reissued.as_deref().unwrap_or(&p.id);
            if !p.idempotent {
                last_id.raise(id);
            }
            // Each stream's next offset first: the notification's row lists where it went (`sid:offset` pairs, what
            // age pruning deletes with it).
            // (Buffers kept across notifications: no allocation per notification for them.)
            let mut sids = std::mem::take(&mut st.sids);
            let mut placements = std::mem::take(&mut st.placements);
            sids.clear();
            placements.clear();
            for stream in &p.streams {
                let s = self.stream(tx, st, stream, staged)?;
                s.head += 1;
                sids.push(s.sid);
                if !placements.is_empty() {
                    placements.push(',');
                }
                let _ = write!(placements, "{}:{}", s.sid, s.head);
                placed.push((s.name.clone(), Some(s.head)));
            }
            st.insert_notification.execute(params![
                id,
                f.kind,
                f.priority.as_str(),
                f.persistence.as_str(),
                f.title,
                f.body,
                f.data.as_ref().map(|d| d.get()),
                f.group,
                f.created_at,
                p.streams.len() as i64,
                placements,
            ])?;
            let seq = tx.last_insert_rowid();
            for (&sid, (_, offset)) in sids.iter().zip(&placed) {
                let offset = offset.expect("placed above");
                st.insert_entry.execute(params![sid, offset, seq])?;
                // The bufferable notification that just left the replay window by count is not kept.
                if offset > max {
                    let gone: Option<i64> =
                        st.drop_entry.query_row(params![sid, offset - max], |r| r.get(0)).optional()?;
                    if let Some(gone) = gone {
                        release(tx, gone)?;
                    }
                }
            }
            (st.sids, st.placements) = (sids, placements);
        } else {
            placed.extend(p.streams.iter().map(|stream| (Arc::from(stream.as_str()), None)));
        }
        if p.idempotent {
            let deliveries: Vec<Delivery> = p
                .streams
                .iter()
                .zip(&placed)
                .map(|(stream, (_, offset))| Delivery {
                    stream: stream.clone(),
                    epoch: self.epoch.to_string(),
                    offset: *offset,
                })
                .collect();
            let json = serde_json::to_string(&deliveries).unwrap_or_else(|_| "[]".into());
            st.put_key.execute(params![&*p.id, now, json])?;
        }
        Ok(Outcome::Appended { placed, reissued })
    }
}
