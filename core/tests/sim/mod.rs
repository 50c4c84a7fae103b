//! A deterministic harness for engine tests: simulated time, a scripted token provider, and a small model of
//! a protocol v1 server (streams, epochs, bounded buffers, the §5.4 replay decision).
#![allow(dead_code, unreachable_pub)]

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

use std::collections::BTreeMap;

use tidings_core::engine::{
    Action, Config, ConnId, Engine, Event, Output, Reply, RequestError, RequestId, TokenError, TransportFailure,
};
use tidings_core::protocol::{
    self, ArchivedFilter, ClientFrame, ErrorCode, ErrorFrame, GapReason, HistoryPage, InboxAction, InboxCounts,
    InboxItem, InboxMark, InboxPage, InboxUpdate, MarkAllAction, Notification, NotificationFields, Persistence,
    Priority, ServerFrame, StatusFilter, WireContinuity,
};
use tidings_core::time::Instant;

/// One stream on the model server.
#[derive(Debug)]
pub struct SimStream {
    pub epoch: String,
    pub head: u64,
    pub buffer: VecDeque<Notification>,
}

/// A model protocol server with one client connection at a time.
#[derive(Debug)]
pub struct SimServer {
    pub user: String,
    pub streams: HashMap<String, SimStream>,
    pub buffer_cap: usize,
    pub heartbeat_ms: u64,
    epoch_counter: u32,
    /// Streams the current connection subscribed to.
    pub subscribed: HashSet<String>,
    pub authed: bool,
    /// Frames the client sent, decoded.
    pub received: Vec<ClientFrame>,
    /// Tokens the server accepts; `None` accepts any.
    pub accept_tokens: Option<HashSet<String>>,
    pub token_expires_in_ms: Option<u64>,
    /// Answer every client heartbeat (a stand-in for the server's own idle heartbeats).
    pub answer_heartbeats: bool,
    /// Answer heartbeats that ask for an echo (off: a server gone silent).
    pub answer_echoes: bool,
    /// Follow a `gap` with what the stream's current epoch holds (`replayed`); off: a server that predates it.
    pub replay_on_gap: bool,
    /// Refuse `register_push` with this request-scoped error.
    pub refuse_push: Option<(ErrorCode, String)>,
    /// The user's inbox (a model of protocol §13, not the server's implementation).
    pub inbox: SimInbox,
    /// Refuse inbox changes with this request-scoped error.
    pub refuse_inbox: Option<(ErrorCode, String)>,
    /// Apply inbox requests but do not answer them (the answer is lost with the connection).
    pub swallow_inbox_answers: bool,
}

/// A model inbox: items with their state, counts recounted on demand, versions, op ids.
#[derive(Debug, Default)]
pub struct SimInbox {
    pub items: BTreeMap<u64, InboxItem>,
    pub version: u64,
    pub head: u64,
    pub ops: HashSet<String>,
    /// Changes applied (duplicates excluded).
    pub applied: u32,
    pub watching: bool,
}

impl SimInbox {
    pub fn counts(&self) -> InboxCounts {
        let live: Vec<&InboxItem> = self.items.values().filter(|i| i.archived_at.is_none()).collect();
        InboxCounts {
            unseen: live.iter().filter(|i| i.seen_at.is_none()).count() as u64,
            unread: live.iter().filter(|i| i.read_at.is_none()).count() as u64,
            total: live.len() as u64,
            version: self.version,
            head: self.head,
        }
    }

    /// Adds an item; the live frame for a watching connection.
    pub fn add(&mut self, id: &str) -> Option<String> {
        self.version += 1;
        self.head += 1;
        let n =
            notification(id, "user:alice", "e", Some(self.head), Priority::Important, None, Persistence::Persistent);
        let item = InboxItem {
            id: id.into(),
            seq: self.head,
            version: self.version,
            inserted_at: 1,
            seen_at: None,
            read_at: None,
            archived_at: None,
            notification: Some(n),
        };
        self.items.insert(self.head, item.clone());
        self.watching.then(|| {
            let update = InboxUpdate { counts: self.counts(), items: vec![item], ..InboxUpdate::default() };
            protocol::encode_server_frame(&ServerFrame::Inbox(update))
        })
    }

    fn apply(
        &mut self,
        op_id: &str,
        change: impl FnOnce(&mut SimInbox, u64) -> (Vec<InboxItem>, Option<InboxMark>),
    ) -> InboxUpdate {
        if !op_id.is_empty() && !self.ops.insert(op_id.to_owned()) {
            return InboxUpdate { counts: self.counts(), duplicate: true, ..InboxUpdate::default() };
        }
        self.applied += 1;
        self.version += 1;
        let (items, mark) = change(self, self.version);
        InboxUpdate { counts: self.counts(), items, mark, ..InboxUpdate::default() }
    }

    pub fn mark(&mut self, op_id: &str, action: InboxAction, ids: &[String]) -> InboxUpdate {
        self.apply(op_id, |inbox, v| {
            let mut changed = Vec::new();
            for item in inbox.items.values_mut().filter(|i| ids.contains(&i.id)) {
                match action {
                    InboxAction::Read => {
                        item.read_at.get_or_insert(v);
                        item.seen_at.get_or_insert(v);
                    }
                    InboxAction::Unread => item.read_at = None,
                    InboxAction::Seen => {
                        item.seen_at.get_or_insert(v);
                    }
                    InboxAction::Unseen => (item.seen_at, item.read_at) = (None, None),
                    InboxAction::Archive => {
                        item.archived_at.get_or_insert(v);
                    }
                    InboxAction::Unarchive => item.archived_at = None,
                }
                item.version = v;
                changed.push(InboxItem { notification: None, ..item.clone() });
            }
            (changed, None)
        })
    }

    pub fn mark_all(&mut self, op_id: &str, action: MarkAllAction, up_to: Option<u64>) -> InboxUpdate {
        let up_to = up_to.unwrap_or(self.head).min(self.head);
        self.apply(op_id, |inbox, v| {
            for item in inbox.items.range_mut(..=up_to).map(|(_, i)| i) {
                if action == MarkAllAction::Read {
                    item.read_at.get_or_insert(v);
                }
                item.seen_at.get_or_insert(v);
                item.version = v;
            }
            (Vec::new(), Some(InboxMark { action, up_to, at: v, version: v }))
        })
    }

    pub fn page(&self, reference: u64, before: Option<u64>, limit: usize, status: StatusFilter) -> InboxPage {
        let candidates: Vec<&InboxItem> = self
            .items
            .range(..before.unwrap_or(u64::MAX))
            .rev()
            .map(|(_, i)| i)
            .filter(|i| i.archived_at.is_none())
            .filter(|i| status != StatusFilter::Unread || i.read_at.is_none())
            .collect();
        let items: Vec<InboxItem> = candidates.iter().take(limit).map(|i| (*i).clone()).collect();
        let next = (candidates.len() > limit).then(|| items.last().map(|i| i.seq)).flatten();
        InboxPage { reference, items, next, counts: self.counts() }
    }
}

impl SimServer {
    pub fn new(user: &str) -> Self {
        SimServer {
            user: user.into(),
            streams: HashMap::new(),
            buffer_cap: 1000,
            heartbeat_ms: 25_000,
            epoch_counter: 0,
            subscribed: HashSet::new(),
            authed: false,
            received: Vec::new(),
            accept_tokens: None,
            token_expires_in_ms: None,
            answer_heartbeats: true,
            answer_echoes: true,
            replay_on_gap: false,
            refuse_push: None,
            inbox: SimInbox::default(),
            refuse_inbox: None,
            swallow_inbox_answers: false,
        }
    }

    fn stream(&mut self, name: &str) -> &mut SimStream {
        if !self.streams.contains_key(name) {
            self.epoch_counter += 1;
            let epoch = format!("ep{}", self.epoch_counter);
            self.streams.insert(name.into(), SimStream { epoch, head: 0, buffer: VecDeque::new() });
        }
        self.streams.get_mut(name).unwrap()
    }

    /// Forgets every stream's history (a restart with the in-memory store).
    pub fn lose_history(&mut self) {
        self.streams.clear();
    }

    /// Publishes one notification with `id` to `stream`; returns the frame the connected client should get,
    /// if it is subscribed.
    pub fn publish(&mut self, stream: &str, id: &str, priority: Priority, group: Option<&str>) -> Option<String> {
        self.publish_with(stream, id, priority, group, Persistence::Bufferable)
    }

    pub fn publish_with(
        &mut self,
        stream: &str,
        id: &str,
        priority: Priority,
        group: Option<&str>,
        persistence: Persistence,
    ) -> Option<String> {
        let cap = self.buffer_cap;
        let s = self.stream(stream);
        let offset = if persistence.is_buffered() {
            s.head += 1;
            Some(s.head)
        } else {
            None
        };
        let n = notification(id, stream, &s.epoch, offset, priority, group, persistence);
        if persistence.is_buffered() {
            s.buffer.push_back(n.clone());
            while s.buffer.len() > cap {
                s.buffer.pop_front();
            }
        }
        if self.authed && self.subscribed.contains(stream) {
            Some(protocol::encode_server_frame(&ServerFrame::Notification(n)))
        } else {
            None
        }
    }

    /// The push payload for the last notification with `id` on `stream`.
    pub fn push_payload(&self, stream: &str, id: &str) -> String {
        let n = self.streams[stream].buffer.iter().find(|n| n.id() == id).expect("published");
        format!(r#"{{"tidings":{}}}"#, protocol::encode_notification(n))
    }

    /// Handles a client frame; returns frames to send back (and whether to close with a code).
    pub fn on_client_frame(&mut self, text: &str) -> (Vec<String>, Option<u16>) {
        let frame = protocol::decode_client_frame(text).expect("engine sends valid frames");
        self.received.push(frame.clone());
        let mut out = Vec::new();
        match frame {
            ClientFrame::Auth { token, device, .. } => {
                if let Some(ok) = &self.accept_tokens
                    && !ok.contains(&token)
                {
                    out.push(error(ErrorCode::Unauthorized, "bad token"));
                    return (out, Some(protocol::close::UNAUTHORIZED));
                }
                if self.authed {
                    out.push(protocol::encode_server_frame(&ServerFrame::TokenRefreshed {
                        token_expires_in_ms: self.token_expires_in_ms,
                    }));
                } else {
                    self.authed = true;
                    out.push(protocol::encode_server_frame(&ServerFrame::Welcome {
                        session: "s-1".into(),
                        user: self.user.clone(),
                        device,
                        heartbeat_ms: self.heartbeat_ms,
                        max_frame_bytes: protocol::MAX_SERVER_FRAME_BYTES as u64,
                        token_expires_in_ms: self.token_expires_in_ms,
                    }));
                }
            }
            ClientFrame::Subscribe { reference, streams } => {
                let replay_on_gap = self.replay_on_gap;
                for entry in streams {
                    let s = self.stream(&entry.stream);
                    let (epoch, head) = (s.epoch.clone(), s.head);
                    let oldest = s.buffer.front().and_then(|n| n.offset).unwrap_or(head + 1);
                    // A gap may be followed by what the current epoch still holds (protocol §2.4), when the
                    // model plays a server that does so.
                    let held: Vec<Notification> =
                        if replay_on_gap { s.buffer.iter().cloned().collect() } else { vec![] };
                    let gap = |reason, missed, held: Vec<Notification>| {
                        (WireContinuity::Gap { reason, missed, replayed: held.len() as u64 }, held)
                    };
                    let (continuity, replay): (WireContinuity, Vec<Notification>) = match (entry.epoch, entry.offset) {
                        (None, _) | (_, None) => (WireContinuity::Fresh, vec![]),
                        (Some(e), _) if e != epoch => gap(GapReason::EpochChanged, None, held),
                        (_, Some(o)) if o > head => gap(GapReason::AheadOfStream, None, vec![]),
                        (_, Some(o)) if o + 1 < oldest => gap(GapReason::OutOfBuffer, Some(oldest - o - 1), held),
                        (_, Some(o)) => {
                            let items: Vec<Notification> =
                                s.buffer.iter().filter(|n| n.offset.unwrap() > o).cloned().collect();
                            (WireContinuity::Resumed { replayed: items.len() as u64 }, items)
                        }
                    };
                    out.push(protocol::encode_server_frame(&ServerFrame::Subscribed {
                        reference,
                        stream: entry.stream.clone(),
                        epoch,
                        offset: head,
                        continuity,
                    }));
                    out.extend(
                        replay.into_iter().map(|n| protocol::encode_server_frame(&ServerFrame::Notification(n))),
                    );
                    self.subscribed.insert(entry.stream);
                }
            }
            ClientFrame::Unsubscribe { reference, streams } => {
                for stream in streams {
                    self.subscribed.remove(&stream);
                    out.push(protocol::encode_server_frame(&ServerFrame::Unsubscribed { reference, stream }));
                }
            }
            ClientFrame::Heartbeat { echo } => {
                if (echo && self.answer_echoes) || self.answer_heartbeats {
                    out.push(protocol::encode_server_frame(&ServerFrame::Heartbeat));
                }
            }
            ClientFrame::Ack { .. } => {}
            ClientFrame::RegisterPush { reference, platform, .. } => match &self.refuse_push {
                Some((code, message)) => out.push(protocol::encode_server_frame(&ServerFrame::Error(ErrorFrame {
                    reference: Some(reference),
                    stream: None,
                    code: *code,
                    message: message.clone(),
                    retry_after_ms: None,
                }))),
                None => out.push(protocol::encode_server_frame(&ServerFrame::PushRegistered { reference, platform })),
            },
            ClientFrame::InboxWatch { reference } => {
                self.inbox.watching = true;
                let update =
                    InboxUpdate { reference: Some(reference), counts: self.inbox.counts(), ..InboxUpdate::default() };
                out.push(protocol::encode_server_frame(&ServerFrame::Inbox(update)));
            }
            ClientFrame::InboxList { reference, query } => {
                assert_eq!(query.archived, ArchivedFilter::Exclude, "the model lists unarchived items only");
                let page = self.inbox.page(reference, query.before, query.page_size(), query.status);
                out.push(protocol::encode_server_frame(&ServerFrame::InboxPage(page)));
            }
            ClientFrame::InboxMark { reference, op_id, action, ids } => {
                if let Some((code, message)) = &self.refuse_inbox {
                    out.push(request_error(reference, *code, message));
                } else {
                    let mut update = self.inbox.mark(&op_id, action, &ids);
                    update.reference = Some(reference);
                    if !self.swallow_inbox_answers {
                        out.push(protocol::encode_server_frame(&ServerFrame::Inbox(update)));
                    }
                }
            }
            ClientFrame::InboxMarkAll { reference, op_id, action, up_to } => {
                let mut update = self.inbox.mark_all(&op_id, action, up_to);
                update.reference = Some(reference);
                if !self.swallow_inbox_answers {
                    out.push(protocol::encode_server_frame(&ServerFrame::Inbox(update)));
                }
            }
            ClientFrame::History { reference, stream, position, limit } => {
                let s = self.stream(&stream);
                let after = position.filter(|(e, _)| *e == s.epoch).map_or(0, |(_, o)| o);
                let limit = limit.unwrap_or(100) as usize;
                let items: Vec<Notification> =
                    s.buffer.iter().filter(|n| n.offset.is_some_and(|o| o > after)).take(limit).cloned().collect();
                let more = s.buffer.iter().filter(|n| n.offset.is_some_and(|o| o > after)).count() > limit;
                let page = HistoryPage {
                    reference,
                    stream: stream.clone(),
                    epoch: s.epoch.clone(),
                    head: s.head,
                    oldest: s.buffer.front().and_then(|n| n.offset).unwrap_or(s.head + 1),
                    next: if more { items.last().and_then(|n| n.offset) } else { None },
                    items,
                };
                out.push(protocol::encode_server_frame(&ServerFrame::HistoryPage(page)));
            }
        }
        (out, None)
    }

    /// The connection ended.
    pub fn disconnect(&mut self) {
        self.authed = false;
        self.subscribed.clear();
        self.inbox.watching = false;
    }

    /// Acked ids, in order.
    pub fn acked(&self) -> Vec<String> {
        self.received
            .iter()
            .filter_map(|f| match f {
                ClientFrame::Ack { ids } => Some(ids.clone()),
                _ => None,
            })
            .flatten()
            .collect()
    }
}

pub fn request_error(reference: u64, code: ErrorCode, message: &str) -> String {
    protocol::encode_server_frame(&ServerFrame::Error(ErrorFrame {
        reference: Some(reference),
        stream: None,
        code,
        message: message.into(),
        retry_after_ms: None,
    }))
}

pub fn error(code: ErrorCode, message: &str) -> String {
    protocol::encode_server_frame(&ServerFrame::Error(ErrorFrame {
        reference: None,
        stream: None,
        code,
        message: message.into(),
        retry_after_ms: None,
    }))
}

pub fn notification(
    id: &str,
    stream: &str,
    epoch: &str,
    offset: Option<u64>,
    priority: Priority,
    group: Option<&str>,
    persistence: Persistence,
) -> Notification {
    Notification::from(NotificationFields {
        id: id.into(),
        stream: stream.into(),
        offset,
        epoch: epoch.into(),
        kind: "test".into(),
        priority,
        persistence,
        title: Some(format!("title {id}")),
        body: None,
        data: None,
        group: group.map(Into::into),
        created_at: 1,
    })
}

/// How the harness answers token requests.
#[derive(Clone, Debug)]
pub enum TokenPolicy {
    /// Always `token-<n>` where n counts fetches.
    Counting,
    /// Fail with this error.
    Fail(TokenError),
    /// Leave requests unanswered (the test answers them).
    Manual,
}

/// How the harness answers socket opens.
#[derive(Clone, Debug, PartialEq)]
pub enum OpenPolicy {
    Accept,
    Refuse(TransportFailure),
    /// Leave opens pending.
    Manual,
}

/// Engine + model server + simulated clock.
pub struct Harness {
    pub engine: Engine,
    pub server: SimServer,
    pub now: Instant,
    pub conn: Option<ConnId>,
    pub events: Vec<Event>,
    pub actions: Vec<Action>,
    pub token_policy: TokenPolicy,
    pub open_policy: OpenPolicy,
    pub token_fetches: Vec<bool>,
    pub opens: u32,
    pub pending_token: bool,
    pub pending_open: Option<ConnId>,
    /// Frames from the server still to be delivered (in order).
    inbound: VecDeque<String>,
    close_after_inbound: Option<u16>,
    /// Every frame handed to the engine's socket input, in order (what a leader tab relays).
    pub delivered_frames: Vec<String>,
    /// Hand frames to the engine decoded (`handle_frame`, as the browser driver does) instead of as text.
    pub decoded_input: bool,
    /// Where `Action::Persist` snapshots go (merging on save, as the file store does).
    pub store: tidings_core::store::MemoryStore,
    /// How many times the app restarted.
    pub restarts: u32,
    /// Answers to the app's requests, in order.
    pub replies: Vec<(RequestId, Result<Reply, RequestError>)>,
}

impl Harness {
    pub fn new(config: Config, user: &str) -> Self {
        Harness {
            engine: Engine::new(config, 42),
            server: SimServer::new(user),
            now: Instant::from_millis(1_000),
            conn: None,
            events: Vec::new(),
            actions: Vec::new(),
            token_policy: TokenPolicy::Counting,
            open_policy: OpenPolicy::Accept,
            token_fetches: Vec::new(),
            opens: 0,
            pending_token: false,
            pending_open: None,
            inbound: VecDeque::new(),
            close_after_inbound: None,
            delivered_frames: Vec::new(),
            decoded_input: false,
            store: tidings_core::store::MemoryStore::new(),
            restarts: 0,
            replies: Vec::new(),
        }
    }

    pub fn config() -> Config {
        let mut c = Config::new("ws://sim/v1/ws");
        c.persistence = false;
        c
    }

    /// Runs the engine's outputs to quiescence at the current time: drains `poll_output` (frames to the model
    /// server, actions answered per the policies, events logged), then hands the engine the next frame the server
    /// sent, until nothing moves.
    pub fn pump(&mut self) {
        for _ in 0..10_000 {
            let mut progressed = false;
            loop {
                match self.engine.poll_output() {
                    Output::Transmit(frame) => {
                        progressed = true;
                        if self.conn.is_some() {
                            let (replies, close) = self.server.on_client_frame(&frame);
                            self.inbound.extend(replies);
                            if close.is_some() {
                                self.close_after_inbound = close;
                            }
                        }
                    }
                    Output::Action(action) => {
                        progressed = true;
                        self.act(action);
                    }
                    Output::Event(e) => self.events.push(e),
                    Output::Reply { request, result } => self.replies.push((request, result)),
                    Output::Timeout(_) => break,
                }
            }
            if let Some(frame) = self.inbound.pop_front() {
                progressed = true;
                if let Some(conn) = self.conn {
                    self.delivered_frames.push(frame.clone());
                    if self.decoded_input {
                        match tidings_core::protocol::decode_server_frame(&frame) {
                            Ok(decoded) => self.engine.handle_frame(self.now, conn, decoded),
                            Err(e) => self.engine.handle_undecodable(self.now, conn, &e),
                        }
                    } else {
                        self.engine.handle_text(self.now, conn, &frame);
                    }
                }
            } else if let Some(code) = self.close_after_inbound.take() {
                progressed = true;
                if let Some(conn) = self.conn.take() {
                    self.server.disconnect();
                    self.engine.handle_transport_closed(self.now, conn, Some(code), "");
                }
            }
            if !progressed {
                return;
            }
        }
        panic!("engine did not quiesce");
    }

    fn act(&mut self, action: Action) {
        self.actions.push(action.clone());
        match action {
            Action::FetchToken { force_refresh } => {
                self.token_fetches.push(force_refresh);
                match &self.token_policy {
                    TokenPolicy::Counting => {
                        let t = format!("token-{}", self.token_fetches.len());
                        self.engine.handle_token(self.now, Ok(t));
                    }
                    TokenPolicy::Fail(e) => self.engine.handle_token(self.now, Err(e.clone())),
                    TokenPolicy::Manual => self.pending_token = true,
                }
            }
            Action::Open { conn, .. } => {
                self.opens += 1;
                match &self.open_policy {
                    OpenPolicy::Accept => {
                        self.server.disconnect();
                        self.conn = Some(conn);
                        self.engine.handle_transport_open(self.now, conn);
                    }
                    OpenPolicy::Refuse(f) => self.engine.handle_transport_failed(self.now, conn, f.clone()),
                    OpenPolicy::Manual => self.pending_open = Some(conn),
                }
            }
            Action::Close { conn, .. } => {
                if self.conn == Some(conn) {
                    self.conn = None;
                    self.server.disconnect();
                    self.inbound.clear();
                    self.close_after_inbound = None;
                }
            }
            Action::Persist(snapshot) => {
                tidings_core::store::Store::save(&self.store, &snapshot).expect("memory store");
            }
        }
    }

    /// The app closes its client (which persists) and starts again: a new engine restored from the store (which
    /// merges like the file store), connecting at once. Subscriptions are the app's to make again.
    pub fn restart(&mut self) {
        self.engine.close(self.now);
        self.pump();
        let config = self.engine.config().clone();
        self.restarts += 1;
        self.engine = Engine::new(config, 42 + u64::from(self.restarts));
        if let Some(snapshot) = tidings_core::store::Store::load(&self.store).expect("memory store") {
            self.engine.restore(self.now, &snapshot);
        }
        self.engine.connect(self.now);
        self.pump();
    }

    /// The app returns to the foreground after another process may have written the store.
    pub fn foreground_restore(&mut self) {
        if let Some(snapshot) = tidings_core::store::Store::load(&self.store).expect("memory store") {
            self.engine.restore(self.now, &snapshot);
        }
        self.pump();
    }

    /// Advances simulated time by `d`, firing every timer on the way.
    pub fn advance(&mut self, d: Duration) {
        let end = self.now + d;
        loop {
            self.pump();
            match self.engine.poll_timeout() {
                Some(t) if t <= end => {
                    self.now = self.now.max(t);
                    self.engine.handle_timeout(self.now);
                }
                _ => break,
            }
        }
        self.now = end;
        self.engine.handle_timeout(self.now);
        self.pump();
    }

    pub fn connect(&mut self) {
        self.engine.connect(self.now);
        self.pump();
    }

    /// Delivers a frame the server "sends" now.
    pub fn deliver(&mut self, frame: Option<String>) {
        if let Some(frame) = frame {
            self.inbound.push_back(frame);
        }
        self.pump();
    }

    /// Publishes and delivers live.
    pub fn publish(&mut self, stream: &str, id: &str, priority: Priority, group: Option<&str>) {
        let frame = self.server.publish(stream, id, priority, group);
        self.deliver(frame);
    }

    /// The server drops the connection (close code, no error frame).
    pub fn server_close(&mut self, code: Option<u16>) {
        if let Some(conn) = self.conn.take() {
            self.server.disconnect();
            self.inbound.clear();
            self.engine.handle_transport_closed(self.now, conn, code, "");
        }
        self.pump();
    }

    /// Events of one kind, taken out of the log.
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    pub fn notification_ids(&self) -> Vec<String> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::Notification(n) => Some(n.id().to_owned()),
                _ => None,
            })
            .collect()
    }

    pub fn states(&self) -> Vec<tidings_core::ConnectionState> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::State(s) => Some(s.clone()),
                _ => None,
            })
            .collect()
    }
}
