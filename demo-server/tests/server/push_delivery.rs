//! Push delivery end to end: a real server (on the suite's store) with its senders pointed at the mock APNs, FCM
//! and Web Push services, raw protocol clients, and the HTTP API. Every Web Push body the server sent is decrypted
//! by Python's `http_ece` (an independent RFC 8291 implementation) and read back with the client's decoder.
//!
//! The scenarios of issue 14: connected and acked → no push; connected but never acked → push after
//! `push_after`; no session → push at once; critical → both paths; informational offline → one digest push; quiet
//! hours → held, then one summary; critical in quiet hours → queued until the end; opted out → nothing on that
//! channel; 410 → address deleted; 429 → retried after `Retry-After`; restart with pending pushes → each sent once.

use crate::common;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use common::{Client, PATIENCE, eventually, get, http, publish, token};
use serde_json::{Value, json};
use tidings_core::protocol::decode_push_payload;
use tidings_push_mocks::http_ece::{EncryptedBody, decrypt_all};
use tidings_push_mocks::{
    ApnsOptions, ApnsTestKey, BrowserKeys, FcmOptions, MockApns, MockFcm, MockWebPush, VapidTestKey, WebPushOptions,
    WebPushReply, test_ca,
};
use tidings_server::{RunningServer, ServerConfig, StoreConfig, Synchronous, TEST_API_KEY, WallClock};

const TOPIC: &str = "dev.tidings.example";
const PUSH_AFTER: Duration = Duration::from_millis(700);
const DIGEST_WINDOW: Duration = Duration::from_millis(1200);

/// The mocks, their key files, and a clock offset the server's push delivery reads.
struct Mocks {
    web: MockWebPush,
    apns: MockApns,
    fcm: MockFcm,
    vapid: VapidTestKey,
    offset: Arc<AtomicI64>,
    files: tempfile::TempDir,
    /// Browser keys of every Web Push subscription made, by subscription id.
    browsers: std::sync::Mutex<Vec<(String, BrowserKeys)>>,
}

impl Mocks {
    async fn start() -> Mocks {
        let apns_key = ApnsTestKey::generate();
        let files = tempfile::tempdir().unwrap();
        std::fs::write(files.path().join("apns.p8"), &apns_key.p8_pem).unwrap();
        std::fs::write(files.path().join("ca.pem"), &test_ca().cert_pem).unwrap();
        let fcm = MockFcm::start(FcmOptions::default()).await.unwrap();
        std::fs::write(files.path().join("fcm.json"), fcm.service_account_json()).unwrap();
        Mocks {
            web: MockWebPush::start(WebPushOptions::default()).await.unwrap(),
            apns: MockApns::start(ApnsOptions::for_key(&apns_key, TOPIC)).await.unwrap(),
            fcm,
            vapid: VapidTestKey::generate(),
            offset: Arc::new(AtomicI64::new(0)),
            browsers: std::sync::Mutex::new(Vec::new()),
            files: {
                std::fs::write(files.path().join("key-id"), &apns_key.key_id).unwrap();
                std::fs::write(files.path().join("team-id"), &apns_key.team_id).unwrap();
                files
            },
        }
    }

    /// A test server configuration whose senders reach these mocks.
    fn config(&self) -> ServerConfig {
        let mut config = ServerConfig::for_tests();
        let read = |name: &str| std::fs::read_to_string(self.files.path().join(name)).unwrap();
        config.vapid_public_key = Some(self.vapid.public.clone());
        config.push.vapid_private_key = Some(self.vapid.private.clone());
        config.push.vapid_subject = Some("mailto:ops@tidings.test".into());
        config.push.apns_key_file = Some(self.files.path().join("apns.p8"));
        config.push.apns_key_id = Some(read("key-id"));
        config.push.apns_team_id = Some(read("team-id"));
        config.push.apns_topic = Some(TOPIC.into());
        config.push.apns_url = self.apns.url();
        config.push.apns_sandbox_url = self.apns.url();
        config.push.fcm_service_account = Some(self.files.path().join("fcm.json"));
        config.push.fcm_url = self.fcm.url();
        config.push.push_ca_file = Some(self.files.path().join("ca.pem"));
        config.push_policy.push_after = PUSH_AFTER;
        config.push_policy.digest_window = DIGEST_WINDOW;
        config.push_retry.base = Duration::from_millis(50);
        config.clock = WallClock::shifted(self.offset.clone());
        config
    }

    /// A Web Push subscription (as a browser would register it), remembered for decryption.
    fn subscription(&self, id: &str) -> String {
        let (json, keys) = self.web.subscription(id);
        self.browsers.lock().unwrap().push((id.to_owned(), keys));
        json
    }

    /// Every Web Push body received so far, decrypted by http_ece, with its subscription id.
    fn web_pushes(&self) -> Vec<(String, Value)> {
        let received = self.web.received();
        let browsers = self.browsers.lock().unwrap();
        let items: Vec<EncryptedBody> = received
            .iter()
            .map(|r| {
                let (_, k) = browsers.iter().find(|(id, _)| *id == r.subscription).expect("a known subscription");
                EncryptedBody { body: r.body.clone(), private: k.private.clone(), auth: k.auth.clone() }
            })
            .collect();
        if items.is_empty() {
            return Vec::new();
        }
        let plain = decrypt_all(&items).expect("http_ece runs");
        received
            .iter()
            .zip(plain)
            .map(|(r, p)| {
                let text = p.unwrap_or_else(|e| panic!("http_ece cannot decrypt a body the server sent: {e}"));
                (r.subscription.clone(), serde_json::from_slice(&text).expect("the plaintext is JSON"))
            })
            .collect()
    }

    /// Makes the server's push clock read `at` (ms since the epoch) now.
    fn set_now(&self, at: u64) {
        let real = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
        self.offset.store(at as i64 - real, Ordering::SeqCst);
    }
}

async fn start(config: ServerConfig) -> RunningServer {
    common::start(config).await
}

/// Registers a push address for `device` of `user` over the protocol, then disconnects.
async fn register(server: &RunningServer, user: &str, device: &str, platform: &str, token: &str) {
    let (mut c, _) = Client::login(server, user, device, &[]).await;
    c.send(json!({"op":"register_push","ref":1,"platform":platform,"token":token})).await;
    let reply = c.recv_skipping_heartbeats().await;
    assert_eq!(reply["op"], "push_registered", "{reply}");
    drop(c);
}

/// A client of `user` on `device`, subscribed to its user stream.
async fn live(server: &RunningServer, user: &str, device: &str) -> Client {
    let (mut c, _) = Client::login(server, user, device, &[]).await;
    c.subscribe_one(1, json!({"stream": format!("user:{user}")})).await;
    c
}

/// Waits for the next notification frame.
async fn next_notification(c: &mut Client) -> Value {
    loop {
        let f = c.recv_skipping_heartbeats().await;
        if f["op"] == "notification" {
            return f;
        }
    }
}

async fn wait_offline(server: &RunningServer, user: &str) {
    eventually("the user is offline", || async { !server.presence().iter().any(|p| p.user == user) }).await;
}

/// The id a push payload carries (the full form's envelope, or the lightweight form's id).
fn pushed_id(payload: &Value) -> Option<String> {
    if let Some(env) = payload.get("tidings") {
        let env: Value = match env {
            Value::String(s) => serde_json::from_str(s).unwrap(),
            other => other.clone(),
        };
        return env["id"].as_str().map(str::to_owned);
    }
    payload.get("tidings_fetch").and_then(|f| f["id"].as_str()).map(str::to_owned)
}

async fn deliveries(server: &RunningServer, id: &str) -> Vec<Value> {
    let (status, body) = get(server, &format!("/v1/notifications/{id}/deliveries")).await;
    assert_eq!(status, 200, "{body}");
    body["deliveries"].as_array().unwrap().clone()
}

fn statuses(log: &[Value], device: &str) -> Vec<String> {
    log.iter()
        .filter(|e| e["device"] == device)
        .map(|e| {
            let reason = e["reason"].as_str().map(|r| format!(":{r}")).unwrap_or_default();
            format!("{}{reason}", e["status"].as_str().unwrap())
        })
        .collect()
}

/// Sends an HTTP request with the user's token.
async fn me(server: &RunningServer, method: &str, path: &str, user: &str, body: Option<Value>) -> (u16, Value) {
    let url = format!("{}{path}", server.http_url());
    let mut req = http().request(method.parse().unwrap(), url).bearer_auth(token(user, &[]));
    if let Some(body) = body {
        req = req.header("content-type", "application/json").body(body.to_string());
    }
    let response = req.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connected_and_acked_gets_no_push() {
    let mocks = Mocks::start().await;
    let server = start(mocks.config()).await;
    register(&server, "alice", "laptop", "web_push", &mocks.subscription("laptop")).await;
    let mut c = live(&server, "alice", "laptop").await;
    let receipt = publish(&server, json!({"users":["alice"],"type":"comment.created","title":"Hi"})).await;
    let n = next_notification(&mut c).await;
    c.send(json!({"op":"ack","ids":[n["id"]]})).await;
    c.sync().await;
    tokio::time::sleep(PUSH_AFTER + Duration::from_millis(800)).await;
    assert_eq!(mocks.web.count(), 0, "acked within push_after: no push");
    let id = receipt["id"].as_str().unwrap();
    let log = deliveries(&server, id).await;
    assert_eq!(statuses(&log, "laptop"), ["scheduled:awaiting_ack", "acked", "cancelled:acked"], "{log:?}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connected_but_never_acked_is_pushed_after_push_after() {
    let mocks = Mocks::start().await;
    let server = start(mocks.config()).await;
    register(&server, "alice", "laptop", "web_push", &mocks.subscription("laptop")).await;
    let mut c = live(&server, "alice", "laptop").await;
    let published = Instant::now();
    let receipt =
        publish(&server, json!({"users":["alice"],"type":"comment.created","title":"Bob commented","body":"Nice"}))
            .await;
    let n = next_notification(&mut c).await;
    eventually("one push", || async { mocks.web.count() == 1 }).await;
    let waited = mocks.web.received()[0].at.duration_since(published);
    assert!(waited >= PUSH_AFTER, "pushed after {waited:?}, before push_after");
    let pushes = mocks.web_pushes();
    let envelope = decode_push_payload(&pushes[0].1.to_string()).expect("the client reads what the server sent");
    assert_eq!(envelope.id(), receipt["id"].as_str().unwrap());
    assert_eq!(envelope.id(), n["id"].as_str().unwrap(), "the id the socket carried");
    assert_eq!((envelope.stream(), envelope.offset), ("user:alice", n["offset"].as_u64()));
    assert_eq!(envelope.body(), Some("Nice"));
    // The socket stays open: a late ack changes nothing, and the push is not sent again.
    c.send(json!({"op":"ack","ids":[n["id"]]})).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(mocks.web.count(), 1);
    let log = deliveries(&server, envelope.id()).await;
    assert_eq!(statuses(&log, "laptop"), ["scheduled:awaiting_ack", "pushed", "acked"], "{log:?}");
    let pushed = log.iter().find(|e| e["status"] == "pushed").unwrap();
    assert_eq!((&pushed["provider"], &pushed["form"]), (&json!("web_push"), &json!("full")));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_session_is_pushed_at_once_on_every_provider() {
    let mocks = Mocks::start().await;
    let server = start(mocks.config()).await;
    let apns_token = "5f3a9d00c91e5f3a9d00c91e5f3a9d00c91e5f3a9d00c91e5f3a9d00c91e0001";
    register(&server, "alice", "laptop", "web_push", &mocks.subscription("laptop")).await;
    register(&server, "alice", "iphone", "apns", apns_token).await;
    register(&server, "alice", "pixel", "fcm", "fcm-token-1").await;
    wait_offline(&server, "alice").await;
    let published = Instant::now();
    let receipt = publish(&server, json!({"users":["alice"],"type":"comment.created","title":"Hi"})).await;
    let id = receipt["id"].as_str().unwrap().to_owned();
    eventually("three pushes", || async {
        mocks.web.count() == 1 && mocks.apns.count() == 1 && mocks.fcm.received().len() == 1
    })
    .await;
    let waited = mocks.web.received()[0].at.duration_since(published);
    assert!(waited < PUSH_AFTER, "no session: at once, not after push_after ({waited:?})");
    assert_eq!(pushed_id(&mocks.web_pushes()[0].1).as_deref(), Some(id.as_str()));
    let apns = &mocks.apns.received()[0];
    assert_eq!(apns.device, apns_token);
    assert_eq!(decode_push_payload(&apns.payload.to_string()).unwrap().id(), id);
    assert_eq!(apns.headers["apns-collapse-id"], id);
    let fcm = &mocks.fcm.received()[0].message;
    assert_eq!(fcm["token"], "fcm-token-1");
    assert_eq!(decode_push_payload(&fcm["data"].to_string()).unwrap().id(), id);
    let log = deliveries(&server, &id).await;
    for device in ["laptop", "iphone", "pixel"] {
        assert_eq!(statuses(&log, device), ["scheduled:immediate", "pushed"], "{device}: {log:?}");
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn critical_goes_live_and_by_push_even_when_acked() {
    let mocks = Mocks::start().await;
    let server = start(mocks.config()).await;
    register(&server, "alice", "laptop", "web_push", &mocks.subscription("laptop")).await;
    let mut c = live(&server, "alice", "laptop").await;
    let published = Instant::now();
    publish(&server, json!({"users":["alice"],"type":"security.login","priority":"critical","title":"New login"}))
        .await;
    let n = next_notification(&mut c).await;
    c.send(json!({"op":"ack","ids":[n["id"]]})).await;
    eventually("the push", || async { mocks.web.count() == 1 }).await;
    assert!(mocks.web.received()[0].at.duration_since(published) < PUSH_AFTER, "at once");
    assert_eq!(mocks.web.received()[0].headers["urgency"], "high");
    let pushed = &mocks.web_pushes()[0].1;
    assert_eq!(pushed_id(pushed), n["id"].as_str().map(str::to_owned), "the same notification on both paths");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn informational_offline_gets_one_digest_per_window_and_none_while_live() {
    let mocks = Mocks::start().await;
    let server = start(mocks.config()).await;
    register(&server, "alice", "laptop", "web_push", &mocks.subscription("laptop")).await;
    wait_offline(&server, "alice").await;
    let mut ids = Vec::new();
    // The window opens with the first publish, so not before this instant.
    let opened = Instant::now();
    for who in ["Ann", "Ben", "Cid"] {
        let body = json!({"users":["alice"],"type":"like.created","priority":"informational","group":"likes:p1",
                          "title":format!("{who} liked your post")});
        ids.push(publish(&server, body).await["id"].as_str().unwrap().to_owned());
    }
    // Another group, digests off: nothing for it.
    publish(
        &server,
        json!({"users":["alice"],"type":"like.created","priority":"informational","group":"other",
                            "push":{"digest":false}}),
    )
    .await;
    tokio::time::sleep_until((opened + DIGEST_WINDOW / 2).into()).await;
    // (On a loaded machine the four publishes may take longer than the window: then there is no "before".)
    let count = mocks.web.count();
    if opened.elapsed() < DIGEST_WINDOW {
        assert_eq!(count, 0, "nothing before the window closes");
    }
    eventually("the digest", || async { mocks.web.count() == 1 }).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(mocks.web.count(), 1, "one push for the window");
    let summary = &mocks.web_pushes()[0].1["tidings_summary"];
    ids.reverse();
    assert_eq!(summary["kind"], "digest");
    assert_eq!(summary["group"], "likes:p1");
    assert_eq!(summary["count"], 3);
    assert_eq!(summary["ids"], json!(ids), "newest first");
    assert_eq!(summary["title"], "Cid liked your post");
    assert_eq!(mocks.web.received()[0].headers["urgency"], "low");
    // While the user has a live session, informational notifications are live only.
    let mut c = live(&server, "alice", "laptop").await;
    publish(&server, json!({"users":["alice"],"type":"like.created","priority":"informational","group":"likes:p1"}))
        .await;
    next_notification(&mut c).await;
    tokio::time::sleep(DIGEST_WINDOW + Duration::from_millis(300)).await;
    assert_eq!(mocks.web.count(), 1);
    server.shutdown().await;
}

/// Quiet hours every night 22:00–07:00 UTC, set by the user with their own token.
async fn nightly_quiet_hours(server: &RunningServer, user: &str) {
    let ranges: Vec<Value> = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
        .iter()
        .map(|d| json!({"day": d, "start": "22:00", "end": "07:00"}))
        .collect();
    let (status, body) =
        me(server, "PUT", "/v1/me/quiet-hours", user, Some(json!({"time_zone": "UTC", "ranges": ranges}))).await;
    assert_eq!(status, 200, "{body}");
}

/// 07:00 UTC today (ms), when the nightly quiet hours end.
fn seven_today() -> u64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    now - now % 86_400_000 + 7 * 3_600_000
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_hours_hold_pushes_then_send_one_summary() {
    let mocks = Mocks::start().await;
    let server = start(mocks.config()).await;
    register(&server, "alice", "laptop", "web_push", &mocks.subscription("laptop")).await;
    wait_offline(&server, "alice").await;
    nightly_quiet_hours(&server, "alice").await;
    // The server's push clock stands two seconds before the quiet hours end.
    mocks.set_now(seven_today() - 2000);
    let a = publish(&server, json!({"users":["alice"],"type":"comment.created","title":"First"})).await;
    let b = publish(&server, json!({"users":["alice"],"type":"comment.created","title":"Second"})).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(mocks.web.count(), 0, "held during quiet hours");
    let log = deliveries(&server, a["id"].as_str().unwrap()).await;
    assert_eq!(statuses(&log, "laptop"), ["scheduled:quiet_hours"]);
    assert_eq!(log[0]["due_at"], seven_today(), "until they end");
    eventually("the summary", || async { mocks.web.count() == 1 }).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(mocks.web.count(), 1, "one summary, not one push each");
    let summary = &mocks.web_pushes()[0].1["tidings_summary"];
    assert_eq!(summary["kind"], "quiet_hours");
    assert_eq!(summary["ids"], json!([b["id"], a["id"]]));
    assert_eq!(summary["title"], "Second");
    let log = deliveries(&server, a["id"].as_str().unwrap()).await;
    let pushed = log.iter().find(|e| e["status"] == "pushed").expect("logged as pushed");
    assert_eq!(pushed["form"], "summary");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn critical_in_quiet_hours_waits_for_their_end_unless_the_publisher_bypasses_them() {
    let mocks = Mocks::start().await;
    let server = start(mocks.config()).await;
    register(&server, "alice", "laptop", "web_push", &mocks.subscription("laptop")).await;
    wait_offline(&server, "alice").await;
    nightly_quiet_hours(&server, "alice").await;
    mocks.set_now(seven_today() - 2000);
    let held = publish(&server, json!({"users":["alice"],"type":"security.login","priority":"critical"})).await;
    let code = publish(
        &server,
        json!({"users":["alice"],"type":"auth.code","priority":"critical","title":"Your code: 123456",
               "push":{"bypass_quiet_hours":true}}),
    )
    .await;
    eventually("the bypassing push", || async { mocks.web.count() == 1 }).await;
    assert_eq!(pushed_id(&mocks.web_pushes()[0].1).as_deref(), code["id"].as_str());
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(mocks.web.count(), 1, "the other one waits");
    eventually("the held critical push", || async { mocks.web.count() == 2 }).await;
    let second = &mocks.web_pushes()[1].1;
    assert_eq!(pushed_id(second).as_deref(), held["id"].as_str(), "sent as itself, not in a summary");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_opted_out_channel_gets_nothing_and_critical_cannot_be_opted_out_of() {
    let mocks = Mocks::start().await;
    let server = start(mocks.config()).await;
    register(&server, "alice", "laptop", "web_push", &mocks.subscription("laptop")).await;
    let rules = json!({"rules":[
        {"type":"comment.*","channel":"push","enabled":false},
        {"type":"like.*","channel":"socket","enabled":false}
    ]});
    let (status, body) = me(&server, "PUT", "/v1/me/preferences", "alice", Some(rules)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["version"], 1);
    let mut c = live(&server, "alice", "laptop").await;
    // Push off for comments: live, never pushed (the client does not ack).
    let comment = publish(&server, json!({"users":["alice"],"type":"comment.created"})).await;
    assert_eq!(next_notification(&mut c).await["id"], comment["id"]);
    // Socket off for likes: not live, and pushed at once (no session could ack it).
    let like = publish(&server, json!({"users":["alice"],"type":"like.created","title":"Ann liked it"})).await;
    assert_eq!(like["deliveries"], json!([]), "not placed in alice's stream");
    eventually("the like's push", || async { mocks.web.count() == 1 }).await;
    let pushed = decode_push_payload(&mocks.web_pushes()[0].1.to_string()).unwrap();
    assert_eq!(pushed.id(), like["id"].as_str().unwrap());
    assert_eq!(pushed.offset, None, "it has no place in the stream");
    // Critical ignores both.
    let critical = publish(&server, json!({"users":["alice"],"type":"comment.created","priority":"critical"})).await;
    assert_eq!(next_notification(&mut c).await["id"], critical["id"], "the like never came live");
    eventually("the critical push", || async { mocks.web.count() == 2 }).await;
    tokio::time::sleep(PUSH_AFTER + Duration::from_millis(500)).await;
    assert_eq!(mocks.web.count(), 2, "the comment was never pushed");
    let ids: Vec<Option<String>> = mocks.web_pushes().iter().map(|(_, p)| pushed_id(p)).collect();
    assert_eq!(ids, [like["id"].as_str().map(str::to_owned), critical["id"].as_str().map(str::to_owned)]);
    let log = deliveries(&server, comment["id"].as_str().unwrap()).await;
    assert!(
        log.iter().any(|e| e["status"] == "suppressed" && e["channel"] == "push" && e["reason"] == "preference"),
        "{log:?}"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gone_address_is_deleted() {
    let mocks = Mocks::start().await;
    let server = start(mocks.config()).await;
    register(&server, "alice", "laptop", "web_push", &mocks.subscription("laptop")).await;
    register(&server, "alice", "iphone", "apns", "0123abcd").await;
    wait_offline(&server, "alice").await;
    mocks.web.unsubscribe("laptop");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    mocks.apns.unregister("0123abcd", now + 60_000);
    let (_, devices) = get(&server, "/v1/users/alice/devices").await;
    assert_eq!(devices["devices"].as_array().unwrap().len(), 2);
    let receipt = publish(&server, json!({"users":["alice"],"type":"comment.created"})).await;
    eventually("both addresses deleted", || async {
        get(&server, "/v1/users/alice/devices").await.1["devices"].as_array().unwrap().is_empty()
    })
    .await;
    assert_eq!(mocks.web.received()[0].answered, 410);
    let log = deliveries(&server, receipt["id"].as_str().unwrap()).await;
    let failed: Vec<&Value> = log.iter().filter(|e| e["status"] == "failed").collect();
    assert_eq!(failed.len(), 2, "{log:?}");
    assert!(failed.iter().all(|e| e["reason"].as_str().unwrap().starts_with("device gone")), "{failed:?}");
    // Nothing is sent to them any more.
    publish(&server, json!({"users":["alice"],"type":"comment.created"})).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!((mocks.web.count(), mocks.apns.count()), (1, 1));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_requests_is_retried_after_retry_after() {
    let mocks = Mocks::start().await;
    let mut config = mocks.config();
    // Waits of more than a second are not slept through: the push is rescheduled.
    config.push_retry.max_inline_wait = Duration::from_secs(1);
    let server = start(config).await;
    register(&server, "alice", "laptop", "web_push", &mocks.subscription("laptop")).await;
    wait_offline(&server, "alice").await;
    // A short Retry-After is waited for in place.
    mocks.web.script([WebPushReply::too_many(1)]);
    publish(&server, json!({"users":["alice"],"type":"comment.created"})).await;
    eventually("sent again", || async { mocks.web.accepted() == 1 }).await;
    let r = mocks.web.received();
    assert_eq!((r[0].answered, r[1].answered), (429, 201));
    assert!(r[1].at.duration_since(r[0].at) >= Duration::from_secs(1), "not before Retry-After");
    // A long one reschedules the push, which goes at that time.
    mocks.web.script([WebPushReply::too_many(2)]);
    let receipt = publish(&server, json!({"users":["alice"],"type":"comment.created"})).await;
    eventually("rescheduled and sent", || async { mocks.web.accepted() == 2 }).await;
    let r = mocks.web.received();
    assert_eq!((r[2].answered, r[3].answered), (429, 201));
    assert!(r[3].at.duration_since(r[2].at) >= Duration::from_secs(2), "not before Retry-After");
    let log = deliveries(&server, receipt["id"].as_str().unwrap()).await;
    let laptop = statuses(&log, "laptop");
    assert_eq!(laptop.len(), 3, "{laptop:?}");
    assert!(laptop[1].starts_with("scheduled:retry: HTTP 429"), "{laptop:?}");
    assert_eq!(laptop[2], "pushed");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_with_pending_pushes_sends_each_once() {
    let mocks = Mocks::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = || {
        let mut c = mocks.config();
        c.store = StoreConfig::Sqlite { data_dir: dir.path().to_owned(), synchronous: Synchronous::Full };
        c
    };
    let server = tidings_server::start(config()).await.unwrap();
    register(&server, "alice", "laptop", "web_push", &mocks.subscription("laptop")).await;
    register(&server, "alice", "iphone", "apns", "0123abcd").await;
    wait_offline(&server, "alice").await;
    nightly_quiet_hours(&server, "alice").await;
    mocks.set_now(seven_today() - 2500);
    let a = publish(&server, json!({"users":["alice"],"type":"comment.created","title":"a"})).await;
    let b = publish(&server, json!({"users":["alice"],"type":"comment.created","title":"b"})).await;
    let c = publish(&server, json!({"users":["alice"],"type":"security.login","priority":"critical"})).await;
    server.shutdown().await;
    assert_eq!((mocks.web.count(), mocks.apns.count()), (0, 0), "all held");
    let server = tidings_server::start(config()).await.unwrap();
    eventually("each device's summary and critical push", || async {
        mocks.web.count() == 2 && mocks.apns.count() == 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!((mocks.web.count(), mocks.apns.count()), (2, 2), "each sent once");
    let web = mocks.web_pushes();
    let summary = web.iter().find(|(_, p)| p.get("tidings_summary").is_some()).unwrap();
    assert_eq!(summary.1["tidings_summary"]["ids"], json!([b["id"], a["id"]]));
    assert!(web.iter().any(|(_, p)| pushed_id(p).as_deref() == c["id"].as_str()));
    let apns_ids: Vec<Value> = mocks.apns.received().iter().map(|r| r.payload.clone()).collect();
    assert!(apns_ids.iter().any(|p| p["tidings_summary"]["count"] == 2), "{apns_ids:?}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_too_large_for_a_push_is_sent_lightweight_and_fetched_with_the_users_token() {
    let mocks = Mocks::start().await;
    let server = start(mocks.config()).await;
    register(&server, "alice", "laptop", "web_push", &mocks.subscription("laptop")).await;
    wait_offline(&server, "alice").await;
    let big = "x".repeat(3900);
    let receipt =
        publish(&server, json!({"users":["alice"],"type":"doc.shared","title":"A long one","body":big})).await;
    let id = receipt["id"].as_str().unwrap();
    eventually("the push", || async { mocks.web.count() == 1 }).await;
    let payload = &mocks.web_pushes()[0].1;
    assert_eq!(payload["tidings_fetch"], json!({"id": id, "title": "A long one"}));
    let (status, envelope) = me(&server, "GET", &format!("/v1/me/notifications/{id}"), "alice", None).await;
    assert_eq!(status, 200, "{envelope}");
    let n = tidings_core::protocol::decode_notification(&envelope.to_string()).unwrap();
    assert_eq!((n.id(), n.body().map(str::len), n.stream()), (id, Some(3900), "user:alice"));
    let (status, body) = me(&server, "GET", &format!("/v1/me/notifications/{id}"), "bob", None).await;
    assert_eq!((status, &body["error"]["code"]), (404, &json!("not_found")), "another user's notification");
    let response = http().get(format!("{}/v1/me/notifications/{id}", server.http_url())).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 401);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_ack_from_a_push_handler_cancels_what_is_pending() {
    let mocks = Mocks::start().await;
    let server = start(mocks.config()).await;
    register(&server, "alice", "laptop", "web_push", &mocks.subscription("laptop")).await;
    register(&server, "alice", "iphone", "apns", "0123abcd").await;
    wait_offline(&server, "alice").await;
    nightly_quiet_hours(&server, "alice").await;
    mocks.set_now(seven_today() - 1500);
    let receipt = publish(&server, json!({"users":["alice"],"type":"comment.created"})).await;
    let id = receipt["id"].as_str().unwrap();
    let (status, body) = me(&server, "POST", "/v1/me/acks", "alice", Some(json!({"device":"iphone","ids":[id]}))).await;
    assert_eq!((status, &body), (200, &json!({"acked": 1})));
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert_eq!((mocks.web.count(), mocks.apns.count()), (0, 0), "acked meanwhile: dropped");
    let log = deliveries(&server, id).await;
    assert_eq!(statuses(&log, "laptop"), ["scheduled:quiet_hours", "cancelled:acked"]);
    assert_eq!(statuses(&log, "iphone"), ["scheduled:quiet_hours", "acked", "cancelled:acked"]);
    let (status, body) =
        me(&server, "POST", "/v1/me/acks", "alice", Some(json!({"device":"bad device","ids":[]}))).await;
    assert_eq!((status, &body["error"]["code"]), (400, &json!("bad_request")));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_are_set_by_the_user_and_by_the_operator_and_bad_input_is_refused() {
    let mocks = Mocks::start().await;
    let server = start(mocks.config()).await;
    let (status, body) = me(&server, "GET", "/v1/me/preferences", "alice", None).await;
    assert_eq!((status, body), (200, json!({"rules": [], "version": 0, "updated_at": 0})));
    let rule = |ty: &str, enabled: bool| json!({"type": ty, "channel": "push", "enabled": enabled});
    let (_, body) = me(&server, "PUT", "/v1/me/preferences", "alice", Some(json!({"rules":[rule("a", false)]}))).await;
    assert_eq!(body["version"], 1);
    let (_, body) =
        me(&server, "PATCH", "/v1/me/preferences", "alice", Some(json!({"rules":[rule("b", false), rule("a", true)]})))
            .await;
    assert_eq!(body["rules"], json!([rule("b", false), rule("a", true)]));
    // The operator sees and changes the same settings with the API key.
    let (status, body) = get(&server, "/v1/users/alice/preferences").await;
    assert_eq!((status, &body["version"]), (200, &json!(2)));
    let response = http()
        .put(format!("{}/v1/users/alice/quiet-hours", server.http_url()))
        .bearer_auth(TEST_API_KEY)
        .body(json!({"time_zone":"America/New_York","ranges":[{"day":"Sat","start":"0:00","end":"24:00"}]}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let (_, body) = me(&server, "GET", "/v1/me/quiet-hours", "alice", None).await;
    assert_eq!(
        body["quiet_hours"],
        json!({"time_zone":"America/New_York","ranges":[{"day":"sat","start":"00:00","end":"24:00"}]}),
        "stored in normal form"
    );
    assert_eq!(body["version"], 3);
    // Refusals name what is wrong.
    let bad = [
        ("/v1/me/quiet-hours", json!({"time_zone":"Mars/Olympus","ranges":[]}), "not an IANA time zone"),
        (
            "/v1/me/quiet-hours",
            json!({"time_zone":"UTC","ranges":[{"day":"mon","start":"25:00","end":"07:00"}]}),
            "not a time of day",
        ),
        ("/v1/me/preferences", json!({"rules":[{"type":"a*b","channel":"push","enabled":false}]}), "may only end"),
        ("/v1/me/preferences", json!({"rules":[{"type":"a","channel":"email","enabled":false}]}), "channel"),
        ("/v1/me/preferences", json!({"rules":[{"topic":"0","type":{},"channel":"push","enabled":false}]}), "not both"),
        (
            "/v1/me/quiet-hours",
            json!({"time_zone":"UTC","ranges":[{"day":"mon","start":"10:+5","end":"11:00"}]}),
            "not a time of day",
        ),
    ];
    for (path, body, says) in bad {
        let (status, reply) = me(&server, "PUT", path, "alice", Some(body)).await;
        assert_eq!((status, &reply["error"]["code"]), (400, &json!("bad_request")), "{reply}");
        assert!(reply["error"]["message"].as_str().unwrap().contains(says), "{reply}");
    }
    let (_, body) = me(&server, "DELETE", "/v1/me/quiet-hours", "alice", None).await;
    assert_eq!((&body["quiet_hours"], &body["version"]), (&Value::Null, &json!(4)));
    // Without a valid token or key: 401.
    let response = http().get(format!("{}/v1/me/preferences", server.http_url())).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 401);
    let response =
        http().get(format!("{}/v1/me/preferences", server.http_url())).bearer_auth(TEST_API_KEY).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 401, "the API key is not a user token");
    let response = http()
        .get(format!("{}/v1/users/alice/preferences", server.http_url()))
        .bearer_auth(token("alice", &[]))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401, "a user token is not the API key");
    // Browsers on other origins may call /v1/me (bearer tokens, no cookies).
    let preflight = http()
        .request(reqwest::Method::OPTIONS, format!("{}/v1/me/preferences", server.http_url()))
        .header("origin", "https://app.example")
        .header("access-control-request-method", "PUT")
        .header("access-control-request-headers", "authorization,content-type")
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success(), "{:?} {:?}", preflight.status(), preflight.headers());
    assert_eq!(preflight.headers()["access-control-allow-origin"], "*");
    let (status, body) = get(&server, "/v1/push/status").await;
    assert_eq!(status, 200);
    assert_eq!(body["providers"].as_array().unwrap().len(), 3);
    assert!(body["providers"].as_array().unwrap().iter().all(|p| p["configured"] == true && p["stopped"].is_null()));
    let _ = PATIENCE;
    server.shutdown().await;
}

/// Issue 16: the push path in `/metrics` — pending pushes by reason, cancellations by reason, sends by provider and
/// result, token invalidations, push deliveries, the push queue — with no user, device or token in a label.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_metrics_count_pending_pushes_cancellations_sends_and_invalidations() {
    use common::{sample, scrape};
    let mocks = Mocks::start().await;
    let server = start(mocks.config()).await;
    register(&server, "alice-3f9", "laptop-7c1", "web_push", &mocks.subscription("laptop-7c1")).await;
    register(&server, "bob-51a", "iphone-0d2", "apns", "0123abcd").await;
    register(&server, "bob-51a", "tablet-9e4", "web_push", &mocks.subscription("tablet-9e4")).await;
    wait_offline(&server, "bob-51a").await;
    // alice is live: her push waits for an ack (a minute, so that a slow machine does not send it), which cancels it.
    let mut c = live(&server, "alice-3f9", "laptop-7c1").await;
    publish(&server, json!({"users":["alice-3f9"],"type":"comment.created","push":{"after_ms":60000}})).await;
    let n = next_notification(&mut c).await;
    let text = scrape(&server).await;
    let pending = |text: &str, reason| sample(text, "tidings_push_pending", &[("reason", reason)]);
    assert_eq!(pending(&text, "awaiting_ack"), Some(1.0), "{text}");
    assert_eq!((pending(&text, "immediate"), pending(&text, "quiet_hours")), (Some(0.0), Some(0.0)));
    assert_eq!(sample(&text, "tidings_push_scheduled_total", &[("reason", "awaiting_ack")]), Some(1.0));
    assert_eq!(sample(&text, "tidings_queue_depth", &[("queue", "push")]), Some(0.0), "not due yet");
    assert_eq!(sample(&text, "tidings_queue_oldest_age_seconds", &[("queue", "push")]), Some(0.0));
    c.send(json!({"op":"ack","ids":[n["id"]]})).await;
    c.sync().await;
    let text = scrape(&server).await;
    assert_eq!(sample(&text, "tidings_push_cancelled_total", &[("reason", "acked")]), Some(1.0), "{text}");
    assert_eq!(pending(&text, "awaiting_ack"), Some(0.0));
    // bob has no session: pushed at once on both devices; the tablet's subscription is gone (410) and deleted.
    mocks.web.unsubscribe("tablet-9e4");
    publish(&server, json!({"users":["bob-51a"],"type":"comment.created"})).await;
    eventually("both sends counted", || async {
        let text = scrape(&server).await;
        sample(&text, "tidings_push_sends_total", &[("provider", "apns"), ("result", "accepted")]) == Some(1.0)
            && sample(&text, "tidings_push_sends_total", &[("provider", "web_push"), ("result", "device_gone")])
                == Some(1.0)
    })
    .await;
    let text = scrape(&server).await;
    assert_eq!(sample(&text, "tidings_push_token_invalidations_total", &[("provider", "web_push")]), Some(1.0));
    assert_eq!(sample(&text, "tidings_push_scheduled_total", &[("reason", "immediate")]), Some(2.0));
    assert_eq!(sample(&text, "tidings_deliveries_total", &[("transport", "push"), ("outcome", "pushed")]), Some(1.0));
    assert_eq!(sample(&text, "tidings_deliveries_total", &[("transport", "push"), ("outcome", "failed")]), Some(1.0));
    assert_eq!(sample(&text, "tidings_push_send_seconds_count", &[("provider", "apns")]), Some(1.0));
    assert_eq!(sample(&text, "tidings_push_provider_stopped", &[("provider", "apns")]), Some(0.0));
    assert_eq!(pending(&text, "immediate"), Some(0.0), "sent and settled");
    assert_eq!(sample(&text, "tidings_queue_depth", &[("queue", "push")]), Some(0.0));
    // The user's acks over HTTP (a push handler) are counted with their transport.
    let (status, _) =
        me(&server, "POST", "/v1/me/acks", "bob-51a", Some(json!({"device":"iphone-0d2","ids":["x"]}))).await;
    assert_eq!(status, 200);
    let text = scrape(&server).await;
    if std::env::var_os("TIDINGS_PRINT_METRICS").is_some() {
        println!("{text}");
    }
    assert_eq!(sample(&text, "tidings_acks_total", &[("transport", "http")]), Some(1.0));
    for id in ["alice-3f9", "bob-51a", "laptop-7c1", "iphone-0d2", "tablet-9e4", "0123abcd"] {
        assert!(!text.contains(id), "{id} leaked into the metrics");
    }
    server.shutdown().await;
}

/// Issue 16: a provider that refuses the server's configuration (APNs `BadTopic`) while delivering makes
/// `/readyz` answer 503 naming it, `/v1/push/status` shows it stopped, and the metrics count it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_stopped_by_its_configuration_while_delivering_makes_the_server_not_ready() {
    use common::{sample, scrape};
    use tidings_push_mocks::ApnsReply;
    let mocks = Mocks::start().await;
    let server = start(mocks.config()).await;
    register(&server, "alice", "iphone", "apns", "0123abcd").await;
    register(&server, "alice", "laptop", "web_push", &mocks.subscription("laptop")).await;
    wait_offline(&server, "alice").await;
    let (status, body) = get(&server, "/readyz").await;
    assert_eq!(status, 200, "{body}");
    mocks.apns.script([ApnsReply::error(400, "BadTopic")]);
    publish(&server, json!({"users":["alice"],"type":"comment.created"})).await;
    eventually("not ready", || async { get(&server, "/readyz").await.0 == 503 }).await;
    let (_, body) = get(&server, "/readyz").await;
    assert_eq!(body["status"], "not_ready");
    let error = body["checks"]["push"]["error"].as_str().unwrap();
    assert!(error.contains("apns") && error.contains("BadTopic"), "{error}");
    assert_eq!(body["checks"]["push"]["providers"]["web_push"]["stopped"], Value::Null, "the others still work");
    assert_eq!(body["checks"]["store"]["ok"], true);
    eventually("the Web Push one sent", || async { mocks.web.accepted() == 1 }).await;
    let (_, status) = get(&server, "/v1/push/status").await;
    let apns = status["providers"].as_array().unwrap().iter().find(|p| p["provider"] == "apns").unwrap().clone();
    assert!(apns["stopped"].as_str().unwrap().contains("BadTopic"), "{apns}");
    let text = scrape(&server).await;
    assert_eq!(sample(&text, "tidings_push_provider_stopped", &[("provider", "apns")]), Some(1.0), "{text}");
    let stopped = [("provider", "apns"), ("result", "provider_stopped")];
    assert_eq!(sample(&text, "tidings_push_sends_total", &stopped), Some(1.0));
    server.shutdown().await;
}

/// The iOS badge is the server's unread inbox count (protocol §13.5): each APNs push carries `aps.badge` as the
/// user's inbox has it when the push is built — a persistent notification counts itself, reading an item lowers it,
/// a notification that is not persistent (no inbox item) leaves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_apns_badge_is_the_unread_inbox_count() {
    let mocks = Mocks::start().await;
    let server = start(mocks.config()).await;
    let apns_token = "5f3a9d00c91e5f3a9d00c91e5f3a9d00c91e5f3a9d00c91e5f3a9d00c91e0002";
    register(&server, "alice", "iphone", "apns", apns_token).await;
    wait_offline(&server, "alice").await;
    let badge = |n: usize| mocks.apns.received()[n].payload["aps"]["badge"].clone();
    let first =
        publish(&server, json!({"users":["alice"],"type":"comment.created","title":"a","persistence":"persistent"}))
            .await;
    eventually("the first push", || async { mocks.apns.count() == 1 }).await;
    assert_eq!(badge(0), json!(1), "{}", mocks.apns.received()[0].payload);
    publish(&server, json!({"users":["alice"],"type":"comment.created","title":"b","persistence":"persistent"})).await;
    eventually("the second push", || async { mocks.apns.count() == 2 }).await;
    assert_eq!(badge(1), json!(2));
    let (status, body) = me(
        &server,
        "POST",
        "/v1/me/inbox/mark",
        "alice",
        Some(json!({"action":"read","ids":[first["id"].as_str().unwrap()]})),
    )
    .await;
    assert_eq!((status, &body["counts"]["unread"]), (200, &json!(1)), "{body}");
    publish(&server, json!({"users":["alice"],"type":"comment.created","title":"c","persistence":"bufferable"})).await;
    eventually("the third push", || async { mocks.apns.count() == 3 }).await;
    assert_eq!(badge(2), json!(1), "a bufferable notification is no inbox item");
    server.shutdown().await;
}

// ---- several servers on one Redis and one store (issue 15) ----

/// Two servers with these mocks on one shared memory store, each with its own Redis broker; `None`: no Redis
/// (skipped outside xtask).
async fn two_on_redis(mocks: &Mocks, redis: &common::redis::TestRedis, name: &str) -> Vec<RunningServer> {
    let mut config = mocks.config();
    let stores = tidings_server::Stores::memory(tidings_server::MemoryStore::new(
        tidings_server::StoreLimits::from_config(&config),
    ));
    config.redis = Some(common::redis::redis_config(&redis.url(), &common::redis::prefix(name)));
    let mut servers = Vec::new();
    for _ in 0..2 {
        servers.push(tidings_server::start_with_stores(config.clone(), stores.clone()).await.unwrap());
    }
    servers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ack_on_another_server_cancels_the_push_and_the_planner_sees_the_session_there() {
    let Some(redis) = common::redis::TestRedis::get() else { return };
    let mocks = Mocks::start().await;
    let servers = two_on_redis(&mocks, &redis, "push-ack").await;
    register(&servers[0], "alice", "laptop", "web_push", &mocks.subscription("laptop")).await;
    // Alice's laptop is live on server 1; the publish goes through server 0, which must see her session there
    // (or it would push at once, as to an offline user).
    let mut c = live(&servers[1], "alice", "laptop").await;
    eventually("alice online for server 0", || async {
        get(&servers[0], "/v1/presence/alice").await.1["devices"].as_array().is_some_and(|d| d.len() == 1)
    })
    .await;
    let receipt = publish(&servers[0], json!({"users":["alice"],"type":"comment.created","title":"Hi"})).await;
    let n = next_notification(&mut c).await;
    c.send(json!({"op":"ack","ids":[n["id"]]})).await;
    c.sync().await;
    tokio::time::sleep(PUSH_AFTER + Duration::from_millis(800)).await;
    assert_eq!(mocks.web.count(), 0, "acked on server 1 within push_after: no push from either server");
    let log = deliveries(&servers[0], receipt["id"].as_str().unwrap()).await;
    assert_eq!(statuses(&log, "laptop"), ["scheduled:awaiting_ack", "acked", "cancelled:acked"], "{log:?}");
    for server in servers {
        server.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_due_push_is_sent_once_by_two_servers_sharing_the_store() {
    let Some(redis) = common::redis::TestRedis::get() else { return };
    let mocks = Mocks::start().await;
    let servers = two_on_redis(&mocks, &redis, "push-once").await;
    register(&servers[1], "alice", "laptop", "web_push", &mocks.subscription("laptop")).await;
    eventually("alice offline everywhere", || async {
        get(&servers[0], "/v1/presence/alice").await.1["devices"].as_array().is_some_and(|d| d.is_empty())
    })
    .await;
    // Offline: pushed at once, each by whichever server's worker claims it first.
    for title in ["one", "two", "three"] {
        publish(&servers[0], json!({"users":["alice"],"type":"comment.created","title":title})).await;
    }
    eventually("three pushes", || async { mocks.web.count() >= 3 }).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(mocks.web.count(), 3, "each push once across both servers");
    for server in servers {
        server.shutdown().await;
    }
}
