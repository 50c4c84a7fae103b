//! # Tidings core
//!
//! One implementation of everything a Tidings client does, for every platform:
//!
//! - [`protocol`] — protocol v1 frames and the notification envelope (`docs/protocol.md`);
//! - [`engine`] — the sans-IO engine: connection state, full-jitter reconnection, heartbeats, per-stream
//!   cursors and replay, dedup across socket / replay / push, digest batching, acks. It takes time as input,
//!   its randomness from a seed, and performs no I/O;
//! - [`store`] — the small persistence interface the engine's snapshots go through;
//! - [`native`] (not on wasm) — a tokio + tokio-tungstenite driver with an async Rust API and a file store.
//!
//! ```text
//!            app ──subscribe/ingest_push/close──►  Engine  ◄──handle_text/handle_timeout── driver ◄── socket
//!            app ◄──────Output::Event────────────  Engine  ───poll_output: Transmit/Action──► driver ──► socket
//! ```

/// `tracing::warn!` when the `tracing` feature is on; nothing otherwise (the arguments are not evaluated).
macro_rules! warn {
    ($($arg:tt)*) => {{
        #[cfg(feature = "tracing")]
        tracing::warn!($($arg)*);
    }};
}

pub mod engine;
pub mod protocol;
pub mod store;
pub mod time;

#[cfg(all(feature = "native", not(target_family = "wasm")))]
pub mod native;

pub use engine::{
    Action, BackoffConfig, BatchConfig, ConnId, ConnectionState, Continuity, Cursor, Digest, Engine, EngineError,
    Event, FailureReason, InboxChange, Lifecycle, NetworkEvent, Output, PushOutcome, PushPlatform, PushRegistration,
    QueuedChange, Reconnects, Reply, RequestError, RequestId, Rtt, Snapshot, SnapshotScope, Stats, StreamMap,
    SuspendReason, TokenError, TransportFailure,
};
pub use protocol::{
    ErrorCode, GapReason, HistoryPage, InboxAction, InboxCounts, InboxItem, InboxPage, InboxQuery, InboxUpdate,
    MarkAllAction, Notification, NotificationFields, Persistence, Priority, PushSummary,
};
pub use time::Instant;

/// The crate README's Rust block, compiled as a doctest (`cargo test`) so that it cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// What an app needs, at the crate root: `use tidings_core::{Client, ClientConfig, Event, …}`.
#[cfg(all(feature = "native", not(target_family = "wasm")))]
pub use native::{
    Client, ClientBuilder, ClientConfig, ClientError, Events, FileStore, StaticToken, TokenProvider,
    ingest_push_with_store,
};
