//! S5, durable publish (bench/README.md): publishes per second and publish latency through the HTTP API, one
//! notification per request and in batches, with the server child on each store. The load comes from a small
//! HTTP/1.1 client of its own (keep-alive connections, one request in flight on each), so that the client core
//! spends its time on requests rather than on an HTTP library's machinery.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::percentile;
use crate::scenarios::ServerChild;

/// Concurrent connections of the single-publish phase, each with one request in flight.
const SINGLE_CONNECTIONS: usize = 64;
/// Concurrent connections of the batch phase.
const BATCH_CONNECTIONS: usize = 4;
/// Notifications per batch request.
const BATCH_SIZE: usize = 1000;

/// The outcome of one load phase.
struct Phase {
    ok: u64,
    errors: u64,
    latencies_us: Vec<u64>,
    seconds: f64,
}

/// Sends `body` to `path` over `connections` keep-alive connections, one request in flight on each, for
/// `duration`.
async fn load(
    port: u16,
    path: &'static str,
    body: String,
    connections: usize,
    duration: Duration,
) -> anyhow::Result<Phase> {
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        tidings_server::TEST_API_KEY,
        body.len()
    );
    let request: &'static [u8] = Box::leak(request.into_bytes().into_boxed_slice());
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::new();
    for _ in 0..connections {
        tasks.push(tokio::spawn(async move {
            let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
            stream.set_nodelay(true)?;
            let mut buf = vec![0u8; 64 * 1024];
            let (mut ok, mut errors, mut latencies) = (0u64, 0u64, Vec::new());
            while Instant::now() < deadline {
                let t0 = Instant::now();
                stream.write_all(request).await?;
                let status = read_response(&mut stream, &mut buf).await?;
                latencies.push(t0.elapsed().as_micros() as u64);
                if (200..300).contains(&status) {
                    ok += 1;
                } else {
                    errors += 1;
                }
            }
            anyhow::Ok((ok, errors, latencies))
        }));
    }
    let mut phase = Phase { ok: 0, errors: 0, latencies_us: Vec::new(), seconds: 0.0 };
    for task in tasks {
        let (ok, errors, latencies) = task.await??;
        phase.ok += ok;
        phase.errors += errors;
        phase.latencies_us.extend(latencies);
    }
    phase.seconds = started.elapsed().as_secs_f64();
    phase.latencies_us.sort_unstable();
    Ok(phase)
}

/// Reads one HTTP/1.1 response (headers and a `Content-Length` body); returns its status.
async fn read_response(stream: &mut TcpStream, buf: &mut [u8]) -> anyhow::Result<u16> {
    let mut len = 0;
    loop {
        let n = stream.read(&mut buf[len..]).await?;
        anyhow::ensure!(n > 0, "the server closed the connection");
        len += n;
        let Some(end) = buf[..len].windows(4).position(|w| w == b"\r\n\r\n") else { continue };
        let head = std::str::from_utf8(&buf[..end])?;
        let status: u16 = head.get(9..12).and_then(|s| s.parse().ok()).ok_or_else(|| anyhow::anyhow!("bad status"))?;
        let body_len: usize = head
            .lines()
            .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0)))
            .unwrap_or(0);
        let mut have = len - end - 4;
        while have < body_len {
            let n = stream.read(&mut buf[..]).await?;
            anyhow::ensure!(n > 0, "the server closed the connection");
            have += n;
        }
        return Ok(status);
    }
}

/// One notification to one of 1,000 users, with the 64-byte payload of the other scenarios.
fn notification(i: usize) -> Value {
    json!({"users": [format!("u{}", i % 1000)], "type": "bench", "title": "durable publish",
           "data": {"p": "x".repeat(64 - 8)}})
}

/// The SQLite store's writer thread (its name as the kernel keeps it: 15 bytes).
const WRITER_THREAD: &str = "tidings-sqlite-";

/// The server child's CPU seconds: in all, and in its SQLite writer and checkpointer threads (which share a
/// truncated name); zeros when it cannot be read (e.g. under a profiling wrapper).
fn server_cpu(server: &ServerChild) -> (f64, f64) {
    let threads = server.pid().and_then(|pid| crate::sys::thread_cpu_seconds(pid).ok()).unwrap_or_default();
    (threads.values().sum(), threads.get(WRITER_THREAD).copied().unwrap_or(0.0))
}

/// S5 on `store`: `seconds` of single publishes, then `seconds` of batch publishes.
pub(crate) async fn s5(store: &str, seconds: f64) -> anyhow::Result<Value> {
    let server = ServerChild::start_on(store).await?;
    let duration = Duration::from_secs_f64(seconds);
    let cpu0 = server_cpu(&server);
    let single = load(server.port, "/v1/publish", notification(7).to_string(), SINGLE_CONNECTIONS, duration).await?;
    let batch_body = json!({"notifications": (0..BATCH_SIZE).map(notification).collect::<Vec<_>>()}).to_string();
    let cpu1 = server_cpu(&server);
    let batch = load(server.port, "/v1/publish/batch", batch_body, BATCH_CONNECTIONS, duration).await?;
    let cpu2 = server_cpu(&server);
    server.stop().await?;
    let ms = |us: u64| us as f64 / 1000.0;
    // CPU per notification (µs): steadier than throughput on a shared machine, where other work takes turns on
    // the server's CPU.
    let per_us = |cpu: f64, n: u64| if n == 0 { 0.0 } else { (cpu * 1e7 / n as f64).round() / 10.0 };
    let batch_notifications = batch.ok * BATCH_SIZE as u64;
    Ok(json!({
        "scenario": "S5", "system": "tidings", "store": store, "seconds": seconds,
        "single_publishes_per_s": (single.ok as f64 / single.seconds).round(),
        "single_p50_ms": ms(percentile(&single.latencies_us, 50.0)),
        "single_p99_ms": ms(percentile(&single.latencies_us, 99.0)),
        "single_errors": single.errors,
        "batch_notifications_per_s": (batch.ok as f64 * BATCH_SIZE as f64 / batch.seconds).round(),
        "batch_p50_ms": ms(percentile(&batch.latencies_us, 50.0)),
        "batch_p99_ms": ms(percentile(&batch.latencies_us, 99.0)),
        "batch_errors": batch.errors,
        "single_server_cpu_us": per_us(cpu1.0 - cpu0.0, single.ok),
        "single_store_threads_cpu_us": per_us(cpu1.1 - cpu0.1, single.ok),
        "batch_server_cpu_us": per_us(cpu2.0 - cpu1.0, batch_notifications),
        "batch_store_threads_cpu_us": per_us(cpu2.1 - cpu1.1, batch_notifications),
        "publisher": format!(
            "HTTP/1.1 keep-alive from the clients' CPU: {SINGLE_CONNECTIONS} connections with one POST /v1/publish \
             (one notification to one of 1,000 users) in flight each, then {BATCH_CONNECTIONS} connections with one \
             POST /v1/publish/batch of {BATCH_SIZE} in flight each; a 2xx means committed"
        ),
    }))
}
