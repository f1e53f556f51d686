//! The spool: verified requests the database could not take, kept on local disk.
//!
//! Contract:
//! * input: a request that passed verification (token, signature, allow-lists) and whose
//!   write failed with [`WriteFailed`](crate::store::writer::WriteFailed), as a
//!   [`SpooledRequest`]: for `/postback` the advertiser and the [`CanonicalPostback`]
//!   parsed from its parameters; for `/hooks/{connector}` the request as received, less
//!   the source's token header or query parameter and the usual credential headers. No
//!   secret is ever written here.
//! * [`Spool::append`] returns once the entry is fsync'd (file, and directory for a new
//!   file); only then may the caller be answered 202 `queued` (or Salesforce its Ack).
//! * the drainer ([`drain::run`]) replays entries in arrival order through a
//!   [`drain::Replay`] (the pipeline after verification, with the entry's original
//!   `received_at`), with exponential backoff while the database is down, and marks them
//!   done. An entry still failing `give_up_after` (72 h) after its arrival is moved to
//!   `dead.log`: kept, counted, logged once, never deleted.
//!
//! Delivery into the pipeline is at-least-once: a crash between a replay's commit and its
//! `done` marker replays it again, and the pipeline's dedupe keys answer `duplicate`.
//! The file format is in [`journal`].

pub mod drain;
pub mod journal;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::config::SpoolSettings;
use crate::domain::CanonicalPostback;
use journal::Journal;

/// One spooled request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// UUIDv7, returned to the caller as `spool_id`.
    pub id: String,
    /// When the gateway received the request: replays are judged as of this time.
    pub received_at: DateTime<Utc>,
    pub request: SpooledRequest,
}

/// What a replay needs to run the pipeline after verification.
// Externally tagged: an internally tagged enum buffers its content, and the canonical
// postback's optional decimal does not deserialize from that buffer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SpooledRequest {
    /// An S2S postback whose token and address were checked.
    Postback {
        /// The advertiser's key (never its token).
        advertiser: String,
        postback: CanonicalPostback,
    },
    /// A webhook request whose authentication passed.
    Hook {
        connector: String,
        method: String,
        /// Path and query, without the connector's token parameter.
        path_and_query: String,
        /// Without credential headers.
        headers: Vec<(String, String)>,
        /// The body exactly as received.
        #[serde(with = "base64_bytes")]
        body: bytes::Bytes,
    },
}

mod base64_bytes {
    use super::*;

    pub fn serialize<S: serde::Serializer>(b: &bytes::Bytes, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(b))
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bytes::Bytes, D::Error> {
        let text = String::deserialize(d)?;
        STANDARD
            .decode(text)
            .map(bytes::Bytes::from)
            .map_err(serde::de::Error::custom)
    }
}

/// The spool could not be opened or written. Callers answer as before: 503.
#[derive(Debug, thiserror::Error)]
#[error("spool {dir}: {source}")]
pub struct SpoolError {
    dir: PathBuf,
    #[source]
    source: std::io::Error,
}

/// Counts for `/readyz` (this crate has no metrics registry; these are its spool metrics).
#[derive(Debug, Clone, Serialize)]
pub struct SpoolStats {
    /// Waiting to be replayed.
    pub pending: usize,
    /// In `dead.log`: gave up after `give_up_after`; kept for an operator.
    pub dead: usize,
    /// Segment files that could not be read to the end; kept for an operator.
    pub damaged_segments: usize,
    /// Entries appended since start (`postgate_spooled_total`).
    pub spooled_total: u64,
    /// Entries replayed since start (`postgate_spool_drained_total`).
    pub drained_total: u64,
    /// Entries moved to `dead.log` since start.
    pub dead_total: u64,
    /// Whether the last append succeeded.
    pub writable: bool,
    pub dir: String,
}

/// A cheap, cloneable handle to the spool.
#[derive(Clone)]
pub struct Spool {
    inner: Arc<Inner>,
}

struct Inner {
    journal: Mutex<Journal>,
    dir: PathBuf,
    give_up_after: chrono::Duration,
    max_backoff: std::time::Duration,
    /// Wakes an idle drainer when something is appended.
    wake: tokio::sync::Notify,
    /// Ends a drainer's outage pause when a request's write succeeded.
    recovered: tokio::sync::Notify,
    /// The last write to the database failed and no write has succeeded since.
    database_down: AtomicBool,
    writable: AtomicBool,
    spooled: AtomicU64,
    drained: AtomicU64,
    buried: AtomicU64,
}

impl Spool {
    /// Opens (creating) the spool directory and reads what an earlier run left.
    pub fn open(settings: &SpoolSettings) -> Result<Spool, SpoolError> {
        let journal = Journal::open(&settings.dir).map_err(|source| SpoolError {
            dir: settings.dir.clone(),
            source,
        })?;
        if !journal.pending.is_empty() {
            tracing::warn!(dir = %settings.dir.display(), pending = journal.pending.len(), "Spool holds requests from an earlier run; replaying them.");
        }
        if journal.dead_count > 0 {
            tracing::warn!(dir = %settings.dir.display(), dead = journal.dead_count, "Spool holds dead requests that gave up; see dead.log.");
        }
        Ok(Spool {
            inner: Arc::new(Inner {
                journal: Mutex::new(journal),
                dir: settings.dir.clone(),
                give_up_after: chrono::Duration::from_std(settings.give_up_after)
                    .unwrap_or(chrono::Duration::hours(72)),
                max_backoff: settings.max_backoff,
                wake: tokio::sync::Notify::new(),
                recovered: tokio::sync::Notify::new(),
                database_down: AtomicBool::new(false),
                writable: AtomicBool::new(true),
                spooled: AtomicU64::new(0),
                drained: AtomicU64::new(0),
                buried: AtomicU64::new(0),
            }),
        })
    }

    /// Appends a verified request; returns its id once it is durable on disk.
    pub async fn append(
        &self,
        received_at: DateTime<Utc>,
        request: SpooledRequest,
    ) -> Result<String, SpoolError> {
        let entry = Entry {
            id: uuid::Uuid::now_v7().to_string(),
            received_at,
            request,
        };
        let id = entry.id.clone();
        let inner = Arc::clone(&self.inner);
        // File writes and fsync block: off the async workers.
        let result = tokio::task::spawn_blocking(move || inner.journal().append(entry))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        self.inner.database_down.store(true, Ordering::Relaxed);
        match result {
            Ok(_) => {
                self.inner.writable.store(true, Ordering::Relaxed);
                self.inner.spooled.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(crate::telemetry::SPOOLED).increment(1);
                self.inner.wake.notify_one();
                tracing::warn!(spool_id = %id, "Database unavailable; request spooled.");
                Ok(id)
            }
            Err(source) => {
                self.inner.writable.store(false, Ordering::Relaxed);
                let error = SpoolError {
                    dir: self.inner.dir.clone(),
                    source,
                };
                tracing::error!(error = %error, "Request could not be spooled either.");
                Err(error)
            }
        }
    }

    /// A write to the database succeeded: the outage is over, and a drainer pausing on
    /// its backoff need not wait for it to end.
    pub fn database_ok(&self) {
        if self.inner.database_down.swap(false, Ordering::Relaxed) {
            self.inner.recovered.notify_waiters();
        }
    }

    /// Whether the last write to the database failed (and none succeeded since).
    pub fn database_down(&self) -> bool {
        self.inner.database_down.load(Ordering::Relaxed)
    }

    pub fn stats(&self) -> SpoolStats {
        let journal = self.inner.journal();
        SpoolStats {
            pending: journal.pending.len(),
            dead: journal.dead_count,
            damaged_segments: journal.damaged(),
            spooled_total: self.inner.spooled.load(Ordering::Relaxed),
            drained_total: self.inner.drained.load(Ordering::Relaxed),
            dead_total: self.inner.buried.load(Ordering::Relaxed),
            writable: self.inner.writable.load(Ordering::Relaxed),
            dir: self.inner.dir.display().to_string(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }
}

impl Inner {
    fn journal(&self) -> MutexGuard<'_, Journal> {
        // A panic while holding the lock leaves the journal as consistent as the files.
        self.journal.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests;
