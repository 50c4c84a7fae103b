//! FCM HTTP v1 sender: a service account's key signs an RS256 JWT, which the OAuth2 token endpoint exchanges
//! for an access token (JWT bearer grant, RFC 7523), cached until five minutes before it expires and renewed
//! by one caller while the others wait. Messages are data-only (`data` values are strings), with the Android
//! priority, TTL and, when the caller sets one, `collapse_key`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::Attempt;
use super::classify::{Answer, Verdict, classify_fcm, classify_transport, parse_retry_after};
use super::http::{Clock, Timeouts, TlsRoots, client, error_chain, transport_failure};
use super::payload::{PushMessage, fcm_android_priority, fcm_data};
use super::webpush::header;
use crate::planner::UnixMs;

/// The FCM API.
pub const FCM_URL: &str = "https://fcm.googleapis.com";
/// Google's token endpoint (service accounts name it in `token_uri`).
pub const TOKEN_URL: &str = "https://oauth2.googleapis.com/token";
/// The OAuth2 scope for sending.
pub const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
/// Access tokens are renewed this long before they expire.
pub const RENEW_BEFORE: Duration = Duration::from_secs(5 * 60);

/// The parts of a service-account JSON key file the sender uses.
#[derive(Clone, Deserialize)]
pub struct ServiceAccount {
    /// Must be `service_account`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The Firebase project.
    pub project_id: String,
    /// The account (`iss` of the JWT).
    pub client_email: String,
    /// The key's id (`kid`).
    #[serde(default)]
    pub private_key_id: Option<String>,
    /// PKCS#8 PEM RSA key.
    pub private_key: String,
    /// The token endpoint.
    #[serde(default)]
    pub token_uri: Option<String>,
}

impl std::fmt::Debug for ServiceAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceAccount")
            .field("project_id", &self.project_id)
            .field("client_email", &self.client_email)
            .field("token_uri", &self.token_uri)
            .finish_non_exhaustive()
    }
}

impl ServiceAccount {
    /// Parses and checks a service-account JSON key; the error says what is wrong.
    pub fn parse(json: &str) -> Result<(Self, EncodingKey), String> {
        let account: ServiceAccount =
            serde_json::from_str(json).map_err(|e| format!("is not a service-account JSON key: {e}"))?;
        if account.kind != "service_account" {
            return Err(format!("has type {:?}; a service-account key has \"service_account\"", account.kind));
        }
        if account.project_id.is_empty() || account.client_email.is_empty() {
            return Err("has an empty project_id or client_email".into());
        }
        let key = EncodingKey::from_rsa_pem(account.private_key.as_bytes())
            .map_err(|e| format!("private_key is not an RSA key in PEM: {e}"))?;
        Ok((account, key))
    }
}

#[derive(Clone, Debug)]
struct AccessToken {
    token: Arc<str>,
    expires_at: UnixMs,
}

/// Where the FCM sender sends and authenticates.
#[derive(Clone, Debug)]
pub struct FcmEndpoints {
    /// Base URL of the FCM API (`/v1/projects/{project}/messages:send` is appended).
    pub api_url: String,
    /// The token endpoint; `None`: the service account's `token_uri`, else Google's.
    pub token_url: Option<String>,
}

impl Default for FcmEndpoints {
    fn default() -> Self {
        FcmEndpoints { api_url: FCM_URL.into(), token_url: None }
    }
}

/// Sends to FCM.
pub struct FcmSender {
    client: reqwest::Client,
    account: ServiceAccount,
    key: EncodingKey,
    send_url: String,
    token_url: String,
    token: tokio::sync::Mutex<Option<AccessToken>>,
    clock: Arc<dyn Clock>,
    tokens_fetched: AtomicU64,
}

impl std::fmt::Debug for FcmSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FcmSender")
            .field("account", &self.account)
            .field("send_url", &self.send_url)
            .field("token_url", &self.token_url)
            .finish_non_exhaustive()
    }
}

impl FcmSender {
    /// A sender for `account` (signing with `key`).
    pub fn new(
        account: ServiceAccount,
        key: EncodingKey,
        endpoints: FcmEndpoints,
        roots: &TlsRoots,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let send_url =
            format!("{}/v1/projects/{}/messages:send", endpoints.api_url.trim_end_matches('/'), account.project_id);
        let token_url = endpoints.token_url.or_else(|| account.token_uri.clone()).unwrap_or_else(|| TOKEN_URL.into());
        FcmSender {
            client: client(roots, Timeouts::default()),
            account,
            key,
            send_url,
            token_url,
            token: tokio::sync::Mutex::new(None),
            clock,
            tokens_fetched: AtomicU64::new(0),
        }
    }

    /// How many access tokens were fetched.
    pub fn tokens_fetched(&self) -> u64 {
        self.tokens_fetched.load(Ordering::Relaxed)
    }

    /// The cached access token, or a new one from the token endpoint (one request for all waiting callers).
    async fn access_token(&self) -> Result<Arc<str>, Verdict> {
        let mut slot = self.token.lock().await;
        let now = self.clock.now_ms();
        if let Some(t) = slot.as_ref()
            && now + RENEW_BEFORE.as_millis() as u64 <= t.expires_at
        {
            return Ok(t.token.clone());
        }
        let iat = now / 1000;
        let mut jwt_header = Header::new(Algorithm::RS256);
        jwt_header.kid = self.account.private_key_id.clone();
        let claims = json!({
            "iss": self.account.client_email,
            "scope": SCOPE,
            "aud": self.token_url,
            "iat": iat,
            "exp": iat + 3600,
        });
        let assertion = jsonwebtoken::encode(&jwt_header, &claims, &self.key)
            .map_err(|e| Verdict::ConfigError { reason: format!("cannot sign the FCM JWT: {e}"), certain: true })?;
        // Both values are URL-safe except the grant type's colons.
        let form = format!("grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion={assertion}");
        let response = self
            .client
            .post(&self.token_url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form)
            .send()
            .await
            .map_err(|e| {
                let mut v = classify_transport(&transport_failure(&e));
                if let Verdict::Retry { reason, .. } = &mut v {
                    *reason = format!("FCM token endpoint: {reason}");
                }
                v
            })?;
        let status = response.status().as_u16();
        let retry_after = header(&response, "retry-after");
        let body = response.bytes().await.unwrap_or_default();
        let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        if status == 200
            && let Some(token) = json["access_token"].as_str()
        {
            let expires_in = json["expires_in"].as_u64().unwrap_or(3600);
            let token: Arc<str> = token.into();
            *slot = Some(AccessToken { token: token.clone(), expires_at: now + expires_in * 1000 });
            self.tokens_fetched.fetch_add(1, Ordering::Relaxed);
            return Ok(token);
        }
        let error = json["error"].as_str().unwrap_or("");
        let description = json["error_description"].as_str().unwrap_or("");
        let reason = format!("FCM token endpoint answered HTTP {status}: {error} {description}").trim_end().to_owned();
        Err(match status {
            // invalid_grant (a revoked key, a wrong clock), invalid_client, unauthorized_client.
            400 | 401 | 403 => Verdict::ConfigError { reason, certain: true },
            429 | 500..=599 => Verdict::Retry {
                after: retry_after.and_then(|v| parse_retry_after(&v, now)),
                reason,
                renew_auth: false,
                reconnect: false,
            },
            _ => Verdict::ConfigError { reason, certain: true },
        })
    }

    /// Forgets `token` if it is the cached one (after a 401), so the next attempt fetches another.
    async fn forget(&self, token: &str) {
        let mut slot = self.token.lock().await;
        if slot.as_ref().is_some_and(|t| &*t.token == token) {
            *slot = None;
        }
    }

    /// The `message` body for one registration token.
    pub fn message(token: &str, msg: &PushMessage) -> (Value, super::payload::Form) {
        let (data, form) = fcm_data(msg);
        let data: Map<String, Value> = data.into_iter().map(|(k, v)| (k.to_owned(), Value::from(v))).collect();
        let mut android = Map::new();
        android.insert("priority".into(), fcm_android_priority(msg.priority).into());
        android.insert("ttl".into(), format!("{}s", msg.ttl.as_secs().min(2_419_200)).into());
        if let Some(key) = &msg.collapse {
            android.insert("collapse_key".into(), key.as_str().into());
        }
        (json!({"message": {"token": token, "data": data, "android": android}}), form)
    }

    /// One attempt to deliver `msg` to the registration token `token`.
    pub async fn send(&self, token: &str, msg: &PushMessage) -> Attempt {
        let (message, form) = Self::message(token, msg);
        if token.is_empty() {
            // FCM answers UNREGISTERED for a missing token too; never send one.
            return Attempt::refused(form, "empty FCM registration token".into());
        }
        let access = match self.access_token().await {
            Ok(t) => t,
            Err(v) => return Attempt::new(v, form, None),
        };
        let response = match self
            .client
            .post(&self.send_url)
            .bearer_auth(&access)
            .header("content-type", "application/json")
            .body(message.to_string())
            .send()
            .await
        {
            Ok(r) => r,
            Err(e) => return Attempt::new(classify_transport(&transport_failure(&e)), form, None),
        };
        let status = response.status().as_u16();
        let retry_after = header(&response, "retry-after");
        let body = match response.bytes().await {
            Ok(b) => b,
            Err(e) => {
                let reason = format!("reading the FCM answer: {}", error_chain(&e));
                return Attempt::new(
                    Verdict::Retry { after: None, reason, renew_auth: false, reconnect: true },
                    form,
                    Some(status),
                );
            }
        };
        let answer = Answer { status, retry_after: retry_after.as_deref(), message_id: None, body: &body };
        let verdict = classify_fcm(&answer, self.clock.now_ms());
        if let Verdict::Retry { renew_auth: true, .. } = &verdict {
            self.forget(&access).await;
        }
        Attempt::new(verdict, form, Some(status))
    }
}
