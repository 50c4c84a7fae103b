//! The FFI surface, driven from Rust with Rust implementations of the foreign traits, against a real server.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tidings_ffi::*;
use tidings_server::{PublishRequest, ServerConfig};

/// Pulls every event of a client (as the Swift and Kotlin wrappers do) into a log.
#[derive(Default)]
struct Recorder {
    events: Mutex<Vec<String>>,
    notifications: Mutex<Vec<Notification>>,
}

impl Recorder {
    fn record(&self, event: TidingsEvent) {
        let line = match &event {
            TidingsEvent::Notification { notification } => {
                self.notifications.lock().unwrap().push(notification.clone());
                format!("notification {}", notification.id)
            }
            TidingsEvent::Digest { digest } => format!("digest {} {}", digest.group, digest.count),
            TidingsEvent::StateChanged { state } => format!("state {state:?}"),
            TidingsEvent::Continuity { stream, continuity } => format!("continuity {stream} {continuity:?}"),
            TidingsEvent::SubscriptionFailed { stream, code, .. } => format!("refused {stream} {code}"),
            TidingsEvent::PushRegistered { platform } => format!("push {platform:?}"),
            TidingsEvent::PushRegistrationFailed { platform, code, .. } => format!("push refused {platform:?} {code}"),
            TidingsEvent::InboxCounts { counts } => format!("inbox unread {} v{}", counts.unread, counts.version),
            TidingsEvent::InboxChanged => "inbox changed".into(),
        };
        self.events.lock().unwrap().push(line);
    }

    /// Starts pulling `client`'s events.
    fn pull(self: &Arc<Self>, client: &Arc<TidingsClient>) -> tokio::task::JoinHandle<()> {
        let (me, client) = (self.clone(), client.clone());
        tokio::spawn(async move {
            while let Some(e) = client.next_event().await {
                me.record(e);
            }
        })
    }

    async fn wait_for(&self, what: &str) {
        for _ in 0..400 {
            if self.events.lock().unwrap().iter().any(|e| e.contains(what)) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("never saw {what:?}; events: {:#?}", self.events.lock().unwrap());
    }
}

struct Tokens {
    token: String,
    calls: AtomicU32,
    delay: Duration,
}

#[async_trait::async_trait]
impl TokenProvider for Tokens {
    async fn fetch_token(&self, _force_refresh: bool) -> Result<String, TokenProviderError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(self.delay).await;
        Ok(self.token.clone())
    }
}

fn tokens(token: String) -> Arc<Tokens> {
    Arc::new(Tokens { token, calls: AtomicU32::new(0), delay: Duration::ZERO })
}

fn config(server: &tidings_server::RunningServer) -> ClientConfig {
    let mut c = default_config(server.ws_url());
    c.backoff_base_ms = 50;
    c.backoff_cap_ms = 500;
    c.batch_window_ms = 0;
    c
}

fn payload(id: &str, offset: u64, epoch: &str) -> String {
    format!(
        r#"{{"aps":{{"alert":"hi"}},"tidings":"{{\"id\":\"{id}\",\"stream\":\"user:alice\",\"offset\":{offset},\"epoch\":\"{epoch}\",\"type\":\"t\",\"priority\":\"important\",\"persistence\":\"bufferable\",\"created_at\":1}}"}}"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connects_and_delivers_events_in_order() {
    let server = tidings_server::start(ServerConfig::for_tests()).await.unwrap();
    let token = tidings_server::issue_token(&server.config().jwt_secret, "alice", &["news"], None);
    let client = TidingsClient::new(config(&server), tokens(token)).unwrap();
    let listener = Arc::new(Recorder::default());
    let pulling = listener.pull(&client);
    assert_eq!(client.state(), ConnectionState::Idle, "nothing happens before connect()");
    client.connect().await.unwrap();
    client.subscribe("topic:news".into()).unwrap();
    listener.wait_for("continuity topic:news Fresh").await;
    let publisher = server.publisher();
    for id in ["n1", "n2", "n3"] {
        publisher.publish(PublishRequest::new("t").user("alice").id(id).title("hello")).await.unwrap();
    }
    listener.wait_for("notification n3").await;
    let n = listener.notifications.lock().unwrap()[0].clone();
    assert_eq!(
        (n.id.as_str(), n.stream.as_str(), n.offset, n.priority),
        ("n1", "user:alice", Some(1), Priority::Important)
    );
    let ids: Vec<String> = listener.notifications.lock().unwrap().iter().map(|n| n.id.clone()).collect();
    assert_eq!(ids, ["n1", "n2", "n3"]);
    assert_eq!(client.stats().delivered, 3);
    client.close().await;
    assert_eq!(client.state(), ConnectionState::Closed);
    // The event log ends after the last event: the pulling task finishes by itself.
    tokio::time::timeout(Duration::from_secs(5), pulling).await.expect("next_event returns None after close").unwrap();
    assert!(listener.events.lock().unwrap().last().unwrap().contains("Closed"));
    server.shutdown().await;
}

/// Defect 7 of issue 12: one semantics on every platform, implemented here once — events wait in one bounded
/// queue; while `event_capacity` wait, the client stops reading the server; each is taken once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_wait_in_a_bounded_queue_and_each_is_taken_once_in_order() {
    let server = tidings_server::start(ServerConfig::for_tests()).await.unwrap();
    let token = tidings_server::issue_token(&server.config().jwt_secret, "alice", &[], None);
    let mut c = config(&server);
    c.event_capacity = 4;
    let client = TidingsClient::new(c, tokens(token)).unwrap();
    client.connect().await.unwrap();
    // The user stream is subscribed once its continuity event arrives (connect() resolves at `welcome`).
    loop {
        match client.next_event().await {
            Some(TidingsEvent::Continuity { .. }) => break,
            Some(_) => {}
            None => panic!("the event log ended"),
        }
    }
    // Nobody pulls: the events wait; past the capacity the client stops reading (the engine sees no more frames).
    let publisher = server.publisher();
    for i in 0..40 {
        publisher.publish(PublishRequest::new("t").user("alice").id(format!("q{i}"))).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let received = client.stats().notifications_received;
    assert!(received < 40, "the client kept reading while the app did not take its events ({received} of 40)");
    // Two pullers: every event exactly once between them, each one's share in order.
    let (a, b) = (Arc::new(Recorder::default()), Arc::new(Recorder::default()));
    let (ta, tb) = (a.pull(&client), b.pull(&client));
    let all = || -> Vec<String> {
        let mut ids: Vec<String> = a.notifications.lock().unwrap().iter().map(|n| n.id.clone()).collect();
        ids.extend(b.notifications.lock().unwrap().iter().map(|n| n.id.clone()));
        ids
    };
    for _ in 0..400 {
        if all().len() >= 40 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let mut ids = all();
    ids.sort_by_key(|id| id[1..].parse::<u32>().unwrap());
    assert_eq!(ids, (0..40).map(|i| format!("q{i}")).collect::<Vec<_>>(), "each once, none lost");
    for r in [&a, &b] {
        let own: Vec<u32> = r.notifications.lock().unwrap().iter().map(|n| n.id[1..].parse().unwrap()).collect();
        assert!(own.windows(2).all(|w| w[0] < w[1]), "in order: {own:?}");
    }
    client.close().await;
    let _ = tokio::join!(ta, tb);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_arguments_get_clear_errors() {
    let err = TidingsClient::new(default_config("http://x".into()), tokens("t".into())).unwrap_err();
    assert!(matches!(&err, TidingsError::InvalidArgument { message } if message.contains("ws://")), "{err}");
    let mut c = default_config("ws://127.0.0.1:9/v1/ws".into());
    c.store_path = Some("/nonexistent-dir/tidings.json".into());
    let err = TidingsClient::new(c, tokens("t".into())).unwrap_err();
    assert!(err.to_string().contains("directory does not exist"), "{err}");
    let mut c = default_config("wss://127.0.0.1:9/v1/ws".into());
    c.extra_root_certificates = vec!["not a certificate".into()];
    let err = TidingsClient::new(c, tokens("t".into())).unwrap_err();
    assert!(err.to_string().contains("extra_root_certificates[0]"), "{err}");
    let mut c = default_config("ws://127.0.0.1:9/v1/ws".into());
    c.event_capacity = 0;
    assert!(matches!(TidingsClient::new(c, tokens("t".into())), Err(TidingsError::InvalidArgument { .. })));
    let client = TidingsClient::new(default_config("ws://127.0.0.1:9/v1/ws".into()), tokens("t".into())).unwrap();
    let err = client.subscribe("chat:1".into()).unwrap_err();
    assert!(matches!(err, TidingsError::InvalidArgument { .. }), "{err}");
    let err = client.ingest_push("{\"nope\":1}".into()).await.unwrap_err();
    assert!(matches!(err, TidingsError::InvalidPayload { .. }), "{err}");
    let err = client.register_push_token(PushPlatform::Apns, String::new()).unwrap_err();
    assert!(matches!(err, TidingsError::InvalidArgument { .. }), "{err}");
    let err = client.register_push_token(PushPlatform::WebPush, r#"{"endpoint":"https://x/y"}"#.into()).unwrap_err();
    assert!(err.to_string().contains("keys"), "a web_push token without keys is refused: {err}");
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_credentials_fail_connect_after_two_attempts() {
    let server = tidings_server::start(ServerConfig::for_tests()).await.unwrap();
    let provider = tokens("not-a-jwt".into());
    let client = TidingsClient::new(config(&server), provider.clone()).unwrap();
    let err = client.connect().await.unwrap_err();
    assert!(matches!(err, TidingsError::ConnectionFailed { reason: FailureReason::Unauthorized, .. }), "{err}");
    assert_eq!(client.stats().connection_attempts, 2);
    assert_eq!(provider.calls.load(Ordering::SeqCst), 2);
    assert!(matches!(client.state(), ConnectionState::Failed { .. }), "the state agrees with connect()");
    client.close().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_token_provider_is_asked_once_however_often_the_app_pokes() {
    let server = tidings_server::start(ServerConfig::for_tests()).await.unwrap();
    let token = tidings_server::issue_token(&server.config().jwt_secret, "alice", &[], None);
    let provider = Arc::new(Tokens { token, calls: AtomicU32::new(0), delay: Duration::from_millis(300) });
    let client = TidingsClient::new(config(&server), provider.clone()).unwrap();
    let connecting = {
        let client = client.clone();
        tokio::spawn(async move { client.connect().await })
    };
    for _ in 0..10 {
        client.network_changed(NetworkStatus::Available);
        client.app_will_enter_foreground();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    connecting.await.unwrap().unwrap();
    assert_eq!(provider.calls.load(Ordering::SeqCst), 1);
    assert_eq!(client.state(), ConnectionState::Connected, "the state agrees with connect()");
    client.close().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_changes_are_observed_from_the_core() {
    let server = tidings_server::start(ServerConfig::for_tests()).await.unwrap();
    let token = tidings_server::issue_token(&server.config().jwt_secret, "alice", &[], None);
    let client = TidingsClient::new(config(&server), tokens(token)).unwrap();
    let first = client.state();
    let watcher = {
        let client = client.clone();
        tokio::spawn(async move {
            let mut seen = vec![first];
            while *seen.last().unwrap() != ConnectionState::Connected {
                let last = seen.last().unwrap().clone();
                seen.push(client.next_state(last).await);
            }
            seen
        })
    };
    client.connect().await.unwrap();
    let seen = tokio::time::timeout(Duration::from_secs(10), watcher).await.unwrap().unwrap();
    assert_eq!(seen.first(), Some(&ConnectionState::Idle));
    assert_eq!(seen.last(), Some(&ConnectionState::Connected));
    client.close().await;
    server.shutdown().await;
}

/// Defect 8 of issue 12: the last assertion used to hold whatever dedup did (the client subscribed fresh, so
/// nothing was replayed). Here the app resumes from a cursor before the notification the extension showed: the
/// server replays it, and only dedup through the shared file keeps it from the app.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_extension_and_the_app_share_dedup_through_the_store_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("tidings.json").to_string_lossy().into_owned();
    let server = tidings_server::start(ServerConfig::for_tests()).await.unwrap();
    let token = tidings_server::issue_token(&server.config().jwt_secret, "alice", &[], None);
    let mut c = config(&server);
    c.store_path = Some(store.clone());
    // The app runs once: its cursor for user:alice is saved (fresh, before anything was published).
    let first = TidingsClient::new(c.clone(), tokens(token.clone())).unwrap();
    let log = Arc::new(Recorder::default());
    let pulling = log.pull(&first);
    first.connect().await.unwrap();
    log.wait_for("continuity user:alice Fresh").await;
    first.close().await;
    let _ = pulling.await;
    // While the app is not running, p1 is published and its push reaches the extension process.
    let receipt =
        server.publisher().publish(PublishRequest::new("t").user("alice").id("p1").title("hi")).await.unwrap();
    let d = &receipt.deliveries[0];
    let p1 = payload("p1", d.offset.unwrap(), &d.epoch);
    assert!(matches!(ingest_push_with_store(store.clone(), p1.clone(), None).await.unwrap(), PushOutcome::Show { .. }));
    assert_eq!(
        ingest_push_with_store(store.clone(), p1.clone(), None).await.unwrap(),
        PushOutcome::Duplicate { id: "p1".into() }
    );
    // The app starts again from the same file: it resumes from its cursor, the server replays p1, dedup drops it.
    let app = TidingsClient::new(c, tokens(token)).unwrap();
    let log = Arc::new(Recorder::default());
    let pulling = log.pull(&app);
    app.connect().await.unwrap();
    log.wait_for("continuity user:alice Resumed { replayed: 1 }").await;
    server.publisher().publish(PublishRequest::new("t").user("alice").id("p2").title("hi")).await.unwrap();
    log.wait_for("notification p2").await;
    assert!(!log.events.lock().unwrap().iter().any(|e| e == "notification p1"), "{:#?}", log.events.lock().unwrap());
    assert_eq!(app.stats().duplicates_dropped, 1, "the replayed p1 was dropped as a duplicate");
    assert_eq!(app.ingest_push(p1).await.unwrap(), PushOutcome::Duplicate { id: "p1".into() });
    let err = ingest_push_with_store(store, "[]".into(), None).await.unwrap_err();
    assert!(matches!(err, TidingsError::InvalidPayload { .. }), "{err}");
    app.close().await;
    let _ = pulling.await;
    server.shutdown().await;
}

/// Defect 3 of issue 12: the push path without a client built its own engine seeded with 0, so with an empty or
/// corrupt store every installation got the same device id. It now stores only seen ids; each app makes its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_push_path_without_a_client_gives_no_two_installations_one_device_id() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("a.json").to_string_lossy().into_owned();
    let corrupt = dir.path().join("b.json").to_string_lossy().into_owned();
    std::fs::write(&corrupt, "{ not json").unwrap();
    for store in [&empty, &corrupt] {
        assert!(matches!(
            ingest_push_with_store(store.clone(), payload("x1", 1, "e"), None).await.unwrap(),
            PushOutcome::Show { .. }
        ));
        let text = std::fs::read_to_string(store).unwrap();
        assert!(!text.contains("device_id"), "the push path made up a device id: {text}");
    }
    let mut ids: Vec<String> = Vec::new();
    for store in [empty, corrupt] {
        let mut c = default_config("ws://127.0.0.1:9/v1/ws".into());
        c.store_path = Some(store);
        let client = TidingsClient::new(c, tokens("t".into())).unwrap();
        assert_eq!(
            client.ingest_push(payload("x1", 1, "e")).await.unwrap(),
            PushOutcome::Duplicate { id: "x1".into() }
        );
        ids.push(client.device_id());
    }
    assert_ne!(ids[0], ids[1], "two installations, two device ids");
}
