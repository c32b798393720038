//! Finding and starting the handler program: `--agent NAME` or
//! `--handler PATH` becomes a [`HandlerCommand`], checked at startup so a
//! wrong flag fails before any client connects, and a command becomes a
//! child process with the runtime's isolation (own process group, piped
//! stdio, no runtime credential).

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use crate::config::AgentSource;
use crate::embedded::CacheDirs;
use crate::process;

use super::HandlerError;
use super::sdks::Sdks;

/// A handler program ready to spawn.
///
/// Resolved once at startup from the configuration and shared by every
/// session, so each session's handler process starts the same program.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HandlerCommand {
    /// Absolute path of the executable (the handler, its interpreter, or the
    /// runtime binary itself for the bundled echo handler).
    pub program: PathBuf,
    /// Fixed arguments, e.g. the script for an interpreter; nothing from
    /// the client is ever added.
    pub args: Vec<String>,
    /// How the handler is named in logs and errors.
    pub display: String,
    /// Variables added to the runtime's environment for the handler (where
    /// the handler SDKs are: `RUNTIMEUSE_SDK_DIR`, `PYTHONPATH`).
    pub env: Vec<(OsString, OsString)>,
}

impl HandlerCommand {
    /// Resolves `--agent NAME` / `--handler PATH` into a spawnable command.
    ///
    /// The server calls it at startup so a wrong flag fails before any
    /// client connects; an embedding program can call it to check a
    /// configuration early.
    ///
    /// A bundled Node agent (`openai`, `claude`) is installed into the
    /// default cache directory first if it is not there yet (`npm ci`).
    pub fn resolve(agent: &AgentSource) -> Result<Self, HandlerError> {
        Self::resolve_in(agent, &CacheDirs::new(None))
    }

    /// [`HandlerCommand::resolve`] with the bundled Node agents installed
    /// in (or taken from) `cache`.
    pub(crate) fn resolve_in(agent: &AgentSource, cache: &CacheDirs) -> Result<Self, HandlerError> {
        match agent {
            AgentSource::Bundled(name) => crate::agents::resolve(name, cache),
            AgentSource::Path(path) => resolve_path(path, cache),
        }
    }

    /// The child process: own process group (so ending it ends everything
    /// it started), piped stdio, no runtime credential in its environment.
    pub(crate) fn to_process_command(&self) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(&self.program);
        cmd.args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        process::new_group(&mut cmd);
        process::without_runtime_credentials(&mut cmd);
        cmd
    }

    /// Why the program could not be started, in words a user can act on.
    pub(crate) fn spawn_error(&self, e: &io::Error) -> String {
        let why = match e.kind() {
            io::ErrorKind::NotFound => {
                "not found (or the interpreter on its #! line is missing)".to_owned()
            }
            io::ErrorKind::PermissionDenied => "permission denied (is it executable?)".to_owned(),
            _ if e.raw_os_error() == Some(nix::errno::Errno::ENOEXEC as i32) => {
                "not a valid executable (a script needs a #! line)".to_owned()
            }
            _ => e.to_string(),
        };
        format!(
            "could not start agent handler {}: {}: {why}",
            self.display,
            self.program.display()
        )
    }
}

/// Interpreters for handler scripts that are not executable themselves.
const INTERPRETERS: &[(&str, &str)] = &[
    ("py", "python3"),
    ("js", "node"),
    ("mjs", "node"),
    ("cjs", "node"),
    ("sh", "/bin/sh"),
    ("rb", "ruby"),
];

/// `--handler PATH`: how to start it, and the SDKs (unpacked into `cache`)
/// in its environment.
pub(crate) fn resolve_path(path: &Path, cache: &CacheDirs) -> Result<HandlerCommand, HandlerError> {
    resolve_path_with(path, Sdks::unpack_or_warn(cache).as_ref())
}

/// [`resolve_path`] with the SDKs given (None: unavailable).
pub(super) fn resolve_path_with(
    path: &Path,
    sdks: Option<&Sdks>,
) -> Result<HandlerCommand, HandlerError> {
    let fail =
        |why: String| HandlerError::Failed(format!("agent handler {}: {why}", path.display()));
    let canon = path.canonicalize().map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => fail("does not exist".into()),
        _ => fail(e.to_string()),
    })?;
    let meta = std::fs::metadata(&canon).map_err(|e| fail(e.to_string()))?;
    if !meta.is_file() {
        return Err(fail("is not a file".into()));
    }
    let canon_str = canon
        .to_str()
        .ok_or_else(|| fail("path is not valid UTF-8".into()))?
        .to_owned();
    let env = sdks.map_or_else(Vec::new, |s| s.env(std::env::var_os("PYTHONPATH")));
    let ext = canon
        .extension()
        .and_then(OsStr::to_str)
        .map(str::to_ascii_lowercase);
    let executable = meta.permissions().mode() & 0o111 != 0;
    if let Some(launcher) = sdks.map(Sdks::node_launcher)
        && is_node_module(ext.as_deref(), executable, &canon)
    {
        let node = find_program("node")
            .ok_or_else(|| fail("needs node to run, but node was not found on PATH".into()))?;
        return Ok(HandlerCommand {
            program: node,
            args: vec![launcher.display().to_string(), canon_str.clone()],
            display: format!("node {canon_str}"),
            env,
        });
    }
    if executable {
        return Ok(HandlerCommand {
            program: canon,
            args: Vec::new(),
            display: canon_str,
            env,
        });
    }
    let Some(&(_, interpreter)) = INTERPRETERS
        .iter()
        .find(|(e, _)| Some(*e) == ext.as_deref())
    else {
        let known: Vec<String> = INTERPRETERS.iter().map(|(e, _)| format!(".{e}")).collect();
        return Err(fail(format!(
            "is not executable and its extension ({}) has no known interpreter \
             (known: {}); make it executable (chmod +x) with a #! line",
            ext.map_or_else(|| "none".to_owned(), |e| format!(".{e}")),
            known.join(", ")
        )));
    };
    let program = find_program(interpreter).ok_or_else(|| {
        fail(format!(
            "needs {interpreter} to run, but {interpreter} was not found on PATH"
        ))
    })?;
    Ok(HandlerCommand {
        program,
        args: vec![canon_str.clone()],
        display: format!("{interpreter} {canon_str}"),
        env,
    })
}

/// Whether a handler file is run by Node through the SDK's launcher: a
/// `.js`, `.mjs` or `.cjs` file, unless it is executable with a `#!` line
/// naming another interpreter (its author chose that one).
fn is_node_module(ext: Option<&str>, executable: bool, path: &Path) -> bool {
    if !matches!(ext, Some("js" | "mjs" | "cjs")) {
        return false;
    }
    if !executable {
        return true;
    }
    let mut first = [0u8; 128];
    let read = std::fs::File::open(path)
        .and_then(|mut f| std::io::Read::read(&mut f, &mut first))
        .unwrap_or(0);
    let line = String::from_utf8_lossy(&first[..read]);
    let line = line.lines().next().unwrap_or("");
    !line.starts_with("#!") || line.contains("node")
}

/// Finds an executable by name on `PATH` (or checks an absolute path).
pub(crate) fn find_program(name: &str) -> Option<PathBuf> {
    let is_exe = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if name.contains('/') {
        let p = PathBuf::from(name);
        return is_exe(&p).then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| is_exe(p))
}
