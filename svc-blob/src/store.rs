//! The narrow interface every blob backend implements (filesystem now, S3
//! later), and the upload id it is keyed by.

use crate::BlobError;
use crate::warm::WarmCounts;
use async_trait::async_trait;
use bytes::Bytes;
use capstan_oci::Digest;
use futures::stream::BoxStream;
use std::fmt;
use std::time::Duration;

/// Blob bytes flowing into or out of a store, in chunks of at most
/// [`capstan_runtime::grpc::CHUNK_BYTES`] when produced by a store.
pub type ByteStream = BoxStream<'static, Result<Bytes, BlobError>>;

/// The id of a resumable upload session: a random UUID, written in its
/// canonical lowercase hyphenated form. Anything else is not an upload id,
/// which also keeps ids from naming paths outside a backend's upload area.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UploadId(uuid::Uuid);

impl UploadId {
    /// A fresh random id.
    pub fn random() -> Self {
        Self(uuid::Uuid::new_v4())
    }

    /// Accept only the canonical form (`xxxxxxxx-xxxx-…`, lowercase);
    /// anything else is [`BlobError::UploadUnknown`].
    pub fn parse(s: &str) -> Result<Self, BlobError> {
        let id = uuid::Uuid::try_parse(s).map_err(|_| BlobError::UploadUnknown)?;
        let mut buf = uuid::Uuid::encode_buffer();
        let canonical: &str = id.hyphenated().encode_lower(&mut buf);
        if canonical != s {
            return Err(BlobError::UploadUnknown);
        }
        Ok(Self(id))
    }
}

impl fmt::Display for UploadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

/// What [`BlobStore::verify`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The bytes match the digest.
    Intact,
    /// No such blob (any more).
    Gone,
    /// The bytes hash to `actual`: the blob was taken out of service.
    Corrupt { actual: Digest },
}

/// A mark left by storing a blob, for garbage collection to check that
/// something links it ([`BlobStore::stored_before`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMark {
    pub digest: Digest,
    /// Where the backend keeps the mark.
    pub(crate) key: String,
}

/// Content-addressed blob storage with resumable uploads.
///
/// Upload state lives in the backend only, so consecutive calls for one
/// upload may be served by different processes sharing the backend. A blob
/// becomes visible only after its digest has been verified.
#[async_trait]
pub trait BlobStore: Send + Sync + 'static {
    /// Whether the storage answers (a bucket that exists and takes the
    /// credentials); a directory always does.
    async fn check(&self) -> Result<(), BlobError> {
        Ok(())
    }

    /// Size of a committed blob.
    async fn stat(&self, digest: &Digest) -> Result<u64, BlobError>;

    /// Stream `length` bytes of a committed blob from `offset` (`length` 0:
    /// to the end). Range errors are reported here, before any byte.
    async fn read(
        &self,
        digest: &Digest,
        offset: u64,
        length: u64,
    ) -> Result<ByteStream, BlobError>;

    /// Open an empty upload session belonging to `owner`.
    async fn start_upload(&self, owner: &str) -> Result<UploadId, BlobError>;

    /// The owner an upload was started for.
    async fn upload_owner(&self, id: &UploadId) -> Result<String, BlobError>;

    /// Append `data` to an upload and return its new offset. With
    /// `expected_offset`, fail with [`BlobError::OffsetMismatch`] (writing
    /// nothing) unless the upload is at that offset. If `data` fails, nothing
    /// of this call is kept.
    async fn append(
        &self,
        id: &UploadId,
        expected_offset: Option<u64>,
        data: ByteStream,
    ) -> Result<u64, BlobError>;

    /// [`BlobStore::append`] of a request body announced as `length`
    /// bytes (its Content-Length): a backend may size its writes by it.
    /// The announced length is a hint; the bytes decide.
    async fn append_with_length(
        &self,
        id: &UploadId,
        expected_offset: Option<u64>,
        length: Option<u64>,
        data: ByteStream,
    ) -> Result<u64, BlobError> {
        let _ = length;
        self.append(id, expected_offset, data).await
    }

    /// Bytes received so far.
    async fn upload_status(&self, id: &UploadId) -> Result<u64, BlobError>;

    /// Verify that everything written has `digest` and make it the blob
    /// `digest`; the session ends either way. Returns the blob's size.
    async fn commit(&self, id: &UploadId, digest: &Digest) -> Result<u64, BlobError>;

    /// Drop an upload session and its bytes.
    async fn cancel(&self, id: &UploadId) -> Result<(), BlobError>;

    /// Store a whole blob from `data`, verified against `digest`. Returns its
    /// size.
    async fn put(&self, digest: &Digest, data: ByteStream) -> Result<u64, BlobError>;

    /// [`BlobStore::put`] of a body announced as `length` bytes (see
    /// [`BlobStore::append_with_length`]).
    async fn put_with_length(
        &self,
        digest: &Digest,
        length: Option<u64>,
        data: ByteStream,
    ) -> Result<u64, BlobError> {
        let _ = length;
        self.put(digest, data).await
    }

    /// A URL from which anyone holding it may GET the blob for `ttl`, when
    /// the backend has such URLs (`storage.redirectBlobURL`); `None` when
    /// it has not. BLOB_UNKNOWN when the blob is absent.
    async fn presign(&self, digest: &Digest, ttl: Duration) -> Result<Option<String>, BlobError> {
        let _ = (digest, ttl);
        Ok(None)
    }

    /// Remove a committed blob; `false` when it was absent.
    async fn delete(&self, digest: &Digest) -> Result<bool, BlobError>;

    /// The caller is about to link `digest` without storing it again (it
    /// found the blob here): count it as stored now, so that a garbage
    /// collection under way keeps it. Returns its size; BLOB_UNKNOWN when
    /// it is gone.
    async fn keep(&self, digest: &Digest) -> Result<u64, BlobError>;

    /// Garbage collection: the marks that storing a blob (a put, a commit,
    /// a [`BlobStore::keep`]) left before `cutoff`, oldest first, at most
    /// `limit`. Each names a blob that svc-meta may not know of (the link
    /// that should follow the store never came); once svc-meta has been
    /// asked, [`BlobStore::forget_stored`] drops them.
    async fn stored_before(
        &self,
        cutoff: std::time::SystemTime,
        limit: usize,
    ) -> Result<Vec<StoredMark>, BlobError>;

    /// Drop marks returned by [`BlobStore::stored_before`].
    async fn forget_stored(&self, marks: &[StoredMark]) -> Result<(), BlobError>;

    /// Garbage collection: the size of `digest` if it is here and was not
    /// stored again since `cutoff` (what [`BlobStore::remove_stale`] would
    /// remove), else `None`.
    async fn stale_size(
        &self,
        digest: &Digest,
        cutoff: std::time::SystemTime,
    ) -> Result<Option<u64>, BlobError>;

    /// Garbage collection: remove `digest` unless it was stored again since
    /// `cutoff`, and return the bytes freed. A put, commit or keep of the
    /// same digest racing with this either keeps the blob or stores it
    /// anew; nothing is lost. `None` when it was absent or used since.
    async fn remove_stale(
        &self,
        digest: &Digest,
        cutoff: std::time::SystemTime,
    ) -> Result<Option<u64>, BlobError>;

    /// Remove upload sessions idle for at least `idle`, skipping any being
    /// written right now. Returns how many were removed.
    async fn expire_uploads(&self, idle: Duration) -> Result<usize, BlobError>;

    /// Scrub: up to `limit` committed blobs after `after` (all of them
    /// from the start when `None`), in the order of their digests' text.
    async fn blobs_after(
        &self,
        after: Option<&Digest>,
        limit: usize,
    ) -> Result<Vec<Digest>, BlobError>;

    /// Scrub: read `digest` whole and check its bytes against it. A blob
    /// that does not match is taken out of service at once (kept aside
    /// for inspection, never served again) and its actual digest returned.
    async fn verify(&self, digest: &Digest) -> Result<Verdict, BlobError>;

    /// Blobs verified so far, and those found corrupt.
    fn scrub_counts(&self) -> (u64, u64) {
        (0, 0)
    }

    /// Reads served so far: (with direct I/O, through the page cache).
    fn read_paths(&self) -> (u64, u64) {
        (0, 0)
    }

    /// What warming pushed blobs into the page cache has done so far
    /// (`storage.warmAfterPush`).
    fn warm_counts(&self) -> WarmCounts {
        WarmCounts::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_canonical_uuids_are_upload_ids() {
        let id = UploadId::random();
        assert_eq!(UploadId::parse(&id.to_string()).unwrap(), id);
        let upper = id.to_string().to_uppercase();
        let simple = id.to_string().replace('-', "");
        let braced = format!("{{{id}}}");
        let urn = format!("urn:uuid:{id}");
        for bad in [
            "",
            "../../etc",
            "../../etc/passwd",
            "not-a-uuid",
            "00000000-0000-0000-0000-00000000000g",
            upper.as_str(),
            simple.as_str(),
            braced.as_str(),
            urn.as_str(),
        ] {
            assert!(
                matches!(UploadId::parse(bad), Err(BlobError::UploadUnknown)),
                "{bad:?} accepted"
            );
        }
    }
}
