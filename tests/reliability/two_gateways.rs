//! Two gateways on one PostgreSQL database under load, one `kill -9`ed and not restarted:
//! clients spread over both and move to the survivor when a request fails; every
//! acknowledged conversion is there exactly once and the ledger holds exactly their money.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use reqwest::StatusCode;

use crate::kill_during_ingest::{Ack, CLIENTS, Counters, amount, spawn_clients, transaction};
use crate::{
    Gateway, admin_get, assert_ledger, balances, clicks, client, conversions_of_click, pass, size,
};

pub async fn run(dir: &Path, database_url: &str) {
    let n = size(1_000, 5_000);
    let started = Instant::now();
    let (dir_a, dir_b) = (dir.join("a"), dir.join("b"));
    std::fs::create_dir_all(&dir_a).expect("dir a");
    std::fs::create_dir_all(&dir_b).expect("dir b");
    let mut a = Gateway::start(&dir_a, database_url, "", "", &[]);
    let b = Gateway::start(&dir_b, database_url, "", "", &[]);
    let client = client();
    let clicks = Arc::new(clicks(&client, &a.base, n).await);

    let bases = Arc::new(RwLock::new(vec![a.base.clone(), b.base.clone()]));
    let counters = Arc::new(Counters::default());
    let (tasks, acks) = spawn_clients(&client, &bases, &counters, &clicks);
    // A third of the way in, gateway A dies for good; its clients fail over to B.
    while counters.acked.load(Ordering::Relaxed) < n / 3 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    a.kill();
    let acked_at_kill = counters.acked.load(Ordering::Relaxed);
    *bases.write().expect("bases") = vec![b.base.clone()];
    for task in tasks {
        task.await.expect("client task");
    }

    let acks: Vec<Ack> = std::mem::take(&mut *acks.lock().expect("acks"))
        .into_iter()
        .map(|a| a.expect("every conversion acknowledged"))
        .collect();
    let acks = Arc::new(acks);
    let base = b.base.clone();
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
                let count = conversions_of_click(&client, &base, &clicks[i]).await.len();
                assert_eq!(count, 1, "{} stored {count} times", transaction(i));
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
    pass(
        "two_gateways_one_killed",
        &format!(
            "conversions={n} clients={CLIENTS} acked_before_kill={acked_at_kill} sent={} \
             retries={} duplicates_seen={} seconds={:.1}",
            counters.sent.load(Ordering::Relaxed),
            counters.retries.load(Ordering::Relaxed),
            counters.duplicates.load(Ordering::Relaxed),
            started.elapsed().as_secs_f64()
        ),
    );
}
