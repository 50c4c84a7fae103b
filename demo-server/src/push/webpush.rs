//! Web Push sender: RFC 8030 (TTL, Urgency, Topic), RFC 8291 `aes128gcm` payload encryption, RFC 8292 VAPID.
//!
//! Encryption is the RFC 8291 key schedule (ECDH with a fresh P-256 key per message, HKDF with the
//! subscription's auth secret) over `ece-native`, the RFC 8188 record layer that `web-push-native` itself uses:
//! `web-push-native`'s `encrypt` draws its salt and key inside, so its output cannot be compared with the RFC's
//! Appendix A vectors, while [`encrypt_with`] takes them as inputs and is checked byte for byte against them.
//! [`encrypt`], the sending path, shares that key schedule and record and draws the key pair with ring; what it
//! produces is decrypted in tests by `web-push-native` and by Python's `http_ece`.
//! The VAPID JWT (ES256, signed with jsonwebtoken) is cached per push service origin for 12 of its 24 hours.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hkdf::Hkdf;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p256::elliptic_curve::sec1::ToEncodedPoint as _;
use p256::pkcs8::EncodePrivateKey as _;
use p256::{PublicKey, SecretKey};
use serde_json::Value;
use sha2::Sha256;

use super::Attempt;
use super::classify::{Answer, Verdict, classify_transport, classify_web_push};
use super::http::{Clock, Timeouts, TlsRoots, client, transport_failure};
use super::payload::{PushMessage, collapse_token, web_push_payload, web_push_urgency};
use crate::planner::UnixMs;

/// The record size written in the header (RFC 8291 §4 example; what `web-push` and browsers use). The payload
/// is one record, shorter than this.
pub const RECORD_SIZE: u32 = 4096;

/// How long a VAPID JWT is valid (RFC 8292: at most 24 hours).
pub const VAPID_JWT_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// A cached VAPID JWT is replaced when less than this is left.
pub const VAPID_JWT_RENEW_BEFORE: Duration = Duration::from_secs(12 * 3600);

fn decode_b64url(text: &str) -> Result<Vec<u8>, String> {
    base64::engine::GeneralPurpose::new(
        &base64::alphabet::URL_SAFE,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    )
    .decode(text.trim())
    .map_err(|e| format!("is not base64url: {e}"))
}

/// The application server's VAPID key pair.
#[derive(Clone)]
pub struct VapidKey {
    signing: EncodingKey,
    /// The public key, base64url of the uncompressed point (the `k` of the Authorization header).
    public: String,
}

impl std::fmt::Debug for VapidKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VapidKey").field("public", &self.public).finish_non_exhaustive()
    }
}

impl VapidKey {
    /// From the private key as `web-push generate-vapid-keys` prints it: base64url of the 32-byte scalar.
    pub fn from_base64url(private: &str) -> Result<Self, String> {
        let bytes = decode_b64url(private)?;
        if bytes.len() != 32 {
            return Err(format!("must be 32 bytes (a P-256 private scalar); got {}", bytes.len()));
        }
        let secret = SecretKey::from_slice(&bytes).map_err(|_| "is not a valid P-256 private key".to_string())?;
        Ok(VapidKey::from_secret(&secret))
    }

    fn from_secret(secret: &SecretKey) -> Self {
        let der = secret.to_pkcs8_der().expect("a P-256 key encodes as PKCS#8");
        let public = URL_SAFE_NO_PAD.encode(secret.public_key().to_encoded_point(false).as_bytes());
        VapidKey { signing: EncodingKey::from_ec_der(der.as_bytes()), public }
    }

    /// The public key (base64url, uncompressed point).
    pub fn public_key(&self) -> &str {
        &self.public
    }
}

/// A browser's push subscription (`PushSubscription.toJSON()`).
#[derive(Clone, Debug)]
pub struct Subscription {
    /// Where to POST.
    pub endpoint: String,
    /// The browser's P-256 key.
    pub p256dh: PublicKey,
    /// The browser's auth secret.
    pub auth: [u8; 16],
}

impl Subscription {
    /// Parses the subscription JSON stored as a `web_push` token.
    pub fn parse(token: &str) -> Result<Self, String> {
        let v: Value = serde_json::from_str(token).map_err(|e| format!("subscription is not JSON: {e}"))?;
        let endpoint = v["endpoint"].as_str().ok_or("subscription has no endpoint")?;
        let key = decode_b64url(v["keys"]["p256dh"].as_str().ok_or("subscription has no keys.p256dh")?)?;
        let p256dh = PublicKey::from_sec1_bytes(&key).map_err(|_| "keys.p256dh is not a P-256 point".to_string())?;
        let auth = decode_b64url(v["keys"]["auth"].as_str().ok_or("subscription has no keys.auth")?)?;
        let auth = auth.try_into().map_err(|_| "keys.auth is not 16 bytes".to_string())?;
        Ok(Subscription { endpoint: endpoint.to_owned(), p256dh, auth })
    }
}

/// RFC 8291 §3.3–3.4 key schedule and the RFC 8188 record, given the ECDH secret: one record, header
/// `salt ‖ rs ‖ idlen ‖ as_public`.
fn seal(
    plaintext: &[u8],
    ecdh_secret: &[u8],
    ua_public: &[u8],
    as_public: &[u8],
    auth: &[u8; 16],
    salt: [u8; 16],
) -> Result<Vec<u8>, String> {
    // PRK_key = HMAC-SHA-256(auth_secret, ecdh_secret); IKM = HMAC-SHA-256(PRK_key, key_info ‖ 0x01), that is
    // HKDF(salt = auth_secret, IKM = ecdh_secret, info = key_info, L = 32).
    let mut key_info = Vec::with_capacity(14 + 65 + 65);
    key_info.extend_from_slice(b"WebPush: info\0");
    key_info.extend_from_slice(ua_public);
    key_info.extend_from_slice(as_public);
    let mut ikm = [0u8; 32];
    Hkdf::<Sha256>::new(Some(auth), ecdh_secret)
        .expand(&key_info, &mut ikm)
        .map_err(|_| "HKDF output length".to_string())?;
    ece_native::encrypt(ikm, salt, as_public, std::iter::once(plaintext.to_vec()), RECORD_SIZE)
        .map_err(|e| format!("aes128gcm: {e}"))
}

/// Encrypts `plaintext` for a subscription (RFC 8291) with the given salt and application-server key (what
/// RFC 8291's Appendix A fixes).
pub fn encrypt_with(
    plaintext: &[u8],
    ua_public: &PublicKey,
    auth: &[u8; 16],
    salt: [u8; 16],
    as_secret: &SecretKey,
) -> Result<Vec<u8>, String> {
    let as_public = as_secret.public_key().to_encoded_point(false);
    let ua = ua_public.to_encoded_point(false);
    let shared = p256::ecdh::diffie_hellman(as_secret.to_nonzero_scalar(), ua_public.as_affine());
    seal(plaintext, shared.raw_secret_bytes().as_slice(), ua.as_bytes(), as_public.as_bytes(), auth, salt)
}

/// Encrypts with a fresh salt and a fresh application-server key pair. The key pair and the ECDH use ring's
/// P-256 (the one rustls already links), which costs a fraction of the pure-Rust `p256` arithmetic per message
/// (bench/README.md, P1); the key schedule and record are [`encrypt_with`]'s.
pub fn encrypt(plaintext: &[u8], ua_public: &PublicKey, auth: &[u8; 16]) -> Result<Vec<u8>, String> {
    use ring::agreement::{ECDH_P256, EphemeralPrivateKey, UnparsedPublicKey, agree_ephemeral};
    use ring::rand::{SecureRandom as _, SystemRandom};
    let rng = SystemRandom::new();
    let mut salt = [0u8; 16];
    rng.fill(&mut salt).map_err(|_| "no randomness".to_string())?;
    let as_secret = EphemeralPrivateKey::generate(&ECDH_P256, &rng).map_err(|_| "no randomness".to_string())?;
    let as_public = as_secret.compute_public_key().map_err(|_| "P-256 public key".to_string())?;
    let ua = ua_public.to_encoded_point(false);
    agree_ephemeral(as_secret, &UnparsedPublicKey::new(&ECDH_P256, ua.as_bytes()), |shared| {
        seal(plaintext, shared, ua.as_bytes(), as_public.as_ref(), auth, salt)
    })
    .map_err(|_| "ECDH with the subscription's key failed".to_string())?
}

/// The origin of a URL (`scheme://host[:port]`), the VAPID `aud`.
pub fn origin(url: &str) -> Option<&str> {
    let rest_at = url.find("://")? + 3;
    let end = url[rest_at..].find(['/', '?', '#']).map_or(url.len(), |i| rest_at + i);
    (end > rest_at).then(|| &url[..end])
}

/// Sends Web Push messages.
#[derive(Debug)]
pub struct WebPushSender {
    client: reqwest::Client,
    key: VapidKey,
    subject: String,
    clock: Arc<dyn Clock>,
    /// origin → (JWT, expires at ms).
    jwts: Mutex<HashMap<String, (Arc<str>, UnixMs)>>,
}

impl WebPushSender {
    /// A sender signing with `key`; `subject` is the VAPID `sub` (a `mailto:` or `https:` contact).
    pub fn new(key: VapidKey, subject: String, roots: &TlsRoots, clock: Arc<dyn Clock>) -> Self {
        WebPushSender {
            client: client(roots, Timeouts::default()),
            key,
            subject,
            clock,
            jwts: Mutex::new(HashMap::new()),
        }
    }

    /// The VAPID JWT for `audience` (cached per origin, renewed with 12 hours left).
    pub fn vapid_jwt(&self, audience: &str) -> Result<Arc<str>, String> {
        let now = self.clock.now_ms();
        let mut jwts = self.jwts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((jwt, expires)) = jwts.get(audience)
            && now + VAPID_JWT_RENEW_BEFORE.as_millis() as u64 <= *expires
        {
            return Ok(jwt.clone());
        }
        let exp = (now + VAPID_JWT_LIFETIME.as_millis() as u64) / 1000;
        let claims = serde_json::json!({"aud": audience, "exp": exp, "sub": self.subject});
        let header = Header::new(Algorithm::ES256);
        let jwt: Arc<str> = jsonwebtoken::encode(&header, &claims, &self.key.signing)
            .map_err(|e| format!("cannot sign the VAPID JWT: {e}"))?
            .into();
        jwts.insert(audience.to_owned(), (jwt.clone(), exp * 1000));
        Ok(jwt)
    }

    /// One attempt to deliver `msg` to the subscription `token` (its JSON).
    pub async fn send(&self, token: &str, msg: &PushMessage) -> Attempt {
        let (plaintext, form) = web_push_payload(msg);
        let sub = match Subscription::parse(token) {
            Ok(s) => s,
            Err(e) => return Attempt::refused(form, format!("unusable subscription: {e}")),
        };
        let Some(audience) = origin(&sub.endpoint) else {
            return Attempt::refused(form, format!("unusable subscription: endpoint {:?}", sub.endpoint));
        };
        let jwt = match self.vapid_jwt(audience) {
            Ok(j) => j,
            Err(e) => return Attempt::new(Verdict::ConfigError { reason: e, certain: true }, form, None),
        };
        let body = match encrypt(plaintext.as_bytes(), &sub.p256dh, &sub.auth) {
            Ok(b) => b,
            Err(e) => return Attempt::refused(form, e),
        };
        let mut request = self
            .client
            .post(&sub.endpoint)
            .header("ttl", msg.ttl.as_secs().to_string())
            .header("urgency", web_push_urgency(msg.priority))
            .header("content-encoding", "aes128gcm")
            .header("content-type", "application/octet-stream")
            .header("authorization", format!("vapid t={jwt}, k={}", self.key.public));
        let base64url = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
        if let Some(key) = msg.collapse_key() {
            request = request.header("topic", collapse_token(key, 32, base64url));
        }
        let response = match request.body(body).send().await {
            Ok(r) => r,
            Err(e) => return Attempt::new(classify_transport(&transport_failure(&e)), form, None),
        };
        let status = response.status().as_u16();
        let location = header(&response, "location");
        let retry_after = header(&response, "retry-after");
        let body = response.bytes().await.unwrap_or_default();
        let answer =
            Answer { status, retry_after: retry_after.as_deref(), message_id: location.as_deref(), body: &body };
        Attempt::new(classify_web_push(&answer, self.clock.now_ms()), form, Some(status))
    }
}

pub(crate) fn header(r: &reqwest::Response, name: &str) -> Option<String> {
    r.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn b64(s: &str) -> Vec<u8> {
        decode_b64url(s).unwrap()
    }

    // RFC 8291 Appendix A (anchors-performance-protocols.md §4.4).
    const PLAINTEXT: &str = "V2hlbiBJIGdyb3cgdXAsIEkgd2FudCB0byBiZSBhIHdhdGVybWVsb24";
    const AS_PRIVATE: &str = "yfWPiYE-n46HLnH0KqZOF1fJJU3MYrct3AELtAQ-oRw";
    const AS_PUBLIC: &str = "BP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A8";
    pub(crate) const UA_PUBLIC: &str =
        "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4";
    pub(crate) const UA_PRIVATE: &str = "q1dXpw3UpT5VOmu_cf_v6ih07Aems3njxI-JWgLcM94";
    const SALT: &str = "DGv6ra1nlYgDCS1FRnbzlw";
    pub(crate) const AUTH: &str = "BTBZMqHH6r4Tts7J_aSIgg";
    const BODY: &str = "DGv6ra1nlYgDCS1FRnbzlwAAEABBBP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A_yl95bQpu6cVPTpK4Mqgkf1CXztLVBSt2Ks3oZwbuwXPXLWyouBWLVWGNWQexSgSxsj_Qulcy4a-fN";

    #[test]
    fn rfc8291_appendix_a_byte_exact() {
        let as_secret = SecretKey::from_slice(&b64(AS_PRIVATE)).unwrap();
        assert_eq!(as_secret.public_key().to_encoded_point(false).as_bytes(), &b64(AS_PUBLIC)[..]);
        let ua_public = PublicKey::from_sec1_bytes(&b64(UA_PUBLIC)).unwrap();
        let auth: [u8; 16] = b64(AUTH).try_into().unwrap();
        let salt: [u8; 16] = b64(SALT).try_into().unwrap();
        let body = encrypt_with(&b64(PLAINTEXT), &ua_public, &auth, salt, &as_secret).unwrap();
        assert_eq!(body.len(), 144);
        assert_eq!(URL_SAFE_NO_PAD.encode(&body), BODY);
    }

    #[test]
    fn a_second_implementation_decrypts_what_we_encrypt() {
        // web-push-native's decrypt (its own key schedule) with the RFC's browser key.
        let ua_secret = SecretKey::from_slice(&b64(UA_PRIVATE)).unwrap();
        let auth: [u8; 16] = b64(AUTH).try_into().unwrap();
        for len in [0, 1, 100, 3993] {
            let plaintext: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let body = encrypt(&plaintext, &ua_secret.public_key(), &auth).unwrap();
            assert_eq!(body.len(), 86 + len + 17);
            let auth = web_push_native::Auth::clone_from_slice(&auth);
            let ua = web_push_native::p256::SecretKey::from_slice(&b64(UA_PRIVATE)).unwrap();
            assert_eq!(web_push_native::decrypt(body, &ua, &auth).unwrap(), plaintext);
        }
    }

    #[test]
    fn vapid_keys_and_origins() {
        let key = VapidKey::from_base64url(AS_PRIVATE).unwrap();
        assert_eq!(key.public_key(), AS_PUBLIC);
        assert!(VapidKey::from_base64url("AAAA").unwrap_err().contains("32 bytes"));
        assert!(VapidKey::from_base64url(&URL_SAFE_NO_PAD.encode([0u8; 32])).unwrap_err().contains("not a valid"));
        assert_eq!(origin("https://fcm.googleapis.com/fcm/send/abc:def"), Some("https://fcm.googleapis.com"));
        assert_eq!(origin("https://127.0.0.1:8443/push/1?x"), Some("https://127.0.0.1:8443"));
        assert_eq!(
            origin("https://updates.push.services.mozilla.com"),
            Some("https://updates.push.services.mozilla.com")
        );
        assert_eq!(origin("nonsense"), None);
        assert_eq!(origin("https:///x"), None);
    }

    #[test]
    fn subscriptions_parse() {
        let json = format!(
            r#"{{"endpoint":"https://p.example/x","expirationTime":null,"keys":{{"p256dh":"{UA_PUBLIC}","auth":"{AUTH}"}}}}"#
        );
        let s = Subscription::parse(&json).unwrap();
        assert_eq!(s.endpoint, "https://p.example/x");
        assert_eq!(s.auth.to_vec(), b64(AUTH));
        assert!(Subscription::parse(r#"{"endpoint":"https://p.example/x"}"#).unwrap_err().contains("p256dh"));
    }
}
