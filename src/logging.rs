//! The runtime's log, redacted as a whole.
//!
//! Modules already redact what they log, but a log line is built from many
//! pieces (a command, a file name, a peer's input quoted in a warning), and
//! one forgotten call would leak. So every formatted line also passes
//! through [`RedactingStderr`], which scrubs it with every secret any
//! session of this process has named, before it reaches stderr.

use std::io::{self, Write};
use std::sync::{LazyLock, RwLock};

use tracing_subscriber::fmt::MakeWriter;

use crate::redact::Redactor;

/// Beyond this many distinct secrets, new ones still redact their own
/// session's messages but are no longer added to the process-wide log
/// redactor (which would otherwise grow without bound on a long-lived
/// runtime with hostile clients).
const MAX_LOG_SECRETS: usize = 10_000;

static LOG_SECRETS: LazyLock<RwLock<Redactor>> = LazyLock::new(Default::default);

/// Adds secrets to the set scrubbed from every log line.
pub(crate) fn remember_secrets(secrets: &[String]) {
    let mut guard = LOG_SECRETS.write().unwrap_or_else(|e| e.into_inner());
    let known = guard.secrets();
    let fresh: Vec<&String> = secrets
        .iter()
        .filter(|s| !s.is_empty() && known.binary_search(s).is_err())
        .collect();
    if fresh.is_empty() || known.len() + fresh.len() > MAX_LOG_SECRETS {
        return;
    }
    *guard = guard.with(fresh);
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
    fn remembered_secrets_are_scrubbed_from_lines() {
        remember_secrets(&["log-secret-123456".into(), String::new()]);
        let line = b"user said log-secret-123456 twice: log-secret-123456\n";
        let redacted = log_redactor().redact_bytes(line);
        assert_eq!(redacted, b"user said [REDACTED] twice: [REDACTED]\n");
    }
}
