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
pub struct HttpOptions {
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
pub enum TimeoutPhase {
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
pub enum HttpError {
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
    pub fn is_retryable(&self) -> bool {
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
    pub fn status(&self) -> Option<StatusCode> {
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
pub fn display_url(url: &str) -> String {
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
pub fn validate_url(url: &str) -> Result<(), HttpError> {
    Target::parse(url).map(|_| ())
}

/// A shared HTTP(S) client; cloning is cheap (one `Arc`).
#[derive(Clone)]
pub struct HttpClient {
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
    pub fn new(options: HttpOptions, extra_root_ca_pem: Option<&[u8]>) -> Result<Self, HttpError> {
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

    /// The options this client was built with.
    pub fn options(&self) -> &HttpOptions {
        &self.inner.options
    }

    /// GETs `url` into `dest` (created or truncated), streaming the body to
    /// disk; returns the number of bytes written. Redirects are followed and
    /// failed attempts retried from scratch. `dest` is only created once a
    /// 2xx response arrived, and removed again if its transfer fails.
    pub async fn get_to_file(&self, url: &str, dest: &Path) -> Result<u64, HttpError> {
        self.with_retries(url, || self.get_once(url, dest)).await
    }

    /// PUTs the file at `path` to `url` with `Content-Type` (omitted when
    /// empty) and `Content-Length`, streamed from disk; each attempt reopens
    /// the file. Any non-2xx final status is an error.
    pub async fn put_file(
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
pub fn percent_decode(input: &[u8]) -> Vec<u8> {
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
pub(crate) mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::hash::{DefaultHasher, Hasher};
    use std::sync::Mutex;
    use tokio::net::TcpListener;
    use tokio::task::JoinSet;

    /// A request as the fixture server saw it.
    #[derive(Debug, Clone)]
    pub struct SeenRequest {
        pub method: String,
        pub path: String,
        pub headers: HashMap<String, String>,
        pub body: Vec<u8>,
    }

    /// What the fixture server answers.
    pub enum Reply {
        /// Raw response bytes, then close.
        Raw(Vec<u8>),
        /// Raw bytes, then hang until the test ends.
        Stall(Vec<u8>),
        /// 200 with `len` bytes of [`pattern`].
        Pattern(u64),
    }

    pub fn ok(body: &[u8]) -> Reply {
        let mut raw = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        raw.extend_from_slice(body);
        Reply::Raw(raw)
    }

    pub fn status(code: u16, reason: &str) -> Reply {
        Reply::Raw(
            format!("HTTP/1.1 {code} {reason}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                .into_bytes(),
        )
    }

    pub fn redirect(code: u16, location: &str) -> Reply {
        Reply::Raw(
            format!(
                "HTTP/1.1 {code} Moved\r\nLocation: {location}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
            .into_bytes(),
        )
    }

    /// Deterministic test bytes: chunk `offset..offset+len` of an endless stream.
    pub fn pattern(offset: u64, len: usize) -> Vec<u8> {
        // A prime-sized block repeated, so chunk boundaries never line up
        // with it; copying slices keeps 50 MB cheap even in debug builds.
        const BLOCK: usize = 65_521;
        static DATA: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
        let data = DATA.get_or_init(|| {
            let block: Vec<u8> = (0..BLOCK as u64)
                .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
                .collect();
            block.repeat(2)
        });
        let mut out = Vec::with_capacity(len);
        let mut at = (offset % BLOCK as u64) as usize;
        while out.len() < len {
            let n = (len - out.len()).min(BLOCK);
            out.extend_from_slice(&data[at..at + n]);
            at = (at + n) % BLOCK;
        }
        out
    }

    type Handler = dyn Fn(&SeenRequest, usize) -> Reply + Send + Sync;

    /// A canned-response HTTP/1.1 server on 127.0.0.1; stops when dropped.
    pub struct TestServer {
        pub addr: std::net::SocketAddr,
        pub requests: Arc<Mutex<Vec<SeenRequest>>>,
        task: JoinHandle<()>,
    }

    impl Drop for TestServer {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    impl TestServer {
        pub async fn start(
            handler: impl Fn(&SeenRequest, usize) -> Reply + Send + Sync + 'static,
        ) -> Self {
            Self::start_with(None, handler).await
        }

        pub async fn start_with(
            tls: Option<tokio_rustls::TlsAcceptor>,
            handler: impl Fn(&SeenRequest, usize) -> Reply + Send + Sync + 'static,
        ) -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let requests = Arc::new(Mutex::new(Vec::new()));
            let handler: Arc<Handler> = Arc::new(handler);
            let seen = requests.clone();
            let task = tokio::spawn(async move {
                let mut connections = JoinSet::new();
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        return;
                    };
                    let (handler, seen, tls) = (handler.clone(), seen.clone(), tls.clone());
                    connections.spawn(async move {
                        match tls {
                            Some(acceptor) => {
                                if let Ok(stream) = acceptor.accept(stream).await {
                                    serve_one(stream, &*handler, &seen).await;
                                }
                            }
                            None => serve_one(stream, &*handler, &seen).await,
                        }
                    });
                    while connections.try_join_next().is_some() {}
                }
            });
            Self {
                addr,
                requests,
                task,
            }
        }

        pub fn url(&self, path: &str) -> String {
            format!("http://{}{path}", self.addr)
        }

        pub fn count(&self) -> usize {
            self.requests.lock().unwrap().len()
        }

        /// The request targets (path and query) seen so far, in order.
        pub fn paths(&self) -> Vec<String> {
            self.requests
                .lock()
                .unwrap()
                .iter()
                .map(|r| r.path.clone())
                .collect()
        }
    }

    async fn serve_one<S: AsyncRead + AsyncWrite + Unpin>(
        mut stream: S,
        handler: &Handler,
        seen: &Mutex<Vec<SeenRequest>>,
    ) {
        let mut buf = Vec::new();
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            if buf.len() > 64 * 1024 {
                return;
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let mut request_line = lines.next().unwrap_or("").split(' ');
        let method = request_line.next().unwrap_or("").to_owned();
        let path = request_line.next().unwrap_or("").to_owned();
        let headers: HashMap<String, String> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let len: usize = headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = buf[head_end..].to_vec();
        while body.len() < len {
            let mut chunk = vec![0u8; 64 * 1024];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => body.extend_from_slice(&chunk[..n]),
            }
        }
        let request = SeenRequest {
            method,
            path,
            headers,
            body,
        };
        let index = {
            let mut seen = seen.lock().unwrap();
            seen.push(request.clone());
            seen.len() - 1
        };
        match handler(&request, index) {
            Reply::Raw(raw) => {
                let _ = stream.write_all(&raw).await;
                let _ = stream.shutdown().await;
            }
            Reply::Stall(raw) => {
                let _ = stream.write_all(&raw).await;
                let _ = stream.flush().await;
                tokio::time::sleep(Duration::from_secs(120)).await;
            }
            Reply::Pattern(len) => {
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
                );
                if stream.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let mut offset = 0;
                while offset < len {
                    let n = (len - offset).min(256 * 1024) as usize;
                    if stream.write_all(&pattern(offset, n)).await.is_err() {
                        return;
                    }
                    offset += n as u64;
                }
                let _ = stream.shutdown().await;
            }
        }
    }

    /// Options that keep retry tests fast.
    pub fn fast_options() -> HttpOptions {
        HttpOptions {
            retry_backoff: Duration::from_millis(10),
            read_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            ..HttpOptions::default()
        }
    }

    pub fn fast_client() -> HttpClient {
        HttpClient::new(fast_options(), None).unwrap()
    }

    #[tokio::test]
    async fn downloads_a_file_byte_for_byte() {
        let body: Vec<u8> = (0..=255u8).cycle().take(10_000).collect();
        let expected = body.clone();
        let server = TestServer::start(move |_, _| ok(&body)).await;
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out.bin");
        let n = fast_client()
            .get_to_file(&server.url("/file.bin"), &dest)
            .await
            .unwrap();
        assert_eq!(n, 10_000);
        assert_eq!(std::fs::read(&dest).unwrap(), expected);
        let seen = &server.requests.lock().unwrap()[0];
        assert_eq!(seen.method, "GET");
        assert_eq!(seen.path, "/file.bin");
        assert_eq!(seen.headers["host"], server.addr.to_string());
    }

    #[tokio::test]
    async fn follows_a_redirect_chain() {
        let server = TestServer::start(|req, _| match req.path.as_str() {
            "/a" => redirect(302, "/dir/b?x=1"),
            "/dir/b?x=1" => redirect(301, "c"),
            "/dir/c" => redirect(307, "../final.txt"),
            "/final.txt" => ok(b"landed"),
            _ => status(404, "Not Found"),
        })
        .await;
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out");
        fast_client()
            .get_to_file(&server.url("/a"), &dest)
            .await
            .unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"landed");
        assert_eq!(server.paths(), ["/a", "/dir/b?x=1", "/dir/c", "/final.txt"]);
    }

    #[tokio::test]
    async fn redirect_loops_stop() {
        let server = TestServer::start(|_, _| redirect(302, "/again")).await;
        let dir = tempfile::tempdir().unwrap();
        let err = fast_client()
            .get_to_file(&server.url("/start"), &dir.path().join("x"))
            .await
            .unwrap_err();
        assert_eq!(err, HttpError::TooManyRedirects(10));
        assert_eq!(server.count(), 11, "no retries for a redirect loop");
    }

    #[tokio::test]
    async fn redirects_cannot_leave_http() {
        let server = TestServer::start(|_, _| redirect(302, "file:///etc/passwd")).await;
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("x");
        let err = fast_client()
            .get_to_file(&server.url("/start"), &dest)
            .await
            .unwrap_err();
        assert_eq!(err, HttpError::UnsupportedScheme("file".into()));
        assert!(!dest.exists());
    }

    #[tokio::test]
    async fn not_found_is_not_retried_and_creates_nothing() {
        let server = TestServer::start(|_, _| status(404, "Not Found")).await;
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("x");
        let err = fast_client()
            .get_to_file(&server.url("/x?X-Amz-Signature=topsecret"), &dest)
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), "HTTP 404 Not Found");
        assert_eq!(err.status(), Some(StatusCode::NOT_FOUND));
        assert_eq!(server.count(), 1);
        assert!(!dest.exists());
    }

    #[tokio::test]
    async fn server_errors_are_retried_until_success() {
        let server = TestServer::start(|_, i| {
            if i < 2 {
                status(500, "Internal Server Error")
            } else {
                ok(b"third time")
            }
        })
        .await;
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("x");
        fast_client()
            .get_to_file(&server.url("/x"), &dest)
            .await
            .unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"third time");
        assert_eq!(server.count(), 3);
    }

    #[tokio::test]
    async fn persistent_server_errors_fail_after_the_last_attempt() {
        let server = TestServer::start(|_, _| status(503, "Service Unavailable")).await;
        let dir = tempfile::tempdir().unwrap();
        let started = std::time::Instant::now();
        let err = fast_client()
            .get_to_file(&server.url("/x"), &dir.path().join("x"))
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), "HTTP 503 Service Unavailable");
        assert_eq!(server.count(), 3);
        // 10 ms + 20 ms of backoff.
        assert!(started.elapsed() >= Duration::from_millis(30));
    }

    #[tokio::test]
    async fn a_stalled_body_times_out_and_leaves_no_file() {
        let server = TestServer::start(|_, _| {
            Reply::Stall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nonly a little".to_vec())
        })
        .await;
        let client = HttpClient::new(
            HttpOptions {
                read_timeout: Duration::from_millis(300),
                max_attempts: 2,
                ..fast_options()
            },
            None,
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("x");
        let started = std::time::Instant::now();
        let err = client
            .get_to_file(&server.url("/x"), &dest)
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "timed out after 300ms waiting for the server"
        );
        assert_eq!(server.count(), 2, "a timeout is retried");
        assert!(started.elapsed() < Duration::from_secs(3));
        assert!(!dest.exists());
    }

    #[tokio::test]
    async fn a_server_that_never_answers_times_out() {
        let server = TestServer::start(|_, _| Reply::Stall(Vec::new())).await;
        let client = HttpClient::new(
            HttpOptions {
                read_timeout: Duration::from_millis(200),
                max_attempts: 1,
                ..fast_options()
            },
            None,
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let err = client
            .get_to_file(&server.url("/x"), &dir.path().join("x"))
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                HttpError::Timeout {
                    phase: TimeoutPhase::Idle,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[tokio::test]
    async fn connection_refused_is_reported_after_retries() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let dir = tempfile::tempdir().unwrap();
        let err = fast_client()
            .get_to_file(&format!("http://127.0.0.1:{port}/x"), &dir.path().join("x"))
            .await
            .unwrap_err();
        assert!(err.to_string().starts_with("connection refused"), "{err}");
        assert!(err.is_retryable());
    }

    #[tokio::test]
    async fn only_http_and_https_are_fetched() {
        let dir = tempfile::tempdir().unwrap();
        let client = fast_client();
        let err = client
            .get_to_file("file:///etc/passwd", &dir.path().join("x"))
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "unsupported URL scheme \"file\" (only http and https are allowed)"
        );
        let err = client
            .get_to_file("ftp://example.com/x", &dir.path().join("x"))
            .await
            .unwrap_err();
        assert_eq!(err, HttpError::UnsupportedScheme("ftp".into()));
        let err = client
            .get_to_file("/just/a/path", &dir.path().join("x"))
            .await
            .unwrap_err();
        assert!(matches!(err, HttpError::InvalidUrl(_)), "{err}");
        assert!(!dir.path().join("x").exists());
    }

    #[tokio::test]
    async fn a_large_download_streams_to_disk() {
        const LEN: u64 = 50 * 1024 * 1024;
        let server = TestServer::start(|_, _| Reply::Pattern(LEN)).await;
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("big");
        let n = fast_client()
            .get_to_file(&server.url("/big"), &dest)
            .await
            .unwrap();
        assert_eq!(n, LEN);
        assert_eq!(std::fs::metadata(&dest).unwrap().len(), LEN);

        let mut expected = DefaultHasher::new();
        let mut actual = DefaultHasher::new();
        let mut file = std::fs::File::open(&dest).unwrap();
        let mut offset = 0u64;
        let mut buf = vec![0u8; 1024 * 1024];
        loop {
            let n = std::io::Read::read(&mut file, &mut buf).unwrap();
            if n == 0 {
                break;
            }
            actual.write(&buf[..n]);
            expected.write(&pattern(offset, n));
            offset += n as u64;
        }
        assert_eq!(offset, LEN);
        assert_eq!(actual.finish(), expected.finish());
    }

    #[tokio::test]
    async fn put_file_sends_exact_bytes_and_headers() {
        let server = TestServer::start(|_, _| status(200, "OK")).await;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("artifact.json");
        let content = pattern(7, 200_000);
        std::fs::write(&path, &content).unwrap();
        fast_client()
            .put_file(&server.url("/upload?sig=abc"), &path, "application/json")
            .await
            .unwrap();
        let seen = server.requests.lock().unwrap()[0].clone();
        assert_eq!(seen.method, "PUT");
        assert_eq!(seen.path, "/upload?sig=abc");
        assert_eq!(seen.headers["content-type"], "application/json");
        assert_eq!(seen.headers["content-length"], "200000");
        assert!(seen.body == content, "uploaded bytes differ");
    }

    #[tokio::test]
    async fn put_file_times_out_when_the_server_stops_reading() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let sink = tokio::spawn(async move {
            let (_stream, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(60)).await;
        });
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big");
        std::fs::write(&path, vec![7u8; 32 * 1024 * 1024]).unwrap();
        let client = HttpClient::new(
            HttpOptions {
                read_timeout: Duration::from_millis(300),
                max_attempts: 1,
                ..fast_options()
            },
            None,
        )
        .unwrap();
        let err = client
            .put_file(
                &format!("http://{addr}/u"),
                &path,
                "application/octet-stream",
            )
            .await
            .unwrap_err();
        sink.abort();
        assert_eq!(
            err.to_string(),
            "timed out after 300ms waiting for the server"
        );
    }

    #[tokio::test]
    async fn put_file_of_an_empty_file() {
        let server = TestServer::start(|_, _| status(204, "No Content")).await;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty");
        std::fs::write(&path, b"").unwrap();
        fast_client()
            .put_file(&server.url("/u"), &path, "")
            .await
            .unwrap();
        let seen = server.requests.lock().unwrap()[0].clone();
        assert_eq!(seen.headers["content-length"], "0");
        assert!(!seen.headers.contains_key("content-type"));
    }

    #[tokio::test]
    async fn put_file_retries_server_errors_with_the_whole_body() {
        let server = TestServer::start(|_, i| {
            if i == 0 {
                status(500, "Internal Server Error")
            } else {
                status(200, "OK")
            }
        })
        .await;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.txt");
        std::fs::write(&path, b"artifact body").unwrap();
        fast_client()
            .put_file(&server.url("/u"), &path, "text/plain")
            .await
            .unwrap();
        let seen = server.requests.lock().unwrap().clone();
        assert_eq!(seen.len(), 2);
        assert!(seen.iter().all(|r| r.body == b"artifact body"));
    }

    #[tokio::test]
    async fn put_file_reports_client_errors_without_retrying() {
        let server = TestServer::start(|_, _| status(403, "Forbidden")).await;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.txt");
        std::fs::write(&path, b"x").unwrap();
        let err = fast_client()
            .put_file(
                &server.url("/u?X-Amz-Credential=secret"),
                &path,
                "text/plain",
            )
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), "HTTP 403 Forbidden");
        assert_eq!(server.count(), 1);
        let err = fast_client()
            .put_file(&server.url("/u"), &dir.path().join("missing"), "text/plain")
            .await
            .unwrap_err();
        assert!(matches!(err, HttpError::Local(_)), "{err}");
    }

    #[tokio::test]
    async fn put_follows_307_with_the_body_and_303_as_get() {
        let server = TestServer::start(|req, _| match (req.method.as_str(), req.path.as_str()) {
            ("PUT", "/first") => redirect(307, "/second"),
            ("PUT", "/second") => redirect(303, "/done"),
            ("GET", "/done") => ok(b""),
            _ => status(400, "Bad Request"),
        })
        .await;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.txt");
        std::fs::write(&path, b"payload").unwrap();
        fast_client()
            .put_file(&server.url("/first"), &path, "text/plain")
            .await
            .unwrap();
        let seen = server.requests.lock().unwrap().clone();
        assert_eq!(seen.len(), 3);
        assert_eq!(seen[1].body, b"payload");
        assert_eq!(seen[2].method, "GET");
        assert!(seen[2].body.is_empty());
    }

    #[test]
    fn display_url_hides_credentials() {
        assert_eq!(
            display_url("https://user:pw@bucket.s3.amazonaws.com/a/b.zip?X-Amz-Signature=s#frag"),
            "https://bucket.s3.amazonaws.com/a/b.zip"
        );
        assert_eq!(display_url("http://h/x"), "http://h/x");
        assert_eq!(display_url("http://h/p@q?x=@"), "http://h/p@q");
        assert_eq!(display_url("not a url?secret"), "not a url");
    }

    #[test]
    fn targets_parse() {
        let t = Target::parse("https://u:p%40ss@example.com:8443/a%20b?q=1#f").unwrap();
        assert!(t.https);
        assert_eq!(t.host, "example.com");
        assert_eq!(t.port, 8443);
        assert_eq!(t.host_header, "example.com:8443");
        assert_eq!(t.path_and_query, "/a%20b?q=1");
        assert_eq!(t.basic_auth.as_deref(), Some("Basic dTpwQHNz")); // u:p@ss
        let t = Target::parse("HTTP://[::1]?x").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 80));
        assert_eq!(t.path_and_query, "/?x");
        let t = Target::parse("http://h/my file.txt").unwrap();
        assert_eq!(t.path_and_query, "/my%20file.txt");
        assert!(matches!(
            Target::parse("http:///x"),
            Err(HttpError::InvalidUrl(_))
        ));
    }

    #[test]
    fn locations_resolve() {
        let base = "https://h:1/a/b/c?q=1";
        assert_eq!(resolve_location(base, "http://o/x").unwrap(), "http://o/x");
        assert_eq!(resolve_location(base, "//o/x").unwrap(), "https://o/x");
        assert_eq!(resolve_location(base, "/x?y").unwrap(), "https://h:1/x?y");
        assert_eq!(resolve_location(base, "d").unwrap(), "https://h:1/a/b/d");
        assert_eq!(
            resolve_location(base, "../../../d").unwrap(),
            "https://h:1/d"
        );
        assert_eq!(resolve_location(base, "?z").unwrap(), "https://h:1/a/b/c?z");
        assert_eq!(resolve_location("http://h", "x").unwrap(), "http://h/x");
        assert_eq!(resolve_location(base, ""), None);
    }

    #[test]
    fn base64_matches_rfc4648() {
        for (input, expected) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), expected);
        }
    }

    /// Writes a self-signed certificate for 127.0.0.1/localhost with openssl.
    fn self_signed(dir: &Path) -> (Vec<u8>, Vec<u8>) {
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        let status = std::process::Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            ])
            .args(["-subj", "/CN=localhost"])
            .args(["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"])
            .args(["-addext", "basicConstraints=critical,CA:FALSE"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl runs");
        assert!(status.success());
        (std::fs::read(cert).unwrap(), std::fs::read(key).unwrap())
    }

    fn tls_acceptor(cert_pem: &[u8], key_pem: &[u8]) -> tokio_rustls::TlsAcceptor {
        let certs: Vec<_> = CertificateDer::pem_slice_iter(cert_pem)
            .map(Result::unwrap)
            .collect();
        let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(key_pem).unwrap();
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

    #[tokio::test]
    async fn https_checks_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = self_signed(dir.path());
        let server =
            TestServer::start_with(Some(tls_acceptor(&cert, &key)), |_, _| ok(b"secure")).await;
        let url = format!("https://127.0.0.1:{}/s.txt", server.addr.port());
        let dest = dir.path().join("s.txt");

        let trusting = HttpClient::new(fast_options(), Some(&cert)).unwrap();
        trusting.get_to_file(&url, &dest).await.unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"secure");
        let by_name = format!("https://localhost:{}/s.txt", server.addr.port());
        trusting.get_to_file(&by_name, &dest).await.unwrap();

        let dest2 = dir.path().join("s2.txt");
        let err = fast_client().get_to_file(&url, &dest2).await.unwrap_err();
        assert!(matches!(err, HttpError::Tls(_)), "{err:?}");
        assert!(err.to_string().contains("certificate"), "{err}");
        assert!(!err.is_retryable());
        assert!(!dest2.exists());
        assert_eq!(
            server.count(),
            2,
            "the untrusted attempt never sent a request"
        );
    }

    #[test]
    fn bad_extra_roots_are_rejected() {
        let err = HttpClient::new(HttpOptions::default(), Some(b"not pem")).unwrap_err();
        assert!(matches!(err, HttpError::InvalidConfig(_)), "{err}");
    }
}
