//! The `medflow` binary.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use medflow::config::Settings;
use medflow::startup::{Application, StopReason};
use medflow::telemetry;

#[derive(Debug, Parser)]
#[command(
    name = "medflow",
    version,
    about = "Medical documentation backend of a clinic"
)]
struct Cli {
    /// A TOML file layered over the built-in defaults (see config.toml).
    #[arg(long, global = true, env = "MEDFLOW_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs the service (the default).
    Serve,
    /// Loads and validates the configuration, then exits.
    CheckConfig,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::load(cli.config.as_deref()) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("medflow: {error}");
            return ExitCode::from(2);
        }
    };
    match cli.command.unwrap_or(Command::Serve) {
        Command::CheckConfig => {
            println!("configuration is valid");
            ExitCode::SUCCESS
        }
        Command::Serve => serve(settings),
    }
}

fn serve(settings: Settings) -> ExitCode {
    telemetry::init_logging(&settings.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("medflow: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let application = match Application::build(settings).await {
            Ok(application) => application,
            Err(error) => {
                tracing::error!(error = format!("{error:#}"), "start-up failed");
                return ExitCode::FAILURE;
            }
        };
        match application.run_until_stopped().await {
            Ok(StopReason::Signal) => ExitCode::SUCCESS,
            Ok(reason) => {
                tracing::error!(reason = ?reason, "medflow stopped abnormally");
                ExitCode::FAILURE
            }
            Err(error) => {
                tracing::error!(error = format!("{error:#}"), "shutdown failed");
                ExitCode::FAILURE
            }
        }
    })
}
