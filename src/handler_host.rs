//! STUB (replaced by the handler branch).
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

use crate::config::AgentSource;
use crate::outbox::Outbox;
use crate::redact::Redactor;
use crate::wire;

pub struct HandlerCommand {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub display: String,
}
pub fn resolve(_agent: &AgentSource) -> Result<HandlerCommand, HandlerError> {
    Err(HandlerError::Failed("stub".into()))
}
pub struct Invocation {
    pub id: String,
    pub source_id: Option<String>,
    pub system_prompt: String,
    pub user_prompt: String,
    pub model: String,
    pub output_format: Option<Value>,
    pub env: BTreeMap<String, String>,
    pub secrets: Vec<String>,
}
pub struct InvokeContext<'a> {
    pub outbox: &'a Outbox,
    pub redactor: &'a Redactor,
    pub cancel: &'a CancellationToken,
    pub cancel_grace: Duration,
    pub kill_grace: Duration,
}
pub struct AgentOutput {
    pub data: wire::ResultData,
    pub metadata: Map<String, Value>,
}
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    #[error("Request cancelled")]
    Cancelled,
    #[error("{error}")]
    Reported {
        error: String,
        metadata: Map<String, Value>,
    },
    #[error("{0}")]
    Failed(String),
    #[error("the client connection is closed")]
    ClientGone,
}
pub struct HandlerHost {
    _command: Arc<HandlerCommand>,
}
impl HandlerHost {
    pub fn new(command: Arc<HandlerCommand>) -> Self {
        Self { _command: command }
    }
    pub async fn invoke(
        &mut self,
        inv: &Invocation,
        _ctx: &InvokeContext<'_>,
    ) -> Result<AgentOutput, HandlerError> {
        Ok(AgentOutput {
            data: wire::ResultData::Text {
                text: inv.user_prompt.clone(),
            },
            metadata: Map::new(),
        })
    }
    pub async fn shutdown(&mut self, _grace: Duration) {}
}
