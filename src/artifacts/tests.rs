use std::collections::BTreeSet;
use std::sync::atomic::AtomicUsize;

use tempfile::TempDir;

use std::fs;
use std::sync::atomic::Ordering;

use tokio::sync::mpsc;

use super::upload::scrub_url;
use super::*;
use crate::testing::eventually;

/// What the fake uploader received.
#[derive(Debug, Clone)]
struct Uploaded {
    path: PathBuf,
    bytes: Vec<u8>,
    url: String,
    content_type: String,
}

type Log<T> = Arc<Mutex<Vec<T>>>;

/// An uploader that copies the file's bytes, failing the first
/// `fail_first` calls.
fn fake_upload(fail_first: usize) -> (UploadFn, Log<Uploaded>) {
    let log: Log<Uploaded> = Log::default();
    let calls = Arc::new(AtomicUsize::new(0));
    let sink = log.clone();
    let upload: UploadFn = Arc::new(move |job: UploadJob| {
        let sink = sink.clone();
        let call = calls.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            if call < fail_first {
                return Err(format!("HTTP 503 from {}", job.url));
            }
            let bytes = tokio::fs::read(&job.path)
                .await
                .map_err(|e| e.to_string())?;
            sink.lock().unwrap().push(Uploaded {
                path: job.path,
                bytes,
                url: job.url,
                content_type: job.content_type,
            });
            Ok(())
        })
    });
    (upload, log)
}

fn response(filename: &str, filepath: &str) -> wire::ArtifactUploadResponse {
    wire::ArtifactUploadResponse {
        filename: filename.into(),
        filepath: filepath.into(),
        presigned_url: format!("https://bucket.example/up/{filename}?X-Amz-Signature=s3cr3t"),
        content_type: "text/plain".into(),
    }
}

/// Artifacts plus a simulated client that answers every announcement.
struct Harness {
    artifacts: Artifacts,
    announced: Log<(String, String)>,
    uploads: Log<Uploaded>,
    dir: TempDir,
    root: PathBuf,
}

impl Harness {
    fn new() -> Self {
        Self::failing(0)
    }

    fn failing(fail_first: usize) -> Self {
        let (outbox, mut rx) = Outbox::channel(64);
        let (upload, uploads) = fake_upload(fail_first);
        let artifacts = Artifacts::new(outbox, upload, SessionSecrets::default());
        let announced = Log::default();
        let (client, log) = (artifacts.clone(), announced.clone());
        tokio::spawn(async move {
            while let Some(message) = rx.recv().await {
                if let OutboundMessage::ArtifactUploadRequestMessage { filename, filepath } =
                    message
                {
                    log.lock()
                        .unwrap()
                        .push((filename.clone(), filepath.clone()));
                    client.on_upload_response(response(&filename, &filepath));
                }
            }
        });
        let dir = TempDir::new().unwrap();
        let root = fs::canonicalize(dir.path()).unwrap();
        Self {
            artifacts,
            announced,
            uploads,
            dir,
            root,
        }
    }

    fn watch(&self, ignore: Option<&str>) {
        self.artifacts
            .watch(&[self.root.to_str().unwrap().to_owned()], ignore)
            .unwrap();
    }

    async fn flush(&self) -> FlushReport {
        self.artifacts.flush(Duration::from_secs(10)).await
    }

    fn names(&self) -> BTreeSet<String> {
        self.announced
            .lock()
            .unwrap()
            .iter()
            .map(|(name, _)| name.clone())
            .collect()
    }

    fn announced_count(&self) -> usize {
        self.announced.lock().unwrap().len()
    }

    fn uploaded(&self) -> Vec<Uploaded> {
        self.uploads.lock().unwrap().clone()
    }
}

fn write(path: &Path, bytes: &[u8]) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).unwrap();
    }
    fs::write(path, bytes).unwrap();
}

fn append(path: &Path, bytes: &[u8]) {
    use std::io::Write;
    let mut file = fs::OpenOptions::new().append(true).open(path).unwrap();
    file.write_all(bytes).unwrap();
}

#[tokio::test]
async fn new_file_is_announced_once_with_name_and_absolute_path() {
    let h = Harness::new();
    h.watch(None);
    let file = h.root.join("report.txt");
    write(&file, b"hello");
    // Announced by the watcher on close-after-write, without a flush.
    eventually("the announcement", || h.announced_count() == 1).await;
    eventually("the upload", || h.uploaded().len() == 1).await;
    let report = h.flush().await;
    assert_eq!(report.announced, 1);
    assert_eq!(report.uploaded, 1);
    assert_eq!(report.timed_out, 0);
    assert_eq!(
        *h.announced.lock().unwrap(),
        vec![("report.txt".to_owned(), file.to_str().unwrap().to_owned())]
    );
    let up = &h.uploaded()[0];
    assert_eq!(up.path, file);
    assert_eq!(up.bytes, b"hello");
    assert_eq!(up.content_type, "text/plain");
    assert!(up.url.starts_with("https://bucket.example/up/report.txt?"));
    assert_eq!(h.flush().await, FlushReport::default());
}

#[tokio::test]
async fn file_written_without_closing_is_announced_once_stable() {
    use std::io::Write;
    let h = Harness::new();
    h.watch(None);
    let mut open = fs::File::create(h.root.join("live.log")).unwrap();
    open.write_all(b"still open").unwrap();
    open.flush().unwrap();
    eventually("the announcement", || h.announced_count() == 1).await;
    assert_eq!(h.names(), BTreeSet::from(["live.log".to_owned()]));
    drop(open);
}

#[tokio::test]
async fn files_in_new_nested_dirs_are_found_without_a_flush() {
    let h = Harness::new();
    h.watch(None);
    // The file lands before the watcher can add the new dirs' watches.
    write(&h.root.join("a/b/c/deep.txt"), b"deep");
    eventually("the announcement", || h.announced_count() == 1).await;
    write(&h.root.join("a/b/c/d/deeper.txt"), b"deeper");
    eventually("the second announcement", || h.announced_count() == 2).await;
    let report = h.flush().await;
    assert_eq!((report.announced, report.uploaded), (2, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_files_is_caught_up_without_a_flush() {
    let h = Harness::new();
    h.watch(None);
    let count = 2_000;
    for i in 0..count {
        write(&h.root.join(format!("f{}/{i}.txt", i % 10)), b"x");
    }
    eventually("every announcement", || {
        let announced = h.announced_count();
        assert!(announced <= count, "announced {announced} times");
        announced == count
    })
    .await;
    let report = h.flush().await;
    assert_eq!((report.announced, report.uploaded), (count, count));
    let unique: BTreeSet<String> = h
        .announced
        .lock()
        .unwrap()
        .iter()
        .map(|(_, p)| p.clone())
        .collect();
    assert_eq!(unique.len(), count);
}

#[tokio::test]
async fn preexisting_files_are_the_baseline() {
    let h = Harness::new();
    write(&h.root.join("old.txt"), b"old");
    write(&h.root.join("sub/older.txt"), b"older");
    h.watch(None);
    let report = h.flush().await;
    assert_eq!(report, FlushReport::default());
    assert_eq!(h.announced_count(), 0);
}

#[tokio::test]
async fn modified_file_is_announced_again() {
    let h = Harness::new();
    let old = h.root.join("old.txt");
    write(&old, b"v1");
    h.watch(None);
    let fresh = h.root.join("fresh.txt");
    write(&fresh, b"a");
    assert_eq!(h.flush().await.uploaded, 1);
    append(&fresh, b"b");
    append(&old, b" v2");
    let report = h.flush().await;
    assert_eq!((report.announced, report.uploaded), (2, 2));
    let uploads = h.uploaded();
    let last = |path: &Path| {
        uploads
            .iter()
            .rev()
            .find(|u| u.path == path)
            .unwrap()
            .bytes
            .clone()
    };
    assert_eq!(last(&fresh), b"ab");
    assert_eq!(last(&old), b"v1 v2");
    assert_eq!(h.announced_count(), 3);
}

#[tokio::test]
async fn empty_file_waits_for_content() {
    let h = Harness::new();
    h.watch(None);
    let file = h.root.join("later.txt");
    write(&file, b"");
    assert_eq!(h.flush().await.announced, 0);
    append(&file, b"content");
    let report = h.flush().await;
    assert_eq!((report.announced, report.uploaded), (1, 1));
    assert_eq!(h.uploaded()[0].bytes, b"content");
}

#[tokio::test]
async fn new_nested_dirs_and_repeated_names_are_separate_artifacts() {
    let h = Harness::new();
    h.watch(None);
    let a = h.root.join("run1/deep/out.txt");
    let b = h.root.join("run2/out.txt");
    write(&a, b"first");
    write(&b, b"second");
    let report = h.flush().await;
    assert_eq!((report.announced, report.uploaded), (2, 2));
    let paths: BTreeSet<String> = h
        .announced
        .lock()
        .unwrap()
        .iter()
        .map(|(name, path)| {
            assert_eq!(name, "out.txt");
            path.clone()
        })
        .collect();
    let expected = BTreeSet::from([
        a.to_str().unwrap().to_owned(),
        b.to_str().unwrap().to_owned(),
    ]);
    assert_eq!(paths, expected);
    let mut bytes: Vec<Vec<u8>> = h.uploaded().into_iter().map(|u| u.bytes).collect();
    bytes.sort();
    assert_eq!(bytes, vec![b"first".to_vec(), b"second".to_vec()]);
}

#[tokio::test]
async fn pinned_ignore_content_applies_and_is_replaced() {
    let h = Harness::new();
    // Pinned content beats both the ignore file and the defaults.
    write(&h.root.join(IGNORE_FILE), b"*.txt\n");
    h.watch(Some("*.log\nsecret/\n"));
    write(&h.root.join("a.log"), b"x");
    write(&h.root.join("secret/key.txt"), b"x");
    write(&h.root.join("node_modules/m.js"), b"x");
    write(&h.root.join("keep.txt"), b"x");
    h.flush().await;
    assert_eq!(
        h.names(),
        BTreeSet::from(["keep.txt".to_owned(), "m.js".to_owned()])
    );
    // A later request's content replaces the pin; files the old rules
    // hid (a.log) are part of the baseline, not announced.
    h.watch(Some("*.txt\n"));
    write(&h.root.join("b.log"), b"x");
    write(&h.root.join("c.txt"), b"x");
    h.flush().await;
    assert_eq!(
        h.names(),
        BTreeSet::from(["keep.txt".to_owned(), "m.js".to_owned(), "b.log".to_owned()])
    );
}

#[tokio::test]
async fn artifactignore_file_applies_and_reloads() {
    let h = Harness::new();
    let ignore_file = h.root.join(IGNORE_FILE);
    write(&ignore_file, b"# scratch files\n*.tmp\n");
    h.watch(None);
    write(&h.root.join("x.tmp"), b"x");
    write(&h.root.join("y.txt"), b"y");
    write(
        &h.root.join("node_modules/kept.js"),
        b"defaults are replaced",
    );
    h.flush().await;
    assert_eq!(
        h.names(),
        BTreeSet::from(["y.txt".to_owned(), "kept.js".to_owned()])
    );
    // Edit the rules: the new rule applies, the ignore file itself is
    // never an artifact, and x.tmp (hidden until now) becomes one.
    fs::write(&ignore_file, b"*.dat\n").unwrap();
    write(&h.root.join("z.tmp"), b"z");
    write(&h.root.join("w.dat"), b"w");
    h.flush().await;
    assert_eq!(
        h.names(),
        BTreeSet::from([
            "y.txt".to_owned(),
            "kept.js".to_owned(),
            "z.tmp".to_owned(),
            "x.tmp".to_owned()
        ])
    );
}

#[tokio::test]
async fn default_ignores_apply() {
    let h = Harness::new();
    h.watch(None);
    for ignored in [
        "node_modules/pkg/x.js",
        "sub/node_modules/y.js",
        ".venv/lib/a.py",
        "venv/b.py",
        "env/c.py",
        ".env/d.py",
        "dist/bundle.js",
        "__pycache__/m.pyc",
        ".pytest_cache/v",
    ] {
        write(&h.root.join(ignored), b"x");
    }
    write(&h.root.join("src/app.js"), b"x");
    write(&h.root.join(".env.local"), b"a file, not the .env/ dir");
    let report = h.flush().await;
    assert_eq!(report.announced, 2);
    assert_eq!(
        h.names(),
        BTreeSet::from(["app.js".to_owned(), ".env.local".to_owned()])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_written_just_before_flush_is_uploaded_before_it_returns() {
    let h = Harness::new();
    h.watch(None);
    let file = h.root.join("last-millisecond.txt");
    fs::write(&file, b"just in time").unwrap();
    let report = h.flush().await;
    assert_eq!(report.announced, 1);
    assert_eq!(report.uploaded, 1);
    assert_eq!(report.timed_out, 0);
    let uploads = h.uploaded();
    assert_eq!(uploads.len(), 1);
    assert_eq!(uploads[0].path, file);
    assert_eq!(uploads[0].bytes, b"just in time");
}

#[tokio::test]
async fn flush_is_bounded_when_the_client_never_answers() {
    let (artifacts, mut rx, uploads, _dir, root) = manual();
    write(&root.join("a.txt"), b"a");
    let started = Instant::now();
    let report = artifacts.flush(Duration::from_millis(300)).await;
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(300), "{took:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert_eq!(report.announced, 1);
    assert_eq!(report.timed_out, 1);
    assert_eq!(report.uploaded, 0);
    assert!(matches!(
        rx.try_recv(),
        Ok(OutboundMessage::ArtifactUploadRequestMessage { .. })
    ));
    assert!(uploads.lock().unwrap().is_empty());
}

/// Artifacts with a client the test drives by hand.
fn manual() -> (
    Artifacts,
    mpsc::Receiver<OutboundMessage>,
    Log<Uploaded>,
    TempDir,
    PathBuf,
) {
    let (outbox, rx) = Outbox::channel(8);
    let (upload, uploads) = fake_upload(0);
    let artifacts = Artifacts::new(outbox, upload, SessionSecrets::default());
    let dir = TempDir::new().unwrap();
    let root = fs::canonicalize(dir.path()).unwrap();
    artifacts
        .watch(&[root.to_str().unwrap().to_owned()], None)
        .unwrap();
    (artifacts, rx, uploads, dir, root)
}

async fn next_announcement(rx: &mut mpsc::Receiver<OutboundMessage>) -> (String, String) {
    let message = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("an announcement in time");
    let Some(OutboundMessage::ArtifactUploadRequestMessage { filename, filepath }) = message else {
        panic!("expected an announcement, got {message:?}")
    };
    (filename, filepath)
}

#[tokio::test]
async fn announcements_cut_off_by_the_bound_are_made_by_the_next_flush() {
    // Room for one message: the socket is backed up after that.
    let (outbox, mut rx) = Outbox::channel(1);
    let (upload, uploads) = fake_upload(0);
    let artifacts = Artifacts::new(outbox, upload, SessionSecrets::default());
    let dir = TempDir::new().unwrap();
    artifacts
        .watch(&[dir.path().to_str().unwrap().to_owned()], None)
        .unwrap();
    for name in ["a.txt", "b.txt", "c.txt"] {
        write(&dir.path().join(name), b"x");
    }
    let first = artifacts.flush(Duration::from_millis(300)).await;
    // One fits in the channel (the watcher may have more queued behind
    // it); what the flush's own scan could not send was unrecorded.
    assert!((1..=3).contains(&first.announced), "{first:?}");
    assert_eq!(first.timed_out, first.announced);
    // The client catches up: what was cut off is announced now.
    let client = artifacts.clone();
    tokio::spawn(async move {
        while let Some(OutboundMessage::ArtifactUploadRequestMessage { filename, filepath }) =
            rx.recv().await
        {
            client.on_upload_response(response(&filename, &filepath));
        }
    });
    let second = artifacts.flush(Duration::from_secs(10)).await;
    assert_eq!(first.announced + second.announced, 3);
    assert_eq!(second.timed_out, 0);
    eventually("three uploads", || uploads.lock().unwrap().len() == 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_while_awaiting_an_answer_are_not_announced_twice() {
    let (artifacts, mut rx, uploads, _dir, root) = manual();
    let file = root.join("grow.txt");
    write(&file, b"1");
    let (filename, filepath) = next_announcement(&mut rx).await;
    append(&file, b"2");
    // The pending answer's upload will read "12": no second announcement.
    let flushing = artifacts.clone();
    let flush = tokio::spawn(async move { flushing.flush(Duration::from_secs(10)).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    artifacts.on_upload_response(response(&filename, &filepath));
    let report = flush.await.unwrap();
    assert_eq!(
        (report.announced, report.uploaded, report.timed_out),
        (1, 1, 0)
    );
    assert!(rx.try_recv().is_err(), "announced twice");
    assert_eq!(uploads.lock().unwrap()[0].bytes, b"12");
}

#[tokio::test]
async fn a_flush_does_not_wait_again_for_what_an_earlier_one_gave_up_on() {
    let (artifacts, mut rx, uploads, _dir, root) = manual();
    let file = root.join("unanswered.txt");
    write(&file, b"1");
    let short = Duration::from_millis(100);
    assert_eq!(artifacts.flush(short).await.timed_out, 1);
    let (filename, filepath) = next_announcement(&mut rx).await;
    // Nothing new: the next request's flush returns at once.
    let started = Instant::now();
    let report = artifacts.flush(Duration::from_secs(30)).await;
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(report, FlushReport::default());
    // A change to the file is announced afresh, and a late answer to
    // either announcement uploads the newest bytes once.
    append(&file, b"2");
    assert_eq!(artifacts.flush(short).await.announced, 1);
    assert_eq!(
        next_announcement(&mut rx).await,
        (filename.clone(), filepath.clone())
    );
    artifacts.on_upload_response(response(&filename, &filepath));
    artifacts.on_upload_response(response(&filename, &filepath));
    eventually("the upload", || !uploads.lock().unwrap().is_empty()).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let uploads = uploads.lock().unwrap();
    assert_eq!(uploads.len(), 1);
    assert_eq!(uploads[0].bytes, b"12");
}

#[tokio::test]
async fn responses_for_paths_not_awaiting_an_answer_upload_nothing() {
    let h = Harness::new();
    write(&h.root.join("baseline.txt"), b"present before watching");
    h.watch(None);
    let done = h.root.join("done.txt");
    write(&done, b"x");
    assert_eq!(h.flush().await.uploaded, 1);
    let done_path = done.to_str().unwrap();
    let baseline = h.root.join("baseline.txt");
    for (name, path) in [
        ("passwd", "/etc/passwd"),
        ("baseline.txt", baseline.to_str().unwrap()),
        // Already answered and uploaded: a replay does nothing.
        ("done.txt", done_path),
        ("x", "relative/x"),
    ] {
        h.artifacts.on_upload_response(response(name, path));
    }
    let report = h.flush().await;
    assert_eq!(report, FlushReport::default());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let uploads = h.uploaded();
    assert_eq!(uploads.len(), 1);
    assert_eq!(uploads[0].path, done);
}

#[tokio::test]
async fn dirs_accumulate_and_two_can_be_watched_at_once() {
    let h = Harness::new();
    let a = h.root.join("a");
    let b = h.root.join("b");
    let c = h.root.join("c");
    h.artifacts
        .watch(
            &[
                a.to_str().unwrap().to_owned(),
                b.to_str().unwrap().to_owned(),
            ],
            None,
        )
        .unwrap();
    write(&a.join("one.txt"), b"1");
    write(&b.join("two.txt"), b"2");
    let report = h.flush().await;
    assert_eq!((report.announced, report.uploaded), (2, 2));
    // A later request adds a dir; the earlier ones stay watched.
    h.artifacts
        .watch(&[c.to_str().unwrap().to_owned()], None)
        .unwrap();
    write(&a.join("three.txt"), b"3");
    write(&c.join("four.txt"), b"4");
    write(&h.root.join("outside.txt"), b"not in a watched dir");
    let report = h.flush().await;
    assert_eq!((report.announced, report.uploaded), (2, 2));
    assert_eq!(
        h.names(),
        ["one.txt", "two.txt", "three.txt", "four.txt"]
            .map(String::from)
            .into()
    );
}

#[tokio::test]
async fn symlinks_are_never_announced_or_uploaded() {
    let h = Harness::new();
    let outside = TempDir::new().unwrap();
    write(&outside.path().join("secret.txt"), b"secret");
    let watched = h.root.join("w");
    h.artifacts
        .watch(&[watched.to_str().unwrap().to_owned()], None)
        .unwrap();
    std::os::unix::fs::symlink("/etc/passwd", watched.join("passwd")).unwrap();
    std::os::unix::fs::symlink(outside.path(), watched.join("linked")).unwrap();
    write(&watched.join("real.txt"), b"real");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let report = h.flush().await;
    assert_eq!((report.announced, report.uploaded), (1, 1));
    assert_eq!(h.names(), BTreeSet::from(["real.txt".to_owned()]));
    // Even when asked directly.
    for path in [watched.join("passwd"), watched.join("linked/secret.txt")] {
        h.artifacts
            .on_upload_response(response("x", path.to_str().unwrap()));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(h.uploaded().len(), 1);
}

#[tokio::test]
async fn dir_swapped_for_a_symlink_before_upload_is_refused() {
    let (artifacts, mut rx, uploads, _dir, root) = manual();
    write(&root.join("sub/a.txt"), b"innocent");
    let (filename, filepath) = next_announcement(&mut rx).await;
    let outside = TempDir::new().unwrap();
    write(&outside.path().join("a.txt"), b"secret");
    fs::remove_dir_all(root.join("sub")).unwrap();
    std::os::unix::fs::symlink(outside.path(), root.join("sub")).unwrap();
    artifacts.on_upload_response(response(&filename, &filepath));
    let report = artifacts.flush(Duration::from_secs(10)).await;
    assert_eq!((report.uploaded, report.failed), (0, 1));
    assert!(uploads.lock().unwrap().is_empty());
}

#[tokio::test]
async fn failed_upload_is_reported_and_a_later_change_retries() {
    let h = Harness::failing(1);
    h.watch(None);
    let file = h.root.join("flaky.txt");
    write(&file, b"v1");
    let report = h.flush().await;
    assert_eq!(
        (report.announced, report.uploaded, report.failed),
        (1, 0, 1)
    );
    append(&file, b"v2");
    let report = h.flush().await;
    assert_eq!(
        (report.announced, report.uploaded, report.failed),
        (1, 1, 0)
    );
    assert_eq!(h.uploaded()[0].bytes, b"v1v2");
}

#[tokio::test]
async fn missing_dirs_are_created_and_unusable_ones_are_errors() {
    let h = Harness::new();
    let missing = h.root.join("not/yet/there");
    h.artifacts
        .watch(&[missing.to_str().unwrap().to_owned()], None)
        .unwrap();
    assert!(missing.is_dir());
    let file = h.root.join("plain-file");
    write(&file, b"x");
    let err = h
        .artifacts
        .watch(&[file.to_str().unwrap().to_owned()], None)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("artifacts dir {} is not a directory", file.display())
    );
    let under_file = file.join("sub");
    let err = h
        .artifacts
        .watch(&[under_file.to_str().unwrap().to_owned()], None)
        .unwrap_err();
    assert!(matches!(err, ArtifactError::NotADirectory { .. }), "{err}");
    assert_eq!(
        h.artifacts.watch(&[String::new()], None).unwrap_err(),
        ArtifactError::EmptyPath
    );
    drop(h.dir);
}

#[tokio::test]
async fn flush_without_dirs_and_after_shutdown_returns_at_once() {
    let h = Harness::new();
    assert!(!h.artifacts.is_active());
    let started = Instant::now();
    assert_eq!(
        h.artifacts.flush(Duration::from_secs(30)).await,
        FlushReport::default()
    );
    h.watch(None);
    assert!(h.artifacts.is_active());
    h.artifacts.shutdown();
    assert!(!h.artifacts.is_active());
    write(&h.root.join("after.txt"), b"x");
    assert_eq!(h.flush().await, FlushReport::default());
    assert!(started.elapsed() < Duration::from_secs(2));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(h.announced_count(), 0);
}

#[test]
fn upload_errors_carry_no_query() {
    let url = "https://h/p?sig=abc";
    assert_eq!(
        scrub_url(&format!("error sending request for url ({url})"), url),
        "error sending request for url (https://h/p)"
    );
    assert_eq!(
        scrub_url("bad query sig=abc", url),
        "bad query [query removed]"
    );
}
