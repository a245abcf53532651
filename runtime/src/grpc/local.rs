//! The in-process transport of embedded mode: a client of a role served by
//! this same process calls the role's gRPC routes directly, without TCP or
//! HTTP/2, while still going through the gRPC contract (messages are encoded,
//! framed and decoded exactly as on the wire).
//!
//! Each call runs in its own task, as it would on a server connection, so the
//! caller and the service make progress side by side. Dropping the response
//! future before it completes aborts that task, which is what a stream reset
//! does on HTTP/2: a client-streaming call cancelled halfway never looks like
//! a stream that ended cleanly.
//!
//! Serving a role registers its routes under its listening URL only after
//! [`enable`] was called (the embedded mode does it once at start);
//! [`super::connect`] then resolves that URL to the routes. A process running
//! one role never registers anything, so distributed deployments and their
//! tests always use the network.
//!
//! A role may also [`provide`] a typed handle under its URL: the byte-carrying
//! streaming calls (`capstan_proto::direct`) are then made with the contract's
//! messages handed over as they are, without encoding each chunk into a frame
//! and decoding it back (two copies of every byte). Clients look the handle up
//! with [`handle`] at each call.

use super::{Transport, TransportError, rpc_span};
use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::task::{Context, Poll};
use tokio_util::task::AbortOnDropHandle;
use tonic::body::Body;
use tonic::service::Routes;
use tower::ServiceExt as _;
use tracing::Instrument as _;

static ENABLED: AtomicBool = AtomicBool::new(false);
static ROUTES: Mutex<Option<HashMap<String, Routes>>> = Mutex::new(None);
/// Provided handles by (URL, type), each with the number of its `provide`.
type Handles = HashMap<(String, TypeId), (u64, Box<dyn Any + Send + Sync>)>;
static HANDLES: Mutex<Option<Handles>> = Mutex::new(None);
static PROVIDED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Let roles served from now on in this process be called in-process.
pub fn enable() {
    ENABLED.store(true, Ordering::SeqCst);
}

/// Registers `routes` under `url` (when enabled) until dropped.
#[derive(Debug)]
pub(super) struct Registration(Option<String>);

pub(super) fn register(url: String, routes: &Routes) -> Registration {
    if !ENABLED.load(Ordering::SeqCst) {
        return Registration(None);
    }
    ROUTES
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get_or_insert_with(HashMap::new)
        .insert(url.clone(), routes.clone());
    tracing::debug!(%url, "role callable in-process");
    Registration(Some(url))
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(url) = self.0.take()
            && let Some(map) = ROUTES
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .as_mut()
        {
            map.remove(&url);
        }
    }
}

/// Makes `handle` findable under `url` by [`handle`] (when enabled), until
/// the returned guard is dropped.
#[must_use = "the handle is withdrawn when the guard is dropped"]
pub fn provide<H: Clone + Send + Sync + 'static>(url: &str, handle: H) -> Provided {
    if !ENABLED.load(Ordering::SeqCst) {
        return Provided(None);
    }
    let key = (url.trim_end_matches('/').to_string(), TypeId::of::<H>());
    let number = PROVIDED.fetch_add(1, Ordering::Relaxed);
    HANDLES
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get_or_insert_with(HashMap::new)
        .insert(key.clone(), (number, Box::new(handle)));
    tracing::debug!(%url, handle = std::any::type_name::<H>(), "role's streams callable in-process");
    Provided(Some((key, number)))
}

/// The handle of type `H` provided under `url`, if this process serves it.
pub fn handle<H: Clone + Send + Sync + 'static>(url: &str) -> Option<H> {
    if !ENABLED.load(Ordering::Relaxed) {
        return None;
    }
    let key = (url.trim_end_matches('/').to_string(), TypeId::of::<H>());
    HANDLES
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .as_ref()?
        .get(&key)?
        .1
        .downcast_ref::<H>()
        .cloned()
}

/// Withdraws a [`provide`]d handle when dropped (unless it was provided
/// again since, by a role that came up on the same URL).
#[derive(Debug)]
pub struct Provided(Option<((String, TypeId), u64)>);

impl Drop for Provided {
    fn drop(&mut self) {
        if let Some((key, number)) = self.0.take()
            && let Some(map) = HANDLES
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .as_mut()
            && map.get(&key).is_some_and(|(n, _)| *n == number)
        {
            map.remove(&key);
        }
    }
}

/// The routes registered under `url`, if any.
fn lookup(url: &str) -> Option<Routes> {
    ROUTES
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .as_ref()?
        .get(url.trim_end_matches('/'))
        .cloned()
}

/// The transport to `url`: when in-process calls are enabled, each call
/// looks the URL up (roles register as they come up, possibly after their
/// clients were made) and goes in-process if found, else over `remote`.
pub(super) fn transport<R>(url: &str, remote: R) -> Transport
where
    R: tower::Service<
            http::Request<Body>,
            Response = http::Response<Body>,
            Error = TransportError,
            Future: Send + 'static,
        > + Clone
        + Send
        + Sync
        + 'static,
{
    if !ENABLED.load(Ordering::SeqCst) {
        return Transport::new(remote);
    }
    Transport::new(Resolving {
        url: url.trim_end_matches('/').to_string(),
        remote,
    })
}

#[derive(Clone)]
struct Resolving<R> {
    url: String,
    remote: R,
}

impl<R> tower::Service<http::Request<Body>> for Resolving<R>
where
    R: tower::Service<
            http::Request<Body>,
            Response = http::Response<Body>,
            Error = TransportError,
            Future: Send + 'static,
        > + Clone
        + Send
        + 'static,
{
    type Response = http::Response<Body>;
    type Error = TransportError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, TransportError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), TransportError>> {
        // Readiness of the remote path is awaited per call (below).
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        match lookup(&self.url) {
            Some(routes) => tower::Service::call(&mut Local { routes }, req),
            None => Box::pin(self.remote.clone().oneshot(req)),
        }
    }
}

/// Calls `routes` in a task of its own per call.
#[derive(Clone)]
struct Local {
    routes: Routes,
}

impl tower::Service<http::Request<Body>> for Local {
    type Response = http::Response<Body>;
    type Error = TransportError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, TransportError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), TransportError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let span = rpc_span(&req);
        let routes = self.routes.clone();
        let task = AbortOnDropHandle::new(tokio::spawn(routes.oneshot(req).instrument(span)));
        Box::pin(async move {
            match task.await {
                Ok(Ok(response)) => Ok(response),
                Ok(Err(never)) => match never {},
                Err(e) => Err(TransportError(Box::new(e))),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;

    #[tokio::test]
    async fn calls_go_in_process_while_the_role_is_registered() {
        enable();
        let routes = Routes::new(super::super::health_service(&["test.Svc"]).await);
        // Nothing listens on port 1: only the in-process path can answer.
        let url = "http://127.0.0.1:1";
        let registered = register(url.to_string(), &routes);
        let mut client = HealthClient::new(super::super::connect(url).unwrap());
        let ask = || HealthCheckRequest {
            service: "test.Svc".into(),
        };
        let answer = client.check(ask()).await.unwrap().into_inner();
        assert_eq!(answer.status, ServingStatus::Serving as i32);
        // Once the role is gone, the same client goes to the network.
        drop(registered);
        let err = client.check(ask()).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unavailable, "{err}");
    }

    #[test]
    fn handles_are_found_by_url_and_type_while_provided() {
        enable();
        let url = "http://127.0.0.1:2";
        assert_eq!(handle::<u32>(url), None);
        let provided = provide(url, 7u32);
        assert_eq!(handle::<u32>(url), Some(7));
        assert_eq!(handle::<u32>("http://127.0.0.1:2/"), Some(7));
        // Another type under the same URL, or another URL, is not it.
        assert_eq!(handle::<u64>(url), None);
        assert_eq!(handle::<u32>("http://127.0.0.1:3"), None);
        drop(provided);
        assert_eq!(handle::<u32>(url), None);
        // A role that comes up again on the URL before the old guard goes
        // keeps its handle.
        let old = provide(url, 1u32);
        let new = provide(url, 2u32);
        drop(old);
        assert_eq!(handle::<u32>(url), Some(2));
        drop(new);
        assert_eq!(handle::<u32>(url), None);
    }
}
