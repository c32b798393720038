//! URLs as the runtime handles them: parsed with the `url` crate, shown in
//! logs without credentials, percent-decoded with the `percent-encoding`
//! crate. Presigned URLs carry credentials in their query string, so
//! [`display_url`] is the only form of a client's URL that may appear in a
//! log line or an error.

use url::Url;

/// Why a URL cannot be fetched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum UrlError {
    /// Anything but `http`/`https` (e.g. `file`, `ftp`); holds the scheme.
    #[error("unsupported URL scheme {0:?} (only http and https are allowed)")]
    UnsupportedScheme(String),
    /// Not an absolute URL, or not one with a host.
    #[error("invalid URL: {0}")]
    Invalid(String),
}

/// Parses an absolute `http`/`https` URL with a host.
///
/// The `url` crate only percent-encodes what must be (spaces, quotes, ...)
/// and keeps existing escapes as they are, so a presigned URL's `%2F` or
/// `+` reaches the server byte for byte and its signature still matches.
pub(crate) fn parse_http_url(text: &str) -> Result<Url, UrlError> {
    let url = Url::parse(text.trim()).map_err(|e| match e {
        url::ParseError::RelativeUrlWithoutBase => {
            UrlError::Invalid("not an absolute URL (expected http:// or https://)".into())
        }
        other => UrlError::Invalid(other.to_string()),
    })?;
    check_scheme(&url)?;
    if url.host_str().is_none_or(str::is_empty) {
        return Err(UrlError::Invalid("no host".into()));
    }
    Ok(url)
}

/// Refuses anything but `http` and `https` (a redirect to `file://`, say).
pub(crate) fn check_scheme(url: &Url) -> Result<(), UrlError> {
    match url.scheme() {
        "http" | "https" => Ok(()),
        other => Err(UrlError::UnsupportedScheme(other.to_owned())),
    }
}

/// A URL safe to show: no query, no fragment, no `user:password@`.
pub(crate) fn display_url(text: &str) -> String {
    let text = text.trim();
    match Url::parse(text) {
        Ok(url) if url.has_host() => {
            let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
            format!(
                "{}://{}{port}{}",
                url.scheme(),
                url.host_str().unwrap_or_default(),
                url.path()
            )
        }
        // Not a URL we could fetch: show what precedes any query.
        _ => text[..text.find(['?', '#']).unwrap_or(text.len())].to_owned(),
    }
}

/// Decodes `%XX` escapes (RFC 3986: `+` stays a plus); malformed escapes
/// are kept literally.
pub(crate) fn percent_decode(text: &str) -> Vec<u8> {
    percent_encoding::percent_decode_str(text).collect()
}

/// Whether every `%` in `text` starts a well-formed `%XX` escape: where a
/// value is compared rather than used (a token), a malformed one is refused
/// instead of guessed at.
pub(crate) fn escapes_are_well_formed(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.iter().enumerate().all(|(i, &b)| {
        b != b'%'
            || bytes
                .get(i + 1..i + 3)
                .is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_url_hides_credentials() {
        assert_eq!(
            display_url("https://user:pw@bucket.s3.amazonaws.com/a/b.zip?X-Amz-Signature=s#frag"),
            "https://bucket.s3.amazonaws.com/a/b.zip"
        );
        assert_eq!(display_url("http://h/x"), "http://h/x");
        assert_eq!(display_url("http://h:9000"), "http://h:9000/");
        assert_eq!(display_url("http://h/p@q?x=@"), "http://h/p@q");
        assert_eq!(display_url("not a url?secret"), "not a url");
    }

    #[test]
    fn only_absolute_http_urls_parse() {
        assert!(parse_http_url(" https://h/a b ").is_ok());
        assert_eq!(
            parse_http_url("ftp://h/x"),
            Err(UrlError::UnsupportedScheme("ftp".into()))
        );
        assert!(matches!(
            parse_http_url("/just/a/path"),
            Err(UrlError::Invalid(_))
        ));
    }

    #[test]
    fn presigned_queries_are_kept_byte_for_byte() {
        let raw =
            "https://b.s3.amazonaws.com/k%2Fey?X-Amz-Credential=AK%2F20260101%2Fus&sig=a+b%2Bc";
        assert_eq!(parse_http_url(raw).unwrap().as_str(), raw);
    }

    #[test]
    fn decoding() {
        assert_eq!(percent_decode("a%20b+c%2f"), b"a b+c/");
        assert_eq!(percent_decode("100%.txt"), b"100%.txt");
        assert!(escapes_are_well_formed("a%2Fb"));
        assert!(!escapes_are_well_formed("ab%zz"));
        assert!(!escapes_are_well_formed("ab%2"));
    }
}
