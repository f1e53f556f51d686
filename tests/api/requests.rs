//! Malformed and unauthenticated requests: 4xx with a reason, nothing recorded.

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{ACME_TOKEN, code, spawn_app};

#[tokio::test]
async fn a_missing_or_wrong_token_gets_401_bad_token() {
    let app = spawn_app().await;
    let click = app.click("shoes", "aff1").await;
    let (status, body) = app.postback(&[("click_id", &click)]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(code(&body), "bad_token");
    let (status, body) = app
        .postback(&[("click_id", &click), ("token", "acme-secret-tokeN")])
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(code(&body), "bad_token");
    assert!(body["conversion_id"].is_null());
}

#[tokio::test]
async fn postbacks_without_a_click_id_or_with_bad_values_get_400() {
    let app = spawn_app().await;
    let (status, body) = app.postback(&[("token", ACME_TOKEN)]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(code(&body), "missing_parameter");

    let click = app.click("shoes", "aff1").await;
    for (payout, expected) in [
        ("12.345", "invalid_amount"),
        ("1e3", "invalid_amount"),
        ("-5", "invalid_amount"),
    ] {
        let (status, body) = app
            .postback(&[
                ("token", ACME_TOKEN),
                ("click_id", &click),
                ("payout", payout),
            ])
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "payout {payout}: {body}");
        assert_eq!(code(&body), expected);
    }
    let (status, body) = app
        .postback(&[
            ("token", ACME_TOKEN),
            ("click_id", &click),
            ("status", "maybe"),
        ])
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(code(&body), "invalid_parameter");

    // None of these was recorded: the click can still convert.
    let (status, body) = app
        .postback(&[
            ("token", ACME_TOKEN),
            ("click_id", &click),
            ("payout", "10"),
        ])
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "accepted", "{body}");
}

#[tokio::test]
async fn form_and_json_posts_work_and_json_numbers_stay_exact() {
    let app = spawn_app().await;
    let click = app.click("shoes", "aff1").await;
    let resp = app
        .client
        .post(format!("{}/postback", app.address))
        .form(&[
            ("token", ACME_TOKEN),
            ("click_id", click.as_str()),
            ("payout", "19.99"),
        ])
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), StatusCode::OK);
    let body: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(body["status"], "accepted", "{body}");
    let conv = app
        .conversion(body["conversion_id"].as_str().expect("id"))
        .await;
    assert_eq!(conv["amount"], "19.99");

    let click = app.click("shoes", "aff1").await;
    let resp = app
        .client
        .post(format!("{}/postback?token={ACME_TOKEN}", app.address))
        .header("content-type", "application/json")
        .body(format!(
            r#"{{"click_id":"{click}","payout":0.30000000000000004,"goal":"upsell"}}"#
        ))
        .send()
        .await
        .expect("post");
    let body: serde_json::Value = resp.json().await.expect("json");
    // 0.30000000000000004 has more decimals than USD: refused, not rounded through f64.
    assert_eq!(code(&body), "invalid_amount", "{body}");

    let resp = app
        .client
        .post(format!("{}/postback?token={ACME_TOKEN}", app.address))
        .json(&json!({"click_id": click, "payout": 0.3, "goal": "upsell"}))
        .send()
        .await
        .expect("post");
    let body: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(body["status"], "accepted", "{body}");
    let conv = app
        .conversion(body["conversion_id"].as_str().expect("id"))
        .await;
    assert_eq!(conv["amount"], "0.30");
}

#[tokio::test]
async fn advertiser_aliases_name_the_parameters() {
    let app = spawn_app().await;
    let click = app.click("shoes", "aff1").await;
    let (status, body) = app
        .postback(&[
            ("token", ACME_TOKEN),
            ("cid", &click),
            ("sale_amount", "42.00"),
            ("order", "A-1"),
        ])
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "accepted", "{body}");
    let conv = app
        .conversion(body["conversion_id"].as_str().expect("id"))
        .await;
    assert_eq!(conv["transaction_id"], "A-1");
    assert_eq!(conv["revenue"], "42.00");
}

#[tokio::test]
async fn oversized_bodies_get_413_and_unknown_media_types_415() {
    let app = spawn_app().await;
    let resp = app
        .client
        .post(format!("{}/postback", app.address))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(vec![b'a'; 2 * 1024 * 1024])
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let resp = app
        .client
        .post(format!("{}/postback", app.address))
        .header("content-type", "text/csv")
        .body("a,b")
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let resp = app
        .client
        .post(format!("{}/postback", app.address))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn the_admin_api_requires_the_bearer_token() {
    let app = spawn_app().await;
    let resp = app.get("/api/v1/ledger/balances").await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let resp = app
        .client
        .get(format!("{}/api/v1/ledger/balances", app.address))
        .bearer_auth("test-admin-tokeN")
        .send()
        .await
        .expect("get");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let (status, _) = app.admin_get("/api/v1/conversions/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(app.get("/healthz").await.status(), StatusCode::OK);
    assert_eq!(app.get("/readyz").await.status(), StatusCode::OK);
}
