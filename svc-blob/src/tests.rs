//! BlobService over real tonic servers on 127.0.0.1:0, through the client
//! the gateway uses: over the network, and with the byte-carrying calls made
//! in-process (embedded mode's direct path).

use super::*;
use crate::suite::{pattern, sha256};
use bytes::Bytes;
use capstan_oci::{Algorithm, ErrorCode, Hasher};
use capstan_proto::ServiceError;
use capstan_proto::blob::v1::blob_service_client::BlobServiceClient;
use capstan_proto::blob::v1::{
    CommitUploadRequest, DeleteRequest, PutChunk, ReadRequest, StartUploadRequest, StatRequest,
    UploadRef, WriteChunk,
};
use capstan_proto::direct::{BlobClient, BlobStreams};
use capstan_runtime::grpc::Transport;
use capstan_runtime::grpc::{CHUNK_BYTES, MAX_MESSAGE_BYTES, READ_CHUNK_BYTES};
use futures::{StreamExt as _, stream};
use std::path::Path as Path_;
use tokio::task::JoinHandle;

type Client = BlobClient<Transport>;

/// How a test's client reaches the service's byte-carrying calls.
#[derive(Debug, Clone, Copy)]
enum Path {
    /// Over the network, bytes as plain HTTP/2 bodies (`capstan_proto::bulk`).
    Network,
    /// Over the network, bytes as typed gRPC messages.
    Framed,
    /// In-process, through a `BlobGrpc` over the server's root.
    Direct,
}

fn grpc_client(url: &str) -> BlobServiceClient<Transport> {
    BlobServiceClient::new(grpc::connect(url).unwrap())
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

/// A client whose streaming calls go in-process to a service over `root`,
/// and whose other calls go to `url`.
async fn direct_client(url: &str, root: &Path_) -> Client {
    let store: Arc<dyn BlobStore> = Arc::new(FsStore::new(root, false).await.unwrap());
    let streams: Arc<dyn BlobStreams> = Arc::new(BlobGrpc::new(store));
    BlobClient::new(
        grpc_client(url),
        grpc::connect(url).unwrap(),
        Arc::new(move || Some(streams.clone())),
    )
}

struct Server {
    url: String,
    root: std::path::PathBuf,
    shutdown: Shutdown,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Server {
    async fn start(root: &Path_, commit: bool) -> Self {
        let mut config = Config::default();
        config.storage.root_directory = root.to_path_buf();
        config.storage.commit = commit;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let shutdown = Shutdown::new();
        let s = shutdown.clone();
        let task =
            tokio::spawn(async move { serve(&config, &Default::default(), listener, s).await });
        Self {
            url,
            root: root.to_path_buf(),
            shutdown,
            task,
        }
    }

    /// A client going over the network.
    fn client(&self) -> Client {
        BlobClient::new(
            grpc_client(&self.url),
            grpc::connect(&self.url).unwrap(),
            Arc::new(|| None),
        )
    }

    async fn client_by(&self, path: Path) -> Client {
        match path {
            Path::Network => self.client(),
            Path::Framed => self.client().framed(),
            Path::Direct => direct_client(&self.url, &self.root).await,
        }
    }

    async fn stop(self) {
        self.shutdown.trigger();
        let done = tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("server stops after shutdown");
        done.unwrap().expect("server ran cleanly");
    }
}

fn code(s: tonic::Status) -> ErrorCode {
    ServiceError::from_status(&s).code
}

/// One WriteUpload call: the id and offset in the first message only, as
/// the gateway sends them.
async fn write(
    c: &mut Client,
    id: &str,
    expected_offset: Option<u64>,
    parts: &[&[u8]],
) -> Result<u64, tonic::Status> {
    let msgs: Vec<WriteChunk> = parts
        .iter()
        .enumerate()
        .map(|(i, p)| WriteChunk {
            length: None,
            upload_id: if i == 0 {
                id.to_string()
            } else {
                String::new()
            },
            expected_offset: if i == 0 { expected_offset } else { None },
            data: Bytes::copy_from_slice(p),
            owner: String::new(),
        })
        .collect();
    Ok(c.write_upload(stream::iter(msgs))
        .await?
        .into_inner()
        .offset)
}

async fn put(c: &mut Client, digest: &str, parts: &[&[u8]]) -> Result<u64, tonic::Status> {
    let msgs: Vec<PutChunk> = parts
        .iter()
        .enumerate()
        .map(|(i, p)| PutChunk {
            repo: String::new(),
            length: None,
            digest: if i == 0 {
                digest.to_string()
            } else {
                String::new()
            },
            data: Bytes::copy_from_slice(p),
        })
        .collect();
    Ok(c.put(stream::iter(msgs)).await?.into_inner().size)
}

async fn read(
    c: &mut Client,
    digest: &str,
    offset: u64,
    length: u64,
) -> Result<Vec<u8>, tonic::Status> {
    let mut s = c
        .read(ReadRequest {
            repo: String::new(),
            digest: digest.to_string(),
            offset,
            length,
        })
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(chunk) = s.next().await.transpose()? {
        assert!(chunk.data.len() <= READ_CHUNK_BYTES);
        out.extend_from_slice(&chunk.data);
    }
    Ok(out)
}

async fn status(c: &mut Client, id: &str) -> Result<u64, tonic::Status> {
    let r = c
        .upload_status(UploadRef {
            upload_id: id.to_string(),
            owner: String::new(),
        })
        .await?;
    Ok(r.into_inner().offset)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_alternates_between_two_servers_on_one_root() {
    let dir = tempfile::tempdir().unwrap();
    let one = Server::start(dir.path(), false).await;
    let two = Server::start(dir.path(), true).await;
    let mut clients = [one.client(), two.client()];

    let data = pattern(5 * CHUNK_BYTES / 2 + 3, 11);
    let d = sha256(&data);
    let id = clients[0]
        .start_upload(StartUploadRequest::default())
        .await
        .unwrap()
        .into_inner()
        .upload_id;
    let mut offset = 0u64;
    for (i, part) in data.chunks(400_000).enumerate() {
        let c = &mut clients[i % 2];
        let (x, y) = part.split_at(part.len() / 3);
        let next = write(c, &id, Some(offset), &[x, y]).await.unwrap();
        assert_eq!(next, offset + part.len() as u64, "write {i}");
        offset = next;
        // The other server sees the new offset at once.
        assert_eq!(
            status(&mut clients[(i + 1) % 2], &id).await.unwrap(),
            offset
        );
    }
    assert_eq!(offset, data.len() as u64);
    // A stale offset is refused by either server, writing nothing.
    let e = write(&mut clients[1], &id, Some(0), &[b"xx"])
        .await
        .unwrap_err();
    assert_eq!(code(e), ErrorCode::RangeInvalid);

    let committed = clients[0]
        .commit_upload(CommitUploadRequest {
            upload_id: id.clone(),
            digest: d.to_string(),
            owner: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(committed.digest, d.to_string());
    assert_eq!(committed.size, data.len() as u64);
    assert_eq!(
        read(&mut clients[1], &d.to_string(), 0, 0).await.unwrap(),
        data
    );
    assert_eq!(
        read(&mut clients[0], &d.to_string(), 1000, 10)
            .await
            .unwrap(),
        &data[1000..1010]
    );
    let e = status(&mut clients[1], &id).await.unwrap_err();
    assert_eq!(code(e), ErrorCode::BlobUploadUnknown);
    one.stop().await;
    two.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_64_mib_put_reads_back_identically() {
    a_64_mib_put_reads_back_identically_by(Path::Network).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_64_mib_put_reads_back_identically_as_grpc_messages() {
    a_64_mib_put_reads_back_identically_by(Path::Framed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_64_mib_put_reads_back_identically_in_process() {
    a_64_mib_put_reads_back_identically_by(Path::Direct).await;
}

async fn a_64_mib_put_reads_back_identically_by(path: Path) {
    const CHUNKS: u64 = 64;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), false).await;
    let mut c = server.client_by(path).await;

    // The data is generated chunk by chunk, never held whole.
    let chunk = |i: u64| Bytes::from(pattern(CHUNK_BYTES, 1000 + i));
    let mut h = Hasher::new(Algorithm::Sha256);
    for i in 0..CHUNKS {
        h.update(&chunk(i));
    }
    let d = h.finish().to_string();
    let first = d.clone();
    let msgs = stream::iter(0..CHUNKS).map(move |i| PutChunk {
        repo: String::new(),
        length: None,
        digest: if i == 0 { first.clone() } else { String::new() },
        data: chunk(i),
    });
    let r = c.put(msgs).await.unwrap().into_inner();
    let total = CHUNKS * CHUNK_BYTES as u64;
    assert_eq!((r.digest.as_str(), r.size), (d.as_str(), total));
    let size = c
        .stat(StatRequest {
            repo: String::new(),
            digest: d.clone(),
            keep: false,
        })
        .await
        .unwrap()
        .into_inner()
        .size;
    assert_eq!(size, total);

    let mut s = c
        .read(ReadRequest {
            repo: String::new(),
            digest: d.clone(),
            offset: 0,
            length: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let mut h = Hasher::new(Algorithm::Sha256);
    let (mut got, mut messages) = (0u64, 0u64);
    while let Some(m) = s.next().await.transpose().unwrap() {
        assert!(
            m.data.len() <= READ_CHUNK_BYTES,
            "chunk of {}",
            m.data.len()
        );
        got += m.data.len() as u64;
        messages += 1;
        h.update(&m.data);
    }
    assert_eq!(got, total);
    assert!(
        messages >= total / READ_CHUNK_BYTES as u64,
        "{messages} messages"
    );
    assert_eq!(h.finish().to_string(), d);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_cross_the_wire_as_codes() {
    errors_reach_the_client_as_codes(Path::Network).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_cross_the_wire_as_codes_in_grpc_messages() {
    errors_reach_the_client_as_codes(Path::Framed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_reach_an_in_process_client_as_codes() {
    errors_reach_the_client_as_codes(Path::Direct).await;
}

async fn errors_reach_the_client_as_codes(path: Path) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), false).await;
    let mut c = server.client_by(path).await;
    let absent = sha256(b"absent").to_string();

    let e = c
        .stat(StatRequest {
            repo: String::new(),
            digest: "sha256:nope".into(),
            keep: false,
        })
        .await
        .unwrap_err();
    assert_eq!(code(e), ErrorCode::DigestInvalid);
    let e = c
        .stat(StatRequest {
            repo: String::new(),
            digest: absent.clone(),
            keep: false,
        })
        .await
        .unwrap_err();
    assert_eq!(code(e), ErrorCode::BlobUnknown);
    assert_eq!(
        code(read(&mut c, &absent, 0, 0).await.unwrap_err()),
        ErrorCode::BlobUnknown
    );

    let small = sha256(b"small").to_string();
    assert_eq!(put(&mut c, &small, &[b"sm", b"all"]).await.unwrap(), 5);
    assert_eq!(
        code(read(&mut c, &small, 6, 0).await.unwrap_err()),
        ErrorCode::RangeInvalid
    );
    assert_eq!(
        code(read(&mut c, &small, 2, 4).await.unwrap_err()),
        ErrorCode::RangeInvalid
    );
    assert_eq!(read(&mut c, &small, 2, 3).await.unwrap(), b"all");

    // Upload ids: not canonical, or unknown.
    let unknown = uuid::Uuid::new_v4().to_string();
    for id in ["../../etc", "not-a-uuid", "", unknown.as_str()] {
        let e = write(&mut c, id, None, &[b"x"]).await.unwrap_err();
        assert_eq!(code(e), ErrorCode::BlobUploadUnknown, "{id:?}");
        assert_eq!(
            code(status(&mut c, id).await.unwrap_err()),
            ErrorCode::BlobUploadUnknown
        );
        let e = c
            .cancel_upload(UploadRef {
                upload_id: id.into(),
                owner: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(code(e), ErrorCode::BlobUploadUnknown);
    }
    let e = c
        .write_upload(stream::iter(Vec::<WriteChunk>::new()))
        .await
        .unwrap_err();
    assert_eq!(code(e), ErrorCode::BlobUploadUnknown);

    // Offsets and framing.
    let id = c
        .start_upload(StartUploadRequest::default())
        .await
        .unwrap()
        .into_inner()
        .upload_id;
    assert_eq!(write(&mut c, &id, Some(0), &[b"abc"]).await.unwrap(), 3);
    let e = write(&mut c, &id, Some(4), &[b"d"]).await.unwrap_err();
    assert_eq!(code(e), ErrorCode::RangeInvalid);
    let other = uuid::Uuid::new_v4().to_string();
    let msgs = vec![
        WriteChunk {
            length: None,
            upload_id: id.clone(),
            expected_offset: Some(3),
            data: Bytes::from_static(b"d"),
            owner: String::new(),
        },
        WriteChunk {
            length: None,
            upload_id: other,
            expected_offset: None,
            data: Bytes::from_static(b"e"),
            owner: String::new(),
        },
    ];
    let e = c.write_upload(stream::iter(msgs)).await.unwrap_err();
    assert_eq!(code(e), ErrorCode::BlobUploadInvalid);
    assert_eq!(
        status(&mut c, &id).await.unwrap(),
        3,
        "failed write kept nothing"
    );

    // Commit: bad digest, then a mismatch that ends the session.
    let e = c
        .commit_upload(CommitUploadRequest {
            upload_id: id.clone(),
            digest: "sha256:ABC".into(),
            owner: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(code(e), ErrorCode::DigestInvalid);
    assert_eq!(status(&mut c, &id).await.unwrap(), 3);
    let e = c
        .commit_upload(CommitUploadRequest {
            upload_id: id.clone(),
            digest: sha256(b"abd").to_string(),
            owner: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(code(e), ErrorCode::DigestInvalid);
    assert_eq!(
        code(status(&mut c, &id).await.unwrap_err()),
        ErrorCode::BlobUploadUnknown
    );

    // Put: missing, malformed and wrong digests.
    let e = put(&mut c, "", &[b"data"]).await.unwrap_err();
    assert_eq!(code(e), ErrorCode::DigestInvalid);
    let e = c
        .put(stream::iter(Vec::<PutChunk>::new()))
        .await
        .unwrap_err();
    assert_eq!(code(e), ErrorCode::DigestInvalid);
    let e = put(&mut c, "md5:abc", &[b"data"]).await.unwrap_err();
    assert_eq!(code(e), ErrorCode::DigestInvalid);
    let e = put(&mut c, &absent, &[b"data"]).await.unwrap_err();
    assert_eq!(code(e), ErrorCode::DigestInvalid);
    let e = c
        .stat(StatRequest {
            repo: String::new(),
            digest: absent.clone(),
            keep: false,
        })
        .await
        .unwrap_err();
    assert_eq!(code(e), ErrorCode::BlobUnknown);

    // Delete reports whether something was there.
    let del = |digest: &str| DeleteRequest {
        repo: String::new(),
        digest: digest.to_string(),
    };
    assert!(c.delete(del(&small)).await.unwrap().into_inner().deleted);
    assert!(!c.delete(del(&small)).await.unwrap().into_inner().deleted);
    let e = c.delete(del("sha256:..")).await.unwrap_err();
    assert_eq!(code(e), ErrorCode::DigestInvalid);
    server.stop().await;
}

/// The direct path really is taken: with nothing listening at the client's
/// network address, its streaming calls still work, and dropping a write
/// halfway keeps none of its bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_calls_go_in_process_and_a_dropped_write_keeps_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn BlobStore> = Arc::new(FsStore::new(dir.path(), false).await.unwrap());
    let streams: Arc<dyn BlobStreams> = Arc::new(BlobGrpc::new(store.clone()));
    // Nothing listens on port 1.
    let mut c = BlobClient::new(
        grpc_client("http://127.0.0.1:1"),
        grpc::connect("http://127.0.0.1:1").unwrap(),
        Arc::new(move || Some(streams.clone())),
    );
    let data = pattern(3 * CHUNK_BYTES + 5, 3);
    let d = sha256(&data).to_string();
    let parts: Vec<&[u8]> = data.chunks(CHUNK_BYTES).collect();
    assert_eq!(put(&mut c, &d, &parts).await.unwrap(), data.len() as u64);
    assert_eq!(read(&mut c, &d, 0, 0).await.unwrap(), data);
    assert_eq!(read(&mut c, &d, 7, 3).await.unwrap(), &data[7..10]);

    let id = store.start_upload("").await.unwrap();
    assert_eq!(
        write(&mut c, &id.to_string(), Some(0), &[b"abc"])
            .await
            .unwrap(),
        3
    );
    // A write whose stream never ends, dropped once its first chunk is in.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(WriteChunk {
        length: None,
        upload_id: id.to_string(),
        expected_offset: Some(3),
        data: Bytes::from(vec![b'x'; CHUNK_BYTES]),
        owner: String::new(),
    })
    .await
    .unwrap();
    let call = c.write_upload(tokio_stream::wrappers::ReceiverStream::new(rx));
    let held = tokio::time::timeout(Duration::from_millis(200), call).await;
    assert!(held.is_err(), "the write waits for the rest of its stream");
    drop(tx);
    assert_eq!(store.upload_status(&id).await.unwrap(), 3);
    // The upload goes on from where it was.
    assert_eq!(
        write(&mut c, &id.to_string(), Some(3), &[b"d"])
            .await
            .unwrap(),
        4
    );
}

/// Over the network too, a write whose caller goes away halfway keeps none
/// of its bytes, whether they went as a plain body or as gRPC messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_dropped_over_the_network_keeps_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), false).await;
    for path in [Path::Network, Path::Framed] {
        let mut c = server.client_by(path).await;
        let id = c
            .start_upload(StartUploadRequest::default())
            .await
            .unwrap()
            .into_inner()
            .upload_id;
        assert_eq!(write(&mut c, &id, Some(0), &[b"abc"]).await.unwrap(), 3);
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tx.send(WriteChunk {
            length: None,
            upload_id: id.clone(),
            expected_offset: Some(3),
            data: Bytes::from(vec![b'x'; CHUNK_BYTES]),
            owner: String::new(),
        })
        .await
        .unwrap();
        let mut caller = c.clone();
        let call = tokio::spawn(async move {
            caller
                .write_upload(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
        });
        // The role holds the call open while its stream goes on.
        let held = tokio::time::timeout(Duration::from_millis(300), async {
            while !call.is_finished() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        assert!(held.await.is_err(), "{path:?}: the write ended early");
        call.abort();
        let _ = call.await;
        drop(tx);
        // Once the role has seen the stream reset, the upload is where it
        // was and goes on from there.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            match write(&mut c, &id, Some(3), &[b"d"]).await {
                Ok(n) => {
                    assert_eq!(n, 4, "{path:?}");
                    break;
                }
                // Still busy with the dropped write.
                Err(e) if std::time::Instant::now() < deadline => {
                    assert_eq!(code(e), ErrorCode::BlobUploadInvalid, "{path:?}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("{path:?}: {e:?}"),
            }
        }
        assert_eq!(status(&mut c, &id).await.unwrap(), 4, "{path:?}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_sweeps_stale_uploads_and_stops_on_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let store = FsStore::new(dir.path(), false).await.unwrap();
    let stale = store.start_upload("").await.unwrap();
    let fresh = store.start_upload("").await.unwrap();
    // Make `stale` look idle since 1970.
    let state = dir
        .path()
        .join("uploads")
        .join(stale.to_string())
        .join("state.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    v["updated_ms"] = 0.into();
    std::fs::write(&state, serde_json::to_vec(&v).unwrap()).unwrap();

    let server = Server::start(dir.path(), false).await;
    let mut c = server.client();
    let swept = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match status(&mut c, &stale.to_string()).await {
                Err(e) if code(e.clone()) == ErrorCode::BlobUploadUnknown => break,
                Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                Err(e) => panic!("unexpected status {e:?}"),
            }
        }
    })
    .await;
    assert!(swept.is_ok(), "the stale upload was not removed");
    assert_eq!(status(&mut c, &fresh.to_string()).await.unwrap(), 0);
    server.stop().await;
}

#[test]
fn the_sweep_period_is_bounded() {
    assert_eq!(sweep_period(Duration::ZERO), Duration::from_secs(60));
    assert_eq!(
        sweep_period(Duration::from_secs(24 * 3600)),
        Duration::from_secs(3600)
    );
    assert_eq!(
        sweep_period(Duration::from_secs(1200)),
        Duration::from_secs(300)
    );
}
