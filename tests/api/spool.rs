//! When the database cannot be reached: verified requests are spooled, answered 202
//! `queued` (Salesforce: its Ack), and replayed into the database exactly once.
//!
//! The outage is real ([`Outage`]). On SQLite each locked write takes the 10 s busy
//! timeout; requests are sent one at a time, and the drainer's first probe waits, so no
//! request waits twice.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{ACME_TOKEN, SALESFORCE_TOKEN, SHOPIFY_SECRET, TestApp, spawn_app, spawn_in};
use crate::hooks::{count, fixture, send_shopify, shopify_order};
use crate::support::Outage;

async fn readyz(app: &TestApp) -> (StatusCode, Value) {
    let resp = app.get("/readyz").await;
    let status = resp.status();
    (status, resp.json().await.expect("JSON readiness"))
}

/// Waits until the drainer has emptied the spool and the database is back.
async fn drained(app: &TestApp) -> Value {
    let started = Instant::now();
    loop {
        let (status, body) = readyz(app).await;
        if status == StatusCode::OK && body["status"] == "ready" && body["spool"]["pending"] == 0 {
            return body;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "spool not drained: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `postgate_spooled_total` and `postgate_spool_drained_total` from `/metrics`.
async fn spool_counters(app: &TestApp) -> (u64, u64) {
    let page = app
        .client
        .get(format!("{}/metrics", app.address))
        .bearer_auth(crate::helpers::ADMIN_TOKEN)
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("body");
    let value = |name: &str| {
        crate::helpers::metric(&page, name).unwrap_or_else(|| panic!("{name} missing")) as u64
    };
    (
        value("postgate_spooled_total"),
        value("postgate_spool_drained_total"),
    )
}

fn spool_files(app: &TestApp) -> String {
    let dir = app.dir.path().join("spool");
    std::fs::read_dir(&dir)
        .expect("spool dir beside the database")
        .filter_map(Result::ok)
        .map(|e| String::from_utf8_lossy(&std::fs::read(e.path()).expect("read")).into_owned())
        .collect()
}

async fn conversions_of(app: &TestApp, click: &str) -> Vec<Value> {
    let (status, body) = app
        .admin_get(&format!("/api/v1/conversions?click_id={click}"))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["conversions"].as_array().expect("list").clone()
}

#[tokio::test]
async fn a_postback_during_an_outage_is_queued_then_recorded_exactly_once() {
    let app = spawn_app().await;
    let click = app.click("shoes", "aff1").await;
    let params = [
        ("token", ACME_TOKEN),
        ("click_id", click.as_str()),
        ("payout", "20.00"),
        ("transaction_id", "T-spooled-1"),
    ];

    let counted_before = spool_counters(&app).await;
    let outage = Outage::begin(&app).await;
    let (status, body) = app.postback(&params).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["status"], "queued");
    assert!(body["spool_id"].as_str().is_some_and(|id| !id.is_empty()));

    let (status, ready) = readyz(&app).await;
    assert_eq!(status, StatusCode::OK, "degraded, still taking requests");
    assert_eq!(ready["status"], "degraded", "{ready}");
    assert_eq!(ready["database"], "unreachable");
    assert_eq!(ready["spool"]["pending"], 1);
    assert_eq!(ready["spool"]["spooled_total"], 1);

    // The spool keeps the verified input: the advertiser, never its token.
    let files = spool_files(&app);
    assert!(files.contains("T-spooled-1"), "entry on disk");
    assert!(!files.contains(ACME_TOKEN), "no secret in the spool");

    outage.end().await;
    let ready = drained(&app).await;
    assert_eq!(ready["database"], "ok");
    assert_eq!(ready["spool"]["drained_total"], 1);
    assert_eq!(ready["spool"]["dead"], 0);
    // Process-wide counters (other tests in this process spool too): at least ours.
    let counted = spool_counters(&app).await;
    assert!(
        counted.0 > counted_before.0 && counted.1 > counted_before.1,
        "spooled and drained counted: {counted_before:?} -> {counted:?}"
    );

    let list = conversions_of(&app, &click).await;
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["transaction_id"], "T-spooled-1");
    assert_eq!(list[0]["decision"], "accepted", "{}", list[0]);
    assert_eq!(app.balance("affiliate:aff1:payable").await, -1500);

    // The advertiser's own retry now finds the replayed conversion.
    let (status, again) = app.postback(&params).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again["status"], "duplicate", "{again}");
    assert_eq!(conversions_of(&app, &click).await.len(), 1);
}

#[tokio::test]
async fn webhooks_during_an_outage_are_queued_salesforce_gets_its_ack_and_both_are_replayed() {
    let app = spawn_app().await;
    let click = app.click("shoes", "aff1").await;

    let outage = Outage::begin(&app).await;
    let resp = send_shopify(
        &app,
        "orders/paid",
        "wh-spooled",
        shopify_order(&click),
        SHOPIFY_SECRET,
    )
    .await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["status"], "queued", "{body}");

    let resp = app
        .client
        .post(format!(
            "{}/hooks/salesforce?token={SALESFORCE_TOKEN}",
            app.address
        ))
        .header("content-type", "text/xml; charset=utf-8")
        .body(fixture(
            "salesforce/outbound_message.lead.aspnet-webhooks.xml",
        ))
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), StatusCode::OK);
    let text = resp.text().await.expect("body");
    assert!(text.contains("<Ack>true</Ack>"), "Ack once durable: {text}");
    assert!(
        !spool_files(&app).contains(SALESFORCE_TOKEN),
        "the token query parameter is not spooled"
    );

    outage.end().await;
    let ready = drained(&app).await;
    assert_eq!(ready["spool"]["drained_total"], 2, "{ready}");

    // Replayed without re-verification (Salesforce's token is gone from the copy) and
    // decoded, mapped and judged as usual.
    let list = conversions_of(&app, &click).await;
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["source_event_id"], "wh-spooled");
    assert_eq!(
        count(
            &app,
            "SELECT COUNT(*) FROM conversions WHERE source = 'salesforce'"
        )
        .await,
        3
    );
    assert_eq!(count(&app, "SELECT COUNT(*) FROM raw_requests").await, 2);
}

#[tokio::test]
async fn a_spooled_postback_survives_a_restart_and_is_replayed_by_the_next_run() {
    let app = spawn_app().await;
    let click = app.click("shoes", "aff2").await;
    let outage = Outage::begin(&app).await;
    let (status, body) = app
        .postback(&[
            ("token", ACME_TOKEN),
            ("click_id", click.as_str()),
            ("transaction_id", "T-restart"),
        ])
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    // Stopped while the database is still down: the entry stays on disk.
    let dir = app.stop().await;
    outage.end().await;

    let app = spawn_in(dir).await;
    let ready = drained(&app).await;
    assert_eq!(ready["spool"]["drained_total"], 1, "{ready}");
    let list = conversions_of(&app, &click).await;
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["transaction_id"], "T-restart");
}

#[tokio::test]
async fn a_replay_is_judged_as_of_when_the_request_arrived_not_when_it_is_replayed() {
    use chrono::{Duration as Days, Utc};
    use postgate::domain::{CanonicalPostback, Status};
    use postgate::spool::{Spool, SpooledRequest};

    let dir = tempfile::tempdir().expect("dir");
    let settings = crate::helpers::settings_for(&dir.path().join("postgate.db"));
    // Clicked 31 days ago, converted a day later, within the 30-day window; spooled then
    // and replayed only now, when the click would have expired.
    let clicked = Utc::now() - Days::days(31);
    let click = crate::helpers::key_ring()
        .issue(1, 1, clicked)
        .expect("issue")
        .as_str()
        .to_owned();
    let spool = Spool::open(&settings.spool).expect("spool");
    spool
        .append(
            clicked + Days::days(1),
            SpooledRequest::Postback {
                advertiser: "acme".into(),
                postback: CanonicalPostback {
                    source: "postback".into(),
                    source_event_id: None,
                    event: None,
                    click_id: Some(click.clone()),
                    transaction_id: Some("T-late".into()),
                    status: Status::Approved,
                    amount: None,
                    currency: None,
                    occurred_at: None,
                    attributes: Default::default(),
                },
            },
        )
        .await
        .expect("append");
    drop(spool);

    let app = crate::support::spawn_with(dir, settings).await;
    drained(&app).await;
    let list = conversions_of(&app, &click).await;
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["decision"], "accepted", "{}", list[0]);
}

#[tokio::test]
async fn with_the_spool_disabled_an_outage_is_still_503_storage_unavailable() {
    let dir = tempfile::tempdir().expect("dir");
    let mut settings = crate::helpers::settings_for(&dir.path().join("postgate.db"));
    settings.spool.enabled = false;
    let app = crate::support::spawn_with(dir, settings).await;
    let click = app.click("shoes", "aff1").await;
    let outage = Outage::begin(&app).await;
    let (status, body) = app
        .postback(&[("token", ACME_TOKEN), ("click_id", click.as_str())])
        .await;
    outage.end().await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(crate::helpers::code(&body), "storage_unavailable");
    assert!(!app.dir.path().join("spool").exists());
    let (_, ready) = readyz(&app).await;
    assert_eq!(ready["spool"], Value::Null, "{ready}");
}
