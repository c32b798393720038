//! `session::encode` on arbitrary outbound messages with arbitrary secrets.
//!
//! Strings are random bytes (made UTF-8 lossily, `[` replaced) or
//! small-alphabet text; one string field per message may be repeated up to
//! 1.6 MB so messages cross the 1 MB frame limit and get split. Asserts that
//! every frame
//! - is at most `wire::MAX_OUTBOUND_FRAME_BYTES` bytes,
//! - is valid JSON,
//! - holds no secret in any string or key, except where it overlaps a
//!   `[REDACTED]` marker (see `common::unexplained_secret`);
//! - holds only whole markers (every `[` starts one, but at a split piece's
//!   end), so no marker was redacted;
//!
//! that encoding a message a producer already redacted gives the same frames
//! (the writer's pass never redacts twice); that an oversized command result
//! set is fitted, never replaced by the too-big error;
//!
//! and that splitting an assistant or command-output message loses no text:
//! the frames' pieces join up to the redacted text (checked when no secret
//! hits the message's own keys and tags, which redaction rewrites too).

#![no_main]

mod common;

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use runtimeuse::Redactor;
use runtimeuse::fuzzing::{
    CommandResult, MAX_OUTBOUND_FRAME_BYTES, OutboundMessage, ResultData, Stream, encode,
};
use serde_json::{Map, Value};

/// Most bytes of text one message may get, so runs stay fast. (Splitting
/// clones the whole message for every 64 KiB piece, so time grows with the
/// square of the size: tens of MB take seconds to minutes. That is reported
/// separately, not fuzzed for.)
const BUDGET: usize = 1_600_000;

struct Gen<'a, 'b> {
    u: &'b mut Unstructured<'a>,
    /// Bytes of text still to be had, shared by all strings of the message.
    budget: usize,
    /// How many strings were made so far.
    made: usize,
    /// Which string (in order of making) is big, if any: one chosen field
    /// per message, so a single input byte moves the bulk between fields.
    big: usize,
}

impl Gen<'_, '_> {
    /// A string of up to three segments, each repeated 1 to many times; in
    /// the big string, the first segment fills half to all of the budget left.
    /// `[` is replaced so that every marker in a frame is a real one.
    fn string(&mut self) -> Result<String> {
        let mut big = self.made == self.big;
        self.made += 1;
        let mut out = String::new();
        for _ in 0..self.u.int_in_range(u8::from(big)..=3)? {
            let len = self
                .u
                .int_in_range(usize::from(big)..=48)?
                .min(self.u.len());
            let bytes = self.u.bytes(len)?;
            let bytes = if self.u.arbitrary()? {
                common::text_from(bytes)
            } else {
                bytes.to_vec()
            };
            let segment = String::from_utf8_lossy(&bytes).replace('[', "(");
            let max = self.budget / segment.len().max(1);
            let times = if std::mem::take(&mut big) {
                // One byte, so that short inputs get big strings too.
                max - max / 512 * usize::from(self.u.arbitrary::<u8>()?)
            } else {
                match self.u.int_in_range(0..=3u8)? {
                    0 | 1 => 1,
                    2 => self.u.int_in_range(0..=64usize)?,
                    _ => self.u.int_in_range(0..=max / 16)?,
                }
            }
            .min(max);
            self.budget -= segment.len() * times;
            out.push_str(&segment.repeat(times));
        }
        Ok(out)
    }

    fn strings(&mut self, max: usize) -> Result<Vec<String>> {
        (0..self.u.int_in_range(0..=max)?)
            .map(|_| self.string())
            .collect()
    }

    fn map(&mut self) -> Result<Map<String, Value>> {
        let mut map = Map::new();
        for _ in 0..self.u.int_in_range(0..=3)? {
            let value = match self.u.int_in_range(0..=2)? {
                0 => Value::String(self.string()?),
                1 => Value::Array(self.strings(3)?.into_iter().map(Value::String).collect()),
                _ => Value::Object(self.map()?),
            };
            map.insert(self.string()?, value);
        }
        Ok(map)
    }

    fn message(&mut self) -> Result<OutboundMessage> {
        Ok(match self.u.int_in_range(0..=7)? {
            0 | 1 => {
                let blocks = self.strings(6)?;
                // Sometimes many blocks, within the budget too.
                let total: usize = blocks.iter().map(String::len).sum();
                let times = self
                    .u
                    .int_in_range(1..=64)?
                    .min(BUDGET / total.max(1))
                    .max(1);
                let text_blocks = (0..times).flat_map(|_| blocks.iter().cloned()).collect();
                OutboundMessage::AssistantMessage { text_blocks }
            }
            2 | 3 => {
                let stream = if self.u.arbitrary()? {
                    Stream::Stdout
                } else {
                    Stream::Stderr
                };
                // The text last: growing the input then changes only the text.
                let command = self.string()?;
                let text = self.string()?;
                OutboundMessage::CommandOutputMessage {
                    stream,
                    text,
                    command,
                }
            }
            4 => OutboundMessage::ErrorMessage {
                error: self.string()?,
                metadata: self.map()?,
            },
            5 => OutboundMessage::ResultMessage {
                data: if self.u.arbitrary()? {
                    ResultData::Text {
                        text: self.string()?,
                    }
                } else {
                    ResultData::StructuredOutput {
                        structured_output: self.map()?,
                    }
                },
                metadata: self.map()?,
            },
            6 => OutboundMessage::CommandExecutionResultMessage {
                results: (0..self.u.int_in_range(0..=3)?)
                    .map(|_| {
                        Ok(CommandResult {
                            command: self.string()?,
                            exit_code: self.u.arbitrary()?,
                            stdout: self.string()?,
                        })
                    })
                    .collect::<Result<_>>()?,
            },
            _ => OutboundMessage::ArtifactUploadRequestMessage {
                filename: self.string()?,
                filepath: self.string()?,
            },
        })
    }
}

/// A key or string value found in a frame.
struct Found<'v> {
    /// The top-level field holding it, if it is that field's string or one
    /// of that field's list of strings.
    field: Option<&'v str>,
    text: &'v str,
}

/// Where a JSON object sits: the runtime's own structure (whose field
/// names and tags are protocol, never redacted, so not checked) or content
/// a client or handler supplied (keys included, all checked).
#[derive(Clone, Copy, PartialEq)]
enum Level {
    /// The message object itself.
    Top,
    /// `data` of a result, and each entry of `results`.
    Nested,
    /// Structured output, metadata: every key and string is content.
    Content,
}

/// The protocol's tag values: fixed words, not content.
const TAGS: [&str; 3] = ["message_type", "type", "stream"];

/// Every content key and string value in a frame, depth first.
fn strings_in<'v>(value: &'v Value, level: Level, out: &mut Vec<Found<'v>>) {
    let plain = |text| Found { field: None, text };
    match value {
        Value::String(s) => out.push(plain(s)),
        Value::Array(items) => items
            .iter()
            .for_each(|v| strings_in(v, Level::Content, out)),
        Value::Object(map) => {
            for (k, v) in map {
                if level == Level::Content {
                    out.push(plain(k));
                }
                if level != Level::Content && TAGS.contains(&k.as_str()) {
                    continue;
                }
                let field = |text| Found {
                    field: Some(k),
                    text,
                };
                let inner = match (level, k.as_str()) {
                    (Level::Top, "data") => Level::Nested,
                    _ => Level::Content,
                };
                match v {
                    Value::String(s) if level == Level::Top => out.push(field(s)),
                    Value::Array(items) if level == Level::Top && k == "results" => items
                        .iter()
                        .for_each(|item| strings_in(item, Level::Nested, out)),
                    Value::Array(items)
                        if level == Level::Top && items.iter().all(Value::is_string) =>
                    {
                        items
                            .iter()
                            .filter_map(Value::as_str)
                            .for_each(|s| out.push(field(s)))
                    }
                    _ => strings_in(v, inner, out),
                }
            }
        }
        _ => {}
    }
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok(secrets) = common::secrets(&mut u, 4, 5) else {
        return;
    };
    let Ok(big) = u.int_in_range(0..=7) else {
        return;
    };
    let mut generator = Gen {
        u: &mut u,
        budget: BUDGET,
        made: 0,
        big,
    };
    let Ok(message) = generator.message() else {
        return;
    };
    let redactor = Redactor::new(&secrets);
    let frames = encode(&message, &redactor);
    if !secrets
        .iter()
        .any(|s| s.contains(runtimeuse::fuzzing::REDACTED))
    {
        assert!(
            encode(&message.redacted(&redactor), &redactor) == frames,
            "encoding an already redacted message differs (message {}, secrets {secrets:?})",
            message_summary(&message),
        );
    }

    // The text field an oversized message of this kind is split on.
    let split_field = match &message {
        OutboundMessage::AssistantMessage { .. } => Some("text_blocks"),
        OutboundMessage::CommandOutputMessage { .. } => Some("text"),
        _ => None,
    };
    let whole = serde_json::to_value(message.redacted(&redactor)).unwrap();
    let split = split_field.is_some() && whole.to_string().len() > MAX_OUTBOUND_FRAME_BYTES;

    let mut pieces = String::new();
    for (n, frame) in frames.iter().enumerate() {
        assert!(
            frame.len() <= MAX_OUTBOUND_FRAME_BYTES,
            "frame {n} of {} is {} bytes (message {}, secrets {secrets:?})",
            frames.len(),
            frame.len(),
            message_summary(&message),
        );
        let value: Value = serde_json::from_str(frame)
            .unwrap_or_else(|e| panic!("frame {n} is not JSON ({e}): {frame:.200}"));
        assert!(
            value["message_type"]
                .as_str()
                .is_some_and(|t| !t.contains('[')),
            "frame {n} has a mangled message_type: {frame:.200}"
        );
        if message.is_terminal() && is_too_big_error(&value) {
            assert!(
                !matches!(
                    message,
                    OutboundMessage::CommandExecutionResultMessage { .. }
                ) || commands_alone_too_big(&message, &redactor),
                "a command result set became the too-big error instead of being fitted"
            );
            // Only the runtime's own words and a number: if they spell a
            // secret (say `b`), that is no leak, just like the marker.
            continue;
        }
        let mut found = Vec::new();
        strings_in(&value, Level::Top, &mut found);
        for Found { field, text } in found {
            let in_split_field = split_field.is_some() && field == split_field;
            // A split piece may start or end inside a marker.
            let cut = split && in_split_field;
            // Fitting a result cuts stdout in the middle, maybe inside a
            // marker, and puts its own bracketed note there.
            let fitted = text.contains("bytes of output omitted]");
            assert!(
                fitted || common::markers_intact(text.as_bytes(), cut),
                "mangled marker in frame {n}: {}",
                clip(text, 200)
            );
            if let Some((secret, at)) = common::unexplained_secret(text.as_bytes(), &secrets, cut) {
                panic!(
                    "secret {secret:?} in frame {n} at byte {at} of string {}",
                    clip(text, 200)
                );
            }
            if in_split_field {
                pieces.push_str(text);
            }
        }
    }

    // Text preservation: redaction never touches the protocol's own words,
    // so the pieces always join to the redacted text.
    if let Some(field) = split_field {
        let expected: String = match &whole[field] {
            Value::String(s) => s.clone(),
            Value::Array(items) => items.iter().filter_map(Value::as_str).collect(),
            _ => unreachable!("{field} is a string or a list of strings"),
        };
        assert!(
            pieces == expected,
            "frames carry {} bytes of {field} text, the redacted message {} (message {})",
            pieces.len(),
            expected.len(),
            message_summary(&message),
        );
    }
});

/// Whether `value` is exactly the error an oversized terminal message is
/// replaced with, which carries nothing of the message but its size.
fn is_too_big_error(value: &Value) -> bool {
    let Some(error) = value["error"].as_str() else {
        return false;
    };
    let size = error
        .strip_prefix("The result is ")
        .and_then(|rest| rest.strip_suffix(&format!(" bytes once encoded, more than the {MAX_OUTBOUND_FRAME_BYTES}-byte frame limit of the client")));
    let expected =
        serde_json::json!({"message_type": "error_message", "error": error, "metadata": {}});
    size.is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        && *value == expected
}

/// Whether a result set is over the limit even with every stdout empty,
/// the one case fitting cannot help.
fn commands_alone_too_big(message: &OutboundMessage, redactor: &Redactor) -> bool {
    let OutboundMessage::CommandExecutionResultMessage { results } = message.redacted(redactor)
    else {
        return false;
    };
    let empty: Vec<CommandResult> = results
        .into_iter()
        .map(|r| CommandResult {
            stdout: String::new(),
            ..r
        })
        .collect();
    serde_json::to_string(&OutboundMessage::CommandExecutionResultMessage { results: empty })
        .unwrap()
        .len()
        > MAX_OUTBOUND_FRAME_BYTES
}

/// The start of a possibly huge string, quoted.
fn clip(s: &str, max_chars: usize) -> String {
    match s.char_indices().nth(max_chars) {
        Some((end, _)) => format!("{:?}...", &s[..end]),
        None => format!("{s:?}"),
    }
}

/// A short description of a possibly huge message.
fn message_summary(message: &OutboundMessage) -> String {
    let value = serde_json::to_value(message).unwrap();
    let mut out = String::from("{");
    if let Value::Object(map) = value {
        for (k, v) in map {
            let shown = match &v {
                Value::String(s) => format!("{} bytes: {}", s.len(), clip(s, 60)),
                Value::Array(items) => format!("list of {}", items.len()),
                other => format!("{:.60}", other.to_string()),
            };
            out.push_str(&format!(" {k}: {shown};"));
        }
    }
    out + " }"
}
