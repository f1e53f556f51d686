//! apalis ends a worker for good when a poll of its job table fails. The gateway starts a
//! new one, so conversions accepted after a database outage are still delivered without a
//! restart of the gateway.

use std::time::Duration;

use serde_json::Value;

use crate::harness::{Receiver, TestApp, spawn_app_without_handoff};
use crate::support::Outage;

async fn worker_state(app: &TestApp) -> Value {
    let body: Value = app
        .client
        .get(format!("{}/readyz", app.address))
        .send()
        .await
        .expect("readyz")
        .json()
        .await
        .expect("JSON readiness");
    body["delivery_worker"].clone()
}

#[tokio::test]
async fn the_delivery_worker_is_started_again_after_the_database_was_unreachable() {
    let receiver = Receiver::start().await;
    // Without the handoff: the delivery after the outage must come through apalis.
    let app = spawn_app_without_handoff(&receiver).await;
    let click = app.click("plain").await;
    let before = worker_state(&app).await;
    assert_eq!(before["running"], true, "{before}");
    assert_eq!(before["restarts"], 0, "{before}");

    let outage = Outage::begin(&app).await;
    // The worker's poll fails once the database has been unusable for its busy timeout
    // (SQLite) or at once (PostgreSQL). The deadline is a hang guard.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let state = worker_state(&app).await;
        if state["restarts"].as_u64() >= Some(1) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the worker never failed: {state}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    outage.end().await;

    let id = app.convert(&click, "T-after-outage", "approved").await;
    app.wait_for_state(&id, "delivered").await;
    let sent: Vec<_> = receiver
        .received()
        .into_iter()
        .filter(|r| r.uri.to_string().contains(&click))
        .collect();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(worker_state(&app).await["running"], true);
}
