//! `kill -9` right after a 2xx loses nothing: the real binary, killed without warning.

use crate::helpers::{ACME_TOKEN, CLICK_KEY_B64, TEST_CONFIG, key_ring};

/// Starts `postgate serve` on `db`; returns the child and its port.
pub(crate) fn start(
    config: &std::path::Path,
    db: &std::path::Path,
) -> (std::process::Child, String) {
    let url: std::ffi::OsString = crate::support::database_url(db).into();
    crate::support::start_binary(
        config,
        [
            ("TEST_DB_URL", url.as_os_str()),
            (
                "SHOPIFY_WEBHOOK_SECRET",
                "test-shopify-secret-0123456789".as_ref(),
            ),
            ("SALESFORCE_TOKEN", "sf-token-0123456789abcdef".as_ref()),
            ("SALESFORCE_ORG_ID", "0123456789ABCDENNN".as_ref()),
            (
                "STRIPE_WEBHOOK_SECRET",
                crate::helpers::STRIPE_SECRET.as_ref(),
            ),
        ],
    )
}

#[tokio::test]
async fn acknowledged_conversions_survive_kill_minus_nine() {
    let dir = tempfile::tempdir().expect("dir");
    let config = dir.path().join("postgate.toml");
    crate::support::write_config(&config, TEST_CONFIG);
    let db = dir.path().join("crash.db");
    assert!(TEST_CONFIG.contains(CLICK_KEY_B64));

    let (mut child, base) = start(&config, &db);
    let client = reqwest::Client::new();
    let clicked = chrono::Utc::now() - chrono::Duration::minutes(1);
    let mut acknowledged = Vec::new();
    let mut sends = Vec::new();
    for i in 0..200 {
        let click = key_ring().issue(1, 1 + i % 2, clicked).expect("click");
        let url = format!(
            "{base}/postback?token={ACME_TOKEN}&click_id={}&payout=10.00&transaction_id=K{i}",
            click.as_str()
        );
        let client = client.clone();
        sends.push(tokio::spawn(async move { client.get(url).send().await }));
    }
    for send in sends {
        if let Ok(Ok(resp)) = send.await
            && resp.status() == 200
            && let Ok(body) = resp.json::<serde_json::Value>().await
            && body["status"] == "accepted"
        {
            acknowledged.push(body["conversion_id"].as_str().expect("id").to_owned());
        }
    }
    // No graceful shutdown: SIGKILL right after the last answer.
    child.kill().expect("kill -9");
    child.wait().expect("reaped");
    assert_eq!(acknowledged.len(), 200, "all answered before the kill");

    let (mut child, base) = start(&config, &db);
    for id in &acknowledged {
        let resp = client
            .get(format!("{base}/api/v1/conversions/{id}"))
            .bearer_auth(crate::helpers::ADMIN_TOKEN)
            .send()
            .await
            .expect("read");
        assert_eq!(resp.status(), 200, "conversion {id} lost");
    }
    let balances: serde_json::Value = client
        .get(format!("{base}/api/v1/ledger/balances"))
        .bearer_auth(crate::helpers::ADMIN_TOKEN)
        .send()
        .await
        .expect("balances")
        .json()
        .await
        .expect("json");
    let receivable = balances["balances"]
        .as_array()
        .expect("array")
        .iter()
        .find(|b| b["account"] == "advertiser:acme:receivable")
        .map(|b| b["amount_minor"].as_i64().expect("minor"));
    assert_eq!(
        receivable,
        Some(200 * 1000),
        "ledger holds every acknowledged payout"
    );
    child.kill().expect("kill");
    let _ = child.wait();
}
