//! The handler protocol's lines (`protocol/handler-protocol.md`): what the
//! runtime writes to a handler's stdin (`invoke`, `cancel`) and what a
//! handler's stdout messages mean.
//!
//! Handlers are written by users in any language, so parsing is strict
//! about what the runtime relies on (a string `type`, the shape of a
//! terminal) and says exactly what was wrong, and lenient about the rest
//! (unknown types and extra fields are ignored, for forward compatibility).
//! Nothing here does I/O or redacts: [`HandlerMessage`] is the handler's
//! words as sent, and [`Terminal::into_outcome`] redacts a terminal
//! on its way out.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::redact::Redactor;
use crate::wire::ResultData;

use super::{AgentOutput, HandlerError};

/// The handler protocol version sent in every `invoke`.
pub(crate) const PROTOCOL_VERSION: u32 = 1;

/// One agent invocation, as sent to the handler.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Invocation {
    /// Opaque id chosen by the runtime; the handler echoes it back.
    pub(crate) id: String,
    /// The client's label for the request, for the handler's logs.
    pub(crate) source_id: Option<String>,
    /// The client's system prompt; empty when it sent none.
    pub(crate) system_prompt: String,
    /// The task for the agent.
    pub(crate) user_prompt: String,
    /// Model identifier; empty means the handler's default.
    pub(crate) model: String,
    /// `{"type":"json_schema","schema":{..}}` when the client asked for one.
    pub(crate) output_format: Option<Value>,
    /// The invocation's `agent_env`: the handler applies it to what it runs.
    pub(crate) env: BTreeMap<String, String>,
    /// Values the handler should keep out of its own logs.
    pub(crate) secrets: Vec<String>,
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

/// The `invoke` line for `inv`, newline included.
pub(crate) fn invoke_line(inv: &Invocation) -> Vec<u8> {
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

/// The `cancel` line for invocation `id`, newline included.
pub(crate) fn cancel_line(id: &str) -> Vec<u8> {
    let mut line =
        serde_json::to_vec(&CancelLine { kind: "cancel", id }).expect("a string always serialises");
    line.push(b'\n');
    line
}

/// Whether a message belongs to invocation `id`. A message without an id
/// (or with `null`) belongs to the current one; any other id marks a stale
/// message from an earlier invocation.
pub(crate) fn is_for(map: &Map<String, Value>, id: &str) -> bool {
    match map.get("id") {
        None | Some(Value::Null) => true,
        Some(Value::String(own)) => own == id,
        Some(_) => false,
    }
}

/// A message from the handler's stdout (other than `log`, which the pipe
/// reader logs on the spot), as the handler sent it: not yet redacted.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum HandlerMessage {
    /// `assistant`: text to stream to the client as `assistant_message`.
    Assistant {
        /// `text_blocks`, or `[text]` for the single-text form.
        text_blocks: Vec<String>,
    },
    /// `result` or `error`: the invocation is over.
    Terminal(Terminal),
    /// A type this runtime does not know (a newer handler): ignored.
    Unknown(String),
}

/// The message that ends an invocation.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Terminal {
    /// `result`: the invocation succeeded.
    Result {
        /// Text, or a structured-output object.
        data: ResultData,
        /// The handler's metadata; `{}` when it sent none.
        metadata: Map<String, Value>,
    },
    /// `error`: the invocation failed, in the handler's words.
    Error {
        /// The handler's error text.
        error: String,
        /// The handler's metadata; `{}` when it sent none.
        metadata: Map<String, Value>,
    },
}

/// A message that breaks the protocol. `what` completes "agent handler X
/// ..." in the error the client gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Violation {
    pub(crate) what: String,
    /// The message was a `result` or `error`: while a cancel is pending it
    /// only means the handler stopped, badly worded.
    pub(crate) in_terminal: bool,
}

impl HandlerMessage {
    /// Reads a handler's JSON object into a message.
    pub(crate) fn parse(mut map: Map<String, Value>) -> Result<Self, Violation> {
        let Some(Value::String(kind)) = map.remove("type") else {
            return Err(violation(
                "wrote a message without a string \"type\"",
                false,
            ));
        };
        match kind.as_str() {
            "assistant" => assistant_blocks(&map)
                .map(|text_blocks| Self::Assistant { text_blocks })
                .map_err(|what| violation(&what, false)),
            "result" | "error" => terminal(&kind, map)
                .map(Self::Terminal)
                .map_err(|what| violation(&what, true)),
            _ => Ok(Self::Unknown(kind)),
        }
    }
}

impl Terminal {
    /// The invocation's outcome, redacted.
    pub(crate) fn into_outcome(self, redactor: &Redactor) -> Result<AgentOutput, HandlerError> {
        match self {
            Self::Result { data, metadata } => Ok(AgentOutput {
                data: match data {
                    ResultData::Text { text } => ResultData::Text {
                        text: redactor.redact_str(&text).into_owned(),
                    },
                    ResultData::StructuredOutput { structured_output } => {
                        ResultData::StructuredOutput {
                            structured_output: redact_map(redactor, structured_output),
                        }
                    }
                },
                metadata: redact_map(redactor, metadata),
            }),
            Self::Error { error, metadata } => Err(HandlerError::Reported {
                error: redactor.redact_str(&error).into_owned(),
                metadata: redact_map(redactor, metadata),
            }),
        }
    }
}

fn violation(what: &str, in_terminal: bool) -> Violation {
    Violation {
        what: what.to_owned(),
        in_terminal,
    }
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

/// Reads a `result`/`error` message; `Err` says how it breaks the protocol.
fn terminal(kind: &str, mut map: Map<String, Value>) -> Result<Terminal, String> {
    let metadata = match map.remove("metadata") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m,
        Some(other) => {
            return Err(format!(
                "sent a {kind} whose \"metadata\" is {}, not an object",
                json_kind(&other)
            ));
        }
    };
    if kind == "error" {
        return match map.remove("error") {
            Some(Value::String(error)) => Ok(Terminal::Error { error, metadata }),
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
        (Some(Value::Object(structured_output)), None) => {
            ResultData::StructuredOutput { structured_output }
        }
        (Some(other), None) => {
            return Err(format!(
                "sent a result whose \"structured_output\" is {}; it must be a JSON object",
                json_kind(&other)
            ));
        }
        (None, Some(Value::String(text))) => ResultData::Text { text },
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
    Ok(Terminal::Result { data, metadata })
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
