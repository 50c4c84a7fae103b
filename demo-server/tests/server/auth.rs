//! Handshake and authentication (protocol §1, §2.1, §2.2, §4.1, §8).

use crate::common;

use std::time::Duration;

use common::*;
use serde_json::json;
use tidings_server::{ServerConfig, TEST_JWT_SECRET, TokenClaims, issue_token, sign_claims};
use tokio_tungstenite::tungstenite;

fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

#[tokio::test]
async fn a_valid_token_is_welcomed() {
    let server = start_default().await;
    let mut client = Client::connect(&server).await;
    assert_eq!(client.protocol.as_deref(), Some("tidings.v1"));
    client.auth(&issue_token(TEST_JWT_SECRET, "alice", &[], Some(Duration::from_secs(600))), "d-1").await;
    let welcome = client.recv().await;
    assert_eq!(welcome["op"], "welcome");
    assert_eq!(welcome["user"], "alice");
    assert_eq!(welcome["device"], "d-1");
    assert_eq!(welcome["heartbeat_ms"], 25_000);
    assert_eq!(welcome["max_frame_bytes"], 65_536);
    let session = welcome["session"].as_str().unwrap();
    assert!(session.starts_with("s-"), "{session}");
    let expires = welcome["token_expires_in_ms"].as_u64().unwrap();
    assert!(expires > 590_000 && expires <= 600_000, "{expires}");
    assert_eq!(server.stats().connections_open, 1);
    server.shutdown().await;
}

#[tokio::test]
async fn a_token_without_exp_has_no_expiry_in_welcome() {
    let server = start_default().await;
    let mut client = Client::connect(&server).await;
    client.auth(&issue_token(TEST_JWT_SECRET, "alice", &[], None), "d-1").await;
    let welcome = client.recv().await;
    assert_eq!(welcome["op"], "welcome");
    assert!(welcome.get("token_expires_in_ms").is_none(), "{welcome}");
    server.shutdown().await;
}

#[tokio::test]
async fn the_newest_supported_version_is_selected() {
    let server = start_default().await;
    let client = Client::connect_offering(&server, "tidings.v2, tidings.v1").await.unwrap();
    assert_eq!(client.protocol.as_deref(), Some("tidings.v1"));
    server.shutdown().await;
}

#[tokio::test]
async fn a_bad_signature_is_unauthorized() {
    let server = start_default().await;
    let mut client = Client::connect(&server).await;
    client.auth(&issue_token("some-other-secret", "alice", &[], None), "d-1").await;
    let closed = client.closed().await;
    assert_eq!(closed.error_code(), "unauthorized");
    assert!(closed.error()["message"].as_str().unwrap().contains("signature"), "{closed:?}");
    assert_eq!(closed.code, Some(4001));
    assert_eq!(server.stats().auth_failures, 1);
    server.shutdown().await;
}

#[tokio::test]
async fn a_malformed_token_is_unauthorized() {
    let server = start_default().await;
    let mut client = Client::connect(&server).await;
    client.auth("garbage", "d-1").await;
    let closed = client.closed().await;
    assert_eq!((closed.error_code(), closed.code), ("unauthorized", Some(4001)));
    server.shutdown().await;
}

#[tokio::test]
async fn an_expired_token_is_refused_with_4002() {
    let server = start_default().await;
    let mut client = Client::connect(&server).await;
    let claims = TokenClaims { sub: "alice".into(), exp: Some(now_secs() - 60), nbf: None, iat: None, topics: None };
    client.auth(&sign_claims(TEST_JWT_SECRET, &claims), "d-1").await;
    let closed = client.closed().await;
    assert_eq!((closed.error_code(), closed.code), ("token_expired", Some(4002)));
    server.shutdown().await;
}

#[tokio::test]
async fn a_token_that_is_not_yet_valid_is_unauthorized() {
    let server = start_default().await;
    let mut client = Client::connect(&server).await;
    let claims = TokenClaims { sub: "alice".into(), exp: None, nbf: Some(now_secs() + 600), iat: None, topics: None };
    client.auth(&sign_claims(TEST_JWT_SECRET, &claims), "d-1").await;
    let closed = client.closed().await;
    assert_eq!((closed.error_code(), closed.code), ("unauthorized", Some(4001)));
    server.shutdown().await;
}

#[tokio::test]
async fn a_token_expiring_during_the_session_closes_it_with_4002() {
    let server = start_default().await;
    let mut client = Client::connect(&server).await;
    let claims = TokenClaims { sub: "alice".into(), exp: Some(now_secs() + 2), nbf: None, iat: None, topics: None };
    client.auth(&sign_claims(TEST_JWT_SECRET, &claims), "d-1").await;
    assert_eq!(client.recv().await["op"], "welcome");
    let closed = client.closed().await;
    assert_eq!((closed.error_code(), closed.code), ("token_expired", Some(4002)));
    server.shutdown().await;
}

#[tokio::test]
async fn no_auth_within_the_timeout_closes_with_4005() {
    let mut config = ServerConfig::for_tests();
    config.auth_timeout = Duration::from_millis(200);
    let server = start(config).await;
    let mut client = Client::connect(&server).await;
    let closed = client.closed().await;
    assert_eq!((closed.error_code(), closed.code), ("auth_timeout", Some(4005)));
    server.shutdown().await;
}

#[tokio::test]
async fn an_upgrade_without_the_subprotocol_is_refused_with_400() {
    let server = start_default().await;
    for offered in [None, Some("chat, tidings.v2")] {
        let mut request = tungstenite::client::IntoClientRequest::into_client_request(server.ws_url()).unwrap();
        if let Some(offered) = offered {
            request.headers_mut().insert("Sec-WebSocket-Protocol", offered.parse().unwrap());
        }
        let error = tokio_tungstenite::connect_async(request).await.expect_err("the upgrade must be refused");
        let tungstenite::Error::Http(response) = error else { panic!("expected an HTTP error, got {error:?}") };
        assert_eq!(response.status(), 400);
        let body: serde_json::Value = serde_json::from_slice(response.body().as_deref().unwrap()).unwrap();
        assert_eq!(body["code"], "unsupported_version");
        assert_eq!(body["supported"], json!(["tidings.v1"]));
        assert!(body["message"].as_str().unwrap().contains("tidings.v1"));
    }
    server.shutdown().await;
}

#[tokio::test]
async fn a_frame_before_auth_is_a_protocol_error() {
    let server = start_default().await;
    let mut client = Client::connect(&server).await;
    client.send(json!({"op":"subscribe","ref":1,"streams":[{"stream":"user:alice"}]})).await;
    let closed = client.closed().await;
    assert_eq!((closed.error_code(), closed.code), ("protocol_error", Some(4000)));
    assert!(closed.error()["message"].as_str().unwrap().contains("first frame must be auth"));
    server.shutdown().await;
}

#[tokio::test]
async fn an_invalid_device_id_is_a_protocol_error() {
    let server = start_default().await;
    let mut client = Client::connect(&server).await;
    client.auth(&token("alice", &[]), "has spaces").await;
    let closed = client.closed().await;
    assert_eq!((closed.error_code(), closed.code), ("protocol_error", Some(4000)));
    server.shutdown().await;
}

#[tokio::test]
async fn a_second_auth_refreshes_the_token() {
    let server = start_default().await;
    let (mut client, _) = Client::login(&server, "alice", "d-1", &[]).await;
    client.auth(&issue_token(TEST_JWT_SECRET, "alice", &["news"], Some(Duration::from_secs(7200))), "d-1").await;
    let refreshed = client.recv().await;
    assert_eq!(refreshed["op"], "token_refreshed");
    assert!(refreshed["token_expires_in_ms"].as_u64().unwrap() > 7_000_000);
    // The new token's topics apply from now on.
    let reply = client.subscribe_one(1, json!({"stream":"topic:news"})).await;
    assert_eq!(reply["continuity"], "fresh");
    server.shutdown().await;
}

#[tokio::test]
async fn a_second_auth_for_another_user_is_a_protocol_error() {
    let server = start_default().await;
    let (mut client, _) = Client::login(&server, "alice", "d-1", &[]).await;
    client.auth(&token("mallory", &[]), "d-1").await;
    let closed = client.closed().await;
    assert_eq!((closed.error_code(), closed.code), ("protocol_error", Some(4000)));
    server.shutdown().await;
}

#[tokio::test]
async fn a_refresh_with_a_bad_token_is_unauthorized() {
    let server = start_default().await;
    let (mut client, _) = Client::login(&server, "alice", "d-1", &[]).await;
    client.auth(&issue_token("wrong", "alice", &[], None), "d-1").await;
    let closed = client.closed().await;
    assert_eq!((closed.error_code(), closed.code), ("unauthorized", Some(4001)));
    server.shutdown().await;
}
