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
//! than queueing reads without bound. The thread reads only while no blob
//! write of this process has been under way for [`QUIET`] ([`Writes`]):
//! warming takes the disk from nobody, so pushes that come back to back, as
//! a CI pipeline's layers do, go as fast as the first. `storage.warmAfterPush: false` turns
//! it off (a write-mostly registry, such as a backup target, gains nothing
//! from the extra read of every blob).

use crate::hot::RecentReads;
use capstan_oci::Digest;
use std::fs::File;
use std::io::{self, Read as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

/// Blobs waiting to be warmed at most.
pub const QUEUED: usize = 16;

/// Bytes read per call while warming.
const READ_BYTES: usize = 2 << 20;
/// How long no blob write must have been under way before warming reads.
pub const QUIET: Duration = Duration::from_millis(100);
/// How often a warmer that waits for quiet looks again.
const QUIET_POLL: Duration = Duration::from_millis(10);

/// Blob writes under way in this process, and when the last one ended.
#[derive(Debug, Default)]
pub struct Writes {
    active: AtomicUsize,
    last_end_ms: AtomicU64,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Writes {
    /// A write starts; it ends when the guard is dropped.
    pub fn begin(self: &Arc<Self>) -> WriteGuard {
        self.active.fetch_add(1, Ordering::SeqCst);
        WriteGuard(self.clone())
    }

    /// No write under way, and none ended within `quiet`.
    fn quiet_for(&self, quiet: Duration) -> bool {
        self.active.load(Ordering::SeqCst) == 0
            && now_ms().saturating_sub(self.last_end_ms.load(Ordering::SeqCst))
                >= quiet.as_millis() as u64
    }

    /// Block the calling (warming) thread until writes have been quiet
    /// for [`QUIET`].
    fn wait_quiet(&self) {
        while !self.quiet_for(QUIET) {
            std::thread::sleep(QUIET_POLL);
        }
    }
}

/// A blob write under way ([`Writes::begin`]).
#[derive(Debug)]
pub struct WriteGuard(Arc<Writes>);

impl Drop for WriteGuard {
    fn drop(&mut self) {
        self.0.last_end_ms.store(now_ms(), Ordering::SeqCst);
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

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
    /// Start the warming thread; warmed blobs are recorded in `recent`; it
    /// reads only while `writes` are quiet.
    pub fn start(recent: Arc<Mutex<RecentReads>>, writes: Arc<Writes>) -> io::Result<Self> {
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
                    match read_through(&job.path, &mut buf, &writes) {
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

/// Read `path` to its end through the page cache, each piece once `writes`
/// are quiet; the bytes read.
fn read_through(path: &Path, buf: &mut [u8], writes: &Writes) -> io::Result<u64> {
    let mut file = File::open(path)?;
    // One pass from start to end: the kernel reads ahead in large steps.
    // Only advice: a file that takes none is read all the same.
    let _ = rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::Sequential);
    let mut total = 0u64;
    loop {
        writes.wait_quiet();
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

    #[test]
    fn writes_are_quiet_only_when_none_ran_lately() {
        let writes = Arc::new(Writes::default());
        assert!(writes.quiet_for(QUIET));
        let one = writes.begin();
        let two = writes.begin();
        assert!(!writes.quiet_for(Duration::ZERO));
        drop(one);
        assert!(
            !writes.quiet_for(Duration::ZERO),
            "one write still under way"
        );
        drop(two);
        assert!(writes.quiet_for(Duration::ZERO));
        assert!(
            !writes.quiet_for(Duration::from_secs(3600)),
            "one just ended"
        );
    }

    /// A blob offered while a write is under way is read once writes are
    /// quiet, not before.
    #[tokio::test]
    async fn warming_waits_for_writes_to_end() {
        let dir = tempfile::tempdir().unwrap();
        let writes = Arc::new(Writes::default());
        let warmer = Warmer::start(Arc::default(), writes.clone()).unwrap();
        let path = dir.path().join("blob");
        std::fs::write(&path, vec![1u8; 1000]).unwrap();
        let writing = writes.begin();
        assert!(warmer.offer(&digest_of(b"x"), &path));
        // Give the thread every chance to (wrongly) read meanwhile.
        let mut progress = warmer.finished();
        let early = tokio::time::timeout(Duration::from_millis(300), progress.wait_for(|n| *n > 0));
        assert!(early.await.is_err(), "warmed while a write was under way");
        assert_eq!(warmer.counts().warmed, 0);
        drop(writing);
        finished(&warmer, 1).await;
        assert_eq!(warmer.counts().warmed, 1);
    }

    #[tokio::test]
    async fn an_offered_blob_is_hot_and_read_once() {
        let dir = tempfile::tempdir().unwrap();
        let recent = Arc::new(Mutex::new(RecentReads::default()));
        let warmer = Warmer::start(recent.clone(), Arc::default()).unwrap();
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
        let warmer = Warmer::start(Arc::default(), Arc::default()).unwrap();
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
        let warmer = Warmer::start(recent.clone(), Arc::default()).unwrap();
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
