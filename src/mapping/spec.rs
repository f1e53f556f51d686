//! The on-disk shape of `mappings/<connector>/<event>.toml` (serde, `deny_unknown_fields`).
//! Compiled by [`super::Mapping::from_toml`]; values that can be wrong beyond what serde
//! sees are `Spanned` so errors carry their line.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use crate::domain::CanonicalPostback;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MappingFile {
    #[serde(default)]
    pub description: Option<String>,
    #[serde(rename = "match")]
    pub when: Spanned<MatchFile>,
    pub fields: FieldsFile,
    #[serde(default)]
    pub attributes: BTreeMap<String, Spanned<FieldFile>>,
    #[serde(default)]
    pub test: Vec<Spanned<TestFile>>,
}

/// All given conditions must hold; at least one is required.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchFile {
    /// Exact event types (as the connector extracted them).
    #[serde(default)]
    pub event_type: Vec<String>,
    /// Event types this mapping never applies to.
    #[serde(default)]
    pub event_type_not: Vec<String>,
    #[serde(default)]
    pub event_type_regex: Option<Spanned<String>>,
    /// JSONPath on the event payload; matches when it selects at least one node.
    #[serde(default)]
    pub filter: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldsFile {
    pub event: Spanned<FieldFile>,
    pub status: Spanned<FieldFile>,
    #[serde(default)]
    pub click_id: Option<Spanned<FieldFile>>,
    #[serde(default)]
    pub transaction_id: Option<Spanned<FieldFile>>,
    #[serde(default)]
    pub amount: Option<Spanned<FieldFile>>,
    #[serde(default)]
    pub currency: Option<Spanned<FieldFile>>,
    #[serde(default)]
    pub occurred_at: Option<Spanned<FieldFile>>,
}

/// Special values of the event itself rather than of its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Meta {
    EventType,
    EventId,
    Source,
    ReceivedAt,
}

/// One canonical field: exactly one source (`path`, `header`, `query`, `constant`, `meta`,
/// or `first_of` several candidates), then `transforms` in order, then `default`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldFile {
    #[serde(default)]
    pub path: Option<Spanned<String>>,
    #[serde(default)]
    pub header: Option<String>,
    #[serde(default)]
    pub query: Option<String>,
    #[serde(default)]
    pub constant: Option<String>,
    #[serde(default)]
    pub meta: Option<Meta>,
    #[serde(default)]
    pub first_of: Vec<Spanned<FieldFile>>,
    #[serde(default)]
    pub transforms: Vec<Spanned<TransformFile>>,
    #[serde(default)]
    pub default: Option<String>,
    /// Absent value is an error instead of `None` (event and status are always required).
    #[serde(default)]
    pub required: bool,
    /// `occurred_at` only: `rfc3339` (default), `unix`, `unix_ms`, or a chrono pattern for
    /// a naive UTC time such as `%Y-%m-%d %H:%M:%S%.f`.
    #[serde(default)]
    pub format: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

/// Closed set of transforms. Unit variants are written as strings (`"trim"`), the others as
/// one-key tables (`{ regex = "..." }`).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum TransformFile {
    Trim,
    Lowercase,
    Uppercase,
    /// Parse as an exact decimal and render canonically ("1e3" → "1000").
    Decimal,
    /// Integer minor units → amount, using the ISO 4217 exponent of the mapped currency.
    MinorUnits,
    /// Value is a URL (or query string); take the first named parameter present.
    QueryParam(OneOrMany),
    /// First capture group (or the whole match when the regex has none); no match = absent.
    Regex(String),
    /// Exact-match table; key `"*"` is the fallback; a miss without fallback is an error.
    Lookup(BTreeMap<String, String>),
}

/// A test case: a fixture run through the connector (without signature check) and every
/// mapping of that connector; the resulting postbacks must equal `expect`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestFile {
    #[serde(default)]
    pub name: Option<String>,
    /// Body file, relative to the project root (the parent of `mappings/`); absent = empty
    /// body (GET callbacks whose payload is the query string).
    #[serde(default)]
    pub fixture: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub method: Option<String>,
    #[serde(default)]
    pub path_and_query: Option<String>,
    #[serde(default)]
    pub expect: Vec<CanonicalPostback>,
    /// Expected error code instead of postbacks (e.g. `unmapped_event`).
    #[serde(default)]
    pub expect_error: Option<String>,
}
