//! The `tidings-server` binary itself (defect 8 of issue 12: never exercised): JSON logs (`--log-format json`) and
//! a graceful drain on SIGTERM — every connected client gets `server_shutdown` (4012) and reconnects elsewhere,
//! the process logs what it did and exits 0.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;
use tidings_core::engine::{ConnectionState, Event};
use tidings_core::native::{Client, ClientConfig, StaticToken};

const SECRET: &str = "a-test-secret-that-is-long-enough-for-hs256";
const API_KEY: &str = "binary-test-key";

/// The server's log lines, parsed as JSON (a line that is not JSON fails the test).
struct Server {
    child: Child,
    lines: mpsc::Receiver<Value>,
    seen: Vec<Value>,
    /// The server's data directory (its store), removed at the end.
    data: PathBuf,
}

impl Server {
    fn start() -> Server {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let data = std::env::temp_dir().join(format!("tidings-binary-test-{}-{nanos}", std::process::id()));
        let mut child = Command::new(tidings_tests::ServerProcess::binary())
            .args(["--bind", "127.0.0.1:0", "--log-format", "json", "--heartbeat-ms", "25000", "--data-dir"])
            .arg(&data)
            .env("TIDINGS_JWT_SECRET", SECRET)
            .env("TIDINGS_API_KEY", API_KEY)
            .env("RUST_LOG", "info")
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
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { return };
                    let value = serde_json::from_str::<Value>(&line)
                        .unwrap_or_else(|e| panic!("a log line that is not JSON ({e}): {line}"));
                    let _ = tx.send(value);
                }
            });
        }
        Server { child, lines, seen: Vec::new(), data }
    }

    /// Waits for a log line whose `message` is `message`.
    fn line(&mut self, message: &str) -> Value {
        if let Some(v) = self.seen.iter().find(|v| v["message"] == message) {
            return v.clone();
        }
        loop {
            let v = self.lines.recv_timeout(Duration::from_secs(20)).unwrap_or_else(|_| {
                panic!("no log line {message:?}; saw {:#?}", self.seen);
            });
            self.seen.push(v.clone());
            if v["message"] == message {
                return v;
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = std::fs::remove_dir_all(&self.data);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_logs_json_and_drains_on_sigterm() {
    let mut server = Server::start();
    let ready = server.line("ready");
    assert_eq!(ready["level"], "INFO", "{ready}");
    assert!(ready["timestamp"].is_string(), "{ready}");
    let ws = ready["ws"].as_str().expect("the ready line names the ws URL").to_owned();
    let http = ready["http"].as_str().unwrap().to_owned();

    let token = tidings_server::issue_token(SECRET, "alice", &[], Some(Duration::from_secs(600)));
    let mut config = ClientConfig::new(ws);
    config.engine.backoff.base = Duration::from_millis(50);
    config.engine.backoff.cap = Duration::from_millis(200);
    let (client, mut events) = Client::builder(config).token_provider(StaticToken::new(token)).connect().unwrap();
    client.wait_for_state(Duration::from_secs(20), |s| *s == ConnectionState::Connected).await.unwrap();
    let connected = server.line("client connected");
    assert_eq!(connected["user"], "alice", "{connected}");
    // A notification through the HTTP API, to be sure the server serves (reqwest's rustls takes the process's
    // provider: ring, as everywhere in the workspace).
    tidings_server::install_crypto_provider();
    let reply = reqwest::Client::new()
        .post(format!("{http}/v1/publish"))
        .bearer_auth(API_KEY)
        .json(&serde_json::json!({"users":["alice"],"id":"b1","type":"t"}))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 202);
    loop {
        match tokio::time::timeout(Duration::from_secs(20), events.next()).await.expect("b1 arrives") {
            Some(Event::Notification(n)) if n.id() == "b1" => break,
            Some(_) => {}
            None => panic!("events ended"),
        }
    }

    let pid = server.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    // The client is told the server is going away (4012, transient) and starts reconnecting.
    let state = client
        .wait_for_state(Duration::from_secs(20), |s| matches!(s, ConnectionState::Reconnecting { .. }))
        .await
        .unwrap();
    let ConnectionState::Reconnecting { reason, .. } = state else { unreachable!() };
    assert!(reason.contains("server_shutdown"), "{reason}");
    server.line("SIGTERM received");
    let shutting_down = server.line("shutting down");
    assert_eq!(shutting_down["connections"], 1, "{shutting_down}");
    server.line("shutdown complete");
    let status = tokio::task::spawn_blocking(move || {
        for _ in 0..200 {
            if let Some(status) = server.child.try_wait().unwrap() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the server did not exit within 10 s of SIGTERM");
    })
    .await
    .unwrap();
    assert!(status.success(), "exit status {status}");
    client.close().await;
}
