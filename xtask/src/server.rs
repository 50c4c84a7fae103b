//! A reference server process for the foreign-language conformance runners (Swift, Kotlin, browser): started in
//! demo mode (so runners can get tokens from `POST /v1/demo/token`) with the replay buffer and push timings the
//! scenarios expect, on a free loopback port, on the server's default store (SQLite) in a fresh data directory
//! under the target directory, pushing to the mock APNs, FCM and Web Push services of a `push-harness` process
//! (whose control API the runners read what was pushed from). Killed when dropped, and its data directory
//! removed. A small control endpoint (`TIDINGS_CONTROL_URL`, `POST /restart`) restarts the server on the same
//! port and data (the `restart_server` step).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A running server process.
pub(crate) struct ServerProcess {
    child: Arc<Mutex<Child>>,
    /// The mock push services (ends when its standard input closes, or is killed).
    harness: Child,
    data_dir: std::path::PathBuf,
    pub(crate) ws_url: String,
    pub(crate) http_url: String,
    pub(crate) api_key: String,
    /// The push harness's control API (`GET /pushes`, `POST /subscriptions/{id}`).
    pub(crate) push_harness_url: String,
    control_url: String,
}

impl ServerProcess {
    /// Environment for a runner: `TIDINGS_WS_URL`, `TIDINGS_HTTP_URL`, `TIDINGS_API_KEY`,
    /// `TIDINGS_PUSH_HARNESS_URL`, `TIDINGS_CONTROL_URL`.
    pub(crate) fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("TIDINGS_WS_URL", self.ws_url.clone()),
            ("TIDINGS_HTTP_URL", self.http_url.clone()),
            ("TIDINGS_API_KEY", self.api_key.clone()),
            ("TIDINGS_PUSH_HARNESS_URL", self.push_harness_url.clone()),
            ("TIDINGS_CONTROL_URL", self.control_url.clone()),
        ]
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let mut child = self.child.lock().unwrap_or_else(|p| p.into_inner());
        let _ = child.kill();
        let _ = child.wait();
        let _ = self.harness.kill();
        let _ = self.harness.wait();
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

/// How to start the server again (the same command line, its log appended).
#[derive(Clone)]
struct Launch {
    bin: PathBuf,
    args: Vec<std::ffi::OsString>,
    log: PathBuf,
}

impl Launch {
    fn spawn(&self) -> Result<Child, String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| format!("open {}: {e}", self.log.display()))?;
        Command::new(&self.bin)
            .args(&self.args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::from(log.try_clone().map_err(|e| e.to_string())?))
            .stderr(Stdio::from(log))
            .spawn()
            .map_err(|e| format!("start {}: {e}", self.bin.display()))
    }
}

/// Serves `POST /restart` on a loopback port: stops the server gracefully (SIGTERM), starts it again and answers
/// `200` once it is healthy (`500` with the reason otherwise). Returns the control URL.
fn control(child: Arc<Mutex<Child>>, launch: Launch, port: u16) -> Result<String, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("control port: {e}"))?;
    let url = format!("http://{}", listener.local_addr().map_err(|e| e.to_string())?);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut stream = stream;
            let mut buf = [0u8; 4096];
            let n = stream.read(&mut buf).unwrap_or(0);
            let request = String::from_utf8_lossy(&buf[..n]);
            let result = if request.starts_with("POST /restart") {
                restart(&child, &launch, port)
            } else {
                Err("unknown control request".into())
            };
            let (status, body) = match result {
                Ok(()) => ("200 OK", "restarted".to_string()),
                Err(e) => ("500 Internal Server Error", e),
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nAccess-Control-Allow-Origin: *\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    Ok(url)
}

fn restart(child: &Arc<Mutex<Child>>, launch: &Launch, port: u16) -> Result<(), String> {
    let mut child = child.lock().unwrap_or_else(|p| p.into_inner());
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().map_err(|e| e.to_string())?.is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    *child = launch.spawn()?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if healthy(port) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!("the server did not come back within 20 s (see {})", launch.log.display()))
}

/// A number member of `scenarios.json`'s `server` object (read without a JSON parser: xtask has none).
fn server_setting(scenarios: &str, key: &str) -> Result<String, String> {
    scenarios
        .split(&format!("\"{key}\":"))
        .nth(1)
        .and_then(|rest| rest.trim_start().split(|c: char| !c.is_ascii_digit()).next().map(str::to_string))
        .filter(|n| !n.is_empty())
        .ok_or_else(|| format!("scenarios.json has no server.{key}"))
}

/// Starts `push-harness` with its key files in `dir`; returns it, its control URL and the server flags.
fn start_push_harness(root: &Path, dir: &Path) -> Result<(Child, String, Vec<String>), String> {
    use std::io::BufRead as _;
    let bin = crate::target_dir(root).join("debug").join("push-harness");
    let mut child = Command::new(&bin)
        .arg("--dir")
        .arg(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("start {}: {e}", bin.display()))?;
    let mut line = String::new();
    let stdout = child.stdout.take().ok_or("push-harness has no stdout")?;
    std::io::BufReader::new(stdout).read_line(&mut line).map_err(|e| format!("read push-harness: {e}"))?;
    // {"control_url":"…","server_args":["--flag=value",…]}: strings without escapes.
    let strings: Vec<String> = line.split('"').skip(1).step_by(2).map(str::to_owned).collect();
    let control = strings
        .iter()
        .position(|s| s == "control_url")
        .and_then(|i| strings.get(i + 1).cloned())
        .ok_or_else(|| format!("push-harness printed {line:?}"))?;
    let args_at =
        strings.iter().position(|s| s == "server_args").ok_or_else(|| format!("push-harness printed {line:?}"))?;
    Ok((child, control, strings[args_at + 1..].to_vec()))
}

/// Builds and starts `tidings-server` for conformance runs. `replay_max_items` comes from
/// `tests/conformance/scenarios.json` (`server.replay_max_items`). The server logs to
/// `target/conformance-server-<suite>.log` (suites run in parallel, each with its own server).
pub(crate) fn start_conformance_server(root: &Path, suite: &str) -> Result<ServerProcess, String> {
    start_conformance_server_serving(root, suite, None)
}

/// Where the conformance server of `suite` logs.
pub(crate) fn log_path(root: &Path, suite: &str) -> std::path::PathBuf {
    crate::target_dir(root).join(format!("conformance-server-{suite}.log"))
}

/// [`start_conformance_server`], also serving `web_root`'s files at `/` (`--web-root`: the browser runner's
/// pages load the npm package from the server they test against).
pub(crate) fn start_conformance_server_serving(
    root: &Path,
    suite: &str,
    web_root: Option<&Path>,
) -> Result<ServerProcess, String> {
    crate::build_host(root)?;
    let scenarios = std::fs::read_to_string(root.join("tests/conformance/scenarios.json"))
        .map_err(|e| format!("read scenarios.json: {e}"))?;
    let max_items = server_setting(&scenarios, "replay_max_items")?;
    let push_after = server_setting(&scenarios, "push_after_ms")?;
    let digest_window = server_setting(&scenarios, "digest_window_secs")?;
    let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map_err(|e| e.to_string())?.port();
    let bin = crate::target_dir(root).join("debug").join("tidings-server");
    let log_path = log_path(root, suite);
    let log = std::fs::File::create(&log_path).map_err(|e| format!("create {}: {e}", log_path.display()))?;
    let data_dir = crate::target_dir(root).join(format!("conformance-data-{port}"));
    let _ = std::fs::remove_dir_all(&data_dir);
    drop(log);
    let keys = data_dir.join("push-keys");
    std::fs::create_dir_all(&keys).map_err(|e| format!("create {}: {e}", keys.display()))?;
    let (harness, push_harness_url, push_args) = start_push_harness(root, &keys)?;
    let mut args: Vec<std::ffi::OsString> =
        ["--demo", "--bind", &format!("127.0.0.1:{port}"), "--replay-max-items", &max_items]
            .iter()
            .map(Into::into)
            .collect();
    for a in ["--push-after-ms", &push_after, "--digest-window-secs", &digest_window] {
        args.push(a.into());
    }
    args.extend(push_args.iter().map(Into::into));
    args.push("--store".into());
    args.push("sqlite".into());
    args.push("--data-dir".into());
    args.push(data_dir.join("db").into());
    if let Some(web_root) = web_root {
        args.push("--web-root".into());
        args.push(web_root.into());
    }
    let launch = Launch { bin, args, log: log_path.clone() };
    let child = Arc::new(Mutex::new(launch.spawn()?));
    let control_url = control(child.clone(), launch, port)?;
    let server = ServerProcess {
        child,
        harness,
        push_harness_url,
        data_dir,
        ws_url: format!("ws://127.0.0.1:{port}/v1/ws"),
        http_url: format!("http://127.0.0.1:{port}"),
        api_key: "tidings-dev-key".into(),
        control_url,
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if healthy(port) {
            eprintln!("== conformance server on 127.0.0.1:{port} (SQLite store, replay buffer {max_items})");
            return Ok(server);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!("the conformance server did not become healthy within 20 s (see {})", log_path.display()))
}

fn healthy(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    if s.write_all(b"GET /healthz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").is_err() {
        return false;
    }
    let mut reply = String::new();
    let _ = s.read_to_string(&mut reply);
    reply.starts_with("HTTP/1.1 200") || reply.starts_with("HTTP/1.0 200")
}
