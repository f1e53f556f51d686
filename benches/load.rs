//! Load benchmark: `cargo bench --bench load` (options after `--`, see `usage()`).
//!
//! Spawns servers as child processes of this binary and drives them from this process with a
//! lean HTTP/1.1 load generator (hyper, keep-alive, one request in flight per connection):
//!
//! * `bare`     — an axum handler answering "ok": the ceiling of the HTTP stack here;
//! * `bare-gc`  — an axum handler doing one durable SQLite insert through a single group-commit
//!   writer (WAL, synchronous=FULL, one fsync per batch): the floor the issue names;
//! * `bare-tx`  — the same insert with one transaction (one fsync) per request;
//! * `click`    — postgate `GET /c/{offer}` → 302 with a signed click ID;
//! * `postback` — postgate `GET /postback`, each one a new accepted, ledgered conversion;
//! * `shopify`  — postgate `POST /hooks/shopify`: a real orders/paid payload (~15 KB), HMAC-signed,
//!   verified, mapped, attributed, ledgered and stored raw, each a new conversion.
//! * `bare-body` — the same signed Shopify request to an axum handler that reads the body and
//!   answers "ok": the ceiling for receiving ~15 KB webhooks here (load generator included);
//! * `bare-hook` — the same, plus what any durable webhook receiver must do at least: the body
//!   LZ4-compressed and inserted as one row through the group-commit writer (one fsync a
//!   batch), answered after its commit. `shopify / bare-hook` is what postgate's verification,
//!   mapping, attribution and ledger cost on top of receiving and storing the bytes.
//!
//! With `--postgres URL` (a server; fresh databases are created on it), also:
//!
//! * `pg-tx`       — an axum handler doing one INSERT per request through a pool of 16 on
//!   PostgreSQL (synchronous commit): the baseline the PostgreSQL issue names (~7k/s);
//! * `postback-pg`, `shopify-pg`, `click-pg` — the postgate scenarios on PostgreSQL.
//!
//! Rounds are interleaved (every scenario once per round) and the median round is reported,
//! so the baselines and postgate see the same machine noise. Ratios compare medians.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncBufReadExt;
use tokio::net::TcpStream;

// Request handling allocates many small values (parsed JSON, strings); mimalloc's
// thread-local free lists avoid glibc malloc's lock contention between worker threads.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const ROLE_ENV: &str = "POSTGATE_BENCH_ROLE";
const DIR_ENV: &str = "POSTGATE_BENCH_DIR";
/// The database URL a postgate child uses (default: SQLite in the bench directory).
const DB_URL_ENV: &str = "POSTGATE_BENCH_DB_URL";
/// The PostgreSQL database the bare server's `pg-tx` route writes to.
const BARE_PG_ENV: &str = "POSTGATE_BENCH_BARE_PG";
const TOKEN: &str = "bench-advertiser-token";
const CLICK_KEY: &str = "YmVuY2gta2V5LWJlbmNoLWtleS1iZW5jaC1rZXktMDE=";

const BENCH_CONFIG: &str = r#"
[server]
listen = "127.0.0.1:0"
database_url = "${BENCH_DB}"
admin_token = "bench-admin-token"

[click_ids]
active = 1
keys = [{ id = 1, secret = "YmVuY2gta2V5LWJlbmNoLWtleS1iZW5jaC1rZXktMDE=" }]

[[advertisers]]
id = "adv"
token = "bench-advertiser-token"

[[affiliates]]
id = "aff"

[[offers]]
id = "bench"
advertiser = "adv"
landing_url = "https://shop.example/landing?subid={click_id}&s1={sub1}"
min_lag_seconds = 0

[[offers.goals]]
name = "sale"
payout = { fixed = "15.00" }
revenue = { percent = "100" }
allow_repeats = true

[[offers.goals]]
name = "purchase"
payout = { fixed = "15.00" }
revenue = { percent = "100" }
allow_repeats = true

[[hooks]]
connector = "shopify"
advertiser = "adv"
"#;

const SHOPIFY_PATH: &str = "/hooks/shopify";
const SHOPIFY_SECRET: &str = "bench-shopify-secret-0123456789";
const SHOPIFY_ORDER: &str =
    include_str!("../tests/fixtures/derived/shopify_orders_paid.note_attribute_click_id.json");

fn usage() -> &'static str {
    "cargo bench --bench load -- [--seconds N] [--rounds N] [--concurrency N] [--only a,b] \
     [--postgres postgres://user@host:port/db]"
}

struct Options {
    seconds: u64,
    rounds: usize,
    concurrency: usize,
    only: Option<Vec<String>>,
    postgres: Option<String>,
}

fn options() -> Options {
    let mut o = Options {
        seconds: 5,
        rounds: 3,
        concurrency: 64,
        only: None,
        postgres: None,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let value = args.get(i + 1).cloned().unwrap_or_default();
        match args[i].as_str() {
            "--seconds" => o.seconds = value.parse().unwrap_or(o.seconds),
            "--rounds" => o.rounds = value.parse().unwrap_or(o.rounds),
            "--concurrency" => o.concurrency = value.parse().unwrap_or(o.concurrency),
            "--only" => o.only = Some(value.split(',').map(str::to_owned).collect()),
            "--postgres" => o.postgres = Some(value),
            // cargo bench passes --bench; ignore it and anything unknown.
            "--help" | "-h" => {
                println!("{}", usage());
                std::process::exit(0);
            }
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    o
}

fn main() {
    match std::env::var(ROLE_ENV).as_deref() {
        Ok("bare") => serve_bare(),
        Ok("postgate") => serve_postgate(),
        _ => drive(),
    }
}

// ---- servers (child processes) --------------------------------------------------------------

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn announce(port: u16) {
    println!("PORT {port}");
}

fn serve_bare() {
    use axum::Router;
    use axum::routing::get;
    use sqlx::ConnectOptions;
    use sqlx::sqlite::{
        SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous,
    };
    use tokio::sync::oneshot;

    let dir = std::env::var(DIR_ENV).expect("bench dir");
    runtime().block_on(async move {
        let options = SqliteConnectOptions::new()
            .filename(Path::new(&dir).join("bare.db"))
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full);
        let mut conn = options.clone().connect().await.expect("db");
        sqlx::query("CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY, body TEXT NOT NULL, at BIGINT NOT NULL)")
            .execute(&mut conn)
            .await
            .expect("table");

        // Group commit: one writer, one transaction and one fsync per batch.
        let tx = group_commit::<String>(conn, "events");
        // The webhook floor: the same group commit, one compressed body per row, in its own
        // file so `bare-gc`'s table stays a 1-row insert.
        let mut hook_conn = options
            .clone()
            .filename(Path::new(&dir).join("bare-hook.db"))
            .connect()
            .await
            .expect("db");
        sqlx::query("CREATE TABLE IF NOT EXISTS bodies (id INTEGER PRIMARY KEY, body BLOB NOT NULL, at BIGINT NOT NULL)")
            .execute(&mut hook_conn)
            .await
            .expect("table");
        let hook_tx = group_commit::<Vec<u8>>(hook_conn, "bodies");
        // One transaction per request through a pool.
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(options)
            .await
            .expect("pool");

        let mut app = Router::new();
        if let Ok(url) = std::env::var(BARE_PG_ENV) {
            let pg = sqlx::postgres::PgPoolOptions::new()
                .max_connections(16)
                .connect(&url)
                .await
                .expect("postgres");
            sqlx::query("CREATE TABLE IF NOT EXISTS events (id BIGSERIAL PRIMARY KEY, body TEXT NOT NULL, at BIGINT NOT NULL)")
                .execute(&pg)
                .await
                .expect("table");
            app = app.route(
                "/pg-tx",
                get(move || {
                    let pg = pg.clone();
                    async move {
                        let _ = sqlx::query("INSERT INTO events (body, at) VALUES ($1, 0)")
                            .bind("event")
                            .execute(&pg)
                            .await;
                        "ok"
                    }
                }),
            );
        }
        let app = app
            .route("/", get(|| async { "ok" }))
            .route("/body", axum::routing::post(|body: Bytes| async move { if body.is_empty() { "empty" } else { "ok" } }))
            .route(
                "/hook",
                axum::routing::post(move |body: Bytes| {
                    let tx = hook_tx.clone();
                    async move {
                        let (reply, done) = oneshot::channel();
                        let stored = lz4_flex::compress_prepend_size(&body);
                        let _ = tx.send((stored, reply)).await;
                        let _ = done.await;
                        "ok"
                    }
                }),
            )
            .route(
                "/gc",
                get(move || {
                    let tx = tx.clone();
                    async move {
                        let (reply, done) = oneshot::channel();
                        let _ = tx.send(("event".to_owned(), reply)).await;
                        let _ = done.await;
                        "ok"
                    }
                }),
            )
            .route(
                "/tx",
                get(move || {
                    let pool = pool.clone();
                    async move {
                        let _ = sqlx::query("INSERT INTO events (body, at) VALUES ($1, 0)")
                            .bind("event")
                            .execute(&pool)
                            .await;
                        "ok"
                    }
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        announce(listener.local_addr().expect("addr").port());
        axum::serve(listener, app).await.expect("serve");
    });
}

/// A group-commit writer on `conn`: each batch of queued bodies is one multi-row
/// `INSERT INTO {table} (body, at)` in one transaction (one fsync); every sender is answered
/// after the commit.
fn group_commit<T>(
    mut conn: sqlx::SqliteConnection,
    table: &'static str,
) -> tokio::sync::mpsc::Sender<(T, tokio::sync::oneshot::Sender<()>)>
where
    T: Clone + Send + Sync + 'static + sqlx::Type<sqlx::Sqlite>,
    for<'q> T: sqlx::Encode<'q, sqlx::Sqlite>,
{
    use sqlx::Connection as _;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(T, tokio::sync::oneshot::Sender<()>)>(65536);
    tokio::spawn(async move {
        let mut buf = Vec::with_capacity(512);
        while rx.recv_many(&mut buf, 512).await > 0 {
            let mut t = conn.begin().await.expect("begin");
            let mut qb =
                sqlx::QueryBuilder::<sqlx::Sqlite>::new(format!("INSERT INTO {table} (body, at) "));
            qb.push_values(buf.iter(), |mut b, (body, _)| {
                b.push_bind(body.clone()).push_bind(0i64);
            });
            qb.build().execute(&mut *t).await.expect("insert");
            t.commit().await.expect("commit");
            for (_, reply) in buf.drain(..) {
                let _ = reply.send(());
            }
        }
    });
    tx
}

fn serve_postgate() {
    let dir = std::env::var(DIR_ENV).expect("bench dir");
    let db = std::env::var(DB_URL_ENV)
        .unwrap_or_else(|_| format!("sqlite://{}", Path::new(&dir).join("postgate.db").display()));
    let settings = postgate::config::Settings::from_toml(
        Path::new("bench.toml"),
        BENCH_CONFIG,
        &move |name| (name == "BENCH_DB").then(|| db.clone()),
    )
    .expect("bench config");
    let mut settings = settings;
    settings.spool.dir = Path::new(&dir).join(format!("spool-{}", std::process::id()));
    runtime().block_on(async move {
        let app = postgate::startup::Application::build(&settings)
            .await
            .expect("postgate builds");
        announce(app.port());
        app.run_until(std::future::pending()).await.expect("serve");
    });
}

struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start(role: &str, dir: &Path, env: &[(&str, &str)]) -> Server {
    let exe = std::env::current_exe().expect("exe");
    let mut child = Command::new(exe)
        .env(ROLE_ENV, role)
        .env(DIR_ENV, dir)
        .envs(env.iter().copied())
        .env("RUST_LOG", "warn")
        .env("SHOPIFY_WEBHOOK_SECRET", SHOPIFY_SECRET)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn server");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines =
        tokio::io::BufReader::new(tokio::process::ChildStdout::from_std(stdout).expect("pipe"))
            .lines();
    let port = loop {
        let line = lines
            .next_line()
            .await
            .expect("read")
            .expect("server exited early");
        if let Some(p) = line.strip_prefix("PORT ") {
            break p.trim().parse::<u16>().expect("port");
        }
    };
    Server {
        child,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
    }
}

// ---- load generator ---------------------------------------------------------------------------

#[derive(Clone, Copy)]
enum Kind {
    Path(&'static str),
    Click,
    Postback,
    /// A signed Shopify orders/paid request to this path (postgate's hook or a bare one).
    Shopify(&'static str),
}

/// The Shopify order split once around the parts each request changes, so a request is
/// assembled by copying instead of three search-and-replace passes over ~15 KB (the load
/// generator shares the 2 cores with the server it measures).
struct ShopifyTemplate {
    pieces: Vec<Piece>,
}

enum Piece {
    Text(&'static str),
    Order,
    Click,
    Now,
}

impl ShopifyTemplate {
    fn new() -> Self {
        const ORDER: &str = "\"id\": 820982911946154508";
        const CLICK: &str = "pgc_note_7Hq2ZkP4";
        const NOW: &str = "2021-12-31T19:00:00-05:00";
        let mut pieces = Vec::new();
        let mut rest = SHOPIFY_ORDER;
        let mut order_done = false;
        loop {
            // The earliest marker left; the order id is replaced once, like the original.
            let next = [(CLICK, Piece::Click), (NOW, Piece::Now)]
                .into_iter()
                .chain((!order_done).then_some((ORDER, Piece::Order)))
                .filter_map(|(marker, piece)| rest.find(marker).map(|at| (at, marker, piece)))
                .min_by_key(|(at, _, _)| *at);
            let Some((at, marker, piece)) = next else {
                pieces.push(Piece::Text(rest));
                break;
            };
            pieces.push(Piece::Text(&rest[..at]));
            if matches!(piece, Piece::Order) {
                order_done = true;
                pieces.push(Piece::Text("\"id\": "));
            }
            pieces.push(piece);
            rest = &rest[at + marker.len()..];
        }
        let template = ShopifyTemplate { pieces };
        // The pieces must give what the plain replacements give.
        let replaced = SHOPIFY_ORDER
            .replacen(ORDER, "\"id\": 7", 1)
            .replace(CLICK, "c-1")
            .replace(NOW, "t-1");
        assert_eq!(template.body("c-1", "7", "t-1"), replaced.into_bytes());
        template
    }

    fn body(&self, click_id: &str, order: &str, now: &str) -> Vec<u8> {
        let mut body = Vec::with_capacity(SHOPIFY_ORDER.len() + 64);
        for piece in &self.pieces {
            body.extend_from_slice(match piece {
                Piece::Text(text) => text.as_bytes(),
                Piece::Order => order.as_bytes(),
                Piece::Click => click_id.as_bytes(),
                Piece::Now => now.as_bytes(),
            });
        }
        body
    }

    /// A signed orders/paid request: unique order and webhook ids, the worker's click.
    fn request(&self, click_id: &str, order: u64) -> (Vec<u8>, String) {
        use base64::Engine as _;
        use hmac::{KeyInit, Mac};
        let body = self.body(
            click_id,
            &order.to_string(),
            &chrono::Utc::now().to_rfc3339(),
        );
        let mut mac =
            hmac::Hmac::<sha2::Sha256>::new_from_slice(SHOPIFY_SECRET.as_bytes()).expect("key");
        mac.update(&body);
        (
            body,
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes()),
        )
    }
}

struct Sample {
    ok: u64,
    errors: u64,
    seconds: f64,
    /// Microseconds of every successful request.
    latencies: Vec<u32>,
}

impl Sample {
    fn rate(&self) -> f64 {
        self.ok as f64 / self.seconds
    }
    fn percentile(&self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        let i = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
        f64::from(self.latencies[i]) / 1000.0
    }
}

async fn run_load(
    addr: SocketAddr,
    kind: Kind,
    concurrency: usize,
    seconds: u64,
    round: usize,
) -> Sample {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let errors = Arc::new(AtomicU64::new(0));
    let keys = bench_keys();
    let shopify = Arc::new(ShopifyTemplate::new());
    let start = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..concurrency {
        let errors = errors.clone();
        let keys = keys.clone();
        let shopify = shopify.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(65536);
            let Ok(stream) = TcpStream::connect(addr).await else {
                errors.fetch_add(1, Ordering::Relaxed);
                return lat;
            };
            let _ = stream.set_nodelay(true);
            let Ok((mut sender, conn)) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await else {
                errors.fetch_add(1, Ordering::Relaxed);
                return lat;
            };
            tokio::spawn(conn);
            let click_id = keys
                .issue(1, 1, chrono::Utc::now())
                .expect("click id")
                .as_str()
                .to_owned();
            let mut n: u64 = 0;
            while Instant::now() < deadline {
                n += 1;
                let req = match kind {
                    Kind::Shopify(path) => {
                        let webhook_id = format!("r{round}-w{worker}-{n}");
                        let order = 1_000_000_000_000_000_000u64
                            + (round as u64) * 1_000_000_000_000
                            + (worker as u64) * 1_000_000_000
                            + n;
                        let (body, signature) = shopify.request(&click_id, order);
                        Request::post(path)
                            .header(hyper::header::HOST, "127.0.0.1")
                            .header(hyper::header::CONTENT_TYPE, "application/json")
                            .header("X-Shopify-Topic", "orders/paid")
                            .header("X-Shopify-Webhook-Id", webhook_id)
                            .header("X-Shopify-Hmac-Sha256", signature)
                            .body(Full::new(Bytes::from(body)))
                            .expect("request")
                    }
                    _ => {
                        let uri = match kind {
                            Kind::Path(p) => p.to_owned(),
                            Kind::Click => format!("/c/bench?aff=aff&sub1=w{worker}"),
                            _ => format!(
                                "/postback?token={TOKEN}&click_id={click_id}&goal=sale&payout=12.34&transaction_id=r{round}-w{worker}-{n}"
                            ),
                        };
                        Request::get(uri)
                            .header(hyper::header::HOST, "127.0.0.1")
                            .body(Full::new(Bytes::new()))
                            .expect("request")
                    }
                };
                let t = Instant::now();
                let Ok(resp) = sender.send_request(req).await else {
                    errors.fetch_add(1, Ordering::Relaxed);
                    break;
                };
                let status = resp.status();
                let Ok(body) = resp.into_body().collect().await.map(|b| b.to_bytes()) else {
                    errors.fetch_add(1, Ordering::Relaxed);
                    break;
                };
                let good = match kind {
                    Kind::Path(_) => status == 200,
                    Kind::Shopify(path) if !path.starts_with("/hooks/") => {
                        status == 200 && &body[..] == b"ok"
                    }
                    Kind::Click => status == 302,
                    Kind::Postback | Kind::Shopify(_) => {
                        status == 200 && body.windows(10).any(|w| w == b"\"accepted\"")
                    }
                };
                if good {
                    lat.push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX));
                } else {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            lat
        }));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await.unwrap_or_default());
    }
    let seconds = start.elapsed().as_secs_f64();
    latencies.sort_unstable();
    Sample {
        ok: latencies.len() as u64,
        errors: errors.load(Ordering::Relaxed),
        seconds,
        latencies,
    }
}

fn bench_keys() -> Arc<postgate::domain::ClickKeyRing> {
    use base64::Engine as _;
    let key = base64::engine::general_purpose::STANDARD
        .decode(CLICK_KEY)
        .expect("key");
    Arc::new(postgate::domain::ClickKeyRing::new(1, [(1, key)]).expect("ring"))
}

/// Creates an empty database on the PostgreSQL server `server`; returns its URL.
async fn fresh_postgres(server: &str, what: &str) -> String {
    use sqlx::Connection as _;
    let name = format!("postgate_bench_{what}_{}", uuid::Uuid::now_v7().simple());
    let mut conn = sqlx::PgConnection::connect(server)
        .await
        .unwrap_or_else(|e| panic!("--postgres {server}: {e}"));
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .expect("create bench database");
    let mut url = url::Url::parse(server).expect("postgres URL");
    url.set_path(&name);
    url.to_string()
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn drive() {
    let o = options();
    let dir = tempfile::tempdir().expect("temp dir");
    runtime().block_on(async move {
        let pg = match &o.postgres {
            Some(server) => Some((
                fresh_postgres(server, "bare").await,
                fresh_postgres(server, "gate").await,
            )),
            None => None,
        };
        let bare_env: Vec<(&str, &str)> = pg
            .as_ref()
            .map(|(bare, _)| vec![(BARE_PG_ENV, bare.as_str())])
            .unwrap_or_default();
        let bare = start("bare", dir.path(), &bare_env).await;
        let gate = start("postgate", dir.path(), &[]).await;
        let gate_pg = match &pg {
            Some((_, gate)) => Some(start("postgate", dir.path(), &[(DB_URL_ENV, gate)]).await),
            None => None,
        };
        let mut scenarios: Vec<(&str, SocketAddr, Kind)> = vec![
            ("bare", bare.addr, Kind::Path("/")),
            ("bare-gc", bare.addr, Kind::Path("/gc")),
            ("bare-tx", bare.addr, Kind::Path("/tx")),
            ("click", gate.addr, Kind::Click),
            ("postback", gate.addr, Kind::Postback),
            ("bare-body", bare.addr, Kind::Shopify("/body")),
            ("bare-hook", bare.addr, Kind::Shopify("/hook")),
            ("shopify", gate.addr, Kind::Shopify(SHOPIFY_PATH)),
        ];
        if let Some(g) = &gate_pg {
            scenarios.extend([
                ("pg-tx", bare.addr, Kind::Path("/pg-tx")),
                ("click-pg", g.addr, Kind::Click),
                ("postback-pg", g.addr, Kind::Postback),
                ("shopify-pg", g.addr, Kind::Shopify(SHOPIFY_PATH)),
            ]);
        }
        let scenarios: Vec<(&str, SocketAddr, Kind)> = scenarios
            .into_iter()
        .filter(|(name, _, _)| o.only.as_ref().is_none_or(|only| only.iter().any(|n| n == name)))
        .collect();

        println!(
            "postgate load benchmark: concurrency {}, {} s per run, {} rounds, {} cores",
            o.concurrency,
            o.seconds,
            o.rounds,
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
        );
        // Warm-up: connections, page cache, statement caches.
        for (_, addr, kind) in &scenarios {
            run_load(*addr, *kind, o.concurrency, 1, 0).await;
        }
        let mut results: BTreeMap<&str, Vec<Sample>> = BTreeMap::new();
        for round in 1..=o.rounds {
            for (name, addr, kind) in &scenarios {
                let s = run_load(*addr, *kind, o.concurrency, o.seconds, round).await;
                println!(
                    "  round {round} {name:<9} {:>9.0} req/s  p50 {:>6.2} ms  p99 {:>6.2} ms  errors {}",
                    s.rate(),
                    s.percentile(0.50),
                    s.percentile(0.99),
                    s.errors
                );
                results.entry(name).or_default().push(s);
            }
        }

        println!("\nmedian of {} rounds:", o.rounds);
        println!("  {:<9} {:>10} {:>10} {:>10} {:>8}", "scenario", "req/s", "p50 ms", "p99 ms", "errors");
        let mut med = BTreeMap::new();
        for (name, samples) in &results {
            let rate = median(&mut samples.iter().map(Sample::rate).collect::<Vec<_>>());
            let p50 = median(&mut samples.iter().map(|s| s.percentile(0.5)).collect::<Vec<_>>());
            let p99 = median(&mut samples.iter().map(|s| s.percentile(0.99)).collect::<Vec<_>>());
            let errors: u64 = samples.iter().map(|s| s.errors).sum();
            println!("  {name:<9} {rate:>10.0} {p50:>10.2} {p99:>10.2} {errors:>8}");
            med.insert(*name, rate);
        }
        let ratio = |a: &str, b: &str| match (med.get(a), med.get(b)) {
            (Some(x), Some(y)) if *y > 0.0 => format!("{:.2}", x / y),
            _ => "n/a".to_owned(),
        };
        println!("\nratios (medians):");
        println!("  click / bare          {}  (target >= 0.5)", ratio("click", "bare"));
        println!("  postback / bare-gc    {}  (target >= 0.6)", ratio("postback", "bare-gc"));
        println!("  shopify / bare-gc     {}  (target >= 0.4)", ratio("shopify", "bare-gc"));
        println!("  bare-hook / bare-gc   {}  (a stored 15 KB webhook vs a 1-row insert)", ratio("bare-hook", "bare-gc"));
        println!("  shopify / bare-hook   {}  (postgate vs receiving and storing the bytes)", ratio("shopify", "bare-hook"));
        println!("  bare-gc / bare-tx     {}  (group commit vs fsync per request)", ratio("bare-gc", "bare-tx"));
        if gate_pg.is_some() {
            println!("  postback-pg / pg-tx   {}  (target >= 1.5)", ratio("postback-pg", "pg-tx"));
            println!("  shopify-pg / pg-tx    {}", ratio("shopify-pg", "pg-tx"));
            println!("  postback-pg / postback {}  (PostgreSQL vs SQLite)", ratio("postback-pg", "postback"));
        }
        drop(bare);
        drop(gate);
        drop(gate_pg);
    });
}
