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
