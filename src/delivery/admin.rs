//! Operator actions on deliveries: the attempt log, replay and resuming a paused endpoint.
//!
//! Contract
//! - Input: a conversion id (list), a [`ReplayFilter`] (replay), an endpoint id (resume).
//! - Output: [`DeliveryView`]s with their attempts; counts of what was replayed.
//! - Errors: [`StoreError`] only. Side effects (replay, resume): a new attempt series on each
//!   chosen delivery — same row, same `webhook-id`, never a new conversion — and the first
//!   job of that series, in one transaction per chunk.

use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use sqlx::Row;

use crate::outbound::enqueue;
use crate::outbound::{DeliveryJob, webhook_id};
use crate::store::{Conn, Pool, StoreError};

/// Deliveries replayed per transaction, so a bulk replay never holds the write lock long.
const REPLAY_CHUNK: usize = 200;

/// The delivery side of the admin API, on a writable pool.
#[derive(Clone)]
pub struct Deliveries {
    pool: Pool,
}

/// One delivery as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct DeliveryView {
    pub id: String,
    pub webhook_id: String,
    pub conversion_id: String,
    pub endpoint: String,
    pub status: String,
    pub state: String,
    pub series: i64,
    pub attempts: i64,
    pub next_attempt_at: Option<String>,
    pub last_error: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    pub attempt_log: Vec<AttemptView>,
}

/// One logged attempt.
#[derive(Debug, Clone, Serialize)]
pub struct AttemptView {
    pub series: i64,
    pub attempt_no: i64,
    pub started_at: String,
    /// Secrets redacted.
    pub url: String,
    pub http_status: Option<i64>,
    pub latency_ms: i64,
    pub outcome: String,
    pub error: Option<String>,
    /// The first 2 KiB of the response, lossily decoded.
    pub response: Option<String>,
}

/// Which deliveries to replay: one by id, or by filter (at least one field).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayFilter {
    pub id: Option<String>,
    /// Affiliate key.
    pub affiliate: Option<String>,
    /// Offer key.
    pub offer: Option<String>,
    /// Deliveries created at or after (RFC 3339).
    pub since: Option<DateTime<Utc>>,
    /// Deliveries created before (RFC 3339).
    pub until: Option<DateTime<Utc>>,
    /// `dead` (default for filters), `delivered`, `paused` or `any`; a pending delivery is
    /// never replayed (it is still on its schedule).
    pub state: Option<String>,
}

impl ReplayFilter {
    pub fn is_empty(&self) -> bool {
        self.id.is_none()
            && self.affiliate.is_none()
            && self.offer.is_none()
            && self.since.is_none()
            && self.until.is_none()
    }
}

fn iso(ms: i64) -> String {
    Utc.timestamp_millis_opt(ms)
        .single()
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

impl Deliveries {
    pub fn new(pool: Pool) -> Self {
        Self { pool }
    }

    /// Every delivery of a conversion, oldest first, with its attempts.
    pub async fn of_conversion(
        &self,
        conversion_id: &str,
    ) -> Result<Vec<DeliveryView>, StoreError> {
        crate::db!(&self.pool, pool => {
            let rows = sqlx::query(
                "SELECT id, conversion_id, endpoint, status, state, series, attempts,
                    next_attempt_at, last_error, created_at, updated_at
                 FROM deliveries WHERE conversion_id = $1 ORDER BY created_at, id",
            )
            .bind(conversion_id)
            .fetch_all(pool)
            .await?;
            let mut out = Vec::with_capacity(rows.len());
            for row in rows {
                let id: String = row.try_get("id")?;
                let attempts = sqlx::query(
                    "SELECT series, attempt_no, started_at, url, http_status, latency_ms, outcome,
                        error, response_prefix
                     FROM delivery_attempts WHERE delivery_id = $1 ORDER BY series, attempt_no",
                )
                .bind(&id)
                .fetch_all(pool)
                .await?
                .into_iter()
                .map(|a| {
                    Ok(AttemptView {
                        series: a.try_get("series")?,
                        attempt_no: a.try_get("attempt_no")?,
                        started_at: iso(a.try_get("started_at")?),
                        url: a.try_get("url")?,
                        http_status: a.try_get("http_status")?,
                        latency_ms: a.try_get("latency_ms")?,
                        outcome: a.try_get("outcome")?,
                        error: a.try_get("error")?,
                        response: a
                            .try_get::<Option<Vec<u8>>, _>("response_prefix")?
                            .map(|b| String::from_utf8_lossy(&b).into_owned()),
                    })
                })
                .collect::<Result<Vec<_>, sqlx::Error>>()?;
                out.push(DeliveryView {
                    webhook_id: webhook_id(&id),
                    conversion_id: row.try_get("conversion_id")?,
                    endpoint: row.try_get("endpoint")?,
                    status: row.try_get("status")?,
                    state: row.try_get("state")?,
                    series: row.try_get("series")?,
                    attempts: row.try_get("attempts")?,
                    next_attempt_at: row.try_get::<Option<i64>, _>("next_attempt_at")?.map(iso),
                    last_error: row.try_get("last_error")?,
                    created_at: iso(row.try_get("created_at")?),
                    updated_at: iso(row.try_get("updated_at")?),
                    attempt_log: attempts,
                    id,
                });
            }
            Ok(out)
        })
    }

    /// Ids of the deliveries a filter selects.
    pub async fn select(&self, filter: &ReplayFilter) -> Result<Vec<String>, StoreError> {
        crate::db!(&self.pool, pool => {
            let mut qb = sqlx::QueryBuilder::new(
                "SELECT d.id FROM deliveries d
                 LEFT JOIN affiliates a ON a.id = d.affiliate_id
                 LEFT JOIN offers o ON o.id = d.offer_id WHERE d.state <> 'pending'",
            );
            if let Some(id) = &filter.id {
                qb.push(" AND d.id = ").push_bind(id.clone());
            }
            match filter.state.as_deref() {
                Some("any") => {}
                Some(state) => {
                    qb.push(" AND d.state = ").push_bind(state.to_owned());
                }
                None if filter.id.is_none() => {
                    qb.push(" AND d.state = 'dead'");
                }
                None => {}
            }
            if let Some(aff) = &filter.affiliate {
                qb.push(" AND a.key = ").push_bind(aff.clone());
            }
            if let Some(offer) = &filter.offer {
                qb.push(" AND o.key = ").push_bind(offer.clone());
            }
            if let Some(since) = filter.since {
                qb.push(" AND d.created_at >= ")
                    .push_bind(since.timestamp_millis());
            }
            if let Some(until) = filter.until {
                qb.push(" AND d.created_at < ")
                    .push_bind(until.timestamp_millis());
            }
            qb.push(" ORDER BY d.created_at, d.id");
            let rows = qb.build().fetch_all(pool).await?;
            rows.iter()
                .map(|r| r.try_get::<String, _>(0).map_err(StoreError::from))
                .collect()
        })
    }

    /// Starts a new attempt series for each id (skipping any that became pending meanwhile);
    /// returns how many were replayed. `progress` is called after each chunk.
    pub async fn replay(
        &self,
        ids: &[String],
        mut progress: impl FnMut(usize),
    ) -> Result<usize, StoreError> {
        crate::db!(&self.pool, pool => {
            let mut replayed = 0;
            for chunk in ids.chunks(REPLAY_CHUNK) {
                let now = Utc::now();
                let mut tx = pool.begin().await?;
                for id in chunk {
                    let series: Option<i64> = sqlx::query_scalar(
                        "UPDATE deliveries SET series = series + 1, state = 'pending',
                            series_started_at = $2, next_attempt_at = $2, updated_at = $2
                         WHERE id = $1 AND state <> 'pending' RETURNING series",
                    )
                    .bind(id)
                    .bind(now.timestamp_millis())
                    .fetch_optional(&mut *tx)
                    .await?;
                    if let Some(series) = series {
                        let job = DeliveryJob::first(id, u32::try_from(series).unwrap_or(u32::MAX));
                        enqueue::push_job(&mut Conn::from(&mut *tx), job, now.timestamp()).await?;
                        replayed += 1;
                    }
                }
                tx.commit().await?;
                progress(chunk.len());
            }
            Ok(replayed)
        })
    }

    /// Lifts a 410 pause and replays the deliveries that waited on it; returns whether the
    /// endpoint was paused and how many deliveries were replayed.
    pub async fn resume_endpoint(&self, endpoint: &str) -> Result<(bool, usize), StoreError> {
        crate::db!(&self.pool, pool => {
            let lifted = sqlx::query("DELETE FROM paused_endpoints WHERE endpoint = $1")
                .bind(endpoint)
                .execute(pool)
                .await?
                .rows_affected()
                > 0;
            let ids: Vec<String> = sqlx::query_scalar(
                "SELECT id FROM deliveries WHERE endpoint = $1 AND state = 'paused' ORDER BY created_at",
            )
            .bind(endpoint)
            .fetch_all(pool)
            .await?;
            let replayed = self.replay(&ids, |_| {}).await?;
            Ok((lifted, replayed))
        })
    }
}
