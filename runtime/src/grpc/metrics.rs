//! Each role's own Prometheus metrics, served at `GET /metrics` on the
//! role's gRPC port (HTTP/1.1 or 2, behind the same shared secret as its
//! calls): every call counted and timed by method and status code, under
//! the names grpc-ecosystem's Prometheus interceptors use
//! (`grpc_server_handled_total`, `grpc_server_handling_seconds`), plus what
//! the role adds ([`RoleMetrics::registry`], [`RoleMetrics::add_text`]).

use http_body::Frame;
use prometheus::{Encoder as _, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Instant;
use tonic::body::Body;

type Text = Arc<dyn Fn() -> String + Send + Sync>;

/// One role's metrics; clones share them.
#[derive(Clone)]
pub struct RoleMetrics {
    registry: Registry,
    handled: IntCounterVec,
    seconds: HistogramVec,
    texts: Vec<Text>,
}

impl std::fmt::Debug for RoleMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoleMetrics").finish_non_exhaustive()
    }
}

impl RoleMetrics {
    /// The metrics of role `role` (a `role` label on each).
    pub fn new(role: &str) -> Self {
        let registry =
            Registry::new_custom(None, Some([("role".to_string(), role.to_string())].into()))
                .expect("valid registry");
        let handled = IntCounterVec::new(
            Opts::new(
                "grpc_server_handled_total",
                "gRPC calls completed, by method and status code",
            ),
            &["grpc_service", "grpc_method", "grpc_code"],
        )
        .expect("valid metric");
        let seconds = HistogramVec::new(
            HistogramOpts::new(
                "grpc_server_handling_seconds",
                "Time from a call's start to its last message",
            )
            .buckets(vec![
                0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0,
            ]),
            &["grpc_service", "grpc_method"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(handled.clone()))
            .expect("unique metric");
        registry
            .register(Box::new(seconds.clone()))
            .expect("unique metric");
        Self {
            registry,
            handled,
            seconds,
            texts: Vec::new(),
        }
    }

    /// Where the role registers collectors of its own.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Text in Prometheus form to append to every scrape (metrics the role
    /// renders itself).
    pub fn add_text(&mut self, text: impl Fn() -> String + Send + Sync + 'static) {
        self.texts.push(Arc::new(text));
    }

    /// Everything, in Prometheus text form.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        let _ = prometheus::TextEncoder::new().encode(&self.registry.gather(), &mut out);
        let mut text = String::from_utf8(out).unwrap_or_default();
        for t in &self.texts {
            text.push_str(&t());
        }
        text
    }

    fn done(&self, path: &str, code: &str, started: Instant) {
        let (service, method) = split_path(path);
        self.handled
            .with_label_values(&[service, method, code])
            .inc();
        self.seconds
            .with_label_values(&[service, method])
            .observe(started.elapsed().as_secs_f64());
    }
}

/// `/pkg.Service/Method` → (`pkg.Service`, `Method`).
fn split_path(path: &str) -> (&str, &str) {
    path.trim_start_matches('/')
        .split_once('/')
        .unwrap_or(("", path))
}

/// The name of a gRPC status code, as the interceptors write it.
fn code_name(code: &str) -> &'static str {
    match code.parse::<i32>().map(tonic::Code::from) {
        Ok(tonic::Code::Ok) => "OK",
        Ok(tonic::Code::Cancelled) => "Canceled",
        Ok(tonic::Code::Unknown) => "Unknown",
        Ok(tonic::Code::InvalidArgument) => "InvalidArgument",
        Ok(tonic::Code::DeadlineExceeded) => "DeadlineExceeded",
        Ok(tonic::Code::NotFound) => "NotFound",
        Ok(tonic::Code::AlreadyExists) => "AlreadyExists",
        Ok(tonic::Code::PermissionDenied) => "PermissionDenied",
        Ok(tonic::Code::ResourceExhausted) => "ResourceExhausted",
        Ok(tonic::Code::FailedPrecondition) => "FailedPrecondition",
        Ok(tonic::Code::Aborted) => "Aborted",
        Ok(tonic::Code::OutOfRange) => "OutOfRange",
        Ok(tonic::Code::Unimplemented) => "Unimplemented",
        Ok(tonic::Code::Internal) => "Internal",
        Ok(tonic::Code::Unavailable) => "Unavailable",
        Ok(tonic::Code::DataLoss) => "DataLoss",
        Ok(tonic::Code::Unauthenticated) => "Unauthenticated",
        Err(_) => "Unknown",
    }
}

/// Counts and times every call of the service it wraps (not `/metrics`
/// itself, nor health checks).
#[derive(Clone, Debug)]
pub struct MetricsLayer(pub RoleMetrics);

impl<S> tower::Layer<S> for MetricsLayer {
    type Service = Counted<S>;

    fn layer(&self, inner: S) -> Counted<S> {
        Counted {
            inner,
            metrics: self.0.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Counted<S> {
    inner: S,
    metrics: RoleMetrics,
}

impl<S, B> tower::Service<http::Request<B>> for Counted<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let path = req.uri().path().to_string();
        let counted = path.starts_with('/')
            && path != "/metrics"
            && !path.starts_with("/grpc.health.v1.Health/");
        let metrics = self.metrics.clone();
        let started = Instant::now();
        let call = self.inner.call(req);
        Box::pin(async move {
            let response = call.await?;
            if !counted {
                return Ok(response);
            }
            // A call that failed at once says so in its headers
            // (trailers-only); the others, in their trailers.
            if let Some(code) = response.headers().get("grpc-status") {
                let code = code_name(code.to_str().unwrap_or(""));
                metrics.done(&path, code, started);
                return Ok(response);
            }
            let (parts, body) = response.into_parts();
            let body = CountedBody {
                inner: body,
                finish: Some(Finish {
                    metrics,
                    path,
                    started,
                }),
            };
            Ok(http::Response::from_parts(parts, Body::new(body)))
        })
    }
}

struct Finish {
    metrics: RoleMetrics,
    path: String,
    started: Instant,
}

/// A response body that records its call's code when its trailers come
/// (or it ends, or breaks).
struct CountedBody {
    inner: Body,
    finish: Option<Finish>,
}

impl CountedBody {
    fn finish(&mut self, code: &str) {
        if let Some(f) = self.finish.take() {
            f.metrics.done(&f.path, code, f.started);
        }
    }
}

impl Drop for CountedBody {
    fn drop(&mut self) {
        // Dropped before its end: the caller went away.
        self.finish("Canceled");
    }
}

impl http_body::Body for CountedBody {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let got = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        match &got {
            Some(Ok(frame)) => {
                if let Some(code) = frame.trailers_ref().and_then(|t| t.get("grpc-status")) {
                    let code = code_name(code.to_str().unwrap_or(""));
                    self.finish(code);
                }
            }
            Some(Err(_)) => self.finish("Unknown"),
            None => self.finish("OK"),
        }
        Poll::Ready(got)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_codes_are_named_as_the_interceptors_name_them() {
        assert_eq!(
            split_path("/capstan.meta.v1.MetaService/PutManifest"),
            ("capstan.meta.v1.MetaService", "PutManifest")
        );
        assert_eq!(code_name("0"), "OK");
        assert_eq!(code_name("14"), "Unavailable");
        assert_eq!(code_name("x"), "Unknown");
        let m = RoleMetrics::new("meta");
        m.done("/a.B/C", "OK", Instant::now());
        let text = m.render();
        assert!(
            text.contains(
                r#"grpc_server_handled_total{grpc_code="OK",grpc_method="C",grpc_service="a.B",role="meta"} 1"#
            ),
            "{text}"
        );
    }
}
