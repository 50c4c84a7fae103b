//! `tidings-bench`: measurements of the reference server with native SDK clients on loopback.
//! Each subcommand prints one JSON line with its results (and a human summary on stderr).

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// The benchmark processes (clients and the server child) use mimalloc, as a production server or app may; glibc's
/// allocator spent most of the client core in malloc/free/consolidate (see BENCHMARKS.md). mimalloc runs with
/// transparent huge pages off and without returning freed memory to the kernel (see [`allocator_options`]).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod child;
mod cluster;
mod durable;
mod floor;
mod inbox;
mod peer;
mod push;
mod report;
mod scenarios;
mod sse;
mod sys;

use clap::{Parser, Subcommand, ValueEnum};
use serde_json::json;
use tidings_core::engine::Event;
use tidings_core::native::{Client, ClientConfig, StaticToken};
use tidings_server::{PublishRequest, ServerConfig};

#[derive(Parser)]
#[command(about = "Tidings load and latency tool")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the scenarios of bench/README.md (server on CPU 0, clients on CPU 1); one JSON line each.
    Run {
        /// Which scenarios (s1, s2, s3, s4, s5: durable publish; s6: fan-out across processes through Redis; p1,
        /// p2: push send throughput; i1: inbox list, i2: mark all read, i3: SSE fan-out), comma-separated.
        #[arg(long, default_value = "s1,s2,s3,s4,s5,s6,p1,p2,i1,i2,i3", value_delimiter = ',')]
        scenarios: Vec<String>,
        /// The server's stores for S2 and S3 (memory, sqlite, sqlite-normal), comma-separated; the peer runs once.
        /// S5 always runs on all three; S1 and S4 on memory.
        #[arg(long, default_value = "memory,sqlite", value_delimiter = ',')]
        stores: Vec<String>,
        /// S1 connections.
        #[arg(long, default_value_t = 10_000)]
        s1_connections: usize,
        /// Clients in S2–S4.
        #[arg(long, default_value_t = 1000)]
        clients: usize,
        /// Duration of S2–S4, seconds.
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        /// S2: publishes per scheduler turn on the server (1 = one per turn), for both systems.
        #[arg(long, default_value_t = 16)]
        publish_batch: u64,
        /// Also run the peers (Socket.IO 4.8.4 for S1–S4, npm web-push 3.6.7 for P1) and print the comparisons;
        /// `none` skips them.
        #[arg(long, default_value = "socketio")]
        peer: String,
        /// Runs of each scenario, alternating Tidings and the peer (the report takes the median of each metric).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=99))]
        runs: u32,
        /// P1/P2: requests in flight per sender.
        #[arg(long, default_value_t = 64)]
        push_concurrency: u64,
        /// P1/P2: timed sending per system, seconds (after a warm-up of 500 pushes).
        #[arg(long, default_value_t = 5.0)]
        push_seconds: f64,
        /// I1: users (inboxes). I1 runs once whatever `--runs` says (seeding is most of its time).
        #[arg(long, default_value_t = 10_000)]
        inbox_users: usize,
        /// I1: items per inbox.
        #[arg(long, default_value_t = 10_000)]
        inbox_items: u64,
        /// I1: page reads per kind of page.
        #[arg(long, default_value_t = 2000)]
        inbox_reads: usize,
        /// I2: unread items per inbox, comma-separated.
        #[arg(long, default_value = "100,1000,10000", value_delimiter = ',')]
        markall_sizes: Vec<u64>,
        /// I2: inboxes per size.
        #[arg(long, default_value_t = 20)]
        markall_inboxes: usize,
        /// I3: SSE (and WebSocket) clients.
        #[arg(long, default_value_t = 1000)]
        sse_clients: usize,
        /// I3: notifications per second to the topic (each goes to every client).
        #[arg(long, default_value_t = 100.0)]
        sse_rate: f64,
    },
    /// Write BENCHMARKS.md and bench/plots/*.svg from the JSON lines of a `run`.
    Report {
        /// The results file (JSON lines from `run`).
        #[arg(long, default_value = "bench/results/latest.jsonl")]
        input: std::path::PathBuf,
        /// The repository root.
        #[arg(long, default_value = ".")]
        root: std::path::PathBuf,
        /// The command that produced the results, quoted in BENCHMARKS.md.
        #[arg(long, default_value = "cargo xtask bench")]
        command: String,
    },
    /// (internal) The server child of `run`.
    #[command(hide = true)]
    ServerProc {
        /// Arguments for the child.
        args: Vec<String>,
    },
    /// (internal) The mock push services of P1/P2.
    #[command(hide = true)]
    PushMocksProc,
    /// (internal) The Tidings sender of P1/P2.
    #[command(hide = true)]
    PushSendProc {
        /// The sender's configuration (JSON).
        config: std::path::PathBuf,
    },
    /// Publish-to-app-callback latency of notifications sent one at a time to one client.
    Latency {
        /// How many notifications.
        #[arg(long, default_value_t = 1000)]
        count: usize,
        /// Pause between publishes, in microseconds (measures latency, not throughput).
        #[arg(long, default_value_t = 1000)]
        interval_us: u64,
        /// How to publish.
        #[arg(long, value_enum, default_value_t = Via::InProcess)]
        via: Via,
    },
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
enum Via {
    /// The server's in-process publisher (what `POST /v1/publish` runs after parsing).
    InProcess,
    /// `POST /v1/publish` over loopback HTTP.
    Http,
}

/// mimalloc options for the benchmark processes, set by re-executing the tool once (mimalloc reads its options
/// when the process starts; the server child inherits them). Explicit values in the environment are kept.
///
/// - `MIMALLOC_ALLOW_THP=0`: mimalloc asks the kernel for transparent huge pages (`madvise(MADV_HUGEPAGE)`) by
///   default and returns freed memory after a delay; every 2 MiB page it then touches again is zeroed by the
///   kernel. Profiled in S2 (`perf record` on the client process), `clear_page_erms` was 39 % of the client
///   core, and turning THP off doubled the deliveries the clients took (205–235 k/s → 467–508 k/s).
/// - `MIMALLOC_PURGE_DELAY=-1`: the client process runs the scenarios one after another; after S2 freed the
///   memory of 1,000 busy clients, mimalloc returned it to the kernel in pieces during S3 and S3's p99 became
///   36–37 ms (two runs). Not returning freed memory (as a long-running app or server would keep its peak
///   heap), S3 after S2 gave p99 586 µs, in line with S3 run alone in a fresh process (1.4–3.7 ms that hour).
fn allocator_options() -> anyhow::Result<()> {
    let options = [("MIMALLOC_ALLOW_THP", "0"), ("MIMALLOC_PURGE_DELAY", "-1")];
    let missing: Vec<_> = options.iter().filter(|(k, _)| std::env::var_os(k).is_none()).collect();
    if missing.is_empty() {
        return Ok(());
    }
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    cmd.args(std::env::args_os().skip(1));
    for (k, v) in &missing {
        cmd.env(k, v);
    }
    let err = cmd.exec();
    Err(anyhow::anyhow!("re-executing tidings-bench with its mimalloc options: {err}"))
}

fn main() -> anyhow::Result<()> {
    allocator_options()?;
    let cli = Cli::parse();
    match cli.command {
        Command::Run {
            scenarios,
            stores,
            s1_connections,
            clients,
            seconds,
            publish_batch,
            peer,
            runs,
            push_concurrency,
            push_seconds,
            inbox_users,
            inbox_items,
            inbox_reads,
            markall_sizes,
            markall_inboxes,
            sse_clients,
            sse_rate,
        } => run(
            &scenarios,
            &stores,
            Sizes {
                s1_connections,
                clients,
                seconds,
                publish_batch,
                push_concurrency,
                push_seconds,
                inbox: InboxSizes {
                    users: inbox_users,
                    items: inbox_items,
                    reads: inbox_reads,
                    markall_sizes,
                    markall_inboxes,
                    sse_clients,
                    sse_rate,
                },
            },
            peer == "socketio",
            runs,
        ),
        Command::ServerProc { args } => child::run(&args),
        Command::PushMocksProc => push::mocks_proc(),
        Command::PushSendProc { config } => push::send_proc(&config),
        Command::Report { input, root, command } => report::write(&input, &root, &command),
        Command::Latency { count, interval_us, via } => latency(count, Duration::from_micros(interval_us), via),
    }
}

/// The sizes of I1–I3.
struct InboxSizes {
    users: usize,
    items: u64,
    reads: usize,
    markall_sizes: Vec<u64>,
    markall_inboxes: usize,
    sse_clients: usize,
    sse_rate: f64,
}

/// The sizes of a `run`'s scenarios.
struct Sizes {
    inbox: InboxSizes,
    s1_connections: usize,
    clients: usize,
    seconds: f64,
    publish_batch: u64,
    push_concurrency: u64,
    push_seconds: f64,
}

fn run(which: &[String], stores: &[String], sizes: Sizes, with_peer: bool, runs: u32) -> anyhow::Result<()> {
    let Sizes { s1_connections, clients, seconds, publish_batch, push_concurrency, push_seconds, inbox } = sizes;
    let fds = sys::raise_fd_limit()?;
    let nproc = sys::nproc();
    sys::pin_self(1)?;
    eprintln!("tidings-bench: {nproc} CPUs ({}), server on CPU 0, clients on CPU 1, fd limit {fds}", sys::cpu_model());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let stamp = |mut v: serde_json::Value| {
        if v.get("placement").is_none() {
            v["placement"] = json!(
                "server pinned to CPU 0, clients pinned to CPU 1 (taskset); the Tidings processes use mimalloc with \
                 transparent huge pages off and no purging of freed memory"
            );
        }
        v["cpu"] = json!(sys::cpu_model());
        v["nproc"] = json!(nproc);
        v
    };
    // The mock push services start with the first push scenario (their process would only sit on CPU 1 before).
    let mut push_rig: Option<push::Rig> = None;
    for s in which {
        if s == "p1" || s == "p2" {
            if push_rig.is_none() {
                push_rig = Some(rt.block_on(push::Rig::start(push_concurrency, push_seconds))?);
            }
            let rig = push_rig.as_mut().expect("started above");
            for n in 1..=runs {
                let ours = if s == "p1" {
                    stamp(with_steal(|| rt.block_on(rig.p1_tidings()))?)
                } else {
                    stamp(with_steal(|| rt.block_on(rig.p2_tidings()))?)
                };
                let ours = numbered(ours, n, runs);
                println!("{ours}");
                if s == "p1" && with_peer {
                    let theirs = numbered(stamp(with_steal(|| rt.block_on(rig.p1_web_push_npm()))?), n, runs);
                    println!("{theirs}");
                    println!("{}", numbered(compare(&ours, &theirs), n, runs));
                }
            }
            continue;
        }
        if s == "s6" {
            // Fan-out across processes through Redis: one process and two, each system, alternating.
            let mut backends = rt.block_on(cluster::Backends::start())?;
            for n in 1..=runs {
                let mut lines = Vec::new();
                for processes in [1, 2] {
                    let ours = stamp(with_steal(|| {
                        rt.block_on(cluster::tidings(&mut backends, processes, clients, seconds, publish_batch))
                    })?);
                    println!("{}", numbered(ours.clone(), n, runs));
                    if with_peer {
                        let theirs = stamp(with_steal(|| {
                            rt.block_on(cluster::socketio(&mut backends, processes, clients, seconds, publish_batch))
                        })?);
                        println!("{}", numbered(theirs.clone(), n, runs));
                        lines.push((ours, theirs));
                    }
                }
                for (ours, theirs) in &lines {
                    let mut c = compare(ours, theirs);
                    c["processes"] = ours["processes"].clone();
                    println!("{}", numbered(c, n, runs));
                }
            }
            rt.block_on(backends.stop());
            continue;
        }
        if s == "i1" {
            // Once: seeding 10,000 × 10,000 items is most of the scenario's time.
            let line = stamp(with_steal(|| rt.block_on(inbox::i1(inbox.users, inbox.items, inbox.reads)))?);
            println!("{line}");
            continue;
        }
        for n in 1..=runs {
            if s == "i2" || s == "i3" {
                let line = stamp(with_steal(|| {
                    rt.block_on(async {
                        if s == "i2" {
                            inbox::i2(&inbox.markall_sizes, inbox.markall_inboxes).await
                        } else {
                            sse::i3(inbox.sse_clients, inbox.sse_rate, seconds).await
                        }
                    })
                })?);
                println!("{}", numbered(line, n, runs));
                continue;
            }
            if s == "s5" {
                // Durable publish: no peer (Socket.IO keeps nothing), the server on each store in turn.
                for store in ["memory", "sqlite", "sqlite-normal"] {
                    let line = stamp(with_steal(|| rt.block_on(durable::s5(store, seconds.min(5.0))))?);
                    println!("{}", numbered(line, n, runs));
                }
                continue;
            }
            let ours = stamp(with_steal(|| {
                rt.block_on(async {
                    match s.as_str() {
                        "s1" => scenarios::s1(s1_connections).await,
                        "s2" => scenarios::s2(clients, seconds, publish_batch, "memory").await,
                        "s3" => scenarios::s3(clients, 2000.0, seconds, "memory").await,
                        "s4" => scenarios::s4(clients, 1000.0, seconds, 3.0).await,
                        other => Err(anyhow::anyhow!("unknown scenario {other:?}")),
                    }
                })
            })?);
            let ours = numbered(ours, n, runs);
            println!("{ours}");
            if s == "s2" || s == "s3" {
                for store in stores.iter().filter(|st| *st != "memory") {
                    let durable = stamp(with_steal(|| {
                        rt.block_on(async {
                            match s.as_str() {
                                "s2" => scenarios::s2(clients, seconds, publish_batch, store).await,
                                _ => scenarios::s3(clients, 2000.0, seconds, store).await,
                            }
                        })
                    })?);
                    println!("{}", numbered(durable, n, runs));
                }
            }
            if s == "s3" {
                let floor = stamp(with_steal(|| rt.block_on(floor::s3(clients, 2000.0, seconds)))?);
                println!("{}", numbered(floor, n, runs));
            }
            if !with_peer {
                continue;
            }
            let theirs = stamp(with_steal(|| {
                rt.block_on(async {
                    match s.as_str() {
                        "s1" => peer::s1(s1_connections).await,
                        "s2" => peer::s2(clients, seconds, publish_batch).await,
                        "s3" => peer::s3(clients, 2000.0, seconds).await,
                        _ => peer::s4(clients, 1000.0, seconds, 3.0).await,
                    }
                })
            })?);
            let theirs = numbered(theirs, n, runs);
            println!("{theirs}");
            println!("{}", numbered(compare(&ours, &theirs), n, runs));
        }
    }
    if let Some(rig) = push_rig {
        rt.block_on(rig.stop());
    }
    Ok(())
}

/// Runs one measurement and adds to its result line the steal time of CPU 0 (server) and CPU 1 (clients) during
/// it: on a VM, the share of the run in which the hypervisor ran something else instead of the benchmark.
fn with_steal(run: impl FnOnce() -> anyhow::Result<serde_json::Value>) -> anyhow::Result<serde_json::Value> {
    let before = sys::cpu_ticks();
    let mut v = run()?;
    v["steal_pct"] = sys::steal_percent(&before, &sys::cpu_ticks());
    Ok(v)
}

/// Marks a result line as run `n` of `runs` (the report groups the runs of a scenario and takes medians).
fn numbered(mut v: serde_json::Value, n: u32, runs: u32) -> serde_json::Value {
    v["run"] = json!(n);
    v["runs"] = json!(runs);
    v
}

/// The headline metrics of a scenario, side by side, with the ratio (how many times better Tidings is).
fn compare(ours: &serde_json::Value, theirs: &serde_json::Value) -> serde_json::Value {
    let scenario = ours["scenario"].as_str().unwrap_or("");
    let peer = if scenario == "P1" { "web_push_npm" } else { "socketio" };
    let metrics: &[(&str, bool)] = match scenario {
        "S1" => &[("rss_per_connection_kib", false)],
        "P1" => &[("pushes_per_s", true), ("cpu_us_per_push", false)],
        "S2" => &[("deliveries_per_s", true), ("server_cpu_s", false)],
        "S6" => &[("deliveries_per_s", true), ("server_cpu_ns_per_delivery", false), ("cost_ns_per_delivery", false)],
        "S3" => &[("p50_us", false), ("p99_us", false), ("p999_us", false), ("max_us", false), ("lost", false)],
        _ => &[
            ("resumed_fraction", true),
            ("missed", false),
            ("duplicates", false),
            ("reconnect_handshake_p50_ms", false),
            ("last_client_back_s", false),
        ],
    };
    let mut rows = serde_json::Map::new();
    for (m, higher_is_better) in metrics {
        let (a, b) = (ours[m].as_f64(), theirs[m].as_f64());
        let ratio = match (a, b) {
            (Some(a), Some(b)) if *higher_is_better && b > 0.0 => Some(a / b),
            (Some(a), Some(b)) if !*higher_is_better && a > 0.0 => Some(b / a),
            _ => None,
        };
        rows.insert(
            m.to_string(),
            json!({"tidings": ours[m], peer: theirs[m], "ratio": ratio.map(|r| (r * 100.0).round() / 100.0)}),
        );
    }
    json!({"scenario": scenario, "comparison": rows})
}

/// The value at percentile `p` (0–100) of `sorted`, by nearest rank; 0 for no values.
pub(crate) fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// Server and client in one process but on separate runtimes (one thread each), like two processes sharing a
/// clock: the publish instant and the callback instant come from the same monotonic clock.
fn latency(count: usize, interval: Duration, via: Via) -> anyhow::Result<()> {
    let server_rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let client_rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let server = server_rt.block_on(tidings_server::start(ServerConfig::for_tests()))?;
    let token = tidings_server::issue_token(&server.config().jwt_secret, "bench", &[], None);
    let (client, mut events) = client_rt.block_on(async {
        Client::builder(ClientConfig::new(server.ws_url())).token_provider(StaticToken::new(token)).connect()
    })?;
    client_rt.block_on(async {
        loop {
            match events.next().await {
                Some(Event::Continuity { .. }) => break Ok(()),
                Some(_) => {}
                None => break Err(anyhow::anyhow!("client ended before subscribing")),
            }
        }
    })?;
    let (tx, rx) = std::sync::mpsc::channel::<(String, Instant)>();
    let receiver = client_rt.spawn(async move {
        let mut seen = 0;
        while let Some(e) = events.next().await {
            if let Event::Notification(n) = e {
                let _ = tx.send((n.id().to_owned(), Instant::now()));
                seen += 1;
                if seen == count {
                    break;
                }
            }
        }
    });
    let publisher = server.publisher();
    let http = reqwest::Client::new();
    let url = format!("{}/v1/publish", server.http_url());
    let key = server.config().api_key.clone();
    let mut sent: HashMap<String, Instant> = HashMap::with_capacity(count);
    let started = Instant::now();
    for i in 0..count {
        let id = format!("lat-{i}");
        let t0 = Instant::now();
        match via {
            Via::InProcess => {
                let req = PublishRequest::new("bench").user("bench").id(id.clone()).title("latency probe");
                server_rt.block_on(publisher.publish(req))?;
            }
            Via::Http => {
                let body = json!({"users":["bench"],"id":id,"type":"bench","title":"latency probe"});
                let resp = client_rt.block_on(http.post(&url).bearer_auth(&key).json(&body).send())?;
                anyhow::ensure!(resp.status().is_success(), "publish failed: {}", resp.status());
            }
        }
        sent.insert(id, t0);
        std::thread::sleep(interval);
    }
    let mut latencies = Vec::with_capacity(count);
    let deadline = Instant::now() + Duration::from_secs(30);
    while latencies.len() < count {
        let left = deadline.saturating_duration_since(Instant::now());
        let (id, at) =
            rx.recv_timeout(left).map_err(|_| anyhow::anyhow!("only {} of {count} arrived", latencies.len()))?;
        let t0 = sent.get(&id).ok_or_else(|| anyhow::anyhow!("unexpected id {id}"))?;
        latencies.push(at.duration_since(*t0).as_micros() as u64);
    }
    let wall = started.elapsed();
    client_rt.block_on(async {
        let _ = receiver.await;
        client.close().await;
    });
    server_rt.block_on(server.shutdown());
    latencies.sort_unstable();
    let out = json!({
        "scenario": "latency",
        "publish": format!("{via:?}"),
        "count": count,
        "interval_us": interval.as_micros() as u64,
        "lost": 0,
        "p50_us": percentile(&latencies, 50.0),
        "p99_us": percentile(&latencies, 99.0),
        "max_us": latencies.last().copied().unwrap_or(0),
        "wall_s": wall.as_secs_f64(),
        "placement": "server and client in one process, one runtime thread each, not pinned",
    });
    println!("{out}");
    eprintln!(
        "latency over {count} notifications ({via:?}): p50 {} µs, p99 {} µs, max {} µs",
        out["p50_us"], out["p99_us"], out["max_us"]
    );
    Ok(())
}
