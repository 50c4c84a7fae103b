//! UniFFI binding generation, from the workspace at the pinned uniffi version (no separately installed CLI can
//! drift from the scaffolding compiled into the library).

use std::path::{Path, PathBuf};

use camino::Utf8PathBuf;
use uniffi::{GenerateOptions, TargetLanguage};

use crate::util::{Step, run};

/// A binding language.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Language {
    Swift,
    Kotlin,
}

impl Language {
    pub(crate) fn parse(s: &str) -> Result<Self, String> {
        match s {
            "swift" => Ok(Language::Swift),
            "kotlin" => Ok(Language::Kotlin),
            other => Err(format!("unknown language {other:?} (swift or kotlin)")),
        }
    }
}

/// Builds the host `tidings_ffi` shared library (debug, or release) and returns its path.
pub(crate) fn build_host_library(root: &Path, release: bool) -> Result<PathBuf, String> {
    if release {
        run(Step::new("build tidings-ffi", "cargo")
            .args(["build", "-p", "tidings-ffi", "--locked", "--release"])
            .dir(root))?;
    } else {
        crate::build_host(root)?;
    }
    let lib = crate::target_dir(root).join(if release { "release" } else { "debug" }).join(host_cdylib_name());
    if !lib.is_file() {
        return Err(format!("expected the library at {}", lib.display()));
    }
    Ok(lib)
}

/// `libtidings_ffi.so` / `.dylib` / `tidings_ffi.dll`.
pub(crate) fn host_cdylib_name() -> &'static str {
    if cfg!(target_os = "macos") {
        "libtidings_ffi.dylib"
    } else if cfg!(windows) {
        "tidings_ffi.dll"
    } else {
        "libtidings_ffi.so"
    }
}

/// Generates `language` bindings for `library` into `out_dir`.
pub(crate) fn generate(_root: &Path, library: &Path, language: Language, out_dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(out_dir).map_err(|e| format!("create {}: {e}", out_dir.display()))?;
    let utf8 = |p: &Path| {
        Utf8PathBuf::from_path_buf(p.to_path_buf()).map_err(|p| format!("path is not UTF-8: {}", p.display()))
    };
    eprintln!("\n== uniffi {:?} bindings for {} -> {}", language, library.display(), out_dir.display());
    uniffi::generate(GenerateOptions {
        languages: vec![match language {
            Language::Swift => TargetLanguage::Swift,
            Language::Kotlin => TargetLanguage::Kotlin,
        }],
        source: utf8(library)?,
        out_dir: utf8(out_dir)?,
        // ffi/uniffi.toml is found through cargo metadata (the crate root).
        config_override: None,
        format: false,
        crate_filter: None,
        metadata_no_deps: false,
    })
    .map_err(|e| format!("uniffi bindgen failed: {e:#}"))
}

/// `cargo xtask bindgen <swift|kotlin> <out-dir> [--release]`.
pub(crate) fn cli(root: &Path, args: &[String]) -> Result<(), String> {
    let language = Language::parse(args.first().map(String::as_str).unwrap_or(""))?;
    let out = args.get(1).ok_or("usage: cargo xtask bindgen <swift|kotlin> <out-dir> [--release]")?;
    let release = args.iter().any(|a| a == "--release");
    let library = build_host_library(root, release)?;
    generate(root, &library, language, &std::env::current_dir().map_err(|e| e.to_string())?.join(out))
}
