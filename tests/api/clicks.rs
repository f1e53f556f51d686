use reqwest::StatusCode;

use crate::helpers::{code, key_ring, spawn_app};

#[tokio::test]
async fn a_click_redirects_to_the_offer_with_a_verifiable_click_id_and_is_recorded() {
    let app = spawn_app().await;
    let resp = app
        .get("/c/shoes?aff=aff1&sub1=a%20b&url=https://evil.example")
        .await;
    assert_eq!(resp.status(), StatusCode::FOUND);
    let location = resp.headers()["location"]
        .to_str()
        .expect("location")
        .to_owned();
    assert!(
        location.starts_with("https://shop.example/l?subid="),
        "{location}"
    );
    assert!(location.ends_with("&s1=a%20b"), "{location}");
    assert!(
        !location.contains("evil"),
        "destination never comes from the query"
    );

    let url = reqwest::Url::parse(&location).expect("url");
    let click_id = url
        .query_pairs()
        .find(|(k, _)| k == "subid")
        .expect("subid")
        .1;
    assert_eq!(click_id.len(), 48);
    let claims = *key_ring()
        .verify(&click_id)
        .expect("click ID verifies")
        .claims();
    assert_eq!(claims.offer_id, 1);
    assert_eq!(claims.affiliate_id, 1);

    // The click row is group-committed shortly after the redirect; stopping drains it.
    let dir = app.stop().await;
    let app = crate::helpers::spawn_in(dir).await;
    let (_, body) = app
        .admin_get(&format!("/api/v1/conversions?click_id={click_id}"))
        .await;
    assert_eq!(body["conversions"].as_array().map(Vec::len), Some(0));
    let pool = app.pool().await;
    let row: (String, String) = postgate::db!(&pool, p => {
        sqlx::query_as("SELECT click_id, sub1 FROM clicks WHERE click_id = $1")
            .bind(click_id.as_ref())
            .fetch_one(p)
            .await
            .expect("click row")
    });
    assert_eq!(row.1, "a b");
}

#[tokio::test]
async fn every_click_gets_a_different_id() {
    let app = spawn_app().await;
    let a = app.click("shoes", "aff1").await;
    let b = app.click("shoes", "aff1").await;
    assert_ne!(a, b);
}

#[tokio::test]
async fn unknown_offers_and_affiliates_get_404_with_a_reason() {
    let app = spawn_app().await;
    let resp = app.get("/c/nope?aff=aff1").await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(code(&resp.json().await.expect("json")), "unknown_offer");

    let resp = app.get("/c/shoes?aff=ghost").await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(code(&resp.json().await.expect("json")), "unknown_affiliate");

    let resp = app.get("/c/shoes").await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(code(&resp.json().await.expect("json")), "missing_parameter");
}

#[tokio::test]
async fn a_paused_offer_sends_visitors_to_its_fallback_url() {
    let app = spawn_app().await;
    let resp = app.get("/c/paused?aff=aff2").await;
    assert_eq!(resp.status(), StatusCode::FOUND);
    assert_eq!(
        resp.headers()["location"],
        "https://shop.example/sold-out?aff=aff2"
    );
}
