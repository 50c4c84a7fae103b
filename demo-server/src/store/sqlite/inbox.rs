//! The SQLite backend of the inbox: the rules of `store/inbox.rs` over the tables `inbox_users`, `inbox_items`,
//! `inbox_ops` and `inbox_follows`. Changes run on the writer thread, inside its group commit (the counts and
//! the items in one transaction); pages and counts are read on the read pool from one snapshot.

use std::collections::BTreeMap;

use rusqlite::{Connection, OptionalExtension, params};
use tidings_core::protocol::{
    InboxCounts, InboxPage, InboxQuery, Notification, decode_notification, encode_notification,
};
use tokio::sync::oneshot;

use super::{SqliteStore, answer, writer::Op};
use crate::store::inbox::{
    self, ChangeRequest, InboxAdd, InboxChange, InboxStore, ItemRow, Kind, PRUNE_BATCH, Pending, Rows, UserRow,
    decode_marks, encode_marks, first_version, topic_of,
};
use crate::store::{BoxFuture, StoreError, StoreLimits};

/// An inbox write for the writer thread.
pub(crate) enum InboxOp {
    Add { batch: Vec<InboxAdd>, reply: oneshot::Sender<Result<Vec<InboxChange>, StoreError>> },
    Change { user: String, request: ChangeRequest, reply: oneshot::Sender<Result<InboxChange, StoreError>> },
    Follow { user: String, topic: String, follow: bool, reply: oneshot::Sender<Result<bool, StoreError>> },
    Prune { now: u64, reply: oneshot::Sender<Result<Vec<InboxChange>, StoreError>> },
}

/// What an [`InboxOp`] did inside the transaction, answered after the commit.
pub(crate) enum InboxDone {
    Changes(Vec<InboxChange>),
    Change(InboxChange),
    Flag(bool),
}

impl InboxOp {
    /// Answers the op after its commit.
    pub(crate) fn answer(self, done: InboxDone) {
        match (self, done) {
            (InboxOp::Add { reply, .. } | InboxOp::Prune { reply, .. }, InboxDone::Changes(c)) => {
                let _ = reply.send(Ok(c));
            }
            (InboxOp::Change { reply, .. }, InboxDone::Change(c)) => {
                let _ = reply.send(Ok(c));
            }
            (InboxOp::Follow { reply, .. }, InboxDone::Flag(f)) => {
                let _ = reply.send(Ok(f));
            }
            (op, _) => op.refuse(StoreError::unavailable("internal error: mismatched inbox answer")),
        }
    }

    /// Answers an op that was not stored.
    pub(crate) fn refuse(self, error: StoreError) {
        match self {
            InboxOp::Add { reply, .. } | InboxOp::Prune { reply, .. } => {
                let _ = reply.send(Err(error));
            }
            InboxOp::Change { reply, .. } => {
                let _ = reply.send(Err(error));
            }
            InboxOp::Follow { reply, .. } => {
                let _ = reply.send(Err(error));
            }
        }
    }
}

/// Runs one inbox op inside the writer's transaction.
pub(crate) fn apply(tx: &Connection, op: &InboxOp, now: u64, limits: &StoreLimits) -> rusqlite::Result<InboxDone> {
    let mut rows = SqlRows { conn: tx, now, op_window_ms: limits.inbox_op_window.as_millis() as u64 };
    Ok(match op {
        InboxOp::Add { batch, .. } => {
            let mut changes: BTreeMap<String, Pending> = BTreeMap::new();
            for add in batch {
                inbox::add(&mut rows, add, limits, &mut changes)?;
            }
            InboxDone::Changes(changes.into_values().filter_map(Pending::into_change).collect())
        }
        InboxOp::Change { user, request, .. } => InboxDone::Change(inbox::change(&mut rows, user, request)?),
        InboxOp::Follow { user, topic, follow, .. } => {
            let changed = if *follow {
                tx.prepare_cached("INSERT OR IGNORE INTO inbox_follows (topic, user, since) VALUES (?1, ?2, ?3)")?
                    .execute(params![topic, user, now])?
            } else {
                tx.prepare_cached("DELETE FROM inbox_follows WHERE topic = ?1 AND user = ?2")?
                    .execute(params![topic, user])?
            };
            InboxDone::Flag(changed > 0)
        }
        InboxOp::Prune { now, .. } => InboxDone::Changes(prune(&mut rows, *now, limits)?),
    })
}

fn prune(rows: &mut SqlRows<'_>, now: u64, limits: &StoreLimits) -> rusqlite::Result<Vec<InboxChange>> {
    let conn = rows.conn;
    let op_cut = now.saturating_sub(limits.inbox_op_window.as_millis() as u64);
    conn.prepare_cached("DELETE FROM inbox_ops WHERE at < ?1")?.execute([op_cut])?;
    let cut = now.saturating_sub(limits.inbox_retention.as_millis() as u64);
    let mut old: BTreeMap<i64, Vec<ItemRow>> = BTreeMap::new();
    {
        let mut select = conn.prepare_cached(&format!(
            "SELECT uid, {ITEM_COLUMNS} FROM inbox_items WHERE inserted_at < ?1 ORDER BY inserted_at LIMIT ?2"
        ))?;
        let mut found = select.query(params![cut, PRUNE_BATCH])?;
        while let Some(row) = found.next()? {
            old.entry(row.get(0)?).or_default().push(item_row(row, 1)?);
        }
    }
    let mut changes = Vec::new();
    for (uid, mut items) in old {
        let user: Option<String> = conn
            .prepare_cached("SELECT user FROM inbox_users WHERE uid = ?1")?
            .query_row([uid], |r| r.get(0))
            .optional()?;
        let Some(user) = user else { continue };
        items.sort_by_key(|i| i.seq);
        changes.extend(inbox::prune_user(rows, &user, &items)?);
    }
    Ok(changes)
}

/// The item columns [`item_row`] reads, in order.
const ITEM_COLUMNS: &str = "seq, id, inserted_at, v, seen_at, seen_v, read_at, read_v, archived_at";

fn item_row(row: &rusqlite::Row<'_>, first: usize) -> rusqlite::Result<ItemRow> {
    Ok(ItemRow {
        seq: row.get(first)?,
        id: row.get(first + 1)?,
        inserted_at: row.get(first + 2)?,
        v: row.get(first + 3)?,
        seen_at: row.get(first + 4)?,
        seen_v: row.get(first + 5)?,
        read_at: row.get(first + 6)?,
        read_v: row.get(first + 7)?,
        archived_at: row.get(first + 8)?,
    })
}

const USER_COLUMNS: &str = "uid, user, version, head, unseen, unread, total, items, read_marks, seen_marks";

fn user_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<UserRow> {
    let read: String = row.get(8)?;
    let seen: String = row.get(9)?;
    Ok(UserRow {
        key: row.get(0)?,
        user: row.get(1)?,
        counts: InboxCounts {
            version: row.get(2)?,
            head: row.get(3)?,
            unseen: row.get(4)?,
            unread: row.get(5)?,
            total: row.get(6)?,
        },
        items: row.get(7)?,
        read_marks: decode_marks(&read),
        seen_marks: decode_marks(&seen),
    })
}

fn find_user(conn: &Connection, user: &str) -> rusqlite::Result<Option<UserRow>> {
    conn.prepare_cached(&format!("SELECT {USER_COLUMNS} FROM inbox_users WHERE user = ?1"))?
        .query_row([user], user_row)
        .optional()
}

/// A stored envelope that no longer decodes (it was written by this server, so this means corruption) is
/// reported as a read error rather than dropped.
fn envelope(text: &str) -> rusqlite::Result<Notification> {
    decode_notification(text).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, format!("inbox envelope: {e}").into())
    })
}

/// [`Rows`] inside the writer's transaction.
struct SqlRows<'c> {
    conn: &'c Connection,
    now: u64,
    op_window_ms: u64,
}

impl Rows for SqlRows<'_> {
    type Error = rusqlite::Error;

    fn user(&mut self, user: &str) -> rusqlite::Result<Option<UserRow>> {
        find_user(self.conn, user)
    }

    fn create_user(&mut self, user: &str) -> rusqlite::Result<UserRow> {
        self.conn
            .prepare_cached(
                "INSERT INTO inbox_users (user, version, head, unseen, unread, total, items, read_marks, seen_marks) \
                 VALUES (?1, ?2, 0, 0, 0, 0, 0, '', '')",
            )?
            .execute(params![user, first_version(self.now)])?;
        let mut row = UserRow { key: self.conn.last_insert_rowid(), user: user.to_owned(), ..UserRow::default() };
        row.counts.version = first_version(self.now);
        Ok(row)
    }

    fn put_user(&mut self, row: &UserRow) -> rusqlite::Result<()> {
        let c = &row.counts;
        self.conn
            .prepare_cached(
                "UPDATE inbox_users SET version = ?2, head = ?3, unseen = ?4, unread = ?5, total = ?6, items = ?7, \
                 read_marks = ?8, seen_marks = ?9 WHERE uid = ?1",
            )?
            .execute(params![
                row.key,
                c.version,
                c.head,
                c.unseen,
                c.unread,
                c.total,
                row.items,
                encode_marks(&row.read_marks),
                encode_marks(&row.seen_marks)
            ])?;
        Ok(())
    }

    fn item_by_id(&mut self, user: &UserRow, id: &str) -> rusqlite::Result<Option<ItemRow>> {
        self.conn
            .prepare_cached(&format!("SELECT {ITEM_COLUMNS} FROM inbox_items WHERE uid = ?1 AND id = ?2"))?
            .query_row(params![user.key, id], |r| item_row(r, 0))
            .optional()
    }

    fn has_id(&mut self, user: &UserRow, id: &str) -> rusqlite::Result<bool> {
        self.conn.prepare_cached("SELECT 1 FROM inbox_items WHERE uid = ?1 AND id = ?2")?.exists(params![user.key, id])
    }

    fn insert_item(&mut self, user: &UserRow, item: &ItemRow, n: &Notification) -> rusqlite::Result<()> {
        self.conn
            .prepare_cached(
                "INSERT INTO inbox_items (uid, seq, id, type, topic, inserted_at, v, seen_at, seen_v, read_at, read_v, \
                 archived_at, envelope) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
            )?
            .execute(params![
                user.key,
                item.seq,
                item.id,
                n.kind(),
                topic_of(n.stream()),
                item.inserted_at,
                item.v,
                item.seen_at,
                item.seen_v,
                item.read_at,
                item.read_v,
                item.archived_at,
                encode_notification(n),
            ])?;
        Ok(())
    }

    fn put_item(&mut self, user: &UserRow, item: &ItemRow) -> rusqlite::Result<()> {
        self.conn
            .prepare_cached(
                "UPDATE inbox_items SET v = ?3, seen_at = ?4, seen_v = ?5, read_at = ?6, read_v = ?7, archived_at = ?8 \
                 WHERE uid = ?1 AND seq = ?2",
            )?
            .execute(params![
                user.key,
                item.seq,
                item.v,
                item.seen_at,
                item.seen_v,
                item.read_at,
                item.read_v,
                item.archived_at
            ])?;
        Ok(())
    }

    fn delete_item(&mut self, user: &UserRow, seq: u64) -> rusqlite::Result<()> {
        self.conn
            .prepare_cached("DELETE FROM inbox_items WHERE uid = ?1 AND seq = ?2")?
            .execute(params![user.key, seq])?;
        Ok(())
    }

    fn oldest(&mut self, user: &UserRow, n: usize) -> rusqlite::Result<Vec<ItemRow>> {
        self.conn
            .prepare_cached(&format!("SELECT {ITEM_COLUMNS} FROM inbox_items WHERE uid = ?1 ORDER BY seq LIMIT ?2"))?
            .query_map(params![user.key, n], |r| item_row(r, 0))?
            .collect()
    }

    fn above(&mut self, user: &UserRow, after: u64) -> rusqlite::Result<Vec<ItemRow>> {
        self.conn
            .prepare_cached(&format!("SELECT {ITEM_COLUMNS} FROM inbox_items WHERE uid = ?1 AND seq > ?2"))?
            .query_map(params![user.key, after], |r| item_row(r, 0))?
            .collect()
    }

    fn exceptions(&mut self, user: &UserRow, kind: Kind, after_v: u64, up_to: u64) -> rusqlite::Result<Vec<ItemRow>> {
        // The literal `… IS NULL AND …_v > 0` lets SQLite use the partial index of items marked one by one.
        let sql = match kind {
            Kind::Read => format!(
                "SELECT {ITEM_COLUMNS} FROM inbox_items WHERE uid = ?1 AND read_at IS NULL AND read_v > 0 \
                 AND read_v > ?2 AND seq <= ?3"
            ),
            Kind::Seen => format!(
                "SELECT {ITEM_COLUMNS} FROM inbox_items WHERE uid = ?1 AND seen_at IS NULL AND seen_v > 0 \
                 AND seen_v > ?2 AND seq <= ?3"
            ),
        };
        self.conn.prepare_cached(&sql)?.query_map(params![user.key, after_v, up_to], |r| item_row(r, 0))?.collect()
    }

    fn op_seen(&mut self, user: &UserRow, op_id: &str) -> rusqlite::Result<bool> {
        let cut = self.now.saturating_sub(self.op_window_ms);
        self.conn
            .prepare_cached("SELECT 1 FROM inbox_ops WHERE uid = ?1 AND op_id = ?2 AND at >= ?3")?
            .exists(params![user.key, op_id, cut])
    }

    fn record_op(&mut self, user: &UserRow, op_id: &str, at: u64) -> rusqlite::Result<()> {
        self.conn
            .prepare_cached("INSERT OR REPLACE INTO inbox_ops (uid, op_id, at) VALUES (?1, ?2, ?3)")?
            .execute(params![user.key, op_id, at])?;
        Ok(())
    }

    fn followers(&mut self, topic: &str) -> rusqlite::Result<Vec<String>> {
        self.conn
            .prepare_cached("SELECT user FROM inbox_follows WHERE topic = ?1 ORDER BY user")?
            .query_map([topic], |r| r.get(0))?
            .collect()
    }
}

/// Reads a page of `user`'s inbox from one snapshot.
fn read_page(conn: &Connection, user: &str, query: &InboxQuery) -> rusqlite::Result<InboxPage> {
    let snapshot = conn.unchecked_transaction()?;
    let row = find_user(&snapshot, user)?;
    let key = row.as_ref().map_or(0, |r| r.key);
    let page = inbox::page(row.as_ref(), query, |before, n| {
        let mut select = snapshot.prepare_cached(&format!(
            "SELECT {ITEM_COLUMNS}, envelope FROM inbox_items WHERE uid = ?1 AND seq < ?2 \
             AND (?3 IS NULL OR type = ?3) AND (?4 IS NULL OR topic = ?4) ORDER BY seq DESC LIMIT ?5"
        ))?;
        let before = before.map_or(i64::MAX, |b| b.min(i64::MAX as u64) as i64);
        let rows = select.query_map(params![key, before, query.kind, query.topic, n], |r| {
            let text: String = r.get(9)?;
            Ok((item_row(r, 0)?, envelope(&text)?))
        })?;
        rows.collect()
    });
    snapshot.finish()?;
    page
}

impl InboxStore for SqliteStore {
    fn add(&self, batch: Vec<InboxAdd>) -> BoxFuture<'_, Result<Vec<InboxChange>, StoreError>> {
        Box::pin(async move {
            let (reply, rx) = oneshot::channel();
            self.send(Op::Inbox(InboxOp::Add { batch, reply }))?;
            answer(rx).await?
        })
    }

    fn change<'a>(&'a self, user: &'a str, request: ChangeRequest) -> BoxFuture<'a, Result<InboxChange, StoreError>> {
        Box::pin(async move {
            let (reply, rx) = oneshot::channel();
            self.send(Op::Inbox(InboxOp::Change { user: user.to_owned(), request, reply }))?;
            answer(rx).await?
        })
    }

    fn list<'a>(&'a self, user: &'a str, query: InboxQuery) -> BoxFuture<'a, Result<InboxPage, StoreError>> {
        let user = user.to_owned();
        Box::pin(self.read_with(move |conn| read_page(conn, &user, &query)))
    }

    fn counts<'a>(&'a self, user: &'a str) -> BoxFuture<'a, Result<InboxCounts, StoreError>> {
        let user = user.to_owned();
        Box::pin(self.read_with(move |conn| Ok(find_user(conn, &user)?.map(|r| r.counts).unwrap_or_default())))
    }

    fn follow<'a>(&'a self, user: &'a str, topic: &'a str, follow: bool) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let (reply, rx) = oneshot::channel();
            self.send(Op::Inbox(InboxOp::Follow { user: user.to_owned(), topic: topic.to_owned(), follow, reply }))?;
            answer(rx).await?
        })
    }

    fn following<'a>(&'a self, user: &'a str) -> BoxFuture<'a, Result<Vec<String>, StoreError>> {
        let user = user.to_owned();
        Box::pin(self.read_with(move |conn| {
            conn.prepare_cached("SELECT topic FROM inbox_follows WHERE user = ?1 ORDER BY topic")?
                .query_map([user], |r| r.get(0))?
                .collect()
        }))
    }

    fn prune(&self, now: u64) -> BoxFuture<'_, Result<Vec<InboxChange>, StoreError>> {
        Box::pin(async move {
            let (reply, rx) = oneshot::channel();
            self.send(Op::Inbox(InboxOp::Prune { now, reply }))?;
            answer(rx).await?
        })
    }
}
