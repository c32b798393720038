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
pub enum ArchiveKind {
    /// `.zip`; every name is checked before anything is written.
    Zip,
    /// Gzip-compressed tar (`.tar.gz`, `.tgz`); checked entry by entry.
    TarGz,
}

impl ArchiveKind {
    /// The kind a file name announces (`.zip`, `.tar.gz`, `.tgz`; any case).
    pub fn from_file_name(name: &str) -> Option<Self> {
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
pub struct ArchiveLimits {
    /// Most bytes written for all entries together.
    pub max_bytes: u64,
    /// Most entries (files, directories, links).
    pub max_entries: u64,
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
pub struct UnpackStats {
    /// Entries unpacked (files, directories and links), as counted against
    /// [`ArchiveLimits::max_entries`].
    pub entries: u64,
    /// File bytes actually written (not the sizes headers declared).
    pub bytes: u64,
}

/// Why an archive was not (completely) unpacked.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
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
pub async fn unpack(
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
pub fn unpack_blocking(
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
pub(crate) mod tests {
    use super::*;
    use std::io::Cursor;
    use zip::write::SimpleFileOptions;

    /// What a test archive holds.
    pub enum Item<'a> {
        File(&'a str, &'a [u8], u32),
        Dir(&'a str),
        Symlink(&'a str, &'a str),
    }

    pub fn zip_bytes(items: &[Item<'_>]) -> Vec<u8> {
        let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
        for item in items {
            match item {
                Item::File(name, data, mode) => {
                    let options = SimpleFileOptions::default()
                        .compression_method(zip::CompressionMethod::Deflated)
                        .unix_permissions(*mode);
                    zip.start_file(*name, options).unwrap();
                    zip.write_all(data).unwrap();
                }
                Item::Dir(name) => zip
                    .add_directory(*name, SimpleFileOptions::default())
                    .unwrap(),
                Item::Symlink(name, target) => zip
                    .add_symlink(*name, *target, SimpleFileOptions::default())
                    .unwrap(),
            }
        }
        zip.finish().unwrap().into_inner()
    }

    pub fn tar_gz_bytes(items: &[Item<'_>]) -> Vec<u8> {
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut tar = tar::Builder::new(gz);
        for item in items {
            let mut header = tar::Header::new_gnu();
            match item {
                Item::File(name, data, mode) => {
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_size(data.len() as u64);
                    header.set_mode(*mode);
                    set_raw_path(&mut header, name);
                    header.set_cksum();
                    tar.append(&header, *data).unwrap();
                }
                Item::Dir(name) => {
                    header.set_entry_type(tar::EntryType::Directory);
                    header.set_size(0);
                    header.set_mode(0o755);
                    set_raw_path(&mut header, name);
                    header.set_cksum();
                    tar.append(&header, io::empty()).unwrap();
                }
                Item::Symlink(name, target) => {
                    header.set_entry_type(tar::EntryType::Symlink);
                    header.set_size(0);
                    header.set_mode(0o777);
                    set_raw_path(&mut header, name);
                    let link = &mut header.as_old_mut().linkname;
                    link[..target.len()].copy_from_slice(target.as_bytes());
                    header.set_cksum();
                    tar.append(&header, io::empty()).unwrap();
                }
            }
        }
        tar.into_inner().unwrap().finish().unwrap()
    }

    /// Writes a name verbatim (the tar builder refuses `..`, as it should).
    fn set_raw_path(header: &mut tar::Header, name: &str) {
        let field = &mut header.as_old_mut().name;
        field.fill(0);
        field[..name.len()].copy_from_slice(name.as_bytes());
    }

    fn unpack_bytes(
        bytes: &[u8],
        kind: ArchiveKind,
        dest: &Path,
        limits: ArchiveLimits,
    ) -> Result<UnpackStats, ArchiveError> {
        let archive = tempfile::NamedTempFile::new().unwrap();
        fs::write(archive.path(), bytes).unwrap();
        unpack_blocking(archive.path(), kind, dest, limits, None)
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    fn tree(dir: &Path) -> Vec<String> {
        let mut out = Vec::new();
        fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
            for entry in fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                out.push(path.strip_prefix(base).unwrap().display().to_string());
                if fs::symlink_metadata(&path).unwrap().is_dir() {
                    walk(base, &path, out);
                }
            }
        }
        walk(dir, dir, &mut out);
        out.sort();
        out
    }

    #[test]
    fn kinds_come_from_names() {
        assert_eq!(ArchiveKind::from_file_name("a.zip"), Some(ArchiveKind::Zip));
        assert_eq!(ArchiveKind::from_file_name("A.ZIP"), Some(ArchiveKind::Zip));
        assert_eq!(
            ArchiveKind::from_file_name("a.tar.gz"),
            Some(ArchiveKind::TarGz)
        );
        assert_eq!(
            ArchiveKind::from_file_name("a.tgz"),
            Some(ArchiveKind::TarGz)
        );
        assert_eq!(ArchiveKind::from_file_name("a.tar"), None);
        assert_eq!(ArchiveKind::from_file_name("zip"), None);
    }

    #[test]
    fn normalization() {
        assert_eq!(
            normalize(b"a/./b//c/").unwrap(),
            [b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]
        );
        assert_eq!(normalize(b"a/../b").unwrap(), [b"b".to_vec()]);
        assert!(normalize(b"./").unwrap().is_empty());
        assert!(matches!(
            normalize(b"a/../../b"),
            Err(ArchiveError::Escapes(_))
        ));
        assert!(matches!(
            normalize(b"/etc/passwd"),
            Err(ArchiveError::AbsolutePath(_))
        ));
        assert!(matches!(
            normalize(b"a\0b"),
            Err(ArchiveError::InvalidName(_))
        ));
    }

    #[test]
    fn symlink_targets() {
        let at = |p: &str| normalize(p.as_bytes()).unwrap();
        assert!(symlink_stays_inside(&at("l"), b"target"));
        assert!(symlink_stays_inside(&at("d/l"), b"../x/y"));
        assert!(symlink_stays_inside(&at("d/l"), b"."));
        assert!(!symlink_stays_inside(&at("l"), b".."));
        assert!(!symlink_stays_inside(&at("d/l"), b"../../x"));
        assert!(!symlink_stays_inside(&at("l"), b"/etc/passwd"));
        assert!(!symlink_stays_inside(&at("d/l"), b"x/../.."));
        assert!(!symlink_stays_inside(&at("d/l"), b"x/.."));
        assert!(!symlink_stays_inside(&at("l"), b""));
    }

    #[test]
    fn zip_keeps_tree_and_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let zip = zip_bytes(&[
            Item::Dir("bin/"),
            Item::File("bin/run.sh", b"#!/bin/sh\necho hi\n", 0o755),
            Item::File("deep/er/data.txt", b"data", 0o644),
            Item::File("suid", b"x", 0o4755),
            Item::Symlink("bin/link", "run.sh"),
        ]);
        let stats =
            unpack_bytes(&zip, ArchiveKind::Zip, dir.path(), ArchiveLimits::default()).unwrap();
        assert_eq!(stats.entries, 5);
        let root = dir.path();
        assert_eq!(fs::read(root.join("deep/er/data.txt")).unwrap(), b"data");
        assert_eq!(mode(&root.join("bin/run.sh")), 0o755);
        assert_eq!(mode(&root.join("deep/er/data.txt")), 0o644);
        assert_eq!(mode(&root.join("suid")), 0o755, "setuid is dropped");
        assert_eq!(
            fs::read_link(root.join("bin/link")).unwrap(),
            Path::new("run.sh")
        );
        let out = std::process::Command::new(root.join("bin/run.sh"))
            .output()
            .unwrap();
        assert_eq!(out.stdout, b"hi\n");
    }

    #[test]
    fn zip_slip_writes_nothing_at_all() {
        let outer = tempfile::tempdir().unwrap();
        let dest = outer.path().join("work");
        fs::create_dir(&dest).unwrap();
        let zip = zip_bytes(&[
            Item::File("ok.txt", b"fine", 0o644),
            Item::File("../evil.txt", b"evil", 0o644),
        ]);
        let err =
            unpack_bytes(&zip, ArchiveKind::Zip, &dest, ArchiveLimits::default()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "archive entry \"../evil.txt\" escapes the target directory"
        );
        assert_eq!(
            tree(outer.path()),
            ["work"],
            "names are checked before anything is written"
        );
    }

    #[test]
    fn absolute_zip_entries_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let zip = zip_bytes(&[Item::File("/tmp/abs.txt", b"x", 0o644)]);
        let err =
            unpack_bytes(&zip, ArchiveKind::Zip, dir.path(), ArchiveLimits::default()).unwrap_err();
        assert!(matches!(err, ArchiveError::AbsolutePath(_)), "{err}");
        assert!(tree(dir.path()).is_empty());
    }

    #[test]
    fn zip_symlinks_out_are_refused_and_rolled_back() {
        let dir = tempfile::tempdir().unwrap();
        let zip = zip_bytes(&[
            Item::File("a/first.txt", b"x", 0o644),
            Item::Symlink("a/out", "../../etc"),
        ]);
        let err =
            unpack_bytes(&zip, ArchiveKind::Zip, dir.path(), ArchiveLimits::default()).unwrap_err();
        assert!(matches!(err, ArchiveError::SymlinkEscapes { .. }), "{err}");
        assert!(tree(dir.path()).is_empty(), "{:?}", tree(dir.path()));
    }

    #[test]
    fn zip_bombs_stop_at_the_byte_limit() {
        let dir = tempfile::tempdir().unwrap();
        let zeros = vec![0u8; 1024 * 1024];
        let zip = zip_bytes(&[
            Item::File("a", &zeros, 0o644),
            Item::File("b", &zeros, 0o644),
        ]);
        assert!(zip.len() < 20_000, "compresses well: {}", zip.len());
        let limits = ArchiveLimits {
            max_bytes: 1536 * 1024,
            ..ArchiveLimits::default()
        };
        let err = unpack_bytes(&zip, ArchiveKind::Zip, dir.path(), limits).unwrap_err();
        assert_eq!(
            err.to_string(),
            "archive unpacks to more than 1572864 bytes"
        );
        assert!(tree(dir.path()).is_empty());
    }

    #[test]
    fn tar_bombs_count_bytes_actually_written() {
        let dir = tempfile::tempdir().unwrap();
        let zeros = vec![0u8; 1024 * 1024];
        let tgz = tar_gz_bytes(&[
            Item::File("a", &zeros, 0o644),
            Item::File("b", &zeros, 0o644),
        ]);
        let limits = ArchiveLimits {
            max_bytes: 1536 * 1024,
            ..ArchiveLimits::default()
        };
        let err = unpack_bytes(&tgz, ArchiveKind::TarGz, dir.path(), limits).unwrap_err();
        assert!(matches!(err, ArchiveError::TooLarge(_)), "{err}");
        assert!(tree(dir.path()).is_empty());
    }

    #[test]
    fn entry_count_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let names: Vec<String> = (0..20).map(|i| format!("f{i}")).collect();
        let items: Vec<_> = names.iter().map(|n| Item::File(n, b"", 0o644)).collect();
        let limits = ArchiveLimits {
            max_entries: 10,
            ..ArchiveLimits::default()
        };
        let err =
            unpack_bytes(&zip_bytes(&items), ArchiveKind::Zip, dir.path(), limits).unwrap_err();
        assert_eq!(err.to_string(), "archive has more than 10 entries");
        let err = unpack_bytes(
            &tar_gz_bytes(&items),
            ArchiveKind::TarGz,
            dir.path(),
            limits,
        )
        .unwrap_err();
        assert!(matches!(err, ArchiveError::TooManyEntries(10)), "{err}");
        assert!(tree(dir.path()).is_empty());
    }

    #[test]
    fn tar_gz_keeps_tree_permissions_and_inside_links() {
        let dir = tempfile::tempdir().unwrap();
        let tgz = tar_gz_bytes(&[
            Item::Dir("./pkg"),
            Item::File("./pkg/bin/tool", b"#!/bin/sh\n", 0o755),
            Item::File("pkg/lib/a/b/c.txt", b"nested", 0o600),
            Item::File("pkg/setgid", b"x", 0o2750),
            Item::Symlink("pkg/current", "lib/a"),
            Item::Symlink("pkg/lib/up", "../bin/tool"),
        ]);
        unpack_bytes(
            &tgz,
            ArchiveKind::TarGz,
            dir.path(),
            ArchiveLimits::default(),
        )
        .unwrap();
        let root = dir.path().join("pkg");
        assert_eq!(mode(&root.join("bin/tool")), 0o755);
        assert_eq!(mode(&root.join("lib/a/b/c.txt")), 0o600);
        assert_eq!(mode(&root.join("setgid")), 0o750);
        assert_eq!(fs::read(root.join("current/b/c.txt")).unwrap(), b"nested");
        assert_eq!(fs::read(root.join("lib/up")).unwrap(), b"#!/bin/sh\n");
    }

    #[test]
    fn tar_links_cannot_be_chained_out() {
        let outer = tempfile::tempdir().unwrap();
        let dest = outer.path().join("work");
        fs::create_dir(&dest).unwrap();
        // x -> . is harmless alone; x/y -> .. would then point above `work`.
        let tgz = tar_gz_bytes(&[
            Item::Symlink("x", "."),
            Item::Symlink("x/y", ".."),
            Item::File("x/y/evil", b"e", 0o644),
        ]);
        let err =
            unpack_bytes(&tgz, ArchiveKind::TarGz, &dest, ArchiveLimits::default()).unwrap_err();
        assert!(matches!(err, ArchiveError::ThroughSymlink(_)), "{err}");
        assert_eq!(tree(outer.path()), ["work"]);

        let tgz = tar_gz_bytes(&[Item::Symlink("etc", "/etc")]);
        let err =
            unpack_bytes(&tgz, ArchiveKind::TarGz, &dest, ArchiveLimits::default()).unwrap_err();
        assert!(matches!(err, ArchiveError::SymlinkEscapes { .. }), "{err}");
    }

    #[test]
    fn tar_slip_and_existing_symlinks_are_refused() {
        let outer = tempfile::tempdir().unwrap();
        let dest = outer.path().join("work");
        fs::create_dir(&dest).unwrap();
        let tgz = tar_gz_bytes(&[
            Item::File("a.txt", b"a", 0o644),
            Item::File("../evil.txt", b"e", 0o644),
        ]);
        let err =
            unpack_bytes(&tgz, ArchiveKind::TarGz, &dest, ArchiveLimits::default()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "archive entry \"../evil.txt\" escapes the target directory"
        );
        assert_eq!(
            tree(outer.path()),
            ["work"],
            "the entry before it is rolled back"
        );

        // A symlink already in the directory is never written through...
        std::os::unix::fs::symlink(outer.path(), dest.join("sneaky")).unwrap();
        let tgz = tar_gz_bytes(&[Item::File("sneaky/evil.txt", b"e", 0o644)]);
        let err =
            unpack_bytes(&tgz, ArchiveKind::TarGz, &dest, ArchiveLimits::default()).unwrap_err();
        assert!(matches!(err, ArchiveError::ThroughSymlink(_)), "{err}");
        // ...and a file entry replaces a symlink at its own path.
        let tgz = tar_gz_bytes(&[Item::File("sneaky", b"now a file", 0o644)]);
        unpack_bytes(&tgz, ArchiveKind::TarGz, &dest, ArchiveLimits::default()).unwrap();
        assert_eq!(fs::read(dest.join("sneaky")).unwrap(), b"now a file");
        assert_eq!(tree(outer.path()), ["work", "work/sneaky"]);
    }

    #[test]
    fn cancellation_stops_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let archive = tempfile::NamedTempFile::new().unwrap();
        fs::write(archive.path(), zip_bytes(&[Item::File("a", b"x", 0o644)])).unwrap();
        let token = CancellationToken::new();
        token.cancel();
        let err = unpack_blocking(
            archive.path(),
            ArchiveKind::Zip,
            dir.path(),
            ArchiveLimits::default(),
            Some(&token),
        )
        .unwrap_err();
        assert!(matches!(err, ArchiveError::Cancelled));
        assert!(tree(dir.path()).is_empty());
    }

    #[test]
    fn garbage_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = unpack_bytes(
            b"not a zip",
            ArchiveKind::Zip,
            dir.path(),
            ArchiveLimits::default(),
        )
        .unwrap_err();
        assert!(err.to_string().starts_with("invalid zip archive"), "{err}");
        let err = unpack_bytes(
            b"not gzip",
            ArchiveKind::TarGz,
            dir.path(),
            ArchiveLimits::default(),
        )
        .unwrap_err();
        assert!(
            err.to_string().starts_with("invalid tar.gz archive"),
            "{err}"
        );
    }
}
