//! The inbox and stream-history frames (protocol §2.12–§2.16): wire types, decoding and encoding.
//!
//! Kept apart from the session frames of `codec.rs`: these frames nest objects (items, counts, envelopes) that
//! the flat member table there has no room for. `codec.rs` hands these `op`s to [`decode_client`] and
//! [`decode_server`], and their variants to the writers here.

use super::codec::{decode_notification, write_notification};
use super::json::{ObjectWriter, Reader};
use super::{ClientFrame, DecodeError, Notification, ServerFrame, quoted, validate_id};

/// Most ids in one `inbox_mark`.
pub const MAX_IDS_PER_INBOX_MARK: usize = 256;
/// Most items in one inbox page (the default is [`DEFAULT_INBOX_PAGE`]).
pub const MAX_INBOX_PAGE: u32 = 200;
/// Items in an inbox page when the request names no `limit`.
pub const DEFAULT_INBOX_PAGE: u32 = 50;
/// Most notifications in one history page (the default is [`DEFAULT_HISTORY_PAGE`]).
pub const MAX_HISTORY_PAGE: u32 = 1000;
/// Notifications in a history page when the request names no `limit`.
pub const DEFAULT_HISTORY_PAGE: u32 = 100;

/// The server's counts of one user's inbox, with the version of the inbox they describe.
///
/// `unseen ≤ unread ≤ total` always holds (a read item is also seen); archived items count in none of them. A
/// client keeps the counts with the highest `version` it has seen and ignores older ones.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct InboxCounts {
    /// Items not archived and not seen.
    pub unseen: u64,
    /// Items not archived and not read.
    pub unread: u64,
    /// Items not archived.
    pub total: u64,
    /// Grows by one with every change of the inbox (an item added, removed, or a state change); `0` for an
    /// inbox that never had an item.
    pub version: u64,
    /// The `seq` of the newest item the inbox ever had (`0` if none): the cursor that bounds "mark all" to what the
    /// client has seen.
    pub head: u64,
}

/// What an `inbox_mark` does to each of its items (protocol §2.14).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum InboxAction {
    /// Sets `read_at` (and `seen_at`, if unset).
    Read,
    /// Clears `read_at`.
    Unread,
    /// Sets `seen_at`.
    Seen,
    /// Clears `seen_at` and `read_at`.
    Unseen,
    /// Sets `archived_at`.
    Archive,
    /// Clears `archived_at`.
    Unarchive,
}

impl InboxAction {
    /// Every action.
    pub const ALL: [InboxAction; 6] = [
        InboxAction::Read,
        InboxAction::Unread,
        InboxAction::Seen,
        InboxAction::Unseen,
        InboxAction::Archive,
        InboxAction::Unarchive,
    ];

    /// From the wire name.
    pub fn parse(s: &str) -> Option<Self> {
        InboxAction::ALL.into_iter().find(|a| a.as_str() == s)
    }

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            InboxAction::Read => "read",
            InboxAction::Unread => "unread",
            InboxAction::Seen => "seen",
            InboxAction::Unseen => "unseen",
            InboxAction::Archive => "archive",
            InboxAction::Unarchive => "unarchive",
        }
    }
}

/// What an `inbox_mark_all` does to every item up to its cursor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MarkAllAction {
    /// Everything up to the cursor becomes read (and seen).
    Read,
    /// Everything up to the cursor becomes seen.
    Seen,
}

impl MarkAllAction {
    /// From the wire name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "read" => Some(MarkAllAction::Read),
            "seen" => Some(MarkAllAction::Seen),
            _ => None,
        }
    }

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            MarkAllAction::Read => "read",
            MarkAllAction::Seen => "seen",
        }
    }
}

/// A "mark all" that was applied: every item with `seq ≤ up_to` became read (or seen) at `at`, in inbox
/// `version`. Clients apply it to the items they hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct InboxMark {
    /// Read or seen.
    pub action: MarkAllAction,
    /// The cursor: items with `seq` up to this one.
    pub up_to: u64,
    /// When (ms since the Unix epoch).
    pub at: u64,
    /// The inbox version it made.
    pub version: u64,
}

/// One item of a user's inbox: a notification and its state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InboxItem {
    /// The notification id (unique within the inbox).
    pub id: String,
    /// Position in the inbox: grows with every item added, never reused. Pages and "mark all" are bounded by it.
    pub seq: u64,
    /// The inbox version of the item's last change (its state as given here is that version's).
    pub version: u64,
    /// When it was added (ms since the Unix epoch).
    pub inserted_at: u64,
    /// When it was first seen; `None`: unseen.
    pub seen_at: Option<u64>,
    /// When it was read; `None`: unread.
    pub read_at: Option<u64>,
    /// When it was archived; `None`: not archived.
    pub archived_at: Option<u64>,
    /// The notification (absent in change frames whose item would not fit the frame: fetch it with
    /// `inbox_list`).
    pub notification: Option<Notification>,
}

/// Which items an inbox page lists, by read/seen state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum StatusFilter {
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

impl StatusFilter {
    /// From the wire name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "all" => StatusFilter::All,
            "unread" => StatusFilter::Unread,
            "read" => StatusFilter::Read,
            "unseen" => StatusFilter::Unseen,
            "seen" => StatusFilter::Seen,
            _ => return None,
        })
    }

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            StatusFilter::All => "all",
            StatusFilter::Unread => "unread",
            StatusFilter::Read => "read",
            StatusFilter::Unseen => "unseen",
            StatusFilter::Seen => "seen",
        }
    }
}

/// Which items an inbox page lists, by archive state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ArchivedFilter {
    /// Items not archived (the default).
    #[default]
    Exclude,
    /// Archived or not.
    Include,
    /// Archived items only.
    Only,
}

impl ArchivedFilter {
    /// From the wire name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "exclude" => ArchivedFilter::Exclude,
            "include" => ArchivedFilter::Include,
            "only" => ArchivedFilter::Only,
            _ => return None,
        })
    }

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            ArchivedFilter::Exclude => "exclude",
            ArchivedFilter::Include => "include",
            ArchivedFilter::Only => "only",
        }
    }
}

/// What an inbox page lists: items newest first, with `seq` below `before`, that pass every filter.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InboxQuery {
    /// Only items with a smaller `seq` (the previous page's `next`); `None`: from the newest.
    pub before: Option<u64>,
    /// Most items (default [`DEFAULT_INBOX_PAGE`], at most [`MAX_INBOX_PAGE`]).
    pub limit: Option<u32>,
    /// By read/seen state.
    pub status: StatusFilter,
    /// By archive state.
    pub archived: ArchivedFilter,
    /// Only this notification `type`.
    pub kind: Option<String>,
    /// Only items that came from `topic:<topic>`.
    pub topic: Option<String>,
}

impl InboxQuery {
    /// The page size this query asks for, within the protocol's bounds.
    pub fn page_size(&self) -> usize {
        self.limit.unwrap_or(DEFAULT_INBOX_PAGE).clamp(1, MAX_INBOX_PAGE) as usize
    }

    /// Checks the query against the protocol's limits; the error names the member.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(limit) = self.limit
            && !(1..=MAX_INBOX_PAGE).contains(&limit)
        {
            return Err(format!("limit must be 1 to {MAX_INBOX_PAGE}, got {limit}"));
        }
        if let Some(kind) = &self.kind
            && (kind.is_empty() || kind.len() > super::MAX_NAME_BYTES)
        {
            return Err(format!("type must be 1 to {} bytes", super::MAX_NAME_BYTES));
        }
        if let Some(topic) = &self.topic {
            super::validate_topic(topic).map_err(|e| format!("topic {e}"))?;
        }
        Ok(())
    }
}

/// A change of an inbox, or the answer to a request that changed it (or asked for it): the counts after it, the
/// items it changed, and the "mark all" it applied.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InboxUpdate {
    /// The request this answers; `None` for a live change.
    pub reference: Option<u64>,
    /// The counts after the change.
    pub counts: InboxCounts,
    /// Items added or changed, with their state after it.
    pub items: Vec<InboxItem>,
    /// Items removed (by retention), by id.
    pub removed: Vec<String>,
    /// The "mark all" applied.
    pub mark: Option<InboxMark>,
    /// The request's `op_id` was applied before: nothing changed now; `counts` are the current ones.
    pub duplicate: bool,
    /// Ids of an `inbox_mark` that are not in the inbox (never added, or removed by retention).
    pub unknown: Vec<String>,
}

/// A page of an inbox, newest first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InboxPage {
    /// The request this answers.
    pub reference: u64,
    /// The items.
    pub items: Vec<InboxItem>,
    /// `before` for the next page; `None` when this page reaches the oldest item.
    pub next: Option<u64>,
    /// The counts when the page was read.
    pub counts: InboxCounts,
}

/// A page of a stream's stored history, oldest first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryPage {
    /// The request this answers.
    pub reference: u64,
    /// The stream.
    pub stream: String,
    /// The stream's current epoch; the offsets are the ones of this epoch.
    pub epoch: String,
    /// The stream's newest offset.
    pub head: u64,
    /// The oldest offset the server still stores (`head + 1` when it stores none).
    pub oldest: u64,
    /// The notifications.
    pub items: Vec<Notification>,
    /// `after` for the next page; `None` when this page reaches the head.
    pub next: Option<u64>,
}

// ---- decoding ----

fn need<T>(v: Option<T>, name: &str) -> Result<T, DecodeError> {
    v.ok_or_else(|| DecodeError::new(format!("missing member `{name}`")))
}

fn set<T>(slot: &mut Option<T>, value: T, key: &str) -> Result<(), DecodeError> {
    if slot.is_some() {
        return Err(DecodeError::new(format!("duplicate member `{key}`")));
    }
    *slot = Some(value);
    Ok(())
}

fn opt_u64(r: &mut Reader<'_>) -> Result<Option<u64>, DecodeError> {
    if r.null() { Ok(None) } else { r.u64().map(Some) }
}

fn opt_string(r: &mut Reader<'_>) -> Result<Option<String>, DecodeError> {
    if r.null() { Ok(None) } else { r.string().map(|s| Some(s.into_owned())) }
}

fn enum_member<T>(r: &mut Reader<'_>, what: &str, parse: fn(&str) -> Option<T>) -> Result<T, DecodeError> {
    let s = r.string()?;
    parse(&s).ok_or_else(|| DecodeError::new(format!("unknown {what} {}", quoted(&s))))
}

/// Reads the members of one object, handing each key to `f` (which must consume its value); unknown keys must
/// be skipped by `f` with `raw_value`.
fn object<'a>(
    r: &mut Reader<'a>,
    mut f: impl FnMut(&mut Reader<'a>, &str) -> Result<(), DecodeError>,
) -> Result<(), DecodeError> {
    r.begin_object()?;
    let mut first = true;
    while let Some(key) = r.next_key(&mut first)? {
        f(r, &key).map_err(|e| DecodeError::new(format!("member `{key}`: {}", e.message())))?;
    }
    Ok(())
}

fn array<'a>(
    r: &mut Reader<'a>,
    mut f: impl FnMut(&mut Reader<'a>) -> Result<(), DecodeError>,
) -> Result<(), DecodeError> {
    if r.null() {
        return Ok(());
    }
    r.begin_array()?;
    let mut first = true;
    while r.next_element(&mut first)? {
        f(r)?;
    }
    Ok(())
}

fn skip(r: &mut Reader<'_>) -> Result<(), DecodeError> {
    r.raw_value().map(|_| ())
}

fn counts(r: &mut Reader<'_>) -> Result<InboxCounts, DecodeError> {
    let (mut unseen, mut unread, mut total, mut version, mut head) = (None, None, None, None, None);
    object(r, |r, key| match key {
        "unseen" => set(&mut unseen, r.u64()?, key),
        "unread" => set(&mut unread, r.u64()?, key),
        "total" => set(&mut total, r.u64()?, key),
        "version" => set(&mut version, r.u64()?, key),
        "head" => set(&mut head, r.u64()?, key),
        _ => skip(r),
    })?;
    Ok(InboxCounts {
        unseen: need(unseen, "unseen")?,
        unread: need(unread, "unread")?,
        total: need(total, "total")?,
        version: need(version, "version")?,
        head: need(head, "head")?,
    })
}

fn item(r: &mut Reader<'_>) -> Result<InboxItem, DecodeError> {
    let (mut id, mut seq, mut version, mut inserted_at) = (None, None, None, None);
    let (mut seen_at, mut read_at, mut archived_at, mut notification) = (None, None, None, None);
    object(r, |r, key| match key {
        "id" => set(&mut id, r.string()?.into_owned(), key),
        "seq" => set(&mut seq, r.u64()?, key),
        "v" => set(&mut version, r.u64()?, key),
        "inserted_at" => set(&mut inserted_at, r.u64()?, key),
        "seen_at" => set(&mut seen_at, opt_u64(r)?, key),
        "read_at" => set(&mut read_at, opt_u64(r)?, key),
        "archived_at" => set(&mut archived_at, opt_u64(r)?, key),
        "notification" => {
            let value = if r.null() { None } else { Some(decode_notification(r.raw_value()?)?) };
            set(&mut notification, value, key)
        }
        _ => skip(r),
    })?;
    Ok(InboxItem {
        id: need(id, "id")?,
        seq: need(seq, "seq")?,
        version: need(version, "v")?,
        inserted_at: need(inserted_at, "inserted_at")?,
        seen_at: seen_at.flatten(),
        read_at: read_at.flatten(),
        archived_at: archived_at.flatten(),
        notification: notification.flatten(),
    })
}

fn items(r: &mut Reader<'_>) -> Result<Vec<InboxItem>, DecodeError> {
    let mut out = Vec::new();
    array(r, |r| {
        out.push(item(r)?);
        Ok(())
    })?;
    Ok(out)
}

fn strings(r: &mut Reader<'_>) -> Result<Vec<String>, DecodeError> {
    let mut out = Vec::new();
    array(r, |r| {
        out.push(r.string()?.into_owned());
        Ok(())
    })?;
    Ok(out)
}

fn mark(r: &mut Reader<'_>) -> Result<InboxMark, DecodeError> {
    let (mut action, mut up_to, mut at, mut version) = (None, None, None, None);
    object(r, |r, key| match key {
        "action" => set(&mut action, enum_member(r, "action", MarkAllAction::parse)?, key),
        "up_to" => set(&mut up_to, r.u64()?, key),
        "at" => set(&mut at, r.u64()?, key),
        "version" => set(&mut version, r.u64()?, key),
        _ => skip(r),
    })?;
    Ok(InboxMark {
        action: need(action, "action")?,
        up_to: need(up_to, "up_to")?,
        at: need(at, "at")?,
        version: need(version, "version")?,
    })
}

/// Whether `op` names one of this module's client frames.
pub(crate) fn is_client_op(op: &str) -> bool {
    matches!(op, "inbox_watch" | "inbox_list" | "inbox_mark" | "inbox_mark_all" | "history")
}

/// Whether `op` names one of this module's server frames.
pub(crate) fn is_server_op(op: &str) -> bool {
    matches!(op, "inbox" | "inbox_page" | "history_page")
}

/// Decodes a client frame whose `op` is one of [`is_client_op`].
pub(crate) fn decode_client(op: &str, text: &str) -> Result<ClientFrame, DecodeError> {
    let mut r = Reader::new(text);
    let (mut reference, mut op_id, mut ids, mut up_to) = (None, None, None, None);
    let (mut inbox_action, mut all_action) = (None, None);
    let mut query = InboxQuery::default();
    let (mut status, mut archived, mut kind, mut topic, mut before, mut limit) = (None, None, None, None, None, None);
    let (mut stream, mut epoch, mut after) = (None, None, None);
    object(&mut r, |r, key| match key {
        "ref" => set(&mut reference, r.u64()?, key),
        "op_id" if matches!(op, "inbox_mark" | "inbox_mark_all") => set(&mut op_id, r.string()?.into_owned(), key),
        "action" if op == "inbox_mark" => set(&mut inbox_action, enum_member(r, "action", InboxAction::parse)?, key),
        "action" if op == "inbox_mark_all" => {
            set(&mut all_action, enum_member(r, "action", MarkAllAction::parse)?, key)
        }
        "ids" if op == "inbox_mark" => set(&mut ids, strings(r)?, key),
        "up_to" if op == "inbox_mark_all" => set(&mut up_to, opt_u64(r)?, key),
        "before" if op == "inbox_list" => set(&mut before, opt_u64(r)?, key),
        "limit" if matches!(op, "inbox_list" | "history") => {
            let v = opt_u64(r)?;
            let v = v.map(|v| u32::try_from(v).unwrap_or(u32::MAX));
            set(&mut limit, v, key)
        }
        "status" if op == "inbox_list" => {
            let v = if r.null() { None } else { Some(enum_member(r, "status", StatusFilter::parse)?) };
            set(&mut status, v, key)
        }
        "archived" if op == "inbox_list" => {
            let v = if r.null() { None } else { Some(enum_member(r, "archived", ArchivedFilter::parse)?) };
            set(&mut archived, v, key)
        }
        "type" if op == "inbox_list" => set(&mut kind, opt_string(r)?, key),
        "topic" if op == "inbox_list" => set(&mut topic, opt_string(r)?, key),
        "stream" if op == "history" => set(&mut stream, r.string()?.into_owned(), key),
        "epoch" if op == "history" => set(&mut epoch, opt_string(r)?, key),
        "after" if op == "history" => set(&mut after, opt_u64(r)?, key),
        _ => skip(r),
    })
    .and_then(|()| r.end())
    .map_err(|e| DecodeError::new(format!("invalid client frame: {op}: {}", e.message())))?;
    let frame = (|| -> Result<ClientFrame, DecodeError> {
        let reference = need(reference, "ref")?;
        Ok(match op {
            "inbox_watch" => ClientFrame::InboxWatch { reference },
            "inbox_list" => {
                query.before = before.flatten();
                query.limit = limit.flatten();
                query.status = status.flatten().unwrap_or_default();
                query.archived = archived.flatten().unwrap_or_default();
                query.kind = kind.flatten();
                query.topic = topic.flatten();
                ClientFrame::InboxList { reference, query }
            }
            "inbox_mark" => ClientFrame::InboxMark {
                reference,
                op_id: op_id.unwrap_or_default(),
                action: need(inbox_action, "action")?,
                ids: need(ids, "ids")?,
            },
            "inbox_mark_all" => ClientFrame::InboxMarkAll {
                reference,
                op_id: op_id.unwrap_or_default(),
                action: need(all_action, "action")?,
                up_to: up_to.flatten(),
            },
            _ => {
                let (epoch, after) = (epoch.flatten(), after.flatten());
                if epoch.is_some() != after.is_some() {
                    return Err(DecodeError::new("`epoch` and `after` must be given together"));
                }
                ClientFrame::History {
                    reference,
                    stream: need(stream, "stream")?,
                    position: epoch.zip(after),
                    limit: limit.flatten(),
                }
            }
        })
    })();
    frame.map_err(|e| DecodeError::new(format!("invalid client frame: {op}: {}", e.message())))
}

/// Decodes a server frame whose `op` is one of [`is_server_op`].
pub(crate) fn decode_server(op: &str, text: &str) -> Result<ServerFrame, DecodeError> {
    let mut r = Reader::new(text);
    let (mut reference, mut counts_v, mut items_v, mut removed, mut mark_v, mut duplicate) =
        (None, None, None, None, None, None);
    let (mut next, mut stream, mut epoch, mut head, mut oldest, mut notes) = (None, None, None, None, None, None);
    let mut unknown = None;
    object(&mut r, |r, key| match key {
        "ref" => set(&mut reference, opt_u64(r)?, key),
        "counts" if op != "history_page" => set(&mut counts_v, counts(r)?, key),
        "items" if op == "history_page" => {
            let mut out = Vec::new();
            array(r, |r| {
                out.push(decode_notification(r.raw_value()?)?);
                Ok(())
            })?;
            set(&mut notes, out, key)
        }
        "items" => set(&mut items_v, items(r)?, key),
        "removed" if op == "inbox" => set(&mut removed, strings(r)?, key),
        "mark" if op == "inbox" => {
            let v = if r.null() { None } else { Some(mark(r)?) };
            set(&mut mark_v, v, key)
        }
        "duplicate" if op == "inbox" => set(&mut duplicate, r.bool()?, key),
        "unknown" if op == "inbox" => set(&mut unknown, strings(r)?, key),
        "next" if op != "inbox" => set(&mut next, opt_u64(r)?, key),
        "stream" if op == "history_page" => set(&mut stream, r.string()?.into_owned(), key),
        "epoch" if op == "history_page" => set(&mut epoch, r.string()?.into_owned(), key),
        "head" if op == "history_page" => set(&mut head, r.u64()?, key),
        "oldest" if op == "history_page" => set(&mut oldest, r.u64()?, key),
        _ => skip(r),
    })
    .and_then(|()| r.end())
    .map_err(|e| DecodeError::new(format!("invalid server frame: {op}: {}", e.message())))?;
    let frame = (|| -> Result<ServerFrame, DecodeError> {
        let reference = reference.flatten();
        Ok(match op {
            "inbox" => ServerFrame::Inbox(InboxUpdate {
                reference,
                counts: need(counts_v, "counts")?,
                items: items_v.unwrap_or_default(),
                removed: removed.unwrap_or_default(),
                mark: mark_v.flatten(),
                duplicate: duplicate.unwrap_or(false),
                unknown: unknown.unwrap_or_default(),
            }),
            "inbox_page" => ServerFrame::InboxPage(InboxPage {
                reference: need(reference, "ref")?,
                items: items_v.unwrap_or_default(),
                next: next.flatten(),
                counts: need(counts_v, "counts")?,
            }),
            _ => ServerFrame::HistoryPage(HistoryPage {
                reference: need(reference, "ref")?,
                stream: need(stream, "stream")?,
                epoch: need(epoch, "epoch")?,
                head: need(head, "head")?,
                oldest: need(oldest, "oldest")?,
                items: notes.unwrap_or_default(),
                next: next.flatten(),
            }),
        })
    })();
    frame.map_err(|e| DecodeError::new(format!("invalid server frame: {op}: {}", e.message())))
}

// ---- encoding ----

/// Writes the counts object.
pub fn write_counts(out: &mut String, c: &InboxCounts) {
    let mut w = ObjectWriter::new(out);
    w.u64("unseen", c.unseen).u64("unread", c.unread).u64("total", c.total).u64("version", c.version);
    w.u64("head", c.head);
    w.finish();
}

/// Writes one item object (with its notification when it has one).
pub fn write_item(out: &mut String, item: &InboxItem) {
    let mut w = ObjectWriter::new(out);
    w.str("id", &item.id).u64("seq", item.seq).u64("v", item.version).u64("inserted_at", item.inserted_at);
    w.opt_u64("seen_at", item.seen_at).opt_u64("read_at", item.read_at).opt_u64("archived_at", item.archived_at);
    if let Some(n) = &item.notification {
        write_notification(w.raw("notification"), n);
    }
    w.finish();
}

fn write_items(out: &mut String, items: &[InboxItem]) {
    out.push('[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_item(out, item);
    }
    out.push(']');
}

pub(crate) fn write_client(w: &mut ObjectWriter<'_>, frame: &ClientFrame) {
    match frame {
        ClientFrame::InboxWatch { reference } => {
            w.str("op", "inbox_watch").u64("ref", *reference);
        }
        ClientFrame::InboxList { reference, query } => {
            w.str("op", "inbox_list").u64("ref", *reference).opt_u64("before", query.before);
            w.opt_u64("limit", query.limit.map(u64::from));
            if query.status != StatusFilter::All {
                w.str("status", query.status.as_str());
            }
            if query.archived != ArchivedFilter::Exclude {
                w.str("archived", query.archived.as_str());
            }
            w.opt_str("type", query.kind.as_deref()).opt_str("topic", query.topic.as_deref());
        }
        ClientFrame::InboxMark { reference, op_id, action, ids } => {
            w.str("op", "inbox_mark").u64("ref", *reference).str("op_id", op_id).str("action", action.as_str());
            w.str_array("ids", ids.iter().map(String::as_str));
        }
        ClientFrame::InboxMarkAll { reference, op_id, action, up_to } => {
            w.str("op", "inbox_mark_all").u64("ref", *reference).str("op_id", op_id).str("action", action.as_str());
            w.opt_u64("up_to", *up_to);
        }
        ClientFrame::History { reference, stream, position, limit } => {
            w.str("op", "history").u64("ref", *reference).str("stream", stream);
            if let Some((epoch, after)) = position {
                w.str("epoch", epoch).u64("after", *after);
            }
            w.opt_u64("limit", limit.map(u64::from));
        }
        _ => unreachable!("not an inbox frame"),
    }
}

/// Writes the members of an `inbox` frame after `op`.
pub(crate) fn write_update_members(w: &mut ObjectWriter<'_>, u: &InboxUpdate) {
    w.opt_u64("ref", u.reference);
    write_counts(w.raw("counts"), &u.counts);
    if !u.items.is_empty() {
        write_items(w.raw("items"), &u.items);
    }
    if !u.removed.is_empty() {
        w.str_array("removed", u.removed.iter().map(String::as_str));
    }
    if let Some(m) = &u.mark {
        let out = w.raw("mark");
        let mut m_w = ObjectWriter::new(out);
        m_w.str("action", m.action.as_str()).u64("up_to", m.up_to).u64("at", m.at).u64("version", m.version);
        m_w.finish();
    }
    if u.duplicate {
        w.bool("duplicate", true);
    }
    if !u.unknown.is_empty() {
        w.str_array("unknown", u.unknown.iter().map(String::as_str));
    }
}

pub(crate) fn write_server(w: &mut ObjectWriter<'_>, frame: &ServerFrame) {
    match frame {
        ServerFrame::Inbox(u) => {
            w.str("op", "inbox");
            write_update_members(w, u);
        }
        ServerFrame::InboxPage(p) => {
            w.str("op", "inbox_page").u64("ref", p.reference);
            write_items(w.raw("items"), &p.items);
            w.opt_u64("next", p.next);
            write_counts(w.raw("counts"), &p.counts);
        }
        ServerFrame::HistoryPage(p) => {
            w.str("op", "history_page").u64("ref", p.reference).str("stream", &p.stream).str("epoch", &p.epoch);
            w.u64("head", p.head).u64("oldest", p.oldest);
            let out = w.raw("items");
            out.push('[');
            for (i, n) in p.items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_notification(out, n);
            }
            out.push(']');
            w.opt_u64("next", p.next);
        }
        _ => unreachable!("not an inbox frame"),
    }
}

/// Checks an `op_id` (an idempotency key of a state change): empty (none) or `[A-Za-z0-9_.:-]{1,128}`.
pub fn validate_op_id(op_id: &str) -> Result<(), String> {
    if op_id.is_empty() { Ok(()) } else { validate_id(op_id) }
}

#[cfg(test)]
mod tests {
    use super::super::{NotificationFields, Persistence, Priority, decode_client_frame, decode_server_frame};
    use super::super::{encode_client_frame, encode_server_frame};
    use super::*;

    fn note(id: &str) -> Notification {
        Notification::from(NotificationFields {
            id: id.into(),
            stream: "user:alice".into(),
            offset: Some(42),
            epoch: "k3v9q2".into(),
            kind: "comment.created".into(),
            priority: Priority::Important,
            persistence: Persistence::Persistent,
            title: Some("Bob commented".into()),
            body: None,
            data: None,
            group: None,
            created_at: 1_763_808_060_123,
        })
    }

    #[test]
    fn client_frames_match_the_documented_examples() {
        let examples = [
            r#"{"op":"inbox_watch","ref":7}"#,
            r#"{"op":"inbox_list","ref":8,"before":120,"limit":20,"status":"unread","archived":"include","type":"comment.created","topic":"news"}"#,
            r#"{"op":"inbox_list","ref":8}"#,
            r#"{"op":"inbox_mark","ref":9,"op_id":"o-1","action":"read","ids":["n1","n2"]}"#,
            r#"{"op":"inbox_mark_all","ref":10,"op_id":"o-2","action":"seen","up_to":123}"#,
            r#"{"op":"inbox_mark_all","ref":10,"op_id":"","action":"read"}"#,
            r#"{"op":"history","ref":11,"stream":"topic:news","epoch":"p0x7aa","after":1200,"limit":100}"#,
            r#"{"op":"history","ref":11,"stream":"topic:news"}"#,
        ];
        for text in examples {
            let frame = decode_client_frame(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(encode_client_frame(&frame), text);
        }
    }

    #[test]
    fn server_frames_round_trip() {
        let counts = InboxCounts { unseen: 1, unread: 2, total: 3, version: 57, head: 12 };
        let item = InboxItem {
            id: "n1".into(),
            seq: 12,
            version: 57,
            inserted_at: 5,
            seen_at: Some(6),
            read_at: None,
            archived_at: None,
            notification: Some(note("n1")),
        };
        let bare = InboxItem { notification: None, ..item.clone() };
        let frames = [
            ServerFrame::Inbox(InboxUpdate { reference: Some(3), counts, ..Default::default() }),
            ServerFrame::Inbox(InboxUpdate {
                reference: None,
                counts,
                items: vec![item.clone(), bare],
                removed: vec!["old".into()],
                mark: Some(InboxMark { action: MarkAllAction::Read, up_to: 11, at: 9, version: 57 }),
                duplicate: true,
                unknown: vec!["gone".into()],
            }),
            ServerFrame::InboxPage(InboxPage { reference: 4, items: vec![item], next: Some(12), counts }),
            ServerFrame::HistoryPage(HistoryPage {
                reference: 5,
                stream: "topic:news".into(),
                epoch: "e".into(),
                head: 9,
                oldest: 2,
                items: vec![note("a"), note("b")],
                next: None,
            }),
        ];
        for frame in frames {
            let text = encode_server_frame(&frame);
            assert_eq!(decode_server_frame(&text).unwrap_or_else(|e| panic!("{text}: {e}")), frame, "{text}");
        }
        let text = r#"{"op":"inbox","ref":7,"counts":{"unseen":3,"unread":5,"total":20,"version":57,"head":123}}"#;
        let ServerFrame::Inbox(u) = decode_server_frame(text).unwrap() else { panic!() };
        assert_eq!((u.reference, u.counts.unread, u.counts.head), (Some(7), 5, 123));
    }

    #[test]
    fn malformed_frames_name_the_member() {
        let e = decode_client_frame(r#"{"op":"inbox_mark","ref":1,"action":"burn","ids":[]}"#).unwrap_err();
        assert!(e.message().contains("unknown action \"burn\""), "{e}");
        let e = decode_client_frame(r#"{"op":"inbox_mark","ref":1,"action":"read"}"#).unwrap_err();
        assert!(e.message().contains("missing member `ids`"), "{e}");
        let e = decode_client_frame(r#"{"op":"history","ref":1,"stream":"topic:a","epoch":"e"}"#).unwrap_err();
        assert!(e.message().contains("together"), "{e}");
        let e = decode_client_frame(r#"{"op":"inbox_list","ref":1,"status":"maybe"}"#).unwrap_err();
        assert!(e.message().contains("unknown status"), "{e}");
        let e = decode_server_frame(r#"{"op":"inbox","counts":{"unseen":1}}"#).unwrap_err();
        assert!(e.message().contains("missing member `unread`"), "{e}");
        // Members other frames have are ignored like unknown ones.
        let f = decode_client_frame(r#"{"op":"inbox_watch","ref":1,"ids":7,"stream":false}"#).unwrap();
        assert_eq!(f, ClientFrame::InboxWatch { reference: 1 });
    }
}
