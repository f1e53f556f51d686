//! The real gateway on port 0 with postbacks pointing at a recording fake affiliate.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path as AxPath, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use postgate::config::Settings;
use serde_json::Value;

pub const ADMIN_TOKEN: &str = "test-admin-token";
pub const ACME_TOKEN: &str = "acme-secret-token";
/// The Standard Webhooks example secret; aff2's POST endpoint signs with it.
pub const WHSEC: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// Each affiliate exercises one receiver behaviour (see [`Receiver`]'s routes).
pub const CONFIG: &str = r#"
[server]
listen = "127.0.0.1:0"
database_url = "${TEST_DB_URL}"
admin_token = "test-admin-token"

[network]
currency = "USD"

[fx]
EUR = "1.08"

[click_ids]
active = 1
keys = [{ id = 1, secret = "KioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKio=" }]

[[advertisers]]
id = "acme"
token = "acme-secret-token"

[[affiliates]]
id = "plain"
postback_url = "${RECEIVER}/pb?click_id={click_id}&payout={payout}&currency={currency}&txid={transaction_id}&status={status}&s1={sub1}"
postback_allow_http = true

[[affiliates]]
id = "signed"
[affiliates.postback]
method = "post"
url = "${RECEIVER}/hook"
body = '{"click":"{click_id}","payout":"{payout}","status":"{status}"}'
secrets = ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]
allow_http = true
statuses = ["approved", "reversed"]

[[affiliates]]
id = "gone"
postback_url = "${RECEIVER}/gone?c={click_id}"
postback_allow_http = true

[[affiliates]]
id = "redirects"
postback_url = "${RECEIVER}/redirect?c={click_id}"
postback_allow_http = true

[[affiliates]]
id = "flaky"
postback_url = "${RECEIVER}/flaky?c={click_id}"
postback_allow_http = true

[[affiliates]]
id = "down"
postback_url = "${RECEIVER}/down?c={click_id}"
postback_allow_http = true

[[affiliates]]
id = "slow"
postback_url = "${RECEIVER}/slow?c={click_id}"
postback_allow_http = true

[[affiliates]]
id = "silent"

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

[outbound]
allow_networks = ["127.0.0.1/32"]
schedule_seconds = [0, 1, 2]
jitter = 0.0
poll_interval_ms = 50
"#;

/// One request the fake affiliate received.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub route: String,
    pub uri: Uri,
    pub headers: HeaderMap,
    pub body: Bytes,
}

struct ReceiverState {
    requests: Mutex<Vec<Received>>,
    flaky_calls: AtomicUsize,
    down_healthy: AtomicBool,
    /// Where /redirect points: a second listener on an address the allow-list does not cover.
    redirect_to: Mutex<String>,
    /// /slow answers only once the test adds permits here.
    slow_gate: tokio::sync::Semaphore,
}

/// A recording fake affiliate on 127.0.0.1:0.
/// Routes: /pb and /hook → 200; /slow → 200 once released; /gone → 410; /redirect → 302 to a blocked address;
/// /flaky → 500, 500, then 200; /down → 500 until [`Receiver::heal`].
#[derive(Clone)]
pub struct Receiver {
    pub base: String,
    state: Arc<ReceiverState>,
}

async fn record(
    State(state): State<Arc<ReceiverState>>,
    AxPath(route): AxPath<String>,
    method: axum::http::Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Ok(mut r) = state.requests.lock() {
        r.push(Received {
            method: method.to_string(),
            route: route.clone(),
            uri,
            headers,
            body,
        });
    }
    match route.as_str() {
        "slow" => {
            if let Ok(permit) = state.slow_gate.acquire().await {
                permit.forget();
            }
            (StatusCode::OK, "ok").into_response()
        }
        "gone" => StatusCode::GONE.into_response(),
        "redirect" => {
            let to = state
                .redirect_to
                .lock()
                .map(|s| s.clone())
                .unwrap_or_default();
            (StatusCode::FOUND, [(header::LOCATION, to)]).into_response()
        }
        "flaky" if state.flaky_calls.fetch_add(1, Ordering::SeqCst) < 2 => {
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
        "down" if !state.down_healthy.load(Ordering::SeqCst) => {
            (StatusCode::INTERNAL_SERVER_ERROR, "maintenance").into_response()
        }
        _ => (StatusCode::OK, "ok").into_response(),
    }
}

async fn serve(addr: &str, state: Arc<ReceiverState>) -> SocketAddr {
    let app = Router::new()
        .route("/{route}", any(record))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
    let local = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    local
}

impl Default for ReceiverState {
    fn default() -> Self {
        Self {
            requests: Mutex::default(),
            flaky_calls: AtomicUsize::default(),
            down_healthy: AtomicBool::default(),
            redirect_to: Mutex::default(),
            slow_gate: tokio::sync::Semaphore::new(0),
        }
    }
}

impl Receiver {
    pub async fn start() -> Self {
        let state = Arc::new(ReceiverState::default());
        let addr = serve("127.0.0.1:0", state.clone()).await;
        Self {
            base: format!("http://{addr}"),
            state,
        }
    }

    /// Starts a second recorder on 127.0.0.2 (loopback, not allow-listed) and points
    /// /redirect at it; returns it so a test can check it was never reached.
    pub async fn redirect_to_blocked(&self) -> Receiver {
        let blocked = Arc::new(ReceiverState::default());
        let addr = serve("127.0.0.2:0", blocked.clone()).await;
        if let Ok(mut to) = self.state.redirect_to.lock() {
            *to = format!("http://{addr}/stolen");
        }
        Receiver {
            base: format!("http://{addr}"),
            state: blocked,
        }
    }

    /// Lets every held and future /slow request answer.
    pub fn release_slow(&self) {
        self.state
            .slow_gate
            .add_permits(tokio::sync::Semaphore::MAX_PERMITS / 2);
    }

    pub fn heal(&self) {
        self.state.down_healthy.store(true, Ordering::SeqCst);
    }

    pub fn received(&self) -> Vec<Received> {
        self.state
            .requests
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }
}

pub use crate::support::{TestApp, spawn_with};

pub const SHOPIFY_SECRET: &str = "test-shopify-secret-0123456789";

pub fn settings_for(db: &Path, receiver: &Receiver) -> Settings {
    let db_path = db;
    let db = crate::support::database_url(db);
    let base = receiver.base.clone();
    let mut settings =
        Settings::from_toml(
            Path::new("outbound-test.toml"),
            CONFIG,
            &move |name| match name {
                "TEST_DB_URL" => Some(db.clone()),
                "RECEIVER" => Some(base.clone()),
                _ => None,
            },
        )
        .expect("test config is valid");
    settings.spool.dir = db_path.with_file_name("spool");
    settings.hooks.env = postgate::connector::Env::Fixed(
        [("SHOPIFY_WEBHOOK_SECRET", SHOPIFY_SECRET)]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
    );
    settings
}

/// The gateway on a fresh database, delivering to `receiver`.
pub async fn spawn_app(receiver: &Receiver) -> TestApp {
    let dir = tempfile::tempdir().expect("temp dir");
    let settings = settings_for(&dir.path().join("postgate.db"), receiver);
    spawn_with(dir, settings).await
}

/// Like [`spawn_app`] with the handoff of first attempts off: every attempt goes through
/// apalis' polling.
pub async fn spawn_app_without_handoff(receiver: &Receiver) -> TestApp {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut settings = settings_for(&dir.path().join("postgate.db"), receiver);
    settings.outbound.handoff_grace = None;
    spawn_with(dir, settings).await
}

/// Like [`spawn_app`] with attempt offsets `secs` (jitter-free). apalis schedules in whole
/// seconds and a loaded machine runs attempts late, so a test that needs an exact attempt
/// count gives the schedule a late horizon.
pub async fn spawn_app_with_schedule(receiver: &Receiver, secs: &[u64]) -> TestApp {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut settings = settings_for(&dir.path().join("postgate.db"), receiver);
    settings.outbound.schedule = postgate::outbound::RetrySchedule::new(
        secs.iter().map(|s| Duration::from_secs(*s)).collect(),
        0.0,
    )
    .expect("schedule");
    spawn_with(dir, settings).await
}

impl TestApp {
    /// Clicks offer `shoes` as `aff`; returns the click ID.
    pub async fn click(&self, aff: &str) -> String {
        let resp = self
            .client
            .get(format!("{}/c/shoes?aff={aff}&sub1=s%201", self.address))
            .send()
            .await
            .expect("click");
        assert_eq!(resp.status(), StatusCode::FOUND);
        let location = resp.headers()["location"].to_str().expect("location");
        let url = reqwest::Url::parse(location).expect("landing URL");
        url.query_pairs()
            .find(|(k, _)| k == "subid")
            .map(|(_, v)| v.into_owned())
            .expect("subid")
    }

    /// A postback for `click`; returns its JSON receipt.
    pub async fn postback(&self, click: &str, txn: &str, status: &str) -> Value {
        self.client
            .get(format!("{}/postback", self.address))
            .query(&[
                ("token", ACME_TOKEN),
                ("click_id", click),
                ("transaction_id", txn),
                ("status", status),
            ])
            .send()
            .await
            .expect("postback")
            .json()
            .await
            .expect("receipt")
    }

    /// A postback for `click`; returns the accepted conversion's id.
    pub async fn convert(&self, click: &str, txn: &str, status: &str) -> String {
        let body = self.postback(click, txn, status).await;
        assert_eq!(body["status"], "accepted", "{body}");
        body["conversion_id"].as_str().expect("id").to_owned()
    }

    pub async fn deliveries(&self, conversion_id: &str) -> Vec<Value> {
        let resp = self
            .client
            .get(format!(
                "{}/api/v1/deliveries?conversion_id={conversion_id}",
                self.address
            ))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .expect("deliveries");
        assert_eq!(resp.status(), StatusCode::OK);
        let body: Value = resp.json().await.expect("JSON");
        body["deliveries"].as_array().cloned().unwrap_or_default()
    }

    /// Polls the API until the conversion's only delivery is in `state` (events, not a
    /// timing assertion: the deadline is only a hang guard).
    pub async fn wait_for_state(&self, conversion_id: &str, state: &str) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let list = self.deliveries(conversion_id).await;
            if let [one] = list.as_slice()
                && one["state"] == state
            {
                return one.clone();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "delivery never became {state}: {list:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A Shopify webhook signed with the test secret.
    pub async fn send_shopify(&self, topic: &str, webhook_id: &str, body: Vec<u8>) -> Value {
        use base64::Engine as _;
        use hmac::{Hmac, KeyInit, Mac};
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SHOPIFY_SECRET.as_bytes()).expect("key");
        mac.update(&body);
        let signature =
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        let resp = self
            .client
            .post(format!("{}/hooks/shopify", self.address))
            .header("content-type", "application/json")
            .header("x-shopify-topic", topic)
            .header("x-shopify-hmac-sha256", signature)
            .header("x-shopify-webhook-id", webhook_id)
            .header("x-shopify-shop-domain", "shop.example")
            .body(body)
            .send()
            .await
            .expect("shopify");
        resp.json().await.expect("JSON")
    }

    pub async fn admin_post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let resp = self
            .client
            .post(format!("{}{path}", self.address))
            .bearer_auth(ADMIN_TOKEN)
            .json(&body)
            .send()
            .await
            .expect("admin post");
        let status = resp.status();
        (status, resp.json().await.expect("JSON"))
    }
}
