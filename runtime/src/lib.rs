//! What every Capstan role does the same way at start-up and shutdown: load
//! and validate the zot-compatible configuration (file plus `CAPSTAN_…`
//! environment overrides), initialise structured `tracing` logs and
//! OpenTelemetry traces ([`telemetry`]), carry the
//! shutdown signal, and host a tonic gRPC server with Capstan's limits, health
//! service and per-call trace span.

pub mod config;
pub mod grpc;
pub mod logging;
pub mod shutdown;
pub mod telemetry;

pub use config::{Config, ConfigError};
pub use shutdown::Shutdown;
