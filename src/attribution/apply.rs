//! Applying a batch of [`Decision`]s inside one transaction: dedupe, status transitions,
//! ledger postings.
//!
//! Input: decisions in arrival order and an open transaction. Output: one [`Receipt`] per
//! decision, in the same order. Side effects: conversion rows inserted or updated, postings
//! appended. Nothing commits here; the writer commits once for the whole batch.
//!
//! The fast path is one multi-row `INSERT … ON CONFLICT DO NOTHING RETURNING id` for every new
//! conversion in the batch, then one multi-row insert of postings: a few statements per
//! batch rather than per request. Rows the insert skipped collided with an earlier conversion
//! on a dedupe key (`txn_key`, `click_goal_key`), possibly one earlier in the same batch; they
//! and reversals take the slow path, one at a time, in arrival order, so a status update
//! always sees the row it updates. Uniqueness is enforced by the database, not by memory,
//! so it holds across processes too.

use std::collections::HashSet;

use chrono::{DateTime, Utc};

use super::{Decision, TIME_RULES};
use crate::domain::{Reason, ReasonCode, Receipt, Status, Verdict};
use crate::ledger::{self, Posting};
use crate::outbound::NewDelivery;
use crate::outbound::enqueue;
use crate::store::{Builder, Conn, Db, StoreError};

/// Rows per multi-row insert (28 binds each, well under SQLite's 32 766 and PostgreSQL's
/// 65 535).
const INSERT_CHUNK: usize = 500;

/// Applies `decisions` in order; see the module docs.
pub async fn apply_batch(
    conn: &mut Conn<'_>,
    decisions: &[&Decision],
    now: DateTime<Utc>,
) -> Result<Vec<Receipt>, StoreError> {
    let now_ms = now.timestamp_millis();
    let fresh: Vec<&Decision> = decisions.iter().copied().filter(|d| is_fresh(d)).collect();
    let inserted = insert_new(conn, &fresh, now_ms).await?;

    let mut receipts = Vec::with_capacity(decisions.len());
    let mut postings: Vec<Posting> = Vec::new();
    let mut deliveries: Vec<NewDelivery> = Vec::new();
    for d in decisions {
        let receipt = if inserted.contains(d.conversion_id.as_str()) {
            postings.extend(postings_for_new(d));
            deliveries.extend(deliveries_for_new(d));
            own_receipt(d)
        } else {
            // Postings so far must be visible to the slow path's reads (a reversal of a
            // conversion approved earlier in this batch negates them).
            ledger::insert(conn, &postings, now_ms).await?;
            postings.clear();
            resolve_existing(conn, d, now_ms).await?
        };
        receipts.push(receipt);
    }
    ledger::insert(conn, &postings, now_ms).await?;
    enqueue::insert(conn, &deliveries, now_ms).await?;
    Ok(receipts)
}

/// The deliveries a freshly inserted decision brings: an accepted conversion is announced
/// to every subscribed endpoint; a rejected one to none.
pub fn deliveries_for_new(d: &Decision) -> Vec<NewDelivery> {
    if d.is_rejected() {
        return Vec::new();
    }
    d.postbacks
        .iter()
        .map(|endpoint| {
            NewDelivery::new(
                &d.conversion_id,
                endpoint,
                d.affiliate_id,
                d.offer_id,
                d.status.as_str(),
            )
        })
        .collect()
}

/// The deliveries announcing that the existing conversion `e` became `status`. Subscriptions
/// are judged on the stored row (its affiliate, offer and goal), so an update that carried
/// only a transaction ID is announced too.
fn deliveries_for_change(e: &Existing, d: &Decision, status: Status) -> Vec<NewDelivery> {
    let (Some(aff), Some(offer), Some(goal)) = (&e.affiliate_key, &e.offer_key, &e.goal) else {
        return Vec::new();
    };
    d.postback_rules
        .get(aff)
        .and_then(|p| p.select(offer, goal, status.as_str()))
        .map(|rule| {
            NewDelivery::new(
                &e.id,
                &rule.endpoint.id,
                e.affiliate_id,
                e.offer_id,
                status.as_str(),
            )
        })
        .into_iter()
        .collect()
}

/// Whether a decision can go through the fast path: a new row, not a status update.
pub fn is_fresh(d: &Decision) -> bool {
    !d.is_update_only() && (d.status != Status::Reversed || d.is_rejected())
}

/// The postings a freshly inserted decision brings: an accepted approval pays out at once.
pub fn postings_for_new(d: &Decision) -> Vec<Posting> {
    match (
        d.is_rejected(),
        d.status,
        d.amounts,
        d.affiliate_key.as_deref(),
    ) {
        (false, Status::Approved, Some(a), Some(aff)) => ledger::conversion_postings(
            &d.conversion_id,
            &d.advertiser_key,
            aff,
            a.payout,
            a.revenue,
        ),
        _ => Vec::new(),
    }
}

/// The receipt of a decision whose row was inserted as is.
pub fn own_receipt(d: &Decision) -> Receipt {
    if d.is_rejected() {
        Receipt {
            status: Verdict::Rejected,
            conversion_id: Some(d.conversion_id.clone()),
            reasons: d.rejections.iter().chain(&d.flags).cloned().collect(),
        }
    } else {
        Receipt {
            status: Verdict::Accepted,
            conversion_id: Some(d.conversion_id.clone()),
            reasons: d.flags.clone(),
        }
    }
}

/// Rows per conversion insert, for callers that batch statements themselves.
pub const CHUNK: usize = INSERT_CHUNK;

/// A conversion row as inserted, from a fresh decision.
struct Row {
    id: String,
    source: String,
    source_event_id: Option<String>,
    advertiser_id: i64,
    offer_id: Option<i64>,
    affiliate_id: Option<i64>,
    goal: Option<String>,
    click_id: Option<String>,
    clicked_at: Option<i64>,
    transaction_id: Option<String>,
    status: &'static str,
    decision: &'static str,
    reasons: String,
    amount_minor: Option<i64>,
    currency: Option<&'static str>,
    fx_rate: Option<String>,
    network_currency: Option<&'static str>,
    network_amount_minor: Option<i64>,
    payout_minor: Option<i64>,
    revenue_minor: Option<i64>,
    occurred_at: Option<i64>,
    attributes: String,
    txn_key: Option<String>,
    click_goal_key: Option<String>,
    event_key: Option<String>,
    raw_request_id: Option<String>,
}

impl Row {
    fn of(d: &Decision) -> Result<Self, StoreError> {
        let reasons: Vec<&Reason> = d.rejections.iter().chain(&d.flags).collect();
        let a = d.amounts;
        let keys = d.holds_dedupe_keys();
        Ok(Row {
            id: d.conversion_id.clone(),
            source: d.source.clone(),
            source_event_id: d.source_event_id.clone(),
            advertiser_id: d.advertiser_id,
            offer_id: d.offer_id,
            affiliate_id: d.affiliate_id,
            goal: d.goal.clone(),
            click_id: d.click_id.clone(),
            clicked_at: d.clicked_at.map(|t| t.timestamp_millis()),
            transaction_id: d.transaction_id.clone(),
            status: if d.is_rejected() {
                Status::Rejected.as_str()
            } else {
                d.status.as_str()
            },
            decision: if d.is_rejected() {
                "rejected"
            } else {
                "accepted"
            },
            reasons: serde_json::to_string(&reasons)?,
            amount_minor: a.map(|a| a.amount.minor),
            currency: a.map(|a| a.amount.currency.code()),
            fx_rate: a.map(|a| a.fx_rate.to_string()),
            network_currency: a.map(|a| a.network_amount.currency.code()),
            network_amount_minor: a.map(|a| a.network_amount.minor),
            payout_minor: a.map(|a| a.payout.minor),
            revenue_minor: a.map(|a| a.revenue.minor),
            occurred_at: d.occurred_at.map(|t| t.timestamp_millis()),
            attributes: serde_json::to_string(&d.attributes)?,
            txn_key: d.txn_key.clone().filter(|_| keys),
            click_goal_key: d.click_goal_key.clone().filter(|_| keys),
            event_key: d.event_key.clone().filter(|_| keys),
            raw_request_id: d.raw_request_id.clone(),
        })
    }
}

const CONVERSION_INSERT: &str = "INSERT INTO conversions (id, created_at, updated_at, source,
    source_event_id, advertiser_id, offer_id, affiliate_id, goal, click_id, clicked_at,
    transaction_id, status, decision, reasons, amount_minor, currency, fx_rate, network_currency,
    network_amount_minor, payout_minor, revenue_minor, occurred_at, attributes, txn_key,
    click_goal_key, event_key, raw_request_id) ";

/// Appends one `INSERT INTO conversions … ON CONFLICT DO NOTHING` statement (no terminator)
/// for `decisions` (at most [`CHUNK`]). A row that collides on a dedupe key is skipped, not
/// an error.
pub fn push_insert_conversions(
    qb: &mut Builder,
    decisions: &[&Decision],
    now_ms: i64,
) -> Result<(), StoreError> {
    let rows = decisions
        .iter()
        .map(|d| Row::of(d))
        .collect::<Result<Vec<_>, _>>()?;
    crate::db!(qb, qb => {
        qb.push(CONVERSION_INSERT);
        qb.push_values(rows, |mut b, r| {
            b.push_bind(r.id)
                .push_bind(now_ms)
                .push_bind(now_ms)
                .push_bind(r.source)
                .push_bind(r.source_event_id)
                .push_bind(r.advertiser_id)
                .push_bind(r.offer_id)
                .push_bind(r.affiliate_id)
                .push_bind(r.goal)
                .push_bind(r.click_id)
                .push_bind(r.clicked_at)
                .push_bind(r.transaction_id)
                .push_bind(r.status)
                .push_bind(r.decision)
                .push_bind(r.reasons)
                .push_bind(r.amount_minor)
                .push_bind(r.currency)
                .push_bind(r.fx_rate)
                .push_bind(r.network_currency)
                .push_bind(r.network_amount_minor)
                .push_bind(r.payout_minor)
                .push_bind(r.revenue_minor)
                .push_bind(r.occurred_at)
                .push_bind(r.attributes)
                .push_bind(r.txn_key)
                .push_bind(r.click_goal_key)
                .push_bind(r.event_key)
                .push_bind(r.raw_request_id);
        });
        qb.push(" ON CONFLICT DO NOTHING");
    });
    Ok(())
}

/// PostgreSQL: the same insert as [`push_insert_conversions`] with one array parameter per
/// column (`SELECT … FROM UNNEST(…)`), for any number of rows. Thousands of scalar
/// parameters cost PostgreSQL more to plan than the insert itself (measured: 92 ms for a
/// 61-row batch, 12 ms as arrays).
pub fn push_insert_conversions_unnest(
    qb: &mut sqlx::QueryBuilder<sqlx::Postgres>,
    decisions: &[&Decision],
    now_ms: i64,
) -> Result<(), StoreError> {
    let rows = decisions
        .iter()
        .map(|d| Row::of(d))
        .collect::<Result<Vec<_>, _>>()?;
    let col = |f: fn(&Row) -> Option<String>| rows.iter().map(f).collect::<Vec<_>>();
    let int = |f: fn(&Row) -> Option<i64>| rows.iter().map(f).collect::<Vec<_>>();
    qb.push(CONVERSION_INSERT);
    qb.push("SELECT v.id, ");
    qb.push_bind(now_ms);
    qb.push(", ");
    qb.push_bind(now_ms);
    qb.push(
        ", v.source, v.source_event_id, v.advertiser_id,
        v.offer_id, v.affiliate_id, v.goal, v.click_id, v.clicked_at, v.transaction_id,
        v.status, v.decision, v.reasons, v.amount_minor, v.currency, v.fx_rate,
        v.network_currency, v.network_amount_minor, v.payout_minor, v.revenue_minor,
        v.occurred_at, v.attributes, v.txn_key, v.click_goal_key, v.event_key, v.raw_request_id
        FROM UNNEST(",
    );
    let mut list = qb.separated(", ");
    list.push_bind(col(|r| Some(r.id.clone())))
        .push_unseparated("::text[]");
    list.push_bind(col(|r| Some(r.source.clone())))
        .push_unseparated("::text[]");
    list.push_bind(col(|r| r.source_event_id.clone()))
        .push_unseparated("::text[]");
    list.push_bind(int(|r| Some(r.advertiser_id)))
        .push_unseparated("::int8[]");
    list.push_bind(int(|r| r.offer_id))
        .push_unseparated("::int8[]");
    list.push_bind(int(|r| r.affiliate_id))
        .push_unseparated("::int8[]");
    list.push_bind(col(|r| r.goal.clone()))
        .push_unseparated("::text[]");
    list.push_bind(col(|r| r.click_id.clone()))
        .push_unseparated("::text[]");
    list.push_bind(int(|r| r.clicked_at))
        .push_unseparated("::int8[]");
    list.push_bind(col(|r| r.transaction_id.clone()))
        .push_unseparated("::text[]");
    list.push_bind(col(|r| Some(r.status.to_owned())))
        .push_unseparated("::text[]");
    list.push_bind(col(|r| Some(r.decision.to_owned())))
        .push_unseparated("::text[]");
    list.push_bind(col(|r| Some(r.reasons.clone())))
        .push_unseparated("::text[]");
    list.push_bind(int(|r| r.amount_minor))
        .push_unseparated("::int8[]");
    list.push_bind(col(|r| r.currency.map(str::to_owned)))
        .push_unseparated("::text[]");
    list.push_bind(col(|r| r.fx_rate.clone()))
        .push_unseparated("::text[]");
    list.push_bind(col(|r| r.network_currency.map(str::to_owned)))
        .push_unseparated("::text[]");
    list.push_bind(int(|r| r.network_amount_minor))
        .push_unseparated("::int8[]");
    list.push_bind(int(|r| r.payout_minor))
        .push_unseparated("::int8[]");
    list.push_bind(int(|r| r.revenue_minor))
        .push_unseparated("::int8[]");
    list.push_bind(int(|r| r.occurred_at))
        .push_unseparated("::int8[]");
    list.push_bind(col(|r| Some(r.attributes.clone())))
        .push_unseparated("::text[]");
    list.push_bind(col(|r| r.txn_key.clone()))
        .push_unseparated("::text[]");
    list.push_bind(col(|r| r.click_goal_key.clone()))
        .push_unseparated("::text[]");
    list.push_bind(col(|r| r.event_key.clone()))
        .push_unseparated("::text[]");
    list.push_bind(col(|r| r.raw_request_id.clone()))
        .push_unseparated("::text[]");
    qb.push(
        ") AS v(id, source, source_event_id, advertiser_id, offer_id, affiliate_id, goal,
            click_id, clicked_at, transaction_id, status, decision, reasons, amount_minor,
            currency, fx_rate, network_currency, network_amount_minor, payout_minor,
            revenue_minor, occurred_at, attributes, txn_key, click_goal_key, event_key,
            raw_request_id) ON CONFLICT DO NOTHING",
    );
    Ok(())
}

/// Of `ids`, those that exist as conversions.
pub async fn existing_ids(
    conn: &mut Conn<'_>,
    ids: impl Iterator<Item = &str>,
) -> Result<HashSet<String>, StoreError> {
    let ids: Vec<&str> = ids.collect();
    let mut found = HashSet::with_capacity(ids.len());
    for chunk in ids.chunks(INSERT_CHUNK) {
        let rows: Vec<(String,)> = crate::db!(conn, c => {
            let mut qb = sqlx::QueryBuilder::new("SELECT id FROM conversions WHERE id IN (");
            let mut list = qb.separated(", ");
            for id in chunk {
                list.push_bind(id.to_string());
            }
            qb.push(")");
            qb.build_query_as().persistent(false).fetch_all(&mut **c).await?
        });
        found.extend(rows.into_iter().map(|(id,)| id));
    }
    Ok(found)
}

/// Inserts the decisions as new conversion rows; returns the ids that were inserted.
async fn insert_new(
    conn: &mut Conn<'_>,
    decisions: &[&Decision],
    now_ms: i64,
) -> Result<HashSet<String>, StoreError> {
    let mut affected = 0;
    for chunk in decisions.chunks(INSERT_CHUNK) {
        let mut qb = conn.builder();
        push_insert_conversions(&mut qb, chunk, now_ms)?;
        affected += conn.execute(qb).await?;
    }
    if affected == decisions.len() as u64 {
        // The common case: no collisions.
        return Ok(decisions.iter().map(|d| d.conversion_id.clone()).collect());
    }
    existing_ids(conn, decisions.iter().map(|d| d.conversion_id.as_str())).await
}

/// The conversion an incoming decision collides with.
struct Existing {
    id: String,
    status: Status,
    rejected: bool,
    advertiser_key: Option<String>,
    affiliate_key: Option<String>,
    payout_minor: Option<i64>,
    revenue_minor: Option<i64>,
    network_currency: Option<String>,
    offer_id: Option<i64>,
    affiliate_id: Option<i64>,
    offer_key: Option<String>,
    goal: Option<String>,
    by: ReasonCode,
}

const EXISTING_SELECT: &str = "SELECT c.id, c.status, c.decision, c.payout_minor, c.revenue_minor,
        c.network_currency, c.offer_id, c.affiliate_id, c.goal, adv.key AS advertiser_key,
        aff.key AS affiliate_key, off.key AS offer_key
    FROM conversions c
    LEFT JOIN advertisers adv ON adv.id = c.advertiser_id
    LEFT JOIN affiliates aff ON aff.id = c.affiliate_id
    LEFT JOIN offers off ON off.id = c.offer_id";

/// What [`EXISTING_SELECT`] reads.
#[derive(sqlx::FromRow)]
struct ExistingRow {
    id: String,
    status: String,
    decision: String,
    payout_minor: Option<i64>,
    revenue_minor: Option<i64>,
    network_currency: Option<String>,
    offer_id: Option<i64>,
    affiliate_id: Option<i64>,
    goal: Option<String>,
    advertiser_key: Option<String>,
    affiliate_key: Option<String>,
    offer_key: Option<String>,
}

async fn find_existing(conn: &mut Conn<'_>, d: &Decision) -> Result<Option<Existing>, StoreError> {
    let mut lookups: Vec<(&str, &String, ReasonCode)> = Vec::new();
    if let Some(k) = &d.event_key {
        lookups.push(("event_key", k, ReasonCode::DuplicateEvent));
    }
    if let Some(k) = &d.txn_key {
        lookups.push(("txn_key", k, ReasonCode::DuplicateTransaction));
    }
    if let Some(k) = &d.click_goal_key {
        lookups.push(("click_goal_key", k, ReasonCode::DuplicateClickGoal));
    }
    for k in &d.txn_candidates {
        lookups.push(("txn_key", k, ReasonCode::DuplicateTransaction));
    }
    // On PostgreSQL another gateway may change the same row concurrently: lock it, and read
    // its latest committed version, before deciding a transition. SQLite has one writer.
    let lock = match conn {
        Db::Sqlite(_) => "",
        Db::Postgres(_) => " FOR UPDATE OF c",
    };
    for (column, key, by) in lookups {
        let sql = format!("{EXISTING_SELECT} WHERE c.{column} = $1{lock}");
        let row: Option<ExistingRow> = crate::db!(conn, c => {
            sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(key)
                .fetch_optional(&mut **c)
                .await?
        });
        if let Some(row) = row {
            return Ok(Some(Existing {
                status: Status::parse(&row.status).ok_or_else(|| {
                    StoreError::Corrupt(format!("conversion status {}", row.status))
                })?,
                rejected: row.decision == "rejected",
                id: row.id,
                advertiser_key: row.advertiser_key,
                affiliate_key: row.affiliate_key,
                offer_id: row.offer_id,
                affiliate_id: row.affiliate_id,
                offer_key: row.offer_key,
                goal: row.goal,
                payout_minor: row.payout_minor,
                revenue_minor: row.revenue_minor,
                network_currency: row.network_currency,
                by,
            }));
        }
    }
    Ok(None)
}

/// The slow path: a decision that collided with an earlier conversion, or a reversal.
async fn resolve_existing(
    conn: &mut Conn<'_>,
    d: &Decision,
    now_ms: i64,
) -> Result<Receipt, StoreError> {
    let Some(e) = find_existing(conn, d).await? else {
        if d.status == Status::Reversed || d.is_update_only() {
            // Record the unmatched reversal so it is not lost; it holds no dedupe key, so
            // the conversion it refers to can still arrive (out-of-order delivery).
            let mut unmatched = d.clone();
            unmatched.txn_key = None;
            unmatched.click_goal_key = None;
            unmatched.rejections.push(Reason::new(
                ReasonCode::UnknownTransaction,
                if d.is_update_only() {
                    "no click ID was sent and no conversion matches this transaction"
                } else {
                    "no conversion matches this reversal's transaction or click"
                },
            ));
            insert_new(conn, &[&unmatched], now_ms).await?;
            return Ok(own_receipt(&unmatched));
        }
        return Err(StoreError::Corrupt(format!(
            "conversion {} collided on no known key",
            d.conversion_id
        )));
    };

    let duplicate = |e: &Existing| Receipt {
        status: Verdict::Duplicate,
        conversion_id: Some(e.id.clone()),
        reasons: vec![Reason::new(
            e.by,
            match e.by {
                ReasonCode::DuplicateTransaction => {
                    "this transaction was already recorded for the offer"
                }
                ReasonCode::DuplicateEvent => "this event was already received",
                _ => "this click already converted on this goal",
            },
        )],
    };
    // Time-based rejections do not apply to a status update of a conversion that already
    // passed them (an approval may come after the conversion window closed).
    let structural_rejection = d.rejections.iter().any(|r| !TIME_RULES.contains(&r.code));
    // A redelivered event is a duplicate whatever has happened to its conversion since.
    if e.rejected
        || structural_rejection
        || d.status == e.status
        || e.by == ReasonCode::DuplicateEvent
    {
        return Ok(duplicate(&e));
    }

    match (e.status, d.status) {
        (Status::Pending, Status::Approved) => {
            let (payout, revenue, currency, amount) = match (d.amount_reported, d.amounts) {
                (true, Some(a)) => (
                    Some(a.payout.minor),
                    Some(a.revenue.minor),
                    Some(a.payout.currency.code().to_owned()),
                    Some(a),
                ),
                _ => (
                    e.payout_minor,
                    e.revenue_minor,
                    e.network_currency.clone(),
                    None,
                ),
            };
            crate::db!(conn, c => {
                sqlx::query(
                    "UPDATE conversions SET status = 'approved', updated_at = $2,
                        payout_minor = $3, revenue_minor = $4,
                        amount_minor = COALESCE($5, amount_minor), currency = COALESCE($6, currency),
                        fx_rate = COALESCE($7, fx_rate),
                        network_amount_minor = COALESCE($8, network_amount_minor)
                     WHERE id = $1",
                )
                .bind(&e.id)
                .bind(now_ms)
                .bind(payout)
                .bind(revenue)
                .bind(amount.map(|a| a.amount.minor))
                .bind(amount.map(|a| a.amount.currency.code()))
                .bind(amount.map(|a| a.fx_rate.to_string()))
                .bind(amount.map(|a| a.network_amount.minor))
                .execute(&mut **c)
                .await?;
            });
            if let (Some(p), Some(r), Some(c), Some(adv), Some(aff)) = (
                payout,
                revenue,
                currency.and_then(|c| crate::domain::Currency::parse(&c).ok()),
                e.advertiser_key.as_deref(),
                e.affiliate_key.as_deref(),
            ) {
                let lines = ledger::conversion_postings(
                    &e.id,
                    adv,
                    aff,
                    crate::domain::Money::from_minor(p, c),
                    crate::domain::Money::from_minor(r, c),
                );
                ledger::insert(conn, &lines, now_ms).await?;
            }
            enqueue::insert(conn, &deliveries_for_change(&e, d, d.status), now_ms).await?;
            Ok(transitioned(&e, d))
        }
        (Status::Pending, Status::Rejected) | (Status::Pending, Status::Reversed) => {
            set_status(conn, &e.id, d.status, now_ms).await?;
            enqueue::insert(conn, &deliveries_for_change(&e, d, d.status), now_ms).await?;
            Ok(transitioned(&e, d))
        }
        (Status::Approved, Status::Reversed) => {
            set_status(conn, &e.id, Status::Reversed, now_ms).await?;
            let lines = ledger::reversal_postings(conn, &e.id).await?;
            ledger::insert(conn, &lines, now_ms).await?;
            enqueue::insert(
                conn,
                &deliveries_for_change(&e, d, Status::Reversed),
                now_ms,
            )
            .await?;
            Ok(transitioned(&e, d))
        }
        (from, to) => Ok(Receipt {
            status: Verdict::Rejected,
            conversion_id: Some(e.id.clone()),
            reasons: vec![Reason::new(
                ReasonCode::InvalidTransition,
                format!(
                    "conversion {} is {}; it cannot become {}",
                    e.id,
                    from.as_str(),
                    to.as_str()
                ),
            )],
        }),
    }
}

/// The answer to a status change of `e` by `d`: accepted, with `d`'s flags (say, a reversal
/// whose reported amount could not be recorded).
fn transitioned(e: &Existing, d: &Decision) -> Receipt {
    Receipt {
        status: Verdict::Accepted,
        conversion_id: Some(e.id.clone()),
        reasons: d.flags.clone(),
    }
}

async fn set_status(
    conn: &mut Conn<'_>,
    id: &str,
    status: Status,
    now_ms: i64,
) -> Result<(), StoreError> {
    crate::db!(conn, c => {
        sqlx::query("UPDATE conversions SET status = $2, updated_at = $3 WHERE id = $1")
            .bind(id)
            .bind(status.as_str())
            .bind(now_ms)
            .execute(&mut **c)
            .await?;
    });
    Ok(())
}
