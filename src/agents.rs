//! The agents bundled with the runtime, by name (`--agent NAME`), and how
//! each becomes a [`HandlerCommand`].
//!
//! - `echo` runs in the runtime binary itself, as the hidden
//!   [`ECHO_SUBCOMMAND`] ([`echo`]), so it needs nothing installed;
//! - `openai` and `claude` are scripts compiled into the binary and written
//!   to a cache directory on first use ([`scripts`]).
//!
//! A new bundled agent is one more arm in [`resolve`] plus, if it ships
//! files, a module here that puts them on disk.

pub(crate) mod echo;
pub(crate) mod scripts;

use crate::handler::{HandlerCommand, HandlerError, find_program};

/// Hidden subcommand of the runtime binary that runs the bundled echo handler.
pub(crate) const ECHO_SUBCOMMAND: &str = "__echo-handler";

/// Resolves a bundled agent by name.
pub(crate) fn resolve(name: &str) -> Result<HandlerCommand, HandlerError> {
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
        "openai" | "claude" => resolve_bundled_script(name),
        other => Err(HandlerError::Failed(format!(
            "unknown bundled agent {other:?}: choose one of echo, openai, claude \
             (or pass --handler PATH)"
        ))),
    }
}

/// The openai and claude handlers are Python scripts embedded in the
/// binary; they are written to a cache directory and run with python3.
fn resolve_bundled_script(name: &str) -> Result<HandlerCommand, HandlerError> {
    let path = scripts::script_path(name)
        .map_err(|e| {
            HandlerError::Failed(format!(
                "bundled handler {name}: cannot write its script: {e}"
            ))
        })?
        .ok_or_else(|| HandlerError::Failed(format!("bundled handler {name} is missing")))?;
    let python = find_program("python3").ok_or_else(|| {
        HandlerError::Failed(format!(
            "bundled handler {name} needs python3, which is not on PATH (or use --agent echo / --handler PATH)"
        ))
    })?;
    Ok(HandlerCommand {
        program: python,
        args: vec![path.display().to_string()],
        display: format!("{name} (bundled)"),
        env: Vec::new(),
    })
}
