//! Handing a command's text to `/bin/sh`.
//!
//! The common case is `/bin/sh -c <command>`: no file, no extra work (the
//! `true` round trip is benchmarked). But Linux caps a single `execve`
//! argument at 128 KiB (`MAX_ARG_STRLEN`), and agents do send larger
//! scripts (heredocs that write files). Those are written to a private
//! temporary file (mode 0600) and the shell is given `. '<file>'`: the
//! script runs in that same shell, so `$0`, positional parameters, `exit`
//! and the command's stdin (still `/dev/null`) are what they would have
//! been with `-c`. The file is removed when the command is over.

use std::borrow::Cow;
use std::ffi::{OsStr, OsString};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;

use tempfile::NamedTempFile;

/// Longest command passed inline with `-c`; longer ones go through a file.
/// Well under the kernel's 128 KiB per-argument cap, leaving room for
/// the environment in the total argument space.
pub(crate) const INLINE_SCRIPT_MAX_BYTES: usize = 64 * 1024;

/// How a command's text reaches the shell.
pub(super) enum Script {
    /// Short enough for the command line.
    Inline,
    /// Written to this file, removed when dropped.
    File(NamedTempFile),
}

impl Script {
    /// Writes `command` to a file if it is too long for the command line.
    pub(super) async fn prepare(command: &str) -> io::Result<Self> {
        if command.len() <= INLINE_SCRIPT_MAX_BYTES {
            return Ok(Self::Inline);
        }
        let text = command.to_owned();
        let write = move || -> io::Result<NamedTempFile> {
            let mut file = tempfile::Builder::new()
                .prefix("runtimeuse-script-")
                .suffix(".sh")
                .tempfile()?;
            file.write_all(text.as_bytes())?;
            file.flush()?;
            Ok(file)
        };
        let file = tokio::task::spawn_blocking(write)
            .await
            .map_err(io::Error::other)??;
        Ok(Self::File(file))
    }

    /// The argument to `sh -c`: the command itself, or the line that
    /// sources the file holding it.
    pub(super) fn argument<'a>(&self, command: &'a str) -> Cow<'a, OsStr> {
        match self {
            // Borrowed: the common path copies nothing more than before.
            Self::Inline => Cow::Borrowed(OsStr::new(command)),
            Self::File(file) => {
                let mut line = OsString::from(". ");
                line.push(shell_quoted(file.path().as_os_str()));
                Cow::Owned(line)
            }
        }
    }
}

/// `text` in single quotes, safe as one shell word whatever it contains.
fn shell_quoted(text: &OsStr) -> OsString {
    let mut quoted = OsString::from("'");
    for (i, part) in text.as_encoded_bytes().split(|&b| b == b'\'').enumerate() {
        if i > 0 {
            quoted.push("'\\''");
        }
        quoted.push(OsStr::from_bytes(part));
    }
    quoted.push("'");
    quoted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_quotes() {
        let quoted = shell_quoted(OsStr::new("/tmp/it's"));
        assert_eq!(quoted, "'/tmp/it'\\''s'");
    }

    #[tokio::test]
    async fn only_long_scripts_use_a_file() {
        assert!(matches!(
            Script::prepare("true").await.unwrap(),
            Script::Inline
        ));
        let long = format!("echo {}", "x".repeat(INLINE_SCRIPT_MAX_BYTES));
        let script = Script::prepare(&long).await.unwrap();
        let Script::File(file) = &script else {
            panic!("a long script is inline")
        };
        assert_eq!(std::fs::read_to_string(file.path()).unwrap(), long);
        let path = file.path().to_owned();
        assert!(script.argument(&long).to_string_lossy().starts_with(". '"));
        drop(script);
        assert!(!path.exists(), "the file outlived the command");
    }
}
