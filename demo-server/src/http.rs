//! HTTP routes (protocol §9): the WebSocket endpoint, publishing, presence, acks, operator actions, health and
//! (demo mode only) token issuing. The inbox, history, acks and SSE ticket routes are in `http_inbox`, the SSE
//! stream in `sse`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::ws::{WebSocketUpgrade, rejection::WebSocketUpgradeRejection};
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use serde::Deserialize;
use serde_json::json;
use tidings_core::protocol::{ErrorCode, MAX_CLIENT_FRAME_BYTES, MAX_SERVER_FRAME_BYTES, SUBPROTOCOL, validate_id};
use tidings_core::protocol::{validate_topic, validate_user_id};
use tracing::info;

use crate::auth::issue_token;
use crate::node::Node;
use crate::publish::{PublishError, PublishRequest, Publisher, parse_batch};
use crate::ws;

/// Builds the router of a server.
pub(crate) fn router(node: Arc<Node>) -> Router {
    let router = Router::new()
        .route("/v1/ws", any(websocket))
        .route("/v1/publish", post(publish))
        .route("/v1/publish/batch", post(publish_batch))
        .route("/v1/presence", get(presence_all))
        .route("/v1/presence/{user}", get(presence_user))
        .route("/v1/notifications/{id}/acks", get(acks))
        .route("/v1/users/{user}/devices", get(devices))
        .route("/v1/admin/drop", post(admin_drop))
        .route("/v1/push/vapid-public-key", get(vapid_public_key))
        .route("/healthz", get(healthz))
        .route("/v1/sse", get(crate::sse::handler))
        .merge(crate::http_inbox::routes());
    let mut router = crate::http_push::routes(router);
    if node.config.demo {
        // Any origin may ask (a page served by a dev server on another port): CORS on the answer and the preflight.
        router = router.route("/v1/demo/token", post(demo_token).options(demo_cors_preflight));
    }
    match node.config.web_root.clone() {
        // Static files (demo page, npm package, service worker) at `/`; API routes take precedence.
        Some(root) => {
            let files = tower_http::services::ServeDir::new(root).append_index_html_on_directories(true);
            router.fallback_service(files).with_state(node)
        }
        None => router.fallback(not_found).with_state(node),
    }
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

async fn healthz() -> &'static str {
    "ok"
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

/// Checks `Authorization: Bearer <api key>`; the `401` response when it is missing or wrong.
pub(crate) fn api_key_rejection(node: &Node, headers: &HeaderMap) -> Option<Response> {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim);
    match presented {
        Some(key) if constant_time_eq(key.as_bytes(), node.config.api_key.as_bytes()) => None,
        other => {
            let message = if other.is_some() {
                "the API key is not valid"
            } else {
                "missing API key: send Authorization: Bearer <api key>"
            };
            let mut response = error_response(StatusCode::UNAUTHORIZED, "unauthorized", message);
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            Some(response)
        }
    }
}

/// Compares without an early exit on the first differing byte.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
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
            let status = rejection.status();
            return error_response(
                status,
                "bad_request",
                format!("expected a WebSocket upgrade: {}", rejection.body_text()),
            );
        }
    };
    if node.is_shutting_down() {
        let mut response =
            error_response(StatusCode::SERVICE_UNAVAILABLE, "try_again_later", "the server is shutting down");
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        return response;
    }
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
        .on_upgrade(move |socket| ws::serve(node, socket, Some(peer)))
}

/// `POST /v1/publish`.
async fn publish(State(node): State<Arc<Node>>, headers: HeaderMap, body: Body) -> Response {
    if let Some(response) = api_key_rejection(&node, &headers) {
        return response;
    }
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
    if let Some(response) = api_key_rejection(&node, &headers) {
        return response;
    }
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
    let results: Vec<serde_json::Value> = outcomes
        .into_iter()
        .map(|slot| match slot.or_else(|| published.next()) {
            Some(Ok(receipt)) => serde_json::to_value(receipt).unwrap_or_default(),
            Some(Err(e)) => publish_error_json(&e),
            None => json!({"error": {"code": "unavailable", "message": "no result"}}),
        })
        .collect();
    (StatusCode::OK, axum::Json(json!({ "results": results }))).into_response()
}

/// `GET /v1/presence`.
async fn presence_all(State(node): State<Arc<Node>>, headers: HeaderMap) -> Response {
    if let Some(response) = api_key_rejection(&node, &headers) {
        return response;
    }
    axum::Json(json!({ "users": node.presence.all() })).into_response()
}

/// `GET /v1/presence/{user}`.
async fn presence_user(State(node): State<Arc<Node>>, headers: HeaderMap, Path(user): Path<String>) -> Response {
    if let Some(response) = api_key_rejection(&node, &headers) {
        return response;
    }
    if let Err(e) = validate_user_id(&user) {
        return error_response(StatusCode::BAD_REQUEST, "bad_request", format!("user: {e}"));
    }
    axum::Json(node.presence.user(&user)).into_response()
}

/// `GET /v1/notifications/{id}/acks`.
async fn acks(State(node): State<Arc<Node>>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    if let Some(response) = api_key_rejection(&node, &headers) {
        return response;
    }
    if let Err(e) = validate_id(&id) {
        return error_response(StatusCode::BAD_REQUEST, "bad_request", format!("id: {e}"));
    }
    match node.acks(&id).await {
        Ok(acks) => {
            let acks: Vec<_> =
                acks.iter().map(|a| json!({"user": &*a.user, "device": &*a.device, "at": a.at})).collect();
            axum::Json(json!({"id": id, "acks": acks})).into_response()
        }
        Err(e) => error_response(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e.to_string()),
    }
}

/// `GET /v1/users/<user>/devices`: the user's devices with a registered push address.
async fn devices(State(node): State<Arc<Node>>, headers: HeaderMap, Path(user): Path<String>) -> Response {
    if let Some(response) = api_key_rejection(&node, &headers) {
        return response;
    }
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
        Err(e) => error_response(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e.to_string()),
    }
}

/// `POST /v1/admin/drop` with an optional `{"user":"…"}`.
async fn admin_drop(State(node): State<Arc<Node>>, headers: HeaderMap, body: Body) -> Response {
    #[derive(Deserialize)]
    struct DropRequest {
        user: Option<String>,
    }
    if let Some(response) = api_key_rejection(&node, &headers) {
        return response;
    }
    let text = match read_body(&headers, body, node.config.max_body_bytes).await {
        Ok(text) => text,
        Err(response) => return response,
    };
    let user = if text.trim().is_empty() {
        None
    } else {
        match serde_json::from_str::<DropRequest>(&text) {
            Ok(request) => request.user,
            Err(e) => {
                return error_response(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    format!("expected {{\"user\":\"…\"}}: {e}"),
                );
            }
        }
    };
    let message = "dropped by an operator";
    let dropped = match &user {
        Some(user) => {
            node.registry.connections_of(user).iter().filter(|conn| conn.close(ErrorCode::Dropped, message)).count()
        }
        None => node.registry.close_all(ErrorCode::Dropped, message),
    };
    info!(user = user.as_deref().unwrap_or("*"), dropped, "operator dropped connections");
    axum::Json(json!({ "dropped": dropped })).into_response()
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
    #[derive(Deserialize)]
    struct TokenRequest {
        user: String,
        #[serde(default)]
        topics: Vec<String>,
        ttl_secs: Option<u64>,
    }
    let text = match read_body(&headers, body, node.config.max_body_bytes).await {
        Ok(text) => text,
        Err(response) => return response,
    };
    let request: TokenRequest = match serde_json::from_str(&text) {
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
    for (i, pattern) in request.topics.iter().enumerate() {
        let name = pattern.strip_suffix('*').unwrap_or(pattern);
        if !name.is_empty()
            && let Err(e) = validate_topic(name)
        {
            return error_response(StatusCode::BAD_REQUEST, "bad_request", format!("topics[{i}]: {e}"));
        }
    }
    let ttl = Duration::from_secs(request.ttl_secs.unwrap_or(3600).clamp(1, 7 * 24 * 3600));
    let topics: Vec<&str> = request.topics.iter().map(String::as_str).collect();
    let token = issue_token(&node.config.jwt_secret, &request.user, &topics, Some(ttl));
    axum::Json(json!({ "token": token })).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_eq_compares_whole_keys() {
        assert!(constant_time_eq(b"key", b"key"));
        assert!(!constant_time_eq(b"key", b"kez"));
        assert!(!constant_time_eq(b"key", b"key2"));
    }
}
