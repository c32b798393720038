//! One running handler process: its process group, its pipes and the
//! tasks reading them, and every way of ending it.
//!
//! Starting a process is separate from driving invocations on it, so a
//! process can be started before anyone needs it and handed to a session
//! later (a pool of spare processes, say). Whatever way a
//! process ends (crash, protocol error, cancel timeout, shutdown, drop),
//! its whole process group goes with it, so nothing a handler started
//! outlives it.

use std::os::fd::AsRawFd;
use std::process::ExitStatus;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::process::{Child, ChildStdin};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

use crate::containment::{ChildTicket, Scope};
use crate::process;
use crate::redact::Redactor;

use super::pipes::{self, Event, SharedRedactor, StderrTail};
use super::{HandlerCommand, HandlerError};

/// After stdout closed, how long the leader gets to exit on its own (so the
/// report can give its real exit status) before its group is terminated.
const EXIT_WAIT: Duration = Duration::from_secs(1);
/// How long the stderr reader gets to deliver the last lines once the group
/// is gone (something outside the group may still hold the pipe).
const STDERR_DRAIN: Duration = Duration::from_secs(1);
/// Messages buffered from the handler's stdout before it is pushed back on.
const EVENT_QUEUE: usize = 64;

/// A spawned handler process, idle or serving an invocation.
pub(crate) struct HandlerProcess {
    command: Arc<HandlerCommand>,
    pub(super) child: Child,
    pgid: u32,
    /// `None` once closed for shutdown.
    stdin: Option<ChildStdin>,
    /// Parsed stdout lines; closed at EOF.
    pub(super) events: mpsc::Receiver<Event>,
    stdout_task: JoinHandle<()>,
    /// Fired when the stdout reader stops (EOF, a read error, a protocol
    /// violation): the process can answer no more invocations.
    stdout_done: CancellationToken,
    stderr_task: JoinHandle<()>,
    stderr_tail: StderrTail,
    /// The secrets of the invocation in progress, for the pipe tasks.
    redactor: SharedRedactor,
    max_line: usize,
    /// The group has been terminated: nothing to signal on drop (its id
    /// may belong to someone else by now).
    ended: bool,
    /// Everything the handler started, even outside its group; killed when
    /// the process is ended (dropping it kills too).
    processes: Scope,
    /// Keeps the subreaper from reaping the leader under tokio.
    _ticket: ChildTicket,
}

impl HandlerProcess {
    /// Starts `command` with its pipes read by background tasks. The
    /// process waits for its first `invoke`; `redactor` covers what it logs
    /// until then and the spawn error, if any.
    pub(crate) fn spawn(
        command: Arc<HandlerCommand>,
        max_line: usize,
        redactor: Redactor,
        processes: Scope,
    ) -> Result<Self, HandlerError> {
        let (mut child, ticket) =
            processes
                .spawn(&mut command.to_process_command())
                .map_err(|e| {
                    HandlerError::Failed(redactor.redact_str(&command.spawn_error(&e)).into_owned())
                })?;
        let pgid = child.id().expect("a just-spawned child has a pid");
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            unreachable!("all three pipes were requested");
        };
        let redactor = SharedRedactor::new(redactor.into());
        let (tx, events) = mpsc::channel(EVENT_QUEUE);
        let stdout_done = CancellationToken::new();
        let done_when_dropped = stdout_done.clone().drop_guard();
        let reader = pipes::read_stdout(stdout, tx, max_line, redactor.clone(), pgid);
        let stdout_task = tokio::spawn(async move {
            let _done = done_when_dropped;
            reader.await;
        });
        let stderr_tail = StderrTail::default();
        let stderr_task = tokio::spawn(pipes::read_stderr(
            stderr,
            redactor.clone(),
            stderr_tail.clone(),
            pgid,
        ));
        tracing::debug!(target: "handler", pid = pgid, handler = %command.display, "started agent handler");
        Ok(Self {
            command,
            child,
            pgid,
            stdin: Some(stdin),
            events,
            stdout_task,
            stdout_done,
            stderr_task,
            stderr_tail,
            redactor,
            max_line,
            ended: false,
            processes,
            _ticket: ticket,
        })
    }

    /// The process id, which is also its process group id.
    pub(crate) fn pid(&self) -> u32 {
        self.pgid
    }

    /// Fires once the process can answer no more invocations (its stdout
    /// reader stopped), so an idle process can be watched without
    /// borrowing it.
    pub(crate) fn stdout_done(&self) -> CancellationToken {
        self.stdout_done.clone()
    }

    /// The longest stdout line this process may write.
    pub(crate) fn max_line(&self) -> usize {
        self.max_line
    }

    /// Switches what the pipe tasks redact to the next invocation's secrets.
    pub(crate) fn set_redactor(&self, redactor: Redactor) {
        *self
            .redactor
            .write()
            .unwrap_or_else(PoisonError::into_inner) = redactor;
    }

    /// Writes to the handler's stdin.
    pub(crate) async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self.stdin.as_mut() {
            Some(stdin) => stdin.write_all(bytes).await,
            None => Err(std::io::ErrorKind::BrokenPipe.into()),
        }
    }

    /// Bytes written to the handler's stdin that it has not read yet (Linux:
    /// FIONREAD works on either end of a pipe).
    pub(crate) fn unread_bytes(&self) -> Option<usize> {
        let stdin = self.stdin.as_ref()?;
        let mut n: nix::libc::c_int = 0;
        // SAFETY: FIONREAD writes one c_int through the pointer, which is valid.
        let rc = unsafe { nix::libc::ioctl(stdin.as_raw_fd(), nix::libc::FIONREAD, &mut n) };
        (rc == 0).then(|| usize::try_from(n).unwrap_or(0))
    }

    /// Between invocations: drops what the handler wrote after its last
    /// terminal, and says whether it can take another invocation (it is
    /// alive and has not broken the protocol since).
    pub(crate) fn is_usable(&mut self) -> bool {
        if self.ended {
            return false;
        }
        loop {
            match self.events.try_recv() {
                Ok(Event::Message(m)) => {
                    let kind = m.get("type").and_then(Value::as_str).unwrap_or("?");
                    tracing::debug!(target: "handler", pid = self.pgid, kind,
                        "dropping a message sent after the invocation's terminal");
                }
                Ok(other) => {
                    tracing::warn!(target: "handler", pid = self.pgid,
                        "handler broke the protocol between invocations ({other:?}); replacing it");
                    return false;
                }
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => return false,
            }
        }
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Whether [`end`](Self::end) has run: the process must be replaced.
    pub(crate) fn has_ended(&self) -> bool {
        self.ended
    }

    /// Terminates the whole group; returns the exit status if known.
    pub(crate) async fn end(&mut self, kill_grace: Duration) -> Option<ExitStatus> {
        if self.ended {
            return self.child.try_wait().ok().flatten();
        }
        process::terminate_group(&mut self.child, kill_grace).await;
        self.finish(kill_grace).await;
        self.child.try_wait().ok().flatten()
    }

    /// Closes the handler's stdin, gives it `grace` to exit, then terminates
    /// its process group. Nothing it started is left running. Returns
    /// whether the handler exited by itself within `grace`.
    pub(crate) async fn shutdown(mut self, grace: Duration) -> bool {
        if self.ended {
            return true;
        }
        drop(self.stdin.take());
        let exited = timeout(grace, self.child.wait()).await.is_ok();
        process::terminate_group(&mut self.child, grace).await;
        self.finish(grace).await;
        exited
    }

    /// After the leader is gone: the group's remnants, whatever left the
    /// group, then the readers.
    async fn finish(&mut self, grace: Duration) {
        process::kill_group_remnants(self.pgid, grace).await;
        self.processes.kill().await;
        self.ended = true;
        self.stdout_task.abort();
        if timeout(STDERR_DRAIN, &mut self.stderr_task).await.is_err() {
            self.stderr_task.abort();
        }
    }

    /// Ends the handler after it closed stdout (or its stdin) before the
    /// terminal, and describes what happened.
    pub(crate) async fn crashed(
        &mut self,
        kill_grace: Duration,
        redactor: &Redactor,
    ) -> HandlerError {
        let how = match self.end_after_exit(kill_grace).await {
            Ended::Exited(status) => format!("exited before sending a result ({status})"),
            Ended::Terminated(status) => {
                format!("closed its stdout without sending a result and was terminated ({status})")
            }
            Ended::Unknown => "stopped before sending a result".to_owned(),
        };
        let text = format!("agent handler {} {how}", self.command.display);
        HandlerError::Failed(
            redactor
                .redact_str(&self.with_stderr_tail(text))
                .into_owned(),
        )
    }

    /// Ends a process that stopped answering while nobody was using it (a
    /// spare), and says how it went: exit status and last stderr lines.
    pub(crate) async fn exit_report(&mut self, kill_grace: Duration) -> String {
        let how = match self.end_after_exit(kill_grace).await {
            Ended::Exited(status) => status.to_string(),
            Ended::Terminated(status) => format!("closed its stdout; terminated ({status})"),
            Ended::Unknown => "stopped".to_owned(),
        };
        self.with_stderr_tail(how)
    }

    /// Gives the leader [`EXIT_WAIT`] to exit on its own, then ends the
    /// group.
    async fn end_after_exit(&mut self, kill_grace: Duration) -> Ended {
        let natural = timeout(EXIT_WAIT, self.child.wait()).await.ok();
        let status = self.end(kill_grace).await;
        match (natural, status) {
            (Some(Ok(status)), _) => Ended::Exited(status),
            (_, Some(status)) => Ended::Terminated(status),
            _ => Ended::Unknown,
        }
    }

    /// `text`, followed by the last stderr lines if there are any.
    fn with_stderr_tail(&self, mut text: String) -> String {
        let tail = self
            .stderr_tail
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if !tail.is_empty() {
            text.push_str("; last stderr lines:\n");
            text.push_str(&tail.iter().cloned().collect::<Vec<_>>().join("\n"));
        }
        text
    }

    /// Ends the handler for breaking the protocol.
    pub(crate) async fn broke_protocol(
        &mut self,
        what: &str,
        kill_grace: Duration,
        redactor: &Redactor,
    ) -> HandlerError {
        self.end(kill_grace).await;
        let text = format!("agent handler {} {what}", self.command.display);
        HandlerError::Failed(redactor.redact_str(&text).into_owned())
    }
}

/// How a process that stopped answering ended.
enum Ended {
    /// It exited on its own, with this status.
    Exited(ExitStatus),
    /// It was terminated after the wait, with this status.
    Terminated(ExitStatus),
    /// Its status could not be read.
    Unknown,
}

impl Drop for HandlerProcess {
    fn drop(&mut self) {
        if !self.ended {
            // The leader is unreaped (running or a zombie), so the group id
            // is still ours. kill_on_drop reaps the leader afterwards.
            process::signal_group(self.pgid, nix::sys::signal::Signal::SIGKILL);
        }
        self.stdout_task.abort();
        self.stderr_task.abort();
    }
}
