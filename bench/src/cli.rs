//! Command line: one subcommand per scenario, dispatched to its module.

use crate::{content::Content, pull, push, registry::Registry, report, small};
use clap::{Args, Parser, Subcommand};
use std::{path::PathBuf, process::ExitCode, time::Duration};

#[derive(Parser, Debug)]
#[command(
    name = "capstan-bench",
    version,
    about = "OCI distribution load client"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// Options every scenario takes.
#[derive(Args, Debug, Clone)]
pub struct Target {
    /// Registry base URL, e.g. http://127.0.0.1:5000
    #[arg(long)]
    pub url: String,
    /// Per-request timeout in seconds (bounds every request).
    #[arg(long, default_value_t = 600)]
    pub timeout_s: u64,
    /// Basic credentials `user:password` sent with every request.
    #[arg(long)]
    pub basic: Option<String>,
}

/// How a whole blob is uploaded in one request body.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadMethod {
    /// Probe once with a tiny blob: single POST if the registry answers 201, else POST + PUT.
    Auto,
    /// Single `POST /v2/<repo>/blobs/uploads/?digest=` carrying the bytes.
    Post,
    /// Empty `POST` to open a session, then `PUT <location>?digest=` carrying the bytes.
    PostPut,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Push one generated blob in a single request body; reports MiB/s.
    PushMono {
        #[command(flatten)]
        target: Target,
        #[arg(long, default_value_t = 256)]
        size_mib: u64,
        #[arg(long, default_value = "bench")]
        repo: String,
        /// Seed of the generated content (different seeds give different blobs).
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long, value_enum, default_value_t = UploadMethod::Auto)]
        method: UploadMethod,
        /// Push this many blobs (seeds `seed`, `seed + 1`, …) one after the
        /// other with no pause, as a CI pipeline pushes an image's layers.
        #[arg(long, default_value_t = 1)]
        count: u64,
    },
    /// Push one generated blob as POST, PATCH chunks, final PUT; reports MiB/s.
    PushChunked {
        #[command(flatten)]
        target: Target,
        #[arg(long, default_value_t = 256)]
        size_mib: u64,
        #[arg(long, default_value_t = 16)]
        chunk_mib: u64,
        #[arg(long, default_value = "bench")]
        repo: String,
        #[arg(long, default_value_t = 2)]
        seed: u64,
    },
    /// Pull a blob, hashing as it streams, and verify it; reports MiB/s.
    Pull {
        #[command(flatten)]
        target: Target,
        #[arg(long, default_value = "bench")]
        repo: String,
        #[arg(long)]
        digest: String,
        #[arg(long)]
        expect_size: u64,
        /// Seed the blob was pushed from (push-mono/push-chunked --seed):
        /// verify with XXH3 of that content instead of SHA-256 inline.
        #[arg(long)]
        seed: Option<u64>,
    },
    /// Push many small images (config + one 4 KiB layer + manifest by tag); reports images/s.
    SmallImages {
        #[command(flatten)]
        target: Target,
        #[arg(long, default_value_t = 200)]
        count: usize,
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        #[arg(long, default_value = "bench/small-images")]
        repo: String,
        #[arg(long, value_enum, default_value_t = UploadMethod::Auto)]
        method: UploadMethod,
    },
    /// Push many small distinct blobs that no manifest references (garbage
    /// for a collection to reclaim); reports blobs/s.
    Orphans {
        #[command(flatten)]
        target: Target,
        #[arg(long, default_value_t = 100_000)]
        count: usize,
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        #[arg(long, default_value = "bench/orphans")]
        repo: String,
    },
    /// Push one deterministic small image as bench/small:latest; print its digest
    /// and write the manifest bytes to --out.
    SeedManifest {
        #[command(flatten)]
        target: Target,
        #[arg(long, default_value = "bench/small")]
        repo: String,
        #[arg(long, default_value = "latest")]
        tag: String,
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

impl Command {
    fn name(&self) -> &'static str {
        match self {
            Command::PushMono { .. } => "push-mono",
            Command::PushChunked { .. } => "push-chunked",
            Command::Pull { .. } => "pull",
            Command::SmallImages { .. } => "small-images",
            Command::SeedManifest { .. } => "seed-manifest",
            Command::Orphans { .. } => "orphans",
        }
    }

    fn target(&self) -> &Target {
        match self {
            Command::PushMono { target, .. }
            | Command::PushChunked { target, .. }
            | Command::Pull { target, .. }
            | Command::SmallImages { target, .. }
            | Command::SeedManifest { target, .. }
            | Command::Orphans { target, .. } => target,
        }
    }
}

/// Run the scenario and print its JSON line; a failure prints `ok: false`
/// with the error text (status code and body included) and exits 1.
pub async fn run(cli: Cli) -> ExitCode {
    let cmd = cli.command;
    let name = cmd.name();
    let target = cmd.target().clone();
    let outcome = async {
        let reg = Registry::new(
            &target.url,
            Duration::from_secs(target.timeout_s),
            target.basic.as_deref(),
        )?;
        match cmd {
            Command::PushMono {
                size_mib,
                repo,
                seed,
                method,
                count,
                ..
            } if count > 1 => {
                push::back_to_back(&reg, &repo, size_mib << 20, seed, count, method).await
            }
            Command::PushMono {
                size_mib,
                repo,
                seed,
                method,
                ..
            } => push::mono(&reg, &repo, size_mib << 20, seed, method).await,
            Command::PushChunked {
                size_mib,
                chunk_mib,
                repo,
                seed,
                ..
            } => push::chunked(&reg, &repo, size_mib << 20, chunk_mib << 20, seed).await,
            Command::Pull {
                repo,
                digest,
                expect_size,
                seed,
                ..
            } => {
                let content = seed.map(|seed| Content::new(seed, expect_size));
                pull::blob(&reg, &repo, &digest, expect_size, content).await
            }
            Command::SmallImages {
                count,
                concurrency,
                repo,
                method,
                ..
            } => small::images(&reg, &repo, count, concurrency, method).await,
            Command::SeedManifest { repo, tag, out, .. } => {
                small::seed(&reg, &repo, &tag, out.as_deref()).await
            }
            Command::Orphans {
                count,
                concurrency,
                repo,
                ..
            } => small::orphans(&reg, &repo, count, concurrency).await,
        }
    }
    .await;
    report::emit(name, &target.url, outcome)
}
