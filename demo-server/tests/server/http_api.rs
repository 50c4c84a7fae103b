//! The HTTP API (protocol §9): publishing, validation, idempotency, batches, health and demo tokens.

use crate::common;

use common::*;
use serde_json::json;
use tidings_server::{DEMO_API_KEY, ServerConfig, TEST_API_KEY};

#[tokio::test]
async fn publish_replies_202_with_the_documented_shape() {
    let server = start_default().await;
    let (mut alice, _) = Client::login(&server, "alice", "d-1", &[]).await;
    alice.subscribe_one(1, json!({"stream":"user:alice"})).await;
    let (status, reply) = post(
        &server,
        "/v1/publish",
        json!({"users":["alice","bob"],"topics":["news"],"type":"comment.created","priority":"critical",
               "persistence":"persistent","title":"Bob commented","body":"Looks great!","data":{"post":"p-981"},
               "group":"comments:p-981","id":null}),
    )
    .await;
    assert_eq!(status, 202, "{reply}");
    let object = reply.as_object().unwrap();
    let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["deliveries", "duplicate", "id"]);
    let streams: Vec<&str> =
        reply["deliveries"].as_array().unwrap().iter().map(|d| d["stream"].as_str().unwrap()).collect();
    assert_eq!(streams, ["user:alice", "user:bob", "topic:news"]);
    assert!(reply["deliveries"].as_array().unwrap().iter().all(|d| d["offset"] == 1 && d["epoch"].is_string()));

    let n = alice.recv().await;
    assert_eq!(n["id"], reply["id"]);
    assert_eq!(n["priority"], "critical");
    assert_eq!(n["persistence"], "persistent");
    assert_eq!(n["data"], json!({"post":"p-981"}));
    assert_eq!(n["group"], "comments:p-981");
    assert_eq!(n["epoch"], reply["deliveries"][0]["epoch"]);
    server.shutdown().await;
}

#[tokio::test]
async fn notification_frames_start_with_the_op_member() {
    let server = start_default().await;
    let (mut alice, _) = Client::login(&server, "alice", "d-1", &[]).await;
    alice.subscribe_one(1, json!({"stream":"user:alice"})).await;
    publish(&server, json!({"users":["alice"],"type":"t"})).await;
    let message =
        tokio::time::timeout(PATIENCE, futures_util::StreamExt::next(&mut alice.ws)).await.unwrap().unwrap().unwrap();
    let text = message.into_text().unwrap();
    assert!(text.starts_with(r#"{"op":"notification","#), "{text}");
    let decoded = tidings_core::protocol::decode_server_frame(&text).unwrap();
    assert!(matches!(decoded, tidings_core::protocol::ServerFrame::Notification(_)));
    server.shutdown().await;
}

#[tokio::test]
async fn a_repeated_id_is_acknowledged_as_duplicate_and_not_delivered_again() {
    let server = start_default().await;
    let (mut alice, _) = Client::login(&server, "alice", "d-1", &[]).await;
    alice.subscribe_one(1, json!({"stream":"user:alice"})).await;
    let body = json!({"users":["alice"],"type":"order.shipped","id":"order-42-shipped"});
    let first = publish(&server, body.clone()).await;
    assert_eq!((first["id"].as_str(), first["duplicate"].as_bool()), (Some("order-42-shipped"), Some(false)));
    let second = publish(&server, body).await;
    assert_eq!(second["duplicate"], true);
    assert_eq!(second["id"], "order-42-shipped");
    assert_eq!(second["deliveries"], first["deliveries"], "the original deliveries are reported");
    let frames = alice.sync().await;
    assert_eq!(offsets(&frames), [1], "delivered once");
    assert_eq!(frames[0]["id"], "order-42-shipped");
    let stats = server.stats();
    assert_eq!((stats.notifications_published, stats.duplicates), (1, 1));
    server.shutdown().await;
}

#[tokio::test]
async fn invalid_bodies_get_400_naming_the_field() {
    let server = start_default().await;
    let cases = [
        (json!({"users":["alice","bob","not valid"],"type":"t"}), "users[2]"),
        (json!({"topics":["ok","bad/topic"],"type":"t"}), "topics[1]"),
        (json!({"users":["alice"]}), "type"),
        (json!({"type":"t"}), "users, topics"),
        (json!({"users":["alice"],"type":"t","priority":"urgent"}), "priority"),
        (json!({"users":["alice"],"type":"t","persistence":"forever"}), "persistence"),
        (json!({"users":"alice","type":"t"}), "users"),
        (json!({"users":["alice"],"type":"t","id":"with space"}), "id"),
        (json!({"users":["alice"],"type":"t","group":""}), "group"),
    ];
    for (body, field) in cases {
        let (status, reply) = post(&server, "/v1/publish", body.clone()).await;
        assert_eq!(status, 400, "{body} → {reply}");
        assert_eq!(reply["error"]["code"], "bad_request");
        let message = reply["error"]["message"].as_str().unwrap();
        assert!(message.starts_with(&format!("{field}:")), "{body}: {message}");
    }
    let (status, reply) = post_raw(&server, "/v1/publish", Some(TEST_API_KEY), "{not json".into()).await;
    assert_eq!((status, reply["error"]["code"].as_str()), (400, Some("bad_request")));
    assert_eq!(server.stats().notifications_published, 0);
    server.shutdown().await;
}

#[tokio::test]
async fn publishing_needs_the_api_key() {
    let server = start_default().await;
    let body = json!({"users":["alice"],"type":"t"}).to_string();
    for key in [None, Some("wrong-key")] {
        let (status, reply) = post_raw(&server, "/v1/publish", key, body.clone()).await;
        assert_eq!(status, 401, "{key:?}");
        assert_eq!(reply["error"]["code"], "unauthorized");
        let (status, _) = post_raw(&server, "/v1/publish/batch", key, body.clone()).await;
        assert_eq!(status, 401);
    }
    let response = http().get(format!("{}/v1/presence", server.http_url())).send().await.unwrap();
    assert_eq!(response.status(), 401);
    let response = http().get(format!("{}/v1/notifications/x/acks", server.http_url())).send().await.unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(server.stats().notifications_published, 0);
    server.shutdown().await;
}

#[tokio::test]
async fn oversized_content_gets_413() {
    let mut config = ServerConfig::for_tests();
    config.max_body_bytes = 100_000;
    let server = start(config).await;
    let cases = [
        (json!({"users":["alice"],"type":"t","title":"x".repeat(257)}), "title"),
        (json!({"users":["alice"],"type":"t","body":"x".repeat(4097)}), "body"),
        (json!({"users":["alice"],"type":"t","data":{"blob":"x".repeat(33_000)}}), "data"),
    ];
    for (body, field) in cases {
        let (status, reply) = post(&server, "/v1/publish", body).await;
        assert_eq!(status, 413, "{reply}");
        assert_eq!(reply["error"]["code"], "too_large");
        assert!(reply["error"]["message"].as_str().unwrap().starts_with(field), "{reply}");
    }
    let huge = json!({"users":["alice"],"type":"t","data":"x".repeat(200_000)});
    let (status, reply) = post(&server, "/v1/publish", huge).await;
    assert_eq!(status, 413, "a body over the limit: {reply}");
    server.shutdown().await;
}

#[tokio::test]
async fn a_batch_reports_each_item() {
    let server = start_default().await;
    let (status, reply) = post(
        &server,
        "/v1/publish/batch",
        json!({"notifications":[
            {"users":["alice"],"type":"a"},
            {"users":["bad user"],"type":"b"},
            {"topics":["news"],"type":"c","id":"batch-1"},
            {"topics":["news"],"type":"c","id":"batch-1"}
        ]}),
    )
    .await;
    assert_eq!(status, 200, "{reply}");
    let results = reply["results"].as_array().unwrap();
    assert_eq!(results.len(), 4);
    assert_eq!(results[0]["deliveries"][0]["offset"], 1);
    assert_eq!(results[1]["error"]["code"], "bad_request");
    assert!(results[1]["error"]["message"].as_str().unwrap().starts_with("users[0]"));
    assert_eq!(results[2]["id"], "batch-1");
    assert_eq!(results[3]["duplicate"], true);

    let too_many: Vec<_> = (0..1001).map(|_| json!({"users":["alice"],"type":"t"})).collect();
    let (status, _) = post(&server, "/v1/publish/batch", json!({ "notifications": too_many })).await;
    assert_eq!(status, 413);
    server.shutdown().await;
}

#[tokio::test]
async fn healthz_is_open_and_unknown_paths_are_404() {
    let server = start_default().await;
    let response = http().get(format!("{}/healthz", server.http_url())).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["status"], "alive", "{body}");
    let (status, _) = post(&server, "/v1/demo/token", json!({"user":"alice"})).await;
    assert_eq!(status, 404, "demo tokens only exist in demo mode");
    let (status, reply) = get(&server, "/v1/nope").await;
    assert_eq!((status, reply["error"]["code"].as_str()), (404, Some("not_found")));
    server.shutdown().await;
}

#[tokio::test]
async fn demo_mode_issues_tokens_and_publishes_on_its_own() {
    let mut config = ServerConfig::for_tests();
    config.demo = true;
    config.api_key = DEMO_API_KEY.into();
    config.demo_publish_interval = std::time::Duration::from_millis(50);
    let server = start(config).await;
    let (status, reply) = post(&server, "/v1/demo/token", json!({"user":"alice","topics":["news"]})).await;
    assert_eq!(status, 200, "{reply}");
    let token = reply["token"].as_str().unwrap();
    let mut client = Client::connect(&server).await;
    client.auth(token, "demo-device").await;
    assert_eq!(client.recv().await["op"], "welcome");
    let replies = client.subscribe(1, json!([{"stream":"user:alice"},{"stream":"topic:news"}])).await;
    assert!(replies.iter().all(|r| r["op"] == "subscribed"), "{replies:?}");
    // The demo publisher runs: notifications arrive without anyone publishing.
    let n = client.recv_skipping_heartbeats().await;
    assert_eq!(n["op"], "notification");
    let (status, _) = post(&server, "/v1/demo/token", json!({"user":"not valid"})).await;
    assert_eq!(status, 400);
    server.shutdown().await;
}

/// A page on another origin (a Vite dev server on :5173) gets a demo token: the preflight is answered (it got
/// `405` before) and the answer, errors included, is readable by any origin. Outside demo mode: `404` for both.
#[tokio::test]
async fn demo_tokens_are_readable_from_other_origins() {
    let mut config = ServerConfig::for_tests();
    config.demo = true;
    config.demo_publisher = false;
    let server = start(config).await;
    let url = format!("{}/v1/demo/token", server.http_url());
    let preflight = http()
        .request(reqwest::Method::OPTIONS, &url)
        .header("origin", "http://localhost:5173")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type")
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.status(), 204);
    let headers = preflight.headers();
    assert_eq!(headers["access-control-allow-origin"], "*");
    assert!(headers["access-control-allow-methods"].to_str().unwrap().contains("POST"));
    assert!(headers["access-control-allow-headers"].to_str().unwrap().contains("content-type"));
    for (body, status) in [(r#"{"user":"ada","topics":["news"]}"#, 200), (r#"{"user":"not valid"}"#, 400)] {
        let reply = http()
            .post(&url)
            .header("origin", "http://localhost:5173")
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status(), status);
        assert_eq!(reply.headers()["access-control-allow-origin"], "*", "{body}");
    }
    server.shutdown().await;

    let server = start_default().await;
    let url = format!("{}/v1/demo/token", server.http_url());
    let preflight = http().request(reqwest::Method::OPTIONS, &url).send().await.unwrap();
    assert_eq!(preflight.status(), 404);
    server.shutdown().await;
}

/// `--no-demo-publisher`: demo mode without the publisher — a subscriber of everything the demo writes to gets
/// nothing in a second (the publisher, at 50 ms, would have sent about twenty), and then exactly what is published.
#[tokio::test]
async fn demo_mode_without_its_publisher_sends_only_what_is_published() {
    let mut config = ServerConfig::for_tests();
    config.demo = true;
    config.demo_publisher = false;
    config.demo_publish_interval = std::time::Duration::from_millis(50);
    let server = start(config).await;
    let (status, reply) = post(&server, "/v1/demo/token", json!({"user":"alice","topics":["news"]})).await;
    assert_eq!(status, 200, "{reply}");
    let mut client = Client::connect(&server).await;
    client.auth(reply["token"].as_str().unwrap(), "quiet-device").await;
    assert_eq!(client.recv().await["op"], "welcome");
    let replies = client.subscribe(1, json!([{"stream":"user:alice"},{"stream":"topic:news"}])).await;
    assert!(replies.iter().all(|r| r["op"] == "subscribed"), "{replies:?}");
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    publish(&server, json!({"users":["alice"],"type":"hello","title":"only this"})).await;
    let n = client.recv_skipping_heartbeats().await;
    assert_eq!((n["op"].as_str(), n["title"].as_str()), (Some("notification"), Some("only this")), "{n}");
    server.shutdown().await;
}

#[tokio::test]
async fn a_web_root_serves_static_files_and_api_routes_still_win() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("index.html"), "<h1>demo</h1>").unwrap();
    std::fs::write(dir.path().join("tidings_bg.wasm"), b"\0asm\x01\0\0\0").unwrap();
    let mut config = ServerConfig::for_tests();
    config.web_root = Some(dir.path().to_path_buf());
    let server = common::start(config).await;
    let http = common::http();
    let page = http.get(format!("{}/", server.http_url())).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert_eq!(page.text().await.unwrap(), "<h1>demo</h1>");
    let wasm = http.get(format!("{}/tidings_bg.wasm", server.http_url())).send().await.unwrap();
    assert_eq!(wasm.headers()["content-type"], "application/wasm", "streaming compilation needs the wasm MIME type");
    let health = http.get(format!("{}/healthz", server.http_url())).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let missing = http.get(format!("{}/nope.js", server.http_url())).send().await.unwrap();
    assert_eq!(missing.status(), 404);
}

#[tokio::test]
async fn the_vapid_public_key_is_served_to_any_origin_without_the_api_key() {
    let unconfigured = start_default().await;
    let (status, reply) = get(&unconfigured, "/v1/push/vapid-public-key").await;
    assert_eq!((status, reply["error"]["code"].as_str()), (404, Some("not_configured")), "{reply}");
    assert!(reply["error"]["message"].as_str().unwrap().contains("--vapid-public-key"), "{reply}");
    unconfigured.shutdown().await;

    let mut config = ServerConfig::for_tests();
    config.vapid_public_key = Some(VAPID_KEY.into());
    let server = start(config).await;
    // No API key: service workers and pages read it.
    let response = http().get(format!("{}/v1/push/vapid-public-key", server.http_url())).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["access-control-allow-origin"], "*");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body, json!({"vapid_public_key": VAPID_KEY}));
    server.shutdown().await;
}
