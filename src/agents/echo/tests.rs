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

/// The reader's line parsing, shared with the warm-up: invokes and cancels
/// are recognised, anything else is skipped.
#[test]
fn parse_keeps_invokes_and_cancels_only() {
    let invoke = parse(r#"{"type":"invoke","protocol":1,"id":"a","user_prompt":"ECHO:x"}"#);
    assert!(
        matches!(invoke, Some(Input::Invoke(ref inv)) if inv.id == "a" && inv.user_prompt == "ECHO:x")
    );
    assert!(
        matches!(parse(r#"{"type":"cancel","id":"a"}"#), Some(Input::Cancel(ref id)) if id == "a")
    );
    for skipped in [
        "",
        "not json",
        "[1]",
        r#"{"type":"other"}"#,
        r#"{"type":"invoke"}"#,
    ] {
        assert!(parse(skipped).is_none(), "{skipped:?}");
    }
}

/// The warm-up answers its made-up invocation into a sink: it must not
/// panic, and a real invocation after it is answered as usual.
#[test]
fn warm_up_then_serve_answers_the_real_invocation() {
    warm_up();
    let input = io::Cursor::new(
        b"{\"type\":\"invoke\",\"id\":\"r\",\"user_prompt\":\"ECHO:real\"}\n".to_vec(),
    );
    let mut out = Vec::new();
    serve(input, &mut out).unwrap();
    let line: Value = serde_json::from_slice(out.strip_suffix(b"\n").unwrap()).unwrap();
    assert_eq!(line["id"], "r");
    assert_eq!(line["text"], "real");
}
