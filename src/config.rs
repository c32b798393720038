//! Runtime configuration: what an embedding program sets, and what the CLI
//! fills in from flags and `RUNTIMEUSE_*` environment variables.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Which agent handler serves invocations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentSource {
    /// A handler bundled with the runtime, by name (`echo`, `openai`, `claude`).
    Bundled(String),
    /// A user's handler program (any language), by path.
    Path(PathBuf),
}

/// Everything a server needs; `Default` is the CLI's defaults.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// The agent handler to run for invocations.
    pub agent: AgentSource,
    /// How often a running request sends `heartbeat_message`.
    pub heartbeat_interval: Duration,
    /// After SIGTERM to a process group, how long before SIGKILL.
    pub kill_grace: Duration,
    /// After asking a handler to cancel, how long before its group is killed.
    pub handler_cancel_grace: Duration,
    /// Bytes of a command's stdout kept from its start for the terminal result.
    pub stdout_head_bytes: usize,
    /// Bytes of a command's stdout kept from its end for the terminal result.
    pub stdout_tail_bytes: usize,
    /// Upper bound on waiting for artifact uploads before a terminal message.
    pub artifact_flush_timeout: Duration,
    /// Largest inbound WebSocket message accepted.
    pub max_message_bytes: usize,
    /// Most simultaneous client connections.
    pub max_connections: usize,
    /// Shared secret a client must present, if set.
    pub auth_token: Option<String>,
    /// PEM certificate chain and key for `wss://`, if set.
    pub tls: Option<TlsFiles>,
    /// Longest a graceful shutdown waits for sessions to wind down.
    pub shutdown_timeout: Duration,
    /// Downloads and uploads: longest time to connect (TCP + TLS).
    pub http_connect_timeout: Duration,
    /// Downloads and uploads: longest time without progress.
    pub http_read_timeout: Duration,
    /// Extra root certificate(s), PEM, trusted for downloads and uploads
    /// (a corporate proxy, a test server).
    pub extra_ca_cert: Option<PathBuf>,
}

/// Paths of the PEM files that turn on TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            agent: AgentSource::Bundled("openai".into()),
            heartbeat_interval: Duration::from_secs(15),
            kill_grace: Duration::from_secs(2),
            handler_cancel_grace: Duration::from_secs(2),
            stdout_head_bytes: 128 * 1024,
            stdout_tail_bytes: 128 * 1024,
            artifact_flush_timeout: Duration::from_secs(30),
            max_message_bytes: 16 * 1024 * 1024,
            max_connections: 256,
            auth_token: None,
            tls: None,
            shutdown_timeout: Duration::from_secs(10),
            http_connect_timeout: Duration::from_secs(10),
            http_read_timeout: Duration::from_secs(30),
            extra_ca_cert: None,
        }
    }
}
