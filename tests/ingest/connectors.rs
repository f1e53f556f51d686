//! Connector behaviour beyond HMAC: tokens, allow-lists, body formats, splitting, receipts,
//! and `file:line` errors for bad definitions.

use crate::common::*;
use chrono::Utc;
use postgate::connector::{Receipt, SALESFORCE_ACK};

const SF_TOKEN: &str = "sf-url-token-0123456789abcdef";

fn salesforce(org: &str) -> postgate::connector::Connector {
    shipped(
        "salesforce",
        &[("SALESFORCE_TOKEN", SF_TOKEN), ("SALESFORCE_ORG_ID", org)],
        16,
    )
}

fn sf_req(token: &str, fixture_name: &str) -> postgate::connector::RawRequest {
    req(
        "POST",
        &format!("/hooks/salesforce?token={token}"),
        &[
            ("Content-Type", "text/xml; charset=utf-8"),
            ("SOAPAction", "\"\""),
        ],
        fixture(&format!("salesforce/{fixture_name}")),
        Utc::now(),
    )
}

#[test]
fn salesforce_lead_message_with_a_bom_splits_into_three_events_and_wants_the_soap_ack() {
    let c = salesforce("0123456789ABCDENNN");
    let v = c
        .verify(&sf_req(
            SF_TOKEN,
            "outbound_message.lead.aspnet-webhooks.xml",
        ))
        .unwrap_or_else(|e| panic!("{e}"));
    let events = c.decode(v.clone()).unwrap_or_else(|e| panic!("{e}"));
    let got: Vec<(&str, &str)> = events
        .iter()
        .map(|e| (e.event_id(), e.event_type()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("04l37000000L0E5AAK", "sf:Lead1"),
            ("14l37000123L0E5AAK", "sf:Lead2"),
            ("24l37123450L0E5AAK", "sf:Lead3")
        ]
    );
    assert_eq!(events[0].payload()["sObject"]["FirstName"], "Henrik");
    assert_eq!(
        c.receipt(),
        &Receipt::Text {
            content_type: "text/xml; charset=utf-8".into(),
            body: SALESFORCE_ACK.into()
        }
    );
}

/// A request with more events than `max_events` is refused whole when decoded (the pipeline
/// stores it as one `too_many_events` failure and answers, so the source stops retrying).
#[test]
fn more_notifications_than_max_events_is_too_many_events() {
    let text = std::fs::read_to_string(root().join("connectors/salesforce.toml")).expect("file");
    let two = text.replace("max_events = 100", "max_events = 2");
    assert_ne!(text, two, "the shipped file sets max_events = 100");
    let c = inline(
        &two,
        &[
            ("SALESFORCE_TOKEN", SF_TOKEN),
            ("SALESFORCE_ORG_ID", "0123456789ABCDENNN"),
        ],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let v = c
        .verify(&sf_req(
            SF_TOKEN,
            "outbound_message.lead.aspnet-webhooks.xml",
        ))
        .unwrap_or_else(|e| panic!("{e}"));
    let err = c
        .decode(v)
        .err()
        .unwrap_or_else(|| panic!("three events decoded"));
    assert_eq!(err.code().as_str(), "too_many_events");
    assert_eq!(err.to_string(), "request carries 3 events; limit is 2");
}

#[test]
fn the_shipped_ack_is_what_salesforce_documents() {
    // Same document as the captured ack, modulo whitespace and unused namespace declarations.
    let captured =
        String::from_utf8_lossy(&fixture("salesforce/ack_response_true.abrarsheikhsony.xml"))
            .into_owned();
    let squash = |s: &str| s.split_whitespace().collect::<String>();
    assert!(squash(&captured).contains(&squash("<notificationsResponse xmlns=\"http://soap.sforce.com/2005/09/outbound\"><Ack>true</Ack></notificationsResponse>")));
    assert!(SALESFORCE_ACK.contains("<Ack>true</Ack>"));
}

#[test]
fn salesforce_single_notification_is_still_one_event_and_contacts_are_two() {
    let c = salesforce("ABC90000000gNcmEAE");
    let v = c
        .verify(&sf_req(
            SF_TOKEN,
            "outbound_message.account.abrarsheikhsony.xml",
        ))
        .unwrap_or_else(|e| panic!("{e}"));
    let events = c.decode(v.clone()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].event_type(), "sf:Account");
    let c = salesforce("012345678901234");
    let v = c
        .verify(&sf_req(
            SF_TOKEN,
            "outbound_message.contact.aspnetcore-functionaltest.xml",
        ))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.decode(v.clone()).map(|e| e.len()).unwrap_or_default(), 2);
}

#[test]
fn salesforce_wrong_or_missing_token_and_foreign_org_are_rejected() {
    let c = salesforce("0123456789ABCDENNN");
    assert_eq!(
        code(c.verify(&sf_req(
            "wrong-token-0123456789abcdef",
            "outbound_message.lead.aspnet-webhooks.xml"
        ))),
        "bad_token"
    );
    let mut r = sf_req(SF_TOKEN, "outbound_message.lead.aspnet-webhooks.xml");
    r.path_and_query = "/hooks/salesforce".into();
    assert_eq!(code(c.verify(&r)), "missing_token");
    assert_eq!(
        code(c.verify(&sf_req(
            SF_TOKEN,
            "outbound_message.account.abrarsheikhsony.xml"
        ))),
        "org_not_allowed"
    );
    // An envelope without any OrganizationId is not trusted either.
    assert_eq!(
        code(c.verify(&sf_req(
            SF_TOKEN,
            "outbound_message.empty.aspnet-webhooks.xml"
        ))),
        "org_not_allowed"
    );
}

#[test]
fn salesforce_empty_envelope_parses_to_zero_events_when_unverified() {
    let c = salesforce("0123456789ABCDENNN");
    let v = c
        .parse_unverified(&sf_req("", "outbound_message.empty.aspnet-webhooks.xml"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.decode(v.clone()).map(|e| e.len()).unwrap_or(99), 0);
}

#[test]
fn an_xxe_soap_envelope_is_malformed_body_and_echoes_nothing() {
    let c = salesforce("0123456789ABCDENNN");
    let mut r = sf_req(SF_TOKEN, "outbound_message.lead.aspnet-webhooks.xml");
    r.body = bytes::Bytes::from_static(
        b"<?xml version=\"1.0\"?><!DOCTYPE e [<!ENTITY x SYSTEM \"file:///etc/passwd\">]><e><OrganizationId>&x;</OrganizationId></e>",
    );
    let err = c
        .verify(&r)
        .err()
        .map(|e| (e.code().as_str(), e.to_string()))
        .unwrap_or_default();
    assert_eq!(err.0, "malformed_body");
    assert!(
        !err.1.contains("passwd") && !err.1.contains("root"),
        "{}",
        err.1
    );
}

#[test]
fn adjust_get_callback_decodes_the_query_string_with_custom_params() {
    let c = shipped("adjust", &[("ADJUST_TOKEN", "adjust-token-0123456789")], 16);
    let r = req(
        "GET",
        "/hooks/adjust?token=adjust-token-0123456789&activity_kind=event&adid=abc123&created_at=1700000000&event_name=purchase&revenue=9.99&currency=EUR&key=value&foo=bar",
        &[],
        "",
        Utc::now(),
    );
    let v = c.verify(&r).unwrap_or_else(|e| panic!("{e}"));
    let events = c.decode(v.clone()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(events[0].event_type(), "event");
    assert_eq!(events[0].event_id(), "abc123:1700000000:event:purchase");
    assert_eq!(events[0].payload()["foo"], "bar");
    assert_eq!(
        c.receipt(),
        &Receipt::Text {
            content_type: "text/plain; charset=utf-8".into(),
            body: "OK".into()
        }
    );
}

/// During a rotation both tokens open the door; any other does not.
#[test]
fn two_tokens_during_a_rotation_both_verify() {
    let c = inline(
        r#"
[body]
format = "query"
[[auth]]
type = "token"
query = "token"
tokens = ["${OLD_TOKEN}", "${NEW_TOKEN}"]
[event]
type = { constant = "install" }
id = { query = "id" }
"#,
        &[
            ("OLD_TOKEN", "old-token-0123456789"),
            ("NEW_TOKEN", "new-token-9876543210"),
        ],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let with = |token: &str| {
        req(
            "GET",
            &format!("/hooks/x?token={token}&id=1"),
            &[],
            "",
            Utc::now(),
        )
    };
    assert_eq!(code(c.verify(&with("old-token-0123456789"))), "ok");
    assert_eq!(code(c.verify(&with("new-token-9876543210"))), "ok");
    assert_eq!(code(c.verify(&with("new-token-987654321"))), "bad_token");
}

#[test]
fn form_bodies_decode_and_repeated_keys_become_arrays() {
    let c = inline(
        r#"
[body]
format = "form"
[[auth]]
type = "token"
header = "Authorization"
prefix = "Bearer "
tokens = ["form-token-0123456789"]
[event]
type = { path = "$.kind" }
id = { path = "$.id" }
"#,
        &[],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let r = req(
        "POST",
        "/",
        &[("Authorization", "Bearer form-token-0123456789")],
        "kind=sale&id=7&tag=a&tag=b%20c",
        Utc::now(),
    );
    let v = c.verify(&r).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(v.body()["tag"], serde_json::json!(["a", "b c"]));
    let bad = req(
        "POST",
        "/",
        &[("Authorization", "form-token-0123456789")],
        "",
        Utc::now(),
    );
    assert_eq!(code(c.verify(&bad)), "bad_token");
}

#[test]
fn ip_allow_list_accepts_listed_networks_only() {
    let c = inline(
        "[body]\nformat = \"json\"\n[[auth]]\ntype = \"ip_allow_list\"\ncidrs = [\"203.0.113.0/24\", \"2001:db8::1\"]\n[event]\ntype = { constant = \"x\" }\nid = { path = \"$.id\" }\n",
        &[],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let mut r = req("POST", "/", &[], "{\"id\":1}", Utc::now());
    for (ip, want) in [
        (Some("203.0.113.9"), "ok"),
        (Some("2001:db8::1"), "ok"),
        (Some("198.51.100.1"), "ip_not_allowed"),
        (None, "ip_not_allowed"),
    ] {
        r.peer_ip = ip.and_then(|s| s.parse().ok());
        assert_eq!(code(c.verify(&r)), want, "{ip:?}");
    }
}

#[test]
fn shopify_event_type_and_dedupe_id_come_from_headers_and_big_ids_stay_exact() {
    let c = shipped(
        "shopify",
        &[("SHOPIFY_WEBHOOK_SECRET", "0123456789abcdef0123")],
        16,
    );
    let r = req(
        "POST",
        "/hooks/shopify",
        &[
            ("X-Shopify-Topic", "orders/paid"),
            (
                "X-Shopify-Webhook-Id",
                "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043",
            ),
        ],
        fixture("shopify/orders_create.shopify-dev-2026-07.json"),
        Utc::now(),
    );
    let v = c.parse_unverified(&r).unwrap_or_else(|e| panic!("{e}"));
    let events = c.decode(v.clone()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(events[0].event_type(), "orders/paid");
    assert_eq!(events[0].payload()["id"].to_string(), "820982911946154508");
    let mut no_id = r.clone();
    no_id.headers.retain(|(k, _)| k != "X-Shopify-Webhook-Id");
    let v = c.parse_unverified(&no_id).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        c.decode(v.clone()).err().map(|e| e.code().as_str()),
        Some("missing_event_id")
    );
}

#[test]
fn oversized_bodies_are_refused_before_parsing() {
    let c = inline(
        "[body]\nformat = \"json\"\nmax_bytes = 10\n[[auth]]\ntype = \"none\"\n[event]\ntype = { constant = \"x\" }\nid = { path = \"$.id\" }\n",
        &[],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        code(c.verify(&req("POST", "/", &[], "{\"id\": 12345678}", Utc::now()))),
        "payload_too_large"
    );
}

fn config_err(text: &str) -> String {
    inline(text, &[])
        .err()
        .map(|e| e.to_string())
        .unwrap_or_else(|| "loaded".into())
}

#[test]
fn bad_definitions_fail_with_file_line_and_reason() {
    let base = "[body]\nformat = \"json\"\n[[auth]]\ntype = \"none\"\n[event]\ntype = { constant = \"x\" }\nid = { path = \"$.id\" }\n";
    // Unknown key (deny_unknown_fields) on line 2.
    let e = config_err(&base.replace("format = \"json\"", "format = \"json\"\nfromat = 1"));
    assert!(
        e.starts_with("inline.toml:3:") && e.contains("fromat"),
        "{e}"
    );
    // A field that belongs to another auth type.
    let e = config_err(&base.replace("type = \"none\"", "type = \"none\"\nsecrets = [\"x\"]"));
    assert!(
        e.starts_with("inline.toml:3:") && e.contains("does not apply"),
        "{e}"
    );
    // A hostile split path with 2000 nested parentheses is refused, not a stack overflow.
    let hostile = format!(
        "[event]\nsplit = \"$[?{}@.a{}]\"",
        "(".repeat(2000),
        ")".repeat(2000)
    );
    let e = config_err(&base.replace("[event]", &hostile));
    assert!(
        e.starts_with("inline.toml:6:") && e.contains("limit"),
        "{e}"
    );
    // Unset variable.
    let e = config_err(&base.replace(
        "type = \"none\"",
        "type = \"token\"\nquery = \"t\"\ntokens = [\"${NOPE}\"]",
    ));
    assert!(e.starts_with("inline.toml:6:") && e.contains("NOPE"), "{e}");
    // A token of sixteen spaces is long enough but no token.
    let e = config_err(&base.replace(
        "type = \"none\"",
        "type = \"token\"\nquery = \"t\"\ntokens = [\"                \"]",
    ));
    assert!(
        e.starts_with("inline.toml:6:") && e.contains("whitespace"),
        "{e}"
    );
    // No auth at all.
    let e = config_err(&base.replace("[[auth]]\ntype = \"none\"\n", ""));
    assert!(e.contains("auth"), "{e}");
    // Zero limits, "none" beside another check, an XML-only option: each at its own line.
    let e = config_err(&base.replace("format = \"json\"", "format = \"json\"\nmax_bytes = 0"));
    assert!(
        e.starts_with("inline.toml:3:") && e.contains("max_bytes"),
        "{e}"
    );
    let e = config_err(&base.replace("[event]", "[event]\nmax_events = 0"));
    assert!(
        e.starts_with("inline.toml:6:") && e.contains("max_events"),
        "{e}"
    );
    let e = config_err(&base.replace(
        "[event]",
        "[[auth]]\ntype = \"ip_allow_list\"\ncidrs = [\"127.0.0.1/32\"]\n[event]",
    ));
    assert!(e.starts_with("inline.toml:3:") && e.contains("none"), "{e}");
    let e = config_err(&base.replace(
        "format = \"json\"",
        "format = \"json\"\nxml_always_array = [\"Notification\"]",
    ));
    assert!(e.starts_with("inline.toml:3:") && e.contains("xml"), "{e}");
    // Bad CIDR.
    let e = config_err(&base.replace(
        "type = \"none\"",
        "type = \"ip_allow_list\"\ncidrs = [\"10.0.0.0/33\"]",
    ));
    assert!(e.starts_with("inline.toml:5:") && e.contains("CIDR"), "{e}");
    // url_decode: malformed or must-stay-encoded escapes, or no URL in the message.
    let hmac = |extra: &str, message: &str| {
        base.replace(
            "type = \"none\"",
            &format!("type = \"hmac\"\nalgorithm = \"sha256\"\nsecrets = [\"0123456789abcdef0123\"]\nbase_url = \"https://gw.example\"\nmessage = {message}\nsignature = {{ header = \"X-Sig\", encoding = \"hex\" }}\n{extra}"),
        )
    };
    let url = "[\"method\", \"url\", \"body\"]";
    assert_eq!(
        config_err(&hmac("url_decode = [\"%3a\", \"%3A\"]", url)),
        "loaded"
    );
    let e = config_err(&hmac("url_decode = [\"%3A\", \"%G1\"]", url));
    assert!(
        e.starts_with("inline.toml:10:") && e.contains("`%G1` is not a percent-escape"),
        "{e}"
    );
    let e = config_err(&hmac("url_decode = [\"%25\"]", url));
    assert!(
        e.starts_with("inline.toml:10:") && e.contains("must stay encoded"),
        "{e}"
    );
    let e = config_err(&hmac("url_decode = [\"%3A\"]", "[\"body\"]"));
    assert!(
        e.starts_with("inline.toml:3:") && e.contains("neither"),
        "{e}"
    );
    let e = config_err(&base.replace(
        "type = \"none\"",
        "type = \"token\"\nquery = \"t\"\ntokens = [\"0123456789abcdef\"]\nurl_decode = [\"%3A\"]",
    ));
    assert!(
        e.starts_with("inline.toml:3:") && e.contains("`url_decode` does not apply"),
        "{e}"
    );
}

#[test]
fn every_shipped_connector_loads_with_placeholder_secrets() {
    let opts = postgate::connector::LoadOptions {
        env: postgate::connector::Env::ProcessOrPlaceholder,
        ..Default::default()
    };
    let all = postgate::connector::load_dir(&root().join("connectors"), &opts)
        .unwrap_or_else(|e| panic!("{e:?}"));
    assert!(all.len() >= 10, "{:?}", all.keys());
}

/// The gateway builds a Shopify order only where some path reaches; the events it decodes
/// map exactly as from the whole body. HubSpot splits its body, so it is parsed whole.
#[test]
fn shipped_shopify_bodies_are_pruned_to_what_the_mappings_read_and_map_the_same() {
    let mappings =
        postgate::mapping::MappingSet::load_dir(&root().join("mappings")).expect("mappings");
    let vars = [("SHOPIFY_WEBHOOK_SECRET", "test-shopify-secret-0123456789")];
    let whole = shipped("shopify", &vars, 16);
    let mut pruned = shipped("shopify", &vars, 16);
    pruned.prune_to(mappings.json_paths("shopify"));
    assert!(pruned.is_pruned() && !whole.is_pruned());

    let body = fixture("derived/shopify_orders_paid.note_attribute_click_id.json");
    let request = req(
        "POST",
        "/hooks/shopify",
        &[
            ("X-Shopify-Topic", "orders/paid"),
            ("X-Shopify-Webhook-Id", "wh-prune"),
        ],
        body,
        Utc::now(),
    );
    let map = |c: &postgate::connector::Connector| {
        let verified = c.parse_unverified(&request).expect("parses");
        let events = c.decode(verified).expect("decodes");
        let payload = events[0].payload().clone();
        let postbacks = mappings.map(&events[0]).expect("maps");
        (payload, serde_json::to_string(&postbacks).expect("json"))
    };
    let (small, from_pruned) = map(&pruned);
    let (full, from_whole) = map(&whole);
    assert_eq!(from_pruned, from_whole);
    assert!(from_whole.contains("\"purchase\""), "{from_whole}");
    // The pruned value lacks what nobody reads (line items, customer, addresses …).
    assert!(full.get("line_items").is_some() && small.get("line_items").is_none());
    assert!(small.to_string().len() * 3 < full.to_string().len());

    let mut hubspot = shipped(
        "hubspot",
        &[
            ("HUBSPOT_CLIENT_SECRET", "test-hubspot-secret-0123456789"),
            ("HUBSPOT_PUBLIC_BASE_URL", "https://gateway.example"),
        ],
        16,
    );
    hubspot.prune_to(mappings.json_paths("hubspot"));
    assert!(!hubspot.is_pruned(), "split bodies are parsed whole");
}
