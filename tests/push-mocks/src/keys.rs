//! The test CA and test keys.

use std::sync::OnceLock;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use p256::elliptic_curve::sec1::ToEncodedPoint as _;
use p256::pkcs8::DecodePrivateKey as _;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};

/// A CA and a server certificate it signed for `localhost` and `127.0.0.1`, made once per process.
#[derive(Debug)]
pub struct TestCa {
    /// The CA certificate, PEM: what senders trust (`--push-ca-file`, `NODE_EXTRA_CA_CERTS`).
    pub cert_pem: String,
    /// The server certificate, DER.
    pub server_cert_der: Vec<u8>,
    /// The server key, PKCS#8 DER.
    pub server_key_der: Vec<u8>,
}

/// The process's test CA.
pub fn test_ca() -> &'static TestCa {
    static CA: OnceLock<TestCa> = OnceLock::new();
    CA.get_or_init(|| make_ca().expect("rcgen makes a test CA"))
}

fn make_ca() -> Result<TestCa, rcgen::Error> {
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "Tidings push mocks test CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);
    let server_key = KeyPair::generate()?;
    let mut server = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])?;
    server.distinguished_name.push(DnType::CommonName, "localhost");
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_cert = server.signed_by(&server_key, &issuer)?;
    Ok(TestCa {
        cert_pem: ca_cert.pem(),
        server_cert_der: server_cert.der().to_vec(),
        server_key_der: server_key.serialize_der(),
    })
}

/// An APNs signing key (an `AuthKey_*.p8`), with its ids.
#[derive(Clone, Debug)]
pub struct ApnsTestKey {
    /// The `.p8` content (PKCS#8 PEM, P-256).
    pub p8_pem: String,
    /// Its public key (SPKI PEM), for the mock to verify provider tokens.
    pub public_pem: String,
    /// 10-character key id.
    pub key_id: String,
    /// 10-character team id.
    pub team_id: String,
}

impl ApnsTestKey {
    /// A fresh key.
    pub fn generate() -> Self {
        let key = KeyPair::generate().expect("rcgen generates P-256 keys");
        ApnsTestKey {
            p8_pem: key.serialize_pem(),
            public_pem: key.public_key_pem(),
            key_id: "ABC123DEFG".into(),
            team_id: "TEAM456XYZ".into(),
        }
    }
}

/// A VAPID key pair, in the forms `web-push generate-vapid-keys` prints.
#[derive(Clone, Debug)]
pub struct VapidTestKey {
    /// base64url of the 32-byte private scalar.
    pub private: String,
    /// base64url of the uncompressed public point.
    pub public: String,
}

fn p256_secret() -> p256::SecretKey {
    let key = KeyPair::generate().expect("rcgen generates P-256 keys");
    p256::SecretKey::from_pkcs8_der(&key.serialize_der()).expect("rcgen's PKCS#8 is a P-256 key")
}

impl VapidTestKey {
    /// A fresh key pair.
    pub fn generate() -> Self {
        let secret = p256_secret();
        VapidTestKey {
            private: URL_SAFE_NO_PAD.encode(secret.to_bytes()),
            public: URL_SAFE_NO_PAD.encode(secret.public_key().to_encoded_point(false).as_bytes()),
        }
    }
}

/// What a browser holds for one push subscription: its P-256 key pair and auth secret.
#[derive(Clone, Debug)]
pub struct BrowserKeys {
    /// base64url of the 32-byte private scalar (what a decrypting test needs).
    pub private: String,
    /// base64url of the uncompressed public point (`keys.p256dh`).
    pub p256dh: String,
    /// base64url of the 16-byte auth secret (`keys.auth`).
    pub auth: String,
}

impl BrowserKeys {
    /// Fresh keys.
    pub fn generate() -> Self {
        let secret = p256_secret();
        // 16 bytes for the auth secret, from another fresh key's scalar.
        let auth: [u8; 16] = p256_secret().to_bytes()[..16].try_into().expect("16 bytes");
        BrowserKeys {
            private: URL_SAFE_NO_PAD.encode(secret.to_bytes()),
            p256dh: URL_SAFE_NO_PAD.encode(secret.public_key().to_encoded_point(false).as_bytes()),
            auth: URL_SAFE_NO_PAD.encode(auth),
        }
    }

    /// The subscription JSON for `endpoint` (`PushSubscription.toJSON()`).
    pub fn subscription(&self, endpoint: &str) -> String {
        serde_json::json!({
            "endpoint": endpoint,
            "expirationTime": null,
            "keys": {"p256dh": self.p256dh, "auth": self.auth},
        })
        .to_string()
    }
}

/// An RSA key for the FCM service account of the tests (PKCS#8 PEM). Test-only: it signs nothing real.
pub const FCM_TEST_KEY_PEM: &str = include_str!("../keys/fcm-test-key.pem");
/// Its public half (SPKI PEM), for the mock token endpoint.
pub const FCM_TEST_PUBLIC_KEY_PEM: &str = include_str!("../keys/fcm-test-key.pub.pem");

/// A test CA that keeps its key, to sign server certificates on demand (the server's own TLS tests: a first
/// certificate, then a renewed one to reload).
pub struct TestPki {
    /// The CA certificate, PEM.
    pub ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for TestPki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestPki").finish_non_exhaustive()
    }
}

/// A server certificate and its key, PEM.
#[derive(Clone, Debug)]
pub struct ServerCert {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The private key (PKCS#8), PEM.
    pub key_pem: String,
    /// The certificate, DER.
    pub cert_der: Vec<u8>,
}

impl TestPki {
    /// A fresh CA named `name`.
    pub fn new(name: &str) -> Self {
        let ca_key = KeyPair::generate().expect("rcgen generates P-256 keys");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("no names");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, name);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let ca_cert = ca.self_signed(&ca_key).expect("rcgen signs");
        TestPki { ca_pem: ca_cert.pem(), issuer: Issuer::new(ca, ca_key) }
    }

    /// A server certificate for `localhost` and `127.0.0.1` whose common name is `common_name`.
    pub fn server_cert(&self, common_name: &str) -> ServerCert {
        let key = KeyPair::generate().expect("rcgen generates P-256 keys");
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).expect("valid names");
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &self.issuer).expect("rcgen signs");
        ServerCert { cert_pem: cert.pem(), key_pem: key.serialize_pem(), cert_der: cert.der().to_vec() }
    }
}
