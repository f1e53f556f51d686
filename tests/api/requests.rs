//! Malformed and unauthenticated requests: 4xx with a reason, nothing recorded.

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{ACME_TOKEN, code, spawn_app};

#[tokio::test]
async fn a_missing_or_wrong_token_gets_401_bad_token() {
    let app = spawn_app().await;
    let click = app.click("shoes", "aff1").await;
    let (status, body) = app.postback(&[("click_id", &click)]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(code(&body), "bad_token");
    let (status, body) = app
        .postback(&[("click_id", &click), ("token", "acme-secret-tokeN")])
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(code(&body), "bad_token");
    assert!(body["conversion_id"].is_null());
}

#[tokio::test]
async fn postbacks_without_a_click_id_or_with_bad_values_get_400() {
    let app = spawn_app().await;
    let (status, body) = app.postback(&[("token", ACME_TOKEN)]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(code(&body), "missing_parameter");

    let click = app.click("shoes", "aff1").await;
    for (payout, expected) in [
        ("12.345", "invalid_amount"),
        ("1e3", "invalid_amount"),
        ("-5", "invalid_amount"),
    ] {
        let (status, body) = app
            .postback(&[
                ("token", ACME_TOKEN),
                ("click_id", &click),
                ("payout", payout),
            ])
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "payout {payout}: {body}");
        assert_eq!(code(&body), expected);
    }
    let (status, body) = app
        .postback(&[
            ("token", ACME_TOKEN),
            ("click_id", &click),
            ("status", "maybe"),
        ])
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(code(&body), "invalid_parameter");

    // None of these was recorded: the click can still convert.
    let (status, body) = app
        .postback(&[
            ("token", ACME_TOKEN),
            ("click_id", &click),
            ("payout", "10"),
        ])
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "accepted", "{body}");
}

#[tokio::test]
async fn form_and_json_posts_work_and_json_numbers_stay_exact() {
    let app = spawn_app().await;
    let click = app.click("shoes", "aff1").await;
    let resp = app
        .client
        .post(format!("{}/postback", app.address))
        .form(&[
            ("token", ACME_TOKEN),
            ("click_id", click.as_str()),
            ("payout", "19.99"),
        ])
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), StatusCode::OK);
    let body: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(body["status"], "accepted", "{body}");
    let conv = app
        .conversion(body["conversion_id"].as_str().expect("id"))
        .await;
    assert_eq!(conv["amount"], "19.99");

    let click = app.click("shoes", "aff1").await;
    let resp = app
        .client
        .post(format!("{}/postback?token={ACME_TOKEN}", app.address))
        .header("content-type", "application/json")
        .body(format!(
            r#"{{"click_id":"{click}","payout":0.30000000000000004,"goal":"upsell"}}"#
        ))
        .send()
        .await
        .expect("post");
    let body: serde_json::Value = resp.json().await.expect("json");
    // 0.30000000000000004 has more decimals than USD: refused, not rounded through f64.
    assert_eq!(code(&body), "invalid_amount", "{body}");

    let resp = app
        .client
        .post(format!("{}/postback?token={ACME_TOKEN}", app.address))
        .json(&json!({"click_id": click, "payout": 0.3, "goal": "upsell"}))
        .send()
        .await
        .expect("post");
    let body: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(body["status"], "accepted", "{body}");
    let conv = app
        .conversion(body["conversion_id"].as_str().expect("id"))
        .await;
    assert_eq!(conv["amount"], "0.30");
}

#[tokio::test]
async fn advertiser_aliases_name_the_parameters() {
    let app = spawn_app().await;
    let click = app.click("shoes", "aff1").await;
    let (status, body) = app
        .postback(&[
            ("token", ACME_TOKEN),
            ("cid", &click),
            ("sale_amount", "42.00"),
            ("order", "A-1"),
        ])
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "accepted", "{body}");
    let conv = app
        .conversion(body["conversion_id"].as_str().expect("id"))
        .await;
    assert_eq!(conv["transaction_id"], "A-1");
    assert_eq!(conv["revenue"], "42.00");
}

#[tokio::test]
async fn oversized_bodies_get_413_and_unknown_media_types_415() {
    let app = spawn_app().await;
    let resp = app
        .client
        .post(format!("{}/postback", app.address))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(vec![b'a'; 2 * 1024 * 1024])
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let resp = app
        .client
        .post(format!("{}/postback", app.address))
        .header("content-type", "text/csv")
        .body("a,b")
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let resp = app
        .client
        .post(format!("{}/postback", app.address))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
}

const FORM: &str = "application/x-www-form-urlencoded";

/// The request line and headers of a POST to `path` declaring `length` bytes of
/// `content_type`, with `extra` header lines (each ending in CRLF).
fn post_head(path: &str, content_type: &str, length: usize, extra: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: {content_type}\r\n\
         Content-Length: {length}\r\n{extra}\r\n"
    )
}

/// Sends `head` (request line and headers) and `body` on a raw connection, keeps it open
/// without sending more, and returns the status line of the answer and its body.
async fn raw_exchange(address: &str, head: &str, body: &[u8]) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = address.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.write_all(head.as_bytes()).await.expect("head");
    stream.write_all(body).await.expect("body");
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    // The answer's headers and JSON body, however the server frames them; a server that never
    // answers fails the test instead of hanging it.
    let read = async {
        loop {
            let n = stream.read(&mut buf).await.expect("read");
            answer.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&answer);
            if n == 0 || text.contains("\r\n\r\n{") && text.trim_end().ends_with('}') {
                break;
            }
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(60), read)
        .await
        .expect("an answer within 60 s");
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text.lines().next().unwrap_or_default().to_owned();
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    (status, body)
}

#[tokio::test]
async fn a_declared_oversized_body_is_refused_before_it_is_sent() {
    let app = spawn_app().await;
    // 5 MB announced, none of it sent: answered at once on the header alone (waiting for the
    // body would end in a 408 after the body timeout instead).
    let head = post_head("/postback", FORM, 5_000_000, "Expect: 100-continue\r\n");
    let (status, body) = raw_exchange(&app.address, &head, b"").await;
    assert!(status.contains(" 413 "), "{status} {body}");
    assert!(body.contains("payload_too_large"), "{body}");
}

#[tokio::test]
async fn the_admin_replay_body_has_the_same_limits_and_a_clear_400() {
    let app = spawn_app().await;
    let auth = format!("Authorization: Bearer {}\r\n", crate::helpers::ADMIN_TOKEN);
    let head = |length| {
        post_head(
            "/api/v1/deliveries/replay",
            "application/json",
            length,
            &auth,
        )
    };
    let (status, body) = raw_exchange(&app.address, &head(5_000_000), b"").await;
    assert!(status.contains(" 413 "), "{status} {body}");
    let (status, body) = raw_exchange(&app.address, &head(9), b"{\"id\": 1}").await;
    assert!(status.contains(" 400 "), "{status} {body}");
    assert!(body.contains("invalid_parameter"), "{body}");
}

#[tokio::test]
async fn a_body_that_stops_arriving_gets_408_not_a_5xx() {
    let app = spawn_app().await;
    let head = post_head("/postback", FORM, 500, "");
    let (status, body) = raw_exchange(&app.address, &head, b"token=acme").await;
    assert!(status.contains(" 408 "), "{status} {body}");
    assert!(body.contains("request_timeout"), "{body}");
}

#[tokio::test]
async fn the_admin_api_requires_the_bearer_token() {
    let app = spawn_app().await;
    let resp = app.get("/api/v1/ledger/balances").await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let resp = app
        .client
        .get(format!("{}/api/v1/ledger/balances", app.address))
        .bearer_auth("test-admin-tokeN")
        .send()
        .await
        .expect("get");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let (status, _) = app.admin_get("/api/v1/conversions/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(app.get("/healthz").await.status(), StatusCode::OK);
    assert_eq!(app.get("/readyz").await.status(), StatusCode::OK);
}

/// Behind a proxy, the client controls all of `X-Forwarded-For` but the entry the proxy
/// appends last; an advertiser's IP allow-list must be checked against that one.
#[tokio::test]
async fn a_forged_forwarded_for_entry_does_not_pass_an_ip_allow_list() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = crate::support::database_url(&dir.path().join("postgate.db"));
    let config = crate::helpers::TEST_CONFIG
        .replace(
            "admin_token = \"test-admin-token\"",
            "admin_token = \"test-admin-token\"\nclient_ip_header = \"X-Forwarded-For\"",
        )
        .replace(
            "token = \"acme-secret-token\"",
            "token = \"acme-secret-token\"\nallow_ips = [\"203.0.113.0/24\"]",
        );
    let mut settings = postgate::config::Settings::from_toml(
        std::path::Path::new("test.toml"),
        &config,
        &move |name| (name == "TEST_DB_URL").then(|| url.clone()),
    )
    .expect("config");
    settings.spool.dir = dir.path().join("spool");
    settings.hooks = crate::helpers::settings_for(&dir.path().join("postgate.db")).hooks;
    let app = crate::support::spawn_with(dir, settings).await;
    let click = app.click("shoes", "aff1").await;
    let postback = |forwarded: &'static str, txn: &'static str| {
        app.client
            .get(format!("{}/postback", app.address))
            .header("X-Forwarded-For", forwarded)
            .query(&[
                ("token", ACME_TOKEN),
                ("click_id", click.as_str()),
                ("transaction_id", txn),
            ])
            .send()
    };

    // The allowed address forged on the left, the proxy's real view on the right.
    let resp = postback("203.0.113.7, 198.51.100.9", "T-1")
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let body: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(code(&body), "ip_not_allowed");

    let resp = postback("198.51.100.9, 203.0.113.7", "T-2")
        .await
        .expect("send");
    let status = resp.status();
    let body: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "accepted", "{body}");
}

/// Every connector and mapping file compiles at start-up, enabled or not: a broken file
/// stops the gateway with its name and line now, not on the day someone enables it.
#[tokio::test]
async fn a_broken_connector_file_stops_start_up_even_when_not_enabled() {
    let dir = tempfile::tempdir().expect("temp dir");
    let connectors = dir.path().join("connectors");
    std::fs::create_dir_all(&connectors).expect("dir");
    for name in ["shopify", "salesforce", "stripe"] {
        std::fs::copy(
            format!("connectors/{name}.toml"),
            connectors.join(format!("{name}.toml")),
        )
        .expect("copy");
    }
    let mut settings = crate::helpers::settings_for(&dir.path().join("postgate.db"));
    settings.hooks.connectors_dir = connectors.clone();
    let ok = postgate::startup::Application::build(&settings).await;
    assert!(ok.is_ok(), "the enabled connectors alone start");
    drop(ok);

    std::fs::write(
        connectors.join("unused.toml"),
        "[body]\nformat = \"json\"\n[[auth]]\ntype = \"hmac\"\n",
    )
    .expect("write");
    let Err(e) = postgate::startup::Application::build(&settings).await else {
        panic!("a broken connector file must stop start-up");
    };
    let message = e.to_string();
    assert!(message.contains("unused.toml:"), "{message}");
}

#[tokio::test]
async fn a_connection_that_never_finishes_its_headers_is_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().expect("dir");
    let mut settings = crate::helpers::settings_for(&dir.path().join("postgate.db"));
    let limit = std::time::Duration::from_secs(2);
    settings.server.header_timeout = limit;
    let app = crate::support::spawn_with(dir, settings).await;
    let addr = app.address.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n")
        .await
        .expect("partial head");
    // The server gives up on the headers (`server.header_timeout_secs`) and closes the
    // connection; before, it held it open for as long as the client liked.
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(limit * 15, stream.read_to_end(&mut rest)).await;
    assert!(
        matches!(closed, Ok(Ok(_))),
        "still open after {:?}",
        limit * 15
    );
    // A complete request on a new connection is answered as before.
    assert_eq!(app.get("/healthz").await.status(), StatusCode::OK);
}
