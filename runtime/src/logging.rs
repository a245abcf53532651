//! Structured logs: one `tracing` subscriber per process, text or JSON, to
//! standard error or a file, filtered by `log.level` (or `RUST_LOG`).

use crate::config::LogConfig;
use tracing_subscriber::EnvFilter;

/// Install the global subscriber. Safe to call more than once (later calls
/// are ignored), so tests and embedded roles can all call it.
pub fn init(cfg: &LogConfig) -> std::io::Result<()> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        // Quiet the libraries' own chatter unless asked for.
        EnvFilter::new(format!(
            "{},h2=warn,hyper=warn,tower=warn,sqlx=warn,pingora_core=warn",
            cfg.level
        ))
    });
    let json = cfg.format.as_deref() == Some("json");
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    let result = match &cfg.output {
        Some(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?;
            let writer = std::sync::Mutex::new(file);
            if json {
                builder.json().with_writer(writer).try_init()
            } else {
                builder.with_ansi(false).with_writer(writer).try_init()
            }
        }
        None => {
            if json {
                builder.json().with_writer(std::io::stderr).try_init()
            } else {
                // Colours only for a terminal, not for a file or a pipe.
                use std::io::IsTerminal as _;
                builder
                    .with_ansi(std::io::stderr().is_terminal())
                    .with_writer(std::io::stderr)
                    .try_init()
            }
        }
    };
    // Already installed (tests, embedded roles): keep the first one.
    let _ = result;
    Ok(())
}
