//! `capstan`: the registry's single binary. `serve` runs every role in one
//! process (embedded mode) or one role (`--role`); `verify` checks a config;
//! `gc` collects garbage now or says what it would remove; `client`,
//! `repo`, `image` and `search` ask a registry, like zot's `zli`.

mod cli;
mod client;
mod gc;
mod roles;

use clap::Parser;

/// jemalloc returns freed blob buffers to the system instead of leaving them
/// in per-thread glibc arenas, which keeps RSS flat across large transfers.
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// File I/O runs on tokio's blocking pool; a small pool bounds the memory
/// that concurrent reads and writes hold.
const MAX_BLOCKING_THREADS: usize = 16;

fn main() -> std::process::ExitCode {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(MAX_BLOCKING_THREADS)
        .build()
        .expect("tokio runtime");
    runtime.block_on(cli::Cli::parse().run())
}
