//! # tidings-ffi
//!
//! The one UniFFI library that the Swift package (`bindings-swift/`) and the Kotlin library
//! (`bindings-kotlin/`) load. It adapts the native client of `tidings-core` to UniFFI and adds no behaviour of
//! its own: reconnection, replay, dedup, batching and acks all live in the core's engine.
//!
//! - [`TidingsClient`] — the client object; its events are pulled with [`TidingsClient::next_event`] from one
//!   bounded queue (the semantics every platform documents: in order, each event once, at most
//!   `event_capacity` waiting, the client stops reading the server while that many wait);
//! - [`TokenProvider`] — implemented by the app (Swift/Kotlin);
//! - [`ingest_push_with_store`] — dedup for a push handler that runs in another process (the iOS Notification
//!   Service Extension), through the same store file;
//! - [`TidingsError`] — one flat error enum; panics are caught and reported as [`TidingsError::Internal`].
//!
//! Token requests arrive on a Rust thread; the Swift and Kotlin wrappers hop to the right executor.

mod client;
mod types;

use std::panic::{AssertUnwindSafe, catch_unwind};

pub use client::{TidingsClient, TokenProvider, TokenProviderError};
pub use types::*;

uniffi::setup_scaffolding!("tidings");

/// The error every fallible call throws.
#[derive(Debug, PartialEq, Eq, thiserror::Error, uniffi::Error)]
pub enum TidingsError {
    /// An argument was invalid (stream name, push token, configuration).
    #[error("invalid argument: {message}")]
    InvalidArgument {
        /// Detail.
        message: String,
    },
    /// A push payload was not a Tidings notification.
    #[error("invalid push payload: {message}")]
    InvalidPayload {
        /// Detail.
        message: String,
    },
    /// The store could not be read or written.
    #[error("store failure: {message}")]
    Store {
        /// Detail.
        message: String,
    },
    /// The connection failed for good (bad credentials, protocol mismatch); see the reason.
    #[error("connection failed ({reason:?}): {message}")]
    ConnectionFailed {
        /// Category.
        reason: FailureReason,
        /// Detail.
        message: String,
    },
    /// The client was closed.
    #[error("the client is closed")]
    Closed,
    /// A bug in Tidings (a caught panic). Please report it.
    #[error("internal error: {message}")]
    Internal {
        /// Detail.
        message: String,
    },
}

impl From<tidings_core::native::ClientError> for TidingsError {
    fn from(e: tidings_core::native::ClientError) -> Self {
        use tidings_core::EngineError;
        use tidings_core::native::ClientError;
        match e {
            ClientError::Engine(EngineError::InvalidArgument(message)) => TidingsError::InvalidArgument { message },
            ClientError::Engine(EngineError::InvalidPayload(e)) => {
                TidingsError::InvalidPayload { message: e.message().to_string() }
            }
            ClientError::Store(e) => TidingsError::Store { message: e.to_string() },
            ClientError::Closed => TidingsError::Closed,
            ClientError::Config(message) => TidingsError::InvalidArgument { message },
            other => TidingsError::Internal { message: other.to_string() },
        }
    }
}

/// Runs `f`, turning a panic into [`TidingsError::Internal`] so that no panic crosses the FFI.
pub(crate) fn guard<T>(f: impl FnOnce() -> Result<T, TidingsError>) -> Result<T, TidingsError> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|panic| Err(panic_error(panic)))
}

pub(crate) fn panic_error(panic: Box<dyn std::any::Any + Send>) -> TidingsError {
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".into());
    TidingsError::Internal { message }
}

/// Dedup for a push handler in another process (the iOS Notification Service Extension, an Android push
/// service running without the app): passes `payload` through the dedup window kept in the store file at
/// `store_path` — the same file the app's [`TidingsClient`] uses — and saves the seen ids back before returning
/// (the app's cursors and open batches in the file are kept). Opens no connection and starts no thread. The
/// behaviour is the core's (`tidings_core::native::ingest_push_with_store`).
#[uniffi::export]
pub fn ingest_push_with_store(store_path: String, payload: String) -> Result<PushOutcome, TidingsError> {
    guard(|| {
        let store = tidings_core::native::FileStore::new(&store_path);
        let capacity = default_config(String::new()).dedup_capacity as usize;
        match tidings_core::native::ingest_push_with_store(&store, &payload, capacity) {
            Ok(outcome) => Ok(outcome.into()),
            Err(tidings_core::native::ClientError::Engine(tidings_core::EngineError::InvalidPayload(e))) => {
                Err(TidingsError::InvalidPayload { message: e.message().to_string() })
            }
            Err(e) => Err(e.into()),
        }
    })
}

/// The default configuration for a server at `url`.
#[uniffi::export]
pub fn default_config(url: String) -> ClientConfig {
    ClientConfig {
        url,
        store_path: None,
        device_id: None,
        backoff_base_ms: 500,
        backoff_cap_ms: 20_000,
        batch_window_ms: 3_000,
        batch_max_items: 100,
        dedup_capacity: 10_000,
        background_grace_ms: 30_000,
        subscribe_user_stream: true,
        event_capacity: 1024,
        extra_root_certificates: Vec::new(),
    }
}

/// The library version.
#[uniffi::export]
pub fn tidings_version() -> String {
    env!("CARGO_PKG_VERSION").to_string()
}
