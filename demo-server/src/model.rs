//! What the server deals in, with no dependency on the rest of the server: a notification being published
//! ([`Publication`]), where it went ([`Delivery`]), a stream's position state ([`StreamState`]), what a store hands
//! back after a commit ([`Committed`]) or a history read ([`HistoryRead`]), acks and device push addresses.
//!
//! Every other module depends on these; these depend on nothing of the server (only on the wire protocol's types).

use std::fmt;
use std::sync::Arc;

use axum::extract::ws::Utf8Bytes;
use serde::{Deserialize, Serialize};
use tidings_core::protocol::{NotificationFields, Persistence, PushPlatform};

/// An encoded server frame (one JSON text), shared by reference count: cloning it never copies the text.
#[derive(Clone, PartialEq, Eq)]
pub struct EncodedFrame(Utf8Bytes);

impl EncodedFrame {
    /// Wraps an encoded frame without copying it.
    pub fn new(text: String) -> Self {
        EncodedFrame(Utf8Bytes::from(text))
    }

    /// The JSON text.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the frame is empty (never for a real frame).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The shared bytes, ready to be sent as a WebSocket text message.
    pub fn into_utf8_bytes(self) -> Utf8Bytes {
        self.0
    }

    pub(crate) fn utf8_bytes(&self) -> &Utf8Bytes {
        &self.0
    }
}

impl fmt::Debug for EncodedFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

/// One notification on its way to its streams: what a publish request becomes once accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Publication {
    /// The notification id (the caller's or a generated ULID), shared by every stream it goes to.
    pub id: Arc<str>,
    /// Whether `id` came from the caller: then it is an idempotency key, remembered with the notification.
    pub idempotent: bool,
    /// The target streams, without duplicates.
    pub streams: Vec<String>,
    /// The content. `stream`, `epoch` and `offset` are empty here; they differ per stream.
    pub fields: NotificationFields,
    /// The id of the HTTP request that published it (`X-Request-Id`), for the logs of its delivery path.
    pub request_id: Option<Arc<str>>,
}

impl Publication {
    /// The retention class.
    pub fn persistence(&self) -> Persistence {
        self.fields.persistence
    }

    /// Whether the notification gets an offset and is kept for replay (`bufferable` and `persistent`).
    pub fn is_buffered(&self) -> bool {
        self.fields.persistence.is_buffered()
    }

    /// When the server accepted it (ms since the Unix epoch).
    pub fn created_at(&self) -> u64 {
        self.fields.created_at
    }

    /// This publication under another id: what a store commits when it had to draw a new id (see [`IdFloor`]).
    pub fn with_id(&self, id: &str) -> Publication {
        let mut p = self.clone();
        p.id = Arc::from(id);
        p.fields.id = id.to_owned();
        p
    }

    /// The `notification` frame for one of its streams.
    pub fn encode(&self, stream: &str, epoch: &str, offset: Option<u64>) -> EncodedFrame {
        encode_notification(&self.fields, stream, epoch, offset)
    }
}

/// The `notification` frame of `fields` placed at `(stream, epoch, offset)`.
pub fn encode_notification(
    fields: &NotificationFields,
    stream: &str,
    epoch: &str,
    offset: Option<u64>,
) -> EncodedFrame {
    EncodedFrame::new(tidings_core::protocol::encode_notification_frame(fields, stream, epoch, offset))
}

/// A notification committed to one stream (or, for an ephemeral one, placed in it): what a store hands to the
/// broker after its commit, and what the broker hands to this process's subscribers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Committed {
    /// The notification id.
    pub id: Arc<str>,
    /// The stream.
    pub stream: Arc<str>,
    /// The stream's epoch.
    pub epoch: Arc<str>,
    /// The notification's offset; `None` for an ephemeral notification.
    pub offset: Option<u64>,
    /// The encoded `notification` frame, shared by every subscriber.
    pub frame: EncodedFrame,
}

/// Where one publish went.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// The stream.
    pub stream: String,
    /// The stream's epoch.
    pub epoch: String,
    /// The notification's offset in the stream; absent for ephemeral notifications.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
}

/// What a store did with one publication.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AppendOutcome {
    /// Committed (and handed on): one delivery per stream. `reissued` is the id it was committed under when the
    /// store had to draw a new one to keep server-generated ids ordered in its streams (see [`IdFloor`]).
    Appended { deliveries: Vec<Delivery>, reissued: Option<Arc<str>> },
    /// Its idempotency key was accepted before within the window: nothing was stored or delivered now; the
    /// deliveries of the first publish.
    Duplicate(Vec<Delivery>),
}

impl AppendOutcome {
    /// Committed under the id it was published with.
    pub fn appended(deliveries: Vec<Delivery>) -> Self {
        AppendOutcome::Appended { deliveries, reissued: None }
    }
}

/// Keeps server-generated notification ids ordered in each stream, whatever order concurrent publishes (in one
/// process or in several) commit in. A store tracks, per stream (or for all of them), the greatest server-generated
/// id it committed; a server-generated id (not the caller's: those are idempotency keys and kept as given) that does not sort after
/// the greatest of its streams' is replaced, under the streams' locks, by one that does: that greatest id plus a
/// random step, so two publications drawing above the same id at once (into different streams) get different ids.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IdFloor(Option<ulid::Ulid>);

impl IdFloor {
    /// Raises the floor to `id` when `id` is a ULID above it.
    pub fn raise(&mut self, id: &str) {
        if let Ok(id) = ulid::Ulid::from_string(id)
            && self.0.is_none_or(|floor| id > floor)
        {
            self.0 = Some(id);
        }
    }

    /// The floor of several streams together.
    pub fn join(&mut self, other: &IdFloor) {
        if let Some(id) = other.0
            && self.0.is_none_or(|floor| id > floor)
        {
            self.0 = Some(id);
        }
    }

    /// The id `p` is committed under: its own unless it is a server-generated id not above the floor; then a new
    /// one above it.
    pub fn reissue(&self, p: &Publication) -> Option<String> {
        let floor = self.0?;
        if p.idempotent || ulid::Ulid::from_string(&p.id).is_ok_and(|id| id > floor) {
            return None;
        }
        let step = 1 + u128::from(fastrand::u64(..) >> 16);
        Some(ulid::Ulid(floor.0.saturating_add(step)).to_string())
    }
}

impl fmt::Display for IdFloor {
    /// The floor's id, or nothing when it has none.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(id) => write!(f, "{id}"),
            None => Ok(()),
        }
    }
}

/// A stream's position state (protocol §5.2, §5.4).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamState {
    /// The stream's history generation.
    pub epoch: Arc<str>,
    /// Offset of the newest notification (`0` if none yet in this epoch).
    pub head: u64,
    /// Oldest offset the server can replay (`L` of §5.4): every offset from it to `head` is held, none is older
    /// than the replay age limit and there are at most the replay count limit of them. `head + 1` when it holds
    /// none.
    pub oldest: u64,
}

/// One replayable notification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryEntry {
    /// Its offset.
    pub offset: u64,
    /// Its `notification` frame.
    pub frame: EncodedFrame,
}

/// The result of reading a stream's history for a subscribe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryRead {
    /// The stream's state when it was read.
    pub state: StreamState,
    /// Replayable notifications in offset order: those after the requested offset when the requested position is
    /// in the current epoch and not ahead of the head, otherwise everything replayable (offsets
    /// `state.oldest ..= state.head`); none when no position was requested.
    pub entries: Vec<HistoryEntry>,
}

/// A requested stream position, `(epoch, offset)`.
pub type Position<'a> = (&'a str, u64);

/// One recorded ack.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AckRecord {
    /// The user the acking connection authenticated as.
    pub user: Arc<str>,
    /// The acking device.
    pub device: Arc<str>,
    /// When the first ack of this device for the notification arrived (ms since the Unix epoch).
    pub at: u64,
}

/// A device's registered push address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushRecord {
    /// The device.
    pub device: Arc<str>,
    /// The push service.
    pub platform: PushPlatform,
    /// Device token or Web Push subscription JSON.
    pub token: String,
    /// When it was registered (ms since the Unix epoch).
    pub registered_at: u64,
}
