//! The `capstan.blob.v1.BlobService` gRPC face of the role's [`Stores`]:
//! each request goes to the store its repository routes to. Requests are
//! validated here (digests, upload ids, stream framing); every failure
//! leaves through [`reject`], the one place a [`BlobError`] becomes a
//! `tonic::Status` carrying a [`ServiceError`].

use crate::{BlobError, BlobStore, ByteStream, Stores, UploadId};
use bytes::Bytes;
use capstan_oci::{Digest, ErrorCode};
use capstan_proto::ServiceError;
use capstan_proto::blob::v1::blob_service_server::{BlobService, BlobServiceServer};
use capstan_proto::blob::v1::{
    BlobMetricsRequest, BlobMetricsResponse, CancelUploadResponse, CommitResponse,
    CommitUploadRequest, DeleteRequest, DeleteResponse, LocateRequest, LocateResponse, PutChunk,
    ReadChunk, ReadRequest, StartUploadRequest, StatRequest, StatResponse, UploadRef, UploadState,
    WriteChunk,
};
use capstan_proto::bulk;
use capstan_proto::direct::{BlobStreams, MessageStream};
use capstan_runtime::grpc::{self, MAX_MESSAGE_BYTES};
use futures::stream::{self, BoxStream};
use futures::{Stream, StreamExt as _, future};
use std::sync::Arc;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument as _;

/// BlobService over shared stores.
#[derive(Clone)]
pub struct BlobGrpc {
    stores: Stores,
}

impl BlobGrpc {
    /// The service over `stores` (or one store for every repository).
    pub fn new(stores: impl Into<Stores>) -> Self {
        Self {
            stores: stores.into(),
        }
    }

    /// The store holding `repo`'s blobs.
    fn store(&self, repo: &str) -> &Arc<dyn BlobStore> {
        self.stores.for_repo(repo)
    }
}

/// The generated server for `stores`, with Capstan's message limits, ready
/// to add to a tonic router (or to embed in another process).
pub fn grpc_service(stores: impl Into<Stores>) -> BlobServiceServer<BlobGrpc> {
    BlobServiceServer::new(BlobGrpc::new(stores))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

/// `routes` plus the byte-carrying calls without message framing
/// ([`capstan_proto::bulk`]), served from `stores` like their typed forms.
pub fn add_bytes_routes(routes: tonic::service::Routes, stores: Stores) -> tonic::service::Routes {
    let svc = BlobGrpc::new(stores);
    let (put, write) = (svc.clone(), svc.clone());
    let read = move |req: http::Request<axum::body::Body>| {
        let svc = svc.clone();
        async move {
            let (parts, body) = req.into_parts();
            let read = match bulk::request(body).await {
                Ok(r) => svc.read_stream(with_headers(r, parts.headers)).await,
                Err(status) => Err(status),
            };
            bulk::response(read)
        }
    };
    let put = move |req: http::Request<axum::body::Body>| {
        let svc = put.clone();
        async move {
            let body = req.into_body();
            let r = match bulk::messages::<PutChunk, _>(body).await {
                Ok(m) => svc.put_stream(m).await.map_err(|e| reject("put", e)),
                Err(status) => Err(status),
            };
            bulk::reply(r.map(Response::new))
        }
    };
    let write = move |req: http::Request<axum::body::Body>| {
        let svc = write.clone();
        async move {
            let body = req.into_body();
            let r = match bulk::messages::<WriteChunk, _>(body).await {
                Ok(m) => svc
                    .write_stream(m)
                    .await
                    .map_err(|e| reject("write_upload", e)),
                Err(status) => Err(status),
            };
            bulk::reply(r.map(Response::new))
        }
    };
    let router = routes
        .into_axum_router()
        .route(bulk::READ_PATH, axum::routing::post(read))
        .route(bulk::PUT_PATH, axum::routing::post(put))
        .route(bulk::WRITE_UPLOAD_PATH, axum::routing::post(write));
    tonic::service::Routes::from(router)
}

/// `message` as a request with `headers` as its metadata.
fn with_headers<T>(message: T, headers: http::HeaderMap) -> Request<T> {
    let mut r = Request::new(message);
    *r.metadata_mut() = tonic::metadata::MetadataMap::from_headers(headers);
    r
}

/// The status for a failed `rpc`; internal failures are logged at warn.
fn reject(rpc: &'static str, e: BlobError) -> Status {
    if e.code() == ErrorCode::Internal {
        tracing::warn!(rpc, error = %e, "blob request failed");
    } else {
        tracing::debug!(rpc, error = %e, "blob request rejected");
    }
    ServiceError::from(e).into()
}

fn parse_digest(s: &str) -> Result<Digest, BlobError> {
    Digest::parse(s).map_err(|e| BlobError::DigestInvalid(e.to_string()))
}

fn stream_failed(s: &Status) -> BlobError {
    BlobError::Stream(s.message().to_string())
}

/// The data of `first` followed by that of every later message, each later
/// message checked by `data`.
fn byte_stream<M: Send + 'static>(
    first: Bytes,
    rest: impl Stream<Item = Result<M, Status>> + Send + 'static,
    data: impl Fn(M) -> Result<Bytes, BlobError> + Send + 'static,
) -> ByteStream {
    stream::once(future::ready(Ok(first)))
        .chain(rest.map(move |m| match m {
            Ok(m) => data(m),
            Err(s) => Err(stream_failed(&s)),
        }))
        .boxed()
}

impl BlobGrpc {
    /// `Read`, from the network or in-process alike.
    async fn read_stream(
        &self,
        req: Request<ReadRequest>,
    ) -> Result<Response<MessageStream<ReadChunk>>, Status> {
        let r = req.into_inner();
        let run = async {
            let d = parse_digest(&r.digest)?;
            self.store(&r.repo).read(&d, r.offset, r.length).await
        };
        let chunks = run.await.map_err(|e| reject("read", e))?;
        let out = chunks
            .map(|c| {
                c.map(|data| ReadChunk { data })
                    .map_err(|e| reject("read", e))
            })
            .boxed();
        Ok(Response::new(out))
    }

    /// `Put`, from the network or in-process alike.
    async fn put_stream<S>(&self, mut rx: S) -> Result<CommitResponse, BlobError>
    where
        S: Stream<Item = Result<PutChunk, Status>> + Send + Unpin + 'static,
    {
        let first = rx
            .next()
            .await
            .transpose()
            .map_err(|s| stream_failed(&s))?
            .ok_or_else(|| BlobError::DigestInvalid("empty stream: no digest".into()))?;
        if first.digest.is_empty() {
            return Err(BlobError::DigestInvalid(
                "the first message must carry the digest".into(),
            ));
        }
        let digest = parse_digest(&first.digest)?;
        let length = first.length;
        let store = self.store(&first.repo).clone();
        let named = first.digest;
        let data = byte_stream(first.data, rx, move |m: PutChunk| {
            if m.digest.is_empty() || m.digest == named {
                Ok(m.data)
            } else {
                Err(BlobError::DigestInvalid(
                    "the digest changed within the stream".into(),
                ))
            }
        });
        let size = store.put_with_length(&digest, length, data).await?;
        Ok(CommitResponse {
            digest: digest.to_string(),
            size,
        })
    }

    /// An upload is visible only to the owner it was started for: to anyone
    /// else it is unknown.
    async fn check_owner(&self, id: &UploadId, owner: &str) -> Result<(), BlobError> {
        if self.store(owner).upload_owner(id).await? == owner {
            Ok(())
        } else {
            Err(BlobError::UploadUnknown)
        }
    }

    /// `WriteUpload`, from the network or in-process alike.
    async fn write_stream<S>(&self, mut rx: S) -> Result<UploadState, BlobError>
    where
        S: Stream<Item = Result<WriteChunk, Status>> + Send + Unpin + 'static,
    {
        let first = rx
            .next()
            .await
            .transpose()
            .map_err(|s| stream_failed(&s))?
            .ok_or(BlobError::UploadUnknown)?;
        let id = UploadId::parse(&first.upload_id)?;
        self.check_owner(&id, &first.owner).await?;
        let named = first.upload_id;
        let length = first.length;
        // Later messages may repeat the id; their expected_offset is ignored.
        let data = byte_stream(first.data, rx, move |m: WriteChunk| {
            if m.upload_id.is_empty() || m.upload_id == named {
                Ok(m.data)
            } else {
                Err(BlobError::Stream(
                    "the upload id changed within the stream".into(),
                ))
            }
        });
        let expected = first.expected_offset;
        let offset = self
            .store(&first.owner)
            .append_with_length(&id, expected, length, data)
            .await?;
        Ok(UploadState {
            upload_id: id.to_string(),
            offset,
        })
    }
}

#[tonic::async_trait]
impl BlobService for BlobGrpc {
    async fn stat(&self, req: Request<StatRequest>) -> Result<Response<StatResponse>, Status> {
        let run = async {
            let r = req.get_ref();
            let d = parse_digest(&r.digest)?;
            if r.keep {
                self.store(&r.repo).keep(&d).await
            } else {
                self.store(&r.repo).stat(&d).await
            }
        };
        let size = run.await.map_err(|e| reject("stat", e))?;
        Ok(Response::new(StatResponse { size }))
    }

    type ReadStream = BoxStream<'static, Result<ReadChunk, Status>>;

    async fn read(&self, req: Request<ReadRequest>) -> Result<Response<Self::ReadStream>, Status> {
        self.read_stream(req).await
    }

    async fn put(
        &self,
        req: Request<Streaming<PutChunk>>,
    ) -> Result<Response<CommitResponse>, Status> {
        let r = self
            .put_stream(req.into_inner())
            .await
            .map_err(|e| reject("put", e))?;
        Ok(Response::new(r))
    }

    async fn start_upload(
        &self,
        req: Request<StartUploadRequest>,
    ) -> Result<Response<UploadState>, Status> {
        let owner = &req.get_ref().owner;
        let id = self
            .store(owner)
            .start_upload(owner)
            .await
            .map_err(|e| reject("start_upload", e))?;
        Ok(Response::new(UploadState {
            upload_id: id.to_string(),
            offset: 0,
        }))
    }

    async fn write_upload(
        &self,
        req: Request<Streaming<WriteChunk>>,
    ) -> Result<Response<UploadState>, Status> {
        let r = self
            .write_stream(req.into_inner())
            .await
            .map_err(|e| reject("write_upload", e))?;
        Ok(Response::new(r))
    }

    async fn upload_status(
        &self,
        req: Request<UploadRef>,
    ) -> Result<Response<UploadState>, Status> {
        let run = async {
            let id = UploadId::parse(&req.get_ref().upload_id)?;
            self.check_owner(&id, &req.get_ref().owner).await?;
            let offset = self.store(&req.get_ref().owner).upload_status(&id).await?;
            Ok::<_, BlobError>(UploadState {
                upload_id: id.to_string(),
                offset,
            })
        };
        let r = run.await.map_err(|e| reject("upload_status", e))?;
        Ok(Response::new(r))
    }

    async fn commit_upload(
        &self,
        req: Request<CommitUploadRequest>,
    ) -> Result<Response<CommitResponse>, Status> {
        let r = req.get_ref();
        let run = async {
            let id = UploadId::parse(&r.upload_id)?;
            self.check_owner(&id, &r.owner).await?;
            let d = parse_digest(&r.digest)?;
            let size = self.store(&r.owner).commit(&id, &d).await?;
            Ok::<_, BlobError>(CommitResponse {
                digest: d.to_string(),
                size,
            })
        };
        let r = run.await.map_err(|e| reject("commit_upload", e))?;
        Ok(Response::new(r))
    }

    async fn cancel_upload(
        &self,
        req: Request<UploadRef>,
    ) -> Result<Response<CancelUploadResponse>, Status> {
        let run = async {
            let id = UploadId::parse(&req.get_ref().upload_id)?;
            self.check_owner(&id, &req.get_ref().owner).await?;
            self.store(&req.get_ref().owner).cancel(&id).await
        };
        run.await.map_err(|e| reject("cancel_upload", e))?;
        Ok(Response::new(CancelUploadResponse {}))
    }

    async fn metrics(
        &self,
        _req: Request<BlobMetricsRequest>,
    ) -> Result<Response<BlobMetricsResponse>, Status> {
        Ok(Response::new(counters(&self.stores)))
    }

    async fn delete(
        &self,
        req: Request<DeleteRequest>,
    ) -> Result<Response<DeleteResponse>, Status> {
        let run = async {
            let r = req.get_ref();
            let d = parse_digest(&r.digest)?;
            self.store(&r.repo).delete(&d).await
        };
        let deleted = run.await.map_err(|e| reject("delete", e))?;
        Ok(Response::new(DeleteResponse { deleted }))
    }

    async fn locate(
        &self,
        req: Request<LocateRequest>,
    ) -> Result<Response<LocateResponse>, Status> {
        let run = async {
            let r = req.get_ref();
            let d = parse_digest(&r.digest)?;
            let ttl = std::time::Duration::from_secs(r.ttl_seconds.clamp(1, 7 * 24 * 3600));
            let store = self.store(&r.repo);
            let size = store.stat(&d).await?;
            let url = store.presign(&d, ttl).await?.unwrap_or_default();
            Ok::<_, BlobError>(LocateResponse { url, size })
        };
        Ok(Response::new(run.await.map_err(|e| reject("locate", e))?))
    }
}

/// The same calls in-process, with no encoding of the chunks, each in the
/// span a call over the network gets.
#[tonic::async_trait]
impl BlobStreams for BlobGrpc {
    async fn read(
        &self,
        req: Request<ReadRequest>,
    ) -> Result<Response<MessageStream<ReadChunk>>, Status> {
        let span = grpc::call_span("/capstan.blob.v1.BlobService/Read", req.metadata());
        self.read_stream(req).instrument(span).await
    }

    async fn put(
        &self,
        req: Request<MessageStream<PutChunk>>,
    ) -> Result<Response<CommitResponse>, Status> {
        let span = grpc::call_span("/capstan.blob.v1.BlobService/Put", req.metadata());
        let run = async {
            let r = self.put_stream(req.into_inner()).await;
            r.map_err(|e| reject("put", e))
        };
        Ok(Response::new(run.instrument(span).await?))
    }

    async fn write_upload(
        &self,
        req: Request<MessageStream<WriteChunk>>,
    ) -> Result<Response<UploadState>, Status> {
        let span = grpc::call_span("/capstan.blob.v1.BlobService/WriteUpload", req.metadata());
        let run = async {
            let r = self.write_stream(req.into_inner()).await;
            r.map_err(|e| reject("write_upload", e))
        };
        Ok(Response::new(run.instrument(span).await?))
    }
}

/// Every store's counters, summed (the `Metrics` call, and the role's own
/// `/metrics`).
pub fn counters(stores: &Stores) -> BlobMetricsResponse {
    let mut out = BlobMetricsResponse::default();
    for (_, store) in stores.all() {
        let (direct, cached) = store.read_paths();
        let warm = store.warm_counts();
        let (scrubbed, corrupt) = store.scrub_counts();
        out.reads_direct += direct;
        out.reads_cached += cached;
        out.blobs_warmed += warm.warmed;
        out.warm_skipped += warm.skipped;
        out.warm_failed += warm.failed;
        out.warm_pending += warm.pending;
        out.scrubbed += scrubbed;
        out.corrupt += corrupt;
    }
    out
}
