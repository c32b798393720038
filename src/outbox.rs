//! The one road out of a session: every outbound message goes through here.
//!
//! Workers (commands, the handler host, artifacts) hold an [`Outbox`] and never
//! touch the socket. The channel is bounded, so a slow client pushes back on
//! whoever produces output (a command's pipe fills and the command blocks)
//! instead of growing memory.

use tokio::sync::mpsc;

use crate::wire::OutboundMessage;

/// The connection is gone; whatever was being sent can be dropped.
#[derive(Debug, Clone, Copy, thiserror::Error, PartialEq, Eq)]
#[error("the client connection is closed")]
pub(crate) struct Closed;

/// A cloneable handle for queueing messages to the session's writer.
#[derive(Debug, Clone)]
pub(crate) struct Outbox {
    tx: mpsc::Sender<OutboundMessage>,
}

impl Outbox {
    /// Makes an outbox and the receiver its writer drains.
    pub(crate) fn channel(capacity: usize) -> (Self, mpsc::Receiver<OutboundMessage>) {
        let (tx, rx) = mpsc::channel(capacity);
        (Self { tx }, rx)
    }

    /// Queues a message unless the writer is behind, for messages that are
    /// worth nothing late (heartbeats). Never waits.
    pub(crate) fn try_send(&self, message: OutboundMessage) {
        let _ = self.tx.try_send(message);
    }

    /// Queues a message, waiting while the writer is behind.
    pub(crate) async fn send(&self, message: OutboundMessage) -> Result<(), Closed> {
        self.tx.send(message).await.map_err(|_| Closed)
    }
}
