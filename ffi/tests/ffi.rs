//! The FFI surface, driven from Rust with Rust implementations of the foreign traits, against a real server.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tidings_ffi::*;
use tidings_server::{PublishRequest, ServerConfig};

#[derive(Default)]
struct Recorder {
    events: Mutex<Vec<String>>,
    notifications: Mutex<Vec<Notification>>,
    panic_on: Mutex<Option<String>>,
}

impl EventListener for Recorder {
    fn on_notification(&self, notification: Notification) {
        if self.panic_on.lock().unwrap().as_deref() == Some(notification.id.as_str()) {
            panic!("listener bug");
        }
        self.events.lock().unwrap().push(format!("notification {}", notification.id));
        self.notifications.lock().unwrap().push(notification);
    }
    fn on_digest(&self, digest: Digest) {
        self.events.lock().unwrap().push(format!("digest {} {}", digest.group, digest.count));
    }
    fn on_state_changed(&self, state: ConnectionState) {
        self.events.lock().unwrap().push(format!("state {state:?}"));
    }
    fn on_continuity(&self, stream: String, continuity: Continuity) {
        self.events.lock().unwrap().push(format!("continuity {stream} {continuity:?}"));
    }
    fn on_subscription_failed(&self, stream: String, code: String, _message: String) {
        self.events.lock().unwrap().push(format!("refused {stream} {code}"));
    }
    fn on_push_registered(&self, platform: PushPlatform) {
        self.events.lock().unwrap().push(format!("push {platform:?}"));
    }
}

impl Recorder {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connects_delivers_and_survives_a_panicking_listener() {
    let server = tidings_server::start(ServerConfig::for_tests()).await.unwrap();
    let token = tidings_server::issue_token(&server.config().jwt_secret, "alice", &["news"], None);
    let listener = Arc::new(Recorder::default());
    *listener.panic_on.lock().unwrap() = Some("boom".into());
    let client = TidingsClient::new(config(&server), tokens(token), listener.clone()).unwrap();
    assert_eq!(client.state(), ConnectionState::Idle, "nothing happens before connect()");
    client.connect().await.unwrap();
    client.subscribe("topic:news".into()).unwrap();
    listener.wait_for("continuity topic:news Fresh").await;
    let publisher = server.publisher();
    for id in ["n1", "boom", "n2"] {
        publisher.publish(PublishRequest::new("t").user("alice").id(id).title("hello")).await.unwrap();
    }
    listener.wait_for("notification n2").await;
    let n = listener.notifications.lock().unwrap()[0].clone();
    assert_eq!(
        (n.id.as_str(), n.stream.as_str(), n.offset, n.priority),
        ("n1", "user:alice", Some(1), Priority::Important)
    );
    assert_eq!(client.stats().delivered, 3);
    client.close().await;
    assert_eq!(client.state(), ConnectionState::Closed);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_arguments_get_clear_errors() {
    let listener = Arc::new(Recorder::default());
    let err = TidingsClient::new(default_config("http://x".into()), tokens("t".into()), listener.clone()).unwrap_err();
    assert!(matches!(&err, TidingsError::InvalidArgument { message } if message.contains("ws://")), "{err}");
    let mut c = default_config("ws://127.0.0.1:9/v1/ws".into());
    c.store_path = Some("/nonexistent-dir/tidings.json".into());
    let err = TidingsClient::new(c, tokens("t".into()), listener.clone()).unwrap_err();
    assert!(err.to_string().contains("directory does not exist"), "{err}");
    let client =
        TidingsClient::new(default_config("ws://127.0.0.1:9/v1/ws".into()), tokens("t".into()), listener).unwrap();
    let err = client.subscribe("chat:1".into()).unwrap_err();
    assert!(matches!(err, TidingsError::InvalidArgument { .. }), "{err}");
    let err = client.ingest_push("{\"nope\":1}".into()).unwrap_err();
    assert!(matches!(err, TidingsError::InvalidPayload { .. }), "{err}");
    let err = client.register_push_token(PushPlatform::Apns, String::new()).unwrap_err();
    assert!(matches!(err, TidingsError::InvalidArgument { .. }), "{err}");
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_credentials_fail_connect_after_two_attempts() {
    let server = tidings_server::start(ServerConfig::for_tests()).await.unwrap();
    let provider = tokens("not-a-jwt".into());
    let client = TidingsClient::new(config(&server), provider.clone(), Arc::new(Recorder::default())).unwrap();
    let err = client.connect().await.unwrap_err();
    assert!(matches!(err, TidingsError::ConnectionFailed { reason: FailureReason::Unauthorized, .. }), "{err}");
    assert_eq!(client.stats().connection_attempts, 2);
    assert_eq!(provider.calls.load(Ordering::SeqCst), 2);
    client.close().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_token_provider_is_asked_once_however_often_the_app_pokes() {
    let server = tidings_server::start(ServerConfig::for_tests()).await.unwrap();
    let token = tidings_server::issue_token(&server.config().jwt_secret, "alice", &[], None);
    let provider = Arc::new(Tokens { token, calls: AtomicU32::new(0), delay: Duration::from_millis(300) });
    let client = TidingsClient::new(config(&server), provider.clone(), Arc::new(Recorder::default())).unwrap();
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
    client.close().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_extension_and_the_app_share_dedup_through_the_store_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("tidings.json").to_string_lossy().into_owned();
    let server = tidings_server::start(ServerConfig::for_tests()).await.unwrap();
    let receipt =
        server.publisher().publish(PublishRequest::new("t").user("alice").id("p1").title("hi")).await.unwrap();
    let d = &receipt.deliveries[0];
    let payload = format!(
        r#"{{"aps":{{"alert":"hi"}},"tidings":"{{\"id\":\"p1\",\"stream\":\"user:alice\",\"offset\":{},\"epoch\":\"{}\",\"type\":\"t\",\"priority\":\"important\",\"persistence\":\"bufferable\",\"created_at\":1}}"}}"#,
        d.offset.unwrap(),
        d.epoch
    );
    // The extension process shows it.
    assert!(matches!(ingest_push_with_store(store.clone(), payload.clone()).unwrap(), PushOutcome::Show { .. }));
    assert_eq!(
        ingest_push_with_store(store.clone(), payload.clone()).unwrap(),
        PushOutcome::Duplicate { id: "p1".into() }
    );
    // The app, same store file: the push copy and any socket copy are duplicates.
    let token = tidings_server::issue_token(&server.config().jwt_secret, "alice", &[], None);
    let mut c = config(&server);
    c.store_path = Some(store.clone());
    let listener = Arc::new(Recorder::default());
    let client = TidingsClient::new(c, tokens(token), listener.clone()).unwrap();
    assert_eq!(client.ingest_push(payload).unwrap(), PushOutcome::Duplicate { id: "p1".into() });
    client.connect().await.unwrap();
    // connect() resolves at `welcome`; the user stream is subscribed once its continuity event arrives.
    listener.wait_for("continuity user:alice").await;
    server.publisher().publish(PublishRequest::new("t").user("alice").id("p2").title("hi")).await.unwrap();
    listener.wait_for("notification p2").await;
    assert!(!listener.events.lock().unwrap().iter().any(|e| e == "notification p1"));
    let err = ingest_push_with_store(store, "[]".into()).unwrap_err();
    assert!(matches!(err, TidingsError::InvalidPayload { .. }), "{err}");
    client.close().await;
    server.shutdown().await;
}
