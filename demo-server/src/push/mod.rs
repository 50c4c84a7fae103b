//! Push senders: Web Push, APNs and FCM, thin on reqwest (HTTP/2, rustls with ring) and jsonwebtoken, each with
//! a configurable base URL, behind a [`Dispatcher`] that retries, stops misconfigured providers and guards
//! address deletions.
//!
//! Not wired yet: the server validates the provider configuration at startup but does not send pushes; the
//! delivery planner ([`crate::planner`]) and these senders are joined to the publish path in phase 2 of issue 14.
//!
//! - [`payload`]: the one payload format (protocol §11) and its per-provider encodings and limits.
//! - [`classify`]: pure classification of every provider answer, and the mass-deletion guard.
//! - [`webpush`], [`apns`], [`fcm`]: one attempt each; [`http`]: TLS roots and clients; [`config`]: flags.

pub mod apns;
pub mod classify;
pub mod config;
mod dispatch;
pub mod fcm;
pub mod http;
pub mod payload;
pub mod webpush;

pub use classify::Verdict;
pub use config::{PushConfig, PushCredentials};
pub use dispatch::{
    Delivery, Dispatcher, Provider, ProviderHealth, PushAddress, RetryPolicy, UNCERTAIN_CONFIG_ERRORS_TO_STOP,
};
pub use payload::{Form, PushBody, PushMessage, Summary, SummaryKind, message_for};

/// The result of one send attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attempt {
    /// What the answer means.
    pub verdict: Verdict,
    /// The payload form that was (or would have been) sent.
    pub form: Form,
    /// The HTTP status, when there was an answer.
    pub status: Option<u16>,
}

impl Attempt {
    pub(crate) fn new(verdict: Verdict, form: Form, status: Option<u16>) -> Self {
        Attempt { verdict, form, status }
    }

    /// Refused before sending (an unusable address or payload): not retried, address kept.
    pub(crate) fn refused(form: Form, reason: String) -> Self {
        Attempt { verdict: Verdict::Rejected { reason }, form, status: None }
    }
}
