//! Manifests cached in the gateway, kept coherent by svc-meta's change feed.
//!
//! The cache answers manifest GET/HEAD without a call to svc-meta, which is
//! what makes a pull's manifest lookups cheap. It is used only while the
//! gateway is subscribed to `Watch` on every meta endpoint: each committed
//! manifest or tag change drops the repository's entries. A push or delete
//! through this gateway drops them itself before answering, so a client
//! always reads its own writes; another gateway sees the change as soon as
//! the feed delivers it. Losing a feed empties the cache and turns it off
//! until the feed is back.
//!
//! An epoch counter closes the race between a lookup in flight and a change:
//! an entry fetched before a change is never stored after it.

use bytes::Bytes;
use capstan_proto::meta::v1::WatchRequest;
use capstan_proto::meta::v1::meta_service_client::MetaServiceClient;
use capstan_runtime::Shutdown;
use capstan_runtime::grpc::Transport;
use parking_lot::RwLock;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Total manifest bytes kept before the cache starts over.
const MAX_BYTES: usize = 64 * 1024 * 1024;

/// One cached manifest.
#[derive(Debug)]
pub struct Cached {
    pub digest: String,
    pub media_type: String,
    pub content: Bytes,
}

#[derive(Debug, Default)]
struct Inner {
    /// repo → reference (tag or digest) → manifest.
    repos: HashMap<String, HashMap<String, Arc<Cached>>>,
    bytes: usize,
    epoch: u64,
}

#[derive(Debug)]
pub struct ManifestCache {
    inner: RwLock<Inner>,
    /// Feeds currently subscribed, out of `feeds`.
    live_feeds: AtomicUsize,
    /// svc-meta replicas known now, each with a feed to follow.
    feeds: AtomicUsize,
}

impl ManifestCache {
    /// A cache that becomes usable once all `feeds` change feeds are live.
    pub fn new(feeds: usize) -> Self {
        Self {
            inner: RwLock::new(Inner::default()),
            live_feeds: AtomicUsize::new(0),
            feeds: AtomicUsize::new(feeds),
        }
    }

    /// There are `n` svc-meta replicas now (the pool's membership
    /// changed): the cache serves only while each one's feed is live.
    pub fn set_feeds(&self, n: usize) {
        self.feeds.store(n, Ordering::Release);
    }

    fn live(&self) -> bool {
        let feeds = self.feeds.load(Ordering::Acquire);
        feeds > 0 && self.live_feeds.load(Ordering::Acquire) == feeds
    }

    pub fn get(&self, repo: &str, reference: &str) -> Option<Arc<Cached>> {
        if !self.live() {
            return None;
        }
        self.inner.read().repos.get(repo)?.get(reference).cloned()
    }

    /// The epoch to pass to [`ManifestCache::insert`] for a lookup starting now.
    pub fn epoch(&self) -> u64 {
        self.inner.read().epoch
    }

    /// Store what a lookup that started at `epoch` found, unless anything
    /// changed since.
    pub fn insert(&self, epoch: u64, repo: &str, reference: &str, m: Arc<Cached>) {
        if !self.live() {
            return;
        }
        let mut inner = self.inner.write();
        if inner.epoch != epoch {
            return;
        }
        let size = m.content.len() * 2;
        if inner.bytes + size > MAX_BYTES {
            inner.repos.clear();
            inner.bytes = 0;
        }
        inner.bytes += size;
        let entries = inner.repos.entry(repo.to_string()).or_default();
        entries.insert(m.digest.clone(), m.clone());
        entries.insert(reference.to_string(), m);
    }

    /// Drop every entry of `repo`.
    pub fn invalidate(&self, repo: &str) {
        let mut inner = self.inner.write();
        inner.epoch += 1;
        if let Some(entries) = inner.repos.remove(repo) {
            let freed: usize = entries.values().map(|m| m.content.len()).sum();
            inner.bytes = inner.bytes.saturating_sub(freed);
        }
    }

    /// Drop everything.
    pub fn clear(&self) {
        let mut inner = self.inner.write();
        inner.epoch += 1;
        inner.repos.clear();
        inner.bytes = 0;
    }
}

/// Follow one meta endpoint's change feed until `shutdown`, reconnecting with
/// a growing pause (100 ms to 5 s) when it breaks.
pub async fn follow(
    cache: Arc<ManifestCache>,
    mut client: MetaServiceClient<Transport>,
    shutdown: Shutdown,
) {
    let mut pause = Duration::from_millis(100);
    while !shutdown.is_triggered() {
        let mut live = false;
        let feed = tokio::select! {
            _ = shutdown.wait() => break,
            f = client.watch(WatchRequest {}) => f,
        };
        if let Ok(feed) = feed {
            let mut feed = feed.into_inner();
            loop {
                let msg = tokio::select! {
                    _ = shutdown.wait() => break,
                    m = feed.message() => m,
                };
                match msg {
                    Ok(Some(change)) if change.repo.is_empty() => {
                        cache.clear();
                        if !live {
                            live = true;
                            pause = Duration::from_millis(100);
                            cache.live_feeds.fetch_add(1, Ordering::AcqRel);
                            tracing::debug!("manifest change feed live");
                        }
                    }
                    Ok(Some(change)) => cache.invalidate(&change.repo),
                    Ok(None) | Err(_) => break,
                }
            }
        }
        if live {
            cache.live_feeds.fetch_sub(1, Ordering::AcqRel);
            tracing::debug!("manifest change feed lost");
        }
        cache.clear();
        tokio::select! {
            _ = shutdown.wait() => break,
            _ = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(d: &str) -> Arc<Cached> {
        Arc::new(Cached {
            digest: d.into(),
            media_type: "x".into(),
            content: Bytes::from_static(b"{}"),
        })
    }

    fn live_cache() -> ManifestCache {
        let c = ManifestCache::new(1);
        c.live_feeds.store(1, Ordering::Release);
        c
    }

    #[test]
    fn serves_by_tag_and_digest_only_while_live() {
        let c = live_cache();
        let e = c.epoch();
        c.insert(e, "r", "latest", m("sha256:a"));
        assert_eq!(c.get("r", "latest").unwrap().digest, "sha256:a");
        assert!(c.get("r", "sha256:a").is_some());
        c.live_feeds.store(0, Ordering::Release);
        assert!(c.get("r", "latest").is_none());
        assert!(ManifestCache::new(0).get("r", "latest").is_none());
    }

    #[test]
    fn a_change_during_a_lookup_discards_its_result() {
        let c = live_cache();
        let e = c.epoch();
        c.invalidate("other");
        c.insert(e, "r", "latest", m("sha256:old"));
        assert!(c.get("r", "latest").is_none());
    }

    #[test]
    fn invalidation_is_per_repository() {
        let c = live_cache();
        c.insert(c.epoch(), "a", "t", m("sha256:a"));
        c.insert(c.epoch(), "b", "t", m("sha256:b"));
        c.invalidate("a");
        assert!(c.get("a", "t").is_none());
        assert!(c.get("b", "t").is_some());
        c.clear();
        assert!(c.get("b", "t").is_none());
    }
}
