//! The token: asking the platform's provider for one (never twice at once), its expiry, and the refresh on a
//! live connection shortly before it expires.

use std::time::Duration;

use super::link::Phase;
use super::timers::Timer;
use super::types::{FailureReason, TokenError};
use super::{Action, Engine};
use crate::protocol::ClientFrame;
use crate::time::Instant;

/// What the engine knows about its token.
#[derive(Debug, Default)]
pub(super) struct TokenState {
    /// The token the provider gave last.
    pub(super) token: Option<String>,
    /// When it expires, as the server reported.
    pub(super) expires_at: Option<Instant>,
    /// A request to the provider is on its way (single flight).
    pub(super) in_flight: bool,
    /// The token was refreshed after a rejection: the next rejection is final.
    pub(super) refreshed_after_rejection: bool,
}

impl Engine {
    /// The token the provider gave last, unless it is known to have expired (for the driver's HTTP API calls).
    pub fn current_token(&self) -> Option<&str> {
        if self.token.expires_at.is_some_and(|t| t <= self.now) {
            return None;
        }
        self.token.token.as_deref()
    }

    /// The token provider answered an [`Action::FetchToken`].
    pub fn handle_token(&mut self, now: Instant, result: Result<String, TokenError>) {
        let now = self.tick(now);
        self.token.in_flight = false;
        match result {
            Ok(token) => {
                self.token.token = Some(token.clone());
                self.token.expires_at = None;
                self.timers.stop(Timer::TokenRefresh);
                match self.phase {
                    Phase::AwaitingToken { attempt } => self.open(now, attempt),
                    Phase::Connected { .. } => {
                        let device = self.device_id();
                        self.queue(&ClientFrame::Auth { token, device, client: None });
                    }
                    _ => {}
                }
            }
            Err(e) if !e.transient => {
                if matches!(self.phase, Phase::AwaitingToken { .. }) {
                    self.fail(now, FailureReason::TokenProvider, e.message);
                }
            }
            Err(e) => {
                if matches!(self.phase, Phase::AwaitingToken { .. }) {
                    self.failures += 1;
                    self.backoff(now, None, format!("token provider: {}", e.message));
                } else if matches!(self.phase, Phase::Connected { .. }) {
                    // Proactive refresh failed; try again in a while, the current token still works.
                    self.timers.set(Timer::TokenRefresh, now + self.config.backoff.ceiling(2));
                }
            }
        }
    }

    /// Asks the provider for a token, unless a request is on its way already (its answer serves this need too).
    pub(super) fn fetch_token(&mut self, force_refresh: bool) {
        if self.token.in_flight {
            return;
        }
        self.token.in_flight = true;
        self.stats.token_fetches += 1;
        self.actions.push_back(Action::FetchToken { force_refresh });
    }

    /// Whether the token expires within a second of `now` (not worth opening a socket with).
    pub(super) fn token_expired(&self, now: Instant) -> bool {
        self.token.expires_at.is_some_and(|t| t <= now + Duration::from_secs(1))
    }

    /// Drops the token (the server rejected it).
    pub(super) fn forget_token(&mut self) {
        self.token.token = None;
        self.token.expires_at = None;
        self.timers.stop(Timer::TokenRefresh);
    }

    /// The server told how long the token lives (`welcome`, `token_refreshed`): the refresh is due
    /// `token_refresh_margin` before expiry, or at 90 % of the lifetime if that is sooner.
    pub(super) fn set_token_expiry(&mut self, now: Instant, expires_in_ms: Option<u64>) {
        self.token.expires_at = expires_in_ms.map(|ms| now + Duration::from_millis(ms));
        let refresh_at = expires_in_ms.map(|ms| {
            let lifetime = Duration::from_millis(ms);
            let lead = self.config.token_refresh_margin.min(lifetime / 10);
            now + lifetime.saturating_sub(lead)
        });
        self.timers.set_opt(Timer::TokenRefresh, refresh_at);
    }
}
