//! P1 and P2: push send throughput on one core to local mock push services (tests/push-mocks).
//!
//! - The mocks run in a child process (`tidings-bench push-mocks-proc`) pinned to CPU 1: a Web Push service
//!   (HTTP/1.1 and HTTP/2 over TLS; VAPID checks off, counts only) and APNs (HTTP/2 over TLS, provider tokens
//!   verified once each).
//! - P1, Web Push (payload encryption + VAPID + HTTP): the Tidings sender (`tidings-bench push-send-proc`, the
//!   server's `Dispatcher` on one single-threaded runtime) and npm `web-push` 3.6.7 (`bench/peers/webpush/send.js`
//!   on Node), each pinned to CPU 0 in turn, send the same payload to the same 1,000 subscriptions on the same
//!   mock for the same time, with the same number of requests in flight.
//! - P2, APNs: the Tidings sender over one HTTP/2 connection, pinned to CPU 0.
//!
//! Reported per system: pushes accepted per second, and the sender process's CPU time per push.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use serde_json::{Value, json};
use tidings_core::protocol::{NotificationFields, Persistence, Priority, PushPlatform};
use tidings_push_mocks::{ApnsOptions, ApnsTestKey, BrowserKeys, MockApns, MockWebPush, WebPushOptions, test_ca};
use tidings_server::push::apns::{ApnsCredentials, ApnsSender};
use tidings_server::push::http::{SystemClock, TlsRoots};
use tidings_server::push::webpush::{VapidKey, WebPushSender};
use tidings_server::push::{Delivery, Dispatcher, PushAddress, PushMessage, RetryPolicy, payload};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::sys;

/// The notification every push carries (a 64-byte data payload, as in S2–S4).
fn bench_message() -> PushMessage {
    PushMessage::notification(
        NotificationFields {
            id: "01JDZ3K5W8Q2M4N6P8R0T2V4X6".into(),
            stream: "user:bench".into(),
            offset: Some(42),
            epoch: "k3v9q2".into(),
            kind: "comment.created".into(),
            priority: Priority::Important,
            persistence: Persistence::Bufferable,
            title: Some("Bob commented".into()),
            body: Some("Looks great! Ship it.".into()),
            data: Some(crate::child::payload64()),
            group: None,
            created_at: 1_763_808_060_123,
        }
        .into(),
    )
}

const APNS_TOPIC: &str = "dev.tidings.bench";

/// `tidings-bench push-mocks-proc`: the mock services, until stdin closes or says `quit`; answers `stats`.
pub(crate) fn mocks_proc() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let web = MockWebPush::start(WebPushOptions { verify_vapid: false, keep_requests: false }).await?;
        let key = ApnsTestKey::generate();
        let apns = MockApns::start(ApnsOptions::for_key(&key, APNS_TOPIC)).await?;
        apns.keep_requests(false);
        let dir = std::env::temp_dir().join(format!("tidings-bench-push-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, &test_ca().cert_pem)?;
        let key_file = dir.join("AuthKey.p8");
        std::fs::write(&key_file, &key.p8_pem)?;
        println!(
            "{}",
            json!({"ready": true, "web_push": web.origin(), "apns": apns.url(), "ca_file": ca_file,
                   "apns_key_file": key_file, "apns_key_id": key.key_id, "apns_team_id": key.team_id})
        );
        let mut lines = BufReader::new(tokio::io::stdin()).lines();
        while let Some(line) = lines.next_line().await? {
            match line.trim() {
                "stats" => println!(
                    "{}",
                    json!({"web_push": {"requests": web.count(), "accepted": web.accepted(), "connections": web.connections()},
                           "apns": {"requests": apns.count(), "accepted": apns.accepted(), "connections": apns.connections()}})
                ),
                _ => break,
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    })
}

/// What a sender child is told (a JSON file).
fn send_config(path: &Path) -> anyhow::Result<Value> {
    Ok(serde_json::from_str(&std::fs::read_to_string(path)?)?)
}

/// `tidings-bench push-send-proc CONFIG`: one sender on a single-threaded runtime (the parent pins it); prints
/// one JSON line.
pub(crate) fn send_proc(config: &Path) -> anyhow::Result<()> {
    let c = send_config(config)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let roots = TlsRoots::with_pem(std::fs::read_to_string(c["ca_file"].as_str().unwrap_or(""))?.as_bytes())
        .map_err(|e| anyhow::anyhow!("CA file {e}"))?;
    let clock = Arc::new(SystemClock);
    let no_retries = RetryPolicy { max_attempts: 1, ..RetryPolicy::default() };
    let (dispatcher, platform, tokens): (Dispatcher, PushPlatform, Vec<String>) =
        match c["provider"].as_str().unwrap_or("") {
            "web_push" => {
                let key = VapidKey::from_base64url(c["vapid"]["privateKey"].as_str().unwrap_or(""))
                    .map_err(|e| anyhow::anyhow!("VAPID key {e}"))?;
                let subject = c["vapid"]["subject"].as_str().unwrap_or("").to_owned();
                let sender = WebPushSender::new(key, subject, &roots, clock.clone());
                let subs = c["subscriptions"].as_array().cloned().unwrap_or_default();
                let tokens = subs.iter().map(Value::to_string).collect();
                (Dispatcher::new(Some(sender), None, None, no_retries, clock), PushPlatform::WebPush, tokens)
            }
            "apns" => {
                let pem = std::fs::read_to_string(c["apns_key_file"].as_str().unwrap_or(""))?;
                let url = c["apns"].as_str().unwrap_or("").to_owned();
                let credentials = ApnsCredentials {
                    key: jsonwebtoken::EncodingKey::from_ec_pem(pem.as_bytes())?,
                    key_id: c["apns_key_id"].as_str().unwrap_or("").into(),
                    team_id: c["apns_team_id"].as_str().unwrap_or("").into(),
                    topic: APNS_TOPIC.into(),
                    production_url: url.clone(),
                    sandbox_url: url,
                };
                let sender = ApnsSender::new(credentials, &roots, clock.clone());
                let tokens = (0..1000).map(|i| format!("{:064x}", 0xabc0_0000u64 + i)).collect();
                (Dispatcher::new(None, Some(sender), None, no_retries, clock), PushPlatform::Apns, tokens)
            }
            other => anyhow::bail!("unknown provider {other:?}"),
        };
    let concurrency = c["concurrency"].as_u64().unwrap_or(64) as usize;
    let seconds = c["seconds"].as_f64().unwrap_or(5.0);
    let warmup = c["warmup"].as_u64().unwrap_or(500) as usize;
    let msg = bench_message();
    let out = rt.block_on(async {
        let addresses: Vec<PushAddress<'_>> =
            tokens.iter().map(|t| PushAddress { platform, token: t, registered_at: 1 }).collect();
        let (accepted, failed, last_error) =
            drive(&dispatcher, &addresses, &msg, concurrency, Some(warmup), None).await;
        anyhow::ensure!(accepted > 0, "no push accepted during the warm-up ({failed} failed: {last_error:?})");
        let pid = std::process::id();
        let cpu0 = sys::cpu_seconds(pid)?;
        let t0 = Instant::now();
        let (accepted, failed, last_error) =
            drive(&dispatcher, &addresses, &msg, concurrency, None, Some(t0 + Duration::from_secs_f64(seconds))).await;
        let wall = t0.elapsed().as_secs_f64();
        let cpu = sys::cpu_seconds(pid)? - cpu0;
        Ok::<_, anyhow::Error>(json!({
            "pushes": accepted,
            "failed": failed,
            "last_error": last_error,
            "seconds": wall,
            "pushes_per_s": accepted as f64 / wall,
            "cpu_s": cpu,
            "cpu_us_per_push": if accepted > 0 { Some(cpu * 1e6 / accepted as f64) } else { None },
        }))
    })?;
    println!("{out}");
    Ok(())
}

/// Keeps `concurrency` deliveries in flight over `addresses` (round-robin) until `count` were started or
/// `until` passed; returns (accepted, failed, last failure).
async fn drive(
    dispatcher: &Dispatcher,
    addresses: &[PushAddress<'_>],
    msg: &PushMessage,
    concurrency: usize,
    count: Option<usize>,
    until: Option<Instant>,
) -> (u64, u64, Option<String>) {
    let mut next = 0usize;
    let more = |started: usize| count.is_none_or(|c| started < c) && until.is_none_or(|u| Instant::now() < u);
    let mut in_flight = futures_util::stream::FuturesUnordered::new();
    let (mut accepted, mut failed, mut last_error) = (0u64, 0u64, None);
    loop {
        while in_flight.len() < concurrency && more(next) {
            let address = addresses[next % addresses.len()];
            next += 1;
            in_flight.push(async move { dispatcher.deliver(&address, msg).await });
        }
        match in_flight.next().await {
            Some(Delivery::Accepted { .. }) => accepted += 1,
            Some(other) => {
                failed += 1;
                last_error = Some(format!("{other:?}"));
            }
            None => break,
        }
    }
    (accepted, failed, last_error)
}

/// A child process speaking JSON lines.
struct Proc {
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
}

impl Proc {
    fn spawn(
        cpu: usize,
        program: &Path,
        args: &[&str],
        dir: Option<&Path>,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let mut cmd = Command::new("taskset");
        cmd.arg("-c").arg(cpu.to_string()).arg(program).args(args);
        if let Some(d) = dir {
            cmd.current_dir(d);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).kill_on_drop(true).spawn()?;
        let stdin = child.stdin.take().expect("piped");
        let stdout = BufReader::new(child.stdout.take().expect("piped")).lines();
        Ok(Proc { child, stdin, stdout })
    }

    async fn line(&mut self) -> anyhow::Result<Value> {
        let line = self.stdout.next_line().await?.ok_or_else(|| anyhow::anyhow!("the child exited"))?;
        serde_json::from_str(&line).map_err(|e| anyhow::anyhow!("child answered {line:?}: {e}"))
    }

    async fn call(&mut self, cmd: &str) -> anyhow::Result<Value> {
        self.stdin.write_all(format!("{cmd}\n").as_bytes()).await?;
        self.stdin.flush().await?;
        self.line().await
    }

    async fn finish(mut self) -> anyhow::Result<Value> {
        let v = self.line().await?;
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
        Ok(v)
    }
}

/// Where the npm web-push peer lives.
pub(crate) fn peer_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("peers/webpush")
}

/// The mock services and the inputs every sender gets, for one `run`.
pub(crate) struct Rig {
    mocks: Proc,
    ready: Value,
    dir: PathBuf,
    concurrency: u64,
    seconds: f64,
}

impl Rig {
    pub(crate) async fn start(concurrency: u64, seconds: f64) -> anyhow::Result<Self> {
        let exe = std::env::current_exe()?;
        let mut mocks = Proc::spawn(1, &exe, &["push-mocks-proc"], None, &[])?;
        let ready = mocks.line().await?;
        anyhow::ensure!(ready["ready"] == true, "push mocks did not start: {ready}");
        let dir = std::env::temp_dir().join(format!("tidings-bench-push-send-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        // 1,000 subscriptions with their own browser keys, so every push does its own ECDH, as in production.
        let web = ready["web_push"].as_str().unwrap_or("");
        let subscriptions: Vec<Value> = (0..1000)
            .map(|i| serde_json::from_str(&BrowserKeys::generate().subscription(&format!("{web}/push/s{i}"))))
            .collect::<Result<_, _>>()?;
        let vapid = tidings_push_mocks::VapidTestKey::generate();
        let (plaintext, _) = payload::web_push_payload(&bench_message());
        let msg = bench_message();
        let topic = payload::collapse_token(msg.collapse_key().unwrap_or(""), 32, |c| {
            c.is_ascii_alphanumeric() || c == '-' || c == '_'
        });
        let common = json!({
            "ca_file": ready["ca_file"],
            "vapid": {"subject": "mailto:bench@tidings.test", "publicKey": vapid.public, "privateKey": vapid.private},
            "subscriptions": subscriptions,
            "payload": plaintext,
            "ttl": msg.ttl.as_secs(),
            "urgency": payload::web_push_urgency(msg.priority),
            "topic": topic,
            "concurrency": concurrency,
            "seconds": seconds,
            "warmup": 500,
            "apns": ready["apns"],
            "apns_key_file": ready["apns_key_file"],
            "apns_key_id": ready["apns_key_id"],
            "apns_team_id": ready["apns_team_id"],
        });
        let mut web_push = common.clone();
        web_push["provider"] = "web_push".into();
        std::fs::write(dir.join("web_push.json"), serde_json::to_string(&web_push)?)?;
        let mut apns = common;
        apns["provider"] = "apns".into();
        std::fs::write(dir.join("apns.json"), serde_json::to_string(&apns)?)?;
        Ok(Rig { mocks, ready, dir, concurrency, seconds })
    }

    fn base(&self, scenario: &str, system: &str) -> Value {
        json!({"scenario": scenario, "system": system, "concurrency": self.concurrency, "seconds_requested": self.seconds,
               "subscriptions": 1000, "payload_bytes": payload::web_push_payload(&bench_message()).0.len()})
    }

    async fn ours(&mut self, config: &str) -> anyhow::Result<Value> {
        let exe = std::env::current_exe()?;
        let path = self.dir.join(config);
        let path = path.to_string_lossy().into_owned();
        let child = Proc::spawn(0, &exe, &["push-send-proc", &path], None, &[])?;
        child.finish().await
    }

    /// P1, Tidings: the server's Web Push sender.
    pub(crate) async fn p1_tidings(&mut self) -> anyhow::Result<Value> {
        let before = self.mocks.call("stats").await?;
        let r = self.ours("web_push.json").await?;
        let after = self.mocks.call("stats").await?;
        Ok(merge(self.base("P1", "tidings"), r, &before, &after, "web_push"))
    }

    /// P1, npm web-push on Node.
    pub(crate) async fn p1_web_push_npm(&mut self) -> anyhow::Result<Value> {
        let dir = peer_dir();
        anyhow::ensure!(
            dir.join("node_modules/web-push").is_dir(),
            "npm web-push is not installed: run `npm ci` in {}",
            dir.display()
        );
        let config = self.dir.join("web_push.json").to_string_lossy().into_owned();
        let ca = self.ready["ca_file"].as_str().unwrap_or("").to_owned();
        let before = self.mocks.call("stats").await?;
        let child =
            Proc::spawn(0, Path::new("node"), &["send.js", &config], Some(&dir), &[("NODE_EXTRA_CA_CERTS", &ca)])?;
        let r = child.finish().await?;
        let after = self.mocks.call("stats").await?;
        Ok(merge(self.base("P1", "web-push 3.6.7 (npm)"), r, &before, &after, "web_push"))
    }

    /// P2: the server's APNs sender over one HTTP/2 connection.
    pub(crate) async fn p2_tidings(&mut self) -> anyhow::Result<Value> {
        let before = self.mocks.call("stats").await?;
        let r = self.ours("apns.json").await?;
        let after = self.mocks.call("stats").await?;
        Ok(merge(self.base("P2", "tidings"), r, &before, &after, "apns"))
    }

    pub(crate) async fn stop(mut self) {
        let _ = self.mocks.stdin.write_all(b"quit\n").await;
        let _ = tokio::time::timeout(Duration::from_secs(5), self.mocks.child.wait()).await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The sender's line plus what the mock saw during it.
fn merge(mut base: Value, sender: Value, before: &Value, after: &Value, service: &str) -> Value {
    if let (Some(b), Some(s)) = (base.as_object_mut(), sender.as_object()) {
        for (k, v) in s {
            b.insert(k.clone(), v.clone());
        }
    }
    let delta =
        |k: &str| after[service][k].as_u64().unwrap_or(0).saturating_sub(before[service][k].as_u64().unwrap_or(0));
    base["mock_requests"] = delta("requests").into();
    base["mock_connections_opened"] = delta("connections").into();
    base["placement"] = json!(
        "sender pinned to CPU 0 (one process, one thread for Tidings; Node for web-push), mock push services pinned \
         to CPU 1"
    );
    base
}
