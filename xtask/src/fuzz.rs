//! Fuzzing (`fuzz/`, cargo-fuzz on libFuzzer).
//!
//! The targets are built without a sanitizer and with debug assertions (and so overflow checks) on: the code under
//! test has no `unsafe` (the workspace denies it), so AddressSanitizer would find nothing Rust does not check
//! already and would halve the executions per second; the engine's own consistency checks are debug assertions.
//!
//! - `cargo xtask fuzz [--runs N] [--targets a,b] [--jobs J]`: the campaign — each target in turn for `N` executions
//!   (default 10 million; split over `J` libFuzzer processes side by side) from its committed corpus, then a table of
//!   executions, time and crashes (also written to `target/fuzz-report.md`). A crash stops that process; its input is
//!   kept under `fuzz/artifacts/<target>/`.
//! - `cargo xtask fuzz-smoke`: each target for a few seconds (part of `cargo xtask test`).
//!
//! Provisioning: the pinned nightly toolchain (cargo-fuzz needs `-Z` flags; the campaign's numbers were taken with
//! this one, and a different nightly is refused rather than silently used), and cargo-fuzz from crates.io into
//! `.tools/cargo-fuzz/`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::util::{Step, run};

/// The fuzz targets (`fuzz/Cargo.toml`).
pub(crate) const TARGETS: [&str; 4] = ["codec", "engine", "browser_decoder", "server_frames"];

/// The nightly the fuzz targets are built with: the channel date and the rustc commit it ships.
pub(crate) const NIGHTLY: &str = "nightly-2026-05-20";
const NIGHTLY_COMMIT: &str = "e50aa6fba4e63ab34c72bf9acfd2c307c1155d1a";

/// cargo-fuzz, from crates.io.
const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// Seconds per target in `cargo xtask test`.
const SMOKE_SECONDS: u32 = 8;

/// The rustup toolchain name to build with: the pinned nightly under its own name, or `nightly` if that is the
/// same build; otherwise it is installed (where rustup can reach its server). The browser module is built with it
/// too (`-Zbuild-std`, xtask/src/wasm.rs).
pub(crate) fn nightly() -> Result<String, String> {
    let commit_of = |toolchain: &str| -> Option<String> {
        let out = Command::new("rustc").arg(format!("+{toolchain}")).arg("-vV").stderr(Stdio::null()).output().ok()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.lines().find_map(|l| l.strip_prefix("commit-hash: ").map(str::to_owned))
    };
    for candidate in [NIGHTLY, "nightly"] {
        match commit_of(candidate) {
            Some(commit) if commit == NIGHTLY_COMMIT => return Ok(candidate.to_owned()),
            Some(other) if candidate == "nightly" => {
                eprintln!(
                    "xtask: the `nightly` toolchain is rustc {other}, not the pinned {NIGHTLY} ({NIGHTLY_COMMIT})"
                );
            }
            _ => {}
        }
    }
    run(Step::new("install the pinned nightly", "rustup").args([
        "toolchain",
        "install",
        NIGHTLY,
        "--profile",
        "minimal",
    ]))
    .map_err(|e| {
        format!(
            "{e}: the fuzz targets need {NIGHTLY} (rustc {NIGHTLY_COMMIT}); install it with \
                 `rustup toolchain install {NIGHTLY}` (rustup toolchain list shows what is there)"
        )
    })?;
    Ok(NIGHTLY.to_owned())
}

/// `cargo-fuzz`, installed into `.tools/cargo-fuzz` if it is not there.
fn cargo_fuzz(root: &Path) -> Result<PathBuf, String> {
    let prefix = root.join(".tools/cargo-fuzz");
    let bin = prefix.join("bin/cargo-fuzz");
    let version_ok = Command::new(&bin)
        .arg("--version")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(CARGO_FUZZ_VERSION));
    if !version_ok {
        run(Step::new("install cargo-fuzz", "cargo")
            .args(["install", "cargo-fuzz", "--locked", "--version", CARGO_FUZZ_VERSION, "--root"])
            .args([prefix.as_os_str()]))?;
    }
    Ok(bin)
}

/// What one target's run gave.
struct Outcome {
    target: &'static str,
    jobs: u32,
    executions: u64,
    seconds: f64,
    crash: Option<String>,
}

/// Builds `target` (no sanitizer, debug assertions on) and returns its binary.
fn build_target(root: &Path, toolchain: &str, cargo_fuzz: &Path, target: &str) -> Result<PathBuf, String> {
    let fuzz_dir = root.join("fuzz");
    run(Step::new(&format!("build fuzz target {target}"), cargo_fuzz)
        .args(["fuzz", "build", "--sanitizer", "none", "--debug-assertions", target])
        .dir(&fuzz_dir)
        .env("RUSTUP_TOOLCHAIN", toolchain))?;
    let triple = format!("{}-unknown-linux-gnu", std::env::consts::ARCH);
    let bin = fuzz_dir.join("target").join(triple).join("release").join(target);
    if !bin.is_file() {
        return Err(format!("expected the fuzz target at {}", bin.display()));
    }
    Ok(bin)
}

/// Runs `target` as `jobs` libFuzzer processes side by side, each with `args`, from its committed corpus; new corpus
/// entries go to a scratch directory (the committed corpus changes only when someone minimises into it on purpose).
/// Each process logs to `target/fuzz-<target>-<i>.log`.
fn run_target(root: &Path, bin: &Path, target: &'static str, jobs: u32, args: &[String]) -> Result<Outcome, String> {
    let fuzz_dir = root.join("fuzz");
    let scratch = crate::target_dir(root).join("fuzz-corpus").join(target);
    std::fs::create_dir_all(&scratch).map_err(|e| format!("create {}: {e}", scratch.display()))?;
    let corpus = fuzz_dir.join("corpus").join(target);
    let artifacts = fuzz_dir.join("artifacts").join(target);
    std::fs::create_dir_all(&artifacts).map_err(|e| format!("create {}: {e}", artifacts.display()))?;
    eprintln!("\n== fuzz {target}: {jobs} process(es), {args:?}");
    let started = Instant::now();
    let mut children = Vec::new();
    for i in 0..jobs {
        let log = crate::target_dir(root).join(format!("fuzz-{target}-{i}.log"));
        let file = std::fs::File::create(&log).map_err(|e| format!("create {}: {e}", log.display()))?;
        let child = Command::new(bin)
            .current_dir(&fuzz_dir)
            .arg(format!("-artifact_prefix={}/", artifacts.display()))
            .args(["-print_final_stats=1", "-max_len=4096"])
            .args(args)
            .arg(&scratch)
            .arg(&corpus)
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .map_err(|e| format!("could not start {}: {e}", bin.display()))?;
        children.push((child, log));
    }
    let mut executions = 0;
    let mut crash = None;
    for (mut child, log) in children {
        let status = child.wait().map_err(|e| format!("fuzz {target}: {e}"))?;
        let stderr = std::fs::read_to_string(&log).unwrap_or_default();
        let ran = stderr
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix("stat::number_of_executed_units:").and_then(|n| n.trim().parse::<u64>().ok()))
            .unwrap_or(0);
        executions += ran;
        if !status.success() {
            let artifact = stderr
                .lines()
                .find_map(|l| l.split("Test unit written to ").nth(1).map(str::to_owned))
                .unwrap_or_else(|| format!("no artifact; see {}", log.display()));
            let tail: Vec<&str> = stderr.lines().rev().take(30).collect();
            eprintln!("{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
            if ran == 0 && !stderr.contains("panicked") && !stderr.contains("==ERROR") {
                return Err(format!("fuzz {target} did not run ({status}); log: {}", log.display()));
            }
            crash.get_or_insert(artifact);
        }
    }
    Ok(Outcome { target, jobs, executions, seconds: started.elapsed().as_secs_f64(), crash })
}

fn report(outcomes: &[Outcome], command: &str) -> String {
    let mut s = String::from(
        "| target | processes | executions | seconds | exec/s | crashes |\n|---|---:|---:|---:|---:|---|\n",
    );
    for o in outcomes {
        let rate = if o.seconds > 0.0 { o.executions as f64 / o.seconds } else { 0.0 };
        let crash = o.crash.as_deref().map_or("0".to_owned(), |a| format!("1 ({a})"));
        s.push_str(&format!(
            "| {} | {} | {} | {:.0} | {:.0} | {} |\n",
            o.target, o.jobs, o.executions, o.seconds, rate, crash
        ));
    }
    s.push_str(&format!("\ncommand: `{command}` ({NIGHTLY}, cargo-fuzz {CARGO_FUZZ_VERSION})\n"));
    s
}

fn targets_from(args: &[String]) -> Result<Vec<&'static str>, String> {
    let Some(i) = args.iter().position(|a| a == "--targets") else { return Ok(TARGETS.to_vec()) };
    let list = args.get(i + 1).ok_or("--targets needs a comma-separated list")?;
    list.split(',')
        .map(|t| TARGETS.iter().copied().find(|k| *k == t).ok_or_else(|| format!("unknown fuzz target {t:?}")))
        .collect()
}

/// `cargo xtask fuzz [--runs N] [--targets a,b] [--jobs J]`: each target for `N` executions in all, split over `J`
/// processes side by side (default 1).
pub(crate) fn campaign(root: &Path, args: &[String]) -> Result<(), String> {
    let number = |flag: &str, default: u64| -> Result<u64, String> {
        match args.iter().position(|a| a == flag) {
            Some(i) => args.get(i + 1).and_then(|n| n.parse().ok()).ok_or(format!("{flag} needs a number")),
            None => Ok(default),
        }
    };
    let runs = number("--runs", 10_000_000)?;
    let jobs = u32::try_from(number("--jobs", 1)?.max(1)).unwrap_or(1);
    let targets = targets_from(args)?;
    let toolchain = nightly()?;
    let cargo_fuzz = cargo_fuzz(root)?;
    let mut outcomes = Vec::new();
    for target in targets {
        let bin = build_target(root, &toolchain, &cargo_fuzz, target)?;
        let per_job = runs.div_ceil(u64::from(jobs));
        outcomes.push(run_target(root, &bin, target, jobs, &[format!("-runs={per_job}")])?);
    }
    let command = format!("cargo xtask fuzz {}", args.join(" "));
    let table = report(&outcomes, command.trim());
    let path = crate::target_dir(root).join("fuzz-report.md");
    let _ = std::fs::write(&path, &table);
    eprintln!("\n== fuzz report ({})\n{table}", path.display());
    if outcomes.iter().any(|o| o.crash.is_some()) {
        return Err("a fuzz target crashed (see the table)".into());
    }
    Ok(())
}

/// `cargo xtask fuzz-smoke`: every target for a few seconds.
pub(crate) fn smoke(root: &Path) -> Result<(), String> {
    let toolchain = nightly()?;
    let cargo_fuzz = cargo_fuzz(root)?;
    let mut outcomes = Vec::new();
    for target in TARGETS {
        let bin = build_target(root, &toolchain, &cargo_fuzz, target)?;
        let args = [format!("-max_total_time={SMOKE_SECONDS}")];
        outcomes.push(run_target(root, &bin, target, 1, &args)?);
    }
    eprintln!("\n== fuzz smoke\n{}", report(&outcomes, "cargo xtask fuzz-smoke"));
    if outcomes.iter().any(|o| o.crash.is_some()) {
        return Err("a fuzz target crashed in the smoke run (see the table)".into());
    }
    if let Some(o) = outcomes.iter().find(|o| o.executions == 0) {
        return Err(format!("fuzz target {} ran no input", o.target));
    }
    Ok(())
}
