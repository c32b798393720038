//! TLS for `wss://` (and `https://.../health`): `--tls-cert` / `--tls-key`.
//!
//! The PEM files are read once, at startup, so a missing or bad file stops
//! the runtime with a message naming the file instead of failing every
//! connection later. The handshake itself runs in each connection's own
//! task under a timeout (see `server`), so a slow or silent client never
//! holds up `accept`.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, anyhow};
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::config::TlsFiles;

/// Builds the acceptor for `files`, or says which file is wrong and why.
pub(crate) fn acceptor(files: &TlsFiles) -> anyhow::Result<TlsAcceptor> {
    Ok(TlsAcceptor::from(Arc::new(server_config(files)?)))
}

/// The rustls server configuration for `files` (ring provider, TLS 1.2 and
/// 1.3, no client certificates, ALPN `http/1.1`).
pub(crate) fn server_config(files: &TlsFiles) -> anyhow::Result<ServerConfig> {
    let certs = load_certs(&files.cert)?;
    let key = load_key(&files.key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS: no usable protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            anyhow!(
                "TLS certificate {} and key {} cannot be used together: {e}",
                files.cert.display(),
                files.key.display()
            )
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

fn load_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let bad = |why: String| anyhow!("TLS certificate file {}: {why}", path.display());
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad(
            "no PEM certificate (-----BEGIN CERTIFICATE-----) in it".into(),
        ));
    }
    Ok(certs)
}

fn load_key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| {
        let why = match e {
            rustls::pki_types::pem::Error::NoItemsFound => {
                "no PEM private key (PKCS#8, PKCS#1 or SEC1) in it".to_owned()
            }
            other => other.to_string(),
        };
        anyhow!("TLS key file {}: {why}", path.display())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(dir: &Path, cert: &str, key: &str) -> TlsFiles {
        let cert_path = dir.join("cert.pem");
        let key_path = dir.join("key.pem");
        std::fs::write(&cert_path, cert).unwrap();
        std::fs::write(&key_path, key).unwrap();
        TlsFiles {
            cert: cert_path,
            key: key_path,
        }
    }

    #[test]
    fn missing_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let files = TlsFiles {
            cert: dir.path().join("nope-cert.pem"),
            key: dir.path().join("nope-key.pem"),
        };
        let err = format!("{:#}", acceptor(&files).err().unwrap());
        assert!(err.contains("nope-cert.pem"), "{err}");
        assert!(err.contains("TLS certificate file"), "{err}");
    }

    #[test]
    fn file_without_certificate_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let files = files(dir.path(), "hello\n", "hello\n");
        let err = format!("{:#}", acceptor(&files).err().unwrap());
        assert!(err.contains("cert.pem"), "{err}");
        assert!(err.contains("no PEM certificate"), "{err}");
    }

    #[test]
    fn broken_pem_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let files = files(
            dir.path(),
            "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
            "",
        );
        let err = format!("{:#}", acceptor(&files).err().unwrap());
        assert!(err.contains("cert.pem"), "{err}");
    }

    #[test]
    fn key_file_without_key_is_named() {
        let dir = tempfile::tempdir().unwrap();
        // A syntactically valid (if meaningless) certificate section, then no key.
        let files = files(
            dir.path(),
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            "no key here\n",
        );
        let err = format!("{:#}", acceptor(&files).err().unwrap());
        assert!(err.contains("key.pem"), "{err}");
        assert!(err.contains("no PEM private key"), "{err}");
    }
}
