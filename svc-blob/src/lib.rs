//! svc-blob owns Capstan's bytes: a global content-addressed blob store keyed
//! by digest (one copy per digest, knowing nothing of repositories, tags or
//! manifests) and the resumable upload sessions that fill it. A blob becomes
//! visible only once its digest (sha256 or sha512) has been verified, and
//! only by an atomic step (a rename on the filesystem, the completion of a
//! write in S3). Storage sits behind the narrow [`BlobStore`] trait;
//! [`FsStore`] keeps blobs and upload state under `storage.rootDirectory`,
//! [`S3Store`] in the bucket of `storage.storageDriver`; either way upload
//! state lives in the storage itself, so that consecutive calls of one
//! upload may be served by different replicas sharing it.
//! The crate serves the `capstan.blob.v1.BlobService` gRPC contract, removes
//! upload sessions left idle for longer than `storage.uploadExpiry`, and runs
//! garbage collection's sweep ([`gc`]), asking svc-meta what is unused.

mod direct;
mod error;
mod fs;
pub mod gc;
mod hot;
mod resumable;
mod s3;
pub mod scrub;
mod service;
mod store;
mod stores;
#[cfg(test)]
mod suite;
mod warm;

pub use error::BlobError;
pub use fs::FsStore;
pub use s3::S3Store;
pub use service::{BlobGrpc, grpc_service};
pub use store::{BlobStore, ByteStream, StoredMark, UploadId, Verdict};
pub use stores::Stores;
pub use warm::WarmCounts;

use anyhow::Context as _;
use capstan_proto::blob::v1::blob_service_server::SERVICE_NAME;
use capstan_proto::direct::BlobStreams;
use capstan_runtime::grpc::{Listen, Peers};
use capstan_runtime::{Config, Shutdown, grpc};
use std::sync::Arc;
use std::time::Duration;

/// Run the blob role where `listen` says until `shutdown`: the stores the
/// configuration names ([`open_stores`]), BlobService plus the gRPC health
/// service, a background sweep of stale uploads in each store, garbage
/// collection and scrub.
pub async fn serve(
    config: &Config,
    peers: &Peers,
    listen: impl Into<Listen>,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let listen = listen.into();
    let storage = &config.storage;
    let root = &storage.root_directory;
    let stores = open_stores(config, true).await?;
    let mut tasks = Vec::new();
    for (_, store) in stores.all() {
        tasks.push(tokio::spawn(expire_uploads(
            store.clone(),
            storage.upload_expiry,
            shutdown.clone(),
        )));
    }
    // svc-meta, for garbage collection and scrub.
    let meta = meta_client(peers, &shutdown).await?;
    let gc = match collector(config, stores.clone(), meta.clone())? {
        Some(c) if !storage.gc_interval().is_zero() => Some(tokio::spawn(
            gc::collect_periodically(c, storage.gc_interval(), shutdown.clone()),
        )),
        _ => None,
    };
    if let Some(s) = config.extensions.as_ref().and_then(|e| e.scrub.as_ref())
        && s.enabled()
    {
        for (_, store) in stores.all() {
            tasks.push(tokio::spawn(scrub::scrub_periodically(
                store.clone(),
                meta.clone(),
                s.interval(),
                shutdown.clone(),
            )));
        }
    }
    // Serving once every store answers; re-checked while the role runs, so
    // a store that goes away makes it unready and one that comes (back)
    // ready, with no restart.
    // A store that answers at once makes the role serving from the start.
    let answers = tokio::time::timeout(STORE_CHECK_TIMEOUT, check_stores(&stores))
        .await
        .is_ok_and(|failed| failed.is_none());
    let (reporter, health) = grpc::health_reporter(&[SERVICE_NAME], answers).await;
    tasks.push(tokio::spawn(watch_stores(
        stores.clone(),
        reporter,
        answers,
        shutdown.clone(),
    )));
    let routes = tonic::service::Routes::new(health).add_service(grpc_service(stores.clone()));
    let routes = service::add_bytes_routes(routes, stores.clone());
    // Embedded mode: the byte-carrying calls skip encoding (grpc::local).
    let streams: Arc<dyn BlobStreams> = Arc::new(BlobGrpc::new(stores.clone()));
    let _direct = listen.local().map(|role| role.provide(streams));
    let addr = listen.describe();
    match &storage.storage_driver {
        Some(d) => tracing::info!(%addr, bucket = %d.bucket,
            prefix = %d.prefix(), "blob service listening"),
        None => tracing::info!(%addr, root = %root.display(),
            "blob service listening"),
    }
    for (name, _) in stores.all().into_iter().skip(1) {
        tracing::info!(
            subpath = name,
            "repositories {name}/… keep their blobs in their own store"
        );
    }
    // Its own /metrics: calls, and the stores' read and warming counters.
    let mut metrics = grpc::RoleMetrics::new("blob");
    let (counted, me) = (stores.clone(), addr.clone());
    metrics.add_text(move || {
        capstan_proto::metrics::render_blob(&[(me.clone(), service::counters(&counted))])
    });
    let served = grpc::serve(routes, listen, metrics, shutdown).await;
    // Normally already stopped by the shutdown; not so if the server failed.
    tasks.extend(gc);
    for task in tasks {
        task.abort();
        let _ = task.await;
    }
    served.context("blob grpc server failed")?;
    tracing::info!("blob service stopped");
    Ok(())
}

/// Every blob store the configuration names: the top-level one and one
/// per `storage.subPaths` entry. `recover` puts back what a collection
/// interrupted by a crash left in a filesystem store's trash: for the role
/// itself, not for a tool that runs beside it.
pub async fn open_stores(config: &Config, recover: bool) -> anyhow::Result<Stores> {
    let storage = &config.storage;
    let default = open_store(
        storage.storage_driver.as_ref(),
        &storage.root_directory,
        storage.commit,
        config,
        recover,
    )
    .await?;
    let mut sub = std::collections::BTreeMap::new();
    for (key, s) in &storage.sub_paths {
        let root = s.root_directory.clone().unwrap_or_default();
        let store = open_store(
            s.storage_driver.as_ref(),
            &root,
            s.commit.unwrap_or(storage.commit),
            config,
            recover,
        )
        .await
        .with_context(|| format!("storage.subPaths.{key}"))?;
        sub.insert(key.trim_matches('/').to_string(), store);
    }
    Ok(Stores::new(default, sub))
}

/// One blob store: the bucket of `driver` if given, else the directory
/// `root`.
async fn open_store(
    driver: Option<&capstan_runtime::config::storage_driver::StorageDriverConfig>,
    root: &std::path::Path,
    commit: bool,
    config: &Config,
    recover: bool,
) -> anyhow::Result<Arc<dyn BlobStore>> {
    let storage = &config.storage;
    if let Some(driver) = driver {
        let store = S3Store::connect(driver).await.with_context(|| {
            format!(
                "cannot open blob storage in bucket {:?} at {}",
                driver.bucket,
                driver.endpoint_url().unwrap_or_else(|| "AWS".into())
            )
        })?;
        return Ok(Arc::new(store));
    }
    let fs = if recover {
        FsStore::new(root, commit).await
    } else {
        FsStore::beside_running(root, commit).await
    };
    Ok(Arc::new(
        fs.with_context(|| format!("cannot open blob storage at {}", root.display()))?
            .with_direct_io(storage.direct_io)
            .with_warm_after_push(recover && storage.warm_after_push && storage.direct_io)?,
    ))
}

/// The garbage collector for `store`, if `storage.gc` is on: it needs
/// svc-meta (`meta`, see [`meta_client`]). `None`, with a warning, when GC
/// is on but svc-meta is not known.
pub fn collector(
    config: &Config,
    stores: Stores,
    meta: Option<gc::MetaClient>,
) -> anyhow::Result<Option<gc::Collector>> {
    let storage = &config.storage;
    // Each store's own settings (`storage.subPaths` entries' gc, gcDelay).
    let delays: std::collections::BTreeMap<String, Duration> = stores
        .all()
        .into_iter()
        .map(|(name, _)| (name.to_string(), storage.gc_scope(name)))
        .filter(|(_, scope)| scope.enabled)
        .map(|(name, scope)| (name, scope.delay))
        .collect();
    if delays.is_empty() {
        return Ok(None);
    }
    let Some(meta) = meta else {
        tracing::warn!(
            "storage.gc is on but services.meta.endpoints is empty: \
             this blob role cannot collect garbage"
        );
        return Ok(None);
    };
    Ok(Some(
        gc::Collector::new(stores, meta, storage.gc_delay()).with_store_delays(delays),
    ))
}

/// svc-meta, as garbage collection and scrub call it: each call to the
/// next of `peers.meta`'s replicas in turn, kept current until
/// `shutdown`. `None` when no svc-meta is configured.
pub async fn meta_client(
    peers: &Peers,
    shutdown: &Shutdown,
) -> anyhow::Result<Option<gc::MetaClient>> {
    let service = capstan_proto::meta::v1::meta_service_server::SERVICE_NAME;
    let Some(pool) = grpc::Pool::untyped("meta", service, &peers.meta, shutdown)
        .await
        .context("services.meta.endpoints")?
    else {
        return Ok(None);
    };
    Ok(Some(
        capstan_proto::meta::v1::meta_service_client::MetaServiceClient::new(pool.balanced())
            .max_decoding_message_size(grpc::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(grpc::MAX_MESSAGE_BYTES),
    ))
}

/// How long a check of every store may take before it counts as failed.
const STORE_CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// The first store that does not answer, and why.
async fn check_stores(stores: &Stores) -> Option<(String, BlobError)> {
    for (name, store) in stores.all() {
        if let Err(e) = store.check().await {
            return Some((name.to_string(), e));
        }
    }
    None
}

/// Check every store until `shutdown` and report the role serving while
/// all answer: every 10 s while they do, with a capped exponential backoff
/// from 0.5 s to 30 s while one does not.
async fn watch_stores(
    stores: Stores,
    reporter: tonic_health::server::HealthReporter,
    serving: bool,
    shutdown: Shutdown,
) {
    let mut backoff = Duration::from_millis(500);
    let mut was = Some(serving);
    if !serving {
        tracing::warn!("blob storage does not answer yet: not serving; checking again");
    }
    loop {
        // A check that hangs (a connection silently dropped) counts as a
        // store that does not answer.
        let failed = tokio::time::timeout(STORE_CHECK_TIMEOUT, check_stores(&stores))
            .await
            .unwrap_or_else(|_| {
                Some((
                    String::new(),
                    BlobError::Unavailable("the storage check did not finish in time".into()),
                ))
            });
        let ok = failed.is_none();
        if was != Some(ok) {
            let status = if ok {
                tonic_health::ServingStatus::Serving
            } else {
                tonic_health::ServingStatus::NotServing
            };
            for s in [SERVICE_NAME, ""] {
                reporter.set_service_status(s, status).await;
            }
            match &failed {
                None => tracing::info!("blob storage answers: serving"),
                Some((name, e)) => tracing::warn!(
                    subpath = name.as_str(),
                    error = %e,
                    "blob storage does not answer: not serving; checking again"
                ),
            }
            was = Some(ok);
        }
        let wait = if ok {
            backoff = Duration::from_millis(500);
            Duration::from_secs(10)
        } else {
            let w = backoff;
            backoff = (backoff * 2).min(Duration::from_secs(30));
            w
        };
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// How often stale uploads are looked for, given the expiry age.
fn sweep_period(idle: Duration) -> Duration {
    (idle / 4).clamp(Duration::from_secs(60), Duration::from_secs(3600))
}

/// Remove uploads idle for `idle`, at start-up and then periodically.
async fn expire_uploads(store: Arc<dyn BlobStore>, idle: Duration, shutdown: Shutdown) {
    let mut tick = tokio::time::interval(sweep_period(idle));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.wait() => break,
            _ = tick.tick() => match store.expire_uploads(idle).await {
                Ok(0) => tracing::debug!("no stale uploads"),
                Ok(removed) => tracing::info!(removed, "stale uploads removed"),
                Err(e) => tracing::warn!(error = %e, "upload expiry failed"),
            },
        }
    }
}

#[cfg(test)]
mod tests;
