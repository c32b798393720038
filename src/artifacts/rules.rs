//! Which files are artifacts: the ignore rules (gitignore syntax, via the
//! `ignore` crate) and the file-system checks (regular, non-empty, reached
//! without symlinks) that the watcher, the scan and the uploader share.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use ignore::gitignore::{Gitignore, GitignoreBuilder};

use super::ArtifactError;
use super::ledger::Stamp;

/// Per-directory ignore file, used when a request pins no ignore content.
pub(crate) const IGNORE_FILE: &str = ".artifactignore";

/// Ignore rules when a directory has neither pinned content nor an
/// [`IGNORE_FILE`].
const DEFAULT_IGNORES: [&str; 8] = [
    "node_modules/",
    ".venv/",
    "venv/",
    "env/",
    ".env/",
    "dist/",
    "__pycache__/",
    ".pytest_cache/",
];

/// Creates `dir` if missing and returns its canonical path.
pub(crate) fn prepare_dir(dir: &str) -> Result<PathBuf, ArtifactError> {
    if dir.is_empty() {
        return Err(ArtifactError::EmptyPath);
    }
    let cannot = |e: io::Error| ArtifactError::CannotWatch {
        dir: dir.to_owned(),
        reason: e.to_string(),
    };
    match fs::metadata(dir) {
        Ok(meta) if !meta.is_dir() => {
            return Err(ArtifactError::NotADirectory {
                dir: dir.to_owned(),
            });
        }
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => fs::create_dir_all(dir).map_err(|e| {
            if e.kind() == io::ErrorKind::NotADirectory || e.kind() == io::ErrorKind::AlreadyExists
            {
                ArtifactError::NotADirectory {
                    dir: dir.to_owned(),
                }
            } else {
                cannot(e)
            }
        })?,
        Err(e) if e.kind() == io::ErrorKind::NotADirectory => {
            return Err(ArtifactError::NotADirectory {
                dir: dir.to_owned(),
            });
        }
        Err(e) => return Err(cannot(e)),
    }
    fs::canonicalize(dir).map_err(cannot)
}

/// Gitignore rules rooted at `root`; invalid lines are skipped with a warning.
pub(crate) fn build_rules(root: &Path, content: &str, origin: &str) -> Gitignore {
    let mut builder = GitignoreBuilder::new(root);
    for line in content.lines() {
        if let Err(e) = builder.add_line(None, line) {
            tracing::warn!(origin, line, error = %e, "skipping invalid ignore pattern");
        }
    }
    builder.build().unwrap_or_else(|e| {
        tracing::warn!(origin, error = %e, "invalid ignore rules; ignoring nothing");
        Gitignore::empty()
    })
}

/// The rules of an unpinned dir: its [`IGNORE_FILE`], else the defaults.
pub(crate) fn load_rules(root: &Path) -> Gitignore {
    let file = root.join(IGNORE_FILE);
    let is_file = fs::symlink_metadata(&file).is_ok_and(|meta| meta.is_file());
    if is_file {
        match fs::read_to_string(&file) {
            Ok(text) => return build_rules(root, &text, IGNORE_FILE),
            Err(e) => {
                tracing::warn!(file = %file.display(), error = %e, "cannot read; using the default ignores")
            }
        }
    }
    build_rules(root, &DEFAULT_IGNORES.join("\n"), "default ignores")
}

/// Adds every eligible file under `start` (which is `root` or inside it) to
/// `out`. Symlinks are neither followed nor listed; ignored directories and
/// other watched dirs (`nested`, scanned with their own rules) are pruned.
pub(crate) fn scan_tree(
    root: &Path,
    start: &Path,
    rules: &Gitignore,
    nested: &[PathBuf],
    out: &mut Vec<(PathBuf, Stamp)>,
) {
    let mut stack = vec![start.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(file_type) = entry.file_type() else {
                continue;
            };
            let path = entry.path();
            let Ok(rel) = path.strip_prefix(root) else {
                continue;
            };
            if file_type.is_dir() {
                if !nested.contains(&path) && !rules.matched(rel, true).is_ignore() {
                    stack.push(path);
                }
            } else if file_type.is_file()
                && entry.file_name() != IGNORE_FILE
                && !rules.matched(rel, false).is_ignore()
                && let Ok(meta) = entry.metadata()
                && meta.len() > 0
            {
                out.push((path, Stamp::of(&meta)));
            }
        }
    }
}

/// The version of `path` if it is an artifact: a non-empty regular file
/// (not a symlink) under `root`, reached without symlinks, not ignored.
pub(crate) fn eligible(root: &Path, rules: &Gitignore, path: &Path) -> Option<Stamp> {
    let rel = path.strip_prefix(root).ok()?;
    if rel.as_os_str().is_empty() || path.file_name()? == IGNORE_FILE {
        return None;
    }
    if rules.matched_path_or_any_parents(rel, false).is_ignore() {
        return None;
    }
    let meta = fs::symlink_metadata(path).ok()?;
    if !meta.is_file() || meta.len() == 0 || !reached_without_symlinks(path) {
        return None;
    }
    Some(Stamp::of(&meta))
}

/// Whether no directory on the way to `path` is a symlink (the watched
/// roots are canonical, so a canonical parent means a plain path).
fn reached_without_symlinks(path: &Path) -> bool {
    path.parent()
        .is_some_and(|parent| fs::canonicalize(parent).is_ok_and(|real| real == parent))
}

/// Re-checks an announced file right before it is read for upload.
pub(crate) fn still_uploadable(path: &Path) -> Result<(), String> {
    match fs::symlink_metadata(path) {
        Err(e) => Err(format!("the file is gone ({e})")),
        Ok(meta) if !meta.is_file() => Err("the path is no longer a regular file".into()),
        Ok(_) if !reached_without_symlinks(path) => {
            Err("the path now goes through a symlink".into())
        }
        Ok(_) => Ok(()),
    }
}
