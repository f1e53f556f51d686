//! The same sale reported 20 times at once, half as S2S postbacks and half as signed Shopify
//! `orders/paid` webhooks: one conversion per sale, every copy a receipt naming it.
//!
//! Both channels collide by design: the Shopify mapping takes `transaction_id` from the order
//! id (`$.id`) and the click ID from the `click_id` note attribute; the click ID names the
//! offer, so both produce the same `offer:transaction` key (and the same click-and-goal key).
//! Shopify copies come in pairs with the same `X-Shopify-Webhook-Id` (Shopify's own retry,
//! deduplicated by event id); the other pairs differ (a second delivery of the same order).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use base64::Engine as _;
use futures_util::StreamExt;
use hmac::{Hmac, KeyInit, Mac};
use reqwest::StatusCode;
use serde_json::Value;

use crate::{
    ACME_TOKEN, Gateway, SHOPIFY_SECRET, admin_get, assert_ledger, balances, clicks, client, pass,
    size,
};

const COPIES: usize = 20;
/// Requests in flight: a few sales' 20 copies at once, so copies meet in the same batch.
const CONCURRENCY: usize = 64;
/// The fixture order's total (shop money): the postback reports the same amount.
const ORDER_TOTAL: &str = "404.95";
const ORDER_TOTAL_MINOR: i64 = 40_495;
const FIXTURE_ORDER_ID: &str = "820982911946154508";

/// Sale `j`'s order id: 18 digits, above 2^53 like real Shopify ids.
fn order_id(j: usize) -> String {
    format!("9{j:017}")
}

/// The derived Shopify order (note attribute `click_id`) made into sale `j`.
fn shopify_order(fixture: &str, j: usize, click: &str) -> Vec<u8> {
    fixture
        .replace(FIXTURE_ORDER_ID, &order_id(j))
        .replace("pgc_note_7Hq2ZkP4", click)
        .replace(
            "2021-12-31T19:00:00-05:00",
            &chrono::Utc::now().to_rfc3339(),
        )
        .into_bytes()
}

/// What one copy got back: status, the conversion it names, and the first reason code.
type Receipt = (String, String, String);

async fn send_postback(client: &reqwest::Client, base: &str, j: usize, click: &str) -> Receipt {
    let resp = client
        .get(format!("{base}/postback"))
        .query(&[
            ("token", ACME_TOKEN),
            ("click_id", click),
            ("payout", ORDER_TOTAL),
            ("transaction_id", &order_id(j)),
        ])
        .send()
        .await
        .expect("postback");
    assert_eq!(resp.status(), StatusCode::OK, "postback {j}");
    let body: Value = resp.json().await.expect("receipt");
    receipt(&body, j)
}

async fn send_shopify(
    client: &reqwest::Client,
    base: &str,
    webhook_id: String,
    body: Vec<u8>,
    j: usize,
) -> Receipt {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SHOPIFY_SECRET.as_bytes()).expect("key");
    mac.update(&body);
    let signature = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    let resp = client
        .post(format!("{base}/hooks/shopify"))
        .header("content-type", "application/json")
        .header("X-Shopify-Topic", "orders/paid")
        .header("X-Shopify-Webhook-Id", webhook_id)
        .header("X-Shopify-Hmac-Sha256", signature)
        .header("X-Shopify-Shop-Domain", "snowdevil.myshopify.com")
        .body(body)
        .send()
        .await
        .expect("webhook");
    assert_eq!(resp.status(), StatusCode::OK, "webhook {j}");
    let body: Value = resp.json().await.expect("JSON");
    let events = body["events"].as_array().expect("events");
    assert_eq!(events.len(), 1, "one event per order: {body}");
    receipt(&events[0], j)
}

fn receipt(body: &Value, j: usize) -> Receipt {
    let status = body["status"].as_str().unwrap_or_default().to_owned();
    assert!(
        status == "accepted" || status == "duplicate",
        "sale {j}: neither accepted nor duplicate: {body}"
    );
    let id = body["conversion_id"]
        .as_str()
        .unwrap_or_else(|| panic!("sale {j}: no conversion_id in {body}"))
        .to_owned();
    let code = body["reasons"][0]["code"]
        .as_str()
        .unwrap_or("-")
        .to_owned();
    (status, id, code)
}

pub async fn run(dir: &Path, database_url: &str) {
    let n = size(200, 1_000);
    let started = Instant::now();
    let gateway = Gateway::start(dir, database_url, "", "", &[]);
    let client = client();
    let base = gateway.base.clone();
    let clicks = Arc::new(clicks(&client, &base, n).await);
    let fixture = Arc::new(
        std::fs::read_to_string(
            "tests/fixtures/derived/shopify_orders_paid.note_attribute_click_id.json",
        )
        .expect("fixture"),
    );
    assert!(fixture.contains(FIXTURE_ORDER_ID) && fixture.contains("pgc_note_7Hq2ZkP4"));

    // Sale-major order: the 20 copies of a sale are in flight together.
    let receipts: Vec<(usize, bool, Receipt)> =
        futures_util::stream::iter((0..n).flat_map(|j| (0..COPIES).map(move |c| (j, c))))
            .map(|(j, c)| {
                let (client, base, clicks, fixture) = (
                    client.clone(),
                    base.clone(),
                    clicks.clone(),
                    fixture.clone(),
                );
                async move {
                    let click = &clicks[j];
                    let webhook = c % 2 == 1;
                    let receipt = if webhook {
                        // Copies 1..19 odd: webhook ids repeat in pairs (c % 5 over odd c).
                        let body = shopify_order(&fixture, j, click);
                        send_shopify(&client, &base, format!("wh-{j}-{}", c % 5), body, j).await
                    } else {
                        send_postback(&client, &base, j, click).await
                    };
                    (j, webhook, receipt)
                }
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;

    // Per sale: exactly one accepted copy, and every copy names the same conversion.
    let mut per_sale: BTreeMap<usize, Vec<(bool, Receipt)>> = BTreeMap::new();
    let mut reasons = BTreeMap::<String, usize>::new();
    for (j, webhook, r) in &receipts {
        per_sale.entry(*j).or_default().push((*webhook, r.clone()));
        *reasons.entry(format!("{}/{}", r.0, r.2)).or_default() += 1;
    }
    assert_eq!(per_sale.len(), n);
    let mut ids = Vec::with_capacity(n);
    let mut won_by_webhook = 0;
    for (j, copies) in &per_sale {
        assert_eq!(copies.len(), COPIES);
        let accepted: Vec<&(bool, Receipt)> =
            copies.iter().filter(|(_, r)| r.0 == "accepted").collect();
        assert_eq!(
            accepted.len(),
            1,
            "sale {j}: {} copies accepted: {copies:?}",
            accepted.len()
        );
        let (webhook, (_, id, _)) = accepted[0];
        won_by_webhook += usize::from(*webhook);
        assert!(
            copies.iter().all(|(_, r)| &r.1 == id),
            "sale {j}: copies name different conversions: {copies:?}"
        );
        ids.push((*j, id.clone()));
    }

    // The read API agrees: the conversion is the sale's, and its click's only one.
    futures_util::stream::iter(ids)
        .map(|(j, id)| {
            let (client, base, clicks) = (client.clone(), base.clone(), clicks.clone());
            async move {
                let (status, conv) =
                    admin_get(&client, &base, &format!("/api/v1/conversions/{id}")).await;
                assert_eq!(status, StatusCode::OK, "{id}: {conv}");
                assert_eq!(conv["transaction_id"], order_id(j).as_str(), "{conv}");
                assert_eq!(conv["revenue"], ORDER_TOTAL, "{conv}");
                let (_, list) = admin_get(
                    &client,
                    &base,
                    &format!("/api/v1/conversions?click_id={}", clicks[j]),
                )
                .await;
                let listed: Vec<&str> = list["conversions"]
                    .as_array()
                    .expect("conversions")
                    .iter()
                    .filter_map(|c| c["id"].as_str())
                    .collect();
                assert_eq!(listed, [id.as_str()], "sale {j} stored more than once");
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<()>>()
        .await;

    assert_ledger(
        &balances(&client, &base).await,
        n as i64 * ORDER_TOTAL_MINOR,
        n as i64 * 1_500,
    );
    let duplicates: usize = reasons
        .iter()
        .filter(|(k, _)| k.starts_with("duplicate/"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(duplicates, n * (COPIES - 1));
    let codes: Vec<String> = reasons.iter().map(|(k, v)| format!("{k}={v}")).collect();
    pass(
        "concurrent_duplicates_across_channels",
        &format!(
            "sales={n} copies={} conversions={n} duplicates={duplicates} ({}) \
             won_by_webhook={won_by_webhook} won_by_postback={} seconds={:.1}",
            n * COPIES,
            codes.join(" "),
            n - won_by_webhook,
            started.elapsed().as_secs_f64()
        ),
    );
}
