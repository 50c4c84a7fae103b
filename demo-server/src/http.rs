//! HTTP routes (protocol §9): the WebSocket endpoint, publishing, presence, acks, operator actions, health and
//! (demo mode only) token issuing. The inbox, history, acks and SSE ticket routes are in `http_inbox`, the SSE
//! stream in `sse`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::ws::{WebSocketUpgrade, rejection::WebSocketUpgradeRejection};
use axum::extract::{ConnectInfo, MatchedPath, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, MethodRouter, on};
use serde_json::json;
use tidings_core::protocol::{ErrorCode, MAX_CLIENT_FRAME_BYTES, MAX_SERVER_FRAME_BYTES, SUBPROTOCOL, validate_id};
use tidings_core::protocol::{validate_topic, validate_user_id};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::api_keys::Scope;
use crate::auth::issue_token;
use crate::http_inbox as hi;
use crate::http_push as hp;
use crate::metrics::{AuthFailure, Refusal, Transport};
use crate::node::Node;
use crate::publish::{PublishError, PublishRequest, Publisher, parse_batch};
use crate::ws;

/// Who may call an endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Access {
    /// Anyone (no API key).
    Public,
    /// An API key with this scope.
    Key(Scope),
    /// A user's own token (`Authorization: Bearer <the user's token>`, the token of `auth`), for `/v1/me/…`.
    User,
    /// Anyone, and only when the server runs with `--demo`.
    Demo,
}

/// An HTTP endpoint: method, path template, who may call it, and its handler routed for the method's filter.
pub(crate) type Endpoint = (Method, &'static str, Access, fn(MethodFilter) -> MethodRouter<Arc<Node>>);

/// Every HTTP endpoint of the server: method, path template, who may call it, handler. The router is built from this
/// table and the OpenAPI document (`openapi.rs`) must describe exactly these operations (a test compares them).
pub(crate) const ENDPOINTS: &[Endpoint] = &[
    (Method::GET, "/v1/ws", Access::Public, |m| on(m, websocket)),
    (Method::POST, "/v1/publish", Access::Key(Scope::Publish), |m| on(m, publish)),
    (Method::POST, "/v1/publish/batch", Access::Key(Scope::Publish), |m| on(m, publish_batch)),
    (Method::GET, "/v1/presence", Access::Key(Scope::Read), |m| on(m, presence_all)),
    (Method::GET, "/v1/presence/{user}", Access::Key(Scope::Read), |m| on(m, presence_user)),
    (Method::GET, "/v1/notifications/{id}/acks", Access::Key(Scope::Read), |m| on(m, acks)),
    (Method::GET, "/v1/users/{user}/devices", Access::Key(Scope::Operator), |m| on(m, devices)),
    (Method::POST, "/v1/admin/drop", Access::Key(Scope::Operator), |m| on(m, admin_drop)),
    (Method::POST, "/v1/admin/unsubscribe", Access::Key(Scope::Operator), |m| on(m, admin_unsubscribe)),
    (Method::GET, "/v1/push/vapid-public-key", Access::Public, |m| on(m, vapid_public_key)),
    (Method::GET, "/v1/push/status", Access::Key(Scope::Read), |m| on(m, hp::push_status)),
    (Method::GET, "/v1/notifications/{id}/deliveries", Access::Key(Scope::Read), |m| on(m, hp::deliveries)),
    (Method::GET, "/v1/users/{user}/preferences", Access::Key(Scope::Operator), |m| on(m, hp::user_preferences)),
    (Method::PUT, "/v1/users/{user}/preferences", Access::Key(Scope::Operator), |m| on(m, hp::put_user_preferences)),
    (Method::PATCH, "/v1/users/{user}/preferences", Access::Key(Scope::Operator), |m| {
        on(m, hp::patch_user_preferences)
    }),
    (Method::GET, "/v1/users/{user}/quiet-hours", Access::Key(Scope::Operator), |m| on(m, hp::user_quiet_hours)),
    (Method::PUT, "/v1/users/{user}/quiet-hours", Access::Key(Scope::Operator), |m| on(m, hp::put_user_quiet_hours)),
    (Method::DELETE, "/v1/users/{user}/quiet-hours", Access::Key(Scope::Operator), |m| {
        on(m, hp::delete_user_quiet_hours)
    }),
    (Method::GET, "/v1/me/preferences", Access::User, |m| on(m, hp::my_preferences)),
    (Method::PUT, "/v1/me/preferences", Access::User, |m| on(m, hp::put_my_preferences)),
    (Method::PATCH, "/v1/me/preferences", Access::User, |m| on(m, hp::patch_my_preferences)),
    (Method::GET, "/v1/me/quiet-hours", Access::User, |m| on(m, hp::my_quiet_hours)),
    (Method::PUT, "/v1/me/quiet-hours", Access::User, |m| on(m, hp::put_my_quiet_hours)),
    (Method::DELETE, "/v1/me/quiet-hours", Access::User, |m| on(m, hp::delete_my_quiet_hours)),
    (Method::GET, "/v1/me/notifications/{id}", Access::User, |m| on(m, hp::my_notification)),
    (Method::POST, "/v1/me/acks", Access::User, |m| on(m, hp::my_acks)),
    (Method::GET, "/v1/me/inbox", Access::User, |m| on(m, hi::me_list)),
    (Method::GET, "/v1/me/inbox/counts", Access::User, |m| on(m, hi::me_counts)),
    (Method::POST, "/v1/me/inbox/mark", Access::User, |m| on(m, hi::me_mark)),
    (Method::POST, "/v1/me/inbox/mark-all", Access::User, |m| on(m, hi::me_mark_all)),
    (Method::GET, "/v1/me/inbox/topics", Access::User, |m| on(m, hi::me_topics)),
    (Method::PUT, "/v1/me/inbox/topics/{topic}", Access::User, |m| on(m, hi::me_follow)),
    (Method::DELETE, "/v1/me/inbox/topics/{topic}", Access::User, |m| on(m, hi::me_unfollow)),
    (Method::GET, "/v1/users/{user}/inbox", Access::Key(Scope::Read), |m| on(m, hi::user_list)),
    (Method::GET, "/v1/users/{user}/inbox/counts", Access::Key(Scope::Read), |m| on(m, hi::user_counts)),
    (Method::POST, "/v1/users/{user}/inbox/mark", Access::Key(Scope::Operator), |m| on(m, hi::user_mark)),
    (Method::POST, "/v1/users/{user}/inbox/mark-all", Access::Key(Scope::Operator), |m| on(m, hi::user_mark_all)),
    (Method::GET, "/v1/users/{user}/inbox/topics", Access::Key(Scope::Read), |m| on(m, hi::user_topics)),
    (Method::PUT, "/v1/users/{user}/inbox/topics/{topic}", Access::Key(Scope::Operator), |m| on(m, hi::user_follow)),
    (Method::DELETE, "/v1/users/{user}/inbox/topics/{topic}", Access::Key(Scope::Operator), |m| {
        on(m, hi::user_unfollow)
    }),
    (Method::GET, "/v1/streams/{stream}/history", Access::User, |m| on(m, hi::history)),
    (Method::POST, "/v1/sse/tickets", Access::User, |m| on(m, hi::sse_ticket)),
    // The SSE stream checks its token or ticket itself (a ticket travels in the query, for `EventSource`), with
    // the same failed-authentication throttle.
    (Method::GET, "/v1/sse", Access::Public, |m| on(m, crate::sse::handler)),
    (Method::POST, "/v1/demo/token", Access::Demo, |m| on(m, demo_token)),
    (Method::GET, "/v1/openapi.json", Access::Public, |m| on(m, openapi)),
    (Method::GET, "/healthz", Access::Public, |m| on(m, healthz)),
    (Method::GET, "/readyz", Access::Public, |m| on(m, readyz)),
    (Method::GET, "/metrics", Access::Public, |m| on(m, metrics)),
];

/// Builds the router of a server.
pub(crate) fn router(node: Arc<Node>) -> Router {
    let mut router = Router::new();
    // `/v1/me/…` answers browsers on any origin: it authenticates with a bearer token, never a cookie.
    let mut me = Router::new();
    for (method, path, access, handler) in ENDPOINTS {
        if *access == Access::Demo && !node.config.demo {
            continue;
        }
        let filter = MethodFilter::try_from(method.clone()).expect("ENDPOINTS uses standard methods");
        let mut route = handler(filter);
        match *access {
            Access::Key(scope) => {
                route = route.route_layer(axum::middleware::from_fn_with_state((node.clone(), scope), require_key));
            }
            Access::User => {
                route = route.route_layer(axum::middleware::from_fn_with_state(node.clone(), require_user));
                me = me.route(path, route);
                continue;
            }
            // Any origin may ask for a demo token (a page served by a dev server on another port): CORS on the
            // answer (demo_token) and the preflight.
            Access::Demo => route = route.options(demo_cors_preflight),
            Access::Public => {}
        }
        router = router.route(path, route);
    }
    // The 405 fallback is set before the CORS layer wraps `/v1/me/…`, so that a preflight (`OPTIONS`) is answered
    // by the layer rather than refused by the fallback.
    let me = me.method_not_allowed_fallback(method_not_allowed).layer(crate::http_push::cors());
    let router = router.method_not_allowed_fallback(method_not_allowed).merge(me);
    let router = match node.config.web_root.clone() {
        // Static files (demo page, npm package, service worker) at `/`; API routes take precedence.
        Some(root) => {
            let files = tower_http::services::ServeDir::new(root).append_index_html_on_directories(true);
            router.fallback_service(files)
        }
        None => router.fallback(not_found),
    };
    router.layer(axum::middleware::from_fn_with_state(node.clone(), observe)).with_state(node)
}

tokio::task_local! {
    /// The id of the HTTP request being handled (see [`current_request_id`]).
    static REQUEST_ID: Arc<str>;
}

/// The id of the HTTP request this task handles, if it handles one: publishes carry it into the delivery path.
pub(crate) fn current_request_id() -> Option<Arc<str>> {
    REQUEST_ID.try_with(Arc::clone).ok()
}

/// The request's id: the client's `X-Request-Id` when it is 1–128 characters of `[A-Za-z0-9._:-]`, else a new
/// ULID.
fn request_id(headers: &HeaderMap) -> Arc<str> {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| validate_id(v).is_ok())
        .map(Arc::from)
        .unwrap_or_else(|| Arc::from(ulid::Ulid::generate().to_string()))
}

/// Every request: its id (task-local and `X-Request-Id` on the response), a span carrying it, and the
/// `tidings_http_requests_total` / `tidings_http_request_seconds` metrics by route template.
async fn observe(State(node): State<Arc<Node>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let id = request_id(request.headers());
    let route: &'static str = match request.extensions().get::<MatchedPath>() {
        Some(matched) => ENDPOINTS.iter().find(|(_, p, ..)| *p == matched.as_str()).map_or("other", |(_, p, ..)| p),
        None if node.config.web_root.is_some() => "static",
        None => "unmatched",
    };
    let method = match *request.method() {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::HEAD => "HEAD",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    };
    let span = info_span!("request", request_id = %id, method, route);
    let mut response = REQUEST_ID.scope(id.clone(), next.run(request)).instrument(span.clone()).await;
    let status = response.status().as_u16();
    let elapsed = started.elapsed();
    node.metrics.http_request(route, method, status, elapsed);
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", value);
    }
    span.in_scope(|| {
        let micros = elapsed.as_micros() as u64;
        if status >= 500 {
            warn!(status, micros, "request failed");
        } else {
            debug!(status, micros, "request");
        }
    });
    response
}

/// The client's address: the peer's, or the one a trusted proxy forwarded.
pub(crate) fn client_address(node: &Node, peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
    let forwarded = headers.get("x-forwarded-for").and_then(|v| v.to_str().ok());
    crate::limits::client_address(peer.ip(), forwarded, &node.config.trusted_proxies)
}

/// `429` with `Retry-After` (whole seconds, at least 1).
pub(crate) fn too_many(code: &str, message: impl Into<String>, wait: Duration) -> Response {
    let secs = wait.as_millis().div_ceil(1000).max(1) as u64;
    let mut response = (
        StatusCode::TOO_MANY_REQUESTS,
        axum::Json(json!({"error": {"code": code, "message": message.into(), "retry_after_ms": secs * 1000}})),
    )
        .into_response();
    response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
    response
}

/// The client address of a request that authenticates, and now; or, while that address is throttled for failed
/// authentications (counted as a refusal), how long it must wait.
fn auth_throttle(node: &Node, peer: SocketAddr, headers: &HeaderMap) -> Result<(IpAddr, std::time::Instant), Duration> {
    let client = client_address(node, peer, headers);
    let now = tokio::time::Instant::now().into_std();
    match node.auth_failures.check(client, now) {
        Some(wait) => {
            node.metrics.refused(Transport::Http, Refusal::AuthThrottled);
            Err(wait)
        }
        None => Ok((client, now)),
    }
}

/// The API key check of an endpoint that needs `scope`: `429` while the client address is throttled for failed
/// checks, `401` for a missing or unknown key (counted as a failure), `403` for a key without the scope.
async fn require_key(
    State((node, scope)): State<(Arc<Node>, Scope)>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    let headers = request.headers();
    let (client, now) = match auth_throttle(&node, peer, headers) {
        Ok(at) => at,
        Err(wait) => return too_many("rate_limited", "too many failed API key checks from this address", wait),
    };
    let presented = crate::http_inbox::bearer(headers);
    let key = presented.and_then(|p| crate::api_keys::find(&node.api_keys, p));
    match key {
        Some(key) if key.has(scope) => {
            let name = key.name.clone();
            next.run(request).instrument(info_span!("api_key", key = %name)).await
        }
        Some(key) => {
            node.metrics.auth_failed(Transport::Http, AuthFailure::ApiKeyScope);
            let message = format!("the API key {} does not have the {} scope", key.name, scope.as_str());
            error_response(StatusCode::FORBIDDEN, "forbidden", message)
        }
        None => {
            node.metrics.auth_failed(Transport::Http, AuthFailure::ApiKey);
            let _ = node.auth_failures.spend(client, now);
            let message = if presented.is_some() {
                "the API key is not valid"
            } else {
                "missing API key: send Authorization: Bearer <api key>"
            };
            let mut response = error_response(StatusCode::UNAUTHORIZED, "unauthorized", message);
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            response
        }
    }
}

/// The user a `/v1/me/…` request acts for (set by [`require_user`]).
#[derive(Clone, Debug)]
pub(crate) struct AuthedUser(pub(crate) String);

/// The whole verified token of a `/v1/me/…` (or user-token) request, for routes that need its topics or expiry
/// (set by [`require_user`] beside [`AuthedUser`]).
#[derive(Clone, Debug)]
pub(crate) struct AuthedToken(pub(crate) crate::auth::VerifiedToken);

/// The user token check of `/v1/me/…`: `429` while the client address is throttled for failed checks, `401`
/// (`unauthorized` or `token_expired`, counted as a failure) for a missing or refused token; else the request
/// carries the token's user ([`AuthedUser`]).
async fn require_user(
    State(node): State<Arc<Node>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut request: Request,
    next: Next,
) -> Response {
    let headers = request.headers();
    let (client, now) = match auth_throttle(&node, peer, headers) {
        Ok(at) => at,
        Err(wait) => return too_many("rate_limited", "too many failed authentications from this address", wait),
    };
    let token = crate::http_inbox::bearer(headers);
    let refused = match token {
        None => (
            AuthFailure::Unauthorized,
            "unauthorized",
            "missing token: send Authorization: Bearer <the user's token>".to_owned(),
        ),
        Some(token) => match node.session_params.verifier.verify_at(token, crate::util::now_ms()) {
            Ok(verified) => {
                request.extensions_mut().insert(AuthedUser(verified.user.clone()));
                request.extensions_mut().insert(AuthedToken(verified));
                return next.run(request).await;
            }
            Err(crate::auth::TokenError::Unauthorized(m)) => (AuthFailure::Unauthorized, "unauthorized", m),
            Err(crate::auth::TokenError::Expired(m)) => (AuthFailure::TokenExpired, "token_expired", m),
        },
    };
    let (reason, code, message) = refused;
    node.metrics.auth_failed(Transport::Http, reason);
    let _ = node.auth_failures.spend(client, now);
    let mut response = error_response(StatusCode::UNAUTHORIZED, code, message);
    response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

/// `503 unavailable` with `Retry-After` for a store (or Redis) that cannot answer now.
pub(crate) fn unavailable(e: &crate::store::StoreError) -> Response {
    let mut response = error_response(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e.to_string());
    let secs = e.retry_after().as_secs().max(1).to_string();
    if let Ok(value) = HeaderValue::from_str(&secs) {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

/// `{"error":{"code":…,"message":…}}` with `status`.
pub(crate) fn error_response(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({"error": {"code": code, "message": message.into()}}))).into_response()
}

fn publish_error_response(error: &PublishError) -> Response {
    let status = StatusCode::from_u16(error.kind.status()).unwrap_or(StatusCode::BAD_REQUEST);
    let body = publish_error_json(error);
    match error.retry_after_ms {
        Some(ms) => {
            let mut response = (status, axum::Json(body)).into_response();
            let secs = ms.div_ceil(1000).max(1).to_string();
            if let Ok(value) = HeaderValue::from_str(&secs) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
            response
        }
        None => (status, axum::Json(body)).into_response(),
    }
}

fn publish_error_json(error: &PublishError) -> serde_json::Value {
    let mut body = json!({"error": {"code": error.kind.code(), "message": error.message}});
    if let Some(ms) = error.retry_after_ms {
        body["error"]["retry_after_ms"] = json!(ms);
    }
    body
}

async fn not_found() -> Response {
    error_response(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

/// `GET /healthz`: alive.
async fn healthz(State(node): State<Arc<Node>>) -> Response {
    no_store(axum::Json(crate::health::liveness(&node)).into_response())
}

/// `GET /readyz`: ready to serve, or `503` with what is wrong.
async fn readyz(State(node): State<Arc<Node>>) -> Response {
    let (ready, body) = crate::health::readiness(&node).await;
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    no_store((status, axum::Json(body)).into_response())
}

/// Marks a response as not to be cached (health answers are about now).
fn no_store(mut response: Response) -> Response {
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// `GET /v1/openapi.json`: the OpenAPI document of this API.
async fn openapi() -> Response {
    static DOCUMENT: std::sync::OnceLock<Bytes> = std::sync::OnceLock::new();
    let body = DOCUMENT.get_or_init(|| Bytes::from(crate::openapi::document().to_string())).clone();
    ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body).into_response()
}

/// `405` for a method the path does not serve (axum adds the `Allow` header).
async fn method_not_allowed() -> Response {
    error_response(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "the path does not serve this method")
}

/// `GET /metrics`: the Prometheus text format.
async fn metrics(State(node): State<Arc<Node>>) -> Response {
    node.metrics.throttle_tracked("auth_failures", node.auth_failures.tracked());
    node.metrics.throttle_tracked("connection_rate", node.connection_rate.tracked());
    if node.routing.dispatcher.is_some() {
        // Pending pushes live in the store: read them at the scrape (one scan of the pending rows).
        let now = node.routing.clock.now_ms();
        match node.stores.push.pending_summary(now).await {
            Ok(summary) => {
                node.metrics.push.set_pending(&summary);
                let late = summary.oldest_due.map(|due| Duration::from_millis(now.saturating_sub(due)));
                node.metrics.queue(crate::metrics::Queue::Push).set(summary.due as usize, late);
            }
            Err(e) => warn!(error = %e, "pending pushes could not be read for the metrics"),
        }
    }
    let mut response = node.metrics.render().into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(crate::metrics::CONTENT_TYPE));
    response
}

/// `GET /v1/push/vapid-public-key`: the key service workers subscribe to Web Push with (public, no API key; any
/// origin may read it, as a page on another origin than the server's does).
async fn vapid_public_key(State(node): State<Arc<Node>>) -> Response {
    let mut response = match &node.config.vapid_public_key {
        Some(key) => axum::Json(json!({"vapid_public_key": key.trim()})).into_response(),
        None => error_response(
            StatusCode::NOT_FOUND,
            "not_configured",
            "this server has no VAPID public key (start it with --vapid-public-key or TIDINGS_VAPID_PUBLIC_KEY)",
        ),
    };
    response.headers_mut().insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    response
}

/// Reads a body of at most `limit` bytes as UTF-8 text.
pub(crate) async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<String, Response> {
    let too_large =
        || error_response(StatusCode::PAYLOAD_TOO_LARGE, "too_large", format!("the body is larger than {limit} bytes"));
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(too_large());
    }
    let bytes: Bytes = axum::body::to_bytes(body, limit).await.map_err(|e| {
        if e.to_string().contains("length limit") {
            too_large()
        } else {
            error_response(StatusCode::BAD_REQUEST, "bad_request", format!("the body could not be read: {e}"))
        }
    })?;
    String::from_utf8(bytes.into())
        .map_err(|_| error_response(StatusCode::BAD_REQUEST, "bad_request", "the body is not UTF-8"))
}

/// `GET /v1/ws`: subprotocol negotiation and the upgrade.
async fn websocket(
    State(node): State<Arc<Node>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let offers_v1 = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == SUBPROTOCOL);
    if !offers_v1 {
        node.metrics.refused(Transport::Ws, Refusal::BadRequest);
        let body = json!({
            "code": ErrorCode::UnsupportedVersion.as_str(),
            "message": format!("offer the WebSocket subprotocol {SUBPROTOCOL} in Sec-WebSocket-Protocol"),
            "supported": [SUBPROTOCOL],
        });
        return (StatusCode::BAD_REQUEST, axum::Json(body)).into_response();
    }
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(rejection) => {
            node.metrics.refused(Transport::Ws, Refusal::BadRequest);
            let status = rejection.status();
            return error_response(
                status,
                "bad_request",
                format!("expected a WebSocket upgrade: {}", rejection.body_text()),
            );
        }
    };
    if node.is_shutting_down() {
        node.metrics.refused(Transport::Ws, Refusal::ShuttingDown);
        let mut response =
            error_response(StatusCode::SERVICE_UNAVAILABLE, "try_again_later", "the server is shutting down");
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        return response;
    }
    let client = client_address(&node, peer, &headers);
    let now = tokio::time::Instant::now().into_std();
    if let Some(wait) = node.auth_failures.check(client, now) {
        node.metrics.refused(Transport::Ws, Refusal::AuthThrottled);
        return too_many("rate_limited", "too many failed authentications from this address", wait);
    }
    if let Some(wait) = node.connection_rate.spend(client, now) {
        node.metrics.refused(Transport::Ws, Refusal::ConnectionRate);
        return too_many("rate_limited", "too many new connections from this address", wait);
    }
    let request_id = current_request_id();
    let config = &node.config;
    // A maximal server frame plus its header must always fit into the write buffer.
    let max_write = config.ws_max_write_buffer_size.max(config.ws_write_buffer_size + MAX_SERVER_FRAME_BYTES + 16);
    upgrade
        .protocols([SUBPROTOCOL])
        .read_buffer_size(config.ws_read_buffer_size)
        .write_buffer_size(config.ws_write_buffer_size)
        .max_write_buffer_size(max_write)
        // Oversized client frames are refused from their header, before their payload is buffered.
        .max_message_size(MAX_CLIENT_FRAME_BYTES)
        .max_frame_size(MAX_CLIENT_FRAME_BYTES)
        .on_upgrade(move |socket| ws::serve(node, socket, client, request_id))
}

/// `POST /v1/publish`.
async fn publish(State(node): State<Arc<Node>>, headers: HeaderMap, body: Body) -> Response {
    let text = match read_body(&headers, body, node.config.max_body_bytes).await {
        Ok(text) => text,
        Err(response) => return response,
    };
    let request = match PublishRequest::from_json(&text) {
        Ok(request) => request,
        Err(e) => return publish_error_response(&e),
    };
    match Publisher::new(node).publish(request).await {
        Ok(receipt) => (StatusCode::ACCEPTED, axum::Json(receipt)).into_response(),
        Err(e) => publish_error_response(&e),
    }
}

/// `POST /v1/publish/batch`.
async fn publish_batch(State(node): State<Arc<Node>>, headers: HeaderMap, body: Body) -> Response {
    let text = match read_body(&headers, body, node.config.max_batch_body_bytes).await {
        Ok(text) => text,
        Err(response) => return response,
    };
    let items = match parse_batch(&text) {
        Ok(items) => items,
        Err(e) => return publish_error_response(&e),
    };
    // The valid items are published as one batch (one commit on a durable store), in order; the others keep
    // their parse error in their place.
    let mut valid = Vec::with_capacity(items.len());
    let mut outcomes: Vec<Option<Result<crate::PublishReceipt, PublishError>>> = Vec::with_capacity(items.len());
    for item in items {
        match item {
            Ok(request) => {
                valid.push(request);
                outcomes.push(None);
            }
            Err(e) => outcomes.push(Some(Err(e))),
        }
    }
    let mut published = Publisher::new(node).publish_batch(valid).await.into_iter();
    // Receipts are written straight into the response (as a single publish's is), not built as JSON values first:
    // with up to 1,000 of them that was a tree of maps per notification.
    let results: Vec<BatchResult> = outcomes
        .into_iter()
        .map(|slot| match slot.or_else(|| published.next()) {
            Some(Ok(receipt)) => BatchResult::Receipt(receipt),
            Some(Err(e)) => BatchResult::Error(publish_error_json(&e)),
            None => BatchResult::Error(json!({"error": {"code": "unavailable", "message": "no result"}})),
        })
        .collect();
    (StatusCode::OK, axum::Json(BatchAnswer { results })).into_response()
}

/// The answer to `POST /v1/publish/batch`: one result per notification, in order.
#[derive(serde::Serialize)]
struct BatchAnswer {
    results: Vec<BatchResult>,
}

/// A notification's result in a batch: its receipt, or its error object.
#[derive(serde::Serialize)]
#[serde(untagged)]
enum BatchResult {
    Receipt(crate::PublishReceipt),
    Error(serde_json::Value),
}

/// `GET /v1/presence`.
async fn presence_all(State(node): State<Arc<Node>>) -> Response {
    match node.presence_all().await {
        Ok(users) => axum::Json(json!({ "users": users })).into_response(),
        Err(e) => unavailable(&e),
    }
}

/// `GET /v1/presence/{user}`.
async fn presence_user(State(node): State<Arc<Node>>, Path(user): Path<String>) -> Response {
    if let Err(e) = validate_user_id(&user) {
        return error_response(StatusCode::BAD_REQUEST, "bad_request", format!("user: {e}"));
    }
    match node.presence_user(&user).await {
        Ok(presence) => axum::Json(presence).into_response(),
        Err(e) => unavailable(&e),
    }
}

/// `GET /v1/notifications/{id}/acks`.
async fn acks(State(node): State<Arc<Node>>, Path(id): Path<String>) -> Response {
    if let Err(e) = validate_id(&id) {
        return error_response(StatusCode::BAD_REQUEST, "bad_request", format!("id: {e}"));
    }
    match node.acks(&id).await {
        Ok(acks) => {
            let acks: Vec<_> =
                acks.iter().map(|a| json!({"user": &*a.user, "device": &*a.device, "at": a.at})).collect();
            axum::Json(json!({"id": id, "acks": acks})).into_response()
        }
        Err(e) => unavailable(&e),
    }
}

/// `GET /v1/users/<user>/devices`: the user's devices with a registered push address.
async fn devices(State(node): State<Arc<Node>>, Path(user): Path<String>) -> Response {
    if let Err(e) = tidings_core::protocol::validate_user_id(&user) {
        return error_response(StatusCode::BAD_REQUEST, "bad_request", format!("user: {e}"));
    }
    match node.stores.devices.push_addresses(&user).await {
        Ok(records) => {
            let devices: Vec<_> = records
                .iter()
                .map(|r| {
                    json!({"device": &*r.device, "push": {"platform": r.platform.as_str(), "token": r.token, "registered_at": r.registered_at}})
                })
                .collect();
            axum::Json(json!({"user": user, "devices": devices})).into_response()
        }
        Err(e) => unavailable(&e),
    }
}

/// An operator request's body as a JSON object.
fn operator_body(text: &str) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(serde_json::Value::Object(object)) => Ok(object),
        Ok(_) => Err("the body is not a JSON object".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// The optional `user` member of an operator request (absent or `null`: every user).
fn optional_user(object: &mut serde_json::Map<String, serde_json::Value>) -> Result<Option<String>, String> {
    match object.remove("user") {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(user)) => match validate_user_id(&user) {
            Ok(()) => Ok(Some(user)),
            Err(e) => Err(format!("user: {e}")),
        },
        Some(_) => Err("user: must be a string".into()),
    }
}

/// `POST /v1/admin/drop` with an optional `{"user":"…"}`.
async fn admin_drop(State(node): State<Arc<Node>>, headers: HeaderMap, body: Body) -> Response {
    let text = match read_body(&headers, body, node.config.max_body_bytes).await {
        Ok(text) => text,
        Err(response) => return response,
    };
    let user = if text.trim().is_empty() {
        None
    } else {
        match operator_body(&text).and_then(|mut object| optional_user(&mut object)) {
            Ok(user) => user,
            Err(e) => {
                let message = format!("expected {{\"user\":\"…\"}}: {e}");
                return error_response(StatusCode::BAD_REQUEST, "bad_request", message);
            }
        }
    };
    let reach = node.drop_everywhere(user.as_deref()).await;
    info!(
        user = user.as_deref().unwrap_or("*"),
        dropped = reach.count,
        processes = reach.processes,
        complete = reach.complete,
        "operator dropped connections"
    );
    reach_response("dropped", reach)
}

/// `POST /v1/admin/unsubscribe` with `{"stream":"…"}` and an optional `"user"`: ends that subscription of
/// every connection (or the user's), in every process.
async fn admin_unsubscribe(State(node): State<Arc<Node>>, headers: HeaderMap, body: Body) -> Response {
    let text = match read_body(&headers, body, node.config.max_body_bytes).await {
        Ok(text) => text,
        Err(response) => return response,
    };
    let parsed = operator_body(&text).and_then(|mut object| {
        let stream = match object.remove("stream") {
            Some(serde_json::Value::String(stream)) => stream,
            Some(_) => return Err("stream: must be a string".to_owned()),
            None => return Err("stream is missing".to_owned()),
        };
        tidings_core::protocol::StreamName::parse(&stream).map_err(|e| format!("stream: {e}"))?;
        Ok((stream, optional_user(&mut object)?))
    });
    let (stream, user) = match parsed {
        Ok(parsed) => parsed,
        Err(e) => {
            let message = format!("expected {{\"stream\":\"…\"}} with an optional \"user\": {e}");
            return error_response(StatusCode::BAD_REQUEST, "bad_request", message);
        }
    };
    let reach = node.unsubscribe_everywhere(user.as_deref(), &stream).await;
    info!(
        user = user.as_deref().unwrap_or("*"),
        stream,
        unsubscribed = reach.count,
        processes = reach.processes,
        complete = reach.complete,
        "operator ended subscriptions"
    );
    reach_response("unsubscribed", reach)
}

/// The answer of an operator command: `{"<counted>":N,"processes":P,"complete":…}` (protocol §9.4).
fn reach_response(counted: &str, reach: crate::node::Reach) -> Response {
    axum::Json(json!({ (counted): reach.count, "processes": reach.processes, "complete": reach.complete }))
        .into_response()
}

/// `OPTIONS /v1/demo/token` (demo mode only): the CORS preflight of a page on another origin — any origin, `POST`
/// with a JSON body, no credentials.
async fn demo_cors_preflight() -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    let headers = response.headers_mut();
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    headers.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("POST, OPTIONS"));
    headers.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, HeaderValue::from_static("content-type"));
    headers.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
    response
}

/// `POST /v1/demo/token` (demo mode only): `{"user":"alice","topics":["news"],"ttl_secs":3600}` →
/// `{"token":"…"}`, readable by pages of any origin (`Access-Control-Allow-Origin: *`, errors included).
async fn demo_token(state: State<Arc<Node>>, headers: HeaderMap, body: Body) -> Response {
    let mut response = demo_token_reply(state, headers, body).await;
    response.headers_mut().insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    response
}

async fn demo_token_reply(State(node): State<Arc<Node>>, headers: HeaderMap, body: Body) -> Response {
    #[derive(serde::Deserialize)]
    struct TokenRequest {
        user: String,
        topics: Option<Vec<String>>,
        ttl_secs: Option<serde_json::Number>,
    }
    let text = match read_body(&headers, body, node.config.max_body_bytes).await {
        Ok(text) => text,
        Err(response) => return response,
    };
    // An object only (serde would also take a struct written as an array).
    let object = serde_json::from_str::<serde_json::Value>(&text).and_then(|v| {
        if v.is_object() { Ok(v) } else { Err(serde::de::Error::custom("the body is not a JSON object")) }
    });
    let request: TokenRequest = match object.and_then(serde_json::from_value) {
        Ok(request) => request,
        Err(e) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("expected {{\"user\":\"…\",\"topics\":[…]}}: {e}"),
            );
        }
    };
    if let Err(e) = validate_user_id(&request.user) {
        return error_response(StatusCode::BAD_REQUEST, "bad_request", format!("user: {e}"));
    }
    let topics = request.topics.unwrap_or_default();
    for (i, pattern) in topics.iter().enumerate() {
        let name = pattern.strip_suffix('*').unwrap_or(pattern);
        if !name.is_empty()
            && let Err(e) = validate_topic(name)
        {
            return error_response(StatusCode::BAD_REQUEST, "bad_request", format!("topics[{i}]: {e}"));
        }
    }
    // An integer, also when written with a zero fraction (`60.0`), as JSON Schema's `integer` allows.
    let ttl_secs = match &request.ttl_secs {
        None => 3600,
        Some(n) => {
            match n.as_u64().or_else(|| n.as_f64().filter(|f| f.fract() == 0.0 && *f >= 0.0).map(|f| f as u64)) {
                Some(secs) => secs,
                None => {
                    return error_response(
                        StatusCode::BAD_REQUEST,
                        "bad_request",
                        format!("ttl_secs: expected a whole number of seconds, got {n}"),
                    );
                }
            }
        }
    };
    let ttl = Duration::from_secs(ttl_secs.clamp(1, 7 * 24 * 3600));
    let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
    let token = issue_token(&node.config.jwt_secret, &request.user, &topics, Some(ttl));
    axum::Json(json!({ "token": token })).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The OpenAPI document and the router's table describe the same operations, with the same access.
    #[test]
    fn every_route_is_documented_and_every_documented_operation_is_routed() {
        let doc = crate::openapi::document();
        let paths = doc["paths"].as_object().expect("paths");
        let mut documented: Vec<(String, String)> = Vec::new();
        for (path, item) in paths {
            for (method, op) in item.as_object().unwrap() {
                documented.push((method.to_uppercase(), path.clone()));
                let routed = ENDPOINTS.iter().find(|(m, p, ..)| m.as_str() == method.to_uppercase() && p == path);
                let Some((_, _, access, _)) = routed else {
                    panic!("{} {path} is documented but not routed (add it to ENDPOINTS)", method.to_uppercase());
                };
                // The document says who may call it, as the router enforces.
                let scope = op["x-required-scope"].as_str();
                match access {
                    Access::Key(s) => {
                        assert_eq!(scope, Some(s.as_str()), "{method} {path}: scope");
                        assert_eq!(op["security"], json!([{ "apiKey": [] }]), "{method} {path}: security");
                        for status in ["401", "403", "429"] {
                            assert!(op["responses"][status].is_object(), "{method} {path}: no {status} response");
                        }
                    }
                    Access::User => {
                        assert_eq!(scope, None, "{method} {path}: a user's token, no scope");
                        assert_eq!(op["security"], json!([{ "userToken": [] }]), "{method} {path}: security");
                        for status in ["401", "429"] {
                            assert!(op["responses"][status].is_object(), "{method} {path}: no {status} response");
                        }
                    }
                    Access::Public | Access::Demo => {
                        assert_eq!(scope, None, "{method} {path}: public, no scope");
                        assert!(op.get("security").is_none(), "{method} {path}: public, no security");
                    }
                }
                let responses = op["responses"].as_object().unwrap();
                assert!(
                    responses.keys().any(|s| s.starts_with('2') || s == "101"),
                    "{method} {path}: no success response"
                );
                assert!(op["operationId"].is_string(), "{method} {path}: no operationId");
            }
        }
        for (method, path, ..) in ENDPOINTS {
            assert!(
                documented.contains(&(method.to_string(), path.to_string())),
                "{method} {path} is routed but not in the OpenAPI document (openapi.rs)"
            );
        }
        assert_eq!(documented.len(), ENDPOINTS.len());
        let mut ids: Vec<&str> = paths
            .values()
            .flat_map(|item| item.as_object().unwrap().values())
            .map(|op| op["operationId"].as_str().unwrap())
            .collect();
        ids.sort_unstable();
        let before = ids.len();
        ids.dedup();
        assert_eq!(ids.len(), before, "operationIds are unique");
    }

    /// Every `$ref` in the document points at something it defines.
    #[test]
    fn the_document_has_no_dangling_references() {
        fn refs<'a>(value: &'a serde_json::Value, out: &mut Vec<&'a str>) {
            match value {
                serde_json::Value::Object(map) => {
                    if let Some(r) = map.get("$ref").and_then(|r| r.as_str()) {
                        out.push(r);
                    }
                    map.values().for_each(|v| refs(v, out));
                }
                serde_json::Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
                _ => {}
            }
        }
        let doc = crate::openapi::document();
        let mut found = Vec::new();
        refs(&doc, &mut found);
        assert!(!found.is_empty());
        for r in found {
            let pointer = r.strip_prefix('#').expect("local references only");
            assert!(doc.pointer(pointer).is_some(), "{r} is not defined");
        }
        assert_eq!(doc["openapi"], "3.1.0");
    }
}
