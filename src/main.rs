//! The `postgate` command: `serve` runs the gateway, `check` validates the configuration.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use postgate::config::Settings;
use postgate::startup::{Application, shutdown_signal};

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
    /// Validate the configuration and exit (non-zero with `file: key: reason` on error).
    Check,
}

fn main() -> ExitCode {
    postgate::telemetry::init();
    let cli = Cli::parse();
    let settings = match Settings::load(&cli.config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Command::Check => {
            println!(
                "{}: ok ({} advertisers, {} affiliates, {} offers)",
                cli.config.display(),
                settings.advertisers.len(),
                settings.affiliates.len(),
                settings.offers.len()
            );
            ExitCode::SUCCESS
        }
        Command::Serve => serve(settings),
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
