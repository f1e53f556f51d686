//! The on-disk shape of `connectors/<name>.toml` (serde, `deny_unknown_fields`).
//!
//! These types are only read by [`super::Connector::from_toml`], which compiles them into
//! closed enums and reports problems as `file:line: reason`. Values that can be wrong in ways
//! serde cannot see (JSONPaths, secrets, CIDRs) are `Spanned` so errors point at their line.

use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectorFile {
    /// Free text for operators.
    #[serde(default)]
    pub description: Option<String>,
    pub body: BodyFile,
    pub auth: Vec<Spanned<AuthFile>>,
    pub event: EventFile,
    #[serde(default)]
    pub response: ResponseFile,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BodyFormat {
    Json,
    Form,
    Query,
    Xml,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BodyFile {
    pub format: BodyFormat,
    #[serde(default)]
    pub max_bytes: Option<Spanned<usize>>,
    /// XML only: element local names that always become JSON arrays, even when one is present.
    #[serde(default)]
    pub xml_always_array: Option<Spanned<Vec<String>>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthKind {
    Hmac,
    Token,
    PayloadAllowList,
    IpAllowList,
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    Sha256,
    Sha1,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyEncoding {
    Raw,
    Base64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SigEncoding {
    Hex,
    Base64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimestampUnit {
    Seconds,
    Milliseconds,
}

/// One piece of the signed message; pieces are concatenated without separators
/// (use `{ literal = "." }` for Stripe / Standard Webhooks dots).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum MessagePart {
    /// The raw body bytes, exactly as received.
    Body,
    /// The HTTP method, uppercase.
    Method,
    /// `base_url` + path and query (HubSpot v3 signs the full URI), after `url_decode`.
    Url,
    /// Path and query as received, after `url_decode`.
    PathAndQuery,
    /// The timestamp string exactly as received (see `timestamp`).
    Timestamp,
    Literal(String),
    Header(String),
    HeaderField {
        header: String,
        field: String,
    },
}

/// Where signatures are read from.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignatureFile {
    pub header: String,
    /// `k=v,k=v` header (Stripe): every entry named `field` is a candidate.
    #[serde(default)]
    pub field: Option<String>,
    /// Space-separated `version,signature` list (Standard Webhooks): entries with this version.
    #[serde(default)]
    pub list_version: Option<String>,
    /// Stripped from the value before decoding (GitHub: `sha256=`).
    #[serde(default)]
    pub prefix: Option<String>,
    pub encoding: SigEncoding,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimestampFile {
    pub header: String,
    #[serde(default)]
    pub field: Option<String>,
    #[serde(default = "default_unit")]
    pub unit: TimestampUnit,
    pub tolerance_secs: i64,
}

fn default_unit() -> TimestampUnit {
    TimestampUnit::Seconds
}

/// Flat on purpose: serde's internally tagged enums lose toml spans, and a flat struct lets
/// the compiler say "field `x` does not apply to type `token`" with a line number.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthFile {
    #[serde(rename = "type")]
    pub kind: AuthKind,
    // hmac
    #[serde(default)]
    pub algorithm: Option<Algorithm>,
    #[serde(default)]
    pub secrets: Vec<Spanned<String>>,
    #[serde(default)]
    pub key_encoding: Option<KeyEncoding>,
    #[serde(default)]
    pub key_prefix: Option<String>,
    #[serde(default)]
    pub message: Vec<MessagePart>,
    #[serde(default)]
    pub signature: Option<SignatureFile>,
    #[serde(default)]
    pub timestamp: Option<TimestampFile>,
    #[serde(default)]
    pub base_url: Option<String>,
    /// Percent-escapes (`"%3A"`) decoded in the `url` / `path_and_query` message parts before
    /// signing: HubSpot v3 signs its URI with a fixed set of escapes decoded.
    #[serde(default)]
    pub url_decode: Vec<Spanned<String>>,
    // token
    #[serde(default)]
    pub tokens: Vec<Spanned<String>>,
    #[serde(default)]
    pub header: Option<String>,
    #[serde(default)]
    pub query: Option<String>,
    #[serde(default)]
    pub prefix: Option<String>,
    // payload_allow_list
    #[serde(default)]
    pub path: Option<Spanned<String>>,
    #[serde(default)]
    pub allowed: Vec<Spanned<String>>,
    // ip_allow_list
    #[serde(default)]
    pub cidrs: Vec<Spanned<String>>,
}

/// Where a value lives: exactly one of `header` (optionally a `k=v` sub-`field`), `path`
/// (JSONPath on the event payload), `query` (URL query parameter) or `constant`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocatorFile {
    #[serde(default)]
    pub header: Option<String>,
    #[serde(default)]
    pub field: Option<String>,
    #[serde(default)]
    pub path: Option<Spanned<String>>,
    #[serde(default)]
    pub query: Option<String>,
    #[serde(default)]
    pub constant: Option<String>,
    /// `id_also` parts only: an absent value is skipped instead of failing the event.
    #[serde(default)]
    pub optional: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventFile {
    /// JSONPath selecting each event in the body; absent = the whole body is one event.
    #[serde(default)]
    pub split: Option<Spanned<String>>,
    #[serde(default)]
    pub max_events: Option<Spanned<usize>>,
    #[serde(rename = "type")]
    pub kind: Spanned<LocatorFile>,
    pub id: Spanned<LocatorFile>,
    /// Extra parts joined to `id` with `:` when no single field is unique (mobile callbacks).
    #[serde(default)]
    pub id_also: Vec<Spanned<LocatorFile>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResponseKind {
    #[default]
    Json,
    SoapAck,
    Text,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResponseFile {
    #[serde(default)]
    pub kind: ResponseKind,
    #[serde(default)]
    pub body: Option<String>,
    #[serde(default)]
    pub content_type: Option<String>,
}
