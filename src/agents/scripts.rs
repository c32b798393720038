//! Agent handlers bundled into the runtime binary.
//!
//! The `openai` and `claude` handlers are Python scripts (standard library
//! only) that speak handler protocol v1 on stdin/stdout. They are compiled
//! into the binary so it stays self-contained, and written out to a cache
//! directory the first time they are needed:
//!
//! 1. `$XDG_CACHE_HOME/runtimeuse/<version>/` (if set and absolute),
//! 2. `$HOME/.cache/runtimeuse/<version>/`,
//! 3. `<temp dir>/runtimeuse-<uid>/<version>/` (a 0700 directory that must
//!    be ours: the temp dir is shared with other users).
//!
//! A location that cannot be written is skipped for the next one, so a
//! read-only home still works. Each script is `<name>_handler.py`, mode
//! 0755 (it has a `python3` shebang). Beside the scripts goes
//! `runtimeuse_protocol.py` (mode 0644), the protocol plumbing both handlers
//! import from their own directory; it is written before the script, so a
//! script is never there without it. Every file is replaced atomically
//! (temporary file plus rename) only when its content or mode differ, so
//! concurrent runtimes and already-running handlers never see a half-written
//! file.

use std::ffi::OsString;
use std::fs::{self, DirBuilder, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// The OpenAI Chat Completions handler.
pub(crate) const OPENAI_HANDLER: &str = include_str!("../../handlers/openai/handler.py");
/// The Claude Code (`claude` CLI) handler.
pub(crate) const CLAUDE_HANDLER: &str = include_str!("../../handlers/claude/handler.py");

/// The protocol plumbing both handlers import (`import runtimeuse_protocol`).
pub(crate) const PROTOCOL_MODULE: &str =
    include_str!("../../handlers/common/runtimeuse_protocol.py");
/// The file name the handlers import [`PROTOCOL_MODULE`] by, beside them.
pub(crate) const PROTOCOL_MODULE_FILE: &str = "runtimeuse_protocol.py";

/// Names of the bundled script handlers.
#[cfg(test)]
const NAMES: &[&str] = &["openai", "claude"];

const SCRIPT_MODE: u32 = 0o755;
/// Imported, not run: no need for it to be executable.
const MODULE_MODE: u32 = 0o644;

/// The source of a bundled handler, by name.
pub(crate) fn script(name: &str) -> Option<&'static str> {
    match name {
        "openai" => Some(OPENAI_HANDLER),
        "claude" => Some(CLAUDE_HANDLER),
        _ => None,
    }
}

/// Writes the bundled handler `name` to the cache (if it is not there
/// already) and returns its path; `Ok(None)` for a name that is not bundled.
pub(crate) fn script_path(name: &str) -> io::Result<Option<PathBuf>> {
    let candidates = cache_dirs(
        std::env::var_os("XDG_CACHE_HOME"),
        std::env::var_os("HOME"),
        std::env::temp_dir(),
        nix::unistd::getuid().as_raw(),
    );
    script_path_in(&candidates, name)
}

/// Where the scripts may go, best first.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CacheDir {
    /// The directory the scripts are written to.
    dir: PathBuf,
    /// A directory in a shared place (the temp dir) that must be created by
    /// us, owned by us and private before anything is written below it.
    private_root: Option<PathBuf>,
}

/// The candidate cache directories for the given environment.
fn cache_dirs(
    xdg_cache_home: Option<OsString>,
    home: Option<OsString>,
    temp_dir: PathBuf,
    uid: u32,
) -> Vec<CacheDir> {
    let version = env!("CARGO_PKG_VERSION");
    let mut dirs = Vec::new();
    // The XDG spec says relative values are invalid and must be ignored.
    if let Some(xdg) = xdg_cache_home
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
    {
        dirs.push(CacheDir {
            dir: xdg.join("runtimeuse").join(version),
            private_root: None,
        });
    }
    if let Some(home) = home.map(PathBuf::from).filter(|p| p.is_absolute()) {
        dirs.push(CacheDir {
            dir: home.join(".cache").join("runtimeuse").join(version),
            private_root: None,
        });
    }
    let root = temp_dir.join(format!("runtimeuse-{uid}"));
    dirs.push(CacheDir {
        dir: root.join(version),
        private_root: Some(root),
    });
    dirs
}

/// [`script_path`] over explicit candidate directories.
fn script_path_in(candidates: &[CacheDir], name: &str) -> io::Result<Option<PathBuf>> {
    let Some(content) = script(name) else {
        return Ok(None);
    };
    let mut last_error = io::Error::other("no cache directory to write bundled handlers to");
    for candidate in candidates {
        let installed = prepare(candidate)
            // The module first: the script is useless without it.
            .and_then(|()| {
                install(
                    &candidate.dir,
                    PROTOCOL_MODULE_FILE,
                    PROTOCOL_MODULE,
                    MODULE_MODE,
                )
            })
            .and_then(|_| {
                install(
                    &candidate.dir,
                    &format!("{name}_handler.py"),
                    content,
                    SCRIPT_MODE,
                )
            });
        match installed {
            Ok(path) => return Ok(Some(path)),
            Err(err) => {
                tracing::debug!(dir = %candidate.dir.display(), %err, "cannot cache bundled handler here");
                last_error = io::Error::new(
                    err.kind(),
                    format!(
                        "writing the {name} handler to {}: {err}",
                        candidate.dir.display()
                    ),
                );
            }
        }
    }
    Err(last_error)
}

/// Creates the candidate's directory, checking a shared-place root first.
fn prepare(candidate: &CacheDir) -> io::Result<()> {
    if let Some(root) = &candidate.private_root {
        ensure_private_dir(root)?;
    }
    DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(&candidate.dir)
}

/// Makes sure `dir` is a real directory owned by us that nobody else can
/// write to (creating it 0700 if missing), so no other user of a shared
/// temp dir can plant or swap our scripts.
fn ensure_private_dir(dir: &Path) -> io::Result<()> {
    match DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
        Err(err) => return Err(err),
    }
    let meta = fs::symlink_metadata(dir)?;
    let uid = nix::unistd::getuid().as_raw();
    if !meta.file_type().is_dir() || meta.uid() != uid || meta.mode() & 0o022 != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} is not a private directory owned by uid {uid}",
                dir.display()
            ),
        ));
    }
    Ok(())
}

/// Writes `content` as `<dir>/<file_name>` unless it is there already with
/// `mode`, atomically; returns the path.
fn install(dir: &Path, file_name: &str, content: &str, mode: u32) -> io::Result<PathBuf> {
    let path = dir.join(file_name);
    if is_current(&path, content, mode) {
        return Ok(path);
    }
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let tmp = dir.join(format!(
        ".{file_name}.{}.{}.tmp",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let written = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        file.write_all(content.as_bytes())?;
        // The umask may have narrowed the mode given at creation.
        file.set_permissions(Permissions::from_mode(mode))?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, &path)
    })();
    if let Err(err) = written {
        let _ = fs::remove_file(&tmp);
        return Err(err);
    }
    Ok(path)
}

/// Whether `path` is a regular file with exactly `content` and `mode`.
fn is_current(path: &Path, content: &str, mode: u32) -> bool {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return false;
    };
    meta.file_type().is_file()
        && meta.mode() & 0o7777 == mode
        && meta.len() == content.len() as u64
        && fs::read(path).is_ok_and(|bytes| bytes == content.as_bytes())
}

#[cfg(test)]
mod tests;
