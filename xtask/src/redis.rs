//! A Redis server for the test command: Debian's `redis-server` (installed when missing), started on loopback on a
//! free port with a configuration file in a temporary directory (no persistence), and stopped when the guard is
//! dropped — also when the tests fail.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where Debian installs the server.
pub(crate) const REDIS_SERVER: &str = "/usr/bin/redis-server";

/// A running `redis-server`; stopped (and its directory removed) on drop.
pub(crate) struct RedisServer {
    child: Child,
    dir: PathBuf,
    port: u16,
}

impl RedisServer {
    /// Installs Debian's `redis-server` when missing and starts one.
    pub(crate) fn start() -> Result<RedisServer, String> {
        if !Path::new(REDIS_SERVER).exists() {
            crate::apt_install(&["redis-server"])?;
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("cannot find a free port for redis-server: {e}"))?
            .port();
        let dir = std::env::temp_dir().join(format!("tidings-xtask-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        let conf = dir.join("redis.conf");
        let text = format!(
            "bind 127.0.0.1\nport {port}\nsave \"\"\nappendonly no\ndir {}\nlogfile {}\ndaemonize no\nmaxclients 10000\n",
            dir.display(),
            dir.join("redis.log").display()
        );
        std::fs::write(&conf, text).map_err(|e| format!("write {}: {e}", conf.display()))?;
        let child = Command::new(REDIS_SERVER)
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {REDIS_SERVER}: {e}"))?;
        let server = RedisServer { child, dir, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if server.ping() {
                eprintln!("== redis-server on 127.0.0.1:{port} (stopped at the end)");
                return Ok(server);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let log = std::fs::read_to_string(server.dir.join("redis.log")).unwrap_or_default();
        Err(format!("redis-server did not answer on port {port} within 10 s; its log:\n{log}"))
    }

    fn ping(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else { return false };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
        let mut reply = [0u8; 7];
        stream.write_all(b"PING\r\n").is_ok() && stream.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
    }

    /// `redis://127.0.0.1:PORT`.
    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
