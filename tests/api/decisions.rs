//! Attribution decisions: every reason code, duplicates, status transitions.

use chrono::{Duration, Utc};
use reqwest::StatusCode;

use crate::helpers::{ACME_TOKEN, OTHER_TOKEN, code, key_ring, spawn_app, spawn_in};

#[tokio::test]
async fn a_postback_on_a_real_click_is_accepted_and_readable_by_click() {
    let app = spawn_app().await;
    let click = app.click("shoes", "aff1").await;
    let (status, body) = app
        .postback(&[
            ("token", ACME_TOKEN),
            ("click_id", &click),
            ("payout", "49.99"),
            ("transaction_id", "T1"),
        ])
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "accepted", "{body}");
    assert_eq!(body["reasons"].as_array().map(Vec::len), Some(0));
    let id = body["conversion_id"].as_str().expect("id");

    let conv = app.conversion(id).await;
    assert_eq!(conv["status"], "approved");
    assert_eq!(conv["decision"], "accepted");
    assert_eq!(conv["goal"], "purchase");
    assert_eq!(conv["payout"], "15.00");
    assert_eq!(conv["revenue"], "49.99");
    let (_, list) = app
        .admin_get(&format!("/api/v1/conversions?click_id={click}"))
        .await;
    assert_eq!(list["conversions"][0]["id"], id);
}

#[tokio::test]
async fn malformed_truncated_and_forged_click_ids_are_rejected_and_recorded() {
    let app = spawn_app().await;
    let click = app.click("shoes", "aff1").await;
    let truncated = &click[..40];
    let (status, body) = app
        .postback(&[("token", ACME_TOKEN), ("click_id", truncated)])
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "rejected");
    assert_eq!(code(&body), "malformed_click_id");
    let recorded = app
        .conversion(body["conversion_id"].as_str().expect("recorded"))
        .await;
    assert_eq!(recorded["decision"], "rejected");

    let (_, body) = app
        .postback(&[("token", ACME_TOKEN), ("click_id", "not a click id")])
        .await;
    assert_eq!(code(&body), "malformed_click_id");

    // Same shape, flipped last character: the MAC fails.
    let mut forged = click.clone();
    let last = forged.pop().expect("char");
    forged.push(if last == 'A' { 'B' } else { 'A' });
    let (_, body) = app
        .postback(&[("token", ACME_TOKEN), ("click_id", &forged)])
        .await;
    assert_eq!(body["status"], "rejected");
    assert_eq!(code(&body), "forged_click_id");

    // Signed with a key this gateway never had.
    let stranger = postgate::domain::ClickKeyRing::new(1, [(1, vec![1u8; 32])]).expect("ring");
    let alien = stranger.issue(1, 1, Utc::now()).expect("issue");
    let (_, body) = app
        .postback(&[("token", ACME_TOKEN), ("click_id", alien.as_str())])
        .await;
    assert_eq!(code(&body), "forged_click_id");
}

#[tokio::test]
async fn clicks_on_unknown_offers_goals_and_foreign_offers_are_rejected() {
    let app = spawn_app().await;
    let ghost_offer = key_ring()
        .issue(999, 1, Utc::now() - Duration::minutes(5))
        .expect("issue");
    let (_, body) = app
        .postback(&[("token", ACME_TOKEN), ("click_id", ghost_offer.as_str())])
        .await;
    assert_eq!(code(&body), "unknown_offer");

    let click = app.click("shoes", "aff1").await;
    let (_, body) = app
        .postback(&[
            ("token", ACME_TOKEN),
            ("click_id", &click),
            ("goal", "signup"),
        ])
        .await;
    assert_eq!(body["status"], "rejected");
    assert_eq!(code(&body), "unknown_goal");

    let (_, body) = app
        .postback(&[("token", OTHER_TOKEN), ("click_id", &click)])
        .await;
    assert_eq!(body["status"], "rejected");
    assert_eq!(code(&body), "offer_not_owned");

    let (_, body) = app
        .postback(&[
            ("token", ACME_TOKEN),
            ("click_id", &click),
            ("currency", "XYZ"),
        ])
        .await;
    assert_eq!(code(&body), "unsupported_currency");
    let (_, body) = app
        .postback(&[
            ("token", ACME_TOKEN),
            ("click_id", &click),
            ("currency", "CHF"),
        ])
        .await;
    assert_eq!(
        code(&body),
        "unsupported_currency",
        "a real currency without a rate"
    );
}

#[tokio::test]
async fn old_clicks_expire_and_fast_conversions_are_rejected_or_flagged() {
    let app = spawn_app().await;
    let old = key_ring()
        .issue(1, 1, Utc::now() - Duration::days(31))
        .expect("issue");
    let (_, body) = app
        .postback(&[("token", ACME_TOKEN), ("click_id", old.as_str())])
        .await;
    assert_eq!(body["status"], "rejected");
    assert_eq!(code(&body), "click_expired");

    let recent = key_ring()
        .issue(1, 1, Utc::now() - Duration::days(29))
        .expect("issue");
    let (_, body) = app
        .postback(&[("token", ACME_TOKEN), ("click_id", recent.as_str())])
        .await;
    assert_eq!(body["status"], "accepted", "{body}");

    let slow_click = app.click("slow", "aff1").await;
    let (_, body) = app
        .postback(&[("token", ACME_TOKEN), ("click_id", &slow_click)])
        .await;
    assert_eq!(body["status"], "rejected");
    assert_eq!(code(&body), "lag_too_short");
    let conv = app
        .conversion(body["conversion_id"].as_str().expect("id"))
        .await;
    assert_eq!(conv["status"], "rejected");

    let flag_click = app.click("flagged", "aff1").await;
    let (_, body) = app
        .postback(&[("token", ACME_TOKEN), ("click_id", &flag_click)])
        .await;
    assert_eq!(body["status"], "accepted");
    assert_eq!(code(&body), "lag_too_short", "accepted but flagged");
}

#[tokio::test]
async fn a_second_conversion_for_a_click_and_goal_is_a_duplicate_with_the_original_id() {
    let app = spawn_app().await;
    let click = app.click("shoes", "aff1").await;
    let (_, first) = app
        .postback(&[
            ("token", ACME_TOKEN),
            ("click_id", &click),
            ("transaction_id", "A"),
        ])
        .await;
    let (_, again) = app
        .postback(&[
            ("token", ACME_TOKEN),
            ("click_id", &click),
            ("transaction_id", "B"),
        ])
        .await;
    assert_eq!(again["status"], "duplicate");
    assert_eq!(code(&again), "duplicate_click_goal");
    assert_eq!(again["conversion_id"], first["conversion_id"]);

    // Another goal of the same click converts; a repeatable goal converts again.
    let (_, lead) = app
        .postback(&[
            ("token", ACME_TOKEN),
            ("click_id", &click),
            ("goal", "lead"),
        ])
        .await;
    assert_eq!(lead["status"], "accepted");
    for txn in ["U1", "U2"] {
        let (_, up) = app
            .postback(&[
                ("token", ACME_TOKEN),
                ("click_id", &click),
                ("goal", "upsell"),
                ("transaction_id", txn),
            ])
            .await;
        assert_eq!(up["status"], "accepted", "{up}");
    }
    let (_, up) = app
        .postback(&[
            ("token", ACME_TOKEN),
            ("click_id", &click),
            ("goal", "upsell"),
            ("transaction_id", "U1"),
        ])
        .await;
    assert_eq!(up["status"], "duplicate");
    assert_eq!(code(&up), "duplicate_transaction");
}

#[tokio::test]
async fn a_transaction_id_is_unique_per_offer_across_clicks() {
    let app = spawn_app().await;
    let a = app.click("shoes", "aff1").await;
    let b = app.click("shoes", "aff2").await;
    let (_, first) = app
        .postback(&[
            ("token", ACME_TOKEN),
            ("click_id", &a),
            ("transaction_id", "ORDER-9"),
        ])
        .await;
    let (_, second) = app
        .postback(&[
            ("token", ACME_TOKEN),
            ("click_id", &b),
            ("transaction_id", "ORDER-9"),
        ])
        .await;
    assert_eq!(second["status"], "duplicate");
    assert_eq!(code(&second), "duplicate_transaction");
    assert_eq!(second["conversion_id"], first["conversion_id"]);
}

#[tokio::test]
async fn fifty_concurrent_identical_postbacks_make_exactly_one_conversion() {
    let app = spawn_app().await;
    let click = app.click("shoes", "aff1").await;
    let url = format!(
        "{}/postback?token={ACME_TOKEN}&click_id={click}&payout=10.00&transaction_id=RACE",
        app.address
    );
    let requests = (0..50).map(|_| {
        let client = app.client.clone();
        let url = url.clone();
        tokio::spawn(async move {
            let resp = client.get(url).send().await.expect("send");
            resp.json::<serde_json::Value>().await.expect("json")
        })
    });
    let mut receipts = Vec::new();
    for r in requests {
        receipts.push(r.await.expect("task"));
    }
    let accepted: Vec<_> = receipts
        .iter()
        .filter(|r| r["status"] == "accepted")
        .collect();
    let duplicates: Vec<_> = receipts
        .iter()
        .filter(|r| r["status"] == "duplicate")
        .collect();
    assert_eq!(accepted.len(), 1, "{receipts:?}");
    assert_eq!(duplicates.len(), 49);
    assert!(
        duplicates
            .iter()
            .all(|d| d["conversion_id"] == accepted[0]["conversion_id"])
    );
    assert_eq!(
        app.balance("affiliate:aff1:payable").await,
        -1500,
        "paid once"
    );
}

#[tokio::test]
async fn pending_then_approved_posts_the_ledger_once_and_rejected_stays_unpaid() {
    let app = spawn_app().await;
    let click = app.click("shoes", "aff1").await;
    let base = [
        ("token", ACME_TOKEN),
        ("click_id", click.as_str()),
        ("transaction_id", "P1"),
    ];
    let (_, pending) = app
        .postback(&[&base[..], &[("status", "pending"), ("payout", "20.00")]].concat())
        .await;
    assert_eq!(pending["status"], "accepted");
    assert_eq!(app.balances().await.len(), 0, "pending posts nothing");

    let (_, approved) = app
        .postback(&[&base[..], &[("status", "approved"), ("payout", "25.00")]].concat())
        .await;
    assert_eq!(approved["status"], "accepted", "{approved}");
    assert_eq!(approved["conversion_id"], pending["conversion_id"]);
    assert_eq!(app.balance("advertiser:acme:receivable").await, 2500);
    assert_eq!(app.balance("affiliate:aff1:payable").await, -1500);

    let (_, again) = app
        .postback(&[&base[..], &[("status", "approved")]].concat())
        .await;
    assert_eq!(again["status"], "duplicate");
    let (_, back) = app
        .postback(&[&base[..], &[("status", "pending")]].concat())
        .await;
    assert_eq!(back["status"], "rejected");
    assert_eq!(code(&back), "invalid_transition");
    assert_eq!(
        app.balance("advertiser:acme:receivable").await,
        2500,
        "unchanged"
    );

    let other = app.click("shoes", "aff2").await;
    let b2 = [
        ("token", ACME_TOKEN),
        ("click_id", other.as_str()),
        ("transaction_id", "P2"),
    ];
    app.postback(&[&b2[..], &[("status", "pending")]].concat())
        .await;
    let (_, rejected) = app
        .postback(&[&b2[..], &[("status", "rejected")]].concat())
        .await;
    assert_eq!(rejected["status"], "accepted");
    let conv = app
        .conversion(rejected["conversion_id"].as_str().expect("id"))
        .await;
    assert_eq!(conv["status"], "rejected");
    assert_eq!(app.balance("affiliate:aff2:payable").await, 0);
}

#[tokio::test]
async fn conversions_and_dedupe_survive_a_restart() {
    let app = spawn_app().await;
    let click = app.click("shoes", "aff1").await;
    let (_, first) = app
        .postback(&[
            ("token", ACME_TOKEN),
            ("click_id", &click),
            ("payout", "5.00"),
        ])
        .await;
    let dir = app.stop().await;

    let app = spawn_in(dir).await;
    let id = first["conversion_id"].as_str().expect("id");
    assert_eq!(app.conversion(id).await["revenue"], "5.00");
    let (_, again) = app
        .postback(&[("token", ACME_TOKEN), ("click_id", &click)])
        .await;
    assert_eq!(again["status"], "duplicate");
    assert_eq!(again["conversion_id"], id);
    // The click ID minted before the restart still verifies: keys are stable.
    let fresh = app.click("shoes", "aff1").await;
    let (_, ok) = app
        .postback(&[("token", ACME_TOKEN), ("click_id", &fresh)])
        .await;
    assert_eq!(ok["status"], "accepted");
}
