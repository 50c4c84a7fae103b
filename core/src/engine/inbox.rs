//! The inbox (protocol §13) and stream history (§14) on the client: the server's counts, kept only when newer
//! (so answers and live changes that cross, several tabs or devices, never move them back); a view of the items
//! the app has loaded, kept current by every change; requests with their answers ([`Output::Reply`]); and changes
//! made while offline, queued durably with an op id and sent again after every reconnect until answered — applied
//! once by the server, whatever the number of resends.

use std::collections::VecDeque;
use std::time::Duration;

use super::Engine;
use super::link::Request;
use super::snapshot::{Cursor, QueuedChange};
use super::timers::Timer;
use super::types::{ConnId, EngineError, Event, Output};
use crate::protocol::{
    self, ClientFrame, ErrorCode, ErrorFrame, HistoryPage, InboxAction, InboxCounts, InboxItem, InboxMark, InboxPage,
    InboxQuery, InboxUpdate, MAX_IDS_PER_INBOX_MARK, MarkAllAction, ServerFrame, StreamName,
};
use crate::time::Instant;

/// Identifies a request of the application (an inbox page, an inbox change, a history page): its answer comes as
/// [`Output::Reply`] with the same id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub u64);

/// The answer to a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// A page of the inbox (`inbox_list`, or a page loaded into the view).
    Page(InboxPage),
    /// The inbox after a change: counts, the items changed, the mark applied, `duplicate`, `unknown` ids.
    Changed(InboxUpdate),
    /// A page of a stream's history.
    History(HistoryPage),
}

/// Why a request got no answer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The server refused it.
    #[error("refused: {code}: {message}")]
    Refused {
        /// Why (`bad_request`, `forbidden`, `try_again_later`).
        code: ErrorCode,
        /// Detail, naming the member.
        message: String,
    },
    /// No answer within the request timeout (reads only; changes wait for the connection as long as it takes).
    #[error("no answer in time")]
    TimedOut,
    /// The client was closed first.
    #[error("the client was closed")]
    Closed,
}

/// A change of the inbox, as queued and persisted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InboxChange {
    /// One action on these items.
    Mark {
        /// The action.
        action: InboxAction,
        /// The items (notification ids).
        ids: Vec<String>,
    },
    /// Every item up to `up_to` (the newest the client knew when it was made).
    MarkAll {
        /// Read or seen.
        action: MarkAllAction,
        /// The cursor; `None`: the server's newest item.
        up_to: Option<u64>,
    },
}

#[derive(Debug)]
enum Kind {
    List { query: InboxQuery, into_view: bool },
    History { stream: String, position: Option<(String, u64)>, limit: Option<u32> },
    Change { op_id: String, change: InboxChange },
}

#[derive(Debug)]
struct Pending {
    id: RequestId,
    kind: Kind,
    /// Reads fail after the request timeout; changes wait.
    deadline: Option<Instant>,
    /// The connection and `ref` it was sent with; sent again on a newer connection.
    sent: Option<(ConnId, u64)>,
}

/// The inbox state of an engine.
#[derive(Debug, Default)]
pub(super) struct InboxState {
    counts: Option<InboxCounts>,
    /// Loaded items in `seq` order, oldest first (the view shows them newest first); archived ones leave it. A
    /// sorted `Vec` rather than a `BTreeMap`: the view is bounded (`inbox_view_capacity`), and the B-tree's code was
    /// about 5 KB of the browser module.
    view: Vec<InboxItem>,
    /// No older item than the view's oldest exists.
    complete: bool,
    pending: Vec<Pending>,
    next_request: u64,
    /// The connection `inbox_watch` was sent on.
    watched: Option<ConnId>,
}

impl InboxState {
    /// Applies one item to the view; returns whether the view changed.
    fn apply_item(&mut self, item: &InboxItem) -> bool {
        let at = self.view.binary_search_by_key(&item.seq, |i| i.seq);
        match at {
            Ok(n) if self.view[n].id == item.id => {
                let held = &mut self.view[n];
                if item.version <= held.version {
                    return false;
                }
                if item.archived_at.is_some() {
                    self.view.remove(n);
                    return true;
                }
                let notification = item.notification.clone().or_else(|| held.notification.take());
                *held = InboxItem { notification, ..item.clone() };
                true
            }
            _ if item.notification.is_none() || item.archived_at.is_some() => false,
            Ok(n) => {
                self.view[n] = item.clone();
                true
            }
            Err(n) => {
                self.view.insert(n, item.clone());
                true
            }
        }
    }

    fn apply_mark(&mut self, mark: &InboxMark) -> bool {
        let mut changed = false;
        for item in self.view.iter_mut().take_while(|i| i.seq <= mark.up_to) {
            if item.version >= mark.version {
                continue;
            }
            let read = mark.action == MarkAllAction::Read && item.read_at.is_none();
            let seen = item.seen_at.is_none();
            if read {
                item.read_at = Some(mark.at);
            }
            if read || seen {
                item.seen_at.get_or_insert(mark.at);
                item.version = mark.version;
                changed = true;
            }
        }
        changed
    }

    fn trim(&mut self, capacity: usize) {
        let excess = self.view.len().saturating_sub(capacity.max(1));
        if excess > 0 {
            self.view.drain(..excess);
            self.complete = false;
        }
    }
}

impl Engine {
    // ----------------------------------------------------------------------------------------------------
    // Observers

    /// The inbox counts, as the server last reported them (`None` before the first report; restored from the store
    /// at start, so the badge shows before the connection is up).
    pub fn inbox_counts(&self) -> Option<InboxCounts> {
        self.inbox.counts
    }

    /// The items the app loaded ([`Engine::inbox_load_more`]) and every item added since, newest first, in their
    /// current state; archived items leave the view.
    pub fn inbox_items(&self) -> impl Iterator<Item = &InboxItem> {
        self.inbox.view.iter().rev()
    }

    /// Whether the view reaches the oldest item of the inbox (nothing more to load).
    pub fn inbox_complete(&self) -> bool {
        self.inbox.complete
    }

    /// Changes made and not yet answered by the server (queued while offline, or on their way).
    pub fn inbox_pending_changes(&self) -> usize {
        self.inbox.pending.iter().filter(|p| matches!(p.kind, Kind::Change { .. })).count()
    }

    // ----------------------------------------------------------------------------------------------------
    // Requests

    /// A page of the inbox with these filters ([`Reply::Page`]). Sent when connected (at once, or after the next
    /// `welcome`); fails with [`RequestError::TimedOut`] after `request_timeout`.
    pub fn inbox_list(&mut self, now: Instant, query: InboxQuery) -> Result<RequestId, EngineError> {
        let now = self.tick(now);
        query.validate().map_err(EngineError::InvalidArgument)?;
        Ok(self.add_request(now, Kind::List { query, into_view: false }))
    }

    /// Loads the next page of the view: the items older than the oldest it holds (the newest ones at first), with
    /// the default filters (archived items excluded). The answer is [`Reply::Page`], and the items join the view
    /// ([`Event::InboxChanged`]).
    pub fn inbox_load_more(&mut self, now: Instant, limit: Option<u32>) -> Result<RequestId, EngineError> {
        let now = self.tick(now);
        let before = self.inbox.view.first().map(|i| i.seq);
        let query = InboxQuery { before, limit, ..InboxQuery::default() };
        query.validate().map_err(EngineError::InvalidArgument)?;
        Ok(self.add_request(now, Kind::List { query, into_view: true }))
    }

    /// Applies `action` to the items `ids` ([`Reply::Changed`]). The change is queued durably with an op id and
    /// sent when connected — again after every reconnect until the server answers, which applies it once.
    pub fn inbox_mark(
        &mut self,
        now: Instant,
        action: InboxAction,
        ids: Vec<String>,
    ) -> Result<RequestId, EngineError> {
        let now = self.tick(now);
        if ids.is_empty() || ids.len() > MAX_IDS_PER_INBOX_MARK {
            return Err(EngineError::InvalidArgument(format!(
                "inbox_mark: 1 to {MAX_IDS_PER_INBOX_MARK} ids, got {}",
                ids.len()
            )));
        }
        if let Some(bad) = ids.iter().find_map(|id| protocol::validate_id(id).err().map(|e| format!("id {id:?} {e}"))) {
            return Err(EngineError::InvalidArgument(bad));
        }
        Ok(self.add_change(now, InboxChange::Mark { action, ids }))
    }

    /// Marks every item up to the newest the client knows (`counts.head`) read (and seen) or seen; items that
    /// reach the server after that stay as they are. Queued and sent as [`Engine::inbox_mark`].
    pub fn inbox_mark_all(&mut self, now: Instant, action: MarkAllAction) -> RequestId {
        let now = self.tick(now);
        let up_to = self.inbox.counts.map(|c| c.head).filter(|h| *h > 0);
        self.add_change(now, InboxChange::MarkAll { action, up_to })
    }

    /// A page of `stream`'s stored history after `after` (the cursor to refetch from after a gap; `None`: from the
    /// oldest stored), at most `limit` notifications ([`Reply::History`]). Authorized as a subscription.
    pub fn history(
        &mut self,
        now: Instant,
        stream: &str,
        after: Option<Cursor>,
        limit: Option<u32>,
    ) -> Result<RequestId, EngineError> {
        let now = self.tick(now);
        StreamName::parse(stream).map_err(EngineError::InvalidArgument)?;
        if let Some(limit) = limit
            && !(1..=protocol::MAX_HISTORY_PAGE).contains(&limit)
        {
            return Err(EngineError::InvalidArgument(format!("limit must be 1 to {}", protocol::MAX_HISTORY_PAGE)));
        }
        let position = after.map(|c| (c.epoch, c.offset));
        Ok(self.add_request(now, Kind::History { stream: stream.to_owned(), position, limit }))
    }

    // ----------------------------------------------------------------------------------------------------
    // Internals

    fn add_change(&mut self, now: Instant, change: InboxChange) -> RequestId {
        let op_id = format!("o-{:016x}", self.rng.u64(..));
        let id = self.add_request(now, Kind::Change { op_id, change });
        self.mark_dirty();
        self.request_persist(now);
        id
    }

    fn add_request(&mut self, now: Instant, kind: Kind) -> RequestId {
        self.inbox.next_request += 1;
        let id = RequestId(self.inbox.next_request);
        let deadline = match kind {
            Kind::Change { .. } => None,
            _ => Some(now + self.config.request_timeout),
        };
        self.inbox.pending.push(Pending { id, kind, deadline, sent: None });
        self.sync_request_timer();
        if self.is_connected() {
            self.send_inbox_requests();
        }
        id
    }

    fn sync_request_timer(&mut self) {
        match self.inbox.pending.iter().filter_map(|p| p.deadline).min() {
            Some(at) => self.timers.set(Timer::Request, at),
            None => self.timers.stop(Timer::Request),
        }
    }

    /// After `welcome`, and for each new request while connected: `inbox_watch` once per connection, then every
    /// request not yet sent on this connection, in the order they were made.
    pub(super) fn send_inbox_requests(&mut self) {
        let Some(conn) = self.current_conn() else { return };
        if self.config.watch_inbox && self.inbox.watched != Some(conn) {
            self.inbox.watched = Some(conn);
            let reference = self.next_ref();
            self.track(reference, Request::InboxWatch);
            self.queue(&ClientFrame::InboxWatch { reference });
        }
        for i in 0..self.inbox.pending.len() {
            if self.inbox.pending[i].sent.is_some_and(|(c, _)| c == conn) {
                continue;
            }
            let reference = self.next_ref();
            let pending = &mut self.inbox.pending[i];
            pending.sent = Some((conn, reference));
            let frame = match &pending.kind {
                Kind::List { query, .. } => ClientFrame::InboxList { reference, query: query.clone() },
                Kind::History { stream, position, limit } => ClientFrame::History {
                    reference,
                    stream: stream.clone(),
                    position: position.clone(),
                    limit: *limit,
                },
                Kind::Change { op_id, change: InboxChange::Mark { action, ids } } => {
                    ClientFrame::InboxMark { reference, op_id: op_id.clone(), action: *action, ids: ids.clone() }
                }
                Kind::Change { op_id, change: InboxChange::MarkAll { action, up_to } } => {
                    ClientFrame::InboxMarkAll { reference, op_id: op_id.clone(), action: *action, up_to: *up_to }
                }
            };
            self.queue(&frame);
        }
    }

    /// Removes the request answered by `reference` on the current connection.
    fn take_pending(&mut self, reference: u64) -> Option<Pending> {
        let conn = self.current_conn()?;
        let i = self.inbox.pending.iter().position(|p| p.sent == Some((conn, reference)))?;
        let pending = self.inbox.pending.remove(i);
        if matches!(pending.kind, Kind::Change { .. }) {
            self.mark_dirty();
        }
        self.sync_request_timer();
        Some(pending)
    }

    /// An `inbox`, `inbox_page` or `history_page` frame from the socket.
    pub(super) fn on_inbox_frame(&mut self, now: Instant, frame: ServerFrame) {
        match frame {
            ServerFrame::Inbox(update) => {
                self.apply_inbox(&update, true);
                if let Some(reference) = update.reference {
                    self.answered(reference, None);
                    if let Some(p) = self.take_pending(reference) {
                        self.replies.push_back((p.id, Ok(Reply::Changed(update))));
                        self.request_persist(now);
                    }
                }
            }
            ServerFrame::InboxPage(page) => {
                self.answered(page.reference, None);
                let Some(p) = self.take_pending(page.reference) else { return };
                if let Kind::List { into_view: true, .. } = p.kind {
                    self.merge_page(&page);
                } else {
                    self.apply_counts(page.counts);
                }
                self.replies.push_back((p.id, Ok(Reply::Page(page))));
            }
            ServerFrame::HistoryPage(page) => {
                self.answered(page.reference, None);
                if let Some(p) = self.take_pending(page.reference) {
                    self.replies.push_back((p.id, Ok(Reply::History(page))));
                }
            }
            _ => {}
        }
    }

    /// A page of the view that another engine loaded (the tab that holds the socket, for this tab): its items join
    /// the view, as those of [`Engine::inbox_load_more`].
    pub fn inbox_merge_page(&mut self, now: Instant, page: &InboxPage) {
        self.tick(now);
        self.merge_page(page);
    }

    fn merge_page(&mut self, page: &InboxPage) {
        self.apply_counts(page.counts);
        let mut changed = false;
        for item in &page.items {
            changed |= self.inbox.apply_item(item);
        }
        if page.next.is_none() && !self.inbox.complete {
            self.inbox.complete = true;
            changed = true;
        }
        self.inbox.trim(self.config.inbox_view_capacity);
        if changed {
            self.events.push_back(Event::InboxChanged);
        }
    }

    /// Takes the queued inbox changes of `snapshot` that this engine does not hold (a browser tab that starts to
    /// lead takes over what the previous leader queued and stored).
    pub fn adopt_inbox_queue(&mut self, now: Instant, snapshot: &super::Snapshot) {
        self.tick(now);
        self.take_inbox_state(snapshot.inbox, &snapshot.inbox_queue);
    }

    /// A request-scoped error: true when it answered one of the inbox's requests.
    pub(super) fn inbox_refused(&mut self, now: Instant, reference: u64, e: &ErrorFrame) -> bool {
        let Some(p) = self.take_pending(reference) else { return false };
        // A change the server refused is not sent again: it would be refused again.
        self.replies.push_back((p.id, Err(RequestError::Refused { code: e.code, message: e.message.clone() })));
        self.request_persist(now);
        true
    }

    /// Counts, items, removals and a mark from an `inbox` frame (ours, or relayed from the tab that holds the
    /// socket). `live`: the frame came from this engine's socket or a relay (not from a page).
    pub(super) fn apply_inbox(&mut self, update: &InboxUpdate, _live: bool) {
        self.apply_counts(update.counts);
        let mut changed = false;
        for item in &update.items {
            changed |= self.inbox.apply_item(item);
        }
        for id in &update.removed {
            if let Some(n) = self.inbox.view.iter().position(|i| &i.id == id) {
                self.inbox.view.remove(n);
                changed = true;
            }
        }
        if let Some(mark) = &update.mark {
            changed |= self.inbox.apply_mark(mark);
        }
        self.inbox.trim(self.config.inbox_view_capacity);
        if changed {
            self.events.push_back(Event::InboxChanged);
        }
    }

    /// Takes `counts` if they are newer than the ones held. Counts whose head is below the view's newest item
    /// come from an inbox the server lost and started again: the view is dropped.
    fn apply_counts(&mut self, counts: InboxCounts) {
        if self.inbox.counts.is_some_and(|held| counts.version <= held.version) {
            return;
        }
        self.inbox.counts = Some(counts);
        if self.inbox.view.last().is_some_and(|newest| newest.seq > counts.head) {
            self.inbox.view.clear();
            self.inbox.complete = false;
            self.events.push_back(Event::InboxChanged);
        }
        self.mark_dirty();
        self.events.push_back(Event::InboxCounts(counts));
    }

    /// Reads that waited longer than `request_timeout` fail.
    pub(super) fn inbox_timers(&mut self, now: Instant) {
        if !self.timers.is_expired(Timer::Request, now) {
            return;
        }
        let (expired, kept): (Vec<Pending>, Vec<Pending>) =
            std::mem::take(&mut self.inbox.pending).into_iter().partition(|p| p.deadline.is_some_and(|d| d <= now));
        self.inbox.pending = kept;
        for p in expired {
            self.replies.push_back((p.id, Err(RequestError::TimedOut)));
        }
        self.sync_request_timer();
    }

    /// The application closed the client: reads fail; changes stay queued in the snapshot.
    pub(super) fn inbox_closed(&mut self) {
        let (reads, changes): (Vec<Pending>, Vec<Pending>) =
            std::mem::take(&mut self.inbox.pending).into_iter().partition(|p| p.deadline.is_some());
        self.inbox.pending = changes;
        for p in reads {
            self.replies.push_back((p.id, Err(RequestError::Closed)));
        }
        self.inbox.watched = None;
        self.sync_request_timer();
    }

    /// The queued changes, for the snapshot.
    pub(super) fn inbox_queue(&self) -> Vec<QueuedChange> {
        self.inbox
            .pending
            .iter()
            .filter_map(|p| match &p.kind {
                Kind::Change { op_id, change } => Some(QueuedChange { op_id: op_id.clone(), change: change.clone() }),
                _ => None,
            })
            .collect()
    }

    /// Takes counts and queued changes from a snapshot: the counts when newer, the changes this engine does not
    /// hold yet (by op id). Their answers come as replies to request ids the application never saw.
    pub(super) fn take_inbox_state(&mut self, counts: Option<InboxCounts>, queue: &[QueuedChange]) {
        if let Some(counts) = counts
            && self.inbox.counts.is_none_or(|held| counts.version > held.version)
        {
            self.inbox.counts = Some(counts);
            self.events.push_back(Event::InboxCounts(counts));
        }
        for q in queue {
            let known =
                self.inbox.pending.iter().any(|p| matches!(&p.kind, Kind::Change { op_id, .. } if *op_id == q.op_id));
            if !known {
                self.inbox.next_request += 1;
                let id = RequestId(self.inbox.next_request);
                let kind = Kind::Change { op_id: q.op_id.clone(), change: q.change.clone() };
                self.inbox.pending.push(Pending { id, kind, deadline: None, sent: None });
            }
        }
        if self.is_connected() {
            self.send_inbox_requests();
        }
    }

    /// The next answer to a request (one kind of [`Engine::poll_output`]; for tests and tools).
    pub fn poll_reply(&mut self) -> Option<(RequestId, Result<Reply, RequestError>)> {
        self.replies.pop_front()
    }

    /// The output of [`Engine::poll_reply`], if any.
    pub(super) fn reply_output(&mut self) -> Option<Output> {
        self.poll_reply().map(|(request, result)| Output::Reply { request, result })
    }
}

/// How long reads wait for an answer by default.
pub(super) const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Items the view holds at most by default.
pub(super) const DEFAULT_VIEW_CAPACITY: usize = 500;

/// Replies waiting for the driver, in order.
pub(super) type Replies = VecDeque<(RequestId, Result<Reply, RequestError>)>;
