//! The delivery worker: one apalis task per attempt.
//!
//! Contract
//! - Input: a [`DeliveryJob`] (delivery id, series, attempt number) fetched by apalis from
//!   its job table in postgate's own database (apalis-sqlite or apalis-postgres). On
//!   PostgreSQL every gateway runs a worker: apalis hands each job to one of them
//!   (`FOR UPDATE SKIP LOCKED`) and re-queues the jobs of a worker whose heartbeat stopped.
//! - Output: one HTTP request to the affiliate (rendered now, from the conversion row), then
//!   in ONE small transaction: the attempt row, the delivery's new state, and either the next
//!   attempt's job (retry), a paused endpoint (410) or a dead letter (schedule exhausted).
//! - Errors: a database failure returns a plain error, which apalis re-runs at once up to
//!   `INFRA_ATTEMPTS` times; HTTP failures are never handler errors (our schedule owns them).
//! - Side effects: HTTP, rows in `delivery_attempts`, `deliveries`, `paused_endpoints`, `Jobs`.
//!
//! A job whose delivery is no longer pending, belongs to an older series (a replay started a
//! new one) or whose attempt is already logged is acknowledged without sending: re-runs after
//! a crash between our commit and apalis' ack are harmless.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use apalis::prelude::*;
use apalis_postgres::PostgresStorage;
use apalis_sqlite::{Config, SqliteStorage};
use chrono::{DateTime, TimeZone, Utc};

use super::client::{AttemptRecord, ClientConfig, DeliveryClient};
use super::limiter::KeyedLimiter;
use super::ssrf::AllowList;
use crate::config::OutboundSettings;
use crate::domain::{Currency, Money};
use crate::outbound::enqueue;
use crate::outbound::{DeliveryJob, Endpoint, NextStep, PostbackValues, QUEUE, RetrySchedule};
use crate::store::{Conn, Db, Pool, StoreError};

/// When the endpoint's concurrency cap is reached, the attempt is put back this much later
/// instead of holding one of the worker's slots while it waits.
const BUSY_ENDPOINT_DELAY_SECS: i64 = 1;

/// Why the worker could not start.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("invalid outbound.allow_networks")]
    Allow(#[from] super::ssrf::SsrfError),
    #[error("cannot build the HTTP client")]
    Client(#[from] super::client::ClientError),
}

/// What every attempt needs, shared by the worker's tasks.
pub struct DeliveryContext {
    pool: Pool,
    client: DeliveryClient,
    endpoints: HashMap<String, Endpoint>,
    schedule: RetrySchedule,
    limiter: KeyedLimiter<String>,
    /// One slot per attempt (`delivery:series:attempt`): two copies of one attempt can be
    /// queued at once (the original re-run after a crash, and the copy put back while its
    /// endpoint was busy); only one of them sends.
    attempts: KeyedLimiter<String>,
}

impl DeliveryContext {
    pub fn new(pool: Pool, settings: &OutboundSettings) -> Result<Self, WorkerError> {
        let allow = AllowList::parse(settings.allow_networks.iter().map(String::as_str))?;
        let client = DeliveryClient::new(ClientConfig {
            connect_timeout: settings.connect_timeout,
            total_timeout: settings.total_timeout,
            allow,
            ..ClientConfig::default()
        })?;
        let endpoints = settings
            .postbacks
            .values()
            .flat_map(|p| p.global.iter().chain(p.offer_overrides.values()))
            .map(|rule| (rule.endpoint.id.clone(), rule.endpoint.clone()))
            .collect();
        Ok(Self {
            pool,
            client,
            endpoints,
            schedule: settings.schedule.clone(),
            limiter: KeyedLimiter::new(settings.per_endpoint_concurrency),
            attempts: KeyedLimiter::new(1),
        })
    }
}

/// A running worker; [`RunningWorker::stop`] lets in-flight attempts finish.
pub struct RunningWorker {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
    prune: tokio::task::JoinHandle<()>,
}

impl RunningWorker {
    pub async fn stop(self) {
        self.prune.abort();
        let _ = self.stop.send(());
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "Delivery worker ended abnormally.");
        }
    }
}

/// Starts the worker on `pool` (a writable pool on the gateway's database).
pub fn spawn(pool: Pool, settings: &OutboundSettings) -> Result<RunningWorker, WorkerError> {
    let ctx = Arc::new(DeliveryContext::new(pool.clone(), settings)?);
    let concurrency = settings.concurrency;
    let poll = settings.poll_interval;
    // Short: an idle worker also re-polls on its heartbeat (observed: due retries waited for
    // it), and a dead worker's jobs are reaped after a few missed beats.
    let heartbeat = Duration::from_secs(1);
    let batch = concurrency.min(100);
    // Unique per start: apalis refuses a name whose row was seen within a heartbeat.
    let name = format!("outbound-{}-{}", std::process::id(), ulid::Ulid::generate());
    let monitor = match pool.clone() {
        Db::Sqlite(pool) => Monitor::new().register(move |_restarts| {
            let storage: SqliteStorage<DeliveryJob> = SqliteStorage::new(&pool).with_config(
                Config::default()
                    .queue(QUEUE)
                    .batch_size(batch)
                    .heartbeat_interval(heartbeat),
            );
            WorkerBuilder::new(name.clone())
                .backend(storage.poll_with_interval(poll))
                .data(ctx.clone())
                .concurrency(concurrency)
                .build(deliver)
        }),
        Db::Postgres(pool) => Monitor::new().register(move |_restarts| {
            let storage: PostgresStorage<DeliveryJob> = PostgresStorage::new(&pool).with_config(
                apalis_postgres::Config::default()
                    .queue(QUEUE)
                    .batch_size(batch)
                    .heartbeat_interval(heartbeat)
                    .missed_heartbeats(5),
            );
            WorkerBuilder::new(name.clone())
                .backend(storage.poll_with_interval(poll))
                .data(ctx.clone())
                .concurrency(concurrency)
                .build(deliver)
        }),
    }
    .shutdown_timeout(Duration::from_secs(20));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let signal = async {
            let _ = stopped.await;
            Ok(())
        };
        match monitor.run_with_signal(signal).await {
            Ok(()) => tracing::info!("Delivery worker stopped."),
            Err(e) => tracing::error!(error = %e, "Delivery worker failed."),
        }
    });
    let prune = tokio::spawn(prune_loop(pool, Duration::from_secs(3600)));
    Ok(RunningWorker { stop, task, prune })
}

/// How long finished jobs stay in apalis' table. Our own attempt log is the record; the
/// `Jobs` rows only have to outlive a re-run after a crash.
const KEEP_FINISHED_JOBS_SECS: i64 = 86_400;

/// Deletes finished jobs of our queue now and then. apalis' own `Vacuum` is not used: it runs
/// a full `VACUUM` on the shared file and its age filter compares seconds with text.
async fn prune_loop(pool: Pool, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let result = match &pool {
            Db::Sqlite(p) => sqlx::query(
                "DELETE FROM Jobs WHERE job_type = $1 AND status IN ('Done', 'Killed')
                    AND done_at < strftime('%s', 'now') - $2",
            )
            .bind(QUEUE)
            .bind(KEEP_FINISHED_JOBS_SECS)
            .execute(p)
            .await
            .map(|r| r.rows_affected()),
            Db::Postgres(p) => sqlx::query(
                "DELETE FROM apalis.jobs WHERE job_type = $1 AND status IN ('Done', 'Killed')
                    AND done_at < now() - make_interval(secs => $2)",
            )
            .bind(QUEUE)
            .bind(KEEP_FINISHED_JOBS_SECS as f64)
            .execute(p)
            .await
            .map(|r| r.rows_affected()),
        };
        match result {
            Ok(deleted) if deleted > 0 => {
                tracing::info!(deleted, "Pruned finished delivery jobs.");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "Pruning finished delivery jobs failed."),
        }
    }
}

/// The apalis handler: one attempt.
async fn deliver(job: DeliveryJob, ctx: Data<Arc<DeliveryContext>>) -> Result<(), BoxDynError> {
    match attempt(&job, &ctx).await {
        Ok(()) => Ok(()),
        Err(e) => {
            tracing::warn!(
                error = %crate::store::writer::error_chain(&e),
                delivery = %job.delivery_id,
                attempt = job.attempt_no,
                "Delivery attempt could not be recorded; apalis re-runs it."
            );
            Err(Box::new(e))
        }
    }
}

/// The delivery and conversion columns one attempt needs.
const LOAD: &str = "SELECT d.state, d.series, d.series_started_at, d.endpoint, d.status,
        d.conversion_id, c.click_id, c.transaction_id, c.goal, c.payout_minor,
        c.network_currency, c.occurred_at, c.created_at, o.key AS offer_key,
        a.key AS affiliate_key, k.sub1, k.sub2, k.sub3, k.sub4, k.sub5,
        EXISTS (SELECT 1 FROM delivery_attempts t WHERE t.delivery_id = d.id
                AND t.series = $2 AND t.attempt_no = $3) AS done,
        EXISTS (SELECT 1 FROM paused_endpoints p WHERE p.endpoint = d.endpoint) AS paused
    FROM deliveries d
    JOIN conversions c ON c.id = d.conversion_id
    LEFT JOIN offers o ON o.id = c.offer_id
    LEFT JOIN affiliates a ON a.id = c.affiliate_id
    LEFT JOIN clicks k ON k.click_id = c.click_id
    WHERE d.id = $1";

/// What [`LOAD`] reads.
#[derive(sqlx::FromRow)]
struct Loaded {
    state: String,
    series: i64,
    series_started_at: i64,
    endpoint: String,
    status: String,
    conversion_id: String,
    click_id: Option<String>,
    transaction_id: Option<String>,
    goal: Option<String>,
    payout_minor: Option<i64>,
    network_currency: Option<String>,
    occurred_at: Option<i64>,
    created_at: i64,
    offer_key: Option<String>,
    affiliate_key: Option<String>,
    sub1: Option<String>,
    sub2: Option<String>,
    sub3: Option<String>,
    sub4: Option<String>,
    sub5: Option<String>,
    done: bool,
    paused: bool,
}

async fn attempt(job: &DeliveryJob, ctx: &DeliveryContext) -> Result<(), StoreError> {
    // Before reading the row: a copy that started after this one finished must see its
    // attempt logged.
    let Some(_attempt) = ctx.attempts.try_acquire(job.idempotency_key()) else {
        // The other copy sends it and records the outcome; this one is done.
        tracing::debug!(delivery = %job.delivery_id, attempt = job.attempt_no, "Attempt already in flight.");
        return Ok(());
    };
    let row: Option<Loaded> = crate::db!(&ctx.pool, p => {
        sqlx::query_as(LOAD)
            .bind(&job.delivery_id)
            .bind(i64::from(job.series))
            .bind(i64::from(job.attempt_no))
            .fetch_optional(p)
            .await?
    });
    let Some(row) = row else {
        tracing::warn!(delivery = %job.delivery_id, "Job for an unknown delivery; dropped.");
        return Ok(());
    };
    if row.state != "pending" || row.series != i64::from(job.series) || row.done {
        return Ok(());
    }
    let endpoint_id = row.endpoint.clone();
    let now = Utc::now();
    if row.paused {
        // The endpoint answered 410 meanwhile: wait for an operator's resume.
        crate::db!(&ctx.pool, p => {
            sqlx::query(
                "UPDATE deliveries SET state = 'paused', next_attempt_at = NULL, updated_at = $2
                 WHERE id = $1 AND state = 'pending'",
            )
            .bind(&job.delivery_id)
            .bind(now.timestamp_millis())
            .execute(p)
            .await?;
        });
        return Ok(());
    }
    let Some(endpoint) = ctx.endpoints.get(&endpoint_id) else {
        finish(
            ctx,
            job,
            now,
            None,
            Step::Dead(format!("endpoint {endpoint_id} is no longer configured")),
        )
        .await?;
        return Ok(());
    };
    let Some(_permit) = ctx.limiter.try_acquire(endpoint_id.clone()) else {
        // Busy endpoint: run this attempt a little later, under its own idempotency key.
        crate::db!(&ctx.pool, p => {
            let mut conn = p.acquire().await?;
            enqueue::push_job_keyed(
                &mut Conn::from(&mut *conn),
                job.clone(),
                now.timestamp() + BUSY_ENDPOINT_DELAY_SECS,
                format!("{}:w{}", job.idempotency_key(), now.timestamp_micros()),
            )
            .await?
        });
        return Ok(());
    };

    let values = values_of(&row)?;
    let record = match endpoint.build_request(&job.delivery_id, &values, now.timestamp()) {
        Ok(request) => ctx.client.send(&request).await,
        Err(e) => {
            finish(
                ctx,
                job,
                now,
                None,
                Step::Dead(format!("cannot render: {e}")),
            )
            .await?;
            return Ok(());
        }
    };
    let ended = Utc::now();
    let origin = Utc
        .timestamp_millis_opt(row.series_started_at)
        .single()
        .unwrap_or(ended);
    let step = match ctx.schedule.plan(
        origin,
        ended,
        job.attempt_no,
        record.outcome,
        record.retry_after_delay(ended),
        &mut rand::rng(),
    ) {
        NextStep::Delivered => Step::Delivered,
        NextStep::RetryAt(at) => Step::Retry(at),
        NextStep::PauseEndpoint => Step::Pause,
        NextStep::DeadLetter(reason) => Step::Dead(format!("{reason:?}")),
    };
    tracing::debug!(
        delivery = %job.delivery_id,
        endpoint = %endpoint_id,
        attempt = job.attempt_no,
        status = ?record.status,
        step = ?step,
        "Delivery attempt."
    );
    finish(ctx, job, ended, Some(&record), step).await
}

/// What the attempt leads to.
#[derive(Debug)]
enum Step {
    Delivered,
    Retry(DateTime<Utc>),
    Pause,
    Dead(String),
}

impl Step {
    fn outcome(&self) -> &'static str {
        match self {
            Step::Delivered => "delivered",
            Step::Retry(_) => "retry",
            Step::Pause => "paused",
            Step::Dead(_) => "dead",
        }
    }
}

/// Records the attempt and the delivery's next state in one transaction.
async fn finish(
    ctx: &DeliveryContext,
    job: &DeliveryJob,
    now: DateTime<Utc>,
    record: Option<&AttemptRecord>,
    step: Step,
) -> Result<(), StoreError> {
    let now_ms = now.timestamp_millis();
    let error = match (&step, record) {
        (Step::Dead(reason), None) => Some(reason.clone()),
        (_, Some(r)) => r.error.clone().or_else(|| {
            r.status
                .filter(|s| !(200..300).contains(s))
                .map(|s| format!("HTTP {s}"))
        }),
        _ => None,
    };
    crate::db!(&ctx.pool, pool => {
        let mut tx = pool.begin().await?;
        sqlx::query(
            "INSERT INTO delivery_attempts (delivery_id, series, attempt_no, started_at, url,
                http_status, latency_ms, outcome, error, response_prefix)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
             ON CONFLICT (delivery_id, series, attempt_no) DO NOTHING",
        )
        .bind(&job.delivery_id)
        .bind(i64::from(job.series))
        .bind(i64::from(job.attempt_no))
        .bind(record.map_or(now_ms, |r| r.started_at.timestamp_millis()))
        .bind(record.map_or_else(String::new, |r| r.url.clone()))
        .bind(record.and_then(|r| r.status).map(i64::from))
        .bind(record.map_or(0, |r| {
            i64::try_from(r.latency.as_millis()).unwrap_or(i64::MAX)
        }))
        .bind(step.outcome())
        .bind(&error)
        .bind(record.map(|r| r.body_prefix.clone()))
        .execute(&mut *tx)
        .await?;
        let (state, next_at) = match &step {
            Step::Delivered => ("delivered", None),
            Step::Retry(at) => ("pending", Some(at.timestamp_millis())),
            Step::Pause => ("paused", None),
            Step::Dead(_) => ("dead", None),
        };
        sqlx::query(
            "UPDATE deliveries SET state = $2, attempts = attempts + 1, next_attempt_at = $3,
                last_error = $4, updated_at = $5 WHERE id = $1",
        )
        .bind(&job.delivery_id)
        .bind(state)
        .bind(next_at)
        .bind(&error)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        match &step {
            Step::Retry(at) => {
                // Whole seconds, rounded up: apalis stores run_at in seconds, and rounding down
                // would run a retry before its scheduled delay.
                let secs = (at.timestamp_millis() + 999).div_euclid(1000);
                enqueue::push_job(&mut Conn::from(&mut *tx), job.next(), secs).await?;
            }
            Step::Pause => {
                let endpoint: String =
                    sqlx::query_scalar("SELECT endpoint FROM deliveries WHERE id = $1")
                        .bind(&job.delivery_id)
                        .fetch_one(&mut *tx)
                        .await?;
                sqlx::query(
                    "INSERT INTO paused_endpoints (endpoint, paused_at, reason) VALUES ($1, $2, $3)
                     ON CONFLICT (endpoint) DO NOTHING",
                )
                .bind(&endpoint)
                .bind(now_ms)
                .bind("410 Gone")
                .execute(&mut *tx)
                .await?;
                tracing::warn!(endpoint = %endpoint, "Endpoint answered 410 Gone; paused until resumed.");
            }
            Step::Dead(reason) => {
                tracing::warn!(delivery = %job.delivery_id, reason = %reason, "Delivery dead-lettered.");
            }
            Step::Delivered => {}
        }
        tx.commit().await?;
    });
    Ok(())
}

/// The template values of the conversion row, with the status this delivery announces.
fn values_of(row: &Loaded) -> Result<PostbackValues, StoreError> {
    let payout = match (row.payout_minor, &row.network_currency) {
        (Some(minor), Some(code)) => {
            let currency = Currency::parse(code)
                .map_err(|e| StoreError::Corrupt(format!("currency {code}: {e}")))?;
            (
                Money::from_minor(minor, currency).to_decimal().to_string(),
                code.clone(),
            )
        }
        (_, code) => (String::new(), code.clone().unwrap_or_default()),
    };
    let at_ms = row.occurred_at.unwrap_or(row.created_at);
    Ok(PostbackValues {
        click_id: row.click_id.clone(),
        conversion_id: row.conversion_id.clone(),
        transaction_id: row.transaction_id.clone().unwrap_or_default(),
        offer_id: row.offer_key.clone().unwrap_or_default(),
        affiliate_id: row.affiliate_key.clone().unwrap_or_default(),
        event: row.goal.clone().unwrap_or_default(),
        status: row.status.clone(),
        payout: payout.0,
        currency: payout.1,
        subs: [
            row.sub1.clone(),
            row.sub2.clone(),
            row.sub3.clone(),
            row.sub4.clone(),
            row.sub5.clone(),
        ],
        occurred_at: Utc.timestamp_millis_opt(at_ms).single().unwrap_or_default(),
    })
}
