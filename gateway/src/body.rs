//! Reading request bodies: small ones (manifests) into memory up to a limit,
//! blob bytes streamed into a gRPC client stream in chunks of up to
//! [`CHUNK_BYTES`], so memory stays flat whatever the blob size.

use bytes::{Bytes, BytesMut};
use capstan_runtime::grpc::CHUNK_BYTES;
use pingora::protocols::http::ServerSession;
use tokio::sync::mpsc;

#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("reading the request body failed: {0}")]
    Read(String),
    #[error("request body larger than {0} bytes")]
    TooLarge(usize),
    /// The receiving RPC ended before the body did (it failed early).
    #[error("the backend stopped reading")]
    Closed,
}

/// Answer `Expect: 100-continue` before the first body read.
async fn continue_if_expected(session: &mut ServerSession) -> Result<(), BodyError> {
    let expects = session
        .req_header()
        .headers
        .get("expect")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
    if expects && !session.is_http2() {
        session
            .write_continue_response()
            .await
            .map_err(|e| BodyError::Read(e.to_string()))?;
    }
    Ok(())
}

/// The request's Content-Length, when given and numeric.
pub fn content_length(session: &ServerSession) -> Option<u64> {
    session
        .req_header()
        .headers
        .get("content-length")
        .and_then(|v| v.to_str().ok()?.trim().parse().ok())
}

/// Read the whole body, refusing more than `limit` bytes.
pub async fn read_limited(session: &mut ServerSession, limit: usize) -> Result<Bytes, BodyError> {
    if content_length(session).is_some_and(|n| n > limit as u64) {
        return Err(BodyError::TooLarge(limit));
    }
    continue_if_expected(session).await?;
    let mut buf = BytesMut::new();
    while let Some(chunk) = session
        .read_request_body()
        .await
        .map_err(|e| BodyError::Read(e.to_string()))?
    {
        if buf.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge(limit));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// Stream the body into `tx`, coalesced into chunks of up to CHUNK_BYTES.
/// `wrap(first, data)` builds each message; at least one message (possibly
/// empty) is sent so the receiver always learns the header fields.
/// Returns the number of body bytes sent.
pub async fn pump<T>(
    session: &mut ServerSession,
    tx: mpsc::Sender<T>,
    mut wrap: impl FnMut(bool, Bytes) -> T,
) -> Result<u64, BodyError> {
    continue_if_expected(session).await?;
    let mut first = true;
    let mut total = 0u64;
    // A whole chunk's room up front, and again after each chunk leaves:
    // growing by doubling would copy every byte several times over.
    let mut buf = BytesMut::with_capacity(CHUNK_BYTES);
    loop {
        let chunk = session
            .read_request_body()
            .await
            .map_err(|e| BodyError::Read(e.to_string()))?;
        let done = chunk.is_none();
        if let Some(c) = chunk {
            total += c.len() as u64;
            buf.extend_from_slice(&c);
        }
        while buf.len() >= CHUNK_BYTES || (done && (!buf.is_empty() || first)) {
            let take = buf.len().min(CHUNK_BYTES);
            let data = buf.split_to(take).freeze();
            tx.send(wrap(first, data))
                .await
                .map_err(|_| BodyError::Closed)?;
            first = false;
        }
        if done {
            return Ok(total);
        }
        if buf.capacity() - buf.len() < CHUNK_BYTES / 2 {
            buf.reserve(CHUNK_BYTES);
        }
    }
}
