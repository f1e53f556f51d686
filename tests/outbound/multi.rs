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

use crate::harness::{ADMIN_TOKEN, Receiver, TestApp, settings_for, spawn_with};

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

/// The same approving postback for each click (transaction `{prefix}-{i}`) sent to both
/// gateways at once; the two receipts of each.
async fn approve_on_both(
    a: &TestApp,
    b: &TestApp,
    clicks: &[String],
    prefix: &str,
) -> Vec<(Value, Value)> {
    join_all(clicks.iter().enumerate().map(|(i, click)| async move {
        let txn = format!("{prefix}-{i}");
        tokio::join!(
            a.postback(click, &txn, "approved"),
            b.postback(click, &txn, "approved")
        )
    }))
    .await
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
    let pairs = approve_on_both(&a, &b, &clicks, "MULTI").await;
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
        let receipt = a.postback(click, &format!("PEND-{i}"), "pending").await;
        assert_eq!(receipt["status"], "accepted", "{receipt}");
    }
    assert_eq!(balance(&a, "affiliate:silent:payable").await, 0);
    // The approval arrives at both gateways together: the row lock lets one transition win.
    let pairs = approve_on_both(&a, &b, &clicks, "PEND").await;
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

/// apalis hands a job to another gateway when it thinks the first one's worker is dead
/// (missed heartbeats) — including while that worker is still sending. Copies of an
/// in-flight attempt, queued as such a re-queue would, must wait for the first (the lease
/// on the delivery row) and then find it done: the affiliate sees one request, never two
/// at once.
#[tokio::test]
async fn copies_of_an_attempt_in_flight_on_another_gateway_are_not_sent() {
    let Some((a, b, receiver)) = two_gateways().await else {
        return;
    };
    let click = a.click("slow").await;
    let conversion = a.convert(&click, "T-lease", "approved").await;
    // The first attempt is held open by the affiliate.
    for _ in 0..200 {
        if receiver.received().iter().any(|r| r.route == "slow") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let slow = || {
        receiver
            .received()
            .iter()
            .filter(|r| r.route == "slow")
            .count()
    };
    assert_eq!(slow(), 1, "first attempt in flight");
    let delivery_id = a.deliveries(&conversion).await[0]["id"]
        .as_str()
        .expect("delivery id")
        .to_owned();

    // Eight copies of attempt 1, due at once, queued one by one so that each goes to
    // whichever gateway polls first (a batch would go to one of them).
    let pool = crate::support::open_pool(&a.database_url).await;
    for n in 0..8 {
        let now = chrono::Utc::now().timestamp();
        let job = postgate::outbound::job::DeliveryJob::first(&delivery_id, 1);
        postgate::db!(&pool, p => {
            let mut conn = p.acquire().await.expect("connection");
            postgate::outbound::enqueue::push_job_keyed(
                &mut postgate::store::Conn::from(&mut *conn),
                job,
                now,
                format!("requeued-copy-{n}"),
            )
            .await
            .expect("copy queued")
        });
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(slow(), 1, "a copy was sent while the attempt was in flight");

    receiver.release_slow();
    a.wait_for_state(&conversion, "delivered").await;
    // The copies put back (5 s) run again and find the attempt logged.
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(slow(), 1, "a copy was sent after the attempt was done");
    let delivery = &b.deliveries(&conversion).await[0];
    assert_eq!(delivery["attempts"], 1, "{delivery}");
    assert_eq!(
        delivery["attempt_log"].as_array().map(Vec::len),
        Some(1),
        "{delivery}"
    );
}
