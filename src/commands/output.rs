//! A command's output on its way out: each pipe is read in chunks,
//! redacted as bytes, decoded as UTF-8 incrementally and sent as
//! `command_output_message`s, while stdout is also captured for the
//! terminal result.
//!
//! Sending waits on the bounded [`Outbox`] and the pipe is not read
//! meanwhile, so a command that prints faster than the client reads blocks
//! on its full pipe instead of growing the runtime's memory.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::time::Duration;

use futures_util::FutureExt;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::watch;
use tokio::time::{Instant, sleep_until};
use tracing::warn;

use crate::outbox::Outbox;
use crate::redact::{Redactor, StreamRedactor};
use crate::text::char_pieces;
use crate::wire::{OutboundMessage, Stream};

use super::CommandError;
use super::capture::Capture;

/// Largest read from a pipe, and largest `text` of one output message.
///
/// Big enough that a fast producer costs few messages, small enough that the
/// frame stays far below the client's 1 MiB limit even if every byte is
/// JSON-escaped to six (`\u0001`).
pub(crate) const CHUNK_BYTES: usize = 64 * 1024;

/// How long the pipes are still read after the shell exits, for background
/// jobs (`server &`) that keep them open.
pub(crate) const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(100);

/// A read at least this big means the producer writes in bulk (stdio's
/// buffer size): worth waiting a moment to fill a whole chunk. Also the
/// first read's buffer, grown to [`CHUNK_BYTES`] once a read fills it: most
/// commands print a few lines, and two 64 KiB buffers per command cost
/// page faults on every spawn.
const BULK_READ_BYTES: usize = 4096;

/// How long a bulk chunk waits for more output before it is sent.
const COALESCE_LINGER: Duration = Duration::from_millis(2);

/// Once [`DRAIN_AFTER_EXIT`] has passed, at most this much more is read per
/// pipe: enough for whatever the shell left in a pipe (Linux caps an
/// unprivileged pipe at 1 MiB), bounded so a background job that writes
/// without pause cannot keep the command from completing.
const DRAIN_BUDGET_BYTES: usize = 1024 * 1024;

/// Streams one pipe: read, redact, decode, send; optionally capture.
pub(super) struct Pump<'a> {
    stream: Stream,
    label: &'a str,
    outbox: &'a Outbox,
    redactor: StreamRedactor,
    decoder: Utf8Decoder,
    capture: Option<Capture>,
    /// Scratch buffer for redacted bytes, reused across chunks.
    redacted: Vec<u8>,
}

impl<'a> Pump<'a> {
    /// A pump for one of `label`'s pipes; `capture` keeps a copy for the
    /// terminal result (stdout only).
    pub(super) fn new(
        stream: Stream,
        label: &'a str,
        outbox: &'a Outbox,
        redactor: &Redactor,
        capture: Option<Capture>,
    ) -> Self {
        Self {
            stream,
            label,
            outbox,
            redactor: redactor.stream(),
            decoder: Utf8Decoder::default(),
            capture,
            redacted: Vec::new(),
        }
    }

    /// Pumps until end of output; returns the terminal capture, if any.
    pub(super) async fn run(
        mut self,
        mut pipe: impl AsyncRead + Unpin,
        exited: watch::Receiver<Option<Instant>>,
    ) -> Result<Option<String>, CommandError> {
        let mut buf = vec![0; BULK_READ_BYTES];
        let mut reader = PipeReader::new(exited);
        while let Some(n) = reader.read(&mut pipe, &mut buf).await {
            if n == buf.len() && n < CHUNK_BYTES {
                buf.resize(CHUNK_BYTES, 0);
            }
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
        if text.len() <= CHUNK_BYTES {
            return self.send(text).await;
        }
        // Redaction can grow a chunk ([REDACTED] is longer than a short
        // secret, and held-back bytes join the next chunk): re-split.
        for piece in char_pieces(&text, CHUNK_BYTES) {
            self.send(piece.to_owned()).await?;
        }
        Ok(())
    }

    async fn send(&mut self, text: String) -> Result<(), CommandError> {
        if let Some(capture) = &mut self.capture {
            capture.push(&text);
        }
        let message = OutboundMessage::CommandOutputMessage {
            stream: self.stream,
            text,
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
    /// When the shell exited, once it has.
    exited: watch::Receiver<Option<Instant>>,
    past_deadline: bool,
    budget: usize,
}

impl PipeReader {
    fn new(exited: watch::Receiver<Option<Instant>>) -> Self {
        Self {
            deadline: Box::pin(drain_deadline(exited.clone())),
            exited,
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
    /// from a slow producer) goes out at once, and so does the output of a
    /// shell that has exited: nothing more is coming from it, whatever a
    /// background job holding the pipe may do.
    async fn coalesce(
        &mut self,
        pipe: &mut (impl AsyncRead + Unpin),
        buf: &mut [u8],
        mut filled: usize,
    ) -> usize {
        if filled < BULK_READ_BYTES || self.past_deadline {
            return filled;
        }
        if self.exited.borrow().is_some() {
            while filled < buf.len() {
                match pipe.read(&mut buf[filled..]).now_or_never() {
                    Some(Ok(n)) if n > 0 => filled += n,
                    _ => break,
                }
            }
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

/// Incremental lossy UTF-8 decoding: an incomplete sequence at the end of a
/// chunk waits for the next chunk; invalid bytes become U+FFFD exactly as
/// [`String::from_utf8_lossy`] would on the whole stream.
#[derive(Debug, Default)]
pub(super) struct Utf8Decoder {
    partial: Vec<u8>,
}

impl Utf8Decoder {
    pub(super) fn push(&mut self, bytes: &[u8], out: &mut String) {
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
    pub(super) fn finish(&mut self, out: &mut String) {
        if !self.partial.is_empty() {
            self.partial.clear();
            out.push(char::REPLACEMENT_CHARACTER);
        }
    }
}
