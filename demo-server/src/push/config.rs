//! Push provider configuration: flags and environment variables, checked at startup ([`PushConfig::load`]) so a
//! wrong key file or a half-configured provider stops the server with a clear message instead of failing the
//! first push.

use std::fmt;
use std::path::{Path, PathBuf};

use jsonwebtoken::EncodingKey;

use super::apns::{ApnsCredentials, PRODUCTION_URL, SANDBOX_URL};
use super::fcm::{FCM_URL, FcmEndpoints, ServiceAccount};
use super::http::TlsRoots;
use super::webpush::VapidKey;

/// The push providers' settings (`tidings-server --help` lists them under these names). Every provider is
/// optional; a provider with some of its settings but not all is an error.
#[derive(Clone, PartialEq, Eq, clap::Args)]
pub struct PushConfig {
    /// VAPID private key (base64url of the 32-byte P-256 scalar, as `web-push generate-vapid-keys` prints it),
    /// which signs Web Push requests (RFC 8292). Needs --vapid-public-key (its public half) and --vapid-subject.
    #[arg(long, env = "TIDINGS_VAPID_PRIVATE_KEY", hide_env_values = true)]
    pub vapid_private_key: Option<String>,
    /// VAPID contact, a `mailto:` or `https:` URL: the `sub` push services see (Apple's requires it).
    #[arg(long, env = "TIDINGS_VAPID_SUBJECT")]
    pub vapid_subject: Option<String>,
    /// APNs signing key: the `.p8` file (PKCS#8 PEM) from the Apple developer account.
    #[arg(long, env = "TIDINGS_APNS_KEY_FILE")]
    pub apns_key_file: Option<PathBuf>,
    /// The APNs key's 10-character key id.
    #[arg(long, env = "TIDINGS_APNS_KEY_ID")]
    pub apns_key_id: Option<String>,
    /// The 10-character Apple team id.
    #[arg(long, env = "TIDINGS_APNS_TEAM_ID")]
    pub apns_team_id: Option<String>,
    /// The app's bundle id (`apns-topic`).
    #[arg(long, env = "TIDINGS_APNS_TOPIC")]
    pub apns_topic: Option<String>,
    /// APNs endpoint for devices registered as `apns` (production builds).
    #[arg(long, env = "TIDINGS_APNS_URL", default_value = PRODUCTION_URL)]
    pub apns_url: String,
    /// APNs endpoint for devices registered as `apns_sandbox` (development builds).
    #[arg(long, env = "TIDINGS_APNS_SANDBOX_URL", default_value = SANDBOX_URL)]
    pub apns_sandbox_url: String,
    /// FCM service-account JSON key file (Firebase console → Project settings → Service accounts).
    #[arg(long, env = "TIDINGS_FCM_SERVICE_ACCOUNT")]
    pub fcm_service_account: Option<PathBuf>,
    /// FCM API base URL.
    #[arg(long, env = "TIDINGS_FCM_URL", default_value = FCM_URL)]
    pub fcm_url: String,
    /// OAuth2 token endpoint for FCM (default: the service account's `token_uri`).
    #[arg(long, env = "TIDINGS_FCM_TOKEN_URL")]
    pub fcm_token_url: Option<String>,
    /// Extra trusted root certificates (PEM) for the push senders' TLS, on top of the built-in Mozilla roots
    /// (a TLS-inspecting proxy, or a test CA).
    #[arg(long, env = "TIDINGS_PUSH_CA_FILE")]
    pub push_ca_file: Option<PathBuf>,
}

impl Default for PushConfig {
    fn default() -> Self {
        PushConfig {
            vapid_private_key: None,
            vapid_subject: None,
            apns_key_file: None,
            apns_key_id: None,
            apns_team_id: None,
            apns_topic: None,
            apns_url: PRODUCTION_URL.into(),
            apns_sandbox_url: SANDBOX_URL.into(),
            fcm_service_account: None,
            fcm_url: FCM_URL.into(),
            fcm_token_url: None,
            push_ca_file: None,
        }
    }
}

impl fmt::Debug for PushConfig {
    /// With the VAPID private key redacted.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PushConfig")
            .field("vapid_private_key", &self.vapid_private_key.as_ref().map(|_| "<redacted>"))
            .field("vapid_subject", &self.vapid_subject)
            .field("apns_key_file", &self.apns_key_file)
            .field("apns_key_id", &self.apns_key_id)
            .field("apns_team_id", &self.apns_team_id)
            .field("apns_topic", &self.apns_topic)
            .field("apns_url", &self.apns_url)
            .field("apns_sandbox_url", &self.apns_sandbox_url)
            .field("fcm_service_account", &self.fcm_service_account)
            .field("fcm_url", &self.fcm_url)
            .field("fcm_token_url", &self.fcm_token_url)
            .field("push_ca_file", &self.push_ca_file)
            .finish()
    }
}

/// A loaded configuration: the keys read and checked.
#[derive(Debug, Clone, Default)]
pub struct PushCredentials {
    /// Web Push: the VAPID key and subject.
    pub vapid: Option<(VapidKey, String)>,
    /// APNs.
    pub apns: Option<ApnsCredentials>,
    /// FCM: the account, its key, the endpoints.
    pub fcm: Option<(ServiceAccount, EncodingKey, FcmEndpoints)>,
    /// Trust roots for all of them.
    pub roots: TlsRoots,
}

fn read(flag: &str, path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("{flag} {}: cannot read it: {e}", path.display()))
}

fn check_url(flag: &str, url: &str) -> Result<(), String> {
    let rest = url.strip_prefix("https://").ok_or_else(|| format!("{flag} {url:?}: must be an https:// URL"))?;
    if rest.is_empty() || rest.starts_with('/') || url.chars().any(char::is_whitespace) {
        return Err(format!("{flag} {url:?}: not a URL"));
    }
    Ok(())
}

fn apple_id(flag: &str, value: &str) -> Result<(), String> {
    if value.len() != 10 || !value.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(format!("{flag} {value:?}: must be the 10-character id from the Apple developer account"));
    }
    Ok(())
}

impl PushConfig {
    /// Whether any provider is configured.
    pub fn any(&self) -> bool {
        self.vapid_private_key.is_some() || self.apns_key_file.is_some() || self.fcm_service_account.is_some()
    }

    /// Reads and checks everything. `vapid_public_key`: the server's `--vapid-public-key`, which must be the
    /// public half of `--vapid-private-key`. Errors name the flag and say what is wrong.
    pub fn load(&self, vapid_public_key: Option<&str>) -> Result<PushCredentials, String> {
        let mut out = PushCredentials::default();
        if let Some(path) = &self.push_ca_file {
            out.roots = TlsRoots::with_pem(read("--push-ca-file", path)?.as_bytes())
                .map_err(|e| format!("--push-ca-file {}: {e}", path.display()))?;
        }
        match (&self.vapid_private_key, &self.vapid_subject) {
            (None, None) => {}
            (None, Some(_)) => return Err("--vapid-subject is set without --vapid-private-key".into()),
            (Some(_), None) => {
                return Err(
                    "--vapid-private-key needs --vapid-subject (mailto: or https: contact for push services)".into()
                );
            }
            (Some(private), Some(subject)) => {
                let key = VapidKey::from_base64url(private).map_err(|e| format!("--vapid-private-key {e}"))?;
                if !(subject.starts_with("mailto:") || subject.starts_with("https://")) || subject.len() < 10 {
                    return Err(format!("--vapid-subject {subject:?}: must be a mailto: or https: URL"));
                }
                match vapid_public_key {
                    None => {
                        return Err(format!(
                            "--vapid-private-key needs --vapid-public-key (browsers subscribe with it); for this \
                             private key it is {}",
                            key.public_key()
                        ));
                    }
                    Some(public) if public.trim().trim_end_matches('=') != key.public_key() => {
                        return Err(format!(
                            "--vapid-public-key is not the public half of --vapid-private-key (which is {})",
                            key.public_key()
                        ));
                    }
                    Some(_) => {}
                }
                out.vapid = Some((key, subject.clone()));
            }
        }
        let apns = [
            ("--apns-key-file", self.apns_key_file.is_some()),
            ("--apns-key-id", self.apns_key_id.is_some()),
            ("--apns-team-id", self.apns_team_id.is_some()),
            ("--apns-topic", self.apns_topic.is_some()),
        ];
        if apns.iter().any(|(_, set)| *set) {
            let missing: Vec<&str> = apns.iter().filter(|(_, set)| !set).map(|(flag, _)| *flag).collect();
            if !missing.is_empty() {
                return Err(format!("APNs is half configured: {} missing", missing.join(", ")));
            }
            let (Some(path), Some(key_id), Some(team_id), Some(topic)) =
                (&self.apns_key_file, &self.apns_key_id, &self.apns_team_id, &self.apns_topic)
            else {
                unreachable!("checked above")
            };
            let pem = read("--apns-key-file", path)?;
            let key = EncodingKey::from_ec_pem(pem.as_bytes()).map_err(|e| {
                format!("--apns-key-file {}: not a P-256 key in PKCS#8 PEM (an AuthKey_*.p8 file): {e}", path.display())
            })?;
            // Sign once: a key that parses but cannot sign (another curve) fails here, not at the first push.
            let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
            jsonwebtoken::encode(&header, &serde_json::json!({"iss": team_id}), &key)
                .map_err(|e| format!("--apns-key-file {}: cannot sign ES256 with it: {e}", path.display()))?;
            apple_id("--apns-key-id", key_id)?;
            apple_id("--apns-team-id", team_id)?;
            if topic.is_empty() || topic.chars().any(char::is_whitespace) {
                return Err(format!("--apns-topic {topic:?}: must be the app's bundle id"));
            }
            check_url("--apns-url", &self.apns_url)?;
            check_url("--apns-sandbox-url", &self.apns_sandbox_url)?;
            out.apns = Some(ApnsCredentials {
                key,
                key_id: key_id.clone(),
                team_id: team_id.clone(),
                topic: topic.clone(),
                production_url: self.apns_url.clone(),
                sandbox_url: self.apns_sandbox_url.clone(),
            });
        }
        if let Some(path) = &self.fcm_service_account {
            let json = read("--fcm-service-account", path)?;
            let (account, key) =
                ServiceAccount::parse(&json).map_err(|e| format!("--fcm-service-account {}: {e}", path.display()))?;
            let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
            jsonwebtoken::encode(&header, &serde_json::json!({"iss": account.client_email}), &key).map_err(|e| {
                format!("--fcm-service-account {}: cannot sign RS256 with its private_key: {e}", path.display())
            })?;
            check_url("--fcm-url", &self.fcm_url)?;
            if let Some(url) = self.fcm_token_url.as_deref().or(account.token_uri.as_deref()) {
                check_url("--fcm-token-url (or the key's token_uri)", url)?;
            }
            let endpoints = FcmEndpoints { api_url: self.fcm_url.clone(), token_url: self.fcm_token_url.clone() };
            out.fcm = Some((account, key, endpoints));
        } else if self.fcm_token_url.is_some() {
            return Err("--fcm-token-url is set without --fcm-service-account".into());
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use tidings_push_mocks::{ApnsTestKey, FCM_TEST_KEY_PEM, VapidTestKey, test_ca};

    use super::*;

    fn file(content: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(content.as_bytes()).unwrap();
        f
    }

    fn service_account(private_key: &str) -> String {
        serde_json::json!({
            "type": "service_account",
            "project_id": "p",
            "private_key": private_key,
            "client_email": "a@p.iam.gserviceaccount.com",
            "token_uri": "https://oauth2.googleapis.com/token",
        })
        .to_string()
    }

    #[test]
    fn nothing_configured_is_fine() {
        let loaded = PushConfig::default().load(None).unwrap();
        assert!(loaded.vapid.is_none() && loaded.apns.is_none() && loaded.fcm.is_none());
        assert!(!PushConfig::default().any());
    }

    #[test]
    fn a_complete_configuration_loads() {
        let vapid = VapidTestKey::generate();
        let apns = ApnsTestKey::generate();
        let p8 = file(&apns.p8_pem);
        let account = file(&service_account(FCM_TEST_KEY_PEM));
        let ca = file(&test_ca().cert_pem);
        let config = PushConfig {
            vapid_private_key: Some(vapid.private.clone()),
            vapid_subject: Some("mailto:ops@example.com".into()),
            apns_key_file: Some(p8.path().into()),
            apns_key_id: Some(apns.key_id.clone()),
            apns_team_id: Some(apns.team_id.clone()),
            apns_topic: Some("com.example.app".into()),
            fcm_service_account: Some(account.path().into()),
            push_ca_file: Some(ca.path().into()),
            ..PushConfig::default()
        };
        let loaded = config.load(Some(&vapid.public)).unwrap();
        assert_eq!(loaded.vapid.unwrap().0.public_key(), vapid.public);
        assert_eq!(loaded.apns.unwrap().production_url, "https://api.push.apple.com");
        assert_eq!(loaded.fcm.unwrap().0.project_id, "p");
        assert!(format!("{config:?}").contains("<redacted>") && !format!("{config:?}").contains(&vapid.private));
    }

    #[test]
    fn vapid_errors_name_the_flag_and_the_fix() {
        let vapid = VapidTestKey::generate();
        let with = |private: &str, subject: Option<&str>| PushConfig {
            vapid_private_key: Some(private.into()),
            vapid_subject: subject.map(str::to_owned),
            ..PushConfig::default()
        };
        let e = with(&vapid.private, None).load(Some(&vapid.public)).unwrap_err();
        assert!(e.contains("--vapid-subject"), "{e}");
        let e = with(&vapid.private, Some("ops@example.com")).load(Some(&vapid.public)).unwrap_err();
        assert!(e.contains("mailto:"), "{e}");
        let e = with(&vapid.private, Some("mailto:ops@example.com")).load(None).unwrap_err();
        assert!(e.contains("--vapid-public-key") && e.contains(&vapid.public), "says which public key: {e}");
        let other = VapidTestKey::generate();
        let e = with(&vapid.private, Some("mailto:ops@example.com")).load(Some(&other.public)).unwrap_err();
        assert!(e.contains("not the public half") && e.contains(&vapid.public), "{e}");
        let e = with("AAAA", Some("mailto:ops@example.com")).load(None).unwrap_err();
        assert_eq!(e, "--vapid-private-key must be 32 bytes (a P-256 private scalar); got 3");
        let e = PushConfig { vapid_subject: Some("mailto:x@y.z".into()), ..PushConfig::default() }.load(None);
        assert!(e.unwrap_err().contains("without --vapid-private-key"));
    }

    #[test]
    fn apns_errors_name_the_flag() {
        let apns = ApnsTestKey::generate();
        let p8 = file(&apns.p8_pem);
        let base = PushConfig {
            apns_key_file: Some(p8.path().into()),
            apns_key_id: Some(apns.key_id.clone()),
            apns_team_id: Some(apns.team_id.clone()),
            apns_topic: Some("com.example.app".into()),
            ..PushConfig::default()
        };
        assert!(base.load(None).is_ok());
        let half = PushConfig { apns_team_id: None, apns_topic: None, ..base.clone() };
        assert_eq!(half.load(None).unwrap_err(), "APNs is half configured: --apns-team-id, --apns-topic missing");
        let missing = PushConfig { apns_key_file: Some("/nonexistent/AuthKey.p8".into()), ..base.clone() };
        assert!(missing.load(None).unwrap_err().starts_with("--apns-key-file /nonexistent/AuthKey.p8: cannot read it"));
        let not_a_key = file("hello");
        let e = PushConfig { apns_key_file: Some(not_a_key.path().into()), ..base.clone() }.load(None).unwrap_err();
        assert!(e.contains("not a P-256 key in PKCS#8 PEM"), "{e}");
        let rsa = file(FCM_TEST_KEY_PEM);
        let e = PushConfig { apns_key_file: Some(rsa.path().into()), ..base.clone() }.load(None).unwrap_err();
        assert!(e.contains("--apns-key-file"), "an RSA key is refused: {e}");
        let e = PushConfig { apns_key_id: Some("short".into()), ..base.clone() }.load(None).unwrap_err();
        assert!(e.starts_with("--apns-key-id \"short\": must be the 10-character id"), "{e}");
        let e = PushConfig { apns_url: "http://api.push.apple.com".into(), ..base }.load(None).unwrap_err();
        assert_eq!(e, "--apns-url \"http://api.push.apple.com\": must be an https:// URL");
    }

    #[test]
    fn fcm_and_ca_errors_name_the_flag() {
        let with = |json: &str| {
            let f = file(json);
            let e = PushConfig { fcm_service_account: Some(f.path().into()), ..PushConfig::default() }.load(None);
            e.map(|_| ()).map_err(|e| e.replace(&f.path().display().to_string(), "FILE"))
        };
        assert_eq!(with(&service_account(FCM_TEST_KEY_PEM)), Ok(()));
        assert!(with("{}").unwrap_err().starts_with("--fcm-service-account FILE: is not a service-account JSON key"));
        let user = service_account(FCM_TEST_KEY_PEM).replace("service_account", "authorized_user");
        assert!(with(&user).unwrap_err().contains("has type \"authorized_user\""));
        let e = with(&service_account(&ApnsTestKey::generate().p8_pem)).unwrap_err();
        assert!(e.contains("private_key is not an RSA key") || e.contains("cannot sign RS256"), "{e}");
        let bad_ca = file("not a certificate");
        let e = PushConfig { push_ca_file: Some(bad_ca.path().into()), ..PushConfig::default() }.load(None);
        assert!(e.unwrap_err().contains("holds no PEM certificate"));
        let e =
            PushConfig { fcm_token_url: Some("https://t.example/token".into()), ..PushConfig::default() }.load(None);
        assert!(e.unwrap_err().contains("without --fcm-service-account"));
    }

    #[test]
    fn the_server_checks_it_at_startup() {
        let mut config = crate::ServerConfig::for_tests();
        config.push.apns_key_id = Some("ABC123DEFG".into());
        let e = config.validate().unwrap_err();
        assert!(e.starts_with("APNs is half configured"), "{e}");
    }
}
