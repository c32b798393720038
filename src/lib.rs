//! runtimeuse: the daemon that runs inside an AI-agent sandbox.
//!
//! A client connects over WebSocket and sends work (agent invocations or
//! shell commands); the runtime does it, streams output back, uploads
//! artifacts and redacts secrets. The binary in `main.rs` is a thin CLI over
//! this library so other programs can embed the server with their own
//! [`Config`]:
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let config = runtimeuse::Config {
//!     agent: runtimeuse::AgentSource::Bundled("echo".into()),
//!     ..Default::default()
//! };
//! runtimeuse::Server::bind(config).await?.run().await
//! # }
//! ```
//!
//! Where things live: [`server`] accepts connections, [`session`] runs one
//! connection, [`request`] is one request's pipeline, [`commands`] runs shell
//! commands, [`handler_host`] runs agent handlers, [`redact`] scrubs
//! secrets, [`wire`] is the client protocol, [`auth`] checks the token and
//! [`tls`] loads the certificate.

// Every public item is documented, and stays so: clippy runs with
// `-D warnings`.
#![warn(missing_docs)]

pub mod archive;
pub mod artifacts;
pub mod auth;
pub mod bundled;
pub mod cli;
pub mod commands;
pub mod config;
pub mod downloads;
pub mod echo;
pub mod embedded;
pub mod handler_host;
pub mod http_client;
pub mod init;
pub mod logging;
pub mod outbox;
pub mod process;
pub mod redact;
pub mod request;
pub mod server;
pub mod session;
pub mod tls;
pub mod wire;

pub use config::{AgentSource, Config};
pub use redact::{Redactor, StreamRedactor};
pub use server::Server;
