//! The agent-handler host: runs the user's (or a bundled) agent handler as a
//! child process and speaks handler protocol v1 with it.
//!
//! The handler is any program that reads newline-delimited JSON on stdin and
//! writes newline-delimited JSON on stdout (`protocol/handler-protocol.md` is
//! the contract). One [`HandlerHost`] belongs to one client session and owns
//! at most one live child: it is spawned on the first invocation and kept warm
//! for the following ones, so a session pays the start-up cost once.
//!
//! Failure handling is the point of this module:
//! - the child runs in its own process group, and every way out (crash,
//!   garbage, cancel timeout, shutdown, drop) ends the whole group, so nothing
//!   a handler started outlives it;
//! - each invocation yields exactly one outcome: once the terminal message has
//!   been read, anything else the handler does for that invocation (a crash
//!   included) is never reported, and a handler that died between invocations
//!   is replaced transparently;
//! - messages tagged with another invocation's id are stale and dropped.
//!
//! Everything the host sends to the client or returns is already redacted
//! with the invocation's redactor (plus its `secrets`).

use std::collections::{BTreeMap, VecDeque};
use std::ffi::OsStr;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use serde::Serialize;
use serde_json::{Map, Value};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until, timeout};
use tokio_util::sync::CancellationToken;

use crate::config::AgentSource;
use crate::embedded::CacheDirs;
use crate::outbox::Outbox;
use crate::process;
use crate::redact::Redactor;
use crate::wire::{self, OutboundMessage};

/// The handler protocol version sent in every `invoke`.
pub const PROTOCOL_VERSION: u32 = 1;

/// Hidden subcommand of the runtime binary that runs the bundled echo handler.
pub const ECHO_SUBCOMMAND: &str = "__echo-handler";

/// Longest single line a handler may write on stdout.
pub const MAX_LINE_BYTES: usize = 32 * 1024 * 1024;

/// Longest stderr line logged as one record; longer ones are split.
const STDERR_LINE_BYTES: usize = 16 * 1024;
/// How many stderr lines are kept for a crash report.
const STDERR_TAIL_LINES: usize = 10;
/// How much of each kept stderr line goes into a crash report.
const STDERR_TAIL_CHARS: usize = 300;
/// How much of a garbage line is quoted in the error.
const QUOTE_CHARS: usize = 200;
/// After stdout closed, how long the leader gets to exit on its own (so the
/// report can give its real exit status) before its group is terminated.
const EXIT_WAIT: Duration = Duration::from_secs(1);
/// How long the stderr reader gets to deliver the last lines once the group
/// is gone (something outside the group may still hold the pipe).
const STDERR_DRAIN: Duration = Duration::from_secs(1);
/// Messages buffered from the handler's stdout before it is pushed back on.
const EVENT_QUEUE: usize = 64;

/// A handler program ready to spawn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandlerCommand {
    /// Absolute path of the executable (the handler, its interpreter, or the
    /// runtime binary itself for the bundled echo handler).
    pub program: PathBuf,
    /// Fixed arguments, e.g. the script for an interpreter or
    /// [`ECHO_SUBCOMMAND`]; nothing from the client is ever added.
    pub args: Vec<String>,
    /// How the handler is named in logs and errors.
    pub display: String,
}

/// One agent invocation, as sent to the handler.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Invocation {
    /// Opaque id chosen by the runtime; the handler echoes it back.
    pub id: String,
    /// The client's label for the request, for the handler's logs.
    pub source_id: Option<String>,
    /// The client's system prompt; empty when it sent none.
    pub system_prompt: String,
    /// The task for the agent.
    pub user_prompt: String,
    /// Model identifier; empty means the handler's default.
    pub model: String,
    /// `{"type":"json_schema","schema":{..}}` when the client asked for one.
    pub output_format: Option<Value>,
    /// The invocation's `agent_env`: the handler applies it to what it runs.
    pub env: BTreeMap<String, String>,
    /// Values the handler should keep out of its own logs.
    pub secrets: Vec<String>,
}

/// What an invocation needs from the session.
pub struct InvokeContext<'a> {
    /// Where `assistant_message`s are streamed while the handler works.
    pub outbox: &'a Outbox,
    /// Applied to everything forwarded, returned or logged from the handler.
    pub redactor: &'a Redactor,
    /// Fired on cancel/disconnect: the handler is sent `cancel`, then killed
    /// after `cancel_grace` if it has not answered.
    pub cancel: &'a CancellationToken,
    /// After sending `cancel`, how long the handler has to finish.
    pub cancel_grace: Duration,
    /// After SIGTERM to the handler's group, how long before SIGKILL.
    pub kill_grace: Duration,
}

/// A successful invocation's result, redacted.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentOutput {
    /// Text, or a structured-output object when an output format was asked.
    pub data: wire::ResultData,
    /// The handler's metadata; `{}` when it sent none.
    pub metadata: Map<String, Value>,
}

/// Why an invocation produced no result.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// The request was cancelled (the text is what the client expects).
    #[error("Request cancelled")]
    Cancelled,
    /// The handler sent `{"type":"error"}`.
    #[error("{error}")]
    Reported {
        /// The handler's error text, passed to the client as is (redacted).
        error: String,
        /// The handler's metadata; `{}` when it sent none.
        metadata: Map<String, Value>,
    },
    /// The handler could not be started, crashed, or broke the protocol.
    #[error("{0}")]
    Failed(String),
    /// The client connection closed while the handler was streaming.
    #[error("the client connection is closed")]
    ClientGone,
}

/// Resolves `--agent NAME` / `--handler PATH` into a spawnable command,
/// with the default cache directory for bundled Node agents.
///
/// Called at startup so a wrong flag fails before any client connects.
pub fn resolve(agent: &AgentSource) -> Result<HandlerCommand, HandlerError> {
    resolve_in(agent, &CacheDirs::new(None))
}

/// [`resolve`], installing a bundled Node agent into `cache` if needed.
pub fn resolve_in(agent: &AgentSource, cache: &CacheDirs) -> Result<HandlerCommand, HandlerError> {
    match agent {
        AgentSource::Bundled(name) => resolve_bundled(name, cache),
        AgentSource::Path(path) => resolve_path(path),
    }
}

fn resolve_bundled(name: &str, cache: &CacheDirs) -> Result<HandlerCommand, HandlerError> {
    if let Some(agent) = crate::bundled::node_agent(name) {
        return crate::bundled::prepare(agent, cache)
            .map_err(|e| HandlerError::Failed(e.to_string()));
    }
    match name {
        "echo" => {
            let exe = std::env::current_exe().map_err(|e| {
                HandlerError::Failed(format!(
                    "bundled handler echo: cannot locate the runtime executable: {e}"
                ))
            })?;
            Ok(HandlerCommand {
                program: exe,
                args: vec![ECHO_SUBCOMMAND.to_owned()],
                display: "echo (bundled)".to_owned(),
            })
        }
        other => Err(HandlerError::Failed(format!(
            "unknown bundled agent {other:?}: choose one of echo, openai, claude \
             (or pass --handler PATH)"
        ))),
    }
}

/// Interpreters for handler scripts that are not executable themselves.
const INTERPRETERS: &[(&str, &str)] = &[
    ("py", "python3"),
    ("js", "node"),
    ("mjs", "node"),
    ("cjs", "node"),
    ("sh", "/bin/sh"),
    ("rb", "ruby"),
];

fn resolve_path(path: &Path) -> Result<HandlerCommand, HandlerError> {
    let fail =
        |why: String| HandlerError::Failed(format!("agent handler {}: {why}", path.display()));
    let canon = path.canonicalize().map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => fail("does not exist".into()),
        _ => fail(e.to_string()),
    })?;
    let meta = std::fs::metadata(&canon).map_err(|e| fail(e.to_string()))?;
    if !meta.is_file() {
        return Err(fail("is not a file".into()));
    }
    let canon_str = canon
        .to_str()
        .ok_or_else(|| fail("path is not valid UTF-8".into()))?
        .to_owned();
    if meta.permissions().mode() & 0o111 != 0 {
        return Ok(HandlerCommand {
            program: canon,
            args: Vec::new(),
            display: canon_str,
        });
    }
    let ext = canon
        .extension()
        .and_then(OsStr::to_str)
        .map(str::to_ascii_lowercase);
    let Some(&(_, interpreter)) = INTERPRETERS
        .iter()
        .find(|(e, _)| Some(*e) == ext.as_deref())
    else {
        let known: Vec<String> = INTERPRETERS.iter().map(|(e, _)| format!(".{e}")).collect();
        return Err(fail(format!(
            "is not executable and its extension ({}) has no known interpreter \
             (known: {}); make it executable (chmod +x) with a #! line",
            ext.map_or_else(|| "none".to_owned(), |e| format!(".{e}")),
            known.join(", ")
        )));
    };
    let program = find_program(interpreter).ok_or_else(|| {
        fail(format!(
            "needs {interpreter} to run, but {interpreter} was not found on PATH"
        ))
    })?;
    Ok(HandlerCommand {
        program,
        args: vec![canon_str.clone()],
        display: format!("{interpreter} {canon_str}"),
    })
}

/// Finds an executable by name on `PATH` (or checks an absolute path).
/// The executable `name` (a path, or looked up on `PATH`).
pub(crate) fn find_program(name: &str) -> Option<PathBuf> {
    let is_exe = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if name.contains('/') {
        let p = PathBuf::from(name);
        return is_exe(&p).then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| is_exe(p))
}

type SharedRedactor = Arc<RwLock<Redactor>>;

fn current(redactor: &SharedRedactor) -> Redactor {
    redactor
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
}

/// What the stdout reader task hands to the invocation loop. The channel
/// closing means stdout reached EOF.
#[derive(Debug)]
enum Event {
    /// A JSON object other than a `log` (those are logged by the task).
    Message(Map<String, Value>),
    /// A line that is not a JSON object, redacted and quoted.
    Garbage(String),
    /// A line over the limit.
    TooLong,
    /// Reading stdout failed.
    ReadFailed(String),
}

/// After the handler process exits, how long its remaining output may
/// take to arrive before the invocation is failed as a crash.
const EXIT_DRAIN: Duration = Duration::from_millis(200);

/// A running handler process.
struct Live {
    child: Child,
    pgid: u32,
    stdin: ChildStdin,
    events: mpsc::Receiver<Event>,
    stdout_task: JoinHandle<()>,
    stderr_task: JoinHandle<()>,
    stderr_tail: Arc<Mutex<VecDeque<String>>>,
}

/// How an attempt at an invocation ended.
enum Attempt {
    Done(Result<AgentOutput, HandlerError>),
    /// The (reused) child died before reading the invocation: safe to retry.
    NeverRead(HandlerError),
}

/// Hosts one session's agent handler process.
pub struct HandlerHost {
    command: Arc<HandlerCommand>,
    redactor: SharedRedactor,
    live: Option<Live>,
    max_line: usize,
}

impl HandlerHost {
    /// A host with no child yet: the handler is spawned on the first
    /// invocation, so a session that only runs commands never starts one.
    pub fn new(command: Arc<HandlerCommand>) -> Self {
        Self {
            command,
            redactor: Arc::default(),
            live: None,
            max_line: MAX_LINE_BYTES,
        }
    }

    /// Lowers the stdout line limit (for tests and tight embeddings).
    pub fn with_max_line_bytes(mut self, max_line: usize) -> Self {
        self.max_line = max_line;
        self
    }

    /// The live handler's pid (also its process group id), if one is running.
    pub fn pid(&self) -> Option<u32> {
        self.live.as_ref().map(|l| l.pgid)
    }

    /// Runs one invocation to its single outcome.
    pub async fn invoke(
        &mut self,
        inv: &Invocation,
        ctx: &InvokeContext<'_>,
    ) -> Result<AgentOutput, HandlerError> {
        if ctx.cancel.is_cancelled() {
            return Err(HandlerError::Cancelled);
        }
        let redactor = ctx.redactor.with(&inv.secrets);
        *self
            .redactor
            .write()
            .unwrap_or_else(PoisonError::into_inner) = redactor.clone();
        let line = invoke_line(inv);
        let mut retried = false;
        loop {
            self.drop_if_dead(ctx.kill_grace).await;
            let reused = self.live.is_some();
            if !reused {
                self.spawn(&redactor)?;
            }
            match self.attempt(inv, ctx, &redactor, &line).await {
                Attempt::Done(outcome) => return outcome,
                Attempt::NeverRead(_) if reused && !retried => {
                    tracing::info!(target: "handler", id = %inv.id,
                        "the warm handler died between invocations; starting a new one");
                    retried = true;
                }
                Attempt::NeverRead(err) => return Err(err),
            }
        }
    }

    /// Closes the handler's stdin, gives it `grace` to exit, then terminates
    /// its process group. Nothing it started is left running.
    pub async fn shutdown(&mut self, grace: Duration) {
        let Some(live) = self.live.take() else {
            return;
        };
        let Live {
            mut child,
            pgid,
            stdin,
            events,
            stdout_task,
            mut stderr_task,
            ..
        } = live;
        drop(stdin);
        let _ = timeout(grace, child.wait()).await;
        process::terminate_group(&mut child, grace).await;
        process::kill_group_remnants(pgid, grace).await;
        drop(events);
        stdout_task.abort();
        if timeout(STDERR_DRAIN, &mut stderr_task).await.is_err() {
            stderr_task.abort();
        }
    }

    fn spawn(&mut self, redactor: &Redactor) -> Result<(), HandlerError> {
        let mut command = build_command(&self.command);
        let mut child = command.spawn().map_err(|e| {
            HandlerError::Failed(
                redactor
                    .redact_str(&spawn_error(&self.command, &e))
                    .into_owned(),
            )
        })?;
        let pgid = child.id().expect("a just-spawned child has a pid");
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            unreachable!("all three pipes were requested");
        };
        let (tx, events) = mpsc::channel(EVENT_QUEUE);
        let stdout_task = tokio::spawn(read_stdout(
            stdout,
            tx,
            self.max_line,
            self.redactor.clone(),
            pgid,
        ));
        let stderr_tail = Arc::new(Mutex::new(VecDeque::new()));
        let stderr_task = tokio::spawn(read_stderr(
            stderr,
            self.redactor.clone(),
            stderr_tail.clone(),
            pgid,
        ));
        tracing::debug!(target: "handler", pid = pgid, handler = %self.command.display, "started agent handler");
        self.live = Some(Live {
            child,
            pgid,
            stdin,
            events,
            stdout_task,
            stderr_task,
            stderr_tail,
        });
        Ok(())
    }

    /// Between invocations: drops what the handler wrote after its last
    /// terminal, and forgets (and cleans up after) a handler that has died.
    async fn drop_if_dead(&mut self, kill_grace: Duration) {
        let Some(live) = self.live.as_mut() else {
            return;
        };
        let mut dead = false;
        loop {
            match live.events.try_recv() {
                Ok(Event::Message(m)) => {
                    let kind = m.get("type").and_then(Value::as_str).unwrap_or("?");
                    tracing::debug!(target: "handler", pid = live.pgid, kind,
                        "dropping a message sent after the invocation's terminal");
                }
                Ok(other) => {
                    tracing::warn!(target: "handler", pid = live.pgid,
                        "handler broke the protocol between invocations ({other:?}); replacing it");
                    dead = true;
                    break;
                }
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    dead = true;
                    break;
                }
            }
        }
        if !dead {
            dead = !matches!(live.child.try_wait(), Ok(None));
        }
        if dead {
            self.end(kill_grace).await;
        }
    }

    /// Terminates the live handler's whole group and forgets it; returns its
    /// exit status if known.
    async fn end(&mut self, kill_grace: Duration) -> Option<ExitStatus> {
        let mut live = self.live.take()?;
        process::terminate_group(&mut live.child, kill_grace).await;
        process::kill_group_remnants(live.pgid, kill_grace).await;
        live.stdout_task.abort();
        if timeout(STDERR_DRAIN, &mut live.stderr_task).await.is_err() {
            live.stderr_task.abort();
        }
        live.child.try_wait().ok().flatten()
    }

    /// Ends the handler after it closed stdout (or its stdin) before the
    /// terminal, and describes what happened.
    async fn crashed(&mut self, kill_grace: Duration, redactor: &Redactor) -> HandlerError {
        let Some(live) = self.live.as_mut() else {
            return HandlerError::Failed("agent handler is not running".into());
        };
        let natural = timeout(EXIT_WAIT, live.child.wait()).await.ok();
        let tail = live.stderr_tail.clone();
        let status = self.end(kill_grace).await;
        let how = match (natural, status) {
            (Some(Ok(status)), _) => format!("exited before sending a result ({status})"),
            (_, Some(status)) => {
                format!("closed its stdout without sending a result and was terminated ({status})")
            }
            _ => "stopped before sending a result".to_owned(),
        };
        let mut text = format!("agent handler {} {how}", self.command.display);
        let tail = tail.lock().unwrap_or_else(PoisonError::into_inner);
        if !tail.is_empty() {
            text.push_str("; last stderr lines:\n");
            text.push_str(&tail.iter().cloned().collect::<Vec<_>>().join("\n"));
        }
        HandlerError::Failed(redactor.redact_str(&text).into_owned())
    }

    /// Ends the handler for breaking the protocol.
    async fn broke_protocol(
        &mut self,
        what: &str,
        kill_grace: Duration,
        redactor: &Redactor,
    ) -> HandlerError {
        self.end(kill_grace).await;
        let text = format!("agent handler {} {what}", self.command.display);
        HandlerError::Failed(redactor.redact_str(&text).into_owned())
    }

    /// Ends an attempt over a protocol violation. While cancelling, the
    /// request's outcome is "cancelled" whatever the handler did wrong.
    async fn protocol_failure(
        &mut self,
        what: &str,
        cancelling: bool,
        kill_grace: Duration,
        redactor: &Redactor,
    ) -> Attempt {
        let err = self.broke_protocol(what, kill_grace, redactor).await;
        Attempt::Done(Err(if cancelling {
            HandlerError::Cancelled
        } else {
            err
        }))
    }

    async fn attempt(
        &mut self,
        inv: &Invocation,
        ctx: &InvokeContext<'_>,
        redactor: &Redactor,
        line: &[u8],
    ) -> Attempt {
        let live = self.live.as_mut().expect("spawned");
        let written = tokio::select! {
            biased;
            _ = ctx.cancel.cancelled() => None,
            r = live.stdin.write_all(line) => Some(r),
        };
        match written {
            None => {
                // Half an invoke line is in the pipe: the process is unusable.
                self.end(ctx.kill_grace).await;
                return Attempt::Done(Err(HandlerError::Cancelled));
            }
            Some(Err(_)) => {
                return Attempt::NeverRead(self.crashed(ctx.kill_grace, redactor).await);
            }
            Some(Ok(())) => {}
        }

        let mut cancel_deadline: Option<Instant> = None;
        // Set when the handler process exited: its last lines may still be
        // in the pipe, but a child it left behind can hold the pipe open,
        // so EOF may never come.
        let mut exit_deadline: Option<Instant> = None;
        let mut heard = false;
        loop {
            enum Wake {
                Cancel,
                GraceOver,
                Exited,
                Event(Option<Event>),
            }
            let live = self.live.as_mut().expect("spawned");
            let wake = tokio::select! {
                biased;
                _ = ctx.cancel.cancelled(), if cancel_deadline.is_none() => Wake::Cancel,
                _ = sleep_until(cancel_deadline.unwrap_or_else(Instant::now)),
                    if cancel_deadline.is_some() => Wake::GraceOver,
                ev = live.events.recv() => Wake::Event(ev),
                _ = live.child.wait(), if exit_deadline.is_none() => Wake::Exited,
                _ = sleep_until(exit_deadline.unwrap_or_else(Instant::now)),
                    if exit_deadline.is_some() => Wake::Event(None),
            };
            let cancelling = cancel_deadline.is_some();
            let event = match wake {
                Wake::Exited => {
                    exit_deadline = Some(Instant::now() + EXIT_DRAIN);
                    continue;
                }
                Wake::Cancel => {
                    cancel_deadline = Some(Instant::now() + ctx.cancel_grace);
                    let msg = cancel_line(&inv.id);
                    let sent = timeout(ctx.cancel_grace, live.stdin.write_all(&msg)).await;
                    if !matches!(sent, Ok(Ok(()))) {
                        self.end(ctx.kill_grace).await;
                        return Attempt::Done(Err(HandlerError::Cancelled));
                    }
                    tracing::debug!(target: "handler", id = %inv.id, "sent cancel to the handler");
                    continue;
                }
                Wake::GraceOver => {
                    tracing::info!(target: "handler", id = %inv.id,
                        "handler did not finish within the cancel grace; terminating it");
                    self.end(ctx.kill_grace).await;
                    return Attempt::Done(Err(HandlerError::Cancelled));
                }
                Wake::Event(None) => {
                    if cancelling {
                        self.end(ctx.kill_grace).await;
                        return Attempt::Done(Err(HandlerError::Cancelled));
                    }
                    // All of the invoke line still unread: the handler died
                    // before it could see this invocation.
                    let never_read =
                        !heard && unread_bytes(&live.stdin).is_some_and(|n| n >= line.len());
                    let err = self.crashed(ctx.kill_grace, redactor).await;
                    return if never_read {
                        Attempt::NeverRead(err)
                    } else {
                        Attempt::Done(Err(err))
                    };
                }
                Wake::Event(Some(event)) => event,
            };
            let map = match event {
                Event::Message(map) => map,
                Event::Garbage(quote) => {
                    return self
                        .protocol_failure(
                            &format!("wrote a line that is not a JSON object: \"{quote}\""),
                            cancelling,
                            ctx.kill_grace,
                            redactor,
                        )
                        .await;
                }
                Event::TooLong => {
                    let what = format!("wrote a line longer than {} bytes", self.max_line);
                    return self
                        .protocol_failure(&what, cancelling, ctx.kill_grace, redactor)
                        .await;
                }
                Event::ReadFailed(e) => {
                    let what = format!("could not be read from: {e}");
                    return self
                        .protocol_failure(&what, cancelling, ctx.kill_grace, redactor)
                        .await;
                }
            };
            heard = true;
            match map.get("id") {
                None | Some(Value::Null) => {}
                Some(Value::String(id)) if *id == inv.id => {}
                Some(other) => {
                    tracing::debug!(target: "handler", id = %inv.id, stale = %other,
                        "dropping a message for another invocation");
                    continue;
                }
            }
            let kind = match map.get("type") {
                Some(Value::String(kind)) => kind.clone(),
                _ => {
                    return self
                        .protocol_failure(
                            "wrote a message without a string \"type\"",
                            cancelling,
                            ctx.kill_grace,
                            redactor,
                        )
                        .await;
                }
            };
            match kind.as_str() {
                "assistant" => {
                    let blocks = match assistant_blocks(&map) {
                        Ok(blocks) => blocks,
                        Err(why) => {
                            return self
                                .protocol_failure(&why, cancelling, ctx.kill_grace, redactor)
                                .await;
                        }
                    };
                    if cancelling {
                        continue;
                    }
                    let text_blocks = blocks
                        .into_iter()
                        .map(|b| redactor.redact_str(&b).into_owned())
                        .collect();
                    let sent = tokio::select! {
                        biased;
                        r = ctx.outbox.send(OutboundMessage::AssistantMessage { text_blocks }) => Some(r),
                        // Cancel fired while the client was slow: the message
                        // is dropped; the next turn of the loop cancels.
                        _ = ctx.cancel.cancelled() => None,
                    };
                    if let Some(Err(_)) = sent {
                        self.end(ctx.kill_grace).await;
                        return Attempt::Done(Err(HandlerError::ClientGone));
                    }
                }
                "result" | "error" => {
                    if cancelling {
                        tracing::debug!(target: "handler", id = %inv.id,
                            "handler finished after cancel; keeping it warm");
                        return Attempt::Done(Err(HandlerError::Cancelled));
                    }
                    return match terminal(&kind, map, redactor) {
                        Ok(outcome) => Attempt::Done(outcome),
                        Err(why) => Attempt::Done(Err(self
                            .broke_protocol(&why, ctx.kill_grace, redactor)
                            .await)),
                    };
                }
                other => {
                    tracing::warn!(target: "handler", id = %inv.id,
                        "ignoring a handler message of unknown type {other:?}");
                }
            }
        }
    }
}

impl Drop for HandlerHost {
    fn drop(&mut self) {
        if let Some(live) = self.live.take() {
            // The leader is unreaped (running or a zombie), so the group id
            // is still ours. kill_on_drop reaps the leader afterwards.
            process::signal_group(live.pgid, nix::sys::signal::Signal::SIGKILL);
            live.stdout_task.abort();
            live.stderr_task.abort();
        }
    }
}

/// The child command: own process group, piped stdio, no runtime credential.
fn build_command(command: &HandlerCommand) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(&command.program);
    cmd.args(&command.args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    process::new_group(&mut cmd);
    process::without_runtime_credentials(&mut cmd);
    cmd
}

fn spawn_error(command: &HandlerCommand, e: &io::Error) -> String {
    let why = match e.kind() {
        io::ErrorKind::NotFound => {
            "not found (or the interpreter on its #! line is missing)".to_owned()
        }
        io::ErrorKind::PermissionDenied => "permission denied (is it executable?)".to_owned(),
        _ if e.raw_os_error() == Some(nix::errno::Errno::ENOEXEC as i32) => {
            "not a valid executable (a script needs a #! line)".to_owned()
        }
        _ => e.to_string(),
    };
    format!(
        "could not start agent handler {}: {}: {why}",
        command.display,
        command.program.display()
    )
}

#[derive(Serialize)]
struct InvokeLine<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    protocol: u32,
    id: &'a str,
    source_id: Option<&'a str>,
    system_prompt: &'a str,
    user_prompt: &'a str,
    model: &'a str,
    output_format: Option<&'a Value>,
    env: &'a BTreeMap<String, String>,
    secrets: &'a [String],
}

fn invoke_line(inv: &Invocation) -> Vec<u8> {
    let mut line = serde_json::to_vec(&InvokeLine {
        kind: "invoke",
        protocol: PROTOCOL_VERSION,
        id: &inv.id,
        source_id: inv.source_id.as_deref(),
        system_prompt: &inv.system_prompt,
        user_prompt: &inv.user_prompt,
        model: &inv.model,
        output_format: inv.output_format.as_ref(),
        env: &inv.env,
        secrets: &inv.secrets,
    })
    .expect("strings and JSON values always serialise");
    line.push(b'\n');
    line
}

#[derive(Serialize)]
struct CancelLine<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    id: &'a str,
}

fn cancel_line(id: &str) -> Vec<u8> {
    let mut line =
        serde_json::to_vec(&CancelLine { kind: "cancel", id }).expect("a string always serialises");
    line.push(b'\n');
    line
}

/// Bytes written to the handler's stdin that it has not read yet (Linux:
/// FIONREAD works on either end of a pipe).
fn unread_bytes(stdin: &ChildStdin) -> Option<usize> {
    let mut n: nix::libc::c_int = 0;
    // SAFETY: FIONREAD writes one c_int through the pointer, which is valid.
    let rc = unsafe { nix::libc::ioctl(stdin.as_raw_fd(), nix::libc::FIONREAD, &mut n) };
    (rc == 0).then(|| usize::try_from(n).unwrap_or(0))
}

fn assistant_blocks(map: &Map<String, Value>) -> Result<Vec<String>, String> {
    match (map.get("text_blocks"), map.get("text")) {
        (Some(Value::Array(items)), _) => items
            .iter()
            .map(|v| v.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| "sent an assistant message whose \"text_blocks\" is not a list of strings".to_owned()),
        (None | Some(Value::Null), Some(Value::String(text))) => Ok(vec![text.clone()]),
        _ => Err("sent an assistant message without \"text_blocks\" (list of strings) or \"text\" (string)".to_owned()),
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn redact_map(redactor: &Redactor, map: Map<String, Value>) -> Map<String, Value> {
    if redactor.is_empty() {
        return map;
    }
    let mut value = Value::Object(map);
    redactor.redact_json(&mut value);
    match value {
        Value::Object(map) => map,
        _ => unreachable!("redaction keeps an object an object"),
    }
}

/// Turns a `result`/`error` message into the invocation's outcome; `Err` is a
/// protocol violation.
fn terminal(
    kind: &str,
    mut map: Map<String, Value>,
    redactor: &Redactor,
) -> Result<Result<AgentOutput, HandlerError>, String> {
    let metadata = match map.remove("metadata") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => redact_map(redactor, m),
        Some(other) => {
            return Err(format!(
                "sent a {kind} whose \"metadata\" is {}, not an object",
                json_kind(&other)
            ));
        }
    };
    if kind == "error" {
        return match map.remove("error") {
            Some(Value::String(error)) => Ok(Err(HandlerError::Reported {
                error: redactor.redact_str(&error).into_owned(),
                metadata,
            })),
            _ => Err("sent an error without a string \"error\"".to_owned()),
        };
    }
    let structured = map.remove("structured_output").filter(|v| !v.is_null());
    let text = map.remove("text").filter(|v| !v.is_null());
    let data = match (structured, text) {
        (Some(_), Some(_)) => {
            return Err(
                "sent a result with both \"text\" and \"structured_output\"; send one".to_owned(),
            );
        }
        (Some(Value::Object(obj)), None) => wire::ResultData::StructuredOutput {
            structured_output: redact_map(redactor, obj),
        },
        (Some(other), None) => {
            return Err(format!(
                "sent a result whose \"structured_output\" is {}; it must be a JSON object",
                json_kind(&other)
            ));
        }
        (None, Some(Value::String(text))) => wire::ResultData::Text {
            text: redactor.redact_str(&text).into_owned(),
        },
        (None, Some(other)) => {
            return Err(format!(
                "sent a result whose \"text\" is {}, not a string",
                json_kind(&other)
            ));
        }
        (None, None) => {
            return Err(
                "sent a result without \"text\" (string) or \"structured_output\" (object)"
                    .to_owned(),
            );
        }
    };
    Ok(Ok(AgentOutput { data, metadata }))
}

enum LineRead {
    Line,
    TooLong,
    Eof,
}

/// Reads one `\n`-terminated line (without the `\n`) into `buf`, refusing to
/// hold more than `max` bytes. On `TooLong`, `buf` holds the first `max`.
async fn read_line<R: AsyncBufRead + Unpin>(
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

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn truncate_chars(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((i, _)) => format!("{}...", &text[..i]),
        None => text.to_owned(),
    }
}

async fn read_stdout(
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

async fn read_stderr(
    stderr: ChildStderr,
    redactor: SharedRedactor,
    tail: Arc<Mutex<VecDeque<String>>>,
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
        tracing::info!(target: "handler", pid, stream = "stderr", "{text}");
        let mut tail = tail.lock().unwrap_or_else(PoisonError::into_inner);
        if tail.len() == STDERR_TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(truncate_chars(&text, STDERR_TAIL_CHARS));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::os::unix::fs::PermissionsExt;
    use tokio::sync::mpsc::Receiver;

    /// A test handler; behaviour picked by the user prompt.
    const PY_HANDLER: &str = r#"
import json, os, signal, subprocess, sys, time

def send(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()

while True:
    line = sys.stdin.readline()
    if not line:
        break
    msg = json.loads(line)
    if msg["type"] != "invoke":
        continue
    iid, p = msg["id"], msg["user_prompt"]
    if p == "text":
        send({"type": "result", "text": "hello", "metadata": {"n": 1}})
    elif p == "pid":
        send({"type": "result", "id": iid, "text": str(os.getpid())})
    elif p == "structured":
        send({"type": "result", "structured_output": {"a": [1, 2], "model": msg["model"]}})
    elif p == "stream":
        send({"type": "assistant", "text_blocks": ["one", "two"]})
        send({"type": "log", "level": "info", "message": "working"})
        send({"type": "assistant", "id": iid, "text": "three"})
        send({"type": "from_the_future", "x": 1})
        send({"type": "result", "text": "streamed"})
    elif p == "error":
        send({"type": "error", "error": "it failed", "metadata": {"code": 7}})
    elif p == "error_then_crash":
        send({"type": "error", "id": iid, "error": "reported first"})
        sys.stderr.write("Traceback: dying after the error\n")
        sys.exit(3)
    elif p == "error_then_slow_crash":
        send({"type": "error", "id": iid, "error": "reported first"})
        time.sleep(0.3)
        sys.exit(3)
    elif p == "count_then_crash":
        with open(msg["env"]["COUNT_FILE"], "a") as f:
            f.write("ran\n")
        sys.exit(5)
    elif p == "crash":
        sys.stderr.write("first stderr line\nboom: secret-token-123 leaked\n")
        sys.stderr.flush()
        sys.exit(7)
    elif p == "garbage":
        print("this is not json secret-token-123")
        sys.stdout.flush()
    elif p == "stale":
        send({"type": "assistant", "id": "old-invocation", "text": "stale"})
        send({"type": "result", "id": "old-invocation", "text": "stale result"})
        send({"type": "assistant", "id": iid, "text": "fresh"})
        send({"type": "result", "id": iid, "text": "current"})
    elif p == "secret":
        send({"type": "assistant", "text": "my secret-token-123"})
        send({"type": "result", "structured_output": {"k": "secret-token-123"},
              "metadata": {"m": "secret-token-123"}})
    elif p == "env":
        send({"type": "result", "structured_output": {
            "foo": msg["env"].get("FOO"),
            "auth": os.environ.get("RUNTIMEUSE_AUTH_TOKEN"),
            "format": msg["output_format"], "source_id": msg["source_id"],
            "secrets": msg["secrets"], "protocol": msg["protocol"]}})
    elif p == "bad_structured":
        send({"type": "result", "structured_output": [1, 2]})
    elif p == "big":
        send({"type": "result", "structured_output": {"blob": "x" * (4 * 1024 * 1024), "pid": os.getpid()}})
    elif p == "long_line":
        send({"type": "assistant", "text": "y" * 5000})
    elif p == "cooperative":
        send({"type": "assistant", "text": "started"})
        while True:
            nxt = json.loads(sys.stdin.readline())
            if nxt["type"] == "cancel" and nxt["id"] == iid:
                send({"type": "error", "id": iid, "error": "cancelled"})
                break
    elif p == "hang":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        child = subprocess.Popen(["sleep", "60"])
        send({"type": "result", "id": "not-yet", "text": str(child.pid)})
        send({"type": "assistant", "text": str(child.pid)})
        while True:
            time.sleep(1)
    elif p == "grandchild":
        child = subprocess.Popen(["sleep", "60"])
        send({"type": "result", "text": str(child.pid)})
    else:
        send({"type": "result", "text": "unknown prompt " + p})
"#;

    struct Fixture {
        _dir: tempfile::TempDir,
        host: HandlerHost,
        outbox: Outbox,
        rx: Receiver<OutboundMessage>,
        redactor: Redactor,
        cancel: CancellationToken,
    }

    fn write_script(dir: &Path, name: &str, body: &str, mode: u32) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, body).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    impl Fixture {
        fn python() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let script = write_script(dir.path(), "handler.py", PY_HANDLER, 0o644);
            let command = resolve(&AgentSource::Path(script)).unwrap();
            Self::with(dir, command)
        }

        fn with(dir: tempfile::TempDir, command: HandlerCommand) -> Self {
            let (outbox, rx) = Outbox::channel(64);
            Self {
                _dir: dir,
                host: HandlerHost::new(Arc::new(command)),
                outbox,
                rx,
                redactor: Redactor::default(),
                cancel: CancellationToken::new(),
            }
        }

        async fn run(&mut self, prompt: &str) -> Result<AgentOutput, HandlerError> {
            let inv = invocation(prompt);
            self.run_inv(&inv).await
        }

        async fn run_inv(&mut self, inv: &Invocation) -> Result<AgentOutput, HandlerError> {
            let ctx = InvokeContext {
                outbox: &self.outbox,
                redactor: &self.redactor,
                cancel: &self.cancel,
                cancel_grace: Duration::from_millis(500),
                kill_grace: Duration::from_millis(300),
            };
            self.host.invoke(inv, &ctx).await
        }

        fn sent(&mut self) -> Vec<OutboundMessage> {
            let mut out = Vec::new();
            while let Ok(m) = self.rx.try_recv() {
                out.push(m);
            }
            out
        }

        async fn pid_via_prompt(&mut self) -> u32 {
            text_of(self.run("pid").await).parse().unwrap()
        }
    }

    fn invocation(prompt: &str) -> Invocation {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Invocation {
            id: format!("inv-{n}"),
            user_prompt: prompt.into(),
            model: "m1".into(),
            ..Invocation::default()
        }
    }

    fn text_of(r: Result<AgentOutput, HandlerError>) -> String {
        match r {
            Ok(AgentOutput {
                data: wire::ResultData::Text { text },
                ..
            }) => text,
            other => panic!("expected a text result, got {other:?}"),
        }
    }

    fn failed(r: Result<AgentOutput, HandlerError>) -> String {
        match r {
            Err(HandlerError::Failed(msg)) => msg,
            other => panic!("expected Failed, got {other:?}"),
        }
    }

    fn assistant_texts(msgs: &[OutboundMessage]) -> Vec<String> {
        msgs.iter()
            .flat_map(|m| match m {
                OutboundMessage::AssistantMessage { text_blocks } => text_blocks.clone(),
                other => panic!("unexpected outbound message {other:?}"),
            })
            .collect()
    }

    async fn wait_gone(pgid: u32) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while process::group_alive(pgid) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(!process::group_alive(pgid), "group {pgid} is still alive");
    }

    async fn wait_pid_gone(pid: u32) {
        let alive = || nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_ok();
        assert!(pid > 1);
        let deadline = Instant::now() + Duration::from_secs(5);
        while alive() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(!alive(), "process {pid} survived");
    }

    #[tokio::test]
    async fn text_result_with_metadata() {
        let mut f = Fixture::python();
        let out = f.run("text").await.unwrap();
        assert_eq!(
            out.data,
            wire::ResultData::Text {
                text: "hello".into()
            }
        );
        assert_eq!(out.metadata, json!({"n": 1}).as_object().unwrap().clone());
        assert!(f.sent().is_empty());
        f.host.shutdown(Duration::from_secs(1)).await;
    }

    #[tokio::test]
    async fn structured_result() {
        let mut f = Fixture::python();
        let out = f.run("structured").await.unwrap();
        assert_eq!(
            out.data,
            wire::ResultData::StructuredOutput {
                structured_output: json!({"a": [1, 2], "model": "m1"})
                    .as_object()
                    .unwrap()
                    .clone()
            }
        );
        assert!(out.metadata.is_empty());
    }

    #[tokio::test]
    async fn structured_output_must_be_an_object() {
        let mut f = Fixture::python();
        let msg = failed(f.run("bad_structured").await);
        assert!(msg.contains("\"structured_output\" is an array"), "{msg}");
        assert!(msg.contains("must be a JSON object"), "{msg}");
        assert_eq!(f.host.pid(), None, "a protocol breaker is not kept");
        assert_eq!(text_of(f.run("text").await), "hello");
    }

    #[tokio::test]
    async fn assistant_messages_stream_and_unknown_types_are_ignored() {
        let mut f = Fixture::python();
        assert_eq!(text_of(f.run("stream").await), "streamed");
        assert_eq!(assistant_texts(&f.sent()), ["one", "two", "three"]);
    }

    #[tokio::test]
    async fn reported_error_keeps_the_handler_warm() {
        let mut f = Fixture::python();
        let pid = f.pid_via_prompt().await;
        match f.run("error").await {
            Err(HandlerError::Reported { error, metadata }) => {
                assert_eq!(error, "it failed");
                assert_eq!(metadata["code"], 7);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(f.pid_via_prompt().await, pid);
    }

    #[tokio::test]
    async fn error_then_crash_is_one_error_and_the_next_invoke_works() {
        let mut f = Fixture::python();
        let first = f.pid_via_prompt().await;
        match f.run("error_then_crash").await {
            Err(HandlerError::Reported { error, .. }) => assert_eq!(error, "reported first"),
            other => panic!("{other:?}"),
        }
        // Straight away, racing the crash: the next invocation must not see it.
        let second = f.pid_via_prompt().await;
        assert_ne!(first, second, "a fresh handler was started");
        assert!(f.sent().is_empty());
        wait_gone(first).await;
    }

    #[tokio::test]
    async fn dead_between_invocations_respawns_after_a_pause_too() {
        let mut f = Fixture::python();
        let first = f.pid_via_prompt().await;
        assert!(matches!(
            f.run("error_then_crash").await,
            Err(HandlerError::Reported { .. })
        ));
        tokio::time::sleep(Duration::from_millis(300)).await;
        let second = f.pid_via_prompt().await;
        assert_ne!(first, second);
    }

    #[tokio::test]
    async fn death_noticed_only_after_the_invoke_was_written_still_respawns() {
        // The handler dies 300 ms after its terminal: the next invoke line
        // goes into the pipe while it is still alive, then stdout closes
        // with the line unread. That invocation must run on a new process.
        let mut f = Fixture::python();
        let first = f.pid_via_prompt().await;
        assert!(matches!(
            f.run("error_then_slow_crash").await,
            Err(HandlerError::Reported { .. })
        ));
        let second = f.pid_via_prompt().await;
        assert_ne!(first, second);
        assert!(f.sent().is_empty());
    }

    #[tokio::test]
    async fn a_warm_handler_that_read_the_invocation_and_died_is_not_rerun() {
        let mut f = Fixture::python();
        f.pid_via_prompt().await;
        let count = f._dir.path().join("count");
        let mut inv = invocation("count_then_crash");
        inv.env
            .insert("COUNT_FILE".into(), count.to_str().unwrap().into());
        let msg = failed(f.run_inv(&inv).await);
        assert!(msg.contains("exit status: 5"), "{msg}");
        assert_eq!(
            std::fs::read_to_string(&count).unwrap(),
            "ran\n",
            "ran exactly once"
        );
    }

    #[tokio::test]
    async fn crash_before_terminal_reports_status_and_stderr() {
        let mut f = Fixture::python();
        f.redactor = Redactor::new(["secret-token-123"]);
        let msg = failed(f.run("crash").await);
        assert!(msg.contains("exited before sending a result"), "{msg}");
        assert!(msg.contains("exit status: 7"), "{msg}");
        assert!(msg.contains("first stderr line"), "{msg}");
        assert!(msg.contains("boom: [REDACTED] leaked"), "{msg}");
        assert!(!msg.contains("secret-token-123"), "{msg}");
        assert_eq!(f.host.pid(), None);
        assert_eq!(text_of(f.run("text").await), "hello");
    }

    #[tokio::test]
    async fn garbage_line_fails_quoting_it_and_the_next_invoke_works() {
        let mut f = Fixture::python();
        f.redactor = Redactor::new(["secret-token-123"]);
        let pid = f.pid_via_prompt().await;
        let msg = failed(f.run("garbage").await);
        assert!(
            msg.contains("not a JSON object: \"this is not json [REDACTED]\""),
            "{msg}"
        );
        assert_eq!(f.host.pid(), None);
        wait_gone(pid).await;
        assert_ne!(f.pid_via_prompt().await, pid);
    }

    #[tokio::test]
    async fn stale_id_messages_are_dropped() {
        let mut f = Fixture::python();
        assert_eq!(text_of(f.run("stale").await), "current");
        assert_eq!(assistant_texts(&f.sent()), ["fresh"]);
    }

    #[tokio::test]
    async fn everything_sent_or_returned_is_redacted() {
        let mut f = Fixture::python();
        let mut inv = invocation("secret");
        inv.secrets = vec!["secret-token-123".into()];
        let out = f.run_inv(&inv).await.unwrap();
        assert_eq!(
            serde_json::to_value(&out.data).unwrap()["structured_output"]["k"],
            "[REDACTED]"
        );
        assert_eq!(out.metadata["m"], "[REDACTED]");
        assert_eq!(assistant_texts(&f.sent()), ["my [REDACTED]"]);
    }

    #[tokio::test]
    async fn invoke_carries_every_field_and_no_auth_token() {
        let cmd = build_command(&HandlerCommand {
            program: "/bin/true".into(),
            args: vec![],
            display: "true".into(),
        });
        assert!(
            cmd.as_std()
                .get_envs()
                .any(|(k, v)| k == crate::config::AUTH_TOKEN_ENV && v.is_none()),
            "the runtime's token is removed from the child's environment"
        );
        let mut f = Fixture::python();
        let mut inv = invocation("env");
        inv.env.insert("FOO".into(), "bar".into());
        inv.source_id = Some("src-1".into());
        inv.output_format = Some(json!({"type": "json_schema", "schema": {"type": "object"}}));
        inv.secrets = vec!["s3cr3t".into()];
        let out = f.run_inv(&inv).await.unwrap();
        let wire::ResultData::StructuredOutput { structured_output } = out.data else {
            panic!("{:?}", out.data)
        };
        assert_eq!(
            Value::Object(structured_output),
            json!({"foo": "bar", "auth": null, "source_id": "src-1", "secrets": ["[REDACTED]"],
                "format": {"type": "json_schema", "schema": {"type": "object"}}, "protocol": 1})
        );
    }

    #[tokio::test]
    async fn warm_process_is_reused_across_invocations() {
        let mut f = Fixture::python();
        assert_eq!(f.host.pid(), None, "spawned lazily");
        let pid = f.pid_via_prompt().await;
        assert_eq!(f.host.pid(), Some(pid));
        for _ in 0..5 {
            assert_eq!(text_of(f.run("text").await), "hello");
        }
        assert_eq!(f.pid_via_prompt().await, pid);
        f.host.shutdown(Duration::from_secs(1)).await;
        wait_gone(pid).await;
    }

    #[tokio::test]
    async fn cancel_with_a_cooperative_handler_keeps_it_warm() {
        let mut f = Fixture::python();
        let pid = f.pid_via_prompt().await;
        let cancel = f.cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            cancel.cancel();
        });
        let start = Instant::now();
        assert!(matches!(
            f.run("cooperative").await,
            Err(HandlerError::Cancelled)
        ));
        assert!(start.elapsed() < Duration::from_millis(500 + 200 + 100));
        assert_eq!(assistant_texts(&f.sent()), ["started"]);
        f.cancel = CancellationToken::new();
        assert_eq!(f.pid_via_prompt().await, pid, "still the same warm process");
    }

    #[tokio::test]
    async fn cancel_with_a_hung_handler_kills_its_whole_group() {
        let mut f = Fixture::python();
        let cancel = f.cancel.clone();
        let mut rx = std::mem::replace(&mut f.rx, Outbox::channel(1).1);
        let (tx_pid, rx_pid) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            // The grandchild's pid arrives as an assistant message.
            if let Some(OutboundMessage::AssistantMessage { text_blocks }) = rx.recv().await {
                let pid = text_blocks[0].parse::<u32>().unwrap();
                let _ = tx_pid.send((pid, Instant::now()));
            }
            cancel.cancel();
        });
        assert!(matches!(f.run("hang").await, Err(HandlerError::Cancelled)));
        let (grandchild, cancelled_at) = rx_pid.await.unwrap();
        // cancel grace 500 ms + SIGTERM ignored, SIGKILL after 300 ms.
        let took = cancelled_at.elapsed();
        assert!(took >= Duration::from_millis(500), "{took:?}");
        assert!(took < Duration::from_secs(2), "{took:?}");
        assert_eq!(f.host.pid(), None);
        wait_pid_gone(grandchild).await;
        f.cancel = CancellationToken::new();
        assert_eq!(text_of(f.run("text").await), "hello");
    }

    #[tokio::test]
    async fn cancelled_before_start_spawns_nothing() {
        let mut f = Fixture::python();
        f.cancel.cancel();
        assert!(matches!(f.run("text").await, Err(HandlerError::Cancelled)));
        assert_eq!(f.host.pid(), None);
    }

    #[tokio::test]
    async fn shutdown_leaves_nothing_running() {
        let mut f = Fixture::python();
        let grandchild: u32 = text_of(f.run("grandchild").await).parse().unwrap();
        let pid = f.host.pid().unwrap();
        f.host.shutdown(Duration::from_millis(500)).await;
        assert_eq!(f.host.pid(), None);
        wait_gone(pid).await;
        wait_pid_gone(grandchild).await;
    }

    #[tokio::test]
    async fn dropping_the_host_kills_the_handler() {
        let mut f = Fixture::python();
        let grandchild: u32 = text_of(f.run("grandchild").await).parse().unwrap();
        let pid = f.host.pid().unwrap();
        drop(f);
        wait_gone(pid).await;
        wait_pid_gone(grandchild).await;
    }

    #[tokio::test]
    async fn four_megabyte_structured_output_line() {
        let mut f = Fixture::python();
        let out = f.run("big").await.unwrap();
        let wire::ResultData::StructuredOutput { structured_output } = out.data else {
            panic!("not structured")
        };
        assert_eq!(structured_output["blob"].as_str().unwrap().len(), 4 << 20);
        // Still warm and in sync after a big line.
        assert_eq!(
            structured_output["pid"].as_u64().unwrap() as u32,
            f.pid_via_prompt().await
        );
    }

    #[tokio::test]
    async fn a_line_over_the_limit_fails() {
        let dir = tempfile::tempdir().unwrap();
        let script = write_script(dir.path(), "handler.py", PY_HANDLER, 0o644);
        let command = resolve(&AgentSource::Path(script)).unwrap();
        let mut f = Fixture::with(dir, command);
        f.host = HandlerHost::new(f.host.command.clone()).with_max_line_bytes(1024);
        let msg = failed(f.run("long_line").await);
        assert!(msg.contains("wrote a line longer than 1024 bytes"), "{msg}");
        assert_eq!(text_of(f.run("text").await), "hello");
    }

    #[tokio::test]
    async fn shell_handler_by_extension() {
        let dir = tempfile::tempdir().unwrap();
        let script = write_script(
            dir.path(),
            "handler.sh",
            r#"while IFS= read -r line; do
  case "$line" in
    *'"type":"invoke"'*) printf '{"type":"assistant","text":"from sh"}\n{"type":"result","text":"pid %s"}\n' "$$" ;;
  esac
done
"#,
            0o644,
        );
        let command = resolve(&AgentSource::Path(script.clone())).unwrap();
        assert_eq!(command.program, PathBuf::from("/bin/sh"));
        assert_eq!(
            command.args,
            [script.canonicalize().unwrap().to_str().unwrap()]
        );
        let mut f = Fixture::with(dir, command);
        let first = text_of(f.run("x").await);
        assert!(first.starts_with("pid "), "{first}");
        assert_eq!(text_of(f.run("y").await), first, "warm");
        assert_eq!(assistant_texts(&f.sent()), ["from sh", "from sh"]);
        f.host.shutdown(Duration::from_secs(1)).await;
    }

    #[tokio::test]
    async fn handler_that_exits_at_once_fails_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let script = write_script(
            dir.path(),
            "bad.sh",
            "echo 'cannot import agent sdk' >&2\nexit 2\n",
            0o644,
        );
        let command = resolve(&AgentSource::Path(script)).unwrap();
        let mut f = Fixture::with(dir, command);
        let msg = failed(f.run("x").await);
        assert!(msg.contains("exit status: 2"), "{msg}");
        assert!(msg.contains("cannot import agent sdk"), "{msg}");
    }

    #[tokio::test]
    async fn spawn_failure_names_the_program_and_why() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = Fixture::with(
            dir,
            HandlerCommand {
                program: "/nonexistent/handler".into(),
                args: vec![],
                display: "/nonexistent/handler".into(),
            },
        );
        let msg = failed(f.run("x").await);
        assert!(msg.contains("could not start agent handler"), "{msg}");
        assert!(msg.contains("/nonexistent/handler: not found"), "{msg}");

        // Executable but no #! line.
        let dir = tempfile::tempdir().unwrap();
        let script = write_script(dir.path(), "noshebang", "echo hi\n", 0o755);
        let command = resolve(&AgentSource::Path(script)).unwrap();
        let mut f = Fixture::with(dir, command);
        let msg = failed(f.run("x").await);
        assert!(msg.contains("#! line"), "{msg}");
    }

    #[test]
    fn resolve_path_errors() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.py");
        let err = resolve(&AgentSource::Path(missing.clone()))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            format!("agent handler {}: does not exist", missing.display())
        );

        let odd = write_script(dir.path(), "handler.xyz", "", 0o644);
        let err = resolve(&AgentSource::Path(odd)).unwrap_err().to_string();
        assert!(err.contains("is not executable"), "{err}");
        assert!(err.contains("(.xyz)"), "{err}");
        assert!(err.contains(".py"), "{err}");

        let err = resolve(&AgentSource::Path(dir.path().into()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("is not a file"), "{err}");
    }

    #[test]
    fn resolve_by_extension_or_executable_bit() {
        let dir = tempfile::tempdir().unwrap();
        let py = write_script(dir.path(), "h.py", "", 0o644);
        let cmd = resolve(&AgentSource::Path(py.clone())).unwrap();
        assert_eq!(cmd.program.file_name().unwrap(), "python3");
        assert_eq!(cmd.args, [py.to_str().unwrap()]);
        assert_eq!(cmd.display, format!("python3 {}", py.display()));

        let js = write_script(dir.path(), "h.mjs", "", 0o644);
        let cmd = resolve(&AgentSource::Path(js)).unwrap();
        assert_eq!(cmd.program.file_name().unwrap(), "node");

        let exe = write_script(dir.path(), "h.py2", "#!/bin/sh\n", 0o755);
        // A relative path with `..` is canonicalised.
        let indirect = dir.path().join("sub/../h.py2");
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let cmd = resolve(&AgentSource::Path(indirect)).unwrap();
        assert_eq!(cmd.program, exe.canonicalize().unwrap());
        assert!(cmd.args.is_empty());
    }

    #[test]
    fn resolve_bundled() {
        let cmd = resolve(&AgentSource::Bundled("echo".into())).unwrap();
        assert_eq!(cmd.program, std::env::current_exe().unwrap());
        assert_eq!(cmd.args, [ECHO_SUBCOMMAND]);
        // openai and claude: tests/e2e/test_agent_install.py (they need npm).

        let err = resolve(&AgentSource::Bundled("gpt".into()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown bundled agent \"gpt\""), "{err}");
        assert!(err.contains("echo, openai, claude"), "{err}");
    }

    #[test]
    fn errors_read_as_the_client_expects() {
        assert_eq!(HandlerError::Cancelled.to_string(), "Request cancelled");
        assert_eq!(
            HandlerError::Reported {
                error: "x".into(),
                metadata: Map::new()
            }
            .to_string(),
            "x"
        );
    }

    #[test]
    fn invoke_line_shape() {
        let inv = Invocation {
            id: "i-1".into(),
            source_id: None,
            system_prompt: "sys".into(),
            user_prompt: "user".into(),
            model: "m".into(),
            output_format: Some(json!({"type": "json_schema", "schema": {"type": "object"}})),
            env: [("K".to_owned(), "v".to_owned())].into(),
            secrets: vec!["s".into()],
        };
        let line = invoke_line(&inv);
        // Documented: compact, `type` first, so line tools can dispatch.
        assert!(line.starts_with(br#"{"type":"invoke","protocol":1,"#));
        assert!(cancel_line("i-1").starts_with(br#"{"type":"cancel","#));
        assert_eq!(line.last(), Some(&b'\n'));
        assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
        assert_eq!(
            serde_json::from_slice::<Value>(&line).unwrap(),
            json!({"type": "invoke", "protocol": 1, "id": "i-1", "source_id": null,
                "system_prompt": "sys", "user_prompt": "user", "model": "m",
                "output_format": {"type": "json_schema", "schema": {"type": "object"}},
                "env": {"K": "v"}, "secrets": ["s"]})
        );
        assert_eq!(
            serde_json::from_slice::<Value>(&cancel_line("i-1")).unwrap(),
            json!({"type": "cancel", "id": "i-1"})
        );
    }

    /// The fenced block of `lang` in the protocol document.
    fn doc_example(lang: &str) -> String {
        let doc = include_str!("../protocol/handler-protocol.md");
        let start = doc
            .split(&format!("```{lang}\n"))
            .nth(1)
            .unwrap_or_else(|| panic!("no {lang} example in the protocol doc"));
        start.split("```").next().unwrap().to_owned()
    }

    #[tokio::test]
    async fn the_documented_python_example_works() {
        let dir = tempfile::tempdir().unwrap();
        let script = write_script(dir.path(), "example.py", &doc_example("python"), 0o644);
        let mut f = Fixture::with(dir, resolve(&AgentSource::Path(script)).unwrap());
        assert_eq!(text_of(f.run("shout").await), "SHOUT");
        let mut inv = invocation("shout");
        inv.output_format = Some(json!({"type": "json_schema", "schema": {}}));
        let out = f.run_inv(&inv).await.unwrap();
        assert_eq!(
            serde_json::to_value(out.data).unwrap()["structured_output"],
            json!({"answer": "SHOUT"})
        );
        assert_eq!(out.metadata["handler"], "example");
        assert_eq!(assistant_texts(&f.sent()), ["Thinking...", "Thinking..."]);
        f.host.shutdown(Duration::from_secs(1)).await;
    }

    #[tokio::test]
    async fn the_documented_shell_example_works() {
        let dir = tempfile::tempdir().unwrap();
        let script = write_script(dir.path(), "example.sh", &doc_example("sh"), 0o755);
        let mut f = Fixture::with(dir, resolve(&AgentSource::Path(script)).unwrap());
        for _ in 0..2 {
            let out = f.run("anything").await.unwrap();
            assert_eq!(
                out.data,
                wire::ResultData::Text {
                    text: "hello from sh".into()
                }
            );
            assert_eq!(out.metadata["handler"], "sh");
        }
        assert_eq!(
            assistant_texts(&f.sent()),
            ["working on it", "working on it"]
        );
        f.host.shutdown(Duration::from_secs(1)).await;
    }

    #[tokio::test]
    async fn line_reader_bounds_and_splits() {
        let data: &[u8] = b"one\r\ntwo\n\nlonger line here\nlast";
        let mut r = BufReader::with_capacity(4, data);
        let mut buf = Vec::new();
        let mut lines = Vec::new();
        loop {
            match read_line(&mut r, &mut buf, 10).await.unwrap() {
                LineRead::Eof => break,
                LineRead::Line => lines.push(String::from_utf8(trim_cr(&buf).to_vec()).unwrap()),
                LineRead::TooLong => {
                    lines.push(format!("TOOLONG:{}", String::from_utf8_lossy(&buf)))
                }
            }
        }
        assert_eq!(
            lines,
            ["one", "two", "", "TOOLONG:longer lin", "e here", "last"]
        );
    }
}
