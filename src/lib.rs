//! runtimeuse: the daemon that runs inside an AI-agent sandbox.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let config = runtimeuse::Config {
//!     agent: runtimeuse::AgentSource::Path("./my_agent.py".into()),
//!     ..Default::default()
//! };
//! runtimeuse::Server::bind(config).await?.run().await
//! # }
//! ```
//!
//! A client connects over WebSocket and sends work (agent invocations or
//! shell commands); the runtime does it, streams output back, uploads
//! artifacts and redacts secrets. The `runtimeuse` binary is a thin CLI over
//! this library, so another program can embed the same server with its own
//! [`Config`].
//!
//! The public surface is deliberately small: [`Config`] (with
//! [`AgentSource`], [`TlsFiles`] and [`Secret`]) says what to serve,
//! [`Server`] serves it, [`HandlerCommand`] checks an agent handler before
//! serving, and [`Redactor`] / [`StreamRedactor`] are the secret scrubbing
//! the runtime applies to everything it sends, for programs that relay
//! output of their own. Everything else is private to the crate; the
//! README's source map says where each concern lives.

mod agents;
mod archive;
mod artifacts;
mod auth;
mod check_handler;
#[doc(hidden)]
pub mod cli;
mod commands;
mod config;
mod containment;
mod downloads;
mod embedded;
mod frames;
mod handler;
mod http;
mod init;
mod logging;
mod memory;
mod outbox;
mod process;
mod redact;
mod request;
mod server;
mod session;
mod text;
mod tls;
mod urls;

#[cfg(test)]
mod testing;
mod wire;

pub use config::{AgentSource, Config, ContainmentMode, Secret, TlsFiles};
pub use handler::{HandlerCommand, HandlerError};
pub use redact::{Redactor, StreamRedactor};
pub use server::Server;

/// Internals the fuzz targets in `fuzz/` drive directly. Not part of the
/// API: no stability promise, hidden from the docs.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::frames::encode;
    pub use crate::redact::REDACTED;
    pub use crate::wire::{
        CommandResult, InboundMessage, MAX_OUTBOUND_FRAME_BYTES, OutboundMessage, ResultData,
        Stream,
    };
}
