//! The inbox (protocol §13) and stream history (§14) across the FFI: value types and the client's methods. The
//! behaviour — newer-only counts, the view of loaded items, offline changes queued with op ids — is the core's
//! (`tidings_core::engine::inbox`); this module converts.

use tidings_core::engine as core;
use tidings_core::native::ClientError;
use tidings_core::protocol as proto;

use crate::TidingsError;
use crate::client::TidingsClient;
use crate::types::Notification;

/// The server's counts of the user's inbox. `unread` is the badge.
#[derive(Clone, Copy, Debug, PartialEq, Eq, uniffi::Record)]
pub struct InboxCounts {
    /// Items not archived and not seen.
    pub unseen: u64,
    /// Items not archived and not read: the badge.
    pub unread: u64,
    /// Items not archived.
    pub total: u64,
    /// Grows with every change of the inbox; the client keeps only newer counts.
    pub version: u64,
    /// The newest item's `seq`.
    pub head: u64,
}

impl From<proto::InboxCounts> for InboxCounts {
    fn from(c: proto::InboxCounts) -> Self {
        InboxCounts { unseen: c.unseen, unread: c.unread, total: c.total, version: c.version, head: c.head }
    }
}

/// One item of the inbox.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct InboxItem {
    /// The notification id.
    pub id: String,
    /// Position in the inbox (grows with every item added).
    pub seq: u64,
    /// The inbox version of the item's last change.
    pub version: u64,
    /// When it was added (ms since the Unix epoch).
    pub inserted_at: u64,
    /// When it was first seen; `None`: unseen.
    pub seen_at: Option<u64>,
    /// When it was read; `None`: unread.
    pub read_at: Option<u64>,
    /// When it was archived; `None`: not archived.
    pub archived_at: Option<u64>,
    /// The notification (absent in the items of a change).
    pub notification: Option<Notification>,
}

impl From<proto::InboxItem> for InboxItem {
    fn from(i: proto::InboxItem) -> Self {
        InboxItem {
            id: i.id,
            seq: i.seq,
            version: i.version,
            inserted_at: i.inserted_at,
            seen_at: i.seen_at,
            read_at: i.read_at,
            archived_at: i.archived_at,
            notification: i.notification.map(Into::into),
        }
    }
}

/// A page of the inbox, newest first.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct InboxPage {
    /// The items.
    pub items: Vec<InboxItem>,
    /// `before` of the next page; `None`: no more.
    pub next: Option<u64>,
    /// The counts when the page was read.
    pub counts: InboxCounts,
}

impl From<proto::InboxPage> for InboxPage {
    fn from(p: proto::InboxPage) -> Self {
        InboxPage { items: p.items.into_iter().map(Into::into).collect(), next: p.next, counts: p.counts.into() }
    }
}

/// The inbox after a change.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct InboxChangeResult {
    /// The counts after the change.
    pub counts: InboxCounts,
    /// The items it changed, in their new state.
    pub items: Vec<InboxItem>,
    /// The change had been applied before (sent again after a lost answer): nothing changed now.
    pub duplicate: bool,
    /// Ids that are not in the inbox.
    pub unknown: Vec<String>,
}

impl From<proto::InboxUpdate> for InboxChangeResult {
    fn from(u: proto::InboxUpdate) -> Self {
        InboxChangeResult {
            counts: u.counts.into(),
            items: u.items.into_iter().map(Into::into).collect(),
            duplicate: u.duplicate,
            unknown: u.unknown,
        }
    }
}

/// A page of a stream's stored history, oldest first.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct HistoryPage {
    /// The stream.
    pub stream: String,
    /// Its current epoch (the offsets are this epoch's).
    pub epoch: String,
    /// Its newest offset.
    pub head: u64,
    /// The oldest offset stored.
    pub oldest: u64,
    /// The notifications.
    pub items: Vec<Notification>,
    /// `after_offset` of the next page; `None`: this page reaches the head.
    pub next: Option<u64>,
}

impl From<proto::HistoryPage> for HistoryPage {
    fn from(p: proto::HistoryPage) -> Self {
        HistoryPage {
            stream: p.stream,
            epoch: p.epoch,
            head: p.head,
            oldest: p.oldest,
            items: p.items.into_iter().map(Into::into).collect(),
            next: p.next,
        }
    }
}

/// What to do with inbox items.
#[derive(Clone, Copy, Debug, PartialEq, Eq, uniffi::Enum)]
pub enum InboxAction {
    /// Read (and seen).
    Read,
    /// Unread (stays seen).
    Unread,
    /// Seen.
    Seen,
    /// Unseen (and unread).
    Unseen,
    /// Archived: leaves the counts and the default pages.
    Archive,
    /// Back from the archive.
    Unarchive,
}

impl From<InboxAction> for proto::InboxAction {
    fn from(a: InboxAction) -> Self {
        match a {
            InboxAction::Read => proto::InboxAction::Read,
            InboxAction::Unread => proto::InboxAction::Unread,
            InboxAction::Seen => proto::InboxAction::Seen,
            InboxAction::Unseen => proto::InboxAction::Unseen,
            InboxAction::Archive => proto::InboxAction::Archive,
            InboxAction::Unarchive => proto::InboxAction::Unarchive,
        }
    }
}

/// Which items an inbox page lists by state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, uniffi::Enum)]
pub enum InboxStatus {
    /// Every state.
    #[default]
    All,
    /// Not read.
    Unread,
    /// Read.
    Read,
    /// Not seen.
    Unseen,
    /// Seen.
    Seen,
}

/// Which items an inbox page lists by archive state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, uniffi::Enum)]
pub enum InboxArchived {
    /// Not archived (the default).
    #[default]
    Exclude,
    /// Archived or not.
    Include,
    /// Archived only.
    Only,
}

/// Filters of an inbox page.
#[derive(Clone, Debug, Default, PartialEq, Eq, uniffi::Record)]
pub struct InboxQuery {
    /// Only items older than this `seq` (the previous page's `next`).
    #[uniffi(default = None)]
    pub before: Option<u64>,
    /// Most items (1–200, default 50).
    #[uniffi(default = None)]
    pub limit: Option<u32>,
    /// By read/seen state.
    pub status: InboxStatus,
    /// By archive state.
    pub archived: InboxArchived,
    /// Only this notification type.
    #[uniffi(default = None)]
    pub kind: Option<String>,
    /// Only items from `topic:<topic>`.
    #[uniffi(default = None)]
    pub topic: Option<String>,
}

impl From<InboxQuery> for proto::InboxQuery {
    fn from(q: InboxQuery) -> Self {
        proto::InboxQuery {
            before: q.before,
            limit: q.limit,
            status: match q.status {
                InboxStatus::All => proto::StatusFilter::All,
                InboxStatus::Unread => proto::StatusFilter::Unread,
                InboxStatus::Read => proto::StatusFilter::Read,
                InboxStatus::Unseen => proto::StatusFilter::Unseen,
                InboxStatus::Seen => proto::StatusFilter::Seen,
            },
            archived: match q.archived {
                InboxArchived::Exclude => proto::ArchivedFilter::Exclude,
                InboxArchived::Include => proto::ArchivedFilter::Include,
                InboxArchived::Only => proto::ArchivedFilter::Only,
            },
            kind: q.kind,
            topic: q.topic,
        }
    }
}

fn request_error(e: ClientError) -> TidingsError {
    e.into()
}

#[uniffi::export(async_runtime = "tokio")]
impl TidingsClient {
    /// The inbox counts the server last reported (kept in the store, so known before the connection is up);
    /// `None` before the first report. The badge is `unread`.
    pub fn inbox_counts(&self) -> Option<InboxCounts> {
        self.client.inbox_counts().map(Into::into)
    }

    /// Waits until the inbox counts differ from `current` and returns them (at once if they differ already):
    /// the latest counts, which only move to newer versions. For an observable badge.
    pub async fn next_inbox_counts(&self, current: Option<InboxCounts>) -> Option<InboxCounts> {
        let mut counts = self.client.inbox_counts_changes();
        loop {
            let now: Option<InboxCounts> = counts.borrow_and_update().map(Into::into);
            if now != current {
                return now;
            }
            if counts.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    /// The inbox view: loaded items and every item added since, newest first, in their current state (an
    /// `InboxChanged` event tells when it changed).
    pub fn inbox_items(&self) -> Vec<InboxItem> {
        self.client.inbox_items().into_iter().map(Into::into).collect()
    }

    /// Whether the view reaches the oldest item (nothing more to load).
    pub fn inbox_complete(&self) -> bool {
        self.client.inbox_complete()
    }

    /// Inbox changes not yet answered by the server (queued while offline).
    pub fn inbox_pending_changes(&self) -> u32 {
        self.client.inbox_pending_changes() as u32
    }

    /// Loads the next (older) page of the view; the items join `inbox_items`.
    pub async fn inbox_load_more(&self) -> Result<InboxPage, TidingsError> {
        self.client.inbox_load_more().await.map(Into::into).map_err(request_error)
    }

    /// A page of the inbox with filters.
    pub async fn inbox_list(&self, query: InboxQuery) -> Result<InboxPage, TidingsError> {
        self.client.inbox_list(query.into()).await.map(Into::into).map_err(request_error)
    }

    /// Applies `action` to the items `ids`. Queued while offline (kept in the store) and sent again after every
    /// reconnect until the server answers, which applies it once; returns the counts after it.
    pub async fn inbox_mark(&self, action: InboxAction, ids: Vec<String>) -> Result<InboxChangeResult, TidingsError> {
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        self.client.inbox_mark(action.into(), &ids).await.map(Into::into).map_err(request_error)
    }

    /// Marks every item up to the newest the client knows read (and seen); items that reach the server meanwhile
    /// stay unread.
    pub async fn inbox_mark_all_read(&self) -> Result<InboxChangeResult, TidingsError> {
        self.client.inbox_mark_all(proto::MarkAllAction::Read).await.map(Into::into).map_err(request_error)
    }

    /// Marks every item up to the newest the client knows seen.
    pub async fn inbox_mark_all_seen(&self) -> Result<InboxChangeResult, TidingsError> {
        self.client.inbox_mark_all(proto::MarkAllAction::Seen).await.map(Into::into).map_err(request_error)
    }

    /// A page of `stream`'s stored history after `(after_epoch, after_offset)` — after a `Gap`, pass the cursor
    /// the stream had (or none, from the oldest stored); at most `limit` (1–1,000, default 100) notifications.
    pub async fn history(
        &self,
        stream: String,
        after_epoch: Option<String>,
        after_offset: Option<u64>,
        limit: Option<u32>,
    ) -> Result<HistoryPage, TidingsError> {
        let after = match (after_epoch, after_offset) {
            (Some(epoch), Some(offset)) => Some(core::Cursor { epoch, offset }),
            (None, None) => None,
            _ => {
                return Err(TidingsError::InvalidArgument {
                    message: "after_epoch and after_offset go together".into(),
                });
            }
        };
        self.client.history(&stream, after, limit).await.map(Into::into).map_err(request_error)
    }
}
