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

/// Body of the 401 answer to an upgrade without a valid token.
pub const UNAUTHORIZED_BODY: &str = "runtimeuse: missing or wrong token\n";

/// `WWW-Authenticate` value of that answer (clients that speak Basic auth
/// know to retry with URL credentials).
pub const WWW_AUTHENTICATE: &str = "Basic realm=\"runtimeuse\"";

/// The query parameter that may carry the token.
pub const QUERY_PARAM: &str = "token";

/// Checks requests against one shared token.
#[derive(Clone)]
pub struct TokenAuth {
    expected: [u8; SHA256_OUTPUT_LEN],
}

impl fmt::Debug for TokenAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenAuth { .. }")
    }
}

impl TokenAuth {
    /// A checker for `token`. The token itself is not kept.
    pub fn new(token: &str) -> Self {
        Self {
            expected: sha256(token.as_bytes()),
        }
    }

    /// Whether `candidate` is the token, in time independent of where (or
    /// whether) the two differ and of either's length.
    pub fn matches(&self, candidate: &[u8]) -> bool {
        constant_time_eq(&sha256(candidate), &self.expected)
    }

    /// Whether the request carries the token in an accepted form.
    ///
    /// Every candidate is checked (no early exit on the first match), so
    /// which form was used does not show in the timing either.
    pub fn authorizes(&self, headers: &HeaderMap, uri: &Uri) -> bool {
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
        if percent_decode(name)? != QUERY_PARAM.as_bytes() {
            return None;
        }
        percent_decode(value)
    })
}

/// RFC 3986 percent-decoding (`+` stays a plus: tokens are often base64).
fn percent_decode(text: &str) -> Option<Vec<u8>> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    const TOKEN: &str = "s3cret-Token+/=";

    fn check(authorization: Option<&str>, uri: &str) -> bool {
        let mut headers = HeaderMap::new();
        if let Some(value) = authorization {
            headers.insert(AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        }
        TokenAuth::new(TOKEN).authorizes(&headers, &uri.parse().unwrap())
    }

    fn basic(user_pass: &str) -> String {
        format!("Basic {}", BASE64.encode(user_pass.as_bytes()))
    }

    #[test]
    fn basic_with_empty_user_as_python_websockets_sends_it() {
        // websockets 17: build_authorization_basic("", TOKEN) for ws://:TOKEN@host
        assert!(check(Some(&basic(&format!(":{TOKEN}"))), "/"));
    }

    #[test]
    fn basic_with_any_user() {
        assert!(check(Some(&basic(&format!("alice:{TOKEN}"))), "/"));
        assert!(check(Some(&basic(&format!("runtimeuse:{TOKEN}"))), "/"));
    }

    #[test]
    fn basic_scheme_is_case_insensitive_and_padding_optional() {
        let encoded = BASE64_NOPAD.encode(format!("u:{TOKEN}").as_bytes());
        assert!(check(Some(&format!("bAsIc {encoded}")), "/"));
    }

    #[test]
    fn basic_password_may_contain_colons() {
        let auth = TokenAuth::new("a:b:c");
        let mut headers = HeaderMap::new();
        headers.insert(
            AUTHORIZATION,
            HeaderValue::from_str(&basic("user:a:b:c")).unwrap(),
        );
        assert!(auth.authorizes(&headers, &"/".parse().unwrap()));
    }

    #[test]
    fn basic_token_as_user_is_refused() {
        // The token is the password; `TOKEN:` is a user with an empty password.
        assert!(!check(Some(&basic(&format!("{TOKEN}:"))), "/"));
        assert!(!check(Some(&basic(TOKEN)), "/"));
    }

    #[test]
    fn bearer() {
        assert!(check(Some(&format!("Bearer {TOKEN}")), "/"));
        assert!(check(Some(&format!("bearer   {TOKEN}  ")), "/"));
    }

    #[test]
    fn query_token() {
        let encoded = "s3cret-Token%2B%2F%3D";
        assert!(check(None, &format!("/?token={encoded}")));
        assert!(check(None, &format!("/ws?x=1&token={encoded}&y=2")));
    }

    #[test]
    fn percent_encoded_query_token() {
        let auth = TokenAuth::new("a b/c?d&e=f%");
        let uri = "/?token=a%20b%2Fc%3Fd%26e%3Df%25".parse().unwrap();
        assert!(auth.authorizes(&HeaderMap::new(), &uri));
        // Every byte escaped, upper or lower case hex.
        let all: String = "a b/c?d&e=f%"
            .bytes()
            .map(|b| format!("%{b:02x}"))
            .collect();
        let uri = format!("/?token={all}").parse().unwrap();
        assert!(auth.authorizes(&HeaderMap::new(), &uri));
    }

    #[test]
    fn plus_in_query_is_a_literal_plus() {
        let auth = TokenAuth::new("a+b");
        assert!(auth.authorizes(&HeaderMap::new(), &"/?token=a+b".parse().unwrap()));
        assert!(!auth.authorizes(&HeaderMap::new(), &"/?token=a%20b".parse().unwrap()));
    }

    #[test]
    fn wrong_token() {
        assert!(!check(Some(&basic(":wrong")), "/"));
        assert!(!check(Some("Bearer wrong"), "/"));
        assert!(!check(None, "/?token=wrong"));
        // A prefix or an extension of the token is not the token.
        assert!(!check(Some("Bearer s3cret"), "/"));
        assert!(!check(Some(&format!("Bearer {TOKEN}x")), "/"));
        assert!(!check(Some(&basic(":")), "/"));
        assert!(!check(None, "/?token="));
    }

    #[test]
    fn missing_token() {
        assert!(!check(None, "/"));
        assert!(!check(None, "/?"));
        assert!(!check(Some("Bearer"), "/"));
        assert!(!check(Some("Basic"), "/"));
    }

    #[test]
    fn malformed_base64() {
        assert!(!check(Some("Basic !!!not-base64!!!"), "/"));
        assert!(!check(Some("Basic Og=="), "/")); // ":" -> empty password
        assert!(!check(Some("Basic OnMzY3JldC1Ub2tlbisvPQ=x"), "/"));
    }

    #[test]
    fn token_in_another_query_param_is_refused() {
        let encoded = "s3cret-Token%2B%2F%3D";
        assert!(!check(None, &format!("/?auth={encoded}")));
        assert!(!check(None, &format!("/?tokens={encoded}")));
        assert!(!check(None, &format!("/?xtoken={encoded}")));
        assert!(!check(None, &format!("/?Token={encoded}")));
        assert!(!check(None, &format!("/?{encoded}")));
    }

    #[test]
    fn malformed_percent_escape_is_refused() {
        let auth = TokenAuth::new("ab%zz");
        assert!(!auth.authorizes(&HeaderMap::new(), &"/?token=ab%zz".parse().unwrap()));
        assert!(!auth.authorizes(&HeaderMap::new(), &"/?token=ab%2".parse().unwrap()));
        assert!(auth.authorizes(&HeaderMap::new(), &"/?token=ab%25zz".parse().unwrap()));
    }

    #[test]
    fn other_schemes_are_ignored() {
        assert!(!check(Some(&format!("Token {TOKEN}")), "/"));
        assert!(!check(Some(TOKEN), "/"));
    }

    #[test]
    fn any_of_several_credentials_may_match() {
        let mut headers = HeaderMap::new();
        headers.append(AUTHORIZATION, HeaderValue::from_static("Bearer wrong"));
        headers.append(
            AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {TOKEN}")).unwrap(),
        );
        assert!(TokenAuth::new(TOKEN).authorizes(&headers, &"/".parse().unwrap()));
        let uri = "/?token=wrong&token=s3cret-Token%2B%2F%3D".parse().unwrap();
        assert!(TokenAuth::new(TOKEN).authorizes(&HeaderMap::new(), &uri));
    }

    #[test]
    fn debug_shows_no_secret() {
        let shown = format!("{:?}", TokenAuth::new(TOKEN));
        assert!(!shown.contains(TOKEN));
        assert_eq!(shown, "TokenAuth { .. }");
    }

    #[test]
    fn constant_time_eq_compares_every_byte() {
        let a = sha256(b"x");
        let mut b = a;
        assert!(constant_time_eq(&a, &b));
        b[SHA256_OUTPUT_LEN - 1] ^= 1;
        assert!(!constant_time_eq(&a, &b));
    }
}
