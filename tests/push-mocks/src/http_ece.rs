//! An independent decryption of Web Push bodies: Python's `http_ece` (PyPI), the library `pywebpush` builds on,
//! run in a virtual environment under the target directory that is made on first use
//! (`python3 -m venv` + `pip install http_ece==1.2.1`). `TIDINGS_HTTP_ECE_PYTHON` names an interpreter that
//! already has it (CI provisions one).

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Mutex;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

/// The pinned version.
pub const HTTP_ECE_VERSION: &str = "1.2.1";

const SCRIPT: &str = r#"
import base64, json, sys
import http_ece
from cryptography.hazmat.primitives.asymmetric import ec
def b(s): return base64.urlsafe_b64decode(s + '=' * (-len(s) % 4))
out = []
for item in json.load(sys.stdin):
    key = ec.derive_private_key(int.from_bytes(b(item["private"]), "big"), ec.SECP256R1())
    try:
        plain = http_ece.decrypt(b(item["body"]), private_key=key, auth_secret=b(item["auth"]), version="aes128gcm")
        out.append({"plaintext": base64.urlsafe_b64encode(plain).decode()})
    except Exception as e:
        out.append({"error": repr(e)})
json.dump(out, sys.stdout)
"#;

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"))
}

fn works(python: &std::path::Path) -> bool {
    Command::new(python)
        .args(["-c", "import http_ece, cryptography"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A Python interpreter with `http_ece`, provisioned if needed (once per process).
pub fn python() -> anyhow::Result<PathBuf> {
    static PYTHON: Mutex<Option<PathBuf>> = Mutex::new(None);
    let mut slot = PYTHON.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = slot.as_ref() {
        return Ok(p.clone());
    }
    if let Some(p) = std::env::var_os("TIDINGS_HTTP_ECE_PYTHON").map(PathBuf::from) {
        anyhow::ensure!(works(&p), "TIDINGS_HTTP_ECE_PYTHON={} cannot import http_ece", p.display());
        *slot = Some(p.clone());
        return Ok(p);
    }
    let venv = target_dir().join("http-ece-venv");
    let python = venv.join("bin/python");
    if !works(&python) {
        let status = Command::new("python3").arg("-m").arg("venv").arg(&venv).status().map_err(|e| {
            anyhow::anyhow!(
                "python3 is needed to decrypt Web Push bodies with http_ece (install python3 and python3-venv): {e}"
            )
        })?;
        anyhow::ensure!(status.success(), "python3 -m venv {} failed (is python3-venv installed?)", venv.display());
        let status = Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check", &format!("http_ece=={HTTP_ECE_VERSION}")])
            .status()?;
        anyhow::ensure!(status.success(), "pip install http_ece=={HTTP_ECE_VERSION} failed (is PyPI reachable?)");
        anyhow::ensure!(works(&python), "{} still cannot import http_ece", python.display());
    }
    *slot = Some(python.clone());
    Ok(python)
}

/// One body to decrypt with a browser's keys.
#[derive(Clone, Debug)]
pub struct EncryptedBody {
    /// The request body (RFC 8291 message).
    pub body: Vec<u8>,
    /// The browser's private key, base64url of the 32-byte scalar.
    pub private: String,
    /// The auth secret, base64url.
    pub auth: String,
}

/// Decrypts every body with `http_ece` in one Python run: the plaintext of each, or its error.
pub fn decrypt_all(items: &[EncryptedBody]) -> anyhow::Result<Vec<Result<Vec<u8>, String>>> {
    let python = python()?;
    let input: Vec<Value> = items
        .iter()
        .map(|i| json!({"body": URL_SAFE_NO_PAD.encode(&i.body), "private": i.private, "auth": i.auth}))
        .collect();
    let mut child = Command::new(python)
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    child.stdin.take().expect("piped").write_all(Value::Array(input).to_string().as_bytes())?;
    let output = child.wait_with_output()?;
    anyhow::ensure!(output.status.success(), "the http_ece script failed ({})", output.status);
    let results: Vec<Value> = serde_json::from_slice(&output.stdout)?;
    anyhow::ensure!(results.len() == items.len(), "http_ece answered {} of {} bodies", results.len(), items.len());
    Ok(results
        .into_iter()
        .map(|r| match r["plaintext"].as_str() {
            Some(p) => URL_SAFE_NO_PAD.decode(p.trim_end_matches('=')).map_err(|e| e.to_string()),
            None => Err(r["error"].as_str().unwrap_or("no answer").to_owned()),
        })
        .collect())
}
