//! The filesystem backend. Under the root directory:
//!
//! ```text
//! blobs/<alg>/<first 2 hex>/<hex>   committed blobs, named by digest
//! uploads/<uuid>/data               bytes of an upload session
//! uploads/<uuid>/state.json         {offset, sha256_state, created_ms, updated_ms, owner}
//! uploads/put-<uuid>.tmp            a monolithic upload being received
//! ```
//!
//! `state.json` is the truth about a session: `data` may hold bytes past
//! `offset` after a write that crashed or failed, and they are dropped by the
//! next writer. Every writer (append, commit, a put in flight) holds an
//! exclusive `flock` on its file, so two processes sharing the root never
//! write one upload at once, and expiry never removes a session being
//! written. `state.json` is replaced atomically (temp file + rename), so
//! readers on any replica see either the old or the new state.
//!
//! With `storage.commit`, file contents and the directory entries that name
//! them are fsynced before a call returns.

use crate::direct::{BlobReader, BlobWriter, BufferPool};
use crate::hot::RecentReads;
use crate::store::{BlobStore, ByteStream, StoredMark, UploadId, Verdict};
use crate::warm::{WarmCounts, Warmer, Writes};
use crate::{BlobError, resumable};
use async_trait::async_trait;
use bytes::Bytes;
use capstan_oci::{Algorithm, Digest, Hasher};
use capstan_runtime::grpc::{CHUNK_BYTES, READ_CHUNK_BYTES};
use futures::StreamExt as _;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

const DATA: &str = "data";
const STATE: &str = "state.json";
const STATE_TMP: &str = "state.json.tmp";
const PUT_PREFIX: &str = "put-";
const PUT_SUFFIX: &str = ".tmp";
/// Chunks a reader may have in flight ahead of its consumer.
const READ_AHEAD: usize = 4;

/// Blobs and upload sessions in a local (or shared network) directory.
#[derive(Debug, Clone)]
pub struct FsStore {
    root: PathBuf,
    blobs: PathBuf,
    uploads: PathBuf,
    commit: bool,
    direct_io: bool,
    read_buffers: Arc<BufferPool>,
    stage_buffers: Arc<BufferPool>,
    /// Blobs read lately: a hot one is read through the page cache.
    recent: Arc<Mutex<RecentReads>>,
    /// Reads served with direct I/O, and through the page cache.
    reads: Arc<[AtomicU64; 2]>,
    /// Scrub: blobs verified, and found corrupt.
    scrubbed: Arc<[AtomicU64; 2]>,
    /// Blob writes under way (the warmer waits for them).
    writes: Arc<Writes>,
    /// Reads blobs written directly into the page cache after their commit.
    warmer: Option<Arc<Warmer>>,
}

/// Read buffers kept for reuse (2 MiB each). Three serve a pull as fast as
/// eight did (measured A/B) and bound what an idle server holds to 6 MiB.
const READ_BUFFERS_KEPT: usize = 3;
/// Write staging buffers kept for reuse (each is 2 MiB; more concurrent
/// uploads than this allocate theirs).
const STAGE_BUFFERS_KEPT: usize = 2;

/// What `state.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SessionState {
    /// Bytes of `data` that belong to the upload.
    offset: u64,
    /// Hex of sha2's serialized SHA-256 state after `offset` bytes.
    sha256_state: String,
    /// Milliseconds since the Unix epoch.
    created_ms: u64,
    /// Last successful write, in milliseconds since the Unix epoch.
    updated_ms: u64,
    /// Who started the upload (the repository, for the gateway).
    #[serde(default)]
    owner: String,
}

impl FsStore {
    /// A store rooted at `root` (creating `blobs/` and `uploads/`); with
    /// `commit`, writes are fsynced before they are acknowledged.
    pub async fn new(root: impl Into<PathBuf>, commit: bool) -> Result<Self, BlobError> {
        let store = Self::beside_running(root, commit).await?;
        restore_trash(&store.root.join(TRASH), &store.blobs)?;
        Ok(store)
    }

    /// [`FsStore::new`] for a process that works beside a running svc-blob
    /// (`capstan gc`): what a collection left in the trash is the running
    /// role's to put back, not this one's.
    pub async fn beside_running(root: impl Into<PathBuf>, commit: bool) -> Result<Self, BlobError> {
        let root = root.into();
        let blobs = root.join("blobs");
        let uploads = root.join("uploads");
        for dir in [&blobs, &uploads, &root.join(TRASH)] {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(BlobError::io("create directory", dir))?;
        }
        Ok(Self {
            root,
            blobs,
            uploads,
            commit,
            direct_io: true,
            read_buffers: BufferPool::new(READ_CHUNK_BYTES, READ_BUFFERS_KEPT),
            stage_buffers: BufferPool::new(crate::direct::STAGE_BYTES, STAGE_BUFFERS_KEPT),
            recent: Arc::default(),
            reads: Arc::default(),
            scrubbed: Arc::default(),
            writes: Arc::default(),
            warmer: None,
        })
    }

    /// Read each blob written with direct I/O into the page cache once it is
    /// committed, in the background (`crate::warm`); off by default.
    pub fn with_warm_after_push(mut self, on: bool) -> Result<Self, BlobError> {
        self.warmer = if on {
            let warmer = Warmer::start(self.recent.clone(), self.writes.clone())
                .map_err(BlobError::io("start the warming thread", &self.root))?;
            Some(Arc::new(warmer))
        } else {
            None
        };
        Ok(self)
    }

    /// How many blobs the warmer has finished with (`None` when off).
    #[cfg(test)]
    pub(crate) fn warmed(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.warmer.as_ref().map(|w| w.finished())
    }

    /// Whether `digest` counts as hot now (`crate::hot`).
    #[cfg(test)]
    pub(crate) fn is_hot(&self, digest: &Digest) -> bool {
        self.recent
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_hot(digest, Instant::now())
    }

    /// Offer a blob this call has just placed to the warmer, when its bytes
    /// went to the device directly. A blob already stored is left as it
    /// is, and so is a small one: its bytes went through the page cache
    /// (`direct::SMALL_BYTES`). For an upload, whose appends may each have
    /// been written by another replica, `direct` is the store's setting.
    fn warm(&self, digest: &Digest, size: u64, placed: bool, direct: bool) {
        if let Some(warmer) = &self.warmer
            && placed
            && direct
            && size > crate::direct::SMALL_BYTES as u64
        {
            warmer.offer(digest, &self.blob_path(digest));
        }
    }

    /// Write blob bytes with direct I/O where the filesystem allows it (the
    /// default), or always through the page cache.
    pub fn with_direct_io(mut self, on: bool) -> Self {
        self.direct_io = on;
        self
    }

    /// Once per store: a mark, as old as can be, for every blob stored
    /// before marks existed (by an earlier version), so that garbage
    /// collection checks each of them once; then never again.
    async fn seed_marks(&self) -> Result<(), BlobError> {
        let stored = self.root.join(STORED);
        let mut after: Option<Digest> = None;
        let mut seeded = 0u64;
        loop {
            let batch = self.blobs_after(after.as_ref(), 1000).await?;
            let Some(last) = batch.last().cloned() else {
                break;
            };
            let bucket = stored.join("0");
            seeded += batch.len() as u64;
            blocking(move || {
                fs::create_dir_all(&bucket).map_err(BlobError::io("create directory", &bucket))?;
                for d in batch {
                    let mark = bucket.join(format!("{}-{}", d.algorithm().as_str(), d.hex()));
                    File::create(&mark).map_err(BlobError::io("mark blob stored", &mark))?;
                }
                Ok(())
            })
            .await?;
            after = Some(last);
        }
        let flag = stored.join(SEEDED);
        blocking(move || {
            fs::create_dir_all(&stored).map_err(BlobError::io("create directory", &stored))?;
            File::create(&flag)
                .map(drop)
                .map_err(BlobError::io("mark store seeded", &flag))
        })
        .await?;
        if seeded > 0 {
            tracing::info!(
                blobs = seeded,
                "blobs stored before garbage collection marked for it"
            );
        }
        Ok(())
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn blob_path(&self, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        self.blobs
            .join(digest.algorithm().as_str())
            .join(&hex[..2])
            .join(hex)
    }

    fn session_dir(&self, id: &UploadId) -> PathBuf {
        self.uploads.join(id.to_string())
    }
}

/// Where garbage collection moves a blob before it checks, one last time,
/// that nobody used it meanwhile (under the root, so a rename).
const TRASH: &str = "trash";

/// Where scrub puts a blob whose bytes no longer match its digest:
/// `corrupt/<algorithm>-<hex>-<uuid>`, out of service, kept for inspection.
const CORRUPT: &str = "corrupt";

/// Entries of `dir` whose names are at least `from` (all when `None`),
/// sorted; an absent directory has none.
fn sorted_names(dir: &Path, from: Option<&str>) -> Result<Vec<String>, BlobError> {
    let entries = match fs::read_dir(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        r => r.map_err(BlobError::io("list blobs", dir))?,
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| from.is_none_or(|f| n.as_str() >= f))
        .collect();
    names.sort_unstable();
    Ok(names)
}

/// Where storing a blob leaves a mark for garbage collection:
/// `gc/stored/<second>/<algorithm>-<hex>`, one directory per second of
/// Unix time, so that a collection lists only the seconds older than its
/// cutoff, however many blobs are younger or stored.
const STORED: &str = "gc/stored";
/// Under [`STORED`]: present once the blobs stored before marks existed
/// have been given one ([`FsStore::seed_marks`]).
const SEEDED: &str = "seeded";

/// Leave the mark of storing `digest` now (see [`STORED`]). Not fsynced:
/// lost in a power cut, it costs at most the space of a blob stored in
/// the last moments whose link never came.
fn mark_stored(stored: &Path, digest: &Digest) -> Result<(), BlobError> {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let bucket = stored.join(secs.to_string());
    let mark = bucket.join(format!("{}-{}", digest.algorithm().as_str(), digest.hex()));
    match File::create(&mark) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            // A new second (or a collection just removed the empty bucket).
            fs::create_dir_all(&bucket).map_err(BlobError::io("create directory", &bucket))?;
            File::create(&mark)
                .map(drop)
                .map_err(BlobError::io("mark blob stored", &mark))
        }
        Err(e) => Err(BlobError::io("mark blob stored", &mark)(e)),
    }
}

/// The marks under `stored` from whole seconds before `cutoff`, oldest
/// first, at most `limit`; empty old buckets are removed on the way.
fn stored_marks(
    stored: &Path,
    cutoff: SystemTime,
    limit: usize,
) -> Result<Vec<StoredMark>, BlobError> {
    let cutoff = cutoff.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let mut buckets: Vec<u64> = match fs::read_dir(stored) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(BlobError::io("list stored marks", stored)(e)),
        Ok(entries) => entries
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .filter(|&b: &u64| b < cutoff)
            .collect(),
    };
    buckets.sort_unstable();
    let mut out = Vec::new();
    for b in buckets {
        if out.len() >= limit {
            break;
        }
        let dir = stored.join(b.to_string());
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        let before = out.len();
        for entry in entries {
            let entry = entry.map_err(BlobError::io("list stored marks", &dir))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let parsed = name
                .split_once('-')
                .and_then(|(alg, hex)| Digest::parse(&format!("{alg}:{hex}")).ok());
            let key = format!("{b}/{name}");
            match parsed {
                Some(digest) => out.push(StoredMark { digest, key }),
                None => {
                    let _ = fs::remove_file(entry.path());
                }
            }
            if out.len() >= limit {
                break;
            }
        }
        if out.len() == before {
            let _ = fs::remove_dir(&dir);
        }
    }
    Ok(out)
}

/// Put back every blob a garbage collection moved to the trash and did
/// not get to remove (the process stopped in between): a push may have
/// relied on it, and the next collection will find it again if not.
fn restore_trash(trash: &Path, blobs: &Path) -> Result<(), BlobError> {
    for entry in fs::read_dir(trash).map_err(BlobError::io("list trash", trash))? {
        let entry = entry.map_err(BlobError::io("list trash", trash))?;
        let path = entry.path();
        let name = entry.file_name();
        let hex = name
            .to_str()
            .and_then(|n| n.split('-').next())
            .unwrap_or("");
        let alg = match hex.len() {
            64 => Algorithm::Sha256,
            128 => Algorithm::Sha512,
            _ => continue,
        };
        let Ok(digest) = Digest::parse(&format!("{}:{hex}", alg.as_str())) else {
            continue;
        };
        let dst = blobs.join(alg.as_str()).join(&hex[..2]).join(hex);
        if fs::symlink_metadata(&dst).is_ok() {
            fs::remove_file(&path).map_err(BlobError::io("remove trash", &path))?;
        } else {
            if let Some(parent) = dst.parent() {
                fs::create_dir_all(parent).map_err(BlobError::io("create directory", parent))?;
            }
            fs::rename(&path, &dst).map_err(BlobError::io("restore blob", &dst))?;
            tracing::info!(digest = %digest, "blob put back from the trash");
        }
    }
    Ok(())
}

/// Run blocking file work off the async threads.
async fn blocking<T, F>(f: F) -> Result<T, BlobError>
where
    F: FnOnce() -> Result<T, BlobError> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| BlobError::Internal(format!("storage task failed: {e}")))?
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Like [`BlobError::io`], but a missing file means the session is gone.
fn session_io(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> BlobError {
    let path = path.to_path_buf();
    move |e| {
        if e.kind() == io::ErrorKind::NotFound {
            BlobError::UploadUnknown
        } else {
            BlobError::io(op, path)(e)
        }
    }
}

/// How long a write waits for the upload's lock before UPLOAD_BUSY. A
/// write whose client went away releases the lock only once its blocking
/// stage sees the end of its stream, so a client's immediate retry may find
/// it still held for a moment, longer on a busy machine.
const UPLOAD_LOCK_WAIT: Duration = Duration::from_secs(5);

/// Take the upload's exclusive lock (on a blocking thread), waiting up to
/// [`UPLOAD_LOCK_WAIT`] for a previous writer to let go.
fn lock(file: &File, path: &Path) -> Result<(), BlobError> {
    let deadline = Instant::now() + UPLOAD_LOCK_WAIT;
    let mut pause = Duration::from_millis(1);
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(()),
            Err(TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(50));
            }
            Err(TryLockError::WouldBlock) => return Err(BlobError::UploadBusy),
            Err(TryLockError::Error(e)) => return Err(BlobError::io("lock", path)(e)),
        }
    }
}

fn sync_dir(dir: &Path) -> Result<(), BlobError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(BlobError::io("sync directory", dir))
}

fn read_state(dir: &Path) -> Result<SessionState, BlobError> {
    let path = dir.join(STATE);
    let bytes = fs::read(&path).map_err(session_io("read upload state", &path))?;
    serde_json::from_slice(&bytes).map_err(|e| {
        tracing::warn!(path = %path.display(), error = %e, "corrupt upload state");
        BlobError::Internal(format!("upload state is corrupt: {e}"))
    })
}

fn write_state(dir: &Path, state: &SessionState, commit: bool) -> Result<(), BlobError> {
    let tmp = dir.join(STATE_TMP);
    let text = serde_json::to_vec(state)
        .map_err(|e| BlobError::Internal(format!("cannot encode upload state: {e}")))?;
    let mut f = File::create(&tmp).map_err(session_io("create upload state", &tmp))?;
    f.write_all(&text)
        .map_err(BlobError::io("write upload state", &tmp))?;
    if commit {
        f.sync_all()
            .map_err(BlobError::io("sync upload state", &tmp))?;
    }
    drop(f);
    fs::rename(&tmp, dir.join(STATE)).map_err(session_io("replace upload state", &tmp))?;
    if commit {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Remove a session: its state first (so it is unknown at once), then the rest.
fn remove_session(dir: &Path) -> Result<(), BlobError> {
    match fs::remove_file(dir.join(STATE)) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(BlobError::UploadUnknown),
        Err(e) => return Err(BlobError::io("remove upload state", dir)(e)),
    }
    match fs::remove_dir_all(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(BlobError::io("remove upload directory", dir)(e))
        }
        _ => Ok(()),
    }
}

/// Hashing that may run on a blocking thread.
trait Absorb: Send + 'static {
    fn absorb(&mut self, bytes: &[u8]);
}

impl Absorb for Sha256 {
    fn absorb(&mut self, bytes: &[u8]) {
        sha2::Digest::update(self, bytes);
    }
}

impl Absorb for Hasher {
    fn absorb(&mut self, bytes: &[u8]) {
        self.update(bytes);
    }
}

/// Feed the first `len` bytes of `file` to `hasher`.
fn hash_prefix(
    file: &mut File,
    path: &Path,
    len: u64,
    hasher: &mut impl Absorb,
) -> Result<(), BlobError> {
    file.seek(SeekFrom::Start(0))
        .map_err(BlobError::io("seek", path))?;
    let mut buf = vec![0u8; CHUNK_BYTES];
    let mut left = len;
    while left > 0 {
        let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
        file.read_exact(&mut buf[..n])
            .map_err(BlobError::io("read", path))?;
        hasher.absorb(&buf[..n]);
        left -= n as u64;
    }
    Ok(())
}

/// An open, locked upload session with `data` cut back to `state.offset`.
struct Session {
    dir: PathBuf,
    data_path: PathBuf,
    data: File,
    state: SessionState,
}

impl Session {
    fn open(dir: PathBuf) -> Result<Self, BlobError> {
        let data_path = dir.join(DATA);
        let data = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&data_path)
            .map_err(session_io("open upload data", &data_path))?;
        lock(&data, &data_path)?;
        // Read under the lock: no writer can move the state until we drop it.
        let state = read_state(&dir)?;
        let len = data
            .metadata()
            .map_err(BlobError::io("stat upload data", &data_path))?
            .len();
        if len < state.offset {
            tracing::warn!(path = %data_path.display(), len, offset = state.offset, "upload data shorter than its state");
            return Err(BlobError::Internal(format!(
                "upload data holds {len} bytes, fewer than its recorded offset {}",
                state.offset
            )));
        }
        if len > state.offset {
            // Bytes of a write that crashed or failed before updating the state.
            data.set_len(state.offset)
                .map_err(BlobError::io("truncate upload data", &data_path))?;
            tracing::info!(path = %data_path.display(), dropped = len - state.offset, "upload leftovers dropped");
        }
        Ok(Self {
            dir,
            data_path,
            data,
            state,
        })
    }

    /// The SHA-256 state after `offset` bytes; if the saved one is unreadable,
    /// hash the data again.
    fn sha256(&mut self, id: &UploadId) -> Result<Sha256, BlobError> {
        if let Some(h) = resumable::restore(&self.state.sha256_state) {
            return Ok(h);
        }
        tracing::warn!(upload_id = %id, offset = self.state.offset, "upload hash state unreadable, rehashing");
        let mut h = <Sha256 as sha2::Digest>::new();
        hash_prefix(&mut self.data, &self.data_path, self.state.offset, &mut h)?;
        Ok(h)
    }
}

/// Bytes written between two background flushes of a durable write.
const WRITEBACK_EVERY: u64 = 32 * 1024 * 1024;

/// A file being written while its bytes are hashed.
struct Sink<H> {
    out: BlobWriter,
    path: PathBuf,
    hasher: H,
    written: u64,
    /// Flush to disk in the background while writing (`storage.commit`), so
    /// the final fsync only has the tail left to write. Direct writes have
    /// nothing to flush.
    writeback: bool,
}

impl<H: Absorb> Sink<H> {
    fn new(out: BlobWriter, path: PathBuf, hasher: H, writeback: bool) -> Self {
        Self {
            out,
            path,
            hasher,
            written: 0,
            writeback,
        }
    }

    /// Write every chunk of `data`, stopping at its first error. Receiving,
    /// hashing and writing run side by side: the chunks go to a hashing and
    /// a writing stage, each on a blocking thread of its own.
    async fn drain(self, mut data: ByteStream) -> Result<Self, BlobError> {
        let Sink {
            out,
            path,
            hasher,
            writeback,
            ..
        } = self;
        let hash = Stage::start(hasher, |h: &mut H, chunk| {
            h.absorb(chunk);
            Ok(())
        });
        let writing = Writing {
            out,
            path,
            writeback,
            unflushed: 0,
        };
        let write = Stage::start(writing, Writing::write);
        let mut written = 0u64;
        let mut failed = None;
        while let Some(chunk) = data.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            };
            if chunk.is_empty() {
                continue;
            }
            written += chunk.len() as u64;
            let (hashing, writing) = tokio::join!(hash.feed(chunk.clone()), write.feed(chunk));
            if !(hashing && writing) {
                break; // a stage failed; its error comes out of `finish`
            }
        }
        let (hashed, wrote) = tokio::join!(hash.finish(), write.finish());
        if let Some(e) = failed {
            return Err(e);
        }
        let (hasher, w) = (hashed?, wrote?);
        Ok(Sink {
            out: w.out,
            path: w.path,
            hasher,
            written,
            writeback,
        })
    }
}

/// Chunks a pipeline stage may have waiting.
const STAGE_DEPTH: usize = 4;

/// One step of the write pipeline, on a blocking thread of its own: `step`
/// runs over every chunk fed, in order, with at most [`STAGE_DEPTH`] waiting.
struct Stage<S> {
    tx: mpsc::Sender<Bytes>,
    done: tokio::task::JoinHandle<Result<S, BlobError>>,
}

impl<S: Send + 'static> Stage<S> {
    fn start(
        mut state: S,
        mut step: impl FnMut(&mut S, &[u8]) -> Result<(), BlobError> + Send + 'static,
    ) -> Self {
        let (tx, mut rx) = mpsc::channel::<Bytes>(STAGE_DEPTH);
        let done = tokio::task::spawn_blocking(move || {
            while let Some(chunk) = rx.blocking_recv() {
                step(&mut state, &chunk)?;
            }
            Ok(state)
        });
        Self { tx, done }
    }

    /// Hand `chunk` over; `false` when the stage has stopped on an error.
    async fn feed(&self, chunk: Bytes) -> bool {
        self.tx.send(chunk).await.is_ok()
    }

    /// Wait for every chunk fed to be processed.
    async fn finish(self) -> Result<S, BlobError> {
        drop(self.tx);
        self.done
            .await
            .map_err(|e| BlobError::Internal(format!("storage task failed: {e}")))?
    }
}

/// The writing stage's state.
struct Writing {
    out: BlobWriter,
    path: PathBuf,
    writeback: bool,
    unflushed: u64,
}

impl Writing {
    fn write(&mut self, chunk: &[u8]) -> Result<(), BlobError> {
        self.out
            .write(chunk)
            .map_err(BlobError::io("write", &self.path))?;
        self.unflushed += chunk.len() as u64;
        if self.writeback && !self.out.is_direct() && self.unflushed >= WRITEBACK_EVERY {
            // Through the page cache: flush as we go, so the final fsync
            // only has the tail left to write.
            self.out
                .file()
                .sync_data()
                .map_err(BlobError::io("sync", &self.path))?;
            self.unflushed = 0;
        }
        Ok(())
    }
}

/// Removes a temp file when dropped, unless disarmed.
struct TempFile(Option<PathBuf>);

impl TempFile {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(p) = self.0.take()
            && let Err(e) = fs::remove_file(&p)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(path = %p.display(), error = %e, "cannot remove temp file");
        }
    }
}

/// Move verified bytes at `src` to the blob path `dst`. Returns `false` when
/// the blob already existed (then `src` is left for the caller to drop).
fn publish(src: &Path, dst: &Path, commit: bool) -> Result<bool, BlobError> {
    let parent = dst
        .parent()
        .ok_or_else(|| BlobError::Internal("blob path has no parent".into()))?;
    if !parent.is_dir() {
        fs::create_dir_all(parent).map_err(BlobError::io("create directory", parent))?;
        if commit {
            // New `<alg>/<xx>/` entries must survive a crash too.
            for dir in parent.ancestors().skip(1).take(2) {
                sync_dir(dir)?;
            }
        }
    }
    if fs::symlink_metadata(dst).is_ok() {
        // The blob is stored already: mark it used now, so a garbage
        // collection that found it stale leaves it (or, if it was just
        // taken away, this copy takes its place).
        match touch_in_place(dst) {
            Ok(true) => return Ok(false),
            Ok(false) => {}
            Err(e) => return Err(BlobError::io("mark blob used", dst)(e)),
        }
    }
    // Its mtime is its last write, maybe long ago (a chunked upload's last
    // PATCH): a collection must see it as stored now.
    File::open(src)
        .and_then(|f| f.set_modified(SystemTime::now()))
        .map_err(BlobError::io("mark blob stored", src))?;
    fs::rename(src, dst).map_err(BlobError::io("rename into place", dst))?;
    if commit {
        sync_dir(parent)?;
    }
    Ok(true)
}

/// Set the mtime of the blob at `path` to now, and say whether that blob is
/// still the one at `path` afterwards: a garbage collection may have moved
/// it to the trash (and deleted it) between the open and the update, in
/// which case the update reached a file nobody will read (`false`).
fn touch_in_place(path: &Path) -> io::Result<bool> {
    use std::os::unix::fs::MetadataExt as _;
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    f.set_modified(SystemTime::now())?;
    let touched = f.metadata()?;
    Ok(match fs::metadata(path) {
        Ok(now) => now.dev() == touched.dev() && now.ino() == touched.ino(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => false,
        Err(e) => return Err(e),
    })
}

/// Reads of one blob in flight at once: the device gets the next request
/// while the previous chunk travels.
const READS_IN_FLIGHT: usize = 2;

/// Send `len` bytes of the blob from `offset` on to `tx` in chunks of at
/// most [`READ_CHUNK_BYTES`]; stop when the receiver goes away.
async fn pump(
    reader: BlobReader,
    path: PathBuf,
    offset: u64,
    len: u64,
    tx: mpsc::Sender<Result<Bytes, BlobError>>,
) {
    let reader = Arc::new(reader);
    let step = READ_CHUNK_BYTES as u64;
    let chunks = (0..len.div_ceil(step)).map(|i| {
        let at = offset + i * step;
        let n = (len - i * step).min(step) as usize;
        let (r, p) = (reader.clone(), path.clone());
        blocking(move || r.read_at(at, n).map_err(BlobError::io("read blob", &p)))
    });
    let mut reads = futures::stream::iter(chunks).buffered(READS_IN_FLIGHT);
    while let Some(read) = reads.next().await {
        let failed = read.is_err();
        if let Err(e) = &read {
            tracing::warn!(error = %e, "blob read failed");
        }
        if tx.send(read).await.is_err() {
            tracing::debug!(path = %path.display(), "blob reader went away");
            return;
        }
        if failed {
            return;
        }
    }
}

/// Remove one session if idle for `idle`; `false` when kept.
fn expire_session(dir: &Path, now: SystemTime, idle: Duration) -> Result<bool, BlobError> {
    let data_path = dir.join(DATA);
    let _data = match File::open(&data_path) {
        Ok(f) => {
            match f.try_lock() {
                Ok(()) => {}
                Err(TryLockError::WouldBlock) => return Ok(false),
                Err(TryLockError::Error(e)) => return Err(BlobError::io("lock", &data_path)(e)),
            }
            Some(f)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(BlobError::io("open upload data", &data_path)(e)),
    };
    let last = match read_state(dir) {
        Ok(s) => UNIX_EPOCH + Duration::from_millis(s.updated_ms),
        // A session that never got its state, or lost it: judge by the directory.
        Err(_) => fs::metadata(dir)
            .and_then(|m| m.modified())
            .map_err(BlobError::io("stat upload directory", dir))?,
    };
    if now.duration_since(last).unwrap_or(Duration::ZERO) < idle {
        return Ok(false);
    }
    match fs::remove_dir_all(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(BlobError::io("remove upload directory", dir)(e))
        }
        _ => Ok(true),
    }
}

/// Remove a stale monolithic-upload temp file unless a put still holds it.
fn expire_put_file(path: &Path, now: SystemTime, idle: Duration) -> Result<bool, BlobError> {
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(BlobError::io("open temp file", path)(e)),
    };
    if f.try_lock().is_err() {
        return Ok(false);
    }
    let modified = f
        .metadata()
        .and_then(|m| m.modified())
        .map_err(BlobError::io("stat temp file", path))?;
    if now.duration_since(modified).unwrap_or(Duration::ZERO) < idle {
        return Ok(false);
    }
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(BlobError::io("remove temp file", path)(e))
        }
        _ => Ok(true),
    }
}

#[async_trait]
impl BlobStore for FsStore {
    fn read_paths(&self) -> (u64, u64) {
        (
            self.reads[0].load(Ordering::Relaxed),
            self.reads[1].load(Ordering::Relaxed),
        )
    }

    fn warm_counts(&self) -> WarmCounts {
        self.warmer
            .as_ref()
            .map_or_else(WarmCounts::default, |w| w.counts())
    }

    async fn stat(&self, digest: &Digest) -> Result<u64, BlobError> {
        let path = self.blob_path(digest);
        match tokio::fs::metadata(&path).await {
            Ok(m) if m.is_file() => Ok(m.len()),
            Ok(_) => Err(BlobError::BlobUnknown(digest.clone())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(BlobError::BlobUnknown(digest.clone()))
            }
            Err(e) => Err(BlobError::io("stat blob", path)(e)),
        }
    }

    async fn read(
        &self,
        digest: &Digest,
        offset: u64,
        length: u64,
    ) -> Result<ByteStream, BlobError> {
        let path = self.blob_path(digest);
        let d = digest.clone();
        let p = path.clone();
        // A hot blob goes through the page cache and stays there (crate::hot).
        let now = Instant::now();
        let recent = || self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        let hot = recent().is_hot(digest, now);
        let direct = self.direct_io && !hot;
        let buffers = self.read_buffers.clone();
        let (file, len) = blocking(move || {
            let unknown = || BlobError::BlobUnknown(d.clone());
            let file = match File::open(&p) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(unknown()),
                Err(e) => return Err(BlobError::io("open blob", &p)(e)),
            };
            let meta = file.metadata().map_err(BlobError::io("stat blob", &p))?;
            if !meta.is_file() {
                return Err(unknown());
            }
            let size = meta.len();
            let end = if length == 0 {
                Some(size)
            } else {
                offset.checked_add(length)
            };
            let end = match end {
                Some(end) if offset <= size && end <= size => end,
                _ => {
                    return Err(BlobError::RangeInvalid(format!(
                        "range of {length} bytes at offset {offset} is outside the blob's {size} bytes"
                    )));
                }
            };
            let reader = BlobReader::new(file, &p, direct, buffers)
                .map_err(BlobError::io("open blob", &p))?;
            Ok((reader, end - offset))
        })
        .await?;
        // What counts as a read of the blob: one that opened it, from its
        // start (the further ranges of one download are not more reads).
        if offset == 0 {
            recent().record(digest, now);
        }
        let served_direct = file.is_direct();
        self.reads[usize::from(!served_direct)].fetch_add(1, Ordering::Relaxed);
        tracing::debug!(digest = %digest, offset, len, hot, direct = served_direct, "blob read");
        let (tx, rx) = mpsc::channel(READ_AHEAD);
        tokio::spawn(pump(file, path, offset, len, tx));
        Ok(ReceiverStream::new(rx).boxed())
    }

    async fn start_upload(&self, owner: &str) -> Result<UploadId, BlobError> {
        let owner = owner.to_string();
        let uploads = self.uploads.clone();
        let commit = self.commit;
        let id = blocking(move || {
            let id = UploadId::random();
            let dir = uploads.join(id.to_string());
            fs::create_dir(&dir).map_err(BlobError::io("create upload directory", &dir))?;
            let data = dir.join(DATA);
            File::create_new(&data).map_err(BlobError::io("create upload data", &data))?;
            let now = now_ms();
            let state = SessionState {
                offset: 0,
                sha256_state: resumable::save(&<Sha256 as sha2::Digest>::new()),
                created_ms: now,
                updated_ms: now,
                owner,
            };
            write_state(&dir, &state, commit)?;
            if commit {
                sync_dir(&uploads)?;
            }
            Ok(id)
        })
        .await?;
        tracing::info!(upload_id = %id, "upload started");
        Ok(id)
    }

    async fn append(
        &self,
        id: &UploadId,
        expected_offset: Option<u64>,
        data: ByteStream,
    ) -> Result<u64, BlobError> {
        let _writing = self.writes.begin();
        let dir = self.session_dir(id);
        let id = *id;
        let commit = self.commit;
        let direct = self.direct_io;
        let stage_buffers = self.stage_buffers.clone();
        let session = blocking(move || {
            let mut s = Session::open(dir)?;
            if let Some(expected) = expected_offset
                && expected != s.state.offset
            {
                return Err(BlobError::OffsetMismatch {
                    expected,
                    actual: s.state.offset,
                });
            }
            let hasher = s.sha256(&id)?;
            let Session {
                dir,
                data_path,
                data,
                state,
            } = s;
            let out = BlobWriter::new(data, state.offset, direct, &stage_buffers)
                .map_err(BlobError::io("open upload data", &data_path))?;
            Ok((dir, data_path, out, state, hasher))
        })
        .await?;
        let (dir, data_path, out, state, hasher) = session;
        // On error the sink (and its lock) is dropped without touching the
        // state: the bytes written so far are leftovers for the next writer.
        let sink = Sink::new(out, data_path, hasher, commit)
            .drain(data)
            .await?;
        let offset = blocking(move || {
            let Sink {
                out,
                path,
                hasher,
                written,
                ..
            } = sink;
            let file = out.finish().map_err(BlobError::io("write", &path))?;
            if commit {
                file.sync_data()
                    .map_err(BlobError::io("sync upload data", &path))?;
            }
            let next = SessionState {
                offset: state.offset + written,
                sha256_state: resumable::save(&hasher),
                created_ms: state.created_ms,
                updated_ms: now_ms(),
                owner: state.owner,
            };
            write_state(&dir, &next, commit)?;
            // The lock is released only now, with the new state in place.
            drop(file);
            Ok(next.offset)
        })
        .await?;
        tracing::info!(upload_id = %id, offset, "upload appended");
        Ok(offset)
    }

    async fn upload_status(&self, id: &UploadId) -> Result<u64, BlobError> {
        let dir = self.session_dir(id);
        blocking(move || Ok(read_state(&dir)?.offset)).await
    }

    async fn upload_owner(&self, id: &UploadId) -> Result<String, BlobError> {
        let dir = self.session_dir(id);
        blocking(move || Ok(read_state(&dir)?.owner)).await
    }

    async fn commit(&self, id: &UploadId, digest: &Digest) -> Result<u64, BlobError> {
        let _writing = self.writes.begin();
        let dir = self.session_dir(id);
        let dst = self.blob_path(digest);
        let expected = digest.clone();
        let id = *id;
        let commit = self.commit;
        let stored = self.root.join(STORED);
        let (size, placed) = blocking(move || {
            let mut s = Session::open(dir)?;
            let actual = match expected.algorithm() {
                Algorithm::Sha256 => Hasher::Sha256(s.sha256(&id)?).finish(),
                Algorithm::Sha512 => {
                    let mut h = Hasher::new(Algorithm::Sha512);
                    hash_prefix(&mut s.data, &s.data_path, s.state.offset, &mut h)?;
                    h.finish()
                }
            };
            if actual != expected {
                if let Err(e) = remove_session(&s.dir) {
                    tracing::warn!(upload_id = %id, error = %e, "cannot remove rejected upload");
                }
                return Err(BlobError::DigestMismatch { expected, actual });
            }
            if commit {
                s.data
                    .sync_data()
                    .map_err(BlobError::io("sync upload data", &s.data_path))?;
            }
            mark_stored(&stored, &expected)?;
            let placed = publish(&s.data_path, &dst, commit)?;
            if let Err(e) = remove_session(&s.dir) {
                tracing::warn!(upload_id = %id, error = %e, "cannot remove committed upload");
            }
            Ok((s.state.offset, placed))
        })
        .await?;
        tracing::info!(upload_id = %id, digest = %digest, size, new = placed, "upload committed");
        self.warm(digest, size, placed, self.direct_io);
        Ok(size)
    }

    async fn cancel(&self, id: &UploadId) -> Result<(), BlobError> {
        let dir = self.session_dir(id);
        blocking(move || remove_session(&dir)).await?;
        tracing::info!(upload_id = %id, "upload cancelled");
        Ok(())
    }

    async fn put(&self, digest: &Digest, data: ByteStream) -> Result<u64, BlobError> {
        let _writing = self.writes.begin();
        let tmp = self
            .uploads
            .join(format!("{PUT_PREFIX}{}{PUT_SUFFIX}", uuid::Uuid::new_v4()));
        let guard = TempFile(Some(tmp.clone()));
        let direct = self.direct_io;
        let stage_buffers = self.stage_buffers.clone();
        let out = {
            let tmp = tmp.clone();
            blocking(move || {
                let f = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&tmp)
                    .map_err(BlobError::io("create temp file", &tmp))?;
                lock(&f, &tmp)?;
                BlobWriter::new(f, 0, direct, &stage_buffers)
                    .map_err(BlobError::io("create temp file", &tmp))
            })
            .await?
        };
        let sink = Sink::new(
            out,
            tmp.clone(),
            Hasher::new(digest.algorithm()),
            self.commit,
        )
        .drain(data)
        .await?;
        let dst = self.blob_path(digest);
        let expected = digest.clone();
        let commit = self.commit;
        let stored = self.root.join(STORED);
        let (size, placed, wrote_direct) = blocking(move || {
            let Sink {
                out,
                hasher,
                written,
                ..
            } = sink;
            let wrote_direct = out.is_direct();
            let file = out.finish().map_err(BlobError::io("write", &tmp))?;
            let actual = hasher.finish();
            if actual != expected {
                drop(guard);
                return Err(BlobError::DigestMismatch { expected, actual });
            }
            if commit {
                file.sync_data()
                    .map_err(BlobError::io("sync temp file", &tmp))?;
            }
            mark_stored(&stored, &expected)?;
            let placed = publish(&tmp, &dst, commit)?;
            if placed {
                guard.disarm();
            } else {
                drop(guard);
            }
            Ok((written, placed, wrote_direct))
        })
        .await?;
        tracing::info!(digest = %digest, size, new = placed, "blob stored");
        self.warm(digest, size, placed, wrote_direct);
        Ok(size)
    }

    async fn delete(&self, digest: &Digest) -> Result<bool, BlobError> {
        let path = self.blob_path(digest);
        let deleted = match tokio::fs::remove_file(&path).await {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(e) => return Err(BlobError::io("remove blob", path)(e)),
        };
        if deleted {
            tracing::info!(digest = %digest, "blob deleted");
        } else {
            tracing::debug!(digest = %digest, "blob to delete was absent");
        }
        Ok(deleted)
    }

    async fn keep(&self, digest: &Digest) -> Result<u64, BlobError> {
        let path = self.blob_path(digest);
        let stored = self.root.join(STORED);
        let d = digest.clone();
        blocking(move || {
            mark_stored(&stored, &d)?;
            if !touch_in_place(&path).map_err(BlobError::io("mark blob used", &path))? {
                return Err(BlobError::BlobUnknown(d));
            }
            fs::metadata(&path)
                .map(|m| m.len())
                .map_err(BlobError::io("stat blob", &path))
        })
        .await
    }

    async fn stored_before(
        &self,
        cutoff: SystemTime,
        limit: usize,
    ) -> Result<Vec<StoredMark>, BlobError> {
        let stored = self.root.join(STORED);
        if !stored.join(SEEDED).exists() {
            self.seed_marks().await?;
        }
        blocking(move || stored_marks(&stored, cutoff, limit)).await
    }

    async fn forget_stored(&self, marks: &[StoredMark]) -> Result<(), BlobError> {
        let stored = self.root.join(STORED);
        let keys: Vec<String> = marks.iter().map(|m| m.key.clone()).collect();
        blocking(move || {
            let mut buckets = std::collections::BTreeSet::new();
            for key in keys {
                let path = stored.join(&key);
                match fs::remove_file(&path) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => {
                        return Err(BlobError::io("remove stored mark", &path)(e));
                    }
                    _ => {}
                }
                if let Some((bucket, _)) = key.split_once('/') {
                    buckets.insert(bucket.to_string());
                }
            }
            for b in buckets {
                // Only when empty; a store may be adding a mark right now.
                let _ = fs::remove_dir(stored.join(b));
            }
            Ok(())
        })
        .await
    }

    async fn blobs_after(
        &self,
        after: Option<&Digest>,
        limit: usize,
    ) -> Result<Vec<Digest>, BlobError> {
        let blobs = self.blobs.clone();
        let after = after.cloned();
        blocking(move || {
            let mut out = Vec::new();
            let start_alg = after.as_ref().map(|d| d.algorithm().as_str().to_string());
            for alg in sorted_names(&blobs, start_alg.as_deref())? {
                // Within the algorithm of `after`, from its prefix on.
                let same_alg = start_alg.as_deref() == Some(alg.as_str());
                let after_hex = after.as_ref().filter(|_| same_alg).map(|d| d.hex());
                let from_prefix = after_hex.as_ref().map(|h| h[..2].to_string());
                for prefix in sorted_names(&blobs.join(&alg), from_prefix.as_deref())? {
                    for name in sorted_names(&blobs.join(&alg).join(&prefix), None)? {
                        if after_hex.as_ref().is_some_and(|h| name.as_str() <= *h) {
                            continue;
                        }
                        if let Ok(d) = Digest::parse(&format!("{alg}:{name}")) {
                            out.push(d);
                            if out.len() >= limit {
                                return Ok(out);
                            }
                        }
                    }
                }
            }
            Ok(out)
        })
        .await
    }

    async fn verify(&self, digest: &Digest) -> Result<Verdict, BlobError> {
        let path = self.blob_path(digest);
        let corrupt_dir = self.root.join(CORRUPT);
        let expected = digest.clone();
        let verdict = blocking(move || {
            let mut f = match File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Verdict::Gone),
                Err(e) => return Err(BlobError::io("open blob", &path)(e)),
            };
            let mut hasher = Hasher::new(expected.algorithm());
            let mut buf = vec![0u8; READ_CHUNK_BYTES];
            loop {
                let n = f
                    .read(&mut buf)
                    .map_err(BlobError::io("read blob", &path))?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
            }
            let actual = hasher.finish();
            if actual == expected {
                return Ok(Verdict::Intact);
            }
            fs::create_dir_all(&corrupt_dir)
                .map_err(BlobError::io("create directory", &corrupt_dir))?;
            let aside = corrupt_dir.join(format!(
                "{}-{}-{}",
                expected.algorithm().as_str(),
                expected.hex(),
                uuid::Uuid::new_v4().simple()
            ));
            match fs::rename(&path, &aside) {
                // Collected meanwhile: nothing left to serve.
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Verdict::Gone),
                r => {
                    r.map_err(BlobError::io("set corrupt blob aside", &path))?;
                    Ok(Verdict::Corrupt { actual })
                }
            }
        })
        .await?;
        match &verdict {
            Verdict::Intact => {
                self.scrubbed[0].fetch_add(1, Ordering::Relaxed);
            }
            Verdict::Corrupt { actual } => {
                self.scrubbed[0].fetch_add(1, Ordering::Relaxed);
                self.scrubbed[1].fetch_add(1, Ordering::Relaxed);
                tracing::error!(digest = %digest, actual = %actual, "corrupt blob taken out of service");
            }
            Verdict::Gone => {}
        }
        Ok(verdict)
    }

    fn scrub_counts(&self) -> (u64, u64) {
        (
            self.scrubbed[0].load(Ordering::Relaxed),
            self.scrubbed[1].load(Ordering::Relaxed),
        )
    }

    async fn stale_size(
        &self,
        digest: &Digest,
        cutoff: SystemTime,
    ) -> Result<Option<u64>, BlobError> {
        let path = self.blob_path(digest);
        blocking(move || match fs::metadata(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(BlobError::io("stat blob", &path)(e)),
            Ok(m) if m.modified().map_or(true, |t| t >= cutoff) => Ok(None),
            Ok(m) => Ok(Some(m.len())),
        })
        .await
    }

    async fn remove_stale(
        &self,
        digest: &Digest,
        cutoff: SystemTime,
    ) -> Result<Option<u64>, BlobError> {
        let path = self.blob_path(digest);
        let trash = self.root.join(TRASH).join(format!(
            "{}-{}",
            digest.hex(),
            uuid::Uuid::new_v4().simple()
        ));
        let removed = blocking(move || {
            let used_since = |m: &fs::Metadata| m.modified().map_or(true, |t| t >= cutoff);
            match fs::metadata(&path) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(BlobError::io("stat blob", &path)(e)),
                Ok(m) if used_since(&m) => return Ok(None),
                Ok(_) => {}
            }
            match fs::rename(&path, &trash) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                r => r.map_err(BlobError::io("move blob to trash", &path))?,
            }
            // A store of this digest that found the blob before the move has
            // marked it used; give it back (unless that store, finding it
            // gone, has placed its own copy already).
            let moved = fs::metadata(&trash).map_err(BlobError::io("stat blob", &trash))?;
            if used_since(&moved) {
                if fs::symlink_metadata(&path).is_err() {
                    fs::rename(&trash, &path).map_err(BlobError::io("restore blob", &path))?;
                } else {
                    fs::remove_file(&trash).map_err(BlobError::io("remove trash", &trash))?;
                }
                return Ok(None);
            }
            // Not fsynced, even with `commit`: a removal that a power cut
            // undoes leaves a blob that nothing names (space, not data),
            // and one fsync per blob would bound a collection to the
            // device's flush rate.
            fs::remove_file(&trash).map_err(BlobError::io("remove trash", &trash))?;
            Ok(Some(moved.len()))
        })
        .await?;
        if let Some(size) = removed {
            tracing::info!(digest = %digest, size, "unreferenced blob removed");
        }
        Ok(removed)
    }

    async fn expire_uploads(&self, idle: Duration) -> Result<usize, BlobError> {
        let uploads = self.uploads.clone();
        let removed = blocking(move || {
            let now = SystemTime::now();
            let mut removed = 0;
            let entries =
                fs::read_dir(&uploads).map_err(BlobError::io("list uploads", &uploads))?;
            for entry in entries {
                let entry = entry.map_err(BlobError::io("list uploads", &uploads))?;
                let name = entry.file_name();
                let Some(name) = name.to_str() else { continue };
                let path = entry.path();
                let outcome = if UploadId::parse(name).is_ok() {
                    expire_session(&path, now, idle)
                } else if name.starts_with(PUT_PREFIX) && name.ends_with(PUT_SUFFIX) {
                    expire_put_file(&path, now, idle)
                } else {
                    continue;
                };
                match outcome {
                    Ok(true) => {
                        removed += 1;
                        tracing::info!(entry = name, "stale upload removed");
                    }
                    Ok(false) => {}
                    Err(e) => tracing::warn!(entry = name, error = %e, "cannot expire upload"),
                }
            }
            Ok(removed)
        })
        .await?;
        Ok(removed)
    }
}

#[cfg(test)]
mod tests;
