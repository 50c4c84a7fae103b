//! APNs sender: the HTTP/2 provider API with token authentication.
//!
//! - One long-lived HTTP/2 connection per key and topic and environment (production, sandbox): every request
//!   is a stream on it. Apple treats a connection per request as abuse.
//! - The connection is replaced after a GOAWAY or a failed connection (a relay that kept a GOAWAY'd session
//!   sent nothing for six hours), after `503` (`Shutdown`, `ServiceUnavailable`), and after three `5xx` in a
//!   row (a stuck connection keeps answering `InternalServerError`).
//! - The provider token (ES256 JWT, `kid` = key id, `iss` = team id, `iat`) is renewed after 50 minutes: before
//!   Apple's hour, and never sooner than its 20 minutes (`TooManyProviderTokenUpdates`), except once after an
//!   `ExpiredProviderToken` for a token at least 20 minutes old. A younger token refused as expired means the
//!   server clock is wrong: a configuration error.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};

use super::Attempt;
use super::classify::{Answer, Verdict, classify_apns, classify_transport};
use super::http::{Clock, Timeouts, TlsRoots, h2_client, transport_failure};
use super::payload::{PushMessage, apns_payload, apns_priority, collapse_token};
use super::webpush::header;
use crate::planner::UnixMs;

/// Production endpoint.
pub const PRODUCTION_URL: &str = "https://api.push.apple.com";
/// Development (sandbox) endpoint.
pub const SANDBOX_URL: &str = "https://api.sandbox.push.apple.com";
/// A provider token is renewed at this age.
pub const TOKEN_RENEW_AFTER: Duration = Duration::from_secs(50 * 60);
/// Apple refuses tokens renewed more often than this.
pub const TOKEN_MIN_AGE: Duration = Duration::from_secs(20 * 60);
/// `5xx` answers in a row after which the connection is replaced.
pub const MAX_5XX_IN_A_ROW: u32 = 3;

/// The credentials and routing of an APNs sender.
#[derive(Clone)]
pub struct ApnsCredentials {
    /// The `.p8` signing key (PKCS#8 PEM, P-256).
    pub key: EncodingKey,
    /// Its 10-character key id.
    pub key_id: String,
    /// The 10-character team id.
    pub team_id: String,
    /// The app's bundle id (`apns-topic`).
    pub topic: String,
    /// Base URL for `apns` tokens.
    pub production_url: String,
    /// Base URL for `apns_sandbox` tokens.
    pub sandbox_url: String,
}

impl std::fmt::Debug for ApnsCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApnsCredentials")
            .field("key_id", &self.key_id)
            .field("team_id", &self.team_id)
            .field("topic", &self.topic)
            .field("production_url", &self.production_url)
            .field("sandbox_url", &self.sandbox_url)
            .finish_non_exhaustive()
    }
}

/// One environment's connection.
#[derive(Debug)]
struct Connection {
    base_url: String,
    roots: TlsRoots,
    /// (generation, client): the client owns the pool, hence the HTTP/2 connection.
    client: Mutex<(u64, reqwest::Client)>,
    errors_5xx: AtomicU32,
}

impl Connection {
    fn new(base_url: &str, roots: &TlsRoots) -> Self {
        Connection {
            base_url: base_url.trim_end_matches('/').to_owned(),
            roots: roots.clone(),
            client: Mutex::new((0, h2_client(roots, Timeouts::default()))),
            errors_5xx: AtomicU32::new(0),
        }
    }

    fn current(&self) -> (u64, reqwest::Client) {
        self.client.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Replaces the connection if it is still generation `seen` (concurrent failures replace it once).
    fn replace(&self, seen: u64) -> bool {
        let mut c = self.client.lock().unwrap_or_else(|e| e.into_inner());
        if c.0 != seen {
            return false;
        }
        *c = (seen + 1, h2_client(&self.roots, Timeouts::default()));
        true
    }
}

#[derive(Clone, Debug)]
struct ProviderToken {
    jwt: Arc<str>,
    issued_at: UnixMs,
}

/// Sends to APNs.
#[derive(Debug)]
pub struct ApnsSender {
    credentials: ApnsCredentials,
    production: Connection,
    sandbox: Connection,
    token: Mutex<Option<ProviderToken>>,
    clock: Arc<dyn Clock>,
    tokens_issued: AtomicU64,
    reconnects: AtomicU64,
}

impl ApnsSender {
    /// A sender; connections open on the first push.
    pub fn new(credentials: ApnsCredentials, roots: &TlsRoots, clock: Arc<dyn Clock>) -> Self {
        ApnsSender {
            production: Connection::new(&credentials.production_url, roots),
            sandbox: Connection::new(&credentials.sandbox_url, roots),
            credentials,
            token: Mutex::new(None),
            clock,
            tokens_issued: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
        }
    }

    /// How many provider tokens were signed.
    pub fn tokens_issued(&self) -> u64 {
        self.tokens_issued.load(Ordering::Relaxed)
    }

    /// How many times a connection was replaced.
    pub fn reconnects(&self) -> u64 {
        self.reconnects.load(Ordering::Relaxed)
    }

    /// The current provider token, signing a new one when it is 50 minutes old (or `force`d after an
    /// `ExpiredProviderToken`, if the current one is at least 20 minutes old). `Err`: a configuration error.
    fn provider_token(&self, force: bool) -> Result<Arc<str>, String> {
        let now = self.clock.now_ms();
        let mut slot = self.token.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = slot.as_ref() {
            let age = now.saturating_sub(t.issued_at);
            if force && age < TOKEN_MIN_AGE.as_millis() as u64 {
                return Err(format!(
                    "APNs refused a provider token signed {} s ago as expired: is the server clock right?",
                    age / 1000
                ));
            }
            if !force && age < TOKEN_RENEW_AFTER.as_millis() as u64 {
                return Ok(t.jwt.clone());
            }
        }
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.credentials.key_id.clone());
        header.typ = None;
        let claims = serde_json::json!({"iss": self.credentials.team_id, "iat": now / 1000});
        let jwt: Arc<str> = jsonwebtoken::encode(&header, &claims, &self.credentials.key)
            .map_err(|e| format!("cannot sign the APNs provider token: {e}"))?
            .into();
        *slot = Some(ProviderToken { jwt: jwt.clone(), issued_at: now });
        self.tokens_issued.fetch_add(1, Ordering::Relaxed);
        Ok(jwt)
    }

    /// One attempt to deliver `msg` to the device token `token` (hex), registered at `registered_at`; `sandbox`
    /// for `apns_sandbox` registrations.
    pub async fn send(&self, token: &str, sandbox: bool, registered_at: UnixMs, msg: &PushMessage) -> Attempt {
        let (payload, form) = apns_payload(msg);
        if token.is_empty() || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Attempt::new(Verdict::DeviceGone { reason: "not a hex APNs device token".into() }, form, None);
        }
        let jwt = match self.provider_token(false) {
            Ok(j) => j,
            Err(e) => return Attempt::new(Verdict::ConfigError { reason: e, certain: true }, form, None),
        };
        let conn = if sandbox { &self.sandbox } else { &self.production };
        let (generation, client) = conn.current();
        let now = self.clock.now_ms();
        let expiration = if msg.ttl.is_zero() { 0 } else { now / 1000 + msg.ttl.as_secs() };
        let mut request = client
            .post(format!("{}/3/device/{token}", conn.base_url))
            .header("authorization", format!("bearer {jwt}"))
            .header("apns-topic", &self.credentials.topic)
            .header("apns-push-type", "alert")
            .header("apns-priority", apns_priority(msg.priority).to_string())
            .header("apns-expiration", expiration.to_string())
            .header("content-type", "application/json");
        if let Some(key) = msg.collapse_key() {
            request = request.header("apns-collapse-id", collapse_token(key, 64, |c| !c.is_control()));
        }
        let response = match request.body(payload).send().await {
            Ok(r) => r,
            Err(e) => {
                let verdict = classify_transport(&transport_failure(&e));
                self.after(conn, generation, &verdict);
                return Attempt::new(verdict, form, None);
            }
        };
        let status = response.status().as_u16();
        let apns_id = header(&response, "apns-id");
        let retry_after = header(&response, "retry-after");
        let body = response.bytes().await.unwrap_or_default();
        let answer =
            Answer { status, retry_after: retry_after.as_deref(), message_id: apns_id.as_deref(), body: &body };
        let mut verdict = classify_apns(&answer, registered_at, self.clock.now_ms());
        if let Verdict::Retry { renew_auth: true, .. } = &verdict
            && let Err(e) = self.provider_token(true)
        {
            verdict = Verdict::ConfigError { reason: e, certain: true };
        }
        if (500..600).contains(&status) {
            if conn.errors_5xx.fetch_add(1, Ordering::Relaxed) + 1 >= MAX_5XX_IN_A_ROW
                && let Verdict::Retry { reconnect, .. } = &mut verdict
            {
                *reconnect = true;
            }
        } else {
            conn.errors_5xx.store(0, Ordering::Relaxed);
        }
        self.after(conn, generation, &verdict);
        Attempt::new(verdict, form, Some(status))
    }

    fn after(&self, conn: &Connection, generation: u64, verdict: &Verdict) {
        if let Verdict::Retry { reconnect: true, reason, .. } = verdict
            && conn.replace(generation)
        {
            conn.errors_5xx.store(0, Ordering::Relaxed);
            self.reconnects.fetch_add(1, Ordering::Relaxed);
            tracing::info!(url = %conn.base_url, %reason, "APNs connection replaced");
        }
    }
}
