//! The one orchestrator: each request's stages, in order.
//!
//! * Click: offer and affiliate from the catalog snapshot → signed [`ClickId`] → landing URL
//!   from the offer record (never from the query string) → click row queued for the writer.
//! * Postback: parameters → [`s2s::parse`] (token, aliases) → [`attribution::evaluate`] (pure,
//!   on this task) → writer (dedupe, transitions, ledger; one commit per batch) → [`Receipt`].
//!
//! HTTP handlers only extract and delegate here; nothing in this module knows about axum.

use std::net::IpAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use chrono::Utc;

use crate::attribution::{self, InputError};
use crate::config::OfferStatus;
use crate::domain::{ClickId, ClickKeyRing, ReasonCode, Receipt};
use crate::s2s::{self, Params, S2sError};
use crate::store::Store;
use crate::store::catalog::Catalog;
use crate::store::writer::{ClickRow, WriteFailed};

/// Shared state of the request paths.
#[derive(Clone)]
pub struct Pipeline {
    pub catalog: Arc<ArcSwap<Catalog>>,
    pub keys: Arc<ClickKeyRing>,
    pub store: Store,
}

/// A click as the HTTP layer hands it over.
#[derive(Debug, Default)]
pub struct ClickRequest {
    pub offer_key: String,
    pub affiliate_key: Option<String>,
    pub subs: [Option<String>; 5],
    pub ip: Option<IpAddr>,
    pub user_agent: Option<String>,
    pub referrer: Option<String>,
}

/// Where the visitor goes.
#[derive(Debug)]
pub struct Redirect {
    pub location: String,
    pub click_id: Option<ClickId>,
}

/// Why a click could not be redirected.
#[derive(Debug, thiserror::Error)]
pub enum ClickError {
    #[error("offer {0:?} does not exist")]
    UnknownOffer(String),
    #[error("offer {0:?} is paused")]
    OfferPaused(String),
    #[error("parameter aff (the affiliate id) is required")]
    MissingAffiliate,
    #[error("affiliate {0:?} does not exist")]
    UnknownAffiliate(String),
    #[error("a click ID could not be issued")]
    Issue(#[from] crate::domain::click_id::IssueError),
    #[error("the click could not be queued")]
    Queue(#[from] WriteFailed),
}

impl ClickError {
    pub fn code(&self) -> ReasonCode {
        match self {
            Self::UnknownOffer(_) => ReasonCode::UnknownOffer,
            Self::OfferPaused(_) => ReasonCode::OfferPaused,
            Self::MissingAffiliate => ReasonCode::MissingParameter,
            Self::UnknownAffiliate(_) => ReasonCode::UnknownAffiliate,
            Self::Issue(_) => ReasonCode::Internal,
            Self::Queue(_) => ReasonCode::StorageUnavailable,
        }
    }
}

/// Why a postback got no decision.
#[derive(Debug, thiserror::Error)]
pub enum PostbackError {
    #[error(transparent)]
    Request(#[from] S2sError),
    #[error(transparent)]
    Input(#[from] InputError),
    #[error("the conversion could not be stored")]
    Store(#[from] WriteFailed),
}

impl PostbackError {
    pub fn code(&self) -> ReasonCode {
        match self {
            Self::Request(e) => e.code(),
            Self::Input(e) => e.code(),
            Self::Store(_) => ReasonCode::StorageUnavailable,
        }
    }
}

impl Pipeline {
    /// Issues a click ID and returns the redirect; the click row is written shortly after.
    pub async fn click(&self, req: ClickRequest) -> Result<Redirect, ClickError> {
        let catalog = self.catalog.load();
        let offer = catalog
            .offer_by_key(&req.offer_key)
            .ok_or_else(|| ClickError::UnknownOffer(req.offer_key.clone()))?;
        let fallback = |error: ClickError| match &offer.fallback_url {
            Some(url) => Ok(Redirect {
                location: render_landing(
                    url,
                    "",
                    &offer.key,
                    req.affiliate_key.as_deref().unwrap_or(""),
                    &req.subs,
                ),
                click_id: None,
            }),
            None => Err(error),
        };
        if offer.status == OfferStatus::Paused {
            return fallback(ClickError::OfferPaused(offer.key.clone()));
        }
        let Some(aff_key) = req.affiliate_key.as_deref().filter(|a| !a.is_empty()) else {
            return fallback(ClickError::MissingAffiliate);
        };
        let Some(affiliate) = catalog.affiliate_by_key(aff_key) else {
            return fallback(ClickError::UnknownAffiliate(aff_key.to_owned()));
        };

        let now = Utc::now();
        let click_id = self.keys.issue(offer.id, affiliate.id, now)?;
        let location = render_landing(
            &offer.landing_url,
            click_id.as_str(),
            &offer.key,
            &affiliate.key,
            &req.subs,
        );
        self.store
            .writer
            .record_click(ClickRow {
                click_id: click_id.as_str().to_owned(),
                offer_id: offer.id,
                affiliate_id: affiliate.id,
                subs: req.subs,
                ip: req.ip.map(|ip| ip.to_string()),
                user_agent: req.user_agent,
                referrer: req.referrer,
                clicked_at_ms: now.timestamp_millis(),
            })
            .await?;
        Ok(Redirect {
            location,
            click_id: Some(click_id),
        })
    }

    /// Judges and records one S2S postback; returns after it is durably committed.
    pub async fn postback(
        &self,
        params: &Params,
        peer: Option<IpAddr>,
    ) -> Result<Receipt, PostbackError> {
        let decision = {
            let catalog = self.catalog.load();
            let (advertiser, postback) = s2s::parse(&catalog, params, peer)?;
            attribution::evaluate(&catalog, &self.keys, advertiser, postback, Utc::now())?
        };
        Ok(self.store.writer.submit(decision).await?)
    }
}

/// Fills an offer's landing-URL template. Values are percent-encoded as URL components;
/// tokens were checked when the configuration was loaded.
pub fn render_landing(
    template: &str,
    click_id: &str,
    offer_key: &str,
    affiliate_key: &str,
    subs: &[Option<String>; 5],
) -> String {
    use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
    const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    let mut out = String::with_capacity(template.len() + click_id.len());
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[start..]);
            return out;
        };
        let value = match &after[..end] {
            "click_id" => click_id,
            "offer_id" => offer_key,
            "affiliate_id" => affiliate_key,
            "sub1" => subs[0].as_deref().unwrap_or(""),
            "sub2" => subs[1].as_deref().unwrap_or(""),
            "sub3" => subs[2].as_deref().unwrap_or(""),
            "sub4" => subs[3].as_deref().unwrap_or(""),
            "sub5" => subs[4].as_deref().unwrap_or(""),
            _ => "",
        };
        out.extend(utf8_percent_encode(value, COMPONENT));
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn landing_urls_get_encoded_values_for_every_token() {
        let subs = [
            Some("a b&c=d".to_owned()),
            None,
            Some("ü".to_owned()),
            None,
            None,
        ];
        let url = render_landing(
            "https://x.example/l?c={click_id}&o={offer_id}&a={affiliate_id}&s1={sub1}&s2={sub2}&s3={sub3}",
            "AbC-_9",
            "off",
            "aff",
            &subs,
        );
        assert_eq!(
            url,
            "https://x.example/l?c=AbC-_9&o=off&a=aff&s1=a%20b%26c%3Dd&s2=&s3=%C3%BC"
        );
    }
}
