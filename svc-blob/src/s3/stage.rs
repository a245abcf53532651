//! Streaming bytes into one S3 object without holding them: up to one part
//! is buffered while the previous one uploads, so an upload holds at most
//! two parts in memory whatever the blob's size. Nothing becomes visible
//! until [`Staged::finish`]: a small body waits in memory, a large one as
//! an incomplete multipart upload, so that the caller can check the bytes'
//! digest first.

use super::bucket::Bucket;
use crate::{BlobError, ByteStream};
use aws_sdk_s3::types::CompletedPart;
use bytes::{Bytes, BytesMut};
use futures::StreamExt as _;
use tokio::task::JoinHandle;

/// S3's limit on the parts of one multipart upload.
pub(crate) const MAX_PARTS: u64 = 10_000;
/// The largest part (and the largest single-request copy) S3 accepts.
pub(crate) const MAX_PART_BYTES: u64 = 5 * 1024 * 1024 * 1024;
/// The smallest part for a body whose length is not known: 156 GiB fit.
pub(crate) const UNKNOWN_LENGTH_PART_BYTES: u64 = 16 * 1024 * 1024;
/// The largest part staged in memory (two may be held per upload): blobs
/// up to 593 GiB fit, and a client announcing a huge length cannot make an
/// upload hold more than this twice.
pub(crate) const MAX_STAGED_PART_BYTES: u64 = 64 * 1024 * 1024;
const MIB: u64 = 1024 * 1024;
/// Parts kept spare under S3's limit, for a body a little longer than
/// announced.
const SPARE_PARTS: u64 = 500;

/// The part size of a server-side copy of `size` bytes (nothing is held in
/// memory): at least `min`, within S3's limits.
pub(crate) fn copy_part_size(min: u64, size: u64) -> u64 {
    let needed = size.div_ceil(MAX_PARTS - SPARE_PARTS).div_ceil(MIB) * MIB;
    min.max(needed).min(MAX_PART_BYTES)
}

/// The part size for staging a body of `length` bytes (`None`: not known),
/// at least `min`: every part but the last has this size (stores such as
/// R2 require equal parts), and a known length fits in fewer than
/// [`MAX_PARTS`] parts. TOO_LARGE beyond what parts of
/// [`MAX_STAGED_PART_BYTES`] can carry.
pub(crate) fn part_size(min: u64, length: Option<u64>) -> Result<u64, BlobError> {
    let needed = match length {
        Some(len) => len.div_ceil(MAX_PARTS - SPARE_PARTS).div_ceil(MIB) * MIB,
        None => UNKNOWN_LENGTH_PART_BYTES,
    };
    if needed > MAX_STAGED_PART_BYTES {
        return Err(BlobError::TooLarge(format!(
            "a blob of {} bytes is larger than this store takes in one upload ({} bytes)",
            length.unwrap_or(0),
            MAX_STAGED_PART_BYTES * (MAX_PARTS - SPARE_PARTS)
        )));
    }
    Ok(min.max(needed).min(MAX_STAGED_PART_BYTES))
}

/// A multipart upload that is aborted if it is dropped before it was
/// completed: a request whose client went away, an error on the way.
pub(crate) struct Pending {
    bucket: Bucket,
    key: String,
    upload_id: String,
    completed: bool,
}

impl Pending {
    pub(crate) fn new(bucket: &Bucket, key: &str, upload_id: String) -> Self {
        Self {
            bucket: bucket.clone(),
            key: key.to_string(),
            upload_id,
            completed: false,
        }
    }

    pub(crate) fn id(&self) -> &str {
        &self.upload_id
    }

    /// Complete it with `parts`; on failure it is aborted.
    pub(crate) async fn complete(mut self, parts: Vec<CompletedPart>) -> Result<(), BlobError> {
        self.bucket
            .complete_multipart(&self.key, &self.upload_id, parts)
            .await?;
        self.completed = true;
        Ok(())
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if self.completed {
            return;
        }
        let (bucket, key, id) = (
            self.bucket.clone(),
            std::mem::take(&mut self.key),
            std::mem::take(&mut self.upload_id),
        );
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move { bucket.abort_multipart(&key, &id).await });
        }
    }
}

enum Kind {
    Small(Bytes),
    Multipart {
        pending: Pending,
        parts: Vec<CompletedPart>,
    },
}

/// Bytes written to `key` but not visible there yet.
pub(crate) struct Staged {
    key: String,
    kind: Kind,
    /// How many bytes were staged.
    pub len: u64,
}

impl std::fmt::Debug for Staged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Staged")
            .field("key", &self.key)
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl Staged {
    /// Make the bytes visible at their key.
    pub async fn finish(self, bucket: &Bucket) -> Result<(), BlobError> {
        match self.kind {
            Kind::Small(body) => bucket
                .put(&self.key, body, None, false)
                .await?
                .map_err(|_| {
                    BlobError::Internal(format!("unconditional write of {} refused", self.key))
                })?,
            Kind::Multipart { pending, parts } => return pending.complete(parts).await,
        };
        Ok(())
    }

    /// Whether the object will be a multipart upload's: S3 dates those
    /// from the upload's start, not its completion.
    pub fn is_multipart(&self) -> bool {
        matches!(self.kind, Kind::Multipart { .. })
    }

    /// Drop the bytes (a multipart upload is aborted).
    pub fn discard(self) {}
}

/// Write `data` towards `key` in parts of `part` bytes, showing every
/// chunk to `each` (a hasher) on the way. On any failure nothing is left.
pub(crate) async fn stage(
    bucket: &Bucket,
    key: &str,
    part: u64,
    mut data: ByteStream,
    mut each: impl FnMut(&[u8]) + Send,
) -> Result<Staged, BlobError> {
    let part = usize::try_from(part).unwrap_or(usize::MAX);
    let mut buf = BytesMut::new();
    let mut upload: Option<Pending> = None;
    let mut parts: Vec<CompletedPart> = Vec::new();
    let mut inflight: Option<JoinHandle<Result<CompletedPart, BlobError>>> = None;
    let mut len = 0u64;
    let result: Result<(), BlobError> = async {
        while let Some(chunk) = data.next().await {
            let mut chunk = chunk?;
            each(&chunk);
            len += chunk.len() as u64;
            while !chunk.is_empty() {
                let take = (part - buf.len()).min(chunk.len());
                buf.extend_from_slice(&chunk.split_to(take));
                if buf.len() < part {
                    continue;
                }
                let id = match &upload {
                    Some(p) => p.id().to_string(),
                    None => {
                        let id = bucket.start_multipart(key).await?;
                        upload = Some(Pending::new(bucket, key, id.clone()));
                        id
                    }
                };
                if let Some(previous) = inflight.take() {
                    parts.push(joined(previous.await)?);
                }
                let number = parts.len() as u64 + 1;
                if number >= MAX_PARTS {
                    return Err(BlobError::TooLarge(format!(
                        "more than {MAX_PARTS} parts of {part} bytes: send the blob's \
                         length (Content-Length) so that parts can be sized for it"
                    )));
                }
                let body = std::mem::replace(&mut buf, BytesMut::with_capacity(part)).freeze();
                let (b, k) = (bucket.clone(), key.to_string());
                inflight = Some(tokio::spawn(async move {
                    b.upload_part(&k, &id, number as i32, body).await
                }));
            }
        }
        if let Some(previous) = inflight.take() {
            parts.push(joined(previous.await)?);
        }
        if let Some(p) = &upload
            && !buf.is_empty()
        {
            let number = parts.len() as i32 + 1;
            let body = std::mem::take(&mut buf).freeze();
            parts.push(bucket.upload_part(key, p.id(), number, body).await?);
        }
        Ok(())
    }
    .await;
    if let Some(h) = inflight.take() {
        // Stopped before the upload is aborted (when `upload` drops), so
        // that no part lands after the abort.
        h.abort();
        let _ = h.await;
    }
    match (result, upload) {
        (Ok(()), None) => Ok(Staged {
            key: key.to_string(),
            kind: Kind::Small(buf.freeze()),
            len,
        }),
        (Ok(()), Some(pending)) => Ok(Staged {
            key: key.to_string(),
            kind: Kind::Multipart { pending, parts },
            len,
        }),
        (Err(e), _) => Err(e),
    }
}

/// Write `data`, announced as `length` bytes, to `key` in one request as
/// it arrives (nothing is buffered), showing every chunk to `each` on the
/// way. S3 never keeps part of an object: a stream that fails, or that
/// brings fewer bytes than announced, leaves nothing. Returns the bytes
/// written.
pub(crate) async fn put_streamed(
    bucket: &Bucket,
    key: &str,
    length: u64,
    mut data: ByteStream,
    mut each: impl FnMut(&[u8]) + Send,
) -> Result<u64, BlobError> {
    type Frame = http_body::Frame<Bytes>;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame, BlobError>>(4);
    let body = http_body_util::StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    let put = bucket.put_body(
        key,
        aws_sdk_s3::primitives::ByteStream::from_body_1_x(body),
        length,
    );
    let pump = async move {
        let mut sent = 0u64;
        // Failing the body fails the request, so S3 stores nothing.
        let fail = |e: BlobError| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(Err(BlobError::Stream(e.to_string()))).await;
                Err::<u64, _>(e)
            }
        };
        while let Some(chunk) = data.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => return fail(e).await,
            };
            sent += chunk.len() as u64;
            if sent > length {
                return fail(BlobError::Stream(format!(
                    "the body holds more than the {length} bytes announced"
                )))
                .await;
            }
            each(&chunk);
            if tx.send(Ok(Frame::data(chunk))).await.is_err() {
                // The request ended (it failed): its error says why.
                return Ok(sent);
            }
        }
        if sent < length {
            return fail(BlobError::Stream(format!(
                "the body ended after {sent} of the {length} bytes announced"
            )))
            .await;
        }
        Ok(sent)
    };
    let (pumped, put) = tokio::join!(pump, put);
    let sent = pumped?;
    put?;
    Ok(sent)
}

fn joined<T>(r: Result<Result<T, BlobError>, tokio::task::JoinError>) -> Result<T, BlobError> {
    r.map_err(|e| BlobError::Internal(format!("part upload task failed: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_fit_the_limit_and_stay_equal() {
        let min = 8 * MIB;
        assert_eq!(part_size(min, Some(0)).unwrap(), min);
        assert_eq!(part_size(min, Some(10 * MIB)).unwrap(), min);
        assert_eq!(part_size(min, None).unwrap(), UNKNOWN_LENGTH_PART_BYTES);
        assert_eq!(part_size(32 * MIB, None).unwrap(), 32 * MIB);
        // distribution#4572: a 100 GiB layer with 8 MiB parts needs 12,800.
        for gib in [70u64, 100, 500] {
            let len = gib * 1024 * MIB;
            let p = part_size(min, Some(len)).unwrap();
            assert!(len.div_ceil(p) < MAX_PARTS, "{gib} GiB in parts of {p}");
            assert_eq!(p % MIB, 0);
        }
        // A huge announced length cannot make an upload hold huge parts.
        for huge in [1000 * 1024 * MIB, u64::MAX] {
            assert!(matches!(
                part_size(min, Some(huge)),
                Err(BlobError::TooLarge(_))
            ));
        }
        // Server-side copies hold nothing: their parts may be larger, up to
        // S3's largest.
        let tib5 = 5 * 1024 * 1024 * MIB;
        assert!(tib5.div_ceil(copy_part_size(min, tib5)) < MAX_PARTS);
        assert_eq!(copy_part_size(min, u64::MAX), MAX_PART_BYTES);
    }
}
