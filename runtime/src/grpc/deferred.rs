//! A gRPC service that comes into being once its dependency answers (a
//! database, a cache): the role serves from its start, reports
//! NOT_SERVING, and answers every call of the service with an
//! `UNAVAILABLE` status until [`Ready::set`] installs the real one. No call
//! ever waits on the dependency, and the role never has to restart.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;
use tonic::body::Body;
use tonic::server::NamedService;
use tower::ServiceExt as _;

type Unavailable = Arc<dyn Fn() -> tonic::Status + Send + Sync>;

/// The placeholder (and later the service) a role's routes hold.
pub struct Deferred<S> {
    inner: Arc<OnceLock<S>>,
    unavailable: Unavailable,
}

impl<S> Clone for Deferred<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            unavailable: self.unavailable.clone(),
        }
    }
}

/// Installs the real service into its [`Deferred`].
pub struct Ready<S>(Arc<OnceLock<S>>);

impl<S> Ready<S> {
    /// From now on calls go to `service`.
    pub fn set(self, service: S) {
        let _ = self.0.set(service);
    }
}

impl<S> Deferred<S> {
    /// A service answering `unavailable()` until its [`Ready`] is set.
    pub fn new(
        unavailable: impl Fn() -> tonic::Status + Send + Sync + 'static,
    ) -> (Self, Ready<S>) {
        let inner = Arc::new(OnceLock::new());
        (
            Self {
                inner: inner.clone(),
                unavailable: Arc::new(unavailable),
            },
            Ready(inner),
        )
    }
}

impl<S: NamedService> NamedService for Deferred<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> tower::Service<http::Request<Body>> for Deferred<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // The real service's readiness is awaited per call (`oneshot`).
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        match self.inner.get() {
            Some(service) => Box::pin(service.clone().oneshot(req)),
            None => Box::pin(std::future::ready(Ok((self.unavailable)().into_http()))),
        }
    }
}

/// First and last pause of [`retry`]'s capped exponential backoff.
pub const BACKOFF_FIRST: Duration = Duration::from_millis(500);
pub const BACKOFF_CAP: Duration = Duration::from_secs(30);

/// Try `attempt` until it succeeds, pausing between failures from
/// [`BACKOFF_FIRST`], doubling up to [`BACKOFF_CAP`]; each failure is
/// logged as `what`. `None` if `stop` resolves first.
pub async fn retry<T, E: std::fmt::Display, Fut: Future<Output = Result<T, E>>>(
    what: &str,
    mut attempt: impl FnMut() -> Fut,
    stop: impl Future<Output = ()>,
) -> Option<T> {
    let mut pause = BACKOFF_FIRST;
    tokio::pin!(stop);
    loop {
        match attempt().await {
            Ok(v) => return Some(v),
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?pause, "{what}");
            }
        }
        tokio::select! {
            _ = &mut stop => return None,
            _ = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(BACKOFF_CAP);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::health_server::HealthServer;

    #[tokio::test]
    async fn calls_are_unavailable_until_the_service_is_set() {
        let (_, health) = tonic_health::server::health_reporter();
        let (deferred, ready) = Deferred::<HealthServer<_>>::new(|| {
            tonic::Status::unavailable("the database is not reachable yet")
        });
        let role = super::super::LocalRole::new("test");
        let _serving = role.serve(tonic::service::Routes::new(deferred));
        let mut client = HealthClient::new(role.transport());
        let err = client
            .check(HealthCheckRequest::default())
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unavailable);
        assert!(err.message().contains("not reachable yet"), "{err}");
        ready.set(health);
        let ok = client.check(HealthCheckRequest::default()).await;
        assert!(ok.is_ok(), "{ok:?}");
    }

    #[tokio::test]
    async fn retry_backs_off_until_success_or_stop() {
        tokio::time::pause();
        let start = tokio::time::Instant::now();
        let mut n = 0;
        let got = retry(
            "test",
            || {
                n += 1;
                let this = n;
                async move { if this < 5 { Err("down") } else { Ok(this) } }
            },
            std::future::pending(),
        )
        .await;
        assert_eq!(got, Some(5));
        // 0.5 + 1 + 2 + 4 s of pauses (the paused clock adds a millisecond
        // to each timer).
        let took = start.elapsed();
        assert!(
            (Duration::from_millis(7_500)..Duration::from_millis(7_600)).contains(&took),
            "{took:?}"
        );
        let never = retry(
            "test",
            || async { Err::<(), _>("down") },
            tokio::time::sleep(Duration::from_secs(100)),
        )
        .await;
        assert_eq!(never, None);
    }
}
