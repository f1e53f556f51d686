//! Authentication schemes, compiled from `[[auth]]` tables into a closed enum.
//!
//! Input: a `RawRequest` (raw body bytes untouched: every platform signs the bytes it sent,
//! so nothing may re-serialise the body before verification). Output: `Ok(())` or a
//! [`VerifyError`] with a stable code. Comparisons of secrets and MACs are constant-time
//! (`subtle::ConstantTimeEq`); a MAC is computed once per secret, whatever the number of
//! signatures a request carries. New HMAC schemes are assembled from
//! message parts in TOML; no scheme needs Rust code of its own.

use std::net::IpAddr;
use std::path::Path;

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use hmac::{Hmac, KeyInit, Mac};
use ipnet::IpNet;
use serde_json::Value;
use subtle::ConstantTimeEq;
use toml::Spanned;

use super::error::{ConfigError, VerifyError};
use super::path::{CompiledPath, scalar_text};
use super::spec::{
    Algorithm, AuthFile, AuthKind, KeyEncoding, MessagePart, SigEncoding, TimestampUnit,
};
use super::{RawRequest, header_field};

/// Most signatures one request may carry (Standard Webhooks and Stripe send one per secret the
/// sender signs with; two or three during a rotation). More is refused before any MAC.
pub const MAX_SIGNATURES: usize = 16;

/// Base64 that accepts padded and unpadded input and non-zero trailing bits: Standard
/// Webhooks secrets circulate in all these forms and the reference libraries accept them.
const B64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// A compiled `[[auth]]` entry. Closed on purpose: schemes are data, not plugins.
#[derive(Debug)]
pub(crate) enum Auth {
    Hmac(HmacAuth),
    Token(TokenAuth),
    PayloadAllowList {
        path: CompiledPath,
        allowed: Vec<String>,
    },
    IpAllowList(Vec<IpNet>),
    None,
}

#[derive(Debug)]
pub(crate) struct HmacAuth {
    algorithm: Algorithm,
    /// One key, or two while a secret is being rotated.
    keys: Vec<Vec<u8>>,
    message: Vec<MessagePart>,
    sig_header: String,
    sig_field: Option<String>,
    sig_list_version: Option<String>,
    sig_prefix: Option<String>,
    sig_encoding: SigEncoding,
    timestamp: Option<Timestamp>,
    base_url: String,
    /// Bytes whose percent-escapes are decoded in `url` / `path_and_query` before signing.
    url_decode: UrlDecode,
}

/// A fixed set of percent-escapes to decode in a URL before it is signed, and no others.
/// HubSpot v3 signs its URI with `%3A` → `:`, `%2F` → `/` … decoded but `%20`, `%26`
/// and the rest kept; decoding more (or fewer) breaks verification, so the set is exact.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct UrlDecode {
    /// Decoded bytes, each printable ASCII other than `%`.
    bytes: Vec<u8>,
}

impl UrlDecode {
    /// Parses entries such as `"%3A"` (hex digits in either case).
    fn parse(escape: &str) -> Result<u8, String> {
        let bad = || format!("url_decode entry `{escape}` is not a percent-escape such as \"%3A\"");
        let byte = match escape.as_bytes() {
            [b'%', hi, lo] => hex_value(*hi)
                .zip(hex_value(*lo))
                .map(|(hi, lo)| hi << 4 | lo),
            _ => None,
        }
        .ok_or_else(bad)?;
        // Control bytes, space, non-ASCII and `%` itself would make the signed text ambiguous
        // (`%2541` would sign like `%41`); no platform asks for them.
        if !byte.is_ascii_graphic() || byte == b'%' {
            return Err(format!(
                "url_decode entry `{escape}` decodes to a byte that must stay encoded (only printable ASCII other than `%` may be decoded)"
            ));
        }
        Ok(byte)
    }

    fn from_bytes(mut bytes: Vec<u8>) -> UrlDecode {
        bytes.sort_unstable();
        bytes.dedup();
        UrlDecode { bytes }
    }

    fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Appends `text` to `out`, decoding exactly the configured escapes (hex in either
    /// case); every other byte, including other escapes, is copied as received.
    fn push_decoded(&self, out: &mut Vec<u8>, text: &str) {
        let b = text.as_bytes();
        if self.bytes.is_empty() || !b.contains(&b'%') {
            out.extend_from_slice(b);
            return;
        }
        let mut i = 0;
        while i < b.len() {
            let decoded = match (b[i], b.get(i + 1), b.get(i + 2)) {
                (b'%', Some(&hi), Some(&lo)) => hex_value(hi)
                    .zip(hex_value(lo))
                    .map(|(hi, lo)| hi << 4 | lo)
                    .filter(|byte| self.bytes.contains(byte)),
                _ => None,
            };
            match decoded {
                Some(byte) => {
                    out.push(byte);
                    i += 3;
                }
                None => {
                    out.push(b[i]);
                    i += 1;
                }
            }
        }
    }
}

#[derive(Debug)]
struct Timestamp {
    header: String,
    field: Option<String>,
    unit: TimestampUnit,
    tolerance_secs: i64,
}

#[derive(Debug)]
pub(crate) struct TokenAuth {
    tokens: Vec<String>,
    header: Option<String>,
    query: Option<String>,
    prefix: Option<String>,
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Compiles one `[[auth]]` table; `min_secret_bytes` guards against empty or toy secrets.
pub(crate) fn compile(
    file: &Path,
    text: &str,
    spanned: &Spanned<AuthFile>,
    min_secret_bytes: usize,
) -> Result<Auth, ConfigError> {
    let a = spanned.get_ref();
    let here = |reason: String| ConfigError::at_span(file, text, Some(spanned.span()), reason);
    let at = |span: std::ops::Range<usize>, reason: String| {
        ConfigError::at_span(file, text, Some(span), reason)
    };
    let kind_name = match a.kind {
        AuthKind::Hmac => "hmac",
        AuthKind::Token => "token",
        AuthKind::PayloadAllowList => "payload_allow_list",
        AuthKind::IpAllowList => "ip_allow_list",
        AuthKind::None => "none",
    };
    // Reject keys that belong to another type, so a typo'd type cannot silently disable a check.
    let present: Vec<(&str, bool)> = vec![
        ("algorithm", a.algorithm.is_some()),
        ("secrets", !a.secrets.is_empty()),
        ("key_encoding", a.key_encoding.is_some()),
        ("key_prefix", a.key_prefix.is_some()),
        ("message", !a.message.is_empty()),
        ("signature", a.signature.is_some()),
        ("timestamp", a.timestamp.is_some()),
        ("base_url", a.base_url.is_some()),
        ("url_decode", !a.url_decode.is_empty()),
        ("tokens", !a.tokens.is_empty()),
        ("header", a.header.is_some()),
        ("query", a.query.is_some()),
        ("prefix", a.prefix.is_some()),
        ("path", a.path.is_some()),
        ("allowed", !a.allowed.is_empty()),
        ("cidrs", !a.cidrs.is_empty()),
    ];
    let allowed_keys: &[&str] = match a.kind {
        AuthKind::Hmac => &[
            "algorithm",
            "secrets",
            "key_encoding",
            "key_prefix",
            "message",
            "signature",
            "timestamp",
            "base_url",
            "url_decode",
        ],
        AuthKind::Token => &["tokens", "header", "query", "prefix"],
        AuthKind::PayloadAllowList => &["path", "allowed"],
        AuthKind::IpAllowList => &["cidrs"],
        AuthKind::None => &[],
    };
    if let Some((k, _)) = present
        .iter()
        .find(|(k, set)| *set && !allowed_keys.contains(k))
    {
        return Err(here(format!(
            "field `{k}` does not apply to auth type `{kind_name}`"
        )));
    }
    match a.kind {
        AuthKind::None => Ok(Auth::None),
        AuthKind::Hmac => {
            let algorithm = a
                .algorithm
                .ok_or_else(|| here("hmac needs `algorithm` (sha256 | sha1)".into()))?;
            let key_encoding = a.key_encoding.unwrap_or(KeyEncoding::Raw);
            if a.secrets.is_empty() || a.secrets.len() > 2 {
                return Err(here(
                    "hmac needs `secrets` with one secret, or two during rotation".into(),
                ));
            }
            let mut keys = Vec::new();
            for s in &a.secrets {
                let key = decode_key(s.get_ref(), key_encoding, a.key_prefix.as_deref())
                    .map_err(|r| at(s.span(), r))?;
                if key.len() < min_secret_bytes {
                    return Err(at(
                        s.span(),
                        format!(
                            "secret is {} bytes after decoding; at least {min_secret_bytes} are required",
                            key.len()
                        ),
                    ));
                }
                keys.push(key);
            }
            if a.message.is_empty() {
                return Err(here("hmac needs `message` (e.g. [\"body\"])".into()));
            }
            let sig = a
                .signature
                .clone()
                .ok_or_else(|| here("hmac needs `signature`".into()))?;
            if sig.field.is_some() && sig.list_version.is_some() {
                return Err(here(
                    "signature takes `field` or `list_version`, not both".into(),
                ));
            }
            let uses_ts = a.message.contains(&MessagePart::Timestamp);
            if uses_ts && a.timestamp.is_none() {
                return Err(here(
                    "message uses \"timestamp\" but no `timestamp` is configured".into(),
                ));
            }
            if a.message.contains(&MessagePart::Url) && a.base_url.is_none() {
                return Err(here(
                    "message uses \"url\" but no `base_url` is configured".into(),
                ));
            }
            let mut decode = Vec::new();
            for e in &a.url_decode {
                decode.push(UrlDecode::parse(e.get_ref()).map_err(|r| at(e.span(), r))?);
            }
            let url_decode = UrlDecode::from_bytes(decode);
            if !url_decode.is_empty()
                && !a.message.contains(&MessagePart::Url)
                && !a.message.contains(&MessagePart::PathAndQuery)
            {
                return Err(here(
                    "url_decode applies to the \"url\" and \"path_and_query\" message parts, and message has neither".into(),
                ));
            }
            let timestamp = match &a.timestamp {
                Some(t) if t.tolerance_secs <= 0 => {
                    return Err(here("timestamp.tolerance_secs must be positive".into()));
                }
                Some(t) => Some(Timestamp {
                    header: t.header.clone(),
                    field: t.field.clone(),
                    unit: t.unit,
                    tolerance_secs: t.tolerance_secs,
                }),
                None => None,
            };
            Ok(Auth::Hmac(HmacAuth {
                algorithm,
                keys,
                message: a.message.clone(),
                sig_header: sig.header,
                sig_field: sig.field,
                sig_list_version: sig.list_version,
                sig_prefix: sig.prefix,
                sig_encoding: sig.encoding,
                timestamp,
                base_url: a
                    .base_url
                    .clone()
                    .unwrap_or_default()
                    .trim_end_matches('/')
                    .to_string(),
                url_decode,
            }))
        }
        AuthKind::Token => {
            if a.header.is_some() == a.query.is_some() {
                return Err(here(
                    "token needs exactly one of `header` or `query`".into(),
                ));
            }
            if a.tokens.is_empty() || a.tokens.len() > 2 {
                return Err(here(
                    "token needs `tokens` with one token, or two during rotation".into(),
                ));
            }
            for t in &a.tokens {
                if t.get_ref().trim().is_empty() {
                    return Err(at(
                        t.span(),
                        "token is empty or only whitespace (unset environment variable?)".into(),
                    ));
                }
                if t.get_ref().len() < min_secret_bytes {
                    return Err(at(
                        t.span(),
                        format!(
                            "token is {} bytes; at least {min_secret_bytes} are required",
                            t.get_ref().len()
                        ),
                    ));
                }
            }
            Ok(Auth::Token(TokenAuth {
                tokens: a.tokens.iter().map(|t| t.get_ref().clone()).collect(),
                header: a.header.clone(),
                query: a.query.clone(),
                prefix: a.prefix.clone(),
            }))
        }
        AuthKind::PayloadAllowList => {
            let p = a
                .path
                .as_ref()
                .ok_or_else(|| here("payload_allow_list needs `path`".into()))?;
            let path = CompiledPath::compile(p.get_ref()).map_err(|r| at(p.span(), r))?;
            if a.allowed.is_empty() {
                return Err(here(
                    "payload_allow_list needs a non-empty `allowed`".into(),
                ));
            }
            let mut allowed = Vec::new();
            for v in &a.allowed {
                if v.get_ref().trim().is_empty() {
                    return Err(at(
                        v.span(),
                        "allowed value is empty (unset variable?)".into(),
                    ));
                }
                allowed.push(v.get_ref().clone());
            }
            Ok(Auth::PayloadAllowList { path, allowed })
        }
        AuthKind::IpAllowList => {
            if a.cidrs.is_empty() {
                return Err(here("ip_allow_list needs a non-empty `cidrs`".into()));
            }
            let mut nets = Vec::new();
            for c in &a.cidrs {
                let s = c.get_ref().trim();
                let net = s
                    .parse::<IpNet>()
                    .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| at(c.span(), format!("`{s}` is not an IP address or CIDR")))?;
                nets.push(net);
            }
            Ok(Auth::IpAllowList(nets))
        }
    }
}

fn decode_key(secret: &str, enc: KeyEncoding, prefix: Option<&str>) -> Result<Vec<u8>, String> {
    if secret.trim().is_empty() {
        return Err("secret is empty or only whitespace (unset environment variable?)".into());
    }
    let s = match prefix {
        Some(p) => secret.strip_prefix(p).unwrap_or(secret),
        None => secret,
    };
    match enc {
        KeyEncoding::Raw => Ok(s.as_bytes().to_vec()),
        KeyEncoding::Base64 => B64
            .decode(s.trim())
            .map_err(|_| "secret is not valid base64 (after removing key_prefix)".to_string()),
    }
}

impl Auth {
    /// Where this check reads a secret from the request: `(header, query parameter)`.
    pub(crate) fn secret_location(&self) -> (Option<&str>, Option<&str>) {
        match self {
            Auth::Token(t) => (t.header.as_deref(), t.query.as_deref()),
            _ => (None, None),
        }
    }

    /// Checks that need only the raw request (everything except payload allow-lists).
    pub(crate) fn verify_raw(&self, req: &RawRequest) -> Result<(), VerifyError> {
        match self {
            Auth::Hmac(h) => h.verify(req),
            Auth::Token(t) => t.verify(req),
            Auth::IpAllowList(nets) => match req.peer_ip {
                Some(ip) if nets.iter().any(|n| n.contains(&ip)) => Ok(()),
                other => Err(VerifyError::IpNotAllowed(other)),
            },
            Auth::PayloadAllowList { .. } | Auth::None => Ok(()),
        }
    }

    /// Checks on the decoded body: every value at `path` must be allow-listed, and there
    /// must be at least one (an envelope without an OrganizationId is not trusted).
    pub(crate) fn verify_payload(&self, body: &Value) -> Result<(), VerifyError> {
        let Auth::PayloadAllowList { path, allowed } = self else {
            return Ok(());
        };
        let hits = path.select(body);
        let err = || VerifyError::OrgNotAllowed {
            path: path.as_str().to_string(),
        };
        if hits.is_empty() {
            return Err(err());
        }
        for hit in hits {
            let v = scalar_text(hit.value).ok_or_else(err)?;
            if !allowed.iter().any(|a| ct_eq(a.as_bytes(), v.as_bytes())) {
                return Err(err());
            }
        }
        Ok(())
    }
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    // Length is not secret; contents are compared in constant time.
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

impl TokenAuth {
    fn verify(&self, req: &RawRequest) -> Result<(), VerifyError> {
        let (name, got) = match (&self.header, &self.query) {
            (Some(h), _) => (h.clone(), req.header(h).map(str::to_string)),
            (None, Some(q)) => (q.clone(), req.query_param(q)),
            (None, None) => return Err(VerifyError::MissingToken(String::new())),
        };
        let got = got
            .filter(|g| !g.is_empty())
            .ok_or(VerifyError::MissingToken(name))?;
        let got = match &self.prefix {
            Some(p) => got
                .strip_prefix(p.as_str())
                .ok_or(VerifyError::BadToken)?
                .to_string(),
            None => got,
        };
        if self
            .tokens
            .iter()
            .any(|t| ct_eq(t.as_bytes(), got.as_bytes()))
        {
            Ok(())
        } else {
            Err(VerifyError::BadToken)
        }
    }
}

impl HmacAuth {
    fn verify(&self, req: &RawRequest) -> Result<(), VerifyError> {
        let candidates = self.candidates(req)?;
        // Check the timestamp before the MAC only for error precision; both must pass.
        let ts = match &self.timestamp {
            Some(t) => Some(t.check(req)?),
            None => None,
        };
        let message = self.message_bytes(req, ts.as_deref())?;
        let tried = candidates.len();
        // One MAC per key, whatever the number of candidates: each is a constant-time compare
        // against it, so extra signatures cost an attacker's request almost nothing here.
        for key in &self.keys {
            let Some(tag) = self.tag(key, &message) else {
                continue;
            };
            // No short circuit: every candidate is compared, matching or not.
            let matched = candidates
                .iter()
                .fold(false, |found, sig| found | ct_eq(&tag, sig));
            if matched {
                return Ok(());
            }
        }
        Err(VerifyError::BadSignature { tried })
    }

    /// Decoded signature candidates; undecodable ones are skipped (Stripe: "an unreadable
    /// extra v1 is ignored"), but no candidate at all is `missing_signature`.
    fn candidates(&self, req: &RawRequest) -> Result<Vec<Vec<u8>>, VerifyError> {
        let missing = || VerifyError::MissingSignature(self.sig_header.clone());
        let raw = req
            .header(&self.sig_header)
            .filter(|v| !v.trim().is_empty())
            .ok_or_else(missing)?;
        let texts: Vec<&str> = if let Some(field) = &self.sig_field {
            header_field(raw, field)
        } else if let Some(version) = &self.sig_list_version {
            raw.split_ascii_whitespace()
                .filter_map(|entry| entry.split_once(','))
                .filter(|(v, _)| v == version)
                .map(|(_, s)| s)
                .collect()
        } else {
            vec![raw]
        };
        let texts: Vec<&str> = texts
            .into_iter()
            .map(str::trim)
            .filter_map(|t| match &self.sig_prefix {
                Some(p) => t.strip_prefix(p.as_str()),
                None => Some(t),
            })
            .collect();
        if texts.is_empty() {
            return Err(missing());
        }
        if texts.len() > MAX_SIGNATURES {
            return Err(VerifyError::TooManySignatures {
                count: texts.len(),
                limit: MAX_SIGNATURES,
            });
        }
        Ok(texts
            .into_iter()
            .filter(|t| !t.is_empty())
            .filter_map(|t| match self.sig_encoding {
                SigEncoding::Hex => hex::decode(t).ok(),
                SigEncoding::Base64 => B64.decode(t).ok(),
            })
            .filter(|b| !b.is_empty())
            .collect())
    }

    fn message_bytes(&self, req: &RawRequest, ts: Option<&str>) -> Result<Vec<u8>, VerifyError> {
        let mut m = Vec::with_capacity(req.body.len() + 128);
        for part in &self.message {
            match part {
                MessagePart::Body => m.extend_from_slice(&req.body),
                MessagePart::Method => {
                    m.extend_from_slice(req.method.to_ascii_uppercase().as_bytes())
                }
                MessagePart::Url => {
                    self.url_decode.push_decoded(&mut m, &self.base_url);
                    self.url_decode.push_decoded(&mut m, &req.path_and_query);
                }
                MessagePart::PathAndQuery => {
                    self.url_decode.push_decoded(&mut m, &req.path_and_query)
                }
                MessagePart::Timestamp => m.extend_from_slice(ts.unwrap_or_default().as_bytes()),
                MessagePart::Literal(s) => m.extend_from_slice(s.as_bytes()),
                MessagePart::Header(h) => {
                    let v = req
                        .header(h)
                        .ok_or_else(|| VerifyError::MissingSignature(h.clone()))?;
                    m.extend_from_slice(v.as_bytes());
                }
                MessagePart::HeaderField { header, field } => {
                    let v = req
                        .header(header)
                        .and_then(|raw| header_field(raw, field).into_iter().next())
                        .ok_or_else(|| {
                            VerifyError::MissingSignature(format!("{header}:{field}"))
                        })?;
                    m.extend_from_slice(v.as_bytes());
                }
            }
        }
        Ok(m)
    }

    /// The full MAC of `message` under `key`. A candidate matches only if it is the whole tag
    /// (`ct_eq` refuses any other length, so truncated signatures fail).
    fn tag(&self, key: &[u8], message: &[u8]) -> Option<Vec<u8>> {
        fn full<M: Mac + KeyInit>(key: &[u8], message: &[u8]) -> Option<Vec<u8>> {
            let mut mac = <M as KeyInit>::new_from_slice(key).ok()?;
            mac.update(message);
            Some(mac.finalize().into_bytes().to_vec())
        }
        match self.algorithm {
            Algorithm::Sha256 => full::<Hmac<sha2::Sha256>>(key, message),
            Algorithm::Sha1 => full::<Hmac<sha1::Sha1>>(key, message),
        }
    }
}

impl Timestamp {
    /// Returns the timestamp text as received (it is signed verbatim) once it is fresh.
    fn check(&self, req: &RawRequest) -> Result<String, VerifyError> {
        let name = match &self.field {
            Some(f) => format!("{}:{f}", self.header),
            None => self.header.clone(),
        };
        let raw = req
            .header(&self.header)
            .and_then(|h| match &self.field {
                Some(f) => header_field(h, f).into_iter().next(),
                None => Some(h),
            })
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .ok_or(VerifyError::MissingSignature(name))?;
        let n: i64 = raw
            .parse()
            .map_err(|_| VerifyError::BadTimestamp(raw.chars().take(32).collect()))?;
        let secs = match self.unit {
            TimestampUnit::Seconds => n,
            TimestampUnit::Milliseconds => n.div_euclid(1000),
        };
        let age = req.received_at.timestamp().saturating_sub(secs);
        if age.abs() > self.tolerance_secs {
            return Err(VerifyError::StaleTimestamp {
                age_secs: age,
                tolerance_secs: self.tolerance_secs,
            });
        }
        Ok(raw.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(escapes: &[&str]) -> UrlDecode {
        UrlDecode::from_bytes(
            escapes
                .iter()
                .map(|e| UrlDecode::parse(e).unwrap_or_else(|r| panic!("{r}")))
                .collect(),
        )
    }

    fn decode(d: &UrlDecode, text: &str) -> String {
        let mut out = Vec::new();
        d.push_decoded(&mut out, text);
        String::from_utf8(out).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn only_printable_ascii_escapes_other_than_percent_are_accepted() {
        assert_eq!(UrlDecode::parse("%3A"), Ok(b':'));
        assert_eq!(UrlDecode::parse("%3a"), Ok(b':'));
        assert_eq!(UrlDecode::parse("%7E"), Ok(b'~'));
        for bad in ["3A", "%3", "%3A3", "%G1", "%+1", "", "%", ":"] {
            let err = UrlDecode::parse(bad).err().unwrap_or_default();
            assert!(err.contains("not a percent-escape"), "{bad}: {err}");
        }
        for must_stay in ["%25", "%20", "%0A", "%00", "%7F", "%C3", "%FF"] {
            let err = UrlDecode::parse(must_stay).err().unwrap_or_default();
            assert!(err.contains("must stay encoded"), "{must_stay}: {err}");
        }
    }

    #[test]
    fn exactly_the_configured_escapes_are_decoded_in_either_case() {
        let d = set(&["%3A", "%2F", "%3F"]);
        assert_eq!(
            decode(&d, "/h?next=https%3A%2F%2Fa.example%2Fb%3fc%3Dd%26e%20f"),
            "/h?next=https://a.example/b?c%3Dd%26e%20f"
        );
        // Broken or truncated escapes are copied as they are; decoding is a single pass.
        assert_eq!(decode(&d, "%"), "%");
        assert_eq!(decode(&d, "a%3"), "a%3");
        assert_eq!(decode(&d, "%%3A%3A"), "%::");
        assert_eq!(decode(&d, "%253A"), "%253A");
        assert_eq!(decode(&d, "%zz%3A"), "%zz:");
        // Non-ASCII text passes through untouched.
        assert_eq!(decode(&d, "/é%3A"), "/é:");
    }

    #[test]
    fn no_configured_escapes_copies_the_url_verbatim() {
        let d = UrlDecode::default();
        assert!(d.is_empty());
        assert_eq!(decode(&d, "/h?a=%3A%2F"), "/h?a=%3A%2F");
    }
}
