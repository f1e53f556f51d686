//! The drainer: replays spooled entries in arrival order until the spool is empty.
//!
//! While the database is down there is one probe at a time — the oldest due entry. The
//! first waits 1 s after the failed write that spooled a request, and the pause after each
//! failed probe doubles from there to `max_backoff` (±20 % jitter).
//! Appends wake an idle drainer but never cut such a pause short, so a burst of spooled
//! requests during an outage cannot turn into a hot loop; a request whose write succeeded
//! does, since the database is evidently back. An entry the pipeline refuses
//! for another reason (e.g. its connector was removed from the configuration) waits on its
//! own backoff while the entries behind it go on.

use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::Rng as _;
use tokio::sync::oneshot;

use super::{Entry, Spool};

/// The pipeline after verification, as the drainer sees it.
pub trait Replay: Send + Sync + 'static {
    /// Runs `entry` through the pipeline; `Ok` once it is committed (accepted, duplicate or
    /// rejected all count: the request was recorded).
    fn replay(&self, entry: &Entry) -> impl Future<Output = Result<(), ReplayError>> + Send;
}

/// Why a replay did not get through.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The database could not take it: retry after the outage backoff.
    #[error("the database is unavailable")]
    Unavailable,
    /// The pipeline refused it as configured now; retried on the entry's own backoff.
    #[error("{0}")]
    Refused(String),
}

/// What the drainer should do next.
#[derive(Debug)]
pub(crate) enum Next {
    Due(u64, Box<Entry>),
    At(DateTime<Utc>),
    Empty,
}

/// The pause after `attempt` failed tries: 1 s doubling up to `max`, ±20 % jitter.
pub fn backoff(attempt: u32, max: Duration) -> Duration {
    let base = Duration::from_secs(1)
        .saturating_mul(1u32 << attempt.min(20))
        .min(max);
    base.mul_f64(rand::rng().random_range(0.8..=1.2))
}

impl Spool {
    /// The oldest entry due now, or when the next one is.
    pub(crate) fn next(&self, now: DateTime<Utc>) -> Next {
        let journal = self.inner.journal();
        let mut earliest: Option<DateTime<Utc>> = None;
        for (order, p) in &journal.pending {
            match p.not_before {
                Some(t) if t > now => earliest = Some(earliest.map_or(t, |e| e.min(t))),
                _ => return Next::Due(*order, Box::new(p.entry.clone())),
            }
        }
        earliest.map_or(Next::Empty, Next::At)
    }

    /// The entry was replayed.
    pub(crate) async fn drained(&self, order: u64) {
        self.inner
            .drained
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        metrics::counter!(crate::telemetry::SPOOL_DRAINED).increment(1);
        let inner = std::sync::Arc::clone(&self.inner);
        let result = tokio::task::spawn_blocking(move || inner.journal().done(order))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        if let Err(e) = result {
            // The entry is no longer pending here; after a restart it replays as a duplicate.
            tracing::error!(dir = %self.inner.dir.display(), error = %e, "Spool done marker could not be written.");
        }
    }

    /// Counts a failed replay. Entries that arrived more than `give_up_after` before `now`
    /// are moved to `dead.log`: this one, or — when the database is down, which fails them
    /// all alike — every such pending entry.
    pub(crate) async fn failed(&self, order: u64, now: DateTime<Utc>, error: &ReplayError) {
        let inner = std::sync::Arc::clone(&self.inner);
        let unavailable = matches!(error, ReplayError::Unavailable);
        let message = error.to_string();
        let reason = message.clone();
        let buried = tokio::task::spawn_blocking(move || {
            let mut journal = inner.journal();
            let deadline = now - inner.give_up_after;
            let mut expired = Vec::new();
            if let Some(p) = journal.pending.get_mut(&order) {
                p.attempts += 1;
                if !unavailable {
                    let wait = backoff(p.attempts, inner.max_backoff);
                    p.not_before = Some(now + chrono::Duration::from_std(wait).unwrap_or_default());
                }
            }
            for (o, p) in &journal.pending {
                if p.entry.received_at < deadline && (unavailable || *o == order) {
                    expired.push((*o, p.entry.id.clone(), p.attempts));
                }
            }
            let mut buried = Vec::new();
            for (o, id, attempts) in expired {
                match journal.bury(o, now, &reason) {
                    Ok(()) => buried.push((id, attempts)),
                    Err(e) => {
                        tracing::error!(spool_id = %id, error = %e, "Spool entry could not be moved to dead.log; it stays pending.");
                        break;
                    }
                }
            }
            buried
        })
        .await
        .unwrap_or_default();
        for (id, attempts) in buried {
            self.inner
                .buried
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            metrics::counter!(crate::telemetry::SPOOL_DEAD).increment(1);
            tracing::warn!(spool_id = %id, attempts, error = %message, dir = %self.inner.dir.display(), "Spooled request gave up; kept in dead.log.");
        }
    }
}

/// Replays until `stop` fires (or its sender is dropped). An in-flight replay finishes
/// first; pauses end at once.
pub async fn run<R: Replay>(spool: Spool, replay: R, mut stop: oneshot::Receiver<()>) {
    let mut outage = 0u32;
    loop {
        let now = Utc::now();
        match spool.next(now) {
            // A request's write has just failed (which is why there is an entry): the first
            // probe waits like any other, instead of taking the writer for another busy
            // timeout right behind the live requests.
            Next::Due(..) if outage == 0 && spool.database_down() => {
                outage = 1;
                let wait = backoff(0, spool.inner.max_backoff);
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = spool.inner.recovered.notified() => {}
                    _ = &mut stop => return,
                }
            }
            Next::Due(order, entry) => match replay.replay(&entry).await {
                Ok(()) => {
                    outage = 0;
                    spool.database_ok();
                    spool.drained(order).await;
                    tracing::info!(spool_id = %entry.id, "Spooled request replayed.");
                }
                Err(error) => {
                    spool.failed(order, Utc::now(), &error).await;
                    if let ReplayError::Unavailable = error {
                        spool
                            .inner
                            .database_down
                            .store(true, std::sync::atomic::Ordering::Relaxed);
                        let wait = backoff(outage, spool.inner.max_backoff);
                        outage = outage.saturating_add(1);
                        tracing::debug!(
                            wait_ms = wait.as_millis() as u64,
                            "Database still unavailable; spool drain paused."
                        );
                        tokio::select! {
                            () = tokio::time::sleep(wait) => {}
                            () = spool.inner.recovered.notified() => {}
                            _ = &mut stop => return,
                        }
                    } else {
                        tracing::warn!(spool_id = %entry.id, error = %error, "Spooled request refused on replay; will retry.");
                    }
                }
            },
            Next::At(at) => {
                let wait = (at - now).to_std().unwrap_or_default();
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = spool.inner.wake.notified() => {}
                    _ = &mut stop => return,
                }
            }
            Next::Empty => {
                tokio::select! {
                    () = spool.inner.wake.notified() => {}
                    _ = &mut stop => return,
                }
            }
        }
        if !matches!(stop.try_recv(), Err(oneshot::error::TryRecvError::Empty)) {
            return;
        }
    }
}
