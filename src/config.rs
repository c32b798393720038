//! Runtime configuration: what an embedding program sets, and what the CLI
//! fills in from flags and `RUNTIMEUSE_*` environment variables.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The environment variable holding the auth token. Children (commands,
/// handlers) never inherit it: code the client runs must not be able to
/// read the credential that guards the runtime.
pub const AUTH_TOKEN_ENV: &str = "RUNTIMEUSE_AUTH_TOKEN";

/// Which agent handler serves invocations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentSource {
    /// A handler bundled with the runtime, by name (`echo`, `openai`, `claude`).
    Bundled(String),
    /// A user's handler program (any language), by path.
    Path(PathBuf),
}

/// Everything a server needs; `Default` is the CLI's defaults.
///
/// `Debug` shows `auth_token` as `Some("[REDACTED]")`, so logging a config
/// never leaks the token.
#[derive(Clone)]
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
    /// Most simultaneous client connections (WebSocket sessions).
    pub max_connections: usize,
    /// Longest a new connection may take to finish its TLS handshake, and
    /// (separately) to send a complete HTTP request head, before it is
    /// dropped. Also closes idle keep-alive HTTP connections.
    pub handshake_timeout: Duration,
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
    /// Where bundled agents are installed; `None`: the user's cache
    /// directory (see [`crate::embedded::CacheDirs`]).
    pub cache_dir: Option<PathBuf>,
}

/// Paths of the PEM files that turn on TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// Certificate chain, leaf first (`--tls-cert`).
    pub cert: PathBuf,
    /// Private key of the leaf certificate (`--tls-key`); unencrypted PEM.
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
            handshake_timeout: Duration::from_secs(10),
            auth_token: None,
            tls: None,
            shutdown_timeout: Duration::from_secs(10),
            http_connect_timeout: Duration::from_secs(10),
            http_read_timeout: Duration::from_secs(30),
            extra_ca_cert: None,
            cache_dir: None,
        }
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("agent", &self.agent)
            .field("heartbeat_interval", &self.heartbeat_interval)
            .field("kill_grace", &self.kill_grace)
            .field("handler_cancel_grace", &self.handler_cancel_grace)
            .field("stdout_head_bytes", &self.stdout_head_bytes)
            .field("stdout_tail_bytes", &self.stdout_tail_bytes)
            .field("artifact_flush_timeout", &self.artifact_flush_timeout)
            .field("max_message_bytes", &self.max_message_bytes)
            .field("max_connections", &self.max_connections)
            .field("handshake_timeout", &self.handshake_timeout)
            .field(
                "auth_token",
                &self.auth_token.as_ref().map(|_| "[REDACTED]"),
            )
            .field("tls", &self.tls)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .field("cache_dir", &self.cache_dir)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_auth_token() {
        let config = Config {
            auth_token: Some("hunter2-token".into()),
            ..Default::default()
        };
        let shown = format!("{config:?}");
        assert!(!shown.contains("hunter2-token"), "{shown}");
        assert!(shown.contains("[REDACTED]"), "{shown}");
    }
}
