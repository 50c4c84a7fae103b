//! The push senders against the mock services (tests/push-mocks): what goes on the wire (headers, JWT claims,
//! payloads the client decodes), credential renewal and caching, retries after `Retry-After`, GOAWAY, dead
//! addresses and configuration errors. Every Web Push body is also decrypted by Python's `http_ece`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use tidings_core::protocol::{
    Notification, NotificationFields, Persistence, Priority, PushPlatform, RawJson, decode_push_payload,
};
use tidings_push_mocks::http_ece::{EncryptedBody, decrypt_all};
use tidings_push_mocks::{
    ApnsOptions, ApnsReply, ApnsTestKey, BrowserKeys, FcmOptions, FcmReply, MockApns, MockFcm, MockWebPush,
    VapidTestKey, WebPushOptions, WebPushReply, test_ca,
};
use tidings_server::push::apns::{ApnsCredentials, ApnsSender};
use tidings_server::push::fcm::{FcmEndpoints, FcmSender, ServiceAccount};
use tidings_server::push::http::{Clock, TlsRoots};
use tidings_server::push::webpush::{VapidKey, WebPushSender};
use tidings_server::push::{
    Delivery, Dispatcher, Form, Provider, PushAddress, PushMessage, RetryPolicy, Summary, SummaryKind,
};

/// A clock the test moves.
#[derive(Debug)]
struct ManualClock(AtomicU64);

impl ManualClock {
    fn at_real_now() -> Arc<Self> {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
        Arc::new(ManualClock(AtomicU64::new(now)))
    }

    fn advance(&self, d: Duration) {
        self.0.fetch_add(d.as_millis() as u64, Ordering::Relaxed);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

fn roots() -> TlsRoots {
    TlsRoots::with_pem(test_ca().cert_pem.as_bytes()).unwrap()
}

fn notification(id: &str, priority: Priority, body_len: usize) -> Notification {
    NotificationFields {
        id: id.into(),
        stream: "user:alice".into(),
        offset: Some(7),
        epoch: "k3v9q2".into(),
        kind: "comment.created".into(),
        priority,
        persistence: Persistence::Bufferable,
        title: Some("Bob commented".into()),
        body: Some("x".repeat(body_len)),
        data: Some(RawJson::from_string(r#"{"post":"p-981"}"#.into()).unwrap()),
        group: Some("post:p-981".into()),
        created_at: 1_763_808_060_123,
    }
    .into()
}

fn summary() -> PushMessage {
    let s = Summary {
        kind: SummaryKind::QuietHours,
        group: None,
        ids: vec!["n3".into(), "n2".into(), "n1".into()],
        title: Some("Ann replied".into()),
    };
    PushMessage::summary(s, Priority::Important)
}

fn retry_quickly() -> RetryPolicy {
    RetryPolicy { base: Duration::from_millis(20), ..RetryPolicy::default() }
}

// ---- Web Push ---------------------------------------------------------------------------------------------

struct WebPushRig {
    mock: MockWebPush,
    vapid: VapidTestKey,
    clock: Arc<ManualClock>,
    dispatcher: Dispatcher,
}

async fn web_push_rig(options: WebPushOptions) -> WebPushRig {
    let mock = MockWebPush::start(options).await.unwrap();
    let vapid = VapidTestKey::generate();
    let clock = ManualClock::at_real_now();
    let key = VapidKey::from_base64url(&vapid.private).unwrap();
    assert_eq!(key.public_key(), vapid.public);
    let sender = WebPushSender::new(key, "mailto:ops@tidings.test".into(), &roots(), clock.clone());
    let dispatcher = Dispatcher::new(Some(sender), None, None, retry_quickly(), clock.clone());
    WebPushRig { mock, vapid, clock, dispatcher }
}

fn web_address(token: &str) -> PushAddress<'_> {
    PushAddress { platform: PushPlatform::WebPush, token, registered_at: 1 }
}

/// Decrypts every body the mock received for `keys`' subscriptions with Python's http_ece.
fn decrypt_received(mock: &MockWebPush, keys: &[(&str, &BrowserKeys)]) -> Vec<(String, Vec<u8>)> {
    let received = mock.received();
    let items: Vec<EncryptedBody> = received
        .iter()
        .map(|r| {
            let (_, k) = keys.iter().find(|(id, _)| *id == r.subscription).expect("a known subscription");
            EncryptedBody { body: r.body.clone(), private: k.private.clone(), auth: k.auth.clone() }
        })
        .collect();
    let plain = decrypt_all(&items).unwrap();
    received
        .iter()
        .zip(plain)
        .map(|(r, p)| (r.subscription.clone(), p.unwrap_or_else(|e| panic!("http_ece cannot decrypt: {e}"))))
        .collect()
}

#[tokio::test]
async fn web_push_sends_rfc_requests_that_http_ece_decrypts_to_the_payload_the_client_reads() {
    let rig = web_push_rig(WebPushOptions::default()).await;
    let (sub, keys) = rig.mock.subscription("browser-1");
    let n = notification("01JDZ3K5W8Q2M4N6P8R0T2V4X6", Priority::Critical, 200);
    let big = notification("n.big:1", Priority::Important, 3900);
    let mut sent = Vec::new();
    for msg in [PushMessage::notification(n.clone()), PushMessage::notification(big), summary()] {
        let expected = tidings_server::push::payload::web_push_payload(&msg).0;
        let d = rig.dispatcher.deliver(&web_address(&sub), &msg).await;
        assert!(matches!(d, Delivery::Accepted { attempts: 1, .. }), "{d:?}");
        sent.push((expected, d));
    }
    let forms: Vec<Form> = sent
        .iter()
        .map(|(_, d)| match d {
            Delivery::Accepted { form, .. } => *form,
            _ => unreachable!(),
        })
        .collect();
    assert_eq!(forms, [Form::Full, Form::Lightweight, Form::Summary]);
    let received = rig.mock.received();
    assert_eq!(received.len(), 3);
    // RFC 8030 headers, RFC 8292 VAPID.
    let first = &received[0];
    assert_eq!(first.answered, 201);
    assert_eq!(first.version, "HTTP/2.0", "HTTP/2 when the push service offers it");
    assert_eq!(first.headers["ttl"], "86400");
    assert_eq!(first.headers["urgency"], "high", "critical");
    assert_eq!(first.headers["topic"], "01JDZ3K5W8Q2M4N6P8R0T2V4X6", "the id, to replace an undelivered copy");
    assert_eq!(first.headers["content-encoding"], "aes128gcm");
    assert_eq!(received[1].headers["urgency"], "normal", "important");
    assert_eq!(received[1].headers["topic"].len(), 22, "an id with '.' and ':' is hashed into base64url");
    assert!(!received[2].headers.contains_key("topic"), "summaries are not collapsed");
    let claims = first.vapid_claims.as_ref().expect("the mock verified the VAPID JWT");
    assert_eq!(claims["aud"], rig.mock.origin());
    assert_eq!(claims["sub"], "mailto:ops@tidings.test");
    let exp = claims["exp"].as_u64().unwrap();
    let now_s = rig.clock.now_ms() / 1000;
    assert!(exp > now_s && exp <= now_s + 24 * 3600, "exp within 24 h: {exp} vs {now_s}");
    assert_eq!(first.vapid_key.as_deref(), Some(rig.vapid.public.as_str()));
    // An independent implementation decrypts each body to exactly the payload built for it.
    let plain = decrypt_received(&rig.mock, &[("browser-1", &keys)]);
    for ((_, plaintext), (expected, _)) in plain.iter().zip(&sent) {
        assert_eq!(std::str::from_utf8(plaintext).unwrap(), expected);
    }
    // …and the client's decoder reads the full form back into the notification.
    assert_eq!(decode_push_payload(std::str::from_utf8(&plain[0].1).unwrap()).unwrap(), n);
    let light: Value = serde_json::from_slice(&plain[1].1).unwrap();
    assert_eq!(light["tidings_fetch"]["id"], "n.big:1");
    let summary: Value = serde_json::from_slice(&plain[2].1).unwrap();
    assert_eq!(summary["tidings_summary"]["count"], 3);
}

#[tokio::test]
async fn the_vapid_jwt_is_cached_per_origin_and_renewed_with_twelve_hours_left() {
    let rig = web_push_rig(WebPushOptions::default()).await;
    let other = MockWebPush::start(WebPushOptions::default()).await.unwrap();
    let (a, ka) = rig.mock.subscription("a");
    let (b, kb) = other.subscription("b");
    let msg = PushMessage::notification(notification("n1", Priority::Important, 10));
    for token in [&a, &a, &b] {
        assert!(matches!(rig.dispatcher.deliver(&web_address(token), &msg).await, Delivery::Accepted { .. }));
    }
    rig.clock.advance(Duration::from_secs(11 * 3600));
    rig.mock.set_clock_offset_ms(11 * 3600 * 1000);
    assert!(matches!(rig.dispatcher.deliver(&web_address(&a), &msg).await, Delivery::Accepted { .. }));
    rig.clock.advance(Duration::from_secs(2 * 3600));
    rig.mock.set_clock_offset_ms(13 * 3600 * 1000);
    assert!(matches!(rig.dispatcher.deliver(&web_address(&a), &msg).await, Delivery::Accepted { .. }));
    let jwt = |r: &tidings_push_mocks::RecordedWebPush| r.headers["authorization"].clone();
    let received = rig.mock.received();
    assert_eq!(received.len(), 4);
    assert_eq!(jwt(&received[0]), jwt(&received[1]), "cached");
    assert_eq!(jwt(&received[1]), jwt(&received[2]), "still valid for more than 12 hours");
    assert_ne!(jwt(&received[2]), jwt(&received[3]), "renewed");
    assert_ne!(jwt(&other.received()[0]), jwt(&received[0]), "another origin, another audience");
    assert_eq!(other.received()[0].vapid_claims.as_ref().unwrap()["aud"], other.origin());
    decrypt_received(&rig.mock, &[("a", &ka)]);
    decrypt_received(&other, &[("b", &kb)]);
}

#[tokio::test]
async fn web_push_retries_after_retry_after_and_deletes_gone_subscriptions_only() {
    let rig = web_push_rig(WebPushOptions::default()).await;
    let (sub, keys) = rig.mock.subscription("s");
    let msg = PushMessage::notification(notification("n1", Priority::Important, 10));
    // 429 with Retry-After: 1 → sent again no sooner than a second later.
    rig.mock.script([WebPushReply::too_many(1)]);
    let d = rig.dispatcher.deliver(&web_address(&sub), &msg).await;
    assert!(matches!(d, Delivery::Accepted { attempts: 2, .. }), "{d:?}");
    let r = rig.mock.received();
    assert_eq!((r[0].answered, r[1].answered), (429, 201));
    assert!(r[1].at.duration_since(r[0].at) >= Duration::from_secs(1), "waited for Retry-After");
    // 5xx: retried with backoff.
    rig.mock.script([WebPushReply::status(503), WebPushReply::status(500)]);
    assert!(matches!(rig.dispatcher.deliver(&web_address(&sub), &msg).await, Delivery::Accepted { attempts: 3, .. }));
    // A long Retry-After is handed back, not slept through.
    rig.mock.script([WebPushReply { status: 429, retry_after: Some("600".into()) }]);
    let started = Instant::now();
    let d = rig.dispatcher.deliver(&web_address(&sub), &msg).await;
    assert!(matches!(&d, Delivery::RetryLater { after, .. } if *after >= Duration::from_secs(600)), "{d:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    // 413: the payload is refused, the subscription stays.
    rig.mock.script([WebPushReply::status(413)]);
    assert!(matches!(rig.dispatcher.deliver(&web_address(&sub), &msg).await, Delivery::PayloadRejected { .. }));
    // 404 and 410: the subscription is gone.
    rig.mock.script([WebPushReply::status(404)]);
    assert!(matches!(rig.dispatcher.deliver(&web_address(&sub), &msg).await, Delivery::DeleteAddress { .. }));
    rig.mock.unsubscribe("s");
    let d = rig.dispatcher.deliver(&web_address(&sub), &msg).await;
    assert!(matches!(&d, Delivery::DeleteAddress { reason } if reason.contains("410")), "{d:?}");
    decrypt_received(&rig.mock, &[("s", &keys)]);
}

#[tokio::test]
async fn web_push_stops_after_repeated_vapid_refusals_and_says_so() {
    let rig = web_push_rig(WebPushOptions::default()).await;
    let (sub, keys) = rig.mock.subscription("s");
    let msg = PushMessage::notification(notification("n1", Priority::Important, 10));
    // One refusal may be about one subscription (made with an older key): refused, provider still running.
    rig.mock.script([WebPushReply::status(403)]);
    assert!(matches!(rig.dispatcher.deliver(&web_address(&sub), &msg).await, Delivery::Rejected { .. }));
    assert!(matches!(rig.dispatcher.deliver(&web_address(&sub), &msg).await, Delivery::Accepted { .. }));
    // Three in a row: the key is wrong for everyone.
    rig.mock.script([WebPushReply::status(403), WebPushReply::status(401), WebPushReply::status(403)]);
    for _ in 0..2 {
        assert!(matches!(rig.dispatcher.deliver(&web_address(&sub), &msg).await, Delivery::Rejected { .. }));
    }
    let d = rig.dispatcher.deliver(&web_address(&sub), &msg).await;
    assert!(matches!(&d, Delivery::ProviderStopped { provider: Provider::WebPush, .. }), "{d:?}");
    let count = rig.mock.count();
    let d = rig.dispatcher.deliver(&web_address(&sub), &msg).await;
    assert!(matches!(d, Delivery::ProviderStopped { .. }));
    assert_eq!(rig.mock.count(), count, "a stopped provider sends nothing");
    let health = rig.dispatcher.health();
    assert!(health[0].stopped.as_deref().is_some_and(|r| r.contains("403")), "{health:?}");
    assert!(health[1].stopped.is_none() && !health[1].configured);
    decrypt_received(&rig.mock, &[("s", &keys)]);
}

// ---- APNs -------------------------------------------------------------------------------------------------

struct ApnsRig {
    mock: MockApns,
    sandbox: MockApns,
    clock: Arc<ManualClock>,
    dispatcher: Dispatcher,
}

const TOPIC: &str = "dev.tidings.example";
const DEVICE: &str = "5f3a9d00c91e5f3a9d00c91e5f3a9d00c91e5f3a9d00c91e5f3a9d00c91e0001";

async fn apns_rig_with(key: &ApnsTestKey, signing: &ApnsTestKey) -> ApnsRig {
    let mock = MockApns::start(ApnsOptions::for_key(key, TOPIC)).await.unwrap();
    let sandbox = MockApns::start(ApnsOptions::for_key(key, TOPIC)).await.unwrap();
    let clock = ManualClock::at_real_now();
    let credentials = ApnsCredentials {
        key: jsonwebtoken::EncodingKey::from_ec_pem(signing.p8_pem.as_bytes()).unwrap(),
        key_id: signing.key_id.clone(),
        team_id: signing.team_id.clone(),
        topic: TOPIC.into(),
        production_url: mock.url(),
        sandbox_url: sandbox.url(),
    };
    let sender = ApnsSender::new(credentials, &roots(), clock.clone());
    let dispatcher = Dispatcher::new(None, Some(sender), None, retry_quickly(), clock.clone());
    ApnsRig { mock, sandbox, clock, dispatcher }
}

async fn apns_rig() -> ApnsRig {
    let key = ApnsTestKey::generate();
    apns_rig_with(&key, &key).await
}

fn apns(token: &str, registered_at: u64) -> PushAddress<'_> {
    PushAddress { platform: PushPlatform::Apns, token, registered_at }
}

#[tokio::test]
async fn apns_requests_carry_the_headers_token_and_payload_apple_expects() {
    let rig = apns_rig().await;
    let n = notification("n-1", Priority::Important, 40);
    let d = rig.dispatcher.deliver(&apns(DEVICE, 1), &PushMessage::notification(n.clone()).with_badge(4)).await;
    assert!(
        matches!(&d, Delivery::Accepted { provider_id: Some(id), attempts: 1, .. } if id.starts_with("00000000-")),
        "{d:?}"
    );
    let mut info = PushMessage::notification(notification("n-2", Priority::Informational, 5));
    info.collapse = Some("likes:p-981".into());
    assert!(matches!(rig.dispatcher.deliver(&apns(DEVICE, 1), &info).await, Delivery::Accepted { .. }));
    let r = rig.mock.received();
    assert_eq!(r.len(), 2);
    let h = &r[0].headers;
    assert_eq!(r[0].device, DEVICE);
    assert_eq!(h["apns-topic"], TOPIC);
    assert_eq!(h["apns-push-type"], "alert");
    assert_eq!(h["apns-priority"], "10");
    assert_eq!(h["apns-collapse-id"], "n-1");
    let expiration: u64 = h["apns-expiration"].parse().unwrap();
    assert_eq!(expiration, rig.clock.now_ms() / 1000 + 86_400);
    assert_eq!(r[1].headers["apns-priority"], "5");
    assert_eq!(r[1].headers["apns-collapse-id"], "likes:p-981");
    // The provider token: ES256 with kid, iss = team, iat now (the mock verified the signature).
    let header = jsonwebtoken::decode_header(&r[0].jwt).unwrap();
    assert_eq!(header.kid.as_deref(), Some("ABC123DEFG"));
    assert_eq!(r[0].claims["iss"], "TEAM456XYZ");
    assert_eq!(r[0].claims["iat"], rig.clock.now_ms() / 1000);
    // The payload: aps for the system, the envelope for the SDK.
    let p = &r[0].payload;
    assert_eq!(p["aps"]["badge"], 4);
    assert_eq!(p["aps"]["mutable-content"], 1);
    assert_eq!(p["aps"]["interruption-level"], "active");
    assert_eq!(r[1].payload["aps"]["interruption-level"], "passive");
    assert_eq!(decode_push_payload(&p.to_string()).unwrap(), n);
    // apns_sandbox registrations go to the sandbox endpoint.
    let sandbox = PushAddress { platform: PushPlatform::ApnsSandbox, token: DEVICE, registered_at: 1 };
    assert!(matches!(rig.dispatcher.deliver(&sandbox, &summary()).await, Delivery::Accepted { .. }));
    assert_eq!((rig.mock.count(), rig.sandbox.count()), (2, 1));
    assert_eq!(rig.sandbox.received()[0].payload["tidings_summary"]["kind"], "quiet_hours");
}

#[tokio::test]
async fn apns_multiplexes_one_connection_and_renews_its_token_before_the_hour() {
    let rig = apns_rig().await;
    let msg = PushMessage::notification(notification("n", Priority::Important, 10));
    let sends = (0..24).map(|i| {
        let token = format!("{DEVICE}{i:02x}");
        let (d, msg) = (&rig.dispatcher, &msg);
        async move { d.deliver(&apns(&token, 1), msg).await }
    });
    let results = futures_util::future::join_all(sends).await;
    assert!(results.iter().all(|d| matches!(d, Delivery::Accepted { .. })), "{results:?}");
    assert_eq!(rig.mock.connections(), 1, "24 concurrent pushes, one HTTP/2 connection");
    let sender = rig.dispatcher.apns().unwrap();
    assert_eq!(sender.tokens_issued(), 1);
    // 49 minutes on: the same token; 51 minutes on: a new one (before Apple's hour).
    for minutes in [49u64, 2] {
        rig.clock.advance(Duration::from_secs(minutes * 60));
        rig.mock.set_clock_offset_ms(rig.clock.now_ms() as i64 - real_now_ms() as i64);
        assert!(matches!(rig.dispatcher.deliver(&apns(DEVICE, 1), &msg).await, Delivery::Accepted { .. }));
    }
    assert_eq!(sender.tokens_issued(), 2);
    let jwts: Vec<String> = rig.mock.received().iter().map(|r| r.jwt.clone()).collect();
    assert_eq!(jwts[24], jwts[0]);
    assert_ne!(jwts[25], jwts[0]);
    assert_eq!(rig.mock.connections(), 1);
}

fn real_now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

#[tokio::test]
async fn an_expired_provider_token_is_renewed_once_and_a_young_one_is_a_clock_error() {
    let rig = apns_rig().await;
    let msg = PushMessage::notification(notification("n", Priority::Important, 10));
    assert!(matches!(rig.dispatcher.deliver(&apns(DEVICE, 1), &msg).await, Delivery::Accepted { .. }));
    // 25 minutes later APNs says the token expired: renewed (older than 20 minutes) and sent again at once.
    rig.clock.advance(Duration::from_secs(25 * 60));
    rig.mock.set_clock_offset_ms(rig.clock.now_ms() as i64 - real_now_ms() as i64);
    rig.mock.script([ApnsReply::error(403, "ExpiredProviderToken")]);
    let d = rig.dispatcher.deliver(&apns(DEVICE, 1), &msg).await;
    assert!(matches!(d, Delivery::Accepted { attempts: 2, .. }), "{d:?}");
    assert_eq!(rig.dispatcher.apns().unwrap().tokens_issued(), 2);
    let r = rig.mock.received();
    assert_ne!(r[1].jwt, r[2].jwt);
    // Again at once: a token seconds old refused as expired means the clock is wrong. Stop and say so.
    rig.mock.script([ApnsReply::error(403, "ExpiredProviderToken")]);
    let d = rig.dispatcher.deliver(&apns(DEVICE, 1), &msg).await;
    assert!(matches!(&d, Delivery::ProviderStopped { reason, .. } if reason.contains("clock")), "{d:?}");
    assert!(rig.dispatcher.health()[1].stopped.is_some());
}

#[tokio::test]
async fn a_goaway_replaces_the_connection() {
    let rig = apns_rig().await;
    let msg = PushMessage::notification(notification("n", Priority::Important, 10));
    assert!(matches!(rig.dispatcher.deliver(&apns(DEVICE, 1), &msg).await, Delivery::Accepted { .. }));
    // GOAWAY instead of an answer: the push fails on that connection, goes again on a new one.
    rig.mock.script([ApnsReply::GoAway(2)]);
    let d = rig.dispatcher.deliver(&apns(DEVICE, 1), &msg).await;
    assert!(matches!(d, Delivery::Accepted { attempts: 2, .. }), "{d:?}");
    assert_eq!(rig.mock.connections(), 2);
    assert_eq!(rig.dispatcher.apns().unwrap().reconnects(), 1);
    let r = rig.mock.received();
    assert_eq!((r[1].answered, r[1].connection), (0, 1), "the GOAWAY'd request");
    assert_eq!((r[2].answered, r[2].connection), (200, 2), "sent again on the new connection");
    // A graceful GOAWAY after an answer: the next push opens a new connection.
    rig.mock.script([ApnsReply::OkThenGoAway]);
    assert!(matches!(rig.dispatcher.deliver(&apns(DEVICE, 1), &msg).await, Delivery::Accepted { attempts: 1, .. }));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(matches!(rig.dispatcher.deliver(&apns(DEVICE, 1), &msg).await, Delivery::Accepted { .. }));
    assert_eq!(rig.mock.connections(), 3);
    assert_eq!(rig.mock.received().last().unwrap().connection, 3);
    // Three 5xx in a row: the connection is presumed stuck and replaced; the fourth attempt goes on a new one.
    rig.mock.script([
        ApnsReply::error(500, "InternalServerError"),
        ApnsReply::error(500, "InternalServerError"),
        ApnsReply::error(500, "InternalServerError"),
    ]);
    let d = rig.dispatcher.deliver(&apns(DEVICE, 1), &msg).await;
    assert!(matches!(d, Delivery::Accepted { attempts: 4, .. }), "{d:?}");
    assert_eq!(rig.mock.connections(), 4);
    assert_eq!(rig.dispatcher.apns().unwrap().reconnects(), 2);
}

/// What the sender sees when APNs answers a request with a GOAWAY and closes: the connection closed under the
/// request, which replaces the connection (`a_goaway_replaces_the_connection`).
#[tokio::test]
async fn a_goaway_and_close_is_recognised_in_the_request_error() {
    use tidings_server::push::classify::TransportFailure;
    use tidings_server::push::http::{Timeouts, h2_client, transport_failure};
    let key = ApnsTestKey::generate();
    let mock = MockApns::start(ApnsOptions::for_key(&key, TOPIC)).await.unwrap();
    mock.script([ApnsReply::GoAway(2)]);
    let header = jsonwebtoken::Header {
        kid: Some(key.key_id.clone()),
        ..jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256)
    };
    let claims = serde_json::json!({"iss": key.team_id, "iat": real_now_ms() / 1000});
    let jwt =
        jsonwebtoken::encode(&header, &claims, &jsonwebtoken::EncodingKey::from_ec_pem(key.p8_pem.as_bytes()).unwrap())
            .unwrap();
    let e = h2_client(&roots(), Timeouts::default())
        .post(format!("{}/3/device/{DEVICE}", mock.url()))
        .header("authorization", format!("bearer {jwt}"))
        .header("apns-topic", TOPIC)
        .header("apns-push-type", "alert")
        .body(r#"{"aps":{}}"#)
        .send()
        .await
        .unwrap_err();
    let failure = transport_failure(&e);
    assert!(matches!(&failure, TransportFailure::Closed(why) if why.contains("broken pipe")), "{failure:?}");
    assert!(matches!(
        tidings_server::push::classify::classify_transport(&failure),
        tidings_server::push::Verdict::Retry { reconnect: true, .. }
    ));
}

#[tokio::test]
async fn apns_410_deletes_only_addresses_older_than_its_timestamp() {
    let rig = apns_rig().await;
    let msg = PushMessage::notification(notification("n", Priority::Important, 10));
    let dead_since = 1_760_000_000_000u64;
    rig.mock.unregister(DEVICE, dead_since);
    let d = rig.dispatcher.deliver(&apns(DEVICE, dead_since - 1), &msg).await;
    assert!(matches!(&d, Delivery::DeleteAddress { reason } if reason == "Unregistered"), "{d:?}");
    // Registered again after APNs learnt it was dead (an app reinstalled with the same token): keep it.
    let d = rig.dispatcher.deliver(&apns(DEVICE, dead_since + 1), &msg).await;
    assert!(matches!(d, Delivery::KeepAddress { .. }), "{d:?}");
    // BadDeviceToken deletes; 413 never does; 429 is retried after Retry-After.
    rig.mock.script([ApnsReply::error(400, "BadDeviceToken")]);
    let other = format!("{DEVICE}ff");
    assert!(matches!(rig.dispatcher.deliver(&apns(&other, 1), &msg).await, Delivery::DeleteAddress { .. }));
    rig.mock.script([ApnsReply::error(413, "PayloadTooLarge")]);
    assert!(matches!(rig.dispatcher.deliver(&apns(&other, 1), &msg).await, Delivery::PayloadRejected { .. }));
    rig.mock.script([ApnsReply::too_many(1)]);
    let d = rig.dispatcher.deliver(&apns(&other, 1), &msg).await;
    assert!(matches!(d, Delivery::Accepted { attempts: 2, .. }), "{d:?}");
    let r = rig.mock.received();
    let (a, b) = (&r[r.len() - 2], &r[r.len() - 1]);
    assert_eq!((a.answered, b.answered), (429, 200));
    assert!(b.at.duration_since(a.at) >= Duration::from_secs(1));
}

#[tokio::test]
async fn deletions_pause_when_a_batch_turns_bad() {
    let rig = apns_rig().await;
    let msg = PushMessage::notification(notification("n", Priority::Important, 10));
    let tokens: Vec<String> = (0..12).map(|i| format!("{DEVICE}{i:02x}")).collect();
    for t in &tokens {
        rig.mock.unregister(t, u64::MAX);
    }
    let mut outcomes = Vec::new();
    for t in &tokens {
        outcomes.push(rig.dispatcher.deliver(&apns(t, 1), &msg).await);
    }
    let deleted = outcomes.iter().filter(|d| matches!(d, Delivery::DeleteAddress { .. })).count();
    assert_eq!(deleted, 9, "{outcomes:?}");
    assert!(
        outcomes[9..]
            .iter()
            .all(|d| matches!(d, Delivery::KeepAddress { reason } if reason.starts_with("deletions paused")))
    );
    assert!(rig.dispatcher.health()[1].deletions_paused);
}

#[tokio::test]
async fn a_bad_apns_key_stops_the_provider() {
    // The sender signs with a key APNs does not know.
    let rig = apns_rig_with(&ApnsTestKey::generate(), &ApnsTestKey::generate()).await;
    let msg = PushMessage::notification(notification("n", Priority::Important, 10));
    let d = rig.dispatcher.deliver(&apns(DEVICE, 1), &msg).await;
    assert!(
        matches!(&d, Delivery::ProviderStopped { provider: Provider::Apns, reason } if reason == "InvalidProviderToken"),
        "{d:?}"
    );
    let d = rig.dispatcher.deliver(&apns(DEVICE, 1), &msg).await;
    assert!(matches!(d, Delivery::ProviderStopped { .. }));
    assert_eq!(rig.mock.count(), 1, "nothing sent once stopped");
    assert_eq!(rig.dispatcher.health()[1].stopped.as_deref(), Some("InvalidProviderToken"));
    // Other providers are not configured here, and say so.
    let web = PushAddress { platform: PushPlatform::WebPush, token: "{}", registered_at: 1 };
    assert_eq!(rig.dispatcher.deliver(&web, &msg).await, Delivery::NotConfigured { provider: Provider::WebPush });
}

// ---- FCM --------------------------------------------------------------------------------------------------

struct FcmRig {
    mock: MockFcm,
    clock: Arc<ManualClock>,
    dispatcher: Dispatcher,
}

async fn fcm_rig(options: FcmOptions, edit: impl FnOnce(&mut Value)) -> FcmRig {
    let mock = MockFcm::start(options).await.unwrap();
    let clock = ManualClock::at_real_now();
    let mut json: Value = serde_json::from_str(&mock.service_account_json()).unwrap();
    edit(&mut json);
    let (account, key) = ServiceAccount::parse(&json.to_string()).unwrap();
    let endpoints = FcmEndpoints { api_url: mock.url(), token_url: None };
    let sender = FcmSender::new(account, key, endpoints, &roots(), clock.clone());
    let dispatcher = Dispatcher::new(None, None, Some(sender), retry_quickly(), clock.clone());
    FcmRig { mock, clock, dispatcher }
}

fn fcm(token: &str) -> PushAddress<'_> {
    PushAddress { platform: PushPlatform::Fcm, token, registered_at: 1 }
}

#[tokio::test]
async fn fcm_gets_an_access_token_once_and_sends_data_messages_the_client_reads() {
    let rig = fcm_rig(FcmOptions::default(), |_| {}).await;
    let n = notification("n-1", Priority::Critical, 30);
    let sends = (0..10).map(|i| {
        let msg = PushMessage::notification(if i == 0 {
            n.clone()
        } else {
            notification(&format!("n-{i}x"), Priority::Informational, 5)
        });
        let d = &rig.dispatcher;
        async move { d.deliver(&fcm("fcm-token-1"), &msg).await }
    });
    let results = futures_util::future::join_all(sends).await;
    assert!(results.iter().all(|d| matches!(d, Delivery::Accepted { provider_id: Some(name), .. } if name.starts_with("projects/tidings-test/messages/"))), "{results:?}");
    assert_eq!(rig.mock.token_requests(), 1, "ten concurrent sends, one token request");
    let assertion = &rig.mock.assertions()[0];
    assert_eq!(assertion["iss"], "push@tidings-test.iam.gserviceaccount.com");
    assert_eq!(assertion["aud"], rig.mock.token_url());
    assert_eq!(assertion["scope"], "https://www.googleapis.com/auth/firebase.messaging");
    let received = rig.mock.received();
    let first =
        received.iter().find(|r| r.message["data"]["tidings"].as_str().is_some_and(|t| t.contains("\"n-1\""))).unwrap();
    assert_eq!(first.bearer, "mock-access-1");
    assert_eq!(first.message["token"], "fcm-token-1");
    assert_eq!(first.message["android"]["priority"], "HIGH");
    assert_eq!(first.message["android"]["ttl"], "86400s");
    assert!(first.message.get("notification").is_none(), "data-only: the app's service sees every message");
    assert!(first.message["android"].get("collapse_key").is_none());
    // What FirebaseMessagingService hands the SDK: RemoteMessage.data, all strings.
    let data = first.message["data"].to_string();
    assert_eq!(decode_push_payload(&data).unwrap(), n);
    let info =
        received.iter().find(|r| r.message["data"]["tidings"].as_str().is_some_and(|t| t.contains("n-1x"))).unwrap();
    assert_eq!(info.message["android"]["priority"], "NORMAL");
    assert_eq!(info.message["android"]["ttl"], "14400s");
    // A caller's collapse key, and the lightweight form when the envelope is too large.
    let mut msg = PushMessage::notification(notification("n-big", Priority::Important, 4000));
    msg.collapse = Some("thread-9".into());
    assert!(matches!(
        rig.dispatcher.deliver(&fcm("fcm-token-1"), &msg).await,
        Delivery::Accepted { form: Form::Lightweight, .. }
    ));
    let last = rig.mock.received().pop().unwrap();
    assert_eq!(last.message["android"]["collapse_key"], "thread-9");
    assert_eq!(last.message["data"]["tidings_fetch"], r#"{"id":"n-big","title":"Bob commented"}"#);
}

#[tokio::test]
async fn the_access_token_is_renewed_five_minutes_before_it_expires_and_after_a_401() {
    let rig = fcm_rig(FcmOptions { token_lifetime_s: 600, ..FcmOptions::default() }, |_| {}).await;
    let msg = PushMessage::notification(notification("n", Priority::Important, 10));
    let sync = |rig: &FcmRig| rig.mock.set_clock_offset_ms(rig.clock.now_ms() as i64 - real_now_ms() as i64);
    assert!(matches!(rig.dispatcher.deliver(&fcm("t"), &msg).await, Delivery::Accepted { .. }));
    rig.clock.advance(Duration::from_secs(4 * 60));
    sync(&rig);
    assert!(matches!(rig.dispatcher.deliver(&fcm("t"), &msg).await, Delivery::Accepted { .. }));
    assert_eq!(rig.mock.token_requests(), 1, "cached with six minutes left");
    rig.clock.advance(Duration::from_secs(2 * 60));
    sync(&rig);
    assert!(matches!(rig.dispatcher.deliver(&fcm("t"), &msg).await, Delivery::Accepted { .. }));
    assert_eq!(rig.mock.token_requests(), 2, "renewed with four minutes left");
    // Revoked: 401, a new token, the same push again.
    rig.mock.revoke_tokens();
    let d = rig.dispatcher.deliver(&fcm("t"), &msg).await;
    assert!(matches!(d, Delivery::Accepted { attempts: 2, .. }), "{d:?}");
    assert_eq!(rig.mock.token_requests(), 3);
    let bearers: Vec<String> = rig.mock.received().iter().map(|r| r.bearer.clone()).collect();
    assert_eq!(bearers, ["mock-access-1", "mock-access-1", "mock-access-2", "mock-access-2", "mock-access-3"]);
}

#[tokio::test]
async fn fcm_errors_delete_retry_or_stop_as_classified() {
    let rig = fcm_rig(FcmOptions::default(), |_| {}).await;
    let msg = PushMessage::notification(notification("n", Priority::Important, 10));
    rig.mock.script([FcmReply::error(404, "UNREGISTERED")]);
    assert!(matches!(rig.dispatcher.deliver(&fcm("t"), &msg).await, Delivery::DeleteAddress { .. }));
    rig.mock.script([FcmReply { retry_after: Some("1".into()), ..FcmReply::error(429, "QUOTA_EXCEEDED") }]);
    let d = rig.dispatcher.deliver(&fcm("t"), &msg).await;
    assert!(matches!(d, Delivery::Accepted { attempts: 2, .. }), "{d:?}");
    let r = rig.mock.received();
    assert!(r[2].at.duration_since(r[1].at) >= Duration::from_secs(1), "waited for Retry-After");
    rig.mock.script([FcmReply::error(503, "UNAVAILABLE")]);
    assert!(matches!(rig.dispatcher.deliver(&fcm("t"), &msg).await, Delivery::Accepted { attempts: 2, .. }));
    rig.mock.script([FcmReply::error(401, "THIRD_PARTY_AUTH_ERROR")]);
    let d = rig.dispatcher.deliver(&fcm("t"), &msg).await;
    assert!(
        matches!(&d, Delivery::ProviderStopped { provider: Provider::Fcm, reason } if reason.contains("THIRD_PARTY_AUTH_ERROR")),
        "{d:?}"
    );
}

#[tokio::test]
async fn a_service_account_the_token_endpoint_refuses_stops_fcm() {
    let rig = fcm_rig(FcmOptions::default(), |json| {
        json["client_email"] = "someone-else@example.iam.gserviceaccount.com".into();
    })
    .await;
    let msg = PushMessage::notification(notification("n", Priority::Important, 10));
    let d = rig.dispatcher.deliver(&fcm("t"), &msg).await;
    assert!(
        matches!(&d, Delivery::ProviderStopped { provider: Provider::Fcm, reason } if reason.contains("invalid_grant")),
        "{d:?}"
    );
    assert_eq!(rig.mock.token_requests(), 1);
    assert!(rig.mock.received().is_empty(), "no send without a token");
}
