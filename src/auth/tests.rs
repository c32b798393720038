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
