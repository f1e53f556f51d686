//! Webhooks end to end: real platform payloads, signed, through the running gateway.

use std::time::{Duration, Instant};

use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use reqwest::StatusCode;
use serde_json::Value;
use sha2::Sha256;

use crate::helpers::{
    ACME_TOKEN, SALESFORCE_TOKEN, SHOPIFY_SECRET, STRIPE_SECRET, TestApp, spawn_app,
};

pub(crate) fn fixture(path: &str) -> Vec<u8> {
    std::fs::read(format!("tests/fixtures/{path}")).expect("fixture")
}

/// The derived Shopify order (note attribute `click_id`), carrying `click_id`, paid now.
pub(crate) fn shopify_order(click_id: &str) -> Vec<u8> {
    let text = String::from_utf8(fixture(
        "derived/shopify_orders_paid.note_attribute_click_id.json",
    ))
    .expect("utf-8");
    let now = (chrono::Utc::now() + chrono::Duration::seconds(2)).to_rfc3339();
    text.replace("pgc_note_7Hq2ZkP4", click_id)
        .replace("2021-12-31T19:00:00-05:00", &now)
        .into_bytes()
}

/// `X-Shopify-Hmac-Sha256` for `body` under `secret`.
fn shopify_signature_with(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("key");
    mac.update(body);
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

fn shopify_signature(body: &[u8]) -> String {
    shopify_signature_with(SHOPIFY_SECRET, body)
}

pub(crate) async fn send_shopify(
    app: &TestApp,
    topic: &str,
    webhook_id: &str,
    body: Vec<u8>,
    secret: &str,
) -> reqwest::Response {
    let signature = shopify_signature_with(secret, &body);
    app.client
        .post(format!("{}/hooks/shopify", app.address))
        .header("content-type", "application/json")
        .header("X-Shopify-Topic", topic)
        .header("X-Shopify-Webhook-Id", webhook_id)
        .header("X-Shopify-Hmac-Sha256", signature)
        .header("X-Shopify-Shop-Domain", "snowdevil.myshopify.com")
        .body(body)
        .send()
        .await
        .expect("webhook")
}

#[tokio::test]
async fn a_signed_shopify_order_with_a_real_click_id_is_credited_and_ledgered() {
    let app = spawn_app().await;
    let click = app.click("shoes", "aff1").await;
    let resp = send_shopify(
        &app,
        "orders/paid",
        "wh-1",
        shopify_order(&click),
        SHOPIFY_SECRET,
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["events"][0]["status"], "accepted", "{body}");
    let id = body["events"][0]["conversion_id"]
        .as_str()
        .expect("conversion id");

    let conv = app.conversion(id).await;
    assert_eq!(conv["source"], "shopify");
    assert_eq!(conv["source_event_id"], "wh-1");
    assert_eq!(
        conv["transaction_id"], "820982911946154508",
        "order id exact, above 2^53"
    );
    assert_eq!(conv["amount"], "404.95");
    assert_eq!(conv["click_id"], click.as_str());
    assert_eq!(app.balance("advertiser:acme:receivable").await, 40_495);
    assert_eq!(app.balance("affiliate:aff1:payable").await, -1_500);

    // Shopify retries with the same webhook id: a duplicate, nothing posted twice.
    let again = send_shopify(
        &app,
        "orders/paid",
        "wh-1",
        shopify_order(&click),
        SHOPIFY_SECRET,
    )
    .await;
    let again: Value = again.json().await.expect("json");
    assert_eq!(again["events"][0]["status"], "duplicate", "{again}");
    assert_eq!(again["events"][0]["conversion_id"], id);
    assert_eq!(again["events"][0]["reasons"][0]["code"], "duplicate_event");
    assert_eq!(app.balance("affiliate:aff1:payable").await, -1_500);

    // An S2S postback for the same order is the same transaction, not a second sale.
    let (_, s2s) = app
        .postback(&[
            ("token", ACME_TOKEN),
            ("click_id", &click),
            ("transaction_id", "820982911946154508"),
        ])
        .await;
    assert_eq!(s2s["status"], "duplicate");
    assert_eq!(s2s["conversion_id"], id);
}

#[tokio::test]
async fn a_shopify_refund_without_a_click_reverses_the_order() {
    let app = spawn_app().await;
    let click = app.click("shoes", "aff1").await;
    send_shopify(
        &app,
        "orders/paid",
        "wh-1",
        shopify_order(&click),
        SHOPIFY_SECRET,
    )
    .await;
    assert_eq!(app.balance("affiliate:aff1:payable").await, -1_500);

    // The docs' refund names order 820982911946154508 and carries no click ID.
    let refund = fixture("shopify/refunds_create.shopify-dev-2026-07.json");
    let resp = send_shopify(&app, "refunds/create", "wh-2", refund, SHOPIFY_SECRET).await;
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["events"][0]["status"], "accepted", "{body}");
    assert_eq!(app.balance("affiliate:aff1:payable").await, 0);
    assert_eq!(app.balance("advertiser:acme:receivable").await, 0);
}

#[tokio::test]
async fn a_shopify_webhook_with_a_wrong_hmac_gets_401_and_nothing_is_recorded() {
    let app = spawn_app().await;
    let click = app.click("shoes", "aff1").await;
    let resp = send_shopify(
        &app,
        "orders/paid",
        "wh-x",
        shopify_order(&click),
        "another-secret-0123456789",
    )
    .await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["reasons"][0]["code"], "bad_signature");
    let (_, list) = app
        .admin_get(&format!("/api/v1/conversions?click_id={click}"))
        .await;
    assert_eq!(list["conversions"].as_array().map(Vec::len), Some(0));

    let resp = app
        .client
        .post(format!("{}/hooks/nope", app.address))
        .body("{}")
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn an_unmapped_shopify_topic_is_recorded_and_answered_so_shopify_stops_retrying() {
    let app = spawn_app().await;
    let body = fixture("shopify/orders_create.shopify-dev-2026-07.json");
    let resp = send_shopify(&app, "orders/create", "wh-9", body, SHOPIFY_SECRET).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["events"][0]["status"], "unmapped");
    assert_eq!(body["events"][0]["reasons"][0]["code"], "unmapped_event");
    let failures = count(
        &app,
        "SELECT COUNT(*) FROM ingest_failures WHERE code = 'unmapped_event'",
    )
    .await;
    assert_eq!(failures, 1);
    assert_eq!(count(&app, "SELECT COUNT(*) FROM raw_requests").await, 1);

    // The raw request is kept byte for byte (compressed at rest), without credentials.
    let pool = app.pool().await;
    let (stored, size, path, headers): (Vec<u8>, i64, String, String) = postgate::db!(&pool, p => {
        sqlx::query_as("SELECT body, body_size, path, headers FROM raw_requests")
            .fetch_one(p)
            .await
            .expect("raw request")
    });
    let original = fixture("shopify/orders_create.shopify-dev-2026-07.json");
    assert_eq!(
        lz4_flex::decompress_size_prepended(&stored).expect("lz4"),
        original
    );
    assert_eq!(size as usize, original.len());
    assert_eq!(path, "/hooks/shopify");
    assert!(headers.contains("X-Shopify-Webhook-Id") || headers.contains("x-shopify-webhook-id"));
}

/// A Stripe event fixture as if it happened now, with `click_id` as its client_reference_id.
fn stripe_event(path: &str, click_id: Option<&str>) -> Vec<u8> {
    let text = String::from_utf8(fixture(path)).expect("utf-8");
    let now = (chrono::Utc::now() + chrono::Duration::seconds(2)).timestamp();
    let text = text
        .replace("\"created\": 1326853478", &format!("\"created\": {now}"))
        .replace("\"created\": 1648319949", &format!("\"created\": {now}"));
    match click_id {
        Some(c) => text.replace(
            "\"client_reference_id\": null",
            &format!("\"client_reference_id\": \"{c}\""),
        ),
        None => text,
    }
    .into_bytes()
}

/// Posts `body` signed as Stripe does: `t=<now>,v1=hex(HMAC-SHA256(secret, "<t>." + body))`.
async fn send_stripe(app: &TestApp, body: Vec<u8>) -> Value {
    let t = chrono::Utc::now().timestamp().to_string();
    let mut mac = Hmac::<Sha256>::new_from_slice(STRIPE_SECRET.as_bytes()).expect("key");
    mac.update(format!("{t}.").as_bytes());
    mac.update(&body);
    let signature = format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()));
    let resp = app
        .client
        .post(format!("{}/hooks/stripe", app.address))
        .header("content-type", "application/json")
        .header("Stripe-Signature", signature)
        .body(body)
        .send()
        .await
        .expect("webhook");
    assert_eq!(resp.status(), StatusCode::OK);
    resp.json().await.expect("json")
}

#[tokio::test]
async fn a_signed_stripe_checkout_is_credited_and_only_a_full_refund_reverses_it() {
    let app = spawn_app().await;
    let click = app.click("shoes", "aff1").await;
    let body = send_stripe(
        &app,
        stripe_event(
            "stripe/checkout_session_completed.stripe-ruby-mock.json",
            Some(&click),
        ),
    )
    .await;
    assert_eq!(body["events"][0]["status"], "accepted", "{body}");
    let id = body["events"][0]["conversion_id"].as_str().expect("id");
    let conv = app.conversion(id).await;
    assert_eq!(conv["transaction_id"], "pi_00000000000000");
    assert_eq!(conv["amount"], "250.00");
    assert_eq!(conv["click_id"], click.as_str());
    assert_eq!(app.balance("advertiser:acme:receivable").await, 25_000);
    assert_eq!(app.balance("affiliate:aff1:payable").await, -1_500);

    // A partial refund is kept with its reason; the purchase stands.
    let partial = send_stripe(
        &app,
        stripe_event("derived/stripe_charge_refunded.partial.json", None),
    )
    .await;
    assert_eq!(partial["events"][0]["status"], "unmapped", "{partial}");
    assert_eq!(app.balance("affiliate:aff1:payable").await, -1_500);

    // The full refund names the PaymentIntent and carries no click ID.
    let refund = send_stripe(
        &app,
        stripe_event("derived/stripe_charge_refunded.payment_intent.json", None),
    )
    .await;
    assert_eq!(refund["events"][0]["status"], "accepted", "{refund}");
    assert_eq!(refund["events"][0]["conversion_id"], id);
    assert_eq!(app.balance("affiliate:aff1:payable").await, 0);
    assert_eq!(app.balance("advertiser:acme:receivable").await, 0);
}

#[tokio::test]
async fn a_stripe_checkout_paid_by_a_delayed_method_is_pending_until_the_payment_settles() {
    let app = spawn_app().await;
    let click = app.click("shoes", "aff1").await;
    let body = send_stripe(
        &app,
        stripe_event(
            "derived/stripe_checkout_session_completed.unpaid.json",
            Some(&click),
        ),
    )
    .await;
    assert_eq!(body["events"][0]["status"], "accepted", "{body}");
    let id = body["events"][0]["conversion_id"].as_str().expect("id");
    assert_eq!(app.conversion(id).await["status"], "pending");
    assert_eq!(app.balance("affiliate:aff1:payable").await, 0);

    // async_payment_succeeded names the same PaymentIntent; the session has no click ID.
    let settled = send_stripe(
        &app,
        stripe_event(
            "derived/stripe_checkout_session_async_payment_succeeded.json",
            None,
        ),
    )
    .await;
    assert_eq!(settled["events"][0]["status"], "accepted", "{settled}");
    assert_eq!(settled["events"][0]["conversion_id"], id);
    assert_eq!(app.conversion(id).await["status"], "approved");
    assert_eq!(app.balance("affiliate:aff1:payable").await, -1_500);
}

/// A notification without its `Id` cannot be deduplicated, so it becomes no conversion, but it
/// is stored with the reason and the others go on: the whole envelope is acknowledged, or
/// Salesforce would resend all three for 24 hours.
#[tokio::test]
async fn a_notification_without_an_id_is_stored_with_its_reason_and_the_others_still_count() {
    let app = spawn_app().await;
    let envelope = String::from_utf8(lead_envelope()).expect("utf-8");
    let without_first_id = envelope.replacen("<Id>04l37000000L0E5AAK</Id>", "", 1);
    assert_ne!(
        without_first_id, envelope,
        "the fixture's first notification id"
    );
    let resp = send_salesforce(&app, &format!("token={SALESFORCE_TOKEN}"), without_first_id).await;
    assert_acked(resp).await;
    assert_eq!(salesforce_conversions(&app).await, 2);
    assert_eq!(
        count(
            &app,
            "SELECT COUNT(*) FROM ingest_failures \
             WHERE code = 'missing_event_id' AND event_id IS NULL AND message LIKE 'event #0:%'"
        )
        .await,
        1
    );
    assert_eq!(count(&app, "SELECT events FROM raw_requests").await, 3);
}

/// The stored request keeps its query (the payload of GET callbacks, and part of what HubSpot
/// signs) byte for byte, less the connector's token parameter.
#[tokio::test]
async fn the_stored_request_keeps_its_query_without_the_token() {
    let app = spawn_app().await;
    let query = format!("region=eu%2Dwest&token={SALESFORCE_TOKEN}&a=1+2");
    let resp = send_salesforce(&app, &query, lead_envelope()).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        stored_path(&app).await,
        "/hooks/salesforce?region=eu%2Dwest&a=1+2"
    );
}

/// A JSON source is told which event could not be decoded, and why; the request is stored.
#[tokio::test]
async fn a_signed_shopify_webhook_without_its_id_is_recorded_and_answered_with_the_reason() {
    let app = spawn_app().await;
    let body = fixture("derived/shopify_orders_paid.note_attribute_click_id.json");
    let resp = app
        .client
        .post(format!("{}/hooks/shopify", app.address))
        .header("content-type", "application/json")
        .header("X-Shopify-Topic", "orders/paid")
        .header("X-Shopify-Hmac-Sha256", shopify_signature(&body))
        .body(body)
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), StatusCode::OK);
    let receipt: Value = resp.json().await.expect("json");
    let event = &receipt["events"][0];
    assert_eq!(event["status"], "unmapped", "{receipt}");
    assert_eq!(event["reasons"][0]["code"], "missing_event_id", "{receipt}");
    assert!(event.get("event_id").is_none(), "{receipt}");
    assert_eq!(count(&app, "SELECT COUNT(*) FROM raw_requests").await, 1);
    assert_eq!(count(&app, "SELECT COUNT(*) FROM conversions").await, 0);
    assert_eq!(
        count(
            &app,
            "SELECT COUNT(*) FROM ingest_failures WHERE code = 'missing_event_id'"
        )
        .await,
        1
    );
}

pub(crate) async fn count(app: &TestApp, sql: &str) -> i64 {
    let pool = app.pool().await;
    postgate::db!(&pool, p => {
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
            .fetch_one(p)
            .await
            .expect("count")
    })
}

/// POSTs a Salesforce Outbound Message to `/hooks/salesforce?{query}`.
async fn send_salesforce(
    app: &TestApp,
    query: &str,
    envelope: impl Into<reqwest::Body>,
) -> reqwest::Response {
    app.client
        .post(format!("{}/hooks/salesforce?{query}", app.address))
        .header("content-type", "text/xml; charset=utf-8")
        .body(envelope)
        .send()
        .await
        .expect("post")
}

/// Salesforce's answer to an envelope whose events were recorded: 200 and the SOAP Ack.
async fn assert_acked(resp: reqwest::Response) {
    assert_eq!(resp.status(), StatusCode::OK);
    let text = resp.text().await.expect("body");
    assert!(text.contains("<Ack>true</Ack>"), "{text}");
}

async fn salesforce_conversions(app: &TestApp) -> i64 {
    count(
        app,
        "SELECT COUNT(*) FROM conversions WHERE source = 'salesforce'",
    )
    .await
}

fn lead_envelope() -> Vec<u8> {
    fixture("salesforce/outbound_message.lead.aspnet-webhooks.xml")
}

/// The `path` column (path and query) of the one stored raw request.
async fn stored_path(app: &TestApp) -> String {
    let pool = app.pool().await;
    postgate::db!(&pool, p => {
        sqlx::query_scalar("SELECT path FROM raw_requests")
            .fetch_one(p)
            .await
            .expect("raw request")
    })
}

#[tokio::test]
async fn a_salesforce_envelope_with_three_notifications_is_three_events_and_a_soap_ack() {
    let app = spawn_app().await;
    let resp = send_salesforce(&app, &format!("token={SALESFORCE_TOKEN}"), lead_envelope()).await;
    assert_acked(resp).await;
    // The leads carry no click ID: each is recorded with its reason, none is lost.
    assert_eq!(salesforce_conversions(&app).await, 3);
    assert_eq!(count(&app, "SELECT events FROM raw_requests").await, 3);

    let resp = send_salesforce(&app, "token=wrong-token-0123456789", lead_envelope()).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn xxe_and_billion_laughs_envelopes_are_refused_quickly_without_echoing_files() {
    let app = spawn_app().await;
    let xxe = r#"<?xml version="1.0"?><!DOCTYPE foo [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body>
<notifications xmlns="http://soap.sforce.com/2005/09/outbound"><OrganizationId>&xxe;</OrganizationId>
</notifications></soapenv:Body></soapenv:Envelope>"#;
    let mut laughs = String::from(r#"<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">"#);
    for i in 1..10 {
        let prev = if i == 1 {
            "lol".to_owned()
        } else {
            format!("lol{}", i - 1)
        };
        laughs.push_str(&format!(
            r#"<!ENTITY lol{i} "{}">"#,
            format!("&{prev};").repeat(10)
        ));
    }
    laughs.push_str("]><lolz>&lol9;</lolz>");
    for body in [xxe.to_owned(), laughs] {
        let started = Instant::now();
        let resp = app
            .client
            .post(format!(
                "{}/hooks/salesforce?token={SALESFORCE_TOKEN}",
                app.address
            ))
            .body(body)
            .send()
            .await
            .expect("post");
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        let text = resp.text().await.expect("body");
        assert!(!text.contains("root:"), "no file content: {text}");
        assert!(text.contains("malformed_body"), "{text}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}

#[tokio::test]
async fn an_order_whose_amount_cannot_be_booked_is_recorded_with_its_reason() {
    let app = spawn_app().await;
    let click = app.click("shoes", "aff1").await;
    let body = String::from_utf8(shopify_order(&click))
        .expect("utf-8")
        .replace("\"404.95\"", "\"404.951\"")
        .into_bytes();
    let resp = send_shopify(&app, "orders/paid", "wh-7", body, SHOPIFY_SECRET).await;
    assert_eq!(
        resp.status(),
        StatusCode::OK,
        "answered, so Shopify stops retrying"
    );
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["events"][0]["status"], "unmapped", "{body}");
    assert_eq!(body["events"][0]["reasons"][0]["code"], "invalid_amount");
    assert_eq!(
        count(
            &app,
            "SELECT COUNT(*) FROM ingest_failures WHERE code = 'invalid_amount'"
        )
        .await,
        1
    );
    assert_eq!(app.balance("affiliate:aff1:payable").await, 0);
}

/// Query-string sources call with GET (Adjust fills its placeholders into the URL); the
/// event is credited like any other and the token stays out of the stored request.
#[tokio::test]
async fn an_adjust_get_callback_is_credited_to_its_click() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut settings = crate::helpers::settings_for(&dir.path().join("postgate.db"));
    settings.hooks.enabled.push(postgate::config::HookSpec {
        connector: "adjust".into(),
        advertiser: "acme".into(),
    });
    let token = "adjust-token-0123456789";
    if let postgate::connector::Env::Fixed(env) = &mut settings.hooks.env {
        env.insert("ADJUST_TOKEN".into(), token.into());
    }
    let app = crate::support::spawn_with(dir, settings).await;
    let click = app.click("shoes", "aff1").await;
    let created_at = (chrono::Utc::now() + chrono::Duration::seconds(2)).timestamp();
    let callback = || {
        app.client
            .get(format!(
                "{}/hooks/adjust?token={token}&activity_kind=event&adid=4c0bbd7d8e1a\
                 &created_at={created_at}&event_name=purchase&revenue=9.99&currency=EUR\
                 &click_id={click}",
                app.address
            ))
            .send()
    };
    let resp = callback().await.expect("get");
    assert_eq!(resp.status(), StatusCode::OK);
    // Adjust is answered with its connector's fixed text.
    assert_eq!(resp.text().await.expect("body"), "OK");
    let credited = format!(
        "SELECT COUNT(*) FROM conversions WHERE source = 'adjust' AND decision = 'accepted' \
         AND click_id = '{click}' AND goal = 'purchase' AND amount_minor = 999 AND currency = 'EUR'"
    );
    assert_eq!(count(&app, &credited).await, 1);

    let path = stored_path(&app).await;
    assert!(
        !path.contains(token) && path.contains("event_name=purchase"),
        "{path}"
    );

    // The same callback again is a duplicate, not a second conversion.
    let again = callback().await.expect("get");
    assert_eq!(again.status(), StatusCode::OK);
    assert_eq!(count(&app, &credited).await, 1);
    assert_eq!(
        count(
            &app,
            "SELECT COUNT(*) FROM conversions WHERE source = 'adjust' AND decision = 'accepted'"
        )
        .await,
        1
    );
}
