//! The group-commit writer: on SQLite one task owns the database's only write connection;
//! on PostgreSQL a few tasks (`[writer] connections`) take batches from the same queue.
//!
//! A durable acknowledgement costs an fsync, and a disk manages a few thousand per second;
//! one transaction per request would cap postgate there. Instead, handlers do the expensive,
//! parallel work (parse, verify, evaluate) on their own tasks and send a work item here. The
//! writer takes whatever is waiting (up to `max_batch`), applies it all in one transaction,
//! commits once — one fsync — and only then answers every waiting handler. While it commits,
//! the next batch queues up, so batches grow with load and latency stays flat.
//!
//! If a batch fails, its items are retried one transaction each, so one bad item never
//! takes its neighbours down with it — unless the database is unreachable: then the whole
//! batch fails at once and its requests go to the spool.
//!
//! Clicks ride along without a reply: the redirect is answered before its row is written.
//! The worst case loss on a crash is the clicks waiting in the channel plus one batch; a
//! conversion on a lost click is still attributed, because the click ID carries offer,
//! affiliate and click time.

use std::sync::Arc;

use chrono::Utc;
use sqlx::{Connection, PgPool, QueryBuilder, Row, SqliteConnection};
use tokio::sync::{Mutex, mpsc, oneshot};

use super::{Builder, Conn, Db, Guard, StoreError};
use crate::attribution::{Decision, apply};
use crate::domain::Receipt;
use crate::outbound::{DeliveryJob, Handoff, Reservation, enqueue};
use crate::telemetry;

/// A recorded click, written after the redirect was answered.
#[derive(Debug, Clone)]
pub struct ClickRow {
    pub click_id: String,
    pub offer_id: i64,
    pub affiliate_id: i64,
    pub subs: [Option<String>; 5],
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub referrer: Option<String>,
    pub clicked_at_ms: i64,
}

/// A verified webhook request, kept raw for audit and replay.
#[derive(Debug, Clone)]
pub struct RawRecord {
    pub id: String,
    pub connector: String,
    pub received_at_ms: i64,
    pub method: String,
    /// Path only: the query string may carry a token.
    pub path: String,
    /// JSON `[[name, value], …]` without credentials.
    pub headers_json: String,
    /// The body, LZ4-compressed with its size prepended (`lz4_flex::compress_prepend_size`).
    /// Compressed by the request's task, not the writer: the writer is the one serial stage.
    pub body_lz4: Vec<u8>,
    /// The body's size before compression.
    pub body_size: i64,
    pub events: i64,
}

/// A verified event that could not become a conversion, kept with its reason.
#[derive(Debug, Clone)]
pub struct FailureRecord {
    pub id: String,
    pub raw_request_id: String,
    pub connector: String,
    pub event_type: Option<String>,
    pub event_id: Option<String>,
    pub code: String,
    pub message: String,
}

/// Everything one request wants written, atomically with the rest of its batch.
#[derive(Debug, Default)]
pub struct Ingest {
    pub raw: Option<RawRecord>,
    pub failures: Vec<FailureRecord>,
    pub decisions: Vec<Decision>,
}

/// Why a write was not acknowledged. The cause was logged by the writer.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the write could not be committed")]
pub struct WriteFailed;

/// Statements another part of postgate has the writer commit with its next batch: they
/// append complete statements, each terminated by `;`, to a SQLite multi-statement query.
/// Called again when the batch failed and they are retried in a transaction of their own.
pub type Statements = Box<dyn Fn(&mut Builder) + Send>;

enum Command {
    Ingest {
        work: Box<Ingest>,
        reply: oneshot::Sender<Result<Vec<Receipt>, WriteFailed>>,
    },
    Click(Box<ClickRow>),
    Write {
        statements: Statements,
        reply: oneshot::Sender<Result<(), WriteFailed>>,
    },
}

/// A cheap, cloneable way to hand work to the writer.
#[derive(Clone)]
pub struct WriterHandle {
    tx: mpsc::Sender<Command>,
}

impl WriterHandle {
    /// Applies one decision; returns after the transaction holding it has committed.
    pub async fn submit(&self, decision: Decision) -> Result<Receipt, WriteFailed> {
        let mut receipts = self
            .ingest(Ingest {
                decisions: vec![decision],
                ..Ingest::default()
            })
            .await?;
        receipts.pop().ok_or(WriteFailed)
    }

    /// Writes a request's raw record, failures and decisions together; returns one receipt
    /// per decision after the transaction holding them has committed.
    pub async fn ingest(&self, work: Ingest) -> Result<Vec<Receipt>, WriteFailed> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Ingest {
                work: Box::new(work),
                reply,
            })
            .await
            .map_err(|_| WriteFailed)?;
        rx.await.map_err(|_| WriteFailed)?
    }

    /// Commits `statements` with the next batch (SQLite only: one write connection, one
    /// fsync for everything that waited); returns after the commit. On PostgreSQL, which
    /// has no single writer to share, it fails: write on a connection of your own.
    pub async fn write(&self, statements: Statements) -> Result<(), WriteFailed> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Write { statements, reply })
            .await
            .map_err(|_| WriteFailed)?;
        rx.await.map_err(|_| WriteFailed)?
    }

    /// Queues a click row. Waits only if the queue is full (back-pressure).
    pub async fn record_click(&self, row: ClickRow) -> Result<(), WriteFailed> {
        self.tx
            .send(Command::Click(Box::new(row)))
            .await
            .map_err(|_| WriteFailed)
    }

    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// Starts the writer: on SQLite one task on its own thread with the only write connection;
/// on PostgreSQL one task per connection of the writer pool, sharing the queue, each
/// committing its own batches. They stop when every handle is dropped and the queue is drained.
///
/// With a `handoff`, the first attempts of new deliveries go straight to this process's
/// delivery worker after their commit (see [`crate::outbound::handoff`]).
pub fn spawn(
    target: Db<SqliteConnection, PgPool>,
    max_batch: usize,
    handoff: Option<Handoff>,
) -> (WriterHandle, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(max_batch * 64);
    let task = match target {
        // The writer gets a thread and a runtime of its own: it is the one serialization
        // point, and on the shared runtime it waited behind bursts of request handlers before
        // answering a committed batch and starting the next one (the latency tail).
        Db::Sqlite(conn) => {
            tokio::task::spawn_blocking(move || match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime.block_on(run(
                    Target::Sqlite(conn),
                    Arc::new(Mutex::new(rx)),
                    max_batch,
                    handoff,
                )),
                Err(e) => tracing::error!(error = %e, "Writer runtime could not start."),
            })
        }
        // Likewise on PostgreSQL: the writer tasks share one thread and runtime of their own,
        // where their pool opens its connections (a socket answers on the runtime that
        // opened it).
        Db::Postgres(pool) => {
            tokio::task::spawn_blocking(move || match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime.block_on(async move {
                    let rx = Arc::new(Mutex::new(rx));
                    let writers = (0..pool.options().get_max_connections()).map(|_| {
                        run(
                            Target::Postgres(pool.clone()),
                            rx.clone(),
                            max_batch,
                            handoff.clone(),
                        )
                    });
                    futures_util::future::join_all(writers).await;
                }),
                Err(e) => tracing::error!(error = %e, "Writer runtime could not start."),
            })
        }
    };
    (WriterHandle { tx }, task)
}

/// Where a writer task commits.
enum Target {
    Sqlite(SqliteConnection),
    Postgres(PgPool),
}

/// The most a PostgreSQL batch statement should carry, in bytes (estimated). sqlx 0.9 does
/// not set `TCP_NODELAY`: a message larger than the socket's send buffer goes out in
/// several writes, and Nagle holds each later one until the server's delayed ACK (40 ms on
/// Linux). Measured: a 60-row batch took 46 ms over TCP and 3.4 ms over a Unix socket;
/// with batches under this size, four writers carry 9k postbacks/s over TCP. A single large
/// request (a big webhook body) can still exceed it; Unix sockets avoid the stall entirely.
const POSTGRES_BATCH_BYTES: usize = 12 * 1024;

impl Target {
    /// How many of the queued commands the next batch takes: all on SQLite; on PostgreSQL
    /// as many as fit [`POSTGRES_BATCH_BYTES`] (estimated), at least one.
    fn batch_len(&self, commands: &[Command]) -> usize {
        if matches!(self, Target::Sqlite(_)) {
            return commands.len();
        }
        let mut bytes = 0;
        for (n, command) in commands.iter().enumerate() {
            bytes += match command {
                Command::Click(_) | Command::Write { .. } => 300,
                Command::Ingest { work, .. } => {
                    work.decisions.len() * 800
                        + work.failures.len() * 300
                        + work
                            .raw
                            .as_ref()
                            .map_or(0, |r| 200 + r.headers_json.len() + r.body_lz4.len())
                }
            };
            if bytes > POSTGRES_BATCH_BYTES && n > 0 {
                return n;
            }
        }
        commands.len()
    }

    /// A whole batch, the fast way each backend allows: every new conversion with its
    /// postings, deliveries, raw requests and clicks in one round trip. Conversions that
    /// collided with an earlier one (a duplicate or a status update) were skipped there, with
    /// everything that hangs on them; they, and reversals, then go through
    /// [`apply::apply_batch`] in a second transaction, in arrival order.
    ///
    /// The first attempts of deliveries that landed are handed to the worker as soon as
    /// their commit succeeded, whatever happens to the rest of the batch.
    async fn commit_batch(
        &mut self,
        batch: &Batch<'_>,
        clicks: &[ClickRow],
        handoff: Option<&Handoff>,
        writes: &[Statements],
        writes_committed: &mut bool,
    ) -> Result<Vec<Receipt>, StoreError> {
        let mut fast = FastRows::of(batch, handoff);
        let landed = match self {
            Target::Sqlite(conn) => {
                sqlite_fast(conn, batch, &fast, clicks, writes, writes_committed).await?
            }
            Target::Postgres(pool) => {
                retrying(async || postgres_fast(pool, batch, &fast, clicks).await).await?
            }
        };
        fast.hand_off(&landed);
        let is_done = |d: &Decision| {
            apply::is_fresh(d)
                && landed
                    .as_ref()
                    .is_none_or(|ids| ids.contains(d.conversion_id.as_str()))
        };
        let rest: Vec<&Decision> = batch
            .decisions
            .iter()
            .copied()
            .filter(|d| !is_done(d))
            .collect();
        let mut rest_receipts = if rest.is_empty() {
            Vec::new()
        } else {
            let rest = Batch {
                decisions: rest,
                ..Batch::default()
            };
            self.commit(&rest, &[]).await?
        }
        .into_iter();
        let mut receipts = Vec::with_capacity(batch.decisions.len());
        for d in &batch.decisions {
            if is_done(d) {
                receipts.push(apply::own_receipt(d));
            } else {
                receipts.push(rest_receipts.next().ok_or(StoreError::WriterGone)?);
            }
        }
        Ok(receipts)
    }

    /// `statements` in a transaction of their own (SQLite; on PostgreSQL they are refused).
    async fn write_alone(&mut self, statements: &Statements) -> Result<(), StoreError> {
        let Target::Sqlite(conn) = self else {
            return Err(StoreError::Corrupt(
                "statements for the writer are SQLite's".into(),
            ));
        };
        super::sqlite::commit_statements(conn, |qb| statements(qb)).await
    }

    /// One transaction for a batch and clicks, statement by statement.
    async fn commit(
        &mut self,
        batch: &Batch<'_>,
        clicks: &[ClickRow],
    ) -> Result<Vec<Receipt>, StoreError> {
        match self {
            Target::Sqlite(conn) => {
                // IMMEDIATE: this transaction reads before it writes, and the delivery worker
                // writes to the same file. A deferred one would fail at once with "database
                // is locked" when its read snapshot went stale, instead of waiting
                // (busy_timeout) for the write lock.
                let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
                let receipts = write_all(&mut Conn::from(&mut *tx), batch, clicks).await?;
                tx.commit().await?;
                Ok(receipts)
            }
            // Writers on several connections (and gateways) lock conversion rows in their
            // own arrival order; PostgreSQL breaks the rare deadlock by aborting one
            // transaction, which then simply runs again.
            Target::Postgres(pool) => {
                retrying(async || postgres_commit(pool, batch, clicks).await).await
            }
        }
    }
}

/// Times a PostgreSQL transaction aborted by a deadlock is run again.
const TRANSIENT_RETRIES: u32 = 5;

/// Runs `attempt`, and again (after a short random pause) while PostgreSQL aborts it to
/// break a deadlock, up to [`TRANSIENT_RETRIES`] times.
async fn retrying<T>(
    mut attempt: impl AsyncFnMut() -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let mut tries = 0;
    loop {
        match attempt().await {
            Err(e) if e.is_transient() && tries < TRANSIENT_RETRIES => {
                tries += 1;
                tracing::debug!(error = %error_chain(&e), tries, "Transaction retried.");
                let pause = rand::random_range(1..=10 * u64::from(tries));
                tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
            }
            result => return result,
        }
    }
}

async fn postgres_commit(
    pool: &PgPool,
    batch: &Batch<'_>,
    clicks: &[ClickRow],
) -> Result<Vec<Receipt>, StoreError> {
    let mut tx = pool.begin().await?;
    let receipts = write_all(&mut Conn::from(&mut *tx), batch, clicks).await?;
    tx.commit().await?;
    Ok(receipts)
}

async fn run(
    mut target: Target,
    rx: Arc<Mutex<mpsc::Receiver<Command>>>,
    max_batch: usize,
    handoff: Option<Handoff>,
) {
    let mut buffer = Vec::with_capacity(max_batch);
    loop {
        if buffer.is_empty() {
            // One task takes a batch while the others commit theirs.
            let received = rx.lock().await.recv_many(&mut buffer, max_batch).await;
            if received == 0 {
                break;
            }
        }
        let take = target.batch_len(&buffer);
        let mut works = Vec::new();
        let mut replies = Vec::new();
        let mut clicks = Vec::new();
        let mut writes = Vec::new();
        let mut write_replies = Vec::new();
        for command in buffer.drain(..take) {
            match command {
                Command::Ingest { work, reply } => {
                    works.push(*work);
                    replies.push(reply);
                }
                Command::Click(row) => clicks.push(*row),
                Command::Write { statements, reply } => {
                    writes.push(statements);
                    write_replies.push(reply);
                }
            }
        }
        if matches!(target, Target::Postgres(_)) && !writes.is_empty() {
            tracing::error!(
                writes = writes.len(),
                "Statements sent to the PostgreSQL writer; they are SQLite's and were refused."
            );
            for reply in write_replies.drain(..) {
                let _ = reply.send(Err(WriteFailed));
            }
            writes.clear();
        }
        let batch = Batch::of(&works);
        let items = batch.decisions.len() + clicks.len() + writes.len();
        tracing::trace!(items, "Committing batch.");
        let started = std::time::Instant::now();
        let mut writes_committed = false;
        let committed = target
            .commit_batch(
                &batch,
                &clicks,
                handoff.as_ref(),
                &writes,
                &mut writes_committed,
            )
            .await;
        // Statements that committed are answered so, whatever failed after them.
        if writes_committed {
            for reply in write_replies.drain(..) {
                let _ = reply.send(Ok(()));
            }
            writes.clear();
        }
        match committed {
            Ok(receipts) => {
                metrics::histogram!(telemetry::WRITER_COMMIT).record(started.elapsed());
                metrics::histogram!(telemetry::WRITER_BATCH_ITEMS).record(items as f64);
                let mut receipts = receipts.into_iter();
                for (reply, work) in replies.into_iter().zip(&works) {
                    let mine: Vec<Receipt> = receipts.by_ref().take(work.decisions.len()).collect();
                    // The handler may have gone (client hung up); the write stands anyway.
                    let _ = reply.send(Ok(mine));
                }
            }
            // The database is unreachable: retrying item by item would only make each caller
            // wait longer before its request goes to the spool.
            Err(error) if error.is_unavailable() => {
                metrics::counter!(telemetry::WRITER_FAILURES, "kind" => "unavailable").increment(1);
                tracing::warn!(error = %error_chain(&error), items, "Database unavailable; batch not written.");
                for reply in replies {
                    let _ = reply.send(Err(WriteFailed));
                }
                for reply in write_replies {
                    let _ = reply.send(Err(WriteFailed));
                }
            }
            Err(error) if works.len() + clicks.len() + writes.len() > 1 => {
                metrics::counter!(telemetry::WRITER_FAILURES, "kind" => "batch").increment(1);
                tracing::warn!(
                    error = %error_chain(&error),
                    items,
                    "Batch failed; retrying its items one transaction each."
                );
                for (statements, reply) in writes.iter().zip(write_replies) {
                    let result = target.write_alone(statements).await;
                    let _ = reply.send(result.map_err(|error| {
                        metrics::counter!(telemetry::WRITER_FAILURES, "kind" => "item")
                            .increment(1);
                        tracing::error!(error = %error_chain(&error), "Statements could not be written.");
                        WriteFailed
                    }));
                }
                for (work, reply) in works.iter().zip(replies) {
                    let result = target
                        .commit(&Batch::of(std::slice::from_ref(work)), &[])
                        .await;
                    let _ = reply.send(result.map_err(|error| {
                        metrics::counter!(telemetry::WRITER_FAILURES, "kind" => "item")
                            .increment(1);
                        tracing::error!(
                            error = %error_chain(&error),
                            decisions = work.decisions.len(),
                            "Request could not be written."
                        );
                        WriteFailed
                    }));
                }
                if !clicks.is_empty()
                    && let Err(error) = target.commit(&Batch::default(), &clicks).await
                {
                    tracing::error!(
                        error = %error_chain(&error),
                        lost = clicks.len(),
                        "Click rows could not be written."
                    );
                }
            }
            Err(error) => {
                metrics::counter!(telemetry::WRITER_FAILURES, "kind" => "item").increment(1);
                tracing::error!(error = %error_chain(&error), "Write failed.");
                for reply in replies {
                    let _ = reply.send(Err(WriteFailed));
                }
                for reply in write_replies {
                    let _ = reply.send(Err(WriteFailed));
                }
            }
        }
    }
    tracing::info!("Writer stopped: queue closed and drained.");
}

/// The rows of several [`Ingest`]s, flattened in arrival order.
#[derive(Default)]
struct Batch<'a> {
    raws: Vec<&'a RawRecord>,
    failures: Vec<&'a FailureRecord>,
    decisions: Vec<&'a Decision>,
}

impl<'a> Batch<'a> {
    fn of(works: &'a [Ingest]) -> Self {
        Batch {
            raws: works.iter().filter_map(|w| w.raw.as_ref()).collect(),
            failures: works.iter().flat_map(|w| &w.failures).collect(),
            decisions: works.iter().flat_map(|w| w.decisions.iter()).collect(),
        }
    }
}

/// The rows a batch's new conversions bring.
struct FastRows<'a> {
    fresh: Vec<&'a Decision>,
    postings: Vec<crate::ledger::Posting>,
    deliveries: Vec<crate::outbound::NewDelivery>,
    /// Per delivery: its place in the handoff queue, if the worker has room for it now.
    handoffs: Vec<Option<Reservation>>,
    /// How long after the commit a handed-off delivery's first-attempt job comes due.
    grace_secs: i64,
}

impl<'a> FastRows<'a> {
    fn of(batch: &Batch<'a>, handoff: Option<&Handoff>) -> Self {
        let fresh: Vec<&Decision> = batch
            .decisions
            .iter()
            .copied()
            .filter(|d| apply::is_fresh(d))
            .collect();
        let postings = fresh
            .iter()
            .flat_map(|d| apply::postings_for_new(d))
            .collect();
        let deliveries: Vec<crate::outbound::NewDelivery> = fresh
            .iter()
            .flat_map(|d| apply::deliveries_for_new(d))
            .collect();
        let handoffs: Vec<Option<Reservation>> = deliveries
            .iter()
            .map(|_| handoff.and_then(Handoff::reserve))
            .collect();
        FastRows {
            fresh,
            postings,
            deliveries,
            handoffs,
            grace_secs: handoff.map_or(0, Handoff::grace_secs),
        }
    }

    /// When each delivery's first-attempt job comes due, in unix seconds: now, or after the
    /// grace for one handed off.
    fn job_run_at(&self, now_ms: i64) -> Vec<i64> {
        self.handoffs
            .iter()
            .map(|place| now_ms / 1000 + if place.is_some() { self.grace_secs } else { 0 })
            .collect()
    }

    /// After the commit: hands each reserved first attempt whose conversion `landed` to the
    /// worker; the other places are freed.
    fn hand_off(&mut self, landed: &Landed) {
        let (mut handed, mut queued) = (0u64, 0u64);
        for (d, place) in self.deliveries.iter().zip(self.handoffs.drain(..)) {
            // `None`: every conversion of the batch landed.
            if landed
                .as_ref()
                .is_some_and(|ids| !ids.contains(d.conversion_id.as_str()))
            {
                continue;
            }
            match place {
                Some(place) => {
                    place.send(DeliveryJob::first(&d.id, 1));
                    handed += 1;
                }
                None => queued += 1,
            }
        }
        if handed + queued > 0 {
            metrics::counter!(telemetry::DELIVERY_FIRST_ATTEMPTS, "via" => "handed_off")
                .increment(handed);
            metrics::counter!(telemetry::DELIVERY_FIRST_ATTEMPTS, "via" => "queued")
                .increment(queued);
        }
    }
}

/// The ids of the new conversions that were inserted; `None` when all were.
type Landed = Option<std::collections::HashSet<String>>;

/// SQLite's one round trip: `BEGIN; INSERT raw …; INSERT conversions …; SELECT changes();
/// INSERT postings …; INSERT deliveries …; INSERT jobs …; INSERT clicks …; COMMIT`, postings
/// and deliveries guarded by the existence of their conversion. sqlx runs SQLite on a worker
/// thread, and on a busy machine every statement's hop to it waits for a time slice; one hop
/// per batch instead of one per statement is most of the write path's speed.
///
/// `writes_committed` is set once the transaction (with `writes`) committed, even if this
/// then fails: their callers must not be told otherwise, nor their statements run again.
async fn sqlite_fast(
    conn: &mut SqliteConnection,
    batch: &Batch<'_>,
    fast: &FastRows<'_>,
    clicks: &[ClickRow],
    writes: &[Statements],
    writes_committed: &mut bool,
) -> Result<Landed, StoreError> {
    let now_ms = Utc::now().timestamp_millis();
    let mut qb: Builder = Db::Sqlite(QueryBuilder::new("BEGIN IMMEDIATE;\n"));
    let end = |qb: &mut Builder, text: &str| {
        if let Db::Sqlite(q) = qb {
            q.push(text);
        }
    };
    for chunk in batch.raws.chunks(RAW_CHUNK) {
        push_raws(&mut qb, chunk);
        end(&mut qb, ";\n");
    }
    for chunk in batch.failures.chunks(FAILURE_CHUNK) {
        push_failures(&mut qb, chunk, now_ms);
        end(&mut qb, ";\n");
    }
    for chunk in fast.fresh.chunks(apply::CHUNK) {
        apply::push_insert_conversions(&mut qb, chunk, now_ms)?;
        // `rows_affected` would not do: SQLite's changes() is not reset by BEGIN or COMMIT,
        // so the sum over statements counts the last INSERT twice. Ask for the count.
        end(&mut qb, ";\nSELECT changes();\n");
    }
    for chunk in fast.postings.chunks(crate::ledger::CHUNK) {
        crate::ledger::push_insert(&mut qb, chunk, now_ms, Guard::ParentExists);
        end(&mut qb, ";\n");
    }
    // Deliveries and their first jobs, only for conversions that landed: a committed
    // conversion always has its postbacks queued, a skipped one never does.
    let run_at = fast.job_run_at(now_ms);
    for (chunk, run_at) in fast
        .deliveries
        .chunks(enqueue::CHUNK)
        .zip(run_at.chunks(enqueue::CHUNK))
    {
        enqueue::push_deliveries(&mut qb, chunk, now_ms, Guard::ParentExists);
        end(&mut qb, ";\n");
        enqueue::push_first_jobs(&mut qb, chunk, run_at, Guard::ParentExists);
        end(&mut qb, ";\n");
    }
    for chunk in clicks.chunks(CLICK_CHUNK) {
        push_clicks(&mut qb, chunk);
        end(&mut qb, ";\n");
    }
    for statements in writes {
        statements(&mut qb);
    }
    end(&mut qb, "COMMIT;");
    let Db::Sqlite(mut qb) = qb else {
        return Err(StoreError::Corrupt(
            "query built for the other backend".into(),
        ));
    };
    // A batch of ingest alone has few distinct shapes (its text follows the number of items),
    // so sqlx keeps each prepared and SQLite skips parsing it again; with delivery outcomes
    // in it nearly every text is new, and caching would only churn.
    let persistent = writes.is_empty();
    let inserted = match qb
        .build()
        .persistent(persistent)
        .fetch_all(&mut *conn)
        .await
    {
        Ok(rows) => {
            *writes_committed = true;
            rows
        }
        Err(error) => {
            // Whatever ran of the batch is undone; the caller retries item by item.
            let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
            return Err(error.into());
        }
    };
    let inserted = inserted
        .iter()
        .map(|r| r.try_get::<i64, _>(0))
        .sum::<Result<i64, _>>()?;
    if inserted == fast.fresh.len() as i64 {
        return Ok(None);
    }
    Ok(Some(
        apply::existing_ids(
            &mut Conn::from(&mut *conn),
            fast.fresh.iter().map(|d| d.conversion_id.as_str()),
        )
        .await?,
    ))
}

/// PostgreSQL's one round trip: one statement, so one implicit transaction and one commit.
/// Each insert is a query of a `WITH` list, fed by one array parameter per column; postings
/// and deliveries keep only the rows whose conversion the `conversions` query returned
/// (sibling queries share one snapshot, so an existence check would not see them), jobs only
/// those whose delivery was inserted. Foreign keys are checked at the end of the statement.
async fn postgres_fast(
    pool: &PgPool,
    batch: &Batch<'_>,
    fast: &FastRows<'_>,
    clicks: &[ClickRow],
) -> Result<Landed, StoreError> {
    let now_ms = Utc::now().timestamp_millis();
    // Conversions first: the others refer to it, and the statement ends in a query on it.
    let mut qb = QueryBuilder::<sqlx::Postgres>::new("WITH c AS (");
    if fast.fresh.is_empty() {
        qb.push("SELECT id FROM conversions WHERE false)");
    } else {
        apply::push_insert_conversions_unnest(&mut qb, &fast.fresh, now_ms)?;
        qb.push(" RETURNING id)");
    }
    if !fast.postings.is_empty() {
        qb.push(",\np AS (");
        crate::ledger::push_insert_unnest(&mut qb, &fast.postings, now_ms, "c");
        qb.push(")");
    }
    if !fast.deliveries.is_empty() {
        qb.push(",\nd AS (");
        enqueue::push_deliveries_unnest(&mut qb, &fast.deliveries, now_ms, "c");
        qb.push("),\nj AS (");
        enqueue::push_first_jobs_unnest(&mut qb, &fast.deliveries, &fast.job_run_at(now_ms), "d");
        qb.push(")");
    }
    if !batch.raws.is_empty() {
        qb.push(",\nr AS (");
        push_raws_unnest(&mut qb, &batch.raws);
        qb.push(")");
    }
    if !batch.failures.is_empty() {
        qb.push(",\nf AS (");
        push_failures_unnest(&mut qb, &batch.failures, now_ms);
        qb.push(")");
    }
    if !clicks.is_empty() {
        qb.push(",\nk AS (");
        push_clicks_unnest(&mut qb, clicks);
        qb.push(")");
    }
    qb.push("\nSELECT id FROM c");
    // Prepared once per connection and shape: the text binds one array per column, so it
    // depends only on which of the WITH queries are present, never on the rows. Re-parsing
    // and planning it per batch cost PostgreSQL about a quarter of its time (8.6–9.3k →
    // 11.6k postbacks/s in one comparison).
    let ids: Vec<(String,)> = qb.build_query_as().persistent(true).fetch_all(pool).await?;
    if ids.len() == fast.fresh.len() {
        return Ok(None);
    }
    Ok(Some(ids.into_iter().map(|(id,)| id).collect()))
}

/// Binds `values` as one array parameter of SQL type `sql_type` (e.g. `text[]`).
fn push_array<T>(
    list: &mut sqlx::query_builder::Separated<'_, sqlx::Postgres, &str>,
    values: Vec<T>,
    sql_type: &str,
) where
    Vec<T>: for<'q> sqlx::Encode<'q, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
{
    list.push_bind(values)
        .push_unseparated("::")
        .push_unseparated(sql_type.to_owned());
}

fn push_raws_unnest(qb: &mut QueryBuilder<sqlx::Postgres>, raws: &[&RawRecord]) {
    qb.push(
        "INSERT INTO raw_requests (id, connector, received_at, method, path, headers, body,
            body_size, events) SELECT * FROM UNNEST(",
    );
    let mut list = qb.separated(", ");
    push_array(
        &mut list,
        raws.iter().map(|r| r.id.clone()).collect(),
        "text[]",
    );
    push_array(
        &mut list,
        raws.iter().map(|r| r.connector.clone()).collect(),
        "text[]",
    );
    push_array(
        &mut list,
        raws.iter().map(|r| r.received_at_ms).collect(),
        "int8[]",
    );
    push_array(
        &mut list,
        raws.iter().map(|r| r.method.clone()).collect(),
        "text[]",
    );
    push_array(
        &mut list,
        raws.iter().map(|r| r.path.clone()).collect(),
        "text[]",
    );
    push_array(
        &mut list,
        raws.iter().map(|r| r.headers_json.clone()).collect(),
        "text[]",
    );
    push_array(
        &mut list,
        raws.iter().map(|r| r.body_lz4.clone()).collect(),
        "bytea[]",
    );
    push_array(
        &mut list,
        raws.iter().map(|r| r.body_size).collect(),
        "int8[]",
    );
    push_array(&mut list, raws.iter().map(|r| r.events).collect(), "int8[]");
    qb.push(")");
}

fn push_failures_unnest(
    qb: &mut QueryBuilder<sqlx::Postgres>,
    failures: &[&FailureRecord],
    now_ms: i64,
) {
    qb.push(
        "INSERT INTO ingest_failures (id, raw_request_id, connector, event_type, event_id, code,
            message, created_at) SELECT * FROM UNNEST(",
    );
    let mut list = qb.separated(", ");
    push_array(
        &mut list,
        failures.iter().map(|f| f.id.clone()).collect(),
        "text[]",
    );
    push_array(
        &mut list,
        failures.iter().map(|f| f.raw_request_id.clone()).collect(),
        "text[]",
    );
    push_array(
        &mut list,
        failures.iter().map(|f| f.connector.clone()).collect(),
        "text[]",
    );
    push_array(
        &mut list,
        failures.iter().map(|f| f.event_type.clone()).collect(),
        "text[]",
    );
    push_array(
        &mut list,
        failures.iter().map(|f| f.event_id.clone()).collect(),
        "text[]",
    );
    push_array(
        &mut list,
        failures.iter().map(|f| f.code.clone()).collect(),
        "text[]",
    );
    push_array(
        &mut list,
        failures.iter().map(|f| f.message.clone()).collect(),
        "text[]",
    );
    push_array(&mut list, vec![now_ms; failures.len()], "int8[]");
    qb.push(")");
}

fn push_clicks_unnest(qb: &mut QueryBuilder<sqlx::Postgres>, clicks: &[ClickRow]) {
    qb.push(
        "INSERT INTO clicks (click_id, offer_id, affiliate_id, sub1, sub2, sub3, sub4, sub5, ip,
            user_agent, referrer, clicked_at) SELECT * FROM UNNEST(",
    );
    let mut list = qb.separated(", ");
    push_array(
        &mut list,
        clicks.iter().map(|c| c.click_id.clone()).collect(),
        "text[]",
    );
    push_array(
        &mut list,
        clicks.iter().map(|c| c.offer_id).collect(),
        "int8[]",
    );
    push_array(
        &mut list,
        clicks.iter().map(|c| c.affiliate_id).collect(),
        "int8[]",
    );
    for n in 0..5 {
        push_array(
            &mut list,
            clicks.iter().map(|c| c.subs[n].clone()).collect(),
            "text[]",
        );
    }
    push_array(
        &mut list,
        clicks.iter().map(|c| c.ip.clone()).collect(),
        "text[]",
    );
    push_array(
        &mut list,
        clicks.iter().map(|c| c.user_agent.clone()).collect(),
        "text[]",
    );
    push_array(
        &mut list,
        clicks.iter().map(|c| c.referrer.clone()).collect(),
        "text[]",
    );
    push_array(
        &mut list,
        clicks.iter().map(|c| c.clicked_at_ms).collect(),
        "int8[]",
    );
    // A click ID is 128 random bits; a collision means a replayed row, not a new click.
    qb.push(") ON CONFLICT DO NOTHING");
}

/// Writes a batch and clicks statement by statement, inside the caller's transaction.
async fn write_all(
    conn: &mut Conn<'_>,
    batch: &Batch<'_>,
    clicks: &[ClickRow],
) -> Result<Vec<Receipt>, StoreError> {
    let now = Utc::now();
    let now_ms = now.timestamp_millis();
    for chunk in batch.raws.chunks(RAW_CHUNK) {
        let mut qb = conn.builder();
        push_raws(&mut qb, chunk);
        conn.execute(qb).await?;
    }
    for chunk in batch.failures.chunks(FAILURE_CHUNK) {
        let mut qb = conn.builder();
        push_failures(&mut qb, chunk, now_ms);
        conn.execute(qb).await?;
    }
    let receipts = if batch.decisions.is_empty() {
        Vec::new()
    } else {
        apply::apply_batch(conn, &batch.decisions, now).await?
    };
    for chunk in clicks.chunks(CLICK_CHUNK) {
        let mut qb = conn.builder();
        push_clicks(&mut qb, chunk);
        conn.execute(qb).await?;
    }
    Ok(receipts)
}

/// Raw requests per statement: bodies are up to 1 MiB each, so statements stay small.
const RAW_CHUNK: usize = 64;
/// Failed events per statement (8 binds each).
const FAILURE_CHUNK: usize = 1000;
/// Clicks per statement (12 binds each; far below both backends' bind limits).
const CLICK_CHUNK: usize = 1000;

/// Appends one insert (no terminator) of raw requests.
fn push_raws(qb: &mut Builder, raws: &[&RawRecord]) {
    crate::db!(qb, qb => {
        qb.push(
            "INSERT INTO raw_requests (id, connector, received_at, method, path, headers, body,
                body_size, events) ",
        );
        qb.push_values(raws, |mut b, r| {
            b.push_bind(r.id.clone())
                .push_bind(r.connector.clone())
                .push_bind(r.received_at_ms)
                .push_bind(r.method.clone())
                .push_bind(r.path.clone())
                .push_bind(r.headers_json.clone())
                .push_bind(r.body_lz4.clone())
                .push_bind(r.body_size)
                .push_bind(r.events);
        });
    })
}

/// Appends one insert (no terminator) of events that could not become conversions.
fn push_failures(qb: &mut Builder, failures: &[&FailureRecord], now_ms: i64) {
    crate::db!(qb, qb => {
        qb.push(
            "INSERT INTO ingest_failures (id, raw_request_id, connector, event_type, event_id,
                code, message, created_at) ",
        );
        qb.push_values(failures, |mut b, f| {
            b.push_bind(f.id.clone())
                .push_bind(f.raw_request_id.clone())
                .push_bind(f.connector.clone())
                .push_bind(f.event_type.clone())
                .push_bind(f.event_id.clone())
                .push_bind(f.code.clone())
                .push_bind(f.message.clone())
                .push_bind(now_ms);
        });
    })
}

/// Appends one `INSERT INTO clicks` (no terminator).
fn push_clicks(qb: &mut Builder, clicks: &[ClickRow]) {
    crate::db!(qb, qb => {
        qb.push(
            "INSERT INTO clicks (click_id, offer_id, affiliate_id, sub1, sub2, sub3, sub4, sub5,
                ip, user_agent, referrer, clicked_at) ",
        );
        qb.push_values(clicks, |mut b, c| {
            b.push_bind(c.click_id.clone())
                .push_bind(c.offer_id)
                .push_bind(c.affiliate_id);
            for sub in &c.subs {
                b.push_bind(sub.clone());
            }
            b.push_bind(c.ip.clone())
                .push_bind(c.user_agent.clone())
                .push_bind(c.referrer.clone())
                .push_bind(c.clicked_at_ms);
        });
        // A click ID is 128 random bits; a collision means a replayed row, not a new click.
        qb.push(" ON CONFLICT DO NOTHING");
    })
}

/// `error: cause: cause` — the whole chain on one line, for the log.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
