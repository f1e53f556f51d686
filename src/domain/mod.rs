//! Domain types shared by every stage: click IDs, money, the canonical postback and the
//! vocabulary of decisions. Nothing here does I/O.

pub mod click_id;
pub mod money;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

pub use click_id::{ClickClaims, ClickId, ClickIdError, ClickKeyRing};
pub use money::{AmountError, Currency, Money};

/// Lifecycle of a conversion as the source reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Approved,
    Pending,
    Rejected,
    Reversed,
}

impl Status {
    pub fn parse(text: &str) -> Option<Self> {
        match text.trim().to_ascii_lowercase().as_str() {
            "approved" | "approve" | "1" => Some(Self::Approved),
            "pending" | "hold" | "2" => Some(Self::Pending),
            "rejected" | "reject" | "declined" | "3" => Some(Self::Rejected),
            "reversed" | "reversal" | "refunded" | "chargeback" => Some(Self::Reversed),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Approved => "approved",
            Self::Pending => "pending",
            Self::Rejected => "rejected",
            Self::Reversed => "reversed",
        }
    }
}

/// The contract between the mapping stage and attribution: one conversion event, whatever
/// its source. Built by the S2S postback parser or by a connector mapping.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CanonicalPostback {
    /// Connector name; `postback` for the S2S endpoint.
    pub source: String,
    /// The source's delivery id, when it has one (the dedupe key for webhooks).
    #[serde(default)]
    pub source_event_id: Option<String>,
    /// Goal name; `None` means the offer's default goal.
    #[serde(default)]
    pub event: Option<String>,
    #[serde(default)]
    pub click_id: Option<String>,
    /// Order / transaction id, kept as an exact string (Shopify ids exceed 2^53).
    #[serde(default)]
    pub transaction_id: Option<String>,
    pub status: Status,
    /// Exact amount in `currency`, serialised as a string so no reader makes it a float.
    #[serde(default, with = "rust_decimal::serde::str_option")]
    pub amount: Option<Decimal>,
    /// ISO 4217 code as sent; `None` means the offer's currency.
    #[serde(default)]
    pub currency: Option<String>,
    #[serde(default)]
    pub occurred_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
}

/// A reason attached to a decision: a stable machine code and a human sentence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reason {
    pub code: ReasonCode,
    pub message: String,
}

impl Reason {
    pub fn new(code: ReasonCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// Stable, snake_case reason codes. Callers match on these; never rename one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReasonCode {
    BadToken,
    IpNotAllowed,
    MissingParameter,
    InvalidParameter,
    InvalidAmount,
    MalformedClickId,
    ForgedClickId,
    UnknownOffer,
    OfferNotOwned,
    UnknownAffiliate,
    UnknownGoal,
    ClickExpired,
    ClickInFuture,
    LagTooShort,
    DuplicateClickGoal,
    DuplicateTransaction,
    UnsupportedCurrency,
    UnknownTransaction,
    InvalidTransition,
    OfferPaused,
    PayloadTooLarge,
    RequestTimeout,
    UnsupportedMediaType,
    Unauthorized,
    NotFound,
    StorageUnavailable,
    Internal,
    // Webhook sources.
    UnknownConnector,
    MissingSignature,
    BadSignature,
    BadTimestamp,
    StaleTimestamp,
    MissingToken,
    OrgNotAllowed,
    MalformedBody,
    TooManyEvents,
    MissingEventType,
    MissingEventId,
    UnmappedEvent,
    MissingField,
    WrongType,
    BadValue,
    DuplicateEvent,
}

impl ReasonCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadToken => "bad_token",
            Self::IpNotAllowed => "ip_not_allowed",
            Self::MissingParameter => "missing_parameter",
            Self::InvalidParameter => "invalid_parameter",
            Self::InvalidAmount => "invalid_amount",
            Self::MalformedClickId => "malformed_click_id",
            Self::ForgedClickId => "forged_click_id",
            Self::UnknownOffer => "unknown_offer",
            Self::OfferNotOwned => "offer_not_owned",
            Self::UnknownAffiliate => "unknown_affiliate",
            Self::UnknownGoal => "unknown_goal",
            Self::ClickExpired => "click_expired",
            Self::ClickInFuture => "click_in_future",
            Self::LagTooShort => "lag_too_short",
            Self::DuplicateClickGoal => "duplicate_click_goal",
            Self::DuplicateTransaction => "duplicate_transaction",
            Self::UnsupportedCurrency => "unsupported_currency",
            Self::UnknownTransaction => "unknown_transaction",
            Self::InvalidTransition => "invalid_transition",
            Self::OfferPaused => "offer_paused",
            Self::PayloadTooLarge => "payload_too_large",
            Self::RequestTimeout => "request_timeout",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::Unauthorized => "unauthorized",
            Self::NotFound => "not_found",
            Self::StorageUnavailable => "storage_unavailable",
            Self::Internal => "internal",
            Self::UnknownConnector => "unknown_connector",
            Self::MissingSignature => "missing_signature",
            Self::BadSignature => "bad_signature",
            Self::BadTimestamp => "bad_timestamp",
            Self::StaleTimestamp => "stale_timestamp",
            Self::MissingToken => "missing_token",
            Self::OrgNotAllowed => "org_not_allowed",
            Self::MalformedBody => "malformed_body",
            Self::TooManyEvents => "too_many_events",
            Self::MissingEventType => "missing_event_type",
            Self::MissingEventId => "missing_event_id",
            Self::UnmappedEvent => "unmapped_event",
            Self::MissingField => "missing_field",
            Self::WrongType => "wrong_type",
            Self::BadValue => "bad_value",
            Self::DuplicateEvent => "duplicate_event",
        }
    }
}

impl std::fmt::Display for ReasonCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
const ALL_CODES: &[ReasonCode] = &[
    ReasonCode::BadToken,
    ReasonCode::IpNotAllowed,
    ReasonCode::MissingParameter,
    ReasonCode::InvalidParameter,
    ReasonCode::InvalidAmount,
    ReasonCode::MalformedClickId,
    ReasonCode::ForgedClickId,
    ReasonCode::UnknownOffer,
    ReasonCode::OfferNotOwned,
    ReasonCode::UnknownAffiliate,
    ReasonCode::UnknownGoal,
    ReasonCode::ClickExpired,
    ReasonCode::ClickInFuture,
    ReasonCode::LagTooShort,
    ReasonCode::DuplicateClickGoal,
    ReasonCode::DuplicateTransaction,
    ReasonCode::UnsupportedCurrency,
    ReasonCode::UnknownTransaction,
    ReasonCode::InvalidTransition,
    ReasonCode::OfferPaused,
    ReasonCode::PayloadTooLarge,
    ReasonCode::RequestTimeout,
    ReasonCode::UnsupportedMediaType,
    ReasonCode::Unauthorized,
    ReasonCode::NotFound,
    ReasonCode::StorageUnavailable,
    ReasonCode::Internal,
    ReasonCode::UnknownConnector,
    ReasonCode::MissingSignature,
    ReasonCode::BadSignature,
    ReasonCode::BadTimestamp,
    ReasonCode::StaleTimestamp,
    ReasonCode::MissingToken,
    ReasonCode::OrgNotAllowed,
    ReasonCode::MalformedBody,
    ReasonCode::TooManyEvents,
    ReasonCode::MissingEventType,
    ReasonCode::MissingEventId,
    ReasonCode::UnmappedEvent,
    ReasonCode::MissingField,
    ReasonCode::WrongType,
    ReasonCode::BadValue,
    ReasonCode::DuplicateEvent,
];

/// What postgate decided about one incoming conversion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Accepted,
    Duplicate,
    Rejected,
}

impl Verdict {
    /// The serialised name (`accepted`, `duplicate`, `rejected`).
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Accepted => "accepted",
            Verdict::Duplicate => "duplicate",
            Verdict::Rejected => "rejected",
        }
    }
}

/// The answer for one conversion, after its transaction committed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Receipt {
    pub status: Verdict,
    pub conversion_id: Option<String>,
    pub reasons: Vec<Reason>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_serialises_as_its_name_and_names_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for code in ALL_CODES {
            assert!(seen.insert(code.as_str()), "{code} twice");
            let json = serde_json::to_string(code).expect("serialise");
            assert_eq!(json, format!("\"{}\"", code.as_str()));
        }
    }

    #[test]
    fn reason_codes_serialise_as_their_stable_names() {
        for code in [
            ReasonCode::BadToken,
            ReasonCode::MalformedClickId,
            ReasonCode::DuplicateClickGoal,
            ReasonCode::LagTooShort,
            ReasonCode::UnsupportedCurrency,
        ] {
            let json = serde_json::to_string(&code).expect("serialise");
            assert_eq!(json, format!("\"{}\"", code.as_str()));
        }
    }
}
