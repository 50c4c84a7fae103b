//! The server's integration tests, as one test binary: each module was a binary of its own, and every one of
//! them linked the whole server (the test command built about thirty such binaries). `cargo test --test server
//! -- <module>::` runs one module's tests.

mod common;

mod auth;
mod binary;
mod cluster;
mod connections;
mod deploy;
mod durability;
mod http_api;
mod inbox;
mod multiprocess;
mod nginx;
mod operations;
mod push_delivery;
mod push_senders;
mod sse;
mod streams;
mod tls;
