//! Shell commands: run one, stream its output, report how it ended.
//!
//! A command is `/bin/sh -c <command>` in its own process group, so a cancel
//! reaches everything it started. Its stdout and stderr are streamed as
//! `command_output_message`s while it runs ([`output`]): read in chunks of up
//! to 64 KiB, redacted as raw bytes (a secret split across reads is
//! still caught), then decoded as UTF-8 incrementally (a character split
//! across reads survives; invalid bytes become U+FFFD). Sending waits on the
//! bounded [`Outbox`] and the pipe is not read meanwhile, so a command that
//! prints faster than the client reads blocks on its full pipe instead of
//! growing the runtime's memory.
//!
//! The terminal result keeps only the head and tail of stdout ([`capture`],
//! sized by [`CommandContext::stdout_head_bytes`]), and
//! [`fit_results`](crate::frames::fit_results) shrinks a whole result set so
//! its frame fits the client's 1 MiB limit.
//!
//! A script over [`script::INLINE_SCRIPT_MAX_BYTES`] does not go on the command
//! line, where the kernel caps one argument at 128 KiB (E2BIG): it is
//! written to a private temporary file that the shell sources ([`script`]).
//!
//! This file spawns and supervises; [`output`] pumps the pipes,
//! [`capture`] keeps the head and tail, [`cwd`] checks the working
//! directory and [`script`] hands large scripts to the shell.

mod capture;
mod cwd;
mod output;
mod script;

use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::process::Child;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, warn};

use crate::containment::{SHELL_GATE, Scope};
use crate::outbox::Outbox;
use crate::process;
use crate::redact::{Redactor, env_secrets};
use crate::wire::{self, Stream};

use capture::Capture;
use output::Pump;
use script::Script;

/// Longest piece of a command quoted in anything the runtime sends (the
/// `command` of output messages and results, error texts): a 1 MiB heredoc
/// must not be echoed in every output chunk, nor make an error too big for
/// a frame.
pub(crate) const MAX_QUOTED_COMMAND_BYTES: usize = 8 * 1024;

/// How a command is quoted everywhere the runtime sends it: `redacted`
/// (the command with secrets already removed: clipping first could leave
/// half a secret) cut to [`MAX_QUOTED_COMMAND_BYTES`].
pub(crate) fn quoted_command(redacted: &str) -> String {
    crate::text::clip(redacted, MAX_QUOTED_COMMAND_BYTES).into_owned()
}

/// What a command needs from the request it belongs to.
pub(crate) struct CommandContext<'a> {
    /// Where `command_output_message`s go.
    pub(crate) outbox: &'a Outbox,
    /// The request's secrets.
    pub(crate) redactor: &'a Redactor,
    /// Fires when the request is cancelled.
    pub(crate) cancel: &'a CancellationToken,
    /// The request's processes: every command starts inside it.
    pub(crate) processes: &'a Scope,
    /// SIGTERM -> SIGKILL grace when the command's group is ended.
    pub(crate) kill_grace: Duration,
    /// Bytes of stdout kept from its start for the terminal result.
    pub(crate) stdout_head_bytes: usize,
    /// Bytes of stdout kept from its end for the terminal result.
    pub(crate) stdout_tail_bytes: usize,
}

/// How a command that ran to completion ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CommandOutcome {
    /// The shell's exit code; `128 + N` when killed by signal `N`.
    pub(crate) exit_code: i32,
    /// Redacted stdout, cut to head + marker + tail when it was too long.
    pub(crate) stdout: String,
    /// The command as quoted in its messages ([`quoted_command`]), for the
    /// result and error texts that name it.
    pub(crate) command: String,
}

/// Why a command did not produce a [`CommandOutcome`].
#[derive(Debug, thiserror::Error)]
pub(crate) enum CommandError {
    /// The request was cancelled; the command's process group is gone.
    #[error("Request cancelled")]
    Cancelled,
    /// The command never ran; `command` is already redacted and clipped.
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
pub(crate) async fn run_command(
    cmd: &wire::Command,
    ctx: &CommandContext<'_>,
) -> Result<CommandOutcome, CommandError> {
    run_with_base_env(cmd, ctx, BaseEnv::Inherited).await
}

/// The environment a command starts from, before its own `env`.
enum BaseEnv {
    /// The runtime's own. Left to the OS when nothing is laid over it:
    /// copying 40 variables into a map and back into C strings was a third
    /// of the runtime's instructions for a `true` command.
    Inherited,
    /// Exactly these variables (tests inject them).
    #[cfg(test)]
    Explicit(Vec<(std::ffi::OsString, std::ffi::OsString)>),
}

/// [`run_command`] from a given base environment.
async fn run_with_base_env(
    cmd: &wire::Command,
    ctx: &CommandContext<'_>,
    base_env: BaseEnv,
) -> Result<CommandOutcome, CommandError> {
    let redactor = ctx
        .redactor
        .with(env_secrets(cmd.env.iter().flat_map(|env| env.values())));
    let label = quoted_command(&redactor.redact_str(&cmd.command));
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
    /// The redacted, clipped command string, as sent in every message.
    label: &'a str,
}

impl Run<'_> {
    async fn execute(
        &self,
        cmd: &wire::Command,
        base_env: BaseEnv,
    ) -> Result<CommandOutcome, CommandError> {
        let cwd = cwd::prepare(cmd.cwd.as_deref())
            .await
            .map_err(|e| self.start_error(e.to_string()))?;
        // Held until the command is over: the shell reads it as it goes.
        let script = Script::prepare(&cmd.command)
            .await
            .map_err(|e| self.start_error(format!("cannot write the script to a file: {e}")))?;
        // A cancel that came first must not start anything.
        if self.ctx.cancel.is_cancelled() {
            return Err(CommandError::Cancelled);
        }
        let processes = self.ctx.processes;
        let gated = processes.gates_shells();
        let mut shell = shell_command(cmd, &script, cwd.as_deref(), base_env, gated);
        let spawned = if gated {
            processes.spawn_gated_shell(&mut shell)
        } else {
            processes.spawn(&mut shell)
        };
        let (mut child, _ticket) =
            spawned.map_err(|e| self.start_error(spawn_failure(e, cwd.as_deref())))?;
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
                // Then whatever left the group (setsid, setpgid).
                self.ctx.processes.kill().await;
            }
        }
        guard.disarm();
        drop(script);
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
            command: self.label.to_owned(),
        })
    }

    fn pump(&self, stream: Stream, capture: Option<Capture>) -> Pump<'_> {
        Pump::new(stream, self.label, self.ctx.outbox, self.redactor, capture)
    }
}

/// Why the shell did not start, blaming what is at fault: with a `cwd`,
/// the child's `chdir` failing (the directory vanished or may not be
/// entered) reports the same errors as a missing or unusable shell would.
fn spawn_failure(error: io::Error, cwd: Option<&Path>) -> String {
    cwd.filter(|_| Path::new("/bin/sh").is_file())
        .and_then(|cwd| cwd::entry_failure(cwd, &error))
        .map_or_else(
            || format!("cannot spawn /bin/sh: {error}"),
            |e| e.to_string(),
        )
}

/// `/bin/sh -c <script>` in a new process group, environment = the base
/// environment with the command's `env` laid over it, minus the runtime's
/// auth token. `gated`: the script waits for stdin to close first (see
/// [`Scope::spawn_gated_shell`]).
fn shell_command(
    cmd: &wire::Command,
    script: &Script,
    cwd: Option<&Path>,
    base_env: BaseEnv,
    gated: bool,
) -> tokio::process::Command {
    let mut shell = tokio::process::Command::new("/bin/sh");
    match base_env {
        BaseEnv::Inherited => {}
        #[cfg(test)]
        BaseEnv::Explicit(vars) => {
            shell.env_clear().envs(vars);
        }
    }
    shell.arg("-c");
    let argument = script.argument(&cmd.command);
    if gated {
        let mut gated_argument = std::ffi::OsString::from(SHELL_GATE);
        gated_argument.push(argument);
        shell.arg(gated_argument).stdin(Stdio::piped());
    } else {
        shell.arg(argument).stdin(Stdio::null());
    }
    shell
        .envs(cmd.env.iter().flatten())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Last resort if this future is dropped mid-run: the leader is
        // killed and reaped by tokio; `GroupGuard` takes care of the rest.
        .kill_on_drop(true);
    if process::would_inherit_credentials(&shell) {
        process::without_runtime_credentials(&mut shell);
    }
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

#[cfg(test)]
mod tests;
