//! Freshly pushed blobs, read once into the page cache in the background.
//!
//! Blob bytes are written with direct I/O (`crate::direct`): a blob that was
//! just pushed is on the device but not in memory. Yet a push is usually
//! followed by pulls of the same layers (a CI job pushes an image, then
//! deployments pull it), and a registry that writes through the page cache
//! serves those pulls from memory. The [`Warmer`] gives that back without
//! putting the copy on the push's path: once a blob written directly is
//! committed, one background thread reads it through the page cache, and the
//! blob counts as hot (`crate::hot`), so its reads are served from the cache.
//! At most [`QUEUED`] blobs wait; in a push storm the rest stay cold rather
//! than queueing reads without bound. `storage.warmAfterPush: false` turns
//! it off (a write-mostly registry, such as a backup target, gains nothing
//! from the extra read of every blob).

use crate::hot::RecentReads;
use capstan_oci::Digest;
use std::fs::File;
use std::io::{self, Read as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;
use tokio::sync::watch;

/// Blobs waiting to be warmed at most.
pub const QUEUED: usize = 16;

/// Bytes read per call while warming.
const READ_BYTES: usize = 2 << 20;

struct Job {
    digest: Digest,
    path: PathBuf,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job").field("digest", &self.digest).finish()
    }
}

/// What the warmer has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WarmCounts {
    /// Blobs read to their end into the page cache.
    pub warmed: u64,
    /// Offers refused because the queue was full (those blobs stay cold).
    pub skipped: u64,
    /// Blobs that could not be read (gone meanwhile, or an I/O error).
    pub failed: u64,
    /// Blobs accepted and not finished yet (queued or being read).
    pub pending: u64,
}

#[derive(Debug, Default)]
struct Counters {
    accepted: AtomicU64,
    warmed: AtomicU64,
    skipped: AtomicU64,
    failed: AtomicU64,
}

/// Reads committed blobs into the page cache, one at a time, on a thread of
/// its own; the thread ends when the last handle is dropped.
#[derive(Debug)]
pub struct Warmer {
    jobs: SyncSender<Job>,
    recent: Arc<Mutex<RecentReads>>,
    counters: Arc<Counters>,
    /// Blobs the thread has finished with (read, or given up on).
    #[cfg(test)]
    finished: watch::Receiver<u64>,
}

impl Warmer {
    /// Start the warming thread; warmed blobs are recorded in `recent`.
    pub fn start(recent: Arc<Mutex<RecentReads>>) -> io::Result<Self> {
        let (jobs, queue) = mpsc::sync_channel::<Job>(QUEUED);
        let (finished_tx, _finished) = watch::channel(0u64);
        let counters = Arc::new(Counters::default());
        let counted = counters.clone();
        std::thread::Builder::new()
            .name("blob-warm".into())
            .spawn(move || {
                let mut buf = vec![0u8; READ_BYTES];
                while let Ok(job) = queue.recv() {
                    let started = Instant::now();
                    match read_through(&job.path, &mut buf) {
                        Ok(bytes) => {
                            counted.warmed.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(
                                digest = %job.digest,
                                bytes,
                                ms = started.elapsed().as_millis() as u64,
                                "blob warmed"
                            );
                        }
                        Err(e) => {
                            counted.failed.fetch_add(1, Ordering::Relaxed);
                            if e.kind() == io::ErrorKind::NotFound {
                                // Deleted meanwhile (garbage collection).
                                tracing::debug!(digest = %job.digest, "blob to warm is gone");
                            } else {
                                tracing::warn!(digest = %job.digest, error = %e, "cannot warm blob");
                            }
                        }
                    }
                    finished_tx.send_modify(|n| *n += 1);
                }
            })?;
        Ok(Self {
            jobs,
            recent,
            counters,
            #[cfg(test)]
            finished: _finished,
        })
    }

    /// Warm the blob `digest` stored at `path`: it counts as hot from now
    /// on, and is read into the page cache soon. `false` when the queue is
    /// full and the blob is left as it is.
    pub fn offer(&self, digest: &Digest, path: &Path) -> bool {
        let job = Job {
            digest: digest.clone(),
            path: path.to_path_buf(),
        };
        // Counted before the thread can finish it, so `pending` never wraps.
        self.counters.accepted.fetch_add(1, Ordering::Relaxed);
        match self.jobs.try_send(job) {
            Ok(()) => {
                // Hot before the thread gets to it: a pull that comes first
                // goes through the page cache too, and the two share pages.
                self.recent
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .record(digest, Instant::now());
                true
            }
            Err(e) => {
                self.counters.accepted.fetch_sub(1, Ordering::Relaxed);
                self.counters.skipped.fetch_add(1, Ordering::Relaxed);
                match e {
                    TrySendError::Full(job) => {
                        tracing::debug!(digest = %job.digest, "warming queue full; blob left cold")
                    }
                    // The thread is gone (it never ends while a handle lives).
                    TrySendError::Disconnected(job) => {
                        tracing::warn!(digest = %job.digest, "warming thread gone; blob left cold")
                    }
                }
                false
            }
        }
    }

    /// What the warmer has done so far.
    pub fn counts(&self) -> WarmCounts {
        let c = &self.counters;
        // Finished ones are read first: `pending` may briefly over-count,
        // never under-count.
        let warmed = c.warmed.load(Ordering::Relaxed);
        let failed = c.failed.load(Ordering::Relaxed);
        WarmCounts {
            warmed,
            skipped: c.skipped.load(Ordering::Relaxed),
            failed,
            pending: c
                .accepted
                .load(Ordering::Relaxed)
                .saturating_sub(warmed + failed),
        }
    }

    /// Blobs finished so far (read, or given up on), to wait on.
    #[cfg(test)]
    pub fn finished(&self) -> watch::Receiver<u64> {
        self.finished.clone()
    }
}

/// Wait (at most 30 s) until `finished` counts `n` blobs.
#[cfg(test)]
pub(crate) async fn wait_finished(mut finished: watch::Receiver<u64>, n: u64) {
    let waited = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        finished.wait_for(|k| *k >= n),
    );
    waited
        .await
        .expect("the warmer finishes")
        .expect("the warming thread is alive");
}

/// Read `path` to its end through the page cache; the bytes read.
fn read_through(path: &Path, buf: &mut [u8]) -> io::Result<u64> {
    let mut file = File::open(path)?;
    // One pass from start to end: the kernel reads ahead in large steps.
    // Only advice: a file that takes none is read all the same.
    let _ = rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::Sequential);
    let mut total = 0u64;
    loop {
        match file.read(buf) {
            Ok(0) => return Ok(total),
            Ok(n) => total += n as u64,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use capstan_oci::{Algorithm, Hasher};

    fn digest_of(bytes: &[u8]) -> Digest {
        let mut h = Hasher::new(Algorithm::Sha256);
        h.update(bytes);
        h.finish()
    }

    async fn finished(warmer: &Warmer, n: u64) {
        wait_finished(warmer.finished(), n).await;
    }

    #[tokio::test]
    async fn an_offered_blob_is_hot_and_read_once() {
        let dir = tempfile::tempdir().unwrap();
        let recent = Arc::new(Mutex::new(RecentReads::default()));
        let warmer = Warmer::start(recent.clone()).unwrap();
        let bytes = vec![7u8; 3 * READ_BYTES + 5];
        let digest = digest_of(&bytes);
        let path = dir.path().join("blob");
        std::fs::write(&path, &bytes).unwrap();
        assert!(!recent.lock().unwrap().is_hot(&digest, Instant::now()));

        assert!(warmer.offer(&digest, &path));
        assert!(recent.lock().unwrap().is_hot(&digest, Instant::now()));
        finished(&warmer, 1).await;
        let want = WarmCounts {
            warmed: 1,
            ..WarmCounts::default()
        };
        assert_eq!(warmer.counts(), want);
    }

    #[tokio::test]
    async fn a_missing_blob_fails_and_the_thread_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let warmer = Warmer::start(Arc::default()).unwrap();
        let gone = digest_of(b"gone");
        assert!(warmer.offer(&gone, &dir.path().join("gone")));
        let path = dir.path().join("here");
        std::fs::write(&path, b"here").unwrap();
        assert!(warmer.offer(&digest_of(b"here"), &path));
        finished(&warmer, 2).await;
        let want = WarmCounts {
            warmed: 1,
            failed: 1,
            ..WarmCounts::default()
        };
        assert_eq!(warmer.counts(), want);
    }

    #[tokio::test]
    async fn offers_beyond_the_queue_are_refused_and_stay_cold() {
        // The thread is held on a pipe until the test writes to it, so the
        // queue fills behind it.
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::RUSR | rustix::fs::Mode::WUSR,
            0,
        )
        .unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, b"bytes").unwrap();
        let recent = Arc::new(Mutex::new(RecentReads::default()));
        let warmer = Warmer::start(recent.clone()).unwrap();
        assert!(warmer.offer(&digest_of(b"fifo"), &fifo));
        // Opening the pipe for writing waits for the thread to open it for
        // reading: the thread now holds the first job.
        let writer = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
        let accepted = (0..QUEUED + 2)
            .filter(|i| warmer.offer(&digest_of(&i.to_le_bytes()), &file))
            .count();
        assert_eq!(accepted, QUEUED);
        let refused = digest_of(b"refused");
        assert!(!warmer.offer(&refused, &file));
        assert!(!recent.lock().unwrap().is_hot(&refused, Instant::now()));
        let counts = warmer.counts();
        assert_eq!((counts.skipped, counts.pending), (3, QUEUED as u64 + 1));
        // The pipe ends; the thread drains the queue.
        drop(writer);
        finished(&warmer, QUEUED as u64 + 1).await;
        let want = WarmCounts {
            warmed: QUEUED as u64 + 1,
            skipped: 3,
            ..WarmCounts::default()
        };
        assert_eq!(warmer.counts(), want);
    }
}
