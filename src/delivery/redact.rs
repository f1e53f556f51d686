//! URL redaction for attempt logs.
//!
//! Contract
//! - Input: the URL an attempt was sent to.
//! - Output: a string safe to log and store: the values of query parameters whose name looks
//!   secret (contains token, key, secret, sig, pass, pwd, auth, cred, hash) and any userinfo
//!   (a user name alone is often an API key: `https://KEY@host/`) are replaced with
//!   `REDACTED`. The path is kept (operators need it to debug); the fragment is
//!   dropped (it is never sent anyway).
//! - Errors / side effects: none.

use url::Url;

const SECRET_HINTS: [&str; 9] = [
    "token", "key", "secret", "sig", "pass", "pwd", "auth", "cred", "hash",
];
const MASK: &str = "REDACTED";

/// True for parameter names that usually carry credentials (`api_key`, `access_token`,
/// `signature`, `password`, `auth`, ...). Over-matching (`monkey`) only hides a value.
fn looks_secret(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    SECRET_HINTS.iter().any(|h| lower.contains(h))
}

/// The URL with secret values masked.
pub fn redact_url(url: &Url) -> String {
    let mut out = url.clone();
    out.set_fragment(None);
    // Both only fail for cannot-be-a-base URLs, which have no userinfo.
    if url.password().is_some() {
        let _ = out.set_password(Some(MASK));
    }
    if !url.username().is_empty() {
        let _ = out.set_username(MASK);
    }
    if url.query().is_some() {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| {
                let v = if looks_secret(&k) {
                    MASK.to_owned()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        out.query_pairs_mut().clear().extend_pairs(pairs);
    }
    out.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_query_values_and_passwords_are_masked_and_the_rest_kept() {
        let url = Url::parse(
            "https://user:pw@aff.example/pb/x?click=abc&api_key=K1&Token=T&signature=S&amount=1.5&sub1=a%26b#frag",
        )
        .expect("test value");
        assert_eq!(
            redact_url(&url),
            "https://REDACTED:REDACTED@aff.example/pb/x?click=abc&api_key=REDACTED&Token=REDACTED\
             &signature=REDACTED&amount=1.5&sub1=a%26b"
        );
        let url = Url::parse("https://APIKEY123@aff.example/pb?pwd=p&md5hash=h&credential=c")
            .expect("test value");
        assert_eq!(
            redact_url(&url),
            "https://REDACTED@aff.example/pb?pwd=REDACTED&md5hash=REDACTED&credential=REDACTED"
        );
    }

    #[test]
    fn a_url_without_query_is_unchanged() {
        let url = Url::parse("https://aff.example/pb").expect("test value");
        assert_eq!(redact_url(&url), "https://aff.example/pb");
    }
}
