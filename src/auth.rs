//! Shared-secret authentication of WebSocket upgrades (`--auth-token`).
//!
//! A client proves it knows the token in any of three ways, checked before
//! the upgrade is answered:
//!
//! - `Authorization: Basic base64(USER:TOKEN)`, any user (empty included).
//!   This is what Python `websockets` (and so `runtimeuse-client`) sends for
//!   a URL with credentials, `ws://:TOKEN@host:port`.
//! - `?token=TOKEN` in the request URI (percent-encoded as needed; `+` is a
//!   literal plus, not a space).
//! - `Authorization: Bearer TOKEN`.
//!
//! Only the SHA-256 digest of the token is kept, and candidates are compared
//! digest to digest with a constant-time fold, so neither the token's bytes
//! nor its length leak through timing. Nothing here logs, and the type's
//! `Debug` shows no secret.

use std::fmt;

use data_encoding::{BASE64, BASE64_NOPAD};
use hyper::header::{AUTHORIZATION, HeaderMap};
use hyper::http::Uri;
use ring::digest::{SHA256, SHA256_OUTPUT_LEN, digest};

use crate::urls::{escapes_are_well_formed, percent_decode};

/// Body of the 401 answer to an upgrade without a valid token.
pub(crate) const UNAUTHORIZED_BODY: &str = "runtimeuse: missing or wrong token\n";

/// `WWW-Authenticate` value of that answer (clients that speak Basic auth
/// know to retry with URL credentials).
pub(crate) const WWW_AUTHENTICATE: &str = "Basic realm=\"runtimeuse\"";

/// The query parameter that may carry the token.
pub(crate) const QUERY_PARAM: &str = "token";

/// Checks requests against one shared token.
#[derive(Clone)]
pub(crate) struct TokenAuth {
    expected: [u8; SHA256_OUTPUT_LEN],
}

impl fmt::Debug for TokenAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenAuth { .. }")
    }
}

impl TokenAuth {
    /// A checker for `token`. The token itself is not kept.
    pub(crate) fn new(token: &str) -> Self {
        Self {
            expected: sha256(token.as_bytes()),
        }
    }

    /// Whether `candidate` is the token, in time independent of where (or
    /// whether) the two differ and of either's length.
    pub(crate) fn matches(&self, candidate: &[u8]) -> bool {
        constant_time_eq(&sha256(candidate), &self.expected)
    }

    /// Whether the request carries the token in an accepted form.
    ///
    /// Every candidate is checked (no early exit on the first match), so
    /// which form was used does not show in the timing either.
    pub(crate) fn authorizes(&self, headers: &HeaderMap, uri: &Uri) -> bool {
        let mut ok = false;
        for value in headers.get_all(AUTHORIZATION) {
            if let Some(candidate) = authorization_credential(value.as_bytes()) {
                ok |= self.matches(&candidate);
            }
        }
        if let Some(query) = uri.query() {
            for candidate in query_tokens(query) {
                ok |= self.matches(&candidate);
            }
        }
        ok
    }
}

fn sha256(bytes: &[u8]) -> [u8; SHA256_OUTPUT_LEN] {
    let mut out = [0u8; SHA256_OUTPUT_LEN];
    out.copy_from_slice(digest(&SHA256, bytes).as_ref());
    out
}

/// Equal-length comparison without data-dependent branches.
fn constant_time_eq(a: &[u8; SHA256_OUTPUT_LEN], b: &[u8; SHA256_OUTPUT_LEN]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// The secret an `Authorization` header carries: the password of `Basic`
/// credentials, or a `Bearer` token. `None` for other schemes or malformed
/// values.
fn authorization_credential(value: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(value).ok()?.trim();
    let (scheme, rest) = text.split_once(' ')?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(rest.as_bytes().to_vec());
    }
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = BASE64
        .decode(rest.as_bytes())
        .or_else(|_| BASE64_NOPAD.decode(rest.as_bytes()))
        .ok()?;
    // RFC 7617: the user-id cannot contain a colon, the password can.
    let colon = decoded.iter().position(|&b| b == b':')?;
    Some(decoded[colon + 1..].to_vec())
}

/// Every `token=` value of a query string, percent-decoded. Malformed
/// escapes make a value unusable rather than guessed at.
fn query_tokens(query: &str) -> impl Iterator<Item = Vec<u8>> + '_ {
    query.split('&').filter_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        if !escapes_are_well_formed(pair) || percent_decode(name) != QUERY_PARAM.as_bytes() {
            return None;
        }
        Some(percent_decode(value))
    })
}

#[cfg(test)]
mod tests;
