//! Redis for the tests: the run's shared `redis-server` (`TIDINGS_TEST_REDIS_URL`, started by `cargo xtask test`),
//! or one of a test's own (`TIDINGS_REDIS_SERVER`, default `/usr/bin/redis-server`). Run by hand without either, a
//! test prints a note and skips; under xtask (`TIDINGS_XTASK`) a missing Redis fails it.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tidings_server::broker_redis::RedisConfig;

use super::PATIENCE;

pub fn redis_binary() -> PathBuf {
    std::env::var_os("TIDINGS_REDIS_SERVER").map(PathBuf::from).unwrap_or_else(|| "/usr/bin/redis-server".into())
}

pub fn under_xtask() -> bool {
    std::env::var_os("TIDINGS_XTASK").is_some()
}

/// A `redis-server` of a test's own, on loopback in a temporary directory; killed on drop.
pub struct OwnRedis {
    child: Option<Child>,
    dir: tempfile::TempDir,
    port: u16,
}

impl OwnRedis {
    /// Starts one, or `None` (with a note) when the binary is missing outside xtask.
    pub fn start() -> Option<OwnRedis> {
        let binary = redis_binary();
        if !binary.is_file() {
            assert!(!under_xtask(), "{} is missing: cargo xtask test installs Debian's redis-server", binary.display());
            eprintln!("note: skipped: {} is missing (install redis-server, or run cargo xtask test)", binary.display());
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut redis = OwnRedis { child: None, dir: tempfile::tempdir().unwrap(), port };
        redis.restart();
        Some(redis)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Stops the server at once (SIGKILL: no goodbye to the clients).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server (again) on the same port, empty, and waits until it answers.
    pub fn restart(&mut self) {
        self.kill();
        let conf = self.dir.path().join("redis.conf");
        std::fs::write(
            &conf,
            format!(
                "bind 127.0.0.1\nport {}\nsave \"\"\nappendonly no\ndir {}\ndaemonize no\n",
                self.port,
                self.dir.path().display()
            ),
        )
        .unwrap();
        let child = Command::new(redis_binary())
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + PATIENCE;
        loop {
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
                use std::io::{Read, Write};
                let mut reply = [0u8; 7];
                let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
                if s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n" {
                    return;
                }
            }
            assert!(std::time::Instant::now() < deadline, "redis-server did not start on port {}", self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The shared Redis of the run, or one of the test's own when run by hand; `None`: skip.
pub enum TestRedis {
    Shared(String),
    Own(OwnRedis),
}

impl TestRedis {
    pub fn get() -> Option<TestRedis> {
        match std::env::var("TIDINGS_TEST_REDIS_URL") {
            Ok(url) if !url.is_empty() => Some(TestRedis::Shared(url)),
            _ => {
                assert!(!under_xtask(), "TIDINGS_TEST_REDIS_URL is not set: cargo xtask test starts redis-server");
                OwnRedis::start().map(TestRedis::Own)
            }
        }
    }

    pub fn url(&self) -> String {
        match self {
            TestRedis::Shared(url) => url.clone(),
            TestRedis::Own(own) => own.url(),
        }
    }
}

/// A key prefix no other test uses.
pub fn prefix(test: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!("t-{test}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

pub fn redis_config(url: &str, prefix: &str) -> RedisConfig {
    let mut redis = RedisConfig::new(url);
    redis.prefix = prefix.to_owned();
    redis.position_check = Duration::from_millis(200);
    redis
}
