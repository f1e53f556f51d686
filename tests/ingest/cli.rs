//! The operator's commands, run as a user would.

use std::process::Command;

fn postgate(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_postgate"))
        .args(args)
        .env_remove("POSTGATE_CONFIG")
        .output()
        .expect("run postgate")
}

#[test]
fn check_validates_the_demo_config_and_runs_every_mapping_case() {
    let out = postgate(&["check"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("postgate.toml: ok"), "{stdout}");
    assert!(stdout.contains("test cases: 30/30 passed"), "{stdout}");
}

#[test]
fn check_reports_a_bad_config_with_file_and_line() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[server]\nlisen = 1\n").expect("write");
    let out = postgate(&["check", "--config", path.to_str().expect("utf-8")]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bad.toml"), "{stderr}");
    assert!(stderr.contains("line 2"), "{stderr}");
}

#[test]
fn map_prints_canonical_postbacks_or_says_why_nothing_matched() {
    let out = postgate(&[
        "map",
        "shopify",
        "tests/fixtures/derived/shopify_orders_paid.landing_site_subid.json",
        "--header",
        "X-Shopify-Topic: orders/paid",
        "--header",
        "X-Shopify-Webhook-Id: w-1",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON array");
    assert_eq!(json[0]["transaction_id"], "820982911946154508");
    assert_eq!(json[0]["amount"], "404.95");

    let out = postgate(&[
        "map",
        "shopify",
        "tests/fixtures/shopify/orders_create.shopify-dev-2026-07.json",
        "-H",
        "X-Shopify-Topic: orders/create",
        "-H",
        "X-Shopify-Webhook-Id: w-2",
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("orders/create"), "{stderr}");
}
