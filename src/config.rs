//! Runtime configuration: what an embedding program sets, and what the CLI
//! fills in from flags and `RUNTIMEUSE_*` environment variables.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use crate::containment::ContainmentMode;

/// The environment variable holding the auth token. Children (commands,
/// handlers) never inherit it: code the client runs must not be able to
/// read the credential that guards the runtime.
pub(crate) const AUTH_TOKEN_ENV: &str = "RUNTIMEUSE_AUTH_TOKEN";

/// Which agent handler serves invocations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentSource {
    /// A handler bundled with the runtime, by name (`echo`, `openai`, `claude`).
    Bundled(String),
    /// A user's handler program (any language), by path.
    Path(PathBuf),
}

/// A credential: its `Debug` prints `[REDACTED]`, so a struct holding one
/// can derive `Debug` and be logged whole without leaking it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a credential.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The credential itself, for the one place that must compare it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(crate::redact::REDACTED)
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Self(value.to_owned())
    }
}

/// Everything a server needs; `Default` is the CLI's defaults.
///
/// Deriving `Debug` is safe: the token is a [`Secret`].
#[derive(Debug, Clone, PartialEq)]
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
    /// Handler processes kept started and idle, so a session's first
    /// invocation does not wait for a process start (0: start on demand).
    pub spare_handlers: usize,
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
    /// After this long without a frame from a client, the runtime pings it
    /// (zero: never ping).
    pub ping_interval: Duration,
    /// A client that answers no ping within this, or reads nothing the
    /// runtime sends for this long, is dropped as dead: its request is
    /// cancelled and its connection slot freed (zero: never drop).
    pub ping_timeout: Duration,
    /// Longest a new connection may take to finish its TLS handshake, and
    /// (separately) to send a complete HTTP request head, before it is
    /// dropped. Also closes idle keep-alive HTTP connections.
    pub handshake_timeout: Duration,
    /// Shared secret a client must present, if set.
    pub auth_token: Option<Secret>,
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
    /// Where the bundled Node agents are installed; `None`: the user's
    /// cache directory (`$XDG_CACHE_HOME/runtimeuse`, else
    /// `~/.cache/runtimeuse`, else a private directory in the temp dir).
    pub cache_dir: Option<PathBuf>,
    /// How every process a request or handler starts is kept findable and
    /// killable, even one that left its process group (README, "Process
    /// containment").
    pub containment: ContainmentMode,
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
            spare_handlers: 1,
            stdout_head_bytes: 128 * 1024,
            stdout_tail_bytes: 128 * 1024,
            artifact_flush_timeout: Duration::from_secs(30),
            max_message_bytes: 16 * 1024 * 1024,
            max_connections: 256,
            ping_interval: Duration::from_secs(30),
            ping_timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(10),
            auth_token: None,
            tls: None,
            shutdown_timeout: Duration::from_secs(10),
            http_connect_timeout: Duration::from_secs(10),
            http_read_timeout: Duration::from_secs(30),
            extra_ca_cert: None,
            cache_dir: None,
            containment: ContainmentMode::Auto,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_auth_token() {
        let config = Config {
            auth_token: Some("hunter2-token".into()),
            extra_ca_cert: Some("/etc/ca.pem".into()),
            ..Default::default()
        };
        let shown = format!("{config:?}");
        assert!(!shown.contains("hunter2-token"), "{shown}");
        assert!(shown.contains("auth_token: Some([REDACTED])"), "{shown}");
        // Derived, so no field is left out.
        assert!(shown.contains("/etc/ca.pem"), "{shown}");
    }
}
