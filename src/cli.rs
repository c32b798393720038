//! Command-line flags (and their `RUNTIMEUSE_*` environment variables),
//! mapped onto [`Config`]. Flag names follow the Node original where it had
//! one (`--agent`, `--handler`, `--port`) so existing launch scripts keep
//! working.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::config::{AgentSource, Config, TlsFiles};

/// runtimeuse: the agent runtime that runs inside a sandbox.
///
/// Listens for a runtimeuse client over WebSocket, runs its commands and
/// agent invocations, streams output back and redacts secrets.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None, after_help = AFTER_HELP)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Cli {
    /// Something else than serving (see `runtimeuse help install-agent`).
    #[command(subcommand)]
    pub command: Option<CliCommand>,

    /// Bundled agent handler: echo (no model, for testing), openai, claude.
    #[arg(
        long,
        env = "RUNTIMEUSE_AGENT",
        default_value = "openai",
        conflicts_with = "handler"
    )]
    pub agent: String,

    /// Your own handler program (any language; see protocol/handler-protocol.md).
    /// Run directly if executable, else by extension (.py, .js, .mjs, .sh, ...).
    #[arg(long, env = "RUNTIMEUSE_HANDLER", value_name = "PATH")]
    pub handler: Option<PathBuf>,

    /// Port to listen on.
    #[arg(long, short, env = "RUNTIMEUSE_PORT", default_value_t = 8080)]
    pub port: u16,

    /// Address to listen on.
    #[arg(long, env = "RUNTIMEUSE_HOST", default_value = "0.0.0.0")]
    pub host: IpAddr,

    /// Interval between heartbeat_message while a request runs (e.g. 15s, 500ms).
    #[arg(long, env = "RUNTIMEUSE_HEARTBEAT_INTERVAL", default_value = "15s", value_parser = parse_duration, value_name = "DURATION")]
    pub heartbeat_interval: Duration,

    /// Grace between SIGTERM and SIGKILL when a process tree is stopped.
    #[arg(long, env = "RUNTIMEUSE_KILL_GRACE", default_value = "2s", value_parser = parse_duration, value_name = "DURATION")]
    pub kill_grace: Duration,

    /// How long a handler may take to acknowledge a cancel before it is killed.
    #[arg(long, env = "RUNTIMEUSE_HANDLER_CANCEL_GRACE", default_value = "2s", value_parser = parse_duration, value_name = "DURATION")]
    pub handler_cancel_grace: Duration,

    /// Bytes of each command's stdout kept from its start in the terminal result.
    #[arg(long, env = "RUNTIMEUSE_STDOUT_HEAD_BYTES", value_name = "BYTES", default_value_t = 128 * 1024)]
    pub stdout_head_bytes: usize,

    /// Bytes of each command's stdout kept from its end in the terminal result.
    #[arg(long, env = "RUNTIMEUSE_STDOUT_TAIL_BYTES", value_name = "BYTES", default_value_t = 128 * 1024)]
    pub stdout_tail_bytes: usize,

    /// Longest wait for artifact uploads before a request's terminal message.
    #[arg(long, env = "RUNTIMEUSE_ARTIFACT_FLUSH_TIMEOUT", default_value = "30s", value_parser = parse_duration, value_name = "DURATION")]
    pub artifact_flush_timeout: Duration,

    /// Largest inbound WebSocket message, in bytes.
    #[arg(long, env = "RUNTIMEUSE_MAX_MESSAGE_BYTES", value_name = "BYTES", default_value_t = 16 * 1024 * 1024)]
    pub max_message_bytes: usize,

    /// Most simultaneous client connections.
    #[arg(long, env = "RUNTIMEUSE_MAX_CONNECTIONS", default_value_t = 256)]
    pub max_connections: usize,

    /// Longest a new connection may take for its TLS handshake, and for its
    /// HTTP request head (idle keep-alive connections are closed after it too;
    /// 0 turns it off).
    #[arg(long, env = "RUNTIMEUSE_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = parse_duration, value_name = "DURATION")]
    pub handshake_timeout: Duration,

    /// Longest a graceful shutdown (SIGTERM) waits for sessions to finish.
    #[arg(long, env = "RUNTIMEUSE_SHUTDOWN_TIMEOUT", default_value = "10s", value_parser = parse_duration, value_name = "DURATION")]
    pub shutdown_timeout: Duration,

    /// Shared secret clients must present (ws://:TOKEN@host, ?token=TOKEN,
    /// or Authorization: Bearer TOKEN).
    #[arg(long, env = crate::config::AUTH_TOKEN_ENV, hide_env_values = true)]
    pub auth_token: Option<String>,

    /// PEM certificate chain: serve wss:// (needs --tls-key).
    #[arg(
        long,
        env = "RUNTIMEUSE_TLS_CERT",
        requires = "tls_key",
        value_name = "PEM"
    )]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key for --tls-cert.
    #[arg(
        long,
        env = "RUNTIMEUSE_TLS_KEY",
        requires = "tls_cert",
        value_name = "PEM"
    )]
    pub tls_key: Option<PathBuf>,

    /// Downloads and uploads: longest time to connect (TCP + TLS).
    #[arg(long, env = "RUNTIMEUSE_HTTP_CONNECT_TIMEOUT", default_value = "10s", value_parser = parse_duration, value_name = "DURATION")]
    pub http_connect_timeout: Duration,

    /// Downloads and uploads: longest time without any progress.
    #[arg(long, env = "RUNTIMEUSE_HTTP_READ_TIMEOUT", default_value = "30s", value_parser = parse_duration, value_name = "DURATION")]
    pub http_read_timeout: Duration,

    /// Extra root certificate(s) (PEM) trusted for downloads and uploads.
    #[arg(long, env = "RUNTIMEUSE_CA_CERT", value_name = "PEM")]
    pub ca_cert: Option<PathBuf>,

    /// Where the openai/claude agents are installed on first use [default:
    /// $XDG_CACHE_HOME/runtimeuse, else ~/.cache/runtimeuse].
    #[arg(long, env = "RUNTIMEUSE_CACHE_DIR", value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum CliCommand {
    /// Install a bundled agent's dependencies (npm ci) into the cache and
    /// exit: for baking agents into a sandbox image or template, so the
    /// runtime starts warm there.
    InstallAgent {
        /// openai, claude, or all.
        #[arg(value_parser = ["openai", "claude", "all"])]
        agent: String,

        /// Install here instead of the default cache directory.
        #[arg(long, env = "RUNTIMEUSE_CACHE_DIR", value_name = "DIR")]
        cache_dir: Option<PathBuf>,
    },
}

const AFTER_HELP: &str = "\
Examples:
  runtimeuse --agent echo              # no model, no key: test your client integration
  OPENAI_API_KEY=... runtimeuse        # the OpenAI handler (default) on port 8080
  runtimeuse --handler ./my_agent.py   # your own handler, any language
  runtimeuse install-agent all         # pre-install the openai and claude agents (image builds)

Logs go to stderr; set RUNTIMEUSE_LOG (e.g. debug, or runtimeuse=debug) to change the level.";

impl Cli {
    /// The configuration these flags describe.
    pub fn into_config(self) -> Config {
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
            stdout_head_bytes: self.stdout_head_bytes,
            stdout_tail_bytes: self.stdout_tail_bytes,
            artifact_flush_timeout: self.artifact_flush_timeout,
            max_message_bytes: self.max_message_bytes,
            max_connections: self.max_connections,
            handshake_timeout: self.handshake_timeout,
            auth_token: self.auth_token.filter(|t| !t.is_empty()),
            tls,
            shutdown_timeout: self.shutdown_timeout,
            http_connect_timeout: self.http_connect_timeout,
            http_read_timeout: self.http_read_timeout,
            extra_ca_cert: self.ca_cert,
            cache_dir: self.cache_dir,
        }
    }
}

/// Parses `15s`, `500ms`, `2m` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
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
    fn defaults_match_the_original() {
        let config = Cli::parse_from(["runtimeuse"]).into_config();
        assert_eq!(config.agent, AgentSource::Bundled("openai".into()));
        assert_eq!(config.listen.port(), 8080);
        assert_eq!(config.heartbeat_interval, Duration::from_secs(15));
    }
}
