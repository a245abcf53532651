//! The tonic scaffold every role uses: Capstan's message and window limits,
//! the standard gRPC health service, a span per call that joins the caller's
//! trace (W3C `traceparent` in the metadata), where a role serves
//! ([`Listen`]: a TCP port guarded by the deployment's shared secret, or
//! in-process) and how it reaches the others ([`Peer`]: over HTTP/2 with
//! that secret, or the [`local`] transport when the binary runs them in
//! this same process).

pub mod deferred;
pub mod local;
pub mod metrics;
pub mod pool;
pub mod secret;

use crate::Shutdown;
pub use local::LocalRole;
pub use metrics::RoleMetrics;
pub use pool::{Member, Pool, Replica};
pub use secret::Secrets;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::body::Body;
use tonic::service::Routes;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A failure of a [`Transport`] (connection refused, reset, a call's task
/// that failed): a concrete type, so generated clients stay `Send` in
/// higher-ranked async contexts, where a boxed error trips rustc.
#[derive(Debug)]
pub struct TransportError(BoxError);

impl std::fmt::Display for TransportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for TransportError {
    /// The failure itself, so that tonic finds a status in it (an
    /// UNAVAILABLE of its own making keeps its code).
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.0.as_ref())
    }
}

/// How a generated client reaches a role, whichever the path: wrap it as
/// `FooServiceClient::new(transport)`.
pub type Transport =
    tower::util::BoxCloneSyncService<http::Request<Body>, http::Response<Body>, TransportError>;

/// Largest gRPC message either side accepts (a 4 MiB manifest plus framing).
/// Apply it to every generated client and server with
/// `max_decoding_message_size` / `max_encoding_message_size`.
pub const MAX_MESSAGE_BYTES: usize = 8 * 1024 * 1024;
/// Preferred size of one chunk of blob bytes in a stream.
pub const CHUNK_BYTES: usize = 1024 * 1024;
/// Size of the chunks a blob is read in: larger, as a read has no hashing
/// to overlap with and fewer, larger messages cost less per byte.
pub const READ_CHUNK_BYTES: usize = 2 * 1024 * 1024;
/// HTTP/2 per-stream window: large enough that a blob stream on loopback is
/// not window-bound, small enough to bound what one stream can buffer.
pub const STREAM_WINDOW: u32 = 8 * 1024 * 1024;
/// HTTP/2 connection window. Measured on loopback: with 16 MiB the sender of
/// one blob stream stalled on connection-level window updates (a 256 MiB
/// push took 0.9 s instead of 0.6 s); it bounds only the sum over streams.
pub const CONNECTION_WINDOW: u32 = 64 * 1024 * 1024;
/// Largest HTTP/2 frame either side accepts: blob chunks travel in a few
/// large frames instead of many 16 KiB ones (one write call each).
pub const MAX_FRAME: u32 = 1024 * 1024;

/// A lazily connecting HTTP/2 transport to the role at `uri` (e.g.
/// `http://127.0.0.1:9001`) that presents no secret: for tests and tools
/// that talk to a role directly. Must be called inside a tokio runtime.
pub fn connect(uri: &str) -> Result<Transport, tonic::transport::Error> {
    Peer::remote(uri, &Secrets::none()).transport()
}

/// Where one replica of a role is, as its callers reach it.
#[derive(Clone, Debug)]
pub struct Peer {
    target: Target,
    secrets: Secrets,
}

#[derive(Clone, Debug)]
enum Target {
    Remote(String),
    Local(LocalRole),
}

impl Peer {
    /// The role at `uri`, called with the deployment's `secrets`.
    pub fn remote(uri: &str, secrets: &Secrets) -> Self {
        Self {
            target: Target::Remote(uri.trim_end_matches('/').to_string()),
            secrets: secrets.clone(),
        }
    }

    /// A role this process serves.
    pub fn local(role: &LocalRole) -> Self {
        Self {
            target: Target::Local(role.clone()),
            secrets: Secrets::none(),
        }
    }

    /// How logs and `/metrics` name it: its URL, or `in-process:<role>`.
    pub fn name(&self) -> String {
        match &self.target {
            Target::Remote(uri) => uri.clone(),
            Target::Local(role) => format!("in-process:{}", role.name()),
        }
    }

    /// A transport to it: a lazily connecting HTTP/2 channel whose every
    /// call carries the shared secret, or the in-process one. Must be
    /// called inside a tokio runtime.
    pub fn transport(&self) -> Result<Transport, tonic::transport::Error> {
        match &self.target {
            Target::Local(role) => Ok(role.transport()),
            Target::Remote(uri) => {
                let secrets = self.secrets.clone();
                let channel = tower::ServiceExt::map_request(
                    lazy_channel(uri)?,
                    move |mut req: http::Request<Body>| {
                        if let Some(v) = secrets.header() {
                            req.headers_mut().insert(http::header::AUTHORIZATION, v);
                        }
                        carry_trace(req.headers_mut());
                        req
                    },
                );
                Ok(Transport::new(tower::ServiceExt::map_err(
                    channel,
                    |e: tonic::transport::Error| TransportError(Box::new(e)),
                )))
            }
        }
    }

    /// The typed handle of type `H` the role provides, when it is served
    /// in this process ([`LocalRole::provide`]).
    pub fn handle<H: Clone + Send + Sync + 'static>(&self) -> Option<H> {
        match &self.target {
            Target::Local(role) => role.handle(),
            Target::Remote(_) => None,
        }
    }
}

/// The replicas of every role, as one role reaches the others.
#[derive(Clone, Debug, Default)]
pub struct Peers {
    pub meta: Vec<Peer>,
    pub blob: Vec<Peer>,
    /// Empty when no authentication is configured.
    pub auth: Vec<Peer>,
    pub sync: Vec<Peer>,
}

impl Peers {
    /// The endpoints `services.<role>.endpoints` names, each called with
    /// `secrets`.
    pub fn from_config(services: &crate::config::ServicesConfig, secrets: &Secrets) -> Self {
        let remote = |uris: &[String]| uris.iter().map(|u| Peer::remote(u, secrets)).collect();
        Self {
            meta: remote(&services.meta.endpoints),
            blob: remote(&services.blob.endpoints),
            auth: remote(&services.auth.endpoints),
            sync: remote(&services.sync.endpoints),
        }
    }
}

/// Where a role serves.
#[derive(Debug)]
pub enum Listen {
    /// A TCP port; calls without one of `secrets` are refused (when the
    /// deployment has a secret).
    Network {
        listener: TcpListener,
        secrets: Secrets,
    },
    /// This process only (embedded mode): no port at all.
    Local(LocalRole),
}

impl Listen {
    /// For log lines: the address, or `in-process`.
    pub fn describe(&self) -> String {
        match self {
            Listen::Network { listener, .. } => listener
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_default(),
            Listen::Local(_) => "in-process".into(),
        }
    }

    /// The role served in-process, if that is where it serves (to provide
    /// typed handles on it).
    pub fn local(&self) -> Option<&LocalRole> {
        match self {
            Listen::Local(role) => Some(role),
            Listen::Network { .. } => None,
        }
    }
}

/// A listener with no secret: for tests that run a role on its own.
impl From<TcpListener> for Listen {
    fn from(listener: TcpListener) -> Self {
        Listen::Network {
            listener,
            secrets: Secrets::none(),
        }
    }
}

/// A lazily connecting channel to `uri` with Capstan's window sizes.
fn lazy_channel(uri: &str) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    let endpoint = tonic::transport::Endpoint::from_shared(uri.to_string())?
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME)
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true);
    Ok(endpoint.connect_lazy())
}

/// Metadata key carrying the W3C trace context between roles.
pub const TRACEPARENT: &str = "traceparent";

/// A server builder with Capstan's windows and a span per call carrying the
/// method and the caller's trace id, so every log line of the call has them.
pub fn server() -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME)
        .tcp_nodelay(true)
        .trace_fn(rpc_span)
}

/// A call made while a traced span is current (a role's own call, made
/// while it serves one) carries that span's trace context, unless the
/// caller set one.
fn carry_trace(headers: &mut http::HeaderMap) {
    if !headers.contains_key(TRACEPARENT) {
        crate::telemetry::inject(&tracing::Span::current(), headers);
    }
}

/// The span of one call: its method and the caller's trace id, a child of
/// the caller's span when traces are exported.
fn rpc_span<B>(req: &http::Request<B>) -> tracing::Span {
    span_of(req.uri().path(), req.headers())
}

/// The same span for a call made in-process without HTTP (`local`'s typed
/// handles): `method` is the gRPC path, e.g. `/capstan.blob.v1.BlobService/Read`.
pub fn call_span(method: &str, metadata: &tonic::metadata::MetadataMap) -> tracing::Span {
    span_of(method, metadata.as_ref())
}

fn span_of(method: &str, headers: &http::HeaderMap) -> tracing::Span {
    let trace_id = headers
        .get(TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .and_then(trace_id_of)
        .unwrap_or("");
    let span = tracing::info_span!(
        "rpc",
        method,
        trace_id,
        otel.name = method,
        otel.kind = "server"
    );
    crate::telemetry::adopt(&span, headers);
    span
}

/// The trace id (second field) of a W3C `traceparent` value.
pub fn trace_id_of(traceparent: &str) -> Option<&str> {
    let id = traceparent.split('-').nth(1)?;
    (id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(id)
}

/// Serve `routes` where `listen` says until `shutdown`. On a network
/// port, `metrics` count every call and are served at `GET /metrics`
/// (HTTP/1.1 too, for Prometheus; behind the shared secret like the
/// calls).
pub async fn serve(
    routes: Routes,
    listen: Listen,
    metrics: RoleMetrics,
    shutdown: Shutdown,
) -> Result<(), tonic::transport::Error> {
    match listen {
        Listen::Local(role) => {
            let _serving = role.serve(routes);
            shutdown.wait().await;
            Ok(())
        }
        Listen::Network { listener, secrets } => {
            let scrape = metrics.clone();
            let routes = Routes::from(routes.into_axum_router().route(
                "/metrics",
                axum::routing::get(move || {
                    let text = scrape.render();
                    async move {
                        (
                            [(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                            text,
                        )
                    }
                }),
            ));
            server()
                .accept_http1(true)
                .layer(secret::GuardLayer(secrets))
                .layer(metrics::MetricsLayer(metrics))
                .add_routes(routes)
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async move {
                    shutdown.wait().await
                })
                .await
        }
    }
}

/// The URL clients reach a role served on `listener` by.
pub fn listener_url(listener: &TcpListener) -> std::io::Result<String> {
    Ok(format!("http://{}", listener.local_addr()?))
}

/// The standard health service, with every name in `services` serving.
pub async fn health_service(
    services: &[&str],
) -> tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health> {
    health_reporter(services, true).await.1
}

/// The standard health service with every name in `services` (and the
/// server as a whole, `""`) serving or not as `serving` says, and the
/// reporter that changes it later.
pub async fn health_reporter(
    services: &[&str],
    serving: bool,
) -> (
    tonic_health::server::HealthReporter,
    tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
) {
    let (reporter, service) = tonic_health::server::health_reporter();
    let status = if serving {
        tonic_health::ServingStatus::Serving
    } else {
        tonic_health::ServingStatus::NotServing
    };
    for s in services.iter().chain(std::iter::once(&"")) {
        reporter.set_service_status(*s, status).await;
    }
    (reporter, service)
}

#[cfg(test)]
mod tests {
    use super::trace_id_of;

    #[test]
    fn trace_id_from_traceparent() {
        assert_eq!(
            trace_id_of("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(trace_id_of("00-short-00f067aa0ba902b7-01"), None);
        assert_eq!(trace_id_of("garbage"), None);
    }
}
