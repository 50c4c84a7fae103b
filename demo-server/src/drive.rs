//! What every transport driver does with its session's outputs, written once: registering the connection,
//! subscriptions, acks, push addresses, inbox and history requests, and leaving everything when it ends. The
//! WebSocket driver (`ws`) and the Server-Sent Events driver (`sse`) differ only in how bytes move.

use std::net::IpAddr;
use std::sync::Arc;

use tidings_core::protocol::ErrorCode;
use tokio::time::Instant;
use tracing::{debug, info};

use crate::metrics::{AuthFailure, Continuity, Transport};
use crate::node::{Node, bump};
use crate::outbox::ConnHandle;
use crate::session::{Decision, Exit, Output, Session};

/// The other end of a connection: its transport (the metrics' label), the client's address (the failed-
/// authentication throttle's key: the peer, or what a trusted proxy forwarded) and the id of the HTTP request that
/// opened it (for the connection's log lines).
#[derive(Clone, Debug)]
pub(crate) struct Peer {
    pub(crate) transport: Transport,
    pub(crate) address: IpAddr,
    pub(crate) request_id: Option<Arc<str>>,
}

/// Carries out everything `session` asked for, in order; `Err` when the connection must end.
pub(crate) async fn carry_out(
    node: &Arc<Node>,
    handle: &Arc<ConnHandle>,
    session: &mut Session,
    peer: &Peer,
) -> Result<(), Exit> {
    while let Some(output) = session.poll_output() {
        match output {
            Output::Frame(frame) => handle.push_reserved([frame]),
            Output::AuthFailed { expired } => {
                bump(&node.counters.auth_failures, 1);
                let _ = node.auth_failures.spend(peer.address, Instant::now().into_std());
                let reason = if expired { AuthFailure::TokenExpired } else { AuthFailure::Unauthorized };
                node.metrics.auth_failed(peer.transport, reason);
            }
            Output::Authenticated { user, device, session: id, client, connected_at } => {
                let replaced = node.session_started(handle, &user, &device, &id, connected_at);
                info!(
                    user = %user,
                    device = %device,
                    session = %id,
                    client = client.as_deref().unwrap_or("-"),
                    transport = peer.transport.as_str(),
                    address = %peer.address,
                    request_id = peer.request_id.as_deref(),
                    replaced_older_session = replaced,
                    "client connected"
                );
            }
            Output::Subscribed { stream, frames, filter, replayed, continuity } => {
                let admitted = node.registry.finish_subscribe(
                    &stream,
                    handle,
                    frames,
                    Some((filter.epoch.clone(), filter.after)),
                    |b| filter.admits(b),
                );
                let metrics = node.metrics.conn(peer.transport);
                metrics.replayed.inc_by(replayed);
                node.metrics.subscribed(continuity_label(&continuity), replayed);
                if let Some(admitted) = admitted {
                    metrics.live.inc_by(admitted as u64);
                }
            }
            Output::Unsubscribe { stream } => node.leave(&stream, handle.id()),
            Output::Close(exit) => return Err(exit),
            // Work that waits for the store runs in a boxed future: it is large and rarely alive, and unboxed it
            // would enlarge the task of every idle connection.
            waiting => Box::pin(carry_out_async(node, handle, session, peer.transport, waiting)).await,
        }
    }
    Ok(())
}

async fn carry_out_async(
    node: &Arc<Node>,
    handle: &Arc<ConnHandle>,
    session: &mut Session,
    transport: Transport,
    output: Output,
) {
    match output {
        Output::Subscribe { stream, position } => {
            let position = position.as_ref().map(|(epoch, offset)| (epoch.as_str(), *offset));
            let result = node.join(&stream, handle, position).await;
            session.handle_history(Instant::now(), &stream, result);
        }
        Output::Acks { ids } => {
            if let Some(identity) = session.identity() {
                let (user, device) = (identity.user.clone(), identity.device.clone());
                node.record_acks(transport, &user, &device, &ids).await;
            }
        }
        Output::RegisterPush { platform, token } => {
            let Some(identity) = session.identity().cloned() else { return };
            let result = node.register_push(&identity.user, &identity.device, platform, token).await;
            session.handle_push_registered(Instant::now(), result);
        }
        Output::Request(request) => {
            let Some(identity) = session.identity().cloned() else { return };
            let result = node.request(&identity, handle, request).await;
            session.handle_reply(Instant::now(), result);
        }
        other => unreachable!("not asynchronous: {other:?}"),
    }
}

/// Leaves every stream, the inbox watchers, presence and the device registry; logs how the connection ended.
pub(crate) fn cleanup(
    node: &Arc<Node>,
    handle: &ConnHandle,
    session: &Session,
    opened: Instant,
    peer: &Peer,
    outcome: &str,
) {
    handle.close(ErrorCode::Unknown, "connection closed");
    for stream in session.streams() {
        node.leave(stream, handle.id());
    }
    match session.identity() {
        Some(identity) => {
            if session.watching_inbox() {
                node.inbox_watchers.unwatch(&identity.user, handle.id());
            }
            node.session_ended(&identity.user, &identity.session);
            node.registry.unregister_device(&identity.user, handle.id());
            info!(
                user = %identity.user,
                device = %identity.device,
                session = %identity.session,
                transport = peer.transport.as_str(),
                duration_ms = opened.elapsed().as_millis() as u64,
                outcome,
                request_id = peer.request_id.as_deref(),
                "client disconnected"
            );
        }
        None => debug!(
            connection = handle.id(),
            transport = peer.transport.as_str(),
            outcome,
            request_id = peer.request_id.as_deref(),
            "unauthenticated connection ended"
        ),
    }
}

/// The metrics label of a subscribe's continuity.
fn continuity_label(decision: &Decision) -> Continuity {
    use tidings_core::protocol::GapReason;
    match decision {
        Decision::Fresh => Continuity::Fresh,
        Decision::Resume { .. } => Continuity::Resumed,
        Decision::Gap { reason: GapReason::EpochChanged, .. } => Continuity::GapEpochChanged,
        Decision::Gap { reason: GapReason::AheadOfStream, .. } => Continuity::GapAheadOfStream,
        Decision::Gap { .. } => Continuity::GapOutOfBuffer,
    }
}
