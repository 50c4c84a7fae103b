//! `push-harness --dir DIR`: starts the mock APNs, FCM and Web Push services and the harness's control API
//! (see `tidings_push_mocks::harness`), writes the key files a server needs into `DIR`, prints one JSON line —
//! `{"control_url":"http://127.0.0.1:…","server_args":["--vapid-public-key",…]}` — and runs until its standard
//! input closes (its parent, `cargo xtask`, ends) or it is killed.

use std::io::BufRead as _;
use std::sync::Arc;

use tidings_push_mocks::harness::PushHarness;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let dir = match args.iter().position(|a| a == "--dir").and_then(|i| args.get(i + 1)) {
        Some(dir) => std::path::PathBuf::from(dir),
        None => anyhow::bail!("usage: push-harness --dir DIR"),
    };
    std::fs::create_dir_all(&dir)?;
    let harness = Arc::new(PushHarness::start(&dir).await?);
    let (control_url, _task) = harness.serve_control().await?;
    println!("{}", serde_json::json!({"control_url": control_url, "server_args": harness.settings().args()}));
    // Until stdin closes.
    tokio::task::spawn_blocking(|| {
        let stdin = std::io::stdin();
        for line in stdin.lock().lines() {
            if line.is_err() {
                break;
            }
        }
    })
    .await?;
    Ok(())
}
