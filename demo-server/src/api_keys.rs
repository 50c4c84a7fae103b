//! API keys with scopes (protocol §9): what a key presented as `Authorization: Bearer <key>` may do.
//!
//! - `publish`: `POST /v1/publish`, `POST /v1/publish/batch`;
//! - `read`: presence and deliveries (`GET /v1/presence…`, `GET /v1/notifications/{id}/acks`);
//! - `operator`: operator actions and data (`POST /v1/admin/drop`, `GET /v1/users/{user}/devices`).
//!
//! `--api-key` (one key) has every scope, as before scopes existed. `--api-keys-file` names a file of scoped keys,
//! one per line: `NAME SCOPES KEY`, where `SCOPES` is a comma-separated list (`publish,read`, or `all`) and `KEY` is
//! the key itself or `sha256:<hex>` of it (so the file need not hold the secret). Blank lines and lines starting
//! with `#` are ignored.
//!
//! A presented key is hashed once (SHA-256) and compared with every configured key's hash in constant time.

use std::fmt;
use std::path::Path;

use sha2::{Digest, Sha256};

/// What a key may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Publish notifications.
    Publish,
    /// Read presence and deliveries (acks).
    Read,
    /// Operator actions and data: drop connections, read devices' push addresses.
    Operator,
}

impl Scope {
    /// The scope's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Publish => "publish",
            Scope::Read => "read",
            Scope::Operator => "operator",
        }
    }

    /// Every scope.
    pub const ALL: [Scope; 3] = [Scope::Publish, Scope::Read, Scope::Operator];

    fn bit(self) -> u8 {
        match self {
            Scope::Publish => 1,
            Scope::Read => 2,
            Scope::Operator => 4,
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Scope::ALL.into_iter().find(|scope| scope.as_str() == s)
    }
}

/// One API key: a name (for logs), its scopes and the SHA-256 of the key.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey {
    /// Its name in logs (never the key).
    pub name: String,
    scopes: u8,
    hash: [u8; 32],
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKey").field("name", &self.name).field("scopes", &self.scopes()).finish_non_exhaustive()
    }
}

impl ApiKey {
    /// A key named `name` with `scopes`, given as the key itself.
    pub fn new(name: impl Into<String>, scopes: &[Scope], key: &str) -> Self {
        ApiKey { name: name.into(), scopes: scopes.iter().fold(0, |acc, s| acc | s.bit()), hash: sha256(key) }
    }

    /// A key with every scope (what `--api-key` configures).
    pub fn all_scopes(name: impl Into<String>, key: &str) -> Self {
        ApiKey::new(name, &Scope::ALL, key)
    }

    /// Whether the key has `scope`.
    pub fn has(&self, scope: Scope) -> bool {
        self.scopes & scope.bit() != 0
    }

    /// The key's scopes.
    pub fn scopes(&self) -> Vec<Scope> {
        Scope::ALL.into_iter().filter(|s| self.has(*s)).collect()
    }
}

fn sha256(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// Compares without an early exit on the first differing byte.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Finds the key `presented` is, if any (every configured key is compared, in constant time each).
pub(crate) fn find<'a>(keys: &'a [ApiKey], presented: &str) -> Option<&'a ApiKey> {
    let hash = sha256(presented);
    let mut found = None;
    for key in keys {
        if constant_time_eq(&key.hash, &hash) && found.is_none() {
            found = Some(key);
        }
    }
    found
}

/// Reads an API keys file (see the module documentation). Errors name the line and what is wrong.
pub fn load_file(path: &Path) -> Result<Vec<ApiKey>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("--api-keys-file {}: cannot read it: {e}", path.display()))?;
    parse_file(&text).map_err(|e| format!("--api-keys-file {}: {e}", path.display()))
}

/// Parses the text of an API keys file.
pub fn parse_file(text: &str) -> Result<Vec<ApiKey>, String> {
    let mut keys = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let n = i + 1;
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [name, scopes, key] = fields[..] else {
            return Err(format!("line {n}: expected `NAME SCOPES KEY`, got {} fields", fields.len()));
        };
        let scopes: Vec<Scope> = if scopes == "all" {
            Scope::ALL.to_vec()
        } else {
            scopes
                .split(',')
                .map(|s| {
                    Scope::parse(s).ok_or_else(|| {
                        format!("line {n}: unknown scope {s:?} (expected publish, read, operator or all)")
                    })
                })
                .collect::<Result<_, _>>()?
        };
        let hash = match key.strip_prefix("sha256:") {
            Some(hex) => {
                parse_hex(hex).ok_or_else(|| format!("line {n}: sha256: must be followed by 64 hex digits"))?
            }
            None if key.len() < 16 => return Err(format!("line {n}: the key of {name} is shorter than 16 characters")),
            None => sha256(key),
        };
        if keys.iter().any(|k: &ApiKey| k.name == name) {
            return Err(format!("line {n}: the name {name} is used twice"));
        }
        if keys.iter().any(|k: &ApiKey| k.hash == hash) {
            return Err(format!("line {n}: the key of {name} is also another name's key"));
        }
        keys.push(ApiKey { name: name.to_owned(), scopes: scopes.iter().fold(0, |a, s| a | s.bit()), hash });
    }
    Ok(keys)
}

fn parse_hex(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_of_scoped_keys() {
        let keys = parse_file(
            "# name scopes key\n\
             backend   publish         pk_0123456789abcdef\n\
             \n\
             dashboard read,operator   sha256:4a6b3e4c0c3b4f8d1dbcb4b8f2e2a4c7e0b8a1d6f3c2b5a4e7d9c8b7a6f5e4d3\n\
             ops       all             op_0123456789abcdef\n",
        )
        .unwrap();
        assert_eq!(keys.len(), 3);
        let backend = find(&keys, "pk_0123456789abcdef").unwrap();
        assert_eq!((backend.name.as_str(), backend.scopes()), ("backend", vec![Scope::Publish]));
        assert_eq!(find(&keys, "op_0123456789abcdef").unwrap().scopes(), Scope::ALL.to_vec());
        assert!(find(&keys, "pk_0123456789abcdeF").is_none());
        assert!(find(&keys, "").is_none());
        // A hashed key matches the key it is the hash of.
        let hashed = parse_file(&format!("h read sha256:{}", hex(&sha256("the-secret-key-1234")))).unwrap();
        assert_eq!(find(&hashed, "the-secret-key-1234").unwrap().scopes(), vec![Scope::Read]);
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn bad_lines_are_refused_with_their_number() {
        let e = |text: &str| parse_file(text).unwrap_err();
        assert_eq!(e("a publish"), "line 1: expected `NAME SCOPES KEY`, got 2 fields");
        assert_eq!(
            e("\na write 0123456789abcdef"),
            "line 2: unknown scope \"write\" (expected publish, read, operator or all)"
        );
        assert_eq!(e("a read short"), "line 1: the key of a is shorter than 16 characters");
        assert_eq!(e("a read sha256:abc"), "line 1: sha256: must be followed by 64 hex digits");
        assert_eq!(e("a read 0123456789abcdef\na publish fedcba9876543210"), "line 2: the name a is used twice");
        assert_eq!(
            e("a read 0123456789abcdef\nb publish 0123456789abcdef"),
            "line 2: the key of b is also another name's key"
        );
    }

    #[test]
    fn the_single_key_has_every_scope() {
        let key = ApiKey::all_scopes("--api-key", "k");
        assert!(Scope::ALL.iter().all(|s| key.has(*s)));
        assert!(!format!("{key:?}").contains("hash"), "the hash is not printed");
    }
}
