//! The dispatcher: routes a push to its provider's sender, retries what the classifier says to retry (full
//! jitter backoff, honouring `Retry-After`, renewing credentials or replacing the connection first when told),
//! stops a provider whose configuration is wrong, and guards address deletions.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tidings_core::protocol::PushPlatform;
use tracing::{error, warn};

use super::apns::ApnsSender;
use super::classify::{DeletionGuard, GuardDecision, Verdict};
use super::config::PushCredentials;
use super::fcm::FcmSender;
use super::http::Clock;
use super::payload::{Form, PushMessage};
use super::webpush::WebPushSender;
use crate::metrics::PushMetrics;
use crate::planner::UnixMs;

/// A push provider.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Provider {
    /// Web Push (RFC 8030).
    WebPush,
    /// Apple Push Notification service.
    Apns,
    /// Firebase Cloud Messaging.
    Fcm,
}

impl Provider {
    /// The provider a registered platform is pushed through.
    pub fn of(platform: PushPlatform) -> Provider {
        match platform {
            PushPlatform::Apns | PushPlatform::ApnsSandbox => Provider::Apns,
            PushPlatform::Fcm => Provider::Fcm,
            PushPlatform::WebPush => Provider::WebPush,
        }
    }

    /// Its name in logs and health.
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::WebPush => "web_push",
            Provider::Apns => "apns",
            Provider::Fcm => "fcm",
        }
    }

    fn index(self) -> usize {
        match self {
            Provider::WebPush => 0,
            Provider::Apns => 1,
            Provider::Fcm => 2,
        }
    }
}

/// A device's push address.
#[derive(Clone, Copy, Debug)]
pub struct PushAddress<'a> {
    /// Its platform.
    pub platform: PushPlatform,
    /// The APNs device token, the FCM registration token, or the Web Push subscription JSON.
    pub token: &'a str,
    /// When it was registered (ms since the Unix epoch).
    pub registered_at: UnixMs,
}

/// How long the dispatcher keeps trying before it hands a push back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts per [`Dispatcher::deliver`] call.
    pub max_attempts: u32,
    /// The first backoff's cap; doubled per attempt.
    pub base: Duration,
    /// The largest backoff cap.
    pub max_backoff: Duration,
    /// A wait longer than this (a long `Retry-After`) is not slept through: the push comes back as
    /// [`Delivery::RetryLater`] for the caller to schedule.
    pub max_inline_wait: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 4,
            base: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            max_inline_wait: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// The wait after failed attempt `attempt` (1-based): full jitter, `random` in `[0, 1)` times
    /// `min(max_backoff, base · 2^(attempt-1))`.
    pub fn backoff(&self, attempt: u32, random: f64) -> Duration {
        let cap = self.base.saturating_mul(1u32 << attempt.saturating_sub(1).min(20)).min(self.max_backoff);
        cap.mul_f64(random.clamp(0.0, 1.0))
    }
}

/// The outcome of [`Dispatcher::deliver`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// The provider accepted it.
    Accepted {
        /// The provider's message id.
        provider_id: Option<String>,
        /// The payload form sent.
        form: Form,
        /// Attempts it took.
        attempts: u32,
    },
    /// The address is dead: delete it.
    DeleteAddress {
        /// The provider's reason.
        reason: String,
    },
    /// Not delivered, and the address stays: the provider's "gone" predates the registration, or deletions are
    /// paused by the mass-deletion guard.
    KeepAddress {
        /// Why.
        reason: String,
    },
    /// The payload was refused (never a reason to delete the address).
    PayloadRejected {
        /// The provider's reason.
        reason: String,
    },
    /// Refused for a reason retrying does not fix; the address stays.
    Rejected {
        /// The provider's reason.
        reason: String,
    },
    /// Not delivered yet: try again after `after` (retries used up, or a long `Retry-After`).
    RetryLater {
        /// How long to wait at least.
        after: Duration,
        /// The last failure.
        reason: String,
    },
    /// The provider is stopped by a configuration error (see [`Dispatcher::health`]).
    ProviderStopped {
        /// The provider.
        provider: Provider,
        /// The configuration error.
        reason: String,
    },
    /// The server has no configuration for this provider.
    NotConfigured {
        /// The provider.
        provider: Provider,
    },
}

/// A provider's state, for health checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProviderHealth {
    /// The provider.
    pub provider: Provider,
    /// Whether it is configured.
    pub configured: bool,
    /// The configuration error that stopped it, if one did.
    pub stopped: Option<String>,
    /// Whether address deletions are paused (mass-deletion guard).
    pub deletions_paused: bool,
}

/// Configuration errors that may be about one address (see [`Verdict::ConfigError`]) stop the provider when
/// this many come in a row.
pub const UNCERTAIN_CONFIG_ERRORS_TO_STOP: u32 = 3;

#[derive(Debug, Default)]
struct Slot {
    stopped: Mutex<Option<String>>,
    uncertain: AtomicU32,
    guard: Mutex<DeletionGuard>,
}

/// Routes pushes to the configured senders.
#[derive(Debug)]
pub struct Dispatcher {
    web_push: Option<WebPushSender>,
    apns: Option<ApnsSender>,
    fcm: Option<FcmSender>,
    slots: [Slot; 3],
    retry: RetryPolicy,
    clock: Arc<dyn Clock>,
    metrics: Option<PushMetrics>,
}

impl Dispatcher {
    /// A dispatcher over the given senders.
    pub fn new(
        web_push: Option<WebPushSender>,
        apns: Option<ApnsSender>,
        fcm: Option<FcmSender>,
        retry: RetryPolicy,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Dispatcher { web_push, apns, fcm, slots: Default::default(), retry, clock, metrics: None }
    }

    /// Reports every [`Dispatcher::deliver`] to `metrics` (`tidings_push_sends_total`, send time, token
    /// invalidations, stopped providers).
    pub fn with_metrics(mut self, metrics: PushMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Whether a configured provider is stopped by a configuration error (what `GET /readyz` reports).
    pub fn stopped_providers(&self) -> Vec<(Provider, String)> {
        self.health().into_iter().filter_map(|h| h.stopped.map(|reason| (h.provider, reason))).collect()
    }

    /// The senders of a loaded configuration.
    pub fn from_credentials(credentials: PushCredentials, retry: RetryPolicy, clock: Arc<dyn Clock>) -> Self {
        let roots = credentials.roots;
        let web_push = credentials.vapid.map(|(key, subject)| WebPushSender::new(key, subject, &roots, clock.clone()));
        let apns = credentials.apns.map(|c| ApnsSender::new(c, &roots, clock.clone()));
        let fcm = credentials
            .fcm
            .map(|(account, key, endpoints)| FcmSender::new(account, key, endpoints, &roots, clock.clone()));
        Dispatcher::new(web_push, apns, fcm, retry, clock)
    }

    /// The Web Push sender, if configured.
    pub fn web_push(&self) -> Option<&WebPushSender> {
        self.web_push.as_ref()
    }

    /// The APNs sender, if configured.
    pub fn apns(&self) -> Option<&ApnsSender> {
        self.apns.as_ref()
    }

    /// The FCM sender, if configured.
    pub fn fcm(&self) -> Option<&FcmSender> {
        self.fcm.as_ref()
    }

    /// Each provider's state.
    pub fn health(&self) -> Vec<ProviderHealth> {
        let now = self.clock.now_ms();
        [
            (Provider::WebPush, self.web_push.is_some()),
            (Provider::Apns, self.apns.is_some()),
            (Provider::Fcm, self.fcm.is_some()),
        ]
        .into_iter()
        .map(|(provider, configured)| {
            let slot = &self.slots[provider.index()];
            ProviderHealth {
                provider,
                configured,
                stopped: slot.stopped.lock().unwrap_or_else(|e| e.into_inner()).clone(),
                deletions_paused: slot.guard.lock().unwrap_or_else(|e| e.into_inner()).is_paused(now),
            }
        })
        .collect()
    }

    /// Delivers `msg` to `address`, retrying within the [`RetryPolicy`].
    pub async fn deliver(&self, address: &PushAddress<'_>, msg: &PushMessage) -> Delivery {
        let started = std::time::Instant::now();
        let delivery = self.deliver_with_retries(address, msg).await;
        if let Some(metrics) = &self.metrics {
            metrics.send(Provider::of(address.platform), &delivery, started.elapsed());
        }
        delivery
    }

    async fn deliver_with_retries(&self, address: &PushAddress<'_>, msg: &PushMessage) -> Delivery {
        let provider = Provider::of(address.platform);
        let slot = &self.slots[provider.index()];
        let configured = match provider {
            Provider::WebPush => self.web_push.is_some(),
            Provider::Apns => self.apns.is_some(),
            Provider::Fcm => self.fcm.is_some(),
        };
        if !configured {
            return Delivery::NotConfigured { provider };
        }
        let mut attempt = 0;
        loop {
            if let Some(reason) = slot.stopped.lock().unwrap_or_else(|e| e.into_inner()).clone() {
                return Delivery::ProviderStopped { provider, reason };
            }
            attempt += 1;
            let result = match (provider, &self.web_push, &self.apns, &self.fcm) {
                (Provider::WebPush, Some(s), _, _) => s.send(address.token, msg).await,
                (Provider::Apns, _, Some(s), _) => {
                    let sandbox = address.platform == PushPlatform::ApnsSandbox;
                    s.send(address.token, sandbox, address.registered_at, msg).await
                }
                (Provider::Fcm, _, _, Some(s)) => s.send(address.token, msg).await,
                _ => return Delivery::NotConfigured { provider },
            };
            let now = self.clock.now_ms();
            let record_ok = || slot.guard.lock().unwrap_or_else(|e| e.into_inner()).record_ok(now);
            match result.verdict {
                Verdict::Accepted { provider_id } => {
                    record_ok();
                    slot.uncertain.store(0, Ordering::Relaxed);
                    return Delivery::Accepted { provider_id, form: result.form, attempts: attempt };
                }
                Verdict::DeviceGone { reason } => {
                    let decision = slot.guard.lock().unwrap_or_else(|e| e.into_inner()).record_gone(now);
                    return match decision {
                        GuardDecision::Delete => Delivery::DeleteAddress { reason },
                        GuardDecision::Paused { newly } => {
                            if newly {
                                warn!(
                                    provider = provider.as_str(),
                                    "push addresses are reported gone at a suspicious rate (a wrong environment or \
                                     credentials?): deletions paused for 10 minutes"
                                );
                            }
                            Delivery::KeepAddress { reason: format!("deletions paused: {reason}") }
                        }
                    };
                }
                Verdict::Stale { reason } => {
                    record_ok();
                    return Delivery::KeepAddress { reason };
                }
                Verdict::PayloadRejected { reason } => {
                    record_ok();
                    return Delivery::PayloadRejected { reason };
                }
                Verdict::Rejected { reason } => {
                    record_ok();
                    return Delivery::Rejected { reason };
                }
                Verdict::ConfigError { reason, certain } => {
                    let in_a_row = slot.uncertain.fetch_add(1, Ordering::Relaxed) + 1;
                    if !certain && in_a_row < UNCERTAIN_CONFIG_ERRORS_TO_STOP {
                        warn!(provider = provider.as_str(), %reason, "push refused: credentials not accepted for this address");
                        return Delivery::Rejected { reason };
                    }
                    error!(
                        provider = provider.as_str(),
                        %reason,
                        "push provider stopped by a configuration error; fix the configuration and restart the server"
                    );
                    *slot.stopped.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason.clone());
                    return Delivery::ProviderStopped { provider, reason };
                }
                Verdict::Retry { after, reason, renew_auth, .. } => {
                    record_ok();
                    let delay = match after {
                        Some(after) => after,
                        // A renewed credential is tried at once.
                        None if renew_auth => Duration::ZERO,
                        None => self.retry.backoff(attempt, fastrand::f64()),
                    };
                    if attempt >= self.retry.max_attempts || delay > self.retry.max_inline_wait {
                        let after = delay.max(self.retry.backoff(attempt + 1, 1.0));
                        return Delivery::RetryLater { after, reason };
                    }
                    tracing::debug!(provider = provider.as_str(), %reason, ?delay, attempt, "push retried");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_full_jitter_under_a_doubling_cap() {
        let p = RetryPolicy::default();
        assert_eq!(p.backoff(1, 0.0), Duration::ZERO);
        assert_eq!(p.backoff(1, 1.0), Duration::from_millis(500));
        assert_eq!(p.backoff(2, 1.0), Duration::from_secs(1));
        assert_eq!(p.backoff(3, 0.5), Duration::from_secs(1));
        assert_eq!(p.backoff(10, 1.0), Duration::from_secs(30), "capped");
        assert_eq!(p.backoff(200, 1.0), Duration::from_secs(30), "no overflow");
    }

    #[test]
    fn providers_by_platform() {
        assert_eq!(Provider::of(PushPlatform::ApnsSandbox), Provider::Apns);
        assert_eq!(Provider::of(PushPlatform::WebPush).as_str(), "web_push");
    }
}
