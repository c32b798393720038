//! `session::encode` on arbitrary outbound messages with arbitrary secrets.
//!
//! Strings are random bytes (made UTF-8 lossily) or small-alphabet text, some
//! repeated up to a few MB so messages cross the 1 MB frame limit and get
//! split. Asserts that every frame
//! - is at most `wire::MAX_OUTBOUND_FRAME_BYTES` bytes,
//! - is valid JSON,
//! - holds no secret in any string or key, except where it overlaps a
//!   `[REDACTED]` marker (see `common::unexplained_secret`);
//!
//! and that splitting an assistant or command-output message loses no text:
//! the frames' pieces join up to the redacted text (checked when no secret
//! hits the message's own keys and tags, which redaction rewrites too).

#![no_main]

mod common;

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use runtimeuse::Redactor;
use runtimeuse::session::encode;
use runtimeuse::wire::{
    CommandResult, MAX_OUTBOUND_FRAME_BYTES, OutboundMessage, ResultData, Stream,
};
use serde_json::{Map, Value};

/// Most bytes of text one message may get, so runs stay fast.
const BUDGET: usize = 3_000_000;

struct Gen<'a, 'b> {
    u: &'b mut Unstructured<'a>,
    budget: usize,
}

impl Gen<'_, '_> {
    /// A string of up to three segments, each repeated 1 to many times.
    /// `[` is replaced so that every marker in a frame is a real one.
    fn string(&mut self) -> Result<String> {
        let mut out = String::new();
        for _ in 0..self.u.int_in_range(0..=3)? {
            let len = self.u.int_in_range(0..=48usize)?.min(self.u.len());
            let bytes = self.u.bytes(len)?;
            let bytes = if self.u.arbitrary()? {
                common::text_from(bytes)
            } else {
                bytes.to_vec()
            };
            let segment = String::from_utf8_lossy(&bytes).replace('[', "(");
            let max = self.budget / segment.len().max(1);
            let times = match self.u.int_in_range(0..=3u8)? {
                0 | 1 => 1,
                2 => self.u.int_in_range(0..=64usize)?,
                _ => self.u.int_in_range(0..=max)?,
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
                // Sometimes many blocks.
                let times = self.u.int_in_range(1..=64)?;
                let text_blocks = (0..times).flat_map(|_| blocks.iter().cloned()).collect();
                OutboundMessage::AssistantMessage { text_blocks }
            }
            2 | 3 => OutboundMessage::CommandOutputMessage {
                stream: if self.u.arbitrary()? {
                    Stream::Stdout
                } else {
                    Stream::Stderr
                },
                text: self.string()?,
                command: self.string()?,
            },
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

/// Every key and string value in `value`, depth first.
fn strings_in<'v>(value: &'v Value, out: &mut Vec<(Option<&'v str>, &'v str)>) {
    match value {
        Value::String(s) => out.push((None, s)),
        Value::Array(items) => items.iter().for_each(|v| strings_in(v, out)),
        Value::Object(map) => {
            for (k, v) in map {
                out.push((Some(k), k));
                match v {
                    // Tag the top-level string fields with their key.
                    Value::String(s) => out.push((Some(k), s)),
                    Value::Array(items) if items.iter().all(Value::is_string) => items
                        .iter()
                        .filter_map(Value::as_str)
                        .for_each(|s| out.push((Some(k), s))),
                    _ => strings_in(v, out),
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
    let mut generator = Gen {
        u: &mut u,
        budget: BUDGET,
    };
    let Ok(message) = generator.message() else {
        return;
    };
    let redactor = Redactor::new(&secrets);
    let frames = encode(&message, &redactor);

    // The text field an oversized message of this kind is split on.
    let split_field = match &message {
        OutboundMessage::AssistantMessage { .. } => Some("text_blocks"),
        OutboundMessage::CommandOutputMessage { .. } => Some("text"),
        _ => None,
    };
    let mut whole = serde_json::to_value(&message).unwrap();
    redactor.redact_json(&mut whole);
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
        let mut found = Vec::new();
        strings_in(&value, &mut found);
        for (key, s) in found {
            // A split piece may start or end inside a marker.
            let cut = split && key.is_some() && key == split_field && key != Some(s);
            if let Some((secret, at)) = common::unexplained_secret(s.as_bytes(), &secrets, cut) {
                panic!("secret {secret:?} in frame {n} at byte {at} of string {s:.200?}");
            }
            if cut || (split_field.is_some() && key == split_field && key != Some(s)) {
                pieces.push_str(s);
            }
        }
    }

    // Text preservation, unless redaction rewrote the protocol's own words
    // (a secret like `a` also turns `message_type` into `mess[REDACTED]ge_type`).
    let protocol_words = [
        "message_type",
        "assistant_message",
        "text_blocks",
        "command_output_message",
        "text",
        "command",
        "stream",
        "stdout",
        "stderr",
    ];
    let touched = secrets
        .iter()
        .any(|s| !s.is_empty() && protocol_words.iter().any(|w| w.contains(s.as_str())));
    if let (Some(field), false) = (split_field, touched) {
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

/// A short description of a possibly huge message.
fn message_summary(message: &OutboundMessage) -> String {
    let value = serde_json::to_value(message).unwrap();
    let mut out = String::from("{");
    if let Value::Object(map) = value {
        for (k, v) in map {
            let shown = match &v {
                Value::String(s) => format!("{} bytes: {:.60?}", s.len(), s),
                Value::Array(items) => format!("list of {}", items.len()),
                other => format!("{:.60}", other.to_string()),
            };
            out.push_str(&format!(" {k}: {shown};"));
        }
    }
    out + " }"
}
