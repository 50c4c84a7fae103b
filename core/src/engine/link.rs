//! The connection: its phases, the transport inputs of the driver, heartbeats and probes, reconnection with
//! backoff, and what the platform reports (network, lifecycle).
//!
//! The phase is the one source of the connection state the application sees ([`Phase::state`]): every change
//! of phase goes through [`Engine::enter`], which reports the new state when it differs. The per-connection
//! state after `welcome` ([`Link`]) lives inside [`Phase::Connected`], so it exists exactly while connected.

use std::time::Duration;

use super::snapshot::PushRegistration;
use super::timers::Timer;
use super::types::{
    ConnId, ConnectionState, FailureReason, Lifecycle, NetworkEvent, ReconnectReason, SuspendReason, TransportFailure,
};
use super::{Action, DedupWindow, Engine, Event};
use crate::protocol::{self, ClientFrame, CloseAction, DecodeError, ErrorCode, ErrorFrame, ServerFrame, close};
use crate::time::Instant;

/// Where the connection stands.
#[derive(Debug)]
pub(super) enum Phase {
    /// Not started (also, for a moment inside one input, a socket just given up on).
    Idle,
    /// Waiting for the token provider.
    AwaitingToken { attempt: u32 },
    /// Waiting for the socket to open.
    Opening { conn: ConnId, attempt: u32 },
    /// `auth` sent, waiting for `welcome`.
    Authenticating { conn: ConnId, attempt: u32 },
    /// Authenticated.
    Connected { conn: ConnId, link: Link },
    /// Waiting before the next attempt.
    Backoff { attempt: u32, delay: Duration, reason: String },
    /// Deliberately not connected.
    Suspended(SuspendReason),
    /// Closed by the application.
    Closed,
    /// Stopped for good.
    Failed { reason: FailureReason, message: String },
}

impl Phase {
    /// The connection state the application sees in this phase.
    pub(super) fn state(&self) -> ConnectionState {
        match self {
            Phase::Idle => ConnectionState::Idle,
            Phase::AwaitingToken { attempt }
            | Phase::Opening { attempt, .. }
            | Phase::Authenticating { attempt, .. } => ConnectionState::Connecting { attempt: *attempt },
            Phase::Connected { .. } => ConnectionState::Connected,
            Phase::Backoff { attempt, delay, reason } => {
                ConnectionState::Reconnecting { attempt: *attempt, delay: *delay, reason: reason.clone() }
            }
            Phase::Suspended(reason) => ConnectionState::Suspended { reason: *reason },
            Phase::Closed => ConnectionState::Closed,
            Phase::Failed { reason, message } => ConnectionState::Failed { reason: *reason, message: message.clone() },
        }
    }

    /// The socket of this phase, if it has one.
    fn conn(&self) -> Option<ConnId> {
        match self {
            Phase::Opening { conn, .. } | Phase::Authenticating { conn, .. } | Phase::Connected { conn, .. } => {
                Some(*conn)
            }
            _ => None,
        }
    }
}

/// Per-connection state after `welcome`. Its deadlines (idle, keep-alive, probe, stable) are in the timer table.
#[derive(Debug)]
pub(super) struct Link {
    /// The heartbeat interval the server announced.
    heartbeat: Duration,
    /// The last `ref` used on this connection.
    next_ref: u64,
    /// The link stayed up for `stable_after`.
    stable: bool,
    /// Requests sent on this connection and not yet answered, by `ref` (an error that names no stream is
    /// attributed through it).
    requests: Vec<(u64, Request)>,
}

/// A request awaiting its reply.
#[derive(Debug)]
pub(super) enum Request {
    /// A `subscribe`: the streams not yet answered.
    Subscribe(Vec<String>),
    /// An `unsubscribe`.
    Unsubscribe,
    /// A `register_push` of this address.
    RegisterPush(PushRegistration),
    /// An `inbox_watch`.
    InboxWatch,
}

/// Why a socket ended, as the engine classifies it.
#[derive(Debug)]
pub(super) struct Loss {
    pub(super) action: CloseAction,
    /// For [`Stats::reconnects`](super::Stats): what ended the connection.
    pub(super) reason: ReconnectReason,
    pub(super) failure: FailureReason,
    pub(super) retry_after: Option<Duration>,
    pub(super) message: String,
}

impl Engine {
    // ----------------------------------------------------------------------------------------------------
    // Application inputs

    /// Starts connecting (no-op when already connecting or connected).
    pub fn connect(&mut self, now: Instant) {
        let now = self.tick(now);
        match self.phase {
            Phase::Idle | Phase::Closed | Phase::Failed { .. } => {
                self.failures = 0;
                self.token.refreshed_after_rejection = false;
                self.start_attempt(now);
            }
            Phase::Backoff { .. } | Phase::Suspended(_) => self.start_attempt(now),
            _ => {}
        }
    }

    /// Closes the connection for good (until [`Engine::connect`]). Pending acks are sent first; open batches
    /// are persisted, not delivered.
    pub fn close(&mut self, now: Instant) {
        let now = self.tick(now);
        // Frames already queued (and the acks flushed here) go out before the close: `poll_output` yields
        // transmits before actions.
        if self.is_connected() {
            self.flush_acks();
        }
        if let Some(conn) = self.current_conn() {
            self.actions.push_back(Action::Close { conn, code: close::NORMAL, reason: "client closed" });
        }
        self.timers.stop(Timer::Background);
        self.enter(Phase::Closed);
        self.inbox_closed();
        self.request_persist(now);
    }

    /// The platform reports a network change.
    pub fn handle_network(&mut self, now: Instant, event: NetworkEvent) {
        let now = self.tick(now);
        match event {
            NetworkEvent::Unavailable => {
                self.online = false;
                match self.phase {
                    Phase::AwaitingToken { .. }
                    | Phase::Opening { .. }
                    | Phase::Authenticating { .. }
                    | Phase::Connected { .. }
                    | Phase::Backoff { .. } => {
                        self.drop_link(close::GOING_AWAY, "network unavailable");
                        self.suspend(now, SuspendReason::Offline);
                    }
                    _ => {}
                }
            }
            NetworkEvent::Available | NetworkEvent::Changed => {
                self.online = true;
                match self.phase {
                    Phase::Backoff { .. } | Phase::Suspended(SuspendReason::Offline) => self.start_attempt(now),
                    Phase::Connected { .. } if event == NetworkEvent::Changed => self.probe(now),
                    _ => {}
                }
            }
        }
    }

    /// The application moved between foreground and background.
    pub fn handle_lifecycle(&mut self, now: Instant, lifecycle: Lifecycle) {
        let now = self.tick(now);
        match lifecycle {
            Lifecycle::Background => {
                if !self.foreground {
                    return;
                }
                self.foreground = false;
                self.request_persist(now);
                match self.phase {
                    Phase::Idle | Phase::Closed | Phase::Failed { .. } | Phase::Suspended(_) => {}
                    _ => {
                        self.timers.set(Timer::Background, now + self.config.background_grace);
                        if self.config.background_grace.is_zero() {
                            self.handle_timeout(now);
                        }
                    }
                }
            }
            Lifecycle::Foreground => {
                if self.foreground {
                    return;
                }
                self.foreground = true;
                self.timers.stop(Timer::Background);
                match self.phase {
                    Phase::Suspended(SuspendReason::Background) if self.online => {
                        self.failures = 0;
                        self.start_attempt(now);
                    }
                    Phase::Suspended(SuspendReason::Background) => self.suspend(now, SuspendReason::Offline),
                    Phase::Backoff { .. } => self.start_attempt(now),
                    Phase::Connected { .. } => self.probe(now),
                    _ => {}
                }
            }
        }
    }

    // ----------------------------------------------------------------------------------------------------
    // Driver inputs

    /// The socket `conn` is open (the WebSocket handshake completed).
    pub fn handle_transport_open(&mut self, now: Instant, conn: ConnId) {
        let now = self.tick(now);
        let Phase::Opening { conn: current, attempt } = self.phase else { return };
        if current != conn {
            return;
        }
        // Same state, same connect deadline: no `enter`.
        self.phase = Phase::Authenticating { conn, attempt };
        let token = self.token.token.clone().unwrap_or_default();
        let device = self.device_id();
        let client = Some(self.config.client_name.clone());
        self.queue(&ClientFrame::Auth { token, device, client });
        // `auth` → `welcome` is the first round-trip measurement of the connection.
        self.rtt_probe = Some(now);
    }

    /// Sends a `heartbeat` asking for an echo, and measures the round trip to the next heartbeat from the server.
    fn send_echo_request(&mut self, now: Instant) {
        self.queue(&ClientFrame::Heartbeat { echo: true });
        if self.rtt_probe.is_none() {
            self.rtt_probe = Some(now);
        }
    }

    /// The socket `conn` could not be opened.
    pub fn handle_transport_failed(&mut self, now: Instant, conn: ConnId, failure: TransportFailure) {
        let now = self.tick(now);
        if self.current_conn() != Some(conn) {
            return;
        }
        let loss = match failure.http_status {
            Some(401 | 403) => Loss {
                action: CloseAction::RefreshToken,
                reason: ReconnectReason::TokenRefresh,
                failure: FailureReason::Unauthorized,
                retry_after: None,
                message: format!("handshake refused: {}", failure.message),
            },
            Some(status @ 400..=499) if !matches!(status, 408 | 429) => Loss {
                action: CloseAction::Stop,
                reason: ReconnectReason::HandshakeFailed,
                failure: FailureReason::Rejected,
                retry_after: None,
                message: format!("handshake refused with HTTP {status}: {}", failure.message),
            },
            _ => Loss {
                action: CloseAction::RetryWithBackoff,
                reason: ReconnectReason::HandshakeFailed,
                failure: FailureReason::Rejected,
                retry_after: failure.retry_after,
                message: failure.message,
            },
        };
        self.leave_phase(); // the socket never opened: nothing to close
        self.on_loss(now, loss);
    }

    /// The socket `conn` closed (by the peer or through a network error; `code` is `None` when there was no
    /// close frame).
    pub fn handle_transport_closed(&mut self, now: Instant, conn: ConnId, code: Option<u16>, reason: &str) {
        let now = self.tick(now);
        if self.current_conn() != Some(conn) {
            return;
        }
        let code_num = code.unwrap_or(1006);
        let failure = match code_num {
            close::UNAUTHORIZED | close::TOKEN_EXPIRED => FailureReason::Unauthorized,
            close::FRAME_TOO_LARGE => FailureReason::FrameTooLarge,
            close::SESSION_REPLACED => FailureReason::SessionReplaced,
            _ => FailureReason::Protocol,
        };
        let message = if reason.is_empty() {
            format!("connection closed ({code_num})")
        } else {
            format!("connection closed ({code_num}): {reason}")
        };
        self.leave_phase();
        let reason = if code.is_none() || code_num == 1006 {
            ReconnectReason::ConnectionLost
        } else {
            ReconnectReason::ServerClosed
        };
        let action = protocol::close_action(code_num);
        self.on_loss(now, Loss { action, reason, failure, retry_after: None, message });
    }

    /// A text message arrived on socket `conn`: one frame, or several separated by `\n` (protocol §1; empty
    /// lines are skipped). Frames are handled in order; the first undecodable one replaces the link and the rest
    /// of the message is dropped.
    pub fn handle_text(&mut self, now: Instant, conn: ConnId, text: &str) {
        if self.current_conn() != Some(conn) {
            self.tick(now);
            return;
        }
        let mut lines = protocol::message_frames(text).peekable();
        while let Some(line) = lines.next() {
            if self.current_conn() != Some(conn) {
                return;
            }
            // The dedup window's slots for the next notification are fetched while this one is decoded and
            // handled: its insert would otherwise wait for memory, which is likely cold when many engines share a
            // cache (a benchmark's fleet) or after the app was idle — in S6, a fifth of the clients' CPU.
            if DedupWindow::PREFETCHES
                && let Some(next) = lines.peek().and_then(|next| protocol::notification_id_hint(next))
            {
                self.dedup.prefetch(next);
            }
            match protocol::decode_server_frame(line) {
                Ok(frame) => self.handle_frame(now, conn, frame),
                Err(e) => {
                    warn!(error = %e, "undecodable frame from server; reconnecting");
                    self.handle_undecodable(now, conn, &e);
                    return;
                }
            }
        }
    }

    /// A frame that arrived on socket `conn`, already decoded — for drivers whose platform parses JSON natively
    /// (the browser binding builds frames from `JSON.parse` output, which keeps a JSON decoder out of the wasm
    /// module). The same as [`Engine::handle_text`] from there on.
    pub fn handle_frame(&mut self, now: Instant, conn: ConnId, frame: ServerFrame) {
        let now = self.tick(now);
        if self.current_conn() != Some(conn) {
            return;
        }
        self.received(now);
        self.on_frame(now, conn, frame);
    }

    /// A frame the driver could not decode (see [`Engine::handle_frame`]): the link is replaced, as when
    /// [`Engine::handle_text`] meets an undecodable frame.
    pub fn handle_undecodable(&mut self, now: Instant, conn: ConnId, error: &DecodeError) {
        let now = self.tick(now);
        if self.current_conn() != Some(conn) {
            return;
        }
        self.drop_link(close::PROTOCOL_ERROR, "undecodable frame");
        self.on_loss(
            now,
            Loss {
                action: CloseAction::RetryWithBackoff,
                reason: ReconnectReason::Undecodable,
                failure: FailureReason::Protocol,
                retry_after: None,
                message: format!("undecodable frame from server: {error}"),
            },
        );
    }

    /// Something other than a text frame arrived on `conn` (a ping, a pong): it proves the link is alive.
    pub fn handle_activity(&mut self, now: Instant, conn: ConnId) {
        let now = self.tick(now);
        if self.current_conn() == Some(conn) {
            self.received(now);
        }
    }

    // ----------------------------------------------------------------------------------------------------
    // Internals: phases

    pub(super) fn is_connected(&self) -> bool {
        matches!(self.phase, Phase::Connected { .. })
    }

    pub(super) fn current_conn(&self) -> Option<ConnId> {
        self.phase.conn()
    }

    fn link_mut(&mut self) -> Option<&mut Link> {
        match &mut self.phase {
            Phase::Connected { link, .. } => Some(link),
            _ => None,
        }
    }

    /// Moves to `phase` and reports the connection state if it changed.
    pub(super) fn enter(&mut self, phase: Phase) {
        self.leave_phase();
        self.phase = phase;
        let state = self.phase.state();
        if self.state != state {
            self.state = state.clone();
            self.events.push_back(Event::State(state));
        }
    }

    /// Leaves the current phase for a moment (the caller enters the next one in the same input): stops its
    /// timers and returns it.
    fn leave_phase(&mut self) -> Phase {
        match self.phase {
            Phase::Opening { .. } | Phase::Authenticating { .. } => self.timers.stop(Timer::Connect),
            Phase::Backoff { .. } => self.timers.stop(Timer::Backoff),
            Phase::Connected { .. } => {
                for t in [Timer::Idle, Timer::KeepAlive, Timer::Probe, Timer::Stable, Timer::TokenRefresh] {
                    self.timers.stop(t);
                }
            }
            _ => {}
        }
        std::mem::replace(&mut self.phase, Phase::Idle)
    }

    fn start_attempt(&mut self, now: Instant) {
        if !self.online {
            self.suspend(now, SuspendReason::Offline);
            return;
        }
        if !self.foreground && self.timers.get(Timer::Background).is_none() {
            self.suspend(now, SuspendReason::Background);
            return;
        }
        let attempt = self.failures + 1;
        if self.token.token.is_none() || self.token_expired(now) {
            let force = self.token_expired(now);
            self.enter(Phase::AwaitingToken { attempt });
            self.fetch_token(force);
        } else {
            self.open(now, attempt);
        }
    }

    /// Opens a socket (the token is at hand).
    pub(super) fn open(&mut self, now: Instant, attempt: u32) {
        self.next_conn += 1;
        let conn = ConnId(self.next_conn);
        self.stats.connection_attempts += 1;
        self.enter(Phase::Opening { conn, attempt });
        self.timers.set(Timer::Connect, now + self.config.connect_timeout);
        self.actions.push_back(Action::Open { conn, url: self.config.url.clone() });
    }

    /// Abandons the current socket, if any, telling the driver to close it. The caller enters the next phase.
    pub(super) fn drop_link(&mut self, code: u16, reason: &'static str) {
        if let Some(conn) = self.current_conn() {
            self.actions.push_back(Action::Close { conn, code, reason });
            self.leave_phase();
        }
        self.replaying.clear();
        self.gap_tail.clear();
        self.rtt_probe = None;
        self.transmits.clear();
    }

    fn on_loss(&mut self, now: Instant, loss: Loss) {
        self.replaying.clear();
        self.gap_tail.clear();
        self.rtt_probe = None;
        self.transmits.clear();
        match loss.action {
            CloseAction::Stop => self.fail(now, loss.failure, loss.message),
            CloseAction::RefreshToken => {
                if self.token.refreshed_after_rejection {
                    self.fail(now, FailureReason::Unauthorized, format!("fresh token rejected: {}", loss.message));
                } else {
                    self.stats.reconnects.count(ReconnectReason::TokenRefresh);
                    self.token.refreshed_after_rejection = true;
                    self.forget_token();
                    self.enter(Phase::AwaitingToken { attempt: self.failures + 1 });
                    self.token.in_flight = false; // a refresh supersedes any answer still on its way
                    self.fetch_token(true);
                }
            }
            CloseAction::RetryWithBackoff => {
                if !self.online {
                    self.suspend(now, SuspendReason::Offline);
                    return;
                }
                self.failures += 1;
                self.stats.reconnects.count(loss.reason);
                self.backoff(now, loss.retry_after, loss.message);
            }
        }
    }

    pub(super) fn backoff(&mut self, now: Instant, floor: Option<Duration>, reason: String) {
        let jitter = self.config.backoff.delay(self.failures, &mut self.rng);
        let delay = floor.map_or(jitter, |f| f + jitter);
        self.enter(Phase::Backoff { attempt: self.failures + 1, delay, reason });
        self.timers.set(Timer::Backoff, now + delay);
    }

    fn suspend(&mut self, now: Instant, reason: SuspendReason) {
        self.enter(Phase::Suspended(reason));
        self.request_persist(now);
    }

    pub(super) fn fail(&mut self, now: Instant, reason: FailureReason, message: String) {
        self.timers.stop(Timer::Background);
        self.enter(Phase::Failed { reason, message });
        self.request_persist(now);
    }

    fn probe(&mut self, now: Instant) {
        if self.is_connected() {
            self.timers.set(Timer::Probe, now + self.config.probe_timeout);
            self.send_echo_request(now);
        }
    }

    /// A frame or other traffic arrived on the current socket: the link is alive.
    fn received(&mut self, now: Instant) {
        let grace = self.config.heartbeat_grace;
        if let Some(link) = self.link_mut() {
            let idle = link.heartbeat + grace;
            self.timers.set(Timer::Idle, now + idle);
            self.timers.stop(Timer::Probe);
        }
    }

    /// The background grace period ended.
    pub(super) fn background_expired(&mut self, now: Instant) {
        self.drop_link(close::NORMAL, "app in background");
        self.suspend(now, SuspendReason::Background);
    }

    /// The timers of the current phase.
    pub(super) fn link_timers(&mut self, now: Instant) {
        match self.phase {
            Phase::Opening { .. } | Phase::Authenticating { .. } if self.timers.is_expired(Timer::Connect, now) => {
                self.drop_link(close::NORMAL, "connect timeout");
                self.on_loss(
                    now,
                    Loss {
                        action: CloseAction::RetryWithBackoff,
                        reason: ReconnectReason::ConnectTimeout,
                        failure: FailureReason::Protocol,
                        retry_after: None,
                        message: "connect timeout".into(),
                    },
                );
            }
            Phase::Backoff { .. } if self.timers.is_expired(Timer::Backoff, now) => self.start_attempt(now),
            Phase::Connected { .. } => self.connected_timers(now),
            _ => {}
        }
    }

    fn connected_timers(&mut self, now: Instant) {
        let dead = self.timers.is_expired(Timer::Idle, now);
        if dead || self.timers.is_expired(Timer::Probe, now) {
            let message = if dead { "heartbeat timeout" } else { "probe unanswered" };
            self.drop_link(close::NORMAL, "heartbeat timeout");
            self.on_loss(
                now,
                Loss {
                    action: CloseAction::RetryWithBackoff,
                    reason: ReconnectReason::HeartbeatTimeout,
                    failure: FailureReason::Protocol,
                    retry_after: None,
                    message: message.into(),
                },
            );
            return;
        }
        if self.timers.is_expired(Timer::Stable, now) {
            self.timers.stop(Timer::Stable);
            if let Some(link) = self.link_mut() {
                link.stable = true;
            }
            self.failures = 0;
        }
        if self.timers.is_expired(Timer::KeepAlive, now) {
            // The keep-alive asks for an echo: the answer is a round-trip measurement (and proves the link).
            self.send_echo_request(now);
        }
        if !self.token.in_flight && self.timers.is_expired(Timer::TokenRefresh, now) {
            self.timers.stop(Timer::TokenRefresh);
            self.fetch_token(true);
        }
    }

    // ----------------------------------------------------------------------------------------------------
    // Internals: frames

    fn on_frame(&mut self, now: Instant, conn: ConnId, frame: ServerFrame) {
        match frame {
            ServerFrame::Notification(n) => self.on_notification(now, n),
            ServerFrame::Heartbeat => {
                if let Some(sent) = self.rtt_probe.take() {
                    self.stats.rtt.sample(now.saturating_duration_since(sent));
                }
            }
            ServerFrame::Welcome { user, heartbeat_ms, token_expires_in_ms, .. } => {
                let Phase::Authenticating { .. } = self.phase else { return };
                let heartbeat = Duration::from_millis(heartbeat_ms.max(1000));
                let link = Link { heartbeat, next_ref: 0, stable: false, requests: Vec::new() };
                self.enter(Phase::Connected { conn, link });
                self.timers.set(Timer::Idle, now + heartbeat + self.config.heartbeat_grace);
                self.timers.set(Timer::KeepAlive, now + heartbeat);
                self.timers.set(Timer::Stable, now + self.config.stable_after);
                self.stats.connections += 1;
                if let Some(sent) = self.rtt_probe.take() {
                    self.stats.rtt.sample(now.saturating_duration_since(sent));
                }
                self.token.refreshed_after_rejection = false;
                self.set_token_expiry(now, token_expires_in_ms);
                self.user = Some(user);
                self.resubscribe_all();
                self.send_push_registration();
                self.send_inbox_requests();
            }
            ServerFrame::Subscribed { reference, stream, epoch, offset, continuity } => {
                self.answered(reference, Some(&stream));
                self.on_subscribed(now, stream, epoch, offset, continuity)
            }
            ServerFrame::Unsubscribed { reference, .. } => {
                self.answered(reference, None);
            }
            ServerFrame::PushRegistered { reference, platform } => {
                self.answered(reference, None);
                self.events.push_back(Event::PushRegistered { platform })
            }
            ServerFrame::TokenRefreshed { token_expires_in_ms } => self.set_token_expiry(now, token_expires_in_ms),
            ServerFrame::Error(e) => self.on_error(now, e),
            ServerFrame::Inbox(_) | ServerFrame::InboxPage(_) | ServerFrame::HistoryPage(_) => {
                self.on_inbox_frame(now, frame)
            }
        }
    }

    /// An `error` the server sent by itself (no `ref`) that leaves the connection open — on this engine's socket
    /// or relayed from the socket of another tab's engine.
    pub(super) fn on_server_notice(&mut self, e: ErrorFrame) {
        match e.stream {
            // The server ended a subscription by itself (an operator's unsubscribe, protocol §2.5): the stream
            // is dropped as if its subscribe had been refused, and not subscribed again on reconnect.
            Some(stream) => self.subscription_refused(stream, e.code, e.message),
            None => warn!(code = %e.code, message = %e.message, "server error"),
        }
    }

    fn on_error(&mut self, now: Instant, e: ErrorFrame) {
        if let Some(reference) = e.reference {
            if !self.inbox_refused(now, reference, &e) {
                self.request_refused(now, reference, e);
            }
            return;
        }
        let Some(close_code) = e.code.close_code() else {
            self.on_server_notice(e);
            return;
        };
        let action = protocol::close_action(close_code);
        let failure = match e.code {
            ErrorCode::Unauthorized | ErrorCode::TokenExpired => FailureReason::Unauthorized,
            ErrorCode::FrameTooLarge => FailureReason::FrameTooLarge,
            ErrorCode::SessionReplaced => FailureReason::SessionReplaced,
            _ => FailureReason::Protocol,
        };
        // Errors about what this client sent end in `server_error`; the server's own reasons (shutdown, an
        // operator's drop, a slow consumer, a newer session, its heartbeat deadline) in `server_closed`.
        let reason = match e.code {
            ErrorCode::ProtocolError
            | ErrorCode::FrameTooLarge
            | ErrorCode::RateLimited
            | ErrorCode::BadRequest
            | ErrorCode::UnsupportedVersion
            | ErrorCode::AuthTimeout => ReconnectReason::ServerError,
            _ => ReconnectReason::ServerClosed,
        };
        self.drop_link(close::NORMAL, "server error");
        self.on_loss(
            now,
            Loss {
                action,
                reason,
                failure,
                retry_after: e.retry_after_ms.map(Duration::from_millis),
                message: format!("{}: {}", e.code, e.message),
            },
        );
    }

    /// The server refused the request `reference` (an error with a `ref`: request-scoped, the link stays).
    fn request_refused(&mut self, now: Instant, reference: u64, e: ErrorFrame) {
        let request = self.link_mut().and_then(|link| {
            let i = link.requests.iter().position(|(r, _)| *r == reference)?;
            match (&mut link.requests[i].1, &e.stream) {
                // One entry of a subscribe: the others may still be answered.
                (Request::Subscribe(streams), Some(stream)) if streams.len() > 1 => {
                    streams.retain(|s| s != stream);
                    Some(Request::Subscribe(vec![stream.clone()]))
                }
                _ => Some(link.requests.swap_remove(i).1),
            }
        });
        match (request, e.stream) {
            (Some(Request::Subscribe(_)) | None, Some(stream)) => self.subscription_refused(stream, e.code, e.message),
            // The whole subscribe was refused (e.g. it could not be read): every stream in it failed.
            (Some(Request::Subscribe(streams)), None) => {
                for stream in streams {
                    self.subscription_refused(stream, e.code, e.message.clone());
                }
            }
            (Some(Request::RegisterPush(refused)), _) => {
                let platform = refused.platform;
                warn!(platform = platform.as_str(), code = %e.code, message = %e.message, "push registration refused");
                if e.code == ErrorCode::BadRequest && self.push.as_ref() == Some(&refused) {
                    // The server will refuse it on every connection: it is not sent again.
                    self.push = None;
                    self.mark_dirty();
                    self.request_persist(now);
                }
                self.events.push_back(Event::PushRegistrationFailed { platform, code: e.code, message: e.message });
            }
            (Some(Request::Unsubscribe | Request::InboxWatch), _) | (None, None) => {
                warn!(code = %e.code, message = %e.message, "request refused");
            }
        }
    }

    /// A reply to `reference` arrived (for a subscribe, about `stream`).
    pub(super) fn answered(&mut self, reference: u64, stream: Option<&str>) {
        let Some(link) = self.link_mut() else { return };
        let Some(i) = link.requests.iter().position(|(r, _)| *r == reference) else { return };
        if let (Request::Subscribe(streams), Some(stream)) = (&mut link.requests[i].1, stream) {
            streams.retain(|s| s != stream);
            if !streams.is_empty() {
                return;
            }
        }
        link.requests.swap_remove(i);
    }

    /// Remembers a request sent on the current connection until its reply.
    pub(super) fn track(&mut self, reference: u64, request: Request) {
        if let Some(link) = self.link_mut() {
            link.requests.push((reference, request));
        }
    }

    // ----------------------------------------------------------------------------------------------------
    // Internals: outgoing frames

    /// The next `ref` on the current connection.
    pub(super) fn next_ref(&mut self) -> u64 {
        let link = self.link_mut().expect("connected");
        link.next_ref += 1;
        link.next_ref
    }

    pub(super) fn queue(&mut self, frame: &ClientFrame) {
        self.queue_text(protocol::encode_client_frame(frame));
    }

    /// Queues a frame for the current socket (sending counts as traffic for the keep-alive).
    pub(super) fn queue_text(&mut self, frame: String) {
        let now = self.now;
        if let Some(link) = self.link_mut() {
            let at = now + link.heartbeat;
            self.timers.set(Timer::KeepAlive, at);
        }
        self.transmits.push_back(frame);
    }
}
