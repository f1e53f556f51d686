//! The `postgate` command: `serve` runs the gateway; `check` validates the configuration,
//! connectors and mappings and runs every mapping test case; `map` shows what a payload
//! becomes.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use postgate::config::Settings;
use postgate::connector::{Connector, Env, LoadOptions};
use postgate::mapping::MappingSet;
use postgate::mapping::check::{map_payload, parse_header_arg};
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
        return map(connector, payload, headers, path, method);
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
    }
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
    let report = postgate::mapping::check::check(std::path::Path::new("."), &offline_options());
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

fn map(
    connector: &str,
    payload: &std::path::Path,
    headers: &[String],
    path: &str,
    method: &str,
) -> ExitCode {
    let fail = |message: String| {
        eprintln!("error: {message}");
        ExitCode::FAILURE
    };
    let file = PathBuf::from("connectors").join(format!("{connector}.toml"));
    let connector = match Connector::load(&file, &offline_options()) {
        Ok(c) => c,
        Err(e) => return fail(e.to_string()),
    };
    let mappings = match MappingSet::load_dir(std::path::Path::new("mappings")) {
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
    let body = match std::fs::read(payload) {
        Ok(b) => b,
        Err(e) => return fail(format!("{}: {e}", payload.display())),
    };
    let mut parsed = Vec::new();
    for h in headers {
        match parse_header_arg(h) {
            Some(pair) => parsed.push(pair),
            None => return fail(format!("--header {h:?}: write 'Name: value'")),
        }
    }
    match map_payload(&connector, &mappings, method, path, &parsed, body.into()) {
        Ok(postbacks) => match serde_json::to_string_pretty(&postbacks) {
            Ok(json) => {
                println!("{json}");
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
