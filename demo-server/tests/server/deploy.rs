//! The deployment files in `deploy/`, checked as far as this machine allows: the systemd unit with
//! `systemd-analyze verify` against the built binary; the container build file's structure against the workspace
//! (its Rust version, the build command, the port, a non-root user, settings that exist). Building the image needs
//! a container engine, which the test machines do not run.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Every `TIDINGS_*` variable the binary reads (from `--help`).
fn known_variables() -> BTreeSet<String> {
    let help = Command::new(env!("CARGO_BIN_EXE_tidings-server")).arg("--help").output().unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    variables(&help)
}

fn variables(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in text.match_indices("TIDINGS_") {
        let name: String = text[i..].chars().take_while(|c| c.is_ascii_uppercase() || *c == '_').collect();
        if name.len() > "TIDINGS_".len() {
            out.insert(name);
        }
    }
    out
}

#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() {
    let analyze = ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("systemd-analyze is missing: install Debian's systemd (cargo xtask test does)");
    let dir = tempfile::tempdir().unwrap();
    let env = dir.path().join("tidings.env");
    std::fs::write(&env, read("deploy/tidings.env.example")).unwrap();
    let unit = read("deploy/tidings.service")
        .replace("/usr/local/bin/tidings-server", env!("CARGO_BIN_EXE_tidings-server"))
        .replace("/etc/tidings/tidings.env", env.to_str().unwrap());
    let path = dir.path().join("tidings.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new(analyze).arg("verify").arg(&path).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.trim().is_empty(), "systemd-analyze verify: {stderr}");
    // Every variable the unit and the example environment file set is one the server reads.
    let known = known_variables();
    for file in ["deploy/tidings.service", "deploy/tidings.env.example", "deploy/Containerfile"] {
        for name in variables(&read(file)) {
            assert!(known.contains(&name), "{file} sets {name}, which tidings-server does not read");
        }
    }
}

#[test]
fn the_container_file_builds_the_server_with_the_workspace_rust_and_runs_it_unprivileged() {
    let file = read("deploy/Containerfile");
    let lines: Vec<&str> = file.lines().map(str::trim).filter(|l| !l.starts_with('#') && !l.is_empty()).collect();
    let manifest = read("Cargo.toml");
    let rust_version = manifest
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = \""))
        .and_then(|v| v.strip_suffix('"'))
        .expect("the workspace has a rust-version");
    let from: Vec<&str> = lines.iter().filter_map(|l| l.strip_prefix("FROM ")).collect();
    assert_eq!(from.len(), 2, "a build stage and a runtime stage: {from:?}");
    assert!(
        from[0].starts_with(&format!("docker.io/library/rust:{rust_version}-")),
        "the build stage uses the workspace's Rust {rust_version}: {}",
        from[0]
    );
    let build = lines.iter().find(|l| l.starts_with("RUN cargo build")).expect("a cargo build step");
    for part in ["--release", "--locked", "-p tidings-server"] {
        assert!(build.contains(part), "{build} lacks {part}");
    }
    // The port the image listens on is the one it exposes.
    let bind = lines.iter().find_map(|l| l.split("TIDINGS_BIND=").nth(1)).expect("TIDINGS_BIND is set");
    let port = bind.split_whitespace().next().unwrap().rsplit(':').next().unwrap();
    assert!(lines.contains(&format!("EXPOSE {port}").as_str()), "EXPOSE {port}");
    // Unprivileged, with a data directory it owns.
    let user = lines.iter().rev().find_map(|l| l.strip_prefix("USER ")).expect("a USER");
    assert!(!user.starts_with('0') && user != "root", "runs as {user}");
    assert!(file.contains("--chown=65532:65532 /out/var/lib/tidings /var/lib/tidings"));
    assert!(file.contains("TIDINGS_DATA_DIR=/var/lib/tidings") && file.contains("VOLUME [\"/var/lib/tidings\"]"));
    let entrypoint = lines.iter().find_map(|l| l.strip_prefix("ENTRYPOINT ")).unwrap();
    assert!(entrypoint.contains("/usr/local/bin/tidings-server") && file.contains("/out/usr/local/bin/tidings-server"));
    // The build context leaves out build output and provisioned toolchains.
    let ignore = read(".dockerignore");
    for entry in ["target/", ".tools/", "**/node_modules/"] {
        assert!(ignore.lines().any(|l| l.trim() == entry), ".dockerignore lacks {entry}");
    }
}
