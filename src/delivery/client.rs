//! The only HTTP client in postgate: sends one outbound postback attempt, SSRF-safe.
//!
//! Contract
//! - Input: an [`OutboundRequest`] (rendered by `outbound::endpoint`).
//! - Output: an [`AttemptRecord`] — always, never an `Err`: a refused, failed or timed-out
//!   attempt is a record with an [`AttemptOutcome`] that `outbound::schedule::classify` turns
//!   into a verdict. Records carry the redacted URL, status, latency, error chain and at most
//!   [`ClientConfig::capture_bytes`] of the response body.
//! - Errors: [`ClientError`] only when building the client (config time).
//! - Side effects: DNS lookups and one HTTP request; one `tracing` event per attempt. No
//!   wall-clock reads: when the attempt started is the worker's to say (its `Clock`).
//!
//! SSRF defence, in order: HTTPS unless the endpoint is marked; an IP-literal host is checked
//! here (reqwest does not call the resolver for literals); a host name goes through
//! [`GuardedResolver`], which drops refused addresses so reqwest can only connect to checked
//! ones (no second lookup, so DNS rebinding cannot slip between check and connect); redirects
//! are never followed; system proxies are ignored (a proxy would resolve the name for us).

use std::error::Error as StdError;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use tokio::time::Instant;
use url::Host;

use super::redact::redact_url;
use super::ssrf::{AddressPolicy, AllowList, Blocked};
use crate::outbound::endpoint::{HttpMethod, OutboundRequest};
use crate::outbound::schedule::{AttemptOutcome, parse_retry_after};

/// Client settings. Defaults are the production values from the issue.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub connect_timeout: Duration,
    /// Whole attempt: connect, request, response headers and the captured body prefix.
    pub total_timeout: Duration,
    /// How much of the response body is kept for the attempt log.
    pub capture_bytes: usize,
    pub allow: AllowList,
    pub user_agent: String,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            total_timeout: Duration::from_secs(15),
            capture_bytes: 2048,
            allow: AllowList::default(),
            user_agent: concat!("postgate/", env!("CARGO_PKG_VERSION")).to_owned(),
        }
    }
}

/// Errors building the client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("failed to build the outbound HTTP client")]
    Build(#[source] reqwest::Error),
}

/// DNS resolver that returns only addresses the policy allows.
#[derive(Debug, Clone)]
pub struct GuardedResolver {
    policy: Arc<AddressPolicy>,
}

impl GuardedResolver {
    pub fn new(policy: Arc<AddressPolicy>) -> Self {
        Self { policy }
    }
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = Arc::clone(&self.policy);
        Box::pin(async move {
            // Port 0: the connector sets the URL's port on whatever we return.
            let resolved: Vec<SocketAddr> =
                tokio::net::lookup_host((name.as_str(), 0)).await?.collect();
            let mut first_refusal = None;
            let allowed: Vec<SocketAddr> = resolved
                .into_iter()
                .filter(|sa| match policy.check(sa.ip()) {
                    Ok(()) => true,
                    Err(b) => {
                        tracing::debug!(host = name.as_str(), addr = %b.addr, reason = ?b.reason, "Resolved address refused by SSRF policy.");
                        first_refusal.get_or_insert(b);
                        false
                    }
                })
                .collect();
            if allowed.is_empty() {
                let err: Box<dyn StdError + Send + Sync> = match first_refusal {
                    Some(b) => Box::new(b),
                    None => format!("{} resolved to no addresses", name.as_str()).into(),
                };
                return Err(err);
            }
            let addrs: Addrs = Box::new(allowed.into_iter());
            Ok(addrs)
        })
    }
}

/// One attempt, as logged and stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptRecord {
    pub endpoint_id: String,
    /// The URL with secret query values masked.
    pub url: String,
    pub outcome: AttemptOutcome,
    pub status: Option<u16>,
    pub latency: Duration,
    /// Error with its cause chain, for operators.
    pub error: Option<String>,
    /// Raw `Retry-After` header, if any.
    pub retry_after: Option<String>,
    /// At most `capture_bytes` of the response body.
    pub body_prefix: Vec<u8>,
    /// True when the body was longer than what we kept.
    pub body_truncated: bool,
}

impl AttemptRecord {
    /// The `Retry-After` header as a delay from `now`, for `RetrySchedule::next_attempt_at`.
    pub fn retry_after_delay(&self, now: DateTime<Utc>) -> Option<Duration> {
        self.retry_after
            .as_deref()
            .and_then(|v| parse_retry_after(v, now))
    }
}

/// The outbound HTTP client.
#[derive(Debug, Clone)]
pub struct DeliveryClient {
    http: reqwest::Client,
    policy: Arc<AddressPolicy>,
    capture_bytes: usize,
}

impl DeliveryClient {
    pub fn new(config: ClientConfig) -> Result<Self, ClientError> {
        let policy = Arc::new(AddressPolicy::new(config.allow));
        let http = reqwest::Client::builder()
            .use_rustls_tls()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .connect_timeout(config.connect_timeout)
            .timeout(config.total_timeout)
            .user_agent(config.user_agent)
            .dns_resolver(Arc::new(GuardedResolver::new(Arc::clone(&policy))))
            .build()
            .map_err(ClientError::Build)?;
        Ok(Self {
            http,
            policy,
            capture_bytes: config.capture_bytes,
        })
    }

    /// Sends one attempt and records what happened. Never panics, never returns early
    /// without a record.
    pub async fn send(&self, req: &OutboundRequest) -> AttemptRecord {
        // tokio's clock, not std's: under `tokio::time::pause()` the latency of a timed-out
        // attempt is exactly the timeout.
        let start = Instant::now();
        let mut rec = AttemptRecord {
            endpoint_id: req.endpoint_id.clone(),
            url: redact_url(&req.url),
            outcome: AttemptOutcome::Refused,
            status: None,
            latency: Duration::ZERO,
            error: None,
            retry_after: None,
            body_prefix: Vec::new(),
            body_truncated: false,
        };
        match self.preflight(req) {
            Ok(()) => self.execute(req, &mut rec).await,
            Err(reason) => rec.error = Some(reason),
        }
        rec.latency = start.elapsed();
        log_attempt(&rec);
        rec
    }

    /// Checks that need no network: scheme and IP-literal hosts.
    fn preflight(&self, req: &OutboundRequest) -> Result<(), String> {
        match req.url.scheme() {
            "https" => {}
            "http" if req.allow_insecure_http => {}
            other => return Err(format!("scheme {other:?} not allowed for this endpoint")),
        }
        let literal: Option<IpAddr> = match req.url.host() {
            Some(Host::Ipv4(ip)) => Some(ip.into()),
            Some(Host::Ipv6(ip)) => Some(ip.into()),
            Some(Host::Domain(_)) => None,
            None => return Err("URL has no host".to_owned()),
        };
        if let Some(ip) = literal {
            self.policy.check(ip).map_err(|b| b.to_string())?;
        }
        Ok(())
    }

    async fn execute(&self, req: &OutboundRequest, rec: &mut AttemptRecord) {
        let mut builder = match req.method {
            HttpMethod::Get => self.http.get(req.url.clone()),
            HttpMethod::Post => self.http.post(req.url.clone()),
        };
        for (k, v) in &req.headers {
            builder = builder.header(k.as_str(), v.as_str());
        }
        if let Some(body) = &req.body {
            builder = builder.body(body.clone());
        }
        let mut resp = match builder.send().await {
            Ok(r) => r,
            Err(e) => {
                rec.outcome = transport_outcome(&e);
                rec.error = Some(error_chain(&e.without_url()));
                return;
            }
        };
        let status = resp.status().as_u16();
        rec.status = Some(status);
        rec.outcome = AttemptOutcome::Response { status };
        rec.retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        // Read only what we keep, then drop the response (closing the connection) instead of
        // draining an unbounded body.
        while rec.body_prefix.len() < self.capture_bytes {
            match resp.chunk().await {
                Ok(Some(chunk)) => {
                    let room = self.capture_bytes - rec.body_prefix.len();
                    if chunk.len() > room {
                        rec.body_prefix.extend_from_slice(&chunk[..room]);
                        rec.body_truncated = true;
                    } else {
                        rec.body_prefix.extend_from_slice(&chunk);
                    }
                }
                Ok(None) => return,
                Err(e) => {
                    // The status already arrived; a broken body does not change the verdict.
                    rec.error = Some(error_chain(&e.without_url()));
                    return;
                }
            }
        }
        if !rec.body_truncated {
            // Exactly at the cap: peek whether more follows, without reading it all.
            rec.body_truncated = matches!(resp.chunk().await, Ok(Some(c)) if !c.is_empty());
        }
    }
}

fn transport_outcome(e: &reqwest::Error) -> AttemptOutcome {
    if find_source::<Blocked>(e).is_some() {
        AttemptOutcome::Refused
    } else if e.is_timeout() {
        AttemptOutcome::Timeout
    } else if e.is_connect() {
        AttemptOutcome::Connect
    } else {
        AttemptOutcome::Transport
    }
}

fn find_source<'a, T: StdError + 'static>(e: &'a (dyn StdError + 'static)) -> Option<&'a T> {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(t) = err.downcast_ref::<T>() {
            return Some(t);
        }
        cur = err.source();
    }
    None
}

/// "outer: inner: root" — reqwest's top-level message alone ("error sending request") is
/// useless to an operator.
fn error_chain(e: &(dyn StdError + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(err) = cur {
        s.push_str(": ");
        s.push_str(&err.to_string());
        cur = err.source();
    }
    s
}

fn log_attempt(rec: &AttemptRecord) {
    let body = String::from_utf8_lossy(&rec.body_prefix);
    let latency_ms = u64::try_from(rec.latency.as_millis()).unwrap_or(u64::MAX);
    match rec.outcome {
        AttemptOutcome::Response { status } if (200..300).contains(&status) => tracing::info!(
            endpoint = %rec.endpoint_id, url = %rec.url, status, latency_ms,
            "Outbound postback delivered."
        ),
        _ => tracing::warn!(
            endpoint = %rec.endpoint_id, url = %rec.url, outcome = ?rec.outcome, status = ?rec.status,
            latency_ms, error = ?rec.error, retry_after = ?rec.retry_after, body = %body,
            "Outbound postback attempt failed."
        ),
    }
}
