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

fn find<'a>(runs: &'a [Value], scenario: &str, system_prefix: &str) -> Option<&'a Value> {
    runs.iter()
        .rev()
        .find(|v| v["scenario"] == scenario && v["system"].as_str().is_some_and(|s| s.starts_with(system_prefix)))
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
        "Tidings against Socket.IO 4.8.4 (`connectionStateRecovery` on), measured in the same run on the same machine.\n\
         Regenerate everything on this page (numbers and charts) with:\n\n```sh\n{command}\n```\n"
    )?;
    writeln!(
        md,
        "- Machine: `nproc` = {}, CPU: {}.\n- Placement: {}.\n- Scenarios and how each number is measured: [bench/README.md](bench/README.md).\n- Raw results of this run: [`bench/results/latest.jsonl`](bench/results/latest.jsonl).\n",
        first["nproc"],
        first["cpu"].as_str().unwrap_or("?"),
        first["placement"].as_str().unwrap_or("?")
    )?;
    for scenario in ["S1", "S2", "S3", "S4"] {
        let (ours, theirs) = (find(&runs, scenario, "tidings"), find(&runs, scenario, "socket.io"));
        if ours.is_none() {
            continue;
        }
        let title = match scenario {
            "S1" => "S1 — idle memory",
            "S2" => "S2 — broadcast fan-out",
            "S3" => "S3 — targeted latency",
            _ => "S4 — reconnect storm",
        };
        writeln!(md, "## {title}\n")?;
        writeln!(md, "| metric | Tidings | Socket.IO | ratio (× better) | target |\n|---|---:|---:|---:|---|")?;
        let mut bars = Vec::new();
        for m in METRICS.iter().filter(|m| m.scenario == scenario) {
            let a = ours.and_then(|v| v[m.key].as_f64());
            let b = theirs.and_then(|v| v[m.key].as_f64());
            let ratio = match (a, b) {
                (Some(a), Some(b)) if m.higher_is_better && b > 0.0 => Some(a / b),
                (Some(a), Some(b)) if !m.higher_is_better && a > 0.0 => Some(b / a),
                _ => None,
            };
            let unit = if m.unit.is_empty() { String::new() } else { format!(" ({})", m.unit) };
            writeln!(
                md,
                "| {}{} | {} | {} | {} | {} |",
                m.label,
                unit,
                fmt(a),
                fmt(b),
                ratio.map(|r| format!("{r:.2}×")).unwrap_or_else(|| "–".into()),
                m.target
            )?;
            if let (Some(a), Some(b)) = (a, b)
                && (a > 0.0 || b > 0.0)
            {
                bars.push((format!("{}{}", m.label, unit), a, b, m.higher_is_better));
            }
        }
        if let Some(extra) = ours.and_then(|v| v["publisher"].as_str()) {
            writeln!(md, "\nPublisher (Tidings): {extra}.")?;
        }
        if let Some(extra) = theirs.and_then(|v| v["publisher"].as_str()) {
            writeln!(md, "Publisher (Socket.IO): {extra}.")?;
        }
        let svg_rel = format!("bench/plots/{}.svg", scenario.to_lowercase());
        std::fs::create_dir_all(root.join("bench/plots"))?;
        std::fs::write(root.join(&svg_rel), svg(title, &bars))?;
        writeln!(md, "\n![{title}]({svg_rel})\n")?;
    }
    std::fs::write(root.join("BENCHMARKS.md"), md)?;
    Ok(())
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// A horizontal grouped bar chart: one group per metric, each scaled to its own maximum.
fn svg(title: &str, bars: &[(String, f64, f64, bool)]) -> String {
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
        r##"<rect x="{}" y="14" width="12" height="12" fill="#2f6fde"/><text x="{}" y="25">Tidings</text><rect x="{}" y="14" width="12" height="12" fill="#b8b8b8"/><text x="{}" y="25">Socket.IO 4.8.4</text>"##,
        width - 260.0,
        width - 243.0,
        width - 170.0,
        width - 153.0
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
