//! `kill -9` while outbound postbacks are in flight, several times: every postback arrives at
//! least once, and the only duplicates are attempts that were in flight at a kill.
//!
//! A stronger version of `tests/outbound/crash.rs` (one held request, one kill): here a slow
//! affiliate (each answer takes 50 ms) receives hundreds of postbacks while the gateway is
//! killed and restarted. The receiver stamps each request with the gateway generation that
//! sent it (the test bumps the generation after each kill). A postback is resent only by a later
//! generation, never twice by the same process, and there are at most as many duplicates as
//! attempts the kills could have interrupted (the worker's in-flight cap × kills).

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::http::StatusCode;
use futures_util::StreamExt;
use serde_json::Value;

use crate::{ACME_TOKEN, Gateway, admin_get, clicks, client, pass, size};

const KILLS: usize = 4;
/// `per_endpoint_concurrency` in the configuration below, times two affiliates: the most
/// attempts that can be in flight when the gateway is killed.
const IN_FLIGHT_CAP: usize = 2 * 8;

#[derive(Default)]
struct Affiliate {
    generation: AtomicUsize,
    received: AtomicUsize,
    /// Per transaction, the generations that sent it (one entry per request).
    seen: Mutex<Vec<Vec<usize>>>,
}

async fn postback(
    State(aff): State<Arc<Affiliate>>,
    Query(query): Query<std::collections::HashMap<String, String>>,
) -> StatusCode {
    let Some(i) = query
        .get("txid")
        .and_then(|t| t.strip_prefix("KDD-")?.parse::<usize>().ok())
    else {
        return StatusCode::BAD_REQUEST;
    };
    // Recorded on arrival: a request the gateway was killed during still counts as sent.
    let generation = aff.generation.load(Ordering::SeqCst);
    match aff.seen.lock().expect("seen").get_mut(i) {
        Some(sent_by) => sent_by.push(generation),
        None => return StatusCode::BAD_REQUEST,
    }
    aff.received.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(50)).await;
    StatusCode::OK
}

pub async fn run(dir: &Path, database_url: &str) {
    let n = size(300, 3_000);
    let started = Instant::now();
    let aff = Arc::new(Affiliate {
        seen: Mutex::new(vec![Vec::new(); n]),
        ..Affiliate::default()
    });
    let app = axum::Router::new()
        .route("/pb", axum::routing::get(postback))
        .with_state(aff.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let receiver = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let schedule: Vec<String> = (0..=600).map(|s| s.to_string()).collect();
    let tail = format!(
        "[outbound]\nallow_networks = [\"127.0.0.1/32\"]\nschedule_seconds = [{}]\n\
         jitter = 0.0\npoll_interval_ms = 50\nconcurrency = 64\nper_endpoint_concurrency = 8\n\
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
    let base = gateway.base.clone();
    let clicks = Arc::new(clicks(&client, &base, n).await);
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
                        ("transaction_id", &format!("KDD-{i}")),
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
        .buffered(32)
        .collect()
        .await;

    // Kill at evenly spaced points of delivery progress, with attempts in flight.
    let guard = Duration::from_secs(300);
    let wait_for = async |what: &str, enough: &dyn Fn() -> bool| {
        let deadline = Instant::now() + guard;
        while !enough() {
            assert!(Instant::now() < deadline, "never happened: {what}");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    };
    for k in 1..=KILLS {
        wait_for("deliveries progress", &|| {
            aff.received.load(Ordering::SeqCst) >= k * n / (KILLS + 1)
        })
        .await;
        gateway.kill();
        // Requests the dead process sent are stamped by now (stamping is the handler's first
        // step); everything after this comes from the next process.
        tokio::time::sleep(Duration::from_millis(50)).await;
        aff.generation.fetch_add(1, Ordering::SeqCst);
        gateway.start_again();
    }
    let distinct = || {
        aff.seen
            .lock()
            .expect("seen")
            .iter()
            .filter(|s| !s.is_empty())
            .count()
    };
    wait_for("every postback arrives", &|| distinct() >= n).await;

    // The gateway records every delivery as delivered.
    let base = gateway.base.clone();
    for id in &conversions {
        let deadline = Instant::now() + guard;
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

    let seen = aff.seen.lock().expect("seen").clone();
    for (i, sent_by) in seen.iter().enumerate() {
        let mut generations = sent_by.clone();
        generations.dedup();
        assert_eq!(
            &generations, sent_by,
            "KDD-{i} sent twice by the same gateway process: generations {sent_by:?}"
        );
    }
    let duplicates: usize = seen.iter().map(|s| s.len().saturating_sub(1)).sum();
    assert!(
        duplicates <= KILLS * IN_FLIGHT_CAP,
        "{duplicates} duplicates: more than the {KILLS} kills could have interrupted"
    );
    pass(
        "kill_during_delivery",
        &format!(
            "postbacks={n} kills={KILLS} received={} delivered_once={} duplicates={duplicates} \
             (bound {}) seconds={:.1}",
            aff.received.load(Ordering::SeqCst),
            seen.iter().filter(|s| s.len() == 1).count(),
            KILLS * IN_FLIGHT_CAP,
            started.elapsed().as_secs_f64()
        ),
    );
}
