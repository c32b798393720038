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
pub fn run() {
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
pub fn serve<R, W>(input: R, mut output: W) -> io::Result<()>
where
    R: BufRead + Send + 'static,
    W: Write,
{
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in input.lines() {
            let Ok(line) = line else { break };
            let Ok(Value::Object(msg)) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            let parsed = match msg.get("type").and_then(Value::as_str) {
                Some("invoke") => serde_json::from_value(Value::Object(msg))
                    .ok()
                    .map(Input::Invoke),
                Some("cancel") => msg
                    .get("id")
                    .and_then(Value::as_str)
                    .map(|id| Input::Cancel(id.to_owned())),
                _ => None,
            };
            if let Some(parsed) = parsed
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
mod tests {
    use super::*;
    use std::io::Read;
    use std::sync::mpsc::{Receiver, Sender};

    /// A reader fed through a channel: stays open until the sender drops.
    struct ChanReader {
        rx: Receiver<Vec<u8>>,
        buf: Vec<u8>,
        pos: usize,
    }

    impl Read for ChanReader {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            if self.pos == self.buf.len() {
                match self.rx.recv() {
                    Ok(chunk) => {
                        self.buf = chunk;
                        self.pos = 0;
                    }
                    Err(_) => return Ok(0),
                }
            }
            let n = out.len().min(self.buf.len() - self.pos);
            out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
            self.pos += n;
            Ok(n)
        }
    }

    /// Collects written lines into a channel.
    struct ChanWriter {
        tx: Sender<Value>,
        buf: Vec<u8>,
    }

    impl Write for ChanWriter {
        fn write(&mut self, data: &[u8]) -> io::Result<usize> {
            self.buf.extend_from_slice(data);
            while let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                let _ = self
                    .tx
                    .send(serde_json::from_slice(&line).expect("echo writes JSON"));
            }
            Ok(data.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    struct Harness {
        input: Option<Sender<Vec<u8>>>,
        output: Receiver<Value>,
        done: std::thread::JoinHandle<io::Result<()>>,
    }

    impl Harness {
        fn start() -> Self {
            let (in_tx, in_rx) = mpsc::channel();
            let (out_tx, out_rx) = mpsc::channel();
            let reader = io::BufReader::new(ChanReader {
                rx: in_rx,
                buf: Vec::new(),
                pos: 0,
            });
            let writer = ChanWriter {
                tx: out_tx,
                buf: Vec::new(),
            };
            let done = std::thread::spawn(move || serve(reader, writer));
            Self {
                input: Some(in_tx),
                output: out_rx,
                done,
            }
        }

        fn send(&self, msg: Value) {
            let mut line = serde_json::to_vec(&msg).unwrap();
            line.push(b'\n');
            self.input.as_ref().unwrap().send(line).unwrap();
        }

        fn invoke(&self, id: &str, prompt: &str) {
            self.send(
                json!({"type": "invoke", "protocol": 1, "id": id, "source_id": null,
                "system_prompt": "", "user_prompt": prompt, "model": "", "output_format": null,
                "env": {"NAME": "value"}, "secrets": []}),
            );
        }

        fn recv(&self) -> Value {
            self.output
                .recv_timeout(Duration::from_secs(5))
                .expect("echo answered")
        }

        /// Invokes and returns every message up to and including the terminal.
        fn ask(&self, prompt: &str) -> Vec<Value> {
            self.invoke("i1", prompt);
            let mut got = Vec::new();
            loop {
                let msg = self.recv();
                let terminal = msg["type"] != "assistant";
                got.push(msg);
                if terminal {
                    return got;
                }
            }
        }

        fn close(mut self) {
            self.input = None;
            self.done.join().unwrap().unwrap();
        }
    }

    fn ask_one(prompt: &str) -> Value {
        let h = Harness::start();
        let mut got = h.ask(prompt);
        h.close();
        assert_eq!(got.len(), 1, "{got:?}");
        got.remove(0)
    }

    #[test]
    fn echo_prefix_returns_the_text() {
        assert_eq!(
            ask_one("ECHO:hello world"),
            json!({"type": "result", "id": "i1", "text": "hello world",
                "metadata": {"handler": "echo"}})
        );
    }

    #[test]
    fn anything_else_returns_the_prompt() {
        assert_eq!(ask_one("just a prompt")["text"], "just a prompt");
    }

    #[test]
    fn structured_prefix_returns_the_object() {
        let msg = ask_one(r#"STRUCTURED:{"a":[1,2],"b":{"c":null}}"#);
        assert_eq!(msg["type"], "result");
        assert_eq!(
            msg["structured_output"],
            json!({"a": [1, 2], "b": {"c": null}})
        );
        assert_eq!(msg["metadata"], json!({"handler": "echo"}));
        let msg = ask_one("STRUCTURED:[1]");
        assert_eq!(msg["type"], "error");
        assert!(msg["error"].as_str().unwrap().contains("object"));
        let msg = ask_one("STRUCTURED:{nope");
        assert_eq!(msg["type"], "error");
        assert!(msg["error"].as_str().unwrap().contains("invalid JSON"));
    }

    #[test]
    fn stream_prefix_sends_n_messages() {
        let h = Harness::start();
        let got = h.ask("STREAM:3");
        h.close();
        let texts: Vec<&Value> = got.iter().map(|m| &m["text_blocks"][0]).collect();
        assert_eq!(
            texts[..3],
            [
                &json!("message 1 of 3"),
                &json!("message 2 of 3"),
                &json!("message 3 of 3")
            ]
        );
        assert_eq!(got[3]["text"], "streamed 3 messages");
        assert!(got.iter().all(|m| m["id"] == "i1"));
    }

    #[test]
    fn stream_text_prefix_sends_one_message() {
        let h = Harness::start();
        let got = h.ask("STREAM_TEXT:thinking...");
        h.close();
        assert_eq!(got.len(), 2);
        assert_eq!(
            got[0],
            json!({"type": "assistant", "id": "i1", "text_blocks": ["thinking..."]})
        );
        assert_eq!(got[1]["text"], "done");
    }

    #[test]
    fn error_prefix_reports_an_error() {
        assert_eq!(
            ask_one("ERROR:it broke"),
            json!({"type": "error", "id": "i1", "error": "it broke",
                "metadata": {"handler": "echo"}})
        );
    }

    #[test]
    fn write_then_read_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/out.txt");
        let path = path.to_str().unwrap();
        let msg = ask_one(&format!("WRITE_FILE:{path} hello there"));
        assert_eq!(msg["text"], format!("wrote {path}"));
        assert_eq!(std::fs::read_to_string(path).unwrap(), "hello there");
        assert_eq!(ask_one(&format!("READ_FILE:{path}"))["text"], "hello there");
        let msg = ask_one(&format!("READ_FILE:{path}.missing"));
        assert_eq!(msg["type"], "error");
    }

    #[test]
    fn env_prefix_reads_the_invocation_env() {
        assert_eq!(ask_one("ENV:NAME")["text"], "value");
        assert_eq!(ask_one("ENV:OTHER")["type"], "error");
    }

    #[test]
    fn slow_finishes_then_serves_the_next_invocation() {
        let h = Harness::start();
        let start = Instant::now();
        assert_eq!(h.ask("SLOW:50")[0]["text"], "done");
        assert!(start.elapsed() >= Duration::from_millis(50));
        assert_eq!(h.ask("SLOW:x")[0]["type"], "error");
        assert_eq!(h.ask("ECHO:next")[0]["text"], "next");
        h.close();
    }

    #[test]
    fn cancel_ends_a_slow_invocation_early() {
        let h = Harness::start();
        let start = Instant::now();
        h.invoke("slow", "SLOW:10000");
        h.send(json!({"type": "cancel", "id": "other"}));
        h.send(json!({"type": "cancel", "id": "slow"}));
        let msg = h.recv();
        assert!(start.elapsed() < Duration::from_secs(5));
        assert_eq!(
            msg,
            json!({"type": "error", "id": "slow", "error": "cancelled",
                "metadata": {"handler": "echo"}})
        );
        // Still warm.
        assert_eq!(h.ask("ECHO:after")[0]["text"], "after");
        h.close();
    }

    #[test]
    fn stdin_eof_during_a_sleep_exits_at_once() {
        let h = Harness::start();
        let start = Instant::now();
        h.invoke("slow", "SLOW:10000");
        h.close();
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn ignores_junk_and_unknown_types() {
        let h = Harness::start();
        h.input
            .as_ref()
            .unwrap()
            .send(b"not json\n".to_vec())
            .unwrap();
        h.send(json!({"type": "from_the_future"}));
        h.send(json!({"type": "cancel", "id": "nothing running"}));
        assert_eq!(h.ask("ECHO:ok")[0]["text"], "ok");
        h.close();
    }
}
