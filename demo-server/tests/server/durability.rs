//! Durability with the real `tidings-server` binary: `kill -9` under load, refusals to start on a bad data
//! directory, a full disk.
//!
//! The disk and read-only tests mount a small tmpfs of their own, which needs root (CI and `cargo xtask test` run
//! as root on this project's machines). Without it they fail, saying so; they never skip.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tidings_core::engine::{Continuity, Event};
use tidings_core::native::{Client, ClientConfig, StaticToken};
use tidings_core::protocol::GapReason;
use tidings_core::store::MemoryStore;

const BIN: &str = env!("CARGO_BIN_EXE_tidings-server");
const SECRET: &str = "durability-test-secret-0123456789abcdef";
const KEY: &str = "durability-test-key";
/// Generous bound for anything that should happen soon; only turns a hang into a failure.
const PATIENCE: Duration = Duration::from_secs(30);

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The server binary's arguments for `port`, `store` and `data_dir`.
fn server_args(port: u16, store: &str, data_dir: &Path) -> Vec<String> {
    [
        "--bind",
        &format!("127.0.0.1:{port}"),
        "--jwt-secret",
        SECRET,
        "--api-key",
        KEY,
        "--store",
        store,
        "--data-dir",
        &data_dir.display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// A running server process, its output going to `log`. Killed when dropped.
struct ServerProcess {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl ServerProcess {
    /// Starts the binary and waits until `/healthz` answers.
    fn start(args: &[String], log: &Path) -> ServerProcess {
        let out = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
        let child = Command::new(BIN)
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::from(out.try_clone().unwrap()))
            .stderr(Stdio::from(out))
            .spawn()
            .expect("the server binary starts");
        let port: u16 = args[1].rsplit(':').next().unwrap().parse().unwrap();
        let mut server = ServerProcess { child, port, log: log.to_owned() };
        let deadline = Instant::now() + PATIENCE;
        while !healthy(port) {
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("the server exited with {status}:\n{}", server.output());
            }
            assert!(Instant::now() < deadline, "the server did not become healthy:\n{}", server.output());
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `kill -9`.
    fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn healthy(port: u16) -> bool {
    use std::io::Read as _;
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    if s.write_all(b"GET /healthz HTTP/1.0\r\nHost: x\r\n\r\n").is_err() {
        return false;
    }
    let mut reply = String::new();
    let _ = s.read_to_string(&mut reply);
    reply.starts_with("HTTP/1.1 200") || reply.starts_with("HTTP/1.0 200")
}

/// Runs the binary until it exits (it must, within the patience bound); returns its exit code and output.
fn run_to_exit(args: &[String]) -> (Option<i32>, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the server binary starts");
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            let text = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
            return (status.code(), text);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the server did not exit although it should refuse to start");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A tmpfs this test mounted, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, options: &str) -> Tmpfs {
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tidings-test"])
            .arg(dir)
            .status()
            .map(|s| s.success());
        assert!(
            matches!(status, Ok(true)),
            "cannot mount a tmpfs ({options}) on {}: {status:?}. This test needs root (CI and `cargo xtask test` run \
             as root); it does not skip",
            dir.display()
        );
        Tmpfs(dir.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn http() -> reqwest::Client {
    // reqwest links rustls without a default crypto provider (the push senders choose ring themselves).
    tidings_server::install_crypto_provider();
    reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap()
}

/// `POST /v1/publish`; the status (None when the server did not answer) and the body.
async fn publish(http: &reqwest::Client, url: &str, body: &Value) -> (Option<u16>, Value, Option<String>) {
    match http.post(format!("{url}/v1/publish")).bearer_auth(KEY).json(body).send().await {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let retry = resp.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_owned);
            (Some(status), resp.json().await.unwrap_or(Value::Null), retry)
        }
        Err(_) => (None, Value::Null, None),
    }
}

// ---- refusals to start ----

#[test]
fn a_data_directory_that_is_a_file_is_refused_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, "x").unwrap();
    let (code, out) = run_to_exit(&server_args(free_port(), "sqlite", &file));
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains(&format!("cannot create the data directory {}", file.display())), "{out}");
    assert!(out.contains("Fix: make it writable") && out.contains("--data-dir or TIDINGS_DATA_DIR"), "{out}");
}

#[test]
fn a_read_only_data_directory_is_refused_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let _ro = Tmpfs::mount(dir.path(), "ro,size=1m");
    let (code, out) = run_to_exit(&server_args(free_port(), "sqlite", dir.path()));
    assert_eq!(code, Some(1), "{out}");
    let lock = dir.path().join("tidings.lock");
    assert!(out.contains(&format!("the data directory {} is not writable", dir.path().display())), "{out}");
    assert!(out.contains(&lock.display().to_string()) && out.contains("Read-only file system"), "{out}");
    assert!(out.contains("Fix: make it writable by the user running tidings-server"), "{out}");
}

#[test]
fn a_data_directory_in_use_by_another_server_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("first.log");
    let data = dir.path().join("data");
    let first = ServerProcess::start(&server_args(free_port(), "sqlite", &data), &log);
    let (code, out) = run_to_exit(&server_args(free_port(), "sqlite", &data));
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(&format!("is in use by another tidings-server (pid {})", first.child.id())),
        "the message names the holder: {out}"
    );
    assert!(out.contains(&data.join("tidings.lock").display().to_string()) && out.contains("Fix: stop that server"));
    assert!(healthy(first.port), "the first server is unharmed");
}

#[test]
fn a_database_locked_by_another_process_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("tidings.db");
    // This test process holds the database as an sqlite3 shell with an open transaction would.
    let other = rusqlite::Connection::open(&db).unwrap();
    other.execute_batch("PRAGMA locking_mode = EXCLUSIVE; BEGIN EXCLUSIVE; CREATE TABLE t (x);").unwrap();
    let (code, out) = run_to_exit(&server_args(free_port(), "sqlite", dir.path()));
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains(&format!("the database {} is locked by another process", db.display())), "{out}");
    assert!(out.contains("Fix: stop the process that has it open"), "{out}");
    other.execute_batch("ROLLBACK").unwrap();
}

#[test]
fn a_corrupt_database_is_refused_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("tidings.db");
    std::fs::write(&db, b"this was a database once, before a disk controller had a bad day ".repeat(200)).unwrap();
    let (code, out) = run_to_exit(&server_args(free_port(), "sqlite", dir.path()));
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains(&format!("the database {} is corrupt or not a Tidings database", db.display())), "{out}");
    assert!(out.contains("Fix: move it") && out.contains("restore it from a backup"), "{out}");
    assert_eq!(
        std::fs::read(&db).unwrap(),
        b"this was a database once, before a disk controller had a bad day ".repeat(200),
        "the file is left as it was"
    );
}

// ---- a full disk ----

/// Fills the filesystem of `dir` with one file; returns its path.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    loop {
        if file.write_all(&chunk).is_err() {
            break;
        }
    }
    for _ in 0..64 {
        if file.write_all(&[0u8; 1024]).is_err() {
            break;
        }
    }
    let _ = file.sync_all();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_publishes_with_503_keeps_nothing_of_them_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("server.log");
    let disk = dir.path().join("disk");
    std::fs::create_dir(&disk).unwrap();
    let _tmpfs = Tmpfs::mount(&disk, "size=8m");
    let data = disk.join("data");
    let server = ServerProcess::start(&server_args(free_port(), "sqlite", &data), &log);
    let url = server.url();
    let http = http();
    let body = |i: u64, big: bool| {
        json!({"users":["alice"],"topics":["news"],"id":format!("n{i}"),"type":"t",
               "body": if big { "x".repeat(4000) } else { String::new() },
               "data": if big { json!({"pad": "y".repeat(30_000)}) } else { json!(null) }})
    };
    for i in 0..3 {
        assert_eq!(publish(&http, &url, &body(i, false)).await.0, Some(202));
    }
    let filler = fill(&disk);
    // Large notifications until the write-ahead log needs space the disk no longer has.
    let mut refused = None;
    for i in 3..400 {
        let (status, reply, retry) = publish(&http, &url, &body(i, true)).await;
        match status {
            Some(202) => continue,
            Some(503) => {
                refused = Some((i, reply, retry));
                break;
            }
            other => panic!("publish {i}: {other:?} {reply}\n{}", server.output()),
        }
    }
    let (failed, reply, retry) = refused.expect("the disk filled up and a publish was refused");
    assert_eq!(reply["error"]["code"], "unavailable", "{reply}");
    let message = reply["error"]["message"].as_str().unwrap();
    assert!(message.contains("disk is full") && message.contains("nothing was delivered"), "{message}");
    assert_eq!(reply["error"]["retry_after_ms"], 30_000);
    assert_eq!(retry.as_deref(), Some("30"), "a Retry-After header");
    // A retry while the disk is still full is refused the same way; the server is still up.
    let (status, _, _) = publish(&http, &url, &body(failed, true)).await;
    assert_eq!(status, Some(503));
    assert!(healthy(server.port));
    // Space comes back: the same publish (same id) goes through, at the offset after the last one stored.
    std::fs::remove_file(&filler).unwrap();
    let (status, reply, _) = publish(&http, &url, &body(failed, true)).await;
    assert_eq!(status, Some(202), "{reply}");
    assert_eq!(reply["duplicate"], false, "the refused publish left no idempotency key behind");
    let offsets: Vec<u64> =
        reply["deliveries"].as_array().unwrap().iter().map(|d| d["offset"].as_u64().unwrap()).collect();
    assert_eq!(offsets, [failed + 1, failed + 1], "no offset was taken by a refused publish, on either stream");
    // Nothing half-written: the history holds exactly the accepted notifications, one by one.
    drop(server);
    let conn = rusqlite::Connection::open(data.join("tidings.db")).unwrap();
    let stored: Vec<(String, i64)> = conn
        .prepare(
            "SELECT s.name, count(*) FROM entries e JOIN streams s ON s.sid = e.sid GROUP BY s.name ORDER BY s.name",
        )
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let n = failed as i64 + 1;
    assert_eq!(stored, [("topic:news".to_string(), n), ("user:alice".to_string(), n)]);
    // A stream's head is its newest entry, or `streams.head` once that entry was pruned (schema 4).
    let heads: i64 = conn
        .query_row(
            "SELECT min(MAX(head, IFNULL((SELECT MAX(e.offset) FROM entries e WHERE e.sid = streams.sid), 0))) \
             FROM streams",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(heads, n);
}

// ---- kill -9 under load ----

/// A native client whose events are collected.
struct LoadClient {
    client: Client,
    events: Arc<Mutex<Vec<(Instant, Event)>>>,
}

fn load_client(ws_url: &str, user: &str) -> LoadClient {
    let token = tidings_server::issue_token(SECRET, user, &["load"], Some(Duration::from_secs(3600)));
    let mut config = ClientConfig::new(ws_url);
    config.engine.backoff.base = Duration::from_millis(50);
    config.engine.backoff.cap = Duration::from_millis(500);
    config.engine.batch.window = Duration::ZERO;
    let (client, mut events) = Client::builder(config)
        .token_provider(StaticToken::new(token))
        .store(Arc::new(MemoryStore::new()))
        .connect()
        .expect("the client starts");
    client.subscribe("topic:load").unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let sink = log.clone();
    tokio::spawn(async move {
        while let Some(event) = events.next().await {
            sink.lock().unwrap().push((Instant::now(), event));
        }
    });
    LoadClient { client, events: log }
}

/// What one client saw.
struct Seen {
    /// Delivered ids in delivery order, with (stream, epoch, offset).
    notifications: Vec<(String, String, String, u64)>,
    /// Continuity events with when they came.
    continuity: Vec<(Instant, String, Continuity)>,
}

fn seen(client: &LoadClient) -> Seen {
    let events = client.events.lock().unwrap();
    let mut notifications = Vec::new();
    let mut continuity = Vec::new();
    for (at, e) in events.iter() {
        match e {
            Event::Notification(n) => notifications.push((
                n.id().to_owned(),
                n.stream().to_owned(),
                n.epoch().to_owned(),
                n.offset.unwrap_or(0),
            )),
            Event::Digest(d) => panic!("no digests expected (batching is off): {d:?}"),
            Event::Continuity { stream, continuity: c } => continuity.push((*at, stream.clone(), c.clone())),
            _ => {}
        }
    }
    Seen { notifications, continuity }
}

/// What a kill -9 run gave.
struct KillRun {
    /// Ids published with a 2xx: to which user each went, and when the 2xx came.
    acknowledged: BTreeMap<u64, (usize, Instant)>,
    /// Ids whose publish got no 2xx (in flight at the kill, or sent while the server was down).
    unanswered: Vec<u64>,
    /// When the server was killed, and when it answered again.
    killed_at: Instant,
    back_at: Instant,
    clients: Vec<LoadClient>,
}

const CLIENTS: usize = 20;
const RATE: u64 = 200;
const SECONDS: u64 = 6;

/// 20 clients (user `u<i>`, each also on `topic:load`), a publisher at 200/s for 6 s to the topic and one user
/// in turn, and a `kill -9` of the server 2.5 s in, restarted at once with the same flags. Returns once every
/// acknowledged notification reached each client it was for (or the patience ran out).
async fn kill_run(store: &str, dir: &Path, wait_for: impl Fn(&KillRun) -> HashMap<usize, HashSet<String>>) -> KillRun {
    let port = free_port();
    let args = server_args(port, store, &dir.join("data"));
    let log = dir.join("server.log");
    let mut server = ServerProcess::start(&args, &log);
    let ws_url = format!("ws://127.0.0.1:{port}/v1/ws");
    let url = server.url();
    let clients: Vec<LoadClient> = (0..CLIENTS).map(|i| load_client(&ws_url, &format!("u{i}"))).collect();
    for c in &clients {
        c.client
            .wait_for_state(PATIENCE, |s| *s == tidings_core::engine::ConnectionState::Connected)
            .await
            .expect("connected");
    }
    // Both subscriptions answered before publishing starts.
    let deadline = Instant::now() + PATIENCE;
    while !clients.iter().all(|c| seen(c).continuity.len() >= 2) {
        assert!(Instant::now() < deadline, "subscriptions not answered");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let publisher = tokio::spawn({
        let url = url.clone();
        async move {
            let http = http();
            let mut ticks = tokio::time::interval(Duration::from_micros(1_000_000 / RATE));
            let mut acknowledged = BTreeMap::new();
            let mut unanswered = Vec::new();
            for n in 0..RATE * SECONDS {
                ticks.tick().await;
                let user = (n as usize) % CLIENTS;
                let body = json!({"users":[format!("u{user}")],"topics":["load"],"id":format!("k{n}"),
                                  "type":"load","title":format!("load {n}")});
                match publish(&http, &url, &body).await {
                    (Some(s), _, _) if (200..300).contains(&s) => {
                        acknowledged.insert(n, (user, Instant::now()));
                    }
                    _ => unanswered.push(n),
                }
            }
            (acknowledged, unanswered)
        }
    });
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let killed_at = Instant::now();
    server.kill();
    let restarted = tokio::task::spawn_blocking(move || ServerProcess::start(&args, &log)).await.unwrap();
    let back_at = Instant::now();
    let (acknowledged, unanswered) = publisher.await.unwrap();
    let run = KillRun { acknowledged, unanswered, killed_at, back_at, clients };
    let want = wait_for(&run);
    let deadline = Instant::now() + PATIENCE;
    loop {
        let missing: usize = run
            .clients
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let got: HashSet<String> = seen(c).notifications.into_iter().map(|(id, ..)| id).collect();
                want[&i].iter().filter(|id| !got.contains(*id)).count()
            })
            .sum();
        if missing == 0 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Anything that would arrive twice arrives now.
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(restarted);
    run
}

/// The ids each client must have: every acknowledged notification (all went to the topic every client reads).
fn acknowledged_for(run: &KillRun) -> HashMap<usize, HashSet<String>> {
    let ids: HashSet<String> = run.acknowledged.keys().map(|n| format!("k{n}")).collect();
    (0..CLIENTS).map(|i| (i, ids.clone())).collect()
}

/// Checks what each client received against `expected` (ids that must arrive exactly once), in per-stream order
/// within one epoch per stream after `since`; returns (received per client, lost, duplicated).
fn check_deliveries(run: &KillRun, expected: &HashSet<u64>) -> (Vec<usize>, usize, usize) {
    let mut received = Vec::new();
    let (mut lost, mut duplicated) = (0, 0);
    for (i, c) in run.clients.iter().enumerate() {
        let s = seen(c);
        let mut count: HashMap<&str, usize> = HashMap::new();
        for (id, ..) in &s.notifications {
            *count.entry(id.as_str()).or_default() += 1;
        }
        // A publish to the topic and to u<i> reaches client i on two streams with one id: its dedup shows it once.
        duplicated += count.values().filter(|&&n| n > 1).count();
        for n in expected {
            if !count.contains_key(format!("k{n}").as_str()) {
                lost += 1;
                eprintln!("client {i} lacks k{n}");
            }
        }
        received.push(expected.iter().filter(|n| count.contains_key(format!("k{n}").as_str())).count());
        // Per stream: offsets increasing within each epoch, epochs never revisited.
        let mut by_stream: HashMap<&str, Vec<(&str, u64)>> = HashMap::new();
        for (_, stream, epoch, offset) in &s.notifications {
            by_stream.entry(stream).or_default().push((epoch, *offset));
        }
        for (stream, positions) in &by_stream {
            let ordered = positions.windows(2).all(|w| if w[0].0 == w[1].0 { w[0].1 < w[1].1 } else { true });
            let epochs: Vec<&str> = positions.iter().map(|p| p.0).fold(Vec::new(), |mut v, e| {
                if v.last() != Some(&e) {
                    v.push(e);
                }
                v
            });
            let distinct: HashSet<&&str> = epochs.iter().collect();
            assert!(ordered && distinct.len() == epochs.len(), "client {i} {stream}: {positions:?}");
        }
    }
    (received, lost, duplicated)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_under_load_loses_and_duplicates_nothing_acknowledged_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let run = kill_run("sqlite", dir.path(), acknowledged_for).await;
    let acked = run.acknowledged.len();
    assert!(acked > 800, "the publisher got most of its 1,200 publishes through: {acked}");
    assert!(!run.unanswered.is_empty(), "some publishes met the dead server");
    let expected: HashSet<u64> = run.acknowledged.keys().copied().collect();
    let (received, lost, duplicated) = check_deliveries(&run, &expected);
    // A publish that got no 2xx was either committed (then every client has it) or not (then none has).
    let mut unanswered_delivered = 0;
    for &n in &run.unanswered {
        let id = format!("k{n}");
        let have = run.clients.iter().filter(|c| seen(c).notifications.iter().any(|(i, ..)| *i == id)).count();
        assert!(have == 0 || have == CLIENTS, "k{n} (no 2xx) reached {have} of {CLIENTS} clients");
        unanswered_delivered += usize::from(have == CLIENTS);
    }
    // Resumed after the restart, on both streams; never a gap.
    let mut resumed = 0;
    for (i, c) in run.clients.iter().enumerate() {
        let s = seen(c);
        for stream in ["topic:load".to_string(), format!("user:u{i}")] {
            let ok = s
                .continuity
                .iter()
                .any(|(at, st, c)| *at > run.killed_at && *st == stream && matches!(c, Continuity::Resumed { .. }));
            assert!(ok, "client {i} resumed {stream} after the restart: {:?}", s.continuity);
            resumed += 1;
        }
        let gaps: Vec<_> = s.continuity.iter().filter(|(_, _, c)| matches!(c, Continuity::Gap { .. })).collect();
        assert!(gaps.is_empty(), "client {i}: {gaps:?}");
    }
    eprintln!(
        "kill -9 (sqlite): acknowledged {acked}; no 2xx {} (committed anyway, delivered to all {CLIENTS}: {}); received per \
         client {}..={} of {acked}; lost {lost}; duplicated {duplicated}; continuity resumed {resumed} of {} \
         subscriptions, gaps 0; server down {} ms",
        run.unanswered.len(),
        unanswered_delivered,
        received.iter().min().unwrap(),
        received.iter().max().unwrap(),
        2 * CLIENTS,
        run.back_at.duration_since(run.killed_at).as_millis(),
    );
    assert_eq!(lost, 0, "every acknowledged notification reached every client");
    assert_eq!(duplicated, 0, "no client saw a notification twice");
    for c in run.clients {
        c.client.close().await;
    }
}

/// With the memory store a restart loses everything before it (a new epoch: clients are told of the gap), but
/// nothing acknowledged after it: the gap is followed by everything the new epoch holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_with_the_memory_store_skips_nothing_acknowledged_after_the_restart() {
    let dir = tempfile::tempdir().unwrap();
    let after = |run: &KillRun| -> HashSet<u64> {
        run.acknowledged.iter().filter(|(_, (_, at))| *at > run.back_at).map(|(n, _)| *n).collect()
    };
    let run = kill_run("memory", dir.path(), |run| {
        let ids: HashSet<String> = after(run).iter().map(|n| format!("k{n}")).collect();
        (0..CLIENTS).map(|i| (i, ids.clone())).collect()
    })
    .await;
    let expected = after(&run);
    assert!(expected.len() > 400, "most of the publishing happened after the restart: {}", expected.len());
    let (received, lost, duplicated) = check_deliveries(&run, &expected);
    let mut gaps = 0;
    for (i, c) in run.clients.iter().enumerate() {
        let s = seen(c);
        for stream in ["topic:load".to_string(), format!("user:u{i}")] {
            let ok = s.continuity.iter().any(|(at, st, c)| {
                *at > run.killed_at
                    && *st == stream
                    && matches!(c, Continuity::Gap { reason: GapReason::EpochChanged, .. })
            });
            assert!(ok, "client {i} was told of the lost history of {stream}: {:?}", s.continuity);
            gaps += 1;
        }
    }
    eprintln!(
        "kill -9 (memory): acknowledged after the restart {}; received per client {}..={}; lost {lost}; duplicated \
         {duplicated}; continuity gap (epoch_changed) {gaps} of {}",
        expected.len(),
        received.iter().min().unwrap(),
        received.iter().max().unwrap(),
        2 * CLIENTS,
    );
    assert_eq!(lost, 0, "every notification acknowledged after the restart reached every client");
    assert_eq!(duplicated, 0);
    for c in run.clients {
        c.client.close().await;
    }
}
