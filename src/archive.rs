//! Safe unpacking of downloaded `.zip` and `.tar.gz` archives.
//!
//! Archives come from the network, so every entry is checked before it
//! touches the disk:
//! - its path, normalised (`a/../b` is `b`), must stay inside the target
//!   directory: no `..` escape, no absolute path, no NUL;
//! - nothing is ever written *through* a symlink: every parent directory of
//!   an entry must be a real directory, and an existing file or symlink at
//!   an entry's own path is replaced, not followed;
//! - a symlink may only point inside: its target must be relative, climb
//!   with leading `..` no higher than the target directory, and then only
//!   descend (no `..` after a name). Together with the previous rule this
//!   keeps every link, however chained, inside the directory;
//! - permissions are kept (executables stay executable) but setuid, setgid
//!   and sticky bits are dropped;
//! - the bytes actually written and the number of entries are bounded, so a
//!   zip bomb stops at the limit whatever sizes its headers declare.
//!
//! On failure everything this unpack created is removed again (files it
//! overwrote cannot be restored). Zip names are all checked before anything
//! is written. The work is blocking and runs in `spawn_blocking`.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, BufReader, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio_util::sync::CancellationToken;

/// Which archive formats are unpacked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ArchiveKind {
    /// `.zip`; every name is checked before anything is written.
    Zip,
    /// Gzip-compressed tar (`.tar.gz`, `.tgz`); checked entry by entry.
    TarGz,
}

impl ArchiveKind {
    /// The kind a file name announces (`.zip`, `.tar.gz`, `.tgz`; any case).
    pub(crate) fn from_file_name(name: &str) -> Option<Self> {
        let lower = name.to_ascii_lowercase();
        if lower.ends_with(".zip") {
            Some(Self::Zip)
        } else if lower.ends_with(".tar.gz") || lower.ends_with(".tgz") {
            Some(Self::TarGz)
        } else {
            None
        }
    }
}

/// Bounds against archive bombs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ArchiveLimits {
    /// Most bytes written for all entries together.
    pub(crate) max_bytes: u64,
    /// Most entries (files, directories, links).
    pub(crate) max_entries: u64,
}

impl Default for ArchiveLimits {
    fn default() -> Self {
        Self {
            max_bytes: 4 * 1024 * 1024 * 1024,
            max_entries: 100_000,
        }
    }
}

/// What an unpack produced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct UnpackStats {
    /// Entries unpacked (files, directories and links), as counted against
    /// [`ArchiveLimits::max_entries`].
    pub(crate) entries: u64,
    /// File bytes actually written (not the sizes headers declared).
    pub(crate) bytes: u64,
}

/// Why an archive was not (completely) unpacked.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ArchiveError {
    /// The entry's normalised path climbs above the target with `..`.
    #[error("archive entry {0:?} escapes the target directory")]
    Escapes(String),
    /// The entry's path starts with `/`.
    #[error("archive entry {0:?} has an absolute path")]
    AbsolutePath(String),
    /// The entry's name contains NUL or names no file (e.g. only `.`).
    #[error("archive entry {0:?} has an invalid name")]
    InvalidName(String),
    /// A symlink whose target is absolute or leads out of the target.
    #[error("archive symlink {name:?} points outside the target directory (to {target:?})")]
    SymlinkEscapes {
        /// The link entry's name in the archive.
        name: String,
        /// The link target as stored in the archive.
        target: String,
    },
    /// A tar hard link whose target is not an existing regular file inside
    /// the target directory, reached through real directories.
    #[error(
        "archive hard link {name:?} must point to a regular file inside the archive (not {target:?})"
    )]
    BadHardLink {
        /// The link entry's name in the archive.
        name: String,
        /// The link target as stored in the archive.
        target: String,
    },
    /// A parent directory of the entry is a symlink (existing or unpacked
    /// earlier); writing would follow it.
    #[error("archive entry {0:?} would be written through a symlink")]
    ThroughSymlink(String),
    /// A directory is needed where a file exists, or the reverse.
    #[error("archive entry {0:?} conflicts with an existing directory or file")]
    Conflict(String),
    /// Bytes written passed [`ArchiveLimits::max_bytes`] (the limit).
    #[error("archive unpacks to more than {0} bytes")]
    TooLarge(u64),
    /// Entries passed [`ArchiveLimits::max_entries`] (the limit).
    #[error("archive has more than {0} entries")]
    TooManyEntries(u64),
    /// The zip could not be read (malformed or truncated); the decoder's
    /// reason.
    #[error("invalid zip archive: {0}")]
    Zip(String),
    /// The gzip or tar stream could not be read (malformed or truncated);
    /// the decoder's reason.
    #[error("invalid tar.gz archive: {0}")]
    Tar(String),
    /// A filesystem operation failed (e.g. disk full, permission denied).
    #[error("cannot unpack to {}: {source}", path.display())]
    Io {
        /// The file or directory being written when it failed.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The request was cancelled; what was unpacked has been removed.
    #[error("unpacking was cancelled")]
    Cancelled,
}

/// Unpacks `archive` into `dest` (which must exist) on a blocking thread.
/// `cancel` stops it between chunks; it then cleans up and returns
/// [`ArchiveError::Cancelled`].
pub(crate) async fn unpack(
    archive: &Path,
    kind: ArchiveKind,
    dest: &Path,
    limits: ArchiveLimits,
    cancel: Option<CancellationToken>,
) -> Result<UnpackStats, ArchiveError> {
    let (archive, dest) = (archive.to_owned(), dest.to_owned());
    let dest_for_error = dest.clone();
    tokio::task::spawn_blocking(move || {
        unpack_blocking(&archive, kind, &dest, limits, cancel.as_ref())
    })
    .await
    .map_err(|e| ArchiveError::Io {
        path: dest_for_error,
        source: io::Error::other(e.to_string()),
    })?
}

/// The blocking body of [`unpack`].
pub(crate) fn unpack_blocking(
    archive: &Path,
    kind: ArchiveKind,
    dest: &Path,
    limits: ArchiveLimits,
    cancel: Option<&CancellationToken>,
) -> Result<UnpackStats, ArchiveError> {
    let mut unpacker = Unpacker::new(dest, limits, cancel);
    let result = match kind {
        ArchiveKind::Zip => unpack_zip(archive, &mut unpacker),
        ArchiveKind::TarGz => unpack_tar_gz(archive, &mut unpacker),
    };
    match result.and_then(|()| unpacker.apply_dir_modes()) {
        Ok(()) => Ok(unpacker.stats),
        Err(e) => {
            unpacker.roll_back();
            Err(e)
        }
    }
}

fn open_archive(archive: &Path) -> Result<BufReader<File>, ArchiveError> {
    File::open(archive)
        .map(|f| BufReader::with_capacity(256 * 1024, f))
        .map_err(|source| ArchiveError::Io {
            path: archive.to_owned(),
            source,
        })
}

fn unpack_zip(archive: &Path, unpacker: &mut Unpacker<'_>) -> Result<(), ArchiveError> {
    let zip_err = |e: zip::result::ZipError| ArchiveError::Zip(e.to_string());
    let mut zip = zip::ZipArchive::new(open_archive(archive)?).map_err(zip_err)?;

    // The central directory lists everything up front: reject a bad archive
    // before a single byte is written.
    if zip.len() as u64 > unpacker.limits.max_entries {
        return Err(ArchiveError::TooManyEntries(unpacker.limits.max_entries));
    }
    let mut declared = 0u64;
    for i in 0..zip.len() {
        let entry = zip.by_index_data(i).map_err(zip_err)?;
        let name = entry.name().map_err(zip_err)?;
        normalize(name.as_bytes())?;
        declared = declared.saturating_add(entry.size());
    }
    if declared > unpacker.limits.max_bytes {
        return Err(ArchiveError::TooLarge(unpacker.limits.max_bytes));
    }

    for i in 0..zip.len() {
        let mut entry = zip.by_index(i).map_err(zip_err)?;
        let name = entry.name().map_err(zip_err)?.into_owned();
        let path = normalize(name.as_bytes())?;
        let mode = entry.unix_mode();
        unpacker.count_entry()?;
        if entry.is_dir() {
            unpacker.directory(&path, &name, mode)?;
        } else if entry.is_symlink() {
            let mut target = Vec::new();
            (&mut entry)
                .take(4096)
                .read_to_end(&mut target)
                .map_err(|e| ArchiveError::Zip(e.to_string()))?;
            unpacker.symlink(&path, &name, &target)?;
        } else {
            unpacker.file(&path, &name, &mut entry, mode, ArchiveError::Zip)?;
        }
    }
    Ok(())
}

fn unpack_tar_gz(archive: &Path, unpacker: &mut Unpacker<'_>) -> Result<(), ArchiveError> {
    use tar::EntryType;
    let tar_err = |e: io::Error| ArchiveError::Tar(e.to_string());
    let gz = flate2::read::MultiGzDecoder::new(open_archive(archive)?);
    let mut tar = tar::Archive::new(gz);
    for entry in tar.entries().map_err(tar_err)? {
        let mut entry = entry.map_err(tar_err)?;
        let raw_name = entry.path_bytes().into_owned();
        let name = String::from_utf8_lossy(&raw_name).into_owned();
        let kind = entry.header().entry_type();
        if matches!(
            kind,
            EntryType::XGlobalHeader
                | EntryType::XHeader
                | EntryType::GNULongName
                | EntryType::GNULongLink
        ) {
            continue;
        }
        let path = normalize(&raw_name)?;
        unpacker.count_entry()?;
        let mode = entry.header().mode().ok();
        match kind {
            EntryType::Regular | EntryType::Continuous => {
                unpacker.file(&path, &name, &mut entry, mode, ArchiveError::Tar)?
            }
            EntryType::Directory => unpacker.directory(&path, &name, mode)?,
            EntryType::Symlink => {
                let target = entry.link_name_bytes().unwrap_or_default().into_owned();
                unpacker.symlink(&path, &name, &target)?;
            }
            EntryType::Link => {
                let target = entry.link_name_bytes().unwrap_or_default().into_owned();
                unpacker.hard_link(&path, &name, &target)?;
            }
            other => tracing::warn!(entry = %name, kind = ?other, "skipping special archive entry"),
        }
    }
    Ok(())
}

/// An entry path as components below the target directory (empty: the
/// directory itself).
type RelPath = Vec<Vec<u8>>;

/// Normalises an archive path, refusing anything that would leave the root.
fn normalize(raw: &[u8]) -> Result<RelPath, ArchiveError> {
    let name = || String::from_utf8_lossy(raw).into_owned();
    if raw.contains(&0) {
        return Err(ArchiveError::InvalidName(name()));
    }
    if raw.starts_with(b"/") {
        return Err(ArchiveError::AbsolutePath(name()));
    }
    let mut parts: RelPath = Vec::new();
    for part in raw.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                if parts.pop().is_none() {
                    return Err(ArchiveError::Escapes(name()));
                }
            }
            _ => parts.push(part.to_vec()),
        }
    }
    Ok(parts)
}

/// Whether a symlink at `link` (below the root) pointing at `target` stays
/// inside: relative, leading `..` only, never above the root.
fn symlink_stays_inside(link: &RelPath, target: &[u8]) -> bool {
    if target.is_empty() || target.starts_with(b"/") || target.contains(&0) {
        return false;
    }
    let mut depth = link.len().saturating_sub(1);
    let mut descended = false;
    for part in target.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                if descended || depth == 0 {
                    return false;
                }
                depth -= 1;
            }
            _ => descended = true,
        }
    }
    true
}

struct Unpacker<'a> {
    root: PathBuf,
    limits: ArchiveLimits,
    cancel: Option<&'a CancellationToken>,
    stats: UnpackStats,
    /// Directories known to be real (not symlinks) and ours to write in.
    real_dirs: HashSet<PathBuf>,
    /// Modes to give directories once everything is written.
    dir_modes: Vec<(PathBuf, u32)>,
    /// What this unpack created, in order, for rolling back.
    created: Vec<PathBuf>,
}

impl<'a> Unpacker<'a> {
    fn new(root: &Path, limits: ArchiveLimits, cancel: Option<&'a CancellationToken>) -> Self {
        Self {
            root: root.to_owned(),
            limits,
            cancel,
            stats: UnpackStats::default(),
            real_dirs: HashSet::new(),
            dir_modes: Vec::new(),
            created: Vec::new(),
        }
    }

    fn io(&self, path: &Path) -> impl FnOnce(io::Error) -> ArchiveError {
        let path = path.to_owned();
        move |source| ArchiveError::Io { path, source }
    }

    fn check_cancel(&self) -> Result<(), ArchiveError> {
        match self.cancel {
            Some(token) if token.is_cancelled() => Err(ArchiveError::Cancelled),
            _ => Ok(()),
        }
    }

    fn count_entry(&mut self) -> Result<(), ArchiveError> {
        self.check_cancel()?;
        self.stats.entries += 1;
        if self.stats.entries > self.limits.max_entries {
            return Err(ArchiveError::TooManyEntries(self.limits.max_entries));
        }
        Ok(())
    }

    /// Makes sure every directory of `parts` exists as a real directory,
    /// creating what is missing; returns the full path.
    fn ensure_dirs(&mut self, parts: &[Vec<u8>], name: &str) -> Result<PathBuf, ArchiveError> {
        let mut path = self.root.clone();
        for part in parts {
            path.push(OsStr::from_bytes(part));
            if self.real_dirs.contains(&path) {
                continue;
            }
            match fs::symlink_metadata(&path) {
                Ok(meta) if meta.is_dir() => {}
                Ok(meta) if meta.file_type().is_symlink() => {
                    return Err(ArchiveError::ThroughSymlink(name.to_owned()));
                }
                Ok(_) => return Err(ArchiveError::Conflict(name.to_owned())),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    fs::create_dir(&path).map_err(self.io(&path))?;
                    self.created.push(path.clone());
                }
                Err(e) => return Err(self.io(&path)(e)),
            }
            self.real_dirs.insert(path.clone());
        }
        Ok(path)
    }

    /// Prepares the place of a non-directory entry: real parent directories,
    /// and no file or symlink left at the path itself.
    fn make_room(&mut self, parts: &RelPath, name: &str) -> Result<PathBuf, ArchiveError> {
        let Some((last, parents)) = parts.split_last() else {
            return Err(ArchiveError::InvalidName(name.to_owned()));
        };
        let mut path = self.ensure_dirs(parents, name)?;
        path.push(OsStr::from_bytes(last));
        match fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_dir() => return Err(ArchiveError::Conflict(name.to_owned())),
            Ok(_) => fs::remove_file(&path).map_err(self.io(&path))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(self.io(&path)(e)),
        }
        Ok(path)
    }

    fn directory(
        &mut self,
        parts: &RelPath,
        name: &str,
        mode: Option<u32>,
    ) -> Result<(), ArchiveError> {
        let path = self.ensure_dirs(parts, name)?;
        if let Some(mode) = mode.map(|m| m & 0o777).filter(|&m| m != 0) {
            self.dir_modes.push((path, mode));
        }
        Ok(())
    }

    fn file(
        &mut self,
        parts: &RelPath,
        name: &str,
        reader: &mut dyn Read,
        mode: Option<u32>,
        read_error: fn(String) -> ArchiveError,
    ) -> Result<(), ArchiveError> {
        let path = self.make_room(parts, name)?;
        // create_new: never follows a symlink that raced into place.
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&path)
            .map_err(self.io(&path))?;
        self.created.push(path.clone());
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            self.check_cancel()?;
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(read_error(e.to_string())),
            };
            self.stats.bytes += n as u64;
            if self.stats.bytes > self.limits.max_bytes {
                return Err(ArchiveError::TooLarge(self.limits.max_bytes));
            }
            file.write_all(&buf[..n]).map_err(self.io(&path))?;
        }
        if let Some(mode) = mode.map(|m| m & 0o777).filter(|&m| m != 0) {
            file.set_permissions(Permissions::from_mode(mode))
                .map_err(self.io(&path))?;
        }
        Ok(())
    }

    fn symlink(&mut self, parts: &RelPath, name: &str, target: &[u8]) -> Result<(), ArchiveError> {
        if !symlink_stays_inside(parts, target) {
            return Err(ArchiveError::SymlinkEscapes {
                name: name.to_owned(),
                target: String::from_utf8_lossy(target).into_owned(),
            });
        }
        let path = self.make_room(parts, name)?;
        std::os::unix::fs::symlink(OsStr::from_bytes(target), &path).map_err(self.io(&path))?;
        self.created.push(path);
        Ok(())
    }

    fn hard_link(
        &mut self,
        parts: &RelPath,
        name: &str,
        target: &[u8],
    ) -> Result<(), ArchiveError> {
        let bad = || ArchiveError::BadHardLink {
            name: name.to_owned(),
            target: String::from_utf8_lossy(target).into_owned(),
        };
        let target_parts = normalize(target).map_err(|_| bad())?;
        // The source must be a regular file reached through real directories.
        let mut source = self.root.clone();
        for (i, part) in target_parts.iter().enumerate() {
            source.push(OsStr::from_bytes(part));
            let meta = fs::symlink_metadata(&source).map_err(|_| bad())?;
            let last = i + 1 == target_parts.len();
            if (last && !meta.is_file()) || (!last && !meta.is_dir()) {
                return Err(bad());
            }
        }
        if target_parts.is_empty() {
            return Err(bad());
        }
        let path = self.make_room(parts, name)?;
        fs::hard_link(&source, &path).map_err(self.io(&path))?;
        self.created.push(path);
        Ok(())
    }

    /// Directory modes go on last so a read-only directory can still be
    /// filled; deepest first.
    fn apply_dir_modes(&mut self) -> Result<(), ArchiveError> {
        let mut modes = std::mem::take(&mut self.dir_modes);
        modes.sort_by_key(|(path, _)| std::cmp::Reverse(path.components().count()));
        for (path, mode) in modes {
            fs::set_permissions(&path, Permissions::from_mode(mode)).map_err(self.io(&path))?;
        }
        Ok(())
    }

    /// Removes everything this unpack created, newest first.
    fn roll_back(&mut self) {
        for path in self.created.drain(..).rev() {
            let removed = match fs::symlink_metadata(&path) {
                Ok(meta) if meta.is_dir() => fs::remove_dir(&path),
                Ok(_) => fs::remove_file(&path),
                Err(_) => Ok(()),
            };
            if let Err(e) = removed {
                tracing::debug!(path = %path.display(), error = %e, "could not roll back");
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
