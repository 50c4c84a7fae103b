//! The client object and the traits the app implements.

use std::sync::{Arc, OnceLock};

use futures_util::FutureExt;
use tidings_core::engine::{self as core, Lifecycle};
use tidings_core::native::{self, BoxFuture, Client, Events, FileStore};
use tokio::runtime::Runtime;

use crate::types::*;
use crate::{TidingsError, guard, guard_async};

/// Why the token provider could not supply a token.
#[derive(Debug, thiserror::Error, uniffi::Error)]
pub enum TokenProviderError {
    /// Retrying later may help (network trouble reaching your backend).
    #[error("transient: {message}")]
    Transient {
        /// Detail.
        message: String,
    },
    /// The user is signed out or not allowed: the client stops (`Failed(TokenProvider)`).
    #[error("fatal: {message}")]
    Fatal {
        /// Detail.
        message: String,
    },
    /// The implementation threw something else.
    #[error("unexpected: {message}")]
    Unexpected {
        /// Detail.
        message: String,
    },
}

impl From<uniffi::UnexpectedUniFFICallbackError> for TokenProviderError {
    fn from(e: uniffi::UnexpectedUniFFICallbackError) -> Self {
        TokenProviderError::Unexpected { message: e.reason }
    }
}

/// Supplies Tidings tokens (from your backend). Called when a token is needed: the first connection, after
/// the server rejected one (`force_refresh`: do not return a cached token), and shortly before a known expiry.
/// Never called twice at once, however many reconnects need a token at the same moment.
#[uniffi::export(foreign)]
#[async_trait::async_trait]
pub trait TokenProvider: Send + Sync {
    /// A token for the signed-in user.
    async fn fetch_token(&self, force_refresh: bool) -> Result<String, TokenProviderError>;
}

/// The runtime every client's driver task runs on: two worker threads, created on first use.
fn runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("tidings")
            .enable_all()
            .build()
            .expect("the Tidings runtime starts")
    })
}

struct ForeignTokens(Arc<dyn TokenProvider>);

impl native::TokenProvider for ForeignTokens {
    fn token(&self, force_refresh: bool) -> BoxFuture<'static, Result<String, core::TokenError>> {
        let provider = self.0.clone();
        Box::pin(async move {
            let result = std::panic::AssertUnwindSafe(provider.fetch_token(force_refresh)).catch_unwind().await;
            match result {
                Ok(Ok(token)) => Ok(token),
                Ok(Err(TokenProviderError::Fatal { message })) => Err(core::TokenError { transient: false, message }),
                Ok(Err(e)) => Err(core::TokenError { transient: true, message: e.to_string() }),
                Err(_) => Err(core::TokenError { transient: true, message: "token provider panicked".into() }),
            }
        })
    }
}

/// A Tidings client: one WebSocket with reconnection, replay, dedup, digests and acks.
///
/// Events are pulled with [`TidingsClient::next_event`] from one bounded queue (`event_capacity`, default 1 024):
/// each event is returned once, in order, to whichever caller asks; events wait there until taken, and while the
/// queue is full the client stops reading from the server (nothing is dropped; see the platform READMEs).
#[derive(uniffi::Object)]
pub struct TidingsClient {
    pub(crate) client: Client,
    events: tokio::sync::Mutex<Events>,
}

impl std::fmt::Debug for TidingsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TidingsClient").finish_non_exhaustive()
    }
}

#[uniffi::export(async_runtime = "tokio")]
impl TidingsClient {
    /// A client; it does not connect until [`TidingsClient::connect`].
    #[uniffi::constructor]
    pub fn new(config: ClientConfig, token_provider: Arc<dyn TokenProvider>) -> Result<Arc<Self>, TidingsError> {
        guard(|| {
            if !(config.url.starts_with("ws://") || config.url.starts_with("wss://")) {
                return Err(TidingsError::InvalidArgument {
                    message: format!("url must start with ws:// or wss://, got {:?}", config.url),
                });
            }
            if config.event_capacity == 0 {
                return Err(TidingsError::InvalidArgument { message: "event_capacity must be at least 1".into() });
            }
            let _enter = runtime().enter();
            let mut builder = Client::builder(config.to_native()).token_provider(ForeignTokens(token_provider));
            if let Some(path) = &config.store_path {
                let parent = std::path::Path::new(path).parent();
                if parent.is_some_and(|p| !p.as_os_str().is_empty() && !p.is_dir()) {
                    return Err(TidingsError::InvalidArgument {
                        message: format!("store_path {path:?}: the directory does not exist"),
                    });
                }
                let store = FileStore::new(path).with_max_seen(config.dedup_capacity as usize);
                builder = builder.store(Arc::new(store));
            }
            let (client, events) = builder.build()?;
            Ok(Arc::new(TidingsClient { client, events: tokio::sync::Mutex::new(events) }))
        })
    }

    /// The next event, in order; waits until there is one. Each event is returned once: concurrent callers get
    /// different events. `None` once the client is closed and every event was taken. Cancelling the wait loses
    /// nothing.
    pub async fn next_event(&self) -> Option<TidingsEvent> {
        let mut events = self.events.lock().await;
        events.next().await.map(TidingsEvent::from)
    }

    /// Waits until the connection state differs from `current` and returns the new state (at once if it differs
    /// already). States in between may be skipped: this is the latest state, not a log (the log is in
    /// [`TidingsClient::next_event`]). After `Closed` it never returns.
    pub async fn next_state(&self, current: ConnectionState) -> ConnectionState {
        let mut states = self.client.state_changes();
        loop {
            let now: ConnectionState = states.borrow_and_update().clone().into();
            if now != current {
                return now;
            }
            if states.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    /// Connects, and returns once connected (authenticated; each stream's subscription is confirmed by its
    /// `on_continuity` event, which follows at once). Throws `ConnectionFailed` if the client stops for good (rejected
    /// credentials, …) and `Closed` if it is closed meanwhile. While the network is down it keeps waiting; the
    /// client keeps (re)connecting in the background whatever happens to this call.
    pub async fn connect(&self) -> Result<(), TidingsError> {
        self.client.connect();
        let mut states = self.client.state_changes();
        loop {
            let state: ConnectionState = states.borrow_and_update().clone().into();
            match state {
                ConnectionState::Connected => return Ok(()),
                ConnectionState::Failed { reason, message } => {
                    return Err(TidingsError::ConnectionFailed { reason, message });
                }
                ConnectionState::Closed => return Err(TidingsError::Closed),
                _ => {}
            }
            if states.changed().await.is_err() {
                return Err(TidingsError::Closed);
            }
        }
    }

    /// Subscribes to a stream (`topic:<name>`); resumed from its cursor on every reconnect.
    pub fn subscribe(&self, stream: String) -> Result<(), TidingsError> {
        guard(|| Ok(self.client.subscribe(&stream)?))
    }

    /// Unsubscribes and forgets the stream's cursor.
    pub fn unsubscribe(&self, stream: String) -> Result<(), TidingsError> {
        guard(|| Ok(self.client.unsubscribe(&stream)?))
    }

    /// Acks notifications explicitly. Not needed: delivered notifications are acked automatically.
    pub fn ack(&self, ids: Vec<String>) -> Result<(), TidingsError> {
        guard(|| {
            let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
            Ok(self.client.ack(&ids)?)
        })
    }

    /// Passes a push payload (APNs `userInfo` / FCM `data` as JSON text, any form of protocol §11.1) through
    /// the dedup window shared with the socket: `Show` the first time, `Duplicate` after, `Summary` for a digest or
    /// quiet-hours summary, `ShowTitle` when the push was too large to carry the notification and fetching it
    /// failed (it is fetched with the user's token before this returns). What is shown is acked. The state is
    /// saved before this returns.
    pub async fn ingest_push(&self, payload: String) -> Result<PushOutcome, TidingsError> {
        guard_async(async move { Ok(self.client.ingest_push(&payload).await?.into()) }).await
    }

    /// The user's preferences (protocol §9.5), read with the user's token.
    pub async fn preferences(&self) -> Result<Preferences, TidingsError> {
        guard_async(async move { Ok(self.client.preferences().await?.into()) }).await
    }

    /// Replaces every preference rule of the user; returns the result.
    pub async fn set_preferences(&self, rules: Vec<PreferenceRule>) -> Result<Preferences, TidingsError> {
        guard_async(async move {
            let rules: Vec<_> = rules.into_iter().map(Into::into).collect();
            Ok(self.client.set_preferences(&rules).await?.into())
        })
        .await
    }

    /// Adds rules, each replacing the user's rule with the same selector and channel; returns the result.
    pub async fn update_preferences(&self, rules: Vec<PreferenceRule>) -> Result<Preferences, TidingsError> {
        guard_async(async move {
            let rules: Vec<_> = rules.into_iter().map(Into::into).collect();
            Ok(self.client.update_preferences(&rules).await?.into())
        })
        .await
    }

    /// The user's quiet hours.
    pub async fn quiet_hours(&self) -> Result<QuietHoursSettings, TidingsError> {
        guard_async(async move { Ok(self.client.quiet_hours().await?.into()) }).await
    }

    /// Sets (or with `None` removes) the user's quiet hours; returns the result.
    pub async fn set_quiet_hours(&self, quiet_hours: Option<QuietHours>) -> Result<QuietHoursSettings, TidingsError> {
        guard_async(async move {
            let q: Option<tidings_core::protocol::api::QuietHours> = quiet_hours.map(Into::into);
            Ok(self.client.set_quiet_hours(q.as_ref()).await?.into())
        })
        .await
    }

    /// Registers the device's push address with the server (sent now and on every reconnect).
    pub fn register_push_token(&self, platform: PushPlatform, token: String) -> Result<(), TidingsError> {
        guard(|| Ok(self.client.register_push(platform.into(), &token)?))
    }

    /// The app entered the background: the socket closes after the grace period.
    pub fn app_did_enter_background(&self) {
        let _ = guard(|| {
            self.client.set_lifecycle(Lifecycle::Background);
            Ok(())
        });
    }

    /// The app returns to the foreground: reconnects at once and resumes from the cursors (also picks up what a
    /// push extension recorded in the shared store).
    pub fn app_will_enter_foreground(&self) {
        let _ = guard(|| {
            self.client.set_lifecycle(Lifecycle::Foreground);
            Ok(())
        });
    }

    /// The platform reports a network change; `Available` and `Changed` act at once.
    pub fn network_changed(&self, status: NetworkStatus) {
        let _ = guard(|| {
            self.client.network_changed(status.into());
            Ok(())
        });
    }

    /// The current connection state.
    pub fn state(&self) -> ConnectionState {
        self.client.state().into()
    }

    /// Counters.
    pub fn stats(&self) -> ClientStats {
        self.client.stats().into()
    }

    /// The device id this installation authenticates with.
    pub fn device_id(&self) -> String {
        self.client.device_id()
    }

    /// Closes the connection and saves the state; the events not yet taken can still be taken with
    /// [`TidingsClient::next_event`], which returns `None` after them. Final: create a new client to connect again.
    pub async fn close(&self) {
        self.client.close().await;
    }
}
