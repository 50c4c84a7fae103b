//! Browser SDK: wasm build (pinned wasm-bindgen-cli), npm package, wasm-bindgen-test and Playwright suites.
//! Owned by the browser bindings work; see bindings-wasm/README.md.
//!
//! Layout of what is built (everything under the target directory; the source tree is never written):
//! - `target/npm/tidings-web/` — the npm package as it is published: `bindings-wasm/js/`, its `README.md`, and
//!   `dist/` with the wasm-bindgen output (`--target web`, then `wasm-opt -Oz`); `cargo xtask package` packs it;
//! - `target/wasm-web/` — the web root the reference server serves: the demo page with the package at `pkg/`;
//! - `target/wasm-size.txt`, `target/wasm-twiggy.txt` — the size report and what dominates the module.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::util::{Step, run};
use crate::{apt_install, has, target_dir};

const WASM_TARGET: &str = "wasm32-unknown-unknown";
/// The pinned playwright-core (see `bindings-wasm/e2e/package.json`).
const PLAYWRIGHT: &str = "1.65.1";
/// Budget for the module plus its JavaScript, gzipped (issue 17): 45 KiB (sizes are in KiB, 1,024 bytes,
/// everywhere); 40 KiB is the stretch goal.
const BUDGET_GZ: usize = 45 * 1024;
/// What the size gate enforces today: the package measured after the last cuts, rounded up to the KiB, because it
/// does not fit [`BUDGET_GZ`] yet (bindings-wasm/README.md says what is left). A package that grows past it fails
/// `cargo xtask wasm-size` and `wasm-test`; every cut lowers it, down to the budget.
const CEILING_GZ: usize = 86 * 1024;
// A ceiling under the budget would hide it.
const _: () = assert!(CEILING_GZ == 0 || CEILING_GZ > BUDGET_GZ);
/// How the shipped module (and the size floor) go through wasm-opt. Both end with `--strip-target-features` (the
/// module in [`minify_names`], its last wasm-opt run): the passes before it read the features from that section.
const WASM_OPT_ARGS: &[&str] =
    &["-Oz", "--converge", "--zero-filled-memory", "--low-memory-unused", "--strip-debug", "--strip-producers"];

/// `cargo xtask wasm-test`: provisions the wasm toolchain and Chromium if needed, builds the package and runs
/// the browser suites.
pub(crate) fn test(root: &Path) -> Result<(), String> {
    let tools = provision(root, true)?;
    let web = build(root, &tools)?;
    // The floor is built here too, so the probe keeps compiling against the core it measures.
    measure_floor(root, &tools)?;
    run(type_check(root))?;
    run(Step::new("wasm-bindgen-test in headless Chromium", "cargo")
        .args(["test", "-p", "tidings-wasm", "--target", WASM_TARGET, "--locked"])
        .dir(&root.join("bindings-wasm")) // webdriver.json: headless, no sandbox (we may be root)
        .env("CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER", tools.bin.join("wasm-bindgen-test-runner"))
        .env("CHROMEDRIVER", "/usr/bin/chromedriver")
        .env("WASM_BINDGEN_TEST_TIMEOUT", "180"))?;
    crate::build_host(root)?; // the reference server and the test CA's tool
    run(Step::new("browser end-to-end tests (Playwright, headless Chromium)", "node")
        .args(["run.mjs"])
        .dir(&root.join("bindings-wasm/e2e"))
        .env("TIDINGS_SERVER", target_dir(root).join("debug/tidings-server"))
        .env("TIDINGS_WEB_ROOT", &web))?;
    // The package over wss: the server terminates TLS with a certificate from a test CA, Chromium trusts it by a
    // launch flag (bindings-wasm/e2e/tls.mjs).
    let tls_dir = target_dir(root).join("e2e-tls");
    run(Step::new("test CA and certificate for the wss test", target_dir(root).join("debug/tidings-test-pki"))
        .arg_path(&tls_dir)
        .dir(root))?;
    run(Step::new("browser package over wss (headless Chromium)", "node")
        .args(["tls.mjs"])
        .dir(&root.join("bindings-wasm/e2e"))
        .env("TIDINGS_SERVER", target_dir(root).join("debug/tidings-server"))
        .env("TIDINGS_WEB_ROOT", &web)
        .env("TIDINGS_TLS_DIR", &tls_dir))?;
    // The conformance scenarios through the npm package, against a server in demo mode with the scenarios'
    // replay buffer that also serves the package (tests/conformance/README.md).
    let server = crate::server::start_conformance_server_serving(root, "browser", Some(&web))?;
    let mut step = Step::new("browser conformance scenarios (Playwright, headless Chromium)", "node")
        .args(["conformance.mjs"])
        .dir(&root.join("bindings-wasm/e2e"))
        .env("TIDINGS_WEB_ROOT", &web);
    for (key, value) in server.env() {
        step = step.env(key, value);
    }
    let outcome = run(step);
    drop(server);
    outcome.map_err(|e| format!("{e} (server log: target/conformance-server-browser.log)"))?;
    // Every TypeScript block of the README type-checks.
    run(Step::new("README TypeScript snippets", "node")
        .args(["readme-snippets.mjs"])
        .dir(&root.join("bindings-wasm/e2e"))
        .env("TIDINGS_TARGET_DIR", target_dir(root)))?;
    // The README's Vite app installs the packed tarball and runs in dev and build (vite from npm).
    let version = crate::package::version(root)?;
    let tarball = crate::package::pack(root, &version, &target_dir(root).join("npm"))?;
    run(Step::new("Vite app with the npm tarball (dev, build, proxy; headless Chromium)", "node")
        .args(["vite.mjs"])
        .dir(&root.join("bindings-wasm/e2e"))
        .env("TIDINGS_SERVER", target_dir(root).join("debug/tidings-server"))
        .env("TIDINGS_TARBALL", tarball)
        .env("TIDINGS_TARGET_DIR", target_dir(root)))
}

/// `cargo xtask wasm-size`: builds the package and writes the size report only (no browser, no test suites).
pub(crate) fn size(root: &Path) -> Result<(), String> {
    let tools = provision(root, false)?;
    build(root, &tools).map(|_| ())
}

/// `cargo xtask wasm-floor`: the size floor of the browser module — the core engine alone (`bindings-wasm/floor`:
/// every entry point the binding calls, no decoder, no wasm-bindgen, no JavaScript), built with the module's
/// profile and wasm-opt settings. Prints and writes `target/wasm-floor.txt`.
pub(crate) fn floor(root: &Path) -> Result<(), String> {
    measure_floor(root, &provision(root, false)?)
}

fn measure_floor(root: &Path, tools: &Tools) -> Result<(), String> {
    let opt = tools.wasm_opt.as_ref().ok_or("wasm-floor needs wasm-opt (binaryen from the e2e npm packages)")?;
    run(wasm_release(root, &tools.nightly, "tidings-wasm-floor"))?;
    let target = target_dir(root);
    let module = target.join(WASM_TARGET).join("wasm-release/tidings_wasm_floor.wasm");
    let optimised = target.join("tidings_wasm_floor.opt.wasm");
    run(Step::new("wasm-opt", opt)
        .args(WASM_OPT_ARGS)
        .args(["--strip-target-features", "-o"])
        .args([&optimised, &module]))?;
    let bytes = fs::read(&optimised).map_err(|e| format!("{}: {e}", optimised.display()))?;
    let report = format!(
        "Size floor of the browser module: the core engine alone (bindings-wasm/floor; no decoder, no \
         wasm-bindgen, no JavaScript), wasm-opt as shipped\n\nraw {} B, gzipped {} B (budget for module and \
         JavaScript: {BUDGET_GZ} B)\n",
        bytes.len(),
        gzip_len(&bytes)?
    );
    print!("\n{report}");
    fs::write(target.join("wasm-floor.txt"), report).map_err(|e| format!("wasm-floor.txt: {e}"))
}

/// `cargo xtask demo`: builds the npm package and runs the reference server in demo mode serving the demo page.
/// `server_args` go to the server after `--demo --web-root <dir>` (`--no-demo-publisher`, `--bind …`).
pub(crate) fn demo(root: &Path, server_args: &[String]) -> Result<(), String> {
    let tools = provision(root, false)?;
    let web = build(root, &tools)?;
    eprintln!("\n== demo: open http://127.0.0.1:8080/ in several tabs (Ctrl-C to stop)");
    run(Step::new("reference server with the demo page", "cargo")
        .args(["run", "--release", "--locked", "-p", "tidings-server", "--", "--demo", "--web-root"])
        .args([&web])
        .args(server_args)
        .dir(root))
}

struct Tools {
    /// `.tools/wasm-bindgen/bin`.
    bin: PathBuf,
    wasm_opt: Option<PathBuf>,
    /// Node with the e2e dependencies installed (for minified sizes and the bundler check).
    node: bool,
    /// The pinned nightly the module is built with.
    nightly: String,
}

/// `tsc --noEmit` over a file using the hand-written declarations.
fn type_check(root: &Path) -> Step {
    let e2e = root.join("bindings-wasm/e2e");
    Step::new("TypeScript declarations", e2e.join("node_modules/.bin/tsc")).args(["-p", "tsconfig.json"]).dir(&e2e)
}

fn output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).stderr(Stdio::null()).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The wasm-bindgen version pinned in the root `Cargo.toml` (the CLI must match it exactly).
fn pinned_wasm_bindgen(root: &Path) -> Result<String, String> {
    let manifest = fs::read_to_string(root.join("Cargo.toml")).map_err(|e| format!("Cargo.toml: {e}"))?;
    manifest
        .lines()
        .find(|l| l.trim_start().starts_with("wasm-bindgen ="))
        .and_then(|l| l.split("\"=").nth(1))
        .and_then(|rest| rest.split('"').next())
        .map(str::to_string)
        .ok_or_else(|| "no exact `wasm-bindgen = { version = \"=…\" }` pin in Cargo.toml".into())
}

/// Installs what is missing: the wasm target, the pinned wasm-bindgen-cli, Chromium + chromedriver, Node and
/// the e2e packages (playwright-core, esbuild, typescript, binaryen from `bindings-wasm/e2e/package-lock.json`).
fn provision(root: &Path, browser: bool) -> Result<Tools, String> {
    let installed = output("rustup", &["target", "list", "--installed"]).unwrap_or_default();
    if !installed.lines().any(|l| l.trim() == WASM_TARGET) {
        run(Step::new("wasm target", "rustup").args(["target", "add", WASM_TARGET]))?;
    }

    let version = pinned_wasm_bindgen(root)?;
    let tools_root = root.join(".tools/wasm-bindgen");
    let bin = tools_root.join("bin");
    let cli = bin.join("wasm-bindgen");
    let current = output(&cli.to_string_lossy(), &["--version"]).unwrap_or_default();
    if !current.split_whitespace().any(|w| w == version) || !bin.join("wasm-bindgen-test-runner").exists() {
        let install = |locked: bool| {
            run(Step::new(&format!("wasm-bindgen-cli {version}"), "cargo")
                .args(["install", "wasm-bindgen-cli", "--version", &version, "--force", "--root"])
                .args([&tools_root])
                .args(if locked { &["--locked"][..] } else { &[][..] }))
        };
        // `--locked` reproduces the CLI's own lockfile; if the registry index no longer carries one of its
        // pinned versions (it happens: yanked or mirrored indexes), resolve afresh rather than fail.
        if let Err(e) = install(true) {
            eprintln!("xtask: {e}; retrying without --locked");
            install(false)?;
        }
    }

    let mut missing: Vec<&str> = Vec::new();
    if browser && !Path::new("/usr/bin/chromium").exists() {
        missing.push("chromium");
    }
    if browser && !Path::new("/usr/bin/chromedriver").exists() {
        missing.push("chromium-driver");
    }
    if browser && !has("node") {
        missing.extend(["nodejs", "npm"]);
    }
    if !missing.is_empty() {
        apt_install(&missing)?;
    }

    let node = has("node") && has("npm");
    if node {
        let major = output("node", &["--version"])
            .and_then(|v| v.trim().trim_start_matches('v').split('.').next().and_then(|m| m.parse::<u32>().ok()))
            .unwrap_or(0);
        if major < 20 {
            // playwright-core declares Node >= 20; Debian 12's own nodejs is 18. Try anyway, but say why if it fails.
            eprintln!("xtask: warning: Node {major} found; playwright-core {PLAYWRIGHT} supports Node 20 or newer");
        }
        let e2e = root.join("bindings-wasm/e2e");
        let ready = ["playwright-core", "esbuild", "typescript", "binaryen"]
            .iter()
            .all(|p| e2e.join("node_modules").join(p).join("package.json").exists());
        if !ready {
            run(Step::new("npm packages for the browser tests", "npm")
                .args(["ci", "--no-audit", "--no-fund"])
                .dir(&e2e))?;
        }
    } else if browser {
        return Err("node and npm are required for the browser end-to-end tests".into());
    }
    Ok(Tools { bin, wasm_opt: wasm_opt(root), node, nightly: nightly_with_sources()? })
}

/// A wasm-opt that handles wasm-bindgen's externref table: binaryen from the e2e npm packages (pinned), or a
/// system one of version 116 or newer. Debian 12's binaryen 108 mis-numbers the exported externref table after
/// `-Oz` (the module then fails to instantiate), so it is not used.
fn wasm_opt(root: &Path) -> Option<PathBuf> {
    let npm = root.join("bindings-wasm/e2e/node_modules/.bin/wasm-opt");
    if npm.exists() {
        return Some(npm);
    }
    let version = output("wasm-opt", &["--version"])?;
    let major: u32 = version.split_whitespace().nth(2)?.parse().ok()?;
    if major >= 116 {
        Some(PathBuf::from("wasm-opt"))
    } else {
        eprintln!("xtask: wasm-opt {major} is too old (externref tables); the module is not optimised");
        None
    }
}

/// `cargo build` of a workspace crate for the browser, profile `wasm-release`, on the pinned nightly
/// ([`crate::fuzz::NIGHTLY`], checked by its commit): the standard library is rebuilt with the module
/// (`-Zbuild-std`) for size (`optimize_for_size`) and with `panic = "immediate-abort"`, so no panic message,
/// location or formatting code is linked (a panic was already an abort: `panic = "abort"`). Measured on the
/// package: see bindings-wasm/README.md, Size.
fn wasm_release(root: &Path, toolchain: &str, package: &str) -> Step {
    Step::new(&format!("{package} (profile wasm-release, {toolchain}, -Zbuild-std)"), "cargo")
        .args(["build", "-p", package, "--target", WASM_TARGET, "--profile", "wasm-release", "--locked"])
        .args(["-Zbuild-std=std,panic_abort", "-Zbuild-std-features=optimize_for_size", "-Zpanic-immediate-abort"])
        .dir(root)
        .env("RUSTUP_TOOLCHAIN", toolchain)
        .env("CARGO_PROFILE_WASM_RELEASE_PANIC", "immediate-abort")
        // The profile strips symbols, which also drops the `target_features` section wasm-bindgen and wasm-opt
        // read; strip debug info only (names stay for twiggy; wasm-opt removes them from the shipped module).
        .env("CARGO_PROFILE_WASM_RELEASE_STRIP", "debuginfo")
}

/// The pinned nightly with its standard library's sources (what `-Zbuild-std` compiles).
fn nightly_with_sources() -> Result<String, String> {
    let toolchain = crate::fuzz::nightly()?;
    let sysroot = output("rustc", &[&format!("+{toolchain}"), "--print", "sysroot"]).unwrap_or_default();
    if !Path::new(sysroot.trim()).join("lib/rustlib/src/rust/library/std").is_dir() {
        run(Step::new("rust-src for -Zbuild-std", "rustup")
            .args(["component", "add", "rust-src", "--toolchain"])
            .arg_path(Path::new(&toolchain)))?;
    }
    Ok(toolchain)
}

/// Where the npm package is assembled: `target/npm/tidings-web/`.
pub(crate) fn package_dir(root: &Path) -> PathBuf {
    target_dir(root).join("npm/tidings-web")
}

/// Builds the module and the package (in [`package_dir`]), assembles the web root and writes the size report.
/// Returns the web root.
fn build(root: &Path, tools: &Tools) -> Result<PathBuf, String> {
    let target = target_dir(root);
    run(wasm_release(root, &tools.nightly, "tidings-wasm"))?;
    let module = target.join(WASM_TARGET).join("wasm-release/tidings_wasm.wasm");
    // The package: the hand-written sources, the README, and dist/ from wasm-bindgen. (A `dist/` left in the
    // source tree by an older xtask is not copied.)
    let package = package_dir(root);
    let _ = fs::remove_dir_all(&package);
    copy_dir_except(&root.join("bindings-wasm/js"), &package, &["dist"])?;
    fs::copy(root.join("bindings-wasm/README.md"), package.join("README.md"))
        .map_err(|e| format!("copy bindings-wasm/README.md: {e}"))?;
    let dist = package.join("dist");
    run(Step::new("wasm-bindgen --target web", tools.bin.join("wasm-bindgen"))
        // `TextEncoder.encodeInto` is in every browser the package supports: no fallback for its absence.
        .args(["--target", "web", "--no-typescript", "--encode-into", "always", "--out-name", "tidings_wasm"])
        .args(["--out-dir"])
        .args([&dist, &module]))?;
    let wasm = dist.join("tidings_wasm_bg.wasm");
    let unopt = target.join("tidings_wasm_bg.unopt.wasm");
    fs::copy(&wasm, &unopt).map_err(|e| format!("copy {}: {e}", wasm.display()))?;
    if let Some(opt) = &tools.wasm_opt {
        run(Step::new("wasm-opt -Oz --converge", opt)
            // Features come from the module's `target_features` section. The module's memory is its own (not
            // imported: it starts zeroed) and nothing lives below address 1024 (Rust places its stack and data
            // from 1 MiB down and up).
            .args(WASM_OPT_ARGS)
            .args(["-o"])
            .args([&wasm, &unopt]))?;
        minify_names(opt, &wasm, &dist.join("tidings_wasm.js"))?;
    }

    // The web root: the demo page, the package at pkg/.
    let web = target.join("wasm-web");
    let _ = fs::remove_dir_all(&web);
    let pkg = web.join("pkg");
    copy_dir(&root.join("bindings-wasm/demo"), &web)?;
    copy_dir(&package, &pkg)?;

    size_report(root, tools, &dist, &unopt)?;
    Ok(web)
}

/// Shortens the module's import and export names (`__wbg_addEventListener_847fd86b8c33ec43` → `x`, the import
/// module `./tidings_wasm_bg.js` → `a`) with wasm-opt and renames them to match in the wasm-bindgen glue: the
/// hashed names are incompressible and appear in both files. The glue refers to imports only as the keys of its
/// import object (`name: function(…)`) and to exports only as `wasm.name`; any other use of a renamed name is an
/// error here rather than a module that fails to instantiate.
fn minify_names(opt: &Path, wasm: &Path, glue: &Path) -> Result<(), String> {
    let out = Command::new(opt)
        .args(["--minify-imports-and-exports-and-modules", "--strip-target-features", "-o"])
        .args([wasm, wasm])
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("wasm-opt: {e}"))?;
    if !out.status.success() {
        return Err("wasm-opt --minify-imports-and-exports-and-modules failed".into());
    }
    // The mapping: `["module", "name", "new"],` lines under "imports", `["name", "new"],` under "exports".
    let mapping = String::from_utf8_lossy(&out.stdout);
    let (mut imports, mut exports) = (std::collections::HashMap::new(), std::collections::HashMap::new());
    let mut modules = std::collections::BTreeSet::new();
    let mut section = "";
    for line in mapping.lines() {
        let line = line.trim();
        if line.starts_with("\"imports\"") || line.starts_with("\"exports\"") {
            section = if line.starts_with("\"imports\"") { "imports" } else { "exports" };
            continue;
        }
        let Some(body) = line.strip_prefix('[').map(|l| l.trim_end_matches(',').trim_end_matches(']')) else {
            continue;
        };
        let parts: Vec<&str> = body.split(',').map(|p| p.trim().trim_matches('"')).collect();
        match (section, parts.as_slice()) {
            ("imports", [module, name, new]) => {
                modules.insert(module.to_string());
                imports.insert(name.to_string(), new.to_string());
            }
            ("exports", [name, new]) => {
                exports.insert(name.to_string(), new.to_string());
            }
            _ => return Err(format!("unexpected wasm-opt name mapping line: {line}")),
        }
    }
    if modules.len() != 1 || !modules.contains("./tidings_wasm_bg.js") {
        return Err(format!("unexpected import modules {modules:?}"));
    }
    let text = fs::read_to_string(glue).map_err(|e| format!("{}: {e}", glue.display()))?;
    let text = text.replacen("\"./tidings_wasm_bg.js\": import0", "\"a\": import0", 1);
    let mut out = String::with_capacity(text.len());
    let (mut renamed_imports, mut renamed_exports) = (0, 0);
    let bytes = text.as_bytes();
    let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b'$';
    let mut i = 0;
    while i < bytes.len() {
        if !ident(bytes[i]) || (i > 0 && ident(bytes[i - 1])) {
            let c = text[i..].chars().next().unwrap_or(' ');
            out.push(c);
            i += c.len_utf8();
            continue;
        }
        let end = (i..bytes.len()).find(|&j| !ident(bytes[j])).unwrap_or(bytes.len());
        let word = &text[i..end];
        let export = text[..i].ends_with("wasm.") && i >= 5 && !(i > 5 && ident(bytes[i - 6]));
        if export && let Some(new) = exports.get(word) {
            out.push_str(new);
            renamed_exports += 1;
        } else if !export && bytes.get(end) == Some(&b':') && imports.contains_key(word) {
            out.push_str(&imports[word]);
            renamed_imports += 1;
        } else if imports.contains_key(word) {
            return Err(format!("{}: `{word}` is used other than as an import key or `wasm.{word}`", glue.display()));
        } else {
            out.push_str(word);
        }
        i = end;
    }
    if renamed_imports != imports.len() {
        return Err(format!("{} of {} imports renamed in the glue", renamed_imports, imports.len()));
    }
    eprintln!(
        "xtask: minified {} import and {} export names ({renamed_exports} uses in the glue)",
        imports.len(),
        exports.len()
    );
    fs::write(glue, out).map_err(|e| format!("{}: {e}", glue.display()))
}

pub(crate) fn copy_dir(from: &Path, to: &Path) -> Result<(), String> {
    copy_dir_except(from, to, &[])
}

/// Copies `from` into `to`, leaving out the entries of `from` itself named in `except`.
pub(crate) fn copy_dir_except(from: &Path, to: &Path, except: &[&str]) -> Result<(), String> {
    fs::create_dir_all(to).map_err(|e| format!("{}: {e}", to.display()))?;
    for entry in fs::read_dir(from).map_err(|e| format!("{}: {e}", from.display()))? {
        let entry = entry.map_err(|e| e.to_string())?;
        let path = entry.path();
        let name = entry.file_name();
        if except.iter().any(|x| name == *x) {
            continue;
        }
        if path.is_dir() {
            copy_dir(&path, &to.join(name))?;
        } else {
            fs::copy(&path, to.join(name)).map_err(|e| format!("copy {}: {e}", path.display()))?;
        }
    }
    Ok(())
}

fn gzip_len(bytes: &[u8]) -> Result<usize, String> {
    let mut child = Command::new("gzip")
        .args(["-9", "-c"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("gzip: {e}"))?;
    let mut stdin = child.stdin.take().expect("piped");
    let data = bytes.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&data));
    let out = child.wait_with_output().map_err(|e| format!("gzip: {e}"))?;
    writer.join().map_err(|_| "gzip writer panicked".to_string())?.map_err(|e| format!("gzip: {e}"))?;
    Ok(out.stdout.len())
}

/// `esbuild --minify` output of a JS file (whitespace, names and syntax), when Node packages are available.
fn minify(root: &Path, file: &Path) -> Option<Vec<u8>> {
    let esbuild = root.join("bindings-wasm/e2e/node_modules/.bin/esbuild");
    let out = Command::new(esbuild).arg(file).args(["--minify", "--format=esm"]).stderr(Stdio::null()).output();
    out.ok().filter(|o| o.status.success()).map(|o| o.stdout)
}

/// Raw, minified and gzipped sizes of what a page downloads; a twiggy breakdown of the module for shrinking it.
fn size_report(root: &Path, tools: &Tools, dist: &Path, module: &Path) -> Result<(), String> {
    let js = package_dir(root);
    let files: [(&str, PathBuf); 5] = [
        ("tidings_wasm_bg.wasm", dist.join("tidings_wasm_bg.wasm")),
        ("tidings_wasm.js (wasm-bindgen glue)", dist.join("tidings_wasm.js")),
        ("tidings.js (client, tabs)", js.join("tidings.js")),
        ("storage.js", js.join("storage.js")),
        ("locate.js", js.join("locate.js")),
    ];
    let mut report = String::from(
        "Browser SDK size (what a page downloads; gzip -9; JS minified with esbuild --minify)\n\n\
         file                                        raw      min       gz\n",
    );
    let (mut raw_t, mut min_t, mut gz_t) = (0, 0, 0);
    let mut gz_files = Vec::new();
    for (name, path) in &files {
        let raw = fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let min = if path.extension().is_some_and(|e| e == "js") && tools.node { minify(root, path) } else { None };
        let min = min.unwrap_or_else(|| raw.clone());
        let gz = gzip_len(&min)?;
        report.push_str(&format!("{name:<40} {:>7} {:>8} {:>8}\n", raw.len(), min.len(), gz));
        raw_t += raw.len();
        min_t += min.len();
        gz_t += gz;
        gz_files.push((name.split(' ').next().unwrap_or(name), gz));
    }
    report.push_str(&format!("{:<40} {raw_t:>7} {min_t:>8} {gz_t:>8}\n", "total"));
    // The gate applies to the package as shipped: wasm-opt run, JS minified as a bundler would.
    let shipped = tools.wasm_opt.is_some() && tools.node;
    let verdict = gate(&gz_files, BUDGET_GZ, CEILING_GZ);
    report.push_str(&format!(
        "\n{}{}\n",
        verdict.as_ref().unwrap_or_else(|e| e),
        if shipped {
            ""
        } else {
            " (not gated: wasm-opt or Node was not available, so this is not the shipped package)"
        }
    ));

    // What dominates the module (names from the pre-wasm-opt build), grouped by crate.
    let twiggy = dirs_home().map(|h| h.join(".cargo/bin/twiggy")).filter(|p| p.exists());
    if let Some(twiggy) = twiggy
        && let Some(csv) =
            output(&twiggy.to_string_lossy(), &["top", "-n", "100000", "-f", "csv", &module.to_string_lossy()])
    {
        let mut by_crate: std::collections::BTreeMap<String, u64> = std::collections::BTreeMap::new();
        let mut items: Vec<(u64, String)> = Vec::new();
        for line in csv.lines().skip(1) {
            // Name,ShallowSize,ShallowSizePercent,RetainedSize,RetainedSizePercent — names may contain commas.
            let mut parts = line.rsplitn(5, ',').skip(3);
            let (size, name) = (parts.next(), parts.next());
            let (Some(size), Some(name)) = (size.and_then(|s| s.parse::<u64>().ok()), name) else { continue };
            let name = match name.strip_prefix('"').and_then(|n| n.strip_suffix('"')) {
                Some(quoted) => quoted.replace("\"\"", "\""),
                None => name.to_string(),
            };
            *by_crate.entry(crate_of(&name)).or_default() += size;
            items.push((size, name));
        }
        let mut groups: Vec<(u64, String)> = by_crate.into_iter().map(|(k, v)| (v, k)).collect();
        groups.sort_by(|a, b| b.cmp(a));
        items.sort_by(|a, b| b.cmp(a));
        let mut t = format!(
            "twiggy breakdown of {} (the wasm-bindgen output before wasm-opt; the name section is not shipped)\n\n\
             by crate:\n",
            module.display()
        );
        for (size, name) in &groups {
            t.push_str(&format!("{size:>9}  {name}\n"));
        }
        t.push_str("\nlargest items:\n");
        for (size, name) in items.iter().take(40) {
            t.push_str(&format!("{size:>9}  {name}\n"));
        }
        let path = target_dir(root).join("wasm-twiggy.txt");
        fs::write(&path, &t).map_err(|e| format!("{}: {e}", path.display()))?;
        report.push_str("\nwhat dominates the module (twiggy, bytes before wasm-opt, by crate):\n");
        for (size, name) in groups.iter().take(16) {
            report.push_str(&format!("{size:>9}  {name}\n"));
        }
        report.push_str(&format!("(full breakdown: {})\n", path.display()));
    }
    let path = target_dir(root).join("wasm-size.txt");
    fs::write(&path, &report).map_err(|e| format!("{}: {e}", path.display()))?;
    eprintln!("\n{report}");
    if shipped { verdict.map(|_| ()) } else { Ok(()) }
}

/// The size gate: the package's gzipped files against the budget (and, while the package does not fit it yet, the
/// ceiling the gate holds instead; 0: none). `Ok` says how it stands, `Err` why the package is refused, with every
/// file's size and the budget.
fn gate(files: &[(&str, usize)], budget: usize, ceiling: usize) -> Result<String, String> {
    let total: usize = files.iter().map(|(_, gz)| gz).sum();
    let parts: Vec<String> = files.iter().map(|(name, gz)| format!("{name} {gz} B")).collect();
    let sizes = format!("{total} B gzipped ({:.1} KiB: {})", total as f64 / 1024.0, parts.join(", "));
    let kib = |b: usize| format!("{} KiB ({b} B)", b / 1024);
    if total <= budget {
        Ok(format!("size gate: within the budget of {}: {sizes}", kib(budget)))
    } else if total <= ceiling {
        Ok(format!(
            "size gate: OVER the budget of {} by {} B, within the ceiling of {} the gate holds until the cuts \
             listed in bindings-wasm/README.md land: {sizes}",
            kib(budget),
            total - budget,
            kib(ceiling)
        ))
    } else {
        let limit = budget.max(ceiling);
        Err(format!(
            "size gate: the browser package is {sizes}, {} B over {} (budget {} gzipped, wasm + JS as shipped; \
             see bindings-wasm/README.md, Size)",
            total - limit,
            if ceiling > budget { format!("the ceiling of {}", kib(ceiling)) } else { "the budget".to_owned() },
            kib(budget),
        ))
    }
}

fn dirs_home() -> Option<PathBuf> {
    std::env::var_os("HOME").map(PathBuf::from)
}

/// The crate (or section) a twiggy item belongs to; std's own code is split by module (`core::fmt`,
/// `alloc::collections::btree`, …) since generic std code is instantiated for the engine's types.
fn crate_of(item: &str) -> String {
    if item.starts_with("custom section") || item.contains("subsection") || item.starts_with("data segment") {
        return item.to_string();
    }
    let s = item.trim_start_matches('<').trim_start_matches("impl ");
    // Path segments, without the `[hash]` disambiguators.
    let path: Vec<String> = s
        .split("::")
        .take(3)
        .map(|seg| {
            let seg = seg.split('[').next().unwrap_or(seg);
            seg.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect()
        })
        .collect();
    let head = path.first().map(String::as_str).unwrap_or("");
    match head {
        "" => "(other)".into(),
        "wasm_bindgen" | "js_sys" | "web_sys" => "wasm-bindgen/js-sys/web-sys".into(),
        "dlmalloc" | "talc" | "__rustc" | "__rdl_realloc" => "allocator".into(),
        "core" | "alloc" | "std" => {
            let depth = if path.get(1).is_some_and(|p| p == "collections") { 3 } else { 2 };
            path.iter().take(depth).cloned().collect::<Vec<_>>().join("::")
        }
        h if h.starts_with("__wbg") || h.starts_with("__wbindgen") || h.starts_with("__externref") => {
            "wasm-bindgen/js-sys/web-sys".into()
        }
        h if h.starts_with("func") || h.starts_with("code") => "(unnamed)".into(),
        h => h.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::{BUDGET_GZ, gate};

    const FILES: [(&str, usize); 2] = [("tidings_wasm_bg.wasm", 40_000), ("tidings.js", 6_080)];

    #[test]
    fn the_budget_is_45_kib_and_a_package_that_fits_it_passes() {
        assert_eq!(BUDGET_GZ, 46_080);
        let ok = gate(&FILES, BUDGET_GZ, 0).expect("46,080 B is within 45 KiB");
        assert!(ok.contains("within the budget of 45 KiB (46080 B)"), "{ok}");
    }

    #[test]
    fn a_package_over_the_budget_fails_with_its_sizes_and_the_budget() {
        let files = [("tidings_wasm_bg.wasm", 40_001), ("tidings.js", 6_080)];
        let err = gate(&files, BUDGET_GZ, 0).expect_err("one byte over fails");
        for part in ["46081 B gzipped", "tidings_wasm_bg.wasm 40001 B", "tidings.js 6080 B", "1 B over the budget"] {
            assert!(err.contains(part), "{part:?} missing from {err}");
        }
        assert!(err.contains("budget 45 KiB (46080 B)"), "{err}");
    }

    #[test]
    fn while_over_the_budget_the_ceiling_holds_and_growth_past_it_fails() {
        let files = [("tidings_wasm_bg.wasm", 60_000), ("tidings.js", 6_000)];
        let held = gate(&files, BUDGET_GZ, 66_000).expect("at the ceiling");
        assert!(held.contains("OVER the budget of 45 KiB (46080 B) by 19920 B"), "{held}");
        let err = gate(&files, BUDGET_GZ, 65_999).expect_err("one byte past the ceiling");
        assert!(err.contains("1 B over the ceiling of 64 KiB (65999 B)") && err.contains("budget 45 KiB"), "{err}");
    }
}
