//! Manifest pulls, counted where they are served and reported to svc-meta
//! in batches. The gateway's manifest cache answers most pulls, so svc-meta
//! would not see them otherwise; retention (`pulledWithin`,
//! `mostRecentlyPulledCount`) and download counts need them. A gateway that
//! dies loses at most the last [`REPORT_EVERY`] of its counts.

use capstan_proto::meta::v1::meta_service_client::MetaServiceClient;
use capstan_proto::meta::v1::{Pulls as PullsMsg, RecordPullsRequest};
use capstan_runtime::Shutdown;
use capstan_runtime::grpc::Transport;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How often counted pulls go to svc-meta.
pub const REPORT_EVERY: Duration = Duration::from_secs(1);
/// Pulls of this many distinct manifests per report, at most.
const REPORT_AT_ONCE: usize = 4096;

/// Per manifest digest: pulls counted and Unix seconds of the last.
type ByDigest = HashMap<String, (u64, i64)>;

/// Pulls counted since the last report, per repository and digest.
#[derive(Debug, Default)]
pub struct Pulls {
    pending: Mutex<HashMap<String, ByDigest>>,
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

impl Pulls {
    /// Count one pull of manifest `digest` of `repo`, now.
    pub fn record(&self, repo: &str, digest: &str) {
        let at = now();
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        // No allocation for a manifest already counted in this period.
        let by_digest = match pending.get_mut(repo) {
            Some(m) => m,
            None => pending.entry(repo.to_string()).or_default(),
        };
        match by_digest.get_mut(digest) {
            Some((count, last)) => {
                *count += 1;
                *last = at;
            }
            None => {
                by_digest.insert(digest.to_string(), (1, at));
            }
        }
    }

    /// Everything counted so far, leaving nothing.
    fn take(&self) -> Vec<PullsMsg> {
        let pending = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
        pending
            .into_iter()
            .flat_map(|(repo, m)| {
                m.into_iter().map(move |(digest, (count, last))| PullsMsg {
                    repo: repo.clone(),
                    digest,
                    count,
                    last,
                })
            })
            .collect()
    }

    /// Count again what a failed report carried.
    fn put_back(&self, pulls: Vec<PullsMsg>) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        for p in pulls {
            let e = pending
                .entry(p.repo)
                .or_default()
                .entry(p.digest)
                .or_insert((0, p.last));
            e.0 += p.count;
            e.1 = e.1.max(p.last);
        }
    }

    /// Send what was counted; on failure keep it for the next report.
    pub async fn report(&self, meta: &mut MetaServiceClient<Transport>) {
        let mut all = self.take();
        while !all.is_empty() {
            let rest = all.split_off(all.len().min(REPORT_AT_ONCE));
            let batch = std::mem::replace(&mut all, rest);
            if let Err(e) = meta
                .record_pulls(RecordPullsRequest {
                    pulls: batch.clone(),
                })
                .await
            {
                tracing::debug!(error = %e, "cannot report pulls yet; keeping them");
                self.put_back(batch);
                self.put_back(all);
                return;
            }
        }
    }
}

/// Report every [`REPORT_EVERY`] until `shutdown`, then once more.
pub async fn report_periodically(
    pulls: std::sync::Arc<Pulls>,
    pick: impl Fn() -> MetaServiceClient<Transport>,
    shutdown: Shutdown,
) {
    let mut tick = tokio::time::interval(REPORT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.wait() => break,
            _ = tick.tick() => pulls.report(&mut pick()).await,
        }
    }
    pulls.report(&mut pick()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_manifest_and_keeps_what_a_failed_report_carried() {
        let p = Pulls::default();
        for _ in 0..3 {
            p.record("a", "sha256:1");
        }
        p.record("a", "sha256:2");
        p.record("b", "sha256:1");
        let mut taken = p.take();
        taken.sort_by(|x, y| (&x.repo, &x.digest).cmp(&(&y.repo, &y.digest)));
        let counts: Vec<(&str, &str, u64)> = taken
            .iter()
            .map(|m| (m.repo.as_str(), m.digest.as_str(), m.count))
            .collect();
        assert_eq!(
            counts,
            [
                ("a", "sha256:1", 3),
                ("a", "sha256:2", 1),
                ("b", "sha256:1", 1)
            ]
        );
        assert!(p.take().is_empty());
        // A failed report's counts join those counted meanwhile.
        p.record("a", "sha256:1");
        p.put_back(taken);
        let again = p.take();
        let a1 = again
            .iter()
            .find(|m| m.repo == "a" && m.digest == "sha256:1")
            .unwrap();
        assert_eq!(a1.count, 4);
        assert_eq!(again.len(), 3);
    }
}
