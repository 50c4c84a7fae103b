//! S6 (bench/README.md): broadcast fan-out across server processes through Redis — Tidings (the Redis broker, on
//! PostgreSQL) against Socket.IO with `@socket.io/redis-adapter`, each with one process and with two, clients
//! split evenly between the processes, the publisher in the first one.
//!
//! Both systems share one `redis-server` that this module starts (Debian's, on loopback, no persistence) and
//! Tidings a PostgreSQL of its own (`store::postgres::testing::Cluster`, a fresh database per run), both pinned to
//! CPU 0 with the servers. The server processes, Redis, PostgreSQL and the clients' process report their CPU time,
//! so the cost of a delivery is given for one process and for two: on this 2-core machine both server processes
//! share CPU 0, so the two-process throughput cannot exceed the one-process figure; the cost per delivery says what
//! a second core would buy.

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tidings_core::engine::Event;
use tidings_server::store::postgres::testing::{Cluster, create_database};
use tokio::process::{Child, Command};

use crate::child::{DATABASE_URL_VAR, REDIS_PREFIX_VAR, REDIS_URL_VAR};
use crate::peer::NodeProc;
use crate::scenarios::{Fleet, Handler, ServerChild, count_one, drain, total_of};
use crate::sys;

/// Redis and PostgreSQL for S6, stopped when dropped.
pub(crate) struct Backends {
    redis: Child,
    redis_port: u16,
    redis_pid: u32,
    redis_dir: std::path::PathBuf,
    postgres: Cluster,
    postgres_pid: u32,
    runs: u32,
}

impl Backends {
    pub(crate) async fn start() -> anyhow::Result<Backends> {
        let redis_port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let redis_dir = std::env::temp_dir().join(format!("tidings-bench-redis-{}", std::process::id()));
        std::fs::create_dir_all(&redis_dir)?;
        let redis = Command::new("taskset")
            .args(["-c", "0", "redis-server", "--bind", "127.0.0.1", "--port", &redis_port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--maxclients", "10000", "--dir"])
            .arg(&redis_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start redis-server (Debian package redis-server): {e}"))?;
        let redis_pid = redis.id().ok_or_else(|| anyhow::anyhow!("redis-server exited"))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", redis_port)).await.is_err() {
            anyhow::ensure!(Instant::now() < deadline, "redis-server did not listen on {redis_port} within 10 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let postgres = tokio::task::spawn_blocking(Cluster::start)
            .await?
            .map_err(|e| anyhow::anyhow!("cannot start PostgreSQL for S6: {e}"))?;
        // PostgreSQL serves the Tidings servers: on their CPU, as Redis is, not on the clients'.
        let postgres_pid =
            postgres.postmaster_pid().ok_or_else(|| anyhow::anyhow!("PostgreSQL wrote no postmaster.pid"))?;
        sys::pin_tree(postgres_pid, 0)?;
        Ok(Backends { redis, redis_port, redis_pid, redis_dir, postgres, postgres_pid, runs: 0 })
    }

    fn redis_url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.redis_port)
    }

    fn redis_cpu(&self) -> anyhow::Result<f64> {
        sys::cpu_seconds(self.redis_pid)
    }

    /// The CPU time of the PostgreSQL processes alive now (the servers' connections stay open for a whole run).
    fn postgres_cpu(&self) -> f64 {
        sys::tree_cpu_seconds(self.postgres_pid)
    }

    pub(crate) async fn stop(mut self) {
        let _ = self.redis.kill().await;
        let _ = std::fs::remove_dir_all(&self.redis_dir);
        let _ = tokio::task::spawn_blocking(move || self.postgres.stop()).await;
    }
}

fn per_delivery_ns(cpu_s: f64, deliveries: u64) -> f64 {
    if deliveries == 0 { 0.0 } else { (cpu_s * 1e9 / deliveries as f64).round() }
}

/// The fields every S6 line has, from the measured counts and CPU times.
#[allow(clippy::too_many_arguments)]
fn line(
    system: &str,
    processes: usize,
    clients: usize,
    seconds: f64,
    published: u64,
    in_window: u64,
    window_s: f64,
    delivered: u64,
    server_cpu_s: f64,
    redis_cpu_s: f64,
    postgres_cpu_s: Option<f64>,
    client_cpu_s: Option<f64>,
) -> Value {
    let want = published * clients as u64;
    json!({
        "scenario": "S6", "system": system, "processes": processes, "clients": clients, "seconds": seconds,
        "published": published, "deliveries_in_window": in_window,
        "deliveries_per_s": (in_window as f64 / window_s).round(),
        "delivered_total": delivered, "expected_total": want,
        "server_cpu_s": (server_cpu_s * 1000.0).round() / 1000.0,
        "redis_cpu_s": (redis_cpu_s * 1000.0).round() / 1000.0,
        "server_cpu_ns_per_delivery": per_delivery_ns(server_cpu_s, delivered),
        "redis_cpu_ns_per_delivery": per_delivery_ns(redis_cpu_s, delivered),
        "postgres_cpu_s": postgres_cpu_s.map(|c| (c * 1000.0).round() / 1000.0),
        "postgres_cpu_ns_per_delivery": postgres_cpu_s.map(|c| per_delivery_ns(c, delivered)),
        "cost_ns_per_delivery": per_delivery_ns(server_cpu_s + redis_cpu_s + postgres_cpu_s.unwrap_or(0.0), delivered),
        "client_cpu_ns_per_delivery": client_cpu_s.map(|c| per_delivery_ns(c, delivered)),
        "placement": "server processes, redis-server and PostgreSQL (fsync off; one commit per publish batch) \
                      pinned to CPU 0, clients pinned to CPU 1 (taskset)",
    })
}

/// Tidings: `processes` server children on one fresh PostgreSQL database and one Redis (a key prefix of this run).
pub(crate) async fn tidings(
    backends: &mut Backends,
    processes: usize,
    clients: usize,
    seconds: f64,
    batch: u64,
) -> anyhow::Result<Value> {
    backends.runs += 1;
    let database = create_database(&backends.postgres.url()).await.map_err(|e| anyhow::anyhow!(e))?;
    let env = [
        (DATABASE_URL_VAR, database),
        (REDIS_URL_VAR, backends.redis_url()),
        (REDIS_PREFIX_VAR, format!("bench{}-{}", std::process::id(), backends.runs)),
    ];
    let mut servers = Vec::with_capacity(processes);
    for _ in 0..processes {
        servers.push(ServerChild::start_with("postgres", &env).await?);
    }
    let counts: Arc<Vec<AtomicU64>> = Arc::new((0..clients).map(|_| AtomicU64::new(0)).collect());
    let c = counts.clone();
    let handler: Handler = Arc::new(move |i, e| {
        if let Event::Notification(_) = e {
            count_one(&c[i]);
        }
    });
    let mut fleets = Vec::with_capacity(processes);
    let share = clients.div_ceil(processes);
    for (k, server) in servers.iter().enumerate() {
        let first = k * share;
        let n = share.min(clients - first);
        fleets.push(Fleet::start_at(&server.ws_url(), first, n, &["bench"], 2, handler.clone()).await?);
    }
    let base = total_of(&counts);
    let mut cpu0 = Vec::with_capacity(processes);
    for server in servers.iter_mut() {
        cpu0.push(server.call(json!({"cmd": "cpu"})).await?["cpu_s"].as_f64().unwrap_or(0.0));
    }
    let redis0 = backends.redis_cpu()?;
    let postgres0 = backends.postgres_cpu();
    let client_cpu0 = sys::cpu_seconds(std::process::id())?;
    let t0 = Instant::now();
    servers[0].send(json!({"cmd": "fanout", "seconds": seconds, "batch": batch})).await?;
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    let in_window = total_of(&counts) - base;
    let window = t0.elapsed().as_secs_f64();
    let reply = servers[0].answer().await?;
    let published = reply["published"].as_u64().unwrap_or(0);
    let want = published * clients as u64;
    let delivered = drain(&counts, base, want).await;
    let client_cpu = sys::cpu_seconds(std::process::id())? - client_cpu0;
    let redis_cpu = backends.redis_cpu()? - redis0;
    let postgres_cpu = (backends.postgres_cpu() - postgres0).max(0.0);
    let mut server_cpu = 0.0;
    for (server, before) in servers.iter_mut().zip(cpu0) {
        server_cpu += server.call(json!({"cmd": "cpu"})).await?["cpu_s"].as_f64().unwrap_or(0.0) - before;
    }
    for fleet in fleets {
        fleet.close().await;
    }
    for server in servers {
        server.stop().await?;
    }
    let mut v = line(
        "tidings (redis + postgres)",
        processes,
        clients,
        seconds,
        published,
        in_window,
        window,
        delivered,
        server_cpu,
        redis_cpu,
        Some(postgres_cpu),
        Some(client_cpu),
    );
    v["publisher"] = reply["publisher"].clone();
    Ok(v)
}

/// Socket.IO 4.8.4 with `@socket.io/redis-adapter` 8.3.0: `processes` `server.js` on one Redis, one `client.js`.
pub(crate) async fn socketio(
    backends: &mut Backends,
    processes: usize,
    clients: usize,
    seconds: f64,
    batch: u64,
) -> anyhow::Result<Value> {
    let mut servers = Vec::with_capacity(processes);
    let mut urls = Vec::with_capacity(processes);
    for _ in 0..processes {
        let (server, ready) = NodeProc::start_env("server.js", 0, &[("REDIS_URL", backends.redis_url())]).await?;
        let port = ready.and_then(|r| r["port"].as_u64()).ok_or_else(|| anyhow::anyhow!("no port from server.js"))?;
        urls.push(format!("http://127.0.0.1:{port}"));
        servers.push(server);
    }
    let (mut fleet, _) = NodeProc::start_env("client.js", 1, &[]).await?;
    fleet.call(json!({"cmd": "start", "urls": urls, "n": clients, "topic": "bench"})).await?;
    let base = fleet.call(json!({"cmd": "count"})).await?["total"].as_u64().unwrap_or(0);
    let mut cpu0 = Vec::with_capacity(processes);
    for server in servers.iter_mut() {
        cpu0.push(server.call(json!({"cmd": "cpu"})).await?["cpu_s"].as_f64().unwrap_or(0.0));
    }
    let redis0 = backends.redis_cpu()?;
    let t0 = Instant::now();
    servers[0].send(json!({"cmd": "fanout", "seconds": seconds, "batch": batch})).await?;
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    let in_window = fleet.call(json!({"cmd": "count"})).await?["total"].as_u64().unwrap_or(0) - base;
    let window = t0.elapsed().as_secs_f64();
    let reply = servers[0].answer().await?;
    let published = reply["published"].as_u64().unwrap_or(0);
    let want = base + published * clients as u64;
    let total = fleet.call(json!({"cmd": "wait_total", "want": want, "timeout_ms": 60000})).await?["total"]
        .as_u64()
        .unwrap_or(0);
    let redis_cpu = backends.redis_cpu()? - redis0;
    let mut server_cpu = 0.0;
    for (server, before) in servers.iter_mut().zip(cpu0) {
        server_cpu += server.call(json!({"cmd": "cpu"})).await?["cpu_s"].as_f64().unwrap_or(0.0) - before;
    }
    fleet.quit().await;
    for server in servers {
        server.quit().await;
    }
    let mut v = line(
        "socket.io 4.8.4 + @socket.io/redis-adapter 8.3.0",
        processes,
        clients,
        seconds,
        published,
        in_window,
        window,
        total - base,
        server_cpu,
        redis_cpu,
        None,
        None,
    );
    v["publisher"] = reply["publisher"].clone();
    v["connection_state_recovery"] = json!(false);
    Ok(v)
}
