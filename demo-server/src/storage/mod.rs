//! Storage behind the server: stream logs (offsets, epochs, replay buffers), acks and idempotency keys.
//!
//! The [`Storage`] trait is object safe and asynchronous (every method returns a boxed future), so a durable
//! or networked backend (e.g. Redis) can implement it; [`MemoryStorage`] is the in-process implementation.
//! Which live connections subscribe to which stream (the fan-out registry) is *not* storage: it lives in the
//! server and never leaves the process.
//!
//! # Concurrency contract
//! The server serializes all [`Storage::append`] and [`Storage::read_after`] calls *for one stream* (it holds
//! that stream's fan-out lock around them, which is what makes subscribe atomic with respect to publish), so
//! a backend may rely on it but must still be safe to call concurrently for different streams and for the
//! ack and idempotency methods.

mod memory;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::extract::ws::Utf8Bytes;

pub use memory::{MemoryStorage, StorageLimits};

use crate::publish::Delivery;

/// A boxed `Send` future, the return type of every [`Storage`] method.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

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

/// A stream's position state (protocol §5.2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamState {
    /// The stream's history generation.
    pub epoch: Arc<str>,
    /// Offset of the newest notification (`0` if none yet in this epoch).
    pub head: u64,
    /// Oldest offset still buffered; `head + 1` when the buffer is empty.
    pub oldest: u64,
}

/// Result of [`Storage::append`].
#[derive(Clone, Debug)]
pub struct Appended {
    /// The stream's epoch.
    pub epoch: Arc<str>,
    /// The offset given to the notification.
    pub offset: u64,
    /// The stored frame (what the encoder returned).
    pub frame: EncodedFrame,
}

/// Result of [`Storage::read_after`].
#[derive(Clone, Debug)]
pub struct ReadAfter {
    /// The stream's state when the entries were read.
    pub state: StreamState,
    /// The buffered frames with offsets `after + 1 ..= head`, in order — only when the requested epoch is the
    /// stream's, `after <= head` and nothing after `after` has been evicted; empty otherwise.
    pub entries: Vec<EncodedFrame>,
}

/// Builds the frame stored for a notification once its stream's epoch and offset are known.
pub type FrameEncoder<'a> = &'a (dyn Fn(&str, u64) -> EncodedFrame + Send + Sync);

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
    pub platform: tidings_core::protocol::PushPlatform,
    /// Device token or Web Push subscription JSON.
    pub token: String,
    /// When it was registered (ms since the Unix epoch).
    pub registered_at: u64,
}

/// Result of [`Storage::claim_id`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IdClaim {
    /// The id was not seen within the idempotency window; it is now claimed by the caller.
    Claimed,
    /// The id was accepted before; the deliveries of that publish, when it has completed.
    Duplicate(Option<Vec<Delivery>>),
}

/// A storage backend failure.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("storage error: {0}")]
pub struct StorageError(pub String);

/// Where the server keeps stream logs, acks and idempotency keys. See the module docs for the concurrency
/// contract.
pub trait Storage: Send + Sync + 'static {
    /// The state of `stream`, creating it with a fresh epoch and head `0` if the backend has no history for it.
    fn stream_state<'a>(&'a self, stream: &'a str) -> BoxFuture<'a, Result<StreamState, StorageError>>;

    /// Appends a notification to `stream` (creating the stream if needed): assigns offset `head + 1`, calls
    /// `encode(epoch, offset)` once to build the frame, keeps it in the replay buffer and evicts what exceeds
    /// the buffer's limits (count and age).
    fn append<'a>(
        &'a self,
        stream: &'a str,
        created_at_ms: u64,
        encode: FrameEncoder<'a>,
    ) -> BoxFuture<'a, Result<Appended, StorageError>>;

    /// Reads the frames after position `(epoch, after)` for replay, with the state they were read at (creating
    /// the stream if needed). See [`ReadAfter::entries`] for when entries are returned.
    fn read_after<'a>(
        &'a self,
        stream: &'a str,
        epoch: &'a str,
        after: u64,
    ) -> BoxFuture<'a, Result<ReadAfter, StorageError>>;

    /// Records that `device` of `user` received the notifications `ids` at `at_ms`. Unknown ids are fine.
    fn record_acks<'a>(
        &'a self,
        user: &'a Arc<str>,
        device: &'a Arc<str>,
        ids: &'a [String],
        at_ms: u64,
    ) -> BoxFuture<'a, Result<(), StorageError>>;

    /// The acks recorded for notification `id`, oldest first (empty when unknown or forgotten).
    fn acks<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Vec<AckRecord>, StorageError>>;

    /// Claims a caller-supplied publish id for the idempotency window, or reports that it was accepted before.
    fn claim_id<'a>(&'a self, id: &'a str, now_ms: u64) -> BoxFuture<'a, Result<IdClaim, StorageError>>;

    /// Records the deliveries of a claimed id's publish, for later duplicate replies.
    fn complete_id<'a>(&'a self, id: &'a str, deliveries: &'a [Delivery]) -> BoxFuture<'a, Result<(), StorageError>>;

    /// Releases a claimed id whose publish failed, so that a retry is not mistaken for a duplicate.
    fn release_id<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), StorageError>>;

    /// Stores the push address of `record.device` of `user`, replacing the device's previous one. A token
    /// registered by another device of the same user moves to this device (a reinstalled app).
    fn register_push<'a>(&'a self, user: &'a str, record: PushRecord) -> BoxFuture<'a, Result<(), StorageError>>;

    /// The push addresses of `user`'s devices, oldest registration first.
    fn push_addresses<'a>(&'a self, user: &'a str) -> BoxFuture<'a, Result<Vec<PushRecord>, StorageError>>;
}
