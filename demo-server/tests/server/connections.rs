//! Connection behaviour: bad input, limits, heartbeats, session replacement, operator drops, presence, acks and
//! shutdown (protocol §1, §2.7, §2.8, §4.4, §4.5, §6, §9.3, §9.4).

use crate::common;

use std::time::Duration;

use common::*;
use futures_util::SinkExt;
use serde_json::json;
use tidings_server::{PublishRequest, ServerConfig};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn malformed_json_closes_only_that_connection() {
    let server = start_default().await;
    let (mut bystander, _) = Client::login(&server, "bob", "d-1", &[]).await;
    bystander.subscribe_one(1, json!({"stream":"user:bob"})).await;
    let (mut client, _) = Client::login(&server, "alice", "d-1", &[]).await;
    client.send_text("{\"op\":\"subscribe\",").await;
    let closed = client.closed().await;
    assert_eq!((closed.error_code(), closed.code), ("protocol_error", Some(4000)));
    server.publisher().publish(PublishRequest::new("t").user("bob")).await.unwrap();
    let frame = bystander.recv().await;
    assert_eq!((frame["op"].as_str(), frame["offset"].as_u64()), (Some("notification"), Some(1)));
    assert_eq!(server.stats().protocol_errors, 1);
    server.shutdown().await;
}

#[tokio::test]
async fn an_unknown_op_is_a_protocol_error() {
    let server = start_default().await;
    let (mut client, _) = Client::login(&server, "alice", "d-1", &[]).await;
    client.send(json!({"op":"launch_rockets"})).await;
    let closed = client.closed().await;
    assert_eq!((closed.error_code(), closed.code), ("protocol_error", Some(4000)));
    server.shutdown().await;
}

#[tokio::test]
async fn a_binary_message_is_a_protocol_error() {
    let server = start_default().await;
    let (mut client, _) = Client::login(&server, "alice", "d-1", &[]).await;
    client.ws.send(Message::binary(vec![1, 2, 3])).await.unwrap();
    let closed = client.closed().await;
    assert_eq!((closed.error_code(), closed.code), ("protocol_error", Some(4000)));
    server.shutdown().await;
}

#[tokio::test]
async fn unknown_members_are_ignored() {
    let server = start_default().await;
    let (mut client, _) = Client::login(&server, "alice", "d-1", &[]).await;
    client.send(json!({"op":"heartbeat","echo":true,"future":{"x":1}})).await;
    assert_eq!(client.recv().await, json!({"op":"heartbeat"}));
    server.shutdown().await;
}

#[tokio::test]
async fn an_oversized_frame_closes_with_4009() {
    let server = start_default().await;
    let (mut bystander, _) = Client::login(&server, "bob", "d-1", &[]).await;
    let (mut client, _) = Client::login(&server, "alice", "d-1", &[]).await;
    let big = json!({"op":"ack","ids":[ "x".repeat(20_000) ]}).to_string();
    client.send_text(&big).await;
    let closed = client.closed().await;
    assert_eq!(closed.error_code(), "frame_too_large");
    assert_eq!(closed.code, Some(4009));
    assert!(bystander.sync().await.is_empty(), "other connections are unaffected");
    server.shutdown().await;
}

#[tokio::test]
async fn a_frame_at_the_limit_is_accepted() {
    let server = start_default().await;
    let (mut client, _) = Client::login(&server, "alice", "d-1", &[]).await;
    let prefix = r#"{"op":"heartbeat","echo":true,"pad":""#;
    let padding = "p".repeat(16_384 - prefix.len() - 2);
    let frame = format!("{prefix}{padding}\"}}");
    assert_eq!(frame.len(), 16_384);
    client.send_text(&frame).await;
    assert_eq!(client.recv().await, json!({"op":"heartbeat"}));
    server.shutdown().await;
}

#[tokio::test]
async fn the_server_sends_heartbeats_when_idle_and_closes_silent_clients() {
    let mut config = ServerConfig::for_tests();
    config.heartbeat_interval = Duration::from_millis(150);
    let server = start(config).await;
    let (mut client, welcome) = Client::login(&server, "alice", "d-1", &[]).await;
    assert_eq!(welcome["heartbeat_ms"], 150);
    // The client stays silent: first a server heartbeat, then 4010 after 2 × heartbeat_ms.
    let closed = client.closed().await;
    assert!(closed.frames.iter().any(|f| *f == json!({"op":"heartbeat"})), "{closed:?}");
    assert_eq!((closed.error_code(), closed.code), ("heartbeat_timeout", Some(4010)));
    server.shutdown().await;
}

#[tokio::test]
async fn client_heartbeats_keep_the_connection_alive() {
    let mut config = ServerConfig::for_tests();
    config.heartbeat_interval = Duration::from_millis(100);
    let server = start(config).await;
    let (mut client, _) = Client::login(&server, "alice", "d-1", &[]).await;
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(80)).await;
        client.send(json!({"op":"heartbeat"})).await;
    }
    // 480 ms > 2 × 100 ms: still open because the client kept talking.
    assert!(client.sync().await.iter().all(|f| f["op"] == "heartbeat"));
    server.shutdown().await;
}

#[tokio::test]
async fn the_same_device_connecting_again_replaces_the_older_session() {
    let server = start_default().await;
    let (mut old, old_welcome) = Client::login(&server, "alice", "phone", &[]).await;
    let (mut new, new_welcome) = Client::login(&server, "alice", "phone", &[]).await;
    assert_ne!(old_welcome["session"], new_welcome["session"]);
    let closed = old.closed().await;
    assert_eq!((closed.error_code(), closed.code), ("session_replaced", Some(4011)));
    new.subscribe_one(1, json!({"stream":"user:alice"})).await;
    eventually("only the new session is present", || async {
        let (_, presence) = get(&server, "/v1/presence/alice").await;
        presence["devices"].as_array().unwrap().len() == 1
            && presence["devices"][0]["session"] == new_welcome["session"]
    })
    .await;
    server.shutdown().await;
}

#[tokio::test]
async fn an_operator_can_drop_one_user_or_everyone() {
    let server = start_default().await;
    let (mut alice, _) = Client::login(&server, "alice", "d-1", &[]).await;
    let (mut bob, _) = Client::login(&server, "bob", "d-1", &[]).await;
    let mut anonymous = Client::connect(&server).await;

    let (status, reply) = post(&server, "/v1/admin/drop", json!({"user":"alice"})).await;
    assert_eq!((status, reply), (200, json!({"dropped":1,"processes":1,"complete":true})));
    let closed = alice.closed().await;
    assert_eq!((closed.error_code(), closed.code), ("dropped", Some(4015)));
    assert!(bob.sync().await.is_empty(), "bob stays connected");

    let (status, reply) = post_raw(&server, "/v1/admin/drop", Some(tidings_server::TEST_API_KEY), String::new()).await;
    assert_eq!((status, reply), (200, json!({"dropped":2,"processes":1,"complete":true})));
    assert_eq!(bob.closed().await.code, Some(4015));
    assert_eq!(anonymous.closed().await.code, Some(4015));

    let (status, _) = post_raw(&server, "/v1/admin/drop", None, String::new()).await;
    assert_eq!(status, 401);
    server.shutdown().await;
}

#[tokio::test]
async fn presence_reflects_connects_and_disconnects() {
    let server = start_default().await;
    let (status, presence) = get(&server, "/v1/presence").await;
    assert_eq!((status, presence), (200, json!({"users":[]})));
    let (phone, phone_welcome) = Client::login(&server, "alice", "phone", &[]).await;
    let (_laptop, _) = Client::login(&server, "alice", "laptop", &[]).await;
    let (_bob, _) = Client::login(&server, "bob", "d-1", &[]).await;

    let (_, presence) = get(&server, "/v1/presence").await;
    let users = presence["users"].as_array().unwrap();
    assert_eq!(users.len(), 2);
    assert_eq!(users[0]["user"], "alice");
    let devices = users[0]["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 2);
    assert_eq!(devices[0]["device"], "phone");
    assert_eq!(devices[0]["session"], phone_welcome["session"]);
    assert!(devices[0]["connected_at"].as_u64().unwrap() > 1_700_000_000_000);
    assert_eq!(users[1]["user"], "bob");

    drop(phone);
    eventually("the phone leaves presence", || async {
        let (_, alice) = get(&server, "/v1/presence/alice").await;
        alice["devices"].as_array().unwrap().len() == 1 && alice["devices"][0]["device"] == "laptop"
    })
    .await;
    let (status, nobody) = get(&server, "/v1/presence/carol").await;
    assert_eq!((status, nobody), (200, json!({"user":"carol","devices":[]})));
    assert_eq!(server.presence().len(), 2);
    server.shutdown().await;
}

#[tokio::test]
async fn acks_are_recorded_per_device_and_listed() {
    let server = start_default().await;
    let (mut phone, _) = Client::login(&server, "alice", "phone", &[]).await;
    let (mut laptop, _) = Client::login(&server, "alice", "laptop", &[]).await;
    let receipt = server.publisher().publish(PublishRequest::new("t").user("alice")).await.unwrap();
    phone.send(json!({"op":"ack","ids":[receipt.id, "unknown-id"]})).await;
    phone.send(json!({"op":"ack","ids":[receipt.id]})).await;
    laptop.send(json!({"op":"ack","ids":[receipt.id]})).await;
    assert!(phone.sync().await.is_empty(), "acks have no reply");
    assert!(laptop.sync().await.is_empty());

    let (status, listed) = get(&server, &format!("/v1/notifications/{}/acks", receipt.id)).await;
    assert_eq!(status, 200);
    assert_eq!(listed["id"], receipt.id.as_str());
    let acks = listed["acks"].as_array().unwrap();
    // The two devices' acks travel on two connections, so which one commits first is not defined (on PostgreSQL
    // they commit in concurrent transactions): one record per device, in any order.
    let mut devices: Vec<&str> = acks.iter().map(|a| a["device"].as_str().unwrap()).collect();
    devices.sort_unstable();
    assert_eq!(devices, ["laptop", "phone"], "one record per device");
    assert!(acks.iter().all(|a| a["user"] == "alice" && a["at"].as_u64().unwrap() > 1_700_000_000_000));
    let (_, none) = get(&server, "/v1/notifications/never-published/acks").await;
    assert_eq!(none, json!({"id":"never-published","acks":[]}));
    assert_eq!(server.stats().acks, 4);

    // Too many ids in one ack: a request-scoped error, the connection stays.
    let ids: Vec<String> = (0..257).map(|i| format!("n{i}")).collect();
    phone.send(json!({"op":"ack","ids":ids})).await;
    let reply = phone.recv().await;
    assert_eq!((reply["op"].as_str(), reply["code"].as_str()), (Some("error"), Some("bad_request")));
    assert!(phone.sync().await.is_empty());
    server.shutdown().await;
}

#[tokio::test]
async fn too_many_frames_per_second_close_with_4008() {
    let mut config = ServerConfig::for_tests();
    config.rate_limit_frames_per_sec = 10;
    config.rate_limit_seconds = 1;
    let server = start(config).await;
    let (mut client, _) = Client::login(&server, "alice", "d-1", &[]).await;
    for _ in 0..20 {
        client.send(json!({"op":"heartbeat"})).await;
    }
    let closed = client.closed().await;
    assert_eq!((closed.error_code(), closed.code), ("rate_limited", Some(4008)));
    assert!(closed.error()["retry_after_ms"].as_u64().is_some());
    server.shutdown().await;
}

#[tokio::test]
async fn connections_beyond_the_limit_are_told_to_try_again_later() {
    let mut config = ServerConfig::for_tests();
    config.max_connections = Some(1);
    let server = start(config).await;
    let (mut first, _) = Client::login(&server, "alice", "d-1", &[]).await;
    let mut second = Client::connect(&server).await;
    let closed = second.closed().await;
    assert_eq!((closed.error_code(), closed.code), ("try_again_later", Some(4013)));
    assert_eq!(closed.error()["retry_after_ms"], 5000);
    assert!(first.sync().await.is_empty());
    server.shutdown().await;
}

#[tokio::test]
async fn graceful_shutdown_sends_4012_to_every_client() {
    let server = start_default().await;
    let (mut alice, _) = Client::login(&server, "alice", "d-1", &[]).await;
    let mut unauthenticated = Client::connect(&server).await;
    let url = server.ws_url();
    let shutdown = tokio::spawn(server.shutdown());
    let closed = alice.closed().await;
    assert_eq!((closed.error_code(), closed.code), ("server_shutdown", Some(4012)));
    assert_eq!(unauthenticated.closed().await.code, Some(4012));
    tokio::time::timeout(PATIENCE, shutdown).await.expect("shutdown completes").unwrap();
    let refused = tokio_tungstenite::connect_async(url).await;
    assert!(refused.is_err(), "nothing listens after shutdown");
}

#[tokio::test]
async fn shutdown_cuts_clients_that_never_answer_after_the_grace_period() {
    let mut config = ServerConfig::for_tests();
    config.shutdown_grace = Duration::from_millis(300);
    config.close_linger = Duration::from_secs(30);
    let server = start(config).await;
    // This client never reads, so it never answers the close frame; the linger would wait 30 s.
    let (_silent, _) = Client::login(&server, "alice", "d-1", &[]).await;
    tokio::time::timeout(Duration::from_secs(5), server.shutdown()).await.expect("shutdown is bounded by the grace");
}

#[tokio::test]
async fn register_push_stores_the_address_and_rejects_bad_tokens_without_closing() {
    let server = common::start_default().await;
    let (mut client, _welcome) = common::Client::login(&server, "alice", "dev-1", &[]).await;
    client.send(json!({"op":"register_push","ref":7,"platform":"fcm","token":""})).await;
    let error = client.recv_skipping_heartbeats().await;
    assert_eq!(
        (error["op"].as_str(), error["code"].as_str(), error["ref"].as_u64()),
        (Some("error"), Some("bad_request"), Some(7))
    );
    assert!(error["message"].as_str().unwrap().contains("token"), "{error}");
    // A Web Push subscription without its keys cannot be sent to: refused, saying what is missing.
    client.send(json!({"op":"register_push","ref":10,"platform":"web_push","token":"{\"endpoint\":\"https://push.example/x\"}"})).await;
    let error = client.recv_skipping_heartbeats().await;
    assert_eq!((error["code"].as_str(), error["ref"].as_u64()), (Some("bad_request"), Some(10)), "{error}");
    assert!(error["message"].as_str().unwrap().contains("has no `keys`"), "{error}");
    let subscription = json!({"endpoint": "https://push.example/x", "expirationTime": null, "keys": {
        "p256dh": common::VAPID_KEY,
        "auth": "AAECAwQFBgcICQoLDA0ODw"}});
    client.send(json!({"op":"register_push","ref":8,"platform":"web_push","token":subscription.to_string()})).await;
    let reply = client.recv_skipping_heartbeats().await;
    assert_eq!(reply, json!({"op":"push_registered","ref":8,"platform":"web_push"}));
    let (status, devices) = common::get(&server, "/v1/users/alice/devices").await;
    assert_eq!(status, 200);
    assert_eq!(devices["devices"][0]["device"], "dev-1");
    assert_eq!(devices["devices"][0]["push"]["platform"], "web_push");
    // An unknown platform is a request-scoped bad_request too (protocol §2.10, §6.3), not the end of the connection.
    client.send(json!({"op":"register_push","ref":9,"platform":"carrier_pigeon","token":"x"})).await;
    let error = client.recv_skipping_heartbeats().await;
    assert_eq!((error["code"].as_str(), error["ref"].as_u64()), (Some("bad_request"), Some(9)), "{error}");
    assert!(error["message"].as_str().unwrap().contains("carrier_pigeon"), "{error}");
    client.send(json!({"op":"heartbeat","echo":true})).await;
    assert_eq!(client.recv().await, json!({"op":"heartbeat"}), "the connection stays open");
}

#[tokio::test]
async fn frames_queued_before_a_drop_are_delivered_before_the_error() {
    let server = start_default().await;
    let (mut alice, _) = Client::login(&server, "alice", "d-1", &[]).await;
    alice.subscribe_one(1, json!({"stream":"user:alice"})).await;
    for _ in 0..3 {
        server.publisher().publish(PublishRequest::new("t").user("alice")).await.unwrap();
    }
    let (status, _) = post(&server, "/v1/admin/drop", json!({"user":"alice"})).await;
    assert_eq!(status, 200);
    let closed = alice.closed().await;
    assert_eq!(offsets(&closed.frames), [1, 2, 3]);
    assert_eq!(closed.frames.last().unwrap()["code"], "dropped", "the error comes last: {closed:?}");
    assert_eq!(closed.code, Some(4015));
    server.shutdown().await;
}
