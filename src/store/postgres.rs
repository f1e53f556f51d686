//! The PostgreSQL backend: for several gateways on one database.
//!
//! Every table of the SQLite backend, with the same names and columns (integers are
//! `BIGINT`), plus apalis-postgres' queue in the `apalis` schema. Commits are synchronous
//! (the server default), so an acknowledged write is on the server's disk. Invariants that
//! must hold across gateways (one conversion per transaction, per click and goal, per event)
//! are unique indexes; a status change locks its row (`FOR UPDATE`) before reading it.

use std::str::FromStr;
use std::time::Duration;

use sqlx::ConnectOptions;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use super::{Db, Opened, StoreError};

fn connect_options(url: &str) -> Result<PgConnectOptions, StoreError> {
    Ok(PgConnectOptions::from_str(url)?
        .application_name("postgate")
        .log_statements(tracing::log::LevelFilter::Trace))
}

fn pool_options(max_connections: u32) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(max_connections)
        // A write waits this long for a connection before its request goes to the spool
        // (202 queued); a database that is down fails fast instead of holding handlers.
        .acquire_timeout(Duration::from_secs(3))
}

/// Connects and migrates. Gateways starting together are safe: sqlx's migrator holds an
/// advisory lock while it runs.
///
/// `writers` is the number of writer tasks (`[writer] connections`): each commits its own
/// batches on its own connection, so while one waits for its commit to be flushed, the
/// others fill the next batches.
pub async fn open(url: &str, writers: u32) -> Result<Opened, StoreError> {
    let options = connect_options(url)?;
    let read = pool_options(8).connect_with(options.clone()).await?;
    sqlx::migrate!("./migrations/postgres").run(&read).await?;
    // apalis keeps its own bookkeeping table, as on SQLite: sharing `_sqlx_migrations`
    // would make each migrator fail on the other's versions.
    let mut migrator = apalis_postgres::PostgresStorage::<()>::migrations();
    migrator.dangerous_set_table_name("_apalis_migrations");
    migrator.run(&read).await?;
    // Lazy: its connections are opened by the writer tasks, on the writer's own runtime
    // (see `writer::spawn`); the read pool has already proven the server is there.
    let writer = pool_options(writers).connect_lazy_with(options);
    Ok(Opened {
        writer: Db::Postgres(writer),
        read: Db::Postgres(read),
        checkpointer: None,
    })
}

/// A pool for the delivery worker, the admin API or the CLI.
pub async fn pool(url: &str, max_connections: u32) -> Result<PgPool, StoreError> {
    Ok(pool_options(max_connections)
        .connect_with(connect_options(url)?)
        .await?)
}
