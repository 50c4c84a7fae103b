//! `cargo xtask bench`: the one command behind BENCHMARKS.md. Installs the pinned peers (Socket.IO, npm
//! web-push), builds the load tool in release, runs S1–S5 (S2 and S3 on both stores) for Tidings and Socket.IO and
//! P1–P2 (push sending, against web-push for P1) three times each, alternating (server or sender on CPU 0, clients
//! or mock services on CPU 1), and I1–I3 (the inbox on SQLite, SSE fan-out; I1 once: its seeding of 10,000 ×
//! 10,000 items takes tens of minutes), keeps the raw results in `bench/results/latest.jsonl` and regenerates BENCHMARKS.md
//! and `bench/plots/*.svg`.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::util::{Step, run};

pub(crate) fn bench(root: &Path, extra: &[String]) -> Result<(), String> {
    let peer = root.join("bench/peers/socketio");
    if !peer.join("node_modules/socket.io").is_dir() {
        run(Step::new("install Socket.IO 4.8.4 (npm ci)", "npm").args(["ci", "--no-audit", "--no-fund"]).dir(&peer))?;
    }
    let web_push = root.join("bench/peers/webpush");
    if !web_push.join("node_modules/web-push").is_dir() {
        run(Step::new("install web-push 3.6.7 (npm ci)", "npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .dir(&web_push))?;
    }
    // S6 runs its own redis-server and PostgreSQL (Debian's packages).
    if !Path::new(crate::redis::REDIS_SERVER).exists() {
        crate::apt_install(&["redis-server"])?;
    }
    if !Path::new("/usr/lib/postgresql").is_dir() {
        crate::apt_install(&["postgresql"])?;
    }
    run(Step::new("build tidings-bench (release)", "cargo")
        .args(["build", "--release", "--locked", "-p", "tidings-bench"])
        .dir(root))?;
    let tool = crate::target_dir(root).join("release/tidings-bench");
    let results_dir = root.join("bench/results");
    std::fs::create_dir_all(&results_dir).map_err(|e| e.to_string())?;
    let results = results_dir.join("latest.jsonl");
    // Three alternating runs per scenario by default: this VM's speed moves by up to ±30 % between runs of one build,
    // so BENCHMARKS.md reports medians (as the Socket.IO baseline does), with the range.
    let mut args: Vec<String> = extra.to_vec();
    if !args.iter().any(|a| a == "--runs" || a.starts_with("--runs=")) {
        args.extend(["--runs".to_string(), "3".to_string()]);
    }
    eprintln!("\n== tidings-bench run {} (about 3 minutes per run, plus I1's seeding)", args.join(" "));
    let out = std::fs::File::create(&results).map_err(|e| e.to_string())?;
    let status = Command::new(&tool)
        .arg("run")
        .args(&args)
        .current_dir(root)
        .stdout(Stdio::from(out))
        .status()
        .map_err(|e| format!("start {}: {e}", tool.display()))?;
    if !status.success() {
        return Err(format!("tidings-bench run failed ({status}); partial results in {}", results.display()));
    }
    print!("{}", std::fs::read_to_string(&results).unwrap_or_default());
    run(Step::new("write BENCHMARKS.md", &tool)
        .args(["report", "--input", "bench/results/latest.jsonl", "--root", "."])
        .dir(root))
}
