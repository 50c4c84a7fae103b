//! The protocol session of one connection, sans-IO: a state machine fed with client frames, the results of the
//! store work it asked for, close requests from elsewhere and the current time; drained for outgoing frames and
//! actions ([`Session::poll_output`]) and for its next deadline ([`Session::poll_timeout`]). It decides
//! everything the protocol says — authentication and token refresh and expiry, subscriptions with the replay
//! decision, unsubscribes, acks, push registration, heartbeats, liveness and limits — and touches no socket,
//! clock, store or registry. A driver moves the bytes (`ws` for WebSocket) and carries out the actions.
//!
//! Live notifications do not pass through the session: the registry queues the frame each publication shares
//! straight into the connection's outbound queue (one reference count per delivery). What the session decides
//! about them — which ones may follow a subscribe's replay — it hands over with the reply
//! ([`Output::Subscribed`], [`LiveFilter`]).
//!
//! Requests are answered in order. A request whose answer needs the store (`subscribe`, `register_push`, the inbox
//! and history requests) makes the session wait for its result ([`Session::handle_history`],
//! [`Session::handle_push_registered`], [`Session::handle_reply`]); frames that arrive meanwhile are handled after
//! it.
//!
//! Two drivers run sessions: `ws` (WebSocket: the client's frames come from the socket) and `sse` (Server-Sent
//! Events: the request's parameters become the frames — a verified identity, a `subscribe` with the resume
//! token's positions, an `inbox_watch` — and the client sends nothing else, so the session does not expect its
//! heartbeats).

mod replay;
pub(crate) mod sse;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use tidings_core::protocol::{
    ClientFrame, DEFAULT_HISTORY_PAGE, ErrorCode, ErrorFrame, FrameRejection, HistoryPage, InboxAction, InboxPage,
    InboxQuery, InboxUpdate, MAX_HISTORY_PAGE, MAX_IDS_PER_ACK, MAX_IDS_PER_INBOX_MARK, MAX_SERVER_FRAME_BYTES,
    MAX_STREAMS_PER_CONNECTION, MAX_STREAMS_PER_SUBSCRIBE, PushPlatform, ServerFrame, StreamName, SubscribeEntry,
    decode_client_request, encode_server_frame, validate_id, validate_op_id, validate_push_token,
};
use tokio::time::Instant;

pub(crate) use replay::{Decision, LiveFilter};

use crate::auth::{TokenError, TokenVerifier, TopicPatterns, VerifiedToken, authorize_stream};
use crate::model::HistoryRead;
use crate::store::{ChangeKind, ChangeRequest, StoreError};
use crate::util::new_session_id;

/// `{"op":"heartbeat"}`, encoded once.
pub(crate) const HEARTBEAT: &str = r#"{"op":"heartbeat"}"#;
/// How long to wait before reconnecting after `try_again_later` or `rate_limited`.
pub(crate) const RETRY_AFTER_MS: u64 = 5000;
/// Most frames held while a request waits for the store (a client that pipelines more is misbehaving).
const MAX_DEFERRED: usize = 1024;

/// What a session needs to know of the server's configuration.
#[derive(Clone, Debug)]
pub(crate) struct SessionConfig {
    pub(crate) heartbeat_interval: Duration,
    pub(crate) auth_timeout: Duration,
    pub(crate) rate_limit_frames_per_sec: u32,
    pub(crate) rate_limit_seconds: u32,
    /// Whether the client sends heartbeats (WebSocket): then a client silent for twice the interval is gone. An
    /// SSE client sends nothing; a broken connection shows when a write fails.
    pub(crate) client_heartbeats: bool,
}

impl SessionConfig {
    pub(crate) fn from_config(config: &crate::ServerConfig) -> Self {
        SessionConfig {
            heartbeat_interval: config.heartbeat_interval,
            auth_timeout: config.auth_timeout,
            rate_limit_frames_per_sec: config.rate_limit_frames_per_sec,
            rate_limit_seconds: config.rate_limit_seconds,
            client_heartbeats: true,
        }
    }

    /// For SSE sessions: heartbeats (comments) every `sse_heartbeat`, and no client heartbeats expected.
    pub(crate) fn for_sse(config: &crate::ServerConfig) -> Self {
        SessionConfig {
            heartbeat_interval: config.sse_heartbeat,
            client_heartbeats: false,
            ..Self::from_config(config)
        }
    }
}

/// Shared by every session of a server.
#[derive(Debug)]
pub(crate) struct SessionParams {
    pub(crate) config: SessionConfig,
    /// The configuration of SSE sessions.
    pub(crate) sse: SessionConfig,
    pub(crate) verifier: TokenVerifier,
}

/// Why a connection ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Exit {
    /// Send an `error` with this code, then close with the code's close code.
    Error {
        code: ErrorCode,
        message: String,
        retry_after_ms: Option<u64>,
        /// Wait for the client's close reply (only when the input stream is still in a readable state).
        linger: bool,
    },
    /// The client closed the connection (a close frame was received).
    ClosedByClient(Option<u16>),
    /// The transport broke; nothing more can be sent.
    Gone(String),
}

impl Exit {
    pub(crate) fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        Exit::Error { code, message: message.into(), retry_after_ms: None, linger: true }
    }

    pub(crate) fn protocol(message: impl Into<String>) -> Self {
        Exit::error(ErrorCode::ProtocolError, message)
    }

    fn retry_later(code: ErrorCode, message: impl Into<String>) -> Self {
        Exit::Error { code, message: message.into(), retry_after_ms: Some(RETRY_AFTER_MS), linger: true }
    }
}

/// The message of the `error` that tells a client an operator ended its subscription of a stream.
pub(crate) const REVOKED: &str = "an operator ended this subscription (POST /v1/admin/unsubscribe)";

/// What the session wants done, in order.
#[derive(Debug)]
pub(crate) enum Output {
    /// Queue this frame (a reply, an error or a heartbeat: never dropped for queue limits).
    Frame(Utf8Bytes),
    /// A token was refused (for the server's counters and the failed-authentication throttle): `expired` when it
    /// was only too old.
    AuthFailed { expired: bool },
    /// The connection authenticated: register it as `device` of `user` (replacing an older connection of the
    /// device) and in presence. `welcome` follows as a [`Output::Frame`].
    Authenticated { user: Arc<str>, device: Arc<str>, session: Arc<str>, client: Option<String>, connected_at: u64 },
    /// Register the connection as a syncing subscriber of `stream`, then read its history from `position` and
    /// hand the result to [`Session::handle_history`].
    Subscribe { stream: Arc<str>, position: Option<(String, u64)> },
    /// The subscription of `stream` is answered: queue `frames` (`subscribed` and the replay), then the
    /// notifications that arrived while it synced and that `filter` admits, and make it live
    /// (`Registry::finish_subscribe`).
    Subscribed { stream: Arc<str>, frames: Vec<Utf8Bytes>, filter: LiveFilter, replayed: u64, continuity: Decision },
    /// Stop delivering `stream` to this connection.
    Unsubscribe { stream: Arc<str> },
    /// Record that this device received these notifications.
    Acks { ids: Vec<String> },
    /// Store this device's push address and hand the result to [`Session::handle_push_registered`].
    RegisterPush { platform: PushPlatform, token: String },
    /// Carry out `request` for the connection's user and hand the result to [`Session::handle_reply`].
    Request(Request),
    /// End the connection.
    Close(Exit),
}

/// A request answered from the stores (protocol §13, §14).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Request {
    /// Send this connection every change of the user's inbox from now on; answer with the counts.
    InboxWatch,
    /// A page of the user's inbox.
    InboxList(InboxQuery),
    /// A change of the user's inbox (every other watching connection is told).
    InboxChange(ChangeRequest),
    /// A page of a stream's stored history (authorized like a subscribe).
    History { stream: String, position: Option<(String, u64)>, limit: usize },
}

/// The result of a [`Request`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Reply {
    /// For `InboxWatch` and `InboxChange`.
    Inbox(InboxUpdate),
    /// For `InboxList`.
    Page(InboxPage),
    /// For `History`.
    History(HistoryPage),
}

/// The authenticated identity of a connection.
#[derive(Clone, Debug)]
pub(crate) struct Identity {
    pub(crate) user: Arc<str>,
    pub(crate) device: Arc<str>,
    pub(crate) session: Arc<str>,
    topics: TopicPatterns,
}

/// A request waiting for the store.
#[derive(Debug)]
enum Waiting {
    Subscribe { reference: u64, stream: Arc<str>, position: Option<(String, u64)> },
    RegisterPush { reference: u64, platform: PushPlatform },
    Request { reference: u64, stream: Option<String> },
}

/// Frames-per-second accounting for the rate limit (protocol §6.1, `rate_limited`).
#[derive(Debug)]
struct RateWindow {
    started: Instant,
    count: u32,
    /// Consecutive full seconds over the limit before the current one.
    strikes: u32,
}

impl RateWindow {
    /// Counts one frame at `now`; true when the limit has now been exceeded for `seconds` seconds in a row.
    fn exceeded(&mut self, now: Instant, per_sec: u32, seconds: u32) -> bool {
        if per_sec == 0 {
            return false;
        }
        let elapsed = now.saturating_duration_since(self.started);
        if elapsed >= Duration::from_secs(1) {
            self.strikes = if elapsed < Duration::from_secs(2) && self.count > per_sec { self.strikes + 1 } else { 0 };
            self.started = now;
            self.count = 0;
        }
        self.count += 1;
        self.count > per_sec && self.strikes + 1 >= seconds.max(1)
    }
}

/// One connection's protocol state.
#[derive(Debug)]
pub(crate) struct Session {
    params: Arc<SessionParams>,
    opened: Instant,
    /// Wall-clock time at `opened` (ms since the Unix epoch): the session reads no clock of its own.
    opened_wall_ms: u64,
    last_received: Instant,
    last_sent: Instant,
    token_deadline: Option<Instant>,
    identity: Option<Identity>,
    rate: RateWindow,
    /// Streams subscribed (or being subscribed) on this connection.
    streams: Vec<Arc<str>>,
    waiting: Option<Waiting>,
    /// Entries of a `subscribe` frame not answered yet.
    entries: VecDeque<(u64, SubscribeEntry)>,
    /// Frames that arrived while a request waited.
    deferred: VecDeque<ClientFrame>,
    output: VecDeque<Output>,
    closed: bool,
    /// The connection watches its user's inbox (asked with `inbox_watch`).
    watching_inbox: bool,
    /// A Server-Sent Events session (see [`SessionConfig::client_heartbeats`]).
    sse: bool,
}

impl Session {
    /// A session for a connection opened at `now` (`wall_ms` is the wall-clock time then).
    pub(crate) fn new(now: Instant, wall_ms: u64, params: Arc<SessionParams>) -> Self {
        Self::with_transport(now, wall_ms, params, false)
    }

    /// A session for a Server-Sent Events response opened at `now`.
    pub(crate) fn new_sse(now: Instant, wall_ms: u64, params: Arc<SessionParams>) -> Self {
        Self::with_transport(now, wall_ms, params, true)
    }

    fn with_transport(now: Instant, wall_ms: u64, params: Arc<SessionParams>, sse: bool) -> Self {
        Session {
            watching_inbox: false,
            sse,
            params,
            opened: now,
            opened_wall_ms: wall_ms,
            last_received: now,
            last_sent: now,
            token_deadline: None,
            identity: None,
            rate: RateWindow { started: now, count: 0, strikes: 0 },
            streams: Vec::new(),
            waiting: None,
            entries: VecDeque::new(),
            deferred: VecDeque::new(),
            output: VecDeque::new(),
            closed: false,
        }
    }

    /// The authenticated identity, once `auth` succeeded.
    pub(crate) fn identity(&self) -> Option<&Identity> {
        self.identity.as_ref()
    }

    /// The streams this connection subscribes to or is subscribing to (what to leave when it ends).
    pub(crate) fn streams(&self) -> &[Arc<str>] {
        &self.streams
    }

    /// Whether the connection watches its user's inbox (what to leave when it ends).
    pub(crate) fn watching_inbox(&self) -> bool {
        self.watching_inbox
    }

    fn config(&self) -> &SessionConfig {
        if self.sse { &self.params.sse } else { &self.params.config }
    }

    /// The next output, in order.
    pub(crate) fn poll_output(&mut self) -> Option<Output> {
        let next = self.output.pop_front();
        if next.is_none() && self.output.capacity() > 0 {
            // Drained: an idle connection keeps no room for outputs (an `Output` is large, and the queue's
            // smallest allocation holds four).
            self.output = VecDeque::new();
        }
        next
    }

    /// When [`Session::handle_timeout`] must be called next; `None` once the session is closed.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        if self.closed {
            return None;
        }
        let config = self.config();
        let hb = config.heartbeat_interval;
        let mut next = match &self.identity {
            None => self.opened + config.auth_timeout,
            Some(_) if config.client_heartbeats => (self.last_sent + hb).min(self.last_received + 2 * hb),
            Some(_) => self.last_sent + hb,
        };
        if let Some(token) = self.token_deadline {
            next = next.min(token);
        }
        Some(next)
    }

    fn wall_ms(&self, now: Instant) -> u64 {
        self.opened_wall_ms + now.saturating_duration_since(self.opened).as_millis() as u64
    }

    fn close(&mut self, exit: Exit) {
        if !self.closed {
            self.closed = true;
            self.output.push_back(Output::Close(exit));
        }
    }

    fn frame(&mut self, frame: &ServerFrame) {
        self.output.push_back(Output::Frame(Utf8Bytes::from(encode_server_frame(frame))));
    }

    fn request_error(&mut self, reference: Option<u64>, stream: Option<String>, code: ErrorCode, message: String) {
        self.frame(&ServerFrame::Error(ErrorFrame { reference, stream, code, message, retry_after_ms: None }));
    }

    // ---- inputs ----

    /// Something was written to the client at `now`.
    pub(crate) fn handle_sent(&mut self, now: Instant) {
        self.last_sent = self.last_sent.max(now);
    }

    /// Traffic that carries no frame (a WebSocket ping or pong) arrived at `now`.
    pub(crate) fn handle_traffic(&mut self, now: Instant) {
        self.last_received = self.last_received.max(now);
    }

    /// A binary message arrived: not part of the protocol.
    pub(crate) fn handle_binary(&mut self, now: Instant) {
        self.handle_traffic(now);
        self.close(Exit::protocol("binary messages are not part of the protocol; send JSON text frames"));
    }

    /// An operator ended this connection's subscription of `stream` (`POST /v1/admin/unsubscribe`): the stream is
    /// dropped and the client told with an `error` of code `forbidden` naming the stream, without `ref` (protocol
    /// §2.5). A subscribe of the stream still reading its history completes (it counts as a later subscribe);
    /// a stream the connection does not have is ignored.
    pub(crate) fn handle_revoke(&mut self, stream: &str, message: &str) {
        if matches!(&self.waiting, Some(Waiting::Subscribe { stream: syncing, .. }) if **syncing == *stream) {
            return;
        }
        let Some(i) = self.streams.iter().position(|s| **s == *stream) else { return };
        let stream = self.streams.swap_remove(i);
        self.output.push_back(Output::Unsubscribe { stream: stream.clone() });
        self.request_error(None, Some(stream.to_string()), ErrorCode::Forbidden, message.to_owned());
    }

    /// Another part of the server asks the connection to close (operator drop, shutdown, a newer session of
    /// the device, a slow consumer).
    pub(crate) fn handle_close_request(&mut self, code: ErrorCode, message: String) {
        self.close(Exit::error(code, message));
    }

    /// A text message (one client frame) arrived at `now`.
    pub(crate) fn handle_text(&mut self, now: Instant, text: &str) {
        if self.closed {
            return;
        }
        self.handle_traffic(now);
        let config = self.config();
        let (per_sec, seconds) = (config.rate_limit_frames_per_sec, config.rate_limit_seconds);
        if self.rate.exceeded(now, per_sec, seconds) {
            let message = format!("more than {per_sec} frames per second for {seconds} s");
            self.close(Exit::retry_later(ErrorCode::RateLimited, message));
            return;
        }
        // The core classifies what it cannot decode (protocol §6.3): answered when it can be, the end otherwise.
        let frame = match decode_client_request(text) {
            Ok(frame) => frame,
            Err(rejection) => return self.on_rejected(now, rejection),
        };
        self.handle_frame(now, frame);
    }

    /// A client frame arrived at `now` (decoded by the caller: the SSE driver makes its frames from the request).
    pub(crate) fn handle_frame(&mut self, now: Instant, frame: ClientFrame) {
        if self.closed {
            return;
        }
        if self.waiting.is_some() || !self.entries.is_empty() {
            if self.deferred.len() >= MAX_DEFERRED {
                let message = format!("more than {MAX_DEFERRED} frames sent while a request was being answered");
                return self.close(Exit::retry_later(ErrorCode::TryAgainLater, message));
            }
            self.deferred.push_back(frame);
            return;
        }
        self.on_frame(now, frame);
        self.pump(now);
    }

    /// The deadline from [`Session::poll_timeout`] passed.
    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        if self.closed {
            return;
        }
        let config = self.config();
        let (hb, client_heartbeats) = (config.heartbeat_interval, config.client_heartbeats);
        if self.identity.is_none() {
            if now >= self.opened + config.auth_timeout {
                let message = format!("no auth frame within {} ms of the upgrade", config.auth_timeout.as_millis());
                self.close(Exit::error(ErrorCode::AuthTimeout, message));
            }
            return;
        }
        if self.token_deadline.is_some_and(|deadline| now >= deadline) {
            return self.close(Exit::error(ErrorCode::TokenExpired, "the token expired during the session"));
        }
        if client_heartbeats && now >= self.last_received + 2 * hb {
            let message = format!("nothing received for {} ms", (2 * hb).as_millis());
            return self.close(Exit::error(ErrorCode::HeartbeatTimeout, message));
        }
        if now >= self.last_sent + hb {
            self.output.push_back(Output::Frame(Utf8Bytes::from_static(HEARTBEAT)));
            // Counted as sent now, so that the timer moves on even before the driver writes it.
            self.last_sent = now;
        }
    }

    /// The history read asked for by [`Output::Subscribe`] of `stream` completed.
    pub(crate) fn handle_history(&mut self, now: Instant, stream: &str, result: Result<HistoryRead, StoreError>) {
        let Some(Waiting::Subscribe { reference, stream: waiting, position }) = self.waiting.take() else { return };
        if *waiting != *stream {
            self.waiting = Some(Waiting::Subscribe { reference, stream: waiting, position });
            return;
        }
        match result {
            Ok(read) => {
                let position = position.as_ref().map(|(e, o)| (e.as_str(), *o));
                let reply = replay::reply(reference, stream, read, position);
                self.output.push_back(Output::Subscribed {
                    stream: waiting,
                    frames: reply.frames,
                    filter: reply.filter,
                    replayed: reply.replayed,
                    continuity: reply.decision,
                });
                self.pump(now);
            }
            Err(e) => {
                tracing::warn!(stream, error = %e, "subscribe failed");
                self.close(Exit::retry_later(ErrorCode::TryAgainLater, format!("the stream {stream} is unavailable")));
            }
        }
    }

    /// The push registration asked for by [`Output::RegisterPush`] completed.
    pub(crate) fn handle_push_registered(&mut self, now: Instant, result: Result<(), StoreError>) {
        let Some(Waiting::RegisterPush { reference, platform }) = self.waiting.take() else {
            return;
        };
        match result {
            Ok(()) => self.frame(&ServerFrame::PushRegistered { reference, platform }),
            Err(e) => self.request_error(Some(reference), None, ErrorCode::TryAgainLater, e.to_string()),
        }
        self.pump(now);
    }

    /// The request asked for by [`Output::Request`] completed.
    pub(crate) fn handle_reply(&mut self, now: Instant, result: Result<Reply, StoreError>) {
        let Some(Waiting::Request { reference, stream }) = self.waiting.take() else { return };
        match result {
            Ok(Reply::Inbox(mut update)) => {
                update.reference = Some(reference);
                self.frame(&ServerFrame::Inbox(update));
            }
            Ok(Reply::Page(mut page)) => {
                page.reference = reference;
                self.frame(&ServerFrame::InboxPage(page));
            }
            Ok(Reply::History(mut page)) => {
                page.reference = reference;
                self.frame(&ServerFrame::HistoryPage(page));
            }
            Err(e) => {
                tracing::warn!(error = %e, "a request failed in the store");
                self.frame(&ServerFrame::Error(ErrorFrame {
                    reference: Some(reference),
                    stream,
                    code: ErrorCode::TryAgainLater,
                    message: format!("the store could not answer: {e}"),
                    retry_after_ms: Some(e.retry_after().as_millis() as u64),
                }));
            }
        }
        self.pump(now);
    }

    /// Handles what was held back, until a request waits again.
    fn pump(&mut self, now: Instant) {
        while self.waiting.is_none() && !self.closed {
            if let Some((reference, entry)) = self.entries.pop_front() {
                self.subscribe_entry(reference, entry);
            } else if let Some(frame) = self.deferred.pop_front() {
                self.on_frame(now, frame);
            } else {
                break;
            }
        }
        // Both are rarely used: an idle connection keeps no room for them.
        if self.entries.is_empty() && self.entries.capacity() > 0 {
            self.entries = VecDeque::new();
        }
        if self.deferred.is_empty() && self.deferred.capacity() > 0 {
            self.deferred = VecDeque::new();
        }
    }

    /// A client frame the core's decoder refused, classified by it (protocol §6.3): answered with a request-scoped
    /// error when it can be, the connection's end otherwise. Before `auth`, anything but an `auth` is the protocol
    /// error it always was.
    fn on_rejected(&mut self, now: Instant, rejection: FrameRejection) {
        if self.identity.is_none()
            && let Some(op) = rejection.op.filter(|op| *op != "auth")
        {
            return self.close(Exit::protocol(format!("the first frame must be auth, got {op}")));
        }
        if rejection.fatal {
            return self.close(Exit::error(rejection.code, rejection.message));
        }
        self.request_error(rejection.reference, None, rejection.code, rejection.message);
        self.pump(now);
    }

    fn on_frame(&mut self, now: Instant, frame: ClientFrame) {
        if self.identity.is_none() {
            return match frame {
                ClientFrame::Auth { token, device, client } => self.authenticate(now, &token, device, client),
                other => self.close(Exit::protocol(format!("the first frame must be auth, got {}", op_name(&other)))),
            };
        }
        match frame {
            ClientFrame::Auth { token, .. } => self.refresh(now, &token),
            ClientFrame::Subscribe { reference, streams } => {
                if streams.len() > MAX_STREAMS_PER_SUBSCRIBE {
                    let message =
                        format!("at most {MAX_STREAMS_PER_SUBSCRIBE} streams per subscribe, got {}", streams.len());
                    return self.request_error(Some(reference), None, ErrorCode::BadRequest, message);
                }
                self.entries.extend(streams.into_iter().map(|entry| (reference, entry)));
            }
            ClientFrame::Unsubscribe { reference, streams } => self.unsubscribe(reference, streams),
            ClientFrame::Ack { ids } => self.ack(ids),
            ClientFrame::RegisterPush { reference, platform, token } => self.register_push(reference, platform, token),
            ClientFrame::Heartbeat { echo } => {
                if echo {
                    self.output.push_back(Output::Frame(Utf8Bytes::from_static(HEARTBEAT)));
                }
            }
            ClientFrame::InboxWatch { reference } => {
                self.watching_inbox = true;
                self.request(reference, None, Request::InboxWatch);
            }
            ClientFrame::InboxList { reference, query } => match query.validate() {
                Ok(()) => self.request(reference, None, Request::InboxList(query)),
                Err(e) => self.request_error(Some(reference), None, ErrorCode::BadRequest, format!("inbox_list: {e}")),
            },
            ClientFrame::InboxMark { reference, op_id, action, ids } => match check_mark(&op_id, action, &ids) {
                Ok(()) => {
                    let kind = ChangeKind::Mark { action, ids };
                    self.change(now, reference, op_id, kind);
                }
                Err(e) => self.request_error(Some(reference), None, ErrorCode::BadRequest, e),
            },
            ClientFrame::InboxMarkAll { reference, op_id, action, up_to } => match check_op_id(&op_id) {
                Ok(()) => self.change(now, reference, op_id, ChangeKind::MarkAll { action, up_to }),
                Err(e) => {
                    self.request_error(Some(reference), None, ErrorCode::BadRequest, format!("inbox_mark_all: {e}"));
                }
            },
            ClientFrame::History { reference, stream, position, limit } => {
                self.history(reference, stream, position, limit)
            }
        }
    }

    fn request(&mut self, reference: u64, stream: Option<String>, request: Request) {
        self.output.push_back(Output::Request(request));
        self.waiting = Some(Waiting::Request { reference, stream });
    }

    fn change(&mut self, now: Instant, reference: u64, op_id: String, kind: ChangeKind) {
        let op_id = (!op_id.is_empty()).then_some(op_id);
        let request = ChangeRequest { op_id, at: self.wall_ms(now), kind };
        self.request(reference, None, Request::InboxChange(request));
    }

    fn history(&mut self, reference: u64, stream: String, position: Option<(String, u64)>, limit: Option<u32>) {
        let identity = self.identity.as_ref().expect("history only runs on authenticated sessions");
        let name = match StreamName::parse(&stream) {
            Ok(name) => name,
            Err(e) => return self.request_error(Some(reference), Some(stream), ErrorCode::BadRequest, e),
        };
        if let Err(message) = authorize_stream(&identity.user, &identity.topics, &name) {
            return self.request_error(Some(reference), Some(stream), ErrorCode::Forbidden, message);
        }
        if let Some(Err(e)) = position.as_ref().map(|(epoch, _)| validate_id(epoch)) {
            let message = format!("history: epoch {e}");
            return self.request_error(Some(reference), Some(stream), ErrorCode::BadRequest, message);
        }
        let limit = match limit {
            None => DEFAULT_HISTORY_PAGE,
            Some(limit) if (1..=MAX_HISTORY_PAGE).contains(&limit) => limit,
            Some(limit) => {
                let message = format!("history: limit must be 1 to {MAX_HISTORY_PAGE}, got {limit}");
                return self.request_error(Some(reference), Some(stream), ErrorCode::BadRequest, message);
            }
        };
        let request = Request::History { stream: stream.clone(), position, limit: limit as usize };
        self.request(reference, Some(stream), request);
    }

    fn verify(&mut self, token: &str, now: Instant) -> Option<VerifiedToken> {
        match self.params.verifier.verify_at(token, self.wall_ms(now)) {
            Ok(verified) => Some(verified),
            Err(e) => {
                self.output.push_back(Output::AuthFailed { expired: matches!(e, TokenError::Expired(_)) });
                self.close(match e {
                    TokenError::Unauthorized(message) => Exit::error(ErrorCode::Unauthorized, message),
                    TokenError::Expired(message) => Exit::error(ErrorCode::TokenExpired, message),
                });
                None
            }
        }
    }

    fn set_token_deadline(&mut self, now: Instant, expires_in_ms: Option<u64>) {
        self.token_deadline = expires_in_ms.map(|ms| now + Duration::from_millis(ms));
    }

    fn authenticate(&mut self, now: Instant, token: &str, device: String, client: Option<String>) {
        if let Err(e) = validate_id(&device) {
            return self.close(Exit::protocol(format!("auth: device {e}")));
        }
        let Some(verified) = self.verify(token, now) else { return };
        self.accept(now, verified, device, client);
    }

    /// The first input of an SSE session: an identity its driver verified already (from a token or a ticket), so
    /// that a refusal is an HTTP status rather than an event. Then as a successful `auth`.
    pub(crate) fn handle_verified(
        &mut self,
        now: Instant,
        verified: VerifiedToken,
        device: String,
        client: Option<String>,
    ) {
        if self.identity.is_some() || self.closed {
            return;
        }
        self.handle_traffic(now);
        self.accept(now, verified, device, client);
    }

    fn accept(&mut self, now: Instant, verified: VerifiedToken, device: String, client: Option<String>) {
        let identity = Identity {
            user: Arc::from(verified.user),
            device: Arc::from(device),
            session: Arc::from(new_session_id()),
            topics: verified.topics,
        };
        self.set_token_deadline(now, verified.expires_in_ms);
        self.output.push_back(Output::Authenticated {
            user: identity.user.clone(),
            device: identity.device.clone(),
            session: identity.session.clone(),
            client: client.map(|c| c.chars().take(128).collect()),
            connected_at: self.wall_ms(now),
        });
        let welcome = ServerFrame::Welcome {
            session: identity.session.to_string(),
            user: identity.user.to_string(),
            device: identity.device.to_string(),
            heartbeat_ms: self.config().heartbeat_interval.as_millis() as u64,
            max_frame_bytes: MAX_SERVER_FRAME_BYTES as u64,
            token_expires_in_ms: verified.expires_in_ms,
        };
        self.identity = Some(identity);
        self.frame(&welcome);
    }

    fn refresh(&mut self, now: Instant, token: &str) {
        let Some(verified) = self.verify(token, now) else { return };
        let identity = self.identity.as_mut().expect("refresh only runs on authenticated sessions");
        if *identity.user != verified.user {
            let message =
                format!("a refreshed token must be for user {}, got one for {}", identity.user, verified.user);
            return self.close(Exit::protocol(message));
        }
        identity.topics = verified.topics;
        tracing::debug!(user = %identity.user, session = %identity.session, "token refreshed");
        self.set_token_deadline(now, verified.expires_in_ms);
        self.frame(&ServerFrame::TokenRefreshed { token_expires_in_ms: verified.expires_in_ms });
    }

    /// Answers one entry of a `subscribe` frame: an error at once, or a store read to wait for.
    fn subscribe_entry(&mut self, reference: u64, entry: SubscribeEntry) {
        let identity = self.identity.as_ref().expect("subscribe only runs on authenticated sessions");
        let name = match StreamName::parse(&entry.stream) {
            Ok(name) => name,
            Err(e) => return self.request_error(Some(reference), Some(entry.stream), ErrorCode::BadRequest, e),
        };
        if let Err(message) = authorize_stream(&identity.user, &identity.topics, &name) {
            return self.request_error(Some(reference), Some(entry.stream), ErrorCode::Forbidden, message);
        }
        let position = match (entry.epoch, entry.offset) {
            (Some(epoch), Some(offset)) => Some((epoch, offset)),
            (None, None) => None,
            _ => {
                let message = format!("{}: epoch and offset must be given together", entry.stream);
                return self.request_error(Some(reference), Some(entry.stream), ErrorCode::BadRequest, message);
            }
        };
        let stream = match self.streams.iter().find(|s| ***s == *entry.stream) {
            Some(existing) => existing.clone(),
            None if self.streams.len() >= MAX_STREAMS_PER_CONNECTION => {
                let message = format!("at most {MAX_STREAMS_PER_CONNECTION} streams per connection");
                return self.request_error(Some(reference), Some(entry.stream), ErrorCode::BadRequest, message);
            }
            None => {
                let stream: Arc<str> = Arc::from(entry.stream);
                if self.streams.is_empty() {
                    // Most connections subscribe once: room for one stream, not the four a first push makes.
                    self.streams.reserve_exact(1);
                }
                self.streams.push(stream.clone());
                stream
            }
        };
        self.output.push_back(Output::Subscribe { stream: stream.clone(), position: position.clone() });
        self.waiting = Some(Waiting::Subscribe { reference, stream, position });
    }

    fn unsubscribe(&mut self, reference: u64, streams: Vec<String>) {
        if streams.len() > MAX_STREAMS_PER_CONNECTION {
            let message =
                format!("at most {MAX_STREAMS_PER_CONNECTION} streams per unsubscribe, got {}", streams.len());
            return self.request_error(Some(reference), None, ErrorCode::BadRequest, message);
        }
        for stream in streams {
            if let Err(e) = StreamName::parse(&stream) {
                self.request_error(Some(reference), Some(stream), ErrorCode::BadRequest, e);
                continue;
            }
            if let Some(i) = self.streams.iter().position(|s| **s == *stream) {
                let stream = self.streams.swap_remove(i);
                self.output.push_back(Output::Unsubscribe { stream });
            }
            self.frame(&ServerFrame::Unsubscribed { reference, stream });
        }
    }

    fn ack(&mut self, mut ids: Vec<String>) {
        if ids.len() > MAX_IDS_PER_ACK {
            let message = format!("at most {MAX_IDS_PER_ACK} ids per ack, got {}", ids.len());
            return self.request_error(None, None, ErrorCode::BadRequest, message);
        }
        if let Some(bad) = ids.iter().find_map(|id| validate_id(id).err().map(|e| format!("ack: id {id:?} {e}"))) {
            self.request_error(None, None, ErrorCode::BadRequest, bad);
            ids.retain(|id| validate_id(id).is_ok());
        }
        if !ids.is_empty() {
            self.output.push_back(Output::Acks { ids });
        }
    }

    fn register_push(&mut self, reference: u64, platform: PushPlatform, token: String) {
        let checked = validate_push_token(&token).and_then(|()| match platform {
            PushPlatform::WebPush => crate::webpush::check_subscription(&token)
                .map_err(|e| format!("{e} (a web_push token is the PushSubscription as JSON: endpoint and keys)")),
            _ => Ok(()),
        });
        if let Err(e) = checked {
            return self.request_error(
                Some(reference),
                None,
                ErrorCode::BadRequest,
                format!("register_push: token {e}"),
            );
        }
        self.output.push_back(Output::RegisterPush { platform, token });
        self.waiting = Some(Waiting::RegisterPush { reference, platform });
    }
}

fn op_name(frame: &ClientFrame) -> &'static str {
    match frame {
        ClientFrame::Auth { .. } => "auth",
        ClientFrame::Subscribe { .. } => "subscribe",
        ClientFrame::Unsubscribe { .. } => "unsubscribe",
        ClientFrame::Ack { .. } => "ack",
        ClientFrame::Heartbeat { .. } => "heartbeat",
        ClientFrame::RegisterPush { .. } => "register_push",
        ClientFrame::InboxWatch { .. } => "inbox_watch",
        ClientFrame::InboxList { .. } => "inbox_list",
        ClientFrame::InboxMark { .. } => "inbox_mark",
        ClientFrame::InboxMarkAll { .. } => "inbox_mark_all",
        ClientFrame::History { .. } => "history",
    }
}

fn check_op_id(op_id: &str) -> Result<(), String> {
    validate_op_id(op_id).map_err(|e| format!("op_id {e}"))
}

/// Checks an `inbox_mark` (also the HTTP `mark` body): op id, 1 to [`MAX_IDS_PER_INBOX_MARK`] valid ids.
pub(crate) fn check_mark(op_id: &str, _action: InboxAction, ids: &[String]) -> Result<(), String> {
    check_op_id(op_id).map_err(|e| format!("inbox_mark: {e}"))?;
    if ids.is_empty() || ids.len() > MAX_IDS_PER_INBOX_MARK {
        return Err(format!("inbox_mark: ids must hold 1 to {MAX_IDS_PER_INBOX_MARK} ids, got {}", ids.len()));
    }
    if let Some(bad) = ids.iter().find_map(|id| validate_id(id).err().map(|e| format!("inbox_mark: id {id:?} {e}"))) {
        return Err(bad);
    }
    Ok(())
}

#[cfg(test)]
mod tests;
