//! The runtime's log: its format, the lines an operator relies on, and
//! redaction of every line as a whole.
//!
//! Modules already redact what they log, but a log line is built from many
//! pieces (a command, a file name, a peer's input quoted in a warning), and
//! one forgotten call would leak. So every formatted line also passes
//! through [`RedactingStderr`], which scrubs it with every secret any
//! session of this process has named, before it reaches stderr.
//!
//! Lines are text (the default) or, with `--log-format json`, one JSON
//! object per line for log shippers: `timestamp`, `level`, `target`, the
//! event's fields (`message`, `error`, ...) at the top level, and `spans`,
//! the enclosing spans with their fields (`session` with `id` and `peer`,
//! `request` with `source_id` and `kind`).

use std::collections::BTreeSet;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::sync::{LazyLock, RwLock};

use tracing::Level;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

use crate::config::{AgentSource, Config};
use crate::redact::Redactor;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub(crate) enum LogFormat {
    /// Human-readable lines (ANSI colours on a terminal).
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Installs the process-wide log: `RUNTIMEUSE_LOG` filter (else
/// `default_level`), the chosen format, redacted stderr. Called once, by
/// the binary (the server, or `check-handler`).
pub(crate) fn init(format: LogFormat, default_level: &str) {
    let filter =
        EnvFilter::try_from_env("RUNTIMEUSE_LOG").unwrap_or_else(|_| EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(RedactingStderr);
    match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(true)
            .init(),
    }
}

/// What the start-up line reports about a configuration, taken before the
/// server consumes it.
#[derive(Debug, Clone)]
pub(crate) struct StartupSummary {
    agent: AgentSource,
    tls: bool,
    token: bool,
}

impl StartupSummary {
    /// The summary of `config`.
    pub(crate) fn of(config: &Config) -> Self {
        Self {
            agent: config.agent.clone(),
            tls: config.tls.is_some(),
            token: config.auth_token.is_some(),
        }
    }

    /// Logs the one start-up line an operator looks for: version, agent or
    /// handler, the address actually bound, TLS and token on or off.
    pub(crate) fn log(&self, addr: SocketAddr) {
        let (agent, handler) = match &self.agent {
            AgentSource::Bundled(name) => (Some(name.as_str()), None),
            AgentSource::Path(path) => (None, Some(path.display())),
        };
        tracing::info!(
            target: "runtimeuse",
            version = %env!("CARGO_PKG_VERSION"),
            %addr,
            agent = agent.map(tracing::field::display),
            handler = handler.map(tracing::field::display),
            tls = %on_off(self.tls),
            token = %on_off(self.token),
            "runtimeuse listening"
        );
    }
}

fn on_off(on: bool) -> &'static str {
    if on { "on" } else { "off" }
}

/// The level a handler's stderr line is logged at: DEBUG, unless the line
/// starts with a level marker (`ERROR:`, `WARN:`/`WARNING:`, `INFO:`,
/// `DEBUG:`, `TRACE:`, any case, or the same in brackets, `[warn] ...`), as
/// Python's `logging` and most loggers write them. Stderr is mostly noise
/// (progress bars, library chatter); a handler that wants a line seen marks
/// it, or sends a `log` message.
pub(crate) fn stderr_line_level(line: &str) -> Level {
    let word = line.trim_start();
    let word = word.strip_prefix('[').unwrap_or(word);
    let end = word
        .find(|c: char| !c.is_ascii_alphabetic())
        .unwrap_or(word.len());
    let (name, rest) = word.split_at(end);
    if !(rest.starts_with(':') || rest.starts_with(']')) {
        return Level::DEBUG;
    }
    match name.to_ascii_lowercase().as_str() {
        "error" | "fatal" | "critical" => Level::ERROR,
        "warn" | "warning" => Level::WARN,
        "info" => Level::INFO,
        "trace" => Level::TRACE,
        _ => Level::DEBUG,
    }
}

/// Logs one line of a handler's stderr (already redacted) at the level
/// [`stderr_line_level`] gives it.
pub(crate) fn handler_stderr(pid: u32, line: &str) {
    match stderr_line_level(line) {
        Level::ERROR => tracing::error!(target: "handler", pid, stream = "stderr", "{line}"),
        Level::WARN => tracing::warn!(target: "handler", pid, stream = "stderr", "{line}"),
        Level::INFO => tracing::info!(target: "handler", pid, stream = "stderr", "{line}"),
        Level::TRACE => tracing::trace!(target: "handler", pid, stream = "stderr", "{line}"),
        _ => tracing::debug!(target: "handler", pid, stream = "stderr", "{line}"),
    }
}

/// Beyond this many distinct secrets, new ones still redact their own
/// session's messages but are no longer added to the process-wide log
/// redactor (which would otherwise grow without bound on a long-lived
/// runtime with hostile clients).
const MAX_LOG_SECRETS: usize = 10_000;

static LOG_SECRETS: LazyLock<RwLock<Redactor>> = LazyLock::new(Default::default);

/// Adds secrets to the set scrubbed from every log line, each also as it
/// appears escaped inside a JSON line or a `Debug`-quoted field (a `"` or
/// `\` in a secret is written `\"` / `\\` there, so the plain value would
/// not match).
pub(crate) fn remember_secrets(secrets: &[String]) {
    let mut guard = LOG_SECRETS.write().unwrap_or_else(|e| e.into_inner());
    let known = guard.secrets();
    let fresh: BTreeSet<String> = secrets
        .iter()
        .filter(|s| !s.is_empty())
        .flat_map(|s| [s.clone(), json_escaped(s)])
        .filter(|s| known.binary_search(s).is_err())
        .collect();
    if fresh.is_empty() || known.len() + fresh.len() > MAX_LOG_SECRETS {
        return;
    }
    *guard = guard.with(fresh);
}

/// `secret` as serde_json writes it inside a string (without the quotes).
fn json_escaped(secret: &str) -> String {
    let quoted = serde_json::Value::from(secret).to_string();
    quoted[1..quoted.len() - 1].to_owned()
}

fn log_redactor() -> Redactor {
    LOG_SECRETS
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
}

/// A `tracing_subscriber` writer: stderr, one redacted line at a time.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RedactingStderr;

impl<'a> MakeWriter<'a> for RedactingStderr {
    type Writer = LineWriter;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter { buf: Vec::new() }
    }
}

/// Collects one formatted event and writes it, redacted, when dropped.
#[derive(Debug)]
pub(crate) struct LineWriter {
    buf: Vec<u8>,
}

impl Write for LineWriter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        let redacted = log_redactor().redact_bytes(&self.buf);
        let _ = io::stderr().lock().write_all(&redacted);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stderr_lines_are_debug_unless_marked() {
        let cases = [
            ("plain noise", Level::DEBUG),
            ("WARNING:root:disk low", Level::WARN),
            ("warn: disk low", Level::WARN),
            ("[error] it broke", Level::ERROR),
            ("  ERROR: indented", Level::ERROR),
            ("CRITICAL:root:bad", Level::ERROR),
            ("INFO: started", Level::INFO),
            ("[Info] started", Level::INFO),
            ("debug: detail", Level::DEBUG),
            ("TRACE: detail", Level::TRACE),
            ("error without a colon", Level::DEBUG),
            ("errors: 3 found", Level::DEBUG),
            ("Traceback (most recent call last):", Level::DEBUG),
            ("", Level::DEBUG),
        ];
        for (line, level) in cases {
            assert_eq!(stderr_line_level(line), level, "{line:?}");
        }
    }

    #[test]
    fn secrets_are_also_scrubbed_as_json_escapes_them() {
        let secret = r#"quo"te\slash-secret"#;
        remember_secrets(&[secret.into()]);
        let line = serde_json::json!({ "error": format!("got {secret}") }).to_string();
        assert!(
            !line.contains(secret),
            "the line holds only the escaped form"
        );
        let redacted = log_redactor().redact_bytes(line.as_bytes());
        assert_eq!(redacted, br#"{"error":"got [REDACTED]"}"#);
    }

    #[test]
    fn remembered_secrets_are_scrubbed_from_lines() {
        remember_secrets(&["log-secret-123456".into(), String::new()]);
        let line = b"user said log-secret-123456 twice: log-secret-123456\n";
        let redacted = log_redactor().redact_bytes(line);
        assert_eq!(redacted, b"user said [REDACTED] twice: [REDACTED]\n");
    }
}
