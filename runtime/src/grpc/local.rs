//! The in-process transport of embedded mode: a client of a role served by
//! this same process calls the role's gRPC routes directly, with no socket
//! at all, while still going through the gRPC contract (messages are
//! encoded, framed and decoded exactly as on the wire).
//!
//! The binary makes one [`LocalRole`] per role and hands it both to the role
//! (as where it serves, [`super::Listen::Local`]) and to the roles that
//! call it (as a [`super::Peer`]): nothing is looked up in process-wide
//! tables, and nothing outside the process can reach the role.
//!
//! Each call runs in its own task, as it would on a server connection, so
//! the caller and the service make progress side by side. Dropping the
//! response future before it completes aborts that task, which is what a
//! stream reset does on HTTP/2: a client-streaming call cancelled halfway
//! never looks like a stream that ended cleanly.
//!
//! A role may also [`LocalRole::provide`] a typed handle: the byte-carrying
//! streaming calls (`capstan_proto::direct`) are then made with the
//! contract's messages handed over as they are, without encoding each chunk
//! into a frame and decoding it back (two copies of every byte).

use super::{Transport, TransportError, carry_trace, rpc_span};
use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::task::AbortOnDropHandle;
use tonic::body::Body;
use tonic::service::Routes;
use tower::ServiceExt as _;
use tracing::Instrument as _;

/// How long a call waits for its role to come up before it fails (roles
/// of one process start together; this only covers their start).
const START_WAIT: Duration = Duration::from_secs(60);

type Handles = HashMap<TypeId, Box<dyn Any + Send + Sync>>;

/// A role served in this process; clones are the same role.
#[derive(Clone)]
pub struct LocalRole(Arc<Inner>);

struct Inner {
    name: &'static str,
    routes: watch::Sender<Option<Routes>>,
    handles: Mutex<Handles>,
}

impl std::fmt::Debug for LocalRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("LocalRole").field(&self.0.name).finish()
    }
}

impl LocalRole {
    /// A role named `name` (for logs), not serving yet.
    pub fn new(name: &'static str) -> Self {
        Self(Arc::new(Inner {
            name,
            routes: watch::Sender::new(None),
            handles: Mutex::new(HashMap::new()),
        }))
    }

    pub fn name(&self) -> &'static str {
        self.0.name
    }

    /// Serve `routes` until the returned guard is dropped.
    pub(super) fn serve(&self, routes: Routes) -> Serving {
        self.0.routes.send_replace(Some(routes));
        tracing::debug!(role = self.0.name, "role callable in-process");
        Serving(self.clone())
    }

    /// Make `handle` available to [`LocalRole::handle`] until the returned
    /// guard is dropped.
    #[must_use = "the handle is withdrawn when the guard is dropped"]
    pub fn provide<H: Clone + Send + Sync + 'static>(&self, handle: H) -> Provided {
        self.handles().insert(TypeId::of::<H>(), Box::new(handle));
        Provided(self.clone(), TypeId::of::<H>())
    }

    /// The handle of type `H`, while the role provides one.
    pub fn handle<H: Clone + Send + Sync + 'static>(&self) -> Option<H> {
        self.handles()
            .get(&TypeId::of::<H>())?
            .downcast_ref::<H>()
            .cloned()
    }

    fn handles(&self) -> std::sync::MutexGuard<'_, Handles> {
        self.0
            .handles
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The transport that calls this role's routes.
    pub(super) fn transport(&self) -> Transport {
        Transport::new(Local(self.clone()))
    }

    /// The routes, once the role serves (waiting up to [`START_WAIT`]).
    async fn routes(&self) -> Result<Routes, TransportError> {
        let mut rx = self.0.routes.subscribe();
        let serving = tokio::time::timeout(START_WAIT, rx.wait_for(Option::is_some)).await;
        match serving {
            Ok(Ok(routes)) => Ok(routes.clone().expect("waited for Some")),
            _ => Err(TransportError(
                format!("in-process role {} is not serving", self.0.name).into(),
            )),
        }
    }
}

/// Withdraws a role's routes when dropped.
#[derive(Debug)]
pub(super) struct Serving(LocalRole);

impl Drop for Serving {
    fn drop(&mut self) {
        self.0.0.routes.send_replace(None);
    }
}

/// Withdraws a [`LocalRole::provide`]d handle when dropped.
#[derive(Debug)]
pub struct Provided(LocalRole, TypeId);

impl Drop for Provided {
    fn drop(&mut self) {
        self.0.handles().remove(&self.1);
    }
}

/// Calls a role's routes in a task of its own per call.
#[derive(Clone)]
struct Local(LocalRole);

impl tower::Service<http::Request<Body>> for Local {
    type Response = http::Response<Body>;
    type Error = TransportError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, TransportError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), TransportError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: http::Request<Body>) -> Self::Future {
        let role = self.0.clone();
        carry_trace(req.headers_mut());
        Box::pin(async move {
            let routes = role.routes().await?;
            let span = rpc_span(&req);
            let task = AbortOnDropHandle::new(tokio::spawn(routes.oneshot(req).instrument(span)));
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
    async fn calls_wait_for_the_role_and_reach_it_while_it_serves() {
        let role = LocalRole::new("test");
        let mut client = HealthClient::new(role.transport());
        let ask = || HealthCheckRequest {
            service: "test.Svc".into(),
        };
        // A call made before the role serves waits for it.
        let early = tokio::spawn({
            let mut client = client.clone();
            async move { client.check(ask()).await }
        });
        let routes = Routes::new(super::super::health_service(&["test.Svc"]).await);
        let serving = role.serve(routes);
        let answer = early.await.unwrap().unwrap().into_inner();
        assert_eq!(answer.status, ServingStatus::Serving as i32);
        drop(serving);
        // Once it is gone, calls fail (after the start wait, skipped here).
        tokio::time::pause();
        let err = client.check(ask()).await.unwrap_err();
        assert!(err.message().contains("not serving"), "{err}");
    }

    #[test]
    fn handles_are_found_by_type_while_provided() {
        let role = LocalRole::new("test");
        assert_eq!(role.handle::<u32>(), None);
        let provided = role.provide(7u32);
        assert_eq!(role.handle::<u32>(), Some(7));
        assert_eq!(role.clone().handle::<u32>(), Some(7));
        // Another type, or another role, is not it.
        assert_eq!(role.handle::<u64>(), None);
        assert_eq!(LocalRole::new("other").handle::<u32>(), None);
        drop(provided);
        assert_eq!(role.handle::<u32>(), None);
    }
}
