//! runtimeuse: the daemon that runs inside an AI-agent sandbox.
//!
//! A client connects over WebSocket and sends work (agent invocations or
//! shell commands); the runtime does it, streams output back, uploads
//! artifacts and redacts secrets. The binary in `main.rs` is a thin CLI over
//! this library so other programs can embed the server with their own
//! [`Config`].

pub mod config;
pub mod echo;
pub mod handler_host;
pub mod outbox;
pub mod process;
pub mod redact;
pub mod wire;

pub use config::{AgentSource, Config};
pub use redact::{Redactor, StreamRedactor};
