//! The runtime's outbound HTTP(S) client: downloads and artifact uploads.
//!
//! Deliberately small: HTTP/1.1 over hyper's low-level connection API, one
//! connection per request (no pool), TLS by rustls with the webpki roots.
//! That keeps every phase visible so failures get precise, retry-aware
//! errors, and bodies are streamed to and from disk without ever being held
//! in memory whole.
//!
//! URLs are often presigned and carry credentials in the query string, so no
//! error or log line ever contains a raw URL: [`display_url`] strips the
//! query, fragment and userinfo.

use std::fmt;
use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::time::{Instant, Sleep};
use tokio_rustls::TlsConnector;

type ReqBody = UnsyncBoxBody<Bytes, io::Error>;

/// Tunables of [`HttpClient`]; `Default` is what the runtime uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HttpOptions {
    /// Longest time to establish a connection (TCP and TLS handshake).
    pub connect_timeout: Duration,
    /// Longest time a connection may make no progress in either direction
    /// (waiting for the response, between body bytes, or the server not
    /// accepting upload bytes).
    pub read_timeout: Duration,
    /// Redirects followed before giving up.
    pub max_redirects: usize,
    /// Tries per operation, the first one included (at least 1).
    pub max_attempts: u32,
    /// Wait before the first retry; doubled for every further one.
    pub retry_backoff: Duration,
    /// `User-Agent` header sent with every request.
    pub user_agent: String,
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

/// Which wait ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TimeoutPhase {
    /// Establishing the connection (TCP connect and TLS handshake).
    Connect,
    /// An established connection made no progress.
    Idle,
}

impl fmt::Display for TimeoutPhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Connect => "while connecting",
            Self::Idle => "waiting for the server",
        })
    }
}

/// Why a request failed. The Display text is meant for the end user and
/// never contains a URL's query string or credentials.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum HttpError {
    /// Anything but `http`/`https` (e.g. `file`, `ftp`); holds the scheme.
    #[error("unsupported URL scheme {0:?} (only http and https are allowed)")]
    UnsupportedScheme(String),
    /// The URL (or a redirect target) cannot be parsed or has no host.
    #[error("invalid URL: {0}")]
    InvalidUrl(String),
    /// A setting of ours is unusable (bad `--ca-cert`, bad `Content-Type`),
    /// not the remote server's fault; never retried.
    #[error("invalid client configuration: {0}")]
    InvalidConfig(String),
    /// DNS lookup failed; retried.
    #[error("could not resolve host {host:?}: {reason}")]
    Resolve {
        /// The host name looked up.
        host: String,
        /// The resolver's error.
        reason: String,
    },
    /// The last address tried refused the connection (nothing listening);
    /// holds that address. Retried.
    #[error("connection refused ({0})")]
    ConnectionRefused(String),
    /// Any other failure to establish the connection; retried.
    #[error("could not connect: {0}")]
    Connect(String),
    /// The TLS handshake was rejected (e.g. untrusted or mismatched
    /// certificate); not retried, since trying again will not fix it.
    #[error("TLS handshake failed: {0}")]
    Tls(String),
    /// A wait ran out; retried.
    #[error("timed out after {} {phase}", fmt_duration(*.after))]
    Timeout {
        /// The configured timeout that expired.
        after: Duration,
        /// Whether connecting or waiting for data timed out.
        phase: TimeoutPhase,
    },
    /// The response (after redirects) was not 2xx; retried only for 5xx.
    #[error("HTTP {}", status_line(*.0))]
    Status(StatusCode),
    /// More redirects than allowed; holds the limit.
    #[error("too many redirects (more than {0})")]
    TooManyRedirects(usize),
    /// A 3xx whose `Location` is missing or unparsable; holds the status.
    #[error("HTTP {} redirect without a usable Location header", .0.as_u16())]
    BadRedirect(StatusCode),
    /// The connection broke after the request was sent (e.g. a reset or a
    /// truncated body); retried.
    #[error("connection failed mid-transfer: {0}")]
    Transfer(String),
    /// A local file could not be read or written.
    #[error("{0}")]
    Local(String),
}

impl HttpError {
    /// Whether trying again could help: connection problems, timeouts, 5xx.
    pub(crate) fn is_retryable(&self) -> bool {
        match self {
            Self::Resolve { .. }
            | Self::ConnectionRefused(_)
            | Self::Connect(_)
            | Self::Timeout { .. }
            | Self::Transfer(_) => true,
            Self::Status(status) => status.is_server_error(),
            Self::UnsupportedScheme(_)
            | Self::InvalidUrl(_)
            | Self::InvalidConfig(_)
            | Self::Tls(_)
            | Self::TooManyRedirects(_)
            | Self::BadRedirect(_)
            | Self::Local(_) => false,
        }
    }

    /// The HTTP status, when the server answered with an unwanted one.
    #[cfg(test)]
    pub(crate) fn status(&self) -> Option<StatusCode> {
        match self {
            Self::Status(status) => Some(*status),
            _ => None,
        }
    }
}

fn status_line(status: StatusCode) -> String {
    match status.canonical_reason() {
        Some(reason) => format!("{} {reason}", status.as_u16()),
        None => status.as_u16().to_string(),
    }
}

fn fmt_duration(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// A URL safe to show: no query, no fragment, no `user:password@`.
pub(crate) fn display_url(url: &str) -> String {
    let url = url.trim();
    let base = &url[..url.find(['?', '#']).unwrap_or(url.len())];
    if let Some(i) = base.find("://") {
        let rest = &base[i + 3..];
        let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
        if let Some(at) = authority.rfind('@') {
            return format!("{}{}", &base[..i + 3], &rest[at + 1..]);
        }
    }
    base.to_owned()
}

/// Checks that `url` is an absolute http(s) URL this client can fetch.
pub(crate) fn validate_url(url: &str) -> Result<(), HttpError> {
    Target::parse(url).map(|_| ())
}

/// A shared HTTP(S) client; cloning is cheap (one `Arc`).
#[derive(Clone)]
pub(crate) struct HttpClient {
    inner: Arc<Inner>,
}

struct Inner {
    options: HttpOptions,
    tls: TlsConnector,
}

impl fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpClient")
            .field("options", &self.inner.options)
            .finish_non_exhaustive()
    }
}

impl Default for HttpClient {
    fn default() -> Self {
        Self::new(HttpOptions::default(), None).expect("the default TLS configuration is valid")
    }
}

impl HttpClient {
    /// Builds a client trusting the webpki roots, plus every certificate in
    /// `extra_root_ca_pem` (PEM, one or more `CERTIFICATE` blocks) if given.
    pub(crate) fn new(
        options: HttpOptions,
        extra_root_ca_pem: Option<&[u8]>,
    ) -> Result<Self, HttpError> {
        let mut roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        if let Some(pem) = extra_root_ca_pem {
            let mut added = 0;
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| {
                    HttpError::InvalidConfig(format!("extra root CA is not valid PEM: {e}"))
                })?;
                roots.add(cert).map_err(|e| {
                    HttpError::InvalidConfig(format!("extra root CA is unusable: {e}"))
                })?;
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
        let options = HttpOptions {
            max_attempts: options.max_attempts.max(1),
            ..options
        };
        Ok(Self {
            inner: Arc::new(Inner {
                options,
                tls: TlsConnector::from(Arc::new(config)),
            }),
        })
    }

    /// GETs `url` into `dest` (created or truncated), streaming the body to
    /// disk; returns the number of bytes written. Redirects are followed and
    /// failed attempts retried from scratch. `dest` is only created once a
    /// 2xx response arrived, and removed again if its transfer fails.
    pub(crate) async fn get_to_file(&self, url: &str, dest: &Path) -> Result<u64, HttpError> {
        self.with_retries(url, || self.get_once(url, dest)).await
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
        let content_type = if content_type.is_empty() {
            None
        } else {
            Some(HeaderValue::from_str(content_type).map_err(|_| {
                HttpError::InvalidConfig(format!("invalid Content-Type {content_type:?}"))
            })?)
        };
        self.with_retries(url, || self.put_once(url, path, content_type.clone()))
            .await
    }

    async fn with_retries<T, F, Fut>(&self, url: &str, mut op: F) -> Result<T, HttpError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, HttpError>>,
    {
        let opts = &self.inner.options;
        let mut attempt = 0;
        loop {
            attempt += 1;
            match op().await {
                Ok(value) => return Ok(value),
                Err(err) if err.is_retryable() && attempt < opts.max_attempts => {
                    let wait = opts
                        .retry_backoff
                        .saturating_mul(1 << (attempt - 1).min(16));
                    tracing::warn!(
                        url = %display_url(url),
                        attempt,
                        error = %err,
                        "HTTP request failed; retrying in {}",
                        fmt_duration(wait)
                    );
                    tokio::time::sleep(wait).await;
                }
                Err(err) => return Err(err),
            }
        }
    }

    async fn get_once(&self, url: &str, dest: &Path) -> Result<u64, HttpError> {
        let (response, conn) = self.fetch(Method::GET, url, None).await?;
        if !response.status().is_success() {
            return Err(HttpError::Status(response.status()));
        }
        // Opened synchronously on purpose: if this future is dropped (the
        // request was cancelled) no open can still be in flight to create
        // the file after the caller cleaned it up.
        let file = std::fs::File::create(dest)
            .map_err(|e| HttpError::Local(format!("cannot create {}: {e}", dest.display())))?;
        let result = stream_to_file(response.into_body(), file, dest, &conn).await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(dest).await;
        }
        result
    }

    async fn put_once(
        &self,
        url: &str,
        path: &Path,
        content_type: Option<HeaderValue>,
    ) -> Result<(), HttpError> {
        let upload = Upload { path, content_type };
        let (response, _conn) = self.fetch(Method::PUT, url, Some(&upload)).await?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(HttpError::Status(response.status()))
        }
    }

    /// Sends one request, following redirects; returns the final response
    /// (any status) with the guard that keeps its connection alive.
    async fn fetch(
        &self,
        mut method: Method,
        url: &str,
        mut upload: Option<&Upload<'_>>,
    ) -> Result<(Response<Incoming>, ConnGuard), HttpError> {
        let mut current = url.trim().to_owned();
        let mut redirects = 0;
        loop {
            let target = Target::parse(&current)?;
            let body = match upload {
                Some(upload) => upload.body().await?,
                None => Empty::new().map_err(|never| match never {}).boxed_unsync(),
            };
            let mut request = Request::builder()
                .method(method.clone())
                .uri(target.path_and_query.as_str())
                .header(header::HOST, target.host_header.as_str())
                .header(header::USER_AGENT, self.inner.options.user_agent.as_str());
            if let Some(auth) = &target.basic_auth {
                request = request.header(header::AUTHORIZATION, auth.as_str());
            }
            if let Some(upload) = upload {
                if let Some(content_type) = &upload.content_type {
                    request = request.header(header::CONTENT_TYPE, content_type.clone());
                }
                request = request.header(header::CONTENT_LENGTH, body_len(&body));
            }
            let request = request
                .body(body)
                .map_err(|e| HttpError::InvalidUrl(e.to_string()))?;
            let (response, conn) = self.send(&target, request).await?;

            let status = response.status();
            if !matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308) {
                return Ok((response, conn));
            }
            if redirects >= self.inner.options.max_redirects {
                return Err(HttpError::TooManyRedirects(
                    self.inner.options.max_redirects,
                ));
            }
            redirects += 1;
            let location = response
                .headers()
                .get(header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .ok_or(HttpError::BadRedirect(status))?;
            let next =
                resolve_location(&current, location).ok_or(HttpError::BadRedirect(status))?;
            if status == StatusCode::SEE_OTHER && method != Method::HEAD {
                method = Method::GET;
                upload = None;
            }
            tracing::debug!(
                from = %display_url(&current),
                to = %display_url(&next),
                status = status.as_u16(),
                "following redirect"
            );
            current = next;
        }
    }

    /// One request over a fresh connection.
    async fn send(
        &self,
        target: &Target,
        request: Request<ReqBody>,
    ) -> Result<(Response<Incoming>, ConnGuard), HttpError> {
        let opts = &self.inner.options;
        let deadline = Instant::now() + opts.connect_timeout;
        let connect_timeout = HttpError::Timeout {
            after: opts.connect_timeout,
            phase: TimeoutPhase::Connect,
        };
        let tcp = tokio::time::timeout_at(deadline, connect_tcp(&target.host, target.port))
            .await
            .map_err(|_| connect_timeout.clone())??;
        let _ = tcp.set_nodelay(true);
        let stalled = Arc::new(AtomicBool::new(false));
        let io = IdleTimeout::new(tcp, opts.read_timeout, stalled.clone());

        let (mut sender, task) = if target.https {
            let name = ServerName::try_from(target.host.clone())
                .map_err(|_| HttpError::InvalidUrl(format!("bad host name {:?}", target.host)))?;
            let tls = tokio::time::timeout_at(deadline, self.inner.tls.connect(name, io))
                .await
                .map_err(|_| connect_timeout.clone())?
                .map_err(|e| tls_error(e, &stalled, opts))?;
            handshake(tls).await?
        } else {
            handshake(io).await?
        };
        let conn = ConnGuard {
            task,
            stalled,
            read_timeout: opts.read_timeout,
        };
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| conn.error(&e))?;
        Ok((response, conn))
    }
}

/// A file to PUT.
struct Upload<'a> {
    path: &'a Path,
    content_type: Option<HeaderValue>,
}

impl Upload<'_> {
    /// Opens the file afresh and streams exactly its current length.
    async fn body(&self) -> Result<ReqBody, HttpError> {
        let local =
            |e: io::Error| HttpError::Local(format!("cannot read {}: {e}", self.path.display()));
        let file = tokio::fs::File::open(self.path).await.map_err(local)?;
        let len = file.metadata().await.map_err(local)?.len();
        let path = self.path.to_owned();
        let chunks = futures_util::stream::unfold((file, len), move |(mut file, left)| {
            let path = path.clone();
            async move {
                if left == 0 {
                    return None;
                }
                let mut buf = BytesMut::with_capacity(left.min(64 * 1024) as usize);
                let frame = match (&mut file).take(left).read_buf(&mut buf).await {
                    Ok(0) => Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("{} shrank while it was being uploaded", path.display()),
                    )),
                    Ok(n) => Ok((Frame::data(buf.freeze()), n as u64)),
                    Err(e) => Err(e),
                };
                match frame {
                    Ok((frame, n)) => Some((Ok(frame), (file, left - n))),
                    // Ends the stream after the error; hyper aborts on it.
                    Err(e) => Some((Err(e), (file, 0))),
                }
            }
        });
        Ok(SizedBody {
            inner: StreamBody::new(chunks).boxed_unsync(),
            len,
        }
        .boxed_unsync())
    }
}

/// A body whose exact length is known up front.
struct SizedBody {
    inner: ReqBody,
    len: u64,
}

impl hyper::body::Body for SizedBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.len)
    }
}

fn body_len(body: &ReqBody) -> u64 {
    hyper::body::Body::size_hint(body).exact().unwrap_or(0)
}

async fn stream_to_file(
    mut body: Incoming,
    file: std::fs::File,
    dest: &Path,
    conn: &ConnGuard,
) -> Result<u64, HttpError> {
    let local = |e: io::Error| HttpError::Local(format!("cannot write {}: {e}", dest.display()));
    let mut out = tokio::io::BufWriter::with_capacity(256 * 1024, tokio::fs::File::from_std(file));
    let mut written = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| conn.error(&e))?;
        if let Ok(data) = frame.into_data() {
            out.write_all(&data).await.map_err(local)?;
            written += data.len() as u64;
        }
    }
    out.flush().await.map_err(local)?;
    Ok(written)
}

/// Keeps a request's connection task running; aborts it when dropped.
struct ConnGuard {
    task: JoinHandle<()>,
    stalled: Arc<AtomicBool>,
    read_timeout: Duration,
}

impl ConnGuard {
    fn error(&self, err: &hyper::Error) -> HttpError {
        if self.stalled.load(Ordering::SeqCst) {
            return HttpError::Timeout {
                after: self.read_timeout,
                phase: TimeoutPhase::Idle,
            };
        }
        HttpError::Transfer(error_chain(err))
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// "outer: cause: root cause", skipping causes already in the text.
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

async fn handshake<T>(
    io: T,
) -> Result<
    (
        hyper::client::conn::http1::SendRequest<ReqBody>,
        JoinHandle<()>,
    ),
    HttpError,
>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| HttpError::Connect(error_chain(&e)))?;
    let task = tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "HTTP connection ended with an error");
        }
    });
    Ok((sender, task))
}

async fn connect_tcp(host: &str, port: u16) -> Result<TcpStream, HttpError> {
    let addrs: Vec<_> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| HttpError::Resolve {
            host: host.to_owned(),
            reason: e.to_string(),
        })?
        .collect();
    if addrs.is_empty() {
        return Err(HttpError::Resolve {
            host: host.to_owned(),
            reason: "no addresses".into(),
        });
    }
    let mut last = None;
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(stream) => return Ok(stream),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                last = Some(HttpError::ConnectionRefused(addr.to_string()));
            }
            Err(e) => last = Some(HttpError::Connect(format!("{addr}: {e}"))),
        }
    }
    Err(last.expect("at least one address was tried"))
}

fn tls_error(err: io::Error, stalled: &AtomicBool, opts: &HttpOptions) -> HttpError {
    if stalled.load(Ordering::SeqCst) {
        return HttpError::Timeout {
            after: opts.read_timeout,
            phase: TimeoutPhase::Idle,
        };
    }
    // A rustls error (bad certificate, protocol mismatch) is final; anything
    // else (reset, EOF mid-handshake) is a transport problem worth a retry.
    match err
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    {
        Some(tls) => HttpError::Tls(tls.to_string()),
        None => HttpError::Connect(format!("during the TLS handshake: {err}")),
    }
}

/// A transport wrapper that fails with `TimedOut` once the connection has
/// made no progress (no bytes read or written) for `limit` while someone was
/// waiting on it. Flushes do not count as progress: they are always ready.
struct IdleTimeout<S> {
    inner: S,
    limit: Duration,
    sleep: Pin<Box<Sleep>>,
    waiting: bool,
    stalled: Arc<AtomicBool>,
}

impl<S> IdleTimeout<S> {
    fn new(inner: S, limit: Duration, stalled: Arc<AtomicBool>) -> Self {
        Self {
            inner,
            limit,
            sleep: Box::pin(tokio::time::sleep(limit)),
            waiting: false,
            stalled,
        }
    }

    fn progressed(&mut self) {
        self.waiting = false;
    }

    /// Called when an operation is pending: starts or checks the clock.
    fn pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        if !self.waiting {
            self.waiting = true;
            let deadline = Instant::now() + self.limit;
            self.sleep.as_mut().reset(deadline);
        }
        match self.sleep.as_mut().poll(cx) {
            Poll::Ready(()) => {
                self.stalled.store(true, Ordering::SeqCst);
                Poll::Ready(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no data for {}", fmt_duration(self.limit)),
                ))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for IdleTimeout<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(result) => {
                this.progressed();
                Poll::Ready(result)
            }
            Poll::Pending => this.pending(cx).map(Err),
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for IdleTimeout<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Ready(result) => {
                this.progressed();
                Poll::Ready(result)
            }
            Poll::Pending => this.pending(cx).map(Err),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write_vectored(cx, bufs) {
            Poll::Ready(result) => {
                this.progressed();
                Poll::Ready(result)
            }
            Poll::Pending => this.pending(cx).map(Err),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_flush(cx) {
            Poll::Ready(result) => Poll::Ready(result),
            Poll::Pending => this.pending(cx).map(Err),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// A parsed request target.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    https: bool,
    /// Host to connect to (IPv6 without brackets).
    host: String,
    port: u16,
    /// `Host` header: the URL's authority without userinfo.
    host_header: String,
    path_and_query: String,
    /// `Authorization` header from the URL's `user:password@`, if any.
    basic_auth: Option<String>,
}

impl Target {
    fn parse(url: &str) -> Result<Self, HttpError> {
        let url = url.trim();
        let scheme = url_scheme(url).ok_or_else(|| {
            HttpError::InvalidUrl("not an absolute URL (expected http:// or https://)".into())
        })?;
        let https = match scheme.to_ascii_lowercase().as_str() {
            "http" => false,
            "https" => true,
            _ => return Err(HttpError::UnsupportedScheme(scheme.to_owned())),
        };
        let url = &url[..url.find('#').unwrap_or(url.len())];
        let uri: Uri = encode_unsafe_chars(url)
            .parse()
            .map_err(|e: hyper::http::uri::InvalidUri| HttpError::InvalidUrl(e.to_string()))?;
        let authority = uri
            .authority()
            .ok_or_else(|| HttpError::InvalidUrl("no host".into()))?;
        let (userinfo, host_header) = match authority.as_str().rsplit_once('@') {
            Some((userinfo, rest)) => (Some(userinfo), rest),
            None => (None, authority.as_str()),
        };
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        if host.is_empty() {
            return Err(HttpError::InvalidUrl("no host".into()));
        }
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let path_and_query = match uri.path_and_query().map(|pq| pq.as_str()) {
            None | Some("") => "/".to_owned(),
            Some(pq) if pq.starts_with('?') => format!("/{pq}"),
            Some(pq) => pq.to_owned(),
        };
        let basic_auth = userinfo.map(|info| {
            let (user, password) = info.split_once(':').unwrap_or((info, ""));
            let mut plain = percent_decode(user.as_bytes());
            plain.push(b':');
            plain.extend(percent_decode(password.as_bytes()));
            format!("Basic {}", base64(&plain))
        });
        Ok(Self {
            https,
            host,
            port,
            host_header: host_header.to_owned(),
            path_and_query,
            basic_auth,
        })
    }
}

/// The scheme of an absolute URL (`http` in `http://...`), if it has one.
fn url_scheme(url: &str) -> Option<&str> {
    let colon = url.find(':')?;
    let scheme = &url[..colon];
    let mut chars = scheme.chars();
    let first = chars.next()?;
    (first.is_ascii_alphabetic()
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
    .then_some(scheme)
}

/// Percent-encodes what browsers would (spaces, non-ASCII, `"<>` ...)
/// so such URLs still parse; everything else is left byte-for-byte, which
/// matters for presigned URLs whose signature covers the exact path.
fn encode_unsafe_chars(url: &str) -> String {
    let mut out = String::with_capacity(url.len());
    for &b in url.as_bytes() {
        if b.is_ascii_graphic()
            && !matches!(
                b,
                b'"' | b'<' | b'>' | b'\\' | b'^' | b'`' | b'{' | b'|' | b'}'
            )
        {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decodes `%XX` escapes; malformed escapes are kept literally.
pub(crate) fn percent_decode(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        if input[i] == b'%'
            && let Some(hex) = input.get(i + 1..i + 3)
            && let Ok(hex) = std::str::from_utf8(hex)
            && let Ok(byte) = u8::from_str_radix(hex, 16)
        {
            out.push(byte);
            i += 3;
            continue;
        }
        out.push(input[i]);
        i += 1;
    }
    out
}

fn base64(input: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(TABLE[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Resolves a `Location` header against the URL that answered with it.
fn resolve_location(base: &str, location: &str) -> Option<String> {
    let location = location.trim();
    if location.is_empty() {
        return None;
    }
    if url_scheme(location).is_some() {
        return Some(location.to_owned());
    }
    let base = &base[..base.find('#').unwrap_or(base.len())];
    let scheme_end = base.find("://")?;
    let after = scheme_end + 3;
    let authority_end = base[after..]
        .find(['/', '?'])
        .map_or(base.len(), |i| after + i);
    let origin = &base[..authority_end];
    if location.starts_with("//") {
        return Some(format!("{}:{location}", &base[..scheme_end]));
    }
    let rest = &base[authority_end..];
    let base_path = &rest[..rest.find('?').unwrap_or(rest.len())];
    let base_path = if base_path.is_empty() { "/" } else { base_path };
    let (path, query) = if let Some(query) = location.strip_prefix('?') {
        (base_path.to_owned(), Some(query))
    } else {
        let (loc_path, query) = match location.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (location, None),
        };
        let joined = if loc_path.starts_with('/') {
            loc_path.to_owned()
        } else {
            format!("{}{loc_path}", &base_path[..=base_path.rfind('/')?])
        };
        (remove_dot_segments(&joined), query)
    };
    Some(match query {
        Some(q) => format!("{origin}{path}?{q}"),
        None => format!("{origin}{path}"),
    })
}

/// RFC 3986 section 5.2.4, for absolute paths.
fn remove_dot_segments(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let last = segments.len().saturating_sub(1);
    for (i, segment) in segments.iter().enumerate() {
        match *segment {
            "." => {
                if i == last {
                    out.push("");
                }
            }
            ".." => {
                out.pop();
                if i == last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    format!("/{}", out.join("/"))
}

#[cfg(test)]
pub(crate) mod tests;
