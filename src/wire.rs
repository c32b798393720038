//! The WebSocket wire protocol spoken with `runtimeuse-client`.
//!
//! Inbound messages are parsed leniently (`null` is the same as an absent
//! field, unknown fields are ignored) because the Python client serialises
//! every unset optional as `null`. Outbound messages are built from typed
//! structs so a field name can never drift from what the client validates.
//! `protocol/wire.md` is the prose version of this file.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use crate::redact::Redactor;

/// Largest frame the runtime sends. The real client rejects frames over
/// 1 MiB (1,048,576 bytes) and drops the connection; this leaves headroom.
pub const MAX_OUTBOUND_FRAME_BYTES: usize = 1_000_000;

/// Deserialises a field where JSON `null` must mean "use the default".
fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// A shell command to run, as the client sends it.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct Command {
    /// Shell text, run as `/bin/sh -c <command>` in its own process group
    /// (through a private file when too long for the command line).
    pub command: String,
    /// Working directory, created if missing; `None` means the runtime's.
    #[serde(default)]
    pub cwd: Option<String>,
    /// Variables laid over the runtime's environment. Values of 8+
    /// characters are also redacted from this command's output.
    #[serde(default)]
    pub env: Option<BTreeMap<String, String>>,
}

/// A file to fetch into the sandbox before any command runs.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct Downloadable {
    /// `http` or `https` only; the saved file is named after the last path
    /// segment, and `.zip`/`.tar.gz`/`.tgz` are unpacked instead of kept.
    pub download_url: String,
    /// Directory to save (or unpack) into; created if missing.
    pub working_dir: String,
}

/// The fields shared by both request kinds that concern artifacts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ArtifactOptions {
    /// Directories to watch for the rest of the session; a non-empty list
    /// also makes the request flush artifacts before its terminal.
    pub artifacts_dirs: Vec<String>,
    /// Deprecated single-directory form, still sent by older clients.
    pub artifacts_dir: Option<String>,
    /// Gitignore-syntax rules pinned for these directories; `None` falls
    /// back to each directory's `.artifactignore`, then the built-in list.
    pub artifacts_ignore_content: Option<String>,
}

impl ArtifactOptions {
    /// Every directory to watch: `artifacts_dirs` plus the legacy field.
    pub fn all_dirs(&self) -> Vec<String> {
        let mut dirs = self.artifacts_dirs.clone();
        if let Some(dir) = &self.artifacts_dir
            && !dirs.contains(dir)
        {
            dirs.push(dir.clone());
        }
        dirs
    }
}

/// `invocation_message`: run the agent handler (with pre/post commands).
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct InvocationMessage {
    /// Client's opaque label for the request; used only in logs and passed
    /// on to the handler.
    #[serde(default)]
    pub source_id: Option<String>,
    /// Passed to the handler as is; empty when absent.
    #[serde(default, deserialize_with = "null_as_default")]
    pub system_prompt: String,
    /// The task for the agent; the only required field.
    pub user_prompt: String,
    /// Model identifier for the handler; may be empty (handler's default).
    #[serde(default, deserialize_with = "null_as_default")]
    pub model: String,
    /// Environment for what the handler runs. Not put in the handler's own
    /// process environment, because one warm handler serves many requests.
    #[serde(default, deserialize_with = "null_as_default")]
    pub agent_env: BTreeMap<String, String>,
    /// Values to replace with `[REDACTED]` in every outbound message; they
    /// accumulate for the rest of the session.
    #[serde(default, deserialize_with = "null_as_default")]
    pub secrets_to_redact: Vec<String>,
    /// JSON text asking for a structured result, either the wrapper
    /// `{"type":"json_schema","schema":{...}}` or a bare JSON Schema such
    /// as `{"type":"object"}`; `None` asks for text. Read through
    /// [`InvocationMessage::output_format`], before any work.
    #[serde(default)]
    pub output_format_json_schema_str: Option<String>,
    /// See [`ArtifactOptions::artifacts_dirs`].
    #[serde(default, deserialize_with = "null_as_default")]
    pub artifacts_dirs: Vec<String>,
    /// Deprecated single-directory form, still sent by older clients.
    #[serde(default)]
    pub artifacts_dir: Option<String>,
    /// See [`ArtifactOptions::artifacts_ignore_content`].
    #[serde(default)]
    pub artifacts_ignore_content: Option<String>,
    /// Run in order before the agent; a non-zero exit fails the request.
    #[serde(default, deserialize_with = "null_as_default")]
    pub pre_agent_invocation_commands: Vec<Command>,
    /// Run in order after the agent succeeds; a non-zero exit fails the
    /// request.
    #[serde(default, deserialize_with = "null_as_default")]
    pub post_agent_invocation_commands: Vec<Command>,
    /// Fetched in order before any command or the agent runs.
    #[serde(default, deserialize_with = "null_as_default")]
    pub pre_agent_downloadables: Vec<Downloadable>,
}

/// Why `output_format_json_schema_str` is unusable; the text goes to the
/// client.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("Invalid output_format_json_schema_str: {0}")]
pub struct OutputFormatError(String);

impl InvocationMessage {
    /// The requested output format in the one shape handlers get,
    /// `{"type":"json_schema","schema":{...}}`, or `None` for text.
    ///
    /// Clients send either that wrapper or a bare JSON Schema (the Node
    /// runtime accepted both). An object whose `type` is `"json_schema"`,
    /// or that has a `schema` and no `type`, is the wrapper and must carry
    /// a `schema` object; any other object is the schema itself and is
    /// wrapped, so a handler cannot tell which form the client used. The
    /// wrapper is passed on whole, its other keys included.
    pub fn output_format(&self) -> Result<Option<Value>, OutputFormatError> {
        let Some(raw) = self.output_format_json_schema_str.as_deref() else {
            return Ok(None);
        };
        let value: Value =
            serde_json::from_str(raw).map_err(|e| OutputFormatError(clip(&e.to_string())))?;
        let Value::Object(object) = value else {
            return Err(OutputFormatError("expected a JSON object".into()));
        };
        let is_wrapper = match object.get("type") {
            Some(kind) => kind == "json_schema",
            None => object.contains_key("schema"),
        };
        if !is_wrapper {
            return Ok(Some(
                serde_json::json!({"type": "json_schema", "schema": object}),
            ));
        }
        if !object.get("schema").is_some_and(Value::is_object) {
            return Err(OutputFormatError(
                "a {\"type\":\"json_schema\"} wrapper needs a \"schema\" object".into(),
            ));
        }
        // Kept whole (other keys included), as before bare schemas existed.
        let mut wrapper = object;
        wrapper.insert("type".into(), "json_schema".into());
        Ok(Some(Value::Object(wrapper)))
    }
}

/// Gathers the artifact fields (no `#[serde(flatten)]`: it would hide the
/// field path from error messages).
macro_rules! artifact_options {
    ($ty:ty) => {
        impl $ty {
            /// The request's artifact settings.
            pub fn artifacts(&self) -> ArtifactOptions {
                ArtifactOptions {
                    artifacts_dirs: self.artifacts_dirs.clone(),
                    artifacts_dir: self.artifacts_dir.clone(),
                    artifacts_ignore_content: self.artifacts_ignore_content.clone(),
                }
            }
        }
    };
}

artifact_options!(InvocationMessage);
artifact_options!(CommandExecutionMessage);

/// `command_execution_message`: run shell commands, no agent.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct CommandExecutionMessage {
    /// Client's opaque label for the request; used only in logs.
    #[serde(default)]
    pub source_id: Option<String>,
    /// Values to replace with `[REDACTED]` in every outbound message; they
    /// accumulate for the rest of the session.
    #[serde(default, deserialize_with = "null_as_default")]
    pub secrets_to_redact: Vec<String>,
    /// Run in order, stopping after the first non-zero exit.
    pub commands: Vec<Command>,
    /// See [`ArtifactOptions::artifacts_dirs`].
    #[serde(default, deserialize_with = "null_as_default")]
    pub artifacts_dirs: Vec<String>,
    /// Deprecated single-directory form, still sent by older clients.
    #[serde(default)]
    pub artifacts_dir: Option<String>,
    /// See [`ArtifactOptions::artifacts_ignore_content`].
    #[serde(default)]
    pub artifacts_ignore_content: Option<String>,
    /// Fetched in order before the first command runs.
    #[serde(default, deserialize_with = "null_as_default")]
    pub pre_execution_downloadables: Vec<Downloadable>,
}

/// `artifact_upload_response_message`: where to PUT an announced artifact.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct ArtifactUploadResponse {
    /// Echo of the announced base name; informational only.
    #[serde(default, deserialize_with = "null_as_default")]
    pub filename: String,
    /// Must be a path the runtime announced and still awaits an answer for,
    /// else the response is logged and ignored.
    pub filepath: String,
    /// Where the file is PUT. Contains credentials in its query, so it is
    /// never logged whole.
    pub presigned_url: String,
    /// Sent as the PUT's `Content-Type`; empty means no header.
    #[serde(default, deserialize_with = "null_as_default")]
    pub content_type: String,
}

/// Every message a client may send.
#[derive(Debug, Clone, PartialEq)]
pub enum InboundMessage {
    /// Start an agent request (boxed: it is much larger than the others).
    InvocationMessage(Box<InvocationMessage>),
    /// Start a shell-commands request.
    CommandExecutionMessage(CommandExecutionMessage),
    /// Upload target for a file the runtime announced.
    ArtifactUploadResponseMessage(ArtifactUploadResponse),
    /// Cancel the running request; ignored when nothing runs.
    CancelMessage,
    /// Finish the running request, flush artifacts, confirm and close.
    EndSessionMessage,
}

/// Why an inbound frame could not be understood; the text goes to the client.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ParseError {
    /// The frame is not JSON; holds the (clipped) parser error.
    #[error("Invalid message: not valid JSON ({0})")]
    NotJson(String),
    /// Valid JSON, but not an object with a string `message_type`.
    #[error("Invalid message: expected a JSON object with a string \"message_type\"")]
    NoMessageType,
    /// A `message_type` this runtime does not know (clipped).
    #[error("Invalid message: unknown message_type {0:?}")]
    UnknownType(String),
    /// A known message kind whose fields are missing or mistyped.
    #[error("Invalid {message_type}: {reason}")]
    BadFields {
        /// The kind that failed, e.g. `command_execution_message`.
        message_type: String,
        /// Offending field path and problem, clipped to stay small.
        reason: String,
    },
}

/// Deserialises one message kind straight from the frame's text, naming
/// the offending field on failure (e.g. `commands[0].env.A: invalid type:
/// integer `1`, expected a string`).
///
/// Straight from the text, not through a [`Value`]: building a `Value`
/// evaluates every number, and one out of `f64` range (`1e400`) in a field
/// the runtime does not even know would fail the whole message. Unknown
/// fields, at any depth, are skipped unevaluated by serde.
fn typed<T: serde::de::DeserializeOwned>(text: &str, message_type: &str) -> Result<T, ParseError> {
    let mut deserializer = serde_json::Deserializer::from_str(text);
    serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        let path = e.path().to_string();
        let inner = clip(&e.into_inner().to_string());
        ParseError::BadFields {
            message_type: message_type.to_owned(),
            reason: if path == "." {
                inner
            } else {
                format!("{path}: {inner}")
            },
        }
    })
}

/// The one field every frame is first read for; everything else is skipped
/// unevaluated (see [`typed`]). Only a JSON object has it: an array is not
/// read as a struct's fields in order, as serde would by default.
struct Envelope {
    /// Absent, `null` or not a string: the frame has no usable type.
    message_type: Option<Value>,
}

impl<'de> Deserialize<'de> for Envelope {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(EnvelopeVisitor)
    }
}

/// Reads an object's `message_type` (the first one) and skips the rest.
struct EnvelopeVisitor;

impl<'de> serde::de::Visitor<'de> for EnvelopeVisitor {
    type Value = Envelope;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Envelope, A::Error> {
        let mut message_type = None;
        while let Some(key) = map.next_key::<String>()? {
            if key == "message_type" && message_type.is_none() {
                message_type = Some(map.next_value::<Value>()?);
            } else {
                map.next_value::<serde::de::IgnoredAny>()?;
            }
        }
        Ok(Envelope { message_type })
    }
}

/// Reads a frame's `message_type`, telling "not JSON" from "JSON of the
/// wrong shape" (the client is told which).
fn message_type_of(text: &str) -> Result<String, ParseError> {
    match serde_json::from_str::<Envelope>(text) {
        Ok(Envelope {
            message_type: Some(Value::String(message_type)),
        }) => Ok(message_type),
        Ok(_) => Err(ParseError::NoMessageType),
        // Not an object, and the envelope stopped at its first byte: say
        // "not JSON" if the rest is not JSON either (unbalanced, or nested
        // past serde_json's recursion limit).
        Err(e) if e.is_data() => match serde_json::from_str::<Value>(text) {
            Ok(_) => Err(ParseError::NoMessageType),
            Err(e) => Err(ParseError::NotJson(clip(&e.to_string()))),
        },
        Err(e) => Err(ParseError::NotJson(clip(&e.to_string()))),
    }
}

/// Longest piece of client input quoted back in an error: a hostile 5 MB
/// field must not come back as a 5 MB error frame.
const MAX_QUOTED_BYTES: usize = 200;

/// Shortens client-supplied text for an error message.
fn clip(text: &str) -> String {
    crate::text::clip(text, MAX_QUOTED_BYTES).into_owned()
}

impl InboundMessage {
    /// Parses one text frame, naming exactly what is wrong when it fails.
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        let message_type = message_type_of(text)?;
        Ok(match message_type.as_str() {
            "invocation_message" => Self::InvocationMessage(Box::new(typed(text, &message_type)?)),
            "command_execution_message" => {
                Self::CommandExecutionMessage(typed(text, &message_type)?)
            }
            "artifact_upload_response_message" => {
                Self::ArtifactUploadResponseMessage(typed(text, &message_type)?)
            }
            "cancel_message" => Self::CancelMessage,
            "end_session_message" => Self::EndSessionMessage,
            _ => return Err(ParseError::UnknownType(clip(&message_type))),
        })
    }

    /// The request's `source_id`, for log spans.
    pub fn source_id(&self) -> Option<&str> {
        match self {
            Self::InvocationMessage(m) => m.source_id.as_deref(),
            Self::CommandExecutionMessage(m) => m.source_id.as_deref(),
            _ => None,
        }
    }
}

/// The payload of a `result_message`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ResultData {
    /// The answer when no output format was requested.
    Text {
        /// The agent's final answer.
        text: String,
    },
    /// The answer when `output_format_json_schema_str` was given.
    StructuredOutput {
        /// Always a JSON object (the handler protocol refuses anything else).
        structured_output: Map<String, Value>,
    },
}

/// One entry of `command_execution_result_message.results`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CommandResult {
    /// The command text as sent (redacted; clipped to 8 KiB when longer,
    /// so a huge script does not fill the result frame).
    pub command: String,
    /// The shell's exit status; 128+N when killed by signal N.
    pub exit_code: i32,
    /// Redacted stdout, trimmed to head and tail (see `--stdout-head-bytes`);
    /// the full output was streamed as `command_output_message`s.
    pub stdout: String,
}

/// Which pipe a `command_output_message` came from.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Stream {
    /// The command's standard output.
    Stdout,
    /// The command's standard error.
    Stderr,
}

/// Every message the runtime sends.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(tag = "message_type", rename_all = "snake_case")]
pub enum OutboundMessage {
    /// Terminal of a successful invocation.
    ResultMessage {
        /// The handler's answer.
        data: ResultData,
        /// Handler-supplied metadata, possibly empty.
        metadata: Map<String, Value>,
    },
    /// Terminal of a command execution, even when a command exited non-zero.
    CommandExecutionResultMessage {
        /// One entry per command that ran, in order.
        results: Vec<CommandResult>,
    },
    /// Terminal of any failed request, and the answer to bad input.
    ErrorMessage {
        /// Human-readable reason, shown to the client's user.
        error: String,
        /// Details such as `{command, exit_code}`; possibly empty.
        metadata: Map<String, Value>,
    },
    /// Streamed agent output; not terminal.
    AssistantMessage {
        /// Text the agent produced, in order.
        text_blocks: Vec<String>,
    },
    /// Streamed command output (at most 64 KiB of text each); not terminal.
    CommandOutputMessage {
        /// Which pipe the text came from.
        stream: Stream,
        /// Redacted output, decoded as UTF-8 (invalid bytes become U+FFFD).
        text: String,
        /// The command that printed it, as the client sent it (redacted;
        /// clipped to 8 KiB when longer).
        command: String,
    },
    /// Announces a finished artifact; the client answers with an
    /// `artifact_upload_response_message` carrying the same `filepath`.
    ArtifactUploadRequestMessage {
        /// Base name of the file.
        filename: String,
        /// Absolute canonical path; the key the answer must echo.
        filepath: String,
    },
    /// Liveness signal sent every `--heartbeat-interval` while a request runs.
    HeartbeatMessage {
        /// Current pipeline stage, e.g. `downloads`, `agent`, `artifacts`.
        phase: String,
        /// Milliseconds since the request started.
        elapsed_ms: u64,
    },
    /// Answer to `end_session_message`, sent after the artifact drain.
    EndSessionConfirmMessage,
}

impl OutboundMessage {
    /// An `error_message` with empty metadata.
    pub fn error(text: impl Into<String>) -> Self {
        Self::ErrorMessage {
            error: text.into(),
            metadata: Map::new(),
        }
    }

    /// A copy with every secret removed from what the message carries
    /// (texts, commands, paths, structured output and metadata, keys
    /// included), but never from the protocol's own field names and tags:
    /// a secret such as `message` must not turn `message_type` into
    /// something the client cannot parse.
    pub fn redacted(&self, redactor: &Redactor) -> Self {
        if redactor.is_empty() {
            return self.clone();
        }
        let text = |s: &String| redactor.redact_str(s).into_owned();
        let map = |m: &Map<String, Value>| {
            let mut value = Value::Object(m.clone());
            redactor.redact_json(&mut value);
            match value {
                Value::Object(m) => m,
                _ => Map::new(),
            }
        };
        match self {
            Self::ResultMessage { data, metadata } => Self::ResultMessage {
                data: match data {
                    ResultData::Text { text: t } => ResultData::Text { text: text(t) },
                    ResultData::StructuredOutput { structured_output } => {
                        ResultData::StructuredOutput {
                            structured_output: map(structured_output),
                        }
                    }
                },
                metadata: map(metadata),
            },
            Self::CommandExecutionResultMessage { results } => {
                Self::CommandExecutionResultMessage {
                    results: results
                        .iter()
                        .map(|r| CommandResult {
                            command: text(&r.command),
                            exit_code: r.exit_code,
                            stdout: text(&r.stdout),
                        })
                        .collect(),
                }
            }
            Self::ErrorMessage { error, metadata } => Self::ErrorMessage {
                error: text(error),
                metadata: map(metadata),
            },
            Self::AssistantMessage { text_blocks } => Self::AssistantMessage {
                text_blocks: text_blocks.iter().map(text).collect(),
            },
            Self::CommandOutputMessage {
                stream,
                text: t,
                command,
            } => Self::CommandOutputMessage {
                stream: *stream,
                text: text(t),
                command: text(command),
            },
            Self::ArtifactUploadRequestMessage { filename, filepath } => {
                Self::ArtifactUploadRequestMessage {
                    filename: text(filename),
                    filepath: text(filepath),
                }
            }
            Self::HeartbeatMessage { .. } | Self::EndSessionConfirmMessage => self.clone(),
        }
    }

    /// Whether the client treats this message as the end of a request.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            Self::ResultMessage { .. }
                | Self::CommandExecutionResultMessage { .. }
                | Self::ErrorMessage { .. }
        )
    }
}

#[cfg(test)]
mod tests;
