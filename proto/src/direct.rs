//! The streaming RPCs of the contract called in-process, message by message.
//!
//! When every role runs in one process (embedded mode) the gRPC contract is
//! still the only way roles talk, but the streaming calls that carry blob
//! bytes need not encode each chunk into a frame and decode it back: a role
//! that serves such a call also provides it as one of these traits, with the
//! same request and response messages, and a client that finds the role in
//! its own process ([`BlobClient`], [`SyncClient`]) calls it directly. Each
//! direct call runs in a task of its own, like a call on a server
//! connection, and dropping it before it finishes aborts that task, as a
//! stream reset would; the providing role runs it in the same `rpc` span
//! (method, caller's trace id) as a network call. Unary calls and remote
//! roles keep the network path.

use crate::blob::v1::blob_service_client::BlobServiceClient;
use crate::blob::v1::{CommitResponse, PutChunk, ReadChunk, ReadRequest, UploadState, WriteChunk};
use crate::sync::v1::FetchBlobRequest;
use crate::sync::v1::sync_service_client::SyncServiceClient;
use futures::stream::BoxStream;
use std::future::Future;
use std::sync::Arc;
use tokio_util::task::AbortOnDropHandle;
use tonic::client::GrpcService;
use tonic::{IntoRequest, IntoStreamingRequest, Request, Response, Status};

/// A stream of messages of one call, whichever path it took.
pub type MessageStream<T> = BoxStream<'static, Result<T, Status>>;

/// svc-blob's byte-carrying calls, as called in-process.
#[tonic::async_trait]
pub trait BlobStreams: Send + Sync + 'static {
    /// `BlobService.Read`.
    async fn read(
        &self,
        req: Request<ReadRequest>,
    ) -> Result<Response<MessageStream<ReadChunk>>, Status>;
    /// `BlobService.Put`.
    async fn put(
        &self,
        req: Request<MessageStream<PutChunk>>,
    ) -> Result<Response<CommitResponse>, Status>;
    /// `BlobService.WriteUpload`.
    async fn write_upload(
        &self,
        req: Request<MessageStream<WriteChunk>>,
    ) -> Result<Response<UploadState>, Status>;
}

/// svc-sync's byte-carrying call, as called in-process.
#[tonic::async_trait]
pub trait SyncStreams: Send + Sync + 'static {
    /// `SyncService.FetchBlob`.
    async fn fetch_blob(
        &self,
        req: Request<FetchBlobRequest>,
    ) -> Result<Response<MessageStream<ReadChunk>>, Status>;
}

/// Finds the in-process provider of a role's streams, if this process
/// serves that role (asked at every call: roles come up after their
/// clients are made, and go away).
pub type Resolver<S> = Arc<dyn Fn() -> Option<Arc<S>> + Send + Sync>;

/// A client of svc-blob: the generated client, plus the direct path for the
/// byte-carrying calls when svc-blob runs in this process. It dereferences
/// to the generated client for every other call.
#[derive(Clone)]
pub struct BlobClient<T> {
    grpc: BlobServiceClient<T>,
    /// The transport under `grpc`, for bytes without message framing
    /// ([`crate::bulk`]).
    bytes: T,
    /// Send bytes as typed gRPC messages after all ([`Self::framed`]).
    framed: bool,
    local: Resolver<dyn BlobStreams>,
}

/// A client of svc-sync: the generated client, plus the direct path for
/// `FetchBlob` when svc-sync runs in this process.
#[derive(Clone)]
pub struct SyncClient<T> {
    grpc: SyncServiceClient<T>,
    local: Resolver<dyn SyncStreams>,
}

impl<T> std::fmt::Debug for BlobClient<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobClient").finish_non_exhaustive()
    }
}

impl<T> std::fmt::Debug for SyncClient<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncClient").finish_non_exhaustive()
    }
}

impl<T> std::ops::Deref for BlobClient<T> {
    type Target = BlobServiceClient<T>;
    fn deref(&self) -> &Self::Target {
        &self.grpc
    }
}

impl<T> std::ops::DerefMut for BlobClient<T> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.grpc
    }
}

impl<T> std::ops::Deref for SyncClient<T> {
    type Target = SyncServiceClient<T>;
    fn deref(&self) -> &Self::Target {
        &self.grpc
    }
}

impl<T> std::ops::DerefMut for SyncClient<T> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.grpc
    }
}

type StdError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Runs `call` in a task of its own; dropping the returned future aborts it.
async fn in_task<R: Send + 'static>(
    call: impl Future<Output = Result<R, Status>> + Send + 'static,
) -> Result<R, Status> {
    match AbortOnDropHandle::new(tokio::spawn(call)).await {
        Ok(r) => r,
        Err(e) => Err(Status::internal(format!("in-process call failed: {e}"))),
    }
}

/// A received stream as a [`MessageStream`].
fn boxed<T: Send + 'static>(s: tonic::Streaming<T>) -> MessageStream<T> {
    Box::pin(s)
}

impl<T> BlobClient<T>
where
    T: GrpcService<tonic::body::Body>,
    T::Error: Into<StdError>,
    T::ResponseBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error: Into<StdError> + Send,
{
    /// `grpc` over `transport`, with `local` consulted at each
    /// byte-carrying call.
    pub fn new(grpc: BlobServiceClient<T>, transport: T, local: Resolver<dyn BlobStreams>) -> Self {
        Self {
            grpc,
            bytes: transport,
            framed: false,
            local,
        }
    }

    /// The same client with its remote byte-carrying calls made as the
    /// typed gRPC methods (each chunk a framed message), for a path that
    /// passes only gRPC, and to test the typed methods.
    pub fn framed(mut self) -> Self {
        self.framed = true;
        self
    }

    /// `BlobService.Read`: direct when svc-blob is in this process, else
    /// as a plain byte stream ([`crate::bulk`]).
    pub async fn read(
        &mut self,
        req: impl IntoRequest<ReadRequest>,
    ) -> Result<Response<MessageStream<ReadChunk>>, Status> {
        let req = req.into_request();
        if let Some(svc) = (self.local)() {
            return in_task(async move { svc.read(req).await }).await;
        }
        if self.framed {
            return Ok(self.grpc.read(req).await?.map(boxed));
        }
        crate::bulk::read(&mut self.bytes, req).await
    }

    /// The whole of a small blob of `repo` (an image config), or `None`
    /// when it is absent, unreadable or larger than `max` bytes: for
    /// callers to whom the blob is useful, not required.
    pub async fn read_small(&mut self, repo: &str, digest: &str, max: u64) -> Option<bytes::Bytes> {
        let size = self
            .grpc
            .stat(crate::blob::v1::StatRequest {
                repo: repo.to_string(),
                digest: digest.to_string(),
                keep: false,
            })
            .await
            .ok()?
            .into_inner()
            .size;
        if size > max {
            return None;
        }
        let mut chunks = self
            .read(ReadRequest {
                digest: digest.to_string(),
                offset: 0,
                length: 0,
                repo: repo.to_string(),
            })
            .await
            .ok()?
            .into_inner();
        let mut whole = bytes::BytesMut::new();
        while let Some(chunk) = futures::StreamExt::next(&mut chunks).await {
            let data = chunk.ok()?.data;
            if (whole.len() + data.len()) as u64 > max {
                return None;
            }
            whole.extend_from_slice(&data);
        }
        Some(whole.freeze())
    }

    /// `BlobService.Put` fed by `req`'s stream of chunks: direct when
    /// svc-blob is in this process, else as a plain byte stream.
    pub async fn put(
        &mut self,
        req: impl IntoStreamingRequest<Message = PutChunk>,
    ) -> Result<Response<CommitResponse>, Status> {
        let req = req.into_streaming_request();
        if let Some(svc) = (self.local)() {
            let (metadata, extensions, chunks) = req.into_parts();
            let stream: MessageStream<PutChunk> = Box::pin(futures::StreamExt::map(chunks, Ok));
            let req = Request::from_parts(metadata, extensions, stream);
            return in_task(async move { svc.put(req).await }).await;
        }
        if self.framed {
            return self.grpc.put(req).await;
        }
        crate::bulk::write(&mut self.bytes, crate::bulk::PUT_PATH, req).await
    }

    /// `BlobService.WriteUpload` fed by `req`'s stream of chunks: direct
    /// when svc-blob is in this process, else as a plain byte stream.
    pub async fn write_upload(
        &mut self,
        req: impl IntoStreamingRequest<Message = WriteChunk>,
    ) -> Result<Response<UploadState>, Status> {
        let req = req.into_streaming_request();
        if let Some(svc) = (self.local)() {
            let (metadata, extensions, chunks) = req.into_parts();
            let stream: MessageStream<WriteChunk> = Box::pin(futures::StreamExt::map(chunks, Ok));
            let req = Request::from_parts(metadata, extensions, stream);
            return in_task(async move { svc.write_upload(req).await }).await;
        }
        if self.framed {
            return self.grpc.write_upload(req).await;
        }
        crate::bulk::write(&mut self.bytes, crate::bulk::WRITE_UPLOAD_PATH, req).await
    }
}

impl<T> SyncClient<T>
where
    T: GrpcService<tonic::body::Body>,
    T::Error: Into<StdError>,
    T::ResponseBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error: Into<StdError> + Send,
{
    /// `grpc`, with `local` consulted at each `FetchBlob`.
    pub fn new(grpc: SyncServiceClient<T>, local: Resolver<dyn SyncStreams>) -> Self {
        Self { grpc, local }
    }

    /// `SyncService.FetchBlob`, direct when svc-sync is in this process.
    pub async fn fetch_blob(
        &mut self,
        req: impl IntoRequest<FetchBlobRequest>,
    ) -> Result<Response<MessageStream<ReadChunk>>, Status> {
        let req = req.into_request();
        if let Some(svc) = (self.local)() {
            return in_task(async move { svc.fetch_blob(req).await }).await;
        }
        Ok(self.grpc.fetch_blob(req).await?.map(boxed))
    }
}
