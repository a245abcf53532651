//! Blob bytes between processes without gRPC message framing.
//!
//! tonic copies every message it sends into its encode buffer and every
//! DATA frame it receives into its decode buffer. For blob bytes that is two
//! extra copies per hop on top of the socket's own, and on a pull through a
//! gateway to a separate svc-blob they were a third of the gateway's CPU and
//! a tenth of the replica's. So a remote read goes as one plain HTTP/2
//! exchange on the same connection, with the same secret, trace context,
//! health and balancing as the gRPC calls, but with the blob's bytes as the
//! response body itself:
//!
//! - request: `POST` [`READ_PATH`], `content-type: application/grpc+bytes`,
//!   the body a protobuf-encoded [`ReadRequest`] (at most
//!   [`MAX_REQUEST_BYTES`]);
//! - a call refused before any byte: the status in the response headers,
//!   as a gRPC trailers-only answer, with its detail;
//! - otherwise the body is the bytes, in DATA frames as the store reads
//!   them, and the trailers carry `grpc-status` (with the status and its
//!   detail when the read broke part-way).
//!
//! Writes (`Put`, `WriteUpload`) go the same way the other direction
//! ([`PUT_PATH`], [`WRITE_UPLOAD_PATH`]): the request body is the first
//! message without its bytes, length-delimited, then the bytes of every
//! message as they come (only the first message's other fields travel, as
//! the contract asks); the response is the encoded reply with `grpc-status`
//! in the trailers, or the refusal in the headers. A caller that gives up
//! resets the stream, and the role keeps none of a write it did not see
//! end.
//!
//! The typed RPCs stay the contract's form of the same calls: in-process
//! callers use them ([`crate::direct`]), and so can any gRPC client.

use crate::blob::v1::{PutChunk, ReadChunk, ReadRequest, WriteChunk};
use crate::direct::MessageStream;
use bytes::Bytes;
use futures::StreamExt as _;
use http_body::Frame;
use http_body_util::BodyExt as _;
use prost::Message as _;
use std::sync::Arc;
use tonic::client::GrpcService;
use tonic::{Code, Request, Response, Status};

/// The path of a byte read, beside the service's gRPC methods (so per-call
/// metrics name it `capstan.blob.v1.BlobService` / `ReadBytes`).
pub const READ_PATH: &str = "/capstan.blob.v1.BlobService/ReadBytes";
/// The path of a `Put` with the bytes as the body.
pub const PUT_PATH: &str = "/capstan.blob.v1.BlobService/PutBytes";
/// The path of a `WriteUpload` with the bytes as the body.
pub const WRITE_UPLOAD_PATH: &str = "/capstan.blob.v1.BlobService/WriteUploadBytes";
/// The content type of its request and response.
pub const CONTENT_TYPE: &str = "application/grpc+bytes";
/// Largest request (a [`ReadRequest`]) or first message without its bytes
/// accepted: a digest or upload id, a repository name and a few numbers.
pub const MAX_REQUEST_BYTES: usize = 16 * 1024;
/// Largest reply body accepted (a commit's reply: a digest and a size).
const MAX_REPLY_BYTES: usize = 64 * 1024;

/// A message of a byte-carrying client stream: its bytes, and the rest.
pub trait Carrier: prost::Message + Default + Send + 'static {
    /// The message's bytes.
    fn data_mut(&mut self) -> &mut Bytes;

    /// Takes the bytes out of the message.
    fn take_data(&mut self) -> Bytes {
        std::mem::take(self.data_mut())
    }

    /// A message that carries only `data`.
    fn with_data(data: Bytes) -> Self {
        let mut m = Self::default();
        *m.data_mut() = data;
        m
    }

    /// Whether this later message continues the call `first` opened: it
    /// names nothing else (fields that only the first message may set are
    /// ignored, as the typed call ignores them).
    fn continues(&self, first: &Self) -> bool;
}

impl Carrier for PutChunk {
    fn data_mut(&mut self) -> &mut Bytes {
        &mut self.data
    }
    fn continues(&self, first: &Self) -> bool {
        self.digest.is_empty() || self.digest == first.digest
    }
}

impl Carrier for WriteChunk {
    fn data_mut(&mut self) -> &mut Bytes {
        &mut self.data
    }
    fn continues(&self, first: &Self) -> bool {
        self.upload_id.is_empty() || self.upload_id == first.upload_id
    }
}

type StdError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Calls [`READ_PATH`] on `transport` and returns the bytes as the same
/// stream of chunks a gRPC `Read` gives.
pub async fn read<T>(
    transport: &mut T,
    req: Request<ReadRequest>,
) -> Result<Response<MessageStream<ReadChunk>>, Status>
where
    T: GrpcService<tonic::body::Body>,
    T::Error: Into<StdError>,
    T::ResponseBody: http_body::Body<Data = Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error: Into<StdError> + Send,
{
    let (metadata, _, message) = req.into_parts();
    let body = tonic::body::Body::new(http_body_util::Full::new(Bytes::from(
        message.encode_to_vec(),
    )));
    let body = call(transport, READ_PATH, metadata, body).await?;
    let frames = futures::stream::unfold(Some(Box::pin(body)), |body| async move {
        let mut body = body?;
        loop {
            return match body.frame().await {
                None => None,
                Some(Err(e)) => Some((Err(Status::from_error(e.into())), None)),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) if data.is_empty() => continue,
                    Ok(data) => Some((Ok(ReadChunk { data }), Some(body))),
                    Err(frame) => match frame
                        .into_trailers()
                        .ok()
                        .and_then(|t| Status::from_header_map(&t))
                    {
                        Some(s) if s.code() != Code::Ok => Some((Err(s), None)),
                        _ => None,
                    },
                },
            };
        }
    });
    Ok(Response::new(frames.boxed()))
}

/// Sends `body` to `path` with `metadata`; the response body, once its
/// headers said the call was not refused.
async fn call<T>(
    transport: &mut T,
    path: &'static str,
    metadata: tonic::metadata::MetadataMap,
    body: tonic::body::Body,
) -> Result<T::ResponseBody, Status>
where
    T: GrpcService<tonic::body::Body>,
    T::Error: Into<StdError>,
{
    let mut http = http::Request::builder()
        .method(http::Method::POST)
        .uri(path)
        .body(body)
        .map_err(|e| Status::internal(format!("blob call {path}: {e}")))?;
    *http.headers_mut() = metadata.into_headers();
    http.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(CONTENT_TYPE),
    );
    http.headers_mut()
        .insert("te", http::HeaderValue::from_static("trailers"));
    futures::future::poll_fn(|cx| transport.poll_ready(cx))
        .await
        .map_err(|e| Status::from_error(e.into()))?;
    let response = transport
        .call(http)
        .await
        .map_err(|e| Status::from_error(e.into()))?;
    let (parts, body) = response.into_parts();
    if let Some(status) = Status::from_header_map(&parts.headers)
        && status.code() != Code::Ok
    {
        return Err(status);
    }
    if parts.status != http::StatusCode::OK {
        return Err(Status::unknown(format!(
            "blob call {path} answered HTTP {}",
            parts.status
        )));
    }
    Ok(body)
}

/// Calls `path` ([`PUT_PATH`] or [`WRITE_UPLOAD_PATH`]) with `req`'s
/// messages as a byte body, and decodes the reply.
pub async fn write<T, M, R>(
    transport: &mut T,
    path: &'static str,
    req: Request<impl futures::Stream<Item = M> + Send + 'static>,
) -> Result<Response<R>, Status>
where
    T: GrpcService<tonic::body::Body>,
    T::Error: Into<StdError>,
    T::ResponseBody: http_body::Body<Data = Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error: Into<StdError> + Send,
    M: Carrier,
    R: prost::Message + Default,
{
    let (metadata, _, messages) = req.into_parts();
    // A later message that names another call breaks the body, so the role
    // keeps none of it, and the call fails as the typed one would.
    let broken = Arc::new(std::sync::OnceLock::<Status>::new());
    let mut first: Option<M> = None;
    let breaks = broken.clone();
    let frames = messages.flat_map(move |mut m| {
        let data = m.take_data();
        let mut frames = Vec::with_capacity(2);
        match &first {
            None => {
                frames.push(Ok(Bytes::from(m.encode_length_delimited_to_vec())));
                first = Some(m);
            }
            Some(opened) if !m.continues(opened) => {
                let status = Status::from(crate::ServiceError::new(
                    capstan_oci::ErrorCode::BlobUploadInvalid,
                    "a later message of the stream names another blob or upload",
                ));
                let _ = breaks.set(status.clone());
                frames.push(Err(status));
            }
            Some(_) => {}
        }
        if !data.is_empty() && frames.iter().all(Result::is_ok) {
            frames.push(Ok(data));
        }
        futures::stream::iter(frames.into_iter().map(|r| r.map(Frame::data)))
    });
    let body = tonic::body::Body::new(http_body_util::StreamBody::new(frames));
    let sent = call(transport, path, metadata, body).await;
    if let Some(status) = broken.get() {
        return Err(status.clone());
    }
    let body = sent?;
    let mut body = std::pin::pin!(body);
    let mut reply = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| Status::from_error(e.into()))?;
        match frame.into_data() {
            Ok(data) if reply.len() + data.len() > MAX_REPLY_BYTES => {
                return Err(Status::internal("blob call reply too large"));
            }
            Ok(data) => reply.extend_from_slice(&data),
            Err(frame) => {
                if let Some(s) = frame
                    .into_trailers()
                    .ok()
                    .and_then(|t| Status::from_header_map(&t))
                    .filter(|s| s.code() != Code::Ok)
                {
                    return Err(s);
                }
            }
        }
    }
    R::decode(reply.freeze())
        .map(Response::new)
        .map_err(|e| Status::internal(format!("blob call reply: {e}")))
}

/// The messages a call to [`PUT_PATH`] or [`WRITE_UPLOAD_PATH`] carries:
/// the first with its fields, then one per DATA frame. A body that breaks
/// (the caller reset the stream) ends the messages with an error; an empty
/// body gives none.
pub async fn messages<M, B>(body: B) -> Result<MessageStream<M>, Status>
where
    M: Carrier,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<StdError>,
{
    let mut body = Box::pin(body);
    let mut head = bytes::BytesMut::new();
    let first = loop {
        // Enough for the length prefix and what it announces?
        if !head.is_empty() {
            let mut peek = &head[..];
            if let Ok(len) = prost::encoding::decode_varint(&mut peek) {
                let prefix = head.len() - peek.len();
                let len = usize::try_from(len).unwrap_or(usize::MAX);
                if len > MAX_REQUEST_BYTES {
                    return Err(Status::invalid_argument(
                        "blob call: first message too large",
                    ));
                }
                if peek.len() >= len {
                    let _ = head.split_to(prefix);
                    let message = head.split_to(len);
                    let mut first: M = M::decode(message.freeze()).map_err(|e| {
                        Status::invalid_argument(format!("blob call: first message: {e}"))
                    })?;
                    // What came after it is the first message's bytes.
                    *first.data_mut() = head.freeze();
                    break first;
                }
            } else if head.len() > 10 {
                return Err(Status::invalid_argument("blob call: bad length prefix"));
            }
        }
        match body.frame().await {
            None if head.is_empty() => return Ok(futures::stream::empty().boxed()),
            None => {
                return Err(Status::invalid_argument(
                    "blob call: body ended in its first message",
                ));
            }
            Some(Err(e)) => return Err(Status::from_error(e.into())),
            Some(Ok(frame)) => {
                // The head is small and comes first: what follows it in
                // the same frame becomes the first message's bytes, so at
                // most one frame is held here.
                if let Ok(data) = frame.into_data() {
                    head.extend_from_slice(&data);
                }
            }
        }
    };
    let rest = futures::stream::unfold(Some(body), |body| async move {
        let mut body = body?;
        loop {
            return match body.frame().await {
                None => None,
                Some(Err(e)) => Some((Err(Status::from_error(e.into())), None)),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) if data.is_empty() => continue,
                    Ok(data) => Some((Ok(M::with_data(data)), Some(body))),
                    Err(_) => continue,
                },
            };
        }
    });
    Ok(futures::stream::once(async move { Ok(first) })
        .chain(rest)
        .boxed())
}

/// The answer to a write call: `reply` encoded with `grpc-status: 0` in
/// the trailers, or its refusal in the headers.
pub fn reply<R: prost::Message>(
    reply: Result<Response<R>, Status>,
) -> http::Response<tonic::body::Body> {
    let reply = match reply {
        Ok(r) => r.into_inner(),
        Err(status) => return refused(&status),
    };
    let frames = futures::stream::iter([
        Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from(reply.encode_to_vec()))),
        Ok(Frame::trailers(trailers(&Status::ok("")))),
    ]);
    let mut response = http::Response::new(tonic::body::Body::new(
        http_body_util::StreamBody::new(frames),
    ));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(CONTENT_TYPE),
    );
    response
}

/// Decodes the [`ReadRequest`] a call to [`READ_PATH`] carries.
pub async fn request<B>(body: B) -> Result<ReadRequest, Status>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<StdError>,
{
    let bytes = http_body_util::Limited::new(body, MAX_REQUEST_BYTES)
        .collect()
        .await
        .map_err(|e| Status::invalid_argument(format!("blob read request: {e}")))?
        .to_bytes();
    ReadRequest::decode(bytes)
        .map_err(|e| Status::invalid_argument(format!("blob read request: {e}")))
}

/// The answer to a call to [`READ_PATH`]: `read`'s chunks as the body with
/// the status in the trailers, or its refusal in the headers.
pub fn response(
    read: Result<Response<MessageStream<ReadChunk>>, Status>,
) -> http::Response<tonic::body::Body> {
    let chunks = match read {
        Ok(r) => r.into_inner(),
        Err(status) => return refused(&status),
    };
    // The chunks, then the status: the end's, or the one a break gave.
    let frames = futures::stream::unfold(Some(chunks), |chunks| async move {
        let mut chunks = chunks?;
        let frame = match chunks.next().await {
            Some(Ok(c)) => return Some((Ok(Frame::data(c.data)), Some(chunks))),
            Some(Err(status)) => Frame::trailers(trailers(&status)),
            None => Frame::trailers(trailers(&Status::ok(""))),
        };
        Some((Ok::<_, std::convert::Infallible>(frame), None))
    });
    let mut response = http::Response::new(tonic::body::Body::new(
        http_body_util::StreamBody::new(frames),
    ));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(CONTENT_TYPE),
    );
    response
}

/// A trailers-only answer carrying `status`.
fn refused(status: &Status) -> http::Response<tonic::body::Body> {
    let mut response = http::Response::new(tonic::body::Body::empty());
    *response.headers_mut() = trailers(status);
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(CONTENT_TYPE),
    );
    response
}

fn trailers(status: &Status) -> http::HeaderMap {
    let mut headers = http::HeaderMap::new();
    if status.add_header(&mut headers).is_err() {
        // Only a message that is not a valid header value fails; keep the
        // code.
        headers.clear();
        let _ = Status::new(status.code(), "").add_header(&mut headers);
    }
    headers
}
