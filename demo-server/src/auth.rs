//! Client tokens (protocol §8): HS256 JWTs with `sub`, optional `exp`/`nbf` and a `topics` claim.

use std::collections::HashSet;
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use serde::{Deserialize, Serialize};
use tidings_core::protocol::{StreamName, validate_user_id};

use crate::util::now_ms;

/// Issues an HS256 token for `user` that may read `topics` (patterns as in protocol §8.1: exact names,
/// prefixes ending in `*`, or `*`), expiring after `ttl` (no `exp` claim when `None`).
///
/// # Panics
/// If the token cannot be signed, which cannot happen for HS256 with an in-memory secret.
pub fn issue_token(secret: &str, user: &str, topics: &[&str], ttl: Option<Duration>) -> String {
    let now = now_ms() / 1000;
    let claims = TokenClaims {
        sub: user.to_owned(),
        exp: ttl.map(|ttl| now + ttl.as_secs().max(1)),
        nbf: None,
        iat: Some(now),
        topics: if topics.is_empty() { None } else { Some(topics.iter().map(|t| (*t).to_owned()).collect()) },
    };
    sign_claims(secret, &claims)
}

/// Signs arbitrary claims with HS256 (tests use it to build tokens with unusual `exp`/`nbf`).
///
/// # Panics
/// If the claims cannot be serialized or signed.
pub fn sign_claims<T: Serialize>(secret: &str, claims: &T) -> String {
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(secret.as_bytes()))
        .expect("HS256 signing with an in-memory secret does not fail")
}

/// The claims of a Tidings token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenClaims {
    /// The user id.
    pub sub: String,
    /// Expiry, seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<u64>,
    /// Not valid before, seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Issued at, seconds since the Unix epoch (informational).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// Topic patterns this token may read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topics: Option<Vec<String>>,
}

/// Why a token was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum TokenError {
    /// Malformed, badly signed, not yet valid, or with an invalid `sub`: `unauthorized` / `4001`.
    Unauthorized(String),
    /// `exp` has passed: `token_expired` / `4002`.
    Expired(String),
}

/// A verified token.
#[derive(Clone, Debug)]
pub(crate) struct VerifiedToken {
    pub(crate) user: String,
    /// Milliseconds until the token expires; `None` without `exp`.
    pub(crate) expires_in_ms: Option<u64>,
    pub(crate) topics: TopicPatterns,
}

/// Verifies tokens with the server's secret.
pub(crate) struct TokenVerifier {
    key: DecodingKey,
    validation: Validation,
    nbf_leeway_ms: u64,
}

impl std::fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenVerifier").finish_non_exhaustive()
    }
}

impl TokenVerifier {
    pub(crate) fn new(secret: &str, nbf_leeway: Duration) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        // exp and nbf are checked below against our own clock so that `exp` has no leeway and the remaining
        // lifetime can be reported in `welcome`.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.leeway = 0;
        validation.required_spec_claims = HashSet::from(["sub".to_owned()]);
        TokenVerifier {
            key: DecodingKey::from_secret(secret.as_bytes()),
            validation,
            nbf_leeway_ms: nbf_leeway.as_millis() as u64,
        }
    }

    #[cfg(test)]
    pub(crate) fn verify(&self, token: &str) -> Result<VerifiedToken, TokenError> {
        self.verify_at(token, now_ms())
    }

    pub(crate) fn verify_at(&self, token: &str, now_ms: u64) -> Result<VerifiedToken, TokenError> {
        if token.is_empty() {
            return Err(TokenError::Unauthorized("the token is empty".into()));
        }
        let data = jsonwebtoken::decode::<TokenClaims>(token, &self.key, &self.validation).map_err(|e| {
            TokenError::Unauthorized(match e.kind() {
                ErrorKind::InvalidSignature => "the token's signature is invalid".to_owned(),
                ErrorKind::InvalidAlgorithm => "the token must be signed with HS256".to_owned(),
                ErrorKind::MissingRequiredClaim(claim) => format!("the token has no `{claim}` claim"),
                _ => malformed(token),
            })
        })?;
        let claims = data.claims;
        validate_user_id(&claims.sub)
            .map_err(|e| TokenError::Unauthorized(format!("the token's `sub` is not a valid user id: it {e}")))?;
        if let Some(nbf) = claims.nbf
            && now_ms.saturating_add(self.nbf_leeway_ms) < nbf.saturating_mul(1000)
        {
            return Err(TokenError::Unauthorized(format!("the token is not valid before {nbf} (nbf)")));
        }
        let expires_in_ms = match claims.exp {
            Some(exp) => {
                let exp_ms = exp.saturating_mul(1000);
                if now_ms >= exp_ms {
                    return Err(TokenError::Expired(format!("the token expired {} s ago", (now_ms - exp_ms) / 1000)));
                }
                Some(exp_ms - now_ms)
            }
            None => None,
        };
        Ok(VerifiedToken {
            user: claims.sub,
            expires_in_ms,
            topics: TopicPatterns::new(claims.topics.unwrap_or_default()),
        })
    }
}

/// Why a token that did not parse was refused, in the token's own terms (the JWT library's messages name Rust
/// types, parser positions and algorithms this server does not accept).
fn malformed(token: &str) -> String {
    use base64::Engine as _;
    let part = |s: &str| -> Option<serde_json::Value> {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(s.trim_end_matches('=')).ok()?;
        serde_json::from_slice(&bytes).ok()
    };
    let parts: Vec<&str> = token.split('.').collect();
    if parts.len() != 3 {
        return "the token is not a JWT (three base64url parts: header.claims.signature)".into();
    }
    let Some(header) = part(parts[0]).filter(serde_json::Value::is_object) else {
        return "the token's header is not base64url-encoded JSON".into();
    };
    match header.get("alg").and_then(serde_json::Value::as_str) {
        Some("HS256") => {}
        Some(alg) => return format!("the token must be signed with HS256, not {alg}"),
        None => return "the token's header names no algorithm (`alg`); it must be HS256".into(),
    }
    let Some(claims) = part(parts[1]).filter(serde_json::Value::is_object) else {
        return "the token's claims are not a base64url-encoded JSON object".into();
    };
    if !claims.get("sub").is_some_and(serde_json::Value::is_string) {
        return "the token has no `sub` claim (the user id, a string)".into();
    }
    for claim in ["exp", "nbf", "iat"] {
        if claims.get(claim).is_some_and(|v| !v.is_null() && !v.is_u64()) {
            return format!("the token's `{claim}` claim must be whole seconds since the Unix epoch");
        }
    }
    let topics_ok = claims
        .get("topics")
        .is_none_or(|t| t.is_null() || t.as_array().is_some_and(|a| a.iter().all(serde_json::Value::is_string)));
    if !topics_ok {
        return "the token's `topics` claim must be a list of strings".into();
    }
    "the token is malformed".into()
}

/// The `topics` claim: which `topic:` streams a token may read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct TopicPatterns {
    patterns: Vec<String>,
}

impl TopicPatterns {
    pub(crate) fn new(patterns: Vec<String>) -> Self {
        TopicPatterns { patterns }
    }

    /// The patterns, as the token's `topics` claim lists them.
    pub(crate) fn patterns(&self) -> &[String] {
        &self.patterns
    }

    /// Whether `topic` (the name after `topic:`) matches a pattern: equal to it, starting with the part before
    /// a trailing `*`, or any topic for `*`.
    pub(crate) fn allows(&self, topic: &str) -> bool {
        self.patterns.iter().any(|pattern| match pattern.strip_suffix('*') {
            Some(prefix) => topic.starts_with(prefix),
            None => pattern == topic,
        })
    }
}

/// Whether a connection of `user` holding `topics` may read `stream`; the error message when not.
pub(crate) fn authorize_stream(user: &str, topics: &TopicPatterns, stream: &StreamName<'_>) -> Result<(), String> {
    match *stream {
        StreamName::User(owner) if owner == user => Ok(()),
        StreamName::User(owner) => Err(format!("token for user {user} may not read user:{owner}")),
        StreamName::Topic(topic) if topics.allows(topic) => Ok(()),
        StreamName::Topic(topic) => Err(format!("token for user {user} may not read topic:{topic}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "s3cret";

    fn verifier() -> TokenVerifier {
        TokenVerifier::new(SECRET, Duration::from_secs(5))
    }

    #[test]
    fn issued_tokens_verify_and_carry_user_topics_and_lifetime() {
        let token = issue_token(SECRET, "alice", &["news", "sports.*"], Some(Duration::from_secs(3600)));
        let verified = verifier().verify(&token).unwrap();
        assert_eq!(verified.user, "alice");
        let left = verified.expires_in_ms.unwrap();
        assert!(left > 3_590_000 && left <= 3_600_000, "{left}");
        assert!(verified.topics.allows("news"));
        assert!(verified.topics.allows("sports.eu"));
        assert!(!verified.topics.allows("sports"));
        assert!(!verified.topics.allows("newsroom"));
        assert!(!verified.topics.allows("weather"));
    }

    #[test]
    fn tokens_without_exp_never_expire() {
        let token = issue_token(SECRET, "bob", &[], None);
        let verified = verifier().verify(&token).unwrap();
        assert_eq!(verified.expires_in_ms, None);
        assert!(!verified.topics.allows("news"), "no topics claim allows nothing");
    }

    #[test]
    fn star_allows_every_topic() {
        let patterns = TopicPatterns::new(vec!["*".into()]);
        assert!(patterns.allows("anything.at:all"));
    }

    #[test]
    fn wrong_secret_is_unauthorized() {
        let token = issue_token("other", "alice", &[], None);
        assert!(matches!(verifier().verify(&token), Err(TokenError::Unauthorized(m)) if m.contains("signature")));
    }

    #[test]
    fn garbage_is_unauthorized() {
        assert!(matches!(verifier().verify("not.a.jwt"), Err(TokenError::Unauthorized(_))));
        assert!(matches!(verifier().verify(""), Err(TokenError::Unauthorized(_))));
    }

    #[test]
    fn expiry_has_no_leeway_and_nbf_has_the_configured_one() {
        let now = 1_800_000_000_000;
        let claims =
            |exp: Option<u64>, nbf: Option<u64>| TokenClaims { sub: "alice".into(), exp, nbf, iat: None, topics: None };
        let v = verifier();
        let expired = sign_claims(SECRET, &claims(Some(now / 1000), None));
        assert!(matches!(v.verify_at(&expired, now), Err(TokenError::Expired(_))));
        let valid = sign_claims(SECRET, &claims(Some(now / 1000 + 1), None));
        assert_eq!(v.verify_at(&valid, now).unwrap().expires_in_ms, Some(1000));
        let soon = sign_claims(SECRET, &claims(None, Some(now / 1000 + 4)));
        assert!(v.verify_at(&soon, now).is_ok(), "within the nbf leeway");
        let later = sign_claims(SECRET, &claims(None, Some(now / 1000 + 60)));
        assert!(matches!(v.verify_at(&later, now), Err(TokenError::Unauthorized(m)) if m.contains("nbf")));
    }

    #[test]
    fn sub_is_required_and_validated() {
        #[derive(Serialize)]
        struct NoSub {
            exp: u64,
        }
        let token = sign_claims(SECRET, &NoSub { exp: 4_000_000_000 });
        assert!(matches!(verifier().verify(&token), Err(TokenError::Unauthorized(m)) if m.contains("sub")));
        let token = issue_token(SECRET, "not valid", &[], None);
        assert!(matches!(verifier().verify(&token), Err(TokenError::Unauthorized(m)) if m.contains("sub")));
    }

    /// Issue 12: refusals read for people — no algorithms the server does not accept, no parser internals.
    #[test]
    fn malformed_tokens_are_refused_in_the_tokens_own_terms() {
        use base64::Engine as _;
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let refusal = |token: &str| match verifier().verify(token) {
            Err(TokenError::Unauthorized(m)) => m,
            other => panic!("{other:?}"),
        };
        let none = format!("{}.{}.", b64(r#"{"alg":"none","typ":"JWT"}"#), b64(r#"{"sub":"alice"}"#));
        assert_eq!(refusal(&none), "the token must be signed with HS256, not none");
        let no_sub = sign_claims(SECRET, &serde_json::json!({"exp": 4_000_000_000u64}));
        assert_eq!(refusal(&no_sub), "the token has no `sub` claim (the user id, a string)");
        let bad_exp = sign_claims(SECRET, &serde_json::json!({"sub": "a", "exp": "soon"}));
        assert!(refusal(&bad_exp).contains("`exp`"), "{}", refusal(&bad_exp));
        assert!(refusal("a.b").contains("not a JWT"));
        for token in [none, no_sub, bad_exp] {
            let m = refusal(&token);
            assert!(!m.contains("line") && !m.contains("ES256") && !m.contains("variant"), "{m}");
        }
    }

    #[test]
    fn streams_are_authorized_per_owner_and_topic_claim() {
        let topics = TopicPatterns::new(vec!["news".into()]);
        let ok = |s: &str| authorize_stream("alice", &topics, &StreamName::parse(s).unwrap());
        assert!(ok("user:alice").is_ok());
        assert_eq!(ok("user:bob").unwrap_err(), "token for user alice may not read user:bob");
        assert!(ok("topic:news").is_ok());
        assert!(ok("topic:sports").is_err());
    }
}
