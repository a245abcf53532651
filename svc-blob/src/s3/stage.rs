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
const MIB: u64 = 1024 * 1024;

/// The part size for a body of `length` bytes (`None`: not known), at least
/// `min`: every part but the last has this size (stores such as R2 require
/// equal parts), and a known length fits in fewer than [`MAX_PARTS`] parts,
/// with room to spare for a body a little longer than announced.
pub(crate) fn part_size(min: u64, length: Option<u64>) -> u64 {
    let needed = match length {
        Some(len) => len.div_ceil(MAX_PARTS - 500).div_ceil(MIB) * MIB,
        None => UNKNOWN_LENGTH_PART_BYTES,
    };
    min.max(needed).min(MAX_PART_BYTES)
}

enum Kind {
    Small(Bytes),
    Multipart {
        upload_id: String,
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
            Kind::Multipart { upload_id, parts } => {
                return match bucket
                    .complete_multipart(&self.key, &upload_id, parts)
                    .await
                {
                    Ok(()) => Ok(()),
                    Err(e) => {
                        bucket.abort_multipart(&self.key, &upload_id).await;
                        Err(e)
                    }
                };
            }
        };
        Ok(())
    }

    /// Drop the bytes.
    pub async fn discard(self, bucket: &Bucket) {
        if let Kind::Multipart { upload_id, .. } = self.kind {
            bucket.abort_multipart(&self.key, &upload_id).await;
        }
    }
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
    let mut upload: Option<String> = None;
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
                    Some(id) => id.clone(),
                    None => {
                        let id = bucket.start_multipart(key).await?;
                        upload = Some(id.clone());
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
        if let Some(id) = &upload
            && !buf.is_empty()
        {
            let number = parts.len() as i32 + 1;
            let body = std::mem::take(&mut buf).freeze();
            parts.push(bucket.upload_part(key, id, number, body).await?);
        }
        Ok(())
    }
    .await;
    if let Some(h) = inflight.take() {
        h.abort();
    }
    match (result, upload) {
        (Ok(()), None) => Ok(Staged {
            key: key.to_string(),
            kind: Kind::Small(buf.freeze()),
            len,
        }),
        (Ok(()), Some(upload_id)) => Ok(Staged {
            key: key.to_string(),
            kind: Kind::Multipart { upload_id, parts },
            len,
        }),
        (Err(e), upload) => {
            if let Some(id) = upload {
                bucket.abort_multipart(key, &id).await;
            }
            Err(e)
        }
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
        assert_eq!(part_size(min, Some(0)), min);
        assert_eq!(part_size(min, Some(10 * MIB)), min);
        assert_eq!(part_size(min, None), UNKNOWN_LENGTH_PART_BYTES);
        assert_eq!(part_size(32 * MIB, None), 32 * MIB);
        // distribution#4572: a 100 GiB layer with 8 MiB parts needs 12,800.
        for gib in [70u64, 100, 1000, 5000] {
            let len = gib * 1024 * MIB;
            let p = part_size(min, Some(len));
            assert!(len.div_ceil(p) < MAX_PARTS, "{gib} GiB in parts of {p}");
            assert_eq!(p % MIB, 0);
        }
        // Never above S3's largest part.
        assert_eq!(part_size(min, Some(u64::MAX)), MAX_PART_BYTES);
    }
}
