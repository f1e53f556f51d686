//! The test harness: the real gateway on port 0 with a fresh database per test.

use std::path::Path;

use postgate::config::Settings;
use postgate::domain::ClickKeyRing;
use reqwest::StatusCode;
use serde_json::Value;

pub const ADMIN_TOKEN: &str = "test-admin-token";
pub const ACME_TOKEN: &str = "acme-secret-token";
pub const OTHER_TOKEN: &str = "other-secret-token";
/// base64 of 32 bytes of 0x2a; the test config signs click IDs with it.
pub const CLICK_KEY_B64: &str = "KioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKio=";

/// Offers of the test configuration, by what they exercise.
pub const TEST_CONFIG: &str = r#"
[server]
listen = "127.0.0.1:0"
database_url = "${TEST_DB_URL}"
admin_token = "test-admin-token"

[network]
currency = "USD"

[fx]
EUR = "1.08"
JPY = "0.0067"
KWD = "3.25"

[click_ids]
active = 1
keys = [{ id = 1, secret = "KioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKio=" }]

[[advertisers]]
id = "acme"
token = "acme-secret-token"
aliases = { click_id = ["cid"], payout = ["sale_amount"], transaction_id = ["order"] }

[[advertisers]]
id = "other"
token = "other-secret-token"

[[affiliates]]
id = "aff1"

[[affiliates]]
id = "aff2"

[[hooks]]
connector = "shopify"
advertiser = "acme"

[[hooks]]
connector = "salesforce"
advertiser = "acme"

[[hooks]]
connector = "stripe"
advertiser = "acme"

[[offers]]
id = "shoes"
advertiser = "acme"
landing_url = "https://shop.example/l?subid={click_id}&s1={sub1}"
currency = "USD"
default_goal = "purchase"

[[offers.goals]]
name = "purchase"
payout = { fixed = "15.00" }
revenue = { percent = "100" }

[[offers.goals]]
name = "lead"
payout = { fixed = "2.00" }
revenue = { fixed = "3.00" }

[[offers.goals]]
name = "upsell"
payout = { percent = "10" }
revenue = { percent = "100" }
allow_repeats = true

[[offers]]
id = "slow"
advertiser = "acme"
landing_url = "https://shop.example/slow?subid={click_id}"
min_lag_seconds = 3600
lag_action = "reject"
[[offers.goals]]
name = "purchase"
payout = { fixed = "1.00" }
revenue = { fixed = "2.00" }

[[offers]]
id = "flagged"
advertiser = "acme"
landing_url = "https://shop.example/flag?subid={click_id}"
min_lag_seconds = 3600
lag_action = "flag"
[[offers.goals]]
name = "purchase"
payout = { fixed = "1.00" }
revenue = { fixed = "2.00" }

[[offers]]
id = "yen"
advertiser = "acme"
landing_url = "https://shop.example/jp?subid={click_id}"
currency = "JPY"
[[offers.goals]]
name = "purchase"
payout = { fixed = "500" }
revenue = { percent = "100" }

[[offers]]
id = "paused"
advertiser = "acme"
status = "paused"
landing_url = "https://shop.example/p?subid={click_id}"
fallback_url = "https://shop.example/sold-out?aff={affiliate_id}"
[[offers.goals]]
name = "purchase"
payout = { fixed = "1.00" }
revenue = { fixed = "2.00" }

[[offers]]
id = "theirs"
advertiser = "other"
landing_url = "https://other.example/?s={click_id}"
[[offers.goals]]
name = "purchase"
payout = { fixed = "1.00" }
revenue = { fixed = "2.00" }
"#;

pub use crate::support::TestApp;

pub async fn spawn_app() -> TestApp {
    let dir = tempfile::tempdir().expect("temp dir");
    spawn_in(dir).await
}

/// Starts the gateway on the database in `dir` (which may already hold data).
pub async fn spawn_in(dir: tempfile::TempDir) -> TestApp {
    let settings = settings_for(&dir.path().join("postgate.db"));
    crate::support::spawn_with(dir, settings).await
}

pub const SHOPIFY_SECRET: &str = "test-shopify-secret-0123456789";
pub const SALESFORCE_TOKEN: &str = "sf-token-0123456789abcdef";
pub const STRIPE_SECRET: &str = "whsec_test-stripe-secret-0123456789";
/// The OrganizationId of the aspnet-webhooks Lead capture.
pub const SALESFORCE_ORG: &str = "0123456789ABCDENNN";

pub fn settings_for(db: &Path) -> Settings {
    let url = crate::support::database_url(db);
    let mut settings = Settings::from_toml(Path::new("test.toml"), TEST_CONFIG, &move |name| {
        (name == "TEST_DB_URL").then(|| url.clone())
    })
    .expect("test config is valid");
    // Beside the test's files whatever the backend (on PostgreSQL the default is ./data).
    settings.spool.dir = db.with_file_name("spool");
    settings.hooks.env = postgate::connector::Env::Fixed(
        [
            ("SHOPIFY_WEBHOOK_SECRET", SHOPIFY_SECRET),
            ("SALESFORCE_TOKEN", SALESFORCE_TOKEN),
            ("SALESFORCE_ORG_ID", SALESFORCE_ORG),
            ("STRIPE_WEBHOOK_SECRET", STRIPE_SECRET),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect(),
    );
    settings
}

/// The key ring the test configuration uses, for minting click IDs in the past.
pub fn key_ring() -> ClickKeyRing {
    use base64::Engine as _;
    let key = base64::engine::general_purpose::STANDARD
        .decode(CLICK_KEY_B64)
        .expect("key");
    ClickKeyRing::new(1, [(1, key)]).expect("ring")
}

impl TestApp {
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.address))
            .send()
            .await
            .expect("request")
    }

    /// Clicks `offer` as `aff`; returns the click ID from the redirect.
    pub async fn click(&self, offer: &str, aff: &str) -> String {
        let resp = self.get(&format!("/c/{offer}?aff={aff}")).await;
        assert_eq!(resp.status(), StatusCode::FOUND, "click on {offer}");
        let location = resp.headers()["location"]
            .to_str()
            .expect("location")
            .to_owned();
        let url = reqwest::Url::parse(&location).expect("landing URL");
        url.query_pairs()
            .find(|(k, _)| k == "subid")
            .map(|(_, v)| v.into_owned())
            .expect("subid in landing URL")
    }

    /// GET /postback with the given parameters; returns status and JSON body.
    pub async fn postback(&self, params: &[(&str, &str)]) -> (StatusCode, Value) {
        let resp = self
            .client
            .get(format!("{}/postback", self.address))
            .query(params)
            .send()
            .await
            .expect("postback");
        let status = resp.status();
        (status, resp.json().await.expect("JSON receipt"))
    }

    pub async fn admin_get(&self, path: &str) -> (StatusCode, Value) {
        let resp = self
            .client
            .get(format!("{}{path}", self.address))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .expect("admin request");
        let status = resp.status();
        (status, resp.json().await.expect("JSON"))
    }

    pub async fn conversion(&self, id: &str) -> Value {
        let (status, body) = self.admin_get(&format!("/api/v1/conversions/{id}")).await;
        assert_eq!(status, StatusCode::OK, "conversion {id}: {body}");
        body
    }

    /// Balances as `(account, currency) -> minor units`.
    pub async fn balances(&self) -> Vec<(String, String, i64)> {
        let (status, body) = self.admin_get("/api/v1/ledger/balances").await;
        assert_eq!(status, StatusCode::OK);
        body["balances"]
            .as_array()
            .expect("balances array")
            .iter()
            .map(|b| {
                (
                    b["account"].as_str().expect("account").to_owned(),
                    b["currency"].as_str().expect("currency").to_owned(),
                    b["amount_minor"].as_i64().expect("amount"),
                )
            })
            .collect()
    }

    pub async fn balance(&self, account: &str) -> i64 {
        self.balances()
            .await
            .into_iter()
            .filter(|(a, _, _)| a == account)
            .map(|(_, _, v)| v)
            .sum()
    }
}

/// The first reason code of a receipt.
pub fn code(body: &Value) -> &str {
    body["reasons"][0]["code"].as_str().unwrap_or("<none>")
}

/// The value of one series (`name{labels} value`) in a Prometheus text page.
pub fn metric(page: &str, series: &str) -> Option<f64> {
    page.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}
