//! The WebSocket driver: one task per connection that moves bytes between the socket and the connection's
//! protocol session (`session`), keeps the session's timer, carries out what the session asks for (registry,
//! broker, stores) and writes the connection's outbound queue.
//!
//! The task waits in one `select!` for the first of: a wake-up of its outbound queue, a client message, or the
//! session's deadline. After handling the event it drains the whole queue and writes it with one `feed` per
//! message and a single `flush`. The timer is lazy: it is only re-armed when it fires or when the deadline moves
//! earlier, so traffic costs no timer operations.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::{FutureExt, SinkExt, StreamExt};
use tidings_core::protocol::{ErrorCode, ErrorFrame, MAX_SERVER_FRAME_BYTES, ServerFrame, encode_server_frame};
use tokio::time::{Instant, Sleep, timeout};
use tokio_tungstenite::tungstenite;
use tracing::debug;

use crate::drive::Peer;
use crate::metrics::{Refusal, Transport};
use crate::node::{Node, bump};
use crate::outbox::ConnHandle;
use crate::session::{Exit, Session};
use crate::util::now_ms;

/// Upper bound for writing the final frames of a connection.
const CLOSE_WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// A deadline far enough away to mean "none".
const FAR: Duration = Duration::from_secs(365 * 24 * 3600);

/// Serves one upgraded WebSocket until it ends. Registered with the node for its whole life, so that shutdown
/// can reach it and wait for it.
///
/// Not an `async fn`: the socket is moved into the [`Connection`] before the future is built, so the task does
/// not keep room for it twice (argument and local); idle connections are dominated by the size of this task.
pub(crate) fn serve(
    node: Arc<Node>,
    ws: WebSocket,
    client: IpAddr,
    request_id: Option<Arc<str>>,
) -> impl Future<Output = ()> + Send + 'static {
    let id = node.next_connection_id();
    let handle = Arc::new(ConnHandle::new(id, node.config.outbound_queue_limit));
    let open = node.registry.insert_connection(handle.clone());
    let over_limit = node.config.max_connections.is_some_and(|max| open > max);
    if over_limit {
        node.metrics.refused(Transport::Ws, Refusal::MaxConnections);
    } else if !node.is_shutting_down() {
        node.metrics.ws.accepted.inc();
    }
    node.metrics.ws.open.inc();
    debug!(connection = id, client = %client, request_id = request_id.as_deref(), "websocket opened");
    let mut conn = Connection::new(node, handle, ws, Peer { transport: Transport::Ws, address: client, request_id });
    // `conn` is used in place as the block's capture (an `async fn` argument would be stored twice).
    async move {
        let node = conn.node.clone();
        let mut hard_stop = node.hard_stop.subscribe();
        let outcome = tokio::select! {
            outcome = conn.run_to_end(over_limit) => outcome,
            _ = hard_stop.wait_for(|stop| *stop) => "the server stopped before the connection closed".to_owned(),
        };
        conn.cleanup(&outcome);
        drop(conn);
        node.registry.remove_connection(id);
        node.metrics.ws.open.dec();
    }
}

struct Connection {
    node: Arc<Node>,
    handle: Arc<ConnHandle>,
    ws: WebSocket,
    session: Session,
    /// Frames taken from the queue and being written (reused between batches).
    batch: VecDeque<Utf8Bytes>,
    opened: Instant,
    /// The client's address and the upgrade request's id.
    peer: Peer,
}

enum Event {
    Outbox,
    Timer,
    Incoming(Option<Result<Message, axum::Error>>),
}

impl Connection {
    fn new(node: Arc<Node>, handle: Arc<ConnHandle>, ws: WebSocket, peer: Peer) -> Self {
        let now = Instant::now();
        let session = Session::new(now, now_ms(), node.session_params.clone());
        Connection { node, handle, ws, session, batch: VecDeque::new(), opened: now, peer }
    }

    /// Runs the connection and closes it; returns a description of how it ended, for the log.
    async fn run_to_end(&mut self, over_limit: bool) -> String {
        let exit = if self.node.is_shutting_down() {
            Exit::error(ErrorCode::ServerShutdown, "the server is shutting down")
        } else if over_limit {
            Exit::Error {
                code: ErrorCode::TryAgainLater,
                message: "the server is at its connection limit".into(),
                retry_after_ms: Some(crate::session::RETRY_AFTER_MS),
                linger: true,
            }
        } else {
            self.run().await
        };
        // Boxed: it runs once, and unboxed it would enlarge the task of every idle connection.
        Box::pin(self.close(exit)).await
    }

    fn deadline(&self) -> Instant {
        self.session.poll_timeout().unwrap_or_else(|| Instant::now() + FAR)
    }

    /// The event loop; returns why the connection must end.
    async fn run(&mut self) -> Exit {
        let sleep = tokio::time::sleep_until(self.deadline());
        tokio::pin!(sleep);
        loop {
            let event = tokio::select! {
                () = self.handle.notified() => Event::Outbox,
                () = &mut sleep => Event::Timer,
                message = self.ws.next() => Event::Incoming(message),
            };
            let handled = match event {
                Event::Outbox => Ok(()),
                Event::Timer => {
                    // The peer may look silent while a frame waits unread (e.g. after a long write).
                    let waiting = self.ws.next().now_or_never();
                    let read = match waiting {
                        Some(incoming) => self.on_message(incoming),
                        None => Ok(()),
                    };
                    self.session.handle_timeout(Instant::now());
                    read
                }
                Event::Incoming(incoming) => self.on_message(incoming),
            };
            if let Err(exit) = handled {
                return exit;
            }
            if let Err(exit) = self.carry_out().await {
                return exit;
            }
            if let Err(exit) = self.write_queued(sleep.as_mut()).await {
                return exit;
            }
            let next = self.deadline();
            if sleep.is_elapsed() || next < sleep.deadline() {
                sleep.as_mut().reset(next);
            }
        }
    }

    /// Feeds a client message to the session; transport failures end the connection at once.
    fn on_message(&mut self, message: Option<Result<Message, axum::Error>>) -> Result<(), Exit> {
        let message = match message {
            None => return Err(Exit::Gone("the connection ended without a close frame".into())),
            Some(Err(e)) => return Err(read_error(e)),
            Some(Ok(message)) => message,
        };
        let now = Instant::now();
        match message {
            Message::Text(text) => {
                self.node.metrics.ws.frames_in.inc();
                // Before a token is checked: refused while this address is throttled for failed authentications
                // (checked here too, not only at the upgrade, so that connections opened together cannot all try).
                if self.session.identity().is_none()
                    && let Some(wait) = self.node.auth_failures.check(self.peer.address, now.into_std())
                {
                    self.node.metrics.refused(Transport::Ws, Refusal::AuthThrottled);
                    return Err(Exit::Error {
                        code: ErrorCode::RateLimited,
                        message: "too many failed authentications from this address".into(),
                        retry_after_ms: Some(wait.as_millis().max(1) as u64),
                        linger: true,
                    });
                }
                self.session.handle_text(now, &text);
            }
            Message::Binary(_) => {
                self.node.metrics.ws.frames_in.inc();
                self.session.handle_binary(now);
            }
            Message::Ping(_) | Message::Pong(_) => self.session.handle_traffic(now),
            Message::Close(frame) => return Err(Exit::ClosedByClient(frame.map(|f| f.code))),
        }
        Ok(())
    }

    /// Carries out everything the session asked for, in order.
    async fn carry_out(&mut self) -> Result<(), Exit> {
        crate::drive::carry_out(&self.node, &self.handle, &mut self.session, &self.peer).await
    }

    /// Writes everything queued: one `feed` per message (frames queued together share a message, see
    /// [`coalesce`]) and one `flush`. Normally the batch is written at once;
    /// when the socket is full, the connection's timer (`sleep`, re-armed afterwards by the caller) bounds the
    /// wait to `write_timeout`.
    async fn write_queued(&mut self, mut sleep: Pin<&mut Sleep>) -> Result<(), Exit> {
        if let Some(reason) = self.handle.take(&mut self.batch) {
            self.session.handle_close_request(reason.code, reason.message);
            self.carry_out().await?;
        }
        let revoked = self.handle.take_revoked();
        if !revoked.is_empty() {
            for stream in revoked {
                self.session.handle_revoke(&stream, crate::session::REVOKED);
            }
            self.carry_out().await?;
        }
        if self.batch.is_empty() {
            return Ok(());
        }
        let write_timeout = self.node.config.write_timeout;
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
                self.session.handle_sent(Instant::now());
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
                self.node.metrics.disconnected(Transport::Ws, code);
                match code {
                    ErrorCode::ProtocolError | ErrorCode::FrameTooLarge | ErrorCode::RateLimited => {
                        bump(&self.node.counters.protocol_errors, 1);
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
        let _ = timeout(self.node.config.close_linger, async { while let Some(Ok(_)) = ws.next().await {} }).await;
    }

    /// Leaves every stream, the inbox watchers, presence and the device registry.
    fn cleanup(&mut self, outcome: &str) {
        crate::drive::cleanup(&self.node, &self.handle, &self.session, self.opened, &self.peer, outcome);
    }
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
