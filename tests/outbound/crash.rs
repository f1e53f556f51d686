//! A delivery in flight when the gateway is `kill -9`ed is sent again after the restart:
//! at-least-once, with the in-flight one as the only possible duplicate.

use std::path::Path;
use std::process::Child;
use std::time::Duration;

use serde_json::Value;

use crate::harness::{ACME_TOKEN, ADMIN_TOKEN, CONFIG, Receiver, SHOPIFY_SECRET};

/// Starts the real binary on `db`, delivering to `receiver`.
fn start(config: &Path, db: &Path, receiver: &Receiver) -> (Child, String) {
    let url: std::ffi::OsString = crate::support::database_url(db).into();
    crate::support::start_binary(
        config,
        [
            ("TEST_DB_URL", url.as_os_str()),
            ("RECEIVER", receiver.base.as_ref()),
            ("SHOPIFY_WEBHOOK_SECRET", SHOPIFY_SECRET.as_ref()),
        ],
    )
}

async fn eventually<T>(what: &str, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    // A hang guard, not a timing assertion.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never happened: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_delivery_in_flight_when_the_gateway_is_killed_is_sent_again_after_restart() {
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let config = dir.path().join("postgate.toml");
    // The attempt in flight was handed to the worker by the writer; after the crash its
    // queued job runs when due, 2 s after the conversion.
    crate::support::write_config(
        &config,
        &CONFIG.replace(
            "poll_interval_ms = 50",
            "poll_interval_ms = 50\nhandoff_grace_ms = 2000",
        ),
    );
    let db = dir.path().join("crash.db");
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");

    let (mut gateway, base) = start(&config, &db, &receiver);
    let resp = client
        .get(format!("{base}/c/shoes?aff=slow"))
        .send()
        .await
        .expect("click");
    let location = resp.headers()["location"]
        .to_str()
        .expect("location")
        .to_owned();
    let click = reqwest::Url::parse(&location)
        .expect("url")
        .query_pairs()
        .find(|(k, _)| k == "subid")
        .map(|(_, v)| v.into_owned())
        .expect("subid");
    let receipt: Value = client
        .get(format!("{base}/postback"))
        .query(&[
            ("token", ACME_TOKEN),
            ("click_id", &click),
            ("transaction_id", "K1"),
        ])
        .send()
        .await
        .expect("postback")
        .json()
        .await
        .expect("receipt");
    assert_eq!(receipt["status"], "accepted", "{receipt}");
    let conversion_id = receipt["conversion_id"].as_str().expect("id").to_owned();

    // The affiliate holds the request open: the attempt is in flight. Kill the gateway.
    let slow = |r: &Receiver| r.received().iter().filter(|q| q.route == "slow").count();
    eventually("the attempt reaches the affiliate", async || {
        (slow(&receiver) >= 1).then_some(())
    })
    .await;
    gateway.kill().expect("kill -9");
    gateway.wait().expect("reaped");
    receiver.release_slow();

    let (mut gateway, base) = start(&config, &db, &receiver);
    let delivery = eventually("the delivery completes after the restart", async || {
        let body: Value = client
            .get(format!(
                "{base}/api/v1/deliveries?conversion_id={conversion_id}"
            ))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        let first = body["deliveries"].get(0)?.clone();
        (first["state"] == "delivered").then_some(first)
    })
    .await;
    let sent = slow(&receiver);
    assert!(sent >= 2, "sent again after the crash ({sent} requests)");
    assert!(
        receiver
            .received()
            .iter()
            .filter(|q| q.route == "slow")
            .all(|q| q.uri.query().is_some_and(|s| s.contains(&click))),
        "every request is this conversion's postback"
    );
    assert_eq!(delivery["conversion_id"], conversion_id.as_str());
    gateway.kill().expect("kill");
    let _ = gateway.wait();
}
