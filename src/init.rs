//! PID 1 duty: reaping orphans when the runtime is a container's init.
//!
//! A sandbox image often starts `runtimeuse` as PID 1. Every process
//! orphaned inside the container (a background job of a finished command
//! that exits later, a grandchild of a killed tree) is then reparented to
//! the runtime, and unless something reaps it, it stays a zombie forever:
//! pids leak over a long session. Reaping "any child" in the server itself
//! would race with tokio, which waits for the children it spawned by pid.
//! So, like `tini`, PID 1 forks: the child runs the server; the parent only
//! forwards signals to it and reaps whatever dies, then exits with the
//! server's status.

use std::sync::atomic::{AtomicI32, Ordering};

use nix::errno::Errno;
use nix::libc;
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork};

/// The server's pid, for the signal handler (which may only touch atomics).
static SERVER: AtomicI32 = AtomicI32::new(0);

/// Signals a container runtime sends to PID 1 that belong to the server.
const FORWARDED: [Signal; 6] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

/// If this process is PID 1, forks: returns `None` in the child (which goes
/// on to be the server) and, in the parent, reaps until the server exits,
/// then returns its exit code. Returns `None` right away otherwise.
///
/// Must be called first thing in `main`, while the process has one thread.
pub(crate) fn reap_if_pid1() -> Option<i32> {
    if std::process::id() != 1 {
        return None;
    }
    // SAFETY: called at the top of main, before any thread exists, so the
    // child is a faithful single-threaded copy.
    match unsafe { fork() } {
        Ok(ForkResult::Child) => None,
        Ok(ForkResult::Parent { child }) => Some(supervise(child)),
        Err(e) => {
            eprintln!("runtimeuse: running as PID 1 without an orphan reaper (fork failed: {e})");
            None
        }
    }
}

extern "C" fn forward(signal: libc::c_int) {
    let server = SERVER.load(Ordering::Relaxed);
    if server > 0 {
        // SAFETY: kill(2) is async-signal-safe.
        unsafe {
            libc::kill(server, signal);
        }
    }
}

/// Forwards signals to the server and reaps every child until it exits.
fn supervise(server: Pid) -> i32 {
    SERVER.store(server.as_raw(), Ordering::Relaxed);
    let action = SigAction::new(
        SigHandler::Handler(forward),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for signal in FORWARDED {
        // SAFETY: the handler only reads an atomic and calls kill(2).
        let _ = unsafe { sigaction(signal, &action) };
    }
    loop {
        match waitpid(None::<Pid>, None) {
            Ok(WaitStatus::Exited(pid, code)) if pid == server => return code,
            Ok(WaitStatus::Signaled(pid, signal, _)) if pid == server => {
                return 128 + signal as i32;
            }
            // An orphan reaped, or a stop/continue report: keep going.
            Ok(_) | Err(Errno::EINTR) => {}
            // No children at all: the server is gone without a report.
            Err(_) => return 1,
        }
    }
}
