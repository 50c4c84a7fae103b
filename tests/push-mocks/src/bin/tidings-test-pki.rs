//! `tidings-test-pki DIR`: writes a fresh test CA (`ca.pem`) and a server certificate it signed for `localhost` and
//! `127.0.0.1` (`cert.pem`, `key.pem`) into DIR, for tests outside Rust (the browser suite's `wss` test).

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let Some(dir) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: tidings-test-pki DIR");
        return ExitCode::from(2);
    };
    let pki = tidings_push_mocks::TestPki::new("Tidings test CA");
    let server = pki.server_cert("localhost");
    let written = std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::write(dir.join("ca.pem"), &pki.ca_pem))
        .and_then(|()| std::fs::write(dir.join("cert.pem"), &server.cert_pem))
        .and_then(|()| std::fs::write(dir.join("key.pem"), &server.key_pem));
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tidings-test-pki: cannot write into {}: {e}", dir.display());
            ExitCode::FAILURE
        }
    }
}
