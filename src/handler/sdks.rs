//! The handler SDKs (`handlers/sdk/{node,python,go}`), carried in the binary
//! so that a handler the runtime starts uses its SDK with no install step.
//!
//! On first use the tree is unpacked into the cache directory (the
//! [`crate::embedded`] mechanism: versioned by digest, atomic, reused warm)
//! and every `--handler PATH` process gets:
//!
//! - `RUNTIMEUSE_SDK_DIR=<unpacked>/handlers/sdk`, the root of the three
//!   (the Go example builds against `$RUNTIMEUSE_SDK_DIR/go`);
//! - `PYTHONPATH` with `<root>/python` first, so `import runtimeuse_handler`
//!   works (a `PYTHONPATH` the runtime was given is kept after it);
//! - for `.js` / `.mjs` / `.cjs` handlers, `node <root>/node/launch.js PATH`
//!   instead of `node PATH`: the launcher resolves `import
//!   "runtimeuse-handler"` to this copy and runs modules written for the
//!   Node runtime unchanged.
//!
//! A cache that cannot be written does not stop the runtime: the handler
//! then runs without the SDKs (and a JS handler with plain `node`), with a
//! warning, since handlers that use no SDK still work.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::embedded::{CacheDirs, HANDLER_SDKS, InstallError};

/// Names the SDK root in a handler's environment.
pub(crate) const SDK_DIR_ENV: &str = "RUNTIMEUSE_SDK_DIR";

/// The unpacked SDKs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Sdks {
    /// `<unpacked>/handlers/sdk`.
    root: PathBuf,
}

impl Sdks {
    /// Unpacks the SDKs into `cache` unless a complete copy is there.
    pub(crate) fn unpack(cache: &CacheDirs) -> Result<Self, InstallError> {
        let installed = HANDLER_SDKS.unpack(cache)?;
        Ok(Self::at(&installed.dir))
    }

    /// The SDKs unpacked into `cache` (the runtime's `--cache-dir`); None,
    /// after a warning, if that cannot be done. Called once at start-up.
    pub(crate) fn unpack_or_warn(cache: &CacheDirs) -> Option<Self> {
        match Self::unpack(cache) {
            Ok(sdks) => Some(sdks),
            Err(e) => {
                tracing::warn!("handler SDKs unavailable, handlers run without them: {e}");
                None
            }
        }
    }

    pub(super) fn at(unpacked: &Path) -> Self {
        Self {
            root: unpacked.join("handlers").join("sdk"),
        }
    }

    /// `launch.js`, which runs a `.js` / `.mjs` / `.cjs` handler.
    pub(crate) fn node_launcher(&self) -> PathBuf {
        self.root.join("node").join("launch.js")
    }

    /// The variables a handler process gets; `pythonpath` is the runtime's own
    /// `PYTHONPATH`, kept after the SDK's.
    pub(crate) fn env(&self, pythonpath: Option<OsString>) -> Vec<(OsString, OsString)> {
        let mut paths = vec![self.root.join("python")];
        if let Some(inherited) = pythonpath.filter(|p| !p.is_empty()) {
            paths.extend(std::env::split_paths(&inherited));
        }
        let pythonpath = std::env::join_paths(paths).unwrap_or_else(|_| {
            // An inherited entry with a ':' in it cannot be joined: ours alone.
            self.root.join("python").into_os_string()
        });
        vec![
            (SDK_DIR_ENV.into(), self.root.clone().into_os_string()),
            ("PYTHONPATH".into(), pythonpath),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpacks_the_three_sdks() {
        let tmp = tempfile::tempdir().unwrap();
        let sdks = Sdks::unpack(&CacheDirs::only(tmp.path())).unwrap();
        for file in [
            "node/package.json",
            "node/index.js",
            "node/launch.js",
            "node/resolve-hook.js",
            "node/lib/serve.js",
            "python/runtimeuse_handler/__init__.py",
            "python/pyproject.toml",
            "go/go.mod",
            "go/serve.go",
        ] {
            assert!(sdks.root.join(file).is_file(), "{file} missing");
        }
        // The SDKs' own tests stay out of the binary.
        assert!(!sdks.root.join("node/test").exists());
        assert!(!sdks.root.join("python/tests").exists());
        assert_eq!(sdks.node_launcher(), sdks.root.join("node/launch.js"));
        // Warm: the same copy again.
        assert_eq!(Sdks::unpack(&CacheDirs::only(tmp.path())).unwrap(), sdks);
    }

    #[test]
    fn env_puts_the_python_sdk_first_and_keeps_the_inherited_path() {
        let sdks = Sdks::at(Path::new("/cache/handler-sdks"));
        let env = sdks.env(Some("/a:/b".into()));
        assert_eq!(
            env,
            [
                (
                    SDK_DIR_ENV.into(),
                    "/cache/handler-sdks/handlers/sdk".into()
                ),
                (
                    "PYTHONPATH".into(),
                    "/cache/handler-sdks/handlers/sdk/python:/a:/b".into()
                ),
            ]
        );
        let alone = sdks.env(None);
        assert_eq!(alone[1].1, "/cache/handler-sdks/handlers/sdk/python");
        assert_eq!(sdks.env(Some("".into()))[1].1, alone[1].1);
    }
}
