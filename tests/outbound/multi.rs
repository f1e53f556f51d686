//! Several gateways on one PostgreSQL database, the scale-out deployment: one conversion per
//! transaction, one ledger entry per transition and one delivery per conversion hold across
//! processes, by database constraints and apalis' row locks, not by anything in memory.
//!
//! PostgreSQL only (`POSTGATE_TEST_POSTGRES_URL`): one gateway per SQLite file is the
//! supported SQLite deployment, so on SQLite these tests return at once.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::future::join_all;
use serde_json::Value;

use crate::harness::{ACME_TOKEN, ADMIN_TOKEN, Receiver, TestApp, settings_for, spawn_with};

/// Two gateways on one fresh database, delivering to one receiver.
async fn two_gateways() -> Option<(TestApp, TestApp, Receiver)> {
    if std::env::var(crate::support::POSTGRES_ENV).is_err() {
        eprintln!(
            "skipped: PostgreSQL only (set {})",
            crate::support::POSTGRES_ENV
        );
        return None;
    }
    let receiver = Receiver::start().await;
    let dir_a = tempfile::tempdir().expect("dir");
    let dir_b = tempfile::tempdir().expect("dir");
    let settings_a = settings_for(&dir_a.path().join("postgate.db"), &receiver);
    let mut settings_b = settings_for(&dir_b.path().join("postgate.db"), &receiver);
    settings_b.server.database_url = settings_a.server.database_url.clone();
    let a = spawn_with(dir_a, settings_a).await;
    let b = spawn_with(dir_b, settings_b).await;
    Some((a, b, receiver))
}

async fn postback(app: &TestApp, click: &str, txn: &str, status: &str) -> Value {
    app.client
        .get(format!("{}/postback", app.address))
        .query(&[
            ("token", ACME_TOKEN),
            ("click_id", click),
            ("transaction_id", txn),
            ("status", status),
        ])
        .send()
        .await
        .expect("postback")
        .json()
        .await
        .expect("receipt")
}

async fn balance(app: &TestApp, account: &str) -> i64 {
    let body: Value = app
        .client
        .get(format!("{}/api/v1/ledger/balances", app.address))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("balances")
        .json()
        .await
        .expect("JSON");
    body["balances"]
        .as_array()
        .expect("balances")
        .iter()
        .filter(|b| b["account"] == account)
        .map(|b| b["amount_minor"].as_i64().expect("amount"))
        .sum()
}

#[tokio::test]
async fn the_same_postbacks_sent_to_two_gateways_make_one_conversion_each_and_one_delivery() {
    let Some((a, b, receiver)) = two_gateways().await else {
        return;
    };
    const N: usize = 100;
    let mut clicks = Vec::with_capacity(N);
    for i in 0..N {
        // Clicks come in through either gateway.
        clicks.push(if i % 2 == 0 { &a } else { &b }.click("plain").await);
    }
    let pairs = join_all(clicks.iter().enumerate().map(|(i, click)| {
        let (a, b) = (&a, &b);
        async move {
            let txn = format!("MULTI-{i}");
            tokio::join!(
                postback(a, click, &txn, "approved"),
                postback(b, click, &txn, "approved")
            )
        }
    }))
    .await;
    for (x, y) in &pairs {
        let mut verdicts = [x["status"].as_str(), y["status"].as_str()];
        verdicts.sort();
        assert_eq!(verdicts, [Some("accepted"), Some("duplicate")], "{x} {y}");
        assert_eq!(x["conversion_id"], y["conversion_id"], "{x} {y}");
    }
    // Paid once per transaction, whichever gateway is asked.
    assert_eq!(
        balance(&a, "affiliate:plain:payable").await,
        -1500 * N as i64
    );
    assert_eq!(
        balance(&b, "affiliate:plain:payable").await,
        -1500 * N as i64
    );

    // Both workers poll the one queue; every conversion reaches the affiliate once.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while receiver.received().len() < N {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {N} postbacks arrived",
            receiver.received().len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Late duplicates would arrive within a few polls.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut per_txn: HashMap<String, usize> = HashMap::new();
    for r in receiver.received() {
        let url = reqwest::Url::parse(&format!("http://x{}", r.uri)).expect("url");
        let txid = url
            .query_pairs()
            .find(|(k, _)| k == "txid")
            .map(|(_, v)| v.into_owned())
            .expect("txid");
        *per_txn.entry(txid).or_default() += 1;
    }
    assert_eq!(per_txn.len(), N);
    assert!(per_txn.values().all(|n| *n == 1), "{per_txn:?}");
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn an_approval_sent_to_two_gateways_at_once_posts_the_ledger_once() {
    let Some((a, b, _receiver)) = two_gateways().await else {
        return;
    };
    const N: usize = 50;
    let mut clicks = Vec::with_capacity(N);
    for _ in 0..N {
        clicks.push(a.click("silent").await);
    }
    for (i, click) in clicks.iter().enumerate() {
        let receipt = postback(&a, click, &format!("PEND-{i}"), "pending").await;
        assert_eq!(receipt["status"], "accepted", "{receipt}");
    }
    assert_eq!(balance(&a, "affiliate:silent:payable").await, 0);
    // The approval arrives at both gateways together: the row lock lets one transition win.
    let pairs = join_all(clicks.iter().enumerate().map(|(i, click)| {
        let (a, b) = (&a, &b);
        async move {
            let txn = format!("PEND-{i}");
            tokio::join!(
                postback(a, click, &txn, "approved"),
                postback(b, click, &txn, "approved")
            )
        }
    }))
    .await;
    for (x, y) in &pairs {
        let mut verdicts = [x["status"].as_str(), y["status"].as_str()];
        verdicts.sort();
        assert_eq!(verdicts, [Some("accepted"), Some("duplicate")], "{x} {y}");
    }
    assert_eq!(
        balance(&b, "affiliate:silent:payable").await,
        -1500 * N as i64
    );
    a.stop().await;
    b.stop().await;
}
