//! A PostgreSQL server for the Rust test suites: Debian's `postgresql` (installed with the apt helper when
//! missing), `initdb` + `pg_ctl` run as the unprivileged `postgres` user into a temporary directory, listening on
//! loopback (a free port) and a unix socket in that directory, `trust` authentication, stopped when the guard is
//! dropped (also when a step fails). The tests get its URL in `TIDINGS_TEST_DATABASE_URL` and create a database
//! of their own on it (`tidings_server::store::postgres::testing`), so they run in parallel.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util::{Step, run};

/// The environment variable the tests read the server's URL from.
pub(crate) const URL_VAR: &str = "TIDINGS_TEST_DATABASE_URL";

/// A running test server; stopped (and its directory removed) when dropped.
pub(crate) struct TestPostgres {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    as_postgres: bool,
}

/// The newest `/usr/lib/postgresql/<version>/bin` with `initdb`.
fn bin_dir() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, bin)| bin.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

impl TestPostgres {
    /// Installs PostgreSQL when missing, creates a cluster in a temporary directory and starts it.
    pub(crate) fn start() -> Result<TestPostgres, String> {
        let bin = match bin_dir() {
            Some(bin) => bin,
            None => {
                crate::apt_install(&["postgresql"])?;
                bin_dir().ok_or("PostgreSQL's programs are missing after installing the postgresql package")?
            }
        };
        let as_postgres = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.trim_ascii() == b"0");
        let dir = std::env::temp_dir().join(format!("tidings-test-pg-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        if as_postgres {
            // initdb refuses to run as root: the cluster belongs to Debian's postgres user.
            run(Step::new("chown the PostgreSQL test directory", "chown").args(["postgres:postgres"]).arg_path(&dir))?;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("no free port for PostgreSQL: {e}"))?
            .port();
        let pg = TestPostgres { bin, dir, port, as_postgres };
        let data = pg.data();
        pg.run(
            "initdb (test PostgreSQL)",
            "initdb",
            &["-D", &data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"],
        )?;
        let conf = format!(
            "\nlisten_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{}'\nmax_connections = 400\n\
             fsync = off\nfull_page_writes = off\nshared_buffers = 64MB\n",
            pg.dir.display()
        );
        let conf_path = Path::new(&data).join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf_path).map_err(|e| format!("{}: {e}", conf_path.display()))?;
        text.push_str(&conf);
        std::fs::write(&conf_path, text).map_err(|e| format!("{}: {e}", conf_path.display()))?;
        let log = format!("{}/server.log", pg.dir.display());
        pg.run("pg_ctl start (test PostgreSQL)", "pg_ctl", &["start", "-D", &data, "-l", &log, "-w", "-t", "60"])?;
        eprintln!("xtask: test PostgreSQL at {} (data in {})", pg.url(), pg.dir.display());
        Ok(pg)
    }

    /// The URL of its `postgres` database (superuser `postgres`, no password).
    pub(crate) fn url(&self) -> String {
        format!("postgresql://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Its programs' directory (tests that start a server of their own use the same version).
    pub(crate) fn bin(&self) -> &Path {
        &self.bin
    }

    fn data(&self) -> String {
        format!("{}/data", self.dir.display())
    }

    fn run(&self, name: &str, program: &str, args: &[&str]) -> Result<(), String> {
        let path = self.bin.join(program);
        let step = if self.as_postgres {
            Step::new(name, "runuser").args(["-u", "postgres", "--"]).arg_path(&path)
        } else {
            Step::new(name, path.into_os_string())
        };
        run(step.args(args.iter().copied()).dir(&self.dir))
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        let data = self.data();
        if let Err(e) =
            self.run("pg_ctl stop (test PostgreSQL)", "pg_ctl", &["stop", "-D", &data, "-m", "immediate", "-w"])
        {
            eprintln!("xtask: {e}");
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
