//! TLS terminated by the server (rustls with ring): a listener that accepts TCP connections, runs their handshakes
//! concurrently (bounded, with a deadline) and hands finished TLS streams to the HTTP server.
//!
//! The certificate and key are PEM files (`--tls-cert`, `--tls-key`). They are watched (modification time and size,
//! every `reload_interval`) and reloaded on `SIGHUP`: new handshakes use the new certificate at once, connections
//! already open keep theirs — nothing is dropped. A pair that does not load (unreadable, not PEM, key not matching
//! the certificate) is refused with an error in the log and the metric `tidings_tls_reloads_total{result="failed"}`;
//! the server keeps the certificate it has. At startup such a pair is an error.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tracing::{debug, error, info, warn};

use crate::metrics::{Metrics, Refusal, Transport};

/// Handshakes in progress at once; further connections wait to start theirs.
const MAX_HANDSHAKES: usize = 1024;
/// A handshake must finish within this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the certificate and key are, and how often to look for new ones.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsConfig {
    /// The certificate chain (PEM), leaf first.
    pub cert_path: PathBuf,
    /// The private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key_path: PathBuf,
    /// How often the files are checked for changes.
    pub reload_interval: Duration,
}

impl TlsConfig {
    /// Certificate and key files, checked for changes every 10 s.
    pub fn new(cert_path: impl Into<PathBuf>, key_path: impl Into<PathBuf>) -> Self {
        TlsConfig { cert_path: cert_path.into(), key_path: key_path.into(), reload_interval: Duration::from_secs(10) }
    }
}

/// The process's crypto provider (ring unless the application installed another; see
/// [`crate::install_crypto_provider`]).
fn provider() -> Arc<CryptoProvider> {
    crate::install_crypto_provider();
    CryptoProvider::get_default().expect("rustls has a process-wide provider after install_crypto_provider").clone()
}

/// Reads and checks a certificate chain and its key.
pub fn load_certified_key(cert_path: &Path, key_path: &Path) -> Result<CertifiedKey, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_path)
        .map_err(|e| format!("--tls-cert {}: cannot read it: {e}", cert_path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("--tls-cert {}: not a PEM certificate chain: {e}", cert_path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "--tls-cert {}: holds no certificate (expected PEM `CERTIFICATE` blocks)",
            cert_path.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key_path)
        .map_err(|e| format!("--tls-key {}: not a PEM private key: {e}", key_path.display()))?;
    CertifiedKey::from_der(certs, key, &provider()).map_err(|e| {
        format!("--tls-key {} does not go with --tls-cert {}: {e}", key_path.display(), cert_path.display())
    })
}

/// Hands every handshake the current certificate.
#[derive(Debug)]
struct Resolver(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().unwrap_or_else(|e| e.into_inner()).clone())
    }
}

/// The files' state, to notice a change.
fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// A TLS listener for the HTTP server (`axum::serve`), with certificate reloading.
pub(crate) struct TlsListener {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
}

impl TlsListener {
    /// Loads the certificate (an error names the file and what is wrong) and starts accepting on `tcp`.
    pub(crate) fn start(tcp: TcpListener, config: &TlsConfig, metrics: Arc<Metrics>) -> Result<Self, String> {
        let key = load_certified_key(&config.cert_path, &config.key_path)?;
        let resolver = Arc::new(Resolver(RwLock::new(Arc::new(key))));
        let mut server = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = TlsAcceptor::from(Arc::new(server));
        let local = tcp.local_addr().map_err(|e| format!("cannot read the listening address: {e}"))?;
        let (tx, rx) = mpsc::channel(64);
        let accept = tokio::spawn(accept_loop(tcp, acceptor, tx, metrics.clone()));
        let reload = tokio::spawn(reload_loop(config.clone(), resolver, metrics));
        info!(cert = %config.cert_path.display(), "TLS enabled");
        Ok(TlsListener { rx, local, tasks: vec![accept, reload] })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(accepted) => accepted,
            // The accept loop only ends when the listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}

async fn accept_loop(
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    tx: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
    metrics: Arc<Metrics>,
) {
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let Ok(permit) = handshakes.clone().acquire_owned().await else { return };
        let (stream, peer) = match tcp.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: wait a little rather than spin.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (acceptor, tx, metrics) = (acceptor.clone(), tx.clone(), metrics.clone());
        tokio::spawn(async move {
            let result = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await;
            drop(permit);
            match result {
                Ok(Ok(tls)) => {
                    let _ = tx.send((tls, peer)).await;
                }
                Ok(Err(e)) => {
                    metrics.refused(Transport::Http, Refusal::TlsHandshake);
                    debug!(peer = %peer, error = %e, "TLS handshake failed");
                }
                Err(_) => {
                    metrics.refused(Transport::Http, Refusal::TlsHandshake);
                    debug!(peer = %peer, "TLS handshake timed out");
                }
            }
        });
    }
}

/// Reloads the certificate when its files change or on `SIGHUP`.
async fn reload_loop(config: TlsConfig, resolver: Arc<Resolver>, metrics: Arc<Metrics>) {
    let mut seen = (stamp(&config.cert_path), stamp(&config.key_path));
    #[cfg(unix)]
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    loop {
        #[cfg(unix)]
        let signalled = async {
            match hangup.as_mut() {
                Some(signal) => {
                    signal.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let signalled = std::future::pending::<()>();
        let forced = tokio::select! {
            () = tokio::time::sleep(config.reload_interval) => false,
            () = signalled => true,
        };
        let now = (stamp(&config.cert_path), stamp(&config.key_path));
        if now == seen && !forced {
            continue;
        }
        // A certificate and key written one after the other may be seen half-way (a pair that does not match):
        // the second write changes the files again, and the pair is tried again then.
        seen = now;
        match load_certified_key(&config.cert_path, &config.key_path) {
            Ok(key) => {
                *resolver.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(key);
                metrics.tls_reload("reloaded");
                info!(cert = %config.cert_path.display(), "TLS certificate reloaded; new connections use it");
            }
            Err(e) => {
                metrics.tls_reload("failed");
                error!(error = %e, "the new TLS certificate was not loaded; the server keeps the one it has");
            }
        }
    }
}
