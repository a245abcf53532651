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

/// Reads committed blobs into the page cache, one at a time, on a thread of
/// its own; the thread ends when the last handle is dropped.
#[derive(Debug)]
pub struct Warmer {
    jobs: SyncSender<Job>,
    recent: Arc<Mutex<RecentReads>>,
    /// Blobs read to their end by the thread.
    warmed: Arc<AtomicU64>,
    /// Offers refused because the queue was full.
    skipped: AtomicU64,
    /// Blobs the thread has finished with (read, or given up on).
    #[cfg(test)]
    finished: watch::Receiver<u64>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job").field("digest", &self.digest).finish()
    }
}

impl Warmer {
    /// Start the warming thread; warmed blobs are recorded in `recent`.
    pub fn start(recent: Arc<Mutex<RecentReads>>) -> io::Result<Self> {
        let (jobs, queue) = mpsc::sync_channel::<Job>(QUEUED);
        let (finished_tx, _finished) = watch::channel(0u64);
        let warmed = Arc::new(AtomicU64::new(0));
        let counted = warmed.clone();
        std::thread::Builder::new()
            .name("blob-warm".into())
            .spawn(move || {
                let mut buf = vec![0u8; READ_BYTES];
                while let Ok(job) = queue.recv() {
                    let started = Instant::now();
                    match read_through(&job.path, &mut buf) {
                        Ok(bytes) => {
                            counted.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(
                                digest = %job.digest,
                                bytes,
                                ms = started.elapsed().as_millis() as u64,
                                "blob warmed"
                            );
                        }
                        // Deleted meanwhile (garbage collection): nothing to warm.
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) => tracing::warn!(
                            digest = %job.digest,
                            error = %e,
                            "cannot warm blob"
                        ),
                    }
                    finished_tx.send_modify(|n| *n += 1);
                }
            })?;
        Ok(Self {
            jobs,
            recent,
            warmed,
            skipped: AtomicU64::new(0),
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
            Err(TrySendError::Full(job)) => {
                self.skipped.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(digest = %job.digest, "warming queue full; blob left cold");
                false
            }
            // The thread is gone (it never ends while a handle lives).
            Err(TrySendError::Disconnected(_)) => false,
        }
    }

    /// Blobs warmed so far, and offers refused because the queue was full.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.warmed.load(Ordering::Relaxed),
            self.skipped.load(Ordering::Relaxed),
        )
    }

    /// Blobs finished so far (read, or given up on), to wait on.
    #[cfg(test)]
    pub fn finished(&self) -> watch::Receiver<u64> {
        self.finished.clone()
    }
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
    use std::time::Duration;

    fn digest_of(bytes: &[u8]) -> Digest {
        let mut h = Hasher::new(Algorithm::Sha256);
        h.update(bytes);
        h.finish()
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

        let mut finished = warmer.finished();
        assert!(warmer.offer(&digest, &path));
        assert!(recent.lock().unwrap().is_hot(&digest, Instant::now()));
        tokio::time::timeout(Duration::from_secs(30), finished.wait_for(|n| *n >= 1))
            .await
            .expect("the blob is warmed")
            .unwrap();
        assert_eq!(
            read_through(&path, &mut [0u8; 4096]).unwrap(),
            bytes.len() as u64
        );
    }

    #[tokio::test]
    async fn a_missing_blob_is_skipped_and_the_thread_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let warmer = Warmer::start(Arc::default()).unwrap();
        let mut finished = warmer.finished();
        let gone = digest_of(b"gone");
        assert!(warmer.offer(&gone, &dir.path().join("gone")));
        let path = dir.path().join("here");
        std::fs::write(&path, b"here").unwrap();
        assert!(warmer.offer(&digest_of(b"here"), &path));
        tokio::time::timeout(Duration::from_secs(30), finished.wait_for(|n| *n >= 2))
            .await
            .expect("both offers are finished")
            .unwrap();
        assert_eq!(warmer.counts(), (1, 0), "only the blob that exists counts");
    }

    #[test]
    fn offers_beyond_the_queue_are_refused_and_stay_cold() {
        // The thread is kept busy on a pipe that never ends, so the queue fills.
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let status = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(status.success());
        // Keep a writer open so the reader blocks instead of seeing the end.
        let writer = {
            let fifo = fifo.clone();
            std::thread::spawn(move || std::fs::OpenOptions::new().write(true).open(fifo))
        };
        let recent = Arc::new(Mutex::new(RecentReads::default()));
        let warmer = Warmer::start(recent.clone()).unwrap();
        assert!(warmer.offer(&digest_of(b"fifo"), &fifo));
        let writer = writer.join().unwrap().unwrap();
        // The thread holds the first job; QUEUED more fit, then no more. The
        // thread may not have taken the first job yet: allow one extra.
        let accepted = (0..QUEUED + 2)
            .filter(|i| warmer.offer(&digest_of(&i.to_le_bytes()), &fifo))
            .count();
        assert!((QUEUED..=QUEUED + 1).contains(&accepted), "{accepted}");
        let refused = digest_of(b"refused");
        assert!(!warmer.offer(&refused, &fifo));
        assert!(!recent.lock().unwrap().is_hot(&refused, Instant::now()));
        assert_eq!(warmer.counts().1, (QUEUED + 3 - accepted) as u64);
        // The thread then finishes the pipe and blocks opening the next one
        // (no writer); it ends with the test process.
        drop(writer);
    }
}
