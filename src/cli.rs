//! Command-line interface.

use crate::roles::{self, Role};
use capstan_runtime::config::{self, Config, Loaded};
use capstan_runtime::telemetry::Exporter;
use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "capstan",
    version,
    about = "Capstan OCI container image registry"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the registry (every role by default).
    Serve {
        /// zot-style JSON or YAML configuration file.
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// Which role to run.
        #[arg(long, value_enum, default_value_t = Role::All)]
        role: Role,
        /// Address to bind, overriding the config (gRPC roles: services.<role>.listen).
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
    /// Validate a configuration file and explain what is wrong with it.
    Verify {
        /// The file to check.
        file: PathBuf,
    },
    /// Collect garbage now: remove repository links that no manifest
    /// references and blobs that nothing links, older than `gcDelay`.
    Gc {
        /// zot-style JSON or YAML configuration file.
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// Change nothing; list what would be removed and the bytes freed.
        #[arg(long)]
        dry_run: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Ask a role (its gRPC address, e.g. `http://127.0.0.1:7001`) whether
    /// it serves, over standard gRPC health: exit 0 when it does (for
    /// container healthchecks).
    Probe {
        /// The role's address.
        url: String,
    },
    /// The registries this client asks, by name (like `zli config`).
    Client {
        #[command(subcommand)]
        command: crate::client::ClientCommand,
    },
    /// A registry's repositories, through its search extension.
    Repo {
        #[command(subcommand)]
        command: crate::client::RepoCommand,
    },
    /// A registry's images, through its search extension.
    Image {
        #[command(subcommand)]
        command: crate::client::ImageCommand,
    },
    /// Search a registry: repositories by name, images by `repo:tag`,
    /// `:tag` or digest.
    Search {
        query: String,
        #[command(flatten)]
        target: crate::client::Target,
    },
}

/// A client command's outcome as the exit code, its error printed.
fn finish(result: Result<(), crate::client::ClientError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Why a configuration cannot be used.
#[derive(Debug, thiserror::Error)]
enum LoadError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// A meaning check of a role (e.g. inconsistent auth settings).
    #[error("{0}")]
    Role(String),
}

fn load(path: Option<&Path>) -> Result<Loaded, LoadError> {
    let env = std::env::vars();
    let loaded = match path {
        Some(p) => Config::load(p, env)?,
        None => Config::defaults(env)?,
    };
    capstan_auth::check_config(&loaded.config).map_err(LoadError::Role)?;
    capstan_sync::check_config(&loaded.config).map_err(LoadError::Role)?;
    capstan_meta::check_config(&loaded.config).map_err(LoadError::Role)?;
    Ok(loaded)
}

/// [`load`], then start logging (and traces, named `service`) as the
/// configuration says; a failure is printed and becomes the exit code.
/// Keep the exporter until the process ends.
fn load_and_log(path: Option<&Path>, service: &str) -> Result<(Loaded, Exporter), ExitCode> {
    let loaded = load(path).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::FAILURE
    })?;
    let exporter = capstan_runtime::logging::init(&loaded.config.log, service).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::FAILURE
    })?;
    Ok((loaded, exporter))
}

impl Cli {
    pub async fn run(self) -> ExitCode {
        match self.command {
            Command::Verify { file } => match load(Some(&file)) {
                Ok(loaded) => {
                    for k in &loaded.unknown_keys {
                        eprintln!("warning: unknown key `{k}` is ignored");
                    }
                    for (k, why) in loaded.ignored_keys() {
                        eprintln!("warning: `{k}` is ignored: {why}");
                    }
                    for (k, v) in config::summary(&loaded.config) {
                        println!("{k}: {v}");
                    }
                    println!("{} is valid", file.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            },
            Command::Gc {
                config,
                dry_run,
                json,
            } => {
                let (loaded, _traces) = match load_and_log(config.as_deref(), "capstan-gc") {
                    Ok(l) => l,
                    Err(code) => return code,
                };
                match crate::gc::run(loaded.config, dry_run, json).await {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("error: {e:#}");
                        ExitCode::FAILURE
                    }
                }
            }
            Command::Client { command } => finish(crate::client::configure(command)),
            Command::Repo { command } => finish(crate::client::repo_list(command).await),
            Command::Image { command } => finish(crate::client::image_list(command).await),
            Command::Search { query, target } => finish(crate::client::search(query, target).await),
            Command::Probe { url } => match probe(&url).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("{url}: {e}");
                    ExitCode::FAILURE
                }
            },
            Command::Serve {
                config,
                role,
                listen,
            } => {
                let (loaded, _traces) = match load_and_log(config.as_deref(), role.service_name()) {
                    Ok(l) => l,
                    Err(code) => return code,
                };
                for k in &loaded.unknown_keys {
                    tracing::warn!(key = %k, "unknown configuration key ignored");
                }
                for (k, why) in loaded.ignored_keys() {
                    tracing::warn!(key = %k, reason = why, "configuration key ignored");
                }
                match roles::serve(loaded.config, role, listen).await {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        tracing::error!(error = %format!("{e:#}"), "capstan stopped");
                        eprintln!("error: {e:#}");
                        ExitCode::FAILURE
                    }
                }
            }
        }
    }
}

/// Whether the role at `url` answers "serving" to a gRPC health check
/// within 3 s.
async fn probe(url: &str) -> Result<(), String> {
    use tonic_health::pb::health_check_response::ServingStatus;
    let transport = capstan_runtime::grpc::connect(url).map_err(|e| e.to_string())?;
    let mut client = tonic_health::pb::health_client::HealthClient::new(transport);
    let asked = client.check(tonic_health::pb::HealthCheckRequest::default());
    match tokio::time::timeout(std::time::Duration::from_secs(3), asked).await {
        Err(_) => Err("no answer in 3 s".into()),
        Ok(Err(status)) => Err(status.message().to_string()),
        Ok(Ok(r)) if r.get_ref().status == ServingStatus::Serving as i32 => Ok(()),
        Ok(Ok(_)) => Err("not serving".into()),
    }
}
