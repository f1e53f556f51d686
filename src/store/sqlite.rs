//! The SQLite backend: one file in WAL mode, one writer connection, readers beside it.
//!
//! Everything acknowledged is committed with `synchronous=FULL`. apalis' tables live in the
//! same file, so the writer enqueues a conversion's deliveries in the conversion's own
//! transaction.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{ConnectOptions, SqliteConnection};

use super::{Builder, Db, Opened, StoreError};

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
        // The writer's ingest batches are cached by text, one per shape (mostly the number
        // of items): 128 holds a busy gateway's common shapes; each costs a few hundred KiB
        // of SQLite's memory (about 20 MiB in the postback benchmark), so the bound matters.
        .statement_cache_capacity(128)
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
        writer: Db::Sqlite(writer),
        read: Db::Sqlite(read),
        checkpointer: Some(checkpointer),
    })
}

/// apalis' tables (`Jobs`, `Workers`) in the same file, so the writer can enqueue a
/// conversion's deliveries in the conversion's own transaction.
///
/// Only apalis' migrator runs, never `SqliteStorage::setup`: that sets `synchronous=OFF` on
/// whatever connection it gets. Its migrations keep their own bookkeeping table — sharing
/// `_sqlx_migrations` would make ours fail with `VersionMissing`. The name must never change.
///
/// Then apalis' `lock_by` index goes: planned on it, apalis' ack re-reads every job its
/// worker ever finished, on every ack, and a retried backlog of 100 k drained slower and
/// slower (224/s down to 89/s); by job id it drains at about 2 000/s. None of apalis'
/// statements needs it (docs/RELIABILITY.md, Findings).
async fn apalis_schema(conn: &mut SqliteConnection) -> Result<(), StoreError> {
    let mut migrator = apalis_sqlite::SqliteStorage::<()>::migrations();
    migrator.dangerous_set_table_name("_apalis_migrations");
    migrator.run(&mut *conn).await?;
    sqlx::query("DROP INDEX IF EXISTS LIdx")
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

/// Runs the statements `push` appends (each terminated by `;`) as one `BEGIN IMMEDIATE …
/// COMMIT` multi-statement query: one hop to the connection's thread. On failure whatever ran
/// is rolled back.
pub async fn commit_statements(
    conn: &mut SqliteConnection,
    push: impl FnOnce(&mut Builder),
) -> Result<(), StoreError> {
    let mut qb: Builder = Db::Sqlite(sqlx::QueryBuilder::new("BEGIN IMMEDIATE;\n"));
    push(&mut qb);
    let Db::Sqlite(mut qb) = qb else {
        return Err(StoreError::Corrupt(
            "query built for the other backend".into(),
        ));
    };
    qb.push("COMMIT;");
    if let Err(error) = qb.build().persistent(false).execute(&mut *conn).await {
        let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
        return Err(error.into());
    }
    Ok(())
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
            tracing::warn!(error = %super::writer::error_chain(&e), "WAL checkpoint failed.");
        }
    }
}
