//! The WebSocket client side of every wire figure.
//!
//! One current-thread tokio runtime, no JSON parsing of frames that are not
//! terminals (the message type is found by a substring search), and the
//! same request bytes sent to the runtime and to the floor echo server, so
//! the client costs the same few microseconds in a figure and in its floor.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async_with_config};

use crate::args::Args;
use crate::procs;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long one request may take before the figure is abandoned.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// Longest wait for a server to go quiet between one-shot queries.
const QUIET_LIMIT: Duration = Duration::from_secs(20);
/// How long a close handshake may take before the client stops waiting.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// What a figure sends, and which terminal ends it.
#[derive(Clone, Copy)]
enum Kind {
    /// An invocation sent to the floor echo server: the reply is the same
    /// bytes, so the floor carries the figure's exact payload.
    Echo,
    /// An `ECHO:hi` invocation to the runtime.
    Invoke,
    /// A `command_execution_message` running `command=`.
    Cmd,
}

impl Kind {
    fn parse(raw: &str) -> Result<Self, String> {
        match raw {
            "echo" => Ok(Self::Echo),
            "invoke" => Ok(Self::Invoke),
            "cmd" => Ok(Self::Cmd),
            other => Err(format!("kind={other:?}: expected echo, invoke or cmd")),
        }
    }

    fn expected_terminal(self) -> &'static str {
        match self {
            Self::Echo => "invocation_message",
            Self::Invoke => "result_message",
            Self::Cmd => "command_execution_result_message",
        }
    }
}

/// The request a kind sends, built once per figure.
struct Request {
    kind: Kind,
    text: String,
}

impl Request {
    fn from_args(args: &Args) -> Result<Self, String> {
        let kind = Kind::parse(&args.get::<String>("kind")?)?;
        let text = match kind {
            Kind::Echo | Kind::Invoke => invocation("ECHO:hi").to_string(),
            Kind::Cmd => commands(&args.get_or("command", "true".to_owned())?).to_string(),
        };
        Ok(Self { kind, text })
    }

    /// Sends the request and waits for its terminal, which must be the
    /// expected one (an `error_message` fails the figure).
    async fn run(&self, ws: &mut Ws) -> Result<String, String> {
        let terminal = exchange(ws, &self.text, |_, _| None).await?;
        check_terminal(&terminal, self.kind.expected_terminal())?;
        Ok(terminal)
    }
}

fn invocation(prompt: &str) -> Value {
    json!({"message_type": "invocation_message", "source_id": "bench",
           "system_prompt": "s", "user_prompt": prompt, "model": "echo",
           "secrets_to_redact": []})
}

fn commands(command: &str) -> Value {
    json!({"message_type": "command_execution_message", "source_id": "bench",
           "secrets_to_redact": [], "commands": [{"command": command}]})
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
}

async fn connect(url: &str) -> Result<Ws, String> {
    let config = WebSocketConfig::default()
        .max_message_size(None)
        .max_frame_size(None);
    let (ws, _) = connect_async_with_config(url, Some(config), true)
        .await
        .map_err(|e| format!("connect {url}: {e}"))?;
    Ok(ws)
}

/// Closes like the real client does: close frame, then wait for the
/// server's, so the next connection does not race the previous teardown.
async fn close(mut ws: Ws) {
    let _ = ws.close(None).await;
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}

/// The `message_type` of a frame without parsing it: the first unescaped
/// `"message_type":"` can only be the key (quotes inside strings are
/// escaped).
fn message_type(frame: &str) -> &str {
    const KEY: &str = "\"message_type\":\"";
    let Some(start) = frame.find(KEY).map(|i| i + KEY.len()) else {
        return "";
    };
    frame[start..].split('"').next().unwrap_or("")
}

fn check_terminal(terminal: &str, expected: &str) -> Result<(), String> {
    match message_type(terminal) == expected {
        true => Ok(()),
        false => Err(format!(
            "expected {expected}, got {}",
            &terminal[..terminal.len().min(500)]
        )),
    }
}

/// Sends `text` and reads frames until a terminal (`error_message` or any
/// type ending in `result_message`, or anything at all from the echo
/// server). `on_frame` sees every other frame and may answer it.
async fn exchange(
    ws: &mut Ws,
    text: &str,
    mut on_frame: impl FnMut(&str, &str) -> Option<String>,
) -> Result<String, String> {
    ws.send(Message::text(text))
        .await
        .map_err(|e| e.to_string())?;
    let read = async {
        loop {
            let frame = match ws.next().await {
                Some(Ok(Message::Text(frame))) => frame,
                Some(Ok(Message::Close(reason))) => return Err(format!("closed: {reason:?}")),
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(e.to_string()),
                None => return Err("connection closed before the terminal".into()),
            };
            let kind = message_type(&frame);
            if kind == "invocation_message"
                || kind == "error_message"
                || kind.ends_with("result_message")
            {
                return Ok(frame.as_str().to_owned());
            }
            if let Some(reply) = on_frame(kind, &frame) {
                ws.send(Message::text(reply))
                    .await
                    .map_err(|e| e.to_string())?;
            }
        }
    };
    tokio::time::timeout(REQUEST_TIMEOUT, read)
        .await
        .map_err(|_| "no terminal within the request timeout".to_owned())?
}

fn micros(since: Instant) -> u64 {
    since.elapsed().as_micros() as u64
}

/// Round trips on one open connection, after `warmup` unrecorded ones.
pub fn latency(args: &Args) -> Result<Value, String> {
    let url: String = args.get("url")?;
    let n: usize = args.get("n")?;
    let warmup: usize = args.get_or("warmup", 20)?;
    let request = Request::from_args(args)?;
    runtime()?.block_on(async {
        let mut ws = connect(&url).await?;
        for _ in 0..warmup {
            request.run(&mut ws).await?;
        }
        let mut samples = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            request.run(&mut ws).await?;
            samples.push(micros(t));
        }
        close(ws).await;
        Ok(json!({"samples_us": samples}))
    })
}

/// What `client.query()` does: a new connection per request. Each sample
/// is connect + request to its terminal; the close handshake that follows
/// is timed separately (the real client waits for it before returning), and
/// so is the connection's part (TCP and WebSocket handshakes).
///
/// Between queries: at least `gap_ms`, then, with `quiet_pid=`, until that
/// server and its children have used no CPU for `quiet_ms` (its spare
/// handler is started and idle); `ready_us` is how long that took from
/// the previous close.
pub fn oneshot(args: &Args) -> Result<Value, String> {
    let url: String = args.get("url")?;
    let n: usize = args.get("n")?;
    let gap = Duration::from_millis(args.get_or("gap_ms", 0)?);
    let quiet_pid: u32 = args.get_or("quiet_pid", 0)?;
    let quiet = Duration::from_millis(args.get_or("quiet_ms", 30)?);
    let request = Request::from_args(args)?;
    runtime()?.block_on(async {
        let (mut samples, mut connects, mut closes) = (Vec::new(), Vec::new(), Vec::new());
        let mut ready = Vec::new();
        for _ in 0..n {
            let t = Instant::now();
            tokio::time::sleep(gap).await;
            if quiet_pid != 0 && !procs::wait_quiet(quiet_pid, quiet, QUIET_LIMIT) {
                return Err(format!(
                    "{quiet_pid} did not go quiet within {QUIET_LIMIT:?}"
                ));
            }
            ready.push(micros(t));
            let t = Instant::now();
            let mut ws = connect(&url).await?;
            connects.push(micros(t));
            request.run(&mut ws).await?;
            samples.push(micros(t));
            let t = Instant::now();
            close(ws).await;
            closes.push(micros(t));
        }
        Ok(
            json!({"samples_us": samples, "connect_us": connects, "close_us": closes,
                  "ready_us": ready}),
        )
    })
}

/// `conns` connections at once, each sending `per` requests in sequence.
pub fn concurrent(args: &Args) -> Result<Value, String> {
    let url: String = args.get("url")?;
    let conns: usize = args.get("conns")?;
    let per: usize = args.get("per")?;
    let request = std::sync::Arc::new(Request::from_args(args)?);
    runtime()?.block_on(async {
        let t = Instant::now();
        let tasks: Vec<_> = (0..conns)
            .map(|_| {
                let url = url.clone();
                let request = request.clone();
                tokio::spawn(async move {
                    let mut ws = connect(&url).await?;
                    for _ in 0..per {
                        request.run(&mut ws).await?;
                    }
                    close(ws).await;
                    Ok::<_, String>(())
                })
            })
            .collect();
        for task in tasks {
            task.await.map_err(|e| e.to_string())??;
        }
        let seconds = t.elapsed().as_secs_f64();
        Ok(json!({"requests": conns * per, "seconds": seconds,
                  "req_per_s": (conns * per) as f64 / seconds}))
    })
}

/// One command printing `mb` MiB; frames are counted, not parsed.
pub fn bigout(args: &Args) -> Result<Value, String> {
    let url: String = args.get("url")?;
    let mb: u64 = args.get("mb")?;
    let command = format!("head -c {} /dev/zero | tr '\\0' a", mb << 20);
    runtime()?.block_on(async {
        let mut ws = connect(&url).await?;
        let (mut frames, mut frame_bytes) = (0u64, 0u64);
        let t = Instant::now();
        let terminal = exchange(&mut ws, &commands(&command).to_string(), |_, frame| {
            frames += 1;
            frame_bytes += frame.len() as u64;
            None
        })
        .await?;
        let seconds = t.elapsed().as_secs_f64();
        check_terminal(&terminal, "command_execution_result_message")?;
        let exit_code = exit_code(&terminal);
        close(ws).await;
        Ok(
            json!({"seconds": seconds, "frames": frames, "frame_bytes": frame_bytes,
                  "exit_code": exit_code}),
        )
    })
}

fn exit_code(terminal: &str) -> Value {
    serde_json::from_str::<Value>(terminal)
        .ok()
        .and_then(|v| v["results"][0].get("exit_code").cloned())
        .unwrap_or(Value::Null)
}

/// A command whose new files in `dir` become artifacts; every announcement
/// is answered with `put_url/<n>`. Timed to the terminal, which the runtime
/// sends once every upload is done.
pub fn artifacts(args: &Args) -> Result<Value, String> {
    let url: String = args.get("url")?;
    let dir: String = args.get("dir")?;
    let command: String = args.get("command")?;
    let put_url: String = args.get("put_url")?;
    let mut message = commands(&command);
    message["artifacts_dirs"] = json!([dir]);
    runtime()?.block_on(async {
        let mut ws = connect(&url).await?;
        let mut announced = 0u64;
        let t = Instant::now();
        let terminal = exchange(&mut ws, &message.to_string(), |kind, frame| {
            (kind == "artifact_upload_request_message").then(|| {
                announced += 1;
                let request: Value = serde_json::from_str(frame).unwrap_or_default();
                json!({"message_type": "artifact_upload_response_message",
                       "filename": request["filename"], "filepath": request["filepath"],
                       "presigned_url": format!("{put_url}/{announced}"),
                       "content_type": "application/octet-stream"})
                .to_string()
            })
        })
        .await?;
        let seconds = t.elapsed().as_secs_f64();
        check_terminal(&terminal, "command_execution_result_message")?;
        close(ws).await;
        Ok(json!({"seconds": seconds, "announced": announced}))
    })
}

/// A `true` command preceded by one download into `dir`.
pub fn download(args: &Args) -> Result<Value, String> {
    let url: String = args.get("url")?;
    let dir: String = args.get("dir")?;
    let download_url: String = args.get("download_url")?;
    let mut message = commands("true");
    message["pre_execution_downloadables"] =
        json!([{"download_url": download_url, "working_dir": dir}]);
    runtime()?.block_on(async {
        let mut ws = connect(&url).await?;
        let t = Instant::now();
        let terminal = exchange(&mut ws, &message.to_string(), |_, _| None).await?;
        let seconds = t.elapsed().as_secs_f64();
        check_terminal(&terminal, "command_execution_result_message")?;
        close(ws).await;
        Ok(json!({"seconds": seconds}))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_type_ignores_escaped_keys_inside_strings() {
        let frame = r#"{"message_type":"command_output_message","text":"\"message_type\":\"x\""}"#;
        assert_eq!(message_type(frame), "command_output_message");
        assert_eq!(message_type("{}"), "");
    }
}
