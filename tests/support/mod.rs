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
        stop: Some(stop),
        task: Some(task),
    }
}

impl TestApp {
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
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let port: u16 = loop {
        let line = lines
            .next()
            .expect("postgate exited before listening")
            .expect("read");
        if let Some(rest) = line.split("Listening. port=").nth(1) {
            break rest.trim().parse().expect("port");
        }
    };
    std::thread::spawn(move || for _ in lines {});
    (child, format!("http://127.0.0.1:{port}"))
}
