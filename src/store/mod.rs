//! Storage: the database, its migrations, the read side and the writer.
//!
//! Two backends behind one interface: embedded SQLite (the zero-set-up default; see
//! [`sqlite`]) and PostgreSQL for several gateways on one database (see [`postgres`]). The
//! URL picks one. Code that runs SQL holds a [`Db`] of pools or connections and writes each
//! query once inside [`db!`], which compiles it for both; the few statements that differ
//! (apalis' job table, locking reads, SQLite's pragmas) branch on the variant.
//!
//! One [`Store`] owns a pool for reads and a [`writer::WriterHandle`] to the task that
//! performs every ingest write (group commit; see `writer`). Anything acknowledged to a
//! caller was committed durably first (`synchronous=FULL` on SQLite, synchronous commit on
//! PostgreSQL), so a `kill -9` right after a 2xx loses nothing.

pub mod catalog;
pub mod postgres;
pub mod sqlite;
pub mod writer;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chrono::Utc;
use serde::Serialize;
use sqlx::{PgConnection, PgPool, Postgres, QueryBuilder, Sqlite, SqliteConnection, SqlitePool};

use crate::config::Settings;
use crate::domain::{ClickKeyRing, Reason};

/// One value per backend. [`db!`] runs the same code on whichever it holds.
#[derive(Debug, Clone)]
pub enum Db<S, P> {
    Sqlite(S),
    Postgres(P),
}

/// Runs `$body` with `$name` bound to the backend value inside `$value` (a [`Db`]); the body
/// is compiled once per backend, so it may use each backend's concrete sqlx types.
#[macro_export]
macro_rules! db {
    ($value:expr, $name:ident => $body:expr) => {
        match $value {
            $crate::store::Db::Sqlite($name) => $body,
            $crate::store::Db::Postgres($name) => $body,
        }
    };
}

/// Which rows an insert that depends on another table's rows keeps.
#[derive(Debug, Clone, Copy)]
pub enum Guard {
    /// Every row.
    All,
    /// Rows whose parent row exists (it may have been skipped as a duplicate earlier in the
    /// same round trip).
    ParentExists,
}

/// A connection pool of either backend.
pub type Pool = Db<SqlitePool, PgPool>;
/// A borrowed connection (or open transaction) of either backend.
pub type Conn<'a> = Db<&'a mut SqliteConnection, &'a mut PgConnection>;
/// A query being built for either backend.
pub type Builder = Db<QueryBuilder<Sqlite>, QueryBuilder<Postgres>>;

impl<'a> Conn<'a> {
    /// An empty query builder for this connection's backend.
    pub fn builder(&self) -> Builder {
        match self {
            Db::Sqlite(_) => Db::Sqlite(QueryBuilder::new("")),
            Db::Postgres(_) => Db::Postgres(QueryBuilder::new("")),
        }
    }

    /// Runs a built statement (one statement: PostgreSQL prepares what it runs).
    pub async fn execute(&mut self, builder: Builder) -> Result<u64, StoreError> {
        let affected = match (self, builder) {
            (Db::Sqlite(c), Db::Sqlite(mut q)) => q
                .build()
                .persistent(false)
                .execute(&mut **c)
                .await?
                .rows_affected(),
            (Db::Postgres(c), Db::Postgres(mut q)) => q
                .build()
                .persistent(false)
                .execute(&mut **c)
                .await?
                .rows_affected(),
            _ => {
                return Err(StoreError::Corrupt(
                    "query built for the other backend".into(),
                ));
            }
        };
        Ok(affected)
    }
}

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
    #[error("the writer could not commit this (it logged why)")]
    NotCommitted,
    #[error("unsupported database URL scheme {0:?}: use sqlite:<path> or postgres://…")]
    Url(String),
}

impl StoreError {
    /// Whether retrying the same transaction may succeed: PostgreSQL aborted it to break a
    /// deadlock (40P01) or a serialization conflict (40001) with another writer.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Database(sqlx::Error::Database(db))
            if db.code().is_some_and(|c| c == "40P01" || c == "40001"))
    }

    /// Whether the database could not be reached at all (as opposed to refusing this write):
    /// connection failures, timeouts waiting for a connection, a server shutting down or
    /// refusing connections, or — SQLite — another process holding the write lock for the
    /// whole busy timeout (`SQLITE_BUSY` and its extended codes).
    pub fn is_unavailable(&self) -> bool {
        let Self::Database(e) = self else {
            return false;
        };
        match e {
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => true,
            // SQLSTATE 08: connection exception; 57P0x: admin/crash shutdown, cannot connect
            // now; 55000 is what a database refusing connections (ALLOW_CONNECTIONS) says.
            // PostgreSQL's SQLSTATEs have five characters, SQLite's codes are numbers.
            sqlx::Error::Database(db) => db.code().is_some_and(|c| {
                c.starts_with("08")
                    || c.starts_with("57P")
                    || c == "55000"
                    || matches!(&*c, "5" | "261" | "517" | "773")
            }),
            _ => false,
        }
    }
}

/// The database as the rest of postgate sees it.
#[derive(Clone)]
pub struct Store {
    read: Pool,
    pub writer: writer::WriterHandle,
}

/// The connections of an open database.
pub struct Opened {
    /// What the writer writes with: SQLite's only write connection, or a pool of
    /// PostgreSQL connections shared by the writer tasks.
    pub writer: Db<SqliteConnection, PgPool>,
    /// Readers for the API.
    pub read: Pool,
    /// SQLite only: runs WAL checkpoints so the writer never stalls on one.
    pub checkpointer: Option<SqliteConnection>,
}

/// Opens (creating if needed) and migrates the database `url` names: `sqlite:<path>` or
/// `postgres://…` (with `writers` connections for the writer tasks; SQLite has one).
pub async fn open(url: &str, writers: u32) -> Result<Opened, StoreError> {
    match backend_of(url)? {
        Backend::Sqlite => sqlite::open(url).await,
        Backend::Postgres => postgres::open(url, writers).await,
    }
}

/// Which backend a database URL selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The part of a database URL before its first `:`, for messages: the rest may hold a
/// password.
pub fn scheme_of(url: &str) -> &str {
    url.split(':').next().unwrap_or_default()
}

pub fn backend_of(url: &str) -> Result<Backend, StoreError> {
    if url.starts_with("sqlite:") {
        Ok(Backend::Sqlite)
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Backend::Postgres)
    } else {
        Err(StoreError::Url(scheme_of(url).to_owned()))
    }
}

/// A small writable pool (admin actions on deliveries, the CLI).
pub async fn worker_pool(url: &str, max_connections: u32) -> Result<Pool, StoreError> {
    Ok(match backend_of(url)? {
        Backend::Sqlite => Db::Sqlite(sqlite::worker_pool(url, max_connections).await?),
        Backend::Postgres => Db::Postgres(postgres::pool(url, max_connections).await?),
    })
}

/// The delivery worker's pool (on SQLite with `synchronous=NORMAL`; see there).
pub async fn delivery_pool(url: &str, max_connections: u32) -> Result<Pool, StoreError> {
    Ok(match backend_of(url)? {
        Backend::Sqlite => Db::Sqlite(sqlite::delivery_pool(url, max_connections).await?),
        Backend::Postgres => Db::Postgres(postgres::pool(url, max_connections).await?),
    })
}

/// The click-ID key ring: from the configuration, or generated once and kept in the database
/// (where every gateway on the same database finds the same keys).
pub async fn click_keys(
    conn: &mut Conn<'_>,
    settings: &Settings,
) -> Result<ClickKeyRing, StoreError> {
    if let Some(active) = settings.click_ids.active {
        return Ok(ClickKeyRing::new(
            active,
            settings.click_ids.keys.iter().cloned(),
        )?);
    }
    let mut keys = stored_click_keys(conn).await?;
    if keys.is_empty() {
        let mut secret = [0u8; 32];
        rand::fill(&mut secret);
        // Gateways starting together race here; the first key stored wins for all.
        let inserted = db!(conn, c => sqlx::query(
            "INSERT INTO click_keys (id, secret, created_at) VALUES (1, $1, $2)
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(STANDARD.encode(secret))
        .bind(Utc::now().timestamp_millis())
        .execute(&mut **c)
        .await?
        .rows_affected());
        if inserted == 1 {
            tracing::info!(
                key_id = 1,
                "Generated a click-ID key and stored it in the database."
            );
        }
        keys = stored_click_keys(conn).await?;
    }
    let active = keys.iter().map(|(id, _)| *id).max().unwrap_or(1);
    Ok(ClickKeyRing::new(active, keys)?)
}

async fn stored_click_keys(conn: &mut Conn<'_>) -> Result<Vec<(u8, Vec<u8>)>, StoreError> {
    let rows: Vec<(i64, String)> = db!(conn, c => {
        sqlx::query_as("SELECT id, secret FROM click_keys ORDER BY id")
            .fetch_all(&mut **c)
            .await?
    });
    let mut keys = Vec::new();
    for (id, secret) in rows {
        let id = u8::try_from(id).map_err(|_| StoreError::Corrupt(format!("click key id {id}")))?;
        let bytes = STANDARD
            .decode(secret)
            .map_err(|_| StoreError::Corrupt(format!("click key {id}")))?;
        keys.push((id, bytes));
    }
    Ok(keys)
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
    pub fn new(read: Pool, writer: writer::WriterHandle) -> Self {
        Self { read, writer }
    }

    /// Whether a read succeeds and the writer is running.
    pub async fn ready(&self) -> bool {
        !self.writer.is_closed()
            && db!(&self.read, p => sqlx::query("SELECT 1").execute(p).await.is_ok())
    }

    pub async fn conversion(&self, id: &str) -> Result<Option<ConversionView>, StoreError> {
        let sql = format!("SELECT {CONVERSION_COLUMNS} FROM conversions WHERE id = $1");
        let row: Option<ConversionRow> = db!(&self.read, p => {
            sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(id)
                .fetch_optional(p)
                .await?
        });
        row.map(ConversionRow::into_view).transpose()
    }

    pub async fn conversions_by_click(
        &self,
        click_id: &str,
        limit: i64,
    ) -> Result<Vec<ConversionView>, StoreError> {
        let sql = format!(
            "SELECT {CONVERSION_COLUMNS} FROM conversions WHERE click_id = $1
             ORDER BY created_at, id LIMIT $2"
        );
        let rows: Vec<ConversionRow> = db!(&self.read, p => {
            sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(click_id)
                .bind(limit)
                .fetch_all(p)
                .await?
        });
        rows.into_iter().map(ConversionRow::into_view).collect()
    }

    pub async fn balances(&self) -> Result<Vec<crate::ledger::Balance>, StoreError> {
        db!(&self.read, p => {
            let mut c = p.acquire().await?;
            crate::ledger::balances(&mut Conn::from(&mut *c)).await
        })
    }

    /// The number of click rows, for tests and the demo.
    pub async fn click_count(&self) -> Result<i64, StoreError> {
        Ok(db!(&self.read, p => {
            sqlx::query_scalar("SELECT COUNT(*) FROM clicks")
                .fetch_one(p)
                .await?
        }))
    }
}

impl<'a> From<&'a mut SqliteConnection> for Conn<'a> {
    fn from(c: &'a mut SqliteConnection) -> Self {
        Db::Sqlite(c)
    }
}

impl<'a> From<&'a mut PgConnection> for Conn<'a> {
    fn from(c: &'a mut PgConnection) -> Self {
        Db::Postgres(c)
    }
}

/// A conversion row as stored.
#[derive(sqlx::FromRow)]
struct ConversionRow {
    id: String,
    created_at: i64,
    updated_at: i64,
    source: String,
    source_event_id: Option<String>,
    offer_id: Option<i64>,
    affiliate_id: Option<i64>,
    goal: Option<String>,
    click_id: Option<String>,
    transaction_id: Option<String>,
    status: String,
    decision: String,
    reasons: String,
    amount_minor: Option<i64>,
    currency: Option<String>,
    fx_rate: Option<String>,
    network_currency: Option<String>,
    network_amount_minor: Option<i64>,
    payout_minor: Option<i64>,
    revenue_minor: Option<i64>,
    attributes: String,
}

impl ConversionRow {
    fn into_view(self) -> Result<ConversionView, StoreError> {
        use crate::domain::{Currency, Money};
        let ms = |v: i64| {
            chrono::DateTime::from_timestamp_millis(v)
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
                .unwrap_or_default()
        };
        let money = |minor: Option<i64>, cur: &Option<String>| match (
            minor,
            cur.as_deref().and_then(|c| Currency::parse(c).ok()),
        ) {
            (Some(m), Some(c)) => Some(Money::from_minor(m, c).to_decimal().to_string()),
            _ => None,
        };
        Ok(ConversionView {
            amount: money(self.amount_minor, &self.currency),
            network_amount: money(self.network_amount_minor, &self.network_currency),
            payout: money(self.payout_minor, &self.network_currency),
            revenue: money(self.revenue_minor, &self.network_currency),
            id: self.id,
            created_at: ms(self.created_at),
            updated_at: ms(self.updated_at),
            source: self.source,
            source_event_id: self.source_event_id,
            offer_id: self.offer_id,
            affiliate_id: self.affiliate_id,
            goal: self.goal,
            click_id: self.click_id,
            transaction_id: self.transaction_id,
            status: self.status,
            decision: self.decision,
            reasons: serde_json::from_str(&self.reasons)?,
            fx_rate: self.fx_rate,
            attributes: serde_json::from_str(&self.attributes)?,
            currency: self.currency,
            network_currency: self.network_currency,
        })
    }
}

#[cfg(test)]
mod tests {
    use sqlx::Connection as _;
    use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};

    use super::StoreError;

    #[tokio::test]
    async fn sqlite_locked_past_its_busy_timeout_counts_as_unavailable() {
        let dir = tempfile::tempdir().expect("dir");
        let options = SqliteConnectOptions::new()
            .filename(dir.path().join("t.db"))
            .create_if_missing(true)
            .busy_timeout(std::time::Duration::from_millis(50));
        let mut holder = SqliteConnection::connect_with(&options)
            .await
            .expect("open");
        sqlx::query("CREATE TABLE t (x)")
            .execute(&mut holder)
            .await
            .expect("table");
        sqlx::query("BEGIN EXCLUSIVE")
            .execute(&mut holder)
            .await
            .expect("lock");
        let mut writer = SqliteConnection::connect_with(&options)
            .await
            .expect("open");
        let error = sqlx::query("INSERT INTO t VALUES (1)")
            .execute(&mut writer)
            .await
            .expect_err("locked");
        assert!(StoreError::from(error).is_unavailable());

        // A write the database refuses for its own reasons is not an outage.
        sqlx::query("COMMIT")
            .execute(&mut holder)
            .await
            .expect("unlock");
        let error = sqlx::query("INSERT INTO missing VALUES (1)")
            .execute(&mut writer)
            .await
            .expect_err("no such table");
        assert!(!StoreError::from(error).is_unavailable());
    }
}
