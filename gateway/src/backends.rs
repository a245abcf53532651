//! gRPC clients of the backend roles. Each role may have several replicas;
//! calls are spread round-robin over them (consecutive calls of one upload
//! may reach different svc-blob replicas, which the upload design allows),
//! skipping replicas whose last health check failed ([`crate::health`]).

use capstan_proto::auth::v1::auth_service_client::AuthServiceClient;
use capstan_proto::blob::v1::blob_service_client::BlobServiceClient;
use capstan_proto::direct::{BlobClient, BlobStreams, SyncClient, SyncStreams};
use capstan_proto::meta::v1::meta_service_client::MetaServiceClient;
use capstan_proto::sync::v1::sync_service_client::SyncServiceClient;
use capstan_runtime::grpc::{MAX_MESSAGE_BYTES, Peer, Transport};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::health::{Replica, Role};

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("no endpoint configured for the {0} service (services.{0}.endpoints)")]
    Missing(&'static str),
    #[error("bad endpoint {uri}: {source}")]
    BadUri {
        uri: String,
        source: tonic::transport::Error,
    },
}

/// A failure of the replica or the way to it (not an answer about the
/// request): worth another replica for an idempotent call.
fn unreachable(s: &tonic::Status) -> bool {
    matches!(
        s.code(),
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
    )
}

/// Round-robin over the replicas of one role.
#[derive(Debug)]
struct Pool<C> {
    clients: Vec<C>,
    /// What health checks last found of each client's replica (and where
    /// it is).
    replicas: Vec<Arc<Replica>>,
    next: AtomicUsize,
}

impl<C: Clone> Pool<C> {
    /// The next replica in turn that its checks do not find down (the
    /// next in turn when all are down: its error then reaches the caller).
    fn pick(&self) -> C {
        self.pick_replica().1
    }

    /// [`Pool::pick`], with the replica picked.
    fn pick_replica(&self) -> (Arc<Replica>, C) {
        let n = self.clients.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let i = (0..n)
            .map(|k| (start + k) % n)
            .find(|&i| self.replicas[i].usable())
            .unwrap_or(start % n);
        (self.replicas[i].clone(), self.clients[i].clone())
    }
}

impl<C: Clone> Pool<C> {
    /// `call` on a replica, made again on another when the one picked does
    /// not answer (at most once per replica, plus one).
    async fn idempotent<T, Fut>(
        &self,
        role: &'static str,
        call: impl Fn(C) -> Fut,
    ) -> Result<T, tonic::Status>
    where
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        let mut tries = self.clients.len() + 1;
        loop {
            tries -= 1;
            let (replica, client) = self.pick_replica();
            match call(client).await {
                Err(s) if unreachable(&s) && crate::resume::transport_failure(&s) && tries > 0 => {
                    replica.failed();
                    tracing::warn!(role, replica = %replica.uri, error = %s.message(),
                        "replica did not answer; trying another");
                }
                other => return other,
            }
        }
    }
}

fn pool<C>(
    role: &'static str,
    peers: &[Peer],
    make: impl Fn(&Peer, Transport) -> C,
) -> Result<Pool<C>, BackendError> {
    if peers.is_empty() {
        return Err(BackendError::Missing(role));
    }
    let clients = peers
        .iter()
        .map(|peer| transport(peer).map(|t| make(peer, t)))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Pool {
        clients,
        replicas: peers.iter().map(Replica::new).collect(),
        next: AtomicUsize::new(0),
    })
}

fn transport(peer: &Peer) -> Result<Transport, BackendError> {
    peer.transport().map_err(|source| BackendError::BadUri {
        uri: peer.name(),
        source,
    })
}

/// The meta and blob pools; clones share them.
#[derive(Debug, Clone)]
pub struct Backends {
    meta: Arc<Pool<MetaServiceClient<Transport>>>,
    blob: Arc<Pool<BlobClient<Transport>>>,
}

impl Backends {
    /// Lazily connecting clients; must be called inside a tokio runtime.
    pub fn new(meta: &[Peer], blob: &[Peer]) -> Result<Self, BackendError> {
        Ok(Self {
            meta: Arc::new(pool("meta", meta, |_, ch| {
                MetaServiceClient::new(ch)
                    .max_decoding_message_size(MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(MAX_MESSAGE_BYTES)
            })?),
            blob: Arc::new(pool("blob", blob, |peer, ch| {
                let grpc = BlobServiceClient::new(ch)
                    .max_decoding_message_size(MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(MAX_MESSAGE_BYTES);
                let peer = peer.clone();
                BlobClient::new(
                    grpc,
                    Arc::new(move || peer.handle::<Arc<dyn BlobStreams>>()),
                )
            })?),
        })
    }

    /// The roles these pools call, for health checks.
    pub fn health_roles(&self) -> Vec<Role> {
        vec![
            Role {
                name: "meta",
                service: capstan_proto::meta::v1::meta_service_server::SERVICE_NAME,
                replicas: self.meta.replicas.clone(),
            },
            Role {
                name: "blob",
                service: capstan_proto::blob::v1::blob_service_server::SERVICE_NAME,
                replicas: self.blob.replicas.clone(),
            },
        ]
    }

    /// One client per meta endpoint (for their change feeds).
    pub fn meta_all(&self) -> Vec<MetaServiceClient<Transport>> {
        self.meta.clients.clone()
    }

    pub fn meta(&self) -> MetaServiceClient<Transport> {
        self.meta.pick()
    }

    /// Every svc-blob replica with its endpoint (for their metrics).
    pub fn blob_all(&self) -> Vec<(String, BlobClient<Transport>)> {
        self.blob
            .replicas
            .iter()
            .map(|r| r.uri.clone())
            .zip(self.blob.clients.iter().cloned())
            .collect()
    }

    pub fn blob(&self) -> BlobClient<Transport> {
        self.blob.pick()
    }

    /// An idempotent call to svc-meta (a read; a link), made again on
    /// another replica when the one picked does not answer: a replica that
    /// just died is then taken out of turn at once, before its health
    /// check notices. The request must be built anew for each try
    /// (`call` is given a fresh client each time).
    pub async fn meta_idempotent<T, Fut>(
        &self,
        call: impl Fn(MetaServiceClient<Transport>) -> Fut,
    ) -> Result<T, tonic::Status>
    where
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        self.meta.idempotent("meta", call).await
    }

    /// [`Backends::meta_idempotent`] for svc-blob (lookups: `Stat`,
    /// `Locate`).
    pub async fn blob_idempotent<T, Fut>(
        &self,
        call: impl Fn(BlobClient<Transport>) -> Fut,
    ) -> Result<T, tonic::Status>
    where
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        self.blob.idempotent("blob", call).await
    }

    /// [`Backends::blob`], with the replica picked (to report a failure of
    /// it).
    pub fn blob_replica(&self) -> (Arc<Replica>, BlobClient<Transport>) {
        self.blob.pick_replica()
    }

    /// How many svc-blob replicas there are.
    pub fn blob_replicas(&self) -> usize {
        self.blob.clients.len()
    }
}

/// A lazily connecting client of one svc-auth replica.
pub fn auth_client(peer: &Peer) -> Result<AuthServiceClient<Transport>, BackendError> {
    transport(peer).map(AuthServiceClient::new)
}

/// A lazily connecting client of svc-sync.
pub fn sync_client(peer: &Peer) -> Result<SyncClient<Transport>, BackendError> {
    let grpc = SyncServiceClient::new(transport(peer)?)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let peer = peer.clone();
    Ok(SyncClient::new(
        grpc,
        Arc::new(move || peer.handle::<Arc<dyn SyncStreams>>()),
    ))
}
