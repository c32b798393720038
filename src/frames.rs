//! Fitting messages into frames the client accepts.
//!
//! The Python client drops the whole connection on a frame over 1 MiB
//! ([`MAX_OUTBOUND_FRAME_BYTES`]), so no message may ever produce one.
//! Two tools keep every frame under the limit, both working on the message
//! as it will be serialised:
//!
//! - [`encode`] redacts a message and splits an oversized streaming message
//!   (assistant text, command output) into several, or turns an oversized
//!   terminal into an error the client can read;
//! - [`fit_results`] shrinks a command result set's stdouts fairly before
//!   it becomes a terminal, so the results arrive instead of that error.

use std::io;

use serde_json::Value;

use crate::redact::{Redactor, marker_around};
use crate::text::{ceil_boundary, char_pieces, floor_boundary, join_with_marker};
use crate::wire::{CommandResult, MAX_OUTBOUND_FRAME_BYTES, OutboundMessage};

/// Largest piece of text put in one message when an oversized one is split.
const SPLIT_PIECE_BYTES: usize = 64 * 1024;

/// Longest command string repeated in the pieces of a split output message.
const MAX_COMMAND_ECHO_BYTES: usize = 4096;

/// Turns a message into redacted frames that each fit the client's limit.
///
/// Oversized streaming messages are split (after redaction, so a split can
/// never cut a secret in two); an oversized command result set is fitted
/// (after redaction, so the markers are counted); any other oversized
/// terminal becomes an error the client can read instead of a frame that
/// would kill its connection.
pub fn encode(message: &OutboundMessage, redactor: &Redactor) -> Vec<String> {
    let redacted = message.redacted(redactor);
    let mut value = serde_json::to_value(&redacted).unwrap_or(Value::Null);
    let text = value.to_string();
    if text.len() <= MAX_OUTBOUND_FRAME_BYTES {
        return vec![text];
    }
    if let OutboundMessage::CommandExecutionResultMessage { mut results } = redacted {
        // Fitted after redaction, so markers cannot push it over again.
        fit_results(&mut results, MAX_OUTBOUND_FRAME_BYTES);
        let fitted =
            serde_json::to_string(&OutboundMessage::CommandExecutionResultMessage { results })
                .unwrap_or_default();
        if fitted.len() <= MAX_OUTBOUND_FRAME_BYTES {
            return vec![fitted];
        }
    }
    match message {
        OutboundMessage::AssistantMessage { .. } => split_field(&value, "text_blocks", true),
        OutboundMessage::CommandOutputMessage { .. } => {
            // Every piece repeats the command string: a huge one must not
            // keep the pieces oversized too.
            if let Some(command) = value["command"].as_str()
                && command.len() > MAX_COMMAND_ECHO_BYTES
            {
                let cut = char_pieces(command, MAX_COMMAND_ECHO_BYTES)
                    .next()
                    .unwrap_or("");
                value["command"] = Value::String(format!("{cut}…"));
            }
            split_field(&value, "text", false)
        }
        other if other.is_terminal() => {
            let error = format!(
                "The result is {} bytes once encoded, more than the {MAX_OUTBOUND_FRAME_BYTES}-byte frame limit of the client",
                text.len()
            );
            vec![serde_json::to_string(&OutboundMessage::error(error)).unwrap_or_default()]
        }
        _ => {
            tracing::warn!(bytes = text.len(), "dropped an oversized message");
            Vec::new()
        }
    }
}

/// Splits the text in `field` (a string, or a list of strings) across
/// several copies of the message. Each copy is the message without the
/// field plus one piece, so the cost stays linear in the text's size.
fn split_field(value: &Value, field: &str, is_list: bool) -> Vec<String> {
    let mut skeleton = value.clone();
    let texts: Vec<String> = match skeleton.as_object_mut().and_then(|m| m.remove(field)) {
        Some(Value::String(s)) => vec![s],
        Some(Value::Array(items)) => items
            .into_iter()
            .filter_map(|item| match item {
                Value::String(s) => Some(s),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    let mut frames = Vec::new();
    for text in &texts {
        for piece in char_pieces(text, SPLIT_PIECE_BYTES) {
            let piece = Value::String(piece.to_owned());
            let mut copy = skeleton.clone();
            copy[field] = if is_list {
                Value::Array(vec![piece])
            } else {
                piece
            };
            frames.push(copy.to_string());
        }
    }
    frames
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
pub(crate) fn fit_results(results: &mut [CommandResult], max_frame_bytes: usize) {
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
    let head_end = outside_marker(text, floor_boundary(text, side), Side::Before);
    let tail_start =
        outside_marker(text, ceil_boundary(text, text.len() - side), Side::After).max(head_end);
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

/// Which way a cut moves out of a marker.
#[derive(Clone, Copy)]
enum Side {
    Before,
    After,
}

/// `at`, moved to the start (`Before`) or the end (`After`) of the
/// redaction marker it falls inside, if any: the text is already redacted,
/// and half a marker would read as mangled output.
fn outside_marker(text: &str, at: usize, side: Side) -> usize {
    match (marker_around(text.as_bytes(), at), side) {
        (Some((start, _)), Side::Before) => start,
        (Some((_, end)), Side::After) => end,
        (None, _) => at,
    }
}

#[cfg(test)]
mod tests;
