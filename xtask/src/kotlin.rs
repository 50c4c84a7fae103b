//! Kotlin: provisioning (kotlinc from npm, JNA from Debian), generated bindings, JVM build and JUnit tests.
//! Owned by the Kotlin bindings work; see bindings-kotlin/README.md.

use std::path::Path;

/// `cargo xtask kotlin-test`: provisions kotlinc and JNA if needed and runs the JVM test suite (conformance
/// scenarios) against a reference server.
pub(crate) fn test(_root: &Path) -> Result<(), String> {
    Err("kotlin-test is not implemented yet".into())
}
