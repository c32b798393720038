//! The handler's pipes: its stdout becomes a queue of [`Event`]s for the
//! invocation loop, its stderr becomes redacted log lines (the last few kept
//! for a crash report).
//!
//! Each pipe is read by its own task for the life of the process, so a
//! handler that writes between invocations (or floods its log) never
//! blocks on a full pipe. Reads are bounded by line length: a handler can
//! make the runtime hold at most [`MAX_LINE_BYTES`] of one message.
//! Everything that leaves these tasks is redacted with the secrets of the
//! invocation in progress ([`SharedRedactor`]).

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use serde_json::{Map, Value};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, BufReader};
use tokio::process::{ChildStderr, ChildStdout};
use tokio::sync::mpsc;

use crate::redact::Redactor;
use crate::text::truncate_chars;

/// Longest single line a handler may write on stdout.
pub(crate) const MAX_LINE_BYTES: usize = 32 * 1024 * 1024;

/// Longest stderr line logged as one record; longer ones are split.
const STDERR_LINE_BYTES: usize = 16 * 1024;
/// How many stderr lines are kept for a crash report.
const STDERR_TAIL_LINES: usize = 10;
/// How much of each kept stderr line goes into a crash report.
const STDERR_TAIL_CHARS: usize = 300;
/// How much of a garbage line is quoted in the error.
const QUOTE_CHARS: usize = 200;

/// The redactor of the invocation in progress, shared with the pipe tasks
/// (which outlive any one invocation).
pub(crate) type SharedRedactor = Arc<RwLock<Redactor>>;

/// The last stderr lines, for a crash report.
pub(crate) type StderrTail = Arc<Mutex<VecDeque<String>>>;

fn current(redactor: &SharedRedactor) -> Redactor {
    redactor
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
}

/// What the stdout reader task hands to the invocation loop. The channel
/// closing means stdout reached EOF.
#[derive(Debug)]
pub(crate) enum Event {
    /// A JSON object other than a `log` (those are logged by the task).
    Message(Map<String, Value>),
    /// A line that is not a JSON object, redacted and quoted.
    Garbage(String),
    /// A line over the limit.
    TooLong,
    /// Reading stdout failed.
    ReadFailed(String),
}

pub(crate) enum LineRead {
    Line,
    TooLong,
    Eof,
}

/// Reads one `\n`-terminated line (without the `\n`) into `buf`, refusing to
/// hold more than `max` bytes. On `TooLong`, `buf` holds the first `max`.
pub(crate) async fn read_line<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> io::Result<LineRead> {
    buf.clear();
    loop {
        let chunk = reader.fill_buf().await?;
        if chunk.is_empty() {
            return Ok(if buf.is_empty() {
                LineRead::Eof
            } else {
                LineRead::Line
            });
        }
        let (take, newline) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (i, true),
            None => (chunk.len(), false),
        };
        if buf.len() + take > max {
            let room = max - buf.len();
            buf.extend_from_slice(&chunk[..room]);
            reader.consume(room);
            return Ok(LineRead::TooLong);
        }
        buf.extend_from_slice(&chunk[..take]);
        reader.consume(take + usize::from(newline));
        if newline {
            return Ok(LineRead::Line);
        }
    }
}

pub(crate) fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Turns stdout lines into [`Event`]s until EOF or a line that ends the
/// protocol (garbage, too long, unreadable).
pub(crate) async fn read_stdout(
    stdout: ChildStdout,
    tx: mpsc::Sender<Event>,
    max_line: usize,
    redactor: SharedRedactor,
    pid: u32,
) {
    let mut reader = BufReader::with_capacity(64 * 1024, stdout);
    let mut buf = Vec::new();
    loop {
        let event = match read_line(&mut reader, &mut buf, max_line).await {
            Ok(LineRead::Eof) => return,
            Ok(LineRead::TooLong) => Event::TooLong,
            Err(e) => Event::ReadFailed(e.to_string()),
            Ok(LineRead::Line) => {
                let line = trim_cr(&buf);
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                match serde_json::from_slice::<Value>(line) {
                    Ok(Value::Object(map)) => {
                        if map.get("type").and_then(Value::as_str) == Some("log") {
                            log_message(&map, &current(&redactor), pid);
                            continue;
                        }
                        Event::Message(map)
                    }
                    _ => {
                        // Redact the whole line before cutting it, so a
                        // secret straddling the cut cannot leak a prefix.
                        let text = String::from_utf8_lossy(line);
                        let text = current(&redactor).redact_str(&text).into_owned();
                        Event::Garbage(truncate_chars(&text, QUOTE_CHARS))
                    }
                }
            }
        };
        let last = !matches!(event, Event::Message(_));
        if tx.send(event).await.is_err() || last {
            return;
        }
    }
}

/// A handler's `{"type":"log"}` goes to the runtime log, redacted. Logs are
/// logged whatever their id: they are not part of any invocation's output.
fn log_message(map: &Map<String, Value>, redactor: &Redactor, pid: u32) {
    let message = match map.get("message") {
        Some(Value::String(s)) => redactor.redact_str(s).into_owned(),
        _ => {
            let mut whole = Value::Object(map.clone());
            redactor.redact_json(&mut whole);
            whole.to_string()
        }
    };
    match map.get("level").and_then(Value::as_str).unwrap_or("info") {
        "debug" | "trace" => tracing::debug!(target: "handler", pid, "{message}"),
        "warn" | "warning" => tracing::warn!(target: "handler", pid, "{message}"),
        "error" => tracing::error!(target: "handler", pid, "{message}"),
        _ => tracing::info!(target: "handler", pid, "{message}"),
    }
}

/// Logs stderr lines, redacted, keeping the last few in `tail`.
pub(crate) async fn read_stderr(
    stderr: ChildStderr,
    redactor: SharedRedactor,
    tail: StderrTail,
    pid: u32,
) {
    let mut reader = BufReader::new(stderr);
    let mut buf = Vec::new();
    loop {
        match read_line(&mut reader, &mut buf, STDERR_LINE_BYTES).await {
            Ok(LineRead::Eof) | Err(_) => return,
            Ok(LineRead::Line | LineRead::TooLong) => {}
        }
        let text = String::from_utf8_lossy(trim_cr(&buf));
        let text = current(&redactor).redact_str(&text).into_owned();
        crate::logging::handler_stderr(pid, &text);
        let mut tail = tail.lock().unwrap_or_else(PoisonError::into_inner);
        if tail.len() == STDERR_TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(truncate_chars(&text, STDERR_TAIL_CHARS));
    }
}
