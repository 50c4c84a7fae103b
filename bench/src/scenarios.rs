//! The client side of S1–S4 (bench/README.md): native SDK clients (`tidings_core::native::Client`) on a
//! single-threaded runtime on core 1, against a server child on core 0.

use std::process::Stdio;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tidings_core::engine::{ConnectionState, Continuity, Event};
use tidings_core::native::{Client, ClientConfig, StaticToken};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::{percentile, sys};

/// The server child process and its command channel.
pub(crate) struct ServerChild {
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
    pub(crate) port: u16,
}

impl ServerChild {
    /// Starts `tidings-bench server-proc` pinned to CPU 0, on the memory store.
    pub(crate) async fn start() -> anyhow::Result<Self> {
        Self::start_on("memory").await
    }

    /// Starts `tidings-bench server-proc` pinned to CPU 0, on `store` (`memory`, `sqlite`, `sqlite-normal`).
    pub(crate) async fn start_on(store: &str) -> anyhow::Result<Self> {
        Self::start_with(store, &[]).await
    }

    /// [`ServerChild::start_on`] with more environment variables (S6: the database and Redis).
    pub(crate) async fn start_with(store: &str, env: &[(&str, String)]) -> anyhow::Result<Self> {
        let exe = std::env::current_exe()?;
        // TIDINGS_BENCH_SERVER_WRAP="perf record -e cpu-clock -g -o /tmp/server.perf" profiles the server child.
        let wrap: Vec<String> = std::env::var("TIDINGS_BENCH_SERVER_WRAP")
            .map(|w| w.split_whitespace().map(String::from).collect())
            .unwrap_or_default();
        let mut child = Command::new("taskset")
            .args(["-c", "0"])
            .args(&wrap)
            .arg(exe)
            .arg("server-proc")
            .arg(store)
            .env("RUST_LOG", "error")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let stdin = child.stdin.take().expect("piped");
        let mut stdout = BufReader::new(child.stdout.take().expect("piped")).lines();
        let line = stdout.next_line().await?.ok_or_else(|| anyhow::anyhow!("server child exited"))?;
        let ready: Value = serde_json::from_str(&line).map_err(|e| anyhow::anyhow!("server child: {e}: {line:?}"))?;
        let port = ready["port"].as_u64().ok_or_else(|| anyhow::anyhow!("server child did not report a port"))? as u16;
        Ok(ServerChild { child, stdin, stdout, port })
    }

    /// Sends a command and waits for its one-line answer.
    pub(crate) async fn call(&mut self, cmd: Value) -> anyhow::Result<Value> {
        self.send(cmd).await?;
        self.answer().await
    }

    /// Sends a command without waiting (read the answer with [`ServerChild::answer`]).
    pub(crate) async fn send(&mut self, cmd: Value) -> anyhow::Result<()> {
        self.stdin.write_all(format!("{cmd}\n").as_bytes()).await?;
        Ok(self.stdin.flush().await?)
    }

    pub(crate) async fn answer(&mut self) -> anyhow::Result<Value> {
        let line = self.stdout.next_line().await?.ok_or_else(|| anyhow::anyhow!("server child exited"))?;
        let v: Value =
            serde_json::from_str(&line).map_err(|e| anyhow::anyhow!("server child answered {line:?}: {e}"))?;
        if let Some(err) = v.get("error") {
            anyhow::bail!("server child: {err}");
        }
        Ok(v)
    }

    /// The child's process id (the server's, once `taskset` has exec'd it; a wrapper's when one is set).
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    pub(crate) fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}/v1/ws", self.port)
    }

    pub(crate) async fn stop(mut self) -> anyhow::Result<()> {
        let _ = self.send(json!({"cmd": "quit"})).await;
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await.is_err() {
            self.child.kill().await?;
        }
        Ok(())
    }
}

pub(crate) type Handler = Arc<dyn Fn(usize, Event) + Send + Sync>;

/// Counts one event of a client whose events one task handles (every [`Fleet`] client's): a plain add, without
/// the locked read-modify-write of `fetch_add`, which nothing else writing the counter would need.
pub(crate) fn count_one(counter: &AtomicU64) {
    counter.store(counter.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
}

/// A fleet of SDK clients whose events go to one handler.
pub(crate) struct Fleet {
    pub(crate) clients: Vec<Client>,
}

impl Fleet {
    /// Starts `n` clients (user `u<i>`, topics `topics`), `batch` at a time, each ready once `streams_each`
    /// continuity events arrived.
    pub(crate) async fn start(
        url: &str,
        n: usize,
        topics: &[&str],
        streams_each: usize,
        handler: Handler,
    ) -> anyhow::Result<Fleet> {
        Self::start_at(url, 0, n, topics, streams_each, handler).await
    }

    /// [`Fleet::start`] for clients `first..first + n` (users `u<first>`…; the handler gets the global index).
    pub(crate) async fn start_at(
        url: &str,
        first: usize,
        n: usize,
        topics: &[&str],
        streams_each: usize,
        handler: Handler,
    ) -> anyhow::Result<Fleet> {
        let ready = Arc::new(AtomicUsize::new(0));
        let mut clients = Vec::with_capacity(n);
        let secret = tidings_server::TEST_JWT_SECRET;
        let subscribe: Vec<String> = topics.iter().map(|t| format!("topic:{t}")).collect();
        for start in (0..n).step_by(250) {
            for i in (first + start)..(first + start + 250).min(first + n) {
                let token = tidings_server::issue_token(secret, &format!("u{i}"), topics, None);
                let mut config = ClientConfig::new(url);
                config.engine.batch.window = Duration::ZERO;
                config.read_buffer_size = 8 * 1024;
                config.seed = Some(i as u64 + 1);
                let (client, mut events) = Client::builder(config).token_provider(StaticToken::new(token)).connect()?;
                for s in &subscribe {
                    client.subscribe(s)?;
                }
                let handler = handler.clone();
                let ready = ready.clone();
                tokio::spawn(async move {
                    let mut continuity = 0;
                    while let Some(e) = events.next().await {
                        if matches!(e, Event::Continuity { .. }) {
                            continuity += 1;
                            if continuity == streams_each {
                                ready.fetch_add(1, Ordering::SeqCst);
                            }
                        }
                        handler(i, e);
                    }
                });
                clients.push(client);
            }
            let want = (start + 250).min(n);
            let deadline = Instant::now() + Duration::from_secs(60);
            while ready.load(Ordering::SeqCst) < want {
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "only {} of {want} clients ready",
                    ready.load(Ordering::SeqCst)
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        Ok(Fleet { clients })
    }

    pub(crate) async fn close(self) {
        for c in &self.clients {
            c.close().await;
        }
    }
}

/// S1: idle connections, server RSS per connection.
pub(crate) async fn s1(connections: usize) -> anyhow::Result<Value> {
    let mut server = ServerChild::start().await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = server.call(json!({"cmd": "rss"})).await?["rss_kib"].as_u64().unwrap_or(0);
    let handler: Handler = Arc::new(|_, _| {});
    let fleet = Fleet::start(&server.ws_url(), connections, &[], 1, handler).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let open = server.call(json!({"cmd": "stats"})).await?["connections_open"].as_u64().unwrap_or(0);
    let after = server.call(json!({"cmd": "rss"})).await?["rss_kib"].as_u64().unwrap_or(0);
    fleet.close().await;
    server.stop().await?;
    let per = (after.saturating_sub(before)) as f64 / connections as f64;
    Ok(json!({
        "scenario": "S1", "system": "tidings", "connections": connections, "connections_open": open,
        "server_rss_before_kib": before, "server_rss_after_kib": after,
        "rss_per_connection_kib": (per * 100.0).round() / 100.0,
    }))
}

/// The `system` and `store` of a result line of the server on `store`.
fn system(store: &str) -> (String, &str) {
    match store {
        "memory" => ("tidings".into(), store),
        other => (format!("tidings ({other})"), store),
    }
}

/// S2: broadcast fan-out to `clients` clients on one topic for `seconds`, the server on `store`.
pub(crate) async fn s2(clients: usize, seconds: f64, batch: u64, store: &str) -> anyhow::Result<Value> {
    let mut server = ServerChild::start_on(store).await?;
    let counts: Arc<Vec<AtomicU64>> = Arc::new((0..clients).map(|_| AtomicU64::new(0)).collect());
    let c = counts.clone();
    let handler: Handler = Arc::new(move |i, e| {
        if let Event::Notification(_) = e {
            count_one(&c[i]);
        }
    });
    let fleet = Fleet::start(&server.ws_url(), clients, &["bench"], 2, handler).await?;
    let base = total_of(&counts);
    let t0 = Instant::now();
    let client_cpu0 = sys::cpu_seconds(std::process::id())?;
    server.send(json!({"cmd": "fanout", "seconds": seconds, "batch": batch})).await?;
    // Count deliveries at the clients during the publishing window.
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    let in_window = total_of(&counts) - base;
    let window = t0.elapsed().as_secs_f64();
    let reply = server.answer().await?;
    // Then let the clients drain what is still queued, to report what was lost.
    let published = reply["published"].as_u64().unwrap_or(0);
    let want = published * clients as u64;
    let delivered = drain(&counts, base, want).await;
    // CPU cost per delivery on each side: steadier than throughput on a VM whose speed varies between runs.
    let client_cpu = sys::cpu_seconds(std::process::id())? - client_cpu0;
    let server_cpu = reply["cpu_s"].as_f64().unwrap_or(0.0);
    let per_delivery_ns = |cpu: f64, n: u64| if n == 0 { 0.0 } else { (cpu * 1e9 / n as f64).round() };
    let stats = server.call(json!({"cmd": "stats"})).await?;
    fleet.close().await;
    server.stop().await?;
    let (system, store) = system(store);
    Ok(json!({
        "scenario": "S2", "system": system, "store": store, "clients": clients, "seconds": seconds,
        "published": published, "deliveries_in_window": in_window,
        "deliveries_per_s": (in_window as f64 / window).round(),
        "delivered_total": delivered, "expected_total": want,
        "client_cpu_ns_per_delivery": per_delivery_ns(client_cpu, delivered),
        "server_cpu_ns_per_delivery": per_delivery_ns(server_cpu, want),
        "server_cpu_s": reply["cpu_s"], "slow_consumers": stats["slow_consumers"],
        "publisher": reply["publisher"], "publisher_paused_ms": reply["paced_ms"],
    }))
}

/// S3: targeted latency, `rate` per second round robin over `clients` user streams for `seconds`, the server on
/// `store`.
pub(crate) async fn s3(clients: usize, rate: f64, seconds: f64, store: &str) -> anyhow::Result<Value> {
    let mut server = ServerChild::start_on(store).await?;
    let latencies: Arc<Mutex<Vec<u64>>> = Arc::new(Mutex::new(Vec::with_capacity((rate * seconds) as usize)));
    let l = latencies.clone();
    let handler: Handler = Arc::new(move |_, e| {
        if let Event::Notification(n) = e {
            let now = sys::wall_ns();
            let t = n
                .data()
                .and_then(|d| d.strip_prefix("{\"t\":"))
                .and_then(|r| r.split(',').next())
                .and_then(|t| t.parse::<u64>().ok());
            if let Some(t) = t {
                l.lock().unwrap().push(now.saturating_sub(t) / 1000);
            }
        }
    });
    let fleet = Fleet::start(&server.ws_url(), clients, &[], 1, handler).await?;
    let concurrent = store != "memory";
    let reply = server
        .call(json!({"cmd": "targeted", "users": clients, "rate": rate, "seconds": seconds, "concurrent": concurrent}))
        .await?;
    let published = reply["published"].as_u64().unwrap_or(0);
    let deadline = Instant::now() + Duration::from_secs(10);
    while (latencies.lock().unwrap().len() as u64) < published && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    fleet.close().await;
    server.stop().await?;
    let mut l = latencies.lock().unwrap().clone();
    l.sort_unstable();
    let (system, store) = system(store);
    Ok(json!({
        "scenario": "S3", "system": system, "store": store, "clients": clients, "rate_per_s": rate, "seconds": seconds,
        "publisher": reply["publisher"], "published": published, "received": l.len(), "lost": published.saturating_sub(l.len() as u64),
        "p50_us": percentile(&l, 50.0), "p99_us": percentile(&l, 99.0), "p999_us": percentile(&l, 99.9),
        "max_us": l.last().copied().unwrap_or(0),
    }))
}

#[derive(Default, Clone)]
struct SeqClient {
    received: Vec<u32>,
    connecting_at: Option<u64>,
    handshakes_us: Vec<u64>,
    back_at: Option<u64>,
    resumed_after_drop: bool,
}

/// S4: reconnect storm.
pub(crate) async fn s4(clients: usize, rate: f64, seconds: f64, drop_after: f64) -> anyhow::Result<Value> {
    let mut server = ServerChild::start().await?;
    let state: Arc<Vec<Mutex<SeqClient>>> = Arc::new((0..clients).map(|_| Mutex::new(SeqClient::default())).collect());
    let dropped = Arc::new(AtomicU64::new(0));
    let (st, dr) = (state.clone(), dropped.clone());
    let handler: Handler = Arc::new(move |i, e| {
        let mut c = st[i].lock().unwrap();
        match e {
            Event::Notification(n) => {
                let seq = n
                    .data()
                    .and_then(|d| d.strip_prefix("{\"seq\":"))
                    .and_then(|r| r.trim_end_matches('}').parse::<usize>().ok());
                if let Some(seq) = seq {
                    if c.received.len() <= seq {
                        c.received.resize(seq + 1, 0);
                    }
                    c.received[seq] += 1;
                }
            }
            Event::State(ConnectionState::Connecting { .. }) => c.connecting_at = Some(sys::wall_ns()),
            Event::State(ConnectionState::Connected) => {
                let now = sys::wall_ns();
                let drop_ns = dr.load(Ordering::SeqCst);
                if drop_ns > 0 && now > drop_ns {
                    if let Some(t) = c.connecting_at {
                        c.handshakes_us.push(now.saturating_sub(t) / 1000);
                    }
                    c.back_at = Some(now);
                }
            }
            Event::Continuity { continuity: Continuity::Resumed { .. }, .. } => {
                let drop_ns = dr.load(Ordering::SeqCst);
                if drop_ns > 0 && sys::wall_ns() > drop_ns {
                    c.resumed_after_drop = true;
                }
            }
            _ => {}
        }
    });
    let fleet = Fleet::start(&server.ws_url(), clients, &[], 1, handler).await?;
    // The drop time is only known afterwards; mark it approximately now + drop_after so that the handler can
    // tell pre-drop from post-drop events, then correct with the server's exact timestamp.
    dropped.store(sys::wall_ns() + (drop_after * 1e9) as u64 - 50_000_000, Ordering::SeqCst);
    let reply = server
        .call(json!({"cmd": "sequence", "users": clients, "rate": rate, "seconds": seconds, "drop_after": drop_after}))
        .await?;
    let published = reply["published"].as_u64().unwrap_or(0);
    let dropped_at = reply["dropped_at_ns"].as_u64().unwrap_or(0);
    let expected = |u: usize| -> usize {
        let n = published as usize;
        if u < n { (n - u - 1) / clients + 1 } else { 0 }
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let done =
            (0..clients).all(|u| state[u].lock().unwrap().received.iter().filter(|c| **c > 0).count() >= expected(u));
        if done || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    fleet.close().await;
    server.stop().await?;
    let (mut missed, mut dups, mut resumed) = (0u64, 0u64, 0usize);
    let mut handshakes = Vec::new();
    let mut last_back = 0u64;
    for u in 0..clients {
        let c = state[u].lock().unwrap();
        for seq in 0..expected(u) {
            match c.received.get(seq).copied().unwrap_or(0) {
                0 => missed += 1,
                1 => {}
                k => dups += u64::from(k - 1),
            }
        }
        if c.resumed_after_drop {
            resumed += 1;
        }
        handshakes.extend(c.handshakes_us.iter().copied());
        if let Some(b) = c.back_at {
            last_back = last_back.max(b);
        }
    }
    handshakes.sort_unstable();
    Ok(json!({
        "scenario": "S4", "system": "tidings", "clients": clients, "rate_per_s": rate, "seconds": seconds,
        "published": published, "dropped": reply["dropped"], "publisher": reply["publisher"],
        "resumed_fraction": resumed as f64 / clients as f64, "missed": missed, "duplicates": dups,
        "reconnect_handshake_p50_ms": percentile(&handshakes, 50.0) as f64 / 1000.0,
        "reconnect_handshake_p99_ms": percentile(&handshakes, 99.0) as f64 / 1000.0,
        "last_client_back_s": if last_back > dropped_at && dropped_at > 0 { (last_back - dropped_at) as f64 / 1e9 } else { f64::NAN },
        "backoff": "default (full jitter, base 500 ms)",
    }))
}

/// Deliveries counted by the clients so far.
pub(crate) fn total_of(counts: &[AtomicU64]) -> u64 {
    counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
}

/// Waits (at most 60 s) until the clients counted `want` deliveries since `base`; returns how many they counted.
pub(crate) async fn drain(counts: &[AtomicU64], base: u64, want: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    while total_of(counts) - base < want && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    total_of(counts) - base
}
