//! HTTP routes of the inbox (protocol §13.7), the stream history (§14), acks over HTTP and SSE tickets (§15):
//! with the user's token under `/v1/me/…` and `/v1/streams/…`, with the API key under `/v1/users/{user}/…`.
//! Errors are `{"error":{"code","message"}}` as everywhere in the API.

use std::sync::Arc;

use axum::Extension;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tidings_core::protocol::{
    ArchivedFilter, InboxAction, InboxPage, InboxQuery, InboxUpdate, MAX_HISTORY_PAGE, MarkAllAction, StatusFilter,
    StreamName, encode_notification, push_json_str, push_json_u64, validate_id, validate_op_id, validate_topic,
    validate_user_id, write_counts, write_item,
};

use crate::auth::{TokenError, authorize_stream};
use crate::http::{AuthedToken, error_response, read_body};
use crate::node::Node;
use crate::session::check_mark;
use crate::session::sse::Ticket;
use crate::store::{ChangeKind, ChangeRequest, InboxChange};
use crate::util::now_ms;

/// The bearer credential of `Authorization`, if any.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim)
}

/// The `401` of a refused user token.
pub(crate) fn token_rejection(error: TokenError) -> Response {
    let (code, message) = match error {
        TokenError::Unauthorized(m) => ("unauthorized", m),
        TokenError::Expired(m) => ("token_expired", m),
    };
    let mut response = error_response(StatusCode::UNAUTHORIZED, code, message);
    response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

fn json(status: StatusCode, body: String) -> Response {
    let mut response = (status, body).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn bad_request(message: impl Into<String>) -> Response {
    error_response(StatusCode::BAD_REQUEST, "bad_request", message)
}

/// The query's parameters, or a JSON `400` (axum's own rejection is plain text; found by schemathesis with a
/// repeated parameter, `?status=read&status=read`).
pub(crate) fn query_params<T>(query: Result<Query<T>, QueryRejection>) -> Result<T, Box<Response>> {
    query.map(|Query(params)| params).map_err(|e| Box::new(bad_request(format!("the query string: {}", e.body_text()))))
}

/// A whole number ≥ 0, also when written with a fraction or an exponent (`5.0`, `5e3`), which JSON Schema's
/// `integer` allows. Read from the number's text, exactly: schemathesis found `"up_to": 25574396.0` refused, 2^64
/// (read as a float) accepted, and `2202988354854997.0` read as 2202988354854996.8 (serde_json's float parsing is
/// not exact that far up) and refused.
fn whole_u64<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let Some(raw) = Option::<Box<serde_json::value::RawValue>>::deserialize(d)? else { return Ok(None) };
    let text = raw.get();
    exact_whole_u64(text)
        .map(Some)
        .ok_or_else(|| serde::de::Error::custom(format!("up_to must be a whole number from 0 to 2^64 - 1, got {text}")))
}

/// The value of a JSON number's text if it is a whole number from 0 to `u64::MAX` (`-0` is 0); `None` for anything
/// else (a fraction, a negative number, too large, not a number).
fn exact_whole_u64(text: &str) -> Option<u64> {
    let (mantissa, exponent) = match text.split_once(['e', 'E']) {
        Some((m, e)) => (m, e.strip_prefix('+').unwrap_or(e).parse::<i64>().ok()?),
        None => (text, 0),
    };
    let (negative, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => (true, m),
        None => (false, mantissa),
    };
    let (int, frac) = match mantissa.split_once('.') {
        Some((_, "")) => return None,
        Some(parts) => parts,
        None => (mantissa, ""),
    };
    if int.is_empty() || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    // The digits without the fraction's trailing zeros and the integer's leading ones; value = digits × 10^exponent.
    let frac = frac.trim_end_matches('0');
    let digits = format!("{int}{frac}");
    let digits = digits.trim_start_matches('0');
    if digits.is_empty() {
        return Some(0); // 0, -0, 0.000, 0e99
    }
    if negative {
        return None;
    }
    let mut exponent = exponent.checked_sub(i64::try_from(frac.len()).ok()?)?;
    let mut digits = digits;
    while exponent < 0 {
        digits = digits.strip_suffix('0')?; // a nonzero digit after the point: not whole
        exponent += 1;
    }
    if digits.len() > 20 || exponent > 19 {
        return None;
    }
    digits.parse::<u64>().ok()?.checked_mul(10u64.checked_pow(u32::try_from(exponent).ok()?)?)
}

// ---- bodies ----

fn push_counts(out: &mut String, update_counts: &tidings_core::protocol::InboxCounts) {
    out.push_str("\"counts\":");
    write_counts(out, update_counts);
}

fn push_items(out: &mut String, items: &[tidings_core::protocol::InboxItem]) {
    out.push_str("\"items\":[");
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_item(out, item);
    }
    out.push(']');
}

fn push_strings(out: &mut String, key: &str, values: &[String]) {
    push_json_str(out, key);
    out.push_str(":[");
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_json_str(out, v);
    }
    out.push(']');
}

/// `{"items":[…],"next":…,"counts":{…}}`.
fn page_body(page: &InboxPage) -> String {
    let mut out = String::from("{");
    push_items(&mut out, &page.items);
    out.push_str(",\"next\":");
    match page.next {
        Some(next) => push_json_u64(&mut out, next),
        None => out.push_str("null"),
    }
    out.push(',');
    push_counts(&mut out, &page.counts);
    out.push('}');
    out
}

/// `{"counts":{…},"items":[…],"unknown":[…],"mark":{…}|null,"duplicate":false}`.
fn change_body(update: &InboxUpdate, unknown: &[String]) -> String {
    let mut out = String::from("{");
    push_counts(&mut out, &update.counts);
    out.push(',');
    push_items(&mut out, &update.items);
    out.push(',');
    push_strings(&mut out, "unknown", unknown);
    out.push_str(",\"mark\":");
    match &update.mark {
        Some(m) => out.push_str(&format!(
            r#"{{"action":"{}","up_to":{},"at":{},"version":{}}}"#,
            m.action.as_str(),
            m.up_to,
            m.at,
            m.version
        )),
        None => out.push_str("null"),
    }
    out.push_str(&format!(",\"duplicate\":{}}}", update.duplicate));
    out
}

// ---- the inbox, for one user ----

#[derive(Deserialize)]
pub(crate) struct ListParams {
    status: Option<String>,
    archived: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    topic: Option<String>,
    before: Option<String>,
    limit: Option<String>,
}

fn parse_query(params: ListParams) -> Result<InboxQuery, Box<Response>> {
    let number = |name: &str, v: Option<String>| -> Result<Option<u64>, Box<Response>> {
        v.map(|v| {
            v.parse::<u64>()
                .map_err(|_| Box::new(bad_request(format!("{name} must be an unsigned integer, got {v:?}"))))
        })
        .transpose()
    };
    let query = InboxQuery {
        before: number("before", params.before)?,
        limit: number("limit", params.limit)?.map(|l| u32::try_from(l).unwrap_or(u32::MAX)),
        status: match params.status.as_deref() {
            None => StatusFilter::All,
            Some(s) => StatusFilter::parse(s).ok_or_else(|| {
                Box::new(bad_request(format!("status must be all, unread, read, unseen or seen, got {s:?}")))
            })?,
        },
        archived: match params.archived.as_deref() {
            None => ArchivedFilter::Exclude,
            Some(s) => ArchivedFilter::parse(s).ok_or_else(|| {
                Box::new(bad_request(format!("archived must be exclude, include or only, got {s:?}")))
            })?,
        },
        kind: params.kind,
        topic: params.topic,
    };
    query.validate().map_err(|e| Box::new(bad_request(e)))?;
    Ok(query)
}

async fn list(node: &Node, user: &str, params: ListParams) -> Response {
    let query = match parse_query(params) {
        Ok(query) => query,
        Err(response) => return *response,
    };
    match node.stores.inbox.list(user, query).await {
        Ok(page) => json(StatusCode::OK, page_body(&page)),
        Err(e) => crate::http::unavailable(&e),
    }
}

async fn counts(node: &Node, user: &str) -> Response {
    match node.stores.inbox.counts(user).await {
        Ok(counts) => {
            let mut out = String::from("{");
            push_counts(&mut out, &counts);
            out.push('}');
            json(StatusCode::OK, out)
        }
        Err(e) => crate::http::unavailable(&e),
    }
}

#[derive(Deserialize)]
struct MarkBody {
    #[serde(default)]
    op_id: Option<String>,
    action: String,
    ids: Vec<String>,
}

#[derive(Deserialize)]
struct MarkAllBody {
    #[serde(default)]
    op_id: Option<String>,
    action: String,
    #[serde(default, deserialize_with = "whole_u64")]
    up_to: Option<u64>,
}

async fn apply(node: &Node, user: &str, op_id: Option<String>, kind: ChangeKind) -> Response {
    let request = ChangeRequest { op_id: op_id.filter(|o| !o.is_empty()), at: now_ms(), kind };
    match node.inbox_change(user, request).await {
        Ok(InboxChange { update, unknown, .. }) => json(StatusCode::OK, change_body(&update, &unknown)),
        Err(e) => crate::http::unavailable(&e),
    }
}

async fn mark(node: &Node, user: &str, headers: &HeaderMap, body: Body) -> Response {
    let text = match read_body(headers, body, node.config.max_body_bytes).await {
        Ok(text) => text,
        Err(response) => return response,
    };
    let body: MarkBody = match serde_json::from_str(&text) {
        Ok(body) => body,
        Err(e) => return bad_request(format!("expected {{\"op_id\":\"…\",\"action\":\"read\",\"ids\":[…]}}: {e}")),
    };
    let Some(action) = InboxAction::parse(&body.action) else {
        return bad_request(format!(
            "action must be read, unread, seen, unseen, archive or unarchive, got {:?}",
            body.action
        ));
    };
    if let Err(e) = check_mark(body.op_id.as_deref().unwrap_or(""), action, &body.ids) {
        return bad_request(e);
    }
    apply(node, user, body.op_id, ChangeKind::Mark { action, ids: body.ids }).await
}

async fn mark_all(node: &Node, user: &str, headers: &HeaderMap, body: Body) -> Response {
    let text = match read_body(headers, body, node.config.max_body_bytes).await {
        Ok(text) => text,
        Err(response) => return response,
    };
    let body: MarkAllBody = match serde_json::from_str(&text) {
        Ok(body) => body,
        Err(e) => return bad_request(format!("expected {{\"op_id\":\"…\",\"action\":\"read\",\"up_to\":123}}: {e}")),
    };
    let Some(action) = MarkAllAction::parse(&body.action) else {
        return bad_request(format!("action must be read or seen, got {:?}", body.action));
    };
    if let Err(e) = validate_op_id(body.op_id.as_deref().unwrap_or("")) {
        return bad_request(format!("op_id {e}"));
    }
    apply(node, user, body.op_id, ChangeKind::MarkAll { action, up_to: body.up_to }).await
}

async fn topics(node: &Node, user: &str) -> Response {
    match node.stores.inbox.following(user).await {
        Ok(topics) => {
            let mut out = String::from("{");
            push_strings(&mut out, "topics", &topics);
            out.push('}');
            json(StatusCode::OK, out)
        }
        Err(e) => crate::http::unavailable(&e),
    }
}

async fn follow(node: &Node, user: &str, topic: &str, on: bool) -> Response {
    if let Err(e) = validate_topic(topic) {
        return bad_request(format!("topic {e}"));
    }
    match node.stores.inbox.follow(user, topic, on).await {
        Ok(changed) => {
            let mut out = String::from("{\"topic\":");
            push_json_str(&mut out, topic);
            out.push_str(&format!(",\"following\":{on},\"changed\":{changed}}}"));
            json(StatusCode::OK, out)
        }
        Err(e) => crate::http::unavailable(&e),
    }
}

// ---- /v1/me: the user's token (checked by the route: `http::require_user`) ----

pub(crate) async fn me_list(
    State(node): State<Arc<Node>>,
    Extension(AuthedToken(me)): Extension<AuthedToken>,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Response {
    match query_params(params) {
        Ok(params) => list(&node, &me.user, params).await,
        Err(response) => *response,
    }
}

pub(crate) async fn me_counts(
    State(node): State<Arc<Node>>,
    Extension(AuthedToken(me)): Extension<AuthedToken>,
) -> Response {
    counts(&node, &me.user).await
}

pub(crate) async fn me_mark(
    State(node): State<Arc<Node>>,
    Extension(AuthedToken(me)): Extension<AuthedToken>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    mark(&node, &me.user, &headers, body).await
}

pub(crate) async fn me_mark_all(
    State(node): State<Arc<Node>>,
    Extension(AuthedToken(me)): Extension<AuthedToken>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    mark_all(&node, &me.user, &headers, body).await
}

pub(crate) async fn me_topics(
    State(node): State<Arc<Node>>,
    Extension(AuthedToken(me)): Extension<AuthedToken>,
) -> Response {
    topics(&node, &me.user).await
}

/// Following a topic needs a token that may read it.
pub(crate) async fn me_follow(
    State(node): State<Arc<Node>>,
    Extension(AuthedToken(me)): Extension<AuthedToken>,
    Path(topic): Path<String>,
) -> Response {
    if validate_topic(&topic).is_ok()
        && let Err(message) = authorize_stream(&me.user, &me.topics, &StreamName::Topic(&topic))
    {
        return error_response(StatusCode::FORBIDDEN, "forbidden", message);
    }
    follow(&node, &me.user, &topic, true).await
}

pub(crate) async fn me_unfollow(
    State(node): State<Arc<Node>>,
    Extension(AuthedToken(me)): Extension<AuthedToken>,
    Path(topic): Path<String>,
) -> Response {
    follow(&node, &me.user, &topic, false).await
}

/// `POST /v1/sse/tickets`: a single-use ticket for `GET /v1/sse?ticket=…` (for `EventSource`, which cannot send
/// the token in a header).
pub(crate) async fn sse_ticket(
    State(node): State<Arc<Node>>,
    Extension(AuthedToken(me)): Extension<AuthedToken>,
) -> Response {
    let now = now_ms();
    let ticket = Ticket::issue(&me, now, node.config.sse_ticket_ttl.as_millis() as u64);
    let mut out = String::from("{\"ticket\":");
    push_json_str(&mut out, &ticket.seal(&node.sse_keys));
    out.push_str(&format!(",\"expires_in_ms\":{}}}", ticket.open_until.saturating_sub(now)));
    json(StatusCode::OK, out)
}

// ---- the stream history ----

#[derive(Deserialize)]
pub(crate) struct HistoryParams {
    epoch: Option<String>,
    after: Option<String>,
    limit: Option<String>,
}

/// `GET /v1/streams/{stream}/history?epoch=…&after=…&limit=…`, authorized like a subscribe.
pub(crate) async fn history(
    State(node): State<Arc<Node>>,
    Extension(AuthedToken(me)): Extension<AuthedToken>,
    Path(stream): Path<String>,
    params: Result<Query<HistoryParams>, QueryRejection>,
) -> Response {
    let params = match query_params(params) {
        Ok(params) => params,
        Err(response) => return *response,
    };
    let name = match StreamName::parse(&stream) {
        Ok(name) => name,
        Err(e) => return bad_request(e),
    };
    if let Err(message) = authorize_stream(&me.user, &me.topics, &name) {
        return error_response(StatusCode::FORBIDDEN, "forbidden", message);
    }
    let after = match params.after.as_deref().map(str::parse::<u64>) {
        None => None,
        Some(Ok(after)) => Some(after),
        Some(Err(_)) => return bad_request("after must be an unsigned integer"),
    };
    if let Some(Err(e)) = params.epoch.as_deref().map(validate_id) {
        return bad_request(format!("epoch {e}"));
    }
    let position = match (params.epoch.as_deref(), after) {
        (Some(epoch), Some(after)) => Some((epoch, after)),
        (None, None) => None,
        _ => return bad_request("epoch and after must be given together"),
    };
    let limit = match params.limit.as_deref().map(str::parse::<usize>) {
        None => tidings_core::protocol::DEFAULT_HISTORY_PAGE as usize,
        Some(Ok(limit)) if (1..=MAX_HISTORY_PAGE as usize).contains(&limit) => limit,
        Some(_) => return bad_request(format!("limit must be 1 to {MAX_HISTORY_PAGE}")),
    };
    match node.history_page(&stream, position, limit).await {
        Ok(page) => {
            let mut out = String::from("{\"stream\":");
            push_json_str(&mut out, &page.stream);
            out.push_str(",\"epoch\":");
            push_json_str(&mut out, &page.epoch);
            out.push_str(&format!(",\"head\":{},\"oldest\":{},\"items\":[", page.head, page.oldest));
            for (i, n) in page.items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&encode_notification(n));
            }
            out.push_str("],\"next\":");
            match page.next {
                Some(next) => push_json_u64(&mut out, next),
                None => out.push_str("null"),
            }
            out.push('}');
            json(StatusCode::OK, out)
        }
        Err(e) => crate::http::unavailable(&e),
    }
}

// ---- /v1/users/{user}: the API key (checked by the route: `http::require_key`) ----

macro_rules! operator {
    ($user:expr) => {
        if let Err(e) = validate_user_id(&$user) {
            return bad_request(format!("user: {e}"));
        }
    };
}

pub(crate) async fn user_list(
    State(node): State<Arc<Node>>,
    Path(user): Path<String>,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Response {
    operator!(user);
    match query_params(params) {
        Ok(params) => list(&node, &user, params).await,
        Err(response) => *response,
    }
}

pub(crate) async fn user_counts(State(node): State<Arc<Node>>, Path(user): Path<String>) -> Response {
    operator!(user);
    counts(&node, &user).await
}

pub(crate) async fn user_mark(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    Path(user): Path<String>,
    body: Body,
) -> Response {
    operator!(user);
    mark(&node, &user, &headers, body).await
}

pub(crate) async fn user_mark_all(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    Path(user): Path<String>,
    body: Body,
) -> Response {
    operator!(user);
    mark_all(&node, &user, &headers, body).await
}

pub(crate) async fn user_topics(State(node): State<Arc<Node>>, Path(user): Path<String>) -> Response {
    operator!(user);
    topics(&node, &user).await
}

pub(crate) async fn user_follow(
    State(node): State<Arc<Node>>,
    Path((user, topic)): Path<(String, String)>,
) -> Response {
    operator!(user);
    follow(&node, &user, &topic, true).await
}

pub(crate) async fn user_unfollow(
    State(node): State<Arc<Node>>,
    Path((user, topic)): Path<(String, String)>,
) -> Response {
    operator!(user);
    follow(&node, &user, &topic, false).await
}

#[cfg(test)]
mod whole_number_tests {
    use super::exact_whole_u64;

    #[test]
    fn whole_numbers_are_read_exactly_in_any_notation() {
        for (text, want) in [
            ("0", 0),
            ("-0", 0),
            ("-0.0", 0),
            ("0e99", 0),
            ("5", 5),
            ("5.0", 5),
            ("5.000", 5),
            ("5e3", 5000),
            ("5E+3", 5000),
            ("2.5e1", 25),
            ("100e-2", 1),
            ("25574396.0", 25_574_396),
            // serde_json reads this as 2202988354854996.8 (found by schemathesis).
            ("2202988354854997.0", 2_202_988_354_854_997),
            ("9007199254740993.0", 9_007_199_254_740_993),
            ("18446744073709551615", u64::MAX),
            ("1.8446744073709551615e19", u64::MAX),
            ("00012", 12),
        ] {
            assert_eq!(exact_whole_u64(text), Some(want), "{text}");
        }
    }

    #[test]
    fn fractions_negatives_overflow_and_non_numbers_are_refused() {
        for text in [
            "2.5",
            "1e-1",
            "5.01",
            "-1",
            "-1.0",
            "-1e3",
            "18446744073709551616",
            "1.8446744073709551616e19",
            "1e20",
            "1e9999999999999999999",
            "true",
            "\"5\"",
            "null",
            "",
            ".5",
            "5.",
            "e5",
        ] {
            assert_eq!(exact_whole_u64(text), None, "{text}");
        }
    }
}
