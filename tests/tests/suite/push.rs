//! The native SDK's side of push delivery against a real server: preferences and quiet hours over the HTTP API
//! with the user's token, and the push path of a handler that runs no client (the NSE / FCM service path): the
//! lightweight push the server really sent is fetched in full and acked.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tidings_core::engine::{PushOutcome, PushPlatform};
use tidings_core::native::{ClientError, FileStore, PushServer, StaticToken, ingest_push_with_store};
use tidings_core::protocol::api::{ApiError, Channel, PreferenceRule, QuietHours, QuietRange, Selector};
use tidings_push_mocks::harness::PushHarness;
use tidings_tests::{TestClient, TestServer, WAIT};

fn rule(ty: &str, channel: Channel, enabled: bool) -> PreferenceRule {
    PreferenceRule { selector: Selector::Type(ty.into()), channel, enabled }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preferences_and_quiet_hours_are_read_and_set_with_the_users_token() {
    let server = TestServer::start().await;
    let alice = TestClient::connect(&server, "alice", &[]);
    let c = &alice.client;
    let p = c.preferences().await.unwrap();
    assert_eq!((p.rules.len(), p.version), (0, 0));
    let p = c.set_preferences(&[rule("comment.*", Channel::Push, false)]).await.unwrap();
    assert_eq!((p.rules.len(), p.version), (1, 1));
    let p =
        c.update_preferences(&[rule("like.*", Channel::Socket, false), rule("comment.*", Channel::Push, true)]).await;
    let p = p.unwrap();
    assert_eq!(p.rules, [rule("like.*", Channel::Socket, false), rule("comment.*", Channel::Push, true)]);
    // What the operator sees is what the user set.
    let seen = server.get("/v1/users/alice/preferences").await;
    assert_eq!(seen["version"], 2);
    let quiet = QuietHours {
        time_zone: "Europe/Berlin".into(),
        ranges: vec![QuietRange { day: "Mon".into(), start: "22:00".into(), end: "7:00".into() }],
    };
    let q = c.set_quiet_hours(Some(&quiet)).await.unwrap();
    let stored = q.quiet_hours.expect("set");
    assert_eq!((stored.ranges[0].day.as_str(), stored.ranges[0].end.as_str()), ("mon", "07:00"), "normal form");
    assert_eq!(c.quiet_hours().await.unwrap().quiet_hours, Some(stored));
    let bad = QuietHours { time_zone: "Mars/Olympus".into(), ranges: vec![] };
    match c.set_quiet_hours(Some(&bad)).await {
        Err(ClientError::Api(ApiError::Refused { status: 400, code, message })) => {
            assert_eq!(code, "bad_request");
            assert!(message.contains("Mars/Olympus"), "{message}");
        }
        other => panic!("refused with the reason, got {other:?}"),
    }
    assert_eq!(c.set_quiet_hours(None).await.unwrap().quiet_hours, None);
    alice.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_handler_without_a_client_fetches_a_lightweight_push_and_acks_it() {
    let keys = tempfile::tempdir().unwrap();
    let push = PushHarness::start(keys.path()).await.unwrap();
    let p = push.settings().clone();
    let server = TestServer::start_with(|c| {
        c.vapid_public_key = Some(p.vapid_public_key);
        c.push.vapid_private_key = Some(p.vapid_private_key);
        c.push.vapid_subject = Some(p.vapid_subject);
        c.push.apns_key_file = Some(p.apns_key_file);
        c.push.apns_key_id = Some(p.apns_key_id);
        c.push.apns_team_id = Some(p.apns_team_id);
        c.push.apns_topic = Some(p.apns_topic);
        c.push.apns_url = p.apns_url.clone();
        c.push.apns_sandbox_url = p.apns_url;
        c.push.push_ca_file = Some(p.push_ca_file);
    })
    .await;
    // The app: a client with a store file, which registers its APNs token and goes away.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tidings.json");
    let app = TestClient::connect_with(
        &server,
        StaticToken::new(server.token("alice", &[])),
        Some(Arc::new(FileStore::new(&path))),
        |_| {},
    );
    app.connected().await;
    let device = app.client.device_id();
    let token = "a1b2c3d4";
    app.client.register_push(PushPlatform::Apns, token).unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while server.get("/v1/users/alice/devices").await["devices"].as_array().unwrap().is_empty() {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    app.close().await;
    // Too large for APNs: sent lightweight.
    let reply = server.publish(json!({"users":["alice"],"type":"doc","title":"Big","body":"y".repeat(4000)})).await;
    let id = reply["id"].as_str().unwrap().to_owned();
    let payload = loop {
        if let Some(p) = push.pushes().into_iter().find(|p| p.target == token) {
            break p.payload;
        }
        assert!(tokio::time::Instant::now() < deadline, "never pushed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(payload.contains("tidings_fetch"), "{payload}");
    // The extension: no client, the app's store file, the server and a token.
    let store = FileStore::new(&path);
    let access =
        PushServer { url: server.ws_url(), token: server.token("alice", &[]), extra_root_certificates: vec![] };
    let outcome = ingest_push_with_store(&store, &payload, 1000, Some(&access)).await.unwrap();
    let PushOutcome::Show(n) = outcome else { panic!("shown in full, got {outcome:?}") };
    assert_eq!((n.id(), n.body().map(str::len)), (id.as_str(), Some(4000)));
    let acks = server.get(&format!("/v1/notifications/{id}/acks")).await;
    assert_eq!(acks["acks"][0]["device"], device.as_str(), "acked for the app's device: {acks}");
    // Again: a duplicate, without a second fetch. Without a server, a new lightweight push shows its title.
    assert_eq!(
        ingest_push_with_store(&store, &payload, 1000, Some(&access)).await.unwrap(),
        PushOutcome::Duplicate { id: id.clone() }
    );
    let other = r#"{"tidings_fetch":{"id":"zz1","title":"Later"}}"#;
    let outcome = ingest_push_with_store(&store, other, 1000, None).await.unwrap();
    assert!(
        matches!(outcome, PushOutcome::ShowTitle { ref title, .. } if title.as_deref() == Some("Later")),
        "{outcome:?}"
    );
}
