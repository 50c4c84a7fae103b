//! TLS terminated by the server: the protocol over `wss` with a certificate from a test CA (rcgen), HTTPS for the
//! API, and a certificate renewed on disk while a client stays connected (reloaded, nothing dropped; a broken one
//! is refused and the old one kept).

use crate::common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::json;
use tidings_push_mocks::{ServerCert, TestPki};
use tidings_server::push::http::TlsRoots;
use tidings_server::tls::TlsConfig;
use tidings_server::{RunningServer, ServerConfig, TEST_API_KEY};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

fn write_pair(dir: &Path, cert: &ServerCert) {
    // Key first, then the certificate, each by rename: a reader never sees a half-written file.
    for (name, text) in [("key.pem", &cert.key_pem), ("cert.pem", &cert.cert_pem)] {
        let tmp = dir.join(format!("{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, dir.join(name)).unwrap();
    }
}

fn tls_config(dir: &Path) -> ServerConfig {
    let mut config = ServerConfig::for_tests();
    let mut tls = TlsConfig::new(dir.join("cert.pem"), dir.join("key.pem"));
    tls.reload_interval = Duration::from_millis(100);
    config.tls = Some(tls);
    config
}

fn client_tls(pki: &TestPki) -> rustls::ClientConfig {
    tidings_server::install_crypto_provider();
    TlsRoots::with_pem(pki.ca_pem.as_bytes()).unwrap().client_config(&[b"http/1.1"])
}

/// The certificate the server presents to a new handshake (DER).
async fn presented(server: &RunningServer, pki: &TestPki) -> Vec<u8> {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_tls(pki)));
    let tcp = tokio::net::TcpStream::connect(server.local_addr()).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(name, tcp).await.expect("the handshake succeeds");
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

async fn wss_login(server: &RunningServer, pki: &TestPki, user: &str) -> Client {
    let url = server.ws_url().replace("127.0.0.1", "localhost");
    assert!(url.starts_with("wss://"), "{url}");
    let mut request = url.into_client_request().unwrap();
    request.headers_mut().insert("Sec-WebSocket-Protocol", HeaderValue::from_static("tidings.v1"));
    let connector = tokio_tungstenite::Connector::Rustls(Arc::new(client_tls(pki)));
    let (ws, _) = tokio_tungstenite::connect_async_tls_with_config(request, None, true, Some(connector))
        .await
        .expect("wss upgrade");
    let mut client = Client::from_stream(ws);
    client.auth(&token(user, &[]), "d-1").await;
    assert_eq!(client.recv().await["op"], "welcome");
    client
}

async fn https_publish(server: &RunningServer, pki: &TestPki, user: &str, id: &str) {
    let client = reqwest::Client::builder().tls_backend_preconfigured(client_tls(pki)).build().unwrap();
    let url = format!("{}/v1/publish", server.http_url().replace("127.0.0.1", "localhost"));
    assert!(url.starts_with("https://"), "{url}");
    let response =
        client.post(url).bearer_auth(TEST_API_KEY).json(&json!({"users":[user],"type":"t","id":id})).send().await;
    assert_eq!(response.unwrap().status(), 202);
}

#[tokio::test]
async fn the_protocol_runs_over_wss_and_a_renewed_certificate_is_reloaded_without_dropping_anyone() {
    let pki = TestPki::new("Tidings TLS test CA");
    let dir = tempfile::tempdir().unwrap();
    let first = pki.server_cert("first");
    write_pair(dir.path(), &first);
    let server = start(tls_config(dir.path())).await;
    assert_eq!(presented(&server, &pki).await, first.cert_der);

    let mut alice = wss_login(&server, &pki, "alice").await;
    alice.subscribe_one(1, json!({"stream":"user:alice"})).await;
    https_publish(&server, &pki, "alice", "before-renewal").await;
    assert_eq!(alice.recv_skipping_heartbeats().await["id"], "before-renewal");

    // Renewed on disk: new handshakes get the new certificate, alice's connection goes on.
    let renewed = pki.server_cert("renewed");
    write_pair(dir.path(), &renewed);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while presented(&server, &pki).await != renewed.cert_der {
        assert!(tokio::time::Instant::now() < deadline, "the renewed certificate was not picked up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    https_publish(&server, &pki, "alice", "after-renewal").await;
    assert_eq!(alice.recv_skipping_heartbeats().await["id"], "after-renewal", "the old connection still works");
    let mut bob = wss_login(&server, &pki, "bob").await;
    assert!(bob.sync().await.is_empty());

    // A broken certificate is refused; the server keeps the renewed one.
    std::fs::write(dir.path().join("cert.pem"), "not a certificate").unwrap();
    let (_, metrics) = get_text(&server, &pki, "/metrics").await;
    let failed_line = "tidings_tls_reloads_total{result=\"failed\"} 1";
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut metrics = metrics;
    while !metrics.contains(failed_line) {
        assert!(tokio::time::Instant::now() < deadline, "the broken certificate was not noticed: {metrics}");
        tokio::time::sleep(Duration::from_millis(50)).await;
        metrics = get_text(&server, &pki, "/metrics").await.1;
    }
    assert!(metrics.contains("tidings_tls_reloads_total{result=\"reloaded\"} 1"), "{metrics}");
    assert_eq!(presented(&server, &pki).await, renewed.cert_der);
    https_publish(&server, &pki, "alice", "after-broken").await;
    assert_eq!(alice.recv_skipping_heartbeats().await["id"], "after-broken");
    server.shutdown().await;
}

async fn get_text(server: &RunningServer, pki: &TestPki, path: &str) -> (u16, String) {
    let client = reqwest::Client::builder().tls_backend_preconfigured(client_tls(pki)).build().unwrap();
    let url = format!("{}{path}", server.http_url().replace("127.0.0.1", "localhost"));
    let response = client.get(url).send().await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

#[tokio::test]
async fn a_client_that_does_not_trust_the_certificate_is_refused_and_counted() {
    let pki = TestPki::new("Tidings TLS test CA");
    let dir = tempfile::tempdir().unwrap();
    write_pair(dir.path(), &pki.server_cert("only"));
    let server = start(tls_config(dir.path())).await;
    let stranger = TestPki::new("Another CA");
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_tls(&stranger)));
    let tcp = tokio::net::TcpStream::connect(server.local_addr()).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let error = connector.connect(name, tcp).await.unwrap_err().to_string();
    assert!(error.to_lowercase().contains("certificate"), "{error}");
    // Plain HTTP on the TLS port is not served either.
    let plain = reqwest::Client::new().get(format!("http://{}/healthz", server.local_addr())).send().await;
    assert!(plain.is_err());
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let text = get_text(&server, &pki, "/metrics").await.1;
        if text.contains("tidings_connections_refused_total{transport=\"http\",reason=\"tls_handshake\"} 2") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.shutdown().await;
}

#[tokio::test]
async fn a_key_that_does_not_go_with_the_certificate_is_refused_at_startup() {
    let pki = TestPki::new("Tidings TLS test CA");
    let dir = tempfile::tempdir().unwrap();
    let a = pki.server_cert("a");
    let b = pki.server_cert("b");
    std::fs::write(dir.path().join("cert.pem"), &a.cert_pem).unwrap();
    std::fs::write(dir.path().join("key.pem"), &b.key_pem).unwrap();
    let error = tidings_server::start(tls_config(dir.path())).await.unwrap_err().to_string();
    assert!(error.contains("--tls-key") && error.contains("does not go with --tls-cert"), "{error}");
    std::fs::write(dir.path().join("cert.pem"), "").unwrap();
    let error = tidings_server::start(tls_config(dir.path())).await.unwrap_err().to_string();
    assert!(error.contains("holds no certificate"), "{error}");
}
