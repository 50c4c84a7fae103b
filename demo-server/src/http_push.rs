//! HTTP routes of push delivery (protocol §9.6–§9.8): a user's preferences and quiet hours — set by the user with
//! their own token under `/v1/me/…`, or by the operator with the API key under `/v1/users/{user}/…` — a
//! notification fetched by the SDK when its push was too large to carry it, acks sent by a push handler that
//! runs without a socket, and what happened to each notification (`GET /v1/notifications/{id}/deliveries`).
//!
//! `/v1/me/…` answers browsers on any origin (CORS with `*`): it authenticates with a bearer token, never a
//! cookie, so another origin gains nothing a token does not already give.

// The error side of these helpers is the response itself, built once per refused request.
#![allow(clippy::result_large_err)]

use std::sync::Arc;

use axum::Extension;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tidings_core::protocol::validate_user_id;
use tidings_core::protocol::{MAX_IDS_PER_ACK, ServerFrame, decode_server_frame, encode_notification, validate_id};

use crate::http::{AuthedUser, error_response, read_body};
use crate::metrics::Transport;
use crate::model::AckRecord;
use crate::node::Node;
use crate::planner::{Preferences, QuietHours, QuietHoursSpec, Rule};
use crate::store::{DeliveryRecord, SettingsChange, SettingsError, UserSettings};

/// The CORS layer of `/v1/me/…` (any origin: the routes authenticate with a bearer token, never a cookie). The
/// routes themselves are in `http::ENDPOINTS`, with who may call them.
pub(crate) fn cors() -> tower_http::cors::CorsLayer {
    tower_http::cors::CorsLayer::new()
        .allow_origin(tower_http::cors::Any)
        .allow_methods([Method::GET, Method::PUT, Method::PATCH, Method::DELETE, Method::POST])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
        .max_age(std::time::Duration::from_secs(3600))
}

/// The user named in an operator path (the API key and its scope are checked by the route), or the error answer.
fn operator_user(user: &str) -> Result<(), Response> {
    validate_user_id(user).map_err(|e| error_response(StatusCode::BAD_REQUEST, "bad_request", format!("user: {e}")))
}

fn settings_error(e: SettingsError) -> Response {
    match e {
        SettingsError::Invalid(m) => error_response(StatusCode::BAD_REQUEST, "bad_request", m),
        SettingsError::Store(e) => crate::http::unavailable(&e),
    }
}

fn preferences_json(s: &UserSettings) -> Response {
    let rules = serde_json::to_value(&s.preferences.rules).unwrap_or(Value::Array(Vec::new()));
    axum::Json(json!({"rules": rules, "version": s.version, "updated_at": s.updated_at})).into_response()
}

fn quiet_hours_json(s: &UserSettings) -> Response {
    axum::Json(json!({"quiet_hours": s.quiet_hours, "version": s.version, "updated_at": s.updated_at})).into_response()
}

async fn get_settings(node: &Node, user: &str) -> Result<UserSettings, Response> {
    node.stores.settings.settings(user).await.map_err(|e| crate::http::unavailable(&e))
}

/// Parses `{"rules":[…]}` and checks the rules.
fn parse_rules(text: &str) -> Result<Vec<Rule>, Response> {
    // A rule names a `type` or a `topic`, not both: serde would take one and drop the other unseen (found by
    // schemathesis: `{"topic":"0","type":{}}` was stored as a topic rule).
    if let Ok(Value::Object(body)) = serde_json::from_str::<Value>(text)
        && let Some(Value::Array(rules)) = body.get("rules")
        && let Some(i) = rules.iter().position(|r| r.get("type").is_some() && r.get("topic").is_some())
    {
        let message = format!("rule {i}: name a `type` or a `topic`, not both");
        return Err(error_response(StatusCode::BAD_REQUEST, "bad_request", message));
    }
    let p: Preferences = serde_json::from_str(text).map_err(|e| {
        error_response(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!(
                "expected {{\"rules\":[{{\"type\":\"comment.*\",\"channel\":\"push\",\"enabled\":false}}]}} (a rule \
                 names a `type` or a `topic`, a `channel` socket or push, and `enabled`): {e}"
            ),
        )
    })?;
    p.validate().map_err(|e| error_response(StatusCode::BAD_REQUEST, "bad_request", e))?;
    Ok(p.rules)
}

/// Parses and checks a quiet-hours definition.
fn parse_quiet_hours(text: &str) -> Result<QuietHoursSpec, Response> {
    let spec: QuietHoursSpec = serde_json::from_str(text).map_err(|e| {
        error_response(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!(
                "expected {{\"time_zone\":\"Europe/Berlin\",\"ranges\":[{{\"day\":\"mon\",\"start\":\"22:00\",\
                 \"end\":\"07:00\"}}]}}: {e}"
            ),
        )
    })?;
    let checked = QuietHours::from_spec(&spec)
        .map_err(|e| error_response(StatusCode::BAD_REQUEST, "bad_request", e.to_string()))?;
    // Stored in its normal form (day names and times as the server writes them).
    Ok(checked.to_spec())
}

enum Op {
    Get,
    Replace,
    Merge,
}

async fn preferences(node: Arc<Node>, user: &str, op: Op, headers: &HeaderMap, body: Body) -> Response {
    let change = match op {
        Op::Get => {
            return match get_settings(&node, user).await {
                Ok(s) => preferences_json(&s),
                Err(r) => r,
            };
        }
        Op::Replace | Op::Merge => {
            let text = match read_body(headers, body, node.config.max_body_bytes).await {
                Ok(text) => text,
                Err(response) => return response,
            };
            let rules = match parse_rules(&text) {
                Ok(rules) => rules,
                Err(response) => return response,
            };
            match op {
                Op::Replace => SettingsChange::ReplacePreferences(Preferences { rules }),
                _ => SettingsChange::MergePreferences(rules),
            }
        }
    };
    match node.update_settings(user, change).await {
        Ok(s) => preferences_json(&s),
        Err(e) => settings_error(e),
    }
}

enum QuietOp {
    Get,
    Put,
    Delete,
}

async fn quiet_hours(node: Arc<Node>, user: &str, op: QuietOp, headers: &HeaderMap, body: Body) -> Response {
    let change = match op {
        QuietOp::Get => {
            return match get_settings(&node, user).await {
                Ok(s) => quiet_hours_json(&s),
                Err(r) => r,
            };
        }
        QuietOp::Delete => SettingsChange::QuietHours(None),
        QuietOp::Put => {
            let text = match read_body(headers, body, node.config.max_body_bytes).await {
                Ok(text) => text,
                Err(response) => return response,
            };
            match parse_quiet_hours(&text) {
                Ok(spec) => SettingsChange::QuietHours(Some(spec)),
                Err(response) => return response,
            }
        }
    };
    match node.update_settings(user, change).await {
        Ok(s) => quiet_hours_json(&s),
        Err(e) => settings_error(e),
    }
}

macro_rules! me {
    ($name:ident, $f:ident, $op:expr) => {
        pub(crate) async fn $name(
            State(node): State<Arc<Node>>,
            Extension(AuthedUser(user)): Extension<AuthedUser>,
            headers: HeaderMap,
            body: Body,
        ) -> Response {
            $f(node, &user, $op, &headers, body).await
        }
    };
}

macro_rules! operator {
    ($name:ident, $f:ident, $op:expr) => {
        pub(crate) async fn $name(
            State(node): State<Arc<Node>>,
            Path(user): Path<String>,
            headers: HeaderMap,
            body: Body,
        ) -> Response {
            match operator_user(&user) {
                Ok(()) => $f(node, &user, $op, &headers, body).await,
                Err(response) => response,
            }
        }
    };
}

me!(my_preferences, preferences, Op::Get);
me!(put_my_preferences, preferences, Op::Replace);
me!(patch_my_preferences, preferences, Op::Merge);
me!(my_quiet_hours, quiet_hours, QuietOp::Get);
me!(put_my_quiet_hours, quiet_hours, QuietOp::Put);
me!(delete_my_quiet_hours, quiet_hours, QuietOp::Delete);
operator!(user_preferences, preferences, Op::Get);
operator!(put_user_preferences, preferences, Op::Replace);
operator!(patch_user_preferences, preferences, Op::Merge);
operator!(user_quiet_hours, quiet_hours, QuietOp::Get);
operator!(put_user_quiet_hours, quiet_hours, QuietOp::Put);
operator!(delete_user_quiet_hours, quiet_hours, QuietOp::Delete);

/// `GET /v1/me/notifications/{id}`: the notification as the user's stream holds it (the envelope, protocol §3),
/// for an SDK whose push was too large to carry it.
pub(crate) async fn my_notification(
    State(node): State<Arc<Node>>,
    Extension(AuthedUser(user)): Extension<AuthedUser>,
    Path(id): Path<String>,
) -> Response {
    if let Err(e) = validate_id(&id) {
        return error_response(StatusCode::BAD_REQUEST, "bad_request", format!("id: {e}"));
    }
    let stream = format!("user:{user}");
    match node.stores.streams.find(&stream, &id).await {
        Ok(Some(entry)) => match decode_server_frame(entry.frame.as_str()) {
            Ok(ServerFrame::Notification(n)) => (
                StatusCode::OK,
                [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))],
                encode_notification(&n),
            )
                .into_response(),
            _ => error_response(StatusCode::INTERNAL_SERVER_ERROR, "internal", "the stored notification is unreadable"),
        },
        Ok(None) => error_response(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{stream} holds no notification {id} (never sent to this user, or no longer kept)"),
        ),
        Err(e) => crate::http::unavailable(&e),
    }
}

/// `POST /v1/me/acks` with `{"device":"…","ids":[…]}`: acks from a device without a socket (a push handler).
pub(crate) async fn my_acks(
    State(node): State<Arc<Node>>,
    Extension(AuthedUser(user)): Extension<AuthedUser>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    #[derive(serde::Deserialize)]
    struct Acks {
        device: String,
        ids: Vec<String>,
    }
    let text = match read_body(&headers, body, node.config.max_body_bytes).await {
        Ok(text) => text,
        Err(response) => return response,
    };
    let acks: Acks = match serde_json::from_str(&text) {
        Ok(acks) => acks,
        Err(e) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("expected {{\"device\":\"…\",\"ids\":[\"…\"]}}: {e}"),
            );
        }
    };
    if let Err(e) = validate_id(&acks.device) {
        return error_response(StatusCode::BAD_REQUEST, "bad_request", format!("device: {e}"));
    }
    if acks.ids.len() > MAX_IDS_PER_ACK {
        return error_response(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("ids: at most {MAX_IDS_PER_ACK}, got {}", acks.ids.len()),
        );
    }
    if let Some((i, e)) = acks.ids.iter().enumerate().find_map(|(i, id)| validate_id(id).err().map(|e| (i, e))) {
        return error_response(StatusCode::BAD_REQUEST, "bad_request", format!("ids[{i}]: {e}"));
    }
    let (user, device): (Arc<str>, Arc<str>) = (Arc::from(user), Arc::from(acks.device));
    node.record_acks(Transport::Http, &user, &device, &acks.ids).await;
    axum::Json(json!({"acked": acks.ids.len()})).into_response()
}

/// `GET /v1/notifications/{id}/deliveries`: acks, and the push log.
pub(crate) async fn deliveries(State(node): State<Arc<Node>>, Path(id): Path<String>) -> Response {
    if let Err(e) = validate_id(&id) {
        return error_response(StatusCode::BAD_REQUEST, "bad_request", format!("id: {e}"));
    }
    let (acks, log) = match tokio::try_join!(node.acks(&id), node.stores.push.deliveries(&id)) {
        Ok(both) => both,
        Err(e) => return crate::http::unavailable(&e),
    };
    axum::Json(json!({"id": id, "deliveries": delivery_log(&acks, &log)})).into_response()
}

/// Acks and the push log in time order. Within one millisecond the push log's entries keep their own order and
/// come before the acks, except what an ack caused (a push cancelled with reason `acked`), which follows them.
fn delivery_log(acks: &[AckRecord], log: &[DeliveryRecord]) -> Vec<Value> {
    let mut entries: Vec<(u64, u8, Value)> = acks
        .iter()
        .map(|a| (a.at, 1, json!({"user": &*a.user, "device": &*a.device, "status": "acked", "at": a.at})))
        .collect();
    entries.extend(log.iter().map(|r| {
        let caused_by_ack = u8::from(r.reason.as_deref() == Some("acked")) * 2;
        (r.at, caused_by_ack, serde_json::to_value(r).unwrap_or_default())
    }));
    entries.sort_by_key(|(at, rank, _)| (*at, *rank));
    entries.into_iter().map(|(_, _, v)| v).collect()
}

/// `GET /v1/push/status`: each provider's state.
pub(crate) async fn push_status(State(node): State<Arc<Node>>) -> Response {
    let providers: Vec<Value> = match &node.routing.dispatcher {
        Some(d) => d
            .health()
            .into_iter()
            .map(|h| {
                json!({"provider": h.provider.as_str(), "configured": h.configured, "stopped": h.stopped,
                       "deletions_paused": h.deletions_paused})
            })
            .collect(),
        None => ["web_push", "apns", "fcm"]
            .iter()
            .map(|p| json!({"provider": p, "configured": false, "stopped": null, "deletions_paused": false}))
            .collect(),
    };
    axum::Json(json!({"providers": providers})).into_response()
}

#[cfg(test)]
mod delivery_log_tests {
    use super::*;
    use crate::planner::Channel;
    use crate::store::DeliveryStatus;

    fn record(status: DeliveryStatus, reason: &str, at: u64) -> DeliveryRecord {
        DeliveryRecord {
            id: "n1".into(),
            user: "alice".into(),
            device: Some("laptop".into()),
            channel: Channel::Push,
            status,
            reason: Some(reason.into()),
            provider: None,
            form: None,
            due_at: None,
            at,
        }
    }

    #[test]
    fn an_ack_in_the_millisecond_of_the_schedule_comes_after_it_and_before_the_cancellation_it_caused() {
        let ack = AckRecord { user: Arc::from("alice"), device: Arc::from("laptop"), at: 5 };
        let log = [
            record(DeliveryStatus::Scheduled, "awaiting_ack", 5),
            record(DeliveryStatus::Cancelled, "acked", 5),
            record(DeliveryStatus::Suppressed, "quiet_hours", 4),
        ];
        let order: Vec<String> = delivery_log(&[ack], &log)
            .iter()
            .map(|e| format!("{}:{}", e["status"].as_str().unwrap(), e["at"]))
            .collect();
        assert_eq!(order, ["suppressed:4", "scheduled:5", "acked:5", "cancelled:5"]);
    }
}
