//! `cargo xtask package`: the release artifacts, in `target/dist/` (CHANGELOG.md says what a version promises).
//!
//! - `tidings-web-<v>.tgz` — the npm package `@tidings/web` (`npm pack` of `target/npm/tidings-web/`: the
//!   ES modules, their TypeScript declarations, the README and `dist/` with the optimised wasm module);
//! - `tidings-core-<v>.crate` — the Rust client, as `cargo publish` would upload it (`cargo package`, which
//!   builds the packed crate on its own to prove it is complete);
//! - `tidings-swift-<v>.tar.gz` — the Swift package's sources; its binary target, `TidingsFFIC.xcframework`, is
//!   built on macOS (`cargo xtask swift-xcframework`) and, when it is there, zipped beside it with its checksum;
//! - `tidings-<v>-src.tar.gz` — the sources of the committed tree (`git archive HEAD`), from which the
//!   XCFramework (macOS) and the Android AAR (Gradle + cargo-ndk) are built;
//! - `SHA256SUMS`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::target_dir;
use crate::util::{Step, run};

/// Where the artifacts go.
pub(crate) fn dist_dir(root: &Path) -> PathBuf {
    target_dir(root).join("dist")
}

/// The workspace version (`[workspace.package] version`), which every artifact carries.
pub(crate) fn version(root: &Path) -> Result<String, String> {
    let manifest = fs::read_to_string(root.join("Cargo.toml")).map_err(|e| format!("Cargo.toml: {e}"))?;
    let section = manifest.split("[workspace.package]").nth(1).ok_or("Cargo.toml has no [workspace.package]")?;
    section
        .lines()
        .find_map(|l| l.trim().strip_prefix("version").map(|v| v.trim_start().trim_start_matches('=').trim()))
        .map(|v| v.trim_matches('"').to_string())
        .ok_or_else(|| "no version in [workspace.package]".into())
}

/// `cargo xtask package`: every artifact.
pub(crate) fn all(root: &Path) -> Result<(), String> {
    let version = version(root)?;
    let dist = dist_dir(root);
    let _ = fs::remove_dir_all(&dist);
    fs::create_dir_all(&dist).map_err(|e| format!("create {}: {e}", dist.display()))?;
    let dirty = git(root, &["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.trim().is_empty());
    if dirty {
        eprintln!("xtask: warning: the working tree has uncommitted changes; a release is packed from a clean tree");
    }
    let mut artifacts = vec![npm(root, &version, &dist)?, krate(root, &version, &dist)?, swift(root, &version, &dist)?];
    artifacts.extend(xcframework_zip(root, &dist)?);
    artifacts.push(sources(root, &version, &dist)?);
    let mut sums = String::new();
    for path in &artifacts {
        let out = Command::new("sha256sum").arg(path.file_name().unwrap_or_default()).current_dir(&dist).output();
        match out {
            Ok(o) if o.status.success() => sums.push_str(&String::from_utf8_lossy(&o.stdout)),
            _ => return Err(format!("sha256sum {} failed", path.display())),
        }
    }
    fs::write(dist.join("SHA256SUMS"), &sums).map_err(|e| format!("SHA256SUMS: {e}"))?;
    eprintln!("\n== release artifacts of {version} in {}:", dist.display());
    for path in &artifacts {
        let size = fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        eprintln!("   {:<44} {:>10} B", path.file_name().unwrap_or_default().to_string_lossy(), size);
    }
    Ok(())
}

/// Builds the browser package and packs it with npm into `dist`.
fn npm(root: &Path, version: &str, dist: &Path) -> Result<PathBuf, String> {
    crate::wasm::size(root)?;
    pack(root, version, dist)
}

/// Packs the browser package built in [`crate::wasm::package_dir`] with npm into `dist`; checks that the tarball
/// holds what a user needs.
pub(crate) fn pack(root: &Path, version: &str, dist: &Path) -> Result<PathBuf, String> {
    let package = crate::wasm::package_dir(root);
    let manifest = fs::read_to_string(package.join("package.json"))
        .map_err(|e| format!("package.json of the npm package: {e}"))?;
    if !manifest.contains(&format!("\"version\": \"{version}\"")) {
        return Err(format!("bindings-wasm/js/package.json must carry the workspace version {version}"));
    }
    fs::create_dir_all(dist).map_err(|e| format!("create {}: {e}", dist.display()))?;
    run(Step::new("npm pack", "npm").args(["pack", "--silent", "--pack-destination"]).arg_path(dist).dir(&package))?;
    let tarball = dist.join(format!("tidings-web-{version}.tgz"));
    let listing = Command::new("tar")
        .arg("-tzf")
        .arg(&tarball)
        .output()
        .map_err(|e| format!("tar -tzf {}: {e}", tarball.display()))?;
    let listing = String::from_utf8_lossy(&listing.stdout);
    for needed in [
        "package/package.json",
        "package/README.md",
        "package/tidings.js",
        "package/tidings.d.ts",
        "package/sw.js",
        "package/sw.d.ts",
        "package/storage.js",
        "package/locate.js",
        "package/dist/tidings_wasm.js",
        "package/dist/tidings_wasm_bg.wasm",
    ] {
        if !listing.lines().any(|l| l.trim() == needed) {
            return Err(format!("{} lacks {needed}; it holds:\n{listing}", tarball.display()));
        }
    }
    Ok(tarball)
}

/// `cargo package -p tidings-core`: packs the crate and builds the packed copy on its own.
fn krate(root: &Path, version: &str, dist: &Path) -> Result<PathBuf, String> {
    // --allow-dirty: packing from a working tree with changes is allowed here (the warning above says so).
    run(Step::new("cargo package (tidings-core)", "cargo")
        .args(["package", "-p", "tidings-core", "--locked", "--allow-dirty"])
        .dir(root))?;
    let name = format!("tidings-core-{version}.crate");
    let packed = target_dir(root).join("package").join(&name);
    let out = dist.join(&name);
    fs::copy(&packed, &out).map_err(|e| format!("copy {}: {e}", packed.display()))?;
    Ok(out)
}

/// The Swift package's sources (without build products and the XCFramework) as `tidings-swift-<v>/`.
fn swift(root: &Path, version: &str, dist: &Path) -> Result<PathBuf, String> {
    let stage = target_dir(root).join("swift-package");
    let _ = fs::remove_dir_all(&stage);
    let prefix = format!("tidings-swift-{version}");
    crate::wasm::copy_dir_except(
        &root.join("bindings-swift"),
        &stage.join(&prefix),
        &[".build", ".swiftpm", "TidingsFFIC.xcframework"],
    )?;
    let out = dist.join(format!("{prefix}.tar.gz"));
    run(Step::new("Swift package archive", "tar")
        .args(["--sort=name", "--owner=0", "--group=0", "--numeric-owner", "-czf"])
        .arg_path(&out)
        .args(["-C"])
        .arg_path(&stage)
        .args([&prefix]))?;
    let _ = fs::remove_dir_all(&stage);
    Ok(out)
}

/// On macOS, when `cargo xtask swift-xcframework` has built it: `TidingsFFIC.xcframework.zip` and the checksum a
/// `.binaryTarget(url:checksum:)` needs.
fn xcframework_zip(root: &Path, dist: &Path) -> Result<Vec<PathBuf>, String> {
    let xcframework = root.join("bindings-swift/TidingsFFIC.xcframework");
    if !cfg!(target_os = "macos") || !xcframework.exists() {
        eprintln!(
            "xtask: no TidingsFFIC.xcframework here: it is built on macOS with Xcode (cargo xtask swift-xcframework)"
        );
        return Ok(Vec::new());
    }
    let zip = dist.join("TidingsFFIC.xcframework.zip");
    run(Step::new("zip the XCFramework", "ditto")
        .args(["-c", "-k", "--sequesterRsrc", "--keepParent"])
        .arg_path(&xcframework)
        .arg_path(&zip))?;
    let out = Command::new("swift")
        .args(["package", "compute-checksum"])
        .arg(&zip)
        .current_dir(root.join("bindings-swift"))
        .output()
        .map_err(|e| format!("swift package compute-checksum: {e}"))?;
    let checksum = dist.join("TidingsFFIC.xcframework.zip.checksum");
    fs::write(&checksum, &out.stdout).map_err(|e| format!("{}: {e}", checksum.display()))?;
    Ok(vec![zip, checksum])
}

/// `git archive HEAD` as `tidings-<v>/`: the sources the XCFramework and the AAR are built from.
fn sources(root: &Path, version: &str, dist: &Path) -> Result<PathBuf, String> {
    let out = dist.join(format!("tidings-{version}-src.tar.gz"));
    run(Step::new("source archive (git archive HEAD)", "git")
        .args(["archive", "--format=tar.gz", &format!("--prefix=tidings-{version}/"), "-o"])
        .arg_path(&out)
        .args(["HEAD"])
        .dir(root))?;
    Ok(out)
}

fn git(root: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).current_dir(root).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}
