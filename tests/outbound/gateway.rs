//! End to end: postback in → delivery row and job in the same transaction → the worker
//! sends to a recording fake affiliate, retries on the shrunken schedule, pauses, dead-letters,
//! replays, and survives a restart.

use postgate::outbound::{WebhookSecret, verify};
use reqwest::StatusCode;
use serde_json::json;

use crate::harness::{
    Receiver, WHSEC, settings_for, spawn_app, spawn_app_with_schedule, spawn_with,
};

#[tokio::test]
async fn an_accepted_conversion_is_delivered_once_with_the_rendered_query() {
    let receiver = Receiver::start().await;
    let app = spawn_app(&receiver).await;
    let click = app.click("plain").await;
    let conversion = app.convert(&click, "T-1&x=y", "approved").await;

    let delivery = app.wait_for_state(&conversion, "delivered").await;
    assert_eq!(delivery["attempts"], 1, "{delivery}");
    assert_eq!(delivery["status"], "approved");
    assert_eq!(delivery["attempt_log"][0]["http_status"], 200);
    let got = receiver.received();
    assert_eq!(got.len(), 1, "exactly one request: {got:?}");
    let url = reqwest::Url::parse(&format!("http://x{}", got[0].uri)).expect("url");
    let q: std::collections::HashMap<String, String> = url.query_pairs().into_owned().collect();
    assert_eq!(got[0].route, "pb");
    assert_eq!(q["click_id"], click);
    assert_eq!(q["payout"], "15.00");
    assert_eq!(q["currency"], "USD");
    assert_eq!(q["txid"], "T-1&x=y", "values are URL-encoded");
    assert_eq!(q["status"], "approved");
    assert_eq!(q["s1"], "s 1", "sub ids come from the click");
    app.stop().await;
}

#[tokio::test]
async fn a_post_endpoint_gets_a_valid_standard_webhooks_signature_and_status_changes() {
    let receiver = Receiver::start().await;
    let app = spawn_app(&receiver).await;
    let click = app.click("signed").await;
    // Pending is not among the endpoint's statuses: nothing is sent for it.
    let conversion = app.convert(&click, "P-1", "pending").await;
    assert!(app.deliveries(&conversion).await.is_empty());
    // The approval is a status change of the same conversion, announced on its own.
    let approved = app.convert(&click, "P-1", "approved").await;
    assert_eq!(approved, conversion);
    let delivery = app.wait_for_state(&conversion, "delivered").await;
    assert_eq!(delivery["status"], "approved");

    let got = receiver.received();
    assert_eq!(got.len(), 1, "{got:?}");
    let r = &got[0];
    assert_eq!(r.method, "POST");
    let header = |k: &str| {
        r.headers
            .get(k)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(
        header("webhook-id"),
        delivery["webhook_id"].as_str().unwrap_or("?")
    );
    let ts: i64 = header("webhook-timestamp").parse().expect("timestamp");
    let secret = WebhookSecret::parse(WHSEC).expect("secret");
    assert!(verify(
        &secret,
        &header("webhook-id"),
        ts,
        &r.body,
        &header("webhook-signature")
    ));
    let body: serde_json::Value = serde_json::from_slice(&r.body).expect("JSON body");
    assert_eq!(
        body,
        json!({"click": click, "payout": "15.00", "status": "approved"})
    );
    app.stop().await;
}

#[tokio::test]
async fn server_errors_then_success_deliver_on_the_third_attempt() {
    let receiver = Receiver::start().await;
    let app = spawn_app_with_schedule(&receiver, &[0, 1, 2, 60]).await;
    let click = app.click("flaky").await;
    let conversion = app.convert(&click, "F-1", "approved").await;
    let delivery = app.wait_for_state(&conversion, "delivered").await;
    assert_eq!(delivery["attempts"], 3, "{delivery}");
    let log = delivery["attempt_log"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let statuses: Vec<_> = log.iter().map(|a| a["http_status"].clone()).collect();
    assert_eq!(statuses, [json!(500), json!(500), json!(200)]);
    assert_eq!(log[0]["outcome"], "retry");
    assert_eq!(log[2]["outcome"], "delivered");
    assert_eq!(receiver.received().len(), 3);
    app.stop().await;
}

#[tokio::test]
async fn gone_pauses_the_endpoint_until_it_is_resumed() {
    let receiver = Receiver::start().await;
    let app = spawn_app(&receiver).await;
    let click = app.click("gone").await;
    let conversion = app.convert(&click, "G-1", "approved").await;
    let delivery = app.wait_for_state(&conversion, "paused").await;
    assert_eq!(delivery["attempts"], 1);
    assert_eq!(delivery["attempt_log"][0]["http_status"], 410);
    assert_eq!(receiver.received().len(), 1, "no retries while paused");

    let (status, body) = app
        .admin_post("/api/v1/endpoints/aff:gone/resume", json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["was_paused"], true);
    assert_eq!(body["replayed"], 1);
    // Still 410: paused again, after a second series' first attempt.
    let delivery = app.wait_for_state(&conversion, "paused").await;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut delivery = delivery;
    while delivery["series"] != 2 || delivery["attempts"] != 2 {
        assert!(tokio::time::Instant::now() < deadline, "{delivery}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        delivery = app.wait_for_state(&conversion, "paused").await;
    }
    assert_eq!(receiver.received().len(), 2);
    app.stop().await;
}

#[tokio::test]
async fn a_redirect_to_a_blocked_address_is_a_failure_and_is_not_followed() {
    let receiver = Receiver::start().await;
    let blocked = receiver.redirect_to_blocked().await;
    let app = spawn_app(&receiver).await;
    let click = app.click("redirects").await;
    let conversion = app.convert(&click, "R-1", "approved").await;
    // Each attempt is a 302 failure until the shrunken schedule ends in a dead letter (two
    // or three attempts: one that runs past the 2 s horizon is the last).
    let delivery = app.wait_for_state(&conversion, "dead").await;
    let log = delivery["attempt_log"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(log.len() >= 2, "{delivery}");
    assert!(log.iter().all(|a| a["http_status"] == 302), "{delivery}");
    assert!(
        blocked.received().is_empty(),
        "the redirect target was fetched"
    );
    app.stop().await;
}

#[tokio::test]
async fn an_exhausted_delivery_is_dead_lettered_and_a_replay_delivers_it() {
    let receiver = Receiver::start().await;
    let app = spawn_app(&receiver).await;
    let click = app.click("down").await;
    let conversion = app.convert(&click, "D-1", "approved").await;
    let dead = app.wait_for_state(&conversion, "dead").await;
    let tried = dead["attempts"].as_u64().unwrap_or_default();
    assert!(tried >= 2, "{dead}");
    let last = &dead["attempt_log"][tried as usize - 1];
    assert_eq!(last["outcome"], "dead");
    assert_eq!(last["response"], "maintenance");

    receiver.heal();
    let (status, body) = app
        .admin_post(
            "/api/v1/deliveries/replay",
            json!({ "affiliate": "down", "since": "2020-01-01T00:00:00Z" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["replayed"], 1);
    let delivered = app.wait_for_state(&conversion, "delivered").await;
    assert_eq!(delivered["id"], dead["id"], "same delivery, not a new one");
    assert_eq!(delivered["webhook_id"], dead["webhook_id"]);
    assert_eq!(delivered["series"], 2);
    assert_eq!(delivered["attempts"], tried + 1);
    assert_eq!(receiver.received().len() as u64, tried + 1);
    assert_eq!(app.deliveries(&conversion).await.len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn a_delivery_queued_before_a_restart_is_delivered_after_it() {
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let db = dir.path().join("postgate.db");
    let mut settings = settings_for(&db, &receiver);
    settings.outbound.worker = false;
    let app = spawn_with(dir, settings).await;
    let click = app.click("plain").await;
    let conversion = app.convert(&click, "S-1", "approved").await;
    let queued = app.deliveries(&conversion).await;
    assert_eq!(queued.len(), 1);
    assert_eq!(
        queued[0]["state"], "pending",
        "committed with the conversion"
    );
    let dir = app.stop().await;
    assert!(receiver.received().is_empty());

    let app = spawn_with(dir, settings_for(&db, &receiver)).await;
    let delivery = app.wait_for_state(&conversion, "delivered").await;
    assert_eq!(delivery["attempts"], 1);
    assert_eq!(receiver.received().len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn affiliates_without_a_postback_and_rejected_conversions_get_no_delivery() {
    let receiver = Receiver::start().await;
    let app = spawn_app(&receiver).await;
    let click = app.click("silent").await;
    let conversion = app.convert(&click, "N-1", "approved").await;
    assert!(app.deliveries(&conversion).await.is_empty());

    // A subscribed affiliate's conversion that is rejected (unknown goal) is not announced.
    let click = app.click("plain").await;
    let body: serde_json::Value = app
        .client
        .get(format!("{}/postback", app.address))
        .query(&[
            ("token", crate::harness::ACME_TOKEN),
            ("click_id", click.as_str()),
            ("transaction_id", "N-2"),
            ("goal", "no-such-goal"),
        ])
        .send()
        .await
        .expect("postback")
        .json()
        .await
        .expect("receipt");
    assert_eq!(body["status"], "rejected", "{body}");
    let rejected = body["conversion_id"].as_str().expect("recorded");
    assert!(app.deliveries(rejected).await.is_empty());
    app.stop().await;
}

#[tokio::test]
async fn the_cli_replays_dead_letters_by_affiliate_and_time() {
    let receiver = Receiver::start().await;
    let app = spawn_app(&receiver).await;
    let click = app.click("down").await;
    let conversion = app.convert(&click, "C-1", "approved").await;
    let dead = app.wait_for_state(&conversion, "dead").await;
    let tried = dead["attempts"].as_u64().unwrap_or_default();
    let dir = app.stop().await;

    receiver.heal();
    let db = dir.path().join("postgate.db");
    let config = dir.path().join("outbound.toml");
    crate::support::write_config(&config, crate::harness::CONFIG);
    let replay = async |filter: &[&str]| {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_postgate"))
            .args(["--config"])
            .arg(&config)
            .args(["deliveries", "replay"])
            .args(filter)
            .env("TEST_DB_URL", crate::support::database_url(&db))
            .env("RECEIVER", &receiver.base)
            .env("NO_COLOR", "1")
            .output()
            .await
            .expect("run postgate");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{filter:?}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    };
    // Each filter narrows the selection; a dry run only counts.
    for (filter, expected) in [
        (&["--offer", "shoes", "--dry-run"][..], "1 deliveries match"),
        (&["--offer", "hats", "--dry-run"][..], "0 deliveries match"),
        (
            &[
                "--affiliate",
                "down",
                "--until",
                "2020-01-02T00:00:00Z",
                "--dry-run",
            ][..],
            "0 deliveries match",
        ),
        (
            &[
                "--affiliate",
                "plain",
                "--since",
                "2020-01-01T00:00:00Z",
                "--dry-run",
            ][..],
            "0 deliveries match",
        ),
    ] {
        let stdout = replay(filter).await;
        assert!(stdout.contains(expected), "{filter:?}: {stdout}");
    }
    let stdout = replay(&["--affiliate", "down", "--since", "2020-01-01T00:00:00Z"]).await;
    assert!(
        stdout.contains("1 of 1 matching deliveries replayed"),
        "{stdout}"
    );

    let app = spawn_with(dir, settings_for(&db, &receiver)).await;
    let delivered = app.wait_for_state(&conversion, "delivered").await;
    assert_eq!(delivered["series"], 2);
    assert_eq!(delivered["attempts"], tried + 1);
    app.stop().await;
}

#[tokio::test]
async fn a_stuck_endpoint_does_not_hold_up_the_others() {
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let mut settings = settings_for(&dir.path().join("postgate.db"), &receiver);
    // Two worker slots, one per endpoint: without the cap, three stuck attempts would take
    // both slots and the other affiliate would wait.
    settings.outbound.concurrency = 2;
    settings.outbound.per_endpoint_concurrency = 1;
    let app = spawn_with(dir, settings).await;
    let mut stuck = Vec::new();
    for i in 0..3 {
        let click = app.click("slow").await;
        stuck.push(app.convert(&click, &format!("W-{i}"), "approved").await);
    }
    let click = app.click("plain").await;
    let other = app.convert(&click, "W-9", "approved").await;
    // Delivered while every /slow request is still held open.
    app.wait_for_state(&other, "delivered").await;
    let held = receiver
        .received()
        .iter()
        .filter(|r| r.route == "slow")
        .count();
    assert_eq!(held, 1, "one attempt in flight on the stuck endpoint");

    receiver.release_slow();
    for id in &stuck {
        app.wait_for_state(id, "delivered").await;
    }
    app.stop().await;
}

#[tokio::test]
async fn a_refund_without_a_click_id_is_announced_as_a_reversal() {
    let receiver = Receiver::start().await;
    let app = spawn_app(&receiver).await;
    let click = app.click("signed").await;
    let fixture = |p: &str| std::fs::read(format!("tests/fixtures/{p}")).expect("fixture");
    let order = String::from_utf8(fixture(
        "derived/shopify_orders_paid.note_attribute_click_id.json",
    ))
    .expect("utf-8")
    .replace("pgc_note_7Hq2ZkP4", &click)
    .replace(
        "2021-12-31T19:00:00-05:00",
        &(chrono::Utc::now() + chrono::Duration::seconds(2)).to_rfc3339(),
    );
    let paid = app
        .send_shopify("orders/paid", "wh-1", order.into_bytes())
        .await;
    assert_eq!(paid["events"][0]["status"], "accepted", "{paid}");
    let conversion = paid["events"][0]["conversion_id"]
        .as_str()
        .expect("id")
        .to_owned();
    app.wait_for_state(&conversion, "delivered").await;

    // The refund names the order only; the affiliate is known once the row is found.
    let refund = fixture("shopify/refunds_create.shopify-dev-2026-07.json");
    let body = app.send_shopify("refunds/create", "wh-2", refund).await;
    assert_eq!(body["events"][0]["status"], "accepted", "{body}");

    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let list = app.deliveries(&conversion).await;
        if list.len() == 2 && list.iter().all(|d| d["state"] == "delivered") {
            let announced: Vec<_> = list.iter().map(|d| d["status"].clone()).collect();
            assert_eq!(announced, [json!("approved"), json!("reversed")]);
            assert_ne!(list[0]["webhook_id"], list[1]["webhook_id"]);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{list:?}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let bodies: Vec<serde_json::Value> = receiver
        .received()
        .iter()
        .map(|r| serde_json::from_slice(&r.body).expect("JSON"))
        .collect();
    assert_eq!(bodies.len(), 2);
    assert_eq!(bodies[1]["status"], "reversed");
    assert_eq!(bodies[1]["click"], click.as_str());
    app.stop().await;
}
