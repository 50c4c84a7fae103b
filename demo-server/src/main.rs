//! `tidings-server`: the Tidings reference server.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::bail;
use clap::{Parser, ValueEnum};
use tidings_server::limits::{IpNet, Rate};
use tidings_server::tls::TlsConfig;
use tidings_server::{DEFAULT_DATA_DIR, DEMO_API_KEY, DEMO_JWT_SECRET, ServerConfig, StoreConfig, Synchronous};
use tracing::{info, warn};
use tracing_subscriber::EnvFilter;

/// Where the server keeps its data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum StoreKind {
    /// The embedded SQLite database in --data-dir: durable (the default).
    Sqlite,
    /// Process memory: nothing survives a restart (tests, benchmarks).
    Memory,
    /// A PostgreSQL database (--database-url), shared by several server processes: durable.
    Postgres,
}

/// SQLite's `synchronous` setting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum SyncMode {
    /// Every commit is synced to disk before the publish is acknowledged: survives power loss.
    Full,
    /// Commits are synced at checkpoints: survives a process crash, may lose the last commits in a power loss.
    Normal,
}

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Colours in text logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum LogColor {
    /// When the output is a terminal and NO_COLOR is not set.
    Auto,
    /// Always.
    Always,
    /// Never.
    Never,
}

/// The Tidings reference server: real-time notifications over WebSocket (protocol v1).
///
/// Log verbosity follows RUST_LOG (default `info`; `tidings_server=debug` adds a line per publish).
#[derive(Debug, Parser)]
#[command(name = "tidings-server", version)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "TIDINGS_BIND", default_value = "127.0.0.1:8080")]
    bind: SocketAddr,
    /// HS256 secret client tokens are signed with (required unless --demo).
    #[arg(long, env = "TIDINGS_JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,
    /// API key with every scope (publish, read, operator). Required unless --api-keys-file or --demo.
    #[arg(long, env = "TIDINGS_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// File of scoped API keys, one `NAME SCOPES KEY` per line (scopes: publish, read, operator, all; KEY may be
    /// sha256:<hex> of the key).
    #[arg(long, env = "TIDINGS_API_KEYS_FILE")]
    api_keys_file: Option<std::path::PathBuf>,
    /// Terminate TLS with this certificate chain (PEM, leaf first); needs --tls-key. Reloaded when it changes.
    #[arg(long, env = "TIDINGS_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, env = "TIDINGS_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
    /// How often the certificate and key files are checked for changes, in seconds (SIGHUP reloads at once).
    #[arg(long, env = "TIDINGS_TLS_RELOAD_SECS", default_value_t = 10)]
    tls_reload_secs: u64,
    /// Proxies (addresses or CIDR blocks, comma-separated) whose X-Forwarded-For names the client address.
    #[arg(long, env = "TIDINGS_TRUSTED_PROXIES", value_delimiter = ',')]
    trusted_proxies: Vec<String>,
    /// Failed authentications (tokens, API keys) allowed at once per client address (0: no limit).
    #[arg(long, env = "TIDINGS_AUTH_FAILURE_BURST", default_value_t = 10)]
    auth_failure_burst: u32,
    /// Failed authentications allowed per minute and client address after the burst (0: no limit).
    #[arg(long, env = "TIDINGS_AUTH_FAILURES_PER_MINUTE", default_value_t = 10)]
    auth_failures_per_minute: u32,
    /// New WebSocket connections and SSE streams allowed at once per client address (0: no limit).
    #[arg(long, env = "TIDINGS_CONNECTION_BURST", default_value_t = 100)]
    connection_burst: u32,
    /// New WebSocket connections and SSE streams allowed per minute and client address after the burst (0: no limit).
    #[arg(long, env = "TIDINGS_CONNECTIONS_PER_MINUTE", default_value_t = 1200)]
    connections_per_minute: u32,
    /// On SIGTERM, how long connections and requests get to finish before they are cut, in seconds.
    #[arg(long, env = "TIDINGS_SHUTDOWN_GRACE_SECS", default_value_t = 5)]
    shutdown_grace_secs: u64,
    /// Heartbeat interval in milliseconds (the server closes with 4010 after twice this without traffic).
    #[arg(long, env = "TIDINGS_HEARTBEAT_MS", default_value_t = 25_000)]
    heartbeat_ms: u64,
    /// Most notifications kept per stream for replay.
    #[arg(long, env = "TIDINGS_REPLAY_MAX_ITEMS", default_value_t = 1000)]
    replay_max_items: usize,
    /// Oldest notification kept per stream for replay, in seconds.
    #[arg(long, env = "TIDINGS_REPLAY_MAX_AGE_SECS", default_value_t = 86_400)]
    replay_max_age_secs: u64,
    /// Where to keep streams, idempotency keys, acks and push addresses.
    #[arg(long, env = "TIDINGS_STORE", value_enum, default_value_t = StoreKind::Sqlite)]
    store: StoreKind,
    /// The PostgreSQL database of --store postgres: postgres://user:password@host:port/database (the schema is
    /// created or migrated at startup; every server process of a deployment uses the same one).
    #[arg(long, env = "TIDINGS_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// The SQLite store's directory (holds tidings.db and tidings.lock; created if missing).
    #[arg(long, env = "TIDINGS_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
    data_dir: std::path::PathBuf,
    /// What a SQLite commit (and so a publish's 2xx) waits for: full = synced to disk (survives power loss),
    /// normal = handed to the OS (survives a process crash).
    #[arg(long, env = "TIDINGS_SQLITE_SYNCHRONOUS", value_enum, default_value_t = SyncMode::Full)]
    sqlite_synchronous: SyncMode,
    /// How long the SQLite store keeps persistent notifications, in seconds (bufferable ones: the replay limits).
    #[arg(long, env = "TIDINGS_PERSISTENT_RETENTION_SECS", default_value_t = 30 * 86_400)]
    persistent_retention_secs: u64,
    /// How long the SQLite store keeps acks, in seconds.
    #[arg(long, env = "TIDINGS_ACK_RETENTION_SECS", default_value_t = 7 * 86_400)]
    ack_retention_secs: u64,
    /// How long inbox items are kept, in seconds.
    #[arg(long, env = "TIDINGS_INBOX_RETENTION_SECS", default_value_t = 90 * 86_400)]
    inbox_retention_secs: u64,
    /// Most items one user's inbox holds (the oldest are removed beyond it).
    #[arg(long, env = "TIDINGS_INBOX_MAX_ITEMS", default_value_t = 10_000)]
    inbox_max_items: usize,
    /// Most live frames queued per connection before it is closed as a slow consumer (4014).
    #[arg(long, env = "TIDINGS_OUTBOUND_QUEUE_LIMIT", default_value_t = 8192)]
    outbound_queue_limit: usize,
    /// Refuse connections beyond this many (try_again_later, 4013).
    #[arg(long, env = "TIDINGS_MAX_CONNECTIONS")]
    max_connections: Option<usize>,
    /// WebSocket read buffer per connection, in bytes (allocated up front for every connection).
    #[arg(long, env = "TIDINGS_WS_READ_BUFFER_BYTES", default_value_t = ServerConfig::DEFAULT_WS_READ_BUFFER_BYTES)]
    ws_read_buffer_bytes: usize,
    /// Outgoing bytes collected per connection before a socket write (the buffer grows only while sending).
    #[arg(long, env = "TIDINGS_WS_WRITE_BUFFER_BYTES", default_value_t = ServerConfig::DEFAULT_WS_WRITE_BUFFER_BYTES)]
    ws_write_buffer_bytes: usize,
    /// Log format.
    #[arg(long, env = "TIDINGS_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Colours in text logs: auto = only when the output is a terminal and NO_COLOR is not set.
    #[arg(long, env = "TIDINGS_LOG_COLOR", value_enum, default_value_t = LogColor::Auto)]
    log_color: LogColor,
    /// Development mode: default secret and API key, POST /v1/demo/token, and a demo publisher.
    #[arg(long, env = "TIDINGS_DEMO")]
    demo: bool,
    /// With --demo: no demo publisher (nor its subscriber `alice`); only what you publish is sent.
    #[arg(long, env = "TIDINGS_NO_DEMO_PUBLISHER")]
    no_demo_publisher: bool,
    /// Serve this directory's files at `/` (the browser demo page and the npm package).
    #[arg(long, env = "TIDINGS_WEB_ROOT")]
    web_root: Option<std::path::PathBuf>,
    /// Your VAPID public key (base64url, as `web-push generate-vapid-keys` prints it), served at
    /// GET /v1/push/vapid-public-key for browsers subscribing to Web Push. Its private half is --vapid-private-key.
    #[arg(long, env = "TIDINGS_VAPID_PUBLIC_KEY")]
    vapid_public_key: Option<String>,
    /// Push providers (checked at startup). Devices whose provider is not configured are not pushed to.
    #[command(flatten)]
    push: tidings_server::push::PushConfig,
    /// How long an important notification waits for an ack from any of the user's devices before it is pushed to
    /// a user with a live session, in ms (publishers override it per publish with push.after_ms).
    #[arg(long, env = "TIDINGS_PUSH_AFTER_MS", default_value_t = 5000)]
    push_after_ms: u64,
    /// The digest window of informational notifications, in seconds: a user without a live session gets at most
    /// one digest push per group per window.
    #[arg(long, env = "TIDINGS_DIGEST_WINDOW_SECS", default_value_t = 600)]
    digest_window_secs: u64,
    /// Run as one of several processes on this Redis (`redis://[user:password@]host:port[/db]`): fan-out,
    /// presence and control commands (session replacement, operator drops) go through it. Unset: one process.
    #[arg(long, env = "TIDINGS_REDIS_URL", hide_env_values = true)]
    redis_url: Option<String>,
    /// Prefix of the keys and channels in Redis (deployments sharing a Redis need different ones).
    #[arg(long, env = "TIDINGS_REDIS_PREFIX", default_value = "tidings")]
    redis_prefix: String,
}

/// Whether text logs get ANSI colours: never into a file or pipe (a log file full of escape codes is unreadable).
fn use_color(choice: LogColor, is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    match choice {
        LogColor::Always => true,
        LogColor::Never => false,
        LogColor::Auto => is_terminal && no_color.is_none_or(|v| v.is_empty()),
    }
}

fn init_logging(format: LogFormat, color: LogColor) {
    use std::io::IsTerminal as _;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Logs go to standard output (the fmt subscriber's default writer).
    let ansi = use_color(color, std::io::stdout().is_terminal(), std::env::var_os("NO_COLOR").as_deref());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_target(false);
    match format {
        LogFormat::Text => builder.with_ansi(ansi).init(),
        LogFormat::Json => builder.json().flatten_event(true).with_ansi(false).init(),
    }
}

fn config_from(args: &Args) -> anyhow::Result<ServerConfig> {
    let keys_file = args.api_keys_file.is_some();
    let (secret, api_key) = match (&args.jwt_secret, &args.api_key, args.demo) {
        (Some(secret), Some(key), _) => (secret.clone(), key.clone()),
        (Some(secret), None, false) if keys_file => (secret.clone(), String::new()),
        (secret, key, true) => (
            secret.clone().unwrap_or_else(|| DEMO_JWT_SECRET.to_owned()),
            key.clone().unwrap_or_else(|| if keys_file { String::new() } else { DEMO_API_KEY.to_owned() }),
        ),
        (None, _, false) => bail!(
            "no JWT secret configured: pass --jwt-secret or set TIDINGS_JWT_SECRET \
             (or run with --demo for development defaults)"
        ),
        (_, None, false) => bail!(
            "no API key configured: pass --api-key (or TIDINGS_API_KEY), or --api-keys-file \
             (or run with --demo for development defaults)"
        ),
    };
    let mut config = ServerConfig::new(args.bind, secret, api_key);
    if let Some(path) = &args.api_keys_file {
        config.api_keys = tidings_server::api_keys::load_file(path).map_err(|e| anyhow::anyhow!(e))?;
    }
    config.tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            let mut tls = TlsConfig::new(cert, key);
            tls.reload_interval = Duration::from_secs(args.tls_reload_secs.max(1));
            Some(tls)
        }
        _ => None,
    };
    config.trusted_proxies = args
        .trusted_proxies
        .iter()
        .filter(|p| !p.trim().is_empty())
        .map(|p| IpNet::parse(p).map_err(|e| anyhow::anyhow!("--trusted-proxies: {e}")))
        .collect::<anyhow::Result<_>>()?;
    config.auth_failure_limit = Rate { burst: args.auth_failure_burst, per_minute: args.auth_failures_per_minute };
    config.connection_rate_limit = Rate { burst: args.connection_burst, per_minute: args.connections_per_minute };
    config.shutdown_grace = Duration::from_secs(args.shutdown_grace_secs);
    config.heartbeat_interval = Duration::from_millis(args.heartbeat_ms);
    config.replay_max_items = args.replay_max_items;
    config.replay_max_age = Duration::from_secs(args.replay_max_age_secs);
    if args.database_url.is_some() && args.store != StoreKind::Postgres {
        anyhow::bail!(
            "--database-url (TIDINGS_DATABASE_URL) is only for the PostgreSQL store. Fix: add --store postgres \
             (TIDINGS_STORE=postgres), or drop the URL to use the {} store",
            match args.store {
                StoreKind::Sqlite => "SQLite",
                _ => "memory",
            }
        );
    }
    config.store = match args.store {
        StoreKind::Memory => StoreConfig::Memory,
        StoreKind::Postgres => StoreConfig::Postgres {
            url: args.database_url.clone().filter(|u| !u.trim().is_empty()).ok_or_else(|| {
                anyhow::anyhow!(
                    "--store postgres needs the database: Fix: give --database-url \
                     postgres://user:password@host:port/database (or TIDINGS_DATABASE_URL)"
                )
            })?,
        },
        StoreKind::Sqlite => StoreConfig::Sqlite {
            data_dir: args.data_dir.clone(),
            synchronous: match args.sqlite_synchronous {
                SyncMode::Full => Synchronous::Full,
                SyncMode::Normal => Synchronous::Normal,
            },
        },
    };
    config.persistent_retention = Duration::from_secs(args.persistent_retention_secs);
    config.ack_retention = Duration::from_secs(args.ack_retention_secs);
    config.inbox_retention = Duration::from_secs(args.inbox_retention_secs);
    config.inbox_max_items = args.inbox_max_items;
    config.outbound_queue_limit = args.outbound_queue_limit;
    config.max_connections = args.max_connections;
    config.ws_read_buffer_size = args.ws_read_buffer_bytes;
    config.ws_write_buffer_size = args.ws_write_buffer_bytes;
    config.demo = args.demo;
    config.demo_publisher = !args.no_demo_publisher;
    if let Some(root) = &args.web_root
        && !root.is_dir()
    {
        anyhow::bail!("--web-root {}: not a directory", root.display());
    }
    config.web_root = args.web_root.clone();
    config.vapid_public_key = args.vapid_public_key.clone();
    config.push = args.push.clone();
    config.push_policy.push_after = Duration::from_millis(args.push_after_ms);
    config.push_policy.digest_window = Duration::from_secs(args.digest_window_secs);
    config.redis = args.redis_url.as_ref().map(|url| {
        let mut redis = tidings_server::broker_redis::RedisConfig::new(url.clone());
        redis.prefix = args.redis_prefix.clone();
        redis
    });
    config.validate().map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
    Ok(config)
}

/// Completes on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            warn!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => info!("Ctrl-C received"),
        () = terminate => info!("SIGTERM received"),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    init_logging(args.log_format, args.log_color);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("tidings-server: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("tidings-server: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let config = config_from(&args)?;
    if config.demo {
        warn!("=================================================================================");
        warn!("DEMO MODE: development secret and API key, POST /v1/demo/token is open to anyone");
        if config.demo_publisher {
            warn!("(from any origin), and a demo publisher is running. Never run --demo in production.");
        } else {
            warn!("(from any origin); no demo publisher (--no-demo-publisher). Never run --demo in production.");
        }
        if config.jwt_secret == DEMO_JWT_SECRET {
            warn!(secret = DEMO_JWT_SECRET, "using the development JWT secret");
        }
        if config.api_key == DEMO_API_KEY {
            warn!(api_key = DEMO_API_KEY, "using the development API key");
        }
        warn!("=================================================================================");
    } else if config.jwt_secret.len() < 32 {
        warn!("the JWT secret is shorter than 32 bytes; use a long random secret");
    }
    let server = tidings_server::start(config).await?;
    info!(ws = %server.ws_url(), http = %server.http_url(), "ready");
    // HOOK (demo subscriber): in demo mode the lead adds a native client signed in as `alice` here or in
    // `tidings_server::demo::run_demo`.
    shutdown_signal().await;
    server.shutdown().await;
    Ok(())
}

/// The configuration reference in the README: every flag with its environment variable, default and help, from
/// the flag definitions themselves (a test keeps the README's copy current).
#[cfg(test)]
fn config_reference() -> String {
    use clap::CommandFactory as _;
    let command = Args::command();
    let mut out = String::from("| flag | environment | default | what it does |\n|---|---|---|---|\n");
    for arg in command.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if matches!(long, "help" | "version") {
            continue;
        }
        let value = if arg.get_action().takes_values() {
            format!(" <{}>", arg.get_id().as_str().to_uppercase())
        } else {
            String::new()
        };
        let env = arg.get_env().map(|e| format!("`{}`", e.to_string_lossy())).unwrap_or_default();
        let default: Vec<String> = arg.get_default_values().iter().map(|v| v.to_string_lossy().into_owned()).collect();
        let default = if default.is_empty() { String::new() } else { format!("`{}`", default.join(",")) };
        let mut help = arg.get_long_help().or_else(|| arg.get_help()).map(|h| h.to_string()).unwrap_or_default();
        let values: Vec<String> = arg
            .get_possible_values()
            .iter()
            .filter(|v| !v.is_hide_set())
            .map(|v| format!("`{}`", v.get_name()))
            .collect();
        if !values.is_empty() && !matches!(arg.get_action(), clap::ArgAction::SetTrue) {
            if !help.ends_with('.') {
                help.push('.');
            }
            help.push_str(&format!(" One of {}.", values.join(", ")));
        }
        let help = help.split_whitespace().collect::<Vec<_>>().join(" ").replace('|', "\\|");
        out.push_str(&format!("| `--{long}{value}` | {env} | {default} | {help} |\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// README.md's "Configuration reference" is the flags' own: `TIDINGS_UPDATE_README=1 cargo test -p
    /// tidings-server --bin tidings-server readme` rewrites it.
    #[test]
    fn the_readme_configuration_reference_matches_the_flags() {
        const START: &str = "<!-- configuration reference: generated from the flags, see demo-server/src/main.rs -->\n";
        const END: &str = "<!-- end of configuration reference -->";
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
        let readme = std::fs::read_to_string(&path).unwrap();
        let start = readme.find(START).expect("README.md has the configuration reference's start marker") + START.len();
        let end = readme[start..].find(END).expect("and its end marker") + start;
        let generated = config_reference();
        if readme[start..end] != generated {
            if std::env::var_os("TIDINGS_UPDATE_README").is_some() {
                std::fs::write(&path, format!("{}{generated}{}", &readme[..start], &readme[end..])).unwrap();
            } else {
                panic!(
                    "README.md's configuration reference is out of date; rerun with TIDINGS_UPDATE_README=1:\n{generated}"
                );
            }
        }
    }

    #[test]
    fn secrets_are_required_outside_demo_mode() {
        let args = Args::try_parse_from(["tidings-server"]).unwrap();
        let error = config_from(&args).unwrap_err().to_string();
        assert!(error.contains("--jwt-secret"), "{error}");
        let args = Args::try_parse_from(["tidings-server", "--jwt-secret", "s"]).unwrap();
        assert!(config_from(&args).unwrap_err().to_string().contains("--api-key"));
    }

    #[test]
    fn demo_mode_uses_the_development_defaults() {
        let args = Args::try_parse_from(["tidings-server", "--demo", "--heartbeat-ms", "1000"]).unwrap();
        let config = config_from(&args).unwrap();
        assert_eq!(config.jwt_secret, DEMO_JWT_SECRET);
        assert_eq!(config.api_key, DEMO_API_KEY);
        assert_eq!(config.heartbeat_interval, Duration::from_secs(1));
        assert!(config.demo);
        assert!(config.demo_publisher);
        let args = Args::try_parse_from(["tidings-server", "--demo", "--no-demo-publisher"]).unwrap();
        let config = config_from(&args).unwrap();
        assert!(config.demo && !config.demo_publisher);
    }

    #[test]
    fn push_provider_flags_are_checked_at_startup() {
        let args = Args::try_parse_from(["tidings-server", "--demo", "--apns-key-id", "ABC123DEFG"]).unwrap();
        let error = config_from(&args).unwrap_err().to_string();
        assert!(error.contains("APNs is half configured"), "{error}");
        let args = Args::try_parse_from(["tidings-server", "--demo", "--fcm-url", "https://fcm.example"]).unwrap();
        assert_eq!(config_from(&args).unwrap().push.fcm_url, "https://fcm.example");
    }

    #[test]
    fn colours_only_on_a_terminal_without_no_color() {
        let off = Some(std::ffi::OsStr::new("1"));
        assert!(use_color(LogColor::Auto, true, None));
        assert!(!use_color(LogColor::Auto, false, None), "a file or a pipe gets no escape codes");
        assert!(!use_color(LogColor::Auto, true, off), "NO_COLOR");
        assert!(use_color(LogColor::Auto, true, Some(std::ffi::OsStr::new(""))), "an empty NO_COLOR is unset");
        assert!(use_color(LogColor::Always, false, off));
        assert!(!use_color(LogColor::Never, true, None));
    }

    #[test]
    fn a_keys_file_replaces_the_single_key_and_limits_and_proxies_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("keys");
        std::fs::write(&file, "backend publish pk_0123456789abcdef\n").unwrap();
        let args = Args::try_parse_from([
            "tidings-server",
            "--jwt-secret",
            "s",
            "--api-keys-file",
            file.to_str().unwrap(),
            "--trusted-proxies",
            "127.0.0.1,10.0.0.0/8",
            "--auth-failure-burst",
            "3",
            "--connections-per-minute",
            "0",
        ])
        .unwrap();
        let config = config_from(&args).unwrap();
        assert_eq!(config.api_key, "");
        assert_eq!(config.api_keys.len(), 1);
        assert_eq!(config.trusted_proxies.len(), 2);
        assert_eq!(config.auth_failure_limit, Rate { burst: 3, per_minute: 10 });
        assert_eq!(config.connection_rate_limit.per_minute, 0);
        let args = Args::try_parse_from(["tidings-server", "--demo", "--trusted-proxies", "nope"]).unwrap();
        assert!(config_from(&args).unwrap_err().to_string().contains("--trusted-proxies"));
        let args = Args::try_parse_from(["tidings-server", "--demo", "--tls-cert", "c.pem"]);
        assert!(args.is_err(), "--tls-cert needs --tls-key");
    }

    #[test]
    fn push_defaults_are_flags() {
        let args = Args::try_parse_from(["tidings-server", "--demo"]).unwrap();
        let config = config_from(&args).unwrap();
        assert_eq!(config.push_policy.push_after, Duration::from_secs(5));
        assert_eq!(config.push_policy.digest_window, Duration::from_secs(600));
        let args =
            Args::try_parse_from(["tidings-server", "--demo", "--push-after-ms", "1500", "--digest-window-secs", "60"])
                .unwrap();
        let config = config_from(&args).unwrap();
        assert_eq!(config.push_policy.push_after, Duration::from_millis(1500));
        assert_eq!(config.push_policy.digest_window, Duration::from_secs(60));
        let args = Args::try_parse_from(["tidings-server", "--demo", "--digest-window-secs", "0"]).unwrap();
        assert!(config_from(&args).unwrap_err().to_string().contains("digest window"));
    }

    #[test]
    fn the_store_is_sqlite_in_tidings_data_unless_told_otherwise() {
        let args = Args::try_parse_from(["tidings-server", "--demo"]).unwrap();
        let config = config_from(&args).unwrap();
        assert_eq!(
            config.store,
            StoreConfig::Sqlite { data_dir: "tidings-data".into(), synchronous: Synchronous::Full }
        );
        let args = Args::try_parse_from([
            "tidings-server",
            "--demo",
            "--data-dir",
            "/var/lib/tidings",
            "--sqlite-synchronous",
            "normal",
        ])
        .unwrap();
        assert_eq!(
            config_from(&args).unwrap().store,
            StoreConfig::Sqlite { data_dir: "/var/lib/tidings".into(), synchronous: Synchronous::Normal }
        );
        let args = Args::try_parse_from(["tidings-server", "--demo", "--store", "memory"]).unwrap();
        assert_eq!(config_from(&args).unwrap().store, StoreConfig::Memory);
    }

    #[test]
    fn the_postgres_store_takes_its_url_and_a_url_needs_it() {
        let url = "postgres://tidings:hunter2@db:5432/tidings";
        let args =
            Args::try_parse_from(["tidings-server", "--demo", "--store", "postgres", "--database-url", url]).unwrap();
        let config = config_from(&args).unwrap();
        assert_eq!(config.store, StoreConfig::Postgres { url: url.into() });
        assert!(!format!("{config:?}").contains("hunter2"), "the password is not logged: {config:?}");
        let args = Args::try_parse_from(["tidings-server", "--demo", "--store", "postgres"]).unwrap();
        let e = config_from(&args).unwrap_err().to_string();
        assert!(e.contains("--database-url"), "{e}");
        let args = Args::try_parse_from(["tidings-server", "--demo", "--database-url", url]).unwrap();
        let e = config_from(&args).unwrap_err().to_string();
        assert!(e.contains("--store postgres"), "{e}");
    }
}
