//! Push: payloads that reached the app through APNs, FCM or Web Push go through the same dedup window as the
//! socket; the device's push address is registered with the server on every connection.

use super::link::Request;
use super::snapshot::PushRegistration;
use super::types::{EngineError, PushOutcome};
use super::{Engine, PushPlatform};
use crate::protocol::{self, ClientFrame, Notification, PushPayload};
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

    /// A push payload (APNs, FCM, Web Push) reached the app, in any of its forms (protocol §11.1). Passes it
    /// through the same dedup window as the socket: the result says what to show. A lightweight push of a
    /// notification not seen yet comes back as [`PushOutcome::Fetch`]: fetch it and call
    /// [`Engine::complete_push_fetch`]. What is shown is acked (sent once connected). State is persisted at once
    /// (the push handler may be a short-lived process).
    pub fn ingest_push(&mut self, now: Instant, payload: &str) -> Result<PushOutcome, EngineError> {
        let p = protocol::decode_push(payload)?;
        self.ingest_push_payload(now, p)
    }

    /// [`Engine::ingest_push`] with the payload already decoded (for drivers that parse JSON natively).
    pub fn ingest_push_payload(&mut self, now: Instant, payload: PushPayload) -> Result<PushOutcome, EngineError> {
        match payload {
            PushPayload::Full(n) => self.ingest_push_notification(now, n),
            PushPayload::Fetch { id, title } => {
                protocol::validate_id(&id).map_err(|e| EngineError::InvalidArgument(format!("push id: {e}")))?;
                self.tick(now);
                self.stats.push_ingested += 1;
                if self.dedup.contains(&id) {
                    self.stats.duplicates_dropped += 1;
                    self.stats.duplicates_push += 1;
                    return Ok(PushOutcome::Duplicate { id });
                }
                Ok(PushOutcome::Fetch { id, title })
            }
            PushPayload::Summary(summary) => {
                summary.validate()?;
                let now = self.tick(now);
                self.stats.push_ingested += 1;
                let mut new = 0;
                for id in &summary.ids {
                    self.queue_ack(id);
                    if self.dedup.insert(id) {
                        new += 1;
                    }
                }
                // Notifications the summary stands for beyond the ids it lists cannot have been seen: they count
                // as new.
                let unlisted = summary.count > summary.ids.len() as u64;
                let outcome = if new > 0 || unlisted {
                    self.mark_dirty();
                    self.stats.delivered += 1;
                    PushOutcome::Summary(summary)
                } else {
                    self.stats.duplicates_dropped += 1;
                    self.stats.duplicates_push += 1;
                    PushOutcome::Duplicate { id: summary.ids[0].clone() }
                };
                self.request_persist(now);
                Ok(outcome)
            }
        }
    }

    /// The fetch a [`PushOutcome::Fetch`] asked for ended: with the notification (shown unless it was seen
    /// meanwhile), or with why it failed (then the title is shown, and the id is seen from now on).
    pub fn complete_push_fetch(
        &mut self,
        now: Instant,
        id: &str,
        title: Option<String>,
        fetched: Result<Notification, String>,
    ) -> PushOutcome {
        match fetched.and_then(|n| {
            n.validate().map_err(|e| e.message().to_owned())?;
            if n.id() == id { Ok(n) } else { Err(format!("fetched notification {} instead of {id}", n.id())) }
        }) {
            Ok(n) => {
                let now = self.tick(now);
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
                outcome
            }
            Err(reason) => {
                let now = self.tick(now);
                self.queue_ack(id);
                let outcome = if self.dedup.insert(id) {
                    self.mark_dirty();
                    self.stats.delivered += 1;
                    PushOutcome::ShowTitle { id: id.to_owned(), title, reason }
                } else {
                    self.stats.duplicates_dropped += 1;
                    self.stats.duplicates_push += 1;
                    PushOutcome::Duplicate { id: id.to_owned() }
                };
                self.request_persist(now);
                outcome
            }
        }
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
/// service started without the app, a browser's service worker: passes `payload` through the dedup window
/// kept in `stored` (what the store holds, if anything) and returns the outcome with the snapshot to store back.
/// That snapshot carries only the seen ids ([`SnapshotScope::SeenIds`](super::SnapshotScope)), so a store that merges
/// keeps the client's cursors, open batches and push address, and it carries a device id only if `stored` had one:
/// a push handler never makes one up. `seed` comes from the platform's entropy, as for every engine. A
/// [`PushOutcome::Fetch`] is completed with [`complete_push_fetch_without_client`]. The ids to ack (there is no
/// socket to ack them on; `POST /v1/me/acks` does) are those of the outcome: [`PushOutcome::ids`].
pub fn ingest_push_without_client(
    config: super::Config,
    seed: u64,
    stored: Option<&super::Snapshot>,
    now: Instant,
    payload: PushPayload,
) -> Result<(PushOutcome, super::Snapshot), EngineError> {
    let mut engine = push_handler_engine(config, seed, stored, now);
    let outcome = engine.ingest_push_payload(now, payload)?;
    Ok((outcome, engine.seen_ids_snapshot()))
}

/// [`Engine::complete_push_fetch`] for a process that runs no client (see [`ingest_push_without_client`]).
pub fn complete_push_fetch_without_client(
    config: super::Config,
    seed: u64,
    stored: Option<&super::Snapshot>,
    now: Instant,
    id: &str,
    title: Option<String>,
    fetched: Result<Notification, String>,
) -> (PushOutcome, super::Snapshot) {
    let mut engine = push_handler_engine(config, seed, stored, now);
    let outcome = engine.complete_push_fetch(now, id, title, fetched);
    (outcome, engine.seen_ids_snapshot())
}

fn push_handler_engine(config: super::Config, seed: u64, stored: Option<&super::Snapshot>, now: Instant) -> Engine {
    let mut config = config;
    config.persistence = false;
    config.auto_ack = false;
    let mut engine = Engine::new(config, seed);
    if let Some(stored) = stored {
        engine.restore(now, stored);
    }
    engine
}

impl PushOutcome {
    /// The ids a push handler acks for this outcome (what was shown or found seen: the server may stop pushing
    /// them); none for [`PushOutcome::Fetch`], which is not an outcome yet.
    pub fn ids(&self) -> Vec<&str> {
        match self {
            PushOutcome::Show(n) => vec![n.id()],
            PushOutcome::Duplicate { id } | PushOutcome::ShowTitle { id, .. } => vec![id.as_str()],
            PushOutcome::Summary(s) => s.ids.iter().map(String::as_str).collect(),
            PushOutcome::Fetch { .. } => Vec::new(),
        }
    }
}
