//! The operator's commands, run as a user would.

use std::process::Command;

fn postgate(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_postgate"))
        .args(args)
        .env_remove("POSTGATE_CONFIG")
        .output()
        .expect("run postgate")
}

/// Runs `postgate map …`, which must succeed: its JSON output and its stderr (the notes).
fn mapped(args: &[&str]) -> (serde_json::Value, String) {
    let out = postgate(args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    let json = serde_json::from_slice(&out.stdout).expect("JSON array");
    (json, stderr)
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
    assert!(stdout.contains("test cases: 34/34 passed"), "{stdout}");
}

#[test]
fn check_reports_a_bad_config_with_file_and_line() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[server]\nlisen = 1\n").expect("write");
    let out = postgate(&["check", "--config", path.to_str().expect("utf-8")]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bad.toml:2: "), "{stderr}");
}

#[test]
fn map_prints_canonical_postbacks_or_says_why_nothing_matched() {
    let (json, _) = mapped(&[
        "map",
        "shopify",
        "tests/fixtures/derived/shopify_orders_paid.landing_site_subid.json",
        "--header",
        "X-Shopify-Topic: orders/paid",
        "--header",
        "X-Shopify-Webhook-Id: w-1",
    ]);
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

    // An order that maps but carries no click ID: the postback is printed, and a note says
    // which paths the click ID was looked for at.
    let (json, stderr) = mapped(&[
        "map",
        "shopify",
        "tests/fixtures/shopify/orders_create.shopify-dev-2026-07.json",
        "-H",
        "X-Shopify-Topic: orders/paid",
        "-H",
        "X-Shopify-Webhook-Id: w-3",
    ]);
    assert!(json[0]["click_id"].is_null(), "{json}");
    assert!(
        stderr.contains("note: ")
            && stderr.contains("field `click_id`: nothing found")
            && stderr.contains("$.landing_site"),
        "{stderr}"
    );
    assert!(!stderr.contains("field `amount`"), "{stderr}");
}

/// A project in `dir` with its own directories: a copy of the Shopify connector named
/// `myshop` and its orders/paid mapping, passed through `edit`. Returns the config's path.
fn myshop_project(dir: &std::path::Path, edit: impl Fn(String) -> String) -> String {
    let connectors = dir.join("conn");
    let mappings = dir.join("maps");
    std::fs::create_dir_all(mappings.join("myshop")).expect("dirs");
    std::fs::create_dir_all(&connectors).expect("dirs");
    std::fs::copy("connectors/shopify.toml", connectors.join("myshop.toml")).expect("copy");
    let mapping = std::fs::read_to_string("mappings/shopify/orders_paid.toml").expect("mapping");
    std::fs::write(
        mappings.join("myshop/orders_paid.toml"),
        edit(mapping.replace("source = \"shopify\"", "source = \"myshop\"")),
    )
    .expect("write");
    let config = dir.join("postgate.toml");
    let demo = std::fs::read_to_string("postgate.toml").expect("demo config");
    std::fs::write(
        &config,
        format!(
            "{demo}\n[paths]\nconnectors = {:?}\nmappings = {:?}\n",
            connectors.display().to_string(),
            mappings.display().to_string()
        ),
    )
    .expect("write");
    config.to_str().expect("utf-8").to_owned()
}

/// `check` and `map` read the directories the configuration names in `[paths]`, as `serve`
/// does: here a copy of the Shopify connector under another name, with its mapping.
#[test]
fn check_and_map_read_the_configured_directories() {
    let dir = tempfile::tempdir().expect("dir");
    let config = myshop_project(dir.path(), |m| m);
    let config = config.as_str();

    let out = postgate(&["check", "--config", config]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stdout.contains("connectors: 1, mappings: 1, test cases: 7/7 passed"),
        "{stdout}"
    );

    let (json, _) = mapped(&[
        "map",
        "myshop",
        "tests/fixtures/derived/shopify_orders_paid.landing_site_subid.json",
        "--config",
        config,
        "-H",
        "X-Shopify-Topic: orders/paid",
        "-H",
        "X-Shopify-Webhook-Id: w-1",
    ]);
    assert_eq!(json[0]["transaction_id"], "820982911946154508");
}

/// A mapping file's test case cannot make `check` read files outside the project (and print
/// them in a failure), and neither command reads more than the connector's body limit.
#[test]
fn fixtures_stay_inside_the_project_and_payloads_within_the_body_limit() {
    // `check` on a project whose first Shopify test case names `fixture`: it must fail; its
    // whole output.
    let refused = |fixture: &str| {
        let first = "tests/fixtures/shopify/orders_create.shopify-dev-2026-07.json";
        let dir = tempfile::tempdir().expect("dir");
        let config = myshop_project(dir.path(), |m| m.replacen(first, fixture, 1));
        let out = postgate(&["check", "--config", &config]);
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.status.success(), "{all}");
        all
    };
    for outside in ["../../../../../../../../etc/passwd", "/etc/passwd"] {
        let all = refused(outside);
        assert!(all.contains("relative to the project root"), "{all}");
    }
    // Nor through a symlink inside the project that points out of it.
    let link = std::path::Path::new("target").join(format!("fixture-link-{}", std::process::id()));
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink("/etc/hostname", &link).expect("symlink");
    let all = refused(link.to_str().expect("utf-8"));
    let _ = std::fs::remove_file(&link);
    assert!(all.contains("resolves outside the project root"), "{all}");

    let out = postgate(&[
        "map",
        "shopify",
        "/dev/zero",
        "-H",
        "X-Shopify-Topic: orders/paid",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("larger than the connector's body limit"),
        "{stderr}"
    );
}
