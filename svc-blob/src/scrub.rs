//! zot's scrub extension (`extensions.scrub`): every `interval`, read each
//! stored blob again and check it against its digest. A blob whose bytes no
//! longer match (a bad disk, a hand-edited file) is taken out of service at
//! once, so it is never served again; it is reported in the log and in
//! `capstan_scrub_corrupt_blobs_total`; and svc-meta removes every
//! repository's link to it, so that a push that checks for it finds it
//! missing and uploads it again, which heals the images that use it.
//!
//! A pass walks the blobs in digest order, one at a time, so it costs one
//! sequential read of the store and little memory; it stops at shutdown.

use crate::gc::MetaClient;
use crate::{BlobStore, Verdict};
use capstan_proto::meta::v1::ForgetBlobRequest;
use capstan_runtime::Shutdown;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Blobs listed per step of a pass.
const BATCH: usize = 1000;
/// The first pass starts this long after start-up (or at the interval, if
/// shorter).
const FIRST_PASS_AFTER: Duration = Duration::from_secs(10);

/// What one pass found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ScrubReport {
    pub verified: u64,
    pub corrupt: Vec<String>,
}

/// One pass over every blob of `store`; each corrupt one is unlinked
/// through `meta` (when given). Stops early, with what it found so far, at
/// `shutdown`.
pub async fn pass(
    store: &dyn BlobStore,
    meta: Option<&MetaClient>,
    shutdown: &Shutdown,
) -> ScrubReport {
    let mut report = ScrubReport::default();
    let mut after = None;
    loop {
        let batch = match store.blobs_after(after.as_ref(), BATCH).await {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "scrub cannot list blobs; pass ends");
                return report;
            }
        };
        let Some(last) = batch.last().cloned() else {
            return report;
        };
        for digest in batch {
            if shutdown.is_triggered() {
                return report;
            }
            match store.verify(&digest).await {
                Ok(Verdict::Intact) => report.verified += 1,
                Ok(Verdict::Gone) => {}
                Ok(Verdict::Corrupt { .. }) => {
                    report.verified += 1;
                    report.corrupt.push(digest.to_string());
                    if let Some(meta) = meta {
                        let forgot = meta
                            .clone()
                            .forget_blob(ForgetBlobRequest {
                                digest: digest.to_string(),
                            })
                            .await;
                        if let Err(e) = forgot {
                            tracing::error!(digest = %digest, error = %e,
                                "corrupt blob set aside, but svc-meta still links it: \
                                 pushes will skip uploading it until it is pushed anew");
                        }
                    }
                }
                Err(e) => tracing::warn!(digest = %digest, error = %e, "scrub cannot read blob"),
            }
        }
        after = Some(last);
    }
}

/// A pass every `interval` until `shutdown`.
pub async fn scrub_periodically(
    store: Arc<dyn BlobStore>,
    meta: Option<MetaClient>,
    interval: Duration,
    shutdown: Shutdown,
) {
    let mut wait = FIRST_PASS_AFTER.min(interval);
    loop {
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        let started = Instant::now();
        let report = pass(store.as_ref(), meta.as_ref(), &shutdown).await;
        tracing::info!(
            verified = report.verified,
            corrupt = report.corrupt.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "scrub pass done"
        );
        wait = interval.saturating_sub(started.elapsed());
    }
}
