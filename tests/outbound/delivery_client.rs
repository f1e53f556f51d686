//! The delivery client against a real local receiver (axum on 127.0.0.1, port 0).
//!
//! The receiver records every request it gets, so tests can assert what was (not) fetched.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use postgate::delivery::{AllowList, AttemptRecord, ClientConfig, DeliveryClient};
use postgate::outbound::{
    AttemptOutcome, Endpoint, HttpMethod, OutboundRequest, PostbackValues, RetryReason,
    SigningKeys, Verdict, WebhookSecret, classify, verify,
};

#[derive(Debug, Clone)]
struct Received {
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<Received>>>);

impl Recorder {
    fn paths(&self) -> Vec<String> {
        self.0
            .lock()
            .map(|v| v.iter().map(|r| r.path.clone()).collect())
            .unwrap_or_default()
    }
    fn last(&self) -> Option<Received> {
        self.0.lock().ok().and_then(|v| v.last().cloned())
    }
}

async fn record(
    State(rec): State<Recorder>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    if let Ok(mut v) = rec.0.lock() {
        v.push(Received {
            path: path.clone(),
            headers,
            body,
        });
    }
    let p = uri.path();
    match p {
        "/ok" => (StatusCode::OK, "thanks").into_response(),
        "/gone" => StatusCode::GONE.into_response(),
        "/busy" => (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, "120")],
            "slow down",
        )
            .into_response(),
        "/redirect-blocked" => (
            StatusCode::FOUND,
            [(header::LOCATION, "http://169.254.169.254/latest/meta-data/")],
        )
            .into_response(),
        "/redirect-local" => (StatusCode::FOUND, [(header::LOCATION, "/ok")]).into_response(),
        // Takes the request and never answers.
        "/hang" => std::future::pending().await,
        "/big" => {
            // 8 MiB streamed in 64 KiB chunks; the client must stop after 2 KiB.
            let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
            let stream = futures_util::stream::iter(
                (0..128).map(move |_| Ok::<_, std::io::Error>(chunk.clone())),
            );
            Response::new(Body::from_stream(stream))
        }
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn slow() -> &'static str {
    tokio::time::sleep(Duration::from_secs(3)).await;
    "late"
}

async fn spawn_receiver() -> (SocketAddr, Recorder) {
    let rec = Recorder::default();
    let app = Router::new()
        .route("/slow", get(slow))
        .fallback(any(record))
        .with_state(rec.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr, rec)
}

fn client(allow: &[&str]) -> DeliveryClient {
    let cfg = ClientConfig {
        allow: AllowList::parse(allow.iter().copied()).expect("allow-list"),
        total_timeout: Duration::from_millis(800),
        ..ClientConfig::default()
    };
    DeliveryClient::new(cfg).expect("client")
}

fn get_req(url: &str) -> OutboundRequest {
    OutboundRequest {
        endpoint_id: "e1".into(),
        method: HttpMethod::Get,
        url: url.parse().expect("url"),
        headers: vec![],
        body: None,
        allow_insecure_http: true,
    }
}

async fn send(c: &DeliveryClient, url: &str) -> AttemptRecord {
    c.send(&get_req(url)).await
}

#[tokio::test]
async fn a_loopback_receiver_is_refused_without_the_allow_list_and_nothing_is_fetched() {
    let (addr, rec) = spawn_receiver().await;
    let r = send(&client(&[]), &format!("http://{addr}/ok")).await;
    assert_eq!(r.outcome, AttemptOutcome::Refused);
    assert_eq!(classify(r.outcome), Verdict::GiveUp);
    assert!(
        r.error.as_deref().unwrap_or_default().contains("Loopback"),
        "{r:?}"
    );
    assert!(rec.paths().is_empty());
}

#[tokio::test]
async fn a_host_name_resolving_to_loopback_is_refused_at_dns_time() {
    let (addr, rec) = spawn_receiver().await;
    let r = send(
        &client(&[]),
        &format!("http://localhost:{}/ok", addr.port()),
    )
    .await;
    assert_eq!(r.outcome, AttemptOutcome::Refused, "{r:?}");
    assert!(rec.paths().is_empty());
}

#[tokio::test]
async fn the_allow_list_lets_the_loopback_receiver_through_by_ip_and_by_name() {
    let (addr, rec) = spawn_receiver().await;
    let c = client(&["127.0.0.1/32"]);
    let r = send(&c, &format!("http://{addr}/ok?token=s3cr3t&click=1")).await;
    assert_eq!(r.status, Some(200));
    assert_eq!(classify(r.outcome), Verdict::Delivered);
    assert_eq!(r.body_prefix, b"thanks");
    assert!(!r.body_truncated);
    assert_eq!(r.url, format!("http://{addr}/ok?token=REDACTED&click=1"));
    // localhost may also resolve to ::1, which is not allowed: the resolver drops it and
    // the client connects to 127.0.0.1.
    let r = send(&c, &format!("http://localhost:{}/ok", addr.port())).await;
    assert_eq!(r.status, Some(200), "{r:?}");
    assert_eq!(
        rec.paths(),
        vec!["/ok?token=s3cr3t&click=1".to_owned(), "/ok".to_owned()]
    );
}

#[tokio::test]
async fn a_redirect_to_a_blocked_address_is_a_failure_and_is_not_followed() {
    let (addr, rec) = spawn_receiver().await;
    let c = client(&["127.0.0.1/32"]);
    let r = send(&c, &format!("http://{addr}/redirect-blocked")).await;
    assert_eq!(r.status, Some(302));
    assert!(matches!(classify(r.outcome), Verdict::Retry { .. }));
    let r = send(&c, &format!("http://{addr}/redirect-local")).await;
    assert_eq!(r.status, Some(302));
    // Only the redirecting URLs were fetched, never their targets.
    assert_eq!(
        rec.paths(),
        vec!["/redirect-blocked".to_owned(), "/redirect-local".to_owned()]
    );
}

#[tokio::test]
async fn http_is_refused_unless_the_endpoint_is_marked_insecure() {
    let (addr, rec) = spawn_receiver().await;
    let mut req = get_req(&format!("http://{addr}/ok"));
    req.allow_insecure_http = false;
    let r = client(&["127.0.0.1/32"]).send(&req).await;
    assert_eq!(r.outcome, AttemptOutcome::Refused);
    assert!(rec.paths().is_empty());
}

#[tokio::test]
async fn only_the_first_2_kib_of_a_huge_body_is_read() {
    let (addr, _rec) = spawn_receiver().await;
    let r = send(&client(&["127.0.0.1/32"]), &format!("http://{addr}/big")).await;
    assert_eq!(r.status, Some(200));
    assert_eq!(r.body_prefix.len(), 2048);
    assert!(r.body_truncated);
    assert!(r.error.is_none(), "{r:?}");
}

#[tokio::test]
async fn status_codes_map_to_verdicts_and_retry_after_is_recorded() {
    let (addr, _rec) = spawn_receiver().await;
    let c = client(&["127.0.0.1/32"]);
    let gone = send(&c, &format!("http://{addr}/gone")).await;
    assert_eq!(classify(gone.outcome), Verdict::PauseEndpoint);
    let busy = send(&c, &format!("http://{addr}/busy")).await;
    assert_eq!(busy.status, Some(429));
    assert_eq!(busy.retry_after.as_deref(), Some("120"));
    assert_eq!(
        busy.retry_after_delay(chrono::Utc::now()),
        Some(Duration::from_secs(120))
    );
    assert_eq!(busy.body_prefix, b"slow down");
    let missing = send(&c, &format!("http://{addr}/nope")).await;
    assert_eq!(missing.status, Some(404));
    assert!(matches!(classify(missing.outcome), Verdict::Retry { .. }));
}

/// The production client (15 s total timeout) under `tokio::time::pause()`: whenever every
/// task waits, the runtime moves its clock to the next timer, so the timeout fires without
/// anyone waiting for it.
fn production_client() -> DeliveryClient {
    DeliveryClient::new(ClientConfig {
        allow: AllowList::parse(["127.0.0.1/32"]).expect("allow-list"),
        ..ClientConfig::default()
    })
    .expect("client")
}

#[tokio::test(start_paused = true)]
async fn a_receiver_that_never_answers_times_out_after_exactly_the_total_timeout() {
    let (addr, rec) = spawn_receiver().await;
    let r = send(&production_client(), &format!("http://{addr}/hang")).await;
    assert_eq!(r.outcome, AttemptOutcome::Timeout, "{r:?}");
    // The request got through (this is not a connect timeout) and then waited 15 s.
    assert_eq!(rec.paths(), ["/hang"]);
    let late = r.latency.saturating_sub(Duration::from_secs(15));
    assert!(
        r.latency >= Duration::from_secs(15) && late <= Duration::from_millis(1),
        "{:?}",
        r.latency
    );
    assert_eq!(
        classify(r.outcome),
        Verdict::Retry {
            min_delay: Duration::from_secs(60),
            reason: RetryReason::Timeout
        }
    );
}

#[tokio::test(start_paused = true)]
async fn a_slow_answer_within_the_total_timeout_is_kept() {
    let (addr, _rec) = spawn_receiver().await;
    let r = send(&production_client(), &format!("http://{addr}/slow")).await;
    assert_eq!(r.outcome, AttemptOutcome::Response { status: 200 }, "{r:?}");
    assert_eq!(r.body_prefix, b"late");
    let late = r.latency.saturating_sub(Duration::from_secs(3));
    assert!(
        r.latency >= Duration::from_secs(3) && late <= Duration::from_millis(1),
        "{:?}",
        r.latency
    );
}

/// A loopback port nobody listens on: bound, then dropped.
async fn closed_port() -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    l.local_addr().expect("addr").port()
}

#[tokio::test]
async fn a_closed_port_is_a_connect_error() {
    let port = closed_port().await;
    let r = send(
        &client(&["127.0.0.1/32"]),
        &format!("http://127.0.0.1:{port}/ok"),
    )
    .await;
    assert_eq!(r.outcome, AttemptOutcome::Connect, "{r:?}");
}

#[tokio::test]
async fn a_failed_attempt_logs_neither_the_url_nor_its_secret_in_the_error() {
    let port = closed_port().await;
    // reqwest's errors end in "for url (…)": the full URL, token included.
    let r = send(
        &client(&["127.0.0.1/32"]),
        &format!("http://127.0.0.1:{port}/pb?api_token=s3cr3t-value&c=1"),
    )
    .await;
    assert_eq!(r.outcome, AttemptOutcome::Connect, "{r:?}");
    let error = r.error.as_deref().expect("an error is recorded");
    assert!(!error.is_empty());
    assert!(!error.contains("s3cr3t"), "secret in the error: {error}");
    assert!(!error.contains("/pb"), "URL in the error: {error}");
    assert!(!r.url.contains("s3cr3t"), "{}", r.url);
}

#[tokio::test]
async fn a_signed_post_arrives_with_headers_the_receiver_can_verify() {
    let (addr, rec) = spawn_receiver().await;
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let endpoint = Endpoint::post(
        "p1",
        &format!("http://{addr}/ok"),
        Some(r#"{"event":"{event}","payout":"{payout}"}"#),
        Some(SigningKeys::parse([secret]).expect("keys")),
        true,
    )
    .expect("endpoint");
    let values = PostbackValues {
        event: "purchase".into(),
        payout: "12.50".into(),
        ..Default::default()
    };
    let req = endpoint
        .build_request("d-9", &values, chrono::Utc::now().timestamp())
        .expect("render");
    let r = client(&["127.0.0.1/32"]).send(&req).await;
    assert_eq!(r.status, Some(200));
    let got = rec.last().expect("received");
    let h = |k: &str| {
        got.headers
            .get(k)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(h("content-type"), "application/json");
    assert_eq!(h("webhook-id"), "msg_d-9");
    let ts: i64 = h("webhook-timestamp").parse().expect("timestamp");
    let key = WebhookSecret::parse(secret).expect("secret");
    assert!(verify(
        &key,
        &h("webhook-id"),
        ts,
        &got.body,
        &h("webhook-signature")
    ));
    assert_eq!(&got.body[..], br#"{"event":"purchase","payout":"12.50"}"#);
}

#[tokio::test]
async fn ip_literals_in_any_spelling_are_checked_before_sending() {
    let (addr, rec) = spawn_receiver().await;
    let c = client(&[]);
    let port = addr.port();
    // 0.0.0.0 reaches localhost on Linux; the mapped and NAT64 forms embed 127.0.0.1.
    for url in [
        format!("http://0.0.0.0:{port}/ok"),
        format!("http://[::1]:{port}/ok"),
        format!("http://[::ffff:127.0.0.1]:{port}/ok"),
        format!("http://[64:ff9b::7f00:1]:{port}/ok"),
        format!("http://2130706433:{port}/ok"), // decimal 127.0.0.1, normalised by the URL parser
    ] {
        let r = send(&c, &url).await;
        assert_eq!(r.outcome, AttemptOutcome::Refused, "{url}: {r:?}");
    }
    assert!(rec.paths().is_empty());
}

#[tokio::test]
async fn https_to_a_plain_http_server_fails_the_tls_handshake() {
    let (addr, _rec) = spawn_receiver().await;
    let mut req = get_req(&format!("https://{addr}/ok"));
    req.allow_insecure_http = false;
    let r = client(&["127.0.0.1/32"]).send(&req).await;
    assert!(
        matches!(
            r.outcome,
            AttemptOutcome::Connect | AttemptOutcome::Transport
        ),
        "{r:?}"
    );
    assert_eq!(r.status, None);
}
