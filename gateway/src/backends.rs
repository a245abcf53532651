//! gRPC clients of the backend roles. Each role may have several replicas;
//! calls are spread round-robin over them (consecutive calls of one upload
//! may reach different svc-blob replicas, which the upload design allows).

use capstan_proto::auth::v1::auth_service_client::AuthServiceClient;
use capstan_proto::blob::v1::blob_service_client::BlobServiceClient;
use capstan_proto::direct::{BlobClient, BlobStreams, SyncClient, SyncStreams};
use capstan_proto::meta::v1::meta_service_client::MetaServiceClient;
use capstan_proto::sync::v1::sync_service_client::SyncServiceClient;
use capstan_runtime::grpc::Transport;
use capstan_runtime::grpc::{MAX_MESSAGE_BYTES, connect, local};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("no endpoint configured for the {0} service (services.{0}.endpoints)")]
    Missing(&'static str),
    #[error("bad endpoint {uri:?}: {source}")]
    BadUri {
        uri: String,
        source: tonic::transport::Error,
    },
}

/// Round-robin over the replicas of one role.
#[derive(Debug)]
struct Pool<C> {
    clients: Vec<C>,
    /// The endpoint of each client.
    uris: Vec<String>,
    next: AtomicUsize,
}

impl<C: Clone> Pool<C> {
    fn pick(&self) -> C {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.clients.len();
        self.clients[i].clone()
    }
}

fn pool<C>(
    role: &'static str,
    uris: &[String],
    make: impl Fn(&str, Transport) -> C,
) -> Result<Pool<C>, BackendError> {
    if uris.is_empty() {
        return Err(BackendError::Missing(role));
    }
    let clients = uris
        .iter()
        .map(|uri| {
            connect(uri)
                .map(|t| make(uri, t))
                .map_err(|source| BackendError::BadUri {
                    uri: uri.clone(),
                    source,
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Pool {
        clients,
        uris: uris.to_vec(),
        next: AtomicUsize::new(0),
    })
}

#[derive(Debug)]
pub struct Backends {
    meta: Pool<MetaServiceClient<Transport>>,
    blob: Pool<BlobClient<Transport>>,
}

impl Backends {
    /// Lazily connecting clients; must be called inside a tokio runtime.
    pub fn new(meta_uris: &[String], blob_uris: &[String]) -> Result<Self, BackendError> {
        Ok(Self {
            meta: pool("meta", meta_uris, |_, ch| {
                MetaServiceClient::new(ch)
                    .max_decoding_message_size(MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(MAX_MESSAGE_BYTES)
            })?,
            blob: pool("blob", blob_uris, |uri, ch| {
                let grpc = BlobServiceClient::new(ch)
                    .max_decoding_message_size(MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(MAX_MESSAGE_BYTES);
                let uri = uri.to_string();
                BlobClient::new(
                    grpc,
                    Arc::new(move || local::handle::<Arc<dyn BlobStreams>>(&uri)),
                )
            })?,
        })
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
            .uris
            .iter()
            .cloned()
            .zip(self.blob.clients.iter().cloned())
            .collect()
    }

    pub fn blob(&self) -> BlobClient<Transport> {
        self.blob.pick()
    }
}

/// A lazily connecting client of one svc-auth replica.
pub fn auth_client(uri: &str) -> Result<AuthServiceClient<Transport>, BackendError> {
    connect(uri)
        .map(AuthServiceClient::new)
        .map_err(|source| BackendError::BadUri {
            uri: uri.to_string(),
            source,
        })
}

/// A lazily connecting client of svc-sync.
pub fn sync_client(uri: &str) -> Result<SyncClient<Transport>, BackendError> {
    let grpc = connect(uri)
        .map(|t| {
            SyncServiceClient::new(t)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES)
        })
        .map_err(|source| BackendError::BadUri {
            uri: uri.to_string(),
            source,
        })?;
    let uri = uri.to_string();
    Ok(SyncClient::new(
        grpc,
        Arc::new(move || local::handle::<Arc<dyn SyncStreams>>(&uri)),
    ))
}
