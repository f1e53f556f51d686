//! `GET /metrics`: Prometheus text with exact counts. The real binary in its own process,
//! since the recorder is process-wide and the other tests in this binary record too.

use reqwest::StatusCode;

use crate::helpers::{ACME_TOKEN, ADMIN_TOKEN, TEST_CONFIG, key_ring, metric as sample};

/// The gateway process, killed when the test ends, passed or not.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn metrics_count_requests_decisions_and_commits_without_leaking_ids() {
    let dir = tempfile::tempdir().expect("dir");
    let config = dir.path().join("postgate.toml");
    crate::support::write_config(&config, TEST_CONFIG);
    let (child, base) = crate::crash::start(&config, &dir.path().join("metrics.db"));
    let _child = KillOnDrop(child);
    let client = reqwest::Client::new();

    let clicked = chrono::Utc::now() - chrono::Duration::minutes(1);
    let clicks = [1, 2].map(|aff| key_ring().issue(1, aff, clicked).expect("click"));
    let postback = |click: usize, txid: &str, token: &str| {
        format!(
            "{base}/postback?token={token}&click_id={}&payout=10.00&transaction_id={txid}",
            clicks[click].as_str()
        )
    };
    for (url, expected) in [
        (postback(0, "M1", ACME_TOKEN), "accepted"),
        (postback(0, "M1", ACME_TOKEN), "duplicate"),
        (postback(1, "M2", ACME_TOKEN), "accepted"),
    ] {
        let body: serde_json::Value = client
            .get(url)
            .send()
            .await
            .expect("postback")
            .json()
            .await
            .expect("json");
        assert_eq!(body["status"], expected, "{body}");
    }
    let refused = client
        .get(postback(1, "M3", "wrong-token"))
        .send()
        .await
        .expect("postback");
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);

    let anonymous = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("metrics");
    assert_eq!(
        anonymous.status(),
        StatusCode::UNAUTHORIZED,
        "business volumes"
    );

    let resp = client
        .get(format!("{base}/metrics"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("metrics");
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .is_ok_and(|t| t.starts_with("text/plain")),
        "Prometheus text format"
    );
    let page = resp.text().await.expect("body");

    let series = [
        (
            r#"postgate_http_requests_total{route="/postback",status="200"}"#,
            3.0,
        ),
        (
            r#"postgate_http_requests_total{route="/postback",status="401"}"#,
            1.0,
        ),
        (
            r#"postgate_conversions_total{channel="postback",verdict="accepted"}"#,
            2.0,
        ),
        (
            r#"postgate_conversions_total{channel="postback",verdict="duplicate"}"#,
            1.0,
        ),
    ];
    for (name, want) in series {
        assert_eq!(sample(&page, name), Some(want), "{name} in:\n{page}");
    }
    // The writer committed the three decisions (and maybe other rows) in one batch or more.
    let commits = sample(&page, "postgate_writer_commit_seconds_count").expect("commit histogram");
    let items = sample(&page, "postgate_writer_batch_items_sum").expect("batch histogram");
    assert!(
        commits >= 1.0 && items >= 3.0,
        "{commits} commits, {items} items"
    );
    assert!(page.contains("# HELP postgate_spooled_total"), "described");
    assert_eq!(
        sample(&page, "postgate_spooled_total"),
        Some(0.0),
        "shown before any outage"
    );
    assert!(
        clicks.iter().all(|c| !page.contains(c.as_str())) && !page.contains(ACME_TOKEN),
        "no click ID or token in labels"
    );
}
