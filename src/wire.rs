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
    pub command: String,
    #[serde(default)]
    pub cwd: Option<String>,
    #[serde(default)]
    pub env: Option<BTreeMap<String, String>>,
}

/// A file to fetch into the sandbox before any command runs.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct Downloadable {
    pub download_url: String,
    pub working_dir: String,
}

/// The fields shared by both request kinds that concern artifacts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ArtifactOptions {
    pub artifacts_dirs: Vec<String>,
    /// Deprecated single-directory form, still sent by older clients.
    pub artifacts_dir: Option<String>,
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
    #[serde(default)]
    pub source_id: Option<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub system_prompt: String,
    pub user_prompt: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub model: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub agent_env: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub secrets_to_redact: Vec<String>,
    #[serde(default)]
    pub output_format_json_schema_str: Option<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub artifacts_dirs: Vec<String>,
    /// Deprecated single-directory form, still sent by older clients.
    #[serde(default)]
    pub artifacts_dir: Option<String>,
    #[serde(default)]
    pub artifacts_ignore_content: Option<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub pre_agent_invocation_commands: Vec<Command>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub post_agent_invocation_commands: Vec<Command>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub pre_agent_downloadables: Vec<Downloadable>,
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
    #[serde(default)]
    pub source_id: Option<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub secrets_to_redact: Vec<String>,
    pub commands: Vec<Command>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub artifacts_dirs: Vec<String>,
    /// Deprecated single-directory form, still sent by older clients.
    #[serde(default)]
    pub artifacts_dir: Option<String>,
    #[serde(default)]
    pub artifacts_ignore_content: Option<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub pre_execution_downloadables: Vec<Downloadable>,
}

/// `artifact_upload_response_message`: where to PUT an announced artifact.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct ArtifactUploadResponse {
    #[serde(default, deserialize_with = "null_as_default")]
    pub filename: String,
    pub filepath: String,
    pub presigned_url: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub content_type: String,
}

/// Every message a client may send.
#[derive(Debug, Clone, PartialEq)]
pub enum InboundMessage {
    InvocationMessage(Box<InvocationMessage>),
    CommandExecutionMessage(CommandExecutionMessage),
    ArtifactUploadResponseMessage(ArtifactUploadResponse),
    CancelMessage,
    EndSessionMessage,
}

/// Why an inbound frame could not be understood; the text goes to the client.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ParseError {
    #[error("Invalid message: not valid JSON ({0})")]
    NotJson(String),
    #[error("Invalid message: expected a JSON object with a string \"message_type\"")]
    NoMessageType,
    #[error("Invalid message: unknown message_type {0:?}")]
    UnknownType(String),
    #[error("Invalid {message_type}: {reason}")]
    BadFields {
        message_type: String,
        reason: String,
    },
}

/// Deserialises one message kind, naming the offending field on failure
/// (e.g. `commands[0].env.A: invalid type: integer `1`, expected a string`).
fn typed<T: serde::de::DeserializeOwned>(value: Value) -> Result<T, ParseError> {
    let message_type = value["message_type"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = clip(&e.into_inner().to_string());
        ParseError::BadFields {
            message_type,
            reason: if path == "." {
                inner
            } else {
                format!("{path}: {inner}")
            },
        }
    })
}

/// Longest piece of client input quoted back in an error: a hostile 5 MB
/// field must not come back as a 5 MB error frame.
const MAX_QUOTED_BYTES: usize = 200;

/// Shortens client-supplied text for an error message.
fn clip(text: &str) -> String {
    if text.len() <= MAX_QUOTED_BYTES {
        return text.to_owned();
    }
    let mut end = MAX_QUOTED_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &text[..end], text.len())
}

const KNOWN_TYPES: [&str; 5] = [
    "invocation_message",
    "command_execution_message",
    "artifact_upload_response_message",
    "cancel_message",
    "end_session_message",
];

impl InboundMessage {
    /// Parses one text frame, naming exactly what is wrong when it fails.
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        let value: Value =
            serde_json::from_str(text).map_err(|e| ParseError::NotJson(clip(&e.to_string())))?;
        let message_type = value
            .get("message_type")
            .and_then(Value::as_str)
            .ok_or(ParseError::NoMessageType)?;
        if !KNOWN_TYPES.contains(&message_type) {
            return Err(ParseError::UnknownType(clip(message_type)));
        }
        Ok(match message_type {
            "invocation_message" => Self::InvocationMessage(Box::new(typed(value)?)),
            "command_execution_message" => Self::CommandExecutionMessage(typed(value)?),
            "artifact_upload_response_message" => {
                Self::ArtifactUploadResponseMessage(typed(value)?)
            }
            "cancel_message" => Self::CancelMessage,
            _ => Self::EndSessionMessage,
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
    Text {
        text: String,
    },
    StructuredOutput {
        structured_output: Map<String, Value>,
    },
}

/// One entry of `command_execution_result_message.results`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CommandResult {
    pub command: String,
    pub exit_code: i32,
    pub stdout: String,
}

/// Which pipe a `command_output_message` came from.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Every message the runtime sends.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(tag = "message_type", rename_all = "snake_case")]
pub enum OutboundMessage {
    ResultMessage {
        data: ResultData,
        metadata: Map<String, Value>,
    },
    CommandExecutionResultMessage {
        results: Vec<CommandResult>,
    },
    ErrorMessage {
        error: String,
        metadata: Map<String, Value>,
    },
    AssistantMessage {
        text_blocks: Vec<String>,
    },
    CommandOutputMessage {
        stream: Stream,
        text: String,
        command: String,
    },
    ArtifactUploadRequestMessage {
        filename: String,
        filepath: String,
    },
    HeartbeatMessage {
        phase: String,
        elapsed_ms: u64,
    },
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
mod tests {
    use super::*;

    #[test]
    fn nulls_are_absent_fields() {
        let msg = InboundMessage::parse(
            r#"{"message_type":"invocation_message","source_id":null,"system_prompt":"s",
            "user_prompt":"u","model":"m","agent_env":null,"secrets_to_redact":null,
            "output_format_json_schema_str":null,"artifacts_dirs":null,"artifacts_dir":null,
            "artifacts_ignore_content":null,"pre_agent_invocation_commands":null,
            "post_agent_invocation_commands":null,"pre_agent_downloadables":null}"#,
        )
        .unwrap();
        let InboundMessage::InvocationMessage(inv) = msg else {
            panic!("wrong variant")
        };
        assert_eq!(inv.user_prompt, "u");
        assert!(inv.secrets_to_redact.is_empty());
        assert!(inv.artifacts().all_dirs().is_empty());
    }

    #[test]
    fn command_env_null_is_none() {
        let msg = InboundMessage::parse(
            r#"{"message_type":"command_execution_message","secrets_to_redact":[],
            "commands":[{"command":"true","cwd":null,"env":null}]}"#,
        )
        .unwrap();
        let InboundMessage::CommandExecutionMessage(m) = msg else {
            panic!("wrong variant")
        };
        assert_eq!(m.commands[0].env, None);
    }

    #[test]
    fn errors_name_the_problem() {
        assert!(matches!(
            InboundMessage::parse("{"),
            Err(ParseError::NotJson(_))
        ));
        assert_eq!(InboundMessage::parse("[1]"), Err(ParseError::NoMessageType));
        assert_eq!(
            InboundMessage::parse(r#"{"message_type":"bogus"}"#),
            Err(ParseError::UnknownType("bogus".into()))
        );
        let err = InboundMessage::parse(r#"{"message_type":"command_execution_message"}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing field `commands`"), "{err}");
    }

    #[test]
    fn errors_name_the_field_and_never_echo_huge_input() {
        let err = InboundMessage::parse(
            r#"{"message_type":"invocation_message","user_prompt":"u","system_prompt":5}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("system_prompt"), "{err}");
        let huge = format!(r#"{{"message_type":"{}"}}"#, "x".repeat(1_000_000));
        let err = InboundMessage::parse(&huge).unwrap_err().to_string();
        assert!(err.len() < 400, "{}", err.len());
        let err = InboundMessage::parse(&format!(
            r#"{{"message_type":"command_execution_message","commands":[{{"command":"{}","env":{{"A":1}}}}]}}"#,
            "y".repeat(1_000_000)
        ))
        .unwrap_err()
        .to_string();
        assert!(
            err.len() < 400 && err.contains("commands[0].env.A"),
            "{err}"
        );
    }

    #[test]
    fn legacy_artifacts_dir_joins_the_list() {
        let opts = ArtifactOptions {
            artifacts_dirs: vec!["/a".into()],
            artifacts_dir: Some("/b".into()),
            artifacts_ignore_content: None,
        };
        assert_eq!(opts.all_dirs(), vec!["/a".to_string(), "/b".to_string()]);
    }

    #[test]
    fn outbound_shapes_match_the_client() {
        let v = serde_json::to_value(OutboundMessage::ResultMessage {
            data: ResultData::Text { text: "hi".into() },
            metadata: Map::new(),
        })
        .unwrap();
        assert_eq!(
            v,
            serde_json::json!({"message_type":"result_message",
                "data":{"type":"text","text":"hi"},"metadata":{}})
        );
        let v = serde_json::to_value(OutboundMessage::EndSessionConfirmMessage).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"message_type":"end_session_confirm_message"})
        );
    }
}
