//! The inbox: each user's notification center (protocol §13). The interface ([`InboxStore`]), the rules every
//! backend follows (written once here, over [`Rows`]), and the in-memory backend ([`MemoryInbox`]).
//!
//! # Model
//! - An **item** is a notification in one user's inbox, with a per-user `seq` (grows with every item added, never
//!   reused: pages and "mark all" are bounded by it) and three engagement timestamps: `seen_at`, `read_at`,
//!   `archived_at`. A read item is also seen.
//! - The **counts** `{unseen, unread, total}` count the items that are not archived; they live in the user's row
//!   with the inbox's `version` (one more with every change) and its `head` (the newest `seq`), and every change
//!   updates them in the same transaction as the items.
//! - **Mark all** (read or seen, up to a `seq`) writes no item: it appends a *mark* `(up_to, at, version)` to the
//!   user's row. An item is read when its own state says so, or when a mark covers it (`seq ≤ up_to`) that was
//!   made after the item's own last read/unread change (`version` greater than the item's `read_v`); its `read_at`
//!   is then the first such mark's time. So "mark all read" costs one row whatever the inbox holds, and an item
//!   marked unread afterwards stays unread. The new counts are recounted from the items above the cursor (those
//!   that arrived during the call), not from the ones below it. A "mark all" with a cursor *below* the newest
//!   mark's (a device that had not seen the newest items) marks the few items that are unread below it one by one:
//!   those are exactly the items marked unread since the newest mark.
//! - Changes carry an optional **op id**; a change sent again with the same op id (an SDK resending its offline
//!   queue after a lost reply) is applied once and answered `duplicate` with the current counts.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use tidings_core::protocol::{
    ArchivedFilter, InboxAction, InboxCounts, InboxItem, InboxMark, InboxPage, InboxQuery, InboxUpdate, MarkAllAction,
    Notification, StatusFilter,
};

use super::{BoxFuture, StoreError, StoreLimits, ready};

/// Most marks of one kind kept per user; beyond it the two oldest are merged (their items stay read; those
/// between them report the older mark's time).
pub(crate) const MAX_MARKS: usize = 64;
/// Most op ids remembered per user (the oldest are forgotten first), besides [`StoreLimits::inbox_op_window`].
pub(crate) const MAX_OPS_PER_USER: usize = 1024;
/// Items removed by retention per [`InboxStore::prune`] call at most (the rest at the next call).
pub(crate) const PRUNE_BATCH: usize = 5_000;

/// One notification to add to inboxes: to the user of every `user:` stream it was committed to, and to every
/// follower of every `topic:` stream it was committed to (once per user, the user stream's copy first).
#[derive(Clone, Debug)]
pub struct InboxAdd {
    /// The notification as committed to each of its streams (`stream`, `epoch`, `offset` set), in the order of the
    /// publish's streams.
    pub copies: Vec<Notification>,
    /// When it is added (ms since the Unix epoch).
    pub at: u64,
}

/// A change a user (or the operator on their behalf) asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChangeRequest {
    /// Idempotency key (see the module documentation); `None`: none.
    pub op_id: Option<String>,
    /// When it is applied (ms since the Unix epoch): the time written into the items.
    pub at: u64,
    /// What to change.
    pub kind: ChangeKind,
}

/// What a [`ChangeRequest`] changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    /// One action on each of these items (by notification id).
    Mark {
        /// The action.
        action: InboxAction,
        /// The items.
        ids: Vec<String>,
    },
    /// Every item up to `up_to` (the newest item when `None`, or when above it) becomes read (and seen), or seen.
    MarkAll {
        /// Read or seen.
        action: MarkAllAction,
        /// The cursor.
        up_to: Option<u64>,
    },
}

/// What changed in one user's inbox, or (for a request that changed nothing) its current counts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InboxChange {
    /// The user.
    pub user: String,
    /// Counts after the change, the items changed (added ones with their notification, changed ones without),
    /// the items removed, the mark applied, whether it was a duplicate. `reference` is `None`.
    pub update: InboxUpdate,
    /// Ids of a [`ChangeKind::Mark`] that are not in the inbox.
    pub unknown: Vec<String>,
}

impl InboxChange {
    /// Whether the inbox changed (a new version): then every device of the user is told.
    pub fn changed(&self) -> bool {
        !self.update.duplicate
            && (!self.update.items.is_empty() || !self.update.removed.is_empty() || self.update.mark.is_some())
    }
}

/// The inbox of every user: items, their state, the counts, topic follows.
///
/// Every method that changes an inbox updates its counts and version in the same commit as its items, and
/// returns the counts after it.
pub trait InboxStore: Send + Sync + 'static {
    /// Adds each notification of `batch` to the inboxes it goes to (see [`InboxAdd`]). A notification already in
    /// an inbox (the same id) is not added again. Returns what changed, one entry per user whose inbox changed.
    /// When a user's inbox outgrows the item limit, its oldest items are removed in the same commit.
    fn add(&self, batch: Vec<InboxAdd>) -> BoxFuture<'_, Result<Vec<InboxChange>, StoreError>>;

    /// Applies `request` to `user`'s inbox.
    fn change<'a>(&'a self, user: &'a str, request: ChangeRequest) -> BoxFuture<'a, Result<InboxChange, StoreError>>;

    /// A page of `user`'s inbox, newest first (`reference` is `0`).
    fn list<'a>(&'a self, user: &'a str, query: InboxQuery) -> BoxFuture<'a, Result<InboxPage, StoreError>>;

    /// The counts of `user`'s inbox.
    fn counts<'a>(&'a self, user: &'a str) -> BoxFuture<'a, Result<InboxCounts, StoreError>>;

    /// Makes `user` follow `topic` (or stop following it): from now on, persistent notifications published to
    /// `topic:<topic>` become items of the user's inbox. Returns whether anything changed.
    fn follow<'a>(&'a self, user: &'a str, topic: &'a str, follow: bool) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// The topics `user` follows, sorted.
    fn following<'a>(&'a self, user: &'a str) -> BoxFuture<'a, Result<Vec<String>, StoreError>>;

    /// Removes items older than the retention (at most [`PRUNE_BATCH`] per call) and forgets expired op ids, as of
    /// `now`. Returns what changed per user.
    fn prune(&self, now: u64) -> BoxFuture<'_, Result<Vec<InboxChange>, StoreError>>;
}

// ---- the rules ----

/// Which engagement state a mark or an exception is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Read,
    Seen,
}

/// One "mark all": items with `seq ≤ up_to` changed at `at`, in inbox version `v`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Mark {
    pub(crate) up_to: u64,
    pub(crate) at: u64,
    pub(crate) v: u64,
}

/// Encodes marks as `up_to:at:v` joined by `,` (the SQLite store keeps them in one column).
pub(crate) fn encode_marks(marks: &[Mark]) -> String {
    marks.iter().map(|m| format!("{}:{}:{}", m.up_to, m.at, m.v)).collect::<Vec<_>>().join(",")
}

/// Decodes [`encode_marks`]; malformed entries are skipped.
pub(crate) fn decode_marks(text: &str) -> Vec<Mark> {
    text.split(',')
        .filter_map(|m| {
            let mut parts = m.split(':').map(|p| p.parse::<u64>().ok());
            Some(Mark { up_to: parts.next()??, at: parts.next()??, v: parts.next()?? })
        })
        .collect()
}

/// A user's inbox row: counts, version, head, item count and marks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct UserRow {
    /// The backend's key of the user (SQLite: its row id).
    pub(crate) key: i64,
    pub(crate) user: String,
    pub(crate) counts: InboxCounts,
    /// Items held, archived ones included.
    pub(crate) items: u64,
    pub(crate) read_marks: Vec<Mark>,
    pub(crate) seen_marks: Vec<Mark>,
}

impl UserRow {
    fn marks(&self, kind: Kind) -> &[Mark] {
        match kind {
            Kind::Read => &self.read_marks,
            Kind::Seen => &self.seen_marks,
        }
    }

    fn marks_mut(&mut self, kind: Kind) -> &mut Vec<Mark> {
        match kind {
            Kind::Read => &mut self.read_marks,
            Kind::Seen => &mut self.seen_marks,
        }
    }

    /// The state of `item` as the marks make it.
    pub(crate) fn effective(&self, item: &ItemRow) -> Effective {
        let mut v = item.v;
        let mut resolve = |explicit: Option<u64>, explicit_v: u64, marks: &[Mark]| match explicit {
            Some(at) => Some(at),
            None => marks.iter().find(|m| m.up_to >= item.seq && m.v > explicit_v).map(|m| {
                v = v.max(m.v);
                m.at
            }),
        };
        let read_at = resolve(item.read_at, item.read_v, &self.read_marks);
        let seen_at = resolve(item.seen_at, item.seen_v, &self.seen_marks);
        Effective { seen_at, read_at, archived_at: item.archived_at, v }
    }
}

/// An item's own state (what a mark does not change).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ItemRow {
    pub(crate) seq: u64,
    pub(crate) id: String,
    pub(crate) inserted_at: u64,
    /// Version of the item's last own change (its insertion at first).
    pub(crate) v: u64,
    pub(crate) seen_at: Option<u64>,
    /// Version of the last own seen/unseen change (`0`: none).
    pub(crate) seen_v: u64,
    pub(crate) read_at: Option<u64>,
    /// Version of the last own read/unread change (`0`: none).
    pub(crate) read_v: u64,
    pub(crate) archived_at: Option<u64>,
}

/// An item's state with the marks applied: what clients see.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Effective {
    pub(crate) seen_at: Option<u64>,
    pub(crate) read_at: Option<u64>,
    pub(crate) archived_at: Option<u64>,
    /// The version of the item's last change, marks included.
    pub(crate) v: u64,
}

impl Effective {
    /// What the item adds to `(unseen, unread, total)`.
    fn contribution(&self) -> [u64; 3] {
        if self.archived_at.is_some() {
            return [0; 3];
        }
        [u64::from(self.seen_at.is_none()), u64::from(self.read_at.is_none()), 1]
    }

    /// Whether the item passes the status and archive filters of a page.
    pub(crate) fn passes(&self, status: StatusFilter, archived: ArchivedFilter) -> bool {
        let archive_ok = match archived {
            ArchivedFilter::Exclude => self.archived_at.is_none(),
            ArchivedFilter::Include => true,
            ArchivedFilter::Only => self.archived_at.is_some(),
        };
        archive_ok
            && match status {
                StatusFilter::All => true,
                StatusFilter::Unread => self.read_at.is_none(),
                StatusFilter::Read => self.read_at.is_some(),
                StatusFilter::Unseen => self.seen_at.is_none(),
                StatusFilter::Seen => self.seen_at.is_some(),
            }
    }

    /// The wire item.
    pub(crate) fn item(&self, row: &ItemRow, notification: Option<Notification>) -> InboxItem {
        InboxItem {
            id: row.id.clone(),
            seq: row.seq,
            version: self.v,
            inserted_at: row.inserted_at,
            seen_at: self.seen_at,
            read_at: self.read_at,
            archived_at: self.archived_at,
            notification,
        }
    }
}

fn apply_contribution(counts: &mut InboxCounts, before: [u64; 3], after: [u64; 3]) {
    let apply = |c: &mut u64, b: u64, a: u64| *c = (*c + a).saturating_sub(b);
    apply(&mut counts.unseen, before[0], after[0]);
    apply(&mut counts.unread, before[1], after[1]);
    apply(&mut counts.total, before[2], after[2]);
}

/// The topic an item came from: `news` for `topic:news`, none for a user stream.
pub(crate) fn topic_of(stream: &str) -> Option<&str> {
    stream.strip_prefix("topic:")
}

/// The version a new inbox starts from: the time in microseconds (ms × 1000). An inbox the server lost and started
/// again (a restart on the memory store, a lost database) then has versions above any the clients saw of the old
/// one, and clients — which keep only newer counts — take its counts instead of ignoring them.
pub(crate) fn first_version(now_ms: u64) -> u64 {
    now_ms.saturating_mul(1000)
}

/// The reads and writes the rules need, inside one transaction (SQLite) or under one lock (memory).
pub(crate) trait Rows {
    type Error;
    /// The user's row, if the user has an inbox.
    fn user(&mut self, user: &str) -> Result<Option<UserRow>, Self::Error>;
    /// Creates an empty inbox row for `user` (head 0, version [`first_version`]) and returns it.
    fn create_user(&mut self, user: &str) -> Result<UserRow, Self::Error>;
    /// Writes the row's counts, item count and marks.
    fn put_user(&mut self, row: &UserRow) -> Result<(), Self::Error>;
    /// The item with notification id `id`.
    fn item_by_id(&mut self, user: &UserRow, id: &str) -> Result<Option<ItemRow>, Self::Error>;
    /// Whether `user` has an item with notification id `id`.
    fn has_id(&mut self, user: &UserRow, id: &str) -> Result<bool, Self::Error>;
    /// Inserts a new item.
    fn insert_item(&mut self, user: &UserRow, item: &ItemRow, notification: &Notification) -> Result<(), Self::Error>;
    /// Writes an item's own state (`v`, seen, read, archived).
    fn put_item(&mut self, user: &UserRow, item: &ItemRow) -> Result<(), Self::Error>;
    /// Deletes the item at `seq`.
    fn delete_item(&mut self, user: &UserRow, seq: u64) -> Result<(), Self::Error>;
    /// The `n` oldest items.
    fn oldest(&mut self, user: &UserRow, n: usize) -> Result<Vec<ItemRow>, Self::Error>;
    /// The items with `seq > after`.
    fn above(&mut self, user: &UserRow, after: u64) -> Result<Vec<ItemRow>, Self::Error>;
    /// The items with `seq ≤ up_to` whose own state says *not* `kind` since a change in a version above `after_v`.
    fn exceptions(&mut self, user: &UserRow, kind: Kind, after_v: u64, up_to: u64)
    -> Result<Vec<ItemRow>, Self::Error>;
    /// Whether `op_id` was applied to `user`'s inbox within the op window.
    fn op_seen(&mut self, user: &UserRow, op_id: &str) -> Result<bool, Self::Error>;
    /// Remembers that `op_id` was applied at `at`.
    fn record_op(&mut self, user: &UserRow, op_id: &str, at: u64) -> Result<(), Self::Error>;
    /// The users following `topic`.
    fn followers(&mut self, topic: &str) -> Result<Vec<String>, Self::Error>;
}

/// A user's inbox during an [`add`] batch.
pub(crate) struct Pending {
    row: UserRow,
    change: InboxChange,
    /// Whether the batch moved the version already (one version per user and batch).
    bumped: bool,
}

impl Pending {
    /// What changed, if anything.
    pub(crate) fn into_change(self) -> Option<InboxChange> {
        self.bumped.then_some(self.change)
    }
}

/// Adds one notification to every inbox it goes to; what changed is merged into `changes` (one entry per user).
pub(crate) fn add<R: Rows>(
    rows: &mut R,
    add: &InboxAdd,
    limits: &StoreLimits,
    changes: &mut BTreeMap<String, Pending>,
) -> Result<(), R::Error> {
    let mut placed: HashSet<String> = HashSet::new();
    for copy in &add.copies {
        let stream = copy.stream();
        let users = match stream.strip_prefix("user:") {
            Some(user) => vec![user.to_owned()],
            None => match topic_of(stream) {
                Some(topic) => rows.followers(topic)?,
                None => continue,
            },
        };
        for user in users {
            if !placed.insert(user.clone()) {
                continue;
            }
            add_to(rows, &user, copy, add.at, limits, changes)?;
        }
    }
    Ok(())
}

fn add_to<R: Rows>(
    rows: &mut R,
    user: &str,
    notification: &Notification,
    at: u64,
    limits: &StoreLimits,
    changes: &mut BTreeMap<String, Pending>,
) -> Result<(), R::Error> {
    if !changes.contains_key(user) {
        let row = match rows.user(user)? {
            Some(row) => row,
            None => rows.create_user(user)?,
        };
        let change = InboxChange {
            user: user.to_owned(),
            update: InboxUpdate { counts: row.counts, ..InboxUpdate::default() },
            unknown: Vec::new(),
        };
        changes.insert(user.to_owned(), Pending { row, change, bumped: false });
    }
    let Pending { row, change, bumped } = changes.get_mut(user).expect("inserted above");
    if rows.has_id(row, notification.id())? {
        return Ok(());
    }
    if !*bumped {
        row.counts.version += 1;
        *bumped = true;
    }
    let version = row.counts.version;
    row.counts.head += 1;
    let item = ItemRow {
        seq: row.counts.head,
        id: notification.id().to_owned(),
        inserted_at: at,
        v: version,
        ..ItemRow::default()
    };
    rows.insert_item(row, &item, notification)?;
    row.items += 1;
    let effective = row.effective(&item);
    apply_contribution(&mut row.counts, [0; 3], effective.contribution());
    change.update.items.push(effective.item(&item, Some(notification.clone())));
    let max = limits.inbox_max_items.max(1) as u64;
    if row.items > max {
        let excess = (row.items - max) as usize;
        for old in rows.oldest(row, excess)? {
            remove(rows, row, &old)?;
            match change.update.items.iter().position(|i| i.id == old.id) {
                Some(i) => {
                    change.update.items.remove(i);
                }
                None => change.update.removed.push(old.id.clone()),
            }
        }
    }
    rows.put_user(row)?;
    change.update.counts = row.counts;
    Ok(())
}

/// Removes one item, adjusting the counts (not the version).
fn remove<R: Rows>(rows: &mut R, row: &mut UserRow, item: &ItemRow) -> Result<(), R::Error> {
    let before = row.effective(item).contribution();
    rows.delete_item(row, item.seq)?;
    row.items = row.items.saturating_sub(1);
    apply_contribution(&mut row.counts, before, [0; 3]);
    Ok(())
}

/// Applies a change request to `user`'s inbox.
pub(crate) fn change<R: Rows>(rows: &mut R, user: &str, request: &ChangeRequest) -> Result<InboxChange, R::Error> {
    let mut row = match rows.user(user)? {
        Some(row) => row,
        None => rows.create_user(user)?,
    };
    let mut out = InboxChange {
        user: user.to_owned(),
        update: InboxUpdate { counts: row.counts, ..InboxUpdate::default() },
        unknown: Vec::new(),
    };
    if let Some(op_id) = request.op_id.as_deref() {
        if rows.op_seen(&row, op_id)? {
            out.update.duplicate = true;
            return Ok(out);
        }
        rows.record_op(&row, op_id, request.at)?;
    }
    let version = row.counts.version + 1;
    let at = request.at;
    match &request.kind {
        ChangeKind::Mark { action, ids } => {
            let mut seen_ids = HashSet::new();
            for id in ids {
                if !seen_ids.insert(id.as_str()) {
                    continue;
                }
                let Some(mut item) = rows.item_by_id(&row, id)? else {
                    out.unknown.push(id.clone());
                    continue;
                };
                let before = row.effective(&item);
                if !transition(&mut item, &before, *action, at, version) {
                    continue;
                }
                rows.put_item(&row, &item)?;
                let after = row.effective(&item);
                apply_contribution(&mut row.counts, before.contribution(), after.contribution());
                out.update.items.push(after.item(&item, None));
            }
            if !out.update.items.is_empty() {
                row.counts.version = version;
                rows.put_user(&row)?;
            }
        }
        ChangeKind::MarkAll { action, up_to } => {
            let head = row.counts.head;
            let up_to = up_to.map_or(head, |u| u.min(head));
            if up_to == 0 {
                // Nothing to mark.
                out.update.counts = row.counts;
                return Ok(out);
            }
            let kinds: &[Kind] = match action {
                MarkAllAction::Read => &[Kind::Read, Kind::Seen],
                MarkAllAction::Seen => &[Kind::Seen],
            };
            let mut forward = Vec::new();
            for &kind in kinds {
                let last = row.marks(kind).last().copied();
                match last {
                    Some(last) if up_to <= last.up_to => {
                        // Below the newest mark: only the items marked "not kind" since it are not already.
                        for mut item in rows.exceptions(&row, kind, last.v, up_to)? {
                            let before = row.effective(&item);
                            let state = match kind {
                                Kind::Read => &mut item.read_at,
                                Kind::Seen => &mut item.seen_at,
                            };
                            if state.is_some() {
                                continue;
                            }
                            *state = Some(at);
                            match kind {
                                Kind::Read => item.read_v = version,
                                Kind::Seen => item.seen_v = version,
                            }
                            item.v = version;
                            rows.put_item(&row, &item)?;
                            let after = row.effective(&item);
                            apply_contribution(&mut row.counts, before.contribution(), after.contribution());
                        }
                    }
                    _ => {
                        let marks = row.marks_mut(kind);
                        marks.push(Mark { up_to, at, v: version });
                        if marks.len() > MAX_MARKS {
                            let merged = Mark { up_to: marks[1].up_to, at: marks[0].at, v: marks[1].v };
                            marks.splice(0..2, [merged]);
                        }
                        forward.push(kind);
                    }
                }
            }
            if !forward.is_empty() {
                // Everything up to the cursor is now `kind`: recount from the items above it.
                let mut unseen = 0;
                let mut unread = 0;
                for item in rows.above(&row, up_to)? {
                    let [s, r, _] = row.effective(&item).contribution();
                    unseen += s;
                    unread += r;
                }
                for kind in forward {
                    match kind {
                        Kind::Read => row.counts.unread = unread,
                        Kind::Seen => row.counts.unseen = unseen,
                    }
                }
            }
            row.counts.version = version;
            rows.put_user(&row)?;
            let action = *action;
            out.update.mark = Some(InboxMark { action, up_to, at, version });
        }
    }
    out.update.counts = row.counts;
    Ok(out)
}

/// Applies `action` to `item` whose current state is `now_state`; returns whether it changed.
pub(crate) fn transition(
    item: &mut ItemRow,
    now_state: &Effective,
    action: InboxAction,
    at: u64,
    version: u64,
) -> bool {
    let mut changed = false;
    let set_read = |item: &mut ItemRow, value: Option<u64>| {
        item.read_at = value;
        item.read_v = version;
    };
    match action {
        InboxAction::Read => {
            if now_state.read_at.is_none() {
                set_read(item, Some(at));
                changed = true;
            }
            if now_state.seen_at.is_none() {
                item.seen_at = Some(at);
                item.seen_v = version;
                changed = true;
            }
        }
        InboxAction::Unread => {
            if now_state.read_at.is_some() {
                set_read(item, None);
                changed = true;
            }
        }
        InboxAction::Seen => {
            if now_state.seen_at.is_none() {
                item.seen_at = Some(at);
                item.seen_v = version;
                changed = true;
            }
        }
        InboxAction::Unseen => {
            if now_state.seen_at.is_some() {
                item.seen_at = None;
                item.seen_v = version;
                changed = true;
            }
            if now_state.read_at.is_some() {
                set_read(item, None);
                changed = true;
            }
        }
        InboxAction::Archive => {
            if now_state.archived_at.is_none() {
                item.archived_at = Some(at);
                changed = true;
            }
        }
        InboxAction::Unarchive => {
            if now_state.archived_at.is_some() {
                item.archived_at = None;
                changed = true;
            }
        }
    }
    if changed {
        item.v = version;
    }
    changed
}

/// Removes `items` (older than the retention) from `user`'s inbox, with one new version; marks that cover no
/// item any more are dropped.
pub(crate) fn prune_user<R: Rows>(
    rows: &mut R,
    user: &str,
    items: &[ItemRow],
) -> Result<Option<InboxChange>, R::Error> {
    let Some(mut row) = rows.user(user)? else { return Ok(None) };
    let mut removed = Vec::with_capacity(items.len());
    for item in items {
        remove(rows, &mut row, item)?;
        removed.push(item.id.clone());
    }
    if removed.is_empty() {
        return Ok(None);
    }
    row.counts.version += 1;
    if let Some(oldest) = rows.oldest(&row, 1)?.first().map(|i| i.seq) {
        for kind in [Kind::Read, Kind::Seen] {
            let marks = row.marks_mut(kind);
            // The newest mark stays: it decides whether the next "mark all" is above or below it.
            let keep_from = marks.iter().position(|m| m.up_to >= oldest).unwrap_or(marks.len().saturating_sub(1));
            marks.drain(..keep_from);
        }
    }
    rows.put_user(&row)?;
    Ok(Some(InboxChange {
        user: user.to_owned(),
        update: InboxUpdate { counts: row.counts, removed, ..InboxUpdate::default() },
        unknown: Vec::new(),
    }))
}

/// Builds a page from candidate items in `seq` order, newest first: `fetch(before, n)` returns up to `n` items
/// with `seq < before` (all when `before` is `None`) that pass the type and topic filters, with their
/// notifications.
pub(crate) fn page<E>(
    row: Option<&UserRow>,
    query: &InboxQuery,
    mut fetch: impl FnMut(Option<u64>, usize) -> Result<Vec<(ItemRow, Notification)>, E>,
) -> Result<InboxPage, E> {
    let Some(row) = row else { return Ok(InboxPage::default()) };
    let size = query.page_size();
    let mut items = Vec::with_capacity(size);
    let mut before = query.before;
    let mut more = false;
    let batch = (size * 2).max(32);
    'scan: loop {
        let candidates = fetch(before, batch)?;
        let exhausted = candidates.len() < batch;
        for (item, notification) in candidates {
            before = Some(item.seq);
            let effective = row.effective(&item);
            if !effective.passes(query.status, query.archived) {
                continue;
            }
            if items.len() == size {
                more = true;
                break 'scan;
            }
            items.push(effective.item(&item, Some(notification)));
        }
        if exhausted {
            break;
        }
    }
    let next = if more { items.last().map(|i: &InboxItem| i.seq) } else { None };
    Ok(InboxPage { reference: 0, items, next, counts: row.counts })
}

// ---- the memory backend ----

/// [`InboxStore`] in process memory (nothing survives the process).
pub struct MemoryInbox {
    limits: StoreLimits,
    clock: Arc<dyn Fn() -> u64 + Send + Sync>,
    state: Mutex<MemoryState>,
}

impl fmt::Debug for MemoryInbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryInbox").finish_non_exhaustive()
    }
}

#[derive(Default)]
struct MemoryState {
    users: HashMap<String, MemoryUser>,
    follows: HashMap<String, BTreeMap<String, ()>>,
}

struct MemoryUser {
    row: UserRow,
    items: BTreeMap<u64, (ItemRow, Notification)>,
    by_id: HashMap<String, u64>,
    /// Op ids with when they were applied, oldest first.
    ops: VecDeque<(String, u64)>,
    op_ids: HashSet<String>,
}

impl MemoryInbox {
    /// An empty inbox store with these limits, reading the time from `clock`.
    pub fn new(limits: StoreLimits, clock: Arc<dyn Fn() -> u64 + Send + Sync>) -> Self {
        MemoryInbox { limits, clock, state: Mutex::new(MemoryState::default()) }
    }

    fn lock(&self) -> MutexGuard<'_, MemoryState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// [`Rows`] over the memory state (under its lock).
struct MemoryRows<'s> {
    state: &'s mut MemoryState,
    now: u64,
    op_window_ms: u64,
}

impl MemoryRows<'_> {
    fn user_mut(&mut self, row: &UserRow) -> &mut MemoryUser {
        self.state.users.get_mut(&row.user).expect("rows are read before they are written")
    }
}

impl Rows for MemoryRows<'_> {
    type Error = Infallible;

    fn user(&mut self, user: &str) -> Result<Option<UserRow>, Infallible> {
        Ok(self.state.users.get(user).map(|u| u.row.clone()))
    }

    fn create_user(&mut self, user: &str) -> Result<UserRow, Infallible> {
        let mut row = UserRow { user: user.to_owned(), ..UserRow::default() };
        row.counts.version = first_version(self.now);
        self.state.users.insert(
            user.to_owned(),
            MemoryUser {
                row: row.clone(),
                items: BTreeMap::new(),
                by_id: HashMap::new(),
                ops: VecDeque::new(),
                op_ids: HashSet::new(),
            },
        );
        Ok(row)
    }

    fn put_user(&mut self, row: &UserRow) -> Result<(), Infallible> {
        self.user_mut(row).row = row.clone();
        Ok(())
    }

    fn item_by_id(&mut self, row: &UserRow, id: &str) -> Result<Option<ItemRow>, Infallible> {
        let u = self.user_mut(row);
        Ok(u.by_id.get(id).and_then(|seq| u.items.get(seq)).map(|(i, _)| i.clone()))
    }

    fn has_id(&mut self, row: &UserRow, id: &str) -> Result<bool, Infallible> {
        Ok(self.user_mut(row).by_id.contains_key(id))
    }

    fn insert_item(&mut self, row: &UserRow, item: &ItemRow, n: &Notification) -> Result<(), Infallible> {
        let u = self.user_mut(row);
        u.by_id.insert(item.id.clone(), item.seq);
        u.items.insert(item.seq, (item.clone(), n.clone()));
        Ok(())
    }

    fn put_item(&mut self, row: &UserRow, item: &ItemRow) -> Result<(), Infallible> {
        if let Some((held, _)) = self.user_mut(row).items.get_mut(&item.seq) {
            *held = item.clone();
        }
        Ok(())
    }

    fn delete_item(&mut self, row: &UserRow, seq: u64) -> Result<(), Infallible> {
        let u = self.user_mut(row);
        if let Some((item, _)) = u.items.remove(&seq) {
            u.by_id.remove(&item.id);
        }
        Ok(())
    }

    fn oldest(&mut self, row: &UserRow, n: usize) -> Result<Vec<ItemRow>, Infallible> {
        Ok(self.user_mut(row).items.values().take(n).map(|(i, _)| i.clone()).collect())
    }

    fn above(&mut self, row: &UserRow, after: u64) -> Result<Vec<ItemRow>, Infallible> {
        Ok(self.user_mut(row).items.range(after + 1..).map(|(_, (i, _))| i.clone()).collect())
    }

    fn exceptions(&mut self, row: &UserRow, kind: Kind, after_v: u64, up_to: u64) -> Result<Vec<ItemRow>, Infallible> {
        Ok(self
            .user_mut(row)
            .items
            .range(..=up_to)
            .map(|(_, (i, _))| i)
            .filter(|i| match kind {
                Kind::Read => i.read_at.is_none() && i.read_v > after_v,
                Kind::Seen => i.seen_at.is_none() && i.seen_v > after_v,
            })
            .cloned()
            .collect())
    }

    fn op_seen(&mut self, row: &UserRow, op_id: &str) -> Result<bool, Infallible> {
        let (now, window) = (self.now, self.op_window_ms);
        let u = self.user_mut(row);
        while let Some((old, at)) = u.ops.front() {
            if now.saturating_sub(*at) < window && u.ops.len() <= MAX_OPS_PER_USER {
                break;
            }
            u.op_ids.remove(old);
            u.ops.pop_front();
        }
        Ok(u.op_ids.contains(op_id))
    }

    fn record_op(&mut self, row: &UserRow, op_id: &str, at: u64) -> Result<(), Infallible> {
        let u = self.user_mut(row);
        u.op_ids.insert(op_id.to_owned());
        u.ops.push_back((op_id.to_owned(), at));
        Ok(())
    }

    fn followers(&mut self, topic: &str) -> Result<Vec<String>, Infallible> {
        Ok(self.state.follows.get(topic).map(|f| f.keys().cloned().collect()).unwrap_or_default())
    }
}

fn infallible<T>(r: Result<T, Infallible>) -> T {
    match r {
        Ok(v) => v,
        Err(never) => match never {},
    }
}

impl MemoryInbox {
    fn rows<'s>(&self, state: &'s mut MemoryState) -> MemoryRows<'s> {
        let op_window_ms = self.limits.inbox_op_window.as_millis() as u64;
        MemoryRows { state, now: (self.clock)(), op_window_ms }
    }
}

impl InboxStore for MemoryInbox {
    fn add(&self, batch: Vec<InboxAdd>) -> BoxFuture<'_, Result<Vec<InboxChange>, StoreError>> {
        let mut state = self.lock();
        let mut rows = self.rows(&mut state);
        let mut changes = BTreeMap::new();
        for item in &batch {
            infallible(add(&mut rows, item, &self.limits, &mut changes));
        }
        let out = changes.into_values().filter_map(Pending::into_change).collect();
        ready(Ok(out))
    }

    fn change<'a>(&'a self, user: &'a str, request: ChangeRequest) -> BoxFuture<'a, Result<InboxChange, StoreError>> {
        let mut state = self.lock();
        let mut rows = self.rows(&mut state);
        ready(Ok(infallible(change(&mut rows, user, &request))))
    }

    fn list<'a>(&'a self, user: &'a str, query: InboxQuery) -> BoxFuture<'a, Result<InboxPage, StoreError>> {
        let state = self.lock();
        let held = state.users.get(user);
        let result = page(held.map(|u| &u.row), &query, |before, n| {
            let u = held.expect("a page is only fetched for a known user");
            let range = u.items.range(..before.unwrap_or(u64::MAX));
            Ok::<_, Infallible>(
                range
                    .rev()
                    .filter(|(_, (_, n))| query.kind.as_deref().is_none_or(|k| n.kind() == k))
                    .filter(|(_, (_, n))| query.topic.as_deref().is_none_or(|t| topic_of(n.stream()) == Some(t)))
                    .take(n)
                    .map(|(_, (i, n))| (i.clone(), n.clone()))
                    .collect(),
            )
        });
        ready(Ok(infallible(result)))
    }

    fn counts<'a>(&'a self, user: &'a str) -> BoxFuture<'a, Result<InboxCounts, StoreError>> {
        ready(Ok(self.lock().users.get(user).map(|u| u.row.counts).unwrap_or_default()))
    }

    fn follow<'a>(&'a self, user: &'a str, topic: &'a str, follow: bool) -> BoxFuture<'a, Result<bool, StoreError>> {
        let mut state = self.lock();
        let changed = if follow {
            state.follows.entry(topic.to_owned()).or_default().insert(user.to_owned(), ()).is_none()
        } else {
            let removed = state.follows.get_mut(topic).is_some_and(|f| f.remove(user).is_some());
            if state.follows.get(topic).is_some_and(BTreeMap::is_empty) {
                state.follows.remove(topic);
            }
            removed
        };
        ready(Ok(changed))
    }

    fn following<'a>(&'a self, user: &'a str) -> BoxFuture<'a, Result<Vec<String>, StoreError>> {
        let state = self.lock();
        let mut topics: Vec<String> =
            state.follows.iter().filter(|(_, f)| f.contains_key(user)).map(|(t, _)| t.clone()).collect();
        topics.sort();
        ready(Ok(topics))
    }

    fn prune(&self, now: u64) -> BoxFuture<'_, Result<Vec<InboxChange>, StoreError>> {
        let cut = now.saturating_sub(self.limits.inbox_retention.as_millis() as u64);
        let mut state = self.lock();
        let mut old: Vec<(String, Vec<ItemRow>)> = Vec::new();
        let mut budget = PRUNE_BATCH;
        for (user, u) in &state.users {
            if budget == 0 {
                break;
            }
            let items: Vec<ItemRow> =
                u.items.values().map(|(i, _)| i).take_while(|i| i.inserted_at < cut).take(budget).cloned().collect();
            budget -= items.len();
            if !items.is_empty() {
                old.push((user.clone(), items));
            }
        }
        let mut rows = self.rows(&mut state);
        let changes = old.iter().filter_map(|(user, items)| infallible(prune_user(&mut rows, user, items))).collect();
        ready(Ok(changes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_round_trip_through_their_text_form() {
        let marks = vec![Mark { up_to: 5, at: 100, v: 7 }, Mark { up_to: 9, at: 200, v: 12 }];
        assert_eq!(encode_marks(&marks), "5:100:7,9:200:12");
        assert_eq!(decode_marks(&encode_marks(&marks)), marks);
        assert_eq!(decode_marks(""), []);
    }

    fn item(seq: u64) -> ItemRow {
        ItemRow { seq, id: format!("n{seq}"), inserted_at: 1, v: seq, ..ItemRow::default() }
    }

    #[test]
    fn a_mark_reads_the_items_it_covers_unless_they_changed_after_it() {
        let row = UserRow { read_marks: vec![Mark { up_to: 5, at: 100, v: 10 }], ..UserRow::default() };
        assert_eq!(row.effective(&item(3)).read_at, Some(100));
        assert_eq!(row.effective(&item(3)).v, 10, "the mark changed it");
        assert_eq!(row.effective(&item(6)).read_at, None, "above the cursor");
        let unread_after = ItemRow { read_v: 11, v: 11, ..item(3) };
        assert_eq!(row.effective(&unread_after).read_at, None, "marked unread after the mark");
        let read_before = ItemRow { read_at: Some(50), read_v: 4, ..item(3) };
        assert_eq!(row.effective(&read_before).read_at, Some(50), "read before keeps its time");
        assert_eq!(row.effective(&read_before).v, 3);
    }

    #[test]
    fn read_implies_seen_and_unseen_clears_both() {
        let none = Effective { seen_at: None, read_at: None, archived_at: None, v: 1 };
        let mut i = item(1);
        assert!(transition(&mut i, &none, InboxAction::Read, 7, 2));
        assert_eq!((i.seen_at, i.read_at, i.v), (Some(7), Some(7), 2));
        let read = Effective { seen_at: Some(7), read_at: Some(7), archived_at: None, v: 2 };
        assert!(!transition(&mut i.clone(), &read, InboxAction::Read, 8, 3), "already read");
        assert!(transition(&mut i, &read, InboxAction::Unseen, 9, 3));
        assert_eq!((i.seen_at, i.read_at, i.seen_v, i.read_v), (None, None, 3, 3));
    }
}
