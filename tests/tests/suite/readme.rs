//! The README's examples that are not Rust doctests (those are compiled from `tidings_tests::RootReadmeDoctests`):
//! the first hour's client is `core/examples/hello.rs` word for word, the demo answers what the README says, and
//! the Node and Python token minting examples print tokens the server accepts — with the topic they name, and no
//! other.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::json;
use tidings_core::engine::{Continuity, Event};
use tidings_core::native::StaticToken;
use tidings_core::protocol::ErrorCode;
use tidings_tests::{TestClient, TestServer};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn readme() -> String {
    std::fs::read_to_string(root().join("README.md")).unwrap()
}

/// The fenced block that follows the line `<!-- {marker} -->`.
fn block_after(text: &str, marker: &str) -> String {
    let start = text.find(&format!("<!-- {marker} -->")).unwrap_or_else(|| panic!("README: no <!-- {marker} -->"));
    let fence = start + text[start..].find("```").expect("a block after the marker");
    let body = fence + text[fence..].find('\n').unwrap() + 1;
    let end = body + text[body..].find("\n```").expect("the block ends");
    text[body..end].to_string()
}

#[test]
fn the_first_hour_client_in_the_readme_is_the_example_that_runs() {
    let example = std::fs::read_to_string(root().join("core/examples/hello.rs")).unwrap();
    let readme = readme();
    let shown = format!("```rust,no_run\n{}\n```", example.trim_end());
    assert!(
        readme.contains(&shown),
        "README.md must show core/examples/hello.rs verbatim in a ```rust,no_run block (it is compiled both ways)"
    );
}

/// A server whose secret the minting examples get in `TIDINGS_JWT_SECRET`.
async fn server() -> TestServer {
    TestServer::start_with(|c| c.jwt_secret = "a-secret-for-the-readme-examples-0123456789".into()).await
}

/// Signs in with `token`, subscribes to `topic:news` and `topic:sports`: the token must allow news (a notification
/// published there arrives) and refuse sports.
async fn token_reads_news_and_nothing_else(server: &TestServer, token: String, who: &str) {
    let mut client = TestClient::connect_with(server, StaticToken::new(token.trim()), None, |_| {});
    client.connected().await;
    client.client.subscribe("topic:news").unwrap();
    client.client.subscribe("topic:sports").unwrap();
    client
        .until(&format!("{who}: news fresh, sports refused"), |log| {
            let news = log.iter().any(|e| {
                matches!(e, Event::Continuity { stream, continuity: Continuity::Fresh } if stream == "topic:news")
            });
            let sports = log.iter().any(|e| {
                matches!(e, Event::SubscriptionFailed { stream, code: ErrorCode::Forbidden, .. } if stream == "topic:sports")
            });
            news && sports
        })
        .await;
    server.publish(json!({"topics":["news"],"type":"hello","title":format!("news for {who}")})).await;
    server.publish(json!({"users":["ada"],"type":"hello","title":format!("ada's own, {who}")})).await;
    client
        .until(&format!("{who}: both notifications"), |log| {
            log.iter().filter(|e| matches!(e, Event::Notification(_))).count() >= 2
        })
        .await;
    let streams: Vec<String> = client.notifications().iter().map(|n| n.stream().to_string()).collect();
    assert_eq!(streams, ["topic:news", "user:ada"], "{who}");
    client.close().await;
}

fn run_snippet(program: &Path, file: &Path, secret: &str) -> String {
    let out = Command::new(program)
        .arg(file)
        .arg("ada")
        .env("TIDINGS_JWT_SECRET", secret)
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", program.display()));
    assert!(out.status.success(), "{}: {}", program.display(), String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn the_node_token_example_mints_a_token_the_server_accepts() {
    let server = server().await;
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("mint-token.mjs");
    std::fs::write(&script, block_after(&readme(), "token: node")).unwrap();
    let token = run_snippet(Path::new("node"), &script, &server.config.jwt_secret);
    token_reads_news_and_nothing_else(&server, token, "node").await;
}

#[tokio::test]
async fn the_python_token_example_mints_a_token_the_server_accepts() {
    let server = server().await;
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("mint_token.py");
    std::fs::write(&script, block_after(&readme(), "token: python")).unwrap();
    let token = run_snippet(&python_with_pyjwt(), &script, &server.config.jwt_secret);
    token_reads_news_and_nothing_else(&server, token, "python").await;
}

#[tokio::test]
async fn a_token_without_topics_reads_its_user_stream_and_no_topic() {
    let server = server().await;
    let token = tidings_server::issue_token(&server.config.jwt_secret, "ada", &[], Some(Duration::from_secs(60)));
    let mut client = TestClient::connect_with(&server, StaticToken::new(token), None, |_| {});
    client.connected().await;
    client.client.subscribe("topic:news").unwrap();
    client
        .until("topic:news refused", |log| {
            log.iter().any(|e| matches!(e, Event::SubscriptionFailed { code: ErrorCode::Forbidden, .. }))
        })
        .await;
    server.publish(json!({"users":["ada"],"type":"hello","title":"still reachable"})).await;
    client.until("ada's own stream", |log| log.iter().any(|e| matches!(e, Event::Notification(_)))).await;
    client.close().await;
}

/// The pinned PyJWT (the README's `pip install PyJWT`).
const PYJWT: &str = "PyJWT==2.10.1";

/// A Python with PyJWT: `TIDINGS_PYJWT_PYTHON`, or a virtual environment in the target directory made here
/// (python3 with venv from Debian, PyJWT from PyPI; `cargo xtask rust-tests` provisions python3-venv).
fn python_with_pyjwt() -> PathBuf {
    let works = |p: &Path| Command::new(p).args(["-c", "import jwt"]).status().is_ok_and(|s| s.success());
    if let Some(p) = std::env::var_os("TIDINGS_PYJWT_PYTHON").map(PathBuf::from) {
        assert!(works(&p), "TIDINGS_PYJWT_PYTHON={} cannot import jwt", p.display());
        return p;
    }
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root().join("target"));
    let venv = target.join("pyjwt-venv");
    let python = venv.join("bin/python");
    if !works(&python) {
        let status = Command::new("python3").args(["-m", "venv"]).arg(&venv).status().expect("python3 -m venv");
        assert!(status.success(), "python3 -m venv {} failed (install python3-venv)", venv.display());
        let status = Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check", PYJWT])
            .status()
            .expect("pip");
        assert!(status.success(), "pip install {PYJWT} failed");
    }
    assert!(works(&python), "{} cannot import jwt after installing {PYJWT}", python.display());
    python
}
