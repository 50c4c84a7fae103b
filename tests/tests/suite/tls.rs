//! A native client over `wss`: the reference server behind a TLS terminator whose certificate a test CA signed
//! (rcgen). The client trusts the CA through `ClientConfig::extra_root_certificates`; without it the handshake
//! fails and the client keeps retrying.

use std::sync::Arc;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use tidings_core::engine::{ConnectionState, Event};
use tidings_core::native::StaticToken;
use tidings_tests::{TestClient, TestServer};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A test CA (PEM) and a certificate it signed for `localhost` (DER chain and key).
fn test_pki() -> (String, Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "Tidings test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_string()]).unwrap().signed_by(&key, &issuer).unwrap();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    (ca_cert.pem(), vec![leaf.der().clone()], key)
}

/// Terminates TLS on a free port and forwards each connection to `backend`; returns the port.
async fn tls_terminator(
    backend: std::net::SocketAddr,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> u16 {
    tidings_server::install_crypto_provider();
    let config =
        tokio_rustls::rustls::ServerConfig::builder().with_no_client_auth().with_single_cert(chain, key).unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                let Ok(mut plain) = TcpStream::connect(backend).await else { return };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    port
}

#[tokio::test]
async fn a_client_over_wss_trusts_a_private_ca_given_in_its_config() {
    let server = TestServer::start().await;
    let (ca_pem, chain, key) = test_pki();
    let port = tls_terminator(server.running().local_addr(), chain, key).await;
    let url = format!("wss://localhost:{port}/v1/ws");
    let token = server.token("alice", &[]);

    let mut alice = TestClient::connect_with(&server, StaticToken::new(token.clone()), None, |c| {
        c.engine.url = url.clone();
        c.extra_root_certificates = vec![ca_pem.clone()];
    });
    alice.connected().await;
    alice.until("user stream", |log| log.iter().any(|e| matches!(e, Event::Continuity { .. }))).await;
    server.notify_user("alice", "over-tls", "important").await;
    alice.until_ids(&["over-tls"]).await;
    alice.close().await;

    // The same server without the CA: the certificate is refused, the client retries and never connects.
    let stranger = TestClient::connect_with(&server, StaticToken::new(token), None, |c| {
        c.engine.url = url.clone();
    });
    let state =
        stranger.wait_state(|s| matches!(s, ConnectionState::Reconnecting { attempt, .. } if *attempt >= 2)).await;
    let ConnectionState::Reconnecting { reason, .. } = state else { unreachable!() };
    assert!(reason.to_lowercase().contains("certificate"), "{reason}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_ne!(stranger.client.state(), ConnectionState::Connected);
    stranger.close().await;
}
