//! Shell commands: run one, stream its output, report how it ended.
//!
//! A command is `/bin/sh -c <command>` in its own process group, so a cancel
//! reaches everything it started. Its stdout and stderr are streamed as
//! `command_output_message`s while it runs: read in chunks of up to
//! [`CHUNK_BYTES`], redacted as raw bytes (a secret split across reads is
//! still caught), then decoded as UTF-8 incrementally (a character split
//! across reads survives; invalid bytes become U+FFFD). Sending waits on the
//! bounded [`Outbox`] and the pipe is not read meanwhile, so a command that
//! prints faster than the client reads blocks on its full pipe instead of
//! growing the runtime's memory.
//!
//! The terminal result keeps only the head and tail of stdout (see
//! [`CommandContext::stdout_head_bytes`]), and [`fit_results`] shrinks a whole
//! result set so its frame fits the client's 1 MiB limit.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::future::Future;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use futures_util::FutureExt;
use nix::sys::signal::Signal;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Child;
use tokio::sync::watch;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, warn};

use crate::outbox::Outbox;
use crate::process;
use crate::redact::{Redactor, StreamRedactor, env_secrets};
use crate::wire::{self, CommandResult, OutboundMessage, Stream};

/// Largest read from a pipe, and largest `text` of one output message.
///
/// Big enough that a fast producer costs few messages, small enough that the
/// frame stays far below the client's 1 MiB limit even if every byte is
/// JSON-escaped to six (`\u0001`).
pub const CHUNK_BYTES: usize = 64 * 1024;

/// How long the pipes are still read after the shell exits, for background
/// jobs (`server &`) that keep them open.
pub const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(100);

/// A read at least this big means the producer writes in bulk (stdio's
/// buffer size): worth waiting a moment to fill a whole chunk.
const BULK_READ_BYTES: usize = 4096;

/// How long a bulk chunk waits for more output before it is sent.
const COALESCE_LINGER: Duration = Duration::from_millis(2);

/// Once [`DRAIN_AFTER_EXIT`] has passed, at most this much more is read per
/// pipe: enough for whatever the shell left in a pipe (Linux caps an
/// unprivileged pipe at 1 MiB), bounded so a background job that writes
/// without pause cannot keep the command from completing.
const DRAIN_BUDGET_BYTES: usize = 1024 * 1024;

/// What a command needs from the request it belongs to.
pub struct CommandContext<'a> {
    /// Where `command_output_message`s go.
    pub outbox: &'a Outbox,
    /// The request's secrets.
    pub redactor: &'a Redactor,
    /// Fires when the request is cancelled.
    pub cancel: &'a CancellationToken,
    /// SIGTERM -> SIGKILL grace when the command's group is ended.
    pub kill_grace: Duration,
    /// Bytes of stdout kept from its start for the terminal result.
    pub stdout_head_bytes: usize,
    /// Bytes of stdout kept from its end for the terminal result.
    pub stdout_tail_bytes: usize,
}

/// How a command that ran to completion ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandOutcome {
    /// The shell's exit code; `128 + N` when killed by signal `N`.
    pub exit_code: i32,
    /// Redacted stdout, cut to head + marker + tail when it was too long.
    pub stdout: String,
}

/// Why a command did not produce a [`CommandOutcome`].
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The request was cancelled; the command's process group is gone.
    #[error("Request cancelled")]
    Cancelled,
    /// The command never ran; `command` is already redacted.
    #[error("Command `{command}` could not start: {reason}")]
    Start {
        /// The command text, redacted.
        command: String,
        /// Why the spawn failed (e.g. `cwd` is a file).
        reason: String,
    },
    /// Output could not be delivered; the command's process group is gone.
    #[error("the client connection is closed")]
    ClientGone,
}

/// Runs `cmd` to completion, streaming its output to `ctx.outbox`.
///
/// On cancel or a closed client the whole process group is ended before this
/// returns. On normal completion background jobs are left running: users
/// start servers in pre-commands.
pub async fn run_command(
    cmd: &wire::Command,
    ctx: &CommandContext<'_>,
) -> Result<CommandOutcome, CommandError> {
    run_with_base_env(cmd, ctx, std::env::vars_os().collect()).await
}

/// [`run_command`] with an explicit base environment (tests inject one).
async fn run_with_base_env(
    cmd: &wire::Command,
    ctx: &CommandContext<'_>,
    base_env: Vec<(OsString, OsString)>,
) -> Result<CommandOutcome, CommandError> {
    let redactor = ctx
        .redactor
        .with(env_secrets(cmd.env.iter().flat_map(|env| env.values())));
    let label = redactor.redact_str(&cmd.command).into_owned();
    let span = tracing::debug_span!("command", command = %label);
    let run = Run {
        ctx,
        redactor: &redactor,
        label: &label,
    };
    run.execute(cmd, base_env).instrument(span).await
}

/// One command's run: the context plus what is derived from the command.
struct Run<'a> {
    ctx: &'a CommandContext<'a>,
    /// The request's secrets plus the command's own long env values.
    redactor: &'a Redactor,
    /// The redacted command string, as sent in every message.
    label: &'a str,
}

impl Run<'_> {
    async fn execute(
        &self,
        cmd: &wire::Command,
        base_env: Vec<(OsString, OsString)>,
    ) -> Result<CommandOutcome, CommandError> {
        let cwd = prepare_cwd(cmd.cwd.as_deref())
            .await
            .map_err(|reason| self.start_error(reason))?;
        // A cancel that came first must not start anything.
        if self.ctx.cancel.is_cancelled() {
            return Err(CommandError::Cancelled);
        }
        let mut child = shell_command(cmd, cwd.as_deref(), base_env)
            .spawn()
            .map_err(|e| self.start_error(format!("cannot spawn /bin/sh: {e}")))?;
        let pgid = child.id().expect("a child that was just spawned has a pid");
        let guard = GroupGuard { pgid, armed: true };
        debug!(pgid, "started");
        let result = tokio::select! {
            biased;
            () = self.ctx.cancel.cancelled() => Err(CommandError::Cancelled),
            result = self.supervise(&mut child) => result,
        };
        match &result {
            Ok(outcome) => debug!(exit_code = outcome.exit_code, "finished"),
            Err(e) => {
                debug!(error = %e, "ending process group");
                end_group(&mut child, pgid, self.ctx.kill_grace).await;
            }
        }
        guard.disarm();
        result
    }

    fn start_error(&self, reason: String) -> CommandError {
        CommandError::Start {
            command: self.label.to_owned(),
            reason,
        }
    }

    /// Waits for the shell while both pipes are pumped to the outbox.
    async fn supervise(&self, child: &mut Child) -> Result<CommandOutcome, CommandError> {
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        let (exited_tx, exited_rx) = watch::channel(None);
        let ctx = self.ctx;
        let capture = Capture::new(ctx.stdout_head_bytes, ctx.stdout_tail_bytes);
        let out = self.pump(Stream::Stdout, Some(capture));
        let err = self.pump(Stream::Stderr, None);
        let wait = async {
            let status = child.wait().await;
            exited_tx.send_replace(Some(Instant::now()));
            Ok::<_, CommandError>(status)
        };
        let (status, captured, _) = tokio::try_join!(
            wait,
            out.run(stdout, exited_rx.clone()),
            err.run(stderr, exited_rx),
        )?;
        Ok(CommandOutcome {
            exit_code: exit_code(status),
            stdout: captured.unwrap_or_default(),
        })
    }

    fn pump(&self, stream: Stream, capture: Option<Capture>) -> Pump<'_> {
        Pump {
            stream,
            label: self.label,
            outbox: self.ctx.outbox,
            redactor: self.redactor.stream(),
            decoder: Utf8Decoder::default(),
            capture,
            redacted: Vec::with_capacity(CHUNK_BYTES),
        }
    }
}

/// Makes sure `cwd` (if any) is a directory, creating it when missing.
async fn prepare_cwd(cwd: Option<&str>) -> Result<Option<PathBuf>, String> {
    let Some(cwd) = cwd else { return Ok(None) };
    let path = PathBuf::from(cwd);
    match tokio::fs::metadata(&path).await {
        Ok(meta) if meta.is_dir() => Ok(Some(path)),
        Ok(_) => Err(format!("cwd {cwd} is not a directory")),
        Err(e) if e.kind() == io::ErrorKind::NotFound => tokio::fs::create_dir_all(&path)
            .await
            .map(|()| Some(path))
            .map_err(|e| format!("cannot create cwd {cwd}: {e}")),
        Err(e) => Err(format!("cannot use cwd {cwd}: {e}")),
    }
}

/// `/bin/sh -c <command>` in a new process group, environment = the base
/// environment with the command's `env` laid over it, minus the runtime's
/// auth token.
fn shell_command(
    cmd: &wire::Command,
    cwd: Option<&Path>,
    base_env: Vec<(OsString, OsString)>,
) -> tokio::process::Command {
    let mut shell = tokio::process::Command::new("/bin/sh");
    shell
        .arg("-c")
        .arg(&cmd.command)
        .env_clear()
        .envs(base_env)
        .envs(cmd.env.iter().flatten())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Last resort if this future is dropped mid-run: the leader is
        // killed and reaped by tokio; `GroupGuard` takes care of the rest.
        .kill_on_drop(true);
    process::without_runtime_credentials(&mut shell);
    if let Some(cwd) = cwd {
        shell.current_dir(cwd);
    }
    process::new_group(&mut shell);
    shell
}

/// Ends the command's whole group: via the leader while it is unreaped,
/// otherwise by the group id its background jobs still hold.
async fn end_group(child: &mut Child, pgid: u32, grace: Duration) {
    if child.id().is_some() {
        process::terminate_group(child, grace).await;
    } else {
        process::kill_group_remnants(pgid, grace).await;
    }
}

/// SIGKILLs the group if the run is dropped before it settles (the caller's
/// future was aborted), so nothing outlives it.
struct GroupGuard {
    pgid: u32,
    armed: bool,
}

impl GroupGuard {
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if self.armed {
            process::signal_group(self.pgid, Signal::SIGKILL);
        }
    }
}

/// The shell's exit code; a signal `N` counts as `128 + N`, like shells do.
fn exit_code(status: io::Result<ExitStatus>) -> i32 {
    match status {
        Ok(status) => status
            .code()
            .or_else(|| status.signal().map(|n| 128 + n))
            .unwrap_or(-1),
        Err(e) => {
            warn!(error = %e, "could not wait for the shell");
            -1
        }
    }
}

/// Streams one pipe: read, redact, decode, send; optionally capture.
struct Pump<'a> {
    stream: Stream,
    label: &'a str,
    outbox: &'a Outbox,
    redactor: StreamRedactor,
    decoder: Utf8Decoder,
    capture: Option<Capture>,
    /// Scratch buffer for redacted bytes, reused across chunks.
    redacted: Vec<u8>,
}

impl Pump<'_> {
    /// Pumps until end of output; returns the terminal capture, if any.
    async fn run(
        mut self,
        mut pipe: impl AsyncRead + Unpin,
        exited: watch::Receiver<Option<Instant>>,
    ) -> Result<Option<String>, CommandError> {
        let mut buf = vec![0; CHUNK_BYTES];
        let mut reader = PipeReader::new(exited);
        while let Some(n) = reader.read(&mut pipe, &mut buf).await {
            let n = reader.coalesce(&mut pipe, &mut buf, n).await;
            self.redacted.clear();
            self.redactor.push(&buf[..n], &mut self.redacted);
            self.emit(false).await?;
        }
        self.redacted.clear();
        self.redactor.finish(&mut self.redacted);
        self.emit(true).await?;
        Ok(self.capture.map(Capture::finish))
    }

    /// Decodes `self.redacted` and sends it; `last` flushes the decoder.
    async fn emit(&mut self, last: bool) -> Result<(), CommandError> {
        let mut text = String::with_capacity(self.redacted.len());
        self.decoder.push(&self.redacted, &mut text);
        if last {
            self.decoder.finish(&mut text);
        }
        // Redaction can grow a chunk ([REDACTED] is longer than a short
        // secret, and held-back bytes join the next chunk): re-split.
        for piece in split_at_most(&text, CHUNK_BYTES) {
            self.send(piece).await?;
        }
        Ok(())
    }

    async fn send(&mut self, text: &str) -> Result<(), CommandError> {
        if let Some(capture) = &mut self.capture {
            capture.push(text);
        }
        let message = OutboundMessage::CommandOutputMessage {
            stream: self.stream,
            text: text.to_owned(),
            command: self.label.to_owned(),
        };
        self.outbox
            .send(message)
            .await
            .map_err(|_| CommandError::ClientGone)
    }
}

/// Reads a pipe until EOF, or until it stays empty past
/// [`DRAIN_AFTER_EXIT`] after the shell exited (a background job holds it).
struct PipeReader {
    /// Completes [`DRAIN_AFTER_EXIT`] after the shell exited.
    deadline: Pin<Box<dyn Future<Output = ()> + Send>>,
    past_deadline: bool,
    budget: usize,
}

impl PipeReader {
    fn new(exited: watch::Receiver<Option<Instant>>) -> Self {
        Self {
            deadline: Box::pin(drain_deadline(exited)),
            past_deadline: false,
            budget: DRAIN_BUDGET_BYTES,
        }
    }

    /// The next chunk's length, or `None` when reading is over.
    ///
    /// One read returns whatever the pipe holds (up to the buffer), so a
    /// fast producer yields full chunks and a slow one's line goes out at
    /// once. Data already in the pipe always wins over the deadline, so a
    /// send held up by backpressure loses nothing.
    async fn read(&mut self, pipe: &mut (impl AsyncRead + Unpin), buf: &mut [u8]) -> Option<usize> {
        if !self.past_deadline {
            tokio::select! {
                biased;
                result = pipe.read(buf) => return chunk_len(result),
                () = &mut self.deadline => self.past_deadline = true,
            }
        }
        let limit = buf.len().min(self.budget);
        if limit == 0 {
            return None;
        }
        let n = chunk_len(pipe.read(&mut buf[..limit]).now_or_never()?)?;
        self.budget -= n;
        Some(n)
    }
}

impl PipeReader {
    /// Tops up a chunk from a bulk producer.
    ///
    /// A read that returned at least [`BULK_READ_BYTES`] (a whole stdio
    /// buffer) means output is pouring out; waiting up to
    /// [`COALESCE_LINGER`] for more makes 8 MiB about 130 messages instead of
    /// thousands of 4 KiB ones, whatever the scheduling. A short read (a line
    /// from a slow producer) goes out at once.
    async fn coalesce(
        &mut self,
        pipe: &mut (impl AsyncRead + Unpin),
        buf: &mut [u8],
        mut filled: usize,
    ) -> usize {
        if filled < BULK_READ_BYTES || self.past_deadline {
            return filled;
        }
        let linger = tokio::time::sleep(COALESCE_LINGER);
        tokio::pin!(linger);
        while filled < buf.len() {
            tokio::select! {
                biased;
                result = pipe.read(&mut buf[filled..]) => match chunk_len(result) {
                    Some(n) => filled += n,
                    // EOF or an error: the next `read` reports it.
                    None => break,
                },
                () = &mut linger => break,
            }
        }
        filled
    }
}

/// Resolves [`DRAIN_AFTER_EXIT`] after the exit instant is published.
async fn drain_deadline(mut exited: watch::Receiver<Option<Instant>>) {
    let exited_at = exited.wait_for(Option::is_some).await.map(|at| *at);
    match exited_at {
        Ok(Some(at)) => sleep_until(at + DRAIN_AFTER_EXIT).await,
        // The waiter is gone: the run is being torn down anyway.
        _ => std::future::pending().await,
    }
}

/// `Some(n)` for data, `None` for EOF or an error (logged).
fn chunk_len(result: io::Result<usize>) -> Option<usize> {
    match result {
        Ok(0) => None,
        Ok(n) => Some(n),
        Err(e) => {
            warn!(error = %e, "reading command output failed");
            None
        }
    }
}

/// Splits `text` into pieces of at most `max` bytes, on char boundaries.
fn split_at_most(mut text: &str, max: usize) -> impl Iterator<Item = &str> {
    std::iter::from_fn(move || {
        if text.is_empty() {
            return None;
        }
        // A char is at most 4 bytes, so `max >= 4` always makes progress.
        let cut = floor_boundary(text, max.max(4));
        let (piece, rest) = text.split_at(cut);
        text = rest;
        Some(piece)
    })
}

/// Incremental lossy UTF-8 decoding: an incomplete sequence at the end of a
/// chunk waits for the next chunk; invalid bytes become U+FFFD exactly as
/// [`String::from_utf8_lossy`] would on the whole stream.
#[derive(Debug, Default)]
struct Utf8Decoder {
    partial: Vec<u8>,
}

impl Utf8Decoder {
    fn push(&mut self, bytes: &[u8], out: &mut String) {
        let joined;
        let mut rest = if self.partial.is_empty() {
            bytes
        } else {
            self.partial.extend_from_slice(bytes);
            joined = std::mem::take(&mut self.partial);
            joined.as_slice()
        };
        loop {
            match std::str::from_utf8(rest) {
                Ok(valid) => return out.push_str(valid),
                Err(e) => {
                    let (valid, after) = rest.split_at(e.valid_up_to());
                    out.push_str(std::str::from_utf8(valid).expect("checked valid"));
                    let Some(bad) = e.error_len() else {
                        self.partial = after.to_vec();
                        return;
                    };
                    out.push(char::REPLACEMENT_CHARACTER);
                    rest = &after[bad..];
                }
            }
        }
    }

    /// End of stream: an unfinished sequence is invalid.
    fn finish(&mut self, out: &mut String) {
        if !self.partial.is_empty() {
            self.partial.clear();
            out.push(char::REPLACEMENT_CHARACTER);
        }
    }
}

/// The terminal copy of stdout: the first `head_limit` and last `tail_limit`
/// bytes, in bounded memory, joined by a marker when the middle was dropped.
#[derive(Debug)]
struct Capture {
    head: String,
    head_limit: usize,
    /// Set once a char did not fit: later text must not sneak into the head.
    head_full: bool,
    tail: VecDeque<u8>,
    tail_limit: usize,
    omitted: usize,
}

impl Capture {
    fn new(head_limit: usize, tail_limit: usize) -> Self {
        Self {
            head: String::new(),
            head_limit,
            head_full: false,
            tail: VecDeque::new(),
            tail_limit,
            omitted: 0,
        }
    }

    fn push(&mut self, text: &str) {
        let rest = self.fill_head(text);
        self.push_tail(rest.as_bytes());
    }

    /// Adds what fits to the head; returns the rest.
    fn fill_head<'t>(&mut self, text: &'t str) -> &'t str {
        if self.head_full {
            return text;
        }
        let room = self.head_limit - self.head.len();
        let cut = floor_boundary(text, room);
        self.head.push_str(&text[..cut]);
        if cut < text.len() {
            self.head_full = true;
        }
        &text[cut..]
    }

    fn push_tail(&mut self, bytes: &[u8]) {
        if bytes.len() >= self.tail_limit {
            self.omitted += self.tail.len() + bytes.len() - self.tail_limit;
            self.tail.clear();
            self.tail.extend(&bytes[bytes.len() - self.tail_limit..]);
            return;
        }
        self.tail.extend(bytes);
        let excess = self.tail.len().saturating_sub(self.tail_limit);
        self.tail.drain(..excess);
        self.omitted += excess;
    }

    fn finish(mut self) -> String {
        let tail = Vec::from(std::mem::take(&mut self.tail));
        // A trimmed tail may start mid-character: drop the orphaned bytes.
        let skip = if self.omitted > 0 {
            tail.iter().take_while(|&&b| is_continuation(b)).count()
        } else {
            0
        };
        let tail = String::from_utf8_lossy(&tail[skip..]);
        if self.omitted + skip == 0 {
            self.head + &tail
        } else {
            join_with_marker(&self.head, self.omitted + skip, &tail)
        }
    }
}

fn is_continuation(byte: u8) -> bool {
    byte & 0b1100_0000 == 0b1000_0000
}

/// `head`, the omission marker line, `tail`: what a shortened stdout shows.
fn join_with_marker(head: &str, omitted: usize, tail: &str) -> String {
    format!("{head}\n[runtimeuse: {omitted} bytes of output omitted]\n{tail}")
}

/// The largest char boundary of `s` that is `<= at`.
fn floor_boundary(s: &str, at: usize) -> usize {
    let mut at = at.min(s.len());
    while !s.is_char_boundary(at) {
        at -= 1;
    }
    at
}

/// The smallest char boundary of `s` that is `>= at`.
fn ceil_boundary(s: &str, at: usize) -> usize {
    let mut at = at.min(s.len());
    while !s.is_char_boundary(at) {
        at += 1;
    }
    at
}

/// Shrinks the results' stdout so the serialized
/// `command_execution_result_message` fits `max_frame_bytes`.
///
/// The client drops the connection on any frame over 1 MiB, so an oversized
/// terminal would lose every result. First every stdout heavier (in escaped
/// JSON) than a common level is cut down to it, keeping head + tail with the
/// usual marker, so small outputs stay whole and big ones share the rest
/// fairly. Then, since escaping is uneven, the heaviest stdout is cut again
/// (by at least 10%) until the frame fits. Every step shortens some stdout,
/// so this terminates; if the commands alone exceed the limit it stops with
/// every stdout empty.
pub fn fit_results(results: &mut [CommandResult], max_frame_bytes: usize) {
    let mut frame = Frame::measure(results);
    if frame.total() <= max_frame_bytes {
        return;
    }
    let level = water_level(
        &frame.weights,
        max_frame_bytes.saturating_sub(frame.fixed()),
    );
    for i in 0..results.len() {
        if frame.weights[i] > level {
            let keep = level.saturating_sub(MARKER_ALLOWANCE) as f64 / frame.weights[i] as f64;
            cut_middle(&mut results[i].stdout, keep);
            frame.update(results, i);
        }
    }
    while frame.total() > max_frame_bytes {
        let Some(i) = heaviest(&frame.weights) else {
            return;
        };
        let excess = frame.total() - max_frame_bytes;
        let keep = frame.weights[i].saturating_sub(excess) as f64 / frame.weights[i] as f64;
        cut_middle(&mut results[i].stdout, keep.min(0.9));
        frame.update(results, i);
    }
}

/// Room for the marker line (and the quotes) when aiming at a size.
const MARKER_ALLOWANCE: usize = 64;

/// Serialized sizes of a result set, kept current as stdouts are cut.
struct Frame {
    envelope: usize,
    /// Serialized size of each result.
    sizes: Vec<usize>,
    /// Escaped size of each result's stdout; 0 when it is empty.
    weights: Vec<usize>,
}

impl Frame {
    fn measure(results: &[CommandResult]) -> Self {
        Self {
            envelope: envelope_len(results.len()),
            sizes: results.iter().map(serialized_len).collect(),
            weights: results.iter().map(|r| stdout_weight(&r.stdout)).collect(),
        }
    }

    fn update(&mut self, results: &[CommandResult], i: usize) {
        self.sizes[i] = serialized_len(&results[i]);
        self.weights[i] = stdout_weight(&results[i].stdout);
    }

    fn total(&self) -> usize {
        self.envelope + self.sizes.iter().sum::<usize>()
    }

    /// Everything but the stdout contents.
    fn fixed(&self) -> usize {
        self.total() - self.weights.iter().sum::<usize>()
    }
}

/// The largest level such that capping every weight at it fits `budget`
/// (`usize::MAX` when nothing needs capping).
fn water_level(weights: &[usize], budget: usize) -> usize {
    let mut sorted = weights.to_vec();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    let mut below: usize = sorted.iter().sum();
    if below <= budget {
        return usize::MAX;
    }
    for (k, &weight) in sorted.iter().enumerate() {
        below -= weight;
        // The top k + 1 capped at `level`, the others whole.
        let level = budget.saturating_sub(below) / (k + 1);
        if level >= sorted.get(k + 1).copied().unwrap_or(0) {
            return level;
        }
    }
    0
}

/// Bytes of the message around its results: the tag, brackets and commas.
fn envelope_len(count: usize) -> usize {
    let empty = OutboundMessage::CommandExecutionResultMessage {
        results: Vec::new(),
    };
    json_len(&empty) + count.saturating_sub(1)
}

fn serialized_len(result: &CommandResult) -> usize {
    json_len(result)
}

/// Serialized JSON size, counted without building the JSON.
fn json_len(value: &impl serde::Serialize) -> usize {
    let mut counter = ByteCounter(0);
    serde_json::to_writer(&mut counter, value).map_or(0, |()| counter.0)
}

/// An `io::Write` that only counts.
struct ByteCounter(usize);

impl io::Write for ByteCounter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Escaped JSON size of a stdout; 0 when there is nothing left to cut.
fn stdout_weight(stdout: &str) -> usize {
    if stdout.is_empty() {
        return 0;
    }
    json_len(&stdout)
}

/// The index of the largest non-zero weight.
fn heaviest(weights: &[usize]) -> Option<usize> {
    let (i, &w) = weights.iter().enumerate().max_by_key(|(_, w)| **w)?;
    (w > 0).then_some(i)
}

/// Keeps about `keep` (a fraction) of `text`, half from each end, with the
/// marker between; empties it if that would not make it shorter.
fn cut_middle(text: &mut String, keep: f64) {
    let side = (text.len() as f64 * keep / 2.0) as usize;
    let head_end = floor_boundary(text, side);
    let tail_start = ceil_boundary(text, text.len() - side).max(head_end);
    let cut = join_with_marker(
        &text[..head_end],
        tail_start - head_end,
        &text[tail_start..],
    );
    *text = if cut.len() < text.len() {
        cut
    } else {
        String::new()
    };
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use proptest::prelude::*;
    use tokio::sync::mpsc::Receiver;
    use tokio::time::{Instant, sleep, timeout};

    use super::*;

    /// What a test run needs besides the command.
    struct Rig {
        outbox: Outbox,
        redactor: Redactor,
        cancel: CancellationToken,
        head: usize,
        tail: usize,
    }

    impl Rig {
        fn new(capacity: usize) -> (Self, Receiver<OutboundMessage>) {
            let (outbox, rx) = Outbox::channel(capacity);
            let rig = Self {
                outbox,
                redactor: Redactor::default(),
                cancel: CancellationToken::new(),
                head: 128 * 1024,
                tail: 128 * 1024,
            };
            (rig, rx)
        }

        fn ctx(&self) -> CommandContext<'_> {
            CommandContext {
                outbox: &self.outbox,
                redactor: &self.redactor,
                cancel: &self.cancel,
                kill_grace: Duration::from_millis(300),
                stdout_head_bytes: self.head,
                stdout_tail_bytes: self.tail,
            }
        }
    }

    fn sh(command: &str) -> wire::Command {
        wire::Command {
            command: command.into(),
            cwd: None,
            env: None,
        }
    }

    fn with_env(command: &str, env: &[(&str, &str)]) -> wire::Command {
        let env: BTreeMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        wire::Command {
            env: Some(env),
            ..sh(command)
        }
    }

    /// One streamed output message.
    #[derive(Debug, Clone, PartialEq)]
    struct Output {
        stream: Stream,
        text: String,
        command: String,
    }

    fn output(message: OutboundMessage) -> Output {
        match message {
            OutboundMessage::CommandOutputMessage {
                stream,
                text,
                command,
            } => Output {
                stream,
                text,
                command,
            },
            other => panic!("unexpected message {other:?}"),
        }
    }

    /// Drives `run` while draining `rx`, like the session's writer would.
    async fn drive<F: Future>(
        run: F,
        rx: &mut Receiver<OutboundMessage>,
    ) -> (F::Output, Vec<Output>) {
        tokio::pin!(run);
        let mut got = Vec::new();
        loop {
            tokio::select! {
                result = &mut run => {
                    while let Ok(message) = rx.try_recv() {
                        got.push(output(message));
                    }
                    return (result, got);
                }
                Some(message) = rx.recv() => got.push(output(message)),
            }
        }
    }

    async fn run(
        rig: &Rig,
        rx: &mut Receiver<OutboundMessage>,
        cmd: &wire::Command,
    ) -> (CommandOutcome, Vec<Output>) {
        let (result, got) = drive(run_command(cmd, &rig.ctx()), rx).await;
        (result.expect("command runs"), got)
    }

    fn joined(got: &[Output], stream: Stream) -> String {
        got.iter()
            .filter(|o| o.stream == stream)
            .map(|o| o.text.as_str())
            .collect()
    }

    /// Members of a process group that are alive (zombies left to a
    /// non-reaping init do not count: they hold nothing and run nothing).
    fn live_members(pgid: u32) -> Vec<u32> {
        let mut live = Vec::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // pid (comm) state ppid pgrp ...; comm may contain spaces.
            let Some((head, rest)) = stat.rsplit_once(')') else {
                continue;
            };
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let pid = head.split_whitespace().next().unwrap().parse().unwrap();
            if fields[2] == pgid.to_string() && fields[0] != "Z" && fields[0] != "X" {
                live.push(pid);
            }
        }
        live
    }

    fn pgrep(pattern: &str) -> bool {
        std::process::Command::new("pgrep")
            .args(["-f", pattern])
            .output()
            .unwrap()
            .status
            .success()
    }

    fn unique(tag: &str) -> String {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        format!("{tag}-{}-{nanos}", std::process::id())
    }

    #[test]
    fn run_command_future_is_send() {
        fn assert_send<T: Send>(_: &T) {}
        let (rig, _rx) = Rig::new(1);
        let cmd = sh("true");
        let ctx = rig.ctx();
        assert_send(&run_command(&cmd, &ctx));
    }

    #[tokio::test]
    async fn streams_stdout_and_stderr_with_their_tags() {
        let (rig, mut rx) = Rig::new(16);
        let cmd = sh("echo out; echo err >&2");
        let (outcome, got) = run(&rig, &mut rx, &cmd).await;
        assert_eq!(outcome.exit_code, 0);
        assert_eq!(outcome.stdout, "out\n");
        assert_eq!(joined(&got, Stream::Stdout), "out\n");
        assert_eq!(joined(&got, Stream::Stderr), "err\n");
        assert!(got.iter().all(|o| o.command == cmd.command));
    }

    #[tokio::test]
    async fn stdin_is_empty() {
        let (rig, mut rx) = Rig::new(16);
        let started = Instant::now();
        let (outcome, _) = run(&rig, &mut rx, &sh("cat; echo done")).await;
        assert_eq!(outcome.stdout, "done\n");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn exit_codes_and_signals() {
        let (rig, mut rx) = Rig::new(16);
        for (command, code) in [
            ("true", 0),
            ("exit 3", 3),
            ("kill -KILL $$", 128 + 9),
            ("kill -TERM $$", 128 + 15),
        ] {
            let (outcome, _) = run(&rig, &mut rx, &sh(command)).await;
            assert_eq!(outcome.exit_code, code, "{command}");
        }
    }

    #[tokio::test]
    async fn missing_cwd_is_created() {
        let (rig, mut rx) = Rig::new(16);
        let dir = tempfile::tempdir().unwrap();
        let cwd = dir.path().join("a/b");
        let cmd = wire::Command {
            cwd: Some(cwd.to_string_lossy().into_owned()),
            ..sh("pwd")
        };
        let (outcome, _) = run(&rig, &mut rx, &cmd).await;
        assert!(cwd.is_dir());
        assert_eq!(outcome.stdout.trim_end(), cwd.to_string_lossy());
    }

    #[tokio::test]
    async fn cwd_that_is_a_file_is_a_start_error() {
        let (rig, mut rx) = Rig::new(16);
        let file = tempfile::NamedTempFile::new().unwrap();
        let cwd = file.path().to_string_lossy().into_owned();
        let cmd = wire::Command {
            cwd: Some(cwd.clone()),
            ..sh("echo never")
        };
        let (result, got) = drive(run_command(&cmd, &rig.ctx()), &mut rx).await;
        let err = result.unwrap_err();
        assert!(matches!(err, CommandError::Start { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            format!("Command `echo never` could not start: cwd {cwd} is not a directory")
        );
        assert!(got.is_empty());
    }

    #[tokio::test]
    async fn env_is_laid_over_the_runtime_env() {
        let (rig, mut rx) = Rig::new(16);
        // The real runtime environment is inherited.
        let (outcome, _) = run(&rig, &mut rx, &sh("printf %s \"$PATH\"")).await;
        assert_eq!(outcome.stdout, std::env::var("PATH").unwrap());
        // With an injected base: command values win, the token never passes.
        let base = vec![
            ("PATH".into(), std::env::var_os("PATH").unwrap()),
            ("ONLY_RUNTIME".into(), "r".into()),
            ("SHARED".into(), "runtime".into()),
            (crate::config::AUTH_TOKEN_ENV.into(), "base-token".into()),
        ];
        let cmd = with_env(
            "echo \"$ONLY_RUNTIME $SHARED ${RUNTIMEUSE_AUTH_TOKEN-unset}\"",
            &[("SHARED", "cmd")],
        );
        let (result, _) = drive(run_with_base_env(&cmd, &rig.ctx(), base.clone()), &mut rx).await;
        assert_eq!(result.unwrap().stdout, "r cmd unset\n");
        // Not even when the command itself asks for it.
        let cmd = with_env(
            "echo ${RUNTIMEUSE_AUTH_TOKEN-unset}",
            &[(crate::config::AUTH_TOKEN_ENV, "explicit")],
        );
        let (result, _) = drive(run_with_base_env(&cmd, &rig.ctx(), base), &mut rx).await;
        assert_eq!(result.unwrap().stdout, "unset\n");
    }

    #[tokio::test]
    async fn secret_split_across_reads_is_redacted() {
        let (mut rig, mut rx) = Rig::new(16);
        rig.redactor = Redactor::new(["hunter2-secret-value"]);
        let cmd = sh("printf 'a hunter2-sec'; sleep 0.2; printf 'ret-value b\\n'");
        let (outcome, got) = run(&rig, &mut rx, &cmd).await;
        assert!(
            got.len() >= 2,
            "the two halves were read separately: {got:?}"
        );
        assert_eq!(joined(&got, Stream::Stdout), "a [REDACTED] b\n");
        assert_eq!(outcome.stdout, "a [REDACTED] b\n");
    }

    #[tokio::test]
    async fn env_values_are_secrets_unless_short() {
        let (mut rig, mut rx) = Rig::new(16);
        rig.redactor = Redactor::new(["request-secret"]);
        let cmd = with_env(
            "echo \"$TOKEN $FLAG\"; echo \"$TOKEN\" >&2; echo request-secret",
            &[("TOKEN", "supersecretvalue"), ("FLAG", "1")],
        );
        let (outcome, got) = run(&rig, &mut rx, &cmd).await;
        assert_eq!(outcome.stdout, "[REDACTED] 1\n[REDACTED]\n");
        assert_eq!(joined(&got, Stream::Stderr), "[REDACTED]\n");
        // The command string is redacted in every message too.
        let label = "echo \"$TOKEN $FLAG\"; echo \"$TOKEN\" >&2; echo [REDACTED]";
        assert!(got.iter().all(|o| o.command == label), "{got:?}");
    }

    #[tokio::test]
    async fn invalid_utf8_becomes_replacement_chars() {
        let (rig, mut rx) = Rig::new(16);
        let (outcome, got) = run(&rig, &mut rx, &sh("printf '\\377\\376abc'")).await;
        assert_eq!(outcome.stdout, "\u{FFFD}\u{FFFD}abc");
        assert_eq!(joined(&got, Stream::Stdout), "\u{FFFD}\u{FFFD}abc");
    }

    #[tokio::test]
    async fn multibyte_char_split_across_reads_survives() {
        let (rig, mut rx) = Rig::new(16);
        // The euro sign is e2 82 ac.
        let cmd = sh("printf 'x\\342\\202'; sleep 0.2; printf '\\254y\\n'");
        let (outcome, got) = run(&rig, &mut rx, &cmd).await;
        assert_eq!(outcome.stdout, "x€y\n");
        assert_eq!(joined(&got, Stream::Stdout), "x€y\n");
    }

    #[tokio::test]
    async fn a_truncated_char_at_the_end_is_not_lost() {
        let (rig, mut rx) = Rig::new(16);
        let (outcome, _) = run(&rig, &mut rx, &sh("printf 'ok\\342\\202'")).await;
        assert_eq!(outcome.stdout, "ok\u{FFFD}");
    }

    fn seq_text(n: u32) -> String {
        (1..=n).map(|i| format!("{i}\n")).collect()
    }

    #[tokio::test]
    async fn large_output_is_streamed_whole_and_captured_bounded() {
        let (mut rig, mut rx) = Rig::new(16);
        rig.head = 4096;
        rig.tail = 4096;
        let expected = seq_text(1_200_000);
        assert!(expected.len() >= 8 * 1024 * 1024);
        let (outcome, got) = run(&rig, &mut rx, &sh("seq 1 1200000")).await;
        let streamed = joined(&got, Stream::Stdout);
        assert_eq!(streamed.len(), expected.len());
        assert!(streamed == expected, "streamed output differs");
        assert!(got.len() < 1000, "{} messages for 8 MiB", got.len());
        assert!(got.iter().all(|o| o.text.len() <= CHUNK_BYTES));
        let omitted = expected.len() - 8192;
        assert_eq!(
            outcome.stdout,
            join_with_marker(
                &expected[..4096],
                omitted,
                &expected[expected.len() - 4096..]
            )
        );
    }

    #[tokio::test]
    async fn frames_stay_small_whatever_the_output() {
        let (mut rig, mut rx) = Rig::new(16);
        // A one-byte secret grows fourfold here; NULs escape to six bytes.
        rig.redactor = Redactor::new(["a"]);
        let cmd = sh("yes ab | head -c 300000; head -c 300000 /dev/zero");
        let (outcome, got) = run(&rig, &mut rx, &cmd).await;
        assert_eq!(outcome.exit_code, 0);
        let streamed = joined(&got, Stream::Stdout);
        let expected = "[REDACTED]b\n".repeat(100_000) + &"\0".repeat(300_000);
        assert!(streamed == expected, "streamed output differs");
        for o in &got {
            assert!(o.text.len() <= CHUNK_BYTES);
            let frame = serde_json::to_vec(&OutboundMessage::CommandOutputMessage {
                stream: o.stream,
                text: o.text.clone(),
                command: o.command.clone(),
            })
            .unwrap();
            assert!(frame.len() < 512 * 1024, "{}", frame.len());
        }
    }

    #[tokio::test]
    async fn a_cancel_before_the_start_runs_nothing() {
        let (rig, mut rx) = Rig::new(16);
        let dir = tempfile::tempdir().unwrap();
        let witness = dir.path().join("ran");
        rig.cancel.cancel();
        let cmd = sh(&format!("touch {}", witness.display()));
        let (result, got) = drive(run_command(&cmd, &rig.ctx()), &mut rx).await;
        assert!(matches!(result, Err(CommandError::Cancelled)), "{result:?}");
        assert!(got.is_empty());
        assert!(!witness.exists());
    }

    #[tokio::test]
    async fn a_slow_reader_blocks_the_command() {
        let (rig, mut rx) = Rig::new(1);
        let cmd = sh("seq 1 1000000");
        let ctx = rig.ctx();
        let run = run_command(&cmd, &ctx);
        tokio::pin!(run);
        // Nobody reads: the outbox fills, then the pipe, then seq blocks.
        assert!(
            timeout(Duration::from_millis(300), &mut run).await.is_err(),
            "the command finished although nothing was read"
        );
        let (result, got) = drive(run, &mut rx).await;
        assert_eq!(result.unwrap().exit_code, 0);
        assert!(joined(&got, Stream::Stdout) == seq_text(1_000_000));
    }

    #[tokio::test]
    async fn cancel_kills_the_whole_tree() {
        let (rig, mut rx) = Rig::new(16);
        let marker = unique("cancel-marker");
        let cmd = sh(&format!(
            "echo $$; sh -c 'sleep 60; echo {marker}' & sleep 60"
        ));
        let ctx = rig.ctx();
        let run = run_command(&cmd, &ctx);
        tokio::pin!(run);
        let pgid: u32 = tokio::select! {
            result = &mut run => panic!("finished early: {result:?}"),
            Some(message) = rx.recv() => output(message).text.trim().parse().unwrap(),
        };
        // Let the background shell start.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !pgrep(&marker) && Instant::now() < deadline {
            sleep(Duration::from_millis(10)).await;
        }
        assert!(pgrep(&marker), "the grandchild never started");
        rig.cancel.cancel();
        let started = Instant::now();
        let result = run.await;
        assert!(matches!(result, Err(CommandError::Cancelled)), "{result:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(live_members(pgid), Vec::<u32>::new());
        assert!(!pgrep(&marker), "the grandchild survived");
    }

    #[tokio::test]
    async fn a_gone_client_kills_the_command() {
        let (rig, rx) = Rig::new(1);
        drop(rx);
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        let cmd = sh(&format!(
            "echo $$ > {}; sleep 60 & echo hi; sleep 60",
            pid_file.display()
        ));
        let started = Instant::now();
        let result = run_command(&cmd, &rig.ctx()).await;
        assert!(
            matches!(result, Err(CommandError::ClientGone)),
            "{result:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
        let pgid: u32 = std::fs::read_to_string(pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_eq!(live_members(pgid), Vec::<u32>::new());
    }

    #[tokio::test]
    async fn a_background_job_holding_the_pipes_does_not_hang_the_command() {
        let (rig, mut rx) = Rig::new(16);
        let started = Instant::now();
        let (outcome, _) = run(&rig, &mut rx, &sh("echo $$; sleep 5 &")).await;
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(outcome.exit_code, 0);
        // A completed command's background jobs keep running (servers).
        let pgid: u32 = outcome.stdout.trim().parse().unwrap();
        assert!(
            !live_members(pgid).is_empty(),
            "the background job was killed"
        );
        process::signal_group(pgid, Signal::SIGKILL);
    }

    #[tokio::test]
    async fn cancel_after_the_shell_exited_kills_background_jobs() {
        let (rig, mut rx) = Rig::new(1);
        // ~106 KiB: more than one chunk, so the pump gets stuck on the full
        // outbox, but little enough for the pipe to take the rest, so the
        // shell exits: the run is past the shell, not done.
        let cmd = sh("echo $$; sleep 60 & seq 1 20000");
        let ctx = rig.ctx();
        let run = run_command(&cmd, &ctx);
        tokio::pin!(run);
        assert!(timeout(Duration::from_millis(300), &mut run).await.is_err());
        let first = output(rx.recv().await.unwrap()).text;
        let pgid: u32 = first.lines().next().unwrap().parse().unwrap();
        assert!(
            !live_members(pgid).is_empty(),
            "the background job is running"
        );
        rig.cancel.cancel();
        let (result, _) = drive(run, &mut rx).await;
        assert!(matches!(result, Err(CommandError::Cancelled)), "{result:?}");
        assert_eq!(live_members(pgid), Vec::<u32>::new());
    }

    #[test]
    fn water_level_caps_only_the_big_ones() {
        assert_eq!(water_level(&[10, 20], 30), usize::MAX);
        // 10 stays whole, the two big ones share the remaining 90.
        assert_eq!(water_level(&[100, 10, 200], 100), 45);
        assert_eq!(water_level(&[100, 100], 0), 0);
    }

    fn result(command: &str, stdout: String) -> CommandResult {
        CommandResult {
            command: command.into(),
            exit_code: 0,
            stdout,
        }
    }

    fn frame_len(results: &[CommandResult]) -> usize {
        serde_json::to_vec(&OutboundMessage::CommandExecutionResultMessage {
            results: results.to_vec(),
        })
        .unwrap()
        .len()
    }

    #[test]
    fn envelope_and_sizes_match_real_serialization() {
        let results = vec![
            result("a", "x\u{1}\"".into()),
            result("b", String::new()),
            result("c", "é".into()),
        ];
        let computed =
            envelope_len(results.len()) + results.iter().map(serialized_len).sum::<usize>();
        assert_eq!(computed, frame_len(&results));
        assert_eq!(envelope_len(0), frame_len(&[]));
    }

    #[test]
    fn fit_results_shrinks_a_3_mib_result_set() {
        let mut results: Vec<CommandResult> = (0..3)
            .map(|i| result(&format!("cmd {i}"), seq_text(140_000)))
            .collect();
        assert!(frame_len(&results) > 3 * 1000 * 1000);
        let original = results.clone();
        fit_results(&mut results, 1_000_000);
        let len = frame_len(&results);
        assert!(len <= 1_000_000, "{len}");
        assert!(len > 500_000, "shrank far more than needed: {len}");
        for (fitted, original) in results.iter().zip(&original) {
            let (head, _) = fitted.stdout.split_once("\n[runtimeuse: ").unwrap();
            assert!(original.stdout.starts_with(head));
            let tail = fitted
                .stdout
                .rsplit_once(" bytes of output omitted]\n")
                .unwrap()
                .1;
            assert!(original.stdout.ends_with(tail));
        }
    }

    #[test]
    fn fit_results_leaves_small_results_alone() {
        let mut results = vec![result("echo hi", "hi\n".into())];
        fit_results(&mut results, 1_000_000);
        assert_eq!(results[0].stdout, "hi\n");
    }

    #[test]
    fn fit_results_handles_escaping_and_many_commands() {
        // ~3.4 MB of JSON, mostly six-byte escapes, over 200 results.
        let mut results: Vec<CommandResult> = (0..200)
            .map(|i| result(&format!("c{i}"), "\u{1}é\n".repeat(1500 + 10 * i)))
            .collect();
        fit_results(&mut results, 1_000_000);
        assert!(frame_len(&results) <= 1_000_000);
    }

    #[test]
    fn fit_results_terminates_when_commands_alone_are_too_big() {
        let mut results = vec![result(&"x".repeat(2_000_000), "out".repeat(1000))];
        fit_results(&mut results, 1_000_000);
        assert_eq!(results[0].stdout, "");
    }

    #[test]
    fn capture_keeps_everything_when_it_fits() {
        let mut capture = Capture::new(4, 4);
        capture.push("abc");
        capture.push("defgh");
        assert_eq!(capture.finish(), "abcdefgh");
    }

    #[test]
    fn capture_cuts_on_char_boundaries() {
        let mut capture = Capture::new(4, 5);
        capture.push("ab€cd€€");
        // Head "ab" (the € does not fit); the last 5 bytes start inside a €,
        // whose torn 2 bytes are dropped too: 11 - 5 + 2 omitted.
        assert_eq!(capture.finish(), join_with_marker("ab", 8, "€"));
    }

    #[test]
    fn split_at_most_respects_chars() {
        let pieces: Vec<&str> = split_at_most("ab€cd", 4).collect();
        assert_eq!(pieces, ["ab", "€c", "d"]);
    }

    /// `capture` on the whole text, written the obvious way.
    fn reference_capture(text: &str, head: usize, tail: usize) -> String {
        let head_end = floor_boundary(text, head);
        let rest = &text[head_end..];
        if rest.len() <= tail {
            return text.to_owned();
        }
        let tail_start = ceil_boundary(text, text.len() - tail);
        join_with_marker(
            &text[..head_end],
            tail_start - head_end,
            &text[tail_start..],
        )
    }

    fn split_points(len: usize, cuts: &[prop::sample::Index]) -> Vec<usize> {
        let mut points: Vec<usize> = cuts.iter().map(|c| c.index(len + 1)).collect();
        points.push(0);
        points.push(len);
        points.sort_unstable();
        points
    }

    /// Pieces of multibyte sequences plus bytes that are never valid.
    const TRICKY_BYTES: [u8; 8] = [b'a', 0xe2, 0x82, 0xac, 0xf0, 0x9f, 0xff, 0xc0];

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn decoding_in_pieces_equals_lossy_on_the_whole(
            bytes in prop::collection::vec(prop::sample::select(TRICKY_BYTES.to_vec()), 0..40),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
        ) {
            let points = split_points(bytes.len(), &cuts);
            let mut decoder = Utf8Decoder::default();
            let mut out = String::new();
            for w in points.windows(2) {
                decoder.push(&bytes[w[0]..w[1]], &mut out);
            }
            decoder.finish(&mut out);
            prop_assert_eq!(out, String::from_utf8_lossy(&bytes).into_owned());
        }

        #[test]
        fn capture_in_pieces_equals_reference(
            text in "[aé€😀]{0,40}",
            head in 0usize..12,
            tail in 0usize..12,
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
        ) {
            let points = split_points(text.len(), &cuts);
            let mut capture = Capture::new(head, tail);
            for w in points.windows(2) {
                let (a, b) = (floor_boundary(&text, w[0]), floor_boundary(&text, w[1]));
                capture.push(&text[a..b]);
            }
            prop_assert_eq!(capture.finish(), reference_capture(&text, head, tail));
        }

        #[test]
        fn fit_results_always_fits_or_empties(
            sizes in prop::collection::vec(0usize..2000, 1..8),
            max in 100usize..20_000,
        ) {
            let mut results: Vec<CommandResult> = sizes
                .iter()
                .map(|&n| result("c", "\u{1}a€".repeat(n)))
                .collect();
            fit_results(&mut results, max);
            let len = frame_len(&results);
            prop_assert!(len <= max || results.iter().all(|r| r.stdout.is_empty()), "{}", len);
        }
    }
}
