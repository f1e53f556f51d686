//! Error types of the connector stage: one enum per stage, each with a stable snake_case
//! `code()` for callers; the `Display` text (and `#[source]` chain) is for operators' logs.

use crate::domain::ReasonCode;
use std::path::{Path, PathBuf};

/// A definition file (connector or mapping) that cannot be compiled. Displayed as
/// `file:line: reason`, the shape editors and CI annotate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}:{line}: {reason}", file.display())]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based; 0 when the problem is not tied to a line (e.g. unreadable file).
    pub line: usize,
    pub reason: String,
}

impl ConfigError {
    pub fn new(file: &Path, line: usize, reason: impl Into<String>) -> Self {
        ConfigError {
            file: file.to_path_buf(),
            line,
            reason: reason.into(),
        }
    }

    /// Builds the error from a byte span into `text` (as toml reports them).
    pub fn at_span(
        file: &Path,
        text: &str,
        span: Option<std::ops::Range<usize>>,
        reason: impl Into<String>,
    ) -> Self {
        let line = span.map_or(0, |s| line_of(text, s.start));
        ConfigError::new(file, line, reason)
    }

    pub fn from_toml(file: &Path, text: &str, err: &toml::de::Error) -> Self {
        ConfigError::at_span(file, text, err.span(), err.message().trim_end().to_string())
    }
}

/// 1-based line number of byte `offset` in `text`.
pub fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// Authentication or body parsing failed; the request must be answered 4xx and not processed.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("required header or field `{0}` carrying the signature is absent or empty")]
    MissingSignature(String),
    #[error("no signature in the request matches (tried {tried} candidate(s))")]
    BadSignature { tried: usize },
    #[error("the request carries {count} signatures; at most {limit} are checked")]
    TooManySignatures { count: usize, limit: usize },
    #[error("signature timestamp `{0}` is not a valid integer")]
    BadTimestamp(String),
    #[error("signature timestamp is {age_secs}s away from now; tolerance is {tolerance_secs}s")]
    StaleTimestamp { age_secs: i64, tolerance_secs: i64 },
    #[error("token `{0}` is absent")]
    MissingToken(String),
    #[error("token does not match")]
    BadToken,
    #[error("value at `{path}` is not in the allow-list")]
    OrgNotAllowed { path: String },
    #[error("peer address {0:?} is not in the allow-list")]
    IpNotAllowed(Option<std::net::IpAddr>),
    #[error("body is {size} bytes; limit is {limit}")]
    BodyTooLarge { size: usize, limit: usize },
    #[error("body cannot be decoded as {format}: {reason}")]
    MalformedBody {
        format: &'static str,
        reason: String,
    },
}

impl VerifyError {
    /// The stable reason code callers see.
    pub fn code(&self) -> ReasonCode {
        match self {
            VerifyError::MissingSignature(_) => ReasonCode::MissingSignature,
            VerifyError::BadSignature { .. } | VerifyError::TooManySignatures { .. } => {
                ReasonCode::BadSignature
            }
            VerifyError::BadTimestamp(_) => ReasonCode::BadTimestamp,
            VerifyError::StaleTimestamp { .. } => ReasonCode::StaleTimestamp,
            VerifyError::MissingToken(_) => ReasonCode::MissingToken,
            VerifyError::BadToken => ReasonCode::BadToken,
            VerifyError::OrgNotAllowed { .. } => ReasonCode::OrgNotAllowed,
            VerifyError::IpNotAllowed(_) => ReasonCode::IpNotAllowed,
            VerifyError::BodyTooLarge { .. } => ReasonCode::PayloadTooLarge,
            VerifyError::MalformedBody { .. } => ReasonCode::MalformedBody,
        }
    }
}

/// A verified request could not be split into events with a type and a dedupe id.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("request carries {count} events; limit is {limit}")]
    TooManyEvents { count: usize, limit: usize },
    #[error("event #{index}: event type ({locator}) is absent or not a scalar")]
    MissingEventType { index: usize, locator: String },
    #[error("event #{index}: dedupe id ({locator}) is absent or not a scalar")]
    MissingEventId { index: usize, locator: String },
}

impl DecodeError {
    /// The stable reason code callers see.
    pub fn code(&self) -> ReasonCode {
        match self {
            DecodeError::TooManyEvents { .. } => ReasonCode::TooManyEvents,
            DecodeError::MissingEventType { .. } => ReasonCode::MissingEventType,
            DecodeError::MissingEventId { .. } => ReasonCode::MissingEventId,
        }
    }
}
