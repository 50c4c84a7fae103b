//! The OpenAPI 3.1 document of the HTTP API, served at `GET /v1/openapi.json`.
//!
//! Written here, in code, beside the router: limits and patterns come from the same constants the handlers check,
//! and a test (`every_route_is_documented_and_every_documented_operation_is_routed` in `http.rs`) compares the
//! document's operations with the router's table ([`crate::http::ENDPOINTS`]), so neither can change without the
//! other. `cargo xtask test` also runs schemathesis against a running server with this document: every response
//! must match it.
//!
//! Adding an endpoint: add it to `ENDPOINTS` (the router is built from that table) and its operation here.

use serde_json::{Value, json};
use tidings_core::protocol::{
    MAX_BODY_BYTES, MAX_DATA_BYTES, MAX_HISTORY_PAGE, MAX_IDS_PER_ACK, MAX_IDS_PER_INBOX_MARK, MAX_INBOX_PAGE,
    MAX_NAME_BYTES, MAX_PUSH_TOKEN_BYTES, MAX_TITLE_BYTES, SUBPROTOCOL,
};

use crate::config::MAX_PUSH_AFTER;
use crate::planner::MAX_RULES;
use crate::publish::{MAX_BATCH, MAX_RECIPIENTS};

/// `[A-Za-z0-9_.:-]{1,128}`: notification ids, device ids, topic names.
const ID_PATTERN: &str = "^[A-Za-z0-9_.:-]{1,128}$";
/// `[A-Za-z0-9_.@-]{1,128}`: user ids.
/// A stream name (`user:<id>` or `topic:<name>`, protocol §2.4).
const STREAM_PATTERN: &str = "^(user:[A-Za-z0-9_.@-]{1,128}|topic:[A-Za-z0-9_.:-]{1,128})$";
const USER_PATTERN: &str = "^[A-Za-z0-9_.@-]{1,128}$";

/// `processes` of the operator endpoints' answers.
fn reach_processes() -> Value {
    json!({
        "type": "integer", "minimum": 1,
        "description": "The processes whose connections are counted: this one, and with Redis every other one that answered within 2 s",
    })
}

/// `complete` of the operator endpoints' answers.
fn reach_complete() -> Value {
    json!({
        "type": "boolean",
        "description": "`false` when a process that received the command did not answer within 2 s, or when Redis could \
            not take the command (the other processes did not receive it); the count then misses their connections",
    })
}

fn schema_ref(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

fn json_content(schema: Value) -> Value {
    json!({ "application/json": { "schema": schema } })
}

/// A response with a JSON body.
fn response(description: &str, schema: Value) -> Value {
    json!({ "description": description, "content": json_content(schema) })
}

/// An error response (`{"error":{…}}`).
fn error(description: &str) -> Value {
    response(description, schema_ref("Error"))
}

/// An error response with a `Retry-After` header.
fn error_retry(description: &str) -> Value {
    let mut r = error(description);
    r["headers"] = json!({ "Retry-After": { "$ref": "#/components/headers/RetryAfter" } });
    r
}

/// The responses every endpoint behind an API key can give besides its own.
fn with_auth_errors(mut responses: Value, scope: &str) -> Value {
    responses["401"] = json!({
        "description": "Missing or wrong API key",
        "headers": { "WWW-Authenticate": { "schema": { "type": "string" } } },
        "content": json_content(schema_ref("Error")),
    });
    responses["403"] = error(&format!("The API key does not have the `{scope}` scope"));
    responses["429"] = error_retry("Too many failed API key checks from this client address: wait `Retry-After`");
    responses
}

fn path_param(name: &str, pattern: &str, description: &str) -> Value {
    json!({
        "name": name,
        "in": "path",
        "required": true,
        "description": description,
        "schema": { "type": "string", "pattern": pattern },
    })
}

/// An operation behind an API key with `scope`.
fn secured(mut operation: Value, scope: &str) -> Value {
    operation["security"] = json!([{ "apiKey": [] }]);
    operation["x-required-scope"] = json!(scope);
    let description = operation["description"].as_str().unwrap_or_default().to_owned();
    operation["description"] = json!(format!("{description}\n\nNeeds an API key with the `{scope}` scope."));
    let responses = operation["responses"].take();
    operation["responses"] = with_auth_errors(responses, scope);
    operation
}

/// An operation for a user, with their own token (`/v1/me/…`).
fn user_secured(mut operation: Value) -> Value {
    operation["security"] = json!([{ "userToken": [] }]);
    let description = operation["description"].as_str().unwrap_or_default().to_owned();
    operation["description"] =
        json!(format!("{description}\n\nNeeds the user's own token (the client token of `auth`), not an API key."));
    operation["responses"]["401"] = json!({
        "description": "Missing, bad or expired user token (code unauthorized or token_expired)",
        "headers": { "WWW-Authenticate": { "schema": { "type": "string" } } },
        "content": json_content(schema_ref("Error")),
    });
    operation["responses"]["429"] =
        error_retry("Too many failed authentications from this client address: wait `Retry-After`");
    operation
}

/// The preferences operations of `/v1/me/preferences` (`user`: `None`) or `/v1/users/{user}/preferences`.
fn preferences_item(user: Option<&Value>) -> Value {
    let (prefix, who) = match user {
        Some(_) => ("User", "a user's"),
        None => ("My", "the caller's"),
    };
    let params = user.map_or(json!([]), |p| json!([p]));
    let bad = if user.is_some() {
        "Not a valid user id, or rules that are not valid (the message says which)"
    } else {
        "Rules that are not valid (the message says which)"
    };
    let body = json!({ "required": true, "content": json_content(schema_ref("PreferencesChange")) });
    let ops = json!({
        "get": {
            "operationId": format!("get{prefix}Preferences"),
            "tags": ["preferences"],
            "summary": format!("Read {who} notification preferences"),
            "parameters": params,
            "responses": {
                "200": response("The preferences", schema_ref("Preferences")),
                "400": error("Not a valid user id"),
                "503": error_retry("The store cannot be read now"),
            },
        },
        "put": {
            "operationId": format!("replace{prefix}Preferences"),
            "tags": ["preferences"],
            "summary": format!("Replace every rule of {who} preferences"),
            "description": "Held pushes are decided again at once (protocol §9.5, §12.3).",
            "parameters": params,
            "requestBody": body,
            "responses": {
                "200": response("The preferences after the change", schema_ref("Preferences")),
                "400": error(bad),
                "413": error("The body is too large"),
                "503": error_retry("The store could not commit the change (nothing changed)"),
            },
        },
        "patch": {
            "operationId": format!("merge{prefix}Preferences"),
            "tags": ["preferences"],
            "summary": format!("Add rules to {who} preferences"),
            "description": "A rule replaces the rule with the same selector and channel; the others stay.",
            "parameters": params,
            "requestBody": body,
            "responses": {
                "200": response("The preferences after the change", schema_ref("Preferences")),
                "400": error(bad),
                "413": error("The body is too large"),
                "503": error_retry("The store could not commit the change (nothing changed)"),
            },
        },
    });
    secure_all(ops, user.is_some())
}

/// The quiet-hours operations of `/v1/me/quiet-hours` or `/v1/users/{user}/quiet-hours`.
fn quiet_hours_item(user: Option<&Value>) -> Value {
    let (prefix, who) = match user {
        Some(_) => ("User", "a user's"),
        None => ("My", "the caller's"),
    };
    let params = user.map_or(json!([]), |p| json!([p]));
    let ops = json!({
        "get": {
            "operationId": format!("get{prefix}QuietHours"),
            "tags": ["preferences"],
            "summary": format!("Read {who} quiet hours"),
            "parameters": params,
            "responses": {
                "200": response("The quiet hours (`null`: none)", schema_ref("QuietHoursAnswer")),
                "400": error("Not a valid user id"),
                "503": error_retry("The store cannot be read now"),
            },
        },
        "put": {
            "operationId": format!("set{prefix}QuietHours"),
            "tags": ["preferences"],
            "summary": format!("Set {who} quiet hours"),
            "description": "Stored in normal form (days `mon`…`sun`, times `HH:MM`); held pushes are decided again \
                            at once (protocol §9.5, §12.4).",
            "parameters": params,
            "requestBody": { "required": true, "content": json_content(schema_ref("QuietHours")) },
            "responses": {
                "200": response("The quiet hours after the change", schema_ref("QuietHoursAnswer")),
                "400": error("Not valid quiet hours (an unknown time zone, a bad day or time, too many ranges), or \
                              not a valid user id"),
                "413": error("The body is too large"),
                "503": error_retry("The store could not commit the change (nothing changed)"),
            },
        },
        "delete": {
            "operationId": format!("delete{prefix}QuietHours"),
            "tags": ["preferences"],
            "summary": format!("Remove {who} quiet hours"),
            "parameters": params,
            "responses": {
                "200": response("The quiet hours after the change (`null`)", schema_ref("QuietHoursAnswer")),
                "400": error("Not a valid user id"),
                "503": error_retry("The store could not commit the change (nothing changed)"),
            },
        },
    });
    secure_all(ops, user.is_some())
}

/// Each operation of `item` behind the operator scope (`operator`) or the user's token.
fn secure_all(mut item: Value, operator: bool) -> Value {
    for op in item.as_object_mut().into_iter().flat_map(|m| m.values_mut()) {
        let plain = op.take();
        let mut secured_op = if operator { secured(plain, "operator") } else { user_secured(plain) };
        if !operator && secured_op["parameters"].as_array().is_some_and(Vec::is_empty) {
            secured_op.as_object_mut().map(|m| m.remove("parameters"));
        }
        if !operator {
            // No user id in the path: nothing makes a `/v1/me/…` read a 400.
            if let Some(responses) = secured_op["responses"].as_object_mut()
                && responses.get("400").is_some_and(|r| r["description"] == "Not a valid user id")
            {
                responses.remove("400");
            }
        }
        *op = secured_op;
    }
    item
}

/// A nullable string of `min..=max` bytes (OpenAPI counts characters; the server counts UTF-8 bytes).
fn text(min: usize, max: usize, description: &str) -> Value {
    json!({
        "type": ["string", "null"],
        "minLength": min,
        "maxLength": max,
        "description": format!("{description} {min} to {max} bytes (UTF-8). `null` counts as absent."),
    })
}

/// The time zones quiet hours accept: every name of the server's time zone database.
fn time_zones() -> Vec<String> {
    jiff::tz::db().available().map(|name| name.as_str().to_owned()).collect()
}

fn schemas() -> Value {
    json!({
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["code", "message"],
                    "properties": {
                        "code": {
                            "type": "string",
                            "description": "Machine-readable: bad_request, too_large, unauthorized, forbidden, \
                                            not_found, not_configured, rate_limited, try_again_later, \
                                            unavailable, method_not_allowed",
                        },
                        "message": { "type": "string", "description": "What is wrong, for people" },
                        "retry_after_ms": { "type": "integer", "minimum": 0, "description": "Retry after this long" },
                    },
                },
            },
        },
        "UnsupportedVersion": {
            "type": "object",
            "description": "The refusal of a WebSocket request that offers no supported subprotocol (protocol §1)",
            "required": ["code", "message", "supported"],
            "properties": {
                "code": { "const": "unsupported_version" },
                "message": { "type": "string" },
                "supported": { "type": "array", "items": { "type": "string" } },
            },
        },
        "UserId": { "type": "string", "pattern": USER_PATTERN },
        "Topic": { "type": "string", "pattern": ID_PATTERN },
        "NotificationId": { "type": "string", "pattern": ID_PATTERN },
        "Publish": {
            "type": "object",
            "description": "A notification to publish (protocol §9.1). At least one of `users` and `topics` must \
                            name a recipient. Unknown members are ignored.",
            "required": ["type"],
            "properties": {
                "users": {
                    "type": ["array", "null"],
                    "items": schema_ref("UserId"),
                    "maxItems": MAX_RECIPIENTS,
                    "description": "Users whose `user:<id>` stream receives it (users and topics together: at most \
                                    10,000, else 413)",
                },
                "topics": {
                    "type": ["array", "null"],
                    "items": schema_ref("Topic"),
                    "maxItems": MAX_RECIPIENTS,
                    "description": "Topics whose `topic:<name>` stream receives it",
                },
                "type": { "type": "string", "minLength": 1, "maxLength": MAX_NAME_BYTES,
                          "description": "Application-defined kind, 1 to 128 bytes" },
                "priority": { "enum": ["critical", "important", "informational", null], "default": "important" },
                "persistence": { "enum": ["ephemeral", "bufferable", "persistent", null], "default": "bufferable" },
                "title": text(0, MAX_TITLE_BYTES, "Short text,"),
                "body": text(0, MAX_BODY_BYTES, "Text,"),
                "data": { "description": format!("Any JSON value for the app, at most {MAX_DATA_BYTES} bytes encoded") },
                "group": text(1, MAX_NAME_BYTES, "Batching key for digests,"),
                "id": {
                    "type": ["string", "null"],
                    "pattern": ID_PATTERN,
                    "description": "Idempotency key and notification id; a ULID is generated when absent",
                },
                "push": {
                    "type": ["object", "null"],
                    "description": "Push delivery of this notification (protocol §9.1, §12)",
                    "properties": {
                        "after_ms": {
                            "type": ["integer", "null"],
                            "minimum": 0,
                            "maximum": MAX_PUSH_AFTER.as_millis() as u64,
                            "description": "How long an important notification waits for an ack before it is pushed \
                                            to a user with a live session (the server's default when absent)",
                        },
                        "bypass_quiet_hours": { "type": ["boolean", "null"], "description": "Push even in quiet hours" },
                        "digest": { "type": ["boolean", "null"], "description": "`false`: no digest push" },
                    },
                },
            },
            "anyOf": [
                { "required": ["users"], "properties": { "users": { "type": "array", "minItems": 1 } } },
                { "required": ["topics"], "properties": { "topics": { "type": "array", "minItems": 1 } } },
            ],
        },
        "Delivery": {
            "type": "object",
            "required": ["stream", "epoch"],
            "properties": {
                "stream": { "type": "string" },
                "epoch": { "type": "string" },
                "offset": { "type": "integer", "minimum": 1, "description": "Absent for ephemeral notifications" },
            },
        },
        "Receipt": {
            "type": "object",
            "required": ["id", "duplicate", "deliveries"],
            "properties": {
                "id": { "type": "string" },
                "duplicate": { "type": "boolean", "description": "The id was accepted before; nothing was delivered now" },
                "deliveries": { "type": "array", "items": schema_ref("Delivery") },
            },
        },
        "DevicePresence": {
            "type": "object",
            "required": ["device", "session", "connected_at"],
            "properties": {
                "device": { "type": "string" },
                "session": { "type": "string" },
                "connected_at": { "type": "integer", "description": "ms since the Unix epoch" },
            },
        },
        "UserPresence": {
            "type": "object",
            "required": ["user", "devices"],
            "properties": {
                "user": { "type": "string" },
                "devices": { "type": "array", "items": schema_ref("DevicePresence") },
            },
        },
        "Rule": {
            "type": "object",
            "description": "One preference: a notification `type` or a `topic` (exact, or a prefix ending in `*`; \
                            `*` alone: every one), a channel, on or off. Deny wins.",
            "required": ["channel", "enabled"],
            "properties": {
                "type": { "type": "string", "minLength": 1, "maxLength": MAX_NAME_BYTES, "pattern": "^[^*]*\\*?$" },
                "topic": { "type": "string", "minLength": 1, "maxLength": MAX_NAME_BYTES, "pattern": "^[^*]*\\*?$" },
                "channel": { "enum": ["socket", "push"] },
                "enabled": { "type": "boolean" },
            },
            "oneOf": [{ "required": ["type"] }, { "required": ["topic"] }],
        },
        "PreferencesChange": {
            "type": "object",
            "required": ["rules"],
            "properties": { "rules": { "type": "array", "items": schema_ref("Rule"), "maxItems": MAX_RULES } },
        },
        "Preferences": {
            "type": "object",
            "required": ["rules", "version", "updated_at"],
            "properties": {
                "rules": { "type": "array", "items": schema_ref("Rule") },
                "version": { "type": "integer", "minimum": 0, "description": "Changes so far (0: never set)" },
                "updated_at": { "type": "integer", "minimum": 0, "description": "ms since the Unix epoch (0: never)" },
            },
        },
        "QuietHours": {
            "type": "object",
            "required": ["time_zone", "ranges"],
            "properties": {
                "time_zone": { "enum": time_zones(), "description": "An IANA time zone, e.g. Europe/Berlin" },
                "ranges": {
                    "type": "array",
                    "maxItems": 28,
                    "items": {
                        "type": "object",
                        "required": ["day", "start", "end"],
                        "properties": {
                            "day": {
                                "type": "string",
                                "pattern": "^([Mm][Oo][Nn]|[Tt][Uu][Ee]|[Ww][Ee][Dd]|[Tt][Hh][Uu]|[Ff][Rr][Ii]|[Ss][Aa][Tt]|[Ss][Uu][Nn])$",
                                "description": "mon … sun (any case)",
                            },
                            "start": {
                                "type": "string",
                                "pattern": "^([01]?[0-9]|2[0-3]):[0-5][0-9]$",
                                "description": "HH:MM; not the same as `end`",
                            },
                            "end": {
                                "type": "string",
                                "pattern": "^(([01]?[0-9]|2[0-3]):[0-5][0-9]|24:00)$",
                                "description": "HH:MM (24:00 allowed)",
                            },
                        },
                    },
                },
            },
        },
        "QuietHoursAnswer": {
            "type": "object",
            "required": ["quiet_hours", "version", "updated_at"],
            "properties": {
                "quiet_hours": { "oneOf": [schema_ref("QuietHours"), { "type": "null" }] },
                "version": { "type": "integer", "minimum": 0 },
                "updated_at": { "type": "integer", "minimum": 0 },
            },
        },
        "Envelope": {
            "type": "object",
            "description": "The notification envelope (protocol §3)",
            "required": ["id", "stream", "epoch", "type", "priority", "persistence", "created_at"],
            "properties": {
                "id": { "type": "string" },
                "stream": { "type": "string" },
                "offset": { "type": "integer", "minimum": 1 },
                "epoch": { "type": "string" },
                "type": { "type": "string" },
                "priority": { "enum": ["critical", "important", "informational"] },
                "persistence": { "enum": ["ephemeral", "bufferable", "persistent"] },
                "title": { "type": ["string", "null"] },
                "body": { "type": ["string", "null"] },
                "data": {},
                "group": { "type": ["string", "null"] },
                "created_at": { "type": "integer" },
            },
        },
        "InboxCounts": {
            "type": "object",
            "description": "A user's inbox counts (protocol §13.3)",
            "required": ["unseen", "unread", "total", "version", "head"],
            "properties": {
                "unseen": { "type": "integer", "minimum": 0 },
                "unread": { "type": "integer", "minimum": 0 },
                "total": { "type": "integer", "minimum": 0 },
                "version": { "type": "integer", "minimum": 0 },
                "head": { "type": "integer", "minimum": 0, "description": "The newest item's `seq`" },
            },
        },
        "InboxItem": {
            "type": "object",
            "description": "An inbox item (protocol §13.2): its state, and the notification while it is kept",
            "required": ["id", "seq", "v", "inserted_at"],
            "properties": {
                "id": { "type": "string" },
                "seq": { "type": "integer", "minimum": 0 },
                "v": { "type": "integer", "minimum": 0 },
                "inserted_at": { "type": "integer", "minimum": 0 },
                "seen_at": { "type": ["integer", "null"] },
                "read_at": { "type": ["integer", "null"] },
                "archived_at": { "type": ["integer", "null"] },
                "notification": schema_ref("Envelope"),
            },
        },
        "InboxChange": {
            "type": "object",
            "description": "The answer to a mark: the new counts, the items it changed, the ids the inbox does not \
                            hold, the mark-all recorded (or null), and whether the `op_id` was applied before",
            "required": ["counts", "items", "unknown", "mark", "duplicate"],
            "properties": {
                "counts": schema_ref("InboxCounts"),
                "items": { "type": "array", "items": schema_ref("InboxItem") },
                "unknown": { "type": "array", "items": { "type": "string" } },
                "mark": { "oneOf": [{ "type": "null" }, {
                    "type": "object",
                    "required": ["action", "up_to", "at", "version"],
                    "properties": {
                        "action": { "enum": ["read", "seen"] },
                        "up_to": { "type": "integer", "minimum": 0 },
                        "at": { "type": "integer", "minimum": 0 },
                        "version": { "type": "integer", "minimum": 0 },
                    },
                }] },
                "duplicate": { "type": "boolean" },
            },
        },
        "DeliveryEntry": {
            "type": "object",
            "required": ["user", "status", "at"],
            "properties": {
                "user": { "type": "string" },
                "device": { "type": "string" },
                "channel": { "enum": ["socket", "push"] },
                "status": { "enum": ["acked", "scheduled", "pushed", "suppressed", "cancelled", "failed"] },
                "reason": { "type": "string" },
                "provider": { "enum": ["apns", "fcm", "web_push"] },
                "form": { "enum": ["full", "lightweight", "summary"] },
                "due_at": { "type": "integer" },
                "at": { "type": "integer", "description": "ms since the Unix epoch" },
            },
        },
        "Check": {
            "type": "object",
            "required": ["ok"],
            "properties": {
                "ok": { "type": "boolean" },
                "error": { "type": "string", "description": "What is wrong (failed checks)" },
            },
            "additionalProperties": true,
        },
        "Readiness": {
            "type": "object",
            "required": ["status", "checks"],
            "properties": {
                "status": { "enum": ["ready", "not_ready", "shutting_down"] },
                "checks": {
                    "type": "object",
                    "description": "One member per check: store, push, and each configured dependency (redis, postgres)",
                    "additionalProperties": schema_ref("Check"),
                },
            },
        },
    })
}

fn operations() -> Value {
    let user_param = path_param("user", USER_PATTERN, "A user id");
    json!({
        "/v1/ws": {
            "get": {
                "operationId": "connectWebSocket",
                "tags": ["realtime"],
                "summary": "Open a WebSocket (protocol v1)",
                "description": format!("Upgrades to a WebSocket speaking protocol v1 (docs/protocol.md). The request \
                    must offer the subprotocol `{SUBPROTOCOL}` in `Sec-WebSocket-Protocol`. The client token is sent \
                    in the first frame (`auth`), not in the request."),
                "parameters": [
                    { "name": "Sec-WebSocket-Protocol", "in": "header", "required": false,
                      "schema": { "type": "string" }, "description": format!("Must include `{SUBPROTOCOL}`") },
                ],
                "responses": {
                    "101": { "description": "Switching to the WebSocket protocol" },
                    "400": {
                        "description": "No supported subprotocol offered, or not a valid WebSocket upgrade",
                        "content": json_content(json!({ "oneOf": [schema_ref("UnsupportedVersion"), schema_ref("Error")] })),
                    },
                    "426": error("The connection cannot be upgraded"),
                    "429": error_retry("Too many connections, or too many failed authentications, from this client address"),
                    "503": error_retry("The server is shutting down"),
                },
            },
        },
        "/v1/publish": {
            "post": secured(json!({
                "operationId": "publish",
                "tags": ["publishing"],
                "summary": "Publish a notification",
                "description": "Answered once the notification is committed to the store and queued to live \
                                subscribers (protocol §9.1).",
                "requestBody": { "required": true, "content": json_content(schema_ref("Publish")) },
                "responses": {
                    "202": response("Committed and delivered to live subscribers", schema_ref("Receipt")),
                    "400": error("The body is not a valid publish; the message names the member"),
                    "413": error("The body, or a member of it, is too large (byte limits, more than 10,000 recipients, \
                                  an encoded frame over 64 KiB)"),
                    "503": error_retry("The store could not commit it (nothing was stored), or the server is shutting down"),
                },
            }), "publish"),
        },
        "/v1/publish/batch": {
            "post": secured(json!({
                "operationId": "publishBatch",
                "tags": ["publishing"],
                "summary": "Publish up to 1,000 notifications",
                "description": "Each item is validated on its own; the valid ones are committed together, in order \
                                (protocol §9.2).",
                "requestBody": { "required": true, "content": json_content(json!({
                    "type": "object",
                    "required": ["notifications"],
                    "properties": {
                        "notifications": {
                            "type": "array",
                            "maxItems": MAX_BATCH,
                            "items": { "description": "A publish body (see Publish); an item that is not a valid one \
                                                        gets its own error in `results`" },
                        },
                    },
                })) },
                "responses": {
                    "200": response("One result per item, in order", json!({
                        "type": "object",
                        "required": ["results"],
                        "properties": {
                            "results": { "type": "array", "items": { "oneOf": [schema_ref("Receipt"), schema_ref("Error")] } },
                        },
                    })),
                    "400": error("The body is not `{\"notifications\":[…]}`"),
                    "413": error("More than 1,000 items, or the body is larger than the limit"),
                },
            }), "publish"),
        },
        "/v1/presence": {
            "get": secured(json!({
                "operationId": "listPresence",
                "tags": ["presence"],
                "summary": "Who is online",
                "responses": {
                    "200": response("Every user with a connected device", json!({
                        "type": "object",
                        "required": ["users"],
                        "properties": { "users": { "type": "array", "items": schema_ref("UserPresence") } },
                    })),
                    "503": error_retry("Presence cannot be read now (Redis does not answer)"),
                },
            }), "read"),
        },
        "/v1/presence/{user}": {
            "get": secured(json!({
                "operationId": "getUserPresence",
                "tags": ["presence"],
                "summary": "A user's connected devices",
                "parameters": [user_param.clone()],
                "responses": {
                    "200": response("The user's devices (empty when offline)", schema_ref("UserPresence")),
                    "400": error("Not a valid user id"),
                    "503": error_retry("Presence cannot be read now (Redis does not answer)"),
                },
            }), "read"),
        },
        "/v1/notifications/{id}/acks": {
            "get": secured(json!({
                "operationId": "getAcks",
                "tags": ["deliveries"],
                "summary": "Which devices acked a notification",
                "parameters": [path_param("id", ID_PATTERN, "A notification id")],
                "responses": {
                    "200": response("The acks, oldest first", json!({
                        "type": "object",
                        "required": ["id", "acks"],
                        "properties": {
                            "id": { "type": "string" },
                            "acks": { "type": "array", "items": {
                                "type": "object",
                                "required": ["user", "device", "at"],
                                "properties": {
                                    "user": { "type": "string" },
                                    "device": { "type": "string" },
                                    "at": { "type": "integer", "description": "ms since the Unix epoch" },
                                },
                            } },
                        },
                    })),
                    "400": error("Not a valid notification id"),
                    "503": error_retry("The store cannot be read now"),
                },
            }), "read"),
        },
        "/v1/users/{user}/devices": {
            "get": secured(json!({
                "operationId": "getUserDevices",
                "tags": ["operator"],
                "summary": "A user's devices with a push address",
                "description": "Push tokens are sensitive: this needs the operator scope.",
                "parameters": [user_param],
                "responses": {
                    "200": response("The devices and their push addresses", json!({
                        "type": "object",
                        "required": ["user", "devices"],
                        "properties": {
                            "user": { "type": "string" },
                            "devices": { "type": "array", "items": {
                                "type": "object",
                                "required": ["device", "push"],
                                "properties": {
                                    "device": { "type": "string" },
                                    "push": {
                                        "type": "object",
                                        "required": ["platform", "token", "registered_at"],
                                        "properties": {
                                            "platform": { "enum": ["apns", "apns_sandbox", "fcm", "web_push"] },
                                            "token": { "type": "string", "maxLength": MAX_PUSH_TOKEN_BYTES },
                                            "registered_at": { "type": "integer" },
                                        },
                                    },
                                },
                            } },
                        },
                    })),
                    "400": error("Not a valid user id"),
                    "503": error_retry("The store cannot be read now"),
                },
            }), "operator"),
        },
        "/v1/admin/drop": {
            "post": secured(json!({
                "operationId": "dropConnections",
                "tags": ["operator"],
                "summary": "Drop connections",
                "description": "Drops every connection, or one user's, with close code 4015 (the clients reconnect), in every \
                    process: with Redis, the other processes are asked over it and answer with their counts.",
                "requestBody": { "required": false, "content": json_content(json!({
                    "type": "object",
                    "properties": { "user": { "oneOf": [schema_ref("UserId"), { "type": "null" }] } },
                })) },
                "responses": {
                    "200": response("How many connections were asked to close, summed over the processes", json!({
                        "type": "object",
                        "required": ["dropped", "processes", "complete"],
                        "properties": {
                            "dropped": { "type": "integer", "minimum": 0 },
                            "processes": reach_processes(),
                            "complete": reach_complete(),
                        },
                    })),
                    "400": error("The body is not `{\"user\":\"…\"}`"),
                    "413": error("The body is too large"),
                },
            }), "operator"),
        },
        "/v1/admin/unsubscribe": {
            "post": secured(json!({
                "operationId": "unsubscribeConnections",
                "tags": ["operator"],
                "summary": "End subscriptions of a stream",
                "description": "Ends the subscription of `stream` of every connection (or of `user`'s) in every process: \
                    each client gets an `error` of code `forbidden` naming the stream (protocol §2.5), its SDK drops \
                    the stream and reports the subscription failed; it does not subscribe again by itself. \
                    Notifications already queued to a connection are still delivered. A token that allows the \
                    stream still lets the app subscribe again: to revoke access, also stop issuing it.",
                "requestBody": { "required": true, "content": json_content(json!({
                    "type": "object",
                    "required": ["stream"],
                    "properties": {
                        "stream": { "type": "string", "pattern": STREAM_PATTERN, "description": "`user:<id>` or `topic:<name>`" },
                        "user": { "oneOf": [schema_ref("UserId"), { "type": "null" }] },
                    },
                })) },
                "responses": {
                    "200": response("How many connections were asked to drop the stream, summed over the processes", json!({
                        "type": "object",
                        "required": ["unsubscribed", "processes", "complete"],
                        "properties": {
                            "unsubscribed": { "type": "integer", "minimum": 0 },
                            "processes": reach_processes(),
                            "complete": reach_complete(),
                        },
                    })),
                    "400": error("The body is not `{\"stream\":\"…\"}` with an optional `user`, or not a valid stream or user"),
                    "413": error("The body is too large"),
                },
            }), "operator"),
        },
        "/v1/push/vapid-public-key": {
            "get": {
                "operationId": "getVapidPublicKey",
                "tags": ["push"],
                "summary": "The VAPID public key browsers subscribe to Web Push with",
                "responses": {
                    "200": response("The key (base64url of the uncompressed P-256 point)", json!({
                        "type": "object",
                        "required": ["vapid_public_key"],
                        "properties": { "vapid_public_key": { "type": "string" } },
                    })),
                    "404": error("No key configured (code not_configured)"),
                },
            },
        },
        "/v1/demo/token": {
            "post": {
                "operationId": "issueDemoToken",
                "tags": ["demo"],
                "summary": "Issue a client token (demo mode only)",
                "description": "Served only by a server started with --demo; 404 otherwise.",
                "requestBody": { "required": true, "content": json_content(json!({
                    "type": "object",
                    "required": ["user"],
                    "properties": {
                        "user": schema_ref("UserId"),
                        "topics": {
                            "type": ["array", "null"],
                            "items": { "type": "string", "pattern": "^[A-Za-z0-9_.:-]{0,128}\\*?$" },
                            "description": "Topic names or prefixes ending in `*`",
                        },
                        "ttl_secs": { "type": ["integer", "null"], "minimum": 0, "description": "Clamped to 1 s … 7 days" },
                    },
                })) },
                "responses": {
                    "200": response("A signed token", json!({
                        "type": "object",
                        "required": ["token"],
                        "properties": { "token": { "type": "string" } },
                    })),
                    "400": error("Not a valid request; the message names the member"),
                    "404": error("Not in demo mode"),
                    "413": error("The body is too large"),
                },
            },
        },
        "/v1/openapi.json": {
            "get": {
                "operationId": "getOpenApi",
                "tags": ["operations"],
                "summary": "This document",
                "responses": { "200": response("The OpenAPI 3.1 document", json!({ "type": "object" })) },
            },
        },
        "/healthz": {
            "get": {
                "operationId": "getLiveness",
                "tags": ["operations"],
                "summary": "Liveness: the process serves HTTP",
                "responses": {
                    "200": response("Alive", json!({
                        "type": "object",
                        "required": ["status", "version", "uptime_secs"],
                        "properties": {
                            "status": { "const": "alive" },
                            "version": { "type": "string" },
                            "uptime_secs": { "type": "integer", "minimum": 0 },
                        },
                    })),
                },
            },
        },
        "/readyz": {
            "get": {
                "operationId": "getReadiness",
                "tags": ["operations"],
                "summary": "Readiness: the store commits, dependencies answer, push is not misconfigured",
                "responses": {
                    "200": response("Ready", schema_ref("Readiness")),
                    "503": response("Not ready, or shutting down: each failed check says what is wrong", schema_ref("Readiness")),
                },
            },
        },
        "/metrics": {
            "get": {
                "operationId": "getMetrics",
                "tags": ["operations"],
                "summary": "Prometheus metrics (text format 0.0.4)",
                "description": "Bounded labels only. Restrict who may read it at your proxy (deploy/nginx).",
                "responses": {
                    "200": {
                        "description": "The metrics",
                        "content": { "text/plain": { "schema": { "type": "string" } } },
                    },
                },
            },
        },
    })
}

/// The operations of push delivery (protocol §9.3–§9.6): deliveries, push status, preferences, quiet hours, and
/// the push handlers' fetch and acks.
fn push_operations() -> Value {
    let user_param = path_param("user", USER_PATTERN, "A user id");
    json!({
        "/v1/notifications/{id}/deliveries": {
            "get": secured(json!({
                "operationId": "getDeliveries",
                "tags": ["deliveries"],
                "summary": "What happened to a notification, per user and device",
                "description": "Acks and the push log, oldest first (protocol §9.3, §12.5).",
                "parameters": [path_param("id", ID_PATTERN, "A notification id")],
                "responses": {
                    "200": response("The entries, oldest first", json!({
                        "type": "object",
                        "required": ["id", "deliveries"],
                        "properties": {
                            "id": { "type": "string" },
                            "deliveries": { "type": "array", "items": schema_ref("DeliveryEntry") },
                        },
                    })),
                    "400": error("Not a valid notification id"),
                    "503": error_retry("The store cannot be read now"),
                },
            }), "read"),
        },
        "/v1/users/{user}/preferences": preferences_item(Some(&user_param)),
        "/v1/users/{user}/quiet-hours": quiet_hours_item(Some(&user_param)),
        "/v1/me/preferences": preferences_item(None),
        "/v1/me/quiet-hours": quiet_hours_item(None),
        "/v1/me/notifications/{id}": {
            "get": user_secured(json!({
                "operationId": "getMyNotification",
                "tags": ["push"],
                "summary": "A notification of the caller's stream",
                "description": "What an SDK fetches when a push carried only the lightweight form (protocol §9.6).",
                "parameters": [path_param("id", ID_PATTERN, "A notification id")],
                "responses": {
                    "200": response("The notification envelope", schema_ref("Envelope")),
                    "400": error("Not a valid notification id"),
                    "404": error("The caller's stream does not hold it (never sent to them, or no longer kept)"),
                    "503": error_retry("The store cannot be read now"),
                },
            })),
        },
        "/v1/me/acks": {
            "post": user_secured(json!({
                "operationId": "ackMyNotifications",
                "tags": ["push"],
                "summary": "Acks from a device without a socket (a push handler)",
                "description": "Recorded as the `ack` frame's acks are: they cancel the caller's pending pushes of \
                                those ids (protocol §9.6).",
                "requestBody": { "required": true, "content": json_content(json!({
                    "type": "object",
                    "required": ["device", "ids"],
                    "properties": {
                        "device": { "type": "string", "pattern": ID_PATTERN },
                        "ids": { "type": "array", "items": schema_ref("NotificationId"), "maxItems": MAX_IDS_PER_ACK },
                    },
                })) },
                "responses": {
                    "200": response("How many ids were acked", json!({
                        "type": "object",
                        "required": ["acked"],
                        "properties": { "acked": { "type": "integer", "minimum": 0 } },
                    })),
                    "400": error("Not `{\"device\":\"…\",\"ids\":[…]}`, a bad id, or too many ids"),
                    "413": error("The body is too large"),
                },
            })),
        },
        "/v1/push/status": {
            "get": secured(json!({
                "operationId": "getPushStatus",
                "tags": ["push"],
                "summary": "Each push provider's state",
                "description": "`stopped`: the configuration error that stopped a provider (fix it and restart); \
                                `deletions_paused`: devices were reported gone at a suspicious rate, so addresses \
                                are kept for a while (protocol §9.4.1).",
                "responses": {
                    "200": response("The providers", json!({
                        "type": "object",
                        "required": ["providers"],
                        "properties": { "providers": { "type": "array", "items": {
                            "type": "object",
                            "required": ["provider", "configured", "stopped", "deletions_paused"],
                            "properties": {
                                "provider": { "enum": ["web_push", "apns", "fcm"] },
                                "configured": { "type": "boolean" },
                                "stopped": { "type": ["string", "null"] },
                                "deletions_paused": { "type": "boolean" },
                            },
                        } } },
                    })),
                },
            }), "read"),
        },
    })
}

/// The operations of one user's inbox: `/v1/me/inbox…` (`user`: `None`) or `/v1/users/{user}/inbox…`.
fn inbox_operations(user: Option<&Value>) -> Vec<(String, Value)> {
    let (prefix, id) = match user {
        Some(_) => ("/v1/users/{user}/inbox", "User"),
        None => ("/v1/me/inbox", "My"),
    };
    let params = |more: Vec<Value>| -> Value { Value::Array(user.into_iter().cloned().chain(more).collect()) };
    let store_down = || error_retry("The store cannot be read or written now");
    let wrap = |op: Value, scope: &str| match user {
        Some(_) => secured(op, scope),
        None => user_secured(op),
    };
    let query = |name: &str, schema: Value, description: &str| json!({ "name": name, "in": "query", "required": false, "description": description, "schema": schema });
    let mark_body = json!({
        "type": "object",
        "required": ["action", "ids"],
        "properties": {
            "op_id": { "type": ["string", "null"], "pattern": "^([A-Za-z0-9_.:-]{1,128})?$",
                       "description": "Makes a retry harmless: an op id applied before is answered with \
                                       `duplicate: true`" },
            "action": { "enum": ["read", "unread", "seen", "unseen", "archive", "unarchive"] },
            "ids": { "type": "array", "items": schema_ref("NotificationId"), "minItems": 1,
                     "maxItems": MAX_IDS_PER_INBOX_MARK },
        },
    });
    let mark_all_body = json!({
        "type": "object",
        "required": ["action"],
        "properties": {
            "op_id": { "type": ["string", "null"], "pattern": "^([A-Za-z0-9_.:-]{1,128})?$" },
            "action": { "enum": ["read", "seen"] },
            "up_to": { "type": ["integer", "null"], "minimum": 0, "maximum": u64::MAX,
                       "description": "The newest `seq` it covers (default: the inbox's head)" },
        },
    });
    let topic_param = path_param("topic", ID_PATTERN, "A topic");
    let follow_answer = response(
        "Whether the inbox follows the topic now, and whether that changed",
        json!({
            "type": "object",
            "required": ["topic", "following", "changed"],
            "properties": {
                "topic": { "type": "string" },
                "following": { "type": "boolean" },
                "changed": { "type": "boolean" },
            },
        }),
    );
    let follow = |method: &str, verb: &str| {
        wrap(
            json!({
                "operationId": format!("{verb}{id}InboxTopic"),
                "tags": ["inbox"],
                "summary": format!("{} a topic in the inbox", if method == "put" { "Follow" } else { "Unfollow" }),
                "description": "Notifications of a followed topic become inbox items (protocol §13.6).",
                "parameters": params(vec![topic_param.clone()]),
                "responses": {
                    "200": follow_answer.clone(),
                    "400": error("Not a valid topic"),
                    "503": store_down(),
                },
            }),
            "operator",
        )
    };
    let mut follow_item = json!({ "put": follow("put", "follow"), "delete": follow("delete", "unfollow") });
    if user.is_none() {
        follow_item["put"]["responses"]["403"] = error("The token may not read this topic");
        follow_item["put"]["description"] = json!(format!(
            "{} Following a topic needs a token that may read it.",
            follow_item["put"]["description"].as_str().unwrap_or_default()
        ));
    }
    let mut operations = vec![
        (
            prefix.to_owned(),
            json!({ "get": wrap(json!({
            "operationId": format!("list{id}Inbox"),
            "tags": ["inbox"],
            "summary": "A page of the inbox, newest first",
            "description": "Items with their notifications and the counts (protocol §13.7); `next` is the `before` \
                            of the next page, or null at the end.",
            "parameters": params(vec![
                query("status", json!({ "enum": ["all", "unread", "read", "unseen", "seen"] }), "Default all"),
                query("archived", json!({ "enum": ["exclude", "include", "only"] }), "Default exclude"),
                query(
                    "type",
                    json!({ "type": "string", "minLength": 1, "maxLength": MAX_NAME_BYTES }),
                    "Only this notification type (1 to 128 bytes of UTF-8)",
                ),
                query("topic", json!({ "type": "string", "pattern": ID_PATTERN }), "Only this topic's items"),
                query("before", json!({ "type": "integer", "minimum": 0, "maximum": u64::MAX }),
                      "Items with a smaller `seq` (the previous page's `next`)"),
                query("limit", json!({ "type": "integer", "minimum": 1, "maximum": MAX_INBOX_PAGE }),
                      "Most items (default 50)"),
            ]),
            "responses": {
                "200": response("The page", json!({
                    "type": "object",
                    "required": ["items", "next", "counts"],
                    "properties": {
                        "items": { "type": "array", "items": schema_ref("InboxItem") },
                        "next": { "type": ["integer", "null"] },
                        "counts": schema_ref("InboxCounts"),
                    },
                })),
                "400": error("A bad filter, limit or query string (or user id)"),
                "503": store_down(),
            },
        }), "read") }),
        ),
        (
            format!("{prefix}/counts"),
            json!({ "get": wrap(json!({
            "operationId": format!("get{id}InboxCounts"),
            "tags": ["inbox"],
            "summary": "The inbox counts (for a badge)",
            "parameters": params(vec![]),
            "responses": {
                "200": response("The counts", json!({
                    "type": "object",
                    "required": ["counts"],
                    "properties": { "counts": schema_ref("InboxCounts") },
                })),
                "400": error("Not a valid user id"),
                "503": store_down(),
            },
        }), "read") }),
        ),
        (
            format!("{prefix}/mark"),
            json!({ "post": wrap(json!({
            "operationId": format!("mark{id}InboxItems"),
            "tags": ["inbox"],
            "summary": "Marks items read, unread, seen, unseen, archived or unarchived",
            "description": "Watching connections get the change as an `inbox` frame (protocol §13.4).",
            "parameters": params(vec![]),
            "requestBody": { "required": true, "content": json_content(mark_body) },
            "responses": {
                "200": response("The change", schema_ref("InboxChange")),
                "400": error("Not a mark body, a bad action, op id or id, or too many ids"),
                "413": error("The body is too large"),
                "503": store_down(),
            },
        }), "operator") }),
        ),
        (
            format!("{prefix}/mark-all"),
            json!({ "post": wrap(json!({
            "operationId": format!("markAll{id}Inbox"),
            "tags": ["inbox"],
            "summary": "Marks every item up to a `seq` read or seen",
            "parameters": params(vec![]),
            "requestBody": { "required": true, "content": json_content(mark_all_body) },
            "responses": {
                "200": response("The change", schema_ref("InboxChange")),
                "400": error("Not a mark-all body, a bad action or op id"),
                "413": error("The body is too large"),
                "503": store_down(),
            },
        }), "operator") }),
        ),
        (
            format!("{prefix}/topics"),
            json!({ "get": wrap(json!({
            "operationId": format!("get{id}InboxTopics"),
            "tags": ["inbox"],
            "summary": "The topics the inbox follows",
            "parameters": params(vec![]),
            "responses": {
                "200": response("The topics", json!({
                    "type": "object",
                    "required": ["topics"],
                    "properties": { "topics": { "type": "array", "items": { "type": "string" } } },
                })),
                "400": error("Not a valid user id"),
                "503": store_down(),
            },
        }), "read") }),
        ),
        (format!("{prefix}/topics/{{topic}}"), follow_item),
    ];
    if user.is_none() {
        // Without a user id in the path, reading the counts and the topics has nothing to refuse.
        for (path, item) in &mut operations {
            if (path.ends_with("/counts") || path.ends_with("/topics"))
                && let Some(responses) = item.pointer_mut("/get/responses").and_then(Value::as_object_mut)
            {
                responses.remove("400");
            }
        }
    }
    operations
}

/// The stream history, SSE tickets and the SSE stream.
fn stream_operations() -> Vec<(String, Value)> {
    let query = |name: &str, schema: Value, description: &str| json!({ "name": name, "in": "query", "required": false, "description": description, "schema": schema });
    vec![
        (
            "/v1/streams/{stream}/history".to_owned(),
            json!({ "get": user_secured(json!({
            "operationId": "getStreamHistory",
            "tags": ["history"],
            "summary": "A page of a stream's stored notifications, oldest first",
            "description": "Authorized like a subscribe (the user's own stream, or a topic the token may read); \
                            `epoch` and `after` (given together) continue after a position, `next` is the \
                            following page's `after` or null (protocol §14).",
            "parameters": [
                path_param(
                    "stream",
                    STREAM_PATTERN,
                    "`user:<id>` or `topic:<name>`",
                ),
                query("epoch", json!({ "type": "string", "pattern": ID_PATTERN }), "The stream's epoch"),
                query("after", json!({ "type": "integer", "minimum": 0, "maximum": u64::MAX }),
                      "Notifications after this offset"),
                query("limit", json!({ "type": "integer", "minimum": 1, "maximum": MAX_HISTORY_PAGE }),
                      "Most notifications (default 100)"),
            ],
            "responses": {
                "200": response("The page", json!({
                    "type": "object",
                    "required": ["stream", "epoch", "head", "oldest", "items", "next"],
                    "properties": {
                        "stream": { "type": "string" },
                        "epoch": { "type": "string" },
                        "head": { "type": "integer", "minimum": 0 },
                        "oldest": { "type": "integer", "minimum": 0 },
                        "items": { "type": "array", "items": schema_ref("Envelope") },
                        "next": { "type": ["integer", "null"] },
                    },
                })),
                "400": error("Not a stream name, a bad position, limit or query string"),
                "403": error("The token may not read this stream"),
                "503": error_retry("The store cannot be read now"),
            },
        })) }),
        ),
        (
            "/v1/sse/tickets".to_owned(),
            json!({ "post": user_secured(json!({
            "operationId": "createSseTicket",
            "tags": ["realtime"],
            "summary": "A single-use ticket for `GET /v1/sse?ticket=…`",
            "description": "For `EventSource`, which cannot send the token in a header: the ticket opens one \
                            stream once, within `expires_in_ms` (protocol §15).",
            "responses": {
                "200": response("The ticket", json!({
                    "type": "object",
                    "required": ["ticket", "expires_in_ms"],
                    "properties": {
                        "ticket": { "type": "string" },
                        "expires_in_ms": { "type": "integer", "minimum": 0 },
                    },
                })),
            },
        })) }),
        ),
        (
            "/v1/sse".to_owned(),
            json!({ "get": {
            "operationId": "openSseStream",
            "tags": ["realtime"],
            "summary": "The realtime stream as Server-Sent Events",
            "description": "The user's stream, the requested topics and (with `inbox=1`) inbox changes as events, \
                            resumed from `Last-Event-ID` or `cursor` (protocol §15). Authenticated by \
                            `Authorization: Bearer <the user's token>` or `ticket`; failed authentications are \
                            throttled per client address as for WebSocket connections.",
            "parameters": [
                query("ticket", json!({ "type": "string" }), "A ticket from `POST /v1/sse/tickets`"),
                query("cursor", json!({ "type": "string" }), "A resume token (the id of the last event)"),
                query("topics", json!({ "type": "string" }), "Topics besides the user's stream, comma-separated"),
                query("device", json!({ "type": "string", "pattern": ID_PATTERN }), "The device id"),
                query("inbox", json!({ "enum": ["0", "1", "true", "false"] }), "Also send inbox changes"),
                { "name": "Last-Event-ID", "in": "header", "required": false,
                  "description": "The id of the last event received (set by `EventSource` on reconnects)",
                  "schema": { "type": "string" } },
            ],
            "responses": {
                "200": { "description": "The event stream (until the client or the server ends it)",
                         "content": { "text/event-stream": { "schema": { "type": "string" } } } },
                "400": error("A resume token not made by this server, a bad device id or topic"),
                "401": {
                    "description": "Missing, bad or expired token, or a bad, expired or used ticket",
                    "headers": { "WWW-Authenticate": { "schema": { "type": "string" } } },
                    "content": json_content(schema_ref("Error")),
                },
                "429": error_retry("Too many failed authentications or new connections from this client address"),
                "503": error_retry("The server is shutting down or at its connection limit"),
            },
        } }),
        ),
    ]
}

/// The document.
pub(crate) fn document() -> Value {
    let mut paths = operations();
    if let (Some(all), Value::Object(push)) = (paths.as_object_mut(), push_operations()) {
        all.extend(push);
    }
    let user_param = path_param("user", USER_PATTERN, "A user id");
    if let Some(all) = paths.as_object_mut() {
        all.extend(inbox_operations(None));
        all.extend(inbox_operations(Some(&user_param)));
        all.extend(stream_operations());
    }
    // Every response carries the request's id.
    if let Some(paths) = paths.as_object_mut() {
        for item in paths.values_mut() {
            for op in item.as_object_mut().into_iter().flat_map(|m| m.values_mut()) {
                for r in op["responses"].as_object_mut().into_iter().flat_map(|m| m.values_mut()) {
                    r["headers"]["X-Request-Id"] = json!({ "$ref": "#/components/headers/RequestId" });
                }
            }
        }
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Tidings server HTTP API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Publishing, presence, acks, operator actions and operations endpoints of the Tidings \
                            reference server. The realtime protocol itself (WebSocket frames) is in docs/protocol.md. \
                            Errors are `{\"error\":{\"code\":…,\"message\":…}}`.",
            "license": { "name": "Apache-2.0", "identifier": "Apache-2.0" },
        },
        "servers": [{ "url": "/" }],
        "tags": [
            { "name": "realtime" }, { "name": "publishing" }, { "name": "presence" }, { "name": "deliveries" },
            { "name": "operator" }, { "name": "push" }, { "name": "preferences" }, { "name": "inbox" },
            { "name": "history" }, { "name": "demo" }, { "name": "operations" },
        ],
        "paths": paths,
        "components": {
            "schemas": schemas(),
            "securitySchemes": {
                "userToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "`Authorization: Bearer <the user's token>`: the client token of `auth` (HS256 \
                                    JWT), for `/v1/me/…`.",
                },
                "apiKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "`Authorization: Bearer <api key>`. Keys have scopes: publish, read (presence and \
                                    deliveries), operator (--api-keys-file); --api-key is a key with every scope.",
                },
            },
            "headers": {
                "RetryAfter": { "description": "Seconds to wait before retrying", "schema": { "type": "integer", "minimum": 0 } },
                "RequestId": {
                    "description": "The request's id: the client's `X-Request-Id` when valid, else a new one. Logs of \
                                    the request and of its deliveries carry it.",
                    "schema": { "type": "string" },
                },
            },
        },
    })
}
