//! A command's working directory: checked (and created when missing)
//! before the shell starts, so every problem with it is reported as a
//! problem with the cwd, never as the shell failing to start.

use std::io;
use std::path::{Path, PathBuf};

use nix::errno::Errno;

/// What is wrong with a command's `cwd`; the text ends up in the request's
/// `error_message` ("Command `...` could not start: <this>").
#[derive(Debug, thiserror::Error)]
pub(crate) enum CwdError {
    /// `""` names no directory (and is not "the runtime's": that is `null`).
    #[error("cwd is empty; omit it (or send null) to run in the runtime's working directory")]
    Empty,
    /// Something other than a directory is at that path.
    #[error("cwd {0} is not a directory")]
    NotADirectory(String),
    /// It was missing and could not be created (e.g. a parent is a file,
    /// or is not writable).
    #[error("cwd {cwd} does not exist and cannot be created: {reason}")]
    CannotCreate {
        /// The directory as the client sent it.
        cwd: String,
        /// The OS's reason.
        reason: io::Error,
    },
    /// The runtime may not look at or enter it.
    #[error("cwd {cwd} is not accessible: permission denied")]
    NotPermitted {
        /// The directory as the client sent it.
        cwd: String,
    },
    /// A component of its path is a file, so it can be neither used nor
    /// created.
    #[error("cwd {0} is not a directory: part of its path is a file")]
    ThroughAFile(String),
    /// It vanished between the check and the shell's start.
    #[error("cwd {0} does not exist")]
    Missing(String),
    /// Any other reason it cannot be used (too long a name, a symlink loop).
    #[error("cwd {cwd} cannot be used: {reason}")]
    Unusable {
        /// The directory as the client sent it.
        cwd: String,
        /// The OS's reason.
        reason: io::Error,
    },
}

/// Makes sure `cwd` (if any) is a directory, creating it when missing.
pub(crate) async fn prepare(cwd: Option<&str>) -> Result<Option<PathBuf>, CwdError> {
    let Some(cwd) = cwd else { return Ok(None) };
    if cwd.is_empty() {
        return Err(CwdError::Empty);
    }
    let path = PathBuf::from(cwd);
    match tokio::fs::metadata(&path).await {
        Ok(meta) if meta.is_dir() => Ok(Some(path)),
        Ok(_) => Err(CwdError::NotADirectory(cwd.to_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => tokio::fs::create_dir_all(&path)
            .await
            .map(|()| Some(path))
            .map_err(|reason| CwdError::CannotCreate {
                cwd: cwd.to_owned(),
                reason,
            }),
        Err(reason) => Err(classify(cwd, reason)),
    }
}

/// The cwd's fault behind a failed spawn, if it is one: the child's
/// `chdir` into it failed. `None` for failures that are not about a
/// directory (out of memory, process limits).
pub(crate) fn entry_failure(cwd: &Path, error: &io::Error) -> Option<CwdError> {
    let errno = Errno::from_raw(error.raw_os_error()?);
    let is_about_a_path = matches!(
        errno,
        Errno::ENOENT | Errno::EACCES | Errno::ENOTDIR | Errno::ELOOP | Errno::ENAMETOOLONG
    );
    is_about_a_path.then(|| classify(&cwd.to_string_lossy(), io::Error::from(errno)))
}

/// Names an OS error about the cwd in the cwd's terms.
fn classify(cwd: &str, reason: io::Error) -> CwdError {
    let cwd = cwd.to_owned();
    match reason.raw_os_error().map(Errno::from_raw) {
        Some(Errno::ENOENT) => CwdError::Missing(cwd),
        Some(Errno::ENOTDIR) => CwdError::ThroughAFile(cwd),
        Some(Errno::EACCES | Errno::EPERM) => CwdError::NotPermitted { cwd },
        _ => CwdError::Unusable { cwd, reason },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_cwd_problem_names_the_cwd() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let file_path = file.path().to_string_lossy().into_owned();
        let under_file = format!("{file_path}/sub");
        let cases = [
            ("", "cwd is empty".to_owned()),
            (
                file_path.as_str(),
                format!("cwd {file_path} is not a directory"),
            ),
            (
                under_file.as_str(),
                format!("cwd {under_file} is not a directory: part of its path is a file"),
            ),
        ];
        for (cwd, expected) in cases {
            let err = prepare(Some(cwd)).await.unwrap_err().to_string();
            assert!(err.starts_with(&expected), "{cwd:?}: {err}");
        }
    }

    #[test]
    fn spawn_errors_about_paths_blame_the_cwd() {
        let cwd = Path::new("/gone");
        let vanished = io::Error::from(Errno::ENOENT);
        assert_eq!(
            entry_failure(cwd, &vanished).unwrap().to_string(),
            "cwd /gone does not exist"
        );
        let denied = io::Error::from(Errno::EACCES);
        assert_eq!(
            entry_failure(cwd, &denied).unwrap().to_string(),
            "cwd /gone is not accessible: permission denied"
        );
        let no_memory = io::Error::from(Errno::ENOMEM);
        assert!(entry_failure(cwd, &no_memory).is_none());
    }
}
