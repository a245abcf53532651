//! Blob uploads: monolithic (`POST ?digest=`), POST + PUT, chunked
//! POST/PATCH/PUT with `Content-Range`, status, cancel, and cross-repository
//! mounts. Bytes go straight from the client into a svc-blob stream.

use super::parse_digest;
use crate::app::{Ctx, Gateway, Reply};
use crate::body::{self, BodyError};
use crate::error::ApiError;
use crate::range::{parse_content_range, upload_range};
use capstan_oci::{Digest, ErrorCode, validate_repository};
use capstan_proto::blob::v1::{
    CommitUploadRequest, PutChunk, StartUploadRequest, StatRequest, UploadRef, UploadState,
    WriteChunk,
};
use capstan_proto::direct::BlobClient;
use capstan_proto::meta::v1::{LinkBlobRequest, MountBlobRequest};
use capstan_runtime::grpc::Transport;
use capstan_runtime::grpc::pool::transport_failure;
use parking_lot::Mutex;
use pingora::protocols::http::ServerSession;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::{mpsc, oneshot};

/// Messages in flight between the body reader and the gRPC stream.
const PIPELINE_DEPTH: usize = 4;

fn upload_location(repo: &str, id: &str) -> String {
    format!("/v2/{repo}/blobs/uploads/{id}")
}

fn blob_created(repo: &str, digest: &str) -> Reply {
    Reply::new(201)
        .header("Location", format!("/v2/{repo}/blobs/{digest}"))
        .header("Docker-Content-Digest", digest.to_string())
}

fn upload_accepted(status: u16, repo: &str, state: &UploadState) -> Reply {
    Reply::new(status)
        .header("Location", upload_location(repo, &state.upload_id))
        .header("Range", upload_range(state.offset))
        .header("Docker-Upload-UUID", state.upload_id.clone())
}

/// The request body as a client stream for one try of a call. Tries
/// share one channel, so a try that fails before taking anything leaves
/// the body whole for the next.
struct BodyStream<T> {
    rx: Arc<Mutex<mpsc::Receiver<T>>>,
    /// Some message of the body was taken by a try.
    taken: Arc<AtomicBool>,
}

impl<T> futures::Stream for BodyStream<T> {
    type Item = T;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<T>> {
        let got = self.rx.lock().poll_recv(cx);
        if matches!(got, std::task::Poll::Ready(Some(_))) {
            self.taken.store(true, Ordering::Relaxed);
        }
        got
    }
}

/// Run a client-streaming call to svc-blob fed by the request body. When
/// reading the body fails (the client went away), the call is cancelled
/// rather than ended, so svc-blob keeps none of the partial bytes. A try
/// that fails on the way to its replica before it took any of the body is
/// made again on another replica (nothing was sent that could be lost).
async fn stream_body<T, R, F>(
    gw: &Gateway,
    session: &mut ServerSession,
    wrap: impl FnMut(bool, bytes::Bytes) -> T,
    mut call: impl FnMut(BlobClient<Transport>, BodyStream<T>) -> F,
) -> Result<R, ApiError>
where
    F: Future<Output = Result<tonic::Response<R>, tonic::Status>>,
{
    let (tx, rx) = mpsc::channel(PIPELINE_DEPTH);
    let (rx, taken) = (Arc::new(Mutex::new(rx)), Arc::new(AtomicBool::new(false)));
    let (abort_tx, abort_rx) = oneshot::channel::<()>();
    let rpc = async move {
        let aborted = async {
            if abort_rx.await.is_err() {
                // Dropped without a signal: the body was read completely.
                std::future::pending::<()>().await;
            }
        };
        let tries = gw.backends.blob_pool().with_failover(
            |client| {
                let body = BodyStream {
                    rx: rx.clone(),
                    taken: taken.clone(),
                };
                call(client, body)
            },
            |s| transport_failure(s) && !taken.load(Ordering::Relaxed),
        );
        tokio::select! {
            biased;
            r = tries => Some(r),
            _ = aborted => None,
        }
    };
    // A second sender keeps the stream open until the abort is seen, so a
    // failed body never looks like a complete one.
    let keep_open = tx.clone();
    let pump = async move {
        match body::pump(session, tx, wrap).await {
            Ok(n) => {
                drop(keep_open);
                (Ok(n), None)
            }
            Err(e) => {
                let _ = abort_tx.send(());
                (Err(e), Some(keep_open))
            }
        }
    };
    let (rpc, (pumped, _keep_open)) = tokio::join!(rpc, pump);
    match rpc {
        Some(Err(status)) => Err(status.into()),
        Some(Ok(response)) => {
            pumped.map_err(body_error)?;
            Ok(response.into_inner())
        }
        None => Err(body_error(pumped.err().unwrap_or(BodyError::Closed))),
    }
}

fn body_error(e: BodyError) -> ApiError {
    match e {
        BodyError::TooLarge(_) => ApiError::code(ErrorCode::SizeInvalid),
        other => ApiError::new(ErrorCode::BlobUploadInvalid, other.to_string()),
    }
}

/// Whether a blob of `from` may be mounted into `repo` as far as bytes go:
/// always when both keep their blobs in one store, else only when `repo`'s
/// store has the blob too (`storage.subPaths`), which it then keeps for
/// the link to come.
async fn bytes_reachable(
    gw: &Gateway,
    ctx: &Ctx,
    from: &str,
    repo: &str,
    digest: &Digest,
) -> Result<bool, ApiError> {
    if gw.storage.store_of(from) == gw.storage.store_of(repo) {
        return Ok(true);
    }
    let stat = gw
        .backends
        .blob_idempotent(|mut blob| {
            let req = ctx.rpc(StatRequest {
                digest: digest.to_string(),
                keep: true,
                repo: repo.into(),
            });
            async move { blob.stat(req).await }
        })
        .await;
    match stat {
        Ok(_) => Ok(true),
        Err(s) => {
            let e = ApiError::from(s);
            if e.code == ErrorCode::BlobUnknown {
                Ok(false)
            } else {
                Err(e)
            }
        }
    }
}

/// `POST /v2/<name>/blobs/uploads/`
pub async fn start(
    gw: &Gateway,
    ctx: &Ctx,
    session: &mut ServerSession,
    repo: &str,
) -> Result<Reply, ApiError> {
    if let Some(mount) = ctx.param("mount") {
        let d = parse_digest(mount)?;
        // Mounting needs read on the source; without it this is a plain
        // upload, which reveals nothing about the source.
        if let Some(from) = ctx.param("from") {
            validate_repository(from).map_err(|_| ApiError::code(ErrorCode::NameInvalid))?;
        }
        if let Some(from) = ctx
            .param("from")
            .filter(|f| ctx.caller.can(f, capstan_oci::access::Action::Read))
            && bytes_reachable(gw, ctx, from, repo, &d).await?
        {
            let r = gw
                .backends
                .meta()
                .mount_blob(ctx.rpc(MountBlobRequest {
                    repo: repo.into(),
                    from: from.into(),
                    digest: d.to_string(),
                }))
                .await?
                .into_inner();
            if r.mounted {
                return Ok(blob_created(repo, &d.to_string()));
            }
        }
        // Not mountable: fall back to a new upload session (202).
    }
    if let Some(digest) = ctx.param("digest") {
        let d = parse_digest(digest)?;
        return monolithic(gw, ctx, session, repo, &d).await;
    }
    let state = gw
        .backends
        .blob_pool()
        .unsent(|mut blob| {
            let req = ctx.rpc(StartUploadRequest { owner: repo.into() });
            async move { blob.start_upload(req).await }
        })
        .await?
        .into_inner();
    Ok(upload_accepted(202, repo, &state))
}

/// The whole blob in the POST body.
async fn monolithic(
    gw: &Gateway,
    ctx: &Ctx,
    session: &mut ServerSession,
    repo: &str,
    digest: &Digest,
) -> Result<Reply, ApiError> {
    let digest_text = digest.to_string();
    let length = body::content_length(session);
    let committed = stream_body(
        gw,
        session,
        |first, data| PutChunk {
            digest: if first {
                digest_text.clone()
            } else {
                String::new()
            },
            data,
            length: if first { length } else { None },
            repo: if first {
                repo.to_string()
            } else {
                String::new()
            },
        },
        |mut client, stream| async move { client.put(ctx.rpc(stream)).await },
    )
    .await?;
    link(gw, ctx, repo, &committed.digest, committed.size).await?;
    Ok(blob_created(repo, &committed.digest))
}

async fn link(
    gw: &Gateway,
    ctx: &Ctx,
    repo: &str,
    digest: &str,
    size: u64,
) -> Result<(), ApiError> {
    // Linking twice links once.
    gw.backends
        .meta_idempotent(|mut meta| {
            let req = ctx.rpc(LinkBlobRequest {
                repo: repo.into(),
                digest: digest.into(),
                size,
            });
            async move { meta.link_blob(req).await }
        })
        .await?;
    Ok(())
}

/// Stream the request body into upload `id`, checking `Content-Range`.
async fn append(
    gw: &Gateway,
    ctx: &Ctx,
    session: &mut ServerSession,
    repo: &str,
    id: &str,
) -> Result<UploadState, ApiError> {
    let content_range = session
        .req_header()
        .headers
        .get("content-range")
        .map(|v| v.to_str().ok().and_then(parse_content_range));
    let expected_offset = match content_range {
        None => None,
        Some(None) => {
            return Err(ApiError::new(
                ErrorCode::RangeInvalid,
                "malformed Content-Range",
            ));
        }
        Some(Some(span)) => {
            if body::content_length(session).is_some_and(|n| n != span.len()) {
                return Err(ApiError::new(
                    ErrorCode::RangeInvalid,
                    "Content-Range does not match Content-Length",
                ));
            }
            Some(span.start)
        }
    };
    let length = body::content_length(session);
    let state = stream_body(
        gw,
        session,
        |first, data| WriteChunk {
            length: if first { length } else { None },
            upload_id: if first { id.to_string() } else { String::new() },
            expected_offset: if first { expected_offset } else { None },
            owner: if first {
                repo.to_string()
            } else {
                String::new()
            },
            data,
        },
        |mut client, stream| async move { client.write_upload(ctx.rpc(stream)).await },
    )
    .await?;
    Ok(state)
}

/// `PATCH /v2/<name>/blobs/uploads/<id>`
pub async fn patch(
    gw: &Gateway,
    ctx: &Ctx,
    session: &mut ServerSession,
    repo: &str,
    id: &str,
) -> Result<Reply, ApiError> {
    let state = append(gw, ctx, session, repo, id).await?;
    Ok(upload_accepted(202, repo, &state))
}

/// `PUT /v2/<name>/blobs/uploads/<id>?digest=` with an optional last chunk.
pub async fn finish(
    gw: &Gateway,
    ctx: &Ctx,
    session: &mut ServerSession,
    repo: &str,
    id: &str,
) -> Result<Reply, ApiError> {
    let d = parse_digest(
        ctx.param("digest")
            .ok_or_else(|| ApiError::new(ErrorCode::DigestInvalid, "digest parameter missing"))?,
    )?;
    if !session.is_body_empty() {
        append(gw, ctx, session, repo, id).await?;
    }
    let committed = gw
        .backends
        .blob_pool()
        .unsent(|mut blob| {
            let req = ctx.rpc(CommitUploadRequest {
                upload_id: id.into(),
                digest: d.to_string(),
                owner: repo.into(),
            });
            async move { blob.commit_upload(req).await }
        })
        .await?
        .into_inner();
    link(gw, ctx, repo, &committed.digest, committed.size).await?;
    Ok(blob_created(repo, &committed.digest))
}

/// `GET /v2/<name>/blobs/uploads/<id>`
pub async fn status(gw: &Gateway, ctx: &Ctx, repo: &str, id: &str) -> Result<Reply, ApiError> {
    let state = gw
        .backends
        .blob_idempotent(|mut blob| {
            let req = ctx.rpc(UploadRef {
                upload_id: id.into(),
                owner: repo.into(),
            });
            async move { blob.upload_status(req).await }
        })
        .await?
        .into_inner();
    Ok(upload_accepted(204, repo, &state))
}

/// `DELETE /v2/<name>/blobs/uploads/<id>`
pub async fn cancel(gw: &Gateway, ctx: &Ctx, repo: &str, id: &str) -> Result<Reply, ApiError> {
    gw.backends
        .blob_pool()
        .unsent(|mut blob| {
            let req = ctx.rpc(UploadRef {
                upload_id: id.into(),
                owner: repo.into(),
            });
            async move { blob.cancel_upload(req).await }
        })
        .await?;
    Ok(Reply::new(204))
}
