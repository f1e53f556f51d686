//! The S2S postback source: request parameters → authenticated advertiser + canonical postback.
//!
//! Input: the parameters of `GET|POST /postback` (query string, form or JSON object, merged)
//! and the caller's address. Output: the advertiser the token belongs to and a
//! [`CanonicalPostback`], or an [`S2sError`] (answered 4xx, nothing recorded).
//!
//! Parameter-name mismatches are the most common real-world setup error, so every canonical
//! parameter has built-in aliases and each advertiser may add its own. The token is found
//! first (its names are the same for everyone plus every advertiser's token aliases), because
//! it tells whose aliases apply to the rest.

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::domain::money::parse_decimal;
use crate::domain::{CanonicalPostback, ReasonCode, Status};
use crate::store::catalog::{Advertiser, Catalog};

/// Names every advertiser may use, besides the canonical one.
const BUILTIN_ALIASES: &[(&str, &[&str])] = &[
    ("click_id", &["clickid", "click"]),
    ("payout", &["amount", "sum", "revenue"]),
    ("currency", &["cur"]),
    ("transaction_id", &["txn_id", "tid"]),
    ("goal", &["event", "goal_id"]),
    ("status", &[]),
];

/// Why a postback request is refused before any decision.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum S2sError {
    #[error("missing or wrong token")]
    BadToken,
    #[error("address {0} is not on the advertiser's allow-list")]
    IpNotAllowed(IpAddr),
    #[error("parameter {0} is required")]
    Missing(&'static str),
    #[error("parameter {name}: {reason}")]
    Invalid { name: &'static str, reason: String },
}

impl S2sError {
    pub fn code(&self) -> ReasonCode {
        match self {
            Self::BadToken => ReasonCode::BadToken,
            Self::IpNotAllowed(_) => ReasonCode::IpNotAllowed,
            Self::Missing(_) => ReasonCode::MissingParameter,
            Self::Invalid { name: "payout", .. } => ReasonCode::InvalidAmount,
            Self::Invalid { .. } => ReasonCode::InvalidParameter,
        }
    }
}

/// Parameters as received: first value wins for a repeated name.
#[derive(Debug, Default, Clone)]
pub struct Params(BTreeMap<String, String>);

impl Params {
    pub fn from_pairs(pairs: impl IntoIterator<Item = (String, String)>) -> Self {
        let mut map = BTreeMap::new();
        for (k, v) in pairs {
            map.entry(k).or_insert(v);
        }
        Self(map)
    }

    /// Adds pairs whose names are not present yet.
    pub fn merge(&mut self, other: Params) {
        for (k, v) in other.0 {
            self.0.entry(k).or_insert(v);
        }
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }
}

/// Authenticates and parses one postback.
pub fn parse<'c>(
    catalog: &'c Catalog,
    params: &Params,
    peer: Option<IpAddr>,
) -> Result<(&'c Advertiser, CanonicalPostback), S2sError> {
    let advertiser = catalog
        .token_param_names()
        .filter_map(|name| params.get(name))
        .find_map(|token| catalog.advertiser_by_token(token))
        .ok_or(S2sError::BadToken)?;
    if !advertiser.allow_networks.is_empty() {
        let allowed =
            peer.is_some_and(|ip| advertiser.allow_networks.iter().any(|n| n.contains(&ip)));
        if !allowed {
            return Err(match peer {
                Some(ip) => S2sError::IpNotAllowed(ip),
                None => S2sError::BadToken,
            });
        }
    }

    let lookup = |name: &'static str| -> Option<&str> {
        let builtin = BUILTIN_ALIASES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, a)| *a)
            .unwrap_or(&[]);
        std::iter::once(name)
            .chain(builtin.iter().copied())
            .chain(
                advertiser
                    .aliases
                    .get(name)
                    .into_iter()
                    .flatten()
                    .map(String::as_str),
            )
            .find_map(|n| params.get(n))
            .map(str::trim)
            .filter(|v| !v.is_empty())
    };

    let click_id = lookup("click_id").ok_or(S2sError::Missing("click_id"))?;
    let amount = lookup("payout")
        .map(|v| {
            parse_decimal(v).map_err(|e| S2sError::Invalid {
                name: "payout",
                reason: e.to_string(),
            })
        })
        .transpose()?;
    let status = match lookup("status") {
        None => Status::Approved,
        Some(v) => Status::parse(v).ok_or_else(|| S2sError::Invalid {
            name: "status",
            reason: format!("{v:?}: use approved, pending, rejected or reversed"),
        })?,
    };
    let transaction_id = lookup("transaction_id").map(str::to_owned);
    if transaction_id.as_ref().is_some_and(|t| t.len() > 255) {
        return Err(S2sError::Invalid {
            name: "transaction_id",
            reason: "longer than 255 characters".into(),
        });
    }

    // Anything else the advertiser sent is kept (sub ids, order details), bounded.
    let known: Vec<&str> = catalog
        .token_param_names()
        .chain(
            BUILTIN_ALIASES
                .iter()
                .flat_map(|(n, a)| std::iter::once(*n).chain(a.iter().copied())),
        )
        .chain(advertiser.aliases.values().flatten().map(String::as_str))
        .collect();
    let attributes = params
        .0
        .iter()
        .filter(|(k, _)| !known.contains(&k.as_str()))
        .take(32)
        .map(|(k, v)| (truncate(k, 64), truncate(v, 512)))
        .collect();

    Ok((
        advertiser,
        CanonicalPostback {
            source: "postback".to_owned(),
            source_event_id: None,
            event: lookup("goal").map(str::to_owned),
            click_id: Some(click_id.to_owned()),
            transaction_id,
            status,
            amount,
            currency: lookup("currency").map(str::to_owned),
            occurred_at: None,
            attributes,
        },
    ))
}

fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((i, _)) => text[..i].to_owned(),
        None => text.to_owned(),
    }
}
