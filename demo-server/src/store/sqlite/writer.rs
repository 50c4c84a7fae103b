//! The writer thread of the SQLite store: group commit, then commit-order hand-off to the async runtime.

use std::collections::HashMap;
use std::fs::File;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use rusqlite::{Connection, ErrorCode, OptionalExtension, TransactionBehavior, params};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use super::{Clock, MAX_OPS_PER_COMMIT};
use crate::model::{AppendOutcome, Committed, Delivery, Publication, PushRecord};
use crate::store::{Append, OnCommit, StoreError, StoreLimits};

/// How often the writer prunes what aged out (and at the latest after this long under load); shorter in this
/// crate's unit tests, which wait for it.
const MAINTENANCE_EVERY: Duration = if cfg!(test) { Duration::from_millis(200) } else { Duration::from_secs(5) };
/// Most rows pruned per maintenance transaction, so that pruning never holds publishes back for long.
const PRUNE_CHUNK: usize = 5_000;
/// Streams whose id and head the writer keeps in memory.
const CACHED_STREAMS: usize = 100_000;

/// A write for the writer thread.
pub(super) enum Op {
    Append { batch: Vec<Append>, reply: oneshot::Sender<Vec<Result<AppendOutcome, StoreError>>> },
    Acks { user: Arc<str>, device: Arc<str>, ids: Vec<String>, at: u64, reply: oneshot::Sender<Result<(), StoreError>> },
    RegisterPush { user: String, record: PushRecord, reply: oneshot::Sender<Result<(), StoreError>> },
    Close { reply: oneshot::Sender<()> },
}

/// A committed `Op::Append`, on its way to the runtime: the fan-out of each publication, then the answer.
pub(super) struct Completed {
    fan_out: Vec<(OnCommit, Vec<Committed>)>,
    results: Vec<Result<AppendOutcome, StoreError>>,
    reply: oneshot::Sender<Vec<Result<AppendOutcome, StoreError>>>,
}

/// Runs on the async runtime: hands committed publications to the broker in commit order, then answers the
/// publishes.
pub(super) async fn complete(mut rx: mpsc::UnboundedReceiver<Vec<Completed>>) {
    while let Some(batch) = rx.recv().await {
        for done in batch {
            for (mut on_commit, committed) in done.fan_out {
                for c in &committed {
                    on_commit(c);
                }
            }
            let _ = done.reply.send(done.results);
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
    state: State,
    done: mpsc::UnboundedSender<Vec<Completed>>,
    /// Held for as long as the writer lives: no other server can open the data directory.
    _lock: File,
}

/// What the writer knows besides its connection.
struct State {
    epoch: Arc<str>,
    limits: StoreLimits,
    clock: Clock,
    /// Committed `(sid, head)` of recently written streams.
    streams: HashMap<String, (i64, u64)>,
}

/// What one operation did inside the transaction, to be acted on after the commit.
enum Applied {
    Append(Vec<(AppendOutcome, Vec<Committed>)>),
    Done,
}

impl Writer {
    pub(super) fn new(
        conn: Connection,
        lock: File,
        epoch: Arc<str>,
        limits: StoreLimits,
        clock: Clock,
        done: mpsc::UnboundedSender<Vec<Completed>>,
    ) -> Self {
        Writer { conn, state: State { epoch, limits, clock, streams: HashMap::new() }, done, _lock: lock }
    }

    /// Takes what is waiting, commits it, repeats; prunes now and then; ends on `Op::Close` or when every sender
    /// is gone.
    pub(super) fn run(mut self, rx: Receiver<Op>) {
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
            let mut ops = vec![first];
            while ops.len() < MAX_OPS_PER_COMMIT {
                match rx.try_recv() {
                    Ok(op) => ops.push(op),
                    Err(_) => break,
                }
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
                self.commit(ops);
            }
            if last_maintenance.elapsed() >= MAINTENANCE_EVERY {
                self.maintain();
                last_maintenance = Instant::now();
            }
        }
        self.finish();
        // The connection and the lock are released before the close is answered.
        drop(self);
        if let Some(reply) = close {
            let _ = reply.send(());
        }
    }

    /// Commits `ops` in one transaction and hands their results on; on failure nothing of them is kept and each
    /// gets the error.
    fn commit(&mut self, ops: Vec<Op>) {
        let mut staged = HashMap::new();
        let started = Instant::now();
        let result = (|| -> rusqlite::Result<Vec<Applied>> {
            let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let now = (self.state.clock)();
            let mut applied = Vec::with_capacity(ops.len());
            for op in &ops {
                applied.push(self.state.apply(&tx, op, now, &mut staged)?);
            }
            tx.commit()?;
            Ok(applied)
        })();
        match result {
            Ok(applied) => {
                if self.state.streams.len() + staged.len() > CACHED_STREAMS {
                    self.state.streams.clear();
                }
                self.state.streams.extend(staged);
                debug!(ops = ops.len(), micros = started.elapsed().as_micros() as u64, "committed");
                let mut completed = Vec::new();
                for (op, applied) in ops.into_iter().zip(applied) {
                    match (op, applied) {
                        (Op::Append { batch, reply }, Applied::Append(outcomes)) => {
                            let mut fan_out = Vec::with_capacity(batch.len());
                            let mut results = Vec::with_capacity(batch.len());
                            for (append, (outcome, committed)) in batch.into_iter().zip(outcomes) {
                                fan_out.push((append.on_commit, committed));
                                results.push(Ok(outcome));
                            }
                            completed.push(Completed { fan_out, results, reply });
                        }
                        (Op::RegisterPush { reply, .. } | Op::Acks { reply, .. }, _) => {
                            let _ = reply.send(Ok(()));
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
                    let old: Vec<(i64, u64, i64)> = tx
                        .prepare_cached(
                            "SELECT sid, offset, seq FROM entries WHERE persistence = ?1 AND created_at < ?2 LIMIT ?3",
                        )?
                        .query_map(params![persistence, cut, PRUNE_CHUNK], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                        .collect::<rusqlite::Result<_>>()?;
                    for &(sid, offset, seq) in &old {
                        tx.prepare_cached("DELETE FROM entries WHERE sid = ?1 AND offset = ?2")?
                            .execute(params![sid, offset])?;
                        release(&tx, seq)?;
                    }
                    tx.commit()?;
                    pruned += old.len();
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

/// Answers an operation that was not stored.
fn refuse(op: Op, error: StoreError) {
    match op {
        Op::Append { batch, reply } => {
            let _ = reply.send(vec![Err(error); batch.len()]);
        }
        Op::RegisterPush { reply, .. } | Op::Acks { reply, .. } => {
            let _ = reply.send(Err(error));
        }
        Op::Close { reply } => {
            let _ = reply.send(());
        }
    }
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
    fn apply(
        &self,
        tx: &Connection,
        op: &Op,
        now: u64,
        staged: &mut HashMap<String, (i64, u64)>,
    ) -> rusqlite::Result<Applied> {
        match op {
            Op::Append { batch, .. } => {
                let mut outcomes = Vec::with_capacity(batch.len());
                for append in batch {
                    outcomes.push(self.append(tx, &append.publication, now, staged)?);
                }
                Ok(Applied::Append(outcomes))
            }
            Op::Acks { user, device, ids, at, .. } => {
                let mut insert =
                    tx.prepare_cached("INSERT OR IGNORE INTO acks (id, user, device, at) VALUES (?1, ?2, ?3, ?4)")?;
                for id in ids {
                    insert.execute(params![id, &**user, &**device, at])?;
                }
                Ok(Applied::Done)
            }
            Op::RegisterPush { user, record, .. } => {
                tx.prepare_cached("DELETE FROM push_addresses WHERE user = ?1 AND (device = ?2 OR token = ?3)")?
                    .execute(params![user, &*record.device, record.token])?;
                tx.prepare_cached(
                    "INSERT INTO push_addresses (user, device, platform, token, registered_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                )?
                .execute(params![user, &*record.device, record.platform.as_str(), record.token, record.registered_at])?;
                Ok(Applied::Done)
            }
            Op::Close { .. } => Ok(Applied::Done),
        }
    }

    /// The id and (staged) head of `stream`, creating it at head 0.
    fn stream(
        &self,
        tx: &Connection,
        name: &str,
        staged: &mut HashMap<String, (i64, u64)>,
    ) -> rusqlite::Result<(i64, u64)> {
        if let Some(&known) = staged.get(name).or_else(|| self.streams.get(name)) {
            return Ok(known);
        }
        let found: Option<(i64, u64)> = tx
            .prepare_cached("SELECT sid, head FROM streams WHERE name = ?1")?
            .query_row([name], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        let known = match found {
            Some(known) => known,
            None => {
                let sid = tx
                    .prepare_cached("INSERT INTO streams (name, head) VALUES (?1, 0) RETURNING sid")?
                    .query_row([name], |r| r.get(0))?;
                (sid, 0)
            }
        };
        staged.insert(name.to_owned(), known);
        Ok(known)
    }

    fn append(
        &self,
        tx: &Connection,
        p: &Arc<Publication>,
        now: u64,
        staged: &mut HashMap<String, (i64, u64)>,
    ) -> rusqlite::Result<(AppendOutcome, Vec<Committed>)> {
        if p.idempotent {
            let seen: Option<(u64, String)> = tx
                .prepare_cached("SELECT at, deliveries FROM idempotency WHERE key = ?1")?
                .query_row([&*p.id], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            let window = self.limits.idempotency_window.as_millis() as u64;
            if let Some((at, deliveries)) = seen
                && now.saturating_sub(at) < window
            {
                let deliveries: Vec<Delivery> = serde_json::from_str(&deliveries).unwrap_or_default();
                return Ok((AppendOutcome::Duplicate(deliveries), Vec::new()));
            }
        }
        let f = &p.fields;
        let seq: Option<i64> = if p.is_buffered() {
            Some(
                tx.prepare_cached(
                    "INSERT INTO notifications (id, type, priority, persistence, title, body, data, grp, created_at, refs) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) RETURNING seq",
                )?
                .query_row(
                    params![
                        &*p.id,
                        f.kind,
                        f.priority.as_str(),
                        f.persistence.as_str(),
                        f.title,
                        f.body,
                        f.data.as_ref().map(|d| d.get()),
                        f.group,
                        f.created_at,
                        p.streams.len() as i64,
                    ],
                    |r| r.get(0),
                )?,
            )
        } else {
            None
        };
        let mut deliveries = Vec::with_capacity(p.streams.len());
        let mut committed = Vec::with_capacity(p.streams.len());
        for stream in &p.streams {
            let offset = match seq {
                Some(seq) => {
                    let (sid, head) = self.stream(tx, stream, staged)?;
                    let offset = head + 1;
                    tx.prepare_cached(
                        "INSERT INTO entries (sid, offset, seq, persistence, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                    )?
                    .execute(params![sid, offset, seq, f.persistence.as_str(), f.created_at])?;
                    tx.prepare_cached("UPDATE streams SET head = ?2 WHERE sid = ?1")?.execute(params![sid, offset])?;
                    staged.insert(stream.clone(), (sid, offset));
                    // The bufferable notification that just left the replay window by count is not kept.
                    let max = self.limits.replay_max_items as u64;
                    if offset > max {
                        let gone: Option<i64> = tx
                            .prepare_cached(
                                "DELETE FROM entries WHERE sid = ?1 AND offset = ?2 AND persistence = 'bufferable' \
                                 RETURNING seq",
                            )?
                            .query_row(params![sid, offset - max], |r| r.get(0))
                            .optional()?;
                        if let Some(gone) = gone {
                            release(tx, gone)?;
                        }
                    }
                    Some(offset)
                }
                None => None,
            };
            committed.push(Committed {
                id: p.id.clone(),
                stream: Arc::from(stream.as_str()),
                epoch: self.epoch.clone(),
                offset,
                frame: p.encode(stream, &self.epoch, offset),
            });
            deliveries.push(Delivery { stream: stream.clone(), epoch: self.epoch.to_string(), offset });
        }
        if p.idempotent {
            let json = serde_json::to_string(&deliveries).unwrap_or_else(|_| "[]".into());
            tx.prepare_cached("INSERT OR REPLACE INTO idempotency (key, at, deliveries) VALUES (?1, ?2, ?3)")?
                .execute(params![&*p.id, now, json])?;
        }
        Ok((AppendOutcome::Appended(deliveries), committed))
    }
}
