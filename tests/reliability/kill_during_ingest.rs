//! `kill -9` during ingest: clients that retry every postback until they get a 2xx, while
//! the gateway is SIGKILLed and restarted (on a new port) again and again. Every acknowledged
//! conversion is there exactly once, every retry of a committed one is a `duplicate` naming
//! it, and the ledger holds exactly the acknowledged money.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::Value;

use crate::{
    ACME_TOKEN, Gateway, admin_get, assert_ledger, balances, clicks, client, conversions_of_click,
    decimal, pass, size,
};

pub const CLIENTS: usize = 16;
const RESTARTS: usize = 5;

/// The amount reported for conversion `i`, in cents: varied so a lost or doubled one shows.
pub fn amount(i: usize) -> i64 {
    1_000 + (i % 97) as i64 * 100 + (i % 100) as i64
}

pub fn transaction(i: usize) -> String {
    format!("KDI-{i}")
}

/// What the client finally got for conversion `i`.
pub struct Ack {
    pub conversion_id: String,
    pub duplicate: bool,
}

#[derive(Default)]
pub struct Counters {
    pub sent: AtomicUsize,
    pub acked: AtomicUsize,
    pub retries: AtomicUsize,
    pub duplicates: AtomicUsize,
}

/// Sends conversion `i` until a 2xx (connection errors and 5xx are retried after a pause;
/// any other status is a failure), following the gateways to their current addresses and
/// moving on to the next one after a failure.
pub async fn send_until_acked(
    client: &reqwest::Client,
    base: &RwLock<Vec<String>>,
    click: &str,
    i: usize,
    counters: &Counters,
) -> Ack {
    let payout = decimal(amount(i));
    let txn = transaction(i);
    for attempt in 0.. {
        let url = {
            let bases = base.read().expect("base");
            format!("{}/postback", bases[(i + attempt) % bases.len()])
        };
        counters.sent.fetch_add(1, Ordering::Relaxed);
        let resp = client
            .get(url)
            .query(&[
                ("token", ACME_TOKEN),
                ("click_id", click),
                ("payout", payout.as_str()),
                ("transaction_id", txn.as_str()),
            ])
            .send()
            .await;
        let body = match resp {
            Ok(resp) if resp.status().is_success() => resp.json::<Value>().await.ok(),
            Ok(resp) if resp.status().is_server_error() => None,
            Ok(resp) => {
                let status = resp.status();
                panic!("{txn}: {status} {}", resp.text().await.unwrap_or_default())
            }
            Err(_) => None,
        };
        let Some(body) = body else {
            // Refused (the gateway is down), reset (killed mid-request) or a 5xx.
            counters.retries.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let duplicate = match body["status"].as_str() {
            Some("accepted") => false,
            // An earlier copy was committed but its answer was lost in the kill.
            Some("duplicate") => true,
            _ => panic!("{txn}: neither accepted nor duplicate: {body}"),
        };
        counters.acked.fetch_add(1, Ordering::Relaxed);
        if duplicate {
            counters.duplicates.fetch_add(1, Ordering::Relaxed);
        }
        let conversion_id = body["conversion_id"]
            .as_str()
            .unwrap_or_else(|| panic!("{txn}: no conversion_id in {body}"))
            .to_owned();
        return Ack {
            conversion_id,
            duplicate,
        };
    }
    unreachable!("the retry loop only ends with an answer")
}

/// What each client's conversion got, by index, once acknowledged.
pub type Acks = Arc<Mutex<Vec<Option<Ack>>>>;

/// Starts [`CLIENTS`] tasks that send conversions `0..clicks.len()` (one per click) until
/// each is acknowledged, through the gateways in `bases`.
pub fn spawn_clients(
    client: &reqwest::Client,
    bases: &Arc<RwLock<Vec<String>>>,
    counters: &Arc<Counters>,
    clicks: &Arc<Vec<String>>,
) -> (Vec<tokio::task::JoinHandle<()>>, Acks) {
    let n = clicks.len();
    let next = Arc::new(AtomicUsize::new(0));
    let acks: Acks = Arc::new(Mutex::new((0..n).map(|_| None).collect()));
    let tasks = (0..CLIENTS)
        .map(|_| {
            let (client, bases, counters, next, acks, clicks) = (
                client.clone(),
                bases.clone(),
                counters.clone(),
                next.clone(),
                acks.clone(),
                clicks.clone(),
            );
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    let ack = send_until_acked(&client, &bases, &clicks[i], i, &counters).await;
                    acks.lock().expect("acks")[i] = Some(ack);
                }
            })
        })
        .collect();
    (tasks, acks)
}

pub async fn run(dir: &Path, database_url: &str) {
    let n = size(1_000, 5_000);
    let started = Instant::now();
    let mut gateway = Gateway::start(dir, database_url, "", "", &[]);
    let client = client();
    let clicks = Arc::new(clicks(&client, &gateway.base, n).await);

    let base = Arc::new(RwLock::new(vec![gateway.base.clone()]));
    let counters = Arc::new(Counters::default());
    let (tasks, acks) = spawn_clients(&client, &base, &counters, &clicks);

    // Kill at evenly spaced points of progress, so every kill lands while clients are sending.
    let mut restarts = 0;
    for k in 1..=RESTARTS {
        while counters.acked.load(Ordering::Relaxed) < k * n / (RESTARTS + 1) {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        gateway.restart();
        *base.write().expect("base") = vec![gateway.base.clone()];
        restarts += 1;
    }
    for task in tasks {
        task.await.expect("client task");
    }
    // One more kill right after the last answer: what was acknowledged must be on disk.
    gateway.restart();
    restarts += 1;
    let base = gateway.base.clone();

    let acks: Vec<Ack> = std::mem::take(&mut *acks.lock().expect("acks"))
        .into_iter()
        .map(|a| a.expect("every conversion acknowledged"))
        .collect();
    let acks = Arc::new(acks);

    // Each acknowledged conversion is stored as sent, and is its click's only conversion.
    futures_util::stream::iter(0..n)
        .map(|i| {
            let (client, base, acks, clicks) =
                (client.clone(), base.clone(), acks.clone(), clicks.clone());
            async move {
                let id = &acks[i].conversion_id;
                let (status, conv) =
                    admin_get(&client, &base, &format!("/api/v1/conversions/{id}")).await;
                assert_eq!(status, StatusCode::OK, "acknowledged conversion {id} lost");
                assert_eq!(conv["transaction_id"], transaction(i).as_str(), "{conv}");
                assert_eq!(conv["click_id"], clicks[i].as_str(), "{conv}");
                assert_eq!(conv["decision"], "accepted", "{conv}");
                assert_eq!(conv["revenue"], decimal(amount(i)).as_str(), "{conv}");
                let list = conversions_of_click(&client, &base, &clicks[i]).await;
                let ids: Vec<&str> = list.iter().filter_map(|c| c["id"].as_str()).collect();
                assert_eq!(
                    ids,
                    [id.as_str()],
                    "{} stored more than once",
                    transaction(i)
                );
            }
        })
        .buffer_unordered(CLIENTS)
        .collect::<Vec<()>>()
        .await;

    // Every transaction sent once more: a duplicate naming the acknowledged conversion.
    let replay = Counters::default();
    let lock = Arc::new(RwLock::new(vec![base.clone()]));
    futures_util::stream::iter(0..n)
        .map(|i| {
            let (client, lock, acks, clicks, replay) = (
                client.clone(),
                lock.clone(),
                acks.clone(),
                clicks.clone(),
                &replay,
            );
            async move {
                let again = send_until_acked(&client, &lock, &clicks[i], i, replay).await;
                assert!(again.duplicate, "{} accepted twice", transaction(i));
                assert_eq!(
                    again.conversion_id,
                    acks[i].conversion_id,
                    "{}: duplicate names another conversion",
                    transaction(i)
                );
            }
        })
        .buffer_unordered(CLIENTS)
        .collect::<Vec<()>>()
        .await;

    let receivable: i64 = (0..n).map(amount).sum();
    assert_ledger(
        &balances(&client, &base).await,
        receivable,
        1_500 * n as i64,
    );
    let duplicates = acks.iter().filter(|a| a.duplicate).count();
    pass(
        "kill_during_ingest",
        &format!(
            "conversions={n} clients={CLIENTS} sent={} acked={} retries={} restarts={restarts} \
             duplicates_seen={duplicates} replayed_as_duplicate={n} receivable={} seconds={:.1}",
            counters.sent.load(Ordering::Relaxed),
            counters.acked.load(Ordering::Relaxed),
            counters.retries.load(Ordering::Relaxed),
            decimal(receivable),
            started.elapsed().as_secs_f64()
        ),
    );
}
