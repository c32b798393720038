//! Source trees compiled into the binary and unpacked, on first use, into a
//! cache directory.
//!
//! The runtime ships as one file, yet some of what it runs is not Rust: the
//! bundled agent handlers are Node packages (with the Node handler SDK they
//! depend on through a relative `file:` path). `build.rs` embeds such trees;
//! this module puts them on disk:
//!
//! - **Where**: `--cache-dir` / `RUNTIMEUSE_CACHE_DIR` if given (used as is:
//!   an unusable one is an error), else the first usable of
//!   `$XDG_CACHE_HOME/runtimeuse`, `$HOME/.cache/runtimeuse` and
//!   `<temp dir>/runtimeuse-<uid>` (a 0700 directory that must be ours).
//! - **Versioned**: a tree is unpacked to `<cache>/<tree>-<variant>-<digest>`,
//!   the digest covering every path, mode and byte, so a changed tree never
//!   reuses a stale copy and two runtime versions share what is identical.
//! - **Atomic**: the tree is written to a staging directory beside it, the
//!   caller's `prepare` step runs there (e.g. `npm ci`), and only then is it
//!   renamed into place. A directory that exists is complete; concurrent
//!   runtimes race harmlessly (one rename wins, the others discard their
//!   copy); a crash leaves only a staging directory, removed by the next
//!   install once its process is gone.
//! - **Warm**: a copy already in place is used without writing anything, so
//!   a cache baked into a read-only image works.
//!
//! Small API: [`CacheDirs::new`], then [`EmbeddedTree::unpack`] or
//! [`EmbeddedTree::install`].

use std::ffi::OsString;
use std::fmt::Display;
use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

include!(concat!(env!("OUT_DIR"), "/embedded_trees.rs"));

/// Written last into a staging directory: its presence says the copy is
/// complete (a directory without it was not made by [`EmbeddedTree::install`]).
const COMPLETE_MARKER: &str = ".runtimeuse-complete";
/// Prefix of staging directories, followed by `<tree>-<variant>-<pid>-<n>`.
const STAGING_PREFIX: &str = ".staging-";

/// A directory tree embedded by `build.rs`.
#[derive(Debug)]
pub(crate) struct EmbeddedTree {
    /// Names the tree's directories in the cache.
    pub(crate) name: &'static str,
    /// Hash of every path, mode and byte: the tree's version.
    pub(crate) digest: &'static str,
    /// Every file, sorted by path.
    pub(crate) files: &'static [EmbeddedFile],
}

/// One file of an [`EmbeddedTree`].
#[derive(Debug)]
pub(crate) struct EmbeddedFile {
    /// Relative to the tree's top (the crate root), `/`-separated.
    pub(crate) path: &'static str,
    /// The file's bytes.
    pub(crate) contents: &'static [u8],
    /// Unpacked 0755 if set, else 0644.
    pub(crate) executable: bool,
}

/// Where trees may be unpacked, best first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CacheDirs {
    candidates: Vec<CacheDir>,
    explicit: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct CacheDir {
    dir: PathBuf,
    /// A directory in a shared place (the temp dir) that must be created by
    /// us, owned by us and private before anything is written below it.
    private_root: Option<PathBuf>,
}

/// A tree in place, ready to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Installed {
    /// `<cache>/<tree>-<variant>-<digest>`.
    pub(crate) dir: PathBuf,
    /// Whether this call unpacked it (false: it was there already).
    pub(crate) fresh: bool,
}

/// Why a tree could not be put in place.
#[derive(Debug, thiserror::Error)]
pub(crate) enum InstallError {
    /// No cache directory could be created or written.
    #[error(
        "cannot write to the cache directory {dir}: {source} (set --cache-dir or RUNTIMEUSE_CACHE_DIR to a writable directory)"
    )]
    Cache {
        /// The directory that failed (the last one tried).
        dir: PathBuf,
        /// What the file system said.
        source: io::Error,
    },
    /// The caller's `prepare` step failed; the staging copy was removed.
    #[error("{0}")]
    Prepare(String),
}

impl CacheDirs {
    /// The cache location for an optional `--cache-dir` override, from the
    /// process environment (`XDG_CACHE_HOME`, `HOME`, the temp dir).
    pub(crate) fn new(explicit: Option<&Path>) -> Self {
        match explicit {
            Some(dir) => Self::only(dir),
            None => Self::defaults(
                std::env::var_os("XDG_CACHE_HOME"),
                std::env::var_os("HOME"),
                std::env::temp_dir(),
                nix::unistd::getuid().as_raw(),
            ),
        }
    }

    /// Exactly `dir`, with no fallback.
    pub(crate) fn only(dir: &Path) -> Self {
        Self {
            candidates: vec![CacheDir {
                dir: dir.to_path_buf(),
                private_root: None,
            }],
            explicit: true,
        }
    }

    fn defaults(
        xdg_cache_home: Option<OsString>,
        home: Option<OsString>,
        temp_dir: PathBuf,
        uid: u32,
    ) -> Self {
        let mut candidates = Vec::new();
        // The XDG spec says relative values are invalid and must be ignored.
        let absolute = |p: Option<OsString>| p.map(PathBuf::from).filter(|p| p.is_absolute());
        if let Some(xdg) = absolute(xdg_cache_home) {
            candidates.push(CacheDir {
                dir: xdg.join("runtimeuse"),
                private_root: None,
            });
        }
        if let Some(home) = absolute(home) {
            candidates.push(CacheDir {
                dir: home.join(".cache").join("runtimeuse"),
                private_root: None,
            });
        }
        let root = temp_dir.join(format!("runtimeuse-{uid}"));
        candidates.push(CacheDir {
            dir: root.clone(),
            private_root: Some(root),
        });
        Self {
            candidates,
            explicit: false,
        }
    }

    /// The directories tried, best first.
    #[cfg(test)]
    pub(crate) fn paths(&self) -> impl Iterator<Item = &Path> {
        self.candidates.iter().map(|c| c.dir.as_path())
    }
}

impl EmbeddedTree {
    /// The file at `path` (relative to the tree's top), if embedded.
    #[cfg(test)]
    pub(crate) fn file(&self, path: &str) -> Option<&'static EmbeddedFile> {
        self.files.iter().find(|f| f.path == path)
    }

    /// The complete copy of variant `variant`, if one is in any cache
    /// directory. Writes nothing.
    pub(crate) fn installed(&self, cache: &CacheDirs, variant: &str) -> Option<PathBuf> {
        cache
            .candidates
            .iter()
            .map(|c| c.dir.join(self.dir_name(variant)))
            .find(|dir| is_complete(dir))
    }

    /// Unpacks the tree as is (variant `files`), unless it is in place.
    pub(crate) fn unpack(&self, cache: &CacheDirs) -> Result<Installed, InstallError> {
        self.install(cache, "files", |_| Ok::<(), io::Error>(()))
    }

    /// Puts variant `variant` of the tree in place: the files, then
    /// `prepare(staging_dir)`, then an atomic rename. If a complete copy is
    /// there already, nothing is written and `prepare` is not called.
    pub(crate) fn install<E: Display>(
        &self,
        cache: &CacheDirs,
        variant: &str,
        prepare: impl FnOnce(&Path) -> Result<(), E>,
    ) -> Result<Installed, InstallError> {
        if let Some(dir) = self.installed(cache, variant) {
            return Ok(Installed { dir, fresh: false });
        }
        let (root, staging) = self.stage(cache, variant)?;
        let finished = prepare(&staging.0).map_err(|e| InstallError::Prepare(e.to_string()));
        finished.and_then(|()| self.publish(&root, variant, staging))
    }

    fn dir_name(&self, variant: &str) -> String {
        format!("{}-{variant}-{}", self.name, self.digest)
    }

    /// Writes the files into a fresh staging directory of the first usable
    /// cache directory; returns that cache directory and the staging one.
    fn stage(&self, cache: &CacheDirs, variant: &str) -> Result<(PathBuf, Staging), InstallError> {
        let mut last = None;
        for candidate in &cache.candidates {
            match self.stage_in(candidate, variant) {
                Ok(staging) => return Ok((candidate.dir.clone(), staging)),
                Err(source) => {
                    tracing::debug!(dir = %candidate.dir.display(), %source, "cache directory unusable");
                    last = Some(InstallError::Cache {
                        dir: candidate.dir.clone(),
                        source,
                    });
                    if cache.explicit {
                        break;
                    }
                }
            }
        }
        Err(last.expect("there is always a candidate"))
    }

    fn stage_in(&self, candidate: &CacheDir, variant: &str) -> io::Result<Staging> {
        if let Some(root) = &candidate.private_root {
            ensure_private_dir(root)?;
        }
        DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&candidate.dir)?;
        remove_abandoned_staging(&candidate.dir);
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let staging = Staging(candidate.dir.join(format!(
            "{STAGING_PREFIX}{}-{variant}-{}-{}",
            self.name,
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        )));
        DirBuilder::new().mode(0o755).create(&staging.0)?;
        for file in self.files {
            write_file(&staging.0, file)?;
        }
        Ok(staging)
    }

    /// Marks the staging copy complete and renames it into place. Losing
    /// the race to another installer is success: its copy is as good.
    fn publish(
        &self,
        root: &Path,
        variant: &str,
        staging: Staging,
    ) -> Result<Installed, InstallError> {
        let dir = root.join(self.dir_name(variant));
        let cache_error = |source| InstallError::Cache {
            dir: root.to_path_buf(),
            source,
        };
        fs::write(staging.0.join(COMPLETE_MARKER), self.digest).map_err(cache_error)?;
        if dir.exists() && !is_complete(&dir) {
            // Not ours (made by hand, or by an older layout): set it aside.
            let aside = staging.0.with_extension("replaced");
            fs::rename(&dir, &aside).map_err(cache_error)?;
            let _ = fs::remove_dir_all(&aside);
        }
        // Once renamed, dropping `staging` finds nothing left to remove.
        match fs::rename(&staging.0, &dir) {
            Ok(()) => Ok(Installed { dir, fresh: true }),
            Err(_) if is_complete(&dir) => Ok(Installed { dir, fresh: false }),
            Err(source) => Err(cache_error(source)),
        }
    }
}

/// A staging directory, removed when dropped unless it was renamed away.
struct Staging(PathBuf);

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn is_complete(dir: &Path) -> bool {
    fs::symlink_metadata(dir.join(COMPLETE_MARKER)).is_ok_and(|m| m.is_file())
}

/// Creates `file` under `top` (parents included) with its mode.
fn write_file(top: &Path, file: &EmbeddedFile) -> io::Result<()> {
    let path = top.join(file.path);
    if let Some(parent) = path.parent() {
        DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(parent)?;
    }
    let mode = if file.executable { 0o755 } else { 0o644 };
    let mut out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&path)?;
    out.write_all(file.contents)?;
    // The umask may have narrowed the mode given at creation.
    out.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))
}

/// Removes staging directories whose process is gone (a crash or a kill
/// mid-install); those of live processes are theirs.
fn remove_abandoned_staging(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(staging_pid) else {
            continue;
        };
        let gone = matches!(
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
            Err(nix::errno::Errno::ESRCH)
        );
        if gone {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// The pid in `.staging-<tree>-<variant>-<pid>-<n>[.replaced]`.
fn staging_pid(name: &str) -> Option<i32> {
    let rest = name.strip_prefix(STAGING_PREFIX)?;
    let rest = rest.strip_suffix(".replaced").unwrap_or(rest);
    let mut parts = rest.rsplit('-');
    let _counter: u64 = parts.next()?.parse().ok()?;
    parts.next()?.parse().ok()
}

/// Makes sure `dir` is a real directory owned by us that nobody else can
/// write to (creating it 0700 if missing), so no other user of a shared
/// temp dir can plant or swap what we run.
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

#[cfg(test)]
mod tests;
