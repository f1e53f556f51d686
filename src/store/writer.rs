//! The group-commit writer: one task owns the database's only write connection.
//!
//! A durable acknowledgement costs an fsync, and a disk manages a few thousand per second;
//! one transaction per request would cap postgate there. Instead, handlers do the expensive,
//! parallel work (parse, verify, evaluate) on their own tasks and send a work item here. The
//! writer takes whatever is waiting (up to `max_batch`), applies it all in one transaction,
//! commits once — one fsync — and only then answers every waiting handler. While it commits,
//! the next batch queues up, so batches grow with load and latency stays flat.
//!
//! If a batch fails, its items are retried one transaction each, so one bad item never
//! takes its neighbours down with it.
//!
//! Clicks ride along without a reply: the redirect is answered before its row is written.
//! The worst case loss on a crash is the clicks waiting in the channel plus one batch; a
//! conversion on a lost click is still attributed, because the click ID carries offer,
//! affiliate and click time.

use chrono::Utc;
use sqlx::{Connection, QueryBuilder, Row, Sqlite, SqliteConnection};
use tokio::sync::{mpsc, oneshot};

use super::StoreError;
use crate::attribution::{Decision, apply};
use crate::domain::Receipt;

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

/// Why a write was not acknowledged. The cause was logged by the writer.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the write could not be committed")]
pub struct WriteFailed;

/// How many times the writer yields to let in-flight handlers join a batch.
const LINGER_YIELDS: usize = 4;

enum Command {
    Conversion {
        decision: Box<Decision>,
        reply: oneshot::Sender<Result<Receipt, WriteFailed>>,
    },
    Click(Box<ClickRow>),
}

/// A cheap, cloneable way to hand work to the writer.
#[derive(Clone)]
pub struct WriterHandle {
    tx: mpsc::Sender<Command>,
}

impl WriterHandle {
    /// Applies one decision; returns after the transaction holding it has committed.
    pub async fn submit(&self, decision: Decision) -> Result<Receipt, WriteFailed> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Conversion {
                decision: Box::new(decision),
                reply,
            })
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

/// Starts the writer on `conn`. It stops when every handle is dropped and the queue drained.
pub fn spawn(
    conn: SqliteConnection,
    max_batch: usize,
) -> (WriterHandle, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(max_batch * 64);
    let task = tokio::spawn(run(conn, rx, max_batch));
    (WriterHandle { tx }, task)
}

async fn run(mut conn: SqliteConnection, mut rx: mpsc::Receiver<Command>, max_batch: usize) {
    let mut buffer = Vec::with_capacity(max_batch);
    while rx.recv_many(&mut buffer, max_batch).await > 0 {
        // Linger briefly: handlers that are parsing and evaluating right now get to join this
        // batch instead of waiting a whole commit for the next. Costs microseconds when idle.
        for _ in 0..LINGER_YIELDS {
            if buffer.len() >= max_batch {
                break;
            }
            tokio::task::yield_now().await;
            while buffer.len() < max_batch
                && let Ok(command) = rx.try_recv()
            {
                buffer.push(command);
            }
        }
        let mut decisions = Vec::new();
        let mut replies = Vec::new();
        let mut clicks = Vec::new();
        for command in buffer.drain(..) {
            match command {
                Command::Conversion { decision, reply } => {
                    decisions.push(*decision);
                    replies.push(reply);
                }
                Command::Click(row) => clicks.push(*row),
            }
        }
        metrics_batch(decisions.len(), clicks.len());
        match commit_fast(&mut conn, &decisions, &clicks).await {
            Ok(receipts) => {
                for (reply, receipt) in replies.into_iter().zip(receipts) {
                    // The handler may have gone (client hung up); the write stands anyway.
                    let _ = reply.send(Ok(receipt));
                }
            }
            Err(error) if decisions.len() + clicks.len() > 1 => {
                tracing::warn!(
                    error = %error_chain(&error),
                    items = decisions.len() + clicks.len(),
                    "Batch failed; retrying its items one transaction each."
                );
                for (decision, reply) in decisions.into_iter().zip(replies) {
                    let result = commit(&mut conn, std::slice::from_ref(&decision), &[]).await;
                    let _ = reply.send(match result {
                        Ok(mut receipts) => receipts.pop().ok_or(WriteFailed),
                        Err(error) => {
                            tracing::error!(
                                error = %error_chain(&error),
                                conversion_id = %decision.conversion_id,
                                "Conversion could not be written."
                            );
                            Err(WriteFailed)
                        }
                    });
                }
                if !clicks.is_empty()
                    && let Err(error) = commit(&mut conn, &[], &clicks).await
                {
                    tracing::error!(
                        error = %error_chain(&error),
                        lost = clicks.len(),
                        "Click rows could not be written."
                    );
                }
            }
            Err(error) => {
                tracing::error!(error = %error_chain(&error), "Write failed.");
                for reply in replies {
                    let _ = reply.send(Err(WriteFailed));
                }
            }
        }
    }
    tracing::info!("Writer stopped: queue closed and drained.");
}

/// The usual case in one round trip to SQLite: `BEGIN; INSERT conversions …; INSERT postings
/// …; INSERT clicks …; COMMIT`. sqlx runs SQLite on a worker thread, and on a busy machine
/// every statement's hop to it waits for a time slice; one hop per batch instead of one per
/// statement is most of the write path's speed.
///
/// New conversions that collided with an earlier one (a duplicate or a status update) were
/// skipped by `ON CONFLICT DO NOTHING`, and their postings by the existence check. The
/// affected-row count reveals any such skip; those items, and reversals, then go through
/// [`apply::apply_batch`] in a second transaction, in arrival order.
async fn commit_fast(
    conn: &mut SqliteConnection,
    decisions: &[Decision],
    clicks: &[ClickRow],
) -> Result<Vec<Receipt>, StoreError> {
    let now = Utc::now();
    let now_ms = now.timestamp_millis();
    let fresh: Vec<&Decision> = decisions.iter().filter(|d| apply::is_fresh(d)).collect();
    let postings: Vec<_> = fresh
        .iter()
        .flat_map(|d| apply::postings_for_new(d))
        .collect();

    let mut qb = QueryBuilder::new("BEGIN IMMEDIATE;\n");
    apply::push_insert_conversions(&mut qb, &fresh, now_ms, true)?;
    crate::ledger::push_insert(&mut qb, &postings, now_ms, true);
    push_insert_clicks(&mut qb, clicks);
    qb.push("COMMIT;");
    // `rows_affected` would not do: SQLite's changes() is not reset by BEGIN or COMMIT, so
    // the sum over statements counts the last INSERT twice. Ask for the count explicitly.
    let inserted = match qb.build().persistent(false).fetch_all(&mut *conn).await {
        Ok(rows) => rows
            .iter()
            .map(|r| r.try_get::<i64, _>(0))
            .sum::<Result<i64, _>>()?,
        Err(error) => {
            // Whatever ran of the batch is undone; the caller retries item by item.
            let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
            return Err(error.into());
        }
    };

    let landed: Option<std::collections::HashSet<String>> = if inserted == fresh.len() as i64 {
        None // every fresh row landed
    } else {
        Some(apply::existing_ids(conn, fresh.iter().map(|d| d.conversion_id.as_str())).await?)
    };
    let is_done = |d: &Decision| {
        apply::is_fresh(d)
            && landed
                .as_ref()
                .is_none_or(|ids| ids.contains(d.conversion_id.as_str()))
    };

    let rest: Vec<Decision> = decisions.iter().filter(|d| !is_done(d)).cloned().collect();
    let mut rest_receipts = if rest.is_empty() {
        Vec::new()
    } else {
        commit(conn, &rest, &[]).await?
    }
    .into_iter();
    let mut receipts = Vec::with_capacity(decisions.len());
    for d in decisions {
        if is_done(d) {
            receipts.push(apply::own_receipt(d));
        } else {
            receipts.push(rest_receipts.next().ok_or(StoreError::WriterGone)?);
        }
    }
    Ok(receipts)
}

/// One transaction for `decisions` and `clicks`, statement by statement.
async fn commit(
    conn: &mut SqliteConnection,
    decisions: &[Decision],
    clicks: &[ClickRow],
) -> Result<Vec<Receipt>, StoreError> {
    let now = Utc::now();
    let mut tx = conn.begin().await?;
    let receipts = if decisions.is_empty() {
        Vec::new()
    } else {
        apply::apply_batch(&mut tx, decisions, now).await?
    };
    insert_clicks(&mut tx, clicks).await?;
    tx.commit().await?;
    Ok(receipts)
}

async fn insert_clicks(conn: &mut SqliteConnection, clicks: &[ClickRow]) -> Result<(), StoreError> {
    if clicks.is_empty() {
        return Ok(());
    }
    let mut qb = QueryBuilder::new("");
    push_insert_clicks(&mut qb, clicks);
    qb.build().persistent(false).execute(&mut *conn).await?;
    Ok(())
}

/// Appends `INSERT INTO clicks` statements, each ending in `;`.
fn push_insert_clicks(qb: &mut QueryBuilder<Sqlite>, clicks: &[ClickRow]) {
    // 12 binds a row; 1 000 rows stay far below SQLite's bind limit.
    for chunk in clicks.chunks(1000) {
        qb.push(
            "INSERT INTO clicks (click_id, offer_id, affiliate_id, sub1, sub2, sub3, sub4, sub5,
                ip, user_agent, referrer, clicked_at) ",
        );
        qb.push_values(chunk, |mut b, c| {
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
        qb.push(" ON CONFLICT DO NOTHING;\n");
    }
}

fn metrics_batch(conversions: usize, clicks: usize) {
    tracing::trace!(conversions, clicks, "Committing batch.");
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
