//! A large backlog of outbound postbacks to an affiliate that is down (answers 503), the
//! gateway `kill -9`ed and restarted on it: memory stays bounded while the worker keeps
//! retrying, and once the affiliate is back every postback arrives.
//!
//! The retry schedule is shrunk to one attempt a second for an hour, so nothing goes dead
//! during the test and the backlog is due again as soon as the affiliate recovers.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::http::StatusCode;
use futures_util::StreamExt;
use serde_json::Value;

use crate::{ACME_TOKEN, Gateway, admin_get, clicks, client, full, pass, size};

/// The child's resident memory must stay below this, in KiB (256 MiB).
const RSS_LIMIT_KIB: u64 = 256 * 1024;

/// The affiliate's receiver: 503 while down, then 200, counting each transaction it got.
#[derive(Default)]
struct Affiliate {
    up: AtomicBool,
    refused: AtomicUsize,
    answered: AtomicUsize,
    distinct: AtomicUsize,
    seen: Mutex<Vec<u32>>,
}

async fn postback(
    State(aff): State<Arc<Affiliate>>,
    Query(query): Query<std::collections::HashMap<String, String>>,
) -> StatusCode {
    if !aff.up.load(Ordering::SeqCst) {
        aff.refused.fetch_add(1, Ordering::SeqCst);
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    let Some(i) = query
        .get("txid")
        .and_then(|t| t.strip_prefix("DB-")?.parse::<usize>().ok())
    else {
        return StatusCode::BAD_REQUEST;
    };
    let first = {
        let mut seen = aff.seen.lock().expect("seen");
        let Some(count) = seen.get_mut(i) else {
            return StatusCode::BAD_REQUEST;
        };
        *count += 1;
        *count == 1
    };
    aff.answered.fetch_add(1, Ordering::SeqCst);
    if first {
        aff.distinct.fetch_add(1, Ordering::SeqCst);
    }
    StatusCode::OK
}

async fn start_affiliate(n: usize) -> (Arc<Affiliate>, String) {
    let aff = Arc::new(Affiliate {
        seen: Mutex::new(vec![0; n]),
        ..Affiliate::default()
    });
    let app = axum::Router::new()
        .route("/pb", axum::routing::get(postback))
        .with_state(aff.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (aff, base)
}

/// RSS samples (MiB) every 250 ms until `progress` says done; panics past `guard` (a hang
/// guard) with the last progress report.
async fn sample_until(
    gateway: &Gateway,
    what: &str,
    guard: Duration,
    mut progress: impl FnMut() -> (bool, String),
) -> Vec<u64> {
    let start = Instant::now();
    let mut samples = Vec::new();
    loop {
        let rss = gateway.memory_kib("VmRSS");
        assert!(
            rss < RSS_LIMIT_KIB,
            "{what}: RSS {} MiB over the limit (samples so far {samples:?})",
            rss / 1024
        );
        samples.push(rss / 1024);
        let (done, report) = progress();
        if done {
            return samples;
        }
        assert!(
            start.elapsed() < guard,
            "{what}: not done after {} s: {report}; RSS MiB {}; the gateway's log:\n{}",
            guard.as_secs(),
            range(&samples),
            gateway.log_tail()
        );
        if samples.len() % 40 == 0 {
            println!(
                "reliability backlog: {what}: {report} after {:.0} s, RSS {rss_mib} MiB",
                start.elapsed().as_secs_f64(),
                rss_mib = rss / 1024
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn range(samples: &[u64]) -> String {
    let min = samples.iter().min().copied().unwrap_or_default();
    let max = samples.iter().max().copied().unwrap_or_default();
    format!("{min}-{max}")
}

pub async fn run(dir: &Path, database_url: &str) {
    let n = size(2_000, 100_000);
    let guard = Duration::from_secs(if full() { 1_200 } else { 300 });
    let started = Instant::now();
    let (affiliate, receiver) = start_affiliate(n).await;
    let schedule: Vec<String> = (0..=3_600).map(|s| s.to_string()).collect();
    // The kill comes once enough attempts were refused, which retries can reach while some
    // first attempts still wait in the in-memory handoff queue. Those are lost with the
    // process and run from their apalis jobs when the handoff grace ends: 60 s by default,
    // which made this scenario take a minute now and then. 2 s, as in kill_during_delivery.
    let tail = format!(
        "[outbound]\nallow_networks = [\"127.0.0.1/32\"]\nschedule_seconds = [{}]\n\
         jitter = 0.0\npoll_interval_ms = 50\nconcurrency = 64\nper_endpoint_concurrency = 64\n\
         handoff_grace_ms = 2000\n",
        schedule.join(", ")
    );
    let mut gateway = Gateway::start(
        dir,
        database_url,
        "postback_url = \"${RECEIVER}/pb?txid={transaction_id}\"\npostback_allow_http = true",
        &tail,
        &[("RECEIVER", receiver.as_str())],
    );
    let client = client();

    // The backlog: n accepted conversions, each with one delivery the affiliate refuses.
    let base = gateway.base.clone();
    let clicks = Arc::new(clicks(&client, &base, n).await);
    let ingest = Instant::now();
    let conversions: Vec<String> = futures_util::stream::iter(0..n)
        .map(|i| {
            let (client, base, clicks) = (client.clone(), base.clone(), clicks.clone());
            async move {
                let receipt: Value = client
                    .get(format!("{base}/postback"))
                    .query(&[
                        ("token", ACME_TOKEN),
                        ("click_id", clicks[i].as_str()),
                        ("payout", "10.00"),
                        ("transaction_id", &format!("DB-{i}")),
                    ])
                    .send()
                    .await
                    .expect("postback")
                    .json()
                    .await
                    .expect("receipt");
                assert_eq!(receipt["status"], "accepted", "{receipt}");
                receipt["conversion_id"]
                    .as_str()
                    .expect("conversion_id")
                    .to_owned()
            }
        })
        .buffered(64)
        .collect()
        .await;
    let ingest_secs = ingest.elapsed().as_secs_f64();
    let queued_during_ingest = affiliate.refused.load(Ordering::SeqCst);
    println!(
        "reliability backlog: {n} conversions queued in {ingest_secs:.1} s \
         ({queued_during_ingest} attempts refused meanwhile)"
    );

    // The affiliate stays down a while: the worker keeps failing attempts (finished jobs and
    // their retries are in the queue when the gateway dies, as in production).
    let first_target = n.min(5_000);
    let first = sample_until(&gateway, "retrying the backlog", guard, || {
        let refused = affiliate.refused.load(Ordering::SeqCst);
        (
            refused >= first_target,
            format!("{refused} attempts refused"),
        )
    })
    .await;
    let ingest_hwm = gateway.memory_kib("VmHWM") / 1024;
    assert!(
        ingest_hwm < RSS_LIMIT_KIB / 1024,
        "peak RSS while queueing {ingest_hwm} MiB"
    );
    let refused_before = affiliate.refused.load(Ordering::SeqCst);

    // Restart on the backlog with the affiliate still down: the worker retries it.
    gateway.restart();
    let base = gateway.base.clone();
    let retry_target = refused_before + n.min(5_000);
    println!(
        "reliability backlog: {refused_before} attempts refused, peak RSS {ingest_hwm} MiB, \
         RSS MiB {}; killed and restarted",
        range(&first)
    );
    let down = sample_until(
        &gateway,
        "retrying the backlog after restart",
        guard,
        || {
            let refused = affiliate.refused.load(Ordering::SeqCst);
            (
                refused >= retry_target,
                format!(
                    "{} attempts refused since restart",
                    refused - refused_before
                ),
            )
        },
    )
    .await;

    // The affiliate recovers: every postback arrives.
    affiliate.up.store(true, Ordering::SeqCst);
    let drain = Instant::now();
    let draining = sample_until(&gateway, "the backlog drains", guard, || {
        let delivered = affiliate.distinct.load(Ordering::SeqCst);
        (delivered >= n, format!("{delivered} of {n} delivered"))
    })
    .await;
    let drain_secs = drain.elapsed().as_secs_f64();
    let hwm = gateway.memory_kib("VmHWM");
    assert!(
        hwm < RSS_LIMIT_KIB,
        "peak RSS {} MiB over the limit",
        hwm / 1024
    );

    // The gateway's records agree (a sample; the receiver counted every transaction).
    let step = (n / 20).max(1);
    for id in conversions.iter().step_by(step) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (status, body) = admin_get(
                &client,
                &base,
                &format!("/api/v1/deliveries?conversion_id={id}"),
            )
            .await;
            assert_eq!(status, reqwest::StatusCode::OK, "{body}");
            let list = body["deliveries"].as_array().expect("deliveries");
            assert_eq!(list.len(), 1, "{id}: one delivery: {body}");
            if list[0]["state"] == "delivered" {
                break;
            }
            assert!(Instant::now() < deadline, "{id} never delivered: {body}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // A passing run that took long says why: the delivery worker's restarts (a failed poll,
    // or the watchdog's stop of a stalled worker) with their reasons.
    let restarts = gateway.log_lines("Delivery worker failed");
    for line in &restarts {
        println!("reliability backlog: {line}");
    }
    let answered = affiliate.answered.load(Ordering::SeqCst);
    pass(
        "restart_with_delivery_backlog",
        &format!(
            "backlog={n} ingest={:.0}/s peak_rss_mib_before_restart={ingest_hwm} \
             rss_mib_before_restart={} refused_before_restart={refused_before} \
             refused_after_restart={} \
             rss_mib_down={} rss_mib_draining={} peak_rss_mib={} drained_in={drain_secs:.1}s \
             ({:.0}/s) delivered={} duplicates={} worker_restarts={} seconds={:.1}",
            n as f64 / ingest_secs,
            range(&first),
            affiliate.refused.load(Ordering::SeqCst) - refused_before,
            range(&down),
            range(&draining),
            hwm / 1024,
            n as f64 / drain_secs,
            affiliate.distinct.load(Ordering::SeqCst),
            answered - affiliate.distinct.load(Ordering::SeqCst),
            restarts.len(),
            started.elapsed().as_secs_f64()
        ),
    );
}
