use super::*;
use std::io::Cursor;
use zip::write::SimpleFileOptions;

/// What a test archive holds.
pub(crate) enum Item<'a> {
    File(&'a str, &'a [u8], u32),
    Dir(&'a str),
    Symlink(&'a str, &'a str),
}

pub(crate) fn zip_bytes(items: &[Item<'_>]) -> Vec<u8> {
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

pub(crate) fn tar_gz_bytes(items: &[Item<'_>]) -> Vec<u8> {
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
    let stats = unpack_bytes(&zip, ArchiveKind::Zip, dir.path(), ArchiveLimits::default()).unwrap();
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
    let err = unpack_bytes(&zip, ArchiveKind::Zip, &dest, ArchiveLimits::default()).unwrap_err();
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
    let err = unpack_bytes(&zip_bytes(&items), ArchiveKind::Zip, dir.path(), limits).unwrap_err();
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
    let err = unpack_bytes(&tgz, ArchiveKind::TarGz, &dest, ArchiveLimits::default()).unwrap_err();
    assert!(matches!(err, ArchiveError::ThroughSymlink(_)), "{err}");
    assert_eq!(tree(outer.path()), ["work"]);

    let tgz = tar_gz_bytes(&[Item::Symlink("etc", "/etc")]);
    let err = unpack_bytes(&tgz, ArchiveKind::TarGz, &dest, ArchiveLimits::default()).unwrap_err();
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
    let err = unpack_bytes(&tgz, ArchiveKind::TarGz, &dest, ArchiveLimits::default()).unwrap_err();
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
    let err = unpack_bytes(&tgz, ArchiveKind::TarGz, &dest, ArchiveLimits::default()).unwrap_err();
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
