//! Enqueueing deliveries inside the transaction that records the conversion.
//!
//! Contract
//! - Input: [`NewDelivery`] rows (built by `attribution::apply` from a `Decision`'s
//!   subscribed endpoints) and an open transaction or a query being built.
//! - Output: SQL statements that insert each delivery row and the apalis job of its first
//!   attempt, both only if the conversion row exists — so they can ride in the writer's single
//!   round trip beside conversion inserts that may be skipped as duplicates (like postings).
//! - Errors: only the database's. Side effects: rows in `deliveries` and apalis' `Jobs`.
//!
//! The job insert mirrors each apalis backend's own `push_tasks` (`queries/task/sink.sql` of
//! apalis-sqlite 1.0 and apalis-postgres 1.0): JSON args, a ULID id, `job_type` = [`QUEUE`],
//! `Pending`, the run time, empty metadata and an idempotency key. Plain SQL lets one
//! statement cover a whole batch, inside the caller's transaction.

use crate::store::{Builder, Conn, Db, Guard};

use super::job::{DeliveryJob, INFRA_ATTEMPTS, QUEUE};
use crate::store::StoreError;

/// A delivery to create: one endpoint told about one conversion status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDelivery {
    pub id: String,
    pub conversion_id: String,
    pub endpoint: String,
    pub affiliate_id: Option<i64>,
    pub offer_id: Option<i64>,
    pub status: &'static str,
}

impl NewDelivery {
    pub fn new(
        conversion_id: &str,
        endpoint: &str,
        affiliate_id: Option<i64>,
        offer_id: Option<i64>,
        status: &'static str,
    ) -> Self {
        Self {
            id: uuid::Uuid::now_v7().to_string(),
            conversion_id: conversion_id.to_owned(),
            endpoint: endpoint.to_owned(),
            affiliate_id,
            offer_id,
            status,
        }
    }
}

/// Rows per statement (8 binds a delivery, 5 a job), for callers that batch statements.
pub const CHUNK: usize = 1000;

/// Appends one delivery insert (no terminator) for `rows` (at most [`CHUNK`]); `guard` is on
/// each delivery's conversion.
pub fn push_deliveries(qb: &mut Builder, rows: &[NewDelivery], now_ms: i64, guard: Guard) {
    crate::db!(qb, qb => {
        qb.push(
            "INSERT INTO deliveries (id, conversion_id, endpoint, affiliate_id, offer_id, status,
                state, series, attempts, series_started_at, next_attempt_at, created_at, updated_at)
             SELECT v.column1, v.column2, v.column3, v.column4, v.column5, v.column6, 'pending',
                1, 0, v.column7, v.column7, v.column8, v.column8 FROM (",
        );
        qb.push_values(rows, |mut b, d| {
            b.push_bind(d.id.clone())
                .push_bind(d.conversion_id.clone())
                .push_bind(d.endpoint.clone())
                .push_bind(d.affiliate_id)
                .push_bind(d.offer_id)
                .push_bind(d.status)
                .push_bind(now_ms)
                .push_bind(now_ms);
        });
        qb.push(") AS v");
        match guard {
            Guard::All => {}
            Guard::ParentExists => {
                qb.push(" WHERE EXISTS (SELECT 1 FROM conversions c WHERE c.id = v.column2)");
            }
        }
    })
}

/// Appends the insert of the first-attempt jobs of `rows` (no terminator), each due at its
/// `run_at` (unix seconds, one per row); `guard` is on each job's delivery.
pub fn push_first_jobs(qb: &mut Builder, rows: &[NewDelivery], run_at: &[i64], guard: Guard) {
    let jobs: Vec<(DeliveryJob, i64, String)> = rows
        .iter()
        .zip(run_at)
        .map(|(d, &at)| {
            let job = DeliveryJob::first(&d.id, 1);
            let key = job.idempotency_key();
            (job, at, key)
        })
        .collect();
    push_keyed(qb, &jobs, guard);
}

/// Appends one job insert (no terminator) for `jobs` (job, run_at unix seconds, idempotency
/// key). A job whose key is already queued is skipped.
pub fn push_keyed(qb: &mut Builder, jobs: &[(DeliveryJob, i64, String)], guard: Guard) {
    match qb {
        Db::Sqlite(qb) => {
            qb.push(
                "INSERT INTO Jobs (job, id, job_type, status, attempts, max_attempts, run_at,
                    last_result, lock_at, lock_by, done_at, priority, metadata, idempotency_key)
                 SELECT v.column1, v.column2, ",
            );
            qb.push_bind(QUEUE);
            qb.push(", 'Pending', 0, ");
            qb.push_bind(INFRA_ATTEMPTS);
            qb.push(", v.column3, NULL, NULL, NULL, NULL, 0, '{}', v.column4 FROM (");
        }
        Db::Postgres(qb) => {
            qb.push(
                "INSERT INTO apalis.jobs (job, id, job_type, status, attempts, max_attempts,
                    run_at, priority, metadata, idempotency_key)
                 SELECT v.column1, v.column2, ",
            );
            qb.push_bind(QUEUE);
            qb.push(", 'Pending', 0, ");
            qb.push_bind(INFRA_ATTEMPTS as i32);
            qb.push(", to_timestamp(v.column3), 0, ''::hstore, v.column4 FROM (");
        }
    }
    crate::db!(qb, qb => {
        qb.push_values(jobs, |mut b, (job, run_at, key)| {
            b.push_bind(job.encode())
                .push_bind(ulid::Ulid::generate().to_string())
                .push_bind(*run_at)
                .push_bind(key.clone())
                .push_bind(job.delivery_id.clone());
        });
        // A WHERE clause is needed anyway: without one SQLite reads ON CONFLICT as a join
        // constraint.
        match guard {
            Guard::All => qb.push(") AS v WHERE true"),
            Guard::ParentExists => {
                qb.push(") AS v WHERE EXISTS (SELECT 1 FROM deliveries d WHERE d.id = v.column5)")
            }
        };
        qb.push(" ON CONFLICT (job_type, idempotency_key) DO NOTHING");
    })
}

/// PostgreSQL: [`push_deliveries`] with one array parameter per column, keeping the
/// deliveries whose conversion the `WITH` query `cte` inserted; `RETURNING id` for the jobs.
pub fn push_deliveries_unnest(
    qb: &mut sqlx::QueryBuilder<sqlx::Postgres>,
    rows: &[NewDelivery],
    now_ms: i64,
    cte: &str,
) {
    qb.push(
        "INSERT INTO deliveries (id, conversion_id, endpoint, affiliate_id, offer_id, status,
            state, series, attempts, series_started_at, next_attempt_at, created_at, updated_at)
         SELECT v.id, v.conversion_id, v.endpoint, v.affiliate_id, v.offer_id, v.status,
            'pending', 1, 0, v.at, v.at, v.at, v.at FROM UNNEST(",
    );
    let mut list = qb.separated(", ");
    list.push_bind(rows.iter().map(|d| d.id.clone()).collect::<Vec<_>>())
        .push_unseparated("::text[]");
    list.push_bind(
        rows.iter()
            .map(|d| d.conversion_id.clone())
            .collect::<Vec<_>>(),
    )
    .push_unseparated("::text[]");
    list.push_bind(rows.iter().map(|d| d.endpoint.clone()).collect::<Vec<_>>())
        .push_unseparated("::text[]");
    list.push_bind(rows.iter().map(|d| d.affiliate_id).collect::<Vec<_>>())
        .push_unseparated("::int8[]");
    list.push_bind(rows.iter().map(|d| d.offer_id).collect::<Vec<_>>())
        .push_unseparated("::int8[]");
    list.push_bind(rows.iter().map(|d| d.status.to_owned()).collect::<Vec<_>>())
        .push_unseparated("::text[]");
    list.push_bind(vec![now_ms; rows.len()])
        .push_unseparated("::int8[]");
    qb.push(") AS v(id, conversion_id, endpoint, affiliate_id, offer_id, status, at)")
        .push(" WHERE v.conversion_id IN (SELECT id FROM ")
        .push(cte)
        .push(") RETURNING id");
}

/// PostgreSQL: [`push_first_jobs`] with array parameters, keeping the jobs whose delivery
/// the `WITH` query `cte` inserted. Mirrors apalis-postgres' own `push_tasks`, which also
/// inserts from `UNNEST`.
pub fn push_first_jobs_unnest(
    qb: &mut sqlx::QueryBuilder<sqlx::Postgres>,
    rows: &[NewDelivery],
    run_at: &[i64],
    cte: &str,
) {
    let jobs: Vec<DeliveryJob> = rows.iter().map(|d| DeliveryJob::first(&d.id, 1)).collect();
    qb.push(
        "INSERT INTO apalis.jobs (job, id, job_type, status, attempts, max_attempts, run_at,
            priority, metadata, idempotency_key)
         SELECT v.job, v.id, ",
    );
    qb.push_bind(QUEUE);
    qb.push(", 'Pending', 0, ");
    qb.push_bind(INFRA_ATTEMPTS as i32);
    qb.push(", to_timestamp(v.run_at), 0, ''::hstore, v.key FROM UNNEST(");
    let mut list = qb.separated(", ");
    list.push_bind(jobs.iter().map(DeliveryJob::encode).collect::<Vec<_>>())
        .push_unseparated("::bytea[]");
    list.push_bind(
        jobs.iter()
            .map(|_| ulid::Ulid::generate().to_string())
            .collect::<Vec<_>>(),
    )
    .push_unseparated("::text[]");
    list.push_bind(
        jobs.iter()
            .map(DeliveryJob::idempotency_key)
            .collect::<Vec<_>>(),
    )
    .push_unseparated("::text[]");
    list.push_bind(
        jobs.iter()
            .map(|j| j.delivery_id.clone())
            .collect::<Vec<_>>(),
    )
    .push_unseparated("::text[]");
    list.push_bind(run_at.to_vec()).push_unseparated("::int8[]");
    qb.push(") AS v(job, id, key, delivery_id, run_at)")
        .push(" WHERE v.delivery_id IN (SELECT id FROM ")
        .push(cte)
        .push(") ON CONFLICT (job_type, idempotency_key) DO NOTHING");
}

/// Inserts deliveries and their first jobs on `conn` (inside the caller's transaction).
pub async fn insert(
    conn: &mut Conn<'_>,
    rows: &[NewDelivery],
    now_ms: i64,
) -> Result<(), StoreError> {
    for chunk in rows.chunks(CHUNK) {
        let mut qb = conn.builder();
        push_deliveries(&mut qb, chunk, now_ms, Guard::All);
        conn.execute(qb).await?;
        let mut qb = conn.builder();
        push_first_jobs(
            &mut qb,
            chunk,
            &vec![now_ms / 1000; chunk.len()],
            Guard::All,
        );
        conn.execute(qb).await?;
    }
    Ok(())
}

/// Pushes one job (a retry or a replay's first attempt) on `conn`.
pub async fn push_job(
    conn: &mut Conn<'_>,
    job: DeliveryJob,
    run_at_unix: i64,
) -> Result<(), StoreError> {
    let key = job.idempotency_key();
    push_job_keyed(conn, job, run_at_unix, key).await
}

/// Pushes one job under an explicit idempotency key (an attempt put back while its endpoint
/// was at its concurrency cap, or a replay's first attempt).
pub async fn push_job_keyed(
    conn: &mut Conn<'_>,
    job: DeliveryJob,
    run_at_unix: i64,
    key: String,
) -> Result<(), StoreError> {
    let mut qb = conn.builder();
    push_keyed(&mut qb, &[(job, run_at_unix, key)], Guard::ParentExists);
    conn.execute(qb).await?;
    Ok(())
}
