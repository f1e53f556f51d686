//! The one orchestrator: each request's stages, in order.
//!
//! * Click: offer and affiliate from the catalog snapshot → signed [`ClickId`] → landing URL
//!   from the offer record (never from the query string) → click row queued for the writer.
//! * Postback: parameters → [`s2s::parse`] (token, aliases) → [`attribution::evaluate`] (pure,
//!   on this task) → writer (dedupe, transitions, ledger; one commit per batch) → [`Receipt`].
//! * Webhook: [`RawRequest`] → [`Connector::verify`] → [`Connector::decode`] (events) →
//!   [`MappingSet::map`] (canonical postbacks) → evaluate → writer, together with the raw
//!   request and every event that could not be mapped → [`HookAnswer`] in the source's
//!   own terms (JSON, or e.g. Salesforce's SOAP Ack — sent only after the commit).
//! * Database unreachable: a verified postback or webhook whose write failed
//!   ([`WriteFailed`]) is appended to the [`Spool`] (fsync'd) and answered 202 `queued` —
//!   or, for a source with a fixed answer such as Salesforce, that answer, given only once
//!   the spool append is durable. [`Pipeline::replay`] later runs it through the same
//!   stages after verification, judged as of its original receive time.
//!
//! HTTP handlers only extract and delegate here; nothing in this module knows about axum.

use std::net::IpAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use chrono::Utc;

use std::collections::HashMap;

use serde::Serialize;

use crate::attribution::{self, InputError};
use crate::config::OfferStatus;
use crate::connector::{Connector, RawRequest, VerifyError};
use crate::domain::{ClickId, ClickKeyRing, Reason, ReasonCode, Receipt};
use crate::mapping::MappingSet;
use crate::s2s::{self, Params, S2sError};
use crate::spool::drain::{Replay, ReplayError};
use crate::spool::{Entry, Spool, SpooledRequest};
use crate::store::Store;
use crate::store::catalog::Catalog;
use crate::store::writer::{ClickRow, FailureRecord, Ingest, RawRecord, WriteFailed};
use crate::telemetry;

/// Shared state of the request paths.
#[derive(Clone)]
pub struct Pipeline {
    pub catalog: Arc<ArcSwap<Catalog>>,
    pub keys: Arc<ClickKeyRing>,
    pub store: Store,
    pub hooks: Arc<Hooks>,
    /// Where verified requests go while the database cannot take them; `None` = answer 503.
    pub spool: Option<Spool>,
}

/// A verified request the database could not take, durably spooled for replay.
#[derive(Debug, Serialize)]
pub struct Queued {
    /// Always `queued`.
    pub status: &'static str,
    pub spool_id: String,
}

impl Queued {
    fn new(spool_id: String) -> Self {
        Queued {
            status: "queued",
            spool_id,
        }
    }
}

/// What an S2S postback became.
#[derive(Debug)]
pub enum PostbackAnswer {
    /// Committed: the decision.
    Recorded(Receipt),
    /// Spooled; the decision comes when the database is back.
    Queued(Queued),
}

/// The enabled webhook sources, compiled at start-up.
#[derive(Default)]
pub struct Hooks {
    pub sources: HashMap<String, Hook>,
    pub mappings: MappingSet,
}

/// One enabled source: how to verify and decode it, and whose conversions it reports.
pub struct Hook {
    pub connector: Connector,
    pub advertiser_id: i64,
}

/// Why a webhook request was refused as a whole (nothing recorded).
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("no enabled connector {0:?}")]
    UnknownConnector(String),
    #[error(transparent)]
    Verify(#[from] VerifyError),
    #[error("the request could not be stored")]
    Store(#[from] WriteFailed),
}

impl HookError {
    pub fn code(&self) -> ReasonCode {
        match self {
            Self::UnknownConnector(_) => ReasonCode::UnknownConnector,
            Self::Verify(e) => e.code(),
            Self::Store(_) => ReasonCode::StorageUnavailable,
        }
    }
}

/// What a webhook source is told once its request is durably recorded.
#[derive(Debug)]
pub enum HookAnswer {
    /// postgate's JSON receipt, one entry per event.
    Json(HookReceipt),
    /// The fixed body the source needs (Salesforce: `<Ack>true</Ack>`); also when the
    /// request was spooled, since the spool is durable too.
    Text { content_type: String, body: String },
    /// Spooled (JSON sources): the events are judged when the database is back.
    Queued(Queued),
}

/// The JSON answer to a webhook: the request was recorded; what became of each event.
#[derive(Debug, Serialize)]
pub struct HookReceipt {
    pub status: &'static str,
    pub request_id: String,
    pub events: Vec<EventReceipt>,
}

#[derive(Debug, Serialize)]
pub struct EventReceipt {
    /// Absent when the event's dedupe id (or type) could not be found.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_type: Option<String>,
    /// `accepted`, `duplicate`, `rejected` or `unmapped` (recorded, no conversion).
    pub status: &'static str,
    pub conversion_id: Option<String>,
    pub reasons: Vec<Reason>,
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

    /// Judges and records one S2S postback; returns after it is durably committed, or
    /// durably spooled if the database could not take it.
    pub async fn postback(
        &self,
        params: &Params,
        peer: Option<IpAddr>,
    ) -> Result<PostbackAnswer, PostbackError> {
        let received_at = Utc::now();
        let (decision, spoolable) = {
            let catalog = self.catalog.load();
            let (advertiser, postback) = s2s::parse(&catalog, params, peer)?;
            // Kept only in case the write fails: the verified input, never the token.
            let spoolable = self.spool.as_ref().map(|_| SpooledRequest::Postback {
                advertiser: advertiser.key.clone(),
                postback: postback.clone(),
            });
            let decision =
                attribution::evaluate(&catalog, &self.keys, advertiser, postback, received_at)?;
            (decision, spoolable)
        };
        match self.store.writer.submit(decision).await {
            Ok(receipt) => {
                self.database_ok();
                count_decisions("postback", std::slice::from_ref(&receipt));
                Ok(PostbackAnswer::Recorded(receipt))
            }
            Err(failed) => match (&self.spool, spoolable) {
                (Some(spool), Some(request)) => match spool.append(received_at, request).await {
                    Ok(id) => Ok(PostbackAnswer::Queued(Queued::new(id))),
                    Err(_) => Err(failed.into()),
                },
                _ => Err(failed.into()),
            },
        }
    }

    fn database_ok(&self) {
        if let Some(spool) = &self.spool {
            spool.database_ok();
        }
    }

    /// Runs a spooled request through every stage after verification, as of its original
    /// receive time; its answer was given when it was spooled.
    pub async fn replay(&self, entry: &Entry) -> Result<(), ReplayError> {
        match &entry.request {
            SpooledRequest::Postback {
                advertiser,
                postback,
            } => {
                let decision = {
                    let catalog = self.catalog.load();
                    let advertiser = catalog.advertiser_by_key(advertiser).ok_or_else(|| {
                        ReplayError::Refused(format!("advertiser {advertiser:?} is not configured"))
                    })?;
                    attribution::evaluate(
                        &catalog,
                        &self.keys,
                        advertiser,
                        postback.clone(),
                        entry.received_at,
                    )
                    .map_err(|e| ReplayError::Refused(e.to_string()))?
                };
                let receipt = self
                    .store
                    .writer
                    .submit(decision)
                    .await
                    .map_err(|_| ReplayError::Unavailable)?;
                count_decisions("postback", std::slice::from_ref(&receipt));
                tracing::info!(spool_id = %entry.id, status = ?receipt.status, conversion_id = ?receipt.conversion_id, "Spooled postback recorded.");
                Ok(())
            }
            SpooledRequest::Hook {
                connector,
                method,
                path_and_query,
                headers,
                body,
            } => {
                let hook = self.hooks.sources.get(connector).ok_or_else(|| {
                    ReplayError::Refused(format!("connector {connector:?} is not enabled"))
                })?;
                let raw = RawRequest {
                    method: method.clone(),
                    path_and_query: path_and_query.clone(),
                    headers: headers.clone(),
                    body: body.clone(),
                    peer_ip: None,
                    received_at: entry.received_at,
                };
                // Verified before it was spooled; its signature timestamp would be stale now
                // and its token is no longer there. Only the body is parsed again.
                let verified = hook
                    .connector
                    .parse_unverified(&raw)
                    .map_err(|e| ReplayError::Refused(e.to_string()))?;
                match self.record_hook(connector, hook, &raw, verified).await {
                    Ok(_) => {
                        tracing::info!(spool_id = %entry.id, connector = %connector, "Spooled webhook recorded.");
                        Ok(())
                    }
                    Err(HookError::Store(_)) => Err(ReplayError::Unavailable),
                    Err(e) => Err(ReplayError::Refused(e.to_string())),
                }
            }
        }
    }
}

impl Replay for Pipeline {
    async fn replay(&self, entry: &Entry) -> Result<(), ReplayError> {
        Pipeline::replay(self, entry).await
    }
}

impl Pipeline {
    /// Verifies, decodes, maps and judges one webhook request; every verified request is
    /// recorded raw with its events' outcomes. Returns after the commit.
    pub async fn hook(&self, name: &str, raw: RawRequest) -> Result<HookAnswer, HookError> {
        let hook = self
            .hooks
            .sources
            .get(name)
            .ok_or_else(|| HookError::UnknownConnector(name.to_owned()))?;
        let verified = hook.connector.verify(&raw)?;
        match self.record_hook(name, hook, &raw, verified).await {
            Ok(answer) => {
                self.database_ok();
                Ok(answer)
            }
            Err(HookError::Store(failed)) => {
                let Some(spool) = &self.spool else {
                    return Err(failed.into());
                };
                let request = spooled_hook(name, &hook.connector, &raw);
                match spool.append(raw.received_at, request).await {
                    Ok(id) => Ok(match hook.connector.receipt() {
                        crate::connector::Receipt::Text { content_type, body } => {
                            HookAnswer::Text {
                                content_type: content_type.clone(),
                                body: body.clone(),
                            }
                        }
                        crate::connector::Receipt::Json => HookAnswer::Queued(Queued::new(id)),
                    }),
                    Err(_) => Err(failed.into()),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Decodes, maps, judges and records a verified webhook request (on replay too).
    async fn record_hook(
        &self,
        name: &str,
        hook: &Hook,
        raw: &RawRequest,
        verified: crate::connector::VerifiedRequest,
    ) -> Result<HookAnswer, HookError> {
        // An event without its type or dedupe id is stored with the reason like an unmappable
        // one (the source is answered and stops retrying); so is a request with too many.
        let events = hook
            .connector
            .decode_each(verified)
            .unwrap_or_else(|too_many| vec![Err(too_many)]);

        let request_id = uuid::Uuid::now_v7().to_string();
        let mut work = Ingest {
            raw: Some(raw_record(
                &request_id,
                name,
                &hook.connector,
                raw,
                events.len(),
            )),
            ..Ingest::default()
        };
        let mut slots: Vec<Slot> = Vec::new();
        {
            let catalog = self.catalog.load();
            let Some(advertiser) = catalog.advertiser(hook.advertiser_id) else {
                return Err(HookError::UnknownConnector(name.to_owned()));
            };
            for decoded in &events {
                let mut indexes = Vec::new();
                let mut failures = Vec::new();
                let event = decoded.as_ref().ok();
                // Undecodable, or decoded but mapped to nothing: a reason, no decision.
                let mapped = decoded
                    .as_ref()
                    .map_err(|e| Reason::new(e.code(), e.to_string()))
                    .and_then(|event| match self.hooks.mappings.map(event) {
                        Ok(postbacks) => Ok((event, postbacks)),
                        Err(e) => Err(Reason::new(e.code(), e.to_string())),
                    });
                match mapped {
                    Ok((event, postbacks)) => {
                        for (n, postback) in postbacks.into_iter().enumerate() {
                            match attribution::evaluate(
                                &catalog,
                                &self.keys,
                                advertiser,
                                postback,
                                raw.received_at,
                            ) {
                                Ok(mut d) => {
                                    d.event_key = Some(format!("{name}:{}:{n}", event.event_id()));
                                    d.raw_request_id = Some(request_id.clone());
                                    indexes.push(work.decisions.len());
                                    work.decisions.push(d);
                                }
                                Err(e) => failures.push(Reason::new(e.code(), e.to_string())),
                            }
                        }
                    }
                    Err(reason) => failures.push(reason),
                }
                for reason in &failures {
                    work.failures
                        .push(failure_record(&request_id, name, event, reason.clone()));
                }
                slots.push(Slot {
                    event_id: event.map(|e| e.event_id().to_owned()),
                    event_type: event.map(|e| e.event_type().to_owned()),
                    indexes,
                    failures,
                });
            }
        }

        let receipts = self.store.writer.ingest(work).await?;
        count_decisions("webhook", &receipts);
        for Slot {
            indexes, failures, ..
        } in &slots
        {
            let statuses = indexes.iter().filter_map(|&i| receipts.get(i));
            for status in statuses.map(|r| r.status.as_str()) {
                metrics::counter!(telemetry::WEBHOOK_EVENTS, "connector" => name.to_owned(), "status" => status)
                    .increment(1);
            }
            // Most requests have none: skip the registry lookup.
            if !failures.is_empty() {
                metrics::counter!(telemetry::WEBHOOK_EVENTS, "connector" => name.to_owned(), "status" => "unmapped")
                    .increment(failures.len() as u64);
            }
        }
        Ok(match hook.connector.receipt() {
            crate::connector::Receipt::Text { content_type, body } => HookAnswer::Text {
                content_type: content_type.clone(),
                body: body.clone(),
            },
            crate::connector::Receipt::Json => HookAnswer::Json(HookReceipt {
                status: "accepted",
                request_id,
                events: slots
                    .into_iter()
                    .flat_map(
                        |Slot {
                             event_id,
                             event_type,
                             indexes,
                             failures,
                         }| {
                            let decided =
                                indexes
                                    .into_iter()
                                    .filter_map(|i| receipts.get(i))
                                    .map(|r| EventReceipt {
                                        event_id: event_id.clone(),
                                        event_type: event_type.clone(),
                                        status: r.status.as_str(),
                                        conversion_id: r.conversion_id.clone(),
                                        reasons: r.reasons.clone(),
                                    });
                            let unmapped = failures.into_iter().map(|reason| EventReceipt {
                                event_id: event_id.clone(),
                                event_type: event_type.clone(),
                                status: "unmapped",
                                conversion_id: None,
                                reasons: vec![reason],
                            });
                            decided.chain(unmapped).collect::<Vec<_>>()
                        },
                    )
                    .collect(),
            }),
        })
    }
}

/// One event of a webhook request as its answer reports it: the indexes of its decisions in
/// the ingest, and the reasons of whatever part of it became no decision (each also stored
/// as a failure). Type and id are unknown for an event that could not be decoded.
struct Slot {
    event_id: Option<String>,
    event_type: Option<String>,
    indexes: Vec<usize>,
    failures: Vec<Reason>,
}

/// What is stored for an event (or, without `event`, a request) that became no decision.
fn failure_record(
    request_id: &str,
    connector: &str,
    event: Option<&crate::connector::VerifiedEvent>,
    reason: Reason,
) -> FailureRecord {
    FailureRecord {
        id: uuid::Uuid::now_v7().to_string(),
        raw_request_id: request_id.to_owned(),
        connector: connector.to_owned(),
        event_type: event.map(|e| e.event_type().to_owned()),
        event_id: event.map(|e| e.event_id().to_owned()),
        code: reason.code.as_str().to_owned(),
        message: reason.message,
    }
}

/// Counts committed decisions by channel and verdict.
fn count_decisions(channel: &'static str, receipts: &[Receipt]) {
    for receipt in receipts {
        metrics::counter!(telemetry::CONVERSIONS, "channel" => channel, "verdict" => receipt.status.as_str())
            .increment(1);
    }
}

/// A verified webhook request as the spool keeps it: the connector's token header and query
/// parameter and the usual credential headers are left out; the body stays byte for byte.
fn spooled_hook(name: &str, connector: &Connector, raw: &RawRequest) -> SpooledRequest {
    let headers = kept_headers(connector, raw).cloned().collect();
    let path_and_query = without_secret_params(connector, &raw.path_and_query);
    SpooledRequest::Hook {
        connector: name.to_owned(),
        method: raw.method.clone(),
        path_and_query,
        headers,
        body: raw.body.clone(),
    }
}

/// The path and query as received, less the query parameters that carry the connector's
/// token (`?token=…`). The other parameters stay byte for byte: they are the payload of GET
/// callbacks (Adjust) and part of what some sources sign (HubSpot v3 signs the URL).
fn without_secret_params(connector: &Connector, path_and_query: &str) -> String {
    let Some((path, query)) = path_and_query.split_once('?') else {
        return path_and_query.to_owned();
    };
    let (_, secret_params) = connector.secret_locations();
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            !url::form_urlencoded::parse(pair.as_bytes())
                .next()
                .is_some_and(|(key, _)| secret_params.contains(&key.as_ref()))
        })
        .collect();
    if kept.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", kept.join("&"))
    }
}

/// Headers that carry credentials are not kept.
const SECRET_HEADERS: &[&str] = &[
    "authorization",
    "cookie",
    "proxy-authorization",
    "x-api-key",
];

/// The request's headers without credentials: the usual credential headers and the
/// connector's own token header (`[[auth]] type = "token"`, `header = …`).
fn kept_headers<'a>(
    connector: &Connector,
    raw: &'a RawRequest,
) -> impl Iterator<Item = &'a (String, String)> {
    let (secret_headers, _) = connector.secret_locations();
    raw.headers.iter().filter(move |(k, _)| {
        !SECRET_HEADERS
            .iter()
            .chain(&secret_headers)
            .any(|h| h.eq_ignore_ascii_case(k))
    })
}

fn raw_record(
    id: &str,
    name: &str,
    connector: &Connector,
    raw: &RawRequest,
    events: usize,
) -> RawRecord {
    let headers: Vec<(&str, &str)> = kept_headers(connector, raw)
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    RawRecord {
        id: id.to_owned(),
        connector: name.to_owned(),
        received_at_ms: raw.received_at.timestamp_millis(),
        method: raw.method.clone(),
        path: without_secret_params(connector, &raw.path_and_query),
        headers_json: serde_json::to_string(&headers).unwrap_or_else(|_| "[]".to_owned()),
        // Webhook JSON compresses 3-5x; every stored byte is written twice (WAL, then the
        // checkpoint), so this is most of a raw request's cost. Lossless.
        body_lz4: lz4_flex::compress_prepend_size(&raw.body),
        body_size: raw.body.len() as i64,
        events: events as i64,
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
    fn a_spooled_webhook_keeps_its_data_but_not_its_token() {
        let text = include_str!("../connectors/adjust.toml")
            .replace("${ADJUST_TOKEN}", "adjust-secret-0123456789");
        let connector = Connector::from_toml(
            "adjust",
            std::path::Path::new("adjust.toml"),
            &text,
            &crate::connector::LoadOptions::default(),
        )
        .expect("connector");
        let raw = RawRequest {
            method: "GET".into(),
            path_and_query: "/hooks/adjust?token=adjust-secret-0123456789&activity_kind=event&adid=a%201&created_at=9"
                .into(),
            headers: vec![
                ("Authorization".into(), "Bearer x".into()),
                ("user-agent".into(), "adjust".into()),
            ],
            body: bytes::Bytes::new(),
            peer_ip: None,
            received_at: Utc::now(),
        };
        let SpooledRequest::Hook {
            path_and_query,
            headers,
            ..
        } = spooled_hook("adjust", &connector, &raw)
        else {
            panic!("a hook entry");
        };
        // The other parameters byte for byte, as received.
        assert_eq!(
            path_and_query,
            "/hooks/adjust?activity_kind=event&adid=a%201&created_at=9"
        );
        assert_eq!(headers, [("user-agent".to_owned(), "adjust".to_owned())]);
        // What is left still decodes to the same event.
        let replayed = RawRequest {
            path_and_query,
            headers,
            ..raw.clone()
        };
        let events = connector
            .decode(connector.parse_unverified(&replayed).expect("parse"))
            .expect("decode");
        assert_eq!(events[0].event_type(), "event");
        assert_eq!(events[0].event_id(), "a 1:9:event");
    }

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

    #[test]
    fn stored_and_spooled_headers_leave_out_the_connectors_token_header() {
        let text = r#"
[body]
format = "json"

[[auth]]
type = "token"
header = "X-Partner-Token"
tokens = ["partner-token-0123456789abcdef"]

[event]
type = { path = "$.type" }
id = { path = "$.id" }
"#;
        let connector = Connector::from_toml(
            "partner",
            std::path::Path::new("partner.toml"),
            text,
            &crate::connector::LoadOptions::default(),
        )
        .expect("connector");
        let raw = RawRequest {
            method: "POST".into(),
            path_and_query: "/hooks/partner?x=1".into(),
            headers: vec![
                ("content-type".into(), "application/json".into()),
                (
                    "x-partner-token".into(),
                    "partner-token-0123456789abcdef".into(),
                ),
                ("Authorization".into(), "Bearer other".into()),
                ("X-Request-Id".into(), "r-1".into()),
            ],
            body: bytes::Bytes::from_static(b"{}"),
            peer_ip: None,
            received_at: chrono::Utc::now(),
        };
        let stored = raw_record("id", "partner", &connector, &raw, 0).headers_json;
        assert!(!stored.contains("partner-token"), "{stored}");
        assert!(!stored.contains("Bearer"), "{stored}");
        assert!(stored.contains("X-Request-Id"), "{stored}");
        let SpooledRequest::Hook { headers, .. } = spooled_hook("partner", &connector, &raw) else {
            panic!("a hook");
        };
        let names: Vec<&str> = headers.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["content-type", "X-Request-Id"]);
    }
}
