//! The HTTP surface, and the only module that knows axum.
//!
//! Handlers extract what the request carries (raw query, body bytes, peer address) and hand
//! it to the [`Pipeline`]; they decide nothing. Every answer that is not a redirect is a JSON
//! receipt with a stable reason code. Request logs carry the method and path only: the query
//! string of `/postback` holds the advertiser's token and must never reach a log.

mod error;
pub mod serve;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::body::to_bytes;
use axum::extract::{ConnectInfo, FromRequestParts, MatchedPath, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use subtle::ConstantTimeEq;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

pub use error::ApiError;

use crate::domain::ReasonCode;
use crate::pipeline::{ClickRequest, Pipeline, PostbackAnswer};
use crate::s2s::Params;
use crate::telemetry;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub pipeline: Pipeline,
    pub admin_token: Option<Arc<str>>,
    pub client_ip_header: Option<Arc<str>>,
    pub max_body_bytes: usize,
    pub deliveries: crate::delivery::admin::Deliveries,
    /// The delivery worker's state; `None` when this gateway runs none.
    pub worker: Option<Arc<crate::delivery::worker::WorkerHealth>>,
}

/// The whole router.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/c/{offer}", get(click))
        .route("/postback", get(postback).post(postback))
        .route("/hooks/{connector}", get(hook).post(hook))
        .route("/api/v1/conversions", get(list_conversions))
        .route("/api/v1/conversions/{id}", get(get_conversion))
        .route("/api/v1/ledger/balances", get(balances))
        .route("/api/v1/deliveries", get(list_deliveries))
        .route("/api/v1/deliveries/replay", post(replay_deliveries))
        .route("/api/v1/endpoints/{endpoint}/resume", post(resume_endpoint))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        // Inside the counting layer, so a request that timed out is counted as its 503.
        .route_layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            Duration::from_secs(30),
        ))
        .route_layer(axum::middleware::from_fn(count_request))
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .layer(
            TraceLayer::new_for_http().make_span_with(|req: &Request| {
                tracing::debug_span!("http", method = %req.method(), path = %req.uri().path())
            }),
        )
        .with_state(state)
}

/// The caller's address: the configured proxy header if trusted, else the TCP peer.
///
/// A list-valued header (`X-Forwarded-For: client, proxy1, …`) is read from the right: the
/// trusted proxy appends the address it saw, while everything left of it came from the
/// client and could be forged to pass an IP allow-list.
fn request_ip(state: &AppState, req: &Request) -> Option<IpAddr> {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    client_ip(state, req.headers(), peer)
}

fn client_ip(
    state: &AppState,
    headers: &HeaderMap,
    req_peer: Option<SocketAddr>,
) -> Option<IpAddr> {
    if let Some(name) = state.client_ip_header.as_deref()
        && let Some(ip) = headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .and_then(|v| v.trim().parse().ok())
    {
        return Some(ip);
    }
    req_peer.map(|p| p.ip())
}

fn header_text(headers: &HeaderMap, name: header::HeaderName, max: usize) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.chars().take(max).collect())
}

fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    query
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default()
}

async fn click(
    State(state): State<AppState>,
    Path(offer): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let headers = req.headers();
    let mut click = ClickRequest {
        offer_key: offer,
        ip: request_ip(&state, &req),
        user_agent: header_text(headers, header::USER_AGENT, 512),
        referrer: header_text(headers, header::REFERER, 1024),
        ..ClickRequest::default()
    };
    for (k, v) in query_pairs(req.uri().query()) {
        let v: String = v.chars().take(255).collect();
        match k.as_str() {
            "aff" | "affiliate_id" => click.affiliate_key.get_or_insert(v),
            "sub1" => click.subs[0].get_or_insert(v),
            "sub2" => click.subs[1].get_or_insert(v),
            "sub3" => click.subs[2].get_or_insert(v),
            "sub4" => click.subs[3].get_or_insert(v),
            "sub5" => click.subs[4].get_or_insert(v),
            _ => continue,
        };
    }
    let redirect = state.pipeline.click(click).await?;
    let location = HeaderValue::from_str(&redirect.location).map_err(|_| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ReasonCode::Internal,
            "landing URL is not a valid header",
        )
    })?;
    Ok((
        StatusCode::FOUND,
        [
            (header::LOCATION, location),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ),
        ],
    )
        .into_response())
}

async fn postback(State(state): State<AppState>, req: Request) -> Result<Response, ApiError> {
    let ip = request_ip(&state, &req);
    let mut params = Params::from_pairs(query_pairs(req.uri().query()));
    if req.method() == Method::POST {
        let content_type =
            header_text(req.headers(), header::CONTENT_TYPE, 200).unwrap_or_default();
        let body = read_body(req, state.max_body_bytes).await?;
        params.merge(body_params(&content_type, &body)?);
    }
    Ok(match state.pipeline.postback(&params, ip).await? {
        PostbackAnswer::Recorded(receipt) => Json(receipt).into_response(),
        PostbackAnswer::Queued(queued) => (StatusCode::ACCEPTED, Json(queued)).into_response(),
    })
}

async fn hook(
    State(state): State<AppState>,
    Path(connector): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let ip = request_ip(&state, &req);
    let method = req.method().to_string();
    let path_and_query = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let headers = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    // Signatures are computed over the raw bytes: the body is kept exactly as received.
    let body = read_body(req, state.max_body_bytes).await?;
    let raw = crate::connector::RawRequest {
        method,
        path_and_query,
        headers,
        body,
        peer_ip: ip,
        received_at: chrono::Utc::now(),
    };
    match state.pipeline.hook(&connector, raw).await? {
        crate::pipeline::HookAnswer::Json(receipt) => Ok(Json(receipt).into_response()),
        crate::pipeline::HookAnswer::Text { content_type, body } => {
            let content_type = HeaderValue::from_str(&content_type)
                .unwrap_or_else(|_| HeaderValue::from_static("text/plain"));
            Ok(([(header::CONTENT_TYPE, content_type)], body).into_response())
        }
        crate::pipeline::HookAnswer::Queued(queued) => {
            Ok((StatusCode::ACCEPTED, Json(queued)).into_response())
        }
    }
}

/// How long a request's body may take to arrive, in all: a client that stops sending gets a
/// 408 before the 30 s request timeout would answer 503 for it.
const BODY_TIMEOUT: Duration = Duration::from_secs(20);

/// The request's body, at most `limit` bytes. A `Content-Length` over the limit is refused
/// before anything is read (nor is a `100 Continue` sent for it).
async fn read_body(req: Request, limit: usize) -> Result<bytes::Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ReasonCode::PayloadTooLarge,
            format!("request body exceeds {limit} bytes"),
        )
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let read = tokio::time::timeout(BODY_TIMEOUT, to_bytes(req.into_body(), limit))
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                ReasonCode::RequestTimeout,
                format!(
                    "request body not received within {} s",
                    BODY_TIMEOUT.as_secs()
                ),
            )
        })?;
    read.map_err(|e| {
        let over = std::error::Error::source(&e)
            .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
        if over {
            too_large()
        } else {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                ReasonCode::InvalidParameter,
                "request body could not be read",
            )
        }
    })
}

/// Parameters from a form or JSON body. Empty bodies carry none.
fn body_params(content_type: &str, body: &[u8]) -> Result<Params, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Params::default());
    }
    let mime = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match mime.as_str() {
        "application/x-www-form-urlencoded" | "" => Ok(Params::from_pairs(
            url::form_urlencoded::parse(body).into_owned(),
        )),
        "application/json" => {
            let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    ReasonCode::InvalidParameter,
                    format!("body is not valid JSON: {e}"),
                )
            })?;
            let serde_json::Value::Object(map) = value else {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    ReasonCode::InvalidParameter,
                    "JSON body must be an object of parameters",
                ));
            };
            Ok(Params::from_pairs(map.into_iter().filter_map(|(k, v)| {
                let text = match v {
                    serde_json::Value::String(s) => s,
                    // arbitrary_precision: the number's text exactly as sent, no f64.
                    serde_json::Value::Number(n) => n.to_string(),
                    serde_json::Value::Bool(b) => b.to_string(),
                    serde_json::Value::Null => return None,
                    other => other.to_string(),
                };
                Some((k, text))
            })))
        }
        other => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ReasonCode::UnsupportedMediaType,
            format!("content type {other:?}; send a query string, a form or JSON"),
        )),
    }
}

/// Proof that the request carried the admin bearer token.
struct Admin;

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let unauthorized = || {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                ReasonCode::Unauthorized,
                "a valid admin bearer token is required",
            )
        };
        let expected = state.admin_token.as_deref().ok_or_else(unauthorized)?;
        let given = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(unauthorized)?;
        if bool::from(given.as_bytes().ct_eq(expected.as_bytes())) {
            Ok(Admin)
        } else {
            Err(unauthorized())
        }
    }
}

async fn get_conversion(
    _: Admin,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    match state.pipeline.store.conversion(&id).await? {
        Some(c) => Ok(Json(c).into_response()),
        None => Err(ApiError::not_found(format!("no conversion {id}"))),
    }
}

#[derive(Deserialize)]
struct ConversionFilter {
    click_id: Option<String>,
    limit: Option<i64>,
}

async fn list_conversions(
    _: Admin,
    State(state): State<AppState>,
    Query(filter): Query<ConversionFilter>,
) -> Result<Response, ApiError> {
    let Some(click_id) = filter.click_id else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            ReasonCode::MissingParameter,
            "filter by click_id",
        ));
    };
    let limit = filter.limit.unwrap_or(100).clamp(1, 1000);
    let list = state
        .pipeline
        .store
        .conversions_by_click(&click_id, limit)
        .await?;
    Ok(Json(serde_json::json!({ "conversions": list })).into_response())
}

async fn balances(_: Admin, State(state): State<AppState>) -> Result<Response, ApiError> {
    let balances = state.pipeline.store.balances().await?;
    Ok(Json(serde_json::json!({ "balances": balances })).into_response())
}

#[derive(Deserialize)]
struct DeliveryFilter {
    conversion_id: Option<String>,
}

async fn list_deliveries(
    _: Admin,
    State(state): State<AppState>,
    Query(filter): Query<DeliveryFilter>,
) -> Result<Response, ApiError> {
    let Some(conversion_id) = filter.conversion_id else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            ReasonCode::MissingParameter,
            "filter by conversion_id",
        ));
    };
    let list = state.deliveries.of_conversion(&conversion_id).await?;
    Ok(Json(serde_json::json!({ "deliveries": list })).into_response())
}

async fn replay_deliveries(
    _: Admin,
    State(state): State<AppState>,
    req: Request,
) -> Result<Response, ApiError> {
    // Read like every other body: the same size limit, refused up front, and time limit.
    let body = read_body(req, state.max_body_bytes).await?;
    let filter: crate::delivery::admin::ReplayFilter =
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                ReasonCode::InvalidParameter,
                format!("the filter is not valid JSON of the expected shape: {e}"),
            )
        })?;
    if filter.is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            ReasonCode::MissingParameter,
            "give an id, or at least one of affiliate, offer, since, until",
        ));
    }
    let ids = state.deliveries.select(&filter).await?;
    if ids.is_empty() && filter.id.is_some() {
        return Err(ApiError::not_found(
            "no such delivery, or it is still pending on its schedule",
        ));
    }
    let replayed = state.deliveries.replay(&ids, |_| {}).await?;
    Ok(Json(serde_json::json!({ "matched": ids.len(), "replayed": replayed })).into_response())
}

async fn resume_endpoint(
    _: Admin,
    State(state): State<AppState>,
    Path(endpoint): Path<String>,
) -> Result<Response, ApiError> {
    let (was_paused, replayed) = state.deliveries.resume_endpoint(&endpoint).await?;
    Ok(Json(
        serde_json::json!({ "endpoint": endpoint, "was_paused": was_paused, "replayed": replayed }),
    )
    .into_response())
}

/// Counts and times every routed request under its route template (never the raw path:
/// it would carry click IDs and make the label set unbounded).
async fn count_request(path: MatchedPath, req: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    let response = next.run(req).await;
    let route = path.as_str().to_owned();
    metrics::histogram!(telemetry::HTTP_DURATION, "route" => route.clone())
        .record(started.elapsed());
    metrics::counter!(
        telemetry::HTTP_REQUESTS,
        "route" => route,
        "status" => response.status().as_u16().to_string()
    )
    .increment(1);
    response
}

/// Prometheus text exposition of the process' metrics (admin token required: the figures
/// are business volumes). Spool gauges are read at scrape time.
async fn metrics(_: Admin, State(state): State<AppState>) -> Response {
    if let Some(stats) = state.pipeline.spool.as_ref().map(|s| s.stats()) {
        metrics::gauge!(telemetry::SPOOL_PENDING).set(stats.pending as f64);
        metrics::gauge!(telemetry::SPOOL_WRITABLE).set(if stats.writable { 1.0 } else { 0.0 });
    }
    let body = telemetry::metrics().map(|h| h.render()).unwrap_or_default();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

/// 200 `ready`; 200 `degraded` while the database is unreachable but the spool takes
/// requests (every gateway shares the database: taking them all out of the load balancer
/// would refuse requests that the spool keeps safe); 503 `unavailable` when neither can.
/// The delivery worker's state is reported but does not change the status: a gateway
/// whose worker is restarting still takes conversions, and their deliveries wait safely.
async fn readyz(State(state): State<AppState>) -> Response {
    let spool = state.pipeline.spool.as_ref();
    let database_ok =
        state.pipeline.store.ready().await && !spool.is_some_and(|s| s.database_down());
    let stats = spool.map(|s| s.stats());
    let spool_ok = stats.as_ref().is_some_and(|s| s.writable);
    let (status, word) = match (database_ok, spool_ok) {
        (true, _) => (StatusCode::OK, "ready"),
        (false, true) => (StatusCode::OK, "degraded"),
        (false, false) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
    };
    let body = serde_json::json!({
        "status": word,
        "database": if database_ok { "ok" } else { "unreachable" },
        "spool": stats,
        "delivery_worker": state.worker.as_ref().map(|w| serde_json::json!({
            "running": w.running(),
            "restarts": w.restarts(),
        })),
    });
    (status, Json(body)).into_response()
}
