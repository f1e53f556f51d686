//! Mapping failures an operator has to act on: the message names the file, the field, the
//! path tried and the JSON type found. Also the full pipeline with a real signature, and the
//! `postgate map` / `postgate check` entry points.

use std::path::Path;

use crate::common::*;
use bytes::Bytes;
use chrono::Utc;
use postgate::connector::{Env, LoadOptions};
use postgate::domain::Status;
use postgate::mapping::check::{check, map_payload, parse_header_arg};
use postgate::mapping::{Mapping, MappingSet};

fn set_of(connector: &str, text: &str) -> Result<MappingSet, postgate::connector::ConfigError> {
    let m = Mapping::from_toml(connector, "m", Path::new("m.toml"), text)?;
    let mut set = MappingSet::default();
    set.insert(m);
    Ok(set)
}

fn shopify_event(topic: &str, body: Bytes) -> postgate::connector::VerifiedEvent {
    let c = shipped(
        "shopify",
        &[("SHOPIFY_WEBHOOK_SECRET", "0123456789abcdef0123")],
        16,
    );
    let r = req(
        "POST",
        "/hooks/shopify",
        &[("X-Shopify-Topic", topic), ("X-Shopify-Webhook-Id", "w")],
        body,
        Utc::now(),
    );
    let v = c.parse_unverified(&r).unwrap_or_else(|e| panic!("{e}"));
    c.decode(v.clone())
        .unwrap_or_else(|e| panic!("{e}"))
        .remove(0)
}

const HEAD: &str = "[match]\nevent_type = [\"orders/paid\"]\n[fields]\nevent = { constant = \"purchase\" }\nstatus = { constant = \"approved\" }\n";

#[test]
fn a_path_that_selects_an_object_reports_the_type_and_location() {
    let set = set_of("shopify", &format!("{HEAD}amount = {{ path = \"$.total_price_set.shop_money\" }}\ncurrency = {{ constant = \"USD\" }}\n"))
        .unwrap_or_else(|e| panic!("{e}"));
    let ev = shopify_event(
        "orders/paid",
        fixture("shopify/orders_create.shopify-dev-2026-07.json"),
    );
    let err = set.map(&ev).err().unwrap_or_else(|| panic!("mapped"));
    assert_eq!(err.code().as_str(), "wrong_type");
    let msg = err.to_string();
    assert!(
        msg.contains("m.toml")
            && msg.contains("`amount`")
            && msg.contains("an object")
            && msg.contains("shop_money"),
        "{msg}"
    );
}

/// A path is resolved lazily: the first node that gives a value wins, and nodes after it
/// (here the order's objects and arrays, which `$.*` also selects) are never looked at.
#[test]
fn nodes_after_the_first_good_value_are_not_type_checked() {
    let set = set_of(
        "shopify",
        &format!("{HEAD}transaction_id = {{ required = true, path = \"$.*\" }}\n"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let ev = shopify_event(
        "orders/paid",
        fixture("shopify/orders_create.shopify-dev-2026-07.json"),
    );
    let postbacks = set.map(&ev).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        postbacks[0].transaction_id.as_deref(),
        Some("gid://shopify/Order/820982911946154508")
    );
}

/// `postgate map` says where along a path the payload stopped matching: a member that is not
/// there, an array where the path expects an object, a null, or a filter that found nothing.
#[test]
fn a_path_that_finds_nothing_says_where_the_payload_stops_matching() {
    let ev = shopify_event(
        "orders/paid",
        fixture("shopify/orders_create.shopify-dev-2026-07.json"),
    );
    for (path, why) in [
        (
            "$.line_items.id",
            "`$.line_items` is an array, not an object with a member `id`",
        ),
        (
            "$.customer.nickname",
            "`$.customer` has no member `nickname`",
        ),
        ("$.landing_site", "`$.landing_site` is null"),
        (
            "$.note_attributes[?@.name == 'click_id'].value",
            "`$.note_attributes` is an array of 0 item(s); the rest of the path selects nothing in it",
        ),
        (
            "$.customer.email",
            "selected 1 value(s), none left non-empty by its transforms",
        ),
        ("$.note", "`$.note` is null"),
        ("$.note.text", "`$.note` is null"),
    ] {
        let set = set_of(
            "shopify",
            &format!("{HEAD}click_id = {{ required = true, path = \"{path}\", transforms = [{{ query_param = [\"subid\"] }}] }}\n"),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let err = set
            .map(&ev)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains(why), "{path}: {err}");
    }
}

#[test]
fn a_required_field_that_matches_nothing_lists_every_path_tried() {
    let set = set_of(
        "shopify",
        &format!("{HEAD}transaction_id = {{ required = true, first_of = [{{ path = \"$.order.id\" }}, {{ path = \"$.order_number_typo\" }}] }}\n"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let ev = shopify_event(
        "orders/paid",
        fixture("shopify/orders_create.shopify-dev-2026-07.json"),
    );
    let err = set.map(&ev).err().unwrap_or_else(|| panic!("mapped"));
    assert_eq!(err.code().as_str(), "missing_field");
    assert!(
        err.to_string().contains("$.order.id") && err.to_string().contains("$.order_number_typo"),
        "{err}"
    );
}

#[test]
fn an_event_type_without_mapping_is_unmapped_event() {
    let set = set_of("shopify", HEAD).unwrap_or_else(|e| panic!("{e}"));
    let ev = shopify_event("products/create", Bytes::from_static(b"{}"));
    let err = set.map(&ev).err().unwrap_or_else(|| panic!("mapped"));
    assert_eq!(err.code().as_str(), "unmapped_event");
    assert!(err.to_string().contains("products/create"), "{err}");
}

/// When the event type matched but a filter kept the mapping out, the reason says which
/// mapping and which filter, not only that nothing matched the type.
#[test]
fn an_event_kept_out_by_a_filter_names_the_mapping_and_its_filter() {
    let text = HEAD.replace(
        "[fields]",
        "filter = \"$[?@.financial_status == 'paid']\"\n[fields]",
    );
    let set = set_of("shopify", &text).unwrap_or_else(|e| panic!("{e}"));
    let ev = shopify_event(
        "orders/paid",
        fixture("shopify/orders_create.shopify-dev-2026-07.json"),
    );
    let err = set.map(&ev).err().unwrap_or_else(|| panic!("mapped"));
    assert_eq!(err.code().as_str(), "unmapped_event");
    let msg = err.to_string();
    assert!(
        msg.contains("m.toml") && msg.contains("financial_status == 'paid'"),
        "{msg}"
    );
}

#[test]
fn a_lookup_miss_and_a_bad_currency_are_bad_values() {
    let ev = shopify_event(
        "orders/paid",
        fixture("shopify/orders_create.shopify-dev-2026-07.json"),
    );
    let text = HEAD.replace(
        "status = { constant = \"approved\" }",
        "status = { path = \"$.financial_status\", transforms = [{ lookup = { paid = \"approved\" } }] }",
    );
    let err = set_of("shopify", &text)
        .map(|s| s.map(&ev))
        .unwrap_or_else(|e| panic!("{e}"))
        .err();
    assert_eq!(err.as_ref().map(|e| e.code().as_str()), Some("bad_value"));
    assert!(
        err.map(|e| e.to_string())
            .unwrap_or_default()
            .contains("voided")
    );
    let text = format!("{HEAD}currency = {{ constant = \"US Dollar\" }}\n");
    let err = set_of("shopify", &text)
        .map(|s| s.map(&ev))
        .unwrap_or_else(|e| panic!("{e}"))
        .err();
    assert_eq!(err.map(|e| e.code().as_str()), Some("bad_value"));
}

fn load_err(text: &str) -> String {
    set_of("shopify", text)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_else(|| "loaded".into())
}

#[test]
fn bad_mapping_files_fail_at_load_with_file_line_and_reason() {
    let e = load_err(&format!(
        "{HEAD}amount = {{ path = \"$.x\", tranforms = [] }}\n"
    ));
    assert!(e.starts_with("m.toml:6:") && e.contains("tranforms"), "{e}");
    let e = load_err(&format!("{HEAD}amount = {{ path = \"$[?@.a ==]\" }}\n"));
    assert!(
        e.starts_with("m.toml:6:") && e.contains("invalid JSONPath"),
        "{e}"
    );
    let hostile = format!(
        "{HEAD}click_id = {{ path = \"$[?{}@.a{}]\" }}\n",
        "(".repeat(2000),
        ")".repeat(2000)
    );
    let e = load_err(&hostile);
    assert!(e.starts_with("m.toml:6:") && e.contains("limit"), "{e}");
    let e = load_err(&format!(
        "{HEAD}click_id = {{ path = \"$.a\", transforms = [{{ regex = \"(\" }}] }}\n"
    ));
    assert!(e.starts_with("m.toml:6:") && e.contains("regex"), "{e}");
    let e = load_err(&format!(
        "{HEAD}click_id = {{ path = \"$.a\", transforms = [\"minor_units\"] }}\n"
    ));
    assert!(e.contains("only to `amount`"), "{e}");
    let e = load_err(&format!(
        "{HEAD}amount = {{ path = \"$.a\", transforms = [\"minor_units\"] }}\n"
    ));
    assert!(e.contains("needs a `currency`"), "{e}");
    let e = load_err(&format!(
        "{HEAD}click_id = {{ path = \"$.a\", constant = \"b\" }}\n"
    ));
    assert!(
        e.starts_with("m.toml:6:") && e.contains("exactly one"),
        "{e}"
    );
    let e = load_err(&HEAD.replace("event_type = [\"orders/paid\"]", ""));
    assert!(e.starts_with("m.toml:1:") && e.contains("[match]"), "{e}");
    let e = load_err(&format!(
        "{HEAD}click_id = {{ path = \"$.a\", transforms = [\"shout\"] }}\n"
    ));
    assert!(e.starts_with("m.toml:6:"), "{e}");
}

#[test]
fn minor_units_follow_the_mapped_currency() {
    let text = "[match]\nevent_type = [\"orders/paid\"]\n[fields]\nevent = { constant = \"purchase\" }\nstatus = { constant = \"approved\" }\namount = { constant = \"123456\", transforms = [\"minor_units\"] }\ncurrency = { constant = \"JPY\" }\n";
    let set = set_of("shopify", text).unwrap_or_else(|e| panic!("{e}"));
    let ev = shopify_event("orders/paid", Bytes::from_static(b"{}"));
    let pb = set.map(&ev).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(pb[0].amount.map(|a| a.to_string()), Some("123456".into()));
    let set = set_of("shopify", &text.replace("JPY", "KWD")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        set.map(&ev).unwrap_or_default()[0]
            .amount
            .map(|a| a.to_string()),
        Some("123.456".into())
    );
}

#[test]
fn a_signed_shopify_order_goes_through_verify_decode_and_map_with_the_exact_order_id() {
    use base64::Engine as _;
    use hmac::{Hmac, KeyInit, Mac};
    let secret = "shpss_0123456789abcdef0123456789ab";
    let c = shipped("shopify", &[("SHOPIFY_WEBHOOK_SECRET", secret)], 16);
    let set = MappingSet::load_dir(&root().join("mappings")).unwrap_or_else(|e| panic!("{e:?}"));
    let body = fixture("shopify/orders_create.shopify-dev-2026-07.json");
    let mut mac =
        Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap_or_else(|_| panic!("key"));
    mac.update(&body);
    let sig = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    let r = req(
        "POST",
        "/hooks/shopify",
        &[
            ("X-Shopify-Hmac-Sha256", sig.as_str()),
            ("X-Shopify-Topic", "orders/paid"),
            ("X-Shopify-Webhook-Id", "wh-1"),
        ],
        body,
        Utc::now(),
    );
    let verified = c.verify(&r).unwrap_or_else(|e| panic!("{e}"));
    let events = c.decode(verified.clone()).unwrap_or_else(|e| panic!("{e}"));
    let pbs = set.map(&events[0]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(pbs.len(), 1);
    assert_eq!(pbs[0].transaction_id.as_deref(), Some("820982911946154508"));
    assert_eq!(pbs[0].status, Status::Approved);
    assert_eq!(pbs[0].amount.map(|a| a.to_string()), Some("404.95".into()));
    // Serialised for the gateway: amount is a string, the id is a string.
    let json = serde_json::to_string(&pbs[0]).unwrap_or_default();
    assert!(
        json.contains("\"amount\":\"404.95\"")
            && json.contains("\"transaction_id\":\"820982911946154508\""),
        "{json}"
    );
}

#[test]
fn a_signed_stripe_checkout_and_its_refund_map_to_one_transaction_purchased_then_reversed() {
    use hmac::{Hmac, KeyInit, Mac};
    let secret = "whsec_0123456789abcdef0123456789abcdef";
    let c = shipped("stripe", &[("STRIPE_WEBHOOK_SECRET", secret)], 16);
    let set = MappingSet::load_dir(&root().join("mappings")).unwrap_or_else(|e| panic!("{e:?}"));
    let now = Utc::now();
    let signed = |body: Bytes| {
        let t = now.timestamp().to_string();
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes())
            .unwrap_or_else(|_| panic!("key"));
        mac.update(format!("{t}.").as_bytes());
        mac.update(&body);
        let header = format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()));
        req(
            "POST",
            "/hooks/stripe",
            &[("Stripe-Signature", header.as_str())],
            body,
            now,
        )
    };
    let map = |body: Bytes| {
        let verified = c.verify(&signed(body)).unwrap_or_else(|e| panic!("{e}"));
        let events = c.decode(verified).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(events.len(), 1);
        set.map(&events[0]).unwrap_or_else(|e| panic!("{e}"))
    };

    let paid = map(fixture(
        "derived/stripe_checkout_session_completed.client_reference_id.json",
    ));
    assert_eq!(paid.len(), 1);
    assert_eq!(
        paid[0].source_event_id.as_deref(),
        Some("evt_00000000000000")
    );
    assert_eq!(paid[0].status, Status::Approved);
    assert_eq!(paid[0].click_id.as_deref(), Some("pgc_ref_Q4mZ8kT2"));
    assert_eq!(paid[0].amount.map(|a| a.to_string()), Some("250.00".into()));
    assert_eq!(paid[0].currency.as_deref(), Some("USD"));

    let refund = map(fixture(
        "derived/stripe_charge_refunded.payment_intent.json",
    ));
    assert_eq!(refund.len(), 1);
    assert_eq!(refund[0].status, Status::Reversed);
    assert_eq!(refund[0].click_id, None);
    // The refund names the same transaction, so attribution finds the purchase to reverse.
    assert_eq!(refund[0].transaction_id, paid[0].transaction_id);
    assert_eq!(
        refund[0].transaction_id.as_deref(),
        Some("pi_00000000000000")
    );

    // The real bytes under another secret are refused before anything is parsed.
    let other = shipped(
        "stripe",
        &[("STRIPE_WEBHOOK_SECRET", "whsec_another_secret_0123456789")],
        16,
    );
    let body = fixture("stripe/checkout_session_completed.stripe-ruby-mock.json");
    assert_eq!(code(other.verify(&signed(body))), "bad_signature");
}

#[test]
fn postgate_map_entry_point_maps_a_payload_file_with_header_arguments() {
    let opts = LoadOptions {
        env: Env::ProcessOrPlaceholder,
        ..Default::default()
    };
    let c = postgate::connector::Connector::load(&root().join("connectors/shopify.toml"), &opts)
        .unwrap_or_else(|e| panic!("{e}"));
    let set = MappingSet::load_dir(&root().join("mappings")).unwrap_or_else(|e| panic!("{e:?}"));
    let headers: Vec<(String, String)> = [
        "X-Shopify-Topic: refunds/create",
        "X-Shopify-Webhook-Id:  r-9 ",
    ]
    .iter()
    .filter_map(|h| parse_header_arg(h))
    .collect();
    let pbs = map_payload(
        &c,
        &set,
        "POST",
        "/hooks/shopify",
        &headers,
        fixture("shopify/refunds_create.shopify-dev-2026-07.json"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(pbs[0].status, Status::Reversed);
    assert_eq!(pbs[0].source_event_id.as_deref(), Some("r-9"));
    assert_eq!(parse_header_arg("no colon"), None);
}

#[test]
fn postgate_check_reports_a_failing_case_and_a_broken_file_with_lines() {
    let dir = std::env::temp_dir().join(format!("pg-ingest-check-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("mappings/shopify")).unwrap_or_default();
    std::fs::create_dir_all(dir.join("connectors")).unwrap_or_default();
    std::fs::create_dir_all(dir.join("tests/fixtures/shopify")).unwrap_or_default();
    std::fs::copy(
        root().join("connectors/shopify.toml"),
        dir.join("connectors/shopify.toml"),
    )
    .unwrap_or_default();
    std::fs::write(
        dir.join("tests/fixtures/shopify/o.json"),
        fixture("shopify/orders_create.shopify-dev-2026-07.json"),
    )
    .unwrap_or_default();
    let good = format!(
        "{HEAD}transaction_id = {{ path = \"$.id\" }}\n\n[[test]]\nfixture = \"tests/fixtures/shopify/o.json\"\nheaders = {{ \"X-Shopify-Topic\" = \"orders/paid\", \"X-Shopify-Webhook-Id\" = \"1\" }}\n[[test.expect]]\nsource = \"shopify\"\nsource_event_id = \"1\"\nevent = \"purchase\"\nstatus = \"approved\"\ntransaction_id = \"820982911946154507\"\n"
    );
    std::fs::write(dir.join("mappings/shopify/paid.toml"), good).unwrap_or_default();
    let opts = LoadOptions {
        env: Env::ProcessOrPlaceholder,
        ..Default::default()
    };
    let report = check(&postgate::mapping::check::Dirs::under(&dir), &opts);
    let errs: Vec<String> = report.errors.iter().map(ToString::to_string).collect();
    assert_eq!(report.cases_run, 1);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].contains("paid.toml:8:") && errs[0].contains("820982911946154508"),
        "{}",
        errs[0]
    );
    std::fs::write(
        dir.join("mappings/shopify/broken.toml"),
        "[match]\nevent_type = [\"x\"]\n[fields]\nevent = 3\n",
    )
    .unwrap_or_default();
    let report = check(&postgate::mapping::check::Dirs::under(&dir), &opts);
    let errs: Vec<String> = report.errors.iter().map(ToString::to_string).collect();
    assert!(
        errs.iter().any(|e| e.contains("broken.toml:4:")),
        "{errs:?}"
    );
    // A mapping without a test case is an error of its own.
    std::fs::remove_file(dir.join("mappings/shopify/broken.toml")).unwrap_or_default();
    std::fs::write(
        dir.join("mappings/shopify/untested.toml"),
        format!("{HEAD}transaction_id = {{ path = \"$.id\" }}\n"),
    )
    .unwrap_or_default();
    let report = check(&postgate::mapping::check::Dirs::under(&dir), &opts);
    let errs: Vec<String> = report.errors.iter().map(ToString::to_string).collect();
    assert!(
        errs.iter()
            .any(|e| e.contains("untested.toml") && e.contains("no [[test]] case")),
        "{errs:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
