//! Shared by the integration test binaries (each includes it with `#[path]`): the gateway
//! in this process on port 0, and the real binary in a child process for crash tests.

#![allow(dead_code)] // each binary uses its own part

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use postgate::config::Settings;
use postgate::startup::Application;
use tokio::sync::oneshot;

/// A gateway running in this process; harnesses add request helpers in their own `impl`.
pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    pub dir: tempfile::TempDir,
    pub database_url: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// Starts the gateway with `settings` (whose database lives in `dir`) on port 0.
pub async fn spawn_with(dir: tempfile::TempDir, settings: Settings) -> TestApp {
    if std::env::var_os("TEST_LOG").is_some() {
        postgate::telemetry::init();
    }
    let app = Application::build(&settings).await.expect("app builds");
    let address = format!("http://127.0.0.1:{}", app.port());
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        app.run_until(async {
            let _ = stopped.await;
        })
        .await
        .expect("server runs");
    });
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    TestApp {
        address,
        client,
        dir,
        database_url: settings.server.database_url.clone(),
        stop: Some(stop),
        task: Some(task),
    }
}

impl TestApp {
    /// A pool on this gateway's database, for assertions on stored rows.
    pub async fn pool(&self) -> postgate::store::Pool {
        open_pool(&self.database_url).await
    }

    /// Stops gracefully (writer drained, worker stopped); returns the database directory
    /// for a restart.
    pub async fn stop(mut self) -> tempfile::TempDir {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("server task");
        }
        self.dir
    }
}

/// Starts `postgate serve --config <config>` with `env`; returns the child and its base URL
/// (the port comes from its "Listening." log line; the log keeps being drained).
pub fn start_binary<K: AsRef<OsStr>, V: AsRef<OsStr>>(
    config: &Path,
    env: impl IntoIterator<Item = (K, V)>,
) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_postgate"))
        .args(["serve", "--config"])
        .arg(config)
        .envs(env)
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn postgate");
    use std::io::Write as _;
    // TEST_LOG=1 shows the child's log; it is always kept in `postgate.log` beside the
    // configuration (appended across restarts), for a failing test to quote (see [`log_tail`]).
    let echo = std::env::var_os("TEST_LOG").is_some();
    let mut kept = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path(config))
        .expect("child log file");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let port: u16 = loop {
        let line = lines
            .next()
            .expect("postgate exited before listening")
            .expect("read");
        let _ = writeln!(kept, "[postgate starting] {line}");
        if let Some(rest) = line.split("Listening. port=").nth(1) {
            break rest.trim().parse().expect("port");
        }
    };
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            let _ = writeln!(kept, "[postgate {port}] {line}");
            if echo {
                eprintln!("[postgate {port}] {line}");
            }
        }
    });
    (child, format!("http://127.0.0.1:{port}"))
}

/// Where [`start_binary`] keeps the log of the children started on `config`.
pub fn log_path(config: &Path) -> std::path::PathBuf {
    config.with_file_name("postgate.log")
}

/// The last `n` lines of the children's log (see [`log_path`]) that contain none of `skip`:
/// what a failing test quotes to say what the gateway was doing.
pub fn log_tail(config: &Path, n: usize, skip: &[&str]) -> String {
    let text = std::fs::read_to_string(log_path(config)).unwrap_or_default();
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| !skip.iter().any(|s| l.contains(s)))
        .collect();
    kept[kept.len().saturating_sub(n)..].join("\n")
}

/// Set to a PostgreSQL server URL (e.g. `postgres://postgres@127.0.0.1:5432/test`) to run
/// the suites against PostgreSQL instead of SQLite: every test then gets a database of its
/// own on that server, created fresh.
pub const POSTGRES_ENV: &str = "POSTGATE_TEST_POSTGRES_URL";

/// The database URL for a test whose SQLite file would be `db`. Under [`POSTGRES_ENV`], a
/// fresh PostgreSQL database instead, remembered next to `db` so that a restarted gateway
/// finds the same one.
pub fn database_url(db: &Path) -> String {
    let Ok(server) = std::env::var(POSTGRES_ENV) else {
        return format!("sqlite://{}", db.display());
    };
    let marker = db.with_extension("pgurl");
    if let Ok(url) = std::fs::read_to_string(&marker) {
        return url;
    }
    let name = format!("postgate_test_{}", uuid::Uuid::now_v7().simple());
    let create = format!("CREATE DATABASE {name}");
    let admin = server.clone();
    // Its own thread and runtime: callers may be sync or inside a runtime.
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(async {
                use sqlx::Connection as _;
                let mut conn = sqlx::PgConnection::connect(&admin)
                    .await
                    .unwrap_or_else(|e| panic!("{POSTGRES_ENV}={admin}: cannot connect: {e}"));
                sqlx::query(sqlx::AssertSqlSafe(create))
                    .execute(&mut conn)
                    .await
                    .expect("create test database");
            });
    })
    .join()
    .expect("create test database");
    let mut url = reqwest::Url::parse(&server).expect("postgres URL");
    url.set_path(&name);
    let url = url.to_string();
    std::fs::write(&marker, &url).expect("remember test database");
    url
}

/// A pool on the test's database, for assertions on stored rows (either backend; use
/// `postgate::db!` to run a query on it).
pub async fn open_pool(url: &str) -> postgate::store::Pool {
    postgate::store::worker_pool(url, 2)
        .await
        .expect("test database")
}

/// Writes `config` to `path` for a gateway in a child process, with the spool in a
/// `spool/` directory beside it (the default would be shared by every test).
pub fn write_config(path: &Path, config: &str) {
    let spool = path.with_file_name("spool");
    std::fs::write(
        path,
        format!(
            "{config}\n[spool]\ndir = {:?}\n",
            spool.display().to_string()
        ),
    )
    .expect("config");
}

/// PostgreSQL only: makes the test database behind `database_url` refuse new connections
/// and ends its sessions (`allow = false`), as a server restart looks to a client while the
/// other tests' databases carry on; `allow = true` ends the outage.
pub async fn allow_connections(database_url: &str, allow: bool) {
    use sqlx::Connection as _;
    let server = std::env::var(POSTGRES_ENV).expect("a PostgreSQL server");
    let name = reqwest::Url::parse(database_url)
        .expect("database URL")
        .path()[1..]
        .to_owned();
    let mut conn = sqlx::PgConnection::connect(&server)
        .await
        .expect("admin connection");
    let mut statements = vec![format!("ALTER DATABASE {name} ALLOW_CONNECTIONS {allow}")];
    if !allow {
        statements.push(format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = '{name}' AND pid <> pg_backend_pid()"
        ));
    }
    for sql in statements {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&mut conn)
            .await
            .expect("change the database's connection rights");
    }
}

/// Keeps a gateway's database unusable until ended — a real outage, not a test hook. On
/// SQLite another connection holds the write lock (`BEGIN EXCLUSIVE`), so writes fail after
/// their busy timeout (10 s), as when the database is locked or unreachable. On PostgreSQL
/// the test's database stops accepting connections and its sessions are terminated, as in
/// a server restart, while the other tests' databases carry on.
pub enum Outage {
    /// Holds SQLite's write lock.
    Sqlite(sqlx::SqliteConnection),
    /// The test database refuses connections.
    Postgres(String),
}

impl Outage {
    /// Begins an outage of `app`'s database (SQLite: `postgate.db` in its directory).
    pub async fn begin(app: &TestApp) -> Outage {
        use sqlx::Connection as _;
        // Let queued click rows commit first, so no batch mixes them with the requests.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        if std::env::var(POSTGRES_ENV).is_ok() {
            allow_connections(&app.database_url, false).await;
            return Outage::Postgres(app.database_url.clone());
        }
        let db = app.dir.path().join("postgate.db");
        let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
            .await
            .expect("connect");
        sqlx::query("BEGIN EXCLUSIVE")
            .execute(&mut conn)
            .await
            .expect("write lock");
        Outage::Sqlite(conn)
    }

    pub async fn end(self) {
        match self {
            Outage::Sqlite(mut conn) => {
                sqlx::query("COMMIT")
                    .execute(&mut conn)
                    .await
                    .expect("unlock");
            }
            Outage::Postgres(url) => allow_connections(&url, true).await,
        }
    }
}
