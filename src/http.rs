//! The runtime's outbound HTTP(S) client: downloads and artifact uploads,
//! on `reqwest` (hyper + rustls underneath).
//!
//! reqwest brings what a client in a sandbox needs: a connection pool (many
//! artifact uploads to one bucket share a connection), `HTTPS_PROXY` /
//! `HTTP_PROXY` / `NO_PROXY` from the environment (sandboxes behind a proxy
//! are common), redirects, and URLs handled by the `url` crate, which keeps
//! a presigned URL's escapes byte for byte. What stays here is ours:
//!
//! - **The retry policy** ([`HttpClient::with_retries`]): which failures are
//!   worth another try, and how long to wait between tries.
//! - **Errors a user can read** ([`HttpError`]), worded from the failure's
//!   cause and never containing a URL's query string (presigned
//!   credentials) or userinfo.
//! - **Idle timeouts in both directions.** reqwest's read timeout starts
//!   when a request is sent and does not care whether the upload body is
//!   moving, so a long upload would be cut off and a stalled one would not
//!   be noticed until then. Instead a watchdog measures time *without
//!   progress*: upload chunks taken by the connection, then the response
//!   head, then each body chunk.
//! - **Streaming to and from disk**, so memory stays flat whatever the size.

mod error;

use std::future::Future;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderValue, LOCATION};
use reqwest::{Method, Response, redirect};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;
use url::Url;

use crate::urls::{self, display_url, parse_http_url};

pub(crate) use error::{HttpError, TimeoutPhase};

/// Size of the pieces an upload is read from disk in. Each piece is one
/// trip to tokio's blocking pool: at 64 KiB a 256 MiB upload took 105 ms
/// of runtime CPU and reached 1,300 MiB/s (median), at 256 KiB 75 ms and
/// 1,700 MiB/s; eight uploads at a time hold at most a few MiB.
const UPLOAD_CHUNK_BYTES: usize = 256 * 1024;

/// Tunables of [`HttpClient`]; `Default` is what the runtime uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HttpOptions {
    /// Longest time to establish a connection (TCP and TLS handshake).
    pub(crate) connect_timeout: Duration,
    /// Longest time a request may make no progress in either direction
    /// (upload bytes not taken, no response, no body bytes).
    pub(crate) read_timeout: Duration,
    /// Redirects followed before giving up.
    pub(crate) max_redirects: usize,
    /// Tries per operation, the first one included (at least 1).
    pub(crate) max_attempts: u32,
    /// Wait before the first retry; doubled for every further one.
    pub(crate) retry_backoff: Duration,
    /// `User-Agent` header sent with every request.
    pub(crate) user_agent: String,
}

impl Default for HttpOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(30),
            max_redirects: 10,
            max_attempts: 3,
            retry_backoff: Duration::from_millis(200),
            user_agent: concat!("runtimeuse/", env!("CARGO_PKG_VERSION")).to_owned(),
        }
    }
}

/// A shared HTTP(S) client; cloning is cheap and shares the pool.
#[derive(Debug, Clone)]
pub(crate) struct HttpClient {
    client: reqwest::Client,
    options: Arc<HttpOptions>,
}

impl HttpClient {
    /// Builds a client trusting the webpki roots, plus every certificate in
    /// `extra_root_ca_pem` (PEM, one or more `CERTIFICATE` blocks) if given.
    pub(crate) fn new(
        options: HttpOptions,
        extra_root_ca_pem: Option<&[u8]>,
    ) -> Result<Self, HttpError> {
        let options = HttpOptions {
            max_attempts: options.max_attempts.max(1),
            ..options
        };
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(tls_config(extra_root_ca_pem)?)
            .connect_timeout(options.connect_timeout)
            .redirect(redirect_policy(options.max_redirects))
            .user_agent(options.user_agent.clone())
            .build()
            .map_err(|e| HttpError::InvalidConfig(error::chain(&e.without_url())))?;
        Ok(Self {
            client,
            options: Arc::new(options),
        })
    }

    /// GETs `url` into `dest` (created or truncated), streaming the body to
    /// disk; returns the number of bytes written. Redirects are followed and
    /// failed attempts retried from scratch. `dest` is only created once a
    /// 2xx response arrived, and removed again if its transfer fails.
    pub(crate) async fn get_to_file(&self, url: &str, dest: &Path) -> Result<u64, HttpError> {
        let url = parse_http_url(url)?;
        self.with_retries(&url, || self.get_once(&url, dest)).await
    }

    /// PUTs the file at `path` to `url` with `Content-Type` (omitted when
    /// empty) and `Content-Length`, streamed from disk; each attempt reopens
    /// the file. Any non-2xx final status is an error.
    pub(crate) async fn put_file(
        &self,
        url: &str,
        path: &Path,
        content_type: &str,
    ) -> Result<(), HttpError> {
        let url = parse_http_url(url)?;
        let content_type =
            match content_type {
                "" => None,
                text => Some(HeaderValue::from_str(text).map_err(|_| {
                    HttpError::InvalidConfig(format!("invalid Content-Type {text:?}"))
                })?),
            };
        self.with_retries(&url, || self.put_once(&url, path, content_type.as_ref()))
            .await
    }

    /// Runs `op` until it succeeds, fails for good, or has been tried
    /// `max_attempts` times.
    ///
    /// Each attempt starts from scratch (a download re-creates its file, an
    /// upload re-reads its file), so a retry never builds on a half-done
    /// transfer. Only failures that another try could fix are retried:
    /// connection trouble, timeouts and 5xx answers (see
    /// [`HttpError::is_retryable`]); a 4xx, a TLS rejection or a bad URL
    /// fails at once. Waits double from `retry_backoff`: 200 ms, then
    /// 400 ms with the defaults, so three attempts take at most the two
    /// waits plus three timeouts.
    async fn with_retries<T, F, Fut>(&self, url: &Url, mut op: F) -> Result<T, HttpError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, HttpError>>,
    {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match op().await {
                Ok(value) => return Ok(value),
                Err(err) if err.is_retryable() && attempt < self.options.max_attempts => {
                    let wait = self
                        .options
                        .retry_backoff
                        .saturating_mul(1 << (attempt - 1).min(16));
                    tracing::warn!(
                        url = %display_url(url.as_str()),
                        attempt,
                        error = %err,
                        "HTTP request failed; retrying in {}",
                        error::fmt_duration(wait)
                    );
                    tokio::time::sleep(wait).await;
                }
                Err(err) => return Err(err),
            }
        }
    }

    async fn get_once(&self, url: &Url, dest: &Path) -> Result<u64, HttpError> {
        let request = self.client.get(url.clone());
        let response = self.send(url, request, None).await?;
        let status = response.status();
        if status.is_redirection() {
            return Err(unfollowed_redirect(&response));
        }
        if !status.is_success() {
            return Err(HttpError::Status(status));
        }
        // Opened synchronously on purpose: if this future is dropped (the
        // request was cancelled) no open can still be in flight to create
        // the file after the caller cleaned it up.
        let file = std::fs::File::create(dest)
            .map_err(|e| HttpError::Local(format!("cannot create {}: {e}", dest.display())))?;
        let result = self.stream_to_file(response, file, dest).await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(dest).await;
        }
        result
    }

    /// One upload, following redirects itself: reqwest cannot replay a
    /// streamed body, so it hands back a 301/302/307/308 to a PUT, and the
    /// file is simply sent again to the new location. (A 303 is followed by
    /// reqwest, as a GET without the body.)
    async fn put_once(
        &self,
        url: &Url,
        path: &Path,
        content_type: Option<&HeaderValue>,
    ) -> Result<(), HttpError> {
        let mut target = url.clone();
        for _ in 0..=self.options.max_redirects {
            let progress = Arc::new(Notify::new());
            let (body, len) = upload_body(path, progress.clone()).await?;
            let mut request = self
                .client
                .request(Method::PUT, target.clone())
                .header(CONTENT_LENGTH, len)
                .body(body);
            if let Some(content_type) = content_type {
                request = request.header(CONTENT_TYPE, content_type);
            }
            let response = self.send(&target, request, Some(progress)).await?;
            let status = response.status();
            if status.is_success() {
                return Ok(());
            }
            if !status.is_redirection() {
                return Err(HttpError::Status(status));
            }
            target = next_location(&response).map_err(|_| unfollowed_redirect(&response))?;
            tracing::debug!(to = %display_url(target.as_str()), status = status.as_u16(),
                "following an upload redirect");
        }
        Err(HttpError::TooManyRedirects(self.options.max_redirects))
    }

    /// Sends a request and waits for the response head, failing once the
    /// exchange has made no progress for `read_timeout`. Progress is the
    /// connection taking another chunk of the upload body (`progress` is
    /// notified by the body stream); without a body, the clock runs from
    /// the start.
    async fn send(
        &self,
        url: &Url,
        request: reqwest::RequestBuilder,
        progress: Option<Arc<Notify>>,
    ) -> Result<Response, HttpError> {
        let idle = self.options.read_timeout;
        let watchdog = async {
            let Some(progress) = progress else {
                return tokio::time::sleep(idle).await;
            };
            // `notify_one` keeps a permit when nobody waits, so a chunk
            // taken between two turns of this loop still counts.
            while tokio::time::timeout(idle, progress.notified())
                .await
                .is_ok()
            {}
        };
        tokio::select! {
            result = request.send() => result.map_err(|e| self.classify(e, url)),
            () = watchdog => Err(self.idle_timeout()),
        }
    }

    /// Writes the body to `file`, each chunk within `read_timeout`.
    async fn stream_to_file(
        &self,
        mut response: Response,
        file: std::fs::File,
        dest: &Path,
    ) -> Result<u64, HttpError> {
        let local =
            |e: io::Error| HttpError::Local(format!("cannot write {}: {e}", dest.display()));
        let mut out =
            tokio::io::BufWriter::with_capacity(256 * 1024, tokio::fs::File::from_std(file));
        let mut written = 0u64;
        let url = response.url().clone();
        loop {
            let chunk = tokio::time::timeout(self.options.read_timeout, response.chunk())
                .await
                .map_err(|_| self.idle_timeout())?
                .map_err(|e| self.classify(e, &url))?;
            let Some(data) = chunk else { break };
            out.write_all(&data).await.map_err(local)?;
            written += data.len() as u64;
        }
        out.flush().await.map_err(local)?;
        Ok(written)
    }

    fn idle_timeout(&self) -> HttpError {
        HttpError::Timeout {
            after: self.options.read_timeout,
            phase: TimeoutPhase::Idle,
        }
    }

    fn classify(&self, err: reqwest::Error, url: &Url) -> HttpError {
        HttpError::from_reqwest(err, url, self.options.connect_timeout)
    }
}

/// rustls with the ring provider, the webpki roots and any extra roots:
/// the same trust on every machine, whatever its system store holds.
fn tls_config(extra_root_ca_pem: Option<&[u8]>) -> Result<rustls::ClientConfig, HttpError> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(pem) = extra_root_ca_pem {
        let mut added = 0;
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| {
                HttpError::InvalidConfig(format!("extra root CA is not valid PEM: {e}"))
            })?;
            roots
                .add(cert)
                .map_err(|e| HttpError::InvalidConfig(format!("extra root CA is unusable: {e}")))?;
            added += 1;
        }
        if added == 0 {
            return Err(HttpError::InvalidConfig(
                "extra root CA PEM holds no CERTIFICATE".into(),
            ));
        }
    }
    // An explicit provider: never depend on (or panic over) the
    // process-wide default rustls provider.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| HttpError::InvalidConfig(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// reqwest's limited policy, plus: a redirect may only lead to http(s),
/// and both refusals come back as our own errors.
fn redirect_policy(max: usize) -> redirect::Policy {
    redirect::Policy::custom(move |attempt| {
        if attempt.previous().len() > max {
            return attempt.error(HttpError::TooManyRedirects(max));
        }
        if let Err(e) = urls::check_scheme(attempt.url()) {
            return attempt.error(HttpError::from(e));
        }
        attempt.follow()
    })
}

/// Where a 3xx response points, resolved against the URL it came from.
fn next_location(response: &Response) -> Result<Url, HttpError> {
    let location = response
        .headers()
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .ok_or(HttpError::BadRedirect(response.status()))?;
    let next = response
        .url()
        .join(location.trim())
        .map_err(|_| HttpError::BadRedirect(response.status()))?;
    urls::check_scheme(&next)?;
    Ok(next)
}

/// A 3xx that reached us: its `Location` is missing, unusable or leads
/// outside http(s) (reqwest hands such redirects back unfollowed).
fn unfollowed_redirect(response: &Response) -> HttpError {
    match next_location(response) {
        Err(e) => e,
        Ok(_) => HttpError::BadRedirect(response.status()),
    }
}

/// The file as a request body of exactly its current length, read in
/// chunks; every chunk taken notifies `progress`.
async fn upload_body(
    path: &Path,
    progress: Arc<Notify>,
) -> Result<(reqwest::Body, u64), HttpError> {
    let local = |e: io::Error| HttpError::Local(format!("cannot read {}: {e}", path.display()));
    let file = tokio::fs::File::open(path).await.map_err(local)?;
    let len = file.metadata().await.map_err(local)?.len();
    let path = path.to_owned();
    let chunks = futures_util::stream::unfold((file, len), move |(mut file, left)| {
        let (path, progress) = (path.clone(), progress.clone());
        async move {
            if left == 0 {
                return None;
            }
            let want = left.min(UPLOAD_CHUNK_BYTES as u64);
            let mut buf = BytesMut::with_capacity(want as usize);
            let read = (&mut file).take(want).read_buf(&mut buf).await;
            progress.notify_one();
            match read {
                Ok(0) => Some((
                    Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("{} shrank while it was being uploaded", path.display()),
                    )),
                    (file, 0),
                )),
                Ok(n) => Some((Ok(buf.freeze()), (file, left - n as u64))),
                // Ends the stream after the error; hyper aborts on it.
                Err(e) => Some((Err(e), (file, 0))),
            }
        }
    });
    Ok((reqwest::Body::wrap_stream(chunks), len))
}

/// The status of an unwanted answer.
#[cfg(test)]
impl HttpError {
    pub(crate) fn status(&self) -> Option<reqwest::StatusCode> {
        match self {
            Self::Status(status) => Some(*status),
            _ => None,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
