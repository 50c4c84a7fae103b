//! Three `tidings-server` processes (the real binary) on one PostgreSQL database and one Redis (issue 15):
//! clients spread over them, publishes through any of them, and faults — `kill -9` of a process under load, a
//! PostgreSQL restart under load. Each fault's counts (acknowledged, received, lost, duplicated) are printed and
//! asserted. PostgreSQL and Redis come from `cargo xtask test` (`TIDINGS_TEST_DATABASE_URL`,
//! `TIDINGS_TEST_REDIS_URL`); the PostgreSQL restart uses a PostgreSQL of the test's own. Run by hand without them,
//! the tests print a note and skip.

use crate::common;

use std::collections::HashMap;
use std::io::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::redis::{TestRedis, prefix};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tidings_server::store::postgres::testing;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

const BIN: &str = env!("CARGO_BIN_EXE_tidings-server");
const SECRET: &str = "multiprocess-test-secret-0123456789abcdef";
const KEY: &str = "multiprocess-test-key";
const PATIENCE: Duration = Duration::from_secs(30);

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// One server process; killed when dropped.
struct Process {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Process {
    fn start(database: &str, redis: &str, prefix: &str, log: &Path) -> Process {
        let port = free_port();
        let out = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
        let child = Command::new(BIN)
            .args(["--bind", &format!("127.0.0.1:{port}"), "--jwt-secret", SECRET, "--api-key", KEY])
            .args(["--store", "postgres", "--database-url", database, "--redis-url", redis, "--redis-prefix", prefix])
            .args(["--connection-burst", "0", "--auth-failure-burst", "0"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::from(out.try_clone().unwrap()))
            .stderr(Stdio::from(out))
            .spawn()
            .expect("the server binary starts");
        let mut process = Process { child, port, log: log.to_owned() };
        let deadline = Instant::now() + PATIENCE;
        while !ready(port) {
            if let Ok(Some(status)) = process.child.try_wait() {
                panic!("the server exited with {status}:\n{}", process.output());
            }
            assert!(Instant::now() < deadline, "the server did not become ready:\n{}", process.output());
            std::thread::sleep(Duration::from_millis(50));
        }
        process
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}/v1/ws", self.port)
    }

    fn http_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

fn ready(port: u16) -> bool {
    use std::io::Read as _;
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
    if s.write_all(b"GET /readyz HTTP/1.0\r\nHost: x\r\n\r\n").is_err() {
        return false;
    }
    let mut reply = String::new();
    let _ = s.read_to_string(&mut reply);
    reply.starts_with("HTTP/1.0 200") || reply.starts_with("HTTP/1.1 200")
}

fn token(user: &str, topics: &[&str]) -> String {
    tidings_server::issue_token(SECRET, user, topics, Some(Duration::from_secs(3600)))
}

/// What one client received, and where it is.
#[derive(Default)]
struct Received {
    /// `(id, offset)` of every notification frame, in arrival order.
    frames: Vec<(String, u64)>,
    /// The cursor: epoch and last offset.
    epoch: Option<String>,
    reconnects: usize,
}

/// A client of `user` subscribed to `topic:load`, starting on `urls[first]`: on a lost connection it reconnects
/// to the next URL with its cursor (as the SDKs do), until `stop` is set.
async fn run_client(
    user: String,
    urls: Vec<String>,
    first: usize,
    state: Arc<Mutex<Received>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    let mut at = first;
    let mut failures = 0;
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        let url = &urls[at % urls.len()];
        let mut request = url.as_str().into_client_request().unwrap();
        request.headers_mut().insert("Sec-WebSocket-Protocol", HeaderValue::from_static("tidings.v1"));
        let connected = tokio::time::timeout(Duration::from_secs(3), tokio_tungstenite::connect_async(request)).await;
        let Ok(Ok((mut ws, _))) = connected else {
            if failures > 95 {
                eprintln!("{user}: {url}: {connected:?}");
            }
            at += 1;
            failures += 1;
            assert!(failures < 100, "{user} cannot connect anywhere");
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let auth = json!({"op":"auth","token":token(&user, &["load"]),"device":"d","client":"multiprocess/1"});
        let entry = {
            let s = state.lock().unwrap();
            match (&s.epoch, s.frames.last()) {
                (Some(epoch), Some((_, offset))) => json!({"stream":"topic:load","epoch":epoch,"offset":offset}),
                (Some(epoch), None) => json!({"stream":"topic:load","epoch":epoch,"offset":0}),
                _ => json!({"stream":"topic:load"}),
            }
        };
        let hello = async {
            ws.send(Message::text(auth.to_string())).await?;
            ws.send(Message::text(json!({"op":"subscribe","ref":1,"streams":[entry]}).to_string())).await?;
            Ok::<_, tokio_tungstenite::tungstenite::Error>(())
        };
        if hello.await.is_err() {
            at += 1;
            continue;
        }
        loop {
            let next = tokio::time::timeout(Duration::from_millis(200), ws.next()).await;
            if stop.load(std::sync::atomic::Ordering::SeqCst) {
                return;
            }
            let message = match next {
                Err(_) => continue,
                Ok(Some(Ok(message))) => message,
                Ok(_) => break,
            };
            let Message::Text(text) = message else {
                if matches!(message, Message::Close(_)) {
                    break;
                }
                continue;
            };
            for line in text.lines() {
                let frame: Value = serde_json::from_str(line).unwrap();
                let mut s = state.lock().unwrap();
                match frame["op"].as_str() {
                    Some("subscribed") => s.epoch = frame["epoch"].as_str().map(str::to_owned),
                    Some("notification") => {
                        let id = frame["id"].as_str().unwrap().to_owned();
                        s.frames.push((id, frame["offset"].as_u64().unwrap()));
                    }
                    Some("subscribe_error") | Some("error") => panic!("{user}: {frame}"),
                    _ => {}
                }
            }
        }
        state.lock().unwrap().reconnects += 1;
        at += 1;
    }
}

/// Publishes `n` notifications to `topic:load`, each with an idempotency key, round robin over `urls`; a publish
/// that fails (a dead process, a 503) is retried with the same key on the next process until one answers 2xx.
/// Returns the acknowledged ids in order and how many attempts failed. Calls `midway` after `n / 3`.
async fn publish_all(urls: &[String], n: usize, tag: &str, mut midway: impl FnMut()) -> (Vec<String>, usize) {
    tidings_server::install_crypto_provider();
    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    let mut acknowledged = Vec::new();
    let mut failed = 0;
    for i in 0..n {
        if i == n / 3 {
            midway();
        }
        let id = format!("{tag}-{i}");
        let body = json!({"topics":["load"],"type":"t","title":i.to_string(),"id":id});
        let mut at = i;
        let deadline = Instant::now() + PATIENCE;
        loop {
            let url = format!("{}/v1/publish", urls[at % urls.len()]);
            match http.post(url).bearer_auth(KEY).json(&body).send().await {
                Ok(r) if r.status().is_success() => break,
                Ok(r) => {
                    assert!(r.status() == 503 && r.headers().contains_key("retry-after"), "{}", r.status());
                    failed += 1;
                }
                Err(_) => failed += 1,
            }
            assert!(Instant::now() < deadline, "publish {i} never acknowledged");
            at += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        acknowledged.push(id);
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    (acknowledged, failed)
}

#[derive(Debug, PartialEq, Eq)]
struct Counts {
    acknowledged: usize,
    received: usize,
    lost: usize,
    duplicated: usize,
}

fn counts(acknowledged: &[String], frames: &[(String, u64)]) -> Counts {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (id, _) in frames {
        *seen.entry(id.as_str()).or_default() += 1;
    }
    Counts {
        acknowledged: acknowledged.len(),
        received: frames.len(),
        lost: acknowledged.iter().filter(|id| !seen.contains_key(id.as_str())).count(),
        duplicated: seen.values().map(|n| n - 1).sum(),
    }
}

/// Waits until every client received `expected` notifications (or PATIENCE passed), then a little more for
/// duplicates to show.
async fn settle(clients: &[Arc<Mutex<Received>>], expected: usize) {
    let deadline = Instant::now() + PATIENCE;
    while clients.iter().any(|c| c.lock().unwrap().frames.len() < expected) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
}

struct Deployment {
    processes: Vec<Process>,
    _logs: tempfile::TempDir,
}

impl Deployment {
    fn start(database: &str, redis: &str, name: &str) -> Deployment {
        let logs = tempfile::tempdir().unwrap();
        let prefix = prefix(name);
        let processes =
            (0..3).map(|i| Process::start(database, redis, &prefix, &logs.path().join(format!("{i}.log")))).collect();
        Deployment { processes, _logs: logs }
    }

    fn ws_urls(&self) -> Vec<String> {
        self.processes.iter().map(Process::ws_url).collect()
    }

    fn http_urls(&self) -> Vec<String> {
        self.processes.iter().map(Process::http_url).collect()
    }
}

const CLIENTS: usize = 6;

fn spawn_clients(
    urls: &[String],
    stop: &Arc<std::sync::atomic::AtomicBool>,
) -> (Vec<Arc<Mutex<Received>>>, Vec<tokio::task::JoinHandle<()>>) {
    let mut states = Vec::new();
    let mut tasks = Vec::new();
    for i in 0..CLIENTS {
        let state = Arc::new(Mutex::new(Received::default()));
        states.push(state.clone());
        tasks.push(tokio::spawn(run_client(format!("u{i}"), urls.to_vec(), i % urls.len(), state, stop.clone())));
    }
    (states, tasks)
}

async fn wait_subscribed(clients: &[Arc<Mutex<Received>>]) {
    let deadline = Instant::now() + PATIENCE;
    while clients.iter().any(|c| c.lock().unwrap().epoch.is_none()) {
        assert!(Instant::now() < deadline, "clients did not subscribe");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn check(fault: &str, acknowledged: &[String], clients: &[Arc<Mutex<Received>>]) {
    for (i, client) in clients.iter().enumerate() {
        let s = client.lock().unwrap();
        let c = counts(acknowledged, &s.frames);
        eprintln!("{fault}: client u{i} ({} reconnects): {c:?}", s.reconnects);
        assert_eq!(
            c,
            Counts { acknowledged: acknowledged.len(), received: acknowledged.len(), lost: 0, duplicated: 0 },
            "{fault}: client u{i}"
        );
        let offsets: Vec<u64> = s.frames.iter().map(|(_, o)| *o).collect();
        assert!(offsets.windows(2).all(|w| w[0] < w[1]), "{fault}: client u{i} got offsets out of order");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_of_one_process_under_load_loses_and_duplicates_nothing_acknowledged() {
    let Some(server) = testing::server_url("kill_9_of_one_process_under_load") else { return };
    let Some(redis) = TestRedis::get() else { return };
    let database = testing::create_database(&server).await.unwrap();
    let mut deployment = Deployment::start(&database, &redis.url(), "kill9");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (clients, tasks) = spawn_clients(&deployment.ws_urls(), &stop);
    wait_subscribed(&clients).await;
    // Process 0 is killed a third of the way through; its clients and the publisher go to the others.
    let victim = Arc::new(Mutex::new(Some(deployment.processes.remove(0))));
    let urls = {
        let mut urls = vec![victim.lock().unwrap().as_ref().unwrap().http_url()];
        urls.extend(deployment.http_urls());
        urls
    };
    let v = victim.clone();
    let (acknowledged, failed) = publish_all(&urls, 300, "kill9", move || {
        if let Some(mut p) = v.lock().unwrap().take() {
            p.kill();
        }
    })
    .await;
    settle(&clients, acknowledged.len()).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for task in tasks {
        task.await.unwrap();
    }
    eprintln!("kill -9: {} publish attempts failed and were retried with their idempotency key", failed);
    check("kill -9 of one of three processes", &acknowledged, &clients);
    let moved = clients.iter().filter(|c| c.lock().unwrap().reconnects > 0).count();
    assert!(moved >= 2, "the killed process's clients reconnected elsewhere ({moved})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_postgres_restart_under_load_answers_503_then_recovers_with_nothing_acknowledged_lost() {
    if testing::server_url("a_postgres_restart_under_load").is_none() {
        return;
    }
    let Some(redis) = TestRedis::get() else { return };
    let pg = testing::Cluster::start().expect("a PostgreSQL of the test's own");
    let database = testing::create_database(&pg.url()).await.unwrap();
    let deployment = Deployment::start(&database, &redis.url(), "pgrestart");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (clients, tasks) = spawn_clients(&deployment.ws_urls(), &stop);
    wait_subscribed(&clients).await;
    let pg = Arc::new(pg);
    // PostgreSQL stops a third of the way through the publishes and starts again 1.5 s later.
    let restart: Arc<Mutex<Option<std::thread::JoinHandle<()>>>> = Arc::default();
    let (p, slot) = (pg.clone(), restart.clone());
    let (acknowledged, failed) = publish_all(&deployment.http_urls(), 240, "pg", move || {
        let pg = p.clone();
        *slot.lock().unwrap() = Some(std::thread::spawn(move || {
            pg.stop().unwrap();
            std::thread::sleep(Duration::from_millis(1500));
            pg.resume().unwrap();
        }));
    })
    .await;
    let thread = restart.lock().unwrap().take();
    if let Some(thread) = thread {
        thread.join().unwrap();
    }
    settle(&clients, acknowledged.len()).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for task in tasks {
        task.await.unwrap();
    }
    eprintln!("PostgreSQL restart: {failed} publish attempts answered 503 (with Retry-After) or failed, then retried");
    assert!(failed > 0, "publishes during the restart were refused");
    check("PostgreSQL restart", &acknowledged, &clients);
}
