//! The double-entry payout ledger.
//!
//! Postings are append-only rows `(conversion, kind, account, currency, amount)`, debit
//! positive and credit negative, written in the same transaction as the conversion they
//! belong to. Every conversion's postings sum to zero per currency; a reversal appends the
//! negation of what the conversion posted. Balances are sums over postings, never stored.
//!
//! Accounts: `advertiser:<id>:receivable` (what the advertiser owes the network),
//! `affiliate:<id>:payable` (what the network owes the affiliate) and `network:margin`.

use serde::Serialize;

use crate::domain::{Currency, Money};
use crate::store::{Builder, Conn, Guard, StoreError};

/// Why postings exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PostingKind {
    Conversion,
    Reversal,
}

impl PostingKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Conversion => "conversion",
            Self::Reversal => "reversal",
        }
    }
}

/// One ledger line, not yet written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Posting {
    pub conversion_id: String,
    pub kind: PostingKind,
    pub account: String,
    pub currency: String,
    pub amount_minor: i64,
}

pub fn advertiser_account(key: &str) -> String {
    format!("advertiser:{key}:receivable")
}

pub fn affiliate_account(key: &str) -> String {
    format!("affiliate:{key}:payable")
}

pub const MARGIN_ACCOUNT: &str = "network:margin";

/// The postings of an approved conversion: bill the advertiser `revenue`, owe the affiliate
/// `payout`, keep the difference. Zero lines are left out; the rest sum to zero.
pub fn conversion_postings(
    conversion_id: &str,
    advertiser_key: &str,
    affiliate_key: &str,
    payout: Money,
    revenue: Money,
) -> Vec<Posting> {
    debug_assert_eq!(payout.currency, revenue.currency);
    let currency = revenue.currency.code().to_owned();
    [
        (advertiser_account(advertiser_key), revenue.minor),
        (affiliate_account(affiliate_key), -payout.minor),
        (MARGIN_ACCOUNT.to_owned(), payout.minor - revenue.minor),
    ]
    .into_iter()
    .filter(|(_, amount)| *amount != 0)
    .map(|(account, amount_minor)| Posting {
        conversion_id: conversion_id.to_owned(),
        kind: PostingKind::Conversion,
        account,
        currency: currency.clone(),
        amount_minor,
    })
    .collect()
}

/// Rows per multi-row insert (6 binds each).
const INSERT_CHUNK: usize = 2000;

/// Appends postings, one multi-row statement per [`INSERT_CHUNK`] lines.
pub async fn insert(
    conn: &mut Conn<'_>,
    postings: &[Posting],
    now_ms: i64,
) -> Result<(), StoreError> {
    for chunk in postings.chunks(INSERT_CHUNK) {
        let mut qb = conn.builder();
        push_insert(&mut qb, chunk, now_ms, Guard::All);
        conn.execute(qb).await?;
    }
    Ok(())
}

/// Lines per statement, for callers that batch statements themselves.
pub const CHUNK: usize = INSERT_CHUNK;

/// Appends one `INSERT INTO ledger_postings` statement (no terminator) for `postings` (at
/// most [`CHUNK`]). `guard` decides which lines are kept: with a guard, a line is written
/// only if its conversion was written — so postings can ride in the same round trip as
/// conversion inserts that may have been skipped as duplicates.
pub fn push_insert(qb: &mut Builder, postings: &[Posting], now_ms: i64, guard: Guard) {
    crate::db!(qb, qb => {
        qb.push(
            "INSERT INTO ledger_postings (conversion_id, kind, account, currency, amount_minor, created_at) ",
        );
        if !matches!(guard, Guard::All) {
            // VALUES columns are named column1..columnN in both SQLite and PostgreSQL.
            qb.push(
                "SELECT v.column1, v.column2, v.column3, v.column4, v.column5, v.column6 FROM (",
            );
        }
        qb.push_values(postings, |mut b, p| {
            b.push_bind(p.conversion_id.clone())
                .push_bind(p.kind.as_str())
                .push_bind(p.account.clone())
                .push_bind(p.currency.clone())
                .push_bind(p.amount_minor)
                .push_bind(now_ms);
        });
        match guard {
            Guard::All => {}
            Guard::ParentExists => {
                qb.push(") AS v WHERE EXISTS (SELECT 1 FROM conversions c WHERE c.id = v.column1)");
            }
        }
    })
}

/// PostgreSQL: [`push_insert`] with one array parameter per column, keeping the lines whose
/// conversion the `WITH` query `cte` inserted.
pub fn push_insert_unnest(
    qb: &mut sqlx::QueryBuilder<sqlx::Postgres>,
    postings: &[Posting],
    now_ms: i64,
    cte: &str,
) {
    qb.push(
        "INSERT INTO ledger_postings (conversion_id, kind, account, currency, amount_minor,
            created_at) SELECT v.conversion_id, v.kind, v.account, v.currency, v.amount_minor, ",
    );
    qb.push_bind(now_ms);
    qb.push(" FROM UNNEST(");
    let mut list = qb.separated(", ");
    list.push_bind(
        postings
            .iter()
            .map(|p| p.conversion_id.clone())
            .collect::<Vec<_>>(),
    )
    .push_unseparated("::text[]");
    list.push_bind(
        postings
            .iter()
            .map(|p| p.kind.as_str().to_owned())
            .collect::<Vec<_>>(),
    )
    .push_unseparated("::text[]");
    list.push_bind(
        postings
            .iter()
            .map(|p| p.account.clone())
            .collect::<Vec<_>>(),
    )
    .push_unseparated("::text[]");
    list.push_bind(
        postings
            .iter()
            .map(|p| p.currency.clone())
            .collect::<Vec<_>>(),
    )
    .push_unseparated("::text[]");
    list.push_bind(postings.iter().map(|p| p.amount_minor).collect::<Vec<_>>())
        .push_unseparated("::int8[]");
    qb.push(") AS v(conversion_id, kind, account, currency, amount_minor)")
        .push(" WHERE v.conversion_id IN (SELECT id FROM ")
        .push(cte)
        .push(")");
}

/// The negation of everything a conversion has posted so far, so that after it the
/// conversion's net is zero on every account.
pub async fn reversal_postings(
    conn: &mut Conn<'_>,
    conversion_id: &str,
) -> Result<Vec<Posting>, StoreError> {
    // CAST: PostgreSQL's SUM of BIGINT is NUMERIC.
    let rows: Vec<(String, String, i64)> = crate::db!(conn, c => {
        sqlx::query_as(
            "SELECT account, currency, CAST(SUM(amount_minor) AS BIGINT) AS net
             FROM ledger_postings WHERE conversion_id = $1
             GROUP BY account, currency ORDER BY account",
        )
        .bind(conversion_id)
        .fetch_all(&mut **c)
        .await?
    });
    Ok(rows
        .into_iter()
        .filter(|(_, _, net)| *net != 0)
        .map(|(account, currency, net)| Posting {
            conversion_id: conversion_id.to_owned(),
            kind: PostingKind::Reversal,
            account,
            currency,
            amount_minor: -net,
        })
        .collect())
}

/// One account's balance in one currency.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Balance {
    pub account: String,
    pub currency: String,
    /// Exact decimal string in major units, e.g. "15.00".
    pub amount: String,
    /// The same in minor units. Wider than one posting: a sum of many.
    pub amount_minor: i128,
}

/// All balances, derived from the postings.
///
/// A sum of 64-bit postings can leave 64 bits (SQLite stops with "integer overflow", and
/// PostgreSQL's cast back to BIGINT fails), so each amount is summed in two parts — its
/// billions and its remainder, each far from overflowing — and joined exactly in 128 bits.
pub async fn balances(conn: &mut Conn<'_>) -> Result<Vec<Balance>, StoreError> {
    let rows: Vec<(String, String, i64, i64)> = crate::db!(conn, c => {
        sqlx::query_as(
            "SELECT account, currency,
                CAST(SUM(amount_minor / 1000000000) AS BIGINT) AS high,
                CAST(SUM(amount_minor % 1000000000) AS BIGINT) AS low
             FROM ledger_postings GROUP BY account, currency ORDER BY account, currency",
        )
        .fetch_all(&mut **c)
        .await?
    });
    rows.into_iter()
        .map(|(account, currency, high, low)| {
            // Both backends divide toward zero and give the remainder the dividend's sign.
            let total = i128::from(high) * 1_000_000_000 + i128::from(low);
            let amount = Currency::parse(&currency)
                .map_err(|e| e.to_string())
                .and_then(|c| {
                    rust_decimal::Decimal::try_from_i128_with_scale(total, c.exponent())
                        .map_err(|e| e.to_string())
                })
                .map_err(StoreError::Corrupt)?
                .to_string();
            Ok(Balance {
                account,
                currency,
                amount,
                amount_minor: total,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversion_postings_balance_and_skip_zero_lines() {
        let usd = Currency::parse("USD").expect("usd");
        let lines = conversion_postings(
            "c1",
            "adv",
            "aff",
            Money::from_minor(1500, usd),
            Money::from_minor(4999, usd),
        );
        assert_eq!(lines.len(), 3);
        assert_eq!(lines.iter().map(|p| p.amount_minor).sum::<i64>(), 0);
        assert_eq!(lines[0].amount_minor, 4999);
        assert_eq!(lines[1].amount_minor, -1500);
        assert_eq!(lines[2].amount_minor, -3499);

        let even = conversion_postings(
            "c2",
            "adv",
            "aff",
            Money::from_minor(1500, usd),
            Money::from_minor(1500, usd),
        );
        assert_eq!(even.len(), 2, "no zero margin line");
        assert_eq!(even.iter().map(|p| p.amount_minor).sum::<i64>(), 0);
    }
}
