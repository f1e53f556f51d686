//! The ledger: balanced postings, reversals, exact currency conversion.

use std::collections::HashMap;

use crate::helpers::{ACME_TOKEN, spawn_app};

/// Sum of all balances per currency: zero in a double-entry ledger.
async fn totals(app: &crate::helpers::TestApp) -> HashMap<String, i64> {
    let mut totals = HashMap::new();
    for (_, currency, amount) in app.balances().await {
        *totals.entry(currency).or_insert(0) += amount;
    }
    totals
}

#[tokio::test]
async fn click_to_credited_conversion_writes_a_balanced_ledger() {
    let app = spawn_app().await;
    for (aff, payout) in [("aff1", "100.00"), ("aff2", "7.50"), ("aff1", "0")] {
        let click = app.click("shoes", aff).await;
        let (_, body) = app
            .postback(&[
                ("token", ACME_TOKEN),
                ("click_id", &click),
                ("payout", payout),
            ])
            .await;
        assert_eq!(body["status"], "accepted", "{body}");
    }
    assert_eq!(app.balance("advertiser:acme:receivable").await, 10_750);
    assert_eq!(app.balance("affiliate:aff1:payable").await, -3_000);
    assert_eq!(app.balance("affiliate:aff2:payable").await, -1_500);
    assert_eq!(app.balance("network:margin").await, -(10_750 - 4_500));
    // Margin is a credit balance: -(revenue - payout).
    assert_eq!(totals(&app).await.get("USD"), Some(&0));
}

#[tokio::test]
async fn a_reversal_posts_compensating_entries_and_is_not_applied_twice() {
    let app = spawn_app().await;
    let click = app.click("shoes", "aff1").await;
    let (_, approved) = app
        .postback(&[
            ("token", ACME_TOKEN),
            ("click_id", &click),
            ("payout", "30.00"),
            ("transaction_id", "R1"),
        ])
        .await;
    assert_eq!(app.balance("affiliate:aff1:payable").await, -1500);

    let (_, reversed) = app
        .postback(&[
            ("token", ACME_TOKEN),
            ("click_id", &click),
            ("transaction_id", "R1"),
            ("status", "reversed"),
        ])
        .await;
    assert_eq!(reversed["status"], "accepted", "{reversed}");
    assert_eq!(reversed["conversion_id"], approved["conversion_id"]);
    assert_eq!(app.balance("affiliate:aff1:payable").await, 0);
    assert_eq!(app.balance("advertiser:acme:receivable").await, 0);
    assert_eq!(app.balance("network:margin").await, 0);
    let conv = app
        .conversion(approved["conversion_id"].as_str().expect("id"))
        .await;
    assert_eq!(conv["status"], "reversed");

    let (_, twice) = app
        .postback(&[
            ("token", ACME_TOKEN),
            ("click_id", &click),
            ("transaction_id", "R1"),
            ("status", "reversed"),
        ])
        .await;
    assert_eq!(twice["status"], "duplicate");
    assert_eq!(app.balance("affiliate:aff1:payable").await, 0);

    let other = app.click("shoes", "aff1").await;
    let (_, unmatched) = app
        .postback(&[
            ("token", ACME_TOKEN),
            ("click_id", &other),
            ("transaction_id", "NOPE"),
            ("status", "reversed"),
        ])
        .await;
    assert_eq!(unmatched["status"], "rejected");
    assert_eq!(crate::helpers::code(&unmatched), "unknown_transaction");
}

#[tokio::test]
async fn foreign_currencies_convert_exactly_with_the_rate_stored() {
    let app = spawn_app().await;
    // KWD has three decimals: 1.005 KWD x 3.25 = 3.26625 USD -> 3.27 (half to even).
    let click = app.click("shoes", "aff1").await;
    let (_, body) = app
        .postback(&[
            ("token", ACME_TOKEN),
            ("click_id", &click),
            ("payout", "1.005"),
            ("currency", "KWD"),
        ])
        .await;
    assert_eq!(body["status"], "accepted", "{body}");
    let conv = app
        .conversion(body["conversion_id"].as_str().expect("id"))
        .await;
    assert_eq!(conv["amount"], "1.005");
    assert_eq!(conv["currency"], "KWD");
    assert_eq!(conv["fx_rate"], "3.25");
    assert_eq!(conv["network_amount"], "3.27");
    assert_eq!(conv["revenue"], "3.27");

    // JPY has no decimals: 12345 JPY x 0.0067 = 82.7115 -> 82.71; payout 500 JPY -> 3.35 USD.
    let click = app.click("yen", "aff2").await;
    let (_, body) = app
        .postback(&[
            ("token", ACME_TOKEN),
            ("click_id", &click),
            ("payout", "12345"),
        ])
        .await;
    assert_eq!(body["status"], "accepted", "{body}");
    let conv = app
        .conversion(body["conversion_id"].as_str().expect("id"))
        .await;
    assert_eq!(conv["amount"], "12345");
    assert_eq!(conv["currency"], "JPY");
    assert_eq!(conv["network_amount"], "82.71");
    assert_eq!(conv["payout"], "3.35");

    // Fractional yen does not exist.
    let click = app.click("yen", "aff2").await;
    let (status, _) = app
        .postback(&[
            ("token", ACME_TOKEN),
            ("click_id", &click),
            ("payout", "1.5"),
        ])
        .await;
    assert_eq!(status, reqwest::StatusCode::BAD_REQUEST);

    assert_eq!(totals(&app).await.get("USD"), Some(&0));
    assert_eq!(
        totals(&app).await.len(),
        1,
        "everything is booked in the network currency"
    );
}

#[tokio::test]
async fn an_amount_over_the_limit_is_refused_and_one_at_it_is_taken() {
    let app = spawn_app().await;
    let click = app.click("shoes", "aff1").await;
    let (status, body) = app
        .postback(&[
            ("token", ACME_TOKEN),
            ("click_id", &click),
            ("payout", "100000000000.01"),
            ("transaction_id", "HUGE"),
        ])
        .await;
    assert_eq!(status.as_u16(), 400, "{body}");
    assert_eq!(crate::helpers::code(&body), "invalid_amount", "{body}");
    assert!(
        body["reasons"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("too large")),
        "{body}"
    );
    let (_, body) = app
        .postback(&[
            ("token", ACME_TOKEN),
            ("click_id", &click),
            ("payout", "100000000000.00"),
            ("transaction_id", "MAX"),
        ])
        .await;
    assert_eq!(body["status"], "accepted", "{body}");
    assert_eq!(
        app.balance("advertiser:acme:receivable").await,
        10_000_000_000_000
    );
}

/// A reversal nets the conversion's own postings; the amount it reports moves no money, so
/// one past the limit (a rate that moved since, a refund figure in another currency) must not
/// keep the conversion credited.
#[tokio::test]
async fn a_reversal_reporting_an_amount_it_cannot_book_still_reverses() {
    let app = spawn_app().await;
    // (affiliate, amount approved, amount the reversal reports): past the limit, negative.
    for (aff, approved_amount, reported) in [
        ("aff1", "100000000000.00", "100000000000.01"),
        ("aff2", "30.00", "-30.00"),
    ] {
        let click = app.click("shoes", aff).await;
        let (_, approved) = app
            .postback(&[
                ("token", ACME_TOKEN),
                ("click_id", &click),
                ("payout", approved_amount),
                ("transaction_id", aff),
            ])
            .await;
        assert_eq!(approved["status"], "accepted", "{approved}");
        let (status, reversed) = app
            .postback(&[
                ("token", ACME_TOKEN),
                ("click_id", &click),
                ("payout", reported),
                ("transaction_id", aff),
                ("status", "reversed"),
            ])
            .await;
        assert_eq!(status.as_u16(), 200, "{reported}: {reversed}");
        assert_eq!(reversed["status"], "accepted", "{reversed}");
        assert_eq!(reversed["conversion_id"], approved["conversion_id"]);
        assert_eq!(
            crate::helpers::code(&reversed),
            "invalid_amount",
            "{reversed}"
        );
        assert_eq!(app.balance(&format!("affiliate:{aff}:payable")).await, 0);
    }
    assert_eq!(app.balance("advertiser:acme:receivable").await, 0);
    assert_eq!(totals(&app).await.get("USD"), Some(&0));
}

#[tokio::test]
async fn balances_past_64_bits_are_exact() {
    let app = spawn_app().await;
    for aff in ["aff1", "aff2"] {
        let click = app.click("shoes", aff).await;
        let (_, body) = app
            .postback(&[
                ("token", ACME_TOKEN),
                ("click_id", &click),
                ("payout", "100.00"),
            ])
            .await;
        assert_eq!(body["status"], "accepted", "{body}");
    }
    // Postings as large as 64 bits allow (from before the amount limit, or many of them):
    // each conversion bills 2^62 and keeps its 15.00 payout, so the receivable is 2^63.
    let pool = app.pool().await;
    postgate::db!(&pool, p => {
        sqlx::query(
            "UPDATE ledger_postings SET amount_minor = CASE account
                WHEN 'advertiser:acme:receivable' THEN 4611686018427387904
                WHEN 'network:margin' THEN 1500 - 4611686018427387904
                ELSE amount_minor END",
        )
        .execute(p)
        .await
        .expect("large postings");
    });
    let (status, body) = app.admin_get("/api/v1/ledger/balances").await;
    assert_eq!(status.as_u16(), 200, "{body}");
    let of = |account: &str| {
        body["balances"]
            .as_array()
            .expect("balances")
            .iter()
            .find(|b| b["account"] == account)
            .unwrap_or_else(|| panic!("{account} in {body}"))
            .clone()
    };
    let receivable = of("advertiser:acme:receivable");
    assert_eq!(receivable["amount"], "92233720368547758.08", "{receivable}");
    assert_eq!(receivable["amount_minor"].as_u64(), Some(1 << 63));
    let margin = of("network:margin");
    assert_eq!(margin["amount"], "-92233720368547728.08", "{margin}");
    assert_eq!(margin["amount_minor"].as_i64(), Some(i64::MIN + 3000));
}
