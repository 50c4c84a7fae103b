//! TLS listeners for the mocks.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

use crate::test_ca;

/// A TLS acceptor with the test CA's server certificate, offering `alpn`.
pub(crate) fn tls_acceptor(alpn: &[&[u8]]) -> anyhow::Result<TlsAcceptor> {
    let ca = test_ca();
    // The process's provider: ring, which rustls installs on first use (the only provider its features name here).
    let mut config = rustls::ServerConfig::builder().with_no_client_auth().with_single_cert(
        vec![CertificateDer::from(ca.server_cert_der.clone())],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ca.server_key_der.clone())),
    )?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// A request as the HTTP mocks see it: head and whole body.
pub(crate) struct Received {
    pub(crate) head: hyper::http::request::Parts,
    pub(crate) body: Bytes,
}

pub(crate) type Handler =
    Arc<dyn Fn(Received) -> Pin<Box<dyn Future<Output = Response<Full<Bytes>>> + Send>> + Send + Sync>;

/// Serves `handler` over HTTP/1.1 and HTTP/2 with TLS on a loopback port until the returned task is aborted
/// (which ends every connection too). Counts connections in `connections`.
pub(crate) async fn serve(
    handler: Handler,
    connections: Arc<AtomicUsize>,
) -> anyhow::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let addr = listener.local_addr()?;
    let acceptor = tls_acceptor(&[b"h2", b"http/1.1"])?;
    let task = tokio::spawn(async move {
        let mut tasks = JoinSet::new();
        loop {
            let Ok((tcp, _)) = listener.accept().await else { continue };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let handler = handler.clone();
            let connections = connections.clone();
            tasks.spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                connections.fetch_add(1, Ordering::Relaxed);
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let handler = handler.clone();
                    async move {
                        let (head, body) = req.into_parts();
                        let body = match body.collect().await {
                            Ok(b) => b.to_bytes(),
                            Err(_) => Bytes::new(),
                        };
                        Ok::<_, Infallible>(handler(Received { head, body }).await)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
            // Reap finished connections.
            while tasks.try_join_next().is_some() {}
        }
    });
    Ok((addr, task))
}

/// A response with a JSON or text body.
pub(crate) fn respond(status: u16, headers: &[(&str, String)], body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::builder().status(status);
    for (k, v) in headers {
        r = r.header(*k, v.as_str());
    }
    r.body(Full::new(body.into())).expect("valid response parts")
}

/// A header's value as text.
pub(crate) fn header<'a>(head: &'a hyper::http::request::Parts, name: &str) -> Option<&'a str> {
    head.headers.get(name).and_then(|v| v.to_str().ok())
}
