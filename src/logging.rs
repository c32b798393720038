//! The runtime's log: its format, the lines an operator relies on, and
//! redaction of every line as a whole.
//!
//! Modules already redact what they log, but a log line is built from many
//! pieces (a command, a file name, a peer's input quoted in a warning), and
//! one forgotten call would leak. So every formatted line also passes
//! through [`RedactingStderr`], which scrubs it with the secrets of the
//! session it was logged in, before it reaches stderr. A session attaches
//! its [`LogSecrets`] to its span ([`scrub_span`]); [`SessionScope`] finds
//! them for each event by walking the event's span scope. The set has no
//! cap of its own (the session's secrets are bounded where they are
//! accepted), so log redaction never silently stops.
//!
//! Third-party libraries (the WebSocket, HTTP and TLS stacks, the file
//! watcher) log raw frames, headers and URLs at DEBUG and TRACE; whatever
//! `RUNTIMEUSE_LOG` asks for, their events above INFO are dropped
//! ([`is_capped`]).
//!
//! Lines are text (the default) or, with `--log-format json`, one JSON
//! object per line for log shippers: `timestamp`, `level`, `target`, the
//! event's fields (`message`, `error`, ...) at the top level, and `spans`,
//! the enclosing spans with their fields (`session` with `id` and `peer`,
//! `request` with `source_id` and `kind`).

use std::cell::RefCell;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::{LookupSpan, Registry};
use tracing_subscriber::util::SubscriberInitExt;

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
/// `default_level`) with third-party targets capped at INFO, the chosen
/// format, stderr redacted with each session's secrets. Called once, by the
/// binary (the server, or `check-handler`).
pub(crate) fn init(format: LogFormat, default_level: &str) {
    let filter =
        EnvFilter::try_from_env("RUNTIMEUSE_LOG").unwrap_or_else(|_| EnvFilter::new(default_level));
    let cap = tracing_subscriber::filter::filter_fn(|meta| !is_capped(meta));
    let lines = tracing_subscriber::fmt::layer().with_writer(RedactingStderr);
    let lines = match format {
        LogFormat::Text => lines
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .boxed(),
        LogFormat::Json => lines
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(true)
            .boxed(),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(cap)
        .with(SessionScope)
        .with(lines)
        .init();
}

/// Whether an event or span is dropped whatever the filter says: one from
/// a third-party library (any target but the runtime's own) above INFO.
/// At DEBUG and TRACE those log raw WebSocket frames (secrets, command
/// `env` values), HTTP requests and URLs (presigned query strings).
fn is_capped(meta: &Metadata<'_>) -> bool {
    let target = meta.target();
    let ours = target == "handler" || target == "npm" || target.starts_with("runtimeuse");
    !ours && *meta.level() > Level::INFO
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

/// The secrets one session's log lines are scrubbed of: its
/// `secrets_to_redact`, each also as it appears escaped inside a JSON line or
/// a `Debug`-quoted field, or both (a quoted input in a JSON line); a `"` or
/// `\` in a secret is written `\"` / `\\` there, so the plain value would not
/// match. Updated by the session
/// as requests name secrets; read for every line logged in its span.
#[derive(Debug, Clone, Default)]
pub(crate) struct LogSecrets(Arc<RwLock<Redactor>>);

impl LogSecrets {
    /// Makes the set `session`'s secrets and their escaped forms (sharing
    /// `session`'s automaton when no secret escapes differently).
    pub(crate) fn set(&self, session: &Redactor) {
        let secrets = session.secrets();
        let forms: Vec<String> = secrets
            .iter()
            .flat_map(|s| {
                let debug = debug_escaped(s);
                [json_escaped(s), json_escaped(&debug), debug]
            })
            .filter(|form| secrets.binary_search(form).is_err())
            .collect();
        let redactor = if forms.is_empty() {
            session.clone()
        } else {
            session.with(forms)
        };
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = redactor;
    }

    /// Empties the set, when the session is over, so its automata can be
    /// freed before its span is.
    pub(crate) fn clear(&self) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Redactor::default();
    }

    fn current(&self) -> Redactor {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Scrubs every line logged within `span` (and the spans inside it) of
/// `secrets`. Does nothing if the log was not installed by [`init`].
pub(crate) fn scrub_span(span: &tracing::Span, secrets: LogSecrets) {
    span.with_subscriber(|(id, dispatch)| {
        if let Some(span) = dispatch
            .downcast_ref::<Registry>()
            .and_then(|registry| registry.span(id))
        {
            span.extensions_mut().insert(secrets);
        }
    });
}

/// `secret` as serde_json writes it inside a string (without the quotes).
fn json_escaped(secret: &str) -> String {
    let quoted = serde_json::Value::from(secret).to_string();
    quoted[1..quoted.len() - 1].to_owned()
}

/// `secret` as `Debug` writes it inside a string (without the quotes).
fn debug_escaped(secret: &str) -> String {
    let quoted = format!("{secret:?}");
    quoted[1..quoted.len() - 1].to_owned()
}

thread_local! {
    /// The secrets of the event being formatted on this thread, set by
    /// [`SessionScope`] just before the formatting layer writes it.
    static EVENT_SECRETS: RefCell<Option<Redactor>> = const { RefCell::new(None) };
}

/// A layer, placed before the formatting one, that finds the [`LogSecrets`]
/// of the event's session (the nearest enclosing span holding some) and
/// leaves them where [`RedactingStderr`] picks them up. (A `MakeWriter`
/// cannot look at spans itself: the dispatcher is busy while it runs.)
#[derive(Debug, Clone, Copy)]
pub(crate) struct SessionScope;

impl<S> Layer<S> for SessionScope
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let secrets = ctx.event_scope(event).and_then(|scope| {
            scope.into_iter().find_map(|span| {
                span.extensions()
                    .get::<LogSecrets>()
                    .map(LogSecrets::current)
            })
        });
        EVENT_SECRETS.with(|slot| *slot.borrow_mut() = secrets);
    }
}

/// A `tracing_subscriber` writer: stderr, one redacted line at a time.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RedactingStderr;

impl<'a> MakeWriter<'a> for RedactingStderr {
    type Writer = LineWriter;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter {
            buf: Vec::new(),
            secrets: EVENT_SECRETS.with(|slot| slot.borrow().clone()),
        }
    }
}

/// Collects one formatted event and writes it, redacted, when dropped.
#[derive(Debug)]
pub(crate) struct LineWriter {
    buf: Vec<u8>,
    secrets: Option<Redactor>,
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
        let redacted = match &self.secrets {
            Some(secrets) => secrets.redact_bytes(&self.buf),
            None => std::mem::take(&mut self.buf),
        };
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
    fn secrets_are_also_scrubbed_as_json_and_debug_escape_them() {
        let secret = r#"quo"te\slash-secret"#;
        let secrets = LogSecrets::default();
        secrets.set(&Redactor::new([secret]));
        let line = serde_json::json!({ "error": format!("got {secret}") }).to_string();
        assert!(
            !line.contains(secret),
            "the line holds only the escaped form"
        );
        let redacted = secrets.current().redact_bytes(line.as_bytes());
        assert_eq!(redacted, br#"{"error":"got [REDACTED]"}"#);
        let debug = format!("reason={:?}", format!("got {secret}"));
        let redacted = secrets.current().redact_bytes(debug.as_bytes());
        assert_eq!(redacted, br#"reason="got [REDACTED]""#);
        let both = serde_json::json!({ "reason": format!("{secret:?}") }).to_string();
        let redacted = secrets.current().redact_bytes(both.as_bytes());
        assert_eq!(redacted, br#"{"reason":"\"[REDACTED]\""}"#);
    }

    #[test]
    fn third_party_targets_are_capped_at_info() {
        use tracing::callsite::Identifier;
        use tracing::metadata::Kind;
        struct Site;
        impl tracing::Callsite for Site {
            fn set_interest(&self, _: tracing::subscriber::Interest) {}
            fn metadata(&self) -> &Metadata<'_> {
                unreachable!()
            }
        }
        static SITE: Site = Site;
        let meta = |target: &'static str, level| {
            Metadata::new(
                "e",
                target,
                level,
                None,
                None,
                None,
                tracing::field::FieldSet::new(&[], Identifier(&SITE)),
                Kind::EVENT,
            )
        };
        assert!(is_capped(&meta("tungstenite::protocol", Level::TRACE)));
        assert!(is_capped(&meta("hyper_util::client", Level::DEBUG)));
        assert!(!is_capped(&meta("reqwest::connect", Level::INFO)));
        assert!(!is_capped(&meta("runtimeuse::session", Level::TRACE)));
        assert!(!is_capped(&meta("handler", Level::DEBUG)));
    }
}
