//! Build and test orchestration for Tidings: `cargo xtask <command>`.
//!
//! `cargo xtask test` is the project's one test command (README, `.ci/run`): it provisions what it needs on a
//! fresh Debian machine and runs every suite.

use std::env;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

mod bench;
mod bindgen;
mod fuzz;
mod kotlin;
mod package;
mod postgres;
mod redis;
mod schemathesis;
mod server;
mod swift;
mod util;
mod wasm;

use util::{Step, run, workspace_root};

fn usage() -> ExitCode {
    eprintln!(
        "usage: cargo xtask <command>

commands:
  test        everything CI runs: format, lints, Rust tests (provisions toolchains it needs)
  lint        cargo fmt --check and clippy with warnings denied
  rust-tests  cargo test --workspace
  bench       S1-S4 against Socket.IO 4.8.4, S2-S3 on SQLite too, S5 durable publish, P1-P2 push, I1-I3 inbox and SSE; writes BENCHMARKS.md (extra args go to `tidings-bench run`)
  bench-core  criterion benchmarks of the core engine
  latency     end-to-end latency of 1,000 notifications on loopback (release build)
  swift-test  provision Swift (Debian 13 chroot) and run the Swift package's XCTest suite
  swift-xcframework build bindings-swift/TidingsFFIC.xcframework (macOS with Xcode + rustup)
  kotlin-test provision kotlinc + JNA and run the Kotlin JVM test suite
  wasm-test   provision the wasm toolchain + Chromium and run the browser suites
  schemathesis  schemathesis (PyPI) against a running server and its OpenAPI document
  wasm-size   build the browser package and write the size report only (target/wasm-size.txt)
  wasm-floor  size of the core engine alone in wasm, the floor under the browser package (target/wasm-floor.txt)
  demo        build the browser package and run the reference server with the demo page (extra args go to the server)
  package     release artifacts in target/dist/: npm tarball, crate, Swift package, sources, SHA256SUMS
  bindgen     generate UniFFI bindings: bindgen <swift|kotlin> <out-dir> [--release]
  fuzz        the fuzzing campaign: each target for 10 million executions (--runs N, --targets a,b), report
  fuzz-smoke  each fuzz target for a few seconds (part of test)"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let root = workspace_root();
    let result = match args.first().map(String::as_str) {
        Some("test") => test_all(&root),
        Some("lint") => lint(&root),
        Some("rust-tests") => rust_tests(&root),
        Some("bench") => bench::bench(&root, &args[1..]),
        Some("bench-core") => run(Step::new("criterion benchmarks", "cargo")
            .args(["bench", "-p", "tidings-core", "--bench", "engine"])
            .dir(&root)),
        Some("latency") => run(Step::new("end-to-end latency", "cargo")
            .args(["run", "--release", "-p", "tidings-bench", "--", "latency", "--count", "1000"])
            .dir(&root)),
        Some("swift-test") => swift::test(&root),
        Some("swift-xcframework") => swift::xcframework(&root),
        Some("kotlin-test") => kotlin::test(&root),
        Some("wasm-test") => wasm::test(&root),
        Some("schemathesis") => schemathesis::test(&root),
        Some("wasm-size") => wasm::size(&root),
        Some("wasm-floor") => wasm::floor(&root),
        Some("demo") => wasm::demo(&root, &args[1..]),
        Some("package") => package::all(&root),
        Some("bindgen") => bindgen::cli(&root, &args[1..]),
        Some("fuzz") => fuzz::campaign(&root, &args[1..]),
        Some("fuzz-smoke") => fuzz::smoke(&root),
        _ => return usage(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The suites `cargo xtask test` runs after the lints, each a `cargo xtask <command>` of its own. They share no
/// state but the build directory (cargo serialises builds on its lock) and run in parallel, each writing its
/// output to `target/test-logs/<command>.log`, printed whole when it ends.
const SUITES: &[(&str, &str)] = &[
    ("rust tests", "rust-tests"),
    ("kotlin (JVM) tests", "kotlin-test"),
    ("swift tests", "swift-test"),
    ("browser tests", "wasm-test"),
    ("fuzz smoke", "fuzz-smoke"),
    ("schemathesis (OpenAPI)", "schemathesis"),
];

fn test_all(root: &Path) -> Result<(), String> {
    let started = Instant::now();
    disk_report(root, "before the lints");
    let t = Instant::now();
    lint(root)?;
    let mut timings = vec![("lint".to_string(), t.elapsed().as_secs_f64(), true)];
    // `TIDINGS_TEST_JOBS=1` runs the suites one after another (to read a failure without the others' load).
    let jobs = env::var("TIDINGS_TEST_JOBS").ok().and_then(|v| v.parse::<usize>().ok()).unwrap_or(SUITES.len()).max(1);
    let logs = target_dir(root).join("test-logs");
    std::fs::create_dir_all(&logs).map_err(|e| format!("create {}: {e}", logs.display()))?;
    let exe = env::current_exe().map_err(|e| format!("cannot find the xtask binary: {e}"))?;
    eprintln!("\n== {} suites, {} at a time; logs in {}", SUITES.len(), jobs, logs.display());
    let queue = std::sync::Mutex::new(SUITES.iter());
    let results = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..jobs.min(SUITES.len()) {
            scope.spawn(|| {
                loop {
                    let Some(&(name, command)) = queue.lock().unwrap_or_else(|p| p.into_inner()).next() else {
                        break;
                    };
                    let outcome = run_suite(root, &exe, &logs, name, command);
                    results.lock().unwrap_or_else(|p| p.into_inner()).push(outcome);
                }
            });
        }
    });
    let mut failed = Vec::new();
    for (name, secs, ok) in results.into_inner().unwrap_or_else(|p| p.into_inner()) {
        if !ok {
            failed.push(name.clone());
        }
        timings.push((name, secs, ok));
    }
    // CI keeps only the end of the output: the failures of each failed suite are printed again last.
    for name in &failed {
        if let Some(&(_, command)) = SUITES.iter().find(|(n, _)| n == name) {
            let text = std::fs::read_to_string(logs.join(format!("{command}.log"))).unwrap_or_default();
            eprintln!("\n== {name}: its failures again ({}/{command}.log has it all)", logs.display());
            eprint!("{}", failure_excerpt(&text, 120));
        }
    }
    disk_report(root, "after the suites");
    let verdict = if failed.is_empty() { "all suites passed" } else { "FAILED" };
    eprintln!("\n== xtask test: {verdict} in {:.0} s", started.elapsed().as_secs_f64());
    for (name, secs, ok) in &timings {
        eprintln!("   {name:<24} {secs:>7.1} s  {}", if *ok { "ok" } else { "FAILED" });
    }
    if failed.is_empty() { Ok(()) } else { Err(format!("failed: {}", failed.join(", "))) }
}

/// At most `max` lines of a failed suite's log, from its first failure report (schemathesis' `FAILURES` or
/// `ERRORS` section, cargo test's `failures:`, a panic) on, or else its end. A longer report is shown by its first
/// third and its last two thirds (an error's message and the suite's summary are at the end).
fn failure_excerpt(log: &str, max: usize) -> String {
    let lines: Vec<&str> = log.lines().collect();
    let first = lines.iter().position(|l| {
        l.contains("= FAILURES =")
            || l.contains("= ERRORS =")
            || l.trim_end() == "failures:"
            || l.contains("panicked at")
            || l.contains("error[")
    });
    let start = first.unwrap_or(lines.len().saturating_sub(max));
    let shown = &lines[start..];
    let line = |l: &&str| format!("{l}\n");
    if shown.len() <= max {
        return shown.iter().map(line).collect();
    }
    let head = max / 3;
    let tail = max - head;
    let mut out: String = shown[..head].iter().map(line).collect();
    out.push_str(&format!("[… {} lines]\n", shown.len() - max));
    out.extend(shown[shown.len() - tail..].iter().map(line));
    out
}

/// Runs `cargo xtask <command>` with its output in `logs/<command>.log`, then prints that log.
fn run_suite(root: &Path, exe: &Path, logs: &Path, name: &str, command: &str) -> (String, f64, bool) {
    let started = Instant::now();
    let path = logs.join(format!("{command}.log"));
    eprintln!("== {name}: started ({})", path.display());
    let outcome = std::fs::File::create(&path).and_then(|log| {
        let mut suite = Command::new(exe);
        suite.arg(command).current_dir(root).stdout(log.try_clone()?).stderr(log);
        if let Some(incremental) = incremental() {
            suite.env("CARGO_INCREMENTAL", incremental);
        }
        suite.status()
    });
    let secs = started.elapsed().as_secs_f64();
    let ok = matches!(&outcome, Ok(status) if status.success());
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    // One write, so the logs of suites ending together do not interleave.
    let mut report =
        format!("\n======== {name} ({command}): {} in {secs:.0} s ========\n", if ok { "passed" } else { "FAILED" });
    report.push_str(&text);
    if let Err(e) = &outcome {
        report.push_str(&format!("\ncould not run {}: {e}\n", exe.display()));
    }
    report.push_str(&format!("======== end of {name} ========\n"));
    eprint!("{report}");
    (name.to_string(), secs, ok)
}

fn lint(root: &Path) -> Result<(), String> {
    run(Step::new("rustfmt", "cargo").args(["fmt", "--all", "--", "--check"]).dir(root))?;
    let mut clippy = Step::new("clippy", "cargo")
        .args(["clippy", "--workspace", "--all-targets", "--locked", "--", "-D", "warnings"])
        .dir(root);
    if let Some(incremental) = incremental() {
        clippy = clippy.env("CARGO_INCREMENTAL", incremental);
    }
    run(clippy)
}

/// The test command builds without incremental compilation unless `CARGO_INCREMENTAL` says otherwise: it builds
/// every crate once, and the incremental caches would take as much disk again as the artifacts themselves (a
/// CI run once ran out of space).
fn incremental() -> Option<&'static str> {
    env::var_os("CARGO_INCREMENTAL").is_none().then_some("0")
}

/// Prints the free space where the build goes (`df -h`), so a run that fills the disk says so in its log.
fn disk_report(root: &Path, when: &str) {
    let target = target_dir(root);
    let probe = if target.exists() { target } else { root.to_path_buf() };
    match Command::new("df").arg("-h").arg(&probe).output() {
        Ok(out) if out.status.success() => {
            eprintln!("\n== disk {when} ({}):\n{}", probe.display(), String::from_utf8_lossy(&out.stdout).trim_end())
        }
        _ => eprintln!("\n== disk {when}: df could not read {}", probe.display()),
    }
}

fn rust_tests(root: &Path) -> Result<(), String> {
    let python = http_ece_python(root)?;
    // The README's Node token example runs in tests/tests/suite/readme.rs.
    if !has("node") {
        apt_install(&["nodejs"])?;
    }
    // The proxy tests run Debian's nginx on loopback (demo-server/tests/server/nginx.rs: WebSocket upgrade; the SSE suite:
    // events pass a buffering proxy); the deployment test checks the systemd unit with systemd-analyze
    // (demo-server/tests/server/deploy.rs).
    let nginx = Path::new("/usr/sbin/nginx");
    let mut missing = Vec::new();
    if !nginx.exists() {
        missing.push("nginx");
    }
    if !has("systemd-analyze") {
        missing.push("systemd");
    }
    if !missing.is_empty() {
        apt_install(&missing)?;
    }
    // The multi-process suites (demo-server/tests/server/cluster.rs) run on Debian's redis-server: one shared instance on
    // loopback for the whole run (tests keep apart by key prefix), stopped when this function returns, failed or
    // not; tests that restart Redis start their own from the same binary.
    let redis = redis::RedisServer::start()?;
    // The PostgreSQL store's tests (and the suites below run on it) get a server started here, stopped when this
    // function returns, whatever the outcome (see postgres.rs). `TIDINGS_XTASK` makes a test that needs it fail
    // rather than skip when its URL is missing.
    let pg = postgres::TestPostgres::start()?;
    build_host(root)?;
    run(Step::new("rust tests", "cargo")
        .args(["test", "--workspace", "--locked"])
        .env("TIDINGS_HTTP_ECE_PYTHON", &python)
        .env("TIDINGS_NGINX", nginx)
        .env("TIDINGS_TEST_REDIS_URL", redis.url())
        .env("TIDINGS_REDIS_SERVER", redis::REDIS_SERVER)
        .env(postgres::URL_VAR, pg.url())
        .env("TIDINGS_TEST_PG_BIN", pg.bin())
        .env("TIDINGS_XTASK", "1")
        .dir(root))?;
    // The Rust client packs as a publishable crate, and the packed copy builds on its own.
    run(Step::new("cargo package (tidings-core, as published)", "cargo")
        .args(["package", "-p", "tidings-core", "--locked", "--allow-dirty"])
        .dir(root))?;
    // The server's end-to-end suites once more, on the SQLite store (the first run used the memory store).
    run(Step::new("server suites on SQLite", "cargo")
        .args(["test", "--workspace", "--locked", "--test", "server", "--"])
        .args(["auth::", "connections::", "http_api::", "streams::", "inbox::", "sse::"])
        .env("TIDINGS_TEST_STORE", "sqlite")
        .env("TIDINGS_NGINX", nginx)
        .dir(root))?;
    // And once more on PostgreSQL (a fresh database per server on the server started above), with push delivery.
    run(Step::new("server suites on PostgreSQL", "cargo")
        .args(["test", "--workspace", "--locked", "--test", "server", "--"])
        .args(["auth::", "connections::", "http_api::", "streams::", "inbox::", "sse::", "push_delivery::"])
        .env("TIDINGS_TEST_STORE", "postgres")
        .env("TIDINGS_NGINX", nginx)
        .env(postgres::URL_VAR, pg.url())
        .env("TIDINGS_TEST_REDIS_URL", redis.url())
        .env("TIDINGS_REDIS_SERVER", redis::REDIS_SERVER)
        .env("TIDINGS_XTASK", "1")
        .dir(root))
}

/// Builds, in one cargo invocation, everything the suites run on the host in the debug profile: the workspace's
/// libraries (`libtidings_ffi.so` for Swift and Kotlin), binaries (`tidings-server`, `push-harness`,
/// `tidings-test-pki`), tests and examples. Every suite builds through here and `rust-tests` tests the whole
/// workspace, so all of them resolve features alike: a `cargo build -p tidings-server` would resolve its
/// dependencies' features without the workspace's dev-dependencies, build a second copy of tokio, reqwest,
/// the core and the server, and the invocations would keep replacing each other's binaries.
pub(crate) fn build_host(root: &Path) -> Result<(), String> {
    run(Step::new("build the workspace (debug: libraries, binaries, tests, examples)", "cargo")
        .args(["build", "--workspace", "--lib", "--bins", "--tests", "--examples", "--locked"])
        .dir(root))
}

/// The Python `http_ece` version that decrypts the Web Push bodies of the server's tests (an implementation
/// independent of ours); must match `tidings_push_mocks::http_ece::HTTP_ECE_VERSION`.
const HTTP_ECE_VERSION: &str = "1.2.1";

/// A Python with `http_ece`: a virtual environment under the target directory (python3 and python3-venv from
/// Debian when missing, http_ece from PyPI).
fn http_ece_python(root: &Path) -> Result<PathBuf, String> {
    let venv = target_dir(root).join("http-ece-venv");
    let python = venv.join("bin/python");
    let works =
        |p: &Path| Command::new(p).args(["-c", "import http_ece, cryptography"]).status().is_ok_and(|s| s.success());
    if works(&python) {
        return Ok(python);
    }
    let venv_ok = has("python3")
        && Command::new("python3").args(["-c", "import venv, ensurepip"]).status().is_ok_and(|s| s.success());
    if !venv_ok {
        apt_install(&["python3", "python3-venv"])?;
    }
    run(Step::new("python venv for http_ece", "python3").args(["-m", "venv"]).arg_path(&venv))?;
    run(Step::new("install http_ece (pip)", venv.join("bin/pip")).args([
        "install",
        "--quiet",
        "--disable-pip-version-check",
        &format!("http_ece=={HTTP_ECE_VERSION}"),
    ]))?;
    if !works(&python) {
        return Err(format!("{} cannot import http_ece after installing it", python.display()));
    }
    Ok(python)
}

fn target_dir(root: &Path) -> PathBuf {
    env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"))
}

fn has(cmd: &str) -> bool {
    Command::new("sh").args(["-c", &format!("command -v {cmd} >/dev/null 2>&1")]).status().is_ok_and(|s| s.success())
}

/// `apt-get install -y`, running `apt-get update` first only when the install fails (a fresh machine has no
/// package lists). Uses `sudo -n` when not root. Every toolchain xtask provisions from Debian goes through it.
pub(crate) fn apt_install(packages: &[&str]) -> Result<(), String> {
    let root_user = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.trim_ascii() == b"0");
    let apt = |args: &[&str]| -> Step {
        let step = if root_user {
            Step::new("apt-get", "apt-get")
        } else {
            Step::new("apt-get (sudo)", "sudo").args(["-n", "apt-get"])
        };
        // Waits for another apt (a parallel provisioning step) instead of failing on its lock.
        step.args(["-o", "DPkg::Lock::Timeout=300"]).args(args.iter().copied()).env("DEBIAN_FRONTEND", "noninteractive")
    };
    let mut install = vec!["install", "-y", "-q", "--no-install-recommends"];
    install.extend_from_slice(packages);
    if run(apt(&install)).is_ok() {
        return Ok(());
    }
    run(apt(&["update", "-q"]))?;
    run(apt(&install)).map_err(|e| format!("{e}: install {} (Debian) by hand and rerun", packages.join(" ")))
}

#[cfg(test)]
mod tests {
    use super::failure_excerpt;

    #[test]
    fn a_failed_suite_is_shown_from_its_first_failure_report_with_its_last_lines() {
        let mut log: Vec<String> = (0..50).map(|i| format!("progress {i}")).collect();
        log.push("=================================== ERRORS ===================================".into());
        log.extend((0..30).map(|i| format!("detail {i}")));
        log.push("Seed: 42".into());
        let text = log.join("\n");
        let all = failure_excerpt(&text, 100);
        assert!(all.starts_with("===") && all.contains("ERRORS") && all.ends_with("Seed: 42\n"), "{all}");
        assert!(!all.contains("progress"));
        // Longer than allowed: the report's first third, then its last two thirds.
        let cut = failure_excerpt(&text, 12);
        assert!(cut.starts_with("=====") && cut.contains("detail 2\n") && !cut.contains("detail 3\n"), "{cut}");
        assert!(
            cut.contains("[… 20 lines]\n")
                && cut.ends_with(
                    "detail 23\ndetail 24\ndetail 25\ndetail 26\ndetail 27\ndetail 28\ndetail 29\nSeed: 42\n"
                ),
            "{cut}"
        );
        assert_eq!(cut.lines().count(), 13);
        // No failure report: the end of the log.
        let plain: String = (0..20).map(|i| format!("line {i}\n")).collect();
        assert_eq!(failure_excerpt(&plain, 3), "line 17\nline 18\nline 19\n");
    }
}
