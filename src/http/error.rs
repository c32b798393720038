//! Why a download or upload failed, in words for the end user, and which
//! failures are worth another try.

use std::fmt;
use std::io;
use std::time::Duration;

use reqwest::StatusCode;
use url::Url;

use crate::urls::UrlError;

/// Which wait ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TimeoutPhase {
    /// Establishing the connection (TCP connect and TLS handshake).
    Connect,
    /// The exchange made no progress.
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
    /// Nothing listens there; holds `host:port`. Retried.
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
        /// Whether connecting or waiting for progress timed out.
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

    /// Words a reqwest failure by its cause. reqwest's own text names the
    /// URL, query included, so only the causes underneath are quoted.
    pub(crate) fn from_reqwest(err: reqwest::Error, url: &Url, connect_timeout: Duration) -> Self {
        let err = err.without_url();
        // Our redirect policy's refusals travel inside reqwest's error.
        if let Some(ours) = find_cause::<Self>(&err) {
            return ours.clone();
        }
        if let Some(tls) = find_cause::<rustls::Error>(&err) {
            return Self::Tls(tls.to_string());
        }
        let text = chain(&err);
        if err.is_connect() {
            // The only timeout reqwest runs for us is the connect timeout.
            if err.is_timeout() {
                return Self::Timeout {
                    after: connect_timeout,
                    phase: TimeoutPhase::Connect,
                };
            }
            let host = url.host_str().unwrap_or_default().to_owned();
            if has_io_kind(&err, io::ErrorKind::ConnectionRefused) {
                let port = url.port_or_known_default().unwrap_or_default();
                return Self::ConnectionRefused(format!("{host}:{port}"));
            }
            if text.contains("dns error") {
                return Self::Resolve { host, reason: text };
            }
            return Self::Connect(text);
        }
        Self::Transfer(text)
    }
}

impl From<UrlError> for HttpError {
    fn from(e: UrlError) -> Self {
        match e {
            UrlError::UnsupportedScheme(scheme) => Self::UnsupportedScheme(scheme),
            UrlError::Invalid(why) => Self::InvalidUrl(why),
        }
    }
}

/// "cause: its cause: root cause", skipping causes already in the text.
pub(crate) fn chain(err: &(dyn std::error::Error + 'static)) -> String {
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

/// Every error in the chain, looking inside `io::Error`s too (whose
/// `source` skips the error they wrap).
fn causes<'a>(
    err: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(err), |e| {
        e.downcast_ref::<io::Error>()
            .and_then(|io| io.get_ref())
            .map(|inner| inner as &(dyn std::error::Error + 'static))
            .or_else(|| e.source())
    })
}

fn find_cause<'a, T: std::error::Error + 'static>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    causes(err).find_map(|e| e.downcast_ref::<T>())
}

fn has_io_kind(err: &(dyn std::error::Error + 'static), kind: io::ErrorKind) -> bool {
    causes(err).any(|e| {
        e.downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == kind)
    })
}

fn status_line(status: StatusCode) -> String {
    match status.canonical_reason() {
        Some(reason) => format!("{} {reason}", status.as_u16()),
        None => status.as_u16().to_string(),
    }
}

/// `2s` or `300ms`: how the error texts show a configured duration.
pub(crate) fn fmt_duration(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}
