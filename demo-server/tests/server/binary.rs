//! The `tidings-server` binary itself: logs without colour codes when they do not go to a terminal, JSON logs whose
//! request id follows a publish from the HTTP request into its delivery, and a graceful drain on SIGTERM (clients
//! told `server_shutdown`, everything acknowledged kept: a restart resumes without a gap, exit status 0).

use crate::common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::{Client, PATIENCE, http};
use serde_json::{Value, json};
use tidings_server::issue_token;

const SECRET: &str = "a-binary-test-secret-that-is-long-enough";
const KEY: &str = "binary-test-api-key";

/// A server process whose output lines are collected.
struct Server {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    port: u16,
}

impl Server {
    fn start(data_dir: &Path, extra: &[&str], rust_log: &str) -> Server {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut child = Command::new(env!("CARGO_BIN_EXE_tidings-server"))
            .args(["--bind", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(data_dir)
            .args(extra)
            .env("TIDINGS_JWT_SECRET", SECRET)
            .env("TIDINGS_API_KEY", KEY)
            .env("RUST_LOG", rust_log)
            .env_remove("NO_COLOR")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, lines) = mpsc::channel();
        for out in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            });
        }
        Server { child, lines, seen: Vec::new(), port }
    }

    /// Waits for a line that `matches`.
    fn line(&mut self, what: &str, matches: impl Fn(&str) -> bool) -> String {
        if let Some(line) = self.seen.iter().find(|l| matches(l)) {
            return line.clone();
        }
        loop {
            let line = self
                .lines
                .recv_timeout(PATIENCE)
                .unwrap_or_else(|_| panic!("no log line {what}; saw:\n{}", self.seen.join("\n")));
            self.seen.push(line.clone());
            if matches(&line) {
                return line;
            }
        }
    }

    fn http(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn ws(&self) -> String {
        format!("ws://127.0.0.1:{}/v1/ws", self.port)
    }

    fn terminate(&self) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    }

    fn wait(&mut self) -> std::process::ExitStatus {
        for _ in 0..200 {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the server did not exit within 10 s");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn connect(server: &Server, user: &str) -> Client {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = server.ws().into_client_request().unwrap();
    request.headers_mut().insert("Sec-WebSocket-Protocol", "tidings.v1".parse().unwrap());
    let (ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let mut client = Client::from_stream(ws);
    client.auth(&issue_token(SECRET, user, &[], Some(Duration::from_secs(600))), "d-1").await;
    assert_eq!(client.recv().await["op"], "welcome");
    client
}

/// Whether `value` holds `key: expected` anywhere (JSON logs put span fields in nested objects).
fn holds(value: &Value, key: &str, expected: &str) -> bool {
    match value {
        Value::Object(map) => map.iter().any(|(k, v)| (k == key && v == expected) || holds(v, key, expected)),
        Value::Array(items) => items.iter().any(|v| holds(v, key, expected)),
        _ => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_logs_written_to_a_pipe_have_no_colour_codes() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &["--log-format", "text"], "info");
    server.line("ready", |l| l.contains("ready"));
    let mut client = connect(&server, "alice").await;
    server.line("client connected", |l| l.contains("client connected"));
    client.send(json!({"op":"nonsense"})).await;
    let _ = client.closed().await;
    server.line("client disconnected", |l| l.contains("client disconnected"));
    server.terminate();
    server.line("shutdown complete", |l| l.contains("shutdown complete"));
    assert!(server.wait().success());
    assert!(server.seen.len() >= 5);
    for line in &server.seen {
        assert!(!line.contains('\u{1b}'), "an ANSI escape in a piped log: {line:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_the_request_id_into_the_delivery_and_sigterm_drains() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &["--log-format", "json"], "info,tidings_server=debug");
    let ready = server.line("ready", |l| l.contains("\"ready\""));
    let ready: Value = serde_json::from_str(&ready).unwrap();
    assert_eq!(ready["level"], "INFO");
    let mut alice = connect(&server, "alice").await;
    let subscribed = alice.subscribe_one(1, json!({"stream":"user:alice"})).await;
    let epoch = subscribed["epoch"].as_str().unwrap().to_owned();

    let response = http()
        .post(format!("{}/v1/publish", server.http()))
        .bearer_auth(KEY)
        .header("x-request-id", "order-4711")
        .json(&json!({"users":["alice"],"type":"t","id":"n-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    assert_eq!(response.headers()["x-request-id"], "order-4711");
    assert_eq!(alice.recv_skipping_heartbeats().await["id"], "n-1");
    // The publish's fan-out runs after the commit, outside the HTTP request, and still logs under its id.
    let fanned_out = server.line("fanned out", |l| l.contains("fanned out") && l.contains("order-4711"));
    let fanned_out: Value = serde_json::from_str(&fanned_out).unwrap();
    assert!(holds(&fanned_out, "request_id", "order-4711"), "{fanned_out}");
    assert_eq!(fanned_out["stream"], "user:alice");

    server.terminate();
    let closed = alice.closed().await;
    assert_eq!(closed.code, Some(4012));
    assert_eq!(closed.error_code(), "server_shutdown");
    server.line("SIGTERM received", |l| l.contains("SIGTERM received"));
    server.line("shutdown complete", |l| l.contains("shutdown complete"));
    let status = tokio::task::spawn_blocking(move || {
        let status = server.wait();
        (status, server)
    })
    .await
    .unwrap();
    assert!(status.0.success(), "exit status {}", status.0);
    for line in &status.1.seen {
        serde_json::from_str::<Value>(line).unwrap_or_else(|e| panic!("a log line that is not JSON ({e}): {line}"));
    }
    drop(status);

    // Everything acknowledged was kept: the same data directory resumes without a gap.
    let mut again = Server::start(dir.path(), &["--log-format", "json"], "warn");
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while http().get(format!("{}/readyz", again.http())).send().await.map(|r| r.status() != 200).unwrap_or(true) {
        assert!(tokio::time::Instant::now() < deadline, "the restarted server did not get ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut back = connect(&again, "alice").await;
    let resumed = back.subscribe_one(1, json!({"stream":"user:alice","epoch":epoch,"offset":0})).await;
    assert_eq!(resumed["continuity"], "resumed", "{resumed}");
    assert_eq!(back.recv_skipping_heartbeats().await["id"], "n-1");
    again.terminate();
    assert!(tokio::task::spawn_blocking(move || again.wait()).await.unwrap().success());
}
