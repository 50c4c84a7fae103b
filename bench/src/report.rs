//! `tidings-bench report`: BENCHMARKS.md and one SVG chart per scenario, from the JSON lines of a `run`.

use std::fmt::Write as _;
use std::path::Path;

use serde_json::Value;

/// One row of the table: a metric of a scenario, both systems, which way is better, and the target.
struct Metric {
    scenario: &'static str,
    key: &'static str,
    label: &'static str,
    unit: &'static str,
    higher_is_better: bool,
    target: &'static str,
}

const METRICS: &[Metric] = &[
    Metric {
        scenario: "S1",
        key: "rss_per_connection_kib",
        label: "server RSS per idle connection",
        unit: "KiB",
        higher_is_better: false,
        target: "≤ 6 KiB",
    },
    Metric {
        scenario: "S2",
        key: "deliveries_per_s",
        label: "broadcast deliveries/s at the clients",
        unit: "/s",
        higher_is_better: true,
        target: "≥ 1,000,000 and ≥ 10× Socket.IO",
    },
    Metric {
        scenario: "S2",
        key: "server_cpu_s",
        label: "server CPU during the run",
        unit: "s",
        higher_is_better: false,
        target: "",
    },
    Metric {
        scenario: "S2",
        key: "client_cpu_ns_per_delivery",
        label: "client CPU per delivery (Tidings clients only)",
        unit: "ns",
        higher_is_better: false,
        target: "",
    },
    Metric {
        scenario: "S3",
        key: "p50_us",
        label: "targeted latency p50",
        unit: "µs",
        higher_is_better: false,
        target: "≤ 60 µs",
    },
    Metric {
        scenario: "S3",
        key: "p99_us",
        label: "targeted latency p99",
        unit: "µs",
        higher_is_better: false,
        target: "≤ 350 µs",
    },
    Metric {
        scenario: "S3",
        key: "p999_us",
        label: "targeted latency p99.9",
        unit: "µs",
        higher_is_better: false,
        target: "",
    },
    Metric {
        scenario: "S3",
        key: "max_us",
        label: "targeted latency max",
        unit: "µs",
        higher_is_better: false,
        target: "",
    },
    Metric { scenario: "S3", key: "lost", label: "notifications lost", unit: "", higher_is_better: false, target: "0" },
    Metric {
        scenario: "S4",
        key: "resumed_fraction",
        label: "clients that resumed",
        unit: "",
        higher_is_better: true,
        target: "1.0",
    },
    Metric {
        scenario: "S4",
        key: "missed",
        label: "notifications missed",
        unit: "",
        higher_is_better: false,
        target: "0",
    },
    Metric { scenario: "S4", key: "duplicates", label: "duplicates", unit: "", higher_is_better: false, target: "0" },
    Metric {
        scenario: "S4",
        key: "reconnect_handshake_p50_ms",
        label: "reconnect handshake p50",
        unit: "ms",
        higher_is_better: false,
        target: "≤ 20 ms",
    },
    Metric {
        scenario: "S4",
        key: "last_client_back_s",
        label: "last client back after the drop",
        unit: "s",
        higher_is_better: false,
        target: "≤ 1 s",
    },
    Metric {
        scenario: "P1",
        key: "pushes_per_s",
        label: "Web Push sends accepted/s, one core",
        unit: "/s",
        higher_is_better: true,
        target: "≥ 5× web-push",
    },
    Metric {
        scenario: "P1",
        key: "cpu_us_per_push",
        label: "sender CPU per push",
        unit: "µs",
        higher_is_better: false,
        target: "",
    },
    Metric {
        scenario: "P2",
        key: "pushes_per_s",
        label: "APNs sends accepted/s, one core, one connection",
        unit: "/s",
        higher_is_better: true,
        target: "",
    },
    Metric {
        scenario: "P2",
        key: "cpu_us_per_push",
        label: "sender CPU per push",
        unit: "µs",
        higher_is_better: false,
        target: "",
    },
];

/// The scenarios in report order: id, title, the peer's `system` prefix in the result lines and its name.
const SCENARIOS: &[(&str, &str, &str, &str)] = &[
    ("S1", "S1 — idle memory", "socket.io", "Socket.IO"),
    ("S2", "S2 — broadcast fan-out", "socket.io", "Socket.IO"),
    ("S3", "S3 — targeted latency", "socket.io", "Socket.IO"),
    ("S4", "S4 — reconnect storm", "socket.io", "Socket.IO"),
    ("P1", "P1 — Web Push send throughput", "web-push", "web-push 3.6.7 (npm)"),
    ("P2", "P2 — APNs send throughput", "no peer", "–"),
];

fn fmt(v: Option<f64>) -> String {
    match v {
        None => "–".into(),
        Some(v) if v.fract() == 0.0 && v.abs() >= 1.0 => {
            let s = format!("{}", v as i64);
            // thousands separators
            let mut out = String::new();
            for (i, c) in s.chars().enumerate() {
                if i > 0 && (s.len() - i) % 3 == 0 && c != '-' {
                    out.push(',');
                }
                out.push(c);
            }
            out
        }
        Some(v) if v.abs() >= 100.0 => format!("{v:.0}"),
        Some(v) if v.abs() >= 1.0 => format!("{v:.2}"),
        Some(v) => format!("{v:.3}"),
    }
}

/// Every result line of `scenario` from the system whose name starts with `system_prefix`, in run order. For
/// `tidings`, the lines of the server on the memory store (lines from before the store was recorded included).
fn find<'a>(runs: &'a [Value], scenario: &str, system_prefix: &str) -> Vec<&'a Value> {
    runs.iter()
        .filter(|v| v["scenario"] == scenario && v["system"].as_str().is_some_and(|s| s.starts_with(system_prefix)))
        .filter(|v| system_prefix != "tidings" || v["store"].as_str().is_none_or(|store| store == "memory"))
        .collect()
}

/// Every Tidings result line of `scenario` with the server on `store`.
fn find_store<'a>(runs: &'a [Value], scenario: &str, store: &str) -> Vec<&'a Value> {
    runs.iter().filter(|v| v["scenario"] == scenario && v["store"] == store).collect()
}

/// One row of the durable-publish table (S5).
struct DurableMetric {
    key: &'static str,
    label: &'static str,
    target: &'static str,
}

const DURABLE: &[DurableMetric] = &[
    DurableMetric {
        key: "single_publishes_per_s", label: "single publishes/s (POST /v1/publish)", target: "≥ 20,000"
    },
    DurableMetric { key: "single_p50_ms", label: "single publish latency p50 (ms)", target: "" },
    DurableMetric { key: "single_p99_ms", label: "single publish latency p99 (ms)", target: "≤ 5 ms" },
    DurableMetric {
        key: "batch_notifications_per_s",
        label: "notifications/s in batches of 1,000 (POST /v1/publish/batch)",
        target: "≥ 100,000",
    },
    DurableMetric { key: "batch_p50_ms", label: "batch request latency p50 (ms)", target: "" },
    DurableMetric { key: "batch_p99_ms", label: "batch request latency p99 (ms)", target: "" },
    DurableMetric { key: "batch_server_cpu_us", label: "server CPU per notification in batches (µs)", target: "" },
    DurableMetric {
        key: "batch_store_threads_cpu_us",
        label: "of which SQLite's writer and checkpointer threads (µs)",
        target: "",
    },
    DurableMetric { key: "single_errors", label: "refused single publishes", target: "0" },
    DurableMetric { key: "batch_errors", label: "refused batch requests", target: "0" },
];

/// The stores of S5, with their column titles.
const DURABLE_STORES: &[(&str, &str)] =
    &[("memory", "memory"), ("sqlite", "SQLite, synchronous full"), ("sqlite-normal", "SQLite, synchronous normal")];

/// The S5 section: one column per store.
fn durable_section(md: &mut String, runs: &[Value]) -> std::fmt::Result {
    let columns: Vec<(&str, Vec<&Value>)> = DURABLE_STORES
        .iter()
        .map(|(store, title)| (*title, find_store(runs, "S5", store)))
        .filter(|(_, lines)| !lines.is_empty())
        .collect();
    if columns.is_empty() {
        return Ok(());
    }
    writeln!(
        md,
        "## S5 — durable publish
"
    )?;
    writeln!(
        md,
        "Publishes through the HTTP API with the server on each store; a `2xx` means the notification is committed (on SQLite: written to disk as `synchronous` says, see the README's durability section). Socket.IO keeps nothing, so it has no column here.
"
    )?;
    let head: Vec<&str> = columns.iter().map(|(title, _)| *title).collect();
    writeln!(md, "| metric | {} | target |", head.join(" | "))?;
    writeln!(md, "|---|{}---|", "---:|".repeat(columns.len()))?;
    for m in DURABLE {
        let cells: Vec<String> = columns.iter().map(|(_, lines)| cell(summary(lines, m.key), lines.len())).collect();
        writeln!(md, "| {} | {} | {} |", m.label, cells.join(" | "), m.target)?;
    }
    let all: Vec<&Value> = columns.iter().flat_map(|(_, lines)| lines.iter().copied()).collect();
    if let Some(steal) = steal_sentence(&[("these runs", &all)]) {
        writeln!(
            md,
            "
{steal}"
        )?;
    }
    if let Some(how) = all.last().and_then(|v| v["publisher"].as_str()) {
        writeln!(
            md,
            "
Load: {how}.
"
        )?;
    }
    Ok(())
}

/// The S6 section: broadcast fan-out through Redis, one and two server processes, both systems.
fn cluster_section(md: &mut String, runs: &[Value]) -> std::fmt::Result {
    let lines = |system: &str, processes: u64| -> Vec<&Value> {
        runs.iter()
            .filter(|v| v["scenario"] == "S6" && v["processes"] == processes)
            .filter(|v| v["system"].as_str().is_some_and(|s| s.starts_with(system)))
            .collect()
    };
    let columns = [lines("tidings", 1), lines("tidings", 2), lines("socket.io", 1), lines("socket.io", 2)];
    if columns[0].is_empty() && columns[1].is_empty() {
        return Ok(());
    }
    writeln!(md, "## S6 — broadcast fan-out across processes through Redis\n")?;
    writeln!(
        md,
        "Clients split evenly between the server processes, all on one topic; the publisher runs in the first \
         process (batches as in S2) and every other process gets the notifications through Redis. Tidings: the Redis \
         broker on PostgreSQL (`demo-server/src/broker_redis.rs`); Socket.IO: {} (no connection state recovery: that adapter does not support it). \
         Both server processes share CPU 0 on this machine, so two processes cannot deliver more per second than \
         one; the CPU cost per delivery (server processes, Redis, and PostgreSQL for Tidings) is what a second core would \
         divide.\n",
        columns[2..].iter().flatten().next().and_then(|v| v["system"].as_str()).unwrap_or("socket.io")
    )?;
    writeln!(
        md,
        "| metric | Tidings, 1 process | Tidings, 2 processes | Socket.IO, 1 process | Socket.IO, 2 processes | ratio \
         (× better, 2 processes) |\n|---|---:|---:|---:|---:|---:|"
    )?;
    let metrics: &[(&str, &str, bool)] = &[
        ("deliveries_per_s", "deliveries/s", true),
        ("server_cpu_ns_per_delivery", "server CPU per delivery (ns)", false),
        ("redis_cpu_ns_per_delivery", "Redis CPU per delivery (ns)", false),
        ("postgres_cpu_ns_per_delivery", "PostgreSQL CPU per delivery (ns)", false),
        ("cost_ns_per_delivery", "server + Redis + PostgreSQL CPU per delivery (ns)", false),
        ("delivered_total", "delivered", true),
        ("expected_total", "expected (published × clients)", true),
    ];
    for (key, label, higher) in metrics {
        let cells: Vec<String> = columns.iter().map(|l| cell(summary(l, key), l.len())).collect();
        let (a, b) = (summary(&columns[1], key).map(|s| s.0), summary(&columns[3], key).map(|s| s.0));
        let ratio = match (a, b) {
            _ if key.ends_with("_total") => None,
            (Some(a), Some(b)) if *higher && b > 0.0 => Some(a / b),
            (Some(a), Some(b)) if !*higher && a > 0.0 => Some(b / a),
            _ => None,
        };
        writeln!(
            md,
            "| {label} | {} | {} |",
            cells.join(" | "),
            ratio.map(|r| format!("{r:.2}×")).unwrap_or_else(|| "–".into())
        )?;
    }
    if let (Some((one, ..)), Some((two, ..))) =
        (summary(&columns[0], "cost_ns_per_delivery"), summary(&columns[1], "cost_ns_per_delivery"))
        && two > 0.0
    {
        writeln!(
            md,
            "\nTidings with two processes: {:.2}× the single process's deliveries/s on this shared core, at {:.0} ns of \
             server + Redis + PostgreSQL CPU per delivery against {:.0} ns for one process.",
            summary(&columns[1], "deliveries_per_s").map(|s| s.0).unwrap_or(0.0)
                / summary(&columns[0], "deliveries_per_s").map(|s| s.0).filter(|d| *d > 0.0).unwrap_or(1.0),
            two,
            one
        )?;
    }
    let all: Vec<&Value> = columns.iter().flatten().copied().collect();
    if let Some(steal) = steal_sentence(&[("these runs", &all)]) {
        writeln!(md, "\n{steal}")?;
    }
    if let Some(placement) = all.first().and_then(|v| v["placement"].as_str()) {
        writeln!(md, "\nPlacement: {placement}.")?;
    }
    if let Some(how) = columns[1].last().and_then(|v| v["publisher"].as_str()) {
        writeln!(md, "\nPublisher (Tidings): {how}.")?;
    }
    if let Some(how) = columns[3].last().and_then(|v| v["publisher"].as_str()) {
        writeln!(md, "Publisher (Socket.IO): {how}.")?;
    }
    writeln!(md)
}

/// The I1–I3 section: the inbox on SQLite (list latency at scale, mark all read against the item count) and SSE
/// fan-out beside WebSocket under the same load.
fn inbox_section(md: &mut String, runs: &[Value]) -> std::fmt::Result {
    let of = |id: &str| runs.iter().filter(|v| v["scenario"] == id).collect::<Vec<&Value>>();
    let (i1, i2, i3) = (of("I1"), of("I2"), of("I3"));
    if i1.is_empty() && i2.is_empty() && i3.is_empty() {
        return Ok(());
    }
    writeln!(md, "## I1–I3 — inbox and SSE\n")?;
    if let Some(first) = i1.first() {
        writeln!(
            md,
            "### I1 — inbox list, {} users × {} items (SQLite)\n",
            fmt(first["users"].as_f64()),
            fmt(first["items_per_user"].as_f64())
        )?;
        writeln!(md, "| page of 50 | p50 (ms) | p99 (ms) |\n|---|---:|---:|")?;
        for (label, key) in [
            ("newest first", "first_page"),
            ("from a random position (`before`)", "deep_page"),
            ("unread only", "unread_page"),
            ("one type only", "type_page"),
        ] {
            let p50 = cell(summary(&i1, &format!("{key}_p50_ms")), i1.len());
            let p99 = cell(summary(&i1, &format!("{key}_p99_ms")), i1.len());
            writeln!(md, "| {label} | {p50} | {p99} |")?;
        }
        writeln!(
            md,
            "\nSeeded {} items in {} s ({} items/s), database {} MiB. Method: {}.\n",
            fmt(first["items"].as_f64()),
            fmt(first["seed_s"].as_f64()),
            fmt(first["seed_items_per_s"].as_f64()),
            fmt(first["db_mib"].as_f64()),
            first["method"].as_str().unwrap_or("")
        )?;
    }
    if !i2.is_empty() {
        writeln!(md, "### I2 — mark all read against the number of unread items (SQLite)\n")?;
        writeln!(md, "| unread items | p50 (ms) | p99 (ms) |\n|---:|---:|---:|")?;
        let sizes: Vec<u64> = i2[0]["rows"]
            .as_array()
            .map(|r| r.iter().filter_map(|x| x["unread_items"].as_u64()).collect())
            .unwrap_or_default();
        for size in sizes {
            let rows: Vec<&Value> = i2
                .iter()
                .filter_map(|v| v["rows"].as_array()?.iter().find(|r| r["unread_items"].as_u64() == Some(size)))
                .collect();
            writeln!(
                md,
                "| {} | {} | {} |",
                fmt(Some(size as f64)),
                cell(summary(&rows, "p50_ms"), rows.len()),
                cell(summary(&rows, "p99_ms"), rows.len())
            )?;
        }
        writeln!(
            md,
            "\nThe cost must not grow with the item count. Method: {}.\n",
            i2[0]["method"].as_str().unwrap_or("")
        )?;
    }
    if let Some(first) = i3.first() {
        writeln!(
            md,
            "### I3 — fan-out to {} clients over SSE beside WebSocket, {} notifications/s\n",
            fmt(first["clients"].as_f64()),
            fmt(first["rate_per_s"].as_f64())
        )?;
        let transport = |t: &str| -> Vec<&Value> {
            i3.iter().filter_map(|v| v["rows"].as_array()?.iter().find(|r| r["transport"] == t)).collect()
        };
        let (sse, ws) = (transport("sse"), transport("websocket"));
        writeln!(md, "| metric | SSE | WebSocket |\n|---|---:|---:|")?;
        for (label, key) in [
            ("deliveries/s", "deliveries_per_s"),
            ("latency p50 (ms)", "p50_ms"),
            ("latency p99 (ms)", "p99_ms"),
            ("not delivered", "lost"),
            ("server CPU (s)", "server_cpu_s"),
        ] {
            writeln!(
                md,
                "| {label} | {} | {} |",
                cell(summary(&sse, key), sse.len()),
                cell(summary(&ws, key), ws.len())
            )?;
        }
        writeln!(
            md,
            "\nLoad: {}. Clients: {}. S2 above is WebSocket fan-out at the highest rate the clients take (paced by \
             acks, which SSE clients send over HTTP), so I3 compares the transports at one fixed rate instead.\n",
            first["publisher"].as_str().unwrap_or(""),
            first["clients_how"].as_str().unwrap_or("")
        )?;
    }
    Ok(())
}

/// The median of `key` over `lines` (the mean of the middle two for an even count) with the smallest and
/// largest value; `None` when no line has the metric.
fn summary(lines: &[&Value], key: &str) -> Option<(f64, f64, f64)> {
    summary_of(lines.iter().filter_map(|v| v[key].as_f64()).collect())
}

/// [`summary`] of a value nested in each line (a JSON pointer such as `/steal_pct/cpu0`).
fn summary_at(lines: &[&Value], pointer: &str) -> Option<(f64, f64, f64)> {
    summary_of(lines.iter().filter_map(|v| v.pointer(pointer).and_then(Value::as_f64)).collect())
}

fn summary_of(mut values: Vec<f64>) -> Option<(f64, f64, f64)> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    let median = if values.len() % 2 == 1 { values[mid] } else { (values[mid - 1] + values[mid]) / 2.0 };
    Some((median, values[0], values[values.len() - 1]))
}

/// A table cell: the median, and the range when there was more than one run.
fn cell(s: Option<(f64, f64, f64)>, runs: usize) -> String {
    match s {
        Some((median, lo, hi)) if runs > 1 && lo != hi => {
            format!("{} ({} – {})", fmt(Some(median)), fmt(Some(lo)), fmt(Some(hi)))
        }
        Some((median, ..)) => fmt(Some(median)),
        None => fmt(None),
    }
}

/// Writes `BENCHMARKS.md` into `root` and `bench/plots/<scenario>.svg`, from `results` (JSON lines).
pub(crate) fn write(results: &Path, root: &Path, command: &str) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(results)?;
    let runs: Vec<Value> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    anyhow::ensure!(!runs.is_empty(), "{} holds no results", results.display());
    let first = &runs[0];
    let mut md = String::new();
    writeln!(md, "# Benchmarks\n")?;
    writeln!(
        md,
        "Tidings against Socket.IO 4.8.4 (`connectionStateRecovery` on) and, for push sending, npm web-push 3.6.7, \
         measured in the same run on the same machine.\n\
         Regenerate everything on this page (numbers and charts) with:\n\n```sh\n{command}\n```\n"
    )?;
    writeln!(
        md,
        "- Machine: `nproc` = {}, CPU: {}.\n- Placement: {}.\n- Scenarios and how each number is measured: [bench/README.md](bench/README.md).\n- Raw results of this run: [`bench/results/latest.jsonl`](bench/results/latest.jsonl).\n",
        first["nproc"],
        first["cpu"].as_str().unwrap_or("?"),
        first["placement"].as_str().unwrap_or("?")
    )?;
    // Every line of a `run --runs N` says N; results from before that option are single runs.
    let counted = runs.iter().filter_map(|v| v["runs"].as_u64()).max().unwrap_or(1);
    if counted > 1 {
        writeln!(
            md,
            "Each number is the **median of {counted} runs** of the scenario, Tidings and Socket.IO alternating; the \
             range over the runs follows in brackets, and ratios are taken between the medians.\n"
        )?;
    }
    for &(scenario, title, peer_prefix, peer) in SCENARIOS {
        let (ours, theirs) = (find(&runs, scenario, "tidings"), find(&runs, scenario, peer_prefix));
        if ours.is_empty() {
            continue;
        }
        writeln!(md, "## {title}\n")?;
        let on_sqlite = find_store(&runs, scenario, "sqlite");
        if on_sqlite.is_empty() {
            writeln!(md, "| metric | Tidings | {peer} | ratio (× better) | target |\n|---|---:|---:|---:|---|")?;
        } else {
            writeln!(
                md,
                "| metric | Tidings (memory store) | Tidings (SQLite store) | {peer} | ratio (× better, memory) | \
                 target |\n|---|---:|---:|---:|---:|---|"
            )?;
        }
        let mut bars = Vec::new();
        for m in METRICS.iter().filter(|m| m.scenario == scenario) {
            let (sa, sb) = (summary(&ours, m.key), summary(&theirs, m.key));
            let durable = if on_sqlite.is_empty() {
                String::new()
            } else {
                format!(" {} |", cell(summary(&on_sqlite, m.key), on_sqlite.len()))
            };
            let (a, b) = (sa.map(|s| s.0), sb.map(|s| s.0));
            let ratio = match (a, b) {
                (Some(a), Some(b)) if m.higher_is_better && b > 0.0 => Some(a / b),
                (Some(a), Some(b)) if !m.higher_is_better && a > 0.0 => Some(b / a),
                _ => None,
            };
            let unit = if m.unit.is_empty() { String::new() } else { format!(" ({})", m.unit) };
            writeln!(
                md,
                "| {}{} | {} |{durable} {} | {} | {} |",
                m.label,
                unit,
                cell(sa, ours.len()),
                cell(sb, theirs.len()),
                ratio.map(|r| format!("{r:.2}×")).unwrap_or_else(|| "–".into()),
                m.target
            )?;
            if let (Some(a), Some(b)) = (a, b)
                && (a > 0.0 || b > 0.0)
            {
                bars.push((format!("{}{}", m.label, unit), a, b, m.higher_is_better));
            }
        }
        if scenario == "S2"
            && let (Some((memory, ..)), Some((sqlite, ..))) =
                (summary(&ours, "deliveries_per_s"), summary(&on_sqlite, "deliveries_per_s"))
            && memory > 0.0
        {
            writeln!(
                md,
                "\nOn the SQLite store (synchronous full) S2 reaches **{:.0} %** of its deliveries/s on the memory store \
                 (medians; target ≥ 90 %).",
                sqlite / memory * 100.0
            )?;
        }
        let floor = find(&runs, scenario, "floor");
        if !floor.is_empty() {
            let metric = |key| cell(summary(&floor, key), floor.len());
            writeln!(
                md,
                "\nThe machine's floor, measured in the same runs: the same topology and load over bare TCP sockets (a \
                 thread in the server process on CPU 0 writes {} messages/s of the same size round-robin, one thread on \
                 CPU 1 reads all connections through one epoll; no protocol, no runtime): p50 {} µs, p99 {} µs, p99.9 \
                 {} µs, max {} µs. A latency target below the floor cannot be met on this machine by any stack.",
                fmt(floor[0]["rate_per_s"].as_f64()),
                metric("p50_us"),
                metric("p99_us"),
                metric("p999_us"),
                metric("max_us"),
            )?;
        }
        if scenario.starts_with('P') {
            writeln!(
                md,
                "\nEach sender, pinned to CPU 0, keeps {} requests in flight to {} subscriptions (devices) on a local mock \
                 service pinned to CPU 1 (tests/push-mocks, over TLS), for {} s after a warm-up; a {}-byte payload. CPU \
                 per push is the sender process's user + system time over the timed window, divided by the pushes \
                 accepted. This measures the senders the server's push worker delivers through (`demo-server/src/push`).",
                fmt(ours[0]["concurrency"].as_f64()),
                fmt(ours[0]["subscriptions"].as_f64()),
                fmt(ours[0]["seconds_requested"].as_f64()),
                fmt(ours[0]["payload_bytes"].as_f64()),
            )?;
        }
        let systems = [("Tidings", &ours), ("Tidings on SQLite", &on_sqlite), (peer, &theirs), ("floor", &floor)];
        let systems: Vec<(&str, &[&Value])> = systems.iter().map(|(n, l)| (*n, l.as_slice())).collect();
        if let Some(steal) = steal_sentence(&systems) {
            writeln!(md, "\n{steal}")?;
        }
        if let Some(extra) = ours.last().and_then(|v| v["publisher"].as_str()) {
            writeln!(md, "\nPublisher (Tidings): {extra}.")?;
        }
        if let Some(extra) = on_sqlite.last().and_then(|v| v["publisher"].as_str())
            && ours.last().and_then(|v| v["publisher"].as_str()) != Some(extra)
        {
            writeln!(md, "Publisher (Tidings on SQLite): {extra}.")?;
        }
        if let Some(extra) = theirs.last().and_then(|v| v["publisher"].as_str()) {
            writeln!(md, "Publisher (Socket.IO): {extra}.")?;
        }
        let svg_rel = format!("bench/plots/{}.svg", scenario.to_lowercase());
        std::fs::create_dir_all(root.join("bench/plots"))?;
        std::fs::write(root.join(&svg_rel), svg(title, peer, &bars))?;
        writeln!(md, "\n![{title}]({svg_rel})\n")?;
    }
    durable_section(&mut md, &runs)?;
    cluster_section(&mut md, &runs)?;
    inbox_section(&mut md, &runs)?;
    std::fs::write(root.join("BENCHMARKS.md"), md)?;
    Ok(())
}

/// How much of CPU 0 (server) and CPU 1 (clients) the hypervisor took during each system's runs, from the
/// `steal_pct` of the result lines; `None` when no line measured it (a bare-metal machine reports 0).
fn steal_sentence(systems: &[(&str, &[&Value])]) -> Option<String> {
    let parts: Vec<String> = systems
        .iter()
        .filter_map(|(name, lines)| {
            let (cpu0, cpu1) = (summary_at(lines, "/steal_pct/cpu0"), summary_at(lines, "/steal_pct/cpu1"));
            (cpu0.is_some() || cpu1.is_some())
                .then(|| format!("{name} CPU 0 {} %, CPU 1 {} %", pct_cell(cpu0), pct_cell(cpu1)))
        })
        .collect();
    (!parts.is_empty()).then(|| {
        format!(
            "Steal time during these runs (from /proc/stat: the share of each CPU's time in which the hypervisor ran \
             other work while this VM's CPU had work; it stalls whatever runs there, and shows in the tail \
             latencies): {}.",
            parts.join("; ")
        )
    })
}

/// A percentage to one decimal: the median, and the range when the runs differ.
fn pct_cell(s: Option<(f64, f64, f64)>) -> String {
    match s {
        Some((median, lo, hi)) if lo != hi => format!("{median:.1} ({lo:.1} – {hi:.1})"),
        Some((median, ..)) => format!("{median:.1}"),
        None => "–".into(),
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// A horizontal grouped bar chart: one group per metric, each scaled to its own maximum.
fn svg(title: &str, peer: &str, bars: &[(String, f64, f64, bool)]) -> String {
    let (width, label_w, bar_w, row_h) = (760.0, 300.0, 360.0, 54.0);
    let height = 60.0 + bars.len() as f64 * row_h + 30.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="13">"##
    );
    let _ = writeln!(s, r##"<rect width="100%" height="100%" fill="#ffffff"/>"##);
    let _ = writeln!(s, r##"<text x="16" y="28" font-size="17" font-weight="bold">{}</text>"##, escape(title));
    let _ = writeln!(
        s,
        r##"<rect x="{}" y="14" width="12" height="12" fill="#2f6fde"/><text x="{}" y="25">Tidings</text><rect x="{}" y="14" width="12" height="12" fill="#b8b8b8"/><text x="{}" y="25">{}</text>"##,
        width - 260.0,
        width - 243.0,
        width - 170.0,
        width - 153.0,
        escape(if peer == "Socket.IO" { "Socket.IO 4.8.4" } else { peer })
    );
    for (i, (label, a, b, higher)) in bars.iter().enumerate() {
        let y = 50.0 + i as f64 * row_h;
        let max = a.max(*b).max(f64::MIN_POSITIVE);
        let _ = writeln!(s, r##"<text x="16" y="{}">{}</text>"##, y + 20.0, escape(label));
        let note = if *higher { "higher is better" } else { "lower is better" };
        let _ = writeln!(s, r##"<text x="16" y="{}" fill="#777" font-size="11">{note}</text>"##, y + 35.0);
        for (j, (v, color)) in [(*a, "#2f6fde"), (*b, "#b8b8b8")].into_iter().enumerate() {
            let w = (v / max * bar_w).max(1.0);
            let yy = y + 6.0 + j as f64 * 20.0;
            let _ = writeln!(s, r##"<rect x="{label_w}" y="{yy}" width="{w:.1}" height="16" fill="{color}"/>"##);
            let _ = writeln!(s, r##"<text x="{:.1}" y="{}">{}</text>"##, label_w + w + 6.0, yy + 13.0, fmt(Some(v)));
        }
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn summary_is_the_median_with_the_range() {
        let lines = [json!({"x": 3.0}), json!({"x": 1.0}), json!({"x": 10.0}), json!({"y": 5.0})];
        let refs: Vec<&Value> = lines.iter().collect();
        assert_eq!(summary(&refs, "x"), Some((3.0, 1.0, 10.0)));
        assert_eq!(summary(&refs[..2], "x"), Some((2.0, 1.0, 3.0)));
        assert_eq!(summary(&refs, "z"), None);
        assert_eq!(cell(summary(&refs, "x"), 3), "3 (1 – 10)");
        assert_eq!(cell(Some((2.5, 2.25, 2.75)), 2), "2.50 (2.25 – 2.75)");
        assert_eq!(cell(summary(&refs[..1], "x"), 1), "3");
    }

    #[test]
    fn report_takes_medians_over_runs_and_ratios_between_them() {
        let dir = std::env::temp_dir().join(format!("tidings-report-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let line = |system: &str, run: u32, v: f64| {
            json!({"scenario": "S2", "system": system, "run": run, "runs": 3, "deliveries_per_s": v, "nproc": 2,
                   "cpu": "x", "placement": "p"})
            .to_string()
        };
        let text = [
            line("tidings", 1, 900_000.0),
            line("socket.io 4.8.4", 1, 100_000.0),
            line("tidings", 2, 1_100_000.0),
            line("socket.io 4.8.4", 2, 80_000.0),
            line("tidings", 3, 1_000_000.0),
            line("socket.io 4.8.4", 3, 120_000.0),
        ]
        .join("\n");
        let input = dir.join("r.jsonl");
        std::fs::write(&input, text).unwrap();
        write(&input, &dir, "cmd").unwrap();
        let md = std::fs::read_to_string(dir.join("BENCHMARKS.md")).unwrap();
        assert!(md.contains("median of 3 runs"), "{md}");
        assert!(md.contains("| 1,000,000 (900,000 – 1,100,000) | 100,000 (80,000 – 120,000) | 10.00× |"), "{md}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn s3_states_the_machine_floor_when_the_run_measured_it() {
        let dir = std::env::temp_dir().join(format!("tidings-report-floor-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let line = |system: &str, run: u32, p50: u64| {
            json!({"scenario": "S3", "system": system, "run": run, "runs": 2, "p50_us": p50, "p99_us": p50 * 4,
                   "p999_us": p50 * 9, "max_us": p50 * 20, "rate_per_s": 2000.0, "nproc": 2, "cpu": "x", "placement": "p"})
            .to_string()
        };
        let input = dir.join("r.jsonl");
        let without = [line("tidings", 1, 90), line("socket.io 4.8.4", 1, 110)].join("\n");
        std::fs::write(&input, without).unwrap();
        write(&input, &dir, "cmd").unwrap();
        let md = std::fs::read_to_string(dir.join("BENCHMARKS.md")).unwrap();
        assert!(!md.contains("floor"), "{md}");
        let with =
            [line("tidings", 1, 90), line("floor (bare TCP)", 1, 50), line("floor (bare TCP)", 2, 60)].join("\n");
        std::fs::write(&input, with).unwrap();
        write(&input, &dir, "cmd").unwrap();
        let md = std::fs::read_to_string(dir.join("BENCHMARKS.md")).unwrap();
        assert!(md.contains("writes 2,000 messages/s"), "{md}");
        assert!(md.contains("p50 55 (50 – 60) µs, p99 220 (200 – 240) µs"), "{md}");
        // The floor is not a competitor: it gets no column of its own in the table.
        assert!(md.contains("| targeted latency p50 (µs) | 90 | – |"), "{md}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn s6_compares_both_systems_at_one_and_two_processes() {
        let dir = std::env::temp_dir().join(format!("tidings-report-s6-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // Tidings lines carry PostgreSQL's CPU (50 ns of their cost), Socket.IO's none.
        let s6 = |system: &str, processes: u64, per_s: f64, cost: f64| {
            let postgres = system.starts_with("tidings").then_some(50.0);
            json!({"scenario": "S6", "system": system, "processes": processes, "deliveries_per_s": per_s,
                   "server_cpu_ns_per_delivery": cost - 100.0 - postgres.unwrap_or(0.0),
                   "redis_cpu_ns_per_delivery": 100.0, "postgres_cpu_ns_per_delivery": postgres,
                   "cost_ns_per_delivery": cost, "delivered_total": 1000, "expected_total": 1000, "nproc": 2,
                   "cpu": "x", "placement": "p"})
            .to_string()
        };
        let text = [
            s6("tidings (redis + postgres)", 1, 900_000.0, 1_000.0),
            s6("socket.io 4.8.4 + @socket.io/redis-adapter 8.3.0", 1, 90_000.0, 10_000.0),
            s6("tidings (redis + postgres)", 2, 800_000.0, 1_100.0),
            s6("socket.io 4.8.4 + @socket.io/redis-adapter 8.3.0", 2, 50_000.0, 12_100.0),
        ]
        .join("\n");
        let input = dir.join("r.jsonl");
        std::fs::write(&input, text).unwrap();
        write(&input, &dir, "cmd").unwrap();
        let md = std::fs::read_to_string(dir.join("BENCHMARKS.md")).unwrap();
        assert!(md.contains("## S6 — broadcast fan-out across processes through Redis"), "{md}");
        assert!(md.contains("| deliveries/s | 900,000 | 800,000 | 90,000 | 50,000 | 16.00× |"), "{md}");
        assert!(md.contains("| PostgreSQL CPU per delivery (ns) | 50 | 50 | – | – | – |"), "{md}");
        assert!(
            md.contains(
                "| server + Redis + PostgreSQL CPU per delivery (ns) | 1,000 | 1,100 | 10,000 | 12,100 | 11.00× |"
            ),
            "{md}"
        );
        assert!(md.contains("Tidings with two processes: 0.89× the single process's deliveries/s"), "{md}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn durable_stores_get_their_own_column_and_s5_its_own_table() {
        let dir = std::env::temp_dir().join(format!("tidings-report-durable-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let s2 = |system: &str, store: Option<&str>, v: f64| {
            let mut line = json!({"scenario": "S2", "system": system, "deliveries_per_s": v, "nproc": 2, "cpu": "x",
                                  "placement": "p"});
            if let Some(store) = store {
                line["store"] = json!(store);
            }
            line.to_string()
        };
        let s5 = |store: &str, per_s: f64| {
            json!({"scenario": "S5", "system": "tidings", "store": store, "single_publishes_per_s": per_s,
                   "single_p99_ms": 2.5, "batch_notifications_per_s": per_s * 10.0})
            .to_string()
        };
        let text = [
            s2("tidings", Some("memory"), 1_000_000.0),
            s2("tidings (sqlite)", Some("sqlite"), 950_000.0),
            s2("socket.io 4.8.4", None, 100_000.0),
            s5("memory", 30_000.0),
            s5("sqlite", 21_000.0),
        ]
        .join("\n");
        let input = dir.join("r.jsonl");
        std::fs::write(&input, text).unwrap();
        write(&input, &dir, "cmd").unwrap();
        let md = std::fs::read_to_string(dir.join("BENCHMARKS.md")).unwrap();
        assert!(md.contains("| 1,000,000 | 950,000 | 100,000 | 10.00× |"), "{md}");
        assert!(md.contains("S2 reaches **95 %** of its deliveries/s on the memory store"), "{md}");
        assert!(md.contains("| metric | memory | SQLite, synchronous full | target |"), "{md}");
        assert!(md.contains("| single publishes/s (POST /v1/publish) | 30,000 | 21,000 | ≥ 20,000 |"), "{md}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn push_scenarios_compare_with_web_push_and_say_how_they_were_measured() {
        let dir = std::env::temp_dir().join(format!("tidings-report-push-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let line = |scenario: &str, system: &str, per_s: f64, cpu: f64| {
            json!({"scenario": scenario, "system": system, "run": 1, "runs": 1, "pushes_per_s": per_s,
                   "cpu_us_per_push": cpu, "concurrency": 64, "subscriptions": 1000, "seconds_requested": 5.0,
                   "payload_bytes": 327, "nproc": 2, "cpu": "x", "placement": "p"})
            .to_string()
        };
        let text = [
            line("P1", "tidings", 12_000.0, 80.0),
            line("P1", "web-push 3.6.7 (npm)", 1_000.0, 1_000.0),
            line("P2", "tidings", 20_000.0, 20.0),
        ]
        .join("\n");
        let input = dir.join("r.jsonl");
        std::fs::write(&input, text).unwrap();
        write(&input, &dir, "cmd").unwrap();
        let md = std::fs::read_to_string(dir.join("BENCHMARKS.md")).unwrap();
        assert!(md.contains("| metric | Tidings | web-push 3.6.7 (npm) |"), "{md}");
        assert!(
            md.contains("| Web Push sends accepted/s, one core (/s) | 12,000 | 1,000 | 12.00× | ≥ 5× web-push |"),
            "{md}"
        );
        assert!(md.contains("| sender CPU per push (µs) | 80 | 1,000 | 12.50× |"), "{md}");
        assert!(md.contains("keeps 64 requests in flight to 1,000 subscriptions"), "{md}");
        assert!(md.contains("## P2 — APNs send throughput"), "{md}");
        let svg = std::fs::read_to_string(dir.join("bench/plots/p1.svg")).unwrap();
        assert!(svg.contains("web-push 3.6.7 (npm)"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn steal_time_is_reported_per_system_when_the_runs_measured_it() {
        let line = |steal: Value| json!({"steal_pct": steal});
        let ours = [line(json!({"cpu0": 0.5, "cpu1": 4.0})), line(json!({"cpu0": 1.5, "cpu1": 12.0}))];
        let theirs = [line(json!({"cpu0": 0.0, "cpu1": null}))];
        let old = [json!({"p50_us": 1})];
        let (o, t, none): (Vec<&Value>, Vec<&Value>, Vec<&Value>) =
            (ours.iter().collect(), theirs.iter().collect(), old.iter().collect());
        let s = steal_sentence(&[("Tidings", &o), ("Socket.IO", &t), ("floor", &none)]).unwrap();
        assert!(s.contains("Tidings CPU 0 1.0 (0.5 – 1.5) %, CPU 1 8.0 (4.0 – 12.0) %"), "{s}");
        assert!(s.contains("Socket.IO CPU 0 0.0 %, CPU 1 – %"), "{s}");
        assert!(!s.contains("floor"), "{s}");
        assert_eq!(steal_sentence(&[("Tidings", &none)]), None);
    }
}
