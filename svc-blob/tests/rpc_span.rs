//! svc-blob's in-process streaming calls log under the caller's trace id,
//! as network calls do. A test binary of its own: it installs the process's
//! log subscriber.

use bytes::Bytes;
use capstan_blob::{BlobGrpc, BlobStore, FsStore};
use capstan_oci::{Algorithm, ErrorCode, Hasher};
use capstan_proto::ServiceError;
use capstan_proto::blob::v1::{PutChunk, ReadRequest};
use capstan_proto::direct::{BlobStreams, MessageStream};
use capstan_runtime::grpc;
use futures::stream;
use std::sync::Arc;

fn code(s: tonic::Status) -> ErrorCode {
    ServiceError::from_status(&s).code
}

fn sha256(b: &[u8]) -> capstan_oci::Digest {
    let mut h = Hasher::new(Algorithm::Sha256);
    h.update(b);
    h.finish()
}

/// A direct call is logged in the same `rpc` span (method, caller's trace
/// id) as a call over the network.
#[tokio::test]
async fn in_process_calls_log_under_the_callers_trace_id() {
    #[derive(Clone, Default)]
    struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    // The only test of this binary: its subscriber is the process's, so no
    // other test's callsites race with it.
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn BlobStore> = Arc::new(FsStore::new(dir.path(), false).await.unwrap());
    let streams = BlobGrpc::new(store);
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let mut req = tonic::Request::new(ReadRequest {
        repo: String::new(),
        digest: sha256(b"absent").to_string(),
        offset: 0,
        length: 0,
    });
    req.metadata_mut().insert(
        grpc::TRACEPARENT,
        format!("00-{trace_id}-00f067aa0ba902b7-01")
            .parse()
            .unwrap(),
    );
    let e = BlobStreams::read(&streams, req).await.err().unwrap();
    assert_eq!(code(e), ErrorCode::BlobUnknown);
    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let line = text
        .lines()
        .find(|l| l.contains("blob request rejected"))
        .unwrap_or_else(|| panic!("no rejection logged: {text}"));
    assert!(line.contains(trace_id), "{line}");
    assert!(line.contains("/capstan.blob.v1.BlobService/Read"), "{line}");
    // A refused put is logged in its span too.
    let chunks: MessageStream<PutChunk> = Box::pin(stream::iter([Ok(PutChunk {
        repo: String::new(),
        length: None,
        digest: "sha256:nope".into(),
        data: Bytes::from_static(b"x"),
    })]));
    let mut req = tonic::Request::new(chunks);
    req.metadata_mut().insert(
        grpc::TRACEPARENT,
        format!("00-{trace_id}-00f067aa0ba902b8-01")
            .parse()
            .unwrap(),
    );
    let e = BlobStreams::put(&streams, req).await.err().unwrap();
    assert_eq!(code(e), ErrorCode::DigestInvalid);
    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let line = text
        .lines()
        .find(|l| l.contains("blob request rejected") && l.contains("rpc=\"put\""))
        .unwrap_or_else(|| panic!("no rejected put logged: {text}"));
    assert!(line.contains(trace_id), "{line}");
    assert!(line.contains("/capstan.blob.v1.BlobService/Put"), "{line}");
}
