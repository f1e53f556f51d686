//! The `postgate` command: `serve` runs the gateway; `check` validates the configuration,
//! connectors and mappings and runs every mapping test case; `map` shows what a payload
//! becomes; `deliveries replay` replays outbound postbacks by filter.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use postgate::config::Settings;
use postgate::connector::{Connector, Env, LoadOptions};
use postgate::mapping::MappingSet;
use postgate::mapping::check::{map_payload_explained, parse_header_arg, read_payload};
use postgate::startup::{Application, shutdown_signal};

// Request handling allocates many small values (parsed JSON, strings); mimalloc's
// thread-local free lists avoid glibc malloc's lock contention between worker threads.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(version, about = "Server-to-server conversion-tracking gateway")]
struct Cli {
    /// Configuration file.
    #[arg(
        long,
        short,
        env = "POSTGATE_CONFIG",
        default_value = "postgate.toml",
        global = true
    )]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve,
    /// Validate the configuration, connectors and mappings, and run every mapping test case
    /// (non-zero exit with `file:line: reason` on failure).
    Check,
    /// Print the canonical postbacks a payload becomes, as a JSON array (no signature check,
    /// no side effects).
    Map {
        /// Connector name (`connectors/<name>.toml`).
        connector: String,
        /// File holding the request body exactly as the source sends it.
        payload: PathBuf,
        /// A request header, `--header 'Name: value'`; repeatable.
        #[arg(long = "header", short = 'H')]
        headers: Vec<String>,
        /// Path and query the source calls (query-string sources carry their data there).
        #[arg(long, default_value = "/")]
        path: String,
        #[arg(long, default_value = "POST")]
        method: String,
    },
    /// Outbound postback deliveries.
    Deliveries {
        #[command(subcommand)]
        action: DeliveriesCommand,
    },
}

#[derive(Subcommand)]
enum DeliveriesCommand {
    /// Replay deliveries: a new attempt series of the same delivery (same webhook-id), never a
    /// new conversion. Works beside a running gateway (same database file).
    Replay {
        /// One delivery by id.
        #[arg(long)]
        id: Option<String>,
        /// Affiliate id (configuration key).
        #[arg(long)]
        affiliate: Option<String>,
        /// Offer id (configuration key).
        #[arg(long)]
        offer: Option<String>,
        /// Deliveries created at or after this time (RFC 3339).
        #[arg(long)]
        since: Option<chrono::DateTime<chrono::Utc>>,
        /// Deliveries created before this time (RFC 3339).
        #[arg(long)]
        until: Option<chrono::DateTime<chrono::Utc>>,
        /// dead (default), delivered, paused or any; pending ones are never replayed.
        #[arg(long)]
        state: Option<String>,
        /// Only count what would be replayed.
        #[arg(long)]
        dry_run: bool,
    },
}

fn main() -> ExitCode {
    postgate::telemetry::init();
    let cli = Cli::parse();
    if let Command::Map {
        connector,
        payload,
        headers,
        path,
        method,
    } = &cli.command
    {
        let (connectors, mappings) = definition_dirs(&cli.config);
        return map(
            connector,
            payload,
            headers,
            (path, method),
            (&connectors, &mappings),
        );
    }
    let settings = match Settings::load(&cli.config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Command::Check => check(&cli.config, &settings),
        Command::Serve => serve(settings),
        Command::Map { .. } => ExitCode::SUCCESS,
        Command::Deliveries {
            action:
                DeliveriesCommand::Replay {
                    id,
                    affiliate,
                    offer,
                    since,
                    until,
                    state,
                    dry_run,
                },
        } => replay(
            &settings,
            postgate::delivery::admin::ReplayFilter {
                id,
                affiliate,
                offer,
                since,
                until,
                state,
            },
            dry_run,
        ),
    }
}

fn replay(
    settings: &Settings,
    filter: postgate::delivery::admin::ReplayFilter,
    dry_run: bool,
) -> ExitCode {
    if filter.is_empty() {
        eprintln!("error: give --id, or at least one of --affiliate, --offer, --since, --until");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let url = &settings.server.database_url;
        let result = async {
            // Opening migrates (idempotently), so apalis' tables exist even on a fresh file.
            drop(postgate::store::open(url, 1).await?);
            let pool = postgate::store::worker_pool(url, 2).await?;
            let deliveries = postgate::delivery::admin::Deliveries::new(pool);
            let ids = deliveries.select(&filter).await?;
            if dry_run {
                println!("{} deliveries match", ids.len());
                return Ok(());
            }
            let bar = indicatif::ProgressBar::new(ids.len() as u64);
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "{bar:40} {pos}/{len} deliveries replayed ({per_sec}, eta {eta})",
            ) {
                bar.set_style(style);
            }
            let replayed = deliveries.replay(&ids, |n| bar.inc(n as u64)).await?;
            bar.finish();
            println!(
                "{replayed} of {} matching deliveries replayed; the gateway's worker sends them",
                ids.len()
            );
            Ok::<(), postgate::store::StoreError>(())
        }
        .await;
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {}", postgate::store::writer::error_chain(&e));
                ExitCode::FAILURE
            }
        }
    })
}

/// Definitions are checked with placeholders for unset secrets, so `check` runs on a
/// laptop or in CI without production credentials.
fn offline_options() -> LoadOptions {
    LoadOptions {
        env: Env::ProcessOrPlaceholder,
        ..LoadOptions::default()
    }
}

fn check(config: &std::path::Path, settings: &Settings) -> ExitCode {
    println!(
        "{}: ok ({} advertisers, {} affiliates, {} offers, {} webhook sources)",
        config.display(),
        settings.advertisers.len(),
        settings.affiliates.len(),
        settings.offers.len(),
        settings.hooks.enabled.len()
    );
    let dirs = postgate::mapping::check::Dirs {
        root: std::path::Path::new("."),
        connectors: &settings.hooks.connectors_dir,
        mappings: &settings.hooks.mappings_dir,
    };
    let report = postgate::mapping::check::check(&dirs, &offline_options());
    for error in &report.errors {
        eprintln!("{error}");
    }
    println!(
        "connectors: {}, mappings: {}, test cases: {}/{} passed",
        report.connectors, report.mappings, report.cases_passed, report.cases_run
    );
    for hook in &settings.hooks.enabled {
        if !settings
            .hooks
            .connectors_dir
            .join(format!("{}.toml", hook.connector))
            .is_file()
        {
            eprintln!(
                "{}: hooks: no connector file {}/{}.toml",
                config.display(),
                settings.hooks.connectors_dir.display(),
                hook.connector
            );
            return ExitCode::FAILURE;
        }
    }
    if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The connectors and mappings directories `map` reads: the configuration's `[paths]` when
/// the configuration loads, else `connectors/` and `mappings/` (building a mapping needs no
/// production configuration or secrets).
fn definition_dirs(config: &std::path::Path) -> (PathBuf, PathBuf) {
    let defaults = || (PathBuf::from("connectors"), PathBuf::from("mappings"));
    if !config.is_file() {
        return defaults();
    }
    match Settings::load(config) {
        Ok(settings) => (settings.hooks.connectors_dir, settings.hooks.mappings_dir),
        Err(e) => {
            eprintln!("note: {e}; reading connectors/ and mappings/");
            defaults()
        }
    }
}

fn map(
    connector: &str,
    payload: &std::path::Path,
    headers: &[String],
    (path, method): (&str, &str),
    (connectors_dir, mappings_dir): (&std::path::Path, &std::path::Path),
) -> ExitCode {
    let fail = |message: String| {
        eprintln!("error: {message}");
        ExitCode::FAILURE
    };
    let file = connectors_dir.join(format!("{connector}.toml"));
    let connector = match Connector::load(&file, &offline_options()) {
        Ok(c) => c,
        Err(e) => return fail(e.to_string()),
    };
    let mappings = match MappingSet::load_dir(mappings_dir) {
        Ok(m) => m,
        Err(errors) => {
            return fail(
                errors
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("\n"),
            );
        }
    };
    let body = match read_payload(payload, connector.max_body_bytes()) {
        Ok(b) => b,
        Err(e) => return fail(e),
    };
    let mut parsed = Vec::new();
    for h in headers {
        match parse_header_arg(h) {
            Some(pair) => parsed.push(pair),
            None => return fail(format!("--header {h:?}: write 'Name: value'")),
        }
    }
    match map_payload_explained(&connector, &mappings, method, path, &parsed, body.into()) {
        Ok((postbacks, notes)) => match serde_json::to_string_pretty(&postbacks) {
            Ok(json) => {
                println!("{json}");
                // Optional fields left empty: often the reason a postback lacks a click ID.
                for note in notes {
                    eprintln!("note: {note}");
                }
                ExitCode::SUCCESS
            }
            Err(e) => fail(e.to_string()),
        },
        Err(e) => fail(format!("{} maps to nothing: {e}", payload.display())),
    }
}

fn serve(settings: Settings) -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let app = match Application::build(&settings).await {
            Ok(app) => app,
            Err(e) => {
                eprintln!("error: {}", postgate::store::writer::error_chain(&e));
                return ExitCode::FAILURE;
            }
        };
        match app.run_until(shutdown_signal()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: server failed: {e}");
                ExitCode::FAILURE
            }
        }
    })
}
