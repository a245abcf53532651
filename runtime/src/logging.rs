//! Structured logs: one `tracing` subscriber per process, text or JSON, to
//! standard error or a file, filtered by `log.level` (or `RUST_LOG`); with
//! an OpenTelemetry layer beside it when traces are exported
//! ([`crate::telemetry`]).

use crate::config::LogConfig;
use crate::telemetry::{self, Exporter};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer};

/// Why logging could not start.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("log.output: {0}")]
    Output(#[from] std::io::Error),
    #[error(transparent)]
    Traces(#[from] telemetry::TracesError),
}

type Boxed = Box<dyn Layer<tracing_subscriber::Registry> + Send + Sync>;

/// Install the global subscriber, naming the process `service` in traces.
/// Safe to call more than once (later calls are ignored), so tests and
/// embedded roles can all call it. Keep the returned exporter until the
/// process ends: dropping it sends the spans still queued. Must be called
/// inside a tokio runtime.
pub fn init(cfg: &LogConfig, service: &str) -> Result<Exporter, LogError> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        // Quiet the libraries' own chatter unless asked for.
        EnvFilter::new(format!(
            "{},h2=warn,hyper=warn,tower=warn,sqlx=warn,pingora_core=warn,opentelemetry=warn",
            cfg.level
        ))
    });
    let json = cfg.format.as_deref() == Some("json");
    let fmt = tracing_subscriber::fmt::layer().with_target(false);
    let logs: Boxed = match &cfg.output {
        Some(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?;
            let writer = std::sync::Mutex::new(file);
            if json {
                fmt.json().with_writer(writer).boxed()
            } else {
                fmt.with_ansi(false).with_writer(writer).boxed()
            }
        }
        None => {
            if json {
                fmt.json().with_writer(std::io::stderr).boxed()
            } else {
                // Colours only for a terminal, not for a file or a pipe.
                use std::io::IsTerminal as _;
                fmt.with_ansi(std::io::stderr().is_terminal())
                    .with_writer(std::io::stderr)
                    .boxed()
            }
        }
    };
    let exporter = telemetry::exporter(&cfg.traces, service)?;
    let traces: Option<Boxed> = exporter.provider().map(|p| {
        use opentelemetry::trace::TracerProvider as _;
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("capstan"))
            .boxed()
    });
    let mut layers: Vec<Boxed> = vec![logs];
    layers.extend(traces);
    // The filter outermost: it decides for every layer.
    let installed = tracing_subscriber::registry()
        .with(layers)
        .with(filter)
        .try_init();
    // Already installed (tests, embedded roles): keep the first one.
    if installed.is_err() {
        return Ok(Exporter::default());
    }
    Ok(exporter)
}
