//! Reliability scenarios: the real `postgate` binary on loopback with a fresh database, driven
//! over HTTP only, `kill -9`ed and restarted while it works.
//!
//! Each scenario is a function of the database URL (see [`database_url`]), so the same code
//! can run against another database; each ends by printing one line
//! `RELIABILITY <name>: PASS <figures>` or panics saying what was lost or doubled.
//! Sizes are short by default (CI); `POSTGATE_RELIABILITY_FULL=1` runs the full versions.
//! What each scenario proves and the measured figures: `docs/RELIABILITY.md`.

mod concurrent_duplicates;
mod database_outage;
mod delivery_backlog;
mod kill_during_delivery;
mod kill_during_ingest;
#[path = "../support/mod.rs"]
mod support;
mod two_gateways;

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;

use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::Value;

pub const ADMIN_TOKEN: &str = "test-admin-token";
pub const ACME_TOKEN: &str = "acme-secret-token";
pub const SHOPIFY_SECRET: &str = "test-shopify-secret-0123456789";

/// The SQLite database of a scenario in `dir`.
pub fn database_url(dir: &Path) -> String {
    format!("sqlite:{}/postgate.db", dir.display())
}

/// A fresh PostgreSQL database for a scenario in `dir`, or `None` (the `_postgres` variants
/// then skip) when `POSTGATE_TEST_POSTGRES_URL` is not set.
pub fn postgres_url(dir: &Path) -> Option<String> {
    if std::env::var(support::POSTGRES_ENV).is_err() {
        eprintln!(
            "skipped: set {} to run on PostgreSQL",
            support::POSTGRES_ENV
        );
        return None;
    }
    Some(support::database_url(&dir.join("postgate.db")))
}

/// Whether to run the full-size scenarios (`POSTGATE_RELIABILITY_FULL=1`).
pub fn full() -> bool {
    std::env::var("POSTGATE_RELIABILITY_FULL").is_ok_and(|v| v == "1")
}

/// `short` by default, `full` with `POSTGATE_RELIABILITY_FULL=1`.
pub fn size(short: usize, full_size: usize) -> usize {
    if full() { full_size } else { short }
}

/// One advertiser (`acme`), two affiliates, offer `shoes` (purchase: the affiliate earns a
/// fixed 15.00 USD, the advertiser is billed 100 % of the reported amount) and the Shopify
/// hook. `#POSTBACK#` is replaced by extra keys of both affiliates, `#TAIL#` by extra tables.
/// The database URL is not here: it comes from `POSTGATE_DATABASE_URL`.
const CONFIG: &str = r#"
[server]
listen = "127.0.0.1:0"
admin_token = "test-admin-token"

[network]
currency = "USD"

[click_ids]
active = 1
keys = [{ id = 1, secret = "KioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKio=" }]

[[advertisers]]
id = "acme"
token = "acme-secret-token"

[[affiliates]]
id = "aff1"
#POSTBACK#

[[affiliates]]
id = "aff2"
#POSTBACK#

[[hooks]]
connector = "shopify"
advertiser = "acme"

[[offers]]
id = "shoes"
advertiser = "acme"
landing_url = "https://shop.example/l?subid={click_id}"
currency = "USD"
default_goal = "purchase"

[[offers.goals]]
name = "purchase"
payout = { fixed = "15.00" }
revenue = { percent = "100" }

#TAIL#
"#;

/// The real binary in a child process; killed with SIGKILL when dropped.
pub struct Gateway {
    child: Option<Child>,
    /// `http://127.0.0.1:<port>` of the running child.
    pub base: String,
    config: PathBuf,
    env: Vec<(String, String)>,
}

impl Gateway {
    /// Writes the configuration (see [`CONFIG`] for `postback` and `tail`) into `dir` and starts
    /// `postgate serve` on `database_url`, with `env` added to its environment.
    pub fn start(
        dir: &Path,
        database_url: &str,
        postback: &str,
        tail: &str,
        env: &[(&str, &str)],
    ) -> Self {
        let config = dir.join("postgate.toml");
        let text = CONFIG
            .replace("#POSTBACK#", postback)
            .replace("#TAIL#", tail);
        // Each gateway its own spool, beside its configuration.
        support::write_config(&config, &text);
        let mut env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        env.push(("POSTGATE_DATABASE_URL".into(), database_url.to_owned()));
        env.push(("SHOPIFY_WEBHOOK_SECRET".into(), SHOPIFY_SECRET.to_owned()));
        let mut gateway = Self {
            child: None,
            base: String::new(),
            config,
            env,
        };
        gateway.start_again();
        gateway
    }

    /// Starts the binary again (after [`Self::kill`]) on the same configuration and database.
    pub fn start_again(&mut self) {
        // start_binary blocks on the child's log until it listens.
        let (child, base) = tokio::task::block_in_place(|| {
            support::start_binary(&self.config, self.env.iter().map(|(k, v)| (k, v)))
        });
        self.child = Some(child);
        self.base = base;
    }

    /// SIGKILL, no graceful shutdown, then reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("kill -9");
            child.wait().expect("reap");
        }
    }

    /// `kill -9` and start again on the same database (a new port: see [`Self::base`]).
    pub fn restart(&mut self) {
        self.kill();
        self.start_again();
    }

    /// The end of the gateway's log without its per-attempt lines: what a failing scenario
    /// quotes to say what the gateway was doing.
    pub fn log_tail(&self) -> String {
        support::log_tail(
            &self.config,
            40,
            &[
                "Outbound postback attempt failed",
                "Outbound postback delivered",
            ],
        )
    }

    /// The log lines (all children on this configuration) that contain `needle`.
    pub fn log_lines(&self, needle: &str) -> Vec<String> {
        std::fs::read_to_string(support::log_path(&self.config))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_owned)
            .collect()
    }

    /// The running child's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// A field of `/proc/<pid>/status` in KiB (`VmRSS`, `VmHWM`).
    pub fn memory_kib(&self, field: &str) -> u64 {
        let pid = self.child.as_ref().expect("running").id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"))
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// `n` clicks on offer `shoes`, alternately by `aff1` and `aff2`, `concurrency` at a time;
/// returns the click IDs in order.
pub async fn clicks(client: &reqwest::Client, base: &str, n: usize) -> Vec<String> {
    futures_util::stream::iter(0..n)
        .map(|i| {
            let url = format!("{base}/c/shoes?aff=aff{}", 1 + i % 2);
            let client = client.clone();
            async move {
                let resp = client.get(url).send().await.expect("click");
                assert_eq!(resp.status(), StatusCode::FOUND, "click {i}");
                let location = resp.headers()["location"].to_str().expect("location");
                reqwest::Url::parse(location)
                    .expect("landing URL")
                    .query_pairs()
                    .find(|(k, _)| k == "subid")
                    .map(|(_, v)| v.into_owned())
                    .expect("subid in landing URL")
            }
        })
        .buffered(32)
        .collect()
        .await
}

/// GET `path` with the admin token; returns status and JSON.
pub async fn admin_get(client: &reqwest::Client, base: &str, path: &str) -> (StatusCode, Value) {
    let resp = client
        .get(format!("{base}{path}"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let status = resp.status();
    (status, resp.json().await.expect("JSON"))
}

/// The conversions stored for `click` (200 asserted).
pub async fn conversions_of_click(client: &reqwest::Client, base: &str, click: &str) -> Vec<Value> {
    let path = format!("/api/v1/conversions?click_id={click}");
    let (status, list) = admin_get(client, base, &path).await;
    assert_eq!(status, StatusCode::OK, "{path}: {list}");
    list["conversions"]
        .as_array()
        .cloned()
        .expect("conversions")
}

/// Ledger balances as `(account, currency, minor units)`.
pub async fn balances(client: &reqwest::Client, base: &str) -> Vec<(String, String, i64)> {
    let (status, body) = admin_get(client, base, "/api/v1/ledger/balances").await;
    assert_eq!(status, StatusCode::OK, "balances: {body}");
    body["balances"]
        .as_array()
        .expect("balances array")
        .iter()
        .map(|b| {
            (
                b["account"].as_str().expect("account").to_owned(),
                b["currency"].as_str().expect("currency").to_owned(),
                b["amount_minor"].as_i64().expect("amount_minor"),
            )
        })
        .collect()
}

/// Checks the ledger: every currency sums to zero, and the advertiser receivable and the
/// affiliates' payables are exactly the expected totals (minor units, USD).
pub fn assert_ledger(balances: &[(String, String, i64)], receivable: i64, payable: i64) {
    let mut per_currency = std::collections::BTreeMap::<&str, i64>::new();
    for (_, currency, amount) in balances {
        *per_currency.entry(currency).or_default() += amount;
    }
    assert!(
        per_currency.values().all(|&sum| sum == 0),
        "postings do not balance: {per_currency:?} from {balances:?}"
    );
    let sum = |prefix: &str| -> i64 {
        balances
            .iter()
            .filter(|(a, c, _)| a.starts_with(prefix) && c == "USD")
            .map(|(_, _, v)| v)
            .sum()
    };
    assert_eq!(
        sum("advertiser:acme:receivable"),
        receivable,
        "receivable = accepted revenue: {balances:?}"
    );
    assert_eq!(
        sum("affiliate:"),
        -payable,
        "payables = accepted payouts: {balances:?}"
    );
}

/// `minor` cents as a decimal string (`1234` → `"12.34"`).
pub fn decimal(minor: i64) -> String {
    format!("{}.{:02}", minor / 100, minor % 100)
}

/// Prints the scenario's result line.
pub fn pass(name: &str, figures: &str) {
    println!("RELIABILITY {name}: PASS {figures}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_during_ingest_sqlite() {
    let dir = tempfile::tempdir().expect("dir");
    kill_during_ingest::run(dir.path(), &database_url(dir.path())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_duplicates_across_channels_sqlite() {
    let dir = tempfile::tempdir().expect("dir");
    concurrent_duplicates::run(dir.path(), &database_url(dir.path())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restart_with_delivery_backlog_sqlite() {
    let dir = tempfile::tempdir().expect("dir");
    delivery_backlog::run(dir.path(), &database_url(dir.path())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_during_delivery_sqlite() {
    let dir = tempfile::tempdir().expect("dir");
    kill_during_delivery::run(dir.path(), &database_url(dir.path())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_during_ingest_postgres() {
    let dir = tempfile::tempdir().expect("dir");
    if let Some(url) = postgres_url(dir.path()) {
        kill_during_ingest::run(dir.path(), &url).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_duplicates_across_channels_postgres() {
    let dir = tempfile::tempdir().expect("dir");
    if let Some(url) = postgres_url(dir.path()) {
        concurrent_duplicates::run(dir.path(), &url).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restart_with_delivery_backlog_postgres() {
    let dir = tempfile::tempdir().expect("dir");
    if let Some(url) = postgres_url(dir.path()) {
        delivery_backlog::run(dir.path(), &url).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_during_delivery_postgres() {
    let dir = tempfile::tempdir().expect("dir");
    if let Some(url) = postgres_url(dir.path()) {
        kill_during_delivery::run(dir.path(), &url).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_gateways_one_killed_postgres() {
    let dir = tempfile::tempdir().expect("dir");
    if let Some(url) = postgres_url(dir.path()) {
        two_gateways::run(dir.path(), &url).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn database_outage_postgres() {
    let dir = tempfile::tempdir().expect("dir");
    if let Some(url) = postgres_url(dir.path()) {
        database_outage::run(dir.path(), &url).await;
    }
}
