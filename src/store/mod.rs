//! Storage: the embedded SQLite database, its migrations, the read side and the writer.
//!
//! One [`Store`] owns a small pool of read connections (WAL lets readers run beside the
//! writer) and a [`writer::WriterHandle`] to the single task that performs every write
//! (group commit; see `writer`). Anything acknowledged to a caller was committed with
//! `synchronous=FULL`, so a `kill -9` right after a 2xx loses nothing.

pub mod catalog;
pub mod writer;

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chrono::Utc;
use serde::Serialize;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{ConnectOptions, Row, SqliteConnection};

use crate::config::Settings;
use crate::domain::{ClickKeyRing, Reason};

/// A storage failure. Callers answer 503 `storage_unavailable`; the cause is logged once.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error")]
    Database(#[from] sqlx::Error),
    #[error("migration failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored data cannot be read: {0}")]
    Corrupt(String),
    #[error("cannot encode JSON")]
    Json(#[from] serde_json::Error),
    #[error("cannot create the database directory {path}")]
    Directory {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("click-ID keys are unusable")]
    Keys(#[from] crate::domain::click_id::KeyRingError),
    #[error("the writer has stopped")]
    WriterGone,
}

/// The database as the rest of postgate sees it.
#[derive(Clone)]
pub struct Store {
    read: SqlitePool,
    pub writer: writer::WriterHandle,
}

fn connect_options(url: &str) -> Result<SqliteConnectOptions, StoreError> {
    let options = SqliteConnectOptions::from_str(url)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        // FULL: the WAL is fsync'd at every commit, so an acknowledged write survives power
        // loss, not just a process crash.
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(Duration::from_secs(10))
        .foreign_keys(true)
        .log_statements(tracing::log::LevelFilter::Trace);
    if let Some(parent) = Path::new(options.get_filename()).parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent).map_err(|source| StoreError::Directory {
            path: parent.display().to_string(),
            source,
        })?;
    }
    Ok(options)
}

/// The connections of an open database.
pub struct Opened {
    /// The only connection that writes: owned by the writer task.
    pub writer: SqliteConnection,
    /// Readers for the API; WAL lets them run beside the writer.
    pub read: SqlitePool,
    /// Runs WAL checkpoints so the writer never stalls on one.
    pub checkpointer: SqliteConnection,
}

/// Opens (creating if needed) and migrates the database.
pub async fn open(url: &str) -> Result<Opened, StoreError> {
    let options = connect_options(url)?;
    let mut writer = options
        .clone()
        // The hot indexes stay in memory; 64 MiB is small next to what a gateway host has.
        .pragma("cache_size", "-65536")
        // Checkpoints run on their own connection (see `checkpoint_loop`); this only bounds
        // the WAL if that loop ever falls behind.
        .pragma("wal_autocheckpoint", "16384")
        // A multi-row INSERT keeps a statement journal so it can roll itself back; in memory,
        // not in a temp file written on every batch.
        .pragma("temp_store", "memory")
        // Multi-row inserts differ in text per batch size; keep them all prepared.
        .statement_cache_capacity(2048)
        .connect()
        .await?;
    sqlx::migrate!("./migrations/sqlite")
        .run(&mut writer)
        .await?;
    apalis_schema(&mut writer).await?;
    let checkpointer = options.clone().connect().await?;
    let read = SqlitePoolOptions::new()
        .max_connections(4)
        .min_connections(1)
        .connect_with(options.read_only(true))
        .await?;
    Ok(Opened {
        writer,
        read,
        checkpointer,
    })
}

/// apalis' tables (`Jobs`, `Workers`) in the same file, so the writer can enqueue a
/// conversion's deliveries in the conversion's own transaction.
///
/// Only apalis' migrator runs, never `SqliteStorage::setup`: that sets `synchronous=OFF` on
/// whatever connection it gets. Its migrations keep their own bookkeeping table — sharing
/// `_sqlx_migrations` would make ours fail with `VersionMissing`. The name must never change.
///
/// Then the planner gets statistics saying `lock_by` is unselective: without them apalis'
/// lock and ack statements scan every pending or finished job, and a backlog of 100 k drains
/// at under 100 jobs/s instead of thousands (measured in the pg-outbound research crate).
async fn apalis_schema(conn: &mut SqliteConnection) -> Result<(), StoreError> {
    let mut migrator = apalis_sqlite::SqliteStorage::<()>::migrations();
    migrator.dangerous_set_table_name("_apalis_migrations");
    migrator.run(&mut *conn).await?;
    // Planned on LIdx (lock_by), apalis' ack re-reads every job this worker ever finished on
    // each ack; without it, it goes by job id (docs/RELIABILITY.md, Findings).
    sqlx::query("DROP INDEX IF EXISTS LIdx")
        .execute(&mut *conn)
        .await?;
    sqlx::query("ANALYZE Jobs").execute(&mut *conn).await?;
    // Connections opened after this (readers, the worker's pool) load these statistics.
    sqlx::query(
        "DELETE FROM sqlite_stat1 WHERE tbl = 'Jobs' AND idx = 'LIdx';
         INSERT INTO sqlite_stat1 (tbl, idx, stat) VALUES ('Jobs', 'LIdx', '1000000 500000');",
    )
    .execute(&mut *conn)
    .await?;
    sqlx::query("ANALYZE sqlite_schema")
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// A small writable pool (admin actions on deliveries, the CLI). Its writes are short
/// transactions that wait for the group-commit writer via busy_timeout; `synchronous=FULL`.
pub async fn worker_pool(url: &str, max_connections: u32) -> Result<SqlitePool, StoreError> {
    Ok(SqlitePoolOptions::new()
        .max_connections(max_connections)
        .connect_with(connect_options(url)?)
        .await?)
}

/// The delivery worker's pool: like [`worker_pool`] but with `synchronous=NORMAL`, which
/// saves the fsync of each attempt record and apalis ack (about half the worker's cost).
///
/// Safe because nothing the worker writes is acknowledged to anyone and every loss is
/// recoverable: in WAL mode a power loss drops only a suffix of commits, so a lost attempt
/// record loses its job's ack too and the job re-runs (one more HTTP attempt; receivers
/// dedupe on the stable webhook-id), and a lost retry loses the ack of the attempt that
/// pushed it. The jobs themselves were committed with FULL by the writer.
pub async fn delivery_pool(url: &str, max_connections: u32) -> Result<SqlitePool, StoreError> {
    Ok(SqlitePoolOptions::new()
        .max_connections(max_connections)
        .connect_with(connect_options(url)?.synchronous(SqliteSynchronous::Normal))
        .await?)
}

/// Copies committed WAL frames into the database file every `every`, off the writer's path.
/// PASSIVE never blocks the writer or readers; it does what it can and tries again.
pub async fn checkpoint_loop(mut conn: SqliteConnection, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .execute(&mut conn)
            .await
        {
            tracing::warn!(error = %writer::error_chain(&e), "WAL checkpoint failed.");
        }
    }
}

/// The click-ID key ring: from the configuration, or generated once and kept in the database.
pub async fn click_keys(
    conn: &mut SqliteConnection,
    settings: &Settings,
) -> Result<ClickKeyRing, StoreError> {
    if let Some(active) = settings.click_ids.active {
        return Ok(ClickKeyRing::new(
            active,
            settings.click_ids.keys.iter().cloned(),
        )?);
    }
    let rows = sqlx::query("SELECT id, secret FROM click_keys ORDER BY id")
        .fetch_all(&mut *conn)
        .await?;
    let mut keys = Vec::new();
    for row in rows {
        let id: i64 = row.try_get("id")?;
        let secret: String = row.try_get("secret")?;
        let id = u8::try_from(id).map_err(|_| StoreError::Corrupt(format!("click key id {id}")))?;
        let bytes = STANDARD
            .decode(secret)
            .map_err(|_| StoreError::Corrupt(format!("click key {id}")))?;
        keys.push((id, bytes));
    }
    if keys.is_empty() {
        let mut secret = [0u8; 32];
        rand::fill(&mut secret);
        sqlx::query("INSERT INTO click_keys (id, secret, created_at) VALUES (1, $1, $2)")
            .bind(STANDARD.encode(secret))
            .bind(Utc::now().timestamp_millis())
            .execute(&mut *conn)
            .await?;
        tracing::info!(
            key_id = 1,
            "Generated a click-ID key and stored it in the database."
        );
        keys.push((1, secret.to_vec()));
    }
    let active = keys.iter().map(|(id, _)| *id).max().unwrap_or(1);
    Ok(ClickKeyRing::new(active, keys)?)
}

/// A conversion as the read API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ConversionView {
    pub id: String,
    pub created_at: String,
    pub updated_at: String,
    pub source: String,
    pub source_event_id: Option<String>,
    pub offer_id: Option<i64>,
    pub affiliate_id: Option<i64>,
    pub goal: Option<String>,
    pub click_id: Option<String>,
    pub transaction_id: Option<String>,
    pub status: String,
    pub decision: String,
    pub reasons: Vec<Reason>,
    pub amount: Option<String>,
    pub currency: Option<String>,
    pub fx_rate: Option<String>,
    pub network_currency: Option<String>,
    pub network_amount: Option<String>,
    pub payout: Option<String>,
    pub revenue: Option<String>,
    pub attributes: serde_json::Value,
}

const CONVERSION_COLUMNS: &str = "id, created_at, updated_at, source, source_event_id, offer_id,
    affiliate_id, goal, click_id, transaction_id, status, decision, reasons, amount_minor, currency,
    fx_rate, network_currency, network_amount_minor, payout_minor, revenue_minor, attributes";

impl Store {
    pub fn new(read: SqlitePool, writer: writer::WriterHandle) -> Self {
        Self { read, writer }
    }

    /// Whether a read succeeds and the writer is running.
    pub async fn ready(&self) -> bool {
        !self.writer.is_closed() && sqlx::query("SELECT 1").execute(&self.read).await.is_ok()
    }

    pub async fn conversion(&self, id: &str) -> Result<Option<ConversionView>, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {CONVERSION_COLUMNS} FROM conversions WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.read)
        .await?;
        row.map(|r| conversion_view(&r)).transpose()
    }

    pub async fn conversions_by_click(
        &self,
        click_id: &str,
        limit: i64,
    ) -> Result<Vec<ConversionView>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {CONVERSION_COLUMNS} FROM conversions WHERE click_id = $1
             ORDER BY created_at, id LIMIT $2"
        )))
        .bind(click_id)
        .bind(limit)
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(conversion_view).collect()
    }

    pub async fn balances(&self) -> Result<Vec<crate::ledger::Balance>, StoreError> {
        let mut conn = self.read.acquire().await?;
        crate::ledger::balances(&mut conn).await
    }

    /// The number of click rows, for tests and the demo.
    pub async fn click_count(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM clicks")
            .fetch_one(&self.read)
            .await?)
    }
}

fn conversion_view(row: &sqlx::sqlite::SqliteRow) -> Result<ConversionView, StoreError> {
    use crate::domain::{Currency, Money};
    let ms = |col: &str| -> Result<String, StoreError> {
        let v: i64 = row.try_get(col)?;
        Ok(chrono::DateTime::from_timestamp_millis(v)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
            .unwrap_or_default())
    };
    let money = |minor_col: &str, cur: &Option<String>| -> Result<Option<String>, StoreError> {
        let minor: Option<i64> = row.try_get(minor_col)?;
        Ok(
            match (minor, cur.as_deref().and_then(|c| Currency::parse(c).ok())) {
                (Some(m), Some(c)) => Some(Money::from_minor(m, c).to_decimal().to_string()),
                _ => None,
            },
        )
    };
    let currency: Option<String> = row.try_get("currency")?;
    let network_currency: Option<String> = row.try_get("network_currency")?;
    Ok(ConversionView {
        id: row.try_get("id")?,
        created_at: ms("created_at")?,
        updated_at: ms("updated_at")?,
        source: row.try_get("source")?,
        source_event_id: row.try_get("source_event_id")?,
        offer_id: row.try_get("offer_id")?,
        affiliate_id: row.try_get("affiliate_id")?,
        goal: row.try_get("goal")?,
        click_id: row.try_get("click_id")?,
        transaction_id: row.try_get("transaction_id")?,
        status: row.try_get("status")?,
        decision: row.try_get("decision")?,
        reasons: serde_json::from_str(&row.try_get::<String, _>("reasons")?)?,
        amount: money("amount_minor", &currency)?,
        fx_rate: row.try_get("fx_rate")?,
        network_amount: money("network_amount_minor", &network_currency)?,
        payout: money("payout_minor", &network_currency)?,
        revenue: money("revenue_minor", &network_currency)?,
        attributes: serde_json::from_str(&row.try_get::<String, _>("attributes")?)?,
        currency,
        network_currency,
    })
}
