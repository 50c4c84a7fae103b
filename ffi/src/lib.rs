//! # tidings-ffi
//!
//! The one UniFFI library that the Swift package (`bindings-swift/`) and the Kotlin library
//! (`bindings-kotlin/`) load. It adapts the native client of `tidings-core` to UniFFI and adds no behaviour of
//! its own: reconnection, replay, dedup, batching and acks all live in the core's engine.
//!
//! - [`TidingsClient`] — the client object;
//! - [`EventListener`], [`TokenProvider`] — implemented by the app (Swift/Kotlin);
//! - [`ingest_push_with_store`] — dedup for a push handler that runs in another process (the iOS Notification
//!   Service Extension), through the same store file;
//! - [`TidingsError`] — one flat error enum; panics are caught and reported as [`TidingsError::Internal`].
//!
//! Callbacks arrive on a Rust thread. The Swift and Kotlin wrappers hop to the right executor.

mod client;
mod types;

use std::panic::{AssertUnwindSafe, catch_unwind};

pub use client::{EventListener, TidingsClient, TokenProvider, TokenProviderError};
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
/// `store_path` — the same file the app's [`TidingsClient`] uses — and saves it before returning. Opens no
/// connection and starts no thread.
#[uniffi::export]
pub fn ingest_push_with_store(store_path: String, payload: String) -> Result<PushOutcome, TidingsError> {
    guard(|| {
        use tidings_core::native::FileStore;
        use tidings_core::store::Store;
        let store = FileStore::new(&store_path);
        let mut config = tidings_core::engine::Config::new("ws://unused.invalid/");
        config.persistence = true;
        let mut engine = tidings_core::Engine::new(config, 0);
        let now = tidings_core::Instant::ZERO;
        match store.load() {
            Ok(Some(snapshot)) => engine.restore(now, &snapshot),
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "push extension: state unreadable, starting fresh"),
        }
        let outcome = engine.ingest_push(now, &payload).map_err(|e| TidingsError::InvalidPayload {
            message: e.to_string().replace("invalid push payload: ", ""),
        })?;
        store.save(&engine.snapshot()).map_err(|e| TidingsError::Store { message: e.to_string() })?;
        Ok(outcome.into())
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
    }
}

/// The library version.
#[uniffi::export]
pub fn tidings_version() -> String {
    env!("CARGO_PKG_VERSION").to_string()
}
