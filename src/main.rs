//! `capstan`: the registry's single binary. `serve` runs every role in one
//! process (embedded mode) or one role (`--role`); `verify` checks a config.

mod cli;
mod roles;

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    cli::Cli::parse().run().await
}
