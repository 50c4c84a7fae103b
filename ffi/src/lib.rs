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
mod inbox;
mod types;

use std::panic::{AssertUnwindSafe, catch_unwind};

pub use client::{TidingsClient, TokenProvider, TokenProviderError};
pub use inbox::*;
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
    /// The server refused a request (inbox, history): `code` is `bad_request`, `forbidden` or `try_again_later`.
    #[error("request refused ({code}): {message}")]
    RequestRefused {
        /// Why.
        code: String,
        /// Detail, naming the member.
        message: String,
    },
    /// A read (inbox page, history page) got no answer in time (30 s, connecting included).
    #[error("no answer in time")]
    TimedOut,
    /// A bug in Tidings (a caught panic). Please report it.
    #[error("internal error: {message}")]
    Internal {
        /// Detail.
        message: String,
    },
    /// The server refused the user's token for an HTTP call (the token provider is asked again once first).
    #[error("unauthorized: {message}")]
    Unauthorized {
        /// Detail.
        message: String,
    },
    /// The server refused the request (`4xx`: invalid preferences or quiet hours, an unknown notification …).
    #[error("refused ({status} {code}): {message}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The error code (`bad_request`, `not_found`, …).
        code: String,
        /// What is wrong.
        message: String,
    },
    /// The server could not be reached or could not answer now: try again later.
    #[error("unavailable: {message}")]
    Unavailable {
        /// Detail.
        message: String,
        /// How long to wait, when the server said.
        retry_after_ms: Option<u64>,
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
            ClientError::Request(tidings_core::RequestError::Refused { code, message }) => {
                TidingsError::RequestRefused { code: code.as_str().to_string(), message }
            }
            ClientError::Request(tidings_core::RequestError::TimedOut) => TidingsError::TimedOut,
            ClientError::Request(tidings_core::RequestError::Closed) => TidingsError::Closed,
            ClientError::Config(message) => TidingsError::InvalidArgument { message },
            ClientError::Api(e) => e.into(),
            other => TidingsError::Internal { message: other.to_string() },
        }
    }
}

impl From<tidings_core::protocol::api::ApiError> for TidingsError {
    fn from(e: tidings_core::protocol::api::ApiError) -> Self {
        use tidings_core::protocol::api::ApiError;
        match e {
            ApiError::Unauthorized { message, .. } => TidingsError::Unauthorized { message },
            ApiError::Refused { status, code, message } => TidingsError::Refused { status, code, message },
            ApiError::Unavailable { message, retry_after_ms, .. } => {
                TidingsError::Unavailable { message, retry_after_ms }
            }
            ApiError::Malformed(m) => {
                TidingsError::Unavailable { message: format!("malformed answer: {m}"), retry_after_ms: None }
            }
        }
    }
}

/// Runs `fut`, turning a panic into [`TidingsError::Internal`].
pub(crate) async fn guard_async<T>(
    fut: impl std::future::Future<Output = Result<T, TidingsError>>,
) -> Result<T, TidingsError> {
    use futures_util::FutureExt;
    AssertUnwindSafe(fut).catch_unwind().await.unwrap_or_else(|panic| Err(panic_error(panic)))
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

/// The push path of a handler in another process (the iOS Notification Service Extension, an Android push
/// service running without the app): passes `payload` through the dedup window kept in the store file at
/// `store_path` — the same file the app's [`TidingsClient`] uses — and saves the seen ids back before returning
/// (the app's cursors and open batches in the file are kept). With `server`, a push too large to carry its
/// notification is fetched from the server (else its title is shown) and what is shown is acked there. Opens
/// no WebSocket. The behaviour is the core's (`tidings_core::native::ingest_push_with_store`).
#[uniffi::export(async_runtime = "tokio")]
pub async fn ingest_push_with_store(
    store_path: String,
    payload: String,
    server: Option<PushServer>,
) -> Result<PushOutcome, TidingsError> {
    guard_async(async move {
        let store = tidings_core::native::FileStore::new(&store_path);
        let capacity = default_config(String::new()).dedup_capacity as usize;
        let server: Option<tidings_core::native::PushServer> = server.map(Into::into);
        match tidings_core::native::ingest_push_with_store(&store, &payload, capacity, server.as_ref()).await {
            Ok(outcome) => Ok(outcome.into()),
            Err(tidings_core::native::ClientError::Engine(tidings_core::EngineError::InvalidPayload(e))) => {
                Err(TidingsError::InvalidPayload { message: e.message().to_string() })
            }
            Err(e) => Err(e.into()),
        }
    })
    .await
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
