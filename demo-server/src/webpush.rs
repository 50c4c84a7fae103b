//! Web Push (RFC 8030, 8291, 8292) values the server accepts: its own VAPID public key, and the subscriptions
//! browsers register (`register_push`, platform `web_push`). A sender needs all of a subscription to encrypt a
//! payload for it (RFC 8291: the endpoint, the browser's P-256 key and its 16-byte auth secret), so a subscription
//! missing any of them is refused at registration rather than found unusable when the user is offline.

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use serde_json::Value;

/// base64url, with or without padding (browsers and `web-push` tools write it without).
fn decode_base64url(text: &str) -> Result<Vec<u8>, String> {
    let engine = GeneralPurpose::new(
        &base64::alphabet::URL_SAFE,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    engine.decode(text.trim()).map_err(|e| format!("is not base64url: {e}"))
}

/// Checks a base64url uncompressed P-256 point (65 bytes: `0x04`, x, y): the form of VAPID public keys (what
/// `PushManager.subscribe` takes as `applicationServerKey`, as `web-push generate-vapid-keys` prints it) and of
/// subscriptions' `p256dh`. The error completes "the … key …".
pub(crate) fn check_p256_public_key(text: &str) -> Result<(), String> {
    let bytes = decode_base64url(text)?;
    if bytes.len() != 65 || bytes[0] != 0x04 {
        return Err(format!(
            "must be an uncompressed P-256 point (65 bytes starting with 0x04); got {} bytes",
            bytes.len()
        ));
    }
    p256::PublicKey::from_sec1_bytes(&bytes).map_err(|_| "is not a point on the P-256 curve".to_string())?;
    Ok(())
}

/// Checks a `web_push` token: `PushSubscription.toJSON()` as JSON text,
/// `{"endpoint":"https://…","expirationTime":null,"keys":{"p256dh":"…","auth":"…"}}`. Unknown members are
/// ignored. The error says which member is wrong.
pub(crate) fn check_subscription(token: &str) -> Result<(), String> {
    let v: Value = serde_json::from_str(token).map_err(|e| format!("is not JSON: {e}"))?;
    let endpoint = v.get("endpoint").and_then(Value::as_str).ok_or("has no `endpoint` string")?;
    let host = endpoint.strip_prefix("https://").ok_or("`endpoint` must be an https:// URL")?;
    if host.is_empty() || host.starts_with('/') || endpoint.chars().any(char::is_whitespace) {
        return Err(format!("`endpoint` is not a URL: {endpoint:?}"));
    }
    match v.get("expirationTime") {
        None | Some(Value::Null) | Some(Value::Number(_)) => {}
        Some(_) => return Err("`expirationTime` must be a number or null".into()),
    }
    let keys = v.get("keys").ok_or("has no `keys` (the browser's p256dh key and auth secret)")?;
    let p256dh = keys.get("p256dh").and_then(Value::as_str).ok_or("has no `keys.p256dh` string")?;
    check_p256_public_key(p256dh).map_err(|e| format!("`keys.p256dh` {e}"))?;
    let auth = keys.get("auth").and_then(Value::as_str).ok_or("has no `keys.auth` string")?;
    let secret = decode_base64url(auth).map_err(|e| format!("`keys.auth` {e}"))?;
    if secret.len() != 16 {
        return Err(format!("`keys.auth` must be 16 bytes; got {}", secret.len()));
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A public key printed by `npx web-push generate-vapid-keys`.
    pub(crate) const KEY: &str =
        "BNcRdreALRFXTkOOUHK1EtK2wtaz5Ry4YfYCA_0QTpQtUbVlUls0VJXg7A8u-Ts1XbjhazAkj7I99e8QcYP7DkM";

    fn subscription(endpoint: &str, p256dh: &str, auth: &str) -> String {
        serde_json::json!({"endpoint": endpoint, "expirationTime": null, "keys": {"p256dh": p256dh, "auth": auth}})
            .to_string()
    }

    #[test]
    fn a_complete_subscription_is_accepted() {
        let good = subscription("https://fcm.googleapis.com/fcm/send/abc:def", KEY, "AAECAwQFBgcICQoLDA0ODw");
        assert_eq!(check_subscription(&good), Ok(()));
    }

    #[test]
    fn an_incomplete_or_malformed_subscription_says_what_is_wrong() {
        let auth = "AAECAwQFBgcICQoLDA0ODw";
        for (token, says) in [
            ("not json".to_string(), "is not JSON"),
            (r#"{"endpoint":"https://push.example/x"}"#.into(), "has no `keys`"),
            (r#"{"keys":{}}"#.into(), "no `endpoint`"),
            (subscription("http://push.example/x", KEY, auth), "https://"),
            (subscription("https:///x", KEY, auth), "not a URL"),
            (subscription("https://push.example/x", "AAAA", auth), "`keys.p256dh` must be an uncompressed"),
            (subscription("https://push.example/x", KEY, "AAEC"), "`keys.auth` must be 16 bytes; got 3"),
            (subscription("https://push.example/x", KEY, "!!"), "`keys.auth` is not base64url"),
            (
                r#"{"endpoint":"https://p.example/x","expirationTime":"soon","keys":{}}"#.into(),
                "`expirationTime` must be",
            ),
        ] {
            let e = check_subscription(&token).unwrap_err();
            assert!(e.contains(says), "{token}: {e}");
        }
    }

    #[test]
    fn keys_must_be_points_on_the_curve() {
        assert_eq!(check_p256_public_key(KEY), Ok(()));
        assert_eq!(check_p256_public_key(&format!("{KEY}=")), Ok(()), "padding is allowed");
        let off_curve = "BNcRdreALRFXTkOOUHK1EtK2wtaz5Ry4YfYCA_0QTpQtAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAE";
        assert_eq!(check_p256_public_key(off_curve), Err("is not a point on the P-256 curve".into()));
        assert!(check_p256_public_key("not a key!").unwrap_err().starts_with("is not base64url"));
    }
}
