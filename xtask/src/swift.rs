//! Swift: provisioning (Debian 13 chroot with swiftlang), generated bindings, `swift build` / `swift test`.
//! Owned by the Swift bindings work; see bindings-swift/README.md.

use std::path::Path;

/// `cargo xtask swift-test`: provisions Swift if needed and runs the XCTest suite (conformance scenarios)
/// against a reference server.
pub(crate) fn test(_root: &Path) -> Result<(), String> {
    Err("swift-test is not implemented yet".into())
}
