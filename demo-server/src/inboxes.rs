//! The node's side of inboxes (protocol §13) and stream history pages (§14): which connections watch which
//! user's inbox, turning committed `persistent` publications into inbox items, applying changes and telling every
//! watching device of the user, retention, and the requests sessions hand over (`session::Request`).
//!
//! Every change goes through the [`InboxStore`](crate::store::InboxStore), which returns the counts after it; the
//! node then encodes one `inbox` frame per change and hands it to the broker, which hands it back to every process
//! with a watcher of the user (here: this one), in any order — the frames carry versions, and clients apply only
//! counts newer than theirs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tidings_core::protocol::{
    HistoryPage, InboxUpdate, MAX_SERVER_FRAME_BYTES, Notification, ServerFrame, decode_server_frame,
    encode_server_frame,
};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use crate::model::{AppendOutcome, Delivery, EncodedFrame, Publication};
use crate::node::Node;
use crate::outbox::ConnHandle;
use crate::session::{Identity, Reply, Request};
use crate::store::{ChangeRequest, InboxAdd, InboxChange, StoreError};
use crate::util::now_ms;

/// How often retention runs.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// The connections watching each user's inbox, in this process.
#[derive(Default)]
pub(crate) struct InboxWatchers {
    users: Mutex<HashMap<Arc<str>, Vec<Arc<ConnHandle>>>>,
}

impl InboxWatchers {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Vec<Arc<ConnHandle>>>> {
        self.users.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `conn` watches `user`'s inbox (again: no effect).
    pub(crate) fn watch(&self, user: &Arc<str>, conn: &Arc<ConnHandle>) {
        let mut users = self.lock();
        let conns = users.entry(user.clone()).or_default();
        if !conns.iter().any(|c| c.id() == conn.id()) {
            conns.push(conn.clone());
        }
    }

    /// Connection `conn_id` stops watching `user`'s inbox.
    pub(crate) fn unwatch(&self, user: &str, conn_id: u64) {
        let mut users = self.lock();
        if let Some(conns) = users.get_mut(user) {
            conns.retain(|c| c.id() != conn_id);
            if conns.is_empty() {
                users.remove(user);
            }
        }
    }

    /// Queues `frame` to every connection watching `user`'s inbox; returns how many.
    pub(crate) fn fan_out(&self, user: &str, frame: &EncodedFrame) -> usize {
        let conns = self.lock().get(user).cloned().unwrap_or_default();
        for conn in &conns {
            conn.push_live(frame.utf8_bytes());
        }
        conns.len()
    }
}

/// The `inbox` frames telling watchers of `update` (no `ref`): one frame when it fits the frame limit, else the
/// items without their notifications, split over as many frames as needed (each with the counts; clients apply
/// items by their own version and counts only when newer).
pub(crate) fn live_frames(update: &InboxUpdate) -> Vec<EncodedFrame> {
    let live = InboxUpdate { reference: None, unknown: Vec::new(), duplicate: false, ..update.clone() };
    let text = encode_server_frame(&ServerFrame::Inbox(live.clone()));
    if text.len() <= MAX_SERVER_FRAME_BYTES {
        return vec![EncodedFrame::new(text)];
    }
    let mut bare = live;
    for item in &mut bare.items {
        item.notification = None;
    }
    let items = std::mem::take(&mut bare.items);
    let removed = std::mem::take(&mut bare.removed);
    // A bare item or id takes well under 300 bytes: 150 of them fit any frame.
    let mut frames = Vec::new();
    let mut first = true;
    for chunk in items.chunks(150) {
        let mut part = InboxUpdate { items: chunk.to_vec(), ..bare.clone() };
        if !first {
            part.mark = None;
        }
        first = false;
        frames.push(EncodedFrame::new(encode_server_frame(&ServerFrame::Inbox(part))));
    }
    for chunk in removed.chunks(150) {
        let part = InboxUpdate { removed: chunk.to_vec(), mark: None, ..bare.clone() };
        frames.push(EncodedFrame::new(encode_server_frame(&ServerFrame::Inbox(part))));
    }
    if frames.is_empty() {
        frames.push(EncodedFrame::new(encode_server_frame(&ServerFrame::Inbox(bare))));
    }
    frames
}

impl Node {
    /// Tells every device of the user watching the inbox about `change` (through the broker).
    pub(crate) fn broadcast_inbox(&self, change: &InboxChange) {
        if !change.changed() {
            return;
        }
        for frame in live_frames(&change.update) {
            self.broker.publish_inbox(&change.user, frame);
        }
    }

    /// Adds the committed `persistent` publications of a publish to the inboxes they go to (also those acknowledged
    /// as duplicates: a retried publish whose first attempt committed the notification but not its items completes
    /// them; items already added are not added again). Returns the error of the inbox store, if any.
    pub(crate) async fn add_to_inboxes(
        &self,
        published: &[(Arc<Publication>, &Result<AppendOutcome, StoreError>)],
    ) -> Result<(), StoreError> {
        let now = now_ms();
        let adds: Vec<InboxAdd> = published
            .iter()
            .filter(|(p, _)| p.persistence() == tidings_core::protocol::Persistence::Persistent)
            .filter_map(|(p, outcome)| match outcome {
                Ok(AppendOutcome::Appended { deliveries: d, .. } | AppendOutcome::Duplicate(d)) => {
                    Some(inbox_add(p, d, now))
                }
                Err(_) => None,
            })
            .filter(|add| !add.copies.is_empty())
            .collect();
        if adds.is_empty() {
            return Ok(());
        }
        let changes = self.stores.inbox.add(adds).await?;
        for change in &changes {
            self.broadcast_inbox(change);
        }
        Ok(())
    }

    /// Applies `request` to `user`'s inbox and tells every watching device.
    pub(crate) async fn inbox_change(&self, user: &str, request: ChangeRequest) -> Result<InboxChange, StoreError> {
        let change = self.stores.inbox.change(user, request).await?;
        self.broadcast_inbox(&change);
        Ok(change)
    }

    /// A page of `stream`'s stored history after `position`.
    pub(crate) async fn history_page(
        &self,
        stream: &str,
        position: Option<(&str, u64)>,
        limit: usize,
    ) -> Result<HistoryPage, StoreError> {
        let page = self.broker.page(stream, position, limit).await?;
        let items: Vec<Notification> = page
            .entries
            .iter()
            .filter_map(|e| match decode_server_frame(e.frame.as_str()) {
                Ok(ServerFrame::Notification(n)) => Some(n),
                _ => None,
            })
            .collect();
        let next = if page.more { page.entries.last().map(|e| e.offset) } else { None };
        Ok(HistoryPage {
            reference: 0,
            stream: stream.to_owned(),
            epoch: page.state.epoch.to_string(),
            head: page.state.head,
            oldest: page.oldest,
            items,
            next,
        })
    }

    /// Carries out a session's request for `identity` on connection `conn`.
    pub(crate) async fn request(
        &self,
        identity: &Identity,
        conn: &Arc<ConnHandle>,
        request: Request,
    ) -> Result<Reply, StoreError> {
        match request {
            Request::InboxWatch => {
                self.inbox_watchers.watch(&identity.user, conn);
                let counts = self.stores.inbox.counts(&identity.user).await?;
                Ok(Reply::Inbox(InboxUpdate { counts, ..InboxUpdate::default() }))
            }
            Request::InboxList(query) => Ok(Reply::Page(self.stores.inbox.list(&identity.user, query).await?)),
            Request::InboxChange(change) => {
                let change = self.inbox_change(&identity.user, change).await?;
                Ok(Reply::Inbox(InboxUpdate { unknown: change.unknown, ..change.update }))
            }
            Request::History { stream, position, limit } => {
                let position = position.as_ref().map(|(e, o)| (e.as_str(), *o));
                Ok(Reply::History(self.history_page(&stream, position, limit).await?))
            }
        }
    }

    /// Removes what retention says is too old, and tells the users' devices.
    pub(crate) async fn prune_inboxes(&self, now: u64) {
        loop {
            match self.stores.inbox.prune(now).await {
                Ok(changes) => {
                    let removed: usize = changes.iter().map(|c| c.update.removed.len()).sum();
                    for change in &changes {
                        self.broadcast_inbox(change);
                    }
                    if removed > 0 {
                        debug!(removed, users = changes.len(), "inbox items removed by retention");
                    }
                    if removed < crate::store::inbox::PRUNE_BATCH {
                        return;
                    }
                }
                Err(e) => {
                    warn!(error = %e, "inbox retention failed; it runs again later");
                    return;
                }
            }
        }
    }
}

/// The inbox add of publication `p` from where it was committed.
fn inbox_add(p: &Publication, deliveries: &[Delivery], at: u64) -> InboxAdd {
    let copies = deliveries
        .iter()
        .filter(|d| d.stream.starts_with("user:") || d.stream.starts_with("topic:"))
        .map(|d| {
            let mut fields = p.fields.clone();
            fields.stream.clone_from(&d.stream);
            fields.epoch.clone_from(&d.epoch);
            fields.offset = d.offset;
            Notification::from(fields)
        })
        .collect();
    InboxAdd { copies, at }
}

/// Runs retention every minute while the node lives.
pub(crate) fn spawn_retention(node: Weak<Node>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(PRUNE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(node) = node.upgrade() else { return };
            node.prune_inboxes(now_ms()).await;
        }
    })
}

#[cfg(test)]
mod tests {
    use tidings_core::protocol::{InboxCounts, InboxItem};

    use super::*;
    use crate::store::inbox_contract::note;

    #[test]
    fn a_change_too_large_for_one_frame_is_split_without_notifications() {
        let big = "x".repeat(4000);
        let items: Vec<InboxItem> = (0..400)
            .map(|i| {
                let mut n = note(&format!("n{i}"), "user:u", "t").to_fields();
                n.body = Some(big.clone());
                InboxItem {
                    id: format!("n{i}"),
                    seq: i,
                    version: 3,
                    inserted_at: 1,
                    seen_at: None,
                    read_at: None,
                    archived_at: None,
                    notification: Some(n.into()),
                }
            })
            .collect();
        let counts = InboxCounts { unseen: 400, unread: 400, total: 400, version: 3, head: 400 };
        let update = InboxUpdate { counts, items, ..InboxUpdate::default() };
        let frames = live_frames(&update);
        assert_eq!(frames.len(), 3, "400 bare items in frames of 150");
        let mut seen = 0;
        for f in &frames {
            assert!(f.len() <= MAX_SERVER_FRAME_BYTES);
            let ServerFrame::Inbox(u) = decode_server_frame(f.as_str()).unwrap() else { panic!() };
            assert_eq!(u.counts, counts, "every part carries the counts");
            assert!(u.items.iter().all(|i| i.notification.is_none()));
            seen += u.items.len();
        }
        assert_eq!(seen, 400);
        let small = InboxUpdate { counts, items: update.items[..2].to_vec(), ..InboxUpdate::default() };
        let frames = live_frames(&small);
        assert_eq!(frames.len(), 1);
        assert!(frames[0].as_str().contains("\"notification\""), "a small change keeps its notifications");
    }
}
