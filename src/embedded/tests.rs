use super::*;
use std::os::unix::fs::PermissionsExt;

static TREE: EmbeddedTree = EmbeddedTree {
    name: "demo",
    digest: "00ff",
    files: &[
        EmbeddedFile {
            path: "pkg/lib/util.mjs",
            contents: b"export const x = 1;\n",
            executable: false,
        },
        EmbeddedFile {
            path: "pkg/run.sh",
            contents: b"#!/bin/sh\necho hi\n",
            executable: true,
        },
    ],
};

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

#[test]
fn unpacks_every_file_with_its_mode_into_a_versioned_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = CacheDirs::only(&tmp.path().join("cache"));
    let installed = TREE.unpack(&cache).unwrap();
    assert!(installed.fresh);
    assert_eq!(installed.dir, tmp.path().join("cache/demo-files-00ff"));
    let util = installed.dir.join("pkg/lib/util.mjs");
    assert_eq!(fs::read(&util).unwrap(), b"export const x = 1;\n");
    assert_eq!(mode(&util), 0o644);
    assert_eq!(mode(&installed.dir.join("pkg/run.sh")), 0o755);
    // Only the copy is left in the cache directory: no staging.
    assert_eq!(names_in(&tmp.path().join("cache")), ["demo-files-00ff"]);
}

#[test]
fn a_copy_in_place_is_reused_without_writing() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = CacheDirs::only(tmp.path());
    let first = TREE.unpack(&cache).unwrap();
    let inode = fs::metadata(first.dir.join("pkg/run.sh")).unwrap().ino();
    let again = TREE
        .install(&cache, "files", |_| -> Result<(), String> {
            panic!("prepare must not run for a copy in place")
        })
        .unwrap();
    assert_eq!(
        again,
        Installed {
            dir: first.dir.clone(),
            fresh: false
        }
    );
    assert_eq!(
        fs::metadata(first.dir.join("pkg/run.sh")).unwrap().ino(),
        inode
    );
}

#[test]
fn prepare_runs_in_staging_before_the_copy_appears() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = CacheDirs::only(tmp.path());
    let final_dir = tmp.path().join("demo-built-00ff");
    let installed = TREE
        .install(&cache, "built", |staging| {
            assert_ne!(staging, final_dir);
            assert!(!final_dir.exists(), "published before prepare finished");
            assert!(staging.join("pkg/run.sh").is_file());
            fs::write(staging.join("pkg/built.txt"), "made by prepare")
        })
        .unwrap();
    assert_eq!(installed.dir, final_dir);
    let built = fs::read_to_string(final_dir.join("pkg/built.txt")).unwrap();
    assert_eq!(built, "made by prepare");
}

#[test]
fn a_failed_prepare_leaves_nothing_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = CacheDirs::only(tmp.path());
    let err = TREE
        .install(&cache, "built", |staging| {
            fs::write(staging.join("half"), "x").unwrap();
            Err("npm exploded")
        })
        .unwrap_err();
    assert!(
        matches!(&err, InstallError::Prepare(m) if m == "npm exploded"),
        "{err}"
    );
    assert!(
        names_in(tmp.path()).is_empty(),
        "{:?}",
        names_in(tmp.path())
    );
    assert_eq!(TREE.installed(&cache, "built"), None);
}

#[test]
fn an_unusable_explicit_dir_is_an_error_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    // A regular file where a directory should be: fails even for root.
    let blocker = tmp.path().join("not-a-dir");
    fs::write(&blocker, "").unwrap();
    let cache = CacheDirs::only(&blocker.join("cache"));
    let err = TREE.unpack(&cache).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, InstallError::Cache { .. }), "{text}");
    assert!(text.contains("not-a-dir/cache"), "{text}");
    assert!(text.contains("--cache-dir"), "{text}");
}

#[test]
fn default_dirs_fall_through_to_a_usable_one() {
    let tmp = tempfile::tempdir().unwrap();
    let blocker = tmp.path().join("not-a-dir");
    fs::write(&blocker, "").unwrap();
    let home = tmp.path().join("home");
    let cache = CacheDirs::defaults(
        Some(blocker.into_os_string()),
        Some(home.clone().into_os_string()),
        tmp.path().join("tmp"),
        0,
    );
    let installed = TREE.unpack(&cache).unwrap();
    assert!(installed.dir.starts_with(home.join(".cache/runtimeuse")));
}

#[test]
fn a_copy_in_a_later_dir_is_found_without_touching_earlier_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let baked = tmp.path().join("home/.cache/runtimeuse");
    TREE.unpack(&CacheDirs::only(&baked)).unwrap();
    let xdg = tmp.path().join("xdg");
    let cache = CacheDirs::defaults(
        Some(xdg.clone().into_os_string()),
        Some(tmp.path().join("home").into_os_string()),
        tmp.path().join("tmp"),
        0,
    );
    let installed = TREE.unpack(&cache).unwrap();
    assert!(!installed.fresh);
    assert!(installed.dir.starts_with(&baked));
    assert!(!xdg.exists(), "a warm start must not write");
}

#[test]
fn candidate_directories_in_order() {
    let cache = CacheDirs::defaults(
        Some("/xdg".into()),
        Some("/home/u".into()),
        "/tmp".into(),
        1234,
    );
    let paths: Vec<_> = cache.paths().collect();
    assert_eq!(
        paths,
        [
            Path::new("/xdg/runtimeuse"),
            Path::new("/home/u/.cache/runtimeuse"),
            Path::new("/tmp/runtimeuse-1234")
        ]
    );
    // The XDG spec says relative values are ignored.
    let cache = CacheDirs::defaults(Some("rel".into()), Some("".into()), "/tmp".into(), 0);
    assert_eq!(
        cache.paths().collect::<Vec<_>>(),
        [Path::new("/tmp/runtimeuse-0")]
    );
}

#[test]
fn the_temp_fallback_must_be_private() {
    let tmp = tempfile::tempdir().unwrap();
    let uid = nix::unistd::getuid().as_raw();
    let root = tmp.path().join(format!("runtimeuse-{uid}"));
    let cache = CacheDirs::defaults(None, None, tmp.path().to_path_buf(), uid);
    TREE.unpack(&cache).unwrap();
    assert_eq!(mode(&root), 0o700);
    fs::remove_dir_all(&root).unwrap();

    // World-writable: someone else could swap what we run.
    fs::create_dir(&root).unwrap();
    fs::set_permissions(&root, fs::Permissions::from_mode(0o777)).unwrap();
    let err = TREE.unpack(&cache).unwrap_err();
    assert!(err.to_string().contains("not a private directory"), "{err}");
    fs::remove_dir(&root).unwrap();

    // A symlink to a directory elsewhere.
    let elsewhere = tmp.path().join("elsewhere");
    fs::create_dir(&elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &root).unwrap();
    assert!(TREE.unpack(&cache).is_err());
    assert!(names_in(&elsewhere).is_empty());
}

#[test]
fn abandoned_staging_is_removed_and_live_staging_kept() {
    let tmp = tempfile::tempdir().unwrap();
    // A pid that cannot be alive (above the kernel's pid_max).
    let dead = tmp.path().join(".staging-demo-built-99999999-0");
    let live = tmp
        .path()
        .join(format!(".staging-demo-built-{}-7", std::process::id()));
    fs::create_dir_all(dead.join("pkg")).unwrap();
    fs::create_dir_all(&live).unwrap();
    TREE.unpack(&CacheDirs::only(tmp.path())).unwrap();
    assert!(!dead.exists());
    assert!(live.exists());
    assert_eq!(staging_pid(".staging-demo-a-b-42-3"), Some(42));
    assert_eq!(staging_pid(".staging-demo-x-42-3.replaced"), Some(42));
    assert_eq!(staging_pid("demo-files-00ff"), None);
}

#[test]
fn a_dir_without_the_marker_is_replaced() {
    let tmp = tempfile::tempdir().unwrap();
    let junk = tmp.path().join("demo-files-00ff");
    fs::create_dir_all(junk.join("pkg")).unwrap();
    fs::write(junk.join("pkg/leftover"), "x").unwrap();
    let installed = TREE.unpack(&CacheDirs::only(tmp.path())).unwrap();
    assert!(installed.fresh);
    assert!(!installed.dir.join("pkg/leftover").exists());
    assert!(installed.dir.join("pkg/run.sh").is_file());
    assert_eq!(names_in(tmp.path()), ["demo-files-00ff"]);
}

#[test]
fn concurrent_installers_agree() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = CacheDirs::only(tmp.path());
    let threads: Vec<_> = (0..6)
        .map(|_| {
            let cache = cache.clone();
            std::thread::spawn(move || {
                TREE.install(&cache, "built", |staging| {
                    fs::write(staging.join("pkg/built.txt"), "ok")
                })
                .unwrap()
            })
        })
        .collect();
    let dirs: Vec<_> = threads.into_iter().map(|t| t.join().unwrap().dir).collect();
    assert!(dirs.windows(2).all(|w| w[0] == w[1]));
    assert_eq!(
        fs::read_to_string(dirs[0].join("pkg/built.txt")).unwrap(),
        "ok"
    );
    assert_eq!(names_in(tmp.path()), ["demo-built-00ff"]);
}
