//! Kotlin: provisioning (kotlinc from npm, JNA from Debian), generated bindings, JVM build and tests. See
//! bindings-kotlin/README.md.
//!
//! `cargo xtask kotlin-test`:
//! 1. provision, reusing what is there: Java (Debian `openjdk-17-jdk-headless` if `java` is missing), the npm
//!    package `kotlin-compiler` (kotlinc plus the kotlinx-coroutines and kotlin-test jars it ships) into
//!    `.tools/kotlin/`, and Debian's `libjna-java`;
//! 2. build the host `tidings_ffi` library and generate the Kotlin bindings into `target/kotlin/generated`;
//! 3. compile generated + wrapper (`src/main/kotlin`, the code shared with Android) + tests in one kotlinc run,
//!    skipped when nothing changed (the Android-only `src/android/kotlin` needs the Android SDK and is not part of
//!    the JVM build);
//! 4. compile every ```kotlin block of bindings-kotlin/README.md against those classes, with the Android-only
//!    `src/android/kotlin` and compile-only stubs of the Android classes (`readme_snippets`);
//! 5. start a reference server and run every `*Test` class with JNA pointed at `target/debug`, through the suite's
//!    own small runner (`dev.tidings.testing.JvmTestMain`: the npm package ships kotlin-test but no JUnit).

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use crate::apt_install;
use crate::bindgen::{Language, build_host_library};
use crate::util::{Step, run};

/// The npm package `kotlin-compiler` at this version provides kotlinc, the Kotlin stdlib, kotlin-test and
/// kotlinx-coroutines-core.
const KOTLIN_VERSION: &str = "2.4.20";
/// JNA for the JVM, with its native dispatch library (Debian package `libjna-java`).
const JNA_JAR: &str = "/usr/share/java/jna.jar";
/// Bytecode level of the JVM build (the Android build uses the same).
const JVM_TARGET: &str = "17";
/// The test runner in `src/test/kotlin` (prints per-test results and an `N passed, N failed` line; exits non-zero
/// on any failure).
const TEST_MAIN: &str = "dev.tidings.testing.JvmTestMain";

/// What the JVM build needs, once provisioned.
struct Toolchain {
    kotlinc: PathBuf,
    /// `kotlin-compiler/lib`: stdlib, kotlin-test, kotlinx-coroutines.
    kotlin_lib: PathBuf,
}

impl Toolchain {
    /// Jars the sources compile against (kotlinc adds the stdlib itself).
    fn compile_classpath(&self) -> Vec<PathBuf> {
        vec![
            self.kotlin_lib.join("kotlinx-coroutines-core-jvm.jar"),
            self.kotlin_lib.join("kotlin-test.jar"),
            PathBuf::from(JNA_JAR),
        ]
    }

    fn runtime_classpath(&self, classes: &Path) -> Vec<PathBuf> {
        let mut cp = vec![classes.to_path_buf(), self.kotlin_lib.join("kotlin-stdlib.jar")];
        cp.extend(self.compile_classpath());
        cp
    }
}

/// `cargo xtask kotlin-test`: provisions kotlinc and JNA if needed and runs the JVM test suite (wrapper tests and
/// the conformance scenarios) against a reference server.
pub(crate) fn test(root: &Path) -> Result<(), String> {
    let started = Instant::now();
    let mut timings: Vec<(&str, f64)> = Vec::new();
    let result = test_timed(root, &mut timings);
    eprintln!("\n== kotlin-test {} in {:.1} s", if result.is_ok() { "passed" } else { "FAILED" }, secs(started));
    for (name, s) in &timings {
        eprintln!("   {name:<28} {s:>6.1} s");
    }
    result
}

fn test_timed(root: &Path, timings: &mut Vec<(&'static str, f64)>) -> Result<(), String> {
    let module = root.join("bindings-kotlin");
    let build = crate::target_dir(root).join("kotlin");

    let t = Instant::now();
    let tools = provision(root)?;
    timings.push(("provisioning", secs(t)));

    let t = Instant::now();
    let library = build_host_library(root, false)?;
    let generated = build.join("generated");
    generate_bindings(root, &library, &generated)?;
    timings.push(("host library + bindings", secs(t)));

    let t = Instant::now();
    let classes = build.join("classes");
    let sources = [generated.clone(), module.join("src/main/kotlin"), module.join("src/test/kotlin")];
    compile(&tools, &sources, &classes)?;
    timings.push(("kotlinc", secs(t)));

    let t = Instant::now();
    readme_snippets(root, &tools, &classes)?;
    timings.push(("README blocks (kotlinc)", secs(t)));

    let t = Instant::now();
    let server = crate::server::start_conformance_server(root, "kotlin")?;
    timings.push(("reference server", secs(t)));

    let t = Instant::now();
    let test_classes = find_test_classes(&classes)?;
    let library_dir = library.parent().ok_or("the host library has no directory")?;
    let mut step = Step::new("kotlin JVM tests", "java")
        .args([
            format!("-Djna.library.path={}", library_dir.display()),
            format!("-Dtidings.scenarios={}", root.join("tests/conformance/scenarios.json").display()),
            "-cp".to_string(),
            join_classpath(&tools.runtime_classpath(&classes)),
            TEST_MAIN.to_string(),
        ])
        .args(test_classes)
        .dir(&module);
    for (key, value) in server.env() {
        step = step.env(key, value);
    }
    let outcome = run(step);
    timings.push(("tests", secs(t)));
    drop(server);
    outcome.map_err(|e| format!("{e}: see the failures above (server log: target/conformance-server-kotlin.log)"))
}

// ---------------------------------------------------------------------------------------------------------------
// Provisioning

fn provision(root: &Path) -> Result<Toolchain, String> {
    if !succeeds("java", &["-version"]) {
        eprintln!("== java not found: installing Debian's openjdk-17-jdk-headless");
        apt_install(&["openjdk-17-jdk-headless"])?;
    }

    let prefix = root.join(".tools/kotlin");
    let package = prefix.join("node_modules/kotlin-compiler");
    let installed = std::fs::read_to_string(package.join("package.json")).unwrap_or_default();
    if !installed.contains(&format!("\"version\": \"{KOTLIN_VERSION}\"")) {
        if !succeeds("npm", &["--version"]) {
            eprintln!("== npm not found: installing Debian's npm");
            apt_install(&["npm"])?;
        }
        std::fs::create_dir_all(&prefix).map_err(|e| format!("create {}: {e}", prefix.display()))?;
        run(Step::new("install kotlinc (npm kotlin-compiler)", "npm").args([
            "install".to_string(),
            "--prefix".to_string(),
            prefix.display().to_string(),
            "--no-audit".to_string(),
            "--no-fund".to_string(),
            format!("kotlin-compiler@{KOTLIN_VERSION}"),
        ]))?;
    }
    let tools = Toolchain { kotlinc: package.join("bin/kotlinc"), kotlin_lib: package.join("lib") };
    let shipped = ["kotlin-stdlib.jar", "kotlin-test.jar", "kotlinx-coroutines-core-jvm.jar"];
    for file in shipped.iter().map(|jar| tools.kotlin_lib.join(jar)).chain([tools.kotlinc.clone()]) {
        if !file.is_file() {
            return Err(format!("{} is missing: delete {} and rerun", file.display(), prefix.display()));
        }
    }

    if !Path::new(JNA_JAR).is_file() {
        apt_install(&["libjna-java"])?;
        if !Path::new(JNA_JAR).is_file() {
            return Err(format!("{JNA_JAR} is missing after installing libjna-java"));
        }
    }
    eprintln!("== kotlin toolchain: kotlinc {KOTLIN_VERSION} ({}), JNA from Debian", package.display());
    Ok(tools)
}

fn succeeds(program: &str, args: &[&str]) -> bool {
    Command::new(program).args(args).output().is_ok_and(|o| o.status.success())
}

// ---------------------------------------------------------------------------------------------------------------
// Bindings

/// Generates the Kotlin bindings for `library` into `out` (emptied first, so no stale file survives), with the
/// same command the Gradle build runs (`cargo xtask bindgen kotlin`), so the suite tests what users build.
fn generate_bindings(root: &Path, library: &Path, out: &Path) -> Result<(), String> {
    if out.exists() {
        std::fs::remove_dir_all(out).map_err(|e| format!("remove {}: {e}", out.display()))?;
    }
    crate::bindgen::generate(root, library, Language::Kotlin, out)
}

// ---------------------------------------------------------------------------------------------------------------
// Compile and run

/// One kotlinc run over every source root; skipped when sources, classpath and compiler are unchanged.
fn compile(tools: &Toolchain, sources: &[PathBuf], classes: &Path) -> Result<(), String> {
    let classpath = join_classpath(&tools.compile_classpath());
    let mut files = Vec::new();
    for dir in sources {
        collect_kotlin_files(dir, &mut files)?;
    }
    files.sort();
    let mut hasher = DefaultHasher::new();
    (KOTLIN_VERSION, JVM_TARGET, &classpath).hash(&mut hasher);
    for file in &files {
        file.hash(&mut hasher);
        std::fs::read(file).map_err(|e| format!("read {}: {e}", file.display()))?.hash(&mut hasher);
    }
    let stamp = format!("{:016x}\n", hasher.finish());
    let stamp_file = classes.with_extension("stamp");
    if classes.is_dir() && std::fs::read_to_string(&stamp_file).is_ok_and(|s| s == stamp) {
        eprintln!("\n== kotlinc: {} sources unchanged, reusing {}", files.len(), classes.display());
        return Ok(());
    }
    if classes.exists() {
        std::fs::remove_dir_all(classes).map_err(|e| format!("remove {}: {e}", classes.display()))?;
    }
    let _ = std::fs::remove_file(&stamp_file);
    let mut args: Vec<String> = vec![
        "-jvm-target".into(),
        JVM_TARGET.into(),
        "-no-reflect".into(),
        "-d".into(),
        classes.display().to_string(),
        "-cp".into(),
        classpath,
    ];
    args.extend(sources.iter().map(|d| d.display().to_string()));
    eprintln!("== kotlinc: compiling {} sources (generated bindings, wrapper, tests)", files.len());
    run(Step::new("kotlinc", tools.kotlinc.clone()).args(args))?;
    std::fs::write(&stamp_file, stamp).map_err(|e| format!("write {}: {e}", stamp_file.display()))
}

/// Compile-only stubs of Android, AndroidX, Compose and Firebase classes, and the app-side names the README's blocks
/// use (see its README.md), relative to `bindings-kotlin`.
const README_SUPPORT: &str = "src/test/readme-stubs";
/// Imports every README block gets: the library, what an Android app using it imports (the stubs), coroutines.
const README_IMPORTS: &[&str] = &[
    "dev.tidings.*",
    "dev.tidings.android.TidingsLifecycle",
    "android.app.Application",
    "androidx.compose.material.icons.Icons",
    "androidx.compose.material.icons.filled.Notifications",
    "androidx.compose.material3.Badge",
    "androidx.compose.material3.BadgedBox",
    "androidx.compose.material3.Icon",
    "androidx.compose.material3.Text",
    "androidx.compose.runtime.collectAsState",
    "androidx.compose.runtime.getValue",
    "com.google.firebase.messaging.FirebaseMessagingService",
    "com.google.firebase.messaging.RemoteMessage",
    "kotlinx.coroutines.launch",
    "kotlinx.coroutines.runBlocking",
    "java.io.File",
    "java.time.ZoneId",
];

/// Compiles every ```kotlin block of bindings-kotlin/README.md with kotlinc against the compiled library
/// (`classes`: the wrapper and the generated bindings), together with the Android-only `src/android/kotlin` and
/// the support files of `README_SUPPORT`. Each block is a file of its own in `target/kotlin/readme-snippets`: a
/// block declaring a class stays top-level (so the next block can use it, as in an app), a block starting with
/// `is ` becomes a branch of a `when` over a `TidingsEvent`, any other block the body of a `suspend fun` that is
/// never called. Blocks marked ```` ```kotlin build-script ```` are Gradle build scripts and are not compiled
/// here (no Gradle); the README says so next to them.
fn readme_snippets(root: &Path, tools: &Toolchain, classes: &Path) -> Result<(), String> {
    let module = root.join("bindings-kotlin");
    let readme_path = module.join("README.md");
    let readme = std::fs::read_to_string(&readme_path).map_err(|e| format!("read {}: {e}", readme_path.display()))?;
    let blocks = crate::util::fenced_blocks(&readme, "kotlin")?;
    let build = crate::target_dir(root).join("kotlin");
    let snippets = build.join("readme-snippets");
    let out = build.join("readme-classes");
    for dir in [&snippets, &out] {
        if dir.exists() {
            std::fs::remove_dir_all(dir).map_err(|e| format!("remove {}: {e}", dir.display()))?;
        }
    }
    std::fs::create_dir_all(&snippets).map_err(|e| format!("create {}: {e}", snippets.display()))?;
    let (mut compiled, mut scripts) = (0, 0);
    for (i, block) in blocks.iter().enumerate() {
        match block.info.as_str() {
            "" => {}
            "build-script" => {
                scripts += 1;
                continue;
            }
            other => {
                return Err(format!(
                    "bindings-kotlin/README.md line {}: unknown block kind ```kotlin {other} (known: build-script)",
                    block.line
                ));
            }
        }
        let file = snippets.join(format!("ReadmeBlock{:02}.kt", i + 1));
        std::fs::write(&file, kotlin_snippet(i + 1, block)).map_err(|e| format!("write {}: {e}", file.display()))?;
        compiled += 1;
    }
    if compiled == 0 {
        return Err("bindings-kotlin/README.md: no ```kotlin block to compile".into());
    }
    let mut classpath = tools.compile_classpath();
    classpath.push(classes.to_path_buf());
    let args: Vec<String> = vec![
        "-jvm-target".into(),
        JVM_TARGET.into(),
        "-no-reflect".into(),
        "-nowarn".into(),
        "-d".into(),
        out.display().to_string(),
        "-cp".into(),
        join_classpath(&classpath),
        snippets.display().to_string(),
        module.join(README_SUPPORT).display().to_string(),
        module.join("src/android/kotlin").display().to_string(),
    ];
    eprintln!(
        "\n== README: compiling {compiled} ```kotlin blocks of bindings-kotlin/README.md (in {}) with src/android/kotlin \
         and the compile-only stubs of {README_SUPPORT}",
        snippets.display()
    );
    run(Step::new("kotlinc (README blocks)", tools.kotlinc.clone()).args(args)).map_err(|e| {
        format!(
            "{e}: a README block does not compile (ReadmeBlockNN.kt is the NNth ```kotlin block of \
             bindings-kotlin/README.md; its first line gives the README line)"
        )
    })?;
    eprintln!(
        "== README: {compiled} Kotlin blocks compile against the library; {scripts} build-script blocks (Gradle) \
         are not compiled here"
    );
    Ok(())
}

/// One README block as a Kotlin file (see `readme_snippets`).
fn kotlin_snippet(number: usize, block: &crate::util::FencedBlock) -> String {
    let first = block.body.lines().map(str::trim_start).find(|l| !l.is_empty() && !l.starts_with("//")).unwrap_or("");
    let body = block.body.trim_end();
    let code = if ["class ", "object ", "fun ", "abstract class ", "open class "].iter().any(|k| first.starts_with(k)) {
        body.to_string()
    } else if first.starts_with("is ") {
        format!(
            "suspend fun readmeBlock{number:02}(event: TidingsEvent) {{\n    when (event) {{\n{body}\n    else -> {{}}\n    }}\n}}"
        )
    } else {
        format!("suspend fun readmeBlock{number:02}() {{\n{body}\n}}")
    };
    let imports: String = README_IMPORTS.iter().map(|i| format!("import {i}\n")).collect();
    format!(
        "// Generated by `cargo xtask kotlin-test` from bindings-kotlin/README.md, block {number} (line {}). Do not \
         edit: edit the README.\npackage dev.tidings.readme\n\n{imports}\n{code}\n",
        block.line
    )
}

fn collect_kotlin_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("read {}: {e}", dir.display()))?;
    for entry in entries {
        let path = entry.map_err(|e| e.to_string())?.path();
        if path.is_dir() {
            collect_kotlin_files(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "kt") {
            out.push(path);
        }
    }
    Ok(())
}

/// Fully qualified names of the compiled top-level classes named `*Test`.
fn find_test_classes(classes: &Path) -> Result<Vec<String>, String> {
    fn walk(dir: &Path, base: &Path, out: &mut Vec<String>) -> Result<(), String> {
        for entry in std::fs::read_dir(dir).map_err(|e| format!("read {}: {e}", dir.display()))? {
            let path = entry.map_err(|e| e.to_string())?.path();
            if path.is_dir() {
                walk(&path, base, out)?;
                continue;
            }
            let rel = path.strip_prefix(base).map_err(|e| e.to_string())?.to_string_lossy().replace('\\', "/");
            // `FooTest.class`, not a nested class (`Foo$BarTest`) nor the `Test` annotation itself.
            let class =
                rel.strip_suffix("Test.class").filter(|c| !c.contains('$') && !c.is_empty() && !c.ends_with('/'));
            if let Some(class) = class {
                out.push(format!("{class}Test").replace('/', "."));
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(classes, classes, &mut out)?;
    out.sort();
    if out.is_empty() {
        return Err(format!("no test classes (*Test.class) in {}", classes.display()));
    }
    Ok(out)
}

fn join_classpath(paths: &[PathBuf]) -> String {
    let sep = if cfg!(windows) { ";" } else { ":" };
    paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(sep)
}

fn secs(since: Instant) -> f64 {
    since.elapsed().as_secs_f64()
}
