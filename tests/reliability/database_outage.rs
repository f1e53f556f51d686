//! The database goes away for 20 s (30 s full) under steady load, then comes back: no client
//! gets a 5xx (requests the database cannot take are spooled and answered 202 `queued`),
//! every acknowledged conversion is there exactly once afterwards, the spool drains within
//! 30 s of recovery, and the gateway does not spin while it waits.
//!
//! The outage: by default the scenario's own database refuses connections and its sessions
//! are terminated (what a server restart looks like to a client, without disturbing other
//! tests); with `POSTGATE_RELIABILITY_STOP_SERVER=1` the PostgreSQL server itself is stopped
//! and started (`pg_ctlcluster`), as CI does in a step of its own.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::Value;

use crate::kill_during_ingest::{amount, transaction};
use crate::{
    ACME_TOKEN, Gateway, admin_get, assert_ledger, balances, clicks, client, conversions_of_click,
    decimal, pass, size,
};

const CLIENTS: usize = 8;

/// How the database is taken away.
enum Outage {
    /// The scenario's database refuses connections.
    Database(String),
    /// The server is stopped.
    Server,
}

impl Outage {
    fn of(database_url: &str) -> Self {
        if std::env::var("POSTGATE_RELIABILITY_STOP_SERVER").is_ok_and(|v| v == "1") {
            return Outage::Server;
        }
        Outage::Database(database_url.to_owned())
    }

    async fn begin(&self) {
        match self {
            Outage::Database(url) => crate::support::allow_connections(url, false).await,
            Outage::Server => pg_ctlcluster("stop"),
        }
    }

    async fn end(&self) {
        match self {
            Outage::Database(url) => crate::support::allow_connections(url, true).await,
            Outage::Server => pg_ctlcluster("start"),
        }
    }
}

fn pg_ctlcluster(action: &str) {
    let version = std::fs::read_dir("/etc/postgresql")
        .expect("/etc/postgresql")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .max()
        .expect("a PostgreSQL cluster");
    let mut cmd = std::process::Command::new("pg_ctlcluster");
    cmd.args(["--skip-systemctl-redirect", &version, "main", action]);
    if action == "stop" {
        cmd.args(["-m", "fast"]);
    }
    let status = cmd.status().expect("pg_ctlcluster");
    assert!(status.success(), "pg_ctlcluster {action}: {status}");
}

/// CPU seconds (user + system) the process has used so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let rest = stat.rsplit_once(')').expect("stat format").1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 =
        fields[11].parse::<f64>().expect("utime") + fields[12].parse::<f64>().expect("stime");
    ticks / 100.0
}

pub async fn run(dir: &Path, database_url: &str) {
    let n = size(600, 3_000);
    let down = Duration::from_secs(if crate::full() { 30 } else { 20 });
    let started = Instant::now();
    let gateway = Gateway::start(dir, database_url, "", "", &[]);
    let pid = gateway.pid();
    let client = client();
    let clicks = Arc::new(clicks(&client, &gateway.base, n).await);
    let outage = Outage::of(database_url);

    // Steady load over the whole outage and beyond: n postbacks in about down + 10 s.
    let pace = (down + Duration::from_secs(10)).div_f64(n as f64 / CLIENTS as f64);
    let next = Arc::new(AtomicUsize::new(0));
    let answers: Arc<Mutex<Vec<(usize, u16, Value)>>> = Arc::default();
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let (client, base, next, answers, clicks) = (
            client.clone(),
            gateway.base.clone(),
            next.clone(),
            answers.clone(),
            clicks.clone(),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let resp = client
                    .get(format!("{base}/postback"))
                    .query(&[
                        ("token", ACME_TOKEN),
                        ("click_id", clicks[i].as_str()),
                        ("payout", decimal(amount(i)).as_str()),
                        ("transaction_id", transaction(i).as_str()),
                    ])
                    .send()
                    .await
                    .unwrap_or_else(|e| panic!("{}: no answer: {e}", transaction(i)));
                let status = resp.status().as_u16();
                let body: Value = resp.json().await.unwrap_or_default();
                answers.lock().expect("answers").push((i, status, body));
                tokio::time::sleep(pace).await;
            }
        }));
    }

    tokio::time::sleep(Duration::from_secs(3)).await;
    outage.begin().await;
    let cpu_before = cpu_seconds(pid);
    tokio::time::sleep(down).await;
    let cpu_during = cpu_seconds(pid) - cpu_before;
    let queued_during = answers
        .lock()
        .expect("answers")
        .iter()
        .filter(|(_, s, _)| *s == 202)
        .count();
    outage.end().await;
    let recovered = Instant::now();
    // Drained: the spool is empty and the database reachable again (watched while the
    // load goes on).
    let watch = {
        let (client, base) = (client.clone(), gateway.base.clone());
        tokio::spawn(async move {
            loop {
                let (status, ready) = admin_get(&client, &base, "/readyz").await;
                if status == StatusCode::OK
                    && ready["status"] == "ready"
                    && ready["spool"]["pending"] == 0
                {
                    return recovered.elapsed();
                }
                assert!(
                    recovered.elapsed() < Duration::from_secs(120),
                    "spool not drained: {ready}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    for task in tasks {
        task.await.expect("client task");
    }
    let drained_in = watch.await.expect("drain watch");

    let answers = std::mem::take(&mut *answers.lock().expect("answers"));
    assert_eq!(answers.len(), n);
    let mut accepted = 0;
    let mut queued = 0;
    for (i, status, body) in &answers {
        match (status, body["status"].as_str()) {
            (200, Some("accepted")) => accepted += 1,
            (202, Some("queued")) => queued += 1,
            _ => panic!("{}: {status} {body}", transaction(*i)),
        }
    }
    // Every acknowledged conversion (accepted or queued) is stored exactly once.
    futures_util::stream::iter(0..n)
        .map(|i| {
            let (client, base, clicks) = (client.clone(), gateway.base.clone(), clicks.clone());
            async move {
                let list = conversions_of_click(&client, &base, &clicks[i]).await;
                assert_eq!(
                    list.len(),
                    1,
                    "{}: stored {} times",
                    transaction(i),
                    list.len()
                );
                assert_eq!(list[0]["transaction_id"], transaction(i).as_str());
            }
        })
        .buffer_unordered(CLIENTS)
        .collect::<Vec<()>>()
        .await;
    let receivable: i64 = (0..n).map(amount).sum();
    assert_ledger(
        &balances(&client, &gateway.base).await,
        receivable,
        1_500 * n as i64,
    );
    assert!(
        queued > 0 && queued_during > 0,
        "the outage queued nothing: is the database really unreachable?"
    );
    assert!(
        drained_in <= Duration::from_secs(30),
        "spool drained {drained_in:?} after recovery (limit 30 s)"
    );
    // Waiting is not spinning: well under half a core while the database was away.
    let cpu_share = cpu_during / down.as_secs_f64();
    assert!(
        cpu_share < 0.5,
        "{cpu_during:.1} CPU-s during a {down:?} outage"
    );
    pass(
        "database_outage",
        &format!(
            "postbacks={n} outage={}s mode={} accepted={accepted} queued={queued} \
             drained_in={:.1}s gateway_cpu_during_outage={cpu_during:.2}s ({:.0}% of a core) \
             seconds={:.1}",
            down.as_secs(),
            match outage {
                Outage::Server => "server-stopped",
                Outage::Database(_) => "database-refusing",
            },
            drained_in.as_secs_f64(),
            cpu_share * 100.0,
            started.elapsed().as_secs_f64()
        ),
    );
}
