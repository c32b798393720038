//! The session's writer: the one task that owns the socket's write half.
//!
//! Every outbound message of a session, from any request, command, handler
//! or artifact upload, arrives here through the [`Outbox`](crate::outbox::Outbox)
//! channel, and this is the only code that writes to the socket. That
//! single road is what makes two guarantees cheap:
//!
//! - **Nothing skips redaction.** Each message is redacted here, with the
//!   session's secrets as they are at the moment it is written (so a
//!   message queued before a later request named a secret is still
//!   covered), and then cut into frames the client accepts
//!   ([`frames::encode`]).
//! - **Backpressure reaches the producer.** The channel is bounded and this
//!   task awaits each send on the socket, so a client that reads slowly
//!   fills the channel, and the command printing into it blocks on its
//!   pipe: memory stays bounded whatever the output.
//!
//! Pings: the session's liveness check (`liveness.rs`) asks for one
//! through a [`Notify`]; it goes out between messages, as a control frame.
//!
//! Closing: when every outbox is dropped the queue runs dry and the writer
//! closes the socket. When the session asks it to `stop` while some
//! background task still holds an outbox, whatever is already queued still
//! goes out, then the close frame (carrying the reason, e.g. 1009 for an
//! oversized inbound message). A socket error ends the writer at once:
//! producers then see a closed outbox and stop.

use std::sync::{Arc, OnceLock};

use futures_util::{Sink, SinkExt};
use tokio::sync::{Notify, mpsc};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_util::sync::CancellationToken;

use crate::frames;
use crate::wire::OutboundMessage;

use super::secrets::SessionSecrets;

/// Drains the outbox into the socket, redacting and bounding every frame.
///
/// Ends when every outbox is dropped, or when `stop` fires: then whatever
/// is already queued still goes out before the close frame. `ping` asks
/// for a WebSocket ping (the server's keepalive).
pub(super) async fn write_loop<S>(
    mut sink: S,
    mut rx: mpsc::Receiver<OutboundMessage>,
    secrets: SessionSecrets,
    stop: CancellationToken,
    close_reason: Arc<OnceLock<CloseFrame>>,
    ping: Arc<Notify>,
) where
    S: Sink<Message, Error = tungstenite::Error> + Unpin,
{
    loop {
        let message = tokio::select! {
            biased;
            () = ping.notified() => {
                if let Err(e) = sink.send(Message::Ping(Default::default())).await {
                    tracing::info!(error = %e, "could not ping the client; dropping the writer");
                    return;
                }
                continue;
            }
            message = rx.recv() => message,
            () = stop.cancelled() => rx.try_recv().ok(),
        };
        let Some(message) = message else { break };
        if let Err(e) = write_message(&mut sink, &message, &secrets).await {
            tracing::info!(error = %e, "could not write to the client; dropping the writer");
            return;
        }
    }
    if let Some(reason) = close_reason.get() {
        let _ = sink.send(Message::Close(Some(reason.clone()))).await;
    }
    let _ = sink.close().await;
}

async fn write_message<S>(
    sink: &mut S,
    message: &OutboundMessage,
    secrets: &SessionSecrets,
) -> Result<(), tungstenite::Error>
where
    S: Sink<Message, Error = tungstenite::Error> + Unpin,
{
    let redactor = secrets.current();
    for frame in frames::encode(message, &redactor) {
        sink.send(Message::text(frame)).await?;
    }
    Ok(())
}
