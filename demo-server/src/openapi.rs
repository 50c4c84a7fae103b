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
    MAX_BODY_BYTES, MAX_DATA_BYTES, MAX_NAME_BYTES, MAX_PUSH_TOKEN_BYTES, MAX_TITLE_BYTES, SUBPROTOCOL,
};

use crate::publish::{MAX_BATCH, MAX_RECIPIENTS};

/// `[A-Za-z0-9_.:-]{1,128}`: notification ids, device ids, topic names.
const ID_PATTERN: &str = "^[A-Za-z0-9_.:-]{1,128}$";
/// `[A-Za-z0-9_.@-]{1,128}`: user ids.
const USER_PATTERN: &str = "^[A-Za-z0-9_.@-]{1,128}$";

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

/// A nullable string of `min..=max` bytes (OpenAPI counts characters; the server counts UTF-8 bytes).
fn text(min: usize, max: usize, description: &str) -> Value {
    json!({
        "type": ["string", "null"],
        "minLength": min,
        "maxLength": max,
        "description": format!("{description} {min} to {max} bytes (UTF-8). `null` counts as absent."),
    })
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
                    "503": error("The store cannot be read now"),
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
                    "503": error("The store cannot be read now"),
                },
            }), "operator"),
        },
        "/v1/admin/drop": {
            "post": secured(json!({
                "operationId": "dropConnections",
                "tags": ["operator"],
                "summary": "Drop connections",
                "description": "Drops every connection, or one user's, with close code 4015 (the clients reconnect).",
                "requestBody": { "required": false, "content": json_content(json!({
                    "type": "object",
                    "properties": { "user": { "oneOf": [schema_ref("UserId"), { "type": "null" }] } },
                })) },
                "responses": {
                    "200": response("How many connections were asked to close", json!({
                        "type": "object",
                        "required": ["dropped"],
                        "properties": { "dropped": { "type": "integer", "minimum": 0 } },
                    })),
                    "400": error("The body is not `{\"user\":\"…\"}`"),
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

/// The document.
pub(crate) fn document() -> Value {
    let mut paths = operations();
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
            { "name": "operator" }, { "name": "push" }, { "name": "demo" }, { "name": "operations" },
        ],
        "paths": paths,
        "components": {
            "schemas": schemas(),
            "securitySchemes": {
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
