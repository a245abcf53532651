//! A role's replicas as one caller sees them: a [`Pool`] per role, built
//! on pingora's load balancer.
//!
//! - **Membership.** Each `services.<role>.endpoints` entry is resolved
//!   every [`REFRESH_EVERY`]: an IP address stands for itself, a name for
//!   every address it resolves to now (`docker compose --scale blob=3`
//!   puts three containers behind `blob`). A name that cannot be resolved
//!   keeps the addresses it last had. Replicas that appear get a client;
//!   those that disappear are dropped.
//! - **Health.** Every replica is asked over standard gRPC health
//!   (`grpc.health.v1`) after each resolution; one that does not answer
//!   "serving" within [`CHECK_TIMEOUT`] is out of turn until a check
//!   succeeds. A caller that sees a call fail on the way
//!   ([`Replica::failed`]) takes it out of turn at once.
//! - **Selection.** Round-robin over the replicas in turn; when none is,
//!   over all of them (the caller then sees their error); when there are
//!   none at all, a client whose every call fails with `UNAVAILABLE`.

use super::{Peer, Target, Transport, TransportError};
use crate::Shutdown;
use arc_swap::ArcSwap;
use pingora::lb::discovery::ServiceDiscovery;
use pingora::lb::health_check::HealthCheck;
use pingora::lb::selection::RoundRobin;
use pingora::lb::{Backend, Backends, LoadBalancer};
use pingora::protocols::l4::socket::SocketAddr as LbAddr;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// Time between two resolutions and health checks of a role's replicas.
pub const REFRESH_EVERY: Duration = Duration::from_secs(2);
/// A health check unanswered for this long has failed.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

const UNKNOWN: u8 = 0;
const SERVING: u8 = 1;
const DOWN: u8 = 2;

/// One replica of a role, as its checks last found it.
#[derive(Debug)]
pub struct Replica {
    /// Its URL (an address, once a name is resolved; or
    /// `in-process:<role>`), for logs and metrics.
    pub uri: String,
    pub peer: Peer,
    state: AtomicU8,
}

impl Replica {
    pub fn new(peer: &Peer) -> Arc<Self> {
        Arc::new(Self {
            uri: peer.name(),
            peer: peer.clone(),
            state: AtomicU8::new(UNKNOWN),
        })
    }

    /// Worth sending a call to: serving, or not checked yet.
    pub fn usable(&self) -> bool {
        self.state.load(Ordering::Relaxed) != DOWN
    }

    /// Its last check answered "serving".
    pub fn serving(&self) -> bool {
        self.state.load(Ordering::Relaxed) == SERVING
    }

    /// A call to it failed on the way (connection refused, reset): take it
    /// out of turn at once; its next successful check brings it back.
    pub fn failed(&self) {
        self.set(false);
    }

    fn set(&self, serving: bool) {
        let new = if serving { SERVING } else { DOWN };
        let old = self.state.swap(new, Ordering::Relaxed);
        if old != new {
            if serving {
                tracing::info!(replica = %self.uri, "replica serving");
            } else {
                tracing::warn!(replica = %self.uri, "replica not serving: calls go to the others");
            }
        }
    }
}

/// One replica and the client of it.
#[derive(Debug)]
pub struct Member<C> {
    pub replica: Arc<Replica>,
    pub client: C,
    /// The untyped way to it (for [`Pool::balanced`]).
    transport: Transport,
    health: HealthClient<Transport>,
}

type Members<C> = BTreeMap<Backend, Arc<Member<C>>>;
type MakeClient<C> = dyn Fn(&Peer, Transport) -> C + Send + Sync;

/// An endpoint that is not a URL with a scheme and a host.
#[derive(Debug, thiserror::Error)]
#[error("bad endpoint {0}: {1}")]
pub struct BadEndpoint(pub String, pub String);

/// The replicas of one role; clones share them.
pub struct Pool<C> {
    inner: Arc<Inner<C>>,
}

impl<C> Clone for Pool<C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<C> std::fmt::Debug for Pool<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("role", &self.inner.role)
            .field("replicas", &self.inner.members.load().len())
            .finish()
    }
}

struct Inner<C> {
    role: &'static str,
    /// How many endpoints are configured.
    entries: usize,
    balancer: LoadBalancer<RoundRobin>,
    members: Arc<ArcSwap<Members<C>>>,
    make: Box<MakeClient<C>>,
    /// What [`Pool::pick`] gives while no replica is known.
    nowhere: Arc<Member<C>>,
    /// Bumped whenever the membership changes.
    changed: watch::Sender<u64>,
}

impl<C: Clone + Send + Sync + 'static> Pool<C> {
    /// A pool of the replicas `entries` stand for, resolved once now (an
    /// entry that cannot be resolved yet contributes none until it can):
    /// `service` is the gRPC service the checks ask about; `make` builds
    /// the client of one replica. Call [`Pool::refresh_until`] to keep it
    /// current. Must be called inside a tokio runtime.
    pub async fn new(
        role: &'static str,
        service: &'static str,
        entries: &[Peer],
        make: impl Fn(&Peer, Transport) -> C + Send + Sync + 'static,
    ) -> Result<Self, BadEndpoint> {
        for entry in entries {
            if let Target::Remote(uri) = &entry.target {
                let parsed: Result<http::Uri, _> = uri.parse();
                match parsed {
                    Ok(u) if u.host().is_some() && u.scheme().is_some() => {}
                    Ok(_) => return Err(BadEndpoint(uri.clone(), "no scheme or host".into())),
                    Err(e) => return Err(BadEndpoint(uri.clone(), e.to_string())),
                }
            }
        }
        let members: Arc<ArcSwap<Members<C>>> = Arc::default();
        let discovery = Endpoints {
            role,
            entries: entries.to_vec(),
            last: Mutex::default(),
        };
        let mut balancer = LoadBalancer::from_backends(Backends::new(Box::new(discovery)));
        balancer.set_health_check(Box::new(GrpcHealth {
            service,
            members: members.clone(),
        }));
        let nowhere_peer = Peer::remote(&format!("none:{role}"), &super::Secrets::none());
        let nowhere = nowhere(role);
        let nowhere = Arc::new(Member {
            replica: Replica::new(&nowhere_peer),
            client: make(&nowhere_peer, nowhere.clone()),
            transport: nowhere.clone(),
            health: HealthClient::new(nowhere),
        });
        let pool = Self {
            inner: Arc::new(Inner {
                role,
                entries: entries.len(),
                balancer,
                members,
                make: Box::new(make),
                nowhere,
                changed: watch::channel(0).0,
            }),
        };
        pool.resolve().await;
        Ok(pool)
    }

    /// The role's name.
    pub fn role(&self) -> &'static str {
        self.inner.role
    }

    /// Resolve the entries and check every replica every [`REFRESH_EVERY`]
    /// until `shutdown`.
    pub async fn refresh_until(self, shutdown: Shutdown) {
        let mut tick = tokio::time::interval(REFRESH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.wait() => return,
                _ = tick.tick() => {}
            }
            self.resolve().await;
            tokio::select! {
                _ = shutdown.wait() => return,
                _ = self.inner.balancer.backends().run_health_check(true) => {}
            }
        }
    }

    /// [`Pool::refresh_until`] in a task of its own.
    pub fn spawn_refresh(&self, shutdown: &Shutdown) {
        tokio::spawn(self.clone().refresh_until(shutdown.clone()));
    }

    /// Resolve the entries once and bring the members in line.
    async fn resolve(&self) {
        let inner = &self.inner;
        if let Err(e) = inner.balancer.update().await {
            tracing::warn!(role = inner.role, error = %e, "cannot resolve the replicas");
            return;
        }
        let now = inner.balancer.backends().get_backend();
        let old = inner.members.load_full();
        if now.len() == old.len() && now.iter().all(|b| old.contains_key(b)) {
            return;
        }
        let mut members = Members::new();
        for backend in now.iter() {
            let member = match old.get(backend) {
                Some(m) => m.clone(),
                None => {
                    let Some(peer) = backend.ext.get::<Peer>() else {
                        continue;
                    };
                    match peer.transport() {
                        Ok(transport) => {
                            tracing::info!(role = inner.role, replica = %peer.name(), "replica added");
                            Arc::new(Member {
                                replica: Replica::new(peer),
                                client: (inner.make)(peer, transport.clone()),
                                health: HealthClient::new(transport.clone()),
                                transport,
                            })
                        }
                        Err(e) => {
                            tracing::warn!(role = inner.role, replica = %peer.name(), error = %e,
                                "bad replica address");
                            continue;
                        }
                    }
                }
            };
            members.insert(backend.clone(), member);
        }
        for (backend, m) in old.iter() {
            if !members.contains_key(backend) {
                tracing::info!(role = inner.role, replica = %m.replica.uri, "replica removed");
            }
        }
        inner.members.store(Arc::new(members));
        inner.changed.send_modify(|g| *g += 1);
    }

    /// The next replica in turn (see the module's header).
    pub fn pick(&self) -> Arc<Member<C>> {
        let members = self.inner.members.load();
        let steps = 2 * members.len() + 2;
        let balancer = &self.inner.balancer;
        balancer
            .select_with(b"", steps, |b, _| {
                members.get(b).is_some_and(|m| m.replica.usable())
            })
            .or_else(|| balancer.select_with(b"", steps, |b, _| members.contains_key(b)))
            .and_then(|b| members.get(&b).cloned())
            .unwrap_or_else(|| self.inner.nowhere.clone())
    }

    /// The next replica's client.
    pub fn client(&self) -> C {
        self.pick().client.clone()
    }

    /// Every replica known now.
    pub fn members(&self) -> Vec<Arc<Member<C>>> {
        self.inner.members.load().values().cloned().collect()
    }

    /// Some endpoint is configured (whether or not it resolves now).
    pub fn is_configured(&self) -> bool {
        self.inner.entries > 0
    }

    /// How many replicas are known now.
    pub fn len(&self) -> usize {
        self.inner.members.load().len()
    }

    /// No replica is known now.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many replicas there are, and how many of them answered
    /// "serving" to their last check.
    pub fn serving(&self) -> (usize, usize) {
        let members = self.inner.members.load();
        let serving = members.values().filter(|m| m.replica.serving()).count();
        (serving, members.len())
    }

    /// A receiver that changes whenever the membership does.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.inner.changed.subscribe()
    }

    /// `call` on a replica, made again on another when the one picked does
    /// not answer (at most once per replica, plus one): for calls that may
    /// be made twice (reads, links). The request must be built anew for
    /// each try (`call` gets a fresh client each time).
    pub async fn idempotent<T, Fut>(&self, call: impl FnMut(C) -> Fut) -> Result<T, tonic::Status>
    where
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        self.with_failover(call, transport_failure).await
    }

    /// `call` on a replica, made again on another when it never reached
    /// the one picked ([`never_sent`]): for any call, as that replica saw
    /// nothing of it.
    pub async fn unsent<T, Fut>(&self, call: impl FnMut(C) -> Fut) -> Result<T, tonic::Status>
    where
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        self.with_failover(call, never_sent).await
    }

    /// `call` on a replica, made again on another (at most once per
    /// replica, plus one) when `again` says of its failure that it was the
    /// way to the replica and the call may be made again; the replica is
    /// then taken out of turn.
    pub async fn with_failover<T, Fut>(
        &self,
        mut call: impl FnMut(C) -> Fut,
        again: impl Fn(&tonic::Status) -> bool,
    ) -> Result<T, tonic::Status>
    where
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        let mut tries = self.len() + 1;
        loop {
            tries -= 1;
            let member = self.pick();
            match call(member.client.clone()).await {
                Err(s) if tries > 0 && again(&s) => {
                    member.replica.failed();
                    tracing::warn!(role = self.inner.role, replica = %member.replica.uri,
                        error = %s.message(), "replica did not answer; trying another");
                }
                other => return other,
            }
        }
    }

    /// One transport over the whole pool: each call goes to the next
    /// replica in turn, and a replica a call cannot reach is taken out of
    /// turn. For callers that need no more than that (svc-sync, garbage
    /// collection).
    pub fn balanced(&self) -> Transport {
        let pool = self.clone();
        Transport::new(tower::service_fn(
            move |req: http::Request<tonic::body::Body>| {
                let member = pool.pick();
                async move {
                    let got = tower::ServiceExt::oneshot(member.transport.clone(), req).await;
                    if got.is_err() {
                        member.replica.failed();
                    }
                    got
                }
            },
        ))
    }

    /// Run `follow` on each replica's client while it is a member (a
    /// change feed to keep open, say), until `shutdown`. The [`Shutdown`]
    /// `follow` is given triggers when its replica leaves the pool.
    /// `count` is told how many replicas there are before `follow` starts
    /// on new ones.
    pub async fn follow_members<Fut>(
        self,
        shutdown: Shutdown,
        count: impl Fn(usize),
        follow: impl Fn(C, Shutdown) -> Fut,
    ) where
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let mut changed = self.watch();
        let mut running: HashMap<String, Shutdown> = HashMap::new();
        loop {
            let members = self.members();
            running.retain(|uri, stop| {
                let stays = members.iter().any(|m| &m.replica.uri == uri);
                if !stays {
                    stop.trigger();
                }
                stays
            });
            count(members.len());
            for m in members {
                if !running.contains_key(&m.replica.uri) {
                    let stop = Shutdown::new();
                    tokio::spawn(follow(m.client.clone(), stop.clone()));
                    running.insert(m.replica.uri.clone(), stop);
                }
            }
            tokio::select! {
                _ = shutdown.wait() => break,
                got = changed.changed() => if got.is_err() { break },
            }
        }
        for stop in running.values() {
            stop.trigger();
        }
    }

    /// The typed handle of type `H` of the first replica, when it is
    /// served in this process (see [`Peer::handle`]).
    pub fn handle<H: Clone + Send + Sync + 'static>(&self) -> Option<H> {
        self.inner
            .members
            .load()
            .values()
            .find_map(|m| m.replica.peer.handle())
    }
}

impl Pool<()> {
    /// A pool with no typed client, kept current until `shutdown`, for
    /// callers that use only [`Pool::balanced`] (and [`Pool::handle`]);
    /// `None` when `entries` is empty.
    pub async fn untyped(
        role: &'static str,
        service: &'static str,
        entries: &[Peer],
        shutdown: &Shutdown,
    ) -> Result<Option<Self>, BadEndpoint> {
        if entries.is_empty() {
            return Ok(None);
        }
        let pool = Self::new(role, service, entries, |_, _| ()).await?;
        pool.spawn_refresh(shutdown);
        Ok(Some(pool))
    }
}

/// A call's failure is the way to the replica, not the replica's answer:
/// the connection was refused or broke, or the call's task failed (a
/// role's own answers always carry Capstan's error detail). Only then is
/// another replica worth a try and this one worth taking out of turn: a
/// replica that answers UNAVAILABLE itself, for instance while its
/// database is down, answers as the others would.
pub fn transport_failure(s: &tonic::Status) -> bool {
    matches!(
        s.code(),
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
    ) && s.details().is_empty()
}

/// A call's failure is that it never reached its replica: the connection
/// to it was refused (nothing listens there any more).
pub fn never_sent(s: &tonic::Status) -> bool {
    use std::error::Error as _;
    if !transport_failure(s) {
        return false;
    }
    let mut cause = s.source();
    while let Some(e) = cause {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::ConnectionRefused
        {
            return true;
        }
        cause = e.source();
    }
    false
}

/// A transport whose every call fails with `UNAVAILABLE`: the way to a
/// role none of whose replicas is known.
fn nowhere(role: &'static str) -> Transport {
    Transport::new(tower::service_fn(
        move |_: http::Request<tonic::body::Body>| async move {
            Err::<http::Response<tonic::body::Body>, _>(TransportError(Box::new(
                tonic::Status::unavailable(format!(
                    "no replica of the {role} service is known (services.{role}.endpoints)"
                )),
            )))
        },
    ))
}

/// The configured entries of one role, resolved into pingora backends
/// (each carrying the [`Peer`] that reaches it).
struct Endpoints {
    role: &'static str,
    entries: Vec<Peer>,
    /// What each entry last resolved to, kept while it cannot be resolved.
    last: Mutex<HashMap<usize, Vec<Backend>>>,
}

#[async_trait::async_trait]
impl ServiceDiscovery for Endpoints {
    async fn discover(&self) -> pingora::Result<(BTreeSet<Backend>, HashMap<u64, bool>)> {
        let mut all = BTreeSet::new();
        for (i, entry) in self.entries.iter().enumerate() {
            match resolve(entry).await {
                Ok(found) => {
                    all.extend(found.iter().cloned());
                    self.last.lock().unwrap().insert(i, found);
                }
                Err(e) => {
                    tracing::warn!(role = self.role, entry = %entry.name(), error = %e,
                        "cannot resolve; keeping its last addresses");
                    if let Some(found) = self.last.lock().unwrap().get(&i) {
                        all.extend(found.iter().cloned());
                    }
                }
            }
        }
        Ok((all, HashMap::new()))
    }
}

/// The backends one entry stands for now.
async fn resolve(entry: &Peer) -> std::io::Result<Vec<Backend>> {
    let backend = |addr: LbAddr, peer: Peer| {
        let mut b = Backend {
            addr,
            weight: 1,
            ext: Default::default(),
        };
        b.ext.insert(peer);
        b
    };
    let uri = match &entry.target {
        Target::Local(role) => {
            // Not a socket: the identity of the one in-process replica.
            let addr = std::os::unix::net::SocketAddr::from_pathname(format!(
                "in-process/{}",
                role.name()
            ))?;
            return Ok(vec![backend(LbAddr::Unix(addr), entry.clone())]);
        }
        Target::Remote(uri) => uri,
    };
    let bad = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, what);
    let parsed: http::Uri = uri.parse().map_err(|e| bad(format!("{uri}: {e}")))?;
    let (Some(host), Some(scheme)) = (parsed.host(), parsed.scheme_str()) else {
        return Err(bad(format!("{uri}: no scheme or host")));
    };
    let port = parsed
        .port_u16()
        .unwrap_or(if scheme == "https" { 443 } else { 80 });
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        let addr = std::net::SocketAddr::from((ip, port));
        return Ok(vec![backend(LbAddr::Inet(addr), entry.clone())]);
    }
    let mut found: Vec<std::net::SocketAddr> =
        tokio::net::lookup_host((host, port)).await?.collect();
    found.sort();
    found.dedup();
    Ok(found
        .into_iter()
        .map(|addr| {
            let peer = Peer {
                target: Target::Remote(format!("{scheme}://{addr}")),
                secrets: entry.secrets.clone(),
            };
            backend(LbAddr::Inet(addr), peer)
        })
        .collect())
}

/// Standard gRPC health, asked of each member; the answer also sets the
/// member's [`Replica`] state.
struct GrpcHealth<C> {
    service: &'static str,
    members: Arc<ArcSwap<Members<C>>>,
}

#[async_trait::async_trait]
impl<C: Send + Sync + 'static> HealthCheck for GrpcHealth<C> {
    async fn check(&self, target: &Backend) -> pingora::Result<()> {
        // A backend resolved but not yet a member is checked next time.
        let Some(member) = self.members.load().get(target).cloned() else {
            return Ok(());
        };
        let mut client = member.health.clone();
        let asked = client.check(HealthCheckRequest {
            service: self.service.to_string(),
        });
        let serving = matches!(
            tokio::time::timeout(CHECK_TIMEOUT, asked).await,
            Ok(Ok(r)) if r.get_ref().status == ServingStatus::Serving as i32
        );
        member.replica.set(serving);
        if serving {
            Ok(())
        } else {
            Err(pingora::Error::explain(
                pingora::ErrorType::ConnectError,
                "not serving",
            ))
        }
    }

    fn health_threshold(&self, _success: bool) -> usize {
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A port nothing listens on.
    fn closed_port() -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_call_never_sent() {
        let peer = Peer::remote(
            &format!("http://127.0.0.1:{}", closed_port()),
            &crate::grpc::Secrets::none(),
        );
        let mut client = HealthClient::new(peer.transport().unwrap());
        let s = client
            .check(HealthCheckRequest::default())
            .await
            .unwrap_err();
        assert!(transport_failure(&s), "{s:?}");
        assert!(never_sent(&s), "{s:?}");
        // An answer of the role itself is neither.
        let answered = tonic::Status::with_details(
            tonic::Code::Unavailable,
            "database down",
            tonic::codegen::Bytes::from_static(b"detail"),
        );
        assert!(!transport_failure(&answered) && !never_sent(&answered));
    }

    #[tokio::test]
    async fn an_unresolvable_role_answers_unavailable_and_failover_skips_a_dead_replica() {
        let none = crate::grpc::Secrets::none();
        // Nothing resolves: calls fail UNAVAILABLE, not a panic.
        let empty: Pool<HealthClient<Transport>> =
            Pool::new("meta", "", &[], |_, t| HealthClient::new(t))
                .await
                .unwrap();
        assert!(empty.is_empty() && !empty.is_configured());
        let s = empty
            .client()
            .check(HealthCheckRequest::default())
            .await
            .unwrap_err();
        assert_eq!(s.code(), tonic::Code::Unavailable, "{s:?}");

        // One dead replica and one that serves health: every call made
        // with failover on calls never sent reaches the live one.
        let live = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let live_url = crate::grpc::listener_url(&live).unwrap();
        let routes = tonic::service::Routes::new(crate::grpc::health_service(&["s"]).await);
        let stop = Shutdown::new();
        tokio::spawn(crate::grpc::serve(
            routes,
            live.into(),
            crate::grpc::RoleMetrics::new("test"),
            stop.clone(),
        ));
        let dead = format!("http://127.0.0.1:{}", closed_port());
        let pool = Pool::new(
            "blob",
            "s",
            &[Peer::remote(&dead, &none), Peer::remote(&live_url, &none)],
            |_, t| HealthClient::new(t),
        )
        .await
        .unwrap();
        assert_eq!(pool.len(), 2);
        for _ in 0..4 {
            let got = pool
                .unsent(|mut c| async move {
                    c.check(HealthCheckRequest {
                        service: "s".into(),
                    })
                    .await
                })
                .await;
            assert!(got.is_ok(), "{got:?}");
        }
        let dead_member = pool.members().into_iter().find(|m| m.replica.uri == dead);
        assert!(!dead_member.unwrap().replica.usable());
        stop.trigger();
    }

    #[test]
    fn a_replica_taken_out_of_turn_comes_back_with_a_check() {
        let r = Replica::new(&Peer::remote("http://a", &crate::grpc::Secrets::none()));
        // Not checked yet: usable, not serving.
        assert!(r.usable() && !r.serving());
        r.failed();
        assert!(!r.usable());
        r.set(true);
        assert!(r.usable() && r.serving());
    }
}
