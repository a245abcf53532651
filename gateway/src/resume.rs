//! Blob reads that outlive their replica. Blobs are immutable, so when the
//! stream from one svc-blob replica breaks before its end (the replica was
//! killed, a connection reset), the rest is read from another replica from
//! the offset reached, and the client sees one uninterrupted response. A
//! read that cannot be opened on one replica is tried on the next.

use crate::backends::Backends;
use capstan_proto::blob::v1::{ReadChunk, ReadRequest};
use capstan_proto::direct::MessageStream;
use futures::StreamExt as _;
use tonic::{Code, Status};

/// Whether the replica itself failed or could not be reached (a refused
/// connection, a reset), as opposed to an answer it gave: a service's
/// answers always carry Capstan's error detail.
pub fn not_an_answer(s: &Status) -> bool {
    s.details().is_empty()
}

/// Failures worth another replica: the replica or the way to it, not the
/// request or the blob.
fn retryable(s: &Status) -> bool {
    matches!(
        s.code(),
        Code::Unavailable
            | Code::Unknown
            | Code::Internal
            | Code::Cancelled
            | Code::Aborted
            | Code::DeadlineExceeded
    )
}

/// A read of `len` bytes of `req.digest` from `req.offset` (`len` > 0),
/// opened on some replica and continued on others if it breaks, at most
/// twice per replica and once more. A replica that fails is taken out of
/// turn at once (its health check brings it back). `request` dresses each call (a
/// trace context). The opening error, if no replica would open it, is
/// returned as is.
pub async fn read(
    backends: Backends,
    req: ReadRequest,
    len: u64,
    request: impl Fn(ReadRequest) -> tonic::Request<ReadRequest> + Send + Sync + 'static,
) -> Result<MessageStream<ReadChunk>, Status> {
    let mut tries = 2 * backends.blob_replicas() + 1;
    let (first, replica) = loop {
        tries -= 1;
        let (replica, mut client) = backends.blob_replica();
        match client.read(request(req.clone())).await {
            Ok(r) => break (r.into_inner(), replica),
            Err(s) if retryable(&s) && tries > 0 => {
                if not_an_answer(&s) {
                    replica.failed();
                }
                tracing::warn!(digest = req.digest, error = %s.message(), "blob read not opened; trying another replica");
            }
            Err(s) => return Err(s),
        }
    };
    struct State<F> {
        backends: Backends,
        req: ReadRequest,
        len: u64,
        sent: u64,
        tries: usize,
        current: Option<MessageStream<ReadChunk>>,
        /// The replica `current` comes from.
        replica: std::sync::Arc<capstan_runtime::grpc::Replica>,
        request: F,
    }
    let state = State {
        backends,
        req,
        len,
        sent: 0,
        tries,
        current: Some(first),
        replica,
        request,
    };
    let stream = futures::stream::unfold(state, |mut st| async move {
        loop {
            let current = st.current.as_mut()?;
            // Everything was sent: whatever comes now (the end, a break
            // after the last byte) ends the response.
            if st.sent >= st.len {
                return None;
            }
            let broke = match current.next().await {
                Some(Ok(mut chunk)) => {
                    // Never more than was asked for.
                    let left = usize::try_from(st.len - st.sent).unwrap_or(usize::MAX);
                    chunk.data.truncate(left);
                    st.sent += chunk.data.len() as u64;
                    return Some((Ok(chunk), st));
                }
                None => Status::unavailable(format!(
                    "blob stream ended after {} of {} bytes",
                    st.sent, st.len
                )),
                Some(Err(s)) => s,
            };
            if !retryable(&broke) || st.tries == 0 {
                st.current = None;
                return Some((Err(broke), st));
            }
            st.tries -= 1;
            if not_an_answer(&broke) {
                st.replica.failed();
            }
            tracing::warn!(
                digest = st.req.digest,
                sent = st.sent,
                error = %broke.message(),
                "blob stream broke; resuming from another replica"
            );
            let rest = ReadRequest {
                offset: st.req.offset + st.sent,
                length: st.len - st.sent,
                ..st.req.clone()
            };
            let (replica, mut client) = st.backends.blob_replica();
            st.replica = replica;
            st.current = Some(match client.read((st.request)(rest)).await {
                Ok(r) => r.into_inner(),
                // Handled like a break at once: another replica, or the end.
                Err(s) => futures::stream::once(async move { Err(s) }).boxed(),
            });
        }
    });
    Ok(stream.boxed())
}
