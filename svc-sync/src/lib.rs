//! svc-sync owns mirroring from and pull-through caching of upstream
//! registries (zot's `extensions.sync`). It is an OCI client of other
//! registries ([`upstream`]) that writes into Capstan only through svc-blob
//! and svc-meta's gRPC contracts ([`copy`]): blobs stream from the upstream
//! into svc-blob, the manifest is stored last. `SyncImage` serves the
//! gateway's pull-through, one upstream fetch per image however many
//! clients wait for it.

pub mod content;
pub mod copy;
pub mod error;
pub mod metrics;
pub mod mirror;
pub mod upstream;

use capstan_proto::direct::{MessageStream, SyncStreams};
use capstan_proto::sync::v1::{
    FetchBlobRequest, InfoRequest, InfoResponse, SyncImageRequest, SyncImageResponse,
    sync_service_server::{SyncService, SyncServiceServer},
};
use capstan_runtime::config::extensions::SyncConfig;
use capstan_runtime::grpc::{MAX_MESSAGE_BYTES, Peer, Peers, Pool};
use capstan_runtime::{Config, Shutdown, grpc};
use content::Content;
use error::SyncError;
use futures::future::{BoxFuture, Shared};
use futures::{FutureExt, StreamExt as _};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use tracing::Instrument as _;

/// One configured upstream registry.
#[derive(Debug)]
pub struct Registry {
    pub upstream: upstream::Upstream,
    pub contents: Vec<Content>,
    pub on_demand: bool,
    /// The first URL, for logs and metrics.
    pub name: String,
    pub poll_interval: Option<std::time::Duration>,
    pub max_retries: u32,
    pub retry_delay: std::time::Duration,
    /// Capstan's platform filter for indexes.
    pub platforms: Vec<String>,
    /// Only images with a signature (`onlySigned`).
    pub only_signed: bool,
    /// Keep Docker manifests as they are (`preserveDigest`).
    pub preserve_digest: bool,
}

type Pending = Shared<BoxFuture<'static, Result<String, SyncError>>>;
/// A blob fetch in flight; resolves when it is stored (or failed).
type BlobPending = Shared<BoxFuture<'static, ()>>;

/// The sync engine: upstreams, where copies go, fetches in flight.
#[derive(Debug)]
pub struct Syncer {
    registries: Vec<Registry>,
    pub stores: copy::Stores,
    inflight: Mutex<HashMap<(String, String), Pending>>,
    blobs_inflight: Mutex<HashMap<String, BlobPending>>,
    pub metrics: metrics::SyncMetrics,
}

/// Parse `credentialsFile`: `{"host:port": {"username", "password"}}`.
fn credentials(sync: &SyncConfig) -> Result<HashMap<String, (String, String)>, String> {
    let Some(path) = &sync.credentials_file else {
        return Ok(HashMap::new());
    };
    #[derive(serde::Deserialize)]
    struct Cred {
        username: String,
        password: String,
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("extensions.sync.credentialsFile {}: {e}", path.display()))?;
    let map: HashMap<String, Cred> = serde_json::from_str(&text).map_err(|e| {
        format!(
            "extensions.sync.credentialsFile {}: expected {{\"host:port\": {{\"username\", \"password\"}}}}: {e}",
            path.display()
        )
    })?;
    Ok(map
        .into_iter()
        .map(|(k, c)| (k, (c.username, c.password)))
        .collect())
}

/// Check `extensions.sync`; the message names the key at fault.
pub fn check_config(config: &Config) -> Result<(), String> {
    match config.extensions.as_ref().and_then(|e| e.sync.as_ref()) {
        Some(sync) => registries(sync).map(|_| ()),
        None => Ok(()),
    }
}

fn registries(sync: &SyncConfig) -> Result<Vec<Registry>, String> {
    let creds = credentials(sync)?;
    let mut out = Vec::new();
    for (i, r) in sync.registries.iter().enumerate() {
        let key = format!("extensions.sync.registries[{i}]");
        let upstream = upstream::Upstream::new(r, &creds).map_err(|e| format!("{key}.{e}"))?;
        let contents = if r.content.is_empty() {
            vec![Content::everything()]
        } else {
            r.content
                .iter()
                .enumerate()
                .map(|(j, c)| Content::new(c, &format!("{key}.content[{j}]")))
                .collect::<Result<_, _>>()?
        };
        out.push(Registry {
            upstream,
            contents,
            on_demand: r.on_demand,
            name: r.urls[0].clone(),
            poll_interval: r.poll_interval,
            max_retries: r.max_retries(),
            retry_delay: r.retry_delay(),
            platforms: r.platforms.clone(),
            only_signed: r.only_signed,
            preserve_digest: r.preserve_digest,
        });
    }
    Ok(out)
}

impl Syncer {
    pub fn registry(&self, i: usize) -> &Registry {
        &self.registries[i]
    }

    /// The engine for `config`, storing through `meta` and `blob`'s
    /// replicas (each call to the next in turn; both pools are kept
    /// current until `shutdown`).
    pub async fn new(
        config: &Config,
        meta: &[Peer],
        blob: &[Peer],
        shutdown: &Shutdown,
    ) -> anyhow::Result<Self> {
        let registries = match config.extensions.as_ref().and_then(|e| e.sync.as_ref()) {
            Some(s) if s.enabled() => registries(s).map_err(anyhow::Error::msg)?,
            _ => Vec::new(),
        };
        let (Some(meta), Some(blob)) = (
            Pool::untyped(
                "meta",
                capstan_proto::meta::v1::meta_service_server::SERVICE_NAME,
                meta,
                shutdown,
            )
            .await?,
            Pool::untyped(
                "blob",
                capstan_proto::blob::v1::blob_service_server::SERVICE_NAME,
                blob,
                shutdown,
            )
            .await?,
        ) else {
            anyhow::bail!("svc-sync needs services.meta.endpoints and services.blob.endpoints");
        };
        let stores = copy::Stores {
            meta: capstan_proto::meta::v1::meta_service_client::MetaServiceClient::new(
                meta.balanced(),
            )
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES),
            blob: {
                let transport = blob.balanced();
                let grpc = capstan_proto::blob::v1::blob_service_client::BlobServiceClient::new(
                    transport.clone(),
                )
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES);
                capstan_proto::direct::BlobClient::new(
                    grpc,
                    transport,
                    Arc::new(move || blob.handle::<Arc<dyn capstan_proto::direct::BlobStreams>>()),
                )
            },
            configs: config
                .extensions
                .as_ref()
                .is_some_and(|e| e.search_enabled()),
        };
        Ok(Self {
            registries,
            stores,
            inflight: Mutex::new(HashMap::new()),
            blobs_inflight: Mutex::new(HashMap::new()),
            metrics: metrics::SyncMetrics::new(),
        })
    }

    /// Pull-through of `reference` into local `repo`; one upstream fetch
    /// for all concurrent callers, which runs to its end even when they
    /// all go away (the next pull finds it stored).
    pub async fn on_demand(
        self: &Arc<Self>,
        repo: &str,
        reference: &str,
    ) -> Result<String, SyncError> {
        let key = (repo.to_string(), reference.to_string());
        let pending = {
            let mut inflight = self.inflight.lock();
            match inflight.get(&key) {
                Some(p) => p.clone(),
                None => {
                    let this = self.clone();
                    let k = key.clone();
                    let task = tokio::spawn(async move {
                        let r = this.fetch(&k.0, &k.1).await;
                        this.inflight.lock().remove(&k);
                        r
                    });
                    let p = async move {
                        task.await.unwrap_or_else(|e| {
                            Err(SyncError::Unavailable(format!("sync task: {e}")))
                        })
                    }
                    .boxed()
                    .shared();
                    inflight.insert(key, p.clone());
                    p
                }
            }
        };
        pending.await
    }

    /// The on-demand upstream and upstream name for local `repo`.
    fn locate(&self, repo: &str) -> Option<(&Registry, String)> {
        self.registries
            .iter()
            .filter(|r| r.on_demand)
            .find_map(|r| {
                r.contents
                    .iter()
                    .find_map(|c| c.upstream_name(repo))
                    .map(|u| (r, u))
            })
    }

    /// Pull-through of blob `digest` into local `repo`: `Ok(None)` when
    /// another fetch just stored it (read it locally), otherwise its size
    /// and a stream of its bytes as they are stored.
    pub async fn fetch_blob(
        self: &Arc<Self>,
        repo: &str,
        digest: &str,
    ) -> Result<
        Option<(
            u64,
            tokio::sync::mpsc::Receiver<Result<capstan_proto::blob::v1::ReadChunk, tonic::Status>>,
        )>,
        SyncError,
    > {
        // Whoever registers the fetch leads it; the others wait for it to
        // end and then read the stored copy.
        let claimed: Result<BlobLead, BlobPending> = {
            let mut inflight = self.blobs_inflight.lock();
            match inflight.get(digest) {
                Some(w) => Err(w.clone()),
                None => {
                    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
                    let pending: BlobPending = async move {
                        let _ = done_rx.await;
                    }
                    .boxed()
                    .shared();
                    inflight.insert(digest.to_string(), pending);
                    Ok(BlobLead {
                        syncer: self.clone(),
                        digest: digest.to_string(),
                        done: Some(done_tx),
                    })
                }
            }
        };
        let lead = match claimed {
            Ok(lead) => lead,
            Err(waiting) => {
                waiting.await;
                return Ok(None);
            }
        };
        // A caller that missed just before an earlier fetch finished finds
        // the blob stored now.
        let here = self
            .stores
            .meta
            .clone()
            .stat_blob(capstan_proto::meta::v1::StatBlobRequest {
                repo: repo.to_string(),
                digest: digest.to_string(),
            })
            .await;
        if here.is_ok() {
            return Ok(None);
        }
        let (reg, up_repo) = self
            .locate(repo)
            .ok_or_else(|| SyncError::NotFound(format!("no on-demand upstream for {repo}")))?;
        let response = reg.upstream.blob(&up_repo, digest).await?;
        let size = response
            .content_length()
            .ok_or_else(|| SyncError::Invalid(format!("{up_repo}@{digest}: no Content-Length")))?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let (stores, repo, digest) = (self.stores.clone(), repo.to_string(), digest.to_string());
        let (metrics, upstream) = (self.metrics.clone(), reg.name.clone());
        tokio::spawn(async move {
            match copy::tee_blob(stores, response, up_repo, repo.clone(), digest.clone(), tx).await
            {
                Ok(size) => metrics.blob(&upstream, size),
                Err(e) => {
                    metrics.failure(&upstream);
                    tracing::warn!(repo = %repo, digest = %digest, error = %e, "pull-through of a blob failed");
                }
            }
            drop(lead);
        });
        Ok(Some((size, rx)))
    }

    async fn fetch(&self, repo: &str, reference: &str) -> Result<String, SyncError> {
        // A caller that missed locally just before an earlier fetch stored
        // the image finds it here rather than fetching again.
        let local = self
            .stores
            .meta
            .clone()
            .get_manifest(capstan_proto::meta::v1::GetManifestRequest {
                repo: repo.to_string(),
                reference: reference.to_string(),
                head: true,
            })
            .await;
        if let Ok(m) = local {
            return Ok(m.into_inner().digest);
        }
        let is_tag = matches!(
            capstan_oci::Reference::parse(reference),
            Ok(capstan_oci::Reference::Tag(_))
        );
        let mut last = SyncError::NotFound(format!("no on-demand upstream for {repo}"));
        for r in self.registries.iter().filter(|r| r.on_demand) {
            for c in &r.contents {
                let Some(up_repo) = c.upstream_name(repo) else {
                    continue;
                };
                if is_tag && !c.tags().allows(reference) {
                    continue;
                }
                if r.only_signed {
                    let m = match r.upstream.manifest(&up_repo, reference).await {
                        Ok(m) => m,
                        Err(e) => {
                            last = e;
                            continue;
                        }
                    };
                    let d = capstan_oci::Digest::of(capstan_oci::Algorithm::Sha256, &m.bytes);
                    if !copy::is_signed(&r.upstream, &up_repo, &d.to_string()).await? {
                        last = SyncError::Unsigned(format!("{up_repo}:{reference}"));
                        continue;
                    }
                }
                let opts = copy::Options {
                    platforms: &r.platforms,
                    lazy: true,
                    preserve_digest: r.preserve_digest,
                };
                match copy::image(&self.stores, &r.upstream, &up_repo, repo, reference, opts).await
                {
                    Ok(stored) => {
                        self.metrics.image(&r.name, 1);
                        return Ok(stored.digest);
                    }
                    Err(e) => {
                        self.metrics.failure(&r.name);
                        tracing::info!(repo, reference, upstream_repo = %up_repo, error = %e, "on-demand sync failed");
                        last = e;
                    }
                }
            }
        }
        Err(last)
    }
}

/// The fetch of one blob in flight; when it ends (or fails before it
/// starts) the waiting callers are released.
struct BlobLead {
    syncer: Arc<Syncer>,
    digest: String,
    done: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for BlobLead {
    fn drop(&mut self) {
        self.syncer.blobs_inflight.lock().remove(&self.digest);
        if let Some(d) = self.done.take() {
            let _ = d.send(());
        }
    }
}

/// The SyncService implementation.
#[derive(Debug, Clone)]
pub struct SyncServiceImpl {
    upstreams: Vec<String>,
    syncer: Arc<Syncer>,
}

#[tonic::async_trait]
impl SyncService for SyncServiceImpl {
    async fn info(
        &self,
        _req: tonic::Request<InfoRequest>,
    ) -> Result<tonic::Response<InfoResponse>, tonic::Status> {
        Ok(tonic::Response::new(InfoResponse {
            upstreams: self.upstreams.clone(),
        }))
    }

    async fn sync_image(
        &self,
        req: tonic::Request<SyncImageRequest>,
    ) -> Result<tonic::Response<SyncImageResponse>, tonic::Status> {
        let r = req.get_ref();
        if capstan_oci::validate_repository(&r.repo).is_err()
            || capstan_oci::Reference::parse(&r.reference).is_err()
        {
            return Err(SyncError::NotFound(format!("{}:{}", r.repo, r.reference)).into());
        }
        let digest = self.syncer.on_demand(&r.repo, &r.reference).await?;
        Ok(tonic::Response::new(SyncImageResponse { digest }))
    }

    async fn metrics(
        &self,
        _req: tonic::Request<capstan_proto::sync::v1::MetricsRequest>,
    ) -> Result<tonic::Response<capstan_proto::sync::v1::MetricsResponse>, tonic::Status> {
        Ok(tonic::Response::new(
            capstan_proto::sync::v1::MetricsResponse {
                text: self.syncer.metrics.render(),
            },
        ))
    }

    type FetchBlobStream = MessageStream<capstan_proto::blob::v1::ReadChunk>;

    async fn fetch_blob(
        &self,
        req: tonic::Request<FetchBlobRequest>,
    ) -> Result<tonic::Response<Self::FetchBlobStream>, tonic::Status> {
        self.fetch_blob_stream(req).await
    }
}

/// `FetchBlob` in-process, with no encoding of the chunks.
#[tonic::async_trait]
impl SyncStreams for SyncServiceImpl {
    async fn fetch_blob(
        &self,
        req: tonic::Request<FetchBlobRequest>,
    ) -> Result<tonic::Response<MessageStream<capstan_proto::blob::v1::ReadChunk>>, tonic::Status>
    {
        let span = grpc::call_span("/capstan.sync.v1.SyncService/FetchBlob", req.metadata());
        self.fetch_blob_stream(req).instrument(span).await
    }
}

impl SyncServiceImpl {
    /// `FetchBlob`, from the network or in-process alike.
    async fn fetch_blob_stream(
        &self,
        req: tonic::Request<FetchBlobRequest>,
    ) -> Result<tonic::Response<MessageStream<capstan_proto::blob::v1::ReadChunk>>, tonic::Status>
    {
        let r = req.get_ref();
        if capstan_oci::validate_repository(&r.repo).is_err()
            || capstan_oci::Digest::parse(&r.digest).is_err()
        {
            return Err(SyncError::NotFound(format!("{}@{}", r.repo, r.digest)).into());
        }
        match self.syncer.fetch_blob(&r.repo, &r.digest).await? {
            None => {
                let mut resp = tonic::Response::new(futures::stream::empty().boxed());
                resp.metadata_mut().insert(
                    "blob-local",
                    tonic::metadata::MetadataValue::from_static("1"),
                );
                Ok(resp)
            }
            Some((size, rx)) => {
                let mut resp =
                    tonic::Response::new(tokio_stream::wrappers::ReceiverStream::new(rx).boxed());
                resp.metadata_mut().insert(
                    "blob-size",
                    size.to_string()
                        .parse()
                        .expect("a number is valid metadata"),
                );
                Ok(resp)
            }
        }
    }
}

/// Serve the role on `listener` until `shutdown`.
pub async fn serve(
    config: &Config,
    peers: &Peers,
    listen: impl Into<grpc::Listen>,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let listen = listen.into();
    let syncer = Arc::new(Syncer::new(config, &peers.meta, &peers.blob, &shutdown).await?);
    for i in 0..syncer.registries.len() {
        if syncer.registries[i].poll_interval.is_some() {
            tokio::spawn(mirror::run(syncer.clone(), i, shutdown.clone()));
        }
    }
    // Its own /metrics: calls, and the sync progress per upstream.
    let mut metrics = grpc::RoleMetrics::new("sync");
    let progress = syncer.metrics.clone();
    metrics.add_text(move || progress.render());
    let svc = SyncServiceImpl {
        upstreams: configured_upstreams(config),
        syncer,
    };
    let health = grpc::health_service(&["capstan.sync.v1.SyncService"]).await;
    // Embedded mode: FetchBlob's chunks skip encoding (grpc::local).
    let streams: Arc<dyn SyncStreams> = Arc::new(svc.clone());
    let _direct = listen.local().map(|role| role.provide(streams));
    let routes = tonic::service::Routes::new(health).add_service(SyncServiceServer::new(svc));
    tracing::info!(addr = %listen.describe(), "sync service listening");
    grpc::serve(routes, listen, metrics, shutdown).await?;
    Ok(())
}

/// The upstream URLs named under `extensions.sync.registries[].urls`.
fn configured_upstreams(config: &Config) -> Vec<String> {
    config
        .extensions
        .as_ref()
        .and_then(|e| e.sync.as_ref())
        .map(|s| s.registries.iter().flat_map(|r| r.urls.clone()).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_the_configured_upstreams() {
        let cfg = Config::from_value(
            serde_json::json!({"extensions": {"sync": {"registries": [
                {"urls": ["https://a", "https://b"]}, {"urls": ["https://c"]}
            ]}}}),
            Vec::<(String, String)>::new(),
        )
        .unwrap()
        .config;
        assert_eq!(
            configured_upstreams(&cfg),
            vec!["https://a", "https://b", "https://c"]
        );
        assert!(configured_upstreams(&Config::default()).is_empty());
    }

    #[test]
    fn bad_sync_configs_name_their_key() {
        let check = |v: serde_json::Value| {
            check_config(
                &Config::from_value(v, Vec::<(String, String)>::new())
                    .unwrap()
                    .config,
            )
        };
        let err =
            check(serde_json::json!({"extensions": {"sync": {"registries": [{"urls": []}]}}}))
                .unwrap_err();
        assert!(err.contains("registries[0].urls"), "{err}");
        let err = check(serde_json::json!({"extensions": {"sync": {"registries": [
            {"urls": ["http://u"], "content": [{"prefix": "a", "tags": {"regex": "("}}]}]}}}))
        .unwrap_err();
        assert!(err.contains("registries[0].content[0].tags.regex"), "{err}");
        let err = check(
            serde_json::json!({"extensions": {"sync": {"credentialsFile": "/nonexistent",
            "registries": [{"urls": ["http://u"]}]}}}),
        )
        .unwrap_err();
        assert!(err.contains("credentialsFile"), "{err}");
        assert!(
            check(serde_json::json!({"extensions": {"sync": {"registries": [
            {"urls": ["http://u"], "onDemand": true, "content": [{"prefix": "**"}]}]}}}))
            .is_ok()
        );
    }
}
