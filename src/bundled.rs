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
pub const OPENAI_HANDLER: &str = include_str!("../handlers/openai/handler.py");
/// The Claude Code (`claude` CLI) handler.
pub const CLAUDE_HANDLER: &str = include_str!("../handlers/claude/handler.py");

/// The protocol plumbing both handlers import (`import runtimeuse_protocol`).
pub const PROTOCOL_MODULE: &str = include_str!("../handlers/common/runtimeuse_protocol.py");
/// The file name the handlers import [`PROTOCOL_MODULE`] by, beside them.
pub const PROTOCOL_MODULE_FILE: &str = "runtimeuse_protocol.py";

/// Names of the bundled script handlers.
pub const NAMES: &[&str] = &["openai", "claude"];

const SCRIPT_MODE: u32 = 0o755;
/// Imported, not run: no need for it to be executable.
const MODULE_MODE: u32 = 0o644;

/// The source of a bundled handler, by name.
pub fn script(name: &str) -> Option<&'static str> {
    match name {
        "openai" => Some(OPENAI_HANDLER),
        "claude" => Some(CLAUDE_HANDLER),
        _ => None,
    }
}

/// Writes the bundled handler `name` to the cache (if it is not there
/// already) and returns its path; `Ok(None)` for a name that is not bundled.
pub fn script_path(name: &str) -> io::Result<Option<PathBuf>> {
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
mod tests {
    use super::*;

    const VERSION: &str = env!("CARGO_PKG_VERSION");

    fn only(dir: &Path) -> Vec<CacheDir> {
        vec![CacheDir {
            dir: dir.to_path_buf(),
            private_root: None,
        }]
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().mode() & 0o7777
    }

    /// What a cache dir holds once both handlers are written, and nothing
    /// else (no temporary files).
    const EVERY_FILE: [&str; 3] = [
        "claude_handler.py",
        "openai_handler.py",
        "runtimeuse_protocol.py",
    ];

    fn names_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn embedded_scripts_are_the_handlers() {
        for name in NAMES {
            let source = script(name).unwrap();
            assert!(source.starts_with("#!/usr/bin/env python3\n"), "{name}");
            assert!(source.contains("PROTOCOL = 1"), "{name}");
        }
        assert!(OPENAI_HANDLER.contains("chat/completions"));
        assert!(CLAUDE_HANDLER.contains("RUNTIMEUSE_CLAUDE_BIN"));
        assert_eq!(script("echo"), None);
    }

    #[test]
    fn writes_each_script_executable() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("cache");
        for name in NAMES {
            let path = script_path_in(&only(&dir), name).unwrap().unwrap();
            assert_eq!(path, dir.join(format!("{name}_handler.py")));
            assert_eq!(fs::read_to_string(&path).unwrap(), script(name).unwrap());
            assert_eq!(mode(&path), 0o755);
        }
        // No temporary files left behind.
        assert_eq!(names_in(&dir), EVERY_FILE);
    }

    #[test]
    fn the_protocol_module_is_written_beside_the_scripts() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("cache");
        script_path_in(&only(&dir), "claude").unwrap().unwrap();
        let module = dir.join(PROTOCOL_MODULE_FILE);
        assert_eq!(fs::read_to_string(&module).unwrap(), PROTOCOL_MODULE);
        assert_eq!(mode(&module), 0o644);

        // Stale, wrong mode, or a symlink: replaced, never followed.
        fs::write(&module, "stale\n").unwrap();
        script_path_in(&only(&dir), "claude").unwrap();
        assert_eq!(fs::read_to_string(&module).unwrap(), PROTOCOL_MODULE);
        fs::set_permissions(&module, Permissions::from_mode(0o666)).unwrap();
        script_path_in(&only(&dir), "claude").unwrap();
        assert_eq!(mode(&module), 0o644);
        let target = tmp.path().join("elsewhere.py");
        fs::write(&target, "precious\n").unwrap();
        fs::remove_file(&module).unwrap();
        std::os::unix::fs::symlink(&target, &module).unwrap();
        script_path_in(&only(&dir), "claude").unwrap();
        assert!(fs::symlink_metadata(&module).unwrap().file_type().is_file());
        assert_eq!(fs::read_to_string(&target).unwrap(), "precious\n");
    }

    #[test]
    fn materialized_handlers_import_the_protocol_module() {
        // Outside the source tree there is no ../common: the handlers must
        // find the module beside them. With stdin closed they exit 0 at once;
        // a failed import would exit 1.
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("cache");
        for name in NAMES {
            let path = script_path_in(&only(&dir), name).unwrap().unwrap();
            let output = std::process::Command::new("python3")
                .arg(&path)
                .current_dir(tmp.path())
                .stdin(std::process::Stdio::null())
                .output()
                .unwrap();
            assert!(
                output.status.success(),
                "{name}: {:?}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        // Nor do they leave bytecode in the cache.
        assert!(!dir.join("__pycache__").exists());
    }

    #[test]
    fn unknown_name_is_none_and_writes_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("cache");
        assert_eq!(script_path_in(&only(&dir), "echo").unwrap(), None);
        assert_eq!(script_path_in(&only(&dir), "").unwrap(), None);
        assert!(!dir.exists());
    }

    #[test]
    fn an_up_to_date_script_is_not_rewritten() {
        let tmp = tempfile::tempdir().unwrap();
        let path = script_path_in(&only(tmp.path()), "openai")
            .unwrap()
            .unwrap();
        let inode = fs::metadata(&path).unwrap().ino();
        let again = script_path_in(&only(tmp.path()), "openai")
            .unwrap()
            .unwrap();
        assert_eq!(again, path);
        // A rewrite renames a new file into place, which changes the inode.
        assert_eq!(fs::metadata(&path).unwrap().ino(), inode);
    }

    #[test]
    fn stale_content_or_mode_is_replaced_atomically() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("claude_handler.py");
        fs::write(&path, "print('old version')\n").unwrap();
        let old_inode = fs::metadata(&path).unwrap().ino();
        script_path_in(&only(tmp.path()), "claude").unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), CLAUDE_HANDLER);
        assert_ne!(fs::metadata(&path).unwrap().ino(), old_inode);
        assert_eq!(mode(&path), 0o755);

        // Right content, wrong mode.
        fs::set_permissions(&path, Permissions::from_mode(0o644)).unwrap();
        script_path_in(&only(tmp.path()), "claude").unwrap();
        assert_eq!(mode(&path), 0o755);
        assert_eq!(
            names_in(tmp.path()),
            ["claude_handler.py", "runtimeuse_protocol.py"]
        );
    }

    #[test]
    fn a_symlink_in_place_of_the_script_is_replaced_not_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("elsewhere.py");
        fs::write(&target, "precious\n").unwrap();
        let dir = tmp.path().join("cache");
        fs::create_dir(&dir).unwrap();
        std::os::unix::fs::symlink(&target, dir.join("claude_handler.py")).unwrap();
        let path = script_path_in(&only(&dir), "claude").unwrap().unwrap();
        assert!(fs::symlink_metadata(&path).unwrap().file_type().is_file());
        assert_eq!(fs::read_to_string(&path).unwrap(), CLAUDE_HANDLER);
        assert_eq!(fs::read_to_string(&target).unwrap(), "precious\n");
    }

    #[test]
    fn unwritable_locations_fall_through_to_the_next() {
        let tmp = tempfile::tempdir().unwrap();
        // A regular file where a directory should be: cannot be created.
        let blocker = tmp.path().join("not-a-dir");
        fs::write(&blocker, "").unwrap();
        let good = tmp.path().join("good");
        let candidates = [
            CacheDir {
                dir: blocker.join("runtimeuse"),
                private_root: None,
            },
            CacheDir {
                dir: good.clone(),
                private_root: None,
            },
        ];
        let path = script_path_in(&candidates, "openai").unwrap().unwrap();
        assert_eq!(path, good.join("openai_handler.py"));

        // All unwritable: the error says where it tried.
        let err = script_path_in(&candidates[..1], "openai").unwrap_err();
        assert!(err.to_string().contains("not-a-dir"), "{err}");
    }

    #[test]
    fn candidate_directories_in_order() {
        let uid = 1234;
        let dirs = cache_dirs(
            Some("/xdg".into()),
            Some("/home/u".into()),
            "/tmp".into(),
            uid,
        );
        let expected = [
            (format!("/xdg/runtimeuse/{VERSION}"), None),
            (format!("/home/u/.cache/runtimeuse/{VERSION}"), None),
            (
                format!("/tmp/runtimeuse-1234/{VERSION}"),
                Some("/tmp/runtimeuse-1234"),
            ),
        ];
        assert_eq!(dirs.len(), expected.len());
        for (dir, (path, root)) in dirs.iter().zip(expected) {
            assert_eq!(dir.dir, PathBuf::from(path));
            assert_eq!(dir.private_root, root.map(PathBuf::from));
        }
    }

    #[test]
    fn relative_or_missing_bases_are_skipped() {
        let dirs = cache_dirs(Some("relative".into()), Some("".into()), "/tmp".into(), 0);
        assert_eq!(dirs.len(), 1);
        assert_eq!(
            dirs[0].dir,
            PathBuf::from(format!("/tmp/runtimeuse-0/{VERSION}"))
        );
        let dirs = cache_dirs(None, Some("/root".into()), "/tmp".into(), 0);
        assert_eq!(
            dirs[0].dir,
            PathBuf::from(format!("/root/.cache/runtimeuse/{VERSION}"))
        );
    }

    #[test]
    fn temp_fallback_is_private() {
        let tmp = tempfile::tempdir().unwrap();
        let uid = nix::unistd::getuid().as_raw();
        let dirs = cache_dirs(None, None, tmp.path().to_path_buf(), uid);
        let path = script_path_in(&dirs, "openai").unwrap().unwrap();
        let root = tmp.path().join(format!("runtimeuse-{uid}"));
        assert!(path.starts_with(&root));
        assert_eq!(mode(&root), 0o700);
        // Already there and still ours: reused.
        assert_eq!(script_path_in(&dirs, "openai").unwrap().unwrap(), path);
    }

    #[test]
    fn temp_fallback_refuses_a_shared_or_planted_root() {
        let tmp = tempfile::tempdir().unwrap();
        let uid = nix::unistd::getuid().as_raw();
        let root = tmp.path().join(format!("runtimeuse-{uid}"));
        let dirs = cache_dirs(None, None, tmp.path().to_path_buf(), uid);

        // World-writable: someone else could swap the scripts.
        fs::create_dir(&root).unwrap();
        fs::set_permissions(&root, Permissions::from_mode(0o777)).unwrap();
        let err = script_path_in(&dirs, "openai").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied, "{err}");
        fs::remove_dir(&root).unwrap();

        // A symlink to a directory elsewhere.
        let elsewhere = tmp.path().join("elsewhere");
        fs::create_dir(&elsewhere).unwrap();
        fs::set_permissions(&elsewhere, Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &root).unwrap();
        let err = script_path_in(&dirs, "openai").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied, "{err}");
        assert!(fs::read_dir(&elsewhere).unwrap().next().is_none());
    }

    #[test]
    fn concurrent_writers_agree() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("cache");
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let dir = dir.clone();
                std::thread::spawn(move || {
                    let name = NAMES[i % NAMES.len()];
                    script_path_in(&only(&dir), name).unwrap().unwrap()
                })
            })
            .collect();
        for thread in threads {
            let path = thread.join().unwrap();
            let name = path.file_name().unwrap().to_str().unwrap();
            let expected = script(name.trim_end_matches("_handler.py")).unwrap();
            assert_eq!(fs::read_to_string(&path).unwrap(), expected);
        }
        assert_eq!(names_in(&dir), EVERY_FILE);
    }

    #[test]
    fn script_path_uses_the_real_environment() {
        // Whatever this environment is, some candidate (the temp dir at
        // worst) is writable.
        let path = script_path("openai").unwrap().unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), OPENAI_HANDLER);
        assert_eq!(script_path("nope").unwrap(), None);
    }
}
