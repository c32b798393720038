//! STUB (replaced by the commands branch).
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::outbox::Outbox;
use crate::redact::Redactor;
use crate::wire;

pub struct CommandContext<'a> {
    pub outbox: &'a Outbox,
    pub redactor: &'a Redactor,
    pub cancel: &'a CancellationToken,
    pub kill_grace: Duration,
    pub stdout_head_bytes: usize,
    pub stdout_tail_bytes: usize,
}
pub struct CommandOutcome {
    pub exit_code: i32,
    pub stdout: String,
}
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("Request cancelled")]
    Cancelled,
    #[error("Command `{command}` could not start: {reason}")]
    Start { command: String, reason: String },
    #[error("the client connection is closed")]
    ClientGone,
}
pub async fn run_command(
    cmd: &wire::Command,
    _ctx: &CommandContext<'_>,
) -> Result<CommandOutcome, CommandError> {
    let out = tokio::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(&cmd.command)
        .output()
        .await
        .map_err(|e| CommandError::Start {
            command: cmd.command.clone(),
            reason: e.to_string(),
        })?;
    Ok(CommandOutcome {
        exit_code: out.status.code().unwrap_or(1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
    })
}
pub fn fit_results(_results: &mut [wire::CommandResult], _max_frame_bytes: usize) {}
