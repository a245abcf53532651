//! The tonic scaffold every role uses: Capstan's message and window limits,
//! the standard gRPC health service, a span per call that joins the caller's
//! trace (W3C `traceparent` in the metadata), and [`connect`], which gives a
//! client its [`Transport`] to a role: HTTP/2 over the network, or the
//! [`local`] transport when the role is served by this same process.

pub mod local;

use crate::Shutdown;
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
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
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

/// The transport to the role at `uri` (e.g. `http://127.0.0.1:9001`): the
/// in-process one when this process serves it (embedded mode), else a lazily
/// connecting HTTP/2 channel. Must be called inside a tokio runtime.
pub fn connect(uri: &str) -> Result<Transport, tonic::transport::Error> {
    let channel = tower::ServiceExt::map_err(lazy_channel(uri)?, |e: tonic::transport::Error| {
        TransportError(Box::new(e))
    });
    Ok(local::transport(uri, channel))
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

/// The span of one call: its method and the caller's trace id.
fn rpc_span<B>(req: &http::Request<B>) -> tracing::Span {
    let trace_id = req
        .headers()
        .get(TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .and_then(trace_id_of)
        .unwrap_or("");
    tracing::info_span!("rpc", method = req.uri().path(), trace_id)
}

/// The same span for a call made in-process without HTTP (`local`'s typed
/// handles): `method` is the gRPC path, e.g. `/capstan.blob.v1.BlobService/Read`.
pub fn call_span(method: &'static str, metadata: &tonic::metadata::MetadataMap) -> tracing::Span {
    let trace_id = metadata
        .get(TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .and_then(trace_id_of)
        .unwrap_or("");
    tracing::info_span!("rpc", method, trace_id)
}

/// The trace id (second field) of a W3C `traceparent` value.
pub fn trace_id_of(traceparent: &str) -> Option<&str> {
    let id = traceparent.split('-').nth(1)?;
    (id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(id)
}

/// Serve `routes` on `listener` until `shutdown`, and in-process under the
/// listener's URL when [`local::enable`] was called.
pub async fn serve(
    routes: Routes,
    listener: TcpListener,
    shutdown: Shutdown,
) -> Result<(), tonic::transport::Error> {
    let _registered = listener_url(&listener)
        .ok()
        .map(|url| local::register(url, &routes));
    server()
        .add_routes(routes)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async move {
            shutdown.wait().await
        })
        .await
}

/// The URL clients reach a role served on `listener` by, and the key of its
/// in-process registrations.
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
