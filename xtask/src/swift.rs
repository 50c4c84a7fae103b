//! Swift: provisioning (Debian 13 chroot with swiftlang), generated bindings, `swift build` / `swift test`, and the
//! XCFramework for Apple platforms. See bindings-swift/README.md.
//!
//! `cargo xtask swift-test`:
//! 1. provision Swift. Linux: Debian 12 has no Swift, Debian 13's `swiftlang` (Swift 6.0.3) runs in a chroot at
//!    `.tools/swift-root` (debootstrap from the host's own Debian mirror; reused once its marker file is written).
//!    macOS: the installed Xcode toolchain;
//! 2. build the host `tidings_ffi` library, regenerate the UniFFI Swift bindings into `target/swift/generated` and
//!    fail if the copies checked in under `bindings-swift/Sources/TidingsFFI` differ (SwiftPM cannot run cargo, so
//!    the package ships them). macOS: build `TidingsFFIC.xcframework` too;
//! 3. start a reference server and run `swift build --build-tests`, then `swift test` (XCTest: the conformance
//!    scenarios and the wrapper's tests). Linux: inside the chroot, in a private mount namespace (`unshare`) with
//!    the workspace bind-mounted at its own path, so every mount disappears with the process, even on failure;
//!    the host-built `libtidings_ffi.so` loads there (Debian 12's glibc is older than Debian 13's). Between the
//!    two, every ```swift block of bindings-swift/README.md is compiled against the package (`readme_snippets`).
//!
//! It ends by printing how long each phase took.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use crate::bindgen::{Language, build_host_library, generate};
use crate::util::{Step, run};

/// The Debian release whose `swiftlang` package provides the toolchain on Linux.
const SWIFT_SUITE: &str = "trixie";
/// Installed in the chroot: the toolchain, and the C/C++ headers and libraries its linker needs.
const CHROOT_PACKAGES: &[&str] = &["swiftlang", "libc6-dev", "libstdc++-14-dev"];
/// Written into the chroot once it is complete; holds the package list it was provisioned with.
const MARKER: &str = ".tidings-swift-provisioned";
/// Where the generated bindings are checked in, relative to the workspace root.
const GENERATED_DIR: &str = "bindings-swift/Sources/TidingsFFI";
/// The files uniffi generates for Swift (names from ffi/uniffi.toml).
const GENERATED_FILES: &[&str] = &["TidingsFFI.swift", "TidingsFFIC.h", "TidingsFFIC.modulemap"];
/// Rust targets of the XCFramework: iOS devices, the iOS simulator (two architectures, merged with lipo), macOS.
const IOS_DEVICE: &str = "aarch64-apple-ios";
const IOS_SIMULATOR: [&str; 2] = ["aarch64-apple-ios-sim", "x86_64-apple-ios"];
/// macOS slices: Apple silicon and Intel, merged into one universal library.
const MACOS: [&str; 2] = ["aarch64-apple-darwin", "x86_64-apple-darwin"];
/// Minimum OS versions, as in bindings-swift/Package.swift.
const IOS_DEPLOYMENT_TARGET: &str = "15.0";
const MACOS_DEPLOYMENT_TARGET: &str = "12.0";

/// Where `swift` runs.
enum Toolchain {
    /// The installed toolchain (macOS with Xcode).
    Native,
    /// The Debian 13 chroot at this path.
    Chroot(PathBuf),
}

/// `cargo xtask swift-test`: provisions Swift if needed, checks the generated bindings and runs the XCTest suite
/// (conformance scenarios and wrapper tests) against a reference server.
pub(crate) fn test(root: &Path) -> Result<(), String> {
    let started = Instant::now();
    let mut timings: Vec<(&str, f64)> = Vec::new();
    let result = test_timed(root, &mut timings);
    eprintln!("\n== swift-test {} in {:.1} s", if result.is_ok() { "passed" } else { "FAILED" }, secs(started));
    for (name, s) in &timings {
        eprintln!("   {name:<32} {s:>6.1} s");
    }
    result
}

fn test_timed(root: &Path, timings: &mut Vec<(&'static str, f64)>) -> Result<(), String> {
    let t = Instant::now();
    let toolchain = if cfg!(target_os = "macos") {
        Toolchain::Native
    } else if cfg!(target_os = "linux") {
        Toolchain::Chroot(provision(root)?)
    } else {
        return Err("swift-test runs on Linux (Debian, as root) or macOS".into());
    };
    timings.push(("provisioning", secs(t)));

    let t = Instant::now();
    let library = build_host_library(root, false)?;
    check_bindings(root, &library)?;
    if matches!(toolchain, Toolchain::Native) {
        xcframework(root)?;
    }
    timings.push(("host library + bindings check", secs(t)));

    let t = Instant::now();
    let server = crate::server::start_conformance_server(root, "swift")?;
    timings.push(("reference server", secs(t)));

    let library_dir = library.parent().ok_or("the host library has no directory")?.display().to_string();
    let mut env = vec![
        ("TIDINGS_REQUIRE_SERVER".to_string(), "1".to_string()),
        ("TIDINGS_SCENARIOS".to_string(), root.join("tests/conformance/scenarios.json").display().to_string()),
        // Linux: where the package links libtidings_ffi from, and where the test binary loads it from.
        ("TIDINGS_FFI_LIB_DIR".to_string(), library_dir.clone()),
        ("LD_LIBRARY_PATH".to_string(), library_dir),
    ];
    env.extend(server.env().into_iter().map(|(k, v)| (k.to_string(), v)));

    let package = root.join("bindings-swift");
    let t = Instant::now();
    swift(&toolchain, "swift build", &package, "build", &["build", "--build-tests"], &env)?;
    timings.push(("swift build", secs(t)));

    let t = Instant::now();
    readme_snippets(root, &toolchain, &env)?;
    timings.push(("README blocks (swift build)", secs(t)));

    let t = Instant::now();
    let mut test_args = vec!["test", "--skip-build"];
    if matches!(toolchain, Toolchain::Chroot(_)) {
        // Swift 6's swift-testing runner would print a second, empty summary after XCTest's.
        test_args.push("--disable-swift-testing");
    }
    let outcome = swift(&toolchain, "swift test (XCTest)", &package, "build", &test_args, &env);
    timings.push(("swift test", secs(t)));
    drop(server);
    outcome.map_err(|e| format!("{e}: see the failures above (server log: target/conformance-server-swift.log)"))
}

/// Runs `swift <args>` for the package in `package` with `env`, building in `target/swift/<scratch>`.
fn swift(
    toolchain: &Toolchain,
    name: &str,
    package: &Path,
    scratch: &str,
    args: &[&str],
    env: &[(String, String)],
) -> Result<(), String> {
    let root = crate::util::workspace_root();
    let package = package.display().to_string();
    let target = crate::target_dir(&root);
    match toolchain {
        Toolchain::Native => {
            let scratch = target.join(format!("swift/{scratch}-macos")).display().to_string();
            let mut step = Step::new(name, "swift").args(args.iter().copied()).args([
                "--package-path",
                &package,
                "--scratch-path",
                &scratch,
            ]);
            for (k, v) in env {
                step = step.env(k, v);
            }
            run(step)
        }
        Toolchain::Chroot(chroot) => {
            let scratch = target.join(format!("swift/{scratch}")).display().to_string();
            let mut command: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
            command.push("swift".into());
            command.extend(args.iter().map(|a| a.to_string()));
            command.extend(["--package-path".into(), package, "--scratch-path".into(), scratch]);
            let mut binds = vec![root.to_path_buf()];
            if !target.starts_with(root) {
                binds.push(target);
            }
            in_chroot(name, chroot, &binds, &command)
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// The README's Swift blocks

/// The package path in the README's `Package.swift` block; replaced by this checkout's `bindings-swift`.
const README_PACKAGE_PATH: &str = "../tidings/bindings-swift";
/// The app-side names (`ReadmeHelpers.swift`) and compile-only stubs of Apple frameworks (`CompileOnlyStubs.swift`)
/// the blocks need, relative to the workspace root.
const README_SUPPORT: &str = "bindings-swift/Tests/ReadmeSnippets";

/// Compiles every ```swift block of bindings-swift/README.md against the real `Tidings` package, as an app would:
/// the README's `Package.swift` block (the one starting `// Package.swift`) becomes the manifest of a package
/// generated in `target/swift/readme-snippets`, whose target `App` holds every other block, each wrapped in a
/// function of its own (a block starting with `case` inside a `switch` over a `TidingsEvent`), plus the support
/// files of `README_SUPPORT`. Blocks marked ```` ```swift apple-only ```` use API that exists only on Apple
/// platforms (UIKit, Network, Observation) and are not compiled here; the README says so next to them.
fn readme_snippets(root: &Path, toolchain: &Toolchain, env: &[(String, String)]) -> Result<(), String> {
    let readme_path = root.join("bindings-swift/README.md");
    let readme = std::fs::read_to_string(&readme_path).map_err(|e| format!("read {}: {e}", readme_path.display()))?;
    let blocks = crate::util::fenced_blocks(&readme, "swift")?;
    let package = crate::target_dir(root).join("swift/readme-snippets");
    let sources = package.join("Sources/App");
    if package.exists() {
        std::fs::remove_dir_all(&package).map_err(|e| format!("remove {}: {e}", package.display()))?;
    }
    std::fs::create_dir_all(&sources).map_err(|e| format!("create {}: {e}", sources.display()))?;

    let mut manifest = None;
    let (mut compiled, mut apple_only) = (0, 0);
    for (i, block) in blocks.iter().enumerate() {
        match block.info.as_str() {
            "" => {}
            "apple-only" => {
                apple_only += 1;
                continue;
            }
            other => {
                return Err(format!(
                    "bindings-swift/README.md line {}: unknown block kind ```swift {other} (known: apple-only)",
                    block.line
                ));
            }
        }
        if block.body.trim_start().starts_with("// Package.swift") {
            if manifest.replace(block).is_some() {
                return Err("bindings-swift/README.md: two `// Package.swift` blocks".into());
            }
            continue;
        }
        let file = sources.join(format!("ReadmeBlock{:02}.swift", i + 1));
        std::fs::write(&file, swift_snippet(i + 1, block)).map_err(|e| format!("write {}: {e}", file.display()))?;
        compiled += 1;
    }
    if compiled == 0 {
        return Err("bindings-swift/README.md: no ```swift block to compile".into());
    }
    let manifest = manifest.ok_or("bindings-swift/README.md: no ```swift block starting `// Package.swift`")?;
    if !manifest.body.contains(README_PACKAGE_PATH) {
        return Err(format!(
            "bindings-swift/README.md line {}: the Package.swift block no longer names {README_PACKAGE_PATH} (update \
             README_PACKAGE_PATH in xtask/src/swift.rs)",
            manifest.line
        ));
    }
    let dependency = root.join("bindings-swift").display().to_string();
    let manifest_text = format!(
        "// swift-tools-version:5.9\n// Generated by `cargo xtask swift-test` from the Package.swift block of \
         bindings-swift/README.md (line {}), with the package path pointing at this checkout.\nimport \
         PackageDescription\n\nlet package = Package(\n    name: \"ReadmeSnippets\",\n    platforms: [.iOS(.v15), \
         .macOS(.v12)],\n{}\n)\n",
        manifest.line,
        manifest.body.trim_end().replace(README_PACKAGE_PATH, &dependency)
    );
    let manifest_file = package.join("Package.swift");
    std::fs::write(&manifest_file, manifest_text).map_err(|e| format!("write {}: {e}", manifest_file.display()))?;
    let support = root.join(README_SUPPORT);
    for name in list_files(&support)? {
        if name.ends_with(".swift") {
            copy(&support.join(&name), &sources.join(&name))?;
        }
    }

    eprintln!(
        "\n== README: compiling {compiled} ```swift blocks of bindings-swift/README.md (package: its Package.swift \
         block) in {}",
        package.display()
    );
    swift(toolchain, "swift build (README blocks)", &package, "readme-build", &["build"], env)?;
    eprintln!(
        "== README: {compiled} Swift blocks compile against Tidings, with the README's Package.swift as their \
         manifest; {apple_only} apple-only blocks are not compiled on this platform"
    );
    Ok(())
}

/// One README block as a Swift file: its `import` lines at the top, the rest as the body of a function that is
/// never called (so statements, `try await` and nested functions all compile).
fn swift_snippet(number: usize, block: &crate::util::FencedBlock) -> String {
    let (imports, code): (Vec<&str>, Vec<&str>) =
        block.body.lines().partition(|line| line.trim_start().starts_with("import "));
    // Errors point at the README: the block's first line is the line after its opening fence (import lines
    // moved out shift what follows them; README blocks put them first). A `case` block's `switch` takes the
    // fence's line.
    let first = block.line + 1 + imports.len();
    let code = code.join("\n");
    let body = if block.body.trim_start().starts_with("case ") {
        format!("{}switch event {{\n{code}\ndefault: break\n}}", source_location(first - 1))
    } else {
        format!("{}{code}", source_location(first))
    };
    format!(
        "// Generated by `cargo xtask swift-test` from bindings-swift/README.md, block {number} (line {}). Do not \
         edit: edit the README.\nimport Foundation\nimport Tidings\n#if canImport(UIKit)\nimport UIKit\n#endif\n#if \
         canImport(UserNotifications)\nimport UserNotifications\n#endif\n{}\n\nfunc readmeBlock{number:02}(_ event: \
         TidingsEvent) async throws {{\n{body}\n#sourceLocation()\n}}\n",
        block.line,
        imports.join("\n"),
    )
}

/// A line control statement: what follows is reported as line `line` of bindings-swift/README.md.
fn source_location(line: usize) -> String {
    format!("#sourceLocation(file: \"bindings-swift/README.md\", line: {line})\n")
}

// ---------------------------------------------------------------------------------------------------------------
// Generated bindings

/// Regenerates the Swift bindings from `library` and fails if the checked-in copies differ.
fn check_bindings(root: &Path, library: &Path) -> Result<(), String> {
    let fresh = crate::target_dir(root).join("swift/generated");
    if fresh.exists() {
        std::fs::remove_dir_all(&fresh).map_err(|e| format!("remove {}: {e}", fresh.display()))?;
    }
    generate(root, library, Language::Swift, &fresh)?;
    let produced = list_files(&fresh)?;
    let unexpected: Vec<&String> = produced.iter().filter(|f| !GENERATED_FILES.contains(&f.as_str())).collect();
    if !unexpected.is_empty() {
        return Err(format!(
            "uniffi generated files the Swift package does not know: {unexpected:?} (in {}); add them to \
             bindings-swift and to GENERATED_FILES in xtask/src/swift.rs",
            fresh.display()
        ));
    }
    let checked_in = root.join(GENERATED_DIR);
    let stale: Vec<&str> = GENERATED_FILES
        .iter()
        .copied()
        .filter(|name| {
            let new = std::fs::read(fresh.join(name)).ok();
            new.is_none() || new != std::fs::read(checked_in.join(name)).ok()
        })
        .collect();
    if !stale.is_empty() {
        return Err(format!(
            "the checked-in Swift bindings are STALE: {} in {GENERATED_DIR} differ from what uniffi generates from \
             the current ffi crate (fresh copies: {}). Update them from the workspace root with\n\n    cargo xtask \
             bindgen swift {GENERATED_DIR}\n\nand commit the result.",
            stale.join(", "),
            fresh.display()
        ));
    }
    eprintln!("== the Swift bindings in {GENERATED_DIR} match the ffi crate");
    Ok(())
}

fn list_files(dir: &Path) -> Result<Vec<String>, String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("read {}: {e}", dir.display()))?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| format!("read {}: {e}", dir.display()))?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    Ok(names)
}

// ---------------------------------------------------------------------------------------------------------------
// XCFramework (macOS with Xcode)

/// Builds `bindings-swift/TidingsFFIC.xcframework`: the `mobile-release` static library for iOS devices, the iOS simulator
/// (arm64 + x86_64, merged with lipo) and macOS (arm64), each with the generated header and module map. Needs
/// macOS with Xcode and rustup; run by `swift-test` on macOS (and meant for `cargo xtask swift-xcframework`).
pub(crate) fn xcframework(root: &Path) -> Result<(), String> {
    if !cfg!(target_os = "macos") {
        return Err("the XCFramework is built on macOS with Xcode (xcodebuild, lipo)".into());
    }
    let mut targets = vec![IOS_DEVICE];
    targets.extend(IOS_SIMULATOR);
    targets.extend(MACOS);
    run(Step::new("rustup targets for Apple platforms", "rustup")
        .args(["target", "add"])
        .args(targets.iter().copied()))?;
    for target in &targets {
        run(Step::new(&format!("build tidings-ffi for {target}"), "cargo")
            .args(["build", "-p", "tidings-ffi", "--profile", "mobile-release", "--locked", "--target", target])
            .env("IPHONEOS_DEPLOYMENT_TARGET", IOS_DEPLOYMENT_TARGET)
            .env("MACOSX_DEPLOYMENT_TARGET", MACOS_DEPLOYMENT_TARGET)
            .dir(root))?;
    }
    let target_dir = crate::target_dir(root);
    let lib = |target: &str| target_dir.join(target).join("mobile-release/libtidings_ffi.a");

    let work = target_dir.join("swift/xcframework");
    if work.exists() {
        std::fs::remove_dir_all(&work).map_err(|e| format!("remove {}: {e}", work.display()))?;
    }
    // Headers/TidingsFFIC/{TidingsFFIC.h, module.modulemap}: in a directory of its own, so that its module map
    // cannot collide with another XCFramework's in the app's build products.
    let headers = work.join("headers");
    let module_dir = headers.join("TidingsFFIC");
    std::fs::create_dir_all(&module_dir).map_err(|e| format!("create {}: {e}", module_dir.display()))?;
    let generated = root.join(GENERATED_DIR);
    copy(&generated.join("TidingsFFIC.h"), &module_dir.join("TidingsFFIC.h"))?;
    copy(&generated.join("TidingsFFIC.modulemap"), &module_dir.join("module.modulemap"))?;

    let simulator = work.join("ios-simulator/libtidings_ffi.a");
    std::fs::create_dir_all(work.join("ios-simulator")).map_err(|e| format!("create {}: {e}", work.display()))?;
    run(Step::new("lipo (iOS simulator arm64 + x86_64)", "lipo")
        .args(["-create"])
        .args([lib(IOS_SIMULATOR[0]), lib(IOS_SIMULATOR[1])])
        .args(["-output"])
        .args([&simulator]))?;

    let macos = work.join("macos/libtidings_ffi.a");
    std::fs::create_dir_all(work.join("macos")).map_err(|e| format!("create {}: {e}", work.display()))?;
    run(Step::new("lipo (macOS arm64 + x86_64)", "lipo")
        .args(["-create"])
        .args([lib(MACOS[0]), lib(MACOS[1])])
        .args(["-output"])
        .args([&macos]))?;

    let out = root.join("bindings-swift/TidingsFFIC.xcframework");
    if out.exists() {
        std::fs::remove_dir_all(&out).map_err(|e| format!("remove {}: {e}", out.display()))?;
    }
    let mut step = Step::new("xcodebuild -create-xcframework", "xcodebuild").args(["-create-xcframework"]);
    for library in [lib(IOS_DEVICE), simulator, macos] {
        step = step.args(["-library"]).args([library]).args(["-headers"]).args([&headers]);
    }
    run(step.args(["-output"]).args([&out]))?;
    eprintln!("== wrote {}", out.display());
    Ok(())
}

fn copy(from: &Path, to: &Path) -> Result<(), String> {
    std::fs::copy(from, to).map(|_| ()).map_err(|e| format!("copy {} to {}: {e}", from.display(), to.display()))
}

// ---------------------------------------------------------------------------------------------------------------
// Provisioning (Linux): a Debian 13 chroot with swiftlang

/// Returns the provisioned chroot, creating it if needed.
fn provision(root: &Path) -> Result<PathBuf, String> {
    let chroot = root.join(".tools/swift-root");
    let marker = chroot.join(MARKER);
    let want = format!("{SWIFT_SUITE}: {}\n", CHROOT_PACKAGES.join(" "));
    if std::fs::read_to_string(&marker).is_ok_and(|text| text == want) {
        eprintln!("\n== Swift: reusing the Debian 13 chroot at {}", chroot.display());
        return Ok(chroot);
    }
    if output_of("id", &["-u"]).is_none_or(|uid| uid.trim() != "0") {
        return Err("swift-test provisions a chroot (debootstrap, mount, chroot): run it as root".into());
    }
    if !chroot.join("usr/bin/apt-get").is_file() {
        // No base system yet (or an interrupted one): debootstrap into a scratch directory, then move it in place.
        let partial = root.join(".tools/swift-root.partial");
        remove_tree(&partial)?;
        remove_tree(&chroot)?;
        if output_of("sh", &["-c", "command -v debootstrap"]).is_none() {
            crate::apt_install(&["debootstrap"])?;
        }
        let mirror = debian_mirror()?;
        std::fs::create_dir_all(partial.parent().unwrap_or(root)).map_err(|e| format!("create .tools: {e}"))?;
        run(Step::new(&format!("debootstrap Debian {SWIFT_SUITE} from {mirror}"), "debootstrap")
            .args(["--variant=minbase", SWIFT_SUITE])
            .args([&partial])
            .args([mirror.as_str()]))?;
        std::fs::rename(&partial, &chroot).map_err(|e| format!("move {} into place: {e}", partial.display()))?;
    }
    // Name resolution for apt inside the chroot.
    if Path::new("/etc/resolv.conf").is_file() {
        copy(Path::new("/etc/resolv.conf"), &chroot.join("etc/resolv.conf"))?;
    }
    in_chroot("apt-get update (chroot)", &chroot, &[], &strings(&["apt-get", "update", "-q"]))?;
    let mut install = strings(&["apt-get", "install", "-y", "-q", "--no-install-recommends"]);
    install.extend(strings(CHROOT_PACKAGES));
    in_chroot("install swiftlang (chroot)", &chroot, &[], &install)?;
    in_chroot("swift --version (chroot)", &chroot, &[], &strings(&["swift", "--version"]))?;
    std::fs::write(&marker, want).map_err(|e| format!("write {}: {e}", marker.display()))?;
    Ok(chroot)
}

/// Runs `command` (leading `NAME=value` items set its environment) in `chroot`, inside a private mount namespace:
/// `/proc` and `/dev` are mounted and each of `binds` is bind-mounted at its own path. The mounts live only as long
/// as the namespace's processes, so nothing stays mounted on the host, whatever happens.
fn in_chroot(name: &str, chroot: &Path, binds: &[PathBuf], command: &[String]) -> Result<(), String> {
    for bind in binds {
        let inside = chroot.join(bind.strip_prefix("/").unwrap_or(bind));
        std::fs::create_dir_all(&inside).map_err(|e| format!("create {}: {e}", inside.display()))?;
    }
    // sh -c SCRIPT sh CHROOT BIND... -- COMMAND...
    const SCRIPT: &str = concat!(
        r#"set -eu; r=$1; shift; while [ "$1" != -- ]; do mount --bind "$1" "$r$1"; shift; done; shift; "#,
        r#"mount -t proc proc "$r/proc"; mount --rbind /dev "$r/dev"; exec chroot "$r" /usr/bin/env -i "#,
        r#"PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive "$@""#,
    );
    let step = Step::new(name, "unshare")
        .args(["--mount", "--propagation", "private", "--", "sh", "-c", SCRIPT, "sh"])
        .args([chroot])
        .args(binds)
        .args(["--"])
        .args(command.iter().cloned());
    run(step)
}

/// The host's Debian mirror: the first `URIs:` of `/etc/apt/sources.list.d/debian.sources` (or the first `deb`
/// line of `/etc/apt/sources.list`) that is not the security archive.
fn debian_mirror() -> Result<String, String> {
    let deb822 = std::fs::read_to_string("/etc/apt/sources.list.d/debian.sources").unwrap_or_default();
    let from_deb822 = deb822
        .lines()
        .filter_map(|line| line.trim().strip_prefix("URIs:"))
        .flat_map(str::split_whitespace)
        .find(|uri| !uri.contains("security"));
    let legacy = std::fs::read_to_string("/etc/apt/sources.list").unwrap_or_default();
    let from_legacy = legacy
        .lines()
        .filter_map(|line| line.trim().strip_prefix("deb "))
        .filter_map(|rest| rest.split_whitespace().find(|w| w.contains("://")))
        .find(|uri| !uri.contains("security"));
    from_deb822.or(from_legacy).map(str::to_string).ok_or_else(|| {
        "found no Debian mirror in /etc/apt/sources.list.d/debian.sources or /etc/apt/sources.list".to_string()
    })
}

/// Removes a directory tree, refusing while anything is mounted below it (a bind-mounted workspace would be
/// deleted with it).
fn remove_tree(dir: &Path) -> Result<(), String> {
    if !dir.exists() {
        return Ok(());
    }
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    if let Some(point) =
        mounts.lines().filter_map(|l| l.split_whitespace().nth(1)).find(|p| Path::new(p).starts_with(dir))
    {
        return Err(format!("{point} is mounted inside {}: unmount it first", dir.display()));
    }
    std::fs::remove_dir_all(dir).map_err(|e| format!("remove {}: {e}", dir.display()))
}

fn output_of(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn secs(since: Instant) -> f64 {
    since.elapsed().as_secs_f64()
}
