//! The server side of a run: `tidings-bench server-proc`, started by the parent under `taskset -c 0`. It runs
//! the reference server on a single-threaded runtime and an in-process publisher on the same thread (the
//! analogue of Socket.IO's server-side `emit`), and takes commands as JSON lines on stdin, answering each with
//! one JSON line on stdout.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tidings_core::protocol::{Priority, RawJson};
use tidings_server::{PublishRequest, ServerConfig, StoreConfig, Synchronous};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::floor::FloorServer;
use crate::sys;

/// A 64-byte data payload (the JSON text `{"p":"…"}` is exactly 64 bytes).
pub(crate) fn payload64() -> RawJson {
    RawJson::from_string(format!(r#"{{"p":"{}"}}"#, "x".repeat(64 - 8))).expect("valid JSON")
}

/// The database of `server-proc postgres` (S6), set by the parent.
pub(crate) const DATABASE_URL_VAR: &str = "TIDINGS_BENCH_DATABASE_URL";
/// With it, `server-proc` runs on the Redis broker (S6), with the key prefix of [`REDIS_PREFIX_VAR`].
pub(crate) const REDIS_URL_VAR: &str = "TIDINGS_BENCH_REDIS_URL";
pub(crate) const REDIS_PREFIX_VAR: &str = "TIDINGS_BENCH_REDIS_PREFIX";

/// Which store the server child runs on: `memory`, `sqlite` (synchronous full), `sqlite-normal` or `postgres`
/// (the database of [`DATABASE_URL_VAR`]).
pub(crate) fn store_config(name: &str, dir: &std::path::Path) -> anyhow::Result<StoreConfig> {
    Ok(match name {
        "memory" => StoreConfig::Memory,
        "sqlite" => StoreConfig::Sqlite { data_dir: dir.to_owned(), synchronous: Synchronous::Full },
        "sqlite-normal" => StoreConfig::Sqlite { data_dir: dir.to_owned(), synchronous: Synchronous::Normal },
        "postgres" => StoreConfig::Postgres {
            url: std::env::var(DATABASE_URL_VAR).map_err(|_| anyhow::anyhow!("{DATABASE_URL_VAR} is not set"))?,
        },
        other => anyhow::bail!("unknown store {other:?} (memory, sqlite, sqlite-normal, postgres)"),
    })
}

/// `server-proc [STORE]`: the server on STORE (default `memory`; SQLite in a fresh directory removed at the end).
pub(crate) fn run(args: &[String]) -> anyhow::Result<()> {
    let store = args.first().map(String::as_str).unwrap_or("memory").to_owned();
    let data_dir = std::env::temp_dir().join(format!("tidings-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data_dir);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let result = rt.block_on(async {
        let mut config = ServerConfig::for_tests();
        config.outbound_queue_limit = 1 << 20;
        config.replay_max_items = 100_000;
        config.rate_limit_frames_per_sec = u32::MAX;
        config.store = store_config(&store, &data_dir)?;
        if let Ok(url) = std::env::var(REDIS_URL_VAR) {
            let mut redis = tidings_server::broker_redis::RedisConfig::new(url);
            if let Ok(prefix) = std::env::var(REDIS_PREFIX_VAR) {
                redis.prefix = prefix;
            }
            config.redis = Some(redis);
        }
        let server = tidings_server::start(config).await?;
        println!("{}", json!({"ready": true, "port": server.local_addr().port(), "pid": std::process::id()}));
        let mut lines = BufReader::new(tokio::io::stdin()).lines();
        let pid = std::process::id();
        let mut floor = None;
        while let Some(line) = lines.next_line().await? {
            let cmd: Value = serde_json::from_str(&line)?;
            let reply = match cmd["cmd"].as_str().unwrap_or("") {
                "rss" => json!({"rss_kib": sys::rss_kib(pid)?}),
                "cpu" => json!({"cpu_s": sys::cpu_seconds(pid)?}),
                "stats" => json!({"connections_open": server.stats().connections_open, "deliveries": server.stats().deliveries, "slow_consumers": server.stats().slow_consumers}),
                "fanout" => fanout(&server, secs(&cmd), cmd["batch"].as_u64().unwrap_or(1).max(1), pid).await?,
                "targeted" => targeted(&server, &cmd, pid).await?,
                "sequence" => sequence(&server, &cmd).await?,
                "topic_paced" => topic_paced(&server, &cmd, pid).await?,
                "floor_listen" => {
                    let (server, port) = FloorServer::listen(cmd["n"].as_u64().unwrap_or(1000) as usize)?;
                    floor = Some(server);
                    json!({"port": port})
                }
                // Blocks this thread, the server's: the reference server has no clients during the floor run.
                "floor_run" => match floor.take() {
                    Some(f) => json!({"published": f.publish(cmd["rate"].as_f64().unwrap_or(2000.0), secs(&cmd))?}),
                    None => json!({"error": "floor_run before floor_listen"}),
                },
                "quit" => break,
                other => json!({"error": format!("unknown command {other:?}")}),
            };
            println!("{reply}");
        }
        server.shutdown().await;
        anyhow::Ok(())
    });
    let _ = std::fs::remove_dir_all(&data_dir);
    result
}

fn secs(cmd: &Value) -> Duration {
    Duration::from_secs_f64(cmd["seconds"].as_f64().unwrap_or(10.0))
}

/// S2 publisher pacing: most deliveries queued but not yet acknowledged by the clients (about one second of
/// the clients' work on this machine).
const MAX_UNACKED_DELIVERIES: u64 = 1_000_000;
/// S2: most batch publishes in progress at once.
const IN_FLIGHT: usize = 8;

/// S2: notifications to `topic:bench` for `seconds`, as fast as the server takes them: one in-process batch
/// publish of `batch` notifications (what `POST /v1/publish/batch` does after parsing: one commit on SQLite), then
/// a yield so the connection tasks drain their queues (batch 1 = one publish per scheduler turn, like Socket.IO's
/// plain emit loop).
async fn fanout(
    server: &tidings_server::RunningServer,
    duration: Duration,
    batch: u64,
    pid: u32,
) -> anyhow::Result<Value> {
    let publisher = server.publisher();
    let data = payload64();
    let cpu0 = sys::cpu_seconds(pid)?;
    let start_ns = sys::wall_ns();
    let started = Instant::now();
    let mut published = 0u64;
    let mut paused = Duration::ZERO;
    // Up to IN_FLIGHT batches at once: a publish completes at its commit (a disk sync on SQLite), and a publisher
    // that waited for each before the next would measure the disk, not the fan-out.
    let mut in_flight = tokio::task::JoinSet::new();
    while started.elapsed() < duration {
        let requests: Vec<PublishRequest> = (0..batch)
            .map(|_| PublishRequest::new("bench").topic("bench").priority(Priority::Important).data(data.clone()))
            .collect();
        let publisher = publisher.clone();
        in_flight.spawn(async move { publisher.publish_batch(requests).await });
        published += batch;
        while in_flight.len() >= IN_FLIGHT {
            if let Some(results) = in_flight.join_next().await {
                for result in results? {
                    result?;
                }
            }
        }
        tokio::task::yield_now().await;
        // Flow control by acks: once the clients are the bottleneck, publishing further only fills socket
        // buffers (gigabytes on loopback) that drain long after the window.
        loop {
            let stats = server.stats();
            if stats.deliveries.saturating_sub(stats.acks) <= MAX_UNACKED_DELIVERIES || started.elapsed() >= duration {
                break;
            }
            let at = Instant::now();
            tokio::time::sleep(Duration::from_millis(1)).await;
            paused += at.elapsed();
        }
    }
    while let Some(results) = in_flight.join_next().await {
        for result in results? {
            result?;
        }
    }
    Ok(json!({
        "published": published,
        "start_ns": start_ns,
        "end_ns": sys::wall_ns(),
        "cpu_s": sys::cpu_seconds(pid)? - cpu0,
        "paced_ms": paused.as_millis() as u64,
        "publisher": format!(
            "in-process on the server thread, one batch publish of {batch} notification(s) per scheduler turn, up to \
             {IN_FLIGHT} of them in progress at once, paused while more than {MAX_UNACKED_DELIVERIES} deliveries are \
             unacknowledged"
        ),
    }))
}

/// How the S3 and S4 publishers keep time, on both sides (this is `sleepUntil` of the Socket.IO peer's
/// `server.js`): a timer for all but the last half millisecond of waits over 1 ms, then scheduler turns until
/// due. tokio's and Node's timers both tick in whole milliseconds; at 2,000/s a timer alone would publish in
/// pairs once a millisecond.
const PACED: &str = "in-process on the server thread, paced as the Socket.IO peer paces: a timer for waits over 1 ms, \
                     then scheduler turns (tokio::task::yield_now, Node's setImmediate) until due";

async fn sleep_until(due: Instant) {
    let left = due.saturating_duration_since(Instant::now());
    if left > Duration::from_millis(1) {
        tokio::time::sleep(left - Duration::from_micros(500)).await;
    }
    while Instant::now() < due {
        tokio::task::yield_now().await;
    }
}

/// S3: `rate` notifications per second, round robin over `users` user streams, each carrying its publish time.
async fn targeted(server: &tidings_server::RunningServer, cmd: &Value, pid: u32) -> anyhow::Result<Value> {
    let publisher = server.publisher();
    let users = cmd["users"].as_u64().unwrap_or(1000);
    let rate = cmd["rate"].as_f64().unwrap_or(2000.0);
    let duration = secs(cmd);
    let pad = "x".repeat(32);
    let cpu0 = sys::cpu_seconds(pid)?;
    let started = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / rate);
    // On a durable store a publish completes at its commit (a disk sync with synchronous = full), so one at a time
    // could not keep the rate: each is then a task of its own, and concurrent ones share commits.
    let concurrent = cmd["concurrent"].as_bool().unwrap_or(false);
    let mut in_flight = Vec::new();
    let mut published = 0u64;
    while started.elapsed() < duration {
        let due = started + interval.mul_f64(published as f64);
        sleep_until(due).await;
        let user = format!("u{}", published % users);
        let data = RawJson::from_string(format!(r#"{{"t":{},"p":"{pad}"}}"#, sys::wall_ns()))?;
        let request = PublishRequest::new("bench").user(user).data(data);
        if concurrent {
            let publisher = publisher.clone();
            in_flight.push(tokio::spawn(async move { publisher.publish(request).await }));
        } else {
            publisher.publish(request).await?;
        }
        published += 1;
    }
    for publish in in_flight {
        publish.await??;
    }
    let how = if concurrent {
        format!("{PACED}; each publish a task of its own (a durable store commits them in groups)")
    } else {
        PACED.to_owned()
    };
    Ok(json!({"published": published, "cpu_s": sys::cpu_seconds(pid)? - cpu0, "publisher": how}))
}

/// I3: `rate` notifications per second to `topic:bench`, each carrying its publish time.
async fn topic_paced(server: &tidings_server::RunningServer, cmd: &Value, pid: u32) -> anyhow::Result<Value> {
    let publisher = server.publisher();
    let rate = cmd["rate"].as_f64().unwrap_or(100.0);
    let duration = secs(cmd);
    let pad = "x".repeat(32);
    let cpu0 = sys::cpu_seconds(pid)?;
    let started = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / rate);
    let mut published = 0u64;
    while started.elapsed() < duration {
        sleep_until(started + interval.mul_f64(published as f64)).await;
        let data = RawJson::from_string(format!(r#"{{"t":{},"p":"{pad}"}}"#, sys::wall_ns()))?;
        publisher.publish(PublishRequest::new("bench").topic("bench").priority(Priority::Important).data(data)).await?;
        published += 1;
    }
    Ok(json!({"published": published, "cpu_s": sys::cpu_seconds(pid)? - cpu0, "publisher": PACED}))
}

/// S4: `rate` notifications per second, round robin over `users`, each with the user's next sequence number;
/// after `drop_after` seconds every connection is dropped while publishing goes on.
async fn sequence(server: &tidings_server::RunningServer, cmd: &Value) -> anyhow::Result<Value> {
    let publisher = server.publisher();
    let users = cmd["users"].as_u64().unwrap_or(1000);
    let rate = cmd["rate"].as_f64().unwrap_or(1000.0);
    let duration = secs(cmd);
    let drop_after = Duration::from_secs_f64(cmd["drop_after"].as_f64().unwrap_or(3.0));
    let started = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / rate);
    let mut published = 0u64;
    let mut dropped_at_ns = None;
    let mut dropped = 0;
    while started.elapsed() < duration {
        let due = started + interval.mul_f64(published as f64);
        sleep_until(due).await;
        if dropped_at_ns.is_none() && started.elapsed() >= drop_after {
            dropped_at_ns = Some(sys::wall_ns());
            dropped = server.drop_connections(None).await;
        }
        let user = published % users;
        let seq = published / users;
        let data = RawJson::from_string(format!(r#"{{"seq":{seq}}}"#))?;
        publisher.publish(PublishRequest::new("bench").user(format!("u{user}")).data(data)).await?;
        published += 1;
    }
    Ok(
        json!({"published": published, "per_user": published.div_ceil(users), "dropped": dropped, "dropped_at_ns": dropped_at_ns, "publisher": PACED}),
    )
}
