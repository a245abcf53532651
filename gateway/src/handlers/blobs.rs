//! Blob reads (HEAD, GET with single ranges) and deletes. A blob is served
//! through a repository only when svc-meta links it to that repository.

use super::parse_digest;
use crate::app::{Body, Ctx, Gateway, Reply};
use crate::error::ApiError;
use crate::range::{RangeOutcome, parse_range};
use capstan_oci::ErrorCode;
use capstan_proto::blob::v1::{LocateRequest, ReadRequest};
use capstan_proto::meta::v1::{StatBlobRequest, UnlinkBlobRequest};
use capstan_proto::sync::v1::FetchBlobRequest;
use capstan_runtime::grpc::Pool;
use pingora::protocols::http::ServerSession;

/// How long a redirect to the storage backend stays good
/// (`storage.redirectBlobURL`): long enough for a slow client to start,
/// short enough that a leaked URL soon stops working.
pub const REDIRECT_TTL: std::time::Duration = std::time::Duration::from_secs(20 * 60);

pub async fn get(
    gw: &Gateway,
    ctx: &Ctx,
    session: &ServerSession,
    repo: &str,
    digest: &str,
) -> Result<Reply, ApiError> {
    let d = parse_digest(digest)?;
    let stat = || {
        gw.backends.meta_idempotent(|mut meta| {
            let req = ctx.rpc(StatBlobRequest {
                repo: repo.into(),
                digest: d.to_string(),
            });
            async move { meta.stat_blob(req).await }
        })
    };
    let size = match stat().await {
        Ok(r) => r.into_inner().size,
        Err(status) => {
            let e = ApiError::from(status);
            let Some(mut sync) = gw
                .sync
                .as_ref()
                .map(Pool::client)
                .filter(|_| e.code == ErrorCode::BlobUnknown)
            else {
                return Err(e);
            };
            // Pull-through: the bytes stream from the upstream while stored.
            let fetched = sync
                .fetch_blob(ctx.rpc(FetchBlobRequest {
                    repo: repo.into(),
                    digest: d.to_string(),
                }))
                .await
                .map_err(|s| super::pull_through_error(e, s))?;
            let fetched_size = fetched
                .metadata()
                .get("blob-size")
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
            match fetched_size {
                // Another fetch stored it meanwhile: read it as usual.
                None => stat().await?.into_inner().size,
                Some(len) => {
                    let mut reply = Reply::new(200)
                        .header("Content-Type", "application/octet-stream")
                        .header("Docker-Content-Digest", d.to_string());
                    reply.body = if ctx.is_head {
                        Body::Head { len }
                    } else {
                        Body::Stream {
                            stream: fetched.into_inner(),
                            len,
                        }
                    };
                    return Ok(reply);
                }
            }
        }
    };
    let range_header = session.req_header().headers.get("range");
    if let Some(ttl) = gw.redirect_blobs
        && !ctx.is_head
        && range_header.is_none()
        && size > 0
    {
        // The client fetches the bytes from the backend itself; a backend
        // without such URLs answers none, and the bytes come through here.
        let located = gw
            .backends
            .blob_idempotent(|mut blob| {
                let req = ctx.rpc(LocateRequest {
                    digest: d.to_string(),
                    ttl_seconds: ttl.as_secs(),
                    repo: repo.into(),
                });
                async move { blob.locate(req).await }
            })
            .await?
            .into_inner();
        if !located.url.is_empty() {
            return Ok(Reply::new(307)
                .header("Location", located.url)
                .header("Docker-Content-Digest", d.to_string()));
        }
    }
    let range = range_header
        .and_then(|v| v.to_str().ok())
        .map(|h| parse_range(h, size))
        .unwrap_or(RangeOutcome::Full);
    let (status, offset, len) = match range {
        RangeOutcome::Full => (200, 0, size),
        RangeOutcome::Partial(span) => (206, span.start, span.len()),
        RangeOutcome::Unsatisfiable => {
            return Err(ApiError::code(ErrorCode::RangeInvalid)
                .with_header("Content-Range", format!("bytes */{size}")));
        }
    };
    let mut reply = Reply::new(status)
        .header("Content-Type", "application/octet-stream")
        .header("Docker-Content-Digest", d.to_string())
        .header("Accept-Ranges", "bytes");
    if status == 206 {
        reply = reply.header(
            "Content-Range",
            format!("bytes {offset}-{}/{size}", offset + len - 1),
        );
    }
    if ctx.is_head || len == 0 {
        reply.body = Body::Head { len };
        return Ok(reply);
    }
    // Opened on any replica, continued on another if it breaks.
    let (span, trace) = (ctx.span.clone(), ctx.trace_id.clone());
    let stream = crate::resume::read(
        gw.backends.clone(),
        ReadRequest {
            digest: d.to_string(),
            offset,
            length: len,
            repo: repo.into(),
        },
        len,
        move |r| crate::app::traced(&span, &trace, r),
    )
    .await?;
    reply.body = Body::Stream { stream, len };
    Ok(reply)
}

pub async fn delete(gw: &Gateway, ctx: &Ctx, repo: &str, digest: &str) -> Result<Reply, ApiError> {
    let d = parse_digest(digest)?;
    gw.backends
        .meta_pool()
        .unsent(|mut meta| {
            let req = ctx.rpc(UnlinkBlobRequest {
                repo: repo.into(),
                digest: d.to_string(),
            });
            async move { meta.unlink_blob(req).await }
        })
        .await?;
    Ok(Reply::new(202).header("Docker-Content-Digest", d.to_string()))
}
