//! The delivery worker: one apalis task per attempt.
//!
//! Contract
//! - Input: a [`DeliveryJob`] (delivery id, series, attempt number) fetched by apalis from
//!   its job table in postgate's own database (apalis-sqlite or apalis-postgres). On
//!   PostgreSQL every gateway runs a worker: apalis hands each job to one of them
//!   (`FOR UPDATE SKIP LOCKED`) and re-queues the jobs of a worker whose heartbeat stopped.
//! - Output: one HTTP request to the affiliate (rendered now, from the conversion row), then
//!   in ONE transaction: the attempt row, the delivery's new state, and either the next
//!   attempt's job (retry), a paused endpoint (410) or a dead letter (schedule exhausted).
//!   The transaction is shared with the other attempts that ended meanwhile ([`Recorder`]);
//!   the handler returns (and apalis acks) only after it committed.
//! - Errors: a database failure returns a plain error, which apalis re-runs at once up to
//!   `INFRA_ATTEMPTS` times; HTTP failures are never handler errors (our schedule owns them).
//! - Side effects: HTTP, rows in `delivery_attempts`, `deliveries`, `paused_endpoints`, `Jobs`.
//! - Time: read from the context's [`Clock`] when an attempt starts and when it ends (the
//!   system clock unless [`DeliveryContext::with_clock`] replaced it); the retry's `run_at`
//!   is computed from those readings only.
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
use super::clock::{Clock, SystemClock};
use super::limiter::KeyedLimiter;
use super::ssrf::AllowList;
use crate::config::OutboundSettings;
use crate::domain::{Currency, Money};
use crate::outbound::enqueue;
use crate::outbound::{
    DeliveryJob, Endpoint, NextStep, OutboundRequest, PostbackValues, QUEUE, RenderError,
    RetrySchedule,
};
use crate::store::{Conn, Db, Pool, StoreError};

/// When the endpoint's concurrency cap is reached, the attempt is put back this much later
/// instead of holding one of the worker's slots while it waits.
const BUSY_ENDPOINT_DELAY_SECS: i64 = 1;

/// How long an attempt's lease on its delivery outlives the longest possible attempt (the
/// total timeout): room for recording the outcome (a pool wait of up to 3 s, then one
/// transaction).
const LEASE_MARGIN: Duration = Duration::from_secs(15);

/// A copy of a job whose delivery another gateway has leased is put back this much later.
const LEASED_DELAY_SECS: i64 = 5;

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
    /// When attempts start and end, and so when retries run.
    clock: Arc<dyn Clock>,
    /// How long an attempt leases its delivery on PostgreSQL (see [`take_lease`]).
    lease: Duration,
    /// Where attempts' outcomes are written, in groups.
    recorder: Recorder,
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
            recorder: Recorder::spawn(pool.clone()),
            pool,
            client,
            endpoints,
            schedule: settings.schedule.clone(),
            limiter: KeyedLimiter::new(settings.per_endpoint_concurrency),
            attempts: KeyedLimiter::new(1),
            clock: Arc::new(SystemClock),
            lease: settings.total_timeout + LEASE_MARGIN,
        })
    }

    /// The same context reading the time from `clock` (tests move it by hand).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }
}

/// A running worker; [`RunningWorker::stop`] lets in-flight attempts finish.
pub struct RunningWorker {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
    prune: tokio::task::JoinHandle<()>,
    health: Arc<WorkerHealth>,
}

impl RunningWorker {
    pub async fn stop(self) {
        self.prune.abort();
        let _ = self.stop.send(());
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "Delivery worker ended abnormally.");
        }
    }

    /// Whether the worker is polling, and how often it was restarted (for `/readyz`).
    pub fn health(&self) -> Arc<WorkerHealth> {
        Arc::clone(&self.health)
    }
}

/// The worker's state as `/readyz` reports it.
#[derive(Debug, Default)]
pub struct WorkerHealth {
    running: std::sync::atomic::AtomicBool,
    restarts: std::sync::atomic::AtomicU64,
}

impl WorkerHealth {
    pub fn running(&self) -> bool {
        self.running.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn restarts(&self) -> u64 {
        self.restarts.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// The longest pause before a failed worker is started again.
const MAX_RESTART_BACKOFF: Duration = Duration::from_secs(30);

/// A worker that ran this long before failing starts its backoff from the beginning.
const HEALTHY_RUN: Duration = Duration::from_secs(60);

/// Starts the worker on `pool` (a writable pool on the gateway's database).
pub fn spawn(pool: Pool, settings: &OutboundSettings) -> Result<RunningWorker, WorkerError> {
    let ctx = Arc::new(DeliveryContext::new(pool.clone(), settings)?);
    let shape = Shape {
        concurrency: settings.concurrency,
        poll: settings.poll_interval,
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let health = Arc::new(WorkerHealth::default());
    let task = tokio::spawn(supervise(
        pool.clone(),
        ctx,
        shape,
        stopped,
        Arc::clone(&health),
    ));
    let prune = tokio::spawn(prune_loop(pool, Duration::from_secs(3600)));
    Ok(RunningWorker {
        stop,
        task,
        prune,
        health,
    })
}

/// How the apalis worker polls.
#[derive(Clone, Copy)]
struct Shape {
    concurrency: usize,
    poll: Duration,
}

/// Runs the apalis worker until `stopped` fires, starting a new one (after a backoff of
/// 1 s doubling to 30 s) whenever it fails. apalis ends a worker for good when a poll of its
/// job table fails — the database was unreachable or locked for longer than the busy
/// timeout — and the accepted conversions' deliveries would otherwise wait for a restart of
/// the whole gateway.
async fn supervise(
    pool: Pool,
    ctx: Arc<DeliveryContext>,
    shape: Shape,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
    health: Arc<WorkerHealth>,
) {
    use std::sync::atomic::Ordering;
    let mut failures = 0u32;
    loop {
        let failure = Arc::new(std::sync::Mutex::new(None::<String>));
        let monitor = monitor(&pool, &ctx, shape, Arc::clone(&failure));
        let started = std::time::Instant::now();
        let mut stop_requested = false;
        health.running.store(true, Ordering::Relaxed);
        let signal = async {
            let _ = (&mut stopped).await;
            stop_requested = true;
            Ok(())
        };
        let ended = monitor.run_with_signal(signal).await;
        health.running.store(false, Ordering::Relaxed);
        if stop_requested {
            match ended {
                Ok(()) => tracing::info!("Delivery worker stopped."),
                Err(e) => tracing::error!(error = %e, "Delivery worker failed while stopping."),
            }
            return;
        }
        if started.elapsed() >= HEALTHY_RUN {
            failures = 0;
        }
        let wait = crate::spool::drain::backoff(failures, MAX_RESTART_BACKOFF);
        failures = failures.saturating_add(1);
        health.restarts.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(crate::telemetry::DELIVERY_WORKER_RESTARTS).increment(1);
        let error = failure
            .lock()
            .ok()
            .and_then(|mut f| f.take())
            .or_else(|| ended.err().map(|e| e.to_string()))
            .unwrap_or_else(|| "the worker ended".to_owned());
        tracing::warn!(
            error = %error,
            wait_ms = wait.as_millis() as u64,
            "Delivery worker failed; starting a new one."
        );
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = &mut stopped => {
                tracing::info!("Delivery worker stopped.");
                return;
            }
        }
    }
}

/// One apalis worker under a fresh name (apalis refuses a name whose row was seen within
/// a heartbeat). A failure is recorded in `failure` and ends the monitor.
fn monitor(
    pool: &Pool,
    ctx: &Arc<DeliveryContext>,
    shape: Shape,
    failure: Arc<std::sync::Mutex<Option<String>>>,
) -> Monitor {
    let Shape { concurrency, poll } = shape;
    // Short: an idle worker also re-polls on its heartbeat (observed: due retries waited for
    // it), and a dead worker's jobs are reaped after a few missed beats.
    let heartbeat = Duration::from_secs(1);
    let batch = concurrency.min(100);
    let name = format!("outbound-{}-{}", std::process::id(), ulid::Ulid::generate());
    let ctx = Arc::clone(ctx);
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
    };
    monitor
        .should_restart(move |_, error| {
            if let Ok(mut f) = failure.lock() {
                *f = Some(error.to_string());
            }
            false
        })
        .shutdown_timeout(Duration::from_secs(20))
}

/// How long finished jobs stay in apalis' table. Our own attempt log is the record; the
/// `Jobs` rows only have to outlive a re-run after a crash.
const KEEP_FINISHED_JOBS_SECS: i64 = 86_400;

/// Finished jobs deleted per statement. Each statement is one short write: on SQLite the
/// group-commit writer waits for the lock meanwhile, and a day of finished jobs deleted in
/// one statement (millions of rows at a few thousand deliveries/s) would hold it for minutes.
const PRUNE_CHUNK: i64 = 1_000;

/// The pause between two chunks, in which the ingest writer takes the lock.
const PRUNE_PAUSE: Duration = Duration::from_millis(50);

/// Deletes finished jobs of our queue now and then. apalis' own `Vacuum` is not used: it runs
/// a full `VACUUM` on the shared file and its age filter compares seconds with text.
async fn prune_loop(pool: Pool, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match prune_finished(&pool, KEEP_FINISHED_JOBS_SECS, PRUNE_CHUNK, PRUNE_PAUSE).await {
            Ok(deleted) if deleted > 0 => {
                tracing::info!(deleted, "Pruned finished delivery jobs.");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(
                error = %crate::store::writer::error_chain(&e),
                "Pruning finished delivery jobs failed; trying again next time."
            ),
        }
    }
}

/// Deletes our queue's jobs that finished more than `keep_secs` ago, `chunk` rows per
/// statement with `pause` between statements; returns how many went.
async fn prune_finished(
    pool: &Pool,
    keep_secs: i64,
    chunk: i64,
    pause: Duration,
) -> Result<u64, StoreError> {
    let mut total = 0;
    loop {
        let deleted = match pool {
            Db::Sqlite(p) => sqlx::query(
                "DELETE FROM Jobs WHERE rowid IN (
                    SELECT rowid FROM Jobs WHERE job_type = $1 AND status IN ('Done', 'Killed')
                        AND done_at < strftime('%s', 'now') - $2
                    LIMIT $3)",
            )
            .bind(QUEUE)
            .bind(keep_secs)
            .bind(chunk)
            .execute(p)
            .await?
            .rows_affected(),
            Db::Postgres(p) => sqlx::query(
                "DELETE FROM apalis.jobs WHERE id IN (
                    SELECT id FROM apalis.jobs WHERE job_type = $1
                        AND status IN ('Done', 'Killed')
                        AND done_at < now() - make_interval(secs => $2)
                    LIMIT $3)",
            )
            .bind(QUEUE)
            .bind(keep_secs as f64)
            .bind(chunk)
            .execute(p)
            .await?
            .rows_affected(),
        };
        total += deleted;
        if deleted < chunk.unsigned_abs() {
            return Ok(total);
        }
        tokio::time::sleep(pause).await;
    }
}

/// The apalis handler: one attempt.
async fn deliver(job: DeliveryJob, ctx: Data<Arc<DeliveryContext>>) -> Result<(), BoxDynError> {
    let send = async |request: &OutboundRequest| ctx.client.send(request).await;
    match attempt(&job, &ctx, send).await {
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
const LOAD: &str =
    "SELECT d.state, d.series, d.attempts, d.series_started_at, d.endpoint, d.status,
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
    /// Attempts recorded so far (every series): the lease checks nobody added one since.
    attempts: i64,
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

/// One attempt of `job`: load, skip or send with `send`, record. `send` is the HTTP client in
/// production and a scripted affiliate in tests; everything else is the same code.
async fn attempt(
    job: &DeliveryJob,
    ctx: &DeliveryContext,
    send: impl AsyncFnOnce(&OutboundRequest) -> AttemptRecord,
) -> Result<(), StoreError> {
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
    let now = ctx.clock.now();
    // A paused or removed endpoint is sent nothing; any other takes a slot of its cap
    // before the lease, so that a busy endpoint leases nothing.
    let sending = ctx.endpoints.get(&endpoint_id).filter(|_| !row.paused);
    let _permit = match sending {
        Some(_) => match ctx.limiter.try_acquire(endpoint_id.clone()) {
            Some(permit) => Some(permit),
            None => return put_back(ctx, job, now, BUSY_ENDPOINT_DELAY_SECS).await,
        },
        None => None,
    };
    // Pure, and before the lease: an error here must not leave the delivery leased.
    let request = match sending {
        Some(endpoint) => {
            Some(endpoint.build_request(&job.delivery_id, &values_of(&row)?, now.timestamp()))
        }
        None => None,
    };
    // Every write below is made under the lease, so a gateway still sending this delivery
    // is neither overtaken nor overwritten.
    if !take_lease(ctx, job, &row).await? {
        tracing::debug!(delivery = %job.delivery_id, attempt = job.attempt_no, "Delivery leased by another gateway; attempt put back.");
        return put_back(ctx, job, now, LEASED_DELAY_SECS).await;
    }
    let result = match request {
        _ if row.paused => park_paused(ctx, job, now).await,
        Some(request) => send_and_finish(ctx, job, &row, now, request, send).await,
        None => {
            let step = Step::Dead(format!("endpoint {endpoint_id} is no longer configured"));
            finish(ctx, job, now, now, None, step).await
        }
    };
    if result.is_err() {
        // Recording failed: free the delivery for this job's re-run instead of making it
        // wait for the lease to expire (best effort; it expires anyway).
        release_lease(ctx, job, &row).await;
    }
    result
}

/// The endpoint answered 410 meanwhile: the delivery waits for an operator's resume.
async fn park_paused(
    ctx: &DeliveryContext,
    job: &DeliveryJob,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    crate::db!(&ctx.pool, p => {
        sqlx::query(
            "UPDATE deliveries SET state = 'paused', next_attempt_at = NULL, updated_at = $2,
                lease_until = NULL
             WHERE id = $1 AND state = 'pending'",
        )
        .bind(&job.delivery_id)
        .bind(now.timestamp_millis())
        .execute(p)
        .await?;
    });
    Ok(())
}

/// Sends the rendered attempt (or dead-letters one that cannot be rendered) and records it.
async fn send_and_finish(
    ctx: &DeliveryContext,
    job: &DeliveryJob,
    row: &Loaded,
    now: DateTime<Utc>,
    request: Result<OutboundRequest, RenderError>,
    send: impl AsyncFnOnce(&OutboundRequest) -> AttemptRecord,
) -> Result<(), StoreError> {
    let record = match request {
        Ok(request) => send(&request).await,
        Err(e) => {
            let step = Step::Dead(format!("cannot render: {e}"));
            return finish(ctx, job, now, now, None, step).await;
        }
    };
    let ended = ctx.clock.now();
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
        endpoint = %row.endpoint,
        attempt = job.attempt_no,
        status = ?record.status,
        step = ?step,
        "Delivery attempt."
    );
    finish(ctx, job, now, ended, Some(record), step).await
}

/// Queues this attempt again `delay_secs` from `now`, under an idempotency key of its own
/// (the current job is acknowledged when this returns). If the attempt is done by then,
/// the copy finds it logged and does nothing.
async fn put_back(
    ctx: &DeliveryContext,
    job: &DeliveryJob,
    now: DateTime<Utc>,
    delay_secs: i64,
) -> Result<(), StoreError> {
    crate::db!(&ctx.pool, p => {
        let mut conn = p.acquire().await?;
        enqueue::push_job_keyed(
            &mut Conn::from(&mut *conn),
            job.clone(),
            now.timestamp() + delay_secs,
            format!("{}:w{}", job.idempotency_key(), now.timestamp_micros()),
        )
        .await?
    });
    Ok(())
}

/// One worker at a time per delivery, across gateways: on PostgreSQL the attempt leases its
/// delivery row for longer than an attempt can take. False if another gateway holds the
/// lease, or recorded an attempt since [`LOAD`] (its `attempts` moved on). A gateway that
/// dies mid-attempt leaves its lease to expire: the re-queued job then sends, at most
/// `total timeout + margin` later. Lease times come from the database's clock, so the
/// gateways' clocks need not agree. On SQLite, one process serves the database and the
/// in-process attempt slot already holds the other copies back.
async fn take_lease(
    ctx: &DeliveryContext,
    job: &DeliveryJob,
    row: &Loaded,
) -> Result<bool, StoreError> {
    let Db::Postgres(pool) = &ctx.pool else {
        return Ok(true);
    };
    let leased = sqlx::query(
        "UPDATE deliveries SET lease_until = CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT) + $2
         WHERE id = $1 AND state = 'pending' AND attempts = $3
           AND (lease_until IS NULL
                OR lease_until <= CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT))",
    )
    .bind(&job.delivery_id)
    .bind(i64::try_from(ctx.lease.as_millis()).unwrap_or(i64::MAX / 2))
    .bind(row.attempts)
    .execute(pool)
    .await?;
    Ok(leased.rows_affected() == 1)
}

/// Frees a lease whose attempt was not recorded (its `attempts` did not move).
async fn release_lease(ctx: &DeliveryContext, job: &DeliveryJob, row: &Loaded) {
    let Db::Postgres(pool) = &ctx.pool else {
        return;
    };
    let released =
        sqlx::query("UPDATE deliveries SET lease_until = NULL WHERE id = $1 AND attempts = $2")
            .bind(&job.delivery_id)
            .bind(row.attempts)
            .execute(pool)
            .await;
    if let Err(e) = released {
        tracing::debug!(delivery = %job.delivery_id, error = %e, "Lease not released; it expires.");
    }
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

/// Records the attempt (which started at `started`) and the delivery's next state (as of
/// `now`) in one transaction, shared with the other attempts that ended meanwhile.
async fn finish(
    ctx: &DeliveryContext,
    job: &DeliveryJob,
    started: DateTime<Utc>,
    now: DateTime<Utc>,
    record: Option<AttemptRecord>,
    step: Step,
) -> Result<(), StoreError> {
    let outcome = step.outcome();
    let latency = record.as_ref().map(|r| r.latency);
    let recorded = match record {
        Some(r) => Outcome {
            error: r.error.or_else(|| {
                r.status
                    .filter(|s| !(200..300).contains(s))
                    .map(|s| format!("HTTP {s}"))
            }),
            url: r.url,
            http_status: r.status.map(i64::from),
            latency_ms: i64::try_from(r.latency.as_millis()).unwrap_or(i64::MAX),
            body_prefix: Some(r.body_prefix),
            ..Outcome::without_request(job, started, now, step)
        },
        None => Outcome::without_request(job, started, now, step),
    };
    ctx.recorder.record(recorded).await?;
    metrics::counter!(crate::telemetry::DELIVERY_ATTEMPTS, "outcome" => outcome).increment(1);
    if let Some(latency) = latency {
        metrics::histogram!(crate::telemetry::DELIVERY_DURATION).record(latency);
    }
    Ok(())
}

/// One attempt's outcome as [`Recorder`] writes it.
struct Outcome {
    job: DeliveryJob,
    started_ms: i64,
    now_ms: i64,
    url: String,
    http_status: Option<i64>,
    latency_ms: i64,
    error: Option<String>,
    body_prefix: Option<Vec<u8>>,
    step: Step,
}

impl Outcome {
    /// An outcome decided without sending (a dead letter's reason is its error).
    fn without_request(
        job: &DeliveryJob,
        started: DateTime<Utc>,
        now: DateTime<Utc>,
        step: Step,
    ) -> Outcome {
        Outcome {
            job: job.clone(),
            started_ms: started.timestamp_millis(),
            now_ms: now.timestamp_millis(),
            url: String::new(),
            http_status: None,
            latency_ms: 0,
            error: match &step {
                Step::Dead(reason) => Some(reason.clone()),
                _ => None,
            },
            body_prefix: None,
            step,
        }
    }
}

/// Outcomes written per transaction, at most.
const RECORD_GROUP: usize = 64;

/// Writes attempt outcomes in groups: one transaction for every outcome that arrived while
/// the previous one committed. On SQLite each transaction takes the one write lock, which
/// apalis' polls and acks and the ingest writer need too; an attempt per transaction made
/// the worker spend most of its time waiting for it (`docs/PERFORMANCE.md`, Deliveries).
/// Each outcome's caller gets its own answer: when a group fails, its outcomes are written
/// again one transaction each.
struct Recorder {
    queue: tokio::sync::mpsc::Sender<Recording>,
}

impl Recorder {
    /// Starts the recording task; it ends when the recorder is dropped.
    fn spawn(pool: Pool) -> Self {
        let (queue, rx) = tokio::sync::mpsc::channel(4 * RECORD_GROUP);
        tokio::spawn(record_loop(pool, rx));
        Recorder { queue }
    }

    /// Returns once `outcome` is committed.
    async fn record(&self, outcome: Outcome) -> Result<(), StoreError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.queue
            .send((outcome, reply))
            .await
            .map_err(|_| StoreError::WriterGone)?;
        answer.await.map_err(|_| StoreError::WriterGone)?
    }
}

/// An outcome and where its answer goes.
type Recording = (
    Outcome,
    tokio::sync::oneshot::Sender<Result<(), StoreError>>,
);

async fn record_loop(pool: Pool, mut rx: tokio::sync::mpsc::Receiver<Recording>) {
    let mut group: Vec<Recording> = Vec::with_capacity(RECORD_GROUP);
    while rx.recv_many(&mut group, RECORD_GROUP).await > 0 {
        let outcomes: Vec<&Outcome> = group.iter().map(|(o, _)| o).collect();
        match write_outcomes(&pool, &outcomes).await {
            Ok(()) => {
                for (_, reply) in group.drain(..) {
                    let _ = reply.send(Ok(()));
                }
            }
            Err(error) if group.len() > 1 => {
                tracing::debug!(error = %crate::store::writer::error_chain(&error), outcomes = group.len(), "Attempt outcomes written one by one after the group failed.");
                for (outcome, reply) in group.drain(..) {
                    let _ = reply.send(write_outcomes(&pool, &[&outcome]).await);
                }
            }
            Err(error) => {
                if let Some((_, reply)) = group.pop() {
                    let _ = reply.send(Err(error));
                }
            }
        }
    }
}

/// Every outcome's attempt row, delivery state and next step, in one transaction: the
/// attempt rows in one statement, the deliveries' states in another, then what retries and
/// pauses need one by one (rare next to deliveries that succeed).
async fn write_outcomes(pool: &Pool, outcomes: &[&Outcome]) -> Result<(), StoreError> {
    crate::db!(pool, pool => {
        let mut tx = pool.begin().await?;
        let mut attempts = sqlx::QueryBuilder::new(
            "INSERT INTO delivery_attempts (delivery_id, series, attempt_no, started_at, url,
                http_status, latency_ms, outcome, error, response_prefix) ",
        );
        attempts.push_values(outcomes, |mut row, o| {
            row.push_bind(o.job.delivery_id.clone())
                .push_bind(i64::from(o.job.series))
                .push_bind(i64::from(o.job.attempt_no))
                .push_bind(o.started_ms)
                .push_bind(o.url.clone())
                .push_bind(o.http_status)
                .push_bind(o.latency_ms)
                .push_bind(o.step.outcome())
                .push_bind(o.error.clone())
                .push_bind(o.body_prefix.clone());
        });
        attempts.push(" ON CONFLICT (delivery_id, series, attempt_no) DO NOTHING");
        attempts.build().execute(&mut *tx).await?;

        // CASTs type the VALUES list for PostgreSQL; SQLite reads them as no-ops.
        let mut states = sqlx::QueryBuilder::new(
            "WITH v (id, state, next_at, last_error, updated_at) AS (VALUES ",
        );
        let mut rows = states.separated(", ");
        for o in outcomes {
            let (state, next_at) = match &o.step {
                Step::Delivered => ("delivered", None),
                Step::Retry(at) => ("pending", Some(at.timestamp_millis())),
                Step::Pause => ("paused", None),
                Step::Dead(_) => ("dead", None),
            };
            rows.push("(CAST(")
                .push_bind_unseparated(o.job.delivery_id.clone())
                .push_unseparated(" AS TEXT), CAST(")
                .push_bind_unseparated(state)
                .push_unseparated(" AS TEXT), CAST(")
                .push_bind_unseparated(next_at)
                .push_unseparated(" AS BIGINT), CAST(")
                .push_bind_unseparated(o.error.clone())
                .push_unseparated(" AS TEXT), CAST(")
                .push_bind_unseparated(o.now_ms)
                .push_unseparated(" AS BIGINT))");
        }
        states.push(
            ") UPDATE deliveries SET state = v.state, attempts = attempts + 1,
                next_attempt_at = v.next_at, last_error = v.last_error,
                updated_at = v.updated_at, lease_until = NULL
             FROM v WHERE deliveries.id = v.id",
        );
        states.build().execute(&mut *tx).await?;

        for o in outcomes {
            let job = &o.job;
            match &o.step {
                Step::Retry(at) => {
                    // Whole seconds, rounded up: apalis stores run_at in seconds, and rounding
                    // down would run a retry before its scheduled delay.
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
                    .bind(o.now_ms)
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

#[cfg(test)]
mod tests;
