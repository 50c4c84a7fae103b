//! PostgreSQL for tests (not part of the server's behaviour): a fresh database per test on the server
//! `cargo xtask test` provisions, and a server of a test's own that it can stop and start.
//!
//! `cargo xtask rust-tests` starts one PostgreSQL (Debian's `postgresql`, `initdb` + `pg_ctl` as the `postgres`
//! user into a temporary directory, on loopback) and passes its URL in [`DATABASE_URL_VAR`]. A test calls
//! [`server_url`] (or [`fresh_database`]): under xtask a missing URL is a failure; run by hand without it, the
//! test is skipped with a printed note.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The environment variable with the URL of the provisioned PostgreSQL (a `postgresql://` URL of a superuser's
/// maintenance database).
pub const DATABASE_URL_VAR: &str = "TIDINGS_TEST_DATABASE_URL";
/// Set by `cargo xtask` when it runs the tests: a test that needs PostgreSQL fails instead of skipping.
pub const UNDER_XTASK_VAR: &str = "TIDINGS_XTASK";

/// The provisioned server's URL; `None` (with a note on stderr) when the tests run by hand without one.
///
/// # Panics
/// Under `cargo xtask` without [`DATABASE_URL_VAR`].
pub fn server_url(test: &str) -> Option<String> {
    match std::env::var(DATABASE_URL_VAR) {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var_os(UNDER_XTASK_VAR).is_some() => panic!(
            "{test} needs PostgreSQL: {DATABASE_URL_VAR} is not set although the tests run under cargo xtask \
             (the step that runs them must start PostgreSQL and pass its URL)"
        ),
        _ => {
            eprintln!(
                "note: {test} skipped: it needs PostgreSQL. Run it with cargo xtask rust-tests, or set \
                 {DATABASE_URL_VAR}=postgresql://postgres@127.0.0.1:5432/postgres"
            );
            None
        }
    }
}

/// `url` with its database replaced by `database` (`url` must be in URL form, `postgresql://…/db?…`).
pub fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let base = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{database}?{q}"),
        None => format!("{base}/{database}"),
    }
}

/// Creates an empty database `t_<random>` on the server at `server_url` and returns its URL.
pub async fn create_database(server_url: &str) -> Result<String, String> {
    let (client, connection) =
        tokio_postgres::connect(server_url, tokio_postgres::NoTls).await.map_err(|e| format!("{server_url}: {e}"))?;
    let task = tokio::spawn(connection);
    let name = format!("t_{:016x}", fastrand::u64(..));
    client.batch_execute(&format!("CREATE DATABASE {name}")).await.map_err(|e| format!("CREATE DATABASE: {e}"))?;
    drop(client);
    let _ = task.await;
    Ok(with_database(server_url, &name))
}

/// A fresh database on the provisioned server (see [`server_url`]): its URL, or `None` when skipped.
pub async fn fresh_database(test: &str) -> Option<String> {
    let server = server_url(test)?;
    Some(create_database(&server).await.unwrap_or_else(|e| panic!("{test}: cannot create a test database: {e}")))
}

/// [`fresh_database`] for synchronous callers (on a thread of its own with its own runtime).
pub fn fresh_database_blocking(test: &str) -> Option<String> {
    let server = server_url(test)?;
    let test = test.to_owned();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
        rt.block_on(create_database(&server)).unwrap_or_else(|e| panic!("{test}: cannot create a test database: {e}"))
    })
    .join()
    .expect("the database was created")
    .into()
}

/// A PostgreSQL server of a test's own in a temporary directory (on loopback, a free port; `trust`
/// authentication), which the test can stop and start. Stopped when dropped.
#[derive(Debug)]
pub struct Cluster {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    as_postgres: bool,
}

/// The directory of Debian's PostgreSQL programs (`initdb`, `pg_ctl`): `TIDINGS_TEST_PG_BIN`, else the newest
/// `/usr/lib/postgresql/<version>/bin`.
pub fn bin_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("TIDINGS_TEST_PG_BIN") {
        return Some(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, bin)| bin.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

impl Cluster {
    /// Creates and starts a server in a fresh temporary directory.
    pub fn start() -> Result<Cluster, String> {
        let bin = bin_dir().ok_or("PostgreSQL's programs are not installed (Debian: apt-get install postgresql)")?;
        let as_postgres = is_root();
        let dir = std::env::temp_dir().join(format!("tidings-pg-{:016x}", fastrand::u64(..)));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        if as_postgres {
            let status = Command::new("chown").args(["postgres:postgres"]).arg(&dir).status();
            if !status.is_ok_and(|s| s.success()) {
                return Err(format!("cannot give {} to the postgres user", dir.display()));
            }
        }
        let port = free_port()?;
        let cluster = Cluster { bin, dir, port, as_postgres };
        cluster.run("initdb", &["-D", &cluster.data(), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"])?;
        let conf = format!(
            "listen_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{}'\nmax_connections = 200\n\
             fsync = off\nfull_page_writes = off\nshared_buffers = 32MB\n",
            cluster.dir.display()
        );
        let conf_path = Path::new(&cluster.data()).join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf_path).map_err(|e| format!("{}: {e}", conf_path.display()))?;
        text.push_str(&conf);
        std::fs::write(&conf_path, text).map_err(|e| format!("{}: {e}", conf_path.display()))?;
        cluster.resume()?;
        Ok(cluster)
    }

    /// The URL of its `postgres` database.
    pub fn url(&self) -> String {
        format!("postgresql://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Stops it (`pg_ctl stop -m fast`: connections are closed, as when PostgreSQL restarts).
    pub fn stop(&self) -> Result<(), String> {
        self.run("pg_ctl", &["stop", "-D", &self.data(), "-m", "fast", "-w"])
    }

    /// Starts it again (waits until it accepts connections).
    pub fn resume(&self) -> Result<(), String> {
        let log = format!("{}/server.log", self.dir.display());
        self.run("pg_ctl", &["start", "-D", &self.data(), "-l", &log, "-w", "-t", "60"])
    }

    /// The postmaster's process id, while it runs (the first line of `postmaster.pid`). Every other PostgreSQL
    /// process of this server is its child.
    pub fn postmaster_pid(&self) -> Option<u32> {
        let text = std::fs::read_to_string(Path::new(&self.data()).join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    fn data(&self) -> String {
        format!("{}/data", self.dir.display())
    }

    fn run(&self, program: &str, args: &[&str]) -> Result<(), String> {
        let path = self.bin.join(program);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&path);
            c
        } else {
            Command::new(&path)
        };
        let out = cmd.args(args).current_dir(&self.dir).output().map_err(|e| format!("{}: {e}", path.display()))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{program} {} failed ({}): {}{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.run("pg_ctl", &["stop", "-D", &self.data(), "-m", "immediate", "-w"]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

fn free_port() -> Result<u16, String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("no free port: {e}"))?;
    listener.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}

/// Waits until `f` holds, at most `within`.
pub async fn eventually(within: Duration, mut f: impl AsyncFnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if f().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
