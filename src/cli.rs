//! The `runtimeuse` binary: command-line flags (and their `RUNTIMEUSE_*`
//! environment variables) mapped onto [`Config`], and [`main`], which runs
//! what they ask for. Flag names follow the Node original where it had one
//! (`--agent`, `--handler`, `--port`) so existing launch scripts keep
//! working.
//!
//! A new subcommand of the binary is dispatched in [`main`], before the
//! server's flags are parsed, like the hidden echo handler.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};

use crate::config::{AgentSource, Config, ContainmentMode, TlsFiles};
use crate::embedded::CacheDirs;
use crate::logging::{LogFormat, StartupSummary};
use crate::server::Server;

/// The binary's entry point: the PID 1 reaper, the hidden subcommands, or
/// the server with the flags' configuration.
pub fn main() -> ExitCode {
    if let Some(code) = crate::init::reap_if_pid1() {
        return ExitCode::from(u8::try_from(code).unwrap_or(1));
    }
    // The bundled echo handler runs as a hidden subcommand of the runtime
    // binary, so `--agent echo` needs nothing else installed.
    if std::env::args_os().nth(1).as_deref()
        == Some(std::ffi::OsStr::new(crate::agents::ECHO_SUBCOMMAND))
    {
        crate::agents::echo::run();
        return ExitCode::SUCCESS;
    }
    if std::env::args_os().nth(1).as_deref() == Some(std::ffi::OsStr::new("check-handler")) {
        return crate::check_handler::main(std::env::args_os().skip(2));
    }
    if std::env::args_os().nth(1).as_deref() == Some(std::ffi::OsStr::new(INSTALL_AGENT)) {
        let args = InstallAgentCli::parse_from(std::env::args_os().skip(1));
        crate::logging::init(LogFormat::Text, "info");
        return install_agent(args);
    }
    let cli = Cli::parse();
    crate::logging::init(cli.log_format, "info");
    let config = cli.into_config();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("runtimeuse: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("runtimeuse: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Serves until SIGTERM or SIGINT, then shuts down gracefully.
async fn serve(config: Config) -> anyhow::Result<()> {
    // Installed before the port opens: a SIGTERM the moment a supervisor
    // sees the port must already mean a graceful shutdown.
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let summary = StartupSummary::of(&config);
    let server = Server::bind(config).await?;
    let shutdown = server.shutdown_token();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("shutting down: no new connections, cancelling running requests");
        shutdown.cancel();
    });
    summary.log(server.local_addr()?);
    server.run().await
}

/// The subcommand that only installs bundled agents.
const INSTALL_AGENT: &str = "install-agent";

/// runtimeuse install-agent: install a bundled agent's dependencies (npm
/// ci) into the cache and exit, for baking agents into a sandbox image or
/// template so the runtime starts warm there. Prints each agent's
/// directory.
#[derive(Debug, Parser)]
#[command(name = "runtimeuse install-agent")]
struct InstallAgentCli {
    /// openai, claude, or all.
    #[arg(value_parser = ["openai", "claude", "all"])]
    agent: String,

    /// Install here instead of the default cache directory.
    #[arg(long, env = "RUNTIMEUSE_CACHE_DIR", value_name = "DIR")]
    cache_dir: Option<PathBuf>,
}

/// Installs, progress on stderr, each agent's directory on stdout.
fn install_agent(args: InstallAgentCli) -> ExitCode {
    let cache = CacheDirs::new(args.cache_dir.as_deref());
    match crate::agents::node::install_named(&args.agent, &cache) {
        Ok(installed) => {
            for (agent, copy) in installed {
                println!("{} {}", agent.name, copy.dir.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("runtimeuse: {e}");
            ExitCode::FAILURE
        }
    }
}

/// runtimeuse: the agent runtime that runs inside a sandbox.
///
/// Listens for a runtimeuse client over WebSocket, runs its commands and
/// agent invocations, streams output back and redacts secrets.
#[derive(Debug, Parser)]
#[command(version, long_version = LONG_VERSION, about, long_about = None, after_help = AFTER_HELP)]
struct Cli {
    /// Bundled agent handler: echo (no model, for testing), openai, claude.
    #[arg(
        long,
        env = "RUNTIMEUSE_AGENT",
        default_value = "openai",
        conflicts_with = "handler"
    )]
    agent: String,

    /// Your own handler program (any language; see protocol/handler-protocol.md).
    /// Run directly if executable, else by extension (.py, .js, .mjs, .sh, ...).
    #[arg(long, env = "RUNTIMEUSE_HANDLER", value_name = "PATH")]
    handler: Option<PathBuf>,

    /// Port to listen on.
    #[arg(long, short, env = "RUNTIMEUSE_PORT", default_value_t = 8080)]
    port: u16,

    /// Address to listen on.
    #[arg(long, env = "RUNTIMEUSE_HOST", default_value = "0.0.0.0")]
    host: IpAddr,

    /// Interval between heartbeat_message while a request runs (e.g. 15s, 500ms).
    #[arg(long, env = "RUNTIMEUSE_HEARTBEAT_INTERVAL", default_value = "15s", value_parser = parse_duration, value_name = "DURATION")]
    heartbeat_interval: Duration,

    /// Grace between SIGTERM and SIGKILL when a process tree is stopped.
    #[arg(long, env = "RUNTIMEUSE_KILL_GRACE", default_value = "2s", value_parser = parse_duration, value_name = "DURATION")]
    kill_grace: Duration,

    /// How long a handler may take to acknowledge a cancel before it is killed.
    #[arg(long, env = "RUNTIMEUSE_HANDLER_CANCEL_GRACE", default_value = "2s", value_parser = parse_duration, value_name = "DURATION")]
    handler_cancel_grace: Duration,

    /// Handler processes kept started and idle, so a connection's first
    /// invocation finds one ready (0: start the handler on demand).
    #[arg(
        long,
        env = "RUNTIMEUSE_SPARE_HANDLERS",
        value_name = "N",
        default_value_t = 1
    )]
    spare_handlers: usize,

    /// Bytes of each command's stdout kept from its start in the terminal result.
    #[arg(long, env = "RUNTIMEUSE_STDOUT_HEAD_BYTES", value_name = "BYTES", default_value_t = 128 * 1024)]
    stdout_head_bytes: usize,

    /// Bytes of each command's stdout kept from its end in the terminal result.
    #[arg(long, env = "RUNTIMEUSE_STDOUT_TAIL_BYTES", value_name = "BYTES", default_value_t = 128 * 1024)]
    stdout_tail_bytes: usize,

    /// Longest wait for artifact uploads before a request's terminal message.
    #[arg(long, env = "RUNTIMEUSE_ARTIFACT_FLUSH_TIMEOUT", default_value = "30s", value_parser = parse_duration, value_name = "DURATION")]
    artifact_flush_timeout: Duration,

    /// Largest inbound WebSocket message, in bytes.
    #[arg(long, env = "RUNTIMEUSE_MAX_MESSAGE_BYTES", value_name = "BYTES", default_value_t = 16 * 1024 * 1024)]
    max_message_bytes: usize,

    /// Most simultaneous client connections.
    #[arg(long, env = "RUNTIMEUSE_MAX_CONNECTIONS", default_value_t = 256)]
    max_connections: usize,

    /// After this long without a frame from a client, ping it (0: never ping).
    #[arg(long, env = "RUNTIMEUSE_PING_INTERVAL", default_value = "30s", value_parser = parse_duration, value_name = "DURATION")]
    ping_interval: Duration,

    /// Drop a client that answers no ping within this, or reads nothing for
    /// this long: its request is cancelled, its slot freed (0: never drop).
    #[arg(long, env = "RUNTIMEUSE_PING_TIMEOUT", default_value = "30s", value_parser = parse_duration, value_name = "DURATION")]
    ping_timeout: Duration,

    /// Longest a new connection may take for its TLS handshake, and for its
    /// HTTP request head (idle keep-alive connections are closed after it too;
    /// 0 turns it off).
    #[arg(long, env = "RUNTIMEUSE_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = parse_duration, value_name = "DURATION")]
    handshake_timeout: Duration,

    /// Longest a graceful shutdown (SIGTERM) waits for sessions to finish.
    #[arg(long, env = "RUNTIMEUSE_SHUTDOWN_TIMEOUT", default_value = "10s", value_parser = parse_duration, value_name = "DURATION")]
    shutdown_timeout: Duration,

    /// Shared secret clients must present (ws://:TOKEN@host, ?token=TOKEN,
    /// or Authorization: Bearer TOKEN).
    // A token may start with '-' (one from secrets.token_urlsafe does, one
    // time in 64): it is a value, not a flag.
    #[arg(long, env = crate::config::AUTH_TOKEN_ENV, hide_env_values = true, allow_hyphen_values = true)]
    auth_token: Option<String>,

    /// PEM certificate chain: serve wss:// (needs --tls-key).
    #[arg(
        long,
        env = "RUNTIMEUSE_TLS_CERT",
        requires = "tls_key",
        value_name = "PEM"
    )]
    tls_cert: Option<PathBuf>,

    /// PEM private key for --tls-cert.
    #[arg(
        long,
        env = "RUNTIMEUSE_TLS_KEY",
        requires = "tls_cert",
        value_name = "PEM"
    )]
    tls_key: Option<PathBuf>,

    /// Downloads and uploads: longest time to connect (TCP + TLS).
    #[arg(long, env = "RUNTIMEUSE_HTTP_CONNECT_TIMEOUT", default_value = "10s", value_parser = parse_duration, value_name = "DURATION")]
    http_connect_timeout: Duration,

    /// Downloads and uploads: longest time without any progress.
    #[arg(long, env = "RUNTIMEUSE_HTTP_READ_TIMEOUT", default_value = "30s", value_parser = parse_duration, value_name = "DURATION")]
    http_read_timeout: Duration,

    /// Extra root certificate(s) (PEM) trusted for downloads and uploads.
    #[arg(long, env = "RUNTIMEUSE_CA_CERT", value_name = "PEM")]
    ca_cert: Option<PathBuf>,

    /// Log line format: text, or json (one object per line, for log shippers).
    #[arg(long, env = "RUNTIMEUSE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,

    /// Where the openai/claude agents are installed on first use [default:
    /// $XDG_CACHE_HOME/runtimeuse, else ~/.cache/runtimeuse].
    #[arg(long, env = "RUNTIMEUSE_CACHE_DIR", value_name = "DIR")]
    cache_dir: Option<PathBuf>,

    /// How every process a request or handler starts is contained so it can
    /// be killed even if it left its process group: cgroup (a cgroup v2 per
    /// request and handler), subreaper (the runtime adopts orphans and kills
    /// processes by a marker in their environment), or auto (cgroup when the
    /// runtime can create one, else subreaper).
    #[arg(long, env = "RUNTIMEUSE_CONTAINMENT", value_enum, default_value_t = ContainmentMode::Auto)]
    containment: ContainmentMode,
}

/// `--version`: the runtime's version, and the protocols it speaks with the
/// client version its end-to-end tests run against (tests check both
/// against `protocol/`, the handler host and `tests/requirements.txt`).
const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    "\nwire protocol: v1 (tested with runtimeuse-client 0.15.1)",
    "\nhandler protocol: v1"
);

const AFTER_HELP: &str = "\
Examples:
  runtimeuse --agent echo              # no model, no key: test your client integration
  OPENAI_API_KEY=... runtimeuse        # the OpenAI handler (default) on port 8080
  runtimeuse --handler ./my_agent.py   # your own handler, any language
  runtimeuse install-agent all         # pre-install the openai and claude agents (image builds)
  runtimeuse check-handler ./my_agent.py   # check a handler against the protocol (see --help)

Logs go to stderr; set RUNTIMEUSE_LOG (e.g. debug, or runtimeuse=debug) to change the level,
--log-format json for one JSON object per line.";

impl Cli {
    /// The configuration these flags describe.
    fn into_config(self) -> Config {
        let agent = match self.handler {
            Some(path) => AgentSource::Path(path),
            None => AgentSource::Bundled(self.agent),
        };
        let tls = match (self.tls_cert, self.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
            _ => None,
        };
        Config {
            listen: SocketAddr::new(self.host, self.port),
            agent,
            heartbeat_interval: self.heartbeat_interval,
            kill_grace: self.kill_grace,
            handler_cancel_grace: self.handler_cancel_grace,
            spare_handlers: self.spare_handlers,
            stdout_head_bytes: self.stdout_head_bytes,
            stdout_tail_bytes: self.stdout_tail_bytes,
            artifact_flush_timeout: self.artifact_flush_timeout,
            max_message_bytes: self.max_message_bytes,
            max_connections: self.max_connections,
            ping_interval: self.ping_interval,
            ping_timeout: self.ping_timeout,
            handshake_timeout: self.handshake_timeout,
            auth_token: self.auth_token.filter(|t| !t.is_empty()).map(Into::into),
            tls,
            shutdown_timeout: self.shutdown_timeout,
            http_connect_timeout: self.http_connect_timeout,
            http_read_timeout: self.http_read_timeout,
            extra_ca_cert: self.ca_cert,
            cache_dir: self.cache_dir,
            containment: self.containment,
        }
    }
}

/// Parses `15s`, `500ms`, `2m` or a bare number of seconds.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (try 15s or 500ms)"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        _ => {
            return Err(format!(
                "unknown unit {unit:?} in {text:?} (use ms, s or m)"
            ));
        }
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{text:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("15s"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5h").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn handler_flag_wins_over_default_agent() {
        let cli = Cli::parse_from(["runtimeuse", "--handler", "./a.py", "--port", "9"]);
        let config = cli.into_config();
        assert_eq!(config.agent, AgentSource::Path("./a.py".into()));
        assert_eq!(config.listen.port(), 9);
    }

    #[test]
    fn long_version_names_the_handler_protocol_in_force() {
        let line = format!("handler protocol: v{}", crate::handler::PROTOCOL_VERSION);
        assert!(LONG_VERSION.lines().any(|l| l == line), "{LONG_VERSION}");
        assert!(LONG_VERSION.starts_with(env!("CARGO_PKG_VERSION")));
    }

    #[test]
    fn keepalive_flags_take_durations_and_zero_turns_them_off() {
        let cli = Cli::parse_from([
            "runtimeuse",
            "--ping-interval",
            "500ms",
            "--ping-timeout",
            "0",
        ]);
        let config = cli.into_config();
        assert_eq!(config.ping_interval, Duration::from_millis(500));
        assert_eq!(config.ping_timeout, Duration::ZERO);
    }

    #[test]
    fn log_format_flag() {
        let cli = Cli::parse_from(["runtimeuse", "--log-format", "json"]);
        assert_eq!(cli.log_format, LogFormat::Json);
        assert_eq!(Cli::parse_from(["runtimeuse"]).log_format, LogFormat::Text);
        assert!(Cli::try_parse_from(["runtimeuse", "--log-format", "xml"]).is_err());
    }

    #[test]
    fn a_token_may_start_with_a_hyphen() {
        let cli = Cli::parse_from(["runtimeuse", "--auth-token", "-7mGJauvS2", "--port", "9"]);
        let config = cli.into_config();
        assert_eq!(
            config.auth_token.as_ref().map(|t| t.expose()),
            Some("-7mGJauvS2")
        );
        assert_eq!(config.listen.port(), 9);
    }

    #[test]
    fn defaults_match_the_original() {
        let config = Cli::parse_from(["runtimeuse"]).into_config();
        assert_eq!(config.agent, AgentSource::Bundled("openai".into()));
        assert_eq!(config.listen.port(), 8080);
        assert_eq!(config.heartbeat_interval, Duration::from_secs(15));
    }

    /// `Config::default()` is the one source of truth: the flags' defaults
    /// must give exactly it, every field (a new field fails here until
    /// its flag agrees).
    #[test]
    fn flag_defaults_are_config_defaults() {
        // Only the flags' own variables matter (the test scripts set others,
        // such as RUNTIMEUSE_BIN).
        let command = <Cli as clap::CommandFactory>::command();
        let set: Vec<String> = command
            .get_arguments()
            .filter_map(|arg| arg.get_env())
            .filter(|name| std::env::var_os(name).is_some())
            .map(|name| name.to_string_lossy().into_owned())
            .collect();
        assert!(set.is_empty(), "unset {set:?} to compare the defaults");
        assert_eq!(
            Cli::parse_from(["runtimeuse"]).into_config(),
            Config::default()
        );
    }
}
