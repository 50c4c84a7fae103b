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
mod kotlin;
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
  bench       S1-S4 against Socket.IO 4.8.4, S2-S3 on SQLite too, S5 durable publish; writes BENCHMARKS.md (extra args go to `tidings-bench run`)
  bench-core  criterion benchmarks of the core engine
  latency     end-to-end latency of 1,000 notifications on loopback (release build)
  swift-test  provision Swift (Debian 13 chroot) and run the Swift package's XCTest suite
  swift-xcframework build bindings-swift/TidingsFFIC.xcframework (macOS with Xcode + rustup)
  kotlin-test provision kotlinc + JNA and run the Kotlin JVM test suite
  wasm-test   provision the wasm toolchain + Chromium and run the browser suites
  wasm-size   build the browser package and write the size report only (target/wasm-size.txt)
  wasm-floor  size of the core engine alone in wasm, the floor under the browser package (target/wasm-floor.txt)
  demo        build the browser package and run the reference server with the demo page
  bindgen     generate UniFFI bindings: bindgen <swift|kotlin> <out-dir> [--release]"
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
        Some("wasm-size") => wasm::size(&root),
        Some("wasm-floor") => wasm::floor(&root),
        Some("demo") => wasm::demo(&root),
        Some("bindgen") => bindgen::cli(&root, &args[1..]),
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

fn test_all(root: &Path) -> Result<(), String> {
    let started = Instant::now();
    let mut timings: Vec<(String, f64)> = Vec::new();
    let mut timed = |name: &str, f: &dyn Fn() -> Result<(), String>| -> Result<(), String> {
        let t = Instant::now();
        let r = f();
        timings.push((name.to_string(), t.elapsed().as_secs_f64()));
        r
    };
    timed("lint", &|| lint(root))?;
    timed("rust tests", &|| rust_tests(root))?;
    timed("kotlin (JVM) tests", &|| kotlin::test(root))?;
    timed("swift tests", &|| swift::test(root))?;
    timed("browser tests", &|| wasm::test(root))?;
    eprintln!("\n== xtask test: all suites passed in {:.0} s", started.elapsed().as_secs_f64());
    for (name, secs) in &timings {
        eprintln!("   {name:<24} {secs:>7.1} s");
    }
    Ok(())
}

fn lint(root: &Path) -> Result<(), String> {
    run(Step::new("rustfmt", "cargo").args(["fmt", "--all", "--", "--check"]).dir(root))?;
    run(Step::new("clippy", "cargo")
        .args(["clippy", "--workspace", "--all-targets", "--locked", "--", "-D", "warnings"])
        .dir(root))
}

fn rust_tests(root: &Path) -> Result<(), String> {
    run(Step::new("rust tests", "cargo").args(["test", "--workspace", "--locked"]).dir(root))?;
    // The server's end-to-end suites once more, on the SQLite store (the first run used the memory store).
    run(Step::new("server suites on SQLite", "cargo")
        .args(["test", "-p", "tidings-server", "--locked", "--test", "auth", "--test", "connections"])
        .args(["--test", "http_api", "--test", "streams"])
        .env("TIDINGS_TEST_STORE", "sqlite")
        .dir(root))
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
