//! Browser SDK: wasm build (pinned wasm-bindgen-cli), npm package, wasm-bindgen-test and Playwright suites.
//! Owned by the browser bindings work; see bindings-wasm/README.md.

use std::path::Path;

/// `cargo xtask wasm-test`: provisions the wasm toolchain and Chromium if needed, builds the package and runs
/// the browser suites.
pub(crate) fn test(_root: &Path) -> Result<(), String> {
    Err("wasm-test is not implemented yet".into())
}

/// `cargo xtask demo`: builds the npm package and runs the reference server in demo mode serving the demo page.
pub(crate) fn demo(_root: &Path) -> Result<(), String> {
    Err("demo is not implemented yet".into())
}
