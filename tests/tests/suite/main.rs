//! The workspace's end-to-end tests (the reference server with the native client), as one test binary: each
//! module was a binary of its own, each linking the server and the client. `cargo test -p tidings-tests --test
//! suite -- <module>::` runs one module's tests.

mod conformance;
mod e2e;
mod push;
mod readme;
mod server_binary;
mod tls;
