//! A mock FCM HTTP v1 API with its OAuth2 token endpoint.
//!
//! - `POST /token`: the JWT bearer grant. Checks the RS256 assertion with the service account's public key
//!   (`iss` = the account, `aud` = this endpoint, the `firebase.messaging` scope, at most an hour) and issues
//!   `mock-access-N` tokens valid for `token_lifetime_s`.
//! - `POST /v1/projects/{project}/messages:send`: checks the bearer token (issued here, not expired or
//!   revoked), the project, and the message (a token, `data` with string values only, Android priority and TTL,
//!   4 096 bytes of data); answers `{"name": …}` or the error JSON FCM sends, or what was scripted.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Value, json};
use tokio::task::JoinHandle;

use crate::server::{Handler, Received, header, respond, serve};
use crate::{FCM_TEST_KEY_PEM, FCM_TEST_PUBLIC_KEY_PEM, now_ms};

/// The mock's settings.
#[derive(Clone, Debug)]
pub struct FcmOptions {
    /// The Firebase project.
    pub project_id: String,
    /// The service account.
    pub client_email: String,
    /// Its public key (SPKI PEM).
    pub public_key_pem: String,
    /// Lifetime of issued access tokens, seconds.
    pub token_lifetime_s: u64,
}

impl Default for FcmOptions {
    fn default() -> Self {
        FcmOptions {
            project_id: "tidings-test".into(),
            client_email: "push@tidings-test.iam.gserviceaccount.com".into(),
            public_key_pem: FCM_TEST_PUBLIC_KEY_PEM.into(),
            token_lifetime_s: 3600,
        }
    }
}

/// A scripted answer to a send (after the checks pass).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FcmReply {
    /// HTTP status.
    pub status: u16,
    /// FCM's `errorCode` (`UNREGISTERED`, `QUOTA_EXCEEDED`, …).
    pub error_code: String,
    /// `Retry-After`, if any.
    pub retry_after: Option<String>,
}

impl FcmReply {
    /// An error with FCM's JSON body.
    pub fn error(status: u16, error_code: &str) -> Self {
        FcmReply { status, error_code: error_code.into(), retry_after: None }
    }
}

/// One send the mock received.
#[derive(Clone, Debug)]
pub struct RecordedFcm {
    /// The bearer token used.
    pub bearer: String,
    /// The `message` object.
    pub message: Value,
    /// What the mock answered.
    pub answered: u16,
    /// When it arrived.
    pub at: Instant,
}

#[derive(Debug, Default)]
struct State {
    options: Mutex<FcmOptions>,
    token_url: Mutex<String>,
    /// access token → expiry (ms).
    tokens: Mutex<HashMap<String, u64>>,
    token_requests: AtomicUsize,
    tokens_issued: AtomicUsize,
    assertions: Mutex<Vec<Value>>,
    script: Mutex<VecDeque<FcmReply>>,
    received: Mutex<Vec<RecordedFcm>>,
    accepted: AtomicUsize,
    connections: Arc<AtomicUsize>,
    clock_offset_ms: AtomicI64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn fcm_error(status: u16, grpc_status: &str, code: Option<&str>, message: &str) -> String {
    let details = match code {
        Some(code) => json!([{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": code}]),
        None => json!([]),
    };
    json!({"error": {"code": status, "message": message, "status": grpc_status, "details": details}}).to_string()
}

fn grpc_status(status: u16) -> &'static str {
    match status {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        429 => "RESOURCE_EXHAUSTED",
        503 => "UNAVAILABLE",
        _ => "INTERNAL",
    }
}

fn form_value<'a>(body: &'a str, key: &str) -> Option<&'a str> {
    body.split('&').find_map(|kv| kv.split_once('=').filter(|(k, _)| *k == key).map(|(_, v)| v))
}

fn token(state: &State, r: &Received) -> hyper::Response<http_body_util::Full<bytes::Bytes>> {
    state.token_requests.fetch_add(1, Ordering::Relaxed);
    let options = lock(&state.options).clone();
    let body = String::from_utf8_lossy(&r.body);
    let bad = |description: &str| {
        respond(400, &[], json!({"error": "invalid_grant", "error_description": description}).to_string())
    };
    if form_value(&body, "grant_type") != Some("urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer") {
        return respond(400, &[], json!({"error": "unsupported_grant_type"}).to_string());
    }
    let Some(assertion) = form_value(&body, "assertion") else { return bad("no assertion") };
    let Ok(key) = DecodingKey::from_rsa_pem(options.public_key_pem.as_bytes()) else {
        return bad("mock misconfigured: public key");
    };
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_audience(&[lock(&state.token_url).as_str()]);
    validation.set_issuer(&[options.client_email.as_str()]);
    validation.validate_exp = false;
    let claims = match jsonwebtoken::decode::<Value>(assertion, &key, &validation) {
        Ok(d) => d.claims,
        Err(e) => return bad(&format!("Invalid JWT Signature or claims: {e}")),
    };
    let now_s = now_ms(state.clock_offset_ms.load(Ordering::Relaxed)) / 1000;
    let (iat, exp) = (claims["iat"].as_u64().unwrap_or(0), claims["exp"].as_u64().unwrap_or(0));
    if exp <= now_s || iat > now_s + 60 || exp.saturating_sub(iat) > 3600 {
        return bad("Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe");
    }
    if !claims["scope"]
        .as_str()
        .unwrap_or("")
        .split(' ')
        .any(|s| s == "https://www.googleapis.com/auth/firebase.messaging")
    {
        return bad("no firebase.messaging scope");
    }
    lock(&state.assertions).push(claims);
    let n = state.tokens_issued.fetch_add(1, Ordering::Relaxed) + 1;
    let access = format!("mock-access-{n}");
    lock(&state.tokens).insert(
        access.clone(),
        now_ms(state.clock_offset_ms.load(Ordering::Relaxed)) + options.token_lifetime_s * 1000,
    );
    respond(
        200,
        &[("content-type", "application/json".into())],
        json!({"access_token": access, "expires_in": options.token_lifetime_s, "token_type": "Bearer"}).to_string(),
    )
}

fn check_message(message: &Value) -> Result<(), String> {
    let token = message["token"].as_str().unwrap_or("");
    if token.is_empty() {
        return Err("Recipient of the message is not set.".into());
    }
    let mut size = 0;
    if let Some(data) = message.get("data") {
        let data = data.as_object().ok_or("Invalid value at 'message.data'")?;
        for (k, v) in data {
            let v = v.as_str().ok_or_else(|| format!("Invalid value at 'message.data[{k}].value' (TYPE_STRING)"))?;
            if k == "from" || k.starts_with("google.") || k.starts_with("gcm.") {
                return Err(format!("Invalid data payload key: {k}"));
            }
            size += k.len() + v.len();
        }
    }
    if size > 4096 {
        return Err("Message is too big".into());
    }
    if let Some(android) = message.get("android") {
        if let Some(p) = android.get("priority")
            && !matches!(p.as_str(), Some("NORMAL" | "HIGH" | "normal" | "high"))
        {
            return Err("Invalid value at 'message.android.priority'".into());
        }
        if let Some(ttl) = android.get("ttl") {
            let ttl = ttl.as_str().unwrap_or("");
            let secs = ttl.strip_suffix('s').and_then(|s| s.parse::<f64>().ok());
            if !secs.is_some_and(|s| (0.0..=2_419_200.0).contains(&s)) {
                return Err("Invalid value at 'message.android.ttl'".into());
            }
        }
    }
    Ok(())
}

fn send(state: &State, r: &Received) -> hyper::Response<http_body_util::Full<bytes::Bytes>> {
    let options = lock(&state.options).clone();
    let json_ct = ("content-type", "application/json".to_string());
    let bearer = header(&r.head, "authorization").and_then(|a| a.strip_prefix("Bearer ")).unwrap_or("").to_owned();
    let now = now_ms(state.clock_offset_ms.load(Ordering::Relaxed));
    let body: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
    let message = body["message"].clone();
    let valid_token = lock(&state.tokens).get(&bearer).is_some_and(|exp| *exp > now);
    let expected = format!("/v1/projects/{}/messages:send", options.project_id);
    let (status, out, headers) = if !valid_token {
        (401, fcm_error(401, "UNAUTHENTICATED", None, "Request had invalid authentication credentials."), vec![])
    } else if r.head.uri.path() != expected {
        (404, fcm_error(404, "NOT_FOUND", None, "Requested entity was not found."), vec![])
    } else if let Err(e) = check_message(&message) {
        let code = if e.contains("too big") { None } else { Some("INVALID_ARGUMENT") };
        (400, fcm_error(400, "INVALID_ARGUMENT", code, &e), vec![])
    } else if let Some(reply) = lock(&state.script).pop_front() {
        let mut headers = vec![];
        if let Some(after) = &reply.retry_after {
            headers.push(("retry-after", after.clone()));
        }
        let text = fcm_error(reply.status, grpc_status(reply.status), Some(&reply.error_code), "scripted");
        (reply.status, text, headers)
    } else {
        let n = state.accepted.fetch_add(1, Ordering::Relaxed) + 1;
        (200, json!({"name": format!("projects/{}/messages/0:{n}", options.project_id)}).to_string(), vec![])
    };
    lock(&state.received).push(RecordedFcm { bearer, message, answered: status, at: Instant::now() });
    let mut headers = headers;
    headers.push(json_ct);
    respond(status, &headers, out)
}

/// The mock FCM. Dropping it stops it.
#[derive(Debug)]
pub struct MockFcm {
    addr: SocketAddr,
    state: Arc<State>,
    task: JoinHandle<()>,
}

impl Drop for MockFcm {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MockFcm {
    /// Starts the mock on a loopback port.
    pub async fn start(options: FcmOptions) -> anyhow::Result<Self> {
        let state = Arc::new(State { options: Mutex::new(options), ..State::default() });
        let s = state.clone();
        let handler: Handler = Arc::new(move |r| {
            let response = if r.head.method != hyper::Method::POST {
                respond(405, &[], "")
            } else if r.head.uri.path() == "/token" {
                token(&s, &r)
            } else {
                send(&s, &r)
            };
            Box::pin(async move { response })
        });
        let (addr, task) = serve(handler, state.connections.clone()).await?;
        *lock(&state.token_url) = format!("https://{addr}/token");
        Ok(MockFcm { addr, state, task })
    }

    /// The API base URL (`--fcm-url`).
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The token endpoint (`--fcm-token-url`, or the key file's `token_uri`).
    pub fn token_url(&self) -> String {
        format!("https://{}/token", self.addr)
    }

    /// A service-account key file's JSON for this mock (the test RSA key, `token_uri` pointing here).
    pub fn service_account_json(&self) -> String {
        let o = lock(&self.state.options).clone();
        json!({
            "type": "service_account",
            "project_id": o.project_id,
            "private_key_id": "0123456789abcdef0123456789abcdef01234567",
            "private_key": FCM_TEST_KEY_PEM,
            "client_email": o.client_email,
            "client_id": "100000000000000000000",
            "token_uri": self.token_url(),
        })
        .to_string()
    }

    /// The next send answers, in order (after the checks pass).
    pub fn script(&self, replies: impl IntoIterator<Item = FcmReply>) {
        lock(&self.state.script).extend(replies);
    }

    /// Revokes every access token issued so far (sends with them get `401`).
    pub fn revoke_tokens(&self) {
        lock(&self.state.tokens).clear();
    }

    /// Shifts the mock's clock (to match a sender running on a manual clock).
    pub fn set_clock_offset_ms(&self, offset: i64) {
        self.state.clock_offset_ms.store(offset, Ordering::Relaxed);
    }

    /// Token requests received (valid or not).
    pub fn token_requests(&self) -> usize {
        self.state.token_requests.load(Ordering::Relaxed)
    }

    /// The claims of every accepted JWT assertion.
    pub fn assertions(&self) -> Vec<Value> {
        lock(&self.state.assertions).clone()
    }

    /// Every send received.
    pub fn received(&self) -> Vec<RecordedFcm> {
        lock(&self.state.received).clone()
    }

    /// The `data` of every accepted send.
    pub fn accepted_data(&self) -> Vec<BTreeMap<String, String>> {
        self.received()
            .into_iter()
            .filter(|r| r.answered == 200)
            .map(|r| {
                r.message["data"]
                    .as_object()
                    .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_owned())).collect())
                    .unwrap_or_default()
            })
            .collect()
    }

    /// TLS connections accepted.
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::Relaxed)
    }
}
