//! Is the client still there? Server pings and the write-stall check.
//!
//! A client can vanish without closing its TCP connection (a machine that
//! lost power, a SIGSTOPped process, a NAT that forgot the flow); without
//! this its session would hold a `--max-connections` slot and its running
//! request forever. Two signs mark a peer as dead, both bounded by
//! `--ping-timeout`:
//!
//! - **Silence.** After `--ping-interval` without any frame from the
//!   client, the runtime sends a WebSocket ping; if no frame at all (the
//!   pong, or anything else) arrives within `--ping-timeout` of it, the
//!   peer is dead. Pings only go out on a silent connection: the real
//!   client pings every 20 s itself, which already proves it is alive.
//! - **Not reading.** The socket took no byte for `--ping-timeout`
//!   ([`WriteStall`]): the client stopped reading, so whatever is owed to
//!   it (output, pongs to its own pings) would only pile up.
//!
//! The session then drops the connection as if the client had closed it:
//! the running request is cancelled, its processes are killed and the
//! slot is freed.
//!
//! The checks run as their own task ([`watch`]), not in the session's read
//! loop: that loop may itself be waiting for room in the outbox (to answer
//! a message while the client reads nothing), and would never get round to
//! them. On a dead peer the task aborts the writer, which closes the outbox
//! and so releases everyone waiting on it, the read loop included.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::{AbortHandle, JoinHandle};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::write_watch::WriteStall;

/// What is due next on a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Due {
    /// The client has been silent for the ping interval: ping it.
    Ping,
    /// The client let a ping go unanswered for the ping timeout.
    GiveUp,
}

/// The ping schedule: when to ping, and when silence means death. Pure
/// state (the caller passes the time), so its rules are unit-tested.
#[derive(Debug)]
struct Keepalive {
    /// `None`: the runtime never pings.
    interval: Option<Duration>,
    /// `None`: an unanswered ping never ends the session.
    timeout: Option<Duration>,
    last_heard: Instant,
    /// When the last ping went out, if nothing was heard since.
    ping_sent: Option<Instant>,
}

impl Keepalive {
    fn new(interval: Option<Duration>, timeout: Option<Duration>, now: Instant) -> Self {
        Self {
            interval,
            timeout,
            last_heard: now,
            ping_sent: None,
        }
    }

    /// Any frame from the client proves it alive.
    fn heard(&mut self, now: Instant) {
        self.last_heard = now;
        self.ping_sent = None;
    }

    /// A ping went out at `now`.
    fn pinged(&mut self, now: Instant) {
        self.ping_sent = Some(now);
    }

    /// The next thing due and when; `None` if nothing ever is.
    fn next_due(&self) -> Option<(Instant, Due)> {
        match (self.ping_sent, self.timeout) {
            (Some(sent), Some(timeout)) => Some((sent + timeout, Due::GiveUp)),
            // No deadline: keep pinging (it keeps middleboxes' state alive).
            (Some(sent), None) => self.interval.map(|i| (sent + i, Due::Ping)),
            (None, _) => self.interval.map(|i| (self.last_heard + i, Due::Ping)),
        }
    }
}

/// Why the session decided its client is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PeerDead {
    /// No frame within the ping timeout after a ping.
    NoPong(Duration),
    /// The socket took no byte for the ping timeout.
    NotReading(Duration),
}

impl PeerDead {
    /// The operator's log line: what was seen, and which flag bounds it.
    fn log(self) {
        match self {
            Self::NoPong(timeout) => tracing::warn!(
                ?timeout,
                "the client answered no ping within --ping-timeout; dropping the connection as dead"
            ),
            Self::NotReading(timeout) => tracing::warn!(
                ?timeout,
                "the client has read nothing for --ping-timeout; dropping the connection \
                 instead of buffering for it"
            ),
        }
    }
}

/// The session's handle on its liveness task.
pub(super) struct PeerWatch {
    heard: Arc<Notify>,
    dead: CancellationToken,
    task: JoinHandle<()>,
}

impl PeerWatch {
    /// A frame arrived from the client: it is alive.
    pub(super) fn heard(&self) {
        self.heard.notify_one();
    }

    /// Resolves once the client was found dead (the writer is gone by then).
    pub(super) async fn dead(&self) {
        self.dead.cancelled().await;
    }
}

impl Drop for PeerWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The settings of the checks; zero durations turn the matching one off.
pub(super) struct LivenessLimits {
    /// `--ping-interval`.
    pub(super) ping_interval: Duration,
    /// `--ping-timeout`.
    pub(super) ping_timeout: Duration,
}

/// Starts the liveness task of one session: it asks the writer for pings
/// through `ping`, and on a dead peer aborts `writer`.
pub(super) fn watch(
    limits: &LivenessLimits,
    stall: WriteStall,
    ping: Arc<Notify>,
    writer: AbortHandle,
) -> PeerWatch {
    let nonzero = |d: Duration| (!d.is_zero()).then_some(d);
    let heard = Arc::new(Notify::new());
    let dead = CancellationToken::new();
    let mut checks = Liveness {
        keepalive: Keepalive::new(
            nonzero(limits.ping_interval),
            nonzero(limits.ping_timeout),
            Instant::now(),
        ),
        stall,
        stall_limit: nonzero(limits.ping_timeout),
        ping,
        heard: heard.clone(),
    };
    let token = dead.clone();
    let task = tokio::spawn(
        async move {
            checks.peer_dead().await.log();
            writer.abort();
            token.cancel();
        }
        .in_current_span(),
    );
    PeerWatch { heard, dead, task }
}

/// One session's liveness checks: pings out through the writer, frames
/// heard from the reader, stalls from the socket.
struct Liveness {
    keepalive: Keepalive,
    stall: WriteStall,
    /// `None`: a stalled socket is waited on forever.
    stall_limit: Option<Duration>,
    /// Asks the writer (the only owner of the socket's write half) to ping.
    ping: Arc<Notify>,
    /// Rung by the read loop on every frame.
    heard: Arc<Notify>,
}

impl Liveness {
    /// Sends pings as they fall due; resolves once the client is dead.
    async fn peer_dead(&mut self) -> PeerDead {
        loop {
            tokio::select! {
                () = self.heard.notified() => self.keepalive.heard(Instant::now()),
                due = next(&self.keepalive) => match due {
                    Due::Ping => {
                        self.ping.notify_one();
                        self.keepalive.pinged(Instant::now());
                    }
                    Due::GiveUp => {
                        return PeerDead::NoPong(self.keepalive.timeout.unwrap_or_default());
                    }
                },
                limit = stalled(&mut self.stall, self.stall_limit) => {
                    return PeerDead::NotReading(limit);
                }
            }
        }
    }
}

/// Waits for the keepalive's next due time; pending forever if none.
async fn next(keepalive: &Keepalive) -> Due {
    match keepalive.next_due() {
        Some((at, due)) => {
            tokio::time::sleep_until(at).await;
            due
        }
        None => std::future::pending().await,
    }
}

/// Waits for the socket to stall for `limit`; pending forever if no limit.
async fn stalled(stall: &mut WriteStall, limit: Option<Duration>) -> Duration {
    match limit {
        Some(limit) => {
            stall.exceeded(limit).await;
            limit
        }
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn pings_after_silence_and_gives_up_after_the_timeout() {
        let t0 = Instant::now();
        let mut k = Keepalive::new(Some(30 * SECOND), Some(10 * SECOND), t0);
        assert_eq!(k.next_due(), Some((t0 + 30 * SECOND, Due::Ping)));
        k.pinged(t0 + 30 * SECOND);
        assert_eq!(k.next_due(), Some((t0 + 40 * SECOND, Due::GiveUp)));
    }

    #[test]
    fn any_frame_heard_resets_the_schedule() {
        let t0 = Instant::now();
        let mut k = Keepalive::new(Some(30 * SECOND), Some(10 * SECOND), t0);
        k.pinged(t0 + 30 * SECOND);
        k.heard(t0 + 35 * SECOND);
        assert_eq!(k.next_due(), Some((t0 + 65 * SECOND, Due::Ping)));
    }

    #[test]
    fn without_a_timeout_it_keeps_pinging_and_never_gives_up() {
        let t0 = Instant::now();
        let mut k = Keepalive::new(Some(5 * SECOND), None, t0);
        k.pinged(t0 + 5 * SECOND);
        assert_eq!(k.next_due(), Some((t0 + 10 * SECOND, Due::Ping)));
    }

    /// The task as the session uses it: a silent peer is pinged through the
    /// writer's notify, then declared dead, and the writer is aborted
    /// (which is what frees everyone waiting on the outbox).
    #[tokio::test]
    async fn a_silent_peer_is_pinged_then_dropped_and_the_writer_aborted() {
        let writer = tokio::spawn(std::future::pending::<()>());
        let (_io, stall) = super::super::WriteWatch::new(tokio::io::empty());
        let ping = Arc::new(Notify::new());
        let limits = LivenessLimits {
            ping_interval: Duration::from_millis(10),
            ping_timeout: Duration::from_millis(50),
        };
        let peer = watch(&limits, stall, ping.clone(), writer.abort_handle());
        tokio::time::timeout(Duration::from_secs(30), ping.notified())
            .await
            .expect("a silent peer is pinged");
        tokio::time::timeout(Duration::from_secs(30), peer.dead())
            .await
            .expect("an unanswered ping ends in a verdict");
        let ended = writer.await.expect_err("the writer was aborted");
        assert!(ended.is_cancelled());
    }

    #[test]
    fn without_an_interval_nothing_is_ever_due() {
        let k = Keepalive::new(None, Some(SECOND), Instant::now());
        assert_eq!(k.next_due(), None);
    }
}
