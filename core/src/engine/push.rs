//! Push: payloads that reached the app through APNs, FCM or Web Push go through the same dedup window as the
//! socket; the device's push address is registered with the server on every connection.

use super::link::Request;
use super::snapshot::PushRegistration;
use super::types::{EngineError, PushOutcome};
use super::{Engine, PushPlatform};
use crate::protocol::{self, ClientFrame, Notification};
use crate::time::Instant;

impl Engine {
    /// Registers this device's push address with the server: sent now when connected, and again after every
    /// reconnect (the server keeps the newest per device). Persisted with the rest of the state.
    pub fn register_push(&mut self, now: Instant, platform: PushPlatform, token: &str) -> Result<(), EngineError> {
        self.tick(now);
        protocol::validate_push_registration(platform, token)
            .map_err(|e| EngineError::InvalidArgument(format!("push token {e}")))?;
        self.push = Some(PushRegistration { platform, token: token.to_string() });
        self.mark_dirty();
        if self.is_connected() {
            self.send_push_registration();
        }
        Ok(())
    }

    /// A push payload (APNs, FCM, Web Push) reached the app. Passes it through the same dedup window as the
    /// socket: the result says whether to show it. State is persisted at once (the push handler may be a
    /// short-lived process).
    pub fn ingest_push(&mut self, now: Instant, payload: &str) -> Result<PushOutcome, EngineError> {
        let n = protocol::decode_push_payload(payload)?;
        self.ingest_push_notification(now, n)
    }

    /// [`Engine::ingest_push`] with the envelope already decoded (for drivers that parse JSON natively); it is
    /// checked against the protocol's limits here.
    pub fn ingest_push_notification(&mut self, now: Instant, n: Notification) -> Result<PushOutcome, EngineError> {
        n.validate()?;
        let now = self.tick(now);
        self.stats.push_ingested += 1;
        self.queue_ack(n.id());
        let outcome = if self.dedup.insert(n.id()) {
            self.mark_dirty();
            self.stats.delivered += 1;
            PushOutcome::Show(n)
        } else {
            self.stats.duplicates_dropped += 1;
            self.stats.duplicates_push += 1;
            PushOutcome::Duplicate { id: n.id().to_owned() }
        };
        self.request_persist(now);
        Ok(outcome)
    }

    /// Sends the registered push address (after `welcome`, or when it changes while connected).
    pub(super) fn send_push_registration(&mut self) {
        if let Some(push) = self.push.clone() {
            let reference = self.next_ref();
            self.track(reference, Request::RegisterPush(push.clone()));
            self.queue(&ClientFrame::RegisterPush { reference, platform: push.platform, token: push.token });
        }
    }
}

/// The push path of a process that runs no client — an iOS Notification Service Extension, an Android push
/// service started without the app, a browser's service worker: passes `notification` through the dedup window
/// kept in `stored` (what the store holds, if anything) and returns the outcome with the snapshot to store back.
/// That snapshot carries only the seen ids ([`SnapshotScope::SeenIds`](super::SnapshotScope)), so a store that merges
/// keeps the client's cursors, open batches and push address, and it carries a device id only if `stored` had one:
/// a push handler never makes one up. `seed` comes from the platform's entropy, as for every engine.
pub fn ingest_push_without_client(
    config: super::Config,
    seed: u64,
    stored: Option<&super::Snapshot>,
    now: Instant,
    notification: Notification,
) -> Result<(PushOutcome, super::Snapshot), EngineError> {
    let mut config = config;
    config.persistence = false;
    config.auto_ack = false;
    let mut engine = Engine::new(config, seed);
    if let Some(stored) = stored {
        engine.restore(now, stored);
    }
    let outcome = engine.ingest_push_notification(now, notification)?;
    Ok((outcome, engine.seen_ids_snapshot()))
}
