//! I3 (bench/README.md): SSE fan-out — `clients` Server-Sent Events responses (`GET /v1/sse?topics=bench`, one
//! per user, `Authorization` header) against the server child, a paced publisher on `topic:bench` (each
//! notification carries its publish time), and the same load over WebSocket with SDK clients beside it: deliveries
//! per second, delivery latency (publish → parsed at the client) p50/p99, and what did not arrive.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tidings_core::engine::Event;

use crate::scenarios::{Fleet, ServerChild};
use crate::{percentile, sys};

/// The publish time (ns) carried in a notification's data (`{"t":…,`).
fn publish_ns(data: &str) -> Option<u64> {
    data.split("\"t\":").nth(1)?.split([',', '}']).next()?.parse().ok()
}

/// What the readers of one transport saw.
#[derive(Default)]
struct Tally {
    delivered: AtomicU64,
    ready: AtomicUsize,
    latencies_us: Mutex<Vec<u64>>,
}

impl Tally {
    fn record(&self, t: Option<u64>) {
        self.delivered.fetch_add(1, Ordering::Relaxed);
        if let Some(t) = t {
            self.latencies_us.lock().unwrap().push(sys::wall_ns().saturating_sub(t) / 1000);
        }
    }
}

/// One SSE response read to its end: counts notification events, takes their latency; ready after the two
/// continuity events (the user's stream and the topic).
async fn sse_reader(http: reqwest::Client, url: String, token: String, tally: Arc<Tally>) -> anyhow::Result<()> {
    let mut response = http.get(&url).bearer_auth(token).send().await?;
    anyhow::ensure!(response.status().is_success(), "GET /v1/sse: {}", response.status());
    let mut pending = String::new();
    let mut continuity = 0;
    while let Some(chunk) = response.chunk().await? {
        pending.push_str(std::str::from_utf8(&chunk)?);
        while let Some(end) = pending.find('\n') {
            let line = &pending[..end];
            if let Some(data) = line.strip_prefix("data: ") {
                if data.starts_with("{\"op\":\"notification\"") {
                    tally.record(publish_ns(data));
                } else if data.starts_with("{\"op\":\"subscribed\"") {
                    continuity += 1;
                    if continuity == 2 {
                        tally.ready.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
            pending.drain(..=end);
        }
    }
    Ok(())
}

async fn wait_ready(tally: &Tally, n: usize, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    while tally.ready.load(Ordering::SeqCst) < n {
        anyhow::ensure!(Instant::now() < deadline, "only {} of {n} {what} ready", tally.ready.load(Ordering::SeqCst));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// Publishes `rate`/s to `topic:bench` for `seconds` and waits (up to 30 s) for every delivery; the result row.
async fn measure(
    server: &mut ServerChild,
    tally: &Tally,
    transport: &str,
    clients: usize,
    rate: f64,
    seconds: f64,
) -> anyhow::Result<Value> {
    let base = tally.delivered.load(Ordering::Relaxed);
    let t0 = Instant::now();
    let reply = server.call(json!({"cmd": "topic_paced", "rate": rate, "seconds": seconds})).await?;
    let published = reply["published"].as_u64().unwrap_or(0);
    let want = published * clients as u64;
    let deadline = Instant::now() + Duration::from_secs(30);
    while tally.delivered.load(Ordering::Relaxed) - base < want && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let delivered = tally.delivered.load(Ordering::Relaxed) - base;
    let elapsed = t0.elapsed().as_secs_f64();
    let mut l = std::mem::take(&mut *tally.latencies_us.lock().unwrap());
    l.sort_unstable();
    let ms = |us: u64| us as f64 / 1000.0;
    Ok(json!({
        "transport": transport, "clients": clients, "rate_per_s": rate, "seconds": seconds, "published": published,
        "expected": want, "delivered": delivered, "lost": want.saturating_sub(delivered),
        "deliveries_per_s": (delivered as f64 / elapsed.max(seconds)).round(),
        "p50_ms": ms(percentile(&l, 50.0)), "p99_ms": ms(percentile(&l, 99.0)), "max_ms": ms(l.last().copied().unwrap_or(0)),
        "server_cpu_s": reply["cpu_s"],
    }))
}

/// I3: SSE and WebSocket fan-out of the same paced load to `clients` clients, on the memory store.
pub(crate) async fn i3(clients: usize, rate: f64, seconds: f64) -> anyhow::Result<Value> {
    // SSE.
    let mut server = ServerChild::start_on("memory").await?;
    let url = format!("http://127.0.0.1:{}/v1/sse?topics=bench", server.port);
    tidings_server::install_crypto_provider();
    let http = reqwest::Client::builder().pool_max_idle_per_host(0).build()?;
    let sse = Arc::new(Tally::default());
    let mut readers = tokio::task::JoinSet::new();
    for i in 0..clients {
        let token = tidings_server::issue_token(tidings_server::TEST_JWT_SECRET, &format!("u{i}"), &["bench"], None);
        readers.spawn(sse_reader(http.clone(), url.clone(), token, sse.clone()));
        if i % 250 == 249 {
            wait_ready(&sse, i + 1, "SSE responses").await?;
        }
    }
    wait_ready(&sse, clients, "SSE responses").await?;
    let sse_row = measure(&mut server, &sse, "sse", clients, rate, seconds).await?;
    readers.abort_all();
    server.stop().await?;

    // WebSocket, SDK clients, the same load.
    let mut server = ServerChild::start_on("memory").await?;
    let ws = Arc::new(Tally::default());
    let w = ws.clone();
    let handler: Arc<dyn Fn(usize, Event) + Send + Sync> = Arc::new(move |_, e| {
        if let Event::Notification(n) = e {
            w.record(n.data().and_then(publish_ns));
        }
    });
    let fleet = Fleet::start(&server.ws_url(), clients, &["bench"], 2, handler).await?;
    let ws_row = measure(&mut server, &ws, "websocket", clients, rate, seconds).await?;
    fleet.close().await;
    server.stop().await?;
    Ok(json!({
        "scenario": "I3", "system": "tidings", "store": "memory", "clients": clients, "rate_per_s": rate,
        "seconds": seconds, "rows": [sse_row, ws_row],
        "publisher": "in-process on the server thread, paced (as S3), to topic:bench; each notification carries its \
                      publish time, latency is taken when the client has parsed it",
        "clients_how": "SSE: one GET /v1/sse?topics=bench per user over HTTP/1.1 (reqwest), lines parsed as they \
                        arrive; WebSocket: the native SDK client (tidings_core::native), batching off",
    }))
}
