//! The S3 calls the store makes, on one bucket under one key prefix, with
//! S3's answers turned into [`BlobError`]s. Keys given to these methods are
//! relative to the prefix.

use crate::BlobError;
use aws_sdk_s3::Client;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream as S3Body;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, Delete, ObjectIdentifier};
use bytes::Bytes;
use std::time::SystemTime;

/// What HEAD tells of an object.
#[derive(Debug, Clone)]
pub(crate) struct Head {
    pub size: u64,
    pub modified: SystemTime,
}

/// One object of a listing.
#[derive(Debug, Clone)]
pub(crate) struct Listed {
    /// Relative to the prefix.
    pub key: String,
    pub modified: SystemTime,
}

/// An object being read.
pub(crate) struct Got {
    pub body: S3Body,
    /// The whole object's size.
    pub total: u64,
    /// Only the range asked for is coming (206).
    pub partial: bool,
}

/// A conditional write that lost: the object changed or exists already.
#[derive(Debug)]
pub(crate) struct PreconditionFailed;

/// A bucket and the key prefix everything lives under.
#[derive(Clone)]
pub(crate) struct Bucket {
    pub client: Client,
    pub bucket: String,
    /// Empty, or ends with `/`.
    prefix: String,
}

impl std::fmt::Debug for Bucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.prefix)
    }
}

/// The status of an S3 answer, if one came.
fn status<E>(e: &SdkError<E>) -> Option<u16> {
    e.raw_response().map(|r| r.status().as_u16())
}

/// `e` as a [`BlobError`]: unreachable stores are [`BlobError::Unavailable`].
pub(crate) fn backend<E>(op: &'static str, key: &str, e: SdkError<E>) -> BlobError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let unreachable = matches!(e, SdkError::DispatchFailure(_) | SdkError::TimeoutError(_))
        || status(&e).is_some_and(|s| s == 503);
    let http = status(&e).map_or(String::new(), |s| format!("HTTP {s}"));
    let message = match e.as_service_error() {
        // HEAD answers carry no body: the status is all there is.
        Some(s) if s.message().is_some() || s.code().is_some() => format!(
            "{} ({}, {http})",
            s.message().unwrap_or("no message"),
            s.code().unwrap_or("no code")
        ),
        Some(_) => format!("{http} with no detail"),
        None => aws_sdk_s3::error::DisplayErrorContext(&e).to_string(),
    };
    if unreachable {
        BlobError::Unavailable(format!("cannot {op} {key}: {message}"))
    } else {
        BlobError::Internal(format!("cannot {op} {key}: {message}"))
    }
}

fn time(t: Option<&aws_sdk_s3::primitives::DateTime>) -> SystemTime {
    t.and_then(|t| SystemTime::try_from(*t).ok())
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// Characters kept as they are in a `CopySource` key.
const COPY_SOURCE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'/')
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

impl Bucket {
    pub fn new(client: Client, bucket: String, prefix: &str) -> Self {
        let prefix = if prefix.is_empty() {
            String::new()
        } else {
            format!("{prefix}/")
        };
        Self {
            client,
            bucket,
            prefix,
        }
    }

    /// The full key of `key`.
    pub fn full(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    fn relative<'a>(&self, full: &'a str) -> Option<&'a str> {
        full.strip_prefix(&self.prefix)
    }

    /// Is the bucket there and reachable?
    pub async fn check(&self) -> Result<(), BlobError> {
        self.client
            .head_bucket()
            .bucket(&self.bucket)
            .send()
            .await
            .map_err(|e| backend("reach bucket", &self.bucket, e))?;
        Ok(())
    }

    pub async fn head(&self, key: &str) -> Result<Option<Head>, BlobError> {
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(self.full(key))
            .send()
            .await
        {
            Ok(o) => Ok(Some(Head {
                size: o.content_length().unwrap_or(0).max(0) as u64,
                modified: time(o.last_modified()),
            })),
            Err(e) if status(&e) == Some(404) => Ok(None),
            Err(e) => Err(backend("look up", key, e)),
        }
    }

    /// The body of `key`, or of `range` (`bytes=a-b`) of it: `None` when
    /// absent, `Err(RangeInvalid)` when S3 finds the range unsatisfiable.
    pub async fn get(&self, key: &str, range: Option<String>) -> Result<Option<Got>, BlobError> {
        match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.full(key))
            .set_range(range)
            .send()
            .await
        {
            Ok(o) => {
                let len = o.content_length().unwrap_or(0).max(0) as u64;
                let whole = o
                    .content_range()
                    .and_then(|r| r.rsplit_once('/'))
                    .and_then(|(_, t)| t.parse().ok());
                Ok(Some(Got {
                    body: o.body,
                    total: whole.unwrap_or(len),
                    partial: whole.is_some(),
                }))
            }
            Err(e) if status(&e) == Some(404) => Ok(None),
            Err(e) if status(&e) == Some(416) => {
                Err(BlobError::RangeInvalid("range not satisfiable".into()))
            }
            Err(e) => Err(backend("read", key, e)),
        }
    }

    /// The whole (small) object `key` and its ETag.
    pub async fn get_small(&self, key: &str) -> Result<Option<(Bytes, String)>, BlobError> {
        match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.full(key))
            .send()
            .await
        {
            Ok(o) => {
                let etag = o.e_tag().unwrap_or_default().to_string();
                let bytes = o
                    .body
                    .collect()
                    .await
                    .map_err(|e| BlobError::Internal(format!("cannot read {key}: {e}")))?
                    .into_bytes();
                Ok(Some((bytes, etag)))
            }
            Err(e) if status(&e) == Some(404) => Ok(None),
            Err(e) => Err(backend("read", key, e)),
        }
    }

    /// Write `body` at `key`; with `if_match`, only over that version, with
    /// `if_none_match`, only where nothing is. Returns the new ETag.
    pub async fn put(
        &self,
        key: &str,
        body: Bytes,
        if_match: Option<&str>,
        if_none_match: bool,
    ) -> Result<Result<String, PreconditionFailed>, BlobError> {
        let len = body.len() as i64;
        let mut req = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(self.full(key))
            .content_length(len)
            .body(S3Body::from(body));
        if let Some(tag) = if_match {
            req = req.if_match(tag);
        }
        if if_none_match {
            req = req.if_none_match("*");
        }
        match req.send().await {
            Ok(o) => Ok(Ok(o.e_tag().unwrap_or_default().to_string())),
            // 409: a concurrent conditional write is in progress (AWS).
            Err(e) if matches!(status(&e), Some(412 | 409)) => Ok(Err(PreconditionFailed)),
            // An If-Match on an object that is gone.
            Err(e) if if_match.is_some() && status(&e) == Some(404) => Ok(Err(PreconditionFailed)),
            Err(e) => Err(backend("write", key, e)),
        }
    }

    /// Write a streamed body of exactly `len` bytes at `key` in one
    /// request (unsigned payload: it cannot be hashed before it is sent).
    pub async fn put_body(&self, key: &str, body: S3Body, len: u64) -> Result<(), BlobError> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(self.full(key))
            .content_length(i64::try_from(len).unwrap_or(i64::MAX))
            .body(body)
            .send()
            .await
            .map_err(|e| backend("write", key, e))?;
        Ok(())
    }

    /// Remove `key` (absent is fine).
    pub async fn delete(&self, key: &str) -> Result<(), BlobError> {
        match self
            .client
            .delete_object()
            .bucket(&self.bucket)
            .key(self.full(key))
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if status(&e) == Some(404) => Ok(()),
            Err(e) => Err(backend("remove", key, e)),
        }
    }

    /// Remove many keys, a thousand per request.
    pub async fn delete_many(&self, keys: &[String]) -> Result<(), BlobError> {
        for batch in keys.chunks(1000) {
            let objects = batch
                .iter()
                .map(|k| {
                    ObjectIdentifier::builder()
                        .key(self.full(k))
                        .build()
                        .map_err(|e| BlobError::Internal(e.to_string()))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let delete = Delete::builder()
                .set_objects(Some(objects))
                .quiet(true)
                .build()
                .map_err(|e| BlobError::Internal(e.to_string()))?;
            let out = self
                .client
                .delete_objects()
                .bucket(&self.bucket)
                .delete(delete)
                .send()
                .await
                .map_err(|e| backend("remove", &batch[0], e))?;
            if let Some(err) = out.errors().first() {
                return Err(BlobError::Internal(format!(
                    "cannot remove {}: {}",
                    err.key().unwrap_or("?"),
                    err.message().unwrap_or("no message")
                )));
            }
        }
        Ok(())
    }

    /// The objects right under `prefix` (a "directory" ending in `/`; not
    /// those under deeper ones) after `start_after` (both relative), in key
    /// order, at most `limit`. Listing with a delimiter lets stores that
    /// keep keys as files walk only that directory.
    pub async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Listed>, BlobError> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        while out.len() < limit {
            let page = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(self.full(prefix))
                .delimiter("/")
                .set_start_after(start_after.map(|s| self.full(s)))
                .set_continuation_token(token.take())
                .max_keys((limit - out.len()).min(1000) as i32)
                .send()
                .await
                .map_err(|e| backend("list", prefix, e))?;
            for o in page.contents() {
                let Some(key) = o.key() else {
                    continue;
                };
                if let Some(rel) = self.relative(key) {
                    out.push(Listed {
                        key: rel.to_string(),
                        modified: time(o.last_modified()),
                    });
                }
            }
            match page.next_continuation_token() {
                Some(t) if page.is_truncated() == Some(true) => token = Some(t.to_string()),
                _ => break,
            }
        }
        out.truncate(limit);
        Ok(out)
    }

    /// The "directories" right under `prefix` (relative, each ending in
    /// `/`), in key order.
    pub async fn dirs(&self, prefix: &str) -> Result<Vec<String>, BlobError> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(self.full(prefix))
                .delimiter("/")
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| backend("list", prefix, e))?;
            for p in page.common_prefixes() {
                if let Some(rel) = p.prefix().and_then(|p| self.relative(p)) {
                    out.push(rel.to_string());
                }
            }
            match page.next_continuation_token() {
                Some(t) if page.is_truncated() == Some(true) => token = Some(t.to_string()),
                _ => break,
            }
        }
        Ok(out)
    }

    pub async fn start_multipart(&self, key: &str) -> Result<String, BlobError> {
        let out = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(self.full(key))
            .send()
            .await
            .map_err(|e| backend("start a multipart upload of", key, e))?;
        out.upload_id()
            .map(str::to_string)
            .ok_or_else(|| BlobError::Internal(format!("no upload id for {key}")))
    }

    pub async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: i32,
        body: Bytes,
    ) -> Result<CompletedPart, BlobError> {
        let len = body.len() as i64;
        let out = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(self.full(key))
            .upload_id(upload_id)
            .part_number(number)
            .content_length(len)
            .body(S3Body::from(body))
            .send()
            .await
            .map_err(|e| backend("upload a part of", key, e))?;
        Ok(CompletedPart::builder()
            .part_number(number)
            .set_e_tag(out.e_tag().map(str::to_string))
            .build())
    }

    /// Part `number` of `key` is the byte range `[start, end)` of `source`.
    pub async fn copy_part(
        &self,
        key: &str,
        upload_id: &str,
        number: i32,
        source: &str,
        start: u64,
        end: u64,
    ) -> Result<CompletedPart, BlobError> {
        let out = self
            .client
            .upload_part_copy()
            .bucket(&self.bucket)
            .key(self.full(key))
            .upload_id(upload_id)
            .part_number(number)
            .copy_source(self.copy_source(source))
            .copy_source_range(format!("bytes={start}-{}", end - 1))
            .send()
            .await
            .map_err(|e| backend("copy a part of", source, e))?;
        Ok(CompletedPart::builder()
            .part_number(number)
            .set_e_tag(
                out.copy_part_result()
                    .and_then(|r| r.e_tag())
                    .map(str::to_string),
            )
            .build())
    }

    pub async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: Vec<CompletedPart>,
    ) -> Result<(), BlobError> {
        self.client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(self.full(key))
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| backend("complete the multipart upload of", key, e))?;
        Ok(())
    }

    /// Abandon a multipart upload; failures are only logged (a bucket
    /// lifecycle rule removes what is left).
    pub async fn abort_multipart(&self, key: &str, upload_id: &str) {
        if let Err(e) = self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(self.full(key))
            .upload_id(upload_id)
            .send()
            .await
        {
            tracing::warn!(key, error = %backend("abort the multipart upload of", key, e),
                "multipart upload left behind");
        }
    }

    /// Copy `source` to `key` in one request (objects up to 5 GiB).
    pub async fn copy(&self, source: &str, key: &str) -> Result<(), BlobError> {
        self.client
            .copy_object()
            .bucket(&self.bucket)
            .key(self.full(key))
            .copy_source(self.copy_source(source))
            .send()
            .await
            .map_err(|e| backend("copy", source, e))?;
        Ok(())
    }

    fn copy_source(&self, key: &str) -> String {
        let full = self.full(key);
        format!(
            "{}/{}",
            self.bucket,
            percent_encoding::utf8_percent_encode(&full, COPY_SOURCE)
        )
    }

    /// A URL that lets whoever holds it GET `key` for `ttl`.
    pub async fn presign_get(
        &self,
        key: &str,
        ttl: std::time::Duration,
    ) -> Result<String, BlobError> {
        let config = aws_sdk_s3::presigning::PresigningConfig::expires_in(ttl)
            .map_err(|e| BlobError::Internal(e.to_string()))?;
        let req = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.full(key))
            .presigned(config)
            .await
            .map_err(|e| backend("presign", key, e))?;
        Ok(req.uri().to_string())
    }
}
