//! Mapping cost: `cargo bench --bench mapping`.
//!
//! The yardstick: mapping a Shopify order must cost at most twice parsing its JSON.
//! Mappings are compiled once at start-up and evaluated on the already-parsed value, so the
//! per-request cost is JSONPath evaluation and a few transforms, never a second parse.
//! `parse_decode_map_pruned` is the gateway's path: only the members some path can reach
//! are built (`connector::prune`).
//!
//! The rest of a webhook's per-request CPU, for the write-up in docs/PERFORMANCE.md:
//! `verify_parse_pruned` checks the HMAC over the body and parses it, and `store_body_lz4`
//! is the compression of the body before it is stored.

use std::hint::black_box;
use std::path::Path;

use criterion::{Criterion, criterion_group, criterion_main};
use postgate::connector::{Connector, Env, LoadOptions, RawRequest};
use postgate::mapping::MappingSet;

fn shopify(c: &mut Criterion) {
    let body =
        std::fs::read("tests/fixtures/derived/shopify_orders_paid.note_attribute_click_id.json")
            .expect("fixture");
    let options = LoadOptions {
        env: Env::Fixed(
            [(
                "SHOPIFY_WEBHOOK_SECRET".to_owned(),
                "bench-secret-0123456789".to_owned(),
            )]
            .into(),
        ),
        ..LoadOptions::default()
    };
    let connector =
        Connector::load(Path::new("connectors/shopify.toml"), &options).expect("connector");
    let mappings = MappingSet::load_dir(Path::new("mappings")).expect("mappings");
    // As the gateway runs it: bodies built only where the connector's paths reach.
    let mut pruned =
        Connector::load(Path::new("connectors/shopify.toml"), &options).expect("connector");
    pruned.prune_to(mappings.json_paths("shopify"));
    assert!(pruned.is_pruned());
    let raw = RawRequest {
        method: "POST".into(),
        path_and_query: "/hooks/shopify".into(),
        headers: vec![
            ("X-Shopify-Topic".into(), "orders/paid".into()),
            ("X-Shopify-Webhook-Id".into(), "wh-1".into()),
        ],
        body: body.clone().into(),
        peer_ip: None,
        received_at: chrono::Utc::now(),
    };
    let signed = {
        use base64::Engine as _;
        use hmac::{KeyInit, Mac};
        let mut mac =
            hmac::Hmac::<sha2::Sha256>::new_from_slice(b"bench-secret-0123456789").expect("key");
        mac.update(&body);
        let signature =
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        let mut signed = raw.clone();
        signed
            .headers
            .push(("X-Shopify-Hmac-Sha256".into(), signature));
        signed
    };
    pruned.verify(&signed).expect("signed request verifies");
    let verified = connector.parse_unverified(&raw).expect("parse");
    let events = connector.decode(verified).expect("decode");
    assert_eq!(mappings.map(&events[0]).expect("maps").len(), 1);

    let mut group = c.benchmark_group("shopify_orders_paid");
    group.bench_function("parse_json", |b| {
        b.iter(|| serde_json::from_slice::<serde_json::Value>(black_box(&body)).expect("json"))
    });
    group.bench_function("map_event", |b| {
        b.iter(|| mappings.map(black_box(&events[0])).expect("maps"))
    });
    group.bench_function("parse_decode_map", |b| {
        b.iter(|| {
            let verified = connector.parse_unverified(black_box(&raw)).expect("parse");
            let events = connector.decode(verified).expect("decode");
            mappings.map(&events[0]).expect("maps")
        })
    });
    group.bench_function("parse_decode_map_pruned", |b| {
        b.iter(|| {
            let verified = pruned.parse_unverified(black_box(&raw)).expect("parse");
            let events = pruned.decode(verified).expect("decode");
            mappings.map(&events[0]).expect("maps")
        })
    });
    group.bench_function("verify_parse_pruned", |b| {
        b.iter(|| pruned.verify(black_box(&signed)).expect("verify"))
    });
    group.bench_function("store_body_lz4", |b| {
        b.iter(|| lz4_flex::compress_prepend_size(black_box(&body)))
    });
    group.finish();
}

criterion_group!(benches, shopify);
criterion_main!(benches);
