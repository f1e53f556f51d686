//! Signature schemes proven on the platforms' published test vectors (tests/fixtures/*),
//! using the shipped connector files.

use crate::common::*;
use base64::Engine as _;
use chrono::Utc;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::Value;

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v[k].as_str().unwrap_or_else(|| panic!("missing {k}"))
}

#[test]
fn shopify_js_vector_verifies_and_fake_hmac_is_a_bad_signature() {
    let v = json_fixture("shopify/hmac_test_vectors.json");
    let good = &v["vectors"][0];
    // The published secret `test_secret_key` is 15 bytes, below the production minimum.
    let c = shipped(
        "shopify",
        &[("SHOPIFY_WEBHOOK_SECRET", s(good, "secret"))],
        8,
    );
    let body = s(good, "body").as_bytes().to_vec();
    let hdr = s(good, "expected_header");
    assert_eq!(
        code(c.verify(&req(
            "POST",
            "/hooks/shopify",
            &[("X-Shopify-Hmac-Sha256", hdr)],
            body.clone(),
            Utc::now()
        ))),
        "ok"
    );
    // Newer deliveries use lowercase header names; lookup is case-insensitive.
    assert_eq!(
        code(c.verify(&req(
            "POST",
            "/",
            &[("shopify-hmac-sha256", hdr), ("x-shopify-hmac-sha256", hdr)],
            body.clone(),
            Utc::now()
        ))),
        "ok"
    );
    let fake = &v["vectors"][1];
    assert_eq!(
        code(c.verify(&req(
            "POST",
            "/",
            &[("X-Shopify-Hmac-Sha256", s(fake, "header_value"))],
            body,
            Utc::now()
        ))),
        "bad_signature"
    );
}

#[test]
fn shopify_ruby_vector_verifies_even_with_a_trailing_newline() {
    let v = json_fixture("shopify/hmac_test_vectors.json");
    let r = &v["vectors"][2];
    let c = shipped("shopify", &[("SHOPIFY_WEBHOOK_SECRET", s(r, "secret"))], 8);
    let sig = s(r, "expected_header_computed");
    let with_nl = format!("{sig}\n");
    for h in [sig, with_nl.as_str()] {
        assert_eq!(
            code(c.verify(&req(
                "POST",
                "/",
                &[("X-Shopify-Hmac-Sha256", h)],
                "{}",
                Utc::now()
            ))),
            "ok"
        );
    }
}

#[test]
fn shopify_missing_empty_and_truncated_signatures_fail() {
    let c = shipped(
        "shopify",
        &[("SHOPIFY_WEBHOOK_SECRET", "test_secret_key")],
        8,
    );
    let body = "{\"foo\": \"bar\"}";
    let good = "B23tXN681gZ0qIWNRrgtzBE9XSDo5yaUu6wfmhu3a7g=";
    assert_eq!(
        code(c.verify(&req("POST", "/", &[], body, Utc::now()))),
        "missing_signature"
    );
    assert_eq!(
        code(c.verify(&req(
            "POST",
            "/",
            &[("X-Shopify-Hmac-Sha256", "")],
            body,
            Utc::now()
        ))),
        "missing_signature"
    );
    let truncated = base64::engine::general_purpose::STANDARD.encode(
        &base64::engine::general_purpose::STANDARD
            .decode(good)
            .unwrap_or_default()[..16],
    );
    assert_eq!(
        code(c.verify(&req(
            "POST",
            "/",
            &[("X-Shopify-Hmac-Sha256", truncated.as_str())],
            body,
            Utc::now()
        ))),
        "bad_signature"
    );
    // One changed body byte.
    assert_eq!(
        code(c.verify(&req(
            "POST",
            "/",
            &[("X-Shopify-Hmac-Sha256", good)],
            "{\"foo\": \"baz\"}",
            Utc::now()
        ))),
        "bad_signature"
    );
}

#[test]
fn short_and_empty_secrets_are_rejected_at_load_with_the_line() {
    let p = root().join("connectors/shopify.toml");
    // Sixteen spaces are long enough but no secret (a variable set from an empty template).
    for secret in ["test_secret_key", "", "                "] {
        let err = postgate::connector::Connector::load(
            &p,
            &opts(&[("SHOPIFY_WEBHOOK_SECRET", secret)], 16),
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(err.contains("shopify.toml:13:"), "{err}");
        assert!(err.contains("bytes") || err.contains("empty"), "{err}");
    }
}

/// The published Standard Webhooks vectors, the shipped connector with their secret, and a
/// builder of the signed vector request with a given `webhook-signature`, received at `now`.
struct StandardWebhooks {
    vectors: Value,
    connector: postgate::connector::Connector,
    ts: i64,
}

impl StandardWebhooks {
    fn new() -> Self {
        let vectors = json_fixture("standard_webhooks/test_vectors.json");
        let g = &vectors["vectors"][0];
        let connector = shipped(
            "standard-webhooks",
            &[("STANDARD_WEBHOOKS_SECRET", s(g, "secret"))],
            16,
        );
        let ts = g["timestamp"].as_i64().unwrap_or_default();
        StandardWebhooks {
            vectors,
            connector,
            ts,
        }
    }

    fn good(&self) -> &Value {
        &self.vectors["vectors"][0]
    }

    fn request(&self, sig: &str, now: chrono::DateTime<Utc>) -> postgate::connector::RawRequest {
        let g = self.good();
        let mut r = req("POST", "/", &[], s(g, "payload").to_string(), now);
        r.headers = vec![
            ("webhook-id".to_string(), s(g, "msg_id").to_string()),
            ("webhook-timestamp".to_string(), self.ts.to_string()),
            ("webhook-signature".to_string(), sig.to_string()),
        ];
        r
    }
}

#[test]
fn standard_webhooks_vector_verifies_at_its_own_time_and_is_stale_now() {
    let sw = StandardWebhooks::new();
    let (v, g, c, ts) = (&sw.vectors, sw.good(), &sw.connector, sw.ts);
    let mk = |sig: &str, now| sw.request(sig, now);
    let sig = s(g, "expected_signature_header");
    assert_eq!(code(c.verify(&mk(sig, at(ts)))), "ok");
    assert_eq!(code(c.verify(&mk(sig, at(ts + 299)))), "ok");
    assert_eq!(code(c.verify(&mk(sig, at(ts + 301)))), "stale_timestamp");
    assert_eq!(code(c.verify(&mk(sig, Utc::now()))), "stale_timestamp");
    let near_miss = s(&v["vectors"][1], "webhook-signature");
    assert_eq!(code(c.verify(&mk(near_miss, at(ts)))), "bad_signature");
    let multi = s(&v["vectors"][2], "webhook-signature").replace("<valid v1 signature>", sig);
    assert_eq!(code(c.verify(&mk(&multi, at(ts)))), "ok");
    for garbage in v["vectors"][3]["webhook-signature-values"]
        .as_array()
        .into_iter()
        .flatten()
    {
        assert_eq!(
            code(c.verify(&mk(garbage.as_str().unwrap_or_default(), at(ts)))),
            "bad_signature",
            "{garbage}"
        );
    }
    assert_eq!(
        code(c.verify(&mk("v1a,abc v2,xyz", at(ts)))),
        "missing_signature"
    );
}

/// Every signature a request carries used to cost a MAC over the whole body, so a header of
/// thousands of `v1,` entries was an unauthenticated CPU sink. Now the MAC is computed once per
/// secret and more than `MAX_SIGNATURES` candidates are refused before any.
#[test]
fn a_flood_of_signatures_is_refused_and_sixteen_are_still_checked() {
    let sw = StandardWebhooks::new();
    let (g, c) = (sw.good(), &sw.connector);
    let mk = |sig: String| sw.request(&sig, at(sw.ts));
    let good = s(g, "expected_signature_header");
    let decoys = |n: usize| vec!["v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="; n].join(" ");
    let max = postgate::connector::MAX_SIGNATURES;
    assert_eq!(
        code(c.verify(&mk(format!("{} {good}", decoys(max - 1))))),
        "ok"
    );
    let flood = c.verify(&mk(format!("{} {good}", decoys(max)))).err();
    assert_eq!(
        flood.as_ref().map(|e| e.code().as_str()),
        Some("bad_signature")
    );
    let message = flood.map(|e| e.to_string()).unwrap_or_default();
    assert!(
        message.contains(&format!("{} signatures", max + 1)),
        "{message}"
    );
    assert!(message.contains(&format!("at most {max}")), "{message}");
    assert_eq!(code(c.verify(&mk(decoys(5_000)))), "bad_signature");
}

fn sign_b64(key: &[u8], msg: &[u8]) -> String {
    let mut m = Hmac::<sha2::Sha256>::new_from_slice(key).unwrap_or_else(|_| panic!("key"));
    m.update(msg);
    base64::engine::general_purpose::STANDARD.encode(m.finalize().into_bytes())
}

#[test]
fn standard_webhooks_unpadded_secrets_and_rotation_work() {
    let v = json_fixture("standard_webhooks/test_vectors.json");
    let lenient = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent)
            .with_decode_allow_trailing_bits(true),
    );
    for secret in v["vectors"][4]["secrets_that_must_work_unpadded"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let secret = secret.as_str().unwrap_or_default();
        let key = lenient.decode(secret).unwrap_or_default();
        let other = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let text = std::fs::read_to_string(root().join("connectors/standard-webhooks.toml"))
            .unwrap_or_default()
            .replace(
                "[\"${STANDARD_WEBHOOKS_SECRET}\"]",
                &format!("[\"{other}\", \"{secret}\"]"),
            );
        let c = inline(&text, &[]).unwrap_or_else(|e| panic!("{e}"));
        let sig = format!("v1,{}", sign_b64(&key, b"msg_1.1700000000.{}"));
        let mut r = req("POST", "/", &[], "{}", at(1_700_000_000));
        r.headers = vec![
            ("webhook-id".into(), "msg_1".into()),
            ("webhook-timestamp".into(), "1700000000".into()),
            ("webhook-signature".into(), sig),
        ];
        assert_eq!(code(c.verify(&r)), "ok", "secret {secret}");
    }
}

#[test]
fn stripe_vectors_verify_with_pinned_clock_and_roll_secrets() {
    let v = json_fixture("stripe/signature_test_vectors.json");
    for vec in v["vectors"].as_array().into_iter().flatten() {
        let c = shipped("stripe", &[("STRIPE_WEBHOOK_SECRET", s(vec, "secret"))], 16);
        let ts = vec["timestamp"].as_i64().unwrap_or_default();
        let r = |now| {
            req(
                "POST",
                "/",
                &[("Stripe-Signature", s(vec, "stripe_signature_header"))],
                s(vec, "payload").to_string(),
                now,
            )
        };
        assert_eq!(code(c.verify(&r(at(ts)))), "ok");
        assert_eq!(code(c.verify(&r(Utc::now()))), "stale_timestamp");
    }
    let rolled = &v["rolled_secret_vector"];
    let ts = rolled["timestamp"].as_i64().unwrap_or_default();
    for secret in rolled["secrets"].as_array().into_iter().flatten() {
        let c = shipped(
            "stripe",
            &[("STRIPE_WEBHOOK_SECRET", secret.as_str().unwrap_or_default())],
            16,
        );
        let r = req(
            "POST",
            "/",
            &[("Stripe-Signature", s(rolled, "stripe_signature_header"))],
            s(rolled, "payload").to_string(),
            at(ts),
        );
        assert_eq!(code(c.verify(&r)), "ok");
    }
}

#[test]
fn stripe_negative_cases_from_the_official_tests_fail() {
    let v = json_fixture("stripe/signature_test_vectors.json");
    let g = &v["vectors"][0];
    let c = shipped(
        "stripe",
        &[("STRIPE_WEBHOOK_SECRET", "whsec_test_secret")],
        16,
    );
    let ts = 1492774577;
    let body = s(g, "payload").to_string();
    let check = |h: &str| {
        code(c.verify(&req(
            "POST",
            "/",
            &[("Stripe-Signature", h)],
            body.clone(),
            at(ts),
        )))
    };
    let good = s(g, "stripe_signature_header");
    let sig = s(g, "expected_v1");
    assert_eq!(check(""), "missing_signature");
    assert_eq!(check("v1,t=1"), "missing_signature");
    assert_eq!(check("t="), "missing_signature");
    assert_eq!(check(&format!("{good},v1=bad_signature")), "ok");
    assert_eq!(check(&format!("t={ts},v0={sig}")), "missing_signature");
    assert_eq!(check(&format!("t={ts},v1=deadbeef")), "bad_signature");
    // A signature for another timestamp does not verify: the timestamp is signed.
    assert_eq!(check(&format!("t={},v1={sig}", ts + 1)), "bad_signature");
}

#[test]
fn hubspot_v3_vector_verifies_within_five_minutes_only() {
    let v = json_fixture("hubspot/signature_test_vectors.json");
    let g = v["vectors"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|x| x["version"] == "v3")
        .cloned()
        .unwrap_or_default();
    let c = shipped(
        "hubspot",
        &[
            ("HUBSPOT_CLIENT_SECRET", s(&v, "client_secret")),
            ("HUBSPOT_PUBLIC_BASE_URL", "https://www.example.com"),
        ],
        16,
    );
    let ts_ms: i64 = s(&g, "timestamp_ms").parse().unwrap_or_default();
    let r = |now| {
        req(
            s(&g, "method"),
            "/webhook_uri",
            &[
                ("X-HubSpot-Signature-v3", s(&g, "expected")),
                ("X-HubSpot-Request-Timestamp", s(&g, "timestamp_ms")),
            ],
            s(&g, "request_body").to_string(),
            now,
        )
    };
    // The vector body is not JSON (Python dict syntax), so check the signature stage alone.
    assert_eq!(code(c.check_signature(&r(at(ts_ms / 1000)))), "ok");
    assert_eq!(code(c.verify(&r(at(ts_ms / 1000)))), "malformed_body");
    assert_eq!(
        code(c.check_signature(&r(at(ts_ms / 1000 + 301)))),
        "stale_timestamp"
    );
    let mut wrong_method = r(at(ts_ms / 1000));
    wrong_method.method = "PUT".into();
    assert_eq!(code(c.check_signature(&wrong_method)), "bad_signature");
}

/// A HubSpot delivery to a URL whose query carries all twelve escapes HubSpot decodes
/// before signing, plus `%3D`, `%26` and `%20`, which it keeps.
const HUBSPOT_SENT_PQ: &str = "/hooks/hubspot?portal=62515&next=https%3A%2F%2Fapp.example%2Fdone%3Fa%3D1%26b%3D2&who=O%27Brien%20%28QA%29%2A&at=me%40x.example%2Cyou%3Bthem%21%24";
/// The same URI as HubSpot signs it, written out by hand (not with the gateway's decoder).
const HUBSPOT_SIGNED_URI: &str = "https://gw.example.com/hooks/hubspot?portal=62515&next=https://app.example/done?a%3D1%26b%3D2&who=O'Brien%20(QA)*&at=me@x.example,you;them!$";
const HUBSPOT_SECRET: &str = "yyyyyyyy-yyyy-yyyy-yyyy-yyyyyyyyyyyy";
const HUBSPOT_TS_MS: &str = "1700000000123";

fn hubspot_v3(uri: &str, body: &[u8]) -> String {
    let mut msg = format!("POST{uri}").into_bytes();
    msg.extend_from_slice(body);
    msg.extend_from_slice(HUBSPOT_TS_MS.as_bytes());
    sign_b64(HUBSPOT_SECRET.as_bytes(), &msg)
}

fn hubspot_req(pq: &str, sig: &str, body: &bytes::Bytes) -> postgate::connector::RawRequest {
    req(
        "POST",
        pq,
        &[
            ("X-HubSpot-Signature-v3", sig),
            ("X-HubSpot-Request-Timestamp", HUBSPOT_TS_MS),
        ],
        body.clone(),
        at(1_700_000_000),
    )
}

const HUBSPOT_VARS: &[(&str, &str)] = &[
    ("HUBSPOT_CLIENT_SECRET", HUBSPOT_SECRET),
    ("HUBSPOT_PUBLIC_BASE_URL", "https://gw.example.com"),
];

#[test]
fn hubspot_v3_signs_the_uri_with_exactly_its_twelve_escapes_decoded() {
    let c = shipped("hubspot", HUBSPOT_VARS, 16);
    let body = fixture("hubspot/contact_creation.hubspot-api-nodejs-test.json");
    let sig = hubspot_v3(HUBSPOT_SIGNED_URI, &body);
    let v = c
        .verify(&hubspot_req(HUBSPOT_SENT_PQ, &sig, &body))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.decode(v).map(|e| e.len()).unwrap_or_default(), 1);
    // Percent-escapes are case-insensitive (RFC 3986 §2.1): `%3a` decodes like `%3A`.
    let lower = HUBSPOT_SENT_PQ.replace("%3A", "%3a").replace("%2F", "%2f");
    assert_eq!(code(c.verify(&hubspot_req(&lower, &sig, &body))), "ok");
    // The undecoded URI, as the request line carried it, is not what HubSpot signed.
    let undecoded = hubspot_v3(&format!("https://gw.example.com{HUBSPOT_SENT_PQ}"), &body);
    assert_eq!(
        code(c.verify(&hubspot_req(HUBSPOT_SENT_PQ, &undecoded, &body))),
        "bad_signature"
    );
    // Nor is a fully decoded one: `%3D`, `%26` and `%20` stay encoded.
    let over = hubspot_v3(
        &HUBSPOT_SIGNED_URI
            .replace("%3D", "=")
            .replace("%26", "&")
            .replace("%20", " "),
        &body,
    );
    assert_eq!(
        code(c.verify(&hubspot_req(HUBSPOT_SENT_PQ, &over, &body))),
        "bad_signature"
    );
    // Decoding happens only for verification: a request whose query changed still fails.
    let tampered = HUBSPOT_SENT_PQ.replace("portal=62515", "portal=62516");
    assert_eq!(
        code(c.verify(&hubspot_req(&tampered, &sig, &body))),
        "bad_signature"
    );
}

#[test]
fn without_url_decode_the_hubspot_signature_over_the_decoded_uri_fails() {
    let text = std::fs::read_to_string(root().join("connectors/hubspot.toml"))
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.starts_with("url_decode"))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(!text.contains("url_decode ="), "the option line is gone");
    let c = inline(&text, HUBSPOT_VARS).unwrap_or_else(|e| panic!("{e}"));
    let body = fixture("hubspot/contact_creation.hubspot-api-nodejs-test.json");
    let decoded = hubspot_v3(HUBSPOT_SIGNED_URI, &body);
    assert_eq!(
        code(c.verify(&hubspot_req(HUBSPOT_SENT_PQ, &decoded, &body))),
        "bad_signature"
    );
    // Then the URI is signed as received.
    let as_sent = hubspot_v3(&format!("https://gw.example.com{HUBSPOT_SENT_PQ}"), &body);
    assert_eq!(
        code(c.verify(&hubspot_req(HUBSPOT_SENT_PQ, &as_sent, &body))),
        "ok"
    );
}

#[test]
fn github_docs_vector_verifies_with_the_sha256_prefix() {
    // Published in GitHub's "Validating webhook deliveries" guide.
    let c = shipped(
        "github",
        &[("GITHUB_WEBHOOK_SECRET", "It's a Secret to Everybody")],
        16,
    );
    let sig = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
    assert_eq!(
        code(c.check_signature(&req(
            "POST",
            "/",
            &[("X-Hub-Signature-256", sig)],
            "Hello, World!",
            Utc::now()
        ))),
        "ok"
    );
    let no_prefix = sig.trim_start_matches("sha256=");
    assert_eq!(
        code(c.check_signature(&req(
            "POST",
            "/",
            &[("X-Hub-Signature-256", no_prefix)],
            "Hello, World!",
            Utc::now()
        ))),
        "missing_signature"
    );
}

#[test]
fn woocommerce_signature_over_the_real_order_body_verifies() {
    let secret = "woocommerce-webhook-secret-1234";
    let body = fixture("woocommerce/order_created.rest-api-docs-v3.json");
    let c = shipped("woocommerce", &[("WOOCOMMERCE_WEBHOOK_SECRET", secret)], 16);
    let sig = sign_b64(secret.as_bytes(), &body);
    assert_eq!(
        code(c.verify(&req(
            "POST",
            "/",
            &[("X-WC-Webhook-Signature", sig.as_str())],
            body.clone(),
            Utc::now()
        ))),
        "ok"
    );
    let other = sign_b64(b"another-secret-of-enough-length", &body);
    assert_eq!(
        code(c.verify(&req(
            "POST",
            "/",
            &[("X-WC-Webhook-Signature", other.as_str())],
            body,
            Utc::now()
        ))),
        "bad_signature"
    );
}

#[test]
fn sha1_hmac_is_supported_for_legacy_sources() {
    let c = inline(
        r#"
[body]
format = "json"
[[auth]]
type = "hmac"
algorithm = "sha1"
secrets = ["a-sha1-secret-of-20b"]
message = ["body"]
signature = { header = "X-Hub-Signature", prefix = "sha1=", encoding = "hex" }
[event]
type = { constant = "ping" }
id = { header = "X-Id" }
"#,
        &[],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let mut m = Hmac::<sha1::Sha1>::new_from_slice(b"a-sha1-secret-of-20b")
        .unwrap_or_else(|_| panic!("key"));
    m.update(b"{}");
    let sig = format!("sha1={}", hex::encode(m.finalize().into_bytes()));
    assert_eq!(
        code(c.verify(&req(
            "POST",
            "/",
            &[("X-Hub-Signature", sig.as_str())],
            "{}",
            Utc::now()
        ))),
        "ok"
    );
}

/// One valid signed request per scheme and what breaking it must give: the signature header
/// removed or empty is `missing_signature`; a signature cut to half its bytes, or any header
/// the signed message is built from removed, is not `ok`.
#[test]
fn every_scheme_refuses_missing_empty_and_truncated_signatures() {
    struct Case {
        name: &'static str,
        connector: postgate::connector::Connector,
        request: postgate::connector::RawRequest,
        signature_header: &'static str,
        /// The signature value cut to half its bytes, in the header's own format.
        truncated: String,
        /// Other headers the signed message is built from.
        message_headers: &'static [&'static str],
    }
    let half_b64 = |b64: &str| {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap_or_default();
        base64::engine::general_purpose::STANDARD.encode(&bytes[..bytes.len() / 2])
    };

    let github_sig = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
    let woo_secret = "woocommerce-webhook-secret-1234";
    let woo_body = fixture("woocommerce/order_created.rest-api-docs-v3.json");
    let woo_sig = sign_b64(woo_secret.as_bytes(), &woo_body);
    let sw = StandardWebhooks::new();
    let sw_sig = s(sw.good(), "expected_signature_header").to_owned();
    let sw_request = sw.request(&sw_sig, at(sw.ts));
    let hubspot_body = bytes::Bytes::from_static(b"[{\"eventId\":1}]");
    let hubspot_sig = hubspot_v3(
        "https://gw.example.com/hooks/hubspot",
        hubspot_body.as_ref(),
    );

    let stripe = json_fixture("stripe/signature_test_vectors.json");
    let sv = &stripe["vectors"][0];
    let stripe_header = s(sv, "stripe_signature_header").to_owned();
    let stripe_truncated = {
        // `t=…,v1=<hex>`: the v1 hex cut to half, the timestamp kept.
        let (head, hex) = stripe_header
            .split_once("v1=")
            .unwrap_or_else(|| panic!("v1 in {stripe_header}"));
        let hex = hex.split(',').next().unwrap_or_default();
        format!("{head}v1={}", &hex[..hex.len() / 2])
    };

    let cases = vec![
        Case {
            name: "stripe",
            connector: shipped("stripe", &[("STRIPE_WEBHOOK_SECRET", s(sv, "secret"))], 16),
            request: req(
                "POST",
                "/",
                &[("Stripe-Signature", stripe_header.as_str())],
                s(sv, "payload").to_string(),
                at(sv["timestamp"].as_i64().unwrap_or_default()),
            ),
            signature_header: "Stripe-Signature",
            truncated: stripe_truncated,
            message_headers: &[],
        },
        Case {
            name: "github",
            connector: shipped(
                "github",
                &[("GITHUB_WEBHOOK_SECRET", "It's a Secret to Everybody")],
                16,
            ),
            request: req(
                "POST",
                "/",
                &[("X-Hub-Signature-256", github_sig)],
                "Hello, World!",
                Utc::now(),
            ),
            signature_header: "X-Hub-Signature-256",
            truncated: github_sig[..github_sig.len() - 32].to_owned(),
            message_headers: &[],
        },
        Case {
            name: "woocommerce",
            connector: shipped(
                "woocommerce",
                &[("WOOCOMMERCE_WEBHOOK_SECRET", woo_secret)],
                16,
            ),
            request: req(
                "POST",
                "/",
                &[("X-WC-Webhook-Signature", woo_sig.as_str())],
                woo_body.clone(),
                Utc::now(),
            ),
            signature_header: "X-WC-Webhook-Signature",
            truncated: half_b64(&woo_sig),
            message_headers: &[],
        },
        Case {
            name: "standard-webhooks",
            connector: sw.connector,
            request: sw_request,
            signature_header: "webhook-signature",
            truncated: format!("v1,{}", half_b64(sw_sig.trim_start_matches("v1,"))),
            message_headers: &["webhook-id", "webhook-timestamp"],
        },
        Case {
            name: "hubspot",
            connector: shipped("hubspot", HUBSPOT_VARS, 16),
            request: hubspot_req("/hooks/hubspot", &hubspot_sig, &hubspot_body),
            signature_header: "X-HubSpot-Signature-v3",
            truncated: half_b64(&hubspot_sig),
            message_headers: &["X-HubSpot-Request-Timestamp"],
        },
    ];

    for case in cases {
        let Case {
            name,
            connector,
            request,
            signature_header,
            truncated,
            message_headers,
        } = case;
        let check = |r: &postgate::connector::RawRequest| code(connector.check_signature(r));
        let with_header = |header: &str, value: Option<&str>| {
            let mut r = request.clone();
            r.headers.retain(|(k, _)| !k.eq_ignore_ascii_case(header));
            if let Some(value) = value {
                r.headers.push((header.to_owned(), value.to_owned()));
            }
            r
        };
        assert_eq!(check(&request), "ok", "{name}: the valid request");
        assert_eq!(
            check(&with_header(signature_header, None)),
            "missing_signature",
            "{name}: no signature header"
        );
        assert_eq!(
            check(&with_header(signature_header, Some(""))),
            "missing_signature",
            "{name}: empty signature"
        );
        assert_eq!(
            check(&with_header(signature_header, Some(&truncated))),
            "bad_signature",
            "{name}: truncated signature {truncated}"
        );
        for header in message_headers {
            assert_ne!(
                check(&with_header(header, None)),
                "ok",
                "{name}: without {header}"
            );
        }
    }
}
