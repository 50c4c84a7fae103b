//! One WebSocket connection: a single task that reads client frames, writes queued server frames and keeps
//! the timers (auth deadline, heartbeats, liveness, token expiry).
//!
//! The task waits in one `select!` for the first of: a wake-up of its outbound queue, a client message, or
//! its timer. After handling the event it drains the whole queue and writes it with one `feed` per frame and
//! a single `flush`. The timer is lazy: it is only re-armed when it fires or when a deadline moves earlier,
//! so traffic costs no timer operations.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::{FutureExt, SinkExt, StreamExt};
use tidings_core::protocol::{
    ClientFrame, ErrorCode, ErrorFrame, FrameRejection, MAX_IDS_PER_ACK, MAX_SERVER_FRAME_BYTES,
    MAX_STREAMS_PER_CONNECTION, MAX_STREAMS_PER_SUBSCRIBE, PushPlatform, ServerFrame, StreamName, SubscribeEntry,
    decode_client_request, encode_server_frame, validate_id, validate_push_token,
};
use tokio::time::{Instant, Sleep, timeout};
use tokio_tungstenite::tungstenite;
use tracing::{debug, info, warn};

use crate::auth::{TokenError, TopicPatterns, VerifiedToken, authorize_stream};
use crate::hub::{Hub, bump};
use crate::outbox::{CloseReason, ConnHandle};
use crate::registry::StreamSlot;
use crate::replay::{Decision, decide};
use crate::storage::PushRecord;
use crate::storage::StorageError;
use crate::util::{new_session_id, now_ms};

/// `{"op":"heartbeat"}`, encoded once.
const HEARTBEAT: &str = r#"{"op":"heartbeat"}"#;
/// How long to wait before reconnecting after `try_again_later` or `rate_limited`.
const RETRY_AFTER_MS: u64 = 5000;
/// Upper bound for writing the final frames of a connection.
const CLOSE_WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves one upgraded WebSocket until it ends. Registered with the hub for its whole life, so that shutdown
/// can reach it and wait for it.
///
/// Not an `async fn`: the socket is moved into the [`Connection`] before the future is built, so the task does
/// not keep room for it twice (argument and local); idle connections are dominated by the size of this task.
pub(crate) fn serve(
    hub: Arc<Hub>,
    ws: WebSocket,
    peer: Option<std::net::SocketAddr>,
) -> impl Future<Output = ()> + Send + 'static {
    let id = hub.next_connection_id();
    let handle = Arc::new(ConnHandle::new(id, hub.config.outbound_queue_limit));
    let open = hub.connections.insert(handle.clone());
    bump(&hub.counters.connections_total, 1);
    let over_limit = hub.config.max_connections.is_some_and(|max| open > max);
    let mut conn = Connection::new(hub, handle, ws);
    debug!(connection = id, peer = ?peer, "websocket opened");
    // `conn` is used in place as the block's capture (an `async fn` argument would be stored twice).
    async move {
        let hub = conn.hub.clone();
        let mut hard_stop = hub.hard_stop.subscribe();
        let outcome = tokio::select! {
            outcome = conn.run_to_end(over_limit) => outcome,
            _ = hard_stop.wait_for(|stop| *stop) => "the server stopped before the connection closed".to_owned(),
        };
        Box::pin(conn.cleanup(&outcome)).await;
        drop(conn);
        hub.connections.remove(id);
    }
}

/// Why the connection ends.
#[derive(Debug)]
enum Exit {
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
    fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        Exit::Error { code, message: message.into(), retry_after_ms: None, linger: true }
    }

    fn protocol(message: impl Into<String>) -> Self {
        Exit::error(ErrorCode::ProtocolError, message)
    }
}

impl From<CloseReason> for Exit {
    fn from(reason: CloseReason) -> Self {
        Exit::error(reason.code, reason.message)
    }
}

/// The authenticated identity of a connection.
struct Session {
    user: Arc<str>,
    device: Arc<str>,
    id: Arc<str>,
    topics: TopicPatterns,
}

/// Frames-per-second accounting for the rate limit (protocol §6.1, `rate_limited`).
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
        let elapsed = now.duration_since(self.started);
        if elapsed >= Duration::from_secs(1) {
            self.strikes = if elapsed < Duration::from_secs(2) && self.count > per_sec { self.strikes + 1 } else { 0 };
            self.started = now;
            self.count = 0;
        }
        self.count += 1;
        self.count > per_sec && self.strikes + 1 >= seconds.max(1)
    }
}

struct Connection {
    hub: Arc<Hub>,
    handle: Arc<ConnHandle>,
    ws: WebSocket,
    session: Option<Session>,
    /// Streams this connection subscribes to (each slot reference keeps the slot registered).
    subscriptions: Vec<Arc<StreamSlot>>,
    /// Frames taken from the queue and being written (reused between batches).
    batch: VecDeque<Utf8Bytes>,
    opened: Instant,
    last_received: Instant,
    last_sent: Instant,
    token_deadline: Option<Instant>,
    rate: RateWindow,
}

/// A client request that needs asynchronous work (storage, stream locks).
enum Request {
    Subscribe { reference: u64, streams: Vec<SubscribeEntry> },
    Unsubscribe { reference: u64, streams: Vec<String> },
    Ack { ids: Vec<String> },
    RegisterPush { reference: u64, platform: PushPlatform, token: String },
}

enum Event {
    Outbox,
    Timer,
    Incoming(Option<Result<Message, axum::Error>>),
}

impl Connection {
    fn new(hub: Arc<Hub>, handle: Arc<ConnHandle>, ws: WebSocket) -> Self {
        let now = Instant::now();
        Connection {
            hub,
            handle,
            ws,
            session: None,
            subscriptions: Vec::new(),
            batch: VecDeque::new(),
            opened: now,
            last_received: now,
            last_sent: now,
            token_deadline: None,
            rate: RateWindow { started: now, count: 0, strikes: 0 },
        }
    }

    fn heartbeat_interval(&self) -> Duration {
        self.hub.config.heartbeat_interval
    }

    /// Runs the connection and closes it; returns a description of how it ended, for the log.
    async fn run_to_end(&mut self, over_limit: bool) -> String {
        let exit = if self.hub.is_shutting_down() {
            Exit::error(ErrorCode::ServerShutdown, "the server is shutting down")
        } else if over_limit {
            Exit::Error {
                code: ErrorCode::TryAgainLater,
                message: "the server is at its connection limit".into(),
                retry_after_ms: Some(RETRY_AFTER_MS),
                linger: true,
            }
        } else {
            self.run().await
        };
        // Boxed for the same reason as the request handlers: it runs once.
        Box::pin(self.close(exit)).await
    }

    /// The event loop; returns why the connection must end.
    async fn run(&mut self) -> Exit {
        let sleep = tokio::time::sleep_until(self.next_deadline());
        tokio::pin!(sleep);
        loop {
            let event = tokio::select! {
                () = self.handle.notified() => Event::Outbox,
                () = &mut sleep => Event::Timer,
                message = self.ws.next() => Event::Incoming(message),
            };
            let handled = match event {
                Event::Outbox => Ok(None),
                Event::Timer => match self.on_timer() {
                    // The peer looks silent, but a frame may be waiting unread (e.g. after a long write).
                    Err(Exit::Error { code: ErrorCode::HeartbeatTimeout, message, .. }) => {
                        match self.ws.next().now_or_never() {
                            Some(incoming) => self.on_message(incoming),
                            None => Err(Exit::error(ErrorCode::HeartbeatTimeout, message)),
                        }
                    }
                    other => other.map(|()| None),
                },
                Event::Incoming(incoming) => self.on_message(incoming),
            };
            match handled {
                Ok(None) => {}
                // Requests that need storage or stream locks run in a boxed future: it is large and rarely
                // alive, and unboxed it would enlarge the task of every idle connection.
                Ok(Some(request)) => {
                    if let Err(exit) = Box::pin(self.handle_request(request)).await {
                        return exit;
                    }
                }
                Err(exit) => return exit,
            }
            if let Err(exit) = self.write_queued(sleep.as_mut()).await {
                return exit;
            }
            let next = self.next_deadline();
            if sleep.is_elapsed() || next < sleep.deadline() {
                sleep.as_mut().reset(next);
            }
        }
    }

    /// The earliest instant something must happen.
    fn next_deadline(&self) -> Instant {
        let hb = self.heartbeat_interval();
        let mut next = match &self.session {
            None => self.opened + self.hub.config.auth_timeout,
            Some(_) => (self.last_sent + hb).min(self.last_received + 2 * hb),
        };
        if let Some(token) = self.token_deadline {
            next = next.min(token);
        }
        next
    }

    fn on_timer(&mut self) -> Result<(), Exit> {
        let now = Instant::now();
        let hb = self.heartbeat_interval();
        if self.session.is_none() {
            if now >= self.opened + self.hub.config.auth_timeout {
                return Err(Exit::error(
                    ErrorCode::AuthTimeout,
                    format!("no auth frame within {} ms of the upgrade", self.hub.config.auth_timeout.as_millis()),
                ));
            }
            return Ok(());
        }
        if self.token_deadline.is_some_and(|deadline| now >= deadline) {
            return Err(Exit::error(ErrorCode::TokenExpired, "the token expired during the session"));
        }
        if now >= self.last_received + 2 * hb {
            return Err(Exit::error(
                ErrorCode::HeartbeatTimeout,
                format!("nothing received for {} ms", (2 * hb).as_millis()),
            ));
        }
        if now >= self.last_sent + hb {
            self.handle.push_reserved([Utf8Bytes::from_static(HEARTBEAT)]);
        }
        Ok(())
    }

    /// Handles a client message; returns the request that still needs asynchronous work.
    fn on_message(&mut self, message: Option<Result<Message, axum::Error>>) -> Result<Option<Request>, Exit> {
        let message = match message {
            None => return Err(Exit::Gone("the connection ended without a close frame".into())),
            Some(Err(e)) => return Err(read_error(e)),
            Some(Ok(message)) => message,
        };
        self.last_received = Instant::now();
        match message {
            Message::Text(text) => {
                bump(&self.hub.counters.frames_in, 1);
                let config = &self.hub.config;
                if self.rate.exceeded(self.last_received, config.rate_limit_frames_per_sec, config.rate_limit_seconds) {
                    return Err(Exit::Error {
                        code: ErrorCode::RateLimited,
                        message: format!(
                            "more than {} frames per second for {} s",
                            config.rate_limit_frames_per_sec, config.rate_limit_seconds
                        ),
                        retry_after_ms: Some(RETRY_AFTER_MS),
                        linger: true,
                    });
                }
                match decode_client_request(&text) {
                    Ok(frame) => self.on_frame(frame),
                    Err(rejection) => self.on_rejected(rejection),
                }
            }
            Message::Binary(_) => {
                bump(&self.hub.counters.frames_in, 1);
                Err(Exit::protocol("binary messages are not part of the protocol; send JSON text frames"))
            }
            Message::Ping(_) | Message::Pong(_) => Ok(None),
            Message::Close(frame) => Err(Exit::ClosedByClient(frame.map(|f| f.code))),
        }
    }

    /// A client frame the core's decoder refused, classified by it (protocol §6.3): answered with a
    /// request-scoped error when it can be, the connection's end otherwise. Before `auth`, anything but an `auth`
    /// is the protocol error it always was.
    fn on_rejected(&mut self, rejection: FrameRejection) -> Result<Option<Request>, Exit> {
        if self.session.is_none() && rejection.op != Some("auth") && rejection.op.is_some() {
            let op = rejection.op.unwrap_or_default();
            return Err(Exit::protocol(format!("the first frame must be auth, got {op}")));
        }
        if rejection.fatal {
            return Err(Exit::error(rejection.code, rejection.message));
        }
        self.push_request_error(rejection.reference, None, rejection.code, rejection.message);
        Ok(None)
    }

    fn on_frame(&mut self, frame: ClientFrame) -> Result<Option<Request>, Exit> {
        if self.session.is_none() {
            return match frame {
                ClientFrame::Auth { token, device, client } => self.authenticate(&token, device, client).map(|()| None),
                other => Err(Exit::protocol(format!("the first frame must be auth, got {}", op_name(&other)))),
            };
        }
        match frame {
            ClientFrame::Auth { token, .. } => self.refresh(&token).map(|()| None),
            ClientFrame::Subscribe { reference, streams } => Ok(Some(Request::Subscribe { reference, streams })),
            ClientFrame::Unsubscribe { reference, streams } => Ok(Some(Request::Unsubscribe { reference, streams })),
            ClientFrame::Ack { ids } => Ok(Some(Request::Ack { ids })),
            ClientFrame::RegisterPush { reference, platform, token } => {
                Ok(Some(Request::RegisterPush { reference, platform, token }))
            }
            ClientFrame::Heartbeat { echo } => {
                if echo {
                    self.handle.push_reserved([Utf8Bytes::from_static(HEARTBEAT)]);
                }
                Ok(None)
            }
        }
    }

    async fn handle_request(&mut self, request: Request) -> Result<(), Exit> {
        match request {
            Request::Subscribe { reference, streams } => self.subscribe(reference, streams).await,
            Request::Unsubscribe { reference, streams } => self.unsubscribe(reference, streams).await,
            Request::Ack { ids } => {
                self.ack(ids).await;
                Ok(())
            }
            Request::RegisterPush { reference, platform, token } => {
                self.register_push(reference, platform, token).await;
                Ok(())
            }
        }
    }

    fn verify(&self, token: &str) -> Result<VerifiedToken, Exit> {
        self.hub.verifier.verify(token).map_err(|e| {
            bump(&self.hub.counters.auth_failures, 1);
            match e {
                TokenError::Unauthorized(message) => Exit::error(ErrorCode::Unauthorized, message),
                TokenError::Expired(message) => Exit::error(ErrorCode::TokenExpired, message),
            }
        })
    }

    fn set_token_deadline(&mut self, expires_in_ms: Option<u64>) {
        self.token_deadline = expires_in_ms.map(|ms| Instant::now() + Duration::from_millis(ms));
    }

    fn authenticate(&mut self, token: &str, device: String, client: Option<String>) -> Result<(), Exit> {
        validate_id(&device).map_err(|e| Exit::protocol(format!("auth: device {e}")))?;
        let verified = self.verify(token)?;
        let session = Session {
            user: Arc::from(verified.user),
            device: Arc::from(device),
            id: Arc::from(new_session_id()),
            topics: verified.topics,
        };
        self.set_token_deadline(verified.expires_in_ms);
        let connected_at = now_ms();
        let replaced =
            self.hub.presence.register(&session.user, &session.device, &session.id, connected_at, &self.handle);
        if let Some(old) = &replaced {
            old.close(
                ErrorCode::SessionReplaced,
                format!("device {} of user {} connected again (session {})", session.device, session.user, session.id),
            );
        }
        let client: Option<String> = client.map(|c| c.chars().take(128).collect());
        info!(
            user = %session.user,
            device = %session.device,
            session = %session.id,
            client = client.as_deref().unwrap_or("-"),
            replaced_older_session = replaced.is_some(),
            "client connected"
        );
        let welcome = ServerFrame::Welcome {
            session: session.id.to_string(),
            user: session.user.to_string(),
            device: session.device.to_string(),
            heartbeat_ms: self.heartbeat_interval().as_millis() as u64,
            max_frame_bytes: MAX_SERVER_FRAME_BYTES as u64,
            token_expires_in_ms: verified.expires_in_ms,
        };
        self.session = Some(session);
        self.push(&welcome);
        Ok(())
    }

    fn refresh(&mut self, token: &str) -> Result<(), Exit> {
        let verified = self.verify(token)?;
        let session = self.session.as_mut().expect("refresh only runs on authenticated connections");
        if *session.user != verified.user {
            return Err(Exit::protocol(format!(
                "a refreshed token must be for user {}, got one for {}",
                session.user, verified.user
            )));
        }
        session.topics = verified.topics;
        debug!(user = %session.user, session = %session.id, "token refreshed");
        self.set_token_deadline(verified.expires_in_ms);
        self.push(&ServerFrame::TokenRefreshed { token_expires_in_ms: verified.expires_in_ms });
        Ok(())
    }

    fn push(&self, frame: &ServerFrame) {
        self.handle.push_reserved([Utf8Bytes::from(encode_server_frame(frame))]);
    }

    fn push_request_error(&self, reference: Option<u64>, stream: Option<String>, code: ErrorCode, message: String) {
        self.push(&ServerFrame::Error(ErrorFrame { reference, stream, code, message, retry_after_ms: None }));
    }

    async fn subscribe(&mut self, reference: u64, entries: Vec<SubscribeEntry>) -> Result<(), Exit> {
        if entries.len() > MAX_STREAMS_PER_SUBSCRIBE {
            self.push_request_error(
                Some(reference),
                None,
                ErrorCode::BadRequest,
                format!("at most {MAX_STREAMS_PER_SUBSCRIBE} streams per subscribe, got {}", entries.len()),
            );
            return Ok(());
        }
        for entry in entries {
            if let Err((code, message)) = self.subscribe_one(reference, &entry).await? {
                self.push_request_error(Some(reference), Some(entry.stream), code, message);
            }
        }
        Ok(())
    }

    /// Subscribes to one stream. The outer error ends the connection; the inner one answers the entry.
    async fn subscribe_one(
        &mut self,
        reference: u64,
        entry: &SubscribeEntry,
    ) -> Result<Result<(), (ErrorCode, String)>, Exit> {
        let session = self.session.as_ref().expect("subscribe only runs on authenticated connections");
        let name = match StreamName::parse(&entry.stream) {
            Ok(name) => name,
            Err(e) => return Ok(Err((ErrorCode::BadRequest, e))),
        };
        if let Err(message) = authorize_stream(&session.user, &session.topics, &name) {
            return Ok(Err((ErrorCode::Forbidden, message)));
        }
        let position = match (&entry.epoch, entry.offset) {
            (Some(epoch), Some(offset)) => Some((epoch.as_str(), offset)),
            (None, None) => None,
            _ => {
                let message = format!("{}: epoch and offset must be given together", entry.stream);
                return Ok(Err((ErrorCode::BadRequest, message)));
            }
        };
        let existing = self.subscriptions.iter().position(|s| s.name() == entry.stream);
        if existing.is_none() && self.subscriptions.len() >= MAX_STREAMS_PER_CONNECTION {
            let message = format!("at most {MAX_STREAMS_PER_CONNECTION} streams per connection");
            return Ok(Err((ErrorCode::BadRequest, message)));
        }
        let slot = match existing {
            Some(i) => self.subscriptions[i].clone(),
            None => self.hub.registry.acquire(&entry.stream),
        };
        let result = replay_and_register(&self.hub, &self.handle, &slot, reference, position).await;
        match (result, existing) {
            (Ok(()), None) => self.subscriptions.push(slot),
            (Ok(()), Some(_)) => self.hub.registry.release(slot),
            (Err(e), _) => {
                self.hub.registry.release(slot);
                warn!(stream = %entry.stream, error = %e, "subscribe failed");
                return Err(Exit::Error {
                    code: ErrorCode::TryAgainLater,
                    message: format!("the stream {} is unavailable", entry.stream),
                    retry_after_ms: Some(RETRY_AFTER_MS),
                    linger: true,
                });
            }
        }
        Ok(Ok(()))
    }

    async fn unsubscribe(&mut self, reference: u64, streams: Vec<String>) -> Result<(), Exit> {
        if streams.len() > MAX_STREAMS_PER_CONNECTION {
            self.push_request_error(
                Some(reference),
                None,
                ErrorCode::BadRequest,
                format!("at most {MAX_STREAMS_PER_CONNECTION} streams per unsubscribe, got {}", streams.len()),
            );
            return Ok(());
        }
        for stream in streams {
            if let Err(e) = StreamName::parse(&stream) {
                self.push_request_error(Some(reference), Some(stream), ErrorCode::BadRequest, e);
                continue;
            }
            if let Some(i) = self.subscriptions.iter().position(|s| s.name() == stream) {
                let slot = self.subscriptions.swap_remove(i);
                slot.lock().await.remove(self.handle.id());
                self.hub.registry.release(slot);
            }
            self.push(&ServerFrame::Unsubscribed { reference, stream });
        }
        Ok(())
    }

    async fn ack(&mut self, mut ids: Vec<String>) {
        if ids.len() > MAX_IDS_PER_ACK {
            let message = format!("at most {MAX_IDS_PER_ACK} ids per ack, got {}", ids.len());
            self.push_request_error(None, None, ErrorCode::BadRequest, message);
            return;
        }
        if let Some(bad) = ids.iter().find_map(|id| validate_id(id).err().map(|e| format!("ack: id {id:?} {e}"))) {
            self.push_request_error(None, None, ErrorCode::BadRequest, bad);
            ids.retain(|id| validate_id(id).is_ok());
        }
        if ids.is_empty() {
            return;
        }
        let session = self.session.as_ref().expect("acks only arrive on authenticated connections");
        match self.hub.storage.record_acks(&session.user, &session.device, &ids, now_ms()).await {
            Ok(()) => bump(&self.hub.counters.acks, ids.len() as u64),
            Err(e) => warn!(user = %session.user, device = %session.device, error = %e, "acks could not be recorded"),
        }
    }

    async fn register_push(&mut self, reference: u64, platform: PushPlatform, token: String) {
        let checked = validate_push_token(&token).and_then(|()| match platform {
            PushPlatform::WebPush => crate::webpush::check_subscription(&token)
                .map_err(|e| format!("{e} (a web_push token is the PushSubscription as JSON: endpoint and keys)")),
            _ => Ok(()),
        });
        if let Err(e) = checked {
            self.push_request_error(Some(reference), None, ErrorCode::BadRequest, format!("register_push: token {e}"));
            return;
        }
        let session = self.session.as_ref().expect("registrations only arrive on authenticated connections");
        let record = PushRecord { device: session.device.clone(), platform, token, registered_at: now_ms() };
        match self.hub.storage.register_push(&session.user, record).await {
            Ok(()) => {
                info!(user = %session.user, device = %session.device, platform = platform.as_str(), "push address registered");
                self.push(&ServerFrame::PushRegistered { reference, platform });
            }
            Err(e) => {
                warn!(user = %session.user, error = %e, "push address could not be stored");
                self.push_request_error(Some(reference), None, ErrorCode::TryAgainLater, e.to_string());
            }
        }
    }

    /// Writes everything queued: one `feed` per message (frames queued together share a message, see
    /// [`coalesce`]) and one `flush`. Normally the batch is written at once;
    /// when the socket is full, the connection's timer (`sleep`, re-armed afterwards by the caller) bounds the
    /// wait to `write_timeout`.
    async fn write_queued(&mut self, mut sleep: Pin<&mut Sleep>) -> Result<(), Exit> {
        if let Some(reason) = self.handle.take(&mut self.batch) {
            return Err(reason.into());
        }
        if self.batch.is_empty() {
            return Ok(());
        }
        let write_timeout = self.hub.config.write_timeout;
        let result = {
            let (ws, batch) = (&mut self.ws, &mut self.batch);
            let write = async move {
                while let Some(frame) = batch.pop_front() {
                    ws.feed(Message::Text(coalesce(frame, batch))).await?;
                }
                ws.flush().await
            };
            tokio::pin!(write);
            // Poll once with the task's context: a write that does not block completes here.
            match std::future::poll_fn(|cx| Poll::Ready(write.as_mut().poll(cx))).await {
                Poll::Ready(result) => Some(result),
                Poll::Pending => {
                    sleep.as_mut().reset(Instant::now() + write_timeout);
                    tokio::select! {
                        biased;
                        result = &mut write => Some(result),
                        () = &mut sleep => None,
                    }
                }
            }
        };
        self.batch.clear();
        // The batch and the outbox swap their buffers on every take; dropping a grown buffer here keeps a burst
        // from pinning memory in connections that then go idle (both buffers pass through here in turn).
        if self.batch.capacity() > 32 {
            self.batch = VecDeque::new();
        }
        match result {
            Some(Ok(())) => {
                self.last_sent = Instant::now();
                Ok(())
            }
            Some(Err(e)) => Err(Exit::Gone(format!("write failed: {e}"))),
            None => Err(Exit::Gone(format!(
                "no write progress for {} ms (the client stopped reading)",
                write_timeout.as_millis()
            ))),
        }
    }

    /// Ends the connection as `exit` says: queued frames, then `error` and the close frame, then (if the input is
    /// still usable) waits briefly for the client's close reply. Returns a description for the log.
    async fn close(&mut self, exit: Exit) -> String {
        // From here on nothing new is queued; whatever is queued is still sent.
        self.handle.close(ErrorCode::Unknown, "connection closing");
        // `batch` holds what was taken together with an external close reason; add anything queued since.
        let mut pending = std::mem::take(&mut self.batch);
        let mut rest = VecDeque::new();
        let _ = self.handle.take(&mut rest);
        pending.append(&mut rest);
        match exit {
            Exit::Error { code, message, retry_after_ms, linger } => {
                let close_code = code.close_code().unwrap_or(1011);
                match code {
                    ErrorCode::ProtocolError | ErrorCode::FrameTooLarge | ErrorCode::RateLimited => {
                        bump(&self.hub.counters.protocol_errors, 1);
                    }
                    ErrorCode::SlowConsumer => pending.clear(),
                    _ => {}
                }
                let error = ServerFrame::Error(ErrorFrame {
                    reference: None,
                    stream: None,
                    code,
                    message: message.clone(),
                    retry_after_ms,
                });
                let ws = &mut self.ws;
                let send = async {
                    for frame in pending.drain(..) {
                        ws.feed(Message::Text(frame)).await?;
                    }
                    ws.feed(Message::Text(Utf8Bytes::from(encode_server_frame(&error)))).await?;
                    let reason = Utf8Bytes::from_static(code.as_str());
                    ws.send(Message::Close(Some(CloseFrame { code: close_code, reason }))).await
                };
                let sent = matches!(timeout(CLOSE_WRITE_TIMEOUT, send).await, Ok(Ok(())));
                if sent && linger {
                    self.linger().await;
                }
                format!("closed with {close_code} {code}: {message}")
            }
            Exit::ClosedByClient(code) => {
                // Reading on sends tungstenite's close reply and completes the handshake.
                self.linger().await;
                match code {
                    Some(code) => format!("closed by the client with {code}"),
                    None => "closed by the client".to_owned(),
                }
            }
            Exit::Gone(reason) => reason,
        }
    }

    /// Reads (and discards) until the client's close reply ends the stream, for at most `close_linger`.
    async fn linger(&mut self) {
        let ws = &mut self.ws;
        let _ = timeout(self.hub.config.close_linger, async { while let Some(Ok(_)) = ws.next().await {} }).await;
    }

    /// Leaves every stream and the presence registry.
    async fn cleanup(&mut self, outcome: &str) {
        self.handle.close(ErrorCode::Unknown, "connection closed");
        for slot in self.subscriptions.drain(..) {
            slot.lock().await.remove(self.handle.id());
            self.hub.registry.release(slot);
        }
        match &self.session {
            Some(session) => {
                self.hub.presence.unregister(&session.user, &session.id);
                info!(
                    user = %session.user,
                    device = %session.device,
                    session = %session.id,
                    duration_ms = self.opened.elapsed().as_millis() as u64,
                    outcome,
                    "client disconnected"
                );
            }
            None => debug!(connection = self.handle.id(), outcome, "unauthenticated connection ended"),
        }
    }
}

/// Under the stream's lock: decides the continuity, queues `subscribed` and the replay, and registers the
/// connection for live notifications.
async fn replay_and_register(
    hub: &Hub,
    handle: &Arc<ConnHandle>,
    slot: &StreamSlot,
    reference: u64,
    position: Option<(&str, u64)>,
) -> Result<(), StorageError> {
    let storage = &hub.storage;
    let mut subscribers = slot.lock().await;
    let (state, mut decision, entries) = match position {
        None => (storage.stream_state(slot.name()).await?, Decision::Fresh, Vec::new()),
        Some((epoch, offset)) => {
            let read = storage.read_after(slot.name(), epoch, offset).await?;
            let decision = decide(&read.state, position);
            (read.state, decision, read.entries)
        }
    };
    if let Decision::Resume { count, .. } = decision
        && entries.len() as u64 != count
    {
        warn!(
            stream = slot.name(),
            expected = count,
            got = entries.len(),
            "storage returned an incomplete replay; answering with a gap"
        );
        decision = Decision::Gap { reason: tidings_core::protocol::GapReason::OutOfBuffer, missed: None };
    }
    let subscribed = ServerFrame::Subscribed {
        reference,
        stream: slot.name().to_owned(),
        epoch: state.epoch.to_string(),
        offset: state.head,
        continuity: decision.continuity(),
    };
    let replay = match decision {
        Decision::Resume { .. } => entries,
        _ => Vec::new(),
    };
    bump(&hub.counters.replayed, replay.len() as u64);
    handle.push_reserved(
        std::iter::once(Utf8Bytes::from(encode_server_frame(&subscribed)))
            .chain(replay.into_iter().map(|frame| frame.into_utf8_bytes())),
    );
    subscribers.insert(handle);
    Ok(())
}

/// Maps a read error to how the connection ends.
fn read_error(error: axum::Error) -> Exit {
    let message = error.to_string();
    match error.into_inner().downcast::<tungstenite::Error>() {
        Ok(e) => match *e {
            tungstenite::Error::Capacity(capacity) => Exit::Error {
                code: ErrorCode::FrameTooLarge,
                message: format!("client frames are limited to 16384 bytes: {capacity}"),
                retry_after_ms: None,
                // The rest of the oversized frame is still in the input: it cannot be read as frames.
                linger: false,
            },
            tungstenite::Error::Utf8(_) => Exit::Error {
                code: ErrorCode::ProtocolError,
                message: "a text message is not valid UTF-8".into(),
                retry_after_ms: None,
                linger: false,
            },
            tungstenite::Error::Protocol(tungstenite::error::ProtocolError::ResetWithoutClosingHandshake) => {
                Exit::Gone("the client reset the connection without a close frame".into())
            }
            tungstenite::Error::Protocol(protocol) => Exit::Error {
                code: ErrorCode::ProtocolError,
                message: format!("WebSocket protocol violation: {protocol}"),
                retry_after_ms: None,
                linger: false,
            },
            other => Exit::Gone(format!("read failed: {other}")),
        },
        Err(_) => Exit::Gone(format!("read failed: {message}")),
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
    }
}

/// `first` and as many of the frames queued after it as fit in one message of at most
/// [`MAX_SERVER_FRAME_BYTES`], one frame per line (protocol §1). A broadcast's frame is shared by every
/// connection; a connection that has fallen behind gets its backlog in few messages rather than one per
/// notification, which saves each side the per-message work (header, masking state, a read and a wake-up).
fn coalesce(first: Utf8Bytes, queued: &mut VecDeque<Utf8Bytes>) -> Utf8Bytes {
    let mut len = first.len();
    let mut count = 0;
    for frame in queued.iter() {
        if len + 1 + frame.len() > MAX_SERVER_FRAME_BYTES {
            break;
        }
        len += 1 + frame.len();
        count += 1;
    }
    if count == 0 {
        return first;
    }
    let mut joined = String::with_capacity(len);
    joined.push_str(first.as_str());
    for frame in queued.drain(..count) {
        joined.push('\n');
        joined.push_str(frame.as_str());
    }
    Utf8Bytes::from(joined)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cached_heartbeat_is_the_encoded_frame() {
        assert_eq!(encode_server_frame(&ServerFrame::Heartbeat), HEARTBEAT);
    }

    #[test]
    fn the_rate_limit_needs_consecutive_seconds_over_the_limit() {
        let start = Instant::now();
        let mut rate = RateWindow { started: start, count: 0, strikes: 0 };
        let second = |n: u64| start + Duration::from_millis(1000 * n + 10);
        // Seconds 0 and 1 over the limit of 3, 2 s required: exceeded on the 4th frame of second 1.
        for _ in 0..4 {
            assert!(!rate.exceeded(start, 3, 2));
        }
        for i in 0..4 {
            assert_eq!(rate.exceeded(second(1), 3, 2), i == 3);
        }
        // A quiet gap resets the strikes.
        let mut rate = RateWindow { started: start, count: 0, strikes: 0 };
        for _ in 0..4 {
            rate.exceeded(start, 3, 2);
        }
        for _ in 0..4 {
            assert!(!rate.exceeded(second(3), 3, 2));
        }
        assert!(!RateWindow { started: start, count: 0, strikes: 0 }.exceeded(start, 0, 1), "0 disables");
    }

    #[test]
    fn queued_frames_share_messages_up_to_the_frame_limit_in_order() {
        let frame = |c: char, n: usize| Utf8Bytes::from(c.to_string().repeat(n));
        // Alone: the frame itself.
        assert_eq!(coalesce(frame('a', 3), &mut VecDeque::new()).as_str(), "aaa");
        // Several: one per line, in order, until the next would pass MAX_SERVER_FRAME_BYTES.
        let third = MAX_SERVER_FRAME_BYTES - 5; // 3 + 1 + 4 + 1 + third passes the limit by 4
        let mut queued: VecDeque<Utf8Bytes> = [frame('b', 4), frame('c', third), frame('d', 1)].into();
        let first = coalesce(frame('a', 3), &mut queued);
        assert!(first.as_str() == "aaa\nbbbb", "got {} bytes", first.len());
        assert_eq!(queued.len(), 2, "the frame that would not fit starts the next message");
        let next = queued.pop_front().unwrap();
        let message = coalesce(next, &mut queued);
        assert_eq!(message.len(), third + 2);
        assert!(message.as_str().ends_with("c\nd") && queued.is_empty());
    }
}
