//! Outbound delivery benchmark: `cargo bench --bench deliveries -- [conversions] [concurrency] [backlog|end-to-end]`
//! (`concurrency` = postbacks in flight; env `WORKER_CONCURRENCY` = the worker's, default 256 like `outbound.concurrency`).
//!
//! Runs the real gateway in this process on a fresh database with one affiliate whose
//! postback points at a local sink (an axum handler answering 200 and counting), then:
//!
//! * `backlog` — with the worker off, records `conversions` accepted postbacks (each queues one
//!   delivery), restarts the gateway with the worker on and measures how fast the backlog
//!   drains into the sink (deliveries/s), sampling the process's RSS every second;
//! * `end-to-end` — with the worker on, sends `conversions` postbacks (`concurrency` in
//!   flight) and measures from the first postback until the sink has received them all.
//!
//! Each line ends with what the sink saw besides one request per postback: duplicates (a
//! postback received again, counted until 1 s after the last one arrived) and strays
//! (requests that named no postback of the run). Every postback arriving is what the clock
//! waits for, so a lost one shows as a run that never ends.
//!
//! In `end-to-end` first attempts are handed from the writer to the worker in memory (their
//! apalis jobs wait out `outbound.handoff_grace_ms`); in `backlog` the gateway that queued
//! them is gone, so each delivery is an apalis job: fetch+lock, HTTP GET, the outcome in the
//! writer's next batch (`synchronous=FULL`), ack.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use postgate::config::Settings;
use postgate::startup::Application;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const CONFIG: &str = r#"
[server]
listen = "127.0.0.1:0"
database_url = "sqlite://${BENCH_DB}"
admin_token = "bench-admin-token"

[click_ids]
active = 1
keys = [{ id = 1, secret = "YmVuY2gta2V5LWJlbmNoLWtleS1iZW5jaC1rZXktMDE=" }]

[[advertisers]]
id = "adv"
token = "bench-advertiser-token"

[[affiliates]]
id = "aff"
postback_url = "${SINK}/pb?click_id={click_id}&payout={payout}&currency={currency}&txid={transaction_id}"
postback_allow_http = true

[[offers]]
id = "bench"
advertiser = "adv"
landing_url = "https://shop.example/landing?subid={click_id}"
min_lag_seconds = 0

[[offers.goals]]
name = "sale"
payout = { fixed = "15.00" }
revenue = { percent = "100" }
allow_repeats = true

[outbound]
allow_networks = ["127.0.0.1/32"]
poll_interval_ms = 50
"#;

fn settings(db: &Path, sink: &str, worker: bool) -> Settings {
    let worker_concurrency: usize = std::env::var("WORKER_CONCURRENCY")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let db = db.display().to_string();
    let sink = sink.to_owned();
    let mut s = Settings::from_toml(Path::new("bench.toml"), CONFIG, &move |n| match n {
        "BENCH_DB" => Some(db.clone()),
        "SINK" => Some(sink.clone()),
        _ => None,
    })
    .expect("bench config");
    s.outbound.worker = worker;
    s.outbound.concurrency = worker_concurrency;
    s.outbound.per_endpoint_concurrency = worker_concurrency;
    s
}

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

async fn start(
    settings: &Settings,
) -> (
    String,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let app = Application::build(settings).await.expect("app");
    let address = format!("http://127.0.0.1:{}", app.port());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let _ = app
            .run_until(async {
                let _ = stopped.await;
            })
            .await;
    });
    (address, stop, task)
}

/// The URLs of `n` postbacks to the gateway at `address`, each for a click of its own.
fn postback_urls(address: &str, n: u64) -> Vec<reqwest::Url> {
    use base64::Engine as _;
    let key = base64::engine::general_purpose::STANDARD
        .decode("YmVuY2gta2V5LWJlbmNoLWtleS1iZW5jaC1rZXktMDE=")
        .expect("key");
    let ring = postgate::domain::ClickKeyRing::new(1, [(1, key)]).expect("ring");
    // Every postback's URL is built before the clock starts: minting click IDs (an HMAC each)
    // is the load generator's work, not the gateway's, and it shares the gateway's 2 cores.
    let clicked = chrono::Utc::now() - chrono::TimeDelta::seconds(10);
    let urls: Vec<reqwest::Url> = (0..n)
        .map(|i| {
            let click = ring.issue(1, 1, clicked).expect("click");
            reqwest::Url::parse_with_params(
                &format!("{address}/postback"),
                &[
                    ("token", "bench-advertiser-token"),
                    ("click_id", click.as_str()),
                    ("transaction_id", &format!("T{i}")),
                    ("goal", "sale"),
                ],
            )
            .expect("url")
        })
        .collect();
    urls
}

/// Sends every postback of `urls`, `concurrency` in flight.
async fn send_postbacks(client: &reqwest::Client, urls: Vec<reqwest::Url>, concurrency: usize) {
    futures_util::stream::iter(urls)
        .map(|url| {
            let req = client.get(url);
            async move {
                let resp = req.send().await.expect("postback");
                assert!(resp.status().is_success(), "{}", resp.status());
            }
        })
        .buffer_unordered(concurrency)
        .collect::<Vec<()>>()
        .await;
}

/// How long the sink keeps counting after the last postback arrived, for late duplicates.
const LATE: Duration = Duration::from_secs(1);

/// What the sink received: which postbacks (by the `T<i>` transaction id each carries), how
/// many of them more than once, and requests that named no postback of this run.
struct Tally {
    seen: Vec<AtomicU64>,
    distinct: AtomicU64,
    duplicates: AtomicU64,
    strays: AtomicU64,
}

impl Tally {
    fn new(n: u64) -> Self {
        Tally {
            seen: (0..n.div_ceil(64)).map(|_| AtomicU64::new(0)).collect(),
            distinct: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            strays: AtomicU64::new(0),
        }
    }

    /// One request to the sink, its query string as sent (`…&txid=T<i>`).
    fn record(&self, query: Option<&str>) {
        let i = query
            .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("txid=T")))
            .and_then(|i| i.parse::<usize>().ok());
        let Some(word) = i.and_then(|i| self.seen.get(i / 64).map(|w| (w, 1u64 << (i % 64))))
        else {
            self.strays.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let (word, bit) = word;
        if word.fetch_or(bit, Ordering::Relaxed) & bit == 0 {
            self.distinct.fetch_add(1, Ordering::Relaxed);
        } else {
            self.duplicates.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn reset(&self) {
        for w in &self.seen {
            w.store(0, Ordering::Relaxed);
        }
        self.distinct.store(0, Ordering::Relaxed);
        self.duplicates.store(0, Ordering::Relaxed);
        self.strays.store(0, Ordering::Relaxed);
    }

    /// Duplicates and strays so far, for the report.
    fn extra(&self) -> String {
        format!(
            "duplicates {}, strays {}",
            self.duplicates.load(Ordering::Relaxed),
            self.strays.load(Ordering::Relaxed)
        )
    }
}

/// Waits until every postback has reached the sink at least once.
async fn wait_for(tally: &Tally, n: u64, rss: &mut Vec<f64>) {
    let mut last = Instant::now();
    while tally.distinct.load(Ordering::Relaxed) < n {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if last.elapsed() >= Duration::from_secs(1) {
            rss.push(rss_mib());
            last = Instant::now();
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let n: u64 = args.first().and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let concurrency: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(64);
    // Both scenarios unless one is named (for profiling one of them).
    let only = args.get(2).cloned();
    let run = move |scenario: &str| only.as_deref().is_none_or(|o| o == scenario);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async move {
        let client = reqwest::Client::new();
        let tally = Arc::new(Tally::new(n));
        let sink_tally = tally.clone();
        let sink = axum::Router::new().route(
            "/pb",
            axum::routing::get(move |axum::extract::RawQuery(query): axum::extract::RawQuery| {
                let t = sink_tally.clone();
                async move {
                    t.record(query.as_deref());
                    "ok"
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let sink_url = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move {
            let _ = axum::serve(listener, sink).await;
        });

        // Backlog: queue with the worker off, then drain.
        if run("backlog") {
        let dir = tempfile::tempdir().expect("dir");
        let db = dir.path().join("postgate.db");
        let (address, stop, task) = start(&settings(&db, &sink_url, false)).await;
        let urls = postback_urls(&address, n);
        let t = Instant::now();
        send_postbacks(&client, urls, concurrency).await;
        let queued = t.elapsed().as_secs_f64();
        let _ = stop.send(());
        let _ = task.await;
        let rss_before = rss_mib();
        let mut rss = Vec::new();
        let t = Instant::now();
        let (_address, stop, task) = start(&settings(&db, &sink_url, true)).await;
        wait_for(&tally, n, &mut rss).await;
        let drained = t.elapsed().as_secs_f64();
        tokio::time::sleep(LATE).await;
        let _ = stop.send(());
        let _ = task.await;
        println!(
            "backlog     {n} postbacks queued in {queued:.1} s ({:.0}/s); drained {:.0} deliveries/s; RSS MiB start {rss_before:.0}, samples {:?}; {}",
            n as f64 / queued,
            n as f64 / drained,
            rss.iter().map(|r| r.round()).collect::<Vec<_>>(),
            tally.extra()
        );
        }

        // End to end: postback in → affiliate receives.
        if !run("end-to-end") {
            return;
        }
        tally.reset();
        let dir = tempfile::tempdir().expect("dir");
        let db = dir.path().join("postgate.db");
        let (address, stop, task) = start(&settings(&db, &sink_url, true)).await;
        let urls = postback_urls(&address, n);
        let t = Instant::now();
        send_postbacks(&client, urls, concurrency).await;
        let sent = t.elapsed().as_secs_f64();
        let mut rss = Vec::new();
        wait_for(&tally, n, &mut rss).await;
        let total = t.elapsed().as_secs_f64();
        tokio::time::sleep(LATE).await;
        let _ = stop.send(());
        let _ = task.await;
        println!(
            "end-to-end  {n} postbacks in {sent:.1} s; all delivered after {total:.1} s = {:.0} deliveries/s; {}",
            n as f64 / total,
            tally.extra()
        );
    });
}
