//! The Server-Sent Events driver (protocol §15): `GET /v1/sse` runs the same protocol session as a WebSocket
//! connection (`session`), fed with frames made from the request — the verified identity, a `subscribe` of the
//! user's stream and the requested topics at the resume token's positions, an `inbox_watch` — and writes the
//! session's frames as events (`session::sse::SseEncoder`). What the session asks for is carried out by
//! `drive`, as for WebSocket connections; this module only moves bytes.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tidings_core::protocol::{
    ClientFrame, ErrorCode, ErrorFrame, MAX_STREAMS_PER_SUBSCRIBE, ServerFrame, SubscribeEntry, encode_server_frame,
    validate_id, validate_topic,
};
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout};
use tracing::debug;

use crate::auth::TokenError;
use crate::drive::Peer;
use crate::http::{client_address, current_request_id, error_response, too_many};
use crate::http_inbox::{bearer, token_rejection};
use crate::metrics::{AuthFailure, Refusal, Transport};
use crate::node::Node;
use crate::outbox::ConnHandle;
use crate::session::sse::{ResumeToken, SseEncoder, Ticket};
use crate::session::{Exit, Session};
use crate::util::now_ms;

/// Chunks written ahead of a slow client before writes wait.
const CHUNKS_AHEAD: usize = 16;
/// How long a used ticket of a token without expiry is remembered.
const TICKET_MEMORY: Duration = Duration::from_secs(24 * 3600);

/// Tickets that opened a stream, each until its token expires: a ticket opens one stream once.
#[derive(Default)]
pub(crate) struct UsedTickets {
    used: Mutex<HashMap<String, u64>>,
}

impl UsedTickets {
    /// Records the first use of ticket `id` (remembered until `until`); false when it was used before.
    fn first_use(&self, id: &str, until: u64, now: u64) -> bool {
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        used.retain(|_, forget_at| *forget_at > now);
        if used.contains_key(id) {
            return false;
        }
        used.insert(id.to_owned(), until);
        true
    }
}

#[derive(Deserialize)]
pub(crate) struct SseParams {
    /// A ticket from `POST /v1/sse/tickets` (instead of `Authorization`).
    ticket: Option<String>,
    /// A resume token, for clients that cannot send `Last-Event-ID`.
    cursor: Option<String>,
    /// Topics to multiplex besides the user's stream, comma-separated.
    topics: Option<String>,
    /// The device id (default: one per response).
    device: Option<String>,
    /// `1` or `true`: also send inbox changes (`event: inbox`).
    inbox: Option<String>,
}

fn refuse(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    error_response(status, code, message)
}

/// `GET /v1/sse`.
pub(crate) async fn handler(
    State(node): State<Arc<Node>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    params: Result<Query<SseParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let params = match crate::http_inbox::query_params(params) {
        Ok(params) => params,
        Err(response) => return *response,
    };
    if node.is_shutting_down() {
        node.metrics.refused(Transport::Sse, Refusal::ShuttingDown);
        let mut response = refuse(StatusCode::SERVICE_UNAVAILABLE, "try_again_later", "the server is shutting down");
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        return response;
    }
    // The abuse limits of WebSocket upgrades: refused while the address is throttled for failed authentications,
    // and a new-connection rate per address.
    let address = client_address(&node, peer, &headers);
    let instant = Instant::now().into_std();
    if let Some(wait) = node.auth_failures.check(address, instant) {
        node.metrics.refused(Transport::Sse, Refusal::AuthThrottled);
        return too_many("rate_limited", "too many failed authentications from this address", wait);
    }
    if let Some(wait) = node.connection_rate.spend(address, instant) {
        node.metrics.refused(Transport::Sse, Refusal::ConnectionRate);
        return too_many("rate_limited", "too many new connections from this address", wait);
    }
    // A refused token or ticket counts against the address, as a refused `auth` frame does.
    let auth_failed = |error: TokenError| {
        let reason = match error {
            TokenError::Expired(_) => AuthFailure::TokenExpired,
            TokenError::Unauthorized(_) => AuthFailure::Unauthorized,
        };
        node.metrics.auth_failed(Transport::Sse, reason);
        let _ = node.auth_failures.spend(address, instant);
        token_rejection(error)
    };
    let now = now_ms();
    let resume_text = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.trim().is_empty())
        .or(params.cursor.as_deref().filter(|c| !c.is_empty()));
    let resume = match resume_text {
        None => ResumeToken::default(),
        Some(text) => match ResumeToken::open(&node.sse_keys, text) {
            Some(resume) => resume,
            None => {
                node.metrics.refused(Transport::Sse, Refusal::BadRequest);
                return refuse(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    "the resume token (Last-Event-ID or cursor) was not made by this server: send the id of the last \
                     event received, unchanged, or none",
                );
            }
        },
    };
    let (verified, ticket_id) = match params.ticket.as_deref() {
        Some(text) if bearer(&headers).is_none() => {
            let Some(ticket) = Ticket::open(&node.sse_keys, text) else {
                return auth_failed(TokenError::Unauthorized(
                    "not a ticket of this server: get one with POST /v1/sse/tickets".into(),
                ));
            };
            let verified = match ticket.verified(now) {
                Ok(verified) => verified,
                Err(e) => return auth_failed(e),
            };
            let reconnect = resume.ticket.as_deref() == Some(ticket.id.as_str());
            if !reconnect {
                if now > ticket.open_until {
                    return auth_failed(TokenError::Unauthorized(
                        "the ticket expired before it was used: get a new one with POST /v1/sse/tickets".into(),
                    ));
                }
                let until = ticket.expires_at.unwrap_or(now + TICKET_MEMORY.as_millis() as u64);
                if !node.sse_tickets.first_use(&ticket.id, until, now) {
                    return auth_failed(TokenError::Unauthorized(
                        "the ticket was used already: a ticket opens one stream, whose own reconnects resume with \
                         Last-Event-ID; get a new ticket and pass the last event id as ?cursor="
                            .into(),
                    ));
                }
            }
            (verified, Some(ticket.id))
        }
        _ => {
            let verified = match bearer(&headers) {
                None => Err(TokenError::Unauthorized(
                    "missing token: send Authorization: Bearer <the user's token>, or ?ticket= from POST \
                     /v1/sse/tickets"
                        .into(),
                )),
                Some(token) => node.session_params.verifier.verify_at(token, now),
            };
            match verified {
                Ok(verified) => (verified, None),
                Err(e) => return auth_failed(e),
            }
        }
    };
    let device = params.device.clone().unwrap_or_else(|| format!("sse-{:016x}", fastrand::u64(..)));
    if let Err(e) = validate_id(&device) {
        node.metrics.refused(Transport::Sse, Refusal::BadRequest);
        return refuse(StatusCode::BAD_REQUEST, "bad_request", format!("device {e}"));
    }
    let mut streams = vec![format!("user:{}", verified.user)];
    for topic in params.topics.as_deref().unwrap_or("").split(',').map(str::trim).filter(|t| !t.is_empty()) {
        if let Err(e) = validate_topic(topic) {
            node.metrics.refused(Transport::Sse, Refusal::BadRequest);
            return refuse(StatusCode::BAD_REQUEST, "bad_request", format!("topics: {topic:?} {e}"));
        }
        let stream = format!("topic:{topic}");
        if !streams.contains(&stream) {
            streams.push(stream);
        }
    }
    let watch_inbox = matches!(params.inbox.as_deref(), Some("1" | "true"));

    let id = node.next_connection_id();
    let handle = Arc::new(ConnHandle::for_sse(id, node.config.outbound_queue_limit));
    let open = node.registry.insert_connection(handle.clone());
    if node.config.max_connections.is_some_and(|max| open > max) {
        node.registry.remove_connection(id);
        node.metrics.refused(Transport::Sse, Refusal::MaxConnections);
        let mut response =
            refuse(StatusCode::SERVICE_UNAVAILABLE, "try_again_later", "the server is at its connection limit");
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        return response;
    }
    node.metrics.sse.accepted.inc();

    let start = Instant::now();
    let mut session = Session::new_sse(start, now, node.session_params.clone());
    let client = headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok()).map(|ua| format!("sse; {ua}"));
    session.handle_verified(start, verified, device, client);
    let entries: Vec<SubscribeEntry> = streams
        .into_iter()
        .map(|stream| {
            let position = resume.position(&stream);
            SubscribeEntry {
                epoch: position.as_ref().map(|(e, _)| e.clone()),
                offset: position.map(|(_, o)| o),
                stream,
            }
        })
        .collect();
    for (i, chunk) in entries.chunks(MAX_STREAMS_PER_SUBSCRIBE).enumerate() {
        session.handle_frame(start, ClientFrame::Subscribe { reference: i as u64 + 1, streams: chunk.to_vec() });
    }
    if watch_inbox {
        session.handle_frame(start, ClientFrame::InboxWatch { reference: 0 });
    }
    let encoder = SseEncoder::new(node.sse_keys.clone(), ticket_id, node.config.sse_retry.as_millis() as u64, &resume);
    let (tx, rx) = mpsc::channel::<Bytes>(CHUNKS_AHEAD);
    let request_id = current_request_id();
    debug!(connection = id, client = %address, request_id = request_id.as_deref(), "sse stream opened");
    let peer = Peer { transport: Transport::Sse, address, request_id };
    tokio::spawn(serve(node, handle, session, encoder, tx, peer));

    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (Ok::<_, Infallible>(chunk), rx))
    });
    let mut response = Body::from_stream(body).into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // nginx buffers proxied responses unless told not to; events must reach the client at once.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// Runs one SSE response until it ends; registered with the node for its whole life.
async fn serve(
    node: Arc<Node>,
    handle: Arc<ConnHandle>,
    session: Session,
    encoder: SseEncoder,
    tx: mpsc::Sender<Bytes>,
    peer: Peer,
) {
    node.metrics.sse.open.inc();
    let mut conn = SseConnection { node: node.clone(), handle, session, encoder, tx, opened: Instant::now(), peer };
    let mut hard_stop = node.hard_stop.subscribe();
    let outcome = tokio::select! {
        outcome = conn.run_to_end() => outcome,
        _ = hard_stop.wait_for(|stop| *stop) => "the server stopped before the stream ended".to_owned(),
    };
    crate::drive::cleanup(&node, &conn.handle, &conn.session, conn.opened, &conn.peer, &outcome);
    let id = conn.handle.id();
    drop(conn);
    node.registry.remove_connection(id);
    node.metrics.sse.open.dec();
}

struct SseConnection {
    node: Arc<Node>,
    handle: Arc<ConnHandle>,
    session: Session,
    encoder: SseEncoder,
    tx: mpsc::Sender<Bytes>,
    opened: Instant,
    peer: Peer,
}

impl SseConnection {
    async fn run_to_end(&mut self) -> String {
        let mut pending = std::collections::VecDeque::new();
        let exit = self.run(&mut pending).await;
        self.finish(exit, pending).await
    }

    fn deadline(&self) -> Instant {
        self.session.poll_timeout().unwrap_or_else(|| Instant::now() + Duration::from_secs(365 * 24 * 3600))
    }

    async fn run(&mut self, batch: &mut std::collections::VecDeque<axum::extract::ws::Utf8Bytes>) -> Exit {
        loop {
            if let Err(exit) = crate::drive::carry_out(&self.node, &self.handle, &mut self.session, &self.peer).await {
                return exit;
            }
            if let Some(reason) = self.handle.take(batch) {
                self.session.handle_close_request(reason.code, reason.message);
                if let Err(exit) =
                    crate::drive::carry_out(&self.node, &self.handle, &mut self.session, &self.peer).await
                {
                    return exit;
                }
            }
            let revoked = self.handle.take_revoked();
            if !revoked.is_empty() {
                for stream in revoked {
                    self.session.handle_revoke(&stream, crate::session::REVOKED);
                }
                if let Err(exit) =
                    crate::drive::carry_out(&self.node, &self.handle, &mut self.session, &self.peer).await
                {
                    return exit;
                }
            }
            if !batch.is_empty() {
                let mut text = String::new();
                for frame in batch.drain(..) {
                    self.encoder.encode(frame.as_str(), &mut text);
                }
                if let Err(exit) = self.write(text).await {
                    return exit;
                }
                self.session.handle_sent(Instant::now());
            }
            let deadline = self.deadline();
            tokio::select! {
                () = self.handle.notified() => {}
                () = tokio::time::sleep_until(deadline) => self.session.handle_timeout(Instant::now()),
                () = self.tx.closed() => return Exit::Gone("the client closed the stream".into()),
            }
        }
    }

    async fn write(&mut self, text: String) -> Result<(), Exit> {
        let write_timeout = self.node.config.write_timeout;
        match timeout(write_timeout, self.tx.send(Bytes::from(text))).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Exit::Gone("the client closed the stream".into())),
            Err(_) => Err(Exit::Gone(format!(
                "no write progress for {} ms (the client stopped reading)",
                write_timeout.as_millis()
            ))),
        }
    }

    /// Ends the response as `exit` says: what was queued, then an `error` event, then the end of the body.
    async fn finish(
        &mut self,
        exit: Exit,
        mut pending: std::collections::VecDeque<axum::extract::ws::Utf8Bytes>,
    ) -> String {
        self.handle.close(ErrorCode::Unknown, "stream closing");
        let mut rest = std::collections::VecDeque::new();
        let _ = self.handle.take(&mut rest);
        pending.append(&mut rest);
        match exit {
            Exit::Error { code, message, retry_after_ms, .. } => {
                self.node.metrics.disconnected(Transport::Sse, code);
                if code == ErrorCode::SlowConsumer {
                    pending.clear();
                }
                let mut text = String::new();
                for frame in pending.drain(..) {
                    self.encoder.encode(frame.as_str(), &mut text);
                }
                let error = ServerFrame::Error(ErrorFrame {
                    reference: None,
                    stream: None,
                    code,
                    message: message.clone(),
                    retry_after_ms,
                });
                self.encoder.encode(&encode_server_frame(&error), &mut text);
                let _ = timeout(Duration::from_secs(5), self.tx.send(Bytes::from(text))).await;
                format!("ended with {code}: {message}")
            }
            Exit::ClosedByClient(_) => "closed by the client".to_owned(),
            Exit::Gone(reason) => reason,
        }
    }
}
