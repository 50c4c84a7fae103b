//! The Socket.IO 4.8.4 side of S1–S4: `bench/peers/socketio/server.js` pinned to CPU 0 and `client.js` (a
//! fleet of socket.io-client sockets) pinned to CPU 1, driven with the same JSON-line commands as the Tidings
//! server child.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// Where the peer's scripts and node_modules live.
pub(crate) fn peer_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("peers/socketio")
}

pub(crate) struct NodeProc {
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
}

impl NodeProc {
    async fn start(script: &str, cpu: usize) -> anyhow::Result<(Self, Option<Value>)> {
        Self::start_env(script, cpu, &[]).await
    }

    /// Starts `script` pinned to `cpu` with more environment variables (S6: `REDIS_URL`).
    pub(crate) async fn start_env(
        script: &str,
        cpu: usize,
        env: &[(&str, String)],
    ) -> anyhow::Result<(Self, Option<Value>)> {
        let dir = peer_dir();
        anyhow::ensure!(
            dir.join("node_modules/socket.io").is_dir(),
            "Socket.IO is not installed: run `npm ci` in {}",
            dir.display()
        );
        let mut child = Command::new("taskset")
            .args(["-c", &cpu.to_string(), "node", "--max-old-space-size=8192", script])
            .current_dir(&dir)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let stdin = child.stdin.take().expect("piped");
        let stdout = BufReader::new(child.stdout.take().expect("piped")).lines();
        let mut p = NodeProc { child, stdin, stdout };
        let ready = if script == "server.js" { Some(p.answer().await?) } else { None };
        Ok((p, ready))
    }

    pub(crate) async fn send(&mut self, cmd: Value) -> anyhow::Result<()> {
        self.stdin.write_all(format!("{cmd}\n").as_bytes()).await?;
        Ok(self.stdin.flush().await?)
    }

    pub(crate) async fn answer(&mut self) -> anyhow::Result<Value> {
        let line = self.stdout.next_line().await?.ok_or_else(|| anyhow::anyhow!("node process exited"))?;
        let v: Value = serde_json::from_str(&line).map_err(|e| anyhow::anyhow!("node answered {line:?}: {e}"))?;
        if let Some(err) = v.get("error") {
            anyhow::bail!("socket.io peer: {err}");
        }
        Ok(v)
    }

    pub(crate) async fn call(&mut self, cmd: Value) -> anyhow::Result<Value> {
        self.send(cmd).await?;
        self.answer().await
    }

    pub(crate) async fn quit(mut self) {
        let _ = self.send(json!({"cmd": "quit"})).await;
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await.is_err() {
            let _ = self.child.kill().await;
        }
    }
}

async fn pair() -> anyhow::Result<(NodeProc, NodeProc, String)> {
    let (server, ready) = NodeProc::start("server.js", 0).await?;
    let port = ready.and_then(|r| r["port"].as_u64()).ok_or_else(|| anyhow::anyhow!("no port from server.js"))?;
    let (clients, _) = NodeProc::start("client.js", 1).await?;
    Ok((server, clients, format!("http://127.0.0.1:{port}")))
}

fn base(scenario: &str) -> Value {
    json!({"scenario": scenario, "system": "socket.io 4.8.4", "connection_state_recovery": true})
}

pub(crate) async fn s1(connections: usize) -> anyhow::Result<Value> {
    let (mut server, mut clients, url) = pair().await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = server.call(json!({"cmd": "rss"})).await?["rss_kib"].as_u64().unwrap_or(0);
    clients.call(json!({"cmd": "start", "url": url, "n": connections})).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let open = server.call(json!({"cmd": "stats"})).await?["connections_open"].clone();
    let after = server.call(json!({"cmd": "rss"})).await?["rss_kib"].as_u64().unwrap_or(0);
    clients.quit().await;
    server.quit().await;
    let mut v = base("S1");
    v["connections"] = json!(connections);
    v["connections_open"] = open;
    v["rss_per_connection_kib"] =
        json!(((after.saturating_sub(before)) as f64 / connections as f64 * 100.0).round() / 100.0);
    Ok(v)
}

pub(crate) async fn s2(n: usize, seconds: f64, batch: u64) -> anyhow::Result<Value> {
    let (mut server, mut clients, url) = pair().await?;
    clients.call(json!({"cmd": "start", "url": url, "n": n, "topic": "bench"})).await?;
    let base_count = clients.call(json!({"cmd": "count"})).await?["total"].as_u64().unwrap_or(0);
    let t0 = std::time::Instant::now();
    server.send(json!({"cmd": "fanout", "seconds": seconds, "batch": batch})).await?;
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    let in_window = clients.call(json!({"cmd": "count"})).await?["total"].as_u64().unwrap_or(0) - base_count;
    let window = t0.elapsed().as_secs_f64();
    let reply = server.answer().await?;
    let published = reply["published"].as_u64().unwrap_or(0);
    let want = base_count + published * n as u64;
    let total = clients.call(json!({"cmd": "wait_total", "want": want, "timeout_ms": 60000})).await?["total"]
        .as_u64()
        .unwrap_or(0);
    clients.quit().await;
    server.quit().await;
    let mut v = base("S2");
    v["clients"] = json!(n);
    v["published"] = json!(published);
    v["deliveries_in_window"] = json!(in_window);
    v["deliveries_per_s"] = json!((in_window as f64 / window).round());
    v["delivered_total"] = json!(total - base_count);
    v["expected_total"] = json!(published * n as u64);
    v["server_cpu_s"] = reply["cpu_s"].clone();
    v["publisher"] = reply["publisher"].clone();
    Ok(v)
}

pub(crate) async fn s3(n: usize, rate: f64, seconds: f64) -> anyhow::Result<Value> {
    let (mut server, mut clients, url) = pair().await?;
    clients.call(json!({"cmd": "start", "url": url, "n": n, "mode": "latency"})).await?;
    let reply = server.call(json!({"cmd": "targeted", "users": n, "rate": rate, "seconds": seconds})).await?;
    let published = reply["published"].as_u64().unwrap_or(0);
    let l = clients.call(json!({"cmd": "latency", "want": published})).await?;
    clients.quit().await;
    server.quit().await;
    let mut v = base("S3");
    v["clients"] = json!(n);
    v["rate_per_s"] = json!(rate);
    v["published"] = json!(published);
    v["publisher"] = reply["publisher"].clone();
    let received = l["received"].as_u64().unwrap_or(0);
    v["lost"] = json!(published.saturating_sub(received));
    for k in ["p50_us", "p99_us", "p999_us", "max_us"] {
        v[k] = l[k].clone();
    }
    Ok(v)
}

pub(crate) async fn s4(n: usize, rate: f64, seconds: f64, drop_after: f64) -> anyhow::Result<Value> {
    let (mut server, mut clients, url) = pair().await?;
    clients.call(json!({"cmd": "start", "url": url, "n": n, "mode": "sequence"})).await?;
    clients.call(json!({"cmd": "mark_drop", "in_ms": drop_after * 1000.0 - 50.0})).await?;
    let reply = server
        .call(json!({"cmd": "sequence", "users": n, "rate": rate, "seconds": seconds, "drop_after": drop_after}))
        .await?;
    let published = reply["published"].as_u64().unwrap_or(0);
    let r = clients
        .call(json!({"cmd": "sequence", "published": published, "users": n, "dropped_at_ns": reply["dropped_at_ns"]}))
        .await?;
    clients.quit().await;
    server.quit().await;
    let mut v = base("S4");
    v["clients"] = json!(n);
    v["published"] = json!(published);
    v["dropped"] = reply["dropped"].clone();
    v["publisher"] = reply["publisher"].clone();
    for k in [
        "resumed_fraction",
        "missed",
        "duplicates",
        "reconnect_handshake_p50_ms",
        "reconnect_handshake_p99_ms",
        "last_client_back_s",
    ] {
        v[k] = r[k].clone();
    }
    v["backoff"] = json!("socket.io-client default (1 s ±50 %, max 5 s)");
    Ok(v)
}
