//! The senders' HTTP: reqwest over rustls with the ring provider (no OpenSSL, no aws-lc), the Mozilla roots
//! compiled in (webpki-roots: no dependency on the host's CA bundle) plus any extra roots the operator
//! configures (a corporate proxy, or the test CA of the mock services), and the mapping of request failures to
//! [`TransportFailure`]s.

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;

use super::classify::TransportFailure;
use crate::planner::UnixMs;

/// Where the senders read the time (ms since the Unix epoch): token lifetimes, `apns-expiration`,
/// `Retry-After` dates. Tests substitute a manual clock.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Now.
    fn now_ms(&self) -> UnixMs;
}

/// The system's wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> UnixMs {
        crate::util::now_ms()
    }
}

/// The trust roots of every sender.
#[derive(Clone, Debug)]
pub struct TlsRoots {
    roots: Arc<rustls::RootCertStore>,
}

impl Default for TlsRoots {
    fn default() -> Self {
        TlsRoots::new(&[])
    }
}

impl TlsRoots {
    /// The Mozilla roots plus `extra` (DER certificates).
    pub fn new(extra: &[CertificateDer<'static>]) -> Self {
        let mut roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
        roots.add_parsable_certificates(extra.iter().cloned());
        TlsRoots { roots: Arc::new(roots) }
    }

    /// The Mozilla roots plus the certificates in a PEM text.
    pub fn with_pem(pem: &[u8]) -> Result<Self, String> {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<_, _>>()
            .map_err(|e| format!("is not a PEM certificate list: {e}"))?;
        if certs.is_empty() {
            return Err("holds no PEM certificate".into());
        }
        let mut roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
        let (added, ignored) = roots.add_parsable_certificates(certs);
        if added == 0 || ignored > 0 {
            return Err(format!("{ignored} of its certificates cannot be used as trust roots"));
        }
        Ok(TlsRoots { roots: Arc::new(roots) })
    }

    /// A rustls client configuration with the process's crypto provider (ring, see
    /// [`crate::install_crypto_provider`]), these roots and `alpn`.
    pub fn client_config(&self, alpn: &[&[u8]]) -> rustls::ClientConfig {
        crate::install_crypto_provider();
        let mut config =
            rustls::ClientConfig::builder().with_root_certificates(self.roots.clone()).with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        config
    }
}

/// How the senders' HTTP clients time out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// Connecting (TCP and TLS).
    pub connect: Duration,
    /// A whole request.
    pub request: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts { connect: Duration::from_secs(5), request: Duration::from_secs(15) }
    }
}

/// An HTTP/2-only client (APNs): ALPN `h2`, and requests multiplexed over one connection from the first one on
/// (prior knowledge: the pool does not open a second connection while the first handshake runs). HTTP/2 pings
/// keep the connection alive through idle periods, as Apple asks.
pub fn h2_client(roots: &TlsRoots, timeouts: Timeouts) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_backend_preconfigured(roots.client_config(&[b"h2"]))
        .http2_prior_knowledge()
        .http2_keep_alive_interval(Duration::from_secs(60))
        .http2_keep_alive_while_idle(true)
        .pool_idle_timeout(None)
        .connect_timeout(timeouts.connect)
        .timeout(timeouts.request)
        .build()
        .expect("a client from a preconfigured rustls configuration builds")
}

/// A client for HTTP/2 or HTTP/1.1, whichever the server offers (FCM, Web Push services).
pub fn client(roots: &TlsRoots, timeouts: Timeouts) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_backend_preconfigured(roots.client_config(&[b"h2", b"http/1.1"]))
        .pool_idle_timeout(Duration::from_secs(90))
        .connect_timeout(timeouts.connect)
        .timeout(timeouts.request)
        .build()
        .expect("a client from a preconfigured rustls configuration builds")
}

/// What went wrong with a request that got no HTTP answer.
pub fn transport_failure(e: &reqwest::Error) -> TransportFailure {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(h2) = s.downcast_ref::<h2::Error>() {
            if h2.is_go_away() {
                let reason = h2.reason().map_or_else(|| "unknown".to_owned(), |r| format!("{r:?}"));
                return TransportFailure::GoAway { reason };
            }
            if h2.reason() == Some(h2::Reason::REFUSED_STREAM) {
                return TransportFailure::RefusedStream;
            }
        }
        let io =
            s.downcast_ref::<h2::Error>().and_then(h2::Error::get_io).or_else(|| s.downcast_ref::<std::io::Error>());
        if let Some(io) = io
            && matches!(
                io.kind(),
                std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::UnexpectedEof
            )
            && !e.is_connect()
        {
            return TransportFailure::Closed(io.to_string());
        }
        source = s.source();
    }
    if e.is_timeout() {
        return TransportFailure::Timeout;
    }
    let chain = error_chain(e);
    if e.is_connect() {
        return TransportFailure::Connect(chain);
    }
    TransportFailure::Other(chain)
}

/// An error and its sources, `: `-separated.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}
