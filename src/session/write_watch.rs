//! Noticing a client that stopped reading.
//!
//! A peer that never reads fills its TCP receive window, then the
//! runtime's send buffer; from then on every write to the socket returns
//! `Pending`. Nothing else reveals it: a peer that floods pings while never
//! reading still looks alive to the reader (frames keep arriving), and the
//! pongs tungstenite owes it only pile up. [`WriteWatch`] wraps the
//! connection's byte stream and records when writes stopped making
//! progress, so the session can drop a peer whose socket took no byte for
//! the whole `--ping-timeout` instead of buffering for it.
//!
//! Only a complete stall counts: a slow client that takes any byte resets
//! the clock, so a large output to a slow link is never mistaken for a
//! dead peer.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;
use tokio::time::Instant;

/// A byte stream whose writes are watched for a stall.
pub(crate) struct WriteWatch<IO> {
    inner: IO,
    /// `Some(t)`: every write since `t` returned `Pending`.
    stalled_since: watch::Sender<Option<Instant>>,
}

/// The session's view of its [`WriteWatch`]: since when the socket has
/// refused every byte, if it has.
#[derive(Debug, Clone)]
pub(crate) struct WriteStall(watch::Receiver<Option<Instant>>);

impl<IO> WriteWatch<IO> {
    /// Wraps `inner`; the [`WriteStall`] reports its write stalls.
    pub(crate) fn new(inner: IO) -> (Self, WriteStall) {
        let (stalled_since, rx) = watch::channel(None);
        (
            Self {
                inner,
                stalled_since,
            },
            WriteStall(rx),
        )
    }

    /// Records the outcome of one write attempt; only transitions notify.
    fn record<T>(&self, outcome: &Poll<io::Result<T>>) {
        match outcome {
            Poll::Pending => self.stalled_since.send_if_modified(|since| {
                let changed = since.is_none();
                since.get_or_insert_with(Instant::now);
                changed
            }),
            // Progress, or an error (the connection is ending anyway).
            Poll::Ready(_) => self
                .stalled_since
                .send_if_modified(|since| since.take().is_some()),
        };
    }
}

impl WriteStall {
    /// Resolves once the socket has taken no byte for `limit`; pending
    /// forever when the watched stream is gone. Cancel-safe: it may be
    /// dropped and called again (it reads the current state each time).
    pub(crate) async fn exceeded(&mut self, limit: std::time::Duration) {
        loop {
            let since = *self.0.borrow_and_update();
            let changed = match since {
                Some(since) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(since + limit) => return,
                        changed = self.0.changed() => changed,
                    }
                }
                None => self.0.changed().await,
            };
            if changed.is_err() {
                return std::future::pending().await;
            }
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for WriteWatch<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for WriteWatch<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let outcome = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.record(&outcome);
        outcome
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let outcome = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.record(&outcome);
        outcome
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let outcome = Pin::new(&mut self.inner).poll_flush(cx);
        self.record(&outcome);
        outcome
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A peer that reads nothing: the writer fills the pipe, the stall is
    /// reported after the limit; once the peer reads, it clears.
    #[tokio::test]
    async fn a_full_pipe_is_a_stall_and_reading_clears_it() {
        let (ours, mut peer) = tokio::io::duplex(64);
        let (mut watched, mut stall) = WriteWatch::new(ours);
        let writer = tokio::spawn(async move {
            watched.write_all(&[7u8; 256]).await.unwrap();
            watched
        });
        // The pipe holds 64 bytes: the write gets stuck.
        stall.0.wait_for(Option::is_some).await.unwrap();
        tokio::time::timeout(
            Duration::from_secs(30),
            stall.exceeded(Duration::from_millis(50)),
        )
        .await
        .expect("a write stuck for the whole limit is a stall");
        let mut sink = vec![0u8; 256];
        peer.read_exact(&mut sink).await.unwrap();
        let _watched = writer.await.unwrap();
        assert!(stall.0.borrow().is_none(), "progress clears the stall");
    }

    /// A write that goes through never starts the clock.
    #[tokio::test]
    async fn writes_that_flow_are_no_stall() {
        let (ours, mut peer) = tokio::io::duplex(1024);
        let (mut watched, stall) = WriteWatch::new(ours);
        watched.write_all(b"hello").await.unwrap();
        watched.flush().await.unwrap();
        let mut got = [0u8; 5];
        peer.read_exact(&mut got).await.unwrap();
        assert!(
            !stall.0.has_changed().unwrap(),
            "no stall was ever recorded"
        );
        assert!(stall.0.borrow().is_none());
    }
}
