//! `capstan-bench`: a load client that speaks the OCI distribution API to any
//! registry URL (Capstan, CNCF distribution, or a static server for manifest
//! reads). Each subcommand runs one scenario and prints one JSON line with the
//! measured figures and the client's own CPU time, so a report can show that
//! the client was not the bottleneck. `bench/run.sh` drives it.

mod cli;
mod content;
mod cpu;
mod pull;
mod push;
mod registry;
mod report;
mod small;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("capstan-bench: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    runtime.block_on(cli::run(cli))
}
