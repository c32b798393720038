//! The agents bundled with the runtime, by name (`--agent NAME`), and how
//! each becomes a [`HandlerCommand`].
//!
//! - `echo` runs in the runtime binary itself, as the hidden
//!   [`ECHO_SUBCOMMAND`] ([`echo`]), so it needs nothing installed;
//! - `openai` and `claude` are Node handlers on the vendors' agent SDKs,
//!   embedded in the binary and installed into the cache directory on first
//!   use ([`node`]).
//!
//! A new bundled agent is one more arm in [`resolve`] plus, if it ships
//! files, a module here that puts them on disk.

pub(crate) mod echo;
pub(crate) mod node;

use crate::embedded::CacheDirs;
use crate::handler::{HandlerCommand, HandlerError};

/// Hidden subcommand of the runtime binary that runs the bundled echo handler.
pub(crate) const ECHO_SUBCOMMAND: &str = "__echo-handler";

/// Resolves a bundled agent by name; a Node agent is installed into `cache`
/// first if it is not there yet (this may run `npm ci`: call it at startup).
pub(crate) fn resolve(name: &str, cache: &CacheDirs) -> Result<HandlerCommand, HandlerError> {
    if let Some(agent) = node::node_agent(name) {
        return node::prepare(agent, cache).map_err(|e| HandlerError::Failed(e.to_string()));
    }
    match name {
        "echo" => {
            let exe = std::env::current_exe().map_err(|e| {
                HandlerError::Failed(format!(
                    "bundled handler echo: cannot locate the runtime executable: {e}"
                ))
            })?;
            Ok(HandlerCommand {
                program: exe,
                args: vec![ECHO_SUBCOMMAND.to_owned()],
                display: "echo (bundled)".to_owned(),
                env: Vec::new(),
            })
        }
        other => Err(HandlerError::Failed(format!(
            "unknown bundled agent {other:?}: choose one of echo, openai, claude \
             (or pass --handler PATH)"
        ))),
    }
}
