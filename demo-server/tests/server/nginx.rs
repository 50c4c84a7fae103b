//! Behind a terminating proxy: the documented nginx configuration (`deploy/nginx/tidings.conf`), rendered with test
//! addresses and a certificate from a test CA, run by Debian's nginx on loopback (`cargo xtask test` installs it;
//! `TIDINGS_NGINX` names another binary). The protocol runs over `wss` through it, heartbeats pass unbuffered,
//! the request id passes both ways, and the server counts failed authentications against the client address nginx
//! forwards — not against nginx, and not against an `X-Forwarded-For` the client forged.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::json;
use tidings_push_mocks::TestPki;
use tidings_server::limits::{IpNet, Rate};
use tidings_server::push::http::TlsRoots;
use tidings_server::{RunningServer, ServerConfig, TEST_API_KEY};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

/// The address nginx connects to the server from (`proxy_bind`), so that the server can trust it alone.
const NGINX_SOURCE: &str = "127.0.0.2";

fn nginx_binary() -> PathBuf {
    let path = std::env::var_os("TIDINGS_NGINX").map(PathBuf::from).unwrap_or_else(|| "/usr/sbin/nginx".into());
    assert!(
        path.is_file(),
        "{} is missing: install Debian's nginx (cargo xtask test does) or set TIDINGS_NGINX",
        path.display()
    );
    path
}

struct Nginx {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Nginx {
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }
}

/// `deploy/nginx/tidings.conf` with the test's addresses and certificate.
fn render(upstream: u16, port: u16, dir: &Path) -> String {
    let example = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/nginx/tidings.conf"))
        .expect("deploy/nginx/tidings.conf");
    let replacements = [
        ("server 127.0.0.1:8080;", format!("server 127.0.0.1:{upstream};")),
        ("listen 443 ssl;", format!("listen 127.0.0.1:{port} ssl;")),
        ("listen [::]:443 ssl;", String::new()),
        ("/etc/tidings/tls/fullchain.pem", dir.join("cert.pem").display().to_string()),
        ("/etc/tidings/tls/privkey.pem", dir.join("key.pem").display().to_string()),
        ("proxy_http_version 1.1;", format!("proxy_http_version 1.1;\n    proxy_bind {NGINX_SOURCE};")),
    ];
    let mut text = example.clone();
    for (from, to) in replacements {
        assert!(text.contains(from), "the example no longer has {from:?}");
        text = text.replace(from, &to);
    }
    text
}

fn start_nginx(upstream: u16, pki: &TestPki) -> Nginx {
    let dir = tempfile::tempdir().unwrap();
    let cert = pki.server_cert("localhost");
    std::fs::write(dir.path().join("cert.pem"), &cert.cert_pem).unwrap();
    std::fs::write(dir.path().join("key.pem"), &cert.key_pem).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    std::fs::write(dir.path().join("tidings.conf"), render(upstream, port, dir.path())).unwrap();
    let root = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.trim_ascii() == b"0");
    let d = dir.path().display();
    let main = format!(
        "{user}daemon off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
         events {{ worker_connections 256; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  \
         fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  \
         include {d}/tidings.conf;\n}}\n",
        // Workers run as root only in this throwaway test (the directory is the test's own).
        user = if root { "user root;\n" } else { "" },
    );
    let conf = dir.path().join("nginx.conf");
    std::fs::write(&conf, main).unwrap();
    let nginx = nginx_binary();
    let check = Command::new(&nginx)
        .arg("-t")
        .arg("-p")
        .arg(dir.path())
        .arg("-e")
        .arg(dir.path().join("error.log"))
        .arg("-c")
        .arg(&conf)
        .output()
        .unwrap();
    assert!(check.status.success(), "nginx -t: {}", String::from_utf8_lossy(&check.stderr));
    let child = Command::new(&nginx)
        .arg("-p")
        .arg(dir.path())
        .arg("-e")
        .arg(dir.path().join("error.log"))
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Nginx { child, dir, port }
}

fn client_tls(pki: &TestPki) -> rustls::ClientConfig {
    tidings_server::install_crypto_provider();
    TlsRoots::with_pem(pki.ca_pem.as_bytes()).unwrap().client_config(&[b"http/1.1"])
}

/// A WebSocket through nginx (`wss://localhost:PORT/v1/ws`), optionally with a forged `X-Forwarded-For`.
async fn connect(nginx: &Nginx, pki: &TestPki, forged: Option<&str>) -> Result<Client, u16> {
    let mut request = format!("wss://localhost:{}/v1/ws", nginx.port).into_client_request().unwrap();
    request.headers_mut().insert("Sec-WebSocket-Protocol", HeaderValue::from_static("tidings.v1"));
    if let Some(forged) = forged {
        request.headers_mut().insert("X-Forwarded-For", HeaderValue::from_str(forged).unwrap());
    }
    let connector = tokio_tungstenite::Connector::Rustls(Arc::new(client_tls(pki)));
    match tokio_tungstenite::connect_async_tls_with_config(request, None, true, Some(connector)).await {
        Ok((ws, _)) => Ok(Client::from_stream(ws)),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => Err(response.status().as_u16()),
        Err(e) => panic!("connect through nginx: {e}"),
    }
}

async fn wait_for_nginx(nginx: &Nginx, https: &reqwest::Client) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let url = format!("https://localhost:{}/healthz", nginx.port);
        if https.get(&url).send().await.is_ok_and(|r| r.status() == 200) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "nginx did not come up: {}", nginx.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn server() -> RunningServer {
    let mut config = ServerConfig::for_tests();
    config.heartbeat_interval = Duration::from_millis(300);
    config.trusted_proxies = vec![IpNet::parse(NGINX_SOURCE).unwrap()];
    config.auth_failure_limit = Rate { burst: 2, per_minute: 1 };
    start(config).await
}

#[tokio::test]
async fn the_documented_nginx_configuration_proxies_the_protocol_and_forwards_the_client_address() {
    let server = server().await;
    let pki = TestPki::new("Tidings nginx test CA");
    let nginx = start_nginx(server.local_addr().port(), &pki);
    let https = reqwest::Client::builder().tls_backend_preconfigured(client_tls(&pki)).build().unwrap();
    wait_for_nginx(&nginx, &https).await;

    // The protocol over wss through nginx; the API over https; the request id both ways.
    let mut alice = connect(&nginx, &pki, None).await.expect("upgrade through nginx");
    alice.auth(&token("alice", &[]), "d-1").await;
    assert_eq!(alice.recv().await["op"], "welcome");
    alice.subscribe_one(1, json!({"stream":"user:alice"})).await;
    let response = https
        .post(format!("https://localhost:{}/v1/publish", nginx.port))
        .bearer_auth(TEST_API_KEY)
        .header("x-request-id", "via-nginx-1")
        .json(&json!({"users":["alice"],"type":"t","id":"through-nginx"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    assert_eq!(response.headers()["x-request-id"], "via-nginx-1");
    assert_eq!(alice.recv_skipping_heartbeats().await["id"], "through-nginx");
    // Heartbeats come through unbuffered (the server's every 300 ms here), and a connection that only
    // exchanges heartbeats stays up.
    let started = tokio::time::Instant::now();
    let mut heartbeats = 0;
    while started.elapsed() < Duration::from_millis(1500) {
        alice.send(json!({"op":"heartbeat"})).await;
        if let Ok(frame) = tokio::time::timeout(Duration::from_millis(200), alice.recv()).await {
            assert_eq!(frame["op"], "heartbeat");
            heartbeats += 1;
        }
    }
    assert!(heartbeats >= 3, "{heartbeats} heartbeats in 1.5 s");
    assert!(alice.sync().await.iter().all(|f| f["op"] == "heartbeat"), "still connected");

    // Two bad tokens through nginx, each claiming another address: both count against the real client.
    for forged in ["203.0.113.1", "203.0.113.2"] {
        let mut c = connect(&nginx, &pki, Some(forged)).await.unwrap();
        c.auth("bad-token", "d").await;
        assert_eq!(c.closed().await.error_code(), "unauthorized");
    }
    assert_eq!(connect(&nginx, &pki, Some("203.0.113.3")).await.err(), Some(429), "forged addresses are ignored");
    // The server attributed them to 127.0.0.1 (forwarded by nginx), not to nginx's own 127.0.0.2: a direct
    // connection from 127.0.0.1 is throttled too.
    let direct = Client::connect_offering(&server, "tidings.v1").await;
    match direct {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => assert_eq!(response.status(), 429),
        other => panic!("expected 429, got {:?}", other.map(|_| "a connection")),
    }
    // The metrics are served to the monitoring network only (127.0.0.1 is allowed in the example).
    let metrics = https.get(format!("https://localhost:{}/metrics", nginx.port)).send().await.unwrap();
    assert_eq!(metrics.status(), 200);
    assert!(metrics.text().await.unwrap().contains("tidings_connections_refused_total"));
    drop(alice);
    server.shutdown().await;
    drop(nginx);
}
