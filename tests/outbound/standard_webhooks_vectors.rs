//! Signing checked against the Standard Webhooks reference test vectors
//! (tests/fixtures/standard_webhooks/test_vectors.json, shared with the inbound connector tests).

use postgate::outbound::{SigningKeys, WebhookSecret, verify};
use serde_json::Value;

fn vectors() -> Value {
    let raw = include_str!("../fixtures/standard_webhooks/test_vectors.json");
    serde_json::from_str(raw).expect("fixture is JSON")
}

fn vector<'a>(all: &'a Value, id: &str) -> &'a Value {
    all["vectors"]
        .as_array()
        .and_then(|v| v.iter().find(|x| x["id"] == id))
        .unwrap_or_else(|| panic!("vector {id} missing"))
}

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v[k].as_str().unwrap_or_else(|| panic!("{k} missing"))
}

#[test]
fn signing_reproduces_the_reference_signature_header_exactly() {
    let all = vectors();
    let v = vector(&all, "sign-function");
    let keys = SigningKeys::parse([s(v, "secret")]).expect("test value");
    let ts = v["timestamp"].as_i64().expect("test value");
    let h = keys.sign(s(v, "msg_id"), ts, s(v, "payload").as_bytes());
    assert_eq!(h.signature, s(v, "expected_signature_header"));
    assert_eq!(h.id, v["headers"]["webhook-id"]);
    assert_eq!(h.timestamp, v["headers"]["webhook-timestamp"]);
}

#[test]
fn the_reference_signature_verifies_and_a_near_miss_does_not() {
    let all = vectors();
    let good = vector(&all, "sign-function");
    let bad = vector(&all, "invalid-signature-near-miss");
    let secret = WebhookSecret::parse(s(good, "secret")).expect("test value");
    let ts = good["timestamp"].as_i64().expect("test value");
    let body = s(good, "payload").as_bytes();
    assert!(verify(
        &secret,
        s(good, "msg_id"),
        ts,
        body,
        s(good, "expected_signature_header")
    ));
    assert!(!verify(
        &secret,
        s(bad, "msg_id"),
        ts,
        body,
        s(bad, "webhook-signature")
    ));
}

#[test]
fn a_multi_signature_header_is_accepted_when_any_entry_matches() {
    let all = vectors();
    let good = vector(&all, "sign-function");
    let multi = vector(&all, "multi-signature-list");
    let valid = s(good, "expected_signature_header");
    let header = s(multi, "webhook-signature").replace("<valid v1 signature>", valid);
    let secret = WebhookSecret::parse(s(good, "secret")).expect("test value");
    let ts = good["timestamp"].as_i64().expect("test value");
    assert!(verify(
        &secret,
        s(good, "msg_id"),
        ts,
        s(good, "payload").as_bytes(),
        &header
    ));
    let without_valid = s(multi, "webhook-signature").replace(" <valid v1 signature>", "");
    assert!(!verify(
        &secret,
        s(good, "msg_id"),
        ts,
        s(good, "payload").as_bytes(),
        &without_valid
    ));
}

#[test]
fn garbage_signatures_are_rejected() {
    let all = vectors();
    let good = vector(&all, "sign-function");
    let garbage = vector(&all, "garbage-signatures");
    let secret = WebhookSecret::parse(s(good, "secret")).expect("test value");
    let ts = good["timestamp"].as_i64().expect("test value");
    for g in garbage["webhook-signature-values"]
        .as_array()
        .expect("test value")
    {
        let g = g.as_str().expect("test value");
        assert!(
            !verify(
                &secret,
                s(good, "msg_id"),
                ts,
                s(good, "payload").as_bytes(),
                g
            ),
            "{g}"
        );
    }
}

#[test]
fn unpadded_secrets_with_or_without_prefix_parse() {
    let all = vectors();
    let v = vector(&all, "secret-padding");
    for secret in v["secrets_that_must_work_unpadded"]
        .as_array()
        .expect("test value")
    {
        let secret = secret.as_str().expect("test value");
        assert!(WebhookSecret::parse(secret).is_ok(), "{secret}");
        assert!(
            WebhookSecret::parse(&format!("whsec_{secret}")).is_ok(),
            "whsec_{secret}"
        );
    }
}

#[test]
fn the_fixture_copy_is_byte_exact() {
    let shared = std::path::Path::new("/work/shared/fixtures/standard_webhooks/test_vectors.json");
    // Only checkable where the shared tree exists (not in a moved copy of the crate).
    if let Ok(original) = std::fs::read(shared) {
        assert_eq!(
            original,
            include_bytes!("../fixtures/standard_webhooks/test_vectors.json")
        );
    }
}
