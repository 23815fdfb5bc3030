//! The `medflow` binary.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use medflow::asyncapi;
use medflow::config::Settings;
use medflow::startup::{Application, StopReason};
use medflow::telemetry;
use medflow_http::auth::{DevToken, mint_dev_token};
use medflow_http::policy::Role;
use uuid::Uuid;

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
    /// Prints a development token signed with auth.dev_hs256_secret.
    Token(TokenArgs),
    /// Prints the GraphQL schema (SDL), as committed in `http/schema.graphql`.
    GraphqlSchema,
    /// Prints the OpenAPI document (JSON), as served at `/api/v1/openapi.json`.
    Openapi,
    /// Prints the AsyncAPI document of the Kafka channels for the configuration (JSON), as
    /// served at `/api/v1/asyncapi.json`.
    Asyncapi,
}

#[derive(Debug, clap::Args)]
struct TokenArgs {
    /// A role: doctor, registrar, admin, accountant, quality_control, management, patient.
    /// Repeat for several.
    #[arg(long = "role", required = true, value_parser = parse_role)]
    roles: Vec<Role>,
    /// The token subject: the acting user's id (a doctor's id for a doctor who signs).
    #[arg(long)]
    sub: Uuid,
    /// For the patient role: the patient record the token may see.
    #[arg(long)]
    patient_id: Option<Uuid>,
    /// Lifetime, e.g. 15m, 1h, 8h.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    ttl: std::time::Duration,
}

fn parse_role(name: &str) -> Result<Role, String> {
    Role::parse(name).ok_or_else(|| {
        let names: Vec<&str> = Role::ALL.iter().map(|role| role.as_str()).collect();
        format!("unknown role {name:?}; one of {}", names.join(", "))
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(cli.command, Some(Command::GraphqlSchema)) {
        // Needs no configuration: the schema is the code's.
        print!("{}", medflow_http::graphql::sdl());
        return ExitCode::SUCCESS;
    }
    if matches!(cli.command, Some(Command::Openapi)) {
        match serde_json::to_string_pretty(medflow_http::openapi::document()) {
            Ok(json) => println!("{json}"),
            Err(error) => {
                eprintln!("medflow: {error}");
                return ExitCode::FAILURE;
            }
        }
        return ExitCode::SUCCESS;
    }
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
        Command::Token(args) => token(&settings, args),
        Command::Asyncapi => match serde_json::to_string_pretty(&asyncapi::document(&settings)) {
            Ok(json) => {
                println!("{json}");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("medflow: {error}");
                ExitCode::FAILURE
            }
        },
        Command::GraphqlSchema | Command::Openapi => {
            unreachable!("handled before the configuration is loaded")
        }
    }
}

fn token(settings: &Settings, args: TokenArgs) -> ExitCode {
    if args.roles.contains(&Role::Patient) && args.patient_id.is_none() {
        eprintln!("medflow: a patient token needs --patient-id");
        return ExitCode::from(2);
    }
    let request = DevToken {
        subject: args.sub.to_string(),
        roles: args.roles,
        patient_id: args.patient_id,
        ttl: args.ttl,
    };
    match mint_dev_token(&settings.auth.to_settings(), &request) {
        Ok(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("medflow: {error}");
            ExitCode::from(2)
        }
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
        let stopped = application.run_until_stopped().await;
        telemetry::shutdown_traces();
        match stopped {
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
