//! The push harness: the three mock services together, the key files a server needs to push to them, and what
//! they received in the form an SDK's `ingest_push` is handed — the APNs payload (`userInfo`), the FCM `data`
//! map as JSON, the Web Push plaintext (decrypted with the browser's keys by `web-push-native`, an RFC 8291
//! implementation independent of the server's). The conformance runners use it to feed every SDK the push the
//! server really sent: in process (the Rust runner), or over a small HTTP control API (`push-harness` binary,
//! started by `cargo xtask` for the Swift, Kotlin and browser runners).
//!
//! Control API (plain HTTP on loopback):
//! - `POST /subscriptions/{id}` → `{"token":"<PushSubscription JSON>"}`: a Web Push subscription at the mock, as
//!   a browser would make it (the harness keeps its keys to decrypt what is sent to it).
//! - `GET /pushes` → `{"pushes":[{"provider":"apns|fcm|web_push","target":"…","payload":"…"}]}`: every push
//!   accepted so far, oldest first; `target` is the APNs device token, the FCM registration token or the Web Push
//!   subscription id.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::{ApnsOptions, ApnsTestKey, BrowserKeys, FcmOptions, MockApns, MockFcm, MockWebPush, VapidTestKey, test_ca};

/// The APNs topic (bundle id) the harness expects.
pub const TOPIC: &str = "dev.tidings.conformance";

/// One push a mock accepted, as an SDK receives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SentPush {
    /// `apns`, `fcm` or `web_push`.
    pub provider: &'static str,
    /// The device token, FCM registration token or Web Push subscription id.
    pub target: String,
    /// The payload text an SDK's `ingest_push` takes.
    pub payload: String,
}

/// What a server needs to push to the harness's mocks.
#[derive(Clone, Debug)]
pub struct ServerPushSettings {
    /// `--vapid-public-key`.
    pub vapid_public_key: String,
    /// `--vapid-private-key`.
    pub vapid_private_key: String,
    /// `--vapid-subject`.
    pub vapid_subject: String,
    /// `--apns-key-file`.
    pub apns_key_file: PathBuf,
    /// `--apns-key-id`.
    pub apns_key_id: String,
    /// `--apns-team-id`.
    pub apns_team_id: String,
    /// `--apns-topic`.
    pub apns_topic: String,
    /// `--apns-url` and `--apns-sandbox-url`.
    pub apns_url: String,
    /// `--fcm-service-account`.
    pub fcm_service_account: PathBuf,
    /// `--fcm-url`.
    pub fcm_url: String,
    /// `--push-ca-file`.
    pub push_ca_file: PathBuf,
}

impl ServerPushSettings {
    /// As `tidings-server` flags.
    pub fn args(&self) -> Vec<String> {
        let path = |p: &Path| p.display().to_string();
        [
            ("--vapid-public-key", self.vapid_public_key.clone()),
            ("--vapid-private-key", self.vapid_private_key.clone()),
            ("--vapid-subject", self.vapid_subject.clone()),
            ("--apns-key-file", path(&self.apns_key_file)),
            ("--apns-key-id", self.apns_key_id.clone()),
            ("--apns-team-id", self.apns_team_id.clone()),
            ("--apns-topic", self.apns_topic.clone()),
            ("--apns-url", self.apns_url.clone()),
            ("--apns-sandbox-url", self.apns_url.clone()),
            ("--fcm-service-account", path(&self.fcm_service_account)),
            ("--fcm-url", self.fcm_url.clone()),
            ("--push-ca-file", path(&self.push_ca_file)),
        ]
        .into_iter()
        .flat_map(|(k, v)| [k.to_owned(), v])
        .collect()
    }
}

/// The mocks, their key files and the browsers' keys.
#[derive(Debug)]
pub struct PushHarness {
    /// Mock Web Push service.
    pub web: MockWebPush,
    /// Mock APNs.
    pub apns: MockApns,
    /// Mock FCM.
    pub fcm: MockFcm,
    settings: ServerPushSettings,
    browsers: Arc<Mutex<HashMap<String, BrowserKeys>>>,
}

impl PushHarness {
    /// Starts the mocks; key files are written into `dir` (which must exist).
    pub async fn start(dir: &Path) -> anyhow::Result<PushHarness> {
        let apns_key = ApnsTestKey::generate();
        let vapid = VapidTestKey::generate();
        let web = MockWebPush::start(crate::WebPushOptions::default()).await?;
        let apns = MockApns::start(ApnsOptions::for_key(&apns_key, TOPIC)).await?;
        let fcm = MockFcm::start(FcmOptions::default()).await?;
        let apns_key_file = dir.join("apns-key.p8");
        std::fs::write(&apns_key_file, &apns_key.p8_pem)?;
        let fcm_service_account = dir.join("fcm-service-account.json");
        std::fs::write(&fcm_service_account, fcm.service_account_json())?;
        let push_ca_file = dir.join("push-ca.pem");
        std::fs::write(&push_ca_file, &test_ca().cert_pem)?;
        let settings = ServerPushSettings {
            vapid_public_key: vapid.public.clone(),
            vapid_private_key: vapid.private.clone(),
            vapid_subject: "mailto:conformance@tidings.test".into(),
            apns_key_file,
            apns_key_id: apns_key.key_id.clone(),
            apns_team_id: apns_key.team_id.clone(),
            apns_topic: TOPIC.into(),
            apns_url: apns.url(),
            fcm_service_account,
            fcm_url: fcm.url(),
            push_ca_file,
        };
        Ok(PushHarness { web, apns, fcm, settings, browsers: Arc::default() })
    }

    /// What a server needs to push here.
    pub fn settings(&self) -> &ServerPushSettings {
        &self.settings
    }

    /// A Web Push subscription `id` at the mock, as a browser makes it (its JSON).
    pub fn subscription(&self, id: &str) -> String {
        let (json, keys) = self.web.subscription(id);
        self.browsers.lock().unwrap_or_else(|e| e.into_inner()).insert(id.to_owned(), keys);
        json
    }

    /// Every push accepted so far, oldest first per provider, as SDKs receive them.
    pub fn pushes(&self) -> Vec<SentPush> {
        let mut out = Vec::new();
        for r in self.apns.received().into_iter().filter(|r| r.answered == 200) {
            out.push(SentPush { provider: "apns", target: r.device.clone(), payload: r.payload.to_string() });
        }
        for r in self.fcm.received().into_iter().filter(|r| r.answered == 200) {
            let target = r.message["token"].as_str().unwrap_or_default().to_owned();
            out.push(SentPush { provider: "fcm", target, payload: r.message["data"].to_string() });
        }
        let browsers = self.browsers.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for r in self.web.received().into_iter().filter(|r| r.answered == 201) {
            let Some(keys) = browsers.get(&r.subscription) else { continue };
            if let Some(plain) = decrypt(&r.body, keys) {
                out.push(SentPush { provider: "web_push", target: r.subscription.clone(), payload: plain });
            }
        }
        out
    }

    /// Serves the control API on a loopback port until the returned task is aborted; returns its base URL.
    pub async fn serve_control(self: &Arc<Self>) -> anyhow::Result<(String, JoinHandle<()>)> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr: SocketAddr = listener.local_addr()?;
        let harness = self.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { continue };
                let harness = harness.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                        let harness = harness.clone();
                        async move { Ok::<_, Infallible>(harness.control(req)) }
                    });
                    let _ =
                        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), service).await;
                });
            }
        });
        Ok((format!("http://{addr}"), task))
    }

    fn control(&self, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
        let reply = |status: u16, body: Value| {
            Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .header("access-control-allow-origin", "*")
                .body(Full::new(Bytes::from(body.to_string())))
                .expect("a valid response")
        };
        let path = req.uri().path().to_owned();
        match (req.method().as_str(), path.as_str()) {
            ("GET", "/pushes") => {
                let pushes: Vec<Value> = self
                    .pushes()
                    .into_iter()
                    .map(|p| json!({"provider": p.provider, "target": p.target, "payload": p.payload}))
                    .collect();
                reply(200, json!({ "pushes": pushes }))
            }
            ("POST", p) if p.starts_with("/subscriptions/") && p.len() > "/subscriptions/".len() => {
                let id = &p["/subscriptions/".len()..];
                reply(200, json!({ "token": self.subscription(id) }))
            }
            _ => {
                reply(404, json!({"error": {"code": "not_found", "message": "GET /pushes, POST /subscriptions/{id}"}}))
            }
        }
    }
}

/// The plaintext of an RFC 8291 body for the browser `keys`.
fn decrypt(body: &[u8], keys: &BrowserKeys) -> Option<String> {
    let private = URL_SAFE_NO_PAD.decode(&keys.private).ok()?;
    let auth = URL_SAFE_NO_PAD.decode(&keys.auth).ok()?;
    let ua = web_push_native::p256::SecretKey::from_slice(&private).ok()?;
    let auth = web_push_native::Auth::clone_from_slice(&auth);
    let plain = web_push_native::decrypt(body.to_vec(), &ua, &auth).ok()?;
    String::from_utf8(plain).ok()
}
