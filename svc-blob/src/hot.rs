//! Which blobs are hot: read again soon after an earlier read, or just
//! pushed.
//!
//! Blob bytes are read with direct I/O by default (see `direct`): a one-off
//! read then costs almost no CPU and leaves the page cache to others. A blob
//! that is read again within [`HOT_WINDOW`] (a popular base layer, many CI
//! jobs pulling one image) is read through the page cache instead, so it
//! stays in memory and later reads are served from there rather than from
//! the device. That is the "admit on second access" rule of scan-resistant
//! caches: one pass of reads over many blobs never pushes the hot ones out.
//! A freshly pushed blob is recorded as read when it is offered to the
//! warmer (`crate::warm`), since pulls usually follow a push; a push storm
//! is bounded by the warmer's queue, and a registry that mostly stores
//! (a mirror's or a backup's target) turns warming off
//! (`storage.warmAfterPush`).

use capstan_oci::Digest;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// A blob read again within this time of its previous read is hot.
pub const HOT_WINDOW: Duration = Duration::from_secs(3600);

/// Blobs remembered at most; beyond it the least recently read half is
/// forgotten (a few hundred KiB of memory at most).
pub const REMEMBERED: usize = 8192;

/// The time of the last read of recently read blobs.
#[derive(Debug, Default)]
pub struct RecentReads {
    last: HashMap<Digest, Instant>,
}

impl RecentReads {
    /// Whether `digest` is hot at `now`: read within [`HOT_WINDOW`] before.
    pub fn is_hot(&self, digest: &Digest, now: Instant) -> bool {
        self.last
            .get(digest)
            .is_some_and(|t| now.saturating_duration_since(*t) < HOT_WINDOW)
    }

    /// Record a read of `digest` at `now`.
    pub fn record(&mut self, digest: &Digest, now: Instant) {
        if self.last.len() >= REMEMBERED && !self.last.contains_key(digest) {
            self.forget(now);
        }
        self.last.insert(digest.clone(), now);
    }

    /// Drop what is outside the window; then, if the map is still more than
    /// nine tenths full, the least recently read half (so a full map of
    /// recent reads is not scanned again at every new blob).
    fn forget(&mut self, now: Instant) {
        self.last
            .retain(|_, t| now.saturating_duration_since(*t) < HOT_WINDOW);
        if self.last.len() > REMEMBERED / 10 * 9 {
            let mut times: Vec<Instant> = self.last.values().copied().collect();
            let mid = times.len() / 2;
            let (_, cut, _) = times.select_nth_unstable(mid);
            let cut = *cut;
            self.last.retain(|_, t| *t > cut);
        }
    }

    /// How many blobs are remembered.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.last.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use capstan_oci::{Algorithm, Hasher};

    fn digest(i: usize) -> Digest {
        let mut h = Hasher::new(Algorithm::Sha256);
        h.update(&i.to_le_bytes());
        h.finish()
    }

    /// A read as the store makes it: asked, then recorded.
    fn touch(r: &mut RecentReads, d: &Digest, now: Instant) -> bool {
        let hot = r.is_hot(d, now);
        r.record(d, now);
        hot
    }

    #[test]
    fn a_blob_is_hot_when_read_again_within_the_window() {
        let mut r = RecentReads::default();
        let t0 = Instant::now();
        let soon = t0 + Duration::from_secs(5);
        assert!(!touch(&mut r, &digest(1), t0), "first read");
        assert!(touch(&mut r, &digest(1), soon), "read again");
        assert!(!touch(&mut r, &digest(2), t0), "another blob is not hot");
        // Asking does not count as a read.
        assert!(!r.is_hot(&digest(3), t0));
        assert!(!r.is_hot(&digest(3), soon));
        // Each read restarts the window.
        let later = soon + HOT_WINDOW - Duration::from_secs(1);
        assert!(touch(&mut r, &digest(1), later));
        // Past the window it is a one-off read again.
        let past = t0 + HOT_WINDOW + Duration::from_secs(1);
        assert!(!touch(&mut r, &digest(2), past));
    }

    #[test]
    fn memory_stays_bounded_and_the_latest_reads_are_kept() {
        let mut r = RecentReads::default();
        let t0 = Instant::now();
        for i in 0..3 * REMEMBERED {
            r.record(&digest(i), t0 + Duration::from_millis(i as u64));
            assert!(r.len() <= REMEMBERED, "{} remembered", r.len());
        }
        let last = 3 * REMEMBERED - 1;
        let now = t0 + Duration::from_millis(last as u64 + 1);
        assert!(
            r.is_hot(&digest(last), now),
            "the latest read is remembered"
        );
        assert!(!r.is_hot(&digest(0), now), "the oldest was forgotten");
    }
}
