//! The writer hands a new delivery's first attempt straight to the worker; the apalis job
//! written with the conversion comes due only after a grace period, and is marked done when
//! the handed-off attempt is recorded. (The fallback, a job that runs because its handoff was
//! lost with the process, is `crash.rs`.)

use std::time::Duration;

use crate::harness::{Receiver, settings_for, spawn_app_without_handoff, spawn_with};

/// The first-attempt job of `delivery`: status, `run_at` and `last_result`.
async fn first_job(app: &crate::harness::TestApp, delivery: &str) -> (String, i64, String) {
    let key = format!("{delivery}:1:1");
    let pool = app.pool().await;
    match &pool {
        postgate::store::Db::Sqlite(p) => sqlx::query_as(
            "SELECT status, run_at, COALESCE(last_result, '') FROM Jobs WHERE idempotency_key = $1",
        )
        .bind(&key)
        .fetch_one(p)
        .await
        .expect("job"),
        postgate::store::Db::Postgres(p) => sqlx::query_as(
            "SELECT status, CAST(EXTRACT(EPOCH FROM run_at) AS BIGINT),
                COALESCE(CAST(last_result AS TEXT), '')
             FROM apalis.jobs WHERE idempotency_key = $1",
        )
        .bind(&key)
        .fetch_one(p)
        .await
        .expect("job"),
    }
}

#[tokio::test]
async fn a_first_attempt_is_sent_before_its_job_is_due_and_the_job_is_marked_done() {
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let mut settings = settings_for(&dir.path().join("postgate.db"), &receiver);
    settings.outbound.handoff_grace = Some(Duration::from_secs(600));
    let app = spawn_with(dir, settings).await;
    let click = app.click("plain").await;
    let before = chrono::Utc::now().timestamp();
    let conversion = app.convert(&click, "T-handoff", "approved").await;

    // Delivered within wait_for_state's 30 s, while apalis would not run the job for 600 s.
    let delivery = app.wait_for_state(&conversion, "delivered").await;
    assert_eq!(delivery["attempts"], 1, "{delivery}");
    let id = delivery["id"].as_str().expect("delivery id");
    let (status, run_at, result) = first_job(&app, id).await;
    assert!(
        run_at >= before + 600,
        "the job waits out the grace: {run_at} vs {before}"
    );
    assert_eq!(status, "Done", "recorded with the attempt");
    assert!(result.contains("handed off"), "{result}");
    let sent = receiver
        .received()
        .into_iter()
        .filter(|r| r.uri.to_string().contains(&click))
        .count();
    assert_eq!(sent, 1);
    app.stop().await;
}

#[tokio::test]
async fn without_the_handoff_the_first_attempt_is_due_at_once_and_apalis_runs_it() {
    let receiver = Receiver::start().await;
    let app = spawn_app_without_handoff(&receiver).await;
    let click = app.click("plain").await;
    let after = chrono::Utc::now().timestamp() + 5;
    let conversion = app.convert(&click, "T-queued", "approved").await;

    let delivery = app.wait_for_state(&conversion, "delivered").await;
    let id = delivery["id"].as_str().expect("delivery id");
    // apalis acknowledges the job after the attempt is recorded, so "delivered" can be seen
    // a moment before the job is Done.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let (status, run_at, result) = loop {
        let job = first_job(&app, id).await;
        if job.0 != "Running" || tokio::time::Instant::now() > deadline {
            break job;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(run_at <= after, "due at once: {run_at}");
    assert_eq!(status, "Done");
    assert!(!result.contains("handed off"), "{result}");
    app.stop().await;
}
