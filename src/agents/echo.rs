//! The bundled `echo` agent handler: deterministic, no model, for tests,
//! demos and checking a sandbox end to end (`--agent echo`).
//!
//! It speaks handler protocol v1 (`protocol/handler-protocol.md`) on
//! stdin/stdout with nothing but std and serde_json, and answers by the
//! user prompt's prefix:
//!
//! | prompt | answer |
//! |---|---|
//! | `ECHO:<text>` | text result `<text>` |
//! | `STRUCTURED:<json>` | `<json>` as structured output (must be an object) |
//! | `SLOW:<ms>` | sleeps, then text `done`; a cancel ends it early with error `cancelled` |
//! | `STREAM:<n>` | n assistant messages `message i of n`, then `streamed n messages` |
//! | `STREAM_TEXT:<text>` | `<text>` as one assistant message, then `done` |
//! | `ERROR:<msg>` | error `<msg>` |
//! | `WRITE_FILE:<path> <content>` | writes the file (parents created), then `wrote <path>` |
//! | `READ_FILE:<path>` | the file's contents |
//! | `ENV:<name>` | the value of `<name>` in the invocation's `env` (error if unset) |
//! | anything else | the prompt itself |
//!
//! Results and errors carry metadata `{"handler":"echo"}`.

use std::collections::{BTreeMap, VecDeque};
use std::io::{self, BufRead, Write};
use std::path::Path;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{Value, json};

/// Runs the echo handler on the process's stdin/stdout until stdin closes.
pub(crate) fn run() {
    warm_up();
    let input = io::BufReader::new(io::stdin());
    let output = io::BufWriter::new(io::stdout().lock());
    // A write error means the runtime is gone: nothing left to do.
    let _ = serve(input, output);
}

/// An `invoke`, reduced to what echo looks at.
#[derive(Debug, Deserialize)]
struct Invoke {
    id: String,
    #[serde(default)]
    user_prompt: String,
    #[serde(default)]
    env: Option<BTreeMap<String, String>>,
}

enum Input {
    Invoke(Invoke),
    Cancel(String),
    Eof,
}

#[derive(PartialEq)]
enum Flow {
    Continue,
    Exit,
}

/// Serves the protocol over any reader and writer. Reading happens on its
/// own thread so a `cancel` can arrive while an invocation sleeps.
pub(crate) fn serve<R, W>(input: R, mut output: W) -> io::Result<()>
where
    R: BufRead + Send + 'static,
    W: Write,
{
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in input.lines() {
            let Ok(line) = line else { break };
            if let Some(parsed) = parse(&line)
                && tx.send(parsed).is_err()
            {
                return;
            }
        }
        let _ = tx.send(Input::Eof);
    });

    let mut pending = VecDeque::new();
    loop {
        let next = pending
            .pop_front()
            .unwrap_or_else(|| rx.recv().unwrap_or(Input::Eof));
        match next {
            Input::Invoke(inv) => {
                if handle(&inv, &rx, &mut pending, &mut output)? == Flow::Exit {
                    return Ok(());
                }
            }
            // A cancel for an invocation that already finished.
            Input::Cancel(_) => {}
            Input::Eof => return Ok(()),
        }
    }
}

/// One stdin line, if it is an `invoke` or a `cancel`.
fn parse(line: &str) -> Option<Input> {
    let Ok(Value::Object(msg)) = serde_json::from_str::<Value>(line) else {
        return None;
    };
    match msg.get("type").and_then(Value::as_str) {
        Some("invoke") => serde_json::from_value(Value::Object(msg))
            .ok()
            .map(Input::Invoke),
        Some("cancel") => msg
            .get("id")
            .and_then(Value::as_str)
            .map(|id| Input::Cancel(id.to_owned())),
        _ => None,
    }
}

/// A made-up invocation, run through the parsing and answering code with
/// its answer thrown away, before the first line is read.
///
/// The runtime starts this process as a spare, long before a session
/// needs it; the first real invocation then runs on code and heap pages
/// that are already mapped instead of faulting them in one by one
/// (measured: the first answer ~0.08 ms sooner, in line with the later
/// ones). Nothing reaches stdout: the runtime sees no line before its
/// first `invoke`'s answer.
fn warm_up() {
    let line =
        r#"{"type":"invoke","protocol":1,"id":"warm-up","user_prompt":"ECHO:warm-up","env":{}}"#;
    let Some(Input::Invoke(inv)) = parse(line) else {
        return;
    };
    let (_tx, rx) = mpsc::channel();
    let _ = handle(&inv, &rx, &mut VecDeque::new(), &mut io::sink());
}

fn send(out: &mut impl Write, msg: &Value) -> io::Result<()> {
    serde_json::to_writer(&mut *out, msg)?;
    out.write_all(b"\n")?;
    out.flush()
}

fn text(id: &str, text: &str) -> Value {
    json!({"type": "result", "id": id, "text": text, "metadata": {"handler": "echo"}})
}

fn error(id: &str, error: &str) -> Value {
    json!({"type": "error", "id": id, "error": error, "metadata": {"handler": "echo"}})
}

fn assistant(id: &str, text: &str) -> Value {
    json!({"type": "assistant", "id": id, "text_blocks": [text]})
}

fn handle(
    inv: &Invoke,
    rx: &Receiver<Input>,
    pending: &mut VecDeque<Input>,
    out: &mut impl Write,
) -> io::Result<Flow> {
    let id = inv.id.as_str();
    let prompt = inv.user_prompt.as_str();
    let reply = if let Some(rest) = prompt.strip_prefix("ECHO:") {
        text(id, rest)
    } else if let Some(rest) = prompt.strip_prefix("STRUCTURED:") {
        match serde_json::from_str::<Value>(rest) {
            Ok(Value::Object(obj)) => json!({"type": "result", "id": id,
                "structured_output": obj, "metadata": {"handler": "echo"}}),
            Ok(_) => error(id, "STRUCTURED: expected a JSON object"),
            Err(e) => error(id, &format!("STRUCTURED: invalid JSON: {e}")),
        }
    } else if let Some(rest) = prompt.strip_prefix("SLOW:") {
        match rest.trim().parse::<u64>() {
            Ok(ms) => match sleep_unless_cancelled(id, Duration::from_millis(ms), rx, pending) {
                Wait::Slept => text(id, "done"),
                Wait::Cancelled => error(id, "cancelled"),
                Wait::Eof => return Ok(Flow::Exit),
            },
            Err(_) => error(id, &format!("SLOW: not a number of milliseconds: {rest:?}")),
        }
    } else if let Some(rest) = prompt.strip_prefix("STREAM_TEXT:") {
        send(out, &assistant(id, rest))?;
        text(id, "done")
    } else if let Some(rest) = prompt.strip_prefix("STREAM:") {
        match rest.trim().parse::<u64>() {
            Ok(n) => {
                for i in 1..=n {
                    send(out, &assistant(id, &format!("message {i} of {n}")))?;
                }
                text(id, &format!("streamed {n} messages"))
            }
            Err(_) => error(id, &format!("STREAM: not a count: {rest:?}")),
        }
    } else if let Some(rest) = prompt.strip_prefix("ERROR:") {
        error(id, rest)
    } else if let Some(rest) = prompt.strip_prefix("WRITE_FILE:") {
        let (path, content) = rest.split_once(' ').unwrap_or((rest, ""));
        match write_file(Path::new(path), content) {
            Ok(()) => text(id, &format!("wrote {path}")),
            Err(e) => error(id, &format!("WRITE_FILE: cannot write {path}: {e}")),
        }
    } else if let Some(path) = prompt.strip_prefix("READ_FILE:") {
        match std::fs::read(path) {
            Ok(bytes) => text(id, &String::from_utf8_lossy(&bytes)),
            Err(e) => error(id, &format!("READ_FILE: cannot read {path}: {e}")),
        }
    } else if let Some(name) = prompt.strip_prefix("ENV:") {
        match inv.env.as_ref().and_then(|env| env.get(name)) {
            Some(value) => text(id, value),
            None => error(id, &format!("ENV: {name} is not set")),
        }
    } else {
        text(id, prompt)
    };
    send(out, &reply)?;
    Ok(Flow::Continue)
}

fn write_file(path: &Path, content: &str) -> io::Result<()> {
    if let Some(parent) = path.parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(path, content)
}

enum Wait {
    Slept,
    Cancelled,
    Eof,
}

fn sleep_unless_cancelled(
    id: &str,
    duration: Duration,
    rx: &Receiver<Input>,
    pending: &mut VecDeque<Input>,
) -> Wait {
    let deadline = Instant::now() + duration;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Wait::Slept;
        }
        match rx.recv_timeout(left) {
            Ok(Input::Cancel(cancelled)) if cancelled == id => return Wait::Cancelled,
            Ok(Input::Cancel(_)) => {}
            // One invocation at a time: a second one waits its turn.
            Ok(invoke @ Input::Invoke(_)) => pending.push_back(invoke),
            Ok(Input::Eof) | Err(RecvTimeoutError::Disconnected) => return Wait::Eof,
            Err(RecvTimeoutError::Timeout) => return Wait::Slept,
        }
    }
}

#[cfg(test)]
mod tests;
