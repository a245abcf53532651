//! Periodic mirroring (`pollInterval`): every interval, each repository of
//! the upstream catalog that `content` selects, each tag its filters keep,
//! copied to its local name unless the local tag already names the same
//! digest. A failed round is retried (`maxRetries`, `retryDelay`); since
//! unchanged images are skipped, a retry resumes where the last one stopped,
//! and the manifest-last order means no half-copied image is ever visible.

use crate::error::SyncError;
use crate::{Registry, Syncer, copy};
use capstan_oci::{Algorithm, Digest};
use capstan_proto::meta::v1::GetManifestRequest;
use capstan_runtime::Shutdown;
use std::sync::Arc;

/// What one round did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Round {
    pub copied: usize,
    pub unchanged: usize,
    pub unsigned: usize,
}

/// Mirror registry `i` every `pollInterval` until shutdown.
pub async fn run(syncer: Arc<Syncer>, i: usize, shutdown: Shutdown) {
    let reg = syncer.registry(i);
    let interval = reg
        .poll_interval
        .unwrap_or(std::time::Duration::from_secs(3600));
    loop {
        let mut attempt = 0;
        loop {
            let result = tokio::select! {
                _ = shutdown.wait() => return,
                r = round(&syncer.stores, reg) => r,
            };
            match result {
                Ok(r) => {
                    syncer.metrics.image(&reg.name, r.copied as u64);
                    tracing::info!(upstream = %reg.name, copied = r.copied, unchanged = r.unchanged, unsigned = r.unsigned, "mirror round done");
                    break;
                }
                Err(e) if attempt < reg.max_retries => {
                    syncer.metrics.failure(&reg.name);
                    attempt += 1;
                    tracing::warn!(upstream = %reg.name, error = %e, attempt, "mirror round failed; retrying");
                    tokio::select! {
                        _ = shutdown.wait() => return,
                        _ = tokio::time::sleep(reg.retry_delay) => {}
                    }
                }
                Err(e) => {
                    syncer.metrics.failure(&reg.name);
                    tracing::warn!(upstream = %reg.name, error = %e, "mirror round failed; next at the next interval");
                    break;
                }
            }
        }
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

/// One pass over everything the registry's content selects.
pub async fn round(stores: &copy::Stores, reg: &Registry) -> Result<Round, SyncError> {
    let mut done = Round::default();
    let catalog = reg.upstream.catalog().await?;
    for repo in &catalog {
        for c in reg.contents.iter().filter(|c| c.selects(repo)) {
            let local = c.local_name(repo);
            if capstan_oci::validate_repository(&local).is_err() {
                tracing::warn!(upstream_repo = %repo, local = %local, "mapped name is not a valid repository; skipped");
                continue;
            }
            for tag in reg.upstream.tags(repo).await? {
                if !c.tags().allows(&tag) {
                    continue;
                }
                let upstream = reg.upstream.manifest(repo, &tag).await?;
                let digest = Digest::of(Algorithm::Sha256, &upstream.bytes).to_string();
                let expected = copy::local_digest(&upstream, reg.preserve_digest);
                let here = stores
                    .meta
                    .clone()
                    .get_manifest(GetManifestRequest {
                        repo: local.clone(),
                        reference: tag.clone(),
                        head: true,
                    })
                    .await
                    .ok()
                    .map(|m| m.into_inner().digest);
                if here.is_some() && here == expected {
                    done.unchanged += 1;
                    continue;
                }
                if reg.only_signed && !copy::is_signed(&reg.upstream, repo, &digest).await? {
                    tracing::info!(upstream_repo = %repo, tag = %tag, "not signed; skipped (onlySigned)");
                    done.unsigned += 1;
                    continue;
                }
                let opts = copy::Options {
                    platforms: &reg.platforms,
                    lazy: false,
                    preserve_digest: reg.preserve_digest,
                };
                copy::image(stores, &reg.upstream, repo, &local, &tag, opts).await?;
                done.copied += 1;
            }
        }
    }
    Ok(done)
}
