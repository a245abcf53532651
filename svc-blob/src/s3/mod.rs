//! The S3 backend (zot's `storage.storageDriver` with `name: s3`): blobs and
//! upload state in one bucket under the driver's `rootdirectory`, shared by
//! every svc-blob replica with no local disk and no sticky routing.
//!
//! ```text
//! blobs/<alg>/<hex>                   committed blobs, named by digest
//! uploads/<uuid>/state                {owner, offset, sha256, parts, sealed, …}
//! uploads/<uuid>/data/<offset>-<n>    the bytes of one write to the upload
//! gc/s/<second>/<alg>-<hex>           marks of stores, for garbage collection
//! gc/k/<alg>/<hex>                    when a blob was last stored or relied on
//! gc/w/<alg>/<hex>/<nonce>            a store of the blob under way
//! gc/r/<alg>/<hex>                    a collection removing the blob
//! corrupt/<alg>/<hex>/<nonce>         blobs scrub found corrupt
//! ```
//!
//! Keys are kept short (under 170 bytes with a short `rootdirectory`, even
//! for SHA-512 digests): some S3-compatible stores map keys to file names.
//!
//! **Uploads.** The state object is the truth about a session and is only
//! ever replaced with `If-Match` on the version read, so two replicas never
//! both extend one upload: the loser removes its bytes and reports the
//! offset it lost to. Each write streams to an object of its own (multipart
//! when large), hashing on the way; the SHA-256 state is saved with the
//! offset, so a commit on any replica verifies the digest without reading
//! the bytes again. A commit seals the state first (no write after it
//! counts), then assembles the blob server-side: one write is copied, equal
//! writes of at least 5 MiB are joined part by part with `UploadPartCopy`,
//! anything else is streamed through once in equal parts.
//!
//! **Garbage collection.** S3 has no rename and no atomic compare on a
//! blob's age, so removal and stores meet through small lease objects: a
//! store announces itself (`gc/w/…`) and waits while a removal is under
//! way; a removal takes `gc/r/…` with `If-None-Match` and gives up if a
//! store is announced. Either the removal sees the store, or the store
//! waits until the removal is over and then writes the blob anew. No clock
//! is compared with another: a store waits at most [`REMOVAL_WAIT`] on its
//! own clock, and a remover removes only within [`REMOVER_BUDGET`] of
//! taking its lease, its request bounded by [`REMOVE_TIMEOUT`]. A removal
//! that cannot decide (a lease held, a store under way, out of time) is an
//! error, so the blob stays queued for the next collection. A store records
//! its own time (`gc/k/…`) where S3 dates an object from the start of its
//! upload (multipart, assembly). Scrub takes a corrupt blob out of service
//! without a lease: never serving bad bytes comes first, and a good copy
//! stored at that moment is uploaded again by the next push that needs it.

mod bucket;
mod stage;

use crate::BlobError;
use crate::resumable;
use crate::store::{BlobStore, ByteStream, StoredMark, UploadId, Verdict};
use async_trait::async_trait;
use bucket::{Bucket, PreconditionFailed};
use bytes::{Bytes, BytesMut};
use capstan_oci::{Algorithm, Digest, Hasher};
use capstan_runtime::config::storage_driver::{MIN_PART_BYTES, StorageDriverConfig};
use capstan_runtime::grpc::CHUNK_BYTES;
use futures::StreamExt as _;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;
use sha2::Sha256;
use stage::{MAX_PART_BYTES, MAX_PARTS, copy_part_size, part_size, put_streamed, stage};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long a store waits for a removal lease to go, counted on its own
/// clock from when it first sees it (no clock is compared with another's).
/// A remover is done, or has given up, well within this: it removes only
/// within [`REMOVER_BUDGET`] of taking its lease, and its removal request
/// is bounded by [`REMOVE_TIMEOUT`].
const REMOVAL_WAIT: Duration = Duration::from_secs(120);
/// A remover that took longer than this since taking its lease gives up
/// rather than remove.
const REMOVER_BUDGET: Duration = Duration::from_secs(10);
/// The bound on a remover's delete request.
const REMOVE_TIMEOUT: Duration = Duration::from_secs(30);
/// A removal lease this old belongs to a remover that died; the next
/// collection clears it (by the store's timestamps: far beyond any skew).
const DEAD_REMOVAL_LEASE: Duration = Duration::from_secs(600);
/// A store announcement older than this is a store that died.
const WRITE_LEASE: Duration = Duration::from_secs(3600);
/// Store announcements a remover looks at; more count as a store at work.
const WRITERS_LISTED: usize = 1000;
/// How often a store waiting for a removal looks again.
const LEASE_POLL: Duration = Duration::from_millis(50);

/// What `uploads/<uuid>/state` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Session {
    owner: String,
    offset: u64,
    /// The SHA-256 of the bytes so far ([`resumable::save`]).
    sha256: String,
    created_ms: u64,
    updated_ms: u64,
    /// The writes, in order: their objects and lengths.
    parts: Vec<Part>,
    /// A commit has begun: no more writes.
    #[serde(default)]
    sealed: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Part {
    key: String,
    len: u64,
}

/// Blobs and upload sessions in an S3 bucket.
pub struct S3Store {
    bucket: Bucket,
    /// The smallest multipart part (`chunksize`).
    min_part: u64,
    scrubbed: AtomicU64,
    corrupt: AtomicU64,
}

impl std::fmt::Debug for S3Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Store")
            .field("bucket", &self.bucket)
            .finish()
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn blob_key(d: &Digest) -> String {
    format!("blobs/{}/{}", d.algorithm().as_str(), d.hex())
}

/// `alg-hex`, the flat form of a digest in GC keys.
fn flat(d: &Digest) -> String {
    format!("{}-{}", d.algorithm().as_str(), d.hex())
}

fn unflat(s: &str) -> Option<Digest> {
    let (alg, hex) = s.split_once('-')?;
    Digest::parse(&format!("{alg}:{hex}")).ok()
}

fn state_key(id: &UploadId) -> String {
    format!("uploads/{id}/state")
}

/// Where the writes of an upload go.
fn data_dir(id: &UploadId) -> String {
    format!("uploads/{id}/data/")
}

fn kept_key(d: &Digest) -> String {
    format!("gc/k/{}/{}", d.algorithm().as_str(), d.hex())
}

fn writing_prefix(d: &Digest) -> String {
    format!("gc/w/{}/{}/", d.algorithm().as_str(), d.hex())
}

fn removing_key(d: &Digest) -> String {
    format!("gc/r/{}/{}", d.algorithm().as_str(), d.hex())
}

/// A short random name: 48 bits.
fn nonce() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_string()
}

const STORED: &str = "gc/s/";

/// A stream of `body`'s bytes in chunks of at most [`CHUNK_BYTES`], small
/// network frames gathered.
fn body_stream(body: aws_sdk_s3::primitives::ByteStream, key: String) -> ByteStream {
    futures::stream::unfold((Some(body), BytesMut::new()), move |(body, mut pending)| {
        let key = key.clone();
        async move {
            let mut body = body?;
            loop {
                match body.next().await {
                    Some(Ok(b)) => {
                        pending.extend_from_slice(&b);
                        if pending.len() >= CHUNK_BYTES {
                            let out = pending.split_to(CHUNK_BYTES).freeze();
                            return Some((Ok(out), (Some(body), pending)));
                        }
                    }
                    Some(Err(e)) => {
                        let err = BlobError::Unavailable(format!("reading {key}: {e}"));
                        return Some((Err(err), (None, BytesMut::new())));
                    }
                    None if pending.is_empty() => return None,
                    None => {
                        let out = std::mem::take(&mut pending).freeze();
                        return Some((Ok(out), (None, BytesMut::new())));
                    }
                }
            }
        }
    })
    .boxed()
}

impl S3Store {
    /// A client of the bucket `config` names. Nothing is asked of the
    /// store yet: [`BlobStore::check`] says whether it answers.
    pub async fn connect(config: &StorageDriverConfig) -> Result<Self, BlobError> {
        use aws_config::{BehaviorVersion, Region};
        let mut loader = aws_config::defaults(BehaviorVersion::latest());
        if let Some(r) = &config.region {
            loader = loader.region(Region::new(r.clone()));
        }
        if let (Some(ak), Some(sk)) = (&config.access_key, &config.secret_key) {
            loader = loader.credentials_provider(aws_sdk_s3::config::Credentials::new(
                ak,
                sk,
                config.session_token.clone(),
                None,
                "capstan-config",
            ));
        }
        let shared = loader.load().await;
        let mut builder = aws_sdk_s3::config::Builder::from(&shared)
            .force_path_style(config.force_path_style.unwrap_or(false))
            // Capstan verifies every blob's digest itself; extra CRCs cost
            // CPU and are not understood by every S3-compatible store.
            .request_checksum_calculation(
                aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired,
            )
            .response_checksum_validation(
                aws_sdk_s3::config::ResponseChecksumValidation::WhenRequired,
            );
        if shared.region().is_none() {
            builder = builder.region(Region::new("us-east-1"));
        }
        if let Some(url) = config.endpoint_url() {
            builder = builder.endpoint_url(url);
        }
        let client = aws_sdk_s3::Client::from_conf(builder.build());
        let store = Self {
            bucket: Bucket::new(client, config.bucket.clone(), &config.prefix()),
            min_part: config.part_bytes().max(MIN_PART_BYTES),
            scrubbed: AtomicU64::new(0),
            corrupt: AtomicU64::new(0),
        };
        Ok(store)
    }

    async fn session(&self, id: &UploadId) -> Result<(Session, String), BlobError> {
        let key = state_key(id);
        let (bytes, etag) = self
            .bucket
            .get_small(&key)
            .await?
            .ok_or(BlobError::UploadUnknown)?;
        let s = serde_json::from_slice(&bytes)
            .map_err(|e| BlobError::Internal(format!("upload state {key} unreadable: {e}")))?;
        Ok((s, etag))
    }

    /// Replace the state of `id` if it is still at `etag`.
    async fn save_session(
        &self,
        id: &UploadId,
        s: &Session,
        etag: Option<&str>,
    ) -> Result<Result<String, PreconditionFailed>, BlobError> {
        let body = serde_json::to_vec(s).map_err(|e| BlobError::Internal(e.to_string()))?;
        self.bucket
            .put(&state_key(id), Bytes::from(body), etag, etag.is_none())
            .await
    }

    /// Remove a session: its state first (it is unknown from then on),
    /// then its bytes (those of writes that lost a race too).
    async fn remove_session(&self, id: &UploadId) -> Result<(), BlobError> {
        self.bucket.delete(&state_key(id)).await?;
        let keys: Vec<String> = self
            .bucket
            .list(&data_dir(id), None, usize::MAX)
            .await?
            .into_iter()
            .map(|o| o.key)
            .collect();
        self.bucket.delete_many(&keys).await
    }

    /// The bytes of several objects, one after the other.
    fn concat(&self, keys: Vec<String>) -> ByteStream {
        let bucket = self.bucket.clone();
        futures::stream::iter(keys)
            .then(move |key| {
                let bucket = bucket.clone();
                async move {
                    match bucket.get(&key, None).await {
                        Ok(Some(got)) => body_stream(got.body, key),
                        Ok(None) => futures::stream::once(async move {
                            Err(BlobError::Internal(format!("upload data {key} is missing")))
                        })
                        .boxed(),
                        Err(e) => futures::stream::once(async move { Err(e) }).boxed(),
                    }
                }
            })
            .flatten()
            .boxed()
    }

    /// Copy one object whole to `to` (in parts beyond 5 GiB).
    async fn copy_whole(&self, from: &str, size: u64, to: &str) -> Result<(), BlobError> {
        if size <= MAX_PART_BYTES {
            return self.bucket.copy(from, to).await;
        }
        let part = copy_part_size(self.min_part, size);
        let id = self.bucket.start_multipart(to).await?;
        let mut parts = Vec::new();
        let mut start = 0;
        while start < size {
            let end = (start + part).min(size);
            match self
                .bucket
                .copy_part(to, &id, parts.len() as i32 + 1, from, start, end)
                .await
            {
                Ok(p) => parts.push(p),
                Err(e) => {
                    self.bucket.abort_multipart(to, &id).await;
                    return Err(e);
                }
            }
            start = end;
        }
        match self.bucket.complete_multipart(to, &id, parts).await {
            Ok(()) => Ok(()),
            Err(e) => {
                self.bucket.abort_multipart(to, &id).await;
                Err(e)
            }
        }
    }

    /// Assemble the writes of an upload (`total` bytes) into `to`.
    async fn assemble(&self, parts: &[Part], total: u64, to: &str) -> Result<(), BlobError> {
        if let [one] = parts {
            return self.copy_whole(&one.key, one.len, to).await;
        }
        if parts.is_empty() {
            self.bucket.put(to, Bytes::new(), None, false).await?.ok();
            return Ok(());
        }
        // Equal writes big enough to be parts: join them server-side.
        let (init, _) = parts.split_at(parts.len() - 1);
        let size = init[0].len;
        if (MIN_PART_BYTES..=MAX_PART_BYTES).contains(&size)
            && init.iter().all(|p| p.len == size)
            && parts.last().is_some_and(|p| p.len <= size)
            && (parts.len() as u64) < MAX_PARTS
        {
            let id = self.bucket.start_multipart(to).await?;
            let mut done = Vec::new();
            for (i, p) in parts.iter().enumerate() {
                let copied = if p.len == 0 {
                    continue;
                } else {
                    self.bucket
                        .copy_part(to, &id, i as i32 + 1, &p.key, 0, p.len)
                        .await
                };
                match copied {
                    Ok(c) => done.push(c),
                    Err(e) => {
                        self.bucket.abort_multipart(to, &id).await;
                        return Err(e);
                    }
                }
            }
            return match self.bucket.complete_multipart(to, &id, done).await {
                Ok(()) => Ok(()),
                Err(e) => {
                    self.bucket.abort_multipart(to, &id).await;
                    Err(e)
                }
            };
        }
        // Anything else goes through once, in equal parts.
        let keys = parts.iter().map(|p| p.key.clone()).collect();
        let staged = stage(
            &self.bucket,
            to,
            part_size(self.min_part, Some(total))?,
            self.concat(keys),
            |_| {},
        )
        .await?;
        if staged.len != total {
            let held = staged.len;
            staged.discard();
            return Err(BlobError::Internal(format!(
                "upload data holds {held} bytes, its state says {total}"
            )));
        }
        staged.finish(&self.bucket).await
    }

    /// Run `store` (which writes `digest`'s blob or relies on it) as a
    /// store that garbage collection respects, and leave its mark.
    async fn stored<T>(
        &self,
        digest: &Digest,
        store: impl Future<Output = Result<T, BlobError>>,
    ) -> Result<T, BlobError> {
        let lease = format!("{}{}", writing_prefix(digest), nonce());
        self.bucket
            .put(&lease, Bytes::new(), None, false)
            .await?
            .ok();
        let stored = async {
            self.await_removal(digest).await?;
            store.await
        }
        .await;
        // Once stored, leave the mark and withdraw the announcement at once.
        let marked = async {
            match &stored {
                Ok(_) => self.mark_stored(digest).await,
                Err(_) => Ok(()),
            }
        };
        let (marked, withdrawn) = tokio::join!(marked, self.bucket.delete(&lease));
        if let Err(e) = withdrawn {
            tracing::warn!(lease, error = %e, "store announcement left behind");
        }
        let out = stored?;
        marked?;
        Ok(out)
    }

    /// Wait while a collection is removing `digest`, for at most
    /// [`REMOVAL_WAIT`] (a lease still there by then is a dead remover's).
    async fn await_removal(&self, digest: &Digest) -> Result<(), BlobError> {
        let key = removing_key(digest);
        let deadline = Instant::now() + REMOVAL_WAIT;
        while self.bucket.head(&key).await?.is_some() {
            if Instant::now() > deadline {
                tracing::warn!(%digest, lease = key, "removal lease outlived its remover");
                return Ok(());
            }
            tokio::time::sleep(LEASE_POLL).await;
        }
        Ok(())
    }

    async fn mark_stored(&self, digest: &Digest) -> Result<(), BlobError> {
        let second = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let key = format!("{STORED}{second:012}/{}", flat(digest));
        self.bucket.put(&key, Bytes::new(), None, false).await?.ok();
        Ok(())
    }

    /// Record that `digest` was stored (again) now, without its bytes.
    async fn renew(&self, digest: &Digest) -> Result<(), BlobError> {
        self.bucket
            .put(&kept_key(digest), Bytes::new(), None, false)
            .await?
            .ok();
        Ok(())
    }

    /// Hash everything in `data` without storing it; returns its length.
    async fn drain(data: ByteStream, hasher: &mut Hasher) -> Result<u64, BlobError> {
        let mut data = data;
        let mut len = 0;
        while let Some(chunk) = data.next().await {
            let chunk = chunk?;
            hasher.update(&chunk);
            len += chunk.len() as u64;
        }
        Ok(len)
    }

    /// The hash of an upload's bytes: from the saved state for SHA-256,
    /// else by reading them.
    async fn upload_digest(&self, s: &Session, alg: Algorithm) -> Result<Digest, BlobError> {
        if alg == Algorithm::Sha256 {
            let h = resumable::restore(&s.sha256)
                .ok_or_else(|| BlobError::Internal("upload hash state unreadable".into()))?;
            return Ok(Hasher::Sha256(h).finish());
        }
        let mut hasher = Hasher::new(alg);
        let keys = s.parts.iter().map(|p| p.key.clone()).collect();
        Self::drain(self.concat(keys), &mut hasher).await?;
        Ok(hasher.finish())
    }
}

#[async_trait]
impl BlobStore for S3Store {
    async fn check(&self) -> Result<(), BlobError> {
        self.bucket.check().await
    }

    async fn stat(&self, digest: &Digest) -> Result<u64, BlobError> {
        self.bucket
            .head(&blob_key(digest))
            .await?
            .map(|h| h.size)
            .ok_or_else(|| BlobError::BlobUnknown(digest.clone()))
    }

    async fn read(
        &self,
        digest: &Digest,
        offset: u64,
        length: u64,
    ) -> Result<ByteStream, BlobError> {
        let key = blob_key(digest);
        let unknown = || BlobError::BlobUnknown(digest.clone());
        let bad = || BlobError::RangeInvalid(format!("bytes {offset}+{length} out of range"));
        if offset
            .checked_add(length)
            .is_none_or(|end| end > i64::MAX as u64)
        {
            // Past any object; some stores reject such a header outright.
            self.stat(digest).await?;
            return Err(bad());
        }
        let range = match (offset, length) {
            (0, 0) => None,
            (o, 0) => Some(format!("bytes={o}-")),
            (o, l) => Some(format!("bytes={o}-{}", o + l - 1)),
        };
        let ranged = range.is_some();
        match self.bucket.get(&key, range).await {
            Ok(Some(got)) => {
                let total = got.total;
                if offset > total || (length > 0 && offset + length > total) {
                    return Err(bad());
                }
                if ranged && !got.partial {
                    // The store answered with the whole object: right when
                    // the whole object was asked for.
                    if offset == total {
                        return Ok(futures::stream::empty().boxed());
                    }
                    if offset != 0 || (length != 0 && length != total) {
                        return Err(BlobError::Internal(format!(
                            "the store ignored the range of a read of {key}"
                        )));
                    }
                }
                Ok(body_stream(got.body, key))
            }
            Ok(None) => Err(unknown()),
            // S3 refuses a range starting at the end; that is an empty read
            // when no length was asked for.
            Err(BlobError::RangeInvalid(_)) => match self.bucket.head(&key).await? {
                None => Err(unknown()),
                Some(h) if length == 0 && offset == h.size => Ok(futures::stream::empty().boxed()),
                Some(_) => Err(bad()),
            },
            Err(e) => Err(e),
        }
    }

    async fn start_upload(&self, owner: &str) -> Result<UploadId, BlobError> {
        let id = UploadId::random();
        let now = now_ms();
        let s = Session {
            owner: owner.to_string(),
            offset: 0,
            sha256: resumable::save(&Sha256::new()),
            created_ms: now,
            updated_ms: now,
            parts: Vec::new(),
            sealed: false,
        };
        self.save_session(&id, &s, None)
            .await?
            .map_err(|_| BlobError::Internal("upload id taken".into()))?;
        tracing::info!(upload_id = %id, "upload started");
        Ok(id)
    }

    async fn upload_owner(&self, id: &UploadId) -> Result<String, BlobError> {
        Ok(self.session(id).await?.0.owner)
    }

    async fn append(
        &self,
        id: &UploadId,
        expected_offset: Option<u64>,
        data: ByteStream,
    ) -> Result<u64, BlobError> {
        self.append_with_length(id, expected_offset, None, data)
            .await
    }

    async fn append_with_length(
        &self,
        id: &UploadId,
        expected_offset: Option<u64>,
        length: Option<u64>,
        data: ByteStream,
    ) -> Result<u64, BlobError> {
        let (mut s, etag) = self.session(id).await?;
        if s.sealed {
            return Err(BlobError::UploadBusy);
        }
        if let Some(expected) = expected_offset
            && expected != s.offset
        {
            return Err(BlobError::OffsetMismatch {
                expected,
                actual: s.offset,
            });
        }
        let mut hasher = resumable::restore(&s.sha256)
            .ok_or_else(|| BlobError::Internal("upload hash state unreadable".into()))?;
        let key = format!("{}{:020}-{}", data_dir(id), s.offset, nonce());
        let len = match length {
            // Announced and at most one request's worth: streamed straight
            // into its object, nothing buffered.
            Some(len) if len > 0 && len <= MAX_PART_BYTES => {
                put_streamed(&self.bucket, &key, len, data, |b| hasher.update(b)).await?
            }
            _ => {
                let staged = stage(
                    &self.bucket,
                    &key,
                    part_size(self.min_part, length)?,
                    data,
                    |b| hasher.update(b),
                )
                .await?;
                if staged.len == 0 {
                    staged.discard();
                    return Ok(s.offset);
                }
                let len = staged.len;
                staged.finish(&self.bucket).await?;
                len
            }
        };
        s.parts.push(Part {
            key: key.clone(),
            len,
        });
        s.offset += len;
        s.sha256 = resumable::save(&hasher);
        s.updated_ms = now_ms();
        let saved = self.save_session(id, &s, Some(&etag)).await;
        if !matches!(saved, Ok(Ok(_))) {
            // Another write or the end of the session came first.
            let _ = self.bucket.delete(&key).await;
        }
        match saved? {
            Ok(_) => {
                tracing::info!(upload_id = %id, offset = s.offset, "upload appended");
                Ok(s.offset)
            }
            Err(PreconditionFailed) => {
                let (now, _) = self.session(id).await?;
                match expected_offset {
                    Some(expected) if !now.sealed => Err(BlobError::OffsetMismatch {
                        expected,
                        actual: now.offset,
                    }),
                    _ => Err(BlobError::UploadBusy),
                }
            }
        }
    }

    async fn upload_status(&self, id: &UploadId) -> Result<u64, BlobError> {
        Ok(self.session(id).await?.0.offset)
    }

    async fn commit(&self, id: &UploadId, digest: &Digest) -> Result<u64, BlobError> {
        let (mut s, etag) = self.session(id).await?;
        if s.sealed {
            return Err(BlobError::UploadBusy);
        }
        s.sealed = true;
        s.updated_ms = now_ms();
        if self.save_session(id, &s, Some(&etag)).await?.is_err() {
            // A write came first, or the session ended meanwhile.
            self.session(id).await?;
            return Err(BlobError::UploadBusy);
        }
        let result = async {
            let actual = self.upload_digest(&s, digest.algorithm()).await?;
            if actual != *digest {
                return Err(BlobError::DigestMismatch {
                    expected: digest.clone(),
                    actual,
                });
            }
            let key = blob_key(digest);
            let placed = self
                .stored(digest, async {
                    match self.bucket.head(&key).await? {
                        // Stored already: this commit only renews it.
                        Some(_) => self.renew(digest).await.map(|()| false),
                        None => {
                            self.assemble(&s.parts, s.offset, &key).await?;
                            // Assembled objects may be dated from the start
                            // of their assembly.
                            self.renew(digest).await.map(|()| true)
                        }
                    }
                })
                .await?;
            tracing::info!(upload_id = %id, digest = %digest, size = s.offset, new = placed,
                "upload committed");
            Ok(s.offset)
        }
        .await;
        self.remove_session(id).await?;
        result
    }

    async fn cancel(&self, id: &UploadId) -> Result<(), BlobError> {
        if self.session(id).await?.0.sealed {
            // Being committed: the commit ends the session.
            return Err(BlobError::UploadBusy);
        }
        self.remove_session(id).await?;
        tracing::info!(upload_id = %id, "upload cancelled");
        Ok(())
    }

    async fn put(&self, digest: &Digest, data: ByteStream) -> Result<u64, BlobError> {
        self.put_with_length(digest, None, data).await
    }

    async fn put_with_length(
        &self,
        digest: &Digest,
        length: Option<u64>,
        data: ByteStream,
    ) -> Result<u64, BlobError> {
        let key = blob_key(digest);
        let mut hasher = Hasher::new(digest.algorithm());
        let staged = stage(
            &self.bucket,
            &key,
            part_size(self.min_part, length)?,
            data,
            |b| hasher.update(b),
        )
        .await?;
        let actual = hasher.finish();
        if actual != *digest {
            staged.discard();
            return Err(BlobError::DigestMismatch {
                expected: digest.clone(),
                actual,
            });
        }
        let len = staged.len;
        let multipart = staged.is_multipart();
        self.stored(digest, async {
            staged.finish(&self.bucket).await?;
            if multipart {
                // S3 dates a multipart object from the upload's start, which
                // may be long ago: record the store's own time.
                self.renew(digest).await?;
            }
            Ok(())
        })
        .await?;
        tracing::info!(digest = %digest, size = len, "blob stored");
        Ok(len)
    }

    async fn delete(&self, digest: &Digest) -> Result<bool, BlobError> {
        let key = blob_key(digest);
        if self.bucket.head(&key).await?.is_none() {
            return Ok(false);
        }
        self.bucket.delete(&key).await?;
        self.bucket.delete(&kept_key(digest)).await?;
        Ok(true)
    }

    async fn keep(&self, digest: &Digest) -> Result<u64, BlobError> {
        self.stored(digest, async {
            let size = self.stat(digest).await?;
            self.renew(digest).await?;
            Ok(size)
        })
        .await
    }

    async fn stored_before(
        &self,
        cutoff: SystemTime,
        limit: usize,
    ) -> Result<Vec<StoredMark>, BlobError> {
        let cutoff = cutoff.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        for dir in self.bucket.dirs(STORED).await? {
            let second = dir
                .strip_prefix(STORED)
                .and_then(|s| s.trim_end_matches('/').parse::<u64>().ok());
            match second {
                Some(s) if s < cutoff => {}
                Some(_) => break,
                None => continue,
            }
            for o in self.bucket.list(&dir, None, limit - out.len()).await? {
                let name = o.key.rsplit('/').next().unwrap_or_default();
                match unflat(name) {
                    Some(digest) => out.push(StoredMark { digest, key: o.key }),
                    None => self.bucket.delete(&o.key).await?,
                }
            }
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    async fn forget_stored(&self, marks: &[StoredMark]) -> Result<(), BlobError> {
        let keys: Vec<String> = marks.iter().map(|m| m.key.clone()).collect();
        self.bucket.delete_many(&keys).await
    }

    async fn stale_size(
        &self,
        digest: &Digest,
        cutoff: SystemTime,
    ) -> Result<Option<u64>, BlobError> {
        let Some(blob) = self.bucket.head(&blob_key(digest)).await? else {
            return Ok(None);
        };
        let mut last = blob.modified;
        if let Some(kept) = self.bucket.head(&kept_key(digest)).await? {
            last = last.max(kept.modified);
        }
        // S3 keeps whole seconds: a store in the cutoff's own second counts
        // as after it.
        Ok((last + Duration::from_secs(1) <= cutoff).then_some(blob.size))
    }

    async fn remove_stale(
        &self,
        digest: &Digest,
        cutoff: SystemTime,
    ) -> Result<Option<u64>, BlobError> {
        let started = Instant::now();
        let lease = removing_key(digest);
        // Undecided (another collection at it, a store under way, out of
        // time) is an error, not "nothing to remove": the blob stays queued
        // for the next collection.
        let later = |why: &str| {
            Err(BlobError::Unavailable(format!(
                "{digest} not removed now ({why}); the next collection looks again"
            )))
        };
        if self
            .bucket
            .put(&lease, Bytes::new(), None, true)
            .await?
            .is_err()
        {
            // Another collection is at it, or one died holding the lease:
            // clear a long dead one for the next run.
            if let Some(h) = self.bucket.head(&lease).await?
                && h.modified + DEAD_REMOVAL_LEASE < SystemTime::now()
            {
                self.bucket.delete(&lease).await?;
            }
            return later("another collection holds its removal lease");
        }
        let result = async {
            let writers = self
                .bucket
                .list(&writing_prefix(digest), None, WRITERS_LISTED)
                .await?;
            let now = SystemTime::now();
            let crowded = writers.len() >= WRITERS_LISTED;
            let (live, dead): (Vec<_>, Vec<_>) = writers
                .into_iter()
                .partition(|w| w.modified + WRITE_LEASE > now);
            if crowded || !live.is_empty() {
                return later("a store of it is under way");
            }
            let Some(size) = self.stale_size(digest, cutoff).await? else {
                return Ok(None);
            };
            if started.elapsed() > REMOVER_BUDGET {
                return later("the removal ran out of time");
            }
            match tokio::time::timeout(REMOVE_TIMEOUT, self.bucket.delete(&blob_key(digest))).await
            {
                Ok(removed) => removed?,
                Err(_) => return later("the store did not answer the removal in time"),
            }
            self.bucket.delete(&kept_key(digest)).await?;
            let dead: Vec<String> = dead.into_iter().map(|w| w.key).collect();
            self.bucket.delete_many(&dead).await?;
            tracing::info!(digest = %digest, size, "unreferenced blob removed");
            Ok(Some(size))
        }
        .await;
        if let Err(e) = self.bucket.delete(&lease).await {
            tracing::warn!(lease, error = %e, "removal lease left behind");
        }
        result
    }

    async fn expire_uploads(&self, idle: Duration) -> Result<usize, BlobError> {
        let idle_ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
        let now = now_ms();
        let mut removed = 0;
        for dir in self.bucket.dirs("uploads/").await? {
            let Some(id) = dir
                .strip_prefix("uploads/")
                .and_then(|s| UploadId::parse(s.trim_end_matches('/')).ok())
            else {
                continue;
            };
            // One session that cannot be read or removed does not stop the
            // others from expiring.
            let stale = match self.session(&id).await {
                Ok((s, _)) => now.saturating_sub(s.updated_ms) >= idle_ms,
                // Bytes whose state is gone (a removal that stopped half
                // way): stale once they are old enough.
                Err(BlobError::UploadUnknown) => {
                    match self.bucket.list(&data_dir(&id), None, usize::MAX).await {
                        Ok(objects) => match objects.iter().map(|o| o.modified).max() {
                            Some(newest) => newest + idle <= SystemTime::now(),
                            // Nothing there (a store listing emptied prefixes).
                            None => false,
                        },
                        Err(e) => {
                            tracing::warn!(upload_id = %id, error = %e, "cannot list upload data");
                            false
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(upload_id = %id, error = %e, "cannot read upload state");
                    false
                }
            };
            if stale {
                match self.remove_session(&id).await {
                    Ok(()) => removed += 1,
                    Err(e) => tracing::warn!(upload_id = %id, error = %e, "cannot expire upload"),
                }
            }
        }
        Ok(removed)
    }

    async fn blobs_after(
        &self,
        after: Option<&Digest>,
        limit: usize,
    ) -> Result<Vec<Digest>, BlobError> {
        // One directory per algorithm, walked in the order of their names.
        let mut out = Vec::new();
        for alg in [Algorithm::Sha256, Algorithm::Sha512] {
            let start = match after {
                Some(a) if a.algorithm().as_str() > alg.as_str() => continue,
                Some(a) if a.algorithm() == alg => Some(blob_key(a)),
                _ => None,
            };
            let dir = format!("blobs/{}/", alg.as_str());
            let page = self
                .bucket
                .list(&dir, start.as_deref(), limit - out.len())
                .await?;
            out.extend(page.into_iter().filter_map(|o| {
                let hex = o.key.strip_prefix(&dir)?;
                Digest::parse(&format!("{}:{hex}", alg.as_str())).ok()
            }));
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    async fn verify(&self, digest: &Digest) -> Result<Verdict, BlobError> {
        let key = blob_key(digest);
        let Some(got) = self.bucket.get(&key, None).await? else {
            return Ok(Verdict::Gone);
        };
        let size = got.total;
        let mut hasher = Hasher::new(digest.algorithm());
        Self::drain(body_stream(got.body, key.clone()), &mut hasher).await?;
        let actual = hasher.finish();
        self.scrubbed.fetch_add(1, Ordering::Relaxed);
        if actual == *digest {
            return Ok(Verdict::Intact);
        }
        self.corrupt.fetch_add(1, Ordering::Relaxed);
        let aside = format!(
            "corrupt/{}/{}/{}",
            digest.algorithm().as_str(),
            digest.hex(),
            nonce()
        );
        self.copy_whole(&key, size, &aside).await?;
        self.bucket.delete(&key).await?;
        self.bucket.delete(&kept_key(digest)).await?;
        tracing::error!(%digest, %actual, kept_at = aside, "corrupt blob taken out of service");
        Ok(Verdict::Corrupt { actual })
    }

    fn scrub_counts(&self) -> (u64, u64) {
        (
            self.scrubbed.load(Ordering::Relaxed),
            self.corrupt.load(Ordering::Relaxed),
        )
    }

    async fn presign(&self, digest: &Digest, ttl: Duration) -> Result<Option<String>, BlobError> {
        self.stat(digest).await?;
        Ok(Some(self.bucket.presign_get(&blob_key(digest), ttl).await?))
    }
}

#[cfg(test)]
mod tests;
