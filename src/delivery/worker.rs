//! The delivery worker: one apalis task per attempt.
//!
//! Contract
//! - Input: a [`DeliveryJob`] (delivery id, series, attempt number) fetched by apalis from
//!   its job table in postgate's own database (apalis-sqlite or apalis-postgres), or handed
//!   over by the writer right after the commit that queued it (a first attempt, whose job
//!   is then due only after the grace: [`crate::outbound::handoff`]). On
//!   PostgreSQL every gateway runs a worker: apalis hands each job to one of them
//!   (`FOR UPDATE SKIP LOCKED`) and re-queues the jobs of a worker whose heartbeat stopped.
//! - Output: one HTTP request to the affiliate (rendered now, from the conversion row), then
//!   in ONE transaction: the attempt row, the delivery's new state, and either the next
//!   attempt's job (retry), a paused endpoint (410) or a dead letter (schedule exhausted).
//!   The transaction is shared with the other attempts that ended meanwhile ([`Recorder`];
//!   on SQLite it is the group-commit writer's next batch) and, for a handed-off attempt,
//!   marks its job done; the handler returns (and apalis acks) only after it committed.
//! - Errors: a database failure returns a plain error, which apalis re-runs at once up to
//!   `INFRA_ATTEMPTS` times (a handed-off attempt's job runs when it comes due); HTTP
//!   failures are never handler errors (our schedule owns them).
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
use crate::store::writer::WriterHandle;
use crate::store::{Builder, Conn, Db, Pool, StoreError};

/// When the endpoint's concurrency cap is reached, the attempt is put back this much later
/// instead of holding one of the worker's slots while it waits.
const BUSY_ENDPOINT_DELAY_SECS: i64 = 1;

/// How long an attempt's lease on its delivery outlives the longest possible attempt (the
/// total timeout): room for recording the outcome (a pool wait of up to 3 s, then one
/// transaction).
const LEASE_MARGIN: Duration = Duration::from_secs(15);

/// A copy of a job whose delivery another gateway has leased is put back this much later.
const LEASED_DELAY_SECS: i64 = 5;

/// A queued copy of an attempt this process has in flight looks again this much later.
const IN_FLIGHT_DELAY_SECS: i64 = 5;

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
    /// Where attempts' rows are read, in groups.
    loader: Loader,
    /// `outbound.concurrency`: attempts in flight in this process, whether apalis fetched
    /// them or the writer handed them over.
    slots: Arc<tokio::sync::Semaphore>,
    /// Counts each job apalis hands this process's worker, each slot one of them takes and
    /// each of their attempts that ends: the watchdog's sign of life (see [`stalled`]).
    progress: std::sync::atomic::AtomicU64,
}

impl DeliveryContext {
    /// The context of a worker; with a `writer`, its outcomes on SQLite are committed by it.
    fn new(
        pool: Pool,
        settings: &OutboundSettings,
        writer: Option<WriterHandle>,
    ) -> Result<Self, WorkerError> {
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
            recorder: Recorder::spawn(pool.clone(), writer),
            loader: Loader::spawn(pool.clone()),
            pool,
            client,
            endpoints,
            schedule: settings.schedule.clone(),
            limiter: KeyedLimiter::new(settings.per_endpoint_concurrency),
            attempts: KeyedLimiter::new(1),
            clock: Arc::new(SystemClock),
            lease: settings.total_timeout + LEASE_MARGIN,
            slots: Arc::new(tokio::sync::Semaphore::new(settings.concurrency)),
            progress: std::sync::atomic::AtomicU64::new(0),
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
    handoffs: Option<(
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<()>,
    )>,
    health: Arc<WorkerHealth>,
}

impl RunningWorker {
    pub async fn stop(self) {
        self.prune.abort();
        let _ = self.stop.send(());
        if let Some((stop, task)) = self.handoffs {
            let _ = stop.send(());
            if let Err(e) = task.await {
                tracing::error!(error = %e, "Handoff dispatcher ended abnormally.");
            }
        }
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

/// Starts the worker on `pool` (a writable pool on the gateway's database); with `handoffs`,
/// it also attempts the first attempts the writer hands over (see
/// [`crate::outbound::handoff`]).
pub fn spawn(
    pool: Pool,
    settings: &OutboundSettings,
    handoffs: Option<tokio::sync::mpsc::Receiver<DeliveryJob>>,
    writer: Option<WriterHandle>,
) -> Result<RunningWorker, WorkerError> {
    let ctx = Arc::new(DeliveryContext::new(pool.clone(), settings, writer)?);
    let handoffs = handoffs.map(|rx| {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(dispatch_handoffs(Arc::clone(&ctx), rx, stopped));
        (stop, task)
    });
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
        handoffs,
        health,
    })
}

/// How long a stopping worker waits for its handed-off attempts in flight, like apalis'
/// shutdown timeout for its own.
const HANDOFF_SHUTDOWN: Duration = Duration::from_secs(20);

/// Attempts each first attempt the writer hands over, in a slot of `outbound.concurrency`
/// shared with apalis' jobs; takes the one after only once a slot is free, so a busy worker
/// fills the queue and the writer stops handing over (those jobs run due at once, through
/// apalis). On stop, takes no more (the rest run when their queued jobs come due) and waits
/// for those in flight.
async fn dispatch_handoffs(
    ctx: Arc<DeliveryContext>,
    mut rx: tokio::sync::mpsc::Receiver<DeliveryJob>,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
) {
    let mut running = tokio::task::JoinSet::new();
    loop {
        let job = tokio::select! {
            job = rx.recv() => job,
            _ = &mut stopped => break,
        };
        let Some(job) = job else { break };
        let slot = tokio::select! {
            slot = Arc::clone(&ctx.slots).acquire_owned() => slot,
            _ = &mut stopped => break,
        };
        let Ok(slot) = slot else { break };
        while running.try_join_next().is_some() {}
        let ctx = Arc::clone(&ctx);
        running.spawn(async move {
            let _slot = slot;
            let send = async |request: &OutboundRequest| ctx.client.send(request).await;
            if let Err(e) = attempt(&job, &ctx, Origin::Handoff, send).await {
                tracing::warn!(
                    error = %crate::store::writer::error_chain(&e),
                    delivery = %job.delivery_id,
                    "Handed-off attempt could not be recorded; its queued job runs it when due."
                );
            }
        });
    }
    rx.close();
    let drained = tokio::time::timeout(HANDOFF_SHUTDOWN, async {
        while running.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            in_flight = running.len(),
            "Handed-off attempts still in flight at shutdown; their queued jobs run them again."
        );
    }
}

/// How an attempt reached the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// apalis fetched its job, and acknowledges it when the handler returns.
    Queue,
    /// The writer handed it over; its job is still pending, and is marked done with the
    /// outcome.
    Handoff,
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
    // A busy worker counts progress at least once per attempt's length (its total timeout
    // plus recording): taking a slot and ending an attempt both count. Twice the lease leaves
    // room for a slot that waited on another slow attempt first.
    let stall_window = (ctx.lease * 2).max(STALL_CHECK);
    loop {
        let failure = Arc::new(std::sync::Mutex::new(None::<String>));
        let name = format!("outbound-{}-{}", std::process::id(), ulid::Ulid::generate());
        let monitor = monitor(&pool, &ctx, shape, name.clone(), Arc::clone(&failure));
        let started = std::time::Instant::now();
        let mut stop_requested = false;
        let mut stall = None::<String>;
        health.running.store(true, Ordering::Relaxed);
        // The worker stops gracefully (attempts in flight finish and are recorded, within the
        // monitor's shutdown timeout) when the gateway stops, or when the watchdog finds it
        // stalled: a worker that stops fetching without failing never returns by itself, and
        // every queued delivery would wait for a restart of the gateway.
        let signal = async {
            tokio::select! {
                _ = &mut stopped => stop_requested = true,
                overdue = stalled(&pool, &ctx, stall_window) => {
                    stall = Some(format!(
                        "no job fetched or attempt ended in {} s while {overdue} jobs were \
                         overdue by more than {STALL_OVERDUE_SECS} s; its last heartbeat: {}",
                        stall_window.as_secs(),
                        last_heartbeat(&pool, &name).await,
                    ));
                }
            }
            Ok(())
        };
        let ended = monitor
            .run_with_signal(signal)
            .await
            .map_err(|e| e.to_string());
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
            .or(stall)
            .or_else(|| ended.err())
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

/// How often the watchdog looks at a running worker, at least (see [`stalled`]).
const STALL_CHECK: Duration = Duration::from_secs(15);

/// How long past due a pending job must be for the watchdog to count it. A live worker polls
/// every `poll_interval_ms` and on each heartbeat, so a due job waits well under a second
/// unless the worker is saturated, and a saturated worker is fetching.
const STALL_OVERDUE_SECS: i64 = 30;

/// Returns (with how many jobs were overdue) once a whole `every` passes in which apalis
/// handed this worker no job and none of its attempts ended, while jobs of our queue were
/// overdue by more than [`STALL_OVERDUE_SECS`]: the worker is alive to apalis but not
/// working. (Handed-off attempts do not count: they go on while apalis is stuck.) A database
/// that cannot answer is not a stall: the worker's own polls fail and restart it.
async fn stalled(pool: &Pool, ctx: &DeliveryContext, every: Duration) -> u64 {
    use std::sync::atomic::Ordering;
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seen = ctx.progress.load(Ordering::Relaxed);
    loop {
        tick.tick().await;
        let now = ctx.progress.load(Ordering::Relaxed);
        if now != seen {
            seen = now;
            continue;
        }
        match overdue_jobs(pool, STALL_OVERDUE_SECS).await {
            Ok(0) => {}
            Ok(overdue) => return overdue,
            Err(e) => tracing::debug!(
                error = %crate::store::writer::error_chain(&e),
                "Watchdog could not count overdue jobs."
            ),
        }
    }
}

/// Pending jobs of our queue due more than `secs` ago (apalis keeps `run_at` in seconds on
/// SQLite, as a timestamp on PostgreSQL).
async fn overdue_jobs(pool: &Pool, secs: i64) -> Result<u64, StoreError> {
    let count: i64 = match pool {
        Db::Sqlite(p) => {
            sqlx::query_scalar(
                "SELECT COUNT(*) FROM Jobs WHERE job_type = $1 AND status = 'Pending'
                    AND run_at < strftime('%s', 'now') - $2",
            )
            .bind(QUEUE)
            .bind(secs)
            .fetch_one(p)
            .await?
        }
        Db::Postgres(p) => {
            sqlx::query_scalar(
                "SELECT COUNT(*) FROM apalis.jobs WHERE job_type = $1 AND status = 'Pending'
                    AND run_at < now() - make_interval(secs => $2)",
            )
            .bind(QUEUE)
            .bind(secs as f64)
            .fetch_one(p)
            .await?
        }
    };
    Ok(count.unsigned_abs())
}

/// How long ago the worker `name` last told apalis it was alive, as a phrase for the log (a
/// stalled worker that also stopped beating is stuck inside apalis, not in an attempt).
async fn last_heartbeat(pool: &Pool, name: &str) -> String {
    let age: Result<Option<i64>, sqlx::Error> = match pool {
        Db::Sqlite(p) => {
            sqlx::query_scalar(
                "SELECT strftime('%s', 'now') - last_seen FROM Workers WHERE id = $1",
            )
            .bind(name)
            .fetch_optional(p)
            .await
        }
        Db::Postgres(p) => {
            sqlx::query_scalar(
                "SELECT CAST(EXTRACT(EPOCH FROM now() - last_seen) AS BIGINT)
                 FROM apalis.workers WHERE id = $1",
            )
            .bind(name)
            .fetch_optional(p)
            .await
        }
    };
    match age {
        Ok(Some(secs)) => format!("{secs} s ago"),
        Ok(None) => "never".to_owned(),
        Err(e) => format!("unknown ({e})"),
    }
}

/// One apalis worker named `name` (fresh each time: apalis refuses a name whose row was
/// seen within a heartbeat). A failure is recorded in `failure` and ends the monitor.
fn monitor(
    pool: &Pool,
    ctx: &Arc<DeliveryContext>,
    shape: Shape,
    name: String,
    failure: Arc<std::sync::Mutex<Option<String>>>,
) -> Monitor {
    let Shape { concurrency, poll } = shape;
    // Short: a dead worker's jobs are reaped after a few missed beats. (With apalis' own
    // interval strategy an idle worker often re-polled only on its heartbeat — due retries
    // waited for it — the first sign of the lost wake-up that [`Ticker`] fixes.)
    let heartbeat = Duration::from_secs(1);
    let batch = concurrency.min(100);
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
                .backend(storage.poll_with_strategy(Ticker::new(poll)))
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
                .backend(storage.poll_with_strategy(Ticker::new(poll)))
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

/// When the worker polls its job table: every `period`, like apalis' `poll_with_interval`,
/// but with the next tick always armed. apalis 1.0's `IntervalStrategy` replaces a fired
/// timer without polling the new one, so nothing will wake the worker from it; when the
/// worker's heartbeat timer also fired during that fetch (its wake-up spent on a poll that
/// does not look at it), the worker is never woken again: no heartbeat, no fetch, no error.
/// Observed in CI on PostgreSQL (`docs/RELIABILITY.md`). Here a fired tick re-arms and polls
/// its timer, so the worker always has a wake-up coming.
struct Ticker {
    period: Duration,
    timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl Ticker {
    fn new(period: Duration) -> Self {
        Ticker {
            period,
            timer: None,
        }
    }
}

impl PollStrategy for Ticker {
    fn poll_drive(
        &mut self,
        cx: &mut std::task::Context<'_>,
        _: &PollSnapshot,
    ) -> std::task::Poll<Option<()>> {
        use std::future::Future as _;
        use std::task::Poll;
        let period = self.period;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(period)));
        if timer.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        timer.as_mut().reset(tokio::time::Instant::now() + period);
        // Registers the waker for the new deadline (pending: it is in the future), whatever
        // the timer kept from the one that fired.
        let _ = timer.as_mut().poll(cx);
        Poll::Ready(Some(()))
    }
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
    use std::sync::atomic::Ordering;
    ctx.progress.fetch_add(1, Ordering::Relaxed);
    let _slot = Arc::clone(&ctx.slots).acquire_owned().await?;
    ctx.progress.fetch_add(1, Ordering::Relaxed);
    let send = async |request: &OutboundRequest| ctx.client.send(request).await;
    let attempted = attempt(&job, &ctx, Origin::Queue, send).await;
    ctx.progress.fetch_add(1, Ordering::Relaxed);
    match attempted {
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

/// The delivery and conversion columns each attempt of a group needs (the jobs' list `j`,
/// `WITH j (id, series, attempt_no) AS (VALUES …)`, comes first).
const LOAD: &str = "
    SELECT j.id AS job_delivery, j.series AS job_series, j.attempt_no AS job_attempt,
        d.state, d.series, d.attempts, d.series_started_at, d.endpoint, d.status,
        d.conversion_id, c.click_id, c.transaction_id, c.goal, c.payout_minor,
        c.network_currency, c.occurred_at, c.created_at, o.key AS offer_key,
        a.key AS affiliate_key, k.sub1, k.sub2, k.sub3, k.sub4, k.sub5,
        EXISTS (SELECT 1 FROM delivery_attempts t WHERE t.delivery_id = d.id
                AND t.series = j.series AND t.attempt_no = j.attempt_no) AS done,
        EXISTS (SELECT 1 FROM paused_endpoints p WHERE p.endpoint = d.endpoint) AS paused
    FROM j
    JOIN deliveries d ON d.id = j.id
    JOIN conversions c ON c.id = d.conversion_id
    LEFT JOIN offers o ON o.id = c.offer_id
    LEFT JOIN affiliates a ON a.id = c.affiliate_id
    LEFT JOIN clicks k ON k.click_id = c.click_id";

/// One row of [`LOAD`]: which job it answers, and the columns.
#[derive(sqlx::FromRow)]
struct LoadedFor {
    job_delivery: String,
    job_series: i64,
    job_attempt: i64,
    #[sqlx(flatten)]
    row: Loaded,
}

/// What [`LOAD`] reads for one attempt.
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
    origin: Origin,
    send: impl AsyncFnOnce(&OutboundRequest) -> AttemptRecord,
) -> Result<(), StoreError> {
    // Before reading the row: a copy that started after this one finished must see its
    // attempt logged.
    let Some(_attempt) = ctx.attempts.try_acquire(job.idempotency_key()) else {
        // The other copy sends it and records the outcome. A handed-off copy is done here:
        // the copy in flight came from apalis, which re-runs it if recording fails. A job
        // apalis fetched is acknowledged when this returns, so it leaves a copy to look
        // again later: if the copy in flight was handed off and fails to record, nothing
        // else would send the attempt (its own job is this one).
        tracing::debug!(delivery = %job.delivery_id, attempt = job.attempt_no, "Attempt already in flight.");
        return match origin {
            Origin::Handoff => Ok(()),
            Origin::Queue => put_back(ctx, job, ctx.clock.now(), IN_FLIGHT_DELAY_SECS).await,
        };
    };
    let row = ctx.loader.load(job.clone()).await?;
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
        Some(request) => send_and_finish(ctx, job, origin, &row, now, request, send).await,
        None => {
            let step = Step::Dead(format!("endpoint {endpoint_id} is no longer configured"));
            finish(ctx, job, origin, now, now, None, step).await
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
    origin: Origin,
    row: &Loaded,
    now: DateTime<Utc>,
    request: Result<OutboundRequest, RenderError>,
    send: impl AsyncFnOnce(&OutboundRequest) -> AttemptRecord,
) -> Result<(), StoreError> {
    let record = match request {
        Ok(request) => send(&request).await,
        Err(e) => {
            let step = Step::Dead(format!("cannot render: {e}"));
            return finish(ctx, job, origin, now, now, None, step).await;
        }
    };
    let ended = ctx.clock.now();
    let series_origin = Utc
        .timestamp_millis_opt(row.series_started_at)
        .single()
        .unwrap_or(ended);
    let step = match ctx.schedule.plan(
        series_origin,
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
    finish(ctx, job, origin, now, ended, Some(record), step).await
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
    origin: Origin,
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
            ..Outcome::without_request(job, origin, started, now, step)
        },
        None => Outcome::without_request(job, origin, started, now, step),
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
    origin: Origin,
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
    /// Says what a recorded outcome changed that an operator should know about.
    fn log(&self) {
        match &self.step {
            Step::Pause => {
                tracing::warn!(delivery = %self.job.delivery_id, "The delivery's endpoint answered 410 Gone; paused until resumed.")
            }
            Step::Dead(reason) => {
                tracing::warn!(delivery = %self.job.delivery_id, reason = %reason, "Delivery dead-lettered.")
            }
            Step::Delivered | Step::Retry(_) => {}
        }
    }

    /// An outcome decided without sending (a dead letter's reason is its error).
    fn without_request(
        job: &DeliveryJob,
        origin: Origin,
        started: DateTime<Utc>,
        now: DateTime<Utc>,
        step: Step,
    ) -> Outcome {
        Outcome {
            job: job.clone(),
            origin,
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

/// Outcomes written per transaction, at most (10 parameters each in the attempts' insert:
/// far below SQLite's 32 766 and PostgreSQL's 65 535). 64 capped deliveries at ~6k/s while
/// postbacks came in: a group waits for one of the writer's commits, 10 ms under that load.
const RECORD_GROUP: usize = 512;

/// Writes attempt outcomes in groups: one transaction for every outcome that arrived while
/// the previous one committed. On SQLite the group goes to the gateway's writer, which
/// commits it with its next batch: SQLite has one write lock, and a transaction of our own
/// waited for it behind the ingest writer's batches (busy-handler sleeps of milliseconds)
/// and paid an fsync of its own (`docs/PERFORMANCE.md`, Deliveries). On PostgreSQL, or
/// without a writer (tests), it commits on a connection of its own.
/// Each outcome's caller gets its own answer: when a group fails, its outcomes are written
/// again one transaction each.
struct Recorder {
    queue: tokio::sync::mpsc::Sender<Recording>,
}

impl Recorder {
    /// Starts the recording task; it ends when the recorder is dropped.
    fn spawn(pool: Pool, writer: Option<WriterHandle>) -> Self {
        let (queue, rx) = tokio::sync::mpsc::channel(4 * RECORD_GROUP);
        let sink = match (writer, &pool) {
            (Some(writer), Db::Sqlite(_)) => Sink::Writer(writer),
            _ => Sink::Own(Held { pool, conn: None }),
        };
        tokio::spawn(record_loop(sink, rx));
        Recorder { queue }
    }

    /// Returns once `outcome` is committed.
    async fn record(&self, outcome: Outcome) -> Result<(), StoreError> {
        ask(&self.queue, Arc::new(outcome)).await
    }
}

/// Hands `item` to a grouping task ([`Recorder`], [`Loader`]) and waits for its own answer.
async fn ask<T, R>(
    queue: &tokio::sync::mpsc::Sender<(T, tokio::sync::oneshot::Sender<Result<R, StoreError>>)>,
    item: T,
) -> Result<R, StoreError> {
    let (reply, answer) = tokio::sync::oneshot::channel();
    queue
        .send((item, reply))
        .await
        .map_err(|_| StoreError::WriterGone)?;
    answer.await.map_err(|_| StoreError::WriterGone)?
}

/// An outcome and where its answer goes.
type Recording = (
    Arc<Outcome>,
    tokio::sync::oneshot::Sender<Result<(), StoreError>>,
);

/// Where the recorder commits.
enum Sink {
    /// The gateway's writer (SQLite).
    Writer(WriterHandle),
    /// A connection of the recorder's own.
    Own(Held),
}

impl Sink {
    async fn write(&mut self, outcomes: &[Arc<Outcome>]) -> Result<(), StoreError> {
        match self {
            Sink::Writer(writer) => {
                let owned = outcomes.to_vec();
                writer
                    .write(Box::new(move |qb| {
                        let refs: Vec<&Outcome> = owned.iter().map(|o| &**o).collect();
                        push_outcomes(qb, &refs);
                    }))
                    .await
                    .map_err(|_| StoreError::NotCommitted)
            }
            Sink::Own(held) => {
                let refs: Vec<&Outcome> = outcomes.iter().map(|o| &**o).collect();
                held.write(&refs).await
            }
        }
    }
}

/// A pool connection kept by the loader or the recorder.
type HeldConn =
    Db<sqlx::pool::PoolConnection<sqlx::Sqlite>, sqlx::pool::PoolConnection<sqlx::Postgres>>;

/// A connection of the loader's or the recorder's own, taken from the delivery pool once and
/// kept: in the pool each group queued behind the other users and waited for a turn (a
/// recorder group commit of ~35 outcomes took 6 ms, most of it waiting). Dropped after a
/// failure, so a broken connection is replaced by the next group.
struct Held {
    pool: Pool,
    conn: Option<HeldConn>,
}

impl Held {
    async fn conn(&mut self) -> Result<&mut HeldConn, StoreError> {
        let conn = match self.conn.take() {
            Some(conn) => conn,
            None => match &self.pool {
                Db::Sqlite(p) => Db::Sqlite(p.acquire().await?),
                Db::Postgres(p) => Db::Postgres(p.acquire().await?),
            },
        };
        Ok(self.conn.insert(conn))
    }

    /// Runs `work` on the held connection; drops it if that failed.
    async fn run<T>(
        &mut self,
        work: impl AsyncFnOnce(&mut HeldConn) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let done = match self.conn().await {
            Ok(conn) => work(conn).await,
            Err(e) => Err(e),
        };
        if done.is_err() {
            self.conn = None;
        }
        done
    }

    /// Writes `outcomes` on the held connection.
    async fn write(&mut self, outcomes: &[&Outcome]) -> Result<(), StoreError> {
        self.run(async |conn| write_outcomes(conn, outcomes).await)
            .await
    }
}

/// Rows read per statement, at most.
const LOAD_GROUP: usize = 64;

/// Reads attempts' rows in groups: one statement for every attempt that asked while the
/// previous one ran, on a connection of its own. One statement per attempt made each wait
/// for one of the pool's few connections, and each read paid a transaction's setup (on
/// SQLite a hop to the connection's thread and a check of the WAL): 5 ms per attempt with
/// 128 in flight.
struct Loader {
    queue: tokio::sync::mpsc::Sender<Loading>,
}

/// A job and where its row goes (`None`: no such delivery).
type Loading = (
    DeliveryJob,
    tokio::sync::oneshot::Sender<Result<Option<Loaded>, StoreError>>,
);

impl Loader {
    /// Starts the loading task; it ends when the loader is dropped.
    fn spawn(pool: Pool) -> Self {
        let (queue, rx) = tokio::sync::mpsc::channel(4 * LOAD_GROUP);
        tokio::spawn(load_loop(pool, rx));
        Loader { queue }
    }

    /// The row `job` needs, read in a group with the other attempts that asked meanwhile.
    async fn load(&self, job: DeliveryJob) -> Result<Option<Loaded>, StoreError> {
        ask(&self.queue, job).await
    }
}

async fn load_loop(pool: Pool, mut rx: tokio::sync::mpsc::Receiver<Loading>) {
    let mut held = Held { pool, conn: None };
    let mut group: Vec<Loading> = Vec::with_capacity(LOAD_GROUP);
    while rx.recv_many(&mut group, LOAD_GROUP).await > 0 {
        let jobs: Vec<&DeliveryJob> = group.iter().map(|(j, _)| j).collect();
        match held.run(async |conn| load_rows(conn, &jobs).await).await {
            Ok(mut rows) => {
                for (job, reply) in group.drain(..) {
                    let _ = reply.send(Ok(rows.remove(&row_key(&job))));
                }
            }
            // Each caller gets its own answer: read them one by one.
            Err(error) => {
                tracing::debug!(error = %crate::store::writer::error_chain(&error), jobs = group.len(), "Attempt rows read one by one after the group failed.");
                for (job, reply) in group.drain(..) {
                    let one = held
                        .run(async |conn| load_rows(conn, &[&job]).await)
                        .await
                        .map(|mut rows| rows.remove(&row_key(&job)));
                    let _ = reply.send(one);
                }
            }
        }
    }
}

/// Which job a row of [`LOAD`] answers: (delivery, series, attempt).
type RowKey = (String, i64, i64);

fn row_key(job: &DeliveryJob) -> RowKey {
    (
        job.delivery_id.clone(),
        i64::from(job.series),
        i64::from(job.attempt_no),
    )
}

/// The rows of `jobs`, by [`row_key`].
async fn load_rows(
    conn: &mut HeldConn,
    jobs: &[&DeliveryJob],
) -> Result<HashMap<RowKey, Loaded>, StoreError> {
    crate::db!(conn, conn => {
        // CASTs type the VALUES list for PostgreSQL; SQLite reads them as no-ops.
        let mut qb = sqlx::QueryBuilder::new("WITH j (id, series, attempt_no) AS (VALUES ");
        let mut list = qb.separated(", ");
        for job in jobs {
            list.push("(CAST(")
                .push_bind_unseparated(job.delivery_id.clone())
                .push_unseparated(" AS TEXT), CAST(")
                .push_bind_unseparated(i64::from(job.series))
                .push_unseparated(" AS BIGINT), CAST(")
                .push_bind_unseparated(i64::from(job.attempt_no))
                .push_unseparated(" AS BIGINT))");
        }
        qb.push(")").push(LOAD);
        let rows: Vec<LoadedFor> = qb.build_query_as().fetch_all(&mut **conn).await?;
        Ok(rows
            .into_iter()
            .map(|r| ((r.job_delivery, r.job_series, r.job_attempt), r.row))
            .collect())
    })
}

async fn record_loop(mut sink: Sink, mut rx: tokio::sync::mpsc::Receiver<Recording>) {
    let mut group: Vec<Recording> = Vec::with_capacity(RECORD_GROUP);
    while rx.recv_many(&mut group, RECORD_GROUP).await > 0 {
        let outcomes: Vec<Arc<Outcome>> = group.iter().map(|(o, _)| Arc::clone(o)).collect();
        match sink.write(&outcomes).await {
            Ok(()) => {
                for (outcome, reply) in group.drain(..) {
                    outcome.log();
                    let _ = reply.send(Ok(()));
                }
            }
            Err(error) if group.len() > 1 => {
                tracing::debug!(error = %crate::store::writer::error_chain(&error), outcomes = group.len(), "Attempt outcomes written one by one after the group failed.");
                for (outcome, reply) in group.drain(..) {
                    let written = sink.write(std::slice::from_ref(&outcome)).await;
                    if written.is_ok() {
                        outcome.log();
                    }
                    let _ = reply.send(written);
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

/// Every outcome's attempt row, delivery state and next step, in one transaction.
async fn write_outcomes(conn: &mut HeldConn, outcomes: &[&Outcome]) -> Result<(), StoreError> {
    use sqlx::Connection as _;
    match conn {
        Db::Sqlite(conn) => {
            crate::store::sqlite::commit_statements(conn, |qb| push_outcomes(qb, outcomes)).await?;
        }
        Db::Postgres(conn) => {
            let mut tx = conn.begin().await?;
            for push in OUTCOME_STATEMENTS {
                let mut qb: Builder = Db::Postgres(sqlx::QueryBuilder::new(""));
                if push(&mut qb, outcomes) {
                    Conn::from(&mut *tx).execute(qb).await?;
                }
            }
            tx.commit().await?;
        }
    }
    Ok(())
}

/// One statement of an outcome group: appends it to the builder (no terminator) and says
/// whether there was anything to write.
type PushStatement = fn(&mut Builder, &[&Outcome]) -> bool;

/// The statements that record a group of outcomes, in order.
const OUTCOME_STATEMENTS: [PushStatement; 5] = [
    push_attempt_rows,
    push_states,
    push_handed_off_done,
    push_retries,
    push_pauses,
];

/// Appends every statement recording `outcomes` to a SQLite multi-statement query, each
/// terminated; the caller wraps them in a transaction.
fn push_outcomes(qb: &mut Builder, outcomes: &[&Outcome]) {
    for push in OUTCOME_STATEMENTS {
        if push(qb, outcomes)
            && let Db::Sqlite(q) = qb
        {
            q.push(";\n");
        }
    }
}

/// The attempt rows, one multi-row insert.
fn push_attempt_rows(qb: &mut Builder, outcomes: &[&Outcome]) -> bool {
    crate::db!(qb, qb => {
        qb.push(
            "INSERT INTO delivery_attempts (delivery_id, series, attempt_no, started_at, url,
                http_status, latency_ms, outcome, error, response_prefix) ",
        );
        qb.push_values(outcomes, |mut row, o| {
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
        qb.push(" ON CONFLICT (delivery_id, series, attempt_no) DO NOTHING");
    });
    true
}

/// The deliveries' new states, one `UPDATE … FROM (VALUES …)`.
fn push_states(qb: &mut Builder, outcomes: &[&Outcome]) -> bool {
    crate::db!(qb, qb => {
        // CASTs type the VALUES list for PostgreSQL; SQLite reads them as no-ops.
        qb.push("WITH v (id, state, next_at, last_error, updated_at) AS (VALUES ");
        let mut rows = qb.separated(", ");
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
        qb.push(
            ") UPDATE deliveries SET state = v.state, attempts = attempts + 1,
                next_attempt_at = v.next_at, last_error = v.last_error,
                updated_at = v.updated_at, lease_until = NULL
             FROM v WHERE deliveries.id = v.id",
        );
    });
    true
}

/// Marks the queued jobs of handed-off attempts done, as apalis marks those it ran, so it
/// does not run them when they come due. Only pending ones: a job apalis already fetched
/// (the attempt outlived the grace) is acknowledged by apalis.
fn push_handed_off_done(qb: &mut Builder, outcomes: &[&Outcome]) -> bool {
    let keys: Vec<String> = outcomes
        .iter()
        .filter(|o| o.origin == Origin::Handoff)
        .map(|o| o.job.idempotency_key())
        .collect();
    if keys.is_empty() {
        return false;
    }
    match qb {
        Db::Sqlite(qb) => {
            qb.push(
                "UPDATE Jobs SET status = 'Done', done_at = strftime('%s', 'now'),
                    last_result = '{\"Ok\":\"handed off\"}'
                 WHERE job_type = ",
            );
            qb.push_bind(QUEUE);
            qb.push(" AND status = 'Pending' AND idempotency_key IN (");
            let mut list = qb.separated(", ");
            for key in keys {
                list.push_bind(key);
            }
            qb.push(")");
        }
        Db::Postgres(qb) => {
            qb.push(
                "UPDATE apalis.jobs SET status = 'Done', done_at = now(),
                    last_result = '{\"Ok\":\"handed off\"}'::jsonb
                 WHERE job_type = ",
            );
            qb.push_bind(QUEUE);
            qb.push(" AND status = 'Pending' AND idempotency_key = ANY(");
            qb.push_bind(keys);
            qb.push(")");
        }
    }
    true
}

/// The next attempt's job of each retry, due at its time: whole seconds, rounded up (apalis
/// stores `run_at` in seconds, and rounding down would run a retry before its delay).
fn push_retries(qb: &mut Builder, outcomes: &[&Outcome]) -> bool {
    let jobs: Vec<(DeliveryJob, i64, String)> = outcomes
        .iter()
        .filter_map(|o| match &o.step {
            Step::Retry(at) => {
                let next = o.job.next();
                let key = next.idempotency_key();
                Some((next, (at.timestamp_millis() + 999).div_euclid(1000), key))
            }
            _ => None,
        })
        .collect();
    if jobs.is_empty() {
        return false;
    }
    enqueue::push_keyed(qb, &jobs, crate::store::Guard::ParentExists);
    true
}

/// The endpoints that answered 410, paused until an operator resumes them.
fn push_pauses(qb: &mut Builder, outcomes: &[&Outcome]) -> bool {
    let paused: Vec<&&Outcome> = outcomes
        .iter()
        .filter(|o| matches!(o.step, Step::Pause))
        .collect();
    if paused.is_empty() {
        return false;
    }
    crate::db!(qb, qb => {
        qb.push("WITH v (id, at) AS (VALUES ");
        let mut rows = qb.separated(", ");
        for o in paused {
            rows.push("(CAST(")
                .push_bind_unseparated(o.job.delivery_id.clone())
                .push_unseparated(" AS TEXT), CAST(")
                .push_bind_unseparated(o.now_ms)
                .push_unseparated(" AS BIGINT))");
        }
        qb.push(
            ") INSERT INTO paused_endpoints (endpoint, paused_at, reason)
             SELECT d.endpoint, MIN(v.at), '410 Gone' FROM v JOIN deliveries d ON d.id = v.id
             GROUP BY d.endpoint
             ON CONFLICT (endpoint) DO NOTHING",
        );
    });
    true
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
