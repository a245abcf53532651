//! Garbage collection (zot's `storage.gc`, `gcDelay`, `gcInterval`): svc-meta
//! marks, svc-blob sweeps, and neither takes a global lock.
//!
//! A collection reads two queues, never the whole registry, so its work
//! follows the garbage:
//!
//! 1. svc-meta's (`CollectGarbage`): it removes the queued repository links
//!    older than the cutoff that no manifest of their repository references,
//!    and lists the digests that nothing links or references any more; the
//!    sweep removes their bytes and tells svc-meta (`ForgetGarbage`).
//! 2. the store's marks ([`BlobStore::stored_before`]): every store of a blob
//!    leaves one, so a blob whose link never came (the gateway stopped
//!    between the commit and the link) is found too, once svc-meta confirms
//!    that nothing uses it (`Unreferenced`).
//!
//! A blob goes only if it was not stored again since the cutoff
//! ([`BlobStore::remove_stale`]): a push that uploads a blob the sweep is
//! about to remove either keeps it or stores it anew, and a link made
//! without an upload (a blob check, a mount, svc-sync finding the bytes
//! present) renews what it relies on first. So a push that sends its
//! manifest within `gcDelay` of its last blob never loses a blob.

use crate::{BlobError, BlobStore, Stores};
use capstan_oci::Digest;
use capstan_proto::meta::v1::meta_service_client::MetaServiceClient;
use capstan_proto::meta::v1::{
    ApplyRetentionRequest, CollectGarbageRequest, ForgetGarbageRequest, UnreferencedRequest,
};
use capstan_runtime::Shutdown;
use capstan_runtime::grpc::Transport;
use serde::Serialize;
use std::collections::HashSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// svc-meta, as the collector calls it.
pub type MetaClient = MetaServiceClient<Transport>;

/// Entries of each queue handled per step: bounds how long one step holds
/// svc-meta's rows (and, on SQLite, its write lock).
const BATCH: u32 = 256;
/// A dry run looks at most this many entries of each queue (its answer
/// must fit one message): beyond, it under-reports, and says so
/// (`truncated`).
const DRY_RUN_LIMIT: u32 = 20_000;
/// Digests per `Unreferenced` call.
const ASK_AT_ONCE: usize = 1024;
/// After a failed collection, the next attempt comes this soon (or at the
/// interval, if shorter).
const RETRY_AFTER: Duration = Duration::from_secs(30);
/// The first scheduled collection runs this long after start-up.
const FIRST_RUN_AFTER: Duration = Duration::from_secs(5);

/// Why a collection stopped early (it resumes where it stopped next time).
#[derive(Debug, thiserror::Error)]
pub enum GcError {
    #[error("svc-meta: {0}")]
    Meta(#[from] tonic::Status),
    #[error(transparent)]
    Blob(#[from] BlobError),
}

/// A repository's link that a collection removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RemovedLink {
    pub repo: String,
    pub digest: String,
    pub size: u64,
}

/// A tag or manifest that retention removed, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RetainedEntry {
    pub repo: String,
    pub digest: String,
    /// The tag removed; `None` when the manifest itself went.
    pub tag: Option<String>,
    /// The rule, in zot's words.
    pub reason: String,
}

/// A blob whose bytes a collection removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RemovedBlob {
    pub digest: String,
    pub size: u64,
}

/// What one collection did (or, in a dry run, would do).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct GcReport {
    pub dry_run: bool,
    /// What retention removed first (`storage.retention`).
    pub retention: Vec<RetainedEntry>,
    /// Retention removed nothing, only decided (a dry run, or
    /// `retention.dryRun`).
    pub retention_dry_run: bool,
    /// Links removed from repositories.
    pub links: Vec<RemovedLink>,
    /// Blobs removed from storage.
    pub blobs: Vec<RemovedBlob>,
    /// Bytes freed: the sum of the removed blobs' sizes.
    pub bytes_freed: u64,
    /// A dry run that stopped at its limit: a real run would remove more.
    pub truncated: bool,
}

/// Runs collections over a blob role's stores (the top-level one and
/// those of `storage.subPaths`), asking svc-meta. svc-meta's verdicts are
/// registry-wide: a blob nothing links anywhere goes from every store.
#[derive(Clone)]
pub struct Collector {
    stores: Stores,
    meta: MetaClient,
    /// The top level's `gcDelay` (svc-meta derives each store's cutoff
    /// from the one it is sent, by its own copy of the settings).
    delay: Duration,
    /// Each store's `gcDelay`, by subpath name (`""`: the top level); a
    /// store missing here does not collect.
    delays: std::collections::BTreeMap<String, Duration>,
}

impl std::fmt::Debug for Collector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collector")
            .field("delay", &self.delay)
            .finish_non_exhaustive()
    }
}

impl Collector {
    /// Collect from `stores`, sparing anything younger than `delay`
    /// (`gcDelay`) in each of them.
    pub fn new(stores: impl Into<Stores>, meta: MetaClient, delay: Duration) -> Self {
        let stores = stores.into();
        let delays = stores
            .all()
            .into_iter()
            .map(|(name, _)| (name.to_string(), delay))
            .collect();
        Self {
            stores,
            meta,
            delay,
            delays,
        }
    }

    /// Each store's own `gcDelay`, by subpath name, leaving out stores
    /// that do not collect (`storage.subPaths` entries' `gc`, `gcDelay`).
    pub fn with_store_delays(
        mut self,
        delays: std::collections::BTreeMap<String, Duration>,
    ) -> Self {
        self.delays = delays;
        self
    }

    /// One collection. With `dry_run` nothing changes and the report says
    /// what a real collection would remove now.
    pub async fn run(&self, dry_run: bool) -> Result<GcReport, GcError> {
        let cutoff = SystemTime::now()
            .checked_sub(self.delay)
            .unwrap_or(UNIX_EPOCH);
        let cutoff_secs = cutoff
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        let now = SystemTime::now();
        let cutoffs = self
            .delays
            .iter()
            .map(|(name, d)| (name.clone(), now.checked_sub(*d).unwrap_or(UNIX_EPOCH)))
            .collect();
        let mut run = Run {
            stores: &self.stores,
            cutoffs,
            dry_run,
            seen: HashSet::new(),
            report: GcReport {
                dry_run,
                ..GcReport::default()
            },
        };
        // A dry run changes nothing, so it cannot go step by step: it asks
        // for everything at once, up to a bound (svc-meta simulates the
        // step with plain reads).
        let limit = if dry_run { DRY_RUN_LIMIT } else { BATCH };
        let mut meta = self.meta.clone();
        // Retention first. The links of the manifests it removes are
        // queued as of now: a later collection, `gcDelay` on, takes them.
        let retained = meta
            .apply_retention(ApplyRetentionRequest { dry_run })
            .await?
            .into_inner();
        run.report.retention_dry_run = retained.dry_run;
        let retained = retained.removed;
        run.report
            .retention
            .extend(retained.into_iter().map(|r| RetainedEntry {
                repo: r.repo,
                digest: r.digest,
                tag: Some(r.tag).filter(|t| !t.is_empty()),
                reason: r.reason,
            }));
        loop {
            let step = meta
                .collect_garbage(CollectGarbageRequest {
                    cutoff: cutoff_secs,
                    limit,
                    dry_run,
                })
                .await?
                .into_inner();
            run.report
                .links
                .extend(step.links.iter().map(|l| RemovedLink {
                    repo: l.repo.clone(),
                    digest: l.digest.clone(),
                    size: l.size,
                }));
            let mut done = Vec::new();
            for g in &step.garbage {
                let swept = match Digest::parse(&g.digest) {
                    Ok(d) => run.sweep(&d).await,
                    Err(e) => {
                        tracing::warn!(digest = g.digest, error = %e, "not a digest");
                        true
                    }
                };
                // A blob that could not be removed stays queued.
                if swept {
                    done.push(g.clone());
                }
            }
            if dry_run {
                run.report.truncated |= step.more;
                break;
            }
            if !done.is_empty() {
                meta.forget_garbage(ForgetGarbageRequest {
                    garbage: done.clone(),
                })
                .await?;
            }
            // Stop when the queues are drained, or when a step named
            // garbage and none of it could be swept (next run).
            if !step.more || (!step.garbage.is_empty() && done.is_empty()) {
                break;
            }
        }
        let batch = if dry_run {
            DRY_RUN_LIMIT as usize
        } else {
            BATCH as usize
        };
        for (name, store) in self.stores.all() {
            match run.cutoffs.get(name).copied() {
                Some(cutoff) => {
                    self.sweep_marks(store.as_ref(), cutoff, &mut run, &mut meta, batch)
                        .await?
                }
                // A store that does not collect: its marks only pile up.
                None if !dry_run => loop {
                    let marks = store.stored_before(now, batch).await?;
                    store.forget_stored(&marks).await?;
                    if marks.len() < batch {
                        break;
                    }
                },
                None => {}
            }
        }
        Ok(run.report)
    }

    /// The marks phase on one store: blobs it stored before the cutoff
    /// that nothing links.
    async fn sweep_marks(
        &self,
        store: &dyn BlobStore,
        cutoff: SystemTime,
        run: &mut Run<'_>,
        meta: &mut MetaClient,
        batch: usize,
    ) -> Result<(), GcError> {
        let dry_run = run.dry_run;
        loop {
            let marks = store.stored_before(cutoff, batch).await?;
            if marks.is_empty() {
                break;
            }
            let mut failed = HashSet::new();
            // Digests this run swept already (svc-meta's queue named them)
            // need no second look.
            let mut asked: Vec<String> = marks
                .iter()
                .filter(|m| !run.seen.contains(&m.digest))
                .map(|m| m.digest.to_string())
                .collect();
            asked.sort_unstable();
            asked.dedup();
            for chunk in asked.chunks(ASK_AT_ONCE) {
                let unused = meta
                    .unreferenced(UnreferencedRequest {
                        digests: chunk.to_vec(),
                    })
                    .await?
                    .into_inner()
                    .digests;
                for d in unused {
                    if let Ok(digest) = Digest::parse(&d)
                        && !run.sweep(&digest).await
                    {
                        failed.insert(d);
                    }
                }
            }
            if dry_run {
                run.report.truncated |= marks.len() >= batch;
                break;
            }
            // The marks of a blob that could not be removed stay.
            let done: Vec<_> = marks
                .iter()
                .filter(|m| !failed.contains(&m.digest.to_string()))
                .cloned()
                .collect();
            store.forget_stored(&done).await?;
            if marks.len() < batch || done.is_empty() {
                break;
            }
        }
        Ok(())
    }
}

/// The state of one collection.
struct Run<'a> {
    stores: &'a Stores,
    /// Each collecting store's cutoff, by subpath name.
    cutoffs: std::collections::BTreeMap<String, SystemTime>,
    dry_run: bool,
    /// Digests already swept (both queues may name one).
    seen: HashSet<Digest>,
    report: GcReport,
}

impl Run<'_> {
    /// Remove (dry run: measure) the bytes of `digest`, which nothing
    /// links, from every store that has it, unless stored again there
    /// since the cutoff. `false` when a store failed (logged; the blob is
    /// tried again at the next collection).
    async fn sweep(&mut self, digest: &Digest) -> bool {
        if !self.seen.insert(digest.clone()) {
            return true;
        }
        let mut ok = true;
        for (name, store) in self.stores.all() {
            let Some(&cutoff) = self.cutoffs.get(name) else {
                continue;
            };
            let freed = if self.dry_run {
                store.stale_size(digest, cutoff).await
            } else {
                store.remove_stale(digest, cutoff).await
            };
            match freed {
                Ok(Some(size)) => {
                    self.report.blobs.push(RemovedBlob {
                        digest: digest.to_string(),
                        size,
                    });
                    self.report.bytes_freed += size;
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(digest = %digest, error = %e, "cannot remove an unreferenced blob");
                    ok = false;
                }
            }
        }
        if !ok {
            self.seen.remove(digest);
        }
        ok
    }
}

/// Collect every `interval` until `shutdown` (the first time shortly after
/// start-up; sooner again after a failure, e.g. svc-meta not up yet).
pub async fn collect_periodically(collector: Collector, interval: Duration, shutdown: Shutdown) {
    let mut wait = FIRST_RUN_AFTER.min(interval);
    loop {
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        let started = std::time::Instant::now();
        wait = match collector.run(false).await {
            Ok(r) => {
                tracing::info!(
                    retention = r.retention.len(),
                    links = r.links.len(),
                    blobs = r.blobs.len(),
                    bytes_freed = r.bytes_freed,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "garbage collection done"
                );
                interval
            }
            Err(e) => {
                tracing::warn!(error = %e, "garbage collection failed; will retry");
                RETRY_AFTER.min(interval)
            }
        };
    }
}
