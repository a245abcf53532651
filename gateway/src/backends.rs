//! gRPC clients of the backend roles. Each role is a
//! [`Pool`](capstan_runtime::grpc::Pool) of replicas, re-resolved and
//! health-checked every two seconds: calls are spread round-robin over
//! the replicas in turn (consecutive calls of one upload may reach
//! different svc-blob replicas, which the upload design allows), and a
//! replica whose check or call failed is skipped until a check succeeds.

use capstan_proto::auth::v1::auth_service_client::AuthServiceClient;
use capstan_proto::blob::v1::blob_service_client::BlobServiceClient;
use capstan_proto::direct::{BlobClient, BlobStreams, SyncClient, SyncStreams};
use capstan_proto::meta::v1::meta_service_client::MetaServiceClient;
use capstan_runtime::Shutdown;
use capstan_runtime::grpc::pool::BadEndpoint;
use capstan_runtime::grpc::{MAX_MESSAGE_BYTES, Peer, Pool, Replica, Transport};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("no endpoint configured for the {0} service (services.{0}.endpoints)")]
    Missing(&'static str),
    #[error(transparent)]
    BadEndpoint(#[from] BadEndpoint),
}

pub type MetaClient = MetaServiceClient<Transport>;
pub type AuthClient = AuthServiceClient<Transport>;

/// The meta and blob pools; clones share them.
#[derive(Debug, Clone)]
pub struct Backends {
    meta: Pool<MetaClient>,
    blob: Pool<BlobClient<Transport>>,
}

impl Backends {
    /// Pools of lazily connecting clients, resolved once; must be called
    /// inside a tokio runtime. [`Backends::spawn_refresh`] keeps them
    /// current.
    pub async fn new(meta: &[Peer], blob: &[Peer]) -> Result<Self, BackendError> {
        Ok(Self {
            meta: meta_pool(meta).await?,
            blob: blob_pool(blob).await?,
        })
    }

    /// Re-resolve and check both pools until `shutdown`.
    pub fn spawn_refresh(&self, shutdown: &Shutdown) {
        self.meta.spawn_refresh(shutdown);
        self.blob.spawn_refresh(shutdown);
    }

    /// svc-meta's replicas (their change feeds, `/readyz`).
    pub fn meta_pool(&self) -> &Pool<MetaClient> {
        &self.meta
    }

    /// svc-blob's replicas (`/readyz`).
    pub fn blob_pool(&self) -> &Pool<BlobClient<Transport>> {
        &self.blob
    }

    pub fn meta(&self) -> MetaClient {
        self.meta.client()
    }

    /// Every svc-blob replica with its address (for their metrics).
    pub fn blob_all(&self) -> Vec<(String, BlobClient<Transport>)> {
        self.blob
            .members()
            .into_iter()
            .map(|m| (m.replica.uri.clone(), m.client.clone()))
            .collect()
    }

    pub fn blob(&self) -> BlobClient<Transport> {
        self.blob.client()
    }

    /// An idempotent call to svc-meta (a read; a link), made again on
    /// another replica when the one picked does not answer: a replica that
    /// just died is then taken out of turn at once, before its health
    /// check notices. The request must be built anew for each try
    /// (`call` is given a fresh client each time).
    pub async fn meta_idempotent<T, Fut>(
        &self,
        call: impl Fn(MetaClient) -> Fut,
    ) -> Result<T, tonic::Status>
    where
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        self.meta.idempotent(call).await
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
        self.blob.idempotent(call).await
    }

    /// [`Backends::blob`], with the replica picked (to report a failure of
    /// it).
    pub fn blob_replica(&self) -> (Arc<Replica>, BlobClient<Transport>) {
        let m = self.blob.pick();
        (m.replica.clone(), m.client.clone())
    }

    /// How many svc-blob replicas there are now.
    pub fn blob_replicas(&self) -> usize {
        self.blob.len()
    }
}

fn required(role: &'static str, peers: &[Peer]) -> Result<(), BackendError> {
    if peers.is_empty() {
        return Err(BackendError::Missing(role));
    }
    Ok(())
}

async fn meta_pool(peers: &[Peer]) -> Result<Pool<MetaClient>, BackendError> {
    required("meta", peers)?;
    let service = capstan_proto::meta::v1::meta_service_server::SERVICE_NAME;
    Ok(Pool::new("meta", service, peers, |_, t| {
        MetaServiceClient::new(t)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    })
    .await?)
}

async fn blob_pool(peers: &[Peer]) -> Result<Pool<BlobClient<Transport>>, BackendError> {
    required("blob", peers)?;
    let service = capstan_proto::blob::v1::blob_service_server::SERVICE_NAME;
    Ok(Pool::new("blob", service, peers, |peer, t| {
        let grpc = BlobServiceClient::new(t.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let peer = peer.clone();
        BlobClient::new(
            grpc,
            t,
            Arc::new(move || peer.handle::<Arc<dyn BlobStreams>>()),
        )
    })
    .await?)
}

/// svc-auth's replicas (none when `peers` is empty).
pub async fn auth_pool(peers: &[Peer]) -> Result<Pool<AuthClient>, BackendError> {
    let service = capstan_proto::auth::v1::auth_service_server::SERVICE_NAME;
    Ok(Pool::new("auth", service, peers, |_, t| AuthServiceClient::new(t)).await?)
}

/// svc-sync's replicas.
pub async fn sync_pool(peers: &[Peer]) -> Result<Pool<SyncClient<Transport>>, BackendError> {
    required("sync", peers)?;
    let service = capstan_proto::sync::v1::sync_service_server::SERVICE_NAME;
    Ok(Pool::new("sync", service, peers, |peer, t| {
        let grpc = capstan_proto::sync::v1::sync_service_client::SyncServiceClient::new(t)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let peer = peer.clone();
        SyncClient::new(
            grpc,
            Arc::new(move || peer.handle::<Arc<dyn SyncStreams>>()),
        )
    })
    .await?)
}
