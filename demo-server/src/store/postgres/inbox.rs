//! The PostgreSQL backend of the inbox: the rules of `store/inbox.rs` over the tables `inbox_users`,
//! `inbox_items`, `inbox_ops` and `inbox_follows`, one transaction per call.
//!
//! The rules are written once, synchronously, over [`Rows`]; here they run on the blocking thread pool, each row
//! operation waiting for its query (`Handle::block_on`). A user's inbox is changed under a transaction-scoped
//! advisory lock on the user, so two processes changing one inbox take turns (the counts stay exact).

use std::collections::BTreeMap;
use std::sync::Arc;

use tidings_core::protocol::{
    InboxCounts, InboxPage, InboxQuery, Notification, decode_notification, encode_notification,
};
use tokio::runtime::Handle;
use tokio_postgres::{IsolationLevel, Row};

use super::{Inner, LOCK_INBOX, MAX_ATTEMPTS, PostgresStore, classify, retryable, to_i, to_u};
use crate::store::inbox::{
    self, ChangeRequest, InboxAdd, InboxChange, InboxStore, ItemRow, Kind, PRUNE_BATCH, Pending, Rows, UserRow,
    decode_marks, encode_marks, first_version, topic_of,
};
use crate::store::{BoxFuture, StoreError};

/// A failure inside an inbox transaction.
#[derive(Debug)]
pub(super) enum InboxError {
    Pg(tokio_postgres::Error),
    /// A stored envelope that no longer decodes.
    Corrupt(String),
}

impl From<tokio_postgres::Error> for InboxError {
    fn from(e: tokio_postgres::Error) -> Self {
        InboxError::Pg(e)
    }
}

type Result<T> = std::result::Result<T, InboxError>;

/// [`Rows`] inside one transaction.
struct PgRows<'c, 't> {
    tx: &'c deadpool_postgres::Transaction<'t>,
    rt: &'c Handle,
    now: u64,
    op_window_ms: u64,
}

const ITEM_COLUMNS: &str = "seq, id, inserted_at, v, seen_at, seen_v, read_at, read_v, archived_at";
const USER_COLUMNS: &str = "uid, usr, version, head, unseen, unread, total, items, read_marks, seen_marks";

fn item_row(row: &Row, first: usize) -> ItemRow {
    let opt = |i: usize| row.get::<_, Option<i64>>(first + i).map(to_u);
    ItemRow {
        seq: to_u(row.get(first)),
        id: row.get(first + 1),
        inserted_at: to_u(row.get(first + 2)),
        v: to_u(row.get(first + 3)),
        seen_at: opt(4),
        seen_v: to_u(row.get(first + 5)),
        read_at: opt(6),
        read_v: to_u(row.get(first + 7)),
        archived_at: opt(8),
    }
}

fn user_row(row: &Row) -> UserRow {
    UserRow {
        key: row.get(0),
        user: row.get(1),
        counts: InboxCounts {
            version: to_u(row.get(2)),
            head: to_u(row.get(3)),
            unseen: to_u(row.get(4)),
            unread: to_u(row.get(5)),
            total: to_u(row.get(6)),
        },
        items: to_u(row.get(7)),
        read_marks: decode_marks(row.get(8)),
        seen_marks: decode_marks(row.get(9)),
    }
}

/// The advisory lock key of a user's inbox.
fn user_lock(user: &str) -> i32 {
    xxhash_rust::xxh3::xxh3_64(user.as_bytes()) as i32
}

impl PgRows<'_, '_> {
    fn lock_user(&self, user: &str) -> Result<()> {
        self.rt.block_on(self.tx.execute("SELECT pg_advisory_xact_lock($1, $2)", &[&LOCK_INBOX, &user_lock(user)]))?;
        Ok(())
    }
}

impl Rows for PgRows<'_, '_> {
    type Error = InboxError;

    fn user(&mut self, user: &str) -> Result<Option<UserRow>> {
        self.lock_user(user)?;
        let sql = format!("SELECT {USER_COLUMNS} FROM inbox_users WHERE usr = $1");
        Ok(self.rt.block_on(self.tx.query_opt(&sql, &[&user]))?.as_ref().map(user_row))
    }

    fn create_user(&mut self, user: &str) -> Result<UserRow> {
        self.lock_user(user)?;
        let version = first_version(self.now);
        let row = self.rt.block_on(self.tx.query_one(
            "INSERT INTO inbox_users (usr, version, head, unseen, unread, total, items, read_marks, seen_marks) \
             VALUES ($1, $2, 0, 0, 0, 0, 0, '', '') RETURNING uid",
            &[&user, &to_i(version)],
        ))?;
        let mut out = UserRow { key: row.get(0), user: user.to_owned(), ..UserRow::default() };
        out.counts.version = version;
        Ok(out)
    }

    fn put_user(&mut self, row: &UserRow) -> Result<()> {
        let c = &row.counts;
        self.rt.block_on(self.tx.execute(
            "UPDATE inbox_users SET version = $2, head = $3, unseen = $4, unread = $5, total = $6, items = $7, \
             read_marks = $8, seen_marks = $9 WHERE uid = $1",
            &[
                &row.key,
                &to_i(c.version),
                &to_i(c.head),
                &to_i(c.unseen),
                &to_i(c.unread),
                &to_i(c.total),
                &to_i(row.items),
                &encode_marks(&row.read_marks),
                &encode_marks(&row.seen_marks),
            ],
        ))?;
        Ok(())
    }

    fn item_by_id(&mut self, user: &UserRow, id: &str) -> Result<Option<ItemRow>> {
        let sql = format!("SELECT {ITEM_COLUMNS} FROM inbox_items WHERE uid = $1 AND id = $2");
        Ok(self.rt.block_on(self.tx.query_opt(&sql, &[&user.key, &id]))?.map(|r| item_row(&r, 0)))
    }

    fn has_id(&mut self, user: &UserRow, id: &str) -> Result<bool> {
        let sql = "SELECT 1 FROM inbox_items WHERE uid = $1 AND id = $2";
        Ok(self.rt.block_on(self.tx.query_opt(sql, &[&user.key, &id]))?.is_some())
    }

    fn insert_item(&mut self, user: &UserRow, item: &ItemRow, n: &Notification) -> Result<()> {
        let opt = |v: Option<u64>| v.map(to_i);
        self.rt.block_on(self.tx.execute(
            "INSERT INTO inbox_items (uid, seq, id, kind, topic, inserted_at, v, seen_at, seen_v, read_at, read_v, \
             archived_at, envelope) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
            &[
                &user.key,
                &to_i(item.seq),
                &item.id,
                &n.kind(),
                &topic_of(n.stream()),
                &to_i(item.inserted_at),
                &to_i(item.v),
                &opt(item.seen_at),
                &to_i(item.seen_v),
                &opt(item.read_at),
                &to_i(item.read_v),
                &opt(item.archived_at),
                &encode_notification(n),
            ],
        ))?;
        Ok(())
    }

    fn put_item(&mut self, user: &UserRow, item: &ItemRow) -> Result<()> {
        let opt = |v: Option<u64>| v.map(to_i);
        self.rt.block_on(self.tx.execute(
            "UPDATE inbox_items SET v = $3, seen_at = $4, seen_v = $5, read_at = $6, read_v = $7, archived_at = $8 \
             WHERE uid = $1 AND seq = $2",
            &[
                &user.key,
                &to_i(item.seq),
                &to_i(item.v),
                &opt(item.seen_at),
                &to_i(item.seen_v),
                &opt(item.read_at),
                &to_i(item.read_v),
                &opt(item.archived_at),
            ],
        ))?;
        Ok(())
    }

    fn delete_item(&mut self, user: &UserRow, seq: u64) -> Result<()> {
        self.rt.block_on(
            self.tx.execute("DELETE FROM inbox_items WHERE uid = $1 AND seq = $2", &[&user.key, &to_i(seq)]),
        )?;
        Ok(())
    }

    fn oldest(&mut self, user: &UserRow, n: usize) -> Result<Vec<ItemRow>> {
        let sql = format!("SELECT {ITEM_COLUMNS} FROM inbox_items WHERE uid = $1 ORDER BY seq LIMIT $2");
        let rows = self.rt.block_on(self.tx.query(&sql, &[&user.key, &(n as i64)]))?;
        Ok(rows.iter().map(|r| item_row(r, 0)).collect())
    }

    fn above(&mut self, user: &UserRow, after: u64) -> Result<Vec<ItemRow>> {
        let sql = format!("SELECT {ITEM_COLUMNS} FROM inbox_items WHERE uid = $1 AND seq > $2 ORDER BY seq");
        let rows = self.rt.block_on(self.tx.query(&sql, &[&user.key, &to_i(after)]))?;
        Ok(rows.iter().map(|r| item_row(r, 0)).collect())
    }

    fn exceptions(&mut self, user: &UserRow, kind: Kind, after_v: u64, up_to: u64) -> Result<Vec<ItemRow>> {
        let sql = match kind {
            Kind::Read => format!(
                "SELECT {ITEM_COLUMNS} FROM inbox_items WHERE uid = $1 AND read_at IS NULL AND read_v > 0 \
                 AND read_v > $2 AND seq <= $3 ORDER BY seq"
            ),
            Kind::Seen => format!(
                "SELECT {ITEM_COLUMNS} FROM inbox_items WHERE uid = $1 AND seen_at IS NULL AND seen_v > 0 \
                 AND seen_v > $2 AND seq <= $3 ORDER BY seq"
            ),
        };
        let rows = self.rt.block_on(self.tx.query(&sql, &[&user.key, &to_i(after_v), &to_i(up_to)]))?;
        Ok(rows.iter().map(|r| item_row(r, 0)).collect())
    }

    fn op_seen(&mut self, user: &UserRow, op_id: &str) -> Result<bool> {
        let cut = to_i(self.now.saturating_sub(self.op_window_ms));
        let sql = "SELECT 1 FROM inbox_ops WHERE uid = $1 AND op_id = $2 AND at >= $3";
        Ok(self.rt.block_on(self.tx.query_opt(sql, &[&user.key, &op_id, &cut]))?.is_some())
    }

    fn record_op(&mut self, user: &UserRow, op_id: &str, at: u64) -> Result<()> {
        self.rt.block_on(self.tx.execute(
            "INSERT INTO inbox_ops (uid, op_id, at) VALUES ($1, $2, $3) ON CONFLICT (uid, op_id) DO UPDATE \
             SET at = EXCLUDED.at",
            &[&user.key, &op_id, &to_i(at)],
        ))?;
        Ok(())
    }

    fn followers(&mut self, topic: &str) -> Result<Vec<String>> {
        let rows = self
            .rt
            .block_on(self.tx.query("SELECT usr FROM inbox_follows WHERE topic = $1 ORDER BY usr", &[&topic]))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }
}

fn to_store(e: InboxError) -> StoreError {
    match e {
        InboxError::Pg(e) => classify(&e),
        InboxError::Corrupt(m) => StoreError::unavailable(m),
    }
}

/// Runs `f` over the rows of one transaction (read-write, or a read-only snapshot) on the blocking thread pool;
/// retried when PostgreSQL aborts it for a deadlock.
async fn with_rows<T: Send + 'static>(
    inner: &Arc<Inner>,
    read_only: bool,
    f: impl Fn(&mut PgRows<'_, '_>) -> Result<T> + Send + 'static,
) -> std::result::Result<T, StoreError> {
    let inner = inner.clone();
    let rt = Handle::current();
    tokio::task::spawn_blocking(move || {
        let mut attempt = 0;
        loop {
            let mut client = rt.block_on(inner.client())?;
            let result = (|| -> Result<T> {
                let tx = if read_only {
                    rt.block_on(
                        client
                            .build_transaction()
                            .isolation_level(IsolationLevel::RepeatableRead)
                            .read_only(true)
                            .start(),
                    )?
                } else {
                    rt.block_on(client.transaction())?
                };
                let limits = &inner.limits;
                let mut rows = PgRows {
                    tx: &tx,
                    rt: &rt,
                    now: inner.now(),
                    op_window_ms: limits.inbox_op_window.as_millis() as u64,
                };
                let value = f(&mut rows)?;
                rt.block_on(tx.commit())?;
                Ok(value)
            })();
            match result {
                Ok(v) => return Ok(v),
                Err(InboxError::Pg(e)) if attempt + 1 < MAX_ATTEMPTS && retryable(&e) => {
                    attempt += 1;
                    std::thread::sleep(std::time::Duration::from_millis(fastrand::u64(1..=10 * attempt as u64)));
                }
                Err(e) => return Err(to_store(e)),
            }
        }
    })
    .await
    .map_err(|e| StoreError::unavailable(format!("an inbox transaction failed: {e}")))?
}

fn prune(rows: &mut PgRows<'_, '_>, now: u64, limits: &crate::store::StoreLimits) -> Result<Vec<InboxChange>> {
    let op_cut = to_i(now.saturating_sub(limits.inbox_op_window.as_millis() as u64));
    rows.rt.block_on(rows.tx.execute("DELETE FROM inbox_ops WHERE at < $1", &[&op_cut]))?;
    let cut = to_i(now.saturating_sub(limits.inbox_retention.as_millis() as u64));
    let mut old: BTreeMap<i64, Vec<ItemRow>> = BTreeMap::new();
    let sql =
        format!("SELECT uid, {ITEM_COLUMNS} FROM inbox_items WHERE inserted_at < $1 ORDER BY inserted_at LIMIT $2");
    for row in rows.rt.block_on(rows.tx.query(&sql, &[&cut, &(PRUNE_BATCH as i64)]))? {
        old.entry(row.get(0)).or_default().push(item_row(&row, 1));
    }
    let mut changes = Vec::new();
    for (uid, mut items) in old {
        let user = rows.rt.block_on(rows.tx.query_opt("SELECT usr FROM inbox_users WHERE uid = $1", &[&uid]))?;
        let Some(user) = user else { continue };
        let user: String = user.get(0);
        // Locks the user (as every change does) and rereads the items under the lock.
        let Some(row) = rows.user(&user)? else { continue };
        items.retain(|i| i.inserted_at < to_u(cut));
        let mut current = Vec::new();
        for item in items {
            if let Some(now_item) = rows.item_by_id(&row, &item.id)? {
                current.push(now_item);
            }
        }
        current.sort_by_key(|i| i.seq);
        changes.extend(inbox::prune_user(rows, &user, &current)?);
    }
    Ok(changes)
}

fn envelope(text: &str) -> Result<Notification> {
    decode_notification(text).map_err(|e| InboxError::Corrupt(format!("inbox envelope: {e}")))
}

impl InboxStore for PostgresStore {
    fn add(&self, batch: Vec<InboxAdd>) -> BoxFuture<'_, std::result::Result<Vec<InboxChange>, StoreError>> {
        let limits = self.inner.limits.clone();
        Box::pin(with_rows(&self.inner, false, move |rows| {
            let mut changes: BTreeMap<String, Pending> = BTreeMap::new();
            for add in &batch {
                inbox::add(rows, add, &limits, &mut changes)?;
            }
            Ok(changes.into_values().filter_map(Pending::into_change).collect())
        }))
    }

    fn change<'a>(
        &'a self,
        user: &'a str,
        request: ChangeRequest,
    ) -> BoxFuture<'a, std::result::Result<InboxChange, StoreError>> {
        let user = user.to_owned();
        Box::pin(with_rows(&self.inner, false, move |rows| inbox::change(rows, &user, &request)))
    }

    fn list<'a>(
        &'a self,
        user: &'a str,
        query: InboxQuery,
    ) -> BoxFuture<'a, std::result::Result<InboxPage, StoreError>> {
        let user = user.to_owned();
        Box::pin(with_rows(&self.inner, true, move |rows| {
            let sql = format!("SELECT {USER_COLUMNS} FROM inbox_users WHERE usr = $1");
            let row = rows.rt.block_on(rows.tx.query_opt(&sql, &[&user]))?.as_ref().map(user_row);
            let key = row.as_ref().map_or(0, |r| r.key);
            let select = format!(
                "SELECT {ITEM_COLUMNS}, envelope FROM inbox_items WHERE uid = $1 AND seq < $2 \
                 AND ($3::text IS NULL OR kind = $3) AND ($4::text IS NULL OR topic = $4) ORDER BY seq DESC LIMIT $5"
            );
            inbox::page(row.as_ref(), &query, |before, n| {
                let before = before.map_or(i64::MAX, to_i);
                let found = rows
                    .rt
                    .block_on(rows.tx.query(&select, &[&key, &before, &query.kind, &query.topic, &(n as i64)]))?;
                found.iter().map(|r| Ok((item_row(r, 0), envelope(r.get(9))?))).collect()
            })
        }))
    }

    fn counts<'a>(&'a self, user: &'a str) -> BoxFuture<'a, std::result::Result<InboxCounts, StoreError>> {
        Box::pin(async move {
            let client = self.inner.client().await?;
            let sql = format!("SELECT {USER_COLUMNS} FROM inbox_users WHERE usr = $1");
            let row = client.query_opt(&sql, &[&user]).await.map_err(|e| classify(&e))?;
            Ok(row.as_ref().map(user_row).map(|r| r.counts).unwrap_or_default())
        })
    }

    fn follow<'a>(
        &'a self,
        user: &'a str,
        topic: &'a str,
        follow: bool,
    ) -> BoxFuture<'a, std::result::Result<bool, StoreError>> {
        Box::pin(async move {
            let client = self.inner.client().await?;
            let at = to_i(self.inner.now());
            let changed = if follow {
                client
                    .execute(
                        "INSERT INTO inbox_follows (topic, usr, since) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                        &[&topic, &user, &at],
                    )
                    .await
            } else {
                client.execute("DELETE FROM inbox_follows WHERE topic = $1 AND usr = $2", &[&topic, &user]).await
            };
            Ok(changed.map_err(|e| classify(&e))? > 0)
        })
    }

    fn following<'a>(&'a self, user: &'a str) -> BoxFuture<'a, std::result::Result<Vec<String>, StoreError>> {
        Box::pin(async move {
            let client = self.inner.client().await?;
            let rows = client
                .query("SELECT topic FROM inbox_follows WHERE usr = $1 ORDER BY topic", &[&user])
                .await
                .map_err(|e| classify(&e))?;
            Ok(rows.iter().map(|r| r.get(0)).collect())
        })
    }

    fn prune(&self, now: u64) -> BoxFuture<'_, std::result::Result<Vec<InboxChange>, StoreError>> {
        let limits = self.inner.limits.clone();
        Box::pin(with_rows(&self.inner, false, move |rows| prune(rows, now, &limits)))
    }
}
