//! Operability: `/metrics`, `/healthz` and `/readyz`, the OpenAPI document, request ids, API key scopes, and the
//! abuse limits per client address (failed authentications, new connections).

use crate::common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};
use tidings_server::api_keys::{ApiKey, Scope};
use tidings_server::health::{CheckOutcome, ReadinessCheck};
use tidings_server::limits::{IpNet, Rate};
use tidings_server::store::BoxFuture;
use tidings_server::{RunningServer, ServerConfig, StoreConfig, Synchronous, TEST_API_KEY};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

#[tokio::test]
async fn metrics_count_connections_deliveries_replays_acks_and_requests_with_bounded_labels() {
    let server = start_default().await;
    let (mut alice, _) = Client::login(&server, "alice-7f3e", "phone-91ab", &[]).await;
    let subscribed = alice.subscribe_one(1, json!({"stream":"user:alice-7f3e"})).await;
    let epoch = subscribed["epoch"].as_str().unwrap().to_owned();
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(
            publish(&server, json!({"users":["alice-7f3e"],"type":"t","title":format!("n{i}")})).await["id"].clone(),
        );
    }
    for _ in 0..3 {
        assert_eq!(alice.recv_skipping_heartbeats().await["op"], "notification");
    }
    alice.send(json!({"op":"ack","ids":ids})).await;
    alice.sync().await;
    // A second device resumes from offset 1: two replayed; a third comes from an old epoch: a gap.
    let (mut tablet, _) = Client::login(&server, "alice-7f3e", "tablet-22", &[]).await;
    let resumed = tablet.subscribe_one(1, json!({"stream":"user:alice-7f3e","epoch":epoch,"offset":1})).await;
    assert_eq!(resumed["continuity"], "resumed");
    let (mut old, _) = Client::login(&server, "alice-7f3e", "laptop-3", &[]).await;
    let gap = old.subscribe_one(1, json!({"stream":"user:alice-7f3e","epoch":"zzzzzzzz","offset":9})).await;
    assert_eq!(gap["continuity"], "gap");
    // A refused token.
    let mut stranger = Client::connect(&server).await;
    stranger.auth("not-a-token", "d").await;
    assert_eq!(stranger.closed().await.error_code(), "unauthorized");

    let text = scrape(&server).await;
    if std::env::var_os("TIDINGS_PRINT_METRICS").is_some() {
        println!("{text}");
    }
    let ws = [("transport", "ws")];
    assert_eq!(sample(&text, "tidings_connections", &ws), Some(3.0), "{text}");
    assert_eq!(sample(&text, "tidings_connections_accepted_total", &ws), Some(4.0));
    assert_eq!(sample(&text, "tidings_deliveries_total", &[("transport", "ws"), ("outcome", "live")]), Some(3.0));
    assert_eq!(
        sample(&text, "tidings_deliveries_total", &[("transport", "ws"), ("outcome", "replayed")]),
        Some(5.0),
        "2 resumed, 3 after the gap"
    );
    assert_eq!(sample(&text, "tidings_subscribes_total", &[("continuity", "fresh")]), Some(1.0));
    assert_eq!(sample(&text, "tidings_subscribes_total", &[("continuity", "resumed")]), Some(1.0));
    assert_eq!(
        sample(&text, "tidings_subscribes_total", &[("continuity", "gap"), ("reason", "epoch_changed")]),
        Some(1.0)
    );
    assert_eq!(sample(&text, "tidings_replay_notifications_count", &[]), Some(3.0));
    assert_eq!(sample(&text, "tidings_replay_notifications_sum", &[]), Some(5.0), "2 resumed, 3 after the gap");
    assert_eq!(sample(&text, "tidings_replay_notifications_bucket", &[("le", "0")]), Some(1.0));
    assert_eq!(sample(&text, "tidings_acks_total", &ws), Some(3.0));
    assert_eq!(sample(&text, "tidings_delivery_latency_seconds_count", &ws), Some(3.0));
    assert_eq!(
        sample(&text, "tidings_delivery_latency_seconds_bucket", &[("transport", "ws"), ("le", "+Inf")]),
        Some(3.0)
    );
    assert_eq!(sample(&text, "tidings_published_total", &[("result", "accepted")]), Some(3.0));
    assert_eq!(sample(&text, "tidings_publish_seconds_count", &[]), Some(3.0));
    assert_eq!(
        sample(&text, "tidings_auth_failures_total", &[("transport", "ws"), ("reason", "unauthorized")]),
        Some(1.0)
    );
    assert_eq!(sample(&text, "tidings_disconnects_total", &[("transport", "ws"), ("code", "unauthorized")]), Some(1.0));
    assert_eq!(
        sample(
            &text,
            "tidings_http_requests_total",
            &[("route", "/v1/publish"), ("method", "POST"), ("status", "202")]
        ),
        Some(3.0)
    );
    assert_eq!(sample(&text, "tidings_ws_frames_received_total", &[]), Some(9.0), "4 + 2 + 2 + 1");
    assert_eq!(sample(&text, "tidings_build_info", &[("version", env!("CARGO_PKG_VERSION"))]), Some(1.0));
    // Only queues something feeds are exported: the memory store has no writer queue, and this server no push.
    assert_eq!(sample(&text, "tidings_queue_depth", &[]), None, "{text}");
    assert!(text.contains("# TYPE tidings_queue_depth gauge"));
    // Bounded labels only: no user, device, stream or notification id appears anywhere.
    for id in ["alice-7f3e", "phone-91ab", "tablet-22", "user:"] {
        assert!(!text.contains(id), "{id} leaked into the metrics");
    }
    for id in &ids {
        assert!(!text.contains(id.as_str().unwrap()));
    }
    // Every sample line is `name{labels} value` or `name value`.
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let (_, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line}"));
        assert!(value.parse::<f64>().is_ok() || value == "+Inf", "{line}");
    }
    server.shutdown().await;
}

#[tokio::test]
async fn the_sqlite_store_reports_commit_time_batch_size_and_its_write_queue() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::for_tests();
    config.store = StoreConfig::Sqlite { data_dir: dir.path().to_owned(), synchronous: Synchronous::Normal };
    let server = tidings_server::start(config).await.unwrap();
    let batch: Vec<Value> = (0..50).map(|i| json!({"users":["u"],"type":"t","title":format!("{i}")})).collect();
    let (status, _) = post(&server, "/v1/publish/batch", json!({ "notifications": batch })).await;
    assert_eq!(status, 200);
    let text = scrape(&server).await;
    let sqlite = [("store", "sqlite")];
    let commits = sample(&text, "tidings_store_commit_seconds_count", &sqlite).unwrap();
    assert!(commits >= 1.0, "{text}");
    assert_eq!(sample(&text, "tidings_store_batch_size_count", &sqlite), Some(commits));
    assert!(sample(&text, "tidings_store_commit_seconds_sum", &sqlite).unwrap() > 0.0);
    assert_eq!(sample(&text, "tidings_queue_depth", &[("queue", "store_writer")]), Some(0.0));
    assert_eq!(sample(&text, "tidings_queue_oldest_age_seconds", &[("queue", "store_writer")]), Some(0.0));
    // Readiness commits a probe through the same writer.
    let (status, body) = get(&server, "/readyz").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["checks"]["store"]["kind"], "sqlite");
    assert!(sample(&scrape(&server).await, "tidings_store_commit_seconds_count", &sqlite).unwrap() > commits);
    server.shutdown().await;
}

/// A dependency that can be switched off.
struct Switch(std::sync::atomic::AtomicBool);

impl ReadinessCheck for Switch {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn check(&self) -> BoxFuture<'_, CheckOutcome> {
        let up = self.0.load(std::sync::atomic::Ordering::SeqCst);
        Box::pin(async move {
            if up { CheckOutcome::ok(json!({"ping_ms": 1})) } else { CheckOutcome::failed("connection refused") }
        })
    }
}

#[tokio::test]
async fn readyz_says_what_is_wrong_and_healthz_stays_alive() {
    let server = start_default().await;
    let (status, body) = get(&server, "/readyz").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "ready");
    assert_eq!(body["checks"]["store"]["ok"], true);
    assert_eq!(body["checks"]["store"]["kind"], "memory");
    assert_eq!(body["checks"]["push"]["ok"], true);
    let redis = Arc::new(Switch(true.into()));
    server.add_readiness_check(redis.clone());
    let (status, body) = get(&server, "/readyz").await;
    assert_eq!((status, &body["checks"]["redis"]["ok"]), (200, &json!(true)), "{body}");
    redis.0.store(false, std::sync::atomic::Ordering::SeqCst);
    let (status, body) = get(&server, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["status"], "not_ready");
    assert_eq!(body["checks"]["redis"], json!({"ok": false, "error": "connection refused"}));
    assert_eq!(body["checks"]["store"]["ok"], true, "the others still pass");
    let (status, body) = get(&server, "/healthz").await;
    assert_eq!((status, &body["status"]), (200, &json!("alive")));
    server.shutdown().await;
}

#[tokio::test]
async fn a_push_provider_stopped_by_its_configuration_makes_the_server_not_ready() {
    use tidings_core::protocol::{Notification, NotificationFields, Persistence, Priority, PushPlatform};
    use tidings_push_mocks::{ApnsOptions, ApnsReply, ApnsTestKey, MockApns, test_ca};
    use tidings_server::push::{Delivery, PushAddress, PushMessage};

    let key = ApnsTestKey::generate();
    let mock = MockApns::start(ApnsOptions::for_key(&key, "dev.tidings.example")).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("key.p8"), &key.p8_pem).unwrap();
    std::fs::write(dir.path().join("ca.pem"), &test_ca().cert_pem).unwrap();
    let mut config = ServerConfig::for_tests();
    config.push.apns_key_file = Some(dir.path().join("key.p8"));
    config.push.apns_key_id = Some(key.key_id.clone());
    config.push.apns_team_id = Some(key.team_id.clone());
    config.push.apns_topic = Some("dev.tidings.example".into());
    config.push.apns_url = mock.url();
    config.push.push_ca_file = Some(dir.path().join("ca.pem"));
    let server = start(config).await;
    let (status, body) = get(&server, "/readyz").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["checks"]["push"]["providers"]["apns"]["stopped"], Value::Null);

    let dispatcher = server.push_dispatcher().expect("APNs is configured");
    let device = "5f3a9d00c91e5f3a9d00c91e5f3a9d00c91e5f3a9d00c91e5f3a9d00c91e0001";
    let address = PushAddress { platform: PushPlatform::Apns, token: device, registered_at: 1 };
    let n: Notification = NotificationFields {
        id: "n-1".into(),
        stream: "user:alice".into(),
        offset: Some(1),
        epoch: "e".into(),
        kind: "t".into(),
        priority: Priority::Important,
        persistence: Persistence::Bufferable,
        title: Some("hi".into()),
        body: None,
        data: None,
        group: None,
        created_at: 1,
    }
    .into();
    let message = PushMessage::notification(n);
    assert!(matches!(dispatcher.deliver(&address, &message).await, Delivery::Accepted { .. }));
    mock.script([ApnsReply::unregistered(u64::MAX / 2)]);
    assert!(matches!(dispatcher.deliver(&address, &message).await, Delivery::DeleteAddress { .. }));
    mock.script([ApnsReply::error(400, "BadTopic")]);
    assert!(matches!(dispatcher.deliver(&address, &message).await, Delivery::ProviderStopped { .. }));

    let (status, body) = get(&server, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    let error = body["checks"]["push"]["error"].as_str().unwrap();
    assert!(error.contains("apns") && error.contains("BadTopic"), "{error}");
    let text = scrape(&server).await;
    let apns = |result| sample(&text, "tidings_push_sends_total", &[("provider", "apns"), ("result", result)]);
    assert_eq!((apns("accepted"), apns("device_gone"), apns("provider_stopped")), (Some(1.0), Some(1.0), Some(1.0)));
    assert_eq!(sample(&text, "tidings_push_token_invalidations_total", &[("provider", "apns")]), Some(1.0));
    assert_eq!(sample(&text, "tidings_push_provider_stopped", &[("provider", "apns")]), Some(1.0));
    assert_eq!(sample(&text, "tidings_push_send_seconds_count", &[("provider", "apns")]), Some(2.0));
    server.shutdown().await;
}

#[tokio::test]
async fn the_openapi_document_is_served_and_wrong_methods_get_405() {
    let server = start_default().await;
    let (status, doc) = get(&server, "/v1/openapi.json").await;
    assert_eq!(status, 200);
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["paths"]["/v1/publish"]["post"].is_object());
    let response = http().delete(format!("{}/v1/publish", server.http_url())).send().await.unwrap();
    assert_eq!(response.status(), 405);
    assert_eq!(response.headers()["allow"], "POST");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "method_not_allowed");
    server.shutdown().await;
}

#[tokio::test]
async fn request_ids_are_taken_from_the_client_or_made_and_always_returned() {
    let server = start_default().await;
    let url = format!("{}/v1/publish", server.http_url());
    let send = |id: Option<&'static str>| {
        let mut request = http().post(&url).bearer_auth(TEST_API_KEY).json(&json!({"users":["a"],"type":"t"}));
        if let Some(id) = id {
            request = request.header("x-request-id", id);
        }
        request.send()
    };
    let response = send(Some("checkout-4711")).await.unwrap();
    assert_eq!(response.headers()["x-request-id"], "checkout-4711");
    let made = send(Some("has spaces & more")).await.unwrap();
    let made = made.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(made.len(), 26, "a ULID instead of an invalid id: {made}");
    let other = send(None).await.unwrap();
    assert_ne!(other.headers()["x-request-id"].to_str().unwrap(), made);
    let (status, _) = get(&server, "/nope").await;
    assert_eq!(status, 404);
    server.shutdown().await;
}

fn keyed_config() -> ServerConfig {
    let mut config = ServerConfig::for_tests();
    config.api_keys = vec![
        ApiKey::new("backend", &[Scope::Publish], "publish-key-0123456789"),
        ApiKey::new("dashboard", &[Scope::Read], "read-key-0123456789"),
        ApiKey::new("ops", &[Scope::Operator], "operator-key-0123456789"),
    ];
    config
}

async fn call(server: &RunningServer, method: &str, path: &str, key: &str) -> u16 {
    let url = format!("{}{path}", server.http_url());
    let request = match method {
        "GET" => http().get(url),
        _ => http().post(url).json(&json!({"users":["a"],"type":"t"})),
    };
    request.bearer_auth(key).send().await.unwrap().status().as_u16()
}

#[tokio::test]
async fn api_keys_have_scopes_and_the_single_key_keeps_every_scope() {
    let server = start(keyed_config()).await;
    let endpoints = [
        ("POST", "/v1/publish", 202, Scope::Publish),
        ("GET", "/v1/presence", 200, Scope::Read),
        ("GET", "/v1/notifications/n-1/acks", 200, Scope::Read),
        ("GET", "/v1/users/alice/devices", 200, Scope::Operator),
        ("POST", "/v1/admin/drop", 200, Scope::Operator),
        // The body `call` sends has no `stream`: past the scope check, a 400.
        ("POST", "/v1/admin/unsubscribe", 400, Scope::Operator),
    ];
    let keys = [
        (Scope::Publish, "publish-key-0123456789"),
        (Scope::Read, "read-key-0123456789"),
        (Scope::Operator, "operator-key-0123456789"),
    ];
    for (method, path, ok, needs) in endpoints {
        for (has, key) in keys {
            let expected = if has == needs { ok } else { 403 };
            assert_eq!(call(&server, method, path, key).await, expected, "{method} {path} with the {has:?} key");
        }
        // --api-key: every scope, as before scopes existed.
        assert_eq!(call(&server, method, path, TEST_API_KEY).await, ok, "{method} {path} with --api-key");
        assert_eq!(call(&server, method, path, "no-such-key-0123456789").await, 401);
    }
    // A publishing backend cannot drop sessions.
    let (mut alice, _) = Client::login(&server, "alice", "d-1", &[]).await;
    let response = http()
        .post(format!("{}/v1/admin/drop", server.http_url()))
        .bearer_auth("publish-key-0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["message"], "the API key backend does not have the operator scope");
    assert!(alice.sync().await.is_empty(), "still connected");
    let text = scrape(&server).await;
    assert_eq!(
        sample(&text, "tidings_auth_failures_total", &[("transport", "http"), ("reason", "api_key_scope")]),
        Some((2 * endpoints.len() + 1) as f64),
        "two wrong keys per endpoint, and the drop above"
    );
    server.shutdown().await;
}

/// A server behind a trusted proxy (the test's loopback), so that each test client can claim its own address with
/// `X-Forwarded-For`.
fn limited_config(auth: Rate, connections: Rate) -> ServerConfig {
    let mut config = ServerConfig::for_tests();
    config.auth_failure_limit = auth;
    config.connection_rate_limit = connections;
    config.trusted_proxies = vec![IpNet::parse("127.0.0.1").unwrap()];
    config
}

/// Opens a WebSocket as client address `from`: the client, or the refusal's status and `Retry-After`.
async fn connect_from(server: &RunningServer, from: &str) -> Result<Client, (u16, Option<String>)> {
    let mut request = server.ws_url().into_client_request().unwrap();
    request.headers_mut().insert("Sec-WebSocket-Protocol", HeaderValue::from_static("tidings.v1"));
    request.headers_mut().insert("X-Forwarded-For", HeaderValue::from_str(from).unwrap());
    match tokio_tungstenite::connect_async(request).await {
        Ok((ws, _)) => Ok(Client::from_stream(ws)),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => Err((
            response.status().as_u16(),
            response.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned()),
        )),
        Err(e) => panic!("connect: {e}"),
    }
}

#[tokio::test]
async fn failed_authentication_is_throttled_per_client_address() {
    // 10 failures at once, then 10 a minute (the defaults).
    let server = start(limited_config(Rate { burst: 10, per_minute: 10 }, Rate::UNLIMITED)).await;
    let attacker = "203.0.113.66";
    let started = Instant::now();
    let (mut answered, mut throttled_at_upgrade, mut throttled_at_auth) = (0, 0, 0);
    for i in 0..50 {
        match connect_from(&server, attacker).await {
            Ok(mut client) => {
                client.auth(&format!("bad-token-{i}"), "d").await;
                match client.closed().await.error_code() {
                    "unauthorized" => answered += 1,
                    "rate_limited" => throttled_at_auth += 1,
                    other => panic!("{other}"),
                }
            }
            Err((429, retry_after)) => {
                // The next failure is allowed 6 s after the burst was spent (10 a minute): less when this loop
                // has taken a while, as on a loaded machine.
                let wait: u64 = retry_after.as_deref().and_then(|r| r.parse().ok()).expect("a Retry-After in seconds");
                assert!((1..=6).contains(&wait), "the next failure is allowed within 6 s, not {wait} s");
                throttled_at_upgrade += 1;
            }
            Err(other) => panic!("{other:?}"),
        }
    }
    let elapsed = started.elapsed();
    println!(
        "50 bad tokens from one address in {} ms: {answered} answered (unauthorized), {throttled_at_upgrade} refused at \
         the upgrade (429), {throttled_at_auth} refused at auth (rate_limited)",
        elapsed.as_millis()
    );
    // Only the burst gets a verdict on its token, and one more per 6 s the loop took (the refill).
    let refilled = (elapsed.as_secs_f64() / 6.0).floor() as usize;
    assert!((10..=10 + refilled).contains(&answered), "{answered} answered in {elapsed:?}");
    assert_eq!(throttled_at_upgrade + throttled_at_auth, 50 - answered);
    // A valid token from the throttled address waits too; another address is not affected.
    assert_eq!(connect_from(&server, attacker).await.err().map(|e| e.0), Some(429));
    let mut neighbour = connect_from(&server, "198.51.100.7").await.unwrap();
    neighbour.auth(&token("bob", &[]), "d").await;
    assert_eq!(neighbour.recv().await["op"], "welcome");
    // Connections opened together cannot all try: the limit is checked again right before the token is.
    let other = "203.0.113.99";
    let mut opened = Vec::new();
    for _ in 0..20 {
        opened.push(connect_from(&server, other).await.unwrap());
    }
    let mut verdicts = HashMap::<String, usize>::new();
    for (i, client) in opened.iter_mut().enumerate() {
        client.auth(&format!("bad-{i}"), "d").await;
    }
    for client in &mut opened {
        *verdicts.entry(client.closed().await.error_code().to_owned()).or_default() += 1;
    }
    assert_eq!(verdicts.get("unauthorized"), Some(&10), "{verdicts:?}");
    assert_eq!(verdicts.get("rate_limited"), Some(&10), "{verdicts:?}");
    // The same budget covers API keys: 10 wrong keys, then 429 even for the right one.
    let url = format!("{}/v1/presence", server.http_url());
    let try_key = |key: &'static str, from: &'static str| {
        http().get(&url).bearer_auth(key).header("x-forwarded-for", from).send()
    };
    for _ in 0..10 {
        assert_eq!(try_key("wrong-key", "192.0.2.50").await.unwrap().status(), 401);
    }
    let refused = try_key(TEST_API_KEY, "192.0.2.50").await.unwrap();
    assert_eq!(refused.status(), 429);
    // 10 failures a minute: the next one is allowed 6 s after the first (5 when a second passed meanwhile).
    assert!(["5", "6"].contains(&refused.headers()["retry-after"].to_str().unwrap()), "{:?}", refused.headers());
    assert_eq!(try_key(TEST_API_KEY, "192.0.2.51").await.unwrap().status(), 200);
    // And user tokens at `/v1/me/…`: 10 bad ones, then 429 even for a good one.
    let me = format!("{}/v1/me/preferences", server.http_url());
    let try_token = |token: String| http().get(&me).bearer_auth(token).header("x-forwarded-for", "192.0.2.60").send();
    for i in 0..10 {
        let response = try_token(format!("bad-{i}")).await.unwrap();
        assert_eq!(response.status(), 401);
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
    }
    let refused = try_token(token("carol", &[])).await.unwrap();
    assert_eq!(refused.status(), 429);
    // 10 failures a minute: the next one is allowed 6 s after the first (5 when a second passed meanwhile).
    assert!(["5", "6"].contains(&refused.headers()["retry-after"].to_str().unwrap()), "{:?}", refused.headers());
    let text = scrape(&server).await;
    assert_eq!(
        sample(&text, "tidings_auth_failures_total", &[("transport", "http"), ("reason", "unauthorized")]),
        Some(10.0)
    );
    assert_eq!(sample(&text, "tidings_throttle_tracked_addresses", &[("limiter", "auth_failures")]), Some(4.0));
    assert!(
        sample(&text, "tidings_connections_refused_total", &[("transport", "ws"), ("reason", "auth_throttled")])
            .unwrap()
            >= 40.0
    );
    server.shutdown().await;
}

#[tokio::test]
async fn new_connections_are_rate_limited_per_client_address() {
    let server = start(limited_config(Rate::UNLIMITED, Rate { burst: 5, per_minute: 60 })).await;
    let mut open = Vec::new();
    for _ in 0..5 {
        open.push(connect_from(&server, "203.0.113.5").await.expect("within the burst"));
    }
    assert_eq!(connect_from(&server, "203.0.113.5").await.err(), Some((429, Some("1".to_owned()))));
    assert!(connect_from(&server, "203.0.113.6").await.is_ok(), "another address");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(connect_from(&server, "203.0.113.5").await.is_ok(), "one more a second later");
    let text = scrape(&server).await;
    assert_eq!(
        sample(&text, "tidings_connections_refused_total", &[("transport", "ws"), ("reason", "connection_rate")]),
        Some(1.0)
    );
    server.shutdown().await;
}
