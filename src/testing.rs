//! What the unit tests share: a test HTTP server, certificates, waiting for
//! a condition, and checking that process trees are gone. One copy each, so
//! a fix to a fixture reaches every test.

pub(crate) mod http_server;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::TlsFiles;
use crate::process;

/// How long [`eventually`] and the liveness waits give a condition: generous,
/// because the machine running the tests may be busy.
const PATIENCE: Duration = Duration::from_secs(10);

/// A self-signed certificate for `localhost` and `127.0.0.1`, made in
/// memory with rcgen (no openssl needed).
pub(crate) struct TestCert {
    pub(crate) cert_pem: String,
    pub(crate) key_pem: String,
}

impl TestCert {
    pub(crate) fn localhost() -> Self {
        let certified =
            rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
                .expect("rcgen makes a certificate");
        Self {
            cert_pem: certified.cert.pem(),
            key_pem: certified.signing_key.serialize_pem(),
        }
    }

    /// Writes `cert.pem` and `key.pem` into `dir`, for `--tls-cert/--tls-key`.
    pub(crate) fn write_to(&self, dir: &Path) -> TlsFiles {
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert, &self.cert_pem).unwrap();
        std::fs::write(&key, &self.key_pem).unwrap();
        TlsFiles { cert, key }
    }

    /// A TLS acceptor serving this certificate.
    pub(crate) fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        use rustls_pki_types::pem::PemObject;
        let certs = rustls_pki_types::CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
            .map(Result::unwrap)
            .collect();
        let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    }
}

/// Waits until `check` holds, failing the test with `what` after a while.
/// For conditions with no event to wait on (a file watcher's reaction, a
/// process dying).
pub(crate) async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until no live process is left in group `pgid`.
pub(crate) async fn wait_group_gone(pgid: u32) {
    eventually(&format!("process group {pgid} to be gone"), || {
        !process::group_alive(pgid)
    })
    .await;
}

/// Waits until process `pid` is gone.
pub(crate) async fn wait_pid_gone(pid: u32) {
    assert!(pid > 1);
    let alive = || nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_ok();
    eventually(&format!("process {pid} to be gone"), || !alive()).await;
}

/// Whether a process whose command line contains `pattern` runs.
pub(crate) fn pgrep(pattern: &str) -> bool {
    std::process::Command::new("pgrep")
        .args(["-f", pattern])
        .output()
        .unwrap()
        .status
        .success()
}

/// A marker no other test (or earlier run) uses.
pub(crate) fn unique(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{tag}-{}-{nanos}", std::process::id())
}
